//! `report.html`: the verdict, the replay command, and the run as plots on
//! one time axis (faults shaded): acknowledged ingest per second, serving
//! latency, the shards' lag, which node led, and each node's resources
//! (memory, open files, control-plane state) and the disk use.

use crate::check::Verdict;
use crate::monitor::{NodeSample, Sample};
use crate::workload::{Mark, MarkKind};
use std::fmt::Write;

const W: f64 = 960.0;
const H: f64 = 150.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A plotted line: its label, its colour and its points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One plot: `series` of (label, colour, points), the faults shaded.
fn plot(title: &str, unit: &str, end: f64, verdict: &Verdict, series: &[Line]) -> String {
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let x = |t: f64| LEFT + (t / end.max(1.0)) * (W - LEFT - RIGHT);
    let y = |v: f64| 20.0 + (1.0 - v / ymax) * (H - 40.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"#
    );
    for f in &verdict.steps {
        let to = f.recovered.unwrap_or(end);
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="20" width="{:.1}" height="{:.1}" fill="#f4a582" opacity="0.45"><title>{} {}</title></rect><rect x="{:.1}" y="20" width="{:.1}" height="{:.1}" fill="#fddbc7" opacity="0.5"/>"##,
            x(f.started),
            (x(f.healed) - x(f.started)).max(1.0),
            H - 40.0,
            f.fault,
            esc(&f.nodes.join(",")),
            x(f.healed),
            (x(to) - x(f.healed)).max(0.0),
            H - 40.0,
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="14" font-size="9">{}</text>"#,
            x(f.started),
            f.fault
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{LEFT}" y1="20" x2="{LEFT}" y2="{b}" stroke="#444"/>"##,
        b = H - 20.0,
        r = W - RIGHT
    );
    let _ = write!(
        s,
        r#"<text x="4" y="{:.1}">{:.0} {unit}</text><text x="4" y="{:.1}">0</text>"#,
        y(ymax / 1.1) + 4.0,
        ymax / 1.1,
        H - 20.0
    );
    for i in 0..=5 {
        let t = end * i as f64 / 5.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0} s</text>"#,
            x(t),
            H - 6.0,
            t
        );
    }
    let mut lx = LEFT + 10.0;
    for (label, colour, pts) in series {
        if !pts.is_empty() {
            let d: Vec<String> = thin(pts, MAX_POINTS)
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.3" points="{}"/>"#,
                d.join(" ")
            );
        }
        let _ = write!(
            s,
            r#"<text x="{lx:.1}" y="32" fill="{colour}">{}</text>"#,
            esc(label)
        );
        lx += 9.0 * label.len() as f64 + 20.0;
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="14" text-anchor="end" font-weight="bold">{}</text></svg>"#,
        W - RIGHT,
        esc(title)
    );
    s
}

/// Points per plotted line at most (a soak samples every second for hours).
const MAX_POINTS: usize = 1500;

/// At most about `max` points: consecutive points grouped, each group
/// drawn as its largest value (peaks of lag or memory stay visible).
fn thin(pts: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if pts.len() <= max {
        return pts.to_vec();
    }
    pts.chunks(pts.len().div_ceil(max))
        .map(|c| {
            let top = c.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            (c[0].0, top)
        })
        .collect()
}

/// Colours of per-node lines.
const NODE_COLOURS: [&str; 8] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

/// A line per node: its id and its points.
type NodeLines = Vec<(String, Vec<(f64, f64)>)>;

/// One measure of every node over the run, a line per node id (nodes that
/// joined later start late; a node down has no points meanwhile).
fn per_node(
    samples: &[Sample],
    measure: impl Fn(&NodeSample) -> Option<u64>,
    scale: f64,
) -> NodeLines {
    let mut by: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for s in samples {
        for n in &s.nodes {
            if let Some(v) = measure(n) {
                by.entry(n.id.clone())
                    .or_default()
                    .push((s.t, v as f64 / scale));
            }
        }
    }
    by.into_iter().collect()
}

/// First, last and largest value of a line.
fn span(pts: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let first = pts.first()?.1;
    let last = pts.last()?.1;
    Some((
        first,
        last,
        pts.iter().map(|p| p.1).fold(f64::MIN, f64::max),
    ))
}

/// The resources section: memory, open files and control-plane state per
/// node, and the run directory's disk use, as plots and as a table of
/// first / last / largest values (what a soak is read for).
fn resources(h: &mut String, verdict: &Verdict, samples: &[Sample], end: f64) {
    const MIB: f64 = 1024.0 * 1024.0;
    let measures: [(&str, &str, NodeLines); 3] = [
        (
            "memory (RSS)",
            "MiB",
            per_node(samples, |n| n.rss_bytes, MIB),
        ),
        (
            "open files",
            "fds",
            per_node(samples, |n| n.open_files, 1.0),
        ),
        (
            "control-plane state",
            "KiB",
            per_node(samples, |n| n.state_bytes, 1024.0),
        ),
    ];
    let disk: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.disk_bytes.map(|b| (s.t, b as f64 / MIB)))
        .collect();
    h.push_str("<h2>Resources</h2><p>Sampled every second (disk every ten): whether anything grows without bound over a long run (<code>--duration 8h</code>). The numbers are in <code>samples.jsonl</code>.</p>");
    h.push_str(
        "<table><tr><th>measure</th><th>node</th><th>first</th><th>last</th><th>largest</th></tr>",
    );
    for (title, unit, lines) in &measures {
        for (id, pts) in lines {
            if let Some((a, b, m)) = span(pts) {
                let _ = write!(
                    h,
                    "<tr><td>{title}</td><td>{}</td><td>{a:.1} {unit}</td><td>{b:.1} {unit}</td><td>{m:.1} {unit}</td></tr>",
                    esc(id)
                );
            }
        }
    }
    if let Some((a, b, m)) = span(&disk) {
        let _ = write!(
            h,
            "<tr><td>disk (run directory)</td><td>all</td><td>{a:.1} MiB</td><td>{b:.1} MiB</td><td>{m:.1} MiB</td></tr>"
        );
    }
    h.push_str("</table>");
    for (title, unit, lines) in &measures {
        let series: Vec<Line> = lines
            .iter()
            .enumerate()
            .map(|(i, (id, pts))| {
                (
                    id.as_str(),
                    NODE_COLOURS[i % NODE_COLOURS.len()],
                    pts.clone(),
                )
            })
            .collect();
        h.push_str(&plot(title, unit, end, verdict, &series));
    }
    h.push_str(&plot(
        "disk use of the run directory",
        "MiB",
        end,
        verdict,
        &[("disk", "#35978f", disk)],
    ));
}

/// Per-second buckets of the marks of `what`: (events acknowledged, or
/// latencies).
fn per_second(marks: &[Mark], what: MarkKind, end: f64) -> Vec<Vec<&Mark>> {
    let n = end.ceil().max(1.0) as usize + 1;
    let mut b: Vec<Vec<&Mark>> = vec![Vec::new(); n];
    for m in marks.iter().filter(|m| m.what == what) {
        let i = (m.t.max(0.0) as usize).min(n - 1);
        b[i].push(m);
    }
    b
}

fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() - 1) as f64 * q).round() as usize])
}

/// The plots' data: ingest rate, serving p50/p99 over 5 s, lag, leader.
pub struct Series {
    pub ingest: Vec<(f64, f64)>,
    pub serve_p50: Vec<(f64, f64)>,
    pub serve_p99: Vec<(f64, f64)>,
    pub serve_failed: Vec<(f64, f64)>,
    pub lag: Vec<(f64, f64)>,
    pub leader: Vec<(f64, f64)>,
}

pub fn series(marks: &[Mark], samples: &[Sample], end: f64) -> Series {
    let ingest = per_second(marks, MarkKind::Ingest, end)
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                i as f64,
                b.iter().filter(|m| m.ok).map(|m| m.events as f64).sum(),
            )
        })
        .collect();
    let serve = per_second(marks, MarkKind::Serve, end);
    let (mut p50, mut p99, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for (i, chunk) in serve.chunks(5).enumerate() {
        let mut ok: Vec<f64> = chunk
            .iter()
            .flatten()
            .filter(|m| m.ok)
            .map(|m| m.ms)
            .collect();
        let bad = chunk.iter().flatten().filter(|m| !m.ok).count();
        let t = i as f64 * 5.0;
        if let Some(v) = quantile(&mut ok, 0.5) {
            p50.push((t, v));
        }
        if let Some(v) = quantile(&mut ok, 0.99) {
            p99.push((t, v));
        }
        failed.push((t, bad as f64));
    }
    Series {
        ingest,
        serve_p50: p50,
        serve_p99: p99,
        serve_failed: failed,
        lag: samples.iter().map(|s| (s.t, s.lag as f64)).collect(),
        leader: samples
            .iter()
            .filter_map(|s| s.leader.map(|l| (s.t, l as f64)))
            .collect(),
    }
}

pub fn html(verdict: &Verdict, marks: &[Mark], samples: &[Sample], end: f64) -> String {
    let s = series(marks, samples, end);
    let leader_changes = s.leader.windows(2).filter(|w| w[0].1 != w[1].1).count();
    let mut h = String::new();
    let status = if verdict.passed { "PASSED" } else { "FAILED" };
    let colour = if verdict.passed { "#1a7f37" } else { "#cf222e" };
    let _ = write!(
        h,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>lockstep-chaos: {status} (seed {seed})</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}code{{background:#f3f3f3;padding:2px 4px}}</style></head><body>
<h1>lockstep-chaos: <span style="color:{colour}">{status}</span></h1>
<p>Seed <b>{seed}</b>, faults {faults}, {dur:.0} s of faults. Replay: <code>{replay}</code></p>"#,
        seed = verdict.seed,
        faults = esc(&verdict.faults.join(", ")),
        dur = verdict.duration_seconds,
        replay = esc(&verdict.replay),
    );
    if !verdict.failures.is_empty() {
        h.push_str("<h2>Failures</h2><ul>");
        for f in &verdict.failures {
            let _ = write!(h, "<li>{}</li>", esc(f));
        }
        h.push_str("</ul>");
    }
    let c = &verdict.counts;
    let _ = write!(
        h,
        "<h2>Checked against DuckDB</h2><table><tr><th>acknowledged events</th><td>{}</td></tr><tr><th>reference rows</th><td>{}</td></tr><tr><th>committed rows</th><td>{}</td></tr><tr><th>lost</th><td>{}</td></tr><tr><th>duplicated</th><td>{}</td></tr><tr><th>wrong rows</th><td>{}</td></tr><tr><th>unexpected rows</th><td>{}</td></tr><tr><th>served answers checked</th><td>{}</td></tr><tr><th>wrong served</th><td>{}</td></tr><tr><th>event ids sent twice (must apply once)</th><td>{}</td></tr><tr><th>leadership changes seen</th><td>{leader_changes}</td></tr></table>",
        c.acknowledged_events,
        c.reference_rows,
        c.committed_rows,
        c.lost,
        c.duplicated,
        c.wrong_rows,
        c.unexpected,
        c.served_checked,
        c.wrong_served,
        verdict.ingest.id_duplicates_sent,
    );
    h.push_str("<h2>Timeline</h2><p>Dark bands: a fault holding; light bands: until the cluster was ready again. The same plots are in <code>timeline.png</code>.</p>");
    h.push_str(&plot(
        "acknowledged ingest",
        "ev/s",
        end,
        verdict,
        &[("events/s", "#2166ac", s.ingest)],
    ));
    h.push_str(&plot(
        "serving latency (5 s buckets)",
        "ms",
        end,
        verdict,
        &[
            ("p50", "#1b7837", s.serve_p50),
            ("p99", "#762a83", s.serve_p99),
        ],
    ));
    h.push_str(&plot(
        "serving requests not answered 200 (per 5 s)",
        "req",
        end,
        verdict,
        &[("failed", "#b2182b", s.serve_failed)],
    ));
    h.push_str(&plot(
        "lag (events behind, summed over nodes)",
        "ev",
        end,
        verdict,
        &[("lag", "#8c510a", s.lag)],
    ));
    h.push_str(&plot(
        "leader (node number)",
        "",
        end,
        verdict,
        &[("leader", "#01665e", s.leader)],
    ));
    resources(&mut h, verdict, samples, end);
    h.push_str("<h2>Fault steps</h2><table><tr><th>#</th><th>fault</th><th>nodes</th><th>start s</th><th>healed s</th><th>ready again s</th><th>longest unavailable s</th><th>ingest / serving resumed after heal s</th><th>note</th></tr>");
    for f in &verdict.steps {
        let o = |x: Option<f64>| x.map_or("never".to_string(), |x| format!("{x:.1}"));
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.1}</td><td>{} / {}</td><td>{}</td></tr>",
            f.index,
            f.fault,
            esc(&f.nodes.join(", ")),
            f.started,
            f.healed,
            o(f.recovered),
            f.unavailable_seconds,
            o(f.ingest_resumed_after_heal),
            o(f.serving_resumed_after_heal),
            esc(&f.note)
        );
    }
    h.push_str("</table>");
    let _ = write!(
        h,
        "<h2>Examples</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&c.examples).unwrap_or_default())
    );
    h
}
