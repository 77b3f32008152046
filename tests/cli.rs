//! The `kintsugi` binary: exit codes, one-line errors, outputs, never touching the input.

mod common;

use std::path::Path;
use std::process::Command;

use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};

fn kintsugi(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kintsugi"))
        .args(args)
        .output()
        .expect("run kintsugi");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_fixture(dir: &Path) -> (String, String) {
    let img = RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 120]));
    let input = dir.join("scan.png");
    DynamicImage::ImageRgb8(img)
        .save(&input)
        .expect("write image");
    let mask = GrayImage::from_fn(40, 30, |x, y| {
        Luma([if (x as i32 - y as i32).abs() <= 1 {
            255
        } else {
            0
        }])
    });
    let mask_path = dir.join("mask.png");
    DynamicImage::ImageLuma8(mask)
        .save(&mask_path)
        .expect("write mask");
    (
        input.to_string_lossy().into_owned(),
        mask_path.to_string_lossy().into_owned(),
    )
}

#[test]
fn inpaint_writes_a_result_and_keeps_known_pixels() {
    let d = tempfile::tempdir().expect("tmp");
    let (input, mask) = write_fixture(d.path());
    let before = std::fs::read(&input).expect("read");
    for model in ["telea", "biharmonic", "patchmatch"] {
        let out = d.path().join(format!("out_{model}.png"));
        let (ok, _, err) = kintsugi(&[
            "inpaint",
            &input,
            "--mask",
            &mask,
            "--model",
            model,
            "-o",
            out.to_str().expect("utf8"),
            "--quiet",
        ]);
        assert!(ok, "{model}: {err}");
        let src = image::open(&input).expect("src").into_rgb8();
        let res = image::open(&out).expect("out").into_rgb8();
        let m = image::open(&mask).expect("mask").into_luma8();
        let mut changed_known = 0;
        for (x, y, p) in m.enumerate_pixels() {
            if p.0[0] == 0 && src.get_pixel(x, y) != res.get_pixel(x, y) {
                changed_known += 1;
            }
        }
        assert_eq!(changed_known, 0, "{model} changed known pixels");
    }
    assert_eq!(
        std::fs::read(&input).expect("read"),
        before,
        "input was modified"
    );
}

#[test]
fn errors_are_one_line_and_non_zero() {
    let d = tempfile::tempdir().expect("tmp");
    let (input, mask) = write_fixture(d.path());
    let out = d.path().join("o.png");
    let out = out.to_str().expect("utf8");

    // Overwriting the input is refused.
    let (ok, _, err) = kintsugi(&["inpaint", &input, "--mask", &mask, "-o", &input, "-q"]);
    assert!(!ok);
    assert!(err.contains("refusing to overwrite the input"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Wrong mask size names both sizes.
    let small = d.path().join("small_mask.png");
    DynamicImage::ImageLuma8(GrayImage::new(10, 10))
        .save(&small)
        .expect("write");
    let (ok, _, err) = kintsugi(&[
        "inpaint",
        &input,
        "--mask",
        small.to_str().expect("utf8"),
        "-o",
        out,
    ]);
    assert!(!ok);
    assert!(err.contains("10x10") && err.contains("40x30"), "{err}");

    // Unknown model.
    let (ok, _, err) = kintsugi(&[
        "inpaint", &input, "--mask", &mask, "--model", "nope", "-o", out,
    ]);
    assert!(!ok);
    assert!(err.contains("unknown model 'nope'"), "{err}");

    // Truncated input.
    let bytes = std::fs::read(&input).expect("read");
    let cut = d.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
    let (ok, _, err) = kintsugi(&[
        "inpaint",
        cut.to_str().expect("utf8"),
        "--mask",
        &mask,
        "-o",
        out,
    ]);
    assert!(!ok);
    assert!(
        err.starts_with("error: ") && err.contains("truncated or corrupt"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!Path::new(out).exists(), "no output on failure");
}

#[test]
fn models_lists_classical_and_explains_unavailable() {
    let (ok, out, err) = kintsugi(&["models"]);
    assert!(ok, "{err}");
    for id in ["telea", "biharmonic", "patchmatch"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(id) && l.contains("available")),
            "{out}"
        );
    }
    // With an empty weights folder every learned model is listed as unavailable, with why.
    let empty = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_kintsugi"))
        .arg("models")
        .env("KINTSUGI_WEIGHTS", empty.path())
        .output()
        .expect("run kintsugi");
    assert!(out.status.success());
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("gan-faces") && out.contains("why:") && out.contains("weights not found"),
        "{out}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["inpaint", "models", "eval", "bench"] {
        let (ok, out, err) = kintsugi(&[sub, "--help"]);
        assert!(ok, "{sub}: {err}");
        assert!(out.contains("Usage"), "{sub}: {out}");
    }
}

#[test]
fn eval_scores_pairs_and_writes_csv() {
    let d = tempfile::tempdir().expect("tmp");
    let images = d.path().join("images");
    std::fs::create_dir(&images).expect("mkdir");
    for i in 0..2u32 {
        let img = RgbImage::from_fn(48, 32, |x, y| {
            Rgb([(x * 5 + i * 9) as u8, (y * 7) as u8, 90])
        });
        DynamicImage::ImageRgb8(img)
            .save(images.join(format!("im{i}.png")))
            .expect("write");
    }
    let csv = d.path().join("scores.csv");
    let pairs = d.path().join("pairs");
    let (ok, out, err) = kintsugi(&[
        "eval",
        "--images",
        images.to_str().expect("utf8"),
        "--masks",
        "synthetic:scratch",
        "--model",
        "telea",
        "--csv",
        csv.to_str().expect("utf8"),
        "--export-pairs",
        pairs.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("mean of 2"), "{out}");
    let text = std::fs::read_to_string(&csv).expect("csv");
    assert_eq!(text.lines().count(), 3, "{text}");
    let hole_psnr: f64 = text
        .lines()
        .nth(1)
        .and_then(|l| l.split(',').nth(4))
        .and_then(|v| v.parse().ok())
        .expect("number");
    assert!(
        hole_psnr > 25.0,
        "telea on a smooth gradient scored {hole_psnr} dB"
    );
    assert!(pairs.join("000_image.png").exists() && pairs.join("001_mask.png").exists());
}
