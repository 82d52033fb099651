//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::mem::discriminant;

use lockstep_core::value::{Column, DataType, Row, Schema, Value};
use lockstep_io::{BadRecord, IoError};

pub fn schema(cols: &[(&str, DataType)]) -> Schema {
    Schema {
        columns: cols
            .iter()
            .map(|(name, data_type)| Column {
                name: (*name).to_string(),
                data_type: *data_type,
            })
            .collect(),
    }
}

/// The five-type schema most tests use.
pub fn all_types() -> Schema {
    schema(&[
        ("id", DataType::BigInt),
        ("x", DataType::Double),
        ("name", DataType::Text),
        ("ok", DataType::Boolean),
        ("ts", DataType::Timestamp),
    ])
}

/// Same variant and same bits (floats by bit pattern). `Value`'s own
/// equality treats BIGINT 1 and DOUBLE 1.0 as equal, which is too lenient
/// for round-trip checks.
pub fn same(a: &Value, b: &Value) -> bool {
    discriminant(a) == discriminant(b) && a.bit_eq(b)
}

pub fn assert_rows_identical(got: &[Row], want: &[Row]) {
    assert_eq!(got.len(), want.len(), "row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "row {i} width");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(same(a, b), "row {i} column {j}: got {a:?}, want {b:?}");
        }
    }
}

/// Collects a reader, failing the test on a fatal error.
pub fn collect(
    reader: impl Iterator<Item = Result<Result<Row, BadRecord>, IoError>>,
) -> Vec<Result<Row, BadRecord>> {
    reader.map(|r| r.expect("no fatal error")).collect()
}
