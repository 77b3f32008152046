//! The classical damage detector: no weights, the fallback and the baseline to beat.
//!
//! On the luminance `Y` of a tile:
//! 1. residue `R = max(Y - open(Y), close(Y) - Y)` with a square structuring element of side
//!    `2 * radius + 1` (white top-hat for bright specks, black-hat for dark ones): what is
//!    thinner than the element and stands out of its surroundings; step edges leave nothing;
//! 2. texture level `T`: the mean of `R` over a `(2 * texture_radius + 1)^2` window, so that a
//!    speck on a flat sky scores high and the same residue in foliage scores low;
//! 3. line response `L`: the largest mean of `R` along a segment of `2 * line_radius + 1`
//!    pixels at eight orientations (oriented line filters), which finds faint scratches and hairs
//!    whose residue alone is too weak;
//! 4. score `S = max((R - floor) / (base + k T), line_gain (L - floor / 2) / (base + k T))` and
//!    probability `sigmoid(slope (S - s0))`.
//!
//! Every step is a separable or fixed-size window, so the cost is a constant per pixel, and the
//! halo ([`Classical::halo`]) covers the whole chain: tiled results equal a single pass.

use super::{DetectError, Detector};
use crate::imaging::ImageF32;

/// Settings of the classical detector (defaults chosen on synthetic damage of the training
/// photos; see the README's detection section).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassicalParams {
    /// Half side of the square structuring element.
    pub radius: usize,
    /// Half side of the texture window.
    pub texture_radius: usize,
    /// Half length of the oriented line filters.
    pub line_radius: usize,
    /// Residue that counts as nothing (the grain level).
    pub floor: f32,
    /// Denominator floor.
    pub base: f32,
    /// Weight of the texture level in the denominator.
    pub texture_weight: f32,
    /// Weight of the line response against the point response.
    pub line_gain: f32,
    /// Score at probability 0.5.
    pub s0: f32,
    /// Steepness of the probability curve.
    pub slope: f32,
}

impl Default for ClassicalParams {
    fn default() -> Self {
        Self {
            radius: 3,
            texture_radius: 10,
            line_radius: 6,
            floor: 0.03,
            base: 0.02,
            texture_weight: 2.5,
            line_gain: 1.5,
            s0: 2.1,
            slope: 2.0,
        }
    }
}

/// The classical detector.
#[derive(Clone, Copy, Debug, Default)]
pub struct Classical {
    /// Its settings.
    pub params: ClassicalParams,
}

impl Classical {
    /// A detector with `params`.
    pub fn new(params: ClassicalParams) -> Self {
        Self { params }
    }
}

/// Luminance of an interleaved tile (grey images use their one sample).
pub fn luminance(tile: &ImageF32) -> Vec<f32> {
    let ch = tile.channels();
    tile.data()
        .chunks_exact(ch.max(1))
        .map(|px| {
            if ch >= 3 {
                0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]
            } else {
                px[0]
            }
        })
        .collect()
}

/// Running min or max over a window of `2r + 1` along rows (`horizontal`) or columns, with the
/// window clipped at the borders.
fn extremum(src: &[f32], w: usize, h: usize, r: usize, max: bool, horizontal: bool) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    let pick = |a: f32, b: f32| if max { a.max(b) } else { a.min(b) };
    if horizontal {
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for x in 0..w {
                let lo = x.saturating_sub(r);
                let hi = (x + r).min(w - 1);
                out[y * w + x] = row[lo..=hi].iter().copied().reduce(pick).unwrap_or(row[x]);
            }
        }
    } else {
        for y in 0..h {
            let lo = y.saturating_sub(r);
            let hi = (y + r).min(h - 1);
            let dst = &mut out[y * w..(y + 1) * w];
            dst.copy_from_slice(&src[lo * w..(lo + 1) * w]);
            for yy in lo + 1..=hi {
                for (d, &s) in dst.iter_mut().zip(&src[yy * w..(yy + 1) * w]) {
                    *d = pick(*d, s);
                }
            }
        }
    }
    out
}

/// Square min (`max == false`) or max filter of half side `r`.
fn square(src: &[f32], w: usize, h: usize, r: usize, max: bool) -> Vec<f32> {
    let t = extremum(src, w, h, r, max, true);
    extremum(&t, w, h, r, max, false)
}

/// White and black top-hat residues of the luminance `y` of a `w x h` tile, with a square
/// structuring element of half side `r`: `y - open(y)` (what is brighter than its surroundings
/// and thinner than the element) and `close(y) - y` (the same for darker), both at least 0.
/// Each output pixel depends on the input within `2r` pixels (Chebyshev distance).
pub(crate) fn top_hats(y: &[f32], w: usize, h: usize, r: usize) -> (Vec<f32>, Vec<f32>) {
    let opened = square(&square(y, w, h, r, false), w, h, r, true);
    let closed = square(&square(y, w, h, r, true), w, h, r, false);
    let white = y
        .iter()
        .zip(&opened)
        .map(|(&v, &o)| (v - o).max(0.0))
        .collect();
    let black = y
        .iter()
        .zip(&closed)
        .map(|(&v, &c)| (c - v).max(0.0))
        .collect();
    (white, black)
}

/// Mean over a square window of half side `r`, clipped at the borders (summed-area table).
pub(crate) fn box_mean(src: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut sat = vec![0f64; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut run = 0f64;
        for x in 0..w {
            run += f64::from(src[y * w + x]);
            sat[(y + 1) * (w + 1) + x + 1] = sat[y * (w + 1) + x + 1] + run;
        }
    }
    let mut out = vec![0f32; src.len()];
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(w));
            let s = sat[y1 * (w + 1) + x1] - sat[y0 * (w + 1) + x1] - sat[y1 * (w + 1) + x0]
                + sat[y0 * (w + 1) + x0];
            out[y * w + x] = (s / ((y1 - y0) * (x1 - x0)) as f64) as f32;
        }
    }
    out
}

/// The largest mean of `src` along segments of `2r + 1` pixels at eight orientations (pixels
/// outside the tile are skipped).
fn line_response(src: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    let r = r as isize;
    let (wi, hi) = (w as isize, h as isize);
    for k in 0..8 {
        let theta = std::f32::consts::PI * k as f32 / 8.0;
        let (s, c) = theta.sin_cos();
        let offsets: Vec<(isize, isize)> = (-r..=r)
            .map(|t| {
                (
                    (t as f32 * c).round() as isize,
                    (t as f32 * s).round() as isize,
                )
            })
            .collect();
        let n = offsets.len() as f32;
        for y in 0..hi {
            let interior_y = offsets.iter().all(|&(_, dy)| (0..hi).contains(&(y + dy)));
            for x in 0..wi {
                let mut sum = 0f32;
                if interior_y && x >= r && x < wi - r {
                    for &(dx, dy) in &offsets {
                        sum += src[((y + dy) * wi + x + dx) as usize];
                    }
                } else {
                    for &(dx, dy) in &offsets {
                        let (xx, yy) = (x + dx, y + dy);
                        if (0..wi).contains(&xx) && (0..hi).contains(&yy) {
                            sum += src[(yy * wi + xx) as usize];
                        }
                    }
                }
                let o = &mut out[(y * wi + x) as usize];
                *o = o.max(sum / n);
            }
        }
    }
    out
}

impl Detector for Classical {
    fn id(&self) -> &'static str {
        "classical"
    }

    fn halo(&self) -> usize {
        let p = &self.params;
        2 * p.radius + p.texture_radius.max(p.line_radius) + 2
    }

    fn probabilities(&self, tile: &ImageF32) -> Result<Vec<f32>, DetectError> {
        let (w, h) = (tile.width(), tile.height());
        if w == 0 || h == 0 || tile.channels() == 0 {
            return Err(DetectError::InvalidInput("empty tile".into()));
        }
        let p = &self.params;
        let (white, black) = top_hats(&luminance(tile), w, h, p.radius);
        let residue: Vec<f32> = white.iter().zip(&black).map(|(&a, &b)| a.max(b)).collect();
        let texture = box_mean(&residue, w, h, p.texture_radius);
        let line = line_response(&residue, w, h, p.line_radius);
        Ok(residue
            .iter()
            .zip(texture.iter().zip(&line))
            .map(|(&r, (&t, &l))| {
                let d = p.base + p.texture_weight * t;
                let point = (r - p.floor) / d;
                let lin = p.line_gain * (l - 0.5 * p.floor) / d;
                let s = point.max(lin);
                1.0 / (1.0 + (-p.slope * (s - p.s0)).exp())
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speck_on_flat_grey_scores_high_and_flat_scores_low() {
        let img = ImageF32::from_fn(40, 40, 3, |x, y, _| {
            if (19..21).contains(&x) && (19..21).contains(&y) {
                0.95
            } else {
                0.4
            }
        });
        let p = Classical::default()
            .probabilities(&img)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p[20 * 40 + 20] > 0.9, "speck {}", p[20 * 40 + 20]);
        assert!(p[5 * 40 + 5] < 0.01, "flat {}", p[5 * 40 + 5]);
    }
}
