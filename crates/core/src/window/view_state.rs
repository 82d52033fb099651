//! The state of one view on one shard: keyed partitions per PARTITION BY list
//! and the rows held back until their FOLLOWING frames are complete.

use super::acc::Acc;
use super::group::{Entry, Group};
use super::input::{In, Inputs};
use super::partition::{eval_call, Partition, Slide, Stored};
use super::prepare::{input_of, passes, wants_row, Pre};
use super::timers::{Held, Timers};
use crate::expr::{Ctx, Expr};
use crate::plan::{Frame, View, WinFunc};
use crate::value::{Row, Value};
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// A row whose event has arrived but whose FOLLOWING frames are not final.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Pending {
    pub(super) time: i64,
    pub(super) pos: u64,
    /// The event's columns, then the values of its window calls (those
    /// evaluated at arrival; FOLLOWING calls are filled in at emission) —
    /// one allocation per row.
    pub(super) values: Vec<Value>,
    /// Number of event columns at the front of `values`.
    pub(super) width: usize,
    /// Slab index of the row's partition in each group with FOLLOWING calls
    /// (the row pins it, so the index stays valid).
    pub(super) parts: SmallVec<[usize; 2]>,
}

/// Whether an event gives a view a training row, as far as it is known
/// when the event arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFate {
    /// It will have a row (once its labels are final).
    Row,
    /// The view's WHERE is not true for it: it never enters the view.
    Filtered,
    /// The view's QUALIFY is not true for it.
    NotQualified,
    /// The view's QUALIFY reads labels (FOLLOWING frames): decided when
    /// the row is final.
    QualifiedWhenFinal,
    /// Below its shard's watermark: it changes no state and has no row.
    Late { watermark: i64 },
}

/// Counters a view reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewStats {
    pub events: u64,
    /// Events of the view's table that arrived below the shard's watermark:
    /// they entered no state and got no row.
    pub late: u64,
    pub rows: u64,
    pub pending: u64,
    pub partitions: u64,
    pub buffered_events: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ViewState {
    groups: Vec<Group>,
    /// Held rows, smallest (deadline, time, position) first; a row is ready
    /// when the watermark passes its deadline.
    pending: Timers,
    /// Rows waiting for a ROWS/LEAD follower that has not arrived yet.
    waiting: BTreeMap<(i64, u64), Pending>,
    /// For each group: the deepest ROWS/LAG look-back of its calls.
    keep_rows: Vec<usize>,
    /// For each group: how far below the earliest future row time events
    /// must be kept (the minimum lower offset over its range frames).
    reach: Vec<i64>,
    following_groups: Vec<bool>,
    events_since_sweep: u64,
    /// Sweep every N events instead of adaptively (tests use it to exercise
    /// eviction on short logs).
    pub sweep_every: Option<u64>,
    pub stats: ViewStats,
}

/// Everything of a [`ViewState`] but its partitions: held rows, counters
/// and each group's free list and slab length. A checkpoint stores this
/// whole and the partitions slot by slot.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ViewMeta {
    pending: Timers,
    waiting: BTreeMap<(i64, u64), Pending>,
    keep_rows: Vec<usize>,
    reach: Vec<i64>,
    following_groups: Vec<bool>,
    events_since_sweep: u64,
    sweep_every: Option<u64>,
    stats: ViewStats,
    free: Vec<Vec<usize>>,
    slab_len: Vec<usize>,
}

impl ViewMeta {
    /// Number of slots group `g` had when the meta was taken.
    pub fn slab_len(&self, g: usize) -> usize {
        self.slab_len.get(g).copied().unwrap_or(0)
    }

    pub fn groups(&self) -> usize {
        self.slab_len.len()
    }
}

impl ViewState {
    /// The non-partition part of the state (see [`ViewMeta`]).
    pub fn meta(&self) -> ViewMeta {
        ViewMeta {
            pending: self.pending.clone(),
            waiting: self.waiting.clone(),
            keep_rows: self.keep_rows.clone(),
            reach: self.reach.clone(),
            following_groups: self.following_groups.clone(),
            events_since_sweep: self.events_since_sweep,
            sweep_every: self.sweep_every,
            stats: self.stats.clone(),
            free: self.groups.iter().map(|g| g.free_list().to_vec()).collect(),
            slab_len: self.groups.iter().map(|g| g.all_slots().count()).collect(),
        }
    }

    /// Partition slots changed since the last call, as (group, slot, entry).
    pub fn take_dirty(&mut self) -> Vec<(usize, usize, Entry)> {
        let mut out = Vec::new();
        self.take_dirty_with(|g, i, e| out.push((g, i, e.clone())));
        out
    }

    /// Changed slots by reference, as (group, slot, entry).
    pub fn take_dirty_with(&mut self, mut visit: impl FnMut(usize, usize, &Entry)) {
        for (g, group) in self.groups.iter_mut().enumerate() {
            group.take_dirty_with(|i, e| visit(g, i, e));
        }
    }

    /// Marks every partition slot changed.
    pub fn mark_all(&mut self) {
        self.groups.iter_mut().for_each(Group::mark_all);
    }

    /// Rebuilds a view's state from its meta and every group's slots.
    pub fn from_parts(meta: ViewMeta, slabs: Vec<Vec<Entry>>) -> ViewState {
        ViewState {
            groups: slabs
                .into_iter()
                .zip(meta.free)
                .map(|(slab, free)| Group::from_slots(slab, free))
                .collect(),
            pending: meta.pending,
            waiting: meta.waiting,
            keep_rows: meta.keep_rows,
            reach: meta.reach,
            following_groups: meta.following_groups,
            events_since_sweep: meta.events_since_sweep,
            sweep_every: meta.sweep_every,
            stats: meta.stats,
        }
    }

    pub fn new(view: &View) -> ViewState {
        let mut keep_rows = vec![0usize; view.groups.len()];
        let mut reach = vec![i64::MAX; view.groups.len()];
        let mut following_groups = vec![false; view.groups.len()];
        for c in &view.calls {
            let g = c.group;
            following_groups[g] |= c.is_following();
            match (&c.func, c.frame) {
                (WinFunc::Shift { offset, .. }, _) => {
                    keep_rows[g] = keep_rows[g].max((-offset).max(0) as usize);
                    reach[g] = reach[g].min(0);
                }
                (_, Frame::Rows { lo, .. }) => {
                    keep_rows[g] = keep_rows[g].max((-lo).max(0) as usize);
                    reach[g] = reach[g].min(0);
                }
                (_, Frame::Range { lo: Some(lo), .. }) => reach[g] = reach[g].min(lo),
                // unbounded: keep what the upper bound may still need
                (_, Frame::Range { lo: None, hi }) => reach[g] = reach[g].min(hi.min(0)),
            }
        }
        ViewState {
            groups: vec![Group::default(); view.groups.len()],
            pending: Timers::default(),
            waiting: BTreeMap::new(),
            keep_rows,
            reach,
            following_groups,
            events_since_sweep: 0,
            sweep_every: None,
            stats: ViewStats::default(),
        }
    }

    fn new_partition(view: &View, g: usize) -> Partition {
        let slides = view.groups[g]
            .slides
            .iter()
            .map(|(frame, calls)| {
                let accs = calls
                    .iter()
                    .map(|&ci| {
                        let c = &view.calls[ci];
                        (c.input, Acc::new(&c.func, c.arg_type))
                    })
                    .collect();
                Slide::new(accs, matches!(frame, Frame::Range { lo: None, .. }))
            })
            .collect();
        Partition::new(slides)
    }

    /// The inputs one event contributes to the calls of group `g`.
    fn inputs(view: &View, g: usize, event: &[Value]) -> Inputs {
        let ctx = Ctx {
            row: event,
            slots: &[],
        };
        view.groups[g]
            .inputs
            .iter()
            .map(|&ci| input_of(view, ci, &ctx))
            .collect()
    }

    /// Handles an event that is not late. Rows that became final are pushed to
    /// `out`. `wm` is the shard watermark after this event.
    pub fn on_event(
        &mut self,
        view: &View,
        event: &[Value],
        time: i64,
        pos: u64,
        wm: i64,
        out: &mut Vec<Row>,
    ) {
        let ctx = Ctx {
            row: event,
            slots: &[],
        };
        if !passes(view, &ctx) {
            return;
        }
        let inputs: SmallVec<[In; 6]> = view
            .groups
            .iter()
            .flat_map(|g| g.inputs.iter().map(|&ci| input_of(view, ci, &ctx)))
            .collect();
        let pre = Pre {
            passes: true,
            wants_row: wants_row(view, &ctx),
            inputs: &inputs,
        };
        self.on_event_prepared(view, event, time, pos, wm, pre, out);
    }

    /// [`ViewState::on_event`] with the event's WHERE, QUALIFY and inputs
    /// already evaluated (for a batch, see [`super::prepare::Prepared`]).
    #[allow(clippy::too_many_arguments)]
    pub fn on_event_prepared(
        &mut self,
        view: &View,
        event: &[Value],
        time: i64,
        pos: u64,
        wm: i64,
        pre: Pre<'_>,
        out: &mut Vec<Row>,
    ) {
        if !pre.passes {
            return;
        }
        self.stats.events += 1;
        let wants_row = pre.wants_row;
        let width = event.len();
        let mut woken = Vec::new();
        let mut values = Vec::new();
        if wants_row {
            values.reserve_exact(width + view.calls.len());
            values.extend_from_slice(event);
            values.resize(width + view.calls.len(), Value::Null);
        }
        let mut pinned: SmallVec<[usize; 2]> = smallvec::smallvec![usize::MAX; view.groups.len()];
        let mut first_input = 0;
        for (g, pin) in pinned.iter_mut().enumerate() {
            let n = view.groups[g].inputs.len();
            let inputs = &pre.inputs[first_input..first_input + n];
            first_input += n;
            let idx = self.groups[g].find_or_insert(event, &view.groups[g].columns, || {
                Self::new_partition(view, g)
            });
            let part = self.groups[g].get_mut(idx);
            part.insert_parts(time, pos, inputs);
            woken.append(&mut part.waiting);
            if wants_row {
                for &ci in &view.groups[g].calls {
                    let c = &view.calls[ci];
                    if !c.is_following() {
                        values[width + ci] = eval_call(c, part, time, pos, None);
                    }
                }
                if self.following_groups[g] {
                    part.pending.insert((time, pos));
                    *pin = idx;
                }
            }
            part.expire(wm, self.reach[g], self.keep_rows[g]);
        }
        if wants_row {
            let p = Pending {
                time,
                pos,
                values,
                width,
                parts: pinned,
            };
            if view.has_following() {
                self.schedule(view, p);
            } else {
                self.emit(view, p, out);
            }
        }
        if !woken.is_empty() {
            self.recheck_waiting(view, woken);
        }
        self.release(view, wm, out);
        self.events_since_sweep += 1;
        // Adaptive: a full sweep costs one visit per partition, so doing it
        // every 2·partitions events keeps it O(1) per event, amortized.
        let due = match self.sweep_every {
            Some(n) => self.events_since_sweep >= n,
            None => {
                let parts: usize = self.groups.iter().map(Group::len).sum();
                self.events_since_sweep as usize >= (2 * parts).max(4096)
            }
        };
        if due {
            self.sweep(wm);
        }
    }

    /// When can `p` be emitted? `Ok(t)`: once the watermark exceeds `t`.
    /// `Err(g)`: a ROWS/LEAD follower is still missing in group `g`.
    fn deadline(&self, view: &View, p: &Pending) -> Result<i64, usize> {
        let mut d = i64::MIN;
        for c in view.calls.iter().filter(|c| c.is_following()) {
            let rows_ahead = match (&c.func, c.frame) {
                (WinFunc::Shift { offset, .. }, _) => Some(*offset),
                (_, Frame::Rows { hi, .. }) => Some(hi),
                (_, Frame::Range { hi, .. }) => {
                    d = d.max(p.time.saturating_add(hi));
                    None
                }
            };
            if let Some(n) = rows_ahead {
                let part = self.groups[c.group].get(p.parts[c.group]);
                let follower = part
                    .index_of(p.time, p.pos)
                    .map(|idx| idx + n as usize)
                    .filter(|&f| f < part.events.len())
                    .ok_or(c.group)?;
                d = d.max(part.events.time(follower));
            }
        }
        Ok(d)
    }

    fn schedule(&mut self, view: &View, p: Pending) {
        match self.deadline(view, &p) {
            Ok(d) => self.pending.push(Held {
                key: (d, p.time, p.pos),
                row: p,
            }),
            Err(g) => {
                // wake it when its partition in group g gets another event
                self.groups[g]
                    .get_mut(p.parts[g])
                    .waiting
                    .push((p.time, p.pos));
                self.waiting.insert((p.time, p.pos), p);
            }
        }
    }

    /// Rows that waited for a follower in a partition that just got an event.
    fn recheck_waiting(&mut self, view: &View, woken: Vec<(i64, u64)>) {
        for k in woken {
            if let Some(p) = self.waiting.remove(&k) {
                self.schedule(view, p);
            }
        }
    }

    /// Emits every pending row whose frames are final under watermark `wm`.
    pub fn release(&mut self, view: &View, wm: i64, out: &mut Vec<Row>) {
        while self.pending.first_key().is_some_and(|k| k.0 < wm) {
            let p = self.pending.pop_first().expect("peeked").row;
            self.finish_row(view, p, wm, out);
        }
    }

    /// End of input: the watermark is +infinity, every held row is emitted.
    pub fn flush(&mut self, view: &View, out: &mut Vec<Row>) {
        self.release(view, i64::MAX, out);
        // rows at deadline i64::MAX and rows whose follower never came
        let rest: Vec<Pending> = std::mem::take(&mut self.pending)
            .into_rows()
            .chain(std::mem::take(&mut self.waiting).into_values())
            .collect();
        let mut rest = rest;
        rest.sort_by_key(|p| (p.time, p.pos));
        for p in rest {
            self.finish_row(view, p, i64::MAX, out);
        }
    }

    fn finish_row(&mut self, view: &View, mut p: Pending, wm: i64, out: &mut Vec<Row>) {
        for g in 0..view.groups.len() {
            if !self.following_groups[g] {
                continue;
            }
            let part = self.groups[g].get_mut(p.parts[g]);
            for &ci in &view.groups[g].calls {
                let c = &view.calls[ci];
                if c.is_following() {
                    p.values[p.width + ci] = eval_call(c, part, p.time, p.pos, None);
                }
            }
            part.pending.remove(&(p.time, p.pos));
            // A label partition usually dies with its last held row: forget it
            // now rather than at the next sweep, or idle partitions pile up.
            part.expire(wm, self.reach[g], self.keep_rows[g]);
            if part.is_idle() {
                self.groups[g].remove(p.parts[g]);
            }
        }
        self.emit(view, p, out);
    }

    fn emit(&mut self, view: &View, p: Pending, out: &mut Vec<Row>) {
        let (row, slots) = p.values.split_at(p.width);
        let ctx = Ctx { row, slots };
        if let (Some(q), false) = (&view.qualify, view.qualify_at_arrival) {
            if !q.is_true(&ctx) {
                return;
            }
        }
        self.stats.rows += 1;
        out.push(project(&view.select, p.values, p.width));
    }

    /// The features a hypothetical event would get if it arrived now. Columns
    /// that need FOLLOWING frames are NULL. State is not changed.
    pub fn serve(&mut self, view: &View, event: &[Value], time: i64) -> Row {
        self.serve_with_fate(view, event, time).0
    }

    /// [`ViewState::serve`], and whether the event, pushed now (not late),
    /// would give the view a row: its WHERE, and its QUALIFY when that
    /// can be decided at arrival (on the event's columns, or on PRECEDING
    /// window values only, which are final once the event is in).
    pub fn serve_with_fate(&mut self, view: &View, event: &[Value], time: i64) -> (Row, RowFate) {
        let slots = self.serve_slots(view, event, time);
        let ctx = Ctx {
            row: event,
            slots: &slots,
        };
        let passes = |e: &crate::expr::Expr| e.is_true(&ctx);
        let fate = match (&view.filter, &view.qualify) {
            (Some(f), _) if !passes(f) => RowFate::Filtered,
            (_, Some(q)) => {
                let mut on_labels = false;
                q.walk(&mut |e| {
                    if let crate::expr::Expr::Slot(i) = e {
                        on_labels |= view.calls[*i].is_following();
                    }
                });
                if on_labels {
                    RowFate::QualifiedWhenFinal
                } else if passes(q) {
                    RowFate::Row
                } else {
                    RowFate::NotQualified
                }
            }
            _ => RowFate::Row,
        };
        let mut row: Row = view.select.iter().map(|e| e.eval(&ctx)).collect();
        for &i in &view.label_columns {
            row[i] = Value::Null;
        }
        (row, fate)
    }

    fn serve_slots(&mut self, view: &View, event: &[Value], time: i64) -> Vec<Value> {
        let mut slots = vec![Value::Null; view.calls.len()];
        for g in 0..view.groups.len() {
            let stored = Stored {
                time,
                pos: u64::MAX,
                inputs: Self::inputs(view, g, event),
            };
            let mut empty;
            let found = self.groups[g].find(event, &view.groups[g].columns);
            let part = match found {
                Some(i) => self.groups[g].get_mut_untracked(i),
                None => {
                    empty = Self::new_partition(view, g);
                    &mut empty
                }
            };
            for &ci in &view.groups[g].calls {
                let c = &view.calls[ci];
                if !c.is_following() {
                    slots[ci] = eval_call(c, part, time, u64::MAX, Some(&stored));
                }
            }
        }
        slots
    }

    /// Evicts expired events from every partition and forgets idle ones.
    pub fn sweep(&mut self, wm: i64) {
        self.events_since_sweep = 0;
        if wm == i64::MIN {
            return;
        }
        for g in 0..self.groups.len() {
            let (reach, keep) = (self.reach[g], self.keep_rows[g]);
            self.groups[g].retain(|part| {
                part.expire(wm, reach, keep);
                !part.is_idle()
            });
        }
    }

    pub fn refresh_stats(&mut self) -> &ViewStats {
        self.stats.pending = (self.pending.len() + self.waiting.len()) as u64;
        self.stats.partitions = self.groups.iter().map(|g| g.len() as u64).sum();
        self.stats.buffered_events = self
            .groups
            .iter()
            .flat_map(|g| g.partitions())
            .map(|p| p.events.len() as u64)
            .sum();
        &self.stats
    }
}

/// The SELECT list of a final row whose event columns are `values[..width]`
/// and window values `values[width..]`. Plain columns and window values are
/// moved out rather than cloned (the row is dropped after), so the common
/// SELECT costs no reference counting per value.
fn project(select: &[Expr], mut values: Vec<Value>, width: usize) -> Row {
    let place = |e: &Expr| match e {
        Expr::Column(c) => Some(*c),
        Expr::Slot(s) => Some(width + s),
        _ => None,
    };
    // computed items first, while every value is still in place
    let computed: SmallVec<[Value; 4]> = {
        let (cols, slots) = values.split_at(width);
        let ctx = Ctx { row: cols, slots };
        select
            .iter()
            .filter(|e| place(e).is_none())
            .map(|e| e.eval(&ctx))
            .collect()
    };
    let mut computed = computed.into_iter();
    // then one pass: the first use of a value takes it, a repeat clones it
    // from the first; places past 64 (very wide tables) are cloned
    let mut taken = 0u64;
    let mut row: Row = Vec::with_capacity(select.len());
    for (i, e) in select.iter().enumerate() {
        let v = match place(e) {
            None => computed
                .next()
                .expect("one computed value per computed item"),
            Some(at) if at >= 64 => values[at].clone(),
            Some(at) if taken & (1 << at) == 0 => {
                taken |= 1 << at;
                std::mem::replace(&mut values[at], Value::Null)
            }
            Some(at) => {
                let first = select[..i]
                    .iter()
                    .position(|f| place(f) == Some(at))
                    .expect("taken by an earlier item");
                row[first].clone()
            }
        };
        row.push(v);
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::BinOp;
    use crate::value::DataType;

    /// SELECT items that name the same column or window value twice get it
    /// twice; computed items see every value before any is moved out.
    #[test]
    fn project_moves_values_and_clones_repeats() {
        let values = vec![
            Value::text("u1"),
            Value::BigInt(7),
            Value::Double(0.5),
            Value::Null,
        ];
        let times_two = |e: Expr, ty| Expr::Binary {
            op: BinOp::Mul,
            left: Box::new(e),
            right: Box::new(Expr::Literal(Value::BigInt(2))),
            ty,
        };
        // column 1 and slot 0 are moved out by the first items; the computed
        // items after them still read their values
        let select = vec![
            Expr::Column(1),
            Expr::Slot(0),
            times_two(Expr::Column(1), DataType::BigInt),
            Expr::Column(0),
            times_two(Expr::Slot(0), DataType::Double),
            Expr::Column(1),
            Expr::Slot(1),
            Expr::Slot(0),
            Expr::Column(0),
        ];
        let ctx = Ctx {
            row: &values[..2],
            slots: &values[2..],
        };
        let evaluated: Row = select.iter().map(|e| e.eval(&ctx)).collect();
        let row = project(&select, values.clone(), 2);
        assert_eq!(row, evaluated);
        assert_eq!(
            row,
            vec![
                Value::BigInt(7),
                Value::Double(0.5),
                Value::BigInt(14),
                Value::text("u1"),
                Value::Double(1.0),
                Value::BigInt(7),
                Value::Null,
                Value::Double(0.5),
                Value::text("u1"),
            ]
        );
    }
}
