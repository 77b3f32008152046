//! Seeded synthetic damage masks for evaluation and benchmarks: thin scratches, dust specks and
//! scattered small damage at a chosen coverage.
//!
//! The same seed always gives the same mask, so scores are comparable across runs and tools.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::buffer::Mask;

/// The kinds of synthetic damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthKind {
    /// A few long thin curved scratches, 1-3 px wide, mostly along one axis as on film.
    Scratch,
    /// Many small specks and blobs, 1-6 px across.
    Dust,
    /// One square of half the image's shorter side near the centre (a seeded offset of up to
    /// an eighth of the side): the central-block hole of the face-inpainting literature (Yeh
    /// et al. 2017), a missing piece rather than damage.
    Block,
}

impl SynthKind {
    /// Parses `scratch` or `dust`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scratch" | "scratches" => Some(Self::Scratch),
            "dust" => Some(Self::Dust),
            "block" => Some(Self::Block),
            _ => None,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scratch => "scratch",
            Self::Dust => "dust",
            Self::Block => "block",
        }
    }
}

/// A synthetic mask of `kind` for a `width` x `height` image.
pub fn synth_mask(kind: SynthKind, width: usize, height: usize, seed: u64) -> Mask {
    match kind {
        SynthKind::Scratch => scratch_mask(width, height, seed),
        SynthKind::Dust => dust_mask(width, height, seed),
        SynthKind::Block => block_mask(width, height, seed),
    }
}

/// A square of side `min(w, h) / 2` centred on the image, shifted by a seeded offset of up to
/// `min(w, h) / 8` in each direction.
pub fn block_mask(width: usize, height: usize, seed: u64) -> Mask {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xb10c);
    let mut mask = Mask::new(width, height);
    let side = (width.min(height) / 2).max(1);
    let jitter = (width.min(height) / 8) as i64;
    let mut offset = || {
        if jitter > 0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0
        }
    };
    let x0 = ((width - side) as i64 / 2 + offset()).clamp(0, (width - side) as i64) as usize;
    let y0 = ((height - side) as i64 / 2 + offset()).clamp(0, (height - side) as i64) as usize;
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            mask.set(x, y, true);
        }
    }
    mask
}

fn disc(mask: &mut Mask, cx: f64, cy: f64, r: f64) {
    let (w, h) = (mask.width() as isize, mask.height() as isize);
    let ri = r.ceil() as isize;
    let (x0, y0) = (cx.round() as isize, cy.round() as isize);
    for y in (y0 - ri).max(0)..(y0 + ri + 1).min(h) {
        for x in (x0 - ri).max(0)..(x0 + ri + 1).min(w) {
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            if dx * dx + dy * dy <= r * r + 0.25 {
                mask.set(x as usize, y as usize, true);
            }
        }
    }
}

/// Two to five scratches: smooth random walks with a dominant direction and a width of 1-3 px.
pub fn scratch_mask(width: usize, height: usize, seed: u64) -> Mask {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5c7a_7c4e);
    let mut mask = Mask::new(width, height);
    let (w, h) = (width as f64, height as f64);
    let n = rng.random_range(2..=5);
    for _ in 0..n {
        let vertical = rng.random_bool(0.6);
        let mut angle: f64 = if vertical {
            std::f64::consts::FRAC_PI_2
        } else {
            rng.random_range(0.0..std::f64::consts::PI)
        } + rng.random_range(-0.25..0.25);
        let (mut x, mut y) = (rng.random_range(0.0..w), rng.random_range(0.0..h));
        let radius = rng.random_range(0.5..1.5);
        let length = rng.random_range(0.3..1.0) * w.max(h);
        let mut turn = 0.0f64;
        let mut travelled = 0.0;
        while travelled < length {
            disc(&mut mask, x, y, radius);
            turn = 0.9 * turn + rng.random_range(-0.02..0.02);
            angle += turn;
            x += angle.cos();
            y += angle.sin();
            travelled += 1.0;
            if x < -2.0 || y < -2.0 || x > w + 2.0 || y > h + 2.0 {
                break;
            }
        }
    }
    mask
}

/// Specks and small blobs covering about 0.5-1.5% of the image.
pub fn dust_mask(width: usize, height: usize, seed: u64) -> Mask {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xd057_d057);
    let target = rng.random_range(0.005..0.015);
    scattered(width, height, target, 3.0, &mut rng)
}

/// Scattered small damage (specks of 1-6 px and short hairs) covering `coverage` of the image.
pub fn scattered_damage(width: usize, height: usize, coverage: f64, seed: u64) -> Mask {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ca7_7e2d);
    scattered(width, height, coverage, 3.0, &mut rng)
}

fn scattered(width: usize, height: usize, coverage: f64, max_r: f64, rng: &mut StdRng) -> Mask {
    let mut mask = Mask::new(width, height);
    if width == 0 || height == 0 {
        return mask;
    }
    let goal = (coverage.clamp(0.0, 1.0) * (width * height) as f64) as usize;
    let mut covered = 0usize;
    // Estimate coverage from the drawn areas and correct by a recount now and then: a full count
    // after every speck would make a 24 MP mask quadratic.
    while covered < goal {
        let batch = ((goal - covered) / 20).max(1);
        for _ in 0..batch {
            let (x, y) = (
                rng.random_range(0.0..width as f64),
                rng.random_range(0.0..height as f64),
            );
            if rng.random_bool(0.85) {
                let r = rng.random_range(0.5..max_r);
                disc(&mut mask, x, y, r);
            } else {
                // A short hair: a curved walk of 5-25 px.
                let mut a = rng.random_range(0.0..std::f64::consts::TAU);
                let (mut px, mut py) = (x, y);
                for _ in 0..rng.random_range(5..25) {
                    disc(&mut mask, px, py, 0.6);
                    a += rng.random_range(-0.3..0.3);
                    px += a.cos();
                    py += a.sin();
                }
            }
        }
        covered = mask.count();
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_plausible() {
        let a = scratch_mask(200, 150, 7);
        assert_eq!(a, scratch_mask(200, 150, 7));
        assert_ne!(a, scratch_mask(200, 150, 8));
        assert!(
            a.coverage() > 0.002 && a.coverage() < 0.2,
            "{}",
            a.coverage()
        );
        let d = dust_mask(300, 200, 1);
        assert!(
            d.coverage() >= 0.005 && d.coverage() < 0.03,
            "{}",
            d.coverage()
        );
        let s = scattered_damage(400, 300, 0.01, 3);
        assert!(
            s.coverage() >= 0.01 && s.coverage() < 0.013,
            "{}",
            s.coverage()
        );
    }

    #[test]
    fn block_is_a_quarter_of_the_image_near_the_centre() {
        let m = block_mask(64, 64, 3);
        assert_eq!(m, block_mask(64, 64, 3));
        assert!((m.coverage() - 0.25).abs() < 1e-9);
        // Within the jitter, the centre pixel is always in the hole and the corners never.
        for seed in 0..20 {
            let m = block_mask(64, 48, seed);
            assert!(m.get(32, 24));
            assert!(!m.get(0, 0) && !m.get(63, 47));
        }
    }
}
