//! `loadtest ticker` (SPEC §10: with 100 000 active rollouts and 6 250 due per second,
//! firing lag p99 ≤ 50 ms after the due time; transitions/s at least 0.25× bare Redis
//! script calls/s at the same concurrency, judged on the backlog drain, since a spread
//! wave fires no faster than it is offered). The method of the ticker's own
//! benchmark (`services/ticker/benches/firing.rs`), observed from outside:
//!
//! 1. **Spread.** `--rollouts` running rollouts whose first step ends evenly over
//!    `--spread` (100 000 over 16 s = 6 250 due per second, SPEC §10's offered load), written
//!    straight to Redis as the planner writes them; then one ticker leader — in process
//!    with private servers, the cluster's with `--nats-url --redis-url` — fires them.
//!    Firing lag = arrival of the `rollout_step` event here − due time (same clock; so
//!    commit, publish and delivery are included). Transitions per second = fired ÷ (last
//!    arrival − first due), and the slowest one-second window.
//! 2. **Burst.** `--burst` more rollouts all due at one instant: the drain rate is the
//!    leader's capacity.
//! 3. **Bare script.** `EVALSHA` of a one-`HSET` script with a rollout-record-sized payload,
//!    `--max-in-flight` in flight for `--script-duration`: the ceiling of any
//!    script-per-transition design on this Redis.
//!
//! With private servers the in-process ticker's own commit-lag histogram (commit Redis
//! time − due) is reported beside the observed one.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollout_core::Timestamp;
use rollout_store::load_rollout;
use rollout_store::Keys;
use rollout_wire::subjects::{Namespace, Subjects};
use serde_json::json;
use ticker::TickerSettings;

use crate::cli::TickerArgs;
use crate::latency::Latency;
use crate::progress::{self, phase};
use crate::report::{Recorder, Report, Row, Target};
use crate::scenarios::commands::bare_script;
use crate::seed::Seeder;
use crate::servers::{InProcess, Servers};
use crate::watch::{unix_micros, StepSeen, StepWatcher};

/// Commits in flight while seeding.
const SEED_CONCURRENCY: usize = 128;
/// Longest a wave may take to fire after its last due time.
const FIRING_PATIENCE: Duration = Duration::from_secs(120);

/// Runs the scenario.
pub async fn run(args: &TickerArgs) -> anyhow::Result<Report> {
    let servers = Servers::from_common(&args.common).await?;
    let namespace = crate::namespace(&args.common, "bench-ticker")?;
    let subjects = Subjects::new(args.common.subject_prefix.as_str())
        .map_err(|error| crate::usage(format!("--subject-prefix: {error}")))?;
    let redis = servers
        .redis("the ticker scenario (it seeds rollouts)")
        .await?;
    let nats = servers.nats().await?;
    let max_in_flight = usize::try_from(args.max_in_flight).unwrap_or(512);
    let mut recorder = Recorder::new(
        "ticker",
        servers.mode(),
        json!({
            "rollouts": args.rollouts,
            "spread_secs": args.spread.as_secs_f64(),
            "burst": args.burst,
            "script_duration_secs": args.script_duration.as_secs_f64(),
            "max_in_flight": args.max_in_flight,
            "commit_batch": args.commit_batch,
            "round_size": args.round_size,
            "namespace": namespace.as_str(),
        }),
    );
    let seeder = Seeder::new(redis.clone());
    let token = crate::run_token();
    let watcher = StepWatcher::start(&nats, &subjects, &namespace).await?;

    // 1. spread
    let spread_ms = i64::try_from(args.spread.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let spread = Wave {
        prefix: format!("spread-{token}"),
        count: args.rollouts,
        spread_ms,
    };
    phase(format!(
        "seeding {} rollouts due over {:?}",
        spread.count, args.spread
    ));
    let spread_first_due = spread.seed(&seeder, &namespace).await?;

    let mut services = None;
    let mut stats = None;
    if servers.is_private() {
        let mut started = InProcess::new(&servers)?;
        let settings = TickerSettings {
            replica_id: Some("loadtest".to_owned()),
            max_in_flight,
            commit_batch: usize::try_from(args.commit_batch).unwrap_or(32),
            batch_size: usize::try_from(args.round_size).unwrap_or(2048),
            ..TickerSettings::default()
        };
        let ticker = started.ticker(settings).await?;
        stats = Some(ticker.stats());
        started.run_ticker(ticker);
        services = Some(started);
    }
    let lead_in = spread_first_due.millis_since(seeder.now().await?);
    if lead_in <= 0 {
        bail!(
            "the set-up overran the first due time by {} ms; use fewer --rollouts",
            -lead_in
        );
    }
    phase(format!(
        "first due in {lead_in} ms; waiting for {} transitions",
        spread.count
    ));
    if let Some(stats) = &stats {
        stats.reset_lag();
    }
    let spread_seen = spread
        .wait_fired(&watcher, spread_first_due, args.spread)
        .await?;
    let spread_result = spread.analyse(&spread_seen, spread_first_due)?;
    let commit_lag = stats.as_ref().map(ticker::TickerStats::snapshot);

    // 2. burst
    let burst_result = if args.burst > 0 {
        let burst = Wave {
            prefix: format!("burst-{token}"),
            count: args.burst,
            spread_ms: 0,
        };
        phase(format!(
            "seeding a burst of {} rollouts due at once",
            burst.count
        ));
        let burst_due = burst.seed(&seeder, &namespace).await?;
        let seen = burst
            .wait_fired(&watcher, burst_due, Duration::ZERO)
            .await?;
        Some(burst.analyse(&seen, burst_due)?)
    } else {
        None
    };
    drop(watcher);
    let final_stats = stats.as_ref().map(ticker::TickerStats::snapshot);
    if let Some(services) = services {
        services.stop().await;
    }

    // 3. bare script calls, same concurrency, record-sized payload
    phase("baseline: bare redis script calls, same concurrency");
    let mut connection = redis.clone();
    let sample = load_rollout(
        &mut connection,
        &Keys::new(&namespace),
        &format!("r-{}-0", spread.prefix),
    )
    .await?
    .context("the first spread rollout is missing")?;
    let payload = rollout_store::encode_record(&sample)?;
    let script = bare_script(
        &redis,
        &format!("ro:{{loadtest-{token}}}:bare"),
        &payload,
        max_in_flight,
        args.script_duration,
    )
    .await?;
    if !servers.is_private() {
        // the rollouts' next steps are due in an hour: keep the cluster from firing them
        let mut connection = redis.clone();
        rollout_store::due::clear(&mut connection, &Keys::new(&namespace))
            .await
            .context("clearing the benchmark's due index")?;
        recorder.note(format!(
            "the benchmark's flags stay in namespace {namespace} of the cluster; its due index was cleared"
        ));
    }

    let offered = f64::from(args.rollouts) * 1000.0 / spread_ms as f64;
    recorder.row(
        Row::new(
            format!(
                "firing lag p99, {} rollouts due over {:.0} s (event seen − due)",
                args.rollouts,
                args.spread.as_secs_f64()
            ),
            spread_result.lag.quantile_ms(0.99),
            "ms",
        )
        .baseline(
            "bare redis script call p99",
            script.latency.quantile_ms(0.99),
        )
        .target(Target::value_at_most(50.0, "≤ 50 ms")),
    );
    recorder.row(
        Row::new("firing lag p50", spread_result.lag.quantile_ms(0.5), "ms").baseline(
            "bare redis script call p50",
            script.latency.quantile_ms(0.5),
        ),
    );
    let sustained = Row::new(
        format!("transitions/s sustained (offered {offered:.0}/s)"),
        spread_result.rate,
        "tr/s",
    )
    .baseline("bare redis script calls/s", script.rate());
    // the offered rate bounds this one; the backlog drain below is the capacity judged
    recorder.row(sustained);
    if let Some(burst) = &burst_result {
        recorder.row(
            Row::new(
                format!(
                    "transitions/s draining a backlog ({} due at once): the leader's capacity",
                    args.burst
                ),
                burst.rate,
                "tr/s",
            )
            .baseline("bare redis script calls/s", script.rate())
            .target(Target::ratio_at_least(0.25, "≥ 0.25× bare script")),
        );
    }
    recorder.detail(
        "spread",
        json!({
            "offered_per_sec": offered,
            "fired": spread_result.fired,
            "transitions_per_sec": spread_result.rate,
            "slowest_second": spread_result.slowest_second,
            "lag": spread_result.lag.summary(),
            "commit_lag_ms": commit_lag.as_ref().map(|snapshot| json!({
                "p50": snapshot.lag_p50_ms, "p99": snapshot.lag_p99_ms,
                "max": snapshot.lag_max_ms, "samples": snapshot.lag_samples,
            })),
        }),
    );
    if let Some(burst) = &burst_result {
        recorder.detail(
            "burst",
            json!({
                "fired": burst.fired,
                "drain_per_sec": burst.rate,
                "lag": burst.lag.summary(),
            }),
        );
    }
    recorder.detail("redis_script", script.summary());
    recorder.detail("record_bytes", payload.len());
    if let Some(stats) = final_stats {
        recorder.detail(
            "ticker",
            json!({
                "transitions": stats.transitions, "fenced": stats.fenced,
                "conflicts": stats.conflicts, "early": stats.early, "errors": stats.errors,
            }),
        );
    }
    if let Some(snapshot) = &commit_lag {
        recorder.note(format!(
            "the in-process ticker's own commit lag (commit redis time − due): p50 {} ms, p99 {} ms, max {} ms",
            snapshot.lag_p50_ms, snapshot.lag_p99_ms, snapshot.lag_max_ms
        ));
    }
    Ok(recorder.finish())
}

/// Rollouts `r-<prefix>-<i>` whose first step ends at `first_due + i × spread / count`.
struct Wave {
    prefix: String,
    count: u32,
    spread_ms: i64,
}

/// What a wave measured.
struct WaveResult {
    fired: u64,
    rate: f64,
    slowest_second: f64,
    lag: Latency,
}

impl Wave {
    fn due_offset_ms(&self, index: u32) -> i64 {
        i64::from(index) * self.spread_ms / i64::from(self.count.max(1))
    }

    /// Seeds the wave; returns the first due time.
    async fn seed(&self, seeder: &Seeder, namespace: &Namespace) -> anyhow::Result<Timestamp> {
        let now = seeder.now().await?;
        // room for the set-up (0.1–0.2 ms per rollout on a 2-core machine, more when it is
        // busy) and the leader's start
        let margin_ms = 4_000 + i64::from(self.count) * 3 / 10;
        let first_due = Timestamp::from_millis(now.as_millis() + margin_ms);
        let started = Instant::now();
        seeder
            .flags_with_rollouts(
                namespace,
                &self.prefix,
                self.count,
                now,
                SEED_CONCURRENCY,
                |index| {
                    let due = first_due.as_millis() + self.due_offset_ms(index);
                    json!({"phases": [
                        {"percentage": 10, "duration": format!("{}ms", (due - now.as_millis()).max(1))},
                        {"percentage": 100, "duration": "1h"},
                    ]})
                },
            )
            .await?;
        phase(format!(
            "seeded {} rollouts in {:.1} s",
            self.count,
            started.elapsed().as_secs_f64()
        ));
        Ok(first_due)
    }

    /// Waits until every rollout of the wave was seen stepping (bounded).
    async fn wait_fired(
        &self,
        watcher: &StepWatcher,
        first_due: Timestamp,
        spread: Duration,
    ) -> anyhow::Result<Vec<StepSeen>> {
        let bar = progress::counter("fired", u64::from(self.count));
        let due_wait = u64::try_from(first_due.as_millis() * 1000 - unix_micros()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_micros(due_wait) + spread + FIRING_PATIENCE;
        let mut mine = Vec::with_capacity(usize::try_from(self.count).unwrap_or(0));
        let mut cursor = 0;
        let marker = format!("r-{}-", self.prefix);
        loop {
            let fresh = watcher.since(cursor);
            cursor += fresh.len();
            mine.extend(
                fresh
                    .into_iter()
                    .filter(|seen| seen.rollout_id.starts_with(&marker)),
            );
            bar.set_position(mine.len() as u64);
            if mine.len() >= usize::try_from(self.count).unwrap_or(usize::MAX) {
                break;
            }
            if Instant::now() > deadline {
                bar.finish_and_clear();
                bail!(
                    "only {} of {} rollouts fired within {:?} of the last due time",
                    mine.len(),
                    self.count,
                    FIRING_PATIENCE
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish_and_clear();
        Ok(mine)
    }

    /// Lag of each first transition and the rates.
    fn analyse(&self, seen: &[StepSeen], first_due: Timestamp) -> anyhow::Result<WaveResult> {
        let marker = format!("r-{}-", self.prefix);
        let first_due_micros = first_due.as_millis() * 1000;
        let mut lag = Latency::new()?;
        let mut fired = vec![false; usize::try_from(self.count).unwrap_or(0)];
        let mut last_arrival = first_due_micros;
        let mut per_second: Vec<u64> = Vec::new();
        for step in seen {
            let Some(index) = step
                .rollout_id
                .strip_prefix(&marker)
                .and_then(|rest| rest.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(slot) = fired.get_mut(usize::try_from(index).unwrap_or(usize::MAX)) else {
                continue;
            };
            if *slot {
                continue;
            }
            *slot = true;
            let due_micros = first_due_micros + self.due_offset_ms(index) * 1000;
            lag.record_micros(u64::try_from(step.arrived_micros - due_micros).unwrap_or(0));
            last_arrival = last_arrival.max(step.arrived_micros);
            let second =
                usize::try_from((step.arrived_micros - first_due_micros) / 1_000_000).unwrap_or(0);
            if per_second.len() <= second {
                per_second.resize(second + 1, 0);
            }
            per_second[second] += 1;
        }
        let fired_count = fired.iter().filter(|fired| **fired).count() as u64;
        let window_secs = ((last_arrival - first_due_micros) as f64 / 1e6).max(1e-3);
        // the last second is partial; the slowest full one while rollouts were due
        let due_seconds = usize::try_from(self.spread_ms / 1000).unwrap_or(0);
        let slowest_second = per_second
            .iter()
            .take(due_seconds.min(per_second.len().saturating_sub(1)))
            .copied()
            .min()
            .map_or(0.0, |count| count as f64);
        Ok(WaveResult {
            fired: fired_count,
            rate: fired_count as f64 / window_secs,
            slowest_second,
            lag,
        })
    }
}
