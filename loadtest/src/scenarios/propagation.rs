//! `loadtest propagation` (SPEC §10: commit → every evaluator replica serves the new state,
//! p99 ≤ 50 ms).
//!
//! One flag is disabled and enabled in turn through the planner (`flag.disable` /
//! `flag.enable`, request-reply), `--changes` times, `--pause` apart. From the moment the
//! commit's reply arrives (it carries the flag's new version), every replica is asked over
//! its own OFREP endpoint, every `--poll`, until the version it evaluates with
//! (`metadata.version`) is at least the committed one, and the latency of a change is the
//! slowest replica's: from the reply to the end of the first OFREP answer at the new
//! version, so it includes one HTTP round trip (a fraction of a millisecond) and, when the
//! change arrives between two polls, up to one `--poll`.
//!
//! With private servers, a planner and `--replicas` evaluators run in process; with
//! `--nats-url`, the cluster's planner commits and `--evaluator-http` names every replica.
//!
//! Baseline, same run, same count and pause: a bare NATS publish on one connection to a
//! subscriber on another, timed from the publish call to the subscriber's receipt — the
//! floor under any event-driven propagation.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use rollout_sdk::CommandClient;
use rollout_wire::subjects::Namespace;
use serde_json::json;

use crate::cli::PropagationArgs;
use crate::latency::Latency;
use crate::progress::{self, phase};
use crate::report::{Recorder, Report, Row, Target};
use crate::seed;
use crate::servers::{local_addr, InProcess, Servers};

/// Longest a change may take to reach every replica before it counts as missed.
const PATIENCE: Duration = Duration::from_secs(5);

/// Runs the scenario.
pub async fn run(args: &PropagationArgs) -> anyhow::Result<Report> {
    let servers = Servers::from_common(&args.common).await?;
    let namespace = crate::namespace(&args.common, "bench-propagation")?;
    let mut services = None;
    let replicas: Vec<SocketAddr> = if servers.is_private() {
        if !args.evaluator_http.is_empty() {
            return Err(crate::usage(
                "--evaluator-http names a running cluster's replicas: use it with --nats-url",
            ));
        }
        let mut started = InProcess::new(&servers)?;
        started.start_planner().await?;
        let mut addresses = Vec::new();
        for _ in 0..args.replicas {
            addresses.push(started.start_evaluator(&namespace).await?);
        }
        services = Some(started);
        addresses
    } else {
        if args.evaluator_http.is_empty() {
            return Err(crate::usage(
                "propagation against a running cluster needs --evaluator-http with every replica's address, e.g. 127.0.0.1:18081,127.0.0.1:18082",
            ));
        }
        args.evaluator_http
            .iter()
            .map(|address| {
                local_addr(address)
                    .map_err(|error| crate::usage(format!("--evaluator-http: {error:#}")))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut recorder = Recorder::new(
        "propagation",
        servers.mode(),
        json!({
            "replicas": replicas.len(),
            "changes": args.changes,
            "pause_ms": args.pause.as_secs_f64() * 1000.0,
            "poll_ms": args.poll.as_secs_f64() * 1000.0,
            "namespace": namespace.as_str(),
        }),
    );
    let nats = servers.nats().await?;
    let commands = CommandClient::new(nats.clone(), namespace.clone())
        .with_actor("loadtest")
        .with_retries(0)
        .with_timeout(Duration::from_secs(10));
    let token = crate::run_token();
    let flag = format!("prop-{token}");
    let probes: Vec<Probe> = replicas
        .iter()
        .map(|address| Probe::new(*address, &namespace, &flag))
        .collect::<anyhow::Result<_>>()?;

    let created = commands
        .create_flag(seed::typical_flag(&flag)?)
        .await
        .context("creating the flag")?;
    let first = wait_all(&probes, created.version, Duration::from_secs(30), args.poll).await;
    if first.iter().any(Option::is_none) {
        bail!("not every replica served the new flag {flag} within 30 s");
    }

    phase(format!(
        "{} changes, each awaited on {} replicas",
        args.changes,
        probes.len()
    ));
    let bar = progress::counter("changes", u64::from(args.changes));
    let mut all = Latency::new()?;
    let mut per_replica: Vec<Latency> = probes
        .iter()
        .map(|_| Latency::new())
        .collect::<anyhow::Result<_>>()?;
    let mut missed = 0_u64;
    let mut command_latency = Latency::new()?;
    for change in 0..args.changes {
        let sent = Instant::now();
        let result = if change % 2 == 0 {
            commands.disable_flag(&flag).await
        } else {
            commands.enable_flag(&flag).await
        }
        .context("committing a change")?;
        let replied = Instant::now();
        command_latency.record(replied - sent);
        let served = wait_all(&probes, result.version, PATIENCE, args.poll).await;
        let mut slowest = Duration::ZERO;
        for (replica, latency) in served.iter().enumerate() {
            let latency = latency.unwrap_or(PATIENCE);
            if served[replica].is_none() {
                missed += 1;
            }
            per_replica[replica].record(latency);
            slowest = slowest.max(latency);
        }
        all.record(slowest);
        bar.inc(1);
        tokio::time::sleep(args.pause).await;
    }
    bar.finish_and_clear();

    phase("baseline: bare nats publish → subscriber");
    let (baseline, baseline_gave_up) =
        publish_to_subscriber(&servers, &token, args.changes, args.pause).await?;

    recorder.row(
        Row::new(
            format!(
                "commit reply → served by all {} replicas, p99",
                probes.len()
            ),
            all.quantile_ms(0.99),
            "ms",
        )
        .baseline("nats publish → subscriber p99", baseline.quantile_ms(0.99))
        .target(Target::value_at_most(50.0, "≤ 50 ms")),
    );
    recorder.row(
        Row::new(
            "commit reply → served by all, p50",
            all.quantile_ms(0.5),
            "ms",
        )
        .baseline("nats publish → subscriber p50", baseline.quantile_ms(0.5)),
    );
    recorder.row(
        Row::new(
            "commit reply → served by all, max",
            all.summary().max_ms,
            "ms",
        )
        .baseline("nats publish → subscriber max", baseline.summary().max_ms),
    );
    recorder.detail(
        "propagation",
        json!({
            "changes": args.changes,
            "missed": missed,
            "all_replicas": all.summary(),
            "per_replica": replicas.iter().zip(&per_replica)
                .map(|(address, latency)| json!({"replica": address.to_string(), "latency": latency.summary()}))
                .collect::<Vec<_>>(),
            "command_round_trip": command_latency.summary(),
        }),
    );
    recorder.detail("nats_publish_subscribe", baseline.summary());
    recorder.detail("nats_publish_subscribe_gave_up", baseline_gave_up);
    if baseline_gave_up > 0 {
        recorder.note(format!(
            "{baseline_gave_up} bare nats messages did not arrive within {PATIENCE:?} (counted as {PATIENCE:?})"
        ));
    }
    if missed > 0 {
        recorder.note(format!(
            "{missed} replica waits gave up after {PATIENCE:?} (counted as {PATIENCE:?})"
        ));
    }
    drop(commands);
    drop(nats);
    if let Some(services) = services {
        services.stop().await;
    }
    Ok(recorder.finish())
}

/// One replica's OFREP endpoint for the flag.
struct Probe {
    client: reqwest::Client,
    url: String,
    namespace: String,
}

impl Probe {
    fn new(address: SocketAddr, namespace: &Namespace, flag: &str) -> anyhow::Result<Probe> {
        Ok(Probe {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building an http client")?,
            url: format!("http://{address}/ofrep/v1/evaluate/flags/{flag}"),
            namespace: namespace.as_str().to_owned(),
        })
    }

    /// The version the replica evaluates the flag at (`None`: not served, or no answer).
    async fn version(&self) -> Option<u64> {
        let response = self
            .client
            .post(&self.url)
            .header("X-Rollout-Namespace", &self.namespace)
            .header("Content-Type", "application/json")
            .body(r#"{"context": {"targetingKey": "loadtest-probe"}}"#)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        body["metadata"]["version"].as_u64()
    }

    /// How long after now the replica first serves `version` (polled every `poll`), or
    /// `None` after `patience`.
    async fn wait(&self, version: u64, patience: Duration, poll: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            if self.version().await.is_some_and(|served| served >= version) {
                return Some(started.elapsed());
            }
            if started.elapsed() > patience {
                return None;
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// Every replica's wait, side by side.
async fn wait_all(
    probes: &[Probe],
    version: u64,
    patience: Duration,
    poll: Duration,
) -> Vec<Option<Duration>> {
    futures_util::future::join_all(
        probes
            .iter()
            .map(|probe| probe.wait(version, patience, poll)),
    )
    .await
}

/// `count` messages, `pause` apart, published on one connection and received on another;
/// latency from the publish call to the receipt of that very message (each carries its
/// sequence number, so one that arrives after its wait gave up is not taken for the
/// next). Returns the latencies and how many waits gave up.
async fn publish_to_subscriber(
    servers: &Servers,
    token: &str,
    count: u32,
    pause: Duration,
) -> anyhow::Result<(Latency, u64)> {
    let publisher = servers.nats().await?;
    let receiver = servers.nats().await?;
    let subject = format!("loadtest.ping.{token}");
    let mut subscriber = receiver
        .subscribe(subject.clone())
        .await
        .context("subscribing")?;
    receiver
        .flush()
        .await
        .context("flushing the subscription")?;
    let mut latency = Latency::new()?;
    let mut gave_up = 0;
    for sequence in 0..count {
        // about the size of a change event with its flag snapshot
        let mut payload = vec![b'x'; 600];
        payload[..4].copy_from_slice(&sequence.to_be_bytes());
        let sent = Instant::now();
        publisher
            .publish(subject.clone(), payload.into())
            .await
            .context("publishing")?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, subscriber.next()).await {
                Ok(Some(message))
                    if message.payload.get(..4) == Some(&sequence.to_be_bytes()[..]) =>
                {
                    latency.record(sent.elapsed());
                    break;
                }
                // a late message of an earlier round
                Ok(Some(_)) => {}
                Ok(None) => bail!("the subscription ended"),
                Err(_) => {
                    latency.record(PATIENCE);
                    gave_up += 1;
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
    Ok((latency, gave_up))
}
