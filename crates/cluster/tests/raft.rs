//! Three control-plane members over real HTTP on loopback: joining, the
//! cluster secret, replication, and a new leader after the old one stops.

use lockstep_cluster::state::{Command, NodeState, Response};
use lockstep_cluster::{ClusterError, ControlPlane, CpConfig};
use std::sync::Arc;
use std::time::Duration;

struct Member {
    cp: Arc<ControlPlane>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn listener() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

async fn member(node: u64, seeds: Vec<String>, secret: &str) -> Result<Member, ClusterError> {
    let (l, addr) = listener().await;
    member_at(node, l, addr, seeds, None, secret).await
}

async fn member_at(
    node: u64,
    l: tokio::net::TcpListener,
    addr: String,
    seeds: Vec<String>,
    bootstrap_expect: Option<usize>,
    secret: &str,
) -> Result<Member, ClusterError> {
    let dir = tempfile::tempdir().unwrap();
    // the server must answer before the member joins (the leader calls back)
    let slot: Arc<tokio::sync::OnceCell<Arc<ControlPlane>>> = Default::default();
    let router_slot = slot.clone();
    let server = tokio::spawn(async move {
        let cp = loop {
            if let Some(cp) = router_slot.get() {
                break cp.clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        axum::serve(l, cp.router()).await.unwrap();
    });
    let cfg = CpConfig {
        node,
        addr,
        seeds,
        bootstrap_expect,
        secret: secret.into(),
        dir: dir.path().to_path_buf(),
        heartbeat: Duration::from_millis(100),
        election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
        tls: None,
        voters: 3,
    };
    let cp = match ControlPlane::start_with(cfg, |cp| {
        let _ = slot.set(cp.clone());
    })
    .await
    {
        Ok(cp) => cp,
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    Ok(Member {
        cp,
        server,
        _dir: dir,
    })
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gave up waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_agree_and_survive_the_leader() {
    let a = member(1, vec![], "s3cret").await.unwrap();
    let seeds = vec![a.cp.addr.clone()];
    let b = member(2, seeds.clone(), "s3cret").await.unwrap();
    let c = member(3, vec![b.cp.addr.clone()], "s3cret").await.unwrap();
    // a member with another secret is refused, and says why
    match member(4, seeds.clone(), "wrong").await {
        Err(ClusterError::Join { message, .. }) => {
            assert!(message.contains("secret"), "{message}")
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("a node without the cluster secret joined"),
    }
    let members = [&a, &b, &c];
    // all three are members and voters
    until("three voters", || {
        let m = a.cp.raft.metrics().borrow().clone();
        (m.membership_config.membership().voter_ids().count() == 3).then_some(())
    })
    .await;
    // a proposal through a follower is applied everywhere
    let r =
        c.cp.propose(Command::Init {
            table: "t".into(),
            shards: 4,
            sql: String::new(),
            at_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(r, Response::Done);
    for m in members {
        until("the state everywhere", || {
            let st = m.cp.state();
            (st.shards == 4 && st.nodes.len() == 3).then_some(())
        })
        .await;
    }
    assert!(members.iter().all(|m| m
        .cp
        .state()
        .nodes
        .values()
        .all(|n| n.state == NodeState::Active)));
    // stop the leader: the other two elect one and keep accepting
    let leader = until("a leader", || a.cp.leader()).await.0;
    let (gone, rest): (Vec<&Member>, Vec<&Member>) =
        members.iter().partition(|m| m.cp.id == leader);
    gone[0].cp.shutdown().await;
    gone[0].server.abort();
    until("a new leader", || {
        rest[0].cp.leader().filter(|(id, _)| *id != leader)
    })
    .await;
    let mut applied = None;
    for _ in 0..100 {
        match rest[1]
            .cp
            .propose(Command::Assign {
                shard: 0,
                node: rest[0].cp.id,
                expect_epoch: 0,
            })
            .await
        {
            Ok(r) => {
                applied = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(applied, Some(Response::Done));
    for m in &rest {
        until("the assignment on the survivors", || {
            (m.cp.state().owners[0].node == Some(rest[0].cp.id)).then_some(())
        })
        .await;
    }
}

fn voters(cp: &ControlPlane) -> Vec<u64> {
    let m = cp.raft.metrics().borrow().clone();
    m.membership_config.membership().voter_ids().collect()
}

/// Started at once with the same seeds (each its own address among them)
/// and `bootstrap_expect = 3`: one cluster, whatever order they come up
/// in; none founds while only two of three answer. Then one loses its
/// data directory and comes back under its id: it rejoins the cluster
/// instead of founding another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_together_form_one_cluster_and_a_wiped_one_rejoins() {
    let mut ls = Vec::new();
    for _ in 0..3 {
        ls.push(listener().await);
    }
    let seeds: Vec<String> = ls.iter().map(|(_, a)| a.clone()).collect();
    let mut starts = Vec::new();
    let mut third = None;
    // node 0 (a StatefulSet's first pod) comes last
    for (i, (l, addr)) in ls.into_iter().enumerate() {
        let seeds = seeds.clone();
        let start = async move { member_at(i as u64, l, addr, seeds, Some(3), "s3cret").await };
        if i == 0 {
            third = Some(start);
        } else {
            starts.push(tokio::spawn(start));
        }
    }
    // two of three answer: nobody founds, each keeps waiting
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        starts.iter().all(|s| !s.is_finished()),
        "a node founded a cluster before three answered"
    );
    let first = third.unwrap().await.unwrap();
    let mut members = vec![first];
    for s in starts {
        members.push(s.await.unwrap().unwrap());
    }
    for m in &members {
        until("three voters everywhere", || {
            let mut v = voters(&m.cp);
            v.sort();
            (v == [0, 1, 2]).then_some(())
        })
        .await;
    }
    let id = until("the cluster's id", || {
        let st = members[0].cp.state();
        (st.nodes.len() == 3 && !st.cluster_id.is_empty()).then_some(st.cluster_id.clone())
    })
    .await;
    for m in &members {
        until("the same id everywhere", || {
            (m.cp.state().cluster_id == id).then_some(())
        })
        .await;
    }
    let leader = until("a leader", || members[0].cp.leader()).await.0;
    // a follower loses its disk: it comes back at its address, fresh
    let wiped = members.iter().position(|m| m.cp.id != leader).unwrap();
    let gone = members.remove(wiped);
    let (node, addr) = (gone.cp.id, gone.cp.addr.clone());
    gone.cp.shutdown().await;
    gone.server.abort();
    drop(gone);
    let l = loop {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let back = member_at(node, l, addr, seeds.clone(), Some(3), "s3cret")
        .await
        .unwrap();
    until("the wiped node in the one cluster", || {
        let st = back.cp.state();
        (st.cluster_id == id && st.nodes.len() == 3).then_some(())
    })
    .await;
    let r = back
        .cp
        .propose(Command::Init {
            table: "t".into(),
            shards: 2,
            sql: String::new(),
            at_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(r, Response::Done);
    // a second process with a live member's id, on an empty disk: it finds
    // the member among the seeds and stops instead of taking its place
    let live = members[0].cp.id;
    let (l, addr) = listener().await;
    match member_at(live, l, addr, seeds.clone(), Some(3), "s3cret").await {
        Err(ClusterError::Join { message, .. }) => {
            assert!(message.contains("node ids must be unique"), "{message}")
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("a second process with node {live}'s id joined"),
    }
    members.push(back);
    for m in &members {
        until("three voters and the proposal everywhere", || {
            let mut v = voters(&m.cp);
            v.sort();
            (v == [0, 1, 2] && m.cp.state().shards == 2).then_some(())
        })
        .await;
        assert_eq!(m.cp.state().cluster_id, id);
    }
}
