//! Backfill jobs: a view (new or running) replayed over the archive, each
//! shard from its committed raw segments, into one Parquet object per
//! shard under `backfill/<job>/<view>/`. The replay of a shard is one code
//! path; who runs it differs: in a cluster every shard's owner, with the
//! job kept in the replicated state (so it outlives a dead node); on one
//! node this node, with the job kept in memory ([`LocalJobs`]).

use crate::clock::now_ms;
use crate::cluster::ClusterCtx;
use crate::node::NodeCtx;
use crate::segments::{
    read_raw_events, ObjectWriter, RawReadError, SegmentInfo, STREAM_PART_BYTES,
};
use lockstep_api::{BackfillPart, BackfillRequest};
use lockstep_cluster::state::{BackfillJob, ClusterState, Command, Response};
use lockstep_offline::OfflineError;
use object_store::path::Path as ObjPath;
use object_store::ObjectStoreExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why one shard of a backfill job could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("{0}")]
    Definition(#[from] lockstep_offline::OfflineError),
    #[error(transparent)]
    Segment(#[from] crate::segments::SegmentError),
    #[error("writing its rows: {0}")]
    Encode(#[from] lockstep_io::IoError),
    #[error("writing {path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("the replay task died: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("listing the archive: {0}")]
    Listing(String),
    #[error("not run: another shard of the job failed")]
    Skipped,
}

/// The committed raw segments of `shard` of the node's table, in order.
fn raw_segments(
    ctx: &NodeCtx,
    listed: impl IntoIterator<Item = SegmentInfo>,
    shard: u32,
) -> Vec<SegmentInfo> {
    let mut segs: Vec<SegmentInfo> = listed
        .into_iter()
        .filter(|s| s.kind == "raw" && s.name == ctx.table.name && s.shard == shard)
        .collect();
    segs.sort_by_key(|s| s.from_offset);
    segs
}

/// Replays one shard of a backfill job from the archive in the object
/// store (the raw segments `segs`, as the manifest lists them) and writes
/// its rows as one Parquet object under `backfill/<job>/<view>/`, named by
/// the node that ran it and a nonce (in a cluster the shard's next owner
/// may run it too; the first part committed wins).
pub async fn replay_shard(
    ctx: &NodeCtx,
    segs: Vec<SegmentInfo>,
    node: u64,
    req: &BackfillRequest,
    job: &str,
    shard: u32,
) -> Result<BackfillPart, BackfillError> {
    let started = Instant::now();
    // a compaction meanwhile keeps the segments it replaces until the end
    let _reading = ArchiveReader::new(&ctx.archive_readers);
    let node_catalog = (*ctx.pipeline().catalog).clone();
    let catalog = lockstep_offline::backfill_catalog(node_catalog, req.sql.as_deref(), &req.view)?;
    let (_, v) = catalog.view(&req.view).expect("checked");
    let nonce = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(Instant::now()) as u32
    };
    let path = format!(
        "backfill/{job}/{}/shard={shard:03}.n{node}-{nonce:08x}.parquet",
        req.view
    );
    let (view, from, to) = (req.view.clone(), req.from, req.to);
    let (store, schema, rt) = (
        ctx.objects.clone(),
        v.output.clone(),
        tokio::runtime::Handle::current(),
    );
    let cat = catalog.clone();
    let at = path.clone();
    // in bounded memory: each segment's events are replayed as they
    // download, and the rows are uploaded in parts as they are written
    let (report, crc32) = tokio::task::spawn_blocking(move || {
        let out = ObjectWriter::new(rt.clone(), store.clone(), &at, STREAM_PART_BYTES);
        let mut w = lockstep_io::ParquetStream::new(&at, &schema, out)?;
        let report = lockstep_offline::replay(
            &cat,
            &view,
            &segs,
            from,
            to,
            &mut |s, each| read_events(&rt, store.as_ref(), s, each),
            &mut |r| w.write(&r).map_err(|e| OfflineError::Other(e.to_string())),
            &mut |_| {},
        )?;
        let (out, _) = w.finish()?;
        let (_, crc32) = out.finish().map_err(|source| BackfillError::Store {
            path: at.clone(),
            source,
        })?;
        Ok::<_, BackfillError>((report, crc32))
    })
    .await??;
    Ok(BackfillPart {
        shard,
        node,
        path,
        crc32,
        rows: report.rows,
        events: report.events,
        millis: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Counts a backfill reading the archive while it lives.
struct ArchiveReader<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> ArchiveReader<'a> {
    fn new(readers: &'a std::sync::atomic::AtomicUsize) -> Self {
        readers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ArchiveReader(readers)
    }
}

impl Drop for ArchiveReader<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads a raw segment as it downloads, passing each event to `each`; a
/// damaged segment (checksum, framing) fails after its events were passed,
/// so the caller throws away what it made of them.
fn read_events(
    rt: &tokio::runtime::Handle,
    store: &dyn object_store::ObjectStore,
    s: &SegmentInfo,
    each: &mut lockstep_offline::EventSink,
) -> Result<(), OfflineError> {
    read_raw_events(rt, store, s, &mut |_, row| each(row)).map_err(|e| match e {
        RawReadError::Stopped(e) => e,
        RawReadError::Segment(e) => OfflineError::Other(e.to_string()),
    })
}

/// Runs `attempt` until it succeeds, [`BACKFILL_TRIES`] times at most,
/// half a second apart; the last error fails the shard.
async fn with_tries<F, Fut>(job: &str, shard: u32, mut attempt: F) -> Result<BackfillPart, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<BackfillPart, BackfillError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(p) => return Ok(p),
            Err(e @ BackfillError::Skipped) => return Err(format!("shard {shard}: {e}")),
            Err(e) if tries < BACKFILL_TRIES => {
                tracing::warn!(job, shard, "backfill: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("shard {shard}: {e}")),
        }
    }
}

/// How many times a node tries a backfill shard before failing the job.
const BACKFILL_TRIES: u32 = 3;

/// Replays one shard of a cluster job: the shard's raw segments as the
/// replicated manifest lists them.
async fn cluster_shard(
    ctx: &NodeCtx,
    cl: &ClusterCtx,
    req: &BackfillRequest,
    job: &str,
    shard: u32,
) -> Result<BackfillPart, BackfillError> {
    let listed = cl.state().segments[shard as usize].to_vec();
    let segs = raw_segments(ctx, listed, shard);
    replay_shard(ctx, segs, cl.id, req, job, shard).await
}

/// Runs the shards this node owns of every running backfill job (called
/// as the replicated state changes): at most one task per core, each shard
/// once per node. A shard whose owner died is run by its next owner, so a
/// job outlives its nodes.
pub fn run_cluster_jobs(
    ctx: &Arc<NodeCtx>,
    cl: &Arc<ClusterCtx>,
    st: &ClusterState,
    running: &Arc<Mutex<std::collections::HashSet<(String, u32)>>>,
    slots: &Arc<tokio::sync::Semaphore>,
) {
    let mine = st.owned_by(cl.id);
    for job in st.backfills.iter().filter(|j| j.finished_ms.is_none()) {
        for &shard in mine.iter().filter(|s| !job.parts.contains_key(s)) {
            if !running
                .lock()
                .expect("backfills")
                .insert((job.id.clone(), shard))
            {
                continue;
            }
            let (ctx, cl, running, slots) =
                (ctx.clone(), cl.clone(), running.clone(), slots.clone());
            let (id, request) = (job.id.clone(), job.request.clone());
            tokio::spawn(async move {
                let _slot = slots.acquire().await;
                let outcome = match serde_json::from_str(&request) {
                    Ok(req) => {
                        with_tries(&id, shard, || cluster_shard(&ctx, &cl, &req, &id, shard)).await
                    }
                    Err(e) => Err(format!("the job's request: {e}")),
                };
                let cmd = match &outcome {
                    Ok(part) => Command::BackfillPart {
                        id: id.clone(),
                        part: part.clone(),
                        at_ms: now_ms(),
                    },
                    Err(e) => {
                        tracing::error!(job = %id, "backfill failed: {e}");
                        Command::BackfillFail {
                            id: id.clone(),
                            error: e.clone(),
                            at_ms: now_ms(),
                        }
                    }
                };
                let answer = cl.cp.propose(cmd).await;
                let done = matches!(answer, Ok(Response::Done));
                if let (Ok(part), Ok(Response::Rejected(_))) = (&outcome, &answer) {
                    // another node's part came first (or the job ended):
                    // this object is not the job's (an unanswered proposal
                    // may have been applied, so its object stays)
                    let listed = cl
                        .state()
                        .backfill(&id)
                        .and_then(|j| j.parts.get(&shard).map(|p| p.path == part.path));
                    if listed != Some(true) {
                        let p = ObjPath::from(part.path.as_str());
                        let _ = ctx.objects.delete(&p).await;
                    }
                }
                if !done {
                    // the shard may come back to this node: allow a rerun
                    // while the job still needs it
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                running.lock().expect("backfills").remove(&(id, shard));
            });
        }
    }
}

/// One node's backfill jobs: run by this node, its shards in parallel, kept in
/// memory (a restart forgets them; a job running then is lost and must be
/// started again), the last [`KEEP_FINISHED`] finished ones kept.
pub struct LocalJobs {
    jobs: Mutex<Vec<BackfillJob>>,
    /// Shard replays running at once, one per core.
    slots: tokio::sync::Semaphore,
    /// Bumped whenever a job changes (waiters watch it).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for LocalJobs {
    fn default() -> LocalJobs {
        LocalJobs {
            jobs: Mutex::default(),
            slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            changed: tokio::sync::watch::Sender::default(),
        }
    }
}

/// Finished one-node jobs kept for `GET /v1/backfill`.
pub const KEEP_FINISHED: usize = lockstep_cluster::state::KEEP_FINISHED_BACKFILLS;

impl LocalJobs {
    /// Registers a job and starts running it.
    pub fn start(self: &Arc<Self>, ctx: &Arc<NodeCtx>, req: BackfillRequest) -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "{}-n0-{}",
            now_ms(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let request = serde_json::to_string(&req).expect("requests encode");
        {
            let mut jobs = self.jobs.lock().expect("jobs");
            jobs.push(BackfillJob {
                id: id.clone(),
                request,
                started_ms: now_ms(),
                parts: BTreeMap::new(),
                error: None,
                finished_ms: None,
            });
            let finished = jobs.iter().filter(|j| j.finished_ms.is_some()).count();
            let mut extra = finished.saturating_sub(KEEP_FINISHED);
            jobs.retain(|j| {
                let old = extra > 0 && j.finished_ms.is_some();
                extra -= usize::from(old);
                !old
            });
        }
        let (me, ctx, job) = (self.clone(), ctx.clone(), id.clone());
        tokio::spawn(me.run(ctx, job, req));
        id
    }

    async fn run(self: Arc<Self>, ctx: Arc<NodeCtx>, id: String, req: BackfillRequest) {
        // Shards replay in parallel, as many at once as the node has cores
        // (the slots are shared by every job; each replay streams, so memory
        // is bounded per slot); listed again on each try (a compaction may
        // have swapped them). After a failure the shards not yet started are
        // skipped; those replaying run to their end, holding their slot and
        // their hold on the archive (a blocking replay cannot be cancelled,
        // and aborting its task would release both while it still reads).
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for shard in 0..ctx.table.shards {
            let (me, ctx, id, req, failed) = (
                self.clone(),
                ctx.clone(),
                id.clone(),
                req.clone(),
                failed.clone(),
            );
            tasks.spawn(async move {
                let part = with_tries(&id, shard, || async {
                    let skip = || failed.load(std::sync::atomic::Ordering::SeqCst);
                    if skip() {
                        return Err(BackfillError::Skipped);
                    }
                    let _slot = me.slots.acquire().await;
                    if skip() {
                        return Err(BackfillError::Skipped);
                    }
                    let listed = crate::shard::segments_of(&ctx, shard)
                        .await
                        .map_err(|e| BackfillError::Listing(e.to_string()))?;
                    let segs = raw_segments(&ctx, listed, shard);
                    replay_shard(&ctx, segs, 0, &req, &id, shard).await
                })
                .await;
                (shard, part)
            });
        }
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let error = match done {
                Ok((shard, Ok(p))) => {
                    self.update(&id, |j| {
                        j.parts.insert(shard, p);
                    });
                    continue;
                }
                Ok((_, Err(e))) => e,
                Err(e) => format!("a replay task died: {e}"),
            };
            failed.store(true, std::sync::atomic::Ordering::SeqCst);
            first_error.get_or_insert(error);
        }
        self.finish(&id, first_error);
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut BackfillJob)) {
        if let Some(j) = self
            .jobs
            .lock()
            .expect("jobs")
            .iter_mut()
            .find(|j| j.id == id)
        {
            f(j);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn finish(&self, id: &str, error: Option<String>) {
        if let Some(e) = &error {
            tracing::error!(job = %id, "backfill failed: {e}");
        }
        self.update(id, |j| {
            j.error = error;
            j.finished_ms = Some(now_ms());
        });
    }

    pub fn jobs(&self) -> Vec<BackfillJob> {
        self.jobs.lock().expect("jobs").clone()
    }

    pub fn job(&self, id: &str) -> Option<BackfillJob> {
        self.jobs().into_iter().find(|j| j.id == id)
    }

    /// The job once it finished, or `None` after `timeout`.
    pub async fn finished(&self, id: &str, timeout: Duration) -> Option<BackfillJob> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(j) = self.job(id).filter(|j| j.finished_ms.is_some()) {
                return Some(j);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}
