//! `loadtest eval` (SPEC §10: evaluation through NATS ≥ 0.8× a bare echo responder's
//! rate, p99 at half the maximum rate ≤ 1.3× the echo's p99 at that rate; ≤ 2 KiB per
//! flag with 10 000 flags).
//!
//! 1. **Closed loop.** `--in-flight` requests in flight over `--connections` client
//!    connections, `--warmup` then `--duration` measured, against a bare async-nats echo
//!    responder (one queue subscription publishing every body back; one and two processes)
//!    and against evaluator replicas (one and two processes; with `--nats-url`, the
//!    cluster's own replicas), all sent the same 4 096 rotating MessagePack requests: one
//!    flag with ten rules of mixed operators that the entity does not match and an active
//!    25 % rollout on the default serve (the worst case of the core benchmark). Every
//!    evaluator reply is checked to be `ok`.
//! 2. **Open loop.** The same requests at `--rate` (default: half the one-replica
//!    evaluator's closed-loop rate), each timed from when it was due, against one
//!    evaluator and one echo responder.
//! 3. **Memory** (private servers only). RSS of an evaluator process on an empty Redis and
//!    of one that loaded `--flags` flags (two variations and one rule each, every tenth
//!    with an active rollout), one second after each became ready.
//!
//! Evaluators and responders are child processes (this binary re-executed), so each has
//! its own runtime and connection; the load generator, `nats-server` and the responders
//! share the machine's cores, which is why the ratios are the result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollout_sdk::CommandClient;
use rollout_wire::codec::{self, Encoding};
use rollout_wire::envelope::decode_reply;
use rollout_wire::subjects::{Namespace, Subjects};
use serde_json::json;

use crate::cli::EvalArgs;
use crate::load::{any_reply, closed_loop, paced, Measurement, Workload};
use crate::procs::{self, Child};
use crate::progress::phase;
use crate::report::{Recorder, Report, Row, Target};
use crate::seed::{self, Seeder};
use crate::servers::{connect_nats, connect_redis, Servers};

/// The flag evaluated in private runs.
const FLAG: &str = "checkout";

/// Runs the scenario.
pub async fn run(args: &EvalArgs) -> anyhow::Result<Report> {
    let servers = Servers::from_common(&args.common).await?;
    let namespace = crate::namespace(&args.common, "bench")?;
    let subjects = Subjects::new(args.common.subject_prefix.as_str())
        .map_err(|error| crate::usage(format!("--subject-prefix: {error}")))?;
    let mut recorder = Recorder::new(
        "eval",
        servers.mode(),
        json!({
            "duration_secs": args.duration.as_secs_f64(),
            "warmup_secs": args.warmup.as_secs_f64(),
            "in_flight": args.in_flight,
            "connections": args.connections,
            "rate": args.rate,
            "flags": args.flags,
            "namespace": namespace.as_str(),
        }),
    );
    let token = crate::run_token();
    let flag_key = prepare_flag(&servers, &namespace, &token).await?;
    let nats_url = servers.nats_url();
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(connect_nats(&nats_url).await?);
    }
    let eval_workload = Workload {
        subject: subjects.eval(&namespace).into(),
        payloads: Arc::new(eval_payloads(&flag_key)?),
        check: eval_reply_ok,
    };
    let echo_subject = format!("loadtest.echo.{token}");
    let echo_workload = Workload {
        subject: echo_subject.clone().into(),
        payloads: Arc::clone(&eval_workload.payloads),
        check: any_reply,
    };
    let in_flight = usize::try_from(args.in_flight).unwrap_or(1);
    let runs = Runs {
        clients: &clients,
        in_flight,
        warmup: args.warmup,
        duration: args.duration,
    };

    let mut echo_rates = Vec::new();
    for responders in [1_usize, 2] {
        phase(format!(
            "closed loop, {in_flight} in flight: {}",
            responders_name(responders)
        ));
        let mut echoes = Vec::new();
        for _ in 0..responders {
            echoes.push(procs::spawn_echo(&nats_url, &echo_subject).await?);
        }
        let label = format!("echo x{responders}");
        let measured = runs.closed(&label, &echo_workload).await?;
        recorder.detail(&format!("echo_{responders}_closed"), measured.summary());
        echo_rates.push((responders, measured));
        drop(echoes);
    }

    let mut eval_rates = Vec::new();
    let replica_counts: Vec<usize> = if servers.is_private() {
        vec![1, 2]
    } else {
        vec![0]
    };
    let mut open_rate = args.rate;
    let mut eval_paced = None;
    for replicas in replica_counts {
        let evaluators = start_evaluators(&servers, replicas).await?;
        wait_serving(&clients[0], &eval_workload.subject, &flag_key).await?;
        let name = replicas_name(replicas);
        phase(format!("closed loop, {in_flight} in flight: {name}"));
        let measured = runs
            .closed(&format!("eval x{replicas}"), &eval_workload)
            .await?;
        ensure_answered(&measured, &name)?;
        recorder.detail(&format!("evaluator_{replicas}_closed"), measured.summary());
        if replicas <= 1 {
            let rate = *open_rate.get_or_insert(measured.rate() / 2.0);
            phase(format!("open loop at {rate:.0}/s: {name}"));
            let paced_run = runs.paced("eval paced", &eval_workload, rate).await?;
            recorder.detail("evaluator_paced", paced_run.summary());
            eval_paced = Some(paced_run);
        }
        eval_rates.push((replicas, measured));
        drop(evaluators);
    }
    let rate = open_rate.unwrap_or(1.0);
    phase(format!("open loop at {rate:.0}/s: echo, 1 responder"));
    let echo = procs::spawn_echo(&nats_url, &echo_subject).await?;
    let echo_paced = runs.paced("echo paced", &echo_workload, rate).await?;
    drop(echo);
    recorder.detail("echo_paced", echo_paced.summary());
    recorder.detail("open_loop_rate", rate);

    for (replicas, measured) in &eval_rates {
        let responders = (*replicas).clamp(1, 2);
        let echo_rate = echo_rates
            .iter()
            .find(|(count, _)| *count == responders)
            .map_or(0.0, |(_, echo)| echo.rate());
        recorder.row(
            Row::new(
                format!(
                    "evaluations/s, closed loop {in_flight} in flight, {}",
                    replicas_name(*replicas)
                ),
                measured.rate(),
                "req/s",
            )
            .baseline(responders_name(responders), echo_rate)
            .target(Target::ratio_at_least(0.8, "≥ 0.8× echo")),
        );
        recorder.row(
            Row::new(
                format!("p99, closed loop, {}", replicas_name(*replicas)),
                measured.latency.quantile_ms(0.99),
                "ms",
            )
            .baseline(
                responders_name(responders),
                echo_rates
                    .iter()
                    .find(|(count, _)| *count == responders)
                    .map_or(0.0, |(_, echo)| echo.latency.quantile_ms(0.99)),
            ),
        );
    }
    if let Some(paced_run) = &eval_paced {
        let default_rate = args.rate.is_none();
        let which = if default_rate {
            "half the max rate"
        } else {
            "--rate"
        };
        let row = Row::new(
            format!("p99 at {rate:.0} req/s ({which}), open loop, 1 replica"),
            paced_run.latency.quantile_ms(0.99),
            "ms",
        )
        .baseline(
            "echo at the same rate",
            echo_paced.latency.quantile_ms(0.99),
        );
        recorder.row(if default_rate {
            row.target(Target::ratio_at_most(1.3, "≤ 1.3× echo"))
        } else {
            row
        });
    }
    drop(clients);

    if args.skip_memory {
        recorder.note("memory not measured (--skip-memory)");
    } else if servers.is_private() {
        memory(args.flags, &mut recorder).await?;
    } else {
        recorder.note("memory is measured on private servers only (run without --nats-url)");
    }
    Ok(recorder.finish())
}

/// Closed and paced runs with the same clients and timing.
struct Runs<'a> {
    clients: &'a [async_nats::Client],
    in_flight: usize,
    warmup: Duration,
    duration: Duration,
}

impl Runs<'_> {
    async fn closed(&self, label: &str, workload: &Workload) -> anyhow::Result<Measurement> {
        closed_loop(
            label,
            self.clients,
            workload,
            self.in_flight,
            self.warmup,
            self.duration,
        )
        .await
    }

    async fn paced(
        &self,
        label: &str,
        workload: &Workload,
        rate: f64,
    ) -> anyhow::Result<Measurement> {
        paced(
            label,
            self.clients,
            workload,
            rate,
            self.warmup,
            self.duration,
        )
        .await
    }
}

fn responders_name(responders: usize) -> String {
    match responders {
        1 => "echo, 1 responder".to_owned(),
        more => format!("echo, {more} responders"),
    }
}

fn replicas_name(replicas: usize) -> String {
    match replicas {
        0 => "the cluster's evaluators".to_owned(),
        1 => "1 replica".to_owned(),
        more => format!("{more} replicas"),
    }
}

fn ensure_answered(measured: &Measurement, name: &str) -> anyhow::Result<()> {
    if measured.requests == 0 {
        bail!("{name} answered no evaluation ({} errors)", measured.errors);
    }
    Ok(())
}

/// Creates the benchmark flag with its active rollout: straight into a private Redis, or
/// through the planner of a running cluster (a fresh key per run). Returns its key.
async fn prepare_flag(
    servers: &Servers,
    namespace: &Namespace,
    token: &str,
) -> anyhow::Result<String> {
    if servers.is_private() {
        let seeder = Seeder::new(servers.redis("seeding").await?);
        seeder.register_namespace(namespace).await?;
        seeder
            .create_flag(namespace, seed::ten_rule_flag(FLAG)?)
            .await?;
        seeder
            .create_rollout(
                namespace,
                seed::phases_spec(FLAG, 25.0, "24h")?,
                "bench-salt",
            )
            .await?;
        return Ok(FLAG.to_owned());
    }
    let key = format!("{FLAG}-{token}");
    phase(format!(
        "creating flag {key} and its rollout in namespace {namespace} through the planner"
    ));
    let commands = CommandClient::new(servers.nats().await?, namespace.clone())
        .with_actor("loadtest")
        .with_timeout(Duration::from_secs(10));
    commands
        .create_flag(seed::ten_rule_flag(&key)?)
        .await
        .context("creating the benchmark flag")?;
    commands
        .create_rollout(seed::phases_spec(&key, 25.0, "24h")?)
        .await
        .context("creating the benchmark rollout")?;
    Ok(key)
}

/// Evaluator processes for a private run (none for a running cluster: its own serve).
async fn start_evaluators(servers: &Servers, replicas: usize) -> anyhow::Result<Vec<Child>> {
    let mut evaluators = Vec::new();
    let Some(redis_url) = servers.redis_url().filter(|_| servers.is_private()) else {
        return Ok(evaluators);
    };
    for _ in 0..replicas {
        evaluators.push(procs::spawn_evaluator(&servers.nats_url(), &redis_url).await?);
    }
    for evaluator in &evaluators {
        evaluator.wait_ready().await?;
    }
    Ok(evaluators)
}

/// Waits (up to 30 s) until an evaluation of `flag` is decided by its rollout.
async fn wait_serving(
    client: &async_nats::Client,
    subject: &async_nats::Subject,
    flag: &str,
) -> anyhow::Result<()> {
    let request = codec::encode(
        &json!({"flag": flag, "entity": {"id": "user-1"}}),
        Encoding::MessagePack,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match client
            .request(subject.clone(), request.clone().into())
            .await
        {
            Ok(reply) => {
                match decode_reply::<serde_json::Value>(&reply.payload, Encoding::MessagePack) {
                    Ok(answer) if !answer["rollout_id"].is_null() => return Ok(()),
                    Ok(answer) => format!("answered without a rollout: {answer}"),
                    Err(error) => format!("refused: {} ({})", error.message, error.code),
                }
            }
            Err(error) => error.to_string(),
        };
        if Instant::now() > deadline {
            bail!("no evaluator serves {flag} with its rollout: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn eval_payloads(flag: &str) -> anyhow::Result<Vec<bytes::Bytes>> {
    (0..4096)
        .map(|index| {
            let request = json!({
                "flag": flag,
                "entity": {"id": format!("user-{index}"), "attributes": {
                    "country": "de", "email": "ana@example.com", "age": 31,
                    "app_version": "2.3.4", "plan": "pro"}},
            });
            Ok(codec::encode(&request, Encoding::MessagePack)?.into())
        })
        .collect()
}

/// `{"ok": true, ...}` in MessagePack: a map whose first entry is "ok" → true.
fn eval_reply_ok(payload: &[u8]) -> bool {
    payload.len() > 4 && payload[1..5] == [0xa2, b'o', b'k', 0xc3]
}

/// RSS of an evaluator with no flags, and of one that loaded `flags` flags at start.
async fn memory(flags: u32, recorder: &mut Recorder) -> anyhow::Result<()> {
    phase(format!(
        "memory: an empty evaluator, then one with {flags} flags"
    ));
    let servers = Servers::start_private().await?;
    let empty_servers = Servers::start_private().await?;
    let nats_url = servers.nats_url();
    let empty = procs::spawn_evaluator(
        &nats_url,
        &empty_servers.require_redis("the empty evaluator")?,
    )
    .await?;
    empty.wait_ready().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let empty_kib = empty.rss_kib()?;
    drop(empty);

    let redis_url = servers.require_redis("seeding")?;
    let seeder = Seeder::new(connect_redis(&redis_url).await?);
    let seeding = Instant::now();
    seeder
        .many_flags(&Namespace::new("mem")?, flags, 32)
        .await?;
    let seeded_in = seeding.elapsed();
    let full = procs::spawn_evaluator(&nats_url, &redis_url).await?;
    let loading = Instant::now();
    full.wait_ready().await?;
    let loaded_in = loading.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let full_kib = full.rss_kib()?;
    let served = full.flags_served().await?;
    if served != u64::from(flags) {
        bail!("the evaluator serves {served} flags, not {flags}");
    }
    let per_flag = full_kib.saturating_sub(empty_kib) as f64 * 1024.0 / f64::from(flags);
    recorder.row(
        Row::new(
            format!("evaluator RSS with {flags} flags"),
            full_kib as f64,
            "KiB",
        )
        .baseline("empty evaluator", empty_kib as f64),
    );
    let per_flag_row = Row::new("memory per flag above the empty process", per_flag, "B");
    // the target is stated for 10 000 flags: with few, the allocator's slack dominates
    recorder.row(if flags >= 10_000 {
        per_flag_row.target(Target::value_at_most(
            2048.0,
            "≤ 2 KiB per flag (with 10 000 flags)",
        ))
    } else {
        per_flag_row
    });
    recorder.detail(
        "memory",
        json!({
            "empty_kib": empty_kib,
            "full_kib": full_kib,
            "flags": flags,
            "flags_with_rollouts": flags.div_ceil(10),
            "bytes_per_flag": per_flag,
            "seeding_secs": seeded_in.as_secs_f64(),
            "first_load_secs": loaded_in.as_secs_f64(),
        }),
    );
    Ok(())
}
