//! `kintsugi sample` and `kintsugi interpolate`: decode latent codes of a generative model into
//! PNG grids and strips.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::models::gan::LoadedGan;
use crate::models::latent_pca::LatentPca;
use crate::models::registry::Registry;
use crate::models::vae::{latent_for_seed, seeded_normal, LoadedVae};
use crate::train::save_grid;

/// Arguments of `sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// Model id (see `kintsugi models`).
    #[arg(long, default_value = "vae-faces")]
    pub model: String,
    /// Number of samples.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// Seed of the latent codes (same seed, same grid).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Columns of the grid (default: about the square root of N).
    #[arg(long)]
    pub cols: Option<usize>,
    /// Scale of the prior's standard deviation ("temperature"; for a GAN, values below 1 trade
    /// variety for quality like the truncation trick); 1 samples the true prior.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample the N(0, I) prior even when the model ships `<model>.pca.safetensors`. By
    /// default codes come from the Gaussian fitted to the encoded training set (ex-post density
    /// estimation, Ghosh et al. 2020): this model's posteriors do not cover the prior, so prior
    /// samples are mostly not faces.
    #[arg(long)]
    pub prior: bool,
    /// Output PNG.
    #[arg(long, short)]
    pub output: PathBuf,
}

/// Arguments of `interpolate`.
#[derive(Debug, clap::Args)]
pub struct InterpolateArgs {
    /// Model id (see `kintsugi models`).
    #[arg(long, default_value = "vae-faces")]
    pub model: String,
    /// Seed of the first latent code.
    #[arg(long)]
    pub seed_a: u64,
    /// Seed of the second latent code.
    #[arg(long)]
    pub seed_b: u64,
    /// Images in the strip, both ends included.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Interpolate linearly instead of along the great circle (slerp).
    #[arg(long)]
    pub linear: bool,
    /// Map the seeds through the N(0, I) prior even when the model ships a fitted latent
    /// Gaussian (see `sample --prior`).
    #[arg(long)]
    pub prior: bool,
    /// Output PNG.
    #[arg(long, short)]
    pub output: PathBuf,
}

/// A generative model's decoder: the VAE's or the GAN's generator.
enum Decoder {
    Vae(Box<LoadedVae>),
    Gan(Box<LoadedGan>),
}

impl Decoder {
    fn latent(&self) -> usize {
        match self {
            Decoder::Vae(m) => m.vae.config().latent,
            Decoder::Gan(m) => m.g.config().latent,
        }
    }

    fn decode(&self, z: &Tensor) -> anyhow::Result<Tensor> {
        Ok(match self {
            Decoder::Vae(m) => m.vae.decode(z)?,
            Decoder::Gan(m) => m.g.forward(z)?,
        })
    }

    /// The latent Gaussian fitted to the training set, for models that ship one (the VAE).
    fn fitted(&self, model: &str, prior: bool) -> anyhow::Result<Option<LatentPca>> {
        match self {
            Decoder::Vae(_) if !prior => fitted_gaussian(model),
            _ => Ok(None),
        }
    }
}

fn load(model: &str, dev: &Device) -> anyhow::Result<Decoder> {
    let registry = Registry::default();
    let dir = registry.weights_dir();
    if model.starts_with("gan") {
        let (gan, _) = LoadedGan::load_model(dir, model, dev)
            .with_context(|| format!("loading model '{model}'"))?;
        return Ok(Decoder::Gan(Box::new(gan)));
    }
    if !model.starts_with("vae") {
        bail!("sampling is implemented for VAE (vae-*) and GAN (gan-*) models, not '{model}'");
    }
    let (loaded, _) = LoadedVae::load_model(dir, model, dev)
        .with_context(|| format!("loading model '{model}'"))?;
    Ok(Decoder::Vae(Box::new(loaded)))
}

/// The latent Gaussian fitted to the training set (`<model>.pca.safetensors`), if shipped.
fn fitted_gaussian(model: &str) -> anyhow::Result<Option<LatentPca>> {
    let path = Registry::default()
        .weights_dir()
        .join(format!("{model}.pca.safetensors"));
    if !path.is_file() {
        return Ok(None);
    }
    let pca = LatentPca::load(&path).with_context(|| format!("loading {}", path.display()))?;
    Ok(Some(pca))
}

/// Maps standard-normal rows `eps` (`[n, d]`) to codes of the fitted Gaussian.
fn to_fitted(pca: &LatentPca, eps: &Tensor) -> anyhow::Result<Tensor> {
    let rows: Vec<Vec<f32>> = eps.to_vec2()?;
    let codes: Vec<f32> = rows.iter().flat_map(|e| pca.offset(&pca.mean, e)).collect();
    Ok(Tensor::from_vec(codes, eps.dims(), eps.device())?)
}

/// Runs `sample`.
pub fn run_sample(a: SampleArgs) -> anyhow::Result<()> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let dev = Device::Cpu;
    let m = load(&a.model, &dev)?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    let latent = m.latent();
    let eps = (seeded_normal(&mut rng, a.n, latent, &dev)? * a.temperature)?;
    let z = match m.fitted(&a.model, a.prior)? {
        Some(pca) => to_fitted(&pca, &eps)?,
        None => eps,
    };
    // Warm up once, then time a single-code decode: the cost of one slider move.
    let one = z.narrow(0, 0, 1)?;
    m.decode(&one)?;
    let t0 = std::time::Instant::now();
    m.decode(&one)?;
    let single_ms = t0.elapsed().as_secs_f64() * 1e3;
    let images = m.decode(&z)?;
    let cols = a
        .cols
        .unwrap_or_else(|| (a.n as f64).sqrt().ceil() as usize)
        .max(1);
    save_grid(&images, cols, &a.output)?;
    eprintln!(
        "wrote {} ({} samples of {}, seed {}); one decode took {single_ms:.1} ms",
        a.output.display(),
        a.n,
        a.model,
        a.seed
    );
    Ok(())
}

/// Spherical interpolation between `a` and `b` (`[1, d]`) at `t` in `[0, 1]`; falls back to
/// linear when they are nearly parallel.
pub fn slerp(a: &Tensor, b: &Tensor, t: f64) -> anyhow::Result<Tensor> {
    let av: Vec<f32> = a.flatten_all()?.to_vec1()?;
    let bv: Vec<f32> = b.flatten_all()?.to_vec1()?;
    let dot: f64 = av.iter().zip(&bv).map(|(x, y)| f64::from(x * y)).sum();
    let na: f64 = av.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
    let nb: f64 = bv.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
    let cos = (dot / (na * nb).max(1e-12)).clamp(-1.0, 1.0);
    let omega = cos.acos();
    let (wa, wb) = if omega.sin().abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        (
            ((1.0 - t) * omega).sin() / omega.sin(),
            (t * omega).sin() / omega.sin(),
        )
    };
    Ok(((a * wa)? + (b * wb)?)?)
}

/// Runs `interpolate`.
pub fn run_interpolate(a: InterpolateArgs) -> anyhow::Result<()> {
    if a.steps < 2 {
        bail!("--steps must be at least 2 (both ends are included)");
    }
    let dev = Device::Cpu;
    let m = load(&a.model, &dev)?;
    let latent = m.latent();
    // Interpolate the standard-normal codes, then map them (slerp stays in the typical set of
    // the whitened Gaussian).
    let za = latent_for_seed(a.seed_a, latent, &dev)?;
    let zb = latent_for_seed(a.seed_b, latent, &dev)?;
    let mut zs = Vec::with_capacity(a.steps);
    for i in 0..a.steps {
        let t = i as f64 / (a.steps - 1) as f64;
        zs.push(if a.linear {
            ((&za * (1.0 - t))? + (&zb * t)?)?
        } else {
            slerp(&za, &zb, t)?
        });
    }
    let z = Tensor::cat(&zs, 0)?;
    let z = match m.fitted(&a.model, a.prior)? {
        Some(pca) => to_fitted(&pca, &z)?,
        None => z,
    };
    let images = m.decode(&z)?;
    save_grid(&images, a.steps, &a.output)?;
    eprintln!(
        "wrote {} ({} steps from seed {} to seed {})",
        a.output.display(),
        a.steps,
        a.seed_a,
        a.seed_b
    );
    Ok(())
}
