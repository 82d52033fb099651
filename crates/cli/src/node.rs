//! Starting a local lockstepd for `quickstart` and `bench`: the real daemon
//! binary (built next to `lockstep`), on the embedded default.

use anyhow::{bail, Context};
use lockstep_api::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct LocalNode {
    child: Option<Child>,
    pub addr: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// The lockstepd binary: next to this executable (cargo builds both into
/// the same directory), or LOCKSTEPD.
pub fn lockstepd_path() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("LOCKSTEPD") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating the lockstep executable")?;
    let p = me.with_file_name("lockstepd");
    if !p.exists() {
        bail!(
            "lockstepd is not built next to {} — run `cargo build --release` (the whole workspace) first, or set LOCKSTEPD",
            me.display()
        );
    }
    Ok(p)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalNode {
    /// Starts a node for `pipeline` with its data under `dir`.
    pub fn start(
        dir: &Path,
        pipeline: &Path,
        checkpoint_interval: &str,
    ) -> anyhow::Result<LocalNode> {
        LocalNode::start_with(dir, pipeline, checkpoint_interval, &[])
    }

    /// [`LocalNode::start`] with more flags (`--name value`).
    pub fn start_with(
        dir: &Path,
        pipeline: &Path,
        checkpoint_interval: &str,
        flags: &[(&str, &str)],
    ) -> anyhow::Result<LocalNode> {
        let bin = lockstepd_path()?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let token = format!("quickstart-{}", std::process::id());
        let data_dir = dir.join("node");
        let log = dir.join("lockstepd.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .arg("--pipeline")
            .arg(pipeline)
            .arg("--listen")
            .arg(&addr)
            .arg("--token")
            .arg(&token)
            .arg("--checkpoint-interval")
            .arg(checkpoint_interval);
        for (k, v) in flags {
            cmd.arg(format!("--{k}")).arg(v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let node = LocalNode {
            child: Some(child),
            addr,
            token,
            data_dir,
            log,
        };
        node.client()
            .wait_healthy(Duration::from_secs(60))
            .with_context(|| format!("lockstepd did not start; see {}", node.log.display()))?;
        Ok(node)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.addr, &self.token)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        if let Some(c) = &self.child {
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()?;
        }
        Ok(())
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop (SIGTERM: a final checkpoint), waiting for the exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()?;
            let st = c.wait()?;
            if !st.success() {
                bail!("lockstepd exited with {st}; see {}", self.log.display());
            }
        }
        Ok(())
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls the node until every shard has processed its whole log.
/// Sends one ingest body, retried while the node answers `503` (its
/// shards are `max_shard_backlog` behind, or a views apply runs) after
/// 20 ms, sooner than its `Retry-After: 1` so the shards never idle. Any
/// other status but 200 is an error.
pub fn send_events(c: &Client, table: &str, body: &[u8]) -> anyhow::Result<()> {
    let path = format!("/v1/tables/{}/events", lockstep_api::path_segment(table));
    // a 503 may come after the events were appended (the request's
    // deadline passed): the retry carries the same key, so it appends
    // nothing twice
    static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = format!(
        "lockstep-cli-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    loop {
        let r = c.request(
            "POST",
            &path,
            Some(body),
            &[(lockstep_api::IDEMPOTENCY_KEY, key.as_str())],
        )?;
        match r.status {
            200 => return Ok(()),
            503 => std::thread::sleep(Duration::from_millis(20)),
            s => bail!("ingest answered {s}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
}

pub fn wait_caught_up(c: &Client) -> anyhow::Result<()> {
    loop {
        let st = c.get_json("/v1/status")?;
        if st["lag"].as_u64() == Some(0) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
