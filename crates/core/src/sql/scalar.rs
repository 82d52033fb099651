//! Scalar expressions: name resolution, type checking and lowering to
//! [`crate::expr::Expr`].

use super::SqlError;
use crate::expr::{BinOp, Expr, Func};
use crate::plan::{PartitionGroup, Table, WindowCall};
use crate::time::TimeField;
use crate::value::{DataType, Value};
use sqlparser::ast::{self as ast, Spanned};
use std::collections::HashMap;

pub(super) type Typed = (Expr, DataType);

/// Compiles the expressions of one view.
pub(super) struct Compiler<'a> {
    pub table: &'a Table,
    pub named_windows: HashMap<String, &'a ast::NamedWindowExpr>,
    pub calls: Vec<WindowCall>,
    pub groups: Vec<PartitionGroup>,
    /// SELECT aliases, visible from QUALIFY.
    pub aliases: Vec<(String, Typed)>,
    pub allow_windows: bool,
    pub allow_aliases: bool,
}

const SCALAR_FUNCS: &str = "COALESCE, NULLIF, ABS, LOWER, UPPER, LENGTH, UA_BROWSER, UA_IS_BOT";

impl<'a> Compiler<'a> {
    pub fn expr(&mut self, e: &ast::Expr) -> Result<Typed, SqlError> {
        use ast::Expr as A;
        match e {
            A::Identifier(id) => self.column(id),
            A::CompoundIdentifier(ids) => self.column(ids.last().expect("non-empty")),
            A::Nested(inner) => self.expr(inner),
            A::Value(v) => literal(&v.value).ok_or_else(|| {
                SqlError::at(e.span(), "unsupported literal; use numbers, 'text', TRUE/FALSE, NULL, TIMESTAMP '…' or INTERVAL '…' UNIT")
            }),
            A::TypedString(ts) => {
                let text = match &ts.value.value {
                    ast::Value::SingleQuotedString(s) => s.clone(),
                    _ => String::new(),
                };
                match super::table::column_type(&ts.data_type) {
                    Some(DataType::Timestamp) => crate::time::parse_timestamp(&text)
                        .map(|ms| (Expr::Literal(Value::Timestamp(ms)), DataType::Timestamp))
                        .ok_or_else(|| SqlError::at(e.span(), format!("`{text}` is not a timestamp; write TIMESTAMP '2024-01-01 00:00:00'"))),
                    Some(t) => Ok((crate::expr::cast(Value::text(&text), t), t))
                        .map(|(v, t)| (Expr::Literal(v), t)),
                    None => Err(SqlError::at(e.span(), format!("unsupported type {}", ts.data_type))),
                }
            }
            A::Interval(_) => Ok((Expr::Literal(Value::Interval(interval_ms(e)?)), DataType::Interval)),
            A::BinaryOp { left, op, right } => self.binary(e, left, op, right),
            A::UnaryOp { op, expr } => {
                let (x, t) = self.expr(expr)?;
                match op {
                    ast::UnaryOperator::Not => {
                        want_bool(expr, t)?;
                        Ok((Expr::Not(Box::new(x)), DataType::Boolean))
                    }
                    ast::UnaryOperator::Minus if t.is_numeric() || t == DataType::Interval => {
                        // fold negative literals so `-1` stays a literal
                        let folded = match &x {
                            Expr::Literal(Value::BigInt(i)) => i.checked_neg().map(|n| Expr::Literal(Value::BigInt(n))),
                            Expr::Literal(Value::Double(d)) => Some(Expr::Literal(Value::Double(-d))),
                            _ => None,
                        };
                        Ok((folded.unwrap_or_else(|| Expr::Neg(Box::new(x))), t))
                    }
                    ast::UnaryOperator::Plus if t.is_numeric() => Ok((x, t)),
                    _ => Err(SqlError::at(e.span(), format!("operator {op} does not apply to {t}"))),
                }
            }
            A::IsNull(x) | A::IsNotNull(x) => Ok((
                Expr::IsNull {
                    expr: Box::new(self.expr(x)?.0),
                    negated: matches!(e, A::IsNotNull(_)),
                },
                DataType::Boolean,
            )),
            A::Between { expr, negated, low, high } => {
                let ge = self.compare(e, expr, BinOp::GtEq, low)?;
                let le = self.compare(e, expr, BinOp::LtEq, high)?;
                let both = Expr::Binary { op: BinOp::And, left: Box::new(ge), right: Box::new(le), ty: DataType::Boolean };
                Ok((if *negated { Expr::Not(Box::new(both)) } else { both }, DataType::Boolean))
            }
            A::In { expr, target: ast::InTarget::List(list), negated, .. } => {
                let (x, t) = self.expr(expr)?;
                let mut items = Vec::new();
                for item in list {
                    let (i, it) = self.expr(item)?;
                    comparable(item, t, it)?;
                    items.push(i);
                }
                Ok((Expr::InList { expr: Box::new(x), list: items, negated: *negated }, DataType::Boolean))
            }
            A::Case { operand, conditions, else_result, .. } => self.case(e, operand.as_deref(), conditions, else_result.as_deref()),
            A::Cast { kind, expr, data_type, .. } => {
                if !matches!(kind, ast::CastKind::Cast | ast::CastKind::DoubleColon | ast::CastKind::TryCast) {
                    return Err(SqlError::at(e.span(), "use CAST(x AS type)"));
                }
                let to = super::table::column_type(data_type).ok_or_else(|| {
                    SqlError::at(e.span(), format!("cannot cast to {data_type}; supported: BIGINT, DOUBLE, TEXT, BOOLEAN, TIMESTAMP"))
                })?;
                let (x, from) = self.expr(expr)?;
                if from == DataType::Interval {
                    return Err(SqlError::at(e.span(), "cannot cast an INTERVAL; use EXTRACT(EPOCH FROM …) for seconds"));
                }
                Ok((Expr::Cast { expr: Box::new(x), to }, to))
            }
            A::Extract { field, expr, .. } => {
                let f = time_field(field).ok_or_else(|| {
                    SqlError::at(e.span(), format!("cannot EXTRACT {field}; supported: YEAR, MONTH, DAY, HOUR, MINUTE, SECOND, MILLISECOND, DOW, DOY, EPOCH"))
                })?;
                let (x, t) = self.expr(expr)?;
                let ok = t == DataType::Timestamp || t == DataType::Null || (t == DataType::Interval && f == TimeField::Epoch);
                if !ok {
                    return Err(SqlError::at(e.span(), format!("EXTRACT needs a TIMESTAMP (or an INTERVAL for EPOCH), got {t}")));
                }
                let ty = if f == TimeField::Epoch { DataType::Double } else { DataType::BigInt };
                Ok((Expr::Extract { field: f, expr: Box::new(x) }, ty))
            }
            A::Function(f) if f.over.is_some() => {
                if !self.allow_windows {
                    return Err(SqlError::at(e.span(), "window functions are not allowed here (inside WHERE, FILTER or another window call's argument)"));
                }
                self.window_call(e, f)
            }
            A::Function(f) => self.function(e, f),
            _ => Err(SqlError::at(
                e.span(),
                format!("unsupported expression `{e}`; supported: columns, literals, arithmetic, comparisons, AND/OR/NOT, CASE, COALESCE, CAST, EXTRACT, IN, BETWEEN, IS NULL, window functions and {SCALAR_FUNCS}"),
            )),
        }
    }

    fn column(&self, id: &ast::Ident) -> Result<Typed, SqlError> {
        if let Some(i) = self.table.schema.index_of(&id.value) {
            return Ok((Expr::Column(i), self.table.schema.columns[i].data_type));
        }
        if self.allow_aliases {
            if let Some((_, t)) = self
                .aliases
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&id.value))
            {
                return Ok(t.clone());
            }
        }
        let cols: Vec<&str> = self
            .table
            .schema
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        Err(SqlError::at(
            id.span,
            format!(
                "unknown column `{}`; `{}` has: {}",
                id.value,
                self.table.name,
                cols.join(", ")
            ),
        ))
    }

    fn compare(
        &mut self,
        at: &ast::Expr,
        l: &ast::Expr,
        op: BinOp,
        r: &ast::Expr,
    ) -> Result<Expr, SqlError> {
        let (a, at_) = self.expr(l)?;
        let (b, bt) = self.expr(r)?;
        let (a, b) = coerce_text_literal(a, at_, b, bt);
        comparable(at, a.1, b.1)?;
        Ok(Expr::Binary {
            op,
            left: Box::new(a.0),
            right: Box::new(b.0),
            ty: DataType::Boolean,
        })
    }

    fn binary(
        &mut self,
        e: &ast::Expr,
        l: &ast::Expr,
        op: &ast::BinaryOperator,
        r: &ast::Expr,
    ) -> Result<Typed, SqlError> {
        use ast::BinaryOperator as B;
        let bop = match op {
            B::Plus => BinOp::Add,
            B::Minus => BinOp::Sub,
            B::Multiply => BinOp::Mul,
            B::Divide => BinOp::Div,
            B::Modulo => BinOp::Mod,
            B::Eq => BinOp::Eq,
            B::NotEq => BinOp::NotEq,
            B::Lt => BinOp::Lt,
            B::LtEq => BinOp::LtEq,
            B::Gt => BinOp::Gt,
            B::GtEq => BinOp::GtEq,
            B::And => BinOp::And,
            B::Or => BinOp::Or,
            B::StringConcat => BinOp::Concat,
            other => {
                return Err(SqlError::at(e.span(), format!("operator {other} is not supported; supported: + - * / % = <> < <= > >= AND OR ||")))
            }
        };
        if matches!(
            bop,
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq
        ) {
            return Ok((self.compare(e, l, bop, r)?, DataType::Boolean));
        }
        let (a, at) = self.expr(l)?;
        let (b, bt) = self.expr(r)?;
        use DataType::*;
        let ty = match bop {
            BinOp::And | BinOp::Or => {
                want_bool(l, at)?;
                want_bool(r, bt)?;
                Boolean
            }
            BinOp::Concat => Text,
            _ => match (bop, at, bt) {
                (BinOp::Div, x, y) if x.is_numeric() && y.is_numeric() => Double,
                (_, BigInt | Null, BigInt | Null) => BigInt,
                (_, x, y) if x.is_numeric() && y.is_numeric() => Double,
                (BinOp::Add | BinOp::Sub, Timestamp, Interval)
                | (BinOp::Add, Interval, Timestamp) => Timestamp,
                (BinOp::Sub, Timestamp, Timestamp) => Interval,
                (BinOp::Add | BinOp::Sub, Interval, Interval) | (BinOp::Mul, Interval, BigInt) => {
                    Interval
                }
                _ => {
                    return Err(SqlError::at(
                        e.span(),
                        format!("operator {op} does not apply to {at} and {bt}"),
                    ))
                }
            },
        };
        Ok((
            Expr::Binary {
                op: bop,
                left: Box::new(a),
                right: Box::new(b),
                ty,
            },
            ty,
        ))
    }

    fn case(
        &mut self,
        e: &ast::Expr,
        operand: Option<&ast::Expr>,
        conditions: &[ast::CaseWhen],
        else_result: Option<&ast::Expr>,
    ) -> Result<Typed, SqlError> {
        let mut branches = Vec::new();
        let mut results = Vec::new();
        for cw in conditions {
            let cond = match operand {
                Some(op) => self.compare(e, op, BinOp::Eq, &cw.condition)?,
                None => {
                    let (c, t) = self.expr(&cw.condition)?;
                    want_bool(&cw.condition, t)?;
                    c
                }
            };
            branches.push(cond);
            results.push((self.expr(&cw.result)?, cw.result.span()));
        }
        let otherwise = match else_result {
            Some(x) => Some((self.expr(x)?, x.span())),
            None => None,
        };
        let all: Vec<&(Typed, _)> = results.iter().chain(otherwise.iter()).collect();
        let ty = unify(all.iter().map(|((_, t), s)| (*t, *s)))?;
        let widen = |(x, t): Typed| {
            if t == ty || t == DataType::Null {
                x
            } else {
                Expr::Cast {
                    expr: Box::new(x),
                    to: ty,
                }
            }
        };
        Ok((
            Expr::Case {
                branches: branches
                    .into_iter()
                    .zip(results.into_iter().map(|(r, _)| widen(r)))
                    .collect(),
                otherwise: otherwise.map(|(o, _)| Box::new(widen(o))),
            },
            ty,
        ))
    }

    fn function(&mut self, e: &ast::Expr, f: &ast::Function) -> Result<Typed, SqlError> {
        let name = super::table::object_name(&f.name).to_ascii_uppercase();
        if matches!(
            name.as_str(),
            "COUNT" | "SUM" | "AVG" | "MIN" | "MAX" | "EXP_DECAY_SUM" | "LAG" | "LEAD"
        ) {
            return Err(SqlError::at(e.span(), format!("{name} needs OVER (PARTITION BY <key> ORDER BY <event_time> …): lockstep computes one row per event; GROUP BY is not supported")));
        }
        if f.filter.is_some() {
            return Err(SqlError::at(
                e.span(),
                "FILTER applies to window aggregates only",
            ));
        }
        let args = plain_args(e, f)?;
        let mut typed = Vec::new();
        for a in &args {
            typed.push((self.expr(a)?, a.span()));
        }
        let arity = |n: usize| -> Result<(), SqlError> {
            if typed.len() == n {
                Ok(())
            } else {
                Err(SqlError::at(
                    e.span(),
                    format!("{name} takes {n} argument(s)"),
                ))
            }
        };
        let (func, ty) = match name.as_str() {
            "COALESCE" => {
                if typed.is_empty() {
                    return Err(SqlError::at(e.span(), "COALESCE needs at least one argument"));
                }
                let ty = unify(typed.iter().map(|((_, t), s)| (*t, *s)))?;
                let list = typed.into_iter().map(|((x, t), _)| if t == ty || t == DataType::Null { x } else { Expr::Cast { expr: Box::new(x), to: ty } }).collect();
                return Ok((Expr::Coalesce(list), ty));
            }
            "NULLIF" => {
                arity(2)?;
                comparable(e, typed[0].0 .1, typed[1].0 .1)?;
                (Func::NullIf, typed[0].0 .1)
            }
            "ABS" => {
                arity(1)?;
                if !typed[0].0 .1.is_numeric() {
                    return Err(SqlError::at(e.span(), "ABS needs a number"));
                }
                (Func::Abs, typed[0].0 .1)
            }
            "LOWER" | "UPPER" | "LENGTH" | "UA_BROWSER" | "UA_IS_BOT" => {
                arity(1)?;
                if !matches!(typed[0].0 .1, DataType::Text | DataType::Null) {
                    return Err(SqlError::at(e.span(), format!("{name} needs TEXT")));
                }
                match name.as_str() {
                    "LOWER" => (Func::Lower, DataType::Text),
                    "UPPER" => (Func::Upper, DataType::Text),
                    "LENGTH" => (Func::Length, DataType::BigInt),
                    "UA_BROWSER" => (Func::UaBrowser, DataType::Text),
                    _ => (Func::UaIsBot, DataType::Boolean),
                }
            }
            _ => {
                return Err(SqlError::at(e.span(), format!("unknown function {name}; scalar functions: {SCALAR_FUNCS}; window functions: COUNT, SUM, AVG, MIN, MAX, COUNT(DISTINCT …), EXP_DECAY_SUM, LAG, LEAD")))
            }
        };
        Ok((
            Expr::Call {
                func,
                args: typed.into_iter().map(|((x, _), _)| x).collect(),
            },
            ty,
        ))
    }
}

/// The positional arguments of a call; named and wildcard arguments refused.
pub(super) fn plain_args<'e>(
    e: &ast::Expr,
    f: &'e ast::Function,
) -> Result<Vec<&'e ast::Expr>, SqlError> {
    match &f.args {
        ast::FunctionArguments::None => Ok(vec![]),
        ast::FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(x)) => Ok(x),
                _ => Err(SqlError::at(
                    e.span(),
                    "only positional arguments are supported here",
                )),
            })
            .collect(),
        ast::FunctionArguments::Subquery(_) => {
            Err(SqlError::at(e.span(), "subqueries are not supported"))
        }
    }
}

fn literal(v: &ast::Value) -> Option<Typed> {
    Some(match v {
        ast::Value::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => (Expr::Literal(Value::BigInt(i)), DataType::BigInt),
            Err(_) => (
                Expr::Literal(Value::Double(n.parse().ok()?)),
                DataType::Double,
            ),
        },
        ast::Value::SingleQuotedString(s) => (Expr::Literal(Value::text(s)), DataType::Text),
        ast::Value::Boolean(b) => (Expr::Literal(Value::Boolean(*b)), DataType::Boolean),
        ast::Value::Null => (Expr::Literal(Value::Null), DataType::Null),
        _ => return None,
    })
}

/// A text literal compared with a timestamp is read as a timestamp.
fn coerce_text_literal(a: Expr, at: DataType, b: Expr, bt: DataType) -> (Typed, Typed) {
    let conv = |x: Expr, t: DataType, other: DataType| -> Typed {
        if let (Expr::Literal(Value::Text(s)), DataType::Text, DataType::Timestamp) = (&x, t, other)
        {
            if let Some(ms) = crate::time::parse_timestamp(s) {
                return (Expr::Literal(Value::Timestamp(ms)), DataType::Timestamp);
            }
        }
        (x, t)
    };
    let a2 = conv(a, at, bt);
    let b2 = conv(b, bt, at);
    (a2, b2)
}

fn comparable(e: &ast::Expr, a: DataType, b: DataType) -> Result<(), SqlError> {
    if a == b || a == DataType::Null || b == DataType::Null || (a.is_numeric() && b.is_numeric()) {
        Ok(())
    } else {
        Err(SqlError::at(
            e.span(),
            format!("cannot compare {a} with {b}"),
        ))
    }
}

fn want_bool(e: &ast::Expr, t: DataType) -> Result<(), SqlError> {
    if matches!(t, DataType::Boolean | DataType::Null) {
        Ok(())
    } else {
        Err(SqlError::at(
            e.span(),
            format!("expected a BOOLEAN condition, got {t}"),
        ))
    }
}

/// The common type of CASE branches or COALESCE arguments.
fn unify(
    types: impl Iterator<Item = (DataType, sqlparser::tokenizer::Span)>,
) -> Result<DataType, SqlError> {
    let mut ty = DataType::Null;
    for (t, span) in types {
        ty = match (ty, t) {
            (a, b) if a == b => a,
            (DataType::Null, b) => b,
            (a, DataType::Null) => a,
            (a, b) if a.is_numeric() && b.is_numeric() => DataType::Double,
            (a, b) => {
                return Err(SqlError::at(
                    span,
                    format!("branches have different types: {a} and {b}"),
                ))
            }
        };
    }
    Ok(ty)
}

fn time_field(f: &ast::DateTimeField) -> Option<TimeField> {
    use ast::DateTimeField as D;
    Some(match f {
        D::Year | D::Years => TimeField::Year,
        D::Month | D::Months => TimeField::Month,
        D::Day | D::Days => TimeField::Day,
        D::Hour | D::Hours => TimeField::Hour,
        D::Minute | D::Minutes => TimeField::Minute,
        D::Second | D::Seconds => TimeField::Second,
        D::Millisecond | D::Milliseconds => TimeField::Millisecond,
        D::Dow => TimeField::Dow,
        D::Doy => TimeField::Doy,
        D::Epoch => TimeField::Epoch,
        _ => return None,
    })
}

/// `INTERVAL '15' MINUTE` or `INTERVAL '15 minutes'` in milliseconds.
pub(super) fn interval_ms(e: &ast::Expr) -> Result<i64, SqlError> {
    let bad = || {
        SqlError::at(
            e.span(),
            "expected an interval like INTERVAL '15' MINUTE or INTERVAL '1 hour'",
        )
    };
    let ast::Expr::Interval(iv) = e else {
        return Err(bad());
    };
    let text = match iv.value.as_ref() {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.to_string(),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    if iv.last_field.is_some() {
        return Err(SqlError::at(
            e.span(),
            "compound intervals (… TO …) are not supported; use one unit",
        ));
    }
    let unit = match &iv.leading_field {
        None => "",
        Some(f) => {
            use ast::DateTimeField as D;
            match f {
                D::Millisecond | D::Milliseconds => "ms",
                D::Second | D::Seconds => "s",
                D::Minute | D::Minutes => "min",
                D::Hour | D::Hours => "h",
                D::Day | D::Days => "d",
                _ => return Err(SqlError::at(e.span(), format!("interval unit {f} is not supported; use MILLISECOND, SECOND, MINUTE, HOUR or DAY"))),
            }
        }
    };
    let full = if unit.is_empty() {
        text
    } else {
        format!("{text} {unit}")
    };
    super::table::parse_duration_ms(&full).ok_or_else(bad)
}
