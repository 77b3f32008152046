//! Inpainting with a trained VAE by latent optimisation.
//!
//! The crop is resized to the model's input (box filter), then the latent code z is optimised
//! with Adam so that the decode matches the known pixels under the model's Gaussian likelihood,
//! with the prior term `|z|^2 / 2` (the part of the KL that acts on z) keeping it a plausible
//! face. z starts from the encoder's mean of the crop with its hole filled by the mean known
//! colour. The decode is resized back to the crop and written into the hole pixels only, so
//! known pixels stay bit-identical. Each few iterations stream a preview.

use std::path::Path;

use candle_core::{Device, Tensor, Var};

use super::vae::{LoadedVae, VaeError};
use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::Restorer;
use crate::restore::{check_inputs, checkpoint, ParamSpec, Params, Reporter, RestoreError};

/// The VAE latent-optimisation restorer.
pub struct VaeInpaint {
    id: &'static str,
    model: LoadedVae,
    dev: Device,
}

impl VaeInpaint {
    /// Loads `<dir>/<id>.safetensors` with the sizes from `<dir>/<id>.json`.
    pub fn load(dir: &Path, id: &'static str) -> Result<Self, VaeError> {
        let dev = Device::Cpu;
        let (model, _) = LoadedVae::load_model(dir, id, &dev)?;
        Ok(Self { id, model, dev })
    }

    /// Wraps an already loaded model (tests).
    pub fn from_model(id: &'static str, model: LoadedVae) -> Self {
        Self {
            id,
            model,
            dev: Device::Cpu,
        }
    }
}

fn fail(e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Failed(e.to_string())
}

/// Box-filtered resize of the crop's RGB to `s x s` planar `[3, s, s]`, plus the known fraction
/// of each output pixel (`[s, s]`).
pub(crate) fn to_model(image: &ImageF32, mask: &Mask, s: usize) -> (Vec<f32>, Vec<f32>) {
    let (w, h, c) = (image.width(), image.height(), image.channels());
    let mut rgb = vec![0.0f32; 3 * s * s];
    let mut known = vec![0.0f32; s * s];
    for oy in 0..s {
        let y0 = oy * h / s;
        let y1 = ((oy + 1) * h / s).max(y0 + 1).min(h);
        for ox in 0..s {
            let x0 = ox * w / s;
            let x1 = ((ox + 1) * w / s).max(x0 + 1).min(w);
            let mut sum = [0.0f32; 3];
            let (mut nk, mut n) = (0.0f32, 0.0f32);
            for y in y0..y1 {
                for x in x0..x1 {
                    let p = image.pixel(x, y);
                    let v = if c >= 3 {
                        [p[0], p[1], p[2]]
                    } else {
                        [p[0]; 3]
                    };
                    n += 1.0;
                    if !mask.get(x, y) {
                        for k in 0..3 {
                            sum[k] += v[k];
                        }
                        nk += 1.0;
                    }
                }
            }
            let i = oy * s + ox;
            known[i] = nk / n.max(1.0);
            for k in 0..3 {
                rgb[k * s * s + i] = if nk > 0.0 { sum[k] / nk } else { f32::NAN };
            }
        }
    }
    // Cells wholly inside the hole start at the mean known colour (the encoder's input for the
    // initial z); their weight is zero, so the value does not enter the loss.
    let plane = s * s;
    for k in 0..3 {
        let ch = &mut rgb[k * plane..(k + 1) * plane];
        let (sum, cnt) = ch
            .iter()
            .filter(|v| !v.is_nan())
            .fold((0.0f32, 0usize), |(a, n), v| (a + v, n + 1));
        let mean = if cnt > 0 { sum / cnt as f32 } else { 0.5 };
        for v in ch.iter_mut().filter(|v| v.is_nan()) {
            *v = mean;
        }
    }
    (rgb, known)
}

/// Bilinear sample of a planar `[3, s, s]` image at crop pixel `(x, y)` of a `w x h` crop.
pub(crate) fn sample(
    rgb: &[f32],
    s: usize,
    w: usize,
    h: usize,
    x: usize,
    y: usize,
    k: usize,
) -> f32 {
    let fx = ((x as f32 + 0.5) * s as f32 / w as f32 - 0.5).clamp(0.0, (s - 1) as f32);
    let fy = ((y as f32 + 0.5) * s as f32 / h as f32 - 0.5).clamp(0.0, (s - 1) as f32);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    let p = |xx: usize, yy: usize| rgb[k * s * s + yy * s + xx];
    let top = p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx;
    let bot = p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx;
    top * (1.0 - ty) + bot * ty
}

/// The crop with its hole pixels replaced by the resized decode.
pub(crate) fn blend(image: &ImageF32, mask: &Mask, decode: &[f32], s: usize) -> ImageF32 {
    let (w, h, c) = (image.width(), image.height(), image.channels());
    let mut out = image.clone();
    for y in 0..h {
        for x in 0..w {
            if !mask.get(x, y) {
                continue;
            }
            let rgb = [0, 1, 2].map(|k| sample(decode, s, w, h, x, y, k).clamp(0.0, 1.0));
            let px = out.pixel_mut(x, y);
            if c >= 3 {
                px[..3].copy_from_slice(&rgb);
            } else {
                // Grey (and grey + alpha): the luminance of the decode.
                px[0] = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
            }
        }
    }
    out
}

impl Restorer for VaeInpaint {
    fn id(&self) -> &'static str {
        self.id
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "iterations",
                label: "Iterations",
                help: "Adam steps on the latent code; more fit the known pixels more closely.",
                default: 150.0,
                min: 1.0,
                max: 2000.0,
                integer: true,
            },
            ParamSpec {
                name: "lr",
                label: "Step size",
                help: "Adam learning rate on the latent code.",
                default: 0.05,
                min: 0.001,
                max: 0.5,
                integer: false,
            },
            ParamSpec {
                name: "prior",
                label: "Prior weight",
                help: "Weight of the prior |z|^2/2: higher keeps the fill a typical face, lower \
                       follows the known pixels more.",
                default: 1.0,
                min: 0.0,
                max: 10.0,
                integer: false,
            },
        ]
    }

    fn context_margin(&self, _params: &Params, hole: Rect) -> usize {
        // The model sees a whole 64x64 face: give it the hole plus as much again on each side.
        hole.width.max(hole.height).max(16)
    }

    fn restore(
        &self,
        image: &ImageF32,
        mask: &Mask,
        params: &Params,
        rep: &dyn Reporter,
    ) -> Result<ImageF32, RestoreError> {
        check_inputs(image, mask)?;
        let specs = self.param_specs();
        let iters = params.value_of(&specs, "iterations").round().max(1.0) as usize;
        let lr = params.value_of(&specs, "lr") as f32;
        let prior = params.value_of(&specs, "prior");
        let vae = &self.model.vae;
        let cfg = *vae.config();
        let s = cfg.image_size;
        let (rgb, known) = to_model(image, mask, s);
        let target = Tensor::from_vec(rgb, (1, 3, s, s), &self.dev).map_err(fail)?;
        let weight = Tensor::from_vec(known, (1, 1, s, s), &self.dev).map_err(fail)?;
        let (mu, _) = vae.encode(&target).map_err(fail)?;
        let z = Var::from_tensor(&mu).map_err(fail)?;
        let inv2s2 = 1.0 / (2.0 * f64::from(cfg.sigma) * f64::from(cfg.sigma));
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let mut m = vec![0.0f32; cfg.latent];
        let mut v = vec![0.0f32; cfg.latent];
        let preview_every = (iters / 20).max(1);
        for it in 1..=iters {
            checkpoint(rep)?;
            let dec = vae.decode(z.as_tensor()).map_err(fail)?;
            let data = ((&dec - &target).and_then(|d| d.sqr()))
                .and_then(|d| d.broadcast_mul(&weight))
                .and_then(|d| d.sum_all())
                .and_then(|d| d * inv2s2)
                .map_err(fail)?;
            let loss = z
                .as_tensor()
                .sqr()
                .and_then(|q| q.sum_all())
                .and_then(|q| q * (0.5 * prior))
                .and_then(|q| q + data)
                .map_err(fail)?;
            let grads = loss.backward().map_err(fail)?;
            let g: Vec<f32> = grads
                .get(z.as_tensor())
                .ok_or_else(|| fail("no gradient for the latent code"))?
                .flatten_all()
                .and_then(|g| g.to_vec1())
                .map_err(fail)?;
            let mut zv: Vec<f32> = z
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(fail)?;
            let bc1 = 1.0 - b1.powi(it as i32);
            let bc2 = 1.0 - b2.powi(it as i32);
            for i in 0..cfg.latent {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                zv[i] -= lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
            }
            let next = Tensor::from_vec(zv, (1, cfg.latent), &self.dev).map_err(fail)?;
            z.set(&next).map_err(fail)?;
            rep.progress(it as u64, iters as u64, "optimising the latent code");
            if it % preview_every == 0 && it < iters {
                let d: Vec<f32> = dec.flatten_all().and_then(|t| t.to_vec1()).map_err(fail)?;
                rep.preview(&blend(image, mask, &d, s));
            }
        }
        let dec = vae.decode(z.as_tensor()).map_err(fail)?;
        let d: Vec<f32> = dec.flatten_all().and_then(|t| t.to_vec1()).map_err(fail)?;
        if d.iter().any(|x| !x.is_finite()) {
            return Err(fail("the decode is not finite"));
        }
        Ok(blend(image, mask, &d, s))
    }
}
