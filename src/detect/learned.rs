//! The learned damage detector: a tiny U-Net on our fast convolutions that outputs one damage
//! logit per pixel.
//!
//! The network never runs at full resolution: the input is folded 2x2 into channels
//! (space-to-depth, lossless: a 1-pixel hair stays visible), the U-Net runs at 1/2, 1/4 and
//! 1/8 of the scan, and its last layer predicts the four logits of each 2x2 block, unfolded back
//! to full resolution. That quarters the cost of the widest layers, which is what makes a
//! 24-megapixel scan affordable on two cores.
//!
//! ```text
//! in   RGB in [-1, 1], 2x2 space-to-depth          12 ch   1/2
//! e1   conv 3x3                 12 -> b    relu            1/2
//! e2   conv 3x3 stride 2         b -> 2b   relu            1/4
//! e3   conv 3x3                 2b -> 2b   relu            1/4   (skip s4)
//! e4   conv 3x3 stride 2        2b -> 3b   relu            1/8
//! m1   conv 3x3                 3b -> 3b   relu            1/8
//! m2   conv 3x3 dilation 2      3b -> 3b   relu            1/8
//! u2   conv 1x1 3b -> 2b at 1/8, nearest 2x, + s4, relu         1/4
//! d2   conv 3x3                 2b -> 2b   relu            1/4
//! u1   conv 1x1 2b -> b at 1/4, nearest 2x, + e1, relu          1/2
//! d1   conv 3x3                  b -> b    relu            1/2
//! out  conv 1x1                  b -> 4    logits of each 2x2 block, depth-to-space
//! ```
//! A 1x1 conv commutes with nearest upsampling, so it runs before the upsample; skips are added
//! rather than concatenated. The receptive field radius is about 50 pixels; [`Learned`] uses a
//! 64-pixel tile halo and 8-aligned tiles, so tiled detection equals a single pass. Any size
//! works: inputs are padded to a multiple of 8 by edge replication and the output cropped back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::{DetectError, Detector};
use crate::imaging::ImageF32;
use crate::models::conv::{upsample_nearest2x, Activation, ConvConfig};
use crate::models::layers::Conv2dFast;

/// Model id of the shipped detector (`weights/detect-damage.*`).
pub const MODEL_ID: &str = "detect-damage";

/// Sizes of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetectNetConfig {
    /// Channels at 1/2 resolution (2x at 1/4, 3x at 1/8).
    pub base: usize,
}

impl Default for DetectNetConfig {
    fn default() -> Self {
        Self { base: 16 }
    }
}

/// One-line architecture for manifests.
pub fn architecture(cfg: &DetectNetConfig) -> String {
    let b = cfg.base;
    format!(
        "tiny U-Net on our fast convs, never at full resolution: RGB in [-1,1] folded 2x2 \
         (space-to-depth, 12 ch at 1/2) -> conv3x3 {b} (1/2) -> conv3x3 s2 {b2} -> conv3x3 {b2} \
         (1/4) -> conv3x3 s2 {b3} -> conv3x3 {b3} -> conv3x3 dil2 {b3} (1/8) -> conv1x1 {b2} + \
         nearest-up + skip -> conv3x3 {b2} (1/4) -> conv1x1 {b} + nearest-up + skip -> conv3x3 \
         {b} (1/2) -> conv1x1 4 logits per 2x2 block (depth-to-space); relu everywhere; \
         receptive field radius about 50 px",
        b2 = 2 * b,
        b3 = 3 * b,
    )
}

fn cfg(padding: usize, stride: usize, dilation: usize) -> ConvConfig {
    ConvConfig {
        padding,
        stride,
        dilation,
    }
}

/// The detection network.
#[derive(Clone, Debug)]
pub struct DetectNet {
    e1: Conv2dFast,
    e2: Conv2dFast,
    e3: Conv2dFast,
    e4: Conv2dFast,
    m1: Conv2dFast,
    m2: Conv2dFast,
    u2: Conv2dFast,
    d2: Conv2dFast,
    u1: Conv2dFast,
    d1: Conv2dFast,
    out: Conv2dFast,
}

impl DetectNet {
    /// Builds (or loads, through `vb`) the network.
    pub fn new(vb: VarBuilder, c: DetectNetConfig) -> candle_core::Result<Self> {
        let b = c.base.max(1);
        let relu = Activation::Relu;
        let id = Activation::Identity;
        Ok(Self {
            e1: Conv2dFast::new(vb.pp("e1"), 12, b, 3, cfg(1, 1, 1), relu)?,
            e2: Conv2dFast::new(vb.pp("e2"), b, 2 * b, 3, cfg(1, 2, 1), relu)?,
            e3: Conv2dFast::new(vb.pp("e3"), 2 * b, 2 * b, 3, cfg(1, 1, 1), relu)?,
            e4: Conv2dFast::new(vb.pp("e4"), 2 * b, 3 * b, 3, cfg(1, 2, 1), relu)?,
            m1: Conv2dFast::new(vb.pp("m1"), 3 * b, 3 * b, 3, cfg(1, 1, 1), relu)?,
            m2: Conv2dFast::new(vb.pp("m2"), 3 * b, 3 * b, 3, cfg(2, 1, 2), relu)?,
            u2: Conv2dFast::new(vb.pp("u2"), 3 * b, 2 * b, 1, cfg(0, 1, 1), id)?,
            d2: Conv2dFast::new(vb.pp("d2"), 2 * b, 2 * b, 3, cfg(1, 1, 1), relu)?,
            u1: Conv2dFast::new(vb.pp("u1"), 2 * b, b, 1, cfg(0, 1, 1), id)?,
            d1: Conv2dFast::new(vb.pp("d1"), b, b, 3, cfg(1, 1, 1), relu)?,
            out: Conv2dFast::new(vb.pp("out"), b, 4, 1, cfg(0, 1, 1), id)?,
        })
    }

    /// Logits `[n, 4, h/2, w/2]` (channel `2 dy + dx` is pixel `(2x + dx, 2y + dy)`) of the
    /// folded input `[n, 12, h/2, w/2]` (see [`fold`]); `h` and `w` must be multiples of 8.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let e1 = self.e1.forward(x)?;
        let s4 = self.e3.forward(&self.e2.forward(&e1)?)?;
        let m = self.e4.forward(&s4)?;
        let m = self.m2.forward(&self.m1.forward(&m)?)?;
        let u2 = (upsample_nearest2x(&self.u2.forward(&m)?)? + s4)?.relu()?;
        let d2 = self.d2.forward(&u2)?;
        let u1 = (upsample_nearest2x(&self.u1.forward(&d2)?)? + e1)?.relu()?;
        let d1 = self.d1.forward(&u1)?;
        self.out.forward(&d1)
    }
}

/// What the shipped manifest must hold for the detector to load.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DetectManifest {
    /// Always `detector`.
    pub family: String,
    /// One-line architecture.
    pub architecture: String,
    /// Network sizes.
    pub config: DetectNetConfig,
    /// Subtracted from the logits before the sigmoid, so that probability 0.5 (the default
    /// sensitivity) is the threshold chosen on training data.
    #[serde(default)]
    pub logit_offset: f32,
    /// Everything else (training data, command, metrics) as written by the trainer.
    #[serde(flatten)]
    pub extra: HashMap<String, serde_json::Value>,
}

impl DetectManifest {
    /// Reads a manifest.
    pub fn read(path: &Path) -> Result<Self, DetectError> {
        let text = std::fs::read_to_string(path).map_err(|e| DetectError::Weights {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| DetectError::Weights {
            path: path.to_owned(),
            reason: format!("bad manifest: {e}"),
        })
    }
}

/// The network with its variables.
pub struct LoadedNet {
    /// The network.
    pub net: DetectNet,
    /// Its variables.
    pub varmap: VarMap,
    /// Its sizes.
    pub config: DetectNetConfig,
}

impl LoadedNet {
    /// A freshly initialised network, seeded.
    pub fn fresh(config: DetectNetConfig, seed: u64, dev: &Device) -> Result<Self, DetectError> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let net = DetectNet::new(vb, config)?;
        crate::models::vae::seeded_init(&varmap, seed).map_err(|e| DetectError::Weights {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            net,
            varmap,
            config,
        })
    }

    /// Sorted `(name, var)` pairs.
    pub fn vars(&self) -> Result<Vec<(String, candle_core::Var)>, DetectError> {
        crate::models::vae::sorted_vars(&self.varmap).map_err(|e| DetectError::Weights {
            path: PathBuf::new(),
            reason: e.to_string(),
        })
    }

    /// Copies `tensors` (any float dtype) into the variables; every variable must be present
    /// with its shape.
    pub fn set_from(
        &self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        path: &Path,
    ) -> Result<(), DetectError> {
        for (name, var) in self.vars()? {
            let t =
                tensors
                    .get(&format!("{prefix}{name}"))
                    .ok_or_else(|| DetectError::Weights {
                        path: path.to_owned(),
                        reason: format!("no tensor '{prefix}{name}'"),
                    })?;
            if t.shape() != var.shape() {
                return Err(DetectError::Weights {
                    path: path.to_owned(),
                    reason: format!(
                        "'{name}' is {:?}, the model expects {:?}",
                        t.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// Loads weights from a safetensors file (f16 or f32).
    pub fn load(config: DetectNetConfig, path: &Path, dev: &Device) -> Result<Self, DetectError> {
        let loaded = Self::fresh(config, 0, dev)?;
        let tensors =
            candle_core::safetensors::load(path, dev).map_err(|e| DetectError::Weights {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        loaded.set_from(&tensors, "", path)?;
        // A diverged or damaged file would give NaN probabilities everywhere: refuse it.
        for (name, var) in loaded.vars()? {
            if !crate::models::all_finite(var.as_tensor())? {
                return Err(DetectError::Weights {
                    path: path.to_owned(),
                    reason: format!("'{name}' holds NaN or infinite values"),
                });
            }
        }
        Ok(loaded)
    }

    /// Saves the weights as f16 safetensors (the shipped format).
    pub fn save_f16(&self, path: &Path) -> Result<(), DetectError> {
        let mut map = HashMap::new();
        for (name, var) in self.vars()? {
            map.insert(name, var.as_tensor().to_dtype(DType::F16)?);
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Number of trainable values.
    pub fn param_count(&self) -> usize {
        crate::models::vae::param_count(&self.varmap)
    }
}

/// Folds an interleaved image into the network input: planar `[12, h8/2, w8/2]` values in
/// `[-1, 1]` (channel `4 c + 2 dy + dx` holds colour `c` of pixel `(2x + dx, 2y + dy)`), after
/// padding to multiples of 8 by edge replication. Grey images repeat their one sample.
pub fn fold(img: &ImageF32) -> (Vec<f32>, usize, usize) {
    let (w, h, ch) = (img.width(), img.height(), img.channels().max(1));
    let (w8, h8) = (w.div_ceil(8) * 8, h.div_ceil(8) * 8);
    let (hw, hh) = (w8 / 2, h8 / 2);
    let plane = hw * hh;
    let mut data = vec![0f32; 12 * plane];
    let src = img.data();
    if w == 0 || h == 0 {
        return (data, hw, hh);
    }
    for y in 0..h8 {
        let sy = y.min(h - 1);
        let (by, dy) = (y / 2, y % 2);
        for x in 0..w8 {
            let sx = x.min(w - 1);
            let (bx, dx) = (x / 2, x % 2);
            let i = (sy * w + sx) * ch;
            for c in 0..3 {
                let cc = if ch >= 3 { c } else { 0 };
                data[(4 * c + 2 * dy + dx) * plane + by * hw + bx] = src[i + cc] * 2.0 - 1.0;
            }
        }
    }
    (data, hw, hh)
}

/// Folds a mask like [`fold`] folds an image: `[4, h8/2, w8/2]`, 1 = damage, padding 0.
pub fn fold_mask(m: &crate::imaging::Mask) -> Vec<f32> {
    let (w, h) = (m.width(), m.height());
    let (w8, h8) = (w.div_ceil(8) * 8, h.div_ceil(8) * 8);
    let (hw, hh) = (w8 / 2, h8 / 2);
    let plane = hw * hh;
    let mut out = vec![0f32; 4 * plane];
    for y in 0..h {
        for x in 0..w {
            if m.get(x, y) {
                out[(2 * (y % 2) + x % 2) * plane + (y / 2) * hw + x / 2] = 1.0;
            }
        }
    }
    out
}

/// Unfolds logits `[4, hh, hw]` back to the `w x h` pixels (row-major).
pub fn unfold(logits: &[f32], hw: usize, hh: usize, w: usize, h: usize) -> Vec<f32> {
    let plane = hw * hh;
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            out.push(logits[(2 * (y % 2) + x % 2) * plane + (y / 2) * hw + x / 2]);
        }
    }
    out
}

/// The learned detector, ready to run.
pub struct Learned {
    net: LoadedNet,
    manifest: DetectManifest,
    dev: Device,
}

impl Learned {
    /// Loads `<dir>/<id>.safetensors` with the sizes of `<dir>/<id>.json`.
    pub fn load(dir: &Path, id: &str) -> Result<Self, DetectError> {
        let manifest = DetectManifest::read(&dir.join(format!("{id}.json")))?;
        let weights = dir.join(format!("{id}.safetensors"));
        if !weights.is_file() {
            return Err(DetectError::Weights {
                path: weights,
                reason: "not found".into(),
            });
        }
        let dev = Device::Cpu;
        let net = LoadedNet::load(manifest.config, &weights, &dev)?;
        Ok(Self { net, manifest, dev })
    }

    /// A detector around a network in memory (training, evaluation).
    pub fn from_net(net: LoadedNet, logit_offset: f32) -> Self {
        let manifest = DetectManifest {
            family: "detector".into(),
            architecture: architecture(&net.config),
            config: net.config,
            logit_offset,
            extra: HashMap::new(),
        };
        Self {
            net,
            manifest,
            dev: Device::Cpu,
        }
    }

    /// Gives the network back (training, calibration).
    pub fn into_net(self) -> LoadedNet {
        self.net
    }

    /// The manifest it was loaded with.
    pub fn manifest(&self) -> &DetectManifest {
        &self.manifest
    }

    /// The network's raw logits for `tile` (row-major, one per pixel).
    pub fn logits(&self, tile: &ImageF32) -> Result<Vec<f32>, DetectError> {
        let (w, h) = (tile.width(), tile.height());
        if w == 0 || h == 0 || tile.channels() == 0 {
            return Err(DetectError::InvalidInput("empty tile".into()));
        }
        let (data, hw, hh) = fold(tile);
        let x = Tensor::from_vec(data, (1, 12, hh, hw), &self.dev)?;
        let y = self.net.net.forward(&x)?;
        let z: Vec<f32> = y.flatten_all()?.to_vec1()?;
        Ok(unfold(&z, hw, hh, w, h))
    }
}

impl Detector for Learned {
    fn id(&self) -> &'static str {
        MODEL_ID
    }

    fn halo(&self) -> usize {
        64
    }

    fn align(&self) -> usize {
        8
    }

    fn probabilities(&self, tile: &ImageF32) -> Result<Vec<f32>, DetectError> {
        let off = self.manifest.logit_offset;
        Ok(self
            .logits(tile)?
            .into_iter()
            .map(|z| 1.0 / (1.0 + (off - z).exp()))
            .collect())
    }
}
