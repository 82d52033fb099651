//! `POST /v1/tables/{table}/events` and the dead-letter listing.
#![allow(clippy::result_large_err)]

use super::mode::Events;
use super::reply::*;
use super::App;
use crate::clock::now_ms;
use crate::writer::{DeadLetter, EventErrorReport, IngestReply, WriteError, WriteReq};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use lockstep_core::value::Row;
use lockstep_io::JsonEventParser;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.to_string())),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 256 visible ASCII characters",
            )),
        },
    }
}

/// One parsed record of an ingest body: its index, the event or why not,
/// and its raw text (for the dead-letter store).
/// (The reason a record was refused is text: it is stored with the dead
/// letter and shown to the client as it is.)
pub(crate) type Parsed<'a> = (usize, Result<Row, String>, &'a str);

/// Why a whole ingest body was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("malformed JSON array: {0}")]
    MalformedArray(serde_json::Error),
    #[error("more than {limit} events in one request (max_events_per_request); split it")]
    TooManyEvents { limit: usize },
    #[error("event {index} is {bytes} bytes; the largest accepted is {limit} (max_event_bytes)")]
    EventTooLarge {
        index: usize,
        bytes: usize,
        limit: usize,
    },
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            BodyError::MalformedArray(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// A JSON array's first `.0` items, kept as raw text, and how many it has
/// (the rest are parsed but not kept: memory stays bounded by the limit).
struct FirstItems(usize);

impl<'de> serde::de::DeserializeSeed<'de> for FirstItems {
    type Value = (Vec<&'de RawValue>, usize);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FirstItems {
    type Value = (Vec<&'de RawValue>, usize);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let mut total = 0;
        while total < self.0 {
            match seq.next_element::<&'de RawValue>()? {
                Some(item) => items.push(item),
                None => return Ok((items, total)),
            }
            total += 1;
        }
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            total += 1;
        }
        Ok((items, total))
    }
}

/// Most rejected events a reply lists (the rest are counted in
/// `errors_omitted`; all are in the dead-letter store).
pub(crate) const MAX_REPORTED_ERRORS: usize = 100;

/// Splits a body into its events (JSON lines, or one JSON array), within
/// the node's limits, checked before anything is parsed, and parses them.
pub(crate) fn parse_body<'a>(
    parser: &JsonEventParser,
    text: &'a str,
    limits: &crate::config::Limits,
) -> Result<Vec<Parsed<'a>>, BodyError> {
    let items: Vec<&'a str> = if text.trim_start().starts_with('[') {
        let mut de = serde_json::Deserializer::from_str(text);
        let (items, total) = serde::de::DeserializeSeed::deserialize(
            FirstItems(limits.max_events_per_request),
            &mut de,
        )
        .and_then(|got| de.end().map(|()| got))
        .map_err(BodyError::MalformedArray)?;
        if total > limits.max_events_per_request {
            return Err(BodyError::TooManyEvents {
                limit: limits.max_events_per_request,
            });
        }
        items.into_iter().map(RawValue::get).collect()
    } else {
        let mut items = Vec::new();
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            if items.len() == limits.max_events_per_request {
                return Err(BodyError::TooManyEvents {
                    limit: limits.max_events_per_request,
                });
            }
            items.push(l);
        }
        items
    };
    if items.len() > limits.max_events_per_request {
        return Err(BodyError::TooManyEvents {
            limit: limits.max_events_per_request,
        });
    }
    if let Some((index, item)) = items
        .iter()
        .enumerate()
        .find(|(_, i)| i.len() > limits.max_event_bytes)
    {
        return Err(BodyError::EventTooLarge {
            index,
            bytes: item.len(),
            limit: limits.max_event_bytes,
        });
    }
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| (i, parser.parse(item), item))
        .collect())
}

pub(crate) async fn ingest(
    State(app): State<App>,
    Path(table): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = &app.ctx;
    if table != ctx.table.name {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown table `{table}`; this node ingests `{}`",
                ctx.table.name
            ),
        );
    }
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return r,
    };
    // a cluster decides each key on one node
    if let Some(k) = key.as_deref() {
        match app.mode.key_home(ctx, k, &headers) {
            super::mode::Route::Local => {}
            super::mode::Route::Forward(addr) => {
                return app
                    .mode
                    .forward(ctx, addr, Some(body), &uri, &headers)
                    .await
            }
            super::mode::Route::Unavailable(why) => {
                ctx.metrics.refused.inc();
                return super::unavailable(format!(
                    "the node that decides Idempotency-Key `{k}` is not known now ({why}); retry with the same key"
                ));
            }
        }
    }
    // (only a request with a key needs its body's hash)
    let body_hash = key.as_ref().map_or(0, |_| crate::pipeline::fnv1a64(&body));
    // a retry of a request this node took is answered before anything is
    // done again, parsing included (in a cluster its events are not
    // produced twice)
    if let Some(known) = key.as_deref().and_then(|k| app.keys.check(k, body_hash)) {
        return match known {
            Ok(reply) => {
                ctx.metrics.idempotent_replays.inc();
                answer(crate::writer::Written {
                    reply,
                    replayed: true,
                    duplicates: 0,
                    features: None,
                })
            }
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        };
    }
    if let Err(r) = room_for_events(ctx) {
        return r;
    }
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not UTF-8: {e}")),
    };
    let parsed = match parse_body(&app.parser, text, &ctx.config.limits) {
        Ok(p) => p,
        Err(e) => return error(e.status(), e.to_string()),
    };
    if parsed.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "no events: send JSON lines (one object per line) or a JSON array of objects",
        );
    }
    let (events, dead, reply) = check(ctx, &table, parsed);
    let Ok(_gate) = ctx.ingest_gate.try_read() else {
        return views_applying(ctx);
    };
    // the events the node's mode leaves to the writer (with the key)
    let (key, events) = match app.mode.append(ctx, key, body_hash, events).await {
        Ok(left) => left,
        Err(r) => return r,
    };
    let (done, rx) = oneshot::channel();
    let req = WriteReq {
        idempotency_key: key,
        body_hash,
        events,
        dead,
        reply,
        serve: None,
        done,
    };
    if app.writer.send(req).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    }
    match rx.await {
        Ok(Ok(w)) => answer(w),
        Ok(Err(e @ WriteError::KeyReused(_))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"),
    }
}

/// Ingest is refused (`503` + `Retry-After`) while the shard actors are
/// `max_shard_backlog` events or more behind the log, instead of queueing
/// more in their mailboxes.
pub(crate) fn room_for_events(ctx: &crate::node::NodeCtx) -> Result<(), Response> {
    let backlog = ctx.backlog();
    let max = ctx.config.limits.max_shard_backlog;
    if backlog < max {
        return Ok(());
    }
    ctx.metrics.refused.inc();
    Err(super::unavailable(format!(
        "the shards are {backlog} events behind the log (max_shard_backlog {max}); retry shortly"
    )))
}

/// The answer to an event sent while a `views apply` swaps the pipeline
/// (no event enters until every shard runs the new one).
pub(crate) fn views_applying(ctx: &crate::node::NodeCtx) -> Response {
    ctx.metrics.refused.inc();
    super::unavailable(
        "a views apply is rebuilding the shards under the new pipeline; no event enters until it is done: retry shortly",
    )
}

/// Validates parsed records against the table: the events by shard, the
/// refusals as dead letters, and the reply's counts.
fn check(
    ctx: &crate::node::NodeCtx,
    table: &str,
    parsed: Vec<Parsed<'_>>,
) -> (Events, Vec<DeadLetter>, IngestReply) {
    let now = now_ms();
    let mut events = Vec::with_capacity(parsed.len());
    let mut dead = Vec::new();
    let mut reply = IngestReply::default();
    for (index, row, raw) in parsed {
        let checked = row.and_then(|r| {
            ctx.table
                .validate(&r)
                .and_then(|()| ctx.table.check_time(&r, now))
                .map(|()| r)
                .map_err(|e| e.to_string())
        });
        match checked {
            Ok(r) => {
                events.push((ctx.table.shard_of(&r), r));
                reply.accepted += 1;
            }
            Err(reason) => {
                reply.rejected += 1;
                if reply.errors.len() < MAX_REPORTED_ERRORS {
                    reply.errors.push(EventErrorReport {
                        index,
                        reason: reason.clone(),
                    });
                } else {
                    reply.errors_omitted += 1;
                }
                dead.push(DeadLetter {
                    at_ms: now,
                    table: table.to_string(),
                    index,
                    reason,
                    raw: raw.to_string(),
                });
            }
        }
    }
    (events, dead, reply)
}

/// The reply to a stored (or replayed) request: `400` if no event of it
/// was accepted.
fn answer(w: crate::writer::Written) -> Response {
    let code = if w.reply.accepted == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut body = w.reply.to_api();
    if w.reply.accepted == 0 {
        body.error = Some("no event of the request was accepted; see `errors`".into());
    }
    let mut r = super::reply::reply(code, body);
    if w.replayed {
        r.headers_mut().insert(
            lockstep_api::IDEMPOTENT_REPLAYED,
            HeaderValue::from_static("true"),
        );
    }
    r
}

#[derive(Deserialize)]
pub(crate) struct Limit {
    limit: Option<usize>,
}

pub(crate) async fn deadletters(
    State(app): State<App>,
    Path(table): Path<String>,
    headers: HeaderMap,
    Query(q): Query<Limit>,
) -> Response {
    if table != app.ctx.table.name {
        return error(StatusCode::NOT_FOUND, format!("unknown table `{table}`"));
    }
    let limit = q.limit.unwrap_or(100).min(MAX_DEAD_LETTERS);
    let mut list = crate::writer::dead_letters(&app.ctx, limit);
    let mut unreachable = Vec::new();
    // each node keeps the dead letters of the requests it received: a
    // listing asks the others for theirs
    if !headers.contains_key(super::mode::FORWARDED) {
        let path = format!(
            "/v1/tables/{}/deadletters?limit={limit}",
            lockstep_api::path_segment(&table)
        );
        for (addr, answer) in app.mode.ask_peers(&app.ctx, path).await {
            match answer.and_then(|b| {
                serde_json::from_slice::<lockstep_api::DeadLetters>(&b)
                    .map_err(super::mode::PeerAskError::Body)
            }) {
                Ok(theirs) => list.extend(theirs.dead_letters),
                Err(e) => unreachable.push(format!("{addr}: {e}")),
            }
        }
        list.sort_by_key(|d| d.at_ms);
        let extra = list.len().saturating_sub(limit);
        list.drain(..extra);
    }
    ok(lockstep_api::DeadLetters {
        dead_letters: list,
        unreachable,
    })
}

/// Most dead letters one listing returns.
pub(crate) const MAX_DEAD_LETTERS: usize = 10_000;
