//! Side panels and bars: file actions and messages, tools, model picker with parameters,
//! progress, and the status bar.

use egui::{Color32, RichText};

use super::app::{JobState, Level, StudioApp};
use super::canvas::Tool;
use crate::imaging::BitDepth;
use crate::models::registry::Availability;

/// Formats a duration in seconds for "time left".
fn format_secs(s: f64) -> String {
    if s >= 90.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.1} s")
    }
}

fn depth_label(d: BitDepth) -> &'static str {
    match d {
        BitDepth::U8 => "8-bit",
        BitDepth::U16 => "16-bit",
        BitDepth::F32 => "32-bit float",
    }
}

impl StudioApp {
    /// File actions, help, and the message bar.
    pub(super) fn top_bar(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        egui::Panel::top("top-bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                if ui
                    .button("Open…")
                    .on_hover_text("Open an image (Ctrl+O); you can also drop a file on the window")
                    .clicked()
                {
                    self.open_dialog(&ctx);
                }
                let has_doc = self.doc.is_some();
                if ui
                    .add_enabled(has_doc, egui::Button::new("Save As…"))
                    .on_hover_text("Save the result as a new file, keeping the bit depth (Ctrl+S)")
                    .clicked()
                {
                    self.save_dialog();
                }
                ui.separator();
                let (can_undo, can_redo) = self
                    .doc
                    .as_ref()
                    .map_or((false, false), |d| (d.can_undo(), d.can_redo()));
                if ui
                    .add_enabled(can_undo, egui::Button::new("Undo"))
                    .on_hover_text("Undo the last stroke or repair (Ctrl+Z)")
                    .clicked()
                {
                    self.undo();
                }
                if ui
                    .add_enabled(can_redo, egui::Button::new("Redo"))
                    .on_hover_text("Redo (Ctrl+Shift+Z)")
                    .clicked()
                {
                    self.redo();
                }
                ui.separator();
                if ui
                    .button("Fit")
                    .on_hover_text("Fit the image in the window (Ctrl+0)")
                    .clicked()
                {
                    self.canvas.request_fit();
                }
                if ui
                    .button("100%")
                    .on_hover_text("One image pixel per screen pixel (Ctrl+1)")
                    .clicked()
                {
                    self.canvas.request_actual_size();
                }
                let mut split = self.canvas.split.is_some();
                if ui
                    .toggle_value(&mut split, "Split view")
                    .on_hover_text("Compare: original left of the divider, result right. Hold Tab to see the whole original.")
                    .changed()
                {
                    self.canvas.split = split.then_some(0.5);
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    let mut gan = self.gan_train.is_open();
                    if ui
                        .toggle_value(&mut gan, "GAN training (G)")
                        .on_hover_text("Train the face GAN live: loss curves and samples as it learns")
                        .changed()
                    {
                        self.gan_train.set_open(gan);
                    }
                    let mut latent = self.latent.is_open();
                    if ui
                        .toggle_value(&mut latent, "Latent explorer (L)")
                        .on_hover_text("Samples, sliders, interpolation, encode and put back")
                        .changed()
                    {
                        self.latent.set_open(latent);
                    }
                    let mut episode = self.episode.is_open();
                    if ui
                        .toggle_value(&mut episode, "RL episode viewer (R)")
                        .on_hover_text("Run an RL agent and step through its episode")
                        .changed()
                    {
                        self.episode.set_open(episode);
                    }
                    if ui
                        .button("Shortcuts (F1)")
                        .on_hover_text("List every keyboard shortcut")
                        .clicked()
                    {
                        self.show_help = !self.show_help;
                    }
                });
            });
            let mut dismiss = false;
            if let Some((level, msg)) = &self.message {
                ui.horizontal(|ui| {
                    let color = match level {
                        Level::Info => ui.visuals().text_color(),
                        Level::Error => Color32::from_rgb(255, 110, 100),
                    };
                    if *level == Level::Error {
                        ui.label(RichText::new("Error:").color(color).strong());
                    }
                    ui.label(RichText::new(msg).color(color));
                    if ui.small_button("Dismiss").on_hover_text("Hide this message").clicked() {
                        dismiss = true;
                    }
                });
            }
            if dismiss {
                self.message = None;
            }
        });
    }

    /// Tools: brush, eraser, size, mask actions.
    pub(super) fn tools_panel(&mut self, ui: &mut egui::Ui) {
        egui::Panel::left("tools")
            .resizable(false)
            .default_size(170.0)
            .show(ui, |ui| {
                ui.heading("Mask");
                ui.horizontal(|ui| {
                    ui.selectable_value(&mut self.canvas.tool, Tool::Brush, "Brush")
                        .on_hover_text("Paint damage to repair (B)");
                    ui.selectable_value(&mut self.canvas.tool, Tool::Eraser, "Eraser")
                        .on_hover_text("Remove paint from the mask (E)");
                });
                ui.add(
                    egui::Slider::new(&mut self.canvas.brush, 1.0..=500.0)
                        .logarithmic(true)
                        .integer()
                        .text("Size"),
                )
                .on_hover_text("Brush diameter in image pixels ([ and ])");
                ui.add_space(6.0);
                let has_doc = self.doc.is_some();
                ui.add_enabled_ui(has_doc, |ui| {
                    if ui
                        .button("Clear mask")
                        .on_hover_text("Remove all paint")
                        .clicked()
                    {
                        self.clear_mask();
                    }
                    if ui
                        .button("Invert mask")
                        .on_hover_text("Swap painted and unpainted areas")
                        .clicked()
                    {
                        self.invert_mask();
                    }
                    if ui
                        .button("Load mask…")
                        .on_hover_text(
                            "Load a mask image of the same size (white or opaque = damage)",
                        )
                        .clicked()
                    {
                        if let Some(p) = rfd::FileDialog::new()
                            .set_title("Load a mask")
                            .add_filter("Images", &["png", "tif", "tiff", "bmp", "jpg", "webp"])
                            .pick_file()
                        {
                            let _ = self.load_mask_file(&p);
                        }
                    }
                    if ui
                        .button("Export mask…")
                        .on_hover_text("Save the mask as an 8-bit PNG (white = damage)")
                        .clicked()
                    {
                        if let Some(p) = rfd::FileDialog::new()
                            .set_title("Export the mask")
                            .set_file_name("mask.png")
                            .save_file()
                        {
                            let _ = self.export_mask(&p);
                        }
                    }
                });
                if let Some(doc) = &self.doc {
                    ui.label(format!(
                        "{:.2}% of the image masked",
                        doc.mask_coverage() * 100.0
                    ));
                }
                ui.separator();
                ui.checkbox(&mut self.auto_run, "Auto-run after each stroke")
                    .on_hover_text("Run the selected model whenever you lift the brush");
                self.detect_section(ui);
            });
    }

    /// Model picker, parameters, Run/Cancel and progress.
    pub(super) fn model_panel(&mut self, ui: &mut egui::Ui) {
        egui::Panel::right("model")
            .resizable(true)
            .default_size(290.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    ui.heading("Model");
                    let models = self.models.clone();
                    let mut pick = None;
                    for m in &models {
                        let selected = self.model == m.id;
                        let available = m.availability == Availability::Available;
                        let text = format!("{}  [{}]", m.id, m.family.name());
                        let resp = ui
                            .add_enabled(available, egui::Button::selectable(selected, text))
                            .on_hover_text(m.description);
                        let resp = match &m.availability {
                            Availability::Unavailable(reason) => {
                                resp.on_disabled_hover_text(format!("Unavailable: {reason}"))
                            }
                            Availability::Available => resp,
                        };
                        if resp.clicked() {
                            pick = Some(m.id);
                        }
                        ui.label(RichText::new(m.description).small().weak());
                    }
                    if let Some(id) = pick {
                        self.select_model(id);
                    }
                    ui.separator();
                    self.params_ui(ui);
                    ui.separator();
                    self.run_ui(ui);
                });
            });
    }

    fn params_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Parameters");
        let specs = self.specs.clone();
        if specs.is_empty() {
            ui.label("This model has no parameters.");
            return;
        }
        let params = self.params_mut();
        for spec in &specs {
            let mut v = params.value(spec);
            ui.horizontal(|ui| {
                let mut slider = egui::Slider::new(&mut v, spec.min..=spec.max).text(spec.label);
                if spec.integer {
                    slider = slider.integer();
                }
                if ui.add(slider).on_hover_text(spec.help).changed() {
                    params.set(spec.name, v);
                }
                if ui
                    .small_button("Reset")
                    .on_hover_text(format!("Reset {} to {}", spec.label, spec.default))
                    .clicked()
                {
                    params.set(spec.name, spec.default);
                }
            });
        }
        if ui
            .button("Reset all")
            .on_hover_text("Every parameter back to its default")
            .clicked()
        {
            *params = Default::default();
        }
    }

    fn run_ui(&mut self, ui: &mut egui::Ui) {
        let running = self.job_running();
        ui.horizontal(|ui| {
            let can_run = self.doc.is_some() && self.engine.is_some();
            if ui
                .add_enabled(can_run, egui::Button::new(RichText::new("Run").strong()))
                .on_hover_text("Repair the masked pixels with the selected model (Enter)")
                .clicked()
            {
                self.run_job();
            }
            if ui
                .add_enabled(running, egui::Button::new("Cancel"))
                .on_hover_text("Stop the running job (Esc)")
                .clicked()
            {
                self.cancel();
            }
        });
        match &self.job {
            JobState::Running(j) => {
                let frac = if j.total > 0 {
                    j.done as f32 / j.total as f32
                } else {
                    0.0
                };
                let left = match j.work_started {
                    Some(t) if j.done > 0 && j.total > j.done => {
                        let el = t.elapsed().as_secs_f64();
                        Some(el / j.done as f64 * (j.total - j.done) as f64)
                    }
                    _ => None,
                };
                let mut text = if j.total > 0 {
                    format!("step {} / {}", j.done, j.total)
                } else {
                    "waiting for the worker…".to_owned()
                };
                if let Some(l) = left {
                    text.push_str(&format!(", about {} left", format_secs(l)));
                }
                ui.add(egui::ProgressBar::new(frac).text(text).animate(true));
                if !j.message.is_empty() {
                    ui.label(RichText::new(&j.message).small());
                }
                if j.cancel_requested.is_some() {
                    ui.label("Cancelling…");
                }
            }
            JobState::Done { model, secs } => {
                ui.label(format!("{model} finished in {}", format_secs(*secs)));
                if let Some(p) = self.timings.first_preview {
                    ui.label(
                        RichText::new(format!("first preview after {} ms", p.as_millis())).small(),
                    );
                }
            }
            JobState::Failed(e) => {
                ui.label(
                    RichText::new(format!("Failed: {e}")).color(Color32::from_rgb(255, 110, 100)),
                );
            }
            JobState::Cancelled { latency } => {
                let l = latency.map(|d| format!(" (stopped in {} ms)", d.as_millis()));
                ui.label(format!("Cancelled{}", l.unwrap_or_default()));
            }
            JobState::Idle => {}
        }
    }

    /// Image size and depth, zoom, cursor, device, job state.
    pub(super) fn status_bar(&mut self, ui: &mut egui::Ui) {
        egui::Panel::bottom("status").show(ui, |ui| {
            ui.horizontal(|ui| {
                match &self.doc {
                    Some(doc) => {
                        let name = doc
                            .path
                            .as_ref()
                            .and_then(|p| p.file_name())
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "demo".into());
                        let star = if doc.unsaved { " *" } else { "" };
                        ui.label(format!(
                            "{name}{star}  {}×{}  {}  {} ch",
                            doc.width(),
                            doc.height(),
                            depth_label(doc.depth),
                            doc.current().channels()
                        ));
                    }
                    None => {
                        ui.label("No image");
                    }
                }
                ui.separator();
                let ppp = ui.ctx().pixels_per_point();
                ui.label(format!("zoom {:.0}%", self.canvas.view.zoom * ppp * 100.0));
                ui.separator();
                match self.canvas.cursor {
                    Some((x, y)) => ui.label(format!("x {x}, y {y}")),
                    None => ui.label("x –, y –"),
                };
                ui.separator();
                ui.label(self.device_label());
                ui.separator();
                ui.label(self.job_status());
                if self.loading.is_some() {
                    ui.separator();
                    ui.spinner();
                    ui.label("loading…");
                }
            });
        });
    }
}
