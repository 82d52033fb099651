//! The object store on a real S3 API: `.ci/run` starts an S3-compatible
//! server on 127.0.0.1 (moto) and sets LOCKSTEP_TEST_S3_ENDPOINT and
//! LOCKSTEP_TEST_S3_BUCKET. With LOCKSTEP_REQUIRE_S3=1 (as `.ci/run` sets)
//! a missing server is a failure, not a skip.

mod support;

use support::*;

#[test]
fn segments_go_to_s3_and_survive_a_sigkill() {
    let (Ok(endpoint), Ok(bucket)) = (
        std::env::var("LOCKSTEP_TEST_S3_ENDPOINT"),
        std::env::var("LOCKSTEP_TEST_S3_BUCKET"),
    ) else {
        assert!(
            std::env::var("LOCKSTEP_REQUIRE_S3").as_deref() != Ok("1"),
            "LOCKSTEP_REQUIRE_S3=1 but no S3 server: set LOCKSTEP_TEST_S3_ENDPOINT and LOCKSTEP_TEST_S3_BUCKET"
        );
        eprintln!("no S3 server configured (LOCKSTEP_TEST_S3_ENDPOINT); `bash .ci/run` starts one");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!(
        "s3://{bucket}/test-{}-{}",
        std::process::id(),
        rand_suffix()
    );
    let mut d = Daemon::start(
        dir.path(),
        &[("object-store", &prefix), ("checkpoint-interval", "1 hour")],
        &[
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_ACCESS_KEY_ID", "lockstep"),
            ("AWS_SECRET_ACCESS_KEY", "lockstep-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let rows = events(4000, 100, 21);
    let (a, b) = rows.split_at(2500);
    d.client()
        .post_json("/v1/tables/ad_events/events", jsonl(a).as_bytes())
        .unwrap();
    d.client().post_json("/v1/checkpoint", b"").unwrap();
    d.client()
        .post_json("/v1/tables/ad_events/events", jsonl(b).as_bytes())
        .unwrap();
    d.kill();
    assert!(
        !dir.path().join("data/objects").exists(),
        "segments must not go to the local default"
    );
    d.restart();
    let c = d.client();
    c.post_json("/v1/checkpoint", b"").unwrap();
    let st = c.get_json("/v1/status").unwrap();
    assert!(st["object_store"].as_str().unwrap().starts_with("s3://"));
    let (want, _) = batch_rows(&rows);
    let want: Vec<_> = want.into_iter().flatten().collect();
    let got = exported(&c, dir.path());
    assert_rows_eq(&got, &want, "training rows through S3");
    let out = dir.path().join("bf.parquet");
    lockstep_offline::backfill(&c, VIEW, None, None, &out, &mut |_, _| {}).unwrap();
    let schema = catalog().view(VIEW).unwrap().1.output.clone();
    assert_rows_eq(
        &lockstep_io::read_rows(&out, &schema).unwrap(),
        &got,
        "backfill from S3",
    );
}

/// Objects above the threshold go up as a multipart upload (S3 takes at
/// most 5 GB in one PUT), read back whole; and the node streams an object
/// to `GET /v1/objects/…` from S3 as it does from a directory.
#[test]
fn large_objects_go_up_in_parts() {
    let (Ok(endpoint), Ok(bucket)) = (
        std::env::var("LOCKSTEP_TEST_S3_ENDPOINT"),
        std::env::var("LOCKSTEP_TEST_S3_BUCKET"),
    ) else {
        assert!(
            std::env::var("LOCKSTEP_REQUIRE_S3").as_deref() != Ok("1"),
            "LOCKSTEP_REQUIRE_S3=1 but no S3 server"
        );
        eprintln!("no S3 server configured (LOCKSTEP_TEST_S3_ENDPOINT); `bash .ci/run` starts one");
        return;
    };
    use object_store::ObjectStoreExt;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(&bucket)
        .with_access_key_id("lockstep")
        .with_secret_access_key("lockstep-secret")
        .build()
        .unwrap();
    // 12 MiB + 7 bytes in 5 MiB parts: three parts, the last short
    let bytes: Vec<u8> = (0..(12 << 20) + 7).map(|i| (i % 251) as u8).collect();
    let path = object_store::path::Path::from(format!(
        "parts-{}-{}/big.bin",
        std::process::id(),
        rand_suffix()
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(lockstep_daemon::segments::put_object_in_parts(
        &store,
        &path,
        bytes::Bytes::from(bytes.clone()),
        5 << 20,
        5 << 20,
    ))
    .unwrap();
    let back = rt
        .block_on(async { store.get(&path).await.unwrap().bytes().await })
        .unwrap();
    assert_eq!(back.len(), bytes.len());
    assert!(
        back.as_ref() == bytes.as_slice(),
        "the parts joined in order"
    );
    // written as it is produced (a merge, a backfill), in odd-sized
    // writes: the same object, its length and checksum kept on the way
    let store: std::sync::Arc<dyn object_store::ObjectStore> = std::sync::Arc::new(store);
    let streamed = object_store::path::Path::from(format!("{path}.streamed"));
    let (s, p, b) = (store.clone(), streamed.to_string(), bytes.clone());
    let h = rt.handle().clone();
    let (len, crc) = rt
        .block_on(rt.spawn_blocking(move || {
            use std::io::Write;
            let mut w = lockstep_daemon::segments::ObjectWriter::new(h, s, &p, 5 << 20);
            for c in b.chunks(777_777) {
                w.write_all(c).unwrap();
            }
            w.finish().unwrap()
        }))
        .unwrap();
    assert_eq!((len, crc), (bytes.len() as u64, crc32fast::hash(&bytes)));
    let back = rt
        .block_on(async { store.get(&streamed).await.unwrap().bytes().await })
        .unwrap();
    assert!(
        back.as_ref() == bytes.as_slice(),
        "streamed parts joined in order"
    );
    // given up half way (a failed merge): no object
    let abandoned = object_store::path::Path::from(format!("{path}.abandoned"));
    let (s, p, b) = (store.clone(), abandoned.to_string(), bytes.clone());
    let h = rt.handle().clone();
    rt.block_on(rt.spawn_blocking(move || {
        use std::io::Write;
        let mut w = lockstep_daemon::segments::ObjectWriter::new(h, s, &p, 5 << 20);
        w.write_all(&b).unwrap();
    }))
    .unwrap();
    assert!(matches!(
        rt.block_on(store.head(&abandoned)),
        Err(object_store::Error::NotFound { .. })
    ));
    // the node serves it, streamed
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s3://{bucket}");
    let d = Daemon::start(
        dir.path(),
        &[("object-store", &prefix)],
        &[
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_ACCESS_KEY_ID", "lockstep"),
            ("AWS_SECRET_ACCESS_KEY", "lockstep-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let got = d
        .client()
        .get_bytes(&format!("/v1/objects/{path}"))
        .unwrap();
    assert!(got == bytes, "served whole ({} bytes)", got.len());
}
