//! `kintsugi`: the studio with no subcommand, the CLI otherwise.

use std::process::ExitCode;

use clap::Parser;
use kintsugi::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(command) => kintsugi::cli::run(command),
        None => kintsugi::studio::run(cli.image),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
