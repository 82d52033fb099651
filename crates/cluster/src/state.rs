//! The replicated state machine: what the cluster agrees on, and the only
//! way it changes ([`Command`]s applied in Raft log order).
//!
//! It is pure and deterministic (no clock, no I/O: times come inside the
//! commands), so every member computes the same state from the same log.
//! The rules that make the cluster exactly once live here:
//! - each shard has one owner and an **owner epoch** that grows with every
//!   change of owner;
//! - a checkpoint (state, offset, segments) commits only with the current
//!   owner's epoch and the next sequence number, so a zombie owner, cut off
//!   and replaced, can neither commit a checkpoint nor publish training rows
//!   (rows exist for readers only through committed segment manifests).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type NodeId = u64;

pub use lockstep_api::{BackfillPart, SegmentInfo};

/// One object of a shard's state snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// A committed checkpoint of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    pub shard: u32,
    /// The owner that took it, and its owner epoch.
    pub owner: NodeId,
    pub owner_epoch: u64,
    /// The cluster checkpoint epoch it answers (0: taken on the owner's
    /// own account, e.g. before a hand-off).
    pub epoch: u64,
    /// 1 for the shard's first checkpoint, then +1 each.
    pub seq: u64,
    /// The next source offset: the log below it is in the state.
    pub offset: u64,
    /// Fingerprint of the views the state was built for.
    pub pipeline: String,
    /// The objects to restore, in order: a full snapshot, then the deltas
    /// taken since (each overrides what came before).
    pub snapshot: Vec<SnapshotPart>,
    /// Digest of the shard's state (for operators and restore checks).
    pub digest: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Owns and receives shards.
    Active,
    /// Giving its shards away (`lockstepctl nodes drain`); receives none.
    Draining,
    /// Missed its heartbeats: its shards were reassigned.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's API address (`host:port`), where other nodes forward to.
    pub addr: String,
    pub state: NodeState,
    /// When it last joined (or came back).
    pub joined_ms: i64,
}

/// Who owns a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOwner {
    pub node: Option<NodeId>,
    /// Grows with every change of owner: commits must carry the current one.
    pub epoch: u64,
    /// A graceful move in progress: the owner checkpoints, then hands off.
    pub moving_to: Option<NodeId>,
}

/// A change to the cluster. Proposed through the leader, applied by all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the table's shard count (once: the shard count is fixed) and
    /// the first pipeline (the initializing node's SQL).
    Init {
        table: String,
        shards: u32,
        sql: String,
        at_ms: i64,
    },
    /// A node joins, or comes back (then it is active again).
    Join {
        node: NodeId,
        addr: String,
        at_ms: i64,
    },
    Drain {
        node: NodeId,
    },
    /// The coordinator saw no heartbeat from it.
    MarkDown {
        node: NodeId,
    },
    /// The operator removes a node that is down for good (`nodes remove`):
    /// it leaves the member list, and shards it still owns are orphans the
    /// coordinator reassigns at once.
    Remove {
        node: NodeId,
    },
    /// Gives a shard to a node outright (its owner is gone), with a new
    /// owner epoch. `expect_epoch` guards against a stale plan.
    Assign {
        shard: u32,
        node: NodeId,
        expect_epoch: u64,
    },
    /// Starts a graceful move: the owner takes a last checkpoint and hands off.
    StartMove {
        shard: u32,
        to: NodeId,
        expect_epoch: u64,
    },
    /// The owner's hand-off: its last checkpoint is committed, the shard
    /// goes to the move's target with a new owner epoch.
    Handoff {
        shard: u32,
        from: NodeId,
        owner_epoch: u64,
    },
    /// A checkpoint with the segments it adds, and those it replaces (a
    /// rebuild under a new pipeline rewrites changed views' history).
    Commit {
        checkpoint: ShardCheckpoint,
        add_segments: Vec<SegmentInfo>,
        remove_segments: Vec<SegmentInfo>,
    },
    /// Replaces segments (compaction, rebuilds), by the current owner.
    SwapSegments {
        shard: u32,
        owner: NodeId,
        owner_epoch: u64,
        remove: Vec<SegmentInfo>,
        add: Vec<SegmentInfo>,
    },
    /// The coordinator opens a cluster checkpoint epoch.
    OpenEpoch {
        epoch: u64,
        at_ms: i64,
    },
    /// A new pipeline (`views apply`): every shard rebuilds under it.
    /// `expect_version` is the version it replaces (two applies at once:
    /// the second is refused).
    SetPipeline {
        sql: String,
        expect_version: u64,
        at_ms: i64,
    },
    /// Changes nothing: a member that sees it applied has applied all that
    /// was committed before (a read barrier).
    Barrier,
    /// A backfill job: every shard's owner replays it (`request` is the
    /// job's JSON; the state machine keeps it for the nodes).
    BackfillStart {
        id: String,
        request: String,
        at_ms: i64,
    },
    /// One shard of a backfill job is done (the first part per shard wins).
    BackfillPart {
        id: String,
        part: BackfillPart,
        at_ms: i64,
    },
    /// A backfill job failed (a shard could not be replayed).
    BackfillFail {
        id: String,
        error: String,
        at_ms: i64,
    },
}

/// A backfill job as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillJob {
    pub id: String,
    pub request: String,
    pub started_ms: i64,
    /// Done shards.
    pub parts: BTreeMap<u32, BackfillPart>,
    pub error: Option<String>,
    /// Set when every shard is done, or the job failed.
    pub finished_ms: Option<i64>,
}

/// Finished backfill jobs kept in the state (the oldest go first).
pub const KEEP_FINISHED_BACKFILLS: usize = 16;

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    /// Not applied, and why (a stale epoch, a sequence gap, …).
    Rejected(String),
}

impl Response {
    pub fn into_result(self) -> Result<(), String> {
        match self {
            Response::Done => Ok(()),
            Response::Rejected(why) => Err(why),
        }
    }
}

/// The pipeline the cluster runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineVersion {
    /// 0 until `Init`; each `SetPipeline` adds one.
    pub version: u64,
    pub sql: String,
    pub at_ms: i64,
}

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub table: String,
    /// 0 until `Init`.
    pub shards: u32,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub owners: Vec<ShardOwner>,
    /// The last committed checkpoint of each shard.
    pub checkpoints: Vec<Option<ShardCheckpoint>>,
    /// Each shard's segment manifest.
    pub segments: Vec<Vec<SegmentInfo>>,
    /// The last cluster checkpoint epoch opened, and when.
    pub epoch: u64,
    pub epoch_ms: i64,
    pub pipeline: PipelineVersion,
    /// Backfill jobs, oldest first: running ones and the last finished.
    pub backfills: Vec<BackfillJob>,
}

impl ClusterState {
    pub fn backfill(&self, id: &str) -> Option<&BackfillJob> {
        self.backfills.iter().find(|j| j.id == id)
    }

    fn running_backfill(&mut self, id: &str) -> Result<&mut BackfillJob, String> {
        let j = self
            .backfills
            .iter_mut()
            .find(|j| j.id == id)
            .ok_or_else(|| format!("no backfill job {id}"))?;
        if j.finished_ms.is_some() {
            return Err(format!("backfill job {id} has finished"));
        }
        Ok(j)
    }

    pub fn apply(&mut self, cmd: Command) -> Response {
        match self.try_apply(cmd) {
            Ok(()) => Response::Done,
            Err(why) => Response::Rejected(why),
        }
    }

    fn owner(&self, shard: u32) -> Result<&ShardOwner, String> {
        self.owners.get(shard as usize).ok_or_else(|| {
            format!(
                "no shard {shard}: the table has {} shards",
                self.owners.len()
            )
        })
    }

    /// The owner epoch check every write by an owner goes through.
    fn check_owner(&self, shard: u32, node: NodeId, epoch: u64) -> Result<(), String> {
        let o = self.owner(shard)?;
        if o.node != Some(node) || o.epoch != epoch {
            return Err(format!(
                "shard {shard}: node {node} with owner epoch {epoch} is not its owner (owner {:?}, epoch {}): fenced",
                o.node, o.epoch
            ));
        }
        Ok(())
    }

    fn known_node(&self, node: NodeId) -> Result<&NodeInfo, String> {
        self.nodes
            .get(&node)
            .ok_or_else(|| format!("node {node} is not a member"))
    }

    fn try_apply(&mut self, cmd: Command) -> Result<(), String> {
        match cmd {
            Command::Init {
                table,
                shards,
                sql,
                at_ms,
            } => {
                if self.shards == 0 {
                    if shards == 0 {
                        return Err("a table needs at least one shard".into());
                    }
                    if self.pipeline.version == 0 {
                        self.pipeline = PipelineVersion {
                            version: 1,
                            sql,
                            at_ms,
                        };
                    }
                    self.table = table;
                    self.shards = shards;
                    self.owners = vec![ShardOwner::default(); shards as usize];
                    self.checkpoints = vec![None; shards as usize];
                    self.segments = vec![Vec::new(); shards as usize];
                    Ok(())
                } else if self.shards == shards && self.table == table {
                    Ok(())
                } else {
                    Err(format!(
                        "the cluster runs table `{}` with {} shards, not `{table}` with {shards}: the shard count is fixed",
                        self.table, self.shards
                    ))
                }
            }
            Command::Join { node, addr, at_ms } => {
                let e = self.nodes.entry(node).or_insert(NodeInfo {
                    addr: addr.clone(),
                    state: NodeState::Active,
                    joined_ms: at_ms,
                });
                e.addr = addr;
                e.state = NodeState::Active;
                e.joined_ms = at_ms;
                Ok(())
            }
            Command::Drain { node } => {
                self.known_node(node)?;
                self.nodes.get_mut(&node).expect("known").state = NodeState::Draining;
                Ok(())
            }
            Command::Remove { node } => {
                self.known_node(node)?;
                if self.nodes[&node].state != NodeState::Down {
                    return Err(format!(
                        "node {node} is {:?}, not down: stop it first (drain it before, if it owns shards), and remove it once the cluster has marked it down",
                        self.nodes[&node].state
                    ));
                }
                self.nodes.remove(&node);
                for o in &mut self.owners {
                    if o.node == Some(node) {
                        o.node = None;
                    }
                    if o.moving_to == Some(node) {
                        o.moving_to = None;
                    }
                }
                Ok(())
            }
            Command::MarkDown { node } => {
                self.known_node(node)?;
                self.nodes.get_mut(&node).expect("known").state = NodeState::Down;
                // moves towards it cannot finish
                for o in &mut self.owners {
                    if o.moving_to == Some(node) {
                        o.moving_to = None;
                    }
                }
                Ok(())
            }
            Command::Assign {
                shard,
                node,
                expect_epoch,
            } => {
                if self.known_node(node)?.state != NodeState::Active {
                    return Err(format!("node {node} is not active"));
                }
                let o = self.owner(shard)?;
                if o.epoch != expect_epoch {
                    return Err(format!(
                        "shard {shard}: owner epoch is {}, not {expect_epoch}: the plan is stale",
                        o.epoch
                    ));
                }
                let o = &mut self.owners[shard as usize];
                o.node = Some(node);
                o.epoch += 1;
                o.moving_to = None;
                Ok(())
            }
            Command::StartMove {
                shard,
                to,
                expect_epoch,
            } => {
                if self.known_node(to)?.state != NodeState::Active {
                    return Err(format!("node {to} is not active"));
                }
                let o = self.owner(shard)?;
                if o.epoch != expect_epoch {
                    return Err(format!(
                        "shard {shard}: owner epoch is {}, not {expect_epoch}: the plan is stale",
                        o.epoch
                    ));
                }
                if o.node == Some(to) {
                    return Err(format!("shard {shard} is already on node {to}"));
                }
                if o.node.is_none() {
                    return Err(format!("shard {shard} has no owner to hand it off"));
                }
                self.owners[shard as usize].moving_to = Some(to);
                Ok(())
            }
            Command::Handoff {
                shard,
                from,
                owner_epoch,
            } => {
                self.check_owner(shard, from, owner_epoch)?;
                let o = &mut self.owners[shard as usize];
                let Some(to) = o.moving_to.take() else {
                    return Err(format!("shard {shard} is not moving"));
                };
                o.node = Some(to);
                o.epoch += 1;
                Ok(())
            }
            Command::Commit {
                checkpoint: c,
                add_segments,
                remove_segments,
            } => {
                self.check_owner(c.shard, c.owner, c.owner_epoch)?;
                let s = c.shard as usize;
                let (prev_seq, prev_offset) = self.checkpoints[s]
                    .as_ref()
                    .map_or((0, 0), |p| (p.seq, p.offset));
                if c.seq != prev_seq + 1 {
                    return Err(format!(
                        "shard {}: checkpoint {} does not follow the committed {prev_seq}",
                        c.shard, c.seq
                    ));
                }
                if c.offset < prev_offset {
                    return Err(format!(
                        "shard {}: checkpoint offset {} is behind the committed {prev_offset}",
                        c.shard, c.offset
                    ));
                }
                if let Some(bad) = add_segments.iter().find(|g| g.shard != c.shard) {
                    return Err(format!(
                        "shard {}: segment {} belongs to shard {}",
                        c.shard, bad.path, bad.shard
                    ));
                }
                let segs = &mut self.segments[s];
                if let Some(missing) = remove_segments.iter().find(|r| !segs.contains(r)) {
                    return Err(format!(
                        "shard {}: segment {} is not in the manifest",
                        c.shard, missing.path
                    ));
                }
                segs.retain(|g| !remove_segments.contains(g));
                segs.extend(add_segments);
                self.checkpoints[s] = Some(c);
                Ok(())
            }
            Command::SwapSegments {
                shard,
                owner,
                owner_epoch,
                remove,
                add,
            } => {
                self.check_owner(shard, owner, owner_epoch)?;
                let segs = &mut self.segments[shard as usize];
                if let Some(missing) = remove.iter().find(|r| !segs.contains(r)) {
                    return Err(format!(
                        "shard {shard}: segment {} is not in the manifest",
                        missing.path
                    ));
                }
                segs.retain(|g| !remove.contains(g));
                segs.extend(add);
                Ok(())
            }
            Command::OpenEpoch { epoch, at_ms } => {
                if epoch <= self.epoch {
                    return Err(format!("epoch {epoch} is not after {}", self.epoch));
                }
                self.epoch = epoch;
                self.epoch_ms = at_ms;
                Ok(())
            }
            Command::Barrier => Ok(()),
            Command::BackfillStart { id, request, at_ms } => {
                if self.shards == 0 {
                    return Err("the cluster is not initialized yet".into());
                }
                if self.backfill(&id).is_some() {
                    return Err(format!("backfill job {id} exists"));
                }
                self.backfills.push(BackfillJob {
                    id,
                    request,
                    started_ms: at_ms,
                    parts: BTreeMap::new(),
                    error: None,
                    finished_ms: None,
                });
                let finished = self
                    .backfills
                    .iter()
                    .filter(|j| j.finished_ms.is_some())
                    .count();
                if let Some(extra) = finished.checked_sub(KEEP_FINISHED_BACKFILLS) {
                    let mut drop = extra;
                    self.backfills.retain(|j| {
                        let old = drop > 0 && j.finished_ms.is_some();
                        drop -= usize::from(old);
                        !old
                    });
                }
                Ok(())
            }
            Command::BackfillPart { id, part, at_ms } => {
                let shards = self.shards;
                let j = self.running_backfill(&id)?;
                if part.shard >= shards {
                    return Err(format!("no shard {}", part.shard));
                }
                if j.parts.contains_key(&part.shard) {
                    return Err(format!(
                        "shard {} of backfill job {id} is done already",
                        part.shard
                    ));
                }
                j.parts.insert(part.shard, part);
                if j.parts.len() == shards as usize {
                    j.finished_ms = Some(at_ms);
                }
                Ok(())
            }
            Command::BackfillFail { id, error, at_ms } => {
                let j = self.running_backfill(&id)?;
                j.error = Some(error);
                j.finished_ms = Some(at_ms);
                Ok(())
            }
            Command::SetPipeline {
                sql,
                expect_version,
                at_ms,
            } => {
                if expect_version != self.pipeline.version {
                    return Err(format!(
                        "the cluster's pipeline is at version {}, not {expect_version}: another `views apply` came first; look at the views and apply again",
                        self.pipeline.version
                    ));
                }
                self.pipeline = PipelineVersion {
                    version: self.pipeline.version + 1,
                    sql,
                    at_ms,
                };
                Ok(())
            }
        }
    }

    /// The shards a node owns.
    pub fn owned_by(&self, node: NodeId) -> Vec<u32> {
        (0..self.shards)
            .filter(|&s| self.owners[s as usize].node == Some(node))
            .collect()
    }

    /// The lowest epoch every shard's last checkpoint has reached: the
    /// cluster checkpoint that is complete.
    pub fn completed_epoch(&self) -> u64 {
        self.checkpoints
            .iter()
            .map(|c| c.as_ref().map_or(0, |c| c.epoch))
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: u64, shards: u32) -> ClusterState {
        let mut st = ClusterState::default();
        st.apply(Command::Init {
            table: "t".into(),
            shards,
            sql: String::new(),
            at_ms: 0,
        })
        .into_result()
        .unwrap();
        for n in 1..=nodes {
            st.apply(Command::Join {
                node: n,
                addr: format!("127.0.0.1:{n}"),
                at_ms: 0,
            })
            .into_result()
            .unwrap();
        }
        st
    }

    fn ckpt(shard: u32, owner: NodeId, owner_epoch: u64, seq: u64, offset: u64) -> Command {
        Command::Commit {
            checkpoint: ShardCheckpoint {
                shard,
                owner,
                owner_epoch,
                epoch: 0,
                seq,
                offset,
                pipeline: "p".into(),
                snapshot: vec![],
                digest: String::new(),
                at_ms: 0,
            },
            add_segments: vec![SegmentInfo {
                kind: "training".into(),
                name: "v".into(),
                shard,
                path: format!("training/v/{shard}/{seq}"),
                from_offset: 0,
                to_offset: offset,
                min_time: 0,
                max_time: 0,
                rows: 1,
                bytes: 1,
                crc32: 0,
            }],
            remove_segments: vec![],
        }
    }

    #[test]
    fn only_a_down_node_is_removed_and_its_shards_become_orphans() {
        let mut st = cluster(2, 2);
        st.apply(Command::Assign {
            shard: 1,
            node: 2,
            expect_epoch: 0,
        })
        .into_result()
        .unwrap();
        let refused = st.apply(Command::Remove { node: 2 });
        assert!(matches!(refused, Response::Rejected(w) if w.contains("not down")));
        assert!(matches!(
            st.apply(Command::Remove { node: 9 }),
            Response::Rejected(_)
        ));
        st.apply(Command::MarkDown { node: 2 })
            .into_result()
            .unwrap();
        let epoch = st.owners[1].epoch;
        assert_eq!(st.apply(Command::Remove { node: 2 }), Response::Done);
        assert!(!st.nodes.contains_key(&2));
        assert_eq!(st.owners[1].node, None);
        // the owner epoch is kept: the next owner gets a newer one
        assert_eq!(st.owners[1].epoch, epoch);
    }

    #[test]
    fn a_backfill_job_finishes_when_every_shard_is_done_once() {
        let mut st = cluster(2, 2);
        let start = |id: &str| Command::BackfillStart {
            id: id.into(),
            request: "{}".into(),
            at_ms: 1,
        };
        let part = |id: &str, shard, node| Command::BackfillPart {
            id: id.into(),
            part: BackfillPart {
                shard,
                node,
                path: format!("backfill/{id}/{shard}-{node}"),
                crc32: 0,
                rows: 1,
                events: 1,
                millis: 0.0,
            },
            at_ms: 9,
        };
        assert_eq!(st.apply(start("a")), Response::Done);
        assert!(matches!(st.apply(start("a")), Response::Rejected(_)));
        assert_eq!(st.apply(part("a", 0, 1)), Response::Done);
        // the shard's next owner finished it too: the first part stays
        assert!(
            matches!(st.apply(part("a", 0, 2)), Response::Rejected(w) if w.contains("done already"))
        );
        assert_eq!(st.backfill("a").unwrap().parts[&0].node, 1);
        assert_eq!(st.backfill("a").unwrap().finished_ms, None);
        assert!(matches!(st.apply(part("a", 5, 1)), Response::Rejected(_)));
        assert_eq!(st.apply(part("a", 1, 2)), Response::Done);
        assert_eq!(st.backfill("a").unwrap().finished_ms, Some(9));
        assert!(
            matches!(st.apply(part("a", 1, 1)), Response::Rejected(w) if w.contains("finished"))
        );
        // a failed job ends too
        st.apply(start("b")).into_result().unwrap();
        st.apply(Command::BackfillFail {
            id: "b".into(),
            error: "boom".into(),
            at_ms: 3,
        })
        .into_result()
        .unwrap();
        assert_eq!(st.backfill("b").unwrap().error.as_deref(), Some("boom"));
        // only the last finished jobs are kept; running ones always
        st.apply(start("running")).into_result().unwrap();
        for i in 0..KEEP_FINISHED_BACKFILLS + 3 {
            let id = format!("j{i}");
            st.apply(start(&id)).into_result().unwrap();
            st.apply(Command::BackfillFail {
                id,
                error: "x".into(),
                at_ms: 4,
            })
            .into_result()
            .unwrap();
        }
        assert!(st.backfill("running").is_some());
        assert!(st.backfill("a").is_none());
        let finished = st
            .backfills
            .iter()
            .filter(|j| j.finished_ms.is_some())
            .count();
        assert!(finished <= KEEP_FINISHED_BACKFILLS + 1, "{finished}");
    }

    #[test]
    fn init_sets_the_first_pipeline_and_applies_follow_its_version() {
        let mut st = ClusterState::default();
        let init = |sql: &str| Command::Init {
            table: "t".into(),
            shards: 2,
            sql: sql.into(),
            at_ms: 5,
        };
        assert_eq!(st.apply(init("first")), Response::Done);
        assert_eq!(st.pipeline.version, 1);
        assert_eq!(st.pipeline.sql, "first");
        // a second Init (another node's) keeps the cluster's pipeline
        assert_eq!(st.apply(init("other")), Response::Done);
        assert_eq!(st.pipeline.sql, "first");
        let set = |sql: &str, expect_version| Command::SetPipeline {
            sql: sql.into(),
            expect_version,
            at_ms: 6,
        };
        assert_eq!(st.apply(set("second", 1)), Response::Done);
        assert_eq!(
            (st.pipeline.version, st.pipeline.sql.as_str()),
            (2, "second")
        );
        // an apply based on version 1 came too late
        assert!(
            matches!(st.apply(set("third", 1)), Response::Rejected(w) if w.contains("version 2"))
        );
        assert_eq!(st.pipeline.sql, "second");
    }

    #[test]
    fn a_commit_replaces_segments_only_if_the_manifest_has_them() {
        let mut st = cluster(1, 1);
        st.apply(Command::Assign {
            shard: 0,
            node: 1,
            expect_epoch: 0,
        })
        .into_result()
        .unwrap();
        let e = st.owners[0].epoch;
        st.apply(ckpt(0, 1, e, 1, 10)).into_result().unwrap();
        let old = st.segments[0][0].clone();
        let mut next = ckpt(0, 1, e, 2, 10);
        let Command::Commit {
            remove_segments,
            add_segments,
            ..
        } = &mut next
        else {
            unreachable!()
        };
        remove_segments.push(old.clone());
        add_segments[0].path = "training/v/0/rebuilt".into();
        let mut missing = next.clone();
        if let Command::Commit {
            remove_segments, ..
        } = &mut missing
        {
            remove_segments[0].path = "not/there".into();
        }
        assert!(
            matches!(st.apply(missing), Response::Rejected(w) if w.contains("not in the manifest"))
        );
        assert_eq!(st.checkpoints[0].as_ref().unwrap().seq, 1);
        assert_eq!(st.apply(next), Response::Done);
        let paths: Vec<&str> = st.segments[0].iter().map(|g| g.path.as_str()).collect();
        assert_eq!(paths, ["training/v/0/rebuilt"]);
    }

    #[test]
    fn a_replaced_owner_can_neither_commit_nor_publish() {
        let mut st = cluster(2, 2);
        st.apply(Command::Assign {
            shard: 0,
            node: 1,
            expect_epoch: 0,
        })
        .into_result()
        .unwrap();
        assert_eq!(st.apply(ckpt(0, 1, 1, 1, 10)), Response::Done);
        // node 1 is cut off; the coordinator gives its shard to node 2
        st.apply(Command::MarkDown { node: 1 })
            .into_result()
            .unwrap();
        st.apply(Command::Assign {
            shard: 0,
            node: 2,
            expect_epoch: 1,
        })
        .into_result()
        .unwrap();
        // the zombie's next checkpoint is fenced: no state, no rows
        let before = st.clone();
        assert!(
            matches!(st.apply(ckpt(0, 1, 1, 2, 20)), Response::Rejected(w) if w.contains("fenced"))
        );
        assert_eq!(st, before);
        // the new owner continues from the committed checkpoint
        assert_eq!(st.apply(ckpt(0, 2, 2, 2, 20)), Response::Done);
        assert_eq!(st.segments[0].len(), 2);
        // and a stale plan cannot take the shard again
        assert!(matches!(
            st.apply(Command::Assign {
                shard: 0,
                node: 1,
                expect_epoch: 1
            }),
            Response::Rejected(_)
        ));
    }

    #[test]
    fn checkpoints_follow_in_sequence_and_never_go_back() {
        let mut st = cluster(1, 1);
        st.apply(Command::Assign {
            shard: 0,
            node: 1,
            expect_epoch: 0,
        });
        assert!(matches!(
            st.apply(ckpt(0, 1, 1, 2, 5)),
            Response::Rejected(_)
        ));
        assert_eq!(st.apply(ckpt(0, 1, 1, 1, 5)), Response::Done);
        // a duplicate proposal (retried after a lost reply) is refused
        assert!(matches!(
            st.apply(ckpt(0, 1, 1, 1, 5)),
            Response::Rejected(_)
        ));
        assert!(matches!(
            st.apply(ckpt(0, 1, 1, 2, 4)),
            Response::Rejected(_)
        ));
        assert_eq!(st.apply(ckpt(0, 1, 1, 2, 5)), Response::Done);
        assert_eq!(st.segments[0].len(), 2);
    }

    #[test]
    fn a_graceful_move_hands_off_with_a_new_epoch() {
        let mut st = cluster(2, 1);
        st.apply(Command::Assign {
            shard: 0,
            node: 1,
            expect_epoch: 0,
        });
        st.apply(Command::StartMove {
            shard: 0,
            to: 2,
            expect_epoch: 1,
        })
        .into_result()
        .unwrap();
        // the owner still commits its last checkpoint during the move
        assert_eq!(st.apply(ckpt(0, 1, 1, 1, 7)), Response::Done);
        // only the owner, with its epoch, hands off
        assert!(matches!(
            st.apply(Command::Handoff {
                shard: 0,
                from: 2,
                owner_epoch: 1
            }),
            Response::Rejected(_)
        ));
        st.apply(Command::Handoff {
            shard: 0,
            from: 1,
            owner_epoch: 1,
        })
        .into_result()
        .unwrap();
        assert_eq!(
            st.owners[0],
            ShardOwner {
                node: Some(2),
                epoch: 2,
                moving_to: None
            }
        );
        assert!(matches!(
            st.apply(ckpt(0, 1, 1, 2, 9)),
            Response::Rejected(_)
        ));
        assert_eq!(st.apply(ckpt(0, 2, 2, 2, 9)), Response::Done);
        assert_eq!(st.owned_by(2), vec![0]);
    }

    #[test]
    fn the_shard_count_is_fixed() {
        let mut st = cluster(1, 4);
        assert_eq!(
            st.apply(Command::Init {
                table: "t".into(),
                shards: 4,
                sql: String::new(),
                at_ms: 0,
            }),
            Response::Done
        );
        assert!(matches!(
            st.apply(Command::Init {
                table: "t".into(),
                shards: 8,
                sql: String::new(),
                at_ms: 0,
            }),
            Response::Rejected(_)
        ));
    }

    #[test]
    fn compaction_swaps_only_manifest_segments_by_the_owner() {
        let mut st = cluster(2, 1);
        st.apply(Command::Assign {
            shard: 0,
            node: 1,
            expect_epoch: 0,
        });
        st.apply(ckpt(0, 1, 1, 1, 5));
        st.apply(ckpt(0, 1, 1, 2, 9));
        let old = st.segments[0].clone();
        let mut merged = old[0].clone();
        merged.path = "merged".into();
        merged.to_offset = 9;
        let swap = |owner, remove: Vec<SegmentInfo>| Command::SwapSegments {
            shard: 0,
            owner,
            owner_epoch: 1,
            remove,
            add: vec![merged.clone()],
        };
        assert!(matches!(
            st.apply(swap(2, old.clone())),
            Response::Rejected(_)
        ));
        assert_eq!(st.apply(swap(1, old.clone())), Response::Done);
        assert_eq!(st.segments[0], vec![merged.clone()]);
        assert!(matches!(st.apply(swap(1, old)), Response::Rejected(_)));
    }
}
