//! The model side of the latent explorer: the [`LatentModel`] trait the panel drives, its
//! implementation for the face VAE ([`VaeLatent`]), and the pure helpers around it (latent
//! interpolation, cropping an image region to the model's input and pasting a decode back).
//!
//! Nothing here knows about egui: the panel ([`super::latent`]) talks to a `LatentModel` only
//! through the latent worker ([`super::latent_worker`]). A GAN plugs in by implementing the
//! trait (it has no encoder, so [`LatentModel::encode`] answers `Ok(None)`, and it prefers
//! [`Interpolation::Spherical`]) and adding one arm to [`load_latent_model`].

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::imaging::{ImageF32, Mask, Rect};
use crate::models::latent_pca::LatentPca;
use crate::models::vae::{seeded_normal, LoadedVae, VaeError};

/// Model ids the latent explorer can open, in the order its picker lists them.
pub const LATENT_MODELS: &[&str] = &["vae-faces", "gan-faces"];

/// Why a latent model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum LatentError {
    /// The weights (or manifest) are not where the registry looks.
    #[error("weights not found: {0}")]
    Missing(String),
    /// The VAE failed to load or run.
    #[error(transparent)]
    Vae(#[from] VaeError),
    /// The GAN failed to load or run.
    #[error(transparent)]
    Gan(#[from] crate::models::gan::GanError),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The explorer does not know this model id.
    #[error("the latent explorer does not support model '{0}'")]
    Unsupported(String),
    /// An input (code length, image size) does not fit the model.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// How in-between codes are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// `(1 - t) a + t b`: right for a VAE, whose codes are not all of one norm.
    Linear,
    /// Along the great circle around the distribution's centre: keeps Gaussian codes in
    /// their typical set (the usual choice for a GAN).
    Spherical,
}

impl Interpolation {
    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            Interpolation::Linear => "linear",
            Interpolation::Spherical => "spherical (slerp)",
        }
    }
}

/// A generative model with a latent space the explorer can walk: decode codes to images,
/// optionally encode an image to a code, and describe the distribution of its codes.
///
/// Images are RGB, `image_size` square, values in `[0, 1]`. Implementations run on the latent
/// worker thread (hence `Send + Sync`); they may be slow, the UI never waits for them.
pub trait LatentModel: Send + Sync {
    /// Registry id, shown in the panel.
    fn id(&self) -> &str;

    /// Length of a latent code.
    fn latent_dim(&self) -> usize;

    /// Side of the square RGB images that [`LatentModel::decode`] returns and
    /// [`LatentModel::encode`] takes.
    fn image_size(&self) -> usize;

    /// Decodes a batch of codes (each [`LatentModel::latent_dim`] long) into images.
    fn decode(&self, codes: &[Vec<f32>]) -> Result<Vec<ImageF32>, LatentError>;

    /// The code of an `image_size` square RGB image, or `Ok(None)` when the model has no
    /// encoder (a GAN).
    fn encode(&self, image: &ImageF32) -> Result<Option<Vec<f32>>, LatentError>;

    /// Whether [`LatentModel::encode`] can answer `Some`.
    fn can_encode(&self) -> bool;

    /// Principal directions of the model's codes (the sliders), when known.
    fn pca(&self) -> Option<&LatentPca>;

    /// `n` codes from the model's sampling distribution; the same seed gives the same codes.
    fn sample(&self, seed: u64, n: usize) -> Result<Vec<Vec<f32>>, LatentError>;

    /// A line for the panel about what is missing or approximate (e.g. no PCA file).
    fn notice(&self) -> Option<String> {
        None
    }

    /// The interpolation the panel starts with.
    fn interpolation(&self) -> Interpolation {
        Interpolation::Linear
    }

    /// Centre of the code distribution: spherical interpolation pivots around it.
    fn centre(&self) -> Vec<f32> {
        match self.pca() {
            Some(p) => p.mean.clone(),
            None => vec![0.0; self.latent_dim()],
        }
    }

    /// Standard deviation of each raw code dimension (the unit of the raw sliders).
    fn raw_sigmas(&self) -> Vec<f32> {
        match self.pca() {
            Some(p) => raw_sigmas(p),
            None => vec![1.0; self.latent_dim()],
        }
    }
}

/// Per-dimension standard deviations implied by a PCA: `sqrt(sum_k sigma_k^2 d_k[i]^2)`.
pub fn raw_sigmas(pca: &LatentPca) -> Vec<f32> {
    let d = pca.dim();
    let mut var = vec![0.0f64; d];
    for (dir, s) in pca.directions.iter().zip(&pca.sigmas) {
        let s2 = f64::from(*s) * f64::from(*s);
        for (v, x) in var.iter_mut().zip(dir) {
            *v += s2 * f64::from(*x) * f64::from(*x);
        }
    }
    var.iter()
        .map(|v| (v.sqrt() as f32).max(1e-6))
        .collect::<Vec<_>>()
}

/// The code between `a` (`t = 0`) and `b` (`t = 1`). Spherical interpolation runs on the great
/// circle of `a - centre` and `b - centre` and falls back to linear for nearly parallel codes.
/// The ends are exactly `a` and `b`.
pub fn interpolate(a: &[f32], b: &[f32], t: f32, kind: Interpolation, centre: &[f32]) -> Vec<f32> {
    if t <= 0.0 {
        return a.to_vec();
    }
    if t >= 1.0 {
        return b.to_vec();
    }
    let linear = || {
        a.iter()
            .zip(b)
            .map(|(x, y)| (1.0 - t) * x + t * y)
            .collect()
    };
    match kind {
        Interpolation::Linear => linear(),
        Interpolation::Spherical => {
            let c = |i: usize| centre.get(i).copied().unwrap_or(0.0);
            let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let (x, y) = (f64::from(x - c(i)), f64::from(y - c(i)));
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            let cos = (dot / (na.sqrt() * nb.sqrt()).max(1e-12)).clamp(-1.0, 1.0);
            let omega = cos.acos();
            if omega.sin().abs() < 1e-6 {
                return linear();
            }
            let t = f64::from(t);
            let wa = (((1.0 - t) * omega).sin() / omega.sin()) as f32;
            let wb = ((t * omega).sin() / omega.sin()) as f32;
            a.iter()
                .zip(b)
                .enumerate()
                .map(|(i, (x, y))| c(i) + wa * (x - c(i)) + wb * (y - c(i)))
                .collect()
        }
    }
}

/// The largest square centred in a `width` x `height` image.
pub fn centred_square(width: usize, height: usize) -> Rect {
    let side = width.min(height);
    Rect {
        x: (width - side) / 2,
        y: (height - side) / 2,
        width: side,
        height: side,
    }
}

/// Clamps `r` into a `width` x `height` image, keeping at least one pixel.
pub fn clamp_region(r: Rect, width: usize, height: usize) -> Rect {
    let w = r.width.clamp(1, width.max(1));
    let h = r.height.clamp(1, height.max(1));
    Rect {
        x: r.x.min(width.saturating_sub(w)),
        y: r.y.min(height.saturating_sub(h)),
        width: w,
        height: h,
    }
}

/// The RGB of a pixel of any channel count (grey is repeated, alpha dropped).
fn rgb_of(p: &[f32]) -> [f32; 3] {
    if p.len() >= 3 {
        [p[0], p[1], p[2]]
    } else {
        [p[0]; 3]
    }
}

/// `region` of `image` box-filtered (area average) to an `s` x `s` RGB image: the model's
/// input. A region smaller than `s` is sampled nearest.
pub fn crop_to_model(image: &ImageF32, region: Rect, s: usize) -> Result<ImageF32, LatentError> {
    let region = clamp_region(region, image.width(), image.height());
    if s == 0 || image.width() == 0 || image.height() == 0 || image.channels() == 0 {
        return Err(LatentError::Invalid("empty image or model size".into()));
    }
    let (w, h) = (region.width, region.height);
    Ok(ImageF32::from_fn(s, s, 3, |ox, oy, k| {
        let x0 = ox * w / s;
        let x1 = ((ox + 1) * w / s).max(x0 + 1).min(w);
        let y0 = oy * h / s;
        let y1 = ((oy + 1) * h / s).max(y0 + 1).min(h);
        let mut sum = 0.0f32;
        for y in y0..y1 {
            for x in x0..x1 {
                sum += rgb_of(image.pixel(region.x + x, region.y + y))[k];
            }
        }
        sum / ((x1 - x0) * (y1 - y0)) as f32
    }))
}

/// Bilinear sample of channel `k` of an `s` x `s` image at the centre of pixel `(x, y)` of a
/// `w` x `h` region it is stretched over.
fn sample_stretched(img: &ImageF32, w: usize, h: usize, x: usize, y: usize, k: usize) -> f32 {
    let s = img.width();
    let fx = ((x as f32 + 0.5) * s as f32 / w as f32 - 0.5).clamp(0.0, (s - 1) as f32);
    let fy = ((y as f32 + 0.5) * s as f32 / h as f32 - 0.5).clamp(0.0, (s - 1) as f32);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    let p = |xx: usize, yy: usize| img.pixel(xx, yy)[k];
    let top = p(x0, y0) * (1.0 - tx) + p(x1, y0) * tx;
    let bottom = p(x0, y1) * (1.0 - tx) + p(x1, y1) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// `image` with `region` replaced by `decode` stretched back over it (bilinear), and the mask
/// of the replaced pixels, for an undoable repair.
///
/// With a `reference` (the decode of the code the region was encoded to), only the edit is
/// transferred: each pixel becomes `image + decode - reference`, which keeps the photo's
/// detail that the model cannot reproduce. Grey images take the luminance; alpha is kept.
pub fn paste_back(
    image: &ImageF32,
    region: Rect,
    decode: &ImageF32,
    reference: Option<&ImageF32>,
) -> Result<(ImageF32, Mask), LatentError> {
    let region = clamp_region(region, image.width(), image.height());
    let s = decode.width();
    if s == 0 || decode.height() != s || decode.channels() != 3 {
        return Err(LatentError::Invalid(
            "the decode is not a square RGB image".into(),
        ));
    }
    if reference.is_some_and(|r| r.width() != s || r.height() != s || r.channels() != 3) {
        return Err(LatentError::Invalid(
            "the reference decode differs in size".into(),
        ));
    }
    let mut out = image.clone();
    let c = image.channels();
    let holes = Mask::from_fn(image.width(), image.height(), |x, y| {
        x >= region.x && x < region.right() && y >= region.y && y < region.bottom()
    });
    let (w, h) = (region.width, region.height);
    for y in 0..h {
        for x in 0..w {
            let rgb = [0, 1, 2].map(|k| {
                let d = sample_stretched(decode, w, h, x, y, k);
                match reference {
                    Some(r) => d - sample_stretched(r, w, h, x, y, k),
                    None => d,
                }
            });
            let px = out.pixel_mut(region.x + x, region.y + y);
            if c >= 3 {
                for k in 0..3 {
                    px[k] = match reference {
                        Some(_) => (px[k] + rgb[k]).clamp(0.0, 1.0),
                        None => rgb[k].clamp(0.0, 1.0),
                    };
                }
            } else {
                let luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
                px[0] = match reference {
                    Some(_) => (px[0] + luma).clamp(0.0, 1.0),
                    None => luma.clamp(0.0, 1.0),
                };
            }
        }
    }
    Ok((out, holes))
}

/// Checks one code against the latent size: its length and that every value is finite.
fn check_code(code: &[f32], d: usize) -> Result<(), LatentError> {
    if code.len() != d {
        return Err(LatentError::Invalid(format!(
            "a code of length {} for latent size {d}",
            code.len()
        )));
    }
    if code.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Invalid("the code is not finite".into()));
    }
    Ok(())
}

/// Decodes `codes` (each checked against latent size `d`) with `net`, which maps `[n, d]` codes
/// to `[n, 3, s, s]` planar images in `[0, 1]`, into `s x s` RGB images.
fn decode_with(
    codes: &[Vec<f32>],
    d: usize,
    s: usize,
    dev: &Device,
    net: impl Fn(&Tensor) -> Result<Tensor, LatentError>,
) -> Result<Vec<ImageF32>, LatentError> {
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    for c in codes {
        check_code(c, d)?;
    }
    let n = codes.len();
    let flat: Vec<f32> = codes.iter().flatten().copied().collect();
    let z = Tensor::from_vec(flat, (n, d), dev)?;
    let planar: Vec<f32> = net(&z)?.flatten_all()?.to_vec1()?;
    let plane = s * s;
    Ok((0..n)
        .map(|i| {
            let img = &planar[i * 3 * plane..(i + 1) * 3 * plane];
            ImageF32::from_fn(s, s, 3, |x, y, k| img[k * plane + y * s + x])
        })
        .collect())
}

/// The face VAE as a [`LatentModel`]: decodes with its decoder, encodes to the posterior mean,
/// samples from the Gaussian fitted to the encoded training set (`<id>.pca.safetensors`, as
/// `kintsugi sample` does) or from the prior when that file is absent.
pub struct VaeLatent {
    id: String,
    model: LoadedVae,
    pca: Option<LatentPca>,
    notice: Option<String>,
    dev: Device,
}

impl VaeLatent {
    /// Loads `<dir>/<id>.safetensors`, `<dir>/<id>.json` and, if present,
    /// `<dir>/<id>.pca.safetensors`.
    pub fn load(dir: &Path, id: &str) -> Result<Self, LatentError> {
        let dev = Device::Cpu;
        for file in [format!("{id}.safetensors"), format!("{id}.json")] {
            let p = dir.join(&file);
            if !p.is_file() {
                return Err(LatentError::Missing(p.display().to_string()));
            }
        }
        let (model, _) = LoadedVae::load_model(dir, id, &dev)?;
        let pca_path = dir.join(format!("{id}.pca.safetensors"));
        let (pca, notice) = if pca_path.is_file() {
            match LatentPca::load(&pca_path) {
                Ok(p) => (Some(p), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "principal directions unavailable ({e}); sampling the N(0, I) prior"
                    )),
                ),
            }
        } else {
            (
                None,
                Some(format!(
                    "no {} : principal directions unavailable, sampling the N(0, I) prior",
                    pca_path.display()
                )),
            )
        };
        Self::with_parts(id, model, pca, notice)
    }

    /// Wraps an already built VAE (tests use tiny random ones) with an optional PCA.
    pub fn new(id: &str, model: LoadedVae, pca: Option<LatentPca>) -> Result<Self, LatentError> {
        Self::with_parts(id, model, pca, None)
    }

    fn with_parts(
        id: &str,
        model: LoadedVae,
        pca: Option<LatentPca>,
        notice: Option<String>,
    ) -> Result<Self, LatentError> {
        let d = model.vae.config().latent;
        let (pca, notice) = match pca {
            Some(p) if p.dim() != d || p.directions.iter().any(|v| v.len() != d) => (
                None,
                Some(format!(
                    "the PCA file is for latent size {}, the model has {d}: ignored",
                    p.dim()
                )),
            ),
            other => (other, notice),
        };
        Ok(Self {
            id: id.to_owned(),
            model,
            pca,
            notice,
            dev: Device::Cpu,
        })
    }
}

impl LatentModel for VaeLatent {
    fn id(&self) -> &str {
        &self.id
    }

    fn latent_dim(&self) -> usize {
        self.model.vae.config().latent
    }

    fn image_size(&self) -> usize {
        self.model.vae.config().image_size
    }

    fn decode(&self, codes: &[Vec<f32>]) -> Result<Vec<ImageF32>, LatentError> {
        let (d, s) = (self.latent_dim(), self.image_size());
        decode_with(codes, d, s, &self.dev, |z| Ok(self.model.vae.decode(z)?))
    }

    fn encode(&self, image: &ImageF32) -> Result<Option<Vec<f32>>, LatentError> {
        let s = self.image_size();
        if image.width() != s || image.height() != s || image.channels() != 3 {
            return Err(LatentError::Invalid(format!(
                "the encoder takes {s}x{s} RGB, got {}x{}x{}",
                image.width(),
                image.height(),
                image.channels()
            )));
        }
        let plane = s * s;
        let mut planar = vec![0.0f32; 3 * plane];
        for y in 0..s {
            for x in 0..s {
                for (k, v) in image.pixel(x, y).iter().enumerate() {
                    planar[k * plane + y * s + x] = *v;
                }
            }
        }
        let x = Tensor::from_vec(planar, (1, 3, s, s), &self.dev)?;
        let (mu, _) = self.model.vae.encode(&x)?;
        Ok(Some(mu.flatten_all()?.to_vec1()?))
    }

    fn can_encode(&self) -> bool {
        true
    }

    fn pca(&self) -> Option<&LatentPca> {
        self.pca.as_ref()
    }

    fn sample(&self, seed: u64, n: usize) -> Result<Vec<Vec<f32>>, LatentError> {
        let d = self.latent_dim();
        let mut rng = StdRng::seed_from_u64(seed);
        let eps: Vec<Vec<f32>> = seeded_normal(&mut rng, n, d, &self.dev)?.to_vec2()?;
        Ok(match &self.pca {
            // The fitted Gaussian: what `kintsugi sample` draws by default.
            Some(p) => eps.iter().map(|e| p.offset(&p.mean, e)).collect(),
            None => eps,
        })
    }

    fn notice(&self) -> Option<String> {
        self.notice.clone()
    }
}

/// The face GAN as a [`LatentModel`]: decodes with its (moving-average) generator, has no
/// encoder, samples the N(0, I) prior, interpolates spherically, and offers GANSpace sliders
/// (principal directions of the generator's early features, [`crate::models::gan::ganspace`],
/// computed when the model loads: deterministic and well under a second).
pub struct GanLatent {
    id: String,
    gan: crate::models::gan::LoadedGan,
    pca: LatentPca,
    dev: Device,
}

/// GANSpace components offered as sliders.
pub const GANSPACE_COMPONENTS: usize = 12;
/// Codes sampled to fit the GANSpace components.
const GANSPACE_SAMPLES: usize = 2000;

impl GanLatent {
    /// Loads `<dir>/<id>.safetensors` with the sizes of `<dir>/<id>.json`.
    pub fn load(dir: &Path, id: &str) -> Result<Self, LatentError> {
        for file in [format!("{id}.safetensors"), format!("{id}.json")] {
            let p = dir.join(&file);
            if !p.is_file() {
                return Err(LatentError::Missing(p.display().to_string()));
            }
        }
        let (gan, _) = crate::models::gan::LoadedGan::load_model(dir, id, &Device::Cpu)?;
        Self::new(id, gan)
    }

    /// Wraps a GAN (tests use tiny random ones) and fits its GANSpace sliders.
    pub fn new(id: &str, gan: crate::models::gan::LoadedGan) -> Result<Self, LatentError> {
        let pca = crate::models::gan::ganspace(&gan.g, GANSPACE_SAMPLES, GANSPACE_COMPONENTS, 0)?;
        Ok(Self {
            id: id.to_owned(),
            gan,
            pca,
            dev: Device::Cpu,
        })
    }
}

impl LatentModel for GanLatent {
    fn id(&self) -> &str {
        &self.id
    }

    fn latent_dim(&self) -> usize {
        self.gan.g.config().latent
    }

    fn image_size(&self) -> usize {
        self.gan.g.config().image_size
    }

    fn decode(&self, codes: &[Vec<f32>]) -> Result<Vec<ImageF32>, LatentError> {
        let (d, s) = (self.latent_dim(), self.image_size());
        decode_with(codes, d, s, &self.dev, |z| Ok(self.gan.g.forward(z)?))
    }

    fn encode(&self, _image: &ImageF32) -> Result<Option<Vec<f32>>, LatentError> {
        Ok(None)
    }

    fn can_encode(&self) -> bool {
        false
    }

    fn pca(&self) -> Option<&LatentPca> {
        Some(&self.pca)
    }

    fn sample(&self, seed: u64, n: usize) -> Result<Vec<Vec<f32>>, LatentError> {
        let mut rng = StdRng::seed_from_u64(seed);
        Ok(seeded_normal(&mut rng, n, self.latent_dim(), &self.dev)?.to_vec2()?)
    }

    fn notice(&self) -> Option<String> {
        Some(format!(
            "GAN: no encoder (regions cannot be encoded; inpaint with the gan-faces model);              sliders are the top {GANSPACE_COMPONENTS} GANSpace directions"
        ))
    }

    fn interpolation(&self) -> Interpolation {
        Interpolation::Spherical
    }

    fn centre(&self) -> Vec<f32> {
        vec![0.0; self.latent_dim()]
    }

    fn raw_sigmas(&self) -> Vec<f32> {
        vec![1.0; self.latent_dim()]
    }
}

/// Loads the latent model `id` from the weights folder `dir`.
pub fn load_latent_model(dir: &Path, id: &str) -> Result<Box<dyn LatentModel>, LatentError> {
    match id {
        id if id.starts_with("vae") => Ok(Box::new(VaeLatent::load(dir, id)?)),
        id if id.starts_with("gan") => Ok(Box::new(GanLatent::load(dir, id)?)),
        other => Err(LatentError::Unsupported(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::vae::VaeConfig;

    fn tiny() -> VaeLatent {
        let cfg = VaeConfig {
            image_size: 16,
            latent: 6,
            base: 4,
            sigma: 0.1,
        };
        let m = LoadedVae::fresh(cfg, 3, &Device::Cpu).expect("tiny vae");
        VaeLatent::new("vae-test", m, None).expect("wrap")
    }

    #[test]
    fn interpolation_ends_are_exact_and_slerp_keeps_norm() {
        let a = vec![1.0, 0.0, 0.5];
        let b = vec![0.0, 1.0, -0.5];
        for kind in [Interpolation::Linear, Interpolation::Spherical] {
            assert_eq!(interpolate(&a, &b, 0.0, kind, &[0.0; 3]), a);
            assert_eq!(interpolate(&a, &b, 1.0, kind, &[0.0; 3]), b);
        }
        let mid = interpolate(&a, &b, 0.5, Interpolation::Linear, &[0.0; 3]);
        assert_eq!(mid, vec![0.5, 0.5, 0.0]);
        // Equal norms: the great-circle midpoint keeps the norm, the chord midpoint does not.
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let s = interpolate(&a, &b, 0.5, Interpolation::Spherical, &[0.0; 3]);
        assert!((n(&s) - n(&a)).abs() < 1e-5, "{} vs {}", n(&s), n(&a));
        assert!(n(&mid) < n(&a) - 0.1);
        // Around a centre: shifting everything shifts the result.
        let c = [2.0f32, 2.0, 2.0];
        let shift = |v: &[f32]| v.iter().map(|x| x + 2.0).collect::<Vec<_>>();
        let s2 = interpolate(&shift(&a), &shift(&b), 0.5, Interpolation::Spherical, &c);
        for (x, y) in s2.iter().zip(shift(&s)) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn raw_sigmas_of_an_axis_aligned_pca_are_its_sigmas() {
        let pca = LatentPca {
            mean: vec![0.0; 3],
            directions: vec![
                vec![0.0, 1.0, 0.0],
                vec![1.0, 0.0, 0.0],
                vec![0.0, 0.0, 1.0],
            ],
            sigmas: vec![3.0, 2.0, 0.5],
        };
        let r = raw_sigmas(&pca);
        assert!((r[0] - 2.0).abs() < 1e-6 && (r[1] - 3.0).abs() < 1e-6);
        assert!((r[2] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn crop_and_paste_back_touch_only_the_region() {
        let img = ImageF32::from_fn(40, 30, 3, |x, y, c| {
            ((x * 3 + y * 5 + c) % 11) as f32 / 11.0
        });
        let region = Rect {
            x: 10,
            y: 5,
            width: 20,
            height: 20,
        };
        let small = crop_to_model(&img, region, 8).expect("crop");
        assert_eq!((small.width(), small.height(), small.channels()), (8, 8, 3));
        // 20 / 8 = 2.5: the first cell is the box average of the region's top-left 2x2.
        let mut first = 0.0;
        for y in 5..7 {
            for x in 10..12 {
                first += img.pixel(x, y)[1];
            }
        }
        assert!((small.pixel(0, 0)[1] - first / 4.0).abs() < 1e-6);
        let decode = ImageF32::from_fn(8, 8, 3, |_, _, _| 0.25);
        let (out, holes) = paste_back(&img, region, &decode, None).expect("paste");
        assert_eq!(holes.count(), 400);
        for y in 0..30 {
            for x in 0..40 {
                if holes.get(x, y) {
                    assert_eq!(out.pixel(x, y), &[0.25, 0.25, 0.25]);
                } else {
                    assert_eq!(out.pixel(x, y), img.pixel(x, y));
                }
            }
        }
        // Transferring only the edit: a decode equal to its reference changes nothing.
        let (same, _) = paste_back(&img, region, &decode, Some(&decode)).expect("paste");
        assert_eq!(same.data(), img.data());
    }

    #[test]
    fn vae_decode_encode_and_seeded_samples() {
        let m = tiny();
        assert_eq!((m.latent_dim(), m.image_size()), (6, 16));
        let a = m.sample(5, 3).expect("sample");
        assert_eq!(a, m.sample(5, 3).expect("sample"));
        assert_ne!(a, m.sample(6, 3).expect("sample"));
        let imgs = m.decode(&a).expect("decode");
        assert_eq!(imgs.len(), 3);
        assert_eq!((imgs[0].width(), imgs[0].channels()), (16, 3));
        assert!(imgs[0].data().iter().all(|v| (0.0..=1.0).contains(v)));
        let z = m.encode(&imgs[1]).expect("encode").expect("vae encodes");
        assert_eq!(z.len(), 6);
        // Wrong sizes are errors, not panics.
        assert!(m.decode(&[vec![0.0; 5]]).is_err());
        assert!(m.encode(&ImageF32::new(8, 8, 3)).is_err());
        assert!(m.notice().is_none());
    }

    #[test]
    fn gan_decodes_samples_and_offers_ganspace_sliders() {
        let cfg = crate::models::gan::GanConfig {
            image_size: 16,
            latent: 8,
            g_base: 2,
            d_base: 2,
        };
        let gan = crate::models::gan::LoadedGan::fresh(cfg, 1, &Device::Cpu).unwrap();
        let m = GanLatent::new("gan-test", gan).unwrap();
        assert_eq!((m.latent_dim(), m.image_size()), (8, 16));
        assert!(!m.can_encode());
        assert!(m.encode(&ImageF32::new(16, 16, 3)).unwrap().is_none());
        assert_eq!(m.interpolation(), Interpolation::Spherical);
        let a = m.sample(5, 3).unwrap();
        assert_eq!(a, m.sample(5, 3).unwrap());
        assert_ne!(a, m.sample(6, 3).unwrap());
        let imgs = m.decode(&a).unwrap();
        assert_eq!(imgs.len(), 3);
        assert!(imgs.iter().all(|i| i.width() == 16 && i.channels() == 3));
        // Sliders: at most the latent size, each moving the decode.
        let pca = m.pca().unwrap();
        assert_eq!(pca.count(), 8.min(GANSPACE_COMPONENTS));
        let moved = pca.offset(&a[0], &[2.0]);
        let b = m.decode(&[moved]).unwrap();
        assert_ne!(b[0].data(), imgs[0].data());
        // Wrong code lengths are errors.
        assert!(m.decode(&[vec![0.0; 7]]).is_err());
        assert!(m.decode(&[vec![f32::NAN; 8]]).is_err());
    }

    #[test]
    fn missing_and_corrupt_weights_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load_latent_model(dir.path(), "vae-faces")
            .err()
            .expect("missing");
        assert!(matches!(e, LatentError::Missing(_)), "{e}");
        std::fs::write(
            dir.path().join("vae-faces.safetensors"),
            b"not a tensor file",
        )
        .expect("write");
        // A valid manifest beside corrupt weights (the shipped one, when present).
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/vae-faces.json");
        if let Ok(text) = std::fs::read_to_string(shipped) {
            std::fs::write(dir.path().join("vae-faces.json"), text).expect("write");
        }
        assert!(load_latent_model(dir.path(), "vae-faces").is_err());
        assert!(matches!(
            load_latent_model(dir.path(), "rl-refine"),
            Err(LatentError::Unsupported(_))
        ));
    }
}
