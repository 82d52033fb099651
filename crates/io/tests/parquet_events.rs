//! Parquet event input: narrower types widen, incompatible columns are fatal,
//! bad values become bad records with the right row numbers.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, DictionaryArray, Float32Array, Int32Array, Int64Array,
    Int8Array, LargeStringArray, StringArray, StringViewArray, TimestampMicrosecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt64Array,
};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use common::{all_types, collect, same, schema};
use lockstep_core::value::{DataType, Value};
use lockstep_io::{open_events, read_rows, IoError, Location};
use parquet::arrow::ArrowWriter;

fn write_parquet(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) -> PathBuf {
    let path = dir.join(name);
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    path
}

#[test]
fn narrower_types_widen_and_names_match_case_insensitively() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_parquet(
        dir.path(),
        "narrow.parquet",
        vec![
            (
                "EXTRA",
                Arc::new(Int64Array::from(vec![9, 9, 9])) as ArrayRef,
            ),
            (
                "TS",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_500), Some(-1), None])
                        .with_timezone("UTC"),
                ),
            ),
            (
                "Id",
                Arc::new(Int32Array::from(vec![Some(i32::MIN), None, Some(7)])),
            ),
            (
                "x",
                Arc::new(Float32Array::from(vec![Some(0.1f32), Some(-0.0), None])),
            ),
            (
                "name",
                Arc::new(LargeStringArray::from(vec![Some("ä"), None, Some("")])),
            ),
            (
                "ok",
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            ),
        ],
    );
    let mut s = all_types();
    s.columns.push(lockstep_core::value::Column {
        name: "absent".into(),
        data_type: DataType::Text,
    });
    let rows = read_rows(&path, &s).unwrap();
    use Value::*;
    let want = [
        vec![
            BigInt(i32::MIN as i64),
            Double(f64::from(0.1f32)),
            Value::text("ä"),
            Boolean(true),
            Timestamp(1),
            Null,
        ],
        // -1 µs lies in the millisecond before the epoch.
        vec![
            Null,
            Double(-0.0),
            Null,
            Boolean(false),
            Timestamp(-1),
            Null,
        ],
        vec![BigInt(7), Null, Value::text(""), Null, Null, Null],
    ];
    common::assert_rows_identical(&rows, &want);
}

#[test]
fn other_timestamp_encodings_convert_to_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let s = schema(&[
        ("ns", DataType::Timestamp),
        ("sec", DataType::Timestamp),
        ("ms", DataType::Timestamp),
        ("day", DataType::Timestamp),
        ("text", DataType::Timestamp),
        ("big", DataType::Double),
        ("small", DataType::BigInt),
    ]);
    let path = write_parquet(
        dir.path(),
        "ts.parquet",
        vec![
            (
                "ns",
                Arc::new(TimestampNanosecondArray::from(vec![-1, 1_999_999])) as ArrayRef,
            ),
            ("sec", Arc::new(TimestampSecondArray::from(vec![-2, 3]))),
            ("ms", Arc::new(Int64Array::from(vec![-7, 8]))),
            ("day", Arc::new(Date32Array::from(vec![-1, 1]))),
            (
                "text",
                Arc::new(StringViewArray::from(vec![
                    "1969-12-31T23:59:59.999Z",
                    "2024-01-01",
                ])),
            ),
            ("big", Arc::new(UInt64Array::from(vec![u64::MAX, 1]))),
            ("small", Arc::new(Int8Array::from(vec![-128, 127]))),
        ],
    );
    let rows = read_rows(&path, &s).unwrap();
    use Value::*;
    let want = [
        vec![
            Timestamp(-1),
            Timestamp(-2000),
            Timestamp(-7),
            Timestamp(-86_400_000),
            Timestamp(-1),
            Double(u64::MAX as f64),
            BigInt(-128),
        ],
        vec![
            Timestamp(1),
            Timestamp(3000),
            Timestamp(8),
            Timestamp(86_400_000),
            Timestamp(1_704_067_200_000),
            Double(1.0),
            BigInt(127),
        ],
    ];
    common::assert_rows_identical(&rows, &want);
}

#[test]
fn dictionary_strings_read_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let dict: DictionaryArray<Int32Type> = vec![Some("a"), None, Some("b"), Some("a")]
        .into_iter()
        .collect();
    let path = write_parquet(
        dir.path(),
        "dict.parquet",
        vec![("name", Arc::new(dict) as ArrayRef)],
    );
    let s = schema(&[("name", DataType::Text)]);
    let rows = read_rows(&path, &s).unwrap();
    let got: Vec<Value> = rows.into_iter().map(|mut r| r.remove(0)).collect();
    assert_eq!(
        got,
        vec![
            Value::text("a"),
            Value::Null,
            Value::text("b"),
            Value::text("a")
        ]
    );
}

#[test]
fn incompatible_column_type_is_fatal_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_parquet(
        dir.path(),
        "bad.parquet",
        vec![
            ("ts", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("id", Arc::new(StringArray::from(vec!["1"]))),
        ],
    );
    let err = open_events(&path, &all_types()).err().expect("fatal error");
    match &err {
        IoError::IncompatibleColumn {
            column, expected, ..
        } => {
            assert_eq!(column, "id");
            assert_eq!(*expected, DataType::BigInt);
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("`id`") && msg.contains("Utf8") && msg.contains("BIGINT"),
        "{msg}"
    );

    // Floats never become BIGINT, booleans never DOUBLE.
    let path = write_parquet(
        dir.path(),
        "bad2.parquet",
        vec![("x", Arc::new(BooleanArray::from(vec![true])) as ArrayRef)],
    );
    assert!(matches!(
        open_events(&path, &all_types()),
        Err(IoError::IncompatibleColumn { .. })
    ));
}

#[test]
fn bad_values_become_bad_records_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000usize;
    // Row 10_000 (1-based) is in the second 8192-row batch.
    let bad_index = 9_999;
    let texts: Vec<Option<String>> = (0..n)
        .map(|i| match i {
            _ if i == bad_index => Some("garbage".to_string()),
            _ if i % 1000 == 0 => None,
            _ => Some(format!("1970-01-01T00:00:{:02}Z", i % 60)),
        })
        .collect();
    let ids: Vec<i64> = (0..n as i64).collect();
    let big: Vec<u64> = (0..n as u64)
        .map(|i| if i == 15_000 { u64::MAX } else { i })
        .collect();
    let path = write_parquet(
        dir.path(),
        "batches.parquet",
        vec![
            ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
            ("ts", Arc::new(StringArray::from(texts))),
            ("big", Arc::new(UInt64Array::from(big))),
        ],
    );
    let s = schema(&[
        ("id", DataType::BigInt),
        ("ts", DataType::Timestamp),
        ("big", DataType::BigInt),
    ]);
    let got = collect(open_events(&path, &s).unwrap());
    assert_eq!(got.len(), n);
    for (i, record) in got.iter().enumerate() {
        match record {
            Ok(row) => {
                assert!(same(&row[0], &Value::BigInt(i as i64)), "order at {i}");
                if i % 1000 == 0 {
                    assert!(row[1].is_null());
                } else {
                    assert!(same(&row[1], &Value::Timestamp((i % 60) as i64 * 1000)));
                }
            }
            Err(bad) if i == bad_index => {
                assert_eq!(bad.location, Location::Row(10_000));
                assert!(bad.reason.contains("column `ts`"), "{}", bad.reason);
                assert!(bad.reason.contains("\"garbage\""), "{}", bad.reason);
                assert_eq!(bad.raw, r#"{"id":9999,"ts":"garbage","big":9999}"#);
            }
            Err(bad) if i == 15_000 => {
                assert_eq!(bad.location, Location::Row(15_001));
                assert!(bad.reason.contains("column `big`"), "{}", bad.reason);
                assert!(bad.raw.contains("18446744073709551615"), "{}", bad.raw);
            }
            Err(bad) => panic!("unexpected bad record at {i}: {bad:?}"),
        }
    }
}

#[test]
fn file_without_any_table_column_reads_as_null_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_parquet(
        dir.path(),
        "other.parquet",
        vec![(
            "unrelated",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        )],
    );
    let rows = read_rows(&path, &all_types()).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().flatten().all(Value::is_null));
}

#[test]
fn a_file_that_is_not_parquet_is_a_fatal_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.parquet");
    std::fs::write(&path, "id,ts\n1,2\n").unwrap();
    let err = open_events(&path, &all_types()).err().expect("fatal");
    assert!(matches!(err, IoError::Parquet { .. }), "{err:?}");
    assert!(err.to_string().contains("not a readable Parquet file"));
}

#[test]
fn float16_columns_read_as_double() {
    let dir = tempfile::tempdir().unwrap();
    let f32s: ArrayRef = Arc::new(Float32Array::from(vec![Some(1.5f32), None, Some(-2.0)]));
    let f16s = arrow::compute::cast(&f32s, &arrow::datatypes::DataType::Float16).unwrap();
    let path = write_parquet(dir.path(), "half.parquet", vec![("x", f16s)]);
    let s = schema(&[("x", DataType::Double)]);
    let rows = read_rows(&path, &s).unwrap();
    let want = [
        vec![Value::Double(1.5)],
        vec![Value::Null],
        vec![Value::Double(-2.0)],
    ];
    common::assert_rows_identical(&rows, &want);
}

/// TEXT columns are read through dictionaries: every value comes back
/// as written whether the writer kept its dictionary pages or not, across
/// batches and row groups, and rows of one batch share the text of a
/// repeated value instead of each holding a copy.
#[test]
fn text_columns_read_through_dictionaries_keep_every_value() {
    use parquet::file::properties::WriterProperties;
    use parquet::schema::types::ColumnPath;
    let n = 20_000;
    let kinds: Vec<Option<String>> = (0..n)
        .map(|i| match i % 7 {
            0 => None,
            k if k % 2 == 0 => Some("click".to_string()),
            _ => Some(format!("impression-{}", i % 3)),
        })
        .collect();
    // unique values, so no dictionary pays: the writer falls back to plain
    let ids: Vec<Option<String>> = (0..n)
        .map(|i| (i % 11 != 3).then(|| format!("user-{i}-ü")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dict.parquet");
    let batch = RecordBatch::try_from_iter(vec![
        (
            "kind",
            Arc::new(StringArray::from(kinds.clone())) as ArrayRef,
        ),
        (
            "name",
            Arc::new(LargeStringArray::from(ids.clone())) as ArrayRef,
        ),
    ])
    .unwrap();
    // small row groups, so a read batch spans several column chunks; the
    // `name` column without dictionary pages at all
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(3_001))
        .set_column_dictionary_enabled(ColumnPath::from("name"), false)
        .build();
    let mut w =
        ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let s = schema(&[("kind", DataType::Text), ("name", DataType::Text)]);
    let rows = read_rows(&path, &s).unwrap();
    let want: Vec<Vec<Value>> = kinds
        .iter()
        .zip(&ids)
        .map(|(k, id)| {
            [k, id]
                .iter()
                .map(|v| v.as_deref().map_or(Value::Null, Value::text))
                .collect()
        })
        .collect();
    common::assert_rows_identical(&rows, &want);
    let shared = |a: &Value, b: &Value| match (a, b) {
        (Value::Text(a), Value::Text(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    // rows 2 and 4 are both "click", in the first row group and batch
    assert!(
        shared(&rows[2][0], &rows[4][0]),
        "{:?} {:?}",
        rows[2],
        rows[4]
    );
}

/// A column chunk's dictionary larger than a read batch (the reader then
/// makes the strings a batch uses, not the whole dictionary): every value
/// comes back, pairs of equal neighbours share their string, and the reader
/// stays ended once it has ended.
#[test]
fn a_dictionary_larger_than_a_batch_reads_back_and_the_end_stays_the_end() {
    let n = 20_000;
    // 9,000 distinct texts in one row group, each on two neighbouring rows
    let cities: Vec<String> = (0..n)
        .map(|i| format!("city-{}", (i / 2) % 9_000))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_parquet(
        dir.path(),
        "cities.parquet",
        vec![(
            "name",
            Arc::new(StringArray::from(cities.clone())) as ArrayRef,
        )],
    );
    let s = schema(&[("name", DataType::Text)]);
    let rows = read_rows(&path, &s).unwrap();
    let want: Vec<Vec<Value>> = cities.iter().map(|c| vec![Value::text(c)]).collect();
    common::assert_rows_identical(&rows, &want);
    for i in [0, 4_000, 8_190, 12_000, 19_998] {
        let (Value::Text(a), Value::Text(b)) = (&rows[i][0], &rows[i + 1][0]) else {
            panic!("text expected");
        };
        assert!(Arc::ptr_eq(a, b), "rows {i} and {}", i + 1);
    }
    let mut it =
        lockstep_io::parquet_rows("cities.parquet", File::open(&path).unwrap(), &s).unwrap();
    assert_eq!(it.by_ref().count(), n);
    for _ in 0..3 {
        assert!(it.next().is_none(), "the end stays the end");
    }
}
