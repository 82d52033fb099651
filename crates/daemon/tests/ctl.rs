//! lockstepctl's cluster commands against a one-node cluster run in this
//! process (the real node code, on the real broker `.ci/run` starts); the
//! commands run through `lockstep_ctl::run_args`, what the binary runs.
//! Skipped without LOCKSTEP_TEST_KAFKA unless LOCKSTEP_REQUIRE_KAFKA is set.

mod support;

use lockstep_daemon::config::{self, FileCluster, Overrides};
use lockstep_daemon::node::Node;

const TOKEN: &str = "ctl-test-token";

fn ctl(addr: &str, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["--addr", addr];
    argv.extend_from_slice(args);
    support::run_ctl_as(TOKEN, &argv)
}

fn json(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (ok, out) = ctl(addr, &a);
    assert!(ok, "lockstepctl {args:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lockstepctl {args:?}: {e}: {out}"))
}

#[test]
fn cluster_commands_show_the_shard_map_checkpoints_and_drain() {
    let Ok(brokers) = std::env::var("LOCKSTEP_TEST_KAFKA") else {
        assert!(
            std::env::var("LOCKSTEP_REQUIRE_KAFKA").is_err(),
            "LOCKSTEP_REQUIRE_KAFKA is set but LOCKSTEP_TEST_KAFKA is not"
        );
        eprintln!("skipped: no LOCKSTEP_TEST_KAFKA broker");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(
        &sql,
        include_str!("../../../config/ad_features.sql").replace("shards = 16", "shards = 4"),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let flags = Overrides {
        node_id: Some("node-1".into()),
        data_dir: Some(dir.path().join("data")),
        listen: Some(addr.clone()),
        token: Some(TOKEN.into()),
        pipeline: Some(sql),
        checkpoint_interval: Some("300 ms".into()),
        cluster: Some(FileCluster {
            secret: Some("ctl-cluster-secret".into()),
            kafka_brokers: Some(brokers),
            kafka_topic: Some(format!("ctl-test-{}", std::process::id())),
            ..FileCluster::default()
        }),
        ..Overrides::default()
    };
    let cfg = config::load(None, &flags, None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _node = rt.block_on(async {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let routes = lockstep_daemon::http::Routes::default();
        let app = routes.dispatcher();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let internal = routes.internal.clone();
        let node = Node::start_with(cfg, move |cp| {
            let _ = internal.set(cp.router());
        })
        .await
        .unwrap();
        let _ = routes.api.set(lockstep_daemon::http::router(&node));
        node
    });
    // the coordinator assigns every shard and completes an epoch
    let mut st = serde_json::Value::Null;
    for _ in 0..200 {
        st = json(&addr, &["cluster", "status"]);
        let owned = st["shards"]
            .as_array()
            .is_some_and(|s| s.len() == 4 && s.iter().all(|s| s["owner"] == 1));
        if owned && st["completed_epoch"].as_u64() > Some(0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(st["leader"], 1, "{st:#}");
    assert!(st["completed_epoch"].as_u64() > Some(0), "{st:#}");
    let (ok, table) = ctl(&addr, &["nodes", "list"]);
    assert!(
        ok && table.contains("1 (leader)") && table.contains("active"),
        "{table}"
    );
    let shards = json(&addr, &["shards"]);
    let shards = shards.as_array().unwrap();
    assert_eq!(shards.len(), 4);
    assert!(
        shards.iter().all(|s| s["owner"] == 1 && s["lag"] == 0),
        "{shards:?}"
    );
    let ck = json(&addr, &["checkpoints"]);
    assert!(ck["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["checkpoint"]["seq"].as_u64() >= Some(1)));
    // a backfill job, kept in the control plane, listed and shown
    let req = lockstep_api::BackfillRequest {
        view: "user_ad_features".into(),
        from: None,
        to: None,
        sql: None,
    };
    let job = serde_json::to_value(
        lockstep_offline::run_backfill_job(&lockstep_api::Client::new(&addr, TOKEN), &req).unwrap(),
    )
    .unwrap();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["shards"].as_array().unwrap().len(), 4, "{job}");
    let id = job["job"].as_str().unwrap();
    let jobs = json(&addr, &["cluster", "backfills"]);
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["job"] == id && j["done"] == 4),
        "{jobs}"
    );
    let (ok, out) = ctl(&addr, &["cluster", "backfills", id]);
    assert!(
        ok && out.contains("done") && out.contains("backfill/"),
        "{out}"
    );
    let (ok, out) = ctl(&addr, &["cluster", "backfills", "no-such-job"]);
    assert!(!ok && out.contains("no backfill job"), "{out}");
    let (ok, out) = ctl(&addr, &["nodes", "remove", "node-1"]);
    assert!(!ok && out.contains("cannot remove itself"), "{out}");
    let (ok, plan) = ctl(&addr, &["rebalance"]);
    assert!(ok && plan.contains("balanced"), "{plan}");
    // alone, it has nowhere to move its shards: the wait gives up
    let (ok, out) = ctl(&addr, &["nodes", "drain", "node-1", "--wait", "1 s"]);
    assert!(
        !ok && out.contains("draining") && out.contains("node 1 still owns 4 shards after"),
        "{out}"
    );
    let (ok, out) = ctl(&addr, &["nodes", "drain", "node-1", "--wait", "soon"]);
    assert!(!ok && out.contains("not a duration"), "{out}");
    let (ok, out) = ctl(&addr, &["nodes", "drain", "node-1"]);
    assert!(ok && out.contains("draining"), "{out}");
    let (ok, out) = ctl(&addr, &["nodes", "drain", "node-7"]);
    assert!(!ok && out.contains("no node"), "{out}");
    let nodes = json(&addr, &["nodes", "list"]);
    assert_eq!(nodes[0]["state"], "draining");
    let (ok, out) = ctl(&addr, &["nodes", "activate", "node-1"]);
    assert!(ok && out.contains("node 1 is active"), "{out}");
    let nodes = json(&addr, &["nodes", "list"]);
    assert_eq!(nodes[0]["state"], "active");
}
