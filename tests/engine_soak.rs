//! Soak test of the worker: thousands of random sequences of submit / cancel / replace /
//! panicking / failing jobs. Every job must end in exactly one terminal event, in order,
//! nothing may deadlock, the worker must stay alive, and memory must not grow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kintsugi::engine::{
    Engine, EngineConfig, EngineError, EventKind, JobHandle, JobKind, JobOutput,
};
use kintsugi::restore::RestoreError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_job(rng: &mut StdRng) -> JobKind {
    let kind = rng.random_range(0..5u32);
    let steps = rng.random_range(0..20u64);
    JobKind::Task {
        name: format!("soak-{kind}"),
        run: Box::new(move |ctx| {
            for i in 0..steps {
                ctx.checkpoint()?;
                ctx.progress(i, steps, "soak");
                if kind == 1 && i == steps / 2 {
                    panic!("injected panic");
                }
                if kind == 2 && i == steps / 2 {
                    return Err(RestoreError::Failed("injected failure".into()));
                }
                if kind == 3 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            if kind == 1 {
                panic!("injected panic at the end");
            }
            Ok(JobOutput::Message("ok".into()))
        }),
    }
}

/// Resident set size in bytes (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[derive(Default)]
struct Seen {
    started: bool,
    terminal: u32,
    after_terminal: u32,
}

fn run_sequences(engine: &Engine, rng: &mut StdRng, sequences: usize) -> usize {
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    let mut submitted: Vec<JobHandle> = Vec::new();
    let mut busy = 0usize;
    for _ in 0..sequences {
        for _ in 0..rng.random_range(1..6) {
            let replace = rng.random_range(0..10u32) < 2;
            let mut job = random_job(rng);
            loop {
                let result = if replace {
                    engine.submit_replacing(job)
                } else {
                    engine.submit(job)
                };
                match result {
                    Ok(h) => {
                        seen.entry(h.id).or_default();
                        submitted.push(h);
                        break;
                    }
                    Err(EngineError::Busy(_)) => {
                        // The queue is full: let the worker make progress, then try again.
                        busy += 1;
                        if let Ok(ev) = engine.events().recv_timeout(Duration::from_millis(200)) {
                            record(&mut seen, ev.job, &ev.kind);
                        }
                        job = random_job(rng);
                    }
                    Err(e) => panic!("submit failed: {e}"),
                }
            }
            match rng.random_range(0..10u32) {
                0 => engine.cancel_all(),
                1..=2 => {
                    if let Some(h) = submitted.last() {
                        engine.cancel(h.id);
                    }
                }
                _ => {}
            }
        }
        // Drain what is there without waiting, as a UI frame would.
        for ev in engine.events().try_iter() {
            record(&mut seen, ev.job, &ev.kind);
        }
    }
    // Wait for every job to end.
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.values().any(|s| s.terminal == 0) {
        assert!(Instant::now() < deadline, "jobs never finished: deadlock?");
        if let Ok(ev) = engine.events().recv_timeout(Duration::from_millis(200)) {
            record(&mut seen, ev.job, &ev.kind);
        }
    }
    for (id, s) in &seen {
        assert_eq!(s.terminal, 1, "job {id} ended {} times", s.terminal);
        assert_eq!(s.after_terminal, 0, "job {id} had events after its end");
    }
    assert_eq!(engine.pending(), 0);
    assert!(busy > 0 || sequences < 50, "the bounded queue never filled");
    seen.len()
}

fn record(seen: &mut HashMap<u64, Seen>, job: u64, kind: &EventKind) {
    let s = seen.entry(job).or_default();
    if s.terminal > 0 {
        s.after_terminal += 1;
    }
    match kind {
        EventKind::Started => s.started = true,
        k if k.is_terminal() => {
            // A job that started must have said so before ending; a job cancelled while
            // queued ends without starting.
            if !s.started {
                assert!(
                    matches!(k, EventKind::Cancelled),
                    "job {job} ended {k:?} without starting"
                );
            }
            s.terminal += 1;
        }
        _ => {}
    }
}

#[test]
fn thousands_of_random_sequences_each_end_exactly_once() {
    // Keep the default panic hook from printing thousands of injected panics.
    std::panic::set_hook(Box::new(|_| {}));
    let engine = Engine::start(EngineConfig::with_threads(2)).expect("engine");
    let mut rng = StdRng::seed_from_u64(2026);
    let warm = run_sequences(&engine, &mut rng, 300);
    let rss_before = rss_bytes();
    let mut jobs = 0;
    for _ in 0..5 {
        jobs += run_sequences(&engine, &mut rng, 400);
    }
    let rss_after = rss_bytes();
    let _ = std::panic::take_hook();
    eprintln!(
        "soak: {} jobs, rss {rss_before:?} -> {rss_after:?}",
        warm + jobs
    );
    assert!(engine.is_alive(), "worker died");
    assert!(warm + jobs > 5_000, "only {} jobs ran", warm + jobs);
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        let growth = b.saturating_sub(a);
        assert!(
            growth < 16 << 20,
            "memory grew by {} MiB over {jobs} jobs",
            growth >> 20
        );
    }
}
