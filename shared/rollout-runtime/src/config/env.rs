//! Where environment variables come from: the process, or a map in tests.

use std::collections::HashMap;

use super::{ENV_PREFIX, ENV_SEPARATOR};

/// A source of environment variables.
///
/// Services read [`ProcessEnv`]; tests pass a [`MapEnv`] so they neither
/// depend on nor change the process environment, and can run in parallel.
pub trait EnvSource {
    /// Every variable as a `(name, value)` pair.
    fn vars(&self) -> Vec<(String, String)>;

    /// The value of one variable, if set.
    fn var(&self, name: &str) -> Option<String> {
        self.vars()
            .into_iter()
            .find(|(candidate, _)| candidate == name)
            .map(|(_, value)| value)
    }
}

/// The environment of the running process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        // a name that is not unicode cannot be a setting; a value that is not
        // unicode is kept (lossily) so the setting's validation reports it
        std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                Some((name, value.to_string_lossy().into_owned()))
            })
            .collect()
    }

    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
    }
}

/// A fixed set of variables, for tests.
///
/// ```
/// use rollout_runtime::config::{EnvSource, MapEnv};
///
/// let env = MapEnv::new().with("ROLLOUT_NATS__URL", "nats://127.0.0.1:4333");
/// assert_eq!(env.var("ROLLOUT_NATS__URL").as_deref(), Some("nats://127.0.0.1:4333"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// An empty environment.
    pub fn new() -> MapEnv {
        MapEnv::default()
    }

    /// This environment with `name` set to `value`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> MapEnv {
        self.0.insert(name.into(), value.into());
        self
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> MapEnv {
        MapEnv(
            pairs
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        )
    }
}

impl EnvSource for MapEnv {
    fn vars(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// The variables of `env` that are settings: `ROLLOUT_<SECTION>__<KEY>`.
pub(super) fn settings_vars(env: &dyn EnvSource) -> HashMap<String, String> {
    env.vars()
        .into_iter()
        .filter(|(name, _)| is_setting_var(name))
        .collect()
}

fn is_setting_var(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .and_then(|rest| rest.split_once(ENV_SEPARATOR))
        .is_some_and(|(section, key)| !section.is_empty() && !key.is_empty())
}

/// The variable that sets `setting` (`nats.url` → `ROLLOUT_NATS__URL`).
pub(super) fn var_name(setting: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        setting.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    )
}

/// The variable that sets `setting`, or a key inside it (an unknown section
/// `bogus` is named by `ROLLOUT_BOGUS__X`), when `env` sets it to a
/// non-empty value.
pub(super) fn var_name_if_set(env: &dyn EnvSource, setting: &str) -> Option<String> {
    let exact = var_name(setting);
    if env.var(&exact).is_some_and(|value| !value.is_empty()) {
        return Some(exact);
    }
    let nested_prefix = format!("{exact}{ENV_SEPARATOR}");
    let mut nested: Vec<String> = env
        .vars()
        .into_iter()
        .filter(|(name, value)| name.starts_with(&nested_prefix) && !value.is_empty())
        .map(|(name, _)| name)
        .collect();
    nested.sort();
    nested.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_section_key_variables_are_settings() {
        assert!(is_setting_var("ROLLOUT_NATS__URL"));
        assert!(is_setting_var("ROLLOUT_PLANNER__MIN_PHASE_INTERVAL"));
        assert!(!is_setting_var("ROLLOUT_NATS_SERVER_BIN"));
        assert!(!is_setting_var("ROLLOUT___URL"));
        assert!(!is_setting_var("ROLLOUT_NATS__"));
        assert!(!is_setting_var("NATS__URL"));
    }

    #[test]
    fn setting_paths_map_to_variable_names() {
        assert_eq!(var_name("nats.url"), "ROLLOUT_NATS__URL");
        assert_eq!(
            var_name("planner.min_phase_interval"),
            "ROLLOUT_PLANNER__MIN_PHASE_INTERVAL"
        );
    }

    #[test]
    fn the_variable_behind_a_setting_is_found() {
        let env = MapEnv::new()
            .with("ROLLOUT_NATS__URL", "nats://x")
            .with("ROLLOUT_BOGUS__B", "2")
            .with("ROLLOUT_BOGUS__A", "1")
            .with("ROLLOUT_REDIS__URL", "");
        assert_eq!(
            var_name_if_set(&env, "nats.url").as_deref(),
            Some("ROLLOUT_NATS__URL")
        );
        assert_eq!(
            var_name_if_set(&env, "bogus").as_deref(),
            Some("ROLLOUT_BOGUS__A")
        );
        assert_eq!(var_name_if_set(&env, "redis.url"), None);
        assert_eq!(var_name_if_set(&env, "nats.name"), None);
    }

    #[test]
    fn map_env_collects_pairs() {
        let env: MapEnv = [("A", "1"), ("B", "2")].into_iter().collect();
        assert_eq!(env.var("A").as_deref(), Some("1"));
        assert_eq!(env.var("C"), None);
        assert_eq!(env.vars().len(), 2);
    }
}
