//! The SQL front end: parses a pipeline file with `sqlparser` and compiles
//! `CREATE TABLE` and `CREATE VIEW` statements into a [`Catalog`].
//!
//! Everything outside the dialect is refused here, at definition time, with
//! the line and column of the offending SQL and what is supported instead.

mod scalar;
mod table;
mod view;
mod window;

pub use table::parse_duration_ms;

use crate::plan::Catalog;
use sqlparser::ast::{Spanned, Statement};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Span;

/// A definition-time error pointing at the SQL that caused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SqlError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl SqlError {
    pub(crate) fn at(span: Span, message: impl Into<String>) -> SqlError {
        SqlError {
            line: span.start.line,
            column: span.start.column,
            message: message.into(),
        }
    }
}

/// Parses and compiles a whole pipeline file.
pub fn parse_pipeline(sql: &str) -> Result<Catalog, SqlError> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(parse_error)?;
    let mut catalog = Catalog::default();
    for st in &statements {
        match st {
            Statement::CreateTable(ct) => {
                let t = table::compile_table(ct)?;
                if catalog.table(&t.name).is_some() {
                    return Err(SqlError::at(ct.name.span(), format!("table `{}` is defined twice", t.name)));
                }
                catalog.tables.push(t);
            }
            Statement::CreateView(cv) => {
                let v = view::compile_view(&catalog, cv)?;
                if catalog.view(&v.name).is_some() {
                    return Err(SqlError::at(cv.name.span(), format!("view `{}` is defined twice", v.name)));
                }
                catalog.views.push(v);
            }
            other => {
                return Err(SqlError::at(
                    other.span(),
                    "unsupported statement; a pipeline file holds CREATE TABLE … WITH (key = …, event_time = …) and CREATE VIEW … AS SELECT … statements",
                ))
            }
        }
    }
    Ok(catalog)
}

/// sqlparser reports "… at Line: L, Column: C"; lift that into our shape.
fn parse_error(e: sqlparser::parser::ParserError) -> SqlError {
    let text = e.to_string();
    let (mut line, mut column) = (0, 0);
    if let Some(i) = text.find("Line: ") {
        let rest = &text[i + 6..];
        line = rest
            .split(',')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if let Some(j) = rest.find("Column: ") {
            column = rest[j + 8..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse()
                .unwrap_or(0);
        }
    }
    let message = text
        .trim_start_matches("sql parser error: ")
        .split(" at Line: ")
        .next()
        .unwrap_or(&text)
        .to_string();
    SqlError {
        line,
        column,
        message: format!("syntax error: {message}"),
    }
}
