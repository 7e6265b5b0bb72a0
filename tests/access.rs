//! Access control (SPEC §11) with the configuration the deployment ships: the NATS users
//! and subject permissions of `deploy/nats/accounts.conf`, taken verbatim (the test only
//! defines the password variables it reads), and the Redis ACL user of
//! `deploy/redis/users.acl` (its password hash replaced by a test password). Services log
//! in with credentials from their configuration; TLS, with client certificates, is set up
//! with a throwaway CA.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rollout_core::Lifecycle;
use rollout_runtime::connect::{connect_nats, connect_redis, ConnectErrorKind};
use rollout_sdk::{CommandClient, ErrorKind, EvalClient, Namespace, RequestOptions};
use rollout_testkit::{NatsOptions, NatsServer, RedisOptions, RedisServer};
use rollout_wire::events::EventKind;
use support::cluster::{
    boolean_flag, evaluator_config, nats_settings, operator_commands, planner_config,
    redis_settings, start_evaluator, Login,
};
use support::procs::{Service, ServiceProcess};
use support::{eventually, NS, PATIENCE};

/// The users of accounts.conf and the password each gets here.
const USERS: [(&str, &str); 7] = [
    ("operator", "OPERATOR"),
    ("sdk-prod", "SDK_PROD"),
    ("sdk-dev", "SDK_DEV"),
    ("planner", "PLANNER"),
    ("ticker", "TICKER"),
    ("evaluator", "EVALUATOR"),
    ("loadtest", "LOADTEST"),
];

/// The Redis ACL user of deploy/redis/users.acl.
const REDIS_USER: &str = "rollout";
const REDIS_PASSWORD: &str = "redis-test-password";

fn password(user: &str) -> String {
    format!("{user}-test-password")
}

fn login(user: &str) -> Login {
    Login::new(user, &password(user))
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// deploy/nats/accounts.conf as shipped, preceded by definitions of the password variables
/// it reads (NATS resolves `$VAR` from config variables before the environment).
fn accounts_conf() -> String {
    let shipped = std::fs::read_to_string(repo_file("deploy/nats/accounts.conf"))
        .expect("deploy/nats/accounts.conf");
    let mut text = String::new();
    for (user, var) in USERS {
        text.push_str(&format!("ROLLOUT_{var}_PASSWORD: \"{}\"\n", password(user)));
    }
    text.push_str(&shipped);
    text
}

/// Redis with deploy/redis/users.acl's users (each `#<sha256>` password replaced by
/// `>REDIS_PASSWORD`); the test kit's own `admin` user (everything allowed) reads and
/// dumps for the checks.
fn restricted_redis() -> RedisServer {
    let shipped = std::fs::read_to_string(repo_file("deploy/redis/users.acl"))
        .expect("deploy/redis/users.acl");
    let mut users = String::new();
    for line in shipped.lines() {
        let line = line.trim();
        if !line.starts_with("user ") || line.starts_with("user default ") {
            continue;
        }
        let rendered: Vec<String> = line
            .split_whitespace()
            .map(|word| {
                if word.starts_with('#') && word.len() == 65 {
                    format!(">{REDIS_PASSWORD}")
                } else {
                    word.to_owned()
                }
            })
            .collect();
        users.push_str(&rendered.join(" "));
        users.push('\n');
    }
    assert!(
        users.contains("user rollout "),
        "users.acl defines the rollout user"
    );
    RedisServer::start_with(
        RedisOptions::default()
            .user("admin")
            .password("admin-test-password")
            .extra_config(users),
    )
    .expect("redis-server starts")
}

/// The server's URL without the test kit's admin credentials: services log in as the ACL
/// user through their settings.
fn plain_url(redis: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}", redis.port())
}

fn restricted_nats(extra: &str) -> NatsServer {
    NatsServer::start_with(NatsOptions::default().config(format!("{}\n{extra}", accounts_conf())))
        .expect("nats-server starts with the shipped users")
}

/// The NATS server log lines reporting a permissions violation.
fn violations(nats: &NatsServer) -> Vec<String> {
    std::fs::read_to_string(nats.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// A client connection as `user` that records the server's errors.
async fn connect_as(url: &str, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&errors);
    let client =
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password(user))
            .event_callback(move |event| {
                let sink = Arc::clone(&sink);
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        sink.lock().expect("errors").push(error.to_string());
                    }
                }
            })
            .connect(url)
            .await
            .unwrap_or_else(|error| panic!("{user} connects: {error}"));
    (client, errors)
}

fn commands_as(client: async_nats::Client) -> CommandClient {
    CommandClient::new(client, Namespace::new(NS).expect("namespace")).with_options(
        RequestOptions {
            timeout: Duration::from_millis(1_500),
            retries: 0,
            ..RequestOptions::default()
        },
    )
}

async fn redis_keys(redis: &RedisServer) -> Vec<String> {
    let redis = redis.url();
    tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(redis).expect("url");
        let mut connection = client.get_connection().expect("admin connects");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut connection)
            .expect("keys");
        keys.sort();
        keys
    })
    .await
    .expect("keys task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_user_cannot_command_and_no_planner_sees_it() {
    rollout_runtime::telemetry::init_for_tests();
    let nats = restricted_nats("");
    let redis = restricted_redis();
    let shutdown = rollout_runtime::shutdown::Shutdown::new();
    let planner = planner::Planner::start(
        planner_config(
            nats_settings(&nats.url(), &login("planner")),
            redis_settings(&plain_url(&redis), &Login::new(REDIS_USER, REDIS_PASSWORD)),
        ),
        shutdown.clone(),
    )
    .await
    .expect("the planner logs in as planner");

    let (sdk, sdk_errors) = connect_as(&nats.url(), "sdk-prod").await;
    let refused = commands_as(sdk.clone())
        .create_flag(boolean_flag("smuggled"))
        .await
        .expect_err("an sdk user may not command");
    assert!(
        matches!(refused.kind(), ErrorKind::Timeout | ErrorKind::Transport),
        "the request never reached a planner: {refused}"
    );
    // nor through the durable stream (nor the JetStream API at all)
    let jetstream = async_nats::jetstream::new(sdk.clone());
    let stored = tokio::time::timeout(Duration::from_secs(2), async {
        jetstream
            .publish(format!("rollout.cmdq.{NS}.flag.create"), "{}".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    })
    .await;
    assert!(
        !matches!(stored, Ok(Ok(_))),
        "the stream stored an sdk user's command"
    );
    // nor listen to commands
    let mut snoop = sdk
        .subscribe("rollout.cmd.>")
        .await
        .expect("subscribe call");
    sdk.flush().await.expect("flush");

    let (operator, _) = connect_as(&nats.url(), "operator").await;
    let operator_commands = commands_as(operator.clone());
    operator_commands
        .create_flag(boolean_flag("allowed"))
        .await
        .expect("the operator may command");
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_millis(300), snoop.next()).await,
            Ok(Some(_))
        ),
        "the sdk user saw a command"
    );

    let keys = redis_keys(&redis).await;
    assert!(
        keys.iter().any(|key| key.ends_with(":flag:allowed")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|key| key.contains("smuggled")), "{keys:?}");
    let stream_messages = async_nats::jetstream::new(operator)
        .get_stream("ROLLOUT_CMDS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(stream_messages, 0);

    let seen = sdk_errors.lock().expect("errors").clone();
    assert!(
        seen.iter()
            .any(|error| error.contains("Permissions Violation for Publish to \"rollout.cmd.")),
        "the server told the sdk user why: {seen:?}"
    );
    let logged = violations(&nats);
    assert!(
        logged.iter().all(|line| line.contains("sdk-prod")),
        "only the sdk user was refused: {logged:?}"
    );
    shutdown.trigger();
    planner.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_refused() {
    rollout_runtime::telemetry::init_for_tests();
    let nats = restricted_nats("");
    let redis = restricted_redis();
    let anonymous = async_nats::connect(nats.url()).await;
    assert!(
        anonymous.is_err(),
        "an anonymous nats connection was accepted"
    );

    let mut settings = nats_settings(&nats.url(), &Login::default());
    settings.connect_timeout = Duration::from_secs(2);
    let error = connect_nats(&settings, "anonymous")
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), ConnectErrorKind::Rejected, "{error}");
    let mut settings = nats_settings(&nats.url(), &Login::new("planner", "wrong"));
    settings.connect_timeout = Duration::from_secs(2);
    let error = connect_nats(&settings, "impostor")
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), ConnectErrorKind::Rejected, "{error}");
    connect_nats(&nats_settings(&nats.url(), &login("planner")), "planner")
        .await
        .expect("the right password is accepted");

    // no credentials (the default user is off), a wrong password, a user the ACL lacks
    let url = plain_url(&redis);
    for login in [
        Login::default(),
        Login::new(REDIS_USER, "wrong"),
        Login::new("intruder", REDIS_PASSWORD),
    ] {
        let mut settings = redis_settings(&url, &login);
        settings.connect_timeout = Duration::from_secs(2);
        let error = connect_redis(&settings).await.expect_err("redis refuses");
        assert_eq!(
            error.kind(),
            ConnectErrorKind::Rejected,
            "{login:?}: {error}"
        );
    }
    connect_redis(&redis_settings(
        &url,
        &Login::new(REDIS_USER, REDIS_PASSWORD),
    ))
    .await
    .expect("the acl user logs in");
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM
/// files in `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [PathBuf; 5] {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rollout test ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
        .expect("ca certificate");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let client_key = KeyPair::generate().expect("key");
    let mut client_params =
        CertificateParams::new(vec!["rollout-service".to_owned()]).expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "rollout-service");
    let client = client_params
        .signed_by(&client_key, &ca)
        .expect("client certificate");
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server-key.pem", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client-key.pem", client_key.serialize_pem()),
    ];
    files.map(|(name, text)| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_speak_tls_with_client_certificates() {
    rollout_runtime::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(dir.path());
    let nats = restricted_nats(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
        server_cert.display(),
        server_key.display(),
        ca.display()
    ));
    let redis = restricted_redis();
    let tls = |user: &str| {
        let mut settings = nats_settings(&nats.url(), &login(user));
        settings.tls_ca = Some(ca.clone());
        settings.tls_cert = Some(client_cert.clone());
        settings.tls_key = Some(client_key.clone());
        settings.tls_required = true;
        settings.connect_timeout = Duration::from_secs(3);
        settings
    };

    // plain text, an unknown CA, or no client certificate: refused
    let mut plain = nats_settings(&nats.url(), &login("operator"));
    plain.connect_timeout = Duration::from_secs(2);
    assert!(
        connect_nats(&plain, "plain").await.is_err(),
        "a plain-text client got in"
    );
    let mut no_client_cert = tls("operator");
    no_client_cert.tls_cert = None;
    no_client_cert.tls_key = None;
    assert!(
        connect_nats(&no_client_cert, "anonymous-tls")
            .await
            .is_err(),
        "no client certificate, yet connected"
    );
    let mut unknown_ca = tls("operator");
    unknown_ca.tls_ca = Some(server_cert.clone());
    assert!(
        connect_nats(&unknown_ca, "wrong-ca").await.is_err(),
        "an untrusted server was accepted"
    );

    // the planner and an evaluator over TLS, the operator and an SDK too
    let shutdown = rollout_runtime::shutdown::Shutdown::new();
    let redis_login = Login::new(REDIS_USER, REDIS_PASSWORD);
    let planner = planner::Planner::start(
        planner_config(
            tls("planner"),
            redis_settings(&plain_url(&redis), &redis_login),
        ),
        shutdown.clone(),
    )
    .await
    .expect("the planner connects over tls");
    let evaluator = start_evaluator(evaluator_config(
        tls("evaluator"),
        redis_settings(&plain_url(&redis), &redis_login),
    ))
    .await;
    let operator = connect_nats(&tls("operator"), "operator")
        .await
        .expect("operator over tls");
    assert!(
        operator.server_info().tls_required,
        "the server requires tls"
    );
    operator_commands(operator)
        .create_flag(boolean_flag("over-tls"))
        .await
        .expect("a command over tls");
    let sdk = connect_nats(&tls("sdk-prod"), "sdk")
        .await
        .expect("sdk over tls");
    let eval = EvalClient::builder(sdk, Namespace::new(NS).expect("ns"))
        .cache_capacity(0)
        .connect()
        .await
        .expect("eval client");
    let answer = eventually("an evaluation over tls", PATIENCE, || async {
        eval.evaluate("over-tls", &rollout_sdk::Entity::with_id("u-1"))
            .await
            .ok()
    })
    .await;
    assert_eq!(answer.variation, "off");
    assert!(violations(&nats).is_empty(), "{:?}", violations(&nats));
    evaluator.shutdown();
    shutdown.trigger();
    planner.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_system_works_under_the_shipped_restrictions() {
    rollout_runtime::telemetry::init_for_tests();
    let nats = restricted_nats("");
    let redis = restricted_redis();
    let dir = tempfile::tempdir().expect("tempdir");
    let redis_login = Login::new(REDIS_USER, REDIS_PASSWORD);

    // the planner in process, credentials in its settings
    let shutdown = rollout_runtime::shutdown::Shutdown::new();
    let planner = planner::Planner::start(
        planner_config(
            nats_settings(&nats.url(), &login("planner")),
            redis_settings(&plain_url(&redis), &redis_login),
        ),
        shutdown.clone(),
    )
    .await
    .expect("planner starts as planner");
    // tickers and an evaluator as processes, credentials from the environment
    let service_env = |user: &str| {
        HashMap::from([
            ("ROLLOUT_NATS__URL".to_owned(), nats.url()),
            ("ROLLOUT_NATS__USER".to_owned(), user.to_owned()),
            ("ROLLOUT_NATS__PASSWORD".to_owned(), password(user)),
            ("ROLLOUT_REDIS__URL".to_owned(), plain_url(&redis)),
            ("ROLLOUT_REDIS__USER".to_owned(), REDIS_USER.to_owned()),
            (
                "ROLLOUT_REDIS__PASSWORD".to_owned(),
                REDIS_PASSWORD.to_owned(),
            ),
            ("ROLLOUT_LOG__FORMAT".to_owned(), "json".to_owned()),
        ])
    };
    let mut tickers = Vec::new();
    for index in 0..2 {
        let mut env = service_env("ticker");
        env.insert(
            "ROLLOUT_TICKER__REPLICA_ID".to_owned(),
            format!("ticker-{index}"),
        );
        env.insert("ROLLOUT_TICKER__LEASE_TTL".to_owned(), "1s".to_owned());
        tickers.push(ServiceProcess::spawn(
            Service::Ticker,
            &format!("ticker-{index}"),
            dir.path(),
            &env,
        ));
    }
    let mut env = service_env("evaluator");
    env.insert("ROLLOUT_HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned());
    env.insert("ROLLOUT_HTTP__NAMESPACE".to_owned(), NS.to_owned());
    let mut evaluator = ServiceProcess::spawn(Service::Evaluator, "evaluator", dir.path(), &env);

    // the operator creates a flag and a phased rollout and watches it
    let (operator, _) = connect_as(&nats.url(), "operator").await;
    let mut events = operator
        .subscribe(format!("rollout.events.{NS}.>"))
        .await
        .expect("the operator follows events");
    let commands = operator_commands(operator.clone());
    commands
        .create_flag(boolean_flag("guarded"))
        .await
        .expect("flag created by the operator");
    let spec = serde_json::from_value(serde_json::json!({
        "flag": "guarded", "baseline": "off", "candidate": "on",
        "phases": [{"percentage": 10, "duration": "1s"}, {"percentage": 50, "duration": "1s"}, {"percentage": 100}],
    }))
    .expect("spec");
    let rollout = commands
        .create_rollout(spec)
        .await
        .expect("rollout created");

    // an SDK user of the namespace evaluates it, and reports outcomes and fleet calls
    let (sdk, sdk_errors) = connect_as(&nats.url(), "sdk-prod").await;
    let eval = EvalClient::builder(sdk.clone(), Namespace::new(NS).expect("ns"))
        .cache_capacity(0)
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("eval client");
    let mut steps_seen = Vec::new();
    let completed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = events.next().await {
            let event = rollout_sdk::decode_event(&message).expect("event decodes");
            if event.kind == EventKind::RolloutStep {
                steps_seen.push(event.to_step.unwrap_or(usize::MAX));
            }
            if event.kind == EventKind::RolloutCompleted {
                return event;
            }
        }
        panic!("events ended")
    })
    .await
    .expect("the rollout advances to completion under the restricted users");
    assert_eq!(completed.state, Some(Lifecycle::Completed));
    assert_eq!(
        steps_seen,
        vec![0, 1, 2],
        "every step entered once, in order"
    );
    let everyone_on = eventually(
        "the sdk user to see the completed rollout",
        PATIENCE,
        || async {
            let mut on = 0;
            for user in 0..50 {
                match eval
                    .evaluate(
                        "guarded",
                        &rollout_sdk::Entity::with_id(format!("user-{user}")),
                    )
                    .await
                {
                    Ok(answer) if answer.variation == "on" => on += 1,
                    _ => {}
                }
            }
            (on == 50).then_some(on)
        },
    )
    .await;
    assert_eq!(everyone_on, 50);
    eval.report_success("guarded", &rollout_sdk::Entity::with_id("user-1"), "on")
        .await
        .expect("sdk users report outcomes");
    let registered = sdk
        .request(
            format!("rollout.fleet.{NS}.register"),
            rollout_wire::codec::encode(
                &serde_json::json!({"agent_id": "edge-1", "labels": {"env": "prod"}}),
                rollout_wire::Encoding::MessagePack,
            )
            .expect("encodes")
            .into(),
        )
        .await
        .expect("sdk users talk fleet");
    let ack: serde_json::Value = rollout_wire::envelope::decode_reply(
        &registered.payload,
        rollout_wire::Encoding::MessagePack,
    )
    .expect("registered");
    assert_eq!(ack["agent_id"], "edge-1");
    // the other namespace is out of reach for this SDK user
    let other = EvalClient::builder(sdk.clone(), Namespace::new("dev").expect("ns"))
        .cache_capacity(0)
        .timeout(Duration::from_millis(800))
        .retries(0)
        .connect()
        .await
        .expect("client");
    let refused = other
        .evaluate("guarded", &rollout_sdk::Entity::with_id("u"))
        .await
        .expect_err("sdk-prod may not evaluate dev");
    assert!(
        matches!(refused.kind(), ErrorKind::Timeout | ErrorKind::Transport),
        "{refused}"
    );
    // the status query and the durable stream, as the operator
    let status = commands
        .rollout_status(&rollout.rollout_id)
        .await
        .expect("status");
    assert_eq!(status.state, Lifecycle::Completed);
    let jetstream = async_nats::jetstream::new(operator.clone());
    let mut outcome = operator
        .subscribe(format!("rollout.outcome.{NS}.stream-1"))
        .await
        .expect("outcomes");
    operator.flush().await.expect("flush");
    let body = rollout_wire::codec::encode(
        &serde_json::json!({"command_id": "stream-1", "flag": boolean_flag("queued")}),
        rollout_wire::Encoding::MessagePack,
    )
    .expect("encodes");
    jetstream
        .publish(format!("rollout.cmdq.{NS}.flag.create"), body.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let outcome = tokio::time::timeout(PATIENCE, outcome.next())
        .await
        .expect("the stream's outcome")
        .expect("open");
    let result: serde_json::Value =
        rollout_wire::envelope::decode_reply(&outcome.payload, rollout_wire::Encoding::MessagePack)
            .expect("applied");
    assert_eq!(result["version"], 1);

    // nothing any service or user did was refused, except the SDK user's reach into dev
    let refusals: Vec<String> = violations(&nats)
        .into_iter()
        .filter(|line| !line.contains("rollout.eval.dev"))
        .collect();
    assert!(refusals.is_empty(), "permissions violations: {refusals:#?}");
    assert!(
        sdk_errors
            .lock()
            .expect("errors")
            .iter()
            .all(|error| error.contains("rollout.eval.dev")),
        "{:?}",
        sdk_errors.lock().expect("errors")
    );
    for ticker in &tickers {
        assert_eq!(ticker.count("NOPERM"), 0, "{}", ticker.tail(20));
    }
    assert!(evaluator.is_running(), "{}", evaluator.tail(20));
    assert_eq!(evaluator.count("NOPERM"), 0, "{}", evaluator.tail(20));
    shutdown.trigger();
    planner.wait().await;
}
