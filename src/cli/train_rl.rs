//! `kintsugi train rl --task denoise|refine ...`: trains a PixelRL agent on random crops of
//! clean photos, with a progress bar (mean reward, PSNR gain per episode), checkpoints and
//! resume.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;

use super::train::Resume;

use crate::rl::a2c::A2cConfig;
use crate::train::cgan::with_ext;
use crate::train::rl::{
    episode_batch, train_rl, HoleKind, RefineSetup, RlStepReport, RlTrainConfig, StartFill, Task,
};

/// Which agent to train.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum TaskArg {
    /// Gaussian-noise removal (film grain, scanner noise): `rl-denoise`.
    Denoise,
    /// Improve a Telea fill of small holes: `rl-refine`.
    Refine,
}

/// Which holes refine episodes have.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HolesArg {
    /// Scattered specks and hairs.
    Scattered,
    /// Brush strokes (wide holes) plus scratches, hairs and dust.
    Mixed,
}

impl HolesArg {
    fn kind(self) -> HoleKind {
        match self {
            HolesArg::Scattered => HoleKind::Scattered,
            HolesArg::Mixed => HoleKind::Mixed,
        }
    }
}

/// The refine setup from the command line, falling back to `default_start` / `default_holes`.
fn refine_setup(
    a: &RlArgs,
    default_start: &str,
    default_holes: HoleKind,
) -> anyhow::Result<RefineSetup> {
    let registry = crate::models::registry::Registry::default();
    let start = a.start.as_deref().unwrap_or(default_start);
    Ok(RefineSetup {
        start: StartFill::from_registry(&registry, start)?,
        holes: a.holes.map_or(default_holes, HolesArg::kind),
    })
}

/// Arguments of `train rl`.
#[derive(Debug, clap::Args)]
pub struct RlArgs {
    /// What the agent learns.
    #[arg(long, value_enum)]
    pub task: TaskArg,
    /// Photo folder: `train` and `test` subfolders train, `val` validates (e.g.
    /// ../shared/datasets/bsds500; read in place).
    #[arg(long)]
    pub data: PathBuf,
    /// Total updates (a resumed run continues up to this count).
    #[arg(long, default_value_t = 3000)]
    pub updates: u64,
    /// Crop side in pixels.
    #[arg(long, default_value_t = 48)]
    pub crop: usize,
    /// Episodes (crops) per update.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Hidden channels of the network.
    #[arg(long, default_value_t = 16)]
    pub channels: usize,
    /// Steps per episode.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Discount.
    #[arg(long, default_value_t = 0.95)]
    pub gamma: f32,
    /// Entropy bonus weight.
    #[arg(long, default_value_t = 0.01)]
    pub entropy: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Noise levels in 8-bit units (denoise), one drawn per crop.
    #[arg(long, value_delimiter = ',', default_value = "15,25,50")]
    pub sigmas: Vec<f64>,
    /// Output stem (default `weights/rl-<task>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Checkpoint folder (default `runs/<name of OUT>`).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    #[command(flatten)]
    pub resume: Resume,
    /// Held-out validation crops (fixed, from `DATA/val`).
    #[arg(long, default_value_t = 8)]
    pub val: usize,
    /// Validate and checkpoint every this many updates.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Seed of everything random.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Stop this session (checkpoint + weights + manifest) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// No training: score the refine agent at OUT on centre crops of `DATA/val` (Telea start
    /// vs agent, hole-PSNR) and store the result in its manifest.
    #[arg(long)]
    pub eval_only: bool,
    /// --eval-only: images (sorted by name) and crop side.
    #[arg(long, default_value_t = 100)]
    pub eval_images: usize,
    /// --eval-only: crop side.
    #[arg(long, default_value_t = 128)]
    pub eval_crop: usize,
    /// Refine: the fill episodes start from (registry id: telea, biharmonic, cgan-inpaint,
    /// auto, ...). Default: telea for training; for --eval-only the agent's own start.
    #[arg(long)]
    pub start: Option<String>,
    /// Refine: the holes (scattered specks and hairs, or mixed = brush strokes + thin damage).
    /// Default: scattered for training; for --eval-only the agent's own.
    #[arg(long, value_enum)]
    pub holes: Option<HolesArg>,
    /// Start a fresh run from these weights (stem or .safetensors of an agent with the same
    /// sizes and actions): fine-tuning.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// --eval-only: store the result in the agent's manifest.
    #[arg(long)]
    pub write_manifest: bool,
    /// No progress bar (a log line every 20 updates instead).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `train rl --task refine --eval-only`: held-out hole-PSNR of the agent over its Telea start.
fn eval_refine_only(a: &RlArgs, out: &std::path::Path) -> anyhow::Result<()> {
    let dir = out.parent().unwrap_or_else(|| std::path::Path::new("."));
    let id = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rl-refine".into());
    let agent = crate::rl::agent::Agent::load(dir, &id)
        .with_context(|| format!("loading {}", out.display()))?;
    let val_dir = a.data.join("val");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&val_dir)
        .with_context(|| format!("reading {}", val_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .collect();
    paths.sort();
    paths.truncate(a.eval_images);
    let c = a.eval_crop;
    let mut clean = Vec::new();
    for p in &paths {
        let img = crate::imaging::load_image(p)?.pixels;
        let (w, h) = (img.width(), img.height());
        if img.channels() < 3 || w < c || h < c {
            continue;
        }
        let (x0, y0) = ((w - c) / 2, (h - c) / 2);
        let crop =
            crate::imaging::ImageF32::from_fn(c, c, 3, |x, y, ch| img.pixel(x0 + x, y0 + y)[ch]);
        if let Some(f) = crate::rl::Frame::from_image(&crop) {
            clean.push(f);
        }
    }
    let manifest_holes = match agent.manifest.holes.as_deref() {
        Some("mixed") => HoleKind::Mixed,
        _ => HoleKind::Scattered,
    };
    let setup = refine_setup(
        a,
        agent.manifest.start.as_deref().unwrap_or("telea"),
        manifest_holes,
    )?;
    let started = std::time::Instant::now();
    let bar = super::progress::step_bar(clean.len() as u64, "fills", a.quiet);
    // Scattered damage keeps the shipped protocol: exactly 5% coverage per crop.
    let coverage = (setup.holes == HoleKind::Scattered).then_some(0.05);
    let cases = crate::rl::eval::refine_cases(
        &clean,
        setup.holes,
        coverage,
        &setup.start,
        a.seed ^ 0xe7a1,
        &mut |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    let bar = super::progress::step_bar(cases.len() as u64, "eval rl-refine", a.quiet);
    let mut m =
        crate::rl::eval::eval_refine_cases(&agent, &cases, setup.start.name(), &mut |d, _| {
            bar.set_position(d as u64)
        })?;
    bar.finish_and_clear();
    let hole_desc = match setup.holes {
        HoleKind::Scattered => "seeded scattered specks and hairs covering 5% of each crop",
        HoleKind::Mixed => {
            "seeded mixed damage (the cGAN's training damage without artifact cut-outs: \
             brush strokes in 85% of crops, scratches, hairs, dust; up to 40% coverage)"
        }
    };
    m.protocol = format!(
        "{} centre {c}x{c} crops of {} (sorted by name), {hole_desc}, filled by {}; \
         hole-PSNR (RGB, outputs clipped to [0,1]) and whole-crop SSIM of the fill and of the \
         agent's greedy {}-step episode on the hole pixels, averaged over crops; best fixed = \
         the best single action of the set applied 1..=steps times to the hole pixels; \
         measured by `kintsugi train rl --task refine --eval-only --start {} --holes {}` in \
         {:.0} s.",
        cases.len(),
        val_dir.display(),
        setup.start.name(),
        agent.steps(),
        setup.start.name(),
        setup.holes.name(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "hole-PSNR: {} {:.2} dB -> agent {:.2} dB ({:+.2} dB), improved on {}/{} crops; \
         SSIM {:.4} -> {:.4}",
        m.start,
        m.start_hole_psnr_db,
        m.agent_hole_psnr_db,
        m.agent_hole_psnr_db - m.start_hole_psnr_db,
        m.improved,
        m.images,
        m.start_ssim,
        m.agent_ssim
    );
    if let Some((name, v)) = &m.best_fixed {
        println!("best single fixed action on the holes: {name}: {v:.2} dB");
    }
    let shares: Vec<String> = m
        .action_share
        .iter()
        .map(|(n, s)| format!("{n} {:.1}%", 100.0 * s))
        .collect();
    println!("actions: {}", shares.join(", "));
    for line in crate::rl::stats::format_shares(&m.zones)
        .into_iter()
        .chain(crate::rl::stats::format_shares(&m.per_step))
    {
        println!("  {line}");
    }
    if !a.write_manifest {
        return Ok(());
    }
    let mut manifest = agent.manifest.clone();
    manifest.refine_metrics = Some(serde_json::to_value(&m)?);
    manifest.write(&with_ext(out, "json"))?;
    eprintln!("wrote the metrics into {}", with_ext(out, "json").display());
    Ok(())
}

/// Runs `train rl`.
pub fn run_rl(a: RlArgs) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let task = match a.task {
        TaskArg::Denoise => Task::Denoise,
        TaskArg::Refine => Task::Refine,
    };
    if a.sigmas.is_empty() || a.sigmas.iter().any(|s| !s.is_finite() || *s < 0.0) {
        anyhow::bail!("--sigmas needs non-negative noise levels");
    }
    if a.crop < 8 || a.batch == 0 || a.steps == 0 || a.channels == 0 {
        anyhow::bail!("--crop must be at least 8 and --batch, --steps, --channels positive");
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("weights/rl-{}", task.name())));
    if a.eval_only {
        if task != Task::Refine {
            anyhow::bail!("--eval-only scores refine agents; use `kintsugi denoise --eval DIR`");
        }
        return eval_refine_only(&a, &out);
    }
    let runs_dir = a.resume.runs_dir(&out, a.runs.as_ref(), "rl")?;
    let started = std::time::Instant::now();
    let super::train::PhotoData {
        dirs,
        source,
        val_dir,
        val_source,
    } = super::train::load_photo_data(&a.data)?;
    let setup = refine_setup(&a, "telea", HoleKind::Scattered)?;
    let val = episode_batch(
        task,
        &val_source,
        &a.sigmas,
        a.val.max(1),
        64,
        a.seed ^ 0x7a1,
        0,
        &setup,
    )?;
    eprintln!(
        "data: {} training photos from {dirs:?}, {} validation photos; loaded in {:.1}s",
        source.len(),
        val_source.len(),
        started.elapsed().as_secs_f64()
    );
    let command = super::train::command_line();
    let data_desc = match task {
        Task::Denoise => format!(
            "random {c}x{c} crops (random horizontal flips) of the {n} photos in {dirs:?} \
             (BSDS500 train+test) with per-channel Gaussian noise, sigma drawn per crop from \
             {s:?} (8-bit units), not clipped; validation: {v} fixed 64x64 noisy crops of {val}.",
            c = a.crop,
            n = source.len(),
            s = a.sigmas,
            v = a.val.max(1),
            val = val_dir.display()
        ),
        Task::Refine => format!(
            "random {c}x{c} crops (random horizontal flips) of the {n} photos in {dirs:?} \
             (BSDS500 train+test) with {holes} damage filled by {start}; only hole pixels \
             act. Validation: {v} fixed 64x64 crops of {val}.",
            holes = match setup.holes {
                HoleKind::Scattered => "scattered specks and hairs (3-12% coverage)",
                HoleKind::Mixed => "mixed (brush strokes, scratches, hairs, dust)",
            },
            start = setup.start.name(),
            c = a.crop,
            n = source.len(),
            v = a.val.max(1),
            val = val_dir.display()
        ),
    };
    let cfg = RlTrainConfig {
        task,
        channels: a.channels,
        a2c: A2cConfig {
            steps: a.steps,
            gamma: a.gamma,
            entropy: a.entropy,
            ..A2cConfig::default()
        },
        sigmas: a.sigmas.clone(),
        crop: a.crop,
        batch: a.batch,
        updates: a.updates,
        lr: a.lr,
        seed: a.seed,
        eval_every: a.eval_every,
        runs_dir: runs_dir.clone(),
        out: out.clone(),
        resume: a.resume.resume,
        max_seconds: a.max_minutes.map(|m| m * 60.0),
        data_desc,
        data_license: "BSDS500: no licence stated, research use (cite Arbelaez et al. 2011). \
                       The weights inherit BSDS500's research-use terms."
            .into(),
        command,
        refine: setup,
        init: a.init.clone(),
    };
    let label = format!("train rl-{}", task.name());
    let bar = super::progress::step_bar(a.updates, &label, a.quiet);
    let mut on_step = |r: &RlStepReport| {
        let val = r
            .val
            .map(|(b, f)| format!(" val {b:.2}->{f:.2}dB"))
            .unwrap_or_default();
        let line = format!(
            "reward {:.3} (avg {:.3}) gain {:+.2}dB (avg {:+.2}) H {:.2}{val} {:.2} upd/s",
            r.stats.mean_reward,
            r.avg_reward,
            r.stats.psnr_gain(),
            r.avg_gain,
            r.stats.entropy,
            r.per_sec
        );
        bar.set_position(r.update);
        bar.set_message(line.clone());
        if a.quiet && (r.update % 20 == 0 || r.update == 1) {
            let left = (r.total - r.update) as f64 / r.per_sec.max(1e-9);
            eprintln!("update {}/{} {line} eta {left:.0}s", r.update, r.total);
        }
        true
    };
    let outcome = train_rl(&cfg, &source, &val, &dev, &mut on_step)?;
    bar.finish_and_clear();
    let m = &outcome.manifest;
    eprintln!(
        "{} at update {} ({:.0}s of training in all, {:.2} updates/s this session); {} params; \
         running reward {:.3}, PSNR gain {:+.2} dB",
        if outcome.finished {
            "finished"
        } else {
            "stopped early"
        },
        outcome.updates,
        m.train_seconds,
        m.updates_per_sec,
        m.params,
        m.last_train.map_or(f64::NAN, |v| v.0),
        m.last_train.map_or(f64::NAN, |v| v.1),
    );
    eprintln!(
        "wrote {} and {}; checkpoint in {}",
        with_ext(&out, "safetensors").display(),
        with_ext(&out, "json").display(),
        runs_dir.display()
    );
    Ok(())
}
