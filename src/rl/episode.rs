//! Recorded episodes: every step's image, action map and statistics, so an episode can be
//! watched step by step (the studio's episode viewer) and replayed exactly.
//!
//! [`record_episode`] runs a greedy episode on one image (no tiling: callers crop first) and
//! reports each step as it is made; [`replay`] re-applies recorded action maps to the start
//! image and gives back the same images bit for bit, because every step is a pure function of
//! the previous image and the action map.

use candle_core::Device;

use super::agent::Agent;
use super::env::{psnr, reward, step_frame, Action, Frame};
use super::net::{observe, RlError, RlResult};

/// Largest image [`record_episode`] accepts (it keeps every step in memory).
pub const MAX_RECORD_PIXELS: usize = 1024 * 1024;

/// What one step did, over the active pixels (the hole, or every pixel).
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// Mean per-pixel reward of the step (the training reward: `scale` x the decrease of
    /// squared error), when the clean target is known.
    pub mean_reward: Option<f64>,
    /// PSNR (dB) of the active pixels before the step, when the target is known.
    pub psnr_before: Option<f64>,
    /// PSNR (dB) of the active pixels after the step, when the target is known.
    pub psnr_after: Option<f64>,
    /// Mean absolute change of the active pixels, in 8-bit units (averaged over channels).
    pub mean_change: f64,
    /// Share of the active pixels per action of the set (sums to 1 when any pixel is active).
    pub share: Vec<f64>,
}

impl StepStats {
    /// PSNR change of the step (dB), when the target is known.
    pub fn psnr_change(&self) -> Option<f64> {
        Some(self.psnr_after? - self.psnr_before?)
    }
}

/// One recorded step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// 1 for the first step.
    pub step: usize,
    /// The image after the step.
    pub image: Frame,
    /// The greedy action per pixel (indices into the set, `w * h`). The policy chooses for
    /// every pixel; only the active ones apply their choice.
    pub actions: Vec<u8>,
    /// What the step did.
    pub stats: StepStats,
}

/// A whole recorded episode.
#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeRecord {
    /// The agent's action set, in policy order.
    pub set: Vec<Action>,
    /// The image before the first step.
    pub start: Frame,
    /// The active pixels (hole), or `None` when every pixel acts.
    pub hole: Option<Vec<bool>>,
    /// The clean image rewards are measured against, if known.
    pub target: Option<Frame>,
    /// The reward scale of the agent.
    pub reward_scale: f32,
    /// The steps made, in order (fewer than the agent's steps when stopped early).
    pub steps: Vec<StepRecord>,
}

impl EpisodeRecord {
    /// Steps recorded.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when no step was made.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The image after `t` steps (`0` = the start), if recorded.
    pub fn frame(&self, t: usize) -> Option<&Frame> {
        if t == 0 {
            Some(&self.start)
        } else {
            self.steps.get(t - 1).map(|s| &s.image)
        }
    }

    /// Whether pixel `p` acts.
    pub fn active(&self, p: usize) -> bool {
        self.hole
            .as_ref()
            .is_none_or(|h| h.get(p).copied().unwrap_or(false))
    }

    /// Sum of the steps' mean rewards (the undiscounted return per active pixel), when the
    /// target is known.
    pub fn total_reward(&self) -> Option<f64> {
        self.steps.iter().map(|s| s.stats.mean_reward).sum()
    }
}

/// Statistics of the step `before -> after` made with `actions`.
pub fn step_stats(
    set: &[Action],
    before: &Frame,
    after: &Frame,
    actions: &[u8],
    hole: Option<&[bool]>,
    target: Option<&Frame>,
    scale: f32,
) -> StepStats {
    let plane = before.w * before.h;
    let active = |p: usize| hole.is_none_or(|h| h[p]);
    let n = (0..plane).filter(|&p| active(p)).count();
    let mut counts = vec![0u64; set.len()];
    let mut change = 0.0f64;
    for p in (0..plane).filter(|&p| active(p)) {
        if let Some(c) = counts.get_mut(usize::from(actions[p])) {
            *c += 1;
        }
        for c in 0..3 {
            change += f64::from((after.data[c * plane + p] - before.data[c * plane + p]).abs());
        }
    }
    let (mean_reward, psnr_before, psnr_after) = match target {
        Some(t) => {
            let r = reward(t, before, after, scale, hole);
            let mean = r.iter().map(|&v| f64::from(v)).sum::<f64>() / n.max(1) as f64;
            (
                Some(mean),
                Some(psnr(before.mse(t, hole))),
                Some(psnr(after.mse(t, hole))),
            )
        }
        None => (None, None, None),
    };
    StepStats {
        mean_reward,
        psnr_before,
        psnr_after,
        mean_change: 255.0 * change / (3 * n.max(1)) as f64,
        share: counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect(),
    }
}

/// Runs a greedy episode of `agent` on `start` (`hole` marks the pixels that act, all when
/// `None`), recording every step. `target`, when known, gives each step its reward and PSNR
/// change. `on_step` sees each step as soon as it is made and returns false to stop (the steps
/// made so far are returned). Images over [`MAX_RECORD_PIXELS`] are refused: crop first.
pub fn record_episode(
    agent: &Agent,
    start: &Frame,
    hole: Option<&[bool]>,
    target: Option<&Frame>,
    on_step: &mut dyn FnMut(&StepRecord) -> bool,
) -> RlResult<EpisodeRecord> {
    let (w, h) = (start.w, start.h);
    if w == 0 || h == 0 || w * h > MAX_RECORD_PIXELS {
        return Err(RlError::Invalid(format!(
            "cannot record an episode on {w}x{h} pixels (1 to {MAX_RECORD_PIXELS}): crop first"
        )));
    }
    if hole.is_some_and(|m| m.len() != w * h) || target.is_some_and(|t| t.w != w || t.h != h) {
        return Err(RlError::Invalid(
            "the hole map or target does not match the image".into(),
        ));
    }
    let dev = Device::Cpu;
    let steps = agent.steps();
    let scale = agent.manifest.a2c.reward_scale;
    let known: Option<Vec<bool>> = hole.map(|m| m.iter().map(|&b| !b).collect());
    let mut record = EpisodeRecord {
        set: agent.set.clone(),
        start: start.clone(),
        hole: hole.map(<[bool]>::to_vec),
        target: target.cloned(),
        reward_scale: scale,
        steps: Vec::with_capacity(steps),
    };
    let mut state = start.clone();
    for t in 0..steps {
        let obs = observe(&[&state], &[hole], t as f32 / steps as f32, &dev)?;
        let actions = agent
            .net
            .greedy(&obs)?
            .into_iter()
            .next()
            .ok_or_else(|| RlError::Invalid("empty policy output".into()))?;
        let next = step_frame(&state, &agent.set, &actions, known.as_deref(), hole);
        let stats = step_stats(&agent.set, &state, &next, &actions, hole, target, scale);
        let rec = StepRecord {
            step: t + 1,
            image: next.clone(),
            actions,
            stats,
        };
        let go_on = on_step(&rec);
        record.steps.push(rec);
        state = next;
        if !go_on {
            break;
        }
    }
    Ok(record)
}

/// Re-applies recorded action maps to `start`: `out[0]` is `start`, `out[t]` the image after
/// step `t`. Equal, bit for bit, to the recorded images.
pub fn replay(
    set: &[Action],
    start: &Frame,
    hole: Option<&[bool]>,
    maps: &[Vec<u8>],
) -> Vec<Frame> {
    let known: Option<Vec<bool>> = hole.map(|m| m.iter().map(|&b| !b).collect());
    let mut out = Vec::with_capacity(maps.len() + 1);
    out.push(start.clone());
    for m in maps {
        let next = match out.last() {
            Some(prev) => step_frame(prev, set, m, known.as_deref(), hole),
            None => break,
        };
        out.push(next);
    }
    out
}
