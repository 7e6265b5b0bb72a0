//! A new rollout starts from what its target serves now (SPEC §11.1, "No silent change of
//! what users get").
//!
//! - The target serves the rollout's baseline to everyone: the rollout starts as written.
//! - The target serves a split of candidate then baseline, as an earlier rollout that was
//!   stopped leaves behind: the rollout continues it — same salt and stickiness, so the
//!   same entities are in the cohort, and no step serves less than the current share, so
//!   nobody who has the candidate loses it.
//! - Anything else (the candidate to everyone, another variation, a split of other
//!   variations or in another order, frozen label stages, a staged rollout over a split, a
//!   spec whose salt or stickiness would pick another cohort) would change what users get
//!   without anyone asking: refused, unless the spec says `replace_current_serve: true`.

use crate::flag::Flag;
use crate::plan::{Audience, Plan};
use crate::share::Share;
use crate::spec::RolloutSpec;

/// How a new rollout relates to its target's current serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Continuation {
    /// Start as written: the target serves the baseline, or the spec replaces the serve.
    Fresh,
    /// Continue a split: bucket with this salt and stickiness, never below `floor`.
    Split {
        /// The split's salt (its default when it names none).
        salt: String,
        /// The split's stickiness attribute.
        stickiness: Option<String>,
        /// The share the split gives the candidate now.
        floor: Share,
    },
}

/// Why a rollout cannot start from its target's current serve; `current` describes it
/// for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeMismatch {
    /// The target's current serve, in words.
    pub current: String,
    /// What about it the rollout cannot continue.
    pub reason: String,
}

impl std::fmt::Display for ServeMismatch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "the target serves {} now; {} (set replace_current_serve: true to replace it)",
            self.current, self.reason
        )
    }
}

/// Decides how `spec` starts on `flag` (validated: its rule and variations exist).
pub fn continuation(spec: &RolloutSpec, flag: &Flag) -> Result<Continuation, ServeMismatch> {
    if spec.replace_current_serve {
        return Ok(Continuation::Fresh);
    }
    let (serve, default_salt) = match &spec.rule {
        None => (&flag.default, format!("{}/default", flag.key)),
        Some(rule_id) => match flag.rule(rule_id) {
            Some(rule) => (&rule.serve, format!("{}/rule/{rule_id}", flag.key)),
            // an unknown rule is compile's error to report
            None => return Ok(Continuation::Fresh),
        },
    };
    let current = serve.describe();
    let mismatch = |reason: String| ServeMismatch {
        current: current.clone(),
        reason,
    };
    if serve.split.is_none() && serve.stages.is_none() {
        return match &serve.variation {
            Some(variation) if *variation == spec.baseline => Ok(Continuation::Fresh),
            _ => Err(mismatch(format!(
                "a rollout from {} would change what everyone on it gets at once",
                spec.baseline
            ))),
        };
    }
    let Some(split) = &serve.split else {
        return Err(mismatch(
            "frozen label stages cannot be continued by a new rollout".to_owned(),
        ));
    };
    let [first, second] = split.as_slice() else {
        return Err(mismatch(
            "only a split of candidate then baseline can be continued".to_owned(),
        ));
    };
    if first.variation != spec.candidate || second.variation != spec.baseline {
        return Err(mismatch(format!(
            "only a split of {} then {} can be continued by this rollout",
            spec.candidate, spec.baseline
        )));
    }
    if spec.stages.is_some() {
        return Err(mismatch(
            "a label-stage rollout cannot continue a percentage split".to_owned(),
        ));
    }
    let salt = serve.salt.clone().unwrap_or(default_salt);
    if spec.salt.as_ref().is_some_and(|given| *given != salt) {
        return Err(mismatch(format!(
            "salt {:?} would pick another cohort than the split's {salt:?}",
            spec.salt.as_deref().unwrap_or_default()
        )));
    }
    if spec.stickiness.is_some() && spec.stickiness != serve.stickiness {
        return Err(mismatch(
            "its stickiness differs from the split's, so it would pick another cohort".to_owned(),
        ));
    }
    let floor = Share::from_percentage(first.weight).map_err(mismatch)?;
    Ok(Continuation::Split {
        salt,
        stickiness: serve.stickiness.clone(),
        floor,
    })
}

impl Continuation {
    /// The spec to compile: a continued split's salt and stickiness filled in.
    pub fn apply_to_spec(&self, spec: &RolloutSpec) -> RolloutSpec {
        let mut spec = spec.clone();
        if let Continuation::Split {
            salt, stickiness, ..
        } = self
        {
            spec.salt = Some(salt.clone());
            spec.stickiness.clone_from(stickiness);
        }
        spec
    }

    /// The compiled plan with no share step below a continued split's share.
    pub fn apply_to_plan(&self, mut plan: Plan) -> Plan {
        if let Continuation::Split { floor, .. } = self {
            for step in &mut plan.steps {
                if let Audience::Share(share) = &mut step.audience {
                    *share = (*share).max(*floor);
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{compile, CompileContext};
    use crate::time::{DurationMs, Timestamp};
    use serde_json::json;

    fn flag(default: serde_json::Value) -> Flag {
        serde_json::from_value(json!({"key": "checkout",
            "variations": [{"id": "off", "value": false}, {"id": "on", "value": true},
                           {"id": "beta", "value": true}],
            "off_variation": "off", "enabled": true, "default": default, "rules": []}))
        .expect("flag")
    }

    fn spec(extra: serde_json::Value) -> RolloutSpec {
        let mut base = json!({"flag": "checkout", "baseline": "off", "candidate": "on",
            "phases": [{"percentage": 10, "duration": "1m"}, {"percentage": 50, "duration": "1m"},
                       {"percentage": 100}]});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).expect("spec")
    }

    fn split(candidate_weight: f64, salt: Option<&str>) -> serde_json::Value {
        json!({"split": [{"variation": "on", "weight": candidate_weight},
                         {"variation": "off", "weight": 100.0 - candidate_weight}],
               "salt": salt})
    }

    #[test]
    fn a_target_serving_the_baseline_starts_fresh() {
        let flag = flag(json!({"variation": "off"}));
        assert_eq!(
            continuation(&spec(json!({})), &flag),
            Ok(Continuation::Fresh)
        );
    }

    #[test]
    fn a_split_left_by_a_stopped_rollout_is_continued_with_its_salt_and_floor() {
        let flag = flag(split(40.0, Some("s-1")));
        let found = continuation(&spec(json!({})), &flag).expect("continues");
        assert_eq!(
            found,
            Continuation::Split {
                salt: "s-1".into(),
                stickiness: None,
                floor: Share::from_percentage(40.0).expect("share"),
            }
        );
        let spec = found.apply_to_spec(&spec(json!({})));
        assert_eq!(spec.salt.as_deref(), Some("s-1"));
        let context = CompileContext {
            now: Timestamp::from_millis(1_000_000),
            min_phase_interval: DurationMs::from_minutes(5),
            fresh_salt: "fresh",
        };
        let plan = found.apply_to_plan(compile(&spec, &flag, &context).expect("compiles"));
        let shares: Vec<f64> = (0..plan.steps.len())
            .map(|index| plan.share_at(index).percentage())
            .collect();
        assert_eq!(
            shares,
            vec![40.0, 50.0, 100.0],
            "no step below the current share"
        );
        assert_eq!(plan.salt, "s-1");
    }

    #[test]
    fn a_split_without_a_salt_is_continued_with_the_default_salt() {
        let flag = flag(split(25.0, None));
        let Ok(Continuation::Split { salt, .. }) = continuation(&spec(json!({})), &flag) else {
            panic!("continues")
        };
        assert_eq!(salt, "checkout/default");
    }

    #[test]
    fn anything_else_is_refused_unless_replaced() {
        let cases = [
            (
                flag(json!({"variation": "on"})),
                spec(json!({})),
                "on to everyone",
            ),
            (
                flag(json!({"variation": "beta"})),
                spec(json!({})),
                "beta to everyone",
            ),
            (
                flag(json!({"split": [{"variation": "off", "weight": 60.0},
                                      {"variation": "on", "weight": 40.0}]})),
                spec(json!({})),
                "a split (off 60%, on 40%)",
            ),
            (
                flag(split(40.0, Some("s-1"))),
                spec(json!({"salt": "other"})),
                "a split (on 40%, off 60%)",
            ),
            (
                flag(split(40.0, Some("s-1"))),
                spec(
                    json!({"phases": null, "stages": [{"name": "canary", "labels": {"env": "staging"}}]}),
                ),
                "a split (on 40%, off 60%)",
            ),
        ];
        for (flag, spec, current) in cases {
            let refusal = continuation(&spec, &flag).expect_err("refused");
            assert_eq!(refusal.current, current);
            assert!(refusal.to_string().contains("replace_current_serve"));
            let mut replacing = spec.clone();
            replacing.replace_current_serve = true;
            assert_eq!(continuation(&replacing, &flag), Ok(Continuation::Fresh));
        }
    }
}
