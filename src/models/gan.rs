//! A DCGAN-class generative adversarial network for 64x64 RGB faces.
//!
//! Generator G: z (`latent` standard-normal values) -> linear to `16g x 4 x 4` -> four stages
//! of nearest 2x upsampling + 3x3 conv + leaky ReLU + pixel norm (`8g, 4g, 2g, g` channels at
//! 8, 16, 32, 64 px) -> 3x3 conv -> tanh, mapped to RGB in `[0, 1]`. Pixel norm (Karras et
//! al. 2018) stands in for DCGAN's batch norm: it needs no running statistics, so a sample does
//! not depend on the rest of its batch.
//!
//! Discriminator D: RGB in `[-1, 1]` -> four stride-2 4x4 convs (`d, 2d, 4d, 8d` channels, leaky
//! ReLU 0.2) from 64 down to 4 px -> linear to one logit. Every layer of D is spectrally
//! normalised (Miyato et al. 2018): its weight is divided by an estimate of its largest singular
//! value, refreshed by one power iteration per training step. That bounds D's Lipschitz
//! constant, the stabiliser of this model.
//!
//! All convolutions run on the project's fast kernels ([`crate::models::conv`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::conv::{conv2d, upsample_nearest2x, Activation, ConvConfig};
use super::latent_pca::LatentPca;
use super::layers::Conv2dFast;
use super::vae::{seeded_init, seeded_normal, sorted_vars};

/// Why a GAN could not be built, loaded, saved or run.
#[derive(Debug, thiserror::Error)]
pub enum GanError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Shared model helpers (initialisation, variable lists) failed.
    #[error(transparent)]
    Vae(#[from] super::vae::VaeError),
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
    #[error("GAN weights {path}: {reason}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result alias of this module.
pub type GanResult<T> = Result<T, GanError>;

/// The sizes of a GAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GanConfig {
    /// Side of the square RGB images; a multiple of 16 (four 2x stages).
    pub image_size: usize,
    /// Dimension of z.
    pub latent: usize,
    /// Channels of the generator's last stage (`8g, 4g, 2g, g` from 8 px up).
    pub g_base: usize,
    /// Channels of the discriminator's first stage (`d, 2d, 4d, 8d`).
    pub d_base: usize,
}

impl GanConfig {
    /// The shipped face model: 64x64 RGB, latent 128, G 256-128-64-32-16, D 32-64-128-256.
    pub fn faces64() -> Self {
        Self {
            image_size: 64,
            latent: 128,
            g_base: 16,
            d_base: 32,
        }
    }

    /// Checks the sizes (also those read from a manifest, so a corrupt one cannot ask for an
    /// absurd network).
    pub fn validate(&self) -> GanResult<()> {
        if self.image_size < 16 || self.image_size % 16 != 0 || self.image_size > 1024 {
            return Err(GanError::Invalid(format!(
                "image_size {} must be a multiple of 16 in 16..=1024",
                self.image_size
            )));
        }
        if self.latent == 0 || self.latent > 4096 {
            return Err(GanError::Invalid(format!(
                "latent {} must be in 1..=4096",
                self.latent
            )));
        }
        for (name, v) in [("g_base", self.g_base), ("d_base", self.d_base)] {
            if v == 0 || v > 512 {
                return Err(GanError::Invalid(format!("{name} {v} must be in 1..=512")));
            }
        }
        Ok(())
    }

    /// Side of the lowest-resolution feature map (image / 16).
    pub fn feat(&self) -> usize {
        self.image_size / 16
    }

    /// One-line description of the layers, for manifests.
    pub fn architecture(&self) -> String {
        let (g, d, f) = (self.g_base, self.d_base, self.feat());
        format!(
            "G: z[{l}] -> linear -> {c0}x{f}x{f}, pixel norm -> 4 x (nearest 2x, conv3x3, leaky \
             ReLU 0.2, pixel norm): {c1}, {c2}, {c3}, {c4} channels -> conv3x3 3 -> tanh -> \
             [0,1]. D (spectral norm on every layer): RGB in [-1,1] -> conv4x4 s2 {d}, {d2}, {d4}, \
             {d8} (leaky ReLU 0.2) -> linear 1 logit",
            l = self.latent,
            c0 = 16 * g,
            c1 = 8 * g,
            c2 = 4 * g,
            c3 = 2 * g,
            c4 = g,
            d2 = 2 * d,
            d4 = 4 * d,
            d8 = 8 * d,
        )
    }
}

/// `x / sqrt(mean over channels of x^2 + 1e-8)` per pixel (pixel norm).
pub fn pixel_norm(x: &Tensor) -> candle_core::Result<Tensor> {
    let rms = (x.sqr()?.mean_keepdim(1)? + 1e-8)?.sqrt()?;
    x.broadcast_div(&rms)
}

fn leaky_relu(x: &Tensor, slope: f64) -> candle_core::Result<Tensor> {
    x.maximum(&(x * slope)?)
}

/// The generator.
pub struct Generator {
    cfg: GanConfig,
    input: candle_nn::Linear,
    stages: Vec<Conv2dFast>,
    out: Conv2dFast,
}

impl Generator {
    /// Creates (or loads) the layers under `input`, `stage.{0..3}` and `out` of `vb`.
    pub fn new(vb: VarBuilder, cfg: GanConfig) -> GanResult<Self> {
        cfg.validate()?;
        let g = cfg.g_base;
        let f = cfg.feat();
        let input = candle_nn::linear(cfg.latent, 16 * g * f * f, vb.pp("input"))?;
        let same = ConvConfig {
            padding: 1,
            ..ConvConfig::default()
        };
        let chans = [16 * g, 8 * g, 4 * g, 2 * g, g];
        let mut stages = Vec::with_capacity(4);
        for i in 0..4 {
            stages.push(Conv2dFast::new(
                vb.pp(format!("stage.{i}")),
                chans[i],
                chans[i + 1],
                3,
                same,
                Activation::LeakyRelu(0.2),
            )?);
        }
        let out = Conv2dFast::new(vb.pp("out"), g, 3, 3, same, Activation::Identity)?;
        Ok(Self {
            cfg,
            input,
            stages,
            out,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &GanConfig {
        &self.cfg
    }

    /// The first feature map `[n, 16g, f, f]` (after the linear layer and pixel norm): the
    /// "early layer" whose principal directions give the GANSpace sliders.
    pub fn early(&self, z: &Tensor) -> GanResult<Tensor> {
        let (n, l) = z.dims2()?;
        if l != self.cfg.latent {
            return Err(GanError::Invalid(format!(
                "generator expects latent {}, got {l}",
                self.cfg.latent
            )));
        }
        let f = self.cfg.feat();
        let h = self.input.forward(z)?;
        let h = leaky_relu(&h, 0.2)?.reshape((n, 16 * self.cfg.g_base, f, f))?;
        Ok(pixel_norm(&h)?)
    }

    /// Images `[n, 3, s, s]` in `[0, 1]` from the early feature map of [`Generator::early`].
    pub fn from_early(&self, h: &Tensor) -> GanResult<Tensor> {
        let mut h = h.clone();
        for stage in &self.stages {
            h = pixel_norm(&stage.forward(&upsample_nearest2x(&h)?)?)?;
        }
        let y = self.out.forward(&h)?.tanh()?;
        Ok(((y + 1.0)? * 0.5)?)
    }

    /// Images `[n, 3, s, s]` in `[0, 1]` from codes `[n, latent]`.
    pub fn forward(&self, z: &Tensor) -> GanResult<Tensor> {
        self.from_early(&self.early(z)?)
    }
}

/// A spectrally normalised weight: `w / sigma(w)`, with the singular vector estimate `u`
/// stored beside the weight (as `<name>.u`) so that a loaded model computes the same sigma.
struct SpectralWeight {
    weight: Tensor,
    bias: Tensor,
    u: Mutex<Tensor>,
}

impl SpectralWeight {
    fn new(vb: &VarBuilder, shape: &[usize], fan_in: usize) -> GanResult<Self> {
        let weight = vb.get_with_hints(shape, "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let bias = vb.get_with_hints(
            shape[0],
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        // The power iteration's vector is state, not a parameter; it is saved with the weights.
        let u = vb.get_with_hints((shape[0], 1), "u", Init::Const(1.0))?;
        let u = normalize(&u.detach())?;
        Ok(Self {
            weight,
            bias,
            u: Mutex::new(u),
        })
    }

    /// `w / sigma` with sigma from one power iteration from the stored `u`; `update` stores the
    /// refined `u` (training). Gradients flow through `w` and sigma, as in Miyato et al.
    fn normalized(&self, update: bool) -> GanResult<Tensor> {
        let cout = self.weight.dim(0)?;
        let wm = self.weight.reshape((cout, ()))?;
        let wd = wm.detach();
        let u0 = self
            .u
            .lock()
            .map_err(|_| GanError::Invalid("spectral norm state lock poisoned".into()))?
            .clone();
        let v = normalize(&wd.t()?.matmul(&u0)?)?;
        let u = normalize(&wd.matmul(&v)?)?;
        if update {
            if let Ok(mut slot) = self.u.lock() {
                *slot = u.clone();
            }
        }
        let sigma = u.t()?.matmul(&wm.matmul(&v)?)?.reshape(())?;
        Ok(self.weight.broadcast_div(&sigma)?)
    }

    fn u_value(&self) -> GanResult<Tensor> {
        Ok(self
            .u
            .lock()
            .map_err(|_| GanError::Invalid("spectral norm state lock poisoned".into()))?
            .clone())
    }
}

fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = (x.sqr()?.sum_all()? + 1e-24)?.sqrt()?;
    x.broadcast_div(&n)
}

/// The discriminator (spectral norm on every layer).
pub struct Discriminator {
    cfg: GanConfig,
    convs: Vec<SpectralWeight>,
    head: SpectralWeight,
    names: Vec<String>,
}

impl Discriminator {
    /// Creates (or loads) the layers under `conv.{0..3}` and `head` of `vb`.
    pub fn new(vb: VarBuilder, cfg: GanConfig) -> GanResult<Self> {
        cfg.validate()?;
        let d = cfg.d_base;
        let chans = [3, d, 2 * d, 4 * d, 8 * d];
        let mut convs = Vec::with_capacity(4);
        let mut names = Vec::new();
        for i in 0..4 {
            let name = format!("conv.{i}");
            convs.push(SpectralWeight::new(
                &vb.pp(&name),
                &[chans[i + 1], chans[i], 4, 4],
                chans[i] * 16,
            )?);
            names.push(name);
        }
        let f = cfg.feat();
        let head = SpectralWeight::new(&vb.pp("head"), &[1, 8 * d * f * f], 8 * d * f * f)?;
        names.push("head".into());
        Ok(Self {
            cfg,
            convs,
            head,
            names,
        })
    }

    /// Logits `[n]` of images `[n, 3, s, s]` in `[0, 1]`; `update` refreshes the spectral norm
    /// estimates (once per training step, on the real batch).
    pub fn forward(&self, x: &Tensor, update: bool) -> GanResult<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let s = self.cfg.image_size;
        if c != 3 || h != s || w != s {
            return Err(GanError::Invalid(format!(
                "discriminator expects [n, 3, {s}, {s}], got [_, {c}, {h}, {w}]"
            )));
        }
        let down = ConvConfig {
            padding: 1,
            stride: 2,
            dilation: 1,
        };
        let mut h = ((x * 2.0)? - 1.0)?;
        for conv in &self.convs {
            let w = conv.normalized(update)?;
            h = conv2d(&h, &w, Some(&conv.bias), down, Activation::LeakyRelu(0.2))?;
        }
        let h = h.flatten_from(1)?;
        let w = self.head.normalized(update)?;
        let y = h.matmul(&w.t()?)?.broadcast_add(&self.head.bias)?;
        Ok(y.squeeze(D::Minus1)?)
    }

    /// The power-iteration vectors by variable name (`<layer>.u`), for saving.
    pub fn spectral_state(&self) -> GanResult<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, layer) in self
            .names
            .iter()
            .zip(self.convs.iter().chain(std::iter::once(&self.head)))
        {
            out.push((format!("{name}.u"), layer.u_value()?));
        }
        Ok(out)
    }

    /// Restores vectors saved by [`Discriminator::spectral_state`] (names without the `d.`).
    pub fn set_spectral_state(&self, state: &HashMap<String, Tensor>) -> GanResult<()> {
        for (name, layer) in self
            .names
            .iter()
            .zip(self.convs.iter().chain(std::iter::once(&self.head)))
        {
            if let Some(u) = state.get(&format!("{name}.u")) {
                let u = u.to_dtype(DType::F32)?;
                if u.dims() != [layer.weight.dim(0)?, 1] {
                    return Err(GanError::Invalid(format!(
                        "spectral state {name}.u has shape {:?}",
                        u.dims()
                    )));
                }
                *layer
                    .u
                    .lock()
                    .map_err(|_| GanError::Invalid("spectral norm state lock poisoned".into()))? =
                    normalize(&u)?;
            }
        }
        Ok(())
    }
}

/// The adversarial objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GanLoss {
    /// Goodfellow's minimax game: D maximises `log D(x) + log(1 - D(G(z)))`, G minimises
    /// `log(1 - D(G(z)))` (saturates early in training).
    Minimax,
    /// The same D loss; G maximises `log D(G(z))` instead (the non-saturating form).
    #[default]
    NonSaturating,
    /// Hinge: D minimises `relu(1 - D(x)) + relu(1 + D(G(z)))`, G minimises `-D(G(z))`.
    Hinge,
}

impl GanLoss {
    /// The discriminator's loss (batch mean) from real and fake logits.
    pub fn d_loss(self, real: &Tensor, fake: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            GanLoss::Minimax | GanLoss::NonSaturating => {
                // -log sigmoid(r) - log(1 - sigmoid(f)) = softplus(-r) + softplus(f)
                softplus(&real.neg()?)?.mean_all()? + softplus(fake)?.mean_all()?
            }
            GanLoss::Hinge => {
                (1.0 - real)?.relu()?.mean_all()? + (fake + 1.0)?.relu()?.mean_all()?
            }
        }
    }

    /// The generator's loss (batch mean) from the logits of its samples.
    pub fn g_loss(self, fake: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // log(1 - sigmoid(f)) = -softplus(f)
            GanLoss::Minimax => softplus(fake)?.neg()?.mean_all(),
            // -log sigmoid(f) = softplus(-f)
            GanLoss::NonSaturating => softplus(&fake.neg()?)?.mean_all(),
            GanLoss::Hinge => fake.neg()?.mean_all(),
        }
    }

    /// Name for manifests and the UI.
    pub fn label(self) -> &'static str {
        match self {
            GanLoss::Minimax => "minimax",
            GanLoss::NonSaturating => "non-saturating",
            GanLoss::Hinge => "hinge",
        }
    }
}

/// `ln(1 + e^x)`, stable for large `|x|`: `max(x, 0) + ln(1 + e^-|x|)`.
pub fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Held-out quality figures stored in the manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GanMetrics {
    /// Samples and held-out faces compared.
    pub fd_images: usize,
    /// Fréchet distance between the features of `fd_images` samples and as many held-out
    /// faces (features: posterior means of our face VAE's encoder, 128-d).
    pub fd_samples_vs_val: f64,
    /// The same distance between training faces and held-out faces: the floor a perfect
    /// generator would reach with this many images.
    pub fd_train_vs_val: f64,
    /// The same distance for the face VAE's samples, for comparison.
    pub fd_vae_samples_vs_val: Option<f64>,
    /// Mean pixel RMSE from each of `nn_images` samples to its nearest training face.
    pub nn_rmse_samples_to_train: f64,
    /// Mean pixel RMSE from each of `nn_images` held-out faces to its nearest training face
    /// (samples much closer than this would be copies).
    pub nn_rmse_val_to_train: f64,
    /// Samples and held-out faces used in the nearest-neighbour check.
    pub nn_images: usize,
    /// Smallest sample-to-training RMSE seen.
    pub nn_rmse_min_sample: f64,
}

/// The `weights/<id>.json` manifest of a trained GAN.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GanManifest {
    /// Always `"gan"`.
    pub family: String,
    /// One-line description of the layers.
    pub architecture: String,
    /// The sizes the weights were trained with.
    pub config: GanConfig,
    /// Trainable values of the generator.
    pub params_g: usize,
    /// Trainable values of the discriminator.
    pub params_d: usize,
    /// Training data and split.
    pub data: String,
    /// The data's licence terms, which the weights inherit.
    pub data_license: String,
    /// Loss, optimiser, stabilisers.
    pub objective: String,
    /// The command lines of every stage.
    pub commands: Vec<String>,
    /// Optimiser steps (one D and one G update each).
    pub steps: u64,
    /// Batch size.
    pub batch: usize,
    /// Seed of initialisation, split, batches and noise.
    pub seed: u64,
    /// Cumulative wall-clock training seconds.
    pub train_seconds: f64,
    /// Where it was trained.
    pub hardware: String,
    /// What the weights file holds.
    pub weights_format: String,
    /// The loss curves' shape, in words, with figures.
    pub curves: String,
    /// Quality figures.
    pub metrics: GanMetrics,
}

impl GanManifest {
    /// Reads a manifest.
    pub fn read(path: &Path) -> GanResult<Self> {
        Ok(crate::jsonfile::read(path)?)
    }

    /// Writes the manifest as pretty JSON (atomically).
    pub fn write(&self, path: &Path) -> GanResult<()> {
        Ok(crate::jsonfile::write(path, self)?)
    }
}

impl From<crate::jsonfile::JsonFileError> for GanError {
    fn from(e: crate::jsonfile::JsonFileError) -> Self {
        use crate::jsonfile::JsonFileError as J;
        match e {
            J::Io { path, source } => Self::Io { path, source },
            J::Json { path, source } => Self::Manifest { path, source },
        }
    }
}

/// Variables with their names, sorted.
pub type NamedVars = Vec<(String, Var)>;

/// A GAN with its two variable maps (kept apart so each optimiser sees only its own network).
pub struct LoadedGan {
    /// The generator.
    pub g: Generator,
    /// The discriminator.
    pub d: Discriminator,
    /// The generator's variables.
    pub g_vars: VarMap,
    /// The discriminator's variables.
    pub d_vars: VarMap,
}

impl LoadedGan {
    /// A freshly initialised GAN (seeded, reproducible).
    pub fn fresh(cfg: GanConfig, seed: u64, dev: &Device) -> GanResult<Self> {
        let g_vars = VarMap::new();
        let d_vars = VarMap::new();
        let g = Generator::new(VarBuilder::from_varmap(&g_vars, DType::F32, dev), cfg)?;
        let d = Discriminator::new(VarBuilder::from_varmap(&d_vars, DType::F32, dev), cfg)?;
        // The `u` vectors are state, not parameters: keep them out of the optimiser.
        remove_spectral_vars(&d_vars)?;
        seeded_init(&g_vars, seed)?;
        seeded_init(&d_vars, seed ^ 0xD15C)?;
        Ok(Self {
            g,
            d,
            g_vars,
            d_vars,
        })
    }

    /// The generator's and discriminator's trainable variables, sorted by name.
    pub fn vars(&self) -> GanResult<(NamedVars, NamedVars)> {
        Ok((sorted_vars(&self.g_vars)?, sorted_vars(&self.d_vars)?))
    }

    /// All tensors under `g.` / `d.` names (f32), spectral vectors included.
    pub fn tensors(&self) -> GanResult<HashMap<String, Tensor>> {
        let mut map = HashMap::new();
        for (name, var) in sorted_vars(&self.g_vars)? {
            map.insert(format!("g.{name}"), var.as_tensor().clone());
        }
        for (name, var) in sorted_vars(&self.d_vars)? {
            map.insert(format!("d.{name}"), var.as_tensor().clone());
        }
        for (name, u) in self.d.spectral_state()? {
            map.insert(format!("d.{name}"), u);
        }
        Ok(map)
    }

    /// Sets every variable from `tensors` (as written by [`LoadedGan::tensors`], any float
    /// dtype), checking names, shapes and finiteness.
    pub fn set_from(&self, tensors: &HashMap<String, Tensor>, path: &Path) -> GanResult<()> {
        let bad = |reason: String| GanError::Weights {
            path: path.to_owned(),
            reason,
        };
        for (prefix, vars) in [("g", &self.g_vars), ("d", &self.d_vars)] {
            for (name, var) in sorted_vars(vars)? {
                let key = format!("{prefix}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| bad(format!("has no tensor '{key}'")))?;
                if t.shape() != var.shape() {
                    return Err(bad(format!(
                        "'{key}' is {:?}, the model expects {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                let t = t.to_dtype(DType::F32)?;
                if !super::all_finite(&t)? {
                    return Err(bad(format!(
                        "'{key}' holds NaN or infinite values (a diverged or damaged file)"
                    )));
                }
                var.set(&t)?;
            }
        }
        let spectral: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("d.")?.to_owned(), v.clone())))
            .filter(|(k, _)| k.ends_with(".u"))
            .collect();
        for (k, v) in &spectral {
            if !super::all_finite(v)? {
                return Err(bad(format!("'d.{k}' holds NaN or infinite values")));
            }
        }
        self.d
            .set_spectral_state(&spectral)
            .map_err(|e| bad(e.to_string()))
    }

    /// Loads a GAN of sizes `cfg` from a safetensors file written by [`LoadedGan::save`].
    pub fn load(cfg: GanConfig, weights: &Path, dev: &Device) -> GanResult<Self> {
        if !weights.is_file() {
            return Err(GanError::Io {
                path: weights.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "weights not found"),
            });
        }
        cfg.validate()?;
        let tensors =
            candle_core::safetensors::load(weights, dev).map_err(|e| GanError::Weights {
                path: weights.to_owned(),
                reason: format!("not a readable safetensors file ({e})"),
            })?;
        let gan = Self::fresh(cfg, 0, dev)?;
        gan.set_from(&tensors, weights)?;
        Ok(gan)
    }

    /// Loads `<dir>/<id>.safetensors` with the sizes of `<dir>/<id>.json`.
    pub fn load_model(dir: &Path, id: &str, dev: &Device) -> GanResult<(Self, GanManifest)> {
        let manifest = GanManifest::read(&dir.join(format!("{id}.json")))?;
        let gan = Self::load(manifest.config, &dir.join(format!("{id}.safetensors")), dev)?;
        Ok((gan, manifest))
    }

    /// Saves every tensor as f32 (checkpoints) or f16 (the shipped file).
    pub fn save(&self, path: &Path, half: bool) -> GanResult<()> {
        let mut map = self.tensors()?;
        if half {
            for t in map.values_mut() {
                *t = t.to_dtype(DType::F16)?;
            }
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Samples for `seed`: `n` codes from N(0, I) and their images `[n, 3, s, s]`.
    pub fn sample(&self, seed: u64, n: usize, dev: &Device) -> GanResult<(Tensor, Tensor)> {
        let z = codes_for_seed(seed, n, self.g.config().latent, dev)?;
        let x = self.g.forward(&z)?;
        Ok((z, x))
    }
}

/// `n` standard-normal codes for `seed` (same seed, same codes), `[n, latent]`.
pub fn codes_for_seed(seed: u64, n: usize, latent: usize, dev: &Device) -> GanResult<Tensor> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Ok(seeded_normal(&mut rng, n, latent, dev)?)
}

fn remove_spectral_vars(vars: &VarMap) -> GanResult<()> {
    let mut data = vars
        .data()
        .lock()
        .map_err(|_| GanError::Invalid("the variable map's lock is poisoned".into()))?;
    data.retain(|name, _| !name.ends_with(".u"));
    Ok(())
}

/// Number of values in a variable list.
pub fn count(vars: &[(String, Var)]) -> usize {
    vars.iter().map(|(_, v)| v.elem_count()).sum()
}

/// GANSpace sliders (Härkönen et al. 2020): principal directions of the generator's early
/// feature map, carried back to the latent space.
///
/// `n` codes from N(0, I) (seeded) are mapped to their early features `y` (the first feature
/// map, [`Generator::early`]); the top `k` principal components of `y` come from a subspace
/// iteration; each sample's coordinates `x_j` along them are regressed on its code, giving a
/// latent direction `u_j = Z^T x_j / (n var_j)` per component. Moving z by `t * sigma_j * u_j`
/// moves the features by about `t` standard deviations along component j. The result is a
/// [`LatentPca`] with mean 0, unit `directions` (`u_j / |u_j|`, not orthogonal in general) and
/// `sigmas` `sd_j * |u_j|`, so the explorer's sliders use it unchanged.
pub fn ganspace(g: &Generator, n: usize, k: usize, seed: u64) -> GanResult<LatentPca> {
    let dev = Device::Cpu;
    let latent = g.config().latent;
    let n = n.max(k + 2);
    let z = codes_for_seed(seed, n, latent, &dev)?;
    let y = g.early(&z)?.flatten_from(1)?;
    let dims = y.dim(1)?;
    let k = k.min(dims).min(latent);
    let yc = y.broadcast_sub(&y.mean_keepdim(0)?)?;
    // Subspace iteration for the top-k right singular vectors of the centred features.
    let mut q = codes_for_seed(seed ^ 0x5BAC, dims, k, &dev)?; // [dims, k]
    for _ in 0..40 {
        let p = yc.t()?.matmul(&yc.matmul(&q)?)?;
        q = orthonormal_columns(&p)?;
    }
    // Order (and rotate) the basis by the variance of the coordinates.
    let x = yc.matmul(&q)?; // [n, k]
    let cov: Vec<Vec<f32>> = (x.t()?.matmul(&x)? / (n - 1) as f64)?.to_vec2()?;
    let flat: Vec<f64> = cov.iter().flatten().map(|v| f64::from(*v)).collect();
    let (vals, vecs) = super::latent_pca::jacobi_eigen(flat, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
    let rot: Vec<f32> = (0..k)
        .flat_map(|i| order.iter().map(move |&j| (i, j)))
        .map(|(i, j)| vecs[i * k + j] as f32)
        .collect();
    let rot = Tensor::from_vec(rot, (k, k), &dev)?;
    let x = x.matmul(&rot)?; // coordinates along the sorted components
    let zt: Vec<Vec<f32>> = z.t()?.matmul(&x)?.to_vec2()?; // [latent, k]
    let mut directions = Vec::with_capacity(k);
    let mut sigmas = Vec::with_capacity(k);
    for (rank, &j) in order.iter().enumerate() {
        let var = vals[j].max(1e-12);
        let u: Vec<f64> = (0..latent)
            .map(|i| f64::from(zt[i][rank]) / (n as f64 * var))
            .collect();
        let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        directions.push(u.iter().map(|v| (v / norm) as f32).collect());
        sigmas.push((var.sqrt() * norm) as f32);
    }
    Ok(LatentPca {
        mean: vec![0.0; latent],
        directions,
        sigmas,
    })
}

/// Gram-Schmidt on the columns of `[rows, k]`.
fn orthonormal_columns(p: &Tensor) -> GanResult<Tensor> {
    let (rows, k) = p.dims2()?;
    let cols: Vec<Vec<f32>> = p.t()?.to_vec2()?;
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(k);
    for c in cols {
        let mut v: Vec<f64> = c.iter().map(|x| f64::from(*x)).collect();
        for _ in 0..2 {
            for o in &out {
                let d: f64 = v.iter().zip(o).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(o).for_each(|(a, b)| *a -= d * b);
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        out.push(v.iter().map(|a| a / norm).collect());
    }
    let flat: Vec<f32> = out.iter().flatten().map(|v| *v as f32).collect();
    Ok(Tensor::from_vec(flat, (k, rows), &Device::Cpu)?
        .t()?
        .contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GanConfig {
        GanConfig {
            image_size: 16,
            latent: 8,
            g_base: 2,
            d_base: 2,
        }
    }

    #[test]
    fn shapes_and_range() {
        let dev = Device::Cpu;
        let gan = LoadedGan::fresh(tiny(), 1, &dev).unwrap();
        let (_, x) = gan.sample(3, 5, &dev).unwrap();
        assert_eq!(x.dims(), [5, 3, 16, 16]);
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
        let logits = gan.d.forward(&x, true).unwrap();
        assert_eq!(logits.dims(), [5]);
    }

    #[test]
    fn spectral_norm_bounds_the_largest_singular_value() {
        let dev = Device::Cpu;
        let gan = LoadedGan::fresh(tiny(), 1, &dev).unwrap();
        let layer = &gan.d.convs[1];
        // Many power iterations converge u; the normalised weight then has sigma_max ~ 1.
        let mut w = layer.normalized(true).unwrap();
        for _ in 0..200 {
            w = layer.normalized(true).unwrap();
        }
        let cout = w.dim(0).unwrap();
        let m = w.reshape((cout, ())).unwrap();
        // Largest eigenvalue of m m^T by power iteration in f64, independently.
        let a: Vec<Vec<f32>> = m.matmul(&m.t().unwrap()).unwrap().to_vec2().unwrap();
        let mut x = vec![1.0f64; cout];
        let mut lambda = 0.0;
        for _ in 0..500 {
            let y: Vec<f64> = (0..cout)
                .map(|i| (0..cout).map(|j| f64::from(a[i][j]) * x[j]).sum())
                .collect();
            lambda = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            x = y.iter().map(|v| v / lambda).collect();
        }
        assert!(
            (lambda.sqrt() - 1.0).abs() < 1e-3,
            "sigma_max {}",
            lambda.sqrt()
        );
    }

    #[test]
    fn save_load_round_trip_keeps_outputs() {
        let dev = Device::Cpu;
        let gan = LoadedGan::fresh(tiny(), 5, &dev).unwrap();
        let (_, x) = gan.sample(9, 2, &dev).unwrap();
        gan.d.forward(&x, true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.safetensors");
        gan.save(&path, false).unwrap();
        let back = LoadedGan::load(tiny(), &path, &dev).unwrap();
        let (_, y) = back.sample(9, 2, &dev).unwrap();
        let diff = (x - &y).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let a = gan.d.forward(&y, false).unwrap();
        let b = back.d.forward(&y, false).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn losses_match_hand_computed_values() {
        let dev = Device::Cpu;
        let real = Tensor::new(&[2.0f32, -1.0], &dev).unwrap();
        let fake = Tensor::new(&[0.5f32, -3.0], &dev).unwrap();
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let scalar = |t: Tensor| f64::from(t.to_scalar::<f32>().unwrap());
        let d_ns = (sp(-2.0) + sp(1.0)) / 2.0 + (sp(0.5) + sp(-3.0)) / 2.0;
        let got = scalar(GanLoss::NonSaturating.d_loss(&real, &fake).unwrap());
        assert!((got - d_ns).abs() < 1e-5, "{got} vs {d_ns}");
        assert!((scalar(GanLoss::Minimax.d_loss(&real, &fake).unwrap()) - d_ns).abs() < 1e-5);
        let g_ns = (sp(-0.5) + sp(3.0)) / 2.0;
        assert!((scalar(GanLoss::NonSaturating.g_loss(&fake).unwrap()) - g_ns).abs() < 1e-5);
        let g_mm = -(sp(0.5) + sp(-3.0)) / 2.0;
        assert!((scalar(GanLoss::Minimax.g_loss(&fake).unwrap()) - g_mm).abs() < 1e-5);
        // Hinge: relu(1-2)=0, relu(1+1)=2 -> 1; relu(1.5)=1.5, relu(-2)=0 -> 0.75.
        assert!((scalar(GanLoss::Hinge.d_loss(&real, &fake).unwrap()) - 1.75).abs() < 1e-6);
        assert!((scalar(GanLoss::Hinge.g_loss(&fake).unwrap()) - 1.25).abs() < 1e-6);
        // Softplus stays finite far out.
        let big = Tensor::new(&[100.0f32, -100.0], &dev).unwrap();
        let v: Vec<f32> = softplus(&big).unwrap().to_vec1().unwrap();
        assert!((v[0] - 100.0).abs() < 1e-4 && v[1] >= 0.0 && v[1] < 1e-30);
    }

    #[test]
    fn ganspace_directions_move_the_features_along_their_component() {
        let dev = Device::Cpu;
        let gan = LoadedGan::fresh(tiny(), 4, &dev).unwrap();
        let pca = ganspace(&gan.g, 400, 3, 1).unwrap();
        assert_eq!(pca.directions.len(), 3);
        assert!(pca.sigmas.windows(2).all(|w| w[0] > 0.0 && w[1] > 0.0));
        for d in &pca.directions {
            let n: f32 = d.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        // Moving along the first slider changes the image; zero coordinates change nothing.
        let z0 = codes_for_seed(9, 1, 8, &dev).unwrap();
        let base: Vec<f32> = z0.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(pca.offset(&base, &[0.0, 0.0, 0.0]), base);
        let moved = pca.offset(&base, &[3.0]);
        let a = gan.g.forward(&z0).unwrap();
        let b = gan
            .g
            .forward(&Tensor::from_vec(moved, (1, 8), &dev).unwrap())
            .unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 1e-4);
    }

    #[test]
    fn sampling_is_deterministic_for_a_seed() {
        let dev = Device::Cpu;
        let gan = LoadedGan::fresh(tiny(), 2, &dev).unwrap();
        let (za, a) = gan.sample(11, 3, &dev).unwrap();
        let (zb, b) = gan.sample(11, 3, &dev).unwrap();
        let (zc, _) = gan.sample(12, 3, &dev).unwrap();
        let same = |p: &Tensor, q: &Tensor| {
            let d = (p - q).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap() == 0.0
        };
        assert!(same(&za, &zb) && same(&a, &b));
        assert!(!same(&za, &zc));
    }
}
