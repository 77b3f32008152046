//! Automatic damage detection: a per-pixel probability of dust, scratches, hairs and small
//! stains, turned into a suggested mask the user can accept or edit.
//!
//! - [`Detector`]: one method that maps an image tile to probabilities; two implementations,
//!   [`classical::Classical`] (morphological top-hat / black-hat plus oriented line filters, no
//!   weights) and [`learned::Learned`] (a tiny U-Net on our fast convolutions, trained by
//!   `kintsugi train detect`).
//! - [`detect`]: runs a detector over a full-resolution scan in overlapping tiles (in parallel,
//!   with progress and cancellation through a [`Reporter`]), so cost is linear in the image size
//!   and memory stays bounded by the tile size. Tiles are aligned and their halo covers the
//!   detector's receptive field, so the tiled result equals a single pass.
//! - [`ProbMap::mask`]: the sensitivity control (probability threshold) and a dilation so the
//!   proposal covers the soft edges of the damage.
//! - [`load_detector`]: the learned detector when its weights load, else the classical one with
//!   a notice saying why.

pub mod classical;
pub mod learned;
pub mod metrics;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::Reporter;

/// Why a detection did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The reporter asked to stop; not a failure.
    #[error("cancelled")]
    Cancelled,
    /// The image cannot be processed as given.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The learned detector's weights or manifest are missing, unreadable or do not fit.
    #[error("detector weights {path}: {reason}")]
    Weights {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Default sensitivity: a pixel is proposed when its probability is at least `1 - 0.5`.
pub const DEFAULT_SENSITIVITY: f32 = 0.5;

/// Default dilation (pixels) of the proposal, so it covers the soft edges of the damage.
pub const DEFAULT_DILATION: usize = 2;

/// A damage detector: maps an image tile to a per-pixel damage probability.
pub trait Detector: Send + Sync {
    /// Stable id (`classical`, `detect-damage`).
    fn id(&self) -> &'static str;

    /// Context (pixels) the detector needs on every side of a tile for its output there to be
    /// exact: at least its receptive-field radius, and a multiple of [`Detector::align`].
    fn halo(&self) -> usize;

    /// Tile origins must be multiples of this (the learned net downsamples by 4).
    fn align(&self) -> usize {
        1
    }

    /// The probabilities in `[0, 1]` of every pixel of `tile` (row-major, one per pixel).
    fn probabilities(&self, tile: &ImageF32) -> Result<Vec<f32>, DetectError>;
}

/// Per-pixel damage probabilities quantised to 8 bits (a 24 MP scan takes 24 MB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbMap {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl ProbMap {
    /// An all-zero map.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height],
        }
    }

    /// A map from probabilities in `[0, 1]`; `None` when the length does not match.
    pub fn from_f32(width: usize, height: usize, p: &[f32]) -> Option<Self> {
        (p.len() == width * height).then(|| Self {
            width,
            height,
            data: p.iter().map(|&v| quantise(v)).collect(),
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Row-major probabilities, `0..=255` for `0..=1`.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Probability of `(x, y)` in `[0, 1]`.
    pub fn get(&self, x: usize, y: usize) -> f32 {
        f32::from(self.data[y * self.width + x]) / 255.0
    }

    /// The thresholded proposal without dilation: pixels with probability `>= 1 - sensitivity`.
    pub fn threshold(&self, sensitivity: f32) -> Mask {
        let level = threshold_level(sensitivity);
        Mask::from_vec(
            self.width,
            self.height,
            self.data.iter().map(|&p| p >= level).collect(),
        )
        .unwrap_or_else(|| Mask::new(self.width, self.height))
    }

    /// The proposal: pixels with probability `>= 1 - sensitivity`, grown by `dilation` pixels
    /// (a disc-like octagon would cost more for no visible gain; the square element is what
    /// [`Mask::dilate`] does).
    pub fn mask(&self, sensitivity: f32, dilation: usize) -> Mask {
        self.threshold(sensitivity).dilate(dilation)
    }

    /// Writes `tile`, the probabilities of the rectangle `dst`, into the map.
    fn paste(&mut self, tile: &[u8], dst: Rect) {
        for y in dst.y..dst.bottom() {
            let s = (y - dst.y) * dst.width;
            let d = y * self.width + dst.x;
            self.data[d..d + dst.width].copy_from_slice(&tile[s..s + dst.width]);
        }
    }

    /// The map as a grey image (white = certain damage), for saving and display.
    pub fn to_image(&self) -> ImageF32 {
        ImageF32::from_vec(
            self.width,
            self.height,
            1,
            self.data.iter().map(|&v| f32::from(v) / 255.0).collect(),
        )
        .unwrap_or_else(|| ImageF32::new(self.width, self.height, 1))
    }
}

/// `p` in `[0, 1]` as `0..=255` (NaN counts as 0).
fn quantise(p: f32) -> u8 {
    if p.is_nan() {
        0
    } else {
        (p.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// The smallest 8-bit probability proposed at `sensitivity` (clamped to `[0, 1]`; NaN means the
/// default): `round((1 - s) * 255)`, at least 1 so that a zero probability is never proposed.
/// At sensitivity 0 only certain pixels (255) pass.
pub fn threshold_level(sensitivity: f32) -> u8 {
    let s = if sensitivity.is_nan() {
        DEFAULT_SENSITIVITY
    } else {
        sensitivity.clamp(0.0, 1.0)
    };
    ((1.0 - s) * 255.0).round().clamp(1.0, 255.0) as u8
}

/// How [`detect`] cuts the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileOptions {
    /// Side of the output part of a tile (rounded up to the detector's alignment).
    pub tile: usize,
}

impl Default for TileOptions {
    fn default() -> Self {
        Self { tile: 1024 }
    }
}

/// The output rectangles of the tiles of a `width` x `height` image.
pub fn tile_grid(width: usize, height: usize, tile: usize) -> Vec<Rect> {
    let tile = tile.max(1);
    let mut out = Vec::new();
    for y in (0..height).step_by(tile) {
        for x in (0..width).step_by(tile) {
            out.push(Rect {
                x,
                y,
                width: tile.min(width - x),
                height: tile.min(height - y),
            });
        }
    }
    out
}

/// Runs `det` over `image` in tiles of `opts.tile` pixels plus the detector's halo, in parallel,
/// reporting one progress step per tile and stopping at the next tile once cancelled.
pub fn detect(
    det: &dyn Detector,
    image: &ImageF32,
    opts: TileOptions,
    rep: &dyn Reporter,
) -> Result<ProbMap, DetectError> {
    let (w, h) = (image.width(), image.height());
    if w == 0 || h == 0 || image.channels() == 0 {
        return Err(DetectError::InvalidInput("the image is empty".into()));
    }
    let align = det.align().max(1);
    let halo = det.halo().div_ceil(align) * align;
    let tile = opts.tile.max(align).div_ceil(align) * align;
    let grid = tile_grid(w, h, tile);
    let total = grid.len() as u64;
    let done = AtomicU64::new(0);
    rep.progress(0, total, "detecting damage");
    let results: Vec<(Rect, Vec<u8>)> = grid
        .par_iter()
        .map(|&core| {
            if rep.is_cancelled() {
                return Err(DetectError::Cancelled);
            }
            let src = core.expand(halo, w, h);
            let crop = image.crop(src);
            let p = det.probabilities(&crop)?;
            if p.len() != src.area() {
                return Err(DetectError::InvalidInput(format!(
                    "detector {} returned {} values for a {}x{} tile",
                    det.id(),
                    p.len(),
                    src.width,
                    src.height
                )));
            }
            // Keep only the core; the halo is context.
            let mut out = Vec::with_capacity(core.area());
            for y in core.y..core.bottom() {
                let row = (y - src.y) * src.width;
                out.extend(
                    p[row + core.x - src.x..row + core.right() - src.x]
                        .iter()
                        .map(|&v| quantise(v)),
                );
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            rep.progress(n, total, "detecting damage");
            Ok((core, out))
        })
        .collect::<Result<_, _>>()?;
    let mut map = ProbMap::new(w, h);
    for (core, data) in results {
        map.paste(&data, core);
    }
    Ok(map)
}

/// The detector to use: the learned one from `weights_dir/detect-damage.*` when it loads,
/// otherwise the classical one, with a notice that says why (for the CLI and the studio).
pub fn load_detector(weights_dir: &Path) -> (Arc<dyn Detector>, Option<String>) {
    match learned::Learned::load(weights_dir, learned::MODEL_ID) {
        Ok(l) => (Arc::new(l), None),
        Err(e) => (
            Arc::new(classical::Classical::default()),
            Some(format!(
                "learned detector unavailable ({e}); using the classical detector"
            )),
        ),
    }
}

/// A detector by name: `auto` (learned when available), `learned` (error when its weights are
/// unusable) or `classical`.
pub fn detector_by_name(
    name: &str,
    weights_dir: &Path,
) -> Result<(Arc<dyn Detector>, Option<String>), DetectError> {
    match name {
        "auto" => Ok(load_detector(weights_dir)),
        "classical" => Ok((Arc::new(classical::Classical::default()), None)),
        "learned" | learned::MODEL_ID => Ok((
            Arc::new(learned::Learned::load(weights_dir, learned::MODEL_ID)?),
            None,
        )),
        other => Err(DetectError::InvalidInput(format!(
            "unknown detector '{other}' (auto, learned or classical)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_levels_cover_the_range() {
        assert_eq!(threshold_level(0.0), 255);
        assert_eq!(threshold_level(1.0), 1);
        assert_eq!(threshold_level(0.5), 128);
        let p = ProbMap::from_f32(3, 1, &[0.0, 0.5, 1.0]).unwrap_or_else(|| ProbMap::new(3, 1));
        assert_eq!(p.threshold(0.5).count(), 2);
        assert_eq!(p.threshold(1.0).count(), 2);
        assert_eq!(p.threshold(0.0).count(), 1);
    }

    #[test]
    fn grid_covers_every_pixel_once() {
        let g = tile_grid(130, 70, 64);
        assert_eq!(g.len(), 3 * 2);
        assert_eq!(g.iter().map(Rect::area).sum::<usize>(), 130 * 70);
    }
}
