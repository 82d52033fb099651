//! What a view needs of an event before the event meets any state: whether
//! it passes WHERE, whether QUALIFY keeps its row (when QUALIFY reads only
//! the event's columns) and the inputs of the window calls. All of it
//! depends on the event alone, so a batch of events can be prepared at once.
//!
//! Preparing a batch evaluates an expression that reads a single TEXT column
//! once per distinct text of the batch rather than once per event, the way
//! a columnar engine evaluates over a dictionary. Event logs repeat such
//! columns (`kind = 'click'`, a campaign name, a country), and the Parquet
//! reader shares one string among the events of a batch that carry the same
//! text, so the column's dictionary is built from the strings' identities:
//! one pointer lookup per event and column, however many expressions read
//! it. The result is the same function of the same value, so the rows are
//! the same whether strings are shared or not; unshared strings only make
//! the dictionary useless, and a column whose first 256 events are mostly
//! new strings is evaluated event by event, for the whole batch.

use super::input::In;
use crate::expr::{Ctx, Expr};
use crate::plan::View;
use crate::value::{DataType, Schema, Value};
use std::collections::HashMap;

/// One event's prepared values, as `ViewState::on_event_prepared` reads them.
#[derive(Debug, Clone, Copy)]
pub struct Pre<'a> {
    /// The view's WHERE is TRUE (or absent).
    pub passes: bool,
    /// The row is wanted: QUALIFY is decided at arrival and TRUE, or it is
    /// decided later (or absent).
    pub wants_row: bool,
    /// Every group's inputs, group after group, in `PartitionGroup::inputs` order.
    pub inputs: &'a [In],
}

/// The input of call `ci` for the event in `ctx`: `Skip` when its FILTER is
/// not TRUE, else its argument (`TRUE` for `COUNT(*)`).
pub(super) fn input_of(view: &View, ci: usize, ctx: &Ctx<'_>) -> In {
    let c = &view.calls[ci];
    if let Some(f) = &c.filter {
        if !f.is_true(ctx) {
            return In::Skip;
        }
    }
    match &c.arg {
        Some(a) => In::from_value(a.eval(ctx)),
        None => In::Bool(true),
    }
}

/// WHERE of the event in `ctx`.
pub(super) fn passes(view: &View, ctx: &Ctx<'_>) -> bool {
    view.filter.as_ref().is_none_or(|f| f.is_true(ctx))
}

/// QUALIFY of the event in `ctx`, when it can be decided at arrival.
pub(super) fn wants_row(view: &View, ctx: &Ctx<'_>) -> bool {
    match (&view.qualify, view.qualify_at_arrival) {
        (Some(q), true) => q.is_true(ctx),
        _ => true,
    }
}

/// Which columns an expression (or a pair of them) reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reads {
    Nothing,
    /// Exactly one column, of type TEXT.
    OneText(usize),
    Other,
}

fn reads(exprs: &[Option<&Expr>], schema: &Schema) -> Reads {
    let mut cols: Vec<usize> = Vec::new();
    for e in exprs.iter().flatten() {
        e.walk(&mut |x| {
            if let Expr::Column(c) = x {
                if !cols.contains(c) {
                    cols.push(*c);
                }
            }
        });
    }
    match cols[..] {
        [] => Reads::Nothing,
        [c] if schema.columns.get(c).map(|col| col.data_type) == Some(DataType::Text) => {
            Reads::OneText(c)
        }
        _ => Reads::Other,
    }
}

type PtrMap<T> = HashMap<usize, T, foldhash::fast::FixedState>;

/// Events looked at before deciding whether a column repeats enough for
/// per-text evaluation: if most of its texts were new by then, the column's
/// expressions are evaluated event by event.
const DICT_PROBE: usize = 256;

/// A TEXT column of a batch as a dictionary: for each event, the number of
/// its text among the batch's distinct texts, and for each distinct text an
/// event that carries it.
struct Dict {
    ids: Vec<u32>,
    reps: Vec<usize>,
}

impl Dict {
    /// `None` when the column hardly repeats (see [`DICT_PROBE`]) or holds
    /// a value that is neither TEXT nor NULL.
    fn new(events: &[&[Value]], c: usize) -> Option<Dict> {
        let mut ids = Vec::with_capacity(events.len());
        let mut reps = Vec::new();
        let mut seen: PtrMap<u32> = PtrMap::default();
        for (i, ev) in events.iter().enumerate() {
            if i == DICT_PROBE && reps.len() * 2 > DICT_PROBE {
                return None;
            }
            // the events outlive the batch's preparation, so a string's
            // address names it meanwhile (NULL is address 0)
            let key = match &ev[c] {
                Value::Text(s) => s.as_ptr() as usize,
                Value::Null => 0,
                _ => return None,
            };
            let id = *seen.entry(key).or_insert_with(|| {
                reps.push(i);
                (reps.len() - 1) as u32
            });
            ids.push(id);
        }
        Some(Dict { ids, reps })
    }
}

/// One prepared value per event, however it was evaluated.
enum Values<'d, T> {
    Same(T),
    PerText(&'d [u32], Vec<T>),
    PerEvent(Vec<T>),
}

impl<T: Clone> Values<'_, T> {
    fn at(&self, i: usize) -> T {
        match self {
            Values::Same(v) => v.clone(),
            Values::PerText(ids, vals) => vals[ids[i] as usize].clone(),
            Values::PerEvent(vals) => vals[i].clone(),
        }
    }
}

/// `f` for every event: once when it reads no column, once per distinct
/// text when it reads one repeating TEXT column, else event by event, and
/// then only for the events `only` marks (the others get its `skip`).
fn eval_all<'d, T: Clone>(
    events: &[&[Value]],
    reads: Reads,
    dicts: &'d HashMap<usize, Option<Dict>>,
    only: Option<(&[bool], T)>,
    f: impl Fn(&Ctx<'_>) -> T,
) -> Values<'d, T> {
    let at = |ev: &[Value]| {
        f(&Ctx {
            row: ev,
            slots: &[],
        })
    };
    let per_event = || {
        Values::PerEvent(match &only {
            Some((mask, skip)) => events
                .iter()
                .zip(mask.iter())
                .map(|(ev, &wanted)| if wanted { at(ev) } else { skip.clone() })
                .collect(),
            None => events.iter().map(|ev| at(ev)).collect(),
        })
    };
    match reads {
        Reads::Nothing if !events.is_empty() => Values::Same(at(events[0])),
        Reads::OneText(c) => match dicts.get(&c) {
            Some(Some(d)) => {
                Values::PerText(&d.ids, d.reps.iter().map(|&e| at(events[e])).collect())
            }
            _ => per_event(),
        },
        _ => per_event(),
    }
}

/// A batch of events prepared for one view (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Inputs per event (every group's).
    width: usize,
    inputs: Vec<In>,
    passes: Vec<bool>,
    wants_row: Vec<bool>,
}

impl Prepared {
    /// Prepares `events` (validated events of the view's table, whose
    /// schema is `schema`) for `view`.
    pub fn new(view: &View, schema: &Schema, events: &[&[Value]]) -> Prepared {
        let n = events.len();
        let qualify = view.qualify.as_ref().filter(|_| view.qualify_at_arrival);
        let input_reads: Vec<(usize, Reads)> = view
            .groups
            .iter()
            .flat_map(|g| g.inputs.iter())
            .map(|&ci| {
                let c = &view.calls[ci];
                (ci, reads(&[c.filter.as_ref(), c.arg.as_ref()], schema))
            })
            .collect();
        let where_reads = reads(&[view.filter.as_ref()], schema);
        let qualify_reads = reads(&[qualify], schema);
        // one dictionary per TEXT column that some expression reads alone
        let mut dicts: HashMap<usize, Option<Dict>> = HashMap::new();
        for r in input_reads
            .iter()
            .map(|(_, r)| *r)
            .chain([where_reads, qualify_reads])
        {
            if let Reads::OneText(c) = r {
                dicts.entry(c).or_insert_with(|| Dict::new(events, c));
            }
        }
        let passes_all = eval_all(events, where_reads, &dicts, None, |ctx| passes(view, ctx));
        let passes: Vec<bool> = (0..n).map(|i| passes_all.at(i)).collect();
        // an event WHERE drops is never looked at again: event by event,
        // the rest is evaluated only for the events that pass
        let wants_all = eval_all(
            events,
            qualify_reads,
            &dicts,
            Some((&passes, false)),
            |ctx| wants_row(view, ctx),
        );
        let inputs_all: Vec<Values<'_, In>> = input_reads
            .iter()
            .map(|&(ci, r)| {
                eval_all(events, r, &dicts, Some((&passes, In::Skip)), |ctx| {
                    input_of(view, ci, ctx)
                })
            })
            .collect();
        let width = inputs_all.len();
        let mut inputs = Vec::with_capacity(n * width);
        for i in 0..n {
            inputs.extend(inputs_all.iter().map(|v| v.at(i)));
        }
        Prepared {
            width,
            inputs,
            wants_row: (0..n).map(|i| wants_all.at(i)).collect(),
            passes,
        }
    }

    pub fn len(&self) -> usize {
        self.passes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.passes.is_empty()
    }

    /// Event `i`'s prepared values.
    pub fn get(&self, i: usize) -> Pre<'_> {
        Pre {
            passes: self.passes[i],
            wants_row: self.wants_row[i],
            inputs: &self.inputs[i * self.width..(i + 1) * self.width],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parse_pipeline;

    const SQL: &str = "CREATE TABLE ev (k TEXT, kind TEXT, n BIGINT, ts TIMESTAMP) \
        WITH (key = 'k', event_time = 'ts');
        CREATE VIEW w AS SELECT k, ts,
          COUNT(*) FILTER (WHERE kind = 'click') OVER h AS clicks,
          SUM(CASE WHEN kind = 'view' OR n > 3 THEN n ELSE 0 END) OVER h AS x
        FROM ev WHERE kind IS NOT NULL OR n = 2
        WINDOW h AS (PARTITION BY k ORDER BY ts
          RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW)
        QUALIFY k <> 'u7';";

    /// Prepared values equal the event-by-event ones, for texts shared or
    /// not, NULLs among them, and a column too varied for a dictionary.
    #[test]
    fn prepared_values_equal_per_event_evaluation() {
        let catalog = parse_pipeline(SQL).unwrap();
        let view = &catalog.views[0];
        let schema = &catalog.tables[0].schema;
        let kinds = [Value::text("click"), Value::text("view"), Value::Null];
        let make = |i: usize, shared: bool| -> Vec<Value> {
            let kind = if shared {
                kinds[i % 3].clone()
            } else {
                match &kinds[i % 3] {
                    Value::Text(s) => Value::text(s),
                    v => v.clone(),
                }
            };
            vec![
                // every key its own string: too varied for a dictionary
                Value::text(&format!("u{}", i % 500)),
                kind,
                Value::BigInt((i % 5) as i64),
                Value::Timestamp(i as i64),
            ]
        };
        for shared in [true, false] {
            let events: Vec<Vec<Value>> = (0..700).map(|i| make(i, shared)).collect();
            let refs: Vec<&[Value]> = events.iter().map(|e| &e[..]).collect();
            let p = Prepared::new(view, schema, &refs);
            assert_eq!(p.len(), events.len());
            for (i, e) in events.iter().enumerate() {
                let ctx = Ctx { row: e, slots: &[] };
                let got = p.get(i);
                assert_eq!(got.passes, passes(view, &ctx), "event {i}");
                if !got.passes {
                    continue; // never read: `on_event_prepared` stops here
                }
                assert_eq!(got.wants_row, wants_row(view, &ctx), "event {i}");
                let want: Vec<In> = view
                    .groups
                    .iter()
                    .flat_map(|g| g.inputs.iter())
                    .map(|&ci| input_of(view, ci, &ctx))
                    .collect();
                assert_eq!(got.inputs, &want[..], "event {i}");
            }
            // the key column is too varied to look up by text; `kind`
            // repeats when its strings are shared, and is as varied as the
            // keys when every event has its own
            assert!(Dict::new(&refs, 0).is_none());
            match Dict::new(&refs, 1) {
                Some(kind) if shared => {
                    assert_eq!(kind.reps.len(), 3);
                    assert_eq!(kind.ids.len(), events.len());
                }
                None if !shared => {}
                d => panic!("shared {shared}: {:?}", d.map(|d| d.reps.len())),
            }
        }
    }
}
