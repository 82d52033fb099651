//! The state machine's rules: one function per command over shared guards
//! (`owner`, `check_owner`, `known_node`, `active_node`, `expect_epoch`).
//! Each either changes the state and returns `Ok`, or changes nothing and
//! says why.

use super::*;

type Applied = Result<(), Rejection>;

impl ClusterState {
    pub(super) fn try_apply(&mut self, cmd: Command) -> Applied {
        // only the first command of a new cluster names it: every member
        // applies that same entry first (or gets a snapshot that holds the
        // name). A cluster founded by an earlier release stays unnamed:
        // its members replay their logs from their own snapshots, and the
        // first entry each saw would differ.
        if self.cluster_id.is_empty() && self.nodes.is_empty() && self.shards == 0 {
            self.name_cluster(&cmd);
        }
        match cmd {
            Command::Init {
                table,
                shards,
                sql,
                at_ms,
            } => self.init(table, shards, sql, at_ms),
            Command::Join { node, addr, at_ms } => {
                self.join(node, addr, at_ms);
                Ok(())
            }
            Command::Drain { node } => self.drain(node),
            Command::Activate { node } => self.activate(node),
            Command::CancelMove {
                shard,
                expect_epoch,
            } => {
                self.expect_epoch(shard, expect_epoch)?;
                match self.owners[shard as usize].moving_to.take() {
                    Some(_) => Ok(()),
                    None => Err(Rejection::NotMoving(shard)),
                }
            }
            Command::Remove { node } => self.remove(node),
            Command::MarkDown { node } => self.mark_down(node),
            Command::Assign {
                shard,
                node,
                expect_epoch,
            } => self.assign(shard, node, expect_epoch),
            Command::StartMove {
                shard,
                to,
                expect_epoch,
            } => self.start_move(shard, to, expect_epoch),
            Command::Handoff {
                shard,
                from,
                owner_epoch,
            } => self.handoff(shard, from, owner_epoch),
            Command::Commit {
                checkpoint,
                add_segments,
                remove_segments,
            } => self.commit(checkpoint, add_segments, remove_segments),
            Command::SwapSegments {
                shard,
                owner,
                owner_epoch,
                remove,
                add,
            } => {
                self.check_owner(shard, owner, owner_epoch)?;
                self.swap_segments(shard, &remove, add)
            }
            Command::OpenEpoch { epoch, at_ms } => self.open_epoch(epoch, at_ms),
            Command::Barrier => Ok(()),
            Command::BackfillStart { id, request, at_ms } => {
                self.backfill_start(id, request, at_ms)
            }
            Command::BackfillPart { id, part, at_ms } => self.backfill_part(&id, part, at_ms),
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
            } => self.set_pipeline(sql, expect_version, at_ms),
            Command::RecordTopic { topic, topic_id } => match &self.topic {
                None => {
                    self.topic = Some((topic, topic_id));
                    Ok(())
                }
                Some((t, id)) if *t == topic && *id == topic_id => Ok(()),
                // another topic name (the table's topic was changed in the
                // config): its id is the one to keep from now on
                Some((t, _)) if *t != topic => {
                    self.topic = Some((topic, topic_id));
                    Ok(())
                }
                Some((t, id)) => Err(Rejection::TopicRecreated {
                    topic: t.clone(),
                    recorded: id.clone(),
                    found: topic_id,
                }),
            },
        }
    }

    // --- guards

    pub(super) fn owner(&self, shard: u32) -> Result<&ShardOwner, Rejection> {
        self.owners
            .get(shard as usize)
            .ok_or(Rejection::NoSuchShard {
                shard,
                shards: self.owners.len() as u32,
            })
    }

    /// The owner epoch check every write by an owner goes through.
    pub(super) fn check_owner(&self, shard: u32, node: NodeId, epoch: u64) -> Applied {
        let o = self.owner(shard)?;
        if o.node != Some(node) || o.epoch != epoch {
            return Err(Rejection::Fenced {
                shard,
                node,
                epoch,
                owner: o.node,
                owner_epoch: o.epoch,
            });
        }
        Ok(())
    }

    pub(super) fn known_node(&self, node: NodeId) -> Result<&NodeInfo, Rejection> {
        self.nodes.get(&node).ok_or(Rejection::UnknownNode(node))
    }

    fn active_node(&self, node: NodeId) -> Applied {
        if self.known_node(node)?.state != NodeState::Active {
            return Err(Rejection::NotActive(node));
        }
        Ok(())
    }

    /// A plan made under owner epoch `expected` is stale once the epoch
    /// moved on.
    fn expect_epoch(&self, shard: u32, expected: u64) -> Result<&ShardOwner, Rejection> {
        let o = self.owner(shard)?;
        if o.epoch != expected {
            return Err(Rejection::StalePlan {
                shard,
                epoch: o.epoch,
                expected,
            });
        }
        Ok(o)
    }

    pub(super) fn running_backfill(&mut self, id: &str) -> Result<&mut BackfillJob, Rejection> {
        let j = self
            .backfills
            .iter_mut()
            .find(|j| j.id == id)
            .ok_or_else(|| Rejection::NoBackfill(id.to_string()))?;
        if j.finished_ms.is_some() {
            return Err(Rejection::BackfillFinished(id.to_string()));
        }
        Ok(j)
    }

    // --- membership

    fn init(&mut self, table: String, shards: u32, sql: String, at_ms: i64) -> Applied {
        if self.shards != 0 {
            if self.shards == shards && self.table == table {
                return Ok(());
            }
            return Err(Rejection::OtherTable {
                table: self.table.clone(),
                shards: self.shards,
                asked: table,
                asked_shards: shards,
            });
        }
        if shards == 0 {
            return Err(Rejection::NoShards);
        }
        if self.pipeline.version == 0 {
            self.pipeline = std::sync::Arc::new(PipelineVersion {
                version: 1,
                sql,
                at_ms,
            });
        }
        self.table = table;
        self.shards = shards;
        self.owners = vec![ShardOwner::default(); shards as usize];
        self.checkpoints = vec![None; shards as usize];
        self.segments = vec![Default::default(); shards as usize];
        Ok(())
    }

    /// Gives a new cluster its id from its first `Init` or `Join`: every
    /// member derives the same id; the time in it (the proposer's clock)
    /// tells apart clusters founded by the same node id at the same
    /// address.
    fn name_cluster(&mut self, cmd: &Command) {
        let mut h = crc32fast::Hasher::new();
        let at_ms = match cmd {
            Command::Init {
                table,
                shards,
                sql,
                at_ms,
            } => {
                h.update(table.as_bytes());
                h.update(&shards.to_le_bytes());
                h.update(sql.as_bytes());
                *at_ms
            }
            Command::Join { node, addr, at_ms } => {
                h.update(&node.to_le_bytes());
                h.update(addr.as_bytes());
                *at_ms
            }
            _ => return,
        };
        self.cluster_id = format!(
            "{:08x}{:012x}",
            h.finalize(),
            at_ms as u64 & 0xffff_ffff_ffff
        );
    }

    fn join(&mut self, node: NodeId, addr: String, at_ms: i64) {
        let e = self.nodes.entry(node).or_insert(NodeInfo {
            addr: addr.clone(),
            state: NodeState::Active,
            joined_ms: at_ms,
        });
        e.addr = addr;
        e.state = if self.draining.contains(&node) {
            NodeState::Draining
        } else {
            NodeState::Active
        };
        e.joined_ms = at_ms;
    }

    /// Marks a node draining until activated; one marked down stays down
    /// (it is draining when it comes back).
    fn drain(&mut self, node: NodeId) -> Applied {
        let info = self.known_node(node)?;
        if info.state != NodeState::Down {
            self.set_node_state(node, NodeState::Draining)?;
        }
        self.draining.insert(node);
        Ok(())
    }

    fn activate(&mut self, node: NodeId) -> Applied {
        let info = self.known_node(node)?;
        if info.state == NodeState::Draining {
            self.set_node_state(node, NodeState::Active)?;
        }
        self.draining.remove(&node);
        Ok(())
    }

    fn set_node_state(&mut self, node: NodeId, state: NodeState) -> Applied {
        self.known_node(node)?;
        self.nodes.get_mut(&node).expect("known").state = state;
        Ok(())
    }

    fn remove(&mut self, node: NodeId) -> Applied {
        let state = self.known_node(node)?.state;
        if state != NodeState::Down {
            return Err(Rejection::NotDown { node, state });
        }
        self.nodes.remove(&node);
        self.draining.remove(&node);
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

    fn mark_down(&mut self, node: NodeId) -> Applied {
        self.set_node_state(node, NodeState::Down)?;
        // moves towards it cannot finish
        for o in &mut self.owners {
            if o.moving_to == Some(node) {
                o.moving_to = None;
            }
        }
        Ok(())
    }

    // --- ownership

    fn assign(&mut self, shard: u32, node: NodeId, expect_epoch: u64) -> Applied {
        self.active_node(node)?;
        self.expect_epoch(shard, expect_epoch)?;
        let o = &mut self.owners[shard as usize];
        o.node = Some(node);
        o.epoch += 1;
        o.moving_to = None;
        Ok(())
    }

    fn start_move(&mut self, shard: u32, to: NodeId, expect_epoch: u64) -> Applied {
        self.active_node(to)?;
        let o = self.expect_epoch(shard, expect_epoch)?;
        if o.node == Some(to) {
            return Err(Rejection::AlreadyOwned { shard, node: to });
        }
        if o.node.is_none() {
            return Err(Rejection::NoOwner(shard));
        }
        self.owners[shard as usize].moving_to = Some(to);
        Ok(())
    }

    fn handoff(&mut self, shard: u32, from: NodeId, owner_epoch: u64) -> Applied {
        self.check_owner(shard, from, owner_epoch)?;
        let o = &mut self.owners[shard as usize];
        let Some(to) = o.moving_to.take() else {
            return Err(Rejection::NotMoving(shard));
        };
        o.node = Some(to);
        o.epoch += 1;
        Ok(())
    }

    // --- checkpoints and segments

    fn commit(
        &mut self,
        c: ShardCheckpoint,
        add: Vec<SegmentInfo>,
        remove: Vec<SegmentInfo>,
    ) -> Applied {
        self.check_owner(c.shard, c.owner, c.owner_epoch)?;
        let (committed, committed_offset) = self.checkpoints[c.shard as usize]
            .as_ref()
            .map_or((0, 0), |p| (p.seq, p.offset));
        if c.seq != committed + 1 {
            return Err(Rejection::SequenceGap {
                shard: c.shard,
                seq: c.seq,
                committed,
            });
        }
        if c.offset < committed_offset {
            return Err(Rejection::OffsetBehind {
                shard: c.shard,
                offset: c.offset,
                committed: committed_offset,
            });
        }
        if let Some(bad) = add.iter().find(|g| g.shard != c.shard) {
            return Err(Rejection::ForeignSegment {
                shard: c.shard,
                path: bad.path.clone(),
                belongs_to: bad.shard,
            });
        }
        let shard = c.shard;
        self.swap_segments(shard, &remove, add)?;
        self.checkpoints[shard as usize] = Some(c);
        Ok(())
    }

    /// Replaces `remove` by `add` in a shard's manifest; refused (changing
    /// nothing) if something to remove is not there.
    fn swap_segments(
        &mut self,
        shard: u32,
        remove: &[SegmentInfo],
        add: Vec<SegmentInfo>,
    ) -> Applied {
        let segs = std::sync::Arc::make_mut(&mut self.segments[shard as usize]);
        if let Some(missing) = remove.iter().find(|r| !segs.contains(r)) {
            return Err(Rejection::NotInManifest {
                shard,
                path: missing.path.clone(),
            });
        }
        segs.retain(|g| !remove.contains(g));
        segs.extend(add);
        Ok(())
    }

    fn open_epoch(&mut self, epoch: u64, at_ms: i64) -> Applied {
        if epoch <= self.epoch {
            return Err(Rejection::StaleEpoch {
                epoch,
                current: self.epoch,
            });
        }
        self.epoch = epoch;
        self.epoch_ms = at_ms;
        Ok(())
    }

    fn set_pipeline(&mut self, sql: String, expect_version: u64, at_ms: i64) -> Applied {
        if expect_version != self.pipeline.version {
            return Err(Rejection::PipelineMoved {
                version: self.pipeline.version,
                expected: expect_version,
            });
        }
        self.pipeline = std::sync::Arc::new(PipelineVersion {
            version: self.pipeline.version + 1,
            sql,
            at_ms,
        });
        Ok(())
    }

    // --- backfill jobs

    fn backfill_start(&mut self, id: String, request: String, at_ms: i64) -> Applied {
        if self.shards == 0 {
            return Err(Rejection::NotInitialized);
        }
        if self.backfill(&id).is_some() {
            return Err(Rejection::BackfillExists(id));
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

    fn backfill_part(&mut self, id: &str, part: BackfillPart, at_ms: i64) -> Applied {
        let shards = self.shards;
        let j = self.running_backfill(id)?;
        if part.shard >= shards {
            return Err(Rejection::NoSuchShard {
                shard: part.shard,
                shards,
            });
        }
        if j.parts.contains_key(&part.shard) {
            return Err(Rejection::PartDone {
                id: id.to_string(),
                shard: part.shard,
            });
        }
        j.parts.insert(part.shard, part);
        if j.parts.len() == shards as usize {
            j.finished_ms = Some(at_ms);
        }
        Ok(())
    }
}
