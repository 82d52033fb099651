//! CSV events.
//!
//! The header row names the columns; they are matched to the table by name
//! (case-insensitive), so column order in the file does not matter and extra
//! columns are ignored. Records are read as bytes into one reused record, and
//! UTF-8 is checked per field, so a stray byte costs one record, not the run.

use std::fs::File;
use std::path::{Path, PathBuf};

use csv::ByteRecord;
use lockstep_core::value::{Schema, Value};

use crate::coerce::{coerce_text, Columns};
use crate::error::{BadRecord, IoError, Location};

pub(crate) struct CsvEvents {
    path: PathBuf,
    reader: csv::Reader<File>,
    columns: Columns,
    /// For each schema column, the index of its field in a record.
    fields: Vec<Option<usize>>,
    header_len: usize,
    record: ByteRecord,
}

impl CsvEvents {
    pub fn location(&self) -> Location {
        Location::Line(self.record.position().map_or(0, |p| p.record()) + 1)
    }
}

impl CsvEvents {
    pub fn open(path: &Path, schema: &Schema) -> Result<CsvEvents, IoError> {
        let file = File::open(path).map_err(|source| IoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // Flexible: a record with the wrong number of fields is returned to
        // us (and becomes a bad record) instead of being an error that would
        // lose its text.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(file);
        let columns = Columns::new(schema);
        let headers = reader.byte_headers().map_err(|source| IoError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
        let mut fields = vec![None; columns.len()];
        for (j, name) in headers.iter().enumerate() {
            let name = String::from_utf8_lossy(name);
            if let Some(i) = columns.index_of(name.trim()) {
                // The first header of a given name wins.
                fields[i].get_or_insert(j);
            }
        }
        let header_len = headers.len();
        Ok(CsvEvents {
            path: path.to_path_buf(),
            reader,
            columns,
            fields,
            header_len,
            record: ByteRecord::new(),
        })
    }

    pub fn next_record(&mut self) -> Result<Option<Result<Vec<Value>, BadRecord>>, IoError> {
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|source| IoError::Csv {
                path: self.path.clone(),
                source,
            })?;
        if !more {
            return Ok(None);
        }
        // csv counts the header as record 0.
        let number = self.record.position().map_or(0, |p| p.record()) + 1;
        let location = Location::Line(number);
        Ok(Some(self.convert().map_err(|reason| BadRecord {
            location,
            reason,
            raw: self.raw(),
        })))
    }

    fn convert(&self) -> Result<Vec<Value>, String> {
        let record = &self.record;
        if record.len() != self.header_len {
            return Err(format!(
                "expected {} fields as in the header, got {}",
                self.header_len,
                record.len()
            ));
        }
        let mut row = Vec::with_capacity(self.columns.len());
        for (i, field) in self.fields.iter().enumerate() {
            let bytes = field.and_then(|j| record.get(j)).unwrap_or_default();
            if bytes.is_empty() {
                row.push(Value::Null);
                continue;
            }
            let name = &self.columns.names[i];
            let text = std::str::from_utf8(bytes)
                .map_err(|e| format!("column `{name}`: not valid UTF-8: {e}"))?;
            let value = coerce_text(text, self.columns.types[i])
                .map_err(|why| format!("column `{name}`: {why}"))?;
            row.push(value);
        }
        Ok(row)
    }

    /// The record's fields joined back with commas (not re-quoted: it is
    /// for reading, not for parsing again).
    fn raw(&self) -> String {
        let mut raw = String::new();
        for (j, field) in self.record.iter().enumerate() {
            if j > 0 {
                raw.push(',');
            }
            raw.push_str(&String::from_utf8_lossy(field));
        }
        raw
    }
}
