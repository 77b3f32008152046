//! Damage synthesis of the detector's samples and their labels (held-out and training alike).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::augment::{emulsion_cracks, film_dashes, TrainAugment};
use crate::imaging::{ImageF32, Mask};
use crate::train::damage_synth::{synthesize_traced, ArtifactBank, DamageConfig, DamageSource};
use crate::train::mix;

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
pub(super) fn normal(rng: &mut StdRng) -> f32 {
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
pub(super) fn stamp(
    diff: &mut [f32],
    clean: &ImageF32,
    p: usize,
    target: f32,
    strength: f32,
    cover: f32,
) {
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
pub(super) fn film_scratches(diff: &mut [f32], clean: &ImageF32, seed: u64) {
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
    /// Pixels under a composited defect (alpha above
    /// [`crate::train::damage_synth::MASK_THRESHOLD`]).
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
/// crops; its scene changes are made by [`synth_items`](super::synth_items)); with the default
/// it is [`synth_sample_full`].
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::detect::tests::photo;

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
}
