//! One partition's buffer of events, sorted by (event_time, log position),
//! and the sliding accumulators of the frames evaluated over it.

use super::acc::Acc;
use super::events::Events;
use super::exact_sum::ExactSum;
use super::input::{In, InRef, Inputs};
use crate::plan::{Frame, WinFunc, WindowCall};
use crate::value::Value;
use smallvec::SmallVec;

/// One event as a partition keeps it: its position in time and log order and
/// the per-call inputs (argument value, or `None` when FILTER rejected it).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub time: i64,
    pub pos: u64,
    pub inputs: Inputs,
}

/// Accumulators over the buffered events with time in `[lo, hi]` (plus, for
/// an unbounded-below frame, every event already evicted). Every RANGE call
/// of a partition with the same frame shares one slide: the frame's edges are
/// found once and each entering or leaving event updates all of them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Slide {
    pub lo: i64,
    pub hi: i64,
    /// (which of the event's inputs, accumulator) per call on this frame.
    pub accs: Vec<(usize, Acc)>,
    unbounded: bool,
    fresh: bool,
    /// Where `lo` and `hi` fell in the buffer last time: the next move
    /// searches outward from here, so a window that slides a little costs
    /// O(log distance), not a binary search over the whole buffer.
    lo_hint: usize,
    hi_hint: usize,
}

impl Slide {
    pub fn new(accs: Vec<(usize, Acc)>, unbounded: bool) -> Slide {
        Slide {
            lo: i64::MIN,
            hi: i64::MIN,
            accs,
            unbounded,
            fresh: true,
            lo_hint: 0,
            hi_hint: 0,
        }
    }

    fn add(&mut self, events: &Events, i: usize) {
        for (input, acc) in &mut self.accs {
            acc.add(events.input(i, *input));
        }
    }

    fn remove(&mut self, events: &Events, i: usize) {
        for (input, acc) in &mut self.accs {
            acc.remove(events.input(i, *input));
        }
    }

    /// Moves the accumulated range to `[lo, hi]` by adding and removing only
    /// the events that enter or leave it.
    pub fn move_to(&mut self, events: &Events, lo: i64, hi: i64) {
        let lo = if self.unbounded { i64::MIN } else { lo };
        if !self.fresh && lo == self.lo && hi == self.hi {
            return; // another call on this frame already moved it here
        }
        let new_lo = gallop(events, self.lo_hint, |t| t < lo);
        let new_hi = if hi < lo {
            new_lo
        } else {
            gallop(events, self.hi_hint, |t| t <= hi).max(new_lo)
        };
        let disjoint = self.fresh || hi < self.lo || lo > self.hi;
        if disjoint && !self.unbounded {
            for (_, acc) in &mut self.accs {
                acc.clear();
            }
            for i in new_lo..new_hi {
                self.add(events, i);
            }
        } else {
            let old_lo = if self.unbounded {
                0
            } else {
                gallop(events, self.lo_hint, |t| t < self.lo)
            };
            let old_hi = gallop(events, self.hi_hint, |t| t <= self.hi).max(old_lo);
            if new_lo < old_lo {
                for i in new_lo..old_lo {
                    self.add(events, i);
                }
            } else {
                for i in old_lo..new_lo.min(old_hi) {
                    self.remove(events, i);
                }
            }
            if new_hi > old_hi {
                for i in old_hi.max(new_lo)..new_hi {
                    self.add(events, i);
                }
            } else {
                for i in new_hi.max(old_lo)..old_hi {
                    self.remove(events, i);
                }
            }
        }
        self.lo = lo;
        self.hi = hi;
        self.lo_hint = new_lo;
        self.hi_hint = new_hi;
        self.fresh = false;
    }

    fn contains(&self, time: i64) -> bool {
        !self.fresh && time >= self.lo && time <= self.hi
    }

    /// The frame's position without its accumulators.
    fn clone_frame(&self) -> Slide {
        Slide {
            lo: self.lo,
            hi: self.hi,
            accs: Vec::new(),
            unbounded: self.unbounded,
            fresh: self.fresh,
            lo_hint: self.lo_hint,
            hi_hint: self.hi_hint,
        }
    }
}

/// The first index whose event fails `before` (the buffer is sorted, so
/// `before` holds on a prefix), searched outward from `hint`.
fn gallop(events: &Events, hint: usize, before: impl Fn(i64) -> bool) -> usize {
    let n = events.len();
    let h = hint.min(n);
    let (mut lo, mut hi);
    if h < n && before(events.time(h)) {
        // the answer is in (h, n]
        lo = h + 1;
        hi = n;
        let mut step = 1;
        while lo + step - 1 < n {
            let probe = lo + step - 1;
            if before(events.time(probe)) {
                lo = probe + 1;
                step *= 2;
            } else {
                hi = probe;
                break;
            }
        }
    } else {
        // the answer is in [0, h]
        lo = 0;
        hi = h;
        let mut step = 1;
        while hi >= step {
            let probe = hi - step;
            if before(events.time(probe)) {
                lo = probe + 1;
                break;
            }
            hi = probe;
            step *= 2;
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(events.time(mid)) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A partition's events plus the state of the frames evaluated over them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    pub events: Events,
    /// One per distinct RANGE frame of the group's accumulating calls (ROWS
    /// frames, LAG/LEAD and decay are evaluated by scanning rows instead).
    pub slides: Vec<Slide>,
    /// (time, pos) of rows still waiting for a FOLLOWING frame over this
    /// partition; they pin the events they need.
    pub pending: Pins,
    /// Held rows (time, position) whose ROWS/LEAD follower is not here yet;
    /// the next event inserted here wakes them.
    pub waiting: Vec<(i64, u64)>,
}

/// The (time, position) of held rows that pin a partition's events, sorted.
/// Usually zero to a few, so they live inline with no allocation.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Pins(SmallVec<[(i64, u64); 2]>);

impl Pins {
    pub fn insert(&mut self, k: (i64, u64)) {
        let i = self.0.partition_point(|x| *x < k);
        self.0.insert(i, k);
    }

    pub fn remove(&mut self, k: &(i64, u64)) {
        if let Ok(i) = self.0.binary_search(k) {
            self.0.remove(i);
        }
    }

    pub fn first(&self) -> Option<&(i64, u64)> {
        self.0.first()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An ordered view of a partition's events, optionally with one extra,
/// hypothetical event spliced in (for serving) without touching the buffer.
struct Seq<'a> {
    events: &'a Events,
    extra: Option<(usize, &'a Stored)>,
}

/// One event of a [`Seq`]: buffered, or the hypothetical one.
#[derive(Clone, Copy)]
enum Rec<'a> {
    Buf(&'a Events, usize),
    Extra(&'a Stored),
}

impl<'a> Rec<'a> {
    fn time(self) -> i64 {
        match self {
            Rec::Buf(ev, i) => ev.time(i),
            Rec::Extra(e) => e.time,
        }
    }

    fn input(self, slot: usize) -> InRef<'a> {
        match self {
            Rec::Buf(ev, i) => ev.input(i, slot),
            Rec::Extra(e) => e.inputs[slot].as_ref(),
        }
    }
}

impl<'a> Seq<'a> {
    fn len(&self) -> usize {
        self.events.len() + self.extra.is_some() as usize
    }

    fn get(&self, i: usize) -> Rec<'a> {
        match self.extra {
            Some((at, e)) if i == at => Rec::Extra(e),
            Some((at, _)) if i > at => Rec::Buf(self.events, i - 1),
            _ => Rec::Buf(self.events, i),
        }
    }

    /// Index of the first element with time >= t (the sequence is sorted, so
    /// it is the count of elements with time < t).
    fn lower(&self, t: i64) -> usize {
        let i = self.events.partition_point(|x| x < t);
        i + self.extra.is_some_and(|(_, e)| e.time < t) as usize
    }
}

impl Partition {
    pub fn new(slides: Vec<Slide>) -> Partition {
        Partition {
            events: Events::default(),
            slides,
            pending: Pins::default(),
            waiting: Vec::new(),
        }
    }

    /// Inserts an event that arrived now (its position is the largest yet) and
    /// returns its index.
    pub fn insert(&mut self, e: Stored) -> usize {
        self.insert_parts(e.time, e.pos, &e.inputs)
    }

    /// [`Partition::insert`] of an event given by its parts.
    pub fn insert_parts(&mut self, time: i64, pos: u64, inputs: &[In]) -> usize {
        let idx = gallop(&self.events, self.events.len(), |t| t <= time);
        self.events.insert_parts(idx, time, pos, inputs);
        for s in self.slides.iter_mut() {
            if s.contains(time) {
                s.add(&self.events, idx);
            }
            s.lo_hint += (idx < s.lo_hint) as usize;
            s.hi_hint += (idx < s.hi_hint) as usize;
        }
        idx
    }

    pub fn index_of(&self, time: i64, pos: u64) -> Option<usize> {
        let i = self.events.lower_bound(time, pos);
        (i < self.events.len() && self.events.pos(i) == pos).then_some(i)
    }

    /// Drops events no future frame can see: those with time below `below`,
    /// keeping at least `keep_rows` events older than `rows_floor` for ROWS
    /// frames and LAG. Evicted events stay counted in unbounded accumulators.
    fn evict(&mut self, below: i64, rows_floor: i64, keep_rows: usize) {
        if self.events.is_empty() || self.events.time(0) >= below {
            return;
        }
        let mut older = if keep_rows > 0 {
            self.events.partition_point(|t| t < rows_floor)
        } else {
            usize::MAX
        };
        while !self.events.is_empty() {
            let time = self.events.time(0);
            if time >= below || (keep_rows > 0 && older <= keep_rows) {
                break;
            }
            older = older.saturating_sub(1);
            for s in self.slides.iter_mut() {
                s.lo_hint = s.lo_hint.saturating_sub(1);
                s.hi_hint = s.hi_hint.saturating_sub(1);
                if s.unbounded {
                    if s.fresh || time > s.hi {
                        s.add(&self.events, 0);
                    }
                } else if s.contains(time) {
                    s.remove(&self.events, 0);
                }
            }
            self.events.pop_front();
        }
    }

    /// Evicts what no future frame can see under watermark `wm`: future rows
    /// have time >= `wm`, held rows here have their own times, and a frame
    /// reaches `reach` (<= 0) below its row; ROWS frames and LAG keep
    /// `keep_rows` more.
    pub fn expire(&mut self, wm: i64, reach: i64, keep_rows: usize) {
        if wm == i64::MIN {
            return;
        }
        let t_min = self.pending.first().map_or(wm, |(t, _)| (*t).min(wm));
        self.evict(t_min.saturating_add(reach.min(0)), t_min, keep_rows);
    }

    /// Empties the partition for reuse under another key, keeping its
    /// allocations (buffer, slides, accumulator vectors).
    pub fn reset(&mut self) {
        // (a big buffer is freed: it would sit unused in the free list)
        self.events.clear();
        self.pending = Pins::default();
        self.waiting.clear();
        for s in &mut self.slides {
            s.lo = i64::MIN;
            s.hi = i64::MIN;
            s.fresh = true;
            s.lo_hint = 0;
            s.hi_hint = 0;
            for (_, acc) in &mut s.accs {
                acc.clear();
            }
        }
    }

    /// True when nothing here can influence a future row: the partition can be
    /// forgotten.
    pub fn is_idle(&self) -> bool {
        self.events.is_empty()
            && self.pending.is_empty()
            && self.slides.iter().all(|s| !s.unbounded)
    }
}

/// Evaluates one call for the row at (`time`, `pos`).
///
/// With `extra == None` the row's event is in the buffer and sliding state is
/// advanced in place. With `extra == Some(e)` the row is hypothetical: `e` is
/// spliced in virtually after every buffered event with time <= its time and
/// sliding state is cloned, so serving never changes state.
pub fn eval_call(
    call: &WindowCall,
    part: &mut Partition,
    time: i64,
    pos: u64,
    extra: Option<&Stored>,
) -> Value {
    let slot = call.input;
    match (&call.func, call.frame) {
        (WinFunc::Shift { offset, default }, _) => {
            let seq = seq(part, time, extra);
            let idx = row_index(part, &seq, time, pos, extra);
            let j = idx as i64 + offset;
            if j < 0 || j >= seq.len() as i64 {
                return default.clone();
            }
            seq.get(j as usize)
                .input(slot)
                .value()
                .unwrap_or(Value::Null)
        }
        (WinFunc::ExpDecaySum { half_life_ms }, frame) => {
            let seq = seq(part, time, extra);
            let (a, b) = bounds(part, &seq, frame, time, pos, extra);
            let mut sum = ExactSum::default();
            let mut n = 0;
            for i in a..b {
                let e = seq.get(i);
                if let Some(x) = e.input(slot).as_f64() {
                    sum.add(x * decay_weight(time, e.time(), *half_life_ms));
                    n += 1;
                }
            }
            if n == 0 {
                Value::Null
            } else {
                Value::Double(sum.value())
            }
        }
        (WinFunc::Min | WinFunc::Max, Frame::Rows { .. }) => {
            // a scan, without the multiset (and its allocation) a slide needs
            let seq = seq(part, time, extra);
            let (a, b) = bounds(part, &seq, call.frame, time, pos, extra);
            let want = if call.func == WinFunc::Min {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            };
            let mut best: Option<Value> = None;
            for i in a..b {
                let input = seq.get(i).input(slot);
                if !input.counts() {
                    continue;
                }
                let v = input.value().expect("counted inputs have a value");
                if best.as_ref().is_none_or(|b| v.total_cmp(b) == want) {
                    best = Some(v);
                }
            }
            best.unwrap_or(Value::Null)
        }
        (func, Frame::Rows { .. }) => {
            let seq = seq(part, time, extra);
            let (a, b) = bounds(part, &seq, call.frame, time, pos, extra);
            let mut acc = Acc::new(func, call.arg_type);
            for i in a..b {
                acc.add(seq.get(i).input(slot));
            }
            acc.result(func)
        }
        (func, Frame::Range { lo, hi }) => {
            let lo_t = lo.map_or(i64::MIN, |l| time.saturating_add(l));
            let hi_t = time.saturating_add(hi);
            let (si, ai) = call.slide.expect("a RANGE aggregate has a slide");
            let slide = &mut part.slides[si];
            match extra {
                None => {
                    slide.move_to(&part.events, lo_t, hi_t);
                    slide.accs[ai].1.result(func)
                }
                Some(e) => {
                    // only this call's accumulator, moved on a copy
                    let mut s = Slide {
                        accs: vec![slide.accs[ai].clone()],
                        ..slide.clone_frame()
                    };
                    s.move_to(&part.events, lo_t, hi_t);
                    if e.time >= lo_t && e.time <= hi_t {
                        s.accs[0].1.add(e.inputs[slot].as_ref());
                    }
                    s.accs[0].1.result(func)
                }
            }
        }
    }
}

/// `2^(-(t_row - t_event) / half_life)`, the weight of an event in a decayed sum.
pub fn decay_weight(row_time: i64, event_time: i64, half_life_ms: i64) -> f64 {
    ((event_time - row_time) as f64 / half_life_ms as f64).exp2()
}

fn seq<'a>(part: &'a Partition, time: i64, extra: Option<&'a Stored>) -> Seq<'a> {
    Seq {
        events: &part.events,
        extra: extra.map(|e| (part.events.partition_point(|t| t <= time), e)),
    }
}

fn row_index(
    part: &Partition,
    seq: &Seq<'_>,
    time: i64,
    pos: u64,
    extra: Option<&Stored>,
) -> usize {
    match (extra, seq.extra) {
        (Some(_), Some((at, _))) => at,
        _ => part
            .index_of(time, pos)
            .expect("the row's own event is buffered until the row is emitted"),
    }
}

/// The half-open index range `[a, b)` of the frame in `seq`.
fn bounds(
    part: &Partition,
    seq: &Seq<'_>,
    frame: Frame,
    time: i64,
    pos: u64,
    extra: Option<&Stored>,
) -> (usize, usize) {
    match frame {
        Frame::Rows { lo, hi } => {
            let idx = row_index(part, seq, time, pos, extra) as i64;
            let a = (idx + lo).max(0);
            let b = (idx + hi + 1).min(seq.len() as i64);
            if a >= b {
                (0, 0)
            } else {
                (a as usize, b as usize)
            }
        }
        Frame::Range { lo, hi } => {
            let lo_t = lo.map_or(i64::MIN, |l| time.saturating_add(l));
            let hi_t = time.saturating_add(hi);
            if hi_t < lo_t {
                return (0, 0);
            }
            let a = seq.lower(lo_t);
            let b = if hi_t == i64::MAX {
                seq.len()
            } else {
                seq.lower(hi_t + 1)
            };
            (a, b.max(a))
        }
    }
}
