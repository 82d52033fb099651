//! The table's topic: a shard's partition fetcher and the producer.
use crate::node::NodeCtx;
use crate::shard::ShardMsg;
use lockstep_log::kafka::OutRecord;
use ractor::ActorRef;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::ClusterCtx;

/// Reads a shard's partition from `from` and hands the records to its
/// actor in order, at most `MAX_IN_FLIGHT` ahead of what it processed.
/// Stops when `stop` is set or the actor is gone.
pub fn spawn_fetcher(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    shard: u32,
    from: u64,
    actor: ActorRef<ShardMsg>,
) -> Arc<AtomicBool> {
    const MAX_IN_FLIGHT: u64 = 50_000;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let me = actor.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("fetch-{shard}"))
        .spawn(move || {
            let mut reader = None;
            let mut position = from;
            let mut skipped = 0;
            set_failed(&ctx, shard, None);
            // a topic created again under the name holds other records at
            // the checkpoints' offsets: read nothing, visibly
            if let Some(why) = &cl.topic_mismatch {
                tracing::error!(shard, "{why}; the shard does not read it");
                set_failed(&ctx, shard, Some(why.clone()));
                wait_for_stop(&flag);
                set_failed(&ctx, shard, None);
                return;
            }
            while !flag.load(Ordering::Relaxed) {
                let processed = ctx.processed[shard as usize].load(Ordering::Relaxed);
                if position.saturating_sub(processed) > MAX_IN_FLIGHT {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let r = match reader.as_mut() {
                    Some(r) => r,
                    None => match cl.kafka.reader(shard, position) {
                        Ok(mut r) => {
                            r.skip_gaps(cl.skip_log_gaps);
                            skipped = 0;
                            reader.insert(r)
                        }
                        Err(e) => {
                            tracing::warn!(shard, "opening the partition reader: {e}; retrying");
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    },
                };
                match r.poll(10_000, Duration::from_millis(100)) {
                    Ok(recs) => {
                        if r.skipped > skipped {
                            tracing::warn!(
                                shard,
                                "skipped {} records over offset gaps (cluster.on_log_gap = \"skip\")",
                                r.skipped - skipped
                            );
                            ctx.metrics.log_records_skipped.inc_by(r.skipped - skipped);
                            skipped = r.skipped;
                        }
                        if let Some(end) = r.cached_end() {
                            cl.ends[shard as usize].store(end, Ordering::Relaxed);
                        }
                        if let Some(last) = recs.last() {
                            position = last.offset + 1;
                            let stopped = flag.clone();
                            if actor
                                .send_message(ShardMsg::Records { recs, stopped })
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                    Err(e) if e.is_lost() => {
                        // retrying cannot bring the records back: stop
                        // here, visibly, until an operator decides
                        tracing::error!(shard, "{e}; the shard stops reading (see docs/operations.md, \"When the log lost records\")");
                        set_failed(&ctx, shard, Some(e.to_string()));
                        wait_for_stop(&flag);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(shard, "reading the partition: {e}; reopening");
                        reader = None;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            // the shard stopped here or moved away: its mark goes with it
            // (a successor's reader marks it again if the records are
            // still missing)
            set_failed(&ctx, shard, None);
        });
    if let Err(e) = spawned {
        tracing::error!(shard, "cannot start the partition reader: {e}");
        let _ = me.send_message(ShardMsg::Fail);
    }
    stop
}

/// A failed shard's reader idles until the shard stops or moves.
fn wait_for_stop(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Marks shard `shard` failed (or not) and updates the gauge.
fn set_failed(ctx: &NodeCtx, shard: u32, why: Option<String>) {
    *ctx.failed[shard as usize].lock().expect("failed lock") = why;
    ctx.metrics
        .shards_failed
        .set(ctx.failed_shards().len() as i64);
}

/// Produces validated events to the topic (bincode rows, keyed by the
/// table key), each with the request's Idempotency-Key and body hash if it
/// had one; returns once all are acknowledged.
pub async fn produce(
    ctx: &NodeCtx,
    cl: &ClusterCtx,
    idempotency: Option<(&str, u64)>,
    events: &[(u32, lockstep_core::value::Row)],
) -> Result<Vec<u64>, lockstep_log::kafka::KafkaLogError> {
    let mut keys = Vec::with_capacity(events.len());
    let mut values = Vec::with_capacity(events.len());
    for (_, row) in events {
        keys.push(row[ctx.table.key].to_string());
        values.push(lockstep_io::raw::encode_event(row));
    }
    let recs: Vec<OutRecord> = events
        .iter()
        .enumerate()
        .map(|(i, (shard, _))| OutRecord {
            shard: *shard,
            key: keys[i].as_bytes(),
            value: &values[i],
            bincode: true,
            idempotency: idempotency.map(|(k, _)| (k, i as u32)),
            body_hash: idempotency.map(|(_, h)| h),
            timestamp_ms: None,
        })
        .collect();
    cl.kafka.produce(&recs).await
}
