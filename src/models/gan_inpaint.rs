//! GAN-inversion inpainting (Yeh et al. 2017, "Semantic image inpainting with deep generative
//! models"): find the code z whose image G(z) best matches the known pixels, then fill the hole
//! from G(z).
//!
//! The crop around the hole is resized to the generator's 64x64 (box filter). Several codes
//! (`restarts`) are optimised together with Adam on
//! `contextual + realism * softplus(-D(G(z)))`:
//! - the contextual loss is the L1 distance on known pixels, weighted by Yeh's importance
//!   (the fraction of hole pixels in a 7x7 window, so pixels next to the hole count most) plus a
//!   small floor so that the far context still fixes colour and pose;
//! - the realism prior is the discriminator's non-saturating loss on G(z).
//!
//! After each step every code is put back on the sphere of radius `sqrt(latent)`, where
//! almost all of the N(0, I) prior's mass lies. Every iteration streams the current best fill.
//! At the end the best code's image is resized back to the crop and written into the hole only,
//! with the photo-minus-fill difference at each hole pixel's nearest known pixel added back over
//! a few pixels (the seam correction), so known pixels stay bit-identical.

use std::path::Path;

use candle_core::{Device, Tensor, Var, D};

use super::cgan_inpaint::inward_distance;
use super::gan::{codes_for_seed, softplus, GanError, LoadedGan};
use super::vae_inpaint::{sample, to_model};
use crate::imaging::{ImageF32, Mask, Rect};
use crate::restore::{
    check_inputs, checkpoint, ParamSpec, Params, Reporter, RestoreError, Restorer,
};

/// Width over which the seam correction fades out, in crop pixels.
const FEATHER: f32 = 4.0;
/// Weight of every known pixel on top of Yeh's hole-proximity weight.
const CONTEXT_FLOOR: f32 = 0.1;

/// The GAN-inversion restorer.
pub struct GanInpaint {
    id: &'static str,
    gan: LoadedGan,
    dev: Device,
}

impl GanInpaint {
    /// Loads `<dir>/<id>.safetensors` with the sizes from `<dir>/<id>.json`.
    pub fn load(dir: &Path, id: &'static str) -> Result<Self, GanError> {
        let dev = Device::Cpu;
        let (gan, _) = LoadedGan::load_model(dir, id, &dev)?;
        Ok(Self { id, gan, dev })
    }

    /// Wraps a loaded GAN (tests).
    pub fn from_gan(id: &'static str, gan: LoadedGan) -> Self {
        Self {
            id,
            gan,
            dev: Device::Cpu,
        }
    }
}

fn fail(e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Failed(e.to_string())
}

/// Yeh et al.'s contextual weights on the `s x s` model grid: for known cells, the fraction
/// of not-known cells in the 7x7 window around them, plus [`CONTEXT_FLOOR`]; zero for cells
/// wholly in the hole. Partly known cells count in proportion.
pub fn context_weights(known: &[f32], s: usize) -> Vec<f32> {
    let r = 3i64;
    let mut w = vec![0.0f32; s * s];
    for y in 0..s as i64 {
        for x in 0..s as i64 {
            let k = known[(y as usize) * s + x as usize];
            if k <= 0.0 {
                continue;
            }
            let (mut holes, mut n) = (0.0f32, 0.0f32);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = (x + dx, y + dy);
                    if xx < 0 || yy < 0 || xx >= s as i64 || yy >= s as i64 {
                        continue;
                    }
                    holes += 1.0 - known[(yy as usize) * s + xx as usize];
                    n += 1.0;
                }
            }
            w[(y as usize) * s + x as usize] = k * (CONTEXT_FLOOR + holes / n.max(1.0));
        }
    }
    w
}

/// The crop with its hole filled from the planar `[3, s, s]` decode, seam-corrected.
fn compose(image: &ImageF32, mask: &Mask, decode: &[f32], s: usize) -> ImageF32 {
    let (w, h, c) = (image.width(), image.height(), image.channels());
    let (dist, nearest) = inward_distance(mask);
    let mut out = image.clone();
    let rgb_at = |x: usize, y: usize| [0, 1, 2].map(|k| sample(decode, s, w, h, x, y, k));
    let photo_at = |x: usize, y: usize| {
        let p = image.pixel(x, y);
        if c >= 3 {
            [p[0], p[1], p[2]]
        } else {
            [p[0]; 3]
        }
    };
    for y in 0..h {
        for x in 0..w {
            if !mask.get(x, y) {
                continue;
            }
            let i = y * w + x;
            let mut v = rgb_at(x, y);
            let fade = (1.0 - dist[i] / FEATHER).max(0.0);
            if fade > 0.0 && (nearest[i] as usize) != i {
                let q = nearest[i] as usize;
                let (qx, qy) = (q % w, q / w);
                let (p, g) = (photo_at(qx, qy), rgb_at(qx, qy));
                for k in 0..3 {
                    v[k] += fade * (p[k] - g[k]);
                }
            }
            let v = v.map(|t| t.clamp(0.0, 1.0));
            let px = out.pixel_mut(x, y);
            if c >= 3 {
                px[..3].copy_from_slice(&v);
            } else {
                px[0] = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
            }
        }
    }
    out
}

impl Restorer for GanInpaint {
    fn id(&self) -> &'static str {
        self.id
    }

    fn param_specs(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec {
                name: "iterations",
                label: "Iterations",
                help: "Adam steps on the latent codes; each streams a preview.",
                default: 100.0,
                min: 1.0,
                max: 2000.0,
                integer: true,
            },
            ParamSpec {
                name: "restarts",
                label: "Restarts",
                help: "Codes optimised together from different random starts; the best match \
                       of the known pixels fills the hole.",
                default: 4.0,
                min: 1.0,
                max: 64.0,
                integer: true,
            },
            ParamSpec {
                name: "lr",
                label: "Step size",
                help: "Adam learning rate on the latent codes.",
                default: 0.05,
                min: 0.001,
                max: 0.5,
                integer: false,
            },
            ParamSpec {
                name: "realism",
                label: "Realism weight",
                help: "Weight of the discriminator's opinion (perceptual loss): higher gives a \
                       more face-like fill, lower follows the known pixels more.",
                default: 0.01,
                min: 0.0,
                max: 1.0,
                integer: false,
            },
            ParamSpec {
                name: "seed",
                label: "Seed",
                help: "Seed of the starting codes (same seed, same result).",
                default: 0.0,
                min: 0.0,
                max: 1e9,
                integer: true,
            },
        ]
    }

    fn context_margin(&self, _params: &Params, hole: Rect) -> usize {
        // The generator draws whole faces: give it the hole plus as much again on each side.
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
        let k = params.value_of(&specs, "restarts").round().clamp(1.0, 64.0) as usize;
        let lr = params.value_of(&specs, "lr");
        let realism = params.value_of(&specs, "realism");
        let seed = params.value_of(&specs, "seed").max(0.0) as u64;
        let cfg = *self.gan.g.config();
        let (s, latent) = (cfg.image_size, cfg.latent);
        let (rgb, known) = to_model(image, mask, s);
        let weights = context_weights(&known, s);
        let wsum: f32 = weights.iter().sum::<f32>() * 3.0;
        if wsum <= 0.0 {
            return Err(RestoreError::Failed(
                "the crop has no known pixels to match".into(),
            ));
        }
        let target = Tensor::from_vec(rgb, (1, 3, s, s), &self.dev).map_err(fail)?;
        let wt = Tensor::from_vec(weights, (1, 1, s, s), &self.dev).map_err(fail)?;
        let z0 = codes_for_seed(seed, k, latent, &self.dev).map_err(fail)?;
        let radius = (latent as f64).sqrt();
        let z = Var::from_tensor(&project(&z0, radius).map_err(fail)?).map_err(fail)?;
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut m = z.as_tensor().zeros_like().map_err(fail)?;
        let mut v = m.clone();
        let mut best_decode: Option<Vec<f32>> = None;
        for it in 1..=iters {
            checkpoint(rep)?;
            let x = self.gan.g.forward(z.as_tensor()).map_err(fail)?;
            // Per-code contextual loss [k] (weighted mean L1), and the total with realism.
            let ctx = (x.broadcast_sub(&target))
                .and_then(|d| d.abs())
                .and_then(|d| d.broadcast_mul(&wt))
                .and_then(|d| d.flatten_from(1))
                .and_then(|d| d.sum(D::Minus1))
                .and_then(|d| d / f64::from(wsum))
                .map_err(fail)?;
            let mut loss = ctx.sum_all().map_err(fail)?;
            if realism > 0.0 {
                let logits = self.gan.d.forward(&x, false).map_err(fail)?;
                let r = softplus(&logits.neg().map_err(fail)?)
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t * realism)
                    .map_err(fail)?;
                loss = (loss + r).map_err(fail)?;
            }
            let grads = loss.backward().map_err(fail)?;
            let g = grads
                .get(z.as_tensor())
                .ok_or_else(|| fail("no gradient for the latent codes"))?;
            let t = it as i32;
            m = ((&m * b1).and_then(|a| a + (g * (1.0 - b1))?)).map_err(fail)?;
            v = ((&v * b2).and_then(|a| a + (g.sqr()? * (1.0 - b2))?)).map_err(fail)?;
            let mhat = (&m / (1.0 - b1.powi(t))).map_err(fail)?;
            let vhat = (&v / (1.0 - b2.powi(t))).map_err(fail)?;
            let step = (mhat / (vhat.sqrt().map_err(fail)? + eps).map_err(fail)?)
                .and_then(|u| u * lr)
                .map_err(fail)?;
            let next = (z.as_tensor() - step).map_err(fail)?;
            z.set(&project(&next, radius).map_err(fail)?)
                .map_err(fail)?;
            // The best code of this iteration (by its contextual loss) is the preview.
            let losses: Vec<f32> = ctx.to_vec1().map_err(fail)?;
            let best = losses
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0);
            let decode: Vec<f32> = x
                .narrow(0, best, 1)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(fail)?;
            rep.progress(it as u64, iters as u64, "fitting the GAN's latent code");
            if it < iters {
                rep.preview(&compose(image, mask, &decode, s));
            }
            best_decode = Some(decode);
        }
        // Final pass: the codes after the last update, best by contextual loss.
        let x = self.gan.g.forward(z.as_tensor()).map_err(fail)?;
        let ctx: Vec<f32> = (x.broadcast_sub(&target))
            .and_then(|d| d.abs())
            .and_then(|d| d.broadcast_mul(&wt))
            .and_then(|d| d.flatten_from(1))
            .and_then(|d| d.sum(D::Minus1))
            .and_then(|d| d.to_vec1())
            .map_err(fail)?;
        let best = ctx
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let decode: Vec<f32> = x
            .narrow(0, best, 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(fail)?;
        let decode = if decode.iter().all(|v| v.is_finite()) {
            decode
        } else {
            best_decode
                .filter(|d| d.iter().all(|v| v.is_finite()))
                .ok_or_else(|| fail("the generator's output is not finite"))?
        };
        Ok(compose(image, mask, &decode, s))
    }
}

/// Each row of `z` rescaled to norm `radius`.
fn project(z: &Tensor, radius: f64) -> candle_core::Result<Tensor> {
    let norms = (z.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    z.broadcast_div(&norms)? * radius
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::gan::GanConfig;
    use crate::restore::NullReporter;

    #[test]
    fn context_weights_peak_next_to_the_hole() {
        let s = 16;
        let mut known = vec![1.0f32; s * s];
        for y in 6..10 {
            for x in 6..10 {
                known[y * s + x] = 0.0;
            }
        }
        let w = context_weights(&known, s);
        assert_eq!(w[8 * s + 8], 0.0);
        assert!(w[8 * s + 5] > w[8 * s + 2]);
        assert!((w[0] - CONTEXT_FLOOR).abs() < 1e-6);
    }

    #[test]
    fn fills_only_the_hole_and_is_deterministic() {
        let cfg = GanConfig {
            image_size: 16,
            latent: 8,
            g_base: 2,
            d_base: 2,
        };
        let gan = LoadedGan::fresh(cfg, 3, &Device::Cpu).unwrap();
        let r = GanInpaint::from_gan("gan-test", gan);
        let (w, h) = (24, 20);
        let mut img = ImageF32::new(w, h, 3);
        for y in 0..h {
            for x in 0..w {
                let p = img.pixel_mut(x, y);
                p[0] = x as f32 / w as f32;
                p[1] = y as f32 / h as f32;
                p[2] = 0.5;
            }
        }
        let mut mask = Mask::new(w, h);
        for y in 8..13 {
            for x in 9..15 {
                mask.set(x, y, true);
            }
        }
        let mut params = Params::new();
        params.set("iterations", 5.0);
        params.set("restarts", 2.0);
        let a = r.restore(&img, &mask, &params, &NullReporter).unwrap();
        let b = r.restore(&img, &mask, &params, &NullReporter).unwrap();
        assert_eq!(a.data(), b.data());
        for y in 0..h {
            for x in 0..w {
                if !mask.get(x, y) {
                    assert_eq!(a.pixel(x, y), img.pixel(x, y));
                } else {
                    assert!(a.pixel(x, y).iter().all(|v| (0.0..=1.0).contains(v)));
                }
            }
        }
    }
}
