//! Test support: the real lockstepd binary as a child process, generated
//! events, and the batch engine (what `lockstep run` runs) as the oracle.
#![allow(dead_code)]

use lockstep_api::Client;
use lockstep_core::value::{Row, Value};
use lockstep_core::{Catalog, Engine};
use lockstep_gen::{GenConfig, Generator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-123";
pub const SQL: &str = include_str!("../../../../config/ad_features.sql");
pub const VIEW: &str = "user_ad_features";

pub fn catalog() -> Arc<Catalog> {
    Arc::new(lockstep_core::parse_pipeline(SQL).unwrap())
}

/// A lockstepd process on a free port, with its own data directory.
pub struct Daemon {
    pub dir: PathBuf,
    pub addr: String,
    child: Option<Child>,
    extra: Vec<(String, String)>,
    env: Vec<(String, String)>,
    /// The CA (PEM) a node serving HTTPS is trusted with.
    pub ca: Option<Vec<u8>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

impl Daemon {
    pub fn start(dir: &Path, flags: &[(&str, &str)], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_at(dir, free_addr(), flags, env)
    }

    /// A node whose checkpoints wait an hour (tests take them) and whose
    /// debug hooks (`/debug/...`) are on.
    pub fn start_with_hooks(dir: &Path) -> Daemon {
        Daemon::start(
            dir,
            &[("checkpoint-interval", "1 hour")],
            &[("LOCKSTEP_DEBUG_HOOKS", "1")],
        )
    }

    /// Like [`Daemon::start`], listening on `addr`.
    pub fn start_at(
        dir: &Path,
        addr: String,
        flags: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start_sql(dir, addr, SQL, flags, env)
    }

    /// Like [`Daemon::start_at`], running the pipeline `sql`.
    pub fn start_sql(
        dir: &Path,
        addr: String,
        sql: &str,
        flags: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Daemon {
        let d = Daemon::launch_sql(dir, addr, sql, flags, env);
        d.wait_up();
        d
    }

    /// Like [`Daemon::launch_sql`], for a node serving HTTPS: its clients
    /// trust `ca` (PEM).
    pub fn launch_tls(
        dir: &Path,
        addr: String,
        sql: &str,
        flags: &[(&str, &str)],
        env: &[(&str, &str)],
        ca: &Path,
    ) -> Daemon {
        Daemon::launch_with(dir, addr, sql, flags, env, Some(std::fs::read(ca).unwrap()))
    }

    /// Like [`Daemon::start_sql`], without waiting for the node to be up
    /// (nodes that found a cluster together wait for each other).
    pub fn launch_sql(
        dir: &Path,
        addr: String,
        sql: &str,
        flags: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::launch_with(dir, addr, sql, flags, env, None)
    }

    fn launch_with(
        dir: &Path,
        addr: String,
        sql: &str,
        flags: &[(&str, &str)],
        env: &[(&str, &str)],
        ca: Option<Vec<u8>>,
    ) -> Daemon {
        std::fs::write(dir.join("pipeline.sql"), sql).unwrap();
        let mut d = Daemon {
            dir: dir.to_path_buf(),
            addr,
            child: None,
            extra: flags
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ca,
        };
        d.launch();
        d
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_up();
    }

    /// Waits until the node answers `/healthz` (it has started).
    pub fn wait_up(&self) {
        self.client()
            .wait_healthy(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("lockstepd did not come up: {e}\n{}", self.log()));
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockstepd"));
        cmd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--pipeline")
            .arg(self.dir.join("pipeline.sql"))
            .arg("--listen")
            .arg(&self.addr)
            .arg("--token")
            .arg(TOKEN);
        for (k, v) in &self.extra {
            cmd.arg(format!("--{k}")).arg(v);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("lockstepd.log"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("start lockstepd"));
    }

    pub fn client(&self) -> Client {
        match &self.ca {
            Some(ca) => Client::with_ca(&self.addr, TOKEN, ca).unwrap(),
            None => Client::new(&self.addr, TOKEN),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lockstepd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Restarts on another address (the old port may have been taken by
    /// another socket meanwhile).
    pub fn restart_at(&mut self, addr: String) {
        self.kill();
        self.addr = addr;
        self.spawn();
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit
    /// status, or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            let c = self.child.as_mut().expect("running");
            if let Some(st) = c.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts the process again after it exited on its own.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// SIGTERM and wait (graceful stop).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        let st = c.wait().unwrap();
        self.child = None;
        st
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs lockstepd on `data_dir` with `args`, expects it to refuse to start,
/// and returns what it printed.
pub fn lockstepd_refuses(data_dir: &Path, args: &[&str]) -> String {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstepd"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--token")
        .arg(TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // read stderr meanwhile: a node that logs a lot must not block on it
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    // a node that unexpectedly starts fails the test instead of hanging it
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lockstepd with {args:?} was still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = reader.join().unwrap().unwrap();
    assert!(!status.success(), "lockstepd started with {args:?}");
    err
}

/// Generated events as rows of `ad_events`.
pub fn events(n: u64, users: u64, seed: u64) -> Vec<Row> {
    let gen = Generator::new(GenConfig {
        events: n,
        users,
        seed,
        // a second between events: short streams still span more than the
        // 15-minute label horizon, so rows become final
        mean_gap_ms: 1000.0,
        ..GenConfig::default()
    })
    .unwrap();
    gen.map(|e| {
        vec![
            Value::BigInt(e.event_id),
            Value::Text(Arc::from(e.user_id)),
            Value::BigInt(e.campaign_id),
            Value::text(e.kind.as_str()),
            Value::Text(Arc::from(e.ip)),
            Value::Text(Arc::from(e.user_agent)),
            Value::Timestamp(e.event_time_ms),
        ]
    })
    .collect()
}

/// JSON lines for events.
pub fn jsonl(rows: &[Row]) -> String {
    let schema = &catalog().tables[0].schema;
    let mut s = String::new();
    for r in rows {
        s.push_str(&lockstep_io::render_json(r, schema));
        s.push('\n');
    }
    s
}

/// What `lockstep run` computes over the same events, per shard in emission
/// order, and the engine afterwards (no end-of-input flush: rows waiting for
/// their labels are not final online either).
pub fn batch_rows(rows: &[Row]) -> (Vec<Vec<Row>>, Engine) {
    let catalog = catalog();
    let mut e = Engine::new(catalog.clone(), &[VIEW]).unwrap();
    let mut out = Vec::new();
    let mut per_shard = vec![Vec::new(); catalog.tables[0].shards as usize];
    for r in rows {
        e.push(r, &mut out).unwrap();
        for em in out.drain(..) {
            per_shard[em.shard as usize].push(em.row);
        }
    }
    (per_shard, e)
}

/// The committed training rows, via `export`, grouped per shard in order.
pub fn exported(client: &Client, dir: &Path) -> Vec<Row> {
    let out = dir.join(format!("export-{}.parquet", rand_suffix()));
    lockstep_offline::export(client, VIEW, &out).unwrap();
    let schema = catalog().view(VIEW).unwrap().1.output.clone();
    lockstep_io::read_rows(&out, &schema).unwrap()
}

/// The committed training rows of `view` of the pipeline `sql`, via
/// `export`.
pub fn export_view(client: &Client, dir: &Path, sql: &str, view: &str) -> Vec<Row> {
    let out = dir.join(format!("export-{view}-{}.parquet", rand_suffix()));
    lockstep_offline::export(client, view, &out).unwrap();
    let catalog = lockstep_core::parse_pipeline(sql).unwrap();
    lockstep_io::read_rows(&out, &catalog.view(view).unwrap().1.output).unwrap()
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Asserts two row lists are equal bit for bit, naming the first difference.
pub fn assert_rows_eq(got: &[Row], want: &[Row], what: &str) {
    assert!(!want.is_empty(), "{what}: nothing to compare");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            lockstep_core::value::rows_bit_eq(g, w),
            "{what}: row {i} differs:\n got  {g:?}\n want {w:?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: row counts differ");
}

/// The seed in `var`, or a fresh one (tests print it on failure).
pub fn seed_from(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        })
}

/// A test CA and certificates it signs (rcgen), as PEM files in `dir`.
pub struct TestPki {
    pub ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
}

impl TestPki {
    pub fn new(dir: &Path, name: &str) -> TestPki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).unwrap();
        TestPki {
            ca,
            issuer: rcgen::Issuer::new(params, key),
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for 127.0.0.1 and localhost (server and client use):
    /// its (cert, key) files.
    pub fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// Runs lockstepctl in-process with the test token and `args`: whether it
/// succeeded, and what it printed (with its error, if any).
pub fn run_ctl(args: &[&str]) -> (bool, String) {
    run_ctl_as(TOKEN, args)
}

/// [`run_ctl`] with another token.
pub fn run_ctl_as(token: &str, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["lockstepctl", "--token", token];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let r = lockstep_ctl::run_args(argv, &mut out);
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if let Err(e) = &r {
        text.push_str(&format!("lockstepctl: {e:#}"));
    }
    (r.is_ok(), text)
}
