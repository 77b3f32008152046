//! Training-only additions to the synthesis: damage the held-out set does not draw, and scene
//! changes made before the damage.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::synth::{normal, stamp};
use crate::imaging::ImageF32;

/// Adds to `diff` the short straight streaks that dust and grit dragged through a film gate leave
/// on a scan (the real film-damage triplets are dotted with them, and
/// [`film_scratches`](super::synth::film_scratches) draws long lines only): with probability
/// `rate`, 3 to 14 dashes 6 to 40 px long and 1 to 2 px wide, all along the film's transport
/// direction (horizontal or vertical per crop, within a few degrees), that lighten (three in four)
/// or darken the photo by 10 to 50% of the way to white or black. A training-only addition
/// (`--dashes`): the held-out set does not draw them.
pub(super) fn film_dashes(diff: &mut [f32], clean: &ImageF32, seed: u64, rate: f64) {
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
pub(super) fn emulsion_cracks(diff: &mut [f32], clean: &ImageF32, seed: u64, rate: f64) {
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
    /// place of [`detection_damage`](super::detection_damage)'s 3%; 0 keeps the 3%.
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
pub(super) fn printed_marks(img: &mut ImageF32, seed: u64, rate: f64) {
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
pub(super) fn garment_patch(img: &mut ImageF32, seed: u64, rate: f64, min_side: f32) {
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
pub(super) fn vivid_colours(img: &mut ImageF32, seed: u64, rate: f64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::Mask;
    use crate::train::detect::tests::{photo, photos};
    use crate::train::detect::{synth_items, synth_sample_full, synth_sample_train};

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
}
