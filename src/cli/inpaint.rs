//! `kintsugi inpaint INPUT --mask MASK --model M -o OUTPUT`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use super::progress::run_job;
use crate::engine::{Engine, EngineConfig, JobKind, JobOutput};
use crate::imaging::{load_image, load_mask, save_image};

/// Arguments of `inpaint`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The damaged image (PNG, JPEG, TIFF, WebP or BMP; 8 or 16 bit).
    pub input: PathBuf,
    /// Mask of the damage: non-zero (or non-transparent) pixels are restored. Same size as INPUT.
    #[arg(long, short)]
    pub mask: PathBuf,
    /// Restorer to use (see `kintsugi models`).
    #[arg(long, default_value = "auto")]
    pub model: String,
    /// Where to write the result; its extension picks the format. Never the input file.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Model parameter, NAME=VALUE (repeatable), e.g. `--param patch_size=5`.
    #[arg(long = "param", value_parser = super::parse_param)]
    pub params: Vec<(String, f64)>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `inpaint`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = load_image(&args.input)?;
    let (w, h) = (loaded.pixels.width(), loaded.pixels.height());
    let mask = load_mask(&args.mask, w, h)?;
    if mask.is_empty() {
        bail!("mask {} marks no pixel to restore", args.mask.display());
    }
    let mut config = EngineConfig::all_cores();
    if let Some(t) = args.threads {
        config.threads = t;
    }
    // Fail on a bad model id before any work starts.
    config.registry.restorer(&args.model)?;
    let engine = Engine::start(config)?;
    let job = JobKind::Restore {
        image: Arc::new(loaded.pixels),
        mask: Arc::new(mask),
        model: args.model.clone(),
        params: super::params_from(&args.params),
    };
    let finished = run_job(&engine, job, &args.model, args.quiet)?;
    let JobOutput::Image(result) = finished.output else {
        bail!("the {} job returned no image", args.model);
    };
    let report = save_image(&result, loaded.depth, &args.output, Some(&args.input))
        .with_context(|| format!("saving the result of {}", args.model))?;
    if report.depth != loaded.depth && !args.quiet {
        eprintln!(
            "note: {} holds {}-bit samples; the source had {} bits",
            args.output.display(),
            report.depth.bits(),
            loaded.depth.bits()
        );
    }
    if !args.quiet {
        eprintln!(
            "restored {} px with {} in {:.2} s -> {}",
            result.width() * result.height(),
            args.model,
            finished.elapsed.as_secs_f64(),
            args.output.display()
        );
    }
    Ok(())
}
