//! The actor-critic: a small fully convolutional network with a per-pixel policy head (a
//! softmax over the actions) and a per-pixel value head, on our fast convolutions.
//!
//! Input `[n, 5, h, w]`: the current RGB state minus 0.5, the hole map (zeros when denoising)
//! and the episode's progress `t / T` as a constant plane. A shared body of four 3x3 convs
//! with dilations 1, 2, 3, 4 (ReLU; receptive field 21 px) feeds two heads, each a 3x3 conv
//! (ReLU) and a 1x1 conv: `actions` logits and one value.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};

use crate::models::conv::{Activation, ConvConfig};
use crate::models::layers::Conv2dFast;

/// Why an RL model could not be built, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The weights or manifest are missing, unreadable or do not fit.
    #[error("RL weights {path}: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The settings or inputs are not usable.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the RL module.
pub type RlResult<T> = Result<T, RlError>;

/// Input channels of the network.
pub const IN_CHANNELS: usize = 5;

/// Largest accepted width (guards loading a hostile manifest).
const MAX_CHANNELS: usize = 256;

/// Sizes of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// Feature channels of every hidden layer.
    pub channels: usize,
    /// Number of actions (policy outputs per pixel).
    pub actions: usize,
}

/// The actor-critic network.
#[derive(Clone, Debug)]
pub struct PixelNet {
    body: Vec<Conv2dFast>,
    policy: (Conv2dFast, Conv2dFast),
    value: (Conv2dFast, Conv2dFast),
}

fn pad(d: usize) -> ConvConfig {
    ConvConfig {
        padding: d,
        stride: 1,
        dilation: d,
    }
}

impl PixelNet {
    /// Creates (or loads, through `vb`) the network.
    pub fn new(vb: VarBuilder, cfg: NetConfig) -> candle_core::Result<Self> {
        let c = cfg.channels;
        let mut body = Vec::new();
        for (i, d) in [1usize, 2, 3, 4].into_iter().enumerate() {
            let cin = if i == 0 { IN_CHANNELS } else { c };
            body.push(Conv2dFast::new(
                vb.pp(format!("body{i}")),
                cin,
                c,
                3,
                pad(d),
                Activation::Relu,
            )?);
        }
        let head = |name: &str, out: usize| -> candle_core::Result<(Conv2dFast, Conv2dFast)> {
            Ok((
                Conv2dFast::new(vb.pp(format!("{name}0")), c, c, 3, pad(1), Activation::Relu)?,
                Conv2dFast::new(
                    vb.pp(format!("{name}1")),
                    c,
                    out,
                    1,
                    ConvConfig::default(),
                    Activation::Identity,
                )?,
            ))
        };
        Ok(Self {
            body,
            policy: head("policy", cfg.actions)?,
            value: head("value", 1)?,
        })
    }

    /// `(logits [n, A, h, w], value [n, 1, h, w])` for observations `[n, 5, h, w]`.
    pub fn forward(&self, obs: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut x = obs.clone();
        for l in &self.body {
            x = l.forward(&x)?;
        }
        let logits = self.policy.1.forward(&self.policy.0.forward(&x)?)?;
        let value = self.value.1.forward(&self.value.0.forward(&x)?)?;
        Ok((logits, value))
    }
}

/// Per-pixel action probabilities `[n, A, h, w]` from logits (softmax over dim 1).
pub fn policy(logits: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(logits, 1)
}

/// Per-pixel log-probabilities `[n, A, h, w]` (log-softmax over dim 1).
pub fn log_policy(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Builds the observation `[n, 5, h, w]` from frames of equal size.
pub fn observe(
    states: &[&super::env::Frame],
    holes: &[Option<&[bool]>],
    progress: f32,
    dev: &Device,
) -> RlResult<Tensor> {
    let Some(first) = states.first() else {
        return Err(RlError::Invalid("no images to observe".into()));
    };
    let (w, h) = (first.w, first.h);
    let plane = w * h;
    let mut data = Vec::with_capacity(states.len() * IN_CHANNELS * plane);
    for (i, s) in states.iter().enumerate() {
        if s.w != w || s.h != h {
            return Err(RlError::Invalid(
                "frames of different sizes in a batch".into(),
            ));
        }
        data.extend(s.data.iter().map(|v| v - 0.5));
        match holes.get(i).copied().flatten() {
            Some(m) => data.extend(m.iter().map(|&b| if b { 1.0f32 } else { 0.0 })),
            None => data.extend(std::iter::repeat_n(0.0f32, plane)),
        }
        data.extend(std::iter::repeat_n(progress, plane));
    }
    Ok(Tensor::from_vec(
        data,
        (states.len(), IN_CHANNELS, h, w),
        dev,
    )?)
}

/// The network with its variables.
pub struct LoadedNet {
    /// The variables.
    pub varmap: VarMap,
    /// The network.
    pub net: PixelNet,
    /// Its sizes.
    pub cfg: NetConfig,
}

impl LoadedNet {
    /// A freshly initialised network, reproducible for a seed: Kaiming-normal weights, zero
    /// biases, and a policy output scaled by 0.1 so the first policy is close to uniform.
    pub fn fresh(cfg: NetConfig, seed: u64, dev: &Device) -> RlResult<Self> {
        if cfg.channels == 0 || cfg.channels > MAX_CHANNELS || cfg.actions == 0 {
            return Err(RlError::Invalid(format!("unusable network sizes {cfg:?}")));
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let net = PixelNet::new(vb, cfg)?;
        crate::models::cgan::seeded_init(&varmap, seed)
            .map_err(|e| RlError::Invalid(e.to_string()))?;
        for (name, var) in named_vars(&varmap)? {
            if name == "policy1.weight" {
                var.set(&(var.as_tensor() * 0.1)?)?;
            }
        }
        Ok(Self { varmap, net, cfg })
    }

    /// Loads weights written by [`LoadedNet::save`].
    pub fn load(cfg: NetConfig, path: &Path, dev: &Device) -> RlResult<Self> {
        let err = |reason: String| RlError::Weights {
            path: path.to_owned(),
            reason,
        };
        if !path.is_file() {
            return Err(err("file not found".into()));
        }
        let tensors = candle_core::safetensors::load(path, dev)
            .map_err(|e| err(format!("not a readable safetensors file ({e})")))?;
        PixelNet::new(VarBuilder::from_tensors(tensors, DType::F32, dev), cfg)
            .map_err(|e| err(format!("does not fit the architecture {cfg:?}: {e}")))?;
        let mut m = Self::fresh(cfg, 0, dev)?;
        m.varmap
            .load(path)
            .map_err(|e| err(format!("unreadable or wrong architecture ({e})")))?;
        for (name, var) in named_vars(&m.varmap)? {
            if !crate::models::all_finite(var.as_tensor())? {
                return Err(err(format!("'{name}' holds NaN or infinite values")));
            }
        }
        m.cfg = cfg;
        Ok(m)
    }

    /// Writes the weights as safetensors.
    pub fn save(&self, path: &Path) -> RlResult<()> {
        let err = |reason: String| RlError::Weights {
            path: path.to_owned(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        self.varmap.save(path).map_err(|e| err(e.to_string()))
    }

    /// Number of trainable values.
    pub fn param_count(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Greedy (most probable) action per pixel for observations `[n, 5, h, w]`, as
    /// `[n][h * w]` indices.
    pub fn greedy(&self, obs: &Tensor) -> RlResult<Vec<Vec<u8>>> {
        let (logits, _) = self.net.forward(obs)?;
        let idx = logits.argmax(D::Minus(3))?;
        let (n, _, _) = idx.dims3()?;
        let flat: Vec<u32> = idx.flatten_all()?.to_vec1()?;
        let per = flat.len() / n.max(1);
        Ok(flat
            .chunks(per.max(1))
            .map(|c| c.iter().map(|&a| a as u8).collect())
            .collect())
    }
}

/// The variables of `varmap`, sorted by name.
pub fn named_vars(varmap: &VarMap) -> RlResult<Vec<(String, candle_core::Var)>> {
    crate::models::cgan::named_vars(varmap, false).map_err(|e| RlError::Invalid(e.to_string()))
}
