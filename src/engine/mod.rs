//! The background engine: one worker thread that runs jobs and streams events back.
//!
//! The studio and the CLI both submit [`Job`]s here, so every long computation runs the same
//! way: off the UI thread, cancellable between steps, with panics reported as failures while
//! the worker keeps serving. Channels are bounded in both directions (see `DESIGN.md`).

pub mod device;
pub mod job;
mod worker;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

pub use job::{CancelToken, Event, EventKind, Job, JobContext, JobId, JobKind, JobOutput, TaskFn};
pub use worker::{panic_message, Notify};

use crate::models::registry::Registry;

/// How to start an [`Engine`].
#[derive(Clone)]
pub struct EngineConfig {
    /// Threads in the worker's compute pool. The studio leaves one core to the UI.
    pub threads: usize,
    /// Jobs that may wait in the queue before `submit` reports the engine busy.
    pub queue: usize,
    /// Events that may wait for the consumer; progress and previews beyond it are dropped.
    pub event_buffer: usize,
    /// Called after every event (for example `egui::Context::request_repaint`).
    pub notify: Option<Notify>,
    /// Where learned models' weights live.
    pub registry: Registry,
}

impl EngineConfig {
    /// All cores for compute: the CLI's choice.
    pub fn all_cores() -> Self {
        Self::with_threads(available_cores())
    }

    /// One core fewer than the machine has (at least one): the studio's choice.
    pub fn leave_one_core() -> Self {
        Self::with_threads(available_cores().saturating_sub(1).max(1))
    }

    /// A pool of `threads` threads with default queue sizes.
    pub fn with_threads(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            queue: 16,
            event_buffer: 256,
            notify: None,
            registry: Registry::default(),
        }
    }
}

/// Number of cores the OS lets us use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Why the engine could not take a job.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The worker thread or its pool could not be started.
    #[error("cannot start the worker: {0}")]
    Start(String),
    /// Too many jobs are waiting.
    #[error("the worker is busy ({0} jobs waiting); try again when one finishes")]
    Busy(usize),
    /// The worker is gone.
    #[error("the worker has stopped")]
    Stopped,
}

/// A handle to a submitted job.
#[derive(Clone, Debug)]
pub struct JobHandle {
    /// The job's id, as found in its events.
    pub id: JobId,
    /// Its cancel token.
    pub cancel: CancelToken,
}

/// The worker thread and its channels.
pub struct Engine {
    jobs: Option<Sender<Job>>,
    events: Receiver<Event>,
    live: Arc<Mutex<Vec<(JobId, CancelToken)>>>,
    next_id: Mutex<JobId>,
    queue: usize,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the worker thread.
    pub fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let (job_tx, job_rx) = bounded::<Job>(config.queue.max(1));
        let (ev_tx, ev_rx) = bounded::<Event>(config.event_buffer.max(4));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .thread_name(|i| format!("kintsugi-compute-{i}"))
            .build()
            .map_err(|e| EngineError::Start(e.to_string()))?;
        let live = Arc::new(Mutex::new(Vec::new()));
        let worker = worker::Worker::new(
            job_rx,
            ev_tx,
            config.notify.clone(),
            config.registry.clone(),
            pool,
            live.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("kintsugi-worker".into())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Start(e.to_string()))?;
        Ok(Self {
            jobs: Some(job_tx),
            events: ev_rx,
            live,
            next_id: Mutex::new(1),
            queue: config.queue.max(1),
            thread: Some(thread),
        })
    }

    /// Queues a job; never blocks.
    pub fn submit(&self, kind: JobKind) -> Result<JobHandle, EngineError> {
        let jobs = self.jobs.as_ref().ok_or(EngineError::Stopped)?;
        let id = {
            let mut n = self.next_id.lock().map_err(|_| EngineError::Stopped)?;
            let id = *n;
            *n += 1;
            id
        };
        let cancel = CancelToken::new();
        if let Ok(mut live) = self.live.lock() {
            live.push((id, cancel.clone()));
        }
        let job = Job {
            id,
            kind,
            cancel: cancel.clone(),
        };
        match jobs.try_send(job) {
            Ok(()) => Ok(JobHandle { id, cancel }),
            Err(e) => {
                if let Ok(mut live) = self.live.lock() {
                    live.retain(|(j, _)| *j != id);
                }
                Err(match e {
                    TrySendError::Full(_) => EngineError::Busy(self.queue),
                    TrySendError::Disconnected(_) => EngineError::Stopped,
                })
            }
        }
    }

    /// Cancels every queued or running job, then queues `kind`: what a new Run in the studio
    /// does.
    pub fn submit_replacing(&self, kind: JobKind) -> Result<JobHandle, EngineError> {
        self.cancel_all();
        self.submit(kind)
    }

    /// Asks job `id` to stop (no effect if it already ended).
    pub fn cancel(&self, id: JobId) {
        if let Ok(live) = self.live.lock() {
            live.iter()
                .filter(|(j, _)| *j == id)
                .for_each(|(_, t)| t.cancel());
        }
    }

    /// Asks every queued or running job to stop.
    pub fn cancel_all(&self) {
        if let Ok(live) = self.live.lock() {
            live.iter().for_each(|(_, t)| t.cancel());
        }
    }

    /// The event stream; drain it with `try_iter` each frame, or `recv` in a CLI loop.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Number of jobs queued or running.
    pub fn pending(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// True while the worker thread is alive.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel_all();
        self.jobs = None; // closes the queue: the worker leaves its loop after the current job
        if let Some(t) = self.thread.take() {
            // Keep draining so a worker blocked on a full event channel can finish.
            while !t.is_finished() {
                while self.events.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}
