//! `kintsugi`: the studio with no subcommand, the CLI otherwise.

use std::process::ExitCode;

use clap::Parser;
use kintsugi::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(command) => kintsugi::cli::run(command),
        #[cfg(feature = "studio")]
        None => kintsugi::studio::run(cli.image),
        #[cfg(not(feature = "studio"))]
        None => Err(anyhow::anyhow!(
            "this build has no studio (built without the `studio` feature); give a subcommand, \
             see --help"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain, each cause once.
            eprintln!("error: {}", kintsugi::cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
