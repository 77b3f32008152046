//! The studio: the egui face of Kintsugi.
//!
//! For now a plain window that shows the image it was opened on; the full editing studio
//! (canvas, mask painting, model picker, streaming results) builds on the same engine.

use std::path::PathBuf;

use eframe::egui;

use crate::imaging::{load_image, ImageF32};

/// Largest texture side we upload; bigger images are shown downscaled.
const MAX_TEXTURE_SIDE: usize = 4096;

struct StudioApp {
    path: Option<PathBuf>,
    image: Option<ImageF32>,
    error: Option<String>,
    texture: Option<egui::TextureHandle>,
}

impl StudioApp {
    fn new(path: Option<PathBuf>) -> Self {
        let (image, error) = match &path {
            Some(p) => match load_image(p) {
                Ok(l) => (Some(l.pixels), None),
                Err(e) => (None, Some(e.to_string())),
            },
            None => (None, None),
        };
        Self {
            path,
            image,
            error,
            texture: None,
        }
    }
}

/// Converts an image to an egui colour image, downscaling by an integer step so that neither
/// side exceeds `max_side`.
pub fn to_color_image(img: &ImageF32, max_side: usize) -> egui::ColorImage {
    let step = img.width().max(img.height()).div_ceil(max_side.max(1)).max(1);
    let (w, h) = (img.width().div_ceil(step), img.height().div_ceil(step));
    let c = img.channels();
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut rgba = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            let p = img.pixel(x * step, y * step);
            let (r, g, b, a) = match c {
                1 => (p[0], p[0], p[0], 1.0),
                2 => (p[0], p[0], p[0], p[1]),
                3 => (p[0], p[1], p[2], 1.0),
                _ => (p[0], p[1], p[2], p[3]),
            };
            rgba.extend_from_slice(&[q(r), q(g), q(b), q(a)]);
        }
    }
    egui::ColorImage::from_rgba_unmultiplied([w, h], &rgba)
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        if self.texture.is_none() {
            if let Some(img) = &self.image {
                self.texture = Some(ctx.load_texture(
                    "image",
                    to_color_image(img, MAX_TEXTURE_SIDE),
                    egui::TextureOptions::LINEAR,
                ));
            }
        }
        egui::Panel::bottom("status").show(ui, |ui| {
            let text = match (&self.path, &self.image) {
                (Some(p), Some(img)) => format!(
                    "{}  {}x{}  {} channel(s)",
                    p.display(),
                    img.width(),
                    img.height(),
                    img.channels()
                ),
                _ => "No image. Start with `kintsugi PATH`, or use `kintsugi inpaint --help`."
                    .to_owned(),
            };
            ui.label(text);
        });
        egui::CentralPanel::default().show(ui, |ui| {
            if let Some(err) = &self.error {
                ui.colored_label(egui::Color32::RED, err);
            }
            match &self.texture {
                Some(tex) => {
                    ui.add(egui::Image::new(tex).shrink_to_fit());
                }
                None => {
                    ui.heading("Kintsugi");
                    ui.label("Image restoration for scanned photographs.");
                }
            }
        });
    }
}

/// Opens the studio window (optionally on `image`) and blocks until it closes.
pub fn run(image: Option<PathBuf>) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Kintsugi")
            .with_inner_size([1200.0, 800.0]),
        ..Default::default()
    };
    eframe::run_native(
        "Kintsugi",
        options,
        Box::new(move |_cc| Ok(Box::new(StudioApp::new(image)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the studio window: {e}"))
}
