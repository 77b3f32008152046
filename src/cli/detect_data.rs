//! `kintsugi train detect-data ...`: the damage detector's training data for a trainer outside
//! this program (the PyTorch twin in `src/train/detect_gpu.py`, for a lent GPU): a staged copy
//! of the photos and artifacts to carry to another machine, and a stream of encoded samples
//! made by the same code as `train detect`'s.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::train::cgan::{split_spread, CropSource};
use crate::train::detect::{encode_sample, synth_items, TrainAugment};

/// Arguments of `train detect-data`.
#[derive(Debug, clap::Args)]
pub struct DetectDataArgs {
    /// Photos and artifacts, as for `train detect`.
    #[command(flatten)]
    pub source: super::train_detect::DetectSource,
    /// Training photos set aside for calibration (never cropped), as `train detect` does.
    #[arg(long, default_value_t = 0)]
    pub cal_photos: usize,
    /// Copy the training photos left after `--cal-photos`, `--val-photos` validation photos and
    /// the chosen artifacts (already shrunk) into this folder, then stop: a self-contained
    /// `--data`/`--artifacts` pair (`DIR`, `DIR/film-damage`) to carry to another machine.
    #[arg(long)]
    pub stage: Option<PathBuf>,
    /// Validation photos to stage (spread evenly over the validation folder; all if it holds
    /// no more).
    #[arg(long, default_value_t = 20)]
    pub val_photos: usize,
    /// Crop side of the streamed samples (a multiple of 8).
    #[arg(long, default_value_t = 128)]
    pub crop: usize,
    /// Training-only additions to the synthesis, as in `train detect`.
    #[command(flatten)]
    pub augment: super::train_detect::AugmentArgs,
    /// Seed of the damage.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Samples to write to standard output (0 = until it is closed). Each is the crop as RGB
    /// bytes, then one label byte per pixel (0 clean far from damage, 1 damage, 2 ignored, 3
    /// clean near damage).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// First batch index: writers with other starts write other samples.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Samples made per batch (in parallel; at most 1024).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
    /// Damage the validation photos instead (no augmentation; seed as `train detect`'s
    /// validation).
    #[arg(long)]
    pub val: bool,
}

/// Runs `train detect-data`.
pub fn run(a: DetectDataArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.stage {
        return stage(&a, dir);
    }
    if a.crop % 8 != 0 || a.crop < 16 || a.chunk == 0 || a.chunk > 1024 {
        anyhow::bail!("--crop must be a multiple of 8 (at least 16) and --chunk 1 to 1024");
    }
    let augment = a.augment.augment()?;
    let (photos, bank) = a.source.load(a.seed)?;
    let (source, _) = photos.source.split_spread(a.cal_photos)?;
    let (source, seed, augment) = if a.val {
        (&photos.val_source, a.seed ^ 0x5a1, TrainAugment::default())
    } else {
        (&source, a.seed, augment)
    };
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        anyhow::bail!("the samples are binary: pipe standard output to a trainer or a file");
    }
    let mut buf = Vec::new();
    let mut written = 0u64;
    let mut index = a.start;
    while a.count == 0 || written < a.count {
        let n = if a.count == 0 {
            a.chunk
        } else {
            a.chunk.min((a.count - written) as usize)
        };
        let items = synth_items(source, bank.as_ref(), n, a.crop, seed, index, augment)?;
        buf.clear();
        for s in &items {
            encode_sample(s, &mut buf);
        }
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing samples to standard output"),
        }
        written += n as u64;
        index += 1;
    }
    Ok(())
}

/// Copies what a stream needs into `dir` (see [`DetectDataArgs::stage`]).
fn stage(a: &DetectDataArgs, dir: &Path) -> anyhow::Result<()> {
    // Photos left from another staging would be streamed too: start from an empty folder.
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!("{} is not empty: stage into a new folder", dir.display());
    }
    // Decoding every photo only to copy the files is deliberate: a photo that would stop the
    // stream on the other machine (after its start was paid for) is reported here instead.
    let (photos, bank) = a.source.load(a.seed)?;
    let (train, cal) = split_spread(CropSource::image_paths(&photos.dirs)?, a.cal_photos)?;
    let val = if photos.val_dir.is_dir() {
        let all = CropSource::image_paths(std::slice::from_ref(&photos.val_dir))?;
        if a.val_photos >= all.len() {
            all
        } else {
            split_spread(all, a.val_photos)?.1
        }
    } else {
        // Without a `val` folder the stream validates on the training photos, as here.
        Vec::new()
    };
    for (sub, paths) in [("train", &train), ("val", &val)] {
        if paths.is_empty() {
            continue;
        }
        let to = dir.join(sub);
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for (i, p) in paths.iter().enumerate() {
            // The index keeps the load order of photos from several folders.
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let dst = to.join(format!("{i:04}_{name}"));
            std::fs::copy(p, &dst)
                .with_context(|| format!("copying {} to {}", p.display(), dst.display()))?;
        }
    }
    if let Some(bank) = &bank {
        bank.save_dir(&dir.join("film-damage"))?;
    }
    eprintln!(
        "staged {} training photos ({} set aside), {} validation photos and {} artifacts in {}",
        train.len(),
        cal.len(),
        val.len(),
        bank.as_ref().map_or(0, |b| b.len()),
        dir.display()
    );
    Ok(())
}
