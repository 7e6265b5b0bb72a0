//! Access control (SPEC §11, §11.1 least privilege) with the configuration the deployment
//! ships: the NATS users, subject permissions and per-user inbox prefixes of
//! `deploy/nats/accounts.conf`, taken verbatim (the test only defines the password variables
//! it reads), and the per-service Redis ACL users of `deploy/redis/users.acl`, verbatim too,
//! logged into with the example passwords of `deploy/.env.example`. Services log in with
//! credentials from their configuration; TLS, with client certificates, is set up with a
//! throwaway CA. Every test asserts what a user or an attacker sees: replies, refusals
//! (`NOPERM`, permissions violations), Redis left unchanged, and — when the whole system
//! runs — no refusal at all in Redis's `ACL LOG` or the NATS server's log.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use planner::PlannerConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rollout_core::{Lifecycle, Timestamp};
use rollout_runtime::config::{NatsSettings, RedisSettings};
use rollout_runtime::connect::{connect_nats, connect_redis, ConnectErrorKind};
use rollout_runtime::shutdown::Shutdown;
use rollout_sandbox::planner_config;
use rollout_sdk::{CommandClient, ErrorKind, EvalClient, Namespace, RequestOptions};
use rollout_store::Connection;
use rollout_store::Keys;
use rollout_store::{
    load_flag, redis_time, Actor, Change, Conditions, FlagRecord, Happened, Relay, StoreError,
    Writer, Written,
};
use rollout_testkit::{NatsOptions, NatsServer, RedisOptions, RedisReply, RedisServer};
use rollout_wire::events::{ChangeEvent, EventKind};
use rollout_wire::subjects::Subjects;
use serde_json::{json, Value};
use support::cluster::{
    boolean_flag, evaluator_config, nats_settings, operator_commands, redis_settings,
    report_candidate, start_evaluator, Login,
};
use support::procs::Service;
use support::{eventually, NS, PATIENCE};

/// The users of accounts.conf and the password each gets here.
const USERS: [(&str, &str); 8] = [
    ("operator", "OPERATOR"),
    ("console", "CONSOLE"),
    ("sdk-prod", "SDK_PROD"),
    ("sdk-dev", "SDK_DEV"),
    ("planner", "PLANNER"),
    ("ticker", "TICKER"),
    ("evaluator", "EVALUATOR"),
    ("loadtest", "LOADTEST"),
];

/// The Redis ACL users of deploy/redis/users.acl.
const REDIS_USERS: [&str; 4] = ["planner", "ticker", "evaluator", "healthcheck"];

/// The commit script, as `rollout-store` runs it.
const COMMIT_LUA: &str = include_str!("../shared/rollout-store/src/scripts/commit.lua");

fn password(user: &str) -> String {
    format!("{user}-test-password")
}

fn login(user: &str) -> Login {
    Login::new(user, &password(user))
}

/// The inbox prefix accounts.conf lets `user` receive replies under.
fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// NATS settings of a service or client logged in as `user`, with its own inbox prefix
/// (what deploy/config/*.toml set).
fn nats_as(url: &str, user: &str) -> NatsSettings {
    let mut settings = nats_settings(url, &login(user));
    settings.inbox_prefix = Some(inbox_prefix(user));
    settings
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `deploy/.env.example`: variable → value.
fn env_example() -> BTreeMap<String, String> {
    support::compose::env_example()
}

/// The Redis login of ACL user `user`, with its example password from deploy/.env.example.
fn redis_login(user: &str) -> Login {
    let variable = format!("ROLLOUT_REDIS_{}_PASSWORD", user.to_ascii_uppercase());
    let env = env_example();
    let password = env
        .get(&variable)
        .unwrap_or_else(|| panic!("deploy/.env.example sets {variable}"));
    Login::new(user, password)
}

/// Redis settings of the service `user` (its own ACL user).
fn redis_as(redis: &RedisServer, user: &str) -> RedisSettings {
    redis_settings(&plain_url(redis), &redis_login(user))
}

async fn redis_connection(redis: &RedisServer, user: &str) -> Connection {
    connect_redis(&redis_as(redis, user))
        .await
        .unwrap_or_else(|error| panic!("redis user {user} logs in: {error}"))
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

/// Redis with deploy/redis/users.acl's users, verbatim (their passwords are the example
/// ones of deploy/.env.example); the test kit's own `admin` user (everything allowed)
/// seeds, reads and reads the ACL log for the checks.
fn restricted_redis() -> RedisServer {
    restricted_redis_with(RedisOptions::default())
}

/// [`restricted_redis`] on `options` (e.g. with the AOF on). The shipped `default` line
/// comes after the test kit's own (`user default off`), so the default user is exactly what
/// users.acl makes it: off, yet allowed what Redis's AOF loading runs as it.
fn restricted_redis_with(options: RedisOptions) -> RedisServer {
    let shipped = std::fs::read_to_string(repo_file("deploy/redis/users.acl"))
        .expect("deploy/redis/users.acl");
    let users: String = shipped
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("user "))
        .map(|line| format!("{line}\n"))
        .collect();
    for user in REDIS_USERS {
        assert!(
            users.contains(&format!("user {user} ")),
            "users.acl defines {user}"
        );
    }
    RedisServer::start_with(
        options
            .user("admin")
            .password("admin-test-password")
            .extra_config(users),
    )
    .expect("redis-server starts with the shipped acl users")
}

/// The server's URL without the test kit's admin credentials: services log in as their
/// ACL user through their settings.
fn plain_url(redis: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}", redis.port())
}

/// Redis's `ACL LOG` (read as the admin): one line per refusal, `user reason object`.
fn acl_denials(redis: &RedisServer) -> Vec<String> {
    let reply =
        tokio::task::block_in_place(|| redis.command(&["ACL", "LOG", "128"])).expect("acl log");
    let RedisReply::Array(Some(entries)) = reply else {
        panic!("ACL LOG answered {reply:?}");
    };
    entries
        .iter()
        .map(|entry| {
            let RedisReply::Array(Some(fields)) = entry else {
                return format!("{entry:?}");
            };
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair[0].as_text().as_deref() == Some(name))
                    .and_then(|pair| pair.get(1)?.as_text())
                    .unwrap_or_default()
            };
            format!(
                "{} {} {}",
                field("username"),
                field("reason"),
                field("object")
            )
        })
        .collect()
}

/// An admin command on the test kit's Redis.
fn admin(redis: &RedisServer, args: &[&str]) -> RedisReply {
    tokio::task::block_in_place(|| redis.command(args)).expect("admin command")
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

/// A client connection as `user`, with its own inbox prefix, that records the server's
/// errors.
async fn connect_as(url: &str, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    connect_with_inbox(url, user, &inbox_prefix(user)).await
}

/// A client connection as `user` receiving replies under `inbox` (the client default is
/// `_INBOX`), recording the server's errors.
async fn connect_with_inbox(
    url: &str,
    user: &str,
    inbox: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&errors);
    let client =
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password(user))
            .custom_inbox_prefix(inbox)
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
    commands_in(client, NS)
}

fn commands_in(client: async_nats::Client, namespace: &str) -> CommandClient {
    CommandClient::new(client, Namespace::new(namespace).expect("namespace")).with_options(
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

/// Sends `args` as one Redis command; the reply or the error.
async fn redis_command(
    connection: &mut Connection,
    args: &[&str],
) -> Result<redis::Value, redis::RedisError> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query_async(connection).await
}

fn is_noperm(error: &redis::RedisError) -> bool {
    error.code() == Some("NOPERM")
}

fn actor() -> Actor {
    Actor {
        name: "access-test".to_owned(),
        command_id: None,
        trace_id: None,
        reason: None,
    }
}

/// Key `rest` of namespace `prod` as the store lays it out (README's key table): the ACL
/// tests name the keys the shipped `users.acl` patterns must cover, so they spell them.
fn stored_key(rest: &str) -> String {
    format!("ro:{{{NS}}}:{rest}")
}

/// The change that creates (`version` 0) or replaces flag `key` of `prod`, as the planner
/// decides it, and the Redis time to commit it at.
async fn flag_change(connection: &mut Connection, key: &str, version: u64) -> (Change, Timestamp) {
    let now = redis_time(connection).await.expect("redis time");
    let mut change = Change::of_flag(key, version);
    change.flag = Some(FlagRecord {
        flag: boolean_flag(key),
        active_rollout: None,
        last_rollout: None,
        created_at: now,
        updated_at: now,
    });
    change.flag_created = version == 0;
    let kind = if version == 0 {
        EventKind::FlagCreated
    } else {
        EventKind::FlagUpdated
    };
    change.happened = vec![Happened::event(kind, None)];
    (change, now)
}

/// Commits change `change` at `now` through `writer`.
async fn commit(
    writer: &Writer,
    (change, now): (Change, Timestamp),
) -> Result<Written, StoreError> {
    let namespace = Namespace::new(NS).expect("namespace");
    writer
        .commit(&namespace, change, actor(), now, Conditions::default())
        .await
}

/// Commits a new version of existing flag `key` of `prod` through `writer` (reading with
/// `connection`); the events it published.
async fn commit_flag_update(
    writer: &Writer,
    connection: &mut Connection,
    keys: &Keys,
    key: &str,
) -> Vec<ChangeEvent> {
    let version = load_flag(connection, keys, key)
        .await
        .expect("the flag loads")
        .version;
    let update = flag_change(connection, key, version).await;
    match commit(writer, update).await.expect("commit runs") {
        Written::Committed { events, .. } => events,
        refused => panic!("the update was refused: {refused:?}"),
    }
}

/// The shipped users on private servers — NATS with accounts.conf, Redis with users.acl —
/// and the services started in process on them, each logged in as itself (its NATS user
/// and inbox prefix, its Redis ACL user).
struct Restricted {
    nats: NatsServer,
    redis: RedisServer,
    shutdown: Shutdown,
    planner: Option<planner::Planner>,
    evaluator: Option<Arc<evaluator::EvaluatorHandle>>,
}

impl Restricted {
    /// The servers, a planner (its configuration adjusted by `configure`) and, if asked,
    /// an evaluator that is ready.
    async fn start(configure: impl FnOnce(&mut PlannerConfig), evaluator: bool) -> Restricted {
        rollout_runtime::telemetry::init_for_tests();
        let nats = restricted_nats("");
        let redis = restricted_redis();
        let shutdown = Shutdown::new();
        let mut config =
            planner_config(nats_as(&nats.url(), "planner"), redis_as(&redis, "planner"));
        configure(&mut config);
        let planner = planner::Planner::start(config, shutdown.clone())
            .await
            .expect("the planner logs in as planner");
        let evaluator = if evaluator {
            Some(
                start_evaluator(evaluator_config(
                    nats_as(&nats.url(), "evaluator"),
                    redis_as(&redis, "evaluator"),
                ))
                .await,
            )
        } else {
            None
        };
        Restricted {
            nats,
            redis,
            shutdown,
            planner: Some(planner),
            evaluator,
        }
    }

    fn evaluator(&self) -> &evaluator::EvaluatorHandle {
        self.evaluator
            .as_deref()
            .expect("started with an evaluator")
    }

    async fn stop(mut self) {
        if let Some(evaluator) = &self.evaluator {
            evaluator.shutdown();
        }
        self.shutdown.trigger();
        if let Some(planner) = self.planner.take() {
            planner.wait().await;
        }
    }
}

/// One JSON request to the console at `addr`.
async fn console_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> rollout_sandbox::http::Response {
    let bytes = serde_json::to_vec(body).expect("json");
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    rollout_sandbox::http::request(addr, method, path, &all, &bytes, Duration::from_secs(10))
        .await
        .expect("the console answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_does_its_work_as_the_console_user_and_nothing_is_refused() {
    use rollout_console::auth::{hash_password, Role};
    use rollout_console::config::{Account, ConsoleConfig, ConsoleSettings, HttpSettings, Listed};

    let system = Restricted::start(|_| {}, true).await;
    let nats = &system.nats;
    let (operator, _) = connect_as(&nats.url(), "operator").await;
    commands_as(operator)
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    // the console logs in as deploy/config/console.toml says: user console, its own inbox
    let shutdown = Shutdown::new();
    let config = ConsoleConfig {
        nats: nats_as(&nats.url(), "console"),
        http: HttpSettings {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        },
        console: ConsoleSettings {
            namespaces: Listed(vec![NS.to_owned()]),
            users: Listed(vec![Account {
                name: "alice".to_owned(),
                role: Role::Operator,
                password_hash: rollout_runtime::config::Secret::new(
                    hash_password("alice-password").expect("hash"),
                ),
            }]),
            ..ConsoleSettings::default()
        },
        ..ConsoleConfig::default()
    };
    let console = rollout_console::start(config, shutdown.clone())
        .await
        .expect("the console starts as console");
    let addr = console.addr();
    let signed_in = console_call(
        addr,
        "POST",
        "/api/signin",
        &[],
        &json!({"name": "alice", "password": "alice-password"}),
    )
    .await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.text());
    let cookie = signed_in.headers["set-cookie"]
        .split(';')
        .next()
        .expect("cookie")
        .to_owned();
    let csrf = signed_in.json()["csrf"].as_str().expect("csrf").to_owned();
    let headers = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())];
    // a command, queries and an evaluation, all through the console's own user
    let created = console_call(
        addr,
        "POST",
        "/api/rollouts",
        &headers,
        &json!({"namespace": NS, "spec": "{\"flag\": \"checkout\", \"baseline\": \"off\", \"candidate\": \"on\", \"preset\": \"1hr\"}"}),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text());
    let rollout_id = created.json()["rollout_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let shown = console_call(
        addr,
        "GET",
        &format!("/api/rollouts/{NS}/{rollout_id}"),
        &headers,
        &Value::Null,
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.json()["status"]["state"], "running");
    let explained = eventually("the evaluator to serve the rollout", PATIENCE, || async {
        let answer = console_call(
            addr,
            "POST",
            "/api/explain",
            &headers,
            &json!({"namespace": NS, "flag": "checkout", "entity_id": "user-1"}),
        )
        .await;
        (answer.status == 200 && answer.json()["rollout_id"] == json!(rollout_id)).then_some(answer)
    })
    .await;
    assert_eq!(
        explained.json()["reason"],
        "rollout",
        "{}",
        explained.text()
    );
    let metrics = console_call(addr, "GET", "/metrics", &[], &Value::Null).await;
    assert!(
        !metrics.text().contains("console_live_events_total 0"),
        "the console received the change events: {}",
        metrics.text()
    );
    assert!(
        violations(nats).is_empty(),
        "accounts.conf refused the console something: {:?}",
        violations(nats)
    );
    shutdown.trigger();
    console.stopped().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_user_cannot_command_and_no_planner_sees_it() {
    let system = Restricted::start(|_| {}, false).await;
    let (nats, redis) = (&system.nats, &system.redis);

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

    let keys = redis_keys(redis).await;
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
    let logged = violations(nats);
    assert!(
        logged.iter().all(|line| line.contains("sdk-prod")),
        "only the sdk user was refused: {logged:?}"
    );
    system.stop().await;
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

    // no credentials (the default user is off), a wrong password, a user the ACL lacks,
    // one service's user with another's password
    let url = plain_url(&redis);
    let evaluator_password = redis_login("evaluator").password.expect("password");
    for login in [
        Login::default(),
        Login::new("planner", "wrong"),
        Login::new("intruder", &evaluator_password),
        Login::new("planner", &evaluator_password),
    ] {
        let mut settings = redis_settings(&url, &login);
        settings.connect_timeout = Duration::from_secs(2);
        let error = connect_redis(&settings).await.expect_err("redis refuses");
        assert_eq!(
            error.kind(),
            ConnectErrorKind::Rejected,
            "{:?}: {error}",
            login.user
        );
    }
    for user in REDIS_USERS {
        connect_redis(&redis_as(&redis, user))
            .await
            .unwrap_or_else(|error| panic!("acl user {user} logs in: {error}"));
    }
}

/// Redis replays its AOF on start as the `default` user (Redis 7.0): were that user only
/// `off` with no commands, as a locked-down ACL file is tempted to write, every replayed
/// transaction would be refused ("NOPERM … ACLs rules changed") and a restart would come
/// back empty. Commits made through the shipped users survive a kill -9 and a restart, and
/// nobody can log in as `default`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_under_the_shipped_users_survive_a_redis_restart_from_its_aof() {
    rollout_runtime::telemetry::init_for_tests();
    let redis = restricted_redis_with(RedisOptions::default().appendonly(true));
    let keys = Keys::new(&Namespace::new(NS).expect("namespace"));
    let mut planner = redis_connection(&redis, "planner").await;
    let writer = Writer::unpublished(planner.clone());
    let created = commit(&writer, flag_change(&mut planner, "survivor", 0).await)
        .await
        .expect("the planner commits");
    assert!(matches!(created, Written::Committed { .. }), "{created:?}");
    commit_flag_update(&writer, &mut planner, &keys, "survivor").await;
    let record = stored_key("flag:survivor");
    let before = admin(&redis, &["HMGET", &record, "data", "rev"]);

    redis.kill().expect("kill -9");
    tokio::task::block_in_place(|| redis.restart()).expect("redis restarts from its AOF");

    let mut evaluator = redis_connection(&redis, "evaluator").await;
    let stored = load_flag(&mut evaluator, &keys, "survivor")
        .await
        .expect("the flag is still there after the restart");
    assert_eq!(stored.version, 2, "both commits were replayed");
    assert_eq!(admin(&redis, &["HMGET", &record, "data", "rev"]), before);
    // the default user can do what AOF loading needs, but no client can become it
    let refused = redis::Client::open(format!(
        "redis://default:anything@127.0.0.1:{}",
        redis.port()
    ))
    .expect("url")
    .get_multiplexed_async_connection()
    .await
    .expect_err("nobody logs in as default")
    .to_string()
    .to_lowercase();
    assert!(refused.contains("authentication failed"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evaluator_can_neither_run_the_commit_script_nor_write_records() {
    rollout_runtime::telemetry::init_for_tests();
    let redis = restricted_redis();
    let keys = Keys::new(&Namespace::new(NS).expect("namespace"));
    let flag_key = stored_key("flag:checkout");

    // the planner commits a flag through the commit script (which Redis now has cached)
    let mut planner = redis_connection(&redis, "planner").await;
    let created = flag_change(&mut planner, "checkout", 0).await;
    let outcome = commit(&Writer::unpublished(planner.clone()), created)
        .await
        .expect("the planner runs the commit script");
    assert!(matches!(outcome, Written::Committed { .. }), "{outcome:?}");
    let before = admin(&redis, &["HGETALL", &flag_key]);
    let outbox_before = admin(&redis, &["XLEN", &stored_key("outbox")]);

    // the evaluator reads it, as it must to serve it
    let mut evaluator = redis_connection(&redis, "evaluator").await;
    let stored = load_flag(&mut evaluator, &keys, "checkout")
        .await
        .expect("the evaluator reads flags");
    assert_eq!(stored.version, 1);

    // but the commit itself, the way every writer runs it, is refused
    let update = flag_change(&mut evaluator, "checkout", 1).await;
    let refused = commit(&Writer::unpublished(evaluator.clone()), update)
        .await
        .expect_err("the evaluator may not commit");
    match &refused {
        StoreError::Redis(error) => assert!(is_noperm(error), "{error}"),
        other => panic!("refused for another reason: {other}"),
    }
    assert!(refused.to_string().contains("evalsha"), "{refused}");
    // and so are the script by its hash (already loaded), by its text, and loading it
    let sha = redis::Script::new(COMMIT_LUA).get_hash().to_owned();
    let mut attempts: Vec<Vec<String>> = vec![
        vec![
            "EVALSHA".into(),
            sha.clone(),
            "1".into(),
            flag_key.clone(),
            "0".into(),
        ],
        vec![
            "EVAL".into(),
            COMMIT_LUA.into(),
            "1".into(),
            flag_key.clone(),
            "0".into(),
        ],
        vec!["SCRIPT".into(), "LOAD".into(), COMMIT_LUA.into()],
    ];
    // and so is every write of a record, an index, the audit, the outbox, a fence
    let writes: [&[&str]; 10] = [
        &["HSET", &flag_key, "rev", "99", "data", "forged"],
        &["HDEL", &flag_key, "data"],
        &["DEL", &flag_key],
        &[
            "HSET",
            &stored_key("rollout:r-1"),
            "rev",
            "1",
            "data",
            "forged",
        ],
        &["SADD", &stored_key("flags"), "forged"],
        &["ZADD", &stored_key("due"), "0", "r-1"],
        &["LPUSH", &stored_key("audit:flag:checkout"), "forged"],
        &["XADD", &stored_key("outbox"), "*", "event", "forged"],
        &["SET", &stored_key("fence"), "999"],
        &["SADD", "ro:namespaces", "forged"],
    ];
    attempts.extend(
        writes
            .iter()
            .map(|args| args.iter().map(|arg| (*arg).to_owned()).collect()),
    );
    for attempt in &attempts {
        let args: Vec<&str> = attempt.iter().map(String::as_str).collect();
        match redis_command(&mut evaluator, &args).await {
            Err(error) => assert!(is_noperm(&error), "{}: {error}", args[0]),
            Ok(reply) => panic!("the evaluator ran {}: {reply:?}", args[0]),
        }
    }

    // nothing changed; Redis logged every refusal, all of them the evaluator's
    assert_eq!(admin(&redis, &["HGETALL", &flag_key]), before);
    assert_eq!(
        admin(&redis, &["XLEN", &stored_key("outbox")]),
        outbox_before
    );
    assert_eq!(
        admin(&redis, &["EXISTS", &stored_key("rollout:r-1")]),
        RedisReply::Integer(0)
    );
    let denials = acl_denials(&redis);
    assert!(
        denials.iter().all(|line| line.starts_with("evaluator ")),
        "{denials:#?}"
    );
    for expected in [
        "evaluator command evalsha".to_owned(),
        "evaluator command eval".to_owned(),
        format!("evaluator key {flag_key}"),
        format!("evaluator key {}", stored_key("rollout:r-1")),
        format!("evaluator key {}", stored_key("due")),
        format!("evaluator key {}", stored_key("fence")),
    ] {
        assert!(denials.contains(&expected), "{expected}: {denials:#?}");
    }
}

/// Asserts that ACL user `user` may send every command of `allowed` and gets `NOPERM` for
/// every one of `refused`.
async fn assert_reach(redis: &RedisServer, user: &str, allowed: &[&[&str]], refused: &[&[&str]]) {
    let mut connection = redis_connection(redis, user).await;
    for args in allowed {
        if let Err(error) = redis_command(&mut connection, args).await {
            panic!("{user} needs {args:?}, refused: {error}");
        }
    }
    // nobody may administer the server or enumerate its keys
    let administration: [&[&str]; 5] = [
        &["FLUSHALL"],
        &["KEYS", "*"],
        &["CONFIG", "GET", "*"],
        &["ACL", "LIST"],
        &["SHUTDOWN", "NOSAVE"],
    ];
    for args in refused.iter().chain(&administration) {
        match redis_command(&mut connection, args).await {
            Err(error) if is_noperm(&error) => {}
            other => panic!("{user}: {args:?} answered {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_redis_user_is_refused_what_its_service_does_not_need() {
    rollout_runtime::telemetry::init_for_tests();
    let redis = restricted_redis();
    assert_reach(
        &redis,
        "planner",
        &[
            &["HMGET", "ro:{prod}:flag:x", "rev", "data"],
            &["SADD", "ro:namespaces", "prod"],
            &["SET", "ro:{prod}:cmd:c-1", "{}", "NX", "EX", "60"],
            &["XRANGE", "ro:{prod}:outbox", "-", "+"],
            &["HGETALL", "ro:{prod}:rollout:r-1:reports"],
            &["ZRANGE", "ro:{prod}:agents", "0", "-1"],
        ],
        &[
            &["SET", "ro:{ticker}:lease:0", "planner:1", "PX", "1000"],
            &["SET", "ro:{prod}:fence", "999"],
            &["HSET", "ro:{prod}:agent:edge-1", "labels", "{}"],
            &["HINCRBY", "ro:{prod}:outcomes:x:0", "on:err", "1000"],
            &["SET", "ro:generation", "forged"],
            &["GET", "elsewhere"],
        ],
    )
    .await;
    assert_reach(
        &redis,
        "ticker",
        &[
            &["PTTL", "ro:{ticker}:lease:0"],
            &["ZCARD", "ro:{ticker}:replicas"],
            &["GET", "ro:{ticker}:shards"],
            &["INCR", "ro:{ticker}:epoch"],
            &["SET", "ro:{prod}:fence", "1"],
            &["ZRANGEBYSCORE", "ro:{prod}:due", "-inf", "0"],
            &["HMGET", "ro:{prod}:outcomes:x:0", "on:ok", "on:err"],
        ],
        &[
            &["SET", "ro:{prod}:cmd:c-1", "forged"],
            &["SADD", "ro:{prod}:flags", "forged"],
            &["SADD", "ro:namespaces", "forged"],
            &["HDEL", "ro:{prod}:flag:x", "data"],
            &["HSET", "ro:{prod}:agent:edge-1", "labels", "{}"],
            &["HINCRBY", "ro:{prod}:outcomes:x:0", "on:ok", "1000"],
        ],
    )
    .await;
    assert_reach(
        &redis,
        "evaluator",
        &[
            &["SET", "ro:generation", "g-1", "NX", "GET"],
            &["HINCRBY", "ro:{prod}:outcomes:x:0", "on:ok", "1"],
            &[
                "HINCRBY",
                "ro:{prod}:rollout:r-1:outcomes:0",
                "candidate:ok",
                "1",
            ],
            &[
                "HSET",
                "ro:{prod}:rollout:r-1:reports",
                "edge-1",
                "applied:on",
            ],
            &["HSETNX", "ro:{prod}:agent:edge-1", "registered_at", "1"],
            &["ZADD", "ro:{prod}:agents", "1", "edge-1"],
        ],
        &[
            &["GET", "ro:{prod}:cmd:c-1"],
            &["XRANGE", "ro:{prod}:outbox", "-", "+"],
            &["LRANGE", "ro:{prod}:audit:flag:x", "0", "-1"],
            &["SET", "ro:{ticker}:lease:0", "evaluator:1"],
        ],
    )
    .await;
    assert_reach(
        &redis,
        "healthcheck",
        &[&["PING"]],
        &[&["GET", "ro:generation"], &["TIME"]],
    )
    .await;
    assert_eq!(admin(&redis, &["PING"]), RedisReply::Simple("PONG".into()));
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
        let mut settings = nats_as(&nats.url(), user);
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
    let planner = planner::Planner::start(
        planner_config(tls("planner"), redis_as(&redis, "planner")),
        shutdown.clone(),
    )
    .await
    .expect("the planner connects over tls");
    let evaluator = start_evaluator(evaluator_config(
        tls("evaluator"),
        redis_as(&redis, "evaluator"),
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
    // the planner in process, credentials in its settings
    let system = Restricted::start(|_| {}, false).await;
    let (nats, redis) = (&system.nats, &system.redis);
    let dir = tempfile::tempdir().expect("tempdir");
    // tickers and an evaluator as processes, credentials from the environment as the
    // compose file gives them: each its own NATS user and inbox, its own Redis user
    let service_env = |user: &str| {
        let redis_password = redis_login(user).password.expect("password");
        HashMap::from([
            ("ROLLOUT_NATS__URL".to_owned(), nats.url()),
            ("ROLLOUT_NATS__USER".to_owned(), user.to_owned()),
            ("ROLLOUT_NATS__PASSWORD".to_owned(), password(user)),
            ("ROLLOUT_NATS__INBOX_PREFIX".to_owned(), inbox_prefix(user)),
            ("ROLLOUT_REDIS__URL".to_owned(), plain_url(redis)),
            ("ROLLOUT_REDIS__USER".to_owned(), user.to_owned()),
            ("ROLLOUT_REDIS__PASSWORD".to_owned(), redis_password),
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
        tickers.push(Service::Ticker.spawn(&format!("ticker-{index}"), dir.path(), &env));
    }
    // OFREP as deployed: tokens required, the example tokens of deploy/.env.example
    let ofrep_tokens = env_example()["ROLLOUT_OFREP_TOKENS"].clone();
    let token_of = |namespace: &str| {
        ofrep_tokens
            .split(',')
            .find_map(|entry| entry.strip_prefix(&format!("{namespace}:")))
            .unwrap_or_else(|| panic!("an example ofrep token for {namespace}"))
            .to_owned()
    };
    let http_port = rollout_testkit::free_port().expect("free port");
    let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let mut env = service_env("evaluator");
    env.insert("ROLLOUT_HTTP__LISTEN".to_owned(), http_addr.to_string());
    env.insert("ROLLOUT_HTTP__NAMESPACE".to_owned(), NS.to_owned());
    env.insert("ROLLOUT_HTTP__REQUIRE_TOKEN".to_owned(), "true".to_owned());
    env.insert("ROLLOUT_HTTP__TOKENS".to_owned(), ofrep_tokens.clone());
    let mut evaluator = Service::Evaluator.spawn("evaluator", dir.path(), &env);

    // the operator creates a flag and a phased rollout and watches it
    let (operator, _) = connect_as(&nats.url(), "operator").await;
    let mut events = operator
        .subscribe(format!("rollout.events.{NS}.>"))
        .await
        .expect("the operator follows events");
    let commands = operator_commands(operator.clone());
    // a webhook: the tickers' commits append its notices, the planner delivers them
    let receiver = support::receiver::Receiver::start().await;
    commands
        .put_webhook(
            "ops",
            &receiver.url(),
            "whsec-access-0123456789",
            Vec::new(),
        )
        .await
        .expect("webhook saved by the operator");
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
    eventually("the webhook to hear the completion", PATIENCE, || async {
        receiver
            .received()
            .iter()
            .any(|request| {
                request.status.is_success()
                    && request.header("X-Rollout-Event") == "rollout_completed"
            })
            .then_some(())
    })
    .await;
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
    // and OFREP with the prod token serves it; without a token, or reaching into prod
    // with the dev token, nothing is served
    let ofrep = |authorization: Option<String>| async move {
        let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
        headers.extend(authorization.map(|value| ("Authorization".to_owned(), value)));
        headers.push(("X-Rollout-Namespace".to_owned(), NS.to_owned()));
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        support::http::request(
            http_addr,
            "POST",
            "/ofrep/v1/evaluate/flags/guarded",
            &headers,
            br#"{"context": {"targetingKey": "user-1"}}"#,
            Duration::from_secs(2),
        )
        .await
        .map(|response| (response.status, response.json()))
    };
    let (status, body) = ofrep(Some(format!("Bearer {}", token_of(NS))))
        .await
        .expect("ofrep answers");
    assert_eq!((status, &body["variant"]), (200, &json!("on")), "{body}");
    let (status, body) = ofrep(None).await.expect("ofrep answers");
    assert_eq!(
        (status, &body["errorCode"]),
        (401, &json!("GENERAL")),
        "{body}"
    );
    let (status, body) = ofrep(Some(format!("Bearer {}", token_of("dev"))))
        .await
        .expect("ofrep answers");
    assert_eq!(
        (status, &body["errorCode"]),
        (403, &json!("GENERAL")),
        "{body}"
    );
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
    let refusals: Vec<String> = violations(nats)
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
    // every event was relayed and its outbox entry removed: the relays' delivery proof
    // (a request to their own echo subscription, under their inbox prefix) went through
    let outbox = stored_key("outbox");
    eventually("the outbox to drain", PATIENCE, || async {
        (admin(redis, &["XLEN", &outbox]) == RedisReply::Integer(0)).then_some(())
    })
    .await;
    // and Redis refused no service anything
    assert_eq!(acl_denials(redis), Vec::<String>::new());
    for ticker in &tickers {
        assert_eq!(ticker.count("NOPERM"), 0, "{}", ticker.tail(20));
    }
    assert!(evaluator.is_running(), "{}", evaluator.tail(20));
    assert_eq!(evaluator.count("NOPERM"), 0, "{}", evaluator.tail(20));
    system.stop().await;
}

/// Sends a request on `subject` as `client` and waits for its reply (or says why not).
async fn round_trip(
    client: &async_nats::Client,
    subject: String,
    body: Vec<u8>,
) -> Result<async_nats::Message, String> {
    tokio::time::timeout(Duration::from_secs(2), client.request(subject, body.into()))
        .await
        .map_err(|_| "no reply in time".to_owned())?
        .map_err(|error| error.to_string())
}

/// An evaluation request of `flag` for `entity` (MessagePack).
fn eval_body(flag: &str, entity: &str) -> Vec<u8> {
    rollout_wire::codec::encode(
        &json!({"flag": flag, "entity": {"id": entity}}),
        rollout_wire::Encoding::MessagePack,
    )
    .expect("encodes")
}

fn decode(message: &async_nats::Message) -> Value {
    rollout_wire::envelope::decode_reply(&message.payload, rollout_wire::Encoding::MessagePack)
        .unwrap_or_else(|error| panic!("an error reply: {error:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nats_user_gets_replies_only_under_its_own_inbox() {
    // the planner's outbox sweep leaves alone what this test leaves in the outbox on purpose
    let system = Restricted::start(
        |config| config.planner.relay_grace = Duration::from_secs(600),
        true,
    )
    .await;
    let (nats, redis) = (&system.nats, &system.redis);

    // request-reply works for every user under its own prefix: the operator commands
    let (operator, _) = connect_as(&nats.url(), "operator").await;
    assert!(operator.new_inbox().starts_with("_INBOX_operator."));
    for namespace in [NS, "dev"] {
        commands_in(operator.clone(), namespace)
            .create_flag(boolean_flag("inboxes"))
            .await
            .unwrap_or_else(|error| panic!("the operator commands in {namespace}: {error}"));
    }
    // each namespace's SDK user evaluates there, and so does the load generator
    let (sdk_prod, prod_errors) = connect_as(&nats.url(), "sdk-prod").await;
    let (sdk_dev, _) = connect_as(&nats.url(), "sdk-dev").await;
    let (loadtest, _) = connect_as(&nats.url(), "loadtest").await;
    for (client, namespace) in [(&sdk_prod, NS), (&sdk_dev, "dev"), (&loadtest, NS)] {
        let answer = eventually("an evaluation", PATIENCE, || async {
            round_trip(
                client,
                format!("rollout.eval.{namespace}"),
                eval_body("inboxes", "u-1"),
            )
            .await
            .ok()
        })
        .await;
        assert_eq!(decode(&answer)["variation"], "off");
    }
    // the services' own round trips (the outbox relay's delivery proof is one: a request
    // to an echo subscription under the client's inbox)
    for user in ["planner", "ticker", "evaluator"] {
        let client = connect_nats(&nats_as(&nats.url(), user), user)
            .await
            .unwrap_or_else(|error| panic!("{user} connects: {error}"));
        let subject = format!("{}.echo", client.new_inbox());
        assert!(subject.starts_with(&format!("_INBOX_{user}.")), "{subject}");
        let mut echo = client.subscribe(subject.clone()).await.expect("subscribe");
        let responder = client.clone();
        let answering = tokio::spawn(async move {
            if let Some(request) = echo.next().await {
                let reply = request.reply.expect("a reply subject");
                responder
                    .publish(reply, request.payload)
                    .await
                    .expect("echo");
            }
        });
        let reply = round_trip(&client, subject, b"ping".to_vec())
            .await
            .unwrap_or_else(|error| panic!("{user}'s round trip: {error}"));
        assert_eq!(reply.payload.as_ref(), b"ping");
        answering.await.expect("echo task");
    }
    // ... and the relay itself, as the ticker: a committed event is published and, proven
    // delivered, leaves the outbox
    let keys = Keys::new(&Namespace::new(NS).expect("namespace"));
    let ticker_redis = redis_connection(redis, "ticker").await;
    let ticker_nats = connect_nats(&nats_as(&nats.url(), "ticker"), "ticker")
        .await
        .expect("ticker connects");
    let relay = Relay::new(ticker_nats, ticker_redis.clone(), Subjects::default());
    let writer = Writer::publishing(ticker_redis.clone(), relay);
    let mut planner_redis = redis_connection(redis, "planner").await;
    let mut events = operator
        .subscribe(format!("rollout.events.{NS}.inboxes"))
        .await
        .expect("events");
    operator.flush().await.expect("flush");
    let published = commit_flag_update(&writer, &mut planner_redis, &keys, "inboxes").await;
    let event = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("the event arrives")
        .expect("open");
    assert_eq!(
        rollout_sdk::decode_event(&event).expect("event").version,
        published.last().expect("one event").version
    );
    assert_eq!(
        admin(redis, &["XLEN", &stored_key("outbox")]),
        RedisReply::Integer(0),
        "the relay proved delivery and trimmed the outbox"
    );

    // the prod SDK user cannot read the dev SDK user's replies, nor everyone's
    let mut dev_inbox = sdk_prod
        .subscribe("_INBOX_sdk-dev.>")
        .await
        .expect("subscribe call");
    let mut all_inboxes = sdk_prod
        .subscribe("_INBOX.>")
        .await
        .expect("subscribe call");
    sdk_prod.flush().await.expect("flush");
    eventually(
        "the server to refuse both subscriptions",
        PATIENCE,
        || async {
            let seen = prod_errors.lock().expect("errors").clone();
            let refused = |subject: &str| {
                seen.iter().any(|error| {
                    error.contains(&format!(
                        "Permissions Violation for Subscription to \"{subject}\""
                    ))
                })
            };
            (refused("_INBOX_sdk-dev.>") && refused("_INBOX.>")).then_some(())
        },
    )
    .await;
    for index in 0..5 {
        let answer = round_trip(
            &sdk_dev,
            "rollout.eval.dev".to_owned(),
            eval_body("inboxes", &format!("dev-user-{index}")),
        )
        .await
        .expect("the dev sdk user still gets its replies");
        assert_eq!(decode(&answer)["variation"], "off");
    }
    for (name, subscription) in [
        ("_INBOX_sdk-dev.>", &mut dev_inbox),
        ("_INBOX.>", &mut all_inboxes),
    ] {
        assert!(
            !matches!(
                tokio::time::timeout(Duration::from_millis(300), subscription.next()).await,
                Ok(Some(_))
            ),
            "sdk-prod read a reply through {name}"
        );
    }

    // without its prefix (the client default _INBOX) even its own requests get no reply
    let (unprefixed, unprefixed_errors) =
        connect_with_inbox(&nats.url(), "sdk-prod", "_INBOX").await;
    let refused = round_trip(
        &unprefixed,
        format!("rollout.eval.{NS}"),
        eval_body("inboxes", "u-2"),
    )
    .await
    .expect_err("no reply without the inbox prefix");
    assert!(!refused.is_empty());
    eventually("the server to say why", PATIENCE, || async {
        unprefixed_errors
            .lock()
            .expect("errors")
            .iter()
            .any(|error| error.contains("Permissions Violation for Subscription to \"_INBOX."))
            .then_some(())
    })
    .await;
    // the same for the relay: without the prefix there is no delivery proof, so the
    // outbox keeps the entry for a later sweep
    let unprefixed_ticker = connect_nats(&nats_settings(&nats.url(), &login("ticker")), "ticker")
        .await
        .expect("ticker connects");
    let blind_relay = Relay::new(unprefixed_ticker, ticker_redis.clone(), Subjects::default());
    let blind_writer = Writer::publishing(ticker_redis, blind_relay);
    commit_flag_update(&blind_writer, &mut planner_redis, &keys, "inboxes").await;
    assert_eq!(
        admin(redis, &["XLEN", &stored_key("outbox")]),
        RedisReply::Integer(1),
        "no proof, no trim"
    );
    // nothing else was refused: only the prod SDK user's snooping and the unprefixed
    // clients' default inboxes
    let refused_services: Vec<String> = violations(nats)
        .into_iter()
        .filter(|line| {
            let expected = line.contains("user:sdk-prod")
                || (line.contains("user:ticker") && line.contains("Subject \"_INBOX."));
            !expected
        })
        .collect();
    assert!(refused_services.is_empty(), "{refused_services:#?}");
    assert_eq!(acl_denials(redis), Vec::<String>::new());
    system.stop().await;
}

/// A fleet call on `rollout.fleet.prod.<verb>` as `client` (MessagePack).
async fn fleet_call(client: &async_nats::Client, verb: &str, body: Value) -> Value {
    let payload =
        rollout_wire::codec::encode(&body, rollout_wire::Encoding::MessagePack).expect("encodes");
    let reply = round_trip(client, format!("rollout.fleet.{NS}.{verb}"), payload)
        .await
        .unwrap_or_else(|error| panic!("fleet {verb}: {error}"));
    decode(&reply)
}

/// Waits until `flag` is served by `evaluator` at its committed version.
async fn until_served(
    commands: &CommandClient,
    evaluator: &evaluator::EvaluatorHandle,
    flag: &str,
) {
    let version = commands.get_flag(flag).await.expect("flag").version;
    eventually(&format!("{flag} v{version} served"), PATIENCE, || async {
        evaluator
            .served_version(NS, flag)
            .is_some_and(|served| served >= version)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guards_fleet_gates_kill_switches_and_queries_work_under_the_shipped_restrictions() {
    let system = Restricted::start(|_| {}, true).await;
    let (nats, redis) = (&system.nats, &system.redis);
    let evaluator = system.evaluator();
    let mut ticker_config = ticker::TickerConfig {
        nats: nats_as(&nats.url(), "ticker"),
        redis: redis_as(redis, "ticker"),
        ..ticker::TickerConfig::default()
    };
    ticker_config.ticker.lease_ttl = Duration::from_secs(1);
    ticker_config.ticker.health_check_interval = Duration::from_millis(200);
    let ticker = tokio::spawn(ticker::run(ticker_config, system.shutdown.clone()));

    let (operator, _) = connect_as(&nats.url(), "operator").await;
    let commands = operator_commands(operator.clone());
    let (sdk, sdk_errors) = connect_as(&nats.url(), "sdk-prod").await;
    let eval = EvalClient::builder(sdk.clone(), Namespace::new(NS).expect("ns"))
        .cache_capacity(0)
        .connect()
        .await
        .expect("eval client");
    let guard =
        json!({"max_error_rate": 5, "min_samples": 20, "window": "1m", "action": "rollback"});

    // a guard reads the evaluator's counters and rolls a failing candidate back
    commands
        .create_flag(boolean_flag("checkout"))
        .await
        .expect("flag");
    let guarded = commands
        .create_rollout(
            serde_json::from_value(json!({
                "flag": "checkout", "baseline": "off", "candidate": "on",
                "phases": [{"percentage": 10, "duration": "1h"}, {"percentage": 100}],
                "guard": guard}))
            .expect("spec"),
        )
        .await
        .expect("guarded rollout");
    until_served(&commands, evaluator, "checkout").await;
    report_candidate(&eval, ("checkout", "on"), 30, true).await;
    let rolled_back = eventually("the guard to roll back", PATIENCE, || async {
        let status = commands.rollout_status(&guarded.rollout_id).await.ok()?;
        status.state.is_finished().then_some(status)
    })
    .await;
    assert_eq!(rolled_back.state, Lifecycle::RolledBack);
    let counts = commands
        .rollout_counts(&guarded.rollout_id)
        .await
        .expect("counts");
    assert_eq!(
        serde_json::to_value(&counts).expect("json")["outcomes"]["candidate"]["error"],
        30
    );

    // a completion gate reads the fleet: the agent's report releases the stage
    let firmware: rollout_sdk::Flag = serde_json::from_value(json!({
        "key": "firmware",
        "variations": [{"id": "v1", "value": "1.0.0"}, {"id": "v2", "value": "2.0.0"}],
        "off_variation": "v1", "enabled": true, "default": {"variation": "v1"}}))
    .expect("flag");
    commands.create_flag(firmware).await.expect("flag");
    let ack = fleet_call(
        &sdk,
        "register",
        json!({"agent_id": "edge-1", "labels": {"ring": "canary"}}),
    )
    .await;
    assert_eq!(ack["agent_id"], "edge-1");
    let staged = commands
        .create_rollout(
            serde_json::from_value(json!({
                "flag": "firmware", "baseline": "v1", "candidate": "v2",
                "stages": [{"name": "canary", "labels": {"ring": "canary"},
                            "gate": {"min_completed_percentage": 100}}]}))
            .expect("spec"),
        )
        .await
        .expect("staged rollout");
    until_served(&commands, evaluator, "firmware").await;
    let desired = fleet_call(
        &sdk,
        "desired",
        json!({"agent_id": "edge-1", "flag": "firmware"}),
    )
    .await;
    assert_eq!(desired["variation"], "v2");
    fleet_call(&sdk, "heartbeat", json!({"agent_id": "edge-1"})).await;
    fleet_call(
        &sdk,
        "report",
        json!({"agent_id": "edge-1", "flag": "firmware", "rollout_id": staged.rollout_id,
               "variation": "v2", "status": "applied"}),
    )
    .await;
    let completed = eventually("the completion gate to open", PATIENCE, || async {
        let status = commands.rollout_status(&staged.rollout_id).await.ok()?;
        (status.state == Lifecycle::Completed).then_some(status)
    })
    .await;
    assert_eq!(completed.current_step, Some(1));

    // a kill switch reads the flag's counters and disables it
    let mut killable = boolean_flag("killable");
    killable.kill_switch =
        serde_json::from_value(json!({"max_error_rate": 5, "min_samples": 20, "window": "1m"}))
            .expect("kill switch");
    commands.create_flag(killable).await.expect("flag");
    until_served(&commands, evaluator, "killable").await;
    report_candidate(&eval, ("killable", "on"), 30, true).await;
    eventually("the kill switch to disable the flag", PATIENCE, || async {
        let flag = commands.get_flag("killable").await.ok()?;
        (!flag.flag.enabled).then_some(())
    })
    .await;

    // the operator's reads and deletions
    let audit = commands
        .audit(serde_json::from_value(json!({"rollout_id": guarded.rollout_id})).expect("query"))
        .await
        .expect("audit");
    assert!(!audit.entries.is_empty());
    let listed = commands
        .list_rollouts(serde_json::from_value(json!({"state": "finished"})).expect("query"))
        .await
        .expect("list");
    assert_eq!(listed.rollouts.len(), 2);
    commands
        .delete_rollout(&guarded.rollout_id)
        .await
        .expect("rollout deleted");
    commands
        .delete_flag("killable")
        .await
        .expect("flag deleted");
    let flags = commands
        .list_flags(serde_json::from_value(json!({})).expect("query"))
        .await
        .expect("flag list");
    let keys: Vec<&str> = flags.flags.iter().map(|flag| flag.key.as_str()).collect();
    assert_eq!(keys, ["checkout", "firmware"]);

    // every event relayed, and nobody but nothing refused
    let outbox = stored_key("outbox");
    eventually("the outbox to drain", PATIENCE, || async {
        (admin(redis, &["XLEN", &outbox]) == RedisReply::Integer(0)).then_some(())
    })
    .await;
    assert_eq!(acl_denials(redis), Vec::<String>::new());
    assert_eq!(violations(nats), Vec::<String>::new());
    assert_eq!(*sdk_errors.lock().expect("errors"), Vec::<String>::new());
    system.stop().await;
    ticker
        .await
        .expect("ticker task")
        .expect("the ticker ran and stopped cleanly");
}
