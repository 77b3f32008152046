//! `kintsugi eval --images DIR --masks DIR --model M [--csv FILE]`
//!
//! Pairs each image with a mask (seeded choice; the mask cropped at a seeded offset when it is
//! larger than the image, resized otherwise), blanks the hole, restores it through the engine
//! and scores the result against the clean image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::progress::run_job;
use crate::engine::{Engine, EngineConfig, JobKind, JobOutput};
use crate::imaging::mask_synth::{synth_mask, SynthKind};
use crate::imaging::metrics::{hole_l1, hole_psnr, psnr, ssim};
use crate::imaging::{
    io::load_mask_any_size, load_image, save_image, BitDepth, ImageF32, Mask, Rect,
};

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of clean images.
    #[arg(long)]
    pub images: PathBuf,
    /// Folder of masks (white = hole), or `synthetic:scratch` / `synthetic:dust` /
    /// `synthetic:block` (a central square of half the shorter side).
    #[arg(long)]
    pub masks: String,
    /// Restorer to score.
    #[arg(long, default_value = "auto")]
    pub model: String,
    /// Write per-image rows to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Use at most this many images (sorted by name).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed for mask choice and placement.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write each clean image and its fitted mask here (PNG), for scoring other tools on
    /// exactly the same pairs.
    #[arg(long)]
    pub export_pairs: Option<PathBuf>,
    /// Also write each restored image here (PNG).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Model parameter, NAME=VALUE (repeatable).
    #[arg(long = "param", value_parser = super::parse_param)]
    pub params: Vec<(String, f64)>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

enum MaskSource {
    Dir(Vec<PathBuf>),
    Synthetic(SynthKind),
}

fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| {
                    matches!(
                        e.to_ascii_lowercase().as_str(),
                        "png" | "jpg" | "jpeg" | "tif" | "tiff" | "webp" | "bmp"
                    )
                })
                .unwrap_or(false)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Crops `mask` to `w` x `h` at a seeded offset when it is large enough, else resizes it.
pub fn fit_mask(mask: &Mask, w: usize, h: usize, rng: &mut StdRng) -> Mask {
    if mask.width() >= w && mask.height() >= h {
        let x = rng.random_range(0..=mask.width() - w);
        let y = rng.random_range(0..=mask.height() - h);
        mask.crop(Rect {
            x,
            y,
            width: w,
            height: h,
        })
    } else {
        mask.resize_nearest(w, h)
    }
}

struct Row {
    name: String,
    mask: String,
    coverage: f64,
    hole_psnr: f64,
    hole_l1: f64,
    psnr: f64,
    ssim: f64,
    ms: f64,
}

/// Runs `eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut images = list_images(&args.images)?;
    if let Some(n) = args.limit {
        images.truncate(n);
    }
    if images.is_empty() {
        bail!("no images found in {}", args.images.display());
    }
    let source = match args.masks.strip_prefix("synthetic:") {
        Some(kind) => MaskSource::Synthetic(
            SynthKind::parse(kind)
                .with_context(|| format!("unknown synthetic mask kind '{kind}' (scratch, dust)"))?,
        ),
        None => {
            let masks = list_images(Path::new(&args.masks))?;
            if masks.is_empty() {
                bail!("no masks found in {}", args.masks);
            }
            MaskSource::Dir(masks)
        }
    };
    for dir in [&args.export_pairs, &args.out_dir].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut config = EngineConfig::all_cores();
    if let Some(t) = args.threads {
        config.threads = t;
    }
    config.registry.restorer(&args.model)?;
    let engine = Engine::start(config)?;
    let params = super::params_from(&args.params);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut rows = Vec::new();
    println!(
        "{:<24} {:<20} {:>6} {:>9} {:>8} {:>7} {:>6} {:>9}",
        "image", "mask", "hole%", "holePSNR", "holeL1", "PSNR", "SSIM", "ms"
    );
    for (i, path) in images.iter().enumerate() {
        let clean = load_image(path)?.pixels;
        let (w, h) = (clean.width(), clean.height());
        let (mask, mask_name) = match &source {
            MaskSource::Dir(masks) => {
                let m = &masks[rng.random_range(0..masks.len())];
                let raw = load_mask_any_size(m)?;
                (fit_mask(&raw, w, h, &mut rng), file_name(m))
            }
            MaskSource::Synthetic(kind) => {
                let s = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
                (synth_mask(*kind, w, h, s), format!("{}#{s}", kind.name()))
            }
        };
        if mask.is_empty() {
            continue;
        }
        if let Some(dir) = &args.export_pairs {
            save_image(
                &clean,
                BitDepth::U8,
                &dir.join(format!("{i:03}_image.png")),
                Some(path),
            )?;
            crate::imaging::io::save_mask(&mask, &dir.join(format!("{i:03}_mask.png")), None)?;
        }
        let mut damaged = clean.clone();
        blank_holes(&mut damaged, &mask);
        let job = JobKind::Restore {
            image: Arc::new(damaged),
            mask: Arc::new(mask.clone()),
            model: args.model.clone(),
            params: params.clone(),
        };
        let done = run_job(&engine, job, &args.model, true)
            .with_context(|| format!("restoring {}", path.display()))?;
        let JobOutput::Image(result) = done.output else {
            bail!("the {} job returned no image", args.model);
        };
        if let Some(dir) = &args.out_dir {
            save_image(
                &result,
                BitDepth::U8,
                &dir.join(format!("{i:03}_{}.png", args.model)),
                Some(path),
            )?;
        }
        // Score the 8-bit image a user would save, like the tools we compare against.
        let result = quantise8(&result);
        let row = Row {
            name: file_name(path),
            mask: mask_name,
            coverage: mask.coverage() * 100.0,
            hole_psnr: hole_psnr(&clean, &result, &mask).unwrap_or(f64::NAN),
            hole_l1: hole_l1(&clean, &result, &mask).unwrap_or(f64::NAN),
            psnr: psnr(&clean, &result),
            ssim: ssim(&clean, &result),
            ms: done.elapsed.as_secs_f64() * 1000.0,
        };
        println!(
            "{:<24} {:<20} {:>6.2} {:>9.2} {:>8.4} {:>7.2} {:>6.4} {:>9.1}",
            row.name,
            row.mask,
            row.coverage,
            row.hole_psnr,
            row.hole_l1,
            row.psnr,
            row.ssim,
            row.ms
        );
        rows.push(row);
    }
    let n = rows.len().max(1) as f64;
    let mean = |f: fn(&Row) -> f64| rows.iter().map(f).sum::<f64>() / n;
    println!(
        "{:<24} {:<20} {:>6.2} {:>9.2} {:>8.4} {:>7.2} {:>6.4} {:>9.1}",
        format!("mean of {}", rows.len()),
        args.model,
        mean(|r| r.coverage),
        mean(|r| r.hole_psnr),
        mean(|r| r.hole_l1),
        mean(|r| r.psnr),
        mean(|r| r.ssim),
        mean(|r| r.ms)
    );
    if let Some(csv) = &args.csv {
        let mut f = std::fs::File::create(csv)
            .with_context(|| format!("cannot create {}", csv.display()))?;
        writeln!(
            f,
            "image,mask,model,hole_pct,hole_psnr,hole_l1,psnr,ssim,ms"
        )?;
        for r in &rows {
            writeln!(
                f,
                "{},{},{},{:.4},{:.4},{:.6},{:.4},{:.6},{:.3}",
                r.name,
                r.mask,
                args.model,
                r.coverage,
                r.hole_psnr,
                r.hole_l1,
                r.psnr,
                r.ssim,
                r.ms
            )?;
        }
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sets hole pixels to black so no restorer can peek at the ground truth.
fn blank_holes(img: &mut ImageF32, mask: &Mask) {
    let c = img.channels();
    for (i, _) in mask.data().iter().enumerate().filter(|(_, &h)| h) {
        img.data_mut()[i * c..(i + 1) * c].fill(0.0);
    }
}

fn quantise8(img: &ImageF32) -> ImageF32 {
    let mut out = img.clone();
    out.data_mut()
        .iter_mut()
        .for_each(|v| *v = (v.clamp(0.0, 1.0) * 255.0).round() / 255.0);
    out
}
