//! GPU textures for images and masks of any size.
//!
//! A texture may not exceed 8192 px a side (often less), and uploading a 24-megapixel scan on
//! every change would stall the UI. So each layer keeps one downscaled preview texture (at most
//! [`TILE`] px a side) that is always drawn, plus full-resolution tiles of [`TILE`] px that
//! are uploaded lazily, a few per frame, only for the visible area and only when zoomed in far
//! enough for the preview to look soft. Edits update just the dirty rectangle of the preview
//! and of the tiles already on the GPU (`TextureHandle::set_partial`).

use std::collections::HashMap;

use egui::{Color32, ColorImage, TextureHandle, TextureOptions};

use crate::imaging::{ImageF32, Mask, Rect};

/// Side of a full-resolution tile, and the largest side of the preview texture.
pub const TILE: usize = 2048;

/// Full-resolution tiles kept on the GPU per layer at most (16 MiB of RGBA8 each).
const MAX_TILES: usize = 12;

/// Tiles uploaded per frame at most, so panning a huge scan stays fluid.
const UPLOADS_PER_FRAME: usize = 2;

/// Something that can be turned into RGBA pixels for a texture.
pub trait PixelSource {
    /// Width and height in pixels.
    fn size(&self) -> (usize, usize);
    /// The pixels of `rect` (in source pixels), box-averaged over `step` x `step` blocks.
    /// `rect` must start on a multiple of `step`.
    fn pixels(&self, rect: Rect, step: usize) -> ColorImage;
}

fn block_sizes(rect: Rect, step: usize) -> (usize, usize) {
    (rect.width.div_ceil(step), rect.height.div_ceil(step))
}

/// Colour image layer, optionally with a streamed patch shown over it (a running job's
/// preview) without copying the whole image.
pub struct ImageSource<'a> {
    /// The image.
    pub base: &'a ImageF32,
    /// A patch and its top-left corner, drawn instead of `base` where it lies.
    pub patch: Option<(&'a ImageF32, usize, usize)>,
}

impl<'a> ImageSource<'a> {
    /// The plain image.
    pub fn new(base: &'a ImageF32) -> Self {
        Self { base, patch: None }
    }

    fn sample(&self, x: usize, y: usize) -> &[f32] {
        if let Some((p, px, py)) = self.patch {
            if x >= px && y >= py && x < px + p.width() && y < py + p.height() {
                return p.pixel(x - px, y - py);
            }
        }
        self.base.pixel(x, y)
    }
}

impl PixelSource for ImageSource<'_> {
    fn size(&self) -> (usize, usize) {
        (self.base.width(), self.base.height())
    }

    fn pixels(&self, rect: Rect, step: usize) -> ColorImage {
        let (w, h) = block_sizes(rect, step);
        let c = self.base.channels();
        let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
        let mut out = Vec::with_capacity(w * h);
        for by in 0..h {
            for bx in 0..w {
                let (x0, y0) = (rect.x + bx * step, rect.y + by * step);
                let x1 = (x0 + step).min(rect.right());
                let y1 = (y0 + step).min(rect.bottom());
                let mut acc = [0.0f32; 4];
                for y in y0..y1 {
                    for x in x0..x1 {
                        let p = self.sample(x, y);
                        let rgba = match c {
                            1 => [p[0], p[0], p[0], 1.0],
                            2 => [p[0], p[0], p[0], p[1]],
                            3 => [p[0], p[1], p[2], 1.0],
                            _ => [p[0], p[1], p[2], p[3]],
                        };
                        for (a, v) in acc.iter_mut().zip(rgba) {
                            *a += v;
                        }
                    }
                }
                let n = ((x1 - x0) * (y1 - y0)).max(1) as f32;
                out.push(Color32::from_rgba_unmultiplied(
                    q(acc[0] / n),
                    q(acc[1] / n),
                    q(acc[2] / n),
                    q(acc[3] / n),
                ));
            }
        }
        ColorImage::new([w, h], out)
    }
}

/// Mask layer: hole pixels in `color` (its alpha sets the overlay's opacity), the rest clear.
pub struct MaskSource<'a>(pub &'a Mask, pub Color32);

impl PixelSource for MaskSource<'_> {
    fn size(&self) -> (usize, usize) {
        (self.0.width(), self.0.height())
    }

    fn pixels(&self, rect: Rect, step: usize) -> ColorImage {
        let (w, h) = block_sizes(rect, step);
        let mut out = Vec::with_capacity(w * h);
        for by in 0..h {
            for bx in 0..w {
                let (x0, y0) = (rect.x + bx * step, rect.y + by * step);
                let x1 = (x0 + step).min(rect.right());
                let y1 = (y0 + step).min(rect.bottom());
                let mut holes = 0usize;
                for y in y0..y1 {
                    for x in x0..x1 {
                        holes += usize::from(self.0.get(x, y));
                    }
                }
                // Partial coverage fades, so thin scratches stay visible when zoomed out.
                let n = ((x1 - x0) * (y1 - y0)).max(1);
                let cover = if holes == 0 {
                    0.0
                } else {
                    (holes as f32 / n as f32).max(0.5)
                };
                out.push(self.1.gamma_multiply(cover));
            }
        }
        ColorImage::new([w, h], out)
    }
}

struct Tile {
    handle: TextureHandle,
    last_used: u64,
}

/// One displayed layer (image, original or mask): a preview texture plus lazy tiles.
pub struct LayerTextures {
    name: String,
    size: (usize, usize),
    step: usize,
    preview: Option<TextureHandle>,
    tiles: HashMap<(usize, usize), Tile>,
    frame: u64,
}

fn preview_options() -> TextureOptions {
    TextureOptions {
        mipmap_mode: Some(egui::TextureFilter::Linear),
        ..TextureOptions::LINEAR
    }
}

fn tile_options() -> TextureOptions {
    // Nearest when magnified: at 400% the user must see real pixels to paint precisely.
    TextureOptions {
        magnification: egui::TextureFilter::Nearest,
        ..TextureOptions::LINEAR
    }
}

impl LayerTextures {
    /// Textures for a `width` x `height` layer; nothing is uploaded until drawn.
    pub fn new(name: &str, width: usize, height: usize) -> Self {
        let step = width.max(height).div_ceil(TILE).max(1);
        Self {
            name: name.to_owned(),
            size: (width, height),
            step,
            preview: None,
            tiles: HashMap::new(),
            frame: 0,
        }
    }

    /// Downscale factor of the preview (1 when the layer fits in one tile).
    pub fn step(&self) -> usize {
        self.step
    }

    /// Number of full-resolution tiles on the GPU.
    pub fn tiles_loaded(&self) -> usize {
        self.tiles.len()
    }

    fn tile_rect(&self, tx: usize, ty: usize) -> Rect {
        let (x, y) = (tx * TILE, ty * TILE);
        Rect {
            x,
            y,
            width: TILE.min(self.size.0 - x),
            height: TILE.min(self.size.1 - y),
        }
    }

    fn ensure_preview(&mut self, ctx: &egui::Context, src: &dyn PixelSource) -> TextureHandle {
        if let Some(p) = &self.preview {
            return p.clone();
        }
        let full = Rect {
            x: 0,
            y: 0,
            width: self.size.0,
            height: self.size.1,
        };
        let opts = if self.step == 1 {
            tile_options()
        } else {
            preview_options()
        };
        let handle = ctx.load_texture(
            format!("{}-preview", self.name),
            src.pixels(full, self.step),
            opts,
        );
        self.preview = Some(handle.clone());
        handle
    }

    /// Re-uploads the pixels of `rect` (source coordinates) to every texture already created.
    pub fn update(&mut self, src: &dyn PixelSource, rect: Rect) {
        let (w, h) = self.size;
        if rect.area() == 0 || rect.x >= w || rect.y >= h {
            return;
        }
        let step = self.step;
        // Snap to the preview's blocks so each preview pixel is recomputed from whole blocks.
        let x0 = rect.x / step * step;
        let y0 = rect.y / step * step;
        let x1 = rect.right().min(w).div_ceil(step) * step;
        let y1 = rect.bottom().min(h).div_ceil(step) * step;
        let snapped = Rect {
            x: x0,
            y: y0,
            width: x1.min(w) - x0,
            height: y1.min(h) - y0,
        };
        let opts = if step == 1 {
            tile_options()
        } else {
            preview_options()
        };
        if let Some(p) = &mut self.preview {
            p.set_partial([x0 / step, y0 / step], src.pixels(snapped, step), opts);
        }
        if step > 1 {
            let keys: Vec<(usize, usize)> = self.tiles.keys().copied().collect();
            for (tx, ty) in keys {
                let tr = self.tile_rect(tx, ty);
                if !tr.intersects(&rect) {
                    continue;
                }
                let ix = rect.x.max(tr.x);
                let iy = rect.y.max(tr.y);
                let inter = Rect {
                    x: ix,
                    y: iy,
                    width: rect.right().min(tr.right()) - ix,
                    height: rect.bottom().min(tr.bottom()) - iy,
                };
                if let Some(t) = self.tiles.get_mut(&(tx, ty)) {
                    t.handle.set_partial(
                        [inter.x - tr.x, inter.y - tr.y],
                        src.pixels(inter, 1),
                        tile_options(),
                    );
                }
            }
        }
    }

    /// Draws the layer. `image_rect` is where the whole layer lands on screen; `clip` limits
    /// drawing (the canvas, or one side of the compare divider); `pixels_per_image_pixel` is the
    /// zoom in physical pixels, which decides whether full-resolution tiles are needed.
    pub fn paint(
        &mut self,
        ctx: &egui::Context,
        painter: &egui::Painter,
        src: &dyn PixelSource,
        image_rect: egui::Rect,
        clip: egui::Rect,
        pixels_per_image_pixel: f32,
    ) {
        self.frame += 1;
        let painter = painter.with_clip_rect(clip.intersect(painter.clip_rect()));
        let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
        let preview = self.ensure_preview(ctx, src);
        painter.image(preview.id(), image_rect, uv, Color32::WHITE);
        // The preview is sharp enough while one of its texels covers at least one screen pixel.
        if self.step == 1 || pixels_per_image_pixel * self.step as f32 <= 1.0 {
            return;
        }
        let (w, h) = (self.size.0 as f32, self.size.1 as f32);
        let scale = image_rect.width() / w.max(1.0);
        let visible = painter.clip_rect().intersect(image_rect);
        if !visible.is_positive() {
            return;
        }
        let to_img = |p: egui::Pos2| ((p - image_rect.min) / scale).to_pos2();
        let (a, b) = (to_img(visible.min), to_img(visible.max));
        let tx0 = (a.x.max(0.0) as usize) / TILE;
        let ty0 = (a.y.max(0.0) as usize) / TILE;
        let tx1 = (b.x.min(w - 1.0).max(0.0) as usize) / TILE;
        let ty1 = (b.y.min(h - 1.0).max(0.0) as usize) / TILE;
        let mut uploads = 0;
        let mut missing = false;
        for ty in ty0..=ty1 {
            for tx in tx0..=tx1 {
                let tr = self.tile_rect(tx, ty);
                if !self.tiles.contains_key(&(tx, ty)) {
                    if uploads >= UPLOADS_PER_FRAME {
                        missing = true;
                        continue;
                    }
                    uploads += 1;
                    let handle = ctx.load_texture(
                        format!("{}-tile-{tx}-{ty}", self.name),
                        src.pixels(tr, 1),
                        tile_options(),
                    );
                    self.tiles.insert(
                        (tx, ty),
                        Tile {
                            handle,
                            last_used: 0,
                        },
                    );
                }
                if let Some(t) = self.tiles.get_mut(&(tx, ty)) {
                    t.last_used = self.frame;
                    let screen = egui::Rect::from_min_size(
                        image_rect.min + egui::vec2(tr.x as f32, tr.y as f32) * scale,
                        egui::vec2(tr.width as f32, tr.height as f32) * scale,
                    );
                    painter.image(t.handle.id(), screen, uv, Color32::WHITE);
                }
            }
        }
        if missing {
            ctx.request_repaint();
        }
        self.evict();
    }

    /// Frees the least recently drawn tiles beyond [`MAX_TILES`].
    fn evict(&mut self) {
        while self.tiles.len() > MAX_TILES {
            let oldest = self
                .tiles
                .iter()
                .min_by_key(|(_, t)| t.last_used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.tiles.remove(&k);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_of_a_big_layer_fits_a_texture() {
        let layers = LayerTextures::new("t", 20_000, 9_000);
        assert_eq!(layers.step(), 10);
        let img = ImageF32::from_fn(10, 4, 3, |x, _, _| x as f32 / 9.0);
        let out = ImageSource::new(&img).pixels(
            Rect {
                x: 0,
                y: 0,
                width: 10,
                height: 4,
            },
            3,
        );
        assert_eq!(out.size, [4, 2]);
    }
}
