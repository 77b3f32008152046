//! The worker protocol: ordering, cancellation, panics, restore jobs.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kintsugi::engine::{
    Engine, EngineConfig, EngineError, Event, EventKind, JobId, JobKind, JobOutput,
};
use kintsugi::restore::Params;

fn engine() -> Engine {
    Engine::start(EngineConfig::with_threads(1)).expect("engine starts")
}

/// Collects events until `job` has its terminal event (or the timeout passes).
fn collect_until_done(engine: &Engine, job: JobId) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        if let Ok(e) = engine.events().recv_timeout(Duration::from_millis(100)) {
            let end = e.job == job && e.kind.is_terminal();
            out.push(e);
            if end {
                return out;
            }
        }
    }
    panic!("job {job} did not finish; events so far: {out:?}");
}

fn counting_task(steps: u64, counter: Arc<AtomicU64>, sleep_ms: u64) -> JobKind {
    JobKind::Task {
        name: "count".into(),
        run: Box::new(move |ctx| {
            for i in 0..steps {
                ctx.checkpoint()?;
                counter.fetch_add(1, Ordering::SeqCst);
                ctx.progress(i + 1, steps, "counting");
                std::thread::sleep(Duration::from_millis(sleep_ms));
            }
            Ok(JobOutput::Message(format!("{steps} steps")))
        }),
    }
}

#[test]
fn events_arrive_in_order_with_one_terminal_each() {
    let e = engine();
    let ids: Vec<JobId> = (0..3)
        .map(|_| {
            e.submit(counting_task(5, Arc::new(AtomicU64::new(0)), 1))
                .expect("submit")
                .id
        })
        .collect();
    let events = collect_until_done(&e, ids[2]);
    for id in &ids {
        let mine: Vec<&Event> = events.iter().filter(|ev| ev.job == *id).collect();
        assert!(
            matches!(mine.first().map(|e| &e.kind), Some(EventKind::Started)),
            "{mine:?}"
        );
        assert_eq!(mine.iter().filter(|e| e.kind.is_terminal()).count(), 1);
        assert!(matches!(
            mine.last().map(|e| &e.kind),
            Some(EventKind::Done(_))
        ));
        let dones: Vec<u64> = mine
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Progress { done, .. } => Some(done),
                _ => None,
            })
            .collect();
        assert!(
            dones.windows(2).all(|w| w[0] <= w[1]),
            "progress went back: {dones:?}"
        );
    }
    // Jobs run in submission order: each job's terminal event precedes the next one's start.
    let order: Vec<JobId> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Started))
        .map(|e| e.job)
        .collect();
    assert_eq!(order, ids);
}

#[test]
fn cancel_stops_a_running_job_within_a_few_steps() {
    let e = engine();
    let counter = Arc::new(AtomicU64::new(0));
    let h = e
        .submit(counting_task(100_000, counter.clone(), 2))
        .expect("submit");
    // Wait until it is really running.
    while counter.load(Ordering::SeqCst) < 3 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let at_cancel = counter.load(Ordering::SeqCst);
    let t0 = Instant::now();
    e.cancel(h.id);
    let events = collect_until_done(&e, h.id);
    let stopped_after = t0.elapsed();
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::Cancelled)
    ));
    let extra = counter.load(Ordering::SeqCst) - at_cancel;
    assert!(extra <= 2, "job ran {extra} steps after cancel");
    assert!(stopped_after < Duration::from_secs(5));
    assert_eq!(e.pending(), 0);
}

#[test]
fn a_job_cancelled_while_queued_never_starts() {
    let e = engine();
    let blocker = e
        .submit(counting_task(1_000_000, Arc::new(AtomicU64::new(0)), 1))
        .expect("submit");
    let counter = Arc::new(AtomicU64::new(0));
    let queued = e
        .submit(counting_task(10, counter.clone(), 0))
        .expect("submit");
    e.cancel(queued.id);
    e.cancel(blocker.id);
    let events = collect_until_done(&e, queued.id);
    let mine: Vec<&Event> = events.iter().filter(|ev| ev.job == queued.id).collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(matches!(mine[0].kind, EventKind::Cancelled));
    assert_eq!(counter.load(Ordering::SeqCst), 0);
}

#[test]
fn a_panicking_job_fails_and_the_worker_keeps_serving() {
    let e = engine();
    let bad = e
        .submit(JobKind::Task {
            name: "boom".into(),
            run: Box::new(|_| panic!("deliberate test panic")),
        })
        .expect("submit");
    let events = collect_until_done(&e, bad.id);
    match &events.last().map(|e| &e.kind) {
        Some(EventKind::Failed(msg)) => assert!(msg.contains("deliberate test panic"), "{msg}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(e.is_alive());
    // A panic inside the compute pool (rayon) is caught too.
    let bad2 = e
        .submit(JobKind::Task {
            name: "boom-in-pool".into(),
            run: Box::new(|_| {
                rayon::scope(|s| s.spawn(|_| panic!("panic on a pool thread")));
                Ok(JobOutput::Message("unreachable".into()))
            }),
        })
        .expect("submit");
    let events = collect_until_done(&e, bad2.id);
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::Failed(_))
    ));
    let good = e
        .submit(counting_task(3, Arc::new(AtomicU64::new(0)), 0))
        .expect("submit");
    let events = collect_until_done(&e, good.id);
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::Done(_))
    ));
}

#[test]
fn a_full_queue_reports_busy_instead_of_blocking() {
    let mut cfg = EngineConfig::with_threads(1);
    cfg.queue = 2;
    let e = Engine::start(cfg).expect("engine");
    let mut busy = false;
    let mut handles = Vec::new();
    for _ in 0..10 {
        match e.submit(counting_task(1_000_000, Arc::new(AtomicU64::new(0)), 1)) {
            Ok(h) => handles.push(h),
            Err(EngineError::Busy(_)) => {
                busy = true;
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(busy, "queue never filled");
    e.cancel_all();
    // Dropping the engine with cancelled jobs in flight must not hang.
}

#[test]
fn restore_job_changes_only_hole_pixels_and_streams_progress() {
    let e = engine();
    let img = common::gradient(48, 40, 3);
    let mask = common::scratch_and_dust(48, 40);
    for model in ["telea", "biharmonic", "patchmatch"] {
        let h = e
            .submit(JobKind::Restore {
                image: Arc::new(img.clone()),
                mask: Arc::new(mask.clone()),
                model: model.into(),
                params: Params::new(),
            })
            .expect("submit");
        let events = collect_until_done(&e, h.id);
        assert!(events
            .iter()
            .any(|ev| ev.job == h.id && matches!(ev.kind, EventKind::Progress { .. })));
        let Some(EventKind::Done(JobOutput::Image(out))) = events.last().map(|e| e.kind.clone())
        else {
            panic!("{model}: {:?}", events.last());
        };
        for (i, &hole) in mask.data().iter().enumerate() {
            let (a, b) = (&img.data()[i * 3..i * 3 + 3], &out.data()[i * 3..i * 3 + 3]);
            if !hole {
                assert_eq!(a, b, "{model}: known pixel {i} changed");
            } else {
                for k in 0..3 {
                    assert!(
                        (a[k] - b[k]).abs() < 0.05,
                        "{model}: poor fill on a smooth gradient"
                    );
                }
            }
        }
    }
}

#[test]
fn unknown_and_unavailable_models_fail_cleanly() {
    // An empty weights folder: every learned model is unavailable.
    let empty = tempfile::tempdir().expect("tmp");
    let mut config = EngineConfig::with_threads(1);
    config.registry = kintsugi::models::registry::Registry::new(empty.path());
    let e = Engine::start(config).expect("engine starts");
    for (model, needle) in [
        ("no-such-model", "unknown model"),
        ("gan-faces", "unavailable"),
    ] {
        let h = e
            .submit(JobKind::Restore {
                image: Arc::new(common::gradient(8, 8, 3)),
                mask: Arc::new(common::disc_mask(8, 8, 4, 4, 1)),
                model: model.into(),
                params: Params::new(),
            })
            .expect("submit");
        let events = collect_until_done(&e, h.id);
        match events.last().map(|e| &e.kind) {
            Some(EventKind::Failed(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
