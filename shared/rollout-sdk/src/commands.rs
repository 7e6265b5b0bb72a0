//! [`CommandClient`]: every planner command (`rollout.cmd.<ns>.<verb>`) and query
//! (`rollout.query.<ns>.<what>`) as a typed method, over one `async_nats::Client`.
//!
//! Every command leaves with a command id, the caller's or a fresh one, so the client's own
//! retries after a lost reply are applied once: the planner answers a repeated id with the
//! first outcome.

use std::time::Duration;

use rollout_core::spec::RescheduleStepSpec;
use rollout_core::{Flag, RolloutSpec};
use rollout_wire::alerts::{Alert, AlertResult};
use rollout_wire::events::EventKind;
use rollout_wire::webhooks::{WebhookDelete, WebhookList, WebhookPut, WebhooksQuery};
use rollout_wire::{
    AuditPage, AuditQuery, Command, CommandVerb, Deleted, Encoding, FlagCounts, FlagCountsQuery,
    FlagCreate, FlagDelete, FlagGetQuery, FlagList, FlagListQuery, FlagResult, FlagToggle,
    FlagUpdate, Namespace, NamespaceFreeze, NamespaceResult, NamespaceUnfreeze, PlanPreview,
    PlanQuery, Query, QueryKind, RolloutAction, RolloutCounts, RolloutCountsQuery, RolloutCreate,
    RolloutList, RolloutListQuery, RolloutReschedule, RolloutResult, RolloutRollback,
    RolloutStatus, RolloutStatusQuery, RolloutStop, Subjects,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{self, new_command_id, RequestOptions};

/// What a command returned, by the verb's reply type.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandOutcome {
    /// `flag.create`, `flag.update`, `flag.enable`, `flag.disable` (boxed: a flag is large).
    Flag(Box<FlagResult>),
    /// `rollout.create` and every rollout verb but `delete`.
    Rollout(RolloutResult),
    /// `flag.delete`, `rollout.delete`.
    Deleted(Deleted),
    /// `namespace.freeze`, `namespace.unfreeze`.
    Namespace(NamespaceResult),
    /// `namespace.webhook.put`, `namespace.webhook.delete`.
    Webhooks(WebhookList),
}

/// What a query returned, by its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryOutcome {
    /// `flag.get` (boxed: a flag is large).
    Flag(Box<FlagResult>),
    /// `flag.list`.
    FlagList(FlagList),
    /// `rollout.status`.
    Status(Box<RolloutStatus>),
    /// `rollout.counts`.
    Counts(Box<RolloutCounts>),
    /// `flag.counts`.
    FlagCounts(Box<FlagCounts>),
    /// `rollout.list`.
    RolloutList(RolloutList),
    /// `rollout.audit`.
    Audit(AuditPage),
    /// `rollout.plan`.
    Plan(PlanPreview),
    /// `namespace.webhooks`.
    Webhooks(WebhookList),
}

/// Typed access to the planner: one method per command and query.
///
/// Cheap to clone; clones share the NATS connection.
///
/// ```no_run
/// use rollout_sdk::{CommandClient, Namespace};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let client = CommandClient::new(nats, Namespace::new("prod")?).with_actor("release-bot");
/// let status = client.rollout_status("r-9").await?;
/// if status.state.is_active() {
///     client.pause_rollout(&status.rollout_id).await?;
/// }
/// match client.continue_rollout("r-unknown").await {
///     Err(error) => println!("refused: {} ({})", error.code(), error.message()),
///     Ok(result) => println!("now at step {:?}", result.current_step),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CommandClient {
    nats: async_nats::Client,
    subjects: Subjects,
    namespace: Namespace,
    options: RequestOptions,
    actor: Option<String>,
}

impl CommandClient {
    /// A client for `namespace` under the default subject prefix, MessagePack-encoded,
    /// with the default timeout and retries.
    pub fn new(nats: async_nats::Client, namespace: Namespace) -> CommandClient {
        CommandClient {
            nats,
            subjects: Subjects::default(),
            namespace,
            options: RequestOptions::default(),
            actor: None,
        }
    }

    /// Uses `subjects` (a deployment with another prefix).
    #[must_use]
    pub fn with_subjects(mut self, subjects: Subjects) -> CommandClient {
        self.subjects = subjects;
        self
    }

    /// Encodes requests (and so replies) with `encoding`.
    #[must_use]
    pub fn with_encoding(mut self, encoding: Encoding) -> CommandClient {
        self.options.encoding = encoding;
        self
    }

    /// Waits `timeout` for each attempt's reply.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> CommandClient {
        self.options.timeout = timeout;
        self
    }

    /// Retries an unanswered request `retries` times (same command id).
    #[must_use]
    pub fn with_retries(mut self, retries: u32) -> CommandClient {
        self.options.retries = retries;
        self
    }

    /// Replaces every request option at once.
    #[must_use]
    pub fn with_options(mut self, options: RequestOptions) -> CommandClient {
        self.options = options;
        self
    }

    /// Records `actor` in the audit of every command that names none.
    #[must_use]
    pub fn with_actor(mut self, actor: impl Into<String>) -> CommandClient {
        self.actor = Some(actor.into());
        self
    }

    /// The namespace commands go to.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The subjects in use.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The request options in use.
    pub fn options(&self) -> &RequestOptions {
        &self.options
    }

    /// Sends any command. A command without an id gets a fresh one, so retries of this call
    /// are idempotent; give your own id to make retries across calls idempotent too.
    pub async fn send(&self, command: Command) -> Result<CommandOutcome> {
        let verb = command.verb();
        Ok(match verb {
            CommandVerb::FlagCreate
            | CommandVerb::FlagUpdate
            | CommandVerb::FlagEnable
            | CommandVerb::FlagDisable => {
                CommandOutcome::Flag(Box::new(self.command(command).await?))
            }
            CommandVerb::FlagDelete | CommandVerb::RolloutDelete => {
                CommandOutcome::Deleted(self.command(command).await?)
            }
            CommandVerb::NamespaceFreeze | CommandVerb::NamespaceUnfreeze => {
                CommandOutcome::Namespace(self.command(command).await?)
            }
            CommandVerb::WebhookPut | CommandVerb::WebhookDelete => {
                CommandOutcome::Webhooks(self.command(command).await?)
            }
            CommandVerb::RolloutCreate
            | CommandVerb::RolloutStart
            | CommandVerb::RolloutPause
            | CommandVerb::RolloutResume
            | CommandVerb::RolloutContinue
            | CommandVerb::RolloutApprove
            | CommandVerb::RolloutPromote
            | CommandVerb::RolloutStop
            | CommandVerb::RolloutReschedule
            | CommandVerb::RolloutRollback => CommandOutcome::Rollout(self.command(command).await?),
        })
    }

    /// Sends any command and returns the reply's `result` as JSON, untyped: fields a newer
    /// planner adds are kept (what `rolloutctl --json` prints).
    pub async fn send_value(&self, command: Command) -> Result<serde_json::Value> {
        self.command(command).await
    }

    /// Runs any query.
    pub async fn query(&self, query: Query) -> Result<QueryOutcome> {
        Ok(match query.kind() {
            QueryKind::FlagGet => QueryOutcome::Flag(Box::new(self.read(&query).await?)),
            QueryKind::FlagList => QueryOutcome::FlagList(self.read(&query).await?),
            QueryKind::RolloutStatus => QueryOutcome::Status(Box::new(self.read(&query).await?)),
            QueryKind::RolloutCounts => QueryOutcome::Counts(Box::new(self.read(&query).await?)),
            QueryKind::FlagCounts => QueryOutcome::FlagCounts(Box::new(self.read(&query).await?)),
            QueryKind::RolloutList => QueryOutcome::RolloutList(self.read(&query).await?),
            QueryKind::RolloutAudit => QueryOutcome::Audit(self.read(&query).await?),
            QueryKind::RolloutPlan => QueryOutcome::Plan(self.read(&query).await?),
            QueryKind::NamespaceWebhooks => QueryOutcome::Webhooks(self.read(&query).await?),
        })
    }

    /// Runs any query and returns the reply's `result` as JSON, untyped.
    pub async fn query_value(&self, query: Query) -> Result<serde_json::Value> {
        self.read(&query).await
    }

    /// `flag.create`: stores a new flag.
    pub async fn create_flag(&self, flag: Flag) -> Result<FlagResult> {
        self.command(Command::FlagCreate(FlagCreate {
            command_id: None,
            actor: None,
            flag,
        }))
        .await
    }

    /// `flag.update`: replaces a flag's definition; with `expected_version`, only if the flag
    /// is still at that version (else `conflict`).
    pub async fn update_flag(
        &self,
        flag: Flag,
        expected_version: Option<u64>,
    ) -> Result<FlagResult> {
        self.command(Command::FlagUpdate(FlagUpdate {
            command_id: None,
            actor: None,
            flag,
            expected_version,
        }))
        .await
    }

    /// `flag.enable`.
    pub async fn enable_flag(&self, key: &str) -> Result<FlagResult> {
        self.command(Command::FlagEnable(FlagToggle::new(key)))
            .await
    }

    /// `flag.disable`: also stops the flag's rollout at its current share.
    pub async fn disable_flag(&self, key: &str) -> Result<FlagResult> {
        self.command(Command::FlagDisable(FlagToggle::new(key)))
            .await
    }

    /// `flag.delete`: refused while a rollout of the flag is active.
    pub async fn delete_flag(&self, key: &str) -> Result<Deleted> {
        self.command(Command::FlagDelete(FlagDelete {
            command_id: None,
            actor: None,
            key: key.to_owned(),
        }))
        .await
    }

    /// `rollout.create`: validates, compiles and stores `spec`; the result is the plan with
    /// projected times.
    pub async fn create_rollout(&self, spec: RolloutSpec) -> Result<RolloutResult> {
        self.command(Command::RolloutCreate(RolloutCreate {
            command_id: None,
            actor: None,
            rollout: spec,
        }))
        .await
    }

    /// `rollout.start`: starts a rollout created to wait.
    pub async fn start_rollout(&self, rollout_id: &str) -> Result<RolloutResult> {
        self.command(Command::RolloutStart(RolloutAction::new(rollout_id)))
            .await
    }

    /// `rollout.pause`: freezes the current share.
    pub async fn pause_rollout(&self, rollout_id: &str) -> Result<RolloutResult> {
        self.command(Command::RolloutPause(RolloutAction::new(rollout_id)))
            .await
    }

    /// `rollout.resume`: continues a paused rollout where it stopped.
    pub async fn resume_rollout(&self, rollout_id: &str) -> Result<RolloutResult> {
        self.command(Command::RolloutResume(RolloutAction::new(rollout_id)))
            .await
    }

    /// `rollout.continue`: opens the current step's manual gate or cuts its timer short.
    pub async fn continue_rollout(&self, rollout_id: &str) -> Result<RolloutResult> {
        self.command(Command::RolloutContinue(RolloutAction::new(rollout_id)))
            .await
    }

    /// `rollout.approve`: this client's actor approves the rollout's current step (at
    /// `expected_step` when given, else wherever it is). The step's gate runs once as many
    /// distinct actors as it asks for approved it.
    pub async fn approve_rollout(
        &self,
        rollout_id: &str,
        expected_step: Option<usize>,
    ) -> Result<RolloutResult> {
        self.command(Command::RolloutApprove(RolloutAction {
            expected_step,
            ..RolloutAction::new(rollout_id)
        }))
        .await
    }

    /// `rollout.reschedule`: replaces the steps after the current one, which must be
    /// `expected_step` (phases for a percentage rollout, stages for a label-stage one).
    pub async fn reschedule_rollout(
        &self,
        rollout_id: &str,
        expected_step: usize,
        steps: Vec<RescheduleStepSpec>,
    ) -> Result<RolloutResult> {
        self.command(Command::RolloutReschedule(RolloutReschedule {
            command_id: None,
            actor: None,
            rollout_id: rollout_id.to_owned(),
            expected_step: Some(expected_step),
            steps,
        }))
        .await
    }

    /// `rollout.rollback` with `mode: "gradual"`: walks the share down `steps` (percent,
    /// strictly decreasing, the first below the share served, ending at 0), one every
    /// `every` (`5m`); the rollout is `rolling_back` until it reaches 0.
    pub async fn rollback_gradually(
        &self,
        rollout_id: &str,
        steps: Vec<f64>,
        every: &str,
    ) -> Result<RolloutResult> {
        self.command(Command::RolloutRollback(RolloutRollback::gradual(
            rollout_id, steps, every,
        )))
        .await
    }

    /// `namespace.freeze`: holds every timer and automatic gate of this client's namespace
    /// until `namespace.unfreeze` or `until` (RFC 3339); commands still act.
    pub async fn freeze_namespace(
        &self,
        reason: &str,
        until: Option<&str>,
    ) -> Result<NamespaceResult> {
        self.command(Command::NamespaceFreeze(NamespaceFreeze {
            command_id: None,
            actor: None,
            reason: reason.to_owned(),
            until: until.map(str::to_owned),
        }))
        .await
    }

    /// `namespace.unfreeze`: lifts the namespace's freeze.
    pub async fn unfreeze_namespace(&self) -> Result<NamespaceResult> {
        self.command(Command::NamespaceUnfreeze(NamespaceUnfreeze {
            command_id: None,
            actor: None,
        }))
        .await
    }

    /// `namespace.webhook.put`: adds webhook `id` (told of every event kind when `events`
    /// is empty) or replaces its address, secret and filter; replies with the namespace's
    /// webhooks.
    pub async fn put_webhook(
        &self,
        id: &str,
        url: &str,
        secret: &str,
        events: Vec<EventKind>,
    ) -> Result<WebhookList> {
        self.command(Command::WebhookPut(WebhookPut {
            command_id: None,
            actor: None,
            id: id.to_owned(),
            url: url.to_owned(),
            secret: secret.to_owned(),
            events,
        }))
        .await
    }

    /// `namespace.webhook.delete`: removes webhook `id`.
    pub async fn delete_webhook(&self, id: &str) -> Result<WebhookList> {
        self.command(Command::WebhookDelete(WebhookDelete {
            command_id: None,
            actor: None,
            id: id.to_owned(),
        }))
        .await
    }

    /// `namespace.webhooks`: the namespace's webhooks and how their deliveries go.
    pub async fn webhooks(&self) -> Result<WebhookList> {
        self.read(&Query::NamespaceWebhooks(WebhooksQuery::default()))
            .await
    }

    /// `rollout.alert.<ns>`: pauses or rolls back every active rollout of this client's
    /// namespace the alert's selector matches, once per alert id (a repeat gets the first
    /// result, `repeated`).
    pub async fn alert(&self, alert: &Alert) -> Result<AlertResult> {
        let subject = self.subjects.alert(&self.namespace);
        let trace = transport::new_traceparent();
        self.traced(&subject, alert, Some(trace.as_str())).await
    }

    /// `rollout.promote`: jumps to the final step now.
    pub async fn promote_rollout(&self, rollout_id: &str) -> Result<RolloutResult> {
        self.command(Command::RolloutPromote(RolloutAction::new(rollout_id)))
            .await
    }

    /// `rollout.stop`: ends as `stopped`, serving `percentage` (or the current share).
    pub async fn stop_rollout(
        &self,
        rollout_id: &str,
        percentage: Option<f64>,
    ) -> Result<RolloutResult> {
        self.command(Command::RolloutStop(RolloutStop {
            command_id: None,
            actor: None,
            rollout_id: rollout_id.to_owned(),
            percentage,
            expected_step: None,
        }))
        .await
    }

    /// `rollout.rollback`: ends as `rolled_back`, everyone on the baseline.
    pub async fn rollback_rollout(&self, rollout_id: &str) -> Result<RolloutResult> {
        self.command(Command::RolloutRollback(RolloutRollback::now(rollout_id)))
            .await
    }

    /// `rollout.delete`: removes the rollout; its audit stays readable.
    pub async fn delete_rollout(&self, rollout_id: &str) -> Result<Deleted> {
        self.command(Command::RolloutDelete(RolloutAction::new(rollout_id)))
            .await
    }

    /// `flag.get`: the flag as stored, with its version and active rollout.
    pub async fn get_flag(&self, key: &str) -> Result<FlagResult> {
        self.read(&Query::FlagGet(FlagGetQuery {
            key: key.to_owned(),
        }))
        .await
    }

    /// `flag.list`: one page of flag summaries, by key.
    pub async fn list_flags(&self, query: FlagListQuery) -> Result<FlagList> {
        self.read(&Query::FlagList(query)).await
    }

    /// `rollout.status`: every step with its times, gate and stage counts.
    pub async fn rollout_status(&self, rollout_id: &str) -> Result<RolloutStatus> {
        self.read(&Query::RolloutStatus(RolloutStatusQuery {
            rollout_id: rollout_id.to_owned(),
        }))
        .await
    }

    /// `rollout.counts`: the figures behind the rollout's health gates — outcomes over the
    /// guard window with the guard's verdict, and each label stage's fleet counts.
    pub async fn rollout_counts(&self, rollout_id: &str) -> Result<RolloutCounts> {
        self.read(&Query::RolloutCounts(RolloutCountsQuery {
            rollout_id: rollout_id.to_owned(),
        }))
        .await
    }

    /// `flag.counts`: the flag-level outcome counters its kill switch judges, side by side,
    /// with the kill switch's verdict.
    pub async fn flag_counts(&self, key: &str) -> Result<FlagCounts> {
        self.read(&Query::FlagCounts(FlagCountsQuery {
            key: key.to_owned(),
        }))
        .await
    }

    /// `rollout.list`: one page of active or finished rollouts, newest first.
    pub async fn list_rollouts(&self, query: RolloutListQuery) -> Result<RolloutList> {
        self.read(&Query::RolloutList(query)).await
    }

    /// `rollout.audit`: one page of a rollout's or a flag's audit, newest first.
    pub async fn audit(&self, query: AuditQuery) -> Result<AuditPage> {
        self.read(&Query::RolloutAudit(query)).await
    }

    /// `rollout.plan`: compiles `spec` against its flag and projects its times, storing
    /// nothing.
    pub async fn plan(&self, spec: RolloutSpec) -> Result<PlanPreview> {
        self.read(&Query::RolloutPlan(Box::new(PlanQuery { rollout: spec })))
            .await
    }

    /// Fills the command id and actor, then sends the body on the verb's subject.
    async fn command<R: DeserializeOwned>(&self, mut command: Command) -> Result<R> {
        if command.command_id().is_none() {
            command.set_command_id(new_command_id());
        }
        if let Some(actor) = &self.actor {
            command.set_actor_if_missing(actor);
        }
        let subject = self.subjects.cmd(&self.namespace, command.verb());
        // a trace starts here, at the edge: the audit records it whatever exports spans
        let trace = transport::new_traceparent();
        let trace = Some(trace.as_str());
        // a command serialises as its body alone: the verb travels in the subject
        self.traced(&subject, &command, trace).await
    }

    async fn traced<B: Serialize, R: DeserializeOwned>(
        &self,
        subject: &str,
        body: &B,
        traceparent: Option<&str>,
    ) -> Result<R> {
        transport::request_traced(&self.nats, &self.options, subject, body, traceparent).await
    }

    async fn read<R: DeserializeOwned>(&self, query: &Query) -> Result<R> {
        query
            .validate()
            .map_err(|error| Error::new(ErrorKind::InvalidInput, error))?;
        let subject = self.subjects.query(&self.namespace, query.kind());
        match query {
            Query::FlagGet(body) => self.request(&subject, body).await,
            Query::FlagList(body) => self.request(&subject, body).await,
            Query::RolloutStatus(body) => self.request(&subject, body).await,
            Query::RolloutCounts(body) => self.request(&subject, body).await,
            Query::FlagCounts(body) => self.request(&subject, body).await,
            Query::RolloutList(body) => self.request(&subject, body).await,
            Query::RolloutAudit(body) => self.request(&subject, body).await,
            Query::RolloutPlan(body) => self.request(&subject, body.as_ref()).await,
            Query::NamespaceWebhooks(body) => self.request(&subject, body).await,
        }
    }

    async fn request<B: Serialize, R: DeserializeOwned>(
        &self,
        subject: &str,
        body: &B,
    ) -> Result<R> {
        transport::request(&self.nats, &self.options, subject, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_fills_only_an_empty_slot() {
        let mut mine = Command::RolloutPause(RolloutAction {
            command_id: None,
            actor: Some("alice".into()),
            rollout_id: "r-1".into(),
            expected_step: None,
        });
        mine.set_actor_if_missing("bot");
        assert_eq!(mine.actor(), Some("alice"));
        let mut theirs = Command::FlagEnable(FlagToggle::new("f"));
        theirs.set_actor_if_missing("bot");
        assert_eq!(theirs.actor(), Some("bot"));
    }
}
