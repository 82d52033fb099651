//! Hostile requests through the real binary: each one is refused or
//! bounded, answered, and the node's memory stays bounded
//! (docs/operations.md, "Limits").

mod support;

use std::io::Write;
use std::time::Duration;
use support::*;

/// The tests here measure a node's limits (connections, concurrent
/// requests, memory): they run one at a time, so no other test's node
/// competes with the one under test.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's peak resident memory so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Lets the peak (VmHWM) start again from the process's memory now.
fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
}

const EVENTS: &str = "/v1/tables/ad_events/events";

#[test]
fn a_30_mib_body_of_empty_objects_is_refused_with_bounded_memory() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[], &[]);
    let c = d.client();
    let before = peak_rss_kib(d.pid());
    // 10 Mi lines of `{}`: 30 MiB, under the 32 MiB body limit
    let body = "{}\n".repeat(10 << 20);
    let r = c
        .request("POST", EVENTS, Some(body.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    eprintln!(
        "after lines: {} MiB",
        peak_rss_kib(d.pid()).saturating_sub(before) / 1024
    );
    assert!(
        r.error_body().error.contains("max_events_per_request"),
        "{:?}",
        r.error_body()
    );
    // as a JSON array too
    let array = format!("[{}{{}}]", "{},".repeat(8 << 20));
    let r = c
        .request("POST", EVENTS, Some(array.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    eprintln!(
        "after array: {} MiB",
        peak_rss_kib(d.pid()).saturating_sub(before) / 1024
    );
    // the most one request may carry, every event bad, with a key: the
    // reply lists 100 errors and counts the rest; all are dead letters
    let body = "{}\n".repeat(100_000);
    let key = [("Idempotency-Key", "all-bad")];
    let r = c
        .request("POST", EVENTS, Some(body.as_bytes()), &key)
        .unwrap();
    assert_eq!(r.status, 400);
    eprintln!(
        "after 100k bad: {} MiB",
        peak_rss_kib(d.pid()).saturating_sub(before) / 1024
    );
    let j = r.json();
    assert_eq!(j["rejected"], 100_000);
    assert_eq!(j["errors"].as_array().unwrap().len(), 100);
    assert_eq!(j["errors_omitted"], 99_900);
    // its replay answers from the record's summary
    let again = c
        .request("POST", EVENTS, Some(body.as_bytes()), &key)
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.json()["rejected"], 100_000);
    assert_eq!(again.json()["errors"].as_array().unwrap().len(), 10);
    assert_eq!(again.json()["errors_omitted"], 99_990);
    eprintln!(
        "after replay: {} MiB",
        peak_rss_kib(d.pid()).saturating_sub(before) / 1024
    );
    let listed = c.dead_letters("ad_events", 100_000).unwrap();
    assert_eq!(listed.dead_letters.len(), 10_000, "a listing is capped");
    let grown = peak_rss_kib(d.pid()).saturating_sub(before);
    eprintln!("peak memory grew by {} MiB", grown / 1024);
    assert!(
        grown < 512 * 1024,
        "the node's peak memory grew by {} MiB",
        grown / 1024
    );
    // and it still ingests
    let rows = events(100, 5, 1);
    let r = c
        .request("POST", EVENTS, Some(jsonl(&rows).as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn an_idempotency_key_reused_for_another_body_is_refused() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[], &[]);
    let rows = events(200, 10, 2);
    let (a, b) = (jsonl(&rows[..100]), jsonl(&rows[100..]));
    let key = [("Idempotency-Key", "batch-7")];
    let c = d.client();
    let first = c.request("POST", EVENTS, Some(a.as_bytes()), &key).unwrap();
    assert_eq!(first.status, 200);
    let same = c.request("POST", EVENTS, Some(a.as_bytes()), &key).unwrap();
    assert!(same.replayed, "an identical retry is a replay");
    let other = c.request("POST", EVENTS, Some(b.as_bytes()), &key).unwrap();
    assert_eq!(
        other.status,
        422,
        "{}",
        String::from_utf8_lossy(&other.body)
    );
    assert!(other.error_body().error.contains("different body"));
    // within one group commit as well: two requests racing with one key
    let key2 = [("Idempotency-Key", "batch-8")];
    let outcomes: Vec<u16> = std::thread::scope(|s| {
        let h1 = s.spawn(|| c.request("POST", EVENTS, Some(a.as_bytes()), &key2));
        let h2 = s.spawn(|| c.request("POST", EVENTS, Some(b.as_bytes()), &key2));
        vec![
            h1.join().unwrap().unwrap().status,
            h2.join().unwrap().unwrap().status,
        ]
    });
    let mut sorted = outcomes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![200, 422], "{outcomes:?}");
    // the body's hash survives SIGKILL
    d.kill();
    d.restart();
    let c = d.client();
    let other = c.request("POST", EVENTS, Some(b.as_bytes()), &key).unwrap();
    assert_eq!(other.status, 422);
    let same = c.request("POST", EVENTS, Some(a.as_bytes()), &key).unwrap();
    assert!(same.replayed);
}

#[test]
fn oversized_events_and_too_many_requests_are_refused() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[
            ("max-event-bytes", "1024"),
            ("max-concurrent-requests", "1"),
        ],
        &[],
    );
    let c = d.client();
    let rows = events(3, 2, 3);
    let mut big = rows[1].clone();
    big[5] = lockstep_core::value::Value::text(&"x".repeat(2000));
    let body = jsonl(&[rows[0].clone(), big.clone(), rows[2].clone()]);
    let r = c
        .request("POST", EVENTS, Some(body.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 413);
    let msg = r.error_body().error;
    assert!(
        msg.contains("event 1") && msg.contains("1024") && msg.contains("max_event_bytes"),
        "{msg}"
    );
    let one = jsonl(&[big]);
    let r = c
        .request(
            "POST",
            "/v1/views/user_ad_features/features",
            Some(one.as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 413);
    // one request in flight (its body still coming) takes the only slot;
    // if it reached the node while a status request below held the slot,
    // it was itself refused (its connection has an answer): send it again
    let hold = || {
        let mut slow = std::net::TcpStream::connect(&d.addr).unwrap();
        write!(
            slow,
            "POST {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n{{"
        )
        .unwrap();
        slow.flush().unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        slow
    };
    let answered = |s: &mut std::net::TcpStream| {
        use std::io::Read;
        let mut b = [0u8; 64];
        s.read(&mut b).is_ok()
    };
    let mut slow = hold();
    let mut refused = None;
    let mut seen = Vec::new();
    for _ in 0..400 {
        let r = c.request("GET", "/v1/status", None, &[]).unwrap();
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        seen.push(r.status);
        if answered(&mut slow) {
            slow = hold();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "a second request is refused while the slot is taken; statuses seen: {:?}\n{}",
            &seen[..seen.len().min(20)],
            d.log()
        )
    });
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert!(refused
        .error_body()
        .error
        .contains("max_concurrent_requests"));
    // health checks still answer
    let h = c.request("GET", "/healthz", None, &[]).unwrap();
    assert_eq!(h.status, 200);
    drop(slow);
    let mut ok = false;
    for _ in 0..200 {
        if c.request("GET", "/v1/status", None, &[]).unwrap().status == 200 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(ok, "the slot is given back when the request ends");
}

#[test]
fn names_that_would_need_escaping_are_refused_at_create() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // at start-up: the node does not start, naming where and why
    let bad = SQL.replace("ad_events", "seitenaufrufe_ä");
    let path = dir.path().join("bad.sql");
    std::fs::write(&path, &bad).unwrap();
    let out = lockstepd_refuses(
        &dir.path().join("data"),
        &["--pipeline", path.to_str().unwrap()],
    );
    assert!(
        out.contains("seitenaufrufe_ä") && out.contains("ASCII letters"),
        "{out}"
    );
    // through views apply: 400 with the position, nothing changes
    let d = Daemon::start(dir.path(), &[], &[]);
    let c = d.client();
    let new_sql = format!(
        "{SQL}\nCREATE VIEW besucher_signale_ü AS SELECT event_id, user_id FROM ad_events;"
    );
    let r = c
        .request("POST", "/v1/views", Some(new_sql.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let e = r.error_body();
    assert!(e.error.contains("besucher_signale_ue"), "{e:?}");
    assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
    assert_eq!(c.views().unwrap().views.len(), 1);
}

#[test]
fn dead_letters_are_kept_within_their_limit() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[("max-dead-letters", "100")], &[]);
    let c = d.client();
    for r in 1..=3 {
        let body = format!("{{\"from_request_{r}\": true}}\n").repeat(60);
        let reply = c
            .request("POST", EVENTS, Some(body.as_bytes()), &[])
            .unwrap();
        assert_eq!(reply.status, 400);
    }
    // the writer handles requests in order: once a later one is answered,
    // the earlier ones' retention has run
    let rows = events(1, 1, 4);
    c.request("POST", EVENTS, Some(jsonl(&rows).as_bytes()), &[])
        .unwrap();
    let count = |c: &lockstep_api::Client, r: u32| {
        c.dead_letters("ad_events", 10_000)
            .unwrap()
            .dead_letters
            .iter()
            .filter(|l| l.raw.contains(&format!("from_request_{r}")))
            .count()
    };
    // whole requests go, oldest first, until at most 100 are kept
    assert_eq!((count(&c, 1), count(&c, 2), count(&c, 3)), (0, 0, 60));
    let m = c.request("GET", "/metrics", None, &[]).unwrap();
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("lockstep_dead_letters_dropped_total 120"),
        "{text}"
    );
    // and after a restart the same letters are there, and the count holds
    d.kill();
    d.restart();
    let c = d.client();
    assert_eq!((count(&c, 1), count(&c, 3)), (0, 60));
    let body = "{\"from_request_4\": true}\n".repeat(60);
    c.request("POST", EVENTS, Some(body.as_bytes()), &[])
        .unwrap();
    c.request("POST", EVENTS, Some(jsonl(&rows).as_bytes()), &[])
        .unwrap();
    assert_eq!((count(&c, 3), count(&c, 4)), (0, 60));
}

#[test]
fn a_compaction_target_beyond_the_cap_is_refused() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[], &[]);
    let c = d.client();
    let r = c
        .request(
            "POST",
            "/v1/segments/compact?target_bytes=1000000000000",
            Some(b""),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.error_body().error.contains("64 GiB"),
        "{:?}",
        r.error_body()
    );
    // within it, compaction runs
    let r = c
        .request(
            "POST",
            "/v1/segments/compact?target_bytes=1048576",
            Some(b""),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Reads what the server sends until it closes the connection (or 60 s
/// pass: then the connection was kept open, which the caller asserts
/// against).
fn read_until_closed(s: &mut std::net::TcpStream) -> (bool, String) {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (true, String::from_utf8_lossy(&got).into())
            }
            Err(_) => return (false, String::from_utf8_lossy(&got).into()),
        }
    }
}

#[test]
fn slow_clients_are_cut_off_and_requests_have_a_deadline() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[("header-read-timeout", "1 s"), ("request-timeout", "2 s")],
        &[],
    );
    // slowloris: headers that never end
    let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
    write!(s, "GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: a").unwrap();
    let (closed, got) = read_until_closed(&mut s);
    assert!(
        closed,
        "a client that never finishes its headers is cut off"
    );
    assert!(!got.contains("200 OK"), "{got}");
    // a body that never finishes: answered 503 at the deadline
    let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
    write!(
        s,
        "POST {EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n{{\"user_id\""
    )
    .unwrap();
    let (closed, got) = read_until_closed(&mut s);
    assert!(closed, "the request ends at its deadline: {got}");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("request_timeout"), "{got}");
    assert!(got.to_ascii_lowercase().contains("retry-after: 1"), "{got}");
    // the node goes on answering
    let r = d.client().request("GET", "/v1/status", None, &[]).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn connections_past_the_cap_are_closed_at_once() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[("max-connections", "3"), ("header-read-timeout", "5 min")],
        &[],
    );
    // three kept-alive connections, each seen through one request (the
    // start-up's readiness polls may still hold a slot for a moment after
    // their client closed them: a connection closed unanswered is retried)
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut kept = None;
        for _ in 0..100 {
            let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
            let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 512];
            let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
            if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200") {
                kept = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        held.push(kept.expect("a connection within the cap is served"));
    }
    let mut fourth = std::net::TcpStream::connect(&d.addr).unwrap();
    let _ = write!(fourth, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (closed, got) = read_until_closed(&mut fourth);
    assert!(
        closed && got.is_empty(),
        "the fourth is closed unanswered: {got:?}"
    );
    // one closes: a new connection is served again
    drop(held.pop());
    let mut served = false;
    for _ in 0..100 {
        if let Ok(r) = d.client().request("GET", "/healthz", None, &[]) {
            if r.status == 200 {
                served = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "a slot frees when a connection closes\n{}", d.log());
}

#[test]
fn ingest_is_refused_not_queued_while_shards_are_behind_or_a_views_apply_runs() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[("max-shard-backlog", "100")],
        &[("LOCKSTEP_DEBUG_HOOKS", "1")],
    );
    let c = d.client();
    let shards = c.status().unwrap().shards.len();
    for s in 0..shards {
        let r = c
            .request(
                "POST",
                &format!("/v1/debug/shards/{s}/stall/4000"),
                None,
                &[],
            )
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let rows = events(300, 20, 4);
    let first = c
        .request("POST", EVENTS, Some(jsonl(&rows[..200]).as_bytes()), &[])
        .unwrap();
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let second = c
        .request("POST", EVENTS, Some(jsonl(&rows[200..]).as_bytes()), &[])
        .unwrap();
    assert_eq!(
        second.status,
        503,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    assert_eq!(second.retry_after.as_deref(), Some("1"));
    assert!(second.error_body().error.contains("max_shard_backlog"));
    // once the shards catch up, the retry is taken
    let mut taken = false;
    for _ in 0..400 {
        let r = c
            .request("POST", EVENTS, Some(jsonl(&rows[200..]).as_bytes()), &[])
            .unwrap();
        if r.status == 200 {
            taken = true;
            break;
        }
        assert_eq!(r.status, 503);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(taken, "{}", d.log());
    // while a views apply holds ingest: refused at once, not held
    let r = c
        .request("POST", "/v1/debug/hold-ingest/60000", None, &[])
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c
        .request("POST", EVENTS, Some(jsonl(&rows[..1]).as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(
        r.error_body().error.contains("views apply"),
        "{:?}",
        r.error_body()
    );
    let metrics = c.request("GET", "/metrics", None, &[]).unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("lockstep_refused_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused_requests metric:\n{text}"));
    assert!(refused >= 2.0, "{refused}");
}

/// `GET /v1/objects/…` streams: a 300 MiB object is served whole while
/// the node's peak memory grows by far less than its size.
#[test]
fn a_large_object_is_streamed_not_loaded() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[], &[]);
    let objects = dir.path().join("data/objects/big");
    std::fs::create_dir_all(&objects).unwrap();
    let size: usize = 300 << 20;
    {
        let mut f = std::fs::File::create(objects.join("blob.bin")).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        for _ in 0..size >> 20 {
            f.write_all(&chunk).unwrap();
        }
    }
    let before = peak_rss_kib(d.pid());
    // read it as a client would, without keeping it
    let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
    write!(
        s,
        "GET /v1/objects/big/blob.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total > size, "headers and {size} bytes: got {total}");
    let grown = peak_rss_kib(d.pid()).saturating_sub(before);
    eprintln!(
        "peak memory grew by {} MiB serving {} MiB",
        grown / 1024,
        size >> 20
    );
    assert!(
        grown < 100 * 1024,
        "the node's peak memory grew by {} MiB",
        grown / 1024
    );
}

/// SIGTERM while a client stalls in the middle of a download: the node
/// waits `request_timeout` for it, then cuts it and stops (before, the
/// stalled connection kept the ingest writer's queue open and the node
/// never exited).
#[test]
fn a_stalled_download_does_not_keep_the_node_from_stopping() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[("request-timeout", "2 seconds")], &[]);
    let objects = dir.path().join("data/objects/big");
    std::fs::create_dir_all(&objects).unwrap();
    {
        let mut f = std::fs::File::create(objects.join("blob.bin")).unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..64 {
            f.write_all(&chunk).unwrap();
        }
    }
    let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
    write!(
        s,
        "GET /v1/objects/big/blob.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 16];
    std::io::Read::read_exact(&mut s, &mut head).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    // the client reads no more; the node is asked to stop
    let pid = d.pid();
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stopped.clone();
    // a bound on the wait (not a measurement): a node still up after two
    // minutes is killed, and the test fails on its exit status
    let watchdog = std::thread::spawn(move || {
        for _ in 0..1200 {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        true
    });
    let status = d.terminate();
    stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = watchdog.join().unwrap();
    drop(s);
    assert!(
        !killed && status.success(),
        "the node did not stop with a stalled client ({status})"
    );
}

/// A compaction merges outside the shard actors: while its merges are
/// held (a test hook), the shards go on ingesting and serving; then it
/// finishes and the training rows are those of the batch engine.
#[test]
fn shards_ingest_and_serve_while_a_compaction_merges() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[("checkpoint-interval", "1 hour")],
        &[("LOCKSTEP_DEBUG_HOOKS", "1")],
    );
    let c = d.client();
    let rows = events(3000, 40, 31);
    // three checkpoints: three segments per stream and shard to merge
    for part in rows[..2000].chunks(700) {
        let r = c
            .request("POST", EVENTS, Some(jsonl(part).as_bytes()), &[])
            .unwrap();
        assert_eq!(r.status, 200);
        c.post_json("/v1/checkpoint", b"").unwrap();
    }
    let r = c
        .request("POST", "/v1/debug/faults/merge-stall/4000", None, &[])
        .unwrap();
    assert_eq!(r.status, 200);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let compactor = {
        let c = d.client();
        std::thread::spawn(move || {
            let r = c.request("POST", "/v1/segments/compact", Some(b""), &[]);
            let _ = done_tx.send(());
            r
        })
    };
    // while the first merge is held: every shard ingests and serves
    std::thread::sleep(Duration::from_millis(300));
    let r = c
        .request("POST", EVENTS, Some(jsonl(&rows[2000..]).as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let users: std::collections::BTreeSet<String> = rows.iter().map(|r| r[1].to_string()).collect();
    assert!(users.len() > 16);
    for user in &users {
        let r = c
            .request(
                "GET",
                &format!("/v1/views/user_ad_features/keys/{user}"),
                None,
                &[],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert!(
        done_rx.try_recv().is_err(),
        "the compaction was still merging while the shards answered"
    );
    let r = c
        .request("POST", "/v1/debug/faults/merge-stall/0", None, &[])
        .unwrap();
    assert_eq!(r.status, 200);
    let report = compactor.join().unwrap().unwrap();
    assert_eq!(
        report.status,
        200,
        "{}",
        String::from_utf8_lossy(&report.body)
    );
    let merged: u64 = report.json()["compactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["merged_groups"].as_u64().unwrap())
        .sum();
    assert!(merged > 0, "{}", report.json());
    c.post_json("/v1/checkpoint", b"").unwrap();
    let (want, _) = batch_rows(&rows);
    let want: Vec<_> = want.into_iter().flatten().collect();
    assert_rows_eq(
        &exported(&c, dir.path()),
        &want,
        "training rows after a compaction that ran beside ingest",
    );
}

/// A compaction, a backfill and a views apply's rebuild of one shard
/// holding ~250 MiB of events stream them: the node's peak memory grows by
/// far less than one segment (before, a merge held its run three times
/// over, a backfill the shard's whole archive and all its rows, a rebuild
/// each segment whole and all the new view's rows). Each is measured on a node started
/// afresh (the allocator keeps what it freed, so a peak measured after the
/// ingest would hide what the operation needs). The merged archive replays
/// to the same rows.
#[test]
fn a_large_shard_is_compacted_backfilled_and_rebuilt_in_bounded_memory() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[("checkpoint-interval", "1 hour")], &[]);
    let c = d.client();
    // one user: every event in one shard; 16 KiB user agents
    let pad = lockstep_core::value::Value::text(&"u".repeat(16 << 10));
    let mut rows = events(16_000, 1, 5);
    for r in &mut rows {
        r[5] = pad.clone();
    }
    // raw segments of ~115, ~115 and ~30 MiB
    for (i, part) in rows.chunks(1800).enumerate() {
        let r = c
            .request("POST", EVENTS, Some(jsonl(part).as_bytes()), &[])
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if i % 4 == 3 {
            c.checkpoint().unwrap();
        }
    }
    c.checkpoint().unwrap();
    let raw = |c: &lockstep_api::Client| {
        c.segments(Some("raw"), None, None)
            .unwrap()
            .segments
            .into_iter()
            .filter(|s| s.rows > 0)
            .collect::<Vec<_>>()
    };
    let before = raw(&c);
    let data: u64 = before.iter().map(|s| s.bytes).sum();
    let largest = before.iter().map(|s| s.bytes).max().unwrap_or(0);
    assert!(
        before.len() == 3 && data > 240 << 20 && largest > 100 << 20,
        "{before:?}"
    );
    // the peak's growth (MiB) over `f` on the node started again
    let grown_by = |d: &mut Daemon, f: &mut dyn FnMut(&lockstep_api::Client)| {
        d.terminate();
        d.start_again();
        let pid = d.pid();
        reset_peak_rss(pid);
        let at = peak_rss_kib(pid);
        f(&d.client());
        peak_rss_kib(pid).saturating_sub(at) / 1024
    };
    let first = dir.path().join("first.parquet");
    let backfill = grown_by(&mut d, &mut |c| {
        let rep = lockstep_offline::backfill(c, VIEW, None, None, &first, &mut |_, _| {}).unwrap();
        assert_eq!(rep.events, 16_000);
    });
    let compaction = grown_by(&mut d, &mut |c| {
        let rep = c.compact(1 << 30).unwrap();
        assert!(
            rep.compactions.iter().any(|r| r.merged_groups > 0),
            "{rep:?}"
        );
    });
    let c = d.client();
    let after = raw(&c);
    assert_eq!(after.len(), 1, "one merged raw segment: {after:?}");
    assert_eq!(after[0].rows, 16_000);
    let again = dir.path().join("again.parquet");
    let merged_backfill = grown_by(&mut d, &mut |c| {
        lockstep_offline::backfill(c, VIEW, None, None, &again, &mut |_, _| {}).unwrap();
    });
    let catalog = catalog();
    let schema = &catalog.view(VIEW).unwrap().1.output;
    assert_rows_eq(
        &lockstep_io::read_rows(&again, schema).unwrap(),
        &lockstep_io::read_rows(&first, schema).unwrap(),
        "backfill of the merged archive",
    );
    // a new view: every shard rebuilds from its archive, writing the
    // view's whole history
    let sql = format!(
        "{SQL}\nCREATE VIEW user_event_counts AS SELECT event_id, user_id, event_time, COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW) AS events_1h FROM ad_events;\n"
    );
    let rebuild = grown_by(&mut d, &mut |c| {
        c.apply_views(sql.as_bytes()).unwrap();
    });
    // the view's whole history: what a replay of the archive through it
    // gives (a backfill: the other streaming path, run by the node)
    let c = d.client();
    let rebuilt = export_view(&c, dir.path(), &sql, "user_event_counts");
    let out = dir.path().join("counts.parquet");
    lockstep_offline::backfill(&c, "user_event_counts", None, None, &out, &mut |_, _| {}).unwrap();
    let parsed = lockstep_core::parse_pipeline(&sql).unwrap();
    let replayed =
        lockstep_io::read_rows(&out, &parsed.view("user_event_counts").unwrap().1.output).unwrap();
    assert!(rebuilt.len() > 15_000, "{} rows", rebuilt.len());
    assert_rows_eq(
        &rebuilt,
        &replayed,
        "the rebuilt view vs a replay of the archive",
    );
    eprintln!(
        "{} MiB in one shard (largest segment {} MiB); peak memory grew by {backfill} MiB in a backfill, {compaction} MiB in a compaction, {merged_backfill} MiB in a backfill of the merged segment, {rebuild} MiB in a views apply's rebuild",
        data >> 20,
        largest >> 20
    );
    // a rebuild also builds the shard's new state beside the old and
    // commits it to the state store (here ~15 MiB of held rows, each with
    // its 16 KiB user agent): far less than the merged segment it replays
    assert!(
        backfill < 64 && compaction < 64 && merged_backfill < 64 && rebuild < 128,
        "the node's peak memory grew by {backfill} MiB (backfill), {compaction} MiB (compaction), {merged_backfill} MiB (backfill of the merged segment), {rebuild} MiB (rebuild)"
    );
}

/// `/readyz`: `200` once the shards run; `503` naming the shard while it
/// is more than `ready_max_lag` events behind its log (the node catching
/// up), while `/healthz` stays `200`; `200` again once it caught up.
#[test]
fn the_node_is_not_ready_while_a_shard_is_behind() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[("ready-max-lag", "100")],
        &[("LOCKSTEP_DEBUG_HOOKS", "1")],
    );
    let c = d.client();
    let until_ready = |what: &str| {
        let mut last = String::new();
        for _ in 0..400 {
            let r = c.request("GET", "/readyz", None, &[]).unwrap();
            if r.status == 200 {
                return;
            }
            last = String::from_utf8_lossy(&r.body).into_owned();
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what}: never ready: {last}\n{}", d.log());
    };
    until_ready("at start");
    // one user, so one shard; its actor held for 4 seconds
    let rows = events(300, 1, 9);
    let shard = catalog().tables[0].shard_of(&rows[0]);
    let r = c
        .request(
            "POST",
            &format!("/v1/debug/shards/{shard}/stall/4000"),
            None,
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c
        .request("POST", EVENTS, Some(jsonl(&rows).as_bytes()), &[])
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = c.request("GET", "/readyz", None, &[]).unwrap();
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "{body}");
    assert!(
        body.contains(&format!("\"shard\":{shard}")) && body.contains("ready_max_lag = 100"),
        "{body}"
    );
    assert_eq!(c.request("GET", "/healthz", None, &[]).unwrap().status, 200);
    until_ready("after catching up");
}
