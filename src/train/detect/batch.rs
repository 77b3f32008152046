//! Batches and losses: samples as network tensors and as bytes, and the loss terms.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::augment::{garment_patch, printed_marks, vivid_colours, TrainAugment};
use super::synth::{synth_sample_train, SynthSample};
use crate::detect::learned::{fold_input, fold_mask, DetectNetConfig};
use crate::train::cgan::CropSource;
use crate::train::damage_synth::ArtifactBank;
use crate::train::{mix, TrainError, TrainResult};

/// A batch of folded inputs `[n, in_channels, s/2, s/2]` ([`fold_input`]), targets and loss
/// weights `[n, 4, s/2, s/2]`.
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
    /// them ([`fold_input`] for a network of sizes `net`, [`fold_mask`]): the loss is per
    /// pixel, so comparing folded logits with the folded mask is the same as comparing unfolded
    /// ones.
    pub fn from_items(
        items: &[SynthSample],
        net: &DetectNetConfig,
        dev: &Device,
    ) -> TrainResult<Self> {
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
            input.extend(fold_input(&s.image, net).0);
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
            input: Tensor::from_vec(input, (n, net.in_channels(), h / 2, w / 2), dev)?,
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
            let z = net.forward(&net.input(&photo, dev)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::detect::learned::LoadedNet;
    use crate::imaging::{ImageF32, Mask};
    use crate::train::detect::tests::{photo, tiny_config};
    use crate::train::detect::{synth_sample_full, LabelStats};

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
        let batch =
            DetectBatch::from_items(std::slice::from_ref(&s), &DetectNetConfig::default(), &dev)
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
        let x = net
            .net
            .input(&photo, &dev)
            .unwrap_or_else(|e| panic!("{e}"));
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
        let b = DetectBatch::from_items(&[item], &DetectNetConfig::default(), &dev)
            .unwrap_or_else(|e| panic!("{e}"));
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
}
