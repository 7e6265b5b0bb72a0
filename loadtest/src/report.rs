//! What a scenario reports: rows of (measurement, value, baseline measured in the same run,
//! ratio, SPEC §10 target, pass), its settings and raw figures; printed as a summary,
//! written as JSON (`--json-out`), and rendered as one markdown table over several runs
//! (`loadtest report`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Everything one scenario run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `eval`, `commands`, `ticker`, `failover`, `propagation`, `agents`.
    pub scenario: String,
    /// `private` (servers started for the run) or `external` (a running cluster).
    pub mode: String,
    /// When the run started, RFC 3339 UTC.
    pub started_at: String,
    /// How long the run took, set-up included, in seconds.
    pub elapsed_secs: f64,
    /// The parameters the run used.
    pub settings: serde_json::Value,
    /// The measurements.
    pub rows: Vec<Row>,
    /// The raw figures behind the rows (histogram summaries, counts), per scenario.
    pub details: serde_json::Value,
    /// Anything the reader should know about this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One measurement beside its baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    pub value: f64,
    /// Its unit (`req/s`, `ms`, `B/flag`).
    pub unit: String,
    /// The baseline measured in the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// `value / baseline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The SPEC target, if one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Whether the target is met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<bool>,
}

/// The reference a measurement is compared with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    /// What it is.
    pub name: String,
    /// Its value, in the row's unit.
    pub value: f64,
}

/// Which figure of a row a target judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Judged {
    /// The value.
    Value,
    /// The ratio to the baseline.
    Ratio,
}

/// A bound from SPEC §10.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// As written for people, e.g. `≥ 0.7× echo`.
    pub text: String,
    /// What it judges.
    pub judged: Judged,
    /// `true`: at least `threshold`; `false`: at most.
    pub at_least: bool,
    /// The bound.
    pub threshold: f64,
}

impl Target {
    /// The value must be at least `threshold`.
    pub fn value_at_least(threshold: f64, text: impl Into<String>) -> Target {
        Target {
            text: text.into(),
            judged: Judged::Value,
            at_least: true,
            threshold,
        }
    }

    /// The value must be at most `threshold`.
    pub fn value_at_most(threshold: f64, text: impl Into<String>) -> Target {
        Target {
            text: text.into(),
            judged: Judged::Value,
            at_least: false,
            threshold,
        }
    }

    /// The ratio must be at least `threshold`.
    pub fn ratio_at_least(threshold: f64, text: impl Into<String>) -> Target {
        Target {
            text: text.into(),
            judged: Judged::Ratio,
            at_least: true,
            threshold,
        }
    }

    /// The ratio must be at most `threshold`.
    pub fn ratio_at_most(threshold: f64, text: impl Into<String>) -> Target {
        Target {
            text: text.into(),
            judged: Judged::Ratio,
            at_least: false,
            threshold,
        }
    }
}

impl Row {
    /// A measurement without baseline or target.
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline: None,
            ratio: None,
            target: None,
            pass: None,
        }
    }

    /// Adds the baseline and the ratio to it.
    #[must_use]
    pub fn baseline(mut self, name: impl Into<String>, value: f64) -> Row {
        self.ratio = (value > 0.0 && value.is_finite()).then(|| self.value / value);
        self.baseline = Some(Baseline {
            name: name.into(),
            value,
        });
        self.judge();
        self
    }

    /// Adds the target and judges it.
    #[must_use]
    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self.judge();
        self
    }

    fn judge(&mut self) {
        let Some(target) = &self.target else {
            return;
        };
        let judged = match target.judged {
            Judged::Value => Some(self.value),
            Judged::Ratio => self.ratio,
        };
        self.pass = judged.map(|figure| {
            if target.at_least {
                figure >= target.threshold
            } else {
                figure <= target.threshold
            }
        });
    }
}

/// Collects a run's report while it runs.
#[derive(Debug)]
pub struct Recorder {
    scenario: String,
    mode: String,
    started_at: String,
    started: Instant,
    settings: serde_json::Value,
    rows: Vec<Row>,
    details: serde_json::Map<String, serde_json::Value>,
    notes: Vec<String>,
}

impl Recorder {
    /// A report of `scenario` in `mode` with `settings`, started now.
    pub fn new(scenario: &str, mode: &str, settings: serde_json::Value) -> Recorder {
        Recorder {
            scenario: scenario.to_owned(),
            mode: mode.to_owned(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            started: Instant::now(),
            settings,
            rows: Vec::new(),
            details: serde_json::Map::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Adds a raw figure under `key`.
    pub fn detail(&mut self, key: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.details.insert(key.to_owned(), value);
    }

    /// Adds a note for the reader.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The finished report.
    pub fn finish(self) -> Report {
        Report {
            scenario: self.scenario,
            mode: self.mode,
            started_at: self.started_at,
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            settings: self.settings,
            rows: self.rows,
            details: serde_json::Value::Object(self.details),
            notes: self.notes,
        }
    }
}

/// A number for people: no decimals from 1 000 up, three significant digits below.
pub fn figure(value: f64) -> String {
    if !value.is_finite() {
        return "—".to_owned();
    }
    let magnitude = value.abs();
    if value.fract() == 0.0 && magnitude < 1e15 {
        return group_thousands(value as i64);
    }
    if magnitude >= 1000.0 {
        group_thousands(value.round() as i64)
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else if magnitude == 0.0 {
        "0".to_owned()
    } else {
        format!("{value:.3}")
    }
}

fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(' ');
        }
        grouped.push(digit);
    }
    if value < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// A ratio to three significant digits, so one just under a bound does not print as the
/// bound (0.698×, not 0.70×).
fn ratio_text(ratio: f64) -> String {
    if ratio < 1.0 {
        format!("{ratio:.3}×")
    } else if ratio < 10.0 {
        format!("{ratio:.2}×")
    } else {
        format!("{ratio:.1}×")
    }
}

fn pass_text(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "—",
    }
}

fn row_cells(row: &Row) -> [String; 6] {
    let with_unit = |value: f64| {
        if row.unit.is_empty() {
            figure(value)
        } else {
            format!("{} {}", figure(value), row.unit)
        }
    };
    let value = with_unit(row.value);
    let baseline = row.baseline.as_ref().map_or("—".to_owned(), |baseline| {
        format!("{} ({})", with_unit(baseline.value), baseline.name)
    });
    let ratio = row.ratio.map_or("—".to_owned(), ratio_text);
    let target = row
        .target
        .as_ref()
        .map_or("—".to_owned(), |target| target.text.clone());
    [
        row.name.clone(),
        value,
        baseline,
        ratio,
        target,
        pass_text(row.pass).to_owned(),
    ]
}

/// The human summary printed at the end of a run.
pub fn summary(report: &Report) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n{} ({} servers, {:.1} s)",
        report.scenario, report.mode, report.elapsed_secs
    );
    let header = [
        "measurement",
        "value",
        "baseline (same run)",
        "ratio",
        "target",
        "",
    ];
    let cells: Vec<[String; 6]> = report.rows.iter().map(row_cells).collect();
    let mut widths = header.map(|title| title.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let header_cells: Vec<String> = header.iter().map(|title| (*title).to_owned()).collect();
    let _ = writeln!(text, "{}", line(&header_cells));
    for row in &cells {
        let _ = writeln!(text, "{}", line(row));
    }
    for note in &report.notes {
        let _ = writeln!(text, "note: {note}");
    }
    text
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(report: &Report, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report).context("encoding the report")?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("writing the report to {}", path.display()))
}

/// Reads a report written by [`write_json`].
pub fn read_json(path: &Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("decoding {}", path.display()))
}

/// Escapes a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// One markdown table over several reports, with the scenarios expected but missing listed
/// as not run.
pub fn markdown_table(reports: &[Report], expected: &[String]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "| scenario | measurement | value | baseline (same run) | ratio | SPEC target | result |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|");
    for report in reports {
        for row in &report.rows {
            let [name, value, baseline, ratio, target, pass] = row_cells(row);
            let pass = match row.pass {
                Some(true) => "✅ pass".to_owned(),
                Some(false) => "❌ fail".to_owned(),
                None => pass,
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&report.scenario),
                cell(&name),
                cell(&value),
                cell(&baseline),
                cell(&ratio),
                cell(&target),
                pass
            );
        }
    }
    for scenario in expected {
        if !reports.iter().any(|report| &report.scenario == scenario) {
            let _ = writeln!(
                text,
                "| {} | did not run (see the bench log) | — | — | — | — | ❌ fail |",
                cell(scenario)
            );
        }
    }
    text
}

/// The notes of several reports, as a markdown list.
pub fn markdown_notes(reports: &[Report]) -> String {
    let mut text = String::new();
    for report in reports {
        let _ = writeln!(
            text,
            "- **{}** ({} servers, {:.0} s, started {}): settings `{}`",
            report.scenario, report.mode, report.elapsed_secs, report.started_at, report.settings
        );
        for note in &report.notes {
            let _ = writeln!(text, "  - {note}");
        }
    }
    text
}

/// Replaces what lies between `begin` and `end` in `document` with `insert`; `None` when
/// the markers are missing.
pub fn replace_between(document: &str, begin: &str, end: &str, insert: &str) -> Option<String> {
    let start = document.find(begin)? + begin.len();
    let stop = start + document[start..].find(end)?;
    Some(format!(
        "{}\n{}{}",
        &document[..start],
        insert,
        &document[stop..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_compute_ratios_and_judge_targets() {
        let row = Row::new("evaluations/s", 70_000.0, "req/s")
            .baseline("echo", 100_000.0)
            .target(Target::ratio_at_least(0.7, "≥ 0.7× echo"));
        assert_eq!(row.ratio, Some(0.7));
        assert_eq!(row.pass, Some(true));
        let slow = Row::new("p99", 2.5, "ms").target(Target::value_at_most(2.0, "≤ 2 ms"));
        assert_eq!(slow.pass, Some(false));
        let no_baseline = Row::new("x", 1.0, "ms").baseline("zero", 0.0);
        assert_eq!(no_baseline.ratio, None);
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(figure(86_914.4), "86 914");
        assert_eq!(figure(1570.0), "1 570");
        assert_eq!(figure(0.754), "0.754");
        assert_eq!(figure(12.34), "12.3");
        assert_eq!(figure(0.0), "0");
        assert_eq!(figure(12.0), "12");
        assert_eq!(ratio_text(0.6984), "0.698×");
        assert_eq!(ratio_text(1.374), "1.37×");
        assert_eq!(ratio_text(22.39), "22.4×");
    }

    #[test]
    fn markers_are_replaced() {
        let document = "intro\n<!-- a -->\nold\n<!-- b -->\nend";
        let replaced = replace_between(document, "<!-- a -->", "<!-- b -->", "new\n");
        assert_eq!(
            replaced.as_deref(),
            Some("intro\n<!-- a -->\nnew\n<!-- b -->\nend")
        );
        assert_eq!(
            replace_between("none", "<!-- a -->", "<!-- b -->", ""),
            None
        );
    }

    #[test]
    fn missing_scenarios_are_listed() {
        let mut recorder = Recorder::new("eval", "private", serde_json::json!({}));
        recorder.row(Row::new("rate", 1.0, "req/s"));
        let table = markdown_table(&[recorder.finish()], &["eval".into(), "ticker".into()]);
        assert!(table.contains("| eval | rate |"));
        assert!(table.contains("| ticker | did not run"));
    }
}
