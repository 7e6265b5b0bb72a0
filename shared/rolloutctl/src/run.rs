//! Runs one `rolloutctl` invocation: connects to NATS with the services' settings, sends the
//! command or query through the SDK, and prints the result (a table, or the raw JSON with
//! `--json`).

use std::path::Path;

use rollout_core::{AttributeValue, DurationMs, Entity};
use rollout_runtime::config::{load_config, NatsSettings, ProcessEnv, Validate};
use rollout_runtime::connect::connect_nats;
use rollout_sdk::{CommandClient, EvalClient, Namespace, Subjects};
use rollout_wire::webhooks::{WebhookDelete, WebhookList, WebhookPut, WebhooksQuery};
use rollout_wire::EventKind;
use rollout_wire::{
    AuditPage, AuditQuery, Command, Deleted, FlagCountsQuery, FlagCreate, FlagDelete, FlagGetQuery,
    FlagList, FlagListQuery, FlagResult, FlagToggle, FlagUpdate, ListState, NamespaceFreeze,
    NamespaceResult, NamespaceUnfreeze, PlanPreview, PlanQuery, Query, RolloutAction,
    RolloutCounts, RolloutCountsQuery, RolloutCreate, RolloutList, RolloutListQuery,
    RolloutReschedule, RolloutResult, RolloutRollback, RolloutStatus, RolloutStatusQuery,
    RolloutStop,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::args::{
    Cli, ClusterCommand, EvalArgs, FlagCommand, NamespaceCommand, RolloutCommand, TopCommand,
    WebhookCommand,
};
use crate::failure::{Context, Failure};
use crate::{render, specfile, watch};
use rollout_wire::alerts::{Alert, AlertAction, AlertResult, AlertSelector};

/// The `ROLLOUT_NATS__*` settings; other sections in the environment are not ours.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CliSettings {
    nats: NatsSettings,
}

/// A connected invocation: the NATS client and how to talk to the services.
#[derive(Debug)]
pub struct Session {
    nats: async_nats::Client,
    commands: CommandClient,
    json: bool,
}

impl Session {
    /// Connects as the global options say.
    pub async fn connect(cli: &Cli) -> Result<Session, Failure> {
        let namespace = Namespace::new(cli.namespace.as_str())
            .map_err(|error| Failure::Usage(format!("--namespace: {}", error.message())))?;
        let subjects = Subjects::new(cli.subject_prefix.as_str())
            .map_err(|error| Failure::Usage(format!("--subject-prefix: {}", error.message())))?;
        let mut settings: CliSettings = load_config(None, &ProcessEnv).map_err(Failure::Config)?;
        settings.nats.url.clone_from(&cli.nats_url);
        settings.nats.subject_prefix.clone_from(&cli.subject_prefix);
        settings.nats.connect_timeout = cli.timeout;
        settings.nats.validate().map_err(Failure::Config)?;
        let nats = connect_nats(&settings.nats, "rolloutctl")
            .await
            .map_err(Failure::Connect)?;
        let actor = cli
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok().filter(|user| !user.is_empty()))
            .unwrap_or_else(|| "rolloutctl".to_owned());
        let commands = CommandClient::new(nats.clone(), namespace)
            .with_subjects(subjects)
            .with_timeout(cli.timeout)
            .with_actor(actor);
        Ok(Session {
            nats,
            commands,
            json: cli.json,
        })
    }

    /// The command client.
    pub fn commands(&self) -> &CommandClient {
        &self.commands
    }

    /// The NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Whether to print raw JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Sends `command` and prints its result with `human`.
    async fn command<T: DeserializeOwned>(
        &self,
        command: Command,
        context: &Context,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), Failure> {
        let value = self
            .commands
            .send_value(command)
            .await
            .map_err(|error| Failure::sdk(error, context))?;
        self.print(value, human)
    }

    /// Runs `query` and prints its result with `human`.
    async fn query<T: DeserializeOwned>(
        &self,
        query: Query,
        context: &Context,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), Failure> {
        let value = self
            .commands
            .query_value(query)
            .await
            .map_err(|error| Failure::sdk(error, context))?;
        self.print(value, human)
    }

    fn print<T: DeserializeOwned>(
        &self,
        value: serde_json::Value,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), Failure> {
        if self.json {
            let text = serde_json::to_string_pretty(&value)
                .map_err(|error| Failure::Internal(format!("cannot print the reply: {error}")))?;
            println!("{text}");
            return Ok(());
        }
        let typed: T = serde_json::from_value(value)
            .map_err(|error| Failure::Internal(format!("unexpected reply: {error}")))?;
        print!("{}", human(&typed));
        Ok(())
    }
}

/// Runs the invocation.
pub async fn run(cli: &Cli) -> Result<(), Failure> {
    let session = Session::connect(cli).await?;
    let outcome = match &cli.command {
        TopCommand::Flag(command) => flag(&session, command).await,
        TopCommand::Rollout(command) => rollout(&session, command).await,
        TopCommand::Eval(args) => eval(&session, args, cli).await,
        TopCommand::Namespace(command) => namespace(&session, command).await,
        TopCommand::Cluster(ClusterCommand::Status { wait }) => {
            cluster_status(&session, *wait).await
        }
    };
    if let Err(error) = session.nats.flush().await {
        tracing::debug!(%error, "final flush failed");
    }
    outcome
}

/// `cluster status`: every replica's answer to a cluster ping.
async fn cluster_status(session: &Session, wait: std::time::Duration) -> Result<(), Failure> {
    let members =
        rollout_sdk::cluster::members(session.nats(), session.commands().subjects(), wait)
            .await
            .map_err(|error| Failure::sdk(error, &Context::default()))?;
    let value = serde_json::to_value(&members)
        .map_err(|error| Failure::Internal(format!("cannot print the members: {error}")))?;
    session.print(value, |members: &Vec<rollout_wire::MemberInfo>| {
        render::cluster_status(members)
    })
}

fn flag_context(key: &str) -> Context {
    Context {
        flag: Some(key.to_owned()),
        ..Context::default()
    }
}

fn file_context(path: &Path) -> Context {
    Context {
        file: Some(path.to_owned()),
        ..Context::default()
    }
}

fn rollout_context(rollout_id: &str) -> Context {
    Context {
        rollout_id: Some(rollout_id.to_owned()),
        ..Context::default()
    }
}

async fn namespace(session: &Session, command: &NamespaceCommand) -> Result<(), Failure> {
    let context = Context::default();
    let command = match command {
        NamespaceCommand::Freeze { reason, until } => {
            let until = match until.as_deref() {
                Some(relative) if relative.starts_with('+') => {
                    let span = DurationMs::parse(&relative[1..])
                        .map_err(|message| Failure::Usage(format!("--until: {message}")))?;
                    Some(rollout_sdk::specs::local_now().plus(span).to_rfc3339())
                }
                other => other.map(str::to_owned),
            };
            Command::NamespaceFreeze(NamespaceFreeze {
                command_id: None,
                actor: None,
                reason: reason.clone(),
                until,
            })
        }
        NamespaceCommand::Unfreeze => Command::NamespaceUnfreeze(NamespaceUnfreeze {
            command_id: None,
            actor: None,
        }),
        NamespaceCommand::Alert {
            alert_id,
            flag,
            labels,
            rollout,
            action,
            reason,
        } => {
            let alert = Alert {
                alert_id: alert_id.clone(),
                selector: AlertSelector {
                    flag: flag.clone(),
                    labels: (!labels.is_empty()).then(|| labels.iter().cloned().collect()),
                    rollout_id: rollout.clone(),
                },
                action: if action == "rollback" {
                    AlertAction::Rollback
                } else {
                    AlertAction::Pause
                },
                reason: reason.clone(),
            };
            let result = session
                .commands
                .alert(&alert)
                .await
                .map_err(|error| Failure::sdk(error, &context))?;
            let value = serde_json::to_value(&result)
                .map_err(|error| Failure::Internal(format!("cannot print the reply: {error}")))?;
            return session.print(value, |result: &AlertResult| render::alert_result(result));
        }
        NamespaceCommand::Webhook(command) => return webhook(session, command).await,
        NamespaceCommand::Audit(page) => {
            let query = Query::RolloutAudit(AuditQuery {
                rollout_id: None,
                flag: None,
                namespace: true,
                page: page.page,
                page_size: None,
            });
            return session
                .query(query, &context, |page: &AuditPage| render::audit_page(page))
                .await;
        }
    };
    session
        .command(command, &context, |result: &NamespaceResult| {
            render::namespace_result(result)
        })
        .await
}

async fn webhook(session: &Session, command: &WebhookCommand) -> Result<(), Failure> {
    let context = Context::default();
    let command = match command {
        WebhookCommand::List => {
            let query = Query::NamespaceWebhooks(WebhooksQuery::default());
            return session
                .query(query, &context, |list: &WebhookList| {
                    render::webhook_list(list)
                })
                .await;
        }
        WebhookCommand::Put {
            id,
            url,
            secret_env,
            events,
        } => {
            let secret = std::env::var(secret_env).map_err(|_| {
                Failure::Usage(format!(
                    "--secret-env: set {secret_env} to the webhook's signing secret"
                ))
            })?;
            let events = events
                .iter()
                .map(|name| {
                    serde_json::from_value(serde_json::Value::String(name.clone()))
                        .map_err(|_| Failure::Usage(format!("--event: no event kind {name:?}")))
                })
                .collect::<Result<Vec<EventKind>, Failure>>()?;
            Command::WebhookPut(WebhookPut {
                command_id: None,
                actor: None,
                id: id.clone(),
                url: url.clone(),
                secret,
                events,
            })
        }
        WebhookCommand::Delete { id } => Command::WebhookDelete(WebhookDelete {
            command_id: None,
            actor: None,
            id: id.clone(),
        }),
    };
    session
        .command(command, &context, |list: &WebhookList| {
            render::webhook_list(list)
        })
        .await
}

async fn flag(session: &Session, command: &FlagCommand) -> Result<(), Failure> {
    match command {
        FlagCommand::Create(file) => {
            let flag = specfile::read_flag(&file.path)?;
            let context = Context {
                flag: Some(flag.key.clone()),
                ..file_context(&file.path)
            };
            let command = Command::FlagCreate(FlagCreate {
                command_id: None,
                actor: None,
                flag,
            });
            session
                .command(command, &context, |result: &FlagResult| {
                    render::flag_changed("created", result)
                })
                .await
        }
        FlagCommand::Update {
            file,
            expected_version,
        } => {
            let flag = specfile::read_flag(&file.path)?;
            let context = Context {
                flag: Some(flag.key.clone()),
                ..file_context(&file.path)
            };
            let command = Command::FlagUpdate(FlagUpdate {
                command_id: None,
                actor: None,
                flag,
                expected_version: *expected_version,
            });
            session
                .command(command, &context, |result: &FlagResult| {
                    render::flag_changed("updated", result)
                })
                .await
        }
        FlagCommand::Enable(key) | FlagCommand::Disable(key) => {
            let (command, verb) = match command {
                FlagCommand::Enable(_) => {
                    (Command::FlagEnable(FlagToggle::new(&key.key)), "enabled")
                }
                _ => (Command::FlagDisable(FlagToggle::new(&key.key)), "disabled"),
            };
            session
                .command(command, &flag_context(&key.key), |result: &FlagResult| {
                    render::flag_changed(verb, result)
                })
                .await
        }
        FlagCommand::Delete(key) => {
            let command = Command::FlagDelete(FlagDelete {
                command_id: None,
                actor: None,
                key: key.key.clone(),
            });
            session
                .command(command, &flag_context(&key.key), render::deleted)
                .await
        }
        FlagCommand::Counts(key) => {
            let query = Query::FlagCounts(FlagCountsQuery {
                key: key.key.clone(),
            });
            session
                .query(query, &flag_context(&key.key), render::flag_counts)
                .await
        }
        FlagCommand::Get(key) => {
            let query = Query::FlagGet(FlagGetQuery {
                key: key.key.clone(),
            });
            session
                .query(query, &flag_context(&key.key), render::flag_result)
                .await
        }
        FlagCommand::List(page) => {
            let query = Query::FlagList(FlagListQuery {
                page: page.page,
                page_size: None,
            });
            session
                .query(query, &Context::default(), |list: &FlagList| {
                    render::flag_list(list)
                })
                .await
        }
    }
}

async fn rollout(session: &Session, command: &RolloutCommand) -> Result<(), Failure> {
    let simple = |make: fn(RolloutAction) -> Command, rollout_id: &str| {
        (
            make(RolloutAction::new(rollout_id)),
            rollout_context(rollout_id),
        )
    };
    let (command, context) = match command {
        RolloutCommand::Create {
            file,
            replace_current_serve,
        } => {
            let mut spec = specfile::read_spec(&file.path, rollout_sdk::specs::local_now())?;
            spec.replace_current_serve |= *replace_current_serve;
            let context = Context {
                flag: Some(spec.flag.clone()),
                ..file_context(&file.path)
            };
            let command = Command::RolloutCreate(RolloutCreate {
                command_id: None,
                actor: None,
                rollout: spec,
            });
            return session
                .command(command, &context, |result: &RolloutResult| {
                    format!("created {}", render::rollout_result(result))
                })
                .await;
        }
        RolloutCommand::Plan {
            file,
            replace_current_serve,
        } => {
            let mut spec = specfile::read_spec(&file.path, rollout_sdk::specs::local_now())?;
            spec.replace_current_serve |= *replace_current_serve;
            let context = Context {
                flag: Some(spec.flag.clone()),
                ..file_context(&file.path)
            };
            let query = Query::RolloutPlan(Box::new(PlanQuery { rollout: spec }));
            return session
                .query(query, &context, |preview: &PlanPreview| {
                    render::plan_preview(preview)
                })
                .await;
        }
        RolloutCommand::Status(id) => {
            let query = Query::RolloutStatus(RolloutStatusQuery {
                rollout_id: id.rollout_id.clone(),
            });
            return session
                .query(
                    query,
                    &rollout_context(&id.rollout_id),
                    |status: &RolloutStatus| render::status(status),
                )
                .await;
        }
        RolloutCommand::Counts(id) => {
            let query = Query::RolloutCounts(RolloutCountsQuery {
                rollout_id: id.rollout_id.clone(),
            });
            return session
                .query(
                    query,
                    &rollout_context(&id.rollout_id),
                    |counts: &RolloutCounts| render::counts(counts),
                )
                .await;
        }
        RolloutCommand::List {
            finished,
            state,
            flag,
            page,
        } => {
            let query = Query::RolloutList(RolloutListQuery {
                state: if *finished || state.is_some_and(rollout_core::Lifecycle::is_finished) {
                    ListState::Finished
                } else {
                    ListState::Active
                },
                lifecycle: *state,
                flag: flag.clone(),
                page: page.page,
                page_size: None,
            });
            let context = Context {
                flag: flag.clone(),
                ..Context::default()
            };
            return session
                .query(query, &context, |list: &RolloutList| {
                    render::rollout_list(list)
                })
                .await;
        }
        RolloutCommand::Audit {
            rollout,
            flag,
            page,
        } => {
            let query = Query::RolloutAudit(AuditQuery {
                rollout_id: rollout.clone(),
                flag: flag.clone(),
                namespace: false,
                page: page.page,
                page_size: None,
            });
            let context = Context {
                rollout_id: rollout.clone(),
                flag: flag.clone(),
                ..Context::default()
            };
            return session
                .query(query, &context, |page: &AuditPage| render::audit_page(page))
                .await;
        }
        RolloutCommand::Watch { rollout_id, flag } => {
            return watch::watch(session, rollout_id.clone(), flag.clone()).await;
        }
        RolloutCommand::Delete(id) => {
            let command = Command::RolloutDelete(RolloutAction::new(&id.rollout_id));
            return session
                .command(
                    command,
                    &rollout_context(&id.rollout_id),
                    |deleted: &Deleted| render::deleted(deleted),
                )
                .await;
        }
        RolloutCommand::Stop { id, percentage } => (
            Command::RolloutStop(RolloutStop {
                command_id: None,
                actor: None,
                rollout_id: id.rollout_id.clone(),
                percentage: *percentage,
                expected_step: None,
            }),
            rollout_context(&id.rollout_id),
        ),
        RolloutCommand::Start(id) => simple(Command::RolloutStart, &id.rollout_id),
        RolloutCommand::Pause(id) => simple(Command::RolloutPause, &id.rollout_id),
        RolloutCommand::Resume(id) => simple(Command::RolloutResume, &id.rollout_id),
        RolloutCommand::Continue(id) => (
            Command::RolloutContinue(at_current_step(session, &id.rollout_id).await?),
            rollout_context(&id.rollout_id),
        ),
        RolloutCommand::Approve(id) => (
            Command::RolloutApprove(at_current_step(session, &id.rollout_id).await?),
            rollout_context(&id.rollout_id),
        ),
        RolloutCommand::Reschedule { id, file } => {
            let steps = specfile::read_steps(&file.path)?;
            let at = at_current_step(session, &id.rollout_id).await?;
            (
                Command::RolloutReschedule(RolloutReschedule {
                    command_id: None,
                    actor: None,
                    rollout_id: id.rollout_id.clone(),
                    expected_step: at.expected_step,
                    steps,
                }),
                rollout_context(&id.rollout_id),
            )
        }
        RolloutCommand::Promote(id) => (
            Command::RolloutPromote(at_current_step(session, &id.rollout_id).await?),
            rollout_context(&id.rollout_id),
        ),
        RolloutCommand::Rollback { id, gradual, every } => (
            Command::RolloutRollback(match (gradual, every) {
                (Some(steps), Some(every)) => {
                    RolloutRollback::gradual(&id.rollout_id, steps.clone(), every)
                }
                _ => RolloutRollback::now(&id.rollout_id),
            }),
            rollout_context(&id.rollout_id),
        ),
    };
    session
        .command(command, &context, |result: &RolloutResult| {
            render::rollout_result(result)
        })
        .await
}

/// An action on `rollout_id` expecting the step its status shows now: a move the operator
/// decided on what they saw is refused (`conflict`) if a transition moves the rollout first,
/// instead of moving it twice.
async fn at_current_step(session: &Session, rollout_id: &str) -> Result<RolloutAction, Failure> {
    let status = session
        .commands
        .rollout_status(rollout_id)
        .await
        .map_err(|error| Failure::sdk(error, &rollout_context(rollout_id)))?;
    let mut action = RolloutAction::new(rollout_id);
    action.expected_step = status.current_step;
    Ok(action)
}

async fn eval(session: &Session, args: &EvalArgs, cli: &Cli) -> Result<(), Failure> {
    let mut entity = Entity::with_id(args.entity.as_str());
    for (name, text) in &args.attributes {
        let value = serde_json::from_str::<AttributeValue>(text)
            .unwrap_or_else(|_| AttributeValue::String(text.clone()));
        entity.attributes.insert(name.clone(), value);
    }
    for (name, value) in &args.labels {
        entity.labels.insert(name.clone(), value.clone());
    }
    let context = Context {
        flag: Some(args.flag.clone()),
        service: "evaluator",
        ..Context::default()
    };
    let client = EvalClient::builder(session.nats.clone(), session.commands.namespace().clone())
        .subjects(session.commands.subjects().clone())
        .timeout(cli.timeout)
        .cache_capacity(0)
        .connect()
        .await
        .map_err(|error| Failure::sdk(error, &context))?;
    let result = if args.explain {
        client.explain(&args.flag, &entity).await
    } else {
        client.evaluate(&args.flag, &entity).await
    }
    .map_err(|error| Failure::sdk(error, &context))?;
    if session.json {
        let text = serde_json::to_string_pretty(&result)
            .map_err(|error| Failure::Internal(format!("cannot print the reply: {error}")))?;
        println!("{text}");
    } else {
        print!("{}", render::eval_result(&result));
    }
    Ok(())
}
