//! Parquet events.
//!
//! Parquet is the fast path (millions of rows per second), so rows are built
//! column by column from each record batch: one type dispatch per column per
//! batch, then a tight loop over the values. Only the table's columns are
//! decoded (a projection), and types are checked once when the file is
//! opened: a column whose type can never become the table's type makes the
//! whole file unusable, which is a fatal error rather than a million bad
//! records. Values that fail one by one (an unparsable timestamp string, an
//! unsigned number too large for BIGINT) become bad records.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{self as at, ArrowPrimitiveType, DataType as ArrowType, TimeUnit};
use arrow::record_batch::RecordBatch;
use lockstep_core::value::{DataType, Row, Schema, Value};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

use crate::coerce::{parse_timestamp_text, quote, Columns};
use crate::error::{BadRecord, IoError, Location};
use crate::jsonl::render_json;

/// Rows per record batch: big enough to amortise per-batch work, small
/// enough that a batch of rows stays in cache-friendly, constant memory.
const BATCH_SIZE: usize = 8192;

const MS_PER_DAY: i64 = 86_400_000;

/// Whether an Arrow column of type `dt` can be read into a `ty` column.
fn compatible(dt: &ArrowType, ty: DataType) -> bool {
    use ArrowType as A;
    let int = matches!(
        dt,
        A::Int8 | A::Int16 | A::Int32 | A::Int64 | A::UInt8 | A::UInt16 | A::UInt32 | A::UInt64
    );
    let string = matches!(dt, A::Utf8 | A::LargeUtf8 | A::Utf8View);
    match (ty, dt) {
        (_, A::Dictionary(_, value)) => compatible(value, ty),
        (DataType::BigInt, _) => int,
        (DataType::Double, A::Float16 | A::Float32 | A::Float64) => true,
        (DataType::Double, _) => int,
        (DataType::Text, _) => string,
        (DataType::Boolean, A::Boolean) => true,
        (DataType::Timestamp, A::Timestamp(..) | A::Int64 | A::Date32 | A::Date64) => true,
        (DataType::Timestamp, _) => string,
        _ => false,
    }
}

/// One column of a batch's values laid out row after row.
struct Cells<'a> {
    values: &'a mut [Value],
    width: usize,
    column: usize,
}

impl Cells<'_> {
    /// The column's cells, row by row (rows are laid out last first).
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Value> {
        let column = self.column;
        self.values
            .chunks_exact_mut(self.width)
            .rev()
            .map(move |row| &mut row[column])
    }

    fn reborrow(&mut self) -> Cells<'_> {
        Cells {
            values: self.values,
            width: self.width,
            column: self.column,
        }
    }
}

/// Per-row failures of one batch: (index in batch, reason).
type BadRows = Vec<(usize, String)>;

/// A failed value: why, and what to show in the record's raw text.
type Failed = (String, Value);

pub(crate) struct ParquetEvents {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    schema: Schema,
    columns: Columns,
    /// For each schema column, its index in the (projected) record batches.
    sources: Vec<Option<usize>>,
    /// The current batch's values, row after row (`columns.len()` a row)
    /// from its last row to its first, so that reading a row moves it off
    /// the end.
    pending: Vec<Value>,
    /// Rows in the current batch.
    pending_rows: usize,
    bad: VecDeque<(usize, String)>,
    /// Rows in the batches before the current one.
    batch_start: u64,
    /// Index of the next row of `pending` within its batch.
    next_in_batch: usize,
}

impl ParquetEvents {
    pub fn location(&self) -> Location {
        Location::Row(self.batch_start + self.next_in_batch as u64)
    }
}

impl ParquetEvents {
    /// Opens `path`; columns with `needed[i] == false` are not decoded and
    /// read as NULL (`None`: decode every column).
    pub fn open(
        path: &Path,
        schema: &Schema,
        needed: Option<&[bool]>,
    ) -> Result<ParquetEvents, IoError> {
        let file = File::open(path).map_err(|source| IoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        ParquetEvents::open_from(path, file, schema, needed)
    }

    /// Like [`ParquetEvents::open`] over any Parquet source (bytes fetched
    /// from an object store); `path` only names it in errors.
    pub fn open_from<R: parquet::file::reader::ChunkReader + 'static>(
        path: &Path,
        file: R,
        schema: &Schema,
        needed: Option<&[bool]>,
    ) -> Result<ParquetEvents, IoError> {
        let parquet_error = |source| IoError::Parquet {
            path: path.to_path_buf(),
            source,
        };
        let meta =
            ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(parquet_error)?;
        let columns = Columns::new(schema);
        let file_schema = meta.schema().clone();
        let mut roots = Vec::new();
        for (i, (name, &ty)) in columns.names.iter().zip(&columns.types).enumerate() {
            if needed.is_some_and(|n| !n[i]) {
                continue;
            }
            let Some(j) = find_field(file_schema.fields(), name) else {
                continue;
            };
            let dt = file_schema.field(j).data_type();
            if !compatible(dt, ty) {
                return Err(IoError::IncompatibleColumn {
                    path: path.to_path_buf(),
                    column: file_schema.field(j).name().clone(),
                    file_type: dt.to_string(),
                    expected: ty,
                });
            }
            roots.push(j);
        }
        // TEXT columns are read as dictionaries: the text of each distinct
        // value is then copied once per batch, not once per row, and rows
        // share it (most text columns of an event log repeat: users, kinds,
        // campaigns). Parquet's own dictionary pages are kept as they are;
        // plain pages are decoded into a dictionary by the reader.
        let dictionary_text = |j: usize| {
            columns.names.iter().zip(&columns.types).any(|(name, &ty)| {
                ty == DataType::Text && find_field(file_schema.fields(), name) == Some(j)
            })
        };
        let mut changed = false;
        let fields: Vec<at::FieldRef> = file_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| match f.data_type() {
                ArrowType::Utf8 | ArrowType::LargeUtf8
                    if roots.contains(&j) && dictionary_text(j) =>
                {
                    changed = true;
                    let dt = ArrowType::Dictionary(
                        Box::new(ArrowType::Int32),
                        Box::new(f.data_type().clone()),
                    );
                    Arc::new(f.as_ref().clone().with_data_type(dt))
                }
                _ => f.clone(),
            })
            .collect();
        let meta = if changed {
            let supplied = Arc::new(at::Schema::new_with_metadata(
                fields,
                file_schema.metadata().clone(),
            ));
            ArrowReaderMetadata::try_new(
                meta.metadata().clone(),
                ArrowReaderOptions::new().with_schema(supplied),
            )
            .map_err(parquet_error)?
        } else {
            meta
        };
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta);
        // Arrow's top-level fields are the Parquet schema's root columns, in
        // order, so field indices select root columns.
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_SIZE)
            .build()
            .map_err(parquet_error)?;
        let batch_schema = arrow::record_batch::RecordBatchReader::schema(&reader);
        let sources = columns
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                if needed.is_some_and(|n| !n[i]) {
                    None
                } else {
                    find_field(batch_schema.fields(), name)
                }
            })
            .collect();
        Ok(ParquetEvents {
            path: path.to_path_buf(),
            reader,
            schema: schema.clone(),
            columns,
            sources,
            pending: Vec::new(),
            pending_rows: 0,
            bad: VecDeque::new(),
            batch_start: 0,
            next_in_batch: 0,
        })
    }

    pub fn next_record(&mut self) -> Result<Option<Result<Row, BadRecord>>, IoError> {
        let mut row = Vec::with_capacity(self.columns.len());
        Ok(self.next_record_into(&mut row)?.map(|r| r.map(|()| row)))
    }

    /// Like [`ParquetEvents::next_record`], the event's values appended to
    /// `out` (no allocation per event). A bad record appends nothing.
    pub fn next_record_into(
        &mut self,
        out: &mut Vec<Value>,
    ) -> Result<Option<Result<(), BadRecord>>, IoError> {
        loop {
            let width = self.columns.len();
            // (the buffer's length guards the unsafe move below even if the
            // row count were wrong)
            if self.next_in_batch < self.pending_rows && self.pending.len() >= width {
                let i = self.next_in_batch;
                self.next_in_batch += 1;
                let rest = self.pending.len() - width;
                if self.bad.front().is_some_and(|b| b.0 == i) {
                    let (_, reason) = self.bad.pop_front().unwrap_or_default();
                    let row: Row = self.pending.drain(rest..).collect();
                    return Ok(Some(Err(BadRecord {
                        location: Location::Row(self.batch_start + i as u64 + 1),
                        reason,
                        raw: render_json(&row, &self.schema),
                    })));
                }
                out.reserve(width);
                // (`out.extend(self.pending.drain(rest..))` does the same
                // at twice the instructions per event, measured.)
                // SAFETY: `rest + width == pending.len()`, so the row's
                // `width` values at the end of `pending` are initialized;
                // they are moved bit for bit into `out`'s reserved spare
                // room, then `pending` is shortened past them without
                // dropping them and `out` lengthened over them: every value
                // has exactly one owner before and after, and nothing
                // between the copy and the two `set_len`s can panic.
                unsafe {
                    let from = self.pending.as_ptr().add(rest);
                    let to = out.as_mut_ptr().add(out.len());
                    std::ptr::copy_nonoverlapping(from, to, width);
                    self.pending.set_len(rest);
                    out.set_len(out.len() + width);
                }
                return Ok(Some(Ok(())));
            }
            self.batch_start += self.next_in_batch as u64;
            self.next_in_batch = 0;
            // the batch is used up: nothing is pending until the next one
            // is converted whole, whatever happens below
            self.pending_rows = 0;
            self.pending.clear();
            self.bad.clear();
            let batch = match self.reader.next() {
                None => return Ok(None),
                Some(Ok(batch)) => batch,
                Some(Err(source)) => {
                    return Err(IoError::Arrow {
                        path: self.path.clone(),
                        source,
                    })
                }
            };
            self.convert_batch(&batch)?;
        }
    }

    /// Builds the rows of one batch, column by column.
    fn convert_batch(&mut self, batch: &RecordBatch) -> Result<(), IoError> {
        let n = batch.num_rows();
        let width = self.columns.len();
        let mut rows = std::mem::take(&mut self.pending);
        rows.clear();
        rows.resize(n * width, Value::Null);
        let mut bad = BadRows::new();
        for (i, source) in self.sources.iter().enumerate() {
            let Some(j) = *source else {
                continue; // NULL already
            };
            let before = bad.len();
            let array = batch.column(j);
            let ty = self.columns.types[i];
            let cells = Cells {
                values: &mut rows,
                width,
                column: i,
            };
            let converted =
                convert_column(array.as_ref(), ty, cells, &mut bad).map_err(|e| match e {
                    Some(source) => IoError::Arrow {
                        path: self.path.clone(),
                        source,
                    },
                    None => IoError::IncompatibleColumn {
                        path: self.path.clone(),
                        column: self.columns.names[i].clone(),
                        file_type: array.data_type().to_string(),
                        expected: ty,
                    },
                });
            converted?;
            let name = &self.columns.names[i];
            for entry in &mut bad[before..] {
                entry.1 = format!("column `{name}`: {}", entry.1);
            }
        }
        // First failing column of each row wins; entries are per column, in
        // row order within a column, so a stable sort by row keeps that order.
        bad.sort_by_key(|b| b.0);
        bad.dedup_by_key(|b| b.0);
        self.bad = bad.into();
        self.pending = rows;
        self.pending_rows = n;
        Ok(())
    }
}

fn find_field(fields: &at::Fields, name: &str) -> Option<usize> {
    fields.iter().position(|f| f.name() == name).or_else(|| {
        fields
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    })
}

/// Appends one column's values to `rows`. `Err(None)` means the Arrow type
/// cannot be converted (checked at open, so not expected); `Err(Some(_))` is
/// an Arrow failure while decoding a dictionary.
fn convert_column(
    array: &dyn Array,
    ty: DataType,
    mut rows: Cells<'_>,
    bad: &mut BadRows,
) -> Result<(), Option<arrow::error::ArrowError>> {
    use ArrowType as A;
    match (ty, array.data_type()) {
        (DataType::Text, A::Dictionary(key, value))
            if **key == A::Int32 && matches!(**value, A::Utf8 | A::LargeUtf8) =>
        {
            fill_text_dictionary(array.as_dictionary::<at::Int32Type>(), rows.reborrow())
        }
        (_, A::Dictionary(_, value)) => {
            let plain = arrow::compute::cast(array, value).map_err(Some)?;
            return convert_column(plain.as_ref(), ty, rows.reborrow(), bad);
        }
        (DataType::BigInt, _) => {
            if !fill_int(array, rows, bad, Value::BigInt) {
                return Err(None);
            }
        }
        (DataType::Double, A::Float16) => {
            fill::<at::Float16Type>(array, rows, |v| Value::Double(v.to_f64()))
        }
        (DataType::Double, A::Float32) => {
            fill::<at::Float32Type>(array, rows, |v| Value::Double(v.into()))
        }
        (DataType::Double, A::Float64) => fill::<at::Float64Type>(array, rows, Value::Double),
        (DataType::Double, A::UInt64) => {
            fill::<at::UInt64Type>(array, rows, |v| Value::Double(v as f64))
        }
        (DataType::Double, _) => {
            if !fill_int(array, rows, bad, |v| Value::Double(v as f64)) {
                return Err(None);
            }
        }
        (DataType::Text, _) => {
            let text = |s: &str| Ok(Value::Text(Arc::from(s)));
            if !fill_strings(array, rows, bad, &text) {
                return Err(None);
            }
        }
        (DataType::Boolean, A::Boolean) => {
            for (cell, v) in rows.iter_mut().zip(array.as_boolean().iter()) {
                *cell = v.map_or(Value::Null, Value::Boolean);
            }
        }
        (DataType::Timestamp, A::Timestamp(unit, _)) => fill_timestamps(array, *unit, rows, bad),
        (DataType::Timestamp, A::Int64) => fill::<at::Int64Type>(array, rows, Value::Timestamp),
        (DataType::Timestamp, A::Date32) => {
            fill::<at::Date32Type>(array, rows, |d| Value::Timestamp(i64::from(d) * MS_PER_DAY))
        }
        (DataType::Timestamp, A::Date64) => fill::<at::Date64Type>(array, rows, Value::Timestamp),
        (DataType::Timestamp, _) => {
            let parse = |s: &str| match parse_timestamp_text(s) {
                Some(ms) => Ok(Value::Timestamp(ms)),
                None => Err(format!(
                    "cannot parse TIMESTAMP from {}; use RFC 3339 such as 2024-01-01T00:00:00Z",
                    quote(s)
                )),
            };
            if !fill_strings(array, rows, bad, &parse) {
                return Err(None);
            }
        }
        _ => return Err(None),
    }
    Ok(())
}

/// Appends a dictionary-encoded TEXT column: one shared string per
/// dictionary entry, a reference to it per row.
/// The string of each dictionary entry is made on its first use in the
/// batch: a column chunk's dictionary can be far larger than a batch.
fn fill_text_dictionary(array: &arrow::array::DictionaryArray<at::Int32Type>, rows: Cells<'_>) {
    let values = array.values();
    match values.data_type() {
        ArrowType::LargeUtf8 => fill_keys(array, values.as_string::<i64>(), rows),
        _ => fill_keys(array, values.as_string::<i32>(), rows),
    }
}

fn fill_keys<O: arrow::array::OffsetSizeTrait>(
    array: &arrow::array::DictionaryArray<at::Int32Type>,
    texts: &arrow::array::GenericStringArray<O>,
    mut rows: Cells<'_>,
) {
    let mut made: Vec<Option<Value>> = Vec::new();
    let mut lazy: std::collections::HashMap<usize, Value> = std::collections::HashMap::new();
    // a dictionary no bigger than the batch: a slot per entry; else a map
    // of the entries used
    let dense = texts.len() <= array.len();
    if dense {
        made.resize(texts.len(), None);
    }
    let make = |k: usize| {
        if texts.is_null(k) {
            Value::Null
        } else {
            Value::Text(Arc::from(texts.value(k)))
        }
    };
    for (cell, key) in rows.iter_mut().zip(array.keys().iter()) {
        // a key outside the dictionary is rejected when Arrow builds the
        // array, so indexing cannot fail
        *cell = match key {
            None => Value::Null,
            Some(k) if dense => made[k as usize]
                .get_or_insert_with(|| make(k as usize))
                .clone(),
            Some(k) => lazy
                .entry(k as usize)
                .or_insert_with(|| make(k as usize))
                .clone(),
        };
    }
}

/// Appends a primitive column through an infallible conversion.
fn fill<T: ArrowPrimitiveType>(
    array: &dyn Array,
    mut rows: Cells<'_>,
    f: impl Fn(T::Native) -> Value,
) {
    let a = array.as_primitive::<T>();
    if a.null_count() == 0 {
        for (cell, v) in rows.iter_mut().zip(a.values().iter()) {
            *cell = f(*v);
        }
    } else {
        for (cell, v) in rows.iter_mut().zip(a.iter()) {
            *cell = v.map_or(Value::Null, &f);
        }
    }
}

/// Appends a primitive column through a conversion that can fail per value.
fn try_fill<T: ArrowPrimitiveType>(
    array: &dyn Array,
    mut rows: Cells<'_>,
    bad: &mut BadRows,
    f: impl Fn(T::Native) -> Result<Value, Failed>,
) {
    let a = array.as_primitive::<T>();
    for (i, (cell, v)) in rows.iter_mut().zip(a.iter()).enumerate() {
        *cell = match v.map(&f) {
            None => Value::Null,
            Some(Ok(value)) => value,
            Some(Err((reason, shown))) => {
                bad.push((i, reason));
                shown
            }
        };
    }
}

/// Appends any integer column, widened to i64 and passed to `make`. Returns
/// false if the column is not an integer column.
fn fill_int(array: &dyn Array, rows: Cells<'_>, bad: &mut BadRows, make: fn(i64) -> Value) -> bool {
    use ArrowType as A;
    match array.data_type() {
        A::Int8 => fill::<at::Int8Type>(array, rows, |v| make(v.into())),
        A::Int16 => fill::<at::Int16Type>(array, rows, |v| make(v.into())),
        A::Int32 => fill::<at::Int32Type>(array, rows, |v| make(v.into())),
        A::Int64 => fill::<at::Int64Type>(array, rows, make),
        A::UInt8 => fill::<at::UInt8Type>(array, rows, |v| make(v.into())),
        A::UInt16 => fill::<at::UInt16Type>(array, rows, |v| make(v.into())),
        A::UInt32 => fill::<at::UInt32Type>(array, rows, |v| make(v.into())),
        A::UInt64 => try_fill::<at::UInt64Type>(array, rows, bad, |v| {
            i64::try_from(v).map(make).map_err(|_| {
                (
                    format!("{v} is too large for BIGINT"),
                    Value::Text(Arc::from(v.to_string())),
                )
            })
        }),
        _ => return false,
    }
    true
}

fn fill_timestamps(array: &dyn Array, unit: TimeUnit, rows: Cells<'_>, bad: &mut BadRows) {
    // Sub-millisecond units truncate toward negative infinity, so an instant
    // maps to the millisecond that contains it, before 1970 as after.
    match unit {
        TimeUnit::Second => try_fill::<at::TimestampSecondType>(array, rows, bad, |s| {
            s.checked_mul(1000).map(Value::Timestamp).ok_or_else(|| {
                (
                    format!("{s} seconds is outside the TIMESTAMP range"),
                    Value::BigInt(s),
                )
            })
        }),
        TimeUnit::Millisecond => {
            fill::<at::TimestampMillisecondType>(array, rows, Value::Timestamp)
        }
        TimeUnit::Microsecond => fill::<at::TimestampMicrosecondType>(array, rows, |us| {
            Value::Timestamp(us.div_euclid(1_000))
        }),
        TimeUnit::Nanosecond => fill::<at::TimestampNanosecondType>(array, rows, |ns| {
            Value::Timestamp(ns.div_euclid(1_000_000))
        }),
    }
}

/// Appends any string column through `f`; a failed value keeps its text in
/// the row (for the bad record's raw form). Returns false if the column is
/// not a string column.
fn fill_strings(
    array: &dyn Array,
    rows: Cells<'_>,
    bad: &mut BadRows,
    f: &impl Fn(&str) -> Result<Value, String>,
) -> bool {
    match array.data_type() {
        ArrowType::Utf8 => push_strs(array.as_string::<i32>().iter(), rows, bad, f),
        ArrowType::LargeUtf8 => push_strs(array.as_string::<i64>().iter(), rows, bad, f),
        ArrowType::Utf8View => push_strs(array.as_string_view().iter(), rows, bad, f),
        _ => return false,
    }
    true
}

fn push_strs<'a>(
    values: impl Iterator<Item = Option<&'a str>>,
    mut rows: Cells<'_>,
    bad: &mut BadRows,
    f: &impl Fn(&str) -> Result<Value, String>,
) {
    for (i, (cell, v)) in rows.iter_mut().zip(values).enumerate() {
        *cell = match v.map(f) {
            None => Value::Null,
            Some(Ok(value)) => value,
            Some(Err(reason)) => {
                bad.push((i, reason));
                Value::Text(Arc::from(v.unwrap_or_default()))
            }
        };
    }
}
