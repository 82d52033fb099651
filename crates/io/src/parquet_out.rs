//! Parquet row output.
//!
//! Rows are appended to Arrow builders, one per column, and handed to the
//! Parquet writer as a record batch every [`BATCH_ROWS`] rows. Row groups are
//! capped at the same size, so memory holds at most one batch plus one
//! encoded row group, however long the run. Types map one to one:
//! BIGINT → Int64, DOUBLE → Float64, TEXT → Utf8, BOOLEAN → Boolean,
//! TIMESTAMP → Timestamp(Millisecond, no time zone), all nullable.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use lockstep_core::value::{DataType, Schema, Value};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::basic::Encoding;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::error::IoError;
use crate::RowSink;

/// Rows per record batch and per row group.
const BATCH_ROWS: usize = 65_536;

/// A column chunk's dictionary stops growing at this size and the chunk
/// goes on in plain encoding. The writer's default (1 MiB) holds 128k
/// distinct 8-byte values, so a unique column (an event id, an event time)
/// was dictionary-encoded through a whole 65,536-row group: a hash per
/// value and a file bigger than plain. At 128 KiB such a column falls back
/// after 16k values, while feature columns (counts, ratios, keys with
/// repeats) keep their dictionary. Measured on the canonical view's
/// 2M-event outputs: files 11–14% smaller, and 1.4% fewer instructions
/// for the whole run (docs/performance.md).
const DICTIONARY_LIMIT: usize = 128 * 1024;

/// Text bytes that force an early batch: keeps Utf8's 32-bit offsets safe
/// and memory bounded when rows carry long strings.
const BATCH_TEXT_BYTES: usize = 256 << 20;

enum ColumnBuilder {
    BigInt(Int64Builder),
    Double(Float64Builder),
    Text(StringBuilder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    fn new(ty: DataType) -> Option<ColumnBuilder> {
        Some(match ty {
            DataType::BigInt => ColumnBuilder::BigInt(Int64Builder::with_capacity(BATCH_ROWS)),
            DataType::Double => ColumnBuilder::Double(Float64Builder::with_capacity(BATCH_ROWS)),
            DataType::Text => ColumnBuilder::Text(StringBuilder::new()),
            DataType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(BATCH_ROWS)),
            DataType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMillisecondBuilder::with_capacity(BATCH_ROWS))
            }
            DataType::Interval | DataType::Null => return None,
        })
    }

    fn arrow_type(ty: DataType) -> ArrowType {
        match ty {
            DataType::BigInt => ArrowType::Int64,
            DataType::Double => ArrowType::Float64,
            DataType::Text => ArrowType::Utf8,
            DataType::Boolean => ArrowType::Boolean,
            _ => ArrowType::Timestamp(TimeUnit::Millisecond, None),
        }
    }

    /// Whether `value` can go into this column. BIGINT values are accepted
    /// in DOUBLE columns (widened), as SQL would.
    fn accepts(&self, value: &Value) -> bool {
        matches!(
            (self, value),
            (_, Value::Null)
                | (ColumnBuilder::BigInt(_), Value::BigInt(_))
                | (
                    ColumnBuilder::Double(_),
                    Value::Double(_) | Value::BigInt(_)
                )
                | (ColumnBuilder::Text(_), Value::Text(_))
                | (ColumnBuilder::Boolean(_), Value::Boolean(_))
                | (ColumnBuilder::Timestamp(_), Value::Timestamp(_))
        )
    }

    /// Appends a value already checked with [`Self::accepts`]; returns the
    /// text bytes added.
    fn append(&mut self, value: &Value) -> usize {
        match (self, value) {
            (ColumnBuilder::BigInt(b), Value::BigInt(i)) => b.append_value(*i),
            (ColumnBuilder::Double(b), Value::Double(d)) => b.append_value(*d),
            (ColumnBuilder::Double(b), Value::BigInt(i)) => b.append_value(*i as f64),
            (ColumnBuilder::Text(b), Value::Text(s)) => {
                b.append_value(s);
                return s.len();
            }
            (ColumnBuilder::Boolean(b), Value::Boolean(v)) => b.append_value(*v),
            (ColumnBuilder::Timestamp(b), Value::Timestamp(ms)) => b.append_value(*ms),
            (ColumnBuilder::BigInt(b), _) => b.append_null(),
            (ColumnBuilder::Double(b), _) => b.append_null(),
            (ColumnBuilder::Text(b), _) => b.append_null(),
            (ColumnBuilder::Boolean(b), _) => b.append_null(),
            (ColumnBuilder::Timestamp(b), _) => b.append_null(),
        }
        0
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::BigInt(b) => Arc::new(b.finish()),
            ColumnBuilder::Double(b) => Arc::new(b.finish()),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::BigInt(_) => "BIGINT",
        Value::Double(_) => "DOUBLE",
        Value::Text(_) => "TEXT",
        Value::Boolean(_) => "BOOLEAN",
        Value::Timestamp(_) => "TIMESTAMP",
        Value::Interval(_) => "INTERVAL",
    }
}

pub(crate) struct ParquetRowWriter<W: std::io::Write + Send = File> {
    path: PathBuf,
    schema: Schema,
    arrow_schema: SchemaRef,
    writer: ArrowWriter<W>,
    builders: Vec<ColumnBuilder>,
    buffered_rows: usize,
    buffered_text: usize,
    rows: u64,
}

impl ParquetRowWriter<File> {
    pub fn create(path: &Path, schema: &Schema) -> Result<ParquetRowWriter, IoError> {
        let file = File::create(path).map_err(|source| IoError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        ParquetRowWriter::with_writer(path, schema, file)
    }
}

impl ParquetRowWriter<Vec<u8>> {
    /// A writer into memory (`path` only names it in errors).
    pub fn in_memory(path: &Path, schema: &Schema) -> Result<Self, IoError> {
        ParquetRowWriter::with_writer(path, schema, Vec::new())
    }

    /// Completes the file and returns its bytes.
    pub fn into_bytes(self) -> Result<Vec<u8>, IoError> {
        self.into_inner().map(|(bytes, _)| bytes)
    }
}

impl<W: std::io::Write + Send> ParquetRowWriter<W> {
    /// Completes the file; returns its writer and the rows written.
    pub fn into_inner(mut self) -> Result<(W, u64), IoError> {
        self.flush_batch()?;
        let path = self.path.clone();
        let rows = self.rows;
        self.writer
            .into_inner()
            .map(|w| (w, rows))
            .map_err(|e| parquet_write_error(&path, e))
    }

    pub(crate) fn with_writer(path: &Path, schema: &Schema, file: W) -> Result<Self, IoError> {
        let mut builders = Vec::with_capacity(schema.len());
        let mut fields = Vec::with_capacity(schema.len());
        for c in &schema.columns {
            let builder =
                ColumnBuilder::new(c.data_type).ok_or(IoError::UnsupportedColumnType {
                    column: c.name.clone(),
                    data_type: c.data_type,
                })?;
            builders.push(builder);
            let ty = ColumnBuilder::arrow_type(c.data_type);
            fields.push(Field::new(&c.name, ty, true));
        }
        let arrow_schema = Arc::new(ArrowSchema::new(fields));
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(BATCH_ROWS))
            .set_dictionary_page_size_limit(DICTIONARY_LIMIT);
        // Integers and times are delta-encoded, not dictionary-encoded:
        // ids and times rise, counts move by small steps, so the deltas
        // bit-pack into a few bits a value, without a hash per value. On
        // the canonical view's 2M-event outputs: files 28.1 -> 17.4 MB
        // (bursty) and 47.4 -> 34.8 MB (zipf), the writer 18% fewer
        // instructions (docs/performance.md).
        for c in &schema.columns {
            if matches!(c.data_type, DataType::BigInt | DataType::Timestamp) {
                let path = ColumnPath::from(c.name.as_str());
                props = props
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
            }
        }
        let props = props.build();
        // The Parquet writer buffers its output itself (BufWriter inside), so
        // the file is passed as is.
        let writer = ArrowWriter::try_new(file, arrow_schema.clone(), Some(props))
            .map_err(|e| parquet_write_error(path, e))?;
        Ok(ParquetRowWriter {
            path: path.to_path_buf(),
            schema: schema.clone(),
            arrow_schema,
            writer,
            builders,
            buffered_rows: 0,
            buffered_text: 0,
            rows: 0,
        })
    }

    fn flush_batch(&mut self) -> Result<(), IoError> {
        if self.buffered_rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(|b| b.finish()).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.buffered_rows));
        let batch = RecordBatch::try_new_with_options(self.arrow_schema.clone(), arrays, &options)
            .map_err(|source| IoError::Arrow {
                path: self.path.clone(),
                source,
            })?;
        self.writer
            .write(&batch)
            .map_err(|e| parquet_write_error(&self.path, e))?;
        self.buffered_rows = 0;
        self.buffered_text = 0;
        Ok(())
    }
}

/// Parquet reports disk failures as its own error type; surface them as
/// write errors so the message points at the disk, not the format.
fn parquet_write_error(path: &Path, e: parquet::errors::ParquetError) -> IoError {
    IoError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    }
}

impl<W: std::io::Write + Send> RowSink for ParquetRowWriter<W> {
    fn write(&mut self, row: &[Value]) -> Result<(), IoError> {
        if row.len() != self.builders.len() {
            return Err(IoError::RowShape {
                path: self.path.clone(),
                expected: self.builders.len(),
                got: row.len(),
            });
        }
        // Check the whole row before appending anything, so a rejected row
        // leaves the builders aligned.
        if let Some(i) = (0..row.len()).find(|&i| !self.builders[i].accepts(&row[i])) {
            return Err(IoError::ValueType {
                path: self.path.clone(),
                column: self.schema.columns[i].name.clone(),
                expected: self.schema.columns[i].data_type,
                got: value_kind(&row[i]),
            });
        }
        for (builder, value) in self.builders.iter_mut().zip(row) {
            self.buffered_text += builder.append(value);
        }
        self.buffered_rows += 1;
        self.rows += 1;
        if self.buffered_rows >= BATCH_ROWS || self.buffered_text >= BATCH_TEXT_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, IoError> {
        self.flush_batch()?;
        let rows = self.rows;
        let path = self.path.clone();
        self.writer
            .close()
            .map_err(|e| parquet_write_error(&path, e))?;
        Ok(rows)
    }
}
