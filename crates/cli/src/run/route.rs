//! Which worker runs which shard, and handing each batch of the file to
//! the workers.

use super::Jobs;
use std::sync::mpsc::SyncSender;

/// Batches of the file held back to choose which worker runs which shard.
pub(super) const PLAN_BATCHES: usize = 4;

/// Hands each batch of the file to the workers, every worker one message
/// per batch (possibly empty), so the writer can merge them back in order.
/// Which worker runs which shard is chosen from the events of the first
/// [`PLAN_BATCHES`] batches: the busiest shards first, each to the least
/// loaded worker, so a few heavy keys do not leave one worker with most of
/// the work. The output does not depend on the choice.
pub(super) struct Router<'a> {
    txs: &'a [SyncSender<Jobs>],
    counts: Vec<u64>,
    held: Vec<Jobs>,
    worker_of: Option<Vec<usize>>,
}

impl<'a> Router<'a> {
    pub(super) fn new(txs: &'a [SyncSender<Jobs>], shards: usize) -> Router<'a> {
        Router {
            txs,
            counts: vec![0; shards],
            held: Vec::new(),
            worker_of: None,
        }
    }

    /// False when a worker is gone (the writer stopped). An empty batch is
    /// not sent.
    pub(super) fn push(&mut self, batch: Jobs) -> bool {
        if batch.is_empty() {
            return true;
        }
        if self.worker_of.is_some() {
            return self.send(batch);
        }
        for j in &batch.jobs {
            self.counts[j.shard as usize] += 1;
        }
        self.held.push(batch);
        self.held.len() < PLAN_BATCHES || self.finish()
    }

    /// Sends what is held back (at the end of a short input).
    pub(super) fn finish(&mut self) -> bool {
        if self.worker_of.is_none() {
            self.worker_of = Some(assign_shards(&self.counts, self.txs.len()));
        }
        std::mem::take(&mut self.held)
            .into_iter()
            .all(|b| self.send(b))
    }

    fn send(&self, mut batch: Jobs) -> bool {
        let worker_of = self.worker_of.as_ref().expect("assigned before sending");
        let n = self.txs.len();
        if n == 1 {
            return self.txs[0].send(batch).is_ok();
        }
        let mut per: Vec<Jobs> = (0..n)
            .map(|_| Jobs::new(batch.width, batch.len() / n + 1))
            .collect();
        let jobs = std::mem::take(&mut batch.jobs);
        for (i, j) in jobs.into_iter().enumerate() {
            per[worker_of[j.shard as usize]].take_from(&mut batch, i, j);
        }
        self.txs
            .iter()
            .zip(per)
            .all(|(tx, jobs)| tx.send(jobs).is_ok())
    }
}

/// Shards to workers by their event counts: largest first, each to the
/// least loaded worker (ties to the lowest index); a shard with no events
/// counts as one, so idle shards spread too.
fn assign_shards(counts: &[u64], workers: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&s| (std::cmp::Reverse(counts[s]), s));
    let mut load = vec![0u64; workers.max(1)];
    let mut worker_of = vec![0; counts.len()];
    for s in order {
        let w = (0..load.len())
            .min_by_key(|&w| (load[w], w))
            .expect("one worker at least");
        worker_of[s] = w;
        load[w] += counts[s].max(1);
    }
    worker_of
}

#[cfg(test)]
mod tests {
    use super::assign_shards;

    #[test]
    fn busy_shards_are_spread_over_the_workers() {
        // one shard with 40% of the events, the rest spread thin
        let counts = [400, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 0, 0, 0, 0];
        let w = assign_shards(&counts, 2);
        let load = |k| -> u64 {
            (0..16)
                .filter(|&s| w[s] == k)
                .map(|s| counts[s].max(1))
                .sum()
        };
        assert_eq!(load(0) + load(1), 954);
        assert!(load(0).abs_diff(load(1)) <= 50, "{w:?}");
        // every worker gets shards, every shard one worker
        let w3 = assign_shards(&[0; 16], 3);
        for k in 0..3 {
            assert!(w3.iter().filter(|&&x| x == k).count() >= 5, "{w3:?}");
        }
        assert_eq!(assign_shards(&counts, 1), vec![0; 16]);
    }
}
