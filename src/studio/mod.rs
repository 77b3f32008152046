//! The studio: the egui face of Kintsugi.
//!
//! - [`app`]: the application state, the worker connection and the frame loop
//! - [`document`]: image, mask and undo history (tile diffs)
//! - [`canvas`]: zoom, pan, tiled drawing, mask overlay, brush, compare
//! - [`panels`]: tools, model picker, parameters, progress, status bar
//! - [`textures`]: preview textures and lazy full-resolution tiles with partial updates
//! - [`shortcuts`]: keyboard shortcuts and the F1 overlay
//! - [`detect`]: "Detect damage": a background detection shown as a proposal layer, with live
//!   sensitivity and dilation sliders, accepted into the mask as one undo step
//! - [`latent`]: the latent explorer window (samples, PCA sliders, interpolation, encode),
//!   driving a [`latent_model::LatentModel`] on its own worker ([`latent_worker`])
//! - [`gan_train`]: the live GAN training view (loss curves and a fixed-seed sample grid as it
//!   learns), training on its own worker ([`gan_train_worker`])
//! - [`episode`]: the RL episode viewer (R): an episode of `rl-denoise` or `rl-refine(-cgan)` run
//!   on the worker, stepped through with an action overlay, its legend and the reward per step
//!   (its window is drawn by `episode_ui`)
//! - [`demo`]: the built-in damaged photo shown on a first launch
//!
//! The studio contains no restoration logic: every repair is a job for the
//! [`crate::engine::Engine`], whose events are drained once per frame.

pub mod app;
pub mod canvas;
pub mod demo;
pub mod detect;
pub mod document;
pub mod episode;
mod episode_ui;
pub mod gan_train;
pub mod gan_train_worker;
pub mod latent;
pub mod latent_model;
pub mod latent_worker;
pub mod panel_worker;
mod panels;
pub mod shortcuts;
pub mod textures;

use std::path::PathBuf;

use eframe::egui;

pub use app::{default_save_name, JobTimings, StudioApp};
pub use document::Document;

use crate::engine::EngineConfig;
use crate::imaging::load_image;

impl eframe::App for StudioApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.check_close_request(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        StudioApp::ui(self, ui);
    }
}

/// Opens the studio window (on `image`, or on the built-in demo) and blocks until it closes.
pub fn run(image: Option<PathBuf>) -> anyhow::Result<()> {
    // Load before the window opens, so a bad path is reported on the terminal as well.
    let initial = match image {
        Some(p) => {
            let loaded = load_image(&p)?;
            Some((loaded.pixels, loaded.depth, Some(p)))
        }
        None => None,
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Kintsugi")
            .with_inner_size([1280.0, 820.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "Kintsugi",
        options,
        Box::new(move |cc| {
            let mut config = EngineConfig::leave_one_core();
            let ctx = cc.egui_ctx.clone();
            config.notify = Some(std::sync::Arc::new(move || ctx.request_repaint()));
            Ok(Box::new(StudioApp::new(initial, config)))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the studio window: {e}"))
}
