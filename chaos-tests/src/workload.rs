//! What a run sends: events (generated, seeded, or read from a file),
//! ingested in batches through random nodes with retries under the same
//! Idempotency-Key, some through `features?ingest=true` (their answers are
//! checked against their training rows), some producer-supplied event ids
//! sent a second time; and a stream of serving requests. Every request and
//! answer goes to `history.jsonl`.

use lockstep_api::Client;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// `ms` since the Unix epoch as RFC 3339 with milliseconds (UTC).
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // days since 1970-01-01 to a civil date (proleptic Gregorian), by
    // 400-year eras of 146097 days starting on 0000-03-01
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Where events come from.
pub enum Source {
    /// Seeded: `users` users, event times strictly increasing from
    /// 2024-03-01 (so each user's events are in time order with distinct
    /// times, where the dialect equals standard SQL).
    Generated {
        rng: Box<rand::rngs::StdRng>,
        users: u32,
        prefix: String,
        step_ms: i64,
        next_id: i64,
        t_ms: i64,
        left: u64,
    },
    /// JSON lines, one event each, sent in file order.
    File(std::io::Lines<std::io::BufReader<std::fs::File>>),
}

const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36",
];

/// 2024-03-01T00:00:00Z.
pub const GENERATED_FROM_MS: i64 = 1_709_251_200_000;

/// How generated events are named, so a run's events stay apart from
/// what a cluster already holds (`--target`): user ids start with
/// `prefix`, event ids follow `id_base`, times start at `from_ms`.
#[derive(Clone, Debug)]
pub struct Naming {
    pub prefix: String,
    pub id_base: i64,
    pub from_ms: i64,
    /// Each event is 1 to this many ms after the one before.
    pub step_ms: i64,
}

impl Default for Naming {
    fn default() -> Naming {
        Naming {
            prefix: String::new(),
            id_base: 0,
            from_ms: GENERATED_FROM_MS,
            step_ms: 400,
        }
    }
}

impl Source {
    pub fn generated(seed: u64, users: u32, n: u64, naming: &Naming) -> Source {
        Source::Generated {
            rng: Box::new(rand::rngs::StdRng::seed_from_u64(seed)),
            users,
            prefix: naming.prefix.clone(),
            step_ms: naming.step_ms.max(2),
            next_id: naming.id_base + 1,
            t_ms: naming.from_ms,
            left: n,
        }
    }

    pub fn file(path: &Path) -> anyhow::Result<Source> {
        let f = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Ok(Source::File(std::io::BufReader::new(f).lines()))
    }

    /// The next event, or `None` at the end.
    pub fn next_event(&mut self) -> anyhow::Result<Option<Value>> {
        match self {
            Source::Generated {
                rng,
                users,
                prefix,
                step_ms,
                next_id,
                t_ms,
                left,
            } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                *t_ms += rng.random_range(1..*step_ms);
                let id = *next_id;
                *next_id += 1;
                let user = rng.random_range(0..*users);
                let ev = json!({
                    "event_id": id,
                    "user_id": format!("{prefix}u{user:05}"),
                    "campaign_id": rng.random_range(1..=5),
                    "kind": if rng.random_bool(0.2) { "click" } else { "impression" },
                    "ip": format!("10.{}.{}.{}", user % 250, rng.random_range(0..250), rng.random_range(1..250)),
                    "user_agent": AGENTS[rng.random_range(0..AGENTS.len())],
                    "event_time": rfc3339(*t_ms),
                });
                Ok(Some(ev))
            }
            Source::File(lines) => {
                loop {
                    let Some(line) = lines.next() else {
                        return Ok(None);
                    };
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: Value = serde_json::from_str(&line)
                        .map_err(|e| anyhow::anyhow!("--events: a line is not JSON: {e}"))?;
                    // the closing events use negative ids; times are compared as
                    // the harness writes them
                    if v.get("event_id")
                        .and_then(Value::as_i64)
                        .is_none_or(|i| i < 0)
                    {
                        anyhow::bail!("--events: every event needs an event_id, an integer of 0 or more: {line}");
                    }
                    let time = v.get("event_time").and_then(Value::as_str);
                    if time.and_then(parse_rfc3339).is_none() {
                        anyhow::bail!("--events: every event needs an event_time in RFC 3339, UTC (2024-03-01T10:00:00.000Z): {line}");
                    }
                    return Ok(Some(v));
                }
            }
        }
    }
}

/// When something happened, for liveness and the report.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    /// Seconds since the run started.
    pub t: f64,
    pub what: MarkKind,
    pub ok: bool,
    pub ms: f64,
    /// Events acknowledged by this request.
    pub events: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    Ingest,
    Serve,
}

/// `history.jsonl` and the marks kept in memory.
pub struct History {
    out: Mutex<std::io::BufWriter<std::fs::File>>,
    pub start: Instant,
    pub marks: Mutex<Vec<Mark>>,
    /// Lines that could not be written (the run fails: the checker would
    /// miss what they held).
    pub write_errors: AtomicU64,
}

impl History {
    pub fn create(path: &Path, start: Instant) -> anyhow::Result<History> {
        Ok(History {
            out: Mutex::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
            start,
            marks: Mutex::new(Vec::new()),
            write_errors: AtomicU64::new(0),
        })
    }

    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn write(&self, mut line: Value) {
        if let Some(o) = line.as_object_mut() {
            o.entry("t").or_insert(json!(self.now()));
        }
        let mut out = self.out.lock().expect("history");
        if serde_json::to_writer(&mut *out, &line).is_err() || out.write_all(b"\n").is_err() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mark(&self, m: Mark) {
        self.marks.lock().expect("marks").push(m);
    }

    pub fn flush(&self) {
        if self.out.lock().expect("history").flush().is_err() {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The nodes clients may send to: `(id, host:port)`, kept current by the
/// fault thread (restarts move a node's port; drained nodes leave).
pub type Targets = Arc<RwLock<Vec<(String, String)>>>;

/// A client per request, on one agent with short timeouts (a paused node
/// must not hold the workload).
pub struct Clients {
    agent: ureq::Agent,
    token: String,
}

impl Clients {
    pub fn new(token: &str) -> Clients {
        Clients::with_timeout(token, Duration::from_secs(5))
    }

    pub fn with_timeout(token: &str, timeout: Duration) -> Clients {
        Clients {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .max_idle_connections_per_host(16)
                .build()
                .into(),
            token: token.to_string(),
        }
    }

    pub fn at(&self, addr: &str) -> Client {
        Client::with_agent(self.agent.clone(), addr, &self.token)
    }
}

/// A random target, other than `avoid` when there is another.
fn pick(
    targets: &Targets,
    rng: &mut rand::rngs::StdRng,
    avoid: Option<&str>,
) -> Option<(String, String)> {
    let t = targets.read().expect("targets");
    let others: Vec<&(String, String)> = t
        .iter()
        .filter(|(id, _)| Some(id.as_str()) != avoid)
        .collect();
    if others.is_empty() {
        return t.first().cloned();
    }
    Some(others[rng.random_range(0..others.len())].clone())
}

/// What the ingest thread did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IngestSummary {
    pub requests: u64,
    pub attempts: u64,
    pub events_acknowledged: u64,
    pub id_duplicates_sent: u64,
    pub features_ingests: u64,
    pub features_answers: u64,
    /// Events the nodes refused in acknowledged requests (the generated
    /// ones are all valid: any is a failure).
    pub refused_events: u64,
    pub last_event_time_ms: i64,
    /// A request that was never acknowledged within the bound (the run
    /// fails: the checker cannot know whether its events are in).
    pub stuck: Option<String>,
}

pub struct IngestConfig {
    pub view: String,
    pub table: String,
    pub batch: usize,
    /// Events a second (0: as fast as answers come).
    pub rate: u64,
    pub key_prefix: String,
    /// A request not acknowledged for this long stops the ingest.
    pub give_up: Duration,
}

/// Sends one request until a node acknowledges it, retrying on another
/// node under the same Idempotency-Key. `Ok(reply)` with the final
/// status: 2xx, or (with `in_already`) 409, a features ingest whose event
/// is in already.
#[allow(clippy::too_many_arguments)]
pub fn send(
    clients: &Clients,
    targets: &Targets,
    history: &History,
    rng: &mut rand::rngs::StdRng,
    path: &str,
    body: &[u8],
    key: &str,
    kind: &str,
    in_already: bool,
    give_up: Duration,
    attempts: &mut u64,
) -> Result<(String, lockstep_api::Reply, f64), String> {
    let start = Instant::now();
    let mut failed: Option<String> = None;
    loop {
        if start.elapsed() > give_up {
            return Err(format!(
                "request {key} not acknowledged by any node within {give_up:?}"
            ));
        }
        let Some((id, addr)) = pick(targets, rng, failed.as_deref()) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        *attempts += 1;
        let t0 = Instant::now();
        let r = clients
            .at(&addr)
            .request("POST", path, Some(body), &[("Idempotency-Key", key)]);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(reply)
                if (200..300).contains(&reply.status) || (in_already && reply.status == 409) =>
            {
                return Ok((id, reply, ms));
            }
            Ok(reply) if reply.status == 503 || reply.status >= 500 => {
                history.write(json!({"kind": kind, "key": key, "node": id,
                    "status": reply.status, "ms": ms,
                    "error": String::from_utf8_lossy(&reply.body)}));
                history.mark(Mark {
                    t: history.now(),
                    what: MarkKind::Ingest,
                    ok: false,
                    ms,
                    events: 0,
                });
                failed = Some(id);
            }
            Ok(reply) => {
                return Err(format!(
                    "request {key} refused by {id}: HTTP {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                ));
            }
            Err(e) => {
                history.write(json!({"kind": kind, "key": key, "node": id,
                    "status": 0, "ms": ms, "error": e.to_string()}));
                history.mark(Mark {
                    t: history.now(),
                    what: MarkKind::Ingest,
                    ok: false,
                    ms,
                    events: 0,
                });
                failed = Some(id);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ingests `source` until it ends or `stop` is set: batches of
/// `cfg.batch`; every 10th batch also resends one event of the previous
/// batch (its event id was applied: it must not be again); every 7th
/// sends its first event through `features?ingest=true`.
#[allow(clippy::too_many_arguments)]
pub fn ingest(
    cfg: &IngestConfig,
    source: &mut Source,
    seed: u64,
    clients: &Clients,
    targets: &Targets,
    history: &History,
    stop: &AtomicBool,
    acknowledged: &AtomicU64,
) -> IngestSummary {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x001D_6E57_u64);
    let mut sum = IngestSummary::default();
    let mut previous: Vec<Value> = Vec::new();
    let started = Instant::now();
    let mut sent_events = 0u64;
    let events_path = format!("/v1/tables/{}/events", cfg.table);
    let features_path = format!("/v1/views/{}/features?ingest=true", cfg.view);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::with_capacity(cfg.batch + 1);
        while batch.len() < cfg.batch {
            match source.next_event() {
                Ok(Some(ev)) => batch.push(ev),
                Ok(None) => break,
                Err(e) => {
                    sum.stuck = Some(e.to_string());
                    return sum;
                }
            }
        }
        if batch.is_empty() {
            break;
        }
        n += 1;
        if let Some(t) = batch
            .last()
            .and_then(|e| e["event_time"].as_str())
            .and_then(parse_rfc3339)
        {
            sum.last_event_time_ms = sum.last_event_time_ms.max(t);
        }
        // through features?ingest=true: its answer is its training row's
        if n.is_multiple_of(7) {
            let ev = batch.remove(0);
            let key = format!("{}-f{n}", cfg.key_prefix);
            let body = serde_json::to_vec(&ev).unwrap_or_default();
            match send(
                clients,
                targets,
                history,
                &mut rng,
                &features_path,
                &body,
                &key,
                "features_ingest",
                true,
                cfg.give_up,
                &mut sum.attempts,
            ) {
                Ok((node, reply, ms)) => {
                    sum.requests += 1;
                    sum.features_ingests += 1;
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    sum.events_acknowledged += 1;
                    let answer = reply.json();
                    if reply.status == 200 {
                        sum.features_answers += 1;
                    }
                    history.write(json!({"kind": "features_ingest", "view": cfg.view, "key": key, "node": node,
                        "status": reply.status, "ms": ms, "event": ev,
                        "features": answer.get("features").cloned().unwrap_or(Value::Null),
                        "training_row": answer.get("training_row").cloned().unwrap_or(Value::Null)}));
                    history.mark(Mark {
                        t: history.now(),
                        what: MarkKind::Ingest,
                        ok: true,
                        ms,
                        events: 1,
                    });
                }
                Err(e) => {
                    sum.stuck = Some(e);
                    return sum;
                }
            }
            if batch.is_empty() {
                continue;
            }
        }
        // a producer's retry under its own event id, not the request's key
        let mut dups = Vec::new();
        if n.is_multiple_of(10) && !previous.is_empty() {
            let tail = previous.len().saturating_sub(20);
            let ev = previous[rng.random_range(tail..previous.len())].clone();
            dups.push(ev["event_id"].clone());
            batch.push(ev);
            sum.id_duplicates_sent += 1;
        }
        let key = format!("{}-b{n}", cfg.key_prefix);
        let body: Vec<u8> = batch
            .iter()
            .flat_map(|e| {
                let mut l = serde_json::to_vec(e).unwrap_or_default();
                l.push(b'\n');
                l
            })
            .collect();
        match send(
            clients,
            targets,
            history,
            &mut rng,
            &events_path,
            &body,
            &key,
            "ingest",
            false,
            cfg.give_up,
            &mut sum.attempts,
        ) {
            Ok((node, reply, ms)) => {
                sum.requests += 1;
                let r = reply.json();
                // every event of the body accepted (an id sent again is
                // accepted too: the shard skips it)
                let accepted = r["accepted"].as_u64().unwrap_or(0);
                let rejected = r["rejected"].as_u64().unwrap_or(0);
                if rejected > 0 || accepted != batch.len() as u64 {
                    sum.refused_events += rejected.max(1);
                }
                let fresh = batch.len() - dups.len();
                sum.events_acknowledged += fresh as u64;
                acknowledged.fetch_add(fresh as u64, Ordering::Relaxed);
                history.write(json!({"kind": "ingest", "key": key, "node": node,
                    "status": reply.status, "ms": ms, "replayed": reply.replayed,
                    "accepted": r["accepted"], "rejected": r["rejected"],
                    "errors": r["errors"], "id_duplicates": dups, "events": batch}));
                history.mark(Mark {
                    t: history.now(),
                    what: MarkKind::Ingest,
                    ok: true,
                    ms,
                    events: fresh as u32,
                });
            }
            Err(e) => {
                sum.stuck = Some(e);
                return sum;
            }
        }
        sent_events += batch.len() as u64;
        previous = batch;
        if cfg.rate > 0 {
            let due = Duration::from_secs_f64(sent_events as f64 / cfg.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    sum
}

/// Parses the RFC 3339 UTC times this harness writes (`…T…Z`, with or
/// without milliseconds) back to epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b.get(19) == Some(&b'.') {
        num(20..23)?
    } else {
        0
    };
    // civil date to days since 1970-01-01 (the inverse of `rfc3339`)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400_000 + hh * 3_600_000 + mm * 60_000 + ss * 1000 + ms)
}

/// Asks random nodes for random users' features, every `every`, until
/// `stop`: availability and latency over the run (the answers are not
/// checked: they depend on which events each shard had applied).
#[allow(clippy::too_many_arguments)]
pub fn serve(
    view: &str,
    (prefix, users): (&str, u32),
    every: Duration,
    seed: u64,
    clients: &Clients,
    targets: &Targets,
    history: &History,
    stop: &AtomicBool,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5E4E_u64);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        let Some((id, addr)) = pick(targets, &mut rng, None) else {
            continue;
        };
        let user = format!("{prefix}u{:05}", rng.random_range(0..users.max(1)));
        let t0 = Instant::now();
        let r =
            clients
                .at(&addr)
                .request("GET", &format!("/v1/views/{view}/keys/{user}"), None, &[]);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let (status, error) = match &r {
            Ok(r) if r.status == 200 => (200, Value::Null),
            Ok(r) => (r.status, json!(String::from_utf8_lossy(&r.body))),
            Err(e) => (0, json!(e.to_string())),
        };
        history.write(json!({"kind": "serve", "node": id, "user": user,
            "status": status, "ms": ms, "error": error}));
        history.mark(Mark {
            t: history.now(),
            what: MarkKind::Serve,
            ok: status == 200,
            ms,
            events: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_and_parse_back() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(GENERATED_FROM_MS), "2024-03-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        for ms in [
            0,
            1,
            951_782_400_123,
            GENERATED_FROM_MS + 86_399_999,
            4_102_444_800_000,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            parse_rfc3339("2024-03-01T00:00:01Z"),
            Some(GENERATED_FROM_MS + 1000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn generated_events_are_seeded_and_strictly_later_each() {
        let take = |seed| {
            let mut s = Source::generated(seed, 50, 500, &Naming::default());
            let mut out = Vec::new();
            while let Some(e) = s.next_event().unwrap() {
                out.push(e);
            }
            out
        };
        let a = take(3);
        assert_eq!(a.len(), 500);
        assert_eq!(a, take(3));
        assert_ne!(a, take(4));
        let times: Vec<i64> = a
            .iter()
            .map(|e| parse_rfc3339(e["event_time"].as_str().unwrap()).unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        let ids: Vec<i64> = a.iter().map(|e| e["event_id"].as_i64().unwrap()).collect();
        assert_eq!(ids, (1..=500).collect::<Vec<_>>());
    }
}
