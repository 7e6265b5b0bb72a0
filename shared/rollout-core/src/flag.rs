//! Flags: variations, the off variation, the default serve, ordered targeting rules with
//! their conditions — the definitions an operator writes — and their validation.

use serde::{Deserialize, Serialize};

use crate::entity::{AttributeValue, Labels};
use crate::error::{names, ValidationErrors};
use crate::guard::GuardSpec;
use crate::share::Share;

/// Most variations a flag may have.
pub const MAX_VARIATIONS: usize = 64;
/// Most targeting rules a flag may have.
pub const MAX_RULES: usize = 256;
/// Most conditions in one rule.
pub const MAX_CONDITIONS: usize = 64;
/// Most values one condition may list.
pub const MAX_CONDITION_VALUES: usize = 1024;
/// Largest variation value, in bytes of its JSON form.
pub const MAX_VARIATION_VALUE_BYTES: usize = 64 * 1024;
/// Deepest nesting of a variation value (arrays and objects), so a stored flag always fits
/// the depth caps of the replies and events that carry it.
pub const MAX_VARIATION_VALUE_DEPTH: usize = 16;

/// Nesting depth of a JSON value (a scalar is 0), computed without recursion.
pub fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0_usize)];
    while let Some((current, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        match current {
            serde_json::Value::Array(items) => {
                pending.extend(items.iter().map(|item| (item, depth + 1)))
            }
            serde_json::Value::Object(fields) => {
                pending.extend(fields.values().map(|item| (item, depth + 1)))
            }
            _ => {}
        }
    }
    deepest
}

/// A feature flag as the operator defines it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    /// Unique key within the namespace; one NATS subject token.
    pub key: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Two or more variations.
    pub variations: Vec<Variation>,
    /// Served to everyone while the flag is disabled.
    pub off_variation: String,
    /// A disabled flag serves its off variation.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// What entities matching no rule get.
    pub default: Serve,
    /// Targeting rules, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// A guard condition that disables the flag when breached (SPEC §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch: Option<GuardSpec>,
    /// Metadata labels (`team: payments`) that alerts select rollouts by (SPEC §12); they
    /// do not change what anyone is served.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// Most labels one flag may carry.
pub const MAX_FLAG_LABELS: usize = 32;

fn default_enabled() -> bool {
    true
}

/// One value a flag can serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variation {
    /// Id, unique within the flag.
    pub id: String,
    /// Any JSON value (a bool, a string, a configuration object, ...).
    pub value: serde_json::Value,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What a target (the default, or a rule) serves. Exactly one of `variation`, `split` or
/// `stages` is set; `salt` and `stickiness` only go with the bucketed forms.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    /// Everyone gets this variation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation: Option<String>,
    /// A percentage split. Buckets are given out in list order: with weights 30 and 70 the
    /// buckets below 300 000 ppm get the first variation. An entity without the stickiness
    /// attribute gets the last entry's variation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<WeightedVariation>>,
    /// Label stages of which the first `released` serve `candidate`, the others `baseline`
    /// (what a stopped label-stage rollout leaves behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<StagedServe>,
    /// Bucketing salt of a split; defaults to `<flag key>/<target>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Attribute to bucket a split on instead of the entity id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
}

impl Serve {
    /// The serve in words: `on to everyone`, `a split (off 75%, on 25%)`, `label stages (1 of 3
    /// released to v2)`.
    pub fn describe(&self) -> String {
        if let Some(split) = &self.split {
            let parts: Vec<String> = split
                .iter()
                .map(|entry| format!("{} {}%", entry.variation, entry.weight))
                .collect();
            return format!("a split ({})", parts.join(", "));
        }
        if let Some(stages) = &self.stages {
            let wave = stages
                .wave
                .map(|wave| format!(" and {wave} of the next"))
                .unwrap_or_default();
            return format!(
                "label stages ({} of {} released{wave} to {})",
                stages.released,
                stages.stages.len(),
                stages.candidate
            );
        }
        match &self.variation {
            Some(variation) => format!("{variation} to everyone"),
            None => "nothing".to_owned(),
        }
    }

    /// Everyone gets `variation`.
    pub fn variation(variation: impl Into<String>) -> Serve {
        Serve {
            variation: Some(variation.into()),
            ..Serve::default()
        }
    }
}

/// One entry of a percentage split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedVariation {
    /// Variation id.
    pub variation: String,
    /// Percentage, up to four decimals; a split's weights add up to 100.
    pub weight: f64,
}

/// Label stages frozen at some release point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedServe {
    /// Served to members of released stages.
    pub candidate: String,
    /// Served to everyone else.
    pub baseline: String,
    /// Stage label sets in order; an entity belongs to the first whose labels it all has.
    /// Entities matching none belong to the implicit final `unassigned` stage.
    pub stages: Vec<Labels>,
    /// How many stages (counting `unassigned` last) serve the candidate.
    pub released: usize,
    /// The share of stage `released` its waves had released (SPEC §12): members whose
    /// bucket under `salt` is below it are served the candidate too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<Share>,
    /// The bucketing salt of `wave` (the rollout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

/// A targeting rule: when every condition holds, serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Id, unique within the flag; rule-level rollouts name it.
    pub id: String,
    /// All must match (an empty list matches everyone).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// What a matching entity gets.
    pub serve: Serve,
}

/// One condition on an entity attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Attribute name; `id` means the entity id when no attribute of that name exists.
    pub attribute: String,
    /// The comparison.
    pub op: Operator,
    /// Operands; how many depends on the operator.
    #[serde(default)]
    pub values: Vec<AttributeValue>,
}

/// Condition operators. On a list attribute every operator but `present`/`absent` matches
/// when any element matches (`not_in`: when no element is in the values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// Equal to the single value.
    Equals,
    /// Not equal to the single value.
    NotEquals,
    /// Equal to one of the values.
    In,
    /// Equal to none of the values.
    NotIn,
    /// Starts with one of the values.
    StartsWith,
    /// Ends with one of the values.
    EndsWith,
    /// Contains one of the values as a substring (string attribute) or element (list).
    Contains,
    /// Numerically greater than the single value.
    Gt,
    /// Numerically greater than or equal.
    Gte,
    /// Numerically less than.
    Lt,
    /// Numerically less than or equal.
    Lte,
    /// Semantic version equal.
    SemverEq,
    /// Semantic version greater than.
    SemverGt,
    /// Semantic version greater than or equal.
    SemverGte,
    /// Semantic version less than.
    SemverLt,
    /// Semantic version less than or equal.
    SemverLte,
    /// The attribute exists.
    Present,
    /// The attribute does not exist.
    Absent,
}

impl Flag {
    /// The position of variation `id`.
    pub fn variation_index(&self, id: &str) -> Option<usize> {
        self.variations
            .iter()
            .position(|variation| variation.id == id)
    }

    /// The rule with `id`.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.id == id)
    }

    /// Checks every field; returns all problems with paths under `path` (e.g. `flag`).
    pub fn validate(&self, path: &str) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Err(message) = names::check_token(&self.key) {
            errors.push(format!("{path}.key"), message);
        }
        if self.variations.len() < 2 {
            errors.push(
                format!("{path}.variations"),
                "a flag needs at least two variations",
            );
        }
        if self.labels.len() > MAX_FLAG_LABELS {
            errors.push(
                format!("{path}.labels"),
                format!("at most {MAX_FLAG_LABELS} labels"),
            );
        }
        for (name, value) in &self.labels {
            if let Err(message) = names::check_token(name) {
                errors.push(format!("{path}.labels.{name}"), message);
            }
            if value.is_empty() || value.len() > names::MAX_NAME_LEN {
                errors.push(
                    format!("{path}.labels.{name}"),
                    "a label value is 1..=128 characters",
                );
            }
        }
        if self.variations.len() > MAX_VARIATIONS {
            errors.push(
                format!("{path}.variations"),
                format!("a flag may have at most {MAX_VARIATIONS} variations"),
            );
        }
        for (index, variation) in self.variations.iter().enumerate() {
            let variation_path = format!("{path}.variations[{index}]");
            if let Err(message) = names::check_token(&variation.id) {
                errors.push(format!("{variation_path}.id"), message);
            }
            if self.variations[..index]
                .iter()
                .any(|earlier| earlier.id == variation.id)
            {
                errors.push(
                    format!("{variation_path}.id"),
                    format!("duplicate variation id {:?}", variation.id),
                );
            }
            let value_bytes =
                serde_json::to_vec(&variation.value).map_or(usize::MAX, |bytes| bytes.len());
            if value_bytes > MAX_VARIATION_VALUE_BYTES {
                errors.push(
                    format!("{variation_path}.value"),
                    format!("value is larger than {MAX_VARIATION_VALUE_BYTES} bytes"),
                );
            }
            if json_depth(&variation.value) > MAX_VARIATION_VALUE_DEPTH {
                errors.push(
                    format!("{variation_path}.value"),
                    format!("value nests deeper than {MAX_VARIATION_VALUE_DEPTH} levels"),
                );
            }
        }
        if self.variation_index(&self.off_variation).is_none() {
            errors.push(
                format!("{path}.off_variation"),
                format!("no variation {:?}", self.off_variation),
            );
        }
        self.validate_serve(&self.default, &format!("{path}.default"), &mut errors);
        if self.rules.len() > MAX_RULES {
            errors.push(
                format!("{path}.rules"),
                format!("a flag may have at most {MAX_RULES} rules"),
            );
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let rule_path = format!("{path}.rules[{index}]");
            if let Err(message) = names::check_token(&rule.id) {
                errors.push(format!("{rule_path}.id"), message);
            }
            if self.rules[..index]
                .iter()
                .any(|earlier| earlier.id == rule.id)
            {
                errors.push(
                    format!("{rule_path}.id"),
                    format!("duplicate rule id {:?}", rule.id),
                );
            }
            if rule.conditions.len() > MAX_CONDITIONS {
                errors.push(
                    format!("{rule_path}.conditions"),
                    format!("a rule may have at most {MAX_CONDITIONS} conditions"),
                );
            }
            for (condition_index, condition) in rule.conditions.iter().enumerate() {
                condition.validate(
                    &format!("{rule_path}.conditions[{condition_index}]"),
                    &mut errors,
                );
            }
            self.validate_serve(&rule.serve, &format!("{rule_path}.serve"), &mut errors);
        }
        if let Some(kill_switch) = &self.kill_switch {
            if let Err(guard_errors) = kill_switch.compile(&format!("{path}.kill_switch")) {
                errors.errors.extend(guard_errors.errors);
            }
            if kill_switch.action.is_some() {
                errors.push(
                    format!("{path}.kill_switch.action"),
                    "a kill switch always disables the flag: remove action (it is a rollout guard's)",
                );
            }
        }
        errors.into_result(())
    }

    fn validate_serve(&self, serve: &Serve, path: &str, errors: &mut ValidationErrors) {
        let forms = usize::from(serve.variation.is_some())
            + usize::from(serve.split.is_some())
            + usize::from(serve.stages.is_some());
        if forms != 1 {
            errors.push(
                path,
                "exactly one of variation, split or stages must be given",
            );
        }
        if let Some(variation) = &serve.variation {
            if self.variation_index(variation).is_none() {
                errors.push(
                    format!("{path}.variation"),
                    format!("no variation {variation:?}"),
                );
            }
            if serve.salt.is_some() || serve.stickiness.is_some() {
                errors.push(path, "salt and stickiness only apply to a split");
            }
        }
        if let Some(split) = &serve.split {
            self.validate_split(split, &format!("{path}.split"), errors);
        }
        if let Some(staged) = &serve.stages {
            for (field, variation) in [
                ("candidate", &staged.candidate),
                ("baseline", &staged.baseline),
            ] {
                if self.variation_index(variation).is_none() {
                    errors.push(
                        format!("{path}.stages.{field}"),
                        format!("no variation {variation:?}"),
                    );
                }
            }
            if staged.released > staged.stages.len() + 1 {
                errors.push(
                    format!("{path}.stages.released"),
                    "cannot release more stages than exist (the stages plus unassigned)",
                );
            }
            if let Some(wave) = staged.wave {
                if wave == Share::NONE || wave == Share::ALL {
                    errors.push(
                        format!("{path}.stages.wave"),
                        "a wave releases part of a stage: between 0 and 100 exclusive",
                    );
                }
                if staged.released > staged.stages.len() {
                    errors.push(
                        format!("{path}.stages.wave"),
                        "every stage is released whole: no stage is left for a wave",
                    );
                }
            }
        }
        if let Some(stickiness) = &serve.stickiness {
            if stickiness.is_empty() || stickiness.len() > names::MAX_NAME_LEN {
                errors.push(
                    format!("{path}.stickiness"),
                    "must be an attribute name of 1..=128 characters",
                );
            }
        }
    }

    fn validate_split(
        &self,
        split: &[WeightedVariation],
        path: &str,
        errors: &mut ValidationErrors,
    ) {
        if split.is_empty() {
            errors.push(path, "a split needs at least one entry");
            return;
        }
        let mut total_ppm: u64 = 0;
        for (index, entry) in split.iter().enumerate() {
            if self.variation_index(&entry.variation).is_none() {
                errors.push(
                    format!("{path}[{index}].variation"),
                    format!("no variation {:?}", entry.variation),
                );
            }
            match Share::from_percentage(entry.weight) {
                Ok(share) => total_ppm += u64::from(share.ppm()),
                Err(message) => errors.push(format!("{path}[{index}].weight"), message),
            }
        }
        if total_ppm != u64::from(Share::ALL.ppm()) && errors.is_empty() {
            errors.push(
                path,
                format!(
                    "weights add up to {}%, not 100%",
                    total_ppm as f64 / 10_000.0
                ),
            );
        }
    }
}

impl Condition {
    fn validate(&self, path: &str, errors: &mut ValidationErrors) {
        if self.attribute.is_empty() || self.attribute.len() > names::MAX_NAME_LEN {
            errors.push(
                format!("{path}.attribute"),
                "must be an attribute name of 1..=128 characters",
            );
        }
        if self.values.len() > MAX_CONDITION_VALUES {
            errors.push(
                format!("{path}.values"),
                format!("at most {MAX_CONDITION_VALUES} values"),
            );
            return;
        }
        let values_path = format!("{path}.values");
        let scalar = |value: &AttributeValue| !matches!(value, AttributeValue::List(_));
        match self.op {
            Operator::Present | Operator::Absent => {
                if !self.values.is_empty() {
                    errors.push(values_path, "present and absent take no values");
                }
            }
            Operator::Equals | Operator::NotEquals => {
                if self.values.len() != 1 || !self.values.iter().all(scalar) {
                    errors.push(
                        values_path,
                        "equals and not_equals take exactly one string, number or bool",
                    );
                }
            }
            Operator::In | Operator::NotIn => {
                if self.values.is_empty() || !self.values.iter().all(scalar) {
                    errors.push(
                        values_path,
                        "in and not_in take one or more strings, numbers or bools",
                    );
                }
            }
            Operator::StartsWith | Operator::EndsWith | Operator::Contains => {
                if self.values.is_empty()
                    || self.values.iter().any(|value| value.as_str().is_none())
                {
                    errors.push(
                        values_path,
                        "starts_with, ends_with and contains take one or more strings",
                    );
                }
            }
            Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => {
                if self.values.len() != 1 || !matches!(self.values[0], AttributeValue::Number(_)) {
                    errors.push(values_path, "numeric comparisons take exactly one number");
                }
            }
            Operator::SemverEq
            | Operator::SemverGt
            | Operator::SemverGte
            | Operator::SemverLt
            | Operator::SemverLte => {
                let valid = self.values.len() == 1
                    && self.values[0]
                        .as_str()
                        .is_some_and(|text| crate::eval::parse_semver(text).is_some());
                if !valid {
                    errors.push(
                        values_path,
                        "semver comparisons take exactly one version like 1.2.3",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A two-variation boolean flag with one beta rule, as in SPEC §8.6.
    pub(crate) fn checkout_flag() -> Flag {
        serde_json::from_str(
            r#"{"key": "new-checkout", "variations": [
                 {"id": "off", "value": false}, {"id": "on", "value": true}],
                "off_variation": "off", "enabled": true, "default": {"variation": "off"},
                "rules": [{"id": "beta", "conditions": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
                           "serve": {"variation": "on"}}]}"#,
        )
        .expect("spec example parses")
    }

    #[test]
    fn the_spec_example_flag_is_valid() {
        assert_eq!(checkout_flag().validate("flag"), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut flag = checkout_flag();
        flag.key = "bad.key".into();
        flag.off_variation = "missing".into();
        flag.variations[1].id = "off".into();
        flag.rules[0].conditions[0].op = Operator::Gt;
        flag.default = Serve::default();
        let errors = flag.validate("flag").expect_err("invalid");
        for field in [
            "flag.key",
            "flag.off_variation",
            "flag.variations[1].id",
            "flag.rules[0].conditions[0].values",
            "flag.default",
        ] {
            assert!(errors.has_field(field), "missing {field} in {errors}");
        }
    }

    #[test]
    fn variation_values_have_a_depth_cap() {
        let mut flag = checkout_flag();
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_VARIATION_VALUE_DEPTH {
            deep = serde_json::json!([deep]);
        }
        assert_eq!(json_depth(&deep), MAX_VARIATION_VALUE_DEPTH);
        flag.variations[1].value = deep.clone();
        assert_eq!(flag.validate("flag"), Ok(()));
        flag.variations[1].value = serde_json::json!({ "nested": deep });
        let errors = flag.validate("flag").expect_err("too deep");
        assert!(errors.has_field("flag.variations[1].value"), "{errors}");
    }

    #[test]
    fn a_flag_needs_two_variations() {
        let mut flag = checkout_flag();
        flag.variations.truncate(1);
        flag.default = Serve::variation("off");
        flag.rules.clear();
        let errors = flag.validate("flag").expect_err("one variation");
        assert!(errors.has_field("flag.variations"));
    }

    #[test]
    fn split_weights_must_add_up_to_one_hundred() {
        let mut flag = checkout_flag();
        flag.default = Serve {
            split: Some(vec![
                WeightedVariation {
                    variation: "on".into(),
                    weight: 30.0,
                },
                WeightedVariation {
                    variation: "off".into(),
                    weight: 60.0,
                },
            ]),
            ..Serve::default()
        };
        let errors = flag.validate("flag").expect_err("90 %");
        assert!(errors.has_field("flag.default.split"));
        if let Some(split) = flag.default.split.as_mut() {
            split[1].weight = 70.0;
        }
        assert_eq!(flag.validate("flag"), Ok(()));
    }

    #[test]
    fn operators_check_their_operands() {
        let cases: &[(&str, bool)] = &[
            (r#"{"attribute":"a","op":"present"}"#, true),
            (r#"{"attribute":"a","op":"present","values":["x"]}"#, false),
            (r#"{"attribute":"a","op":"gt","values":[3]}"#, true),
            (r#"{"attribute":"a","op":"gt","values":["3"]}"#, false),
            (
                r#"{"attribute":"a","op":"semver_gte","values":["1.2.3"]}"#,
                true,
            ),
            (
                r#"{"attribute":"a","op":"semver_gte","values":["one"]}"#,
                false,
            ),
            (r#"{"attribute":"a","op":"in","values":[]}"#, false),
            (
                r#"{"attribute":"a","op":"starts_with","values":[1]}"#,
                false,
            ),
            (
                r#"{"attribute":"a","op":"equals","values":["x","y"]}"#,
                false,
            ),
        ];
        for (json, valid) in cases {
            let condition: Condition = serde_json::from_str(json).expect("parses");
            let mut errors = ValidationErrors::default();
            condition.validate("c", &mut errors);
            assert_eq!(errors.is_empty(), *valid, "{json}: {errors}");
        }
    }
}
