//! `lockstep run` as a user meets it: bad events go to the dead-letter file
//! with their line and reason, late events to the late file, bad SQL and
//! unknown views fail with a pointed message — through the real binary.

use std::path::Path;
use std::process::Command;

const SQL: &str = "CREATE TABLE ev (id BIGINT, k TEXT, n BIGINT, ts TIMESTAMP)
  WITH (key = 'k', event_time = 'ts', lateness = '1 second', shards = 2);
CREATE VIEW counts AS SELECT id, k, ts,
  COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW) AS n_1m
FROM ev;
";

fn lockstep(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lockstep run [extra…] --sql SQL --view counts --input INPUT --output OUTPUT`.
fn run_counts(extra: &[&str], sql: &str, input: &str, output: &Path) -> (bool, String, String) {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--sql", sql, "--view", "counts", "--input", input, "--output",
    ]);
    args.push(output.to_str().unwrap());
    lockstep(&args)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn malformed_and_late_events_are_set_aside_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let sql = write(dir.path(), "p.sql", SQL);
    let input = write(
        dir.path(),
        "events.jsonl",
        concat!(
            "{\"id\": 1, \"k\": \"a\", \"n\": 1, \"ts\": \"2024-01-01T00:00:10Z\"}\n",
            "this is not json\n",
            "{\"id\": 3, \"k\": \"a\", \"n\": \"three\", \"ts\": \"2024-01-01T00:00:11Z\"}\n",
            "{\"id\": 4, \"n\": 4, \"ts\": \"2024-01-01T00:00:12Z\"}\n",
            "{\"id\": 5, \"k\": \"a\", \"ts\": 1704067213000}\n",
            "{\"id\": 6, \"k\": \"a\", \"ts\": \"2024-01-01T00:00:05Z\"}\n",
        ),
    );
    let output = dir.path().join("rows.jsonl");
    let (ok, stdout, stderr) = run_counts(&[], &sql, &input, &output);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("read 6 events") && stdout.contains("2 accepted, 1 late, 3 dead-lettered"),
        "{stdout}"
    );
    let rows = jsonl(&output);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], 1);
    assert_eq!(rows[1]["id"], 5);
    assert_eq!(rows[1]["n_1m"], 2);
    let dead = jsonl(&dir.path().join("rows.jsonl.deadletter.jsonl"));
    let lines: Vec<u64> = dead.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![2, 3, 4]);
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not a JSON object"));
    assert!(dead[1]["reason"]
        .as_str()
        .unwrap()
        .contains("expected BIGINT"));
    assert!(dead[2]["reason"]
        .as_str()
        .unwrap()
        .contains("key column `k` is missing"));
    assert_eq!(dead[0]["raw"], "this is not json");
    let late = jsonl(&dir.path().join("rows.jsonl.late.jsonl"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["line"], 6);
    assert!(
        late[0]["reason"].as_str().unwrap().contains("below shard"),
        "{}",
        late[0]
    );
}

#[test]
fn strict_mode_stops_at_the_first_bad_event() {
    let dir = tempfile::tempdir().unwrap();
    let sql = write(dir.path(), "p.sql", SQL);
    let input = write(
        dir.path(),
        "events.jsonl",
        "{\"id\": 1, \"k\": \"a\", \"ts\": 1}\n[1,2]\n",
    );
    let out = dir.path().join("rows.jsonl");
    let (ok, _, stderr) = run_counts(&["--strict"], &sql, &input, &out);
    assert!(!ok);
    assert!(
        stderr.contains("line 2") && stderr.contains("--strict"),
        "{stderr}"
    );
}

/// A run stopped by --strict writes the rows that were final at the bad
/// record and no others: none whose FOLLOWING frame it would have had to
/// close early (the end of the file read so far is not the end of the
/// log). What it wrote is a readable prefix of what the whole file gives,
/// however many workers, wherever the bad record is.
#[test]
fn strict_mode_writes_the_final_rows_and_holds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let sql_text = SQL.replace(
        "INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW",
        "CURRENT ROW AND INTERVAL '1' MINUTE FOLLOWING",
    );
    let sql = write(dir.path(), "p.sql", &sql_text);
    let schema = lockstep_core::parse_pipeline(&sql_text).unwrap().views[0]
        .output
        .clone();
    // keys "a" and "d" live on shards 0 and 1, so two workers both run;
    // one event a second, so the last minute's rows are held at any point
    let events = |bad_at: Option<i64>| {
        let mut text = String::new();
        for i in 0..20_000i64 {
            let k = if i % 3 == 0 { "a" } else { "d" };
            text.push_str(&format!(
                "{{\"id\": {i}, \"k\": \"{k}\", \"ts\": {}}}\n",
                1_704_067_200_000i64 + i * 1000
            ));
            if Some(i) == bad_at {
                text.push_str("not json\n");
            }
        }
        text
    };
    let input = write(dir.path(), "events.jsonl", &events(None));
    let whole = dir.path().join("rows.parquet");
    let (ok, _, stderr) = run_counts(&["--threads", "2"], &sql, &input, &whole);
    assert!(ok, "{stderr}");
    let whole = lockstep_io::read_rows(&whole, &schema).unwrap();
    assert_eq!(whole.len(), 20_000);
    // past the 4 batches of 4096 the reader holds back, and inside them
    for (bad_at, ext, threads) in [
        (18_000, "jsonl", "1"),
        (18_000, "jsonl", "2"),
        (18_000, "parquet", "2"),
        (1_000, "parquet", "2"),
    ] {
        let input = write(
            dir.path(),
            &format!("bad-{bad_at}.jsonl"),
            &events(Some(bad_at)),
        );
        let out = dir.path().join(format!("rows-{bad_at}-{threads}.{ext}"));
        let (ok, _, stderr) = run_counts(&["--strict", "--threads", threads], &sql, &input, &out);
        let case = format!("bad record after event {bad_at}, {threads} threads, .{ext}");
        assert!(!ok, "{case}");
        assert!(
            stderr.contains(&format!("line {}", bad_at + 2)),
            "{case}: {stderr}"
        );
        let written = lockstep_io::read_rows(&out, &schema).unwrap();
        // rows of events more than a minute (plus a second of lateness,
        // and up to two seconds to the shard's last event) before the bad
        // record are final; none of the last minute's can be
        let n = bad_at as usize;
        assert!(
            written.len() >= n - 70 && written.len() < n - 58,
            "{case}: {} rows",
            written.len()
        );
        assert_eq!(written[..], whole[..written.len()], "{case}");
    }
}

#[test]
fn bad_sql_points_at_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let sql = write(
        dir.path(),
        "bad.sql",
        &SQL.replace("PARTITION BY k", "PARTITION BY n"),
    );
    let input = write(dir.path(), "events.jsonl", "");
    let (ok, _, stderr) = run_counts(&[], &sql, &input, &dir.path().join("x.jsonl"));
    assert!(!ok);
    assert!(
        stderr.contains("bad.sql:4:3:") && stderr.contains("PARTITION BY the table key `k`"),
        "{stderr}"
    );
    assert!(stderr.contains("^"), "a caret under the column: {stderr}");
}

#[test]
fn unknown_view_lists_the_defined_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sql = write(dir.path(), "p.sql", SQL);
    let input = write(dir.path(), "events.jsonl", "");
    let (ok, _, stderr) = lockstep(&[
        "run", "--sql", &sql, "--view", "nope", "--input", &input, "--output", "x.jsonl",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("no view `nope`") && stderr.contains("counts"),
        "{stderr}"
    );
}

#[test]
fn gen_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    let c = dir.path().join("c.jsonl");
    for (p, seed) in [(&a, "9"), (&b, "9"), (&c, "10")] {
        let (ok, _, stderr) = lockstep(&[
            "gen",
            "--events",
            "2000",
            "--users",
            "50",
            "--seed",
            seed,
            "--out",
            p.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
    }
    let (ta, tb, tc) = (
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        std::fs::read(&c).unwrap(),
    );
    assert_eq!(ta, tb);
    assert_ne!(ta, tc);
    assert_eq!(jsonl(&a).len(), 2000);
}

#[test]
fn repeated_event_ids_are_skipped_within_the_ttl_of_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let sql = write(
        dir.path(),
        "p.sql",
        &SQL.replace("shards = 2)", "shards = 2, event_id = 'id')"),
    );
    let input = write(
        dir.path(),
        "events.jsonl",
        concat!(
            "{\"id\": 1, \"k\": \"a\", \"ts\": \"2024-01-01T00:00:10Z\"}\n",
            // a producer's retry: same id, same key
            "{\"id\": 1, \"k\": \"a\", \"ts\": \"2024-01-01T00:00:10Z\"}\n",
            "{\"id\": 2, \"k\": \"a\", \"ts\": \"2024-01-01T00:00:20Z\"}\n",
            // ten minutes of event time later, within the 24-hour TTL:
            // id 2 is still a repeat
            "{\"id\": 3, \"k\": \"a\", \"ts\": \"2024-01-01T00:10:10Z\"}\n",
            "{\"id\": 2, \"k\": \"a\", \"ts\": \"2024-01-01T00:10:11Z\"}\n",
        ),
    );
    let output = dir.path().join("rows.jsonl");
    let (ok, stdout, stderr) = run_counts(&["--idempotency-ttl", "24h"], &sql, &input, &output);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("3 accepted") && stdout.contains("2 repeated event ids skipped"),
        "{stdout}"
    );
    let ids: Vec<i64> = jsonl(&output)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    // id 2's row counts ids 1 and 2 in its minute: 3 if id 1's repeat had
    // been applied
    assert_eq!(jsonl(&output)[1]["n_1m"], 2, "the repeats were not counted");

    // pruning runs every 4096 events: with a short TTL and enough events,
    // an id repeated after the TTL is applied again
    let mut text = String::new();
    text.push_str("{\"id\": 0, \"k\": \"b\", \"ts\": \"2024-01-01T00:00:00Z\"}\n");
    for i in 1..70_000i64 {
        text.push_str(&format!(
            "{{\"id\": {i}, \"k\": \"c\", \"ts\": {}}}\n",
            1_704_067_200_000i64 + i * 100
        ));
    }
    text.push_str("{\"id\": 0, \"k\": \"b\", \"ts\": 1704074200000}\n");
    let input = write(dir.path(), "many.jsonl", &text);
    let (ok, stdout, stderr) = run_counts(&["--idempotency-ttl", "5m"], &sql, &input, &output);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("70001 accepted") && stdout.contains(" 0 repeated event ids skipped"),
        "{stdout}"
    );
    // without event_id nothing is skipped
    let sql_plain = write(dir.path(), "plain.sql", SQL);
    let input = write(
        dir.path(),
        "again.jsonl",
        "{\"id\": 1, \"k\": \"a\", \"ts\": 1}\n{\"id\": 1, \"k\": \"a\", \"ts\": 1}\n",
    );
    let (ok, stdout, stderr) = run_counts(&[], &sql_plain, &input, &output);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("2 accepted"), "{stdout}");
    // a bad TTL is refused naming the flag
    let (ok, _, stderr) = run_counts(&["--idempotency-ttl", "soon"], &sql, &input, &output);
    assert!(!ok && stderr.contains("--idempotency-ttl"), "{stderr}");
}

#[test]
fn an_event_far_ahead_of_now_is_refused_and_moves_no_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let sql = write(dir.path(), "p.sql", SQL);
    let input = write(
        dir.path(),
        "events.jsonl",
        concat!(
            "{\"id\": 1, \"k\": \"a\", \"ts\": \"2024-01-01T00:00:10Z\"}\n",
            // one producer's clock a century off
            "{\"id\": 2, \"k\": \"a\", \"ts\": \"2126-01-01T00:00:00Z\"}\n",
            "{\"id\": 3, \"k\": \"a\", \"ts\": \"2024-01-01T00:00:20Z\"}\n",
            "{\"id\": 4, \"k\": \"a\", \"ts\": \"2024-01-01T00:00:30Z\"}\n",
        ),
    );
    let output = dir.path().join("rows.jsonl");
    let (ok, stdout, stderr) =
        run_counts(&["--now", "2024-06-01T00:00:00Z"], &sql, &input, &output);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("3 accepted, 0 late, 1 dead-lettered"),
        "the later events are not late: {stdout}"
    );
    let dead = jsonl(&dir.path().join("rows.jsonl.deadletter.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["line"], 2);
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("max_event_time_ahead") && reason.contains("2126-01-01"),
        "{reason}"
    );
    let ids: Vec<i64> = jsonl(&output)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 3, 4]);
    // the table's option sets the bound; --now sets the clock
    let wide = write(
        dir.path(),
        "wide.sql",
        &SQL.replace(
            "shards = 2)",
            "shards = 2, max_event_time_ahead = '200 days')",
        ),
    );
    // (within a bound that wide, the century-ahead event goes in, and the
    // events after it are late: what the bound prevents)
    let (ok, stdout, _) = run_counts(&["--now", "2125-07-01T00:00:00Z"], &wide, &input, &output);
    assert!(
        ok && stdout.contains("2 accepted, 2 late, 0 dead-lettered"),
        "{stdout}"
    );
    let (ok, _, stderr) = run_counts(&["--now", "yesterday"], &sql, &input, &output);
    assert!(!ok && stderr.contains("--now"), "{stderr}");
}
