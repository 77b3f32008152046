//! Held-out evaluation of a denoising agent against fixed filters and tuned classical
//! denoisers, on the same noisy images.

use rayon::prelude::*;

use super::agent::{action_share, Agent, DenoiseMetrics, DenoiseRow};
use super::env::{filter_frame, psnr, Action, Frame};
use super::net::RlResult;

/// Gaussian blur with `sigma` (radius `ceil(3 sigma)`, clamped borders), separable.
pub fn gaussian_blur(img: &Frame, sigma: f32) -> Frame {
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|d| (-((d * d) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / s).collect();
    let (w, h) = (img.w, img.h);
    let mut tmp = img.clone();
    let mut out = img.clone();
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (i, d) in (-r..=r).enumerate() {
                    acc += k[i] * img.at(c, x as isize + d, y as isize);
                }
                tmp.data[c * w * h + y * w + x] = acc;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (i, d) in (-r..=r).enumerate() {
                    acc += k[i] * tmp.at(c, x as isize, y as isize + d);
                }
                out.data[c * w * h + y * w + x] = acc;
            }
        }
    }
    out
}

/// Bilateral filter: spatial `sigma_s` (radius `ceil(2 sigma_s)`), range `sigma_r` on the RGB
/// distance (values in `[0, 1]`).
pub fn bilateral(img: &Frame, sigma_s: f32, sigma_r: f32) -> Frame {
    let r = (2.0 * sigma_s).ceil().max(1.0) as isize;
    let (w, h) = (img.w, img.h);
    let plane = w * h;
    let inv_s = 1.0 / (2.0 * sigma_s * sigma_s);
    let inv_r = 1.0 / (2.0 * sigma_r * sigma_r);
    let mut out = img.clone();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let centre = [img.at(0, x, y), img.at(1, x, y), img.at(2, x, y)];
            let mut acc = [0.0f32; 3];
            let mut ws = 0.0f32;
            for dy in -r..=r {
                for dx in -r..=r {
                    let q = [
                        img.at(0, x + dx, y + dy),
                        img.at(1, x + dx, y + dy),
                        img.at(2, x + dx, y + dy),
                    ];
                    let d2: f32 = (0..3).map(|c| (q[c] - centre[c]).powi(2)).sum();
                    let wt = (-((dx * dx + dy * dy) as f32) * inv_s - d2 * inv_r).exp();
                    for c in 0..3 {
                        acc[c] += wt * q[c];
                    }
                    ws += wt;
                }
            }
            for (c, a) in acc.iter().enumerate() {
                out.data[c * plane + y as usize * w + x as usize] = a / ws.max(1e-12);
            }
        }
    }
    out
}

fn clamped_psnr(out: &Frame, target: &Frame) -> f64 {
    let mut o = out.clone();
    for v in o.data.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
    psnr(o.mse(target, None))
}

/// A named denoiser of the classical grid.
type Denoiser = (String, Box<dyn Fn(&Frame) -> Frame + Sync>);

/// The classical denoisers tried per sigma: `(name, filter)`.
fn classical_grid() -> Vec<Denoiser> {
    let mut out: Vec<Denoiser> = Vec::new();
    for s in [0.5f32, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5] {
        out.push((
            format!("gaussian sigma {s}"),
            Box::new(move |f| gaussian_blur(f, s)),
        ));
    }
    for ss in [1.0f32, 2.0, 3.0] {
        for sr in [0.05f32, 0.1, 0.15, 0.2, 0.3, 0.5] {
            out.push((
                format!("bilateral sigma_s {ss} sigma_r {sr}"),
                Box::new(move |f| bilateral(f, ss, sr)),
            ));
        }
    }
    out
}

/// Evaluates `agent` on `clean` images at each noise level of `sigmas` (8-bit units). Noise is
/// per-channel Gaussian, seeded per image and sigma; every output is clipped to `[0, 1]`
/// before its PSNR; PSNRs are averaged over images. The fixed-filter baseline is the best
/// (action, repetitions 1..=steps) pair of the agent's set; the classical baseline is the best
/// Gaussian or bilateral setting of a grid. Both are tuned per sigma on these same images, so
/// they are optimistic. `progress(done, total)` is called after each image.
pub fn eval_denoise(
    agent: &Agent,
    clean: &[Frame],
    sigmas: &[f64],
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> RlResult<DenoiseMetrics> {
    let grid = classical_grid();
    let steps = agent.steps();
    let total = clean.len() * sigmas.len();
    let mut done = 0;
    let mut rows = Vec::new();
    // Per (action, repetitions): mean PSNR per sigma.
    let mut fixed_per_sigma = vec![vec![Vec::new(); steps]; agent.set.len()];
    for &sigma in sigmas {
        let mut noisy_sum = 0.0;
        let mut agent_sum = 0.0;
        let mut fixed = vec![vec![0.0f64; steps]; agent.set.len()];
        let mut classical = vec![0.0f64; grid.len()];
        let mut counts = vec![0u64; agent.set.len()];
        let mut zones = super::stats::ActionStats::new(&agent.set, &super::stats::TEXTURE_ZONES);
        let mut per_step = super::stats::ActionStats::per_step(&agent.set, steps);
        for (i, target) in clean.iter().enumerate() {
            let noisy = crate::train::rl::add_noise(
                target,
                sigma,
                crate::train::mix(seed, (i as u64) << 8 | sigma as u64),
            );
            noisy_sum += clamped_psnr(&noisy, target);
            let run = agent.run(&noisy, None, &mut |_, _| true)?;
            agent_sum += clamped_psnr(&run.image, target);
            for (c, n) in counts
                .iter_mut()
                .zip(action_share(&agent.set, &run.maps, None))
            {
                *c += n;
            }
            zones.add(&run.maps, &super::stats::texture_zones(target));
            per_step.add_steps(&run.maps, None);
            let per_action: Vec<Vec<f64>> = agent
                .set
                .par_iter()
                .map(|&a| {
                    let mut f = noisy.clone();
                    (0..steps)
                        .map(|_| {
                            f = filter_frame(&f, a);
                            clamped_psnr(&f, target)
                        })
                        .collect()
                })
                .collect();
            for (acc, v) in fixed.iter_mut().zip(per_action) {
                for (a, b) in acc.iter_mut().zip(v) {
                    *a += b;
                }
            }
            let cl: Vec<f64> = grid
                .par_iter()
                .map(|(_, f)| clamped_psnr(&f(&noisy), target))
                .collect();
            for (a, b) in classical.iter_mut().zip(cl) {
                *a += b;
            }
            done += 1;
            progress(done, total);
        }
        let n = clean.len().max(1) as f64;
        for (acc, reps) in fixed_per_sigma.iter_mut().zip(&fixed) {
            for (a, v) in acc.iter_mut().zip(reps) {
                a.push(v / n);
            }
        }
        let mut best_fixed = (String::new(), f64::NEG_INFINITY);
        for (a, reps) in agent.set.iter().zip(&fixed) {
            for (k, v) in reps.iter().enumerate() {
                if v / n > best_fixed.1 {
                    best_fixed = (format!("{} x{}", a.name(), k + 1), v / n);
                }
            }
        }
        let mut best_classical = (String::new(), f64::NEG_INFINITY);
        for ((name, _), v) in grid.iter().zip(&classical) {
            if v / n > best_classical.1 {
                best_classical = (name.clone(), v / n);
            }
        }
        let all: u64 = counts.iter().sum::<u64>().max(1);
        rows.push(DenoiseRow {
            sigma,
            noisy_psnr_db: noisy_sum / n,
            agent_psnr_db: agent_sum / n,
            best_fixed,
            classical: best_classical,
            action_share: agent
                .set
                .iter()
                .zip(&counts)
                .map(|(a, &c)| (a.name().to_owned(), c as f64 / all as f64))
                .collect(),
            zones: zones.shares(),
            per_step: per_step.shares(),
        });
    }
    let mut blind: Option<(String, Vec<f64>)> = None;
    let mut blind_mean = f64::NEG_INFINITY;
    for (a, reps) in agent.set.iter().zip(&fixed_per_sigma) {
        for (k, v) in reps.iter().enumerate() {
            let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
            if mean > blind_mean {
                blind_mean = mean;
                blind = Some((format!("{} x{}", a.name(), k + 1), v.clone()));
            }
        }
    }
    Ok(DenoiseMetrics {
        protocol: String::new(),
        rows,
        blind_fixed: blind,
    })
}

/// Names of the actions, for reports.
pub fn action_names(set: &[Action]) -> Vec<&'static str> {
    set.iter().map(|a| a.name()).collect()
}

/// Held-out refinement quality: hole-PSNR and SSIM of the starting fill and of the agent's
/// result on the same holes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RefineMetrics {
    /// What was measured and how.
    pub protocol: String,
    /// Images.
    pub images: usize,
    /// The starting fill (registry id).
    #[serde(default)]
    pub start: String,
    /// Mean hole-PSNR of the starting fill (dB).
    #[serde(alias = "telea_hole_psnr_db")]
    pub start_hole_psnr_db: f64,
    /// Mean hole-PSNR after the agent (dB).
    pub agent_hole_psnr_db: f64,
    /// Mean SSIM of the whole crop with the starting fill (as `kintsugi eval` measures it).
    #[serde(default)]
    pub start_ssim: f64,
    /// Mean SSIM of the whole crop after the agent.
    #[serde(default)]
    pub agent_ssim: f64,
    /// Images on which the agent raised the hole-PSNR.
    pub improved: usize,
    /// The best single action of the set applied 1..=steps times to the hole pixels, with its
    /// mean hole-PSNR (dB): the agent has to beat this to be worth its network.
    #[serde(default)]
    pub best_fixed: Option<(String, f64)>,
    /// Fraction of hole pixel-steps per action.
    pub action_share: Vec<(String, f64)>,
    /// Action shares per zone: hole seam, hole interior, outside.
    #[serde(default)]
    pub zones: Vec<super::stats::ZoneShare>,
    /// Action shares of the hole pixels per step.
    #[serde(default)]
    pub per_step: Vec<super::stats::ZoneShare>,
}

/// One held-out refinement case.
#[derive(Clone, Debug)]
pub struct RefineCase {
    /// The clean crop.
    pub target: Frame,
    /// The starting fill.
    pub start: Frame,
    /// The holes (row-major).
    pub hole: Vec<bool>,
}

/// Seeded cases on `clean`: `holes` per crop (scattered damage at exactly `coverage` when
/// given, as in the shipped `rl-refine`'s protocol), filled by `start`. Crops whose mask comes
/// out empty are skipped.
pub fn refine_cases(
    clean: &[Frame],
    holes: crate::train::rl::HoleKind,
    coverage: Option<f64>,
    start: &crate::train::rl::StartFill,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> RlResult<Vec<RefineCase>> {
    let mut out = Vec::with_capacity(clean.len());
    for (i, target) in clean.iter().enumerate() {
        let s = crate::train::mix(seed, i as u64);
        let hole = match (holes, coverage) {
            (crate::train::rl::HoleKind::Scattered, Some(c)) => {
                crate::imaging::mask_synth::scattered_damage(target.w, target.h, c, s)
                    .data()
                    .to_vec()
            }
            (kind, _) => kind.mask(target.w, target.h, s),
        };
        progress(i + 1, clean.len());
        if !hole.iter().any(|&h| h) {
            continue;
        }
        let fill = start
            .fill(target, &hole)
            .map_err(|e| super::net::RlError::Invalid(e.to_string()))?;
        out.push(RefineCase {
            target: target.clone(),
            start: fill,
            hole,
        });
    }
    Ok(out)
}

fn clipped(f: &Frame) -> Frame {
    let mut g = f.clone();
    for v in g.data.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
    g
}

/// Evaluates a refine `agent` on `cases` (fill `start_name`): hole-PSNR and whole-crop SSIM
/// of the start and of the agent's greedy episode, the best fixed action, and the action
/// statistics per zone.
pub fn eval_refine_cases(
    agent: &Agent,
    cases: &[RefineCase],
    start_name: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> RlResult<RefineMetrics> {
    let mut before = 0.0;
    let mut after = 0.0;
    let mut ssim_before = 0.0;
    let mut ssim_after = 0.0;
    let mut improved = 0;
    let mut counts = vec![0u64; agent.set.len()];
    let mut zones = super::stats::ActionStats::new(&agent.set, &super::stats::REFINE_ZONES);
    let mut per_step = super::stats::ActionStats::per_step(&agent.set, agent.steps());
    let steps = agent.steps();
    let mut fixed = vec![vec![0.0f64; steps]; agent.set.len()];
    for (i, case) in cases.iter().enumerate() {
        let (target, start, hole) = (&case.target, &case.start, &case.hole);
        let run = agent.run(start, Some(hole), &mut |_, _| true)?;
        let b = psnr(clipped(start).mse(target, Some(hole)));
        let out = clipped(&run.image);
        let a = psnr(out.mse(target, Some(hole)));
        let t_img = target.to_image();
        ssim_before += crate::imaging::metrics::ssim(&clipped(start).to_image(), &t_img);
        ssim_after += crate::imaging::metrics::ssim(&out.to_image(), &t_img);
        let known: Vec<bool> = hole.iter().map(|&h| !h).collect();
        let per_action: Vec<Vec<f64>> = agent
            .set
            .par_iter()
            .map(|&act| {
                let mut f = start.clone();
                let choice = vec![0u8; f.w * f.h];
                (0..steps)
                    .map(|_| {
                        f = super::env::step_frame(&f, &[act], &choice, Some(&known), Some(hole));
                        psnr(clipped(&f).mse(target, Some(hole)))
                    })
                    .collect()
            })
            .collect();
        for (acc, v) in fixed.iter_mut().zip(per_action) {
            for (x, y) in acc.iter_mut().zip(v) {
                *x += y;
            }
        }
        before += b;
        after += a;
        if a > b {
            improved += 1;
        }
        for (c, n) in counts
            .iter_mut()
            .zip(action_share(&agent.set, &run.maps, Some(hole)))
        {
            *c += n;
        }
        per_step.add_steps(&run.maps, Some(hole));
        zones.add(
            &run.maps,
            &super::stats::refine_zones(hole, target.w, target.h),
        );
        progress(i + 1, cases.len());
    }
    let n = cases.len().max(1) as f64;
    let all: u64 = counts.iter().sum::<u64>().max(1);
    let mut best_fixed: Option<(String, f64)> = None;
    for (act, reps) in agent.set.iter().zip(&fixed) {
        for (k, v) in reps.iter().enumerate() {
            if best_fixed.as_ref().is_none_or(|b| v / n > b.1) {
                best_fixed = Some((format!("{} x{}", act.name(), k + 1), v / n));
            }
        }
    }
    Ok(RefineMetrics {
        best_fixed,
        protocol: String::new(),
        images: cases.len(),
        start: start_name.to_owned(),
        start_hole_psnr_db: before / n,
        agent_hole_psnr_db: after / n,
        start_ssim: ssim_before / n,
        agent_ssim: ssim_after / n,
        improved,
        action_share: agent
            .set
            .iter()
            .zip(&counts)
            .map(|(a, &c)| (a.name().to_owned(), c as f64 / all as f64))
            .collect(),
        zones: zones.shares(),
        per_step: per_step.shares(),
    })
}

/// Evaluates a refine `agent` on `clean` images with seeded scattered damage (specks and
/// hairs, `coverage` of the image) filled by Telea (the shipped `rl-refine`'s protocol).
pub fn eval_refine(
    agent: &Agent,
    clean: &[Frame],
    coverage: f64,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> RlResult<RefineMetrics> {
    let start = crate::train::rl::StartFill::Telea;
    let cases = refine_cases(
        clean,
        crate::train::rl::HoleKind::Scattered,
        Some(coverage),
        &start,
        seed,
        &mut |_, _| {},
    )?;
    eval_refine_cases(agent, &cases, start.name(), progress)
}
