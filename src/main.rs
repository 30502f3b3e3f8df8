use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    wikigate::cli::run(wikigate::cli::Cli::parse())
}
