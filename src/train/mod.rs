//! Training loops per model family, with what they share: image datasets, a seeded batch
//! order, an AdamW whose state can be checkpointed, and PNG grids of samples.

pub mod cgan;
pub mod damage_synth;
pub mod detect;
pub mod ema;
pub mod gan;
pub mod rl;
pub mod vae;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Why training could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model could not be built, loaded or saved.
    #[error(transparent)]
    Vae(#[from] crate::models::vae::VaeError),
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("{path}: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// A checkpoint's state file is unreadable.
    #[error("checkpoint {path}: {source}")]
    Checkpoint {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The data or the settings are not usable.
    #[error("{0}")]
    Invalid(String),
    /// The caller asked to stop.
    #[error("stopped")]
    Stopped,
}

/// Result alias of the training module.
pub type TrainResult<T> = Result<T, TrainError>;

/// Maps an I/O error on `path` to [`TrainError::Io`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Saves tensors as safetensors through a temporary file and a rename, so a stop mid-write
/// leaves the previous file whole.
pub(crate) fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> TrainResult<()> {
    let tmp = crate::jsonfile::tmp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes `value` as pretty JSON (checkpoint states, manifests), atomically like
/// [`save_tensors`].
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> TrainResult<()> {
    Ok(crate::jsonfile::write(path, value)?)
}

/// Reads JSON written by [`write_json`].
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> TrainResult<T> {
    Ok(crate::jsonfile::read(path)?)
}

impl From<crate::jsonfile::JsonFileError> for TrainError {
    fn from(e: crate::jsonfile::JsonFileError) -> Self {
        use crate::jsonfile::JsonFileError as J;
        match e {
            J::Io { path, source } => Self::Io { path, source },
            J::Json { path, source } => Self::Checkpoint { path, source },
        }
    }
}

/// Square RGB images held in memory as 8-bit values (`[n][3][s][s]`, planar).
#[derive(Clone, Debug)]
pub struct ImageSet {
    size: usize,
    data: Vec<u8>,
    names: Vec<String>,
}

impl ImageSet {
    /// Reads every `.png` of `dir` (sorted by name); each must be `size x size`. RGBA and grey
    /// images are converted to RGB.
    pub fn load_dir(dir: &Path, size: usize) -> TrainResult<Self> {
        Self::load_dir_with(dir, size, |_, _| true)
    }

    /// [`ImageSet::load_dir`] that reports as it goes: `progress(done, total)` is called before
    /// each image, and returning false stops with [`TrainError::Stopped`] (the studio's live
    /// training view loads on its worker and must answer Stop while it reads).
    pub fn load_dir_with(
        dir: &Path,
        size: usize,
        mut progress: impl FnMut(usize, usize) -> bool,
    ) -> TrainResult<Self> {
        let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(TrainError::Invalid(format!(
                "no .png images in {}",
                dir.display()
            )));
        }
        let mut set = Self {
            size,
            data: Vec::with_capacity(paths.len() * 3 * size * size),
            names: Vec::with_capacity(paths.len()),
        };
        for (done, path) in paths.iter().enumerate() {
            if !progress(done, paths.len()) {
                return Err(TrainError::Stopped);
            }
            let img = image::open(path)
                .map_err(|source| TrainError::Image {
                    path: path.clone(),
                    source,
                })?
                .to_rgb8();
            if img.width() as usize != size || img.height() as usize != size {
                return Err(TrainError::Invalid(format!(
                    "{} is {}x{}, expected {size}x{size}",
                    path.display(),
                    img.width(),
                    img.height()
                )));
            }
            set.push_rgb(img.as_raw());
            set.names.push(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        Ok(set)
    }

    /// A set from interleaved RGB `u8` images of `size x size` (tests, synthetic data).
    pub fn from_rgb(size: usize, images: &[Vec<u8>]) -> TrainResult<Self> {
        let mut set = Self {
            size,
            data: Vec::new(),
            names: Vec::new(),
        };
        for (i, img) in images.iter().enumerate() {
            if img.len() != 3 * size * size {
                return Err(TrainError::Invalid(format!(
                    "image {i} has {} values, expected {}",
                    img.len(),
                    3 * size * size
                )));
            }
            set.push_rgb(img);
            set.names.push(format!("synthetic-{i}"));
        }
        Ok(set)
    }

    fn push_rgb(&mut self, rgb: &[u8]) {
        let plane = self.size * self.size;
        let start = self.data.len();
        self.data.resize(start + 3 * plane, 0);
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                self.data[start + c * plane + p] = v;
            }
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Side of the images.
    pub fn size(&self) -> usize {
        self.size
    }

    /// File name of image `i`.
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map(String::as_str).unwrap_or("")
    }

    /// Splits into (train, validation) with `val` images chosen by a seeded shuffle.
    pub fn split(&self, val: usize, seed: u64) -> TrainResult<(Self, Self)> {
        if val >= self.len() {
            return Err(TrainError::Invalid(format!(
                "cannot hold out {val} of {} images",
                self.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let (v, t) = order.split_at(val);
        let mut v = v.to_vec();
        let mut t = t.to_vec();
        v.sort_unstable();
        t.sort_unstable();
        Ok((self.subset(&t), self.subset(&v)))
    }

    fn subset(&self, idx: &[usize]) -> Self {
        let n = 3 * self.size * self.size;
        let mut data = Vec::with_capacity(idx.len() * n);
        let mut names = Vec::with_capacity(idx.len());
        for &i in idx {
            data.extend_from_slice(&self.data[i * n..(i + 1) * n]);
            names.push(self.names[i].clone());
        }
        Self {
            size: self.size,
            data,
            names,
        }
    }

    /// Images `idx` as a `[k, 3, s, s]` tensor in `[0, 1]`; `flip[j]` mirrors image `j`
    /// horizontally.
    pub fn batch(&self, idx: &[usize], flip: &[bool], dev: &Device) -> TrainResult<Tensor> {
        let s = self.size;
        let n = 3 * s * s;
        let mut out = Vec::with_capacity(idx.len() * n);
        for (j, &i) in idx.iter().enumerate() {
            let img = self.data.get(i * n..(i + 1) * n).ok_or_else(|| {
                TrainError::Invalid(format!("image {i} out of range ({})", self.len()))
            })?;
            if flip.get(j).copied().unwrap_or(false) {
                for row in img.chunks_exact(s) {
                    out.extend(row.iter().rev().map(|&v| f32::from(v) / 255.0));
                }
            } else {
                out.extend(img.iter().map(|&v| f32::from(v) / 255.0));
            }
        }
        Ok(Tensor::from_vec(out, (idx.len(), 3, s, s), dev)?)
    }
}

/// A reproducible stream of minibatches: epoch `e` visits the training images in the order of a
/// shuffle seeded by `(seed, e)`, and each image is flipped with probability 1/2 (also seeded),
/// so the batch of any step can be recomputed after a resume.
#[derive(Clone, Debug)]
pub struct BatchOrder {
    n: usize,
    batch: usize,
    seed: u64,
}

impl BatchOrder {
    /// Batches of `batch` images out of `n`.
    pub fn new(n: usize, batch: usize, seed: u64) -> TrainResult<Self> {
        if n == 0 || batch == 0 {
            return Err(TrainError::Invalid("empty data set or batch".into()));
        }
        Ok(Self { n, batch, seed })
    }

    fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(self.seed, epoch)));
        order
    }

    /// The image indices and flips of step `step` (0-based).
    pub fn batch(&self, step: u64) -> (Vec<usize>, Vec<bool>) {
        let start = step * self.batch as u64;
        let mut idx = Vec::with_capacity(self.batch);
        let mut epoch = start / self.n as u64;
        let mut pos = (start % self.n as u64) as usize;
        let mut perm = self.permutation(epoch);
        while idx.len() < self.batch {
            if pos == self.n {
                epoch += 1;
                pos = 0;
                perm = self.permutation(epoch);
            }
            idx.push(perm[pos]);
            pos += 1;
        }
        let mut rng = StdRng::seed_from_u64(mix(self.seed ^ 0xF11F, step));
        let flips = (0..self.batch).map(|_| rng.random::<bool>()).collect();
        (idx, flips)
    }
}

/// Mixes a seed and a counter into a new seed (SplitMix64 finaliser).
pub fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed
        .wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// AdamW with decoupled weight decay (Loshchilov & Hutter) whose moments can be saved and
/// restored, so a resumed run continues exactly where it stopped (candle's `AdamW` keeps its
/// state private).
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Learning rate.
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: u64,
}

impl AdamW {
    /// An optimiser over named variables, with betas (0.9, 0.999), eps 1e-8.
    pub fn new(vars: Vec<(String, Var)>, lr: f64, weight_decay: f64) -> TrainResult<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
        })
    }

    /// The same optimiser with moment decays `beta1`, `beta2` (GANs use beta1 = 0.5).
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update from the gradients of `loss`.
    pub fn backward_step(&mut self, loss: &Tensor) -> TrainResult<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// One update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> TrainResult<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            // A gradient summed from several paths (e.g. a spectrally normalised weight, which
            // reaches the loss through both the layer and its sigma) can still carry its
            // graph; detached, the moments cannot keep every step's activations alive.
            let g = g.detach();
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?.detach();
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?.detach();
            let mhat = (&m / bc1)?;
            let vhat = (&v / bc2)?;
            let update = (mhat / (vhat.sqrt()? + self.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            var.set(&(decayed - (update * self.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`adam_m.<var>`, `adam_v.<var>`) for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam_m.{name}"), self.m[i].clone());
            out.insert(format!("adam_v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] after `steps` updates.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> TrainResult<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let (Some(m), Some(v)) = (
                state.get(&format!("adam_m.{name}")),
                state.get(&format!("adam_v.{name}")),
            ) else {
                return Err(TrainError::Invalid(format!(
                    "checkpoint has no optimiser state for {name}"
                )));
            };
            self.m[i] = m.clone();
            self.v[i] = v.clone();
        }
        self.t = steps;
        Ok(())
    }
}

/// Writes images `[n, 3, s, s]` in `[0, 1]` as a PNG grid with `cols` columns and a 2-pixel
/// grey gutter.
pub fn save_grid(images: &Tensor, cols: usize, path: &Path) -> TrainResult<()> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 || n == 0 || cols == 0 {
        return Err(TrainError::Invalid(format!(
            "grid needs [n>0, 3, h, w] images, got [{n}, {c}, {h}, {w}]"
        )));
    }
    let data: Vec<f32> = images.flatten_all()?.to_vec1()?;
    let rows = n.div_ceil(cols);
    let gap = 2;
    let gw = cols * (w + gap) + gap;
    let gh = rows * (h + gap) + gap;
    let mut img = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([96, 96, 96]));
    let plane = h * w;
    for k in 0..n {
        let ox = gap + (k % cols) * (w + gap);
        let oy = gap + (k / cols) * (h + gap);
        for y in 0..h {
            for x in 0..w {
                let mut px = [0u8; 3];
                for (ch, v) in px.iter_mut().enumerate() {
                    let f = data[k * 3 * plane + ch * plane + y * w + x];
                    *v = (f.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
                img.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb(px));
            }
        }
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| TrainError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    img.save(path).map_err(|source| TrainError::Image {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_dir_with_reports_each_image_and_stops_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..3u8 {
            image::RgbImage::from_pixel(4, 4, image::Rgb([k * 80, 10, 200]))
                .save(dir.path().join(format!("{k}.png")))
                .unwrap();
        }
        let mut calls = Vec::new();
        let set = ImageSet::load_dir_with(dir.path(), 4, |done, total| {
            calls.push((done, total));
            true
        })
        .unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(calls, [(0, 3), (1, 3), (2, 3)]);
        let mut calls = 0;
        let stopped = ImageSet::load_dir_with(dir.path(), 4, |done, _| {
            calls += 1;
            done < 1
        });
        assert!(matches!(stopped, Err(TrainError::Stopped)));
        assert_eq!(calls, 2);
    }
}
