//! `kintsugi bench`: model load time, restorer time against image size at a fixed fraction of
//! scattered damage, and engine latency, all measured in one run.
//!
//! The figure that matters is the ratio between sizes: with the region pipeline, cost follows
//! the damaged area, so a 24 MP scan with 1% damage should cost about 24x a 1 MP one (the
//! damage is 24x larger), not more. The scaling table prints that ratio next to the damage
//! ratio; their quotient is 1.0 when cost grows exactly with the damage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::progress::run_job;
use crate::engine::{Engine, EngineConfig, EventKind, JobKind};
use crate::imaging::mask_synth::scattered_damage;
use crate::imaging::ImageF32;
use crate::models::registry::{Family, Registry};
use crate::restore::Params;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Restorers to time, comma-separated.
    #[arg(
        long,
        default_value = "telea,biharmonic,patchmatch",
        value_delimiter = ','
    )]
    pub models: Vec<String>,
    /// Image sizes in megapixels, comma-separated; the first is the baseline.
    #[arg(long, default_value = "1,24", value_delimiter = ',')]
    pub sizes: Vec<f64>,
    /// Fraction of the image covered by scattered small damage.
    #[arg(long, default_value_t = 0.01)]
    pub coverage: f64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Skip the engine latency measurement (submit to first preview, cancel to stop).
    #[arg(long)]
    pub no_latency: bool,
    /// Skip timing the loading of the learned models.
    #[arg(long)]
    pub no_load: bool,
}

/// A synthetic 3:2 RGB "scan": smooth gradients, a few frequencies and fine grain.
pub fn synthetic_scan(megapixels: f64) -> ImageF32 {
    let h = ((megapixels * 1e6 / 1.5).sqrt()).round().max(8.0) as usize;
    let w = (h as f64 * 1.5).round() as usize;
    ImageF32::from_fn(w, h, 3, |x, y, c| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let grain = ((x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ (c * 83_492_791))
            % 1000) as f32
            / 1000.0;
        (0.35
            + 0.3 * fx
            + 0.15 * (fy * 17.0 + c as f32).sin()
            + 0.1 * ((fx + fy) * 90.0).sin()
            + 0.05 * grain)
            .clamp(0.0, 1.0)
    })
}

/// Runs `bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.sizes.is_empty() || args.models.is_empty() {
        bail!("give at least one size and one model");
    }
    let mut config = EngineConfig::all_cores();
    if let Some(t) = args.threads {
        config.threads = t;
    }
    let threads = config.threads;
    for m in &args.models {
        config.registry.restorer(m)?;
    }
    if !args.no_load {
        model_load_times(&config.registry);
        println!();
    }
    let engine = Engine::start(config)?;
    println!(
        "restorer time vs image size, {:.1}% scattered damage, {threads} thread(s)",
        args.coverage * 100.0
    );
    println!(
        "{:<11} {:>7} {:>12} {:>10} {:>14} {:>13}",
        "model", "MP", "damage px", "ms", "ms/MP damage", "x baseline"
    );
    let scans: Vec<_> = args
        .sizes
        .iter()
        .enumerate()
        .map(|(i, &mp)| {
            let img = synthetic_scan(mp);
            let mask = scattered_damage(img.width(), img.height(), args.coverage, 42 + i as u64);
            (mp, Arc::new(img), Arc::new(mask))
        })
        .collect();
    // (model, time of the first size, time of the last size) for the scaling table, and the
    // full PatchMatch time on the last scan for the latency ratios.
    let mut scaling = Vec::new();
    let mut patchmatch_last = None;
    for model in &args.models {
        let mut baseline = None;
        let mut last = 0.0;
        for (mp, img, mask) in &scans {
            let job = JobKind::Restore {
                image: img.clone(),
                mask: mask.clone(),
                model: model.clone(),
                params: Params::new(),
            };
            let done = run_job(&engine, job, model, true)?;
            let ms = done.elapsed.as_secs_f64() * 1000.0;
            let damage = mask.count();
            let per_mp = ms / (damage as f64 / 1e6);
            let base = *baseline.get_or_insert(ms);
            last = ms;
            println!(
                "{:<11} {:>7.1} {:>12} {:>10.1} {:>14.1} {:>13.2}",
                model,
                mp,
                damage,
                ms,
                per_mp,
                ms / base
            );
        }
        if model == "patchmatch" {
            patchmatch_last = Some(last);
        }
        scaling.push((model.clone(), baseline.unwrap_or(0.0), last));
    }
    if let (Some(first), Some(last)) = (scans.first(), scans.last()) {
        if scans.len() > 1 {
            let damage_ratio = last.2.count() as f64 / first.2.count().max(1) as f64;
            println!();
            println!(
                "scaling {} MP vs {} MP at {:.1}% damage (damage {damage_ratio:.1}x; \
                 time/damage 1.00 = cost follows the damage)",
                last.0,
                first.0,
                args.coverage * 100.0
            );
            println!(
                "{:<11} {:>10} {:>10} {:>12} {:>12}",
                "model", "ms small", "ms large", "time ratio", "time/damage"
            );
            for (model, small, large) in &scaling {
                let ratio = large / small.max(1e-9);
                println!(
                    "{:<11} {:>10.1} {:>10.1} {:>11.2}x {:>12.2}",
                    model,
                    small,
                    large,
                    ratio,
                    ratio / damage_ratio
                );
            }
        }
    }
    if !args.no_latency {
        if let Some((mp, img, mask)) = scans.last() {
            println!();
            println!("engine latency on the {mp} MP scan (patchmatch), median of 5:");
            let (first, cancel) = latency(&engine, img, mask)?;
            let (first_ms, cancel_ms) = (first.as_secs_f64() * 1e3, cancel.as_secs_f64() * 1e3);
            // Ratios against the full PatchMatch run on the same scan, timed above.
            let of_run = |ms: f64| match patchmatch_last {
                Some(run) if run > 0.0 => {
                    format!(" ({:.2}% of the {:.0} ms run)", ms / run * 100.0, run)
                }
                _ => String::new(),
            };
            println!(
                "  submit to first preview: {first_ms:.1} ms{}",
                of_run(first_ms)
            );
            println!(
                "  cancel to Cancelled event: {cancel_ms:.1} ms{}",
                of_run(cancel_ms)
            );
        }
    }
    Ok(())
}

/// Prints how long each learned model with weights present takes to load (median of 3 loads
/// through the registry, as the engine loads it), or why it was skipped.
fn model_load_times(registry: &Registry) {
    println!(
        "model load time (median of 3, weights from {}):",
        registry.weights_dir().display()
    );
    println!("{:<14} {:>10} {:>12}  note", "model", "ms", "weights MB");
    for m in registry.list() {
        if m.family == Family::Classical {
            continue;
        }
        let weights = registry.weights_dir().join(format!("{}.safetensors", m.id));
        let Ok(meta) = std::fs::metadata(&weights) else {
            println!(
                "{:<14} {:>10} {:>12}  skipped: no weights file",
                m.id, "-", "-"
            );
            continue;
        };
        let mb = meta.len() as f64 / 1e6;
        let mut times = Vec::new();
        let mut failure = None;
        for _ in 0..3 {
            let t0 = Instant::now();
            match registry.restorer(m.id) {
                Ok(_) => times.push(t0.elapsed()),
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        match failure {
            Some(why) => println!("{:<14} {:>10} {:>12.2}  unavailable: {why}", m.id, "-", mb),
            None => {
                times.sort();
                let ms = times[times.len() / 2].as_secs_f64() * 1e3;
                println!("{:<14} {:>10.1} {:>12.2}  loaded", m.id, ms, mb);
            }
        }
    }
}

/// Median time from submitting a PatchMatch job to its first preview, and from cancelling a
/// running one (200 ms in) to its `Cancelled` event.
fn latency(
    engine: &Engine,
    img: &Arc<ImageF32>,
    mask: &Arc<crate::imaging::Mask>,
) -> anyhow::Result<(Duration, Duration)> {
    let job = || JobKind::Restore {
        image: img.clone(),
        mask: mask.clone(),
        model: "patchmatch".into(),
        params: Params::new(),
    };
    let recv = || {
        engine
            .events()
            .recv_timeout(Duration::from_secs(600))
            .map_err(|_| anyhow!("the worker stopped answering"))
    };
    let (mut firsts, mut cancels) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t0 = Instant::now();
        let h = engine.submit(job())?;
        let mut cancelled_at = None;
        loop {
            let ev = recv()?;
            if ev.job != h.id {
                continue;
            }
            match ev.kind {
                EventKind::Preview { .. } if cancelled_at.is_none() => {
                    firsts.push(t0.elapsed());
                    // Let it run a little, then cancel.
                    while t0.elapsed() < Duration::from_millis(200) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    cancelled_at = Some(Instant::now());
                    engine.cancel(h.id);
                }
                EventKind::Cancelled => {
                    if let Some(t) = cancelled_at {
                        cancels.push(t.elapsed());
                    }
                    break;
                }
                k if k.is_terminal() => break,
                _ => {}
            }
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    Ok((median(firsts), median(cancels)))
}
