//! The live GAN training view's worker: one thread that owns the [`GanTrainer`] and its
//! [`ImageSet`], so a training step never runs on (or waits on) the UI thread.
//!
//! It follows the engine's protocol (`DESIGN.md`): plain command values in over a bounded
//! crossbeam channel, events tagged with the run they belong to out over another, a repaint
//! poke after each event, panics caught and reported while the thread keeps serving. The
//! thread checks its commands between two training steps (and between two images while it
//! reads the data), so Pause and Stop answer within one step. It idles between runs and keeps
//! the last data set it read, so a second run on the same folder starts at once. Dropping the
//! [`GanTrainWorker`] closes both channels and joins the thread (at most one step later).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::engine::{panic_message, Notify};
use crate::imaging::ImageF32;
use crate::models::gan::GanManifest;
use crate::train::gan::{GanStepStats, GanTrainConfig, GanTrainer};
use crate::train::{ImageSet, TrainError};

/// Commands that may wait in the queue.
const QUEUE: usize = 32;

/// Events that may wait for the UI (a full queue holds the worker back until the UI drains).
const EVENTS: usize = 1024;

/// Images in the fixed-seed sample grid.
pub const GRID_SAMPLES: usize = 16;

/// Columns of the sample grid.
pub const GRID_COLS: usize = 4;

/// Gutter between grid cells, in pixels.
const GRID_GAP: usize = 2;

/// Grey of the grid's gutter.
const GUTTER: f32 = 0.25;

/// Read progress is reported every this many images.
const LOAD_REPORT: usize = 200;

/// Everything a training run needs.
#[derive(Clone, Debug)]
pub struct StartRun {
    /// Identifies the run: every event of it carries this number.
    pub run: u64,
    /// Model sizes, loss, batch, learning rates and seed. With `shipped`, the model sizes are
    /// replaced by those of the shipped model's manifest.
    pub config: GanTrainConfig,
    /// Folder of square PNGs of the model's image size.
    pub data: PathBuf,
    /// Start from these trained weights (`<id>.safetensors`, sizes from `<id>.json` next to
    /// it) instead of from scratch.
    pub shipped: Option<PathBuf>,
    /// Shortest time between two sample grids (a grid also goes out on pause and stop).
    pub grid_every: Duration,
    /// Seed of the grid's fixed codes: the same faces-to-be every time.
    pub grid_seed: u64,
}

/// What the panel asks the worker to do.
#[derive(Debug)]
pub enum GanCommand {
    /// Start a run (a run in progress is stopped first).
    Start(Box<StartRun>),
    /// Stop stepping until [`GanCommand::Resume`]; the run keeps its state.
    Pause,
    /// Continue a paused run.
    Resume,
    /// End the run; the worker idles until the next start.
    Stop,
    /// Write a checkpoint of the run (resumable with `kintsugi train gan --resume --runs DIR`).
    SaveCheckpoint(PathBuf),
}

/// What happened, for the run [`GanTrainEvent::run`].
#[derive(Clone, Debug)]
pub enum GanEventKind {
    /// Reading the data: `done` of `total` images.
    DataLoading {
        /// Images read.
        done: usize,
        /// Images in the folder.
        total: usize,
    },
    /// The data is in memory.
    DataLoaded {
        /// Images.
        n: usize,
    },
    /// Training begins with these settings (the shipped model's sizes when started from it).
    Started {
        /// The settings in use.
        config: Box<GanTrainConfig>,
    },
    /// One step's measurements.
    Step(GanStepStats),
    /// The fixed-seed sample grid of the moving-average generator after `step` steps.
    Grid {
        /// Steps done.
        step: u64,
        /// The grid, RGB in `[0, 1]`.
        image: Arc<ImageF32>,
    },
    /// The run is paused after `step` steps.
    Paused {
        /// Steps done.
        step: u64,
    },
    /// The run continues.
    Resumed,
    /// A checkpoint was written to this folder.
    Saved(PathBuf),
    /// A checkpoint could not be written; the run goes on.
    SaveFailed(String),
    /// The run ended on Stop after `steps` steps.
    Stopped {
        /// Steps done.
        steps: u64,
    },
    /// The run could not start or failed; the worker idles.
    Error(String),
}

/// An event of one run.
#[derive(Clone, Debug)]
pub struct GanTrainEvent {
    /// The run ([`StartRun::run`]).
    pub run: u64,
    /// What happened.
    pub kind: GanEventKind,
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the GAN training worker: {0}")]
pub struct WorkerStartError(String);

/// The worker thread and its channels.
pub type GanTrainWorker = super::panel_worker::PanelWorker<GanCommand, GanTrainEvent>;

impl GanTrainWorker {
    /// Starts the idle thread. Training runs in a rayon pool of `threads` threads; `notify` is
    /// called after each event (the studio passes a repaint request).
    pub fn start(threads: usize, notify: Option<Notify>) -> Result<Self, WorkerStartError> {
        let (tx, commands) = bounded::<GanCommand>(QUEUE);
        let (events, rx) = bounded::<GanTrainEvent>(EVENTS);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("kintsugi-gan-train-{i}"))
            .build()
            .map_err(|e| WorkerStartError(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name("kintsugi-gan-train".into())
            .spawn(move || serve(commands, events, notify, pool))
            .map_err(|e| WorkerStartError(e.to_string()))?;
        Ok(Self::new(tx, rx, thread))
    }
}

/// Assembles images `[n, 3, size, size]` (planar, `[0, 1]`, as `data`) into one RGB grid with
/// `cols` columns and a grey gutter. `None` when the sizes do not add up.
pub fn sample_grid(data: &[f32], n: usize, size: usize, cols: usize) -> Option<ImageF32> {
    if n == 0 || size == 0 || cols == 0 || data.len() != n * 3 * size * size {
        return None;
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let w = cols * (size + GRID_GAP) + GRID_GAP;
    let h = rows * (size + GRID_GAP) + GRID_GAP;
    let mut out = ImageF32::from_vec(w, h, 3, vec![GUTTER; w * h * 3])?;
    let plane = size * size;
    for k in 0..n {
        let ox = GRID_GAP + (k % cols) * (size + GRID_GAP);
        let oy = GRID_GAP + (k / cols) * (size + GRID_GAP);
        let img = &data[k * 3 * plane..(k + 1) * 3 * plane];
        for y in 0..size {
            for x in 0..size {
                let px = out.pixel_mut(ox + x, oy + y);
                for (c, v) in px.iter_mut().enumerate() {
                    let f = img[c * plane + y * size + x];
                    *v = if f.is_finite() {
                        f.clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
    Some(out)
}

/// How a run (or the read of its data) ended.
enum Ended {
    /// Stopped, failed or finished: wait for the next start.
    Idle,
    /// A new start arrived meanwhile: run it next.
    Restart(Box<StartRun>),
    /// The panel is gone: leave the thread.
    Disconnected,
}

/// The worker's side of the channels.
struct Link {
    commands: Receiver<GanCommand>,
    events: Sender<GanTrainEvent>,
    notify: Option<Notify>,
}

impl Link {
    /// Sends an event and pokes the UI; false once nobody listens.
    fn emit(&self, run: u64, kind: GanEventKind) -> bool {
        let ok = self.events.send(GanTrainEvent { run, kind }).is_ok();
        if let Some(n) = &self.notify {
            n();
        }
        ok
    }
}

/// The data set read last, kept for the next run on the same folder.
struct Cached {
    dir: PathBuf,
    size: usize,
    set: Arc<ImageSet>,
}

fn serve(
    commands: Receiver<GanCommand>,
    events: Sender<GanTrainEvent>,
    notify: Option<Notify>,
    pool: rayon::ThreadPool,
) {
    let link = Link {
        commands,
        events,
        notify,
    };
    let mut cache: Option<Cached> = None;
    let mut next: Option<Box<StartRun>> = None;
    loop {
        let start = match next.take() {
            Some(s) => s,
            None => match link.commands.recv() {
                Ok(GanCommand::Start(s)) => s,
                // Nothing runs: pause, resume, stop and save have nothing to act on.
                Ok(_) => continue,
                Err(_) => return,
            },
        };
        let run = start.run;
        let ended = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| run_training(&link, &mut cache, *start))
        }));
        match ended {
            Ok(Ended::Idle) => {}
            Ok(Ended::Restart(s)) => next = Some(s),
            Ok(Ended::Disconnected) => return,
            Err(p) => {
                let msg = format!(
                    "internal error (panicked: {}); start again to retry",
                    panic_message(p.as_ref())
                );
                if !link.emit(run, GanEventKind::Error(msg)) {
                    return;
                }
            }
        }
    }
}

/// The model sizes of the shipped weights at `weights` (from the manifest beside them).
fn shipped_config(weights: &Path) -> Result<crate::models::gan::GanConfig, String> {
    let json = weights.with_extension("json");
    let manifest = GanManifest::read(&json).map_err(|e| e.to_string())?;
    manifest.config.validate().map_err(|e| e.to_string())?;
    Ok(manifest.config)
}

/// Reads the data of `start`, or takes it from the cache. Commands that arrive meanwhile are
/// answered: Stop and a new Start end the read.
fn load_data(
    link: &Link,
    cache: &mut Option<Cached>,
    start: &StartRun,
    size: usize,
) -> Result<Arc<ImageSet>, Ended> {
    if let Some(c) = cache
        .as_ref()
        .filter(|c| c.dir == start.data && c.size == size)
    {
        return Ok(c.set.clone());
    }
    let run = start.run;
    let mut ended = None;
    let read = ImageSet::load_dir_with(&start.data, size, |done, total| {
        match link.commands.try_recv() {
            Ok(GanCommand::Stop) => ended = Some(Ended::Idle),
            Ok(GanCommand::Start(s)) => ended = Some(Ended::Restart(s)),
            Ok(_) | Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => ended = Some(Ended::Disconnected),
        }
        if ended.is_some() {
            return false;
        }
        if done % LOAD_REPORT == 0 && !link.emit(run, GanEventKind::DataLoading { done, total }) {
            ended = Some(Ended::Disconnected);
            return false;
        }
        true
    });
    match read {
        Ok(set) => {
            let set = Arc::new(set);
            *cache = Some(Cached {
                dir: start.data.clone(),
                size,
                set: set.clone(),
            });
            Ok(set)
        }
        Err(TrainError::Stopped) => {
            let ended = ended.unwrap_or(Ended::Idle);
            if matches!(ended, Ended::Idle) && !link.emit(run, GanEventKind::Stopped { steps: 0 }) {
                return Err(Ended::Disconnected);
            }
            Err(ended)
        }
        Err(e) => {
            let msg = format!(
                "no usable training data in {} (needs {size}x{size} PNG images): {e}",
                start.data.display()
            );
            if link.emit(run, GanEventKind::Error(msg)) {
                Err(Ended::Idle)
            } else {
                Err(Ended::Disconnected)
            }
        }
    }
}

/// The fixed-seed grid of `trainer`'s moving-average generator.
fn grid_of(trainer: &GanTrainer, seed: u64) -> Result<ImageF32, TrainError> {
    let x = trainer.samples(seed, GRID_SAMPLES)?;
    let (n, _, s, _) = x.dims4()?;
    let data: Vec<f32> = x.flatten_all()?.to_vec1()?;
    sample_grid(&data, n, s, GRID_COLS)
        .ok_or_else(|| TrainError::Invalid("the generator's samples have an odd shape".into()))
}

/// One run: read the data, build the trainer, then step until Stop, a new Start or an error.
fn run_training(link: &Link, cache: &mut Option<Cached>, start: StartRun) -> Ended {
    let run = start.run;
    let fail = |msg: String| {
        if link.emit(run, GanEventKind::Error(msg)) {
            Ended::Idle
        } else {
            Ended::Disconnected
        }
    };
    let mut config = start.config.clone();
    if let Some(w) = &start.shipped {
        match shipped_config(w) {
            Ok(m) => config.model = m,
            Err(e) => return fail(format!("cannot start from {}: {e}", w.display())),
        }
    }
    if let Err(e) = config.model.validate() {
        return fail(e.to_string());
    }
    let data = match load_data(link, cache, &start, config.model.image_size) {
        Ok(d) => d,
        Err(ended) => return ended,
    };
    if !link.emit(run, GanEventKind::DataLoaded { n: data.len() }) {
        return Ended::Disconnected;
    }
    let dev = Device::Cpu;
    let mut trainer = match GanTrainer::new(config.clone(), data.len(), &dev) {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot build the GAN: {e}")),
    };
    if let Some(w) = &start.shipped {
        if let Err(e) = trainer.init_from(w) {
            return fail(format!("cannot start from {}: {e}", w.display()));
        }
    }
    if !link.emit(
        run,
        GanEventKind::Started {
            config: Box::new(config),
        },
    ) {
        return Ended::Disconnected;
    }
    let send_grid = |trainer: &GanTrainer| -> Option<Ended> {
        match grid_of(trainer, start.grid_seed) {
            Ok(image) => {
                let ev = GanEventKind::Grid {
                    step: trainer.steps(),
                    image: Arc::new(image),
                };
                (!link.emit(run, ev)).then_some(Ended::Disconnected)
            }
            Err(e) => Some(fail(format!("sampling failed: {e}"))),
        }
    };
    // The grid of the starting point, so the panel shows where training begins.
    if let Some(end) = send_grid(&trainer) {
        return end;
    }
    let mut last_grid = Instant::now();
    let mut paused = false;
    loop {
        // Between two steps: answer every waiting command; while paused, wait for one.
        loop {
            let cmd = if paused {
                match link.commands.recv() {
                    Ok(c) => c,
                    Err(_) => return Ended::Disconnected,
                }
            } else {
                match link.commands.try_recv() {
                    Ok(c) => c,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ended::Disconnected,
                }
            };
            match cmd {
                GanCommand::Pause if !paused => {
                    paused = true;
                    let step = trainer.steps();
                    if let Some(end) = send_grid(&trainer) {
                        return end;
                    }
                    if !link.emit(run, GanEventKind::Paused { step }) {
                        return Ended::Disconnected;
                    }
                }
                GanCommand::Resume if paused => {
                    paused = false;
                    last_grid = Instant::now();
                    if !link.emit(run, GanEventKind::Resumed) {
                        return Ended::Disconnected;
                    }
                }
                GanCommand::Pause | GanCommand::Resume => {}
                GanCommand::SaveCheckpoint(dir) => {
                    let ev = match trainer.save_checkpoint(&dir) {
                        Ok(()) => GanEventKind::Saved(dir),
                        Err(e) => GanEventKind::SaveFailed(e.to_string()),
                    };
                    if !link.emit(run, ev) {
                        return Ended::Disconnected;
                    }
                }
                GanCommand::Stop | GanCommand::Start(_) => {
                    if !paused {
                        if let Some(end) = send_grid(&trainer) {
                            return end;
                        }
                    }
                    let steps = trainer.steps();
                    if !link.emit(run, GanEventKind::Stopped { steps }) {
                        return Ended::Disconnected;
                    }
                    return match cmd {
                        GanCommand::Start(s) => Ended::Restart(s),
                        _ => Ended::Idle,
                    };
                }
            }
        }
        match trainer.step(&data) {
            Ok(s) => {
                if !link.emit(run, GanEventKind::Step(s)) {
                    return Ended::Disconnected;
                }
            }
            Err(e) => {
                return fail(format!(
                    "training failed at step {}: {e}",
                    trainer.steps() + 1
                ))
            }
        }
        if last_grid.elapsed() >= start.grid_every {
            if let Some(end) = send_grid(&trainer) {
                return end;
            }
            last_grid = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_each_image_in_its_cell_with_a_gutter() {
        // Two 2x2 images, planar RGB: image k has value (k + 1) * 0.1 + c * 0.2 + p * 0.01.
        let size = 2;
        let data: Vec<f32> = (0..2)
            .flat_map(|k| {
                (0..3).flat_map(move |c| {
                    (0..4).map(move |p| (k + 1) as f32 * 0.1 + c as f32 * 0.2 + p as f32 * 0.01)
                })
            })
            .collect();
        let g = sample_grid(&data, 2, size, 4).expect("grid");
        // Columns are capped at the image count: one row of two cells.
        assert_eq!((g.width(), g.height(), g.channels()), (10, 6, 3));
        for k in 0..2 {
            for p in 0..4 {
                let (x, y) = (2 + k * 4 + p % 2, 2 + p / 2);
                for c in 0..3 {
                    let want = (k + 1) as f32 * 0.1 + c as f32 * 0.2 + p as f32 * 0.01;
                    assert!((g.pixel(x, y)[c] - want).abs() < 1e-6, "k{k} p{p} c{c}");
                }
            }
        }
        for (x, y) in [(0, 0), (1, 3), (4, 2), (9, 5), (5, 4)] {
            assert_eq!(g.pixel(x, y), &[GUTTER; 3], "({x}, {y})");
        }
        // Four images in two columns: two rows.
        let g = sample_grid(&[0.5; 4 * 12], 4, 2, 2).expect("grid");
        assert_eq!((g.width(), g.height()), (10, 10));
        assert_eq!(g.pixel(7, 7), &[0.5; 3]);
    }

    #[test]
    fn grid_clamps_values_and_refuses_wrong_sizes() {
        let g = sample_grid(&[2.0, -1.0, f32::NAN], 1, 1, 4).expect("grid");
        assert_eq!(g.pixel(2, 2), &[1.0, 0.0, 0.0]);
        assert!(sample_grid(&[0.0; 11], 1, 2, 4).is_none());
        assert!(sample_grid(&[], 0, 2, 4).is_none());
        assert!(sample_grid(&[0.0; 12], 1, 2, 0).is_none());
    }
}
