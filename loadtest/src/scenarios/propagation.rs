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
//! Beside the polling figure, the way a browser learns of a change without polling (OFREP
//! over SSE, the OFREP ADR's provider behaviour): a client of the first replica fetched
//! the bulk evaluation once, holds the stream its `refreshConnections` names, and on each
//! `refetchEvaluation` message re-fetches the bulk evaluation with `sseEtag`; the latency
//! is from sending the command to the end of the re-fetch that carries the new version
//! (command → commit → event → evaluator → SSE message → HTTP re-fetch; the event often
//! beats the command's reply, so it is not timed from the reply).
//!
//! Baseline, same run, same count and pause: a bare NATS publish on one connection to a
//! subscriber on another, timed from the publish call to the subscriber's receipt — the
//! floor under any event-driven propagation.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
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
    let commands = Servers::commands(&nats, &namespace);
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

    let mut provider = SseProvider::start(replicas[0], &namespace, &flag)
        .await
        .context("following the first replica's OFREP change stream")?;

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
    let mut sse = Latency::new()?;
    let mut sse_missed = 0_u64;
    let mut command_latency = Latency::new()?;
    for change in 0..args.changes {
        let sent = Instant::now();
        let result = toggle(&commands, &flag, change).await?;
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
        match provider.wait(result.version, sent, PATIENCE).await {
            Some(latency) => sse.record(latency),
            None => {
                sse.record(PATIENCE);
                sse_missed += 1;
            }
        }
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
    recorder.row(
        Row::new(
            "command sent → SSE message → re-fetched by a client, p99",
            sse.quantile_ms(0.99),
            "ms",
        )
        .baseline("nats publish → subscriber p99", baseline.quantile_ms(0.99)),
    );
    recorder.row(
        Row::new(
            "command sent → SSE message → re-fetched by a client, p50",
            sse.quantile_ms(0.5),
            "ms",
        )
        .baseline("nats publish → subscriber p50", baseline.quantile_ms(0.5)),
    );
    if sse_missed > 0 {
        recorder.note(format!(
            "{sse_missed} changes did not reach the SSE client within {PATIENCE:?} (counted as {PATIENCE:?})"
        ));
    }
    recorder.detail("sse_refetch", sse.summary());
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
    provider.stop();
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

/// Change number `change` of a run: the flag disabled (even) or enabled (odd) through the
/// planner; the committed result (its new version).
pub(crate) async fn toggle(
    commands: &rollout_sdk::CommandClient,
    flag: &str,
    change: u32,
) -> anyhow::Result<rollout_wire::FlagResult> {
    if change.is_multiple_of(2) {
        commands.disable_flag(flag).await
    } else {
        commands.enable_flag(flag).await
    }
    .context("committing a change")
}

/// An OFREP provider following the SSE ADR on one replica: it fetched the bulk evaluation,
/// holds the stream its `refreshConnections` names and, on each message, re-fetches the bulk
/// evaluation with `sseEtag`, noting when each re-fetch came back and the version of the
/// flag it carried.
struct SseProvider {
    refetched: tokio::sync::mpsc::UnboundedReceiver<(Instant, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl SseProvider {
    async fn start(
        address: SocketAddr,
        namespace: &Namespace,
        flag: &str,
    ) -> anyhow::Result<SseProvider> {
        let client = reqwest::Client::builder()
            .build()
            .context("building an http client")?;
        let bulk_url = format!("http://{address}/ofrep/v1/evaluate/flags");
        let first = bulk(&client, &bulk_url, namespace.as_str(), None).await?;
        let stream_url = first["refreshConnections"][0]["url"]
            .as_str()
            .context("the bulk answer names no refreshConnections stream: is http.sse on?")?
            .to_owned();
        let mut stream = client
            .get(&stream_url)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("opening {stream_url}"))?;
        let (sender, refetched) = tokio::sync::mpsc::unbounded_channel();
        let namespace = namespace.as_str().to_owned();
        let flag = flag.to_owned();
        let task = tokio::spawn(async move {
            let mut text = String::new();
            while let Ok(Some(bytes)) = stream.chunk().await {
                text.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    let Some(data) = block.lines().find_map(|line| line.strip_prefix("data:"))
                    else {
                        continue; // a keep-alive comment
                    };
                    let Ok(message) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                        continue;
                    };
                    let etag = message["etag"]
                        .as_str()
                        .unwrap_or_default()
                        .replace('"', "%22");
                    let Ok(answer) = bulk(&client, &bulk_url, &namespace, Some(&etag)).await else {
                        continue;
                    };
                    let version = answer["flags"]
                        .as_array()
                        .and_then(|flags| flags.iter().find(|entry| entry["key"] == flag.as_str()))
                        .and_then(|entry| entry["metadata"]["version"].as_u64());
                    if let Some(version) = version {
                        if sender.send((Instant::now(), version)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(SseProvider { refetched, task })
    }

    /// How long after `since` a re-fetch first carried `version` or later, or `None` after
    /// `patience`.
    async fn wait(&mut self, version: u64, since: Instant, patience: Duration) -> Option<Duration> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match tokio::time::timeout_at(deadline, self.refetched.recv()).await {
                Ok(Some((at, seen))) if seen >= version => {
                    return Some(at.saturating_duration_since(since));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// One bulk evaluation for the probe entity, with `sseEtag` when re-fetching after a
/// message.
async fn bulk(
    client: &reqwest::Client,
    url: &str,
    namespace: &str,
    sse_etag: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let url = match sse_etag {
        Some(etag) => format!("{url}?sseEtag={etag}"),
        None => url.to_owned(),
    };
    let response = client
        .post(&url)
        .header("X-Rollout-Namespace", namespace)
        .header("Content-Type", "application/json")
        .body(r#"{"context": {"targetingKey": "loadtest-probe"}}"#)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("POST {url}"))?;
    let bytes = response.bytes().await.context("reading the bulk answer")?;
    serde_json::from_slice(&bytes).context("the bulk answer is not json")
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
pub(crate) async fn publish_to_subscriber(
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
