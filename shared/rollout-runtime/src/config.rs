//! Layered service configuration: serde defaults, then an optional file
//! (TOML, YAML or JSON, chosen by extension), then `ROLLOUT_<SECTION>__<KEY>`
//! environment variables, each layer overriding the one before.
//!
//! Every service has a plain config struct made of sections (`nats`, `redis`,
//! `otlp`, `log`: [`NatsSettings`], [`RedisSettings`], [`OtlpSettings`],
//! [`LogSettings`], plus its own), marked
//! `#[serde(default, deny_unknown_fields)]`, loaded once with [`load_config`]
//! and checked with [`Validate`]. The environment is read through
//! [`EnvSource`], so tests pass a [`MapEnv`] instead of touching the process
//! environment.
//!
//! Only variables of the form `ROLLOUT_<SECTION>__<KEY>` are configuration:
//! `ROLLOUT_NATS__URL` sets `nats.url`, `ROLLOUT_PLANNER__MIN_PHASE_INTERVAL`
//! sets `planner.min_phase_interval`. Variables without a `__` after the
//! prefix (such as the test kit's `ROLLOUT_NATS_SERVER_BIN`) are not
//! settings and are ignored, and empty values count as unset.
//!
//! Any failure is a [`ConfigError`] naming the setting (`nats.url`) or, for
//! the file itself, `--config`; a binary hands it to [`exit_on_config_error`],
//! which prints `configuration error: <setting>: <message>` and exits with
//! [`EX_USAGE`] (64).

pub mod duration;
mod env;
mod settings;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use env::{EnvSource, MapEnv, ProcessEnv};
pub use settings::{
    LogFormat, LogSettings, NatsSettings, OtlpProtocol, OtlpSettings, RedisSettings, Secret,
};

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "ROLLOUT_";

/// Separator between the section and the key in an environment variable
/// name, and between nested keys (`ROLLOUT_NATS__URL` is `nats.url`).
pub const ENV_SEPARATOR: &str = "__";

/// Exit code for a bad configuration: `EX_USAGE` from BSD `sysexits.h`.
pub const EX_USAGE: i32 = crate::service::EX_USAGE as i32;

/// The setting name used in errors about the configuration file as a whole
/// (missing, unreadable, unparsable, unknown extension).
pub const CONFIG_FILE_SETTING: &str = "--config";

/// A setting that could not be loaded or is not valid.
///
/// Carries the dotted path of the setting (`nats.url`, or `--config` for the
/// file itself) and a lowercase message saying what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    setting: String,
    message: String,
}

impl ConfigError {
    /// Creates an error about `setting` (a dotted path such as `nats.url`).
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// The dotted path of the bad setting, e.g. `nats.connect_timeout`.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// What is wrong with the setting.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Start-up checks a loaded configuration must pass before a service uses it.
///
/// Implemented by every shared section; a service's config struct implements
/// it by validating each of its sections and its own settings.
pub trait Validate {
    /// Returns the first bad setting found, named by its dotted path.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads a configuration: `T`'s serde defaults, overridden by `file` when
/// given, overridden by the `ROLLOUT_<SECTION>__<KEY>` variables of `env`.
///
/// `T` should be `#[serde(default)]` so that every layer is optional, and its
/// sections `#[serde(deny_unknown_fields)]` so that a misspelt key is an
/// error rather than silently ignored. The result is not validated: call
/// [`Validate::validate`] (or let [`crate::service::service_main`] do both).
pub fn load_config<T: DeserializeOwned>(
    file: Option<&Path>,
    env: &dyn EnvSource,
) -> Result<T, ConfigError> {
    let mut builder = ::config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(file_source(path)?);
    }
    let settings_from_env = env::settings_vars(env);
    let env_source = ::config::Environment::default()
        .prefix(ENV_PREFIX.trim_end_matches('_'))
        .prefix_separator("_")
        .separator(ENV_SEPARATOR)
        .ignore_empty(true)
        .source(Some(settings_from_env.into_iter().collect()));
    let layered = builder
        .add_source(env_source)
        .build()
        .map_err(|error| source_error(error, file))?;
    serde_path_to_error::deserialize(layered).map_err(|error| {
        let setting = error.path().to_string();
        let message = describe(error.inner());
        let message = match env::var_name_if_set(env, &setting) {
            Some(var) => format!("{message} (from {var})"),
            None => message,
        };
        ConfigError::new(setting, message)
    })
}

/// Command-line arguments every service binary shares; flatten them into the
/// binary's clap parser with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ServiceArgs {
    /// Path of the configuration file (`--config FILE`): `.toml`, `.yaml`,
    /// `.yml` or `.json`; `ROLLOUT_<SECTION>__<KEY>` variables override it
    #[arg(
        long,
        value_name = "FILE",
        help = "Configuration file (.toml, .yaml, .yml or .json); ROLLOUT_<SECTION>__<KEY> environment variables override it"
    )]
    pub config: Option<PathBuf>,
    /// Instead of running the service, asks the running one's `/readyz` (on this
    /// configuration's HTTP address, through loopback) and exits 0 when it is ready
    #[arg(
        long,
        help = "Do not run: ask the running service's /readyz (at this configuration's HTTP address) and exit 0 if it is ready, 1 if not; for container health checks"
    )]
    pub ready_check: bool,
}

impl ServiceArgs {
    /// Loads the configuration from `--config` (if given) and `env`.
    pub fn load<T: DeserializeOwned>(&self, env: &dyn EnvSource) -> Result<T, ConfigError> {
        load_config(self.config.as_deref(), env)
    }
}

/// The line [`exit_on_config_error`] prints:
/// `configuration error: <setting>: <message>`.
pub fn config_error_report(error: &ConfigError) -> String {
    format!("configuration error: {error}")
}

/// Prints `configuration error: <setting>: <message>` to stderr and exits the
/// process with [`EX_USAGE`] (64).
pub fn exit_on_config_error(error: &ConfigError) -> ! {
    eprintln!("{}", config_error_report(error));
    std::process::exit(EX_USAGE)
}

fn file_source(
    path: &Path,
) -> Result<::config::File<::config::FileSourceFile, ::config::FileFormat>, ConfigError> {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    let format = match extension.as_deref() {
        Some("toml") => ::config::FileFormat::Toml,
        Some("yaml" | "yml") => ::config::FileFormat::Yaml,
        Some("json") => ::config::FileFormat::Json,
        _ => {
            return Err(ConfigError::new(
                CONFIG_FILE_SETTING,
                format!(
                    "{}: unknown file type, expected a .toml, .yaml, .yml or .json extension",
                    path.display()
                ),
            ))
        }
    };
    // checked here because the config crate's own message does not say which
    // flag pointed at the file
    if !path.is_file() {
        return Err(ConfigError::new(
            CONFIG_FILE_SETTING,
            format!("{}: no such file", path.display()),
        ));
    }
    Ok(::config::File::from(path).format(format).required(true))
}

fn source_error(error: ::config::ConfigError, file: Option<&Path>) -> ConfigError {
    match error {
        // the crate's uri is relative to the working directory; the path as
        // given is what the operator typed
        ::config::ConfigError::FileParse { cause, .. } => ConfigError::new(
            CONFIG_FILE_SETTING,
            format!("{}: {cause}", file_display(file)),
        ),
        ::config::ConfigError::Foreign(cause) => ConfigError::new(
            CONFIG_FILE_SETTING,
            format!("{}: {cause}", file_display(file)),
        ),
        other => {
            // the environment source fails only on keys it cannot place
            ConfigError::new("environment", describe(&other))
        }
    }
}

fn file_display(file: Option<&Path>) -> String {
    file.map(|path| path.display().to_string())
        .unwrap_or_else(|| "configuration".to_owned())
}

/// The message of a deserialisation error without the key and origin the
/// config crate appends, since [`ConfigError`] names the setting itself.
fn describe(error: &::config::ConfigError) -> String {
    match error {
        ::config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        ::config::ConfigError::At { error, .. } => describe(error),
        ::config::ConfigError::Message(message) => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_the_setting_after_a_fixed_prefix() {
        let error = ConfigError::new("nats.url", "invalid url");
        assert_eq!(
            config_error_report(&error),
            "configuration error: nats.url: invalid url"
        );
        assert_eq!(error.setting(), "nats.url");
        assert_eq!(error.message(), "invalid url");
    }

    #[test]
    fn unknown_file_extension_is_named() {
        let error = load_config::<NatsSettings>(Some(Path::new("service.ini")), &MapEnv::new())
            .expect_err("an .ini file is not supported");
        assert_eq!(error.setting(), CONFIG_FILE_SETTING);
        assert!(error.message().contains("service.ini"), "{error}");
    }

    #[test]
    fn missing_file_is_named() {
        let error = load_config::<NatsSettings>(
            Some(Path::new("/nonexistent/rollout.toml")),
            &MapEnv::new(),
        )
        .expect_err("the file does not exist");
        assert_eq!(error.setting(), CONFIG_FILE_SETTING);
        assert!(error.message().contains("no such file"), "{error}");
    }
}
