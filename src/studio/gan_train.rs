//! The live GAN training view: a window (toggled with G or the top bar's button) that trains
//! the face GAN on a folder of images while you watch, the way GAN Lab shows it.
//!
//! - settings: the data folder (typed or picked), the loss, the batch, both learning rates and
//!   the starting point (from scratch, or from the shipped `gan-faces` weights when present)
//! - Start / Pause / Resume / Stop, and "Save checkpoint" (resumable from the CLI)
//! - a status line: state, step, steps per second, training time, images
//! - loss curves drawn with the painter: D and G losses, and D(x) and D(G(z)) on a 0-1 scale
//!   with the 0.5 line where a perfectly fooled discriminator would sit
//! - the 4x4 sample grid of the moving-average generator for fixed codes, refreshed about once
//!   a second, so the same faces can be watched forming
//!
//! The panel holds only UI state; the trainer runs on its own thread
//! ([`super::gan_train_worker`]). Commands are queued and sent at the end of the frame, events
//! are drained at the start of the next one, and nothing here ever waits on the worker. The
//! curves keep a bounded history ([`LossHistory`]): past its capacity, neighbouring points are
//! averaged in pairs, so a long run costs the same to draw as a short one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions};

use super::app::StudioApp;
use super::gan_train_worker::{GanCommand, GanEventKind, GanTrainWorker, StartRun};
use crate::imaging::ImageF32;
use crate::models::gan::{GanConfig, GanLoss};
use crate::train::gan::{GanStepStats, GanTrainConfig};

/// Where the face data usually is (the project's shared data folder), used as the default
/// when it exists.
pub const DEFAULT_DATA: &str = "../shared/datasets/faces-large/utkface64";

/// Id of the shipped face GAN in the weights folder.
pub const SHIPPED_ID: &str = "gan-faces";

/// Where "Save checkpoint" writes by default.
pub const DEFAULT_CHECKPOINT_DIR: &str = "runs/gan-studio";

/// Points kept per curve before neighbours are averaged in pairs.
pub const HISTORY_POINTS: usize = 2048;

/// Batch of a live run: smaller than the CLI's 32, so steps come often enough to watch.
const DEFAULT_BATCH: usize = 16;

/// Shortest time between two sample grids.
const GRID_EVERY: Duration = Duration::from_millis(1000);

/// Seed of the grid's fixed codes (`codes_for_seed(GRID_SEED, 16, latent)`).
pub const GRID_SEED: u64 = 0x6A1;

/// Side of the sample grid on screen, in points.
const GRID_SIDE: f32 = 256.0;

/// Height of one curve plot, in points.
const PLOT_HEIGHT: f32 = 118.0;

const ERROR: Color32 = Color32::from_rgb(255, 110, 100);
const D_LOSS: Color32 = Color32::from_rgb(90, 160, 255);
const G_LOSS: Color32 = Color32::from_rgb(255, 160, 60);
const D_REAL: Color32 = Color32::from_rgb(110, 210, 110);
const D_FAKE: Color32 = Color32::from_rgb(240, 90, 120);

/// A bounded history of step measurements for the curves. Each stored point is the mean of a
/// run of consecutive steps (`stride` of them; its `step` is the last one); when the history
/// fills up, neighbours are averaged in pairs and the stride doubles, so memory and drawing
/// cost stay bounded while the whole run stays visible.
#[derive(Clone, Debug)]
pub struct LossHistory {
    cap: usize,
    stride: u64,
    points: Vec<GanStepStats>,
    /// Steps of the point being filled: sums and count.
    acc: [f64; 4],
    acc_n: u64,
    acc_step: u64,
}

impl Default for LossHistory {
    fn default() -> Self {
        Self::new(HISTORY_POINTS)
    }
}

impl LossHistory {
    /// An empty history of at most `cap` points (at least 4; rounded up to even).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(4).next_multiple_of(2);
        Self {
            cap,
            stride: 1,
            points: Vec::with_capacity(cap),
            acc: [0.0; 4],
            acc_n: 0,
            acc_step: 0,
        }
    }

    /// Adds one step.
    pub fn push(&mut self, s: GanStepStats) {
        for (a, v) in self.acc.iter_mut().zip(values(&s)) {
            *a += v;
        }
        self.acc_n += 1;
        self.acc_step = s.step;
        if self.acc_n < self.stride {
            return;
        }
        if let Some(p) = self.pending() {
            self.points.push(p);
        }
        (self.acc, self.acc_n) = ([0.0; 4], 0);
        if self.points.len() >= self.cap {
            self.points = self
                .points
                .chunks(2)
                .map(|pair| {
                    let last = pair[pair.len() - 1];
                    let k = pair.len() as f64;
                    let mean = |f: fn(&GanStepStats) -> f64| pair.iter().map(f).sum::<f64>() / k;
                    GanStepStats {
                        step: last.step,
                        d_loss: mean(|p| p.d_loss),
                        g_loss: mean(|p| p.g_loss),
                        d_real: mean(|p| p.d_real),
                        d_fake: mean(|p| p.d_fake),
                    }
                })
                .collect();
            self.stride *= 2;
        }
    }

    /// The mean of the steps not yet folded into a stored point.
    fn pending(&self) -> Option<GanStepStats> {
        if self.acc_n == 0 {
            return None;
        }
        let n = self.acc_n as f64;
        Some(GanStepStats {
            step: self.acc_step,
            d_loss: self.acc[0] / n,
            g_loss: self.acc[1] / n,
            d_real: self.acc[2] / n,
            d_fake: self.acc[3] / n,
        })
    }

    /// Every point, oldest first (the last may average fewer steps than the stride).
    pub fn points(&self) -> impl Iterator<Item = GanStepStats> + '_ {
        self.points.iter().copied().chain(self.pending())
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len() + usize::from(self.acc_n > 0)
    }

    /// True when no step was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Steps averaged into each stored point.
    pub fn stride(&self) -> u64 {
        self.stride
    }

    /// The most points the history holds.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = Self::new(self.cap);
    }
}

fn values(s: &GanStepStats) -> [f64; 4] {
    [s.d_loss, s.g_loss, s.d_real, s.d_fake]
}

/// The y range a plot of `values` shows: the finite values' span with 8% padding; a single
/// value or a flat line gets a span of its own, and no values give 0..1.
pub fn value_range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span < 1e-9 {
        let pad = (lo.abs() * 0.1).max(0.05);
        return (lo - pad, hi + pad);
    }
    (lo - 0.08 * span, hi + 0.08 * span)
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No run yet.
    Idle,
    /// Reading the data (`done` of `total` images; 0 of 0 until the worker reports).
    Loading {
        /// Images read.
        done: usize,
        /// Images in the folder.
        total: usize,
    },
    /// Stepping.
    Running,
    /// Paused: the run keeps its state.
    Paused,
    /// Stop was asked for; the worker finishes its step.
    Stopping,
    /// The run ended on Stop.
    Stopped,
    /// The run could not start or failed (see [`GanTrainPanel::error`]).
    Failed,
}

impl Phase {
    /// True while a run holds the worker (loading, running, paused or stopping).
    pub fn active(self) -> bool {
        matches!(
            self,
            Phase::Loading { .. } | Phase::Running | Phase::Paused | Phase::Stopping
        )
    }
}

/// The live training view's state. Reach it with [`StudioApp::gan_train`].
pub struct GanTrainPanel {
    open: bool,
    // Settings.
    data: String,
    loss: GanLoss,
    batch: usize,
    lr_g: f64,
    lr_d: f64,
    model: GanConfig,
    from_shipped: bool,
    shipped: Option<PathBuf>,
    weights_dir: PathBuf,
    checkpoint_dir: PathBuf,
    grid_every: Duration,
    // The worker and the run.
    worker: Option<GanTrainWorker>,
    unsent: Vec<GanCommand>,
    run: u64,
    phase: Phase,
    pause_requested: bool,
    error: Option<String>,
    note: Option<(bool, String)>,
    images: Option<usize>,
    config: Option<GanTrainConfig>,
    steps: u64,
    last: Option<GanStepStats>,
    history: LossHistory,
    active: Duration,
    active_since: Option<Instant>,
    grid: Option<Arc<ImageF32>>,
    grid_step: u64,
    grids_received: u64,
    grid_tex: Option<TextureHandle>,
}

/// A narrower 64 px face GAN for a quicker live run on a CPU.
pub fn light_model() -> GanConfig {
    GanConfig {
        image_size: 64,
        latent: 64,
        g_base: 8,
        d_base: 16,
    }
}

/// The shipped face GAN in `weights_dir`, when both its weights and its manifest are there.
fn find_shipped(weights_dir: &Path) -> Option<PathBuf> {
    let weights = weights_dir.join(format!("{SHIPPED_ID}.safetensors"));
    let json = weights_dir.join(format!("{SHIPPED_ID}.json"));
    (weights.is_file() && json.is_file()).then_some(weights)
}

impl GanTrainPanel {
    /// A closed panel whose "start from the shipped weights" option reads `weights_dir`.
    pub fn new(weights_dir: PathBuf) -> Self {
        let data = if Path::new(DEFAULT_DATA).is_dir() {
            DEFAULT_DATA.to_owned()
        } else {
            String::new()
        };
        let defaults = GanTrainConfig::faces64();
        Self {
            open: false,
            data,
            loss: defaults.loss,
            batch: DEFAULT_BATCH,
            lr_g: defaults.lr_g,
            lr_d: defaults.lr_d,
            model: defaults.model,
            from_shipped: false,
            shipped: find_shipped(&weights_dir),
            weights_dir,
            checkpoint_dir: PathBuf::from(DEFAULT_CHECKPOINT_DIR),
            grid_every: GRID_EVERY,
            worker: None,
            unsent: Vec::new(),
            run: 0,
            phase: Phase::Idle,
            pause_requested: false,
            error: None,
            note: None,
            images: None,
            config: None,
            steps: 0,
            last: None,
            history: LossHistory::default(),
            active: Duration::ZERO,
            active_since: None,
            grid: None,
            grid_step: 0,
            grids_received: 0,
            grid_tex: None,
        }
    }

    /// True while the window is shown.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Shows or hides the window (a run goes on while it is hidden).
    pub fn set_open(&mut self, open: bool) {
        if open && !self.open {
            // The weights may have been trained since the studio started.
            self.shipped = find_shipped(&self.weights_dir);
            self.from_shipped &= self.shipped.is_some();
        }
        self.open = open;
    }

    /// The data folder as typed.
    pub fn data_dir(&self) -> &str {
        &self.data
    }

    /// Sets the data folder.
    pub fn set_data_dir(&mut self, dir: impl AsRef<Path>) {
        self.data = dir.as_ref().to_string_lossy().into_owned();
    }

    /// Sets the model sizes of a run from scratch (tests use a tiny model); the image size is
    /// the size the data must have.
    pub fn set_model(&mut self, model: GanConfig) {
        self.model = model;
    }

    /// Sets the batch.
    pub fn set_batch(&mut self, batch: usize) {
        self.batch = batch.clamp(1, 256);
    }

    /// Sets the loss.
    pub fn set_loss(&mut self, loss: GanLoss) {
        self.loss = loss;
    }

    /// Sets the shortest time between two sample grids.
    pub fn set_grid_every(&mut self, every: Duration) {
        self.grid_every = every;
    }

    /// Sets the folder "Save checkpoint" writes to.
    pub fn set_checkpoint_dir(&mut self, dir: impl Into<PathBuf>) {
        self.checkpoint_dir = dir.into();
    }

    /// The shipped weights a run may start from, if present.
    pub fn shipped(&self) -> Option<&Path> {
        self.shipped.as_deref()
    }

    /// Chooses the starting point; false (and scratch) when the shipped weights are absent.
    pub fn set_from_shipped(&mut self, yes: bool) -> bool {
        self.from_shipped = yes && self.shipped.is_some();
        self.from_shipped == yes
    }

    /// Where the run is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why the last run could not start or failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The last informational or error note (checkpoints, refused commands).
    pub fn note(&self) -> Option<&str> {
        self.note.as_ref().map(|(_, m)| m.as_str())
    }

    /// Steps done in this run, as reported so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The newest step's measurements.
    pub fn last_step(&self) -> Option<GanStepStats> {
        self.last
    }

    /// The curves' history.
    pub fn history(&self) -> &LossHistory {
        &self.history
    }

    /// Images in the run's data, once read.
    pub fn images(&self) -> Option<usize> {
        self.images
    }

    /// The settings the running (or last) run uses, once started.
    pub fn run_config(&self) -> Option<&GanTrainConfig> {
        self.config.as_ref()
    }

    /// The newest sample grid and the step it shows.
    pub fn grid(&self) -> Option<(&ImageF32, u64)> {
        self.grid.as_deref().map(|g| (g, self.grid_step))
    }

    /// Sample grids received in this run.
    pub fn grids_received(&self) -> u64 {
        self.grids_received
    }

    /// True while the worker thread is alive.
    pub fn worker_alive(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| w.is_alive())
    }

    /// Training time of this run, pauses excluded.
    pub fn elapsed(&self) -> Duration {
        self.active + self.active_since.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Steps per second over the run so far.
    pub fn steps_per_second(&self) -> Option<f64> {
        let secs = self.elapsed().as_secs_f64();
        (self.steps > 0 && secs > 0.0).then(|| self.steps as f64 / secs)
    }

    /// The settings a Start would use.
    pub fn train_config(&self) -> GanTrainConfig {
        GanTrainConfig {
            model: self.model,
            loss: self.loss,
            batch: self.batch,
            lr_g: self.lr_g,
            lr_d: self.lr_d,
            ..GanTrainConfig::faces64()
        }
    }

    /// Starts a run with the current settings (sent to the worker at the end of the frame).
    /// Refused, with the reason, while a run is active or without a data folder.
    pub fn start(&mut self) -> Result<(), String> {
        if self.phase.active() {
            return Err("a run is active: stop it first".into());
        }
        let data = self.data.trim();
        if data.is_empty() {
            return Err(format!(
                "choose a data folder of {s}x{s} PNG images first",
                s = self.model.image_size
            ));
        }
        let shipped = if self.from_shipped {
            match &self.shipped {
                Some(p) => Some(p.clone()),
                None => return Err(format!("the shipped {SHIPPED_ID} weights are missing")),
            }
        } else {
            None
        };
        self.run += 1;
        let start = StartRun {
            run: self.run,
            config: self.train_config(),
            data: PathBuf::from(data),
            shipped,
            grid_every: self.grid_every,
            grid_seed: GRID_SEED,
        };
        self.unsent.push(GanCommand::Start(Box::new(start)));
        self.phase = Phase::Loading { done: 0, total: 0 };
        self.pause_requested = false;
        (self.error, self.note, self.images, self.config, self.last) =
            (None, None, None, None, None);
        self.steps = 0;
        self.history.clear();
        (self.active, self.active_since) = (Duration::ZERO, None);
        (self.grid, self.grid_step, self.grids_received) = (None, 0, 0);
        Ok(())
    }

    /// Pauses the running run (it answers within one step).
    pub fn pause(&mut self) {
        if self.phase == Phase::Running && !self.pause_requested {
            self.pause_requested = true;
            self.unsent.push(GanCommand::Pause);
        }
    }

    /// Resumes a paused run.
    pub fn resume(&mut self) {
        if self.phase == Phase::Paused {
            self.unsent.push(GanCommand::Resume);
        }
    }

    /// Stops the run (it answers within one step).
    pub fn stop(&mut self) {
        if self.phase.active() && self.phase != Phase::Stopping {
            self.unsent.push(GanCommand::Stop);
            self.phase = Phase::Stopping;
        }
    }

    /// Writes a checkpoint of the running or paused run.
    pub fn save_checkpoint(&mut self) {
        if matches!(self.phase, Phase::Running | Phase::Paused) {
            self.unsent
                .push(GanCommand::SaveCheckpoint(self.checkpoint_dir.clone()));
        }
    }

    /// Starts the worker when there is something to send and none runs.
    fn ensure_worker(&mut self, ctx: &egui::Context, threads: usize) {
        if self.unsent.is_empty() || self.worker_alive() {
            return;
        }
        let ctx = ctx.clone();
        let notify: crate::engine::Notify = Arc::new(move || ctx.request_repaint());
        match GanTrainWorker::start(threads, Some(notify)) {
            Ok(w) => self.worker = Some(w),
            Err(e) => {
                self.unsent.clear();
                self.fail(e.to_string());
            }
        }
    }

    fn fail(&mut self, message: String) {
        self.phase = Phase::Failed;
        self.error = Some(message);
        self.stop_clock();
    }

    fn stop_clock(&mut self) {
        if let Some(t) = self.active_since.take() {
            self.active += t.elapsed();
        }
    }

    /// Sends the queued commands; a full queue keeps the rest for the next frame.
    fn flush(&mut self) {
        let Some(w) = &self.worker else {
            return;
        };
        let mut rest = Vec::new();
        for c in self.unsent.drain(..) {
            if !rest.is_empty() {
                rest.push(c);
                continue;
            }
            if let Err(c) = w.send(c) {
                rest.push(c);
            }
        }
        self.unsent = rest;
    }

    /// Applies the worker's events.
    fn poll(&mut self, ctx: &egui::Context) {
        let events = self.worker.as_ref().map(|w| w.drain()).unwrap_or_default();
        for ev in events {
            if ev.run != self.run {
                continue;
            }
            match ev.kind {
                GanEventKind::DataLoading { done, total } => {
                    if matches!(self.phase, Phase::Loading { .. }) {
                        self.phase = Phase::Loading { done, total };
                    }
                }
                GanEventKind::DataLoaded { n } => self.images = Some(n),
                GanEventKind::Started { config } => {
                    self.config = Some(*config);
                    if self.phase != Phase::Stopping {
                        self.phase = Phase::Running;
                    }
                    self.active_since = Some(Instant::now());
                }
                GanEventKind::Step(s) => {
                    self.history.push(s);
                    self.last = Some(s);
                    self.steps = s.step;
                }
                GanEventKind::Grid { step, image } => {
                    let ci = to_color_image(&image);
                    match &mut self.grid_tex {
                        Some(t) => t.set(ci, TextureOptions::NEAREST),
                        None => {
                            self.grid_tex = Some(ctx.load_texture(
                                "gan-train-grid",
                                ci,
                                TextureOptions::NEAREST,
                            ))
                        }
                    }
                    self.grid = Some(image);
                    self.grid_step = step;
                    self.grids_received += 1;
                }
                GanEventKind::Paused { step } => {
                    self.steps = step;
                    self.pause_requested = false;
                    if self.phase != Phase::Stopping {
                        self.phase = Phase::Paused;
                    }
                    self.stop_clock();
                }
                GanEventKind::Resumed => {
                    if self.phase == Phase::Paused {
                        self.phase = Phase::Running;
                    }
                    self.active_since = Some(Instant::now());
                }
                GanEventKind::Saved(dir) => {
                    self.note = Some((
                        false,
                        format!(
                            "Checkpoint of step {} written to {} (continue it with `kintsugi \
                             train gan --resume --runs {}`)",
                            self.steps,
                            dir.display(),
                            dir.display()
                        ),
                    ))
                }
                GanEventKind::SaveFailed(m) => {
                    self.note = Some((true, format!("cannot write the checkpoint: {m}")))
                }
                GanEventKind::Stopped { steps } => {
                    self.steps = steps;
                    self.phase = Phase::Stopped;
                    self.stop_clock();
                }
                GanEventKind::Error(m) => self.fail(m),
            }
        }
        if self.phase.active() && !self.unsent.is_empty() {
            return;
        }
        if self.phase.active() && !self.worker_alive() {
            self.fail("the training worker stopped unexpectedly".into());
        }
    }
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

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// One curve of a plot.
struct Series {
    label: &'static str,
    color: Color32,
    /// (step, value) pairs.
    points: Vec<[f64; 2]>,
    latest: Option<f64>,
}

/// Draws `series` in a plot of `height` points filling the width, with `title`, the y range
/// (`fixed`, or fitted to the values), an optional dashed reference line, and a legend.
fn plot(
    ui: &mut egui::Ui,
    title: &str,
    series: &[Series],
    fixed: Option<(f64, f64)>,
    reference: Option<f64>,
) {
    let width = ui.available_width().max(160.0);
    let (resp, painter) = ui.allocate_painter(egui::vec2(width, PLOT_HEIGHT), egui::Sense::hover());
    let rect = resp.rect;
    let visuals = ui.visuals();
    painter.rect_filled(rect, 2.0, visuals.extreme_bg_color);
    let text = visuals.weak_text_color();
    let font = egui::FontId::proportional(11.0);
    let (y0, y1) = fixed
        .unwrap_or_else(|| value_range(series.iter().flat_map(|s| s.points.iter().map(|p| p[1]))));
    let (x0, x1) = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p[0]))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let (x0, x1) = if x0 <= x1 {
        (x0, x1.max(x0 + 1.0))
    } else {
        (0.0, 1.0)
    };
    let inner = rect.shrink2(egui::vec2(6.0, 14.0));
    let to_screen = |x: f64, y: f64| {
        let fx = ((x - x0) / (x1 - x0)) as f32;
        let fy = ((y - y0) / (y1 - y0)) as f32;
        egui::pos2(
            inner.left() + fx * inner.width(),
            inner.bottom() - fy.clamp(-0.05, 1.05) * inner.height(),
        )
    };
    let clipped = painter.with_clip_rect(rect);
    if let Some(r) = reference {
        let (a, b) = (to_screen(x0, r), to_screen(x1, r));
        clipped.add(egui::Shape::dashed_line(
            &[a, b],
            egui::Stroke::new(1.0, text),
            4.0,
            4.0,
        ));
    }
    for s in series {
        let pts: Vec<egui::Pos2> = s
            .points
            .iter()
            .filter(|p| p[1].is_finite())
            .map(|p| to_screen(p[0], p[1]))
            .collect();
        if pts.len() >= 2 {
            clipped.line(pts, egui::Stroke::new(1.5, s.color));
        } else if let Some(p) = pts.first() {
            clipped.circle_filled(*p, 2.0, s.color);
        }
    }
    painter.text(
        rect.left_top() + egui::vec2(4.0, 1.0),
        egui::Align2::LEFT_TOP,
        title,
        font.clone(),
        visuals.text_color(),
    );
    painter.text(
        rect.right_top() + egui::vec2(-4.0, 1.0),
        egui::Align2::RIGHT_TOP,
        format!("{y1:.2}"),
        font.clone(),
        text,
    );
    painter.text(
        rect.right_bottom() + egui::vec2(-4.0, -1.0),
        egui::Align2::RIGHT_BOTTOM,
        format!("{y0:.2}"),
        font.clone(),
        text,
    );
    if x1 > x0 && series.iter().any(|s| !s.points.is_empty()) {
        painter.text(
            rect.left_bottom() + egui::vec2(4.0, -1.0),
            egui::Align2::LEFT_BOTTOM,
            format!("steps {x0:.0}-{x1:.0}"),
            font,
            text,
        );
    }
    ui.horizontal_wrapped(|ui| {
        for s in series {
            let (r, _) = ui.allocate_exact_size(egui::vec2(12.0, 12.0), egui::Sense::hover());
            ui.painter().rect_filled(r.shrink(2.0), 1.0, s.color);
            let value = s
                .latest
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into());
            ui.label(format!("{} {value}", s.label));
        }
    });
}

impl GanTrainPanel {
    fn status_line(&self) -> String {
        let mut parts = vec![match self.phase {
            Phase::Idle => "Not started".to_owned(),
            Phase::Loading { done, total } if total > 0 => {
                format!("Reading the data: {done} of {total} images")
            }
            Phase::Loading { .. } => "Reading the data…".to_owned(),
            Phase::Running if self.pause_requested => "Pausing…".to_owned(),
            Phase::Running => "Training".to_owned(),
            Phase::Paused => "Paused".to_owned(),
            Phase::Stopping => "Stopping…".to_owned(),
            Phase::Stopped => "Stopped".to_owned(),
            Phase::Failed => "Failed".to_owned(),
        }];
        if self.phase != Phase::Idle && !matches!(self.phase, Phase::Loading { .. }) {
            parts.push(format!("step {}", self.steps));
            if let Some(r) = self.steps_per_second() {
                parts.push(format!("{r:.2} steps/s"));
            }
            parts.push(format!("{} elapsed", format_duration(self.elapsed())));
        }
        if let Some(n) = self.images {
            parts.push(format!("{n} images"));
        }
        parts.join(" · ")
    }

    fn settings_ui(&mut self, ui: &mut egui::Ui) {
        let size = self.model.image_size;
        ui.horizontal(|ui| {
            ui.label("Data");
            ui.add(
                egui::TextEdit::singleline(&mut self.data)
                    .hint_text(format!("folder of {size}x{size} PNG faces"))
                    .desired_width(300.0),
            )
            .on_hover_text(format!(
                "A folder of {size}x{size} PNG images (every .png in it is read)"
            ));
            if ui
                .button("Browse…")
                .on_hover_text("Pick the data folder")
                .clicked()
            {
                let mut dialog = rfd::FileDialog::new().set_title("Folder of training images");
                let current = Path::new(self.data.trim());
                if current.is_dir() {
                    dialog = dialog.set_directory(current);
                }
                if let Some(p) = dialog.pick_folder() {
                    self.set_data_dir(p);
                }
            }
        });
        ui.horizontal(|ui| {
            ui.label("Loss");
            egui::ComboBox::from_id_salt("gan-train-loss")
                .selected_text(self.loss.label())
                .show_ui(ui, |ui| {
                    for l in [GanLoss::NonSaturating, GanLoss::Minimax, GanLoss::Hinge] {
                        ui.selectable_value(&mut self.loss, l, l.label());
                    }
                })
                .response
                .on_hover_text(
                    "minimax: the original game (G's loss saturates early); non-saturating: G \
                     maximises log D(G(z)); hinge: margin losses",
                );
            ui.label("Batch");
            ui.add(egui::DragValue::new(&mut self.batch).range(1..=256))
                .on_hover_text("Real and generated images per step");
        });
        ui.horizontal(|ui| {
            for (label, lr, what) in [
                ("lr G", &mut self.lr_g, "generator"),
                ("lr D", &mut self.lr_d, "discriminator"),
            ] {
                ui.label(label);
                ui.add(
                    egui::DragValue::new(lr)
                        .range(1e-6..=1e-2)
                        .speed(1e-5)
                        .custom_formatter(|v, _| format!("{v:.1e}"))
                        .custom_parser(|s| s.trim().parse().ok()),
                )
                .on_hover_text(format!("Adam learning rate of the {what}"));
            }
        });
        ui.horizontal(|ui| {
            ui.radio_value(&mut self.from_shipped, false, "From scratch")
                .on_hover_text("Fresh random networks: watch faces emerge from noise");
            let label = format!("From the shipped {SHIPPED_ID} weights");
            let resp = ui.add_enabled(
                self.shipped.is_some(),
                egui::RadioButton::new(self.from_shipped, label),
            );
            let resp = match &self.shipped {
                Some(p) => resp.on_hover_text(format!("Fine-tune {}", p.display())),
                None => resp.on_disabled_hover_text(format!(
                    "{SHIPPED_ID}.safetensors and {SHIPPED_ID}.json are not in {} (train them \
                     with `kintsugi train gan`)",
                    self.weights_dir.display()
                )),
            };
            if resp.clicked() {
                self.from_shipped = true;
            }
        });
        if !self.from_shipped {
            ui.horizontal(|ui| {
                ui.label("Network");
                let presets = [
                    ("as shipped", GanConfig::faces64()),
                    ("light (faster steps)", light_model()),
                ];
                let current = presets
                    .iter()
                    .find(|(_, c)| *c == self.model)
                    .map(|(l, _)| *l)
                    .unwrap_or("custom");
                egui::ComboBox::from_id_salt("gan-train-network")
                    .selected_text(current)
                    .show_ui(ui, |ui| {
                        for (label, c) in presets {
                            ui.selectable_value(&mut self.model, c, label);
                        }
                    })
                    .response
                    .on_hover_text(
                        "The shipped sizes, or a narrower network whose steps are quicker to \
                         watch on a CPU",
                    );
            });
        }
        let m = self.model;
        ui.label(
            RichText::new(if self.from_shipped {
                "Model: the shipped model's sizes".to_owned()
            } else {
                format!(
                    "Model: {s}x{s}, latent {}, G base {}, D base {}",
                    m.latent,
                    m.g_base,
                    m.d_base,
                    s = m.image_size
                )
            })
            .small()
            .weak(),
        );
    }

    fn controls_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let active = self.phase.active();
            if ui
                .add_enabled(!active, egui::Button::new("Start"))
                .on_hover_text("Start training with these settings")
                .clicked()
            {
                if let Err(e) = self.start() {
                    self.note = Some((true, e));
                }
            }
            if self.phase == Phase::Paused {
                if ui
                    .button("Resume")
                    .on_hover_text("Continue training")
                    .clicked()
                {
                    self.resume();
                }
            } else if ui
                .add_enabled(
                    self.phase == Phase::Running && !self.pause_requested,
                    egui::Button::new("Pause"),
                )
                .on_hover_text("Stop stepping but keep the run")
                .clicked()
            {
                self.pause();
            }
            if ui
                .add_enabled(
                    active && self.phase != Phase::Stopping,
                    egui::Button::new("Stop"),
                )
                .on_hover_text("End the run (its curves and samples stay on screen)")
                .clicked()
            {
                self.stop();
            }
            if ui
                .add_enabled(
                    matches!(self.phase, Phase::Running | Phase::Paused),
                    egui::Button::new("Save checkpoint"),
                )
                .on_hover_text(format!(
                    "Write the run's networks and optimiser state to {}",
                    self.checkpoint_dir.display()
                ))
                .clicked()
            {
                self.save_checkpoint();
            }
            if matches!(self.phase, Phase::Loading { .. } | Phase::Stopping) || self.pause_requested
            {
                ui.spinner();
            }
        });
        ui.label(self.status_line());
        if let Some(e) = &self.error {
            ui.label(RichText::new(format!("Error: {e}")).color(ERROR));
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
    }

    fn grid_ui(&mut self, ui: &mut egui::Ui) {
        ui.vertical(|ui| match (&self.grid_tex, &self.grid) {
            (Some(t), Some(g)) => {
                let h = GRID_SIDE * g.height() as f32 / g.width().max(1) as f32;
                ui.add(egui::Image::from_texture(egui::load::SizedTexture::new(
                    t.id(),
                    egui::vec2(GRID_SIDE, h),
                )))
                .on_hover_text(
                    "The moving-average generator's images for 16 fixed codes: the same \
                         codes all run long, so you watch the same faces form",
                );
                ui.label(RichText::new(format!("Samples at step {}", self.grid_step)).small());
            }
            _ => {
                let (r, _) =
                    ui.allocate_exact_size(egui::vec2(GRID_SIDE, GRID_SIDE), egui::Sense::hover());
                ui.painter()
                    .rect_filled(r, 2.0, ui.visuals().extreme_bg_color);
                ui.painter().text(
                    r.center(),
                    egui::Align2::CENTER_CENTER,
                    "samples appear here",
                    egui::FontId::proportional(12.0),
                    ui.visuals().weak_text_color(),
                );
            }
        });
    }

    fn curves_ui(&mut self, ui: &mut egui::Ui) {
        let pts: Vec<GanStepStats> = self.history.points().collect();
        let series = |f: fn(&GanStepStats) -> f64, label, color| Series {
            label,
            color,
            points: pts.iter().map(|p| [p.step as f64, f(p)]).collect(),
            latest: self.last.as_ref().map(f),
        };
        ui.vertical(|ui| {
            plot(
                ui,
                "Losses",
                &[
                    series(|p| p.d_loss, "D loss", D_LOSS),
                    series(|p| p.g_loss, "G loss", G_LOSS),
                ],
                None,
                None,
            );
            plot(
                ui,
                "Discriminator outputs",
                &[
                    series(|p| p.d_real, "D(x)", D_REAL),
                    series(|p| p.d_fake, "D(G(z))", D_FAKE),
                ],
                Some((0.0, 1.0)),
                Some(0.5),
            );
            if self.history.stride() > 1 {
                ui.label(
                    RichText::new(format!(
                        "each point averages {} steps",
                        self.history.stride()
                    ))
                    .small()
                    .weak(),
                );
            }
        });
    }

    fn window_ui(&mut self, ui: &mut egui::Ui) {
        let active = self.phase.active();
        egui::CollapsingHeader::new("Settings")
            .default_open(true)
            .show(ui, |ui| {
                ui.add_enabled_ui(!active, |ui| self.settings_ui(ui))
            });
        ui.separator();
        self.controls_ui(ui);
        ui.separator();
        ui.horizontal_top(|ui| {
            self.grid_ui(ui);
            self.curves_ui(ui);
        });
    }
}

impl StudioApp {
    /// The live GAN training view's state.
    pub fn gan_train(&self) -> &GanTrainPanel {
        &self.gan_train
    }

    /// The live GAN training view's state, mutable (tests drive it through this).
    pub fn gan_train_mut(&mut self) -> &mut GanTrainPanel {
        &mut self.gan_train
    }

    /// Shows or hides the live GAN training view (G).
    pub fn toggle_gan_train(&mut self) {
        let open = self.gan_train.is_open();
        self.gan_train.set_open(!open);
    }

    /// The live training view for this frame: applies the worker's events, draws the window,
    /// and sends the queued commands. A run goes on while the window is hidden.
    pub(super) fn gan_train_window(&mut self, ctx: &egui::Context) {
        let panel = &mut self.gan_train;
        panel.poll(ctx);
        if panel.open {
            let mut open = true;
            egui::Window::new("GAN training")
                .open(&mut open)
                .default_size([660.0, 600.0])
                .default_pos(ctx.content_rect().left_top() + egui::vec2(240.0, 70.0))
                .vscroll(true)
                .resizable(true)
                .show(ctx, |ui| panel.window_ui(ui));
            if !open {
                panel.set_open(false);
            }
        }
        panel.ensure_worker(ctx, self.threads);
        panel.flush();
        if !panel.unsent.is_empty() {
            // The worker's queue was full: try again shortly.
            ctx.request_repaint_after(Duration::from_millis(10));
        } else if panel.phase.active() {
            // Keeps the elapsed time moving between events.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(step: u64) -> GanStepStats {
        let t = step as f64;
        GanStepStats {
            step,
            d_loss: t,
            g_loss: 2.0 * t + 1.0,
            d_real: 1.0 / (1.0 + t),
            d_fake: 0.5,
        }
    }

    #[test]
    fn history_stays_bounded_and_each_point_is_the_mean_of_its_steps() {
        let mut h = LossHistory::new(8);
        for step in 1..=5 {
            h.push(stats(step));
        }
        // Below the capacity every step is its own point.
        assert_eq!(h.len(), 5);
        assert_eq!(h.stride(), 1);
        assert_eq!(
            h.points().map(|p| p.step).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        for step in 6..=1000 {
            h.push(stats(step));
            assert!(h.len() <= 8, "{} points at step {step}", h.len());
        }
        assert!(h.len() >= 4, "downsampling kept only {} points", h.len());
        assert!(h.stride() >= 128);
        let pts: Vec<GanStepStats> = h.points().collect();
        assert_eq!(
            pts.last().map(|p| p.step),
            Some(1000),
            "the newest step is shown"
        );
        // Each point covers the steps after the previous point up to its own: for a linear
        // signal its mean is the middle of that range.
        let mut prev = 0u64;
        for p in &pts {
            assert!(p.step > prev);
            let mid = (prev + 1 + p.step) as f64 / 2.0;
            assert!(
                (p.d_loss - mid).abs() < 1e-9,
                "step {}: {} vs {mid}",
                p.step,
                p.d_loss
            );
            assert!((p.g_loss - (2.0 * mid + 1.0)).abs() < 1e-9);
            assert!((p.d_fake - 0.5).abs() < 1e-12);
            let want: f64 = (prev + 1..=p.step)
                .map(|s| 1.0 / (1.0 + s as f64))
                .sum::<f64>()
                / (p.step - prev) as f64;
            assert!((p.d_real - want).abs() < 1e-9);
            prev = p.step;
        }
        h.clear();
        assert!(h.is_empty());
        assert_eq!(h.stride(), 1);
        assert_eq!(h.capacity(), 8);
    }

    #[test]
    fn value_range_pads_and_handles_flat_and_empty_input() {
        assert_eq!(value_range([]), (0.0, 1.0));
        assert_eq!(value_range([f64::NAN, f64::INFINITY]), (0.0, 1.0));
        let (lo, hi) = value_range([1.0, 3.0, f64::NAN]);
        assert!(
            (lo - 0.84).abs() < 1e-12 && (hi - 3.16).abs() < 1e-12,
            "{lo} {hi}"
        );
        let (lo, hi) = value_range([2.0, 2.0]);
        assert!(lo < 2.0 && hi > 2.0);
        let (lo, hi) = value_range([0.0]);
        assert!((lo + 0.05).abs() < 1e-12 && (hi - 0.05).abs() < 1e-12);
    }

    #[test]
    fn durations_read_as_clock_time() {
        assert_eq!(format_duration(Duration::from_secs(5)), "0:05");
        assert_eq!(format_duration(Duration::from_secs(125)), "2:05");
        assert_eq!(format_duration(Duration::from_secs(3725)), "1:02:05");
    }
}
