//! `kintsugi detect INPUT -o MASK` and `kintsugi restore INPUT -o OUTPUT`: propose a damage mask,
//! and propose-then-inpaint in one go.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use super::progress::run_job;
use crate::detect::{detect, detector_by_name, Detector, ProbMap, TileOptions};
use crate::engine::{Engine, EngineConfig, JobKind, JobOutput};
use crate::imaging::io::save_mask;
use crate::imaging::{load_image, save_image, BitDepth, ImageF32};
use crate::models::registry::Registry;
use crate::restore::Reporter;

/// Options shared by `detect` and `restore`.
#[derive(Debug, clap::Args)]
pub struct DetectOptions {
    /// Sensitivity in [0, 1]: pixels whose damage probability is at least 1 - S are proposed.
    #[arg(long, short, default_value_t = crate::detect::DEFAULT_SENSITIVITY)]
    pub sensitivity: f32,
    /// Grow the proposal by this many pixels so it covers the soft edges of the damage.
    #[arg(long, default_value_t = crate::detect::DEFAULT_DILATION)]
    pub dilate: usize,
    /// Which detector: auto (learned when its weights load, else classical), learned, classical.
    #[arg(long, default_value = "auto")]
    pub detector: String,
    /// Tile side in pixels (memory grows with it; results do not change).
    #[arg(long, default_value_t = 1024)]
    pub tile: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `detect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scan to inspect (PNG, JPEG, TIFF, WebP or BMP; 8 or 16 bit).
    pub input: PathBuf,
    /// Where to write the proposed mask (8-bit PNG, white = damage).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Also write the probability map (grey PNG, white = certain damage).
    #[arg(long)]
    pub probabilities: Option<PathBuf>,
    /// Detection settings.
    #[command(flatten)]
    pub opts: DetectOptions,
}

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The damaged scan.
    pub input: PathBuf,
    /// Where to write the restored image; its extension picks the format. Never the input.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Inpainting model (see `kintsugi models`).
    #[arg(long, default_value = "auto")]
    pub model: String,
    /// Also write the mask that was used.
    #[arg(long)]
    pub mask_out: Option<PathBuf>,
    /// Model parameter, NAME=VALUE (repeatable).
    #[arg(long = "param", value_parser = super::parse_param)]
    pub params: Vec<(String, f64)>,
    /// Detection settings.
    #[command(flatten)]
    pub opts: DetectOptions,
}

/// A [`Reporter`] drawing a progress bar.
pub(super) struct BarReporter(pub ProgressBar);

impl BarReporter {
    /// A bar labelled `label`, hidden when `quiet`.
    pub(super) fn new(label: &str, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(1)
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} tiles (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        Self(bar)
    }
}

impl Reporter for BarReporter {
    fn is_cancelled(&self) -> bool {
        false
    }
    fn progress(&self, done: u64, total: u64, _message: &str) {
        self.0.set_length(total.max(1));
        self.0.set_position(done);
    }
    fn preview(&self, _image: &ImageF32) {}
}

/// Runs detection over `image` on a pool of `threads` threads.
pub(super) fn run_detection(
    det: &dyn Detector,
    image: &ImageF32,
    tile: usize,
    threads: Option<usize>,
    quiet: bool,
) -> anyhow::Result<(ProbMap, f64)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(
            threads
                .unwrap_or_else(crate::engine::available_cores)
                .max(1),
        )
        .build()
        .context("starting the detection threads")?;
    let rep = BarReporter::new(&format!("detect ({})", det.id()), quiet);
    let start = Instant::now();
    let map = pool.install(|| detect(det, image, TileOptions { tile }, &rep))?;
    rep.0.finish_and_clear();
    Ok((map, start.elapsed().as_secs_f64()))
}

/// Loads the detector named in `opts`, printing the fallback notice unless `quiet`.
pub(super) fn load(opts: &DetectOptions) -> anyhow::Result<Arc<dyn Detector>> {
    let registry = Registry::default();
    let (det, notice) = detector_by_name(&opts.detector, registry.weights_dir())?;
    if let Some(n) = notice {
        eprintln!("note: {n}");
    }
    Ok(det)
}

fn describe(path: &Path, image: &ImageF32) -> String {
    format!(
        "{} ({}x{}, {:.1} MP)",
        path.display(),
        image.width(),
        image.height(),
        (image.width() * image.height()) as f64 / 1e6
    )
}

/// Runs `detect`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let det = load(&args.opts)?;
    let loaded = load_image(&args.input)?;
    let (map, secs) = run_detection(
        det.as_ref(),
        &loaded.pixels,
        args.opts.tile,
        args.opts.threads,
        args.opts.quiet,
    )?;
    let mask = map.mask(args.opts.sensitivity, args.opts.dilate);
    save_mask(&mask, &args.output, Some(&args.input))
        .with_context(|| format!("saving the mask to {}", args.output.display()))?;
    if let Some(p) = &args.probabilities {
        save_image(&map.to_image(), BitDepth::U8, p, Some(&args.input))
            .with_context(|| format!("saving the probabilities to {}", p.display()))?;
    }
    if !args.opts.quiet {
        eprintln!(
            "{}: {} flagged {:.3}% of the pixels (sensitivity {}, dilation {}) in {:.2} s -> {}",
            describe(&args.input, &loaded.pixels),
            det.id(),
            100.0 * mask.coverage(),
            args.opts.sensitivity,
            args.opts.dilate,
            secs,
            args.output.display()
        );
    }
    Ok(())
}

/// Runs `restore`: detect, then inpaint the proposal.
pub fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let mut config = EngineConfig::all_cores();
    if let Some(t) = args.opts.threads {
        config.threads = t;
    }
    // Fail on a bad model id before any work starts.
    config.registry.restorer(&args.model)?;
    let det = load(&args.opts)?;
    let loaded = load_image(&args.input)?;
    let (map, secs) = run_detection(
        det.as_ref(),
        &loaded.pixels,
        args.opts.tile,
        args.opts.threads,
        args.opts.quiet,
    )?;
    let mask = map.mask(args.opts.sensitivity, args.opts.dilate);
    if let Some(p) = &args.mask_out {
        save_mask(&mask, p, Some(&args.input))
            .with_context(|| format!("saving the mask to {}", p.display()))?;
    }
    if !args.opts.quiet {
        eprintln!(
            "{}: {} flagged {:.3}% of the pixels in {:.2} s",
            describe(&args.input, &loaded.pixels),
            det.id(),
            100.0 * mask.coverage(),
            secs
        );
    }
    let result = if mask.is_empty() {
        if !args.opts.quiet {
            eprintln!("no damage found; writing the image unchanged");
        }
        Arc::new(loaded.pixels)
    } else {
        let engine = Engine::start(config)?;
        let job = JobKind::Restore {
            image: Arc::new(loaded.pixels),
            mask: Arc::new(mask),
            model: args.model.clone(),
            params: super::params_from(&args.params),
        };
        let finished = run_job(&engine, job, &args.model, args.opts.quiet)?;
        let JobOutput::Image(result) = finished.output else {
            bail!("the {} job returned no image", args.model);
        };
        if !args.opts.quiet {
            eprintln!(
                "inpainted with {} in {:.2} s",
                args.model,
                finished.elapsed.as_secs_f64()
            );
        }
        result
    };
    save_image(&result, loaded.depth, &args.output, Some(&args.input))
        .with_context(|| format!("saving the result to {}", args.output.display()))?;
    if !args.opts.quiet {
        eprintln!("-> {}", args.output.display());
    }
    Ok(())
}
