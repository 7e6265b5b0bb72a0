//! The outbox sweep against a real Redis master with a replica and a real NATS server: on a
//! store that confirms writes on replicas, an entry left in the outbox (a committer whose
//! commit was not replicated in time) is published only once the replica holds it — while
//! the replica is stopped, the sweep publishes nothing and keeps the entry; once it runs
//! again, the entry is published and removed. Without replication asked for, the same sweep
//! publishes at once (what a fail-over could then lose, an evaluator would already serve).

use std::time::Duration;

use futures_util::StreamExt;
use rollout_core::Timestamp;
use rollout_store::outbox::Relay;
use rollout_store::{Connection, StoreError};
use rollout_testkit::{NatsServer, RedisServer};
use rollout_wire::codec::{self, Encoding};
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::subjects::{Namespace, Subjects};

const NS: &str = "swept";
const OUTBOX: &str = "ro:{swept}:outbox";

async fn manager(server: &RedisServer) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(server.url()).expect("valid url");
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis connects")
}

/// A master and a replica of it, once the replica is in sync.
fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::start().expect("master starts");
    let replica = RedisServer::start_replica_of(&master).expect("a replica in sync");
    (master, replica)
}

/// Appends an encoded event for flag `flag` to the outbox, as a commit does.
async fn leave_in_outbox(connection: &mut redis::aio::ConnectionManager, flag: &str) {
    let event = ChangeEvent::new(
        NS,
        flag,
        1,
        EventKind::FlagCreated,
        Timestamp::from_millis(1),
    );
    let bytes = codec::encode(&event, Encoding::MessagePack).expect("encodes");
    let _: String = redis::cmd("XADD")
        .arg(OUTBOX)
        .arg("*")
        .arg("event")
        .arg(bytes)
        .query_async(connection)
        .await
        .expect("xadd");
}

async fn outbox_len(connection: &mut redis::aio::ConnectionManager) -> u64 {
    redis::cmd("XLEN")
        .arg(OUTBOX)
        .query_async(connection)
        .await
        .expect("xlen")
}

/// The flags of the events received so far, after a round trip to the server (so that
/// whatever was published before this call has arrived).
async fn received(nats: &async_nats::Client, events: &mut async_nats::Subscriber) -> Vec<String> {
    nats.flush().await.expect("flush");
    let mut flags = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), events.next()).await
    {
        let event = ChangeEvent::decode(&message.payload, Encoding::MessagePack).expect("event");
        flags.push(event.flag);
    }
    flags
}

/// A master with a replica, NATS, a subscriber of the namespace's events and a plain
/// connection to the master.
struct Setup {
    master: RedisServer,
    replica: RedisServer,
    _nats_server: NatsServer,
    nats: async_nats::Client,
    subjects: Subjects,
    namespace: Namespace,
    events: async_nats::Subscriber,
    writer: redis::aio::ConnectionManager,
}

impl Setup {
    /// A relay on the master, waiting for its replica to confirm what it sweeps or not.
    async fn relay(&self, wait_for_replica: bool) -> Relay {
        let mut connection = Connection::from(manager(&self.master).await);
        if wait_for_replica {
            connection = connection.waiting_for_replicas(1, Duration::from_millis(300));
        }
        Relay::new(self.nats.clone(), connection, self.subjects.clone())
    }

    async fn start() -> Setup {
        let (master, replica) = master_and_replica();
        let nats_server = NatsServer::start().expect("nats starts");
        let nats = async_nats::connect(nats_server.url())
            .await
            .expect("nats connects");
        let subjects = Subjects::default();
        let namespace = Namespace::new(NS).expect("namespace");
        let events = nats
            .subscribe(subjects.events_namespace(&namespace))
            .await
            .expect("subscribe");
        let writer = manager(&master).await;
        Setup {
            master,
            replica,
            _nats_server: nats_server,
            nats,
            subjects,
            namespace,
            events,
            writer,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_publishes_an_outbox_entry_only_once_the_replica_holds_it() {
    let mut setup = Setup::start().await;
    let relay = setup.relay(true).await;

    leave_in_outbox(&mut setup.writer, "left-behind").await;
    setup.replica.pause().expect("replica stops");
    let swept = relay.sweep(&setup.namespace, Duration::ZERO).await;
    assert!(
        matches!(swept, Err(StoreError::Unreplicated(_))),
        "the sweep went on without the replica: {swept:?}"
    );
    assert_eq!(
        received(&setup.nats, &mut setup.events).await,
        Vec::<String>::new(),
        "an entry the replica does not hold was published"
    );
    assert_eq!(
        outbox_len(&mut setup.writer).await,
        1,
        "the entry stays for the next sweep"
    );
    // the whole sweep (every namespace) goes on past a namespace whose replicas lag
    let _: i64 = redis::cmd("SADD")
        .arg("ro:namespaces")
        .arg(NS)
        .query_async(&mut setup.writer)
        .await
        .expect("register");
    assert_eq!(relay.sweep_all(Duration::ZERO).await.expect("sweep all"), 0);

    setup.replica.resume().expect("replica runs again");
    let swept = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match relay.sweep(&setup.namespace, Duration::ZERO).await {
                Ok(swept) => break swept,
                Err(StoreError::Unreplicated(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("sweep: {error}"),
            }
        }
    })
    .await
    .expect("the replica caught up");
    assert_eq!(swept, 1);
    assert_eq!(
        received(&setup.nats, &mut setup.events).await,
        vec!["left-behind"]
    );
    assert_eq!(
        outbox_len(&mut setup.writer).await,
        0,
        "a published entry goes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replication_asked_for_the_sweep_publishes_at_once() {
    let mut setup = Setup::start().await;
    let relay = setup.relay(false).await;

    leave_in_outbox(&mut setup.writer, "unguarded").await;
    setup.replica.pause().expect("replica stops");
    assert_eq!(
        relay
            .sweep(&setup.namespace, Duration::ZERO)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(
        received(&setup.nats, &mut setup.events).await,
        vec!["unguarded"]
    );
    setup.replica.resume().expect("replica runs again");
}
