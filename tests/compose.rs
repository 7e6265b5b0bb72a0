//! The compose deployment, checked without a Docker engine: `deploy/docker-compose.yml` is
//! parsed and everything it refers to must exist and fit together — mounted files, the
//! build context and Dockerfile, every command's binary (one the workspace builds), every
//! `--config` file (in `deploy/config/`, which the Dockerfile copies to `/etc/rollout`)
//! loading and validating into its service's config type with the environment the compose
//! file gives it (variables taken from `deploy/.env.example`, which must set every one the
//! compose file reads), every NATS user a service logs in as (present in `accounts.conf`,
//! with the password variable the service is given, receiving replies under its own
//! inbox prefix and no other), every Redis ACL user a service or the health check logs in
//! as (present in `users.acl`, whose hash is that of the example password), OFREP tokens
//! required on every evaluator, every `$VAR` of `accounts.conf` given to the NATS
//! containers, the Dockerfile's `-p` packages, `nats-server -t` accepting each node's
//! configuration, and the registry-free override (`deploy/compose/offline.yml`) giving every
//! service the image `deploy/compose/images.sh` builds with the binaries it runs. The Redis
//! Cluster variant (`deploy/compose/redis-cluster.yml`) is merged over the compose file as
//! compose does: six nodes with AOF and the ACL file, each announcing its own name and
//! replicating as an ACL user whose password it is given, every Redis client pointed at every
//! node with cluster mode and a replica per commit, the formation job waiting for every node,
//! and the ACL granting what the cluster client, replication and the formation send.
//! `compose_cluster.rs` runs the cluster itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use rollout_runtime::config::{load_config, MapEnv, NatsSettings, RedisSettings, Validate};
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The compose file with its `<<` merge keys applied.
fn compose() -> Value {
    let text = read(&deploy().join("docker-compose.yml"));
    let mut value: Value = serde_yaml_ng::from_str(&text).expect("docker-compose.yml is yaml");
    // a merged mapping may itself merge another (`planner-2: <<: *planner`, whose
    // `planner-1` merges `*service`): apply until no merge key is left
    for _ in 0..4 {
        value.apply_merge().expect("merge keys resolve");
    }
    assert!(
        !serde_yaml_ng::to_string(&value)
            .expect("yaml")
            .contains("<<"),
        "every merge key resolved"
    );
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(name, service)| (name.as_str().expect("name").to_owned(), service.clone()))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The environment a service gets: name → value as written (`${VAR:?...}` included).
fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|map| {
            map.iter()
                .filter_map(|(name, value)| {
                    let value = match value {
                        Value::String(text) => text.clone(),
                        Value::Number(number) => number.to_string(),
                        Value::Bool(flag) => flag.to_string(),
                        _ => return None,
                    };
                    Some((name.as_str()?.to_owned(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `deploy/.env.example`: variable → value.
fn env_example() -> BTreeMap<String, String> {
    read(&deploy().join(".env.example"))
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// `text` with every `${NAME...}` replaced by `NAME`'s value in deploy/.env.example, as
/// docker compose does with `deploy/.env` copied from it (`${NAME:-default}` falls back to
/// its default).
fn resolve(text: &str, example: &BTreeMap<String, String>) -> String {
    let mut resolved = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        resolved.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|end| start + end)
            .unwrap_or_else(|| panic!("unterminated ${{ in {text:?}"));
        let reference = &rest[start + 2..end];
        let name = reference
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default();
        let default = reference[name.len()..].strip_prefix(":-");
        let value = example
            .get(name)
            .map(String::as_str)
            .or(default)
            .unwrap_or_else(|| {
                panic!("deploy/.env.example does not set {name}, which {text:?} reads")
            });
        resolved.push_str(value);
        rest = &rest[end + 1..];
    }
    resolved.push_str(rest);
    resolved
}

/// `${NAME...}` references in `text` that need a value: all but `${NAME:-default}`.
fn referenced_vars(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            (!rest[end..].starts_with(":-")).then(|| rest[..end].to_owned())
        })
        .collect()
}

/// Packages of the workspace and the binaries each builds, from `cargo metadata`.
fn workspace_packages() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata json");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let bins = package["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .filter(|target| {
                    target["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
                })
                .filter_map(|target| target["name"].as_str().map(str::to_owned))
                .collect();
            (package["name"].as_str().expect("name").to_owned(), bins)
        })
        .collect()
}

/// One user of accounts.conf: the variable holding its password and the subjects it may
/// subscribe to.
#[derive(Debug, Default)]
struct NatsUser {
    password_var: String,
    subscribe: Vec<String>,
}

/// The users of accounts.conf.
fn nats_accounts() -> BTreeMap<String, NatsUser> {
    let text = read(&deploy().join("nats/accounts.conf"));
    let mut users: BTreeMap<String, NatsUser> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(user) = line.strip_prefix("user:") {
            current = Some(user.trim().trim_matches('"').to_owned());
            continue;
        }
        let Some(user) = current.clone() else {
            continue;
        };
        let account = users.entry(user).or_default();
        if let Some(password) = line.strip_prefix("password:") {
            account.password_var = password.trim().trim_start_matches('$').to_owned();
        } else if let Some(rule) = line.strip_prefix("subscribe:") {
            account.subscribe = rule
                .split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
        }
    }
    assert!(users.len() >= 6, "accounts.conf lists the users: {users:?}");
    users
}

/// The users of accounts.conf and the variable holding each one's password.
fn nats_users() -> BTreeMap<String, String> {
    nats_accounts()
        .into_iter()
        .map(|(user, account)| (user, account.password_var))
        .collect()
}

/// Each user of accounts.conf and the subjects it may subscribe to.
fn nats_subscriptions() -> BTreeMap<String, Vec<String>> {
    nats_accounts()
        .into_iter()
        .map(|(user, account)| (user, account.subscribe))
        .collect()
}

/// The users of deploy/redis/users.acl and their rules.
fn acl_users() -> BTreeMap<String, Vec<String>> {
    read(&deploy().join("redis/users.acl"))
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("user")).then(|| {
                let name = words.next().expect("a user name").to_owned();
                (name, words.map(str::to_owned).collect())
            })
        })
        .collect()
}

/// Asserts that ACL user `user` exists, is on, and has `password`'s SHA-256 as its password.
fn assert_redis_login(who: &str, user: &str, password: &str) {
    let users = acl_users();
    let rules = users
        .get(user)
        .unwrap_or_else(|| panic!("{who} logs in to redis as {user}, who is not in users.acl"));
    assert!(rules.iter().any(|rule| rule == "on"), "{user} is on");
    let digest: String = Sha256::digest(password.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert!(
        rules.contains(&format!("#{digest}")),
        "{who}: deploy/.env.example's password for redis user {user} does not match its hash in users.acl"
    );
}

/// `$NAME` references in accounts.conf.
fn accounts_vars() -> BTreeSet<String> {
    read(&deploy().join("nats/accounts.conf"))
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| {
            line.split('$')
                .skip(1)
                .filter_map(|rest| {
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let name = &rest[..end];
                    // "$JS.API.>" in a subject is not a variable
                    (name.starts_with("ROLLOUT_")).then(|| name.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_mounted_file_and_the_build_exist() {
    let compose = compose();
    for (name, service) in services(&compose) {
        for volume in strings(&service["volumes"]) {
            let host = volume.split(':').next().expect("host part");
            if host.starts_with("./") || host.starts_with("../") {
                let path = deploy().join(host);
                assert!(path.is_file(), "{name} mounts {host}, which does not exist");
            }
        }
        if let Some(build) = service["build"].as_mapping() {
            let context = deploy().join(build[&Value::from("context")].as_str().expect("context"));
            assert!(
                context.is_dir(),
                "{name}: build context {}",
                context.display()
            );
            let dockerfile = context.join(
                build[&Value::from("dockerfile")]
                    .as_str()
                    .expect("dockerfile"),
            );
            assert!(dockerfile.is_file(), "{name}: {}", dockerfile.display());
        }
    }
}

const SERVICE_BINARIES: [&str; 6] = [
    "planner",
    "ticker",
    "evaluator",
    "console",
    "rolloutctl",
    "loadtest",
];

#[test]
fn every_command_runs_a_binary_the_workspace_builds_and_the_image_holds() {
    let packages = workspace_packages();
    let built: BTreeSet<&String> = packages.values().flatten().collect();
    let dockerfile = read(&deploy().join("Dockerfile"));
    let compose = compose();
    let mut commands = BTreeSet::new();
    for (name, service) in services(&compose) {
        if service["image"].as_str() != Some("rollout:dev") {
            continue;
        }
        // `entrypoint: [binary]` with the arguments as `command` (the loadtest service, run
        // with a scenario), or the binary as the command's first word
        let mut command = strings(&service["entrypoint"]);
        command.extend(strings(&service["command"]));
        let binary = command
            .first()
            .unwrap_or_else(|| panic!("{name} has a command"))
            .clone();
        assert!(
            SERVICE_BINARIES.contains(&binary.as_str()),
            "{name} runs {binary}"
        );
        assert!(
            built.contains(&binary),
            "{name} runs {binary}, which no workspace package builds"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "the image does not copy {binary}"
        );
        commands.insert(binary);
    }
    assert!(commands.len() >= 4, "{commands:?}");
    // the Dockerfile builds packages that exist
    let build_line = dockerfile
        .lines()
        .skip_while(|line| !line.contains("cargo build"))
        .take_while(|line| line.trim_end().ends_with('\\') || line.contains("cargo build"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut asked = Vec::new();
    let mut words = build_line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "-p" {
            asked.push(words.next().expect("a package after -p").to_owned());
        }
    }
    assert!(!asked.is_empty(), "the Dockerfile builds with -p");
    for package in &asked {
        assert!(
            packages.contains_key(package),
            "Dockerfile -p {package}: no such workspace package"
        );
    }
    for binary in SERVICE_BINARIES {
        assert!(
            asked
                .iter()
                .any(|package| packages[package].contains(binary)),
            "the Dockerfile's packages do not build {binary}"
        );
    }
}

/// Loads `deploy/config/<file>` as `T` with an empty environment, then validates it with
/// the `ROLLOUT_*` variables the compose service sets (their `${VAR}`s taken from
/// deploy/.env.example).
fn check_config<T>(file: &Path, compose_env: &BTreeMap<String, String>) -> T
where
    T: serde::de::DeserializeOwned + Validate,
{
    let bare: T = load_config(Some(file), &MapEnv::new())
        .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
    drop(bare);
    let example = env_example();
    let mut env = MapEnv::new();
    for (name, value) in compose_env
        .iter()
        .filter(|(name, _)| name.starts_with("ROLLOUT_"))
    {
        env = env.with(name, resolve(value, &example));
    }
    let config: T = load_config(Some(file), &env)
        .unwrap_or_else(|error| panic!("{} with the compose environment: {error}", file.display()));
    config
        .validate()
        .unwrap_or_else(|error| panic!("{} with the compose environment: {error}", file.display()));
    config
}

#[test]
fn every_config_file_loads_into_its_service_and_names_a_shipped_user() {
    let dockerfile = read(&deploy().join("Dockerfile"));
    assert!(
        dockerfile.contains("COPY deploy/config/ /etc/rollout/"),
        "the image carries deploy/config as /etc/rollout"
    );
    let users = nats_users();
    let compose = compose();
    let mut checked = 0;
    for (name, service) in services(&compose) {
        if service["image"].as_str() != Some("rollout:dev") {
            continue; // the collector's and others' own configs
        }
        let command = strings(&service["command"]);
        let Some(at) = command.iter().position(|word| word == "--config") else {
            continue;
        };
        let in_image = &command[at + 1];
        let relative = in_image
            .strip_prefix("/etc/rollout/")
            .unwrap_or_else(|| panic!("{name}: --config {in_image} is not under /etc/rollout"));
        let file = deploy().join("config").join(relative);
        assert!(
            file.is_file(),
            "{name}: --config {in_image} has no deploy/config/{relative}"
        );
        let env = environment(&service);
        let (nats, redis) = match command[0].as_str() {
            "planner" => {
                let config = check_config::<planner::PlannerConfig>(&file, &env);
                (config.nats, Some(config.redis))
            }
            "ticker" => {
                let config = check_config::<ticker::TickerConfig>(&file, &env);
                (config.nats, Some(config.redis))
            }
            "evaluator" => {
                let config = check_config::<evaluator::EvaluatorConfig>(&file, &env);
                // as deployed, OFREP needs a token bound to a namespace
                assert!(config.http.require_token, "{name}: http.require_token");
                assert!(config.http.tokens.iter().next().is_some(), "{name}: tokens");
                (config.nats, Some(config.redis))
            }
            "console" => {
                // the console reaches nothing but NATS; sign-in needs a shared session key
                let config = check_config::<rollout_console::config::ConsoleConfig>(&file, &env);
                assert!(config.console.session_key.is_some(), "{name}: session key");
                (config.nats, None)
            }
            other => panic!("{name}: no config type known for {other}"),
        };
        let user = env
            .get("ROLLOUT_NATS__USER")
            .cloned()
            .or(nats.user.clone())
            .unwrap_or_else(|| panic!("{name} names no nats user"));
        let password_var = users
            .get(&user)
            .unwrap_or_else(|| panic!("{name} logs in as {user}, who is not in accounts.conf"));
        let given = env
            .get("ROLLOUT_NATS__PASSWORD")
            .unwrap_or_else(|| panic!("{name} is given no nats password"));
        assert!(
            referenced_vars(given).contains(password_var),
            "{name} logs in as {user} with {given}, but accounts.conf checks ${password_var}"
        );
        assert_own_inbox(&name, &user, &nats);
        if let Some(redis) = &redis {
            assert_own_redis_user(&name, command[0].as_str(), redis);
        }
        checked += 1;
    }
    assert!(
        checked >= 9,
        "planners, tickers, evaluators and the console checked: {checked}"
    );
    // the load generator's user too
    let loadtest = &services(&compose)["loadtest"];
    let env = environment(loadtest);
    let user = env.get("ROLLOUT_NATS__USER").expect("loadtest user");
    let password_var = users.get(user).expect("the loadtest user exists");
    assert!(referenced_vars(&env["ROLLOUT_NATS__PASSWORD"]).contains(password_var));
    let settings: NatsSettings = load_config::<LoadtestSettings>(
        None,
        &MapEnv::new().with(
            "ROLLOUT_NATS__INBOX_PREFIX",
            env.get("ROLLOUT_NATS__INBOX_PREFIX")
                .cloned()
                .unwrap_or_default(),
        ),
    )
    .expect("loads")
    .nats;
    assert_own_inbox("loadtest", user, &settings);
}

/// The `nats` section alone, as a client reads it from the environment.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LoadtestSettings {
    nats: NatsSettings,
}

/// `user` receives replies under `_INBOX_<user>` (its settings say so) and accounts.conf
/// lets it subscribe to that inbox and to no other.
fn assert_own_inbox(who: &str, user: &str, settings: &NatsSettings) {
    let own = format!("_INBOX_{user}");
    assert_eq!(
        settings.inbox_prefix.as_deref(),
        Some(own.as_str()),
        "{who} logs in as {user} but is not given its inbox prefix"
    );
    let subscriptions = nats_subscriptions();
    let allowed = subscriptions
        .get(user)
        .unwrap_or_else(|| panic!("{user} has subscribe permissions"));
    assert!(
        allowed.contains(&format!("{own}.>")),
        "accounts.conf does not let {user} receive its replies: {allowed:?}"
    );
}

/// A service logs in to Redis as its own ACL user (named after it), with the password
/// deploy/.env.example gives that user.
fn assert_own_redis_user(who: &str, service: &str, settings: &RedisSettings) {
    let user = settings
        .user
        .as_deref()
        .unwrap_or_else(|| panic!("{who} names no redis user"));
    assert_eq!(user, service, "{who} logs in to redis as another service");
    let password = settings
        .password
        .as_ref()
        .unwrap_or_else(|| panic!("{who} is given no redis password"));
    assert_redis_login(who, user, password.expose());
}

#[test]
fn the_env_example_sets_every_variable_the_compose_file_reads() {
    let text = read(&deploy().join("docker-compose.yml"));
    let example = env_example();
    let read_vars = referenced_vars(&text);
    assert!(read_vars.len() >= 10, "{read_vars:?}");
    for var in read_vars {
        assert!(
            example.contains_key(&var),
            "docker-compose.yml reads ${var}, which deploy/.env.example does not set"
        );
    }
}

#[test]
fn every_nats_user_may_receive_replies_only_under_its_own_inbox() {
    let subscriptions = nats_subscriptions();
    assert_eq!(subscriptions.len(), nats_users().len(), "{subscriptions:?}");
    for (user, subjects) in &subscriptions {
        let own = format!("_INBOX_{user}.>");
        assert!(subjects.contains(&own), "{user}: {subjects:?}");
        for subject in subjects
            .iter()
            .filter(|subject| subject.starts_with("_INBOX"))
        {
            assert_eq!(subject, &own, "{user} may read replies it was not sent");
        }
    }
}

#[test]
fn the_redis_users_are_each_services_own_and_none_is_unrestricted() {
    let users = acl_users();
    // the default user is off and has no password, so no client becomes it; it may run
    // everything because Redis 7.0 replays the AOF as it (tests/access.rs restarts Redis
    // from its AOF under these users)
    let default = users
        .get("default")
        .expect("users.acl declares the default user");
    assert_eq!(
        default.first().map(String::as_str),
        Some("off"),
        "{default:?}"
    );
    assert!(
        !default.iter().any(|rule| rule.starts_with('>')
            || rule.starts_with('#')
            || rule == "nopass"
            || rule == "on"),
        "nobody can log in as default: {default:?}"
    );
    for service in ["planner", "ticker", "evaluator", "healthcheck", "loadtest"] {
        let rules = users
            .get(service)
            .unwrap_or_else(|| panic!("users.acl has no {service} user"));
        for broad in [
            "~*",
            "allkeys",
            "+@all",
            "allcommands",
            "&*",
            "allchannels",
            "nopass",
        ] {
            assert!(
                !rules.iter().any(|rule| rule == broad),
                "{service} has {broad}"
            );
        }
        assert!(
            rules.iter().any(|rule| rule == "-@all"),
            "{service} starts from nothing"
        );
    }
    // the compose health check logs in as its own user too
    let compose = compose();
    let redis = &services(&compose)["redis"];
    let test = strings(&redis["healthcheck"]["test"]);
    let after = |flag: &str| {
        test.iter()
            .position(|word| word == flag)
            .and_then(|at| test.get(at + 1))
            .unwrap_or_else(|| panic!("the health check passes {flag}"))
            .clone()
    };
    // the load generator logs in as its own user, with its own password
    let loadtest = environment(&services(&compose)["loadtest"]);
    assert_eq!(loadtest["ROLLOUT_REDIS__USER"], "loadtest");
    assert_redis_login(
        "the loadtest service",
        "loadtest",
        &resolve(&loadtest["ROLLOUT_REDIS__PASSWORD"], &env_example()),
    );
    let user = after("--user");
    assert_eq!(user, "healthcheck");
    assert_redis_login(
        "the redis health check",
        &user,
        &resolve(&after("--pass"), &env_example()),
    );
}

#[test]
fn the_nats_nodes_get_every_password_variable_and_their_configs_are_valid() {
    let compose = compose();
    let services = services(&compose);
    let needed = accounts_vars();
    assert!(needed.len() >= 6, "{needed:?}");
    let nodes: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, service)| {
            service["image"]
                .as_str()
                .is_some_and(|image| image.starts_with("nats"))
        })
        .collect();
    assert_eq!(nodes.len(), 3, "three nats nodes");
    let nats_server = rollout_testkit::find_binary("nats-server")
        .expect("nats-server (run deploy/tools/install.sh)");
    for (name, node) in nodes {
        let env = environment(node);
        for var in &needed {
            assert!(
                env.contains_key(var),
                "{name} is not given ${var}, which accounts.conf reads"
            );
        }
        let command = strings(&node["command"]);
        let in_container = &command[command.iter().position(|word| word == "-c").expect("-c") + 1];
        let file = in_container
            .strip_prefix("/etc/nats/")
            .map(|file| deploy().join("nats").join(file))
            .expect("config under /etc/nats");
        let mounted = strings(&node["volumes"]).iter().any(|volume| {
            volume.ends_with(&format!("{in_container}:ro"))
                || volume.contains(&format!(":{in_container}"))
        });
        assert!(mounted, "{name}: {in_container} is mounted");
        let mut check = Command::new(&nats_server);
        check
            .arg("-t")
            .arg("-c")
            .arg(&file)
            .current_dir(file.parent().expect("dir"));
        for var in &needed {
            check.env(var, "stand-in-password");
        }
        let output = check.output().expect("nats-server -t runs");
        assert!(
            output.status.success(),
            "nats-server -t -c {}: {}{}",
            file.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // without the variables the node would not start: the check has teeth
        let mut bare = Command::new(&nats_server);
        bare.arg("-t")
            .arg("-c")
            .arg(&file)
            .current_dir(file.parent().expect("dir"));
        for var in &needed {
            bare.env_remove(var);
        }
        assert!(!bare.output().expect("runs").status.success());
    }
}

#[test]
fn the_console_accounts_shipped_sign_in_with_the_passwords_their_comment_names() {
    use rollout_console::auth::{Authority, Role};
    use rollout_console::config::ConsoleConfig;
    let file = deploy().join("config").join("console.toml");
    let text = read(&file);
    let config: ConsoleConfig = load_config(Some(&file), &MapEnv::new()).expect("loads");
    let authority = Authority::new(&config.console);
    for (name, role) in [("admin", Role::Operator), ("viewer", Role::Viewer)] {
        let password = format!("change-me-console-{name}");
        assert!(
            text.contains(&format!("\"{password}\"")),
            "the comment names {password}"
        );
        let (operator, _) = authority
            .sign_in(name, &password, std::time::SystemTime::now())
            .unwrap_or_else(|| panic!("{name} signs in with {password}"));
        assert_eq!(operator.role, role);
    }
}

/// `deploy/compose/offline.yml` over the compose file: every service runs the image
/// `deploy/compose/images.sh` builds (or is kept out by a profile), so `up` pulls nothing,
/// and every command it gives runs a binary that image holds.
#[test]
fn the_registry_free_override_pulls_nothing_and_runs_what_its_image_holds() {
    let base = services(&compose());
    let text = read(&deploy().join("compose/offline.yml"));
    let mut offline: Value = serde_yaml_ng::from_str(&text).expect("offline.yml is yaml");
    offline.apply_merge().expect("merge keys resolve");
    let overrides = services(&offline);
    let script = read(&deploy().join("compose/images.sh"));
    let listed = |name: &str| -> Vec<String> {
        let line = script
            .lines()
            .find(|line| line.starts_with(&format!("{name}=(")))
            .unwrap_or_else(|| panic!("images.sh lists {name}"));
        line.trim_start_matches(&format!("{name}=("))
            .trim_end_matches(')')
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let mut in_image = listed("binaries");
    in_image.extend(["nats-server", "redis-server", "redis-cli"].map(str::to_owned));
    let packages = workspace_packages();
    for package in listed("packages") {
        assert!(
            packages.contains_key(&package),
            "images.sh builds {package}, no workspace package"
        );
    }
    for (name, service) in &base {
        let Some(changed) = overrides.get(name) else {
            panic!("offline.yml leaves {name} on its registry image");
        };
        if !strings(&changed["profiles"]).is_empty() {
            continue; // not started
        }
        let image = changed["image"].as_str().unwrap_or_default();
        assert!(
            image.contains("rollout-offline"),
            "{name} runs {image:?} in offline.yml"
        );
        let mut command = strings(&service["entrypoint"]);
        let arguments = if changed["command"].is_null() {
            strings(&service["command"])
        } else {
            strings(&changed["command"])
        };
        command.extend(arguments);
        let binary = command.first().cloned().unwrap_or_default();
        assert!(
            in_image.contains(&binary),
            "{name} runs {binary:?}, which images.sh does not put in the image"
        );
        for check in strings(&service["healthcheck"]["test"])
            .iter()
            .skip(1)
            .take(1)
        {
            assert!(
                in_image.contains(check),
                "{name}'s health check runs {check}, not in the image"
            );
        }
    }
}

/// `deploy/compose/redis-cluster.yml`, merge keys applied.
fn redis_cluster_overlay() -> Value {
    let text = read(&deploy().join("compose/redis-cluster.yml"));
    let mut value: Value = serde_yaml_ng::from_str(&text).expect("redis-cluster.yml is yaml");
    value.apply_merge().expect("merge keys resolve");
    value
}

/// The compose file's services with `overlay`'s applied as compose merges an override file:
/// `environment` and `depends_on` merge entry by entry, any other key is replaced, and a
/// service only the override names is added.
fn merged_services(overlay: &Value) -> BTreeMap<String, Value> {
    let mut merged = services(&compose());
    for (name, changes) in services(overlay) {
        let service = merged
            .entry(name)
            .or_insert_with(|| Value::Mapping(Default::default()));
        let service = service.as_mapping_mut().expect("a service is a mapping");
        for (key, value) in changes.as_mapping().expect("a mapping") {
            let by_entry = matches!(key.as_str(), Some("environment" | "depends_on"));
            match (by_entry, service.get_mut(key), value) {
                (true, Some(Value::Mapping(base)), Value::Mapping(entries)) => {
                    for (entry, entry_value) in entries {
                        base.insert(entry.clone(), entry_value.clone());
                    }
                }
                _ => {
                    service.insert(key.clone(), value.clone());
                }
            }
        }
    }
    merged
}

/// The Redis Cluster's nodes: the services running `redis-server` on cluster.conf.
fn cluster_nodes(services: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    services
        .iter()
        .filter(|(_, service)| {
            let command = strings(&service["command"]);
            command.first().map(String::as_str) == Some("redis-server")
                && command.iter().any(|word| word == "/etc/redis/cluster.conf")
        })
        .map(|(name, service)| (name.clone(), service.clone()))
        .collect()
}

/// The word after `flag` in `words`.
fn after<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|word| word == flag)
        .and_then(|at| words.get(at + 1))
        .map(String::as_str)
}

/// `redis.conf`-style directives of a file: name → value.
fn directives(file: &str) -> BTreeMap<String, String> {
    read(&deploy().join("redis").join(file))
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.trim().split_once(' '))
        .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        .collect()
}

/// Whether ACL rules `rules` allow `command` (`name` or `name|subcommand`): allowed by
/// name or by its parent command, and not taken away after.
fn acl_grants(rules: &[String], command: &str) -> bool {
    let parent = command.split('|').next().unwrap_or(command);
    let mut granted = false;
    for rule in rules {
        if rule == &format!("+{command}") || rule == &format!("+{parent}") || rule == "+@all" {
            granted = true;
        } else if rule == &format!("-{command}") || rule == &format!("-{parent}") || rule == "-@all"
        {
            granted = false;
        }
    }
    granted
}

/// What the redis crate's cluster client sends beside the services' own commands: `CLUSTER
/// SLOTS` to learn (and relearn after a fail-over) which node serves which slot, `ASKING`
/// before a command on a slot being migrated. Found by running the compose cluster with the
/// overlay: without `cluster|slots` no service connects (`NOPERM ... 'cluster|slots'`).
const CLUSTER_CLIENT_COMMANDS: [&str; 2] = ["cluster|slots", "asking"];
/// What a replica sends its master as `masteruser`.
const REPLICATION_COMMANDS: [&str; 3] = ["ping", "replconf", "psync"];
/// What `redis-cli --cluster create` and deploy/redis/cluster-init.sh send.
const FORMATION_COMMANDS: [&str; 8] = [
    "ping",
    "info",
    "cluster|info",
    "cluster|nodes",
    "cluster|addslots",
    "cluster|set-config-epoch",
    "cluster|meet",
    "cluster|replicate",
];

/// The Redis Cluster variant: six nodes on cluster.conf (AOF and the ACL file of the single
/// Redis, cluster mode on), each announcing its own service name, replicating as an ACL user
/// whose password it is given; every service that reaches Redis given every node with
/// cluster mode and one replica per commit; every service waiting for the cluster to be
/// formed.
#[test]
fn the_redis_cluster_overlay_points_every_service_at_every_node() {
    let overlay = redis_cluster_overlay();
    let merged = merged_services(&overlay);
    let nodes = cluster_nodes(&merged);
    assert_eq!(
        nodes.len(),
        6,
        "3 masters with a replica each: {:?}",
        nodes.keys()
    );
    let example = env_example();
    let cluster_conf = directives("cluster.conf");
    assert_eq!(
        cluster_conf.get("cluster-enabled").map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        cluster_conf.get("include").map(String::as_str),
        Some("/etc/redis/redis.conf"),
        "cluster.conf keeps redis.conf's persistence and ACL file"
    );
    let redis_conf = directives("redis.conf");
    assert_eq!(
        redis_conf.get("appendonly").map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        redis_conf.get("aclfile").map(String::as_str),
        Some("/etc/redis/users.acl")
    );
    assert_eq!(
        cluster_conf
            .get("cluster-preferred-endpoint-type")
            .map(String::as_str),
        Some("hostname"),
        "the nodes are named by hostname, which every container resolves"
    );
    let masteruser = cluster_conf
        .get("masteruser")
        .expect("replicas log in to their master as an ACL user (default is off)");
    let mut data = BTreeSet::new();
    for (name, node) in &nodes {
        let volumes = strings(&node["volumes"]);
        for (host, container) in [
            ("./redis/redis.conf", "/etc/redis/redis.conf"),
            ("./redis/cluster.conf", "/etc/redis/cluster.conf"),
            ("./redis/users.acl", "/etc/redis/users.acl"),
        ] {
            assert!(
                volumes
                    .iter()
                    .any(|volume| volume.starts_with(&format!("{host}:{container}"))),
                "{name} does not mount {host} at {container}: {volumes:?}"
            );
        }
        let volume = volumes
            .iter()
            .find_map(|volume| volume.strip_suffix(":/data"))
            .unwrap_or_else(|| panic!("{name} keeps no /data volume (AOF, nodes.conf)"));
        assert!(data.insert(volume.to_owned()), "{name} shares {volume}");
        let command = strings(&node["command"]);
        assert_eq!(
            after(&command, "--cluster-announce-hostname"),
            Some(name.as_str()),
            "{name} announces another name than its own"
        );
        let masterauth = after(&command, "--masterauth")
            .unwrap_or_else(|| panic!("{name} is given no --masterauth"));
        assert_redis_login(name, masteruser, &resolve(masterauth, &example));
        let test = strings(&node["healthcheck"]["test"]);
        assert_eq!(
            after(&test, "--user"),
            Some("healthcheck"),
            "{name}: {test:?}"
        );
        assert!(
            node["image"]
                .as_str()
                .is_some_and(|image| image.contains("rollout-offline")),
            "{name} runs the image images.sh builds"
        );
    }
    let urls: BTreeSet<String> = nodes
        .keys()
        .map(|name| format!("redis://{name}:6379"))
        .collect();

    let mut pointed = 0;
    for (name, service) in &merged {
        let env = environment(service);
        let command = strings(&service["command"]);
        let reaches_redis = matches!(
            command.first().map(String::as_str),
            Some("planner" | "ticker" | "evaluator")
        ) || services(&compose())
            .get(name)
            .is_some_and(|base| environment(base).contains_key("ROLLOUT_REDIS__URL"));
        // whatever waited for the single Redis now waits for the cluster to be formed
        if !service["depends_on"]["redis"].is_null() {
            assert_eq!(
                service["depends_on"]["redis"]["condition"].as_str(),
                Some("service_completed_successfully"),
                "{name} does not wait for the cluster to be formed"
            );
        }
        if !reaches_redis {
            continue;
        }
        let given: BTreeSet<String> = env
            .get("ROLLOUT_REDIS__URL")
            .unwrap_or_else(|| panic!("{name} is not given the cluster's nodes"))
            .split(',')
            .map(|url| url.trim().to_owned())
            .collect();
        assert_eq!(given, urls, "{name} is not given every node");
        assert_eq!(
            env.get("ROLLOUT_REDIS__CLUSTER").map(String::as_str),
            Some("true"),
            "{name}: cluster mode"
        );
        assert_eq!(
            env.get("ROLLOUT_REDIS__WAIT_REPLICAS").map(String::as_str),
            Some("1"),
            "{name}: each commit confirmed on a replica"
        );
        // the settings as the service reads them
        if let Some(at) = command.iter().position(|word| word == "--config") {
            let file = deploy()
                .join("config")
                .join(command[at + 1].trim_start_matches("/etc/rollout/"));
            let redis = match command[0].as_str() {
                "planner" => check_config::<planner::PlannerConfig>(&file, &env).redis,
                "ticker" => check_config::<ticker::TickerConfig>(&file, &env).redis,
                _ => check_config::<evaluator::EvaluatorConfig>(&file, &env).redis,
            };
            assert!(redis.is_cluster(), "{name}");
            assert_eq!(redis.nodes().len(), nodes.len(), "{name}");
            assert_eq!(redis.wait_replicas, 1, "{name}");
        }
        pointed += 1;
    }
    assert!(
        pointed >= 9,
        "planners, tickers, evaluators and loadtest: {pointed}"
    );
}

/// The one-shot `redis` service forms the cluster: it starts once every node answers its
/// health check, runs deploy/redis/cluster-init.sh (`redis-cli --cluster create` over every
/// node, one replica per master, skipped on a cluster already formed) as an ACL user allowed
/// to, and is not restarted.
#[test]
fn the_redis_cluster_is_formed_once_every_node_answers() {
    let merged = merged_services(&redis_cluster_overlay());
    let nodes = cluster_nodes(&merged);
    let init = &merged["redis"];
    assert_eq!(init["restart"].as_str(), Some("no"), "a one-shot job");
    for name in nodes.keys() {
        assert_eq!(
            init["depends_on"][name.as_str()]["condition"].as_str(),
            Some("service_healthy"),
            "the cluster is formed before {name} answers"
        );
    }
    let command = strings(&init["command"]);
    assert_eq!(
        command,
        ["sh", "/etc/redis/cluster-init.sh"],
        "the job runs the formation script"
    );
    assert!(strings(&init["volumes"])
        .iter()
        .any(|volume| volume.starts_with("./redis/cluster-init.sh:/etc/redis/cluster-init.sh")));
    let env = environment(init);
    let listed: BTreeSet<String> = env["ROLLOUT_REDIS_CLUSTER_NODES"]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let expected: BTreeSet<String> = nodes.keys().map(|name| format!("{name}:6379")).collect();
    assert_eq!(listed, expected, "the job joins every node");
    let replicas: usize = env["ROLLOUT_REDIS_CLUSTER_REPLICAS"]
        .parse()
        .expect("a count");
    assert_eq!(nodes.len() / (replicas + 1), 3, "3 masters");
    let user = &env["ROLLOUT_REDIS_CLUSTER_USER"];
    assert_redis_login(
        "the cluster formation job",
        user,
        &resolve(&env["REDISCLI_AUTH"], &env_example()),
    );
    let script = read(&deploy().join("redis/cluster-init.sh"));
    for needed in [
        "--cluster create",
        "--cluster-replicas",
        "--cluster-yes",
        // a cluster already formed is left alone
        "cluster_slots_assigned:16384",
        "ROLLOUT_REDIS_CLUSTER_NODES",
        "ROLLOUT_REDIS_CLUSTER_USER",
    ] {
        assert!(script.contains(needed), "cluster-init.sh lacks {needed}");
    }
    // the image has the shell the job runs
    assert!(
        read(&deploy().join("compose/images.sh")).contains("add_binary \"$shell\" sh"),
        "images.sh puts no sh in the image"
    );
}

/// The ACL users of the Redis Cluster: every service user may run what the cluster client
/// sends, the replication user only what a replica sends, the formation job's user what
/// `redis-cli --cluster create` sends; none of them may read or write a key.
#[test]
fn the_acl_grants_what_the_redis_cluster_needs() {
    let users = acl_users();
    for service in ["planner", "ticker", "evaluator", "loadtest"] {
        for command in CLUSTER_CLIENT_COMMANDS {
            assert!(
                acl_grants(&users[service], command),
                "{service} may not run {command}, which the cluster client sends"
            );
        }
    }
    let masteruser = &directives("cluster.conf")["masteruser"];
    let formation = environment(&merged_services(&redis_cluster_overlay())["redis"])
        ["ROLLOUT_REDIS_CLUSTER_USER"]
        .clone();
    for (user, commands) in [
        (masteruser, &REPLICATION_COMMANDS[..]),
        (&formation, &FORMATION_COMMANDS[..]),
    ] {
        let rules = users
            .get(user.as_str())
            .unwrap_or_else(|| panic!("users.acl has no {user} user"));
        for command in commands {
            assert!(acl_grants(rules, command), "{user} may not run {command}");
        }
        assert!(
            rules.iter().any(|rule| rule == "-@all"),
            "{user} starts from nothing"
        );
        assert!(
            !rules
                .iter()
                .any(|rule| rule.starts_with('~') || rule.starts_with("%") || rule == "allkeys"),
            "{user} reaches keys: {rules:?}"
        );
        assert!(
            !acl_grants(rules, "get") && !acl_grants(rules, "set"),
            "{user} reads or writes data"
        );
    }
}
