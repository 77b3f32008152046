//! The latent explorer's worker: one thread that owns the [`LatentModel`] and decodes for the
//! panel, so the UI never waits on the network.
//!
//! It follows the engine's protocol (`DESIGN.md`): plain request values in over a bounded
//! crossbeam channel, events tagged with the request's generation out over another, a repaint
//! poke after each event, panics caught and reported while the thread keeps serving. It is a
//! thread of its own rather than engine jobs because the explorer needs what the engine's
//! one-job queue does not give: the model stays loaded between decodes, a slider decode never
//! waits behind a running restoration, and requests are coalesced *latest wins*: before each
//! unit of work the thread drains its queue and keeps only the newest request of each kind, so
//! dragging a slider never queues up stale decodes. Batches (the sample grid, the
//! interpolation strip) are decoded a few images at a time, and a waiting slider decode goes
//! first between two chunks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::latent_model::{crop_to_model, paste_back, Interpolation, LatentError, LatentModel};
use crate::engine::{panic_message, Notify};
use crate::imaging::{ImageF32, Mask, Rect};
use crate::models::latent_pca::LatentPca;

/// Images decoded per unit of batch work: small, so a slider decode waits at most one chunk.
const CHUNK: usize = 2;

/// Requests that may wait in the queue (the worker drains it before every unit).
const QUEUE: usize = 64;

/// Events that may wait for the UI.
const EVENTS: usize = 256;

/// Builds the model on the worker thread (loading weights may take a moment).
pub type Loader = Box<dyn FnOnce() -> Result<Box<dyn LatentModel>, LatentError> + Send>;

/// Which batch a batch request or event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// The grid of samples.
    Grid,
    /// The interpolation strip.
    Strip,
}

/// What the panel asks for. `gen` orders requests: events carry it back, and the panel
/// ignores events older than what it shows.
#[derive(Debug)]
pub enum LatentRequest {
    /// Decode the current point (a slider moved). `changed` is when the change was made, for
    /// the slider-to-image latency.
    Current {
        /// Generation.
        gen: u64,
        /// The code.
        code: Vec<f32>,
        /// When the user changed it.
        changed: Instant,
    },
    /// Sample `n` codes with `seed` and decode them.
    Grid {
        /// Generation.
        gen: u64,
        /// Seed of the codes.
        seed: u64,
        /// How many.
        n: usize,
    },
    /// Decode the in-between codes of an interpolation.
    Strip {
        /// Generation.
        gen: u64,
        /// The codes, `A` first and `B` last.
        codes: Vec<Vec<f32>>,
    },
    /// Encode `region` of `image` (cropped and resized to the model's input).
    Encode {
        /// Generation.
        gen: u64,
        /// The document's current image.
        image: Arc<ImageF32>,
        /// The region, in image pixels.
        region: Rect,
    },
    /// Decode `code` and paste it into `region` of `image` (transferring only the change from
    /// `reference`'s decode when given).
    PutBack {
        /// Generation.
        gen: u64,
        /// The image to paste into.
        image: Arc<ImageF32>,
        /// Where.
        region: Rect,
        /// The edited code.
        code: Vec<f32>,
        /// The code the region was encoded to, to transfer only the edit.
        reference: Option<Vec<f32>>,
    },
}

/// What the panel needs to know about the loaded model.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    /// Registry id.
    pub id: String,
    /// Code length.
    pub latent_dim: usize,
    /// Side of the decoded images.
    pub image_size: usize,
    /// Whether the model can encode an image.
    pub can_encode: bool,
    /// Principal directions, when known.
    pub pca: Option<LatentPca>,
    /// Standard deviation of each raw dimension.
    pub raw_sigmas: Vec<f32>,
    /// Centre of the code distribution.
    pub centre: Vec<f32>,
    /// The model's preferred interpolation.
    pub interpolation: Interpolation,
    /// What is missing or approximate, for the panel.
    pub notice: Option<String>,
}

impl ModelSummary {
    fn of(m: &dyn LatentModel) -> Self {
        Self {
            id: m.id().to_owned(),
            latent_dim: m.latent_dim(),
            image_size: m.image_size(),
            can_encode: m.can_encode(),
            pca: m.pca().cloned(),
            raw_sigmas: m.raw_sigmas(),
            centre: m.centre(),
            interpolation: m.interpolation(),
            notice: m.notice(),
        }
    }
}

/// What the worker reports.
#[derive(Debug)]
pub enum LatentEvent {
    /// The model is loaded.
    Ready(Box<ModelSummary>),
    /// The model could not be loaded; the thread has stopped.
    LoadFailed(String),
    /// The decode of the current point.
    Current {
        /// Generation of the request.
        gen: u64,
        /// The image.
        image: ImageF32,
        /// When the change it shows was made.
        changed: Instant,
    },
    /// The sampled codes of a grid (sent before their images).
    Codes {
        /// Generation of the request.
        gen: u64,
        /// The codes.
        codes: Vec<Vec<f32>>,
    },
    /// Decoded images `start..start + images.len()` of a batch.
    Images {
        /// Generation of the request.
        gen: u64,
        /// Grid or strip.
        batch: Batch,
        /// Index of the first image.
        start: usize,
        /// The images.
        images: Vec<ImageF32>,
    },
    /// The code of an encoded region and its decode.
    Encoded {
        /// Generation of the request.
        gen: u64,
        /// The region.
        region: Rect,
        /// The code.
        code: Vec<f32>,
        /// Its decode.
        image: ImageF32,
    },
    /// The image with the decode pasted back, and the pixels that were replaced.
    PutBack {
        /// Generation of the request.
        gen: u64,
        /// The whole image.
        result: Arc<ImageF32>,
        /// The replaced pixels.
        holes: Arc<Mask>,
    },
    /// A request failed; the worker keeps serving.
    Failed {
        /// Generation of the request.
        gen: u64,
        /// What failed, for the message.
        what: &'static str,
        /// Why.
        message: String,
    },
}

/// A batch being decoded chunk by chunk.
struct BatchJob {
    gen: u64,
    batch: Batch,
    /// For a grid: the seed and count to sample first.
    sample: Option<(u64, usize)>,
    codes: Vec<Vec<f32>>,
    next: usize,
}

/// The newest request of each kind, waiting for the worker.
#[derive(Default)]
struct Pending {
    current: Option<LatentRequest>,
    put_back: Option<LatentRequest>,
    encode: Option<LatentRequest>,
    strip: Option<BatchJob>,
    grid: Option<BatchJob>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.current.is_none()
            && self.put_back.is_none()
            && self.encode.is_none()
            && self.strip.is_none()
            && self.grid.is_none()
    }

    /// Takes a request in; a newer one of the same kind replaces what was waiting.
    fn take(&mut self, r: LatentRequest) {
        match r {
            LatentRequest::Current { .. } => self.current = Some(r),
            LatentRequest::PutBack { .. } => self.put_back = Some(r),
            LatentRequest::Encode { .. } => self.encode = Some(r),
            LatentRequest::Grid { gen, seed, n } => {
                self.grid = Some(BatchJob {
                    gen,
                    batch: Batch::Grid,
                    sample: Some((seed, n)),
                    codes: Vec::new(),
                    next: 0,
                })
            }
            LatentRequest::Strip { gen, codes } => {
                self.strip = Some(BatchJob {
                    gen,
                    batch: Batch::Strip,
                    sample: None,
                    codes,
                    next: 0,
                })
            }
        }
    }
}

/// The worker thread and its channels. Dropping it stops the thread after its current unit.
pub type LatentWorker = super::panel_worker::PanelWorker<LatentRequest, LatentEvent>;

impl LatentWorker {
    /// Starts the thread: it runs `loader`, reports `Ready` or `LoadFailed`, then serves.
    /// Decodes run in a rayon pool of `threads` threads; `notify` is called after each event.
    pub fn start(
        loader: Loader,
        threads: usize,
        notify: Option<Notify>,
    ) -> Result<Self, LatentError> {
        let (tx, requests) = bounded::<LatentRequest>(QUEUE);
        let (events, rx) = bounded::<LatentEvent>(EVENTS);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("kintsugi-latent-{i}"))
            .build()
            .map_err(|e| LatentError::Invalid(format!("cannot start the latent worker: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("kintsugi-latent".into())
            .spawn(move || serve(loader, requests, events, notify, pool))
            .map_err(|e| LatentError::Invalid(format!("cannot start the latent worker: {e}")))?;
        Ok(Self::new(tx, rx, thread))
    }
}

/// Sends an event and pokes the UI; false once nobody listens.
fn emit(events: &Sender<LatentEvent>, notify: &Option<Notify>, ev: LatentEvent) -> bool {
    let ok = events.send(ev).is_ok();
    if let Some(n) = notify {
        n();
    }
    ok
}

fn serve(
    loader: Loader,
    requests: Receiver<LatentRequest>,
    events: Sender<LatentEvent>,
    notify: Option<Notify>,
    pool: rayon::ThreadPool,
) {
    let loaded = catch_unwind(AssertUnwindSafe(|| pool.install(loader)));
    let model = match loaded {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            emit(&events, &notify, LatentEvent::LoadFailed(e.to_string()));
            return;
        }
        Err(p) => {
            let msg = format!("loading panicked: {}", panic_message(p.as_ref()));
            emit(&events, &notify, LatentEvent::LoadFailed(msg));
            return;
        }
    };
    let summary = ModelSummary::of(model.as_ref());
    if !emit(&events, &notify, LatentEvent::Ready(Box::new(summary))) {
        return;
    }
    let mut pending = Pending::default();
    loop {
        if pending.is_empty() {
            match requests.recv() {
                Ok(r) => pending.take(r),
                Err(_) => return,
            }
        }
        // Latest wins: everything queued meanwhile replaces what was waiting.
        while let Ok(r) = requests.try_recv() {
            pending.take(r);
        }
        let mut running = 0;
        let out = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| next_unit(&mut pending, model.as_ref(), &mut running))
        }));
        let out = match out {
            Ok(evs) => evs,
            Err(p) => {
                // Drop the batch that panicked rather than retry it forever.
                for slot in [&mut pending.strip, &mut pending.grid] {
                    if slot.as_ref().is_some_and(|j| j.gen == running) {
                        *slot = None;
                    }
                }
                vec![LatentEvent::Failed {
                    gen: running,
                    what: "the model",
                    message: format!(
                        "internal error (panicked: {}); the explorer keeps running",
                        panic_message(p.as_ref())
                    ),
                }]
            }
        };
        for ev in out {
            if !emit(&events, &notify, ev) {
                return;
            }
        }
    }
}

/// Runs the most urgent waiting unit of work and returns its events; `running` is set to the
/// generation of the request being served (for a panic report).
fn next_unit(p: &mut Pending, m: &dyn LatentModel, running: &mut u64) -> Vec<LatentEvent> {
    if let Some(LatentRequest::Current { gen, code, changed }) = p.current.take() {
        *running = gen;
        return vec![match m.decode(&[code]) {
            Ok(mut imgs) if imgs.len() == 1 => LatentEvent::Current {
                gen,
                image: imgs.remove(0),
                changed,
            },
            Ok(_) => failed(gen, "decode", "the model returned no image"),
            Err(e) => failed(gen, "decode", e),
        }];
    }
    if let Some(LatentRequest::PutBack {
        gen,
        image,
        region,
        code,
        reference,
    }) = p.put_back.take()
    {
        *running = gen;
        return vec![put_back(m, &image, region, code, reference, gen)
            .unwrap_or_else(|e| failed(gen, "put back", e))];
    }
    if let Some(LatentRequest::Encode { gen, image, region }) = p.encode.take() {
        *running = gen;
        return vec![encode(m, &image, region, gen).unwrap_or_else(|e| failed(gen, "encode", e))];
    }
    for slot in [&mut p.strip, &mut p.grid] {
        let Some(job) = slot.as_mut() else {
            continue;
        };
        let (gen, batch) = (job.gen, job.batch);
        *running = gen;
        let mut out = Vec::new();
        if let Some((seed, n)) = job.sample.take() {
            match m.sample(seed, n) {
                Ok(codes) => {
                    job.codes = codes.clone();
                    out.push(LatentEvent::Codes { gen, codes });
                }
                Err(e) => {
                    *slot = None;
                    return vec![failed(gen, "sample", e)];
                }
            }
        }
        let end = (job.next + CHUNK).min(job.codes.len());
        let start = job.next;
        match m.decode(&job.codes[start..end]) {
            Ok(images) => out.push(LatentEvent::Images {
                gen,
                batch,
                start,
                images,
            }),
            Err(e) => {
                *slot = None;
                out.push(failed(gen, "decode", e));
                return out;
            }
        }
        job.next = end;
        if job.next >= job.codes.len() {
            *slot = None;
        }
        return out;
    }
    Vec::new()
}

fn failed(gen: u64, what: &'static str, e: impl std::fmt::Display) -> LatentEvent {
    LatentEvent::Failed {
        gen,
        what,
        message: e.to_string(),
    }
}

fn encode(
    m: &dyn LatentModel,
    image: &ImageF32,
    region: Rect,
    gen: u64,
) -> Result<LatentEvent, LatentError> {
    let input = crop_to_model(image, region, m.image_size())?;
    let code = m
        .encode(&input)?
        .ok_or_else(|| LatentError::Unsupported(format!("encoding with {}", m.id())))?;
    let mut imgs = m.decode(std::slice::from_ref(&code))?;
    if imgs.is_empty() {
        return Err(LatentError::Invalid("the model returned no image".into()));
    }
    Ok(LatentEvent::Encoded {
        gen,
        region,
        code,
        image: imgs.remove(0),
    })
}

fn put_back(
    m: &dyn LatentModel,
    image: &ImageF32,
    region: Rect,
    code: Vec<f32>,
    reference: Option<Vec<f32>>,
    gen: u64,
) -> Result<LatentEvent, LatentError> {
    let mut codes = vec![code];
    codes.extend(reference);
    let imgs = m.decode(&codes)?;
    let decode = imgs
        .first()
        .ok_or_else(|| LatentError::Invalid("the model returned no image".into()))?;
    let (result, holes) = paste_back(image, region, decode, imgs.get(1))?;
    Ok(LatentEvent::PutBack {
        gen,
        result: Arc::new(result),
        holes: Arc::new(holes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::vae::{LoadedVae, VaeConfig};
    use crate::studio::latent_model::VaeLatent;
    use std::time::Duration;

    fn tiny_loader() -> Loader {
        Box::new(|| {
            let cfg = VaeConfig {
                image_size: 16,
                latent: 4,
                base: 4,
                sigma: 0.1,
            };
            let m = LoadedVae::fresh(cfg, 9, &candle_core::Device::Cpu)?;
            Ok(Box::new(VaeLatent::new("vae-tiny", m, None)?) as Box<dyn LatentModel>)
        })
    }

    fn wait<F: FnMut(&LatentEvent) -> bool>(w: &LatentWorker, mut done: F) -> Vec<LatentEvent> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut all = Vec::new();
        while Instant::now() < deadline {
            for ev in w.drain() {
                let stop = done(&ev);
                all.push(ev);
                if stop {
                    return all;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the worker did not answer in time");
    }

    #[test]
    fn coalesces_current_decodes_latest_wins() {
        let w = LatentWorker::start(tiny_loader(), 1, None).expect("start");
        wait(&w, |e| matches!(e, LatentEvent::Ready(_)));
        // A grid first keeps the worker busy, then a burst of slider moves arrives.
        w.send(LatentRequest::Grid {
            gen: 1,
            seed: 3,
            n: 8,
        })
        .expect("send");
        for g in 2..40u64 {
            w.send(LatentRequest::Current {
                gen: g,
                code: vec![g as f32 * 0.01; 4],
                changed: Instant::now(),
            })
            .expect("send");
        }
        // Wait for the newest slider decode and the grid's last chunk, in whatever order.
        let (mut newest, mut grid_done) = (false, false);
        let evs = wait(&w, |e| {
            match e {
                LatentEvent::Current { gen: 39, .. } => newest = true,
                LatentEvent::Images {
                    batch: Batch::Grid,
                    start: 6,
                    ..
                } => grid_done = true,
                _ => {}
            }
            newest && grid_done
        });
        let decoded = evs
            .iter()
            .filter(|e| matches!(e, LatentEvent::Current { .. }))
            .count();
        assert!(decoded < 38, "{decoded} of 38 slider decodes were run");
        // Nothing stale arrives after the newest decode.
        let last = evs
            .iter()
            .filter_map(|e| match e {
                LatentEvent::Current { gen, .. } => Some(*gen),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert!(last.windows(2).all(|p| p[0] < p[1]), "{last:?}");
    }

    #[test]
    fn load_failure_is_reported() {
        let loader: Loader = Box::new(|| Err(LatentError::Missing("x.safetensors".into())));
        let w = LatentWorker::start(loader, 1, None).expect("start");
        let evs = wait(&w, |e| matches!(e, LatentEvent::LoadFailed(_)));
        assert!(matches!(&evs[0], LatentEvent::LoadFailed(m) if m.contains("x.safetensors")));
        let panics: Loader = Box::new(|| panic!("boom"));
        let w = LatentWorker::start(panics, 1, None).expect("start");
        let evs = wait(&w, |e| matches!(e, LatentEvent::LoadFailed(_)));
        assert!(matches!(&evs[0], LatentEvent::LoadFailed(m) if m.contains("boom")));
    }
}
