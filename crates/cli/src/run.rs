//! `lockstep run`: the offline path. Reads an event file in file order as the
//! log, splits it into the table's shards exactly as ingest does, runs the view
//! and writes its rows. Bad records go to `<output>.deadletter.jsonl`, late
//! events to `<output>.late.jsonl`; neither stops the run unless `--strict`.
//! A table with `event_id` skips repeated ids as a node does.

use anyhow::{bail, Context};
use lockstep_core::dedup::{event_id_of, EventIds};
use lockstep_core::{Emitted, Engine, Outcome, Row, Value};
use lockstep_io::{
    create_row_writer, dead_letter_path, late_path, open_events_projected, render_json, BadRecord,
    DeadLetterWriter, EventReader, Location, RowSink,
};
use std::path::{Path, PathBuf};
mod route;

use route::Router;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Shard workers (`--threads`); 0: one per core. The rows are the same,
    /// in the same order, for every value.
    pub threads: usize,
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

/// A routed, valid, first-seen event for a shard worker, with its place in
/// the file (`seq`: the record's index, which orders the output).
struct Job {
    seq: u64,
    location: Location,
    shard: u32,
}

/// Events for a shard worker: one [`Job`] each, their values row after row
/// in one buffer (no allocation per event).
struct Jobs {
    width: usize,
    values: Vec<Value>,
    jobs: Vec<Job>,
}

impl Jobs {
    fn new(width: usize, capacity: usize) -> Jobs {
        Jobs {
            width,
            values: Vec::with_capacity(width * capacity),
            jobs: Vec::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The values of event `i`.
    fn event(&self, i: usize) -> &[Value] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    /// Moves event `i` of `from` (its values left NULL) to the end.
    fn take_from(&mut self, from: &mut Jobs, i: usize, job: Job) {
        let w = from.width;
        self.values.extend(
            from.values[i * w..(i + 1) * w]
                .iter_mut()
                .map(|v| std::mem::replace(v, Value::Null)),
        );
        self.jobs.push(job);
    }
}

/// What a shard worker returns for one batch of the file.
struct Processed {
    /// Rows made final by the batch's events, each with the `seq` of the
    /// event that released it, in the order the worker emitted them.
    rows: Vec<(u64, Row)>,
    /// The batch's late events, with their `seq`.
    late: Vec<(u64, BadRecord)>,
}

enum WorkerMsg {
    Batch(Processed),
    /// End of input: the held rows of the worker's shards, with their
    /// shard, in shard order.
    Finish(Vec<(u32, Row)>),
    /// The input stopped the run before its end: the held rows stay held.
    Aborted,
}

/// The number of shard workers `--threads` asks for: 0 means the machine's
/// cores; never more than the table has shards.
pub fn worker_count(threads: usize, shards: u32) -> usize {
    let want = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    want.clamp(1, shards.max(1) as usize)
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
    let table = catalog.tables[view.table].clone();
    let workers = worker_count(args.threads, table.shards);
    let engines = (0..workers)
        .map(|_| Engine::new(catalog.clone(), &[args.view.as_str()]))
        .collect::<Result<Vec<_>, _>>()?;
    let reader = open_events_projected(&args.input, &table.schema, Some(&needed))
        .with_context(|| format!("cannot read events from {}", args.input.display()))?;
    let writer = create_row_writer(&args.output, &out_schema)
        .with_context(|| format!("cannot write rows to {}", args.output.display()))?;
    let start = Instant::now();
    // Decoding on one thread, the shards on `workers` threads (each shard
    // on one worker, in log order, exactly as a shard actor runs it; see
    // `Router`), merging and encoding on this one. Every worker gets
    // one message per batch of the file, so the merge can put rows back in
    // file order: the output is the same for any number of workers.
    // Bounded channels keep memory constant in the input size.
    let (job_txs, job_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| sync_channel::<Jobs>(4)).unzip();
    let (out_txs, out_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| sync_channel::<WorkerMsg>(4)).unzip();
    // Set when the input stops the run (--strict, unreadable): the workers
    // then end without finishing their shards, so no held row is released
    // as if the input had ended there.
    let abort = AtomicBool::new(false);
    let mut s = std::thread::scope(|scope| -> anyhow::Result<RunSummary> {
        let read = std::thread::Builder::new()
            .name("run-read".into())
            .spawn_scoped(scope, || read_stage(args, reader, &table, job_txs, &abort))?;
        let mut shards = Vec::with_capacity(workers);
        for (i, ((engine, rx), tx)) in engines.into_iter().zip(job_rxs).zip(out_txs).enumerate() {
            let abort = &abort;
            shards.push(
                std::thread::Builder::new()
                    .name(format!("run-shards-{i}"))
                    .spawn_scoped(scope, move || shard_worker(engine, rx, tx, abort))?,
            );
        }
        let mut late = DeadLetterWriter::new(late_path(&args.output));
        let written = write_stage(writer, &mut late, out_rxs);
        let read = read
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the reader thread panicked")));
        let mut accepted = 0;
        let mut worker_panicked = false;
        for w in shards {
            match w.join() {
                Ok(n) => accepted += n,
                Err(_) => worker_panicked = true,
            }
        }
        let late_count = late.count();
        let late_at = late.path().to_path_buf();
        let late_finished = late.finish();
        // the first cause wins: the input, then a worker, then the output
        let mut s = read?;
        if worker_panicked {
            bail!("a shard worker panicked (a bug in lockstep: please report it, with the input if you can)");
        }
        s.rows = written?;
        s.accepted = accepted;
        late_finished?;
        s.late = late_count;
        if late_count > 0 {
            s.late_path = Some(late_at);
        }
        Ok(s)
    })?;
    s.elapsed = start.elapsed();
    Ok(s)
}

/// Decodes, validates, deduplicates and routes events (everything that
/// comes before the shard's state), and writes the dead-letter file.
fn read_stage(
    args: &RunArgs,
    reader: EventReader,
    table: &lockstep_core::Table,
    txs: Vec<SyncSender<Jobs>>,
    abort: &AtomicBool,
) -> anyhow::Result<RunSummary> {
    // a panic here must stop the workers as an error does
    let guard = AbortUnlessDone { abort, done: false };
    let mut dead = DeadLetterWriter::new(dead_letter_path(&args.output));
    let mut s = RunSummary::default();
    let mut router = Router::new(&txs, table.shards as usize);
    let mut batch = Jobs::new(table.schema.len(), BATCH);
    let read = read_events(
        args,
        reader,
        table,
        &mut router,
        &mut batch,
        &mut dead,
        &mut s,
    );
    // What was read before an error still goes to the shards (the rows it
    // makes final are written); the workers then stop without finishing.
    let sent = router.push(batch) && router.finish();
    if read.is_err() || !sent {
        abort.store(true, Ordering::SeqCst);
    }
    drop(router);
    // the workers see the end of the input only now, after the flag
    drop(txs);
    let mut guard = guard;
    guard.done = true;
    s.dead_lettered = dead.count();
    if dead.count() > 0 {
        s.dead_letter_path = Some(dead.path().to_path_buf());
    }
    let finished = dead.finish();
    read?;
    finished?;
    Ok(s)
}

/// Sets `abort` when dropped before the input was read to its end (a
/// panic in the reader).
struct AbortUnlessDone<'a> {
    abort: &'a AtomicBool,
    done: bool,
}

impl Drop for AbortUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.abort.store(true, Ordering::SeqCst);
        }
    }
}

/// Reads the input into `batch`, handing every full batch to `router`;
/// the last, partial batch is left in `batch`.
#[allow(clippy::too_many_arguments)]
fn read_events(
    args: &RunArgs,
    mut reader: EventReader,
    table: &lockstep_core::Table,
    router: &mut Router<'_>,
    batch: &mut Jobs,
    dead: &mut DeadLetterWriter,
    s: &mut RunSummary,
) -> anyhow::Result<()> {
    let input = &args.input;
    let mut dedup = EventIdFilter::new(table, args.idempotency_ttl_ms);
    let strict = |bad: &BadRecord| -> anyhow::Result<()> {
        if args.strict {
            bail!(
                "{}: {} (--strict)",
                describe(input, &bad.location),
                bad.reason
            );
        }
        Ok(())
    };
    let mut in_batch = 0;
    loop {
        // the event's values go straight into the batch; a record that is
        // not kept is cut off again
        let start = batch.values.len();
        let Some(item) = reader.next_into(&mut batch.values) else {
            break;
        };
        let seq = s.events_read;
        s.events_read += 1;
        match item.with_context(|| format!("reading {}", input.display()))? {
            Err(bad) => {
                strict(&bad)?;
                dead.write("malformed", &bad)?;
            }
            Ok(()) => {
                let event = &batch.values[start..];
                match table
                    .validate(event)
                    .and_then(|()| table.check_time(event, args.now_ms))
                {
                    Ok(()) => {
                        let shard = table.shard_of(event);
                        if dedup.is_duplicate(shard, event) {
                            s.duplicates += 1;
                            batch.values.truncate(start);
                        } else {
                            batch.jobs.push(Job {
                                seq,
                                location: reader.location(),
                                shard,
                            });
                        }
                    }
                    Err(reason) => {
                        let bad = BadRecord {
                            location: reader.location(),
                            reason: reason.to_string(),
                            raw: render_json(event, &table.schema),
                        };
                        batch.values.truncate(start);
                        strict(&bad)?;
                        dead.write("schema", &bad)?;
                    }
                }
            }
        }
        in_batch += 1;
        if in_batch == BATCH {
            in_batch = 0;
            let full = std::mem::replace(batch, Jobs::new(batch.width, BATCH));
            if !router.push(full) {
                return Ok(()); // the writer stopped; its error is reported
            }
        }
    }
    Ok(())
}

/// Runs the shards of one worker: each job through its shard, rows tagged
/// with the job's place in the file. Returns the number of accepted events.
fn shard_worker(
    mut engine: Engine,
    rx: Receiver<Jobs>,
    tx: SyncSender<WorkerMsg>,
    abort: &AtomicBool,
) -> u64 {
    let schema = engine.table().schema.clone();
    let mut out: Vec<Emitted> = Vec::new();
    let mut accepted = 0;
    for jobs in rx {
        let mut p = Processed {
            rows: Vec::with_capacity(jobs.len()),
            late: Vec::new(),
        };
        let events: Vec<&[Value]> = (0..jobs.len()).map(|i| jobs.event(i)).collect();
        let prepared = engine.prepare(&events);
        drop(events);
        for (i, job) in jobs.jobs.iter().enumerate() {
            let event = jobs.event(i);
            match engine.push_prepared(job.shard, event, &prepared, i, &mut out) {
                Outcome::Accepted { .. } => accepted += 1,
                Outcome::Late { shard, watermark } => {
                    let bad = BadRecord {
                        location: job.location,
                        reason: format!(
                            "too late: event_time {} is below shard {shard}'s watermark {}",
                            event_time_text(&engine, event),
                            lockstep_core::time::format_rfc3339_ms(watermark)
                        ),
                        raw: render_json(event, &schema),
                    };
                    p.late.push((job.seq, bad));
                }
            }
            p.rows.extend(out.drain(..).map(|e| (job.seq, e.row)));
        }
        if tx.send(WorkerMsg::Batch(p)).is_err() {
            return accepted; // the writer stopped; its error is reported
        }
    }
    if abort.load(Ordering::SeqCst) {
        // the input stopped the run: its end is not the log's
        let _ = tx.send(WorkerMsg::Aborted);
        return accepted;
    }
    engine.finish(&mut out);
    let _ = tx.send(WorkerMsg::Finish(
        out.drain(..).map(|e| (e.shard, e.row)).collect(),
    ));
    accepted
}

/// Merges the workers' rows back into file order and writes them; late
/// events go to `late` in file order. Returns the rows written.
fn write_stage(
    mut writer: Box<dyn RowSink>,
    late: &mut DeadLetterWriter,
    rxs: Vec<Receiver<WorkerMsg>>,
) -> anyhow::Result<u64> {
    loop {
        let mut batches = Vec::with_capacity(rxs.len());
        let mut finishes = Vec::with_capacity(rxs.len());
        let mut aborted = 0;
        for rx in &rxs {
            match rx.recv() {
                Ok(WorkerMsg::Batch(p)) => batches.push(p),
                Ok(WorkerMsg::Finish(rows)) => finishes.push(rows),
                Ok(WorkerMsg::Aborted) => aborted += 1,
                Err(_) => bail!("a shard worker stopped before the end of its input"),
            }
        }
        if aborted > 0 || !finishes.is_empty() {
            if !batches.is_empty() || (aborted > 0 && !finishes.is_empty()) {
                bail!("shard workers disagree on where the input ends");
            }
            for (_, row) in merge_by_key(finishes) {
                writer.write(&row)?;
            }
            // a stopped run keeps the rows that were final: a readable
            // prefix of the whole run's output (the run reports the error)
            return Ok(writer.finish()?);
        }
        let mut rows = Vec::with_capacity(batches.len());
        let mut lates = Vec::with_capacity(batches.len());
        for p in batches {
            rows.push(p.rows);
            lates.push(p.late);
        }
        for (_, bad) in merge_by_key(lates) {
            late.write("late", &bad)?;
        }
        for (_, row) in merge_by_key(rows) {
            writer.write(&row)?;
        }
    }
}

/// Merges lists each sorted by key into one sorted list; equal keys keep
/// their list's order (keys never repeat across lists here: a `seq` or a
/// shard belongs to one worker).
fn merge_by_key<K: Ord + Copy, T>(lists: Vec<Vec<(K, T)>>) -> Vec<(K, T)> {
    let total = lists.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut its: Vec<_> = lists
        .into_iter()
        .map(|l| l.into_iter().peekable())
        .collect();
    if its.len() == 1 {
        out.extend(its.pop().expect("one list"));
        return out;
    }
    loop {
        let next = its
            .iter_mut()
            .enumerate()
            .filter_map(|(i, it)| it.peek().map(|(k, _)| (*k, i)))
            .min();
        match next {
            Some((_, i)) => out.push(its[i].next().expect("peeked")),
            None => return out,
        }
    }
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

fn event_time_text(engine: &Engine, event: &[lockstep_core::Value]) -> String {
    event[engine.table().time].to_string()
}

fn describe(path: &Path, loc: &Location) -> String {
    match loc {
        Location::Line(n) => format!("{} line {n}", path.display()),
        Location::Row(n) => format!("{} row {n}", path.display()),
    }
}
