//! Training of the cGAN inpainter ([`crate::models::cgan`]): random crops of clean photos,
//! synthetic damage ([`super::damage_synth`]), a generator and a discriminator each with its own
//! AdamW, sample grids, held-out metrics, checkpoints with optimiser state, and the manifest.
//!
//! Losses (generator): `6 * L1(hole) + 1 * L1(valid) + 2 * edge + 0.1 * hinge_G`, where
//! - L1 on hole and valid pixels of the raw prediction, each averaged over its own pixels (the
//!   hole weighted 6x as in partial-conv training: the holes are what we ship);
//! - edge: L1 between the horizontal and vertical finite differences of the composite and of
//!   the clean image. Pure L1 is minimised by a blurred average; the gradient term makes a
//!   missing edge or a blurred texture cost something even when the mean colour is right, is
//!   cheap (no extra network, unlike a perceptual loss) and also penalises seams at the hole
//!   border, since the composite's gradients cross it;
//! - hinge_G = `-mean(D(composite, mask))`, kept small because with the little training a
//!   2-core CPU affords, reconstruction should lead and the adversarial term sharpen. It can
//!   start late ([`LossWeights::adv_start`], then a linear ramp): before that the step is
//!   reconstruction-only and the discriminator is not run, which also makes it faster.
//!
//! Discriminator: hinge loss `relu(1 - D(real)) + relu(1 + D(fake))` on detached fakes,
//! spectral normalisation in every layer as the stabiliser.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::damage_synth::{synthesize, ArtifactBank, DamageConfig};
use super::{
    io_err, mix, read_json, save_grid, save_tensors, write_json, AdamW, TrainError, TrainResult,
};
use crate::imaging::{ImageF32, Mask};
use crate::models::cgan::{
    named_vars, noise_map, CganError, GeneratorConfig, LoadedDiscriminator, LoadedGenerator,
    INFERENCE_NOISE_SEED,
};

fn model_err(e: CganError) -> TrainError {
    match e {
        CganError::Candle(c) => TrainError::Candle(c),
        other => TrainError::Invalid(other.to_string()),
    }
}

/// Clean photos held in memory, from which random square crops are cut.
#[derive(Clone, Debug, Default)]
pub struct CropSource {
    images: Vec<image::RgbImage>,
}

/// Splits off `n` items spread evenly over `items` (every `len / n`-th, in order); returns
/// `(rest, taken)`. Takes none when `n` is 0 and refuses to take them all.
pub fn split_spread<T>(items: Vec<T>, n: usize) -> TrainResult<(Vec<T>, Vec<T>)> {
    let len = items.len();
    if n >= len && n > 0 {
        return Err(TrainError::Invalid(format!(
            "cannot set aside {n} of {len} photos"
        )));
    }
    let stride = len.checked_div(n).unwrap_or(usize::MAX);
    let (mut rest, mut taken) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        if n > 0 && i % stride == 0 && taken.len() < n {
            taken.push(item);
        } else {
            rest.push(item);
        }
    }
    Ok((rest, taken))
}

impl CropSource {
    /// Photos from memory (tests, synthetic data).
    pub fn new(images: Vec<image::RgbImage>) -> Self {
        Self { images }
    }

    /// The `.jpg`/`.jpeg`/`.png` files in each of `dirs`, sorted by name within each folder,
    /// folders in the given order: the photos [`CropSource::load_dirs`] reads, in its order.
    pub fn image_paths(dirs: &[PathBuf]) -> TrainResult<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for dir in dirs {
            let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
            let mut p: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| {
                        let e = e.to_string_lossy().to_ascii_lowercase();
                        e == "jpg" || e == "jpeg" || e == "png"
                    })
                })
                .collect();
            p.sort();
            paths.extend(p);
        }
        if paths.is_empty() {
            return Err(TrainError::Invalid(format!("no images in {dirs:?}")));
        }
        Ok(paths)
    }

    /// Reads every photo of [`CropSource::image_paths`] (read in place).
    pub fn load_dirs(dirs: &[PathBuf]) -> TrainResult<Self> {
        let images = Self::image_paths(dirs)?
            .par_iter()
            .map(|path| {
                image::open(path)
                    .map(|i| i.to_rgb8())
                    .map_err(|source| TrainError::Image {
                        path: path.clone(),
                        source,
                    })
            })
            .collect::<TrainResult<Vec<_>>>()?;
        Ok(Self { images })
    }

    /// Splits off `n` photos spread evenly over the set (every `len / n`-th, in load order),
    /// e.g. to calibrate on photos the training never crops; returns `(rest, taken)`. Takes
    /// none when `n` is 0 and refuses to take them all.
    pub fn split_spread(self, n: usize) -> TrainResult<(Self, Self)> {
        let (rest, taken) = split_spread(self.images, n)?;
        Ok((Self { images: rest }, Self { images: taken }))
    }

    /// Number of photos.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Photo `i` whole, as an RGB [`ImageF32`] (`None` past the end).
    pub fn photo(&self, i: usize) -> Option<ImageF32> {
        let img = self.images.get(i)?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        Some(ImageF32::from_fn(w, h, 3, |x, y, c| {
            f32::from(img.get_pixel(x as u32, y as u32).0[c]) / 255.0
        }))
    }

    /// A random `size x size` crop (randomly mirrored) as an RGB [`ImageF32`]; photos smaller
    /// than `size` are tiled by edge clamping.
    pub fn crop(&self, rng: &mut StdRng, size: usize) -> TrainResult<ImageF32> {
        if self.images.is_empty() {
            return Err(TrainError::Invalid("no photos to crop".into()));
        }
        let img = &self.images[rng.random_range(0..self.images.len())];
        let (w, h) = (img.width() as usize, img.height() as usize);
        let x0 = rng.random_range(0..=w.saturating_sub(size));
        let y0 = rng.random_range(0..=h.saturating_sub(size));
        let flip = rng.random_bool(0.5);
        Ok(ImageF32::from_fn(size, size, 3, |x, y, c| {
            let x = if flip { size - 1 - x } else { x };
            let px = img.get_pixel(
                (x0 + x).min(w.saturating_sub(1)) as u32,
                (y0 + y).min(h.saturating_sub(1)) as u32,
            );
            f32::from(px.0[c]) / 255.0
        }))
    }
}

/// A training or validation batch as tensors.
#[derive(Debug)]
pub struct Batch {
    /// Clean images `[n, 3, s, s]` in `[0, 1]`.
    pub clean: Tensor,
    /// Damaged images (clean outside the mask).
    pub damaged: Tensor,
    /// Holes `[n, 1, s, s]`, 1 = hole.
    pub mask: Tensor,
}

impl Batch {
    /// Stacks `(clean, damaged, mask)` triples (all of the same size) into tensors.
    pub fn from_pairs(items: &[(ImageF32, ImageF32, Mask)], dev: &Device) -> TrainResult<Self> {
        let Some((first, _, _)) = items.first() else {
            return Err(TrainError::Invalid("empty batch".into()));
        };
        let (w, h) = (first.width(), first.height());
        let plane = w * h;
        let mut clean: Vec<f32> = Vec::with_capacity(items.len() * 3 * plane);
        let mut damaged: Vec<f32> = Vec::with_capacity(items.len() * 3 * plane);
        let mut mask = Vec::with_capacity(items.len() * plane);
        for (c, d, m) in items {
            if (
                c.width(),
                c.height(),
                d.width(),
                d.height(),
                m.width(),
                m.height(),
            ) != (w, h, w, h, w, h)
                || c.channels() != 3
                || d.channels() != 3
            {
                return Err(TrainError::Invalid("batch items differ in size".into()));
            }
            for ch in 0..3 {
                clean.extend(c.data().iter().skip(ch).step_by(3).copied());
                damaged.extend(d.data().iter().skip(ch).step_by(3).copied());
            }
            mask.extend(m.data().iter().map(|&b| if b { 1.0f32 } else { 0.0 }));
        }
        let n = items.len();
        Ok(Self {
            clean: Tensor::from_vec(clean, (n, 3, h, w), dev)?,
            damaged: Tensor::from_vec(damaged, (n, 3, h, w), dev)?,
            mask: Tensor::from_vec(mask, (n, 1, h, w), dev)?,
        })
    }

    /// Batch `index` of a seeded stream: crops and damage are a function of `(seed, index)`
    /// only, so a resumed run sees the same data.
    #[allow(clippy::too_many_arguments)]
    pub fn synth(
        source: &CropSource,
        bank: Option<&ArtifactBank>,
        damage: &DamageConfig,
        batch: usize,
        crop: usize,
        seed: u64,
        index: u64,
        dev: &Device,
    ) -> TrainResult<Self> {
        let items = (0..batch)
            .into_par_iter()
            .map(|j| {
                let s = mix(seed, index.wrapping_mul(1024).wrapping_add(j as u64));
                let mut rng = StdRng::seed_from_u64(s);
                let clean = source.crop(&mut rng, crop)?;
                let (damaged, mask) = synthesize(&clean, bank, damage, s ^ 0xdada);
                Ok((clean, damaged, mask))
            })
            .collect::<TrainResult<Vec<_>>>()?;
        Self::from_pairs(&items, dev)
    }

    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.clean.dims().first().copied().unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Weights of the loss terms (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    /// L1 in the holes.
    pub hole: f64,
    /// L1 on known pixels (of the raw prediction).
    pub valid: f64,
    /// L1 between image gradients of composite and target.
    pub edge: f64,
    /// Generator hinge loss (at full strength).
    pub adv: f64,
    /// Step from which the adversarial game starts; before it the generator trains on the
    /// reconstruction terms alone and the discriminator is not run (a faster step).
    #[serde(default)]
    pub adv_start: u64,
    /// Steps over which the adversarial weight ramps linearly from 0 to `adv` after
    /// `adv_start`.
    #[serde(default)]
    pub adv_ramp: u64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            hole: 6.0,
            valid: 1.0,
            edge: 2.0,
            adv: 0.1,
            adv_start: 0,
            adv_ramp: 0,
        }
    }
}

impl LossWeights {
    /// The adversarial weight at `step` (0 before `adv_start`, then a linear ramp to `adv`).
    pub fn adv_at(&self, step: u64) -> f64 {
        if step < self.adv_start {
            0.0
        } else if self.adv_ramp == 0 {
            self.adv
        } else {
            self.adv * (((step - self.adv_start + 1) as f64) / self.adv_ramp as f64).min(1.0)
        }
    }
}

/// The losses of one step (scalars).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StepLosses {
    /// Weighted generator total.
    pub g_total: f32,
    /// Mean absolute error in the holes.
    pub hole_l1: f32,
    /// Mean absolute error on known pixels.
    pub valid_l1: f32,
    /// Edge (gradient) loss.
    pub edge: f32,
    /// Generator hinge loss.
    pub g_adv: f32,
    /// Discriminator hinge loss.
    pub d_loss: f32,
}

/// Mean of `|a - b|` weighted by `w` (`[n, 1, h, w]`, broadcast over channels).
fn masked_l1(a: &Tensor, b: &Tensor, w: &Tensor) -> TrainResult<Tensor> {
    let num = (a - b)?.abs()?.broadcast_mul(w)?.sum_all()?;
    let den = ((w.sum_all()? * 3.0)? + 1e-6)?;
    Ok(num.div(&den)?)
}

/// L1 between the finite differences of `a` and `b` along x and y.
pub fn edge_loss(a: &Tensor, b: &Tensor) -> TrainResult<Tensor> {
    let (_, _, h, w) = a.dims4()?;
    let dx = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.narrow(3, 1, w - 1)? - t.narrow(3, 0, w - 1)?
    };
    let dy = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.narrow(2, 1, h - 1)? - t.narrow(2, 0, h - 1)?
    };
    if w < 2 || h < 2 {
        return Ok(a.zeros_like()?.sum_all()?);
    }
    let lx = (dx(a)? - dx(b)?)?.abs()?.mean_all()?;
    let ly = (dy(a)? - dy(b)?)?.abs()?.mean_all()?;
    Ok((lx + ly)?)
}

/// A seeded noise map `[n, 1, h, w]` for the generator's `z` input.
pub fn noise(n: usize, h: usize, w: usize, seed: u64, dev: &Device) -> TrainResult<Tensor> {
    noise_map(n, h, w, seed, dev).map_err(model_err)
}

/// One optimiser update from a single backward pass of `loss`, with every gradient detached
/// first. The fast conv's backward builds its gradients from tracked tensors (the weights are
/// variables), so undetached gradients carry the step's whole forward graph; AdamW's moments
/// would then chain those graphs from step to step and memory grows by the activations of
/// every step (about 90 MB per step at batch 4, 128x128: the first run was OOM-killed).
fn detached_step(opt: &mut AdamW, varmap: &candle_nn::VarMap, loss: &Tensor) -> TrainResult<()> {
    let mut grads = loss.backward()?;
    for (_, var) in named_vars(varmap, false).map_err(model_err)? {
        if let Some(g) = grads.remove(var.as_tensor()) {
            grads.insert(var.as_tensor(), g.detach());
        }
    }
    opt.step(&grads)
}

/// Generator, discriminator and their optimisers.
pub struct CganTrainer {
    /// The generator.
    pub gen: LoadedGenerator,
    /// The discriminator.
    pub disc: LoadedDiscriminator,
    /// Optimiser of the generator.
    pub opt_g: AdamW,
    /// Optimiser of the discriminator.
    pub opt_d: AdamW,
    /// Loss weights.
    pub weights: LossWeights,
    base_lr_g: f64,
    base_lr_d: f64,
    warmup: u64,
}

impl CganTrainer {
    /// Fresh networks (seeded) and optimisers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gcfg: GeneratorConfig,
        d_base: usize,
        lr_g: f64,
        lr_d: f64,
        warmup: u64,
        weights: LossWeights,
        seed: u64,
        dev: &Device,
    ) -> TrainResult<Self> {
        let gen = LoadedGenerator::fresh(gcfg, mix(seed, 1), dev).map_err(model_err)?;
        let disc = LoadedDiscriminator::fresh(d_base, mix(seed, 2), dev).map_err(model_err)?;
        let opt_g = AdamW::new(
            named_vars(&gen.varmap, true).map_err(model_err)?,
            lr_g,
            1e-4,
        )?;
        let opt_d = AdamW::new(
            named_vars(&disc.varmap, true).map_err(model_err)?,
            lr_d,
            1e-4,
        )?;
        Ok(Self {
            gen,
            disc,
            opt_g,
            opt_d,
            weights,
            base_lr_g: lr_g,
            base_lr_d: lr_d,
            warmup,
        })
    }

    /// Learning-rate factor at `step`: a linear warm-up, then constant (training continues
    /// across sessions, so there is no fixed horizon to decay towards).
    pub fn lr_factor(&self, step: u64) -> f64 {
        if self.warmup == 0 {
            1.0
        } else {
            ((step + 1) as f64 / self.warmup as f64).min(1.0)
        }
    }

    /// One training step (D on detached fakes, then G), each with a single backward pass.
    pub fn step(&mut self, batch: &Batch, step: u64, seed: u64) -> TrainResult<StepLosses> {
        let f = self.lr_factor(step);
        self.opt_g.lr = self.base_lr_g * f;
        self.opt_d.lr = self.base_lr_d * f;
        let (n, _, h, w) = batch.clean.dims4()?;
        let dev = batch.clean.device().clone();
        let z = noise(n, h, w, mix(seed ^ 0x2a2a, step), &dev)?;
        let out = self
            .gen
            .gen
            .forward(&batch.damaged, &batch.mask, &z)
            .map_err(model_err)?;
        let wt = self.weights;
        let adv_w = wt.adv_at(step);
        let keep = (1.0 - &batch.mask)?;
        let hole_l1 = masked_l1(&out.raw, &batch.clean, &batch.mask)?;
        let valid_l1 = masked_l1(&out.raw, &batch.clean, &keep)?;
        let edge = edge_loss(&out.composite, &batch.clean)?;
        let recon = ((&hole_l1 * wt.hole)? + (&valid_l1 * wt.valid)? + (&edge * wt.edge)?)?;
        let (total, g_adv, d_loss) = if adv_w > 0.0 {
            // Discriminator step on detached fakes.
            self.disc.disc.set_update(true);
            let real = self
                .disc
                .disc
                .forward(&batch.clean, &batch.mask)
                .map_err(model_err)?;
            let fake = self
                .disc
                .disc
                .forward(&out.composite.detach(), &batch.mask)
                .map_err(model_err)?;
            let d_loss = ((1.0 - real)?.relu()?.mean_all()? + (fake + 1.0)?.relu()?.mean_all()?)?;
            detached_step(&mut self.opt_d, &self.disc.varmap, &d_loss)?;
            // Generator step.
            self.disc.disc.set_update(false);
            let g_adv = self
                .disc
                .disc
                .forward(&out.composite, &batch.mask)
                .map_err(model_err)?
                .mean_all()?
                .neg()?;
            (
                (&recon + (&g_adv * adv_w)?)?,
                g_adv.to_scalar::<f32>()?,
                d_loss.to_scalar::<f32>()?,
            )
        } else {
            (recon, 0.0, 0.0)
        };
        detached_step(&mut self.opt_g, &self.gen.varmap, &total)?;
        let s = |t: &Tensor| -> TrainResult<f32> { Ok(t.to_scalar::<f32>()?) };
        Ok(StepLosses {
            g_total: s(&total)?,
            hole_l1: s(&hole_l1)?,
            valid_l1: s(&valid_l1)?,
            edge: s(&edge)?,
            g_adv,
            d_loss,
        })
    }

    /// Restores `batch` with the fixed inference noise; returns the composite.
    pub fn restore(&self, batch: &Batch) -> TrainResult<Tensor> {
        let (n, _, h, w) = batch.clean.dims4()?;
        let z = noise(n, h, w, INFERENCE_NOISE_SEED, batch.clean.device())?;
        Ok(self
            .gen
            .gen
            .forward(&batch.damaged, &batch.mask, &z)
            .map_err(model_err)?
            .composite)
    }
}

/// Held-out metrics on fixed damaged crops.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ValMetrics {
    /// PSNR over hole pixels only, dB.
    pub hole_psnr_db: f64,
    /// Mean absolute error over hole pixels.
    pub hole_l1: f64,
    /// The same PSNR of the damaged input filled with the mean known colour (a floor).
    pub mean_fill_hole_psnr_db: f64,
}

/// Hole-PSNR and hole-L1 of `restored` against `batch.clean`.
pub fn evaluate(trainer: &CganTrainer, batch: &Batch) -> TrainResult<ValMetrics> {
    let restored = trainer.restore(batch)?;
    let m = &batch.mask;
    let holes = (m.sum_all()?.to_scalar::<f32>()? as f64 * 3.0).max(1.0);
    let diff = (restored - &batch.clean)?;
    let sse = diff
        .sqr()?
        .broadcast_mul(m)?
        .sum_all()?
        .to_scalar::<f32>()? as f64;
    let sae = diff
        .abs()?
        .broadcast_mul(m)?
        .sum_all()?
        .to_scalar::<f32>()? as f64;
    // Baseline: each image's holes filled with its mean known colour.
    let keep = (1.0 - m)?;
    let known = keep.sum_keepdim(D::Minus1)?.sum_keepdim(D::Minus2)?;
    let mean = batch
        .clean
        .broadcast_mul(&keep)?
        .sum_keepdim(D::Minus1)?
        .sum_keepdim(D::Minus2)?
        .broadcast_div(&(known + 1e-6)?)?;
    let base = batch.clean.broadcast_sub(&mean)?.sqr()?.broadcast_mul(m)?;
    let base_sse = base.sum_all()?.to_scalar::<f32>()? as f64;
    let psnr = |sse: f64| 10.0 * (1.0 / (sse / holes).max(1e-10)).log10();
    Ok(ValMetrics {
        hole_psnr_db: psnr(sse),
        hole_l1: sae / holes,
        mean_fill_hole_psnr_db: psnr(base_sse),
    })
}

/// A grid of rows `damaged | raw | composite | clean` for the first `k` images.
pub fn write_samples(
    trainer: &CganTrainer,
    batch: &Batch,
    k: usize,
    path: &Path,
) -> TrainResult<()> {
    let n = batch.len().min(k).max(1);
    let narrow = |t: &Tensor| t.narrow(0, 0, n);
    let (clean, damaged, mask) = (
        narrow(&batch.clean)?,
        narrow(&batch.damaged)?,
        narrow(&batch.mask)?,
    );
    let (_, _, h, w) = clean.dims4()?;
    let z = Tensor::zeros((n, 1, h, w), candle_core::DType::F32, clean.device())?;
    let out = trainer
        .gen
        .gen
        .forward(&damaged, &mask, &z)
        .map_err(model_err)?;
    // Show holes in magenta on the input so the mask is visible.
    let magenta = Tensor::new(&[1.0f32, 0.0, 1.0], clean.device())?.reshape((1, 3, 1, 1))?;
    let shown = (damaged.broadcast_mul(&(1.0 - &mask)?)? + mask.broadcast_mul(&magenta)?)?;
    let rows: Vec<Tensor> = (0..n)
        .map(|i| {
            Tensor::cat(
                &[
                    shown.narrow(0, i, 1)?,
                    out.raw.narrow(0, i, 1)?,
                    out.composite.narrow(0, i, 1)?,
                    clean.narrow(0, i, 1)?,
                ],
                0,
            )
        })
        .collect::<candle_core::Result<_>>()?;
    save_grid(&Tensor::cat(&rows, 0)?, 4, path)
}

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct CganTrainConfig {
    /// Generator sizes.
    pub gen: GeneratorConfig,
    /// Discriminator first-layer channels.
    pub d_base: usize,
    /// Total steps (a resumed run continues up to this count).
    pub steps: u64,
    /// Crops per step.
    pub batch: usize,
    /// Crop side.
    pub crop: usize,
    /// Generator learning rate.
    pub lr_g: f64,
    /// Discriminator learning rate.
    pub lr_d: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Loss weights.
    pub weights: LossWeights,
    /// Damage mix.
    pub damage: DamageConfig,
    /// Seed of everything random.
    pub seed: u64,
    /// Grid, validation and checkpoint every this many steps.
    pub sample_every: u64,
    /// Folder of grids and the checkpoint.
    pub runs_dir: PathBuf,
    /// Output stem (`<out>.safetensors`, `<out>.json`).
    pub out: PathBuf,
    /// Continue from the checkpoint in `runs_dir`.
    pub resume: bool,
    /// Stop (checkpoint + weights + manifest) after this many seconds of this session.
    pub max_seconds: Option<f64>,
    /// Description of the data for the manifest.
    pub data_desc: String,
    /// Licence notes for the manifest.
    pub data_license: String,
    /// The command line, for the manifest.
    pub command: String,
}

/// What a step reports to the caller (progress bar).
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: u64,
    /// Target steps.
    pub total: u64,
    /// Losses of this step.
    pub losses: StepLosses,
    /// Steps per second in this session.
    pub steps_per_sec: f64,
    /// Latest held-out metrics, if any.
    pub val: Option<ValMetrics>,
}

/// Resume state stored beside the checkpoint tensors.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CheckpointState {
    /// Steps done.
    pub step: u64,
    /// Training seconds over all sessions.
    pub train_seconds: f64,
    /// Generator sizes.
    pub gen: GeneratorConfig,
    /// Discriminator width.
    pub d_base: usize,
    /// Batch size.
    pub batch: usize,
    /// Crop side.
    pub crop: usize,
    /// Seed.
    pub seed: u64,
    /// Latest held-out metrics.
    pub val: Option<ValMetrics>,
}

/// The manifest written next to the weights.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CganManifest {
    /// Model id.
    pub id: String,
    /// Model family.
    pub family: String,
    /// Architecture description.
    pub architecture: String,
    /// Generator sizes.
    pub generator: GeneratorConfig,
    /// Generator trainable values.
    pub generator_params: usize,
    /// Discriminator description (training only; not shipped).
    pub discriminator: String,
    /// Discriminator trainable values.
    pub discriminator_params: usize,
    /// Losses used and why.
    pub losses: String,
    /// Loss weights.
    pub loss_weights: LossWeights,
    /// Optimisers and schedule.
    pub optimiser: String,
    /// Training data.
    pub data: String,
    /// Licence notes.
    pub data_license: String,
    /// Crop side used in training.
    pub crop: usize,
    /// Batch size.
    pub batch: usize,
    /// Steps done.
    pub steps: u64,
    /// Training seconds over all sessions.
    pub train_seconds: f64,
    /// Steps per second of the last session.
    pub steps_per_sec: f64,
    /// The command that trained it.
    pub command: String,
    /// Seed.
    pub seed: u64,
    /// Latest held-out metrics (fixed damaged crops of the validation photos).
    pub val: Option<ValMetrics>,
}

/// Result of [`train_cgan`].
#[derive(Debug)]
pub struct TrainOutcome {
    /// Steps done in all sessions.
    pub steps: u64,
    /// Whether the target step count was reached.
    pub finished: bool,
    /// The manifest written.
    pub manifest: CganManifest,
}

fn ckpt_paths(runs: &Path) -> (PathBuf, PathBuf) {
    (
        runs.join("checkpoint.safetensors"),
        runs.join("checkpoint.json"),
    )
}

/// Saves both networks, both optimiser states and `state` into `runs`.
pub fn save_checkpoint(t: &CganTrainer, state: &CheckpointState, runs: &Path) -> TrainResult<()> {
    std::fs::create_dir_all(runs).map_err(io_err(runs))?;
    let (tensors_path, json_path) = ckpt_paths(runs);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (prefix, opt) in [("g.", &t.opt_g), ("d.", &t.opt_d)] {
        for (k, v) in opt.state() {
            tensors.insert(format!("{prefix}{k}"), v);
        }
    }
    for (prefix, map) in [("g.param.", &t.gen.varmap), ("d.param.", &t.disc.varmap)] {
        for (name, var) in named_vars(map, false).map_err(model_err)? {
            tensors.insert(format!("{prefix}{name}"), var.as_tensor().clone());
        }
    }
    save_tensors(&tensors, &tensors_path)?;
    write_json(&json_path, state)?;
    Ok(())
}

/// Loads a checkpoint written by [`save_checkpoint`] into `t`; `None` when there is none.
pub fn load_checkpoint(
    t: &mut CganTrainer,
    runs: &Path,
    dev: &Device,
) -> TrainResult<Option<CheckpointState>> {
    let (tensors_path, json_path) = ckpt_paths(runs);
    if !json_path.is_file() || !tensors_path.is_file() {
        return Ok(None);
    }
    let state: CheckpointState = read_json(&json_path)?;
    let tensors = candle_core::safetensors::load(&tensors_path, dev)?;
    for (prefix, map) in [("g.param.", &t.gen.varmap), ("d.param.", &t.disc.varmap)] {
        for (name, var) in named_vars(map, false).map_err(model_err)? {
            let v = tensors
                .get(&format!("{prefix}{name}"))
                .ok_or_else(|| TrainError::Invalid(format!("checkpoint has no {prefix}{name}")))?;
            var.set(v)?;
        }
    }
    for (prefix, opt) in [("g.", &mut t.opt_g), ("d.", &mut t.opt_d)] {
        let sub: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_owned(), v.clone())))
            .collect();
        opt.load_state(&sub, state.step)?;
    }
    Ok(Some(state))
}

/// `<stem>.<ext>`.
pub fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

const ARCH: &str = "gated-conv encoder-decoder (DeepFill v2 style): input [RGB*(1-m) in [-1,1], \
    mask, noise z] (5 ch); gated 5x5 (b) at 1/1; gated 3x3 s2 (3b), gated 3x3 (3b) at 1/2; \
    gated 3x3 s2 (6b) at 1/4; five gated 3x3 at 1/4 with dilation 2,4,8,16,1; nearest-up + \
    gated 3x3 (3b), concat skip, gated 3x3 (3b) at 1/2; nearest-up + gated 3x3 (b), concat skip, \
    gated 3x3 (b) at 1/1; conv 3x3 -> 3, (tanh+1)/2; composite raw*m + x*(1-m). Gated conv = \
    elu(features)*sigmoid(gates), our fast kernels (Conv2dFast/GatedConv2d/UpConv).";

fn losses_text(w: &LossWeights) -> String {
    format!(
        "G: {}*L1(hole) + {}*L1(valid) + {}*edge + {}*hinge_G. L1 per region averaged over its \
         own pixels (hole weighted up: holes are the product). Edge = L1 between x/y finite \
         differences of the composite and the clean image: the structure term, because L1 alone \
         is minimised by a blurred mean; it penalises missing edges and seams at the hole border \
         at almost no cost (no extra network). Hinge_G = -mean D(composite, mask), small weight \
         so reconstruction leads with the little CPU training we can afford; in this stage \
         the adversarial term is off before step {} (reconstruction-only pre-training, D not \
         run) and ramps to full weight over {} steps after it (earlier stages of the shipped \
         model may have used other schedules: see `command` and the README). D: hinge loss on \
         real vs detached composite, SN-PatchGAN on [image, mask], spectral normalisation \
         (one power iteration per D step) as the stabiliser.",
        w.hole, w.valid, w.edge, w.adv, w.adv_start, w.adv_ramp
    )
}

/// Trains (or resumes) the cGAN; `on_step` sees every step and returns false to stop early.
/// Writes grids, metrics and a checkpoint every `sample_every` steps, and at the end (target
/// reached, time limit or stop) the checkpoint, `<out>.safetensors` and `<out>.json`.
pub fn train_cgan(
    cfg: &CganTrainConfig,
    source: &CropSource,
    val: &Batch,
    bank: Option<&ArtifactBank>,
    dev: &Device,
    on_step: &mut dyn FnMut(&StepReport) -> bool,
) -> TrainResult<TrainOutcome> {
    let mut t = CganTrainer::new(
        cfg.gen,
        cfg.d_base,
        cfg.lr_g,
        cfg.lr_d,
        cfg.warmup,
        cfg.weights,
        cfg.seed,
        dev,
    )?;
    let mut step = 0u64;
    let mut past_seconds = 0.0;
    let mut last_val = None;
    if cfg.resume {
        if let Some(state) = load_checkpoint(&mut t, &cfg.runs_dir, dev)? {
            // The batch size may change between stages (a bigger machine takes bigger
            // batches); the networks, crop and data seed may not.
            if state.gen != cfg.gen
                || state.d_base != cfg.d_base
                || state.crop != cfg.crop
                || state.seed != cfg.seed
            {
                return Err(TrainError::Invalid(format!(
                    "checkpoint in {} has other settings ({:?}, d {}, crop {}, seed {})",
                    cfg.runs_dir.display(),
                    state.gen,
                    state.d_base,
                    state.crop,
                    state.seed
                )));
            }
            step = state.step;
            past_seconds = state.train_seconds;
            last_val = state.val;
        }
    }
    let start = Instant::now();
    let start_step = step;
    let mut last = StepLosses::default();
    let mut finished = step >= cfg.steps;
    let state_at = |step: u64, secs: f64, val: Option<ValMetrics>| CheckpointState {
        step,
        train_seconds: secs,
        gen: cfg.gen,
        d_base: cfg.d_base,
        batch: cfg.batch,
        crop: cfg.crop,
        seed: cfg.seed,
        val,
    };
    while step < cfg.steps {
        let batch = Batch::synth(
            source,
            bank,
            &cfg.damage,
            cfg.batch,
            cfg.crop,
            cfg.seed,
            step,
            dev,
        )?;
        last = t.step(&batch, step, cfg.seed)?;
        if !last.g_total.is_finite() || !last.d_loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "loss diverged at step {step}: {last:?}"
            )));
        }
        step += 1;
        let elapsed = start.elapsed().as_secs_f64();
        let periodic = cfg.sample_every > 0 && step % cfg.sample_every == 0;
        if periodic || step == cfg.steps {
            last_val = Some(evaluate(&t, val)?);
            write_samples(
                &t,
                &batch,
                4,
                &cfg.runs_dir.join(format!("train_{step:06}.png")),
            )?;
            write_samples(&t, val, 4, &cfg.runs_dir.join(format!("val_{step:06}.png")))?;
            save_checkpoint(
                &t,
                &state_at(step, past_seconds + elapsed, last_val),
                &cfg.runs_dir,
            )?;
        }
        let report = StepReport {
            step,
            total: cfg.steps,
            losses: last,
            steps_per_sec: (step - start_step) as f64 / elapsed.max(1e-9),
            val: last_val,
        };
        let go_on = on_step(&report);
        let out_of_time = cfg.max_seconds.is_some_and(|m| elapsed >= m);
        if !go_on || out_of_time {
            break;
        }
    }
    if step >= cfg.steps {
        finished = true;
    }
    let session = start.elapsed().as_secs_f64();
    let steps_per_sec = (step - start_step) as f64 / session.max(1e-9);
    if last_val.is_none() || step != start_step {
        last_val = Some(evaluate(&t, val)?);
    }
    save_checkpoint(
        &t,
        &state_at(step, past_seconds + session, last_val),
        &cfg.runs_dir,
    )?;
    let weights = with_ext(&cfg.out, "safetensors");
    t.gen.save(&weights).map_err(model_err)?;
    let manifest = CganManifest {
        id: cfg
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cgan-inpaint".into()),
        family: "cgan".into(),
        architecture: ARCH.into(),
        generator: cfg.gen,
        generator_params: t.gen.param_count(),
        discriminator: format!(
            "SN-PatchGAN on [image in [-1,1], mask]: five spectrally normalised 5x5 stride-2 \
             convs ({}, {}, {}, {}, {} ch, leaky ReLU 0.2) + 3x3 head -> patch scores; training \
             only, not shipped",
            cfg.d_base,
            2 * cfg.d_base,
            4 * cfg.d_base,
            4 * cfg.d_base,
            4 * cfg.d_base
        ),
        discriminator_params: t.disc.param_count().map_err(model_err)?,
        losses: losses_text(&cfg.weights),
        loss_weights: cfg.weights,
        optimiser: format!(
            "AdamW (betas 0.9/0.999, wd 1e-4) for G (lr {}) and D (lr {}) separately; linear \
             warm-up over {} steps then constant; one D step (detached fakes) then one G step \
             per batch; last losses {:?}",
            cfg.lr_g, cfg.lr_d, cfg.warmup, last
        ),
        data: cfg.data_desc.clone(),
        data_license: cfg.data_license.clone(),
        crop: cfg.crop,
        batch: cfg.batch,
        steps: step,
        train_seconds: past_seconds + session,
        steps_per_sec,
        command: cfg.command.clone(),
        seed: cfg.seed,
        val: last_val,
    };
    let json_path = with_ext(&cfg.out, "json");
    write_json(&json_path, &manifest)?;
    Ok(TrainOutcome {
        steps: step,
        finished,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: u8) -> CropSource {
        CropSource::new(
            (0..n)
                .map(|i| image::RgbImage::from_pixel(4, 4, image::Rgb([i, 0, 0])))
                .collect(),
        )
    }

    fn ids(s: &CropSource) -> Vec<u8> {
        s.images.iter().map(|i| i.get_pixel(0, 0).0[0]).collect()
    }

    #[test]
    fn split_spread_sets_aside_evenly_spread_photos() {
        let (rest, taken) = numbered(10)
            .split_spread(3)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids(&taken), vec![0, 3, 6]);
        assert_eq!(ids(&rest), vec![1, 2, 4, 5, 7, 8, 9]);
        let (rest, taken) = numbered(5)
            .split_spread(0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(taken.is_empty());
        assert_eq!(rest.len(), 5);
        assert!(
            numbered(5).split_spread(5).is_err(),
            "nothing left to train on"
        );
    }
}
