//! The compose cluster as a system under test: `deploy/compose/images.sh` builds the
//! registry-free image from the binaries this workspace built, and
//! `deploy/compose/compose.sh` brings up `deploy/docker-compose.yml` with
//! `deploy/compose/offline.yml` (that image everywhere) and `deploy/compose/observe.yml`
//! (Redis and every NATS node published on loopback), as a project of its own with free host
//! ports and `deploy/.env.example`'s passwords. The test talks to it as its users do — the
//! operator's commands and events, the prod SDK user's evaluations, each evaluator's OFREP
//! with a bearer token — and reads the committed state from Redis as the `planner` user
//! (only reads: records, indexes, audits and the fleet, which the `evaluator` user may not
//! all read).
//! Faults are Docker's: `kill` (SIGKILL), `start`, `pause` (the cgroup freezer), network
//! `disconnect` / `connect`.
//!
//! With [`RedisTopology::Cluster`] (or `ROLLOUT_COMPOSE_REDIS_CLUSTER=1` for the tests that
//! take the topology from the environment) `deploy/compose/redis-cluster.yml` replaces the
//! single Redis by a Redis Cluster of three masters with a replica each, and
//! `deploy/compose/observe-redis-cluster.yml` publishes its six nodes on loopback: the
//! observer then reads through a cluster connection that maps the names the nodes announce
//! (`redis-1:6379` …) to those ports, so it follows slots and fail-overs as the services do.
//!
//! [`engine`] says whether a Docker engine and a compose tool are there; without them the
//! tests say so and pass (CI machines have both). `ROLLOUT_COMPOSE_KEEP=1` leaves the
//! cluster running after the test for a look.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rollout_core::Timestamp;
use rollout_runtime::config::NatsSettings;
use rollout_sandbox::oracle::Oracle;
use rollout_sdk::{CommandClient, Namespace};
use rollout_store::redis_time;
use rollout_store::Connection;
use rollout_wire::cluster::MemberInfo;
use rollout_wire::subjects::Subjects;
use tempfile::TempDir;

use super::checks::Replica;
use super::cluster::{nats_settings, redis_settings, EventLog, Login};
use super::committed::CommittedReader;
use super::NS;

/// The evaluators of the compose file.
pub const EVALUATORS: [&str; 3] = ["evaluator-1", "evaluator-2", "evaluator-3"];
/// The tickers of the compose file.
pub const TICKERS: [&str; 3] = ["ticker-1", "ticker-2", "ticker-3"];
/// The ticker lease of the shipped configuration (the ticker's default).
pub const LEASE: Duration = Duration::from_secs(2);
/// The nodes of the Redis Cluster variant (`deploy/compose/redis-cluster.yml`).
pub const REDIS_NODES: [&str; 6] = [
    "redis-1", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6",
];

/// Which Redis the cluster runs: the base file's single server, or the Redis Cluster
/// overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    Single,
    Cluster,
}

impl RedisTopology {
    /// `Cluster` when `ROLLOUT_COMPOSE_REDIS_CLUSTER=1` (as `deploy/compose/test.sh
    /// --redis-cluster` sets it), else `Single`.
    pub fn from_env() -> RedisTopology {
        if std::env::var("ROLLOUT_COMPOSE_REDIS_CLUSTER").as_deref() == Ok("1") {
            RedisTopology::Cluster
        } else {
            RedisTopology::Single
        }
    }
}

/// One node of the Redis Cluster as `CLUSTER NODES` describes it.
#[derive(Clone, Debug)]
pub struct RedisNode {
    /// The service (the hostname it announces).
    pub name: String,
    pub id: String,
    pub master: bool,
    /// Flagged `fail` (or `fail?`) by the node asked.
    pub failing: bool,
    /// The master it replicates (its id), for a replica.
    pub master_id: Option<String>,
    /// Slot ranges it serves, for a master.
    pub slots: Vec<(u16, u16)>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// `Ok` when a Docker engine answers and a compose tool is installed, else why not.
pub fn engine() -> Result<(), String> {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map_err(|error| format!("docker is not installed ({error})"))?;
    if !info.status.success() {
        return Err(format!(
            "no Docker engine answers: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|output| output.status.success());
    let standalone = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !plugin && !standalone {
        return Err("neither `docker compose` nor `docker-compose` is installed".to_owned());
    }
    Ok(())
}

/// `deploy/.env.example`: variable → value.
pub fn env_example() -> BTreeMap<String, String> {
    std::fs::read_to_string(root().join("deploy/.env.example"))
        .expect("deploy/.env.example")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn free_port() -> u16 {
    rollout_testkit::free_port().expect("a free port")
}

/// The host ports the cluster is published on.
#[derive(Clone, Debug)]
pub struct Ports {
    pub nats: [u16; 3],
    pub redis: u16,
    /// The Redis Cluster's nodes, in [`REDIS_NODES`] order (published with that topology).
    pub redis_nodes: [u16; 6],
    pub evaluators: [u16; 3],
    pub console: u16,
    pub traces: u16,
}

impl Ports {
    /// Free ports for everything the cluster publishes.
    fn pick() -> Ports {
        Ports {
            nats: [free_port(), free_port(), free_port()],
            redis: free_port(),
            redis_nodes: [
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
            ],
            evaluators: [free_port(), free_port(), free_port()],
            console: free_port(),
            traces: free_port(),
        }
    }

    /// Writes the project's `.env`: deploy/.env.example's passwords, the project name, the
    /// offline image and these ports.
    fn write_env(&self, root: &Path, project: &str, env_file: &Path) {
        let mut env_text =
            std::fs::read_to_string(root.join("deploy/.env.example")).expect("deploy/.env.example");
        for (variable, value) in [
            ("COMPOSE_PROJECT_NAME", project.to_owned()),
            ("ROLLOUT_OFFLINE_IMAGE", "rollout-offline:test".to_owned()),
            ("ROLLOUT_NATS_PORT", self.nats[0].to_string()),
            ("ROLLOUT_NATS_2_PORT", self.nats[1].to_string()),
            ("ROLLOUT_NATS_3_PORT", self.nats[2].to_string()),
            ("ROLLOUT_NATS_MONITOR_PORT", free_port().to_string()),
            ("ROLLOUT_REDIS_PORT", self.redis.to_string()),
            ("ROLLOUT_EVALUATOR_1_PORT", self.evaluators[0].to_string()),
            ("ROLLOUT_EVALUATOR_2_PORT", self.evaluators[1].to_string()),
            ("ROLLOUT_EVALUATOR_3_PORT", self.evaluators[2].to_string()),
            ("ROLLOUT_CONSOLE_PORT", self.console.to_string()),
            ("ROLLOUT_TRACES_PORT", self.traces.to_string()),
        ] {
            env_text.push_str(&format!("\n{variable}={value}\n"));
        }
        for (index, port) in self.redis_nodes.iter().enumerate() {
            env_text.push_str(&format!("ROLLOUT_REDIS_{}_PORT={port}\n", index + 1));
        }
        std::fs::write(env_file, env_text).expect("env file");
    }
}

/// Attempts at `compose up` when a published port was taken between picking and binding.
const UP_ATTEMPTS: u32 = 3;

/// A running compose cluster; `docker compose down -v` when dropped.
pub struct ComposeCluster {
    project: String,
    env_file: PathBuf,
    _dir: TempDir,
    pub topology: RedisTopology,
    pub ports: Ports,
    pub passwords: BTreeMap<String, String>,
    /// Connected as the operator: commands, queries, events, cluster pings.
    pub operator: async_nats::Client,
    pub commands: CommandClient,
    /// Connected as the prod SDK user: evaluations and fleet calls of namespace prod.
    pub sdk: async_nats::Client,
    /// Connected as the `planner` Redis user, only to read the committed state (a cluster
    /// connection with [`RedisTopology::Cluster`]).
    pub redis: Connection,
    /// Every change event of the namespace, as the operator receives them.
    pub events: EventLog,
}

impl ComposeCluster {
    /// Builds the image (binaries of the dev profile, built if stale), starts the cluster as
    /// project `rollout-<name>` with the Redis [`RedisTopology::from_env`] names, waits until
    /// every health check passes and connects.
    pub async fn up(name: &str) -> ComposeCluster {
        ComposeCluster::up_with(name, RedisTopology::from_env()).await
    }

    /// [`ComposeCluster::up`] with the given Redis topology.
    pub async fn up_with(name: &str, topology: RedisTopology) -> ComposeCluster {
        let root = root();
        let dir = TempDir::new().expect("temp dir");
        let passwords = env_example();
        let project = format!("rollout-{name}-{}", std::process::id());
        let env_file = dir.path().join(".env");
        run_checked(
            Command::new("bash")
                .arg(root.join("deploy/compose/images.sh"))
                .args(["--profile", "dev", "--tag", "rollout-offline:test"]),
            "deploy/compose/images.sh",
        );
        // free ports are picked, then published: a test beside this one may take one in
        // between ("address already in use"), so a failed `up` is taken down and tried again
        // on fresh ports
        let mut attempt = 1;
        let (ports, mut partial) = loop {
            let ports = Ports::pick();
            ports.write_env(&root, &project, &env_file);
            // from here on, whatever happens, the project is taken down: by this guard until
            // the cluster is made, then by the cluster's own Drop
            let partial = PartialCluster {
                files: ComposeFiles {
                    project: project.clone(),
                    env_file: env_file.clone(),
                    topology,
                },
                armed: true,
            };
            let output = tokio::task::block_in_place(|| {
                partial
                    .files
                    .compose(&["up", "-d", "--no-build", "--remove-orphans"])
                    .output()
            })
            .expect("compose up runs");
            if output.status.success() {
                break (ports, partial);
            }
            let printed = format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                attempt < UP_ATTEMPTS && printed.contains("address already in use"),
                "compose up failed ({}, attempt {attempt}):\n{printed}",
                output.status
            );
            println!("compose up: a published port was taken meanwhile; again on fresh ports");
            attempt += 1;
            drop(partial);
        };
        let nats_urls = ports
            .nats
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        partial.files.wait_healthy(Duration::from_secs(240));
        let operator = connect(
            &nats_urls,
            "operator",
            &passwords["ROLLOUT_OPERATOR_PASSWORD"],
        )
        .await;
        let sdk = connect(
            &nats_urls,
            "sdk-prod",
            &passwords["ROLLOUT_SDK_PROD_PASSWORD"],
        )
        .await;
        let planner = Login::new("planner", &passwords["ROLLOUT_REDIS_PLANNER_PASSWORD"]);
        let redis = match topology {
            RedisTopology::Single => rollout_runtime::connect::connect_redis(&redis_settings(
                &format!("redis://127.0.0.1:{}", ports.redis),
                &planner,
            ))
            .await
            .expect("redis as the planner user"),
            RedisTopology::Cluster => observe_cluster(&ports.redis_nodes, &planner).await,
        };
        let commands = CommandClient::new(operator.clone(), Namespace::new(NS).expect("ns"));
        let events = EventLog::start(&operator, &format!("rollout.events.{NS}.>")).await;
        partial.armed = false;
        ComposeCluster {
            project: partial.files.project.clone(),
            env_file: partial.files.env_file.clone(),
            _dir: dir,
            topology,
            ports,
            passwords,
            operator,
            commands,
            sdk,
            redis,
            events,
        }
    }

    fn files(&self) -> ComposeFiles {
        ComposeFiles {
            project: self.project.clone(),
            env_file: self.env_file.clone(),
            topology: self.topology,
        }
    }

    /// The container of `service`.
    pub fn container(&self, service: &str) -> String {
        self.files().container(service)
    }

    /// `docker <args>` on `service`'s container (its id appended), which must succeed.
    pub fn docker(&self, verb: &[&str], service: &str) {
        let container = self.container(service);
        let mut command = Command::new("docker");
        command.args(verb).arg(&container);
        run_checked(
            &mut command,
            &format!("docker {} {service}", verb.join(" ")),
        );
    }

    /// SIGKILL, as `docker kill` sends.
    pub fn kill(&self, service: &str) {
        self.docker(&["kill"], service);
    }

    /// Starts a stopped container again (it keeps its volumes, not its address).
    pub fn start(&self, service: &str) {
        self.docker(&["start"], service);
    }

    /// Freezes every process of the container.
    pub fn pause(&self, service: &str) {
        self.docker(&["pause"], service);
    }

    pub fn unpause(&self, service: &str) {
        self.docker(&["unpause"], service);
    }

    /// The cluster network's name.
    fn network(&self) -> String {
        // compose names the default network <project>_default (v1 strips nothing else here)
        format!("{}_default", self.project)
    }

    /// Takes `service` off the cluster's network: a partition from everything.
    pub fn disconnect(&self, service: &str) {
        let network = self.network();
        self.docker(&["network", "disconnect", &network], service);
    }

    /// Puts `service` back on the network under its service name.
    pub fn connect(&self, service: &str) {
        let network = self.network();
        self.docker(
            &["network", "connect", "--alias", service, &network],
            service,
        );
    }

    /// Waits until every container of the project runs and passes its health check.
    pub fn wait_healthy(&self, limit: Duration) {
        self.files().wait_healthy(limit);
    }

    /// The container hostname of `service` (the start of its replicas' names).
    pub fn hostname(&self, service: &str) -> String {
        let output = run_checked(
            Command::new("docker")
                .args(["inspect", "-f", "{{.Config.Hostname}}"])
                .arg(self.container(service)),
            "docker inspect",
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Every replica that answers a cluster ping within half a second.
    pub async fn members(&self) -> Vec<MemberInfo> {
        rollout_sdk::cluster::members(
            &self.operator,
            &Subjects::default(),
            Duration::from_millis(500),
        )
        .await
        .unwrap_or_default()
    }

    /// The ticker service leading namespace prod's shard now, and the epoch of that
    /// shard's lease (the tickers share the shards; the others lead shards of their own).
    pub async fn leader(&self) -> Option<(String, u64)> {
        let members = self.members().await;
        let (leader, epoch) = members.iter().find_map(|member| {
            let count = member.shard_count.filter(|_| member.service == "ticker")?;
            let shard = rollout_store::lease::shard_of("prod", count);
            Some((member, *member.shards.get(&shard)?))
        })?;
        let service = TICKERS.iter().find(|ticker| {
            leader
                .replica
                .starts_with(&format!("{}-", self.hostname(ticker)))
        })?;
        Some(((*service).to_owned(), epoch))
    }

    /// How many shards each ticker service leads (0 for those that do not answer), in
    /// [`TICKERS`] order, once every shard is led exactly once; `None` before.
    pub async fn shard_shares(&self) -> Option<Vec<usize>> {
        let members = self.members().await;
        let tickers: Vec<&MemberInfo> = members
            .iter()
            .filter(|member| member.service == "ticker")
            .collect();
        let count = tickers.iter().find_map(|member| member.shard_count)?;
        let mut led: Vec<u32> = tickers
            .iter()
            .flat_map(|member| member.shards.keys().copied())
            .collect();
        led.sort_unstable();
        if led != (0..count).collect::<Vec<_>>() {
            return None;
        }
        Some(
            TICKERS
                .iter()
                .map(|ticker| {
                    let prefix = format!("{}-", self.hostname(ticker));
                    tickers
                        .iter()
                        .filter(|member| member.replica.starts_with(&prefix))
                        .map(|member| member.shards.len())
                        .sum()
                })
                .collect(),
        )
    }

    /// Waits for a leader of namespace prod's shard other than `not` (at most 30 s).
    pub async fn wait_for_leader(&self, not: Option<&str>) -> (String, u64) {
        super::eventually("a ticker leader", Duration::from_secs(30), || async {
            self.leader()
                .await
                .filter(|(service, _)| Some(service.as_str()) != not)
        })
        .await
    }

    /// Redis's clock.
    pub async fn now(&self) -> Timestamp {
        let mut connection = self.redis.clone();
        redis_time(&mut connection).await.expect("redis time")
    }

    /// The evaluators as the oracle asks them: each one's published OFREP port, with the
    /// prod token of deploy/.env.example.
    pub fn replicas(&self) -> Vec<Replica> {
        let token = self.passwords["ROLLOUT_OFREP_TOKENS"]
            .split(',')
            .find_map(|entry| entry.strip_prefix("prod:"))
            .expect("a prod OFREP token")
            .to_owned();
        EVALUATORS
            .iter()
            .zip(self.ports.evaluators)
            .map(|(name, port)| Replica::Remote {
                name: (*name).to_owned(),
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                token: token.clone(),
            })
            .collect()
    }

    /// The served-content oracle of namespace prod: the committed state from Redis, the
    /// answers from every evaluator's OFREP and through NATS as the prod SDK user.
    pub fn oracle(&self) -> Oracle {
        Oracle::new(self.redis.clone(), self.sdk.clone(), NS, self.replicas())
    }

    /// The committed records of namespace prod.
    pub fn committed(&self) -> CommittedReader {
        CommittedReader::new(self.redis.clone(), NS)
    }

    /// The spans the trace sink holds for `service` named `name`.
    pub async fn spans(&self, service: &str, name: &str) -> Vec<serde_json::Value> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.ports.traces));
        let path = format!("/api/spans?service={service}&name={name}&limit=1000");
        let Some(response) =
            rollout_sandbox::http::request(addr, "GET", &path, &[], b"", Duration::from_secs(2))
                .await
        else {
            return Vec::new();
        };
        response.json()["spans"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl ComposeCluster {
    /// The password of the Redis Cluster's `cluster-admin` user: deploy/.env.example's, else
    /// the example `deploy/compose/redis-cluster.yml` falls back to.
    fn cluster_admin_password(&self) -> String {
        const VARIABLE: &str = "ROLLOUT_REDIS_CLUSTER_ADMIN_PASSWORD";
        self.passwords
            .get(VARIABLE)
            .cloned()
            .unwrap_or_else(|| overlay_default(VARIABLE))
    }

    /// A plain connection to Redis Cluster node `node` (of [`REDIS_NODES`]) through its
    /// published port, as `user`.
    async fn node_connection(
        &self,
        node: &str,
        user: &str,
        password: &str,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        assert_eq!(
            self.topology,
            RedisTopology::Cluster,
            "only the Redis Cluster has nodes"
        );
        let index = REDIS_NODES
            .iter()
            .position(|name| *name == node)
            .unwrap_or_else(|| panic!("{node} is no Redis Cluster node"));
        let client = redis::Client::open(format!(
            "redis://127.0.0.1:{}",
            self.ports.redis_nodes[index]
        ))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("AUTH")
            .arg(user)
            .arg(password)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(connection)
    }

    /// `args` on node `node` as the `cluster-admin` user, as text.
    async fn admin(&self, node: &str, args: &[&str]) -> redis::RedisResult<String> {
        let password = self.cluster_admin_password();
        let mut connection = self
            .node_connection(node, "cluster-admin", &password)
            .await?;
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async::<String>(&mut connection)
            .await
    }

    /// The cluster's nodes as `node` sees them (`CLUSTER NODES`), `None` if it does not
    /// answer.
    pub async fn redis_nodes_seen_by(&self, node: &str) -> Option<Vec<RedisNode>> {
        let text = self.admin(node, &["CLUSTER", "NODES"]).await.ok()?;
        Some(text.lines().filter_map(parse_cluster_node).collect())
    }

    /// The cluster's nodes as the first node that answers sees them.
    pub async fn redis_nodes(&self) -> Vec<RedisNode> {
        for node in REDIS_NODES {
            if let Some(nodes) = self.redis_nodes_seen_by(node).await {
                return nodes;
            }
        }
        panic!("no Redis Cluster node answers CLUSTER NODES");
    }

    /// The master holding namespace `namespace`'s keys (those of its flag index), found
    /// by asking every master for the key itself: its owner answers, the others redirect
    /// (`MOVED`).
    pub async fn redis_master_holding(&self, namespace: &str) -> String {
        let key = format!("ro:{{{namespace}}}:flags");
        let password = self.passwords["ROLLOUT_REDIS_PLANNER_PASSWORD"].clone();
        let mut holders = Vec::new();
        for node in self.redis_nodes().await {
            if !node.master || node.failing {
                continue;
            }
            let mut connection = self
                .node_connection(&node.name, "planner", &password)
                .await
                .unwrap_or_else(|error| panic!("{}: {error}", node.name));
            match redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<u64>(&mut connection)
                .await
            {
                Ok(1) => holders.push(node.name.clone()),
                Ok(_) => panic!("{} serves {key}'s slot but does not hold it", node.name),
                Err(error) if error.redirect_node().is_some() => {}
                Err(error) => panic!("EXISTS {key} on {}: {error}", node.name),
            }
        }
        assert_eq!(holders.len(), 1, "{key} held by {holders:?}");
        holders.remove(0)
    }

    /// Waits until the nodes still running fail over `killed` (a master that was killed,
    /// as it was described before): each flags it `fail`, says the cluster is ok and names
    /// the same other master for its slots. Returns that master (its promoted replica).
    pub async fn wait_for_redis_failover(&self, killed: &RedisNode, limit: Duration) -> String {
        assert!(killed.master && !killed.slots.is_empty(), "{killed:?}");
        let slots = killed.slots.clone();
        super::eventually(
            &format!("a replica of {} to take over its slots", killed.name),
            limit,
            || async {
                let mut agreed: Option<String> = None;
                for node in REDIS_NODES.iter().filter(|node| **node != killed.name) {
                    let info = self.admin(node, &["CLUSTER", "INFO"]).await.ok()?;
                    if !info.contains("cluster_state:ok") {
                        return None;
                    }
                    let nodes = self.redis_nodes_seen_by(node).await?;
                    let dead = nodes.iter().find(|seen| seen.id == killed.id)?;
                    if !dead.failing || dead.master && !dead.slots.is_empty() {
                        return None;
                    }
                    let holder = nodes.iter().find(|seen| {
                        seen.master && !seen.failing && seen.id != killed.id && seen.slots == slots
                    })?;
                    if agreed.get_or_insert_with(|| holder.name.clone()) != &holder.name {
                        return None;
                    }
                }
                agreed
            },
        )
        .await
    }

    /// Waits until `node` replicates a master with its link up (a restarted master rejoins
    /// as its successor's replica).
    pub async fn wait_for_redis_replica(&self, node: &str, limit: Duration) {
        super::eventually(&format!("{node} to replicate a master"), limit, || async {
            let info = self.admin(node, &["INFO", "replication"]).await.ok()?;
            (info.contains("role:slave") && info.contains("master_link_status:up")).then_some(())
        })
        .await;
    }
}

/// One line of `CLUSTER NODES`: `<id> <ip:port@bus,hostname> <flags> <master> <ping>
/// <pong> <epoch> <link> <slot>...`.
fn parse_cluster_node(line: &str) -> Option<RedisNode> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let name = fields[1].split_once(',')?.1.to_owned();
    let flags: Vec<&str> = fields[2].split(',').collect();
    let slots = fields[8..]
        .iter()
        .filter(|range| !range.starts_with('['))
        .filter_map(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            Some((start.parse().ok()?, end.parse().ok()?))
        })
        .collect();
    Some(RedisNode {
        name,
        id: fields[0].to_owned(),
        master: flags.contains(&"master"),
        failing: flags.contains(&"fail") || flags.contains(&"fail?"),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}

/// The example value `deploy/compose/redis-cluster.yml` gives `variable` when deploy/.env
/// does not set it (`${VARIABLE:-example}`).
fn overlay_default(variable: &str) -> String {
    let text = std::fs::read_to_string(root().join("deploy/compose/redis-cluster.yml"))
        .expect("deploy/compose/redis-cluster.yml");
    let start = format!("${{{variable}:-");
    let at = text
        .find(&start)
        .unwrap_or_else(|| panic!("redis-cluster.yml gives {variable} no example"));
    let rest = &text[at + start.len()..];
    rest[..rest.find('}').expect("closing brace")].to_owned()
}

/// The observer's connection to the Redis Cluster through the nodes' published ports: the
/// nodes announce themselves as `redis-<n>:6379`, which this machine cannot resolve, so
/// each name is mapped to its port on loopback. Retries until the cluster answers.
async fn observe_cluster(ports: &[u16; 6], login: &Login) -> Connection {
    let seeds: Vec<String> = ports
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect();
    let map: HashMap<redis::cluster::NodeAddress, redis::cluster::NodeAddress> = REDIS_NODES
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            (
                redis::cluster::NodeAddress::new(*name, 6379),
                redis::cluster::NodeAddress::new("127.0.0.1", *port),
            )
        })
        .collect();
    let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
        .node_address_map(map)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .retries(8);
    if let Some(user) = &login.user {
        builder = builder.username(user);
    }
    if let Some(password) = &login.password {
        builder = builder.password(password.clone());
    }
    let client = builder.build().expect("a cluster client");
    let connection = super::eventually(
        "the observer's connection to the Redis Cluster",
        Duration::from_secs(30),
        || async {
            let mut connection = client.get_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .ok()?;
            Some(connection)
        },
    )
    .await;
    Connection::from(connection)
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        self.files().teardown();
    }
}

/// How to run compose on one project.
struct ComposeFiles {
    project: String,
    env_file: PathBuf,
    topology: RedisTopology,
}

impl ComposeFiles {
    /// `bash deploy/compose/<script>` on this project.
    fn script(&self, script: &str) -> Command {
        let root = root();
        let mut command = Command::new("bash");
        let mut extra = root
            .join("deploy/compose/observe.yml")
            .display()
            .to_string();
        let cluster = self.topology == RedisTopology::Cluster;
        if cluster {
            extra.push(':');
            extra.push_str(
                &root
                    .join("deploy/compose/observe-redis-cluster.yml")
                    .display()
                    .to_string(),
            );
        }
        command
            .arg(root.join("deploy/compose").join(script))
            .env("ROLLOUT_COMPOSE_PROJECT", &self.project)
            .env("ROLLOUT_COMPOSE_ENV_FILE", &self.env_file)
            .env(
                "ROLLOUT_COMPOSE_REDIS_CLUSTER",
                if cluster { "1" } else { "0" },
            )
            .env("ROLLOUT_COMPOSE_EXTRA_FILES", extra);
        command
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut command = self.script("compose.sh");
        command.args(args);
        command
    }

    fn container(&self, service: &str) -> String {
        let output = run_checked(&mut self.compose(&["ps", "-q", service]), "compose ps");
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn wait_healthy(&self, limit: Duration) {
        let mut command = self.script("wait-healthy.sh");
        command.arg(limit.as_secs().to_string());
        run_checked(&mut command, "deploy/compose/wait-healthy.sh");
    }

    /// Takes the project down with its volumes, printing each service's last log lines
    /// first if the test is failing; `ROLLOUT_COMPOSE_KEEP` leaves it running.
    fn teardown(&self) {
        if std::thread::panicking() {
            if let Ok(output) = self.compose(&["logs", "--tail", "25"]).output() {
                eprintln!(
                    "--- compose logs of {}:\n{}",
                    self.project,
                    String::from_utf8_lossy(&output.stdout)
                );
            }
        }
        if std::env::var_os("ROLLOUT_COMPOSE_KEEP").is_some() {
            eprintln!(
                "ROLLOUT_COMPOSE_KEEP: project {} left running (env file {})",
                self.project,
                self.env_file.display()
            );
            return;
        }
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "--timeout", "5"])
            .output();
    }
}

/// Takes the project down when dropped while armed: a start-up that fails half-way leaves
/// nothing running.
struct PartialCluster {
    files: ComposeFiles,
    armed: bool,
}

impl Drop for PartialCluster {
    fn drop(&mut self) {
        if self.armed {
            self.files.teardown();
        }
    }
}

/// Runs `command`, panicking with its output unless it succeeds.
fn run_checked(command: &mut Command, what: &str) -> Output {
    let output = tokio::task::block_in_place(|| command.output())
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A NATS connection to `urls` as `user`, receiving replies under its own inbox prefix.
async fn connect(urls: &str, user: &str, password: &str) -> async_nats::Client {
    let settings = NatsSettings {
        inbox_prefix: Some(format!("_INBOX_{user}")),
        ..nats_settings(urls, &Login::new(user, password))
    };
    rollout_runtime::connect::connect_nats(&settings, "compose-test")
        .await
        .unwrap_or_else(|error| panic!("nats as {user}: {error}"))
}
