//! `kintsugi train <family> ...`: training runs with a progress bar, grids and checkpoints.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;

use crate::models::vae::VaeConfig;
use crate::train::vae::{train_vae, with_ext, VaeTrainConfig};
use crate::train::ImageSet;

use super::train_cgan::{run_cgan, CganArgs};

/// Arguments of `train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which model family to train.
    #[command(subcommand)]
    pub family: Family,
}

/// The trainable families.
#[derive(Debug, clap::Subcommand)]
pub enum Family {
    /// Train the convolutional VAE on a folder of square RGB PNGs.
    Vae(VaeArgs),
    /// Train the gated-convolution inpainting GAN on random crops of clean photos.
    Cgan(CganArgs),
    /// Train the damage detector (tiny U-Net) on clean photos with synthetic damage.
    Detect(super::train_detect::DetectArgs),
    /// Write the detector's training data for an outside trainer (a staged copy, or a stream
    /// of encoded samples on standard output).
    DetectData(super::detect_data::DetectDataArgs),
    /// Train a PixelRL agent (`--task denoise|refine`) with advantage actor-critic.
    Rl(super::train_rl::RlArgs),
    /// Train the face GAN (DCGAN-class, spectral norm) on a folder of 64x64 face PNGs.
    Gan(super::train_gan::GanArgs),
}

/// Arguments of `train vae`.
#[derive(Debug, clap::Args)]
pub struct VaeArgs {
    /// Folder of `size x size` RGB PNG images (read in place, never copied).
    #[arg(long)]
    pub data: PathBuf,
    /// Total optimiser steps (a resumed run continues up to this count).
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Output stem: writes `<OUT>.safetensors` and `<OUT>.json`.
    #[arg(long, default_value = "weights/vae-faces")]
    pub out: PathBuf,
    /// Folder for grids and checkpoints (default: `runs/<name of OUT>` beside OUT's folder).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    #[command(flatten)]
    pub resume: Resume,
    /// Latent size.
    #[arg(long, default_value_t = 128)]
    pub latent: usize,
    /// Channels of the first encoder stage (then x2, x4, x8).
    #[arg(long, default_value_t = 32)]
    pub base: usize,
    /// Image side (a multiple of 16).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Likelihood standard deviation per channel value in [0, 1].
    #[arg(long, default_value_t = 0.1)]
    pub sigma: f32,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Steps of linear KL warm-up (0 to 1).
    #[arg(long, default_value_t = 500)]
    pub kl_warmup: u64,
    /// Held-out validation images (seeded choice).
    #[arg(long, default_value_t = 500)]
    pub val: usize,
    /// Seed of everything random.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write grids and a checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Stop this stage (checkpoint + weights + manifest) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Licence of the data, stored in the manifest.
    #[arg(long, default_value = "UTKFace: non-commercial research only")]
    pub data_license: String,
    /// No training: reload the trained `<OUT>` weights, rewrite them as f16, re-measure the
    /// held-out metrics into `<OUT>.json`, and fit `<OUT>.pca.safetensors` on the training split.
    #[arg(long)]
    pub refresh: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `train`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.family {
        Family::Vae(a) => run_vae(a),
        Family::Cgan(a) => run_cgan(a),
        Family::Detect(a) => super::train_detect::run_detect(a),
        Family::DetectData(a) => super::detect_data::run(a),
        Family::Rl(a) => super::train_rl::run_rl(a),
        Family::Gan(a) => super::train_gan::run_gan(a),
    }
}

/// The photos of a `--data` folder: its `train` and `test` subfolders (or the folder itself)
/// for training, `val` (or the training photos) for validation. Read in place, never copied.
pub(super) struct PhotoData {
    /// Folders the training photos came from.
    pub dirs: Vec<PathBuf>,
    /// Training photos.
    pub source: crate::train::cgan::CropSource,
    /// The validation folder (may not exist).
    pub val_dir: PathBuf,
    /// Validation photos.
    pub val_source: crate::train::cgan::CropSource,
}

/// Loads [`PhotoData`] from `data`.
pub(super) fn load_photo_data(data: &Path) -> anyhow::Result<PhotoData> {
    use crate::train::cgan::CropSource;
    let dirs: Vec<PathBuf> = ["train", "test"]
        .iter()
        .map(|d| data.join(d))
        .filter(|d| d.is_dir())
        .collect();
    let dirs = if dirs.is_empty() {
        vec![data.to_owned()]
    } else {
        dirs
    };
    let source = CropSource::load_dirs(&dirs)
        .with_context(|| format!("reading the training photos in {}", data.display()))?;
    let val_dir = data.join("val");
    let val_source = if val_dir.is_dir() {
        CropSource::load_dirs(std::slice::from_ref(&val_dir))?
    } else {
        source.clone()
    };
    Ok(PhotoData {
        dirs,
        source,
        val_dir,
        val_source,
    })
}

/// The film-damage artifact bank at `path` (`none` for procedural damage only).
pub(super) fn load_artifacts(
    path: &Path,
    per_category: usize,
    seed: u64,
) -> anyhow::Result<Option<crate::train::damage_synth::ArtifactBank>> {
    if path.as_os_str() == "none" {
        return Ok(None);
    }
    let bank = crate::train::damage_synth::ArtifactBank::load(path, per_category, 200, seed)
        .with_context(|| format!("reading artifacts in {}", path.display()))?;
    Ok(Some(bank))
}

/// The command line as typed (with `kintsugi` as the program name), for manifests.
pub(super) fn command_line() -> String {
    std::iter::once("kintsugi".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a training run continues its checkpoint or starts afresh, and whether a fresh run may
/// replace weights already at its output (shared by every `train` family).
#[derive(Debug, clap::Args)]
pub struct Resume {
    /// Continue from the checkpoint in the runs folder.
    #[arg(long)]
    pub resume: bool,
    /// Let a fresh run (no --resume) replace the weights already at its output stem; without
    /// it such a run is refused before it starts, so no trained weights are lost by accident.
    #[arg(long)]
    pub overwrite: bool,
}

impl Resume {
    /// The run's folder (`runs`, else [`default_runs_dir`] of `out` with `fallback`), once
    /// [`Self::check`] allows the run.
    pub(super) fn runs_dir(
        &self,
        out: &Path,
        runs: Option<&PathBuf>,
        fallback: &str,
    ) -> anyhow::Result<PathBuf> {
        let dir = runs
            .cloned()
            .unwrap_or_else(|| default_runs_dir(out, fallback));
        self.check(out, &dir)?;
        Ok(dir)
    }

    /// Refuses a run that would replace the weights at `<out>.safetensors` without being told
    /// to (`--overwrite`): a fresh run, and a `--resume` that finds no checkpoint in `runs` (it
    /// would start afresh too).
    fn check(&self, out: &Path, runs: &Path) -> anyhow::Result<()> {
        let weights = with_ext(out, "safetensors");
        if self.overwrite || !weights.exists() {
            return Ok(());
        }
        if !self.resume {
            anyhow::bail!(
                "{} already holds trained weights, which a fresh run would replace: pass \
                 --overwrite to replace them, --resume to continue their run, or another --out",
                weights.display()
            );
        }
        let checkpoint = runs.join("checkpoint.json");
        if !checkpoint.is_file() {
            anyhow::bail!(
                "--resume found no {}, so the run would start afresh and replace {}: give their \
                 run's folder with --runs, or pass --overwrite",
                checkpoint.display(),
                weights.display()
            );
        }
        Ok(())
    }
}

/// `runs/<stem>` beside the folder of `out` (`weights/vae-faces` -> `runs/vae-faces`);
/// `fallback` names the folder when `out` has no file name.
fn default_runs_dir(out: &Path, fallback: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| fallback.into());
    let base = out
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new(""));
    base.join("runs").join(name)
}

fn run_vae(a: VaeArgs) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let model = VaeConfig {
        image_size: a.size,
        latent: a.latent,
        base: a.base,
        sigma: a.sigma,
    };
    model.validate()?;
    let started = std::time::Instant::now();
    let all = ImageSet::load_dir(&a.data, a.size)
        .with_context(|| format!("reading the training images in {}", a.data.display()))?;
    let (train, val) = all.split(a.val, a.seed)?;
    eprintln!(
        "data: {} images in {} ({} train, {} held out), loaded in {:.1}s",
        all.len(),
        a.data.display(),
        train.len(),
        val.len(),
        started.elapsed().as_secs_f64()
    );
    if a.refresh {
        let weights = with_ext(&a.out, "safetensors");
        let json = with_ext(&a.out, "json");
        let mut manifest = crate::models::vae::VaeManifest::read(&json)?;
        if manifest.seed != a.seed || val.len() != manifest.metrics.val_images {
            anyhow::bail!(
                "{} was trained with seed {} and {} held-out images; pass --seed {} --val {} so \
                 the held-out split is the same",
                json.display(),
                manifest.seed,
                manifest.metrics.val_images,
                manifest.seed,
                manifest.metrics.val_images
            );
        }
        let m = crate::models::vae::LoadedVae::load(manifest.config, &weights, &dev)
            .with_context(|| format!("loading {}", weights.display()))?;
        m.save_f16(&weights)?;
        let m = crate::models::vae::LoadedVae::load(manifest.config, &weights, &dev)?;
        manifest.metrics = crate::train::vae::evaluate(&m.vae, &val, manifest.seed, &dev)?;
        manifest.write(&json)?;
        eprintln!(
            "wrote {} (f16) and {}: held-out PSNR {:.2} dB, ELBO {:.1} nats/image",
            weights.display(),
            json.display(),
            manifest.metrics.val_recon_psnr_db,
            manifest.metrics.val_elbo_nats
        );
        let pca = crate::train::vae::fit_latent_pca(&m.vae, &train, &dev)?;
        let path = with_ext(&a.out, "pca.safetensors");
        pca.save(&path)?;
        eprintln!(
            "wrote {} (top sigmas {:?})",
            path.display(),
            &pca.sigmas[..pca.sigmas.len().min(5)]
        );
        return Ok(());
    }
    // Checked here, not first: --refresh above rewrites the weights of their own run.
    let runs_dir = a.resume.runs_dir(&a.out, a.runs.as_ref(), "run")?;
    // The held-out file names, so evaluations (e.g. inpainting) can use exactly this split.
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;
    let val_list = runs_dir.join("val_files.txt");
    let names: Vec<&str> = (0..val.len()).map(|i| val.name(i)).collect();
    std::fs::write(&val_list, names.join("\n") + "\n")
        .with_context(|| format!("writing {}", val_list.display()))?;
    // argv[0] is wherever the binary happened to run from; record the command as users type it.
    let command = command_line();
    let cfg = VaeTrainConfig {
        model,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        kl_warmup: a.kl_warmup,
        seed: a.seed,
        val_count: a.val,
        sample_every: a.sample_every,
        runs_dir: runs_dir.clone(),
        out: a.out.clone(),
        resume: a.resume.resume,
        max_seconds: a.max_minutes.map(|m| m * 60.0),
        data_desc: format!(
            "{} ({} images; {} train, {} held out by a shuffle seeded with {}; random \
             horizontal flips)",
            a.data.display(),
            all.len(),
            train.len(),
            val.len(),
            a.seed
        ),
        data_license: a.data_license.clone(),
        command,
    };
    let bar = super::progress::step_bar(a.steps, "train vae", a.quiet);
    let mut on_step = |r: &crate::train::vae::StepReport| {
        bar.set_position(r.step);
        bar.set_message(format!(
            "loss {:.1} recon {:.1} KL {:.1} (beta {:.2}) psnr {:.2}dB {:.2} steps/s",
            r.loss, r.recon, r.kl, r.beta, r.psnr, r.steps_per_sec
        ));
        if a.quiet && r.step % 50 == 0 {
            eprintln!(
                "step {}/{} loss {:.1} recon {:.1} KL {:.1} beta {:.2} psnr {:.2}dB {:.3} steps/s",
                r.step, r.total, r.loss, r.recon, r.kl, r.beta, r.psnr, r.steps_per_sec
            );
        }
        true
    };
    let outcome = train_vae(&cfg, &train, &val, &dev, &mut on_step)?;
    bar.finish_and_clear();
    if let Some(m) = &outcome.manifest {
        eprintln!(
            "{} at step {} ({:.0}s of training): held-out PSNR {:.2} dB, ELBO {:.1} nats/image \
             (KL {:.1})",
            if outcome.finished {
                "finished"
            } else {
                "stopped by the time limit"
            },
            outcome.steps,
            m.train_seconds,
            m.metrics.val_recon_psnr_db,
            m.metrics.val_elbo_nats,
            m.metrics.val_kl_nats
        );
    }
    eprintln!(
        "wrote {} and {}; grids and checkpoint in {}",
        with_ext(&a.out, "safetensors").display(),
        with_ext(&a.out, "json").display(),
        runs_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_may_not_replace_trained_weights_unless_told() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (out, runs) = (dir.path().join("detect-damage"), dir.path().join("runs"));
        let run = |resume, overwrite| Resume { resume, overwrite }.check(&out, &runs);
        let refusal = |resume| run(resume, false).err().map(|e| e.to_string());
        assert!(run(false, false).is_ok(), "nothing there yet");
        std::fs::write(out.with_extension("safetensors"), b"weights")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = refusal(false);
        assert!(
            err.as_deref().is_some_and(
                |e| e.contains("--overwrite") && e.contains("detect-damage.safetensors")
            ),
            "{err:?}"
        );
        // Resuming without a checkpoint would start afresh just the same.
        let err = refusal(true);
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("checkpoint.json") && e.contains("--runs")),
            "{err:?}"
        );
        std::fs::create_dir_all(&runs).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(runs.join("checkpoint.json"), b"{}").unwrap_or_else(|e| panic!("{e}"));
        assert!(run(true, false).is_ok(), "a resumed run continues them");
        assert!(run(false, true).is_ok(), "replacing them was asked for");
    }
}
