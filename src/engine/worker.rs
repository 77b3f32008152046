//! The worker thread: takes jobs off the queue one at a time, runs them inside its own rayon
//! pool, catches panics, and sends events back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::job::{CancelToken, Event, EventKind, Job, JobContext, JobId, JobKind, JobOutput};
use crate::imaging::ImageF32;
use crate::models::registry::Registry;
use crate::restore::pipeline::{restore_image, RegionReporter};
use crate::restore::RestoreError;

/// Callback run after each event is queued (the studio passes `ctx.request_repaint`).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// Shortest gap between two non-terminal events of the same kind: keeps a fast loop from
/// flooding the channel with reports nobody can display.
const THROTTLE: Duration = Duration::from_millis(15);

/// Sends events for the running job. Progress and previews are best-effort (throttled, and
/// dropped when the channel is full, since only the newest matters); terminal events always
/// arrive.
pub struct EventSink {
    tx: Sender<Event>,
    notify: Option<Notify>,
    last: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl EventSink {
    fn new(tx: Sender<Event>, notify: Option<Notify>) -> Self {
        Self {
            tx,
            notify,
            last: Mutex::new((None, None)),
        }
    }

    fn reset(&self) {
        if let Ok(mut l) = self.last.lock() {
            *l = (None, None);
        }
    }

    /// Whether a preview sent now would pass the throttle (without claiming the slot).
    pub(crate) fn preview_due(&self) -> bool {
        self.last
            .lock()
            .map(|l| l.1.is_none_or(|t| t.elapsed() >= THROTTLE))
            .unwrap_or(true)
    }

    /// True when enough time passed since the last event of this kind (0 progress, 1 preview).
    fn due(&self, which: usize, force: bool) -> bool {
        let Ok(mut l) = self.last.lock() else {
            return true;
        };
        let slot = if which == 0 { &mut l.0 } else { &mut l.1 };
        let now = Instant::now();
        if force || slot.is_none_or(|t| now.duration_since(t) >= THROTTLE) {
            *slot = Some(now);
            true
        } else {
            false
        }
    }

    fn try_emit(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => self.poke(),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Blocks until the event is queued; false when nobody listens any more.
    fn emit(&self, event: Event) -> bool {
        let ok = self.tx.send(event).is_ok();
        self.poke();
        ok
    }

    fn poke(&self) {
        if let Some(n) = &self.notify {
            n();
        }
    }

    pub(crate) fn progress(&self, job: JobId, done: u64, total: u64, message: &str) {
        if self.due(0, done == 0 || done >= total) {
            self.try_emit(Event {
                job,
                kind: EventKind::Progress {
                    done,
                    total,
                    message: message.to_owned(),
                },
            });
        }
    }

    pub(crate) fn preview(&self, job: JobId, x: usize, y: usize, patch: &ImageF32) {
        if self.due(1, false) {
            self.try_emit(Event {
                job,
                kind: EventKind::Preview {
                    x,
                    y,
                    patch: Arc::new(patch.clone()),
                },
            });
        }
    }
}

/// Adapts a job's context to the restoration pipeline's reporter.
struct PipelineReporter<'a>(&'a JobContext<'a>);

impl RegionReporter for PipelineReporter<'_> {
    fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
    fn progress(&self, done: u64, total: u64, message: &str) {
        self.0.progress(done, total, message);
    }
    fn preview(&self, x: usize, y: usize, patch: &ImageF32) {
        self.0.preview(x, y, patch);
    }
    fn wants_preview(&self) -> bool {
        self.0.sink.preview_due()
    }
}

pub(crate) struct Worker {
    pub jobs: Receiver<Job>,
    pub sink: EventSink,
    pub registry: Registry,
    pub pool: rayon::ThreadPool,
    pub live: Arc<Mutex<Vec<(JobId, CancelToken)>>>,
}

impl Worker {
    pub fn new(
        jobs: Receiver<Job>,
        events: Sender<Event>,
        notify: Option<Notify>,
        registry: Registry,
        pool: rayon::ThreadPool,
        live: Arc<Mutex<Vec<(JobId, CancelToken)>>>,
    ) -> Self {
        Self {
            jobs,
            sink: EventSink::new(events, notify),
            registry,
            pool,
            live,
        }
    }

    /// Serves jobs until the job channel closes or nobody listens for events.
    pub fn run(self) {
        for job in self.jobs.iter() {
            let id = job.id;
            let terminal = if job.cancel.is_cancelled() {
                EventKind::Cancelled
            } else {
                self.sink.reset();
                if !self.sink.emit(Event {
                    job: id,
                    kind: EventKind::Started,
                }) {
                    break;
                }
                self.execute(job)
            };
            if let Ok(mut live) = self.live.lock() {
                live.retain(|(j, _)| *j != id);
            }
            if !self.sink.emit(Event {
                job: id,
                kind: terminal,
            }) {
                break;
            }
        }
    }

    fn execute(&self, job: Job) -> EventKind {
        let ctx = JobContext {
            id: job.id,
            cancel: &job.cancel,
            sink: &self.sink,
        };
        let registry = &self.registry;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.pool.install(|| run_kind(job.kind, &ctx, registry))
        }));
        match outcome {
            Ok(Ok(out)) => EventKind::Done(out),
            Ok(Err(RestoreError::Cancelled)) => EventKind::Cancelled,
            Ok(Err(e)) => EventKind::Failed(e.to_string()),
            Err(payload) => EventKind::Failed(format!(
                "internal error (the job panicked: {}); the worker is still running",
                panic_message(payload.as_ref())
            )),
        }
    }
}

fn run_kind(
    kind: JobKind,
    ctx: &JobContext<'_>,
    registry: &Registry,
) -> Result<JobOutput, RestoreError> {
    match kind {
        JobKind::Restore {
            image,
            mask,
            model,
            params,
        } => {
            let restorer = registry.restorer(&model)?;
            let out = restore_image(
                restorer.as_ref(),
                &image,
                &mask,
                &params,
                &PipelineReporter(ctx),
            )?;
            Ok(JobOutput::Image(Arc::new(out)))
        }
        JobKind::Task { run, .. } => run(ctx),
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
