//! The fault lane of a simulation run: one fault at a time, each healing itself before the
//! next — kill -9 and SIGSTOP/SIGCONT of a ticker (the leader or a follower), a ticker's
//! link to Redis or NATS blackholed or severed, Redis killed and restarted from its AOF or
//! with its data gone (or from an older AOF), NATS restarted, an evaluator process killed and
//! a fresh one started, and a rogue subscriber on `>` or `_INBOX.>` that never reads.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use rollout_core::Timestamp;
use tokio::time::Instant;

use super::invariants::AuditCheck;
use super::ledger::{DataEpoch, SharedLedger};
use super::report::SimReport;
use super::schedule::{AgentSpec, Fault, Op, Planned};
use super::{wait_for_turn, Enabled};
use crate::support::checks::VersionMonitor;
use crate::support::cluster::{wall_clock_now, Cluster, EvaluatorProcess};
use crate::support::proxy::Link;

/// How long the version monitor lets versions go back after Redis lost data: the
/// evaluators notice within their check interval and rebuild.
const VERSION_RESET_GRACE: Duration = Duration::from_secs(5);

/// Whether NATS or Redis is down (an outage), and since when it is back.
#[derive(Clone, Debug, Default)]
pub struct OutageClock(Arc<Mutex<OutageState>>);

#[derive(Debug, Default)]
struct OutageState {
    active: bool,
    last_end: Option<Timestamp>,
}

impl OutageClock {
    fn begin(&self) {
        self.0.lock().expect("outage clock").active = true;
    }

    fn end(&self) {
        let mut state = self.0.lock().expect("outage clock");
        state.active = false;
        state.last_end = Some(wall_clock_now());
    }

    /// `None` during an outage; else when the last one ended (`Some(None)`: never was one).
    pub fn quiet_since(&self) -> Option<Option<Timestamp>> {
        let state = self.0.lock().expect("outage clock");
        (!state.active).then_some(state.last_end)
    }
}

/// What the fault lane acts on.
pub struct FaultLane<'a> {
    pub cluster: &'a mut Cluster,
    pub evaluators: &'a mut [EvaluatorProcess],
    pub agents: &'a [AgentSpec],
    pub epoch: DataEpoch,
    pub ledger: SharedLedger,
    pub versions: &'a VersionMonitor,
    pub outages: OutageClock,
    pub enabled: &'a Enabled,
}

/// What the fault lane leaves to the end of the run.
#[derive(Debug, Default)]
pub struct AfterFaults {
    /// Leadership terms Redis lost with its data (its epoch counter starts again).
    pub terms_lost: u64,
    /// Rollouts whose audits were checked before Redis lost them.
    pub audited: HashSet<String>,
    /// Copies of Redis's AOF taken for restores.
    snapshots: usize,
}

impl FaultLane<'_> {
    /// Injects each fault at its time after `start` (or when the previous one healed),
    /// counting it in `report` by what it was; before Redis loses data, checks the audits it
    /// is about to lose.
    pub async fn run(
        mut self,
        ops: Vec<Planned>,
        start: Instant,
        report: &mut SimReport,
    ) -> AfterFaults {
        let mut after = AfterFaults::default();
        for planned in ops {
            if !wait_for_turn(&planned, start, self.enabled, &self.ledger).await {
                continue;
            }
            let Op::Fault(fault) = &planned.op else {
                continue;
            };
            let began = start.elapsed();
            let what = self.inject(fault, &mut after, report).await;
            println!(
                "[{:>7.1} s] fault: {what} (healed after {} ms, at {})",
                began.as_secs_f64(),
                (start.elapsed() - began).as_millis(),
                wall_clock_now()
            );
            report.counted.fault(&what);
        }
        after
    }

    async fn inject(
        &mut self,
        fault: &Fault,
        after: &mut AfterFaults,
        report: &mut SimReport,
    ) -> String {
        match fault {
            Fault::TickerKill {
                leader,
                pick,
                down_ms,
            } => {
                let (replica, role) = self.pick_ticker(*leader, *pick).await;
                self.cluster.ticker(&replica).process.kill();
                sleep_ms(*down_ms).await;
                self.cluster.ticker(&replica).process.respawn();
                format!("ticker kill -9 ({role})")
            }
            Fault::TickerFreeze {
                leader,
                pick,
                hold_ms,
            } => {
                let (replica, role) = self.pick_ticker(*leader, *pick).await;
                self.cluster
                    .ticker(&replica)
                    .process
                    .signal(Signal::SIGSTOP);
                sleep_ms(*hold_ms).await;
                self.cluster
                    .ticker(&replica)
                    .process
                    .signal(Signal::SIGCONT);
                format!("ticker SIGSTOP ({role})")
            }
            Fault::LinkCut {
                leader,
                pick,
                redis,
                blackhole,
                hold_ms,
            } => {
                let (replica, role) = self.pick_ticker(*leader, *pick).await;
                let link = if *blackhole {
                    Link::Blackhole
                } else {
                    Link::Severed
                };
                let server = if *redis { "redis" } else { "nats" };
                self.set_link(&replica, *redis, link);
                sleep_ms(*hold_ms).await;
                self.set_link(&replica, *redis, Link::Open);
                format!("ticker cut off from {server} ({link:?}, {role})")
            }
            Fault::RedisRestart { keep_data, down_ms } => {
                let lost = !keep_data;
                self.restart_redis(*down_ms, lost, after, report, |dir| {
                    if lost {
                        remove_aof(dir);
                    }
                })
                .await;
                if *keep_data {
                    "redis kill -9 and restart (aof kept)".to_owned()
                } else {
                    "redis kill -9 and restart (data lost)".to_owned()
                }
            }
            Fault::RedisRestoreOlder { age_ms, down_ms } => {
                after.snapshots += 1;
                let snapshot = self
                    .cluster
                    .dir
                    .path()
                    .join(format!("aof-snapshot-{}", after.snapshots));
                copy_dir(&aof_dir(self.cluster.redis.dir()), &snapshot);
                sleep_ms(*age_ms).await;
                self.restart_redis(*down_ms, true, after, report, |dir| {
                    remove_aof(dir);
                    copy_dir(&snapshot, &aof_dir(dir));
                })
                .await;
                "redis restarted from an older aof".to_owned()
            }
            Fault::NatsRestart => {
                self.outages.begin();
                let nats = &self.cluster.nats;
                tokio::task::block_in_place(|| nats.restart()).expect("nats restarts");
                self.outages.end();
                "nats restart".to_owned()
            }
            Fault::EvaluatorReplace { which, down_ms } => {
                let count = self.evaluators.len();
                let evaluator = &mut self.evaluators[which % count];
                evaluator.kill();
                sleep_ms(*down_ms).await;
                evaluator.restart().await;
                "evaluator kill -9, a fresh one started".to_owned()
            }
            Fault::RogueSubscriber {
                inbox_only,
                hold_ms,
            } => {
                let subject = if *inbox_only { "_INBOX.>" } else { ">" };
                let rogue = async_nats::connect(self.cluster.nats.url())
                    .await
                    .expect("the rogue connects");
                // subscribed, and never read: the messages pile up in the client
                let subscription = rogue
                    .subscribe(subject.to_owned())
                    .await
                    .expect("the rogue subscribes");
                rogue.flush().await.expect("flush");
                sleep_ms(*hold_ms).await;
                drop(subscription);
                drop(rogue);
                format!("rogue subscriber on `{subject}` that never reads")
            }
        }
    }

    /// The leader (when `leader` and one leads), else a follower picked by `pick`.
    async fn pick_ticker(&self, leader: bool, pick: usize) -> (String, &'static str) {
        let leading = self.cluster.leader().await.map(|(replica, _)| replica);
        if let (true, Some(replica)) = (leader, &leading) {
            return (replica.clone(), "leader");
        }
        let followers: Vec<&String> = self
            .cluster
            .tickers
            .iter()
            .map(|ticker| &ticker.replica)
            .filter(|replica| Some(*replica) != leading.as_ref())
            .collect();
        match followers.get(pick % followers.len().max(1)) {
            Some(replica) => ((*replica).clone(), "follower"),
            None => (
                leading.unwrap_or_else(|| self.cluster.tickers[0].replica.clone()),
                "leader",
            ),
        }
    }

    fn set_link(&mut self, replica: &str, redis: bool, link: Link) {
        let ticker = self.cluster.ticker(replica);
        let proxy = if redis {
            ticker.redis_proxy.as_ref()
        } else {
            ticker.nats_proxy.as_ref()
        };
        proxy.expect("tickers run behind proxies").set(link);
    }

    /// Kills Redis, lets `prepare` change its data folder, restarts it after `down_ms`;
    /// when `loses_data`, first checks the audits about to go, then marks the data epoch,
    /// the ledger and the version monitor.
    async fn restart_redis(
        &mut self,
        down_ms: u64,
        loses_data: bool,
        after: &mut AfterFaults,
        report: &mut SimReport,
        prepare: impl FnOnce(&Path),
    ) {
        if loses_data {
            let ledger = self.ledger.lock().expect("ledger").clone();
            AuditCheck {
                cluster: self.cluster,
                ledger: &ledger,
                agents: self.agents,
                finished_only: true,
                epoch: self.epoch.now(),
            }
            .run(
                &mut after.audited,
                &mut report.counted,
                &mut report.findings,
            )
            .await;
            after.terms_lost += self.cluster.epoch_counter().await;
        }
        self.outages.begin();
        if loses_data {
            self.epoch.advance();
            self.versions.data_lost(VERSION_RESET_GRACE);
        }
        self.cluster.redis.kill().expect("redis killed");
        prepare(self.cluster.redis.dir());
        sleep_ms(down_ms).await;
        let redis = &self.cluster.redis;
        tokio::task::block_in_place(|| redis.restart()).expect("redis restarts");
        self.cluster.wait_redis().await;
        if loses_data {
            self.epoch.advance();
            self.ledger
                .lock()
                .expect("ledger")
                .data_losses
                .push(wall_clock_now());
            self.versions.data_lost(VERSION_RESET_GRACE);
        }
        self.outages.end();
    }
}

async fn sleep_ms(millis: u64) {
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

fn aof_dir(redis_dir: &Path) -> std::path::PathBuf {
    redis_dir.join("appendonlydir")
}

fn remove_aof(redis_dir: &Path) {
    let dir = aof_dir(redis_dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the aof");
    }
}

/// Copies the files of `from` (a flat folder, as Redis's AOF folder is) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's folder");
    for entry in std::fs::read_dir(from).expect("read the aof folder") {
        let entry = entry.expect("aof folder entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy an aof file");
    }
}
