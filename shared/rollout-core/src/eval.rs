//! Flag evaluation: a [`Flag`] (plus the view of its active rollout, if any) is compiled once
//! into a [`CompiledFlag`] whose [`CompiledFlag::evaluate`] answers "which variation does
//! this entity get, and why" without allocating.
//!
//! Order: a disabled flag serves its off variation; otherwise the first rule whose
//! conditions all hold serves, else the default serve. When the served target (the default
//! or that rule) has an active rollout, the rollout decides between baseline and candidate.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::bucket::BucketSeed;
use crate::entity::{AttributeValue, Entity, Labels};
use crate::error::ValidationErrors;
use crate::flag::{Condition, Flag, Operator, Serve};
use crate::plan::{stage_of, Target};
use crate::share::Share;

/// Why an entity got its variation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The flag is disabled: off variation.
    Disabled,
    /// A targeting rule matched and serves a fixed variation.
    RuleMatch,
    /// No rule matched; the default serve is a fixed variation.
    Default,
    /// A percentage split decided.
    Split,
    /// A frozen label-stage serve decided.
    Stage,
    /// An active rollout decided (the variation says which side).
    Rollout,
    /// An active rollout buckets on an attribute the entity lacks: baseline.
    StickinessMissing,
}

/// The answer for one entity. Borrowed from the compiled flag; no allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation<'a> {
    /// Variation id.
    pub variation: &'a str,
    /// Variation value.
    pub value: &'a serde_json::Value,
    /// Why.
    pub reason: Reason,
    /// Rule that matched, if any.
    pub rule_id: Option<&'a str>,
    /// Rollout that decided, if any.
    pub rollout_id: Option<&'a str>,
    /// Current step of that rollout.
    pub step: Option<usize>,
    /// The entity's bucket, when bucketing decided.
    pub bucket: Option<u32>,
    /// Bucketing was needed and the entity had nothing to bucket on (no id, or not the
    /// stickiness attribute): the answer is the fallback (a split's last variation, a
    /// rollout's baseline). OFREP turns this into `TARGETING_KEY_MISSING` for a context
    /// without a targeting key.
    pub keyless: bool,
}

/// What evaluators need of an active (running or paused) rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub rollout_id: String,
    /// Default serve or rule.
    pub target: Target,
    /// Variation outside the audience.
    pub baseline: String,
    /// Variation inside the audience.
    pub candidate: String,
    /// Bucketing salt.
    pub salt: String,
    /// Bucketing attribute (entity id when absent).
    pub stickiness: Option<String>,
    /// Current step.
    pub step: usize,
    /// Who gets the candidate now.
    pub audience: ViewAudience,
}

/// The current audience of an active rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewAudience {
    /// Entities whose bucket is below this share.
    Share(Share),
    /// Members of the first `released` stages (the stage list excludes `unassigned`, which
    /// is released last as index `stages.len()`).
    Stages {
        /// Named stages' labels, in order.
        stages: Vec<Labels>,
        /// How many stages are released whole.
        released: usize,
        /// The share of stage `released` its waves released so far (SPEC §12): members
        /// whose bucket is below it get the candidate too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wave: Option<Share>,
    },
}

#[derive(Clone, Copy, Debug)]
enum Scalar<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
}

#[derive(Clone, Debug)]
enum OwnedScalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

impl OwnedScalar {
    fn from_value(value: &AttributeValue) -> Option<OwnedScalar> {
        match value {
            AttributeValue::String(text) => Some(OwnedScalar::Str(text.clone())),
            AttributeValue::Number(number) => Some(OwnedScalar::Num(*number)),
            AttributeValue::Bool(flag) => Some(OwnedScalar::Bool(*flag)),
            AttributeValue::List(_) => None,
        }
    }

    fn equals(&self, other: Scalar<'_>) -> bool {
        match (self, other) {
            (OwnedScalar::Str(mine), Scalar::Str(theirs)) => mine == theirs,
            (OwnedScalar::Num(mine), Scalar::Num(theirs)) => mine == &theirs,
            (OwnedScalar::Bool(mine), Scalar::Bool(theirs)) => *mine == theirs,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Comparison {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Comparison {
    fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Comparison::Eq => ordering == Equal,
            Comparison::Gt => ordering == Greater,
            Comparison::Gte => ordering != Less,
            Comparison::Lt => ordering == Less,
            Comparison::Lte => ordering != Greater,
        }
    }
}

#[derive(Clone, Debug)]
enum Test {
    Present,
    Absent,
    AnyOf(Vec<OwnedScalar>),
    NoneOf(Vec<OwnedScalar>),
    StartsWith(Vec<String>),
    EndsWith(Vec<String>),
    Contains(Vec<String>),
    Number(Comparison, f64),
    Semver(Comparison, semver::Version),
}

#[derive(Clone, Debug)]
struct CompiledCondition {
    attribute: String,
    test: Test,
}

/// Parses a semantic version, tolerating a leading `v` and a missing minor or patch
/// (`v1.2` reads as 1.2.0).
pub fn parse_semver(text: &str) -> Option<semver::Version> {
    let trimmed = text.strip_prefix('v').unwrap_or(text);
    if let Ok(version) = semver::Version::parse(trimmed) {
        return Some(version);
    }
    let core_end = trimmed.find(['-', '+']).unwrap_or(trimmed.len());
    let (core, rest) = trimmed.split_at(core_end);
    let padded = match core.matches('.').count() {
        0 => format!("{core}.0.0{rest}"),
        1 => format!("{core}.0{rest}"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

impl CompiledCondition {
    fn compile(condition: &Condition) -> Option<CompiledCondition> {
        let scalars = || {
            condition
                .values
                .iter()
                .map(OwnedScalar::from_value)
                .collect::<Option<Vec<_>>>()
        };
        let strings = || {
            condition
                .values
                .iter()
                .map(|value| value.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        };
        let number = || match condition.values.first() {
            Some(AttributeValue::Number(number)) => Some(*number),
            _ => None,
        };
        let version = || {
            condition
                .values
                .first()
                .and_then(AttributeValue::as_str)
                .and_then(parse_semver)
        };
        let test = match condition.op {
            Operator::Present => Test::Present,
            Operator::Absent => Test::Absent,
            Operator::Equals | Operator::In => Test::AnyOf(scalars()?),
            Operator::NotEquals | Operator::NotIn => Test::NoneOf(scalars()?),
            Operator::StartsWith => Test::StartsWith(strings()?),
            Operator::EndsWith => Test::EndsWith(strings()?),
            Operator::Contains => Test::Contains(strings()?),
            Operator::Gt => Test::Number(Comparison::Gt, number()?),
            Operator::Gte => Test::Number(Comparison::Gte, number()?),
            Operator::Lt => Test::Number(Comparison::Lt, number()?),
            Operator::Lte => Test::Number(Comparison::Lte, number()?),
            Operator::SemverEq => Test::Semver(Comparison::Eq, version()?),
            Operator::SemverGt => Test::Semver(Comparison::Gt, version()?),
            Operator::SemverGte => Test::Semver(Comparison::Gte, version()?),
            Operator::SemverLt => Test::Semver(Comparison::Lt, version()?),
            Operator::SemverLte => Test::Semver(Comparison::Lte, version()?),
        };
        Some(CompiledCondition {
            attribute: condition.attribute.clone(),
            test,
        })
    }

    fn matches(&self, entity: &Entity) -> bool {
        let value = match entity.attributes.get(&self.attribute) {
            Some(value) => Some(value),
            None if self.attribute == "id" => {
                return self.matches_scalar(Scalar::Str(&entity.id));
            }
            None => None,
        };
        match (&self.test, value) {
            (Test::Absent, found) => found.is_none(),
            (Test::Present, found) => found.is_some(),
            (_, None) => false,
            (Test::NoneOf(excluded), Some(AttributeValue::List(items))) => {
                !items.iter().any(|item| {
                    excluded
                        .iter()
                        .any(|candidate| candidate.equals(Scalar::Str(item)))
                })
            }
            (_, Some(AttributeValue::List(items))) => items
                .iter()
                .any(|item| self.matches_scalar(Scalar::Str(item))),
            (_, Some(AttributeValue::String(text))) => self.matches_scalar(Scalar::Str(text)),
            (_, Some(AttributeValue::Number(number))) => self.matches_scalar(Scalar::Num(*number)),
            (_, Some(AttributeValue::Bool(flag))) => self.matches_scalar(Scalar::Bool(*flag)),
        }
    }

    fn matches_scalar(&self, value: Scalar<'_>) -> bool {
        match (&self.test, value) {
            (Test::Present, _) => true,
            (Test::Absent, _) => false,
            (Test::AnyOf(allowed), _) => allowed.iter().any(|candidate| candidate.equals(value)),
            (Test::NoneOf(excluded), _) => {
                !excluded.iter().any(|candidate| candidate.equals(value))
            }
            (Test::StartsWith(prefixes), Scalar::Str(text)) => prefixes
                .iter()
                .any(|prefix| text.starts_with(prefix.as_str())),
            (Test::EndsWith(suffixes), Scalar::Str(text)) => suffixes
                .iter()
                .any(|suffix| text.ends_with(suffix.as_str())),
            (Test::Contains(parts), Scalar::Str(text)) => {
                parts.iter().any(|part| text.contains(part.as_str()))
            }
            (Test::Number(comparison, limit), Scalar::Num(number)) => number
                .partial_cmp(limit)
                .is_some_and(|ordering| comparison.holds(ordering)),
            (Test::Semver(comparison, limit), Scalar::Str(text)) => parse_semver(text)
                .is_some_and(|version| comparison.holds(version.cmp_precedence(limit))),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct CompiledRollout {
    rollout_id: String,
    seed: BucketSeed,
    stickiness: Option<String>,
    baseline: usize,
    candidate: usize,
    step: usize,
    audience: ViewAudience,
}

#[derive(Clone, Debug)]
enum CompiledServe {
    Variation(usize),
    Split {
        seed: BucketSeed,
        stickiness: Option<String>,
        /// (exclusive upper bucket, variation index), ascending; the last ends at 10^6.
        ranges: Vec<(u32, usize)>,
    },
    Staged {
        stages: Vec<Labels>,
        released: usize,
        /// The share of stage `released` released by its waves, and the bucketing seed.
        wave: Option<(Share, BucketSeed)>,
        candidate: usize,
        baseline: usize,
    },
    Rollout(Box<CompiledRollout>),
}

/// Whether a label-stage release serves `entity` the candidate: a member of the first
/// `released` stages, or of the next one with a bucket (of its id) inside the `wave`. The
/// bucket, when one was drawn.
fn in_stage_release(
    stages: &[Labels],
    released: usize,
    wave: Option<(Share, BucketSeed)>,
    entity: &Entity,
) -> (bool, Option<u32>) {
    let stage = stage_of(stages, &entity.labels);
    if stage < released {
        return (true, None);
    }
    match wave {
        Some((share, seed)) if stage == released => {
            let bucket = seed.bucket(&entity.id);
            (share.contains(bucket), Some(bucket))
        }
        _ => (false, None),
    }
}

#[derive(Clone, Debug)]
struct CompiledRule {
    id: String,
    conditions: Vec<CompiledCondition>,
    serve: CompiledServe,
}

/// A flag ready for fast evaluation, at one version.
#[derive(Clone, Debug)]
pub struct CompiledFlag {
    key: String,
    version: u64,
    enabled: bool,
    off_variation: usize,
    variation_ids: Vec<String>,
    variation_values: Vec<serde_json::Value>,
    default: CompiledServe,
    rules: Vec<CompiledRule>,
}

/// The key an entity is bucketed on: its id, or its stickiness attribute; `None` when it
/// has neither (an entity without an id, as OFREP contexts without a targeting key are).
fn bucketing_key<'e>(entity: &'e Entity, stickiness: Option<&str>) -> Option<Cow<'e, str>> {
    let id = || (!entity.id.is_empty()).then_some(Cow::Borrowed(entity.id.as_str()));
    match stickiness {
        None => id(),
        Some(attribute) => match entity.attributes.get(attribute) {
            Some(value) => value.stickiness_key(),
            None if attribute == "id" => id(),
            None => None,
        },
    }
}

impl CompiledFlag {
    /// Validates and compiles `flag` at `version`, with the view of its active rollout.
    pub fn compile(
        flag: &Flag,
        version: u64,
        rollout: Option<&RolloutView>,
    ) -> Result<CompiledFlag, ValidationErrors> {
        flag.validate("flag")?;
        let mut errors = ValidationErrors::default();
        let index_of =
            |id: &str, field: &str, errors: &mut ValidationErrors| match flag.variation_index(id) {
                Some(index) => index,
                None => {
                    errors.push(field, format!("no variation {id:?}"));
                    0
                }
            };
        let compiled_rollout = rollout.map(|view| {
            Box::new(CompiledRollout {
                rollout_id: view.rollout_id.clone(),
                seed: BucketSeed::from_salt(&view.salt),
                stickiness: view.stickiness.clone(),
                baseline: index_of(&view.baseline, "rollout.baseline", &mut errors),
                candidate: index_of(&view.candidate, "rollout.candidate", &mut errors),
                step: view.step,
                audience: view.audience.clone(),
            })
        });
        if let Some(view) = rollout {
            if let Target::Rule(rule_id) = &view.target {
                if flag.rule(rule_id).is_none() {
                    errors.push("rollout.rule", format!("flag has no rule {rule_id:?}"));
                }
            }
        }
        let serve_for = |target: Target, serve: &Serve, path: &str| -> CompiledServe {
            match (rollout, &compiled_rollout) {
                (Some(view), Some(compiled)) if view.target == target => {
                    CompiledServe::Rollout(compiled.clone())
                }
                _ => compile_serve(flag, serve, path, &target),
            }
        };
        let default = serve_for(Target::Default, &flag.default, "flag.default");
        let rules = flag
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| CompiledRule {
                id: rule.id.clone(),
                conditions: rule
                    .conditions
                    .iter()
                    .filter_map(CompiledCondition::compile)
                    .collect(),
                serve: serve_for(
                    Target::Rule(rule.id.clone()),
                    &rule.serve,
                    &format!("flag.rules[{index}].serve"),
                ),
            })
            .collect();
        let off_variation = index_of(&flag.off_variation, "flag.off_variation", &mut errors);
        errors.into_result(CompiledFlag {
            key: flag.key.clone(),
            version,
            enabled: flag.enabled,
            off_variation,
            variation_ids: flag
                .variations
                .iter()
                .map(|variation| variation.id.clone())
                .collect(),
            variation_values: flag
                .variations
                .iter()
                .map(|variation| variation.value.clone())
                .collect(),
            default,
            rules,
        })
    }

    /// Flag key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The state version this was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the flag has a variation with this id.
    pub fn has_variation(&self, id: &str) -> bool {
        self.variation_ids.iter().any(|known| known == id)
    }

    /// Which variation `entity` gets, and why.
    pub fn evaluate<'a>(&'a self, entity: &Entity) -> Evaluation<'a> {
        if !self.enabled {
            return self.answer(self.off_variation, Reason::Disabled, None);
        }
        for rule in &self.rules {
            if rule
                .conditions
                .iter()
                .all(|condition| condition.matches(entity))
            {
                return self.serve(&rule.serve, entity, Reason::RuleMatch, Some(&rule.id));
            }
        }
        self.serve(&self.default, entity, Reason::Default, None)
    }

    fn answer<'a>(
        &'a self,
        variation: usize,
        reason: Reason,
        rule_id: Option<&'a str>,
    ) -> Evaluation<'a> {
        Evaluation {
            variation: &self.variation_ids[variation],
            value: &self.variation_values[variation],
            reason,
            rule_id,
            rollout_id: None,
            step: None,
            bucket: None,
            keyless: false,
        }
    }

    fn serve<'a>(
        &'a self,
        serve: &'a CompiledServe,
        entity: &Entity,
        fixed_reason: Reason,
        rule_id: Option<&'a str>,
    ) -> Evaluation<'a> {
        match serve {
            CompiledServe::Variation(variation) => self.answer(*variation, fixed_reason, rule_id),
            CompiledServe::Split {
                seed,
                stickiness,
                ranges,
            } => {
                let fallback = ranges
                    .last()
                    .map_or(self.off_variation, |(_, variation)| *variation);
                let Some(key) = bucketing_key(entity, stickiness.as_deref()) else {
                    return Evaluation {
                        keyless: true,
                        ..self.answer(fallback, Reason::Split, rule_id)
                    };
                };
                let bucket = seed.bucket(&key);
                let variation = ranges
                    .iter()
                    .find(|(upper, _)| bucket < *upper)
                    .map_or(fallback, |(_, variation)| *variation);
                Evaluation {
                    bucket: Some(bucket),
                    ..self.answer(variation, Reason::Split, rule_id)
                }
            }
            CompiledServe::Staged {
                stages,
                released,
                wave,
                candidate,
                baseline,
            } => {
                let (in_release, bucket) = in_stage_release(stages, *released, *wave, entity);
                let variation = if in_release { *candidate } else { *baseline };
                Evaluation {
                    bucket,
                    ..self.answer(variation, Reason::Stage, rule_id)
                }
            }
            CompiledServe::Rollout(rollout) => {
                let decided = |variation: usize, reason: Reason, bucket: Option<u32>| Evaluation {
                    rollout_id: Some(&rollout.rollout_id),
                    step: Some(rollout.step),
                    bucket,
                    ..self.answer(variation, reason, rule_id)
                };
                match &rollout.audience {
                    ViewAudience::Share(share) => {
                        let Some(key) = bucketing_key(entity, rollout.stickiness.as_deref()) else {
                            return Evaluation {
                                keyless: true,
                                ..decided(rollout.baseline, Reason::StickinessMissing, None)
                            };
                        };
                        let bucket = rollout.seed.bucket(&key);
                        let variation = if share.contains(bucket) {
                            rollout.candidate
                        } else {
                            rollout.baseline
                        };
                        decided(variation, Reason::Rollout, Some(bucket))
                    }
                    ViewAudience::Stages {
                        stages,
                        released,
                        wave,
                    } => {
                        let wave = wave.map(|share| (share, rollout.seed));
                        let (in_release, bucket) =
                            in_stage_release(stages, *released, wave, entity);
                        let variation = if in_release {
                            rollout.candidate
                        } else {
                            rollout.baseline
                        };
                        decided(variation, Reason::Rollout, bucket)
                    }
                }
            }
        }
    }
}

fn compile_serve(flag: &Flag, serve: &Serve, _path: &str, target: &Target) -> CompiledServe {
    // `flag.validate` already proved every reference below; indexes fall back to the off
    // variation only to stay total.
    let index = |id: &str| flag.variation_index(id).unwrap_or(0);
    let default_salt = || match target {
        Target::Default => format!("{}/default", flag.key),
        Target::Rule(rule_id) => format!("{}/rule/{rule_id}", flag.key),
    };
    if let Some(split) = &serve.split {
        let mut upper: u32 = 0;
        let ranges = split
            .iter()
            .map(|entry| {
                upper = upper
                    .saturating_add(Share::from_percentage(entry.weight).map_or(0, Share::ppm));
                (upper, index(&entry.variation))
            })
            .collect();
        return CompiledServe::Split {
            seed: BucketSeed::from_salt(serve.salt.as_deref().unwrap_or(&default_salt())),
            stickiness: serve.stickiness.clone(),
            ranges,
        };
    }
    if let Some(staged) = &serve.stages {
        return CompiledServe::Staged {
            stages: staged.stages.clone(),
            released: staged.released,
            wave: staged.wave.map(|share| {
                let salt = staged.salt.clone().unwrap_or_else(default_salt);
                (share, BucketSeed::from_salt(&salt))
            }),
            candidate: index(&staged.candidate),
            baseline: index(&staged.baseline),
        };
    }
    CompiledServe::Variation(serve.variation.as_deref().map_or(0, index))
}
