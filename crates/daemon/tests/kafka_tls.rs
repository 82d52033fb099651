//! Kafka over TLS and SASL, for real: `.ci/run` puts a TLS terminator
//! (stunnel) in front of two brokers (tansu), one open and one that
//! requires SASL/SCRAM, and sets LOCKSTEP_TEST_KAFKA_TLS,
//! LOCKSTEP_TEST_KAFKA_SASL (their TLS addresses) and
//! LOCKSTEP_TEST_KAFKA_CA (the CA that signed the terminator's
//! certificate). With LOCKSTEP_REQUIRE_KAFKA_TLS=1 (as `.ci/run` sets) a
//! missing broker is a failure, not a skip.

mod support;

use std::time::{Duration, Instant};
use support::*;

struct Secure {
    tls: String,
    sasl: String,
    ca: String,
}

fn secure() -> Option<Secure> {
    match (
        std::env::var("LOCKSTEP_TEST_KAFKA_TLS"),
        std::env::var("LOCKSTEP_TEST_KAFKA_SASL"),
        std::env::var("LOCKSTEP_TEST_KAFKA_CA"),
    ) {
        (Ok(tls), Ok(sasl), Ok(ca)) => Some(Secure { tls, sasl, ca }),
        _ => {
            assert!(
                std::env::var("LOCKSTEP_REQUIRE_KAFKA_TLS").as_deref() != Ok("1"),
                "LOCKSTEP_REQUIRE_KAFKA_TLS=1 but LOCKSTEP_TEST_KAFKA_TLS, LOCKSTEP_TEST_KAFKA_SASL or LOCKSTEP_TEST_KAFKA_CA is missing"
            );
            eprintln!(
                "no TLS broker configured (LOCKSTEP_TEST_KAFKA_TLS); `bash .ci/run` starts one"
            );
            None
        }
    }
}

/// Starts a one-node cluster on `brokers`, with librdkafka `properties`
/// (`KEY=VALUE`, or `@FILE` for `--kafka-properties-file FILE`), that must
/// refuse to start; its error.
fn refused(
    data_dir: &std::path::Path,
    pipeline: &str,
    brokers: &str,
    topic: &str,
    properties: &[&str],
) -> String {
    let listen = free_addr();
    let mut args = vec![
        "--listen",
        &listen,
        "--node-id",
        "node-1",
        "--cluster-secret",
        "kafka-tls-test-secret",
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        topic,
        "--pipeline",
        pipeline,
    ];
    for p in properties {
        match p.strip_prefix('@') {
            Some(file) => args.extend(["--kafka-properties-file", file]),
            None => args.extend(["--kafka-property", p]),
        }
    }
    lockstepd_refuses(data_dir, &args)
}

/// A node whose Kafka clients speak TLS to the broker: without the CA the
/// broker's certificate is refused and start-up says so in librdkafka's
/// words; a plaintext client gets nowhere; with the CA the node takes
/// events through the topic, and its training rows equal the batch
/// engine's over the same events.
#[test]
fn a_node_reaches_kafka_over_tls() {
    let Some(env) = secure() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.sql");
    std::fs::write(&pipeline, SQL).unwrap();
    let pipeline = pipeline.to_str().unwrap();
    let topic = format!("ad_events-tls-{}-{}", std::process::id(), rand_suffix());

    // the broker's certificate is checked: the system's CAs do not know it
    let e = refused(
        &dir.path().join("no-ca"),
        pipeline,
        &env.tls,
        &topic,
        &["security.protocol=SSL"],
    );
    assert!(e.contains("certificate verify failed"), "{e}");
    // a plaintext client does not get through the TLS listener
    let e = refused(&dir.path().join("plain"), pipeline, &env.tls, &topic, &[]);
    assert!(
        e.contains("kafka (") && e.contains("BrokerTransportFailure"),
        "{e}"
    );

    let ca = format!("ssl.ca.location={}", env.ca);
    let node = dir.path().join("node");
    std::fs::create_dir_all(&node).unwrap();
    let d = Daemon::start_sql(
        &node,
        free_addr(),
        SQL,
        &[
            ("node-id", "node-1"),
            ("cluster-secret", "kafka-tls-test-secret"),
            ("kafka-brokers", env.tls.as_str()),
            ("kafka-topic", topic.as_str()),
            ("checkpoint-interval", "1 hour"),
            ("kafka-property", "security.protocol=SSL"),
            ("kafka-property", ca.as_str()),
        ],
        &[],
    );
    let c = d.client();
    let rows = events(3000, 60, 7);
    let start = Instant::now();
    loop {
        // a lone node is given its shards one by one: 503 until it holds
        // the events' shards
        let r = c
            .request(
                "POST",
                "/v1/tables/ad_events/events",
                Some(jsonl(&rows).as_bytes()),
                &[("Idempotency-Key", "tls-1")],
            )
            .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            r.status == 503 && start.elapsed() < Duration::from_secs(60),
            "{} {}\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let start = Instant::now();
    // (a few generated events are late: counted, not applied)
    while c.status().map_or(0, |s| s.events + s.late) < rows.len() as u64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the events never came back through the TLS topic: {:?}\n{}",
            c.get_json("/v1/status"),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.post_json("/v1/checkpoint", b"").unwrap();
    let (want, _) = batch_rows(&rows);
    let want: Vec<_> = want.into_iter().flatten().collect();
    assert_rows_eq(
        &exported(&c, dir.path()),
        &want,
        "training rows through a TLS broker",
    );
}

/// SASL/SCRAM over TLS: the node runs the SCRAM exchange with the broker
/// (both mechanisms are built in) and a refused login stops start-up with
/// the broker's answer. The test broker (tansu) keeps its SCRAM users only
/// in storage it cannot be given users for once authentication is on, so
/// a successful login is not tested here (see docs/operations.md).
#[test]
fn sasl_scram_over_tls_reaches_the_broker() {
    let Some(env) = secure() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.sql");
    std::fs::write(&pipeline, SQL).unwrap();
    let pipeline = pipeline.to_str().unwrap();
    let ca = format!("ssl.ca.location={}", env.ca);
    // the credentials come from a properties file, as an operator keeps
    // a password off the command line
    let credentials = dir.path().join("client.properties");
    std::fs::write(
        &credentials,
        "# test credentials\nsasl.username = nobody\nsasl.password = wrong\n",
    )
    .unwrap();
    let credentials = format!("@{}", credentials.display());
    for (i, mechanism) in ["SCRAM-SHA-256", "SCRAM-SHA-512"].iter().enumerate() {
        let mechanism = format!("sasl.mechanism={mechanism}");
        let e = refused(
            &dir.path().join(format!("sasl-{i}")),
            pipeline,
            &env.sasl,
            "ad_events-sasl",
            &["security.protocol=SASL_SSL", &ca, &mechanism, &credentials],
        );
        assert!(
            e.contains("SASL SCRAM authentication failed") && e.contains("kafka.properties"),
            "{mechanism}: {e}"
        );
    }
    // without TLS the terminator's listener answers no Kafka at all
    let e = refused(
        &dir.path().join("sasl-plaintext"),
        pipeline,
        &env.sasl,
        "ad_events-sasl",
        &[
            "security.protocol=SASL_PLAINTEXT",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=nobody",
            "sasl.password=wrong",
        ],
    );
    assert!(
        e.contains("BrokerTransportFailure") && !e.contains("SASL SCRAM authentication failed"),
        "{e}"
    );
}
