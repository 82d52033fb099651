//! The local-directory object store, durable: object_store's
//! `LocalFileSystem` writes a temporary file and renames it into place but
//! never fsyncs, so after a power loss a checkpoint's objects could be
//! missing or empty while the log they archive was already truncated. This
//! wrapper fsyncs each object written (put, multipart, copy, rename) and
//! every directory from its parent up to the store's root before it
//! answers, so "written" means "on disk" as it does on S3.
//!
//! With `LOCKSTEP_DEBUG_HOOKS=1`, `POST /v1/debug/faults/objects/on` makes
//! every write fail (tests show that a failed write loses nothing
//! acknowledged).

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Test fault: object writes fail while set (debug hooks only).
pub static FAIL_WRITES: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
pub struct DurableLocal {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
}

impl DurableLocal {
    pub fn new(root: &std::path::Path) -> Result<DurableLocal> {
        let root = std::fs::canonicalize(root).map_err(|e| generic(e.into()))?;
        Ok(DurableLocal {
            inner: Arc::new(LocalFileSystem::new_with_prefix(&root)?),
            root,
        })
    }

    /// Deletes the staged parts of multipart uploads that a process killed
    /// in the middle left behind (`LocalFileSystem` stages them as
    /// `<object>#<n>`, which listings skip, so nothing else would): those
    /// untouched for `older_than` (an upload under way writes its file at
    /// every part). Returns how many were deleted.
    pub fn sweep_staged_parts(&self, older_than: std::time::Duration) -> usize {
        fn walk(dir: &std::path::Path, older_than: std::time::Duration, n: &mut usize) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let (path, Ok(meta)) = (e.path(), e.metadata()) else {
                    continue;
                };
                if meta.is_dir() {
                    walk(&path, older_than, n);
                } else if e.file_name().to_string_lossy().contains('#')
                    && meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age >= older_than)
                    && std::fs::remove_file(&path).is_ok()
                {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(&self.root, older_than, &mut n);
        n
    }

    /// Fsyncs `location`'s file and the directories above it, up to the
    /// root.
    async fn sync(&self, location: &Path) -> Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        sync_file_and_dirs(file, self.root.clone()).await
    }
}

fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic {
        store: "DurableLocal",
        source,
    }
}

fn check_faults() -> Result<()> {
    if FAIL_WRITES.load(Ordering::Relaxed) {
        return Err(generic("injected fault: object writes fail".into()));
    }
    Ok(())
}

async fn sync_file_and_dirs(file: PathBuf, root: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        synced(&file);
        let mut dir = file.parent();
        while let Some(d) = dir {
            // a directory is opened read-only to fsync its entries
            std::fs::File::open(d)?.sync_all()?;
            synced(d);
            if d == root {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    })
    .await
    .map_err(|e| generic(e.into()))?
    .map_err(|e| generic(e.into()))
}

#[cfg(test)]
static SYNCED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn synced(_p: &std::path::Path) {
    #[cfg(test)]
    SYNCED.lock().unwrap().push(_p.to_path_buf());
}

impl std::fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DurableLocal({})", self.root.display())
    }
}

/// A multipart upload whose completion fsyncs the object.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
    root: PathBuf,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        check_faults()?;
        let r = self.inner.complete().await?;
        sync_file_and_dirs(self.file.clone(), self.root.clone()).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        check_faults()?;
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        check_faults()?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            file: self.inner.path_to_filesystem(location)?,
            root: self.root.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // a delete lost to a power loss is redone by the next garbage
        // collection: no fsync
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        check_faults()?;
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        check_faults()?;
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await?;
        // the entry left `from`'s directory too
        let old = self.inner.path_to_filesystem(from)?;
        match old.parent() {
            Some(dir) if dir.exists() => {
                sync_file_and_dirs(dir.to_path_buf(), self.root.clone()).await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// An upload a killed process left half way stages its parts in a
    /// file listings skip; the sweep deletes it once it is old enough, and
    /// leaves objects and young uploads alone.
    #[tokio::test]
    async fn parts_an_unfinished_upload_left_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocal::new(dir.path()).unwrap();
        store
            .put(&Path::from("a/done.seg"), PutPayload::from_static(b"xyz"))
            .await
            .unwrap();
        let mut upload = store
            .put_multipart(&Path::from("a/half.seg"))
            .await
            .unwrap();
        upload
            .put_part(PutPayload::from_static(b"part one"))
            .await
            .unwrap();
        // the process dies: nobody completes or aborts it
        std::mem::forget(upload);
        let files = |dir: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir.join("a"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let before = files(dir.path());
        assert_eq!(before.len(), 2, "{before:?}");
        assert!(
            before.iter().any(|f| f.starts_with("half.seg#")),
            "{before:?}"
        );
        // young: it may be under way
        assert_eq!(
            store.sweep_staged_parts(std::time::Duration::from_secs(3600)),
            0
        );
        assert_eq!(files(dir.path()), before);
        assert_eq!(store.sweep_staged_parts(std::time::Duration::ZERO), 1);
        assert_eq!(files(dir.path()), vec!["done.seg".to_string()]);
    }

    #[tokio::test]
    async fn a_put_is_fsynced_with_every_directory_up_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocal::new(dir.path()).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        store
            .put(&Path::from("a/b/c.seg"), PutPayload::from_static(b"xyz"))
            .await
            .unwrap();
        let seen = SYNCED.lock().unwrap().clone();
        for want in [
            root.join("a/b/c.seg"),
            root.join("a/b"),
            root.join("a"),
            root.clone(),
        ] {
            assert!(
                seen.contains(&want),
                "{} not fsynced: {seen:?}",
                want.display()
            );
        }
        assert!(
            !seen.contains(&root.parent().unwrap().to_path_buf()),
            "nothing above the root"
        );
        let got = store.get(&Path::from("a/b/c.seg")).await.unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"xyz");
        // a multipart upload is fsynced when it completes
        let mut up = store.put_multipart(&Path::from("m/p.seg")).await.unwrap();
        up.put_part(PutPayload::from_static(b"12")).await.unwrap();
        up.complete().await.unwrap();
        assert!(SYNCED.lock().unwrap().contains(&root.join("m/p.seg")));
    }
}
