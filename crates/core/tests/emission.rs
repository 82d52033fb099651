//! When rows come out: a row with a FOLLOWING frame is held exactly until the
//! shard's watermark passes the frame's end, no longer.

use lockstep_core::value::Value;
use lockstep_core::{parse_pipeline, Engine};
use std::sync::Arc;

fn engine(view: &str) -> Engine {
    let sql = format!(
        "CREATE TABLE ev (id BIGINT, k TEXT, ts TIMESTAMP) WITH (key = 'k', event_time = 'ts', lateness = '0 seconds', shards = 1);\n{view}"
    );
    Engine::new(Arc::new(parse_pipeline(&sql).unwrap()), &[]).unwrap()
}

fn ev(id: i64, k: &str, ms: i64) -> Vec<Value> {
    vec![Value::BigInt(id), Value::text(k), Value::Timestamp(ms)]
}

/// Pushes the events and returns, after each, the ids emitted so far.
fn emitted_after_each(engine: &mut Engine, events: &[Vec<Value>]) -> Vec<Vec<i64>> {
    let mut out = Vec::new();
    events
        .iter()
        .map(|e| {
            engine.push(e, &mut out).unwrap();
            out.iter()
                .map(|r| match r.row[0] {
                    Value::BigInt(i) => i,
                    _ => panic!(),
                })
                .collect()
        })
        .collect()
}

#[test]
fn lead_rows_leave_once_their_follower_is_below_the_watermark() {
    let mut e = engine("CREATE VIEW v AS SELECT id, LEAD(id) OVER (PARTITION BY k ORDER BY ts) AS next_id FROM ev;");
    let got = emitted_after_each(
        &mut e,
        &[
            ev(1, "a", 1000),
            ev(2, "b", 1500),
            ev(3, "a", 2000),
            ev(4, "b", 2500),
            ev(5, "b", 3000),
        ],
    );
    // 1's follower (3, t=2000) exists after event 3, and the watermark passes
    // 2000 with event 4 (t=2500); 2's follower (4, t=2500) passes with event 5.
    assert_eq!(got, vec![vec![], vec![], vec![], vec![1], vec![1, 2]]);
    let mut out = Vec::new();
    e.finish(&mut out);
    let next: Vec<(Value, Value)> = out
        .iter()
        .map(|r| (r.row[0].clone(), r.row[1].clone()))
        .collect();
    // at the end: rows whose frames closed first (4: follower at 3000), then
    // rows that never got a follower, in (event time, position) order
    assert_eq!(
        next,
        vec![
            (Value::BigInt(4), Value::BigInt(5)),
            (Value::BigInt(3), Value::Null),
            (Value::BigInt(5), Value::Null)
        ]
    );
}

#[test]
fn range_labels_leave_when_the_watermark_passes_the_frame_end() {
    let mut e = engine(
        "CREATE VIEW v AS SELECT id, COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN CURRENT ROW AND INTERVAL '1' SECOND FOLLOWING) AS n FROM ev;",
    );
    // row 1's frame ends at 2000: the watermark must exceed it (2001), not reach it
    let got = emitted_after_each(
        &mut e,
        &[ev(1, "a", 1000), ev(2, "a", 2000), ev(3, "b", 2001)],
    );
    assert_eq!(got, vec![vec![], vec![], vec![1]]);
}
