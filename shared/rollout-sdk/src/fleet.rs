//! [`FleetAgent`]: one fleet machine's side of `rollout.fleet.<ns>.<verb>` (SPEC §3.4) —
//! register with labels, heartbeat, ask which variation to run, report it applied or
//! failed — answered by any evaluator replica.
//!
//! The evaluators forget an agent only if Redis lost it; the agent then gets `not_found`
//! on `agent_id`. [`FleetAgent`] answers that by registering again with the labels it was
//! built with and repeating the call once, so a long-running agent needs no recovery code
//! of its own.

use rollout_core::{Attributes, Labels};
use rollout_wire::fleet::{
    AgentAck, AgentHeartbeat, AgentRegister, AgentReport, Desired, DesiredQuery, ReportStatus,
};
use rollout_wire::subjects::FleetVerb;
use rollout_wire::{ErrorCode, Namespace, Subjects};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{self, RequestOptions};

/// One fleet agent, identified by `agent_id` and placed in label stages by its labels.
///
/// Cheap to clone; clones share the NATS connection.
///
/// ```no_run
/// use rollout_sdk::{FleetAgent, Namespace};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let labels = [("env".to_owned(), "prod".to_owned()), ("region".to_owned(), "eu".to_owned())];
/// let agent = FleetAgent::new(nats, Namespace::new("prod")?, "edge-17", labels.into());
/// agent.register().await?;
/// let desired = agent.desired("agent-version").await?;
/// println!("run {} ({})", desired.variation, desired.value);
/// // ... install it, then say how it went:
/// agent.report_applied(&desired).await?;
/// agent.heartbeat().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct FleetAgent {
    nats: async_nats::Client,
    subjects: Subjects,
    namespace: Namespace,
    options: RequestOptions,
    registration: AgentRegister,
}

impl FleetAgent {
    /// An agent `agent_id` with `labels` in `namespace`, on the default subjects and
    /// request options. Nothing is sent until [`register`](Self::register) or another call.
    pub fn new(
        nats: async_nats::Client,
        namespace: Namespace,
        agent_id: impl Into<String>,
        labels: Labels,
    ) -> FleetAgent {
        FleetAgent {
            nats,
            subjects: Subjects::default(),
            namespace,
            options: RequestOptions::default(),
            registration: AgentRegister {
                agent_id: agent_id.into(),
                labels,
                attributes: Attributes::new(),
            },
        }
    }

    /// Targeting attributes the agent is evaluated with, besides its labels.
    pub fn with_attributes(mut self, attributes: Attributes) -> FleetAgent {
        self.registration.attributes = attributes;
        self
    }

    /// Subjects under a prefix other than `rollout`.
    pub fn with_subjects(mut self, subjects: Subjects) -> FleetAgent {
        self.subjects = subjects;
        self
    }

    /// Encoding, timeout and retries of every call.
    pub fn with_options(mut self, options: RequestOptions) -> FleetAgent {
        self.options = options;
        self
    }

    /// The agent id.
    pub fn id(&self) -> &str {
        &self.registration.agent_id
    }

    /// The labels it registers with.
    pub fn labels(&self) -> &Labels {
        &self.registration.labels
    }

    /// Registers (or registers again, replacing the stored labels and attributes). The
    /// agent joins its label stage at once, also in the middle of a rollout.
    pub async fn register(&self) -> Result<()> {
        let _: AgentAck = self.call(FleetVerb::Register, &self.registration).await?;
        Ok(())
    }

    /// Tells the evaluators the agent is alive; agents that stop doing so (and stop asking
    /// [`desired`](Self::desired)) are counted `stale` in their stage.
    pub async fn heartbeat(&self) -> Result<()> {
        let beat = AgentHeartbeat {
            agent_id: self.registration.agent_id.clone(),
        };
        let _: AgentAck = self.call_registered(FleetVerb::Heartbeat, &beat).await?;
        Ok(())
    }

    /// Which variation of `flag` this agent should run, given the stages released so far.
    pub async fn desired(&self, flag: &str) -> Result<Desired> {
        let query = DesiredQuery {
            agent_id: self.registration.agent_id.clone(),
            flag: flag.to_owned(),
        };
        self.call_registered(FleetVerb::Desired, &query).await
    }

    /// Reports that the agent runs `desired`'s variation: it counts as `completed` in its
    /// stage. The report names the rollout that decided, when one did.
    pub async fn report_applied(&self, desired: &Desired) -> Result<()> {
        self.report(desired, ReportStatus::Applied, None).await
    }

    /// Reports that the agent could not apply `desired`'s variation: it counts as an error
    /// in its stage, which a completion gate may hold the rollout on.
    pub async fn report_failed(&self, desired: &Desired, message: impl Into<String>) -> Result<()> {
        self.report(desired, ReportStatus::Failed, Some(message.into()))
            .await
    }

    async fn report(
        &self,
        desired: &Desired,
        status: ReportStatus,
        message: Option<String>,
    ) -> Result<()> {
        let report = AgentReport {
            agent_id: self.registration.agent_id.clone(),
            flag: desired.flag.clone(),
            rollout_id: desired.rollout_id.clone(),
            variation: desired.variation.clone(),
            status,
            message,
        };
        let _: AgentAck = self.call_registered(FleetVerb::Report, &report).await?;
        Ok(())
    }

    /// `call`, registering again and repeating the call once when the evaluators no longer
    /// know this agent.
    async fn call_registered<B, R>(&self, verb: FleetVerb, body: &B) -> Result<R>
    where
        B: Serialize,
        R: DeserializeOwned,
    {
        match self.call(verb, body).await {
            Err(error) if is_unknown_agent(&error) => {
                tracing::debug!(agent = %self.registration.agent_id, %verb, "agent unknown; registering again");
                self.register().await?;
                self.call(verb, body).await
            }
            other => other,
        }
    }

    async fn call<B, R>(&self, verb: FleetVerb, body: &B) -> Result<R>
    where
        B: Serialize,
        R: DeserializeOwned,
    {
        let subject = self.subjects.fleet(&self.namespace, verb);
        transport::request(&self.nats, &self.options, &subject, body).await
    }
}

/// Whether an error is the evaluators saying they do not know the agent.
pub fn is_unknown_agent(error: &Error) -> bool {
    error.kind() == ErrorKind::Refused
        && error.code() == ErrorCode::NotFound
        && error.field() == Some("agent_id")
}
