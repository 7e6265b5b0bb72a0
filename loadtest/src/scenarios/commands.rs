//! `loadtest commands`: create/start storms through the planner (request-reply), beside
//! the two things every command is built from, at the same concurrency in the same run:
//! a bare Redis script call (`EVALSHA` doing one `HSET` of a flag-record-sized payload)
//! and a bare NATS request-reply to an echo responder (a command-sized body).
//!
//! Each of `--concurrency` workers takes the next index and sends, one after the other,
//! `flag.create` (two variations, one rule), `rollout.create` (phases 10 % for 1 h, then
//! 100 %, waiting for `start`) and `rollout.start`, timing each; the storm ends when
//! `--count` flags are done or `--duration` has passed. Commands go through the SDK's
//! `CommandClient` without retries, so every failure is counted. With private servers the
//! planner runs in this process; with `--nats-url` the cluster's planner answers (flag
//! keys carry a per-run token).
//!
//! SPEC §10: commands/s at least 0.25× the NATS echo's at the same concurrency; the other
//! ratios say how much of the bare cost a command adds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use rollout_sdk::CommandClient;
use rollout_store::Connection;
use rollout_wire::codec::{self, Encoding};
use serde_json::json;
use tokio::task::JoinSet;

use crate::cli::CommandsArgs;
use crate::latency::Latency;
use crate::load::{any_reply, closed_loop, Workload};
use crate::procs::Echo;
use crate::progress::{self, phase};
use crate::report::{Recorder, Report, Row, Target};
use crate::seed;
use crate::servers::{InProcess, Servers};

/// The verbs of one storm iteration, in order.
const VERBS: [&str; 3] = ["flag.create", "rollout.create", "rollout.start"];

/// Runs the scenario.
pub async fn run(args: &CommandsArgs) -> anyhow::Result<Report> {
    let servers = Servers::from_common(&args.common).await?;
    let namespace = crate::namespace(&args.common, "bench-commands")?;
    let concurrency = usize::try_from(args.concurrency).unwrap_or(1);
    let mut recorder = Recorder::new(
        "commands",
        servers.mode(),
        json!({
            "count": args.count,
            "concurrency": args.concurrency,
            "max_duration_secs": args.duration.as_secs_f64(),
            "baseline_duration_secs": args.baseline_duration.as_secs_f64(),
            "namespace": namespace.as_str(),
        }),
    );
    let mut services = None;
    if servers.is_private() {
        let mut started = InProcess::new(&servers)?;
        started.start_planner().await?;
        services = Some(started);
    }
    let nats = servers.nats().await?;
    let token = crate::run_token();
    let commands = Servers::commands(&nats, &namespace);

    phase(format!(
        "storm: {} flags × 3 commands, {concurrency} in flight",
        args.count
    ));
    let storm = storm(&commands, &token, args.count, concurrency, args.duration).await?;
    anyhow::ensure!(
        storm.committed > 0,
        "no command succeeded ({} errors; first: {})",
        storm.errors,
        storm.first_error.as_deref().unwrap_or("none")
    );
    let storm_rate = storm.committed as f64 / storm.elapsed.as_secs_f64().max(1e-9);

    phase("baseline: bare nats request-reply echo, same concurrency");
    let echo_subject = format!("loadtest.echo.{token}");
    let responder_connection = servers.nats().await?;
    let responder = Echo::start(&responder_connection, &echo_subject).await?;
    let body = codec::encode(
        &json!({"command_id": "c-000000", "flag": seed::typical_flag("storm-000000-0")?}),
        Encoding::MessagePack,
    )?;
    let echo_workload = Workload {
        subject: echo_subject.into(),
        payloads: Arc::new(vec![body.into()]),
        check: any_reply,
    };
    let warmup = (args.baseline_duration / 5).min(Duration::from_secs(1));
    let echo = closed_loop(
        "nats echo",
        std::slice::from_ref(&nats),
        &echo_workload,
        concurrency,
        warmup,
        args.baseline_duration,
    )
    .await?;
    responder.stop().await;

    let script = match servers.redis_url() {
        Some(_) => {
            phase("baseline: bare redis script (one HSET), same concurrency");
            let redis = servers.redis("the redis baseline").await?;
            let payload = rollout_store::encode_record(&seed::typical_flag("storm-000000-0")?)?;
            Some(
                bare_script(
                    &redis,
                    &format!("ro:{{loadtest-{token}}}:bare"),
                    &payload,
                    concurrency,
                    args.baseline_duration,
                )
                .await?,
            )
        }
        None => {
            recorder.note("no --redis-url: the redis script baseline was skipped");
            None
        }
    };

    let all = storm.all_latency()?;
    let verb_detail: BTreeMap<&str, _> = storm
        .latency
        .iter()
        .map(|(verb, latency)| (*verb, latency.summary()))
        .collect();
    recorder.row(
        Row::new(
            format!("commands/s, {concurrency} in flight (create flag, create rollout, start)"),
            storm_rate,
            "cmd/s",
        )
        .baseline("bare nats request-reply echo", echo.rate())
        .target(Target::ratio_at_least(0.25, "≥ 0.25× echo")),
    );
    if let Some(script) = &script {
        recorder.row(
            Row::new(
                format!("commands/s, {concurrency} in flight"),
                storm_rate,
                "cmd/s",
            )
            .baseline("bare redis EVALSHA, one HSET", script.rate()),
        );
    }
    recorder.row(
        Row::new("command latency p50", all.quantile_ms(0.5), "ms")
            .baseline("nats echo p50", echo.latency.quantile_ms(0.5)),
    );
    recorder.row(
        Row::new("command latency p99", all.quantile_ms(0.99), "ms")
            .baseline("nats echo p99", echo.latency.quantile_ms(0.99)),
    );
    if let Some(script) = &script {
        recorder.row(
            Row::new("command latency p99 vs redis", all.quantile_ms(0.99), "ms")
                .baseline("redis script p99", script.latency.quantile_ms(0.99)),
        );
    }
    recorder.detail(
        "storm",
        json!({
            "flags_done": storm.flags_done,
            "commands": storm.committed,
            "errors": storm.errors,
            "first_error": storm.first_error,
            "seconds": storm.elapsed.as_secs_f64(),
            "rate": storm_rate,
            "latency": all.summary(),
            "by_verb": verb_detail,
        }),
    );
    recorder.detail("echo", echo.summary());
    if let Some(script) = &script {
        recorder.detail("redis_script", script.summary());
    }
    if storm.errors > 0 {
        recorder.note(format!(
            "{} commands failed; first: {}",
            storm.errors,
            storm.first_error.as_deref().unwrap_or("?")
        ));
    }
    if storm.flags_done < args.count {
        recorder.note(format!(
            "the storm hit --duration after {} of {} flags",
            storm.flags_done, args.count
        ));
    }
    drop(nats);
    if let Some(services) = services {
        services.stop().await;
    }
    Ok(recorder.finish())
}

/// What the storm did.
struct Storm {
    flags_done: u32,
    committed: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latency: Vec<(&'static str, Latency)>,
}

impl Storm {
    fn all_latency(&self) -> anyhow::Result<Latency> {
        let mut all = Latency::new()?;
        for (_, latency) in &self.latency {
            all.merge(latency);
        }
        Ok(all)
    }
}

/// One worker's share of the storm.
struct WorkerTally {
    flags_done: u32,
    committed: u64,
    errors: u64,
    latency: Vec<Latency>,
}

async fn storm(
    commands: &CommandClient,
    token: &str,
    count: u32,
    concurrency: usize,
    max_duration: Duration,
) -> anyhow::Result<Storm> {
    let next = Arc::new(AtomicU32::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let bar = progress::counter("storm", u64::from(count));
    let started = Instant::now();
    let deadline = started + max_duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let commands = commands.clone();
        let next = Arc::clone(&next);
        let first_error = Arc::clone(&first_error);
        let bar = bar.clone();
        let token = token.to_owned();
        workers.spawn(async move {
            let mut tally = WorkerTally {
                flags_done: 0,
                committed: 0,
                errors: 0,
                latency: vec![Latency::new()?, Latency::new()?, Latency::new()?],
            };
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count || Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(tally);
                }
                let failure = one_flag(&commands, &token, index, &mut tally).await;
                if let Err(error) = failure {
                    tally.errors += 1;
                    let mut first = first_error.lock().unwrap_or_else(PoisonError::into_inner);
                    first.get_or_insert_with(|| format!("{error:#}"));
                }
                tally.flags_done += 1;
                bar.inc(1);
            }
        });
    }
    let mut total = Storm {
        flags_done: 0,
        committed: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency: VERBS
            .iter()
            .map(|verb| Ok((*verb, Latency::new()?)))
            .collect::<anyhow::Result<_>>()?,
    };
    while let Some(tally) = workers.join_next().await {
        let tally = tally.context("storm worker")??;
        total.flags_done += tally.flags_done;
        total.committed += tally.committed;
        total.errors += tally.errors;
        for ((_, sum), part) in total.latency.iter_mut().zip(&tally.latency) {
            sum.merge(part);
        }
    }
    total.elapsed = started.elapsed();
    bar.finish_and_clear();
    total.first_error = first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    Ok(total)
}

/// `flag.create`, `rollout.create` (waiting), `rollout.start` for flag `index`; stops at
/// the first failure.
async fn one_flag(
    commands: &CommandClient,
    token: &str,
    index: u32,
    tally: &mut WorkerTally,
) -> anyhow::Result<()> {
    let key = format!("storm-{token}-{index}");
    let sent = Instant::now();
    commands
        .create_flag(seed::typical_flag(&key)?)
        .await
        .context("flag.create")?;
    tally.latency[0].record(sent.elapsed());
    tally.committed += 1;

    let spec = serde_json::from_value(json!({
        "flag": key, "baseline": "off", "candidate": "on", "wait_for_start": true,
        "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}],
    }))?;
    let sent = Instant::now();
    let created = commands
        .create_rollout(spec)
        .await
        .context("rollout.create")?;
    tally.latency[1].record(sent.elapsed());
    tally.committed += 1;

    let sent = Instant::now();
    commands
        .start_rollout(&created.rollout_id)
        .await
        .context("rollout.start")?;
    tally.latency[2].record(sent.elapsed());
    tally.committed += 1;
    Ok(())
}

/// Calls of a one-`HSET` script on keys `<prefix>:<n>`, `concurrency` in flight for
/// `duration`; the keys are deleted afterwards.
pub async fn bare_script(
    redis: &Connection,
    prefix: &str,
    payload: &[u8],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<crate::load::Measurement> {
    /// Distinct keys written (and deleted afterwards).
    const KEYS: u64 = 10_000;
    let script =
        redis::Script::new("redis.call('HSET', KEYS[1], 'rev', ARGV[1], 'data', ARGV[2]) return 1");
    let _progress = progress::Timed::start("redis script", duration);
    let started = Instant::now();
    let deadline = started + duration;
    let latency = Arc::new(Mutex::new(Latency::new()?));
    let errors = AtomicU32::new(0);
    let calls = futures_util::stream::iter(0_u64..)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .map(|index| {
            let mut connection = redis.clone();
            let script = &script;
            let latency = &latency;
            let errors = &errors;
            async move {
                let sent = Instant::now();
                let called: Result<i64, _> = script
                    .key(format!("{prefix}:{}", index % KEYS))
                    .arg(index)
                    .arg(payload)
                    .invoke_async(&mut connection)
                    .await;
                match called {
                    Ok(_) => latency
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(sent.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .count()
        .await;
    let elapsed = started.elapsed();
    let mut connection = redis.clone();
    let keys: Vec<String> = (0..KEYS.min(calls as u64))
        .map(|index| format!("{prefix}:{index}"))
        .collect();
    for chunk in keys.chunks(500) {
        let _: i64 = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut connection)
            .await
            .context("deleting the baseline's keys")?;
    }
    let latency = Arc::try_unwrap(latency)
        .map(|mutex| mutex.into_inner().unwrap_or_else(PoisonError::into_inner))
        .unwrap_or_else(|shared| {
            shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        });
    let errors = u64::from(errors.load(Ordering::Relaxed));
    Ok(crate::load::Measurement {
        requests: latency.count(),
        errors,
        elapsed,
        latency,
    })
}
