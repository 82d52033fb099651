//! Golden tests for the canonical view of DESIGN.md §2 over a hand-checked log:
//! features, labels, late events, emission order and serving.

use lockstep_core::value::Value;
use lockstep_core::{parse_pipeline, Engine, Outcome};
use std::sync::Arc;

const SQL: &str = include_str!("../../../config/ad_features.sql");

fn ts(hms: &str) -> Value {
    Value::Timestamp(lockstep_core::time::parse_timestamp(&format!("2024-01-01T{hms}Z")).unwrap())
}

fn event(id: i64, campaign: i64, kind: &str, hms: &str) -> Vec<Value> {
    vec![
        Value::BigInt(id),
        Value::text("u1"),
        Value::BigInt(campaign),
        Value::text(kind),
        Value::text("10.0.0.1"),
        Value::text("Mozilla/5.0"),
        ts(hms),
    ]
}

fn render(row: &[Value]) -> String {
    row.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn canonical_view_golden_rows() {
    let catalog = Arc::new(parse_pipeline(SQL).unwrap());
    let mut engine = Engine::new(catalog, &["user_ad_features"]).unwrap();
    let log = [
        event(1, 7, "impression", "00:00:00"),
        event(2, 7, "click", "00:05:00"),
        event(3, 7, "impression", "00:10:00"),
        event(4, 8, "impression", "00:30:00"),
        event(5, 7, "click", "00:26:00"), // below the watermark 00:29:30: late
        event(6, 8, "impression", "01:20:00"),
        event(7, 8, "click", "01:29:59"),
        event(8, 7, "impression", "03:00:00"),
    ];
    let mut out = Vec::new();
    let mut late = Vec::new();
    let mut emitted_after = Vec::new();
    for e in &log {
        match engine.push(e, &mut out).unwrap() {
            Outcome::Late { .. } => late.push(e[0].clone()),
            Outcome::Accepted { .. } => {}
        }
        emitted_after.push(out.len());
    }
    engine.finish(&mut out);
    assert_eq!(late, vec![Value::BigInt(5)]);
    let stats = engine.stats();
    assert_eq!(
        stats.iter().map(|s| s.views[0].late).sum::<u64>(),
        1,
        "late counted per view"
    );
    assert_eq!(stats.iter().map(|s| s.late).sum::<u64>(), 1);
    // rows are held until the watermark passes event_time + 15 minutes
    assert_eq!(emitted_after, vec![0, 0, 0, 2, 2, 3, 3, 4]);
    let got: Vec<String> = out.iter().map(|e| render(&e.row)).collect();
    let want = [
        "1 | u1 | 7 | 2024-01-01T00:00:00.000Z | 1 | 1 | 0 | 0.0 | 1",
        "3 | u1 | 7 | 2024-01-01T00:10:00.000Z | 2 | 2 | 1 | 0.3333333333333333 | 0",
        "4 | u1 | 8 | 2024-01-01T00:30:00.000Z | 3 | 3 | 1 | 0.25 | 0",
        "6 | u1 | 8 | 2024-01-01T01:20:00.000Z | 2 | 4 | 1 | 0.2 | 1",
        "8 | u1 | 7 | 2024-01-01T03:00:00.000Z | 1 | 5 | 2 | 0.3333333333333333 | 0",
    ];
    assert_eq!(got, want);
}

#[test]
fn serving_answers_what_the_training_row_will_hold() {
    let catalog = Arc::new(parse_pipeline(SQL).unwrap());
    let mut engine = Engine::new(catalog, &[]).unwrap();
    let mut out = Vec::new();
    for e in [
        event(1, 7, "impression", "00:00:00"),
        event(2, 7, "click", "00:05:00"),
        event(3, 7, "impression", "00:10:00"),
    ] {
        engine.push(&e, &mut out).unwrap();
    }
    let next = event(4, 8, "impression", "00:30:00");
    let served = engine.serve(0, &next).unwrap();
    // serving twice changes nothing
    assert_eq!(engine.serve(0, &next).unwrap(), served);
    assert_eq!(
        render(&served),
        "4 | u1 | 8 | 2024-01-01T00:30:00.000Z | 3 | 3 | 1 | 0.25 | NULL"
    );
    engine.push(&next, &mut out).unwrap();
    engine.finish(&mut out);
    let row = out.iter().find(|e| e.row[0] == Value::BigInt(4)).unwrap();
    for (i, (s, r)) in served.iter().zip(&row.row).enumerate() {
        if i != 8 {
            assert!(
                s.bit_eq(r),
                "column {i}: served {s} but training row has {r}"
            );
        }
    }
}

/// Serve-and-ingest says whether the event will have a training row; each
/// answer is checked against what pushing the event then does.
#[test]
fn serving_says_whether_a_training_row_will_exist() {
    use lockstep_core::window::RowFate;
    let sql = SQL.replace(
        "FROM ad_events\n",
        "FROM ad_events\nWHERE campaign_id <> 99\n",
    ) + "\nCREATE VIEW big_days AS
SELECT event_id, COUNT(*) OVER d AS n_day,
  COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time
    RANGE BETWEEN CURRENT ROW AND INTERVAL '1' MINUTE FOLLOWING) AS next_min
FROM ad_events
WINDOW d AS (PARTITION BY user_id ORDER BY event_time
             RANGE BETWEEN INTERVAL '24' HOUR PRECEDING AND CURRENT ROW)
QUALIFY n_day >= 2;
CREATE VIEW busy_next_minute AS
SELECT event_id, COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time
    RANGE BETWEEN CURRENT ROW AND INTERVAL '1' MINUTE FOLLOWING) AS next_min
FROM ad_events
QUALIFY next_min >= 2;";
    assert!(
        sql.contains("WHERE campaign_id <> 99"),
        "the view's FROM moved"
    );
    let catalog = Arc::new(parse_pipeline(&sql).unwrap());
    let mut engine = Engine::new(catalog, &[]).unwrap();
    let mut out = Vec::new();
    let cases = [
        (0, event(1, 7, "impression", "00:00:00"), RowFate::Row),
        (0, event(2, 7, "click", "00:05:00"), RowFate::NotQualified),
        (0, event(3, 99, "impression", "00:06:00"), RowFate::Filtered),
        // QUALIFY on a PRECEDING count: known at arrival
        (1, event(4, 7, "impression", "00:07:00"), RowFate::Row),
        (
            2,
            event(5, 7, "impression", "00:08:00"),
            RowFate::QualifiedWhenFinal,
        ),
    ];
    for (view, e, want) in &cases {
        let (served, fate) = engine.serve_with_fate(*view, e).unwrap();
        assert_eq!(&fate, want, "event {}", e[0]);
        assert_eq!(served, engine.serve(*view, e).unwrap());
        engine.push(e, &mut out).unwrap();
    }
    // n_day is 1 for the first event of a day: QUALIFY n_day >= 2 drops it
    let fresh = event(6, 7, "impression", "00:09:00");
    let mut other_user = fresh.clone();
    other_user[1] = Value::text("u2");
    assert_eq!(
        engine.serve_with_fate(1, &other_user).unwrap().1,
        RowFate::NotQualified
    );
    // far below the watermark: late, whatever the view
    engine
        .push(&event(7, 7, "impression", "02:00:00"), &mut out)
        .unwrap();
    let old = event(8, 7, "impression", "00:30:00");
    let (_, fate) = engine.serve_with_fate(0, &old).unwrap();
    assert!(matches!(fate, RowFate::Late { .. }), "{fate:?}");
    assert!(matches!(
        engine.push(&old, &mut out).unwrap(),
        Outcome::Late { .. }
    ));
    engine.finish(&mut out);
    // what was promised is what came out
    let ids_of = |view: usize| -> Vec<Value> {
        out.iter()
            .filter(|e| e.view == view)
            .map(|e| e.row[0].clone())
            .collect()
    };
    let v0 = ids_of(0);
    assert!(v0.contains(&Value::BigInt(1)));
    assert!(!v0.contains(&Value::BigInt(2)) && !v0.contains(&Value::BigInt(3)));
    assert!(ids_of(1).contains(&Value::BigInt(4)));
}
