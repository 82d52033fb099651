//! Row writers → `read_rows` must give back exactly what went in.

mod common;

use std::fs::File;
use std::path::Path;

use arrow::datatypes::{DataType as ArrowType, TimeUnit};
use common::{all_types, assert_rows_identical, schema};
use lockstep_core::value::{DataType, Row, Value};
use lockstep_io::{create_row_writer, read_rows, Format, IoError, Location};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn tricky_rows() -> Vec<Row> {
    use Value::*;
    vec![
        vec![
            BigInt(i64::MIN),
            Double(f64::NAN),
            Value::text("héllo 🦀 \"quoted\", comma\nnewline\ttab\\"),
            Boolean(true),
            Timestamp(-1),
        ],
        vec![
            BigInt(i64::MAX),
            Double(f64::INFINITY),
            Value::text(""),
            Boolean(false),
            Timestamp(-86_400_001),
        ],
        vec![
            BigInt(0),
            Double(f64::NEG_INFINITY),
            Value::text("日本語"),
            Null,
            Timestamp(0),
        ],
        vec![Null, Double(-0.0), Null, Boolean(true), Null],
        vec![
            BigInt(-1),
            Double(5e-324),
            Value::text("\u{0}\u{1f}"),
            Boolean(false),
            Timestamp(1_704_067_201_250),
        ],
        vec![
            BigInt(42),
            Double(0.1 + 0.2),
            Value::text("x"),
            Boolean(true),
            Timestamp(-62_135_596_800_000), // 0001-01-01
        ],
        vec![
            BigInt(7),
            Double(1e300),
            Value::text("y"),
            Null,
            Timestamp(253_402_300_799_999), // 9999-12-31T23:59:59.999
        ],
        vec![
            BigInt(8),
            Double(-f64::MAX),
            Value::text("z"),
            Null,
            Timestamp(1),
        ],
        vec![Null, Null, Null, Null, Null],
    ]
}

fn write_all(path: &Path, rows: &[Row]) -> u64 {
    let mut sink = create_row_writer(path, &all_types()).unwrap();
    for row in rows {
        sink.write(row).unwrap();
    }
    sink.finish().unwrap()
}

#[test]
fn jsonl_round_trips_every_type_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");
    let rows = tricky_rows();
    assert_eq!(write_all(&path, &rows), rows.len() as u64);
    let back = read_rows(&path, &all_types()).unwrap();
    assert_rows_identical(&back, &rows);
}

#[test]
fn parquet_round_trips_every_type_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet");
    let rows = tricky_rows();
    assert_eq!(write_all(&path, &rows), rows.len() as u64);
    let back = read_rows(&path, &all_types()).unwrap();
    assert_rows_identical(&back, &rows);
}

#[test]
fn jsonl_text_is_the_documented_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");
    let rows = tricky_rows();
    write_all(&path, &rows[..4]);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0],
        r#"{"id":-9223372036854775808,"x":"NaN","name":"héllo 🦀 \"quoted\", comma\nnewline\ttab\\","ok":true,"ts":"1969-12-31T23:59:59.999Z"}"#
    );
    assert_eq!(
        lines[1],
        r#"{"id":9223372036854775807,"x":"Infinity","name":"","ok":false,"ts":"1969-12-30T23:59:59.999Z"}"#
    );
    assert_eq!(
        lines[3],
        r#"{"id":null,"x":-0.0,"name":null,"ok":true,"ts":null}"#
    );
    assert!(text.ends_with('\n'));
}

#[test]
fn parquet_output_has_the_documented_arrow_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet");
    write_all(&path, &tricky_rows());
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
    let fields = builder.schema().fields();
    let got: Vec<(&str, &ArrowType, bool)> = fields
        .iter()
        .map(|f| (f.name().as_str(), f.data_type(), f.is_nullable()))
        .collect();
    let ts = ArrowType::Timestamp(TimeUnit::Millisecond, None);
    assert_eq!(
        got,
        vec![
            ("id", &ArrowType::Int64, true),
            ("x", &ArrowType::Float64, true),
            ("name", &ArrowType::Utf8, true),
            ("ok", &ArrowType::Boolean, true),
            ("ts", &ts, true),
        ]
    );
    let compression = builder.metadata().row_group(0).column(0).compression();
    assert_eq!(compression, parquet::basic::Compression::SNAPPY);
    // integers and times delta-encoded (no dictionary), the rest with one
    use parquet::basic::Encoding;
    let group = builder.metadata().row_group(0);
    for (i, delta) in [(0, true), (1, false), (2, false), (4, true)] {
        let encodings: Vec<Encoding> = group.column(i).encodings().collect();
        assert_eq!(
            encodings.contains(&Encoding::DELTA_BINARY_PACKED),
            delta,
            "column {i}: {encodings:?}"
        );
        assert_eq!(
            encodings.contains(&Encoding::RLE_DICTIONARY),
            !delta,
            "column {i}: {encodings:?}"
        );
    }
}

#[test]
fn large_parquet_output_is_split_into_row_groups_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.parquet");
    let s = schema(&[("n", DataType::BigInt), ("t", DataType::Text)]);
    let total = 150_000i64;
    let mut sink = create_row_writer(&path, &s).unwrap();
    for n in 0..total {
        let t = if n % 3 == 0 {
            Value::Null
        } else {
            Value::text(&n.to_string())
        };
        sink.write(&[Value::BigInt(n), t]).unwrap();
    }
    assert_eq!(sink.finish().unwrap(), total as u64);

    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
    assert_eq!(builder.metadata().num_row_groups(), 3);
    let back = read_rows(&path, &s).unwrap();
    assert_eq!(back.len(), total as usize);
    for (n, row) in back.iter().enumerate() {
        assert!(
            matches!(row[0], Value::BigInt(v) if v == n as i64),
            "row {n}"
        );
        if n % 3 == 0 {
            assert!(row[1].is_null());
        } else {
            assert_eq!(row[1], Value::text(&n.to_string()));
        }
    }
}

#[test]
fn bigint_values_widen_into_double_columns() {
    let dir = tempfile::tempdir().unwrap();
    let s = schema(&[("x", DataType::Double)]);
    for name in ["w.parquet", "w.jsonl"] {
        let path = dir.path().join(name);
        let mut sink = create_row_writer(&path, &s).unwrap();
        sink.write(&[Value::BigInt(3)]).unwrap();
        sink.finish().unwrap();
        let back = read_rows(&path, &s).unwrap();
        assert!(
            matches!(back[0][0], Value::Double(d) if d == 3.0),
            "{name}: {:?}",
            back[0][0]
        );
    }
}

#[test]
fn parquet_writer_rejects_wrong_values_without_corrupting_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet");
    let mut sink = create_row_writer(&path, &all_types()).unwrap();
    let good = tricky_rows().remove(4);
    sink.write(&good).unwrap();
    let mut wrong = good.clone();
    wrong[2] = Value::BigInt(5);
    let err = sink.write(&wrong).unwrap_err();
    assert!(matches!(err, IoError::ValueType { ref column, .. } if column == "name"));
    assert!(err.to_string().contains("BIGINT value"), "{err}");
    // rejected after its text went in: the text is taken back too
    let mut late_wrong = good.clone();
    late_wrong[3] = Value::text("not a boolean");
    let err = sink.write(&late_wrong).unwrap_err();
    assert!(matches!(err, IoError::ValueType { ref column, .. } if column == "ok"));
    let short = sink.write(&good[..3]).unwrap_err();
    assert!(matches!(
        short,
        IoError::RowShape {
            expected: 5,
            got: 3,
            ..
        }
    ));
    sink.write(&good).unwrap();
    assert_eq!(sink.finish().unwrap(), 2);
    assert_rows_identical(
        &read_rows(&path, &all_types()).unwrap(),
        &[good.clone(), good],
    );
}

#[test]
fn jsonl_writer_rejects_rows_of_the_wrong_width() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");
    let mut sink = create_row_writer(&path, &all_types()).unwrap();
    let err = sink.write(&[Value::BigInt(1)]).unwrap_err();
    assert!(matches!(
        err,
        IoError::RowShape {
            expected: 5,
            got: 1,
            ..
        }
    ));
    assert_eq!(sink.finish().unwrap(), 0);
}

#[test]
fn unsupported_outputs_and_types_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = create_row_writer(&dir.path().join("rows.csv"), &all_types());
    assert!(matches!(csv, Err(IoError::UnsupportedOutput { .. })));
    let interval = schema(&[("d", DataType::Interval)]);
    let err = create_row_writer(&dir.path().join("rows.parquet"), &interval);
    assert!(matches!(err, Err(IoError::UnsupportedColumnType { ref column, .. }) if column == "d"));
    let missing_dir = dir.path().join("no/such/dir/rows.jsonl");
    assert!(matches!(
        create_row_writer(&missing_dir, &all_types()),
        Err(IoError::Create { .. })
    ));
}

#[test]
fn read_rows_reports_records_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.jsonl");
    std::fs::write(&path, "{\"id\":1}\n{\"id\":\"one\"}\n").unwrap();
    let err = read_rows(&path, &all_types()).unwrap_err();
    match &err {
        IoError::InvalidRecord {
            location, reason, ..
        } => {
            assert_eq!(*location, Location::Line(2));
            assert!(reason.contains("column `id`"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn format_is_chosen_by_extension() {
    let f = |p: &str| Format::from_path(Path::new(p));
    assert_eq!(f("a.jsonl").unwrap(), Format::Jsonl);
    assert_eq!(f("a.NDJSON").unwrap(), Format::Jsonl);
    assert_eq!(f("dir.v2/a.json").unwrap(), Format::Jsonl);
    assert_eq!(f("a.csv").unwrap(), Format::Csv);
    assert_eq!(f("a.parquet").unwrap(), Format::Parquet);
    assert_eq!(f("a.pq").unwrap(), Format::Parquet);
    for bad in ["a.txt", "a", "parquet"] {
        let err = f(bad).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(".jsonl") && msg.contains(".csv") && msg.contains(".parquet"));
        assert!(msg.contains(bad), "{msg}");
    }
}
