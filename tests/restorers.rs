//! The three classical restorers through the full-image region pipeline and the CLI.

mod common;

use image::{DynamicImage, ImageBuffer, Luma, Rgb};
use kintsugi::imaging::metrics::hole_psnr;
use kintsugi::imaging::{ImageF32, Mask};
use kintsugi::models::registry::Registry;
use kintsugi::restore::pipeline::{restore_image, Silent};
use kintsugi::restore::Params;

const ALL: [&str; 3] = ["telea", "biharmonic", "patchmatch"];

fn run(model: &str, img: &ImageF32, mask: &Mask) -> ImageF32 {
    let r = Registry::default().restorer(model).expect("model");
    restore_image(r.as_ref(), img, mask, &Params::new(), &Silent).expect("restore")
}

#[test]
fn constant_image_stays_constant() {
    let img = ImageF32::from_fn(40, 30, 3, |_, _, c| [0.2, 0.5, 0.8][c]);
    let mask = common::disc_mask(40, 30, 20, 15, 6);
    for m in ALL {
        let out = run(m, &img, &mask);
        for (a, b) in img.data().iter().zip(out.data()) {
            assert!((a - b).abs() < 1e-4, "{m}: {a} vs {b}");
        }
    }
}

#[test]
fn smooth_ramp_is_filled_closely_by_the_diffusion_methods() {
    let img = ImageF32::from_fn(64, 48, 1, |x, y, _| {
        0.1 + 0.01 * x as f32 + 0.005 * y as f32
    });
    let mask = common::scratch_and_dust(64, 48);
    for (m, max_err) in [("telea", 0.02), ("biharmonic", 0.002)] {
        let out = run(m, &img, &mask);
        let worst = img
            .data()
            .iter()
            .zip(out.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < max_err, "{m}: worst error {worst}");
    }
}

#[test]
fn patchmatch_restores_a_periodic_texture() {
    let img = ImageF32::from_fn(96, 96, 3, |x, y, c| {
        let v = if (x / 4 + y / 4) % 2 == 0 { 0.8 } else { 0.2 };
        v * [1.0, 0.9, 0.7][c]
    });
    let mask = common::disc_mask(96, 96, 50, 45, 9);
    let out = run("patchmatch", &img, &mask);
    let p = hole_psnr(&img, &out, &mask).expect("holes");
    assert!(p > 30.0, "hole PSNR {p:.1} dB");
}

#[test]
fn every_restorer_keeps_known_pixels_and_fills_every_hole() {
    let img = common::gradient(50, 37, 4);
    let mask = common::scratch_and_dust(50, 37);
    for m in ALL {
        let out = run(m, &img, &mask);
        for i in 0..50 * 37 {
            let (a, b) = (&img.data()[i * 4..i * 4 + 4], &out.data()[i * 4..i * 4 + 4]);
            if mask.data()[i] {
                assert!(b.iter().all(|v| v.is_finite()), "{m}: non-finite fill");
            } else {
                assert_eq!(a, b, "{m}: known pixel {i} changed");
            }
        }
    }
}

#[test]
fn sixteen_bit_survives_inpaint_end_to_end() {
    let d = tempfile::tempdir().expect("tmp");
    let src: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(36, 28, |x, y| {
        Rgb([(x * 1500 + 3) as u16, (y * 2000 + 11) as u16, 40_001])
    });
    let input = d.path().join("scan16.tif");
    DynamicImage::ImageRgb16(src.clone())
        .save(&input)
        .expect("write");
    let mask: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_fn(36, 28, |x, y| {
        Luma([if (10..14).contains(&x) && y > 5 {
            255
        } else {
            0
        }])
    });
    let mask_path = d.path().join("mask.png");
    DynamicImage::ImageLuma8(mask.clone())
        .save(&mask_path)
        .expect("write");
    for m in ALL {
        let out = d.path().join(format!("out_{m}.tif"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_kintsugi"))
            .args(["inpaint", input.to_str().expect("utf8"), "--mask"])
            .arg(&mask_path)
            .args(["--model", m, "-q", "-o"])
            .arg(&out)
            .status()
            .expect("run");
        assert!(status.success(), "{m}");
        let res = match image::open(&out).expect("open") {
            DynamicImage::ImageRgb16(b) => b,
            other => panic!("{m}: wrote {:?}, not 16-bit RGB", other.color()),
        };
        let mut hole_values_between = 0;
        for (x, y, p) in mask.enumerate_pixels() {
            if p.0[0] == 0 {
                assert_eq!(res.get_pixel(x, y), src.get_pixel(x, y), "{m} at {x},{y}");
            } else {
                // The fill of a smooth ramp uses intermediate 16-bit levels, not 8-bit steps.
                if res.get_pixel(x, y).0[0] % 257 != 0 {
                    hole_values_between += 1;
                }
            }
        }
        assert!(
            hole_values_between > 0,
            "{m}: fill looks quantised to 8 bit"
        );
    }
}
