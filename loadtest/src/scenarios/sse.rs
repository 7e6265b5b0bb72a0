//! `loadtest sse`: what holding OFREP change streams (SSE) costs an evaluator, and how fast
//! a change reaches every stream.
//!
//! On private servers, one evaluator process (this binary re-executed, so its RSS is its
//! own) serves a namespace with one flag. Measured, in order:
//!
//! 1. evaluation throughput over OFREP HTTP (a closed loop of `--in-flight` single-flag
//!    requests for `--duration`) and the evaluator's RSS with no stream open;
//! 2. `--clients` idle streams opened (`GET /ofrep/v1/sse/<ns>`), then RSS again: the
//!    memory per connection;
//! 3. the same throughput loop with the streams held: its ratio to step 1 (the streams
//!    must not cost evaluations; a stated target of ≥ 0.9×);
//! 4. `--changes` flag changes through the planner, `--pause` apart: from the commit's
//!    reply until every stream has received the change's message (the slowest of all),
//!    beside a bare NATS publish → subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::cli::SseArgs;
use crate::latency::Latency;
use crate::progress::phase;
use crate::report::{Recorder, Report, Row, Target};
use crate::seed;
use crate::servers::{InProcess, Servers};

/// Longest a change may take to reach every stream before it counts as missed.
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs the scenario.
pub async fn run(args: &SseArgs) -> anyhow::Result<Report> {
    if args.common.nats_url.is_some() {
        return Err(crate::usage(
            "sse measures one evaluator process of its own: run it without --nats-url",
        ));
    }
    let servers = Servers::from_common(&args.common).await?;
    let namespace = crate::namespace(&args.common, "bench-sse")?;
    let mut services = InProcess::new(&servers)?;
    services.start_planner().await?;
    let redis_url = servers.require_redis("the evaluator")?;
    let evaluator = crate::procs::spawn_evaluator(&servers.nats_url(), &redis_url).await?;
    evaluator.wait_ready().await?;
    let port = evaluator
        .http_port()
        .context("the evaluator has no http port")?;
    let mut recorder = Recorder::new(
        "sse",
        servers.mode(),
        json!({
            "clients": args.clients,
            "changes": args.changes,
            "in_flight": args.in_flight,
            "duration_secs": args.duration.as_secs_f64(),
            "namespace": namespace.as_str(),
        }),
    );
    let nats = servers.nats().await?;
    let commands = Servers::commands(&nats, &namespace);
    let flag = format!("sse-{}", crate::run_token());
    let created = commands
        .create_flag(seed::typical_flag(&flag)?)
        .await
        .context("creating the flag")?;
    let url = format!("http://127.0.0.1:{port}/ofrep/v1/evaluate/flags/{flag}");
    wait_served(&url, namespace.as_str(), created.version).await?;

    phase("evaluations over OFREP, no stream open");
    let without = throughput(&url, namespace.as_str(), args.in_flight, args.duration).await?;
    let rss_before = evaluator.rss_kib()?;

    phase(format!("opening {} idle change streams", args.clients));
    let (stop, stopped) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(args.clients as usize);
    let path = format!("/ofrep/v1/sse/{}", namespace.as_str());
    for _ in 0..args.clients {
        clients.push(open_stream(port, &path, stopped.clone(), Arc::clone(&received)).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = evaluator.rss_kib()?;
    let per_connection_kib = rss_after.saturating_sub(rss_before) as f64 / f64::from(args.clients);

    phase("evaluations over OFREP with the streams held");
    let with = throughput(&url, namespace.as_str(), args.in_flight, args.duration).await?;

    phase(format!(
        "{} changes, each awaited on all {} streams",
        args.changes, args.clients
    ));
    let mut fan_out = Latency::new()?;
    let mut missed = 0_u64;
    for change in 0..args.changes {
        let before = received.load(Ordering::SeqCst);
        crate::scenarios::propagation::toggle(&commands, &flag, change).await?;
        let replied = Instant::now();
        let wanted = before + u64::from(args.clients);
        loop {
            if received.load(Ordering::SeqCst) >= wanted {
                fan_out.record(replied.elapsed());
                break;
            }
            if replied.elapsed() > PATIENCE {
                fan_out.record(PATIENCE);
                missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(args.pause).await;
    }
    let _ = stop.send(true);
    for client in clients {
        client.abort();
    }

    let (baseline, _) = crate::scenarios::propagation::publish_to_subscriber(
        &servers,
        &crate::run_token(),
        args.changes,
        args.pause,
    )
    .await?;
    recorder.row(Row::new(
        format!(
            "evaluator memory per idle SSE connection ({} open)",
            args.clients
        ),
        per_connection_kib,
        "KiB",
    ));
    recorder.row(
        Row::new(
            format!("OFREP evaluations/s with {} streams open", args.clients),
            with,
            "req/s",
        )
        .baseline("the same loop without streams", without)
        .target(Target::ratio_at_least(0.9, "≥ 0.9× without")),
    );
    recorder.row(
        Row::new(
            format!(
                "commit reply → message on all {} streams, p99",
                args.clients
            ),
            fan_out.quantile_ms(0.99),
            "ms",
        )
        .baseline("nats publish → subscriber p99", baseline.quantile_ms(0.99)),
    );
    recorder.row(
        Row::new(
            format!(
                "commit reply → message on all {} streams, p50",
                args.clients
            ),
            fan_out.quantile_ms(0.5),
            "ms",
        )
        .baseline("nats publish → subscriber p50", baseline.quantile_ms(0.5)),
    );
    recorder.detail("rss_kib", json!({"before": rss_before, "after": rss_after}));
    recorder.detail("fan_out", fan_out.summary());
    if missed > 0 {
        recorder.note(format!(
            "{missed} changes did not reach every stream within {PATIENCE:?} (counted as {PATIENCE:?})"
        ));
    }
    drop(commands);
    drop(nats);
    drop(evaluator);
    services.stop().await;
    Ok(recorder.finish())
}

/// Waits until the evaluator serves the flag at `version` or later.
async fn wait_served(url: &str, namespace: &str, version: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = evaluate(&client, url, namespace).await {
            if response >= version {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the evaluator did not serve the new flag within 30 s")
}

/// One OFREP evaluation: the flag version it was answered at.
async fn evaluate(client: &reqwest::Client, url: &str, namespace: &str) -> anyhow::Result<u64> {
    let response = client
        .post(url)
        .header("X-Rollout-Namespace", namespace)
        .header("Content-Type", "application/json")
        .body(r#"{"context": {"targetingKey": "loadtest-probe"}}"#)
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .error_for_status()?;
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    body["metadata"]["version"]
        .as_u64()
        .context("no metadata.version in the answer")
}

/// OFREP evaluations per second: `in_flight` loops for `duration`.
async fn throughput(
    url: &str,
    namespace: &str,
    in_flight: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let started = Instant::now();
    futures_util::stream::iter(0..in_flight)
        .for_each_concurrent(None, |_| {
            let client = client.clone();
            let done = Arc::clone(&done);
            async move {
                while Instant::now() < until {
                    if evaluate(&client, url, namespace).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Opens one stream and counts the messages it receives until `stop`.
async fn open_stream(
    port: u16,
    path: &str,
    mut stop: watch::Receiver<bool>,
    received: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connecting a stream")?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .context("asking for a stream")?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .await
        .context("the stream's status")?;
    if !status.contains(" 200 ") {
        bail!("the evaluator refused a stream: {}", status.trim());
    }
    Ok(tokio::spawn(async move {
        let mut line = String::new();
        loop {
            line.clear();
            tokio::select! {
                _ = stop.changed() => return,
                read = reader.read_line(&mut line) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if line.starts_with("data:") {
                            received.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                },
            }
        }
    }))
}
