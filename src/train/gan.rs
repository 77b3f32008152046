//! Training the face GAN: alternating discriminator and generator updates with separate Adam
//! optimisers, an exponential moving average of the generator (what ships), fixed-seed sample
//! grids, a loss log, checkpoints that resume exactly, and the quality figures of the manifest
//! (Fréchet distance on our VAE encoder's features and a nearest-neighbour copy check).
//!
//! [`GanTrainer`] is one training run driven step by step: the CLI loops over it, and the
//! studio's live training view calls it from its worker thread between UI messages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::ema::Ema;
use super::{
    io_err, mix, read_json, save_tensors, write_json, AdamW, BatchOrder, ImageSet, TrainError,
    TrainResult,
};
use crate::models::gan::{
    codes_for_seed, count, GanConfig, GanError, GanLoss, GanMetrics, Generator, LoadedGan,
};
use crate::models::vae::{seeded_normal, sorted_vars, Vae};

impl From<GanError> for TrainError {
    fn from(e: GanError) -> Self {
        TrainError::Invalid(e.to_string())
    }
}

/// Settings of a GAN training run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GanTrainConfig {
    /// Model sizes.
    pub model: GanConfig,
    /// Adversarial objective.
    pub loss: GanLoss,
    /// Images per step (real and generated each).
    pub batch: usize,
    /// Adam learning rate of the generator.
    pub lr_g: f64,
    /// Adam learning rate of the discriminator.
    pub lr_d: f64,
    /// Adam's first-moment decay (0.5 for GANs, Radford et al.).
    pub beta1: f64,
    /// Largest decay of the generator's moving average (ramped up from 0 early on).
    pub ema: f64,
    /// Seed of initialisation, batches and noise.
    pub seed: u64,
}

impl GanTrainConfig {
    /// The settings of the shipped face model.
    pub fn faces64() -> Self {
        Self {
            model: GanConfig::faces64(),
            loss: GanLoss::NonSaturating,
            batch: 32,
            lr_g: 2e-4,
            lr_d: 2e-4,
            beta1: 0.5,
            ema: 0.999,
            seed: 7,
        }
    }

    /// The objective in words, for the manifest.
    pub fn objective(&self) -> String {
        format!(
            "{} GAN loss; alternating updates, one D step (real batch + detached fakes) then one \
             G step per iteration, separate Adam optimisers (lr G {}, lr D {}, betas ({}, \
             0.999)); spectral norm on every D layer (one power iteration per step); the shipped \
             generator is an exponential moving average of G's weights (decay min({}, (1+t)/(10+t))); \
             batch {}, random horizontal flips of the real faces, seed {}",
            self.loss.label(),
            self.lr_g,
            self.lr_d,
            self.beta1,
            self.ema,
            self.batch,
            self.seed
        )
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GanStepStats {
    /// Steps done (1-based).
    pub step: u64,
    /// Discriminator loss.
    pub d_loss: f64,
    /// Generator loss.
    pub g_loss: f64,
    /// Mean D(x) (probability) on the real batch.
    pub d_real: f64,
    /// Mean D(G(z)) (probability) on the fakes of the D step.
    pub d_fake: f64,
}

/// The checkpoint's JSON side.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    train_seconds: f64,
    config: GanTrainConfig,
    #[serde(default)]
    commands: Vec<String>,
}

/// A GAN training run, step by step.
pub struct GanTrainer {
    cfg: GanTrainConfig,
    gan: LoadedGan,
    opt_g: AdamW,
    opt_d: AdamW,
    ema: Ema,
    order: BatchOrder,
    step: u64,
    past_seconds: f64,
    started: Instant,
    commands: Vec<String>,
    dev: Device,
}

impl GanTrainer {
    /// A fresh run over `train_len` training images.
    pub fn new(cfg: GanTrainConfig, train_len: usize, dev: &Device) -> TrainResult<Self> {
        let gan = LoadedGan::fresh(cfg.model, cfg.seed, dev)?;
        let (g_vars, d_vars) = gan.vars()?;
        let ema = Ema::new(&g_vars, cfg.ema)?;
        let opt_g = AdamW::new(g_vars, cfg.lr_g, 0.0)?.with_betas(cfg.beta1, 0.999);
        let opt_d = AdamW::new(d_vars, cfg.lr_d, 0.0)?.with_betas(cfg.beta1, 0.999);
        let order = BatchOrder::new(train_len, cfg.batch, cfg.seed)?;
        Ok(Self {
            cfg,
            gan,
            opt_g,
            opt_d,
            ema,
            order,
            step: 0,
            past_seconds: 0.0,
            started: Instant::now(),
            commands: Vec::new(),
            dev: dev.clone(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &GanTrainConfig {
        &self.cfg
    }

    /// Steps done.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The raw (non-averaged) networks.
    pub fn gan(&self) -> &LoadedGan {
        &self.gan
    }

    /// Training seconds so far, earlier stages included.
    pub fn train_seconds(&self) -> f64 {
        self.past_seconds + self.started.elapsed().as_secs_f64()
    }

    /// The command lines of the stages so far (for the manifest).
    pub fn commands(&self) -> &[String] {
        &self.commands
    }

    /// Records this stage's command line.
    pub fn push_command(&mut self, command: String) {
        self.commands.push(command);
    }

    /// One iteration on the real batch of this step: a D update, then a G update.
    pub fn step(&mut self, train: &ImageSet) -> TrainResult<GanStepStats> {
        let (idx, flips) = self.order.batch(self.step);
        let real = train.batch(&idx, &flips, &self.dev)?;
        let mut rng = StdRng::seed_from_u64(mix(self.cfg.seed ^ 0x6A7, self.step));
        let n = self.cfg.batch;
        let latent = self.cfg.model.latent;
        let z_d = seeded_normal(&mut rng, n, latent, &self.dev)?;
        let z_g = seeded_normal(&mut rng, n, latent, &self.dev)?;
        let stats = train_step(
            &self.gan,
            &mut self.opt_g,
            &mut self.opt_d,
            &real,
            &z_d,
            &z_g,
            self.cfg.loss,
        )?;
        if ![stats.d_loss, stats.g_loss].iter().all(|v| v.is_finite()) {
            return Err(TrainError::Invalid(format!(
                "loss became non-finite at step {} (D {}, G {})",
                self.step + 1,
                stats.d_loss,
                stats.g_loss
            )));
        }
        self.step += 1;
        self.update_ema()?;
        Ok(GanStepStats {
            step: self.step,
            ..stats
        })
    }

    fn update_ema(&mut self) -> TrainResult<()> {
        self.ema.update(&sorted_vars(&self.gan.g_vars)?, self.step)
    }

    /// Starts from trained weights instead of the fresh initialisation: sets G and D from a
    /// file written by [`LoadedGan::save`] (f16 or f32; its sizes must be this run's) and
    /// restarts the moving average at the loaded G. The optimisers start afresh.
    pub fn init_from(&mut self, weights: &Path) -> TrainResult<()> {
        let tensors = candle_core::safetensors::load(weights, &self.dev).map_err(|e| {
            TrainError::Invalid(format!(
                "{}: not a readable safetensors file ({e})",
                weights.display()
            ))
        })?;
        self.gan.set_from(&tensors, weights)?;
        self.ema.reset(&sorted_vars(&self.gan.g_vars)?)
    }

    /// The moving-average generator (what ships and what the grids show).
    pub fn ema_generator(&self) -> TrainResult<Generator> {
        Ok(Generator::new(
            VarBuilder::from_tensors(self.ema.tensors(""), DType::F32, &self.dev),
            self.cfg.model,
        )?)
    }

    /// Images `[n, 3, s, s]` of the moving-average generator for the fixed codes of `seed`.
    pub fn samples(&self, seed: u64, n: usize) -> TrainResult<Tensor> {
        let z = codes_for_seed(seed, n, self.cfg.model.latent, &self.dev)?;
        Ok(self.ema_generator()?.forward(&z)?)
    }

    /// The shipped form: the moving-average generator with the trained discriminator.
    pub fn shipped(&self) -> TrainResult<LoadedGan> {
        let out = LoadedGan::fresh(self.cfg.model, 0, &self.dev)?;
        let mut map = self.gan.tensors()?;
        map.extend(self.ema.tensors("g."));
        out.set_from(&map, Path::new("<trainer>"))?;
        Ok(out)
    }

    /// Writes `checkpoint.safetensors` (networks, moving average, both optimisers' moments)
    /// and `checkpoint.json` in `runs`.
    pub fn save_checkpoint(&self, runs: &Path) -> TrainResult<()> {
        std::fs::create_dir_all(runs).map_err(io_err(runs))?;
        let mut tensors = self.gan.tensors()?;
        for (k, v) in self.opt_g.state() {
            tensors.insert(format!("opt_g.{k}"), v);
        }
        for (k, v) in self.opt_d.state() {
            tensors.insert(format!("opt_d.{k}"), v);
        }
        tensors.extend(self.ema.tensors("ema."));
        let path = runs.join("checkpoint.safetensors");
        save_tensors(&tensors, &path)?;
        let state = CheckpointState {
            step: self.step,
            train_seconds: self.train_seconds(),
            config: self.cfg.clone(),
            commands: self.commands.clone(),
        };
        let json = runs.join("checkpoint.json");
        write_json(&json, &state)
    }

    /// Continues from the checkpoint in `runs`, if any (returns whether one was loaded). The
    /// settings must match, except the learning rates, which a later stage may change.
    pub fn resume(&mut self, runs: &Path) -> TrainResult<bool> {
        let json = runs.join("checkpoint.json");
        let path = runs.join("checkpoint.safetensors");
        if !json.is_file() || !path.is_file() {
            return Ok(false);
        }
        let state: CheckpointState = read_json(&json)?;
        let same = |a: &GanTrainConfig, b: &GanTrainConfig| {
            a.model == b.model && a.loss == b.loss && a.batch == b.batch && a.seed == b.seed
        };
        if !same(&state.config, &self.cfg) {
            return Err(TrainError::Invalid(format!(
                "checkpoint in {} was trained with other settings ({:?})",
                runs.display(),
                state.config
            )));
        }
        let tensors = candle_core::safetensors::load(&path, &self.dev)?;
        self.gan.set_from(&tensors, &path)?;
        let sub = |prefix: &str| -> HashMap<String, Tensor> {
            tensors
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), v.clone())))
                .collect()
        };
        self.opt_g.load_state(&sub("opt_g."), state.step)?;
        self.opt_d.load_state(&sub("opt_d."), state.step)?;
        self.ema.load(&tensors, "ema.")?;
        self.step = state.step;
        self.past_seconds = state.train_seconds;
        self.started = Instant::now();
        self.commands = state.commands;
        Ok(true)
    }
}

/// One alternating update. The D step sees the real batch and fakes from `z_d` detached from
/// G, so its backward pass cannot reach G; only D's optimiser steps. The G step backpropagates
/// through D into G, and only G's optimiser steps (D's gradients of that pass are dropped).
pub fn train_step(
    gan: &LoadedGan,
    opt_g: &mut AdamW,
    opt_d: &mut AdamW,
    real: &Tensor,
    z_d: &Tensor,
    z_g: &Tensor,
    loss: GanLoss,
) -> TrainResult<GanStepStats> {
    let fake = gan.g.forward(z_d)?.detach();
    let d_real = gan.d.forward(real, true)?;
    let d_fake = gan.d.forward(&fake, false)?;
    let d_loss = loss.d_loss(&d_real, &d_fake)?;
    opt_d.backward_step(&d_loss)?;
    let fake = gan.g.forward(z_g)?;
    let g_loss = loss.g_loss(&gan.d.forward(&fake, false)?)?;
    opt_g.backward_step(&g_loss)?;
    let prob = |t: &Tensor| -> TrainResult<f64> {
        Ok(f64::from(
            candle_nn::ops::sigmoid(t)?.mean_all()?.to_scalar::<f32>()?,
        ))
    };
    Ok(GanStepStats {
        step: 0,
        d_loss: f64::from(d_loss.to_scalar::<f32>()?),
        g_loss: f64::from(g_loss.to_scalar::<f32>()?),
        d_real: prob(&d_real)?,
        d_fake: prob(&d_fake)?,
    })
}

/// Appends one line per step to `losses.csv` in `runs` (header when new).
pub fn log_losses(runs: &Path, rows: &[GanStepStats]) -> TrainResult<()> {
    use std::io::Write;
    let path = runs.join("losses.csv");
    let new = !path.is_file();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let mut text = String::new();
    if new {
        text.push_str("step,d_loss,g_loss,d_real,d_fake\n");
    }
    for r in rows {
        text.push_str(&format!(
            "{},{:.5},{:.5},{:.5},{:.5}\n",
            r.step, r.d_loss, r.g_loss, r.d_real, r.d_fake
        ));
    }
    f.write_all(text.as_bytes()).map_err(io_err(&path))
}

/// Features of images `[n, 3, s, s]` for the Fréchet distance: the posterior means of our
/// face VAE's encoder (`[n, latent]`), in batches.
pub fn vae_features(vae: &Vae, images: &Tensor) -> TrainResult<Vec<Vec<f64>>> {
    let n = images.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let k = (n - i).min(100);
        let (mu, _) = vae.encode(&images.narrow(0, i, k)?)?;
        for row in mu.to_vec2::<f32>()? {
            out.push(row.into_iter().map(f64::from).collect());
        }
        i += k;
    }
    Ok(out)
}

/// Mean and covariance of row vectors.
fn moments(x: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = x.len().max(2);
    let d = x.first().map(Vec::len).unwrap_or(0);
    let mut mean = vec![0.0; d];
    for r in x {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / x.len().max(1) as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for r in x {
        for i in 0..d {
            let a = r[i] - mean[i];
            for j in i..d {
                cov[i * d + j] += a * (r[j] - mean[j]);
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mean, cov)
}

/// Symmetric square root of a symmetric positive semi-definite `d x d` matrix.
fn sqrtm_sym(a: &[f64], d: usize) -> Vec<f64> {
    let (vals, vecs) = crate::models::latent_pca::jacobi_eigen(a.to_vec(), d);
    let mut out = vec![0.0; d * d];
    for (k, &l) in vals.iter().enumerate() {
        let s = l.max(0.0).sqrt();
        for i in 0..d {
            let vi = vecs[i * d + k] * s;
            for j in 0..d {
                out[i * d + j] += vi * vecs[j * d + k];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                out[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    out
}

/// The Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):
/// `|m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`, with the trace of the square root computed
/// as that of `(S1^(1/2) S2 S1^(1/2))^(1/2)`, which is symmetric.
pub fn frechet_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let (ma, sa) = moments(a);
    let (mb, sb) = moments(b);
    let d = ma.len();
    let mean_term: f64 = ma.iter().zip(&mb).map(|(x, y)| (x - y) * (x - y)).sum();
    let ra = sqrtm_sym(&sa, d);
    let m = matmul(&matmul(&ra, &sb, d), &ra, d);
    // Symmetrise against rounding before the eigen-decomposition.
    let mut msym = m.clone();
    for i in 0..d {
        for j in 0..d {
            msym[i * d + j] = 0.5 * (m[i * d + j] + m[j * d + i]);
        }
    }
    let (vals, _) = crate::models::latent_pca::jacobi_eigen(msym, d);
    let tr_sqrt: f64 = vals.iter().map(|v| v.max(0.0).sqrt()).sum();
    let tr: f64 = (0..d).map(|i| sa[i * d + i] + sb[i * d + i]).sum();
    (mean_term + tr - 2.0 * tr_sqrt).max(0.0)
}

/// For each image of `queries` (`[n, 3, s, s]`), the index of the nearest image of `set` in
/// pixel RMSE and that RMSE (mirror images of `set` count too, as training flips them).
pub fn nearest_neighbours(queries: &Tensor, set: &ImageSet) -> TrainResult<Vec<(usize, f64)>> {
    let dev = Device::Cpu;
    let q = queries.flatten_from(1)?.to_dtype(DType::F32)?;
    let (n, dims) = q.dims2()?;
    let qn = q.sqr()?.sum_keepdim(1)?; // [n, 1]
    let mut best = vec![(0usize, f64::INFINITY); n];
    let chunk = 500;
    let mut start = 0;
    while start < set.len() {
        let k = (set.len() - start).min(chunk);
        let idx: Vec<usize> = (start..start + k).collect();
        for flip in [false, true] {
            let flips = vec![flip; k];
            let x = set.batch(&idx, &flips, &dev)?.flatten_from(1)?; // [k, dims]
            let xn = x.sqr()?.sum_keepdim(1)?.t()?; // [1, k]
            let dots = q.matmul(&x.t()?)?; // [n, k]
            let d2 = (qn.broadcast_add(&xn)? - (dots * 2.0)?)?;
            let d2: Vec<Vec<f32>> = d2.to_vec2()?;
            for (i, row) in d2.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let rmse = (f64::from(v.max(0.0)) / dims as f64).sqrt();
                    if rmse < best[i].1 {
                        best[i] = (start + j, rmse);
                    }
                }
            }
        }
        start += k;
    }
    Ok(best)
}

/// How many images the quality figures use, and the seed of the samples.
#[derive(Clone, Copy, Debug)]
pub struct EvalSpec {
    /// Samples and held-out faces for the Fréchet distance.
    pub fd_images: usize,
    /// Samples and held-out faces for the nearest-neighbour check.
    pub nn_images: usize,
    /// Seed of the samples.
    pub seed: u64,
}

/// The manifest's quality figures: Fréchet distances on `vae`'s encoder features between
/// `spec.fd_images` samples of `g` (seeded) and as many held-out faces, the train-vs-held-out
/// floor and, when `vae_samples` is given, the VAE's own samples; and the nearest-neighbour
/// check on `spec.nn_images` samples and held-out faces against the training set.
pub fn evaluate(
    g: &Generator,
    vae: &Vae,
    vae_samples: Option<&Tensor>,
    train: &ImageSet,
    val: &ImageSet,
    spec: EvalSpec,
) -> TrainResult<GanMetrics> {
    let EvalSpec {
        fd_images: n,
        nn_images: nn,
        seed,
    } = spec;
    let dev = Device::Cpu;
    let n = n.min(val.len()).min(train.len());
    let latent = g.config().latent;
    let mut samples = Vec::new();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(100);
        let z = codes_for_seed(mix(seed ^ 0xFD, i as u64), k, latent, &dev)?;
        samples.push(g.forward(&z)?);
        i += k;
    }
    let samples = Tensor::cat(&samples, 0)?;
    let val_x = val.batch(&(0..n).collect::<Vec<_>>(), &[], &dev)?;
    let mut pick: Vec<usize> = (0..train.len()).collect();
    {
        use rand::seq::SliceRandom;
        pick.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x7A1));
    }
    let train_x = train.batch(&pick[..n], &[], &dev)?;
    let f_val = vae_features(vae, &val_x)?;
    let f_samples = vae_features(vae, &samples)?;
    let f_train = vae_features(vae, &train_x)?;
    let fd_vae_samples_vs_val = match vae_samples {
        Some(v) => Some(frechet_distance(&vae_features(vae, v)?, &f_val)),
        None => None,
    };
    let nn = nn.min(n);
    let s_nn = nearest_neighbours(&samples.narrow(0, 0, nn)?, train)?;
    let v_nn = nearest_neighbours(&val_x.narrow(0, 0, nn)?, train)?;
    let mean = |v: &[(usize, f64)]| v.iter().map(|p| p.1).sum::<f64>() / v.len().max(1) as f64;
    Ok(GanMetrics {
        fd_images: n,
        fd_samples_vs_val: frechet_distance(&f_samples, &f_val),
        fd_train_vs_val: frechet_distance(&f_train, &f_val),
        fd_vae_samples_vs_val,
        nn_rmse_samples_to_train: mean(&s_nn),
        nn_rmse_val_to_train: mean(&v_nn),
        nn_images: nn,
        nn_rmse_min_sample: s_nn.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
    })
}

/// Number of trainable values of G and D.
pub fn param_counts(gan: &LoadedGan) -> TrainResult<(usize, usize)> {
    let (g, d) = gan.vars()?;
    Ok((count(&g), count(&d)))
}

/// `runs/<name>` files the CLI writes.
pub fn grid_path(runs: &Path, step: u64) -> PathBuf {
    runs.join(format!("samples_{step:06}.png"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_cfg() -> GanTrainConfig {
        GanTrainConfig {
            model: GanConfig {
                image_size: 16,
                latent: 8,
                g_base: 2,
                d_base: 2,
            },
            batch: 4,
            ..GanTrainConfig::faces64()
        }
    }

    fn tiny_set() -> ImageSet {
        let imgs: Vec<Vec<u8>> = (0..6)
            .map(|k| {
                (0..16 * 16 * 3)
                    .map(|i| ((i * 7 + k * 31) % 256) as u8)
                    .collect()
            })
            .collect();
        ImageSet::from_rgb(16, &imgs).unwrap()
    }

    fn snapshot(vars: &[(String, candle_core::Var)]) -> Vec<Vec<f32>> {
        vars.iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn d_and_g_steps_each_move_only_their_own_parameters() {
        let dev = Device::Cpu;
        let cfg = tiny_cfg();
        let gan = LoadedGan::fresh(cfg.model, 3, &dev).unwrap();
        let (g_vars, d_vars) = gan.vars().unwrap();
        let mut opt_g = AdamW::new(g_vars.clone(), 1e-2, 0.0).unwrap();
        let mut opt_d = AdamW::new(d_vars.clone(), 1e-2, 0.0).unwrap();
        let real = tiny_set().batch(&[0, 1, 2, 3], &[], &dev).unwrap();
        let z = codes_for_seed(1, 4, 8, &dev).unwrap();
        let (g0, d0) = (snapshot(&g_vars), snapshot(&d_vars));
        // The D half alone: G unchanged, every D tensor changed.
        let fake = gan.g.forward(&z).unwrap().detach();
        let l = GanLoss::NonSaturating
            .d_loss(
                &gan.d.forward(&real, true).unwrap(),
                &gan.d.forward(&fake, false).unwrap(),
            )
            .unwrap();
        let grads = l.backward().unwrap();
        assert!(g_vars.iter().all(|(_, v)| grads.get(v).is_none()));
        opt_d.step(&grads).unwrap();
        assert_eq!(snapshot(&g_vars), g0);
        let d1 = snapshot(&d_vars);
        assert!(d1.iter().zip(&d0).all(|(a, b)| a != b));
        // The G half alone: D unchanged, every G tensor changed.
        let l = GanLoss::NonSaturating
            .g_loss(&gan.d.forward(&gan.g.forward(&z).unwrap(), false).unwrap())
            .unwrap();
        opt_g.backward_step(&l).unwrap();
        assert_eq!(snapshot(&d_vars), d1);
        assert!(snapshot(&g_vars).iter().zip(&g0).all(|(a, b)| a != b));
    }

    #[test]
    fn a_few_steps_run_without_nans_and_resume_exactly() {
        let dev = Device::Cpu;
        let set = tiny_set();
        let mut a = GanTrainer::new(tiny_cfg(), set.len(), &dev).unwrap();
        for _ in 0..3 {
            let s = a.step(&set).unwrap();
            assert!(s.d_loss.is_finite() && s.g_loss.is_finite());
            assert!((0.0..=1.0).contains(&s.d_real) && (0.0..=1.0).contains(&s.d_fake));
        }
        let dir = tempfile::tempdir().unwrap();
        a.save_checkpoint(dir.path()).unwrap();
        let mut b = GanTrainer::new(tiny_cfg(), set.len(), &dev).unwrap();
        assert!(b.resume(dir.path()).unwrap());
        assert_eq!(b.steps(), 3);
        let sa = a.step(&set).unwrap();
        let sb = b.step(&set).unwrap();
        assert!((sa.d_loss - sb.d_loss).abs() < 1e-6 && (sa.g_loss - sb.g_loss).abs() < 1e-6);
        let xa = a.samples(5, 2).unwrap();
        let xb = b.samples(5, 2).unwrap();
        let diff = (xa - xb).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        // The shipped form loads back with the moving-average generator.
        let shipped = a.shipped().unwrap();
        let z = codes_for_seed(5, 2, 8, &dev).unwrap();
        let y = shipped.g.forward(&z).unwrap();
        let diff = (y - a.samples(5, 2).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn init_from_loads_both_networks_and_restarts_the_average() {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.safetensors");
        let other = LoadedGan::fresh(tiny_cfg().model, 99, &dev).unwrap();
        other.save(&path, true).unwrap();
        let mut t = GanTrainer::new(tiny_cfg(), 6, &dev).unwrap();
        let z = codes_for_seed(5, 2, 8, &dev).unwrap();
        let before = t.samples(5, 2).unwrap();
        t.init_from(&path).unwrap();
        // The file is f16: compare against the same weights loaded the shipped way.
        let loaded = LoadedGan::load(tiny_cfg().model, &path, &dev).unwrap();
        let want = loaded.g.forward(&z).unwrap();
        let max = |a: Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert_eq!(max(t.samples(5, 2).unwrap(), &want), 0.0);
        assert!(max(before, &want) > 1e-3, "the fresh G already matched");
        let x = tiny_set().batch(&[0, 1], &[], &dev).unwrap();
        let d = |g: &LoadedGan| g.d.forward(&x, false).unwrap();
        assert_eq!(max(d(t.gan()), &d(&loaded)), 0.0);
        // It trains on from there without NaNs.
        let s = t.step(&tiny_set()).unwrap();
        assert!(s.d_loss.is_finite() && s.g_loss.is_finite());
        // A file of other sizes is refused with a reason.
        let big = GanConfig {
            latent: 9,
            ..tiny_cfg().model
        };
        LoadedGan::fresh(big, 1, &dev)
            .unwrap()
            .save(&path, false)
            .unwrap();
        let err = t.init_from(&path).unwrap_err().to_string();
        assert!(err.contains("model expects"), "{err}");
    }

    #[test]
    fn frechet_distance_of_known_gaussians() {
        // Same samples: zero. Shifted by a constant vector c: |c|^2.
        let mut rng = StdRng::seed_from_u64(4);
        let dev = Device::Cpu;
        let x: Vec<Vec<f64>> = seeded_normal(&mut rng, 400, 3, &dev)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(f64::from).collect())
            .collect();
        assert!(frechet_distance(&x, &x) < 1e-6);
        let shifted: Vec<Vec<f64>> = x
            .iter()
            .map(|r| vec![r[0] + 1.0, r[1] - 2.0, r[2]])
            .collect();
        assert!((frechet_distance(&x, &shifted) - 5.0).abs() < 1e-6);
        // Scaled by 2: covariance S -> 4S, so tr(S + 4S - 2 * 2S) = tr(S).
        let scaled: Vec<Vec<f64>> = x
            .iter()
            .map(|r| r.iter().map(|v| 2.0 * v).collect())
            .collect();
        let (m, s) = moments(&x);
        let tr: f64 = (0..3).map(|i| s[i * 3 + i]).sum();
        let mean_term: f64 = m.iter().map(|v| v * v).sum();
        assert!((frechet_distance(&x, &scaled) - (tr + mean_term)).abs() < 1e-6);
    }

    #[test]
    fn nearest_neighbour_finds_a_copy_and_its_mirror() {
        let dev = Device::Cpu;
        let set = tiny_set();
        let q = set.batch(&[4, 2], &[false, true], &dev).unwrap();
        let nn = nearest_neighbours(&q, &set).unwrap();
        // The distance comes from |q|^2 + |x|^2 - 2 q.x in f32: zero up to rounding.
        assert_eq!(nn[0].0, 4);
        assert!(nn[0].1 < 1e-3, "{}", nn[0].1);
        assert_eq!(nn[1].0, 2);
        assert!(nn[1].1 < 1e-3, "{}", nn[1].1);
        // Another image is much farther.
        let other =
            nearest_neighbours(&q, &ImageSet::from_rgb(16, &[vec![0u8; 768]]).unwrap()).unwrap();
        assert!(other[0].1 > 0.1);
    }
}
