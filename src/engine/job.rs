//! The values that cross the channel between the UI (or CLI) and the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::imaging::{ImageF32, Mask};
use crate::restore::{Params, RestoreError};

/// Identifies one submitted job; increasing in submission order.
pub type JobId = u64;

/// A shared flag that asks a job to stop. Cloning shares the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop at its next checkpoint.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Generic background work: receives the job's context and returns its output.
pub type TaskFn = Box<dyn FnOnce(&JobContext<'_>) -> Result<JobOutput, RestoreError> + Send>;

/// What a job asks the worker to do.
pub enum JobKind {
    /// Fill the holes of `mask` in `image` with the registry model `model`.
    Restore {
        /// The image to restore; never modified.
        image: Arc<ImageF32>,
        /// Hole pixels.
        mask: Arc<Mask>,
        /// Registry id of the restorer.
        model: String,
        /// Restorer parameters.
        params: Params,
    },
    /// Any other long computation (sampling, training steps, test jobs).
    Task {
        /// Short name for progress messages.
        name: String,
        /// The work itself.
        run: TaskFn,
    },
}

impl std::fmt::Debug for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobKind::Restore { model, image, .. } => {
                write!(f, "Restore({model}, {}x{})", image.width(), image.height())
            }
            JobKind::Task { name, .. } => write!(f, "Task({name})"),
        }
    }
}

/// A job as queued for the worker.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What to do.
    pub kind: JobKind,
    /// Set to stop it.
    pub cancel: CancelToken,
}

/// The result of a finished job.
#[derive(Clone, Debug)]
pub enum JobOutput {
    /// A full restored image.
    Image(Arc<ImageF32>),
    /// A message (for tasks with no image result).
    Message(String),
}

/// What the worker says about a job.
#[derive(Clone, Debug)]
pub enum EventKind {
    /// The worker took the job off the queue.
    Started,
    /// `done` of `total` units of work are complete.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
        /// What is being done.
        message: String,
    },
    /// New pixels for the rectangle with top-left corner `(x, y)` (a dirty region).
    Preview {
        /// Left column in the job's image.
        x: usize,
        /// Top row in the job's image.
        y: usize,
        /// The pixels.
        patch: Arc<ImageF32>,
    },
    /// Terminal: finished with a result.
    Done(JobOutput),
    /// Terminal: failed; the message is meant for the user.
    Failed(String),
    /// Terminal: stopped by its cancel token.
    Cancelled,
}

impl EventKind {
    /// True for the events that end a job (exactly one per job).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Done(_) | EventKind::Failed(_) | EventKind::Cancelled
        )
    }
}

/// One event, tagged with its job.
#[derive(Clone, Debug)]
pub struct Event {
    /// The job this is about.
    pub job: JobId,
    /// What happened.
    pub kind: EventKind,
}

/// What a running task sees: its cancel token and a way to report.
pub struct JobContext<'a> {
    pub(crate) id: JobId,
    pub(crate) cancel: &'a CancelToken,
    pub(crate) sink: &'a super::worker::EventSink,
}

impl JobContext<'_> {
    /// This job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// True once the job should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` once the job should stop: `ctx.checkpoint()?` between steps.
    pub fn checkpoint(&self) -> Result<(), RestoreError> {
        if self.is_cancelled() {
            Err(RestoreError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reports progress.
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        self.sink.progress(self.id, done, total, message);
    }

    /// Streams new pixels for the rectangle at `(x, y)`.
    pub fn preview(&self, x: usize, y: usize, patch: &ImageF32) {
        self.sink.preview(self.id, x, y, patch);
    }
}
