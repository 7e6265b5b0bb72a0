//! Connecting to private NATS and Redis servers started by the test kit:
//! round trips, authentication, and failing clearly when nothing listens.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rollout_runtime::config::{NatsSettings, RedisSettings, Secret};
use rollout_runtime::connect::{
    connect_nats, connect_redis, connect_redis_with, redis_client, Backend, ConnectErrorKind,
};
use rollout_testkit::{free_port, NatsOptions, NatsServer, RedisOptions, RedisServer};

fn nats_settings(url: String) -> NatsSettings {
    NatsSettings {
        url,
        connect_timeout: Duration::from_secs(5),
        ..NatsSettings::default()
    }
}

fn redis_settings(url: String) -> RedisSettings {
    RedisSettings {
        url,
        connect_timeout: Duration::from_secs(5),
        ..RedisSettings::default()
    }
}

async fn assert_request_reply(client: &async_nats::Client) {
    let mut requests = client
        .subscribe("rollout.test.echo")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush the subscription");
    let responder_client = client.clone();
    let responder = tokio::spawn(async move {
        if let Some(request) = requests.next().await {
            let reply = request.reply.expect("a request has a reply subject");
            responder_client
                .publish(reply, request.payload)
                .await
                .expect("publish reply");
            responder_client.flush().await.expect("flush reply");
        }
    });
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("rollout.test.echo", "ping".into()),
    )
    .await
    .expect("reply within 5s")
    .expect("request succeeds");
    assert_eq!(reply.payload.as_ref(), b"ping");
    responder.await.expect("responder finishes");
}

#[tokio::test]
async fn nats_request_reply_round_trip() {
    let server = NatsServer::start().expect("start nats-server");
    let client = connect_nats(&nats_settings(server.url()), "runtime-test")
        .await
        .expect("connect");
    assert_request_reply(&client).await;
}

#[tokio::test]
async fn nats_reconnects_after_a_server_restart() {
    let server =
        NatsServer::start_with(NatsOptions::default().jetstream(false)).expect("start nats-server");
    let client = connect_nats(&nats_settings(server.url()), "runtime-test")
        .await
        .expect("connect");
    server.kill().expect("kill nats-server");
    server.restart().expect("restart nats-server");

    let deadline = Instant::now() + Duration::from_secs(10);
    while client.connection_state() != async_nats::connection::State::Connected {
        assert!(Instant::now() < deadline, "client did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_request_reply(&client).await;
}

#[tokio::test]
async fn nats_user_and_password_are_applied() {
    let server = NatsServer::start_with(
        NatsOptions::default()
            .jetstream(false)
            .config("authorization { users = [ { user: planner, password: s3cret } ] }\n"),
    )
    .expect("start nats-server with users");

    let good = NatsSettings {
        user: Some("planner".to_owned()),
        password: Some(Secret::new("s3cret")),
        ..nats_settings(server.url())
    };
    let client = connect_nats(&good, "runtime-test").await.expect("connect");
    assert_request_reply(&client).await;

    let bad = NatsSettings {
        user: Some("planner".to_owned()),
        password: Some(Secret::new("wrong")),
        ..nats_settings(server.url())
    };
    let started = Instant::now();
    let error = connect_nats(&bad, "runtime-test")
        .await
        .expect_err("wrong password");
    assert_eq!(error.kind(), ConnectErrorKind::Rejected, "{error}");
    assert_eq!(error.backend(), Backend::Nats);
    // refused credentials are not retried until the deadline
    assert!(started.elapsed() < Duration::from_secs(4), "{error}");
}

#[tokio::test]
async fn nats_replies_come_back_under_the_inbox_prefix() {
    // a user who may receive replies only under its own inbox prefix
    let server = NatsServer::start_with(NatsOptions::default().jetstream(false).config(
        "authorization { users = [ { user: app, password: s3cret, permissions: {\n\
         publish: { allow: [\"rollout.test.>\", \"_INBOX_app.>\"] }\n\
         subscribe: { allow: [\"rollout.test.>\", \"_INBOX_app.>\"] } } } ] }\n",
    ))
    .expect("start nats-server with an inbox-restricted user");
    let settings = NatsSettings {
        user: Some("app".to_owned()),
        password: Some(Secret::new("s3cret")),
        inbox_prefix: Some("_INBOX_app".to_owned()),
        ..nats_settings(server.url())
    };
    let client = connect_nats(&settings, "runtime-test")
        .await
        .expect("connect");
    assert!(client.new_inbox().starts_with("_INBOX_app."));
    assert_request_reply(&client).await;
}

#[tokio::test]
async fn nats_closed_port_fails_after_the_timeout() {
    let port = free_port().expect("free port");
    let url = format!("nats://127.0.0.1:{port}");
    let settings = NatsSettings {
        connect_timeout: Duration::from_millis(500),
        ..nats_settings(url.clone())
    };
    let started = Instant::now();
    let error = connect_nats(&settings, "runtime-test")
        .await
        .expect_err("nothing listens there");
    let elapsed = started.elapsed();
    assert_eq!(error.kind(), ConnectErrorKind::Unreachable, "{error}");
    assert_eq!(error.url(), url);
    let text = error.to_string();
    assert!(text.starts_with(&format!("nats at {url}: ")), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "gave up late: {elapsed:?}"
    );
}

#[tokio::test]
async fn redis_ping_round_trip() {
    let server = RedisServer::start().expect("start redis-server");
    let mut manager = connect_redis(&redis_settings(server.url()))
        .await
        .expect("connect");
    let pong: String = redis::cmd("PING")
        .query_async(&mut manager)
        .await
        .expect("ping");
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn redis_password_given_apart_from_the_url() {
    let server = RedisServer::start_with(RedisOptions::default().password("s3cret"))
        .expect("start redis-server with a password");
    let bare_url = format!("redis://127.0.0.1:{}", server.port());

    let settings = RedisSettings {
        password: Some(Secret::new("s3cret")),
        ..redis_settings(bare_url.clone())
    };
    let client = redis_client(&settings).expect("client");
    let mut manager = connect_redis_with(&client, &settings)
        .await
        .expect("connect with password");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut manager)
        .await
        .expect("set");
    // the client also opens dedicated connections with the same credentials
    let mut dedicated = client
        .get_multiplexed_async_connection()
        .await
        .expect("dedicated connection");
    let value: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut dedicated)
        .await
        .expect("get");
    assert_eq!(value, "v");

    // the url's own password works too
    connect_redis(&redis_settings(server.url()))
        .await
        .expect("connect with the password in the url");

    let wrong = RedisSettings {
        password: Some(Secret::new("wrong")),
        ..redis_settings(bare_url)
    };
    let started = Instant::now();
    let error = connect_redis(&wrong).await.expect_err("wrong password");
    assert_eq!(error.kind(), ConnectErrorKind::Rejected, "{error}");
    assert_eq!(error.backend(), Backend::Redis);
    assert!(started.elapsed() < Duration::from_secs(4), "{error}");
}

#[tokio::test]
async fn redis_acl_user_given_apart_from_the_url() {
    let server = RedisServer::start_with(RedisOptions::default().user("ticker").password("s3cret"))
        .expect("start redis-server with an acl user");
    let settings = RedisSettings {
        user: Some("ticker".to_owned()),
        password: Some(Secret::new("s3cret")),
        ..redis_settings(format!("redis://127.0.0.1:{}", server.port()))
    };
    let mut manager = connect_redis(&settings).await.expect("connect as ticker");
    let user: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut manager)
        .await
        .expect("acl whoami");
    assert_eq!(user, "ticker");
}

#[tokio::test]
async fn redis_closed_port_fails_after_the_timeout() {
    let port = free_port().expect("free port");
    let url = format!("redis://127.0.0.1:{port}");
    let settings = RedisSettings {
        connect_timeout: Duration::from_millis(500),
        ..redis_settings(url.clone())
    };
    let started = Instant::now();
    let error = connect_redis(&settings)
        .await
        .expect_err("nothing listens there");
    let elapsed = started.elapsed();
    assert_eq!(error.kind(), ConnectErrorKind::Unreachable, "{error}");
    let text = error.to_string();
    assert!(text.starts_with(&format!("redis at {url}: ")), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "gave up late: {elapsed:?}"
    );
}

#[tokio::test]
async fn redis_waits_for_a_server_that_starts_late() {
    let server = RedisServer::start().expect("start redis-server");
    server.stop().expect("stop redis-server");
    let settings = redis_settings(server.url());
    let connecting = tokio::spawn(async move { connect_redis(&settings).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart redis-server");
        server
    })
    .await
    .expect("restart task");
    let mut manager = connecting
        .await
        .expect("connect task")
        .expect("connects once the server is up");
    let pong: String = redis::cmd("PING")
        .query_async(&mut manager)
        .await
        .expect("ping");
    assert_eq!(pong, "PONG");
    drop(server);
}
