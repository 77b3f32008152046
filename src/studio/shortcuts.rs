//! Keyboard shortcuts and the F1 overlay that lists them.

use egui::{Key, Modifiers};

use super::app::StudioApp;
use super::canvas::Tool;

/// Every shortcut with what it does, as shown in the F1 overlay.
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("Ctrl+O", "Open an image (or drop a file on the window)"),
    ("Ctrl+S", "Save the result as a new file"),
    ("B / E", "Brush / eraser"),
    ("[ / ]", "Smaller / larger brush"),
    ("Ctrl+Z", "Undo"),
    ("Ctrl+Shift+Z, Ctrl+Y", "Redo"),
    ("Enter", "Run the selected model on the mask"),
    ("Esc", "Cancel the running job (and a running RL episode)"),
    ("D", "Detect damage (a proposal to edit, then accept)"),
    (
        "N / Shift+N",
        "Detect damage: show the next / previous proposed spot",
    ),
    ("Tab (hold)", "Show the original"),
    ("Wheel", "Zoom around the pointer"),
    ("Ctrl+0 / Ctrl+1", "Fit / 100%"),
    ("Space+drag, middle or right drag", "Pan"),
    ("G", "Show or hide the live GAN training view"),
    ("L", "Show or hide the latent explorer"),
    ("R", "Show or hide the RL episode viewer"),
    (", / .", "RL episode viewer: one step back / forward"),
    ("Home / End", "RL episode viewer: first / newest step"),
    ("F1", "Show or hide this list"),
];

impl StudioApp {
    /// Handles this frame's shortcuts before any widget sees the keys.
    pub(super) fn handle_shortcuts(&mut self, ctx: &egui::Context) {
        // Letters and brackets belong to a text field while one is being edited.
        let typing = ctx.egui_wants_keyboard_input();
        let cmd = Modifiers::COMMAND;
        let shift_cmd = Modifiers::COMMAND | Modifiers::SHIFT;
        let (open, save, redo, undo, fit, actual, f1) = ctx.input_mut(|i| {
            (
                i.consume_key(cmd, Key::O),
                i.consume_key(cmd, Key::S),
                i.consume_key(shift_cmd, Key::Z) || i.consume_key(cmd, Key::Y),
                i.consume_key(cmd, Key::Z),
                i.consume_key(cmd, Key::Num0),
                i.consume_key(cmd, Key::Num1),
                i.consume_key(Modifiers::NONE, Key::F1),
            )
        });
        let (run, esc, brush, eraser, smaller, larger) = if typing {
            (false, false, false, false, false, false)
        } else {
            ctx.input_mut(|i| {
                // Space is only ever held for panning: take it from focused buttons.
                i.consume_key(Modifiers::NONE, Key::Space);
                // Tab is held to compare; keep it from moving keyboard focus around.
                i.consume_key(Modifiers::NONE, Key::Tab);
                (
                    i.consume_key(Modifiers::NONE, Key::Enter),
                    i.consume_key(Modifiers::NONE, Key::Escape),
                    i.consume_key(Modifiers::NONE, Key::B),
                    i.consume_key(Modifiers::NONE, Key::E),
                    i.consume_key(Modifiers::NONE, Key::OpenBracket),
                    i.consume_key(Modifiers::NONE, Key::CloseBracket),
                )
            })
        };
        if f1 {
            self.show_help = !self.show_help;
        }
        if !typing && ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::G)) {
            self.toggle_gan_train();
        }
        self.detect_shortcut(ctx);
        if !typing && ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::L)) {
            self.toggle_latent();
        }
        if !typing {
            self.episode_keys(ctx);
        }
        if open {
            self.open_dialog(ctx);
        }
        if save {
            self.save_dialog();
        }
        if undo {
            self.undo();
        }
        if redo {
            self.redo();
        }
        if fit {
            self.canvas.request_fit();
        }
        if actual {
            self.canvas.request_actual_size();
        }
        if run {
            self.run_job();
        }
        if esc {
            if self.show_help {
                self.show_help = false;
            } else {
                self.cancel();
                self.cancel_episode();
            }
        }
        if brush {
            self.canvas.tool = Tool::Brush;
        }
        if eraser {
            self.canvas.tool = Tool::Eraser;
        }
        if smaller {
            self.canvas.resize_brush(false);
        }
        if larger {
            self.canvas.resize_brush(true);
        }
    }

    /// R shows the episode viewer; while it is open, `,` `.` Home End step through it.
    fn episode_keys(&mut self, ctx: &egui::Context) {
        if ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::R)) {
            self.toggle_episode();
        }
        if !self.episode().is_open() {
            return;
        }
        let (back, forward, first, last) = ctx.input_mut(|i| {
            (
                i.consume_key(Modifiers::NONE, Key::Comma),
                i.consume_key(Modifiers::NONE, Key::Period),
                i.consume_key(Modifiers::NONE, Key::Home),
                i.consume_key(Modifiers::NONE, Key::End),
            )
        });
        let v = self.episode_mut();
        if back {
            v.step_back();
        }
        if forward {
            v.step_forward();
        }
        if first {
            v.show_step(0);
        }
        if last {
            v.show_step(usize::MAX);
        }
    }

    /// The F1 overlay.
    pub(super) fn help_overlay(&mut self, ctx: &egui::Context) {
        if !self.show_help {
            return;
        }
        let mut open = true;
        egui::Window::new("Keyboard shortcuts")
            .open(&mut open)
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
                egui::Grid::new("shortcuts-grid")
                    .num_columns(2)
                    .striped(true)
                    .show(ui, |ui| {
                        for (keys, what) in SHORTCUTS {
                            ui.strong(*keys);
                            ui.label(*what);
                            ui.end_row();
                        }
                    });
            });
        if !open {
            self.show_help = false;
        }
    }
}
