//! The engine: one table's events, split into shards, each shard running
//! every view's operators in log order.
//!
//! This is the single implementation behind both paths: `lockstep run` feeds
//! a file through it, and the streaming daemon feeds the log through it one
//! event at a time. Same operators, same order, so the same rows.

use crate::plan::{Catalog, Table};
use crate::shard::shard_of;
use crate::value::{DataType, Row, Value};
use crate::window::{Entry, Prepared, RowFate, ViewMeta, ViewState, ViewStats};
use std::sync::Arc;

/// Why an event cannot enter the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("expected {expected} columns, got {got}")]
    Arity { expected: usize, got: usize },
    #[error("key column `{0}` is missing or NULL")]
    MissingKey(String),
    #[error("event_time column `{0}` is missing or NULL")]
    MissingTime(String),
    #[error("column `{column}` should be {expected}, got {got}")]
    Type {
        column: String,
        expected: DataType,
        got: String,
    },
    #[error(
        "event_time {} is more than {} ahead of the time it arrived, {} (the table's max_event_time_ahead): a clock is wrong",
        crate::time::format_rfc3339_ms(*.time),
        crate::time::format_duration_ms(*.max_ms),
        crate::time::format_rfc3339_ms(*.now)
    )]
    TooFarAhead { time: i64, now: i64, max_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown view `{0}`")]
    UnknownView(String),
    #[error("views `{0}` and `{1}` read different tables; run them in separate engines")]
    MixedTables(String, String),
    #[error("no views to run")]
    NoViews,
    #[error("the snapshot was taken for views {snapshot:?}, this engine runs {engine:?}")]
    SnapshotMismatch {
        snapshot: Vec<String>,
        engine: Vec<String>,
    },
    #[error("no shard {0}")]
    NoShard(u32),
    #[error("checkpoint is incomplete: view {view} group {group} slot {slot} is missing")]
    MissingSlot { view: u32, group: u32, slot: u32 },
    #[error("checkpoint does not match the views' plan: {0}")]
    BadCheckpoint(String),
}

/// The complete state of one shard — watermark, next log position, and every
/// view's partitions and held rows — as plain data (serde), so a checkpoint
/// can persist it and a restarted or new owner can carry on exactly where it
/// was.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ShardSnapshot {
    /// Names of the views, in engine order: a snapshot only restores into an
    /// engine running the same views.
    views: Vec<String>,
    state: Shard,
}

impl ShardSnapshot {
    /// The log position the shard will give its next event: replay the log
    /// from here after restoring.
    pub fn next_position(&self) -> u64 {
        self.state.next_pos
    }
}

/// The non-partition part of one shard's state, stored whole by each
/// checkpoint; the partitions are stored slot by slot, and only the slots
/// changed since the previous checkpoint are written (see
/// [`Engine::checkpoint_delta`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ShardMeta {
    views: Vec<String>,
    max_time: i64,
    next_pos: u64,
    late: u64,
    view_meta: Vec<ViewMeta>,
}

impl ShardMeta {
    /// The views the checkpoint was taken for, in engine order.
    pub fn views(&self) -> &[String] {
        &self.views
    }

    /// The log position of the shard's next event: replay from here.
    pub fn next_position(&self) -> u64 {
        self.next_pos
    }
}

/// Where a partition slot lives: (view, group, slot) within a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub view: u32,
    pub group: u32,
    pub slot: u32,
}

/// One incremental checkpoint of a shard: its meta, and the slots that
/// changed since the previous one (all of them for the first).
#[derive(Clone, Debug)]
pub struct ShardDelta {
    pub meta: ShardMeta,
    pub slots: Vec<(SlotKey, Entry)>,
}

impl Table {
    /// Checks that the event's time is at most `max_event_time_ahead` past
    /// `now_ms`, the time it arrived (a node's clock at ingest, a record's
    /// append time, `lockstep run --now`). An event beyond is refused, so
    /// one wrong clock cannot move its shard's watermark into the future.
    pub fn check_time(&self, event: &[Value], now_ms: i64) -> Result<(), EventError> {
        match event.get(self.time) {
            Some(Value::Timestamp(t)) if *t > now_ms.saturating_add(self.max_ahead_ms) => {
                Err(EventError::TooFarAhead {
                    time: *t,
                    now: now_ms,
                    max_ms: self.max_ahead_ms,
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks that an event (already coerced to the column types) fits the
    /// table: right width, right types, key and event time present. Pure, so
    /// a reader thread can do it before the engine sees the event.
    pub fn validate(&self, event: &[Value]) -> Result<(), EventError> {
        let t = self;
        if event.len() != t.schema.len() {
            return Err(EventError::Arity {
                expected: t.schema.len(),
                got: event.len(),
            });
        }
        for (v, c) in event.iter().zip(&t.schema.columns) {
            let ok = matches!(
                (v, c.data_type),
                (Value::Null, _)
                    | (Value::BigInt(_), DataType::BigInt)
                    | (Value::Double(_), DataType::Double)
                    | (Value::Text(_), DataType::Text)
                    | (Value::Boolean(_), DataType::Boolean)
                    | (Value::Timestamp(_), DataType::Timestamp)
            );
            if !ok {
                return Err(EventError::Type {
                    column: c.name.clone(),
                    expected: c.data_type,
                    got: format!("{v:?}"),
                });
            }
        }
        if event[t.key].is_null() {
            return Err(EventError::MissingKey(t.schema.columns[t.key].name.clone()));
        }
        if event[t.time].is_null() {
            return Err(EventError::MissingTime(
                t.schema.columns[t.time].name.clone(),
            ));
        }
        Ok(())
    }

    /// The shard an event belongs to: murmur2 of the key, as Kafka does.
    pub fn shard_of(&self, event: &[Value]) -> u32 {
        let t = self;
        shard_of(&event[t.key], t.shards)
    }
}

/// What happened to a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Entered the shard's state at log position `pos`.
    Accepted { shard: u32, pos: u64 },
    /// Its event time was below the shard's watermark: it changed no state
    /// and produced no row.
    Late { shard: u32, watermark: i64 },
}

/// A finalized row of view `view` (an index into [`Engine::views`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    pub view: usize,
    pub shard: u32,
    pub row: Row,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Shard {
    max_time: i64,
    next_pos: u64,
    late: u64,
    views: Vec<ViewState>,
}

impl Shard {
    fn watermark(&self, lateness: i64) -> i64 {
        if self.max_time == i64::MIN {
            i64::MIN
        } else {
            self.max_time.saturating_sub(lateness)
        }
    }
}

/// Per-shard counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u32,
    pub events: u64,
    pub late: u64,
    pub watermark: i64,
    pub views: Vec<ViewStats>,
}

/// The incremental engine for a set of views over one table.
#[derive(Clone, Debug)]
pub struct Engine {
    catalog: Arc<Catalog>,
    table: usize,
    views: Vec<usize>,
    shards: Vec<Shard>,
    /// Row buffer reused by `push_to_shard`.
    scratch: Vec<Row>,
}

impl Engine {
    /// An engine running the named views (all views of their table must share
    /// it). An empty list runs every view of the catalog's first table.
    pub fn new(catalog: Arc<Catalog>, view_names: &[&str]) -> Result<Engine, EngineError> {
        let views: Vec<usize> = if view_names.is_empty() {
            let t = catalog.views.first().ok_or(EngineError::NoViews)?.table;
            (0..catalog.views.len())
                .filter(|&i| catalog.views[i].table == t)
                .collect()
        } else {
            view_names
                .iter()
                .map(|n| {
                    catalog
                        .view(n)
                        .map(|(i, _)| i)
                        .ok_or_else(|| EngineError::UnknownView(n.to_string()))
                })
                .collect::<Result<_, _>>()?
        };
        let table = catalog.views[views[0]].table;
        for &v in &views {
            if catalog.views[v].table != table {
                return Err(EngineError::MixedTables(
                    catalog.views[views[0]].name.clone(),
                    catalog.views[v].name.clone(),
                ));
            }
        }
        let shard = Shard {
            max_time: i64::MIN,
            next_pos: 0,
            late: 0,
            views: views
                .iter()
                .map(|&v| ViewState::new(&catalog.views[v]))
                .collect(),
        };
        let n = catalog.tables[table].shards as usize;
        Ok(Engine {
            shards: vec![shard; n],
            catalog,
            table,
            views,
            scratch: Vec::new(),
        })
    }

    pub fn table(&self) -> &Table {
        &self.catalog.tables[self.table]
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Catalog indexes of the views this engine runs.
    pub fn views(&self) -> &[usize] {
        &self.views
    }

    /// Checks that an event fits the table schema (types already coerced).
    pub fn validate(&self, event: &[Value]) -> Result<(), EventError> {
        self.table().validate(event)
    }

    /// The shard an event belongs to.
    pub fn shard_of(&self, event: &[Value]) -> u32 {
        self.table().shard_of(event)
    }

    /// Appends one event to its shard's log and runs it through every view.
    /// Rows that became final are appended to `out`.
    pub fn push(&mut self, event: &[Value], out: &mut Vec<Emitted>) -> Result<Outcome, EventError> {
        self.validate(event)?;
        let shard = self.shard_of(event);
        Ok(self.push_to_shard(shard, event, out))
    }

    /// Like [`Engine::push`] for an event already validated and routed (the
    /// daemon's shard actors own one shard each).
    pub fn push_to_shard(
        &mut self,
        shard: u32,
        event: &[Value],
        out: &mut Vec<Emitted>,
    ) -> Outcome {
        self.push_inner(shard, event, None, out)
    }

    /// Evaluates, for a batch of validated events, what every view needs of
    /// each event before its state (WHERE, QUALIFY on columns, the window
    /// calls' inputs), once per distinct text where an expression reads one
    /// TEXT column (see [`crate::window::prepare`]). Pass the result with
    /// the events to [`Engine::push_prepared`].
    pub fn prepare(&self, events: &[&[Value]]) -> Vec<Prepared> {
        let schema = &self.table().schema;
        self.views
            .iter()
            .map(|&v| Prepared::new(&self.catalog.views[v], schema, events))
            .collect()
    }

    /// [`Engine::push_to_shard`] for event `i` of a batch made ready by
    /// [`Engine::prepare`]: the same state and rows, with the per-event
    /// expressions already evaluated.
    pub fn push_prepared(
        &mut self,
        shard: u32,
        event: &[Value],
        prepared: &[Prepared],
        i: usize,
        out: &mut Vec<Emitted>,
    ) -> Outcome {
        debug_assert!(
            prepared.len() == self.views.len() && prepared.iter().all(|p| i < p.len()),
            "event {i} of a batch prepared for these views"
        );
        self.push_inner(shard, event, Some((prepared, i)), out)
    }

    fn push_inner(
        &mut self,
        shard: u32,
        event: &[Value],
        prepared: Option<(&[Prepared], usize)>,
        out: &mut Vec<Emitted>,
    ) -> Outcome {
        let t = &self.catalog.tables[self.table];
        let lateness = t.lateness_ms;
        let Value::Timestamp(time) = event[t.time] else {
            unreachable!("validated: event_time is a TIMESTAMP")
        };
        let s = &mut self.shards[shard as usize];
        let wm = s.watermark(lateness);
        if time < wm {
            s.late += 1;
            for v in &mut s.views {
                v.stats.late += 1;
            }
            return Outcome::Late {
                shard,
                watermark: wm,
            };
        }
        let pos = s.next_pos;
        s.next_pos += 1;
        s.max_time = s.max_time.max(time);
        let wm = s.watermark(lateness);
        // reused across events: most events release a held row
        let mut rows = std::mem::take(&mut self.scratch);
        for (i, vs) in s.views.iter_mut().enumerate() {
            let view = &self.catalog.views[self.views[i]];
            match prepared {
                Some((p, at)) => {
                    vs.on_event_prepared(view, event, time, pos, wm, p[i].get(at), &mut rows)
                }
                None => vs.on_event(view, event, time, pos, wm, &mut rows),
            }
            out.extend(rows.drain(..).map(|row| Emitted {
                view: i,
                shard,
                row,
            }));
        }
        self.scratch = rows;
        Outcome::Accepted { shard, pos }
    }

    /// End of a finite input: every shard's watermark becomes +infinity and all
    /// held rows are emitted, shard by shard.
    pub fn finish(&mut self, out: &mut Vec<Emitted>) {
        for (shard, s) in self.shards.iter_mut().enumerate() {
            let mut rows = Vec::new();
            for (i, vs) in s.views.iter_mut().enumerate() {
                let view = &self.catalog.views[self.views[i]];
                vs.flush(view, &mut rows);
                out.extend(rows.drain(..).map(|row| Emitted {
                    view: i,
                    shard: shard as u32,
                    row,
                }));
            }
        }
    }

    /// Features for a hypothetical event of view `view` (engine index) as if it
    /// arrived now. Label columns (FOLLOWING frames) are NULL. No state changes.
    pub fn serve(&mut self, view: usize, event: &[Value]) -> Result<Row, EventError> {
        self.validate(event)?;
        let t = self.table();
        let Value::Timestamp(time) = event[t.time] else {
            unreachable!("validated")
        };
        let shard = self.shard_of(event) as usize;
        let v = &self.catalog.views[self.views[view]];
        Ok(self.shards[shard].views[view].serve(v, event, time))
    }

    /// [`Engine::serve`], and whether the event, pushed next, gives the
    /// view a training row (and if not, why not).
    pub fn serve_with_fate(
        &mut self,
        view: usize,
        event: &[Value],
    ) -> Result<(Row, RowFate), EventError> {
        self.validate(event)?;
        let t = self.table();
        let lateness = t.lateness_ms;
        let Value::Timestamp(time) = event[t.time] else {
            unreachable!("validated")
        };
        let shard = self.shard_of(event) as usize;
        let v = &self.catalog.views[self.views[view]];
        let s = &mut self.shards[shard];
        let watermark = s.watermark(lateness);
        let (row, fate) = s.views[view].serve_with_fate(v, event, time);
        if time < watermark {
            return Ok((row, RowFate::Late { watermark }));
        }
        Ok((row, fate))
    }

    /// Sweeps every shard's state for expired events every `n` events instead
    /// of adaptively. Results do not change; tests use it to exercise
    /// eviction on short logs.
    pub fn set_sweep_every(&mut self, n: u64) {
        for s in &mut self.shards {
            for v in &mut s.views {
                v.sweep_every = Some(n);
            }
        }
    }

    fn view_names(&self) -> Vec<String> {
        self.views
            .iter()
            .map(|&v| self.catalog.views[v].name.clone())
            .collect()
    }

    /// A copy of shard `shard`'s whole state.
    pub fn snapshot(&self, shard: u32) -> Result<ShardSnapshot, EngineError> {
        let state = self
            .shards
            .get(shard as usize)
            .ok_or(EngineError::NoShard(shard))?;
        Ok(ShardSnapshot {
            views: self.view_names(),
            state: state.clone(),
        })
    }

    /// Replaces shard `shard`'s state with a snapshot taken by an engine
    /// running the same views.
    pub fn restore(&mut self, shard: u32, snapshot: ShardSnapshot) -> Result<(), EngineError> {
        let engine = self.view_names();
        if snapshot.views != engine {
            return Err(EngineError::SnapshotMismatch {
                snapshot: snapshot.views,
                engine,
            });
        }
        let slot = self
            .shards
            .get_mut(shard as usize)
            .ok_or(EngineError::NoShard(shard))?;
        *slot = snapshot.state;
        Ok(())
    }

    /// The shard's meta and the partition slots changed since the previous
    /// call; applying the deltas in order to a key-value store of slots and
    /// keeping the latest meta gives what [`Engine::restore_parts`] needs.
    pub fn checkpoint_delta(&mut self, shard: u32) -> Result<ShardDelta, EngineError> {
        let (meta, slots) = self.checkpoint_delta_encoded(shard, Entry::clone)?;
        Ok(ShardDelta { meta, slots })
    }

    /// Like [`Engine::checkpoint_delta`], but each changed slot is handed to
    /// `encode` by reference and its result kept: the daemon serializes
    /// slots straight to bytes instead of copying partitions first.
    pub fn checkpoint_delta_encoded<T>(
        &mut self,
        shard: u32,
        mut encode: impl FnMut(&Entry) -> T,
    ) -> Result<(ShardMeta, Vec<(SlotKey, T)>), EngineError> {
        let views = self.view_names();
        let s = self
            .shards
            .get_mut(shard as usize)
            .ok_or(EngineError::NoShard(shard))?;
        let mut slots = Vec::new();
        for (v, vs) in s.views.iter_mut().enumerate() {
            vs.take_dirty_with(|g, i, e| {
                let key = SlotKey {
                    view: v as u32,
                    group: g as u32,
                    slot: i as u32,
                };
                slots.push((key, encode(e)));
            });
        }
        let meta = ShardMeta {
            views,
            max_time: s.max_time,
            next_pos: s.next_pos,
            late: s.late,
            view_meta: s.views.iter().map(ViewState::meta).collect(),
        };
        Ok((meta, slots))
    }

    /// Makes the next [`Engine::checkpoint_delta`] of `shard` include every
    /// slot (a full checkpoint, e.g. into an empty store).
    pub fn mark_all_changed(&mut self, shard: u32) {
        if let Some(s) = self.shards.get_mut(shard as usize) {
            s.views.iter_mut().for_each(ViewState::mark_all);
        }
    }

    /// Replaces shard `shard`'s state with one rebuilt from a checkpoint's
    /// meta and every slot it lists.
    pub fn restore_parts(
        &mut self,
        shard: u32,
        meta: ShardMeta,
        slots: impl IntoIterator<Item = (SlotKey, Entry)>,
    ) -> Result<(), EngineError> {
        let engine = self.view_names();
        if meta.views != engine {
            return Err(EngineError::SnapshotMismatch {
                snapshot: meta.views,
                engine,
            });
        }
        for (m, &v) in meta.view_meta.iter().zip(&self.views) {
            let want = self.catalog.views[v].groups.len();
            if m.groups() != want {
                return Err(EngineError::BadCheckpoint(format!(
                    "view `{}` has {want} partition groups, the checkpoint {}",
                    self.catalog.views[v].name,
                    m.groups()
                )));
            }
        }
        let mut slabs: Vec<Vec<Vec<Option<Entry>>>> = meta
            .view_meta
            .iter()
            .map(|m| (0..m.groups()).map(|g| vec![None; m.slab_len(g)]).collect())
            .collect();
        for (k, e) in slots {
            let cell = slabs
                .get_mut(k.view as usize)
                .and_then(|v| v.get_mut(k.group as usize))
                .and_then(|g| g.get_mut(k.slot as usize));
            match cell {
                Some(c) => *c = Some(e),
                // slots past the slab length are stale leftovers: the slab
                // never shrinks, so they cannot occur; refuse rather than guess
                None => {
                    return Err(EngineError::BadCheckpoint(format!(
                        "slot {:?} is outside the checkpoint's slabs",
                        k
                    )))
                }
            }
        }
        let mut views = Vec::with_capacity(slabs.len());
        for (v, (m, groups)) in meta.view_meta.into_iter().zip(slabs).enumerate() {
            let mut full = Vec::with_capacity(groups.len());
            for (g, slab) in groups.into_iter().enumerate() {
                let mut entries = Vec::with_capacity(slab.len());
                for (i, e) in slab.into_iter().enumerate() {
                    entries.push(e.ok_or(EngineError::MissingSlot {
                        view: v as u32,
                        group: g as u32,
                        slot: i as u32,
                    })?);
                }
                full.push(entries);
            }
            views.push(ViewState::from_parts(m, full));
        }
        let slot = self
            .shards
            .get_mut(shard as usize)
            .ok_or(EngineError::NoShard(shard))?;
        *slot = Shard {
            max_time: meta.max_time,
            next_pos: meta.next_pos,
            late: meta.late,
            views,
        };
        Ok(())
    }

    /// The current watermark of a shard (`i64::MIN` before any event).
    pub fn watermark(&self, shard: u32) -> i64 {
        self.shards[shard as usize].watermark(self.table().lateness_ms)
    }

    pub fn stats(&mut self) -> Vec<ShardStats> {
        let lateness = self.table().lateness_ms;
        self.shards
            .iter_mut()
            .enumerate()
            .map(|(i, s)| ShardStats {
                shard: i as u32,
                events: s.next_pos,
                late: s.late,
                watermark: s.watermark(lateness),
                views: s
                    .views
                    .iter_mut()
                    .map(|v| v.refresh_stats().clone())
                    .collect(),
            })
            .collect()
    }
}
