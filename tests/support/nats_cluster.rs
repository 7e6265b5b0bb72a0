//! The durable command stream on a NATS cluster (`tests/nats_cluster.rs`): the stream as
//! each node's monitoring endpoint shows it (leader, replicas, last sequence, consumer
//! leader), which clients a node holds, a command storm published to the stream with every
//! attempt of a command under the same `Nats-Msg-Id`, the outcomes the planners publish,
//! and how many queued commands each planner handled (its `/metrics`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rollout_testkit::NatsCluster;
use rollout_wire::subjects::COMMAND_STREAM;
use tokio::time::Instant;

use super::cluster::storm_update;
use super::{http, NS};

/// The command stream as one node's `/jsz?streams=true&consumers=true&config=true` shows
/// it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamView {
    /// `config.num_replicas`.
    pub replicas: u64,
    /// The stream's leader (a `server_name`).
    pub leader: String,
    /// The other members of the stream's group and whether each is current.
    pub followers: Vec<(String, bool)>,
    /// Messages stored in this node's replica.
    pub messages: u64,
    /// The last sequence this node's replica holds.
    pub last_seq: u64,
    /// The leader of the planners' durable consumer, as this node sees it.
    pub consumer_leader: Option<String>,
}

impl StreamView {
    /// Whether the group has a leader and every follower is current (as the leader sees
    /// them: a follower does not know whether the other follower is current).
    pub fn settled(&self) -> bool {
        !self.leader.is_empty() && self.followers.iter().all(|(_, current)| *current)
    }
}

/// The command stream as node `node` reports it; `None` when the node does not answer or
/// holds no replica of the stream.
pub fn stream_view(cluster: &NatsCluster, node: usize) -> Option<StreamView> {
    let jsz = tokio::task::block_in_place(|| {
        cluster.monitor(node, "/jsz?streams=true&consumers=true&config=true")
    })
    .ok()?;
    let stream = jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|stream| stream["name"] == COMMAND_STREAM)?;
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    let followers = stream["cluster"]["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|replica| {
            (
                text(&replica["name"]),
                replica["current"].as_bool() == Some(true),
            )
        })
        .collect();
    let consumer_leader = stream["consumer_detail"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|consumer| consumer["name"] == rollout_wire::subjects::COMMAND_CONSUMER)
        .map(|consumer| text(&consumer["cluster"]["leader"]));
    Some(StreamView {
        replicas: stream["config"]["num_replicas"].as_u64().unwrap_or(0),
        leader: text(&stream["cluster"]["leader"]),
        followers,
        messages: stream["state"]["messages"].as_u64().unwrap_or(0),
        last_seq: stream["state"]["last_seq"].as_u64().unwrap_or(0),
        consumer_leader,
    })
}

/// The node named `name`.
pub fn node_named(cluster: &NatsCluster, name: &str) -> Option<usize> {
    (0..cluster.size()).find(|&index| cluster.node(index).server_name() == name)
}

/// The running node that leads the command stream, by its own account, with its view.
pub fn stream_leader(cluster: &NatsCluster) -> Option<(usize, StreamView)> {
    (0..cluster.size())
        .filter(|&index| cluster.node(index).is_running())
        .find_map(|index| {
            let view = stream_view(cluster, index)?;
            (view.leader == cluster.node(index).server_name()).then_some((index, view))
        })
}

/// The views of every node, when every node holds the stream, all follow the same leader,
/// which sees every other node as current, and all hold the same messages up to the same
/// last sequence.
pub fn in_step(cluster: &NatsCluster, views: &[Option<StreamView>]) -> Option<Vec<StreamView>> {
    let views: Vec<StreamView> = views.iter().cloned().collect::<Option<_>>()?;
    let first = views.first()?;
    let leader = node_named(cluster, &first.leader)?;
    let agreed = views.iter().all(|view| {
        view.leader == first.leader
            && view.last_seq == first.last_seq
            && view.messages == first.messages
    });
    (agreed && views[leader].settled()).then_some(views)
}

/// Asks the leader of the command stream (`consumer` `None`) or of its durable consumer
/// `consumer` to hand its leadership to `server` (`$JS.API.….LEADER.STEPDOWN` with a
/// preferred placement); `Err` with the server's answer when it refuses.
pub async fn move_leader(
    client: &async_nats::Client,
    consumer: Option<&str>,
    server: &str,
) -> Result<(), String> {
    let subject = match consumer {
        None => format!("$JS.API.STREAM.LEADER.STEPDOWN.{COMMAND_STREAM}"),
        Some(consumer) => format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{COMMAND_STREAM}.{consumer}"),
    };
    let body = serde_json::json!({"placement": {"preferred": server}}).to_string();
    let answer = client
        .request(subject, body.into())
        .await
        .map_err(|error| error.to_string())?;
    let answer: serde_json::Value =
        serde_json::from_slice(&answer.payload).map_err(|error| error.to_string())?;
    if answer["success"].as_bool() == Some(true) {
        Ok(())
    } else {
        Err(answer.to_string())
    }
}

/// The names of the clients connected to node `node` (`/connz`), sorted.
pub fn clients_on(cluster: &NatsCluster, node: usize) -> Vec<String> {
    let Ok(connz) = tokio::task::block_in_place(|| cluster.monitor(node, "/connz?limit=1024"))
    else {
        return Vec::new();
    };
    let mut names: Vec<String> = connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|connection| connection["name"].as_str())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// Queued commands a planner answered `ok`, from its `/metrics`; `None` when it does not
/// answer.
pub async fn queued_commands_handled(probe: SocketAddr) -> Option<u64> {
    let response =
        http::request(probe, "GET", "/metrics", &[], b"", Duration::from_secs(2)).await?;
    (response.status == 200).then(|| {
        response
            .text()
            .lines()
            .filter(|line| {
                line.starts_with("planner_requests_total{")
                    && line.contains("family=\"queued_command\"")
                    && line.contains("outcome=\"ok\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    })
}

/// One command the stream acknowledged.
#[derive(Clone, Debug)]
pub struct Acked {
    pub flag: String,
    pub id: String,
    /// When the acknowledgement arrived.
    pub at: Instant,
    /// Publish attempts it took (1 when the first was acknowledged).
    pub attempts: u32,
    /// The stream answered that it already held the message id (a retry of a publish it
    /// had stored).
    pub duplicate: bool,
}

/// What a storm's publishers counted while it ran.
#[derive(Debug, Default)]
pub struct StormCounters {
    pub acked: AtomicU64,
    pub retries: AtomicU64,
    pub duplicates: AtomicU64,
    /// Failed publish attempts, by what failed.
    pub failures: Mutex<BTreeMap<String, u64>>,
}

/// `flag.update` commands published to the durable stream by a few concurrent publishers,
/// each command with its own id (also its `Nats-Msg-Id`), a failed or unanswered publish
/// tried again under the same id until the stream acknowledges it.
pub struct Storm {
    pub counters: Arc<StormCounters>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Acked>>>,
}

impl Storm {
    /// Starts `publishers` publishers updating `flags` in turn, each waiting `pause` after
    /// every acknowledged command; a publish attempt unanswered after `attempt_timeout` is
    /// retried.
    pub fn start(
        jetstream: async_nats::jetstream::Context,
        flags: Vec<String>,
        publishers: usize,
        pause: Duration,
        attempt_timeout: Duration,
    ) -> Storm {
        let counters = Arc::new(StormCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let subject = format!("rollout.cmdq.{NS}.flag.update");
        let tasks = (0..publishers)
            .map(|_| {
                let (jetstream, flags, subject) =
                    (jetstream.clone(), flags.clone(), subject.clone());
                let (counters, stop, next) =
                    (Arc::clone(&counters), Arc::clone(&stop), Arc::clone(&next));
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let index = usize::try_from(next.fetch_add(1, Ordering::Relaxed))
                            .expect("index fits");
                        let flag = &flags[index % flags.len()];
                        let id = format!("storm-{index}");
                        let body = storm_update(flag, &id, index);
                        let (attempts, duplicate) = publish_until_stored(
                            &jetstream,
                            &subject,
                            &id,
                            &body,
                            attempt_timeout,
                            &counters,
                        )
                        .await;
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        acked.push(Acked {
                            flag: flag.clone(),
                            id,
                            at: Instant::now(),
                            attempts,
                            duplicate,
                        });
                        tokio::time::sleep(pause).await;
                    }
                    acked
                })
            })
            .collect();
        Storm {
            counters,
            stop,
            tasks,
        }
    }

    /// Commands acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.counters.acked.load(Ordering::Relaxed)
    }

    /// Stops publishing new commands, waits until each publisher's command in flight is
    /// acknowledged, and returns every acknowledged command.
    pub async fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for task in self.tasks {
            acked.extend(task.await.expect("publisher"));
        }
        acked.sort_by_key(|command| command.at);
        acked
    }
}

/// Publishes `body` (JSON) on `subject` with `Nats-Msg-Id: <msg_id>` until the stream
/// acknowledges it, every attempt under the same id so the stream stores it once; returns
/// the attempts made and whether the stream reported the id as a duplicate.
async fn publish_until_stored(
    jetstream: &async_nats::jetstream::Context,
    subject: &str,
    msg_id: &str,
    body: &[u8],
    attempt_timeout: Duration,
    counters: &StormCounters,
) -> (u32, bool) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert("Nats-Msg-Id", msg_id);
        let acked = async {
            jetstream
                .publish_with_headers(subject.to_owned(), headers, body.to_vec().into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        let failure = match tokio::time::timeout(attempt_timeout, acked).await {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                return (attempts, ack.duplicate);
            }
            Ok(Err(error)) => failure_kind(&error.to_string()),
            Err(_) => "no answer within the attempt timeout".to_owned(),
        };
        counters.retries.fetch_add(1, Ordering::Relaxed);
        *counters
            .failures
            .lock()
            .expect("failures")
            .entry(failure)
            .or_default() += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An error message without the parts that differ between occurrences (ids, numbers).
fn failure_kind(message: &str) -> String {
    message
        .split_whitespace()
        .filter(|word| !word.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One outcome the planners published for a durable command.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub at: Instant,
    /// `None` when the command succeeded, else the error's code and message.
    pub error: Option<String>,
}

/// The outcomes of durable commands the planners publish on `rollout.outcome.<ns>.<id>`,
/// as the operator's connection receives them (core NATS: those published while it is
/// reconnecting are not seen).
#[derive(Clone, Default)]
pub struct OutcomeLog {
    outcomes: Arc<Mutex<BTreeMap<String, Vec<Outcome>>>>,
}

impl OutcomeLog {
    /// Subscribes and records in the background.
    pub async fn start(client: &async_nats::Client) -> OutcomeLog {
        let log = OutcomeLog::default();
        let prefix = format!("rollout.outcome.{NS}.");
        let mut subscriber = client
            .subscribe(format!("{prefix}>"))
            .await
            .expect("outcome subscription");
        client.flush().await.expect("flush");
        let outcomes = Arc::clone(&log.outcomes);
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let id = message
                    .subject
                    .as_str()
                    .trim_start_matches(&prefix)
                    .to_owned();
                let encoding = rollout_runtime::serve::request_encoding(message.headers.as_ref());
                let error = rollout_wire::envelope::decode_reply::<serde_json::Value>(
                    &message.payload,
                    encoding,
                )
                .err()
                .map(|error| format!("{}: {}", error.code.as_str(), error.message));
                outcomes
                    .lock()
                    .expect("outcomes")
                    .entry(id)
                    .or_default()
                    .push(Outcome {
                        at: Instant::now(),
                        error,
                    });
            }
        });
        log
    }

    /// Every outcome received so far, by command id.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Outcome>> {
        self.outcomes.lock().expect("outcomes").clone()
    }
}
