//! Principal directions of a set of latent codes (for the latent explorer's sliders).
//!
//! Fit on the posterior means of the training set, the directions are orthonormal and sorted by
//! variance; a slider at `t` sigma moves along `direction_i * t * sigma_i` from the current
//! point. The eigen-decomposition is a cyclic Jacobi sweep on the `d x d` covariance, exact to
//! f64 rounding for the latent sizes we use (d <= 512).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::vae::{VaeError, VaeResult};

/// Mean, principal directions and their standard deviations of a set of latent codes.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentPca {
    /// Mean code, `d` values.
    pub mean: Vec<f32>,
    /// `d` orthonormal directions (each `d` values), sorted by decreasing variance.
    pub directions: Vec<Vec<f32>>,
    /// Standard deviation of the codes along each direction.
    pub sigmas: Vec<f32>,
}

impl LatentPca {
    /// Fits the PCA of `codes` (each of the same length `d`, at least two codes).
    pub fn fit(codes: &[Vec<f32>]) -> VaeResult<Self> {
        let n = codes.len();
        let d = codes.first().map(Vec::len).unwrap_or(0);
        if n < 2 || d == 0 || codes.iter().any(|c| c.len() != d) {
            return Err(VaeError::Invalid(format!(
                "PCA needs at least two codes of one non-zero length ({n} codes)"
            )));
        }
        let mut mean = vec![0.0f64; d];
        for c in codes {
            for (m, v) in mean.iter_mut().zip(c) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; d * d];
        for c in codes {
            let centred: Vec<f64> = c
                .iter()
                .zip(&mean)
                .map(|(v, m)| f64::from(*v) - m)
                .collect();
            for i in 0..d {
                let ci = centred[i];
                for j in i..d {
                    cov[i * d + j] += ci * centred[j];
                }
            }
        }
        for i in 0..d {
            for j in i..d {
                let v = cov[i * d + j] / (n - 1) as f64;
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        let (values, vectors) = jacobi_eigen(cov, d);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let directions = order
            .iter()
            .map(|&k| (0..d).map(|i| vectors[i * d + k] as f32).collect())
            .collect();
        let sigmas = order
            .iter()
            .map(|&k| values[k].max(0.0).sqrt() as f32)
            .collect();
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            directions,
            sigmas,
        })
    }

    /// Latent size.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `base + sum_i coords[i] * sigma_i * direction_i` (coords in sigma units; missing
    /// coordinates are zero).
    pub fn offset(&self, base: &[f32], coords: &[f32]) -> Vec<f32> {
        let mut out = base.to_vec();
        for ((t, dir), s) in coords.iter().zip(&self.directions).zip(&self.sigmas) {
            for (o, v) in out.iter_mut().zip(dir) {
                *o += t * s * v;
            }
        }
        out
    }

    /// Number of directions (`d` for a full PCA; fewer for GANSpace's top components).
    pub fn count(&self) -> usize {
        self.directions.len()
    }

    /// Saves as safetensors (`mean [d]`, `directions [k, d]` row-major, `sigmas [k]`).
    pub fn save(&self, path: &Path) -> VaeResult<()> {
        let d = self.dim();
        let dev = Device::Cpu;
        let dirs: Vec<f32> = self.directions.iter().flatten().copied().collect();
        let mut map = HashMap::new();
        map.insert(
            "mean".to_owned(),
            Tensor::from_vec(self.mean.clone(), d, &dev)?,
        );
        map.insert(
            "directions".to_owned(),
            Tensor::from_vec(dirs, (self.count(), d), &dev)?,
        );
        map.insert(
            "sigmas".to_owned(),
            Tensor::from_vec(self.sigmas.clone(), self.count(), &dev)?,
        );
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Loads what [`LatentPca::save`] wrote.
    pub fn load(path: &Path) -> VaeResult<Self> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)?;
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| VaeError::Invalid(format!("{} has no '{k}'", path.display())))
        };
        let mean: Vec<f32> = get("mean")?.to_vec1()?;
        let directions: Vec<Vec<f32>> = get("directions")?.to_vec2()?;
        let sigmas: Vec<f32> = get("sigmas")?.to_vec1()?;
        let d = mean.len();
        if directions.len() > d
            || sigmas.len() != directions.len()
            || directions.iter().any(|v| v.len() != d)
        {
            return Err(VaeError::Invalid(format!(
                "{}: inconsistent PCA sizes",
                path.display()
            )));
        }
        Ok(Self {
            mean,
            directions,
            sigmas,
        })
    }
}

/// Eigenvalues and eigenvectors (columns of the returned row-major `d x d` matrix) of the
/// symmetric matrix `a`, by cyclic Jacobi rotations.
pub(crate) fn jacobi_eigen(mut a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        let scale: f64 = (0..d).map(|i| a[i * d + i] * a[i * d + i]).sum::<f64>();
        if off <= 1e-24 * scale.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in (p + 1)..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let akp = a[k * d + p];
                    let akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let apk = a[p * d + k];
                    let aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let vkp = v[k * d + p];
                    let vkq = v[k * d + q];
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}
