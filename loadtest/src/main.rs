//! `loadtest`: the load generator's command line; everything lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = loadtest::cli::Cli::parse();
    loadtest::main_with(cli)
}
