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
//! e2   conv 3x3 stride 2         b -> m    relu            1/4
//! e3   conv 3x3                  m -> m    relu            1/4   (skip s4)
//! e4   conv 3x3 stride 2         m -> d    relu            1/8
//! m1   conv 3x3                  d -> d    relu            1/8
//! m2   conv 3x3 dilation 2       d -> d    relu            1/8
//! m3.. x + relu(conv 3x3 dil 2 d -> d)     (config.blocks)  1/8
//! u2   conv 1x1 d -> m at 1/8, nearest 2x, + s4, relu           1/4
//! d2   conv 3x3                  m -> m    relu            1/4
//! u1   conv 1x1 m -> b at 1/4, nearest 2x, + e1, relu           1/2
//! d1   conv 3x3                  b -> b    relu            1/2
//! f1.. x + conv 3x3(relu(conv 3x3 x))  b -> b      (config.fine)  1/2
//! out  conv 1x1                  b -> 4    logits of each 2x2 block, depth-to-space
//! ```
//! (`b`, `m`, `d` = [`DetectNetConfig::widths`]; the first shipped model had m = 2b, d = 3b.)
//! A 1x1 conv commutes with nearest upsampling, so it runs before the upsample; skips are added
//! rather than concatenated. The receptive field radius is 47 pixels plus 16 per extra block
//! and 4 per fine block;
//! [`Learned`] uses a halo above it (64 pixels without extra blocks) and 8-aligned tiles, so
//! tiled detection equals a single pass. Any size
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

/// Sizes of the network. Manifests written before `mid`, `deep` and `blocks` existed load as
/// the first shipped sizes (2 base at 1/4, 3 base at 1/8, no extra blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DetectNetConfig {
    /// Channels at 1/2 resolution.
    pub base: usize,
    /// Channels at 1/4 resolution; 0 means 2 x `base`.
    #[serde(default)]
    pub mid: usize,
    /// Channels at 1/8 resolution; 0 means 3 x `base`.
    #[serde(default)]
    pub deep: usize,
    /// Extra residual 3x3 blocks (dilation 2) at 1/8 resolution, for context.
    #[serde(default)]
    pub blocks: usize,
    /// Extra residual blocks (two 3x3 convs) at 1/2 resolution after the decoder, for finer
    /// decisions where hairs and specks meet texture.
    #[serde(default)]
    pub fine: usize,
    /// Half side of the square element of two extra input features, the white and black top-hat
    /// residues of the luminance ([`fold_input`]); 0 = none (the RGB input alone).
    #[serde(default)]
    pub tophat: usize,
}

impl Default for DetectNetConfig {
    fn default() -> Self {
        Self {
            base: 16,
            mid: 0,
            deep: 0,
            blocks: 0,
            fine: 0,
            tophat: 0,
        }
    }
}

impl DetectNetConfig {
    /// Channels at 1/2, 1/4 and 1/8 resolution.
    pub fn widths(&self) -> (usize, usize, usize) {
        let b = self.base.max(1);
        let m = if self.mid == 0 { 2 * b } else { self.mid };
        let d = if self.deep == 0 { 3 * b } else { self.deep };
        (b, m, d)
    }

    /// Tile halo: the receptive field with room to spare, in whole 8-pixel steps (64 for the
    /// first shipped sizes, 96 with two extra blocks).
    pub fn halo(&self) -> usize {
        (self.receptive_radius() + 17).div_ceil(8) * 8
    }

    /// Refuses sizes no detector of ours has (a damaged or hand-edited manifest, or a mistyped
    /// training flag, must give an error, not an allocation of gigabytes).
    pub fn check(&self) -> Result<(), String> {
        let (b, m, d) = self.widths();
        if b > 256 || m > 512 || d > 1024 || self.blocks > 8 || self.fine > 8 || self.tophat > 8 {
            return Err(format!(
                "implausible network sizes (base {b}, mid {m}, deep {d}, blocks {}, fine {}, \
                 tophat {})",
                self.blocks, self.fine, self.tophat
            ));
        }
        Ok(())
    }

    /// Radius in full-resolution pixels beyond which no input pixel affects an output pixel
    /// (rounded up): 47 for the base network, plus 16 per extra block, 4 per fine block and
    /// twice the top-hat half side.
    pub fn receptive_radius(&self) -> usize {
        47 + 16 * self.blocks + 4 * self.fine + 2 * self.tophat
    }

    /// Input channels of the first conv: the folded RGB (12), plus the two folded top-hat
    /// features (8) when `tophat` is set.
    pub fn in_channels(&self) -> usize {
        if self.tophat > 0 {
            20
        } else {
            12
        }
    }
}

/// One-line architecture for manifests.
pub fn architecture(cfg: &DetectNetConfig) -> String {
    let (b, b2, b3) = cfg.widths();
    let blocks = match cfg.blocks {
        0 => String::new(),
        n => format!(" -> {n} residual conv3x3 dil2 {b3}"),
    };
    let fine = match cfg.fine {
        0 => String::new(),
        n => format!(" -> {n} residual (conv3x3 {b}, relu, conv3x3 {b})"),
    };
    let input = match cfg.tophat {
        0 => "RGB in [-1,1] folded 2x2 (space-to-depth, 12 ch at 1/2)".to_string(),
        r => format!(
            "RGB in [-1,1] and the white and black top-hats of the luminance ({s}x{s} element, \
             x4, at most 1) folded 2x2 (space-to-depth, 20 ch at 1/2)",
            s = 2 * r + 1
        ),
    };
    format!(
        "tiny U-Net on our fast convs, never at full resolution: {input} -> conv3x3 {b} (1/2) -> conv3x3 s2 {b2} -> conv3x3 {b2} \
         (1/4) -> conv3x3 s2 {b3} -> conv3x3 {b3} -> conv3x3 dil2 {b3}{blocks} (1/8) -> conv1x1 \
         {b2} + nearest-up + skip -> conv3x3 {b2} (1/4) -> conv1x1 {b} + nearest-up + skip -> \
         conv3x3 {b}{fine} (1/2) -> conv1x1 4 logits per 2x2 block (depth-to-space); relu \
         everywhere; receptive field radius {rf} px",
        rf = cfg.receptive_radius(),
    )
}

/// Variable prefixes of fine block `k` (1-based): its first conv and its residual conv.
fn fine_block_names(k: usize) -> [String; 2] {
    [format!("f{k}a"), format!("f{k}b")]
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
    /// Extra residual blocks at 1/8 (`m3`, `m4`, ...).
    blocks: Vec<Conv2dFast>,
    u2: Conv2dFast,
    d2: Conv2dFast,
    u1: Conv2dFast,
    d1: Conv2dFast,
    /// Extra residual blocks at 1/2 (`f1a`/`f1b`, ...).
    fine: Vec<(Conv2dFast, Conv2dFast)>,
    out: Conv2dFast,
    config: DetectNetConfig,
}

impl DetectNet {
    /// Builds (or loads, through `vb`) the network.
    pub fn new(vb: VarBuilder, c: DetectNetConfig) -> candle_core::Result<Self> {
        let (b, b2, b3) = c.widths();
        let relu = Activation::Relu;
        let id = Activation::Identity;
        let blocks = (0..c.blocks)
            .map(|k| {
                let name = format!("m{}", k + 3);
                Conv2dFast::new(vb.pp(name), b3, b3, 3, cfg(2, 1, 2), relu)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fine = (1..=c.fine)
            .map(|k| {
                let [a, z] = fine_block_names(k);
                let a = Conv2dFast::new(vb.pp(a), b, b, 3, cfg(1, 1, 1), relu)?;
                let z = Conv2dFast::new(vb.pp(z), b, b, 3, cfg(1, 1, 1), id)?;
                Ok((a, z))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            e1: Conv2dFast::new(vb.pp("e1"), c.in_channels(), b, 3, cfg(1, 1, 1), relu)?,
            e2: Conv2dFast::new(vb.pp("e2"), b, b2, 3, cfg(1, 2, 1), relu)?,
            e3: Conv2dFast::new(vb.pp("e3"), b2, b2, 3, cfg(1, 1, 1), relu)?,
            e4: Conv2dFast::new(vb.pp("e4"), b2, b3, 3, cfg(1, 2, 1), relu)?,
            m1: Conv2dFast::new(vb.pp("m1"), b3, b3, 3, cfg(1, 1, 1), relu)?,
            m2: Conv2dFast::new(vb.pp("m2"), b3, b3, 3, cfg(2, 1, 2), relu)?,
            blocks,
            u2: Conv2dFast::new(vb.pp("u2"), b3, b2, 1, cfg(0, 1, 1), id)?,
            d2: Conv2dFast::new(vb.pp("d2"), b2, b2, 3, cfg(1, 1, 1), relu)?,
            u1: Conv2dFast::new(vb.pp("u1"), b2, b, 1, cfg(0, 1, 1), id)?,
            d1: Conv2dFast::new(vb.pp("d1"), b, b, 3, cfg(1, 1, 1), relu)?,
            fine,
            out: Conv2dFast::new(vb.pp("out"), b, 4, 1, cfg(0, 1, 1), id)?,
            config: c,
        })
    }

    /// The network input `[1, in_channels, h8/2, w8/2]` of one image ([`fold_input`]).
    pub fn input(&self, img: &ImageF32, dev: &Device) -> candle_core::Result<Tensor> {
        let (data, hw, hh) = fold_input(img, &self.config);
        Tensor::from_vec(data, (1, self.config.in_channels(), hh, hw), dev)
    }

    /// Logits `[n, 4, h/2, w/2]` (channel `2 dy + dx` is pixel `(2x + dx, 2y + dy)`) of the
    /// folded input `[n, in_channels, h/2, w/2]` (see [`fold_input`]); `h` and `w` must be
    /// multiples of 8.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let e1 = self.e1.forward(x)?;
        let s4 = self.e3.forward(&self.e2.forward(&e1)?)?;
        let m = self.e4.forward(&s4)?;
        let mut m = self.m2.forward(&self.m1.forward(&m)?)?;
        for block in &self.blocks {
            m = (&m + block.forward(&m)?)?;
        }
        let u2 = (upsample_nearest2x(&self.u2.forward(&m)?)? + s4)?.relu()?;
        let d2 = self.d2.forward(&u2)?;
        let u1 = (upsample_nearest2x(&self.u1.forward(&d2)?)? + e1)?.relu()?;
        let mut d1 = self.d1.forward(&u1)?;
        for (a, z) in &self.fine {
            d1 = (&d1 + z.forward(&a.forward(&d1)?)?)?;
        }
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
        crate::jsonfile::read(path).map_err(|e| DetectError::Weights {
            path: path.to_owned(),
            reason: format!("manifest: {}", e.cause()),
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
        config.check().map_err(|reason| DetectError::Weights {
            path: path.to_owned(),
            reason,
        })?;
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

    /// A network of sizes `config` that computes exactly what the smaller network in `path`
    /// computes (Net2Net-style widening and deepening, to continue training a trained detector
    /// with more channels or fine blocks): each old kernel lands in the top-left corner of the
    /// new one, old outputs read the new input channels with zero weights, and the new output
    /// channels keep their seeded random initialisation (their effect starts at zero because
    /// every layer that reads them has zero weights on them). Fine blocks the file lacks start
    /// as the identity: their first conv seeded, their second (the residual) zero. The file
    /// must hold every other variable, none larger than `config`'s, and nothing the new network
    /// lacks.
    pub fn widened_from(
        config: DetectNetConfig,
        path: &Path,
        seed: u64,
        dev: &Device,
    ) -> Result<Self, DetectError> {
        config.check().map_err(|reason| DetectError::Weights {
            path: path.to_owned(),
            reason,
        })?;
        let bad = |reason: String| DetectError::Weights {
            path: path.to_owned(),
            reason,
        };
        let loaded = Self::fresh(config, seed, dev)?;
        let tensors = candle_core::safetensors::load(path, dev).map_err(|e| bad(e.to_string()))?;
        let vars = loaded.vars()?;
        if let Some(extra) = tensors.keys().find(|k| !vars.iter().any(|(n, _)| n == *k)) {
            return Err(bad(format!("'{extra}' has no place in the new network")));
        }
        for (name, var) in vars {
            let Some(old) = tensors.get(&name) else {
                // Only fine blocks may be new: position 0 is their first conv, 1 the residual.
                let block = name.split('.').next().unwrap_or_default();
                let role = (1..=config.fine)
                    .find_map(|k| fine_block_names(k).iter().position(|n| n == block))
                    .ok_or_else(|| bad(format!("no tensor '{name}'")))?;
                if role == 1 {
                    var.set(&var.as_tensor().zeros_like()?)?;
                }
                continue;
            };
            let (od, nd) = (old.dims().to_vec(), var.dims().to_vec());
            let fits = od.len() == nd.len()
                && od.iter().zip(&nd).all(|(o, n)| o <= n)
                && (od.len() == 1 || (od.len() == 4 && od[2..] == nd[2..]));
            if !fits {
                return Err(bad(format!(
                    "'{name}' is {od:?}, which does not fit in the wider {nd:?}"
                )));
            }
            let src: Vec<f32> = old.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            if src.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("'{name}' holds NaN or infinite values")));
            }
            let mut dst: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            if od.len() == 1 {
                dst[..od[0]].copy_from_slice(&src);
            } else {
                let k = od[2] * od[3];
                for o in 0..od[0] {
                    let row = &mut dst[o * nd[1] * k..(o + 1) * nd[1] * k];
                    row.fill(0.0);
                    row[..od[1] * k].copy_from_slice(&src[o * od[1] * k..(o + 1) * od[1] * k]);
                }
            }
            var.set(&Tensor::from_vec(dst, nd, dev)?)?;
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

/// Folds an interleaved image into the input of a network of sizes `cfg`: planar
/// `[in_channels, h8/2, w8/2]` after padding to multiples of 8 by edge replication. Channels
/// 0-11 hold the colours in `[-1, 1]` (channel `4 c + 2 dy + dx` holds colour `c` of pixel
/// `(2x + dx, 2y + dy)`; grey images repeat their one sample); when `cfg.tophat` is set, the
/// white and black top-hat residues of the luminance
/// ([`super::classical::top_hats`], times 4, at most 1), folded the same way (channels 12-15
/// and 16-19).
pub fn fold_input(img: &ImageF32, cfg: &DetectNetConfig) -> (Vec<f32>, usize, usize) {
    let (w, h, ch) = (img.width(), img.height(), img.channels().max(1));
    let (w8, h8) = (w.div_ceil(8) * 8, h.div_ceil(8) * 8);
    let (hw, hh) = (w8 / 2, h8 / 2);
    let mut data = vec![0f32; cfg.in_channels() * hw * hh];
    if w == 0 || h == 0 {
        return (data, hw, hh);
    }
    let src = img.data();
    for c in 0..3 {
        let cc = if ch >= 3 { c } else { 0 };
        fold_plane(&mut data, 4 * c, w, h, |i| src[i * ch + cc] * 2.0 - 1.0);
    }
    if cfg.tophat > 0 {
        let luma = super::classical::luminance(img);
        let (white, black) = super::classical::top_hats(&luma, w, h, cfg.tophat);
        fold_plane(&mut data, 12, w, h, |i| (4.0 * white[i]).min(1.0));
        fold_plane(&mut data, 16, w, h, |i| (4.0 * black[i]).min(1.0));
    }
    (data, hw, hh)
}

/// Writes one `w x h` plane (`value` of the row-major pixel index), padded to multiples of 8
/// by edge replication and folded 2x2, into channels `first..first + 4` of `data`.
fn fold_plane(data: &mut [f32], first: usize, w: usize, h: usize, value: impl Fn(usize) -> f32) {
    let (w8, h8) = (w.div_ceil(8) * 8, h.div_ceil(8) * 8);
    let (hw, hh) = (w8 / 2, h8 / 2);
    let plane = hw * hh;
    for y in 0..h8 {
        let sy = y.min(h - 1);
        let (by, dy) = (y / 2, y % 2);
        for x in 0..w8 {
            let sx = x.min(w - 1);
            let (bx, dx) = (x / 2, x % 2);
            data[(first + 2 * dy + dx) * plane + by * hw + bx] = value(sy * w + sx);
        }
    }
}

/// Folds a mask like [`fold_input`] folds an image: `[4, h8/2, w8/2]`, 1 = damage, padding 0.
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
        let x = self.net.net.input(tile, &self.dev)?;
        let y = self.net.net.forward(&x)?;
        let (hh, hw) = (y.dim(2)?, y.dim(3)?);
        let z: Vec<f32> = y.flatten_all()?.to_vec1()?;
        Ok(unfold(&z, hw, hh, w, h))
    }
}

impl Detector for Learned {
    fn id(&self) -> &'static str {
        MODEL_ID
    }

    fn halo(&self) -> usize {
        self.net.config.halo()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_without_the_newer_sizes_load_as_the_first_network() {
        let c: DetectNetConfig =
            serde_json::from_str(r#"{"base": 16}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, DetectNetConfig::default());
        assert_eq!(c.widths(), (16, 32, 48));
        assert_eq!(c.blocks, 0);
        let wide = DetectNetConfig {
            base: 24,
            mid: 48,
            deep: 96,
            blocks: 2,
            fine: 0,
            tophat: 0,
        };
        assert_eq!(wide.widths(), (24, 48, 96));
        let text = serde_json::to_string(&wide).unwrap_or_else(|e| panic!("{e}"));
        let back: DetectNetConfig = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, wide);
    }

    /// Every value of `t`, flattened.
    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Largest absolute difference of two equally long logit lists.
    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(u, v)| (u - v).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn a_widened_network_computes_what_the_narrow_one_did() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let narrow = DetectNetConfig {
            base: 4,
            mid: 6,
            deep: 8,
            blocks: 1,
            fine: 0,
            tophat: 0,
        };
        let net = LoadedNet::fresh(narrow, 5, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let mut map = HashMap::new();
        for (name, var) in net.vars().unwrap_or_else(|e| panic!("{e}")) {
            map.insert(name, var.as_tensor().clone());
        }
        let path = dir.path().join("narrow.safetensors");
        candle_core::safetensors::save(&map, &path).unwrap_or_else(|e| panic!("{e}"));
        let img = ImageF32::from_fn(40, 32, 3, |x, y, c| {
            (((x * 7 + y * 13 + c * 5) % 17) as f32 / 17.0) * 0.8 + 0.1
        });
        let before = Learned::from_net(net, 0.0)
            .logits(&img)
            .unwrap_or_else(|e| panic!("{e}"));
        let wide = DetectNetConfig {
            base: 6,
            mid: 9,
            deep: 12,
            blocks: 1,
            fine: 1,
            tophat: 0,
        };
        let widened =
            LoadedNet::widened_from(wide, &path, 9, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(widened.config, wide);
        assert!(widened.param_count() > 0);
        // The new channels are live (not all zero), so training can use them.
        let e1 = widened
            .vars()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|(n, _)| n == "e1.weight")
            .map(|(_, v)| v.as_tensor().clone())
            .unwrap_or_else(|| panic!("no e1.weight"));
        let new_rows = values(&e1.narrow(0, 4, 2).unwrap_or_else(|e| panic!("{e}")));
        assert!(new_rows.iter().any(|v| v.abs() > 1e-3));
        let path2 = dir.path().join("deep.safetensors");
        widened.save_f16(&path2).unwrap_or_else(|e| panic!("{e}"));
        let after = Learned::from_net(widened, 0.0)
            .logits(&img)
            .unwrap_or_else(|e| panic!("{e}"));
        let worst = max_abs_diff(&before, &after);
        assert!(worst < 1e-4, "widening moved a logit by {worst}");
        // Narrower sizes or another block count do not fit.
        let narrower = DetectNetConfig { base: 3, ..wide };
        assert!(LoadedNet::widened_from(narrower, &path, 9, &Device::Cpu).is_err());
        let deeper = DetectNetConfig { blocks: 2, ..wide };
        assert!(LoadedNet::widened_from(deeper, &path, 9, &Device::Cpu).is_err());
        // A file with fine blocks the new network lacks does not fit either.
        let no_fine = DetectNetConfig { fine: 0, ..wide };
        assert!(LoadedNet::widened_from(no_fine, &path2, 9, &Device::Cpu).is_err());
        assert!(LoadedNet::widened_from(wide, &path2, 9, &Device::Cpu).is_ok());
        // With the top-hat features added, the first conv reads them with zero weights at
        // first: the same logits as the file's network, and the features do reach the input.
        let saved = LoadedNet::load(wide, &path2, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let plain = Learned::from_net(saved, 0.0)
            .logits(&img)
            .unwrap_or_else(|e| panic!("{e}"));
        let with_tophat = DetectNetConfig { tophat: 2, ..wide };
        let net = LoadedNet::widened_from(with_tophat, &path2, 9, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        let x = net
            .net
            .input(&img, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x.dims(), &[1, 20, 16, 20]);
        let features = values(&x.narrow(1, 12, 8).unwrap_or_else(|e| panic!("{e}")));
        assert!(features.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(
            features.iter().any(|&v| v > 0.05),
            "the pattern has texture"
        );
        let featured = Learned::from_net(net, 0.0)
            .logits(&img)
            .unwrap_or_else(|e| panic!("{e}"));
        let worst = max_abs_diff(&plain, &featured);
        assert!(worst < 1e-5, "the new inputs moved a logit by {worst}");
    }

    /// Farthest output pixel (Chebyshev distance) whose logit moves when one input pixel does.
    fn measured_reach(cfg: DetectNetConfig) -> usize {
        let net = LoadedNet::fresh(cfg, 3, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let det = Learned::from_net(net, 0.0);
        let side = 320;
        let img = ImageF32::from_fn(side, side, 3, |x, y, c| {
            (((x * 7 + y * 13 + c * 5) % 17) as f32 / 17.0) * 0.5 + 0.25
        });
        let mut poked = img.clone();
        let (px, py) = (161, 158);
        for c in 0..3 {
            poked.data_mut()[(py * side + px) * 3 + c] = 1.0;
        }
        let a = det.logits(&img).unwrap_or_else(|e| panic!("{e}"));
        let b = det.logits(&poked).unwrap_or_else(|e| panic!("{e}"));
        let mut reach = 0;
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            if (u - v).abs() > 1e-6 {
                let (x, y) = (i % side, i / side);
                reach = reach.max(x.abs_diff(px).max(y.abs_diff(py)));
            }
        }
        reach
    }

    #[test]
    fn the_stated_receptive_field_and_the_halo_cover_what_one_pixel_reaches() {
        for (blocks, fine, tophat) in [(0, 0, 0), (2, 0, 0), (0, 2, 0), (0, 0, 3)] {
            let cfg = DetectNetConfig {
                base: 4,
                mid: 6,
                deep: 8,
                blocks,
                fine,
                tophat,
            };
            let reach = measured_reach(cfg);
            let stated = cfg.receptive_radius();
            let sizes = format!("blocks {blocks}, fine {fine}, tophat {tophat}");
            assert!(reach <= stated, "{sizes}: reach {reach} > {stated}");
            // The statement is not loose either: a pixel reaches most of it.
            assert!(reach + 12 >= stated, "{sizes}: reach {reach} << {stated}");
            let net = LoadedNet::fresh(cfg, 3, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
            let halo = Learned::from_net(net, 0.0).halo();
            assert!(halo > stated && halo % 8 == 0, "halo {halo}");
        }
    }
}
