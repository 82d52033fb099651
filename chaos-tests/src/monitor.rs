//! Samples the cluster every second while a run goes on: the leader, the
//! shards' lag, and per node its memory, open files and control-plane
//! state; the run directory's disk use every ten seconds. Written to
//! `samples.jsonl`, kept for the report.

use crate::cluster::Target;
use crate::workload::Clients;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeSample {
    pub id: String,
    pub up: bool,
    pub lag: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub state_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t: f64,
    pub leader: Option<u64>,
    pub lag: u64,
    pub disk_bytes: Option<u64>,
    pub nodes: Vec<NodeSample>,
}

/// `VmRSS` of a process, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_files(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Bytes of the regular files under `dir`.
pub fn disk_use(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// A gauge's value in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

pub fn run(
    probes: Arc<RwLock<Vec<Target>>>,
    token: &str,
    dir: PathBuf,
    start: Instant,
    stop: &AtomicBool,
) -> Vec<Sample> {
    let clients = Clients::with_timeout(token, Duration::from_secs(2));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(dir.join("samples.jsonl")).expect("samples.jsonl"),
    );
    let mut samples = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let targets = probes.read().expect("probes").clone();
        let mut s = Sample {
            t: start.elapsed().as_secs_f64(),
            ..Sample::default()
        };
        for t in &targets {
            let c = clients.at(&t.addr);
            let status = c.status().ok();
            if s.leader.is_none() {
                s.leader = c.cluster().ok().flatten().and_then(|st| st.leader);
            }
            let metrics = c
                .request("GET", "/metrics", None, &[])
                .ok()
                .filter(|r| r.status == 200)
                .map(|r| String::from_utf8_lossy(&r.body).into_owned());
            let lag = status.as_ref().map(|st| st.lag);
            s.lag += lag.unwrap_or(0);
            s.nodes.push(NodeSample {
                id: t.id.clone(),
                up: status.is_some(),
                lag,
                rss_bytes: t.pid.and_then(rss),
                open_files: t.pid.and_then(open_files),
                state_bytes: metrics
                    .as_deref()
                    .and_then(|m| gauge(m, "lockstep_control_plane_state_bytes")),
            });
        }
        if n.is_multiple_of(10) {
            s.disk_bytes = Some(disk_use(&dir));
        }
        n += 1;
        let _ = serde_json::to_writer(&mut out, &s);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
        samples.push(s);
        if let Some(rest) = Duration::from_secs(1).checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let text = "# HELP x\nlockstep_control_plane_state_bytes_total 9\nlockstep_control_plane_state_bytes 1234\n";
        assert_eq!(
            gauge(text, "lockstep_control_plane_state_bytes"),
            Some(1234)
        );
        assert_eq!(gauge(text, "lockstep_missing"), None);
        assert_eq!(gauge("a{x=\"1\"} 2.5\n", "a"), Some(2));
    }

    #[test]
    fn this_process_has_memory_and_open_files() {
        let me = std::process::id();
        assert!(rss(me).unwrap() > 0);
        assert!(open_files(me).unwrap() > 0);
        let d = std::env::temp_dir().join(format!("chaos-du-{me}"));
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::write(d.join("a/f"), [0u8; 100]).unwrap();
        std::fs::write(d.join("g"), [0u8; 23]).unwrap();
        assert_eq!(disk_use(&d), 123);
        std::fs::remove_dir_all(d).unwrap();
    }
}
