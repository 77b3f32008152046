//! `kintsugi train detect ...`: trains the damage detector on random crops of clean photos with
//! synthetic and real-artifact damage.

use std::path::PathBuf;

use candle_core::Device;

use super::train::Resume;

use crate::detect::learned::DetectNetConfig;
use crate::train::cgan::{with_ext, CropSource};
use crate::train::damage_synth::ArtifactBank;
use crate::train::detect::{train_detect, DetectStep, DetectTrainConfig, TrainAugment};

/// Where `train detect` and `train detect-data` take their photos and damage artifacts from.
#[derive(Debug, clap::Args)]
pub struct DetectSource {
    /// Photo folder: its `train` and `test` subfolders are the training photos and `val` the
    /// held-out ones (e.g. ../shared/datasets/bsds500; read in place).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder of the film-damage artifacts (`artifacts.csv` + `artifacts/`); `none` for
    /// procedural damage only.
    #[arg(long, default_value = "../shared/datasets/film-damage")]
    pub artifacts: PathBuf,
    /// Artifacts loaded per category (the set is mostly hair; this balances it).
    #[arg(long, default_value_t = 80)]
    pub artifacts_per_category: usize,
}

impl DetectSource {
    /// The photos and the artifact bank (`None` for `--artifacts none`); `seed` picks the
    /// artifacts.
    pub(super) fn load(
        &self,
        seed: u64,
    ) -> anyhow::Result<(super::train::PhotoData, Option<ArtifactBank>)> {
        let photos = super::train::load_photo_data(&self.data)?;
        let bank =
            super::train::load_artifacts(&self.artifacts, self.artifacts_per_category, seed)?;
        Ok((photos, bank))
    }
}

/// Training-only additions to the damage synthesis, shared by `train detect` and `train
/// detect-data` (the held-out set, validation and calibration draw none of them).
#[derive(Debug, clap::Args)]
pub struct AugmentArgs {
    /// Share of the damaged training crops that also get short film dashes (streaks 6-40 px
    /// along the film's transport direction, like the real film-damage scans; 0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub dashes: f64,
    /// Share of the training crops whose scene colours are made bolder before the damage (hue
    /// turned, saturation x1.3-2.5), like printed packaging and signs, which the photos lack;
    /// 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub vivid: f64,
    /// Share of the training crops that get printed marks as scene before the damage (a line of
    /// glyph-like strokes, maybe a flat panel and a row of solid squares), like the lettering
    /// of packaging and signs, which the photos lack; 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub print: f64,
    /// Share of the damaged training crops that also get a network of emulsion cracks
    /// (wandering, branching thin lines, mostly bright, like the cracked old prints); 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub cracks: f64,
    /// Share of the damaged training crops whose damage draws brush strokes (wide opaque
    /// bands, 7.5% of the held-out truth and almost never found), in place of the held-out
    /// mix's 3%; 0 keeps the 3%.
    #[arg(long, default_value_t = 0.0)]
    pub brush: f64,
    /// Share of the training crops that get a shaded patch of cloth as scene before the damage
    /// (light or dark convex shapes 20-90 px with shading, folds and weave, like the white
    /// collars and shirt fronts of old portraits); 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub garments: f64,
    /// Smallest box side (px) of those cloth patches, drawn from it to 70 px more; at the
    /// default 20 the small patches look like the round white blobs of the `dots` artifacts.
    #[arg(long, default_value_t = crate::train::detect::GARMENT_MIN_SIDE)]
    pub garment_min: f32,
}

impl AugmentArgs {
    /// The augmentation, refused outside [0, 1].
    pub(super) fn augment(&self) -> anyhow::Result<TrainAugment> {
        for (name, v) in [
            ("--dashes", self.dashes),
            ("--vivid", self.vivid),
            ("--print", self.print),
            ("--cracks", self.cracks),
            ("--brush", self.brush),
            ("--garments", self.garments),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("{name} is a share of the crops, from 0 to 1 (got {v})");
            }
        }
        let min = crate::train::detect::GARMENT_MIN_SIDE;
        if !(min..=256.0).contains(&self.garment_min) {
            anyhow::bail!(
                "--garment-min is a side in pixels, from {min} to 256 (got {})",
                self.garment_min
            );
        }
        Ok(TrainAugment {
            dashes: self.dashes,
            vivid: self.vivid,
            print: self.print,
            cracks: self.cracks,
            brush: self.brush,
            garments: self.garments,
            garment_min: self.garment_min,
        })
    }
}

/// `before`, the share as a percentage, `after`; nothing when the share is 0 (an option left off).
fn share_note(share: f64, before: &str, after: &str) -> String {
    if share > 0.0 {
        format!("{before}{:.0}%{after}", 100.0 * share)
    } else {
        String::new()
    }
}

/// Arguments of `train detect`.
#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    /// Photos and artifacts.
    #[command(flatten)]
    pub source: DetectSource,
    /// Total optimiser steps (a resumed run continues up to this count).
    #[arg(long, default_value_t = 6000)]
    pub steps: u64,
    /// Crop side in pixels (a multiple of 8).
    #[arg(long, default_value_t = 96)]
    pub crop: usize,
    /// Crops per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Channels at 1/2 resolution (the defaults are the shipped sizes).
    #[arg(long, default_value_t = 24)]
    pub base: usize,
    /// Channels at 1/4 resolution (0: 2 x base).
    #[arg(long, default_value_t = 48)]
    pub mid: usize,
    /// Channels at 1/8 resolution (0: 3 x base).
    #[arg(long, default_value_t = 96)]
    pub deep: usize,
    /// Extra residual blocks at 1/8 resolution (more context).
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// Extra residual blocks (two 3x3 convs) at 1/2 resolution (finer decisions).
    #[arg(long, default_value_t = 0)]
    pub fine: usize,
    /// Half side of the element of two extra input features, the white and black top-hats of
    /// the luminance (0 = none, as shipped).
    #[arg(long, default_value_t = 0)]
    pub tophat: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Weight of damage pixels in the cross-entropy.
    #[arg(long, default_value_t = 3.0)]
    pub pos_weight: f64,
    /// Weight of the Dice term.
    #[arg(long, default_value_t = 0.5)]
    pub dice_weight: f64,
    /// Weight of the hard-negative term: the mean cross-entropy of the highest-scoring clean
    /// pixels away from damage (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub hard_neg_weight: f64,
    /// Share of a batch's clean pixels (away from damage) that the hard-negative term covers.
    #[arg(long, default_value_t = 0.01)]
    pub hard_neg_frac: f64,
    #[command(flatten)]
    pub augment: AugmentArgs,
    /// Untouched whole training photos per step whose highest-scoring pixels (the top
    /// --hard-neg-frac) add a hard-negative term, so that smooth regions larger than a crop
    /// (skies, lakes) are learned as clean; needs --hard-neg-weight (0 = none). Uncropped: meant
    /// for photos of BSDS500's size (481x321).
    #[arg(long, default_value_t = 0)]
    pub photo_negatives: usize,
    /// Set aside this many training photos (spread evenly) for calibrating the threshold only:
    /// the training never crops them (0 = calibrate on the training photos).
    #[arg(long, default_value_t = 0)]
    pub cal_photos: usize,
    /// Output stem: writes `<OUT>.safetensors` and `<OUT>.json`.
    #[arg(long, default_value = "weights/detect-damage")]
    pub out: PathBuf,
    /// Folder for the checkpoint (default: `runs/<name of OUT>`).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    #[command(flatten)]
    pub resume: Resume,
    /// Start from these weights instead of a random initialisation (ignored when a checkpoint
    /// is resumed): the same sizes, or smaller ones (same block count, as many fine blocks or
    /// fewer), which are widened to --base/--mid/--deep and deepened to --fine without
    /// changing what the network computes.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Keep a moving average of the weights with this largest decay per step (0.999: about
    /// the last 1000 steps) and ship it; the last step's weights go to `raw/` in OUT's folder
    /// (0 = none, as shipped).
    #[arg(long, default_value_t = 0.0)]
    pub ema: f64,
    /// Seed of everything random.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Validation and checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Stop this session (checkpoint + weights + manifest) after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// No progress bar (a log line every 20 steps instead).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `train detect`.
pub fn run_detect(a: DetectArgs) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let started = std::time::Instant::now();
    let augment = a.augment.augment()?;
    let sides = crate::train::detect::garment_sides(augment.garment_min);
    let runs_dir = a
        .resume
        .runs_dir(&a.out, a.runs.as_ref(), "detect-damage")?;
    let (photos, bank) = a.source.load(a.seed)?;
    let super::train::PhotoData {
        dirs,
        source,
        val_dir,
        val_source,
    } = photos;
    let (source, cal_source) = source.split_spread(a.cal_photos)?;
    let cal_source = (!cal_source.is_empty()).then_some(cal_source);
    eprintln!(
        "data: {} training photos from {:?} ({} more set aside for calibration), {} validation \
         photos, {} artifacts {:?}; loaded in \
         {:.1}s",
        source.len(),
        dirs,
        cal_source.as_ref().map_or(0, CropSource::len),
        val_source.len(),
        bank.as_ref().map_or(0, |b| b.len()),
        bank.as_ref().map(|b| b.categories()).unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    let command = super::train::command_line();
    let cfg = DetectTrainConfig {
        net: DetectNetConfig {
            base: a.base,
            mid: a.mid,
            deep: a.deep,
            blocks: a.blocks,
            fine: a.fine,
            tophat: a.tophat,
        },
        steps: a.steps,
        batch: a.batch,
        crop: a.crop,
        lr: a.lr,
        warmup: a.warmup,
        pos_weight: a.pos_weight,
        dice_weight: a.dice_weight,
        hard_neg_weight: a.hard_neg_weight,
        hard_neg_frac: a.hard_neg_frac,
        augment,
        photo_negatives: a.photo_negatives,
        ema: a.ema,
        seed: a.seed,
        sample_every: a.sample_every,
        runs_dir: runs_dir.clone(),
        out: a.out.clone(),
        resume: a.resume.resume,
        init: a.init.clone(),
        max_seconds: a.max_minutes.map(|m| m * 60.0),
        data_desc: format!(
            "random {c}x{c} crops (random horizontal flips) of the {n} photos in {dirs:?} \
             (BSDS500 train+test); damage per crop with a fixed seed per step from \
             train::detect::synth_sample_full: curved scratches, hairs, dust specks/blobs, {brush} \
             brush strokes and {k} real film-damage artifact cut-outs ({art}, up to {p} per \
             category) at 16-96 px (log-uniform), random rotation, opacity and light/dark \
             colour, faint straight film scratches (30% of crops){dashes}{cracks}, then varied opacity \
             (x0.4-1), tint and blur (box r 1-2); 12% of crops undamaged{vivid}{print}{garments}; whole-crop grey/sepia \
             tone, gamma/contrast, then fine or clumped grain. Labels: the visibly changed \
             pixels (see ground_truth). Validation during training: 32 fixed damaged crops of {val}.",
            c = a.crop,
            n = source.len(),
            k = bank.as_ref().map_or(0, |b| b.len()),
            art = a.source.artifacts.display(),
            p = a.source.artifacts_per_category,
            val = val_dir.display(),
            dashes = share_note(
                augment.dashes,
                ", short film dashes along the transport direction (",
                " of damaged crops)"
            ),
            brush = if augment.brush > 0.0 {
                format!("frequent ({:.0}% of damaged crops)", 100.0 * augment.brush)
            } else {
                "rare".into()
            },
            cracks = share_note(
                augment.cracks,
                ", networks of wandering, branching emulsion cracks (",
                " of damaged crops)"
            ),
            vivid = share_note(
                augment.vivid,
                "; ",
                " of crops made vivid before the damage (hue turned, saturation x1.3-2.5)"
            ),
            print = share_note(
                augment.print,
                "; printed marks (glyph strokes, flat panels, solid squares) painted into ",
                " of crops as scene before the damage"
            ),
            garments = share_note(
                augment.garments,
                "; shaded cloth patches (convex shapes with folds and weave) painted into ",
                &format!(
                    " of crops as scene before the damage (boxes of {:.0}-{:.0} px)",
                    sides.start, sides.end
                )
            ),
        ),
        data_license: "BSDS500: no licence stated, research use (cite Arbelaez et al. 2011); \
                       film-damage artifacts: MIT (Ivanova et al. 2023). The weights inherit \
                       BSDS500's research-use terms."
            .into(),
        command,
    };
    let bar = super::progress::step_bar(a.steps, "train detect", a.quiet);
    let mut on_step = |r: &DetectStep| {
        let val = r
            .val
            .map(|v| {
                format!(
                    " val P {:.3} R {:.3} F1 {:.3}",
                    v.precision(),
                    v.recall(),
                    v.f1()
                )
            })
            .unwrap_or_default();
        let hard = if a.hard_neg_weight > 0.0 {
            format!(" hard {:.3}", r.hard)
        } else {
            String::new()
        };
        let line = format!(
            "loss {:.4} (bce {:.4} dice {:.3}{hard}){val} {:.2} steps/s",
            r.loss, r.bce, r.dice, r.steps_per_sec
        );
        bar.set_position(r.step);
        bar.set_message(line.clone());
        if a.quiet && (r.step % 20 == 0 || r.val.is_some()) {
            let left = (r.total - r.step) as f64 / r.steps_per_sec.max(1e-9);
            eprintln!("step {}/{} {line} eta {:.0}s", r.step, r.total, left);
        }
        true
    };
    let outcome = train_detect(
        &cfg,
        &source,
        cal_source.as_ref(),
        &val_source,
        bank.as_ref(),
        &dev,
        &mut on_step,
    )?;
    bar.finish_and_clear();
    eprintln!(
        "{} at step {} ({:.0}s of training in all, {:.2} steps/s this session); {} params; \
         logit offset {:.2}; val P {:.3} R {:.3} F1 {:.3} IoU {:.3}",
        if outcome.finished {
            "finished"
        } else {
            "stopped early"
        },
        outcome.steps,
        outcome.train_seconds,
        outcome.steps_per_sec,
        outcome.params,
        outcome.logit_offset,
        outcome.val.precision(),
        outcome.val.recall(),
        outcome.val.f1(),
        outcome.val.iou()
    );
    eprintln!(
        "wrote {} and {}; checkpoint in {}",
        with_ext(&a.out, "safetensors").display(),
        with_ext(&a.out, "json").display(),
        runs_dir.display()
    );
    Ok(())
}
