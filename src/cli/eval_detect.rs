//! `kintsugi eval-detect`: scores the damage detectors on held-out synthetic damage, on the real
//! damaged/clean/mask triplets of film-damage, and on untouched photos (false positives), and
//! times them on a synthetic 24-megapixel scan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::detect::run_detection;
use crate::detect::classical::{Classical, ClassicalParams};
use crate::detect::metrics::{
    percentile_interval, Bootstrap, Counts, Defects, Sweep, Tolerant, DEFECT_SIZE_BINS,
};
use crate::detect::{detect, threshold_level, Detector, ProbMap, TileOptions};
use crate::imaging::{load_image, ImageF32, Mask};
use crate::models::registry::Registry;
use crate::restore::NullReporter;
use crate::train::cgan::CropSource;
use crate::train::damage_synth::{ArtifactBank, DamageSource};
use crate::train::detect::{
    change, synth_sample, synth_sample_with_truth, LabelStats, SynthTruth, VISIBLE_CHANGE,
};

/// Arguments of `eval-detect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Photo folder with `val` (held-out) and `train` subfolders (e.g. ../shared/datasets/bsds500).
    #[arg(long, default_value = "../shared/datasets/bsds500")]
    pub data: PathBuf,
    /// film-damage folder: artifacts for the synthetic damage, `triplets/` for real damage.
    #[arg(long, default_value = "../shared/datasets/film-damage")]
    pub film_damage: PathBuf,
    /// Which photos to damage: `val` (held out; the reported numbers) or `train` (tuning).
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Detectors to score: `all`, `learned` or `classical`.
    #[arg(long, default_value = "all")]
    pub detector: String,
    /// Damaged crops per photo.
    #[arg(long, default_value_t = 2)]
    pub crops: usize,
    /// Side of the damaged crops.
    #[arg(long, default_value_t = 192)]
    pub crop: usize,
    /// Sensitivity at which the mask is scored.
    #[arg(long, default_value_t = crate::detect::DEFAULT_SENSITIVITY)]
    pub sensitivity: f32,
    /// Classical detector setting NAME=VALUE (repeatable; tuning).
    #[arg(long = "classical", value_parser = super::parse_param)]
    pub classical: Vec<(String, f64)>,
    /// Skip the real triplets and the clean photos (fast tuning loop).
    #[arg(long)]
    pub synthetic_only: bool,
    /// Also time detection of a synthetic scan of this many megapixels (e.g. 24).
    #[arg(long)]
    pub bench_mp: Option<f64>,
    /// Threads for the timing (default 2, the target machine).
    #[arg(long, default_value_t = 2)]
    pub bench_threads: usize,
    /// Write the scores as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the scores into the scored learned detector's manifest (`metrics` of
    /// `detect-damage.json` in `--weights-dir`, by default the shipped weights folder).
    #[arg(long)]
    pub update_manifest: bool,
    /// Folder holding `detect-damage.{safetensors,json}` to score (default: the shipped weights
    /// folder); e.g. an earlier model kept in the runs folder, for a before/after table.
    #[arg(long)]
    pub weights_dir: Option<PathBuf>,
    /// A second learned detector (folder holding `detect-damage.{safetensors,json}`), scored as
    /// `baseline` on the same crops and scans; the learned one's synthetic and real F1 are then
    /// compared with the baseline's on the same bootstrap resamples (paired intervals for the
    /// differences).
    #[arg(long)]
    pub baseline_dir: Option<PathBuf>,
    /// Bootstrap resamples for the F1 intervals: of the synthetic crops, and of the 128 px tiles
    /// of the real scans (0 = none).
    #[arg(long, default_value_t = 2000)]
    pub resamples: usize,
    /// Save the real triplets' proposals and the first 8 synthetic crops (damaged, truth,
    /// probabilities of each detector) as PNGs into this folder.
    #[arg(long)]
    pub save_masks: Option<PathBuf>,
}

fn classical_from(list: &[(String, f64)]) -> anyhow::Result<Classical> {
    let mut p = ClassicalParams::default();
    for (k, v) in list {
        let f = *v as f32;
        match k.as_str() {
            "radius" => p.radius = *v as usize,
            "texture_radius" => p.texture_radius = *v as usize,
            "line_radius" => p.line_radius = *v as usize,
            "floor" => p.floor = f,
            "base" => p.base = f,
            "texture_weight" => p.texture_weight = f,
            "line_gain" => p.line_gain = f,
            "s0" => p.s0 = f,
            "slope" => p.slope = f,
            other => bail!("unknown classical setting '{other}'"),
        }
    }
    Ok(Classical::new(p))
}

fn probs(det: &dyn Detector, img: &ImageF32) -> anyhow::Result<ProbMap> {
    Ok(detect(det, img, TileOptions::default(), &NullReporter)?)
}

fn counts_json(c: &Counts) -> serde_json::Value {
    serde_json::json!({
        "precision": c.precision(),
        "recall": c.recall(),
        "f1": c.f1(),
        "iou": c.iou(),
        "tp": c.tp, "fp": c.fp, "fn": c.fn_, "tn": c.tn,
    })
}

fn line(label: &str, c: &Counts) -> String {
    format!(
        "  {label:<34} P {:.3}  R {:.3}  F1 {:.3}  IoU {:.3}",
        c.precision(),
        c.recall(),
        c.f1(),
        c.iou()
    )
}

/// Changes up to this map onto the 8-bit levels of [`Ceiling`]'s sweeps (0.25 / 255 per level).
const CEILING_RANGE: f32 = 0.25;

/// The difference of two RGB images of the same size as levels for a [`Sweep`]: per pixel, the
/// 3x3 mean of each channel's difference, the largest in magnitude, on 8-bit levels of
/// [`CEILING_RANGE`].
fn difference_levels(image: &ImageF32, reference: &ImageF32) -> Vec<u8> {
    let (w, h) = (image.width(), image.height());
    let diff: Vec<f32> = image
        .data()
        .iter()
        .zip(reference.data())
        .map(|(a, b)| a - b)
        .collect();
    let mut best = vec![0f32; w * h];
    for c in 0..3 {
        let plane: Vec<f32> = diff.iter().skip(c).step_by(3).copied().collect();
        let mean = crate::detect::classical::box_mean(&plane, w, h, 1);
        for (b, m) in best.iter_mut().zip(mean) {
            *b = b.max(m.abs());
        }
    }
    best.iter()
        .map(|&b| (b / CEILING_RANGE * 255.0).round().min(255.0) as u8)
        .collect()
}

/// A ceiling for the detectors: the scores of thresholding the true difference between each
/// damaged crop and its clean reference, which a detector would have to infer from the scene
/// (simple thresholding, so a reference point rather than a strict bound). Without grain that
/// difference is exactly what the labels threshold; with grain it is noisy, so the blind score
/// averages it over 3x3 pixels and sweeps one threshold over all crops. The grain-aware score
/// also knows which crops have grain: it thresholds the others exactly at [`VISIBLE_CHANGE`] and
/// sweeps the grainy ones only. How far a detector is below these separates what the grain hides
/// from what the detector does not know about the scene.
#[derive(Default)]
struct Ceiling {
    /// Every crop, 3x3 mean.
    blind: Sweep,
    /// Crops without grain, exact.
    exact: Counts,
    /// Crops with grain, 3x3 mean.
    grainy: Sweep,
}

impl Ceiling {
    fn add(&mut self, image: &ImageF32, truth: &Mask, t: &SynthTruth) {
        if image.channels() != 3 || t.reference.data().len() != image.data().len() {
            return;
        }
        let levels = difference_levels(image, &t.reference);
        self.blind.add(&levels, truth);
        if t.grain {
            self.grainy.add(&levels, truth);
        } else {
            for (i, &tr) in truth.data().iter().enumerate() {
                self.exact
                    .add(change(image, &t.reference, i) > VISIBLE_CHANGE, tr);
            }
        }
    }

    /// Best-threshold scores of the blind 3x3 difference.
    fn blind(&self) -> Counts {
        self.blind.best_f1().1
    }

    /// Best-threshold scores knowing which crops have grain.
    fn aware(&self) -> Counts {
        (1..=255u8)
            .map(|l| self.exact.merged(self.grainy.at(l)))
            .max_by(|a, b| a.f1().total_cmp(&b.f1()))
            .unwrap_or(self.exact)
    }
}

/// Side of the tiles of the real scans that their bootstrap resamples: the three scans alone are
/// too few items to resample.
const REAL_TILE: usize = 128;

/// The learned detector's F1 against the baseline's on the same bootstrap resamples.
struct PairedF1 {
    mean: f64,
    interval: (f64, f64),
    ahead: f64,
    resamples: usize,
}

impl PairedF1 {
    fn of(learned: &[f64], baseline: &[f64]) -> Self {
        let diffs: Vec<f64> = learned.iter().zip(baseline).map(|(l, b)| l - b).collect();
        let n = diffs.len().max(1) as f64;
        Self {
            mean: diffs.iter().sum::<f64>() / n,
            interval: percentile_interval(&diffs, 0.95),
            ahead: diffs.iter().filter(|&&d| d > 0.0).count() as f64 / n,
            resamples: diffs.len(),
        }
    }

    fn line(&self, what: &str) -> String {
        format!(
            "learned - baseline, {what} F1 on the same resamples: {:+.4} (95% interval {:+.4} \
             to {:+.4}; learned ahead in {:.0}% of {} resamples)",
            self.mean,
            self.interval.0,
            self.interval.1,
            100.0 * self.ahead,
            self.resamples
        )
    }

    fn json(&self, what: &str) -> serde_json::Value {
        serde_json::json!({
            "what": format!("{what} F1 of the learned detector minus the baseline's, both recomputed on the same bootstrap resamples (of the crops, or of the scans' {REAL_TILE} px tiles)"),
            "mean": self.mean,
            "interval_95": [self.interval.0, self.interval.1],
            "share_learned_ahead": self.ahead,
            "resamples": self.resamples,
        })
    }
}

fn tol_json(t: &Tolerant) -> serde_json::Value {
    serde_json::json!({
        "precision": t.precision(),
        "recall": t.recall(),
        "f1": t.f1(),
    })
}

fn tol_line(label: &str, t: &Tolerant) -> String {
    format!(
        "  {label:<34} P {:.3}  R {:.3}  F1 {:.3}",
        t.precision(),
        t.recall(),
        t.f1()
    )
}

fn defects_json(d: &Defects) -> serde_json::Value {
    serde_json::json!({
        "precision": d.precision(),
        "recall": d.recall(),
        "f1": d.f1(),
        "defects": d.defects.iter().sum::<u64>(),
        "found": d.found.iter().sum::<u64>(),
        "touched": d.touched.iter().sum::<u64>(),
        "flags": d.flags,
        "false_alarms": d.false_alarms(),
        "recall_by_size": defect_size_labels()
            .iter()
            .enumerate()
            .map(|(k, l)| (l.clone(), serde_json::json!({"defects": d.defects[k], "recall": d.recall_of_size(k)})))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// Names of the defect-size bins of [`Defects`]: "<= 10 px", "11-100 px", "> 100 px".
fn defect_size_labels() -> Vec<String> {
    let mut labels = Vec::with_capacity(DEFECT_SIZE_BINS.len() + 1);
    let mut low = 1;
    for top in DEFECT_SIZE_BINS {
        labels.push(if low == 1 {
            format!("<= {top} px")
        } else {
            format!("{low}-{top} px")
        });
        low = top + 1;
    }
    labels.push(format!("> {} px", low - 1));
    labels
}

fn defects_line(label: &str, d: &Defects) -> String {
    let sizes: Vec<String> = defect_size_labels()
        .iter()
        .enumerate()
        .map(|(k, l)| format!("{l}: {} R {:.3}", d.defects[k], d.recall_of_size(k)))
        .collect();
    format!(
        "  {label:<34} P {:.3}  R {:.3}  F1 {:.3}  ({} of {} defects found, {:.1}% touched; {} \
         false alarms of {} flags; recall by size {})",
        d.precision(),
        d.recall(),
        d.f1(),
        d.found.iter().sum::<u64>(),
        d.defects.iter().sum::<u64>(),
        100.0 * d.touched_share(),
        d.false_alarms(),
        d.flags,
        sizes.join(", ")
    )
}

/// Upper ends of the change bins of [`ChangeRecall`] (the lowest starts at [`VISIBLE_CHANGE`]).
const CHANGE_BINS: [f32; 4] = [0.08, 0.15, 0.3, f32::INFINITY];

/// Recall of the ground truth split by how much the damage changed the pixel: tells faint
/// damage (near the grain's amplitude) from bold damage the detector should never miss.
#[derive(Default)]
struct ChangeRecall {
    truth: [u64; CHANGE_BINS.len()],
    found: [u64; CHANGE_BINS.len()],
}

impl ChangeRecall {
    fn add(&mut self, pred: &Mask, truth: &Mask, change: &[f32]) {
        for ((&t, &p), &d) in truth.data().iter().zip(pred.data()).zip(change) {
            if t {
                let last = CHANGE_BINS.len() - 1;
                let b = CHANGE_BINS.iter().position(|&hi| d < hi).unwrap_or(last);
                self.truth[b] += 1;
                self.found[b] += u64::from(p);
            }
        }
    }

    fn label(b: usize) -> String {
        let lo = if b == 0 {
            VISIBLE_CHANGE
        } else {
            CHANGE_BINS[b - 1]
        };
        match CHANGE_BINS[b] {
            hi if hi.is_finite() => format!("{lo}-{hi}"),
            _ => format!(">{lo}"),
        }
    }

    fn line(&self) -> String {
        let total = self.truth.iter().sum::<u64>().max(1) as f64;
        let parts: Vec<String> = (0..CHANGE_BINS.len())
            .map(|b| {
                format!(
                    "{} ({:.0}% of truth) R {:.3}",
                    Self::label(b),
                    100.0 * self.truth[b] as f64 / total,
                    self.found[b] as f64 / self.truth[b].max(1) as f64
                )
            })
            .collect();
        format!("recall by change: {}", parts.join("; "))
    }

    fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for b in 0..CHANGE_BINS.len() {
            m.insert(
                Self::label(b),
                serde_json::json!({
                    "truth_pixels": self.truth[b],
                    "recall": self.found[b] as f64 / self.truth[b].max(1) as f64,
                }),
            );
        }
        m.into()
    }
}

/// Recall of the ground truth split by what drew the damage ([`DamageSource`], artifacts by
/// their film-damage category), with the share of each kind's truth that is faint (changed by
/// less than the first [`CHANGE_BINS`] edge) and the recall of the rest: tells which kinds of
/// damage a detector misses, and whether it misses them where they are bold.
#[derive(Default)]
struct KindRecall {
    /// Per source: truth pixels, found ones, faint ones, found faint ones.
    counts: BTreeMap<DamageSource, [u64; 4]>,
}

impl KindRecall {
    fn add(&mut self, pred: &Mask, truth: &Mask, change: &[f32], source: &[DamageSource]) {
        for (((&t, &p), &d), &k) in truth.data().iter().zip(pred.data()).zip(change).zip(source) {
            if t {
                let e = self.counts.entry(k).or_default();
                e[0] += 1;
                e[1] += u64::from(p);
                e[2] += u64::from(d < CHANGE_BINS[0]);
                e[3] += u64::from(p && d < CHANGE_BINS[0]);
            }
        }
    }

    /// The counts by kind name (artifacts merged by their film-damage category).
    fn named(&self, bank: &ArtifactBank) -> KindTable {
        let mut kinds: BTreeMap<String, [u64; 4]> = BTreeMap::new();
        for (k, c) in &self.counts {
            let e = kinds.entry(k.name(Some(bank))).or_default();
            for (a, b) in e.iter_mut().zip(c) {
                *a += b;
            }
        }
        KindTable { kinds }
    }
}

/// [`KindRecall`]'s counts by kind name.
struct KindTable {
    /// Per kind name: truth pixels, found ones, faint ones, found faint ones.
    kinds: BTreeMap<String, [u64; 4]>,
}

impl KindTable {
    /// Kinds by their share of the truth, largest first.
    fn sorted(&self) -> Vec<(&String, &[u64; 4])> {
        let mut v: Vec<_> = self.kinds.iter().collect();
        v.sort_by(|a, b| b.1[0].cmp(&a.1[0]).then(a.0.cmp(b.0)));
        v
    }

    fn lines(&self) -> Vec<String> {
        let total = self.kinds.values().map(|e| e[0]).sum::<u64>().max(1) as f64;
        self.sorted()
            .into_iter()
            .map(|(name, e)| {
                format!(
                    "{name:<22} {:5.1}% of truth, {:3.0}% of it faint: R {:.3} (not faint: {:.3})",
                    100.0 * e[0] as f64 / total,
                    100.0 * e[2] as f64 / e[0].max(1) as f64,
                    e[1] as f64 / e[0].max(1) as f64,
                    (e[1] - e[3]) as f64 / (e[0] - e[2]).max(1) as f64
                )
            })
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> = self
            .kinds
            .iter()
            .map(|(name, e)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "truth_pixels": e[0],
                        "recall": e[1] as f64 / e[0].max(1) as f64,
                        "faint_share": e[2] as f64 / e[0].max(1) as f64,
                        "recall_not_faint": (e[1] - e[3]) as f64 / (e[0] - e[2]).max(1) as f64,
                    }),
                )
            })
            .collect();
        m.into()
    }
}

/// The film-damage triplets, by id.
const TRIPLETS: [&str; 3] = [
    "cinestill50d_half_1",
    "cinestill800t_half_1",
    "cinestill800t_half_5",
];

/// A film-damage triplet: the damaged scan, its mask resized to it and the manually restored
/// scan.
struct Triplet {
    id: &'static str,
    image: ImageF32,
    mask: Mask,
    restored: ImageF32,
}

/// A ceiling for the real triplets: the scores of thresholding the difference between each
/// damaged scan and its manually restored one ([`difference_levels`]) against the mask, at the
/// best threshold over all of them, and each at its own best threshold. Where the restorer's
/// changes and the mask disagree, no detector can score well.
fn real_ceiling(triplets: &[Triplet]) -> (Counts, Vec<(&'static str, Counts)>) {
    let mut sweep = Sweep::default();
    let mut each = Vec::new();
    for t in triplets {
        let levels = difference_levels(&t.image, &t.restored);
        let mut one = Sweep::default();
        one.add(&levels, &t.mask);
        each.push((t.id, one.best_f1().1));
        sweep.add(&levels, &t.mask);
    }
    (sweep.best_f1().1, each)
}

/// Loads a film-damage triplet: the damaged scan, its mask resized to it (bilinear, then
/// `> 127`) and the manually restored scan (which must have the damaged one's size).
fn load_triplet(dir: &Path, id: &'static str) -> anyhow::Result<Triplet> {
    let img = load_image(&dir.join(format!("input_{id}.jpg")))?.pixels;
    let tpath = dir.join(format!("target_{id}.jpg"));
    let restored = load_image(&tpath)?.pixels;
    if (restored.width(), restored.height()) != (img.width(), img.height()) {
        bail!(
            "{}: {}x{}, but its damaged scan is {}x{}",
            tpath.display(),
            restored.width(),
            restored.height(),
            img.width(),
            img.height()
        );
    }
    let mpath = dir.join(format!("{id}_mask.png"));
    let m = image::open(&mpath)
        .with_context(|| format!("reading {}", mpath.display()))?
        .to_luma8();
    let (w, h) = (img.width(), img.height());
    let m = if (m.width() as usize, m.height() as usize) != (w, h) {
        image::imageops::resize(
            &m,
            w as u32,
            h as u32,
            image::imageops::FilterType::Triangle,
        )
    } else {
        m
    };
    let mask = Mask::from_vec(w, h, m.as_raw().iter().map(|&v| v > 127).collect())
        .ok_or_else(|| anyhow::anyhow!("{}: bad mask size", mpath.display()))?;
    Ok(Triplet {
        id,
        image: img,
        mask,
        restored,
    })
}

/// A synthetic scan of about `mp` megapixels: photos tiled side by side with synthetic damage.
fn bench_image(source: &CropSource, bank: Option<&ArtifactBank>, mp: f64) -> ImageF32 {
    let w = ((mp * 1e6 * 1.5).sqrt() as usize).max(16);
    let h = ((mp * 1e6) as usize / w).max(16);
    let side = 256;
    let mut img = ImageF32::new(w, h, 3);
    let mut rng = StdRng::seed_from_u64(24);
    let mut k = 0u64;
    for y0 in (0..h).step_by(side) {
        for x0 in (0..w).step_by(side) {
            let Ok(clean) = source.crop(&mut rng, side) else {
                continue;
            };
            let (d, _) = synth_sample(&clean, bank, k);
            k += 1;
            let pw = side.min(w - x0);
            let ph = side.min(h - y0);
            img.paste(
                &d.crop(crate::imaging::Rect {
                    x: 0,
                    y: 0,
                    width: pw,
                    height: ph,
                }),
                x0,
                y0,
                None,
            );
        }
    }
    img
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (Linux); `None`
/// elsewhere. On a busy shared machine, CPU time divided by the threads estimates the wall time
/// the same work takes on idle cores.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // Clock ticks are 100 per second on Linux.
    Some((utime + stime) / 100.0)
}

/// Runs `eval-detect`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let registry = Registry::default();
    let mut dets: Vec<(String, Arc<dyn Detector>)> = Vec::new();
    let dir = a
        .weights_dir
        .clone()
        .unwrap_or_else(|| registry.weights_dir().to_owned());
    if a.detector == "all" || a.detector == "learned" {
        match crate::detect::learned::Learned::load(&dir, crate::detect::learned::MODEL_ID) {
            Ok(l) => dets.push(("learned".into(), Arc::new(l))),
            Err(e) if a.detector == "all" => eprintln!("note: learned detector skipped: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(dir) = &a.baseline_dir {
        let l = crate::detect::learned::Learned::load(dir, crate::detect::learned::MODEL_ID)?;
        dets.push(("baseline".into(), Arc::new(l)));
    }
    if a.detector == "all" || a.detector == "classical" {
        dets.push(("classical".into(), Arc::new(classical_from(&a.classical)?)));
    }
    if dets.is_empty() {
        bail!("no detector to score ('{}')", a.detector);
    }
    if a.update_manifest && !dets.iter().any(|(name, _)| name == "learned") {
        bail!("--update-manifest writes the learned detector's scores, and it was not scored");
    }
    if a.update_manifest && a.baseline_dir.is_some() {
        bail!("--update-manifest would write the baseline's scores too; score it without --baseline-dir");
    }
    let level = threshold_level(a.sensitivity);
    let photos_dir = a.data.join(&a.split);
    let source = CropSource::load_dirs(std::slice::from_ref(&photos_dir))
        .with_context(|| format!("reading {}", photos_dir.display()))?;
    // Artifacts chosen with another seed than training's (7): the held-out shapes differ too.
    let bank = ArtifactBank::load(&a.film_damage, 40, 200, 1234)
        .with_context(|| format!("reading artifacts in {}", a.film_damage.display()))?;
    let mut rng = StdRng::seed_from_u64(2024);
    let mut items = Vec::new();
    let mut changes = Vec::new();
    let mut sources = Vec::new();
    let mut ceiling = Ceiling::default();
    let mut label_stats = LabelStats::default();
    for i in 0..source.len() * a.crops {
        let clean = source.crop(&mut rng, a.crop)?;
        let seed = 0x5eed_0000 + i as u64;
        let (s, truth) = synth_sample_with_truth(&clean, Some(&bank), seed);
        label_stats = label_stats.merged(s.stats);
        ceiling.add(&s.image, &s.mask, &truth);
        changes.push(truth.change);
        sources.push(truth.source);
        items.push((s.image, s.mask));
    }
    let coverage: f64 =
        items.iter().map(|(_, m)| m.coverage()).sum::<f64>() / items.len().max(1) as f64;
    let frac = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!(
        "labels: ground truth = pixels changed by more than {VISIBLE_CHANGE} (max over channels) \
         = {:.2}% of pixels; defect footprint {:.2}% of pixels, {:.1}% of it changed by less \
         than 0.03; {:.1}% of the truth lies outside the footprint (blur); {:.2}% of pixels \
         faintly changed (clean in the scores)",
        100.0 * frac(label_stats.visible, label_stats.pixels),
        100.0 * frac(label_stats.footprint, label_stats.pixels),
        100.0 * frac(label_stats.footprint_below_003, label_stats.footprint),
        100.0 * frac(label_stats.visible_outside_footprint, label_stats.visible),
        100.0 * frac(label_stats.ignored, label_stats.pixels),
    );
    println!(
        "synthetic held-out damage: {} crops {}x{} of {} ({} photos), mean damage {:.2}% of \
         pixels; sensitivity {} (probability >= {:.3}); pixel-level scores, no dilation",
        items.len(),
        a.crop,
        a.crop,
        photos_dir.display(),
        source.len(),
        100.0 * coverage,
        a.sensitivity,
        f32::from(level) / 255.0
    );
    let (blind, aware) = (ceiling.blind(), ceiling.aware());
    println!(
        "ceiling: thresholding the true difference to the clean photo (no detector is given it), \
         3x3 mean, best threshold:"
    );
    println!("{}", line("difference to the clean photo", &blind));
    println!("{}", line("the same, knowing which have grain", &aware));
    let mut report = serde_json::Map::new();
    report.insert(
        "synthetic_ceiling".into(),
        serde_json::json!({
            "what": "scores of thresholding the difference between the damaged crop and its \
                     clean reference (which no detector is given), its 3x3 mean, max over \
                     channels, at the best threshold; 'grain_aware' also knows which crops have \
                     grain and thresholds the others exactly",
            "difference_3x3": counts_json(&blind),
            "grain_aware": counts_json(&aware),
        }),
    );
    let triplets = if a.synthetic_only {
        Vec::new()
    } else {
        let tdir = a.film_damage.join("triplets");
        let triplets = TRIPLETS
            .into_iter()
            .map(|id| load_triplet(&tdir, id))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (best, each) = real_ceiling(&triplets);
        let per: serde_json::Map<String, serde_json::Value> = each
            .iter()
            .map(|(id, c)| ((*id).into(), counts_json(c)))
            .collect();
        println!(
            "real ceiling: thresholding the difference to the manually restored scan (3x3 mean, \
             best threshold):"
        );
        println!("{}", line("difference to the restored scan", &best));
        report.insert(
            "real_ceiling".into(),
            serde_json::json!({
                "what": "scores of thresholding the difference between each damaged scan and \
                         its manually restored scan (which no detector is given), its 3x3 mean, \
                         max over channels, at the best threshold over all three",
                "difference_3x3": counts_json(&best),
                "each_at_its_best_threshold": serde_json::Value::Object(per),
            }),
        );
        triplets
    };
    // The same resamples for every detector, so that differences are paired.
    let bootstrap = Bootstrap::new(items.len(), a.resamples, 0xb007);
    // Sized by the first detector's tiles (every detector tiles the same scans).
    let mut real_bootstrap: Option<Bootstrap> = None;
    let mut resampled_f1: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut resampled_real_f1: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (name, det) in &dets {
        let start = Instant::now();
        let mut per_crop = Vec::with_capacity(items.len());
        let mut defects_per_crop = Vec::with_capacity(items.len());
        let mut sweep = Sweep::default();
        let mut dilated = Counts::default();
        let mut tolerant = Tolerant::default();
        let mut by_change = ChangeRecall::default();
        let mut by_kind = KindRecall::default();
        for (k, (img, m)) in items.iter().enumerate() {
            let p = probs(det.as_ref(), img)?;
            sweep.add(p.data(), m);
            let pred = p.threshold(a.sensitivity);
            per_crop.push(Counts::of(&pred, m));
            by_change.add(&pred, m, &changes[k]);
            by_kind.add(&pred, m, &changes[k], &sources[k]);
            tolerant = tolerant.merged(Tolerant::of(&pred, m, 1));
            if let Some(dir) = a.save_masks.as_ref().filter(|_| k < 8) {
                std::fs::create_dir_all(dir)?;
                let bd = crate::imaging::BitDepth::U8;
                crate::imaging::save_image(img, bd, &dir.join(format!("synth{k}.png")), None)?;
                crate::imaging::io::save_mask(m, &dir.join(format!("synth{k}_truth.png")), None)?;
                crate::imaging::save_image(
                    &p.to_image(),
                    bd,
                    &dir.join(format!("synth{k}_{name}.png")),
                    None,
                )?;
            }
            let proposal = p.mask(a.sensitivity, crate::detect::DEFAULT_DILATION);
            defects_per_crop.push(Defects::of(&proposal, m, crate::detect::DEFAULT_DILATION));
            dilated = dilated.merged(Counts::of(
                &proposal,
                &m.dilate(crate::detect::DEFAULT_DILATION),
            ));
        }
        let c = sweep.at(level);
        let (best_level, best) = sweep.best_f1();
        println!("{name} ({:.1} s):", start.elapsed().as_secs_f64());
        println!("{}", line("synthetic", &c));
        let f1s = bootstrap.f1s(&per_crop);
        let interval = percentile_interval(&f1s, 0.95);
        if a.resamples > 0 {
            println!(
                "  synthetic F1, 95% interval over {} bootstrap resamples of the {} crops: \
                 {:.3}-{:.3}",
                a.resamples,
                items.len(),
                interval.0,
                interval.1
            );
        }
        resampled_f1.insert(name.as_str(), f1s);
        println!("{}", line("synthetic, both masks dilated 2 px", &dilated));
        println!("{}", tol_line("synthetic, 1 px tolerance", &tolerant));
        let defects: Defects = defects_per_crop.iter().sum();
        println!("{}", defects_line("synthetic defects", &defects));
        let defect_f1s = bootstrap.pooled(&defects_per_crop, |d: Defects| d.f1());
        let defect_interval = percentile_interval(&defect_f1s, 0.95);
        if a.resamples > 0 {
            println!(
                "  synthetic defect F1, 95% interval over the same resamples: {:.3}-{:.3}",
                defect_interval.0, defect_interval.1
            );
        }
        println!(
            "{}  (at sensitivity {:.2})",
            line("synthetic, best threshold", &best),
            1.0 - f32::from(best_level) / 255.0
        );
        println!("  {}", by_change.line());
        println!(
            "  recall by kind (faint: changed by less than {}):",
            CHANGE_BINS[0]
        );
        let by_kind = by_kind.named(&bank);
        for l in by_kind.lines() {
            println!("    {l}");
        }
        let mut entry = serde_json::Map::new();
        entry.insert("synthetic".into(), counts_json(&c));
        if a.resamples > 0 {
            entry.insert(
                "synthetic_f1_interval_95".into(),
                serde_json::json!([interval.0, interval.1]),
            );
        }
        entry.insert("synthetic_recall_by_change".into(), by_change.json());
        entry.insert("synthetic_recall_by_kind".into(), by_kind.json());
        entry.insert("synthetic_dilated_2px".into(), counts_json(&dilated));
        entry.insert("synthetic_tolerant_1px".into(), tol_json(&tolerant));
        entry.insert("synthetic_defects".into(), defects_json(&defects));
        if a.resamples > 0 {
            entry.insert(
                "synthetic_defect_f1_interval_95".into(),
                serde_json::json!([defect_interval.0, defect_interval.1]),
            );
        }
        entry.insert(
            "synthetic_best".into(),
            serde_json::json!({"sensitivity": 1.0 - f32::from(best_level) / 255.0, "scores": counts_json(&best)}),
        );
        if !a.synthetic_only {
            let mut total = Counts::default();
            let mut total_tol = Tolerant::default();
            let mut total_defects = Defects::default();
            let mut total_sweep = Sweep::default();
            let mut tiles = Vec::new();
            let mut per = serde_json::Map::new();
            for Triplet {
                id,
                image: img,
                mask: m,
                ..
            } in &triplets
            {
                let p = probs(det.as_ref(), img)?;
                total_sweep.add(p.data(), m);
                let pred = p.threshold(a.sensitivity);
                let scan_tiles = Counts::tiled(&pred, m, REAL_TILE);
                let c: Counts = scan_tiles.iter().sum();
                tiles.extend(scan_tiles);
                total = total.merged(c);
                total_tol = total_tol.merged(Tolerant::of(&pred, m, 1));
                let proposal = p.mask(a.sensitivity, crate::detect::DEFAULT_DILATION);
                total_defects = total_defects.merged(Defects::of(
                    &proposal,
                    m,
                    crate::detect::DEFAULT_DILATION,
                ));
                println!(
                    "{}  (truth {:.2}% of pixels, flagged {:.2}%)",
                    line(&format!("real {id}"), &c),
                    100.0 * m.coverage(),
                    100.0 * pred.coverage()
                );
                per.insert((*id).into(), counts_json(&c));
                if let Some(dir) = &a.save_masks {
                    std::fs::create_dir_all(dir)?;
                    crate::imaging::io::save_mask(
                        &proposal,
                        &dir.join(format!("{name}_{id}.png")),
                        None,
                    )?;
                }
            }
            let (bl, bc) = total_sweep.best_f1();
            println!("{}", line("real, all three", &total));
            let f1s = real_bootstrap
                .get_or_insert_with(|| Bootstrap::new(tiles.len(), a.resamples, 0x7ea1))
                .f1s(&tiles);
            let interval = percentile_interval(&f1s, 0.95);
            if a.resamples > 0 {
                println!(
                    "  real F1, 95% interval over {} bootstrap resamples of the {} tiles of \
                     {REAL_TILE} px: {:.3}-{:.3}",
                    a.resamples,
                    tiles.len(),
                    interval.0,
                    interval.1
                );
                entry.insert(
                    "real_triplets_f1_interval_95".into(),
                    serde_json::json!([interval.0, interval.1]),
                );
            }
            resampled_real_f1.insert(name.as_str(), f1s);
            println!("{}", tol_line("real, 1 px tolerance", &total_tol));
            println!("{}", defects_line("real defects", &total_defects));
            println!(
                "{}  (at sensitivity {:.2})",
                line("real, best threshold", &bc),
                1.0 - f32::from(bl) / 255.0
            );
            entry.insert("real_triplets".into(), counts_json(&total));
            entry.insert("real_triplets_tolerant_1px".into(), tol_json(&total_tol));
            entry.insert("real_triplets_defects".into(), defects_json(&total_defects));
            entry.insert("real_triplets_each".into(), serde_json::Value::Object(per));
            entry.insert(
                "real_triplets_best".into(),
                serde_json::json!({"sensitivity": 1.0 - f32::from(bl) / 255.0, "scores": counts_json(&bc)}),
            );
            // False positives on the untouched photos of the split (val for the reported numbers).
            let val_dir = photos_dir.clone();
            let mut fp = Counts::default();
            let mut fp_dil = Counts::default();
            let mut clean_flags = 0u64;
            let mut n = 0;
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&val_dir)
                .with_context(|| format!("reading {}", val_dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| {
                        e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("png")
                    })
                })
                .collect();
            entries.sort();
            for path in &entries {
                let img = load_image(path)?.pixels;
                let p = probs(det.as_ref(), &img)?;
                let none = Mask::new(img.width(), img.height());
                let proposal = p.mask(a.sensitivity, crate::detect::DEFAULT_DILATION);
                fp = fp.merged(Counts::of(&p.threshold(a.sensitivity), &none));
                fp_dil = fp_dil.merged(Counts::of(&proposal, &none));
                clean_flags += Defects::of(&proposal, &none, 0).false_alarms();
                n += 1;
            }
            println!(
                "  clean photos ({n} untouched of {}): {:.4}% of pixels flagged ({:.4}% after the \
                 default 2 px dilation)",
                val_dir.display(),
                100.0 * fp.false_positive_rate(),
                100.0 * fp_dil.false_positive_rate()
            );
            let clean_mp = (fp.fp + fp.tn) as f64 / 1e6;
            println!(
                "  clean photos: {clean_flags} false alarms (regions of the default proposal), \
                 {:.2} per photo, {:.1} per megapixel",
                clean_flags as f64 / n.max(1) as f64,
                clean_flags as f64 / clean_mp.max(1e-9)
            );
            entry.insert(
                "clean_false_alarms_per_megapixel".into(),
                serde_json::json!(clean_flags as f64 / clean_mp.max(1e-9)),
            );
            entry.insert(
                "clean_false_positive_fraction".into(),
                serde_json::json!(fp.false_positive_rate()),
            );
            entry.insert(
                "clean_false_positive_fraction_dilated_2px".into(),
                serde_json::json!(fp_dil.false_positive_rate()),
            );
        }
        if let Some(mp) = a.bench_mp {
            let img = bench_image(&source, Some(&bank), mp);
            let cpu0 = cpu_seconds();
            let (_, secs) = run_detection(
                det.as_ref(),
                &img,
                TileOptions::default().tile,
                Some(a.bench_threads),
                true,
            )?;
            let cpu = cpu0.and_then(|c0| cpu_seconds().map(|c1| c1 - c0));
            println!(
                "  timing: {}x{} ({:.1} MP) in {:.2} s wall on {} threads; {} CPU s",
                img.width(),
                img.height(),
                (img.width() * img.height()) as f64 / 1e6,
                secs,
                a.bench_threads,
                cpu.map_or("?".into(), |c| format!("{c:.2}")),
            );
            entry.insert(
                "timing".into(),
                serde_json::json!({"megapixels": (img.width() * img.height()) as f64 / 1e6, "wall_seconds": secs, "cpu_seconds": cpu, "threads": a.bench_threads}),
            );
        }
        report.insert(name.clone(), serde_json::Value::Object(entry));
    }
    let mut paired = serde_json::Map::new();
    for (what, f1s) in [("synthetic", &resampled_f1), ("real", &resampled_real_f1)] {
        if let (Some(l), Some(b), true) = (f1s.get("learned"), f1s.get("baseline"), a.resamples > 0)
        {
            let p = PairedF1::of(l, b);
            println!("{}", p.line(what));
            paired.insert(what.into(), p.json(what));
        }
    }
    if !paired.is_empty() {
        report.insert(
            "learned_minus_baseline".into(),
            serde_json::Value::Object(paired),
        );
    }
    let settings = serde_json::json!({
        "sensitivity": a.sensitivity,
        "synthetic": format!("{} crops of {} px from {} (seeded 2024), damage by train::detect::synth_sample_full with artifacts chosen by seed 1234 (40 per category); mean damage {:.2}% of pixels", items.len(), a.crop, photos_dir.display(), 100.0 * coverage),
        "synthetic_truth": format!("pixels the composited damage changed by more than {VISIBLE_CHANGE} (max over channels, after tone, before grain); faint changes count as clean; footprint {:.2}% of pixels, {:.1}% of it changed by less than 0.03", 100.0 * frac(label_stats.footprint, label_stats.pixels), 100.0 * frac(label_stats.footprint_below_003, label_stats.footprint)),
        "defects": format!("defect level, on the default proposal (sensitivity, then {d} px dilation): damage regions that touch once grown by {d} px are one defect, found when the proposal covers at least {} of its damage pixels; each 8-connected region of the proposal is a flag, right when it covers a damage pixel, else a false alarm", Defects::COVER, d = crate::detect::DEFAULT_DILATION),
        "tolerant_1px": "a flagged pixel is right when damage lies within 1 px of it; a damage pixel is found when a flagged pixel lies within 1 px of it",
        "real": "film-damage triplets (3 scans), masks resized to the scans (bilinear, > 127)",
        "clean": format!("{} untouched", photos_dir.display()),
    });
    report.insert("settings".into(), settings);
    let report = serde_json::Value::Object(report);
    if let Some(p) = &a.json {
        crate::jsonfile::write(p, &report)?;
    }
    if a.update_manifest {
        let path = dir.join(format!("{}.json", crate::detect::learned::MODEL_ID));
        let mut m: serde_json::Value = crate::jsonfile::read(&path)?;
        if let Some(obj) = m.as_object_mut() {
            obj.insert("metrics".into(), report.clone());
        }
        crate::jsonfile::write(&path, &m)?;
        println!("metrics written into {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::detect::tests::photo;

    #[test]
    fn the_paired_difference_is_the_mean_and_spread_of_the_resampled_differences() {
        let learned: Vec<f64> = (0..100).map(|i| 0.5 + f64::from(i) * 1e-3).collect();
        let baseline: Vec<f64> = (0..100).map(|i| 0.52 + f64::from(i) * 1e-4).collect();
        let p = PairedF1::of(&learned, &baseline);
        // Differences run from -0.02 to +0.0691 in steps of 0.0009; 77 of them are positive.
        assert!((p.mean - (0.5495 - 0.52495)).abs() < 1e-9, "{}", p.mean);
        assert!((p.ahead - 0.77).abs() < 1e-12, "{}", p.ahead);
        assert!(
            p.interval.0 < 0.0 && p.interval.1 > 0.06,
            "{:?}",
            p.interval
        );
        assert_eq!(p.resamples, 100);
        assert!(p
            .line("synthetic")
            .contains("learned ahead in 77% of 100 resamples"));
        let same = PairedF1::of(&learned, &learned);
        assert_eq!(
            (same.mean, same.interval, same.ahead),
            (0.0, (0.0, 0.0), 0.0)
        );
    }

    #[test]
    fn defect_size_labels_name_the_bins_of_the_counts() {
        let labels = defect_size_labels();
        assert_eq!(labels, ["<= 10 px", "11-100 px", "> 100 px"]);
        assert_eq!(labels.len(), Defects::default().defects.len());
        let truth = Mask::from_fn(20, 20, |x, y| y == 3 && x < 15);
        let json = defects_json(&Defects::of(&truth, &truth, 2));
        assert_eq!(json["found"], 1);
        assert_eq!(json["recall_by_size"]["11-100 px"]["defects"], 1);
        assert_eq!(json["false_alarms"], 0);
    }

    #[test]
    fn the_real_ceiling_scores_the_restorers_changes_against_the_mask() {
        let restored = photo(40, 30);
        let mask = Mask::from_vec(
            40,
            30,
            (0..1200).map(|i| i % 40 >= 10 && i % 40 < 14).collect(),
        )
        .unwrap_or_else(|| panic!("mask size"));
        // Damage exactly where the mask is: the ceiling finds it all and nothing else.
        let mut image = restored.clone();
        for (px, &m) in image.data_mut().chunks_exact_mut(3).zip(mask.data()) {
            if m {
                px.iter_mut().for_each(|v| *v = (*v + 0.3).min(1.0));
            }
        }
        let exact = Triplet {
            id: "exact",
            image,
            mask: mask.clone(),
            restored: restored.clone(),
        };
        // A restorer who changed nothing: the mask cannot be found.
        let untouched = Triplet {
            id: "untouched",
            image: restored.clone(),
            mask,
            restored,
        };
        let (all, each) = real_ceiling(&[exact, untouched]);
        assert_eq!(each[0].0, "exact");
        let e = each[0].1;
        assert_eq!((e.fp, e.fn_, e.tp), (0, 0, 120), "{e:?}");
        assert_eq!(each[1].1.tp, 0);
        assert_eq!((all.tp, all.fn_), (120, 120), "{all:?}");
    }

    #[test]
    fn a_triplet_whose_restored_scan_has_another_size_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let save = |name: &str, w: u32, h: u32| {
            image::RgbImage::from_pixel(w, h, image::Rgb([90, 100, 110]))
                .save(dir.path().join(name))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        save("input_t.jpg", 16, 12);
        save("t_mask.png", 16, 12);
        save("target_t.jpg", 16, 10);
        let err = load_triplet(dir.path(), "t").err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("16x10")),
            "{err:?}"
        );
        save("target_t.jpg", 16, 12);
        let t = load_triplet(dir.path(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.restored.width(), t.mask.count()), (16, 0));
    }

    #[test]
    fn the_ceiling_is_exact_without_grain_and_below_it_with_grain() {
        let clean = photo(64, 64);
        let (mut plain, mut grainy) = (Ceiling::default(), Ceiling::default());
        for seed in 0..40 {
            let (s, t) = synth_sample_with_truth(&clean, None, seed);
            let c = if t.grain { &mut grainy } else { &mut plain };
            c.add(&s.image, &s.mask, &t);
        }
        // Some crops of each kind, with damage.
        assert!(plain.exact.tp > 0 && grainy.grainy.at(1).tp > 0);
        // Without grain the difference is what the labels threshold: exact.
        let a = plain.aware();
        assert_eq!((a.fp, a.fn_), (0, 0));
        assert!(a.tp > 0);
        // With grain even the clean photo does not give the labels back, but it finds most.
        let (b, g) = (grainy.blind(), grainy.aware());
        assert!(b.f1() < 1.0 && b.f1() > 0.5, "{}", b.f1());
        assert!((g.f1() - b.f1()).abs() < 1e-12, "all crops are grainy");
    }
}
