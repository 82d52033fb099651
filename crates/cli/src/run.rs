//! `lockstep run`: the offline path. Reads an event file in file order as the
//! log, splits it into the table's shards exactly as ingest does, runs the view
//! and writes its rows. Bad records go to `<output>.deadletter.jsonl`, late
//! events to `<output>.late.jsonl`; neither stops the run unless `--strict`.
//! A table with `event_id` skips repeated ids as a node does.

use anyhow::{bail, Context};
use lockstep_core::dedup::{event_id_of, EventIds};
use lockstep_core::{Emitted, Engine, EventError, Outcome, Row};
use lockstep_io::{
    create_row_writer, dead_letter_path, late_path, open_events_projected, render_json, BadRecord,
    DeadLetterWriter, EventReader, Location, RowSink,
};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RunArgs {
    pub sql: PathBuf,
    pub view: String,
    pub input: PathBuf,
    pub output: PathBuf,
    /// Stop at the first malformed event instead of dead-lettering it.
    pub strict: bool,
    /// How long (in event time) an event id is remembered, for tables
    /// with `event_id`: the daemon's `idempotency_ttl`.
    pub idempotency_ttl_ms: i64,
    /// The time the file's events count as having arrived, for the table's
    /// `max_event_time_ahead` (`--now`; default: when the run starts).
    pub now_ms: i64,
}

/// The wall clock, in epoch milliseconds (`--now`'s default).
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The daemon's default `idempotency_ttl`: 24 hours.
pub const DEFAULT_IDEMPOTENCY_TTL_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub events_read: u64,
    pub accepted: u64,
    pub late: u64,
    /// Events skipped as repeats of an event id (tables with `event_id`).
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub rows: u64,
    pub elapsed: Duration,
    pub dead_letter_path: Option<PathBuf>,
    pub late_path: Option<PathBuf>,
}

impl RunSummary {
    pub fn events_per_sec(&self) -> f64 {
        self.events_read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn print(&self, output: &Path) {
        println!(
            "read {} events in {:.2}s ({:.0} events/s): {} accepted, {} late, {} dead-lettered, {} repeated event ids skipped; wrote {} rows to {}",
            self.events_read,
            self.elapsed.as_secs_f64(),
            self.events_per_sec(),
            self.accepted,
            self.late,
            self.dead_lettered,
            self.duplicates,
            self.rows,
            output.display()
        );
        if let Some(p) = &self.dead_letter_path {
            println!("dead-letter records: {}", p.display());
        }
        if let Some(p) = &self.late_path {
            println!("late events: {}", p.display());
        }
    }
}

/// Records per message between the threads: large enough to make channel
/// costs vanish, small enough to keep memory constant.
const BATCH: usize = 4096;

/// What the reader thread hands the engine: a routed, valid event, or why not.
enum Record {
    Event {
        location: Location,
        shard: u32,
        event: Row,
    },
    Malformed(BadRecord),
    Invalid {
        location: Location,
        event: Row,
        reason: EventError,
    },
}

pub fn run(args: &RunArgs) -> anyhow::Result<RunSummary> {
    let catalog = Arc::new(crate::pipeline::load(&args.sql)?);
    let (_, view) = catalog.view(&args.view).with_context(|| {
        let names: Vec<&str> = catalog.views.iter().map(|v| v.name.as_str()).collect();
        format!(
            "no view `{}` in {}; it defines: {}",
            args.view,
            args.sql.display(),
            names.join(", ")
        )
    })?;
    let out_schema = view.output.clone();
    let needed = view.used_columns(&catalog.tables[view.table]);
    let mut engine = Engine::new(catalog.clone(), &[args.view.as_str()])?;
    let schema = engine.table().schema.clone();
    let reader = open_events_projected(&args.input, &schema, Some(&needed))
        .with_context(|| format!("cannot read events from {}", args.input.display()))?;
    let writer = create_row_writer(&args.output, &out_schema)
        .with_context(|| format!("cannot write rows to {}", args.output.display()))?;
    let start = Instant::now();
    // Three stages on their own threads: decoding, the engine (one thread, in
    // log order, exactly as a shard actor runs it), encoding. Bounded channels
    // keep memory constant in the input size.
    let (in_tx, in_rx) = sync_channel::<Vec<Record>>(4);
    let (out_tx, out_rx) = sync_channel::<Vec<Row>>(4);
    let mut s = std::thread::scope(|scope| -> anyhow::Result<RunSummary> {
        let input = &args.input;
        let table = engine.table().clone();
        let now_ms = args.now_ms;
        let read = scope.spawn(move || read_stage(reader, &table, now_ms, in_tx, input));
        let write = scope.spawn(move || write_stage(writer, out_rx));
        let engine_result = engine_stage(args, &mut engine, &schema, in_rx, out_tx);
        let read_result = read.join().expect("reader thread panicked");
        let rows = write.join().expect("writer thread panicked");
        let mut s = engine_result?;
        read_result?;
        s.rows = rows?;
        Ok(s)
    })?;
    s.elapsed = start.elapsed();
    Ok(s)
}

/// Decodes, validates and routes events (pure per-event work, done here so
/// the engine thread only runs the operators).
fn read_stage(
    mut reader: EventReader,
    table: &lockstep_core::Table,
    now_ms: i64,
    tx: SyncSender<Vec<Record>>,
    input: &Path,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(item) = reader.next() {
        let record = match item.with_context(|| format!("reading {}", input.display()))? {
            Err(bad) => Record::Malformed(bad),
            Ok(event) => match table
                .validate(&event)
                .and_then(|()| table.check_time(&event, now_ms))
            {
                Ok(()) => Record::Event {
                    location: reader.location(),
                    shard: table.shard_of(&event),
                    event,
                },
                Err(reason) => Record::Invalid {
                    location: reader.location(),
                    event,
                    reason,
                },
            },
        };
        batch.push(record);
        if batch.len() == BATCH
            && tx
                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            return Ok(()); // the engine stopped (--strict); its error is reported
        }
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok(())
}

fn write_stage(mut writer: Box<dyn RowSink>, rx: Receiver<Vec<Row>>) -> anyhow::Result<u64> {
    for rows in rx {
        for row in &rows {
            writer.write(row)?;
        }
    }
    Ok(writer.finish()?)
}

fn engine_stage(
    args: &RunArgs,
    engine: &mut Engine,
    schema: &lockstep_core::Schema,
    rx: Receiver<Vec<Record>>,
    tx: SyncSender<Vec<Row>>,
) -> anyhow::Result<RunSummary> {
    let mut dead = DeadLetterWriter::new(dead_letter_path(&args.output));
    let mut late = DeadLetterWriter::new(late_path(&args.output));
    let mut s = RunSummary::default();
    let mut out: Vec<Emitted> = Vec::new();
    let mut rows: Vec<Row> = Vec::with_capacity(BATCH);
    let mut dedup = EventIdFilter::new(engine.table(), args.idempotency_ttl_ms);
    let strict = |bad: &BadRecord| -> anyhow::Result<()> {
        if args.strict {
            bail!(
                "{}: {} (--strict)",
                describe(&args.input, &bad.location),
                bad.reason
            );
        }
        Ok(())
    };
    for batch in rx {
        for record in batch {
            s.events_read += 1;
            let (location, shard, event) = match record {
                Record::Event {
                    location,
                    shard,
                    event,
                } => (location, shard, event),
                Record::Malformed(bad) => {
                    strict(&bad)?;
                    dead.write("malformed", &bad)?;
                    continue;
                }
                Record::Invalid {
                    location,
                    event,
                    reason,
                } => {
                    let bad = BadRecord {
                        location,
                        reason: reason.to_string(),
                        raw: render_json(&event, schema),
                    };
                    strict(&bad)?;
                    dead.write("schema", &bad)?;
                    continue;
                }
            };
            if dedup.is_duplicate(shard, &event) {
                s.duplicates += 1;
                continue;
            }
            match engine.push_to_shard(shard, &event, &mut out) {
                Outcome::Accepted { .. } => s.accepted += 1,
                Outcome::Late { shard, watermark } => {
                    s.late += 1;
                    let bad = BadRecord {
                        location,
                        reason: format!(
                            "too late: event_time {} is below shard {shard}'s watermark {}",
                            event_time_text(engine, &event),
                            lockstep_core::time::format_rfc3339_ms(watermark)
                        ),
                        raw: render_json(&event, schema),
                    };
                    late.write("late", &bad)?;
                }
            }
            rows.extend(out.drain(..).map(|e| e.row));
            if rows.len() >= BATCH {
                send_rows(&tx, &mut rows)?;
            }
        }
    }
    engine.finish(&mut out);
    rows.extend(out.drain(..).map(|e| e.row));
    send_rows(&tx, &mut rows)?;
    drop(tx);
    s.dead_lettered = dead.count();
    if dead.count() > 0 {
        s.dead_letter_path = Some(dead.path().to_path_buf());
    }
    dead.finish()?;
    if late.count() > 0 {
        s.late_path = Some(late.path().to_path_buf());
    }
    late.finish()?;
    Ok(s)
}

/// Event-id deduplication as a node does it, with event time as the
/// clock (a file has no other): an id is skipped if its shard applied it
/// within the last `ttl_ms` of event time.
struct EventIdFilter {
    column: Option<usize>,
    time: usize,
    ttl_ms: i64,
    clock_ms: i64,
    seen: Vec<EventIds>,
    since_prune: usize,
}

impl EventIdFilter {
    fn new(table: &lockstep_core::Table, ttl_ms: i64) -> EventIdFilter {
        EventIdFilter {
            column: table.event_id,
            time: table.time,
            ttl_ms,
            clock_ms: i64::MIN,
            seen: vec![EventIds::new(); table.shards as usize],
            since_prune: 0,
        }
    }

    fn is_duplicate(&mut self, shard: u32, event: &[lockstep_core::Value]) -> bool {
        let Some(col) = self.column else {
            return false;
        };
        if let lockstep_core::Value::Timestamp(t) = event[self.time] {
            self.clock_ms = self.clock_ms.max(t);
        }
        self.since_prune += 1;
        if self.since_prune >= 4096 {
            self.since_prune = 0;
            let horizon = self.clock_ms.saturating_sub(self.ttl_ms);
            for ids in &mut self.seen {
                ids.forget_before(horizon);
            }
        }
        match event_id_of(&event[col]) {
            Some(id) => !self.seen[shard as usize].first_time(id, self.clock_ms),
            None => false, // a NULL id is no id
        }
    }
}

fn send_rows(tx: &SyncSender<Vec<Row>>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    tx.send(std::mem::replace(rows, Vec::with_capacity(BATCH)))
        .map_err(|_| anyhow::anyhow!("the row writer stopped early"))
}

fn event_time_text(engine: &Engine, event: &[lockstep_core::Value]) -> String {
    event[engine.table().time].to_string()
}

fn describe(path: &Path, loc: &Location) -> String {
    match loc {
        Location::Line(n) => format!("{} line {n}", path.display()),
        Location::Row(n) => format!("{} row {n}", path.display()),
    }
}
