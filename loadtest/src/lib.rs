//! The load generator of the rollout scheduler (SPEC §10): scenarios that put one part of
//! the system under load and measure it beside a bare baseline run in the same process, on
//! the same machine, in the same run, so the ratios — not the absolute figures, which
//! depend on the machine — are the result.
//!
//! | scenario | load | baseline |
//! |---|---|---|
//! | [`scenarios::eval`] | evaluations over NATS, closed and open loop, 1 and 2 replicas; memory with 10 000 flags | bare async-nats echo responder |
//! | [`scenarios::commands`] | flag and rollout create/start storms through the planner | one-`HSET` Redis script; NATS echo |
//! | [`scenarios::ticker`] | 100 000 rollouts with spread due times | bare Redis script calls |
//! | [`scenarios::failover`] | three ticker processes, the leader killed with SIGKILL | the lease time to live |
//! | [`scenarios::propagation`] | commit → every evaluator replica serves it | bare NATS publish → subscriber |
//! | [`scenarios::sse`] | OFREP change streams held by one evaluator: memory, throughput, fan-out | the loop without streams; bare NATS publish → subscriber |
//! | [`scenarios::ofrep`] | OFREP over HTTP, single flag and bulk, 64 connections and sequential, answers verified first | a bare axum responder returning the same-sized answers as fixed bodies |
//! | [`scenarios::edge`] | OFREP over HTTP, single flag and bulk, 64 connections, answers verified first | a real Unleash Edge process (offline mode) answering its frontend API for the same flags as toggles |
//! | [`scenarios::agents`] | a simulated fleet for demos (no measurement) | — |
//!
//! Code map: [`cli`] (options), [`servers`] (private servers or a running cluster, and the
//! services run in process), [`procs`] (child processes), [`seed`] (bulk state written as
//! the planner writes it), [`load`] (closed and paced loops), [`latency`] (HDR
//! histograms), [`watch`] (transitions as change events, with their arrival time),
//! [`report`] (rows, summary, JSON, markdown), [`progress`].
//!
//! **Architecture Invariant:** the load generator only targets loopback addresses, and every
//! loop it runs is bounded both in count and in time.

pub mod cli;
pub mod latency;
pub mod load;
pub mod procs;
pub mod progress;
pub mod report;
pub mod scenarios;
pub mod seed;
pub mod servers;
pub mod watch;

use std::process::ExitCode;

use anyhow::Context;
use rollout_runtime::config::{LogSettings, OtlpSettings};
use rollout_wire::subjects::Namespace;

use crate::cli::{Cli, Common, ReportArgs, Scenario};
use crate::report::Report;

/// Exit code of a usage or configuration error.
const EXIT_USAGE: u8 = 64;

/// Runs `cli` on a fresh runtime and turns the outcome into an exit code.
pub fn main_with(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadtest: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<UsageError>() => {
            eprintln!("loadtest: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => {
            eprintln!("loadtest: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A bad combination of options (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow` error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.scenario {
        Scenario::ServeEvaluator => return procs::serve_evaluator().await,
        Scenario::ServeTicker => return procs::serve_ticker().await,
        Scenario::ServeEcho { nats, subject } => return procs::serve_echo(&nats, &subject).await,
        Scenario::ServeOfrepBare { bodies } => return scenarios::ofrep::serve_bare(&bodies).await,
        Scenario::Report(args) => return render_report(&args),
        _ => {}
    }
    init_logs();
    let (report, json_out) = match cli.scenario {
        Scenario::Eval(args) => {
            let out = args.common.json_out.clone();
            (scenarios::eval::run(&args).await?, out)
        }
        Scenario::Commands(args) => {
            let out = args.common.json_out.clone();
            (scenarios::commands::run(&args).await?, out)
        }
        Scenario::Ticker(args) => {
            let out = args.common.json_out.clone();
            (scenarios::ticker::run(&args).await?, out)
        }
        Scenario::Failover(args) => {
            let out = args.common.json_out.clone();
            (scenarios::failover::run(&args).await?, out)
        }
        Scenario::Scale(args) => {
            let out = args.common.json_out.clone();
            (scenarios::scale::run(&args).await?, out)
        }
        Scenario::Propagation(args) => {
            let out = args.common.json_out.clone();
            (scenarios::propagation::run(&args).await?, out)
        }
        Scenario::Agents(args) => {
            let out = args.common.json_out.clone();
            (scenarios::agents::run(&args).await?, out)
        }
        Scenario::Sse(args) => {
            let out = args.common.json_out.clone();
            (scenarios::sse::run(&args).await?, out)
        }
        Scenario::Ofrep(args) => {
            let out = args.common.json_out.clone();
            (scenarios::ofrep::run(&args).await?, out)
        }
        Scenario::Edge(args) => {
            let out = args.common.json_out.clone();
            (scenarios::edge::run(&args).await?, out)
        }
        Scenario::Report(_)
        | Scenario::ServeEvaluator
        | Scenario::ServeTicker
        | Scenario::ServeOfrepBare { .. }
        | Scenario::ServeEcho { .. } => return Ok(()),
    };
    finish(&report, json_out.as_deref())
}

/// Prints the summary and writes the JSON.
fn finish(report: &Report, json_out: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!("{}", report::summary(report));
    if let Some(path) = json_out {
        report::write_json(report, path)?;
        progress::phase(format!("results written to {}", path.display()));
    }
    Ok(())
}

/// Warnings of the in-process services go to stdout (`RUST_LOG` overrides the level).
fn init_logs() {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let log = LogSettings {
        level,
        ..LogSettings::default()
    };
    if let Err(error) =
        rollout_runtime::telemetry::init_telemetry("loadtest", &log, &OtlpSettings::default())
    {
        eprintln!("loadtest: logs off: {error}");
    }
}

/// The namespace `common` names, or `default`.
pub fn namespace(common: &Common, default: &str) -> anyhow::Result<Namespace> {
    let name = common.namespace.as_deref().unwrap_or(default);
    Namespace::new(name).map_err(|error| usage(format!("--namespace {name}: {error}")))
}

/// A short random token that keeps names of one run apart from earlier runs' on a running
/// cluster.
pub fn run_token() -> String {
    format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff)
}

/// `loadtest report`: one markdown file over several scenarios' JSON.
fn render_report(args: &ReportArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for path in &args.inputs {
        if path.exists() {
            reports.push(report::read_json(path)?);
        } else {
            eprintln!("loadtest: {} is missing; listed as not run", path.display());
        }
    }
    let machine = match &args.machine {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => String::new(),
    };
    let table = report::markdown_table(&reports, &args.expect);
    let notes = report::markdown_notes(&reports);
    let document = format!(
        "# Load test results\n\n\
         Generated by `deploy/local/bench.sh` (`loadtest report`); do not edit by hand. Every \
         baseline was measured in the same run, on the same machine, as the figure beside it; \
         the ratio is value ÷ baseline.\n\n\
         {table}\n## Machine\n\n{machine}\n## Runs\n\n{notes}"
    );
    std::fs::write(&args.out, document)
        .with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(readme) = &args.readme {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        let insert = format!("{table}\n{machine}");
        let replaced = report::replace_between(
            &text,
            "<!-- results:begin -->",
            "<!-- results:end -->",
            &insert,
        )
        .with_context(|| format!("{} has no results markers", readme.display()))?;
        std::fs::write(readme, replaced)
            .with_context(|| format!("writing {}", readme.display()))?;
    }
    progress::phase(format!("wrote {}", args.out.display()));
    Ok(())
}
