//! The convolutional VAE: shapes, the KL term, training, save/load and reproducibility.
//! Tiny sizes only, no dataset reads.

use candle_core::{Device, Tensor};
use kintsugi::models::vae::{
    kl_divergence, latent_for_seed, param_count, sorted_vars, LoadedVae, VaeConfig,
};
use kintsugi::train::vae::{kl_weight, train_step};
use kintsugi::train::{AdamW, BatchOrder, ImageSet};

fn tiny() -> VaeConfig {
    VaeConfig {
        image_size: 16,
        latent: 4,
        base: 4,
        sigma: 0.1,
    }
}

/// Smooth synthetic "faces": a colour gradient plus a bright disc at a varying place.
fn synthetic_set(n: usize, size: usize) -> ImageSet {
    let images: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            let mut img = Vec::with_capacity(3 * size * size);
            let cx = 4.0 + (k % 4) as f32 * 2.5;
            let cy = 5.0 + (k / 4) as f32 * 3.0;
            for y in 0..size {
                for x in 0..size {
                    let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                    let disc = if d < 3.5 { 120.0 } else { 0.0 };
                    img.push((40.0 + 8.0 * x as f32 + disc).min(255.0) as u8);
                    img.push((60.0 + 6.0 * y as f32 + disc * 0.5).min(255.0) as u8);
                    img.push((90.0 + 10.0 * k as f32).min(255.0) as u8);
                }
            }
            img
        })
        .collect();
    ImageSet::from_rgb(size, &images).expect("synthetic set")
}

#[test]
fn encode_decode_shapes() {
    let dev = Device::Cpu;
    let m = LoadedVae::fresh(tiny(), 1, &dev).unwrap();
    let x = synthetic_set(3, 16).batch(&[0, 1, 2], &[], &dev).unwrap();
    let (mu, logvar) = m.vae.encode(&x).unwrap();
    assert_eq!(mu.dims(), &[3, 4]);
    assert_eq!(logvar.dims(), &[3, 4]);
    let y = m.vae.decode(&mu).unwrap();
    assert_eq!(y.dims(), &[3, 3, 16, 16]);
    let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
    // Wrong input sizes are errors, not panics.
    let bad = Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &dev).unwrap();
    assert!(m.vae.encode(&bad).is_err());
    let badz = Tensor::zeros((1, 5), candle_core::DType::F32, &dev).unwrap();
    assert!(m.vae.decode(&badz).is_err());
}

#[test]
fn shipped_config_is_small() {
    let dev = Device::Cpu;
    let m = LoadedVae::fresh(VaeConfig::faces64(), 0, &dev).unwrap();
    let n = param_count(&m.varmap);
    assert!(n < 3_000_000, "{n} parameters");
    assert!(n > 1_000_000, "{n} parameters");
}

#[test]
fn kl_matches_closed_form() {
    let dev = Device::Cpu;
    let mu = Tensor::new(&[[1.0f32, 0.0], [0.5, -1.0]], &dev).unwrap();
    let logvar = Tensor::new(&[[0.0f32, 2f32.ln()], [-1.0, 0.0]], &dev).unwrap();
    let kl: Vec<f32> = kl_divergence(&mu, &logvar).unwrap().to_vec1().unwrap();
    // KL(N(m, s^2) || N(0, 1)) = 1/2 (s^2 + m^2 - 1 - ln s^2), summed over dimensions.
    let term = |m: f64, s2: f64| 0.5 * (s2 + m * m - 1.0 - s2.ln());
    let want0 = term(1.0, 1.0) + term(0.0, 2.0);
    let want1 = term(0.5, (-1f64).exp()) + term(-1.0, 1.0);
    assert!(
        (f64::from(kl[0]) - want0).abs() < 1e-5,
        "{} vs {want0}",
        kl[0]
    );
    assert!(
        (f64::from(kl[1]) - want1).abs() < 1e-5,
        "{} vs {want1}",
        kl[1]
    );
    // The standard normal itself has zero KL.
    let zero = Tensor::zeros((1, 3), candle_core::DType::F32, &dev).unwrap();
    let k0: Vec<f32> = kl_divergence(&zero, &zero).unwrap().to_vec1().unwrap();
    assert!(k0[0].abs() < 1e-7);
}

#[test]
fn a_few_steps_reduce_the_loss() {
    let dev = Device::Cpu;
    let cfg = tiny();
    let m = LoadedVae::fresh(cfg, 3, &dev).unwrap();
    let set = synthetic_set(8, 16);
    let idx: Vec<usize> = (0..8).collect();
    let x = set.batch(&idx, &[], &dev).unwrap();
    let eps = Tensor::zeros((8, cfg.latent), candle_core::DType::F32, &dev).unwrap();
    let eval = |m: &LoadedVae| {
        let out = m.vae.forward(&x, None).unwrap();
        let t = m.vae.loss(&x, &out).unwrap();
        (t.recon + t.kl)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let before = eval(&m);
    let mut opt = AdamW::new(sorted_vars(&m.varmap).unwrap(), 3e-3, 0.0).unwrap();
    for step in 0..40 {
        let (loss, _, _, _) = train_step(&m.vae, &mut opt, &x, &eps, kl_weight(step, 10)).unwrap();
        assert!(loss.is_finite());
    }
    let after = eval(&m);
    assert!(
        after < 0.7 * before,
        "loss went from {before} to {after} in 40 steps"
    );
}

#[test]
fn save_load_gives_identical_decodes() {
    let dev = Device::Cpu;
    let cfg = tiny();
    let m = LoadedVae::fresh(cfg, 5, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae.safetensors");
    m.save(&path).unwrap();
    let back = LoadedVae::load(cfg, &path, &dev).unwrap();
    let z = Tensor::cat(
        &[
            latent_for_seed(1, cfg.latent, &dev).unwrap(),
            latent_for_seed(2, cfg.latent, &dev).unwrap(),
        ],
        0,
    )
    .unwrap();
    let a: Vec<f32> = m
        .vae
        .decode(&z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = back
        .vae
        .decode(&z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    // A missing file is an error.
    assert!(LoadedVae::load(cfg, &dir.path().join("missing.safetensors"), &dev).is_err());
}

#[test]
fn seeding_is_reproducible() {
    let dev = Device::Cpu;
    let cfg = tiny();
    let z = latent_for_seed(9, cfg.latent, &dev).unwrap();
    let decode = |seed| -> Vec<f32> {
        let m = LoadedVae::fresh(cfg, seed, &dev).unwrap();
        m.vae
            .decode(&z)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(decode(11), decode(11));
    assert_ne!(decode(11), decode(12));
    let order = BatchOrder::new(10, 4, 3).unwrap();
    assert_eq!(order.batch(7), order.batch(7));
    // Every image is visited once per epoch.
    let mut seen: Vec<usize> = (0..5).flat_map(|s| order.batch(s).0).take(20).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..10).flat_map(|i| [i, i]).collect::<Vec<_>>());
}

#[test]
fn split_and_flip() {
    let dev = Device::Cpu;
    let set = synthetic_set(10, 16);
    let (train, val) = set.split(3, 1).unwrap();
    assert_eq!((train.len(), val.len()), (7, 3));
    let (train2, val2) = set.split(3, 1).unwrap();
    assert_eq!(val.name(0), val2.name(0));
    assert_eq!(train.name(6), train2.name(6));
    let a: Vec<f32> = set
        .batch(&[0], &[false], &dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = set
        .batch(&[0], &[true], &dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // Row 0 of channel 0 reversed.
    for x in 0..16 {
        assert_eq!(a[x], b[15 - x]);
    }
}

fn write_tiny_model(dir: &std::path::Path) -> VaeConfig {
    let cfg = VaeConfig {
        image_size: 64,
        latent: 4,
        base: 2,
        sigma: 0.1,
    };
    let m = LoadedVae::fresh(cfg, 2, &Device::Cpu).unwrap();
    m.save(&dir.join("vae-faces.safetensors")).unwrap();
    let manifest = kintsugi::models::vae::VaeManifest {
        family: "vae".into(),
        architecture: cfg.architecture(),
        config: cfg,
        params: param_count(&m.varmap),
        latent_size: cfg.latent,
        input: "64x64 RGB".into(),
        data: "synthetic".into(),
        data_license: "none".into(),
        objective: "test".into(),
        command: "test".into(),
        steps: 0,
        batch: 1,
        lr: 0.0,
        seed: 2,
        train_seconds: 0.0,
        hardware: "test".into(),
        metrics: Default::default(),
    };
    manifest.write(&dir.join("vae-faces.json")).unwrap();
    cfg
}

#[test]
fn registry_loads_vae_faces_and_inpainting_keeps_known_pixels() {
    use kintsugi::imaging::{ImageF32, Mask};
    use kintsugi::models::registry::{Availability, Registry};
    use kintsugi::restore::{NullReporter, Params};

    let dir = tempfile::tempdir().unwrap();
    let empty = Registry::new(dir.path());
    assert!(empty.restorer("vae-faces").is_err());
    write_tiny_model(dir.path());
    let reg = Registry::new(dir.path());
    let info = reg
        .list()
        .into_iter()
        .find(|m| m.id == "vae-faces")
        .unwrap();
    assert_eq!(info.availability, Availability::Available);
    let r = reg.restorer("vae-faces").unwrap();
    let image = ImageF32::from_fn(40, 30, 3, |x, y, c| ((x + 2 * y + c) % 7) as f32 / 7.0);
    let mask = Mask::from_fn(40, 30, |x, y| (10..20).contains(&x) && (8..16).contains(&y));
    let params = Params::new().with("iterations", 5.0);
    let out = r.restore(&image, &mask, &params, &NullReporter).unwrap();
    assert_eq!((out.width(), out.height()), (40, 30));
    for y in 0..30 {
        for x in 0..40 {
            if !mask.get(x, y) {
                assert_eq!(out.pixel(x, y), image.pixel(x, y));
            } else {
                assert!(out.pixel(x, y).iter().all(|v| v.is_finite()));
            }
        }
    }
    // A corrupt weights file makes the model unavailable with a reason, not a panic.
    std::fs::write(dir.path().join("vae-faces.safetensors"), b"not safetensors").unwrap();
    let info = Registry::new(dir.path())
        .list()
        .into_iter()
        .find(|m| m.id == "vae-faces")
        .unwrap();
    assert!(matches!(info.availability, Availability::Unavailable(_)));
}

#[test]
fn pca_directions_are_orthonormal_and_sorted() {
    use kintsugi::models::latent_pca::LatentPca;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let d = 6;
    // Codes stretched 3x along (1, 1, 0, ...)/sqrt(2) and shifted by 0.5.
    let axis: Vec<f32> = (0..d)
        .map(|i| if i < 2 { 0.5f32.sqrt() } else { 0.0 })
        .collect();
    let codes: Vec<Vec<f32>> = (0..2000)
        .map(|_| {
            let big: f32 = rng.random_range(-1.0..1.0) * 3.0 * 3f32.sqrt();
            (0..d)
                .map(|i| 0.5 + big * axis[i] + rng.random_range(-1.0f32..1.0) * 0.3)
                .collect()
        })
        .collect();
    let pca = LatentPca::fit(&codes).unwrap();
    for i in 0..d {
        for j in 0..d {
            let dot: f32 = pca.directions[i]
                .iter()
                .zip(&pca.directions[j])
                .map(|(a, b)| a * b)
                .sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-4, "<d{i}, d{j}> = {dot}");
        }
    }
    assert!(pca.sigmas.windows(2).all(|w| w[0] >= w[1]));
    let along: f32 = pca.directions[0]
        .iter()
        .zip(&axis)
        .map(|(a, b)| a * b)
        .sum();
    assert!(along.abs() > 0.99, "top direction {:?}", pca.directions[0]);
    assert!((pca.sigmas[0] - 3.0).abs() < 0.2, "sigma {}", pca.sigmas[0]);
    assert!(pca.mean.iter().all(|m| (m - 0.5).abs() < 0.2));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pca.safetensors");
    pca.save(&path).unwrap();
    assert_eq!(LatentPca::load(&path).unwrap(), pca);
    // One sigma along the top direction moves the point by sigma_0.
    let moved = pca.offset(&pca.mean, &[1.0]);
    let dist: f32 = moved
        .iter()
        .zip(&pca.mean)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    assert!((dist - pca.sigmas[0]).abs() < 1e-4);
}

#[test]
fn resume_continues_exactly() {
    use kintsugi::train::vae::{train_vae, VaeTrainConfig};
    let dev = Device::Cpu;
    let set = synthetic_set(12, 16);
    let (train, val) = set.split(4, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |name: &str, steps: u64, resume: bool| VaeTrainConfig {
        model: tiny(),
        steps,
        batch: 4,
        lr: 1e-3,
        weight_decay: 1e-4,
        kl_warmup: 3,
        seed: 1,
        val_count: 4,
        sample_every: 0,
        runs_dir: dir.path().join("runs").join(name),
        out: dir.path().join(name),
        resume,
        max_seconds: None,
        data_desc: "synthetic".into(),
        data_license: "none".into(),
        command: "test".into(),
    };
    let mut go = |_: &kintsugi::train::vae::StepReport| true;
    let straight = train_vae(&cfg("a", 6, false), &train, &val, &dev, &mut go).unwrap();
    assert_eq!(straight.steps, 6);
    train_vae(&cfg("b", 3, false), &train, &val, &dev, &mut go).unwrap();
    let resumed = train_vae(&cfg("b", 6, true), &train, &val, &dev, &mut go).unwrap();
    assert_eq!(resumed.steps, 6);
    let a = std::fs::read(dir.path().join("a.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("b.safetensors")).unwrap();
    assert_eq!(a, b, "resumed weights differ from an uninterrupted run");
    assert!(dir.path().join("a.json").is_file());
    assert!(dir.path().join("a.pca.safetensors").is_file());
    assert!(dir.path().join("runs/a/samples_000006.png").is_file());
}

#[test]
fn f16_weights_load_and_decode_close() {
    let dev = Device::Cpu;
    let cfg = tiny();
    let m = LoadedVae::fresh(cfg, 8, &dev).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (p32, p16) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    m.save(&p32).unwrap();
    m.save_f16(&p16).unwrap();
    let s32 = std::fs::metadata(&p32).unwrap().len();
    let s16 = std::fs::metadata(&p16).unwrap().len();
    assert!(s16 * 10 < s32 * 6, "{s16} vs {s32} bytes");
    let z = latent_for_seed(3, cfg.latent, &dev).unwrap();
    let a: Vec<f32> = m
        .vae
        .decode(&z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let l1 = LoadedVae::load(cfg, &p16, &dev).unwrap();
    let l2 = LoadedVae::load(cfg, &p16, &dev).unwrap();
    let b: Vec<f32> = l1
        .vae
        .decode(&z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let c: Vec<f32> = l2
        .vae
        .decode(&z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(b, c);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 2.0 / 255.0, "f16 weights change a pixel by {worst}");
}
