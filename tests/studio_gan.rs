//! The live GAN training view driven headlessly through egui_kittest: opening it with G,
//! training a tiny GAN on generated PNGs while frames keep coming, pause, resume, stop,
//! checkpoints, starting from shipped weights, and bad data folders. Every data set is a
//! handful of tiny images written to a temporary folder.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use egui::Key;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use kintsugi::engine::EngineConfig;
use kintsugi::imaging::{BitDepth, ImageF32};
use kintsugi::models::gan::{codes_for_seed, GanConfig, GanManifest, GanMetrics, LoadedGan};
use kintsugi::models::registry::Registry;
use kintsugi::studio::gan_train::{GanTrainPanel, Phase, GRID_SEED};
use kintsugi::studio::gan_train_worker::{
    sample_grid, GanCommand, GanEventKind, GanTrainWorker, StartRun, GRID_COLS, GRID_SAMPLES,
};
use kintsugi::studio::StudioApp;
use kintsugi::train::gan::{GanTrainConfig, GanTrainer};

/// The smallest GAN the trainer builds: 16x16 images, latent 8, two channels per stage.
fn tiny() -> GanConfig {
    GanConfig {
        image_size: 16,
        latent: 8,
        g_base: 2,
        d_base: 2,
    }
}

/// Writes `n` `size`x`size` RGB PNGs with different smooth patterns into `dir`.
fn write_pngs(dir: &Path, n: usize, size: u32) {
    for k in 0..n {
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let v = |a: u32, b: u32| ((x * a + y * b + k as u32 * 37) % 256) as u8;
            image::Rgb([v(9, 3), v(2, 11), v(5, 5)])
        });
        img.save(dir.join(format!("face_{k:03}.png")))
            .expect("write png");
    }
}

/// A folder of eight tiny faces-to-be.
fn tiny_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_pngs(dir.path(), 8, 16);
    dir
}

/// A studio on a small image whose weights folder is `weights`.
fn app_with(weights: &Path) -> StudioApp {
    let mut config = EngineConfig::with_threads(1);
    config.registry = Registry::new(weights);
    let img = ImageF32::from_fn(64, 48, 3, |x, y, c| {
        (x as f32 * 0.01 + y as f32 * 0.02 + c as f32 * 0.1).min(1.0)
    });
    StudioApp::new(Some((img, BitDepth::U8, None)), config)
}

fn harness(app: StudioApp) -> Harness<'static, StudioApp> {
    Harness::builder()
        .with_size([1280.0, 900.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app)
}

/// A studio with the training view open, set to train the tiny GAN on `data` (batch 4, a
/// grid every 50 ms).
fn training_harness(weights: &Path, data: &Path) -> Harness<'static, StudioApp> {
    let mut app = app_with(weights);
    let p = app.gan_train_mut();
    p.set_open(true);
    p.set_model(tiny());
    p.set_batch(4);
    p.set_data_dir(data);
    p.set_grid_every(Duration::from_millis(50));
    let mut h = harness(app);
    h.step();
    h
}

/// Steps frames until `cond` holds; returns the frames it took. Fails after `secs` seconds.
fn frames_until(
    h: &mut Harness<'_, StudioApp>,
    what: &str,
    secs: u64,
    cond: impl Fn(&GanTrainPanel) -> bool,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut frames = 0;
    loop {
        h.step();
        frames += 1;
        let p = h.state().gan_train();
        if cond(p) {
            return frames;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}, step {}, error {:?}",
            p.phase(),
            p.steps(),
            p.error()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Steps frames for `ms` milliseconds.
fn frames_for(h: &mut Harness<'_, StudioApp>, ms: u64) -> usize {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut frames = 0;
    while Instant::now() < end {
        h.step();
        frames += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    frames
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
fn g_opens_the_training_view_and_it_is_listed_in_the_help() {
    let weights = tempfile::tempdir().expect("tempdir");
    let mut h = harness(app_with(weights.path()));
    h.step();
    assert!(!h.state().gan_train().is_open());
    assert!(h.query_by_label("Start").is_none());
    h.key_press(Key::G);
    h.step();
    h.step();
    assert!(h.state().gan_train().is_open());
    assert!(h.query_by_label("Start").is_some());
    assert!(h.query_by_label("From scratch").is_some());
    assert!(h.query_by_label_contains("Not started").is_some());
    // Nothing runs until Start: no worker thread yet.
    assert!(!h.state().gan_train().worker_alive());
    // Without shipped weights only a run from scratch is possible.
    assert!(h.state().gan_train().shipped().is_none());
    assert!(!h.state_mut().gan_train_mut().set_from_shipped(true));
    // The top bar's toggle closes it; G opens it again.
    h.get_by_label("GAN training (G)").click();
    h.step();
    assert!(!h.state().gan_train().is_open());
    h.key_press(Key::G);
    h.step();
    assert!(h.state().gan_train().is_open());
    h.key_press(Key::F1);
    h.step();
    assert!(h
        .query_all_by_label_contains("Show or hide the live GAN training view")
        .next()
        .is_some());
}

#[test]
fn start_streams_steps_the_curves_grow_and_the_grid_changes() {
    let weights = tempfile::tempdir().expect("tempdir");
    let data = tiny_data();
    let mut h = training_harness(weights.path(), data.path());
    h.get_by_label("Start").click();
    frames_until(&mut h, "the run to start", 60, |p| {
        p.phase() == Phase::Running
    });
    assert_eq!(h.state().gan_train().images(), Some(8));
    let cfg = h.state().gan_train().run_config().cloned().expect("config");
    assert_eq!((cfg.model, cfg.batch), (tiny(), 4));
    // The grid of the starting point arrives first (later ones may have replaced it by the
    // time a frame looks).
    frames_until(&mut h, "the first grid", 30, |p| p.grid().is_some());
    let (first, first_step) = h
        .state()
        .gan_train()
        .grid()
        .map(|(g, s)| (g.clone(), s))
        .expect("grid");
    // 4x4 cells of 16 px with a 2 px gutter.
    assert_eq!((first.width(), first.height()), (74, 74));
    // The history grows step by step while frames keep rendering.
    let mut lens = Vec::new();
    let frames = frames_until(&mut h, "40 steps", 120, |p| {
        p.steps() >= 40 && p.grid().is_some_and(|(_, s)| s >= 20)
    });
    let len0 = h.state().gan_train().history().len();
    lens.push(len0);
    frames_until(&mut h, "more steps", 60, |p| p.history().len() > len0);
    lens.push(h.state().gan_train().history().len());
    assert!(frames > 1, "the steps came in a single frame");
    assert!(
        lens[0] >= 40 && lens[1] > lens[0],
        "history lengths {lens:?}"
    );
    let p = h.state().gan_train();
    let last = p.last_step().expect("a step");
    assert!(last.d_loss.is_finite() && last.g_loss.is_finite());
    assert!((0.0..=1.0).contains(&last.d_real) && (0.0..=1.0).contains(&last.d_fake));
    // Every step arrived: the curve's points are consecutive steps.
    let steps: Vec<u64> = p.history().points().map(|s| s.step).collect();
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "{steps:?}");
    assert_eq!(steps.first(), Some(&1));
    // The same codes, later: the generator has moved.
    let (later, later_step) = p.grid().expect("grid");
    assert!(later_step > first_step, "{later_step} vs {first_step}");
    assert!(max_diff(&first, later) > 1e-3, "the samples did not change");
    assert!(p.grids_received() >= 2);
    // Status line and legend.
    assert!(h.query_by_label_contains("steps/s").is_some());
    for legend in ["D loss ", "G loss ", "D(x) ", "D(G(z)) "] {
        assert!(
            h.query_all_by_label_contains(legend).next().is_some(),
            "no legend entry {legend:?}"
        );
    }
    h.get_by_label("Stop").click();
    frames_until(&mut h, "the stop", 30, |p| p.phase() == Phase::Stopped);
}

#[test]
fn frames_keep_coming_while_a_slow_step_runs() {
    // A batch large enough that one step takes well over a frame: if the UI waited for the
    // worker, there would be about one frame per step.
    let weights = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    write_pngs(data.path(), 8, 32);
    let mut h = training_harness(weights.path(), data.path());
    h.state_mut().gan_train_mut().set_model(GanConfig {
        image_size: 32,
        latent: 16,
        g_base: 8,
        d_base: 8,
    });
    h.state_mut().gan_train_mut().set_batch(16);
    h.state_mut().gan_train_mut().start().expect("start");
    frames_until(&mut h, "the first step", 120, |p| p.steps() >= 1);
    let s0 = h.state().gan_train().steps();
    let t0 = Instant::now();
    let mut frames = 0;
    let mut slowest = Duration::ZERO;
    while h.state().gan_train().steps() < s0 + 3 {
        let t = Instant::now();
        h.step();
        slowest = slowest.max(t.elapsed());
        frames += 1;
        assert!(t0.elapsed() < Duration::from_secs(120), "training stalled");
        std::thread::sleep(Duration::from_millis(2));
    }
    let per_step = t0.elapsed() / 3;
    eprintln!("{frames} frames over 3 steps of {per_step:?}; slowest frame {slowest:?}");
    assert!(
        frames >= 6,
        "only {frames} frames over 3 steps of {per_step:?}: the UI waits for training"
    );
    assert!(
        slowest < per_step,
        "a frame took {slowest:?}, a step {per_step:?}: the UI waited for a step"
    );
    h.state_mut().gan_train_mut().stop();
    frames_until(&mut h, "the stop", 60, |p| p.phase() == Phase::Stopped);
}

#[test]
fn pause_holds_the_step_count_and_resume_continues() {
    let weights = tempfile::tempdir().expect("tempdir");
    let data = tiny_data();
    let mut h = training_harness(weights.path(), data.path());
    h.get_by_label("Start").click();
    frames_until(&mut h, "5 steps", 60, |p| p.steps() >= 5);
    h.get_by_label("Pause").click();
    frames_until(&mut h, "the pause", 30, |p| p.phase() == Phase::Paused);
    let paused_at = h.state().gan_train().steps();
    let len = h.state().gan_train().history().len();
    let elapsed = h.state().gan_train().elapsed();
    frames_for(&mut h, 300);
    let p = h.state().gan_train();
    assert_eq!(p.phase(), Phase::Paused);
    assert_eq!(p.steps(), paused_at, "steps advanced while paused");
    assert_eq!(p.history().len(), len);
    assert_eq!(p.elapsed(), elapsed, "the clock ran while paused");
    // The paused grid shows the paused step.
    assert_eq!(p.grid().map(|(_, s)| s), Some(paused_at));
    assert!(h.query_by_label_contains("Paused").is_some());
    h.get_by_label("Resume").click();
    frames_until(&mut h, "steps after resume", 60, |p| {
        p.steps() > paused_at + 3
    });
    assert_eq!(h.state().gan_train().phase(), Phase::Running);
    h.get_by_label("Stop").click();
    frames_until(&mut h, "the stop", 30, |p| p.phase() == Phase::Stopped);
}

#[test]
fn stop_ends_the_run_and_start_begins_a_new_one() {
    let weights = tempfile::tempdir().expect("tempdir");
    let data = tiny_data();
    let mut h = training_harness(weights.path(), data.path());
    h.get_by_label("Start").click();
    frames_until(&mut h, "3 steps", 60, |p| p.steps() >= 3);
    h.get_by_label("Stop").click();
    frames_until(&mut h, "the stop", 30, |p| p.phase() == Phase::Stopped);
    let stopped_at = h.state().gan_train().steps();
    let len = h.state().gan_train().history().len();
    frames_for(&mut h, 300);
    let p = h.state().gan_train();
    assert_eq!(p.steps(), stopped_at, "steps advanced after Stop");
    assert_eq!(p.history().len(), len, "the curves of the run stay");
    assert!(!p.phase().active());
    assert!(h.query_by_label_contains("Stopped").is_some());
    // Start again: a fresh run from step 0 (the data is kept by the idle worker).
    h.get_by_label("Start").click();
    h.step();
    assert_eq!(h.state().gan_train().steps(), 0);
    assert!(h.state().gan_train().history().is_empty());
    frames_until(&mut h, "the second run", 60, |p| p.steps() >= 2);
    h.state_mut().gan_train_mut().stop();
    frames_until(&mut h, "the second stop", 30, |p| {
        p.phase() == Phase::Stopped
    });
    // Closing the studio while a run goes on ends the worker thread.
    h.state_mut().gan_train_mut().start().expect("start");
    frames_until(&mut h, "the third run", 60, |p| p.steps() >= 1);
    let t = Instant::now();
    drop(h);
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn dropping_the_worker_mid_run_ends_its_thread() {
    let data = tiny_data();
    let w = GanTrainWorker::start(1, None).expect("worker");
    assert!(w.is_alive());
    let config = GanTrainConfig {
        model: tiny(),
        batch: 4,
        ..GanTrainConfig::faces64()
    };
    let start = StartRun {
        run: 7,
        config,
        data: data.path().to_owned(),
        shipped: None,
        grid_every: Duration::from_secs(60),
        grid_seed: 1,
    };
    w.send(GanCommand::Start(Box::new(start))).expect("send");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut steps = 0;
    while steps < 3 {
        for ev in w.drain() {
            assert_eq!(ev.run, 7);
            if let GanEventKind::Step(s) = ev.kind {
                steps = s.step;
            }
        }
        assert!(Instant::now() < deadline, "no steps");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Dropping closes the channels and joins the thread: it returns within a step.
    let t = Instant::now();
    drop(w);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn bad_data_folders_show_an_error_and_the_studio_keeps_running() {
    let weights = tempfile::tempdir().expect("tempdir");
    let root = tempfile::tempdir().expect("tempdir");
    let mut h = training_harness(weights.path(), &root.path().join("missing"));
    // A folder that does not exist.
    h.get_by_label("Start").click();
    frames_until(&mut h, "the error", 30, |p| p.phase() == Phase::Failed);
    let e = h.state().gan_train().error().expect("error").to_owned();
    assert!(
        e.contains("no usable training data") && e.contains("missing"),
        "{e}"
    );
    assert!(h
        .query_by_label_contains("Error: no usable training data")
        .is_some());
    // A folder without PNGs.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    std::fs::write(empty.join("notes.txt"), "not an image").expect("write");
    h.state_mut().gan_train_mut().set_data_dir(&empty);
    h.get_by_label("Start").click();
    frames_until(&mut h, "the error", 30, |p| p.phase() == Phase::Failed);
    let e = h.state().gan_train().error().expect("error").to_owned();
    assert!(e.contains("no .png images"), "{e}");
    // PNGs of the wrong size are named with their size.
    let big = root.path().join("big");
    std::fs::create_dir(&big).expect("mkdir");
    write_pngs(&big, 2, 24);
    h.state_mut().gan_train_mut().set_data_dir(&big);
    h.get_by_label("Start").click();
    frames_until(&mut h, "the error", 30, |p| p.phase() == Phase::Failed);
    let e = h.state().gan_train().error().expect("error").to_owned();
    assert!(e.contains("24x24") && e.contains("expected 16x16"), "{e}");
    // A file that is not a PNG under a .png name.
    let broken = root.path().join("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    std::fs::write(broken.join("a.png"), b"\x89PNG garbage").expect("write");
    h.state_mut().gan_train_mut().set_data_dir(&broken);
    h.get_by_label("Start").click();
    frames_until(&mut h, "the error", 30, |p| p.phase() == Phase::Failed);
    assert!(h
        .state()
        .gan_train()
        .error()
        .is_some_and(|e| e.contains("a.png")));
    // No folder at all is refused before anything starts.
    h.state_mut().gan_train_mut().set_data_dir("");
    h.get_by_label("Start").click();
    h.step();
    assert!(h
        .state()
        .gan_train()
        .note()
        .is_some_and(|n| n.contains("choose a data folder")));
    // The studio still works: a good folder trains.
    let good = tiny_data();
    h.state_mut().gan_train_mut().set_data_dir(good.path());
    h.get_by_label("Start").click();
    frames_until(&mut h, "steps", 60, |p| p.steps() >= 2);
    assert!(h.state().gan_train().error().is_none());
    h.state_mut().gan_train_mut().stop();
    frames_until(&mut h, "the stop", 30, |p| p.phase() == Phase::Stopped);
}

#[test]
fn save_checkpoint_writes_a_run_the_cli_can_resume() {
    let weights = tempfile::tempdir().expect("tempdir");
    let data = tiny_data();
    let runs = tempfile::tempdir().expect("tempdir");
    let mut h = training_harness(weights.path(), data.path());
    h.state_mut()
        .gan_train_mut()
        .set_checkpoint_dir(runs.path());
    h.get_by_label("Start").click();
    frames_until(&mut h, "3 steps", 60, |p| p.steps() >= 3);
    h.get_by_label("Pause").click();
    frames_until(&mut h, "the pause", 30, |p| p.phase() == Phase::Paused);
    let at = h.state().gan_train().steps();
    h.get_by_label("Save checkpoint").click();
    frames_until(&mut h, "the checkpoint", 30, |p| {
        p.note().is_some_and(|n| n.contains("Checkpoint"))
    });
    let cfg = h.state().gan_train().run_config().cloned().expect("config");
    let mut t = GanTrainer::new(cfg, 8, &Device::Cpu).expect("trainer");
    assert!(t.resume(runs.path()).expect("resume"));
    assert_eq!(t.steps(), at);
    h.get_by_label("Stop").click();
    frames_until(&mut h, "the stop", 30, |p| p.phase() == Phase::Stopped);
}

#[test]
fn a_run_can_start_from_the_shipped_weights() {
    let weights = tempfile::tempdir().expect("tempdir");
    let dev = Device::Cpu;
    let gan = LoadedGan::fresh(tiny(), 5, &dev).expect("gan");
    let path = weights.path().join("gan-faces.safetensors");
    gan.save(&path, true).expect("save");
    let manifest = GanManifest {
        family: "gan".into(),
        architecture: tiny().architecture(),
        config: tiny(),
        params_g: 0,
        params_d: 0,
        data: "test".into(),
        data_license: "test".into(),
        objective: "test".into(),
        commands: Vec::new(),
        steps: 0,
        batch: 4,
        seed: 5,
        train_seconds: 0.0,
        hardware: "test".into(),
        weights_format: "f16".into(),
        curves: String::new(),
        metrics: GanMetrics::default(),
    };
    manifest
        .write(&weights.path().join("gan-faces.json"))
        .expect("manifest");
    let data = tiny_data();
    let mut h = training_harness(weights.path(), data.path());
    // The panel's own model is the 64 px face model: the shipped sizes replace it.
    h.state_mut()
        .gan_train_mut()
        .set_model(GanConfig::faces64());
    assert!(h.state().gan_train().shipped().is_some());
    assert!(h.state_mut().gan_train_mut().set_from_shipped(true));
    // Only the grid of the starting point, so the one the test sees is step 0's.
    h.state_mut()
        .gan_train_mut()
        .set_grid_every(Duration::from_secs(600));
    h.step();
    h.get_by_label("Start").click();
    frames_until(&mut h, "the first grid", 60, |p| p.grid().is_some());
    let p = h.state().gan_train();
    assert_eq!(p.run_config().map(|c| c.model), Some(tiny()));
    // The grid of step 0 is the shipped generator's, for the grid's fixed codes.
    let loaded = LoadedGan::load(tiny(), &path, &dev).expect("load");
    let z = codes_for_seed(GRID_SEED, GRID_SAMPLES, 8, &dev).expect("codes");
    let x = loaded.g.forward(&z).expect("forward");
    let flat: Vec<f32> = x.flatten_all().expect("flat").to_vec1().expect("vec");
    let want = sample_grid(&flat, GRID_SAMPLES, 16, GRID_COLS).expect("grid");
    let (got, step) = p.grid().expect("grid");
    assert_eq!(step, 0);
    assert!(max_diff(got, &want) < 1e-6);
    h.state_mut().gan_train_mut().stop();
    frames_until(&mut h, "the stop", 30, |p| p.phase() == Phase::Stopped);
}
