//! `CREATE TABLE name (cols…) WITH (key = …, event_time = …, lateness = …, shards = …, event_id = …)`.

use super::SqlError;
use crate::plan::Table;
use crate::value::{Column, DataType, Schema};
use sqlparser::ast::{self as ast, CreateTableOptions, Spanned, SqlOption};

pub(super) fn compile_table(ct: &ast::CreateTable) -> Result<Table, SqlError> {
    let name = stored_name(&ct.name, "table")?;
    let mut schema = Schema::default();
    for c in &ct.columns {
        let data_type = column_type(&c.data_type).ok_or_else(|| {
            SqlError::at(
                c.name.span,
                format!(
                    "column `{}` has type {}, which is not supported; use BIGINT, DOUBLE, TEXT, BOOLEAN or TIMESTAMP",
                    c.name.value, c.data_type
                ),
            )
        })?;
        if schema.index_of(&c.name.value).is_some() {
            return Err(SqlError::at(
                c.name.span,
                format!("column `{}` is declared twice", c.name.value),
            ));
        }
        schema.columns.push(Column {
            name: c.name.value.clone(),
            data_type,
        });
    }
    let options = match &ct.table_options {
        CreateTableOptions::With(o) => o.as_slice(),
        CreateTableOptions::None => &[],
        _ => return Err(SqlError::at(
            ct.name.span(),
            "table options go in WITH (key = '…', event_time = '…', lateness = '…', shards = N)",
        )),
    };
    let (mut key, mut time, mut lateness_ms, mut shards) = (None, None, 0i64, 16u32);
    let mut event_id = None;
    let mut max_ahead_ms = crate::plan::DEFAULT_MAX_AHEAD_MS;
    for o in options {
        let SqlOption::KeyValue { key: k, value } = o else {
            return Err(SqlError::at(
                o.span(),
                "expected `name = value` in WITH (…)",
            ));
        };
        let kname = object_name(k).to_ascii_lowercase();
        let text = option_text(value);
        let column = |what: &str| -> Result<usize, SqlError> {
            let t = text.clone().unwrap_or_default();
            schema.index_of(&t).ok_or_else(|| {
                SqlError::at(
                    value.span(),
                    format!("{what} `{t}` is not a column of `{name}`"),
                )
            })
        };
        match kname.as_str() {
            "key" => key = Some(column("key")?),
            "event_time" => time = Some(column("event_time")?),
            "event_id" => {
                let c = column("event_id")?;
                if !matches!(
                    schema.columns[c].data_type,
                    DataType::Text | DataType::BigInt
                ) {
                    return Err(SqlError::at(
                        value.span(),
                        format!(
                            "event_id column `{}` must be TEXT or BIGINT",
                            schema.columns[c].name
                        ),
                    ));
                }
                event_id = Some(c);
            }
            "lateness" => {
                lateness_ms = text
                    .as_deref()
                    .and_then(parse_duration_ms)
                    .filter(|ms| *ms >= 0)
                    .ok_or_else(|| {
                        SqlError::at(
                        value.span(),
                        "lateness must be a duration like '30 seconds', '5 minutes' or '500 ms'",
                    )
                    })?
            }
            "shards" => {
                shards = text
                    .as_deref()
                    .and_then(|t| t.parse::<u32>().ok())
                    .filter(|s| (1..=65_536).contains(s))
                    .ok_or_else(|| {
                        SqlError::at(
                            value.span(),
                            "shards must be a whole number from 1 to 65536",
                        )
                    })?
            }
            "max_event_time_ahead" => {
                max_ahead_ms = text
                    .as_deref()
                    .and_then(parse_duration_ms)
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        SqlError::at(
                            value.span(),
                            "max_event_time_ahead must be a positive duration like '1 hour' or '10 minutes'",
                        )
                    })?
            }
            other => {
                return Err(SqlError::at(
                    k.span(),
                    format!(
                    "unknown table option `{other}`; supported: key, event_time, lateness, shards, event_id, max_event_time_ahead"
                ),
                ))
            }
        }
    }
    let key = key.ok_or_else(|| {
        SqlError::at(ct.name.span(), format!("table `{name}` needs WITH (key = '<column>'): the column that shards and partitions events"))
    })?;
    let time = time.ok_or_else(|| {
        SqlError::at(
            ct.name.span(),
            format!("table `{name}` needs WITH (event_time = '<TIMESTAMP column>')"),
        )
    })?;
    if schema.columns[time].data_type != DataType::Timestamp {
        return Err(SqlError::at(
            ct.name.span(),
            format!(
                "event_time column `{}` must be a TIMESTAMP",
                schema.columns[time].name
            ),
        ));
    }
    if !matches!(
        schema.columns[key].data_type,
        DataType::Text | DataType::BigInt
    ) {
        return Err(SqlError::at(
            ct.name.span(),
            format!(
                "key column `{}` must be TEXT or BIGINT",
                schema.columns[key].name
            ),
        ));
    }
    Ok(Table {
        name,
        schema,
        key,
        time,
        lateness_ms,
        shards,
        event_id,
        max_ahead_ms,
    })
}

/// The name of a table or view, which also names objects in the object
/// store and appears in URL paths: ASCII letters, digits and `_`, starting
/// with a letter or `_`, at most 128 characters. (A name that would need
/// escaping in a path is refused here rather than risk an object listed
/// under another spelling than the one recorded.)
pub(super) fn stored_name(n: &ast::ObjectName, what: &str) -> Result<String, SqlError> {
    let name = object_name(n);
    let ok = name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        return Ok(name);
    }
    let suggestion: String = name
        .chars()
        .map(|c| match c {
            'ä' | 'Ä' => "ae".to_string(),
            'ö' | 'Ö' => "oe".to_string(),
            'ü' | 'Ü' => "ue".to_string(),
            'ß' => "ss".to_string(),
            c if c.is_ascii_alphanumeric() || c == '_' => c.to_string(),
            _ => "_".to_string(),
        })
        .collect();
    Err(SqlError::at(
        n.span(),
        format!(
            "{what} name `{name}`: table and view names name objects in the object store and URL paths, so they may hold only ASCII letters, digits and `_` (starting with a letter or `_`, at most 128 characters); e.g. `{suggestion}`"
        ),
    ))
}

pub(super) fn object_name(n: &ast::ObjectName) -> String {
    n.0.iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
        .next_back()
        .unwrap_or_default()
}

fn option_text(e: &ast::Expr) -> Option<String> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => {
                Some(s.clone())
            }
            ast::Value::Number(n, _) => Some(n.to_string()),
            _ => None,
        },
        ast::Expr::Identifier(i) => Some(i.value.clone()),
        ast::Expr::Interval(_) => super::scalar::interval_ms(e)
            .ok()
            .map(|ms| format!("{ms} ms")),
        _ => None,
    }
}

/// The column types of the dialect; narrower SQL spellings widen.
pub(super) fn column_type(t: &ast::DataType) -> Option<DataType> {
    use ast::DataType as D;
    Some(match t {
        D::BigInt(_)
        | D::Int(_)
        | D::Integer(_)
        | D::Int8(_)
        | D::Int64
        | D::SmallInt(_)
        | D::TinyInt(_)
        | D::Int4(_)
        | D::Int2(_) => DataType::BigInt,
        D::Double(_)
        | D::DoublePrecision
        | D::Float(_)
        | D::Float64
        | D::Float8
        | D::Real
        | D::Float4 => DataType::Double,
        D::Text | D::Varchar(_) | D::String(_) | D::Char(_) | D::CharacterVarying(_) => {
            DataType::Text
        }
        D::Boolean | D::Bool => DataType::Boolean,
        D::Timestamp(_, _) | D::Datetime(_) => DataType::Timestamp,
        _ => return None,
    })
}

/// `'30 seconds'`, `'5 min'`, `'500 ms'`, `'2 hours'`, `'1 day'` → milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.trim().parse().ok()?;
    let unit_ms = match unit.trim() {
        "" | "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 6e4,
        "h" | "hour" | "hours" => 3.6e6,
        "d" | "day" | "days" => 8.64e7,
        _ => return None,
    };
    let ms = n * unit_ms;
    (ms.is_finite() && ms.fract() == 0.0 && ms.abs() < 9e15).then_some(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30 seconds"), Some(30_000));
        assert_eq!(parse_duration_ms("5 min"), Some(300_000));
        assert_eq!(parse_duration_ms("500 ms"), Some(500));
        assert_eq!(parse_duration_ms("1.5 hours"), Some(5_400_000));
        assert_eq!(parse_duration_ms("soon"), None);
    }
}
