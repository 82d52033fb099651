//! A brute-force evaluator of the dialect's window semantics (DESIGN.md §3),
//! written for clarity, not speed: every frame is recomputed from the whole
//! log. The incremental engine must agree with it on every input.

use lockstep_core::expr::Ctx;
use lockstep_core::plan::{Catalog, Frame, View, WinFunc, WindowCall};
use lockstep_core::shard::shard_of;
use lockstep_core::value::{DataType, Row, Value};
use lockstep_core::window::exact_sum::ExactSum;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

struct Arrived<'a> {
    pos: usize,
    time: i64,
    event: &'a [Value],
    /// Watermark of the shard right after this event was processed.
    wm_after: i64,
}

/// Rows of `view` keyed by the value of column `id_col` of the source event,
/// computed by brute force over `log` (in log order).
pub fn evaluate(
    catalog: &Catalog,
    view_idx: usize,
    log: &[Vec<Value>],
    id_col: usize,
) -> BTreeMap<i64, Row> {
    let view = &catalog.views[view_idx];
    let table = &catalog.tables[view.table];
    let mut out = BTreeMap::new();
    for shard in 0..table.shards {
        // 1. the shard's log, with late events removed and watermarks recorded
        let mut arrived: Vec<Arrived> = Vec::new();
        let mut max_t = i64::MIN;
        for ev in log
            .iter()
            .filter(|e| shard_of(&e[table.key], table.shards) == shard)
        {
            let Value::Timestamp(t) = ev[table.time] else {
                panic!("time")
            };
            let wm = if max_t == i64::MIN {
                i64::MIN
            } else {
                max_t - table.lateness_ms
            };
            if t < wm {
                continue; // late: no state, no row
            }
            max_t = max_t.max(t);
            arrived.push(Arrived {
                pos: arrived.len(),
                time: t,
                event: ev,
                wm_after: max_t - table.lateness_ms,
            });
        }
        // 2. only events passing WHERE enter the view
        let passes = |e: &[Value]| {
            view.filter
                .as_ref()
                .is_none_or(|f| f.eval(&Ctx { row: e, slots: &[] }) == Value::Boolean(true))
        };
        let in_view: Vec<&Arrived> = arrived.iter().filter(|a| passes(a.event)).collect();
        for row_ev in &in_view {
            let mut slots = Vec::new();
            for call in &view.calls {
                slots.push(eval_call(view, call, row_ev, &in_view));
            }
            let ctx = Ctx {
                row: row_ev.event,
                slots: &slots,
            };
            if let Some(q) = &view.qualify {
                if q.eval(&ctx) != Value::Boolean(true) {
                    continue;
                }
            }
            let row: Row = view.select.iter().map(|e| e.eval(&ctx)).collect();
            let Value::BigInt(id) = row_ev.event[id_col] else {
                panic!("id")
            };
            out.insert(id, row);
        }
    }
    out
}

fn same_partition(view: &View, call: &WindowCall, a: &[Value], b: &[Value]) -> bool {
    view.groups[call.group]
        .columns
        .iter()
        .all(|&c| a[c] == b[c])
}

fn eval_call(view: &View, call: &WindowCall, row: &Arrived, all: &[&Arrived]) -> Value {
    let part: Vec<&Arrived> = all
        .iter()
        .copied()
        .filter(|a| same_partition(view, call, a.event, row.event))
        .collect();
    // Which events are visible: arrival frames see what arrived up to the row;
    // FOLLOWING frames see what arrived up to the first moment they are final.
    let visible_upto = if !call.is_following() {
        row.pos
    } else {
        let mut upto = usize::MAX;
        for a in all.iter().filter(|a| a.pos >= row.pos) {
            let seen: Vec<&Arrived> = part.iter().copied().filter(|p| p.pos <= a.pos).collect();
            if is_final(call, row, &seen, a.wm_after) {
                upto = a.pos;
                break;
            }
        }
        upto
    };
    let mut seen: Vec<&Arrived> = part.into_iter().filter(|p| p.pos <= visible_upto).collect();
    seen.sort_by_key(|x| (x.time, x.pos));
    let idx = seen
        .iter()
        .position(|p| p.pos == row.pos)
        .expect("row sees itself");
    let frame: Vec<&Arrived> = match (&call.func, call.frame) {
        (WinFunc::Shift { offset, default }, _) => {
            let j = idx as i64 + offset;
            if j < 0 || j >= seen.len() as i64 {
                return default.clone();
            }
            let v = input(call, seen[j as usize].event);
            return v.unwrap_or(Value::Null);
        }
        (_, Frame::Rows { lo, hi }) => (0..seen.len())
            .filter(|&j| j as i64 >= idx as i64 + lo && j as i64 <= idx as i64 + hi)
            .map(|j| seen[j])
            .collect(),
        (_, Frame::Range { lo, hi }) => seen
            .iter()
            .copied()
            .filter(|p| lo.is_none_or(|lo| p.time >= row.time + lo) && p.time <= row.time + hi)
            .collect(),
    };
    let inputs: Vec<Value> = frame
        .iter()
        .filter_map(|p| input(call, p.event))
        .filter(|v| !v.is_null())
        .collect();
    aggregate(call, row.time, &frame, &inputs)
}

fn is_final(call: &WindowCall, row: &Arrived, seen: &[&Arrived], wm: i64) -> bool {
    let rows_ahead = match (&call.func, call.frame) {
        (WinFunc::Shift { offset, .. }, _) => Some(*offset),
        (_, Frame::Rows { hi, .. }) => Some(hi),
        _ => None,
    };
    match (rows_ahead, call.frame) {
        (Some(n), _) => {
            let mut sorted: Vec<&&Arrived> = seen.iter().collect();
            sorted.sort_by_key(|x| (x.time, x.pos));
            let idx = sorted.iter().position(|p| p.pos == row.pos).unwrap();
            sorted.get(idx + n as usize).is_some_and(|f| f.time < wm)
        }
        (None, Frame::Range { hi, .. }) => wm > row.time + hi,
        (None, Frame::Rows { .. }) => unreachable!(),
    }
}

/// The call's input from one event: `None` when FILTER rejects it.
fn input(call: &WindowCall, event: &[Value]) -> Option<Value> {
    let ctx = Ctx {
        row: event,
        slots: &[],
    };
    if let Some(f) = &call.filter {
        if f.eval(&ctx) != Value::Boolean(true) {
            return None;
        }
    }
    Some(
        call.arg
            .as_ref()
            .map_or(Value::Boolean(true), |a| a.eval(&ctx)),
    )
}

fn aggregate(call: &WindowCall, row_time: i64, frame: &[&Arrived], inputs: &[Value]) -> Value {
    let exact = |xs: &mut dyn Iterator<Item = f64>| {
        let mut s = ExactSum::default();
        xs.for_each(|x| s.add(x));
        s.value()
    };
    match &call.func {
        WinFunc::CountStar | WinFunc::Count => Value::BigInt(inputs.len() as i64),
        WinFunc::CountDistinct => {
            let set: HashSet<&Value> = inputs.iter().collect();
            Value::BigInt(set.len() as i64)
        }
        _ if inputs.is_empty() && !matches!(call.func, WinFunc::ExpDecaySum { .. }) => Value::Null,
        WinFunc::Sum if call.out_type == DataType::BigInt => {
            let s: i128 = inputs
                .iter()
                .map(|v| match v {
                    Value::BigInt(i) => *i as i128,
                    _ => 0,
                })
                .sum();
            i64::try_from(s).map_or(Value::Null, Value::BigInt)
        }
        WinFunc::Sum => Value::Double(exact(&mut inputs.iter().map(|v| v.as_f64().unwrap()))),
        WinFunc::Avg if call.arg_type == DataType::BigInt => {
            let s: i128 = inputs
                .iter()
                .map(|v| match v {
                    Value::BigInt(i) => *i as i128,
                    _ => 0,
                })
                .sum();
            Value::Double(s as f64 / inputs.len() as f64)
        }
        WinFunc::Avg => Value::Double(
            exact(&mut inputs.iter().map(|v| v.as_f64().unwrap())) / inputs.len() as f64,
        ),
        WinFunc::Min => inputs
            .iter()
            .min_by(|a, b| a.total_cmp(b))
            .cloned()
            .unwrap(),
        WinFunc::Max => inputs
            .iter()
            .max_by(|a, b| a.total_cmp(b).then(Ordering::Less))
            .cloned()
            .unwrap(),
        WinFunc::ExpDecaySum { half_life_ms } => {
            let mut terms = Vec::new();
            for p in frame {
                if let Some(x) = input(call, p.event).and_then(|v| v.as_f64()) {
                    terms.push(x * ((p.time - row_time) as f64 / *half_life_ms as f64).exp2());
                }
            }
            if terms.is_empty() {
                Value::Null
            } else {
                Value::Double(exact(&mut terms.into_iter()))
            }
        }
        WinFunc::Shift { .. } => unreachable!(),
    }
}
