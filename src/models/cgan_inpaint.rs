//! The cGAN as a [`Restorer`]: full-resolution, mask-local inference on one crop.
//!
//! - Thin and medium holes (every hole pixel within [`WIDE`] px of a known pixel, the widths the
//!   network saw in training) take one pass at full resolution.
//! - Wider holes are first filled at a lower resolution (a power-of-two box downscale that
//!   brings them back to the trained width), then refined at full resolution: the upsampled
//!   coarse fill stands in for the interior of the hole and the network repaints the band of
//!   [`BAND`] px along the hole border, where detail and continuity with the photo matter most.
//! - Seam feathering: the network also predicts the known pixels; the difference between the
//!   photo and that prediction at each hole pixel's nearest known pixel is added back into the
//!   hole, fading out over [`FEATHER`] px, so the fill meets the photo without a step in colour.
//! - Known pixels are copied from the input, bit for bit. Grey, grey+alpha and RGBA crops run
//!   through the RGB network (grey replicated, alpha filled from the nearest known pixel).
//!
//! The `z` input is a fixed-seed standard-normal map ([`INFERENCE_NOISE_SEED`]), the training
//! distribution, so a restoration is deterministic.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::cgan::{
    named_vars, noise_map, CganError, CganResult, Generator, GeneratorConfig, LoadedGenerator,
    INFERENCE_NOISE_SEED,
};
use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::{
    check_inputs, checkpoint, ParamSpec, Params, Reporter, RestoreError, Restorer,
};

/// Holes deeper than this (px from the nearest known pixel) are filled coarse-to-fine.
pub const WIDE: f32 = 16.0;
/// Width of the border band repainted at full resolution after a coarse fill.
pub const BAND: f32 = 8.0;
/// Distance over which the seam correction fades out inside the hole.
pub const FEATHER: f32 = 6.0;

/// The manifest fields inference needs (the rest is documentation).
#[derive(serde::Deserialize)]
struct ManifestHead {
    generator: GeneratorConfig,
}

/// A loaded cGAN generator ready to restore crops. Its weights are plain (frozen) tensors, not
/// trainable variables: no gradient bookkeeping, and each gated layer runs as one fused kernel.
pub struct CganInpaint {
    id: &'static str,
    gen: Generator,
    cfg: GeneratorConfig,
}

impl std::fmt::Debug for CganInpaint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CganInpaint")
            .field("id", &self.id)
            .field("generator", &self.cfg)
            .finish()
    }
}

impl CganInpaint {
    /// Loads `<dir>/<id>.json` (for the generator's sizes) and `<dir>/<id>.safetensors`.
    /// A missing or invalid manifest or weights file is a [`CganError::Weights`].
    pub fn load(dir: &Path, id: &'static str) -> CganResult<Self> {
        let manifest = dir.join(format!("{id}.json"));
        let bad = |reason: String| CganError::Weights {
            path: manifest.clone(),
            reason,
        };
        let head: ManifestHead = crate::jsonfile::read(&manifest)
            .map_err(|e| bad(format!("manifest: {}", e.cause())))?;
        if head.generator.base == 0 || head.generator.base > 256 {
            return Err(bad(format!(
                "implausible generator width {}",
                head.generator.base
            )));
        }
        let gen = LoadedGenerator::load(
            head.generator,
            &dir.join(format!("{id}.safetensors")),
            &Device::Cpu,
        )?;
        Self::from_generator(id, &gen)
    }

    /// A frozen copy of an already built generator (tests, training previews).
    pub fn from_generator(id: &'static str, loaded: &LoadedGenerator) -> CganResult<Self> {
        let tensors = named_vars(&loaded.varmap, false)?
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().detach()))
            .collect();
        let vb =
            candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
        Ok(Self {
            id,
            gen: Generator::new(vb, loaded.cfg)?,
            cfg: loaded.cfg,
        })
    }

    fn specs() -> Vec<ParamSpec> {
        vec![ParamSpec {
            name: "max_scale",
            label: "Coarse pass down to 1/",
            help: "Wide holes are filled first at up to this downscale, then refined at full \
                   resolution (1 = always a single full-resolution pass)",
            default: 8.0,
            min: 1.0,
            max: 16.0,
            integer: true,
        }]
    }

    /// The generator's sizes.
    pub fn config(&self) -> GeneratorConfig {
        self.cfg
    }

    /// The network's prediction for every pixel of `rgb` (planar RGB, `w x h`), with `hole`
    /// (row-major) marking what it must invent.
    fn predict(&self, rgb: &Planar, hole: &[bool]) -> CganResult<Planar> {
        let (w, h) = (rgb.w, rgb.h);
        let dev = Device::Cpu;
        let image = Tensor::from_slice(&rgb.data, (1, 3, h, w), &dev)?;
        let m: Vec<f32> = hole.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(m, (1, 1, h, w), &dev)?;
        let z = noise_map(1, h, w, INFERENCE_NOISE_SEED, &dev)?;
        let out = self.gen.forward(&image, &mask, &z)?;
        let data = out.raw.flatten_all()?.to_vec1::<f32>()?;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(CganError::Invalid(
                "the network produced non-finite values (corrupt weights?)".into(),
            ));
        }
        Ok(Planar { w, h, data })
    }

    /// Restores the holes of one crop; returns the fill for every pixel of the crop (known
    /// pixels copied) and reports a preview after the coarse pass of a wide hole.
    fn fill(
        &self,
        image: &ImageF32,
        mask: &Mask,
        max_scale: usize,
        rep: &dyn Reporter,
    ) -> Result<ImageF32, RestoreError> {
        let (w, h) = (image.width(), image.height());
        let fail = |e: CganError| RestoreError::Failed(format!("{}: {e}", self.id));
        let rgb = Planar::from_image(image);
        let hole = mask.data();
        let (dist, nearest) = inward_distance(mask);
        let deepest = dist.iter().copied().fold(0.0f32, f32::max);
        let mut scale = 1usize;
        while deepest / scale as f32 > WIDE
            && 2 * scale <= max_scale
            && w / (2 * scale) >= 16
            && h / (2 * scale) >= 16
        {
            scale *= 2;
        }
        rep.progress(0, if scale > 1 { 2 } else { 1 }, "cGAN");
        let (fill, raw_at_known) = if scale == 1 {
            let raw = self.predict(&rgb, hole).map_err(fail)?;
            (raw.clone(), raw)
        } else {
            let (small, small_hole) = rgb.downscale(hole, scale);
            let coarse = self
                .predict(&small, &small_hole)
                .map_err(fail)?
                .upscale(w, h, scale);
            rep.preview(&compose(image, mask, &coarse, &nearest));
            checkpoint(rep)?;
            rep.progress(1, 2, "cGAN refine");
            // The coarse fill stands in for the hole's interior; the band is repainted.
            let mut guided = rgb.clone();
            let mut band = vec![false; w * h];
            for i in 0..w * h {
                if hole[i] {
                    if dist[i] <= BAND {
                        band[i] = true;
                    } else {
                        for c in 0..3 {
                            guided.data[c * w * h + i] = coarse.data[c * w * h + i];
                        }
                    }
                }
            }
            let fine = self.predict(&guided, &band).map_err(fail)?;
            let mut fill = coarse;
            for (i, &b) in band.iter().enumerate() {
                if b {
                    for c in 0..3 {
                        fill.data[c * w * h + i] = fine.data[c * w * h + i];
                    }
                }
            }
            (fill, fine)
        };
        // Seam correction from each hole pixel's nearest known pixel.
        let mut out = fill;
        let plane = w * h;
        for i in 0..plane {
            if hole[i] {
                let fade = (1.0 - dist[i] / FEATHER).max(0.0);
                if fade > 0.0 {
                    let q = nearest[i] as usize;
                    for c in 0..3 {
                        let r = rgb.data[c * plane + q] - raw_at_known.data[c * plane + q];
                        out.data[c * plane + i] += fade * r;
                    }
                }
            }
        }
        rep.progress(1, 1, "cGAN");
        Ok(compose(image, mask, &out, &nearest))
    }
}

impl Restorer for CganInpaint {
    fn id(&self) -> &'static str {
        self.id
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        Self::specs()
    }

    /// At least 16 px of context around a speck (plenty for its fill, and small crops keep
    /// scattered dust cheap), growing with the hole up to 128 px around large ones (which are
    /// downscaled, so that context is seen too).
    fn context_margin(&self, _params: &Params, hole: Rect) -> usize {
        (hole.width.max(hole.height) / 2 + 8).clamp(16, 128)
    }

    fn restore(
        &self,
        image: &ImageF32,
        mask: &Mask,
        params: &Params,
        rep: &dyn Reporter,
    ) -> Result<ImageF32, RestoreError> {
        check_inputs(image, mask)?;
        let max_scale = params.value_of(&Self::specs(), "max_scale").max(1.0) as usize;
        if mask.is_empty() {
            return Ok(image.clone());
        }
        if mask.count() == mask.data().len() {
            return Err(RestoreError::InvalidInput(
                "the mask covers the whole crop: nothing known to restore from".into(),
            ));
        }
        checkpoint(rep)?;
        self.fill(image, mask, max_scale, rep)
    }
}

/// Planar RGB in `[0, 1]`.
#[derive(Clone, Debug)]
struct Planar {
    w: usize,
    h: usize,
    data: Vec<f32>,
}

impl Planar {
    /// RGB planes of any image: grey replicated, extra channels (alpha) dropped.
    fn from_image(img: &ImageF32) -> Self {
        let (w, h, ch) = (img.width(), img.height(), img.channels());
        let plane = w * h;
        let mut data = vec![0.0f32; 3 * plane];
        for (i, px) in img.data().chunks_exact(ch).enumerate() {
            for c in 0..3 {
                data[c * plane + i] = if ch >= 3 { px[c] } else { px[0] };
            }
        }
        Self { w, h, data }
    }

    /// Box downscale by `s` over known pixels only; a small pixel is a hole when any of its
    /// block is.
    fn downscale(&self, hole: &[bool], s: usize) -> (Planar, Vec<bool>) {
        let (sw, sh) = (self.w.div_ceil(s), self.h.div_ceil(s));
        let (plane, splane) = (self.w * self.h, sw * sh);
        let mut data = vec![0.0f32; 3 * splane];
        let mut small_hole = vec![false; splane];
        let mut count = vec![0.0f32; splane];
        for y in 0..self.h {
            for x in 0..self.w {
                let (i, j) = (y * self.w + x, (y / s) * sw + x / s);
                if hole[i] {
                    small_hole[j] = true;
                } else {
                    count[j] += 1.0;
                    for c in 0..3 {
                        data[c * splane + j] += self.data[c * plane + i];
                    }
                }
            }
        }
        for j in 0..splane {
            let n = count[j].max(1.0);
            for c in 0..3 {
                data[c * splane + j] /= n;
            }
        }
        (Planar { w: sw, h: sh, data }, small_hole)
    }

    /// Bilinear upscale of a map made by [`Planar::downscale`] back to `w x h`.
    fn upscale(&self, w: usize, h: usize, s: usize) -> Planar {
        let (plane, splane) = (w * h, self.w * self.h);
        let mut data = vec![0.0f32; 3 * plane];
        let coord = |v: usize, n: usize| {
            let f = ((v as f32 + 0.5) / s as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let i0 = f.floor() as usize;
            (i0, (i0 + 1).min(n - 1), f - i0 as f32)
        };
        for y in 0..h {
            let (y0, y1, fy) = coord(y, self.h);
            for x in 0..w {
                let (x0, x1, fx) = coord(x, self.w);
                for c in 0..3 {
                    let p = |xx: usize, yy: usize| self.data[c * splane + yy * self.w + xx];
                    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
                    let bot = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
                    data[c * plane + y * w + x] = top * (1.0 - fy) + bot * fy;
                }
            }
        }
        Planar { w, h, data }
    }
}

/// The crop with `fill` in its holes, clamped to `[0, 1]`, in the image's own channel layout:
/// grey takes the mean of the fill, alpha (if any) the nearest known pixel's.
fn compose(image: &ImageF32, mask: &Mask, fill: &Planar, nearest: &[u32]) -> ImageF32 {
    let ch = image.channels();
    let plane = image.width() * image.height();
    let mut out = image.clone();
    let src = image.data();
    for (i, px) in out.data_mut().chunks_exact_mut(ch).enumerate() {
        if !mask.data()[i] {
            continue;
        }
        let rgb = [0, 1, 2].map(|c| fill.data[c * plane + i].clamp(0.0, 1.0));
        let q = nearest[i] as usize;
        match ch {
            1 | 2 => {
                px[0] = (rgb[0] + rgb[1] + rgb[2]) / 3.0;
                if ch == 2 {
                    px[1] = src[q * ch + 1];
                }
            }
            _ => {
                px[..3].copy_from_slice(&rgb);
                for c in 3..ch {
                    px[c] = src[q * ch + c];
                }
            }
        }
    }
    out
}

/// For every pixel, the chamfer distance (1, sqrt 2) to the nearest known pixel and that
/// pixel's index (known pixels: 0 and themselves). A mask with no known pixel gives
/// `f32::MAX` and index 0.
pub fn inward_distance(mask: &Mask) -> (Vec<f32>, Vec<u32>) {
    let (w, h) = (mask.width(), mask.height());
    let mut dist = vec![f32::MAX; w * h];
    let mut near = vec![0u32; w * h];
    for (i, &hole) in mask.data().iter().enumerate() {
        if !hole {
            dist[i] = 0.0;
            near[i] = i as u32;
        }
    }
    const D: f32 = std::f32::consts::SQRT_2;
    let relax = |dist: &mut [f32], near: &mut [u32], i: usize, j: usize, step: f32| {
        if dist[j] < f32::MAX && dist[j] + step < dist[i] {
            dist[i] = dist[j] + step;
            near[i] = near[j];
        }
    };
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if x > 0 {
                relax(&mut dist, &mut near, i, i - 1, 1.0);
            }
            if y > 0 {
                relax(&mut dist, &mut near, i, i - w, 1.0);
                if x > 0 {
                    relax(&mut dist, &mut near, i, i - w - 1, D);
                }
                if x + 1 < w {
                    relax(&mut dist, &mut near, i, i - w + 1, D);
                }
            }
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let i = y * w + x;
            if x + 1 < w {
                relax(&mut dist, &mut near, i, i + 1, 1.0);
            }
            if y + 1 < h {
                relax(&mut dist, &mut near, i, i + w, 1.0);
                if x + 1 < w {
                    relax(&mut dist, &mut near, i, i + w + 1, D);
                }
                if x > 0 {
                    relax(&mut dist, &mut near, i, i + w - 1, D);
                }
            }
        }
    }
    (dist, near)
}
