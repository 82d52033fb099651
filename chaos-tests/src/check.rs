//! The end of a run: the committed rows exported, the independent
//! reference run over what was acknowledged, and the verdict.

use crate::cluster::FaultRecord;
use crate::workload::{Mark, MarkKind};
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// The reference's counts (`reference.py`'s output).
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct Counts {
    pub acknowledged_events: u64,
    pub id_conflicts: u64,
    pub reference_rows: u64,
    pub committed_rows: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub wrong_rows: u64,
    pub unexpected: u64,
    pub served_checked: u64,
    pub wrong_served: u64,
    /// Rows of `rows.parquet` (the export) that differ from the segments
    /// the object store holds.
    #[serde(default)]
    pub export_mismatches: u64,
    #[serde(default)]
    pub examples: serde_json::Value,
}

impl Counts {
    /// Sums another view's counts into these.
    pub fn add(&mut self, o: &Counts) {
        self.acknowledged_events += o.acknowledged_events;
        self.id_conflicts += o.id_conflicts;
        self.reference_rows += o.reference_rows;
        self.committed_rows += o.committed_rows;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.wrong_rows += o.wrong_rows;
        self.unexpected += o.unexpected;
        self.served_checked += o.served_checked;
        self.wrong_served += o.wrong_served;
        self.export_mismatches += o.export_mismatches;
        if self.examples.is_null() && !o.examples.is_null() {
            self.examples = o.examples.clone();
        }
    }
}

/// Runs `reference.py` (DuckDB) for `view` over the run directory's
/// history and the view's committed segments (and `rows.parquet`, the
/// export, when it is the first view's).
pub fn reference(
    python: &str,
    script: &Path,
    dir: &Path,
    pipeline: &Path,
    view: &lockstep_api::ViewInfo,
    only_prefix: Option<&str>,
) -> anyhow::Result<Counts> {
    let mut cmd = Command::new(python);
    if let Some(p) = only_prefix {
        cmd.arg(script).arg("--only-prefix").arg(p);
    } else {
        cmd.arg(script);
    }
    cmd.arg("--pipeline")
        .arg(pipeline)
        .arg("--view")
        .arg(&view.name)
        .arg("--labels")
        .arg(view.labels.join(","))
        .arg("--history")
        .arg(dir.join("history.jsonl"))
        .arg("--segments")
        .arg(dir.join("segments").join(&view.name));
    let export = dir.join("rows.parquet");
    if std::fs::read_to_string(dir.join("views.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<lockstep_api::ViewList>(&t).ok())
        .and_then(|l| l.views.first().map(|v| v.name == view.name))
        .unwrap_or(false)
    {
        cmd.arg("--export").arg(export);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    match serde_json::from_str::<Counts>(last) {
        Ok(c) => Ok(c),
        Err(_) => bail!(
            "the reference checker failed ({}): {}{}\n(it needs `python3 -m pip install duckdb pyarrow`)",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The longest time in `[from, to]` with no successful mark of `what`
/// (a window's edges count as the last and next successes).
pub fn longest_gap(marks: &[Mark], what: MarkKind, from: f64, to: f64) -> f64 {
    let mut last = from;
    let mut worst: f64 = 0.0;
    for m in marks
        .iter()
        .filter(|m| m.what == what && m.ok && m.t >= from && m.t <= to)
    {
        worst = worst.max(m.t - last);
        last = m.t;
    }
    worst.max(to - last)
}

/// The first success of `what` at or after `t`, as seconds after `t`.
pub fn resumed_after(marks: &[Mark], what: MarkKind, t: f64) -> Option<f64> {
    marks
        .iter()
        .filter(|m| m.what == what && m.ok && m.t >= t)
        .map(|m| m.t - t)
        .reduce(f64::min)
}

/// Fills in each fault's availability from the marks.
pub fn availability(records: &mut [FaultRecord], marks: &[Mark], end: f64) {
    for r in records.iter_mut() {
        let to = r.recovered.unwrap_or(end);
        r.unavailable_seconds = longest_gap(marks, MarkKind::Ingest, r.started, to)
            .max(longest_gap(marks, MarkKind::Serve, r.started, to));
        r.ingest_resumed_after_heal = resumed_after(marks, MarkKind::Ingest, r.healed);
        r.serving_resumed_after_heal = resumed_after(marks, MarkKind::Serve, r.healed);
    }
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub seed: u64,
    pub faults: Vec<String>,
    pub duration_seconds: f64,
    pub replay: String,
    pub lost: u64,
    pub duplicated: u64,
    pub wrong_rows: u64,
    pub unexpected: u64,
    pub wrong_served: u64,
    /// Per fault step: the longest stretch without acknowledged ingest or
    /// without served answers, in seconds.
    pub unavailable_seconds: Vec<serde_json::Value>,
    pub liveness_bound_seconds: f64,
    /// Why the run failed, in words (empty when it passed).
    pub failures: Vec<String>,
    /// Summed over the views checked.
    pub counts: Counts,
    /// Each view's counts.
    pub per_view: serde_json::Value,
    pub ingest: crate::workload::IngestSummary,
    pub steps: Vec<FaultRecord>,
}

impl Verdict {
    pub fn judge(&mut self) {
        let c = &self.counts;
        for (n, what) in [
            (c.lost, "acknowledged events lost"),
            (c.duplicated, "rows committed twice"),
            (c.wrong_rows, "rows that differ from the reference"),
            (c.unexpected, "rows the reference does not have"),
            (
                c.wrong_served,
                "served answers that differ from their training rows",
            ),
            (
                c.id_conflicts,
                "event ids acknowledged with two bodies (a harness bug)",
            ),
            (
                c.export_mismatches,
                "exported rows that differ from the committed segments",
            ),
        ] {
            if n > 0 {
                self.failures.push(format!("{n} {what}"));
            }
        }
        if c.reference_rows == 0 {
            self.failures
                .push("the reference has no rows: nothing was checked".into());
        }
        if c.served_checked == 0 {
            self.failures
                .push("no served answer could be checked against its row".into());
        }
        let bound = self.liveness_bound_seconds;
        for s in &self.steps {
            let late = |x: Option<f64>| x.is_none_or(|x| x > bound);
            if s.recovered.is_none() {
                self.failures.push(format!(
                    "step {} ({}): the cluster did not recover within {bound} s",
                    s.index, s.fault
                ));
            } else if late(s.ingest_resumed_after_heal) || late(s.serving_resumed_after_heal) {
                self.failures.push(format!(
                    "step {} ({}): ingest or serving did not resume within {bound} s of the heal",
                    s.index, s.fault
                ));
            }
        }
        if let Some(e) = &self.ingest.stuck {
            self.failures.push(format!("ingest stopped: {e}"));
        }
        self.passed = self.failures.is_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(t: f64, what: MarkKind, ok: bool) -> Mark {
        Mark {
            t,
            what,
            ok,
            ms: 1.0,
            events: 1,
        }
    }

    #[test]
    fn gaps_and_resumption_are_measured_from_the_successes() {
        let marks = vec![
            mark(1.0, MarkKind::Ingest, true),
            mark(2.0, MarkKind::Ingest, false),
            mark(6.0, MarkKind::Ingest, true),
            mark(6.5, MarkKind::Serve, true),
            mark(7.0, MarkKind::Ingest, true),
        ];
        assert_eq!(longest_gap(&marks, MarkKind::Ingest, 0.0, 7.5), 5.0);
        assert_eq!(longest_gap(&marks, MarkKind::Ingest, 6.0, 20.0), 13.0);
        assert_eq!(longest_gap(&marks, MarkKind::Serve, 0.0, 7.0), 6.5);
        assert_eq!(resumed_after(&marks, MarkKind::Ingest, 1.5), Some(4.5));
        assert_eq!(resumed_after(&marks, MarkKind::Serve, 7.0), None);
    }

    #[test]
    fn any_count_or_a_late_recovery_fails_the_verdict() {
        let base = || Verdict {
            passed: false,
            seed: 1,
            faults: vec![],
            duration_seconds: 1.0,
            replay: String::new(),
            lost: 0,
            duplicated: 0,
            wrong_rows: 0,
            unexpected: 0,
            wrong_served: 0,
            unavailable_seconds: vec![],
            liveness_bound_seconds: 60.0,
            failures: vec![],
            counts: Counts {
                reference_rows: 10,
                served_checked: 2,
                ..Counts::default()
            },
            per_view: serde_json::Value::Null,
            ingest: Default::default(),
            steps: vec![],
        };
        let mut v = base();
        v.judge();
        assert!(v.passed, "{:?}", v.failures);
        let mut v = base();
        v.counts.duplicated = 1;
        v.judge();
        assert!(!v.passed && v.failures[0].contains("twice"));
        let mut v = base();
        v.steps.push(FaultRecord {
            index: 0,
            fault: crate::faults::Fault::Kill,
            nodes: vec![],
            started: 0.0,
            healed: 1.0,
            recovered: Some(2.0),
            unavailable_seconds: 0.0,
            ingest_resumed_after_heal: Some(61.0),
            serving_resumed_after_heal: Some(0.1),
            note: String::new(),
        });
        v.judge();
        assert!(!v.passed && v.failures[0].contains("resume"));
    }
}
