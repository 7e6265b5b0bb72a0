//! `loadtest`: the load generator's command line; everything lives in the library.

/// mimalloc: the services allocate many short-lived buffers per request and per
/// transition (records, events, script arguments), where it costs far less than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = loadtest::cli::Cli::parse();
    loadtest::main_with(cli)
}
