//! HTTPS on a real lockstepd: the API over TLS with certificates a test CA
//! made (rcgen), lockstepctl trusting that CA, and what happens to clients
//! that do not (plain HTTP, another CA, no CA given), and TLS files that
//! do not go together.

mod support;

use lockstep_api::Client;
use support::*;

#[test]
fn the_api_is_served_over_https_to_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "test");
    let (cert, key) = pki.node("node-1");
    let addr = free_addr();
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let d = Daemon::launch_tls(
        &node_dir,
        addr.clone(),
        SQL,
        &[
            ("tls-cert", cert.to_str().unwrap()),
            ("tls-key", key.to_str().unwrap()),
        ],
        &[],
        &pki.ca,
    );
    d.wait_up();
    assert!(
        d.log().contains(&format!("listening on https://{addr}")),
        "{}",
        d.log()
    );
    // a client that trusts the CA: ingest and serve as over HTTP
    let c = d.client();
    assert!(c.base().starts_with("https://"));
    let rows = events(200, 10, 5);
    let r = c
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(jsonl(&rows).as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let st = c.get_json("/v1/status").unwrap();
    assert!(st["events"].as_u64().is_some(), "{st}");
    // plain HTTP to the TLS port gets no answer
    let plain = Client::new(&addr, TOKEN).request("GET", "/healthz", None, &[]);
    assert!(
        plain.is_err(),
        "plain HTTP was answered: {:?}",
        plain.map(|r| r.status)
    );
    // a client that trusts another CA refuses the node's certificate
    let other = TestPki::new(dir.path(), "other");
    let pem = std::fs::read(&other.ca).unwrap();
    let e = Client::with_ca(&addr, TOKEN, &pem)
        .unwrap()
        .request("GET", "/healthz", None, &[])
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // lockstepctl: --ca-cert, or LOCKSTEP_CA_CERT
    let ca = pki.ca.to_str().unwrap();
    let (ok, out) = run_ctl(&["--addr", &addr, "--ca-cert", ca, "status"]);
    assert!(ok && out.contains("ad_events"), "{out}");
    let url = format!("https://{addr}");
    let (ok, out) = run_ctl(&["--addr", &url, "status"]);
    assert!(!ok && out.contains("--ca-cert"), "{out}");
    let (ok, out) = run_ctl(&[
        "--addr",
        &url,
        "--ca-cert",
        other.ca.to_str().unwrap(),
        "status",
    ]);
    assert!(!ok && out.to_lowercase().contains("certificate"), "{out}");
    let (ok, out) = run_ctl(&[
        "--addr",
        &format!("http://{addr}"),
        "--ca-cert",
        ca,
        "status",
    ]);
    assert!(!ok && out.contains("in clear"), "{out}");
    let (ok, out) = run_ctl(&["--addr", &addr, "--ca-cert", "/nonexistent.pem", "status"]);
    assert!(!ok && out.contains("/nonexistent.pem"), "{out}");
}

#[test]
fn tls_files_that_do_not_go_together_stop_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), "test");
    let (cert, key) = pki.node("node-1");
    let (_, other_key) = pki.node("node-2");
    let sql = dir.path().join("p.sql");
    std::fs::write(&sql, SQL).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let run = |args: &[&str]| {
        let mut a = vec![
            "--pipeline",
            sql.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        a.extend_from_slice(args);
        lockstepd_refuses(&dir.path().join("data"), &a)
    };
    let (c, k, ok, g) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );
    let e = run(&["--tls-cert", c]);
    assert!(e.contains("`tls_key`"), "{e}");
    let e = run(&["--tls-key", k]);
    assert!(e.contains("`tls_cert`"), "{e}");
    let e = run(&["--tls-cert", g, "--tls-key", k]);
    assert!(e.contains("`tls_cert`") && e.contains("garbage.pem"), "{e}");
    let e = run(&["--tls-cert", c, "--tls-key", ok]);
    assert!(
        e.contains("`tls_key`") && e.contains("does not go with"),
        "{e}"
    );
    let e = run(&["--tls-cert", c, "--tls-key", k, "--tls-ca", g]);
    assert!(e.contains("`tls_ca`"), "{e}");
    let e = run(&["--tls-ca", pki.ca.to_str().unwrap()]);
    assert!(e.contains("`tls_ca`") && e.contains("tls_cert"), "{e}");
    // a cluster node with TLS must check its peers: the CA is required
    let e = run(&[
        "--tls-cert",
        c,
        "--tls-key",
        k,
        "--cluster-secret",
        "a-cluster-secret-long-enough",
        "--kafka-brokers",
        "127.0.0.1:9",
    ]);
    assert!(e.contains("`tls_ca`") && e.contains("cluster"), "{e}");
}
