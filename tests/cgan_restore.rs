//! The cGAN as a restorer and the `auto` choice: full-image inference through the pipeline on
//! odd sizes and 16-bit input with known pixels bit-identical, the coarse-to-fine path, loading
//! errors, the thin/wide split and the registry fallback. Tiny random networks, generated
//! images; no dataset reads.

use std::sync::Arc;

use candle_core::Device;
use kintsugi::imaging::{load_image, save_image, BitDepth, ImageF32, Mask};
use kintsugi::models::auto::Auto;
use kintsugi::models::cgan::{GeneratorConfig, LoadedGenerator};
use kintsugi::models::cgan_inpaint::{inward_distance, CganInpaint};
use kintsugi::models::registry::{Availability, Registry};
use kintsugi::restore::biharmonic::Biharmonic;
use kintsugi::restore::pipeline::{restore_image, Silent};
use kintsugi::restore::{NullReporter, Params, RestoreError, Restorer};

fn tiny_cgan(seed: u64) -> CganInpaint {
    let g = LoadedGenerator::fresh(GeneratorConfig { base: 4 }, seed, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    CganInpaint::from_generator("cgan-inpaint", &g).unwrap_or_else(|e| panic!("{e}"))
}

fn photo(w: usize, h: usize, channels: usize) -> ImageF32 {
    ImageF32::from_fn(w, h, channels, |x, y, c| {
        let v = 0.5 + 0.3 * ((x as f32 * 0.21 + c as f32).sin() * (y as f32 * 0.13).cos());
        // Quantise to 16 bits, as a decoded 16-bit file would be.
        (v * 65535.0).round() / 65535.0
    })
}

/// A thin diagonal scratch and a wide blob.
fn damage(w: usize, h: usize) -> Mask {
    Mask::from_fn(w, h, |x, y| {
        let scratch = (x as i64 - y as i64 - 3).abs() <= 1 && x < w / 2;
        let (dx, dy) = (x as f32 - 0.7 * w as f32, y as f32 - 0.6 * h as f32);
        let blob = dx * dx + dy * dy < (0.18 * w.min(h) as f32).powi(2);
        scratch || blob
    })
}

fn restore(r: &dyn Restorer, img: &ImageF32, mask: &Mask, params: &Params) -> ImageF32 {
    restore_image(r, img, mask, params, &Silent).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_known_identical(a: &ImageF32, b: &ImageF32, mask: &Mask) {
    let c = a.channels();
    for (i, &hole) in mask.data().iter().enumerate() {
        if !hole {
            assert_eq!(
                a.data()[i * c..(i + 1) * c],
                b.data()[i * c..(i + 1) * c],
                "known pixel {i} changed"
            );
        }
    }
}

#[test]
fn cgan_restores_odd_sizes_and_all_channel_layouts_keeping_known_pixels() {
    let r = tiny_cgan(1);
    for (w, h, c) in [(37, 29, 3), (61, 45, 1), (40, 33, 4), (23, 50, 2)] {
        let img = photo(w, h, c);
        let mask = damage(w, h);
        let out = restore(&r, &img, &mask, &Params::new());
        assert_eq!((out.width(), out.height(), out.channels()), (w, h, c));
        assert_known_identical(&img, &out, &mask);
        assert!(out
            .data()
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
        let changed = mask
            .data()
            .iter()
            .enumerate()
            .filter(|(i, &m)| m && out.data()[i * c] != img.data()[i * c])
            .count();
        assert!(
            changed > mask.count() / 2,
            "{w}x{h}x{c}: holes were not filled"
        );
    }
}

#[test]
fn sixteen_bit_file_round_trips_through_the_cgan() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = dir.path().join("scan.png");
    let img = photo(45, 31, 3);
    save_image(&img, BitDepth::U16, &src, None).unwrap_or_else(|e| panic!("{e}"));
    let loaded = load_image(&src).unwrap_or_else(|e| panic!("{e}"));
    let depth = loaded.depth;
    let loaded = loaded.pixels;
    assert_eq!(depth, BitDepth::U16);
    let mask = damage(45, 31);
    let out = restore(&tiny_cgan(2), &loaded, &mask, &Params::new());
    let dst = dir.path().join("out.png");
    save_image(&out, depth, &dst, Some(&src)).unwrap_or_else(|e| panic!("{e}"));
    let back = load_image(&dst).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.depth, BitDepth::U16);
    assert_known_identical(&loaded, &back.pixels, &mask);
}

#[test]
fn wide_holes_take_the_coarse_path_and_single_pass_differs() {
    let (w, h) = (96, 96);
    let img = photo(w, h, 3);
    let mask = Mask::from_fn(w, h, |x, y| (20..76).contains(&x) && (24..72).contains(&y));
    let (dist, _) = inward_distance(&mask);
    assert!(dist.iter().copied().fold(0.0, f32::max) > kintsugi::models::cgan_inpaint::WIDE);
    let r = tiny_cgan(3);
    let coarse = restore(&r, &img, &mask, &Params::new());
    let single = restore(&r, &img, &mask, &Params::new().with("max_scale", 1.0));
    assert_known_identical(&img, &coarse, &mask);
    assert_known_identical(&img, &single, &mask);
    assert_ne!(coarse.data(), single.data(), "max_scale had no effect");
    // Deterministic: the same input gives the same output.
    assert_eq!(
        coarse.data(),
        restore(&r, &img, &mask, &Params::new()).data()
    );
}

#[test]
fn inward_distance_measures_depth_and_nearest_known_pixel() {
    let mask = Mask::from_fn(9, 5, |x, _| (2..7).contains(&x));
    let (dist, near) = inward_distance(&mask);
    // Column 4 is 3 px from column 1 and from column 7.
    assert!((dist[2 * 9 + 4] - 3.0).abs() < 1e-6);
    assert_eq!(dist[2 * 9 + 1], 0.0);
    assert_eq!(near[2 * 9 + 2], (2 * 9 + 1) as u32);
    assert_eq!(near[2 * 9 + 6], (2 * 9 + 7) as u32);
}

#[test]
fn auto_splits_thin_from_wide_and_uses_biharmonic_on_thin_damage() {
    let (w, h) = (64, 48);
    let mask = damage(w, h);
    let (thin, wide) = Auto::split(&mask, 6.0);
    assert_eq!(thin.count() + wide.count(), mask.count());
    assert!(thin.count() > 0 && wide.count() > 0);
    // The scratch (top-left) is thin, the blob centre is wide.
    assert!(thin.get(10, 7));
    assert!(wide.get((0.7 * w as f32) as usize, (0.6 * h as f32) as usize));

    // Thin-only damage: auto equals biharmonic exactly.
    let img = photo(w, h, 3);
    let auto = Auto::new(Some(Arc::new(tiny_cgan(4))));
    let a = restore(&auto, &img, &thin, &Params::new());
    let b = restore(&Biharmonic, &img, &thin, &Params::new());
    assert_eq!(a.data(), b.data());
    // Wide-only damage with the cGAN's share at 0: exactly Telea; at 1: exactly the cGAN.
    let telea_only = Params::new().with("cgan_weight", 0.0);
    let a = restore(&auto, &img, &wide, &telea_only);
    let b = restore(
        &kintsugi::restore::telea::Telea,
        &img,
        &wide,
        &Params::new(),
    );
    assert_eq!(a.data(), b.data());
    let a = restore(&auto, &img, &wide, &Params::new().with("cgan_weight", 1.0));
    let b = restore(&tiny_cgan(4), &img, &wide, &Params::new());
    assert_eq!(a.data(), b.data());
    // Mixed damage: known pixels untouched, everything finite.
    let m = restore(&auto, &img, &mask, &Params::new());
    assert_known_identical(&img, &m, &mask);
    assert!(m.data().iter().all(|v| v.is_finite()));
}

#[test]
fn corrupt_or_missing_cgan_files_make_it_unavailable_and_auto_falls_back() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let reg = Registry::new(dir.path());
    // No weights at all: listed unavailable, auto still works (Telea for wide holes).
    let info = |reg: &Registry| {
        reg.list()
            .into_iter()
            .find(|m| m.id == "cgan-inpaint")
            .unwrap_or_else(|| panic!("cgan-inpaint not listed"))
    };
    assert!(matches!(
        info(&reg).availability,
        Availability::Unavailable(_)
    ));
    let auto = reg.restorer("auto").unwrap_or_else(|e| panic!("{e}"));
    let img = photo(40, 30, 3);
    let mask = damage(40, 30);
    let out = restore(auto.as_ref(), &img, &mask, &Params::new());
    assert_known_identical(&img, &out, &mask);

    // Corrupt weights and a manifest that is not JSON: clear errors, no panic.
    std::fs::write(
        dir.path().join("cgan-inpaint.safetensors"),
        b"not safetensors",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("cgan-inpaint.json"), b"{ not json")
        .unwrap_or_else(|e| panic!("{e}"));
    match reg.restorer("cgan-inpaint") {
        Err(RestoreError::Unavailable { reason, .. }) => {
            assert!(reason.contains("manifest"), "{reason}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a corrupt model loaded"),
    }
    std::fs::write(
        dir.path().join("cgan-inpaint.json"),
        br#"{"generator": {"base": 4}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        info(&reg).availability,
        Availability::Unavailable(_)
    ));
    // Weights of another width than the manifest says: an error, not a panic.
    let g = LoadedGenerator::fresh(GeneratorConfig { base: 6 }, 1, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    g.save(&dir.path().join("cgan-inpaint.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reg.restorer("cgan-inpaint").is_err());
    // Matching weights: available, and auto picks it up.
    let g = LoadedGenerator::fresh(GeneratorConfig { base: 4 }, 1, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    g.save(&dir.path().join("cgan-inpaint.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info(&reg).availability, Availability::Available);
    let r = reg
        .restorer("cgan-inpaint")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        reg.restorer("cgan").map(|r| r.id()).ok(),
        Some("cgan-inpaint"),
        "the short alias"
    );
    let out = restore(r.as_ref(), &img, &mask, &Params::new());
    assert_known_identical(&img, &out, &mask);
}

#[test]
fn non_finite_network_output_is_a_clear_error() {
    let g = LoadedGenerator::fresh(GeneratorConfig { base: 4 }, 1, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, var) in g
        .varmap
        .data()
        .lock()
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
    {
        if name.starts_with("out.") {
            let nan = (var.as_tensor() * f64::NAN).unwrap_or_else(|e| panic!("{e}"));
            var.set(&nan).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let r = CganInpaint::from_generator("cgan-inpaint", &g).unwrap_or_else(|e| panic!("{e}"));
    let img = photo(20, 20, 3);
    let mask = damage(20, 20);
    match r.restore(&img, &mask, &Params::new(), &NullReporter) {
        Err(RestoreError::Failed(m)) => assert!(m.contains("non-finite"), "{m}"),
        other => panic!("expected a failure, got {:?}", other.map(|_| ())),
    }
}
