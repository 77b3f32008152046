//! The command-line face of Kintsugi: one file per subcommand, all driving the engine.

mod bench;
mod bench_conv;
mod denoise;
mod detect;
mod detect_data;
mod eval;
mod eval_detect;
mod inpaint;
mod models;
mod progress;
mod sample;
mod train;
mod train_cgan;
mod train_detect;
mod train_gan;
mod train_rl;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Kintsugi: restore scratched, dusty and torn photo scans.
///
/// With no subcommand, opens the studio (optionally on IMAGE).
#[derive(Debug, Parser)]
#[command(
    name = "kintsugi",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Image to open in the studio.
    pub image: Option<PathBuf>,
    /// What to do; none opens the studio.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Restore the holes of MASK in INPUT and write OUTPUT.
    Inpaint(inpaint::Args),
    /// List the models and whether each can run here.
    Models(models::Args),
    /// Score a model on image/mask pairs: hole-PSNR, hole-L1, PSNR, SSIM and time.
    Eval(eval::Args),
    /// Time every restorer on synthetic scans of growing size at fixed damage.
    Bench(bench::Args),
    /// Time our convolutions against candle's built-in conv2d
    BenchConv(bench_conv::Args),
    /// Remove film grain and scanner noise with the PixelRL agent (`--eval DIR` to score it).
    Denoise(denoise::Args),
    /// Train a model family (`train vae ...`).
    Train(train::Args),
    /// Decode N random latent codes of a generative model into a PNG grid.
    Sample(sample::SampleArgs),
    /// Decode a strip of latent codes between two seeds.
    Interpolate(sample::InterpolateArgs),
    /// Propose a damage mask (dust, scratches, hairs) for INPUT and write it to MASK.
    Detect(detect::Args),
    /// Detect the damage of INPUT and inpaint it in one go.
    Restore(detect::RestoreArgs),
    /// Score the damage detectors: synthetic held-out damage, real film-damage triplets, clean photos.
    EvalDetect(eval_detect::Args),
}

/// Runs a subcommand; errors are reported once by `main`.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inpaint(a) => inpaint::run(a),
        Command::Models(a) => models::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchConv(a) => bench_conv::run(a),
        Command::Denoise(a) => denoise::run(a),
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run_sample(a),
        Command::Interpolate(a) => sample::run_interpolate(a),
        Command::Detect(a) => detect::run(a),
        Command::Restore(a) => detect::run_restore(a),
        Command::EvalDetect(a) => eval_detect::run(a),
    }
}

/// The one line `main` prints for an error: its context chain joined by ": ", leaving out a
/// cause whose text the line already holds (our typed errors name their source in their own
/// message, so a plain `{:#}` would repeat it).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Parses `--param name=value`.
fn parse_param(s: &str) -> Result<(String, f64), String> {
    crate::restore::Params::parse_assignment(s)
}

/// Builds [`crate::restore::Params`] from command-line assignments.
fn params_from(list: &[(String, f64)]) -> crate::restore::Params {
    let mut p = crate::restore::Params::new();
    for (k, v) in list {
        p.set(k, *v);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn the_error_line_joins_the_chain_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder");
        let typed = crate::train::TrainError::Io {
            path: "/photos".into(),
            source: io,
        };
        let e = anyhow::Error::new(typed).context("reading the training photos");
        assert_eq!(
            error_line(&e),
            "reading the training photos: /photos: no such folder"
        );
        let plain = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_line(&plain), "outer: middle: inner");
    }
}
