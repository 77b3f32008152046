//! The latent explorer driven headlessly through egui_kittest: opening it, the seeded grid,
//! PCA sliders with reset, the interpolation strip, encode and put back with undo, and the
//! message when the weights are missing or corrupt. Tiny random VAEs keep it fast; one test
//! opens the shipped face VAE from `weights/`.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use egui::accesskit::Role;
use egui::{Key, Modifiers};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use kintsugi::engine::EngineConfig;
use kintsugi::imaging::{BitDepth, ImageF32, Rect};
use kintsugi::models::latent_pca::LatentPca;
use kintsugi::models::registry::Registry;
use kintsugi::models::vae::{LoadedVae, VaeConfig};
use kintsugi::studio::latent_model::{Interpolation, LatentModel, VaeLatent};
use kintsugi::studio::StudioApp;

/// A tiny random VAE (16x16 images, latent 6) with a PCA fitted to anisotropic random codes,
/// so the principal directions and their sigmas are not trivial.
fn tiny_model() -> Box<dyn LatentModel> {
    let cfg = VaeConfig {
        image_size: 16,
        latent: 6,
        base: 4,
        sigma: 0.1,
    };
    let vae = LoadedVae::fresh(cfg, 11, &Device::Cpu).expect("tiny vae");
    let codes: Vec<Vec<f32>> = (0..64)
        .map(|i| {
            (0..6)
                .map(|d| {
                    let u = ((i * 37 + d * 11) % 23) as f32 / 23.0 - 0.5;
                    u * (3.0 - 0.4 * d as f32) + 0.1 * d as f32
                })
                .collect()
        })
        .collect();
    let pca = LatentPca::fit(&codes).expect("pca");
    Box::new(VaeLatent::new("vae-tiny", vae, Some(pca)).expect("wrap"))
}

fn test_image(w: usize, h: usize) -> ImageF32 {
    ImageF32::from_fn(w, h, 3, |x, y, c| {
        ((x as f32 * 0.05 + y as f32 * 0.03 + c as f32 * 0.7).sin() * 0.4 + 0.5).clamp(0.0, 1.0)
    })
}

/// A studio on a small image whose weights folder is `weights` (empty: nothing loads).
fn app_with(weights: &Path, img: ImageF32) -> StudioApp {
    let mut config = EngineConfig::with_threads(1);
    config.registry = Registry::new(weights);
    StudioApp::new(Some((img, BitDepth::U8, None)), config)
}

fn harness(app: StudioApp) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size([1280.0, 860.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app)
}

/// A studio with the tiny model, explorer open and loaded, grid decoded.
fn ready_harness(img: ImageF32) -> (Harness<'static, StudioApp>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut app = app_with(dir.path(), img);
    app.latent_mut().use_model(tiny_model());
    app.latent_mut().set_open(true);
    let mut h = harness(app);
    settle(&mut h);
    assert!(h.state().latent().ready(), "the tiny model did not load");
    (h, dir)
}

/// Steps frames until the explorer waits for nothing (fails after 60 s).
fn settle(h: &mut Harness<'_, StudioApp>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    h.step();
    while h.state().latent().busy() {
        assert!(
            Instant::now() < deadline,
            "the latent worker did not answer"
        );
        std::thread::sleep(Duration::from_millis(2));
        h.step();
    }
    h.step();
}

fn grid(h: &Harness<'_, StudioApp>) -> Vec<ImageF32> {
    h.state()
        .latent()
        .grid_images()
        .into_iter()
        .map(|i| i.expect("every grid image decoded").clone())
        .collect()
}

fn max_diff(a: &ImageF32, b: &ImageF32) -> f32 {
    assert_eq!(a.data().len(), b.data().len());
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn l_opens_the_explorer_and_it_is_listed_in_the_help() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut app = app_with(dir.path(), test_image(96, 80));
    app.latent_mut().use_model(tiny_model());
    let mut h = harness(app);
    h.step();
    assert!(!h.state().latent().is_open());
    assert!(h.query_by_label("Resample").is_none());
    h.key_press(Key::L);
    settle(&mut h);
    assert!(h.state().latent().is_open());
    assert!(h.state().latent().ready());
    assert!(h
        .query_by_label_contains("vae-tiny: 6-dimensional latent")
        .is_some());
    assert!(h.query_by_label("Resample").is_some());
    assert_eq!(h.state().latent().grid_images().len(), 16);
    assert!(h.query_by_role_and_label(Role::Slider, "PC 1").is_some());
    // The top bar's toggle closes it again; L reopens it.
    h.get_by_label("Latent explorer (L)").click();
    h.step();
    assert!(!h.state().latent().is_open());
    h.key_press(Key::L);
    h.step();
    assert!(h.state().latent().is_open());
    h.key_press(Key::F1);
    h.step();
    assert!(h
        .query_all_by_label_contains("Show or hide the latent explorer")
        .next()
        .is_some());
}

#[test]
fn resample_with_a_seed_gives_a_deterministic_grid() {
    let (mut h, _dir) = ready_harness(test_image(64, 64));
    h.state_mut().latent_mut().resample(7);
    settle(&mut h);
    let first = grid(&h);
    let codes: Vec<Vec<f32>> = h
        .state()
        .latent()
        .grid_codes()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(first.len(), 16);
    h.state_mut().latent_mut().resample(8);
    settle(&mut h);
    let other = grid(&h);
    assert!(
        max_diff(&first[0], &other[0]) > 1e-4,
        "seed 8 drew seed 7's grid"
    );
    // Back to seed 7, then the panel's own button redraws the seed in the box.
    h.state_mut().latent_mut().resample(7);
    settle(&mut h);
    assert_eq!(max_diff(&first[3], &grid(&h)[3]), 0.0);
    h.get_by_label("Resample").click_accesskit();
    settle(&mut h);
    assert_eq!(h.state().latent().seed(), 7);
    let again = grid(&h);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.data(), b.data(), "same seed, different grid");
    }
    let again_codes: Vec<Vec<f32>> = h
        .state()
        .latent()
        .grid_codes()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(codes, again_codes);
}

#[test]
fn a_pca_slider_changes_the_decode_and_reset_restores_it() {
    let (mut h, _dir) = ready_harness(test_image(64, 64));
    assert!(h.state_mut().latent_mut().pick_sample(2));
    settle(&mut h);
    let base_code = h.state().latent().code();
    let before = h.state().latent().current_image().expect("decode").clone();
    assert_eq!(
        before.data(),
        grid(&h)[2].data(),
        "clicking a sample shows its decode"
    );
    // Drag the first principal slider through its accessibility action, as a screen reader
    // or a test would.
    h.get_by_role_and_label(Role::Slider, "PC 1")
        .set_value_accesskit(2.5);
    settle(&mut h);
    assert!((h.state().latent().pca_value(0) - 2.5).abs() < 1e-6);
    let moved_code = h.state().latent().code();
    assert_ne!(moved_code, base_code);
    let moved = h.state().latent().current_image().expect("decode").clone();
    assert!(
        max_diff(&before, &moved) > 1e-3,
        "the decode did not follow the slider"
    );
    assert!(
        h.state().latent().latency().last().is_some(),
        "no slider-to-image latency was measured"
    );
    h.get_by_label("Reset sliders").click_accesskit();
    settle(&mut h);
    assert_eq!(h.state().latent().pca_value(0), 0.0);
    assert_eq!(h.state().latent().code(), base_code);
    let back = h.state().latent().current_image().expect("decode").clone();
    // A single decode against the grid's batched one: equal up to float rounding.
    assert!(
        max_diff(&before, &back) < 1e-5,
        "reset did not restore the decode"
    );
    // Raw dimensions move the code too, and the per-slider reset takes it back.
    h.state_mut().latent_mut().set_raw(3, -2.0);
    settle(&mut h);
    assert_ne!(h.state().latent().code(), base_code);
    h.state_mut().latent_mut().set_raw(3, 0.0);
    h.state_mut().latent_mut().set_pca(1, 1.0);
    h.state_mut().latent_mut().reset_pca(1);
    settle(&mut h);
    assert_eq!(h.state().latent().code(), base_code);
    assert!(max_diff(&before, h.state().latent().current_image().expect("decode")) < 1e-5);
}

#[test]
fn interpolation_strip_ends_are_the_decodes_of_a_and_b() {
    let (mut h, _dir) = ready_harness(test_image(64, 64));
    let cells = grid(&h);
    let codes: Vec<Vec<f32>> = h
        .state()
        .latent()
        .grid_codes()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert!(h.state_mut().latent_mut().pick_end(1, false));
    // B from the current point: sample 5 moved along PC 1.
    h.state_mut().latent_mut().pick_sample(5);
    h.state_mut().latent_mut().set_pca(0, -1.5);
    settle(&mut h);
    let b_code = h.state().latent().code();
    let b_image = h.state().latent().current_image().expect("decode").clone();
    h.state_mut().latent_mut().set_b_current();
    for kind in [Interpolation::Linear, Interpolation::Spherical] {
        assert!(h.state_mut().latent_mut().interpolate(6, kind));
        settle(&mut h);
        let strip: Vec<ImageF32> = h
            .state()
            .latent()
            .strip_images()
            .into_iter()
            .map(|i| i.expect("strip decoded").clone())
            .collect();
        assert_eq!(strip.len(), 6);
        let strip_codes = h.state().latent().strip_codes();
        assert_eq!(strip_codes[0], codes[1].as_slice());
        assert_eq!(strip_codes[5], b_code.as_slice());
        assert!(max_diff(&strip[0], &cells[1]) < 1e-5, "{kind:?}: A end");
        assert!(max_diff(&strip[5], &b_image) < 1e-5, "{kind:?}: B end");
        // In between, the decodes move away from both ends.
        assert!(max_diff(&strip[2], &strip[0]) > 1e-4);
        assert!(max_diff(&strip[2], &strip[5]) > 1e-4);
    }
}

#[test]
fn encode_then_put_back_changes_only_the_region_and_undo_restores() {
    let img = test_image(120, 90);
    let (mut h, _dir) = ready_harness(img.clone());
    let region = Rect {
        x: 30,
        y: 20,
        width: 40,
        height: 40,
    };
    h.state_mut().latent_mut().set_region(region);
    // Put back needs an encode first.
    assert!(h.state_mut().latent_put_back().is_err());
    h.get_by_label("Encode").click_accesskit();
    settle(&mut h);
    assert!(
        h.state().latent().last_error().is_none(),
        "{:?}",
        h.state().latent().last_error()
    );
    let encoded = h.state().latent().code();
    assert_eq!(encoded.len(), 6);
    let centre = h.state().latent().summary().expect("loaded").centre.clone();
    assert_ne!(
        encoded, centre,
        "the encode did not become the current point"
    );
    assert!(h.state().latent().current_image().is_some());
    // Edit the encoded face, then put it back.
    h.state_mut().latent_mut().set_pca(0, 2.0);
    settle(&mut h);
    h.get_by_label("Put back").click_accesskit();
    settle(&mut h);
    let doc = h.state().document().expect("doc");
    assert_eq!(doc.undo_len(), 1, "put back is one undo step");
    let out = doc.current().clone();
    let mut changed = 0;
    for y in 0..90 {
        for x in 0..120 {
            let inside =
                x >= region.x && x < region.right() && y >= region.y && y < region.bottom();
            if inside {
                changed += usize::from(out.pixel(x, y) != img.pixel(x, y));
            } else {
                assert_eq!(
                    out.pixel(x, y),
                    img.pixel(x, y),
                    "pixel ({x}, {y}) outside changed"
                );
            }
        }
    }
    assert!(
        changed > 1000,
        "only {changed} of 1600 region pixels changed"
    );
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.step();
    let doc = h.state().document().expect("doc");
    assert_eq!(
        doc.current().data(),
        img.data(),
        "undo restores the image exactly"
    );
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    h.step();
    assert_eq!(
        h.state().document().expect("doc").current().data(),
        out.data(),
        "redo puts it back"
    );

    // "Transfer only the edit" also stays inside the region.
    h.state_mut().undo();
    h.step();
    h.get_by_label("Transfer only the edit").click_accesskit();
    h.step();
    h.state_mut().latent_put_back().expect("put back");
    settle(&mut h);
    let out = h.state().document().expect("doc").current().clone();
    let mut changed = 0;
    for y in 0..90 {
        for x in 0..120 {
            let inside =
                x >= region.x && x < region.right() && y >= region.y && y < region.bottom();
            if inside {
                changed += usize::from(out.pixel(x, y) != img.pixel(x, y));
            } else {
                assert_eq!(out.pixel(x, y), img.pixel(x, y));
            }
        }
    }
    assert!(changed > 100, "the edit transfer changed {changed} pixels");
    h.state_mut().undo();
    h.step();
    assert_eq!(
        h.state().document().expect("doc").current().data(),
        img.data()
    );
}

#[test]
fn missing_weights_show_a_message_without_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(app_with(dir.path(), test_image(64, 48)));
    h.key_press(Key::L);
    settle(&mut h);
    let why = h
        .state()
        .latent()
        .unavailable()
        .expect("unavailable")
        .to_owned();
    assert!(why.contains("weights not found"), "{why}");
    assert!(h
        .query_by_label_contains("The latent explorer is unavailable")
        .is_some());
    assert!(h
        .query_all_by_label_contains("weights not found")
        .next()
        .is_some());
    // The rest of the studio keeps working, and Retry does not panic either.
    h.get_by_label("Retry").click_accesskit();
    settle(&mut h);
    assert!(h.state().latent().unavailable().is_some());
    assert!(h.state_mut().latent_encode().is_err());

    // Corrupt weights beside a valid manifest: a message too.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/vae-faces.json");
    let manifest = std::fs::read_to_string(&shipped).unwrap_or_else(|_| {
        // Without the shipped manifest, any unreadable one does: loading must still fail.
        "{}".to_owned()
    });
    std::fs::write(dir.path().join("vae-faces.json"), manifest).expect("write");
    std::fs::write(
        dir.path().join("vae-faces.safetensors"),
        b"\x08\0\0\0\0\0\0\0garbage",
    )
    .expect("write");
    let mut h = harness(app_with(dir.path(), test_image(64, 48)));
    h.state_mut().toggle_latent();
    settle(&mut h);
    let why = h
        .state()
        .latent()
        .unavailable()
        .expect("unavailable")
        .to_owned();
    assert!(why.contains("cannot load vae-faces"), "{why}");
    assert!(h
        .query_by_label_contains("The latent explorer is unavailable")
        .is_some());

    // The GAN without its weights is reported the same way.
    h.state_mut().latent_mut().set_model("gan-faces");
    settle(&mut h);
    let why = h
        .state()
        .latent()
        .unavailable()
        .expect("unavailable")
        .to_owned();
    assert!(why.contains("weights not found"), "{why}");

    // A model the explorer cannot drive is reported the same way.
    h.state_mut().latent_mut().set_model("flow-faces");
    settle(&mut h);
    let why = h
        .state()
        .latent()
        .unavailable()
        .expect("unavailable")
        .to_owned();
    assert!(why.contains("does not support model 'flow-faces'"), "{why}");
}

#[test]
fn the_shipped_face_vae_opens_and_decodes_faces() {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let mut h = harness(app_with(&weights, test_image(128, 96)));
    h.state_mut().toggle_latent();
    settle(&mut h);
    if !weights.join("vae-faces.safetensors").is_file() {
        // Not shipped in this checkout: the explorer must say so.
        assert!(h.state().latent().unavailable().is_some());
        return;
    }
    let s = h.state().latent().summary().expect("loaded").clone();
    assert_eq!((s.latent_dim, s.image_size), (128, 64));
    assert!(s.pca.is_some(), "{:?}", s.notice);
    let cells = grid(&h);
    assert_eq!(cells.len(), 16);
    assert_eq!((cells[0].width(), cells[0].channels()), (64, 3));
    // Faces are not flat: each sample has contrast.
    for c in &cells {
        let (lo, hi) = c
            .data()
            .iter()
            .fold((1.0f32, 0.0f32), |(l, u), v| (l.min(*v), u.max(*v)));
        assert!(hi - lo > 0.2, "a flat sample ({lo}..{hi})");
    }
    h.state_mut().latent_mut().pick_sample(0);
    h.state_mut().latent_mut().set_pca(0, 3.0);
    settle(&mut h);
    assert!(
        max_diff(
            &cells[0],
            h.state().latent().current_image().expect("decode")
        ) > 0.02
    );
}

#[test]
fn the_gan_opens_with_ganspace_sliders_and_no_encoder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut app = app_with(dir.path(), test_image(64, 64));
    let cfg = kintsugi::models::gan::GanConfig {
        image_size: 16,
        latent: 8,
        g_base: 2,
        d_base: 2,
    };
    let gan = kintsugi::models::gan::LoadedGan::fresh(cfg, 5, &Device::Cpu).expect("gan");
    let model = kintsugi::studio::latent_model::GanLatent::new("gan-tiny", gan).expect("wrap");
    app.latent_mut().use_model(Box::new(model));
    app.latent_mut().set_open(true);
    let mut h = harness(app);
    settle(&mut h);
    assert!(h.state().latent().ready(), "the tiny GAN did not load");
    // One slider per GANSpace component (capped by the latent size), and they move the decode.
    assert_eq!(h.state().latent().pca_len(), 8);
    assert!(h.state_mut().latent_mut().pick_sample(1));
    settle(&mut h);
    let before = h.state().latent().current_image().expect("decode").clone();
    h.get_by_role_and_label(Role::Slider, "PC 1")
        .set_value_accesskit(3.0);
    settle(&mut h);
    let moved = h.state().latent().current_image().expect("decode").clone();
    assert!(
        max_diff(&before, &moved) > 1e-4,
        "GANSpace slider did nothing"
    );
    // No encoder: encoding is refused with a reason, nothing else changes.
    let err = h
        .state_mut()
        .latent_encode()
        .expect_err("a GAN cannot encode");
    assert!(err.contains("has no encoder"), "{err}");
    // The interpolation strip runs spherically between two samples; its ends are the samples.
    assert!(h.state_mut().latent_mut().pick_end(0, false));
    assert!(h.state_mut().latent_mut().pick_end(3, true));
    assert!(h
        .state_mut()
        .latent_mut()
        .interpolate(5, Interpolation::Spherical));
    settle(&mut h);
    let strip = h.state().latent().strip_images();
    assert_eq!(strip.len(), 5);
    let cells = grid(&h);
    let first = strip[0].expect("strip decoded");
    let last = strip[4].expect("strip decoded");
    assert!(max_diff(first, &cells[0]) < 1e-5 && max_diff(last, &cells[3]) < 1e-5);
}
