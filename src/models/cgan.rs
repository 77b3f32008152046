//! The conditional GAN inpainter: a gated-convolution encoder-decoder generator
//! `G(x, mask, z)` for irregular holes (DeepFill v2 style) and a spectrally normalised
//! PatchGAN discriminator used only in training.
//!
//! Generator (base width `b`, default 16; resolutions relative to the input):
//! ```text
//! in  [x*(1-m) in [-1,1], m, z]  5 ch
//! e1  gated 5x5            5 -> b      1/1
//! e2  gated 3x3 stride 2   b -> 3b     1/2
//! e3  gated 3x3            3b -> 3b    1/2   (skip s2)
//! e4  gated 3x3 stride 2   3b -> 6b    1/4
//! mid gated 3x3 dilation 2, 4, 8, 16, then 1   6b -> 6b   1/4
//! d1  up 2x + gated 3x3    6b -> 3b    1/2
//! d2  gated 3x3 on [d1, s2] 6b -> 3b   1/2
//! d3  up 2x + gated 3x3    3b -> b     1/1
//! d4  gated 3x3 on [d3, e1] 2b -> b    1/1
//! out conv 3x3 b -> 3, (tanh + 1) / 2
//! ```
//! The dilated middle sees about 130 input pixels, enough for the holes of a 128-pixel crop.
//! Any image size works: inputs are padded (edge replication) to a multiple of 4 and the output
//! cropped back. The result is composited so known pixels are the input's, bit for bit.

use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::conv::{conv2d, Activation, ConvConfig};
use super::layers::{Conv2dFast, GatedConv2d, UpConv};

/// Why a cGAN model could not be built, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum CganError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The weights file is missing, unreadable or does not fit the architecture.
    #[error("cGAN weights {path}: {reason}")]
    Weights {
        /// The weights file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The settings or inputs are not usable.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the cGAN model.
pub type CganResult<T> = Result<T, CganError>;

/// Sizes of the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorConfig {
    /// Channels at full resolution (3x at 1/2, 6x at 1/4).
    pub base: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self { base: 16 }
    }
}

fn pad(p: usize) -> ConvConfig {
    ConvConfig {
        padding: p,
        ..ConvConfig::default()
    }
}

/// The inpainting generator (see the module docs for the layout).
#[derive(Debug)]
pub struct Generator {
    e1: GatedConv2d,
    e2: GatedConv2d,
    e3: GatedConv2d,
    e4: GatedConv2d,
    mid: Vec<GatedConv2d>,
    d1: UpConv,
    d2: GatedConv2d,
    d3: UpConv,
    d4: GatedConv2d,
    out: Conv2dFast,
}

/// What the generator returns.
#[derive(Debug)]
pub struct GenOutput {
    /// The network's own prediction for every pixel, `[n, 3, h, w]` in `[0, 1]`.
    pub raw: Tensor,
    /// `raw` in the holes and the input elsewhere.
    pub composite: Tensor,
}

impl Generator {
    /// Creates (or loads, depending on `vb`) a generator.
    pub fn new(vb: VarBuilder, cfg: GeneratorConfig) -> CganResult<Self> {
        let b = cfg.base;
        if b == 0 {
            return Err(CganError::Invalid(
                "generator base width must be > 0".into(),
            ));
        }
        let s2 = ConvConfig {
            padding: 1,
            stride: 2,
            dilation: 1,
        };
        let mut mid = Vec::new();
        for (i, d) in [2usize, 4, 8, 16, 1].into_iter().enumerate() {
            let c = ConvConfig {
                padding: d,
                stride: 1,
                dilation: d,
            };
            mid.push(GatedConv2d::new(
                vb.pp(format!("mid{i}")),
                6 * b,
                6 * b,
                3,
                c,
            )?);
        }
        Ok(Self {
            e1: GatedConv2d::new(vb.pp("e1"), 5, b, 5, pad(2))?,
            e2: GatedConv2d::new(vb.pp("e2"), b, 3 * b, 3, s2)?,
            e3: GatedConv2d::new(vb.pp("e3"), 3 * b, 3 * b, 3, pad(1))?,
            e4: GatedConv2d::new(vb.pp("e4"), 3 * b, 6 * b, 3, s2)?,
            mid,
            d1: UpConv::new(vb.pp("d1"), 6 * b, 3 * b)?,
            d2: GatedConv2d::new(vb.pp("d2"), 6 * b, 3 * b, 3, pad(1))?,
            d3: UpConv::new(vb.pp("d3"), 3 * b, b)?,
            d4: GatedConv2d::new(vb.pp("d4"), 2 * b, b, 3, pad(1))?,
            out: Conv2dFast::new(vb.pp("out"), b, 3, 3, pad(1), Activation::Identity)?,
        })
    }

    /// Runs the generator: `image` `[n, 3, h, w]` in `[0, 1]` (hole content is ignored),
    /// `mask` `[n, 1, h, w]` with 1 = hole, `z` `[n, 1, h, w]` standard-normal noise (as in
    /// training; see [`noise_map`] and [`INFERENCE_NOISE_SEED`]). Any `h, w >= 1`.
    pub fn forward(&self, image: &Tensor, mask: &Tensor, z: &Tensor) -> CganResult<GenOutput> {
        let (n, c, h, w) = image.dims4()?;
        if c != 3 || mask.dims4()? != (n, 1, h, w) || z.dims4()? != (n, 1, h, w) {
            return Err(CganError::Invalid(format!(
                "generator wants image [n,3,h,w], mask and z [n,1,h,w]; got {:?}, {:?}, {:?}",
                image.dims(),
                mask.dims(),
                z.dims()
            )));
        }
        let keep = (1.0 - mask)?;
        let x = ((image * 2.0)? - 1.0)?.broadcast_mul(&keep)?;
        let input = Tensor::cat(&[&x, mask, z], 1)?;
        // Pad to a multiple of 4 by edge replication (two stride-2 stages).
        let (ph, pw) = (h.div_ceil(4) * 4 - h, w.div_ceil(4) * 4 - w);
        let input = if ph > 0 || pw > 0 {
            input.pad_with_same(2, 0, ph)?.pad_with_same(3, 0, pw)?
        } else {
            input
        };
        let e1 = self.e1.forward(&input)?;
        let e2 = self.e2.forward(&e1)?;
        let s2 = self.e3.forward(&e2)?;
        let mut y = self.e4.forward(&s2)?;
        for layer in &self.mid {
            y = layer.forward(&y)?;
        }
        let y = self.d1.forward(&y)?;
        let y = self.d2.forward(&Tensor::cat(&[&y, &s2], 1)?)?;
        let y = self.d3.forward(&y)?;
        let y = self.d4.forward(&Tensor::cat(&[&y, &e1], 1)?)?;
        let y = self.out.forward(&y)?;
        let y = if ph > 0 || pw > 0 {
            y.narrow(2, 0, h)?.narrow(3, 0, w)?
        } else {
            y
        };
        let raw = ((y.tanh()? + 1.0)? * 0.5)?;
        let composite = (raw.broadcast_mul(mask)? + image.broadcast_mul(&keep)?)?;
        Ok(GenOutput { raw, composite })
    }
}

/// Largest generator base width [`LoadedGenerator::load`] accepts: far above any trained model,
/// low enough that no layer size overflows.
pub const MAX_BASE: usize = 4096;

/// A generator with its variables, loadable from and savable to safetensors.
pub struct LoadedGenerator {
    /// The variables (names as in the weights file).
    pub varmap: VarMap,
    /// The network.
    pub gen: Generator,
    /// Its sizes.
    pub cfg: GeneratorConfig,
}

impl LoadedGenerator {
    /// A freshly initialised generator, reproducible for a seed (see [`seeded_init`]).
    pub fn fresh(cfg: GeneratorConfig, seed: u64, dev: &Device) -> CganResult<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let gen = Generator::new(vb, cfg)?;
        seeded_init(&varmap, seed)?;
        Ok(Self { varmap, gen, cfg })
    }

    /// Loads weights written by [`LoadedGenerator::save`]; a missing, corrupt or mismatched
    /// file gives [`CganError::Weights`].
    pub fn load(cfg: GeneratorConfig, path: &Path, dev: &Device) -> CganResult<Self> {
        let err = |reason: String| CganError::Weights {
            path: path.to_owned(),
            reason,
        };
        if !path.is_file() {
            return Err(err("file not found".into()));
        }
        if cfg.base > MAX_BASE {
            return Err(err(format!(
                "generator base width {} is over the limit of {MAX_BASE}",
                cfg.base
            )));
        }
        // Check the file against the architecture before allocating the model, so a size
        // that disagrees with the file is an error rather than a large allocation.
        let tensors = candle_core::safetensors::load(path, dev)
            .map_err(|e| err(format!("not a readable safetensors file ({e})")))?;
        Generator::new(VarBuilder::from_tensors(tensors, DType::F32, dev), cfg)
            .map_err(|e| err(format!("does not fit the architecture {cfg:?}: {e}")))?;
        let mut m = Self::fresh(cfg, 0, dev)?;
        m.varmap
            .load(path)
            .map_err(|e| err(format!("unreadable or wrong architecture ({e})")))?;
        for (name, var) in named_vars(&m.varmap, false)? {
            if !super::all_finite(var.as_tensor())? {
                return Err(err(format!(
                    "'{name}' holds NaN or infinite values (a diverged or damaged file)"
                )));
            }
        }
        m.cfg = cfg;
        Ok(m)
    }

    /// Writes the weights as safetensors.
    pub fn save(&self, path: &Path) -> CganResult<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| CganError::Weights {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
        self.varmap.save(path).map_err(|e| CganError::Weights {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Number of trainable values.
    pub fn param_count(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }
}

/// A convolution whose weight is divided by its largest singular value (Miyato et al. 2018),
/// estimated by one power-iteration step per training forward pass. The running left singular
/// vector `u` is a variable named `sn_u` (saved with the weights, never optimised).
#[derive(Debug)]
pub struct SnConv2d {
    weight: Tensor,
    bias: Tensor,
    u: candle_core::Var,
    cfg: ConvConfig,
    act: Activation,
    /// Whether forward passes update `u` (training) or only read it.
    update: Mutex<bool>,
}

impl SnConv2d {
    /// A spectrally normalised `kernel x kernel` convolution from `cin` to `cout` channels.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        cfg: ConvConfig,
        act: Activation,
        u: candle_core::Var,
    ) -> CganResult<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, kernel, kernel),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = vb.get_with_hints(cout, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            u,
            cfg,
            act,
            update: Mutex::new(true),
        })
    }

    /// The weight divided by its estimated spectral norm (gradient flows through both).
    pub fn normalised_weight(&self) -> CganResult<Tensor> {
        let cout = self.weight.dim(0)?;
        let w2 = self.weight.reshape((cout, ()))?;
        let wd = w2.detach();
        let u = self.u.as_tensor().detach().reshape((1, cout))?;
        // v = normalise(W^T u), u' = normalise(W v); sigma = u'^T W v.
        let v = u.matmul(&wd)?;
        let v = v.broadcast_div(&(v.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?)?;
        let u_new = v.matmul(&wd.t()?)?;
        let u_new =
            u_new.broadcast_div(&(u_new.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?)?;
        let update = self.update.lock().map(|g| *g).unwrap_or(false);
        if update {
            self.u.set(&u_new.reshape(cout)?)?;
        }
        let sigma = u_new.detach().matmul(&w2)?.mul(&v.detach())?.sum_all()?;
        Ok(self.weight.broadcast_div(&sigma)?)
    }

    fn set_update(&self, on: bool) {
        if let Ok(mut g) = self.update.lock() {
            *g = on;
        }
    }

    /// Runs the convolution with the normalised weight.
    pub fn forward(&self, x: &Tensor) -> CganResult<Tensor> {
        let w = self.normalised_weight()?;
        Ok(conv2d(x, &w, Some(&self.bias), self.cfg, self.act)?)
    }
}

/// A PatchGAN discriminator (after SN-PatchGAN of DeepFill v2): five spectrally normalised 5x5
/// stride-2 convolutions with leaky ReLU and a 3x3 head, on `[image in [-1,1], mask]`, giving one score per
/// overlapping patch (about 1/32 of the input resolution).
#[derive(Debug)]
pub struct Discriminator {
    layers: Vec<SnConv2d>,
}

impl Discriminator {
    /// A discriminator with `base` channels in its first layer (then 2x, 4x, 4x, 4x). The
    /// spectral-norm vectors are created in `varmap` too, under `l<i>.sn_u`; call
    /// [`seeded_init`] on a fresh map to initialise them.
    pub fn new(vb: VarBuilder, varmap: &VarMap, base: usize) -> CganResult<Self> {
        let chans = [4, base, 2 * base, 4 * base, 4 * base, 4 * base];
        let s2 = ConvConfig {
            padding: 2,
            stride: 2,
            dilation: 1,
        };
        let mut layers = Vec::new();
        for i in 0..6 {
            // Five 5x5 stride-2 layers, then a 3x3 head giving the patch scores.
            let (cin, cout, k, cfg) = if i < 5 {
                (chans[i], chans[i + 1], 5, s2)
            } else {
                (chans[5], 1, 3, pad(1))
            };
            let name = format!("l{i}");
            vb.pp(&name)
                .get_with_hints(cout, "sn_u", candle_nn::Init::Const(1.0))?;
            let u = find_var(varmap, &format!("{name}.sn_u"))?;
            let act = if i < 5 {
                Activation::LeakyRelu(0.2)
            } else {
                Activation::Identity
            };
            layers.push(SnConv2d::new(vb.pp(&name), cin, cout, k, cfg, act, u)?);
        }
        Ok(Self { layers })
    }

    /// Whether forward passes advance the power iteration (on while training D).
    pub fn set_update(&self, on: bool) {
        for l in &self.layers {
            l.set_update(on);
        }
    }

    /// Patch scores `[n, 1, h', w']` for `image` `[n, 3, h, w]` in `[0, 1]` and `mask`
    /// `[n, 1, h, w]`.
    pub fn forward(&self, image: &Tensor, mask: &Tensor) -> CganResult<Tensor> {
        let x = ((image * 2.0)? - 1.0)?;
        let mut y = Tensor::cat(&[&x, mask], 1)?;
        for l in &self.layers {
            y = l.forward(&y)?;
        }
        Ok(y)
    }
}

fn find_var(varmap: &VarMap, name: &str) -> CganResult<candle_core::Var> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| CganError::Invalid("variable map lock poisoned".into()))?;
    data.get(name)
        .cloned()
        .ok_or_else(|| CganError::Invalid(format!("no variable {name}")))
}

/// Variables of `varmap` sorted by name, optionally leaving out the spectral-norm vectors.
pub fn named_vars(
    varmap: &VarMap,
    trainable_only: bool,
) -> CganResult<Vec<(String, candle_core::Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| CganError::Invalid("variable map lock poisoned".into()))?;
    let mut vars: Vec<_> = data
        .iter()
        .filter(|(k, _)| !trainable_only || !k.ends_with("sn_u"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// Seed of the noise map used for restoration. The generator is trained with standard-normal
/// noise in its `z` channel, so inference feeds the same distribution (a fixed seed keeps the
/// result deterministic); an all-zero `z` is off the training distribution and was measured to
/// cost several dB of hole-PSNR.
pub const INFERENCE_NOISE_SEED: u64 = 0x6b69_6e74;

/// A seeded standard-normal noise map `[n, 1, h, w]` for the generator's `z` input.
pub fn noise_map(n: usize, h: usize, w: usize, seed: u64, dev: &Device) -> CganResult<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    Ok(Tensor::from_vec(
        seeded_normal(&mut rng, n * h * w),
        (n, 1, h, w),
        dev,
    )?)
}

/// `count` standard-normal values from `rng` (Box-Muller): candle's CPU `randn` cannot be seeded.
pub fn seeded_normal(rng: &mut StdRng, count: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(count);
    while v.len() < count {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        v.push(r * c);
        if v.len() < count {
            v.push(r * s);
        }
    }
    v
}

/// Re-initialises every variable of `varmap` from `seed`: `*.weight` Kaiming-normal
/// (`std = sqrt(2 / fan_in)`), `*.bias` zero, `*.sn_u` a random unit vector.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> CganResult<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for (name, var) in named_vars(varmap, false)? {
        let shape = var.shape().clone();
        let count = shape.elem_count();
        let dims = shape.dims().to_vec();
        let values = if name.ends_with(".weight") {
            let fan = dims.iter().skip(1).product::<usize>().max(1) as f32;
            let std = (2.0 / fan).sqrt();
            seeded_normal(&mut rng, count)
                .into_iter()
                .map(|v| v * std)
                .collect()
        } else if name.ends_with("sn_u") {
            let v = seeded_normal(&mut rng, count);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / norm).collect()
        } else {
            vec![0.0f32; count]
        };
        var.set(&Tensor::from_vec(values, shape, var.device())?)?;
    }
    Ok(())
}

/// A discriminator with its variables (spectral-norm vectors included), freshly initialised.
pub struct LoadedDiscriminator {
    /// The variables.
    pub varmap: VarMap,
    /// The network.
    pub disc: Discriminator,
    /// Channels of its first layer.
    pub base: usize,
}

impl LoadedDiscriminator {
    /// A fresh discriminator, reproducible for a seed.
    pub fn fresh(base: usize, seed: u64, dev: &Device) -> CganResult<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let disc = Discriminator::new(vb, &varmap, base)?;
        seeded_init(&varmap, seed)?;
        Ok(Self { varmap, disc, base })
    }

    /// Number of trainable values (the power-iteration vectors left out).
    pub fn param_count(&self) -> CganResult<usize> {
        Ok(named_vars(&self.varmap, true)?
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum())
    }
}
