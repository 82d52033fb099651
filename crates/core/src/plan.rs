//! The compiled form of a pipeline: tables, views, window calls and scalar
//! expressions. Produced by [`crate::sql`], executed by [`crate::engine`].

use crate::expr::Expr;
use crate::value::{DataType, Schema};

/// A source table: the event log's schema and how it is sharded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Table {
    pub name: String,
    pub schema: Schema,
    /// Index of the key column (`WITH (key = …)`): shards and partitions hash it.
    pub key: usize,
    /// Index of the TIMESTAMP column that orders every window.
    pub time: usize,
    /// How far behind the shard's newest event time the watermark trails.
    pub lateness_ms: i64,
    /// Number of shards S, fixed at creation.
    pub shards: u32,
    /// A column producers fill with a unique id per event
    /// (`WITH (event_id = …)`): each shard applies an id once.
    pub event_id: Option<usize>,
    /// How far ahead of the time it arrives an event's time may be
    /// (`WITH (max_event_time_ahead = …)`, default 1 hour); beyond, the
    /// event is refused before it can move its shard's watermark. A
    /// validation policy, not part of what the data directory stores: not
    /// in the table's fingerprint.
    #[serde(skip)]
    pub max_ahead_ms: i64,
}

/// The default `max_event_time_ahead`: 1 hour.
pub const DEFAULT_MAX_AHEAD_MS: i64 = 3_600_000;

/// Which aggregate or navigation function a window call computes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum WinFunc {
    CountStar,
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    /// Sum of `x · 2^(-(t_row - t_i) / half_life)` over the frame.
    ExpDecaySum {
        half_life_ms: i64,
    },
    /// Value `offset` rows before (LAG) or after (LEAD, positive) the row.
    Shift {
        offset: i64,
        default: crate::value::Value,
    },
}

/// A window frame with offsets relative to the current row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Frame {
    /// Event-time range `[t + lo, t + hi]` in milliseconds; `lo == None` is
    /// UNBOUNDED PRECEDING. Negative offsets are PRECEDING.
    Range { lo: Option<i64>, hi: i64 },
    /// Rows `[i + lo, i + hi]` in (event_time, log position) order.
    Rows { lo: i64, hi: i64 },
}

impl Frame {
    /// True when the frame reaches past the current row, so the row has to
    /// wait for the watermark (a label).
    pub fn is_following(&self) -> bool {
        match self {
            Frame::Range { hi, .. } => *hi > 0,
            Frame::Rows { hi, .. } => *hi > 0,
        }
    }
}

/// One `func(arg) FILTER (WHERE …) OVER window` occurrence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowCall {
    pub func: WinFunc,
    /// The argument, evaluated on each event as it enters state.
    pub arg: Option<Expr>,
    /// `FILTER (WHERE …)`: events for which it is not TRUE are skipped.
    pub filter: Option<Expr>,
    /// Index into [`View::groups`]: which partitioning this call uses.
    pub group: usize,
    /// Which of the group's per-event inputs this call reads; calls with the
    /// same argument and FILTER share one.
    pub input: usize,
    /// For RANGE aggregates: (slide, accumulator) within the group's slides;
    /// calls with the same frame share a slide.
    pub slide: Option<(usize, usize)>,
    pub frame: Frame,
    /// Type of `arg` (BOOLEAN for `COUNT(*)`); BIGINT sums stay integral.
    pub arg_type: DataType,
    pub out_type: DataType,
}

impl WindowCall {
    pub fn is_following(&self) -> bool {
        self.frame.is_following()
    }
}

/// Calls that share one PARTITION BY list share one keyed buffer of events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionGroup {
    /// Column indexes of the PARTITION BY list; the first is the table key.
    pub columns: Vec<usize>,
    /// Indexes into [`View::calls`] of the calls in this group, in slot order.
    pub calls: Vec<usize>,
    /// For each distinct (argument, FILTER) pair, the call that defines it:
    /// one input value is stored per event for each.
    pub inputs: Vec<usize>,
    /// For each distinct RANGE frame of the group's accumulating calls, the
    /// calls that accumulate over it.
    pub slides: Vec<(Frame, Vec<usize>)>,
}

/// A compiled `CREATE VIEW`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct View {
    pub name: String,
    /// Index of the source table in [`Catalog::tables`].
    pub table: usize,
    pub output: Schema,
    /// `WHERE`: events that fail it never enter this view's state.
    pub filter: Option<Expr>,
    pub calls: Vec<WindowCall>,
    pub groups: Vec<PartitionGroup>,
    /// SELECT expressions over input columns and `Expr::Slot(call)`.
    pub select: Vec<Expr>,
    pub qualify: Option<Expr>,
    /// True when QUALIFY uses no window call, so it can drop a row at arrival.
    pub qualify_at_arrival: bool,
    /// Output columns whose value depends on a FOLLOWING frame; serving cannot
    /// know them yet and answers NULL.
    pub label_columns: Vec<usize>,
}

impl View {
    /// Which columns of `table` this view reads (always the key and the event
    /// time). A batch reader can skip decoding the rest.
    pub fn used_columns(&self, table: &Table) -> Vec<bool> {
        let mut used = vec![false; table.schema.len()];
        used[table.key] = true;
        used[table.time] = true;
        let mut mark = |e: &Expr| {
            e.walk(&mut |x| {
                if let Expr::Column(i) = x {
                    used[*i] = true;
                }
            })
        };
        self.select.iter().for_each(&mut mark);
        for e in self.filter.iter().chain(self.qualify.iter()) {
            mark(e);
        }
        for c in &self.calls {
            for e in c.arg.iter().chain(c.filter.iter()) {
                mark(e);
            }
        }
        for g in &self.groups {
            for &i in &g.columns {
                used[i] = true;
            }
        }
        used
    }

    /// True when some call needs the watermark before the row is final.
    pub fn has_following(&self) -> bool {
        self.calls.iter().any(|c| c.is_following())
    }
}

/// Everything a pipeline file defines.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: Vec<Table>,
    pub views: Vec<View>,
}

impl Catalog {
    pub fn table(&self, name: &str) -> Option<(usize, &Table)> {
        self.tables
            .iter()
            .enumerate()
            .find(|(_, t)| t.name.eq_ignore_ascii_case(name))
    }

    pub fn view(&self, name: &str) -> Option<(usize, &View)> {
        self.views
            .iter()
            .enumerate()
            .find(|(_, v)| v.name.eq_ignore_ascii_case(name))
    }
}
