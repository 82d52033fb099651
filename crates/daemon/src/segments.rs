//! Segments in the object store: each checkpoint archives the shard's new
//! log slice under `raw/<table>/shard=NNN/` and its finalized training rows
//! under `training/<view>/shard=NNN/`, both as Parquet, named by the log
//! offset range they cover. The manifest of committed segments (offset and
//! time ranges, row counts, CRC-32 checksums) lives in the checkpoint store
//! and is mirrored here; an object the manifest does not list is an orphan
//! of an interrupted checkpoint or compaction and is deleted at recovery.

use crate::config::ObjectStoreUrl;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

/// One committed segment (the control plane replicates the same type).
pub use lockstep_cluster::state::SegmentInfo;

/// `ext` is `<store id>.<format>` (see `NodeCtx::ext`): names are unique per
/// data directory, so nodes can share an object store prefix.
pub fn segment_path(kind: &str, name: &str, shard: u32, from: u64, to: u64, ext: &str) -> String {
    format!("{kind}/{name}/shard={shard:03}/{from:020}-{to:020}.{ext}")
}

pub fn shard_prefix(kind: &str, name: &str, shard: u32) -> String {
    format!("{kind}/{name}/shard={shard:03}/")
}

pub use lockstep_io::raw::{decode_raw, raw_segment, RAW_EXT};

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("segment encoding: {0}")]
    Io(#[from] lockstep_io::IoError),
    #[error(transparent)]
    Raw(#[from] lockstep_io::raw::RawError),
    #[error("uploading a segment: {0}")]
    Upload(std::io::Error),
    /// The consumer of [`read_segment_chunks`] stopped the read (it keeps
    /// why).
    #[error("stopped")]
    Stopped,
    #[error("spooling a segment to {dir}: {source}")]
    Spool {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("segment {path} is damaged: checksum {found:08x}, manifest says {expected:08x}")]
    Checksum {
        path: String,
        found: u32,
        expected: u32,
    },
}

/// Opens the configured object store.
pub fn open_store(url: &ObjectStoreUrl) -> Result<Arc<dyn ObjectStore>, SegmentError> {
    Ok(match url {
        ObjectStoreUrl::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            })?;
            let store = crate::local_store::DurableLocal::new(dir)?;
            // parts an upload killed half way left (an hour untouched: a
            // node sharing the directory may be uploading the others)
            let swept = store.sweep_staged_parts(std::time::Duration::from_secs(3600));
            if swept > 0 {
                tracing::info!(swept, "deleted the staged parts of unfinished uploads");
            }
            Arc::new(store)
        }
        ObjectStoreUrl::S3 { bucket, prefix } => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Ok(endpoint) =
                std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"))
            {
                b = b
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            let s3 = b.build()?;
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
            }
        }
    })
}

/// Objects larger than this are uploaded in parts (S3 takes at most 5 GB
/// in one PUT, and one failed PUT of a large object resends all of it).
pub const MULTIPART_ABOVE: usize = 64 << 20;
/// The size of each part of a multipart upload (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 32 << 20;

/// Writes `bytes` to `path`: one PUT up to [`MULTIPART_ABOVE`], a
/// multipart upload of [`PART_BYTES`] parts beyond (aborted on error, so
/// no parts are left behind).
pub async fn put_object(
    store: &dyn ObjectStore,
    path: &ObjPath,
    bytes: Bytes,
) -> Result<(), object_store::Error> {
    put_object_in_parts(store, path, bytes, MULTIPART_ABOVE, PART_BYTES).await
}

/// [`put_object`] with the threshold and part size given (tests).
pub async fn put_object_in_parts(
    store: &dyn ObjectStore,
    path: &ObjPath,
    bytes: Bytes,
    above: usize,
    part: usize,
) -> Result<(), object_store::Error> {
    if bytes.len() <= above {
        store.put(path, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let mut upload = store.put_multipart(path).await?;
    let mut sent = Ok(());
    for chunk in (0..bytes.len()).step_by(part) {
        let end = (chunk + part).min(bytes.len());
        if let Err(e) = upload
            .put_part(PutPayload::from(bytes.slice(chunk..end)))
            .await
        {
            sent = Err(e);
            break;
        }
    }
    let done = match sent {
        Ok(()) => upload.complete().await.map(|_| ()),
        Err(e) => Err(e),
    };
    if done.is_err() {
        // no parts left behind (S3 keeps, and bills, an unfinished upload)
        let _ = upload.abort().await;
    }
    done
}

/// Parts of an object written as it is produced ([`ObjectWriter`]): it is
/// one PUT while it stays within one part, a multipart upload of parts of
/// this size beyond (S3 takes 10,000 parts: objects up to 80 GB).
pub const STREAM_PART_BYTES: usize = 8 << 20;

/// An object written as it is produced, from a blocking thread (a merge, a
/// backfill): memory holds at most two parts, whatever the object's size.
/// While the bytes fit in one part it is one PUT at [`ObjectWriter::finish`];
/// past that a multipart upload sends each part as it fills. Dropped
/// without `finish` (an error on the way), the upload is aborted, so no
/// parts are left behind. Keeps the object's length and CRC-32.
pub struct ObjectWriter {
    rt: tokio::runtime::Handle,
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    part: usize,
    buf: Vec<u8>,
    upload: Option<Box<dyn object_store::MultipartUpload>>,
    crc: crc32fast::Hasher,
    len: u64,
    /// A part failed to go up: the object can no longer be completed.
    failed: bool,
}

impl ObjectWriter {
    /// Must be called on a thread where `rt.block_on` may run (a blocking
    /// task's).
    pub fn new(
        rt: tokio::runtime::Handle,
        store: Arc<dyn ObjectStore>,
        path: &str,
        part: usize,
    ) -> ObjectWriter {
        ObjectWriter {
            rt,
            store,
            path: ObjPath::from(path),
            part,
            buf: Vec::new(),
            upload: None,
            crc: crc32fast::Hasher::new(),
            len: 0,
            failed: false,
        }
    }

    /// Sends every full part (starting the upload at the first).
    fn send_full_parts(&mut self) -> Result<(), object_store::Error> {
        while self.buf.len() > self.part {
            if self.upload.is_none() {
                let u = self.rt.block_on(self.store.put_multipart(&self.path))?;
                self.upload = Some(u);
            }
            let rest = self.buf.split_off(self.part);
            let full = std::mem::replace(&mut self.buf, rest);
            let upload = self.upload.as_mut().expect("started");
            let sent = upload.put_part(PutPayload::from(full));
            self.rt.block_on(sent)?;
        }
        Ok(())
    }

    /// Completes the object: its length and CRC-32. (Should the store fail
    /// after the object is whole, e.g. its answer lost, the object may stay
    /// under a name no manifest lists: garbage collection's to delete.)
    pub fn finish(mut self) -> Result<(u64, u32), object_store::Error> {
        if self.failed {
            return Err(object_store::Error::Generic {
                store: "upload",
                source: format!("a part of {} failed to go up", self.path).into(),
            });
        }
        let last = PutPayload::from(std::mem::take(&mut self.buf));
        match self.upload.take() {
            None => {
                self.rt.block_on(self.store.put(&self.path, last))?;
            }
            Some(mut upload) => {
                let done = self.rt.block_on(async {
                    if last.content_length() > 0 {
                        upload.put_part(last).await?;
                    }
                    upload.complete().await
                });
                if let Err(e) = done {
                    let _ = self.rt.block_on(upload.abort());
                    return Err(e);
                }
            }
        }
        Ok((self.len, self.crc.clone().finalize()))
    }
}

impl std::io::Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.failed {
            return Err(std::io::Error::other("an earlier part failed to go up"));
        }
        self.crc.update(data);
        self.len += data.len() as u64;
        self.buf.extend_from_slice(data);
        self.send_full_parts().map_err(|e| {
            self.failed = true;
            std::io::Error::other(e)
        })?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            // not finished: no parts left behind (S3 keeps, and bills,
            // them); on the blocking thread it was written from
            if let Err(e) = self.rt.block_on(upload.abort()) {
                tracing::warn!(object = %self.path, "could not abort an unfinished upload: {e}");
            }
        }
    }
}

/// How much of a segment one read takes ([`read_segment_chunks`]): each
/// is its own ranged GET, so no request stays open while a slow consumer
/// (a replay, a merge's upload) works through a large segment.
pub const READ_CHUNK_BYTES: u64 = 4 << 20;

/// Reads a segment (its `bytes` as the manifest lists them) in ranged GETs
/// of [`READ_CHUNK_BYTES`] from a blocking thread (`rt.block_on`), passing
/// each chunk to `each`, and checks its checksum against the manifest at
/// the end: what `each` made of a damaged segment's chunks must then be
/// thrown away (the caller fails). If `each` finds the bytes malformed
/// (a `Raw` or `Io` error), the rest is still read to tell damage (a
/// checksum error) from a bug (`each`'s error); any other error of
/// `each`'s ends the read at once.
pub fn read_segment_chunks(
    rt: &tokio::runtime::Handle,
    store: &dyn ObjectStore,
    s: &SegmentInfo,
    each: &mut dyn FnMut(&[u8]) -> Result<(), SegmentError>,
) -> Result<(), SegmentError> {
    let path = ObjPath::from(s.path.as_str());
    let mut crc = crc32fast::Hasher::new();
    let mut malformed = None;
    let mut at = 0;
    while at < s.bytes {
        let end = (at + READ_CHUNK_BYTES).min(s.bytes);
        let chunk = rt.block_on(store.get_range(&path, at..end))?;
        if chunk.len() as u64 != end - at {
            return Err(SegmentError::Raw(lockstep_io::raw::RawError::Segment {
                path: s.path.clone(),
                message: format!(
                    "{} bytes at {at}, the manifest says the segment has {}",
                    chunk.len(),
                    s.bytes
                ),
            }));
        }
        crc.update(&chunk);
        if malformed.is_none() {
            match each(&chunk) {
                Ok(()) => {}
                Err(e @ (SegmentError::Raw(_) | SegmentError::Io(_))) => malformed = Some(e),
                Err(e) => return Err(e),
            }
        }
        at = end;
    }
    let found = crc.finalize();
    if found != s.crc32 {
        return Err(SegmentError::Checksum {
            path: s.path.clone(),
            found,
            expected: s.crc32,
        });
    }
    malformed.map_or(Ok(()), Err)
}

/// Why [`read_raw_events`] stopped.
pub enum RawReadError<E> {
    /// The consumer's error.
    Stopped(E),
    /// The segment could not be read, or is damaged.
    Segment(SegmentError),
}

/// Reads a raw segment as it downloads ([`read_segment_chunks`]), passing
/// each event with its offset to `each`, in log order; an error of
/// `each`'s ends the read. A damaged segment fails after some of its
/// events were passed: the caller throws away what it made of them.
pub fn read_raw_events<E>(
    rt: &tokio::runtime::Handle,
    store: &dyn ObjectStore,
    s: &SegmentInfo,
    each: &mut dyn FnMut(u64, lockstep_core::value::Row) -> Result<(), E>,
) -> Result<(), RawReadError<E>> {
    let mut decoder = lockstep_io::raw::RawDecoder::new(&s.path, s.bytes);
    // why `each` stopped the read, if it did
    let mut stopped = None;
    let read = read_segment_chunks(rt, store, s, &mut |chunk| {
        let fed = decoder.feed(chunk, &mut |off, row| {
            each(off, row).map_err(|e| {
                stopped = Some(e);
                lockstep_io::raw::RawError::Record("stopped".into())
            })
        });
        match stopped {
            Some(_) => Err(SegmentError::Stopped),
            None => fed.map_err(SegmentError::Raw),
        }
    });
    if let Some(e) = stopped {
        return Err(RawReadError::Stopped(e));
    }
    read.map_err(RawReadError::Segment)?;
    decoder
        .finish()
        .map(|_| ())
        .map_err(|e| RawReadError::Segment(SegmentError::Raw(e)))
}

/// Writes a segment object and describes it.
#[allow(clippy::too_many_arguments)]
pub async fn put_segment(
    store: &dyn ObjectStore,
    kind: &str,
    name: &str,
    shard: u32,
    from: u64,
    to: u64,
    ext: &str,
    bytes: Vec<u8>,
    rows: u64,
    times: (i64, i64),
) -> Result<SegmentInfo, SegmentError> {
    let path = segment_path(kind, name, shard, from, to, ext);
    let crc32 = crc32fast::hash(&bytes);
    let len = bytes.len() as u64;
    put_object(store, &ObjPath::from(path.as_str()), Bytes::from(bytes)).await?;
    Ok(SegmentInfo {
        kind: kind.to_string(),
        name: name.to_string(),
        shard,
        path,
        from_offset: from,
        to_offset: to,
        min_time: times.0,
        max_time: times.1,
        rows,
        bytes: len,
        crc32,
    })
}

/// Reads a segment and checks its checksum against the manifest.
pub async fn get_segment(store: &dyn ObjectStore, s: &SegmentInfo) -> Result<Bytes, SegmentError> {
    let bytes = store
        .get(&ObjPath::from(s.path.as_str()))
        .await?
        .bytes()
        .await?;
    let found = crc32fast::hash(&bytes);
    if found != s.crc32 {
        return Err(SegmentError::Checksum {
            path: s.path.clone(),
            found,
            expected: s.crc32,
        });
    }
    Ok(bytes)
}

/// Deletes this node's objects under `prefix` (their names carry its
/// `store_id`) that `keep` does not list; returns them. Other nodes'
/// objects under the same prefix are left alone.
pub async fn delete_orphans(
    store: &dyn ObjectStore,
    prefix: &str,
    store_id: &str,
    keep: &[&str],
) -> Result<Vec<String>, SegmentError> {
    let mine = format!(".{store_id}.");
    delete_where(store, prefix, |p, _| {
        p.contains(&mine) && !keep.contains(&p)
    })
    .await
}

/// Deletes the objects under `prefix` for which `doomed(path, written_ms)`
/// holds; returns them.
async fn delete_where(
    store: &dyn ObjectStore,
    prefix: &str,
    doomed: impl Fn(&str, i64) -> bool,
) -> Result<Vec<String>, SegmentError> {
    let listed: Vec<_> = store
        .list(Some(&ObjPath::from(prefix)))
        .try_collect()
        .await?;
    let mut gone = Vec::new();
    for meta in listed {
        let p = meta.location.to_string();
        if doomed(&p, meta.last_modified.timestamp_millis()) {
            store.delete(&meta.location).await?;
            gone.push(p);
        }
    }
    Ok(gone)
}

/// The object store's clock now (ms since the epoch): the time it stamps
/// on an object written at `marker`. Garbage collection compares objects'
/// ages on this clock, never on this node's: with S3's clock behind the
/// node's by more than the grace, an object a commit just wrote looked
/// old enough to delete.
pub async fn store_clock_ms(store: &dyn ObjectStore, marker: &str) -> Result<i64, SegmentError> {
    let path = ObjPath::from(marker);
    store
        .put(&path, PutPayload::from(Bytes::from_static(b"clock")))
        .await?;
    Ok(store.head(&path).await?.last_modified.timestamp_millis())
}

/// Deletes every object under `prefix` that `keep` does not list and that
/// was written before `before_ms` (milliseconds since the epoch), whoever
/// wrote it; returns them. In a cluster a shard's prefixes belong to its
/// owner: what the committed manifest does not list there was left by
/// crashed or fenced attempts. `before_ms` must not be later than when
/// `keep` was read (minus a grace for commits still on their way): objects
/// written since may belong to checkpoints `keep` does not know yet.
pub async fn delete_unlisted(
    store: &dyn ObjectStore,
    prefix: &str,
    keep: &[&str],
    before_ms: i64,
) -> Result<Vec<String>, SegmentError> {
    delete_where(store, prefix, |p, written| {
        !keep.contains(&p) && written < before_ms
    })
    .await
}

/// Merges consecutive small segments of one kind, name and shard: groups
/// whose combined size stays under `target_bytes`. Returns the groups to
/// merge (each at least two segments, contiguous in offsets).
pub fn plan_compaction(segments: &[SegmentInfo], target_bytes: u64) -> Vec<Vec<SegmentInfo>> {
    let mut sorted: Vec<&SegmentInfo> = segments.iter().collect();
    sorted.sort_by_key(|s| s.from_offset);
    let mut groups = Vec::new();
    let mut cur: Vec<SegmentInfo> = Vec::new();
    let mut size = 0;
    for s in sorted {
        let contiguous = cur.last().is_none_or(|l| l.to_offset == s.from_offset);
        if !contiguous || (size + s.bytes > target_bytes && !cur.is_empty()) {
            if cur.len() > 1 {
                groups.push(std::mem::take(&mut cur));
            }
            cur.clear();
            size = 0;
        }
        size += s.bytes;
        cur.push(s.clone());
    }
    if cur.len() > 1 {
        groups.push(cur);
    }
    groups
}

/// What automatic compaction merges: in each contiguous run, walking back
/// from the newest segment, an older segment joins the group only while it
/// is no larger than the newer ones already in it together (and the group
/// stays within `target_bytes`). Merged segments then grow geometrically,
/// so each byte is rewritten O(log n) times; merging every small run
/// into the large segment before it ([`plan_compaction`], what `segments
/// compact` asks for) rewrote that segment at every compaction (with 100 ms
/// checkpoints, ~100 MB/s of copies for 60 kB/s of events).
///
/// `gaps_ok`: segments that hold only some of their range's records (late
/// events, dead letters) merge across gaps between them: the merged range
/// then holds every such record of the range, as no other segment of the
/// stream lies inside it.
pub fn plan_tiered_compaction(
    segments: &[SegmentInfo],
    target_bytes: u64,
    gaps_ok: bool,
) -> Vec<Vec<SegmentInfo>> {
    let mut sorted: Vec<&SegmentInfo> = segments.iter().collect();
    sorted.sort_by_key(|s| s.from_offset);
    let mut runs: Vec<Vec<&SegmentInfo>> = Vec::new();
    for s in sorted {
        match runs.last_mut() {
            Some(r)
                if r.last().is_some_and(|l| {
                    l.to_offset == s.from_offset || (gaps_ok && l.to_offset <= s.from_offset)
                }) =>
            {
                r.push(s)
            }
            _ => runs.push(vec![s]),
        }
    }
    let mut groups = Vec::new();
    for run in runs {
        let mut group: Vec<SegmentInfo> = Vec::new();
        let mut size = 0u64;
        for s in run.into_iter().rev() {
            if !group.is_empty() && (s.bytes > size || size + s.bytes > target_bytes) {
                if group.len() > 1 {
                    group.reverse();
                    groups.push(std::mem::take(&mut group));
                }
                group.clear();
                size = 0;
            }
            size += s.bytes;
            group.push(s.clone());
        }
        if group.len() > 1 {
            group.reverse();
            groups.push(group);
        }
    }
    // oldest first, as the swaps expect nothing of the order but logs read
    // better
    groups.sort_by_key(|g| g[0].from_offset);
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// Whatever the part and write sizes, the object is the bytes written,
    /// with their length and CRC-32; one PUT within a part; nothing left
    /// when given up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_is_written_as_it_is_produced() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let bytes: Vec<u8> = (0..100_003u32).map(|i| (i % 241) as u8).collect();
        for (part, write) in [(1000, 7), (1000, 5000), (200_000, 999), (100_003, 100_003)] {
            let path = format!("o/{part}-{write}");
            let (s, p, b) = (store.clone(), path.clone(), bytes.clone());
            let rt = tokio::runtime::Handle::current();
            let (len, crc) = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut w = ObjectWriter::new(rt, s, &p, part);
                for c in b.chunks(write) {
                    w.write_all(c).unwrap();
                }
                w.finish().unwrap()
            })
            .await
            .unwrap();
            assert_eq!((len, crc), (bytes.len() as u64, crc32fast::hash(&bytes)));
            let back = store.get(&ObjPath::from(path.as_str())).await.unwrap();
            assert_eq!(back.bytes().await.unwrap().as_ref(), bytes.as_slice());
        }
        // given up half way, on a local store: no object, no staged parts
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let (s, rt) = (local.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut w = ObjectWriter::new(rt, s, "o/abandoned", 1000);
            w.write_all(&[1; 5000]).unwrap();
        })
        .await
        .unwrap();
        let left: Vec<_> = walk(dir.path());
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
        files
    }

    /// A local store whose clock is ten minutes behind this machine's (as
    /// an S3 server's may be): every time it reports is shifted.
    #[derive(Debug)]
    struct BehindClock(object_store::local::LocalFileSystem);

    const BEHIND_MS: i64 = 10 * 60_000;

    fn shifted(mut m: object_store::ObjectMeta) -> object_store::ObjectMeta {
        m.last_modified -= chrono::Duration::milliseconds(BEHIND_MS);
        m
    }

    impl std::fmt::Display for BehindClock {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "BehindClock")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for BehindClock {
        async fn put_opts(
            &self,
            location: &ObjPath,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &ObjPath,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &ObjPath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            let mut g = self.0.get_opts(location, options).await?;
            g.meta = shifted(g.meta);
            Ok(g)
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<ObjPath>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjPath>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&ObjPath>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix).map_ok(shifted).boxed()
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &ObjPath,
            to: &ObjPath,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    /// Garbage collection measures age on the store's clock: an object
    /// just written to a store whose clock is behind is still young.
    #[tokio::test]
    async fn the_grace_is_measured_on_the_stores_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            BehindClock(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        store
            .put(
                &ObjPath::from("raw/t/shard=000/fresh.seg"),
                PutPayload::from(Bytes::from_static(b"x")),
            )
            .await
            .unwrap();
        let grace = 60_000;
        // on this machine's clock it is ten minutes old: it would go
        let by_wall_clock = crate::clock::now_ms() - grace;
        let meta = store
            .head(&ObjPath::from("raw/t/shard=000/fresh.seg"))
            .await
            .unwrap();
        assert!(meta.last_modified.timestamp_millis() < by_wall_clock);
        // on the store's clock it was written just now: it stays
        let store_now = store_clock_ms(&store, "gc-clock/test").await.unwrap();
        let gone = delete_unlisted(&store, "raw/t/shard=000/", &[], store_now - grace)
            .await
            .unwrap();
        assert!(gone.is_empty(), "{gone:?}");
        assert!((crate::clock::now_ms() - BEHIND_MS - store_now).abs() < 5_000);
    }

    #[tokio::test]
    async fn unlisted_objects_older_than_the_grace_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        for name in ["kept", "orphan", "other"] {
            let prefix = if name == "other" {
                "raw/t/shard=001"
            } else {
                "raw/t/shard=000"
            };
            store
                .put(
                    &ObjPath::from(format!("{prefix}/{name}.seg")),
                    PutPayload::from(Bytes::from_static(b"x")),
                )
                .await
                .unwrap();
        }
        let keep = ["raw/t/shard=000/kept.seg"];
        // written just now: within the grace, nothing goes
        let now = crate::clock::now_ms();
        let gone = delete_unlisted(&store, "raw/t/shard=000/", &keep, now - 60_000)
            .await
            .unwrap();
        assert!(gone.is_empty(), "{gone:?}");
        // no grace: the unlisted object of this shard goes, nothing else
        let gone = delete_unlisted(&store, "raw/t/shard=000/", &keep, now + 1_000)
            .await
            .unwrap();
        assert_eq!(gone, ["raw/t/shard=000/orphan.seg"]);
        let left: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        let mut left = left;
        left.sort();
        assert_eq!(
            left,
            ["raw/t/shard=000/kept.seg", "raw/t/shard=001/other.seg"]
        );
    }

    fn seg(from: u64, to: u64, bytes: u64) -> SegmentInfo {
        SegmentInfo {
            kind: "raw".into(),
            name: "t".into(),
            shard: 0,
            path: segment_path("raw", "t", 0, from, to, "parquet"),
            from_offset: from,
            to_offset: to,
            min_time: 0,
            max_time: 0,
            rows: to - from,
            bytes,
            crc32: 0,
        }
    }

    #[test]
    fn compaction_merges_contiguous_small_runs_only() {
        let segs = vec![
            seg(0, 10, 10),
            seg(10, 20, 10),
            seg(20, 30, 100),
            seg(40, 50, 5),
            seg(50, 60, 5),
        ];
        let plan = plan_compaction(&segs, 50);
        let ranges: Vec<Vec<(u64, u64)>> = plan
            .iter()
            .map(|g| g.iter().map(|s| (s.from_offset, s.to_offset)).collect())
            .collect();
        // 20..30 is too big to join; 30..40 is missing, so 40.. starts anew
        assert_eq!(
            ranges,
            vec![vec![(0, 10), (10, 20)], vec![(40, 50), (50, 60)]]
        );
    }

    /// Automatic compaction's plan keeps both the manifest and the copying
    /// bounded: 2000 checkpoints of one small segment each, compacted
    /// whenever the manifest passes 64 segments, leave a short manifest and
    /// rewrite each byte a logarithmic number of times (merging every run
    /// into the segment before it rewrote it at every compaction: hundreds
    /// of times here).
    #[test]
    fn tiered_compaction_rewrites_each_byte_a_few_times() {
        let (mut segs, mut written, mut copied) = (Vec::new(), 0u64, 0u64);
        let mut next = 0;
        for i in 0..2000u64 {
            let bytes = 1000 + (i * 37) % 500;
            segs.push(seg(next, next + 10, bytes));
            next += 10;
            written += bytes;
            if segs.len() > 64 {
                for g in plan_tiered_compaction(&segs, 1 << 30, false) {
                    let total: u64 = g.iter().map(|s| s.bytes).sum();
                    copied += total;
                    segs.retain(|s| !g.contains(s));
                    segs.push(seg(g[0].from_offset, g.last().unwrap().to_offset, total));
                }
                segs.sort_by_key(|s| s.from_offset);
            }
            assert!(segs.len() <= 65, "{} segments", segs.len());
        }
        // contiguous, nothing lost
        assert_eq!(segs.iter().map(|s| s.bytes).sum::<u64>(), written);
        assert!(segs.windows(2).all(|w| w[0].to_offset == w[1].from_offset));
        let amplification = copied as f64 / written as f64;
        assert!(
            amplification < 8.0,
            "each byte copied {amplification:.1} times"
        );
        // the planner the operator's `segments compact` uses would have
        // copied far more
        let (mut segs2, mut copied2, mut next2) = (Vec::new(), 0u64, 0);
        for i in 0..2000u64 {
            segs2.push(seg(next2, next2 + 10, 1000 + (i * 37) % 500));
            next2 += 10;
            if segs2.len() > 64 {
                for g in plan_compaction(&segs2, 1 << 30) {
                    let total: u64 = g.iter().map(|s| s.bytes).sum();
                    copied2 += total;
                    segs2.retain(|s| !g.contains(s));
                    segs2.push(seg(g[0].from_offset, g.last().unwrap().to_offset, total));
                }
                segs2.sort_by_key(|s| s.from_offset);
            }
        }
        eprintln!(
            "bytes copied per byte written: tiered {amplification:.1}, merge-all {:.1}",
            copied2 as f64 / written as f64
        );
        assert!(copied2 > 3 * copied, "{copied2} vs {copied}");
        // the target still caps a merged segment, and gaps split runs
        let segs = vec![
            seg(0, 10, 40),
            seg(10, 20, 10),
            seg(20, 30, 10),
            seg(30, 40, 10),
            seg(50, 60, 5),
            seg(60, 70, 5),
        ];
        let ranges = |gaps_ok| -> Vec<Vec<(u64, u64)>> {
            plan_tiered_compaction(&segs, 50, gaps_ok)
                .iter()
                .map(|g| g.iter().map(|s| (s.from_offset, s.to_offset)).collect())
                .collect()
        };
        // 0..10 (40) is larger than the 30 after it: it waits
        assert_eq!(
            ranges(false),
            vec![vec![(10, 20), (20, 30), (30, 40)], vec![(50, 60), (60, 70)]]
        );
        // late events and dead letters merge across the gap
        assert_eq!(
            ranges(true),
            vec![vec![(10, 20), (20, 30), (30, 40), (50, 60), (60, 70)]]
        );
    }

    #[test]
    fn segment_paths_sort_in_log_order() {
        let a = segment_path("raw", "t", 3, 9, 10, "parquet");
        let b = segment_path("raw", "t", 3, 10, 100, "parquet");
        assert!(a < b);
        assert!(a.starts_with(&shard_prefix("raw", "t", 3)));
    }
}
