//! Studio responsiveness on a 24-megapixel scan while PatchMatch runs on the worker:
//! UI frame time (median, p99, max), time from Run to the first streamed preview, and time
//! from Cancel to the job stopping.
//!
//! `cargo bench --bench studio_frames` (release profile). The studio runs headlessly through
//! egui_kittest, so frame times cover everything the UI thread does (event draining, texture
//! deltas, layout) except the GPU upload itself.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use kintsugi::engine::EngineConfig;
use kintsugi::imaging::mask_synth::scattered_damage;
use kintsugi::imaging::{BitDepth, ImageF32};
use kintsugi::studio::document::Document;
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
}
