//! The studio driven headlessly through egui_kittest: open, paint, run, undo, save, cancel.

use std::path::Path;
use std::time::{Duration, Instant};

use egui::{Key, Modifiers, Pos2};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use kintsugi::engine::EngineConfig;
use kintsugi::imaging::{load_image, save_image, BitDepth, ImageF32};
use kintsugi::studio::canvas::Tool;
use kintsugi::studio::{default_save_name, StudioApp};

/// A small textured test image: smooth gradients plus a checker, so repairs change pixels.
fn test_image(w: usize, h: usize) -> ImageF32 {
    ImageF32::from_fn(w, h, 3, |x, y, c| {
        let checker = if (x / 8 + y / 8) % 2 == 0 { 0.15 } else { 0.0 };
        (x as f32 / w as f32 * 0.6 + y as f32 / h as f32 * 0.2 + c as f32 * 0.05 + checker).min(1.0)
    })
}

fn app_on(img: ImageF32, depth: BitDepth) -> StudioApp {
    StudioApp::new(Some((img, depth, None)), EngineConfig::with_threads(1))
}

fn harness(app: StudioApp) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size([1100.0, 720.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app)
}

/// Steps frames until no job is running (or fails the test after 60 s).
fn wait_for_job(h: &mut Harness<'_, StudioApp>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    h.step();
    while h.state().job_running() {
        assert!(
            Instant::now() < deadline,
            "job did not finish: {}",
            h.state().job_status()
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.step();
}

/// Drags the primary button along `points` on the canvas, one event per frame.
fn stroke(h: &mut Harness<'_, StudioApp>, points: &[Pos2]) {
    h.hover_at(points[0]);
    h.drag_at(points[0]);
    for p in &points[1..] {
        h.hover_at(*p);
    }
    h.drop_at(points[points.len() - 1]);
    h.step();
    h.step();
}

#[test]
fn paint_run_telea_then_undo_restores_everything() {
    let img = test_image(160, 120);
    let mut h = harness(app_on(img.clone(), BitDepth::U8));
    h.step();
    assert!(h.state().canvas_rect().width() > 100.0);
    h.state_mut().set_brush_size(6.0);
    let a = h.state().screen_pos_of(20.0, 60.0);
    let b = h.state().screen_pos_of(80.0, 40.0);
    let c = h.state().screen_pos_of(140.0, 70.0);
    stroke(&mut h, &[a, b, c]);
    let mask = (**h.state().document().expect("doc").mask()).clone();
    assert!(mask.count() > 200, "stroke painted {} px", mask.count());
    // The stroke is continuous between pointer positions: the midpoint of a to b is painted.
    assert!(mask.get(50, 50), "interpolated segment missing");
    assert_eq!(h.state().document().expect("doc").undo_len(), 1);

    h.key_press(Key::Enter);
    wait_for_job(&mut h);
    assert!(
        h.state().job_status().contains("done"),
        "{}",
        h.state().job_status()
    );
    let doc = h.state().document().expect("doc");
    let out = doc.current();
    let (mut changed, mut kept) = (0, true);
    for y in 0..120 {
        for x in 0..160 {
            let same = out.pixel(x, y) == img.pixel(x, y);
            if mask.get(x, y) {
                changed += usize::from(!same);
            } else {
                kept &= same;
            }
        }
    }
    assert!(kept, "a pixel outside the mask changed");
    assert!(
        changed > mask.count() / 2,
        "only {changed} masked pixels changed"
    );
    assert_eq!(doc.mask().count(), 0, "the repaired holes leave the mask");
    assert!(doc.unsaved);

    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.step();
    let doc = h.state().document().expect("doc");
    assert_eq!(doc.current().data(), img.data(), "undo restores the image");
    assert_eq!(**doc.mask(), mask, "undo restores the mask");
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.step();
    assert_eq!(h.state().document().expect("doc").mask().count(), 0);
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    h.step();
    assert_eq!(
        h.state().document().expect("doc").mask().count(),
        mask.count()
    );
}

#[test]
fn a_click_within_one_frame_paints_a_dot() {
    let mut h = harness(app_on(test_image(100, 80), BitDepth::U8));
    h.step();
    h.state_mut().set_brush_size(5.0);
    let p = h.state().screen_pos_of(50.0, 40.0);
    h.hover_at(p);
    h.step();
    // Press and release in the same frame, as a fast mouse click often arrives.
    for pressed in [true, false] {
        h.input_mut().events.push(egui::Event::PointerButton {
            pos: p,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: Modifiers::NONE,
        });
    }
    h.step();
    h.step();
    let doc = h.state().document().expect("doc");
    assert!(doc.mask().get(50, 40), "the click painted nothing");
    assert_eq!(doc.undo_len(), 1, "one click is one undo step");
}

#[test]
fn save_as_writes_a_new_file_and_never_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("scan.png");
    save_image(&test_image(64, 48), BitDepth::U16, &src, None).expect("write source");
    let src_bytes = std::fs::read(&src).expect("read source");

    let mut app = StudioApp::new(None, EngineConfig::with_threads(1));
    app.open_path_now(&src).expect("open");
    let mut h = harness(app);
    let doc = h.state_mut().document_mut().expect("doc");
    doc.begin_stroke();
    doc.paint_segment([10.0, 10.0], [50.0, 30.0], 3.0, true);
    doc.end_stroke();
    h.state_mut().run_job();
    wait_for_job(&mut h);
    assert!(h.state().document().expect("doc").unsaved);

    let out = default_save_name(Some(&src));
    assert_eq!(out, dir.path().join("scan_restored.png"));
    h.state_mut().save_as(&out).expect("save");
    assert!(!h.state().document().expect("doc").unsaved);
    let saved = load_image(&out).expect("reload");
    assert_eq!(saved.depth, BitDepth::U16, "bit depth kept");
    let current = h.state().document().expect("doc").current().clone();
    let worst = saved
        .pixels
        .data()
        .iter()
        .zip(current.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 0.6 / 65535.0, "saved pixels differ by {worst}");

    let err = h
        .state_mut()
        .save_as(&src)
        .expect_err("must refuse the source");
    assert!(err.contains("refusing"), "{err}");
    h.step();
    assert!(h.state().last_error().is_some());
    assert!(
        h.query_by_label_contains("refusing to overwrite").is_some(),
        "error shown in the UI"
    );
    assert_eq!(
        std::fs::read(&src).expect("read"),
        src_bytes,
        "source untouched"
    );
}

#[test]
fn models_without_weights_are_listed_but_disabled() {
    // An empty weights folder: the learned models have no weights.
    let empty = tempfile::tempdir().expect("tmp");
    let mut config = EngineConfig::with_threads(1);
    config.registry = kintsugi::models::registry::Registry::new(empty.path());
    let app = StudioApp::new(Some((test_image(32, 32), BitDepth::U8, None)), config);
    let mut h = harness(app);
    h.step();
    let telea = h.get_by_label_contains("telea  [classical]");
    assert!(!telea.accesskit_node().is_disabled());
    let gan = h.get_by_label_contains("gan-faces  [GAN]");
    assert!(
        gan.accesskit_node().is_disabled(),
        "a model without weights must be disabled"
    );
    assert!(!h.state_mut().select_model("gan-faces"));
    assert_eq!(h.state().model(), "auto", "auto is the default");
    h.get_by_label_contains("patchmatch  [classical]").click();
    h.step();
    assert_eq!(h.state().model(), "patchmatch");
    // Its parameters appear as labelled sliders.
    assert!(h.query_all_by_role(egui::accesskit::Role::Slider).count() >= 2);
}

#[test]
fn cancel_stops_a_running_job_and_keeps_the_image() {
    let img = test_image(480, 360);
    let mut app = app_on(img.clone(), BitDepth::U8);
    assert!(app.select_model("patchmatch"));
    let mut h = harness(app);
    let doc = h.state_mut().document_mut().expect("doc");
    doc.begin_stroke();
    doc.paint_segment([100.0, 180.0], [380.0, 180.0], 60.0, true);
    doc.end_stroke();
    h.state_mut().run_job();
    h.step();
    assert!(h.state().job_running());
    h.key_press(Key::Escape);
    wait_for_job(&mut h);
    assert_eq!(h.state().job_status(), "cancelled");
    let t = h.state().timings();
    let latency = t.cancel_latency.expect("measured");
    eprintln!("cancel latency {latency:?}");
    assert!(latency < Duration::from_secs(2), "cancel took {latency:?}");
    let doc = h.state().document().expect("doc");
    assert_eq!(doc.current().data(), img.data());
    assert!(doc.mask().count() > 0, "the mask stays for another try");
}

#[test]
fn empty_mask_run_reports_a_readable_error() {
    let mut h = harness(app_on(test_image(40, 30), BitDepth::U8));
    h.key_press(Key::Enter);
    h.step();
    assert!(!h.state().job_running());
    assert!(h.query_by_label_contains("the mask is empty").is_some());
}

#[test]
fn shortcuts_switch_tools_size_zoom_and_help() {
    let mut h = harness(app_on(test_image(200, 100), BitDepth::U8));
    h.step();
    let before = h.state().brush_size();
    h.key_press(Key::CloseBracket);
    h.step();
    assert!(h.state().brush_size() > before);
    h.key_press(Key::E);
    h.step();
    assert_eq!(h.state().tool(), Tool::Eraser);
    h.key_press(Key::B);
    h.step();
    assert_eq!(h.state().tool(), Tool::Brush);
    h.key_press_modifiers(Modifiers::COMMAND, Key::Num1);
    h.step();
    assert!(
        (h.state().zoom() - 1.0).abs() < 1e-4,
        "zoom {}",
        h.state().zoom()
    );
    // Wheel zoom keeps the image point under the pointer in place.
    let p = h.state().screen_pos_of(50.0, 50.0);
    h.hover_at(p);
    h.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Line,
        delta: egui::vec2(0.0, 2.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Unknown,
        modifiers: Modifiers::NONE,
    });
    h.step();
    assert!(h.state().zoom() > 1.3);
    let q = h.state().screen_pos_of(50.0, 50.0);
    assert!((p - q).length() < 0.5, "{p:?} moved to {q:?}");
    h.key_press(Key::F1);
    h.step();
    assert!(h.state().help_visible());
    assert!(h.query_by_label_contains("Show the original").is_some());
}

#[test]
fn demo_opens_with_its_damage_masked() {
    let app = StudioApp::new(None, EngineConfig::with_threads(1));
    let doc = app.document().expect("demo document");
    assert!(doc.width() >= 256 && doc.height() >= 128);
    assert!(doc.mask().count() > 100, "the demo comes with a mask");
    assert!(doc.path.is_none());
    assert_eq!(default_save_name(None), Path::new("demo_restored.png"));
}

#[test]
fn images_wider_than_a_texture_open_with_lazy_tiles() {
    let img = ImageF32::from_fn(9000, 200, 1, |x, y, _| ((x ^ y) & 255) as f32 / 255.0);
    let mut h = harness(app_on(img, BitDepth::U8));
    h.step();
    assert_eq!(
        h.state().tiles_loaded(),
        0,
        "the preview suffices when fitted"
    );
    h.key_press_modifiers(Modifiers::COMMAND, Key::Num1);
    h.step();
    h.step();
    let n = h.state().tiles_loaded();
    assert!(
        (1..=2).contains(&n),
        "{n} tiles for a 1100 px wide view at 100%"
    );
}

#[test]
fn split_view_and_hold_tab_draw_without_errors() {
    let mut h = harness(app_on(test_image(120, 90), BitDepth::U8));
    h.get_by_label("Split view").click();
    h.step();
    h.key_down(Key::Tab);
    h.step();
    h.key_up(Key::Tab);
    h.step();
    assert!(h.state().last_error().is_none());
}

#[test]
fn demo_runs_with_streamed_previews() {
    let mut h = harness(StudioApp::new(None, EngineConfig::with_threads(1)));
    let holes = h.state().document().expect("demo").mask().count();
    h.get_by_label("Run").click();
    wait_for_job(&mut h);
    let t = h.state().timings();
    eprintln!(
        "demo telea: first preview {:?}, total {:?}",
        t.first_preview, t.total
    );
    assert!(t.first_preview.is_some(), "previews stream onto the canvas");
    let doc = h.state().document().expect("demo");
    assert_eq!(doc.mask().count(), 0);
    assert!(holes > 0 && doc.unsaved);
}

/// Writes `assets/demo.png` and `assets/demo_mask.png`; run once with
/// `cargo test --test studio -- --ignored write_demo_assets`.
#[test]
#[ignore]
fn write_demo_assets() {
    let (img, mask) = kintsugi::studio::demo::render_demo();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    save_image(&img, BitDepth::U8, &dir.join("demo.png"), None).expect("demo.png");
    kintsugi::imaging::io::save_mask(&mask, &dir.join("demo_mask.png"), None).expect("mask");
}

/// Frame times on a 24-megapixel scan (first frame builds the preview, then a stroke, then a
/// zoom to 100% that uploads tiles); run with `--ignored --nocapture` to see the numbers.
#[test]
#[ignore]
fn measure_large_scan_frame_times() {
    let img = ImageF32::from_fn(6000, 4000, 3, |x, y, c| {
        ((x * 7 + y * 3 + c) % 256) as f32 / 255.0
    });
    let t = Instant::now();
    let mut h = harness(app_on(img, BitDepth::U16));
    eprintln!("open + first frames: {:?}", t.elapsed());
    h.state_mut().set_brush_size(40.0);
    let a = h.state().screen_pos_of(1000.0, 1000.0);
    let b = h.state().screen_pos_of(5000.0, 3000.0);
    let t = Instant::now();
    stroke(&mut h, &[a, b]);
    eprintln!("stroke (6 frames): {:?}", t.elapsed());
    let t = Instant::now();
    h.key_press_modifiers(Modifiers::COMMAND, Key::Num1);
    h.step();
    h.step();
    eprintln!(
        "100% with tile uploads: {:?}, tiles {}",
        t.elapsed(),
        h.state().tiles_loaded()
    );
    let t = Instant::now();
    h.state_mut().run_job();
    wait_for_job(&mut h);
    eprintln!(
        "telea run on the stroke: {:?} ({:?})",
        t.elapsed(),
        h.state().timings()
    );
    let t = Instant::now();
    h.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    h.step();
    eprintln!("undo of the repair: {:?}", t.elapsed());
}
