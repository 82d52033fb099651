//! The state machine's rules, command by command.
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
    assert!(matches!(
        refused,
        Response::Rejected(Rejection::NotDown { .. })
    ));
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
    assert!(matches!(
        st.apply(part("a", 0, 2)),
        Response::Rejected(Rejection::PartDone { .. })
    ));
    assert_eq!(st.backfill("a").unwrap().parts[&0].node, 1);
    assert_eq!(st.backfill("a").unwrap().finished_ms, None);
    assert!(matches!(st.apply(part("a", 5, 1)), Response::Rejected(_)));
    assert_eq!(st.apply(part("a", 1, 2)), Response::Done);
    assert_eq!(st.backfill("a").unwrap().finished_ms, Some(9));
    assert!(matches!(
        st.apply(part("a", 1, 1)),
        Response::Rejected(Rejection::BackfillFinished(_))
    ));
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
    assert!(matches!(
        st.apply(set("third", 1)),
        Response::Rejected(Rejection::PipelineMoved { version: 2, .. })
    ));
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
    assert!(matches!(
        st.apply(missing),
        Response::Rejected(Rejection::NotInManifest { .. })
    ));
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
    assert!(matches!(
        st.apply(ckpt(0, 1, 1, 2, 20)),
        Response::Rejected(Rejection::Fenced { .. })
    ));
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
    let old = st.segments[0].to_vec();
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
    assert_eq!(*st.segments[0], vec![merged.clone()]);
    assert!(matches!(st.apply(swap(1, old)), Response::Rejected(_)));
}

#[test]
fn the_first_topic_id_is_kept_and_another_for_the_same_topic_refused() {
    let mut st = cluster(1, 2);
    let rec = |topic: &str, id: &str| Command::RecordTopic {
        topic: topic.into(),
        topic_id: id.into(),
    };
    st.apply(rec("t", "AAA")).into_result().unwrap();
    st.apply(rec("t", "AAA")).into_result().unwrap();
    let r = st.apply(rec("t", "BBB")).into_result().unwrap_err();
    assert!(matches!(r, Rejection::TopicRecreated { .. }), "{r}");
    assert_eq!(st.topic, Some(("t".into(), "AAA".into())));
    // the table's topic renamed in the config: the new one is recorded
    st.apply(rec("t2", "CCC")).into_result().unwrap();
    assert_eq!(st.topic, Some(("t2".into(), "CCC".into())));
}

#[test]
fn states_stored_by_earlier_versions_still_decode() {
    let mut st = cluster(2, 3);
    // the fields as the first versions stored them: no `topic`, no id
    let v1 = bincode::serde::encode_to_vec(
        (
            &st.table,
            st.shards,
            &st.nodes,
            &st.owners,
            &st.checkpoints,
            &st.segments,
            st.epoch,
            st.epoch_ms,
            &st.pipeline,
            &st.backfills,
        ),
        bincode::config::standard(),
    )
    .unwrap();
    st.topic = Some(("t".into(), "id-1".into()));
    // then with the topic, still without the cluster's id
    let v2 = bincode::serde::encode_to_vec(
        (
            &st.table,
            st.shards,
            &st.nodes,
            &st.owners,
            &st.checkpoints,
            &st.segments,
            st.epoch,
            st.epoch_ms,
            &st.pipeline,
            &st.backfills,
            &st.topic,
        ),
        bincode::config::standard(),
    )
    .unwrap();
    let cfg = bincode::config::standard();
    for old in [&v1, &v2] {
        let new: Result<(ClusterState, usize), _> = bincode::serde::decode_from_slice(old, cfg);
        assert!(new.is_err(), "the old bytes are short of the new state");
    }
    assert!(bincode::serde::decode_from_slice::<ClusterStateV2, _>(&v1, cfg).is_err());
    let (old, _): (ClusterStateV2, usize) = bincode::serde::decode_from_slice(&v2, cfg).unwrap();
    let expect = ClusterState {
        cluster_id: String::new(),
        ..st.clone()
    };
    assert_eq!(ClusterState::from(old), expect);
    let (old, _): (ClusterStateV1, usize) = bincode::serde::decode_from_slice(&v1, cfg).unwrap();
    assert_eq!(
        ClusterState::from(old),
        ClusterState {
            topic: None,
            ..expect
        }
    );
}

#[test]
fn the_first_command_names_the_cluster_and_nothing_renames_it() {
    let st = cluster(3, 2);
    assert_eq!(st.cluster_id.len(), 20, "{}", st.cluster_id);
    // the same log gives the same id on every member
    assert_eq!(cluster(3, 2).cluster_id, st.cluster_id);
    let mut other = ClusterState::default();
    other.apply(Command::Join {
        node: 1,
        addr: "127.0.0.1:1".into(),
        at_ms: 1_700_000_000_000,
    });
    let mut again = ClusterState::default();
    again.apply(Command::Join {
        node: 1,
        addr: "127.0.0.1:1".into(),
        at_ms: 1_700_000_000_001,
    });
    assert_ne!(other.cluster_id, again.cluster_id, "founded a moment apart");
    assert_ne!(other.cluster_id, st.cluster_id);
    let named = other.cluster_id.clone();
    other.apply(Command::Join {
        node: 2,
        addr: "127.0.0.1:2".into(),
        at_ms: 1_700_000_009_000,
    });
    other.apply(Command::Init {
        table: "t".into(),
        shards: 2,
        sql: String::new(),
        at_ms: 5,
    });
    assert_eq!(other.cluster_id, named);
    // a state from before ids were kept stays unnamed: its members would
    // each name it from another entry
    let mut old = ClusterState {
        cluster_id: String::new(),
        ..st.clone()
    };
    old.apply(Command::Join {
        node: 2,
        addr: "127.0.0.1:2".into(),
        at_ms: 7,
    });
    assert!(old.cluster_id.is_empty());
}

#[test]
fn a_drained_node_stays_draining_until_activated() {
    let mut st = cluster(3, 4);
    let state = |st: &ClusterState| st.nodes[&2].state;
    st.apply(Command::Drain { node: 2 }).into_result().unwrap();
    assert_eq!(state(&st), NodeState::Draining);
    // it crashes, is marked down, and comes back
    st.apply(Command::MarkDown { node: 2 })
        .into_result()
        .unwrap();
    assert_eq!(state(&st), NodeState::Down);
    st.apply(Command::Join {
        node: 2,
        addr: "127.0.0.1:2".into(),
        at_ms: 9,
    });
    assert_eq!(state(&st), NodeState::Draining, "back, and draining still");
    st.apply(Command::Activate { node: 2 })
        .into_result()
        .unwrap();
    assert_eq!(state(&st), NodeState::Active);
    st.apply(Command::MarkDown { node: 2 })
        .into_result()
        .unwrap();
    st.apply(Command::Join {
        node: 2,
        addr: "127.0.0.1:2".into(),
        at_ms: 10,
    });
    assert_eq!(state(&st), NodeState::Active, "activated: back active");
    // a node drained while down stays down, and comes back draining
    st.apply(Command::MarkDown { node: 3 })
        .into_result()
        .unwrap();
    st.apply(Command::Drain { node: 3 }).into_result().unwrap();
    assert_eq!(st.nodes[&3].state, NodeState::Down);
    st.apply(Command::Join {
        node: 3,
        addr: "127.0.0.1:3".into(),
        at_ms: 11,
    });
    assert_eq!(st.nodes[&3].state, NodeState::Draining);
    // removed, it is forgotten: a node with its id later is a new one
    st.apply(Command::MarkDown { node: 3 })
        .into_result()
        .unwrap();
    st.apply(Command::Remove { node: 3 }).into_result().unwrap();
    assert!(!st.draining.contains(&3));
    assert!(matches!(
        st.apply(Command::Activate { node: 7 }),
        Response::Rejected(Rejection::UnknownNode(7))
    ));
}

/// Each command's first encoded byte is its position in `Command`: Raft
/// logs written by earlier releases hold these, so a command added in the
/// middle would make them read as others.
#[test]
fn commands_keep_their_wire_positions() {
    let node = 1;
    let all = [
        Command::Init {
            table: String::new(),
            shards: 1,
            sql: String::new(),
            at_ms: 0,
        },
        Command::Join {
            node,
            addr: String::new(),
            at_ms: 0,
        },
        Command::Drain { node },
        Command::MarkDown { node },
        Command::Remove { node },
        Command::Assign {
            shard: 0,
            node,
            expect_epoch: 0,
        },
        Command::StartMove {
            shard: 0,
            to: node,
            expect_epoch: 0,
        },
        Command::Handoff {
            shard: 0,
            from: node,
            owner_epoch: 0,
        },
        Command::Commit {
            checkpoint: match ckpt(0, 1, 1, 1, 0) {
                Command::Commit { checkpoint, .. } => checkpoint,
                _ => unreachable!(),
            },
            add_segments: vec![],
            remove_segments: vec![],
        },
        Command::SwapSegments {
            shard: 0,
            owner: node,
            owner_epoch: 0,
            remove: vec![],
            add: vec![],
        },
        Command::OpenEpoch { epoch: 0, at_ms: 0 },
        Command::SetPipeline {
            sql: String::new(),
            expect_version: 0,
            at_ms: 0,
        },
        Command::Barrier,
        Command::BackfillStart {
            id: String::new(),
            request: String::new(),
            at_ms: 0,
        },
        Command::BackfillPart {
            id: String::new(),
            part: BackfillPart {
                shard: 0,
                node,
                path: String::new(),
                crc32: 0,
                rows: 0,
                events: 0,
                millis: 0.0,
            },
            at_ms: 0,
        },
        Command::BackfillFail {
            id: String::new(),
            error: String::new(),
            at_ms: 0,
        },
        Command::RecordTopic {
            topic: String::new(),
            topic_id: String::new(),
        },
        Command::Activate { node },
        Command::CancelMove {
            shard: 0,
            expect_epoch: 0,
        },
    ];
    for (i, cmd) in all.iter().enumerate() {
        let b = bincode::serde::encode_to_vec(cmd, bincode::config::standard()).unwrap();
        assert_eq!(b[0] as usize, i, "{cmd:?} moved");
    }
}

#[test]
fn a_cancelled_move_leaves_the_owner_and_a_late_handoff_is_refused() {
    let mut st = cluster(2, 1);
    st.apply(Command::Assign {
        shard: 0,
        node: 1,
        expect_epoch: 0,
    })
    .into_result()
    .unwrap();
    let epoch = st.owners[0].epoch;
    st.apply(Command::StartMove {
        shard: 0,
        to: 2,
        expect_epoch: epoch,
    })
    .into_result()
    .unwrap();
    // a stale plan cannot cancel it
    assert!(matches!(
        st.apply(Command::CancelMove {
            shard: 0,
            expect_epoch: epoch + 1
        }),
        Response::Rejected(Rejection::StalePlan { .. })
    ));
    st.apply(Command::CancelMove {
        shard: 0,
        expect_epoch: epoch,
    })
    .into_result()
    .unwrap();
    assert_eq!(st.owners[0].node, Some(1));
    assert_eq!(st.owners[0].moving_to, None);
    assert_eq!(st.owners[0].epoch, epoch);
    // the owner's hand-off, late: refused, the owner keeps the shard
    assert!(matches!(
        st.apply(Command::Handoff {
            shard: 0,
            from: 1,
            owner_epoch: epoch
        }),
        Response::Rejected(Rejection::NotMoving(0))
    ));
    assert_eq!(st.owners[0].node, Some(1));
}

/// A published state shares the manifests and the pipeline with the next:
/// a command copies only the manifest it changes (applies used to copy
/// the whole state, every manifest of every shard, twice).
#[test]
fn a_command_copies_only_the_manifest_it_changes() {
    let mut st = cluster(2, 4);
    st.apply(Command::Assign {
        shard: 0,
        node: 1,
        expect_epoch: 0,
    })
    .into_result()
    .unwrap();
    let before = st.clone();
    st.apply(ckpt(0, 1, 1, 1, 10)).into_result().unwrap();
    assert!(!std::sync::Arc::ptr_eq(
        &before.segments[0],
        &st.segments[0]
    ));
    for s in 1..4 {
        assert!(std::sync::Arc::ptr_eq(&before.segments[s], &st.segments[s]));
    }
    assert!(std::sync::Arc::ptr_eq(&before.pipeline, &st.pipeline));
    assert_eq!(before.segments[0].len() + 1, st.segments[0].len());
}
