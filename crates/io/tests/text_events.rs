//! JSON lines and CSV event input: coercions, bad records, line numbers.

mod common;

use common::{all_types, collect, same, schema};
use lockstep_core::value::{DataType, Row, Value};
use lockstep_io::{open_events, BadRecord, IoError, Location};

fn read(name: &str, text: &str, s: &lockstep_core::value::Schema) -> Vec<Result<Row, BadRecord>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    collect(open_events(&path, s).unwrap())
}

fn assert_row(got: &Result<Row, BadRecord>, want: &[Value]) {
    let row = got.as_ref().expect("a good row");
    assert_eq!(row.len(), want.len());
    for (j, (a, b)) in row.iter().zip(want).enumerate() {
        assert!(same(a, b), "column {j}: got {a:?}, want {b:?}");
    }
}

fn assert_bad(got: &Result<Row, BadRecord>, location: Location, reason_has: &str, raw: &str) {
    let bad = got.as_ref().expect_err("a bad record");
    assert_eq!(bad.location, location, "{bad:?}");
    assert!(
        bad.reason.contains(reason_has),
        "reason {:?} lacks {reason_has:?}",
        bad.reason
    );
    assert_eq!(bad.raw, raw);
}

#[test]
fn jsonl_coercions_and_bad_records() {
    let lines = [
        r#"{"id": 1, "x": 2, "name": "a", "ok": true, "ts": 1000}"#,
        "",
        r#"{"ID": 3.0, "X": 1.5, "extra": [1, {"a": 2}], "ts": "1970-01-01T00:00:02Z"}"#,
        "[1, 2, 3]",
        r#"{"id": "7"}"#,
        r#"{"id": 1.5}"#,
        r#"{"ts": "not a time"}"#,
        r#"{"name": 5}"#,
        r#"{"id": 1, "x": "#,
        "   \t ",
        r#"{"id": null, "x": "-Infinity", "ok": false, "ts": -5, "name": "é\"\u00e9"}"#,
        r#"{"id": 9223372036854775808}"#,
        r#"{"x": 1} trailing"#,
        r#"{"ok": "true", "id": "also wrong"}"#,
        r#"{"ts": "2024-01-01 00:00:01.5", "x": 18446744073709551615}"#,
    ];
    let text = lines.join("\n") + "\r\n{\"id\": -4}\r\n\n{\"id\":2}";
    let got = read("events.jsonl", &text, &all_types());
    use Value::*;
    assert_eq!(got.len(), 15, "{got:#?}");
    assert_row(
        &got[0],
        &[
            BigInt(1),
            Double(2.0),
            Value::text("a"),
            Boolean(true),
            Timestamp(1000),
        ],
    );
    assert_row(
        &got[1],
        &[BigInt(3), Double(1.5), Null, Null, Timestamp(2000)],
    );
    assert_bad(&got[2], Location::Line(4), "not a JSON object", lines[3]);
    assert_bad(
        &got[3],
        Location::Line(5),
        "column `id`: expected BIGINT, got string \"7\"",
        lines[4],
    );
    assert_bad(
        &got[4],
        Location::Line(6),
        "expected BIGINT, got number 1.5",
        lines[5],
    );
    assert_bad(
        &got[5],
        Location::Line(7),
        "cannot parse TIMESTAMP from \"not a time\"",
        lines[6],
    );
    assert_bad(
        &got[6],
        Location::Line(8),
        "column `name`: expected TEXT, got number 5",
        lines[7],
    );
    assert_bad(
        &got[7],
        Location::Line(9),
        "not a JSON object: EOF",
        lines[8],
    );
    assert_row(
        &got[8],
        &[
            Null,
            Double(f64::NEG_INFINITY),
            Value::text("é\"é"),
            Boolean(false),
            Timestamp(-5),
        ],
    );
    assert_bad(&got[9], Location::Line(12), "expected BIGINT", lines[11]);
    assert_bad(
        &got[10],
        Location::Line(13),
        "not a JSON object: trailing characters",
        lines[12],
    );
    // The first offending column in the line is the one reported.
    assert_bad(
        &got[11],
        Location::Line(14),
        "column `ok`: expected BOOLEAN, got string",
        lines[13],
    );
    assert_row(
        &got[12],
        &[
            Null,
            Double(18446744073709551615.0),
            Null,
            Null,
            Timestamp(1_704_067_201_500),
        ],
    );
    // CRLF is stripped; the blank line 17 counts but yields nothing.
    assert_row(&got[13], &[BigInt(-4), Null, Null, Null, Null]);
    assert_row(&got[14], &[BigInt(2), Null, Null, Null, Null]);
}

#[test]
fn jsonl_invalid_utf8_is_a_bad_record_not_a_fatal_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, b"{\"id\":1}\n{\"name\":\"\xff\"}\n{\"id\":3}\n").unwrap();
    let got = collect(open_events(&path, &all_types()).unwrap());
    assert_eq!(got.len(), 3);
    assert_bad(
        &got[1],
        Location::Line(2),
        "not valid UTF-8",
        "{\"name\":\"\u{fffd}\"}",
    );
    assert_row(
        &got[2],
        &[
            Value::BigInt(3),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
    );
}

#[test]
fn csv_by_name_with_nulls_and_bad_records() {
    let s = schema(&[
        ("id", DataType::BigInt),
        ("x", DataType::Double),
        ("name", DataType::Text),
        ("ok", DataType::Boolean),
        ("ts", DataType::Timestamp),
        ("country", DataType::Text),
    ]);
    let text = "TS,name,Id,unused,ok,x\n\
                1970-01-01T00:00:01Z,alice,1,zzz,T,1.5\n\
                2000,,2,,,\n\
                -5,bob,3,u\n\
                abc,carol,4,u,true,1\n\
                5,\"quoted, with comma\",x5,u,0,2\n\
                6,\"line1\nline2\",6,u,f,-0.5\n\
                7,dave,7,u,maybe,1\n\
                -8, eve ,8,u,FALSE,NaN\n";
    let got = read("events.csv", text, &s);
    use Value::*;
    assert_eq!(got.len(), 8, "{got:#?}");
    assert_row(
        &got[0],
        &[
            BigInt(1),
            Double(1.5),
            Value::text("alice"),
            Boolean(true),
            Timestamp(1000),
            Null,
        ],
    );
    // Empty fields are NULL, whatever the type (TEXT included).
    assert_row(
        &got[1],
        &[BigInt(2), Null, Null, Null, Timestamp(2000), Null],
    );
    assert_bad(
        &got[2],
        Location::Line(4),
        "expected 6 fields as in the header, got 4",
        "-5,bob,3,u",
    );
    assert_bad(
        &got[3],
        Location::Line(5),
        "column `ts`: cannot parse TIMESTAMP from \"abc\"",
        "abc,carol,4,u,true,1",
    );
    assert_bad(
        &got[4],
        Location::Line(6),
        "column `id`: expected BIGINT, got \"x5\"",
        "5,quoted, with comma,x5,u,0,2",
    );
    assert_row(
        &got[5],
        &[
            BigInt(6),
            Double(-0.5),
            Value::text("line1\nline2"),
            Boolean(false),
            Timestamp(6),
            Null,
        ],
    );
    // Record numbers, not physical lines: the quoted newline above does not shift this.
    assert_bad(
        &got[6],
        Location::Line(8),
        "column `ok`: expected BOOLEAN, got \"maybe\"",
        "7,dave,7,u,maybe,1",
    );
    let last = got[7].as_ref().unwrap();
    assert!(same(&last[0], &BigInt(8)));
    assert!(matches!(last[1], Double(d) if d.is_nan()));
    assert!(
        same(&last[2], &Value::text(" eve ")),
        "TEXT is kept as written"
    );
    assert!(same(&last[3], &Boolean(false)));
    assert!(same(&last[4], &Timestamp(-8)));
}

#[test]
fn csv_with_only_a_header_has_no_events() {
    let got = read("h.csv", "id,ts\n", &all_types());
    assert!(got.is_empty());
}

#[test]
fn missing_input_is_a_fatal_open_error() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["nope.jsonl", "nope.csv", "nope.parquet"] {
        let err = open_events(&dir.path().join(name), &all_types())
            .err()
            .expect("an error");
        assert!(matches!(err, IoError::Open { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name));
    }
    let err = open_events(&dir.path().join("x.xml"), &all_types())
        .err()
        .unwrap();
    assert!(matches!(err, IoError::UnknownFormat { .. }));
}
