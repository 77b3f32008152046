//! Training the face VAE: seeded split and batches, KL warm-up, AdamW, periodic sample and
//! reconstruction grids, checkpoints that resume exactly, held-out evaluation and the manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{
    io_err, mix, read_json, save_grid, save_tensors, write_json, AdamW, BatchOrder, ImageSet,
    TrainError, TrainResult,
};
use crate::models::latent_pca::LatentPca;
use crate::models::vae::{
    param_count, seeded_normal, sorted_vars, LoadedVae, Vae, VaeConfig, VaeManifest, VaeMetrics,
};

/// Settings of a VAE training run.
#[derive(Clone, Debug)]
pub struct VaeTrainConfig {
    /// Model sizes.
    pub model: VaeConfig,
    /// Total optimiser steps to reach (a resumed run continues up to this count).
    pub steps: u64,
    /// Images per step.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Steps over which the KL weight rises linearly from 0 to 1.
    pub kl_warmup: u64,
    /// Seed of initialisation, split, batch order, flips and noise.
    pub seed: u64,
    /// Images held out for validation.
    pub val_count: usize,
    /// Write sample/reconstruction grids and a checkpoint every this many steps (0: only at
    /// the end).
    pub sample_every: u64,
    /// Folder for grids and checkpoints.
    pub runs_dir: PathBuf,
    /// Output stem: `<out>.safetensors` and `<out>.json` are written at the end.
    pub out: PathBuf,
    /// Continue from the checkpoint in `runs_dir` if there is one.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many wall-clock seconds of this stage, if set.
    pub max_seconds: Option<f64>,
    /// Data description for the manifest.
    pub data_desc: String,
    /// Data licence for the manifest.
    pub data_license: String,
    /// The command line, for the manifest.
    pub command: String,
}

/// What the loop reports after each step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: u64,
    /// Target step count.
    pub total: u64,
    /// Batch mean of `recon + beta * KL` (nats per image, constant excluded).
    pub loss: f64,
    /// Batch mean reconstruction term `SSE / (2 sigma^2)`.
    pub recon: f64,
    /// Batch mean KL.
    pub kl: f64,
    /// Current KL weight.
    pub beta: f64,
    /// Batch PSNR (dB) of the sampled reconstruction.
    pub psnr: f64,
    /// Steps per second over this stage.
    pub steps_per_sec: f64,
}

/// The checkpoint's JSON side (the tensors live in `checkpoint.safetensors`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    train_seconds: f64,
    model: VaeConfig,
    batch: usize,
    seed: u64,
}

/// The outcome of [`train_vae`].
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Steps reached.
    pub steps: u64,
    /// Whether the target step count was reached (else stopped by the time limit).
    pub finished: bool,
    /// The manifest written (only when finished).
    pub manifest: Option<VaeManifest>,
}

fn ckpt_paths(runs: &Path) -> (PathBuf, PathBuf) {
    (
        runs.join("checkpoint.safetensors"),
        runs.join("checkpoint.json"),
    )
}

/// KL weight at `step` (0-based): linear warm-up from 0 to 1 over `warmup` steps.
pub fn kl_weight(step: u64, warmup: u64) -> f64 {
    if warmup == 0 {
        1.0
    } else {
        ((step + 1) as f64 / warmup as f64).min(1.0)
    }
}

/// One training step on `x`: returns (loss, recon, kl, psnr) batch means.
pub fn train_step(
    vae: &Vae,
    opt: &mut AdamW,
    x: &Tensor,
    eps: &Tensor,
    beta: f64,
) -> TrainResult<(f64, f64, f64, f64)> {
    let out = vae.forward(x, Some(eps))?;
    let terms = vae.loss(x, &out)?;
    let loss = (&terms.recon + (&terms.kl * beta)?)?.mean_all()?;
    opt.backward_step(&loss)?;
    let dims = vae.config().dims() as f64;
    let recon = terms.recon.mean_all()?.to_scalar::<f32>()? as f64;
    let kl = terms.kl.mean_all()?.to_scalar::<f32>()? as f64;
    let mse = terms.sse.mean_all()?.to_scalar::<f32>()? as f64 / dims;
    Ok((
        loss.to_scalar::<f32>()? as f64,
        recon,
        kl,
        psnr_from_mse(mse),
    ))
}

/// PSNR in dB for values in `[0, 1]`.
pub fn psnr_from_mse(mse: f64) -> f64 {
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// Held-out metrics: PSNR of the posterior-mean reconstruction, and a one-sample ELBO.
pub fn evaluate(vae: &Vae, val: &ImageSet, seed: u64, dev: &Device) -> TrainResult<VaeMetrics> {
    let n = val.len();
    let dims = vae.config().dims() as f64;
    let mut rng = StdRng::seed_from_u64(mix(seed, 0xE7A1));
    let (mut psnr, mut nll, mut kl) = (0.0, 0.0, 0.0);
    let chunk = 50;
    let mut start = 0;
    while start < n {
        let idx: Vec<usize> = (start..(start + chunk).min(n)).collect();
        let x = val.batch(&idx, &[], dev)?;
        // PSNR from the posterior mean: what "encode then decode" gives a user.
        let mean_out = vae.forward(&x, None)?;
        let sse_mean: Vec<f32> = vae.loss(&x, &mean_out)?.sse.to_vec1()?;
        psnr += sse_mean
            .iter()
            .map(|&s| psnr_from_mse(f64::from(s) / dims))
            .sum::<f64>();
        // ELBO with one posterior sample per image.
        let eps = seeded_normal(&mut rng, idx.len(), vae.config().latent, dev)?;
        let out = vae.forward(&x, Some(&eps))?;
        let terms = vae.loss(&x, &out)?;
        nll += terms.recon.sum_all()?.to_scalar::<f32>()? as f64
            + vae.nll_constant() * idx.len() as f64;
        kl += terms.kl.sum_all()?.to_scalar::<f32>()? as f64;
        start += chunk;
    }
    let nf = n.max(1) as f64;
    Ok(VaeMetrics {
        val_images: n,
        val_recon_psnr_db: psnr / nf,
        val_elbo_nats: -(nll + kl) / nf,
        val_recon_nll_nats: nll / nf,
        val_kl_nats: kl / nf,
    })
}

/// The PCA of the posterior means of `set` (the latent explorer's slider directions, and an
/// ex-post Gaussian of the aggregate posterior to sample from).
pub fn fit_latent_pca(vae: &Vae, set: &ImageSet, dev: &Device) -> TrainResult<LatentPca> {
    let mut codes = Vec::with_capacity(set.len());
    let chunk = 100;
    let mut start = 0;
    while start < set.len() {
        let idx: Vec<usize> = (start..(start + chunk).min(set.len())).collect();
        let x = set.batch(&idx, &[], dev)?;
        let (mu, _) = vae.encode(&x)?;
        codes.extend(mu.to_vec2::<f32>()?);
        start += chunk;
    }
    Ok(LatentPca::fit(&codes)?)
}

/// Writes `samples_<step>.png` (16 decodes of fixed latent codes) and `recon_<step>.png`
/// (first row: 8 held-out faces; second row: their posterior-mean reconstructions).
pub fn write_grids(
    vae: &Vae,
    val: &ImageSet,
    seed: u64,
    step: u64,
    runs: &Path,
    dev: &Device,
) -> TrainResult<()> {
    let mut rng = StdRng::seed_from_u64(mix(seed, 0x5A3F));
    let z = seeded_normal(&mut rng, 16, vae.config().latent, dev)?;
    let samples = vae.decode(&z)?;
    save_grid(&samples, 4, &runs.join(format!("samples_{step:06}.png")))?;
    let k = val.len().min(8);
    if k > 0 {
        let idx: Vec<usize> = (0..k).collect();
        let x = val.batch(&idx, &[], dev)?;
        let out = vae.forward(&x, None)?;
        let both = Tensor::cat(&[&x, &out.recon], 0)?;
        save_grid(&both, k, &runs.join(format!("recon_{step:06}.png")))?;
    }
    Ok(())
}

fn save_checkpoint(
    model: &LoadedVae,
    opt: &AdamW,
    state: &CheckpointState,
    runs: &Path,
) -> TrainResult<()> {
    std::fs::create_dir_all(runs).map_err(io_err(runs))?;
    let (tensors_path, json_path) = ckpt_paths(runs);
    let mut tensors: HashMap<String, Tensor> = opt.state();
    for (name, var) in sorted_vars(&model.varmap)? {
        tensors.insert(format!("param.{name}"), var.as_tensor().clone());
    }
    save_tensors(&tensors, &tensors_path)?;
    write_json(&json_path, state)?;
    Ok(())
}

fn load_checkpoint(
    model: &LoadedVae,
    opt: &mut AdamW,
    runs: &Path,
    dev: &Device,
) -> TrainResult<Option<CheckpointState>> {
    let (tensors_path, json_path) = ckpt_paths(runs);
    if !json_path.is_file() || !tensors_path.is_file() {
        return Ok(None);
    }
    let state: CheckpointState = read_json(&json_path)?;
    let tensors = candle_core::safetensors::load(&tensors_path, dev)?;
    for (name, var) in sorted_vars(&model.varmap)? {
        let t = tensors
            .get(&format!("param.{name}"))
            .ok_or_else(|| TrainError::Invalid(format!("checkpoint has no weights for {name}")))?;
        var.set(t)?;
    }
    opt.load_state(&tensors, state.step)?;
    Ok(Some(state))
}

/// Trains a VAE on `train`, evaluating on `val`; `on_step` sees every step and returns false to
/// stop early (a checkpoint is written). At the target step count the weights and the manifest
/// are written to `<out>.safetensors` / `<out>.json`.
pub fn train_vae(
    cfg: &VaeTrainConfig,
    train: &ImageSet,
    val: &ImageSet,
    dev: &Device,
    on_step: &mut dyn FnMut(&StepReport) -> bool,
) -> TrainResult<TrainOutcome> {
    let model = LoadedVae::fresh(cfg.model, cfg.seed, dev)?;
    let mut opt = AdamW::new(sorted_vars(&model.varmap)?, cfg.lr, cfg.weight_decay)?;
    let mut step = 0u64;
    let mut past_seconds = 0.0;
    if cfg.resume {
        if let Some(state) = load_checkpoint(&model, &mut opt, &cfg.runs_dir, dev)? {
            if state.model != cfg.model || state.batch != cfg.batch || state.seed != cfg.seed {
                return Err(TrainError::Invalid(format!(
                    "checkpoint in {} was trained with other settings (model {:?}, batch {}, \
                     seed {})",
                    cfg.runs_dir.display(),
                    state.model,
                    state.batch,
                    state.seed
                )));
            }
            step = state.step;
            past_seconds = state.train_seconds;
        }
    }
    let order = BatchOrder::new(train.len(), cfg.batch, cfg.seed)?;
    let start = Instant::now();
    let start_step = step;
    let mut stopped = false;
    let checkpoint = |opt: &AdamW, step: u64, secs: f64| {
        save_checkpoint(
            &model,
            opt,
            &CheckpointState {
                step,
                train_seconds: secs,
                model: cfg.model,
                batch: cfg.batch,
                seed: cfg.seed,
            },
            &cfg.runs_dir,
        )
    };
    while step < cfg.steps {
        let (idx, flips) = order.batch(step);
        let x = train.batch(&idx, &flips, dev)?;
        let mut rng = StdRng::seed_from_u64(mix(cfg.seed ^ 0x0E75, step));
        let eps = seeded_normal(&mut rng, cfg.batch, cfg.model.latent, dev)?;
        let beta = kl_weight(step, cfg.kl_warmup);
        let (loss, recon, kl, psnr) = train_step(&model.vae, &mut opt, &x, &eps, beta)?;
        if !loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "loss became {loss} at step {}",
                step + 1
            )));
        }
        step += 1;
        let elapsed = start.elapsed().as_secs_f64();
        let report = StepReport {
            step,
            total: cfg.steps,
            loss,
            recon,
            kl,
            beta,
            psnr,
            steps_per_sec: (step - start_step) as f64 / elapsed.max(1e-9),
        };
        let keep_going = on_step(&report);
        if cfg.sample_every > 0 && step % cfg.sample_every == 0 {
            write_grids(&model.vae, val, cfg.seed, step, &cfg.runs_dir, dev)?;
            checkpoint(&opt, step, past_seconds + start.elapsed().as_secs_f64())?;
        }
        let out_of_time = cfg.max_seconds.is_some_and(|m| elapsed >= m);
        if (!keep_going || out_of_time) && step < cfg.steps {
            stopped = true;
            break;
        }
    }
    let train_seconds = past_seconds + start.elapsed().as_secs_f64();
    checkpoint(&opt, step, train_seconds)?;
    write_grids(&model.vae, val, cfg.seed, step, &cfg.runs_dir, dev)?;
    // The weights and manifest are written whenever a stage ends, so a time-limited stage still
    // ships a usable, measured model; `steps` says how far it got. The shipped file is f16, and
    // the metrics are measured on exactly what ships (reloaded from it).
    let weights = with_ext(&cfg.out, "safetensors");
    if let Some(parent) = weights.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    model.save_f16(&weights)?;
    let shipped = LoadedVae::load(cfg.model, &weights, dev)?;
    let metrics = evaluate(&shipped.vae, val, cfg.seed, dev)?;
    let manifest = VaeManifest {
        family: "vae".into(),
        architecture: cfg.model.architecture(),
        config: cfg.model,
        params: param_count(&model.varmap),
        latent_size: cfg.model.latent,
        input: format!("{0}x{0} RGB", cfg.model.image_size),
        data: cfg.data_desc.clone(),
        data_license: cfg.data_license.clone(),
        objective: objective_text(cfg),
        command: cfg.command.clone(),
        steps: step,
        batch: cfg.batch,
        lr: cfg.lr,
        seed: cfg.seed,
        train_seconds,
        hardware: format!(
            "CPU, {} threads (shared machine)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        ),
        metrics,
    };
    let json = with_ext(&cfg.out, "json");
    manifest.write(&json)?;
    fit_latent_pca(&shipped.vae, train, dev)?.save(&with_ext(&cfg.out, "pca.safetensors"))?;
    Ok(TrainOutcome {
        steps: step,
        finished: !stopped,
        manifest: Some(manifest),
    })
}

/// `<stem>.<ext>` (appends, so `weights/vae-faces` gives `weights/vae-faces.json`).
pub fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn objective_text(cfg: &VaeTrainConfig) -> String {
    format!(
        "negative ELBO: Gaussian likelihood with fixed sigma={} per channel value in [0,1] \
         (recon = SSE/(2 sigma^2)) + beta*KL(q(z|x)||N(0,I)), beta rising linearly 0->1 over \
         the first {} steps, then 1 (a true ELBO). Why: a fixed sigma near the residual error a \
         small VAE reaches on 64x64 faces (RMSE 0.06 at 24.5 dB) keeps the likelihood roughly \
         calibrated (Rybkin et al. 2021) without the blur of sigma^2=0.5 (plain SSE + KL); beta \
         ends at 1 so the reported ELBO is a real bound; the warm-up lets the decoder use z \
         before the KL pulls posteriors to the prior (Bowman et al. 2016). Measured caveat: the \
         encoded training set does not cover N(0,I), so `sample`/`interpolate` draw from the \
         Gaussian fitted to it (<id>.pca.safetensors) unless --prior is given. \
         AdamW lr={} wd={}, batch {}, random horizontal flips, seed {}.",
        cfg.model.sigma, cfg.kl_warmup, cfg.lr, cfg.weight_decay, cfg.batch, cfg.seed
    )
}
