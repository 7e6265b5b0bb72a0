//! The command line: one subcommand per scenario, the options every scenario shares
//! ([`Common`]), the `report` renderer, and the hidden roles this binary plays when it
//! re-executes itself as a child process (an evaluator, an echo responder, a ticker).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// `loadtest`: load scenarios for the rollout scheduler, each beside its baseline.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "load scenarios for the rollout scheduler, each measured beside a bare nats or redis baseline in the same run",
    long_about = "Load scenarios for the rollout scheduler. Each scenario starts its own private \
nats-server and redis-server (from deploy/tools/install.sh) and runs the services in process, \
or, with --nats-url/--redis-url, generates load against a running cluster on this machine \
or a private network (the compose cluster's, from its loadtest container). \
Every scenario measures its baseline in the same run, prints a summary with ratios and \
SPEC §10 targets, and writes JSON with --json-out."
)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Evaluations through NATS (closed loop with N in flight, open loop at a rate) to 1 and
    /// 2 evaluator replicas beside a bare echo responder; evaluator memory with 10 000 flags
    Eval(EvalArgs),
    /// Create/start storms through the planner beside a bare Redis script call and a bare
    /// NATS request-reply echo at the same concurrency
    Commands(CommandsArgs),
    /// Rollouts with spread due times: firing lag and transitions per second beside bare
    /// Redis script calls
    Ticker(TickerArgs),
    /// Three ticker processes; the leader is killed with SIGKILL under load: time to the next
    /// transition, double advances
    Failover(FailoverArgs),
    /// Ticker throughput with N = 1, 2, 3 replicas sharing the shards (processes), each
    /// draining a burst spread over many namespaces, beside bare Redis script calls
    Scale(ScaleArgs),
    /// Commit → every evaluator replica serves it, beside a bare NATS publish → subscriber
    Propagation(PropagationArgs),
    /// A simulated fleet of agents for demos: register, heartbeat, poll desired, apply and
    /// report
    Agents(AgentsArgs),
    /// OFREP change streams (SSE) held by one evaluator: memory per connection, evaluation
    /// throughput with them open, commit → message on every stream
    Sse(SseArgs),
    /// OFREP over HTTP (single flag and bulk, --connections keep-alive connections and
    /// sequential) from one evaluator, beside a bare axum responder returning its verified
    /// answers as fixed bodies of the same size
    Ofrep(OfrepArgs),
    /// OFREP over HTTP from one evaluator (single flag, bulk) beside a real Unleash Edge
    /// process (offline mode, the same flags as toggles) answering its frontend API; needs
    /// deploy/tools/install-unleash-edge.sh
    Edge(EdgeArgs),
    /// Renders JSON results of several scenarios as one markdown table
    Report(ReportArgs),
    /// (internal) an evaluator configured by `ROLLOUT_*` variables
    #[command(hide = true)]
    ServeEvaluator,
    /// (internal) a bare echo responder
    #[command(hide = true)]
    ServeEcho {
        /// NATS server.
        #[arg(long)]
        nats: String,
        /// Subject to answer on (queue group `echo`).
        #[arg(long)]
        subject: String,
    },
    /// (internal) the ofrep scenario's bare responder: fixed answers read from a JSON file
    #[command(hide = true)]
    ServeOfrepBare {
        /// The answers, as the ofrep scenario writes them.
        #[arg(long)]
        bodies: PathBuf,
    },
    /// (internal) a ticker configured by `ROLLOUT_*` variables, when no `ticker` binary is
    /// at hand
    #[command(hide = true)]
    ServeTicker,
}

/// Options of every load scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// NATS of a running cluster on this machine or a private network (e.g.
    /// nats://127.0.0.1:14222 for deploy/local/run.sh); without it, private servers and
    /// services are started. Credentials: ROLLOUT_NATS__USER, __PASSWORD, __INBOX_PREFIX
    #[arg(long, value_name = "URL", env = "ROLLOUT_NATS__URL")]
    pub nats_url: Option<String>,
    /// Redis of that cluster (e.g. redis://127.0.0.1:16379); scenarios that seed state or
    /// time Redis scripts need it. Credentials: ROLLOUT_REDIS__USER, __PASSWORD
    #[arg(long, value_name = "URL", env = "ROLLOUT_REDIS__URL")]
    pub redis_url: Option<String>,
    /// Subject prefix of that cluster
    #[arg(long, default_value = "rollout")]
    pub subject_prefix: String,
    /// Namespace the scenario works in (default: the scenario's own)
    #[arg(long)]
    pub namespace: Option<String>,
    /// Writes the results as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

/// `loadtest eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
    /// Measured time of each run
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each run
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Requests in flight in the closed loop
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub in_flight: u32,
    /// Open-loop rate in requests per second (default: half the evaluator's closed-loop rate)
    #[arg(long)]
    pub rate: Option<f64>,
    /// Client connections the load is spread over
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
    /// Flags loaded for the memory measurement
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub flags: u32,
    /// Skips the memory measurement
    #[arg(long)]
    pub skip_memory: bool,
}

/// `loadtest commands`.
#[derive(Debug, Clone, Args)]
pub struct CommandsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Flags to create, each with a rollout created (waiting) and then started: three
    /// commands per flag
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
    /// Commands in flight, for the storm and both baselines
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Longest the storm may run; it stops early when the count is reached
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Length of each baseline run
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub baseline_duration: Duration,
}

/// `loadtest ticker`.
#[derive(Debug, Clone, Args)]
pub struct TickerArgs {
    #[command(flatten)]
    pub common: Common,
    /// Running rollouts whose first step comes due during the spread
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
    pub rollouts: u32,
    /// Time over which their due times are spread evenly (100 000 over 16 s = 6 250 due per
    /// second)
    #[arg(long, default_value = "16s", value_parser = parse_duration)]
    pub spread: Duration,
    /// Further rollouts all due at one instant, to measure the drain rate (0 skips it)
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub burst: u32,
    /// Length of the bare Redis script baseline
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub script_duration: Duration,
    /// The in-process ticker's `max_in_flight` (rollouts worked on at once, in batches of
    /// its `commit_batch`), also the baseline's concurrency (a running cluster's own
    /// setting applies to it)
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,
    /// The in-process ticker's `commit_batch` (due rollouts fired together)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub commit_batch: u32,
    /// The in-process ticker's `batch_size` (due rollouts read per namespace per round)
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub round_size: u32,
}

/// `loadtest failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub common: Common,
    /// Times the leader is killed
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub kills: u32,
    /// Time between recovering from one kill and the next kill
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Running rollouts whose steps come due continuously
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rollouts: u32,
    /// Length of each step: the rollouts together have rollouts/step transitions due per
    /// second
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub step: Duration,
    /// Lease time to live of the tickers (the baseline the failover is compared with)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// The `ticker` binary (default: `ticker` beside this executable; without one, this
    /// binary re-executed runs the ticker library)
    #[arg(long, value_name = "PATH")]
    pub ticker_bin: Option<PathBuf>,
    /// Keeps the tickers' logs in this directory (default: a temporary one, removed)
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

/// `loadtest scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Largest number of ticker replicas: every N from 1 to it is measured
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub replicas: u32,
    /// Rollouts all due at one instant, for each N
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rollouts: u32,
    /// Namespaces the rollouts are spread over (and so the shards they hash to)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub namespaces: u32,
    /// Each ticker's `max_in_flight`, also the bare script baseline's concurrency
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,
    /// Each ticker's `commit_batch`
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub commit_batch: u32,
    /// Length of the bare Redis script baseline
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub script_duration: Duration,
    /// The `ticker` binary (default: `ticker` beside this executable; without one, this
    /// binary re-executed runs the ticker library)
    #[arg(long, value_name = "PATH")]
    pub ticker_bin: Option<PathBuf>,
    /// Keeps the tickers' logs in this directory (default: a temporary one, removed)
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Runs each ticker on a host of its own (a network namespace on a bridge, reaching
    /// NATS and Redis over it, as on separate machines); needs root and iproute2
    #[arg(long)]
    pub hosts: bool,
}

/// `loadtest propagation`.
#[derive(Debug, Clone, Args)]
pub struct PropagationArgs {
    #[command(flatten)]
    pub common: Common,
    /// Evaluator replicas started in process (private servers only)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub replicas: u32,
    /// Committed changes measured
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub changes: u32,
    /// Pause between changes
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub pause: Duration,
    /// How often each replica is asked while a change is awaited
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub poll: Duration,
    /// HTTP address of every evaluator replica of a running cluster (OFREP), e.g.
    /// 127.0.0.1:18081,127.0.0.1:18082; needed with --nats-url
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    pub evaluator_http: Vec<String>,
}

/// `loadtest sse`.
#[derive(Debug, Clone, Args)]
pub struct SseArgs {
    #[command(flatten)]
    pub common: Common,
    /// Idle change streams held open
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub clients: u32,
    /// Changes whose fan-out to every stream is timed
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub changes: u32,
    /// Pause between changes
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub pause: Duration,
    /// OFREP requests in flight in each throughput loop
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub in_flight: u32,
    /// Length of each throughput loop
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// The OFREP load `loadtest ofrep` and `loadtest edge` share: the flags seeded and the
/// closed loops run against each side.
#[derive(Debug, Clone, Copy, Args)]
pub struct OfrepLoad {
    /// Flags seeded (boolean, a targeting rule, a running 50 % rollout each): the bulk
    /// answer holds them all (the SPEC target is stated for 5)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub flags: u32,
    /// Closed loops, each on its own HTTP/1.1 keep-alive connection
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// Measured time of each run
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each run
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Slices each side's warm-up and measured time is cut into, the two sides
    /// alternating (1: one run each)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
}

/// `loadtest ofrep`.
#[derive(Debug, Clone, Args)]
pub struct OfrepArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub load: OfrepLoad,
    /// Runs the bare responder in this process, beside the load loops, instead of in a
    /// process of its own like the evaluator
    #[arg(long)]
    pub bare_in_process: bool,
}

/// `loadtest edge`.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub common: Common,
    /// The same flags, as toggles, are given to Unleash Edge
    #[command(flatten)]
    pub load: OfrepLoad,
    /// The `unleash-edge` binary (default: the project's .tools/bin/unleash-edge, where
    /// deploy/tools/install-unleash-edge.sh puts it)
    #[arg(long, value_name = "PATH", env = "UNLEASH_EDGE_BIN")]
    pub edge_bin: Option<PathBuf>,
}

/// `loadtest agents`.
#[derive(Debug, Clone, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Agents simulated
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// A label set and its weight, `key=value,key=value:weight`; repeat for several; agents
    /// are spread over the sets by weight (default: canary, prod-eu, prod-us, dev)
    #[arg(long = "labels", value_name = "LABELS:WEIGHT")]
    pub labels: Vec<String>,
    /// The flag whose desired variation the agents follow
    #[arg(long, default_value = "demo-collector-config")]
    pub flag: String,
    /// How often each agent asks for its desired variation
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll: Duration,
    /// How often each agent sends a heartbeat
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Longest random delay between seeing a new desired variation and reporting it
    #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
    pub apply_delay: Duration,
    /// Probability that applying fails (reported as `failed`), 0 to 1
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// How long the fleet runs (Ctrl-C stops it earlier)
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Agent ids are `<prefix>-<n>`
    #[arg(long, default_value = "agent")]
    pub id_prefix: String,
}

/// `loadtest report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// JSON files written by the scenarios (`--json-out`)
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Markdown file to write
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Markdown describing the machine, inserted under the table
    #[arg(long, value_name = "FILE")]
    pub machine: Option<PathBuf>,
    /// Scenarios expected: those without a JSON file are listed as not run
    #[arg(long, value_delimiter = ',')]
    pub expect: Vec<String>,
    /// Also replaces the part of this markdown file between `<!-- results:begin -->` and
    /// `<!-- results:end -->` with the table
    #[arg(long, value_name = "FILE")]
    pub readme: Option<PathBuf>,
}

/// Parses `500ms`, `5s`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    rollout_runtime::config::duration::parse(text)
}
