//! Studio responsiveness on a 24-megapixel scan while PatchMatch runs on the worker:
//! UI frame time (median, p99, max), time from Run to the first streamed preview, and time
//! from Cancel to the job stopping.
//!
//! `cargo bench --bench studio_frames` (release profile). The studio runs headlessly through
//! egui_kittest, so frame times cover everything the UI thread does (event draining, texture
//! deltas, layout) except the GPU upload itself.
//!
//! The run ends with the latent explorer's slider-to-image latency on the shipped face VAE
//! (`-- latent` runs only that part).

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use kintsugi::engine::EngineConfig;
use kintsugi::imaging::mask_synth::scattered_damage;
use kintsugi::imaging::{BitDepth, ImageF32};
use kintsugi::studio::document::Document;
use kintsugi::studio::latent_model::load_latent_model;
use kintsugi::studio::StudioApp;

fn scan(w: usize, h: usize) -> ImageF32 {
    ImageF32::from_fn(w, h, 3, |x, y, c| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        (0.3 + 0.4 * fx
            + 0.1 * (fy * 40.0 + c as f32).sin()
            + 0.05 * ((x * 7 + y * 3) % 5) as f32 / 5.0)
            .clamp(0.0, 1.0)
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() {
    if std::env::args().skip(1).any(|a| a == "latent") {
        latent_slider_latency();
        return;
    }
    // `cargo bench --bench studio_frames -- 100` runs a 100 MP scan instead of 24 MP.
    let megapixels: f64 = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .find_map(|a| a.parse().ok())
        .unwrap_or(24.0);
    let h = (megapixels * 1e6 / 1.5).sqrt().round() as usize;
    let w = (h as f64 * 1.5).round() as usize;
    let img = scan(w, h);
    let mask = scattered_damage(w, h, 0.002, 7);
    let threads = EngineConfig::leave_one_core().threads;
    let mut app = StudioApp::new(None, EngineConfig::leave_one_core());
    app.set_document(Document::with_mask(img, mask, BitDepth::U8, None));
    app.select_model("patchmatch");
    let mut hn = Harness::builder()
        .with_size([1400.0, 900.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app);
    for _ in 0..3 {
        hn.step();
    }

    // Frame times while the job runs. A real display paces frames at about 60 Hz; we sleep
    // 4 ms between frames so the worker gets the other core, as it would under vsync.
    hn.state_mut().run_job();
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while hn.state().job_running() && Instant::now() < deadline {
        let t = Instant::now();
        hn.step();
        frames.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(4));
    }
    // The frame that sees the Done event applies the result; report it on its own.
    let apply = frames.pop().unwrap_or_default();
    let timings = hn.state().timings();
    let mut sorted = frames.clone();
    sorted.sort();
    println!(
        "studio on a {w}x{h} ({megapixels} MP) scan, patchmatch on 0.2% scattered damage, {threads} worker thread(s)"
    );
    println!(
        "frames while running: {}  median {:.2} ms  p99 {:.2} ms  max {:.2} ms  (target p99 < 16 ms)",
        frames.len(),
        percentile(&sorted, 0.5).as_secs_f64() * 1e3,
        percentile(&sorted, 0.99).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "frame that applied the result: {:.1} ms",
        apply.as_secs_f64() * 1e3
    );
    println!(
        "run to first preview: {:.1} ms (target < 150 ms); whole job {:.2} s; status: {}",
        timings.first_preview.unwrap_or_default().as_secs_f64() * 1e3,
        timings.total.unwrap_or_default().as_secs_f64(),
        hn.state().job_status()
    );

    // Cancel latency: restart (undo the repair first so the mask is back), cancel after 300 ms.
    hn.state_mut().undo();
    hn.step();
    hn.state_mut().run_job();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        hn.step();
        std::thread::sleep(Duration::from_millis(4));
    }
    hn.state_mut().cancel();
    while hn.state().job_running() {
        hn.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "cancel to stopped: {:.1} ms (target < 200 ms); status: {}",
        hn.state()
            .timings()
            .cancel_latency
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
        hn.state().job_status()
    );
    println!(
        "peak resident memory: {} MiB (one RGB f32 copy of the scan is {} MiB)",
        peak_rss_mib().unwrap_or(0),
        (w * h * 3 * 4) >> 20
    );
    drop(hn);
    latent_slider_latency();
}

fn ms(d: Option<Duration>) -> f64 {
    d.unwrap_or_default().as_secs_f64() * 1e3
}

/// The decode alone, for comparison: one code through the shipped VAE in a pool of the
/// worker's size (median of 30 after a warm-up).
fn decode_alone(threads: usize) {
    let dir = kintsugi::models::registry::Registry::default()
        .weights_dir()
        .to_owned();
    let Ok(model) = load_latent_model(&dir, "vae-faces") else {
        return;
    };
    let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build() else {
        return;
    };
    let code = model.centre();
    let mut times: Vec<Duration> = pool.install(|| {
        let _ = model.decode(std::slice::from_ref(&code));
        (0..30)
            .map(|_| {
                let t = Instant::now();
                let _ = model.decode(std::slice::from_ref(&code));
                t.elapsed()
            })
            .collect()
    });
    times.sort();
    println!(
        "one decode alone (same pool size): median {:.1} ms  min {:.1} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    );
}

/// Steps frames (1 ms apart, as fast as a repaint request would run them) until the latent
/// explorer waits for nothing.
fn settle_latent(hn: &mut Harness<'_, StudioApp>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    hn.step();
    while hn.state().latent().busy() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        hn.step();
    }
}

/// The latent explorer on the shipped face VAE: time from a PCA slider change to the frame
/// whose texture shows its decode (measured inside the studio: the change is stamped when the
/// slider value is set, the latency when the decode is put into the texture).
fn latent_slider_latency() {
    let threads = EngineConfig::leave_one_core().threads;
    let mut app = StudioApp::new(
        Some((scan(512, 384), BitDepth::U8, None)),
        EngineConfig::leave_one_core(),
    );
    app.latent_mut().set_open(true);
    let mut hn = Harness::builder()
        .with_size([1400.0, 900.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app);
    let t = Instant::now();
    settle_latent(&mut hn);
    if let Some(why) = hn.state().latent().unavailable() {
        println!("latent explorer: skipped ({why})");
        return;
    }
    println!(
        "latent explorer (vae-faces, {threads} worker thread(s)): model loaded and 16-sample grid decoded in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    hn.state_mut().latent_mut().pick_sample(0);
    settle_latent(&mut hn);
    decode_alone(threads);

    // One slider move at a time, frames as soon as the worker pokes the UI.
    let moves = 40;
    hn.state_mut().latent_mut().latency_mut().clear();
    for k in 0..moves {
        let v = if k % 2 == 0 { 1.5 } else { -1.0 } + k as f32 * 0.01;
        hn.state_mut().latent_mut().set_pca(k % 8, v);
        settle_latent(&mut hn);
    }
    let l = hn.state().latent().latency().clone();
    println!(
        "slider to image, single moves: n {}  median {:.1} ms  p95 {:.1} ms  max {:.1} ms  (target < 50 ms)",
        l.samples().len(),
        ms(l.quantile(0.5)),
        ms(l.quantile(0.95)),
        ms(l.quantile(1.0))
    );

    // A continuous drag: the slider moves every frame at 60 Hz for 3 s.
    hn.state_mut().latent_mut().latency_mut().clear();
    let period = Duration::from_micros(16_667);
    let frames = 180;
    let mut frame_times = Vec::with_capacity(frames);
    let start = Instant::now();
    for f in 0..frames {
        let v = -3.0 + 6.0 * f as f32 / (frames - 1) as f32;
        hn.state_mut().latent_mut().set_pca(0, v);
        let t = Instant::now();
        hn.step();
        frame_times.push(t.elapsed());
        let next = start + period * (f as u32 + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    settle_latent(&mut hn);
    frame_times.sort();
    let l = hn.state().latent().latency().clone();
    println!(
        "slider to image, 60 Hz drag over {frames} frames: {} decodes shown (the rest coalesced)  median {:.1} ms  p95 {:.1} ms  max {:.1} ms;  UI frame median {:.2} ms  max {:.2} ms",
        l.samples().len(),
        ms(l.quantile(0.5)),
        ms(l.quantile(0.95)),
        ms(l.quantile(1.0)),
        percentile(&frame_times, 0.5).as_secs_f64() * 1e3,
        frame_times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
