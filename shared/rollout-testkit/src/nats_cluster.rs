//! A private cluster of `nats-server` processes (JetStream on by default):
//! every node a [`NatsServer`] with its own port, store dir and
//! `server_name`, joined by a full route mesh on free loopback ports, and
//! reported ready only once every node routes to every other and
//! JetStream has a meta leader, so a test can create an R3 stream at once.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster_support::{
    distinct_free_ports, log_tail, not_ready, poll_until, start_side_by_side, Waiting,
};
use crate::error::{Result, TestkitError};
use crate::nats::{NatsOptions, NatsServer};
use crate::port::PORT_ATTEMPTS;

/// Name used in messages.
const SERVER: &str = "nats-server";

/// How many nodes [`NatsCluster::start`] starts.
pub const DEFAULT_NATS_CLUSTER_SIZE: usize = 3;

/// How long one monitoring request may take.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest monitoring response read (a `/jsz` with stream details for a
/// test's handful of streams is a few KiB).
const MAX_MONITOR_RESPONSE: u64 = 16 << 20;

/// A cluster of `nats-server` processes owned by the test. Dropping it
/// kills every node and removes their temp dirs.
///
/// Each node is a [`NatsServer`] started with a generated config holding
/// its monitoring port and its `cluster {}` block (name, listen address,
/// routes to every other node), so the usual per-node controls apply:
/// `cluster.node(i).kill()`, `.pause()`, `.restart()`, ... A restarted node
/// comes back on the same client, cluster and monitoring ports with the
/// same store dir, and rejoins the cluster;
/// [`restart_node`](Self::restart_node) also waits until it has.
///
/// ```no_run
/// use rollout_testkit::NatsCluster;
///
/// # fn main() -> Result<(), rollout_testkit::TestkitError> {
/// let cluster = NatsCluster::start()?; // 3 nodes, JetStream on
/// // every seed in one string, as the services' `nats.url` takes them
/// let seeds = cluster.url_list();
/// assert_eq!(seeds.split(',').count(), 3);
/// cluster.node(1).kill()?; // SIGKILL one node
/// cluster.restart_node(1)?; // same ports and store dir; waits until it rejoined
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
    cluster_ports: Vec<u16>,
    monitor_ports: Vec<u16>,
    options: NatsOptions,
}

impl NatsCluster {
    /// Starts [`DEFAULT_NATS_CLUSTER_SIZE`] (3) nodes with JetStream on and
    /// waits until the cluster is formed.
    pub fn start() -> Result<NatsCluster> {
        NatsCluster::start_with(DEFAULT_NATS_CLUSTER_SIZE, NatsOptions::default())
    }

    /// Starts `size` nodes (at least 2) concurrently, each with `options`,
    /// and waits (up to `options.startup_timeout`) until every node routes
    /// to every other and, with JetStream on, all agree on a meta leader
    /// that sees every other node as current.
    ///
    /// `options.config` is kept and the cluster's own settings (`http`,
    /// `cluster {}`) are appended to it, so it must not set those itself.
    /// When a cluster or monitoring port turns out to be taken, the whole
    /// cluster is started again on new ports.
    pub fn start_with(size: usize, options: NatsOptions) -> Result<NatsCluster> {
        if size < 2 {
            return Err(TestkitError::InvalidOptions(format!(
                "a nats cluster needs at least 2 nodes, not {size} (nats-server refuses a \
                 JetStream cluster without routes; one node is a NatsServer)"
            )));
        }
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let cluster = match NatsCluster::launch(size, &options) {
                Ok(cluster) => cluster,
                // Every client port a node tried was refused: its cluster or
                // monitoring port (fixed in its config) is the one taken.
                Err(error @ TestkitError::PortsExhausted { .. }) => {
                    last = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let every_node: Vec<usize> = (0..size).collect();
            match cluster.wait_formed(options.startup_timeout, &every_node) {
                Ok(()) => return Ok(cluster),
                // nats-server answers clients before it binds its cluster
                // port, so a node can pass its own readiness check and then
                // exit because that port is taken.
                Err(error) if cluster.a_node_exited_on_a_taken_port() => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(TestkitError::PortsExhausted {
            server: SERVER,
            attempts: PORT_ATTEMPTS,
            last: Box::new(last.unwrap_or(TestkitError::NotRunning { server: SERVER })),
        })
    }

    /// Starts the nodes on fresh ports, without waiting for the mesh.
    fn launch(size: usize, options: &NatsOptions) -> Result<NatsCluster> {
        let name = unique_cluster_name();
        let ports = distinct_free_ports(2 * size)?;
        let (cluster_ports, monitor_ports) = ports.split_at(size);
        let node_options: Vec<NatsOptions> = (0..size)
            .map(|index| {
                let config = node_config(
                    options.config.as_deref(),
                    &name,
                    index,
                    cluster_ports,
                    monitor_ports[index],
                );
                options.clone().config(config)
            })
            .collect();
        let started = start_side_by_side(node_options, NatsServer::start_with, "nats-server");
        // Any failure drops the nodes that did start, which kills them.
        let nodes = started.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(NatsCluster {
            name,
            nodes,
            cluster_ports: cluster_ports.to_vec(),
            monitor_ports: monitor_ports.to_vec(),
            options: options.clone(),
        })
    }

    /// Waits until every live node (running and not paused) has a route to
    /// every other live node and, with JetStream on, all live nodes agree
    /// on a live meta leader that sees every other live node as current.
    ///
    /// Killed and paused nodes are left out, so this also tells when the
    /// rest of the cluster has settled after a node was taken down.
    pub fn wait_until_formed(&self, timeout: Duration) -> Result<()> {
        self.wait_formed(timeout, &[])
    }

    /// [`wait_until_formed`](Self::wait_until_formed), failing at once if
    /// one of the `required` nodes is not running.
    fn wait_formed(&self, timeout: Duration, required: &[usize]) -> Result<()> {
        poll_until(timeout, || self.check_formed(required)).map_err(|waiting| {
            let node = &self.nodes[waiting.node];
            not_ready(
                SERVER,
                node.port(),
                node.log_path(),
                format!(
                    "nats cluster {} not formed within {timeout:?}: {}",
                    self.name, waiting.reason
                ),
            )
        })
    }

    /// One check of the condition [`wait_until_formed`](Self::wait_until_formed) waits for.
    fn check_formed(&self, required: &[usize]) -> std::result::Result<(), Waiting> {
        if let Some(&exited) = required
            .iter()
            .find(|&&index| !self.nodes[index].is_running())
        {
            return Err(Waiting::hopeless(
                exited,
                format!(
                    "{} exited while the cluster formed",
                    self.nodes[exited].server_name()
                ),
            ));
        }
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| self.nodes[index].is_running() && !self.nodes[index].is_paused())
            .collect();
        let Some(&first) = live.first() else {
            return Err(Waiting::on(0, "no node is running"));
        };
        for &index in &live {
            let routez = self
                .monitor_raw(index, "/routez")
                .map_err(|e| Waiting::on(index, e))?;
            let remotes = route_names(&routez);
            for &other in &live {
                let other_name = self.nodes[other].server_name();
                if other != index && !remotes.contains(other_name) {
                    return Err(Waiting::on(
                        index,
                        format!(
                            "{} has no route to {other_name} yet (routes to {remotes:?})",
                            self.nodes[index].server_name()
                        ),
                    ));
                }
            }
        }
        if !self.options.jetstream {
            return Ok(());
        }
        let mut leader: Option<(String, usize)> = None;
        for &index in &live {
            let jsz = self
                .monitor_raw(index, "/jsz")
                .map_err(|e| Waiting::on(index, e))?;
            let seen = meta_leader(&jsz).unwrap_or_default();
            let node_name = self.nodes[index].server_name();
            if seen.is_empty() {
                return Err(Waiting::on(
                    index,
                    format!("{node_name} knows no JetStream meta leader yet"),
                ));
            }
            match &leader {
                None => leader = Some((seen.to_owned(), index)),
                Some((agreed, by)) if agreed != seen => {
                    return Err(Waiting::on(
                        index,
                        format!(
                            "{node_name} sees {seen} as JetStream meta leader, {} sees {agreed}",
                            self.nodes[*by].server_name()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let (leader_name, _) = leader.unwrap_or_default();
        let Some(&leader_index) = live
            .iter()
            .find(|&&index| self.nodes[index].server_name() == leader_name)
        else {
            return Err(Waiting::on(
                first,
                format!("the JetStream meta leader {leader_name} is not a live node"),
            ));
        };
        let jsz = self
            .monitor_raw(leader_index, "/jsz")
            .map_err(|e| Waiting::on(leader_index, e))?;
        let current = current_meta_replicas(&jsz);
        for &index in &live {
            let name = self.nodes[index].server_name();
            if index != leader_index && !current.contains(name) {
                return Err(Waiting::on(
                    index,
                    format!(
                        "the JetStream meta leader {leader_name} does not see {name} as current"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether a node has exited complaining that a port was taken.
    fn a_node_exited_on_a_taken_port(&self) -> bool {
        self.nodes.iter().any(|node| {
            !node.is_running()
                && log_tail(node.log_path())
                    .to_ascii_lowercase()
                    .contains("address already in use")
        })
    }

    /// Restarts node `index` (SIGTERM first if it runs) on the same ports
    /// and store dir and waits, up to the options' startup timeout, until
    /// the cluster is formed again with it.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`size`](Self::size).
    pub fn restart_node(&self, index: usize) -> Result<()> {
        self.nodes[index].restart()?;
        self.wait_formed(self.options.startup_timeout, &[index])
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`size`](Self::size).
    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// How many nodes the cluster has (killed ones included).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// The cluster name shared by every node's `cluster {}` block.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Each node's client URL, `nats://127.0.0.1:PORT`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Every node's client URL joined by commas, for clients and configs
    /// that take several seed servers in one string (`nats.url`).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The route (cluster) port of node `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`size`](Self::size).
    pub fn cluster_port(&self, index: usize) -> u16 {
        self.cluster_ports[index]
    }

    /// The HTTP monitoring port of node `index`.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`size`](Self::size).
    pub fn monitor_port(&self, index: usize) -> u16 {
        self.monitor_ports[index]
    }

    /// The options every node was started with (before the cluster's own
    /// config was appended).
    pub fn options(&self) -> &NatsOptions {
        &self.options
    }

    /// GETs a monitoring endpoint of node `index` (`/routez`, `/jsz`,
    /// `/jsz?streams=true`, `/varz`, ...) and returns its JSON.
    ///
    /// # Panics
    ///
    /// If `index` is not below [`size`](Self::size).
    pub fn monitor(&self, index: usize, endpoint: &str) -> Result<serde_json::Value> {
        self.monitor_raw(index, endpoint)
            .map_err(TestkitError::Protocol)
    }

    fn monitor_raw(
        &self,
        index: usize,
        endpoint: &str,
    ) -> std::result::Result<serde_json::Value, String> {
        http_get_json(self.monitor_ports[index], endpoint, MONITOR_TIMEOUT)
    }
}

/// A cluster name unique across test processes and clusters.
fn unique_cluster_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "testkit-cluster-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The config of node `index`: the caller's text, then the monitoring
/// port and a `cluster {}` block routing to every other node.
fn node_config(
    base: Option<&str>,
    cluster_name: &str,
    index: usize,
    cluster_ports: &[u16],
    monitor_port: u16,
) -> String {
    let mut text = String::new();
    if let Some(base) = base {
        text.push_str(base);
        text.push('\n');
    }
    let _ = writeln!(text, "http: \"127.0.0.1:{monitor_port}\"");
    let _ = writeln!(text, "cluster {{");
    let _ = writeln!(text, "  name: \"{cluster_name}\"");
    let _ = writeln!(text, "  listen: \"127.0.0.1:{}\"", cluster_ports[index]);
    let _ = writeln!(text, "  routes: [");
    for (other, port) in cluster_ports.iter().enumerate() {
        if other != index {
            let _ = writeln!(text, "    \"nats-route://127.0.0.1:{port}\"");
        }
    }
    let _ = writeln!(text, "  ]");
    let _ = writeln!(text, "}}");
    text
}

/// The `server_name`s a `/routez` answer has routes to (with route
/// pooling there are several routes per remote).
fn route_names(routez: &serde_json::Value) -> BTreeSet<&str> {
    routez
        .get("routes")
        .and_then(|routes| routes.as_array())
        .into_iter()
        .flatten()
        .filter_map(|route| route.get("remote_name").and_then(|name| name.as_str()))
        .collect()
}

/// `meta_cluster.leader` of a `/jsz` answer.
fn meta_leader(jsz: &serde_json::Value) -> Option<&str> {
    jsz.get("meta_cluster")?.get("leader")?.as_str()
}

/// The meta group replicas a leader's `/jsz` reports as current.
fn current_meta_replicas(jsz: &serde_json::Value) -> BTreeSet<&str> {
    jsz.get("meta_cluster")
        .and_then(|meta| meta.get("replicas"))
        .and_then(|replicas| replicas.as_array())
        .into_iter()
        .flatten()
        .filter(|replica| replica.get("current").and_then(|c| c.as_bool()) == Some(true))
        .filter_map(|replica| replica.get("name").and_then(|name| name.as_str()))
        .collect()
}

/// A plain HTTP/1.0 GET of `path` on 127.0.0.1:`port`, expecting a 200
/// with a JSON body (the monitoring server closes the connection after
/// answering an HTTP/1.0 request).
fn http_get_json(
    port: u16,
    path: &str,
    timeout: Duration,
) -> std::result::Result<serde_json::Value, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("setting socket timeouts: {e}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("sending GET {path} to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_MONITOR_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|e| format!("reading GET {path} from {addr}: {e}"))?;
    parse_http_json(&response).map_err(|e| format!("GET {path} from {addr}: {e}"))
}

/// The JSON body of a raw HTTP response, if its status is 200.
fn parse_http_json(response: &[u8]) -> std::result::Result<serde_json::Value, String> {
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}"));
    }
    serde_json::from_slice(&response[split + 4..]).map_err(|e| format!("bad JSON body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_config_routes_to_every_other_node() {
        let text = node_config(Some("debug: false"), "c", 1, &[11, 12, 13], 21);
        assert!(text.starts_with("debug: false\n"), "{text}");
        assert!(text.contains("http: \"127.0.0.1:21\"\n"), "{text}");
        assert!(text.contains("listen: \"127.0.0.1:12\"\n"), "{text}");
        assert!(text.contains("\"nats-route://127.0.0.1:11\""), "{text}");
        assert!(text.contains("\"nats-route://127.0.0.1:13\""), "{text}");
        assert!(!text.contains("nats-route://127.0.0.1:12"), "{text}");
    }

    #[test]
    fn reads_route_names_and_meta_state() {
        let routez = serde_json::json!({"routes": [
            {"remote_name": "b"}, {"remote_name": "b"}, {"remote_name": "c"}, {"rid": 1}
        ]});
        assert_eq!(route_names(&routez), BTreeSet::from(["b", "c"]));
        let jsz = serde_json::json!({"meta_cluster": {"leader": "a", "replicas": [
            {"name": "b", "current": true}, {"name": "c", "current": false}
        ]}});
        assert_eq!(meta_leader(&jsz), Some("a"));
        assert_eq!(current_meta_replicas(&jsz), BTreeSet::from(["b"]));
        assert_eq!(meta_leader(&serde_json::json!({})), None);
    }

    #[test]
    fn parses_http_responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}";
        assert_eq!(
            parse_http_json(ok).expect("ok"),
            serde_json::json!({"a": 1})
        );
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\nnope";
        assert!(parse_http_json(missing).expect_err("404").contains("404"));
        assert!(parse_http_json(b"HTTP/1.1 200 OK").is_err());
    }
}
