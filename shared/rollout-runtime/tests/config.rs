//! Loading configuration: the layering of defaults, file and environment,
//! errors that name the bad setting, and exit code 64.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rollout_runtime::config::{
    config_error_report, exit_on_config_error, load_config, ConfigError, LogFormat, LogSettings,
    MapEnv, NatsSettings, OtlpSettings, RedisSettings, Secret, ServiceArgs, Validate, EX_USAGE,
};
use serde::Deserialize;

/// A service config shaped like the planner's: shared sections plus its own.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServiceConfig {
    nats: NatsSettings,
    redis: RedisSettings,
    otlp: OtlpSettings,
    log: LogSettings,
    planner: PlannerSettings,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct PlannerSettings {
    #[serde(with = "rollout_runtime::config::duration")]
    min_phase_interval: Duration,
    queue_group: String,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings {
            min_phase_interval: Duration::from_secs(60),
            queue_group: "planner".to_owned(),
        }
    }
}

impl Validate for ServiceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.redis.validate()?;
        self.otlp.validate()?;
        self.log.validate()
    }
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config file");
    path
}

fn load(file: Option<&Path>, env: &MapEnv) -> Result<ServiceConfig, ConfigError> {
    load_config(file, env)
}

#[test]
fn defaults_apply_without_file_or_environment() {
    let config = load(None, &MapEnv::new()).expect("defaults load");
    assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
    assert_eq!(config.nats.subject_prefix, "rollout");
    assert_eq!(config.nats.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
    assert_eq!(config.otlp.endpoint, None);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.planner, PlannerSettings::default());
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(
        &dir,
        "planner.toml",
        r#"
[nats]
url = "nats://file-host:4222"
subject_prefix = "staging"
connect_timeout = "3s"

[redis]
url = "redis://file-host:6379"

[log]
format = "json"

[planner]
min_phase_interval = "5m"
"#,
    );
    let env = MapEnv::new()
        .with("ROLLOUT_NATS__URL", "nats://env-host:4222")
        .with("ROLLOUT_PLANNER__MIN_PHASE_INTERVAL", "90s")
        .with("ROLLOUT_OTLP__ENDPOINT", "http://127.0.0.1:4318");

    let config = load(Some(&file), &env).expect("layers load");

    // environment beats file
    assert_eq!(config.nats.url, "nats://env-host:4222");
    assert_eq!(config.planner.min_phase_interval, Duration::from_secs(90));
    // file beats defaults
    assert_eq!(config.nats.subject_prefix, "staging");
    assert_eq!(config.nats.connect_timeout, Duration::from_secs(3));
    assert_eq!(config.redis.url, "redis://file-host:6379");
    assert_eq!(config.log.format, LogFormat::Json);
    // environment alone
    assert_eq!(
        config.otlp.endpoint.as_deref(),
        Some("http://127.0.0.1:4318")
    );
    // defaults where nobody said anything
    assert_eq!(config.log.level, "info");
    assert_eq!(config.planner.queue_group, "planner");
}

#[test]
fn yaml_and_json_files_are_read_by_extension() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = write_file(
        &dir,
        "ticker.yaml",
        "redis:\n  url: redis://yaml-host:6379\n  connect_timeout: 250ms\n",
    );
    let json = write_file(
        &dir,
        "ticker.json",
        r#"{"nats": {"url": "nats://json-host:4222", "tls_required": true}}"#,
    );

    let from_yaml = load(Some(&yaml), &MapEnv::new()).expect("yaml loads");
    assert_eq!(from_yaml.redis.url, "redis://yaml-host:6379");
    assert_eq!(from_yaml.redis.connect_timeout, Duration::from_millis(250));

    let from_json = load(Some(&json), &MapEnv::new()).expect("json loads");
    assert_eq!(from_json.nats.url, "nats://json-host:4222");
    assert!(from_json.nats.tls_required);
}

#[test]
fn environment_values_keep_their_text() {
    // a password of digits with a leading zero must not become a number
    let env = MapEnv::new()
        .with("ROLLOUT_REDIS__PASSWORD", "007")
        .with("ROLLOUT_NATS__TLS_REQUIRED", "true");
    let config = load(None, &env).expect("loads");
    assert_eq!(config.redis.password, Some(Secret::new("007")));
    assert!(config.nats.tls_required);
}

#[test]
fn variables_that_are_not_settings_are_ignored() {
    // the test kit's own variables share the prefix but have no section
    let env = MapEnv::new()
        .with("ROLLOUT_NATS_SERVER_BIN", "/usr/bin/nats-server")
        .with("ROLLOUT_REDIS_SERVER_BIN", "/usr/bin/redis-server")
        .with("NATS__URL", "nats://elsewhere:4222")
        .with("ROLLOUT_NATS__NAME", "");
    let config = load(None, &env).expect("loads");
    assert_eq!(config.nats.url, NatsSettings::DEFAULT_URL);
    assert_eq!(config.nats.name, None);
}

#[test]
fn bad_value_in_environment_names_the_setting_and_variable() {
    let env = MapEnv::new().with("ROLLOUT_NATS__CONNECT_TIMEOUT", "banana");
    let error = load(None, &env).expect_err("banana is not a duration");
    assert_eq!(error.setting(), "nats.connect_timeout");
    assert!(error.message().contains("banana"), "{error}");
    assert!(
        error.message().contains("ROLLOUT_NATS__CONNECT_TIMEOUT"),
        "{error}"
    );
}

#[test]
fn bad_value_in_file_names_the_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(&dir, "bad.toml", "[nats]\ntls_required = \"maybe\"\n");
    let error = load(Some(&file), &MapEnv::new()).expect_err("maybe is not a bool");
    assert_eq!(error.setting(), "nats.tls_required");
}

#[test]
fn unknown_key_in_a_section_is_an_error_naming_it() {
    let env = MapEnv::new().with("ROLLOUT_NATS__URLS", "nats://127.0.0.1:4222");
    let error = load(None, &env).expect_err("urls is not a nats setting");
    assert_eq!(error.setting(), "nats.urls");
    assert!(error.message().contains("unknown field `urls`"), "{error}");
    assert!(error.message().contains("ROLLOUT_NATS__URLS"), "{error}");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(&dir, "typo.toml", "[redis]\nurll = \"redis://x\"\n");
    let error = load(Some(&file), &MapEnv::new()).expect_err("urll is not a redis setting");
    assert_eq!(error.setting(), "redis.urll");
    assert!(error.message().contains("unknown field `urll`"), "{error}");
}

#[test]
fn unknown_section_is_an_error_naming_it() {
    let env = MapEnv::new().with("ROLLOUT_NAST__URL", "nats://127.0.0.1:4222");
    let error = load(None, &env).expect_err("nast is not a section");
    assert_eq!(error.setting(), "nast");
    assert!(error.message().contains("ROLLOUT_NAST__URL"), "{error}");
}

#[test]
fn bad_choices_name_the_setting_and_the_choices() {
    let env = MapEnv::new().with("ROLLOUT_LOG__FORMAT", "xml");
    let error = load(None, &env).expect_err("xml is not a log format");
    assert_eq!(error.setting(), "log.format");
    assert!(error.message().contains("expected text or json"), "{error}");

    let env = MapEnv::new().with("ROLLOUT_OTLP__PROTOCOL", "grpc");
    let error = load(None, &env).expect_err("grpc is not built in");
    assert_eq!(error.setting(), "otlp.protocol");
    assert!(error.message().contains("http/protobuf"), "{error}");

    let env = MapEnv::new().with("ROLLOUT_LOG__FORMAT", "JSON");
    assert_eq!(load(None, &env).expect("loads").log.format, LogFormat::Json);
}

#[test]
fn unparsable_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(&dir, "broken.toml", "[nats\nurl = ");
    let error = load(Some(&file), &MapEnv::new()).expect_err("not toml");
    assert_eq!(error.setting(), "--config");
    assert!(error.message().contains("broken.toml"), "{error}");
}

#[test]
fn validation_names_the_bad_setting() {
    let env = MapEnv::new().with("ROLLOUT_NATS__URL", "nats://host:notaport");
    let config = load(None, &env).expect("loads: the url is only text so far");
    let error = config.validate().expect_err("port is not a number");
    assert_eq!(error.setting(), "nats.url");
    assert!(
        config_error_report(&error).starts_with("configuration error: nats.url: "),
        "{error}"
    );
}

#[test]
fn service_args_parse_the_config_flag() {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        service: ServiceArgs,
    }

    let cli =
        Cli::try_parse_from(["planner", "--config", "/etc/rollout/planner.toml"]).expect("parses");
    assert_eq!(
        cli.service.config.as_deref(),
        Some(Path::new("/etc/rollout/planner.toml"))
    );
    let without = Cli::try_parse_from(["planner"]).expect("parses");
    assert_eq!(without.service, ServiceArgs::default());
}

/// Environment switch that turns [`exit_probe`] from a no-op into the
/// process under test.
const EXIT_PROBE_VAR: &str = "ROLLOUT_RUNTIME_TEST_EXIT_PROBE";

/// Runs only as the child of [`bad_configuration_exits_with_64`]: loads a
/// bad configuration and exits through `exit_on_config_error`.
#[test]
fn exit_probe() {
    if std::env::var_os(EXIT_PROBE_VAR).is_none() {
        return;
    }
    let env = MapEnv::new().with("ROLLOUT_NATS__CONNECT_TIMEOUT", "banana");
    match load(None, &env) {
        Ok(_) => panic!("the probe's configuration should be bad"),
        Err(error) => exit_on_config_error(&error),
    }
}

#[test]
fn bad_configuration_exits_with_64() {
    let test_binary = std::env::current_exe().expect("test binary path");
    let output = Command::new(test_binary)
        .args(["--exact", "exit_probe", "--nocapture", "--test-threads=1"])
        .env(EXIT_PROBE_VAR, "1")
        .output()
        .expect("run the probe");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EX_USAGE), "stderr: {stderr}");
    assert_eq!(EX_USAGE, 64);
    assert!(
        stderr.contains("configuration error: nats.connect_timeout: invalid duration \"banana\""),
        "stderr: {stderr}"
    );
}
