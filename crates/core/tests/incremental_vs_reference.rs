//! Property test: for random logs (several keys, ties, out-of-order, late and
//! duplicate deliveries) and random views drawn from the dialect, the
//! incremental engine's rows equal the brute-force reference's, bit for bit.

mod support;

use lockstep_core::value::{Row, Value};
use lockstep_core::{parse_pipeline, Engine};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const TABLE: &str =
    "CREATE TABLE ev (id BIGINT, k TEXT, c BIGINT, v BIGINT, d DOUBLE, ts TIMESTAMP)";

#[derive(Debug, Clone)]
struct Case {
    sweep_every: Option<u64>,
    lateness_s: i64,
    shards: u32,
    calls: Vec<String>,
    filter: Option<String>,
    qualify: Option<String>,
    log: Vec<Vec<Value>>,
}

fn agg() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("COUNT(*)".to_string()),
        Just("COUNT(v)".to_string()),
        Just("COUNT(DISTINCT v)".to_string()),
        Just("SUM(v)".to_string()),
        Just("SUM(d)".to_string()),
        Just("AVG(v)".to_string()),
        Just("AVG(d)".to_string()),
        Just("MIN(d)".to_string()),
        Just("MAX(v)".to_string()),
        Just("MAX(CASE WHEN c = 1 THEN 1 ELSE 0 END)".to_string()),
        Just("SUM(CASE WHEN c = 0 THEN 1.0 ELSE 0.5 END)".to_string()),
        Just("MAX(CASE WHEN k = 'a' THEN 1 ELSE 0 END)".to_string()),
        Just("EXP_DECAY_SUM(d, INTERVAL '3' SECOND)".to_string()),
    ]
}

fn bound_s(following: bool) -> impl Strategy<Value = String> {
    (0i64..8).prop_map(move |n| {
        if n == 0 {
            "CURRENT ROW".to_string()
        } else if following {
            format!("INTERVAL '{n}' SECOND FOLLOWING")
        } else {
            format!("INTERVAL '{n}' SECOND PRECEDING")
        }
    })
}

fn frame() -> impl Strategy<Value = String> {
    prop_oneof![
        // PRECEDING .. CURRENT ROW / PRECEDING
        (1i64..8, 0i64..3).prop_map(|(a, b)| if b == 0 {
            format!("RANGE BETWEEN INTERVAL '{a}' SECOND PRECEDING AND CURRENT ROW")
        } else {
            let (hi, lo) = (a.min(b), a.max(b));
            format!("RANGE BETWEEN INTERVAL '{lo}' SECOND PRECEDING AND INTERVAL '{hi}' SECOND PRECEDING")
        }),
        Just("RANGE BETWEEN INTERVAL '2' SECOND PRECEDING AND INTERVAL '1' MILLISECOND PRECEDING".to_string()),
        Just("RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW".to_string()),
        Just("RANGE BETWEEN UNBOUNDED PRECEDING AND INTERVAL '2' SECOND PRECEDING".to_string()),
        (bound_s(false), bound_s(true)).prop_map(|(a, b)| format!("RANGE BETWEEN {a} AND {b}")),
        (1i64..6, 1i64..6).prop_map(|(a, b)| {
            let (lo, hi) = (a.min(b), a.max(b));
            format!("RANGE BETWEEN INTERVAL '{lo}' SECOND FOLLOWING AND INTERVAL '{hi}' SECOND FOLLOWING")
        }),
        (0i64..4, 0i64..3).prop_map(|(a, b)| format!("ROWS BETWEEN {a} PRECEDING AND {b} FOLLOWING")),
        (0i64..4).prop_map(|a| format!("ROWS BETWEEN {a} PRECEDING AND CURRENT ROW")),
        Just("ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW".to_string()),
    ]
}

fn call() -> impl Strategy<Value = String> {
    let partition = prop_oneof![Just("k"), Just("k, c")];
    let filter = prop_oneof![
        Just(""),
        Just(" FILTER (WHERE c = 0)"),
        Just(" FILTER (WHERE d > 0.0)"),
        Just(" FILTER (WHERE k <> 'b')")
    ];
    prop_oneof![
        3 => (agg(), filter, partition.clone(), frame()).prop_map(|(a, f, p, fr)| {
            let fr = if a.starts_with("EXP_DECAY") && fr.contains("UNBOUNDED") {
                "RANGE BETWEEN INTERVAL '4' SECOND PRECEDING AND CURRENT ROW".to_string()
            } else {
                fr
            };
            format!("{a}{f} OVER (PARTITION BY {p} ORDER BY ts {fr})")
        }),
        1 => (prop_oneof![Just("LAG"), Just("LEAD")], 0i64..3, partition)
            .prop_map(|(f, n, p)| format!("{f}(v, {n}, -1) OVER (PARTITION BY {p} ORDER BY ts)")),
    ]
}

fn log() -> impl Strategy<Value = Vec<Vec<Value>>> {
    let ev = (
        0usize..4, // key
        0i64..2,   // c
        prop_oneof![3 => (0i64..5).prop_map(Some), 1 => Just(None)],
        prop_oneof![3 => (-4.0f64..4.0).prop_map(Some), 1 => Just(Some(0.1)), 1 => Just(None)],
        prop_oneof![6 => 0i64..1500, 2 => -4000i64..0, 1 => -20_000i64..-4000], // time step (ms), ties via rounding
        0u8..10,                                                                // duplicate?
    );
    proptest::collection::vec(ev, 1..45).prop_map(|evs| {
        let mut log = Vec::new();
        let mut t = 1_700_000_000_000i64;
        for (i, (k, c, v, d, step, dup)) in evs.into_iter().enumerate() {
            let base = t + step;
            if step > 0 {
                t = base;
            }
            let ts = base - base.rem_euclid(250); // coarse times make ties common
            let e = vec![
                Value::BigInt(i as i64),
                Value::text(["a", "b", "c", "d"][k]),
                Value::BigInt(c),
                v.map_or(Value::Null, Value::BigInt),
                d.map_or(Value::Null, Value::Double),
                Value::Timestamp(ts),
            ];
            if dup == 0 {
                // a duplicate delivery: same payload, its own id
                let mut again = e.clone();
                again[0] = Value::BigInt(1000 + i as i64);
                log.push(e);
                log.push(again);
            } else {
                log.push(e);
            }
        }
        log
    })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(None), Just(Some(1u64)), Just(Some(3u64))],
        0i64..4,
        1u32..4,
        proptest::collection::vec(call(), 1..5),
        prop_oneof![3 => Just(None), 1 => Just(Some("v IS NOT NULL OR c = 1".to_string())), 1 => Just(Some("k <> 'd'".to_string()))],
        prop_oneof![3 => Just(None), 1 => Just(Some("c = 0".to_string())), 1 => Just(Some("f0 IS NOT NULL".to_string())), 1 => Just(Some("k <> 'c'".to_string()))],
        log(),
    )
        .prop_map(|(sweep_every, lateness_s, shards, calls, filter, qualify, log)| Case {
            sweep_every,
            lateness_s,
            shards,
            calls,
            filter,
            qualify,
            log,
        })
}

fn sql(c: &Case) -> String {
    let cols: Vec<String> = c
        .calls
        .iter()
        .enumerate()
        .map(|(i, x)| format!("  {x} AS f{i}"))
        .collect();
    format!(
        "{TABLE} WITH (key = 'k', event_time = 'ts', lateness = '{} seconds', shards = {});\n\
         CREATE VIEW w AS SELECT id, k, ts,\n{}\nFROM ev{}{};",
        c.lateness_s,
        c.shards,
        cols.join(",\n"),
        c.filter
            .as_ref()
            .map_or(String::new(), |f| format!(" WHERE {f}")),
        c.qualify
            .as_ref()
            .map_or(String::new(), |q| format!(" QUALIFY {q}")),
    )
}

fn run_engine(
    catalog: Arc<lockstep_core::Catalog>,
    log: &[Vec<Value>],
    sweep_every: Option<u64>,
) -> BTreeMap<i64, Row> {
    let mut engine = Engine::new(catalog, &[]).unwrap();
    if let Some(n) = sweep_every {
        engine.set_sweep_every(n);
    }
    let mut out = Vec::new();
    for e in log {
        engine.push(e, &mut out).unwrap();
    }
    engine.finish(&mut out);
    let mut rows = BTreeMap::new();
    for em in out {
        let Value::BigInt(id) = em.row[0] else {
            panic!()
        };
        assert!(
            rows.insert(id, em.row).is_none(),
            "row for event {id} emitted twice"
        );
    }
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_brute_force(c in case()) {
        let text = sql(&c);
        let catalog = Arc::new(parse_pipeline(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?);
        let got = run_engine(catalog.clone(), &c.log, c.sweep_every);
        let want = support::reference::evaluate(&catalog, 0, &c.log, 0);
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "which events got rows\n{}", text);
        for (id, w) in &want {
            let g = &got[id];
            prop_assert!(lockstep_core::value::rows_bit_eq(g, w), "event {}: engine {:?} != reference {:?}\n{}", id, g, w, text);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Serving the next event before it is ingested answers exactly the
    /// features its training row will hold (labels aside), and serving never
    /// changes what the engine emits.
    #[test]
    fn serving_predicts_the_training_row(c in case()) {
        let text = sql(&c);
        let catalog = Arc::new(parse_pipeline(&text).unwrap());
        let labels = catalog.views[0].label_columns.clone();
        let mut engine = Engine::new(catalog.clone(), &[]).unwrap();
        let mut out = Vec::new();
        let mut served = BTreeMap::new();
        for e in &c.log {
            let s = engine.serve(0, e).unwrap();
            let Value::BigInt(id) = e[0] else { panic!() };
            if let lockstep_core::Outcome::Accepted { .. } = engine.push(e, &mut out).unwrap() {
                served.insert(id, s);
            }
        }
        engine.finish(&mut out);
        for em in &out {
            let Value::BigInt(id) = em.row[0] else { panic!() };
            let s = &served[&id];
            for (i, (a, b)) in s.iter().zip(&em.row).enumerate() {
                if !labels.contains(&i) {
                    prop_assert!(a.bit_eq(b), "event {} column {}: served {:?}, row {:?}\n{}", id, i, s, em.row, text);
                }
            }
        }
        // serving interleaved or not: same rows
        let plain = run_engine(catalog, &c.log, c.sweep_every);
        prop_assert_eq!(plain.len(), out.len());
        for em in &out {
            let Value::BigInt(id) = em.row[0] else { panic!() };
            prop_assert!(lockstep_core::value::rows_bit_eq(&plain[&id], &em.row));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Snapshot every shard after `cut` events, encode the snapshots to bytes,
    /// restore them into a fresh engine and feed it the rest of the log: the
    /// rows before the cut plus the rows after it are exactly the rows of an
    /// uninterrupted run, in the same order. This is what a checkpoint and a
    /// restart (or a new shard owner) rely on.
    #[test]
    fn snapshot_restore_continues_exactly(c in case(), cut_frac in 0.0f64..1.0) {
        let text = sql(&c);
        let catalog = Arc::new(parse_pipeline(&text).unwrap());
        let mut whole = Engine::new(catalog.clone(), &[]).unwrap();
        let mut want = Vec::new();
        for e in &c.log {
            whole.push(e, &mut want).unwrap();
        }
        whole.finish(&mut want);

        let cut = ((c.log.len() as f64) * cut_frac) as usize;
        let mut first = Engine::new(catalog.clone(), &[]).unwrap();
        let mut got = Vec::new();
        for e in &c.log[..cut] {
            first.push(e, &mut got).unwrap();
        }
        let config = bincode::config::standard();
        let mut second = Engine::new(catalog.clone(), &[]).unwrap();
        for shard in 0..c.shards {
            let bytes = bincode::serde::encode_to_vec(first.snapshot(shard).unwrap(), config).unwrap();
            let (snap, _): (lockstep_core::ShardSnapshot, usize) =
                bincode::serde::decode_from_slice(&bytes, config).unwrap();
            second.restore(shard, snap).unwrap();
        }
        drop(first);
        for e in &c.log[cut..] {
            second.push(e, &mut got).unwrap();
        }
        second.finish(&mut got);
        prop_assert_eq!(got.len(), want.len(), "row count, cut at {}\n{}", cut, text);
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(g.shard == w.shard && lockstep_core::value::rows_bit_eq(&g.row, &w.row),
                "cut at {}: {:?} != {:?}\n{}", cut, g, w, text);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Incremental checkpoints: after every few events, write the shard's
    /// meta and its changed slots (as bytes) into a key-value map, as the
    /// daemon does; then restore from the map at a random point and go on.
    /// The rows are those of an uninterrupted run, so no change was missed
    /// by the dirty tracking.
    #[test]
    fn incremental_checkpoints_restore_exactly(
        c in case(),
        every in 1usize..12,
        cut_frac in 0.0f64..1.0,
    ) {
        use lockstep_core::{ShardMeta, SlotKey};
        use lockstep_core::window::Entry;
        use std::collections::BTreeMap;
        let text = sql(&c);
        let catalog = Arc::new(parse_pipeline(&text).unwrap());
        let mut whole = Engine::new(catalog.clone(), &[]).unwrap();
        if let Some(n) = c.sweep_every {
            whole.set_sweep_every(n);
        }
        let mut want = Vec::new();
        for e in &c.log {
            whole.push(e, &mut want).unwrap();
        }
        whole.finish(&mut want);

        let config = bincode::config::standard();
        let cut = ((c.log.len() as f64) * cut_frac) as usize;
        let mut first = Engine::new(catalog.clone(), &[]).unwrap();
        if let Some(n) = c.sweep_every {
            first.set_sweep_every(n);
        }
        // per shard: encoded meta and encoded slots, as the daemon's store
        type Stored = (Vec<u8>, BTreeMap<SlotKey, Vec<u8>>);
        let mut store: Vec<Stored> =
            vec![(Vec::new(), BTreeMap::new()); c.shards as usize];
        let mut got = Vec::new();
        let mut committed_rows = 0;
        let checkpoint = |e: &mut Engine, store: &mut Vec<Stored>| {
            for shard in 0..c.shards {
                let d = e.checkpoint_delta(shard).unwrap();
                let st = &mut store[shard as usize];
                st.0 = bincode::serde::encode_to_vec(&d.meta, config).unwrap();
                for (k, entry) in d.slots {
                    st.1.insert(k, bincode::serde::encode_to_vec(&entry, config).unwrap());
                }
            }
        };
        let mut last_ckpt = 0;
        for (i, e) in c.log[..cut].iter().enumerate() {
            first.push(e, &mut got).unwrap();
            if (i + 1) % every == 0 {
                checkpoint(&mut first, &mut store);
                committed_rows = got.len();
                last_ckpt = i + 1;
            }
        }
        drop(first);
        // the crash loses what came after the last checkpoint
        got.truncate(committed_rows);
        let mut second = Engine::new(catalog.clone(), &[]).unwrap();
        if let Some(n) = c.sweep_every {
            second.set_sweep_every(n);
        }
        if last_ckpt > 0 {
            for shard in 0..c.shards {
                let (meta, slots) = &store[shard as usize];
                let (meta, _): (ShardMeta, usize) =
                    bincode::serde::decode_from_slice(meta, config).unwrap();
                let slots = slots.iter().map(|(k, b)| {
                    let (e, _): (Entry, usize) = bincode::serde::decode_from_slice(b, config).unwrap();
                    (*k, e)
                });
                second.restore_parts(shard, meta, slots).unwrap();
            }
        }
        for e in &c.log[last_ckpt..] {
            second.push(e, &mut got).unwrap();
        }
        second.finish(&mut got);
        prop_assert_eq!(got.len(), want.len(), "row count, checkpoint every {} cut at {}\n{}", every, cut, text);
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(g.shard == w.shard && lockstep_core::value::rows_bit_eq(&g.row, &w.row),
                "every {} cut at {}: {:?} != {:?}\n{}", every, cut, g, w, text);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Events pushed in prepared batches (WHERE, QUALIFY and the calls'
    /// inputs evaluated for the whole batch, once per distinct text when
    /// the texts are shared) give the same outcomes and the same rows, in
    /// the same order, as events pushed one by one.
    #[test]
    fn prepared_batches_equal_event_by_event(
        c in case(),
        sizes in proptest::collection::vec(1usize..40, 1..8),
        shared in any::<bool>(),
    ) {
        let text = sql(&c);
        let catalog = Arc::new(parse_pipeline(&text).unwrap());
        let mut log = c.log.clone();
        if shared {
            // one string per distinct text, as a Parquet reader shares them
            let mut texts: BTreeMap<String, Value> = BTreeMap::new();
            for e in &mut log {
                for v in e.iter_mut() {
                    if let Value::Text(s) = v {
                        *v = texts.entry(s.to_string()).or_insert_with(|| v.clone()).clone();
                    }
                }
            }
        }
        let mut one = Engine::new(catalog.clone(), &[]).unwrap();
        let mut want = Vec::new();
        let mut want_outcomes = Vec::new();
        for e in &log {
            want_outcomes.push(one.push(e, &mut want).unwrap());
        }
        one.finish(&mut want);

        let mut batched = Engine::new(catalog.clone(), &[]).unwrap();
        let mut got = Vec::new();
        let mut got_outcomes = Vec::new();
        let mut rest = &log[..];
        let mut k = 0;
        while !rest.is_empty() {
            let n = sizes[k % sizes.len()].min(rest.len());
            k += 1;
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let events: Vec<&[Value]> = batch.iter().map(|e| &e[..]).collect();
            let prepared = batched.prepare(&events);
            for (i, e) in batch.iter().enumerate() {
                batched.validate(e).unwrap();
                let shard = batched.shard_of(e);
                got_outcomes.push(batched.push_prepared(shard, e, &prepared, i, &mut got));
            }
        }
        batched.finish(&mut got);
        prop_assert_eq!(got_outcomes, want_outcomes, "{}", text);
        prop_assert_eq!(got.len(), want.len(), "{}", text);
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!((g.shard, g.view), (w.shard, w.view));
            prop_assert!(lockstep_core::value::rows_bit_eq(&g.row, &w.row), "{:?} != {:?}\n{}", g.row, w.row, text);
        }
    }
}
