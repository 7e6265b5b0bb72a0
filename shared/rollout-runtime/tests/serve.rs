//! The serving loops against a private NATS server: what was delivered before a shutdown is
//! still answered, and nothing is taken after it.

use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use rollout_runtime::config::NatsSettings;
use rollout_runtime::connect::connect_nats;
use rollout_runtime::serve::answer_in_place;
use rollout_runtime::shutdown::Shutdown;
use rollout_testkit::NatsServer;
use rollout_wire::codec::Encoding;

async fn client(server: &NatsServer, name: &str) -> async_nats::Client {
    let settings = NatsSettings {
        url: server.url(),
        connect_timeout: Duration::from_secs(5),
        ..NatsSettings::default()
    };
    connect_nats(&settings, name).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_delivered_before_a_shutdown_are_answered_and_none_after() {
    let server = NatsServer::start().expect("start nats-server");
    let serving = client(&server, "serving").await;
    let asking = client(&server, "asking").await;
    let subscriber = serving
        .queue_subscribe("test.serve", "workers".to_owned())
        .await
        .expect("subscribe");
    serving.flush().await.expect("flush the subscription");

    // the first answer waits for the gate: every later request is delivered meanwhile
    let (open_gate, gate) = mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some(gate));
    let shutdown = Shutdown::new();
    let loop_task = tokio::spawn(answer_in_place(
        subscriber,
        serving.clone(),
        shutdown.clone(),
        Duration::from_secs(10),
        move |message| {
            if let Some(gate) = gate.lock().expect("gate").take() {
                gate.recv().expect("the gate opens");
            }
            let mut reply = b"answer to ".to_vec();
            reply.extend_from_slice(&message.payload);
            (Encoding::MessagePack, reply)
        },
    ));

    let mut replies = asking.subscribe("test.inbox.>").await.expect("inbox");
    asking.flush().await.expect("flush the inbox");
    const REQUESTS: usize = 20;
    for index in 0..REQUESTS {
        asking
            .publish_with_reply(
                "test.serve",
                format!("test.inbox.{index}"),
                format!("request {index}").into(),
            )
            .await
            .expect("publish");
    }
    asking.flush().await.expect("flush the requests");
    // the server has routed them to the serving connection before the shutdown unsubscribes
    shutdown.trigger();
    open_gate.send(()).expect("open the gate");

    let mut answered = Vec::new();
    while answered.len() < REQUESTS {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {REQUESTS} answered: {answered:?}",
                    answered.len()
                )
            })
            .expect("inbox open");
        answered.push(String::from_utf8_lossy(&reply.payload).into_owned());
    }
    answered.sort();
    let mut expected: Vec<String> = (0..REQUESTS)
        .map(|index| format!("answer to request {index}"))
        .collect();
    expected.sort();
    assert_eq!(answered, expected);

    tokio::time::timeout(Duration::from_secs(10), loop_task)
        .await
        .expect("the loop returns once the delivered requests are answered")
        .expect("the loop does not panic");
    let after = asking.request("test.serve", "late".into()).await;
    assert!(
        matches!(&after, Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders),
        "nobody answers after the shutdown: {after:?}"
    );
}
