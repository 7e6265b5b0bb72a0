//! `loadtest scale` (SPEC §10 and §14: transitions/s with N ticker replicas sharing the
//! shards, N = 1, 2, 3 — must grow with N, the goal being ≥ 0.8 N × one).
//!
//! Always on private servers (it owns the tickers it starts). For each N in
//! 1..=`--replicas`:
//!
//! 1. `--rollouts` running rollouts spread evenly over `--namespaces` namespaces (so over
//!    the 64 shards) are written straight to Redis, their first step all due at one
//!    instant a few seconds ahead;
//! 2. N ticker processes start (`--ticker-bin`, else `ticker` beside this executable, else
//!    this binary's `serve-ticker` role) and balance the shards; the run waits until every
//!    shard is led and each replica holds its fair share, before the due time;
//! 3. the drain rate is rollouts ÷ (arrival of the last `rollout_step` event − due time);
//! 4. the processes are killed and their leases dropped, so the next N starts clean.
//!
//! With `--hosts` (root), each ticker runs on a host of its own — a network namespace on a
//! bridge, talking to NATS and Redis across it as from another machine
//! ([`rollout_testkit::netns`]); the machine's cores are still shared.
//!
//! Beside them, in the same run: bare Redis script calls at the tickers' concurrency (the
//! ceiling of any script-per-transition design on this Redis). The figure judged is each
//! N's rate against one replica's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollout_core::Timestamp;
use rollout_store::load_rollout;
use rollout_store::Connection;
use rollout_store::Keys;
use rollout_wire::subjects::{Namespace, Subjects};
use serde_json::json;

use crate::cli::ScaleArgs;
use crate::procs::{self, TickerChild, TickerProgram};
use crate::progress::{self, phase};
use crate::report::{Recorder, Report, Row, Target};
use crate::scenarios::commands::bare_script;
use crate::seed::Seeder;
use crate::servers::Servers;
use crate::watch::{unix_micros, StepWatcher};
use rollout_testkit::netns::Hosts;

/// Commits in flight while seeding.
const SEED_CONCURRENCY: usize = 128;
/// Longest the tickers may take to balance the shards.
const BALANCE_PATIENCE: Duration = Duration::from_secs(30);
/// Longest a burst may take to fire after its due time.
const FIRING_PATIENCE: Duration = Duration::from_secs(120);
/// Time given to starting the processes and balancing, on top of seeding.
const START_MARGIN_MS: i64 = 5_000;

/// What one N measured.
struct Run {
    replicas: u32,
    fired: u64,
    rate: f64,
    shares: Vec<usize>,
    /// CPU seconds each ticker process used from the due time to the last transition.
    ticker_cpu_secs: Vec<f64>,
    /// Share of the machine's CPU time busy over that window (all processes).
    machine_busy: f64,
}

/// Runs the scenario.
pub async fn run(args: &ScaleArgs) -> anyhow::Result<Report> {
    if args.common.nats_url.is_some() || args.common.redis_url.is_some() {
        return Err(crate::usage(
            "scale starts and kills its own ticker processes: it runs on private servers only (drop --nats-url/--redis-url)",
        ));
    }
    // with --hosts: a host per replica, the servers reached over their bridge
    let hosts = if args.hosts {
        let wanted = usize::try_from(args.replicas).unwrap_or(1);
        let hosts = tokio::task::spawn_blocking(move || Hosts::create(wanted))
            .await
            .context("host set-up task")?
            .ok_or_else(|| {
                crate::usage("--hosts needs root and iproute2 (the reason is printed above)")
            })?;
        Some(hosts)
    } else {
        None
    };
    let servers = match &hosts {
        Some(hosts) => Servers::start_private_for(hosts).await?,
        None => Servers::from_common(&args.common).await?,
    };
    let (nats_for_tickers, redis_for_tickers) = match (&hosts, servers.private_ports()) {
        (Some(hosts), Some((nats_port, redis_port))) => {
            for index in 0..hosts.len() {
                for port in [nats_port, redis_port] {
                    hosts
                        .wait_reachable(index, port, Duration::from_secs(10))
                        .map_err(|error| {
                            anyhow::anyhow!("host {index} cannot reach the servers: {error}")
                        })?;
                }
            }
            (
                format!("nats://{}:{nats_port}", hosts.bridge_addr),
                format!("redis://{}:{redis_port}", hosts.bridge_addr),
            )
        }
        _ => (servers.nats_url(), servers.require_redis("tickers")?),
    };
    let base = crate::namespace(&args.common, "bench-scale")?;
    let subjects = Subjects::new(args.common.subject_prefix.as_str())
        .map_err(|error| crate::usage(format!("--subject-prefix: {error}")))?;
    let redis = servers.redis("the scale scenario").await?;
    let nats = servers.nats().await?;
    let program = TickerProgram::find(args.ticker_bin.as_deref())?;
    let max_in_flight = usize::try_from(args.max_in_flight).unwrap_or(512);
    let mut recorder = Recorder::new(
        "scale",
        servers.mode(),
        json!({
            "replicas": args.replicas,
            "rollouts": args.rollouts,
            "namespaces": args.namespaces,
            "max_in_flight": args.max_in_flight,
            "commit_batch": args.commit_batch,
            "ticker": program.describe(),
            "hosts": args.hosts,
        }),
    );
    let (log_dir, _temporary) = crate::procs::log_dir(args.log_dir.as_deref())?;
    let env = vec![
        ("ROLLOUT_NATS__URL".to_owned(), nats_for_tickers),
        ("ROLLOUT_REDIS__URL".to_owned(), redis_for_tickers),
        (
            "ROLLOUT_TICKER__MAX_IN_FLIGHT".to_owned(),
            args.max_in_flight.to_string(),
        ),
        (
            "ROLLOUT_TICKER__COMMIT_BATCH".to_owned(),
            args.commit_batch.to_string(),
        ),
        ("ROLLOUT_LOG__LEVEL".to_owned(), "warn".to_owned()),
    ];
    let namespaces: Vec<Namespace> = (0..args.namespaces)
        .map(|index| {
            Namespace::new(format!("{base}-{index}"))
                .map_err(|error| crate::usage(format!("--namespace {base}: {error}")))
        })
        .collect::<Result<_, _>>()?;
    let seeder = Seeder::new(redis.clone());
    let token = crate::run_token();
    let watcher = StepWatcher::start_all(&nats, &subjects).await?;

    let mut runs = Vec::new();
    for replicas in 1..=args.replicas {
        let prefix = format!("s{token}-n{replicas}");
        let due = seed_burst(&seeder, &namespaces, &prefix, args.rollouts).await?;
        phase(format!("starting {replicas} ticker process(es)"));
        let mut children = Vec::new();
        for index in 0..replicas {
            children.push(TickerChild::spawn(
                &program,
                &format!("scale-{replicas}-{index}"),
                &env,
                &log_dir,
                hosts
                    .as_ref()
                    .map(|hosts| hosts.host(index as usize).netns.as_str()),
            )?);
        }
        let shares = wait_balanced(&redis, &mut children).await?;
        let lead_in = due.millis_since(seeder.now().await?);
        if lead_in <= 0 {
            bail!(
                "the set-up overran the due time by {} ms; use fewer --rollouts",
                -lead_in
            );
        }
        phase(format!(
            "{replicas} replica(s) lead {shares:?} shards; the burst is due in {lead_in} ms"
        ));
        // CPU counters from just before the due time (the processes idle until then)
        let until_due = due.millis_since(seeder.now().await?).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(until_due.saturating_sub(20))).await;
        let cpu_before = ticker_cpu(&children)?;
        let machine_before = procs::machine_cpu_ticks()?;
        let (fired, last_arrival) =
            wait_fired(&watcher, &format!("r-{prefix}-"), args.rollouts, due).await?;
        let cpu_after = ticker_cpu(&children)?;
        let machine_after = procs::machine_cpu_ticks()?;
        let ticker_cpu_secs: Vec<f64> = cpu_after
            .iter()
            .zip(&cpu_before)
            .map(|(after, before)| after - before)
            .collect();
        let machine_busy = (machine_after.0 - machine_before.0) as f64
            / ((machine_after.1 - machine_before.1) as f64).max(1.0);
        let window_secs = ((last_arrival - due.as_millis() * 1000) as f64 / 1e6).max(1e-3);
        let rate = fired as f64 / window_secs;
        phase(format!(
            "{replicas} replica(s): {fired} transitions in {window_secs:.2} s = {rate:.0}/s"
        ));
        for child in &mut children {
            child.kill().await?;
        }
        // the killed replicas' leases would hold the shards for a lease: drop them now
        let mut connection = redis.clone();
        rollout_store::lease::expire(&mut connection)
            .await
            .context("dropping the killed tickers' leases")?;
        phase(format!(
            "{replicas} replica(s): ticker CPU {ticker_cpu_secs:.2?} s, machine {:.0} % busy",
            machine_busy * 100.0
        ));
        runs.push(Run {
            replicas,
            fired,
            rate,
            shares,
            ticker_cpu_secs,
            machine_busy,
        });
    }
    drop(watcher);

    phase("baseline: bare redis script calls, the tickers' concurrency");
    let mut connection = redis.clone();
    let sample = load_rollout(
        &mut connection,
        &Keys::new(&namespaces[0]),
        &format!("r-s{token}-n1-0-0"),
    )
    .await?
    .context("the first seeded rollout is missing")?;
    let payload = rollout_store::encode_record(&sample)?;
    let script = bare_script(
        &redis,
        &format!("ro:{{bench-scale-{token}}}:bare"),
        &payload,
        max_in_flight,
        args.script_duration,
    )
    .await?;

    let one = runs.first().map_or(0.0, |run| run.rate);
    for run in &runs {
        let name = format!(
            "transitions/s draining {} due at once over {} namespaces, {} ticker replica(s)",
            args.rollouts, args.namespaces, run.replicas
        );
        let row = if run.replicas == 1 {
            Row::new(name, run.rate, "tr/s").baseline("bare redis script calls/s", script.rate())
        } else {
            Row::new(name, run.rate, "tr/s")
                .baseline("one replica", one)
                .target(Target::ratio_at_least(
                    1.0,
                    format!(
                        "grows with N (goal ≥ {:.1}×)",
                        0.8 * f64::from(run.replicas)
                    ),
                ))
        };
        recorder.row(row);
    }
    recorder.detail(
        "runs",
        runs.iter()
            .map(|run| {
                json!({
                    "replicas": run.replicas,
                    "fired": run.fired,
                    "transitions_per_sec": run.rate,
                    "shards_per_replica": run.shares,
                    "ticker_cpu_secs": run.ticker_cpu_secs,
                    "ticker_cpu_us_per_transition": run.ticker_cpu_secs.iter().sum::<f64>() * 1e6 / (run.fired.max(1) as f64),
                    "machine_busy": run.machine_busy,
                })
            })
            .collect::<Vec<_>>(),
    );
    recorder.detail("redis_script", script.summary());
    if args.hosts {
        recorder.note(format!(
            "each ticker on a host of its own (network namespaces on a bridge), NATS and Redis reached across it at {}",
            hosts.as_ref().map_or_else(String::new, |hosts| hosts.bridge_addr.to_string())
        ));
    }
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    for run in &runs {
        let total: f64 = run.ticker_cpu_secs.iter().sum();
        recorder.note(format!(
            "{} replica(s): ticker CPU {:.2?} s (together {:.0} µs per transition), the machine {:.0} % busy over the drain ({cores} cores shared by Redis, NATS, the tickers and this benchmark)",
            run.replicas,
            run.ticker_cpu_secs,
            total * 1e6 / (run.fired.max(1) as f64),
            run.machine_busy * 100.0
        ));
    }
    Ok(recorder.finish())
}

/// CPU seconds used so far by each ticker process.
fn ticker_cpu(children: &[TickerChild]) -> anyhow::Result<Vec<f64>> {
    children
        .iter()
        .map(|child| {
            let pid = child
                .pid()
                .with_context(|| format!("ticker {} is gone", child.replica))?;
            procs::cpu_secs(pid)
        })
        .collect()
}

/// Seeds `count` running rollouts `r-<prefix>-<namespace index>-<i>` spread evenly over
/// `namespaces`, all due at one instant; returns it.
async fn seed_burst(
    seeder: &Seeder,
    namespaces: &[Namespace],
    prefix: &str,
    count: u32,
) -> anyhow::Result<Timestamp> {
    let now = seeder.now().await?;
    // room for seeding (0.1–0.3 ms per rollout on a 2-core machine) and starting
    let margin_ms = START_MARGIN_MS + i64::from(count) * 3 / 10;
    let due = Timestamp::from_millis(now.as_millis() + margin_ms);
    let spread = u32::try_from(namespaces.len().max(1)).unwrap_or(u32::MAX);
    let started = Instant::now();
    phase(format!(
        "seeding {count} rollouts over {} namespaces, due at once in {margin_ms} ms",
        namespaces.len()
    ));
    for (index, namespace) in (0..spread).zip(namespaces) {
        // the remainder goes one each to the first namespaces
        let share = count / spread + u32::from(index < count % spread);
        seeder
            .flags_with_rollouts(
                namespace,
                &format!("{prefix}-{index}"),
                share,
                now,
                SEED_CONCURRENCY,
                |_| {
                    json!({"phases": [
                        {"percentage": 10, "duration": format!("{}ms", (due.as_millis() - now.as_millis()).max(1))},
                        {"percentage": 100, "duration": "1h"},
                    ]})
                },
            )
            .await?;
    }
    phase(format!(
        "seeded {count} rollouts in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(due)
}

/// Waits (bounded) until every shard is led and each of `children` leads its fair share;
/// returns how many shards each leads.
async fn wait_balanced(
    redis: &Connection,
    children: &mut [TickerChild],
) -> anyhow::Result<Vec<usize>> {
    let deadline = Instant::now() + BALANCE_PATIENCE;
    loop {
        let mut connection = redis.clone();
        let holders = rollout_store::lease::holders(&mut connection)
            .await
            .context("reading the shard leases")?;
        let count = rollout_store::lease::shard_count(&mut connection)
            .await
            .context("reading the shard count")?
            .unwrap_or(0) as usize;
        let mut per_replica: BTreeMap<&str, usize> = BTreeMap::new();
        for holder in &holders {
            *per_replica.entry(holder.replica.as_str()).or_default() += 1;
        }
        let shares: Vec<usize> = children
            .iter()
            .map(|child| {
                per_replica
                    .get(child.replica.as_str())
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        let fair = count.div_ceil(children.len().max(1));
        let balanced = count > 0
            && holders.len() == count
            && shares.iter().sum::<usize>() == count
            && shares
                .iter()
                .all(|share| *share + children.len() > fair && *share <= fair);
        if balanced {
            return Ok(shares);
        }
        for child in children.iter_mut() {
            if child.exited() {
                bail!("ticker {} exited by itself", child.replica);
            }
        }
        if Instant::now() > deadline {
            bail!("the tickers did not balance the shards within {BALANCE_PATIENCE:?}: {shares:?} of {count}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `count` distinct rollouts whose id starts with `marker` were seen
/// stepping; returns how many and the last arrival (Unix µs).
async fn wait_fired(
    watcher: &StepWatcher,
    marker: &str,
    count: u32,
    due: Timestamp,
) -> anyhow::Result<(u64, i64)> {
    let bar = progress::counter("fired", u64::from(count));
    let due_wait = u64::try_from(due.as_millis() * 1000 - unix_micros()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_micros(due_wait) + FIRING_PATIENCE;
    let mut seen = std::collections::HashSet::new();
    let mut last_arrival = due.as_millis() * 1000;
    let mut cursor = 0;
    loop {
        let fresh = watcher.since(cursor);
        cursor += fresh.len();
        for step in fresh {
            if step.rollout_id.starts_with(marker) && seen.insert(step.rollout_id) {
                last_arrival = last_arrival.max(step.arrived_micros);
            }
        }
        bar.set_position(seen.len() as u64);
        if seen.len() >= usize::try_from(count).unwrap_or(usize::MAX) {
            break;
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            bail!(
                "only {} of {count} rollouts fired within {FIRING_PATIENCE:?} of the due time",
                seen.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    Ok((seen.len() as u64, last_arrival))
}
