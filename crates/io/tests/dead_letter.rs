//! Dead-letter output.

use std::path::{Path, PathBuf};

use lockstep_io::{dead_letter_path, late_path, BadRecord, DeadLetterWriter, IoError, Location};
use serde_json::json;

#[test]
fn nothing_bad_means_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet.deadletter.jsonl");
    let w = DeadLetterWriter::new(path.clone());
    assert_eq!(w.count(), 0);
    assert_eq!(w.path(), path.as_path());
    assert_eq!(w.finish().unwrap(), 0);
    assert!(!path.exists());
}

#[test]
fn records_are_json_lines_with_location_reason_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dl.jsonl");
    let mut w = DeadLetterWriter::new(path.clone());
    w.write(
        "malformed",
        &BadRecord {
            location: Location::Line(12),
            reason: "not a JSON object: \"oops\"".into(),
            raw: "{\"a\":\n\t\u{1}🦀".into(),
        },
    )
    .unwrap();
    assert!(path.exists(), "created on the first record");
    w.write(
        "late",
        &BadRecord {
            location: Location::Row(3),
            reason: "late".into(),
            raw: "{}".into(),
        },
    )
    .unwrap();
    assert_eq!(w.count(), 2);
    assert_eq!(w.finish().unwrap(), 2);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"kind": "malformed", "line": 12, "reason": "not a JSON object: \"oops\"",
                   "raw": "{\"a\":\n\t\u{1}🦀"}),
            json!({"kind": "late", "row": 3, "reason": "late", "raw": "{}"}),
        ]
    );
    assert!(
        text.starts_with("{\"kind\":\"malformed\",\"line\":12,"),
        "{text}"
    );
}

#[test]
fn unwritable_location_fails_on_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DeadLetterWriter::new(dir.path().join("missing/dir/dl.jsonl"));
    let bad = BadRecord {
        location: Location::Line(1),
        reason: "x".into(),
        raw: "y".into(),
    };
    let err = w.write("malformed", &bad).unwrap_err();
    assert!(matches!(err, IoError::Create { .. }), "{err:?}");
    assert_eq!(w.count(), 0);
}

#[test]
fn side_file_names_extend_the_output_name() {
    assert_eq!(
        dead_letter_path(Path::new("out/rows.parquet")),
        PathBuf::from("out/rows.parquet.deadletter.jsonl")
    );
    assert_eq!(
        late_path(Path::new("rows.jsonl")),
        PathBuf::from("rows.jsonl.late.jsonl")
    );
}
