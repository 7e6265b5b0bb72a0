//! A private Redis Cluster: `redis-server --cluster-enabled yes` processes
//! (each a [`RedisServer`] with its own dir, port and cluster bus port),
//! joined by `redis-cli --cluster create`, reported ready only once every
//! node says `cluster_state:ok` with all 16384 slots served and agrees on
//! who serves them; plus the questions a fault test asks (who masters a
//! key's slot, who the current masters are) and a wait for a replica to
//! take over a killed master's slots.

use std::fmt::Write as _;
use std::fs::File;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::binary::cached_binary;
use crate::cluster_support::{
    distinct_free_ports, not_ready, poll_until, start_side_by_side, Waiting,
};
use crate::error::{Result, TestkitError};
use crate::port::PORT_ATTEMPTS;
use crate::redis::{RedisOptions, RedisServer};
use crate::resp::RedisReply;

/// Name used in messages.
const SERVER: &str = "redis-server";

/// The binary that joins the nodes into a cluster.
const REDIS_CLI: &str = "redis-cli";

/// Every Redis Cluster has this many hash slots.
pub const REDIS_CLUSTER_SLOTS: u32 = 16384;

/// The fewest masters `redis-cli --cluster create` accepts.
pub const MIN_REDIS_CLUSTER_MASTERS: usize = 3;

/// Default `cluster-node-timeout`: how long a node may be unreachable
/// before it is failed over (short, so failover tests stay fast).
pub const DEFAULT_REDIS_NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// Options for [`RedisCluster::start_with`].
#[derive(Debug, Clone)]
pub struct RedisClusterOptions {
    /// How many masters share the slots (at least 3). Default 3.
    pub masters: usize,
    /// How many replicas each master gets. Default 0.
    pub replicas_per_master: usize,
    /// `cluster-node-timeout`. Default [`DEFAULT_REDIS_NODE_TIMEOUT`].
    pub node_timeout: Duration,
    /// Options for every node: `appendonly` and `extra_config` apply (the
    /// cluster's own lines follow `extra_config`); `password` and `user`
    /// are not supported. Its `startup_timeout` bounds each node's start,
    /// the cluster's creation and every wait that has no timeout of its
    /// own.
    pub node: RedisOptions,
}

impl Default for RedisClusterOptions {
    fn default() -> Self {
        RedisClusterOptions {
            masters: MIN_REDIS_CLUSTER_MASTERS,
            replicas_per_master: 0,
            node_timeout: DEFAULT_REDIS_NODE_TIMEOUT,
            node: RedisOptions::default(),
        }
    }
}

impl RedisClusterOptions {
    /// Sets the number of masters.
    pub fn masters(mut self, count: usize) -> Self {
        self.masters = count;
        self
    }

    /// Sets the number of replicas per master.
    pub fn replicas_per_master(mut self, count: usize) -> Self {
        self.replicas_per_master = count;
        self
    }

    /// Sets `cluster-node-timeout`.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Sets the options every node starts with.
    pub fn node(mut self, options: RedisOptions) -> Self {
        self.node = options;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.masters < MIN_REDIS_CLUSTER_MASTERS {
            return Err(TestkitError::InvalidOptions(format!(
                "a redis cluster needs at least {MIN_REDIS_CLUSTER_MASTERS} masters, not {}",
                self.masters
            )));
        }
        if self.node.password.is_some() || self.node.user.is_some() {
            return Err(TestkitError::InvalidOptions(
                "RedisCluster does not support a password or ACL user".into(),
            ));
        }
        if self.node_timeout < Duration::from_millis(1) {
            return Err(TestkitError::InvalidOptions(
                "the redis cluster node timeout must be at least 1 ms".into(),
            ));
        }
        Ok(())
    }
}

/// A Redis Cluster owned by the test. Dropping it kills every node and
/// removes their dirs.
///
/// Each node is a [`RedisServer`] (so `kill`, `pause`, `restart`,
/// `command`, ... work per node); a restarted node keeps its port, bus
/// port, dir and `nodes.conf`, so it rejoins with its node id (a master
/// whose slots were taken over comes back as a replica).
///
/// `redis-cli` is found like the servers (`ROLLOUT_REDIS_CLI_BIN`, then
/// `.tools/bin`, then `PATH`; see [`find_binary`](crate::find_binary)).
///
/// ```no_run
/// use std::time::Duration;
/// use rollout_testkit::{RedisCluster, RedisClusterOptions};
///
/// # fn main() -> Result<(), rollout_testkit::TestkitError> {
/// let cluster = RedisCluster::start_with(RedisClusterOptions::default().replicas_per_master(1))?;
/// let owner = cluster.node_for_key("{user:1}:name")?;
/// owner.kill()?; // SIGKILL the master of that slot
/// cluster.wait_for_failover(owner, Duration::from_secs(20))?; // its replica serves it now
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    node_ids: Vec<String>,
    bus_ports: Vec<u16>,
    options: RedisClusterOptions,
}

impl RedisCluster {
    /// Starts 3 masters without replicas and waits until the cluster is
    /// ok.
    pub fn start() -> Result<RedisCluster> {
        RedisCluster::start_with(RedisClusterOptions::default())
    }

    /// Starts `masters × (1 + replicas_per_master)` nodes concurrently,
    /// joins them with `redis-cli --cluster create`, and waits until
    /// every node reports `cluster_state:ok` with all 16384 slots served,
    /// all nodes agree on the slot owners and every replica's link to its
    /// master is up. When a bus port turns out to be taken, the whole
    /// cluster is started again on new ports.
    pub fn start_with(options: RedisClusterOptions) -> Result<RedisCluster> {
        options.validate()?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match RedisCluster::launch(&options) {
                Ok(cluster) => {
                    cluster.create()?;
                    cluster.wait_until_ok(options.node.startup_timeout)?;
                    return RedisCluster::with_node_ids(cluster);
                }
                // Every client port a node tried was refused: its bus port
                // (fixed in its config) is the one taken.
                Err(error @ TestkitError::PortsExhausted { .. }) => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(TestkitError::PortsExhausted {
            server: SERVER,
            attempts: PORT_ATTEMPTS,
            last: Box::new(last.unwrap_or(TestkitError::NotRunning { server: SERVER })),
        })
    }

    /// Starts the nodes (not yet joined) on fresh bus ports.
    fn launch(options: &RedisClusterOptions) -> Result<RedisCluster> {
        let count = options.masters * (1 + options.replicas_per_master);
        let bus_ports = distinct_free_ports(count)?;
        let node_options: Vec<RedisOptions> = bus_ports
            .iter()
            .map(|&bus_port| {
                let extra = node_config(
                    options.node.extra_config.as_deref(),
                    options.node_timeout,
                    bus_port,
                );
                options.node.clone().extra_config(extra)
            })
            .collect();
        let started = start_side_by_side(node_options, RedisServer::start_with, "redis-server");
        // Any failure drops the nodes that did start, which kills them.
        let nodes = started.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(RedisCluster {
            nodes,
            node_ids: Vec::new(),
            bus_ports,
            options: options.clone(),
        })
    }

    /// Runs `redis-cli --cluster create` over every node (the first
    /// `masters` become masters), its output going to
    /// `redis-cli-create.log` in the first node's dir.
    fn create(&self) -> Result<()> {
        let binary = cached_binary(REDIS_CLI)?;
        let log_path = self.nodes[0].dir().join("redis-cli-create.log");
        let log = File::create(&log_path)
            .map_err(TestkitError::io(format!("creating {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(TestkitError::io("duplicating the log file handle"))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(node.addr().to_string());
        }
        cmd.arg("--cluster-replicas")
            .arg(self.options.replicas_per_master.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child = cmd
            .spawn()
            .map_err(TestkitError::io(format!("spawning {cmd:?}")))?;
        let timeout = self.options.node.startup_timeout;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(not_ready(
                        REDIS_CLI,
                        self.nodes[0].port(),
                        &log_path,
                        format!("`redis-cli --cluster create` did not finish within {timeout:?}"),
                    ));
                }
                Err(source) => {
                    return Err(TestkitError::Io {
                        context: format!("waiting for {}", binary.display()),
                        source,
                    })
                }
            }
        };
        if !status.success() {
            return Err(not_ready(
                REDIS_CLI,
                self.nodes[0].port(),
                &log_path,
                format!("`redis-cli --cluster create` failed ({status})"),
            ));
        }
        Ok(())
    }

    /// Asks every node for its id (`CLUSTER MYID`).
    fn with_node_ids(mut cluster: RedisCluster) -> Result<RedisCluster> {
        let ids = cluster
            .nodes
            .iter()
            .map(|node| text_reply(node, &["CLUSTER", "MYID"]))
            .collect::<Result<Vec<_>>>()?;
        cluster.node_ids = ids;
        Ok(cluster)
    }

    /// Waits until every live node (running and not paused) reports
    /// `cluster_state:ok` with all 16384 slots assigned and ok, knows
    /// every node, agrees with the others on who serves each slot, and,
    /// if it is a replica, has its link to its master up.
    pub fn wait_until_ok(&self, timeout: Duration) -> Result<()> {
        poll_until(timeout, || self.check_ok(None))
            .map_err(|waiting| self.timed_out(waiting, "not ok", timeout))
    }

    /// Waits until the cluster has failed over `killed` (a node of this
    /// cluster that was killed or paused): every live node flags it
    /// `fail`, none maps a slot to it any more (a replica was promoted to
    /// serve its slots), and the cluster is ok again as for
    /// [`wait_until_ok`](Self::wait_until_ok). Fails at once if `killed`
    /// still runs unpaused or is not a node of this cluster.
    pub fn wait_for_failover(&self, killed: &RedisServer, timeout: Duration) -> Result<()> {
        let index = self.index_of(killed)?;
        if self.is_live(index) {
            return Err(TestkitError::InvalidOptions(format!(
                "redis node 127.0.0.1:{} still runs: kill or pause it before waiting for its failover",
                killed.port()
            )));
        }
        poll_until(timeout, || self.check_ok(Some(index))).map_err(|waiting| {
            self.timed_out(
                waiting,
                &format!("did not fail over node 127.0.0.1:{}", killed.port()),
                timeout,
            )
        })
    }

    /// One check of the condition [`wait_until_ok`](Self::wait_until_ok)
    /// waits for; with `failed`, also that node `failed` is flagged `fail`
    /// and serves no slot.
    fn check_ok(&self, failed: Option<usize>) -> std::result::Result<(), Waiting> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| self.is_live(index))
            .collect();
        let Some(&first) = live.first() else {
            return Err(Waiting::on(0, "no node is running"));
        };
        let mut agreed: Option<(Topology, usize)> = None;
        for &index in &live {
            let node = &self.nodes[index];
            let here = format!("127.0.0.1:{}", node.port());
            let info = text_reply(node, &["CLUSTER", "INFO"])
                .map_err(|e| Waiting::on(index, e.to_string()))?;
            for (field, want) in [
                ("cluster_state", "ok".to_owned()),
                ("cluster_slots_assigned", REDIS_CLUSTER_SLOTS.to_string()),
                ("cluster_slots_ok", REDIS_CLUSTER_SLOTS.to_string()),
                ("cluster_known_nodes", self.nodes.len().to_string()),
            ] {
                let got = info_field(&info, field);
                if got != Some(want.as_str()) {
                    return Err(Waiting::on(
                        index,
                        format!(
                            "{here} reports {field}:{} (want {want})",
                            got.unwrap_or("?")
                        ),
                    ));
                }
            }
            let view = parse_cluster_nodes(
                &text_reply(node, &["CLUSTER", "NODES"])
                    .map_err(|e| Waiting::on(index, e.to_string()))?,
            )
            .map_err(|e| Waiting::on(index, format!("CLUSTER NODES of {here}: {e}")))?;
            if let Some(failed) = failed {
                self.check_failed_over(index, failed, &view)?;
            }
            let myself = view
                .iter()
                .find(|line| line.has_flag("myself"))
                .ok_or_else(|| Waiting::on(index, format!("{here} lists no `myself` node")))?;
            if myself.has_flag("slave") {
                let replication = text_reply(node, &["INFO", "replication"])
                    .map_err(|e| Waiting::on(index, e.to_string()))?;
                let link = info_field(&replication, "master_link_status");
                if link != Some("up") {
                    return Err(Waiting::on(
                        index,
                        format!(
                            "replica {here} has master_link_status:{}",
                            link.unwrap_or("?")
                        ),
                    ));
                }
            }
            let seen_here = topology(&view);
            match &agreed {
                None => agreed = Some((seen_here, index)),
                Some((seen, by)) if *seen != seen_here => {
                    let there = format!("127.0.0.1:{}", self.nodes[*by].port());
                    let difference = seen
                        .iter()
                        .zip(&seen_here)
                        .find(|(theirs, ours)| theirs != ours)
                        .map(|(theirs, ours)| {
                            format!("{here} sees (node, master, slots) {ours:?} where {there} sees {theirs:?}")
                        })
                        .unwrap_or_else(|| {
                            format!(
                                "{here} lists {} nodes, {there} lists {}",
                                seen_here.len(),
                                seen.len()
                            )
                        });
                    return Err(Waiting::on(index, difference));
                }
                Some(_) => {}
            }
        }
        agreed
            .map(drop)
            .ok_or_else(|| Waiting::on(first, "no node answered"))
    }

    /// Whether `view` (node `index`'s `CLUSTER NODES`) shows node `failed`
    /// flagged `fail` and serving no slot.
    fn check_failed_over(
        &self,
        index: usize,
        failed: usize,
        view: &[NodeLine],
    ) -> std::result::Result<(), Waiting> {
        let here = format!("127.0.0.1:{}", self.nodes[index].port());
        let failed_port = self.nodes[failed].port();
        let line = view
            .iter()
            .find(|line| line.id == self.node_ids[failed])
            .ok_or_else(|| {
                Waiting::on(
                    index,
                    format!("{here} does not list node 127.0.0.1:{failed_port}"),
                )
            })?;
        if !line.has_flag("fail") {
            return Err(Waiting::on(
                index,
                format!(
                    "{here} does not flag 127.0.0.1:{failed_port} as failed yet (flags {})",
                    line.flags.join(",")
                ),
            ));
        }
        if let Some(&(start, end)) = line.slots.first() {
            return Err(Waiting::on(
                index,
                format!(
                    "{here} still maps slots {start}-{end} to 127.0.0.1:{failed_port} (no replica took them over yet)"
                ),
            ));
        }
        Ok(())
    }

    /// The error for a wait that timed out, naming the node that held it up.
    fn timed_out(&self, waiting: Waiting, what: &str, timeout: Duration) -> TestkitError {
        let node = &self.nodes[waiting.node];
        not_ready(
            SERVER,
            node.port(),
            node.log_path(),
            format!(
                "redis cluster {what} within {timeout:?}: {}",
                waiting.reason
            ),
        )
    }

    /// The nodes, in start order (the first `masters` were created as
    /// masters; failovers may have changed roles since).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below `nodes().len()`.
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// The cluster node id of node `index` (kept across restarts).
    ///
    /// # Panics
    ///
    /// If `index` is not below `nodes().len()`.
    pub fn node_id(&self, index: usize) -> &str {
        &self.node_ids[index]
    }

    /// The cluster bus port (`cluster-port`) of node `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below `nodes().len()`.
    pub fn bus_port(&self, index: usize) -> u16 {
        self.bus_ports[index]
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &RedisClusterOptions {
        &self.options
    }

    /// Each node's URL, `redis://127.0.0.1:PORT`, in node order (seeds
    /// for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes that are masters now and not flagged failing, in node
    /// order, as the first live node sees it (`CLUSTER NODES`).
    pub fn masters(&self) -> Result<Vec<&RedisServer>> {
        let view = self.live_view()?;
        Ok(self.nodes_where(&view, |line| {
            line.has_flag("master") && !line.has_flag("fail") && !line.has_flag("fail?")
        }))
    }

    /// The replicas of `master` now, in node order, as the first live node
    /// sees it.
    pub fn replicas_of(&self, master: &RedisServer) -> Result<Vec<&RedisServer>> {
        let master_id = &self.node_ids[self.index_of(master)?];
        let view = self.live_view()?;
        Ok(self.nodes_where(&view, |line| {
            line.has_flag("slave") && line.master_id.as_deref() == Some(master_id.as_str())
        }))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT` on the first live node).
    pub fn keyslot(&self, key: &str) -> Result<u16> {
        let node = self.first_live()?;
        match node.command(&["CLUSTER", "KEYSLOT", key])? {
            RedisReply::Integer(slot) => u16::try_from(slot).map_err(|_| {
                TestkitError::Protocol(format!("CLUSTER KEYSLOT answered slot {slot}"))
            }),
            other => Err(TestkitError::Protocol(format!(
                "CLUSTER KEYSLOT answered {other:?}"
            ))),
        }
    }

    /// The master serving the slot of `key` now, as the first live node
    /// sees it (`CLUSTER KEYSLOT`, then `CLUSTER NODES`).
    pub fn node_for_key(&self, key: &str) -> Result<&RedisServer> {
        let slot = self.keyslot(key)?;
        let view = self.live_view()?;
        let owner = view
            .iter()
            .find(|line| {
                line.has_flag("master")
                    && line
                        .slots
                        .iter()
                        .any(|&(start, end)| (start..=end).contains(&slot))
            })
            .ok_or_else(|| TestkitError::Protocol(format!("no master serves slot {slot}")))?;
        self.nodes
            .iter()
            .find(|node| node.port() == owner.port)
            .ok_or_else(|| {
                TestkitError::Protocol(format!(
                    "slot {slot} is served by 127.0.0.1:{}, not a node of this cluster",
                    owner.port
                ))
            })
    }

    /// The nodes whose line in `view` satisfies `keep`, in node order.
    fn nodes_where(
        &self,
        view: &[NodeLine],
        keep: impl Fn(&NodeLine) -> bool,
    ) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|node| {
                view.iter()
                    .any(|line| line.port == node.port() && keep(line))
            })
            .collect()
    }

    /// `CLUSTER NODES` of the first live node, parsed.
    fn live_view(&self) -> Result<Vec<NodeLine>> {
        let node = self.first_live()?;
        parse_cluster_nodes(&text_reply(node, &["CLUSTER", "NODES"])?).map_err(|e| {
            TestkitError::Protocol(format!("CLUSTER NODES of 127.0.0.1:{}: {e}", node.port()))
        })
    }

    /// The first node that runs and is not paused.
    fn first_live(&self) -> Result<&RedisServer> {
        (0..self.nodes.len())
            .find(|&index| self.is_live(index))
            .map(|index| &self.nodes[index])
            .ok_or(TestkitError::NotRunning { server: SERVER })
    }

    fn is_live(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        node.is_running() && !node.is_paused()
    }

    /// The index of `node` among this cluster's nodes.
    fn index_of(&self, node: &RedisServer) -> Result<usize> {
        self.nodes
            .iter()
            .position(|candidate| std::ptr::eq(candidate, node))
            .ok_or_else(|| {
                TestkitError::InvalidOptions(format!(
                    "redis-server 127.0.0.1:{} is not a node of this cluster",
                    node.port()
                ))
            })
    }
}

/// The cluster lines of a node's `redis.conf`, after the caller's
/// `extra_config`.
fn node_config(base: Option<&str>, node_timeout: Duration, bus_port: u16) -> String {
    let mut text = String::new();
    if let Some(base) = base {
        text.push_str(base);
        text.push('\n');
    }
    text.push_str("cluster-enabled yes\ncluster-config-file nodes.conf\n");
    // a master waits this long (5 s by default) for more replicas before a
    // diskless full sync; here every replica arrives at once
    text.push_str("repl-diskless-sync-delay 0\n");
    let _ = writeln!(text, "cluster-node-timeout {}", node_timeout.as_millis());
    let _ = writeln!(text, "cluster-port {bus_port}");
    text
}

/// Runs `args` on `node` and returns its text reply, failing on an error
/// reply.
fn text_reply(node: &RedisServer, args: &[&str]) -> Result<String> {
    match node.command(args)? {
        RedisReply::Error(e) => Err(TestkitError::Protocol(format!(
            "{} on 127.0.0.1:{} answered -{e}",
            args.join(" "),
            node.port()
        ))),
        reply => reply.as_text().ok_or_else(|| {
            TestkitError::Protocol(format!(
                "{} on 127.0.0.1:{} answered {reply:?}",
                args.join(" "),
                node.port()
            ))
        }),
    }
}

/// The value of `name:value` in an `INFO` or `CLUSTER INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The master's id, for a replica.
    master_id: Option<String>,
    /// Served slot ranges, inclusive (migrating/importing marks skipped).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Who replicates whom and who serves which slots, as one node sees it:
/// (node id, its master's id if it is a replica, its slot ranges), by id.
type Topology = Vec<(String, Option<String>, Vec<(u16, u16)>)>;

/// The [`Topology`] of `view`.
fn topology(view: &[NodeLine]) -> Topology {
    let mut topology: Topology = view
        .iter()
        .map(|line| (line.id.clone(), line.master_id.clone(), line.slots.clone()))
        .collect();
    topology.sort();
    topology
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags>
/// <master> <ping-sent> <pong-recv> <config-epoch> <link-state> <slot>...`.
fn parse_cluster_nodes(text: &str) -> std::result::Result<Vec<NodeLine>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(format!("short line {line:?}"));
            }
            let address = fields[1].split(['@', ',']).next().unwrap_or_default();
            let port = address
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .ok_or_else(|| format!("no port in {:?}", fields[1]))?;
            let slots = fields[8..]
                .iter()
                .filter(|slot| !slot.starts_with('['))
                .map(|slot| {
                    let (start, end) = slot.split_once('-').unwrap_or((slot, slot));
                    match (start.parse(), end.parse()) {
                        (Ok(start), Ok(end)) => Ok((start, end)),
                        _ => Err(format!("bad slot range {slot:?}")),
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(NodeLine {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
e7d1 127.0.0.1:30004@40004, slave 07c3 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002, master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 disconnected
07c3 127.0.0.1:30001@40001,host myself,master - 0 0 1 connected 0-5460 10923-16383 [93-<-292f]
";

    #[test]
    fn parses_cluster_nodes() {
        let view = parse_cluster_nodes(NODES).expect("parses");
        assert_eq!(view.len(), 4);
        assert_eq!(view[0].port, 30004);
        assert_eq!(view[0].master_id.as_deref(), Some("07c3"));
        assert!(view[0].has_flag("slave"));
        assert!(view[2].has_flag("fail"));
        assert!(view[2].slots.is_empty());
        assert_eq!(view[3].port, 30001);
        assert!(view[3].has_flag("myself"));
        assert_eq!(view[3].master_id, None);
        assert_eq!(view[3].slots, vec![(0, 5460), (10923, 16383)]);
        assert!(parse_cluster_nodes("abc 127.0.0.1:1@2 master").is_err());
    }

    #[test]
    fn topology_is_sorted_by_node_id() {
        let view = parse_cluster_nodes(NODES).expect("parses");
        assert_eq!(
            topology(&view),
            vec![
                ("07c3".to_owned(), None, vec![(0, 5460), (10923, 16383)]),
                ("292f".to_owned(), None, vec![]),
                ("67ed".to_owned(), None, vec![(5461, 10922)]),
                ("e7d1".to_owned(), Some("07c3".to_owned()), vec![]),
            ]
        );
    }

    #[test]
    fn node_config_enables_cluster_mode_after_the_callers_lines() {
        let text = node_config(Some("appendonly yes"), Duration::from_millis(1500), 40001);
        assert!(
            text.starts_with("appendonly yes\ncluster-enabled yes\n"),
            "{text}"
        );
        assert!(text.contains("cluster-node-timeout 1500\n"), "{text}");
        assert!(text.contains("cluster-port 40001\n"), "{text}");
    }

    #[test]
    fn rejects_unsupported_options() {
        assert!(RedisClusterOptions::default()
            .masters(2)
            .validate()
            .is_err());
        assert!(RedisClusterOptions::default()
            .node(RedisOptions::default().password("p"))
            .validate()
            .is_err());
        assert!(RedisClusterOptions::default().validate().is_ok());
    }
}
