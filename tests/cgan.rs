//! cGAN inpainter: generator shapes and compositing, weight round trip, corrupt weights, and a
//! few training steps on a tiny synthetic set. Tiny networks and images; no dataset reads.

use candle_core::{Device, Tensor};
use kintsugi::imaging::ImageF32;
use kintsugi::models::cgan::{CganError, GeneratorConfig, LoadedDiscriminator, LoadedGenerator};
use kintsugi::train::cgan::{noise, Batch, CganTrainer, CropSource, LossWeights};
use kintsugi::train::damage_synth::{synthesize, DamageConfig};

fn tiny() -> GeneratorConfig {
    GeneratorConfig { base: 4 }
}

fn inputs(n: usize, h: usize, w: usize, dev: &Device) -> (Tensor, Tensor, Tensor) {
    let img: Vec<f32> = (0..n * 3 * h * w)
        .map(|i| ((i * 37) % 101) as f32 / 100.0)
        .collect();
    let mask: Vec<f32> = (0..n * h * w)
        .map(|i| {
            if (i / w) % 5 < 2 && i % w > w / 3 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    (
        Tensor::from_vec(img, (n, 3, h, w), dev).unwrap_or_else(|e| panic!("{e}")),
        Tensor::from_vec(mask, (n, 1, h, w), dev).unwrap_or_else(|e| panic!("{e}")),
        noise(n, h, w, 3, dev).unwrap_or_else(|e| panic!("{e}")),
    )
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn generator_runs_on_odd_sizes_and_keeps_known_pixels() {
    let dev = Device::Cpu;
    let g = LoadedGenerator::fresh(tiny(), 1, &dev).unwrap_or_else(|e| panic!("{e}"));
    for (h, w) in [(17, 23), (9, 14), (1, 5), (32, 32)] {
        let (img, mask, z) = inputs(2, h, w, &dev);
        let out = g
            .gen
            .forward(&img, &mask, &z)
            .unwrap_or_else(|e| panic!("{h}x{w}: {e}"));
        assert_eq!(out.raw.dims(), &[2, 3, h, w]);
        assert_eq!(out.composite.dims(), &[2, 3, h, w]);
        let (x, m, c, r) = (
            vals(&img),
            vals(&mask),
            vals(&out.composite),
            vals(&out.raw),
        );
        let plane = h * w;
        for (i, (&cv, &xv)) in c.iter().zip(&x).enumerate() {
            let (n, p) = (i / (3 * plane), i % plane);
            if m[n * plane + p] == 0.0 {
                assert_eq!(cv.to_bits(), xv.to_bits(), "known pixel {i} changed");
            } else {
                assert_eq!(cv.to_bits(), r[i].to_bits());
            }
            assert!((0.0..=1.0).contains(&cv));
        }
    }
}

#[test]
fn generator_size_is_in_budget() {
    let dev = Device::Cpu;
    let g = LoadedGenerator::fresh(GeneratorConfig::default(), 1, &dev)
        .unwrap_or_else(|e| panic!("{e}"));
    let n = g.param_count();
    assert!((500_000..=2_000_000).contains(&n), "{n} params");
    let d = LoadedDiscriminator::fresh(32, 1, &dev).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.param_count().unwrap_or_else(|e| panic!("{e}")) > 100_000);
}

#[test]
fn weights_round_trip_and_corrupt_file_errors() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("g.safetensors");
    let g = LoadedGenerator::fresh(tiny(), 5, &dev).unwrap_or_else(|e| panic!("{e}"));
    g.save(&path).unwrap_or_else(|e| panic!("{e}"));
    let g2 = LoadedGenerator::load(tiny(), &path, &dev).unwrap_or_else(|e| panic!("{e}"));
    let (img, mask, z) = inputs(1, 13, 19, &dev);
    let a = g
        .gen
        .forward(&img, &mask, &z)
        .unwrap_or_else(|e| panic!("{e}"));
    let b = g2
        .gen
        .forward(&img, &mask, &z)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vals(&a.composite), vals(&b.composite));
    // Same seed, same initial weights (deterministic seeding).
    let g3 = LoadedGenerator::fresh(tiny(), 5, &dev).unwrap_or_else(|e| panic!("{e}"));
    let c = g3
        .gen
        .forward(&img, &mask, &z)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vals(&a.raw), vals(&c.raw));

    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        LoadedGenerator::load(tiny(), &bad, &dev),
        Err(CganError::Weights { .. })
    ));
    assert!(matches!(
        LoadedGenerator::load(tiny(), &dir.path().join("missing.safetensors"), &dev),
        Err(CganError::Weights { .. })
    ));
    // Weights of another architecture do not load either.
    assert!(matches!(
        LoadedGenerator::load(GeneratorConfig { base: 6 }, &path, &dev),
        Err(CganError::Weights { .. })
    ));
}

fn tiny_set() -> CropSource {
    let imgs = (0..3)
        .map(|k| {
            image::RgbImage::from_fn(40, 40, |x, y| {
                let v = |a: u32| ((a * 255) / 40) as u8;
                match k {
                    0 => image::Rgb([v(x), v(y), 128]),
                    1 => image::Rgb([200, v(x), v(40 - y)]),
                    _ => image::Rgb([v((x + y) / 2), 60, v(x)]),
                }
            })
        })
        .collect();
    CropSource::new(imgs)
}

#[test]
fn a_few_training_steps_reduce_the_loss() {
    let dev = Device::Cpu;
    let source = tiny_set();
    let damage = DamageConfig::default();
    let batch =
        Batch::synth(&source, None, &damage, 2, 24, 9, 0, &dev).unwrap_or_else(|e| panic!("{e}"));
    let mut t = CganTrainer::new(tiny(), 4, 3e-3, 1e-3, 0, LossWeights::default(), 3, &dev)
        .unwrap_or_else(|e| panic!("{e}"));
    let first = t.step(&batch, 0, 3).unwrap_or_else(|e| panic!("{e}"));
    let mut last = first;
    for s in 1..25 {
        last = t.step(&batch, s, 3).unwrap_or_else(|e| panic!("{e}"));
    }
    let rec = |l: &kintsugi::train::cgan::StepLosses| 6.0 * l.hole_l1 + l.valid_l1 + 2.0 * l.edge;
    assert!(
        rec(&last) < 0.8 * rec(&first),
        "reconstruction loss {} -> {}",
        rec(&first),
        rec(&last)
    );
    assert!(last.d_loss.is_finite());
}

#[test]
fn batches_are_reproducible_and_damage_only_the_mask() {
    let dev = Device::Cpu;
    let source = tiny_set();
    let damage = DamageConfig::default();
    let a =
        Batch::synth(&source, None, &damage, 3, 16, 4, 7, &dev).unwrap_or_else(|e| panic!("{e}"));
    let b =
        Batch::synth(&source, None, &damage, 3, 16, 4, 7, &dev).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vals(&a.damaged), vals(&b.damaged));
    assert_eq!(vals(&a.mask), vals(&b.mask));
    let keep = (1.0 - &a.mask).unwrap_or_else(|e| panic!("{e}"));
    let diff = (&a.damaged - &a.clean)
        .and_then(|d| d.abs())
        .and_then(|d| d.broadcast_mul(&keep))
        .and_then(|d| d.sum_all())
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(diff, 0.0);
    // Synthesis on an RGB ImageF32 directly, as the inference tooling will use it.
    let clean = ImageF32::from_fn(20, 20, 3, |x, _, _| x as f32 / 20.0);
    let (_, m) = synthesize(&clean, None, &damage, 1);
    assert!(m.count() > 0);
}

fn tiny_run(
    dir: &std::path::Path,
    steps: u64,
    resume: bool,
) -> kintsugi::train::cgan::CganTrainConfig {
    kintsugi::train::cgan::CganTrainConfig {
        gen: tiny(),
        d_base: 4,
        steps,
        batch: 2,
        crop: 16,
        lr_g: 1e-3,
        lr_d: 1e-3,
        warmup: 2,
        weights: LossWeights::default(),
        damage: DamageConfig::default(),
        seed: 5,
        sample_every: 0,
        runs_dir: dir.join("runs"),
        out: dir.join("weights/cgan-test"),
        resume,
        max_seconds: None,
        data_desc: "synthetic".into(),
        data_license: "none".into(),
        command: "test".into(),
    }
}

#[test]
fn resumed_training_matches_an_uninterrupted_run() {
    use kintsugi::train::cgan::train_cgan;
    let dev = Device::Cpu;
    let source = tiny_set();
    let val = Batch::synth(&source, None, &DamageConfig::default(), 2, 16, 1, 0, &dev)
        .unwrap_or_else(|e| panic!("{e}"));
    let a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let b = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut go = |_: &kintsugi::train::cgan::StepReport| true;
    train_cgan(
        &tiny_run(a.path(), 4, false),
        &source,
        &val,
        None,
        &dev,
        &mut go,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    train_cgan(
        &tiny_run(b.path(), 2, false),
        &source,
        &val,
        None,
        &dev,
        &mut go,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = train_cgan(
        &tiny_run(b.path(), 4, true),
        &source,
        &val,
        None,
        &dev,
        &mut go,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.steps, 4);
    assert!(out.finished);
    let wa = a.path().join("weights/cgan-test.safetensors");
    let wb = b.path().join("weights/cgan-test.safetensors");
    let ga = LoadedGenerator::load(tiny(), &wa, &dev).unwrap_or_else(|e| panic!("{e}"));
    let gb = LoadedGenerator::load(tiny(), &wb, &dev).unwrap_or_else(|e| panic!("{e}"));
    let (img, mask, z) = inputs(1, 16, 16, &dev);
    let ya = ga
        .gen
        .forward(&img, &mask, &z)
        .unwrap_or_else(|e| panic!("{e}"));
    let yb = gb
        .gen
        .forward(&img, &mask, &z)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vals(&ya.raw), vals(&yb.raw));
    let manifest = std::fs::read_to_string(b.path().join("weights/cgan-test.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(manifest.contains("\"steps\": 4"));
}
