//! Training of the PixelRL agents (`kintsugi train rl`): seeded episodes on random crops,
//! advantage actor-critic updates, checkpoints and resume, and the shipped weights + manifest.
//!
//! - `denoise`: crops of clean photos with Gaussian noise (per-channel, sigma drawn per image
//!   from the configured list, not clipped); every pixel acts.
//! - `refine`: crops with scattered small damage (specks and hairs) filled by Telea; only the
//!   hole pixels act, the rest is the clean image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::cgan::{with_ext, CropSource};
use super::{io_err, mix, read_json, save_tensors, write_json, AdamW, TrainError, TrainResult};
use crate::rl::a2c::{greedy_episode, train_episode, A2cConfig, EpisodeStats};
use crate::rl::agent::RlManifest;
use crate::rl::env::{psnr, Action, Episode, Frame};
use crate::rl::net::{named_vars, LoadedNet, NetConfig, RlError};

fn rl_err(e: RlError) -> TrainError {
    match e {
        RlError::Candle(c) => TrainError::Candle(c),
        other => TrainError::Invalid(other.to_string()),
    }
}

/// What the agent learns to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Task {
    /// Remove Gaussian noise (film grain, scanner noise).
    Denoise,
    /// Improve a classical (Telea) fill of small holes.
    Refine,
}

impl Task {
    /// The task's name (`denoise` / `refine`).
    pub fn name(self) -> &'static str {
        match self {
            Task::Denoise => "denoise",
            Task::Refine => "refine",
        }
    }

    /// The action set of the task.
    pub fn actions(self) -> Vec<Action> {
        match self {
            Task::Denoise => Action::DENOISE.to_vec(),
            Task::Refine => Action::ALL.to_vec(),
        }
    }
}

/// Adds seeded per-channel Gaussian noise of `sigma` (8-bit units) to `clean`.
pub fn add_noise(clean: &Frame, sigma: f64, seed: u64) -> Frame {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = (sigma / 255.0) as f32;
    let mut out = clean.clone();
    for v in out.data.iter_mut() {
        // Box-Muller.
        let u1: f32 = rng.random::<f32>().max(1e-7);
        let u2: f32 = rng.random();
        *v += s * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
    }
    out
}

/// A Telea fill of `hole` in `clean` (the refine task's starting point).
pub fn classical_fill(clean: &Frame, hole: &[bool]) -> TrainResult<Frame> {
    StartFill::Telea.fill(clean, hole)
}

/// The fill a refine episode starts from.
#[derive(Clone)]
pub enum StartFill {
    /// Telea fast marching (the shipped `rl-refine`).
    Telea,
    /// Any restorer of the registry (`cgan-inpaint`, `auto`, ...), run on the whole crop.
    Restorer {
        /// Its registry id (recorded in the manifest).
        id: String,
        /// The restorer.
        restorer: std::sync::Arc<dyn crate::restore::Restorer>,
    },
}

impl std::fmt::Debug for StartFill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl StartFill {
    /// The registry id of the fill.
    pub fn name(&self) -> &str {
        match self {
            StartFill::Telea => "telea",
            StartFill::Restorer { id, .. } => id,
        }
    }

    /// The start fill `id` from `registry` (`telea` needs no weights).
    pub fn from_registry(
        registry: &crate::models::registry::Registry,
        id: &str,
    ) -> TrainResult<Self> {
        if id == "telea" {
            return Ok(StartFill::Telea);
        }
        let restorer = registry
            .restorer(id)
            .map_err(|e| TrainError::Invalid(format!("start fill {id}: {e}")))?;
        Ok(StartFill::Restorer {
            id: id.to_owned(),
            restorer,
        })
    }

    /// Fills `hole` of `clean` (the hole pixels of `clean` are never read).
    pub fn fill(&self, clean: &Frame, hole: &[bool]) -> TrainResult<Frame> {
        use crate::restore::Restorer;
        let mask = crate::imaging::Mask::from_vec(clean.w, clean.h, hole.to_vec())
            .ok_or_else(|| TrainError::Invalid("mask size".into()))?;
        if mask.is_empty() {
            return Ok(clean.clone());
        }
        // Blank the holes, so no restorer can peek at the answer.
        let mut damaged = clean.clone();
        let plane = clean.w * clean.h;
        for (p, _) in hole.iter().enumerate().filter(|(_, &h)| h) {
            for c in 0..3 {
                damaged.data[c * plane + p] = 0.5;
            }
        }
        let img = damaged.to_image();
        let params = crate::restore::Params::new();
        let rep = crate::restore::NullReporter;
        let out = match self {
            StartFill::Telea => crate::restore::telea::Telea.restore(&img, &mask, &params, &rep),
            StartFill::Restorer { restorer, .. } => restorer.restore(&img, &mask, &params, &rep),
        }
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
        Frame::from_image(&out).ok_or_else(|| TrainError::Invalid("fill is not RGB".into()))
    }
}

/// Which holes a refine episode has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HoleKind {
    /// Scattered specks and hairs, 3-12% of the crop (the shipped `rl-refine`).
    Scattered,
    /// The cGAN's training damage without the artifact cut-outs: free-form brush strokes (wide
    /// holes) in most crops, plus scratches, hairs and dust.
    Mixed,
}

impl HoleKind {
    /// `scattered` or `mixed`.
    pub fn name(self) -> &'static str {
        match self {
            HoleKind::Scattered => "scattered",
            HoleKind::Mixed => "mixed",
        }
    }

    /// The hole map (row-major) of a `w x h` crop for `seed`.
    pub fn mask(self, w: usize, h: usize, seed: u64) -> Vec<bool> {
        match self {
            HoleKind::Scattered => {
                let mut rng = StdRng::seed_from_u64(seed ^ 0x0e15);
                let coverage = rng.random_range(0.03..0.12);
                crate::imaging::mask_synth::scattered_damage(w, h, coverage, seed)
                    .data()
                    .to_vec()
            }
            HoleKind::Mixed => {
                let blank = crate::imaging::ImageF32::from_fn(w, h, 3, |_, _, _| 0.5);
                let cfg = super::damage_synth::DamageConfig {
                    brush: 0.85,
                    artifacts: 0.0,
                    max_coverage: 0.4,
                    ..Default::default()
                };
                let (_, mask) = super::damage_synth::synthesize(&blank, None, &cfg, seed);
                mask.data().to_vec()
            }
        }
    }
}

/// How refine episodes are made: the holes and the fill they start from.
#[derive(Clone, Debug)]
pub struct RefineSetup {
    /// The starting fill.
    pub start: StartFill,
    /// The holes.
    pub holes: HoleKind,
}

impl Default for RefineSetup {
    /// Telea on scattered specks and hairs (the shipped `rl-refine`).
    fn default() -> Self {
        Self {
            start: StartFill::Telea,
            holes: HoleKind::Scattered,
        }
    }
}

/// Episode start for one clean crop, a function of `seed` only (refine: Telea on scattered
/// damage, see [`make_episode_with`]).
pub fn make_episode(task: Task, clean: Frame, sigmas: &[f64], seed: u64) -> TrainResult<Episode> {
    make_episode_with(task, clean, sigmas, seed, &RefineSetup::default())
}

/// Episode start for one clean crop, a function of `seed` only; refine episodes follow `setup`.
pub fn make_episode_with(
    task: Task,
    clean: Frame,
    sigmas: &[f64],
    seed: u64,
    setup: &RefineSetup,
) -> TrainResult<Episode> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0e15);
    match task {
        Task::Denoise => {
            let sigma = sigmas
                .get(rng.random_range(0..sigmas.len().max(1)))
                .copied()
                .unwrap_or(25.0);
            let state = add_noise(&clean, sigma, seed ^ 0x5eed);
            Ok(Episode {
                target: clean,
                state,
                hole: None,
            })
        }
        Task::Refine => {
            let hole = setup.holes.mask(clean.w, clean.h, seed);
            let state = setup.start.fill(&clean, &hole)?;
            Ok(Episode {
                target: clean,
                state,
                hole: Some(hole),
            })
        }
    }
}

/// The episodes of update `index`: a function of `(seed, index)` only, so a resumed run sees
/// the same data.
#[allow(clippy::too_many_arguments)]
pub fn episode_batch(
    task: Task,
    source: &CropSource,
    sigmas: &[f64],
    batch: usize,
    crop: usize,
    seed: u64,
    index: u64,
    setup: &RefineSetup,
) -> TrainResult<Vec<Episode>> {
    (0..batch)
        .into_par_iter()
        .map(|j| {
            let s = mix(seed, index.wrapping_mul(1024).wrapping_add(j as u64));
            let mut rng = StdRng::seed_from_u64(s);
            let img = source.crop(&mut rng, crop)?;
            let clean = Frame::from_image(&img)
                .ok_or_else(|| TrainError::Invalid("crop not RGB".into()))?;
            make_episode_with(task, clean, sigmas, s, setup)
        })
        .collect()
}

/// The network, its optimiser and the episode settings.
pub struct RlTrainer {
    /// The network.
    pub net: LoadedNet,
    /// AdamW over the network's variables.
    pub opt: AdamW,
    /// The action set.
    pub set: Vec<Action>,
    /// Episode and loss settings.
    pub a2c: A2cConfig,
}

impl RlTrainer {
    /// A fresh trainer for `set` with `channels` hidden channels.
    pub fn new(
        channels: usize,
        set: Vec<Action>,
        a2c: A2cConfig,
        lr: f64,
        seed: u64,
        dev: &Device,
    ) -> TrainResult<Self> {
        let cfg = NetConfig {
            channels,
            actions: set.len(),
        };
        let net = LoadedNet::fresh(cfg, seed, dev).map_err(rl_err)?;
        let opt = AdamW::new(named_vars(&net.varmap).map_err(rl_err)?, lr, 0.0)?;
        Ok(Self { net, opt, set, a2c })
    }

    /// One sampled episode on `eps` and one optimiser update. Gradients are detached before
    /// the update: our conv's backward builds them from tracked tensors, and AdamW would
    /// otherwise chain every step's graph (see `train::cgan`).
    pub fn update(
        &mut self,
        eps: &mut [Episode],
        rng: &mut StdRng,
        dev: &Device,
    ) -> TrainResult<EpisodeStats> {
        let (loss, stats) =
            train_episode(&self.net.net, eps, &self.set, &self.a2c, rng, dev).map_err(rl_err)?;
        let mut grads = loss.backward()?;
        for (_, var) in named_vars(&self.net.varmap).map_err(rl_err)? {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), g.detach());
            }
        }
        self.opt.step(&grads)?;
        Ok(stats)
    }

    /// Mean PSNR (dB) of the active regions before and after greedy episodes on `eps`.
    pub fn evaluate(&self, eps: &[Episode], dev: &Device) -> TrainResult<(f64, f64)> {
        let mut before = 0.0;
        let mut after = 0.0;
        for e in eps {
            before += psnr(e.state.mse(&e.target, e.active()));
            let (out, _) = greedy_episode(
                &self.net,
                &e.state,
                e.active(),
                &self.set,
                self.a2c.steps,
                dev,
                |_, _| true,
            )
            .map_err(rl_err)?;
            after += psnr(out.mse(&e.target, e.active()));
        }
        let n = eps.len().max(1) as f64;
        Ok((before / n, after / n))
    }
}

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct RlTrainConfig {
    /// The task.
    pub task: Task,
    /// Hidden channels.
    pub channels: usize,
    /// Episode and loss settings.
    pub a2c: A2cConfig,
    /// Noise levels (8-bit units) for denoising.
    pub sigmas: Vec<f64>,
    /// Crop side.
    pub crop: usize,
    /// Episodes per update.
    pub batch: usize,
    /// Target updates.
    pub updates: u64,
    /// Learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
    /// Validate and checkpoint every this many updates.
    pub eval_every: u64,
    /// Checkpoints folder.
    pub runs_dir: PathBuf,
    /// Output stem (`<out>.safetensors`, `<out>.json`).
    pub out: PathBuf,
    /// Continue from the checkpoint.
    pub resume: bool,
    /// Stop after this many seconds.
    pub max_seconds: Option<f64>,
    /// Data description for the manifest.
    pub data_desc: String,
    /// Licence notes.
    pub data_license: String,
    /// Command line.
    pub command: String,
    /// Refine episodes: holes and starting fill.
    pub refine: RefineSetup,
    /// Start a fresh run from these weights (`<stem>.safetensors`, same sizes) instead of a
    /// random network: fine-tuning. Ignored when resuming from a checkpoint.
    pub init: Option<PathBuf>,
}

/// What an update reports to the caller.
#[derive(Clone, Debug)]
pub struct RlStepReport {
    /// Updates done.
    pub update: u64,
    /// Target.
    pub total: u64,
    /// This update's statistics.
    pub stats: EpisodeStats,
    /// Running mean reward (exponential, 0.98).
    pub avg_reward: f64,
    /// Running mean PSNR gain (dB).
    pub avg_gain: f64,
    /// Updates per second in this session.
    pub per_sec: f64,
    /// Latest validation PSNR before/after greedy episodes.
    pub val: Option<(f64, f64)>,
}

/// Resume state beside the checkpoint tensors.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RlCheckpointState {
    /// Updates done.
    pub update: u64,
    /// Training seconds over all sessions.
    pub train_seconds: f64,
    /// Task.
    pub task: Task,
    /// Network sizes.
    pub net: NetConfig,
    /// Crop side.
    pub crop: usize,
    /// Seed.
    pub seed: u64,
    /// Running means (reward, PSNR gain).
    pub running: (f64, f64),
    /// Latest validation PSNR before/after.
    pub val: Option<(f64, f64)>,
    /// Action counts over the whole run.
    pub action_counts: Vec<u64>,
}

fn ckpt_paths(runs: &Path) -> (PathBuf, PathBuf) {
    (
        runs.join("checkpoint.safetensors"),
        runs.join("checkpoint.json"),
    )
}

/// Saves the network, the optimiser state and `state` into `runs`.
pub fn save_checkpoint(t: &RlTrainer, state: &RlCheckpointState, runs: &Path) -> TrainResult<()> {
    std::fs::create_dir_all(runs).map_err(io_err(runs))?;
    let (tensors_path, json_path) = ckpt_paths(runs);
    let mut tensors: HashMap<String, candle_core::Tensor> = t.opt.state();
    for (name, var) in named_vars(&t.net.varmap).map_err(rl_err)? {
        tensors.insert(format!("param.{name}"), var.as_tensor().clone());
    }
    save_tensors(&tensors, &tensors_path)?;
    write_json(&json_path, state)?;
    Ok(())
}

/// Loads a checkpoint written by [`save_checkpoint`] into `t`; `None` when there is none.
pub fn load_checkpoint(
    t: &mut RlTrainer,
    runs: &Path,
    dev: &Device,
) -> TrainResult<Option<RlCheckpointState>> {
    let (tensors_path, json_path) = ckpt_paths(runs);
    if !json_path.is_file() || !tensors_path.is_file() {
        return Ok(None);
    }
    let state: RlCheckpointState = read_json(&json_path)?;
    let tensors = candle_core::safetensors::load(&tensors_path, dev)?;
    for (name, var) in named_vars(&t.net.varmap).map_err(rl_err)? {
        let v = tensors
            .get(&format!("param.{name}"))
            .ok_or_else(|| TrainError::Invalid(format!("checkpoint has no param.{name}")))?;
        var.set(v)?;
    }
    t.opt.load_state(&tensors, state.update)?;
    Ok(Some(state))
}

/// Result of [`train_rl`].
#[derive(Debug)]
pub struct RlOutcome {
    /// Updates done in all sessions.
    pub updates: u64,
    /// Whether the target was reached.
    pub finished: bool,
    /// The manifest written.
    pub manifest: RlManifest,
}

/// The architecture line of the manifest.
pub fn architecture(cfg: NetConfig) -> String {
    format!(
        "PixelRL actor-critic, fully convolutional: input [RGB-0.5, hole map, t/T] (5 ch); \
         body 3x3 convs {c} ch with dilation 1,2,3,4 + ReLU; policy head 3x3 ({c}) + ReLU + 1x1 \
         -> {a} logits per pixel (softmax); value head 3x3 ({c}) + ReLU + 1x1 -> 1; our fast \
         convolutions (Conv2dFast). Greedy (argmax) actions at inference.",
        c = cfg.channels,
        a = cfg.actions
    )
}

/// Trains (or resumes) an agent; `on_step` sees every update and returns false to stop.
/// Validates and checkpoints every `eval_every` updates, and at the end writes the checkpoint,
/// `<out>.safetensors` and `<out>.json`. `val` are fixed held-out episodes.
pub fn train_rl(
    cfg: &RlTrainConfig,
    source: &CropSource,
    val: &[Episode],
    dev: &Device,
    on_step: &mut dyn FnMut(&RlStepReport) -> bool,
) -> TrainResult<RlOutcome> {
    let set = cfg.task.actions();
    let mut t = RlTrainer::new(cfg.channels, set.clone(), cfg.a2c, cfg.lr, cfg.seed, dev)?;
    let mut update = 0u64;
    let mut past_seconds = 0.0;
    let mut running = (0.0, 0.0);
    let mut last_val = None;
    let mut counts = vec![0u64; set.len()];
    let mut resumed = false;
    if cfg.resume {
        if let Some(state) = load_checkpoint(&mut t, &cfg.runs_dir, dev)? {
            if state.task != cfg.task
                || state.net != t.net.cfg
                || state.crop != cfg.crop
                || state.seed != cfg.seed
            {
                return Err(TrainError::Invalid(format!(
                    "checkpoint in {} has other settings ({:?}, {:?}, crop {}, seed {})",
                    cfg.runs_dir.display(),
                    state.task,
                    state.net,
                    state.crop,
                    state.seed
                )));
            }
            resumed = true;
            update = state.update;
            past_seconds = state.train_seconds;
            running = state.running;
            last_val = state.val;
            if state.action_counts.len() == counts.len() {
                counts = state.action_counts;
            }
        }
    }
    if let (false, Some(init)) = (resumed, &cfg.init) {
        let path = with_ext(init, "safetensors");
        let loaded = LoadedNet::load(t.net.cfg, &path, dev).map_err(rl_err)?;
        let src = named_vars(&loaded.varmap).map_err(rl_err)?;
        for (name, var) in named_vars(&t.net.varmap).map_err(rl_err)? {
            let v = src
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| TrainError::Invalid(format!("{}: no {name}", path.display())))?;
            var.set(v.1.as_tensor())?;
        }
    }
    let start = Instant::now();
    let start_update = update;
    let net_cfg = t.net.cfg;
    let state_at = |u: u64, secs: f64, running, val, counts: &[u64]| RlCheckpointState {
        update: u,
        train_seconds: secs,
        task: cfg.task,
        net: net_cfg,
        crop: cfg.crop,
        seed: cfg.seed,
        running,
        val,
        action_counts: counts.to_vec(),
    };
    while update < cfg.updates {
        let mut eps = episode_batch(
            cfg.task,
            source,
            &cfg.sigmas,
            cfg.batch,
            cfg.crop,
            cfg.seed,
            update,
            &cfg.refine,
        )?;
        let mut rng = StdRng::seed_from_u64(mix(cfg.seed ^ 0xac7, update));
        let stats = t.update(&mut eps, &mut rng, dev)?;
        if !stats.loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "loss diverged at update {update}: {stats:?}"
            )));
        }
        for (c, s) in counts.iter_mut().zip(&stats.action_counts) {
            *c += s;
        }
        running = if update == 0 {
            (stats.mean_reward, stats.psnr_gain())
        } else {
            (
                0.98 * running.0 + 0.02 * stats.mean_reward,
                0.98 * running.1 + 0.02 * stats.psnr_gain(),
            )
        };
        update += 1;
        let elapsed = start.elapsed().as_secs_f64();
        if cfg.eval_every > 0 && update % cfg.eval_every == 0 {
            last_val = Some(t.evaluate(val, dev)?);
            let st = state_at(update, past_seconds + elapsed, running, last_val, &counts);
            save_checkpoint(&t, &st, &cfg.runs_dir)?;
        }
        let report = RlStepReport {
            update,
            total: cfg.updates,
            stats,
            avg_reward: running.0,
            avg_gain: running.1,
            per_sec: (update - start_update) as f64 / elapsed.max(1e-9),
            val: last_val,
        };
        let go_on = on_step(&report);
        if !go_on || cfg.max_seconds.is_some_and(|m| elapsed >= m) {
            break;
        }
    }
    let session = start.elapsed().as_secs_f64();
    if last_val.is_none() || update != start_update {
        last_val = Some(t.evaluate(val, dev)?);
    }
    save_checkpoint(
        &t,
        &state_at(update, past_seconds + session, running, last_val, &counts),
        &cfg.runs_dir,
    )?;
    let weights = with_ext(&cfg.out, "safetensors");
    t.net.save(&weights).map_err(rl_err)?;
    let total: u64 = counts.iter().sum::<u64>().max(1);
    let manifest = RlManifest {
        id: cfg
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("rl-{}", cfg.task.name())),
        family: "rl".into(),
        task: cfg.task.name().into(),
        architecture: architecture(t.net.cfg),
        net: t.net.cfg,
        params: t.net.param_count(),
        actions: set.iter().map(|a| a.name().to_owned()).collect(),
        a2c: cfg.a2c,
        optimiser: format!(
            "AdamW (betas 0.9/0.999, no weight decay), lr {}, one update per batch of {} \
             sampled episodes; training action shares {:?}; validation PSNR before/after \
             greedy episodes on fixed held-out crops {:?}",
            cfg.lr,
            cfg.batch,
            set.iter()
                .zip(&counts)
                .map(|(a, &c)| format!("{} {:.3}", a.name(), c as f64 / total as f64))
                .collect::<Vec<_>>(),
            last_val.map(|(b, a)| format!("{b:.2} -> {a:.2} dB"))
        ),
        data: cfg.data_desc.clone(),
        data_license: cfg.data_license.clone(),
        crop: cfg.crop,
        batch: cfg.batch,
        updates: update,
        train_seconds: past_seconds + session,
        updates_per_sec: (update - start_update) as f64 / session.max(1e-9),
        command: cfg.command.clone(),
        seed: cfg.seed,
        last_train: Some(running),
        metrics: None,
        refine_metrics: None,
        start: (cfg.task == Task::Refine).then(|| cfg.refine.start.name().to_owned()),
        holes: (cfg.task == Task::Refine).then(|| cfg.refine.holes.name().to_owned()),
        init: cfg.init.as_ref().map(|p| p.display().to_string()),
    };
    let json = with_ext(&cfg.out, "json");
    // The weights changed, so held-out metrics are measured afresh (`kintsugi denoise --eval`).
    manifest.write(&json).map_err(rl_err)?;
    Ok(RlOutcome {
        updates: update,
        finished: update >= cfg.updates,
        manifest,
    })
}
