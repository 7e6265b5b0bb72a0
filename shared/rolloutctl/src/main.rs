//! `rolloutctl`, the operator CLI of the rollout scheduler: every planner command and query,
//! rollout specs from YAML or JSON files, step tables, a live `watch` and evaluation, over
//! the `rollout-sdk` clients. `rolloutctl --help` lists the commands and exit codes.

mod args;
mod failure;
mod render;
mod run;
mod specfile;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: internal: cannot start the async runtime: {error}");
            return ExitCode::from(failure::EXIT_INTERNAL);
        }
    };
    match runtime.block_on(run::run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprint!("{}", failure.render(&cli.nats_url, &cli.namespace));
            ExitCode::from(failure.exit_code())
        }
    }
}
