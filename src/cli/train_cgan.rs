//! `kintsugi train cgan ...`: trains the gated-convolution inpainting GAN on random crops of
//! clean photos with synthetic and real-artifact damage.

use std::path::PathBuf;

use candle_core::Device;

use super::train::Resume;

use crate::models::cgan::GeneratorConfig;
use crate::train::cgan::{train_cgan, with_ext, Batch, CganTrainConfig, LossWeights, StepReport};
use crate::train::damage_synth::DamageConfig;

/// Arguments of `train cgan`.
#[derive(Debug, clap::Args)]
pub struct CganArgs {
    /// Photo folder: its `train` and `test` subfolders are the training photos and `val` the
    /// held-out ones (e.g. ../shared/datasets/bsds500; read in place, never copied).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder of the film-damage artifacts (`artifacts.csv` + `artifacts/`); `none` to use
    /// only procedural damage.
    #[arg(long, default_value = "../shared/datasets/film-damage")]
    pub artifacts: PathBuf,
    /// Artifacts loaded per category (the set is mostly hair; this balances it).
    #[arg(long, default_value_t = 60)]
    pub artifacts_per_category: usize,
    /// Total optimiser steps (a resumed run continues up to this count).
    #[arg(long, default_value_t = 20000)]
    pub steps: u64,
    /// Crop side in pixels.
    #[arg(long, default_value_t = 128)]
    pub crop: usize,
    /// Crops per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Output stem: writes `<OUT>.safetensors` and `<OUT>.json`.
    #[arg(long, default_value = "weights/cgan-inpaint")]
    pub out: PathBuf,
    /// Folder for grids and checkpoints (default: `runs/<name of OUT>`).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    #[command(flatten)]
    pub resume: Resume,
    /// Generator channels at full resolution.
    #[arg(long, default_value_t = 16)]
    pub base: usize,
    /// Discriminator channels in its first layer.
    #[arg(long, default_value_t = 32)]
    pub d_base: usize,
    /// Generator learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr_g: f64,
    /// Discriminator learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr_d: f64,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Weight of the generator's adversarial (hinge) loss at full strength.
    #[arg(long, default_value_t = 0.05)]
    pub adv: f64,
    /// Step from which the adversarial game starts (reconstruction-only pre-training before).
    #[arg(long, default_value_t = 4000)]
    pub adv_start: u64,
    /// Steps over which the adversarial weight ramps up after --adv-start.
    #[arg(long, default_value_t = 1000)]
    pub adv_ramp: u64,
    /// Held-out validation crops (fixed seeded damage on `DATA/val`).
    #[arg(long, default_value_t = 8)]
    pub val: usize,
    /// Seed of everything random.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write grids, validation metrics and a checkpoint every this many steps.
    #[arg(long, default_value_t = 50)]
    pub sample_every: u64,
    /// Stop this session (checkpoint + weights + manifest) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// No progress bar (a log line every 10 steps instead).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `train cgan`.
pub fn run_cgan(a: CganArgs) -> anyhow::Result<()> {
    let runs_dir = a.resume.runs_dir(&a.out, a.runs.as_ref(), "cgan-inpaint")?;
    let dev = Device::Cpu;
    let started = std::time::Instant::now();
    let super::train::PhotoData {
        dirs,
        source,
        val_dir,
        val_source,
    } = super::train::load_photo_data(&a.data)?;
    let bank = super::train::load_artifacts(&a.artifacts, a.artifacts_per_category, a.seed)?;
    let damage = DamageConfig::default();
    let val = Batch::synth(
        &val_source,
        bank.as_ref(),
        &damage,
        a.val.max(1),
        a.crop,
        a.seed ^ 0x7a1,
        0,
        &dev,
    )?;
    eprintln!(
        "data: {} training photos from {:?}, {} validation photos, {} artifacts {:?}; loaded in \
         {:.1}s",
        source.len(),
        dirs,
        val_source.len(),
        bank.as_ref().map_or(0, |b| b.len()),
        bank.as_ref().map(|b| b.categories()).unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    let command = super::train::command_line();
    let cfg = CganTrainConfig {
        gen: GeneratorConfig { base: a.base },
        d_base: a.d_base,
        steps: a.steps,
        batch: a.batch,
        crop: a.crop,
        lr_g: a.lr_g,
        lr_d: a.lr_d,
        warmup: a.warmup,
        weights: LossWeights {
            adv: a.adv,
            adv_start: a.adv_start,
            adv_ramp: a.adv_ramp,
            ..LossWeights::default()
        },
        damage,
        seed: a.seed,
        sample_every: a.sample_every,
        runs_dir: runs_dir.clone(),
        out: a.out.clone(),
        resume: a.resume.resume,
        max_seconds: a.max_minutes.map(|m| m * 60.0),
        data_desc: format!(
            "random {c}x{c} crops (random horizontal flips) of the {n} photos in {dirs:?} \
             (BSDS500 train+test); damage synthesised per crop with a fixed seed per step: \
             brush strokes, curved scratches, hairs, dust specks/blobs and {k} real film-damage \
             artifact cut-outs ({art}, up to {p} per category) at random scale, rotation, \
             opacity and brightness. Validation: {v} fixed damaged crops of {val}.",
            c = a.crop,
            n = source.len(),
            k = bank.as_ref().map_or(0, |b| b.len()),
            art = a.artifacts.display(),
            p = a.artifacts_per_category,
            v = a.val.max(1),
            val = val_dir.display(),
        ),
        data_license: "BSDS500: no licence stated, research use (cite Arbelaez et al. 2011); \
                       film-damage artifacts: MIT (Ivanova et al. 2023). The weights inherit \
                       BSDS500's research-use terms."
            .into(),
        command,
    };
    let bar = super::progress::step_bar(a.steps, "train cgan", a.quiet);
    let mut on_step = |r: &StepReport| {
        let l = r.losses;
        let val = r
            .val
            .map(|v| format!(" val hole-PSNR {:.2}dB", v.hole_psnr_db))
            .unwrap_or_default();
        let line = format!(
            "G {:.3} (hole {:.3} valid {:.3} edge {:.3} adv {:.2}) D {:.3}{} {:.3} steps/s",
            l.g_total, l.hole_l1, l.valid_l1, l.edge, l.g_adv, l.d_loss, val, r.steps_per_sec
        );
        bar.set_position(r.step);
        bar.set_message(line.clone());
        if a.quiet && r.step % 10 == 0 {
            let left = (r.total - r.step) as f64 / r.steps_per_sec.max(1e-9);
            eprintln!("step {}/{} {line} eta {:.0}s", r.step, r.total, left);
        }
        true
    };
    let outcome = train_cgan(&cfg, &source, &val, bank.as_ref(), &dev, &mut on_step)?;
    bar.finish_and_clear();
    let m = &outcome.manifest;
    eprintln!(
        "{} at step {} ({:.0}s of training in all, {:.3} steps/s this session); generator {} \
         params; val hole-PSNR {:.2} dB (mean-colour fill {:.2} dB)",
        if outcome.finished {
            "finished"
        } else {
            "stopped early"
        },
        outcome.steps,
        m.train_seconds,
        m.steps_per_sec,
        m.generator_params,
        m.val.map_or(f64::NAN, |v| v.hole_psnr_db),
        m.val.map_or(f64::NAN, |v| v.mean_fill_hole_psnr_db),
    );
    eprintln!(
        "wrote {} and {}; grids and checkpoint in {}",
        with_ext(&a.out, "safetensors").display(),
        with_ext(&a.out, "json").display(),
        runs_dir.display()
    );
    Ok(())
}
