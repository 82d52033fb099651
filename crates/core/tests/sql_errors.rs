//! Definition-time errors: each unsupported construct is refused with the
//! line and column of the offending SQL and a pointer to what is supported.

use lockstep_core::parse_pipeline;

const TABLE: &str = "CREATE TABLE ev (id BIGINT, k TEXT, c BIGINT, v DOUBLE, ts TIMESTAMP)\n  WITH (key = 'k', event_time = 'ts');\n";

fn err(view: &str) -> (u64, u64, String) {
    let e = parse_pipeline(&format!("{TABLE}{view}")).expect_err("should be refused");
    (e.line, e.column, e.message)
}

fn assert_err(view: &str, line: u64, column: u64, needle: &str) {
    let (l, c, m) = err(view);
    assert!(m.contains(needle), "message `{m}` lacks `{needle}`");
    assert_eq!((l, c), (line, column), "position of `{m}`");
}

#[test]
fn unknown_column_points_at_it() {
    assert_err(
        "CREATE VIEW w AS\nSELECT id, nope FROM ev;",
        4,
        12,
        "unknown column `nope`",
    );
}

#[test]
fn group_by_is_refused_with_the_alternative() {
    let (l, _, m) = err("CREATE VIEW w AS SELECT k FROM ev GROUP BY k;");
    assert_eq!(l, 3);
    assert!(
        m.contains("GROUP BY") && m.contains("window functions"),
        "{m}"
    );
}

#[test]
fn aggregate_without_over_is_refused() {
    assert_err(
        "CREATE VIEW w AS SELECT COUNT(*) AS n FROM ev;",
        3,
        25,
        "needs OVER",
    );
}

#[test]
fn windows_must_partition_by_the_key_first() {
    assert_err(
        "CREATE VIEW w AS SELECT id,\n  COUNT(*) OVER (PARTITION BY c ORDER BY ts) AS n FROM ev;",
        4,
        3,
        "PARTITION BY the table key `k` first",
    );
}

#[test]
fn windows_must_order_by_event_time() {
    assert_err(
        "CREATE VIEW w AS SELECT id, COUNT(*) OVER (PARTITION BY k ORDER BY id) AS n FROM ev;",
        3,
        29,
        "ORDER BY the event time `ts`",
    );
}

#[test]
fn unbounded_following_is_refused() {
    let (_, _, m) = err("CREATE VIEW w AS SELECT id, COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS n FROM ev;");
    assert!(m.contains("UNBOUNDED FOLLOWING"), "{m}");
}

#[test]
fn groups_frames_and_numeric_range_bounds_are_refused() {
    let (_, _, m) = err("CREATE VIEW w AS SELECT id, COUNT(*) OVER (PARTITION BY k ORDER BY ts GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW) AS n FROM ev;");
    assert!(m.contains("GROUPS"), "{m}");
    let (l, c, m) = err("CREATE VIEW w AS SELECT id,\n COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN 5 PRECEDING AND CURRENT ROW) AS n FROM ev;");
    assert!(m.contains("INTERVAL"), "{m}");
    assert_eq!((l, c), (4, 58));
}

#[test]
fn unknown_functions_list_the_supported_ones() {
    let (_, _, m) = err("CREATE VIEW w AS SELECT id, SQRT(v) AS r FROM ev;");
    assert!(
        m.contains("unknown function SQRT") && m.contains("COALESCE"),
        "{m}"
    );
}

#[test]
fn joins_are_refused() {
    let (_, _, m) = err("CREATE VIEW w AS SELECT a.id FROM ev a JOIN ev b ON a.id = b.id;");
    assert!(m.contains("JOIN"), "{m}");
}

#[test]
fn syntax_errors_carry_the_position() {
    let (l, c, m) = err("CREATE VIEW w AS SELECT id,, k FROM ev;");
    assert!(m.starts_with("syntax error"), "{m}");
    assert_eq!(l, 3);
    assert!(c > 20, "column {c}");
    // EXCLUDE is not parsed by sqlparser; the error still points at it
    let (l, _, m) = err("CREATE VIEW w AS SELECT id,\n COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW) AS n FROM ev;");
    assert!(m.starts_with("syntax error"), "{m}");
    assert_eq!(l, 4);
}

#[test]
fn type_errors_are_pointed() {
    assert_err(
        "CREATE VIEW w AS SELECT id, k + 1 AS x FROM ev;",
        3,
        29,
        "does not apply to TEXT and BIGINT",
    );
    let (_, _, m) =
        err("CREATE VIEW w AS SELECT id, SUM(k) OVER (PARTITION BY k ORDER BY ts) AS s FROM ev;");
    assert!(m.contains("SUM: does not apply to TEXT"), "{m}");
    let (_, _, m) = err("CREATE VIEW w AS SELECT id FROM ev WHERE v;");
    assert!(m.contains("expected a BOOLEAN condition"), "{m}");
}

#[test]
fn the_event_id_option_names_a_text_or_bigint_column() {
    let c = parse_pipeline(
        "CREATE TABLE t (a TEXT, id BIGINT, ts TIMESTAMP) WITH (key = 'a', event_time = 'ts', event_id = 'id');",
    )
    .unwrap();
    assert_eq!(c.tables[0].event_id, Some(1));
    let c = parse_pipeline(
        "CREATE TABLE t (a TEXT, ts TIMESTAMP) WITH (key = 'a', event_time = 'ts');",
    )
    .unwrap();
    assert_eq!(c.tables[0].event_id, None);
    let e = parse_pipeline(
        "CREATE TABLE t (a TEXT, ts TIMESTAMP) WITH (key = 'a', event_time = 'ts', event_id = 'nope');",
    )
    .unwrap_err();
    assert!(
        e.message.contains("event_id `nope` is not a column"),
        "{}",
        e.message
    );
    let e = parse_pipeline(
        "CREATE TABLE t (a TEXT, x DOUBLE, ts TIMESTAMP) WITH (key = 'a', event_time = 'ts', event_id = 'x');",
    )
    .unwrap_err();
    assert!(
        e.message.contains("must be TEXT or BIGINT"),
        "{}",
        e.message
    );
}

#[test]
fn table_options_are_checked() {
    let e = parse_pipeline(
        "CREATE TABLE t (a TEXT, ts TIMESTAMP) WITH (key = 'b', event_time = 'ts');",
    )
    .unwrap_err();
    assert!(
        e.message.contains("key `b` is not a column"),
        "{}",
        e.message
    );
    let e = parse_pipeline(
        "CREATE TABLE t (a TEXT, ts TIMESTAMP) WITH (key = 'a', event_time = 'ts', shards = 0);",
    )
    .unwrap_err();
    assert!(e.message.contains("shards must be"), "{}", e.message);
    let e = parse_pipeline("CREATE TABLE t (a TEXT, ts TIMESTAMP) WITH (key = 'a', event_time = 'ts', colour = 'red');").unwrap_err();
    assert!(
        e.message.contains("unknown table option `colour`"),
        "{}",
        e.message
    );
    let e =
        parse_pipeline("CREATE TABLE t (a TEXT, ts BIGINT) WITH (key = 'a', event_time = 'ts');")
            .unwrap_err();
    assert!(e.message.contains("must be a TIMESTAMP"), "{}", e.message);
}

#[test]
fn the_whole_dialect_compiles() {
    let sql = format!(
        "{TABLE}CREATE VIEW w AS SELECT id, k, ts,
  COUNT(DISTINCT c) FILTER (WHERE v > 0) OVER h AS distinct_c,
  AVG(v) OVER (h) AS avg_v,
  MIN(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS min3,
  LAG(v) OVER (PARTITION BY k ORDER BY ts) AS prev_v,
  LEAD(v, 2, 0.0) OVER (PARTITION BY k ORDER BY ts) AS next2_v,
  EXP_DECAY_SUM(v, INTERVAL '6' HOUR) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '7' DAY PRECEDING AND CURRENT ROW) AS decayed,
  SUM(v) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '10' MINUTE PRECEDING AND INTERVAL '1' MILLISECOND PRECEDING) AS before_me,
  COALESCE(v, 0.0) * 2 + CAST(c AS DOUBLE) AS arith,
  CASE c WHEN 1 THEN 'one' ELSE 'other' END AS label,
  EXTRACT(HOUR FROM ts) AS hour,
  EXTRACT(EPOCH FROM ts - LAG(ts) OVER (PARTITION BY k ORDER BY ts)) AS secs_since_prev,
  ts + INTERVAL '1' DAY AS tomorrow,
  ua_browser(k) AS browser, ua_is_bot(k) AS bot,
  c IN (1, 2) AND NOT (v BETWEEN 0 AND 1) OR k IS NULL AS flag
FROM ev
WHERE c >= 0 AND ts > TIMESTAMP '2020-01-01 00:00:00'
WINDOW h AS (PARTITION BY k, c ORDER BY ts RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW)
QUALIFY avg_v IS NOT NULL OR distinct_c > 0;"
    );
    let cat = parse_pipeline(&sql).unwrap_or_else(|e| panic!("{e}"));
    let v = &cat.views[0];
    assert_eq!(v.output.len(), 18);
    assert_eq!(v.groups.len(), 2);
    assert!(
        v.label_columns == vec![7],
        "LEAD makes next2_v a label: {:?}",
        v.label_columns
    );
}

#[test]
fn named_windows_inherit_and_cycles_are_refused() {
    let ok = parse_pipeline(&format!(
        "{TABLE}CREATE VIEW w AS SELECT id,
  COUNT(*) OVER (base RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW) AS n1h,
  COUNT(*) OVER base AS n_all
FROM ev WINDOW base AS (PARTITION BY k ORDER BY ts);"
    ))
    .unwrap();
    assert_eq!(
        ok.views[0].calls.len(),
        2,
        "two frames over one inherited window"
    );
    let (_, _, m) =
        err("CREATE VIEW w AS SELECT id, COUNT(*) OVER a AS n FROM ev WINDOW a AS (b), b AS (a);");
    assert!(m.contains("cycle"), "{m}");
    let (_, _, m) = err("CREATE VIEW w AS SELECT id, COUNT(*) OVER nope AS n FROM ev;");
    assert!(m.contains("unknown window `nope`"), "{m}");
}

#[test]
fn names_that_would_need_escaping_in_object_paths_are_refused() {
    // a view: pointed at, with a spelling that works
    assert_err(
        "CREATE VIEW besucher_signale_ü AS SELECT id, k FROM ev;",
        3,
        13,
        "`besucher_signale_ue`",
    );
    let (_, _, m) = err("CREATE VIEW \"two words\" AS SELECT id FROM ev;");
    assert!(m.contains("ASCII letters, digits and `_`"), "{m}");
    // a table
    let e = parse_pipeline(
        "CREATE TABLE seitenaufrufe_ä (k TEXT, ts TIMESTAMP) WITH (key = 'k', event_time = 'ts');",
    )
    .expect_err("refused");
    assert_eq!((e.line, e.column), (1, 14));
    assert!(
        e.message.contains("table name `seitenaufrufe_ä`"),
        "{}",
        e.message
    );
    // plain names still work, underscores and digits included
    parse_pipeline(&format!(
        "{TABLE}CREATE VIEW _v2_ok AS SELECT id, COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '1' MINUTE PRECEDING AND CURRENT ROW) AS n FROM ev;"
    ))
    .unwrap();
}
