//! "Detect damage": runs a [`crate::detect`] detector on the open scan in the background and
//! shows its proposal as a separate layer (cyan, distinct from the magenta mask) until the user
//! accepts it into the mask, where brush and eraser edit it like any stroke (one undo step).
//!
//! The detector's probability map is kept, so the sensitivity and dilation sliders re-threshold
//! it live without running the detector again. The proposal is editable before it is accepted:
//! the eraser (E) removes false detections from it (those edits survive slider changes), and
//! the brush adds missed damage to the mask directly. D starts a detection; N and Shift+N (or the
//! panel's arrows) step the canvas through the proposal's spots, one connected region at a
//! time, for a review of a large scan at 100% or more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use egui::Color32;

use super::app::StudioApp;
use super::canvas::Tool;
use super::textures::{LayerTextures, MaskSource};
use crate::detect::{detect, detector_by_name, ProbMap, TileOptions};
use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::Reporter;

/// Colour of the proposal overlay: cyan, so it never reads as the accepted (magenta) mask.
pub(super) const PROPOSAL: Color32 = Color32::from_rgba_premultiplied(0, 140, 160, 160);

/// What a finished detection sends back.
type DetectResult = Result<(ProbMap, &'static str, f64), String>;

/// A detection running on its own thread.
struct DetectRun {
    cancel: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    rx: Receiver<DetectResult>,
    doc: usize,
}

/// A detector's proposal for the open document.
struct Proposal {
    probs: Arc<ProbMap>,
    mask: Mask,
    /// Pixels the user erased from the proposal; kept out whatever the sliders say.
    erased: Mask,
    texture: LayerTextures,
    detector: &'static str,
    secs: f64,
    doc: usize,
    /// Bounding boxes of the proposal's spots (8-connected regions) in reading order; `None`
    /// after a change, until needed again.
    spots: Option<Vec<Rect>>,
    /// The spot last shown by [`StudioApp::show_next_spot`].
    spot: Option<usize>,
}

impl Proposal {
    /// The spots, found again after the proposal changed; the spot last shown is forgotten
    /// when fewer spots remain (an eraser stroke removed some).
    fn spots(&mut self) -> &[Rect] {
        let spots = self.spots.get_or_insert_with(|| spot_boxes(&self.mask));
        if self.spot.is_some_and(|k| k >= spots.len()) {
            self.spot = None;
        }
        spots
    }

    /// Forgets the spots and the spot last shown (the proposal was thresholded anew).
    fn changed(&mut self) {
        self.spots = None;
        self.spot = None;
    }
}

/// Bounding boxes of the 8-connected regions of `mask`, in the order of their first pixel.
fn spot_boxes(mask: &Mask) -> Vec<Rect> {
    use crate::restore::pipeline::{bounding_box, components};
    components(mask)
        .iter()
        .map(|pixels| bounding_box(pixels, mask.width()))
        .collect()
}

/// State of the "Detect damage" tool.
pub struct DetectTool {
    sensitivity: f32,
    dilation: usize,
    classical_only: bool,
    run: Option<DetectRun>,
    proposal: Option<Proposal>,
    notice: Option<String>,
    /// Last image point of the eraser stroke running over the proposal.
    last_erase: Option<[f32; 2]>,
}

impl Default for DetectTool {
    fn default() -> Self {
        Self {
            sensitivity: crate::detect::DEFAULT_SENSITIVITY,
            dilation: crate::detect::DEFAULT_DILATION,
            classical_only: false,
            run: None,
            proposal: None,
            notice: None,
            last_erase: None,
        }
    }
}

/// Progress and cancellation shared with the detection thread.
struct ThreadReporter {
    cancel: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    ctx: egui::Context,
}

impl Reporter for ThreadReporter {
    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
    fn progress(&self, done: u64, total: u64, _message: &str) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        self.ctx.request_repaint();
    }
    fn preview(&self, _image: &ImageF32) {}
}

/// Identity of a document: its original image's allocation (a new document has a new one).
fn doc_key(app: &StudioApp) -> Option<usize> {
    app.doc
        .as_ref()
        .map(|d| Arc::as_ptr(d.original()) as *const u8 as usize)
}

impl StudioApp {
    /// Starts detecting damage on the open scan in the background (cancelling any detection
    /// already running). The proposal appears when it is done.
    pub fn start_detect(&mut self, ctx: &egui::Context) {
        self.cancel_detect();
        let (Some(doc), Some(key)) = (&self.doc, doc_key(self)) else {
            self.error("open an image first");
            return;
        };
        let image = doc.original().clone();
        let name = if self.detect.classical_only {
            "classical"
        } else {
            "auto"
        };
        let (det, notice) = match detector_by_name(name, self.registry.weights_dir()) {
            Ok(d) => d,
            Err(e) => {
                self.error(e.to_string());
                return;
            }
        };
        self.detect.notice = notice;
        let cancel = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let rep = ThreadReporter {
            cancel: cancel.clone(),
            done: done.clone(),
            total: total.clone(),
            ctx: ctx.clone(),
        };
        let threads = self.threads.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<DetectResult>(1);
        let spawned = std::thread::Builder::new()
            .name("kintsugi-detect".into())
            .spawn(move || {
                let start = Instant::now();
                let result = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|pool| {
                        pool.install(|| detect(det.as_ref(), &image, TileOptions::default(), &rep))
                            .map_err(|e| e.to_string())
                    })
                    .map(|p| (p, det.id(), start.elapsed().as_secs_f64()));
                let _ = tx.send(result);
                rep.ctx.request_repaint();
            });
        match spawned {
            Ok(_) => {
                self.detect.run = Some(DetectRun {
                    cancel,
                    done,
                    total,
                    rx,
                    doc: key,
                });
            }
            Err(e) => self.error(format!("cannot start detection: {e}")),
        }
    }

    /// Stops a running detection (its result is dropped).
    pub fn cancel_detect(&mut self) {
        if let Some(run) = self.detect.run.take() {
            run.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// True while a detection runs.
    pub fn detect_running(&self) -> bool {
        self.detect.run.is_some()
    }

    /// Waits (blocking) until the running detection finishes and takes its result; for tests
    /// and scripts. Returns false when none was running or it failed.
    pub fn wait_for_detect(&mut self) -> bool {
        let Some(run) = &self.detect.run else {
            return false;
        };
        match run.rx.recv() {
            Ok(r) => {
                let key = run.doc;
                self.detect.run = None;
                self.take_detect_result(r, key)
            }
            Err(_) => {
                self.detect.run = None;
                false
            }
        }
    }

    /// The proposed mask (not yet part of the document's mask), if any.
    pub fn detect_proposal(&self) -> Option<&Mask> {
        self.detect.proposal.as_ref().map(|p| &p.mask)
    }

    /// Sets the sensitivity in `[0, 1]` and re-thresholds the proposal.
    pub fn set_detect_sensitivity(&mut self, s: f32) {
        self.detect.sensitivity = s.clamp(0.0, 1.0);
        self.rethreshold();
    }

    /// Sets the dilation in pixels and re-thresholds the proposal.
    pub fn set_detect_dilation(&mut self, px: usize) {
        self.detect.dilation = px.min(32);
        self.rethreshold();
    }

    /// Adds the proposal to the document's mask as one undoable step and drops the proposal.
    /// Returns whether the mask changed.
    pub fn accept_proposal(&mut self) -> bool {
        let Some(p) = self.detect.proposal.take() else {
            return false;
        };
        let Some(doc) = &mut self.doc else {
            return false;
        };
        let mut merged = (**doc.mask()).clone();
        if merged.width() != p.mask.width() || merged.height() != p.mask.height() {
            return false;
        }
        for (m, &q) in merged.data_mut().iter_mut().zip(p.mask.data()) {
            *m |= q;
        }
        let changed = doc.replace_mask(merged);
        self.info(format!(
            "Added the detected damage ({} px) to the mask; edit it with the brush (B) and eraser (E)",
            p.mask.count()
        ));
        changed
    }

    /// Drops the proposal.
    pub fn discard_proposal(&mut self) {
        self.detect.proposal = None;
    }

    fn rethreshold(&mut self) {
        let (s, d) = (self.detect.sensitivity, self.detect.dilation);
        if let Some(p) = &mut self.detect.proposal {
            p.mask = p.probs.mask(s, d);
            for (m, &e) in p.mask.data_mut().iter_mut().zip(p.erased.data()) {
                *m &= !e;
            }
            p.texture = LayerTextures::new("proposal", p.mask.width(), p.mask.height());
            p.changed();
        }
    }

    /// Spots (connected regions) in the proposal, 0 without one.
    pub fn proposal_spots(&mut self) -> usize {
        self.detect.proposal.as_mut().map_or(0, |p| p.spots().len())
    }

    /// Shows the next spot of the proposal on the canvas (the previous one when `forward` is
    /// false), wrapping around; returns its bounding box and 1-based number, or `None` when
    /// nothing is proposed.
    pub fn show_next_spot(&mut self, forward: bool) -> Option<(Rect, usize)> {
        let p = self.detect.proposal.as_mut()?;
        let n = p.spots().len();
        if n == 0 {
            return None;
        }
        let k = match (p.spot, forward) {
            (None, true) => 0,
            (None, false) => n - 1,
            (Some(k), true) => (k + 1) % n,
            (Some(k), false) => (k + n - 1) % n,
        };
        p.spot = Some(k);
        let r = p.spots()[k];
        self.canvas.show_region(r);
        Some((r, k + 1))
    }

    /// Erases the segment from `a` to `b` (image coordinates) with the given radius from the
    /// proposal, before it is accepted. Returns whether the proposal changed.
    pub fn erase_from_proposal(&mut self, a: [f32; 2], b: [f32; 2], radius: f32) -> bool {
        let Some(p) = &mut self.detect.proposal else {
            return false;
        };
        let (w, h) = (p.mask.width() as f32, p.mask.height() as f32);
        let r = radius.max(0.5);
        let x0 = (a[0].min(b[0]) - r).floor().max(0.0);
        let y0 = (a[1].min(b[1]) - r).floor().max(0.0);
        let x1 = (a[0].max(b[0]) + r).ceil().min(w);
        let y1 = (a[1].max(b[1]) + r).ceil().min(h);
        if x1 <= x0 || y1 <= y0 {
            return false;
        }
        let rect = Rect {
            x: x0 as usize,
            y: y0 as usize,
            width: (x1 - x0) as usize,
            height: (y1 - y0) as usize,
        };
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len2 = dx * dx + dy * dy;
        let mut changed = false;
        for y in rect.y..rect.bottom() {
            for x in rect.x..rect.right() {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                // Distance from the pixel centre to the segment.
                let t = if len2 > 0.0 {
                    (((px - a[0]) * dx + (py - a[1]) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (a[0] + t * dx - px, a[1] + t * dy - py);
                if qx * qx + qy * qy <= r * r {
                    p.erased.set(x, y, true);
                    changed |= p.mask.get(x, y);
                    p.mask.set(x, y, false);
                }
            }
        }
        if changed {
            p.texture.update(&MaskSource(&p.mask, PROPOSAL), rect);
            // Found again when next needed; the spot last shown is kept, so that N goes on
            // from where the review was.
            p.spots = None;
        }
        changed
    }

    /// While the eraser is dragged over the canvas, also erases from the proposal (the brush
    /// keeps painting the mask itself). Mirrors the canvas's own painting: every pointer
    /// position of the frame, joined by segments.
    fn erase_proposal_from_input(&mut self, ui: &egui::Ui) {
        let rect = self.canvas.rect;
        let (down, space, mut points) = ui.input(|i| {
            let points: Vec<egui::Pos2> = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::PointerMoved(p) => Some(*p),
                    egui::Event::PointerButton {
                        pos,
                        button: egui::PointerButton::Primary,
                        pressed: true,
                        ..
                    } => Some(*pos),
                    _ => None,
                })
                .collect();
            (
                i.pointer.primary_down(),
                i.key_down(egui::Key::Space),
                points,
            )
        });
        if points.is_empty() {
            if let Some(p) = ui.input(|i| i.pointer.latest_pos()) {
                points.push(p);
            }
        }
        let started_inside =
            self.detect.last_erase.is_some() || points.first().is_some_and(|p| rect.contains(*p));
        let erasing = self.detect.proposal.is_some()
            && self.canvas.tool == Tool::Eraser
            && down
            && !space
            && !self.job_running()
            && started_inside;
        if !erasing {
            self.detect.last_erase = None;
            return;
        }
        let radius = self.canvas.brush * 0.5;
        for p in points {
            let q = self.screen_to_image(p);
            let from = self.detect.last_erase.unwrap_or(q);
            self.erase_from_proposal(from, q, radius);
            self.detect.last_erase = Some(q);
        }
    }

    /// The D shortcut: detect damage on the open scan (ignored while a text field has focus).
    pub(super) fn detect_shortcut(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::D))
            && self.doc.is_some()
        {
            self.start_detect(ctx);
        }
        if self.detect.proposal.is_some() {
            // Shift+N first: a key pattern without Shift also matches the key with Shift.
            let (previous, next) = ctx.input_mut(|i| {
                (
                    i.consume_key(egui::Modifiers::SHIFT, egui::Key::N),
                    i.consume_key(egui::Modifiers::NONE, egui::Key::N),
                )
            });
            if next || previous {
                self.show_next_spot(next);
            }
        }
    }

    fn take_detect_result(&mut self, r: DetectResult, doc: usize) -> bool {
        if doc_key(self) != Some(doc) {
            return false;
        }
        match r {
            Ok((probs, detector, secs)) => {
                let mask = probs.mask(self.detect.sensitivity, self.detect.dilation);
                let texture = LayerTextures::new("proposal", mask.width(), mask.height());
                let erased = Mask::new(mask.width(), mask.height());
                self.detect.proposal = Some(Proposal {
                    probs: Arc::new(probs),
                    mask,
                    erased,
                    texture,
                    detector,
                    secs,
                    doc,
                    spots: None,
                    spot: None,
                });
                true
            }
            Err(e) => {
                if e != "cancelled" {
                    self.error(format!("detection failed: {e}"));
                }
                false
            }
        }
    }

    /// Takes a finished detection's result; drops a proposal made for another document.
    pub(super) fn poll_detect(&mut self) {
        let key = doc_key(self);
        if self
            .detect
            .proposal
            .as_ref()
            .is_some_and(|p| Some(p.doc) != key)
        {
            self.detect.proposal = None;
        }
        let Some(run) = &self.detect.run else {
            return;
        };
        let Ok(r) = run.rx.try_recv() else {
            return;
        };
        let doc = run.doc;
        self.detect.run = None;
        self.take_detect_result(r, doc);
    }

    /// The "Detect damage" section of the tools panel.
    pub(super) fn detect_section(&mut self, ui: &mut egui::Ui) {
        ui.separator();
        ui.label("Damage detection");
        let ctx = ui.ctx().clone();
        if let Some(run) = &self.detect.run {
            let (d, t) = (
                run.done.load(Ordering::Relaxed),
                run.total.load(Ordering::Relaxed),
            );
            ui.add(
                egui::ProgressBar::new(if t == 0 { 0.0 } else { d as f32 / t as f32 })
                    .text(format!("detecting: {d}/{t} tiles")),
            );
            if ui
                .button("Cancel detection")
                .on_hover_text("Stop detecting")
                .clicked()
            {
                self.cancel_detect();
            }
        } else if ui
            .add_enabled(self.doc.is_some(), egui::Button::new("Detect damage"))
            .on_hover_text(
                "Propose a mask of dust, scratches and hairs (shown in cyan until you accept it); \
                 shortcut D",
            )
            .clicked()
        {
            self.start_detect(&ctx);
        }
        ui.checkbox(&mut self.detect.classical_only, "Classical detector")
            .on_hover_text("Use the weight-free detector instead of the learned one");
        if let Some(n) = &self.detect.notice {
            ui.small(n.clone());
        }
        let erasing = self.detect.last_erase.is_some();
        let Some(p) = &mut self.detect.proposal else {
            return;
        };
        // Spots are counted again once an eraser stroke over the proposal ends, not per frame.
        let spots = if erasing && p.spots.is_none() {
            None
        } else {
            Some(p.spots().len())
        };
        ui.small(format!(
            "{}: {:.3}% proposed in {} spots ({:.1} s)",
            p.detector,
            100.0 * p.mask.coverage(),
            spots.map_or("...".into(), |n| n.to_string()),
            p.secs
        ));
        let current = p.spot;
        ui.horizontal(|ui| {
            let any = spots.is_some_and(|n| n > 0);
            let prev = ui
                .add_enabled(any, egui::Button::new("< Previous"))
                .on_hover_text("Show the previous proposed spot (Shift+N)")
                .clicked();
            let next = ui
                .add_enabled(any, egui::Button::new("Next spot >"))
                .on_hover_text("Show the next proposed spot at 100% or more (N)")
                .clicked();
            if let (Some(k), Some(n)) = (current, spots) {
                ui.small(format!("spot {} of {n}", k + 1));
            } else {
                ui.small("review spots");
            }
            if prev || next {
                self.show_next_spot(next);
            }
        });
        let mut s = self.detect.sensitivity;
        let mut d = self.detect.dilation;
        let s_changed = ui
            .add(egui::Slider::new(&mut s, 0.0..=1.0).text("Sensitivity"))
            .on_hover_text("Higher flags fainter damage (probability >= 1 - sensitivity)")
            .changed();
        let d_changed = ui
            .add(egui::Slider::new(&mut d, 0..=8).text("Grow (px)"))
            .on_hover_text("Grow the proposal so it covers the soft edges of the damage")
            .changed();
        if s_changed || d_changed {
            self.detect.sensitivity = s;
            self.detect.dilation = d;
            self.rethreshold();
        }
        ui.small("Edit before accepting: the eraser (E) removes detections, the brush (B) adds to the mask.");
        ui.horizontal(|ui| {
            if ui
                .button("Accept")
                .on_hover_text("Add the proposal to the mask (undo with Ctrl+Z)")
                .clicked()
            {
                self.accept_proposal();
            }
            if ui
                .button("Discard")
                .on_hover_text("Drop the proposal")
                .clicked()
            {
                self.discard_proposal();
            }
        });
    }

    /// Draws the proposal over the canvas (call right after the canvas).
    pub(super) fn paint_detect_overlay(&mut self, ui: &egui::Ui) {
        if self.job_running() {
            return;
        }
        self.erase_proposal_from_input(ui);
        let Some(doc) = &self.doc else {
            return;
        };
        let Some(p) = &mut self.detect.proposal else {
            return;
        };
        let rect = self.canvas.rect;
        let v = self.canvas.view;
        let image_rect = egui::Rect::from_min_size(
            rect.min + v.offset,
            egui::vec2(doc.width() as f32, doc.height() as f32) * v.zoom,
        );
        let ctx = ui.ctx().clone();
        let ppi = v.zoom * ctx.pixels_per_point();
        let painter = ui.painter_at(rect);
        p.texture.paint(
            &ctx,
            &painter,
            &MaskSource(&p.mask, PROPOSAL),
            image_rect,
            rect,
            ppi,
        );
    }
}
