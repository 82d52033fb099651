//! A partition's buffered events as fixed-width records in one ring of
//! 64-bit words, in (event time, log position) order.
//!
//! A record is the event's time, its log position, its inputs' tags packed
//! four bits each (up to four in the position word's top bits, else sixteen
//! to a word of their own), then one payload word for each input that
//! carries a number or a value. COUNT(*) FILTER inputs carry none, so
//! the canonical view keeps an event in 24 bytes where a row of `In`s took
//! 72, and a partition's events are one allocation. Which inputs carry a
//! payload is decided by the events themselves: the first one sets it and an
//! event that needs a payload word the layout lacks widens every record
//! once.
//!
//! Text and other heap values live in a side table the payload indexes; the
//! table is freed slot by slot as events leave.

use super::input::{In, InRef};
use super::partition::Stored;
use crate::value::Value;
use std::collections::VecDeque;

const SKIP: u64 = 0;
const NULL: u64 = 1;
const FALSE: u64 = 2;
const TRUE: u64 = 3;
const INT: u64 = 4;
const FLOAT: u64 = 5;
const TS: u64 = 6;
const OTHER: u64 = 7;
const TAGS_PER_WORD: usize = 16;

/// Where a record's parts are. Up to four inputs' tags fit in the top 16
/// bits of the position word ("packed": log positions stay below 2^48,
/// ten years at a million events a second; a larger one unpacks the
/// buffer); more inputs get tag words of their own.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Layout {
    /// Inputs per event.
    slots: u32,
    /// Bit s: input s has a payload word (inputs from 64 on always do).
    wide: u64,
    packed: bool,
}

const PACKED_SLOTS: usize = 4;
const POS_BITS: u32 = 48;
const POS_MASK: u64 = (1 << POS_BITS) - 1;

impl Layout {
    fn for_event(pos: u64, inputs: &[In]) -> Layout {
        let mut wide = 0u64;
        for (s, i) in inputs.iter().enumerate().take(64) {
            wide |= (needs_payload(i) as u64) << s;
        }
        Layout {
            slots: inputs.len() as u32,
            wide,
            packed: inputs.len() <= PACKED_SLOTS && pos <= POS_MASK,
        }
    }

    /// The layout that holds both `self`'s records and `other`'s.
    fn union(self, other: Layout) -> Layout {
        Layout {
            slots: self.slots,
            wide: self.wide | other.wide,
            packed: self.packed && other.packed,
        }
    }

    fn head(self) -> usize {
        if self.packed {
            2
        } else {
            2 + (self.slots as usize).div_ceil(TAGS_PER_WORD)
        }
    }

    fn width(self) -> usize {
        self.head() + self.wide.count_ones() as usize + (self.slots as usize).saturating_sub(64)
    }

    /// The payload word of input `s` within a record, if it has one.
    fn payload_at(self, s: usize) -> Option<usize> {
        let base = self.head();
        if s < 64 {
            (self.wide >> s & 1 == 1)
                .then(|| base + (self.wide & ((1u64 << s) - 1)).count_ones() as usize)
        } else {
            Some(base + self.wide.count_ones() as usize + (s - 64))
        }
    }

    /// The word and bit where input `s`'s tag is.
    fn tag_at(self, s: usize) -> (usize, u32) {
        if self.packed {
            (1, POS_BITS + 4 * s as u32)
        } else {
            (2 + s / TAGS_PER_WORD, 4 * (s % TAGS_PER_WORD) as u32)
        }
    }

    fn pos_mask(self) -> u64 {
        if self.packed {
            POS_MASK
        } else {
            u64::MAX
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Events {
    words: VecDeque<u64>,
    layout: Layout,
    /// Words per event (0 until the first event sets the layout).
    width: u32,
    /// Events held (`words.len() / width`, kept rather than divided out on
    /// every look).
    count: usize,
    others: Option<Box<Others>>,
}

/// Heap values referenced from payload words, with a free list.
#[derive(Clone, Debug, Default)]
struct Others {
    values: Vec<Value>,
    free: Vec<u64>,
}

fn needs_payload(i: &In) -> bool {
    matches!(i, In::Int(_) | In::Float(_) | In::Ts(_) | In::Other(_))
}

impl Events {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn w(&self) -> usize {
        self.width as usize
    }

    pub fn time(&self, i: usize) -> i64 {
        self.words[i * self.w()] as i64
    }

    pub fn pos(&self, i: usize) -> u64 {
        self.words[i * self.w() + 1] & self.layout.pos_mask()
    }

    /// Input `s` of event `i`.
    pub fn input(&self, i: usize, s: usize) -> InRef<'_> {
        let at = i * self.w();
        let (word, shift) = self.layout.tag_at(s);
        let tag = self.words[at + word] >> shift & 0xF;
        let payload = || {
            let p = self.layout.payload_at(s).expect("layout has its payload");
            self.words[at + p]
        };
        match tag {
            SKIP => InRef::Skip,
            NULL => InRef::Null,
            FALSE => InRef::Bool(false),
            TRUE => InRef::Bool(true),
            INT => InRef::Int(payload() as i64),
            FLOAT => InRef::Float(f64::from_bits(payload())),
            TS => InRef::Ts(payload() as i64),
            _ => {
                let others = self.others.as_ref().expect("a text input has its table");
                InRef::Other(&others.values[payload() as usize])
            }
        }
    }

    /// Event `i` as a row of owned inputs (checkpoints).
    pub fn stored(&self, i: usize) -> Stored {
        Stored {
            time: self.time(i),
            pos: self.pos(i),
            inputs: (0..self.layout.slots as usize)
                .map(|s| self.input(i, s).to_owned())
                .collect(),
        }
    }

    /// The number of events whose time satisfies `before` (it must hold on
    /// a prefix, as the buffer is sorted by time).
    pub fn partition_point(&self, before: impl Fn(i64) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(self.time(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The index of the first event not below (time, pos).
    pub fn lower_bound(&self, time: i64, pos: u64) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if (self.time(mid), self.pos(mid)) < (time, pos) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Inserts `e` as event `idx` (the caller keeps the order).
    pub fn insert(&mut self, idx: usize, e: &Stored) {
        self.insert_parts(idx, e.time, e.pos, &e.inputs);
    }

    /// [`Events::insert`] of an event given by its parts.
    pub fn insert_parts(&mut self, idx: usize, time: i64, pos: u64, inputs: &[In]) {
        let want = Layout::for_event(pos, inputs);
        if self.words.is_empty() {
            self.layout = want;
            self.width = want.width() as u32;
        } else {
            debug_assert_eq!(
                want.slots, self.layout.slots,
                "every event has the group's inputs"
            );
            let both = self.layout.union(want);
            if both != self.layout {
                self.relayout(both);
            }
        }
        let layout = self.layout;
        let mut rec: smallvec::SmallVec<[u64; 8]> = smallvec::SmallVec::from_elem(0, self.w());
        rec[0] = time as u64;
        rec[1] = pos;
        for (s, i) in inputs.iter().enumerate() {
            let (tag, payload) = match i {
                In::Skip => (SKIP, None),
                In::Null => (NULL, None),
                In::Bool(false) => (FALSE, None),
                In::Bool(true) => (TRUE, None),
                In::Int(x) => (INT, Some(*x as u64)),
                In::Float(f) => (FLOAT, Some(f.to_bits())),
                In::Ts(t) => (TS, Some(*t as u64)),
                In::Other(v) => (OTHER, Some(self.keep_other((**v).clone()))),
            };
            let (word, shift) = layout.tag_at(s);
            rec[word] |= tag << shift;
            if let Some(p) = layout.payload_at(s) {
                rec[p] = payload.unwrap_or(0);
            }
        }
        let at = idx * self.w();
        if at == self.words.len() {
            // copied as a slice: in-order events append, the common case
            self.words.extend(rec.iter());
        } else {
            for (k, word) in rec.into_iter().enumerate() {
                self.words.insert(at + k, word);
            }
        }
        self.count += 1;
    }

    fn keep_other(&mut self, v: Value) -> u64 {
        let others = self.others.get_or_insert_with(Default::default);
        match others.free.pop() {
            Some(i) => {
                others.values[i as usize] = v;
                i
            }
            None => {
                others.values.push(v);
                (others.values.len() - 1) as u64
            }
        }
    }

    /// Rewrites every record in layout `to` (more payload words, or tags
    /// moved out of the position word).
    fn relayout(&mut self, to: Layout) {
        let from = self.layout;
        let (old_w, new_w) = (self.w(), to.width());
        let mut words = VecDeque::with_capacity(self.len() * new_w);
        let mut rec = vec![0u64; new_w];
        for i in 0..self.len() {
            let at = i * old_w;
            rec.fill(0);
            rec[0] = self.words[at];
            rec[1] = self.words[at + 1] & from.pos_mask();
            for s in 0..from.slots as usize {
                let (fw, fs) = from.tag_at(s);
                let (tw, ts) = to.tag_at(s);
                rec[tw] |= (self.words[at + fw] >> fs & 0xF) << ts;
                if let Some(p) = to.payload_at(s) {
                    rec[p] = from.payload_at(s).map_or(0, |q| self.words[at + q]);
                }
            }
            words.extend(rec.iter().copied());
        }
        self.words = words;
        self.layout = to;
        self.width = new_w as u32;
    }

    /// Drops the earliest event.
    pub fn pop_front(&mut self) {
        if self.others.is_some() {
            let freed: smallvec::SmallVec<[u64; 4]> = (0..self.layout.slots as usize)
                .filter(|&s| matches!(self.input(0, s), InRef::Other(_)))
                .map(|s| self.words[self.layout.payload_at(s).expect("payload")])
                .collect();
            if let Some(others) = &mut self.others {
                for i in freed {
                    others.values[i as usize] = Value::Null;
                    others.free.push(i);
                }
            }
        }
        let w = self.w();
        self.words.drain(..w);
        self.count -= 1;
        if self.words.is_empty() {
            self.others = None;
        }
    }

    /// Forgets every event; a large buffer is freed rather than kept.
    pub fn clear(&mut self) {
        if self.words.capacity() > 256 {
            self.words = VecDeque::new();
        }
        self.words.clear();
        self.count = 0;
        self.others = None;
    }
}

impl serde::Serialize for Events {
    /// As the sequence of `Stored` rows earlier versions kept, so
    /// checkpoints read either way.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..self.len()).map(|i| self.stored(i)))
    }
}

impl<'de> serde::Deserialize<'de> for Events {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rows = Vec::<Stored>::deserialize(d)?;
        let mut e = Events::default();
        for (i, r) in rows.iter().enumerate() {
            e.insert(i, r);
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_in() -> impl Strategy<Value = In> {
        prop_oneof![
            Just(In::Skip),
            Just(In::Null),
            any::<bool>().prop_map(In::Bool),
            any::<i64>().prop_map(In::Int),
            any::<f64>().prop_map(In::Float),
            any::<i64>().prop_map(In::Ts),
            "[a-c]{0,3}".prop_map(|s| In::Other(Box::new(Value::text(&s)))),
        ]
    }

    fn same(a: &In, b: &In) -> bool {
        match (a, b) {
            (In::Float(x), In::Float(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    proptest! {
        /// The ring answers like a VecDeque of rows through inserts
        /// anywhere, pops from the front, widening, text and a checkpoint
        /// round trip.
        #[test]
        fn events_match_a_deque_of_rows(
            slots in 0usize..20,
            ops in proptest::collection::vec((0u8..4, any::<u16>(), proptest::collection::vec(arb_in(), 20)), 1..120)
        ) {
            let mut ev = Events::default();
            let mut model: VecDeque<Stored> = VecDeque::new();
            for (n, (op, at, ins)) in ops.into_iter().enumerate() {
                if op == 0 && !model.is_empty() {
                    model.pop_front();
                    ev.pop_front();
                } else if op == 1 {
                    let bytes = bincode::serde::encode_to_vec(&ev, bincode::config::standard()).unwrap();
                    ev = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap().0;
                } else {
                    let idx = at as usize % (model.len() + 1);
                    // some positions beyond the packed range
                    let pos = if at % 17 == 0 { (1 << 48) + n as u64 } else { n as u64 };
                    let row = Stored { time: n as i64, pos, inputs: ins[..slots].iter().cloned().collect() };
                    ev.insert(idx, &row);
                    model.insert(idx, row);
                }
                prop_assert_eq!(ev.len(), model.len());
                for (i, m) in model.iter().enumerate() {
                    prop_assert_eq!(ev.time(i), m.time);
                    prop_assert_eq!(ev.pos(i), m.pos);
                    for (s, want) in m.inputs.iter().enumerate() {
                        prop_assert!(same(&ev.input(i, s).to_owned(), want));
                    }
                }
            }
        }
    }

    #[test]
    fn a_counting_input_costs_no_payload_word() {
        let mut ev = Events::default();
        let row = Stored {
            time: 1,
            pos: 1,
            inputs: [In::Bool(true), In::Skip, In::Float(1.0)]
                .into_iter()
                .collect(),
        };
        ev.insert(0, &row);
        assert_eq!(ev.w(), 3, "time, position with the tags, one payload");
        let far = Stored {
            time: 2,
            pos: 1 << 50,
            inputs: [In::Bool(false), In::Null, In::Skip].into_iter().collect(),
        };
        ev.insert(1, &far);
        assert_eq!(ev.w(), 4, "a position past 2^48 moves the tags out");
        assert_eq!((ev.pos(0), ev.pos(1)), (1, 1 << 50));
        assert_eq!(ev.input(0, 2), InRef::Float(1.0));
        assert_eq!(ev.input(1, 0), InRef::Bool(false));
        assert_eq!(ev.input(1, 2), InRef::Skip);
    }
}
