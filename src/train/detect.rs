//! Training of the learned damage detector ([`crate::detect::learned`]): random crops of clean
//! photos with realistic damage composited by [`super::damage_synth`] (real film-damage
//! artifacts, hairs, scratches, specks), then varied in opacity, colour and blur, and the whole
//! crop in tone (grey, sepia, gamma) and grain, so the network learns what damage looks like
//! on old prints and that grain and texture are not damage.
//!
//! Loss: weighted binary cross-entropy on the logits plus a soft Dice term (the damage is a few
//! percent of the pixels; Dice keeps the thin structures from being drowned by the background).
//! Checkpoints (weights, optimiser moments, step, time) go to the runs folder every
//! `sample_every` steps and at the end, so a run can be resumed exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::cgan::{with_ext, CropSource};
use super::damage_synth::{synthesize_traced, ArtifactBank, DamageConfig, DamageSource};
use super::{io_err, mix, read_json, save_tensors, write_json, AdamW, TrainError, TrainResult};
use crate::detect::learned::{architecture, fold, fold_mask, DetectNetConfig, Learned, LoadedNet};
use crate::detect::metrics::{Counts, Sweep};
use crate::detect::{detect, ProbMap, TileOptions};
use crate::imaging::{ImageF32, Mask};
use crate::restore::NullReporter;

fn det_err(e: crate::detect::DetectError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// The damage mix for detection: what the issue asks to find (dust, scratches, hairs, small
/// stains, real artifacts), with few wide brush strokes (those are holes to fill, not damage a
/// scan shows), a low coverage cap, and real artifacts at the size they have on a scan (16 to
/// 96 px on their longer side, log-uniform; the film-damage triplets' damage covers 0.15 to
/// 0.45% of a scan, not the tens of percent a crop-sized cut-out would).
pub fn detection_damage() -> DamageConfig {
    DamageConfig {
        brush: 0.03,
        scratches: 0.35,
        hairs: 0.45,
        dust: 0.6,
        artifacts: 0.75,
        max_coverage: 0.08,
        artifact_px: Some((16.0, 96.0)),
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(1e-7..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Box blur of an interleaved RGB buffer with radius `r` (clamped edges).
fn box_blur(data: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut tmp = vec![0f32; data.len()];
    let n = (2 * r + 1) as f32;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0.0;
                for dx in 0..=2 * r {
                    let xx = (x + dx).saturating_sub(r).min(w - 1);
                    s += data[(y * w + xx) * 3 + c];
                }
                tmp[(y * w + x) * 3 + c] = s / n;
            }
        }
    }
    let mut out = vec![0f32; data.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0.0;
                for dy in 0..=2 * r {
                    let yy = (y + dy).saturating_sub(r).min(h - 1);
                    s += tmp[(yy * w + x) * 3 + c];
                }
                out[(y * w + x) * 3 + c] = s / n;
            }
        }
    }
    out
}

/// Moves pixel `p` of `diff` (the damage as a difference to `clean`) the share `strength *
/// cover` of the way from the clean colour to `target` (1 = white, 0 = black), unless other
/// damage already changed it more in that channel.
fn stamp(diff: &mut [f32], clean: &ImageF32, p: usize, target: f32, strength: f32, cover: f32) {
    let px = p * 3..p * 3 + 3;
    for (v, &c) in diff[px.clone()].iter_mut().zip(&clean.data()[px]) {
        let d = (target - c) * strength * cover;
        if v.abs() < d.abs() {
            *v = d;
        }
    }
}

/// Share of damaged crops that get film scratches.
pub const FILM_SCRATCH_RATE: f64 = 0.3;

/// Adds to `diff` (the damage as a difference to `clean`, interleaved RGB) the faint, long,
/// nearly straight scratches a film transport leaves (the real film-damage scans are full of
/// them, and the brushed-on scratches of [`synthesize`] are bold): on [`FILM_SCRATCH_RATE`] of
/// the crops, 1 to 3 lines, mostly vertical, 1 to 2.5 px wide with soft edges, drifting slowly,
/// that lighten or darken the photo by 4 to 25% of the way to white or black.
fn film_scratches(diff: &mut [f32], clean: &ImageF32, seed: u64) {
    let (w, h) = (clean.width(), clean.height());
    let mut rng = StdRng::seed_from_u64(seed);
    if w == 0 || h == 0 || !rng.random_bool(FILM_SCRATCH_RATE) {
        return;
    }
    for _ in 0..rng.random_range(1..=3) {
        let vertical = rng.random_bool(0.8);
        let (along, across) = if vertical { (h, w) } else { (w, h) };
        let mut pos = rng.random_range(0.0..across as f32);
        let mut slope: f32 = rng.random_range(-0.03..0.03);
        let half = rng.random_range(0.5..1.25f32);
        let strength = rng.random_range(0.04..0.25f32);
        let target = if rng.random_bool(0.5) { 1.0 } else { 0.0 };
        // Some scratches break off: a random stretch of the crop.
        let (a0, a1) = if rng.random_bool(0.7) || along < 8 {
            (0, along)
        } else {
            let a0 = rng.random_range(0..along / 2);
            (a0, rng.random_range(a0 + along / 4..=along))
        };
        for t in a0..a1 {
            slope = (slope + rng.random_range(-0.004..0.004)).clamp(-0.06, 0.06);
            pos += slope;
            let lo = (pos - half - 1.0).floor().max(0.0) as usize;
            let hi = ((pos + half + 1.0).ceil() as usize).min(across.saturating_sub(1));
            for c in lo..=hi {
                let cover = (half + 0.5 - (c as f32 - pos).abs()).clamp(0.0, 1.0);
                if cover <= 0.0 {
                    continue;
                }
                let (x, y) = if vertical { (c, t) } else { (t, c) };
                stamp(diff, clean, y * w + x, target, strength, cover);
            }
        }
    }
}

/// Adds to `diff` the short straight streaks that dust and grit dragged through a film gate leave
/// on a scan (the real film-damage triplets are dotted with them, and [`film_scratches`] draws
/// long lines only): with probability `rate`, 3 to 14 dashes 6 to 40 px long and 1 to 2 px wide,
/// all along the film's transport direction (horizontal or vertical per crop, within a few
/// degrees), that lighten (three in four) or darken the photo by 10 to 50% of the way to white or
/// black. A training-only addition (`--dashes`): the held-out set does not draw them.
fn film_dashes(diff: &mut [f32], clean: &ImageF32, seed: u64, rate: f64) {
    let (w, h) = (clean.width(), clean.height());
    let mut rng = StdRng::seed_from_u64(seed);
    if w < 8 || h < 8 || rate <= 0.0 || !rng.random_bool(rate.min(1.0)) {
        return;
    }
    let vertical = rng.random_bool(0.5);
    for _ in 0..rng.random_range(3..=14) {
        let angle = rng.random_range(-0.05..0.05f32)
            + if vertical {
                std::f32::consts::FRAC_PI_2
            } else {
                0.0
            };
        let (dx, dy) = (angle.cos(), angle.sin());
        let len = rng.random_range(6.0..40.0f32);
        let half = rng.random_range(0.4..1.0f32);
        let strength = rng.random_range(0.1..0.5f32);
        let target = if rng.random_bool(0.75) { 1.0 } else { 0.0 };
        let (cx, cy) = (
            rng.random_range(0.0..w as f32),
            rng.random_range(0.0..h as f32),
        );
        let reach = len / 2.0 + half + 1.0;
        let x0 = (cx - reach).floor().max(0.0) as usize;
        let x1 = ((cx + reach).ceil() as usize).min(w - 1);
        let y0 = (cy - reach).floor().max(0.0) as usize;
        let y1 = ((cy + reach).ceil() as usize).min(h - 1);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (px, py) = (x as f32 - cx, y as f32 - cy);
                let along = px * dx + py * dy;
                let across = (py * dx - px * dy).abs();
                // Soft across the dash and at its two ends.
                let cover = (half + 0.5 - across).clamp(0.0, 1.0)
                    * (len / 2.0 + 0.5 - along.abs()).clamp(0.0, 1.0);
                if cover <= 0.0 {
                    continue;
                }
                stamp(diff, clean, y * w + x, target, strength, cover);
            }
        }
    }
}

/// Adds to `diff` the network of cracks an old print's emulsion breaks into (the old photos are
/// crossed by them, bright where the paper shows through, and none of the other damage draws
/// them): with probability `rate`, 1 to 3 crack trees that wander from a random point with small
/// turns and frequent kinks, 30 px to one and a half crop sides long, 0.8 to 2.6 px wide, and
/// branch off thinner, shorter cracks at sharp angles; mostly lighter (four in five), by 20 to 90%
/// of the way to white, else darker. A training-only addition (`--cracks`): the held-out set does
/// not draw them.
fn emulsion_cracks(diff: &mut [f32], clean: &ImageF32, seed: u64, rate: f64) {
    let (w, h) = (clean.width(), clean.height());
    let mut rng = StdRng::seed_from_u64(seed);
    if w < 16 || h < 16 || rate <= 0.0 || !rng.random_bool(rate.min(1.0)) {
        return;
    }
    let target = if rng.random_bool(0.8) { 1.0 } else { 0.0 };
    let strength = rng.random_range(0.3..0.9f32);
    let side = w.max(h) as f32;
    let sign = |rng: &mut StdRng| if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    // Cracks still to draw: start, direction, length and half width.
    let mut todo: Vec<(f32, f32, f32, f32, f32)> = (0..rng.random_range(1..=3))
        .map(|_| {
            (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
                rng.random_range(0.0..std::f32::consts::TAU),
                rng.random_range(30.0..(1.5 * side).max(31.0)),
                rng.random_range(0.4..1.3f32),
            )
        })
        .collect();
    let mut branches = 0;
    while let Some((mut x, mut y, mut angle, len, half)) = todo.pop() {
        let fade = rng.random_range(0.7..1.0f32);
        for t in 0..len as usize {
            if x < 0.0 || y < 0.0 || x >= w as f32 || y >= h as f32 {
                break;
            }
            let (x0, x1) = (
                (x - half - 1.0).max(0.0) as usize,
                (x + half + 1.0) as usize,
            );
            let (y0, y1) = (
                (y - half - 1.0).max(0.0) as usize,
                (y + half + 1.0) as usize,
            );
            for py in y0..=y1.min(h - 1) {
                for px in x0..=x1.min(w - 1) {
                    let d = ((px as f32 - x).powi(2) + (py as f32 - y).powi(2)).sqrt();
                    let cover = (half + 0.5 - d).clamp(0.0, 1.0);
                    if cover > 0.0 {
                        stamp(diff, clean, py * w + px, target, strength * fade, cover);
                    }
                }
            }
            angle += 0.05 * normal(&mut rng);
            if rng.random_bool(0.04) {
                angle += rng.random_range(0.3..1.0f32) * sign(&mut rng);
            }
            if branches < 24 && rng.random_bool(0.03) {
                branches += 1;
                let turn = rng.random_range(0.5..1.4f32) * sign(&mut rng);
                let rest = len - t as f32;
                todo.push((
                    x,
                    y,
                    angle + turn,
                    rest * rng.random_range(0.3..0.8),
                    (half * rng.random_range(0.6..0.9)).max(0.4),
                ));
            }
            x += angle.cos();
            y += angle.sin();
        }
    }
}

/// Training-only additions to the synthesis (the held-out set, validation and calibration draw
/// none of them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrainAugment {
    /// Share of the damaged crops that also get short film dashes ([`film_dashes`]).
    pub dashes: f64,
    /// Share of the crops whose scene colours are made bolder before the damage
    /// ([`vivid_colours`]).
    pub vivid: f64,
    /// Share of the crops that get printed marks (lettering, solid squares, a flat panel) as
    /// part of the scene before the damage ([`printed_marks`]).
    pub print: f64,
    /// Share of the damaged crops that also get a network of emulsion cracks
    /// ([`emulsion_cracks`]).
    pub cracks: f64,
    /// Share of the damaged crops whose damage draws brush strokes (wide opaque bands), in
    /// place of [`detection_damage`]'s 3%; 0 keeps the 3%.
    pub brush: f64,
    /// Share of the crops that get a shaded garment patch (a white collar or shirt front) as
    /// part of the scene before the damage ([`garment_patch`]).
    pub garments: f64,
    /// Smallest box side of a garment patch in pixels; the box is drawn from this to 70 px
    /// more ([`GARMENT_MIN_SIDE`] and up; the default 0 means [`GARMENT_MIN_SIDE`]).
    pub garment_min: f32,
}

/// Smallest box side of a garment patch (the first `--garments` networks drew 20 to 90 px).
pub const GARMENT_MIN_SIDE: f32 = 20.0;

/// The box sides a garment patch draws from for `min_side`: from it (at least
/// [`GARMENT_MIN_SIDE`]) to 70 px more.
pub fn garment_sides(min_side: f32) -> std::ops::Range<f32> {
    let lo = min_side.max(GARMENT_MIN_SIDE);
    lo..lo + 70.0
}

/// Paints printed marks into a clean crop as part of its scene, like the lettering and graphics
/// of packaging, signs and captions, which BSDS500's natural photos rarely show (the learned
/// detector took the bold print and sprocket squares of film boxes in the real film-damage
/// scans for damage, in colour and in grey alike): with probability `rate`, maybe a flat
/// panel of one colour, then a line of 3 to 10 glyphs (each 2 to 4 strokes of one width between
/// points of a 3x3 grid of its box, like a segment font; 8 to 28 px tall), and on some crops a
/// row of solid squares, all in one light or dark ink (the panel, if any, the opposite). The
/// marks are scene, never damage: the labels are measured against the crop with its marks.
fn printed_marks(img: &mut ImageF32, seed: u64, rate: f64) {
    let (w, h) = (img.width(), img.height());
    let mut rng = StdRng::seed_from_u64(seed);
    if img.channels() != 3 || w < 24 || h < 24 || rate <= 0.0 || !rng.random_bool(rate.min(1.0)) {
        return;
    }
    let colour = |rng: &mut StdRng, light: bool| -> [f32; 3] {
        let base = if light {
            rng.random_range(0.75..1.0f32)
        } else {
            rng.random_range(0.0..0.3f32)
        };
        let tint = rng.random_range(0.0..0.35f32);
        [0, 1, 2].map(|_| (base + rng.random_range(-tint..tint)).clamp(0.0, 1.0))
    };
    let light_ink = rng.random_bool(0.4);
    if rng.random_bool(0.5) {
        let panel = colour(&mut rng, !light_ink);
        let (x0, y0) = (rng.random_range(0..w / 2), rng.random_range(0..h / 2));
        let (x1, y1) = (
            rng.random_range(x0 + w / 4..=w),
            rng.random_range(y0 + h / 4..=h),
        );
        for y in y0..y1 {
            for x in x0..x1 {
                img.data_mut()[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&panel);
            }
        }
    }
    let ink = colour(&mut rng, light_ink);
    // Strokes as capsules (segment, half width), in pixel coordinates.
    let mut strokes: Vec<([f32; 4], f32)> = Vec::new();
    let tall = rng.random_range(8.0..28.0f32);
    let half = (tall * rng.random_range(0.05..0.11f32)).max(0.6);
    let (mut x, y) = (
        rng.random_range(0.0..w as f32 * 0.5),
        rng.random_range(0.0..(h as f32 - tall).max(1.0)),
    );
    let width = tall * rng.random_range(0.45..0.75f32);
    for _ in 0..rng.random_range(3..=10) {
        for _ in 0..rng.random_range(2..=4) {
            let mut point = || {
                (
                    x + width * 0.5 * rng.random_range(0..3u8) as f32,
                    y + tall * 0.5 * rng.random_range(0..3u8) as f32,
                )
            };
            let (a, b) = (point(), point());
            strokes.push(([a.0, a.1, b.0, b.1], half));
        }
        x += width * rng.random_range(1.15..1.4f32);
    }
    if rng.random_bool(0.3) {
        let side = rng.random_range(3.0..10.0f32);
        let (mut sx, sy) = (
            rng.random_range(0.0..side * 2.0),
            rng.random_range(0.0..h as f32 - side),
        );
        while sx < w as f32 {
            let c = sy + side / 2.0;
            strokes.push(([sx + side / 2.0, c, sx + side / 2.0, c], side / 2.0));
            sx += side * rng.random_range(1.8..2.6f32);
        }
    }
    for ([ax, ay, bx, by], half) in strokes {
        let reach = half + 1.0;
        let xs = (ax.min(bx) - reach).floor().max(0.0) as usize
            ..((ax.max(bx) + reach).ceil().max(0.0) as usize).min(w);
        let ys = (ay.min(by) - reach).floor().max(0.0) as usize
            ..((ay.max(by) + reach).ceil().max(0.0) as usize).min(h);
        let (dx, dy) = (bx - ax, by - ay);
        let len2 = dx * dx + dy * dy;
        for py in ys {
            for px in xs.clone() {
                let (qx, qy) = (px as f32 - ax, py as f32 - ay);
                // Square dots (no length) keep their corners: Chebyshev distance there.
                let d = if len2 <= 1e-6 {
                    qx.abs().max(qy.abs())
                } else {
                    let t = ((qx * dx + qy * dy) / len2).clamp(0.0, 1.0);
                    ((qx - t * dx).powi(2) + (qy - t * dy).powi(2)).sqrt()
                };
                let cover = (half + 0.5 - d).clamp(0.0, 1.0);
                if cover > 0.0 {
                    let i = (py * w + px) * 3;
                    for (v, k) in img.data_mut()[i..i + 3].iter_mut().zip(ink) {
                        *v += (k - *v) * cover;
                    }
                }
            }
        }
    }
}

/// Paints a patch of cloth into a clean crop as part of its scene, like the white collars and
/// shirt fronts of old portraits, which BSDS500's natural photos rarely show (every detector
/// trained on from stage 9 that was checked took a girl's white collar in the old photos for a
/// stain, and the shipped one a boy's shirt V): with probability `rate`, one or two random convex
/// polygons (3 to 6 corners) in a box of [`garment_sides`] (at the default, 20 to 90 px, the
/// smaller patches look like the round white blobs of the `dots` artifacts, which the first
/// garment networks then missed), filled with one light colour (four in five; else dark) that
/// carries the cloth's look: a gentle shading gradient across the patch, 1 to 3 soft folds
/// (darker bands 2 to 6 px wide), and fine weave noise; its outline is anti-aliased. A stain or
/// brush stroke in the damage is flat; cloth is shaded. The patch is scene, never damage: the
/// labels are measured against the crop with it.
fn garment_patch(img: &mut ImageF32, seed: u64, rate: f64, min_side: f32) {
    let (w, h) = (img.width(), img.height());
    let mut rng = StdRng::seed_from_u64(seed);
    if img.channels() != 3 || w < 24 || h < 24 || rate <= 0.0 || !rng.random_bool(rate.min(1.0)) {
        return;
    }
    let side = rng
        .random_range(garment_sides(min_side))
        .min(w.min(h) as f32);
    let (bx, by) = (
        rng.random_range(-side * 0.3..w as f32 - side * 0.7),
        rng.random_range(-side * 0.3..h as f32 - side * 0.7),
    );
    // Convex shapes: corners by increasing angle around a centre, as (x, y) in pixels; a pixel
    // is inside when it is left of every edge.
    let polygons: Vec<Vec<(f32, f32)>> = (0..rng.random_range(1..=2))
        .map(|_| {
            let (cx, cy) = (
                bx + side * rng.random_range(0.3..0.7f32),
                by + side * rng.random_range(0.3..0.7f32),
            );
            // Corners spread around the centre (jittered even angles), so no gap reaches a
            // half turn and the shape is a sizeable blob, not a sliver.
            let n = rng.random_range(3..=6);
            let turn = rng.random_range(0.0..std::f32::consts::TAU);
            let step = std::f32::consts::TAU / n as f32;
            (0..n)
                .map(|k| {
                    let a = turn + step * (k as f32 + rng.random_range(-0.3..0.3f32));
                    let r = side * rng.random_range(0.3..0.55f32);
                    (cx + r * a.cos(), cy + r * a.sin())
                })
                .collect()
        })
        .collect();
    let light = rng.random_bool(0.8);
    let base = if light {
        rng.random_range(0.72..0.97f32)
    } else {
        rng.random_range(0.05..0.3f32)
    };
    let tint = rng.random_range(0.0..0.06f32);
    let colour = [0, 1, 2].map(|_| base + rng.random_range(-tint..tint));
    let grad_angle = rng.random_range(0.0..std::f32::consts::TAU);
    let (gx, gy) = (grad_angle.cos(), grad_angle.sin());
    let grad = rng.random_range(0.02..0.15f32) / side;
    // Folds: darker bands along a line through `at` (unit `normal` across it).
    struct Fold {
        at: (f32, f32),
        normal: (f32, f32),
        width: f32,
        depth: f32,
    }
    let folds: Vec<Fold> = (0..rng.random_range(1..=3))
        .map(|_| {
            let a = rng.random_range(0.0..std::f32::consts::TAU);
            Fold {
                at: (
                    bx + side * rng.random_range(0.2..0.8f32),
                    by + side * rng.random_range(0.2..0.8f32),
                ),
                normal: (a.cos(), a.sin()),
                width: rng.random_range(2.0..6.0f32),
                depth: rng.random_range(0.03..0.15f32),
            }
        })
        .collect();
    let weave = rng.random_range(0.004..0.02f32);
    // Signed distance inside a convex polygon (positive inside), for the anti-aliased outline.
    let inside = |poly: &[(f32, f32)], x: f32, y: f32| -> f32 {
        let mut d = f32::INFINITY;
        let n = poly.len();
        // The corners go round by increasing angle: the inside is left of every edge.
        for k in 0..n {
            let (ax, ay) = poly[k];
            let (cx, cy) = poly[(k + 1) % n];
            let (ex, ey) = (cx - ax, cy - ay);
            let len = (ex * ex + ey * ey).sqrt().max(1e-6);
            d = d.min(((x - ax) * ey - (y - ay) * ex) / -len);
        }
        d
    };
    let (x0, y0) = (bx.floor().max(0.0) as usize, by.floor().max(0.0) as usize);
    let (x1, y1) = (
        ((bx + side).ceil().max(0.0) as usize).min(w),
        ((by + side).ceil().max(0.0) as usize).min(h),
    );
    for py in y0..y1 {
        for px in x0..x1 {
            let (x, y) = (px as f32 + 0.5, py as f32 + 0.5);
            let d = polygons
                .iter()
                .map(|p| inside(p, x, y))
                .fold(f32::NEG_INFINITY, f32::max);
            let cover = (d + 0.5).clamp(0.0, 1.0);
            if cover <= 0.0 {
                continue;
            }
            let mut shade = 1.0 - grad * ((x - bx) * gx + (y - by) * gy);
            for f in &folds {
                let t = ((x - f.at.0) * f.normal.0 + (y - f.at.1) * f.normal.1) / f.width;
                shade -= f.depth * (-t * t).exp();
            }
            let n = weave * normal(&mut rng);
            let i = (py * w + px) * 3;
            for (v, c) in img.data_mut()[i..i + 3].iter_mut().zip(colour) {
                let target = (c * shade + n).clamp(0.0, 1.0);
                *v += (target - *v) * cover;
            }
        }
    }
}

/// Makes the scene of a clean crop as colourful as printed packaging, signs or dyed cloth, which
/// BSDS500's natural photos rarely are (the learned detector took saturated red and yellow boxes
/// and their print in the real film-damage scans for stains): with probability `rate`, every
/// pixel's hue is turned by one random angle about the grey axis and its distance from grey is
/// multiplied by 1.3 to 2.5 (then clamped to 0..1). Greys stay grey.
fn vivid_colours(img: &mut ImageF32, seed: u64, rate: f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    if img.channels() != 3 || rate <= 0.0 || !rng.random_bool(rate.min(1.0)) {
        return;
    }
    let angle = rng.random_range(0.0..std::f32::consts::TAU);
    let gain = rng.random_range(1.3..2.5f32);
    // Rotation about the unit grey axis k = (1, 1, 1) / sqrt(3) (Rodrigues), applied to the
    // offset from the pixel's grey, which it keeps.
    let (c, s) = (angle.cos(), angle.sin() / 3f32.sqrt());
    for px in img.data_mut().chunks_exact_mut(3) {
        let grey = (px[0] + px[1] + px[2]) / 3.0;
        let [r, g, bl] = [px[0] - grey, px[1] - grey, px[2] - grey];
        // The offsets sum to 0, so the k k^T part of the rotation vanishes.
        let turned = [
            c * r - s * g + s * bl,
            s * r + c * g - s * bl,
            -s * r + s * g + c * bl,
        ];
        for (v, t) in px.iter_mut().zip(turned) {
            *v = (grey + gain * t).clamp(0.0, 1.0);
        }
    }
}

/// Largest change (max over the colour channels, after the crop's tone, before grain) below
/// which a pixel does not count as damage: the ground truth is the set of pixels the composited
/// damage visibly changed, not its whole footprint (faint edges, blur tails and damage that
/// happens to match the background change nothing a detector could see).
pub const VISIBLE_CHANGE: f32 = 0.04;

/// Changes between this and [`VISIBLE_CHANGE`] are ambiguous: such pixels are neither damage
/// nor clean in the training loss (ignored), and clean in the evaluation.
pub const FAINT_CHANGE: f32 = 0.015;

/// Label statistics of synthetic samples (the diagnosis of what the ground truth marks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelStats {
    /// Pixels under a composited defect (alpha above [`super::damage_synth::MASK_THRESHOLD`]).
    pub footprint: u64,
    /// Of those, pixels whose visible change is below 0.03.
    pub footprint_below_003: u64,
    /// Pixels of the ground truth (change above [`VISIBLE_CHANGE`]).
    pub visible: u64,
    /// Ground-truth pixels outside the footprint (blur spreads the defect).
    pub visible_outside_footprint: u64,
    /// Ignored pixels (faint change).
    pub ignored: u64,
    /// All pixels.
    pub pixels: u64,
}

impl LabelStats {
    /// Sum of two.
    pub fn merged(self, o: Self) -> Self {
        Self {
            footprint: self.footprint + o.footprint,
            footprint_below_003: self.footprint_below_003 + o.footprint_below_003,
            visible: self.visible + o.visible,
            visible_outside_footprint: self.visible_outside_footprint + o.visible_outside_footprint,
            ignored: self.ignored + o.ignored,
            pixels: self.pixels + o.pixels,
        }
    }
}

/// One synthetic training or evaluation sample.
#[derive(Clone, Debug)]
pub struct SynthSample {
    /// The network input: damaged, toned, with grain.
    pub image: ImageF32,
    /// Ground truth: pixels the damage changed by more than [`VISIBLE_CHANGE`].
    pub mask: Mask,
    /// Pixels changed only faintly ([`FAINT_CHANGE`] to [`VISIBLE_CHANGE`]); no loss there.
    pub ignore: Mask,
    /// What the labels mark.
    pub stats: LabelStats,
}

/// Tone of an old print applied to a whole crop (the same to the clean and the damaged one).
#[derive(Clone, Copy, Debug)]
struct Tone {
    /// 0 = colour, 1 = grey, 2 = sepia.
    kind: u8,
    /// Gamma and contrast, if any.
    curve: Option<(f32, f32)>,
}

impl Tone {
    fn apply(&self, img: &mut ImageF32) {
        if self.kind > 0 {
            let sepia = self.kind == 2;
            for px in img.data_mut().chunks_exact_mut(3) {
                let l = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
                if sepia {
                    px[0] = (l * 1.07 + 0.03).min(1.0);
                    px[1] = l * 0.95 + 0.01;
                    px[2] = l * 0.78;
                } else {
                    px.fill(l);
                }
            }
        }
        if let Some((g, contrast)) = self.curve {
            for v in img.data_mut() {
                *v = ((v.max(0.0).powf(g) - 0.5) * contrast + 0.5).clamp(0.0, 1.0);
            }
        }
    }
}

/// Largest absolute difference over the colour channels of pixel `i`.
pub(crate) fn change(a: &ImageF32, b: &ImageF32, i: usize) -> f32 {
    let (a, b) = (&a.data()[i * 3..i * 3 + 3], &b.data()[i * 3..i * 3 + 3]);
    (0..3).map(|c| (a[c] - b[c]).abs()).fold(0.0, f32::max)
}

/// A damaged version of the clean RGB crop and its damage mask, deterministic for `seed`
/// (see [`synth_sample_full`]).
pub fn synth_sample(clean: &ImageF32, bank: Option<&ArtifactBank>, seed: u64) -> (ImageF32, Mask) {
    let s = synth_sample_full(clean, bank, seed);
    (s.image, s.mask)
}

/// A damaged version of the clean RGB crop, its ground truth and ignore masks, deterministic for
/// `seed`.
///
/// About one crop in eight stays undamaged (an empty mask). The damage of [`synthesize`] is
/// then varied: fainter (opacity), tinted (colour), softened (blur). The whole crop may then be
/// toned grey or sepia and get a gamma, as old prints do; the ground truth is the set of pixels
/// where the toned damaged crop differs from the toned clean crop by more than
/// [`VISIBLE_CHANGE`] in some channel (blur tails included, invisible footprint excluded).
/// Film grain (fine or clumped) comes last and never changes the labels.
pub fn synth_sample_full(clean: &ImageF32, bank: Option<&ArtifactBank>, seed: u64) -> SynthSample {
    synth_parts(clean, bank, seed, true, TrainAugment::default()).0
}

/// [`synth_sample_full`] with the training-only damage of `augment` (short film dashes
/// ([`film_dashes`]) and emulsion cracks ([`emulsion_cracks`]) on their shares of the damaged
/// crops; its scene changes are made by [`synth_items`]); with the default it is
/// [`synth_sample_full`].
pub fn synth_sample_train(
    clean: &ImageF32,
    bank: Option<&ArtifactBank>,
    seed: u64,
    augment: TrainAugment,
) -> SynthSample {
    synth_parts(clean, bank, seed, true, augment).0
}

/// What the labels of a synthetic sample were measured from: for scoring detectors by how
/// visible the damage is, and for the ceiling of a detector that knew the clean photo.
#[derive(Clone, Debug)]
pub struct SynthTruth {
    /// How much the damage changed each pixel (max over the colour channels, before grain); the
    /// labels are this above [`VISIBLE_CHANGE`].
    pub change: Vec<f32>,
    /// The clean crop with the same tone as the sample, before grain: what the change is
    /// measured against.
    pub reference: ImageF32,
    /// Whether film grain was added (after the labels were measured).
    pub grain: bool,
    /// What drew the damage of each pixel; blur tails outside every drawing take the source of
    /// the nearest drawn pixel within [`TAIL_REACH`] pixels.
    pub source: Vec<DamageSource>,
}

/// How far (pixels, Chebyshev) a blur tail is traced back to the drawing it came from.
pub const TAIL_REACH: usize = 3;

/// [`synth_sample_full`] and what its labels were measured from, in the same pass.
pub fn synth_sample_with_truth(
    clean: &ImageF32,
    bank: Option<&ArtifactBank>,
    seed: u64,
) -> (SynthSample, SynthTruth) {
    synth_parts(clean, bank, seed, true, TrainAugment::default())
}

/// [`synth_sample_full`] with grain optional and the training-only damage of `augment`, and
/// what its labels were measured from.
fn synth_parts(
    clean: &ImageF32,
    bank: Option<&ArtifactBank>,
    seed: u64,
    grain: bool,
    augment: TrainAugment,
) -> (SynthSample, SynthTruth) {
    let (w, h) = (clean.width(), clean.height());
    let mut rng = StdRng::seed_from_u64(mix(seed, 0x00de_7ec7));
    if clean.channels() != 3 || w == 0 || h == 0 {
        let s = SynthSample {
            image: clean.clone(),
            mask: Mask::new(w, h),
            ignore: Mask::new(w, h),
            stats: LabelStats::default(),
        };
        let truth = SynthTruth {
            change: vec![0.0; w * h],
            reference: clean.clone(),
            grain: false,
            source: vec![DamageSource::None; w * h],
        };
        return (s, truth);
    }
    let (mut img, footprint, mut source) = if rng.random_bool(0.12) {
        (
            clean.clone(),
            Mask::new(w, h),
            vec![DamageSource::None; w * h],
        )
    } else {
        let mut mix_cfg = detection_damage();
        if augment.brush > 0.0 {
            mix_cfg.brush = augment.brush.min(1.0);
        }
        let (damaged, footprint, mut source) = synthesize_traced(clean, bank, &mix_cfg, seed);
        // Vary the damage itself through its difference to the clean crop.
        let mut diff: Vec<f32> = damaged
            .data()
            .iter()
            .zip(clean.data())
            .map(|(d, c)| d - c)
            .collect();
        let opacity = if rng.random_bool(0.4) {
            rng.random_range(0.4..1.0)
        } else {
            1.0
        };
        let tint = if rng.random_bool(0.3) {
            [
                rng.random_range(0.6..1.4),
                rng.random_range(0.6..1.4),
                rng.random_range(0.6..1.4),
            ]
        } else {
            [1.0; 3]
        };
        for px in diff.chunks_exact_mut(3) {
            for (c, v) in px.iter_mut().enumerate() {
                *v *= opacity * tint[c];
            }
        }
        // Film scratches, dashes and cracks from their own random streams (the other draws stay
        // as they were); traced only on the crops that get them.
        let (scratch_seed, dash_seed, crack_seed) = (
            mix(seed, 0xf11e_5c7a),
            mix(seed, 0xda54_e500),
            mix(seed, 0xc7ac_4ed5),
        );
        if drawn(scratch_seed, FILM_SCRATCH_RATE) {
            traced(&mut diff, &mut source, DamageSource::FilmScratch, |d| {
                film_scratches(d, clean, scratch_seed)
            });
        }
        if drawn(dash_seed, augment.dashes) {
            traced(&mut diff, &mut source, DamageSource::FilmDash, |d| {
                film_dashes(d, clean, dash_seed, augment.dashes)
            });
        }
        if drawn(crack_seed, augment.cracks) {
            traced(&mut diff, &mut source, DamageSource::Crack, |d| {
                emulsion_cracks(d, clean, crack_seed, augment.cracks)
            });
        }
        let blur = rng.random_range(0.0..1.0);
        if blur < 0.3 {
            diff = box_blur(&diff, w, h, 1);
        } else if blur < 0.38 {
            diff = box_blur(&diff, w, h, 2);
        }
        let mut img = clean.clone();
        for (v, d) in img.data_mut().iter_mut().zip(&diff) {
            *v = (*v + d).clamp(0.0, 1.0);
        }
        (img, footprint, source)
    };
    // Tone of an old print, the same on the clean reference.
    let t = rng.random_range(0.0..1.0);
    let kind = if t < 0.1 {
        2
    } else if t < 0.35 {
        1
    } else {
        0
    };
    let curve = rng
        .random_bool(0.3)
        .then(|| (rng.random_range(0.7..1.4), rng.random_range(0.75..1.15)));
    let tone = Tone { kind, curve };
    let mut reference = clean.clone();
    tone.apply(&mut reference);
    tone.apply(&mut img);
    let mut stats = LabelStats {
        pixels: (w * h) as u64,
        ..LabelStats::default()
    };
    let mut mask = Mask::new(w, h);
    let mut ignore = Mask::new(w, h);
    let mut changes = vec![0f32; w * h];
    for (i, (&f, (m, ig))) in footprint
        .data()
        .iter()
        .zip(mask.data_mut().iter_mut().zip(ignore.data_mut()))
        .enumerate()
    {
        let d = change(&img, &reference, i);
        changes[i] = d;
        *m = d > VISIBLE_CHANGE;
        *ig = !*m && d > FAINT_CHANGE;
        stats.footprint += u64::from(f);
        stats.footprint_below_003 += u64::from(f && d < 0.03);
        stats.visible += u64::from(*m);
        stats.visible_outside_footprint += u64::from(*m && !f);
        stats.ignored += u64::from(*ig);
    }
    trace_tails(&mut source, &mask, w, h);
    let grain = rng.random_bool(0.6) && grain;
    if grain {
        let sigma = rng.random_range(0.005..0.045f32);
        let mono = rng.random_bool(0.6);
        let clumped = rng.random_bool(0.35);
        let mut noise: Vec<f32> = (0..w * h * 3).map(|_| normal(&mut rng)).collect();
        if mono {
            for px in noise.chunks_exact_mut(3) {
                px[1] = px[0];
                px[2] = px[0];
            }
        }
        if clumped {
            // Blurring white noise by a 3x3 box divides its deviation by 3.
            noise = box_blur(&noise, w, h, 1);
            noise.iter_mut().for_each(|v| *v *= 3.0);
        }
        for (v, n) in img.data_mut().iter_mut().zip(&noise) {
            *v = (*v + sigma * n).clamp(0.0, 1.0);
        }
    }
    let sample = SynthSample {
        image: img,
        mask,
        ignore,
        stats,
    };
    let truth = SynthTruth {
        change: changes,
        reference,
        grain,
        source,
    };
    (sample, truth)
}

/// Whether a training-only drawing seeded by `seed` ([`film_scratches`], [`film_dashes`],
/// [`emulsion_cracks`]) draws on its crop at `rate`: the first draw of its random stream, as the
/// drawing itself decides (so [`traced`] need not copy the damage of the other crops).
fn drawn(seed: u64, rate: f64) -> bool {
    rate > 0.0 && StdRng::seed_from_u64(seed).random_bool(rate.min(1.0))
}

/// Runs `draw` on the damage difference `diff` (interleaved RGB) and traces every pixel it
/// changed to `kind`.
fn traced(
    diff: &mut Vec<f32>,
    source: &mut [DamageSource],
    kind: DamageSource,
    draw: impl FnOnce(&mut Vec<f32>),
) {
    let before = diff.clone();
    draw(diff);
    for ((s, new), old) in source
        .iter_mut()
        .zip(diff.chunks_exact(3))
        .zip(before.chunks_exact(3))
    {
        if new != old {
            *s = kind;
        }
    }
}

/// Gives each damage pixel of `mask` that no drawing is traced to (a blur tail) the source of
/// the nearest traced pixel within [`TAIL_REACH`], if any.
fn trace_tails(source: &mut [DamageSource], mask: &Mask, w: usize, h: usize) {
    let r = TAIL_REACH as isize;
    let untraced: Vec<usize> = (0..w * h)
        .filter(|&i| mask.data()[i] && source[i] == DamageSource::None)
        .collect();
    let mut found = Vec::with_capacity(untraced.len());
    for &i in &untraced {
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        let mut best: Option<(isize, DamageSource)> = None;
        for dy in -r..=r {
            for dx in -r..=r {
                let (xx, yy) = (x + dx, y + dy);
                if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                    continue;
                }
                let s = source[yy as usize * w + xx as usize];
                let d = dx * dx + dy * dy;
                if s != DamageSource::None && best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, s));
                }
            }
        }
        found.push(best.map_or(DamageSource::None, |(_, s)| s));
    }
    for (i, s) in untraced.into_iter().zip(found) {
        source[i] = s;
    }
}

/// A batch of folded inputs `[n, 12, s/2, s/2]` in `[-1, 1]`, targets and loss weights
/// `[n, 4, s/2, s/2]`.
pub struct DetectBatch {
    /// Network inputs (folded).
    pub input: Tensor,
    /// 1 = damage.
    pub target: Tensor,
    /// 0 where the pixel is ignored (faint change), else 1.
    pub valid: Tensor,
    /// 1 on clean pixels farther than [`HARD_NEG_MARGIN`] from any damage (where a detection is
    /// a false alarm on the scene, what the clean-photo budget counts), else 0.
    pub far: Tensor,
}

/// Clean pixels within this many pixels of damage are not hard-negative candidates: their
/// scores belong to the damage's edge, not to the scene.
pub const HARD_NEG_MARGIN: usize = 3;

impl DetectBatch {
    /// Stacks samples (all `s x s` with `s` a multiple of 8), folded 2x2 as the network reads
    /// them ([`fold`], [`fold_mask`]): the loss is per pixel, so comparing folded logits with
    /// the folded mask is the same as comparing unfolded ones.
    pub fn from_items(items: &[SynthSample], dev: &Device) -> TrainResult<Self> {
        let Some(first) = items.first() else {
            return Err(TrainError::Invalid("empty batch".into()));
        };
        let (w, h) = (first.image.width(), first.image.height());
        if w % 8 != 0 || h % 8 != 0 {
            return Err(TrainError::Invalid("crops must be multiples of 8".into()));
        }
        let mut input = Vec::new();
        let mut target = Vec::new();
        let mut valid = Vec::new();
        let mut far = Vec::new();
        for s in items {
            let sizes = [
                (s.image.width(), s.image.height()),
                (s.mask.width(), s.mask.height()),
                (s.ignore.width(), s.ignore.height()),
            ];
            if sizes.iter().any(|&d| d != (w, h)) {
                return Err(TrainError::Invalid("batch items differ in size".into()));
            }
            input.extend(fold(&s.image).0);
            target.extend(fold_mask(&s.mask));
            let ignored = fold_mask(&s.ignore);
            let near = fold_mask(&s.mask.dilate(HARD_NEG_MARGIN));
            far.extend(
                near.iter()
                    .zip(&ignored)
                    .map(|(n, i)| (1.0 - n) * (1.0 - i)),
            );
            valid.extend(ignored.into_iter().map(|v| 1.0 - v));
        }
        let n = items.len();
        let shape = (n, 4, h / 2, w / 2);
        Ok(Self {
            input: Tensor::from_vec(input, (n, 12, h / 2, w / 2), dev)?,
            target: Tensor::from_vec(target, shape, dev)?,
            valid: Tensor::from_vec(valid, shape, dev)?,
            far: Tensor::from_vec(far, shape, dev)?,
        })
    }
}

/// Label byte of an encoded sample ([`encode_sample`]): a clean pixel farther than
/// [`HARD_NEG_MARGIN`] from damage (a hard-negative candidate).
pub const LABEL_FAR_CLEAN: u8 = 0;
/// Label byte: damage (the ground truth).
pub const LABEL_DAMAGE: u8 = 1;
/// Label byte: a faintly changed pixel, which carries no loss.
pub const LABEL_IGNORED: u8 = 2;
/// Label byte: a clean pixel within [`HARD_NEG_MARGIN`] of damage.
pub const LABEL_NEAR_CLEAN: u8 = 3;

/// Appends a sample in the byte layout an external trainer reads (`kintsugi train
/// detect-data`): the image as row-major RGB bytes (rounded from `[0, 1]`, grey repeated),
/// then one label byte per pixel, which carries what [`DetectBatch`] derives for the loss:
/// target = damage, valid = not ignored, far = far clean.
pub fn encode_sample(s: &SynthSample, out: &mut Vec<u8>) {
    let (w, h) = (s.image.width(), s.image.height());
    // The 8-bit quantisation the project saves images with.
    let rgb = crate::imaging::io::from_f32(&s.image, crate::imaging::BitDepth::U8).to_rgb8();
    out.extend_from_slice(rgb.as_raw());
    let near = s.mask.dilate(HARD_NEG_MARGIN);
    for y in 0..h {
        for x in 0..w {
            out.push(if s.mask.get(x, y) {
                LABEL_DAMAGE
            } else if s.ignore.get(x, y) {
                LABEL_IGNORED
            } else if near.get(x, y) {
                LABEL_NEAR_CLEAN
            } else {
                LABEL_FAR_CLEAN
            });
        }
    }
}

/// `n` damaged crops of `source` with the training-only `augment`, a function of
/// `(seed, index, augment)` only (so a resumed run sees the same data).
pub fn synth_items(
    source: &CropSource,
    bank: Option<&ArtifactBank>,
    n: usize,
    crop: usize,
    seed: u64,
    index: u64,
    augment: TrainAugment,
) -> TrainResult<Vec<SynthSample>> {
    (0..n)
        .into_par_iter()
        .map(|j| {
            let s = mix(seed, index.wrapping_mul(1024).wrapping_add(j as u64));
            let mut rng = StdRng::seed_from_u64(s);
            let mut clean = source.crop(&mut rng, crop)?;
            vivid_colours(&mut clean, mix(s, 0x0b01_d5ce), augment.vivid);
            printed_marks(&mut clean, mix(s, 0x9e1c_7e25), augment.print);
            garment_patch(
                &mut clean,
                mix(s, 0x6a57_c0de),
                augment.garments,
                augment.garment_min,
            );
            Ok(synth_sample_train(&clean, bank, s ^ 0xd37, augment))
        })
        .collect()
}

/// Weighted BCE on logits plus soft Dice, both over the valid pixels only (`valid` is 0 on
/// ignored ones); returns `(total, bce, dice)`.
pub fn detect_loss(
    logits: &Tensor,
    target: &Tensor,
    valid: &Tensor,
    pos_weight: f64,
    dice_weight: f64,
) -> TrainResult<(Tensor, f32, f32)> {
    // Stable BCE with logits: softplus(z) - z y.
    let bce = (softplus(logits)? - (logits * target)?)?;
    let weight = (((target * (pos_weight - 1.0))? + 1.0)? * valid)?;
    let bce = (bce * weight)?.mean_all()?;
    let p = ((logits.neg()?.exp()? + 1.0)?.recip()? * valid)?;
    let inter = (&p * target)?.sum_all()?;
    let denom = ((p.sum_all()? + target.sum_all()?)? + 1.0)?;
    let dice = (1.0 - ((inter * 2.0)? + 1.0)?.div(&denom)?)?;
    let total = (&bce + (&dice * dice_weight)?)?;
    let b = bce.to_scalar::<f32>()?;
    let d = dice.to_scalar::<f32>()?;
    Ok((total, b, d))
}

/// `log(1 + exp(z))`, computed stably as `max(z, 0) + log(1 + exp(-|z|))`: the BCE of logit `z`
/// against label 0.
fn softplus(z: &Tensor) -> candle_core::Result<Tensor> {
    z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Hard-negative term: the mean BCE of the `frac` highest-scoring pixels among the far clean
/// ones (`far` = 1), i.e. the scene structures that look most like damage. The default
/// threshold is set by how many clean pixels score high, so this term works on the tail that
/// the mean BCE, dominated by easy clean pixels, hardly sees. The selection is made on the
/// detached logits; the gradient flows through the selected pixels only. Returns the term and
/// its value (0 when there is no far clean pixel).
pub fn hard_negative_loss(logits: &Tensor, far: &Tensor, frac: f64) -> TrainResult<(Tensor, f32)> {
    let z: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let f: Vec<f32> = far.flatten_all()?.to_vec1()?;
    let mut cand: Vec<f32> = z
        .iter()
        .zip(&f)
        .filter(|(_, &f)| f > 0.5)
        .map(|(&z, _)| z)
        .collect();
    if cand.is_empty() {
        let zero = logits.zeros_like()?.sum_all()?;
        return Ok((zero, 0.0));
    }
    let k = ((cand.len() as f64 * frac.clamp(0.0, 1.0)).ceil() as usize).clamp(1, cand.len());
    let (_, &mut kth, _) = cand.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    // Ties at the k-th value may select a few more than k; the mean stays a mean.
    let sel: Vec<f32> = z
        .iter()
        .zip(&f)
        .map(|(&z, &f)| f32::from(u8::from(f > 0.5 && z >= kth)))
        .collect();
    let count = sel.iter().sum::<f32>();
    let sel = Tensor::from_vec(sel, logits.shape(), logits.device())?;
    let term = ((softplus(logits)? * sel)?.sum_all()? / f64::from(count))?;
    let v = term.to_scalar::<f32>()?;
    Ok((term, v))
}

/// The hard-negative term on `n` untouched whole photos of `source` drawn by `seed`: the mean
/// BCE of the `frac` highest-scoring pixels of each (all of them are clean), averaged over the
/// photos. Returns the term and its value (0 when `n` is 0).
pub fn photo_negative_loss(
    net: &crate::detect::learned::DetectNet,
    source: &CropSource,
    n: usize,
    frac: f64,
    seed: u64,
    dev: &Device,
) -> TrainResult<(Tensor, f32)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut terms = Vec::with_capacity(n);
    if !source.is_empty() {
        for _ in 0..n {
            let Some(photo) = source.photo(rng.random_range(0..source.len())) else {
                continue;
            };
            let (data, hw, hh) = fold(&photo);
            let z = net.forward(&Tensor::from_vec(data, (1, 12, hh, hw), dev)?)?;
            terms.push(hard_negative_loss(&z, &z.ones_like()?, frac)?.0);
        }
    }
    if terms.is_empty() {
        return Ok((Tensor::new(0f32, dev)?, 0.0));
    }
    let term = Tensor::stack(&terms, 0)?.mean_all()?;
    let v = term.to_scalar::<f32>()?;
    Ok((term, v))
}

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct DetectTrainConfig {
    /// Network sizes.
    pub net: DetectNetConfig,
    /// Total steps (a resumed run continues up to this count).
    pub steps: u64,
    /// Crops per step.
    pub batch: usize,
    /// Crop side (a multiple of 8).
    pub crop: usize,
    /// Peak learning rate (linear warm-up, then cosine to a tenth).
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Weight of damage pixels in the BCE.
    pub pos_weight: f64,
    /// Weight of the Dice term.
    pub dice_weight: f64,
    /// Weight of the hard-negative term ([`hard_negative_loss`]; 0 = off).
    pub hard_neg_weight: f64,
    /// Share of the far clean pixels of a batch that the hard-negative term covers.
    pub hard_neg_frac: f64,
    /// Training-only additions to the synthesis (film dashes, vivid colours, print, cracks).
    pub augment: TrainAugment,
    /// Untouched whole training photos per step whose top `hard_neg_frac` scoring pixels add a
    /// hard-negative term ([`photo_negative_loss`], weighted like the crops' one; 0 = off), so
    /// that regions larger than a crop, such as smooth skies or lakes, are learned as clean.
    pub photo_negatives: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Validation and checkpoint every this many steps.
    pub sample_every: u64,
    /// Folder of the checkpoint and logs.
    pub runs_dir: PathBuf,
    /// Output stem (`<out>.safetensors`, `<out>.json`).
    pub out: PathBuf,
    /// Continue from the checkpoint in `runs_dir`.
    pub resume: bool,
    /// Start a fresh run from these weights instead of a random initialisation: the same sizes,
    /// or smaller ones, widened without changing what the network computes
    /// ([`LoadedNet::widened_from`]).
    pub init: Option<PathBuf>,
    /// Stop (checkpoint + weights + manifest) after this many seconds of this session.
    pub max_seconds: Option<f64>,
    /// Description of the data for the manifest.
    pub data_desc: String,
    /// Licence notes for the manifest.
    pub data_license: String,
    /// The command line, for the manifest.
    pub command: String,
}

/// Clean-pixel false-positive budget of the calibration, counted on every untouched training
/// photo, whole. The issue's target is 0.1% on the held-out photos; the budget keeps a margin
/// because photos differ (a few with bright thin structures, anemones or wires, hold most false
/// positives). History: 0.08% of 48 random 192 px crops gave 0.108% on the held-out photos, 0.06%
/// of 160 random 256 px crops gave 0.077% with the first network and 0.107% with the second; the
/// crops were too few, so the count now runs over all training pixels.
pub const CAL_MAX_FP: f64 = 0.0006;

/// Resume state stored beside the checkpoint tensors.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DetectCheckpoint {
    /// Steps done.
    pub step: u64,
    /// Training seconds over all sessions.
    pub train_seconds: f64,
    /// Network sizes.
    pub net: DetectNetConfig,
    /// Batch size.
    pub batch: usize,
    /// Crop side.
    pub crop: usize,
    /// Seed.
    pub seed: u64,
    /// Commands of every session.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Steps of the run whose weights initialised this one (`init`), if any.
    #[serde(default)]
    pub prior_steps: u64,
    /// Training seconds of that run.
    #[serde(default)]
    pub prior_train_seconds: f64,
    /// Training photos set aside for calibration (never cropped by this run); a resumed run
    /// must set aside the same number, or its calibration photos would not be unseen.
    #[serde(default)]
    pub cal_photos: usize,
}

/// What a step reports to the caller.
#[derive(Clone, Copy, Debug)]
pub struct DetectStep {
    /// Steps done (1-based).
    pub step: u64,
    /// Target steps.
    pub total: u64,
    /// Loss of this step.
    pub loss: f32,
    /// Its BCE part.
    pub bce: f32,
    /// Its Dice part.
    pub dice: f32,
    /// Its hard-negative part (0 when off).
    pub hard: f32,
    /// Steps per second this session.
    pub steps_per_sec: f64,
    /// Latest validation scores at probability 0.5 (no offset), if any.
    pub val: Option<Counts>,
}

/// Result of [`train_detect`].
pub struct DetectOutcome {
    /// Steps in all sessions.
    pub steps: u64,
    /// Whether the target step count was reached.
    pub finished: bool,
    /// Training seconds in all sessions.
    pub train_seconds: f64,
    /// Steps per second in this session.
    pub steps_per_sec: f64,
    /// Trainable values.
    pub params: usize,
    /// The logit offset chosen on training data.
    pub logit_offset: f32,
    /// Validation scores at the chosen offset.
    pub val: Counts,
}

fn ckpt_paths(runs: &Path) -> (PathBuf, PathBuf) {
    (
        runs.join("checkpoint.safetensors"),
        runs.join("checkpoint.json"),
    )
}

fn save_checkpoint(
    net: &LoadedNet,
    opt: &AdamW,
    state: &DetectCheckpoint,
    runs: &Path,
) -> TrainResult<()> {
    std::fs::create_dir_all(runs).map_err(io_err(runs))?;
    let (tensors_path, json_path) = ckpt_paths(runs);
    let mut tensors: HashMap<String, Tensor> = opt.state();
    for (name, var) in net.vars().map_err(det_err)? {
        tensors.insert(format!("param.{name}"), var.as_tensor().clone());
    }
    save_tensors(&tensors, &tensors_path)?;
    write_json(&json_path, state)?;
    Ok(())
}

/// Per-crop 8-bit probabilities of `det` on `items` (each crop as one tile).
fn crop_probs(det: &Learned, items: &[SynthSample]) -> TrainResult<Vec<ProbMap>> {
    items
        .iter()
        .map(|SynthSample { image: img, .. }| {
            detect(det, img, TileOptions { tile: 4096 }, &NullReporter).map_err(det_err)
        })
        .collect()
}

/// Chooses the logit offset on training data: the best F1 on damaged crops among the offsets
/// that flag at most `max_fp` of the pixels of the clean images (or the fewest false positives
/// if none does). The clean images are taken one at a time and only a count per offset is kept,
/// so calibrating on hundreds of whole photos holds one photo's logits at a time. Returns
/// `(offset, counts on the damaged crops)`.
pub fn calibrate(
    net: LoadedNet,
    damaged: &[SynthSample],
    clean: impl IntoIterator<Item = ImageF32>,
    max_fp: f64,
) -> TrainResult<(f32, Counts, LoadedNet)> {
    let mut best: Option<(f32, Counts, f64)> = None;
    let mut det = Learned::from_net(net, 0.0);
    // Logits are computed once; the offset only moves the threshold: p >= 0.5 <=> z >= offset.
    let offsets: Vec<f32> = (0..=128).map(|k| -4.0 + 0.125 * k as f32).collect();
    let logits_d: Vec<Vec<f32>> = damaged
        .iter()
        .map(|s| det.logits(&s.image).map_err(det_err))
        .collect::<TrainResult<_>>()?;
    // above[k]: clean pixels whose logit is at least offsets[k] (flagged at that offset).
    let mut above = vec![0u64; offsets.len()];
    let mut clean_pixels = 0u64;
    for img in clean {
        let mut reached = vec![0u64; offsets.len() + 1];
        for v in det.logits(&img).map_err(det_err)? {
            // Offsets are ascending: v is flagged at exactly the first `p` of them.
            reached[offsets.partition_point(|&o| v >= o)] += 1;
            clean_pixels += 1;
        }
        let mut flagged = 0;
        for k in (0..offsets.len()).rev() {
            flagged += reached[k + 1];
            above[k] += flagged;
        }
    }
    for (k, &off) in offsets.iter().enumerate() {
        let mut c = Counts::default();
        for (z, s) in logits_d.iter().zip(damaged) {
            for (&v, &t) in z.iter().zip(s.mask.data()) {
                c.add(v >= off, t);
            }
        }
        let fpr = above[k] as f64 / clean_pixels.max(1) as f64;
        let better = match &best {
            None => true,
            Some((_, bc, bfp)) => {
                let ok = fpr <= max_fp;
                let bok = *bfp <= max_fp;
                (ok && !bok) || (ok == bok && if ok { c.f1() > bc.f1() } else { fpr < *bfp })
            }
        };
        if better {
            best = Some((off, c, fpr));
        }
    }
    let (off, c, _) = best.unwrap_or((0.0, Counts::default(), 0.0));
    det = Learned::from_net(det.into_net(), off);
    Ok((off, c, det.into_net()))
}

/// Trains (or resumes) the detector on crops of `source`; `on_step` sees every step and
/// returns false to stop. The threshold is calibrated on `cal_source` (photos the training
/// never crops) when given, else on `source`.
/// Writes a checkpoint every `sample_every` steps and, at the end (target, time limit or stop),
/// the checkpoint, `<out>.safetensors` (f16) and `<out>.json`.
pub fn train_detect(
    cfg: &DetectTrainConfig,
    source: &CropSource,
    cal_source: Option<&CropSource>,
    val_source: &CropSource,
    bank: Option<&ArtifactBank>,
    dev: &Device,
    on_step: &mut dyn FnMut(&DetectStep) -> bool,
) -> TrainResult<DetectOutcome> {
    if cfg.crop % 8 != 0 || cfg.crop < 16 || cfg.batch == 0 {
        return Err(TrainError::Invalid(
            "crop must be a multiple of 8 (at least 16) and batch positive".into(),
        ));
    }
    cfg.net.check().map_err(TrainError::Invalid)?;
    if cfg.photo_negatives > 0 && cfg.hard_neg_weight <= 0.0 {
        return Err(TrainError::Invalid(
            "photo negatives are weighted by the hard-negative weight: set it above 0".into(),
        ));
    }
    let (tensors_path, json_path) = ckpt_paths(&cfg.runs_dir);
    let resuming = cfg.resume && json_path.is_file() && tensors_path.is_file();
    let net = match &cfg.init {
        Some(path) if !resuming => {
            LoadedNet::widened_from(cfg.net, path, cfg.seed, dev).map_err(det_err)?
        }
        _ => LoadedNet::fresh(cfg.net, cfg.seed, dev).map_err(det_err)?,
    };
    let mut opt = AdamW::new(net.vars().map_err(det_err)?, cfg.lr, 1e-4)?;
    let mut state = DetectCheckpoint {
        step: 0,
        train_seconds: 0.0,
        net: cfg.net,
        batch: cfg.batch,
        crop: cfg.crop,
        seed: cfg.seed,
        commands: Vec::new(),
        prior_steps: 0,
        prior_train_seconds: 0.0,
        cal_photos: cal_source.map_or(0, CropSource::len),
    };
    if let Some(init) = cfg.init.as_ref().filter(|_| !resuming) {
        // Carry the history of the initialising run (its manifest), so the shipped manifest
        // tells the whole training cost.
        let prior = crate::jsonfile::read::<serde_json::Value>(&init.with_extension("json")).ok();
        if let Some(m) = prior {
            // A manifest written by this command has totals over all its stages; a run's own
            // record (e.g. the GPU twin's) has only `steps` and `train_seconds`.
            let (steps, secs) = (&m["total_steps"], &m["total_train_seconds"]);
            state.prior_steps = steps.as_u64().or(m["steps"].as_u64()).unwrap_or(0);
            state.prior_train_seconds =
                secs.as_f64().or(m["train_seconds"].as_f64()).unwrap_or(0.0);
            if let Some(cmds) = m["commands"].as_array() {
                state.commands.extend(
                    cmds.iter()
                        .filter_map(|c| c.as_str())
                        .map(|c| format!("(initialising run) {c}")),
                );
            }
        }
    }
    if resuming {
        let saved: DetectCheckpoint = read_json(&json_path)?;
        if saved.net != cfg.net
            || saved.batch != cfg.batch
            || saved.crop != cfg.crop
            || saved.seed != cfg.seed
            || saved.cal_photos != state.cal_photos
        {
            return Err(TrainError::Invalid(format!(
                "checkpoint in {} has other settings ({:?}, batch {}, crop {}, seed {}, {} \
                 calibration photos)",
                cfg.runs_dir.display(),
                saved.net,
                saved.batch,
                saved.crop,
                saved.seed,
                saved.cal_photos
            )));
        }
        let tensors = candle_core::safetensors::load(&tensors_path, dev)?;
        net.set_from(&tensors, "param.", &tensors_path)
            .map_err(det_err)?;
        opt.load_state(&tensors, saved.step)?;
        state = saved;
    }
    state.commands.push(cfg.command.clone());
    let val_items = synth_items(
        val_source,
        bank,
        32,
        128,
        cfg.seed ^ 0x5a1,
        0,
        TrainAugment::default(),
    )?;
    let val_batch = DetectBatch::from_items(&val_items, dev)?;
    let session = Instant::now();
    let start_step = state.step;
    let base_seconds = state.train_seconds;
    let mut last_val: Option<Counts> = None;
    let mut stopped = false;
    while state.step < cfg.steps {
        let step = state.step;
        let lr = if step < cfg.warmup {
            cfg.lr * (step + 1) as f64 / cfg.warmup as f64
        } else {
            let t = (step - cfg.warmup) as f64 / (cfg.steps - cfg.warmup).max(1) as f64;
            cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
        };
        opt.lr = lr;
        let items = synth_items(
            source,
            bank,
            cfg.batch,
            cfg.crop,
            cfg.seed,
            step,
            cfg.augment,
        )?;
        let batch = DetectBatch::from_items(&items, dev)?;
        let logits = net.net.forward(&batch.input)?;
        let (loss, bce, dice) = detect_loss(
            &logits,
            &batch.target,
            &batch.valid,
            cfg.pos_weight,
            cfg.dice_weight,
        )?;
        let (loss, hard) = if cfg.hard_neg_weight > 0.0 {
            let (term, hard) = hard_negative_loss(&logits, &batch.far, cfg.hard_neg_frac)?;
            ((loss + (term * cfg.hard_neg_weight)?)?, hard)
        } else {
            (loss, 0.0)
        };
        let loss = if cfg.photo_negatives > 0 {
            let seed = mix(cfg.seed ^ 0x9e6, step);
            let (term, _) = photo_negative_loss(
                &net.net,
                source,
                cfg.photo_negatives,
                cfg.hard_neg_frac,
                seed,
                dev,
            )?;
            (loss + (term * cfg.hard_neg_weight)?)?
        } else {
            loss
        };
        opt.backward_step(&loss)?;
        state.step += 1;
        let elapsed = session.elapsed().as_secs_f64();
        state.train_seconds = base_seconds + elapsed;
        let steps_per_sec = (state.step - start_step) as f64 / elapsed.max(1e-9);
        let due = state.step % cfg.sample_every.max(1) == 0;
        if due {
            let z = net.net.forward(&val_batch.input)?;
            let zv: Vec<f32> = z.flatten_all()?.to_vec1()?;
            let tv: Vec<f32> = val_batch.target.flatten_all()?.to_vec1()?;
            let mut c = Counts::default();
            for (a, b) in zv.iter().zip(&tv) {
                c.add(*a >= 0.0, *b > 0.5);
            }
            last_val = Some(c);
            save_checkpoint(&net, &opt, &state, &cfg.runs_dir)?;
        }
        let report = DetectStep {
            step: state.step,
            total: cfg.steps,
            loss: bce + dice * cfg.dice_weight as f32 + hard * cfg.hard_neg_weight as f32,
            bce,
            dice,
            hard,
            steps_per_sec,
            val: if due { last_val } else { None },
        };
        if !on_step(&report) {
            stopped = true;
            break;
        }
        if cfg.max_seconds.is_some_and(|m| elapsed >= m) {
            stopped = true;
            break;
        }
    }
    save_checkpoint(&net, &opt, &state, &cfg.runs_dir)?;
    let steps_per_sec =
        (state.step - start_step) as f64 / session.elapsed().as_secs_f64().max(1e-9);
    // Calibrate the threshold on the set-aside calibration photos, else the training photos
    // (never on the validation ones): damaged crops for F1, the untouched photos for the
    // false-positive budget (the issue's target is 0.1%).
    let cal = cal_source.unwrap_or(source);
    let cal_damaged = synth_items(
        cal,
        bank,
        64,
        128,
        cfg.seed ^ 0xca1,
        0,
        TrainAugment::default(),
    )?;
    let cal_clean = (0..cal.len()).filter_map(|i| cal.photo(i));
    let params = net.param_count();
    let (offset, _, net) = calibrate(net, &cal_damaged, cal_clean, CAL_MAX_FP)?;
    let det = Learned::from_net(net, offset);
    let mut sweep = Sweep::default();
    for (p, s) in crop_probs(&det, &val_items)?.iter().zip(&val_items) {
        sweep.add(p.data(), &s.mask);
    }
    let val = sweep.at(128);
    let out_weights = with_ext(&cfg.out, "safetensors");
    if let Some(parent) = out_weights.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let net = det.into_net();
    net.save_f16(&out_weights).map_err(det_err)?;
    let manifest = serde_json::json!({
        "id": crate::detect::learned::MODEL_ID,
        "family": "detector",
        "architecture": architecture(&cfg.net),
        "config": cfg.net,
        "params": params,
        "input": format!("any size RGB or grey; tiled 1024 px + {} px halo, 8-aligned (exact)", cfg.net.halo()),
        "output": "per-pixel damage probability sigmoid(logit - logit_offset)",
        "logit_offset": offset,
        "logit_offset_how": format!("best F1 on 64 damaged 128 px crops of the calibration photos among offsets (step 0.125) that flag at most {}% of the pixels of the {} calibration photos, untouched and whole; {}", 100.0 * CAL_MAX_FP, cal.len(), if cal_source.is_some() { "the calibration photos are training-set photos that this stage never cropped" } else { "the calibration photos are the training photos" }),
        "ground_truth": format!("synthetic damage is the set of pixels whose colour the composited damage changed by more than {VISIBLE_CHANGE} (max over channels, 0..1 scale, after the crop's tone, before grain), blur tails included; pixels changed by {FAINT_CHANGE} to {VISIBLE_CHANGE} carry no loss (ignored) and count as clean in the scores"),
        "data": cfg.data_desc,
        "data_license": cfg.data_license,
        "objective": format!("{}*BCE(logits, mask) with damage pixels weighted {} + {}*soft Dice over the batch{}; AdamW lr {} (warm-up {} steps, cosine to lr/10), wd 1e-4, batch {}, crops {}, seed {}", 1, cfg.pos_weight, cfg.dice_weight, if cfg.hard_neg_weight > 0.0 { format!(" + {}*mean BCE of the top {}% scoring clean pixels farther than {HARD_NEG_MARGIN} px from damage (hard negatives){}", cfg.hard_neg_weight, 100.0 * cfg.hard_neg_frac, if cfg.photo_negatives > 0 { format!(", and of the top {}% of {} untouched whole training photos per step", 100.0 * cfg.hard_neg_frac, cfg.photo_negatives) } else { String::new() }) } else { String::new() }, cfg.lr, cfg.warmup, cfg.batch, cfg.crop, cfg.seed),
        "commands": state.commands,
        "steps": state.step,
        "target_steps": cfg.steps,
        "train_seconds": state.train_seconds,
        "init": cfg.init.as_ref().map(|p| p.display().to_string()),
        "prior_steps": state.prior_steps,
        "prior_train_seconds": state.prior_train_seconds,
        "total_steps": state.prior_steps + state.step,
        "total_train_seconds": state.prior_train_seconds + state.train_seconds,
        "hardware": format!("CPU, {} threads (shared machine)", rayon::current_num_threads()),
        "train_val": {
            "what": "32 fixed damaged 128 px crops of the validation photos, sensitivity 0.5, no dilation",
            "precision": val.precision(),
            "recall": val.recall(),
            "f1": val.f1(),
            "iou": val.iou(),
        },
        "weights_format": "f16 safetensors (f32 checkpoint in the runs folder)",
    });
    let json_path = with_ext(&cfg.out, "json");
    write_json(&json_path, &manifest)?;
    Ok(DetectOutcome {
        steps: state.step,
        finished: !stopped && state.step >= cfg.steps,
        train_seconds: state.train_seconds,
        steps_per_sec,
        params,
        logit_offset: offset,
        val,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A smooth gradient with a fine pattern, a stand-in photo for synthetic damage.
    pub(crate) fn photo(w: usize, h: usize) -> ImageF32 {
        ImageF32::from_fn(w, h, 3, |x, y, c| {
            let t = ((x * 3 + y * 5 + c * 7) % 11) as f32 / 11.0;
            0.25 + 0.4 * (x as f32 / w as f32) + 0.1 * t
        })
    }

    #[test]
    fn every_damage_label_is_traced_to_what_drew_it() {
        let clean = photo(96, 96);
        let cracks = TrainAugment {
            cracks: 1.0,
            ..TrainAugment::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..24 {
            for augment in [TrainAugment::default(), cracks] {
                let (s, truth) = synth_parts(&clean, None, seed, true, augment);
                assert_eq!(truth.source.len(), 96 * 96);
                for (i, &k) in truth.source.iter().enumerate() {
                    if s.mask.data()[i] {
                        // Blur tails included: every label has a source.
                        assert_ne!(k, DamageSource::None, "seed {seed} pixel {i}");
                        seen.insert(k);
                    }
                }
                if s.mask.is_empty() {
                    assert!(truth.source.iter().all(|&k| k == DamageSource::None));
                }
            }
        }
        for k in [
            DamageSource::FilmScratch,
            DamageSource::Crack,
            DamageSource::Dust,
            DamageSource::Hair,
        ] {
            assert!(seen.contains(&k), "{k:?} never traced: {seen:?}");
        }
        assert!(!seen.contains(&DamageSource::FilmDash), "{seen:?}");
    }

    #[test]
    fn labels_are_the_visibly_changed_pixels_not_the_footprint() {
        let clean = photo(96, 96);
        let (mut faint_footprint, mut outside, mut damaged) = (0, 0, 0);
        for seed in 0..24 {
            let (s, truth) = synth_parts(&clean, None, seed, false, TrainAugment::default());
            let (reference, changes) = (truth.reference, truth.change);
            assert!(!truth.grain);
            let (again, _) = synth_parts(&clean, None, seed, false, TrainAugment::default());
            // With grain the labels and the measured change are the same.
            let (grainy, grainy_truth) =
                synth_parts(&clean, None, seed, true, TrainAugment::default());
            assert_eq!(grainy.mask, s.mask, "seed {seed}: grain moved the labels");
            assert_eq!(
                grainy_truth.change, changes,
                "seed {seed}: grain moved the change"
            );
            assert_eq!(grainy_truth.reference, reference);
            assert_eq!(s.mask, again.mask, "seed {seed} is not deterministic");
            assert_eq!(changes.len(), 96 * 96);
            for (i, &measured) in changes.iter().enumerate() {
                let d = change(&s.image, &reference, i);
                assert_eq!(measured, d, "seed {seed} pixel {i}");
                assert_eq!(
                    s.mask.data()[i],
                    d > VISIBLE_CHANGE,
                    "seed {seed} pixel {i}"
                );
                assert_eq!(
                    s.ignore.data()[i],
                    d > FAINT_CHANGE && d <= VISIBLE_CHANGE,
                    "seed {seed} pixel {i}"
                );
            }
            assert_eq!(s.stats.visible, s.mask.count() as u64);
            assert_eq!(s.stats.ignored, s.ignore.count() as u64);
            faint_footprint += s.stats.footprint_below_003;
            outside += s.stats.visible_outside_footprint;
            damaged += u64::from(!s.mask.is_empty());
        }
        // The two ways the footprint and the visible change disagree both occur.
        assert!(
            faint_footprint > 0 && outside > 0,
            "{faint_footprint} {outside}"
        );
        assert!(damaged >= 16, "only {damaged} of 24 crops damaged");
    }

    #[test]
    fn film_dashes_are_short_streaks_along_one_direction_and_training_only() {
        let clean = ImageF32::from_fn(96, 96, 3, |_, _, _| 0.5);
        let (mut drawn, trials) = (0, 60);
        for seed in 0..trials {
            let mut diff = vec![0f32; 96 * 96 * 3];
            film_dashes(&mut diff, &clean, seed, 0.5);
            let changed: Vec<(usize, usize)> = (0..96 * 96)
                .filter(|i| diff[i * 3] != 0.0)
                .map(|i| (i % 96, i / 96))
                .collect();
            if changed.is_empty() {
                continue;
            }
            drawn += 1;
            // Lighter or darker by at most half the way to white or black (0.5 here).
            assert!(diff.iter().all(|d| d.abs() <= 0.25 + 1e-6), "seed {seed}");
            // Short and thin: 3 to 14 dashes of at most 40 x 3 px (plus soft ends).
            assert!(
                changed.len() <= 14 * 42 * 3,
                "seed {seed}: {}",
                changed.len()
            );
            // All along one direction: nearly every changed pixel continues the dash along it.
            let horizontal = changed
                .iter()
                .filter(|&&(x, y)| {
                    changed.contains(&(x + 1, y)) || (x > 0 && changed.contains(&(x - 1, y)))
                })
                .count();
            let vertical = changed
                .iter()
                .filter(|&&(x, y)| {
                    changed.contains(&(x, y + 1)) || (y > 0 && changed.contains(&(x, y - 1)))
                })
                .count();
            assert!(
                horizontal.max(vertical) * 10 >= changed.len() * 9,
                "seed {seed}: {horizontal} {vertical} of {}",
                changed.len()
            );
        }
        assert!((15..=45).contains(&drawn), "{drawn} of {trials}");
        // Off (the held-out set, validation, calibration): the sample is synth_sample_full's.
        let photo = ImageF32::from_fn(64, 64, 3, |x, y, c| {
            ((x * 7 + y * 3 + c) % 13) as f32 / 13.0
        });
        for seed in 0..6 {
            let a = synth_sample_full(&photo, None, seed);
            let b = synth_sample_train(&photo, None, seed, TrainAugment::default());
            assert_eq!((a.image, a.mask), (b.image, b.mask));
        }
        // On: some crops gain damage pixels.
        let dashes = TrainAugment {
            dashes: 1.0,
            ..TrainAugment::default()
        };
        assert!(damage_gained(&photo, dashes) > 0);
    }

    /// The damage pixels that `augment` adds to [`synth_sample_full`]'s over 12 seeds.
    fn damage_gained(photo: &ImageF32, augment: TrainAugment) -> usize {
        (0..12)
            .map(|seed| {
                let plain = synth_sample_full(photo, None, seed);
                let more = synth_sample_train(photo, None, seed, augment);
                more.mask.count().saturating_sub(plain.mask.count())
            })
            .sum()
    }

    #[test]
    fn emulsion_cracks_are_few_connected_thin_trees_and_training_only() {
        let n = 128;
        let clean = ImageF32::from_fn(n, n, 3, |_, _, _| 0.5);
        let (mut drawn, mut long, trials) = (0, 0, 60);
        for seed in 0..trials {
            let mut diff = vec![0f32; n * n * 3];
            emulsion_cracks(&mut diff, &clean, seed, 0.5);
            let cracked = Mask::from_fn(n, n, |x, y| diff[(y * n + x) * 3] != 0.0);
            if cracked.count() == 0 {
                continue;
            }
            drawn += 1;
            // At most 90% of the way to white or black (0.5 here).
            assert!(diff.iter().all(|d| d.abs() <= 0.45 + 1e-6), "seed {seed}");
            // One to three trees, each in one piece (branches start on their crack).
            let comps = crate::restore::pipeline::components(&cracked);
            assert!(
                (1..=3).contains(&comps.len()),
                "seed {seed}: {}",
                comps.len()
            );
            // Thin lines, not patches: a 5x5 erosion leaves next to nothing (forks and crossings).
            let core = (2..n - 2)
                .flat_map(|y| (2..n - 2).map(move |x| (x, y)))
                .filter(|&(x, y)| {
                    (y - 2..=y + 2).all(|yy| (x - 2..=x + 2).all(|xx| cracked.get(xx, yy)))
                })
                .count();
            assert!(
                core * 20 <= cracked.count(),
                "seed {seed}: {core} of {}",
                cracked.count()
            );
            // Long: most networks span a good part of the crop.
            let (xs, ys): (Vec<usize>, Vec<usize>) = (0..n * n)
                .filter(|&i| cracked.data()[i])
                .map(|i| (i % n, i / n))
                .unzip();
            let span = |v: &[usize]| v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0);
            if span(&xs).max(span(&ys)) >= 32 {
                long += 1;
            }
        }
        assert!((15..=45).contains(&drawn), "{drawn} of {trials}");
        assert!(long * 10 >= drawn * 8, "{long} of {drawn} span 32 px");
        // On (off is synth_sample_full's, tested with the dashes), some crops gain damage.
        let photo = photo(64, 64);
        let cracks = TrainAugment {
            cracks: 1.0,
            ..TrainAugment::default()
        };
        assert!(damage_gained(&photo, cracks) > 0);
    }

    #[test]
    fn vivid_colours_turn_every_hue_alike_and_raise_saturation_but_keep_greys() {
        // Muted colours (no clamping even at the largest gain) and a grey first column.
        let img = ImageF32::from_fn(24, 8, 3, |x, y, c| {
            if x == 0 {
                return 0.3 + 0.05 * y as f32;
            }
            [0.52, 0.48, 0.45][c] + 0.012 * ((x + 2 * y + 3 * c) % 5) as f32
        });
        let split = |px: &[f32]| {
            let grey = px.iter().sum::<f32>() / 3.0;
            (grey, [px[0] - grey, px[1] - grey, px[2] - grey])
        };
        let norm = |v: [f32; 3]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        let mut turned = 0;
        for seed in 0..200 {
            let mut out = img.clone();
            vivid_colours(&mut out, seed, 0.5);
            if out == img {
                continue;
            }
            turned += 1;
            let (mut gain, mut cos) = (None, None);
            for (a, b) in img.data().chunks_exact(3).zip(out.data().chunks_exact(3)) {
                let ((ga, va), (gb, vb)) = (split(a), split(b));
                assert!((ga - gb).abs() < 1e-5, "seed {seed}: grey level kept");
                if norm(va) < 1e-6 {
                    assert!(norm(vb) < 1e-5, "seed {seed}: a grey stays grey");
                    continue;
                }
                let g = norm(vb) / norm(va);
                assert!(
                    (1.3 - 1e-3..=2.5 + 1e-3).contains(&g),
                    "seed {seed}: gain {g}"
                );
                assert!(
                    (g - *gain.get_or_insert(g)).abs() < 1e-3,
                    "seed {seed}: one gain"
                );
                let c = va.iter().zip(&vb).map(|(x, y)| x * y).sum::<f32>() / norm(va) / norm(vb);
                assert!(
                    (c - *cos.get_or_insert(c)).abs() < 1e-3,
                    "seed {seed}: one turn"
                );
            }
        }
        assert!((70..=130).contains(&turned), "{turned} of 200 at rate 0.5");
        let mut out = img.clone();
        vivid_colours(&mut out, 3, 0.0);
        assert_eq!(out, img, "off");
        // On in training crops only (validation and calibration pass the default, off).
        let source = photos(3);
        let draw = |vivid| {
            let aug = TrainAugment {
                vivid,
                ..TrainAugment::default()
            };
            synth_items(&source, None, 4, 16, 5, 0, aug).unwrap_or_else(|e| panic!("{e}"))
        };
        let (plain, vivid) = (draw(0.0), draw(1.0));
        assert_eq!(plain.len(), 4);
        // Same crops, same damage draws, other colours.
        for (a, b) in plain.iter().zip(&vivid) {
            assert_ne!(a.image, b.image);
        }
    }

    /// The crops of `img` that the scene painter `paint` (image, seed, rate) changes among 100
    /// seeds at rate 0.5, with their seeds, after checking that it is a function of the seed,
    /// stays in [0, 1], paints about half the crops, and leaves a crop alone when off (rate 0)
    /// or too small (16 px wide).
    fn painted_crops(img: &ImageF32, paint: fn(&mut ImageF32, u64, f64)) -> Vec<(u64, ImageF32)> {
        let mut painted = Vec::new();
        for seed in 0..100 {
            let mut out = img.clone();
            paint(&mut out, seed, 0.5);
            let mut again = img.clone();
            paint(&mut again, seed, 0.5);
            assert_eq!(out, again, "seed {seed}: a function of the seed");
            if out != *img {
                assert!(out.data().iter().all(|v| (0.0..=1.0).contains(v)));
                painted.push((seed, out));
            }
        }
        let n = painted.len();
        assert!((30..=70).contains(&n), "{n} of 100 at rate 0.5");
        for (w, h, rate) in [(96, 64, 0.0), (16, 64, 1.0)] {
            let img = photo(w, h);
            let mut out = img.clone();
            paint(&mut out, 1, rate);
            assert_eq!(out, img, "off, or a crop too small");
        }
        painted
    }

    #[test]
    fn printed_marks_are_painted_into_about_their_share_of_crops() {
        let img = photo(96, 64);
        for (seed, out) in painted_crops(&img, printed_marks) {
            let changed = (0..96 * 64)
                .filter(|&i| (0..3).any(|c| out.data()[i * 3 + c] != img.data()[i * 3 + c]))
                .count();
            // At least a glyph line's strokes, never the whole crop.
            assert!(
                (20..96 * 64 * 9 / 10).contains(&changed),
                "seed {seed}: {changed}"
            );
        }
    }

    #[test]
    fn garment_patches_are_shaded_cloth_painted_into_about_their_share_of_crops() {
        let img = ImageF32::from_fn(96, 96, 3, |_, _, _| 0.5);
        let default_size: fn(&mut ImageF32, u64, f64) = |img, seed, rate| {
            garment_patch(img, seed, rate, 0.0);
        };
        for (seed, out) in painted_crops(&img, default_size) {
            // The patch: one blob, never the whole crop (the grey background is exactly 0.5).
            let changed =
                |x: usize, y: usize| (0..3).any(|c| out.data()[(y * 96 + x) * 3 + c] != 0.5);
            let count = (0..96 * 96).filter(|&i| changed(i % 96, i / 96)).count();
            assert!(
                (40..96 * 96 * 9 / 10).contains(&count),
                "seed {seed}: {count} pixels"
            );
            // Shaded, not flat (a stain or brush stroke of the damage is one flat colour): the
            // inner pixels, away from the anti-aliased outline, are not all one value.
            let inner: Vec<f32> = (1..95)
                .flat_map(|y| (1..95).map(move |x| (x, y)))
                .filter(|&(x, y)| (0..9).all(|k| changed(x + k % 3 - 1, y + k / 3 - 1)))
                .map(|(x, y)| out.data()[(y * 96 + x) * 3])
                .collect();
            let (lo, hi) = inner
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(
                inner.len() < 10 || hi - lo > 0.02,
                "seed {seed}: flat patch {lo}..{hi} over {} pixels",
                inner.len()
            );
        }
    }

    #[test]
    fn larger_garment_boxes_paint_larger_patches() {
        let img = ImageF32::from_fn(128, 128, 3, |_, _, _| 0.5);
        let sizes = |min_side: f32| -> Vec<usize> {
            (0..60)
                .map(|seed| {
                    let mut out = img.clone();
                    garment_patch(&mut out, seed, 1.0, min_side);
                    out.data()
                        .chunks(3)
                        .filter(|px| px.iter().any(|&v| v != 0.5))
                        .count()
                })
                .collect()
        };
        let (small, large) = (sizes(0.0), sizes(50.0));
        assert_eq!(small, sizes(GARMENT_MIN_SIDE), "0 means the default");
        // Boxes of 50 px and more hold polygons of radius 15 px and more, mostly inside.
        assert!(large.iter().all(|&n| n >= 150), "{large:?}");
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
        assert!(
            mean(&large) > 1.5 * mean(&small),
            "{} vs {}",
            mean(&large),
            mean(&small)
        );
    }

    #[test]
    fn drawn_tells_which_crops_a_training_only_drawing_draws_on() {
        let clean = photo(96, 96);
        let changes = |draw: &dyn Fn(&mut [f32])| {
            let mut diff = vec![0.0; 96 * 96 * 3];
            draw(&mut diff);
            diff.iter().any(|&v| v != 0.0)
        };
        let mut both = [0; 2];
        for seed in 0..60 {
            for rate in [0.0, 0.5] {
                let dashes = changes(&|d| film_dashes(d, &clean, seed, rate));
                assert_eq!(
                    drawn(seed, rate),
                    dashes,
                    "dashes, seed {seed}, rate {rate}"
                );
                let cracks = changes(&|d| emulsion_cracks(d, &clean, seed, rate));
                assert_eq!(
                    drawn(seed, rate),
                    cracks,
                    "cracks, seed {seed}, rate {rate}"
                );
            }
            let scratches = changes(&|d| film_scratches(d, &clean, seed));
            assert_eq!(
                drawn(seed, FILM_SCRATCH_RATE),
                scratches,
                "scratches, seed {seed}"
            );
            both[usize::from(scratches)] += 1;
        }
        assert!(both[0] > 0 && both[1] > 0, "{both:?}");
    }

    #[test]
    fn film_scratches_are_long_faint_lines_on_about_their_share_of_crops() {
        let clean = ImageF32::from_fn(64, 80, 3, |_, _, _| 0.5);
        let mut drawn = 0;
        let trials = 200;
        for seed in 0..trials {
            let mut diff = vec![0f32; 64 * 80 * 3];
            film_scratches(&mut diff, &clean, seed);
            if diff.iter().all(|&d| d == 0.0) {
                continue;
            }
            drawn += 1;
            // Lighter or darker by at most 25% of the way to white or black (0.5 here).
            assert!(diff.iter().all(|d| d.abs() <= 0.125 + 1e-6), "seed {seed}");
            // Thin lines that run a long way: the rows (vertical lines) or columns (horizontal)
            // they touch outnumber the pixels across them many times over.
            let touched = |f: &dyn Fn(usize, usize) -> usize, n: usize| {
                let mut hit = vec![false; n];
                for y in 0..80 {
                    for x in 0..64 {
                        if diff[(y * 64 + x) * 3] != 0.0 {
                            hit[f(x, y)] = true;
                        }
                    }
                }
                hit.iter().filter(|&&h| h).count()
            };
            let rows = touched(&|_, y| y, 80);
            let cols = touched(&|x, _| x, 64);
            let changed = diff.chunks_exact(3).filter(|p| p[0] != 0.0).count();
            assert!(
                changed <= 4 * 3 * rows.max(cols),
                "seed {seed}: {changed} px over {rows} rows, {cols} columns"
            );
            assert!(
                rows.max(cols) >= 16,
                "seed {seed}: {rows} rows, {cols} columns"
            );
        }
        let share = drawn as f64 / trials as f64;
        assert!(
            (share - FILM_SCRATCH_RATE).abs() < 0.1,
            "drawn on {share} of crops"
        );
        // Tiny crops work too (no empty random ranges).
        for (w, h) in [(1, 1), (1, 5), (7, 2), (3, 9)] {
            let tiny = ImageF32::from_fn(w, h, 3, |_, _, _| 0.5);
            for seed in 0..40 {
                let mut diff = vec![0f32; w * h * 3];
                film_scratches(&mut diff, &tiny, seed);
                assert!(diff.iter().all(|d| d.abs() <= 0.125 + 1e-6));
            }
        }
    }

    #[test]
    fn weights_of_ignored_pixels_do_not_move_the_loss() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[[[2.0f32, -1.0], [0.5, 3.0]]]], &dev)
            .and_then(|t| t.reshape((1, 1, 2, 2)))
            .unwrap_or_else(|e| panic!("{e}"));
        let target = Tensor::new(&[1.0f32, 0.0, 0.0, 1.0], &dev)
            .and_then(|t| t.reshape((1, 1, 2, 2)))
            .unwrap_or_else(|e| panic!("{e}"));
        let all = Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &dev)
            .unwrap_or_else(|e| panic!("{e}"));
        let skip_third = Tensor::new(&[1.0f32, 1.0, 0.0, 1.0], &dev)
            .and_then(|t| t.reshape((1, 1, 2, 2)))
            .unwrap_or_else(|e| panic!("{e}"));
        let (_, b_all, _) =
            detect_loss(&logits, &target, &all, 3.0, 0.5).unwrap_or_else(|e| panic!("{e}"));
        let (_, b_skip, _) =
            detect_loss(&logits, &target, &skip_third, 3.0, 0.5).unwrap_or_else(|e| panic!("{e}"));
        // The third pixel (logit 0.5, clean) costs ln(1 + e^0.5) = 0.974 of BCE; dropping it
        // lowers the mean by that over the 4 pixels.
        let expected = (1.0f32 + 0.5f32.exp()).ln() / 4.0;
        assert!((b_all - b_skip - expected).abs() < 1e-5, "{b_all} {b_skip}");
    }

    #[test]
    fn hard_negative_term_is_the_mean_bce_of_the_top_far_clean_pixels() {
        let dev = Device::Cpu;
        let z = candle_core::Var::from_vec(
            vec![5.0f32, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, 9.0],
            (1, 1, 2, 4),
            &dev,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // The last pixel scores highest but lies next to damage: not a candidate.
        let far = Tensor::from_vec(vec![1.0f32, 1., 1., 1., 1., 1., 1., 0.], (1, 1, 2, 4), &dev)
            .unwrap_or_else(|e| panic!("{e}"));
        // 7 candidates, 30% -> the top 3 (logits 5, 4, 3).
        let (term, v) =
            hard_negative_loss(z.as_tensor(), &far, 0.3).unwrap_or_else(|e| panic!("{e}"));
        let softplus = |x: f32| (1.0 + x.exp()).ln();
        let expected = (softplus(5.0) + softplus(4.0) + softplus(3.0)) / 3.0;
        assert!((v - expected).abs() < 1e-4, "{v} vs {expected}");
        let grads = term.backward().unwrap_or_else(|e| panic!("{e}"));
        let g: Vec<f32> = grads
            .get(z.as_tensor())
            .and_then(|g| g.flatten_all().ok())
            .and_then(|g| g.to_vec1().ok())
            .unwrap_or_else(|| panic!("no gradient"));
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        for (i, &gi) in g.iter().enumerate() {
            let want = if i < 3 {
                sigmoid([5.0, 4.0, 3.0][i]) / 3.0
            } else {
                0.0
            };
            assert!((gi - want).abs() < 1e-4, "pixel {i}: {gi} vs {want}");
        }
        // No far clean pixel: no term.
        let none = far.zeros_like().unwrap_or_else(|e| panic!("{e}"));
        let (_, v0) =
            hard_negative_loss(z.as_tensor(), &none, 0.3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v0, 0.0);
    }

    #[test]
    fn encoded_labels_carry_what_the_batch_derives() {
        let dev = Device::Cpu;
        let clean = photo(64, 48);
        // Seeds until one sample has damage, ignored and near-clean pixels all at once.
        let s = (0..200u64)
            .map(|seed| synth_sample_full(&clean, None, seed))
            .find(|s| s.stats.visible > 0 && s.ignore.data().iter().any(|&v| v))
            .unwrap_or_else(|| panic!("no sample with damage and ignored pixels"));
        let mut bytes = Vec::new();
        encode_sample(&s, &mut bytes);
        let (w, h) = (64, 48);
        assert_eq!(bytes.len(), w * h * 4);
        let (img, labels) = bytes.split_at(w * h * 3);
        for (b, v) in img.iter().zip(s.image.data()) {
            assert!((f32::from(*b) / 255.0 - v).abs() <= 0.5 / 255.0 + 1e-6);
        }
        let batch = DetectBatch::from_items(std::slice::from_ref(&s), &dev)
            .unwrap_or_else(|e| panic!("{e}"));
        let flat = |t: &Tensor| -> Vec<f32> {
            t.flatten_all()
                .and_then(|t| t.to_vec1())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (target, valid, far) = (flat(&batch.target), flat(&batch.valid), flat(&batch.far));
        let plane = (w / 2) * (h / 2);
        let mut seen = [0usize; 4];
        for y in 0..h {
            for x in 0..w {
                let l = labels[y * w + x];
                seen[usize::from(l)] += 1;
                let k = (2 * (y % 2) + x % 2) * plane + (y / 2) * (w / 2) + x / 2;
                assert_eq!(target[k] > 0.5, l == LABEL_DAMAGE, "target at ({x}, {y})");
                assert_eq!(valid[k] > 0.5, l != LABEL_IGNORED, "valid at ({x}, {y})");
                assert_eq!(far[k] > 0.5, l == LABEL_FAR_CLEAN, "far at ({x}, {y})");
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "every label occurs: {seen:?}");
    }

    #[test]
    fn photo_negatives_are_the_hard_negative_term_of_whole_untouched_photos() {
        let dev = Device::Cpu;
        let net = LoadedNet::fresh(tiny_config(Path::new("unused"), 4).net, 3, &dev)
            .unwrap_or_else(|e| panic!("{e}"));
        let source = CropSource::new(
            [(40u32, 24u32), (24, 32), (16, 16)]
                .iter()
                .enumerate()
                .map(|(i, &(w, h))| {
                    image::RgbImage::from_fn(w, h, |x, y| {
                        image::Rgb([(x * 5) as u8, (y * 7) as u8, (i * 90) as u8])
                    })
                })
                .collect(),
        );
        let term = |n: usize, seed: u64| {
            photo_negative_loss(&net.net, &source, n, 0.05, seed, &dev)
                .unwrap_or_else(|e| panic!("{e}"))
                .1
        };
        assert_eq!(term(0, 1), 0.0);
        // One photo: the hard-negative term over all its pixels, the photo drawn by the seed.
        let mut rng = StdRng::seed_from_u64(9);
        let photo = source
            .photo(rng.random_range(0..source.len()))
            .unwrap_or_else(|| panic!("no photo"));
        let (data, hw, hh) = fold(&photo);
        let x = Tensor::from_vec(data, (1, 12, hh, hw), &dev).unwrap_or_else(|e| panic!("{e}"));
        let z = net.net.forward(&x).unwrap_or_else(|e| panic!("{e}"));
        let ones = z.ones_like().unwrap_or_else(|e| panic!("{e}"));
        let want = hard_negative_loss(&z, &ones, 0.05)
            .unwrap_or_else(|e| panic!("{e}"))
            .1;
        assert!(want > 0.0);
        assert_eq!(term(1, 9), want);
        assert_eq!(term(3, 4), term(3, 4), "a function of the seed");
        // Gradients reach the network through it.
        let (t, _) = photo_negative_loss(&net.net, &source, 2, 0.05, 5, &dev)
            .unwrap_or_else(|e| panic!("{e}"));
        let grads = t.backward().unwrap_or_else(|e| panic!("{e}"));
        let vars = net.vars().unwrap_or_else(|e| panic!("{e}"));
        assert!(vars.iter().any(|(_, v)| grads.get(v.as_tensor()).is_some()));
    }

    #[test]
    fn far_marks_clean_pixels_away_from_damage_and_ignored_ones() {
        let dev = Device::Cpu;
        let mut mask = Mask::new(16, 16);
        mask.set(8, 8, true);
        let mut ignore = Mask::new(16, 16);
        ignore.set(0, 0, true);
        let item = SynthSample {
            image: ImageF32::new(16, 16, 3),
            mask,
            ignore,
            stats: LabelStats::default(),
        };
        let b = DetectBatch::from_items(&[item], &dev).unwrap_or_else(|e| panic!("{e}"));
        // Unfold the 2x2-folded map back to pixels: channel 2*dy + dx at (x/2, y/2).
        let f: Vec<f32> = b
            .far
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .unwrap_or_else(|e| panic!("{e}"));
        let at = |x: usize, y: usize| f[(2 * (y % 2) + x % 2) * 64 + (y / 2) * 8 + x / 2];
        assert_eq!(at(0, 0), 0.0, "ignored pixel");
        assert_eq!(at(8, 8), 0.0, "damage");
        assert_eq!(at(8 + HARD_NEG_MARGIN, 8), 0.0, "within the margin");
        assert_eq!(at(8 + HARD_NEG_MARGIN + 1, 8), 1.0, "beyond the margin");
        assert_eq!(at(15, 0), 1.0, "far clean pixel");
    }

    fn tiny_config(dir: &Path, base: usize) -> DetectTrainConfig {
        DetectTrainConfig {
            net: DetectNetConfig {
                base,
                mid: 0,
                deep: 0,
                blocks: 0,
                fine: 0,
            },
            steps: 1,
            batch: 1,
            crop: 16,
            lr: 1e-3,
            warmup: 1,
            pos_weight: 3.0,
            dice_weight: 0.5,
            hard_neg_weight: 1.0,
            hard_neg_frac: 0.01,
            augment: TrainAugment::default(),
            photo_negatives: 0,
            seed: 1,
            sample_every: 1,
            runs_dir: dir.join("runs"),
            out: dir.join("w/detect-damage"),
            resume: false,
            init: None,
            max_seconds: None,
            data_desc: String::new(),
            data_license: String::new(),
            command: String::new(),
        }
    }

    fn photos(n: u8) -> CropSource {
        CropSource::new(
            (0..n)
                .map(|i| {
                    image::RgbImage::from_fn(32, 32, |x, y| {
                        image::Rgb([i * 20, x as u8 * 8, y as u8 * 8])
                    })
                })
                .collect(),
        )
    }

    #[test]
    fn photo_negatives_without_a_hard_negative_weight_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let source = photos(2);
        let mut cfg = tiny_config(dir.path(), 4);
        cfg.photo_negatives = 1;
        cfg.hard_neg_weight = 0.0;
        assert!(refusal(&cfg, &source).contains("hard-negative weight"));
    }

    /// The message of the `Invalid` error that training with `cfg` stops with.
    fn refusal(cfg: &DetectTrainConfig, source: &CropSource) -> String {
        let r = train_detect(cfg, source, None, source, None, &Device::Cpu, &mut |_| true);
        match r {
            Err(TrainError::Invalid(m)) => m,
            other => panic!("not refused as invalid: {:?}", other.err()),
        }
    }

    #[test]
    fn training_refuses_implausible_sizes_before_allocating() {
        let dir =
            std::env::temp_dir().join(format!("kintsugi-detect-sizes-{}", std::process::id()));
        let source = photos(1);
        let cfg = tiny_config(&dir, 100_000);
        assert!(refusal(&cfg, &source).contains("implausible"));
        assert!(!dir.exists(), "nothing written");
    }

    #[test]
    fn the_whole_history_of_the_initialising_weights_is_carried_into_the_manifest() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (source, dev) = (photos(2), Device::Cpu);
        let run = |sub: &str, init: Option<PathBuf>| {
            let mut cfg = tiny_config(&dir.path().join(sub), 4);
            cfg.init = init;
            cfg.command = format!("run {sub}");
            train_detect(&cfg, &source, None, &source, None, &dev, &mut |_| true)
                .unwrap_or_else(|e| panic!("{e}"));
            let out = dir.path().join(sub).join("w/detect-damage");
            let m: serde_json::Value =
                read_json(&with_ext(&out, "json")).unwrap_or_else(|e| panic!("{e}"));
            (with_ext(&out, "safetensors"), m)
        };
        let (weights, _) = run("a", None);
        // A run's own record, as the GPU twin writes beside its weights: no totals.
        let twin = dir.path().join("twin.safetensors");
        std::fs::copy(&weights, &twin).unwrap_or_else(|e| panic!("{e}"));
        let record = serde_json::json!({"steps": 500, "train_seconds": 60.0, "commands": ["twin"]});
        write_json(&twin.with_extension("json"), &record).unwrap_or_else(|e| panic!("{e}"));
        let (weights, b) = run("b", Some(twin));
        assert_eq!(
            (b["prior_steps"].as_u64(), b["total_steps"].as_u64()),
            (Some(500), Some(501))
        );
        assert_eq!(
            b["total_train_seconds"].as_f64().map(|s| s >= 60.0),
            Some(true)
        );
        // A manifest of this command: its totals, not only its last stage, are the prior.
        let (_, c) = run("c", Some(weights));
        assert_eq!(
            (c["prior_steps"].as_u64(), c["total_steps"].as_u64()),
            (Some(501), Some(502))
        );
        let cmds: Vec<&str> = c["commands"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            cmds,
            [
                "(initialising run) (initialising run) twin",
                "(initialising run) run b",
                "run c"
            ]
        );
    }

    #[test]
    fn a_resumed_run_must_set_aside_the_same_calibration_photos() {
        let dir = std::env::temp_dir().join(format!("kintsugi-detect-cal-{}", std::process::id()));
        let (train, cal) = photos(5).split_spread(1).unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = tiny_config(&dir, 4);
        let dev = Device::Cpu;
        let first = train_detect(&cfg, &train, Some(&cal), &train, None, &dev, &mut |_| true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.steps, 1);
        let saved: DetectCheckpoint =
            read_json(&dir.join("runs/checkpoint.json")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved.cal_photos, 1);
        cfg.resume = true;
        cfg.steps = 2;
        // Without the set-aside photo the calibration would count photos the run trained on.
        let all = photos(5);
        let r = train_detect(&cfg, &all, None, &all, None, &dev, &mut |_| true);
        assert!(
            matches!(&r, Err(TrainError::Invalid(m)) if m.contains("calibration photos")),
            "{:?}",
            r.err()
        );
        let again = train_detect(&cfg, &train, Some(&cal), &train, None, &dev, &mut |_| true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.steps, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
