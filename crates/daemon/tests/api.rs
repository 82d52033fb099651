//! The HTTP API of a real lockstepd process, through a real HTTP client.

mod support;

use lockstep_core::value::Value;
use support::*;

fn daemon(dir: &std::path::Path) -> Daemon {
    Daemon::start_with_hooks(dir)
}

#[test]
fn ingest_serve_checkpoint_export_and_backfill_agree_with_the_batch_engine() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let c = d.client();
    let rows = events(6000, 150, 7);
    // half as JSON lines, half as a JSON array
    let (a, b) = rows.split_at(3000);
    let r = c
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(jsonl(a).as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["accepted"], 3000);
    let arr = format!(
        "[{}]",
        jsonl(b).trim_end().lines().collect::<Vec<_>>().join(",")
    );
    let r = c
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(arr.as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["accepted"], 3000);
    assert_eq!(r.json()["rejected"], 0);

    // serving reads everything acknowledged: compare with the batch engine's
    // answer for the same hypothetical event
    let (want, mut engine) = batch_rows(&rows);
    let catalog = catalog();
    let table = &catalog.tables[0];
    for (i, probe) in rows.iter().step_by(997).enumerate() {
        let mut ev = probe.clone();
        ev[table.time] = Value::Timestamp(match ev[table.time] {
            Value::Timestamp(t) => t + 1000 * i as i64,
            _ => unreachable!(),
        });
        let body = lockstep_io::render_json(&ev, &table.schema);
        let got = c
            .post_json("/v1/views/user_ad_features/features", body.as_bytes())
            .unwrap();
        let expect = engine.serve(0, &ev).unwrap();
        let view = &catalog.view(VIEW).unwrap().1.output;
        let expect_json: serde_json::Value =
            serde_json::from_str(&lockstep_io::render_json(&expect, view)).unwrap();
        assert_eq!(got["features"], expect_json, "served features for {ev:?}");
    }

    let ck = c.post_json("/v1/checkpoint", b"").unwrap();
    assert_eq!(ck["checkpoints"].as_array().unwrap().len(), 16);

    let all_want: Vec<_> = want.into_iter().flatten().collect();
    assert!(!all_want.is_empty());
    let got = exported(&c, dir.path());
    assert_rows_eq(&got, &all_want, "export vs batch engine");

    let out = dir.path().join("backfill.parquet");
    let mut calls = 0;
    let rep =
        lockstep_offline::backfill(&c, VIEW, None, None, &out, &mut |_, _| calls += 1).unwrap();
    assert_eq!(rep.events, 6000);
    assert!(calls > 0);
    let schema = catalog.view(VIEW).unwrap().1.output.clone();
    let bf = lockstep_io::read_rows(&out, &schema).unwrap();
    assert_rows_eq(&bf, &got, "backfill vs export");

    // a time range selects exactly those rows
    let tcol = schema.index_of("event_time").unwrap();
    let Value::Timestamp(mid) = got[got.len() / 2][tcol] else {
        panic!()
    };
    let out2 = dir.path().join("backfill-range.parquet");
    lockstep_offline::backfill(&c, VIEW, Some(mid), None, &out2, &mut |_, _| {}).unwrap();
    let ranged = lockstep_io::read_rows(&out2, &schema).unwrap();
    let want_ranged: Vec<_> = got
        .iter()
        .filter(|r| matches!(r[tcol], Value::Timestamp(t) if t >= mid))
        .cloned()
        .collect();
    assert_rows_eq(&ranged, &want_ranged, "backfill --from");

    // compaction keeps every row, in order, and leaves fewer segments
    for extra in rows.chunks(2000).take(2) {
        // re-ingesting is fine for this check: new events, new segments
        let shifted: Vec<_> = extra
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if let Value::Timestamp(t) = r[table.time] {
                    r[table.time] = Value::Timestamp(t + 86_400_000);
                }
                r
            })
            .collect();
        c.post_json("/v1/tables/ad_events/events", jsonl(&shifted).as_bytes())
            .unwrap();
        c.post_json("/v1/checkpoint", b"").unwrap();
    }
    let before = exported(&c, dir.path());
    let n_before = c.get_json("/v1/segments?kind=raw").unwrap()["segments"]
        .as_array()
        .unwrap()
        .len();
    c.post_json("/v1/segments/compact", b"").unwrap();
    let n_after = c.get_json("/v1/segments?kind=raw").unwrap()["segments"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        n_after < n_before,
        "compaction merged nothing: {n_before} -> {n_after}"
    );
    assert_rows_eq(
        &exported(&c, dir.path()),
        &before,
        "export after compaction",
    );
    let out3 = dir.path().join("backfill-compacted.parquet");
    lockstep_offline::backfill(&c, VIEW, None, None, &out3, &mut |_, _| {}).unwrap();
    assert_rows_eq(
        &lockstep_io::read_rows(&out3, &schema).unwrap(),
        &before,
        "backfill after compaction",
    );
}

#[test]
fn serve_with_ingest_returns_exactly_the_training_row_features() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let c = d.client();
    let rows = events(3000, 50, 11);
    let (head, tail) = rows.split_at(2000);
    c.post_json("/v1/tables/ad_events/events", jsonl(head).as_bytes())
        .unwrap();
    let catalog = catalog();
    let schema = &catalog.tables[0].schema;
    // ten impressions through serve-and-ingest, then the rest of the stream
    let mut served = Vec::new();
    for r in tail
        .iter()
        .filter(|r| r[3] == Value::text("impression"))
        .take(10)
    {
        let body = lockstep_io::render_json(r, schema);
        let f = c
            .post_json(
                "/v1/views/user_ad_features/features?ingest=true",
                body.as_bytes(),
            )
            .unwrap();
        served.push((r[0].clone(), f["features"].clone()));
    }
    let served_ids: Vec<_> = served.iter().map(|(id, _)| id.clone()).collect();
    let rest: Vec<_> = tail
        .iter()
        .filter(|r| !served_ids.contains(&r[0]))
        .cloned()
        .collect();
    c.post_json("/v1/tables/ad_events/events", jsonl(&rest).as_bytes())
        .unwrap();
    c.post_json("/v1/checkpoint", b"").unwrap();
    let got = exported(&c, dir.path());
    let view = catalog.view(VIEW).unwrap().1;
    let mut found = 0;
    for (id, features) in &served {
        let Some(row) = got.iter().find(|r| &r[0] == id) else {
            continue;
        };
        found += 1;
        let row_json: serde_json::Value =
            serde_json::from_str(&lockstep_io::render_json(row, &view.output)).unwrap();
        for (i, col) in view.output.columns.iter().enumerate() {
            if view.label_columns.contains(&i) {
                assert!(
                    features[&col.name].is_null(),
                    "labels are unknown when serving"
                );
            } else {
                assert_eq!(
                    features[&col.name], row_json[&col.name],
                    "{} of event {id:?}",
                    col.name
                );
            }
        }
    }
    assert!(
        found >= 5,
        "only {found} of the served events have final rows yet"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let c = d.client();
    let ev = "/v1/tables/ad_events/events";
    let good = r#"{"event_id":1,"user_id":"u1","campaign_id":3,"kind":"impression","event_time":"2024-01-01T00:00:00Z"}"#;

    // token
    let anon = lockstep_api::Client::new(&d.addr, "wrong-token-xyz");
    let r = anon
        .request("POST", ev, Some(good.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("token"));
    let raw = ureq::get(format!("http://{}/v1/status", d.addr))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(raw.status().as_u16(), 401);
    // health and metrics need no token
    assert_eq!(
        anon.request("GET", "/healthz", None, &[]).unwrap().status,
        200
    );
    let m = anon.request("GET", "/metrics", None, &[]).unwrap();
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    for name in [
        "lockstep_ingested_events_total",
        "lockstep_serving_latency_seconds",
        "lockstep_checkpoint_duration_seconds",
        "lockstep_state_bytes",
        "lockstep_late_events_total",
        "lockstep_dead_letters_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }

    // unknown table and view
    let r = c
        .request("POST", "/v1/tables/nope/events", Some(good.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    let r = c
        .request("GET", "/v1/views/nope/keys/u1", None, &[])
        .unwrap();
    assert_eq!(r.status, 404);
    let r = c
        .request(
            "POST",
            "/v1/views/nope/features",
            Some(good.as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 404);

    // malformed JSON array: the whole body is refused
    let r = c
        .request("POST", ev, Some(b"[{\"user_id\": "), &[])
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    // empty body
    let r = c.request("POST", ev, Some(b"\n\n"), &[]).unwrap();
    assert_eq!(r.status, 400);

    // a mixed batch: the good event is accepted, the others are reported
    // with their index and reason and kept as dead letters
    let body = [
        good,
        "this is not json",
        r#"{"event_id":2,"user_id":"u1","campaign_id":"three","kind":"click","event_time":"2024-01-01T00:00:01Z"}"#,
        r#"{"event_id":3,"campaign_id":3,"kind":"click","event_time":"2024-01-01T00:00:01Z"}"#,
        r#"{"event_id":4,"user_id":"u2","campaign_id":3,"kind":"click"}"#,
    ]
    .join("\n");
    let r = c.request("POST", ev, Some(body.as_bytes()), &[]).unwrap();
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["accepted"], 1);
    assert_eq!(j["rejected"], 4);
    let errors = j["errors"].as_array().unwrap();
    let idx: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![1, 2, 3, 4]);
    let reason = |i: usize| errors[i]["reason"].as_str().unwrap().to_string();
    assert!(reason(0).contains("JSON"), "{}", reason(0));
    assert!(reason(1).contains("campaign_id"), "{}", reason(1));
    assert!(reason(2).contains("user_id"), "{}", reason(2));
    assert!(reason(3).contains("event_time"), "{}", reason(3));
    let dl = c.get_json("/v1/tables/ad_events/deadletters").unwrap();
    let dl = dl["dead_letters"].as_array().unwrap();
    assert_eq!(dl.len(), 4);
    assert_eq!(dl[0]["raw"], "this is not json");
    assert_eq!(c.get_json("/v1/status").unwrap()["dead_letters"], 4);

    // serving a bad event
    let r = c
        .request(
            "POST",
            "/v1/views/user_ad_features/features",
            Some(br#"{"campaign_id":1}"#),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("user_id"));

    // oversized body
    let big = vec![b' '; lockstep_daemon::http::MAX_BODY_BYTES + 10];
    match c.request("POST", ev, Some(&big), &[]) {
        Ok(r) => {
            assert_eq!(r.status, 413);
            assert!(r.json()["error"].as_str().unwrap().contains("larger"));
        }
        // the server may close the connection before reading it all
        Err(e) => assert!(e.to_string().contains("lockstepd"), "{e}"),
    }

    // unknown endpoint
    assert_eq!(
        c.request("GET", "/v2/whatever", None, &[]).unwrap().status,
        404
    );
}

#[test]
fn idempotent_retries_are_appended_once_even_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    let rows = events(500, 20, 3);
    let body = jsonl(&rows);
    let c = d.client();
    let key = [("Idempotency-Key", "batch-0001")];
    let first = c
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(body.as_bytes()),
            &key,
        )
        .unwrap();
    assert_eq!(first.status, 200);
    assert!(!first.replayed);
    let again = c
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(body.as_bytes()),
            &key,
        )
        .unwrap();
    assert_eq!(again.status, 200);
    assert!(again.replayed);
    assert_eq!(again.json(), first.json());
    assert_eq!(log_total(&c), 500);

    d.kill();
    d.restart();
    let c = d.client();
    let after = c
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(body.as_bytes()),
            &key,
        )
        .unwrap();
    assert!(after.replayed, "the key must survive SIGKILL");
    assert_eq!(after.json(), first.json());
    assert_eq!(log_total(&c), 500);
    // a new key appends again
    let other = c
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(body.as_bytes()),
            &[("Idempotency-Key", "batch-0002")],
        )
        .unwrap();
    assert!(!other.replayed);
    assert_eq!(log_total(&c), 1000);
}

/// Events in the log, all shards.
fn log_total(c: &lockstep_api::Client) -> u64 {
    let shards = c.get_json("/v1/status").unwrap()["shards"].clone();
    shards
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["log_end"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_failed_shard_actor_is_restarted_from_its_checkpoint_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path());
    let c = d.client();
    let rows = events(4000, 100, 5);
    let (a, b) = rows.split_at(2000);
    c.post_json("/v1/tables/ad_events/events", jsonl(a).as_bytes())
        .unwrap();
    c.post_json("/v1/checkpoint", b"").unwrap();
    for s in 0..16 {
        c.post_json(&format!("/v1/debug/shards/{s}/fail"), b"")
            .unwrap();
    }
    c.post_json("/v1/tables/ad_events/events", jsonl(b).as_bytes())
        .unwrap();
    // the restarted actors answer again (retry while they recover)
    let mut st = serde_json::Value::Null;
    for _ in 0..200 {
        let r = c.request("GET", "/v1/status", None, &[]).unwrap();
        if r.status == 200 {
            st = r.json();
            break;
        }
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let restarts: u64 = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, 16);
    c.post_json("/v1/checkpoint", b"").unwrap();
    let (want, _) = batch_rows(&rows);
    let want: Vec<_> = want.into_iter().flatten().collect();
    assert_rows_eq(&exported(&c, dir.path()), &want, "after actor restarts");
}

#[test]
fn graceful_stop_checkpoints_and_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path());
    let rows = events(3000, 80, 9);
    d.client()
        .post_json("/v1/tables/ad_events/events", jsonl(&rows).as_bytes())
        .unwrap();
    assert!(d.terminate().success());
    d.restart();
    let c = d.client();
    let st = c.get_json("/v1/status").unwrap();
    assert_eq!(st["events"], 3000 - st["late"].as_u64().unwrap());
    assert_eq!(st["lag"], 0);
    let (want, _) = batch_rows(&rows);
    let want: Vec<_> = want.into_iter().flatten().collect();
    assert_rows_eq(&exported(&c, dir.path()), &want, "after graceful restart");
}

/// The manifest stays short on its own: with `--auto-compact-segments 8`,
/// twenty checkpoints of new events (two segments each per shard, and a
/// late event's segment in one shard) leave every shard with a handful of
/// segments, every late event still listed, and the export is still every
/// row the batch engine computes, in order.
#[test]
fn long_manifests_are_compacted_after_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[
            ("checkpoint-interval", "1 hour"),
            ("auto-compact-segments", "8"),
        ],
        &[],
    );
    let c = d.client();
    let generated = events(4000, 50, 31);
    // from the second batch on, each carries an event of one user at the
    // first event's time: far below its shard's watermark, so late, and a
    // late segment of that shard at every checkpoint
    let key = catalog().tables[0].key;
    let mut rows = Vec::new();
    let mut late_sent = 0;
    for (i, b) in generated.chunks(200).enumerate() {
        let mut batch = b.to_vec();
        if i > 0 {
            let mut late = generated[0].clone();
            late[key] = lockstep_core::value::Value::text("late-user");
            batch.push(late);
            late_sent += 1;
        }
        c.post_json("/v1/tables/ad_events/events", jsonl(&batch).as_bytes())
            .unwrap();
        c.post_json("/v1/checkpoint", b"").unwrap();
        rows.extend(batch);
    }
    let per_shard = |c: &lockstep_api::Client| {
        let mut n = std::collections::HashMap::<u64, usize>::new();
        for s in c.get_json("/v1/segments").unwrap()["segments"]
            .as_array()
            .unwrap()
        {
            *n.entry(s["shard"].as_u64().unwrap()).or_default() += 1;
        }
        n
    };
    // the last compactions run in the background
    // (without compaction a shard has 40 to 59; merges are tiered, so a
    // few segments of falling sizes may stay beside the 8)
    let start = std::time::Instant::now();
    let mut most = usize::MAX;
    while start.elapsed() < std::time::Duration::from_secs(60) {
        most = per_shard(&c).values().copied().max().unwrap_or(0);
        if most <= 14 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        most <= 14,
        "a shard keeps {most} segments after 20 checkpoints"
    );
    // the late events were merged, none lost
    let late: Vec<serde_json::Value> = c.get_json("/v1/segments").unwrap()["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "late")
        .cloned()
        .collect();
    let late_rows: u64 = late.iter().map(|s| s["rows"].as_u64().unwrap()).sum();
    // (the generator makes a few late events of its own)
    let counted = c.get_json("/v1/status").unwrap()["late"].as_u64().unwrap();
    assert!(counted >= late_sent, "{counted} late events counted");
    assert_eq!(late_rows, counted, "{late:?}");
    assert!(
        late.len() < late_sent as usize,
        "{} late segments",
        late.len()
    );
    let (want, _) = batch_rows(&rows);
    let want: Vec<_> = want.into_iter().flatten().collect();
    assert_rows_eq(
        &exported(&c, dir.path()),
        &want,
        "export after automatic compaction",
    );
}

#[test]
fn bad_pipeline_or_config_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "CREATE TABLE t (k TEXT, ts TIMESTAMP) WITH (key = 'k', event_time = 'ts');\nCREATE VIEW v AS SELECT k, MEDIAN(ts) OVER (PARTITION BY k ORDER BY ts) AS m FROM t;\n",
    )
    .unwrap();
    let run = |args: &[&str]| lockstepd_refuses(&dir.path().join("data"), args);
    let err = run(&[
        "--pipeline",
        bad.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("config key `pipeline`"), "{err}");
    assert!(err.contains("bad.sql:2:"), "line and column: {err}");
    let err = run(&["--pipeline", "/nonexistent.sql", "--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("config key `pipeline`") && err.contains("/nonexistent.sql"),
        "{err}"
    );
    let err = run(&[
        "--pipeline",
        bad.to_str().unwrap(),
        "--listen",
        "not-an-address",
    ]);
    assert!(err.contains("`listen`"), "{err}");
    let err = run(&[
        "--pipeline",
        bad.to_str().unwrap(),
        "--checkpoint-interval",
        "soon",
    ]);
    assert!(err.contains("`checkpoint_interval`"), "{err}");
    // --check-config: the same checks, and nothing started
    let err = run(&["--pipeline", bad.to_str().unwrap(), "--check-config"]);
    assert!(err.contains("bad.sql:2:"), "{err}");
    let good = dir.path().join("good.sql");
    std::fs::write(&good, SQL).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(["--pipeline", good.to_str().unwrap(), "--check-config"])
        .args(["--data-dir", dir.path().join("unused").to_str().unwrap()])
        .args(["--token", TOKEN, "--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("config good") && text.contains("16 shards"),
        "{text}"
    );
    assert!(
        !dir.path().join("unused").exists(),
        "--check-config made the data dir"
    );
}

/// Tokens have roles: the ingest token ingests (and serves-and-ingests),
/// the serve token reads features; each gets `403` anywhere else, the
/// admin token goes everywhere, and an unknown token gets `401`.
#[test]
fn tokens_have_roles() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[
            ("ingest-token", "ingest-token-4711"),
            ("serve-token", "serve-token-0815"),
        ],
        &[],
    );
    let ingest = lockstep_api::Client::new(&d.addr, "ingest-token-4711");
    let serve = lockstep_api::Client::new(&d.addr, "serve-token-0815");
    let admin = d.client();
    let stranger = lockstep_api::Client::new(&d.addr, "not-a-token-at-all");
    let rows = events(50, 5, 1);
    let body = jsonl(&rows);
    let one = jsonl(&rows[..1]);
    fn status(
        c: &lockstep_api::Client,
        method: &'static str,
        path: &str,
        body: Option<&str>,
    ) -> u16 {
        c.request(method, path, body.map(str::as_bytes), &[])
            .unwrap()
            .status
    }
    let events = "/v1/tables/ad_events/events";
    let features = "/v1/views/user_ad_features/features";
    let user = match &rows[0][1] {
        Value::Text(u) => u.to_string(),
        other => panic!("{other:?}"),
    };
    let key = format!("/v1/views/user_ad_features/keys/{user}");
    // ingest
    assert_eq!(status(&ingest, "POST", events, Some(&body)), 200);
    assert_eq!(status(&serve, "POST", events, Some(&body)), 403);
    assert_eq!(status(&stranger, "POST", events, Some(&body)), 401);
    // features
    assert_eq!(status(&serve, "POST", features, Some(&one)), 200);
    assert_eq!(status(&serve, "GET", &key, None), 200);
    assert_eq!(status(&ingest, "POST", features, Some(&one)), 403);
    assert_eq!(status(&ingest, "GET", &key, None), 403);
    // serve-and-ingest ingests: the ingest role's
    let next = {
        let mut e = rows[0].clone();
        e[0] = Value::BigInt(9_999_999);
        jsonl(&[e])
    };
    let with_ingest = format!("{features}?ingest=true");
    assert_eq!(status(&serve, "POST", &with_ingest, Some(&next)), 403);
    assert!([200, 202].contains(&status(&ingest, "POST", &with_ingest, Some(&next))));
    // everything else is the admin's
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/v1/segments"),
        ("POST", "/v1/checkpoint"),
        ("GET", "/v1/tables/ad_events/deadletters"),
    ] {
        assert_eq!(status(&ingest, method, path, None), 403, "{method} {path}");
        assert_eq!(status(&serve, method, path, None), 403, "{method} {path}");
        assert_eq!(status(&admin, method, path, None), 200, "{method} {path}");
    }
    let r = serve.request("GET", "/v1/status", None, &[]).unwrap();
    assert!(
        r.error_body().error.contains("serve_token"),
        "{:?}",
        r.error_body()
    );
}
