//! A small convolutional variational autoencoder for 64x64 RGB faces.
//!
//! Encoder: four stride-2 4x4 convolutions (`base`, `2 base`, `4 base`, `8 base` channels,
//! leaky ReLU) from 64x64 down to 4x4, then one linear layer to the mean and log-variance of a
//! diagonal Gaussian posterior. Decoder: a linear layer to `4 base` channels at 4x4, four
//! [`UpConv`] steps (nearest 2x + gated 3x3 conv) back to 64x64, and a 3x3 conv with a sigmoid
//! to RGB in `[0, 1]`. All convolutions run on the project's fast kernels
//! ([`crate::models::layers`]).
//!
//! The likelihood is a Gaussian with a fixed standard deviation [`VaeConfig::sigma`] per
//! channel value, so the reconstruction term of the loss is `SSE / (2 sigma^2)` (plus a
//! constant that is reported in the ELBO but carries no gradient). See the manifest's
//! `objective` field for why this sigma and the KL warm-up were chosen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Linear, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::conv::{Activation, ConvConfig};
use super::layers::{Conv2dFast, UpConv};

/// Why a VAE could not be built, loaded, saved or run.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// A tensor operation failed (shapes, dtypes, a corrupt safetensors file).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A manifest could not be parsed or written.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The configuration or the input is not usable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A weights file that does not fit the architecture or holds unusable values.
    #[error("VAE weights {path}: {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result alias of this module.
pub type VaeResult<T> = Result<T, VaeError>;

/// The sizes of a [`Vae`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Side of the square RGB input in pixels; a multiple of 16 (four stride-2 stages).
    pub image_size: usize,
    /// Dimension of the latent code z.
    pub latent: usize,
    /// Channels of the first encoder stage; the encoder uses `base, 2, 4, 8 x base`.
    pub base: usize,
    /// Standard deviation of the Gaussian likelihood per channel value (pixels in `[0, 1]`).
    pub sigma: f32,
}

impl VaeConfig {
    /// The shipped face model: 64x64 RGB, latent 128, channels 32-64-128-256, sigma 0.1.
    pub fn faces64() -> Self {
        Self {
            image_size: 64,
            latent: 128,
            base: 32,
            sigma: 0.1,
        }
    }

    /// Checks the sizes.
    pub fn validate(&self) -> VaeResult<()> {
        if self.image_size < 16 || self.image_size % 16 != 0 {
            return Err(VaeError::Invalid(format!(
                "image_size {} must be a positive multiple of 16",
                self.image_size
            )));
        }
        if self.latent == 0 || self.base < 2 || self.base % 2 != 0 {
            return Err(VaeError::Invalid(format!(
                "latent {} must be positive and base {} even and >= 2",
                self.latent, self.base
            )));
        }
        // Far above any model we train, low enough that no size computed from them overflows
        // and a corrupt manifest cannot ask for an absurd network.
        if self.image_size > 4096 || self.latent > 65_536 || self.base > 4096 {
            return Err(VaeError::Invalid(format!(
                "sizes out of range: image_size {} (max 4096), latent {} (max 65536), base {} \
                 (max 4096)",
                self.image_size, self.latent, self.base
            )));
        }
        if !(self.sigma > 0.0 && self.sigma.is_finite()) {
            return Err(VaeError::Invalid(format!(
                "sigma {} must be positive",
                self.sigma
            )));
        }
        Ok(())
    }

    /// Values per image (`3 * size * size`).
    pub fn dims(&self) -> usize {
        3 * self.image_size * self.image_size
    }

    /// Side of the encoder's last feature map.
    fn feat(&self) -> usize {
        self.image_size / 16
    }

    /// A one-line description of the layers.
    pub fn architecture(&self) -> String {
        let b = self.base;
        let s = self.image_size;
        format!(
            "conv VAE {s}x{s}x3: enc conv4x4/s2 {}-{}-{}-{} (leaky 0.2) -> {f}x{f} -> linear {} -> \
             mu,logvar[{z}]; dec linear {z} -> {}x{f}x{f} -> 4x UpConv(nearest2x + gated 3x3) \
             {}-{}-{}-{} -> conv3x3 -> sigmoid",
            b,
            2 * b,
            4 * b,
            8 * b,
            2 * self.latent,
            4 * b,
            4 * b,
            2 * b,
            b,
            b / 2,
            f = self.feat(),
            z = self.latent,
        )
    }
}

/// What one forward pass through the VAE produces.
#[derive(Debug)]
pub struct VaeOutput {
    /// The decoded images `[n, 3, s, s]` in `[0, 1]`.
    pub recon: Tensor,
    /// Posterior means `[n, latent]`.
    pub mu: Tensor,
    /// Posterior log-variances `[n, latent]`.
    pub logvar: Tensor,
}

/// Per-image terms of the negative ELBO, each `[n]`, in nats.
#[derive(Debug)]
pub struct VaeLoss {
    /// `SSE / (2 sigma^2)`: the reconstruction term without its constant.
    pub recon: Tensor,
    /// `KL(q(z|x) || N(0, I))`.
    pub kl: Tensor,
    /// Sum of squared errors per image.
    pub sse: Tensor,
}

/// The convolutional VAE. See the module documentation for the layers.
#[derive(Debug)]
pub struct Vae {
    cfg: VaeConfig,
    enc: Vec<Conv2dFast>,
    head: Linear,
    dec_in: Linear,
    ups: Vec<UpConv>,
    out: Conv2dFast,
}

impl Vae {
    /// Creates (or loads, depending on `vb`) the layers under `enc.*`, `head`, `dec_in`,
    /// `up.*` and `out`.
    pub fn new(vb: VarBuilder, cfg: VaeConfig) -> VaeResult<Self> {
        cfg.validate()?;
        let b = cfg.base;
        let down = ConvConfig {
            padding: 1,
            stride: 2,
            dilation: 1,
        };
        let chans = [3, b, 2 * b, 4 * b, 8 * b];
        let mut enc = Vec::with_capacity(4);
        for i in 0..4 {
            enc.push(Conv2dFast::new(
                vb.pp(format!("enc.{i}")),
                chans[i],
                chans[i + 1],
                4,
                down,
                Activation::LeakyRelu(0.2),
            )?);
        }
        let f = cfg.feat();
        let head = candle_nn::linear(8 * b * f * f, 2 * cfg.latent, vb.pp("head"))?;
        let dec_in = candle_nn::linear(cfg.latent, 4 * b * f * f, vb.pp("dec_in"))?;
        let up_chans = [4 * b, 4 * b, 2 * b, b, b / 2];
        let mut ups = Vec::with_capacity(4);
        for i in 0..4 {
            ups.push(UpConv::new(
                vb.pp(format!("up.{i}")),
                up_chans[i],
                up_chans[i + 1],
            )?);
        }
        let same = ConvConfig {
            padding: 1,
            ..ConvConfig::default()
        };
        let out = Conv2dFast::new(vb.pp("out"), b / 2, 3, 3, same, Activation::Identity)?;
        Ok(Self {
            cfg,
            enc,
            head,
            dec_in,
            ups,
            out,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Posterior mean and log-variance, each `[n, latent]`, of images `[n, 3, s, s]` in `[0, 1]`.
    pub fn encode(&self, x: &Tensor) -> VaeResult<(Tensor, Tensor)> {
        let (_, c, h, w) = x.dims4()?;
        let s = self.cfg.image_size;
        if c != 3 || h != s || w != s {
            return Err(VaeError::Invalid(format!(
                "encoder expects [n, 3, {s}, {s}], got [_, {c}, {h}, {w}]"
            )));
        }
        // Centre the input: the network sees [-1, 1].
        let mut h = ((x * 2.0)? - 1.0)?;
        for conv in &self.enc {
            h = conv.forward(&h)?;
        }
        let h = h.flatten_from(1)?;
        let stats = self.head.forward(&h)?;
        let mu = stats.narrow(1, 0, self.cfg.latent)?;
        // Bounded log-variance keeps exp() finite early in training; the bound is far outside the
        // range a trained posterior uses (|logvar| < 10).
        let logvar = stats
            .narrow(1, self.cfg.latent, self.cfg.latent)?
            .clamp(-12f32, 8f32)?;
        Ok((mu, logvar))
    }

    /// Images `[n, 3, s, s]` in `[0, 1]` from codes `[n, latent]`.
    pub fn decode(&self, z: &Tensor) -> VaeResult<Tensor> {
        let (n, l) = z.dims2()?;
        if l != self.cfg.latent {
            return Err(VaeError::Invalid(format!(
                "decoder expects latent {}, got {l}",
                self.cfg.latent
            )));
        }
        let f = self.cfg.feat();
        let h = self.dec_in.forward(z)?;
        let h = leaky_relu(&h, 0.2)?.reshape((n, 4 * self.cfg.base, f, f))?;
        let mut h = h;
        for up in &self.ups {
            h = up.forward(&h)?;
        }
        let h = self.out.forward(&h)?;
        Ok(candle_nn::ops::sigmoid(&h)?)
    }

    /// Encodes, draws `z = mu + exp(logvar / 2) * eps` with the given standard-normal noise
    /// `eps` (`[n, latent]`, or `None` for `z = mu`), and decodes.
    pub fn forward(&self, x: &Tensor, eps: Option<&Tensor>) -> VaeResult<VaeOutput> {
        let (mu, logvar) = self.encode(x)?;
        let z = match eps {
            Some(eps) => reparameterize(&mu, &logvar, eps)?,
            None => mu.clone(),
        };
        let recon = self.decode(&z)?;
        Ok(VaeOutput { recon, mu, logvar })
    }

    /// The per-image loss terms of `out` against the inputs `x`.
    pub fn loss(&self, x: &Tensor, out: &VaeOutput) -> VaeResult<VaeLoss> {
        let sse = (&out.recon - x)?.sqr()?.flatten_from(1)?.sum(D::Minus1)?;
        let s2 = f64::from(self.cfg.sigma) * f64::from(self.cfg.sigma);
        let recon = (&sse * (1.0 / (2.0 * s2)))?;
        let kl = kl_divergence(&out.mu, &out.logvar)?;
        Ok(VaeLoss { recon, kl, sse })
    }

    /// The constant of the Gaussian log-likelihood per image, `D/2 ln(2 pi sigma^2)`, in nats.
    pub fn nll_constant(&self) -> f64 {
        let s2 = f64::from(self.cfg.sigma) * f64::from(self.cfg.sigma);
        0.5 * self.cfg.dims() as f64 * (2.0 * std::f64::consts::PI * s2).ln()
    }
}

/// `x` where positive, `slope * x` elsewhere (differentiable candle ops).
fn leaky_relu(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    x.maximum(&(x * slope)?)
}

/// `mu + exp(logvar / 2) * eps`.
pub fn reparameterize(mu: &Tensor, logvar: &Tensor, eps: &Tensor) -> VaeResult<Tensor> {
    Ok((mu + ((logvar * 0.5)?.exp()? * eps)?)?)
}

/// Closed-form `KL(N(mu, exp(logvar)) || N(0, I))` per row, `[n]`:
/// `-1/2 sum(1 + logvar - mu^2 - exp(logvar))`.
pub fn kl_divergence(mu: &Tensor, logvar: &Tensor) -> VaeResult<Tensor> {
    let inner = ((logvar + 1.0)? - mu.sqr()?)?;
    let inner = (inner - logvar.exp()?)?;
    Ok((inner.sum(D::Minus1)? * -0.5)?)
}

/// `n x dim` standard-normal values from a seeded generator (Box-Muller), as a tensor.
///
/// candle's CPU `randn` cannot be seeded, so every random draw of training and sampling goes
/// through this function to keep runs reproducible.
pub fn seeded_normal(rng: &mut StdRng, n: usize, dim: usize, dev: &Device) -> VaeResult<Tensor> {
    let mut v = Vec::with_capacity(n * dim);
    while v.len() < n * dim {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f32::consts::PI * u2;
        v.push(r * t.cos());
        if v.len() < n * dim {
            v.push(r * t.sin());
        }
    }
    Ok(Tensor::from_vec(v, (n, dim), dev)?)
}

/// The latent code for `seed`: `[1, latent]` standard-normal values (same seed, same code).
pub fn latent_for_seed(seed: u64, latent: usize, dev: &Device) -> VaeResult<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    seeded_normal(&mut rng, 1, latent, dev)
}

/// Re-initialises every variable of `varmap` from `seed`, deterministically: `*.weight` with
/// Kaiming-normal values (`std = sqrt(2 / fan_in)`, as candle's default for convs) and
/// `*.bias` uniform in `+/- 1 / sqrt(fan_in)` of the matching weight.
///
/// candle initialises through its unseedable CPU generator, so this runs after the model is
/// built to make training reproducible.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> VaeResult<()> {
    let vars = sorted_vars(varmap)?;
    let fan_in: HashMap<String, usize> = vars
        .iter()
        .filter_map(|(name, var)| {
            let stem = name.strip_suffix(".weight")?;
            let dims = var.dims();
            Some((
                stem.to_owned(),
                dims.iter().skip(1).product::<usize>().max(1),
            ))
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    for (name, var) in &vars {
        let dev = var.device().clone();
        let shape = var.shape().clone();
        let count = shape.elem_count();
        let values = if let Some(stem) = name.strip_suffix(".weight") {
            let fan = fan_in.get(stem).copied().unwrap_or(1) as f32;
            let std = (2.0 / fan).sqrt();
            let t = seeded_normal(&mut rng, 1, count, &dev)?;
            (t * f64::from(std))?
        } else {
            let stem = name.strip_suffix(".bias").unwrap_or(name);
            let fan = fan_in.get(stem).copied().unwrap_or(1) as f32;
            let bound = 1.0 / fan.sqrt();
            let v: Vec<f32> = (0..count)
                .map(|_| rng.random_range(-bound..=bound))
                .collect();
            Tensor::from_vec(v, count, &dev)?
        };
        var.set(&values.reshape(shape)?)?;
    }
    Ok(())
}

/// The variables of `varmap` sorted by name.
pub fn sorted_vars(varmap: &VarMap) -> VaeResult<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| VaeError::Invalid("the variable map's lock is poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// Number of trainable values in `varmap`.
pub fn param_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// The held-out metrics stored in a manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VaeMetrics {
    /// Images in the held-out split.
    pub val_images: usize,
    /// Mean per-image PSNR (dB) of the reconstruction decoded from the posterior mean.
    pub val_recon_psnr_db: f64,
    /// Mean ELBO per image in nats (one seeded posterior sample; Gaussian likelihood with the
    /// manifest's sigma on pixel values in `[0, 1]`, so it is a continuous density: higher is
    /// better, and it is comparable only between models with the same sigma).
    pub val_elbo_nats: f64,
    /// Mean reconstruction negative log-likelihood per image (nats), constant included.
    pub val_recon_nll_nats: f64,
    /// Mean KL per image (nats).
    pub val_kl_nats: f64,
}

/// The `weights/<id>.json` manifest of a trained VAE.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaeManifest {
    /// Always `"vae"`.
    pub family: String,
    /// One-line description of the layers.
    pub architecture: String,
    /// The sizes the weights were trained with.
    pub config: VaeConfig,
    /// Trainable values.
    pub params: usize,
    /// Latent size (also in `config`; kept at the top level for readers).
    pub latent_size: usize,
    /// Input resolution, e.g. `"64x64 RGB"`.
    pub input: String,
    /// Training data folder and split.
    pub data: String,
    /// The data's licence terms, which the weights inherit.
    pub data_license: String,
    /// Loss, KL schedule and why.
    pub objective: String,
    /// The command line that produced the weights.
    pub command: String,
    /// Optimiser steps taken in total.
    pub steps: u64,
    /// Batch size.
    pub batch: usize,
    /// Learning rate.
    pub lr: f64,
    /// Seed of initialisation, split, batches and noise.
    pub seed: u64,
    /// Cumulative wall-clock training seconds (all stages, evaluation excluded).
    pub train_seconds: f64,
    /// Where and how it was trained.
    pub hardware: String,
    /// Held-out metrics.
    pub metrics: VaeMetrics,
}

impl VaeManifest {
    /// Reads a manifest.
    pub fn read(path: &Path) -> VaeResult<Self> {
        Ok(crate::jsonfile::read(path)?)
    }

    /// Writes the manifest as pretty JSON (atomically).
    pub fn write(&self, path: &Path) -> VaeResult<()> {
        Ok(crate::jsonfile::write(path, self)?)
    }
}

impl From<crate::jsonfile::JsonFileError> for VaeError {
    fn from(e: crate::jsonfile::JsonFileError) -> Self {
        use crate::jsonfile::JsonFileError as J;
        match e {
            J::Io { path, source } => Self::Io { path, source },
            J::Json { path, source } => Self::Manifest { path, source },
        }
    }
}

/// A VAE with its variables, ready to run or train.
pub struct LoadedVae {
    /// The network.
    pub vae: Vae,
    /// Its variables (save with `varmap.save(path)`).
    pub varmap: VarMap,
}

impl LoadedVae {
    /// A freshly initialised VAE (seeded, reproducible).
    pub fn fresh(cfg: VaeConfig, seed: u64, dev: &Device) -> VaeResult<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let vae = Vae::new(vb, cfg)?;
        seeded_init(&varmap, seed)?;
        Ok(Self { vae, varmap })
    }

    /// Loads weights saved with `VarMap::save` for a VAE of sizes `cfg`.
    pub fn load(cfg: VaeConfig, weights: &Path, dev: &Device) -> VaeResult<Self> {
        if !weights.is_file() {
            return Err(VaeError::Io {
                path: weights.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "weights not found"),
            });
        }
        let bad = |reason: String| VaeError::Weights {
            path: weights.to_owned(),
            reason,
        };
        // Read by hand rather than with `VarMap::load` so that f16 files (the shipped format)
        // load too: every tensor is converted to the model's f32.
        let tensors = candle_core::safetensors::load(weights, dev)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        // Check every tensor against the architecture before allocating the model, so sizes
        // that disagree with the file are an error here rather than a large allocation.
        cfg.validate()?;
        Vae::new(
            VarBuilder::from_tensors(tensors.clone(), DType::F32, dev),
            cfg,
        )
        .map_err(|e| bad(format!("does not fit the architecture {cfg:?}: {e}")))?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let vae = Vae::new(vb, cfg)?;
        for (name, var) in sorted_vars(&varmap)? {
            let t = tensors
                .get(&name)
                .ok_or_else(|| bad(format!("has no tensor '{name}'")))?;
            if t.shape() != var.shape() {
                return Err(bad(format!(
                    "'{name}' is {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            let t = t.to_dtype(DType::F32)?;
            if !super::all_finite(&t)? {
                return Err(bad(format!(
                    "'{name}' holds NaN or infinite values (a diverged or damaged file)"
                )));
            }
            var.set(&t)?;
        }
        Ok(Self { vae, varmap })
    }

    /// Loads `<dir>/<id>.safetensors` with the sizes of `<dir>/<id>.json`.
    pub fn load_model(dir: &Path, id: &str, dev: &Device) -> VaeResult<(Self, VaeManifest)> {
        let manifest = VaeManifest::read(&dir.join(format!("{id}.json")))?;
        let loaded = Self::load(manifest.config, &dir.join(format!("{id}.safetensors")), dev)?;
        Ok((loaded, manifest))
    }

    /// Saves the weights as f32 safetensors (`VarMap::save`): bit-exact.
    pub fn save(&self, path: &Path) -> VaeResult<()> {
        Ok(self.varmap.save(path)?)
    }

    /// Saves the weights as f16 safetensors: half the size of [`LoadedVae::save`], for the
    /// shipped file (decodes change by well under one 8-bit level; the manifest's metrics are
    /// measured on the f16 weights).
    pub fn save_f16(&self, path: &Path) -> VaeResult<()> {
        let mut map = HashMap::new();
        for (name, var) in sorted_vars(&self.varmap)? {
            map.insert(name, var.as_tensor().to_dtype(DType::F16)?);
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }
}
