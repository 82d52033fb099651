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
        secret: secret.into(),
        dir: dir.path().to_path_buf(),
        heartbeat: Duration::from_millis(100),
        election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
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
