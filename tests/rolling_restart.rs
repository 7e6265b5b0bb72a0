//! A rolling restart of the whole system across hosts (SPEC §14, issue 15 item 4), with the
//! outcome oracle watching: three service hosts, each a network namespace running one node
//! of a 3-node NATS cluster (JetStream, the command stream at R3), a planner, a ticker and
//! an evaluator, and a store host running Redis ([`rollout_testkit::netns`]). The test process (the
//! root namespace) is the operator and the applications, connected with every NATS seed.
//!
//! While phased rollouts advance, a command storm updates flags through the durable stream
//! and applications evaluate through the SDK without pause, every service of every host is
//! stopped as an orchestrator stops it (SIGTERM), started again and waited for (`/readyz`),
//! one at a time — evaluator, planner, ticker — and then the host's NATS node, waiting until
//! JetStream on every node is current again before the next host. Then one host is lost
//! mid-storm as a machine is lost — its link goes down, no connection is closed — and comes
//! back: its NATS node, planner, ticker and evaluator vanish together. Clients leave the
//! silent node after two unanswered pings (`nats.ping_interval`, 2 s by default) and the
//! nodes give up on it likewise (`ping_interval: "2s"`, `ping_max: 2`, as in
//! `deploy/nats/`); with the libraries' defaults (a minute, two minutes) applications
//! connected to it failed evaluations and recovery took 40 s.
//!
//! What a user must observe:
//! - no failed evaluation: every SDK evaluation returns an answer (the SDK retries what went
//!   unanswered, as it does in production, on the same short timeout);
//! - every answer served agrees with the committed state within 2 s (the oracle, on every
//!   replica's OFREP address, the NATS path and fleet `desired`);
//! - every command the stream acknowledged is applied exactly once;
//! - every rollout completes with each step entered once, none early, none skipped (by the
//!   audit), and every step's event is seen by one of two observers on different nodes,
//!   but for steps entered while a NATS node was stopped or cut off: events are plain NATS
//!   messages, and one the node had taken but not yet passed on is lost with it (evaluators
//!   notice the gap in versions and read Redis; the oracle judges what they serve);
//! - every service and node exits cleanly on SIGTERM (status 0, within its grace).
//!
//! Needs root and iproute2; says so and passes otherwise.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollout_core::{Entity, Lifecycle, Timestamp};
use rollout_sandbox::oracle::{Oracle, OracleMonitor};
use rollout_sandbox::Replica;
use rollout_sdk::{EvalClient, Namespace};
use rollout_store::Connection;
use rollout_testkit::netns::{HostProcess, Hosts};
use rollout_wire::events::{ChangeEvent, EventKind};
use support::checks::{check_commands, check_rollouts, Report};
use support::cluster::{
    boolean_flag, create_phased, log_dir, operator_commands, wall_clock_now, EventLog,
};
use support::committed::CommittedReader;
use support::nats_cluster::Storm;
use support::{eventually, http, NS, PATIENCE};
use tokio::time::Instant;

/// Hosts running a NATS node and one of each service.
const SERVICE_HOSTS: usize = 3;
/// The host running Redis.
const STORE_HOST: usize = SERVICE_HOSTS;
const NATS_PORT: u16 = 4222;
const NATS_ROUTE_PORT: u16 = 6222;
const NATS_MONITOR_PORT: u16 = 8222;
const REDIS_PORT: u16 = 6379;
const EVALUATOR_PORT: u16 = 8080;
const PLANNER_PORT: u16 = 9091;
const TICKER_PORT: u16 = 9092;
/// Phased rollouts, and their steps: long enough to run through the whole restart.
const ROLLOUTS: usize = 3;
const PHASES: usize = 40;
const STEP: Duration = Duration::from_secs(2);
/// Flags the command storm updates.
const STORM_FLAGS: usize = 4;
const PUBLISHERS: usize = 2;
const STORM_PAUSE: Duration = Duration::from_millis(20);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Applications evaluating without pause.
const APPLICATIONS: usize = 3;
/// An application's SDK: one attempt waits this long, then it retries (doubling pauses
/// from 100 ms) — production's behaviour with a shorter timeout.
const EVAL_TIMEOUT: Duration = Duration::from_millis(1500);
const EVAL_RETRIES: u32 = 5;
/// Evaluations that must succeed after each restart before the next one.
const EVALS_BETWEEN: u64 = 200;
/// The host cut off after the rolling restart, and for how long.
const CUT_HOST: usize = 1;
const CUT_FOR: Duration = Duration::from_secs(6);
/// Events of transitions entered this long before a NATS node stops or is cut off may be
/// lost with it (received by the node, not yet passed on).
const LOSS_SLACK_MS: i64 = 1_000;
/// How long a stopped service or node may take to exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Bound on a restarted node's JetStream catching up.
const RECOVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Service {
    Evaluator,
    Planner,
    Ticker,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Evaluator => "evaluator",
            Service::Planner => "planner",
            Service::Ticker => "ticker",
        }
    }

    fn binary(self) -> &'static Path {
        Path::new(match self {
            Service::Evaluator => env!("CARGO_BIN_EXE_sut-evaluator"),
            Service::Planner => env!("CARGO_BIN_EXE_sut-planner"),
            Service::Ticker => env!("CARGO_BIN_EXE_sut-ticker"),
        })
    }

    fn port(self) -> u16 {
        match self {
            Service::Evaluator => EVALUATOR_PORT,
            Service::Planner => PLANNER_PORT,
            Service::Ticker => TICKER_PORT,
        }
    }
}

/// One service host: its address and what runs on it.
struct ServiceHost {
    index: usize,
    addr: Ipv4Addr,
    nats: HostProcess,
    services: Vec<(Service, HostProcess)>,
}

impl ServiceHost {
    fn probe(&self, service: Service) -> SocketAddr {
        SocketAddr::from((self.addr, service.port()))
    }

    fn monitor(&self) -> SocketAddr {
        SocketAddr::from((self.addr, NATS_MONITOR_PORT))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_service_and_nats_node_fails_no_evaluation_and_loses_no_command()
{
    let Some(hosts) = Hosts::create(SERVICE_HOSTS + 1) else {
        return;
    };
    // the servers' and services' logs outlive the run (a failure too) when asked to
    let dir = log_dir("rollout-rolling-");
    let addr_of = |index: usize| hosts.host(index).addr;
    let seeds: String = (0..SERVICE_HOSTS)
        .map(|index| format!("nats://{}:{NATS_PORT}", addr_of(index)))
        .collect::<Vec<_>>()
        .join(",");
    let redis_url = format!("redis://{}:{REDIS_PORT}", addr_of(STORE_HOST));

    // the store host
    let redis_bin = rollout_testkit::find_binary("redis-server").expect("redis-server");
    let _redis = hosts.host(STORE_HOST).spawn_with_args(
        &redis_bin,
        &[
            "--port",
            &REDIS_PORT.to_string(),
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.path().display().to_string(),
        ]
        .map(str::to_owned),
        &HashMap::new(),
        &dir.path().join("redis.log"),
    );

    // the NATS cluster, one node per service host
    let nats_bin = rollout_testkit::find_binary("nats-server").expect("nats-server");
    let mut service_hosts: Vec<ServiceHost> = (0..SERVICE_HOSTS)
        .map(|index| {
            let config = nats_config(
                dir.path(),
                index,
                &(0..SERVICE_HOSTS).map(addr_of).collect::<Vec<_>>(),
            );
            let nats = hosts.host(index).spawn_with_args(
                &nats_bin,
                &["-c".to_owned(), config.display().to_string()],
                &HashMap::new(),
                &dir.path().join(format!("nats-{index}.log")),
            );
            ServiceHost {
                index,
                addr: addr_of(index),
                nats,
                services: Vec::new(),
            }
        })
        .collect();
    for host in &service_hosts {
        wait_nats_healthy(host).await;
    }
    eventually("redis on the store host", PATIENCE, || {
        let url = redis_url.clone();
        async move {
            let client = redis::Client::open(url).ok()?;
            let mut connection = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .ok()
        }
    })
    .await;

    // the services
    for host in &mut service_hosts {
        for service in [Service::Planner, Service::Ticker, Service::Evaluator] {
            let env = service_env(service, host.index, &seeds, &redis_url);
            let process = hosts.host(host.index).spawn(
                service.binary(),
                &env,
                &dir.path()
                    .join(format!("{}-{}.log", service.name(), host.index)),
            );
            host.services.push((service, process));
        }
    }
    for host in &service_hosts {
        for (service, _) in &host.services {
            wait_ready(host, *service).await;
        }
    }

    // the operator and the workload
    rollout_runtime::telemetry::init_for_tests();
    let mut operator_settings = rollout_sandbox::nats_settings(&seeds);
    operator_settings.name = Some("operator".to_owned());
    let operator = rollout_runtime::connect::connect_nats(&operator_settings, "operator")
        .await
        .expect("operator connects");
    // events are plain NATS messages: a subscriber misses those published while it is
    // reconnecting (its own node restarting), as any application's would. Two observers on
    // different nodes, never restarted together, see every event between them.
    let mut observers = Vec::new();
    for node in [0, SERVICE_HOSTS - 1] {
        let mut settings =
            rollout_sandbox::nats_settings(&format!("nats://{}:{NATS_PORT}", addr_of(node)));
        settings.name = Some(format!("observer-{node}"));
        let client = rollout_runtime::connect::connect_nats(&settings, "observer")
            .await
            .expect("observer connects");
        observers.push(EventLog::start(&client, "rollout.events.>").await);
    }
    let commands = operator_commands(operator.clone());
    let storm_flags: Vec<String> = (0..STORM_FLAGS)
        .map(|index| format!("storm-{index}"))
        .collect();
    for flag in &storm_flags {
        commands
            .create_flag(boolean_flag(flag))
            .await
            .unwrap_or_else(|error| panic!("flag {flag}: {error}"));
    }
    let start = Timestamp::from_millis(wall_clock_now().as_millis() + 2_000);
    let (rollout_flags, rollout_ids) =
        create_phased(&commands, "rr", ROLLOUTS, PHASES, STEP, start).await;
    let redis_conn: Connection =
        rollout_runtime::connect::connect_redis(&rollout_sandbox::redis_settings(&redis_url))
            .await
            .expect("redis connects");
    let replicas: Vec<Replica> = service_hosts
        .iter()
        .map(|host| {
            Replica::Http(
                format!("evaluator-{}", host.index),
                host.probe(Service::Evaluator),
            )
        })
        .collect();
    // before anyone evaluates, every replica serves every flag as committed: served =
    // committed is promised within 2 s of a commit, and these were made a moment ago (on a
    // cluster whose routes may still be settling, where an event can be lost: a replica
    // that missed a flag's creation finds it through its namespace's version counter)
    Oracle::new(redis_conn.clone(), operator.clone(), NS, replicas.clone())
        .assert_served_matches_committed()
        .await;
    let oracle = OracleMonitor::start(Oracle::new(
        redis_conn.clone(),
        operator.clone(),
        NS,
        replicas,
    ));
    let storm = Storm::start(
        async_nats::jetstream::new(operator.clone()),
        storm_flags.clone(),
        PUBLISHERS,
        STORM_PAUSE,
        ATTEMPT_TIMEOUT,
    );
    let evals = Applications::start(
        &seeds,
        rollout_flags.iter().chain(&storm_flags).cloned().collect(),
    )
    .await;
    evals.wait_for_more(EVALS_BETWEEN).await;

    // the rolling restart
    let mut report = Report::new("multi-host: a rolling restart of every service and NATS node");
    let mut stops: Vec<String> = Vec::new();
    let mut unclean: Vec<String> = Vec::new();
    let mut phases = Phases::default();
    for host in &mut service_hosts {
        let index = host.index;
        for position in 0..host.services.len() {
            let service = host.services[position].0;
            let what = format!("{}-{index}", service.name());
            let began = Instant::now();
            let began_at = wall_clock_now();
            let process = &mut host.services[position].1;
            let ended = tokio::task::block_in_place(|| process.terminate(STOP_GRACE));
            let stopped = began.elapsed();
            match ended {
                Ok(status) if status.success() => {}
                Ok(status) => unclean.push(format!("{what} exited with {status}")),
                Err(error) => unclean.push(format!("{what}: {error}")),
            }
            process.restart();
            wait_ready(host, service).await;
            report.fault(&format!("{} restarted", service.name()));
            phases.add(format!("{what} restart"), began_at, Losses::None);
            stops.push(format!(
                "{what}: stopped in {} ms, ready again {} ms after SIGTERM",
                stopped.as_millis(),
                began.elapsed().as_millis()
            ));
            evals.wait_for_more(EVALS_BETWEEN).await;
        }
        let began = Instant::now();
        // (lame duck mode would hand the clients over gently, but takes at least 30 s)
        let stopped_at = wall_clock_now();
        let ended = tokio::task::block_in_place(|| host.nats.terminate(STOP_GRACE));
        match ended {
            Ok(status) if status.success() => {}
            Ok(status) => unclean.push(format!("nats-{index} exited with {status}")),
            Err(error) => unclean.push(format!("nats-{index}: {error}")),
        }
        host.nats.restart();
        report.fault("nats node restarted");
        for other in &service_hosts_addrs(&hosts) {
            wait_nats_healthy_at(*other).await;
        }
        phases.add(format!("nats-{index} restart"), stopped_at, Losses::Events);
        stops.push(format!(
            "nats-{index}: JetStream current on every node {} ms after SIGTERM",
            began.elapsed().as_millis()
        ));
        evals.wait_for_more(EVALS_BETWEEN).await;
    }
    // a whole host lost mid-storm (a machine failure: its link goes down, no connection is
    // closed): its NATS node, planner, ticker and evaluator vanish together, then return
    let lost = &service_hosts[CUT_HOST];
    let began = Instant::now();
    let cut_at = wall_clock_now();
    hosts.host(lost.index).cut();
    report.fault("host cut off");
    tokio::time::sleep(CUT_FOR).await;
    evals.wait_for_more(EVALS_BETWEEN).await;
    hosts.host(lost.index).heal();
    for (service, _) in &lost.services {
        wait_ready(lost, *service).await;
    }
    for other in &service_hosts_addrs(&hosts) {
        wait_nats_healthy_at(*other).await;
    }
    phases.add(
        format!("host-{} cut off", lost.index),
        cut_at,
        Losses::Events,
    );
    stops.push(format!(
        "host-{}: cut off for {} ms, every node healthy and service ready {} ms after the cut",
        lost.index,
        CUT_FOR.as_millis(),
        began.elapsed().as_millis()
    ));
    evals.wait_for_more(EVALS_BETWEEN).await;
    let retries = storm.counters.retries.load(Ordering::Relaxed);
    let acked = storm.stop().await;

    // every stored command is consumed and acknowledged by a planner
    let jetstream = async_nats::jetstream::new(operator.clone());
    eventually("the command stream to drain", RECOVERY, || async {
        let mut stream = jetstream.get_stream("ROLLOUT_CMDS").await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await;

    // every rollout completes
    let reader = CommittedReader::new(redis_conn.clone(), NS);
    for id in &rollout_ids {
        eventually(
            &format!("{id} to complete"),
            STEP * (PHASES as u32) + PATIENCE,
            || {
                let reader = reader.clone();
                async move {
                    (reader.rollout(id).await.state.lifecycle == Lifecycle::Completed).then_some(())
                }
            },
        )
        .await;
    }
    let (succeeded, failures) = evals.stop().await;
    report.add_oracle(oracle.finish());
    // the events of the last transitions arrive
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen: Vec<Vec<_>> = observers.iter().map(EventLog::events).collect();
    report.note(format!(
        "events seen by the observers on nodes 0 and {}: {:?}",
        SERVICE_HOSTS - 1,
        seen.iter().map(Vec::len).collect::<Vec<_>>()
    ));
    let events: Vec<ChangeEvent> = seen.into_iter().flatten().collect();
    // steps, each entered once and on time, by the audit
    check_rollouts(&reader, &rollout_ids, None, &mut report).await;
    // and seen as events: all of them, but for those a stopped or lost NATS node took with
    // it (a plain NATS message the node received but never passed on; evaluators notice the
    // gap in versions and read Redis, as the oracle shows). Restarting a planner, ticker or
    // evaluator loses no event.
    let mut unseen = Vec::new();
    for id in &rollout_ids {
        for step in reader.rollout(id).await.state.history {
            let Some(entered) = step.entered_at else {
                continue;
            };
            let evented = events.iter().any(|event| {
                event.kind == EventKind::RolloutStep
                    && event.rollout_id.as_deref() == Some(id.as_str())
                    && event.to_step == Some(step.index)
            });
            if !evented {
                unseen.push((id.clone(), step.index, entered));
            }
        }
    }
    let (with_a_node, otherwise): (Vec<_>, Vec<_>) = unseen
        .into_iter()
        .partition(|(_, _, entered)| phases.lose_events_at(*entered));
    report.note(format!(
        "steps entered that no observer saw an event of: {} while a NATS node was down or cut off, {} otherwise",
        with_a_node.len(),
        otherwise.len()
    ));
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for command in &acked {
        expected
            .entry(command.flag.clone())
            .or_default()
            .push(command.id.clone());
    }
    check_commands(&reader, &expected, &mut report).await;
    for line in &stops {
        report.note(line.clone());
    }
    report.note(format!(
        "{} commands acknowledged by the stream, {} publish retries",
        acked.len(),
        retries
    ));
    report.note(format!(
        "{succeeded} evaluations answered, {} failed",
        failures
            .values()
            .map(|failures| failures.count)
            .sum::<u64>()
    ));
    for (error, failures) in &failures {
        report.note(format!(
            "failed evaluation x{}: {error} (from {} to {}, during: {})",
            failures.count,
            failures.first,
            failures.last,
            phases.during(failures.first, failures.last)
        ));
    }
    report.assert_clean();
    assert!(
        otherwise.is_empty(),
        "transitions whose event no observer saw, outside the host loss: {otherwise:?}"
    );
    assert!(
        failures.is_empty(),
        "evaluations failed during the rolling restart: {failures:?}"
    );
    assert!(
        succeeded >= EVALS_BETWEEN * (SERVICE_HOSTS as u64 * 4 + 1),
        "the applications evaluated too little to prove anything: {succeeded}"
    );
    assert!(
        unclean.is_empty(),
        "services or nodes that did not stop cleanly on SIGTERM: {unclean:?}"
    );
    assert_eq!(
        report.steps_entered,
        (ROLLOUTS * PHASES) as u64 - report.catch_up_skips,
        "every step of every rollout entered (or listed as skipped by catch-up)"
    );
}

fn service_hosts_addrs(hosts: &Hosts) -> Vec<SocketAddr> {
    (0..SERVICE_HOSTS)
        .map(|index| SocketAddr::from((hosts.host(index).addr, NATS_MONITOR_PORT)))
        .collect()
}

/// Node `index`'s config: clients, routes and monitoring on every address of its host,
/// JetStream stored in the test's directory, routes to every other node, and the pings of
/// `deploy/nats/nats-*.conf`.
fn nats_config(dir: &Path, index: usize, addrs: &[Ipv4Addr]) -> PathBuf {
    let routes: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(other, _)| *other != index)
        .map(|(_, addr)| format!("    \"nats-route://{addr}:{NATS_ROUTE_PORT}\""))
        .collect();
    let store = dir.join(format!("jetstream-{index}"));
    let text = format!(
        "server_name: \"n{index}\"\n\
         listen: \"0.0.0.0:{NATS_PORT}\"\n\
         http: \"0.0.0.0:{NATS_MONITOR_PORT}\"\n\
         lame_duck_grace_period: \"1s\"\n\
         ping_interval: \"2s\"\n\
         ping_max: 2\n\
         jetstream {{\n  store_dir: \"{}\"\n}}\n\
         cluster {{\n  name: \"rolling\"\n  listen: \"0.0.0.0:{NATS_ROUTE_PORT}\"\n  routes: [\n{}\n  ]\n}}\n",
        store.display(),
        routes.join("\n")
    );
    let path = dir.join(format!("nats-{index}.conf"));
    std::fs::write(&path, text).expect("nats config");
    path
}

/// The settings of a service process on host `index`: every NATS seed, the store host's
/// Redis, its probes on every address of its host.
fn service_env(
    service: Service,
    index: usize,
    seeds: &str,
    redis_url: &str,
) -> HashMap<String, String> {
    let listen = format!("0.0.0.0:{}", service.port());
    let mut env: Vec<(&str, String)> = vec![
        ("ROLLOUT_NATS__URL", seeds.to_owned()),
        ("ROLLOUT_REDIS__URL", redis_url.to_owned()),
        ("ROLLOUT_HTTP__LISTEN", listen),
        ("ROLLOUT_LOG__FORMAT", "json".to_owned()),
        ("ROLLOUT_LOG__LEVEL", "info".to_owned()),
    ];
    match service {
        Service::Planner => {
            env.push(("ROLLOUT_PLANNER__STREAM_REPLICAS", "3".to_owned()));
        }
        Service::Ticker => {
            env.extend([
                ("ROLLOUT_TICKER__REPLICA_ID", format!("ticker-{index}")),
                ("ROLLOUT_TICKER__LEASE_TTL", "1000ms".to_owned()),
                ("ROLLOUT_TICKER__RENEW_INTERVAL", "300ms".to_owned()),
            ]);
        }
        Service::Evaluator => {
            env.push(("ROLLOUT_HTTP__NAMESPACE", NS.to_owned()));
        }
    }
    env.into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

async fn wait_ready(host: &ServiceHost, service: Service) {
    let probe = host.probe(service);
    eventually(
        &format!("{}-{} to be ready at {probe}", service.name(), host.index),
        RECOVERY,
        || async move { http::ready(probe).await.then_some(()) },
    )
    .await;
}

async fn wait_nats_healthy(host: &ServiceHost) {
    wait_nats_healthy_at(host.monitor()).await;
}

/// Waits until the node monitored at `monitor` says it is healthy: with JetStream, that
/// its meta group, streams and consumers are current.
async fn wait_nats_healthy_at(monitor: SocketAddr) {
    eventually(
        &format!("the NATS node at {monitor} to be healthy"),
        RECOVERY,
        || async move {
            let response =
                http::request(monitor, "GET", "/healthz", &[], &[], Duration::from_secs(2)).await?;
            (response.status == 200).then_some(())
        },
    )
    .await;
}

/// Applications evaluating through the SDK without pause, each with its own connection to
/// every seed, counting answers and failures.
struct Applications {
    succeeded: Arc<AtomicU64>,
    failures: Arc<Mutex<BTreeMap<String, Failures>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Applications {
    async fn start(seeds: &str, flags: Vec<String>) -> Applications {
        let succeeded = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for application in 0..APPLICATIONS {
            let mut settings = rollout_sandbox::nats_settings(seeds);
            settings.name = Some(format!("application-{application}"));
            let nats = rollout_runtime::connect::connect_nats(&settings, "application")
                .await
                .expect("application connects");
            // no cache: every evaluation is a request to the evaluators
            let client = EvalClient::builder(nats, Namespace::new(NS).expect("namespace"))
                .timeout(EVAL_TIMEOUT)
                .retries(EVAL_RETRIES)
                .cache_capacity(0)
                .connect()
                .await
                .expect("eval client");
            let (flags, succeeded, failures, stop) = (
                flags.clone(),
                Arc::clone(&succeeded),
                Arc::clone(&failures),
                Arc::clone(&stop),
            );
            tasks.push(tokio::spawn(async move {
                let mut turn = 0_usize;
                while !stop.load(Ordering::Relaxed) {
                    let flag = &flags[turn % flags.len()];
                    let entity = Entity::with_id(format!("user-{application}-{turn}"));
                    match client.evaluate(flag, &entity).await {
                        Ok(_) => {
                            succeeded.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            let at = wall_clock_now();
                            failures
                                .lock()
                                .expect("failures")
                                .entry(error.to_string())
                                .and_modify(|failures: &mut Failures| {
                                    failures.count += 1;
                                    failures.last = at;
                                })
                                .or_insert(Failures {
                                    count: 1,
                                    first: at,
                                    last: at,
                                });
                        }
                    }
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Applications {
            succeeded,
            failures,
            stop,
            tasks,
        }
    }

    /// Waits until `more` evaluations have been answered from now on.
    async fn wait_for_more(&self, more: u64) {
        let from = self.succeeded.load(Ordering::Relaxed);
        let succeeded = &self.succeeded;
        eventually(
            &format!("{more} more evaluations to be answered"),
            RECOVERY,
            || async move { (succeeded.load(Ordering::Relaxed) >= from + more).then_some(()) },
        )
        .await;
    }

    /// Stops evaluating (each application finishes its evaluation in flight) and returns
    /// the answers and the failures by error.
    async fn stop(self) -> (u64, BTreeMap<String, Failures>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("application");
        }
        let failures = self.failures.lock().expect("failures").clone();
        (self.succeeded.load(Ordering::Relaxed), failures)
    }
}

/// The failures of one kind the applications met: how many, the first and the last.
#[derive(Clone, Debug)]
struct Failures {
    count: u64,
    first: Timestamp,
    last: Timestamp,
}

/// Whether a fault may lose events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Losses {
    /// A service restart loses none.
    None,
    /// A NATS node stopped or cut off: events it had received but not passed on are lost
    /// with it (plain NATS messages).
    Events,
}

/// The faults of the run, each from its start until the system had recovered from it: a
/// failure report names those it fell into, and a step's missing event is excused when it
/// was entered during one that loses events.
#[derive(Debug, Default)]
struct Phases(Vec<(String, Timestamp, Timestamp, Losses)>);

impl Phases {
    /// A fault that began at `began` and is over now.
    fn add(&mut self, what: String, began: Timestamp, losses: Losses) {
        self.0.push((what, began, wall_clock_now(), losses));
    }

    /// Whether `at` falls in a fault that loses events (from [`LOSS_SLACK_MS`] before it).
    fn lose_events_at(&self, at: Timestamp) -> bool {
        self.0.iter().any(|(_, began, ended, losses)| {
            *losses == Losses::Events
                && at.as_millis() >= began.as_millis() - LOSS_SLACK_MS
                && at <= *ended
        })
    }

    /// The faults overlapping `from..=to` (with a second's slack before), or "no fault".
    fn during(&self, from: Timestamp, to: Timestamp) -> String {
        let names: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, began, ended, _)| {
                began.as_millis() <= to.as_millis() && ended.as_millis() + 1_000 >= from.as_millis()
            })
            .map(|(what, _, _, _)| what.as_str())
            .collect();
        if names.is_empty() {
            "no fault".to_owned()
        } else {
            names.join(", ")
        }
    }
}
