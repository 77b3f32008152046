//! Advantage actor-critic on a batch of pixel-agent episodes (PixelRL, Furuta et al. 2019).
//!
//! Every pixel of the active region is an agent sharing one network. One episode of `T` steps
//! samples an action per pixel from the policy at each step (seeded), applies them, and
//! collects the rewards. Returns are discounted per pixel, `R_t = r_t + gamma * R_{t+1}` with
//! `R_T = 0` (episodes have a fixed length), and the loss over the episode is
//! `mean_t mean_px [ -log pi(a|s) * (R - V).detach() + c_v * (R - V)^2 - beta * H(pi) ]`.
//! PixelRL's ConvGRU and reward-map convolution are left out: a small memoryless network that
//! sees the step index is enough for a few-step episode, and is cheaper on the CPU.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

use super::env::{Action, Episode};
use super::net::{log_policy, observe, policy, PixelNet, RlError, RlResult};

/// Settings of the actor-critic.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct A2cConfig {
    /// Steps per episode.
    pub steps: usize,
    /// Discount.
    pub gamma: f32,
    /// Entropy bonus weight.
    pub entropy: f64,
    /// Value-loss weight.
    pub value_weight: f64,
    /// Rewards are `scale * (squared error before - after)` for values in `[0, 1]`.
    pub reward_scale: f32,
}

impl Default for A2cConfig {
    fn default() -> Self {
        Self {
            steps: 5,
            gamma: 0.95,
            entropy: 0.01,
            value_weight: 0.5,
            reward_scale: 255.0,
        }
    }
}

/// What one training episode measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeStats {
    /// The loss that was minimised.
    pub loss: f64,
    /// Total reward per active pixel over the episode (the undiscounted return), averaged.
    pub mean_reward: f64,
    /// PSNR (dB) of the active region before the episode, averaged over images.
    pub psnr_before: f64,
    /// PSNR (dB) after the episode.
    pub psnr_after: f64,
    /// Mean policy entropy (nats).
    pub entropy: f64,
    /// How often each action was taken (active pixels, all steps).
    pub action_counts: Vec<u64>,
}

impl EpisodeStats {
    /// PSNR gain of the episode in dB.
    pub fn psnr_gain(&self) -> f64 {
        self.psnr_after - self.psnr_before
    }
}

/// Draws one action per pixel from probabilities `[n, A, h, w]`; returns `[n][h * w]`.
pub fn sample_actions(probs: &Tensor, rng: &mut StdRng) -> RlResult<Vec<Vec<u8>>> {
    let (n, a, h, w) = probs.dims4()?;
    let plane = h * w;
    let p: Vec<f32> = probs.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let base = i * a * plane;
        let mut choice = Vec::with_capacity(plane);
        for px in 0..plane {
            let u: f32 = rng.random();
            let mut acc = 0.0;
            let mut pick = a - 1;
            for k in 0..a {
                acc += p[base + k * plane + px];
                if u < acc {
                    pick = k;
                    break;
                }
            }
            choice.push(pick as u8);
        }
        out.push(choice);
    }
    Ok(out)
}

/// Discounted returns per step: `rewards[t][p]` -> `R[t][p] = r_t + gamma * R[t+1]`,
/// `R[T] = 0`.
pub fn discounted_returns(rewards: &[Vec<f32>], gamma: f32) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); rewards.len()];
    let mut next: Option<Vec<f32>> = None;
    for t in (0..rewards.len()).rev() {
        let r = &rewards[t];
        let ret: Vec<f32> = match &next {
            Some(n) => r.iter().zip(n).map(|(r, n)| r + gamma * n).collect(),
            None => r.clone(),
        };
        out[t] = ret.clone();
        next = Some(ret);
    }
    out
}

/// One-hot `[n, A, h, w]` of `choice` (`[n][h * w]`).
fn one_hot(choice: &[Vec<u8>], a: usize, h: usize, w: usize, dev: &Device) -> RlResult<Tensor> {
    let plane = h * w;
    let mut v = vec![0.0f32; choice.len() * a * plane];
    for (i, c) in choice.iter().enumerate() {
        for (p, &k) in c.iter().enumerate() {
            v[(i * a + usize::from(k)) * plane + p] = 1.0;
        }
    }
    Ok(Tensor::from_vec(v, (choice.len(), a, h, w), dev)?)
}

/// The actor-critic loss of one step, averaged over the active pixels (`weight` `[n,1,h,w]`
/// is 1 at active pixels, 0 elsewhere; `active` is its sum). Returns `(loss, entropy)`.
pub fn step_loss(
    logits: &Tensor,
    value: &Tensor,
    onehot: &Tensor,
    returns: &Tensor,
    weight: &Tensor,
    active: f64,
    cfg: &A2cConfig,
) -> RlResult<(Tensor, Tensor)> {
    let logp = log_policy(logits)?;
    let p = logp.exp()?;
    let logp_a = (&logp * onehot)?.sum_keepdim(1)?;
    let adv = (returns - value)?;
    let pg = (logp_a * adv.detach())?.neg()?;
    let vl = (adv.sqr()? * cfg.value_weight)?;
    let ent = (p * &logp)?.sum_keepdim(1)?.neg()?;
    let per_px = ((pg + vl)? - (&ent * cfg.entropy)?)?;
    let denom = active.max(1.0);
    let loss = ((per_px * weight)?.sum_all()? / denom)?;
    let ent_mean = ((ent * weight)?.sum_all()? / denom)?;
    Ok((loss, ent_mean))
}

fn mean_psnr(eps: &[Episode]) -> f64 {
    eps.iter()
        .map(|e| super::env::psnr(e.state.mse(&e.target, e.active())))
        .sum::<f64>()
        / eps.len().max(1) as f64
}

/// Runs one sampled episode on `eps` (all the same size) and returns the loss to minimise
/// (its graph spans the episode) with the statistics. The episodes' states are advanced.
pub fn train_episode(
    net: &PixelNet,
    eps: &mut [Episode],
    set: &[Action],
    cfg: &A2cConfig,
    rng: &mut StdRng,
    dev: &Device,
) -> RlResult<(Tensor, EpisodeStats)> {
    let Some(first) = eps.first() else {
        return Err(RlError::Invalid("no episodes".into()));
    };
    let (w, h) = (first.state.w, first.state.h);
    let n = eps.len();
    let plane = w * h;
    let mut weight_v = Vec::with_capacity(n * plane);
    for e in eps.iter() {
        match e.active() {
            Some(m) => weight_v.extend(m.iter().map(|&b| if b { 1.0f32 } else { 0.0 })),
            None => weight_v.extend(std::iter::repeat_n(1.0f32, plane)),
        }
    }
    let active: f64 = weight_v.iter().map(|&v| f64::from(v)).sum();
    let weight = Tensor::from_vec(weight_v, (n, 1, h, w), dev)?;
    let psnr_before = mean_psnr(eps);
    let mut logits_t = Vec::with_capacity(cfg.steps);
    let mut values_t = Vec::with_capacity(cfg.steps);
    let mut onehots = Vec::with_capacity(cfg.steps);
    let mut rewards: Vec<Vec<f32>> = Vec::with_capacity(cfg.steps);
    let mut counts = vec![0u64; set.len()];
    for t in 0..cfg.steps {
        let states: Vec<_> = eps.iter().map(|e| &e.state).collect();
        let holes: Vec<_> = eps.iter().map(|e| e.active()).collect();
        let obs = observe(&states, &holes, t as f32 / cfg.steps as f32, dev)?;
        let (logits, value) = net.forward(&obs)?;
        let probs = policy(&logits.detach())?;
        let choice = sample_actions(&probs, rng)?;
        let mut r_all = Vec::with_capacity(n * plane);
        for (e, c) in eps.iter_mut().zip(&choice) {
            for (p, &k) in c.iter().enumerate() {
                if e.active().is_none_or(|m| m[p]) {
                    if let Some(x) = counts.get_mut(usize::from(k)) {
                        *x += 1;
                    }
                }
            }
            r_all.extend(e.step(set, c, cfg.reward_scale));
        }
        onehots.push(one_hot(&choice, set.len(), h, w, dev)?);
        logits_t.push(logits);
        values_t.push(value);
        rewards.push(r_all);
    }
    let total_reward: f64 = rewards
        .iter()
        .flat_map(|r| r.iter())
        .map(|&v| f64::from(v))
        .sum();
    let returns = discounted_returns(&rewards, cfg.gamma);
    let mut loss = Tensor::zeros((), candle_core::DType::F32, dev)?;
    let mut ent_sum = 0.0;
    for t in 0..cfg.steps {
        let ret = Tensor::from_vec(returns[t].clone(), (n, 1, h, w), dev)?;
        let (l, e) = step_loss(
            &logits_t[t],
            &values_t[t],
            &onehots[t],
            &ret,
            &weight,
            active,
            cfg,
        )?;
        loss = (loss + l)?;
        ent_sum += f64::from(e.to_scalar::<f32>()?);
    }
    let loss = (loss / cfg.steps.max(1) as f64)?;
    let stats = EpisodeStats {
        loss: f64::from(loss.to_scalar::<f32>()?),
        mean_reward: total_reward / active.max(1.0),
        psnr_before,
        psnr_after: mean_psnr(eps),
        entropy: ent_sum / cfg.steps.max(1) as f64,
        action_counts: counts,
    };
    Ok((loss, stats))
}

/// Runs a greedy episode (most probable action per pixel at every step) on one image and
/// returns the final image and the action map of every step.
pub fn greedy_episode(
    net: &super::net::LoadedNet,
    start: &super::env::Frame,
    hole: Option<&[bool]>,
    set: &[Action],
    steps: usize,
    dev: &Device,
    mut on_step: impl FnMut(usize, &super::env::Frame) -> bool,
) -> RlResult<(super::env::Frame, Vec<Vec<u8>>)> {
    let mut state = start.clone();
    let known: Option<Vec<bool>> = hole.map(|h| h.iter().map(|&b| !b).collect());
    let mut maps = Vec::with_capacity(steps);
    for t in 0..steps {
        let obs = observe(&[&state], &[hole], t as f32 / steps as f32, dev)?;
        let choice = net
            .greedy(&obs)?
            .into_iter()
            .next()
            .ok_or_else(|| RlError::Invalid("empty policy output".into()))?;
        state = super::env::step_frame(&state, set, &choice, known.as_deref(), hole);
        maps.push(choice);
        if !on_step(t + 1, &state) {
            break;
        }
    }
    Ok((state, maps))
}
