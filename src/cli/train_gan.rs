//! `kintsugi train gan ...`: trains the face GAN with a progress bar (D and G losses, D(x),
//! D(G(z))), fixed-seed sample grids, a loss log, checkpoints and resume; at the end of each
//! stage writes the shipped weights (f16) and a manifest with measured quality figures.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;

use super::train::{command_line, Resume};
use crate::models::gan::{GanConfig, GanLoss, GanManifest, LoadedGan};
use crate::models::vae::{LoadedVae, VaeManifest};
use crate::train::gan::{
    evaluate, grid_path, log_losses, param_counts, EvalSpec, GanStepStats, GanTrainConfig,
    GanTrainer,
};
use crate::train::vae::with_ext;
use crate::train::{mix, save_grid, ImageSet};

/// Arguments of `train gan`.
#[derive(Debug, clap::Args)]
pub struct GanArgs {
    /// Folder of 64x64 RGB face PNGs (read in place, never copied).
    #[arg(long, default_value = "../shared/datasets/faces-large/utkface64")]
    pub data: PathBuf,
    /// Total iterations (one D and one G update each); a resumed run continues up to this.
    #[arg(long, default_value_t = 6000)]
    pub steps: u64,
    /// Real and generated images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Output stem: writes `<OUT>.safetensors` and `<OUT>.json`.
    #[arg(long, default_value = "weights/gan-faces")]
    pub out: PathBuf,
    /// Folder for grids, the loss log and checkpoints (default: `runs/<name of OUT>`).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    #[command(flatten)]
    pub resume: Resume,
    /// Adversarial objective.
    #[arg(long, value_enum, default_value_t = LossArg::NonSaturating)]
    pub loss: LossArg,
    /// Latent size.
    #[arg(long, default_value_t = 128)]
    pub latent: usize,
    /// Generator channels at full resolution (16x that at 4x4).
    #[arg(long, default_value_t = 16)]
    pub g_base: usize,
    /// Discriminator channels in its first layer.
    #[arg(long, default_value_t = 32)]
    pub d_base: usize,
    /// Generator learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr_g: f64,
    /// Discriminator learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr_d: f64,
    /// Held-out faces (seeded choice; the same split as the VAE with the same seed).
    #[arg(long, default_value_t = 500)]
    pub val: usize,
    /// Seed of everything random.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write a sample grid and a checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Stop this stage (checkpoint, weights, manifest) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// The face VAE whose encoder gives the features of the Fréchet distance.
    #[arg(long, default_value = "weights/vae-faces")]
    pub vae: PathBuf,
    /// Images for the Fréchet distance.
    #[arg(long, default_value_t = 500)]
    pub fd_images: usize,
    /// Licence of the data, stored in the manifest.
    #[arg(long, default_value = "UTKFace: non-commercial research only")]
    pub data_license: String,
    /// No training: re-measure the weights at `<OUT>` into its manifest.
    #[arg(long)]
    pub refresh: bool,
    /// No progress bar (a log line every 50 steps instead).
    #[arg(long, short)]
    pub quiet: bool,
}

/// `--loss` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LossArg {
    /// The original minimax game.
    Minimax,
    /// Non-saturating generator loss.
    NonSaturating,
    /// Hinge loss.
    Hinge,
}

impl From<LossArg> for GanLoss {
    fn from(l: LossArg) -> Self {
        match l {
            LossArg::Minimax => GanLoss::Minimax,
            LossArg::NonSaturating => GanLoss::NonSaturating,
            LossArg::Hinge => GanLoss::Hinge,
        }
    }
}

/// Runs `train gan`.
pub fn run_gan(a: GanArgs) -> anyhow::Result<()> {
    let runs = a.resume.runs_dir(&a.out, a.runs.as_ref(), "gan")?;
    let dev = Device::Cpu;
    let model = GanConfig {
        image_size: 64,
        latent: a.latent,
        g_base: a.g_base,
        d_base: a.d_base,
    };
    model.validate()?;
    let cfg = GanTrainConfig {
        model,
        loss: a.loss.into(),
        batch: a.batch,
        lr_g: a.lr_g,
        lr_d: a.lr_d,
        seed: a.seed,
        ..GanTrainConfig::faces64()
    };
    let all = ImageSet::load_dir(&a.data, model.image_size)
        .with_context(|| format!("reading the faces in {}", a.data.display()))?;
    let (train, val) = all.split(a.val, a.seed)?;
    eprintln!(
        "data: {} faces in {} ({} train, {} held out)",
        all.len(),
        a.data.display(),
        train.len(),
        val.len()
    );
    // The held-out file names, so evaluations (inversion inpainting) use exactly this split.
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let val_list = runs.join("val_files.txt");
    let names: Vec<&str> = (0..val.len()).map(|i| val.name(i)).collect();
    std::fs::write(&val_list, names.join("\n") + "\n")
        .with_context(|| format!("writing {}", val_list.display()))?;
    let vae_json = with_ext(&a.vae, "json");
    let vae_manifest = VaeManifest::read(&vae_json).with_context(|| {
        format!(
            "the Fréchet distance needs the face VAE ({})",
            vae_json.display()
        )
    })?;
    let vae = LoadedVae::load(vae_manifest.config, &with_ext(&a.vae, "safetensors"), &dev)?;
    let data_desc = format!(
        "{} ({} faces; {} train, {} held out by a shuffle seeded with {}; random horizontal \
         flips)",
        a.data.display(),
        all.len(),
        train.len(),
        val.len(),
        a.seed
    );
    let mut trainer = GanTrainer::new(cfg.clone(), train.len(), &dev)?;
    if a.refresh {
        let weights = with_ext(&a.out, "safetensors");
        let json = with_ext(&a.out, "json");
        let mut manifest = GanManifest::read(&json)?;
        let gan = LoadedGan::load(manifest.config, &weights, &dev)?;
        manifest.metrics = measure(&gan, &vae, &train, &val, a.fd_images, a.seed, &dev)?;
        manifest.write(&json)?;
        report(&manifest);
        return Ok(());
    }
    if a.resume.resume && trainer.resume(&runs)? {
        eprintln!(
            "resumed at step {} from {}",
            trainer.steps(),
            runs.display()
        );
    }
    trainer.push_command(command_line());
    let bar = super::progress::step_bar(a.steps, "train gan", a.quiet);
    bar.set_position(trainer.steps());
    let stage = Instant::now();
    let first = trainer.steps();
    let mut pending: Vec<GanStepStats> = Vec::new();
    let grid_seed = mix(a.seed, 0x6121);
    while trainer.steps() < a.steps {
        let s = trainer.step(&train)?;
        pending.push(s);
        let rate = (s.step - first) as f64 / stage.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(s.step);
        bar.set_message(format!(
            "D {:.3} G {:.3} D(x) {:.2} D(G(z)) {:.2} {:.2} steps/s",
            s.d_loss, s.g_loss, s.d_real, s.d_fake, rate
        ));
        if a.quiet && s.step % 50 == 0 {
            eprintln!(
                "step {}/{} D {:.3} G {:.3} D(x) {:.3} D(G(z)) {:.3} {:.3} steps/s",
                s.step, a.steps, s.d_loss, s.g_loss, s.d_real, s.d_fake, rate
            );
        }
        let out_of_time = a
            .max_minutes
            .is_some_and(|m| stage.elapsed().as_secs_f64() >= m * 60.0);
        if (a.sample_every > 0 && s.step % a.sample_every == 0) || out_of_time {
            log_losses(&runs, &pending)?;
            pending.clear();
            save_grid(
                &trainer.samples(grid_seed, 64)?,
                8,
                &grid_path(&runs, s.step),
            )?;
            trainer.save_checkpoint(&runs)?;
        }
        if out_of_time {
            break;
        }
    }
    bar.finish_and_clear();
    log_losses(&runs, &pending)?;
    trainer.save_checkpoint(&runs)?;
    save_grid(
        &trainer.samples(grid_seed, 64)?,
        8,
        &grid_path(&runs, trainer.steps()),
    )?;
    let shipped = trainer.shipped()?;
    let weights = with_ext(&a.out, "safetensors");
    if let Some(parent) = weights.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    shipped.save(&weights, true)?;
    // Measure exactly what ships (reloaded from the f16 file).
    let gan = LoadedGan::load(model, &weights, &dev)?;
    let (params_g, params_d) = param_counts(&gan)?;
    let manifest = GanManifest {
        family: "gan".into(),
        architecture: model.architecture(),
        config: model,
        params_g,
        params_d,
        data: data_desc,
        data_license: a.data_license.clone(),
        objective: cfg.objective(),
        commands: trainer.commands().to_vec(),
        steps: trainer.steps(),
        batch: cfg.batch,
        seed: cfg.seed,
        train_seconds: trainer.train_seconds(),
        hardware: format!(
            "CPU, {} threads (shared machine)",
            rayon::current_num_threads()
        ),
        weights_format: "f16 safetensors: g.* = moving-average generator, d.* = discriminator \
                         with its spectral-norm vectors (d.*.u); f32 checkpoint in the runs folder"
            .into(),
        curves: curves_summary(&runs.join("losses.csv")).unwrap_or_default(),
        metrics: measure(&gan, &vae, &train, &val, a.fd_images, a.seed, &dev)?,
    };
    manifest.write(&with_ext(&a.out, "json"))?;
    report(&manifest);
    eprintln!(
        "wrote {} and {}; grids, losses.csv and checkpoint in {}",
        weights.display(),
        with_ext(&a.out, "json").display(),
        runs.display()
    );
    Ok(())
}

fn measure(
    gan: &LoadedGan,
    vae: &LoadedVae,
    train: &ImageSet,
    val: &ImageSet,
    n: usize,
    seed: u64,
    dev: &Device,
) -> anyhow::Result<crate::models::gan::GanMetrics> {
    // The VAE's own samples for comparison, from its prior (the same count).
    let z = crate::models::gan::codes_for_seed(
        mix(seed, 0xAE),
        n.min(val.len()),
        vae.vae.config().latent,
        dev,
    )?;
    let vae_samples = vae.vae.decode(&z)?;
    let spec = EvalSpec {
        fd_images: n,
        nn_images: 64,
        seed,
    };
    Ok(evaluate(
        &gan.g,
        &vae.vae,
        Some(&vae_samples),
        train,
        val,
        spec,
    )?)
}

fn report(m: &GanManifest) {
    let q = &m.metrics;
    eprintln!(
        "step {}: FD(samples, held-out) {:.2} (train vs held-out floor {:.2}, VAE prior samples \
         {}); NN RMSE samples->train {:.4} vs held-out->train {:.4} (min sample {:.4})",
        m.steps,
        q.fd_samples_vs_val,
        q.fd_train_vs_val,
        q.fd_vae_samples_vs_val
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into()),
        q.nn_rmse_samples_to_train,
        q.nn_rmse_val_to_train,
        q.nn_rmse_min_sample
    );
}

/// The loss log in a few figures: means over the first, middle and last tenth of the steps.
fn curves_summary(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let rows: Vec<[f64; 5]> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let v: Vec<f64> = l.split(',').filter_map(|x| x.parse().ok()).collect();
            (v.len() == 5).then(|| [v[0], v[1], v[2], v[3], v[4]])
        })
        .collect();
    if rows.len() < 10 {
        return None;
    }
    let n = rows.len();
    let tenth = (n / 10).max(1);
    let mean = |r: &[[f64; 5]], k: usize| r.iter().map(|x| x[k]).sum::<f64>() / r.len() as f64;
    let part = |label: &str, r: &[[f64; 5]]| {
        format!(
            "{label} (steps {:.0}-{:.0}): D {:.3} G {:.3} D(x) {:.2} D(G(z)) {:.2}",
            r[0][0],
            r[r.len() - 1][0],
            mean(r, 1),
            mean(r, 2),
            mean(r, 3),
            mean(r, 4)
        )
    };
    let mid = n / 2;
    Some(format!(
        "{}; {}; {}",
        part("first tenth", &rows[..tenth]),
        part(
            "middle tenth",
            &rows[mid.saturating_sub(tenth / 2)..(mid + tenth / 2).max(mid + 1)]
        ),
        part("last tenth", &rows[n - tenth..])
    ))
}
