//! lockstepd's configuration: the documented example loads, flags win over
//! the file, and every bad key or value stops startup naming the key.

use lockstep_daemon::config::{
    load, load_with_secret, parse_file, Fsync, ObjectStoreUrl, Overrides,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/single-node.toml")
}

fn load_text(text: &str, flags: &Overrides) -> Result<lockstep_daemon::config::Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    load(Some(&p), flags, None).map_err(|e| e.to_string())
}

const MINIMAL: &str = "data_dir = \"d\"\ntoken = \"0123456789\"\npipeline = \"p.sql\"\n";

/// What an operator sets beside the example files (their secrets are
/// placeholders, refused).
const REAL_TOKEN: &str = "a-real-token-0f3c9e";
const REAL_SECRET: &str = "a-real-cluster-secret-77ab";

#[test]
fn the_documented_example_loads() {
    // as shipped, its token is a placeholder: refused, saying how to make
    // a real one
    let e = load(Some(&example()), &Overrides::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`token`") && e.contains("placeholder") && e.contains("/dev/urandom"),
        "{e}"
    );
    let c = load(
        Some(&example()),
        &Overrides::default(),
        Some(REAL_TOKEN.into()),
    )
    .unwrap();
    assert_eq!(c.node_id, "node-1");
    assert_eq!(c.listen.to_string(), "127.0.0.1:7700");
    assert_eq!(c.checkpoint_interval, Duration::from_secs(5));
    assert_eq!(c.fsync, Fsync::Always);
    assert_eq!(
        c.object_store,
        ObjectStoreUrl::Local(PathBuf::from("lockstep-data/objects"))
    );
    // the pipeline it names exists and compiles
    let sql = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(&c.pipeline),
    )
    .unwrap();
    lockstep_core::parse_pipeline(&sql).unwrap();
}

#[test]
fn flags_win_over_the_file_and_env_gives_the_token() {
    let flags = Overrides {
        listen: Some("127.0.0.1:7801".into()),
        data_dir: Some("other".into()),
        ..Overrides::default()
    };
    let c = load(
        Some(&example()),
        &flags,
        Some("from-the-environment".into()),
    )
    .unwrap();
    assert_eq!(c.listen.port(), 7801);
    assert_eq!(c.data_dir, PathBuf::from("other"));
    assert_eq!(
        c.token, "from-the-environment",
        "LOCKSTEP_TOKEN beats the file"
    );
    let flags = Overrides {
        token: Some("flag-token-123".into()),
        ..Overrides::default()
    };
    let c = load(
        Some(&example()),
        &flags,
        Some("from-the-environment".into()),
    )
    .unwrap();
    assert_eq!(c.token, "flag-token-123", "a flag beats the environment");
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, format!("{MINIMAL}colour = \"red\"\n")).unwrap();
    let e = parse_file(&p).unwrap_err().to_string();
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let none = Overrides::default();
    let cases = [
        ("listen = \"nowhere\"\n", "config key `listen`"),
        (
            "checkpoint_interval = \"soon\"\n",
            "config key `checkpoint_interval`",
        ),
        ("fsync = \"sometimes\"\n", "config key `fsync`"),
        ("object_store = \"ftp://x\"\n", "config key `object_store`"),
        ("node_id = \"a b\"\n", "config key `node_id`"),
    ];
    for (extra, want) in cases {
        let e = load_text(&format!("{MINIMAL}{extra}"), &none).unwrap_err();
        assert!(e.contains(want), "{extra}: {e}");
    }
    let e = load_text("token = \"0123456789\"\npipeline = \"p.sql\"\n", &none).unwrap_err();
    assert!(
        e.contains("config key `data_dir`") && e.contains("required"),
        "{e}"
    );
    let e = load_text("data_dir = \"d\"\npipeline = \"p.sql\"\n", &none).unwrap_err();
    assert!(
        e.contains("config key `token`") && e.contains("LOCKSTEP_TOKEN"),
        "{e}"
    );
}

#[test]
fn object_store_urls() {
    let none = Overrides::default();
    let c = load_text(
        &format!("{MINIMAL}object_store = \"s3://bucket/some/prefix/\"\n"),
        &none,
    )
    .unwrap();
    assert_eq!(
        c.object_store,
        ObjectStoreUrl::S3 {
            bucket: "bucket".into(),
            prefix: "some/prefix".into()
        }
    );
    let c = load_text(
        &format!("{MINIMAL}object_store = \"file:///tmp/objs\"\nfsync = \"every 100 ms\"\n"),
        &none,
    )
    .unwrap();
    assert_eq!(c.object_store, ObjectStoreUrl::Local("/tmp/objs".into()));
    assert_eq!(c.fsync, Fsync::Every(Duration::from_millis(100)));
}

fn cluster_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cluster-node.toml")
}

#[test]
fn the_documented_cluster_example_loads_and_flags_override_it() {
    let e = load_with_secret(
        Some(&cluster_example()),
        &Overrides::default(),
        Some(REAL_TOKEN.into()),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cluster.secret") && e.contains("placeholder"),
        "{e}"
    );
    let c = load_with_secret(
        Some(&cluster_example()),
        &Overrides::default(),
        Some(REAL_TOKEN.into()),
        Some(REAL_SECRET.into()),
    )
    .unwrap();
    let cl = c.cluster.expect("a cluster node");
    assert_eq!(cl.raft_id, 1);
    assert!(cl.seeds.is_empty());
    assert_eq!(cl.kafka_brokers, "127.0.0.1:9092");
    assert_eq!(cl.advertise, "127.0.0.1:7701");
    assert_eq!(cl.failure_timeout, Duration::from_millis(2500));
    assert_eq!(
        c.object_store,
        ObjectStoreUrl::S3 {
            bucket: "lockstep".into(),
            prefix: "cluster-a".into()
        }
    );
    let flags = Overrides {
        node_id: Some("node-3".into()),
        cluster: Some(lockstep_daemon::config::FileCluster {
            seeds: Some(vec!["10.0.0.1:7701,10.0.0.2:7701".into()]),
            kafka_brokers: Some("k1:9092,k2:9092".into()),
            ..Default::default()
        }),
        ..Overrides::default()
    };
    let c = load_with_secret(
        Some(&cluster_example()),
        &flags,
        Some(REAL_TOKEN.into()),
        Some(REAL_SECRET.into()),
    )
    .unwrap();
    let cl = c.cluster.unwrap();
    assert_eq!(cl.raft_id, 3);
    assert_eq!(cl.seeds, vec!["10.0.0.1:7701", "10.0.0.2:7701"]);
    assert_eq!(cl.bootstrap_expect, None);
    assert_eq!(cl.kafka_brokers, "k1:9092,k2:9092");
    assert_eq!(cl.secret, REAL_SECRET, "the environment's, over the file's");
}

#[test]
fn bad_cluster_settings_name_their_key() {
    let base = format!("{MINIMAL}node_id = \"node-2\"\n");
    for (extra, want) in [
        ("[cluster]\nkafka_brokers = \"k:9092\"\n", "cluster.secret"),
        ("[cluster]\nsecret = \"short\"\nkafka_brokers = \"k:9092\"\n", "cluster.secret"),
        ("[cluster]\nsecret = \"long-enough-secret\"\n", "cluster.kafka_brokers"),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nseeds = [\"nohost\"]\n",
            "cluster.seeds",
        ),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nfailure_timeout = \"soon\"\n",
            "cluster.failure_timeout",
        ),
        ("[cluster]\ncolour = \"blue\"\n", "colour"),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nvoters = 4\n",
            "cluster.voters",
        ),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nmove_timeout = \"never\"\n",
            "cluster.move_timeout",
        ),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nvoter_replace_after = \"soon\"\n",
            "cluster.voter_replace_after",
        ),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nbootstrap_expect = 3\n",
            "cluster.bootstrap_expect",
        ),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nseeds = [\"a:1\", \"b:1\"]\nbootstrap_expect = 5\n",
            "cluster.bootstrap_expect",
        ),
        // its own address among the seeds does not count twice
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nadvertise = \"a:1\"\nseeds = [\"a:1\", \"b:1\"]\nbootstrap_expect = 3\n",
            "cluster.bootstrap_expect",
        ),
        (
            "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\nseeds = [\"a:1\"]\nbootstrap_expect = 0\n",
            "cluster.bootstrap_expect",
        ),
    ] {
        let e = load_text(&format!("{base}{extra}"), &Overrides::default()).unwrap_err();
        assert!(e.contains(want), "{extra}: {e}");
    }
    // a cluster node's id must end in its number
    let e = load_text(
        &format!("{MINIMAL}node_id = \"alpha\"\n[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\n"),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.contains("node_id"), "{e}");
    // a StatefulSet's first pod is numbered 0
    let c = load_text(
        &format!("{MINIMAL}node_id = \"lockstep-0\"\n[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\n"),
        &Overrides::default(),
    );
    assert!(c.is_ok(), "{:?}", c.err());
    // listening on all interfaces needs an address the others can reach
    let e = load_text(
        &format!("{base}listen = \"0.0.0.0:7700\"\n[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\n"),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(e.contains("cluster.advertise"), "{e}");
}

/// Role tokens: from flags, the environment, the file or a `*_file`; each
/// distinct from the others; a secret file is read and trimmed, and a key
/// given both ways is refused by name.
#[test]
fn role_tokens_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ingest.token");
    std::fs::write(&f, "ingest-token-from-a-file\n").unwrap();
    let text = format!(
        "{MINIMAL}serve_token = \"serve-token-1234\"\ningest_token_file = \"{}\"\n",
        f.display()
    );
    let c = load_text(&text, &Overrides::default()).unwrap();
    assert_eq!(c.ingest_token.as_deref(), Some("ingest-token-from-a-file"));
    assert_eq!(c.serve_token.as_deref(), Some("serve-token-1234"));
    // a flag's file beats the file's token (the shipped example has one)
    let admin = dir.path().join("admin.token");
    std::fs::write(&admin, "admin-token-from-a-file").unwrap();
    let flags = Overrides {
        token_file: Some(admin),
        ..Overrides::default()
    };
    assert_eq!(
        load_text(MINIMAL, &flags).unwrap().token,
        "admin-token-from-a-file"
    );
    for (extra, want) in [
        ("serve_token = \"0123456789\"\n", "serve_token"),
        (
            "ingest_token = \"same-as-serve\"\nserve_token = \"same-as-serve\"\n",
            "serve_token",
        ),
        ("ingest_token = \"change-me-please\"\n", "ingest_token"),
        ("serve_token = \"short\"\n", "serve_token"),
        (
            "token_file = \"/nonexistent/lockstep-token\"\n",
            "token_file",
        ),
    ] {
        let e = load_text(&format!("{MINIMAL}{extra}"), &Overrides::default()).unwrap_err();
        assert!(e.contains(want), "{extra}: {e}");
    }
}

/// `[kafka] properties` reach every Kafka client of a cluster node; each
/// is checked with librdkafka at start (an unknown one is refused in its
/// words), those lockstep's exactly-once rests on are refused, and a node
/// without `[cluster]` has no Kafka clients to give them to.
#[test]
fn kafka_properties_are_checked_at_start() {
    let cluster = "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\n";
    let base = format!("{MINIMAL}node_id = \"node-1\"\n{cluster}");
    let c = load_text(
        &format!("{base}[kafka]\nproperties = {{ \"client.rack\" = \"rack-a\", \"socket.keepalive.enable\" = \"true\" }}\n"),
        &Overrides::default(),
    )
    .unwrap();
    let props = c.cluster.unwrap().kafka_properties;
    assert!(
        props.contains(&("client.rack".into(), "rack-a".into())),
        "{props:?}"
    );
    for (kafka, want) in [
        (
            "properties = { \"no.such.property\" = \"1\" }",
            "No such configuration property",
        ),
        ("properties = { \"acks\" = \"1\" }", "set by lockstep"),
        (
            "properties = { \"socket.timeout.ms\" = \"not a number\" }",
            "socket.timeout.ms",
        ),
        ("colour = \"blue\"", "colour"),
    ] {
        let e = load_text(&format!("{base}[kafka]\n{kafka}\n"), &Overrides::default()).unwrap_err();
        assert!(
            e.contains(want) && (e.contains("kafka") || e.contains("colour")),
            "{kafka}: {e}"
        );
    }
    let e = load_text(
        &format!("{MINIMAL}[kafka]\nproperties = {{ \"client.rack\" = \"rack-a\" }}\n"),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        e.contains("kafka.properties") && e.contains("[cluster]"),
        "{e}"
    );
}

/// A Kafka client properties file (`kafka.properties_file`,
/// `--kafka-properties-file`) is read at start under `[kafka] properties`,
/// which win key by key; a line that is not `key=value` is refused naming
/// the key and the line, and its values go through the same checks.
#[test]
fn a_kafka_properties_file_is_read_under_the_properties() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.properties");
    std::fs::write(
        &file,
        "# SASL over TLS\n\nsecurity.protocol = SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n! also a comment\nsasl.username=feature-pipeline\nsasl.password=pa=ss word\nclient.rack=rack-file\n",
    )
    .unwrap();
    let cluster = "[cluster]\nsecret = \"long-enough-secret\"\nkafka_brokers = \"k:9092\"\n";
    let base = format!("{MINIMAL}node_id = \"node-1\"\n{cluster}");
    let c = load_text(
        &format!(
            "{base}[kafka]\nproperties_file = {:?}\nproperties = {{ \"client.rack\" = \"rack-a\" }}\n",
            file.display().to_string()
        ),
        &Overrides::default(),
    )
    .unwrap();
    let props = c.cluster.unwrap().kafka_properties;
    for want in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.password", "pa=ss word"),
        ("client.rack", "rack-a"),
    ] {
        assert!(
            props.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {props:?}"
        );
    }
    std::fs::write(&file, "security.protocol=SSL\nnot a property line\n").unwrap();
    let text = format!(
        "{base}[kafka]\nproperties_file = {:?}\n",
        file.display().to_string()
    );
    let e = load_text(&text, &Overrides::default()).unwrap_err();
    assert!(
        e.contains("kafka.properties_file") && e.contains("line 2"),
        "{e}"
    );
    std::fs::write(&file, "acks=0\n").unwrap();
    let e = load_text(&text, &Overrides::default()).unwrap_err();
    assert!(e.contains("set by lockstep"), "{e}");
    let missing = format!("{base}[kafka]\nproperties_file = \"/nonexistent/client.properties\"\n");
    let e = load_text(&missing, &Overrides::default()).unwrap_err();
    assert!(e.contains("kafka.properties_file"), "{e}");
    // a `key: value` line is not read as the key `sasl.password: a`
    std::fs::write(&file, "sasl.password: a=hunter2\n").unwrap();
    let e = load_text(&text, &Overrides::default()).unwrap_err();
    assert!(e.contains("line 1") && !e.contains("hunter2"), "{e}");
    // a misspelt key or a Java-only property is refused without its value
    for line in [
        "sasl.passwrd=hunter2",
        "sasl.jaas.config=password=\"hunter2\";",
    ] {
        std::fs::write(&file, format!("{line}\n")).unwrap();
        let e = load_text(&text, &Overrides::default()).unwrap_err();
        assert!(
            e.contains("kafka.properties") && !e.contains("hunter2"),
            "{line}: {e}"
        );
    }
    // a device is not read (it has no end)
    let dev = format!("{base}[kafka]\nproperties_file = \"/dev/zero\"\n");
    let e = load_text(&dev, &Overrides::default()).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
}
