//! The built-in demo shown on a first launch without an image: a small rendered landscape with
//! synthetic scratches and dust, and the mask of that damage, so Run works at once.
//!
//! The PNGs in `assets/` were written by [`render_demo`] (see `assets/README.md`) and are
//! embedded in the binary so the studio works from any folder.

use crate::imaging::io::{mask_from_dynamic, to_f32};
use crate::imaging::mask_synth::{dust_mask, scratch_mask};
use crate::imaging::{ImageF32, Mask};

/// The damaged demo image (PNG bytes).
const DEMO_PNG: &[u8] = include_bytes!("../../assets/demo.png");
/// Its damage mask (PNG bytes, white = hole).
const DEMO_MASK_PNG: &[u8] = include_bytes!("../../assets/demo_mask.png");

/// Width of the rendered demo.
pub const DEMO_WIDTH: usize = 512;
/// Height of the rendered demo.
pub const DEMO_HEIGHT: usize = 352;

/// Decodes the embedded demo image and mask.
pub fn embedded_demo() -> Result<(ImageF32, Mask), String> {
    let img = image::load_from_memory(DEMO_PNG).map_err(|e| format!("demo image: {e}"))?;
    let mask = image::load_from_memory(DEMO_MASK_PNG).map_err(|e| format!("demo mask: {e}"))?;
    Ok((to_f32(&img), mask_from_dynamic(&mask)))
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// A cheap deterministic hash in `[0, 1)`, for grain and texture.
fn hash(x: usize, y: usize, salt: u32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x27d4_eb2d) ^ (y as u32).wrapping_mul(0x1656_67b1) ^ salt;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2c1b_3c6d);
    h ^= h >> 12;
    (h & 0xffff) as f32 / 65536.0
}

/// Height of a mountain ridge (as a fraction of the image height) at column fraction `u`.
fn ridge(u: f32, base: f32, amp: f32, f: f32, phase: f32) -> f32 {
    base - amp
        * ((u * f + phase).sin() * 0.6
            + (u * f * 2.3 + phase * 1.7).sin() * 0.3
            + (u * f * 5.1).sin() * 0.1)
}

/// Renders the clean demo scene: sky, sun, two mountain ranges, a lake with reflections and a
/// grassy shore, with light grain so restorers have texture to work with.
pub fn render_scene(width: usize, height: usize) -> ImageF32 {
    let (w, h) = (width as f32, height as f32);
    let sun = (0.68 * w, 0.30 * h, 0.07 * h);
    let horizon = 0.62;
    ImageF32::from_fn(width, height, 3, |x, y, c| {
        let (u, v) = (x as f32 / w, y as f32 / h);
        let sky = mix(
            [0.20, 0.36, 0.62],
            [0.98, 0.74, 0.48],
            smoothstep(0.0, horizon, v),
        );
        let d = ((x as f32 - sun.0).powi(2) + (y as f32 - sun.1).powi(2)).sqrt();
        let glow = (-(d / (sun.2 * 3.0)).powi(2)).exp() * 0.35;
        let mut col = mix(sky, [1.0, 0.93, 0.75], glow.min(1.0));
        if d < sun.2 {
            col = [1.0, 0.95, 0.80];
        }
        let far = ridge(u, 0.50, 0.08, 7.0, 0.4);
        if v > far {
            let haze = smoothstep(far, horizon, v);
            col = mix([0.45, 0.42, 0.58], [0.62, 0.55, 0.62], haze);
        }
        let near = ridge(u, 0.58, 0.06, 11.0, 2.1);
        if v > near {
            let rock = hash(x / 3, y / 3, 7) * 0.06;
            col = mix(
                [0.22, 0.27, 0.24],
                [0.30, 0.33, 0.27],
                smoothstep(near, horizon, v),
            );
            col = [col[0] + rock, col[1] + rock, col[2] + rock];
        }
        if v > horizon {
            // The lake mirrors the sky, with horizontal ripples that grow towards the viewer.
            let mv = 2.0 * horizon - v;
            let refl = mix(
                [0.20, 0.36, 0.62],
                [0.98, 0.74, 0.48],
                smoothstep(0.0, horizon, mv),
            );
            let ripple = ((v - horizon) * 140.0 + (u * 9.0).sin() * 2.0).sin() * 0.04;
            col = mix(refl, [0.10, 0.22, 0.35], 0.45 + (v - horizon) * 0.6);
            col = [col[0] + ripple, col[1] + ripple, col[2] + ripple];
            if (x as f32 - sun.0).abs() < sun.2 * (1.0 + (v - horizon) * 4.0) && ripple > 0.0 {
                col = mix(col, [1.0, 0.9, 0.7], 0.5);
            }
        }
        let shore = 0.86 + 0.03 * (u * 6.0).sin();
        if v > shore {
            let blade = hash(x, y / 4, 3) * 0.12;
            col = mix([0.18, 0.30, 0.12], [0.30, 0.40, 0.16], blade * 6.0);
        }
        // Faint grain, coarse enough (2 px) to keep the committed PNG small.
        let grain = (hash(x / 2, y / 2, 11) - 0.5) * 0.012;
        (col[c] + grain).clamp(0.0, 1.0)
    })
}

/// The demo: the scene with scratches and dust burnt in, and the mask of that damage.
pub fn render_demo() -> (ImageF32, Mask) {
    let (w, h) = (DEMO_WIDTH, DEMO_HEIGHT);
    let mut img = render_scene(w, h);
    let scratches = scratch_mask(w, h, 42);
    let dust = dust_mask(w, h, 7);
    let mask = Mask::from_fn(w, h, |x, y| scratches.get(x, y) || dust.get(x, y));
    for y in 0..h {
        for x in 0..w {
            if mask.get(x, y) {
                // Scratches on a print look pale; vary the tone so they are not flat white.
                let tone = 0.85 + hash(x, y, 5) * 0.12;
                img.pixel_mut(x, y).iter_mut().for_each(|s| *s = tone);
            }
        }
    }
    (img, mask)
}
