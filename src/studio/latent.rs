//! The latent explorer: a window (toggled with L or the top bar's button) for walking the
//! latent space of a generative model.
//!
//! - a grid of samples with a seed box, "Resample" and "Next seed"; clicking a sample makes it
//!   the current point (right-click: use it as interpolation end A or B)
//! - sliders along the principal directions of the encoded training set (+/- 3 sigma from the
//!   current point, each with a reset) and over the raw latent dimensions
//! - an interpolation strip between two picked points
//! - "Encode" a square region of the open image (cropped and resized to the model's input) to
//!   start from it, and "Put back" the edited decode into that region as one undoable repair
//!
//! The panel holds only UI state. The model lives on its own worker thread
//! ([`super::latent_worker`]); every change of the current point is sent at the end of the
//! frame and the worker keeps only the newest, so a slider drag shows the latest decode
//! without a queue of stale ones. The time from a change to the frame whose texture shows
//! its decode is recorded ([`LatentLatency`]). The model is reached only through the
//! [`LatentModel`] trait, so the GAN can reuse the panel.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions};

use super::app::StudioApp;
use super::latent_model::{
    centred_square, clamp_region, interpolate, load_latent_model, Interpolation, LatentModel,
    LATENT_MODELS,
};
use super::latent_worker::{Batch, LatentEvent, LatentRequest, LatentWorker, Loader, ModelSummary};
use crate::imaging::{ImageF32, Rect};

/// Samples in the grid.
const GRID: usize = 16;
/// Columns of the grid.
const GRID_COLS: usize = 4;
/// Side of a grid or strip thumbnail, in points.
const THUMB: f32 = 64.0;
/// Side of the current decode, in points.
const CURRENT: f32 = 160.0;
/// Principal directions shown as sliders by default.
const PCA_SHOWN: usize = 8;
/// Slider range, in standard deviations.
const SIGMAS: f32 = 3.0;
/// Latencies kept for the statistics.
const LATENCY_KEEP: usize = 4096;

/// Slider-to-image latencies: from a change of the current point to the frame that put its
/// decode into the texture.
#[derive(Clone, Debug, Default)]
pub struct LatentLatency {
    samples: Vec<Duration>,
}

impl LatentLatency {
    fn push(&mut self, d: Duration) {
        if self.samples.len() >= LATENCY_KEEP {
            self.samples.remove(0);
        }
        self.samples.push(d);
    }

    /// Every recorded latency, oldest first.
    pub fn samples(&self) -> &[Duration] {
        &self.samples
    }

    /// The newest latency.
    pub fn last(&self) -> Option<Duration> {
        self.samples.last().copied()
    }

    /// The `p`-quantile (0 to 1) of the recorded latencies.
    pub fn quantile(&self, p: f64) -> Option<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        let i = ((s.len().checked_sub(1)?) as f64 * p.clamp(0.0, 1.0)).round() as usize;
        s.get(i).copied()
    }

    /// Forgets every sample (benchmarks measure phases separately).
    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

/// One decoded thumbnail of the grid or the strip.
struct Cell {
    code: Vec<f32>,
    image: Option<ImageF32>,
    tex: Option<TextureHandle>,
}

/// An end of the interpolation.
#[derive(Clone)]
struct Pick {
    code: Vec<f32>,
    label: String,
}

/// Where the current code came from when it was encoded from the document.
struct EncodedFrom {
    /// The document's original image, to tell whether the same document is still open.
    original: Weak<ImageF32>,
    region: Rect,
    code: Vec<f32>,
}

/// A put-back the worker is composing.
struct PutBackWait {
    gen: u64,
    input: Arc<ImageF32>,
    original: Weak<ImageF32>,
    region: Rect,
}

/// Where the model comes from.
enum ModelState {
    /// Not started (the window has not been opened yet, or Retry was pressed).
    Idle,
    /// The worker is loading it.
    Loading,
    /// Loaded.
    Ready(Box<ModelSummary>),
    /// Could not be loaded: the reason.
    Unavailable(String),
}

/// The latent explorer's state. Reach it with [`StudioApp::latent`].
pub struct LatentPanel {
    open: bool,
    model_id: String,
    weights_dir: PathBuf,
    injected: Option<Loader>,
    worker: Option<LatentWorker>,
    state: ModelState,
    next_gen: u64,
    unsent: Vec<LatentRequest>,
    note: Option<(bool, String)>,
    // Grid.
    seed: u64,
    grid_gen: u64,
    /// The seed the grid shown was drawn with (the box may hold another by now).
    grid_seed: u64,
    grid_waiting: bool,
    grid: Vec<Cell>,
    // Current point: base + PCA offsets (sigma units) + raw offsets (sigma units).
    base: Vec<f32>,
    base_label: String,
    pca: Vec<f32>,
    pca_shown: usize,
    raw: Vec<f32>,
    dirty_since: Option<Instant>,
    sent_gen: u64,
    shown_gen: u64,
    current: Option<ImageF32>,
    current_tex: Option<TextureHandle>,
    /// The current decode changed without the worker (a grid pick): upload it next frame.
    current_tex_dirty: bool,
    latency: LatentLatency,
    // Interpolation.
    a: Option<Pick>,
    b: Option<Pick>,
    steps: usize,
    interp: Interpolation,
    strip_gen: u64,
    strip_waiting: bool,
    strip: Vec<Cell>,
    // Encode and put back.
    region: Option<Rect>,
    region_for: (usize, usize),
    keep_detail: bool,
    /// The encode request in flight, with the document it reads.
    encode_wait: Option<(u64, Weak<ImageF32>)>,
    encoded: Option<EncodedFrom>,
    put_back: Option<PutBackWait>,
}

fn to_color_image(img: &ImageF32) -> ColorImage {
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
    let pixels = (0..img.height())
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .map(|(x, y)| {
            let p = img.pixel(x, y);
            match p.len() {
                0 => Color32::BLACK,
                1 | 2 => Color32::from_gray(q(p[0])),
                _ => Color32::from_rgb(q(p[0]), q(p[1]), q(p[2])),
            }
        })
        .collect();
    ColorImage::new([img.width(), img.height()], pixels)
}

/// Creates or updates `slot` with `img`.
fn upload(ctx: &egui::Context, slot: &mut Option<TextureHandle>, name: &str, img: &ImageF32) {
    let ci = to_color_image(img);
    match slot {
        Some(t) => t.set(ci, TextureOptions::LINEAR),
        None => *slot = Some(ctx.load_texture(name, ci, TextureOptions::LINEAR)),
    }
}

impl LatentPanel {
    /// A closed panel for the shipped face VAE, loading from `weights_dir` when first opened.
    pub fn new(weights_dir: PathBuf) -> Self {
        Self {
            open: false,
            model_id: LATENT_MODELS
                .first()
                .copied()
                .unwrap_or("vae-faces")
                .to_owned(),
            weights_dir,
            injected: None,
            worker: None,
            state: ModelState::Idle,
            next_gen: 1,
            unsent: Vec::new(),
            note: None,
            seed: 0,
            grid_gen: 0,
            grid_seed: 0,
            grid_waiting: false,
            grid: Vec::new(),
            base: Vec::new(),
            base_label: String::new(),
            pca: Vec::new(),
            pca_shown: PCA_SHOWN,
            raw: Vec::new(),
            dirty_since: None,
            sent_gen: 0,
            shown_gen: 0,
            current: None,
            current_tex: None,
            current_tex_dirty: false,
            latency: LatentLatency::default(),
            a: None,
            b: None,
            steps: 8,
            interp: Interpolation::Linear,
            strip_gen: 0,
            strip_waiting: false,
            strip: Vec::new(),
            region: None,
            region_for: (0, 0),
            keep_detail: false,
            encode_wait: None,
            encoded: None,
            put_back: None,
        }
    }

    /// Uses `model` instead of loading one from the weights folder (tests, a GAN preview).
    /// The worker restarts with it on the next frame.
    pub fn use_model(&mut self, model: Box<dyn LatentModel>) {
        self.worker = None;
        self.injected = Some(Box::new(move || Ok(model)));
        self.state = ModelState::Idle;
    }

    /// The id of the model the panel opens.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Switches to the registry model `id` (one of [`LATENT_MODELS`]); it loads on the next
    /// frame while the window is open.
    pub fn set_model(&mut self, id: &str) {
        if id == self.model_id && self.injected.is_none() {
            return;
        }
        self.model_id = id.to_owned();
        self.worker = None;
        self.injected = None;
        self.state = ModelState::Idle;
        self.unsent.clear();
        self.dirty_since = None;
        (self.grid_waiting, self.strip_waiting) = (false, false);
        (self.encode_wait, self.put_back) = (None, None);
        self.shown_gen = self.sent_gen;
        self.current = None;
        self.note = None;
    }

    /// Whether the window is shown.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Shows or hides the window (the model loads when it is first shown).
    pub fn set_open(&mut self, open: bool) {
        self.open = open;
    }

    /// True once the model is loaded.
    pub fn ready(&self) -> bool {
        matches!(self.state, ModelState::Ready(_))
    }

    /// Why the model is unavailable, when it is.
    pub fn unavailable(&self) -> Option<&str> {
        match &self.state {
            ModelState::Unavailable(m) => Some(m),
            _ => None,
        }
    }

    /// The loaded model's description.
    pub fn summary(&self) -> Option<&ModelSummary> {
        match &self.state {
            ModelState::Ready(s) => Some(s),
            _ => None,
        }
    }

    /// The panel's last error (a failed decode, encode or put back), if any.
    pub fn last_error(&self) -> Option<&str> {
        match &self.note {
            Some((true, m)) => Some(m),
            _ => None,
        }
    }

    /// True while anything asked of the worker has not arrived yet.
    pub fn busy(&self) -> bool {
        let loading = self.open && matches!(self.state, ModelState::Idle | ModelState::Loading);
        loading
            || !self.unsent.is_empty()
            || self.dirty_since.is_some()
            || self.shown_gen < self.sent_gen
            || self.grid_waiting
            || self.strip_waiting
            || self.encode_wait.is_some()
            || self.put_back.is_some()
    }

    /// Slider-to-image latencies measured so far.
    pub fn latency(&self) -> &LatentLatency {
        &self.latency
    }

    /// Slider-to-image latencies, mutable (to clear between benchmark phases).
    pub fn latency_mut(&mut self) -> &mut LatentLatency {
        &mut self.latency
    }

    fn gen(&mut self) -> u64 {
        let g = self.next_gen;
        self.next_gen += 1;
        g
    }

    fn send(&mut self, r: LatentRequest) {
        // Latest wins here too: a request still waiting for room replaces its older kin.
        let kind = std::mem::discriminant(&r);
        self.unsent.retain(|u| std::mem::discriminant(u) != kind);
        self.unsent.push(r);
        self.flush_unsent();
    }

    fn flush_unsent(&mut self) {
        let Some(w) = &self.worker else {
            return;
        };
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.unsent) {
            if let Err(r) = w.send(r) {
                keep.push(r);
            }
        }
        self.unsent = keep;
    }

    // ----- the grid -----

    /// The grid's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Samples a new grid of codes with `seed` and decodes it.
    pub fn resample(&mut self, seed: u64) {
        self.seed = seed;
        if !self.ready() {
            return;
        }
        let gen = self.gen();
        self.grid_gen = gen;
        self.grid_seed = seed;
        self.grid_waiting = true;
        self.send(LatentRequest::Grid { gen, seed, n: GRID });
    }

    /// The grid's decodes (`None` until they arrive).
    pub fn grid_images(&self) -> Vec<Option<&ImageF32>> {
        self.grid.iter().map(|c| c.image.as_ref()).collect()
    }

    /// The grid's codes.
    pub fn grid_codes(&self) -> Vec<&[f32]> {
        self.grid.iter().map(|c| c.code.as_slice()).collect()
    }

    /// Makes sample `i` of the grid the current point (sliders back to zero).
    pub fn pick_sample(&mut self, i: usize) -> bool {
        let Some(cell) = self.grid.get(i) else {
            return false;
        };
        let (code, image) = (cell.code.clone(), cell.image.clone());
        let label = format!("sample {} of seed {}", i + 1, self.grid_seed);
        self.set_base(code, label, image);
        true
    }

    /// Makes `code` the current point, with its decode when already known.
    fn set_base(&mut self, code: Vec<f32>, label: String, image: Option<ImageF32>) {
        let d = code.len();
        self.base = code;
        self.base_label = label;
        self.pca = vec![0.0; self.pca_dim().min(d)];
        self.raw = vec![0.0; d];
        match image {
            Some(img) => {
                // The decode is already here: show it without asking the worker again.
                let g = self.gen();
                self.shown_gen = g;
                self.sent_gen = g;
                self.dirty_since = None;
                self.current = Some(img);
                self.current_tex_dirty = true;
            }
            None => self.mark_dirty(),
        }
    }

    fn pca_dim(&self) -> usize {
        self.summary()
            .and_then(|s| s.pca.as_ref())
            .map_or(0, |p| p.count())
    }

    // ----- the current point -----

    fn mark_dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// The current code: the base moved along the principal directions and raw dimensions.
    pub fn code(&self) -> Vec<f32> {
        let Some(s) = self.summary() else {
            return self.base.clone();
        };
        let mut z = match &s.pca {
            Some(p) => p.offset(&self.base, &self.pca),
            None => self.base.clone(),
        };
        for ((v, t), sd) in z.iter_mut().zip(&self.raw).zip(&s.raw_sigmas) {
            *v += t * sd;
        }
        z
    }

    /// The decode of the current point, as last received.
    pub fn current_image(&self) -> Option<&ImageF32> {
        self.current.as_ref()
    }

    /// Number of principal-direction sliders available.
    pub fn pca_len(&self) -> usize {
        self.pca.len()
    }

    /// The value of principal-direction slider `i`, in standard deviations.
    pub fn pca_value(&self, i: usize) -> f32 {
        self.pca.get(i).copied().unwrap_or(0.0)
    }

    /// Moves principal-direction slider `i` to `sigmas` (clamped to +/- 3) as a slider drag
    /// does; the decode follows on the worker.
    pub fn set_pca(&mut self, i: usize, sigmas: f32) {
        if let Some(v) = self.pca.get_mut(i) {
            let t = sigmas.clamp(-SIGMAS, SIGMAS);
            if *v != t {
                *v = t;
                self.mark_dirty();
            }
        }
    }

    /// Puts principal-direction slider `i` back to zero.
    pub fn reset_pca(&mut self, i: usize) {
        self.set_pca(i, 0.0);
    }

    /// Moves raw-dimension slider `i` to `sigmas` (clamped to +/- 3).
    pub fn set_raw(&mut self, i: usize, sigmas: f32) {
        if let Some(v) = self.raw.get_mut(i) {
            let t = sigmas.clamp(-SIGMAS, SIGMAS);
            if *v != t {
                *v = t;
                self.mark_dirty();
            }
        }
    }

    /// Every slider back to zero: the current point is its base again.
    pub fn reset_all(&mut self) {
        if self.pca.iter().chain(&self.raw).any(|v| *v != 0.0) {
            self.pca.iter_mut().for_each(|v| *v = 0.0);
            self.raw.iter_mut().for_each(|v| *v = 0.0);
            self.mark_dirty();
        }
    }

    // ----- interpolation -----

    /// Uses the current point as end A.
    pub fn set_a_current(&mut self) {
        self.a = Some(Pick {
            code: self.code(),
            label: self.point_label(),
        });
    }

    /// Uses the current point as end B.
    pub fn set_b_current(&mut self) {
        self.b = Some(Pick {
            code: self.code(),
            label: self.point_label(),
        });
    }

    /// Uses grid sample `i` as end A (`b == false`) or B.
    pub fn pick_end(&mut self, i: usize, b: bool) -> bool {
        let Some(cell) = self.grid.get(i) else {
            return false;
        };
        let p = Pick {
            code: cell.code.clone(),
            label: format!("sample {} of seed {}", i + 1, self.grid_seed),
        };
        if b {
            self.b = Some(p);
        } else {
            self.a = Some(p);
        }
        true
    }

    fn point_label(&self) -> String {
        let edited = self.pca.iter().chain(&self.raw).any(|v| *v != 0.0);
        if edited {
            format!("{} (edited)", self.base_label)
        } else {
            self.base_label.clone()
        }
    }

    /// Decodes a strip of `steps` codes from A to B (both ends included).
    pub fn interpolate(&mut self, steps: usize, kind: Interpolation) -> bool {
        let (Some(a), Some(b), Some(s)) = (&self.a, &self.b, self.summary()) else {
            return false;
        };
        let steps = steps.clamp(2, 32);
        let codes: Vec<Vec<f32>> = (0..steps)
            .map(|i| {
                let t = i as f32 / (steps - 1) as f32;
                interpolate(&a.code, &b.code, t, kind, &s.centre)
            })
            .collect();
        self.steps = steps;
        self.interp = kind;
        self.strip = codes
            .iter()
            .map(|c| Cell {
                code: c.clone(),
                image: None,
                tex: None,
            })
            .collect();
        let gen = self.gen();
        self.strip_gen = gen;
        self.strip_waiting = true;
        self.send(LatentRequest::Strip { gen, codes });
        true
    }

    /// The strip's decodes (`None` until they arrive).
    pub fn strip_images(&self) -> Vec<Option<&ImageF32>> {
        self.strip.iter().map(|c| c.image.as_ref()).collect()
    }

    /// The strip's codes.
    pub fn strip_codes(&self) -> Vec<&[f32]> {
        self.strip.iter().map(|c| c.code.as_slice()).collect()
    }

    // ----- encode region -----

    /// The square region of the document that "Encode" reads.
    pub fn region(&self) -> Option<Rect> {
        self.region
    }

    /// Sets the region "Encode" reads (clamped to the document when used).
    pub fn set_region(&mut self, r: Rect) {
        self.region = Some(r);
    }
}

impl LatentPanel {
    /// Starts the worker when the window is open and none runs.
    fn ensure_worker(&mut self, ctx: &egui::Context, threads: usize) {
        if !self.open || self.worker.is_some() || !matches!(self.state, ModelState::Idle) {
            return;
        }
        let loader: Loader = match self.injected.take() {
            Some(l) => l,
            None => {
                let (dir, id) = (self.weights_dir.clone(), self.model_id.clone());
                Box::new(move || load_latent_model(&dir, &id))
            }
        };
        let ctx = ctx.clone();
        let notify: crate::engine::Notify = Arc::new(move || ctx.request_repaint());
        match LatentWorker::start(loader, threads, Some(notify)) {
            Ok(w) => {
                self.worker = Some(w);
                self.state = ModelState::Loading;
            }
            Err(e) => self.state = ModelState::Unavailable(e.to_string()),
        }
    }

    /// Applies the worker's events; returns a finished put-back for the document.
    fn poll(&mut self, ctx: &egui::Context) -> Option<(PutBackWait, LatentEvent)> {
        let events = self.worker.as_ref().map(|w| w.drain()).unwrap_or_default();
        let mut finished = None;
        for ev in events {
            match ev {
                LatentEvent::Ready(s) => {
                    let d = s.latent_dim;
                    self.interp = s.interpolation;
                    // Codes of another model mean nothing to this one.
                    self.grid.clear();
                    self.strip.clear();
                    self.strip_waiting = false;
                    (self.a, self.b, self.encoded) = (None, None, None);
                    let centre = s.centre.clone();
                    self.state = ModelState::Ready(s);
                    self.set_base(centre, "centre of the distribution".into(), None);
                    self.resample(self.seed);
                    debug_assert_eq!(self.raw.len(), d);
                }
                LatentEvent::LoadFailed(m) => {
                    self.worker = None;
                    self.state = ModelState::Unavailable(format!(
                        "cannot load {} from {}: {m}",
                        self.model_id,
                        self.weights_dir.display()
                    ));
                }
                LatentEvent::Current {
                    gen,
                    image,
                    changed,
                } => {
                    if gen > self.shown_gen {
                        self.shown_gen = gen;
                        upload(ctx, &mut self.current_tex, "latent-current", &image);
                        self.current = Some(image);
                        self.current_tex_dirty = false;
                        // The texture now shows this change.
                        self.latency.push(changed.elapsed());
                    }
                }
                LatentEvent::Codes { gen, codes } => {
                    if gen == self.grid_gen {
                        self.grid = codes
                            .into_iter()
                            .map(|code| Cell {
                                code,
                                image: None,
                                tex: None,
                            })
                            .collect();
                    }
                }
                LatentEvent::Images {
                    gen,
                    batch,
                    start,
                    images,
                } => {
                    let (cells, waiting) = match batch {
                        Batch::Grid if gen == self.grid_gen => {
                            (&mut self.grid, &mut self.grid_waiting)
                        }
                        Batch::Strip if gen == self.strip_gen => {
                            (&mut self.strip, &mut self.strip_waiting)
                        }
                        _ => continue,
                    };
                    for (k, img) in images.into_iter().enumerate() {
                        if let Some(c) = cells.get_mut(start + k) {
                            upload(ctx, &mut c.tex, "latent-cell", &img);
                            c.image = Some(img);
                        }
                    }
                    *waiting = cells.iter().any(|c| c.image.is_none());
                }
                LatentEvent::Encoded {
                    gen,
                    region,
                    code,
                    image,
                } => {
                    if let Some((_, original)) = self.encode_wait.take_if(|(g, _)| *g == gen) {
                        let label = format!(
                            "encoded region {}x{} at ({}, {})",
                            region.width, region.height, region.x, region.y
                        );
                        self.encoded = Some(EncodedFrom {
                            original,
                            region,
                            code: code.clone(),
                        });
                        self.set_base(code, label, Some(image));
                    }
                }
                ev @ LatentEvent::PutBack { .. } => {
                    let LatentEvent::PutBack { gen, .. } = &ev else {
                        continue;
                    };
                    if self.put_back.as_ref().is_some_and(|p| p.gen == *gen) {
                        finished = self.put_back.take().map(|p| (p, ev));
                    }
                }
                LatentEvent::Failed { gen, what, message } => {
                    let mut matched = false;
                    if gen == self.grid_gen {
                        self.grid_waiting = false;
                        matched = true;
                    }
                    if gen == self.strip_gen {
                        self.strip_waiting = false;
                        matched = true;
                    }
                    if self.encode_wait.as_ref().is_some_and(|(g, _)| *g == gen) {
                        self.encode_wait = None;
                        matched = true;
                    }
                    if self.put_back.as_ref().is_some_and(|p| p.gen == gen) {
                        self.put_back = None;
                        matched = true;
                    }
                    if !matched && gen <= self.sent_gen {
                        // A decode of the current point: stop waiting for it.
                        self.shown_gen = self.shown_gen.max(gen);
                    }
                    self.note = Some((true, format!("{what} failed: {message}")));
                }
            }
        }
        if self.current_tex_dirty {
            if let Some(img) = &self.current {
                upload(ctx, &mut self.current_tex, "latent-current", img);
            }
            self.current_tex_dirty = false;
        }
        finished
    }

    /// Sends the current point if it changed this frame (once per frame at most; the worker
    /// keeps only the newest).
    fn flush(&mut self) {
        self.flush_unsent();
        if !self.ready() {
            return;
        }
        if let Some(changed) = self.dirty_since.take() {
            let gen = self.gen();
            self.sent_gen = gen;
            let code = self.code();
            self.send(LatentRequest::Current { gen, code, changed });
        }
    }
}

/// What the window asks the app to do (things that touch the document).
enum Action {
    Encode,
    PutBack,
    RegionAroundMask,
    Retry,
}

/// The document as the window needs it.
#[derive(Clone, Copy)]
struct DocView {
    width: usize,
    height: usize,
    /// A put back into this document is possible (it is the one the region was encoded from).
    can_put_back: bool,
}

const ERROR: Color32 = Color32::from_rgb(255, 110, 100);

fn thumb(tex: &TextureHandle, side: f32) -> egui::Image<'static> {
    egui::Image::from_texture(egui::load::SizedTexture::new(
        tex.id(),
        egui::vec2(side, side),
    ))
}

impl LatentPanel {
    /// The encode region for a `width` x `height` document: the centred square until the
    /// user sets one, always clamped to the image and square.
    fn effective_region(&mut self, width: usize, height: usize) -> Rect {
        if self.region.is_none() || self.region_for != (width, height) {
            self.region = Some(centred_square(width, height));
            self.region_for = (width, height);
        }
        let r = self.region.unwrap_or_else(|| centred_square(width, height));
        let side = r.width.min(r.height).clamp(1, width.min(height).max(1));
        let r = clamp_region(
            Rect {
                width: side,
                height: side,
                ..r
            },
            width,
            height,
        );
        self.region = Some(r);
        r
    }

    fn window_ui(&mut self, ui: &mut egui::Ui, doc: Option<DocView>) -> Vec<Action> {
        let mut actions = Vec::new();
        if LATENT_MODELS.len() > 1 {
            let mut id = self.model_id.clone();
            egui::ComboBox::from_label("Model")
                .selected_text(id.as_str())
                .show_ui(ui, |ui| {
                    for m in LATENT_MODELS {
                        ui.selectable_value(&mut id, (*m).to_owned(), *m);
                    }
                });
            if id != self.model_id {
                self.set_model(&id);
            }
        }
        let (id, dim, size, can_encode, notice, pca_sigmas, raw_sigmas) = match &self.state {
            ModelState::Idle | ModelState::Loading => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("Loading {}…", self.model_id));
                });
                return actions;
            }
            ModelState::Unavailable(m) => {
                ui.label(
                    RichText::new("The latent explorer is unavailable.")
                        .color(ERROR)
                        .strong(),
                );
                ui.label(m.as_str());
                ui.label(format!(
                    "It needs {id}.safetensors and {id}.json (from `kintsugi train vae`) in the \
                     weights folder; set KINTSUGI_WEIGHTS to use another folder.",
                    id = self.model_id
                ));
                if ui
                    .button("Retry")
                    .on_hover_text("Try loading the model again")
                    .clicked()
                {
                    actions.push(Action::Retry);
                }
                return actions;
            }
            ModelState::Ready(s) => (
                s.id.clone(),
                s.latent_dim,
                s.image_size,
                s.can_encode,
                s.notice.clone(),
                s.pca.as_ref().map(|p| p.sigmas.clone()).unwrap_or_default(),
                s.raw_sigmas.clone(),
            ),
        };
        ui.label(format!(
            "{id}: {dim}-dimensional latent, {size}x{size} decodes"
        ));
        if let Some(n) = notice {
            ui.label(RichText::new(n).small().weak());
        }
        let mut dismiss = false;
        if let Some((is_error, m)) = &self.note {
            ui.horizontal_wrapped(|ui| {
                let text = RichText::new(m.as_str());
                ui.label(if *is_error { text.color(ERROR) } else { text });
                dismiss = ui.small_button("Dismiss").clicked();
            });
        }
        if dismiss {
            self.note = None;
        }
        ui.separator();
        self.current_ui(ui);
        egui::CollapsingHeader::new("Samples")
            .default_open(true)
            .show(ui, |ui| self.grid_ui(ui));
        egui::CollapsingHeader::new("Principal directions")
            .default_open(true)
            .show(ui, |ui| self.pca_ui(ui, &pca_sigmas));
        egui::CollapsingHeader::new("Raw dimensions")
            .default_open(false)
            .show(ui, |ui| self.raw_ui(ui, &raw_sigmas));
        egui::CollapsingHeader::new("Interpolate")
            .default_open(true)
            .show(ui, |ui| self.interpolate_ui(ui));
        egui::CollapsingHeader::new("Encode the image")
            .default_open(true)
            .show(ui, |ui| {
                if !can_encode {
                    ui.label(format!("{id} has no encoder: start from a sample instead."));
                    return;
                }
                match doc {
                    Some(d) => self.encode_ui(ui, d, size, &mut actions),
                    None => {
                        ui.label("Open an image to encode a region of it.");
                    }
                }
            });
        actions
    }

    fn current_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            match &self.current_tex {
                Some(t) => {
                    ui.add(thumb(t, CURRENT))
                        .on_hover_text("The decode of the current point");
                }
                None => {
                    ui.add_sized([CURRENT, CURRENT], egui::Spinner::new());
                }
            }
            ui.vertical(|ui| {
                ui.label(RichText::new(self.point_label()).strong());
                if let Some(l) = self.latency.last() {
                    let median = self.latency.quantile(0.5).unwrap_or(l);
                    ui.label(
                        RichText::new(format!(
                            "slider to image: {} ms (median {} ms)",
                            l.as_millis(),
                            median.as_millis()
                        ))
                        .small(),
                    )
                    .on_hover_text("Time from a slider change to the frame that showed its decode");
                }
                if self.shown_gen < self.sent_gen || self.dirty_since.is_some() {
                    ui.spinner();
                }
                if ui
                    .button("Reset sliders")
                    .on_hover_text("Every slider back to zero: the current point is its base again")
                    .clicked()
                {
                    self.reset_all();
                }
                ui.horizontal(|ui| {
                    if ui
                        .button("Use as A")
                        .on_hover_text("Use the current point as the start of the interpolation")
                        .clicked()
                    {
                        self.set_a_current();
                    }
                    if ui
                        .button("Use as B")
                        .on_hover_text("Use the current point as the end of the interpolation")
                        .clicked()
                    {
                        self.set_b_current();
                    }
                });
            });
        });
    }

    fn grid_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label("Seed");
            let mut seed = self.seed;
            ui.add(egui::DragValue::new(&mut seed))
                .on_hover_text("Seed of the sample codes: the same seed gives the same grid");
            self.seed = seed;
            if ui
                .button("Resample")
                .on_hover_text("Draw the grid for this seed")
                .clicked()
            {
                self.resample(self.seed);
            }
            if ui
                .button("Next seed")
                .on_hover_text("Add one to the seed and draw its grid")
                .clicked()
            {
                self.resample(self.seed.wrapping_add(1));
            }
            if self.grid_waiting {
                ui.spinner();
            }
        });
        let (mut pick, mut end) = (None, None);
        egui::Grid::new("latent-grid")
            .spacing([4.0, 4.0])
            .show(ui, |ui| {
                for (i, cell) in self.grid.iter().enumerate() {
                    let resp = match &cell.tex {
                        Some(t) => ui.add(egui::Button::image(thumb(t, THUMB))),
                        None => ui.add_sized([THUMB, THUMB], egui::Spinner::new()),
                    };
                    let resp = resp.on_hover_text(format!(
                        "Sample {}: click to make it the current point; right-click to use it \
                         as an end of the interpolation",
                        i + 1
                    ));
                    if resp.clicked() {
                        pick = Some(i);
                    }
                    resp.context_menu(|ui| {
                        if ui.button("Use as A").clicked() {
                            end = Some((i, false));
                            ui.close();
                        }
                        if ui.button("Use as B").clicked() {
                            end = Some((i, true));
                            ui.close();
                        }
                    });
                    if (i + 1) % GRID_COLS == 0 {
                        ui.end_row();
                    }
                }
            });
        if let Some(i) = pick {
            self.pick_sample(i);
        }
        if let Some((i, b)) = end {
            self.pick_end(i, b);
        }
    }

    fn pca_ui(&mut self, ui: &mut egui::Ui, sigmas: &[f32]) {
        if self.pca.is_empty() {
            ui.label(
                "No principal directions for this model (no PCA of its codes): use the raw \
                 dimensions below.",
            );
            return;
        }
        ui.horizontal(|ui| {
            ui.label("Directions shown");
            let n = self.pca.len();
            ui.add(egui::DragValue::new(&mut self.pca_shown).range(1..=n))
                .on_hover_text("How many principal directions get a slider (largest first)");
            if ui
                .button("Reset all")
                .on_hover_text("Every slider back to zero")
                .clicked()
            {
                self.reset_all();
            }
        });
        let shown = self.pca_shown.min(self.pca.len());
        for i in 0..shown {
            ui.horizontal(|ui| {
                let mut v = self.pca[i];
                let sigma = sigmas.get(i).copied().unwrap_or(0.0);
                let r = ui
                    .add(egui::Slider::new(&mut v, -SIGMAS..=SIGMAS).text(format!("PC {}", i + 1)))
                    .on_hover_text(format!(
                        "Principal direction {} of the encoded training set, in standard \
                         deviations from the current point (1 sigma = {sigma:.3})",
                        i + 1
                    ));
                if r.changed() {
                    self.set_pca(i, v);
                }
                if ui
                    .add_enabled(v != 0.0, egui::Button::new("Reset").small())
                    .on_hover_text(format!("PC {} back to zero", i + 1))
                    .clicked()
                {
                    self.reset_pca(i);
                }
            });
        }
    }

    fn raw_ui(&mut self, ui: &mut egui::Ui, sigmas: &[f32]) {
        ui.label(
            RichText::new(
                "Each slider moves one coordinate of the code, in its standard deviation.",
            )
            .small(),
        );
        egui::ScrollArea::vertical()
            .id_salt("latent-raw")
            .max_height(220.0)
            .show(ui, |ui| {
                for i in 0..self.raw.len() {
                    ui.horizontal(|ui| {
                        let mut v = self.raw[i];
                        let sd = sigmas.get(i).copied().unwrap_or(1.0);
                        let r = ui
                            .add(
                                egui::Slider::new(&mut v, -SIGMAS..=SIGMAS)
                                    .text(format!("z {}", i + 1)),
                            )
                            .on_hover_text(format!(
                                "Latent coordinate {} (1 sigma = {sd:.3})",
                                i + 1
                            ));
                        if r.changed() {
                            self.set_raw(i, v);
                        }
                        if ui
                            .add_enabled(v != 0.0, egui::Button::new("Reset").small())
                            .on_hover_text(format!("z {} back to zero", i + 1))
                            .clicked()
                        {
                            self.set_raw(i, 0.0);
                        }
                    });
                }
            });
    }

    fn interpolate_ui(&mut self, ui: &mut egui::Ui) {
        let label = |p: &Option<Pick>| p.as_ref().map_or("not set".to_owned(), |p| p.label.clone());
        ui.label(format!("A: {}", label(&self.a)));
        ui.label(format!("B: {}", label(&self.b)));
        ui.horizontal(|ui| {
            ui.label("Steps");
            ui.add(egui::DragValue::new(&mut self.steps).range(2..=32))
                .on_hover_text("Images in the strip, both ends included");
            egui::ComboBox::from_id_salt("latent-interp")
                .selected_text(self.interp.label())
                .show_ui(ui, |ui| {
                    for k in [Interpolation::Linear, Interpolation::Spherical] {
                        ui.selectable_value(&mut self.interp, k, k.label());
                    }
                })
                .response
                .on_hover_text(
                    "Linear suits a VAE; spherical keeps Gaussian codes at a typical norm (GAN)",
                );
            let ready = self.a.is_some() && self.b.is_some();
            if ui
                .add_enabled(ready, egui::Button::new("Interpolate"))
                .on_hover_text("Decode a strip of in-between points from A to B")
                .on_disabled_hover_text(
                    "Pick A and B first (buttons above, or right-click a sample)",
                )
                .clicked()
            {
                self.interpolate(self.steps, self.interp);
            }
            if self.strip_waiting {
                ui.spinner();
            }
        });
        let mut pick = None;
        egui::ScrollArea::horizontal()
            .id_salt("latent-strip")
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    let n = self.strip.len();
                    for (i, cell) in self.strip.iter().enumerate() {
                        let t = i as f32 / (n.max(2) - 1) as f32;
                        let resp = match &cell.tex {
                            Some(tex) => ui.add(egui::Button::image(thumb(tex, THUMB))),
                            None => ui.add_sized([THUMB, THUMB], egui::Spinner::new()),
                        };
                        if resp
                            .on_hover_text(format!(
                                "t = {t:.2}: click to make it the current point"
                            ))
                            .clicked()
                        {
                            pick = Some((i, t));
                        }
                    }
                });
            });
        if let Some((i, t)) = pick {
            if let Some(c) = self.strip.get(i) {
                let (code, image) = (c.code.clone(), c.image.clone());
                self.set_base(code, format!("interpolation at t = {t:.2}"), image);
            }
        }
    }

    fn encode_ui(&mut self, ui: &mut egui::Ui, d: DocView, size: usize, actions: &mut Vec<Action>) {
        let mut r = self.effective_region(d.width, d.height);
        ui.label(
            RichText::new(format!(
                "A square of the image is resized to {size}x{size} and encoded; \"Put back\" \
                 pastes the edited decode into it (one undo step)."
            ))
            .small(),
        );
        let mut side = r.width;
        let mut changed = false;
        ui.horizontal(|ui| {
            ui.label("x");
            changed |= ui
                .add(egui::DragValue::new(&mut r.x).range(0..=d.width.saturating_sub(1)))
                .on_hover_text("Left edge of the square, in image pixels")
                .changed();
            ui.label("y");
            changed |= ui
                .add(egui::DragValue::new(&mut r.y).range(0..=d.height.saturating_sub(1)))
                .on_hover_text("Top edge of the square, in image pixels")
                .changed();
            ui.label("size");
            changed |= ui
                .add(egui::DragValue::new(&mut side).range(1..=d.width.min(d.height).max(1)))
                .on_hover_text("Side of the square, in image pixels")
                .changed();
        });
        if changed {
            self.region = Some(Rect {
                width: side,
                height: side,
                ..r
            });
        }
        ui.horizontal(|ui| {
            if ui
                .button("Centre square")
                .on_hover_text("The largest square in the middle of the image")
                .clicked()
            {
                self.region = Some(centred_square(d.width, d.height));
            }
            if ui
                .button("Around the mask")
                .on_hover_text("The square around the painted mask (paint over the face first)")
                .clicked()
            {
                actions.push(Action::RegionAroundMask);
            }
        });
        ui.horizontal(|ui| {
            let idle = self.encode_wait.is_none() && self.put_back.is_none();
            if ui
                .add_enabled(idle, egui::Button::new("Encode"))
                .on_hover_text("Encode the region: its code becomes the current point")
                .clicked()
            {
                actions.push(Action::Encode);
            }
            if ui
                .add_enabled(idle && d.can_put_back, egui::Button::new("Put back"))
                .on_hover_text(
                    "Paste the current decode into the encoded region (Ctrl+Z undoes it)",
                )
                .on_disabled_hover_text("Encode a region of this image first")
                .clicked()
            {
                actions.push(Action::PutBack);
            }
            if !idle {
                ui.spinner();
            }
        });
        ui.checkbox(&mut self.keep_detail, "Transfer only the edit")
            .on_hover_text(
                "Add the change between the encoded decode and the edited one to the photo, \
                 keeping the detail the model cannot reproduce, instead of pasting the decode",
            );
    }
}

impl StudioApp {
    /// The latent explorer's state.
    pub fn latent(&self) -> &LatentPanel {
        &self.latent
    }

    /// The latent explorer's state, mutable (tests and benchmarks drive it through this).
    pub fn latent_mut(&mut self) -> &mut LatentPanel {
        &mut self.latent
    }

    /// Shows or hides the latent explorer (L).
    pub fn toggle_latent(&mut self) {
        let open = self.latent.is_open();
        self.latent.set_open(!open);
    }

    /// Encodes the explorer's region of the current image; its code becomes the current point
    /// when the worker answers.
    pub fn latent_encode(&mut self) -> Result<(), String> {
        let Some(doc) = &self.doc else {
            return Err("open an image first".into());
        };
        let Some(s) = self.latent.summary() else {
            return Err("the latent model is not loaded".into());
        };
        if !s.can_encode {
            return Err(format!("{} has no encoder", s.id));
        }
        let (image, original) = (doc.current().clone(), Arc::downgrade(doc.original()));
        let region = self.latent.effective_region(doc.width(), doc.height());
        let gen = self.latent.gen();
        self.latent.encode_wait = Some((gen, original));
        self.latent
            .send(LatentRequest::Encode { gen, image, region });
        Ok(())
    }

    /// Pastes the decode of the current point into the region it was encoded from (resized
    /// back), as one undoable edit, once the worker has composed it.
    pub fn latent_put_back(&mut self) -> Result<(), String> {
        let Some(doc) = &self.doc else {
            return Err("open an image first".into());
        };
        let Some(enc) = &self.latent.encoded else {
            return Err("encode a region of the image first".into());
        };
        if !std::ptr::eq(enc.original.as_ptr(), Arc::as_ptr(doc.original())) {
            return Err("the region was encoded from another image: encode this one first".into());
        }
        let (region, original) = (enc.region, enc.original.clone());
        let reference = self.latent.keep_detail.then(|| enc.code.clone());
        let input = doc.current().clone();
        let code = self.latent.code();
        let gen = self.latent.gen();
        self.latent.put_back = Some(PutBackWait {
            gen,
            input: input.clone(),
            original,
            region,
        });
        self.latent.send(LatentRequest::PutBack {
            gen,
            image: input,
            region,
            code,
            reference,
        });
        Ok(())
    }

    fn finish_put_back(&mut self, wait: PutBackWait, ev: LatentEvent) {
        let LatentEvent::PutBack { result, holes, .. } = ev else {
            return;
        };
        let Some(doc) = &mut self.doc else {
            return;
        };
        if !std::ptr::eq(wait.original.as_ptr(), Arc::as_ptr(doc.original())) {
            self.error("the image changed before the decode was put back; nothing was changed");
            return;
        }
        let r = wait.region;
        match doc.apply_repair(result, holes, &wait.input) {
            Some(_) => self.info(format!(
                "Put the decode back into {}x{} at ({}, {}); Ctrl+Z undoes it",
                r.width, r.height, r.x, r.y
            )),
            None => self.info("The decode matches the region: nothing changed"),
        }
    }

    fn region_around_mask(&mut self) {
        let Some(doc) = &self.doc else {
            return;
        };
        let Some(b) = doc.mask().bounding_box() else {
            self.latent.note = Some((false, "The mask is empty: paint over the face first".into()));
            return;
        };
        // A square around the painted area, with a little context.
        let side = (b.width.max(b.height) as f32 * 1.2).ceil() as usize;
        let (cx, cy) = (b.x + b.width / 2, b.y + b.height / 2);
        let r = Rect {
            x: cx.saturating_sub(side / 2),
            y: cy.saturating_sub(side / 2),
            width: side,
            height: side,
        };
        let (w, h) = (doc.width(), doc.height());
        self.latent.region = Some(clamp_region(r, w, h));
        self.latent.region_for = (w, h);
    }

    /// Draws the encode region over the canvas.
    fn paint_region(&mut self, ctx: &egui::Context) {
        let (Some(doc), Some(s)) = (&self.doc, self.latent.summary()) else {
            return;
        };
        if !s.can_encode || self.canvas.rect.width() <= 0.0 {
            return;
        }
        let r = self.latent.effective_region(doc.width(), doc.height());
        let v = self.canvas.view;
        let origin = self.canvas.rect.min + v.offset;
        let min = origin + egui::vec2(r.x as f32, r.y as f32) * v.zoom;
        let max = origin + egui::vec2(r.right() as f32, r.bottom() as f32) * v.zoom;
        // The canvas' own layer: under every window, clipped to the canvas.
        let painter = ctx
            .layer_painter(egui::LayerId::background())
            .with_clip_rect(self.canvas.rect);
        let rect = egui::Rect::from_min_max(min, max);
        painter.rect_stroke(
            rect,
            0.0,
            egui::Stroke::new(1.5, Color32::from_rgb(255, 210, 80)),
            egui::StrokeKind::Outside,
        );
        painter.text(
            rect.left_top() + egui::vec2(2.0, -2.0),
            egui::Align2::LEFT_BOTTOM,
            "encode region",
            egui::FontId::proportional(12.0),
            Color32::from_rgb(255, 210, 80),
        );
    }

    /// The latent explorer for this frame: starts the worker when first opened, applies its
    /// events, draws the window, and sends the current point if it changed.
    pub(super) fn latent_window(&mut self, ctx: &egui::Context) {
        self.latent.ensure_worker(ctx, self.threads);
        if let Some((wait, ev)) = self.latent.poll(ctx) {
            self.finish_put_back(wait, ev);
        }
        if self.latent.is_open() {
            let doc =
                self.doc.as_ref().map(|d| DocView {
                    width: d.width(),
                    height: d.height(),
                    can_put_back: self.latent.encoded.as_ref().is_some_and(|e| {
                        std::ptr::eq(e.original.as_ptr(), Arc::as_ptr(d.original()))
                    }),
                });
            let mut open = true;
            let mut actions = Vec::new();
            egui::Window::new("Latent explorer")
                .open(&mut open)
                .default_width(430.0)
                .default_pos(ctx.content_rect().right_top() + egui::vec2(-760.0, 60.0))
                .vscroll(true)
                .resizable(true)
                .show(ctx, |ui| actions = self.latent.window_ui(ui, doc));
            if !open {
                self.latent.set_open(false);
            }
            for a in actions {
                let r = match a {
                    Action::Encode => self.latent_encode(),
                    Action::PutBack => self.latent_put_back(),
                    Action::RegionAroundMask => {
                        self.region_around_mask();
                        Ok(())
                    }
                    Action::Retry => {
                        self.latent.worker = None;
                        self.latent.state = ModelState::Idle;
                        Ok(())
                    }
                };
                if let Err(e) = r {
                    self.latent.note = Some((true, e));
                }
            }
            if self.latent.is_open() {
                self.paint_region(ctx);
            }
        }
        self.latent.flush();
        if !self.latent.unsent.is_empty() {
            // The worker's queue was full: try again shortly.
            ctx.request_repaint_after(Duration::from_millis(10));
        }
    }
}
