//! What the writer keeps beside the log's records, in its side store:
//! event ids applied (tables with `event_id`) and dead letters, and their
//! expiry.

use super::{Writer, DEAD_PREFIX, EID_PREFIX};
use crate::node::NodeCtx;
use lockstep_api::DeadLetter;
use lockstep_core::dedup::EventIds;

/// The event ids the log's side store recorded, per shard.
pub(super) fn load_event_ids(ctx: &NodeCtx) -> Vec<EventIds> {
    let mut ids: Vec<Vec<(u128, i64)>> = vec![Vec::new(); ctx.table.shards as usize];
    if ctx.table.event_id.is_some() {
        for (k, v) in ctx.log.side_scan(EID_PREFIX).unwrap_or_default() {
            let k = &k[EID_PREFIX.len()..];
            if let (Ok(s), Ok(h), Ok(at)) = (
                <[u8; 4]>::try_from(&k[..4.min(k.len())]),
                <[u8; 16]>::try_from(k.get(4..).unwrap_or_default()),
                <[u8; 8]>::try_from(v.as_slice()),
            ) {
                if let Some(shard) = ids.get_mut(u32::from_be_bytes(s) as usize) {
                    shard.push((u128::from_be_bytes(h), i64::from_be_bytes(at)));
                }
            }
        }
    }
    ids.into_iter().map(EventIds::from_iter).collect()
}

pub(super) fn event_id_key(shard: u32, id: u128) -> Vec<u8> {
    let mut k = EID_PREFIX.to_vec();
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn seq_of(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if b.len() == 8 {
        a.copy_from_slice(b);
    }
    u64::from_be_bytes(a)
}

/// A dead-letter record's letters: a request's list, or (as written
/// before records held lists) one letter.
pub(super) fn letters_in(v: &[u8]) -> Vec<DeadLetter> {
    serde_json::from_slice::<Vec<DeadLetter>>(v)
        .or_else(|_| serde_json::from_slice::<DeadLetter>(v).map(|d| vec![d]))
        .unwrap_or_default()
}

/// Reads the dead-letter store, newest last (at most `limit`).
pub fn dead_letters(ctx: &NodeCtx, limit: usize) -> Vec<DeadLetter> {
    let mut newest_first: Vec<DeadLetter> = Vec::new();
    let _ = ctx.log.side_scan_back(DEAD_PREFIX, |_, v| {
        let mut letters = letters_in(v);
        let want = limit - newest_first.len();
        let extra = letters.len().saturating_sub(want);
        newest_first.extend(letters.drain(extra..).rev());
        newest_first.len() < limit
    });
    newest_first.reverse();
    newest_first
}

impl Writer {
    /// Forgets event ids first seen before `horizon` (in memory even if
    /// the store keeps them: a restart forgets them then).
    pub(super) fn prune_event_ids(&mut self, horizon: i64) {
        let mut keys = Vec::new();
        for (s, ids) in self.event_ids.iter_mut().enumerate() {
            keys.extend(
                ids.forget_before(horizon)
                    .into_iter()
                    .map(|id| event_id_key(s as u32, id)),
            );
        }
        for chunk in keys.chunks(10_000) {
            if let Err(e) = self.ctx.log.side_remove(chunk) {
                tracing::warn!("forgetting old event ids: {e}");
                return;
            }
        }
    }

    /// Drops the oldest requests' dead letters while more than
    /// `max_dead_letters` are stored or they are older than
    /// `dead_letter_retention` (whole requests: one record each).
    pub(super) fn prune_dead_letters(&mut self, now: i64) {
        let limits = self.ctx.config.limits;
        let horizon = now - limits.dead_letter_retention.as_millis() as i64;
        let (next, max) = (self.dead_seq, limits.max_dead_letters);
        let mut first = self.dead_first;
        let mut gone: Vec<Vec<u8>> = Vec::new();
        let mut dropped = 0;
        let _ = self.ctx.log.side_scan_front(DEAD_PREFIX, |k, v| {
            let letters = letters_in(v);
            let seq = seq_of(&k[DEAD_PREFIX.len()..]);
            let old = letters.first().is_some_and(|d| d.at_ms < horizon);
            if next.saturating_sub(seq) <= max && !old {
                return false;
            }
            gone.push(k.to_vec());
            first = seq + letters.len().max(1) as u64;
            dropped += letters.len() as u64;
            true
        });
        if gone.is_empty() {
            return;
        }
        match self.ctx.log.side_remove(&gone) {
            Ok(()) => {
                self.dead_first = first;
                self.ctx.metrics.dead_letters_dropped.inc_by(dropped);
            }
            Err(e) => tracing::warn!("dropping old dead letters: {e}"),
        }
    }
}
