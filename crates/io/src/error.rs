//! Errors and rejected records.
//!
//! Two kinds of failure are kept apart on purpose. An [`IoError`] stops the run:
//! the file cannot be opened, the disk fails, or the whole file has the wrong
//! shape (a Parquet column of a type that cannot become the table's type). A
//! [`BadRecord`] is one event that cannot be used; it goes to the dead-letter
//! file and the run continues, because one bad line in a day of events should
//! not cost the other million.

use std::fmt;
use std::path::PathBuf;

use lockstep_core::value::DataType;

/// Where a record sits in its input file, for people who want to go and look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// 1-based line in a JSON lines file. For CSV, the 1-based record number
    /// counting the header as 1 (a quoted field may span several physical
    /// lines, so this is the record, not the text line).
    Line(u64),
    /// 1-based row in a Parquet file, across all row groups.
    Row(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// A record that is malformed or does not fit the table's schema. It is not
/// fatal: the caller writes it to the dead-letter file and reads on.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    pub location: Location,
    /// What is wrong, in words meant for the person fixing the data.
    pub reason: String,
    /// The record as text: the line for JSON lines, the fields joined by
    /// commas for CSV, the row rendered as a JSON object for Parquet.
    pub raw: String,
}

/// A failure that stops reading or writing a file.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(
        "cannot tell the format of `{}` from its name: use a file name ending in \
         .jsonl, .ndjson or .json (JSON lines), .csv, or .parquet or .pq",
        path.display()
    )]
    UnknownFormat { path: PathBuf },

    #[error(
        "cannot write rows to `{}`: output files must end in .parquet or .jsonl \
         (CSV is accepted as input only)",
        path.display()
    )]
    UnsupportedOutput { path: PathBuf },

    #[error("cannot open `{}`: {source}; check that the file exists and is readable", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "cannot create `{}`: {source}; check that the directory exists and is writable",
        path.display()
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("error reading `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("error writing `{}`: {source}; check free disk space and permissions", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot read CSV file `{}`: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },

    #[error(
        "`{}` is not a readable Parquet file: {source}; check that the file is complete \
         and really Parquet",
        path.display()
    )]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },

    #[error("error converting Parquet data in `{}`: {source}", path.display())]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },

    #[error(
        "column `{column}` in `{}` has type {file_type}, which cannot be read as {expected}; \
         change the column's type in the table definition or convert the file",
        path.display()
    )]
    IncompatibleColumn {
        path: PathBuf,
        column: String,
        file_type: String,
        expected: DataType,
    },

    #[error(
        "column `{column}` has type {data_type}, which cannot be stored in a file; \
         cast it to BIGINT, DOUBLE, TEXT, BOOLEAN or TIMESTAMP in the view"
    )]
    UnsupportedColumnType { column: String, data_type: DataType },

    #[error(
        "a row with {got} values was written to `{}`, whose schema has {expected} columns \
         (this is a bug in lockstep; please report it)",
        path.display()
    )]
    RowShape {
        path: PathBuf,
        expected: usize,
        got: usize,
    },

    #[error(
        "a {got} value was written to {expected} column `{column}` of `{}` \
         (this is a bug in lockstep; please report it)",
        path.display()
    )]
    ValueType {
        path: PathBuf,
        column: String,
        expected: DataType,
        got: &'static str,
    },

    #[error(
        "`{}` {location}: {reason}; the file was not written by lockstep for this schema, \
         or it is damaged",
        path.display()
    )]
    InvalidRecord {
        path: PathBuf,
        location: Location,
        reason: String,
    },
}
