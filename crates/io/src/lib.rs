//! lockstep-io: the files around the engine.
//!
//! Events come in as JSON lines, CSV or Parquet and leave as rows in table
//! schema order; view rows go out as Parquet or JSON lines; records that
//! cannot be used go to a dead-letter file. The engine itself stays pure.
//!
//! Everything streams: readers hold one line or one record batch, writers one
//! line or one batch, so input and output size are bounded only by the disk.
//! Events are read in file order, because event order is part of the result
//! (ties in event time are broken by arrival).

mod coerce;
mod csv_in;
mod dead_letter;
mod error;
mod jsonl;
mod parquet_in;
mod parquet_out;
pub mod raw;

use std::path::Path;

use lockstep_core::value::{Row, Schema, Value};

pub use dead_letter::{dead_letter_path, late_path, DeadLetterWriter};
pub use error::{BadRecord, IoError, Location};
pub use jsonl::render_json;

/// A file format, chosen by file name extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON lines: one JSON object per line (`.jsonl`, `.ndjson`, `.json`).
    Jsonl,
    /// Comma-separated values with a header row (`.csv`).
    Csv,
    /// Apache Parquet (`.parquet`, `.pq`).
    Parquet,
}

impl Format {
    /// The format named by the extension of `path` (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Format, IoError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("jsonl" | "ndjson" | "json") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some("parquet" | "pq") => Ok(Format::Parquet),
            _ => Err(IoError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

enum Source {
    Jsonl(jsonl::JsonlEvents),
    Csv(csv_in::CsvEvents),
    Parquet(parquet_in::ParquetEvents),
}

/// Streams events from a file in file order, as rows in table-schema column
/// order.
///
/// Each item is `Ok(Ok(row))` for a usable event, `Ok(Err(bad))` for a record
/// to send to the dead-letter file (reading goes on), or `Err(_)` for a fatal
/// error, after which the iterator ends.
pub struct EventReader {
    source: Source,
    done: bool,
}

impl EventReader {
    /// Where the record returned last came from (1-based line or row), so a
    /// record the engine rejects after reading can be dead-lettered with it.
    pub fn location(&self) -> Location {
        match &self.source {
            Source::Jsonl(r) => r.location(),
            Source::Csv(r) => r.location(),
            Source::Parquet(r) => r.location(),
        }
    }
}

impl EventReader {
    /// The next record as [`Iterator::next`] gives it, with a usable
    /// event's values appended to `out` instead of returned as a row (the
    /// Parquet reader then allocates nothing per event). A bad record
    /// appends nothing.
    pub fn next_into(
        &mut self,
        out: &mut Vec<Value>,
    ) -> Option<Result<Result<(), BadRecord>, IoError>> {
        let Source::Parquet(r) = &mut self.source else {
            return self
                .next()
                .map(|item| item.map(|record| record.map(|row| out.extend(row))));
        };
        if self.done {
            return None;
        }
        let next = r.next_record_into(out);
        self.item(next)
    }

    /// A source's answer as an item: the reader is done after its end or
    /// an error.
    fn item<T>(&mut self, next: Result<Option<T>, IoError>) -> Option<Result<T, IoError>> {
        match next {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Iterator for EventReader {
    type Item = Result<Result<Row, BadRecord>, IoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = match &mut self.source {
            Source::Jsonl(r) => r.next_record(),
            Source::Csv(r) => r.next_record(),
            Source::Parquet(r) => r.next_record(),
        };
        self.item(next)
    }
}

/// Opens an event file, its format chosen by extension.
///
/// Columns are matched by name, case-insensitively; fields the table does not
/// have are ignored and columns the file does not have read as NULL. For
/// Parquet, a column whose type can never convert to the table's type is
/// reported here, before any event is read.
pub fn open_events(path: &Path, schema: &Schema) -> Result<EventReader, IoError> {
    open_events_projected(path, schema, None)
}

/// Like [`open_events`], but a Parquet file decodes only the columns with
/// `needed[i] == true`; the others read as NULL. A batch job passes the
/// columns its view uses, so wide files cost only what the view reads. Text
/// formats are parsed whole either way (a line must be valid to be read).
pub fn open_events_projected(
    path: &Path,
    schema: &Schema,
    needed: Option<&[bool]>,
) -> Result<EventReader, IoError> {
    let source = match Format::from_path(path)? {
        Format::Jsonl => Source::Jsonl(jsonl::JsonlEvents::open(path, schema)?),
        Format::Csv => Source::Csv(csv_in::CsvEvents::open(path, schema)?),
        Format::Parquet => Source::Parquet(parquet_in::ParquetEvents::open(path, schema, needed)?),
    };
    Ok(EventReader {
        source,
        done: false,
    })
}

/// Somewhere rows go. Writers buffer; call [`RowSink::finish`] to complete
/// the file (a Parquet file is unreadable until its footer is written).
pub trait RowSink: Send {
    /// Appends one row, values in schema order.
    fn write(&mut self, row: &[Value]) -> Result<(), IoError>;
    /// Flushes and closes the file; returns the number of rows written.
    fn finish(self: Box<Self>) -> Result<u64, IoError>;
}

/// Creates a row file for `schema`: Parquet for `.parquet`/`.pq`, JSON lines
/// for `.jsonl`/`.ndjson`/`.json`. An existing file is replaced.
pub fn create_row_writer(path: &Path, schema: &Schema) -> Result<Box<dyn RowSink>, IoError> {
    match Format::from_path(path)? {
        Format::Parquet => Ok(Box::new(parquet_out::ParquetRowWriter::create(
            path, schema,
        )?)),
        Format::Jsonl => Ok(Box::new(jsonl::JsonlWriter::create(path, schema)?)),
        Format::Csv => Err(IoError::UnsupportedOutput {
            path: path.to_path_buf(),
        }),
    }
}

/// Reads a whole row file back (for tests and verification), matching
/// columns by name. Anything the writers produce reads back bit-exactly; a
/// record that does not fit the schema is an error here, not a dead letter.
pub fn read_rows(path: &Path, schema: &Schema) -> Result<Vec<Row>, IoError> {
    collect_rows(path, open_events(path, schema)?)
}

/// Every row of a record stream; a bad record is an error here.
fn collect_rows(
    path: &Path,
    records: impl Iterator<Item = Result<Result<Row, BadRecord>, IoError>>,
) -> Result<Vec<Row>, IoError> {
    let mut rows = Vec::new();
    for record in records {
        match record? {
            Ok(row) => rows.push(row),
            Err(bad) => {
                return Err(IoError::InvalidRecord {
                    path: path.to_path_buf(),
                    location: bad.location,
                    reason: bad.reason,
                })
            }
        }
    }
    Ok(rows)
}

/// Encodes rows as one Parquet file in memory (object-store segments).
/// `name` only labels errors.
pub fn rows_to_parquet(name: &str, rows: &[Row], schema: &Schema) -> Result<Vec<u8>, IoError> {
    let mut w = parquet_out::ParquetRowWriter::in_memory(Path::new(name), schema)?;
    for r in rows {
        w.write(r)?;
    }
    w.into_bytes()
}

/// A Parquet file written as rows arrive, into any writer (an object
/// uploaded in parts as it grows): memory holds one record batch and one
/// row group, however many rows pass.
pub struct ParquetStream<W: std::io::Write + Send>(parquet_out::ParquetRowWriter<W>);

impl<W: std::io::Write + Send> ParquetStream<W> {
    /// `name` only labels errors.
    pub fn new(name: &str, schema: &Schema, out: W) -> Result<Self, IoError> {
        parquet_out::ParquetRowWriter::with_writer(Path::new(name), schema, out).map(ParquetStream)
    }

    pub fn write(&mut self, row: &[Value]) -> Result<(), IoError> {
        self.0.write(row)
    }

    /// Completes the file; returns the writer and the rows written.
    pub fn finish(self) -> Result<(W, u64), IoError> {
        self.0.into_inner()
    }
}

/// The rows of a Parquet file read batch by batch from any source (a
/// local file), in `schema`'s columns matched by name; a record that does
/// not fit is an error, as in [`read_rows`]. `name` labels errors.
pub fn parquet_rows<R: parquet::file::reader::ChunkReader + 'static>(
    name: &str,
    source: R,
    schema: &Schema,
) -> Result<impl Iterator<Item = Result<Row, IoError>>, IoError> {
    let path = Path::new(name).to_path_buf();
    let mut r = parquet_in::ParquetEvents::open_from(&path, source, schema, None)?;
    Ok(std::iter::from_fn(move || match r.next_record() {
        Ok(None) => None,
        Ok(Some(Ok(row))) => Some(Ok(row)),
        Ok(Some(Err(bad))) => Some(Err(IoError::InvalidRecord {
            path: path.clone(),
            location: bad.location,
            reason: bad.reason,
        })),
        Err(e) => Some(Err(e)),
    }))
}

/// Parses single JSON events (one object each) into rows of a table schema,
/// with the same coercions and messages as the JSON-lines reader.
#[derive(Debug, Clone)]
pub struct JsonEventParser {
    columns: coerce::Columns,
}

impl JsonEventParser {
    pub fn new(schema: &Schema) -> JsonEventParser {
        JsonEventParser {
            columns: coerce::Columns::new(schema),
        }
    }

    /// One event; `Err` says what is wrong with it.
    pub fn parse(&self, text: &str) -> Result<Row, String> {
        let mut row = vec![Value::Null; self.columns.len()];
        coerce::parse_json_row(text, &self.columns, &mut row)?;
        Ok(row)
    }
}

/// Decodes a whole Parquet file held in memory into rows of `schema`
/// (columns matched by name, as [`read_rows`]); `name` labels errors.
pub fn rows_from_parquet(
    name: &str,
    bytes: bytes::Bytes,
    schema: &Schema,
) -> Result<Vec<Row>, IoError> {
    let path = Path::new(name);
    let mut r = parquet_in::ParquetEvents::open_from(path, bytes, schema, None)?;
    collect_rows(path, std::iter::from_fn(|| r.next_record().transpose()))
}
