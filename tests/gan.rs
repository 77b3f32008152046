//! The face GAN end to end at tiny sizes: a short training run learns the data's colour, the
//! CLI samples, interpolates and inpaints with a GAN from a weights folder, and broken weights
//! are clear errors. No dataset reads.

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};
use kintsugi::models::gan::{GanConfig, GanManifest, GanMetrics, LoadedGan};
use kintsugi::train::gan::{GanTrainConfig, GanTrainer};
use kintsugi::train::ImageSet;

fn tiny() -> GanConfig {
    GanConfig {
        image_size: 16,
        latent: 8,
        g_base: 4,
        d_base: 4,
    }
}

/// Reddish images with a little texture: mean colour about (0.78, 0.24, 0.31).
fn red_set(n: usize) -> ImageSet {
    let images: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            (0..16 * 16)
                .flat_map(|i| {
                    let t = ((i * 13 + k * 7) % 21) as u8;
                    [190 + t, 55 + t, 70 + t]
                })
                .collect()
        })
        .collect();
    ImageSet::from_rgb(16, &images).expect("set")
}

fn mean_rgb(x: &candle_core::Tensor) -> [f32; 3] {
    let m: Vec<f32> = x
        .mean_keepdim(0)
        .and_then(|t| t.mean_keepdim(2))
        .and_then(|t| t.mean_keepdim(3))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("mean");
    [m[0], m[1], m[2]]
}

#[test]
fn a_short_run_moves_samples_towards_the_data() {
    let dev = Device::Cpu;
    let set = red_set(16);
    let cfg = GanTrainConfig {
        model: tiny(),
        batch: 8,
        lr_g: 2e-3,
        lr_d: 2e-3,
        ..GanTrainConfig::faces64()
    };
    let mut t = GanTrainer::new(cfg, set.len(), &dev).expect("trainer");
    let data = mean_rgb(
        &set.batch(&(0..16).collect::<Vec<_>>(), &[], &dev)
            .expect("b"),
    );
    let dist = |m: [f32; 3]| {
        m.iter()
            .zip(&data)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt()
    };
    let before = dist(mean_rgb(&t.samples(1, 32).expect("samples")));
    for _ in 0..150 {
        let s = t.step(&set).expect("step");
        assert!(s.d_loss.is_finite() && s.g_loss.is_finite());
    }
    let after = dist(mean_rgb(&t.samples(1, 32).expect("samples")));
    assert!(
        after < 0.5 * before && after < 0.1,
        "colour distance to the data {before:.3} -> {after:.3}"
    );
}

/// Writes a tiny random GAN as `<dir>/gan-faces.{safetensors,json}` with a 16 px config.
fn write_tiny_gan(dir: &Path) {
    let gan = LoadedGan::fresh(tiny(), 3, &Device::Cpu).expect("gan");
    gan.save(&dir.join("gan-faces.safetensors"), true)
        .expect("save");
    let manifest = GanManifest {
        family: "gan".into(),
        architecture: tiny().architecture(),
        config: tiny(),
        params_g: 0,
        params_d: 0,
        data: "test".into(),
        data_license: "test".into(),
        objective: "test".into(),
        commands: vec![],
        steps: 0,
        batch: 1,
        seed: 0,
        train_seconds: 0.0,
        hardware: "test".into(),
        weights_format: "f16".into(),
        curves: String::new(),
        metrics: GanMetrics::default(),
    };
    manifest
        .write(&dir.join("gan-faces.json"))
        .expect("manifest");
}

fn kintsugi(weights: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kintsugi"))
        .args(args)
        .env("KINTSUGI_WEIGHTS", weights)
        .output()
        .expect("run kintsugi");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_samples_interpolates_and_inpaints_with_a_gan() {
    let dir = tempfile::tempdir().expect("tmp");
    let weights = dir.path().join("weights");
    std::fs::create_dir_all(&weights).expect("mkdir");
    write_tiny_gan(&weights);
    let grid = dir.path().join("grid.png");
    let g = grid.to_string_lossy().into_owned();
    let (ok, err) = kintsugi(
        &weights,
        &[
            "sample",
            "--model",
            "gan-faces",
            "--n",
            "6",
            "--cols",
            "3",
            "--seed",
            "4",
            "-o",
            &g,
        ],
    );
    assert!(ok, "{err}");
    let img = image::open(&grid).expect("grid").to_rgb8();
    // 3 columns and 2 rows of 16 px tiles with 2 px gutters.
    assert_eq!((img.width(), img.height()), (3 * 18 + 2, 2 * 18 + 2));
    let first = std::fs::read(&grid).expect("read");
    let (ok, err) = kintsugi(
        &weights,
        &[
            "sample",
            "--model",
            "gan-faces",
            "--n",
            "6",
            "--cols",
            "3",
            "--seed",
            "4",
            "-o",
            &g,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&grid).expect("read"),
        first,
        "same seed, same grid"
    );

    let strip = dir.path().join("strip.png");
    let s = strip.to_string_lossy().into_owned();
    let (ok, err) = kintsugi(
        &weights,
        &[
            "interpolate",
            "--model",
            "gan-faces",
            "--seed-a",
            "1",
            "--seed-b",
            "2",
            "--steps",
            "5",
            "-o",
            &s,
        ],
    );
    assert!(ok, "{err}");
    let img = image::open(&strip).expect("strip").to_rgb8();
    assert_eq!((img.width(), img.height()), (5 * 18 + 2, 18 + 2));

    // Inversion inpainting through the engine: known pixels unchanged.
    let scan = RgbImage::from_fn(40, 32, |x, y| Rgb([(x * 6) as u8, (y * 7) as u8, 120]));
    let input = dir.path().join("face.png");
    DynamicImage::ImageRgb8(scan.clone())
        .save(&input)
        .expect("write");
    let mask = GrayImage::from_fn(40, 32, |x, y| {
        Luma([if (14..24).contains(&x) && (10..20).contains(&y) {
            255
        } else {
            0
        }])
    });
    let mask_path = dir.path().join("mask.png");
    DynamicImage::ImageLuma8(mask.clone())
        .save(&mask_path)
        .expect("write");
    let out = dir.path().join("out.png");
    let (ok, err) = kintsugi(
        &weights,
        &[
            "inpaint",
            &input.to_string_lossy(),
            "--mask",
            &mask_path.to_string_lossy(),
            "--model",
            "gan-faces",
            "--param",
            "iterations=5",
            "--param",
            "restarts=2",
            "-o",
            &out.to_string_lossy(),
        ],
    );
    assert!(ok, "{err}");
    let res = image::open(&out).expect("out").to_rgb8();
    for (x, y, p) in res.enumerate_pixels() {
        if mask.get_pixel(x, y)[0] == 0 {
            assert_eq!(p, scan.get_pixel(x, y), "known pixel ({x}, {y}) changed");
        }
    }
}

#[test]
fn broken_gan_weights_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let dev = Device::Cpu;
    // Missing file.
    let missing = LoadedGan::load(tiny(), &dir.path().join("none.safetensors"), &dev);
    assert!(missing.is_err());
    // Truncated file.
    write_tiny_gan(dir.path());
    let path = dir.path().join("gan-faces.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let e = LoadedGan::load(tiny(), &cut, &dev)
        .err()
        .expect("truncated must fail")
        .to_string();
    assert!(e.contains("not a readable safetensors"), "{e}");
    // Weights of another size.
    let other = GanConfig {
        g_base: 8,
        ..tiny()
    };
    let e = LoadedGan::load(other, &path, &dev)
        .err()
        .expect("wrong sizes must fail")
        .to_string();
    assert!(e.contains("the model expects"), "{e}");
    // NaN values.
    let gan = LoadedGan::fresh(tiny(), 1, &dev).expect("gan");
    let mut map = gan.tensors().expect("tensors");
    let key = "g.out.weight".to_owned();
    let t = map.get(&key).expect("out weight");
    let nan = (t.zeros_like().expect("z") / 0.0).expect("nan");
    let nan = (nan * 0.0).expect("nan");
    map.insert(key, nan);
    let bad = dir.path().join("nan.safetensors");
    candle_core::safetensors::save(&map, &bad).expect("save");
    let e = LoadedGan::load(tiny(), &bad, &dev)
        .err()
        .expect("NaN must fail")
        .to_string();
    assert!(e.contains("NaN"), "{e}");
    // A manifest asking for an absurd network.
    let json = dir.path().join("gan-faces.json");
    let text = std::fs::read_to_string(&json).expect("read");
    std::fs::write(&json, text.replace("\"g_base\": 4", "\"g_base\": 100000")).expect("write");
    let e = LoadedGan::load_model(dir.path(), "gan-faces", &dev)
        .err()
        .expect("absurd sizes must fail")
        .to_string();
    assert!(e.contains("g_base"), "{e}");
}
