//! Changing a running node's views, and backfills over its archive, on a
//! real lockstepd process through a real HTTP client.

mod support;

use support::*;

fn daemon(dir: &std::path::Path) -> Daemon {
    Daemon::start_with_hooks(dir)
}

/// The canonical table with a second view the canonical pipeline lacks.
fn pipeline_with_new_view() -> String {
    format!(
        "{SQL}
CREATE VIEW clicks_per_campaign AS
SELECT event_id, user_id, event_time,
  COUNT(*) FILTER (WHERE kind = 'click') OVER (
    PARTITION BY user_id, campaign_id ORDER BY event_time
    RANGE BETWEEN INTERVAL '30' MINUTE PRECEDING AND CURRENT ROW) AS clicks_30m
FROM ad_events;"
    )
}

/// The batch engine's rows of `view` of `sql` over `rows`, per shard.
fn batch_view(
    sql: &str,
    view: &str,
    rows: &[lockstep_core::value::Row],
) -> Vec<lockstep_core::value::Row> {
    let catalog = std::sync::Arc::new(lockstep_core::parse_pipeline(sql).unwrap());
    let mut e = lockstep_core::Engine::new(catalog, &[view]).unwrap();
    let mut emitted = Vec::new();
    let mut per_shard = vec![Vec::new(); 16];
    for r in rows {
        e.push(r, &mut emitted).unwrap();
        for em in emitted.drain(..) {
            per_shard[em.shard as usize].push(em.row);
        }
    }
    per_shard.into_iter().flatten().collect()
}

#[test]
fn views_apply_rebuilds_from_the_archive_while_the_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    let c = d.client();
    let rows = events(5000, 80, 17);
    let (a, b) = rows.split_at(3000);
    c.post_json("/v1/tables/ad_events/events", jsonl(a).as_bytes())
        .unwrap();
    let new_sql = pipeline_with_new_view();
    // bad SQL and another table are refused, nothing changes
    let r = c
        .request("POST", "/v1/views", Some(b"CREATE VIEW x AS SELEC"), &[])
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["line"].as_u64().is_some());
    let r = c
        .request(
            "POST",
            "/v1/views",
            Some(new_sql.replace("shards = 16", "shards = 4").as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let r = c
        .request("POST", "/v1/views", Some(SQL.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.json()["unchanged"], true);

    let r = c
        .request("POST", "/v1/views", Some(new_sql.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["added"],
        serde_json::json!(["clicks_per_campaign"])
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pipeline.sql")).unwrap(),
        new_sql
    );
    c.post_json("/v1/tables/ad_events/events", jsonl(b).as_bytes())
        .unwrap();
    c.post_json("/v1/checkpoint", b"").unwrap();
    let check = |c: &lockstep_api::Client, what: &str| {
        assert_rows_eq(
            &export_view(c, dir.path(), &new_sql, "clicks_per_campaign"),
            &batch_view(&new_sql, "clicks_per_campaign", &rows),
            &format!("new view, whole history ({what})"),
        );
        assert_rows_eq(
            &export_view(c, dir.path(), &new_sql, VIEW),
            &batch_view(&new_sql, VIEW, &rows),
            &format!("unchanged view, nothing twice ({what})"),
        );
    };
    check(&c, "after apply");
    let rebuilds = |d: &Daemon| d.log().matches("rebuilt the shard's state").count();
    let before = rebuilds(&d);
    assert!(before > 0, "apply rebuilt no shard");
    // the node restarts into the applied pipeline without rebuilding again
    d.kill();
    d.restart();
    let c = d.client();
    check(&c, "after a restart");
    assert_eq!(
        rebuilds(&d),
        before,
        "a restart under the applied pipeline rebuilds nothing"
    );
}

#[test]
fn restarting_with_changed_views_rebuilds_them_and_a_changed_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    let rows = events(3000, 60, 19);
    d.client()
        .post_json("/v1/tables/ad_events/events", jsonl(&rows).as_bytes())
        .unwrap();
    d.client().post_json("/v1/checkpoint", b"").unwrap();
    d.kill();
    // the same view under another name and with a 2-hour window
    let changed = SQL
        .replace("user_ad_features", "features_v2")
        .replace("INTERVAL '1' HOUR PRECEDING", "INTERVAL '2' HOUR PRECEDING");
    std::fs::write(dir.path().join("pipeline.sql"), &changed).unwrap();
    d.restart();
    let c = d.client();
    c.post_json("/v1/checkpoint", b"").unwrap();
    assert_rows_eq(
        &export_view(&c, dir.path(), &changed, "features_v2"),
        &batch_view(&changed, "features_v2", &rows),
        "rebuilt view",
    );
    d.kill();
    // the table itself is fixed for the data directory
    let p = dir.path().join("other-table.sql");
    std::fs::write(
        &p,
        changed.replace("lateness = '30 seconds'", "lateness = '1 minute'"),
    )
    .unwrap();
    let err = lockstepd_refuses(
        &dir.path().join("data"),
        &["--pipeline", p.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    assert!(
        err.contains("config key `pipeline`") && err.contains("new data_dir"),
        "{err}"
    );
}

#[test]
fn backfill_runs_a_new_view_over_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let c = d.client();
    let rows = events(3000, 60, 13);
    c.post_json("/v1/tables/ad_events/events", jsonl(&rows).as_bytes())
        .unwrap();
    c.post_json("/v1/checkpoint", b"").unwrap();
    // the canonical table with a view the node does not run
    let table_sql = &SQL[..SQL.find("CREATE VIEW").unwrap()];
    let new_sql = format!(
        "{table_sql}
CREATE VIEW clicks_per_campaign AS
SELECT event_id, user_id, event_time,
  COUNT(*) FILTER (WHERE kind = 'click') OVER (
    PARTITION BY user_id, campaign_id ORDER BY event_time
    RANGE BETWEEN INTERVAL '30' MINUTE PRECEDING AND CURRENT ROW) AS clicks_30m
FROM ad_events;"
    );
    let out = dir.path().join("new-view.parquet");
    let rep = lockstep_offline::backfill_with(
        &c,
        Some(&new_sql),
        "clicks_per_campaign",
        None,
        None,
        &out,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(rep.events, 3000);
    let catalog = std::sync::Arc::new(lockstep_core::parse_pipeline(&new_sql).unwrap());
    let mut e = lockstep_core::Engine::new(catalog.clone(), &["clicks_per_campaign"]).unwrap();
    let mut emitted = Vec::new();
    let mut per_shard = vec![Vec::new(); 16];
    for r in &rows {
        e.push(r, &mut emitted).unwrap();
        for em in emitted.drain(..) {
            per_shard[em.shard as usize].push(em.row);
        }
    }
    let want: Vec<_> = per_shard.into_iter().flatten().collect();
    let schema = catalog
        .view("clicks_per_campaign")
        .unwrap()
        .1
        .output
        .clone();
    assert_rows_eq(
        &lockstep_io::read_rows(&out, &schema).unwrap(),
        &want,
        "new view backfill",
    );
    // a view over another table is refused with the reason
    let err = lockstep_offline::backfill_with(
        &c,
        Some(&new_sql.replace("shards = 16", "shards = 8")),
        "clicks_per_campaign",
        None,
        None,
        &out,
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("differs from the node's table"),
        "{err}"
    );
}

/// A backfill whose shard cannot be replayed (its archived segment is
/// damaged) fails the job with that shard named, after the other shards,
/// which replay in parallel, have run: the job ends, it does not hang.
#[test]
fn a_damaged_segment_fails_the_backfill_and_names_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let c = d.client();
    c.post_json(
        "/v1/tables/ad_events/events",
        jsonl(&events(3000, 60, 17)).as_bytes(),
    )
    .unwrap();
    c.post_json("/v1/checkpoint", b"").unwrap();
    let shard_dir = dir.path().join("data/objects/raw/ad_events/shard=005");
    let seg = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("shard 5 has a raw segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&seg, bytes).unwrap();
    let out = dir.path().join("rows.parquet");
    let err = lockstep_offline::backfill_with(
        &c,
        None,
        "user_ad_features",
        None,
        None,
        &out,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("failed: shard 5:"), "{err}");
    let jobs = c.get_json("/v1/backfill").unwrap();
    let job = jobs["jobs"]
        .as_array()
        .and_then(|j| j.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(job["state"], "failed", "{jobs}");
}

#[test]
fn nodes_sharing_an_object_store_leave_each_others_segments_alone() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared-objects");
    let url = format!("file://{}", shared.display());
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let flags = [
        ("checkpoint-interval", "1 hour"),
        ("object-store", url.as_str()),
    ];
    let mut a = Daemon::start(&da, &flags, &[]);
    let b = Daemon::start(&db, &flags, &[]);
    let rows_a = events(2500, 40, 31);
    let rows_b = events(2500, 40, 32);
    a.client()
        .post_json("/v1/tables/ad_events/events", jsonl(&rows_a).as_bytes())
        .unwrap();
    b.client()
        .post_json("/v1/tables/ad_events/events", jsonl(&rows_b).as_bytes())
        .unwrap();
    a.client().post_json("/v1/checkpoint", b"").unwrap();
    b.client().post_json("/v1/checkpoint", b"").unwrap();
    // a's recovery deletes its own uncommitted objects only
    a.restart();
    let want = |rows: &[lockstep_core::value::Row]| -> Vec<_> {
        batch_rows(rows).0.into_iter().flatten().collect()
    };
    assert_rows_eq(
        &exported(&b.client(), &db),
        &want(&rows_b),
        "node b after a restarted",
    );
    assert_rows_eq(&exported(&a.client(), &da), &want(&rows_a), "node a");
}

#[test]
fn sigkill_during_views_apply_finishes_the_rebuild_at_restart() {
    let new_sql = pipeline_with_new_view();
    for delay_ms in [0u64, 15, 40] {
        let dir = tempfile::tempdir().unwrap();
        let mut d = daemon(dir.path());
        let rows = events(4000, 80, 23 + delay_ms);
        d.client()
            .post_json("/v1/tables/ad_events/events", jsonl(&rows).as_bytes())
            .unwrap();
        let c = d.client();
        let body = new_sql.clone();
        let apply =
            std::thread::spawn(move || c.request("POST", "/v1/views", Some(body.as_bytes()), &[]));
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        d.kill();
        let _ = apply.join().unwrap();
        // whatever the apply had reached, the restart settles on one pipeline
        d.restart();
        let c = d.client();
        c.post_json("/v1/checkpoint", b"").unwrap();
        let running = c.get_json("/v1/pipeline").unwrap();
        let sql = running["sql"].as_str().unwrap().to_string();
        eprintln!(
            "SIGKILL {delay_ms} ms into the apply: runs {}",
            running["views"]
        );
        for view in running["views"].as_array().unwrap() {
            let view = view.as_str().unwrap();
            assert_rows_eq(
                &export_view(&c, dir.path(), &sql, view),
                &batch_view(&sql, view, &rows),
                &format!("`{view}` after SIGKILL {delay_ms} ms into the apply"),
            );
        }
    }
}
