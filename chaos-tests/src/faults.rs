//! The faults a run injects, by name, and the seeded schedule that orders
//! them: the same seed, fault list and duration give the same sequence of
//! steps (fault, which node, how long it holds, the pause after).

use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL a node, restart it on its data directory.
    Kill,
    /// SIGSTOP a node past its serving lease, then SIGCONT.
    Pause,
    /// SIGKILL the Raft leader, restart it.
    LeaderKill,
    /// Cut one node off from the others, both ways.
    Partition,
    /// A node's calls reach the others, theirs do not reach it.
    OneWay,
    /// Delay and jitter on every node-to-node connection.
    Latency,
    /// Every node in turn stopped gracefully (SIGTERM) and started again.
    RollingRestart,
    /// Drain a node, stop and remove it, and add a new one.
    DrainAdd,
    /// The S3 store answers `503 SlowDown`, `500 InternalError`, or
    /// nothing (timeouts), to every node.
    S3Faults,
    /// A node's data directory (its own small tmpfs) fills up.
    DiskFull,
    /// A node's wall clock runs ahead or behind (libfaketime).
    ClockSkew,
    /// The broker SIGKILLed and started again on its durable (SQLite) storage.
    BrokerRestart,
}

impl Fault {
    pub const ALL: [Fault; 12] = [
        Fault::Kill,
        Fault::Pause,
        Fault::LeaderKill,
        Fault::Partition,
        Fault::OneWay,
        Fault::Latency,
        Fault::RollingRestart,
        Fault::DrainAdd,
        Fault::S3Faults,
        Fault::DiskFull,
        Fault::ClockSkew,
        Fault::BrokerRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::LeaderKill => "leader-kill",
            Fault::Partition => "partition",
            Fault::OneWay => "one-way",
            Fault::Latency => "latency",
            Fault::RollingRestart => "rolling-restart",
            Fault::DrainAdd => "drain-add",
            Fault::S3Faults => "s3-faults",
            Fault::DiskFull => "disk-full",
            Fault::ClockSkew => "clock-skew",
            Fault::BrokerRestart => "broker-restart",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--faults`: `all`, or names separated by commas.
pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
    let s = s.trim();
    if s == "all" {
        return Ok(Fault::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if let Some(f) = Fault::ALL.iter().find(|f| f.name() == name) {
            if !out.contains(f) {
                out.push(*f);
            }
        } else {
            let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            return Err(format!(
                "unknown fault `{name}`; known: {}, or `all`",
                known.join(", ")
            ));
        }
    }
    if out.is_empty() {
        return Err("no fault named".into());
    }
    Ok(out)
}

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub fault: Fault,
    /// Picks the node among the members at the time (index modulo their
    /// number, in id order).
    pub pick: u32,
    /// How long the fault holds before it is healed.
    #[serde(serialize_with = "secs")]
    pub hold: Duration,
    /// How long the run goes on unfaulted after the cluster recovered.
    #[serde(serialize_with = "secs")]
    pub rest: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// An endless schedule: rounds that each use every fault of `faults` once,
/// in an order the seed shuffles.
pub struct Schedule {
    rng: rand::rngs::StdRng,
    faults: Vec<Fault>,
    round: Vec<Fault>,
}

impl Schedule {
    pub fn new(seed: u64, faults: &[Fault]) -> Schedule {
        Schedule {
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0x00C4_A05E_u64),
            faults: faults.to_vec(),
            round: Vec::new(),
        }
    }
}

impl Iterator for Schedule {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        if self.round.is_empty() {
            self.round = self.faults.clone();
            // Fisher–Yates, drawn from the seeded generator
            for i in (1..self.round.len()).rev() {
                let j = self.rng.random_range(0..=i);
                self.round.swap(i, j);
            }
        }
        let fault = self.round.pop()?;
        let hold = match fault {
            // past the serving lease and the failure timeout, so the
            // node's shards move and it must come back as a follower
            Fault::Pause => self.rng.random_range(4_000..9_000),
            Fault::Latency | Fault::S3Faults | Fault::DiskFull => {
                self.rng.random_range(5_000..12_000)
            }
            Fault::ClockSkew => self.rng.random_range(8_000..15_000),
            // kills and restarts: how long the node stays dead
            _ => self.rng.random_range(2_000..8_000),
        };
        Some(Step {
            fault,
            pick: self.rng.random_range(0..1_000_000),
            hold: Duration::from_millis(hold),
            rest: Duration::from_millis(self.rng.random_range(2_000..6_000)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_each_round_uses_every_fault() {
        let a: Vec<Step> = Schedule::new(7, &Fault::ALL)
            .take(3 * Fault::ALL.len())
            .collect();
        let b: Vec<Step> = Schedule::new(7, &Fault::ALL)
            .take(3 * Fault::ALL.len())
            .collect();
        assert_eq!(a, b);
        let c: Vec<Step> = Schedule::new(8, &Fault::ALL)
            .take(3 * Fault::ALL.len())
            .collect();
        assert_ne!(a, c);
        for round in a.chunks(Fault::ALL.len()) {
            let mut names: Vec<&str> = round.iter().map(|s| s.fault.name()).collect();
            names.sort_unstable();
            let mut all: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            all.sort_unstable();
            assert_eq!(names, all);
        }
    }

    #[test]
    fn fault_lists_are_parsed_and_unknown_or_missing_faults_named() {
        assert_eq!(parse_list("all").unwrap().len(), Fault::ALL.len());
        assert_eq!(
            parse_list("kill, pause,kill").unwrap(),
            vec![Fault::Kill, Fault::Pause]
        );
        let e = parse_list("kill,explode").unwrap_err();
        assert!(e.contains("`explode`") && e.contains("one-way"), "{e}");
        assert_eq!(
            parse_list("broker-restart").unwrap(),
            vec![Fault::BrokerRestart]
        );
        assert!(parse_list(" , ").is_err());
    }
}
