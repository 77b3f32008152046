//! The RL episode viewer driven headlessly through egui_kittest: R opens it and F1 lists its
//! keys; an `rl-denoise` episode (the shipped agent) runs on the worker, streams its steps,
//! and `,` `.` Home End and the buttons step through it, showing exactly the recorded images
//! with the action overlay; an `rl-refine` episode changes only the masked pixels; missing
//! weights and an empty mask are reported, not a panic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::Key;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use kintsugi::engine::EngineConfig;
use kintsugi::imaging::{BitDepth, ImageF32, Mask};
use kintsugi::models::registry::Registry;
use kintsugi::rl::episode::replay;
use kintsugi::studio::episode::{action_colour, EpisodeState, EpisodeTask};
use kintsugi::studio::StudioApp;

fn shipped_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights")
}

/// A smooth test photo with some edges.
fn test_image(w: usize, h: usize) -> ImageF32 {
    ImageF32::from_fn(w, h, 3, |x, y, c| {
        let edge = if x > w / 2 { 0.25 } else { 0.0 };
        ((x as f32 * 0.07 + c as f32).sin() * 0.2 + (y as f32 * 0.05).cos() * 0.15 + 0.4 + edge)
            .clamp(0.0, 1.0)
    })
}

fn harness_with(weights: &Path, img: ImageF32) -> Harness<'static, StudioApp> {
    let mut config = EngineConfig::with_threads(1);
    config.registry = Registry::new(weights);
    let app = StudioApp::new(Some((img, BitDepth::U8, None)), config);
    let mut h = Harness::builder()
        .with_size([1280.0, 900.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app);
    h.step();
    h
}

/// Steps frames until the episode ends (fails after 120 s); returns the number of steps
/// received after each frame while it ran.
fn run_to_end(h: &mut Harness<'_, StudioApp>) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    h.step();
    while h.state().episode().running() {
        assert!(Instant::now() < deadline, "the episode did not finish");
        seen.push(h.state().episode().steps_received());
        std::thread::sleep(Duration::from_millis(2));
        h.step();
    }
    h.step();
    seen
}

/// A few frames: a newly opened window is laid out invisibly in its first frame.
fn settle_window(h: &mut Harness<'_, StudioApp>) {
    for _ in 0..3 {
        h.step();
    }
}

#[test]
fn r_opens_the_viewer_and_the_help_lists_its_keys() {
    let mut h = harness_with(&shipped_weights(), test_image(64, 48));
    assert!(!h.state().episode().is_open());
    assert!(h.query_by_label("Run episode").is_none());
    h.key_press(Key::R);
    settle_window(&mut h);
    assert!(h.state().episode().is_open());
    assert!(h.query_by_label("Run episode").is_some());
    // The top bar's toggle closes it; R reopens it.
    h.get_by_label("RL episode viewer (R)").click();
    h.step();
    assert!(!h.state().episode().is_open());
    h.key_press(Key::R);
    h.step();
    assert!(h.state().episode().is_open());
    h.key_press(Key::F1);
    settle_window(&mut h);
    for text in [
        "Show or hide the RL episode viewer",
        "RL episode viewer: one step back / forward",
        "RL episode viewer: first / newest step",
    ] {
        assert!(
            h.query_all_by_label_contains(text).next().is_some(),
            "help lacks '{text}'"
        );
    }
}

#[test]
fn a_denoise_episode_streams_and_steps_back_and_forth_exactly() {
    let img = test_image(96, 72);
    let mut h = harness_with(&shipped_weights(), img.clone());
    {
        let v = h.state_mut().episode_mut();
        v.set_open(true);
        v.task = EpisodeTask::Denoise;
        v.add_noise = Some(25.0);
    }
    settle_window(&mut h);
    h.get_by_label("Run episode").click();
    let seen = run_to_end(&mut h);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "steps arrive in order: {seen:?}"
    );
    let v = h.state().episode();
    assert!(
        matches!(v.state(), EpisodeState::Done(_)),
        "{:?}",
        v.state()
    );
    let rec = v.record().expect("a record").clone();
    assert_eq!(rec.len(), 5);
    assert_eq!(v.total_steps(), 5);
    // The image is smaller than a region: the episode covers all of it.
    let region = v.region().expect("region");
    assert_eq!((region.width, region.height), (96, 72));
    // Followed live to the last step.
    assert_eq!(v.shown_step(), 5);
    // The shipped agent really denoises: the PSNR against the photo goes up over the episode.
    let first = rec.steps[0].stats.psnr_before.expect("target known");
    let last = rec.steps[4].stats.psnr_after.expect("target known");
    assert!(last > first + 2.0, "PSNR {first:.2} -> {last:.2}");
    // The per-step table and its total row are shown.
    assert!(h.query_by_label("mean reward").is_some());
    assert!(h.query_by_label("all").is_some());
    // Keys step back and forth; every shown image is the recorded one, bit for bit, and the
    // recorded images are what replaying the action maps gives.
    let maps: Vec<Vec<u8>> = rec.steps.iter().map(|s| s.actions.clone()).collect();
    let frames = replay(&rec.set, &rec.start, None, &maps);
    let expect = |h: &Harness<'_, StudioApp>, t: usize| {
        let v = h.state().episode();
        assert_eq!(v.shown_step(), t);
        assert_eq!(
            v.shown_frame(),
            Some(&frames[t]),
            "step {t} is not the recorded one"
        );
    };
    h.key_press(Key::Comma);
    h.key_press(Key::Comma);
    h.step();
    expect(&h, 3);
    h.key_press(Key::Period);
    h.step();
    expect(&h, 4);
    h.key_press(Key::Home);
    h.step();
    expect(&h, 0);
    h.key_press(Key::End);
    h.step();
    expect(&h, 5);
    h.get_by_label("< Back").click();
    h.step();
    expect(&h, 4);
    h.get_by_label("Forward >").click();
    h.step();
    expect(&h, 5);
    // The overlay tints each pixel with the colour of the action it chose at the shown step;
    // at step 0 there is no overlay.
    let v = h.state_mut().episode_mut();
    v.overlay_alpha = 1.0;
    let comp = v.composite().expect("composite");
    for p in [0usize, 17, 96 * 30 + 50, 96 * 72 - 1] {
        let act = rec.set[usize::from(rec.steps[4].actions[p])];
        assert_eq!(comp.pixels[p], action_colour(act), "pixel {p}");
    }
    v.show_step(0);
    let plain = v.composite().expect("composite");
    let q = |x: f32| (x.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
    let plane = 96 * 72;
    for p in [0usize, 17, 96 * 30 + 50] {
        let s = &rec.start.data;
        let want = egui::Color32::from_rgb(q(s[p]), q(s[plane + p]), q(s[2 * plane + p]));
        assert_eq!(plain.pixels[p], want);
    }
    // The legend names the actions of the agent.
    h.step();
    assert!(h
        .query_all_by_label_contains("bilateral0.1")
        .next()
        .is_some());
}

#[test]
fn a_refine_episode_acts_only_on_the_mask() {
    refine_episode_acts_only_on_the_mask(EpisodeTask::Refine);
}

#[test]
fn a_refine_episode_from_the_cgan_fill_acts_only_on_the_mask() {
    refine_episode_acts_only_on_the_mask(EpisodeTask::RefineCgan);
}

fn refine_episode_acts_only_on_the_mask(task: EpisodeTask) {
    let img = test_image(80, 64);
    let mut h = harness_with(&shipped_weights(), img.clone());
    let mask = Mask::from_fn(80, 64, |x, y| {
        (30..40).contains(&x) && (20..34).contains(&y)
    });
    h.state_mut()
        .document_mut()
        .expect("document")
        .replace_mask(mask.clone());
    {
        let v = h.state_mut().episode_mut();
        v.set_open(true);
        v.task = task;
        v.photo_as_target = true;
    }
    settle_window(&mut h);
    h.get_by_label("Run episode").click();
    run_to_end(&mut h);
    let v = h.state().episode();
    assert!(
        matches!(v.state(), EpisodeState::Done(_)),
        "{:?}",
        v.state()
    );
    let rec = v.record().expect("record").clone();
    let region = v.region().expect("region");
    // The mask's box with 16 px of context.
    assert_eq!(
        (region.x, region.y, region.width, region.height),
        (14, 4, 42, 46)
    );
    let hole = rec.hole.clone().expect("hole");
    assert_eq!(hole.iter().filter(|&&b| b).count(), mask.count());
    let plane = region.width * region.height;
    for t in 1..=rec.len() {
        let f = rec.frame(t).expect("frame");
        for p in (0..plane).filter(|&p| !hole[p]) {
            for c in 0..3 {
                assert_eq!(f.data[c * plane + p], rec.start.data[c * plane + p]);
            }
        }
    }
    // Scored against the photo: rewards are known.
    assert!(rec.steps.iter().all(|s| s.stats.mean_reward.is_some()));
    // The overlay only tints the hole.
    let v = h.state_mut().episode_mut();
    v.overlay_alpha = 1.0;
    let comp = v.composite().expect("composite");
    let f = v.shown_frame().expect("frame").clone();
    let q = |x: f32| (x.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
    let outside = 0;
    assert_eq!(
        comp.pixels[outside],
        egui::Color32::from_rgb(
            q(f.data[outside]),
            q(f.data[plane + outside]),
            q(f.data[2 * plane + outside])
        )
    );
    let inside = (26 - region.y) * region.width + (35 - region.x);
    assert!(hole[inside]);
    let last = &rec.steps[v.shown_step() - 1];
    let act = rec.set[usize::from(last.actions[inside])];
    assert_eq!(comp.pixels[inside], action_colour(act));
}

#[test]
fn missing_weights_and_an_empty_mask_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness_with(dir.path(), test_image(48, 40));
    h.state_mut().episode_mut().set_open(true);
    settle_window(&mut h);
    h.get_by_label("Run episode").click();
    run_to_end(&mut h);
    match h.state().episode().state() {
        EpisodeState::Failed(e) => assert!(e.contains("cannot load rl-denoise"), "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(h.query_all_by_label_contains("failed: ").next().is_some());
    // The refine agent needs a mask.
    h.state_mut().episode_mut().task = EpisodeTask::Refine;
    h.state_mut().start_episode();
    h.step();
    match h.state().episode().state() {
        EpisodeState::Failed(e) => assert!(e.contains("mask is empty"), "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    // The studio keeps working: the viewer still answers.
    h.key_press(Key::R);
    h.step();
    assert!(!h.state().episode().is_open());
}

#[test]
fn esc_cancels_a_running_episode_within_a_step() {
    // A 1024x1024 region: five steps take seconds, so Esc lands while the episode runs.
    let mut h = harness_with(&shipped_weights(), test_image(1024, 1024));
    {
        let v = h.state_mut().episode_mut();
        v.set_open(true);
        v.task = EpisodeTask::Denoise;
        v.add_noise = None;
        v.max_side = 1024;
    }
    settle_window(&mut h);
    h.state_mut().start_episode();
    h.step();
    assert!(h.state().episode().running());
    h.key_press(Key::Escape);
    let started = Instant::now();
    run_to_end(&mut h);
    let v = h.state().episode();
    assert_eq!(v.state(), &EpisodeState::Cancelled);
    assert!(v.steps_received() < 5, "{} steps", v.steps_received());
    // Cancellation is checked after every step, so it ends within about one step.
    assert!(started.elapsed() < Duration::from_secs(60));
    // A new episode runs normally afterwards.
    h.state_mut().episode_mut().max_side = 64;
    h.state_mut().start_episode();
    run_to_end(&mut h);
    assert!(matches!(h.state().episode().state(), EpisodeState::Done(_)));
    assert_eq!(h.state().episode().steps_received(), 5);
}
