//! The command line of `rolloutctl`: global connection options and one subcommand per
//! planner command and query, plus `watch` and `eval`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rollout_core::{DurationMs, Lifecycle};

const AFTER_HELP: &str = "\
Spec files (rollout create / plan) hold the `rollout` object of a rollout.create command, in
YAML (.yaml, .yml) or JSON (.json); a file whose only key is `rollout` is accepted too. Flag
files hold the `flag` object likewise. Examples of each kind are in deploy/examples/.
Times (`start_at`, `template.start_at`, `manual[].execute_at`) may be written relative to
now as `+DURATION` (`+10m`, `+1h30m`, `+2d`); rolloutctl converts them before sending.

Connection settings beyond --nats-url (user, password, token, credentials file, TLS, the
inbox prefix replies come back under) are read from ROLLOUT_NATS__* variables, as the
services read them: e.g. ROLLOUT_NATS__USER=operator ROLLOUT_NATS__INBOX_PREFIX=_INBOX_operator.

Exit codes: 0 done; 1 the planner refused (not_found, conflict, failed_precondition,
permission_denied); 2 invalid input (usage, unreadable file, invalid_argument); 69 NATS or
the planner/evaluator unreachable (unavailable, no responders, timeout); 70 internal error.";

/// rolloutctl — operate progressive rollouts: flags, rollout specs, status, live watch.
#[derive(Debug, Parser)]
#[command(name = "rolloutctl", version, about, after_long_help = AFTER_HELP)]
pub struct Cli {
    /// NATS server URL (several separated by commas).
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_NATS__URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Namespace (environment) to work in.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    pub namespace: String,

    /// Print the raw result as JSON (one JSON line per event for `watch`), for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to wait for NATS and for each reply, e.g. `5s`, `500ms`.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// First token of every subject of the deployment.
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_NATS__SUBJECT_PREFIX",
        default_value = "rollout"
    )]
    pub subject_prefix: String,

    /// Who is asking, recorded in the audit; defaults to $USER.
    #[arg(long, global = true, env = "ROLLOUT_ACTOR")]
    pub actor: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: TopCommand,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// Create, change, enable, disable, delete and read flags.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Create, drive, inspect and follow rollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Evaluate a flag for an entity through the evaluators.
    Eval(EvalArgs),
    /// See which planners, tickers, evaluators and consoles are running.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Freeze or unfreeze the namespace: every timer and automatic gate holds.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
}

/// `rolloutctl namespace ...`.
#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Hold every timer and automatic gate of the namespace's rollouts (commands still
    /// act, guards still protect) until `unfreeze` or `--until`.
    Freeze {
        /// Why (shown in statuses and the audit).
        #[arg(long)]
        reason: String,
        /// When it ends by itself: an RFC 3339 time or `+DURATION` from now (`+2h`).
        #[arg(long)]
        until: Option<String>,
    },
    /// Lift the freeze: timers that ran out meanwhile open now, one step each.
    Unfreeze,
    /// The namespace's own audit: freezes and their ends, webhook changes, newest first.
    Audit(PageArg),
    /// The namespace's webhooks: told of every transition and gate hold, signed.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Send an alert: pause or roll back every active rollout it matches, once per id.
    Alert {
        /// The alert's identity (acted on once).
        #[arg(long = "id")]
        alert_id: String,
        /// Rollouts of this flag.
        #[arg(long)]
        flag: Option<String>,
        /// Rollouts of flags carrying this label (repeatable).
        #[arg(long = "label", value_name = "NAME=VALUE", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
        /// This rollout.
        #[arg(long)]
        rollout: Option<String>,
        /// `pause` or `rollback`.
        #[arg(long, value_parser = ["pause", "rollback"])]
        action: String,
        /// Why (kept in each rollout's audit).
        #[arg(long)]
        reason: String,
    },
}

/// `rolloutctl namespace webhook ...`.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Add a webhook, or replace one's address, secret and event filter (it keeps its
    /// place in the namespace's notices).
    Put {
        /// Its name in the namespace.
        id: String,
        /// Where notifications are POSTed (http:// or https://).
        #[arg(long)]
        url: String,
        /// The environment variable holding the signing secret (16..=256 bytes), so the
        /// secret stays out of shell history and process lists.
        #[arg(long, default_value = "ROLLOUT_WEBHOOK_SECRET")]
        secret_env: String,
        /// An event kind it is told of (repeatable; every kind when absent).
        #[arg(long = "event", value_name = "KIND")]
        events: Vec<String>,
    },
    /// Remove a webhook.
    Delete {
        /// Its name.
        id: String,
    },
    /// The webhooks and how their deliveries go.
    List,
}

/// `rolloutctl cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every replica that answers within a moment: service, readiness, the ticker leader
    /// and its epoch, what each evaluator serves.
    Status {
        /// How long to gather answers.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        wait: std::time::Duration,
    },
}

/// `rolloutctl flag ...`.
#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Create a flag from a YAML or JSON file.
    Create(FileArg),
    /// Replace a flag's definition from a YAML or JSON file (the key inside names it).
    Update {
        /// The flag file.
        #[command(flatten)]
        file: FileArg,
        /// Refuse unless the flag is still at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Enable a flag.
    Enable(KeyArg),
    /// Disable a flag (its rollout stops at the current share).
    Disable(KeyArg),
    /// Delete a flag.
    Delete(KeyArg),
    /// Show a flag as YAML (usable as a file for `flag update`).
    Get(KeyArg),
    /// The flag's outcome counters, side by side, and its kill switch's verdict.
    Counts(KeyArg),
    /// List flags.
    List(PageArg),
}

/// `rolloutctl rollout ...`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Create (and, unless it waits, start) a rollout from a spec file. It starts from what
    /// its target serves now: a split left by an earlier rollout is continued; any other
    /// serve than the baseline is refused unless --replace-current-serve.
    Create {
        /// The spec file.
        #[command(flatten)]
        file: FileArg,
        /// Start as written even though the target serves something else than the baseline
        /// (users may change variation at once).
        #[arg(long)]
        replace_current_serve: bool,
    },
    /// Preview the plan of a spec file with projected times; nothing is stored.
    Plan {
        /// The spec file.
        #[command(flatten)]
        file: FileArg,
        /// Preview as `create --replace-current-serve` would create it.
        #[arg(long)]
        replace_current_serve: bool,
    },
    /// Start a rollout created with `wait_for_start`.
    Start(IdArg),
    /// Freeze a rollout at its current share.
    Pause(IdArg),
    /// Resume a paused rollout.
    Resume(IdArg),
    /// Open the current step's gate (or cut its timer short).
    Continue(IdArg),
    /// Approve the current step as `--actor` (a step with an approval gate waits for as
    /// many distinct approvers as it asks for; its timer runs from the approval).
    Approve(IdArg),
    /// Jump to the final step now.
    Promote(IdArg),
    /// Replace the steps after the current one with those of a file (a list of phases for
    /// a percentage rollout, of stages for a label-stage one; or `steps:` holding it).
    Reschedule {
        /// The rollout.
        #[command(flatten)]
        id: IdArg,
        /// The steps file.
        #[command(flatten)]
        file: FileArg,
    },
    /// End the rollout, keeping the current share or the one given.
    Stop {
        /// The rollout.
        #[command(flatten)]
        id: IdArg,
        /// Share to keep serving, in percent (up to four decimals).
        #[arg(long)]
        percentage: Option<f64>,
    },
    /// End the rollout with everyone on the baseline: at once, or with `--gradual 20,5,0
    /// --every 5m` walking the share down (the last adopters revert first).
    Rollback {
        /// The rollout.
        #[command(flatten)]
        id: IdArg,
        /// Shares to walk down through, in percent, strictly decreasing, ending at 0.
        #[arg(long, value_delimiter = ',', requires = "every")]
        gradual: Option<Vec<f64>>,
        /// Time between two shares of a gradual rollback (`5m`).
        #[arg(long, requires = "gradual")]
        every: Option<String>,
    },
    /// Delete a rollout (its audit stays readable).
    Delete(IdArg),
    /// Show every step: share or stage, gate, planned and actual times, counts.
    Status(IdArg),
    /// Show the figures behind the health gates: outcomes over the guard window with the
    /// guard's verdict, and each label stage's fleet counts.
    Counts(IdArg),
    /// List active (or finished) rollouts.
    List {
        /// Finished rollouts instead of active ones.
        #[arg(long)]
        finished: bool,
        /// Only the rollouts in this state: queued, running, paused, rolling_back (active), or completed,
        /// stopped, rolled_back (finished; implies --finished).
        #[arg(long, value_parser = parse_lifecycle)]
        state: Option<Lifecycle>,
        /// Only the rollouts of this flag.
        #[arg(long)]
        flag: Option<String>,
        /// Page, from 0.
        #[command(flatten)]
        page: PageArg,
    },
    /// Show the audit of a rollout or a flag, newest first.
    Audit {
        /// The rollout whose audit to show.
        #[arg(long, conflicts_with = "flag", required_unless_present = "flag")]
        rollout: Option<String>,
        /// The flag whose audit to show.
        #[arg(long)]
        flag: Option<String>,
        /// Page, from 0.
        #[command(flatten)]
        page: PageArg,
    },
    /// Follow a rollout's events live with a progress bar until it finishes.
    Watch {
        /// The rollout to follow.
        #[arg(conflicts_with = "flag", required_unless_present = "flag")]
        rollout_id: Option<String>,
        /// Follow the active (or next) rollout of this flag instead.
        #[arg(long)]
        flag: Option<String>,
    },
}

/// A spec or flag file.
#[derive(Debug, Args)]
pub struct FileArg {
    /// YAML (.yaml, .yml) or JSON (.json) file.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub path: PathBuf,
}

/// A flag key.
#[derive(Debug, Args)]
pub struct KeyArg {
    /// Flag key.
    pub key: String,
}

/// A rollout id.
#[derive(Debug, Args)]
pub struct IdArg {
    pub rollout_id: String,
}

/// A page number.
#[derive(Debug, Args)]
pub struct PageArg {
    /// Page, from 0.
    #[arg(long)]
    pub page: Option<u32>,
}

/// `rolloutctl eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Flag key.
    pub flag: String,
    /// Entity id.
    #[arg(long)]
    pub entity: String,
    /// Attribute `name=value`; the value is read as JSON when it parses (`42`, `true`,
    /// `["a","b"]`), else as a string. Repeat for more.
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub attributes: Vec<(String, String)>,
    /// Fleet label `name=value`. Repeat for more.
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Ask the evaluator to explain its answer.
    #[arg(long)]
    pub explain: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = DurationMs::parse(text)?;
    let millis = u64::try_from(duration.as_millis()).unwrap_or(0);
    if millis == 0 {
        return Err("must be greater than zero".to_owned());
    }
    Ok(Duration::from_millis(millis))
}

fn parse_lifecycle(text: &str) -> Result<Lifecycle, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        "one of queued, running, paused, rolling_back, completed, stopped, rolled_back".to_owned()
    })
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_go_anywhere_and_audit_needs_a_subject() {
        let cli = Cli::try_parse_from([
            "rolloutctl",
            "rollout",
            "stop",
            "r-1",
            "--percentage",
            "25",
            "-n",
            "prod",
            "--json",
        ])
        .expect("parses");
        assert_eq!(cli.namespace, "prod");
        assert!(cli.json);
        let TopCommand::Rollout(RolloutCommand::Stop { id, percentage }) = cli.command else {
            panic!("expected rollout stop");
        };
        assert_eq!((id.rollout_id.as_str(), percentage), ("r-1", Some(25.0)));
        assert!(Cli::try_parse_from(["rolloutctl", "rollout", "audit"]).is_err());
        assert!(Cli::try_parse_from([
            "rolloutctl",
            "rollout",
            "audit",
            "--rollout",
            "r",
            "--flag",
            "f"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["rolloutctl", "--timeout", "0s", "flag", "list"]).is_err());
    }

    #[test]
    fn pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_pair("plan=a=b"),
            Ok(("plan".to_owned(), "a=b".to_owned()))
        );
        assert!(parse_pair("novalue").is_err());
        assert!(parse_pair("=x").is_err());
    }
}
