//! The RL episode viewer's window: task and options, run and cancel, the step controls, the
//! episode image with its action overlay, the colour legend and the per-step table. The state
//! and the worker job live in [`super::episode`].

use egui::{Color32, RichText};

use super::app::StudioApp;
use super::episode::{action_colour, EpisodeState, EpisodeTask, EpisodeViewer, VIEW_SIDE};

impl StudioApp {
    /// The viewer window for this frame: applies arrived steps, draws the window.
    pub(super) fn episode_window(&mut self, ctx: &egui::Context) {
        self.episode.drain();
        if !self.episode.open {
            return;
        }
        self.episode.sync_texture(ctx);
        let mut open = true;
        let mut run = false;
        let mut cancel = false;
        egui::Window::new("RL episode viewer")
            .open(&mut open)
            .default_width(420.0)
            .default_pos(ctx.content_rect().right_top() + egui::vec2(-470.0, 60.0))
            .vscroll(true)
            .resizable(true)
            .show(ctx, |ui| {
                let v = &mut self.episode;
                ui.horizontal(|ui| {
                    ui.radio_value(&mut v.task, EpisodeTask::Denoise, "Denoise (rl-denoise)")
                        .on_hover_text("Denoise a region at the centre of the view");
                    ui.radio_value(&mut v.task, EpisodeTask::Refine, "Refine mask (rl-refine)")
                        .on_hover_text(
                            "Fill the mask (Telea), then let the agent refine the holes",
                        );
                    ui.radio_value(&mut v.task, EpisodeTask::RefineCgan, "rl-refine-cgan")
                        .on_hover_text(
                            "Fill the mask with the cGAN, then let the agent refine the holes",
                        );
                });
                match v.task {
                    EpisodeTask::Denoise => {
                        ui.horizontal(|ui| {
                            let mut noise = v.add_noise.is_some();
                            ui.checkbox(&mut noise, "Add noise first, sigma")
                                .on_hover_text(
                                    "The photo becomes the clean target: each step's reward \
                                     and PSNR change are measured against it",
                                );
                            let mut sigma = v.add_noise.unwrap_or(25.0);
                            ui.add_enabled(
                                noise,
                                egui::Slider::new(&mut sigma, 5.0..=75.0).integer(),
                            );
                            v.add_noise = noise.then_some(sigma);
                        });
                    }
                    EpisodeTask::Refine | EpisodeTask::RefineCgan => {
                        ui.checkbox(
                            &mut v.photo_as_target,
                            "Score against the photo under the mask",
                        )
                        .on_hover_text(
                            "Only meaningful when the mask covers intact pixels (a test): \
                                 rewards and PSNR are measured against them",
                        );
                    }
                }
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(!v.running(), egui::Button::new("Run episode"))
                        .on_hover_text("Run one greedy episode on the worker")
                        .clicked()
                    {
                        run = true;
                    }
                    if ui
                        .add_enabled(v.running(), egui::Button::new("Cancel episode"))
                        .clicked()
                    {
                        cancel = true;
                    }
                    let status = match &v.state {
                        EpisodeState::Idle => "no episode yet".to_owned(),
                        EpisodeState::Running if v.record.is_none() => {
                            "waiting for the worker".to_owned()
                        }
                        EpisodeState::Running => {
                            format!("running: {}/{} steps", v.steps_received(), v.total_steps)
                        }
                        EpisodeState::Done(s) => format!("done in {s:.2} s"),
                        EpisodeState::Failed(e) => format!("failed: {e}"),
                        EpisodeState::Cancelled => "cancelled".into(),
                    };
                    let failed = matches!(v.state, EpisodeState::Failed(_));
                    ui.label(if failed {
                        RichText::new(status).color(Color32::from_rgb(255, 120, 100))
                    } else {
                        RichText::new(status)
                    });
                });
                if v.record.is_none() {
                    return;
                }
                ui.separator();
                ui.horizontal(|ui| {
                    let last = v.steps_received();
                    if ui
                        .add_enabled(v.shown > 0, egui::Button::new("|< Start"))
                        .on_hover_text("The image before the first step (Home)")
                        .clicked()
                    {
                        v.show_step(0);
                    }
                    if ui
                        .add_enabled(v.shown > 0, egui::Button::new("< Back"))
                        .on_hover_text("One step back (,)")
                        .clicked()
                    {
                        v.step_back();
                    }
                    if ui
                        .add_enabled(v.shown < last, egui::Button::new("Forward >"))
                        .on_hover_text("One step forward (.)")
                        .clicked()
                    {
                        v.step_forward();
                    }
                    if ui
                        .add_enabled(v.shown < last, egui::Button::new("Last >|"))
                        .on_hover_text("The newest step (End)")
                        .clicked()
                    {
                        v.show_step(last);
                    }
                    ui.label(format!("step {} / {}", v.shown, v.total_steps.max(last)));
                });
                ui.horizontal(|ui| {
                    ui.checkbox(&mut v.overlay, "Action overlay");
                    ui.add_enabled(
                        v.overlay,
                        egui::Slider::new(&mut v.overlay_alpha, 0.0..=1.0).text("opacity"),
                    );
                });
                if let (Some(tex), Some(region)) = (&v.texture, v.region) {
                    let s = VIEW_SIDE / region.width.max(region.height).max(1) as f32;
                    let size = egui::vec2(region.width as f32 * s, region.height as f32 * s);
                    ui.add(egui::Image::new((tex.id(), size)))
                        .on_hover_text(format!(
                            "{}x{} px at ({}, {}) of the image",
                            region.width, region.height, region.x, region.y
                        ));
                }
                episode_legend(ui, v);
                episode_table(ui, v);
            });
        if !open {
            self.episode.open = false;
        }
        if run {
            self.start_episode();
        }
        if cancel {
            self.cancel_episode();
        }
        if self.episode.running() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }
}

/// The colour legend: one swatch per action of the agent's set, with its share at the shown
/// step.
fn episode_legend(ui: &mut egui::Ui, v: &EpisodeViewer) {
    let Some(rec) = &v.record else {
        return;
    };
    let share = (v.shown > 0)
        .then(|| rec.steps.get(v.shown - 1).map(|s| &s.stats.share))
        .flatten();
    ui.label(RichText::new("Actions (share of the acting pixels at this step)").strong());
    egui::Grid::new("rl-episode-legend")
        .num_columns(4)
        .spacing([10.0, 2.0])
        .show(ui, |ui| {
            for (i, &a) in rec.set.iter().enumerate() {
                let (r, _) = ui.allocate_exact_size(egui::vec2(12.0, 12.0), egui::Sense::hover());
                ui.painter().rect_filled(r, 2.0, action_colour(a));
                let pct = share
                    .and_then(|s| s.get(i))
                    .map(|s| format!("{a} {:.1}%", 100.0 * s, a = a.name()))
                    .unwrap_or_else(|| a.name().to_owned());
                ui.label(pct);
                if i % 2 == 1 {
                    ui.end_row();
                }
            }
        });
}

/// Mean reward and PSNR change per step (the shown step in bold).
fn episode_table(ui: &mut egui::Ui, v: &EpisodeViewer) {
    let Some(rec) = &v.record else {
        return;
    };
    ui.separator();
    if rec.target.is_none() {
        ui.label(
            "No clean target: reward and PSNR are unknown; the table shows how much each step \
             changed the pixels.",
        );
    }
    egui::Grid::new("rl-episode-steps")
        .num_columns(5)
        .striped(true)
        .show(ui, |ui| {
            for head in [
                "step",
                "mean reward",
                "PSNR (dB)",
                "change",
                "mean |change|",
            ] {
                ui.label(RichText::new(head).strong());
            }
            ui.end_row();
            let fmt =
                |v: Option<f64>, p: usize| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.p$}"));
            for s in &rec.steps {
                let text = |t: String| {
                    if s.step == v.shown {
                        RichText::new(t)
                            .strong()
                            .color(Color32::from_rgb(255, 210, 80))
                    } else {
                        RichText::new(t)
                    }
                };
                ui.label(text(format!("{}", s.step)));
                ui.label(text(fmt(s.stats.mean_reward, 4)));
                ui.label(text(fmt(s.stats.psnr_after, 2)));
                ui.label(text(
                    s.stats
                        .psnr_change()
                        .map_or_else(|| "-".to_owned(), |d| format!("{d:+.2} dB")),
                ));
                ui.label(text(format!("{:.2} /255", s.stats.mean_change)));
                ui.end_row();
            }
            if let (Some(total), Some(first), Some(last)) = (
                rec.total_reward(),
                rec.steps.first().and_then(|s| s.stats.psnr_before),
                rec.steps.last().and_then(|s| s.stats.psnr_after),
            ) {
                ui.label(RichText::new("all").strong());
                ui.label(format!("{total:.4}"));
                ui.label(format!("{first:.2} -> {last:.2}"));
                ui.label(format!("{:+.2} dB", last - first));
                ui.end_row();
            }
        });
}
