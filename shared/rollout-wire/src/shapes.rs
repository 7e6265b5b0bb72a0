//! The documented message shapes (SPEC §8.2): one JSON example per message type, kept as
//! files in `shapes/`, shown in each type's doc comment, listed here, and decoded by the
//! tests in both encodings so that documentation and code cannot drift apart.

/// One documented example: the Rust type it decodes as, where it travels, and the JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Name of the type in this crate (`FlagCreate`, `Reply<RolloutResult>`).
    pub type_name: &'static str,
    /// Where it travels, e.g. `rollout.cmd.<ns>.flag.create` or `reply to ...`.
    pub travels: &'static str,
    /// The example, as JSON (the MessagePack form has the same fields).
    pub json: &'static str,
}

macro_rules! shape {
    ($type_name:literal, $travels:literal, $file:literal) => {
        Shape {
            type_name: $type_name,
            travels: $travels,
            json: shape_json!($file),
        }
    };
}

/// Every documented example.
pub const SHAPES: &[Shape] = &[
    shape!("FlagCreate", "rollout.cmd.<ns>.flag.create", "flag_create"),
    shape!("FlagUpdate", "rollout.cmd.<ns>.flag.update", "flag_update"),
    shape!(
        "FlagToggle",
        "rollout.cmd.<ns>.flag.enable | flag.disable",
        "flag_toggle"
    ),
    shape!("FlagDelete", "rollout.cmd.<ns>.flag.delete", "flag_delete"),
    shape!(
        "RolloutCreate",
        "rollout.cmd.<ns>.rollout.create (phases)",
        "rollout_create"
    ),
    shape!(
        "RolloutCreate",
        "rollout.cmd.<ns>.rollout.create (preset)",
        "rollout_create_preset"
    ),
    shape!(
        "RolloutCreate",
        "rollout.cmd.<ns>.rollout.create (manual)",
        "rollout_create_manual"
    ),
    shape!(
        "RolloutCreate",
        "rollout.cmd.<ns>.rollout.create (template)",
        "rollout_create_template"
    ),
    shape!(
        "RolloutCreate",
        "rollout.cmd.<ns>.rollout.create (stages)",
        "rollout_create_stages"
    ),
    shape!(
        "RolloutAction",
        "rollout.cmd.<ns>.rollout.start | pause | resume | continue | approve | promote | rollback | delete",
        "rollout_action"
    ),
    shape!(
        "RolloutRollback",
        "rollout.cmd.<ns>.rollout.rollback (gradual)",
        "rollout_rollback"
    ),
    shape!("Alert", "rollout.alert.<ns>", "alert"),
    shape!("AlertResult", "reply to rollout.alert.<ns>", "alert_result"),
    shape!(
        "NamespaceFreeze",
        "rollout.cmd.<ns>.namespace.freeze",
        "namespace_freeze"
    ),
    shape!(
        "NamespaceResult",
        "reply to namespace.freeze and namespace.unfreeze",
        "namespace_result"
    ),
    shape!(
        "WebhookPut",
        "rollout.cmd.<ns>.namespace.webhook.put",
        "webhook_put"
    ),
    shape!(
        "WebhookList",
        "reply to namespace.webhook.put, namespace.webhook.delete and the namespace.webhooks query",
        "webhook_list"
    ),
    shape!(
        "Notification",
        "POST to a namespace's webhooks (JSON, signed)",
        "notification"
    ),
    shape!(
        "RolloutAction",
        "rollout.cmd.<ns>.rollout.rollback (now: the action body)",
        "rollout_action"
    ),
    shape!(
        "RolloutStop",
        "rollout.cmd.<ns>.rollout.stop",
        "rollout_stop"
    ),
    shape!(
        "RolloutReschedule",
        "rollout.cmd.<ns>.rollout.reschedule",
        "rollout_reschedule"
    ),
    shape!(
        "FlagResult",
        "reply to flag commands and flag.get",
        "flag_result"
    ),
    shape!(
        "RolloutResult",
        "reply to rollout commands",
        "rollout_result"
    ),
    shape!(
        "Deleted",
        "reply to flag.delete and rollout.delete",
        "deleted"
    ),
    shape!(
        "FlagGetQuery",
        "rollout.query.<ns>.flag.get",
        "flag_get_query"
    ),
    shape!(
        "FlagListQuery",
        "rollout.query.<ns>.flag.list",
        "flag_list_query"
    ),
    shape!("FlagList", "reply to flag.list", "flag_list"),
    shape!(
        "RolloutStatusQuery",
        "rollout.query.<ns>.rollout.status",
        "rollout_status_query"
    ),
    shape!("RolloutStatus", "reply to rollout.status", "rollout_status"),
    shape!(
        "RolloutCountsQuery",
        "rollout.query.<ns>.rollout.counts",
        "rollout_counts_query"
    ),
    shape!("RolloutCounts", "reply to rollout.counts", "rollout_counts"),
    shape!(
        "FlagCountsQuery",
        "rollout.query.<ns>.flag.counts",
        "flag_counts_query"
    ),
    shape!("FlagCounts", "reply to flag.counts", "flag_counts"),
    shape!(
        "RolloutListQuery",
        "rollout.query.<ns>.rollout.list",
        "rollout_list_query"
    ),
    shape!("RolloutList", "reply to rollout.list", "rollout_list"),
    shape!(
        "AuditQuery",
        "rollout.query.<ns>.rollout.audit",
        "audit_query"
    ),
    shape!("AuditPage", "reply to rollout.audit", "audit_page"),
    shape!("PlanQuery", "rollout.query.<ns>.rollout.plan", "plan_query"),
    shape!("PlanPreview", "reply to rollout.plan", "plan_preview"),
    shape!(
        "EvalRequest",
        "rollout.eval.<ns> (one flag)",
        "eval_request"
    ),
    shape!(
        "EvalRequest",
        "rollout.eval.<ns> (several flags, explained)",
        "eval_request_many"
    ),
    shape!(
        "EvalRequest",
        "rollout.eval.<ns> (all flags)",
        "eval_request_all"
    ),
    shape!(
        "EvalResult",
        "reply to a one-flag evaluation",
        "eval_result"
    ),
    shape!(
        "EvalMany",
        "reply to a several- or all-flag evaluation",
        "eval_many"
    ),
    shape!(
        "AgentRegister",
        "rollout.fleet.<ns>.register",
        "agent_register"
    ),
    shape!(
        "AgentHeartbeat",
        "rollout.fleet.<ns>.heartbeat",
        "agent_heartbeat"
    ),
    shape!(
        "DesiredQuery",
        "rollout.fleet.<ns>.desired",
        "desired_query"
    ),
    shape!("Desired", "reply to desired", "desired"),
    shape!("AgentReport", "rollout.fleet.<ns>.report", "agent_report"),
    shape!(
        "AgentAck",
        "reply to register, heartbeat and report",
        "agent_ack"
    ),
    shape!(
        "OutcomeReport",
        "rollout.metrics.<ns> (one)",
        "outcome_report"
    ),
    shape!(
        "OutcomeBatch",
        "rollout.metrics.<ns> (batch)",
        "outcome_batch"
    ),
    shape!(
        "ChangeEvent",
        "rollout.events.<ns>.<flag> (a step)",
        "change_event"
    ),
    shape!(
        "ChangeEvent",
        "rollout.events.<ns>.<flag> (a deletion)",
        "change_event_deleted"
    ),
    shape!("Reply<RolloutResult>", "any reply: success", "reply_ok"),
    shape!("Reply<RolloutResult>", "any reply: failure", "reply_error"),
];

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use rollout_core::plan::{compile, CompileContext, DEFAULT_MIN_PHASE_INTERVAL};
    use rollout_core::{RolloutState, Timestamp};
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::Value;

    use super::*;
    use crate::codec::{decode, decode_with, encode, Encoding, Limits};
    use crate::*;

    /// Every number compared as f64, so `5` and `5.0` agree.
    fn same_number(left: &Value, right: &Value) -> bool {
        match (left.as_f64(), right.as_f64()) {
            (Some(left), Some(right)) => (left - right).abs() < 1e-9,
            _ => false,
        }
    }

    /// Every key of the example is in the re-encoded form with the same value (a `null` in
    /// the example may be left out), so a misspelt field in an example fails.
    fn assert_covered(example: &Value, encoded: &Value, path: &str) {
        match (example, encoded) {
            (Value::Object(example_map), Value::Object(encoded_map)) => {
                for (key, example_value) in example_map {
                    let field_path = format!("{path}.{key}");
                    match encoded_map.get(key) {
                        Some(encoded_value) => {
                            assert_covered(example_value, encoded_value, &field_path)
                        }
                        None => assert!(
                            example_value.is_null(),
                            "{field_path} is not part of the type"
                        ),
                    }
                }
            }
            (Value::Array(example_items), Value::Array(encoded_items)) => {
                assert_eq!(example_items.len(), encoded_items.len(), "{path}");
                for (index, (example_item, encoded_item)) in
                    example_items.iter().zip(encoded_items).enumerate()
                {
                    assert_covered(example_item, encoded_item, &format!("{path}[{index}]"));
                }
            }
            (Value::Number(_), Value::Number(_)) => {
                assert!(
                    same_number(example, encoded),
                    "{path}: {example} != {encoded}"
                );
            }
            _ => assert_eq!(example, encoded, "{path}"),
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(shape: &Shape) {
        let name = shape.type_name;
        let from_json: T = decode_with(
            shape.json.as_bytes(),
            Encoding::Json,
            Limits::SERVICE_OUTPUT,
        )
        .unwrap_or_else(|error| panic!("{name} example does not decode: {error}"));

        let packed = encode(&from_json, Encoding::MessagePack).expect("encodes as msgpack");
        let from_pack: T = decode_with(&packed, Encoding::MessagePack, Limits::SERVICE_OUTPUT)
            .unwrap_or_else(|error| panic!("{name} msgpack does not decode: {error}"));
        assert_eq!(from_pack, from_json, "{name}: msgpack round trip");

        let json = encode(&from_json, Encoding::Json).expect("encodes as json");
        let again: T =
            decode(&json, Encoding::Json).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(again, from_json, "{name}: json round trip");

        // both encodings carry the same fields with the same values
        let pack_value: Value = rmp_serde::from_slice(&packed).expect("msgpack as value");
        let json_value: Value = serde_json::from_slice(&json).expect("json as value");
        assert_covered(&json_value, &pack_value, name);
        assert_covered(&pack_value, &json_value, name);

        let example: Value = serde_json::from_str(shape.json).expect("example is json");
        assert_covered(&example, &json_value, name);
    }

    fn check(shape: &Shape) {
        match shape.type_name {
            "FlagCreate" => round_trip::<FlagCreate>(shape),
            "FlagUpdate" => round_trip::<FlagUpdate>(shape),
            "FlagToggle" => round_trip::<FlagToggle>(shape),
            "FlagDelete" => round_trip::<FlagDelete>(shape),
            "RolloutCreate" => round_trip::<RolloutCreate>(shape),
            "RolloutAction" => round_trip::<RolloutAction>(shape),
            "RolloutStop" => round_trip::<RolloutStop>(shape),
            "RolloutReschedule" => round_trip::<RolloutReschedule>(shape),
            "RolloutRollback" => round_trip::<RolloutRollback>(shape),
            "NamespaceFreeze" => round_trip::<NamespaceFreeze>(shape),
            "Alert" => round_trip::<crate::alerts::Alert>(shape),
            "AlertResult" => round_trip::<crate::alerts::AlertResult>(shape),
            "NamespaceResult" => round_trip::<NamespaceResult>(shape),
            "WebhookPut" => round_trip::<crate::webhooks::WebhookPut>(shape),
            "WebhookList" => round_trip::<crate::webhooks::WebhookList>(shape),
            "Notification" => round_trip::<crate::webhooks::Notification>(shape),
            "FlagResult" => round_trip::<FlagResult>(shape),
            "RolloutResult" => round_trip::<RolloutResult>(shape),
            "Deleted" => round_trip::<Deleted>(shape),
            "FlagGetQuery" => round_trip::<FlagGetQuery>(shape),
            "FlagListQuery" => round_trip::<FlagListQuery>(shape),
            "FlagList" => round_trip::<FlagList>(shape),
            "RolloutStatusQuery" => round_trip::<RolloutStatusQuery>(shape),
            "RolloutStatus" => round_trip::<RolloutStatus>(shape),
            "RolloutCountsQuery" => round_trip::<RolloutCountsQuery>(shape),
            "RolloutCounts" => round_trip::<RolloutCounts>(shape),
            "FlagCountsQuery" => round_trip::<FlagCountsQuery>(shape),
            "FlagCounts" => round_trip::<FlagCounts>(shape),
            "RolloutListQuery" => round_trip::<RolloutListQuery>(shape),
            "RolloutList" => round_trip::<RolloutList>(shape),
            "AuditQuery" => round_trip::<AuditQuery>(shape),
            "AuditPage" => round_trip::<AuditPage>(shape),
            "PlanQuery" => round_trip::<PlanQuery>(shape),
            "PlanPreview" => round_trip::<PlanPreview>(shape),
            "EvalRequest" => round_trip::<EvalRequest>(shape),
            "EvalResult" => round_trip::<EvalResult>(shape),
            "EvalMany" => round_trip::<EvalMany>(shape),
            "AgentRegister" => round_trip::<AgentRegister>(shape),
            "AgentHeartbeat" => round_trip::<AgentHeartbeat>(shape),
            "DesiredQuery" => round_trip::<DesiredQuery>(shape),
            "Desired" => round_trip::<Desired>(shape),
            "AgentReport" => round_trip::<AgentReport>(shape),
            "AgentAck" => round_trip::<AgentAck>(shape),
            "OutcomeReport" => round_trip::<OutcomeReport>(shape),
            "OutcomeBatch" => round_trip::<OutcomeBatch>(shape),
            "ChangeEvent" => round_trip::<ChangeEvent>(shape),
            "Reply<RolloutResult>" => round_trip::<Reply<RolloutResult>>(shape),
            other => panic!("no round trip for shape type {other}"),
        }
    }

    #[test]
    fn every_documented_shape_round_trips_in_both_encodings() {
        for shape in SHAPES {
            check(shape);
        }
    }

    #[test]
    fn every_message_type_is_documented() {
        let documented: Vec<&str> = SHAPES.iter().map(|shape| shape.type_name).collect();
        for type_name in [
            "FlagCreate",
            "FlagUpdate",
            "FlagToggle",
            "FlagDelete",
            "RolloutCreate",
            "RolloutAction",
            "RolloutStop",
            "RolloutReschedule",
            "RolloutRollback",
            "NamespaceFreeze",
            "NamespaceResult",
            "WebhookPut",
            "WebhookList",
            "Notification",
            "Alert",
            "AlertResult",
            "FlagResult",
            "RolloutResult",
            "Deleted",
            "FlagGetQuery",
            "FlagListQuery",
            "FlagList",
            "RolloutStatusQuery",
            "RolloutStatus",
            "RolloutCountsQuery",
            "RolloutCounts",
            "FlagCountsQuery",
            "FlagCounts",
            "RolloutListQuery",
            "RolloutList",
            "AuditQuery",
            "AuditPage",
            "PlanQuery",
            "PlanPreview",
            "EvalRequest",
            "EvalResult",
            "EvalMany",
            "AgentRegister",
            "AgentHeartbeat",
            "DesiredQuery",
            "Desired",
            "AgentReport",
            "AgentAck",
            "OutcomeReport",
            "OutcomeBatch",
            "ChangeEvent",
            "Reply<RolloutResult>",
        ] {
            assert!(
                documented.contains(&type_name),
                "{type_name} has no documented example"
            );
        }
    }

    #[test]
    fn request_examples_pass_validation() {
        for shape in SHAPES {
            let bytes = shape.json.as_bytes();
            let outcome = match shape.type_name {
                "FlagCreate" => Command::decode(CommandVerb::FlagCreate, bytes, Encoding::Json)
                    .map(|c| c.validate()),
                "FlagUpdate" => Command::decode(CommandVerb::FlagUpdate, bytes, Encoding::Json)
                    .map(|c| c.validate()),
                "FlagToggle" => Command::decode(CommandVerb::FlagEnable, bytes, Encoding::Json)
                    .map(|c| c.validate()),
                "FlagDelete" => Command::decode(CommandVerb::FlagDelete, bytes, Encoding::Json)
                    .map(|c| c.validate()),
                "RolloutCreate" => {
                    Command::decode(CommandVerb::RolloutCreate, bytes, Encoding::Json)
                        .map(|c| c.validate())
                }
                "RolloutAction" => {
                    Command::decode(CommandVerb::RolloutPause, bytes, Encoding::Json)
                        .map(|c| c.validate())
                }
                "RolloutStop" => Command::decode(CommandVerb::RolloutStop, bytes, Encoding::Json)
                    .map(|c| c.validate()),
                "RolloutReschedule" => {
                    Command::decode(CommandVerb::RolloutReschedule, bytes, Encoding::Json)
                        .map(|c| c.validate())
                }
                "RolloutRollback" => {
                    Command::decode(CommandVerb::RolloutRollback, bytes, Encoding::Json)
                        .map(|c| c.validate())
                }
                "NamespaceFreeze" => {
                    Command::decode(CommandVerb::NamespaceFreeze, bytes, Encoding::Json)
                        .map(|c| c.validate())
                }
                "WebhookPut" => Command::decode(CommandVerb::WebhookPut, bytes, Encoding::Json)
                    .map(|c| c.validate()),
                "Alert" => {
                    decode_with::<crate::alerts::Alert>(bytes, Encoding::Json, Limits::REQUESTS)
                        .map(|alert| alert.validate())
                }
                "FlagGetQuery" => {
                    Query::decode(QueryKind::FlagGet, bytes, Encoding::Json).map(|q| q.validate())
                }
                "FlagListQuery" => {
                    Query::decode(QueryKind::FlagList, bytes, Encoding::Json).map(|q| q.validate())
                }
                "RolloutStatusQuery" => {
                    Query::decode(QueryKind::RolloutStatus, bytes, Encoding::Json)
                        .map(|q| q.validate())
                }
                "RolloutCountsQuery" => {
                    Query::decode(QueryKind::RolloutCounts, bytes, Encoding::Json)
                        .map(|q| q.validate())
                }
                "FlagCountsQuery" => Query::decode(QueryKind::FlagCounts, bytes, Encoding::Json)
                    .map(|q| q.validate()),
                "RolloutListQuery" => Query::decode(QueryKind::RolloutList, bytes, Encoding::Json)
                    .map(|q| q.validate()),
                "AuditQuery" => Query::decode(QueryKind::RolloutAudit, bytes, Encoding::Json)
                    .map(|q| q.validate()),
                "PlanQuery" => Query::decode(QueryKind::RolloutPlan, bytes, Encoding::Json)
                    .map(|q| q.validate()),
                "EvalRequest" => decode::<EvalRequest>(bytes, Encoding::Json).map(|r| r.validate()),
                "AgentRegister" => FleetRequest::decode(FleetVerb::Register, bytes, Encoding::Json)
                    .map(|r| r.validate()),
                "AgentHeartbeat" => {
                    FleetRequest::decode(FleetVerb::Heartbeat, bytes, Encoding::Json)
                        .map(|r| r.validate())
                }
                "DesiredQuery" => FleetRequest::decode(FleetVerb::Desired, bytes, Encoding::Json)
                    .map(|r| r.validate()),
                "AgentReport" => FleetRequest::decode(FleetVerb::Report, bytes, Encoding::Json)
                    .map(|r| r.validate()),
                "OutcomeReport" => {
                    decode::<OutcomeReport>(bytes, Encoding::Json).map(|r| r.validate())
                }
                "OutcomeBatch" => {
                    decode::<OutcomeBatch>(bytes, Encoding::Json).map(|r| r.validate())
                }
                _ => continue,
            };
            let validated = outcome
                .unwrap_or_else(|error| panic!("{} does not decode: {error}", shape.type_name));
            assert_eq!(
                validated,
                Ok(()),
                "{} example fails validation",
                shape.type_name
            );
        }
    }

    fn example<T: DeserializeOwned>(file_json: &str) -> T {
        decode_with(file_json.as_bytes(), Encoding::Json, Limits::SERVICE_OUTPUT)
            .expect("example decodes")
    }

    /// The create reply example is what the code produces for the create example.
    #[test]
    fn the_create_example_produces_the_result_example() {
        let now = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("time");
        let flag_create: FlagCreate = example(shape_json!("flag_create"));
        let create: RolloutCreate = example(shape_json!("rollout_create"));
        let context = CompileContext {
            now,
            min_phase_interval: DEFAULT_MIN_PHASE_INTERVAL,
            fresh_salt: "9f2c1e7a",
        };
        let plan = compile(&create.rollout, &flag_create.flag, &context).expect("compiles");
        let created = RolloutState::created(&plan, now);
        let result = RolloutResult::new("r-9", &plan, &created.state, now);
        let documented: RolloutResult = example(shape_json!("rollout_result"));
        assert_eq!(result, documented);
    }

    /// The plan preview example is what the code produces for the plan query example.
    #[test]
    fn the_plan_query_example_produces_the_preview_example() {
        let now = Timestamp::parse_rfc3339("2026-12-01T09:00:00Z").expect("time");
        let flag_create: FlagCreate = example(shape_json!("flag_create"));
        let query: PlanQuery = example(shape_json!("plan_query"));
        let context = CompileContext {
            now,
            min_phase_interval: DEFAULT_MIN_PHASE_INTERVAL,
            fresh_salt: "salt",
        };
        let plan = compile(&query.rollout, &flag_create.flag, &context).expect("compiles");
        let documented: PlanPreview = example(shape_json!("plan_preview"));
        assert_eq!(PlanPreview::new(&plan, now), documented);
    }

    /// The snapshot in the event example is evaluable as it stands.
    #[test]
    fn the_event_example_snapshot_evaluates() {
        let event: ChangeEvent = example(shape_json!("change_event"));
        let snapshot = event.snapshot.expect("snapshot");
        assert_eq!(snapshot.version, event.version);
        let compiled = snapshot.compile().expect("compiles");
        let evaluation = compiled.evaluate(&rollout_core::Entity::with_id("user-42"));
        assert_eq!(evaluation.rollout_id, Some("r-9"));
        assert_eq!(evaluation.step, Some(2));
    }
}
