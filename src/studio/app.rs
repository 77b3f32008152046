//! The studio application: state, the worker connection, and the frame loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use egui::Color32;

use super::canvas::CanvasState;
use super::document::{coalesce, Document};
use super::textures::{ImageSource, LayerTextures, MaskSource};
use crate::engine::{Engine, EngineConfig, EventKind, JobId, JobKind, JobOutput};
use crate::imaging::io::save_mask;
use crate::imaging::{load_image, save_image, BitDepth, ImageF32, LoadedImage, Mask, Rect};
use crate::models::registry::{Availability, ModelInfo, Registry};
use crate::restore::{ParamSpec, Params};

/// Grid cell (pixels) on which dirty rectangles are merged before texture updates: small
/// enough that scattered dust repairs re-render little beyond the specks themselves.
const DIRTY_CELL: usize = 64;

/// Colour of the damage overlay (premultiplied by its alpha when drawn).
pub(super) const OVERLAY: Color32 = Color32::from_rgba_premultiplied(150, 20, 60, 150);

/// A job the studio is waiting for.
pub(super) struct RunningJob {
    pub id: JobId,
    pub model: String,
    pub submitted: Instant,
    pub done: u64,
    pub total: u64,
    pub message: String,
    /// When the first progress step arrived: time left is extrapolated from here.
    pub work_started: Option<Instant>,
    pub first_preview: Option<Duration>,
    /// The mask the job was given: exactly the pixels it fills.
    pub holes: Arc<Mask>,
    /// The image the job started from; when the document still shows it at the end, the
    /// job's output replaces it without copying the scan.
    pub input: Arc<ImageF32>,
    pub cancel_requested: Option<Instant>,
}

/// The state of the last Run, shown in the progress area and status bar.
pub(super) enum JobState {
    Idle,
    Running(RunningJob),
    Done { model: String, secs: f64 },
    Failed(String),
    Cancelled { latency: Option<Duration> },
}

/// Measurements of the last finished job, for tests and the status bar.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobTimings {
    /// From submission to the first streamed preview.
    pub first_preview: Option<Duration>,
    /// From submission to the terminal event.
    pub total: Option<Duration>,
    /// From the cancel request to the `Cancelled` event.
    pub cancel_latency: Option<Duration>,
}

/// What to do once the user has answered the "unsaved changes" prompt.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Pending {
    Quit,
    OpenDialog,
    Open(PathBuf),
}

/// Severity of a message in the message bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    Info,
    Error,
}

/// The textures of the open document.
pub(super) struct DocTextures {
    pub image: LayerTextures,
    pub original: LayerTextures,
    pub mask: LayerTextures,
}

/// The Kintsugi studio. Construct with [`StudioApp::new`], then call [`StudioApp::ui`] every
/// frame (eframe does this through its `App` impl; tests call it from an `egui_kittest`
/// harness).
pub struct StudioApp {
    pub(super) doc: Option<Document>,
    pub(super) textures: Option<DocTextures>,
    pub(super) canvas: CanvasState,
    pub(super) engine: Option<Engine>,
    pub(super) engine_config: Option<EngineConfig>,
    pub(super) threads: usize,
    pub(super) models: Vec<ModelInfo>,
    pub(super) registry: Registry,
    pub(super) model: String,
    pub(super) specs: Vec<ParamSpec>,
    pub(super) params: std::collections::HashMap<String, Params>,
    pub(super) job: JobState,
    pub(super) timings: JobTimings,
    /// Region of the image texture showing streamed previews, to revert if the job fails.
    pub(super) preview_dirty: Vec<Rect>,
    pub(super) auto_run: bool,
    pub(super) show_help: bool,
    pub(super) message: Option<(Level, String)>,
    pub(super) pending: Option<Pending>,
    pub(super) allow_close: bool,
    pub(super) loading: Option<(PathBuf, Receiver<Result<LoadedImage, String>>)>,
    /// The live GAN training view (G).
    pub(super) gan_train: super::gan_train::GanTrainPanel,
    /// The "Detect damage" tool: running detection and its proposal layer.
    pub(super) detect: super::detect::DetectTool,
    /// The latent explorer window (L).
    pub(super) latent: super::latent::LatentPanel,
    /// The RL episode viewer window (R).
    pub(super) episode: super::episode::EpisodeViewer,
}

/// Default Save As name: `<name>_restored.<ext>` next to the source.
pub fn default_save_name(source: Option<&Path>) -> PathBuf {
    match source {
        Some(p) => {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let ext = p
                .extension()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "png".into());
            p.with_file_name(format!("{stem}_restored.{ext}"))
        }
        None => PathBuf::from("demo_restored.png"),
    }
}

impl StudioApp {
    /// A studio on `image` (pixels and source depth, with the file it came from if any), or on
    /// the built-in demo when `None`. The engine starts on the first frame, so that its
    /// repaint callback can reach the UI context; a `notify` already set in `config` is kept.
    pub fn new(image: Option<(ImageF32, BitDepth, Option<PathBuf>)>, config: EngineConfig) -> Self {
        let registry = config.registry.clone();
        let models = registry.list();
        let gan_train = super::gan_train::GanTrainPanel::new(registry.weights_dir().to_owned());
        let latent = super::latent::LatentPanel::new(registry.weights_dir().to_owned());
        let episode = super::episode::EpisodeViewer::new(registry.weights_dir().to_owned());
        let mut app = Self {
            doc: None,
            textures: None,
            canvas: CanvasState::default(),
            engine: None,
            threads: config.threads,
            engine_config: Some(config),
            models,
            registry,
            model: "auto".into(),
            specs: Vec::new(),
            params: Default::default(),
            job: JobState::Idle,
            timings: JobTimings::default(),
            preview_dirty: Vec::new(),
            auto_run: false,
            show_help: false,
            message: None,
            pending: None,
            allow_close: false,
            loading: None,
            gan_train,
            detect: Default::default(),
            latent,
            episode,
        };
        app.select_model("auto");
        match image {
            Some((pixels, depth, path)) => app.set_document(Document::new(pixels, depth, path)),
            None => match super::demo::embedded_demo() {
                Ok((img, mask)) => {
                    app.set_document(Document::with_mask(img, mask, BitDepth::U8, None));
                    app.info("Demo: a damaged photo with its damage already masked. Press Run (Enter), or open your own scan (Ctrl+O).");
                }
                Err(e) => app.error(format!("cannot load the built-in demo: {e}")),
            },
        }
        app
    }

    // ----- accessors for tests and the shell -----

    /// The open document, if any.
    pub fn document(&self) -> Option<&Document> {
        self.doc.as_ref()
    }

    /// The open document, mutable (tests paint and inspect through it).
    pub fn document_mut(&mut self) -> Option<&mut Document> {
        self.doc.as_mut()
    }

    /// True while a job is queued or running.
    pub fn job_running(&self) -> bool {
        matches!(self.job, JobState::Running(_))
    }

    /// A one-line description of the job state, as in the status bar.
    pub fn job_status(&self) -> String {
        match &self.job {
            JobState::Idle => "idle".into(),
            JobState::Running(j) => {
                if j.cancel_requested.is_some() {
                    "cancelling".into()
                } else if j.total > 0 {
                    format!("{}: {}/{}", j.model, j.done, j.total)
                } else {
                    format!("{}: starting", j.model)
                }
            }
            JobState::Done { model, secs } => format!("{model} done in {secs:.2} s"),
            JobState::Failed(e) => format!("failed: {e}"),
            JobState::Cancelled { .. } => "cancelled".into(),
        }
    }

    /// The last error shown to the user, if the message bar holds one.
    pub fn last_error(&self) -> Option<&str> {
        match &self.message {
            Some((Level::Error, m)) => Some(m),
            _ => None,
        }
    }

    /// Timings of the last job.
    pub fn timings(&self) -> JobTimings {
        self.timings
    }

    /// The selected model id.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Zoom in screen points per image pixel.
    pub fn zoom(&self) -> f32 {
        self.canvas.view.zoom
    }

    /// Sets the "auto-run when a stroke ends" option.
    pub fn set_auto_run(&mut self, on: bool) {
        self.auto_run = on;
    }

    /// The brush diameter in image pixels.
    pub fn brush_size(&self) -> f32 {
        self.canvas.brush
    }

    /// Sets the brush diameter in image pixels.
    pub fn set_brush_size(&mut self, size: f32) {
        self.canvas.brush = size.clamp(1.0, 1000.0);
    }

    /// The active painting tool.
    pub fn tool(&self) -> super::canvas::Tool {
        self.canvas.tool
    }

    /// The canvas rectangle on screen, as of the last frame.
    pub fn canvas_rect(&self) -> egui::Rect {
        self.canvas.rect
    }

    /// Where image pixel centre `(x, y)` is on screen under the current view.
    pub fn screen_pos_of(&self, x: f32, y: f32) -> egui::Pos2 {
        let v = self.canvas.view;
        self.canvas.rect.min + v.offset + egui::vec2(x, y) * v.zoom
    }

    /// Full-resolution image tiles currently on the GPU (0 while the preview suffices).
    pub fn tiles_loaded(&self) -> usize {
        self.textures.as_ref().map_or(0, |t| t.image.tiles_loaded())
    }

    /// Turns the split compare view on (divider at `fraction` of the width) or off.
    pub fn set_split(&mut self, fraction: Option<f32>) {
        self.canvas.split = fraction.map(|f| f.clamp(0.0, 1.0));
    }

    /// Whether the F1 overlay is shown.
    pub fn help_visible(&self) -> bool {
        self.show_help
    }

    // ----- messages -----

    pub(super) fn info(&mut self, m: impl Into<String>) {
        self.message = Some((Level::Info, m.into()));
    }

    pub(super) fn error(&mut self, m: impl Into<String>) {
        self.message = Some((Level::Error, m.into()));
    }

    // ----- documents -----

    /// Replaces the open document (any running job is cancelled).
    pub fn set_document(&mut self, mut doc: Document) {
        self.cancel();
        self.job = JobState::Idle;
        doc.mark_all_dirty();
        let _ = doc.take_dirty();
        self.textures = Some(DocTextures {
            image: LayerTextures::new("image", doc.width(), doc.height()),
            original: LayerTextures::new("original", doc.width(), doc.height()),
            mask: LayerTextures::new("mask", doc.width(), doc.height()),
        });
        self.doc = Some(doc);
        self.preview_dirty.clear();
        self.canvas.request_fit();
        self.message = None;
    }

    /// Opens `path` on a background thread; the document is replaced when it has loaded.
    pub fn open_path(&mut self, path: PathBuf, ctx: &egui::Context) {
        if self.doc.as_ref().is_some_and(|d| d.unsaved) && self.pending.is_none() {
            self.pending = Some(Pending::Open(path));
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let ctx = ctx.clone();
        let p = path.clone();
        let spawned = std::thread::Builder::new()
            .name("kintsugi-open".into())
            .spawn(move || {
                let r = load_image(&p).map_err(|e| e.to_string());
                let _ = tx.send(r);
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => {
                self.info(format!("Opening {}…", path.display()));
                self.loading = Some((path, rx));
            }
            Err(e) => self.error(format!("cannot start loading: {e}")),
        }
    }

    /// Opens `path` synchronously (tests, and the path given on the command line).
    pub fn open_path_now(&mut self, path: &Path) -> Result<(), String> {
        let loaded = load_image(path).map_err(|e| e.to_string())?;
        self.set_document(Document::new(
            loaded.pixels,
            loaded.depth,
            Some(path.to_owned()),
        ));
        Ok(())
    }

    fn poll_loading(&mut self) {
        let Some((path, rx)) = &self.loading else {
            return;
        };
        let Ok(result) = rx.try_recv() else {
            return;
        };
        let path = path.clone();
        self.loading = None;
        match result {
            Ok(l) => {
                self.set_document(Document::new(l.pixels, l.depth, Some(path.clone())));
                self.info(format!("Opened {}", path.display()));
            }
            Err(e) => self.error(e),
        }
    }

    pub(super) fn open_dialog(&mut self, ctx: &egui::Context) {
        if self.doc.as_ref().is_some_and(|d| d.unsaved) && self.pending.is_none() {
            self.pending = Some(Pending::OpenDialog);
            return;
        }
        let picked = rfd::FileDialog::new()
            .set_title("Open an image")
            .add_filter(
                "Images",
                &["png", "tif", "tiff", "jpg", "jpeg", "webp", "bmp"],
            )
            .pick_file();
        if let Some(p) = picked {
            self.pending = None;
            self.open_path(p, ctx);
        }
    }

    /// Writes the current image to `path` at the source's bit depth (or the nearest the format
    /// holds). Never writes over the file the image came from.
    pub fn save_as(&mut self, path: &Path) -> Result<(), String> {
        let Some(doc) = &mut self.doc else {
            return Err("nothing to save: open an image first".into());
        };
        match save_image(doc.current(), doc.depth, path, doc.path.as_deref()) {
            Ok(report) => {
                doc.unsaved = false;
                self.info(format!(
                    "Saved {} ({}-bit {:?})",
                    path.display(),
                    report.depth.bits(),
                    report.format
                ));
                Ok(())
            }
            Err(e) => {
                let m = e.to_string();
                self.error(m.clone());
                Err(m)
            }
        }
    }

    pub(super) fn save_dialog(&mut self) -> bool {
        let Some(doc) = &self.doc else {
            return false;
        };
        let suggested = default_save_name(doc.path.as_deref());
        let mut dialog = rfd::FileDialog::new().set_title("Save the restored image as");
        if let Some(dir) = suggested.parent().filter(|d| !d.as_os_str().is_empty()) {
            dialog = dialog.set_directory(dir);
        }
        if let Some(name) = suggested.file_name() {
            dialog = dialog.set_file_name(name.to_string_lossy());
        }
        match dialog.save_file() {
            Some(p) => self.save_as(&p).is_ok(),
            None => false,
        }
    }

    /// Writes the mask as an 8-bit PNG (white = hole).
    pub fn export_mask(&mut self, path: &Path) -> Result<(), String> {
        let Some(doc) = &self.doc else {
            return Err("no mask: open an image first".into());
        };
        match save_mask(doc.mask(), path, doc.path.as_deref()) {
            Ok(_) => {
                self.info(format!("Mask written to {}", path.display()));
                Ok(())
            }
            Err(e) => {
                let m = e.to_string();
                self.error(m.clone());
                Err(m)
            }
        }
    }

    /// Replaces the mask with the one in `path` (same size as the image), as one undo step.
    pub fn load_mask_file(&mut self, path: &Path) -> Result<(), String> {
        let Some(doc) = &mut self.doc else {
            return Err("open an image before loading a mask".into());
        };
        match crate::imaging::load_mask(path, doc.width(), doc.height()) {
            Ok(m) => {
                doc.replace_mask(m);
                Ok(())
            }
            Err(e) => {
                let m = e.to_string();
                self.error(m.clone());
                Err(m)
            }
        }
    }

    /// Clears the mask (one undo step).
    pub fn clear_mask(&mut self) {
        if let Some(doc) = &mut self.doc {
            doc.replace_mask(Mask::new(doc.width(), doc.height()));
        }
    }

    /// Inverts the mask (one undo step).
    pub fn invert_mask(&mut self) {
        if let Some(doc) = &mut self.doc {
            let mut m = (**doc.mask()).clone();
            m.invert();
            doc.replace_mask(m);
        }
    }

    /// Undoes the newest edit.
    pub fn undo(&mut self) {
        if let Some(doc) = &mut self.doc {
            doc.undo();
        }
    }

    /// Redoes the newest undone edit.
    pub fn redo(&mut self) {
        if let Some(doc) = &mut self.doc {
            doc.redo();
        }
    }

    // ----- models and jobs -----

    /// Selects a model by id (ignored when unknown or unavailable); its parameters appear in
    /// the side panel.
    pub fn select_model(&mut self, id: &str) -> bool {
        let Some(info) = self.models.iter().find(|m| m.id == id) else {
            return false;
        };
        if info.availability != Availability::Available {
            return false;
        }
        self.specs = match self.registry.restorer(id) {
            Ok(r) => r.param_specs(),
            Err(e) => {
                self.error(e.to_string());
                return false;
            }
        };
        self.model = id.to_owned();
        true
    }

    /// The parameters of the selected model.
    pub fn params_mut(&mut self) -> &mut Params {
        self.params.entry(self.model.clone()).or_default()
    }

    fn ensure_engine(&mut self, ctx: &egui::Context) {
        if self.engine.is_some() {
            return;
        }
        let Some(mut config) = self.engine_config.take() else {
            return;
        };
        if config.notify.is_none() {
            let ctx = ctx.clone();
            config.notify = Some(Arc::new(move || ctx.request_repaint()));
        }
        match Engine::start(config) {
            Ok(e) => self.engine = Some(e),
            Err(e) => self.error(format!("{e}; restoration is unavailable")),
        }
    }

    /// Submits a restore job for the current image and mask, replacing any running one.
    pub fn run_job(&mut self) {
        let Some(doc) = &self.doc else {
            self.error("open an image first");
            return;
        };
        if doc.mask_count() == 0 {
            self.error("the mask is empty: paint over the damage with the brush (B) first");
            return;
        }
        let Some(engine) = &self.engine else {
            self.error("the worker is not running");
            return;
        };
        let holes = doc.mask().clone();
        let input = doc.current().clone();
        let params = self.params.get(&self.model).cloned().unwrap_or_default();
        let kind = JobKind::Restore {
            image: input.clone(),
            mask: holes.clone(),
            model: self.model.clone(),
            params,
        };
        match engine.submit_replacing(kind) {
            Ok(h) => {
                self.revert_previews();
                self.job = JobState::Running(RunningJob {
                    id: h.id,
                    model: self.model.clone(),
                    submitted: Instant::now(),
                    done: 0,
                    total: 0,
                    message: String::new(),
                    work_started: None,
                    first_preview: None,
                    holes,
                    input,
                    cancel_requested: None,
                });
                self.timings = JobTimings::default();
                if matches!(self.message, Some((Level::Error, _))) {
                    self.message = None;
                }
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Asks the running job to stop; the UI keeps going and shows "cancelling".
    pub fn cancel(&mut self) {
        if let (Some(engine), JobState::Running(j)) = (&self.engine, &mut self.job) {
            engine.cancel_all();
            j.cancel_requested.get_or_insert_with(Instant::now);
        }
    }

    /// Puts the image texture back where previews were drawn.
    fn revert_previews(&mut self) {
        let rects = coalesce(&std::mem::take(&mut self.preview_dirty), DIRTY_CELL);
        if let (Some(doc), Some(tex)) = (&self.doc, &mut self.textures) {
            for r in rects {
                tex.image.update(&ImageSource::new(doc.current()), r);
            }
        }
    }

    /// Drains the worker's events: progress, previews (newest per frame), and the end.
    fn poll_engine(&mut self) {
        let Some(engine) = &self.engine else {
            return;
        };
        let events: Vec<_> = engine.events().try_iter().collect();
        self.episode.take_engine_events(&events);
        let JobState::Running(job) = &mut self.job else {
            return;
        };
        let id = job.id;
        let mut terminal = None;
        for ev in events.into_iter().filter(|e| e.job == id) {
            match ev.kind {
                EventKind::Started => {}
                EventKind::Progress {
                    done,
                    total,
                    message,
                } => {
                    if job.work_started.is_none() {
                        job.work_started = Some(Instant::now());
                    }
                    job.done = done;
                    job.total = total;
                    job.message = message;
                }
                EventKind::Preview { x, y, patch } => {
                    if job.first_preview.is_none() {
                        job.first_preview = Some(job.submitted.elapsed());
                    }
                    if let (Some(doc), Some(tex)) = (&self.doc, &mut self.textures) {
                        let r = Rect {
                            x,
                            y,
                            width: patch.width().min(doc.width().saturating_sub(x)),
                            height: patch.height().min(doc.height().saturating_sub(y)),
                        };
                        if patch.channels() == doc.current().channels() && r.area() > 0 {
                            let src = ImageSource {
                                base: doc.current(),
                                patch: Some((&patch, x, y)),
                            };
                            tex.image.update(&src, r);
                            self.preview_dirty.push(r);
                        }
                    }
                }
                other => {
                    terminal = Some(other);
                    break;
                }
            }
        }
        let Some(kind) = terminal else {
            return;
        };
        let JobState::Running(job) = std::mem::replace(&mut self.job, JobState::Idle) else {
            return;
        };
        let total = job.submitted.elapsed();
        self.timings = JobTimings {
            first_preview: job.first_preview,
            total: Some(total),
            cancel_latency: job.cancel_requested.map(|t| t.elapsed()),
        };
        match kind {
            EventKind::Done(JobOutput::Image(out)) => {
                if let Some(doc) = &mut self.doc {
                    doc.apply_repair(out, job.holes, &job.input);
                }
                // Previews only ever changed hole pixels, and applying the repair redraws
                // every hole pixel; re-rendering the preview areas would redo most of a large
                // scan for nothing.
                self.preview_dirty.clear();
                self.job = JobState::Done {
                    model: job.model,
                    secs: total.as_secs_f64(),
                };
            }
            EventKind::Done(JobOutput::Message(m)) => {
                self.info(m);
                self.job = JobState::Idle;
            }
            EventKind::Failed(e) => {
                self.error(format!("{} failed: {e}", job.model));
                self.job = JobState::Failed(e);
            }
            _ => {
                self.job = JobState::Cancelled {
                    latency: self.timings.cancel_latency,
                };
            }
        }
        self.revert_previews();
    }

    /// Uploads the regions of the document that changed since the last frame.
    fn sync_textures(&mut self) {
        let (Some(doc), Some(tex)) = (&mut self.doc, &mut self.textures) else {
            return;
        };
        let dirty = doc.take_dirty();
        for r in coalesce(&dirty.image, DIRTY_CELL) {
            tex.image.update(&ImageSource::new(doc.current()), r);
        }
        for r in coalesce(&dirty.mask, DIRTY_CELL) {
            tex.mask.update(&MaskSource(doc.mask(), OVERLAY), r);
        }
    }

    /// Draws the whole studio into `ui` and handles this frame's input.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.ensure_engine(&ctx);
        self.poll_loading();
        self.handle_shortcuts(&ctx);
        self.handle_dropped_files(&ctx);
        self.poll_engine();
        self.poll_detect();
        self.sync_textures();

        self.top_bar(ui);
        self.status_bar(ui);
        self.tools_panel(ui);
        self.model_panel(ui);
        egui::CentralPanel::default()
            .frame(egui::Frame::NONE.fill(Color32::from_gray(28)))
            .show(ui, |ui| {
                self.canvas_ui(ui);
                self.paint_detect_overlay(ui);
            });
        if self.finish_stroke_if_released(&ctx) && self.auto_run {
            self.run_job();
        }
        self.gan_train_window(&ctx);
        self.latent_window(&ctx);
        self.episode_window(&ctx);
        self.help_overlay(&ctx);
        self.close_prompt(&ctx);

        if self.job_running() {
            // Keeps the time-left estimate moving between worker events.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
        // Upload this frame's strokes now rather than on the next event.
        self.sync_textures();
    }

    fn handle_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_owned())
                .collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.open_path(p, ctx);
        }
    }

    /// Intercepts a window close while there are unsaved changes.
    pub(super) fn check_close_request(&mut self, ctx: &egui::Context) {
        let requested = ctx.input(|i| i.viewport().close_requested());
        if requested && !self.allow_close && self.doc.as_ref().is_some_and(|d| d.unsaved) {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.pending = Some(Pending::Quit);
        }
    }

    fn close_prompt(&mut self, ctx: &egui::Context) {
        let Some(pending) = self.pending.clone() else {
            return;
        };
        let mut choice = None;
        egui::Modal::new(egui::Id::unique("unsaved-changes")).show(ctx, |ui| {
            ui.heading("Unsaved changes");
            ui.label("The restored image has not been saved. Save it first?");
            ui.horizontal(|ui| {
                if ui.button("Save As…").clicked() {
                    choice = Some(0);
                }
                if ui.button("Discard changes").clicked() {
                    choice = Some(1);
                }
                if ui.button("Cancel").clicked() {
                    choice = Some(2);
                }
            });
        });
        let proceed = match choice {
            Some(0) => self.save_dialog(),
            Some(1) => true,
            Some(_) => {
                self.pending = None;
                return;
            }
            None => return,
        };
        if !proceed {
            return;
        }
        if let Some(doc) = &mut self.doc {
            // The user chose: do not ask again for this document.
            doc.unsaved = false;
        }
        self.pending = None;
        match pending {
            Pending::Quit => {
                self.allow_close = true;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            Pending::OpenDialog => self.open_dialog(ctx),
            Pending::Open(p) => self.open_path(p, ctx),
        }
    }

    /// Device description for the status bar.
    pub(super) fn device_label(&self) -> String {
        crate::engine::device::device_label(self.threads)
    }
}
