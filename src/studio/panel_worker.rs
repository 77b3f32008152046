//! The channel ends and thread of a studio panel's own worker (the latent explorer, the live GAN
//! training view): commands go in without blocking, events come out without waiting, and
//! dropping it closes both channels and joins the thread.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// A panel worker: commands `C` in, events `E` out.
pub struct PanelWorker<C, E> {
    tx: Option<Sender<C>>,
    rx: Option<Receiver<E>>,
    thread: Option<JoinHandle<()>>,
}

impl<C, E> PanelWorker<C, E> {
    /// Wraps a started thread and its two channel ends.
    pub fn new(tx: Sender<C>, rx: Receiver<E>, thread: JoinHandle<()>) -> Self {
        Self {
            tx: Some(tx),
            rx: Some(rx),
            thread: Some(thread),
        }
    }

    /// Queues a command without blocking; gives it back when the queue is full (the caller
    /// retries next frame) or the thread has ended.
    pub fn send(&self, c: C) -> Result<(), C> {
        match &self.tx {
            Some(tx) => tx.try_send(c).map_err(|e| match e {
                TrySendError::Full(c) | TrySendError::Disconnected(c) => c,
            }),
            None => Err(c),
        }
    }

    /// The events that arrived since the last call (never waits).
    pub fn drain(&self) -> Vec<E> {
        self.rx
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    /// True while the thread runs.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl<C, E> Drop for PanelWorker<C, E> {
    fn drop(&mut self) {
        // Closing both channels makes the thread leave its loop, its wait while paused or a
        // blocked send; it notices between two units of work.
        self.tx = None;
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
