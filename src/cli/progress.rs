//! Runs one engine job from the command line with a progress bar on stderr.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{Engine, EventKind, JobKind, JobOutput};

/// A step counter bar on stderr for training runs, `label [=====>   ] pos/len msg (eta ..)`,
/// hidden when `quiet`.
pub fn step_bar(len: u64, label: &str, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    let template = format!("{label} [{{bar:25}}] {{pos}}/{{len}} {{msg}} (eta {{eta}})");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// The outcome of a job run to completion.
pub struct Finished {
    /// What the job produced.
    pub output: JobOutput,
    /// Wall time from submission to the terminal event.
    pub elapsed: Duration,
}

/// Submits `kind`, shows progress (unless `quiet`) and waits for the terminal event.
pub fn run_job(
    engine: &Engine,
    kind: JobKind,
    label: &str,
    quiet: bool,
) -> anyhow::Result<Finished> {
    let start = Instant::now();
    let handle = engine.submit(kind)?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    loop {
        let event = engine
            .events()
            .recv()
            .map_err(|_| anyhow!("the worker stopped unexpectedly"))?;
        if event.job != handle.id {
            continue;
        }
        match event.kind {
            EventKind::Progress {
                done,
                total,
                message,
            } => {
                bar.set_length(total.max(1));
                bar.set_position(done);
                bar.set_message(message);
            }
            EventKind::Started | EventKind::Preview { .. } => {}
            EventKind::Done(output) => {
                bar.finish_and_clear();
                return Ok(Finished {
                    output,
                    elapsed: start.elapsed(),
                });
            }
            EventKind::Failed(msg) => {
                bar.abandon();
                bail!("{msg}");
            }
            EventKind::Cancelled => {
                bar.abandon();
                bail!("cancelled");
            }
        }
    }
}
