//! Window calls: `func(args) FILTER (WHERE …) OVER window`, named windows,
//! and frames, compiled into [`WindowCall`]s grouped by PARTITION BY list.

use super::scalar::{interval_ms, plain_args, Compiler, Typed};
use super::table::object_name;
use super::view::bool_expr;
use super::SqlError;
use crate::expr::Expr;
use crate::plan::{Frame, PartitionGroup, WinFunc, WindowCall};
use crate::value::{DataType, Value};
use sqlparser::ast::{self as ast, Spanned};

const WINDOW_FUNCS: &str = "COUNT(*), COUNT(x), COUNT(DISTINCT x), SUM, AVG, MIN, MAX, EXP_DECAY_SUM(x, INTERVAL …), LAG(x[, n[, default]]), LEAD(x[, n[, default]])";

impl Compiler<'_> {
    pub(super) fn window_call(
        &mut self,
        e: &ast::Expr,
        f: &ast::Function,
    ) -> Result<Typed, SqlError> {
        let name = object_name(&f.name).to_ascii_uppercase();
        let distinct = matches!(&f.args, ast::FunctionArguments::List(l) if matches!(l.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct)));
        if let ast::FunctionArguments::List(l) = &f.args {
            if !l.clauses.is_empty() {
                return Err(SqlError::at(
                    e.span(),
                    "clauses inside a window function's arguments are not supported",
                ));
            }
        }
        if f.null_treatment.is_some() || !f.within_group.is_empty() {
            return Err(SqlError::at(
                e.span(),
                "IGNORE/RESPECT NULLS and WITHIN GROUP are not supported",
            ));
        }
        let star = matches!(&f.args, ast::FunctionArguments::List(l) if matches!(l.args.as_slice(), [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard)]));
        let args = if star { vec![] } else { plain_args(e, f)? };
        // arguments and FILTER never contain window calls
        let saved = std::mem::replace(&mut self.allow_windows, false);
        let result = self.window_call_inner(e, f, &name, distinct, star, &args);
        self.allow_windows = saved;
        result
    }

    fn window_call_inner(
        &mut self,
        e: &ast::Expr,
        f: &ast::Function,
        name: &str,
        distinct: bool,
        star: bool,
        args: &[&ast::Expr],
    ) -> Result<Typed, SqlError> {
        let bad_args = |msg: &str| Err(SqlError::at(e.span(), format!("{name}: {msg}")));
        let filter = match &f.filter {
            Some(x) => {
                if matches!(name, "LAG" | "LEAD") {
                    return bad_args("FILTER is not supported for LAG/LEAD");
                }
                Some(bool_expr(self, x)?)
            }
            None => None,
        };
        if distinct && name != "COUNT" {
            return bad_args("DISTINCT is supported for COUNT only");
        }
        let mut typed_args = Vec::new();
        for a in args {
            typed_args.push(self.expr(a)?);
        }
        let numeric = |t: DataType| t.is_numeric();
        let (func, arg, arg_type, out_type): (WinFunc, Option<Expr>, DataType, DataType) =
            match name {
                "COUNT" if star => (
                    WinFunc::CountStar,
                    None,
                    DataType::Boolean,
                    DataType::BigInt,
                ),
                "COUNT" => {
                    let [(a, t)] = typed_args.as_slice() else {
                        return bad_args("takes one argument or *");
                    };
                    let func = if distinct {
                        WinFunc::CountDistinct
                    } else {
                        WinFunc::Count
                    };
                    (func, Some(a.clone()), *t, DataType::BigInt)
                }
                "SUM" | "AVG" | "MIN" | "MAX" => {
                    let [(a, t)] = typed_args.as_slice() else {
                        return bad_args("takes one argument");
                    };
                    let t = if *t == DataType::Null {
                        DataType::BigInt
                    } else {
                        *t
                    };
                    match name {
                        "SUM" if numeric(t) => (WinFunc::Sum, Some(a.clone()), t, t),
                        "AVG" if numeric(t) => (WinFunc::Avg, Some(a.clone()), t, DataType::Double),
                        "MIN" | "MAX" if t != DataType::Interval => {
                            let func = if name == "MIN" {
                                WinFunc::Min
                            } else {
                                WinFunc::Max
                            };
                            (func, Some(a.clone()), t, t)
                        }
                        _ => return bad_args(&format!("does not apply to {t}")),
                    }
                }
                "EXP_DECAY_SUM" => {
                    let ([(a, t), _], [_, iv]) = (typed_args.as_slice(), args) else {
                        return bad_args("takes (value, INTERVAL half_life)");
                    };
                    if !numeric(*t) {
                        return bad_args("the value must be a number");
                    }
                    let half_life_ms = interval_ms(iv)?;
                    if half_life_ms <= 0 {
                        return bad_args("the half-life must be positive");
                    }
                    (
                        WinFunc::ExpDecaySum { half_life_ms },
                        Some(a.clone()),
                        DataType::Double,
                        DataType::Double,
                    )
                }
                "LAG" | "LEAD" => {
                    let (a, t) = typed_args.first().cloned().ok_or_else(|| {
                        SqlError::at(
                            e.span(),
                            format!("{name} takes (value[, offset[, default]])"),
                        )
                    })?;
                    let n = match typed_args.get(1) {
                        None => 1,
                        Some((Expr::Literal(Value::BigInt(n)), _)) if *n >= 0 => *n,
                        Some(_) => {
                            return bad_args(
                                "the offset must be a non-negative whole number literal",
                            )
                        }
                    };
                    let default = match typed_args.get(2) {
                        None => Value::Null,
                        Some((Expr::Literal(v), dt))
                            if *dt == t
                                || *dt == DataType::Null
                                || (dt.is_numeric() && t.is_numeric()) =>
                        {
                            crate::expr::cast(v.clone(), t)
                        }
                        Some(_) => {
                            return bad_args("the default must be a literal of the value's type")
                        }
                    };
                    if typed_args.len() > 3 {
                        return bad_args("takes at most three arguments");
                    }
                    let offset = if name == "LAG" { -n } else { n };
                    (WinFunc::Shift { offset, default }, Some(a), t, t)
                }
                _ => {
                    return Err(SqlError::at(
                        e.span(),
                        format!(
                            "{name} is not a supported window function; supported: {WINDOW_FUNCS}"
                        ),
                    ))
                }
            };
        let spec = self.resolve_window(e, f.over.as_ref().expect("window call"))?;
        let (columns, frame) = self.window_spec(e, &spec, &func)?;
        if let (WinFunc::ExpDecaySum { .. }, Frame::Range { lo: None, .. }) = (&func, frame) {
            return Err(SqlError::at(e.span(), "EXP_DECAY_SUM needs a bounded frame, e.g. RANGE BETWEEN INTERVAL '7' DAY PRECEDING AND CURRENT ROW (after 20 half-lives an event weighs under one millionth)"));
        }
        let group = match self.groups.iter().position(|g| g.columns == columns) {
            Some(g) => g,
            None => {
                self.groups.push(PartitionGroup {
                    columns,
                    calls: vec![],
                    inputs: vec![],
                    slides: vec![],
                });
                self.groups.len() - 1
            }
        };
        let input = self.groups[group]
            .inputs
            .iter()
            .position(|&ci| self.calls[ci].arg == arg && self.calls[ci].filter == filter)
            .unwrap_or(self.groups[group].inputs.len());
        let slides = &self.groups[group].slides;
        let slide = match (&func, frame) {
            (WinFunc::Shift { .. } | WinFunc::ExpDecaySum { .. }, _) | (_, Frame::Rows { .. }) => {
                None
            }
            (_, f) => Some(match slides.iter().position(|(sf, _)| *sf == f) {
                Some(si) => (si, slides[si].1.len()),
                None => (slides.len(), 0),
            }),
        };
        let call = WindowCall {
            func,
            arg,
            filter,
            group,
            input,
            slide,
            frame,
            arg_type,
            out_type,
        };
        // identical calls (same function, argument, filter, window) share a slot
        if let Some(i) = self.calls.iter().position(|c| {
            c.func == call.func
                && c.arg == call.arg
                && c.filter == call.filter
                && c.group == call.group
                && c.frame == call.frame
        }) {
            return Ok((Expr::Slot(i), out_type));
        }
        self.calls.push(call);
        let idx = self.calls.len() - 1;
        self.groups[group].calls.push(idx);
        if input == self.groups[group].inputs.len() {
            self.groups[group].inputs.push(idx);
        }
        if let Some((si, _)) = slide {
            let slides = &mut self.groups[group].slides;
            if si == slides.len() {
                slides.push((frame, vec![]));
            }
            slides[si].1.push(idx);
        }
        Ok((Expr::Slot(idx), out_type))
    }

    /// Merges `OVER name`, `OVER (name …)` and inline specs into one spec.
    fn resolve_window(
        &self,
        e: &ast::Expr,
        over: &ast::WindowType,
    ) -> Result<ast::WindowSpec, SqlError> {
        match over {
            ast::WindowType::NamedWindow(id) => self.named(e, id, 0),
            ast::WindowType::WindowSpec(s) => self.with_base(e, s.clone(), 0),
        }
    }

    /// `(base …)`: what the spec leaves out comes from the named base window.
    fn with_base(
        &self,
        e: &ast::Expr,
        mut spec: ast::WindowSpec,
        depth: usize,
    ) -> Result<ast::WindowSpec, SqlError> {
        if let Some(base) = spec.window_name.take() {
            let b = self.named(e, &base, depth + 1)?;
            if spec.partition_by.is_empty() {
                spec.partition_by = b.partition_by;
            }
            if spec.order_by.is_empty() {
                spec.order_by = b.order_by;
            }
            if spec.window_frame.is_none() {
                spec.window_frame = b.window_frame;
            }
        }
        Ok(spec)
    }

    fn named(
        &self,
        e: &ast::Expr,
        id: &ast::Ident,
        depth: usize,
    ) -> Result<ast::WindowSpec, SqlError> {
        let w = self
            .named_windows
            .get(&id.value.to_ascii_lowercase())
            .ok_or_else(|| {
                SqlError::at(
                    id.span,
                    format!(
                        "unknown window `{}`; define it in WINDOW {} AS (…)",
                        id.value, id.value
                    ),
                )
            })?;
        if depth > 16 {
            return Err(SqlError::at(
                e.span(),
                "window definitions refer to each other in a cycle",
            ));
        }
        match w {
            ast::NamedWindowExpr::WindowSpec(s) => self.with_base(e, s.clone(), depth),
            ast::NamedWindowExpr::NamedWindow(other) => self.named(e, other, depth + 1),
        }
    }

    fn window_spec(
        &self,
        e: &ast::Expr,
        spec: &ast::WindowSpec,
        func: &WinFunc,
    ) -> Result<(Vec<usize>, Frame), SqlError> {
        let table = self.table;
        let key_name = &table.schema.columns[table.key].name;
        let time_name = &table.schema.columns[table.time].name;
        let mut columns = Vec::new();
        for p in &spec.partition_by {
            let id = match p {
                ast::Expr::Identifier(id) => id,
                ast::Expr::CompoundIdentifier(ids) => ids.last().expect("non-empty"),
                other => {
                    return Err(SqlError::at(
                        other.span(),
                        "PARTITION BY takes column names",
                    ))
                }
            };
            let i = table
                .schema
                .index_of(&id.value)
                .ok_or_else(|| SqlError::at(id.span, format!("unknown column `{}`", id.value)))?;
            columns.push(i);
        }
        if columns.first() != Some(&table.key) {
            return Err(SqlError::at(
                e.span(),
                format!("every window must PARTITION BY the table key `{key_name}` first (then any other columns), so one shard holds everything a row needs"),
            ));
        }
        let order_ok = match spec.order_by.as_slice() {
            [o] => {
                let col = match &o.expr {
                    ast::Expr::Identifier(id) => Some(&id.value),
                    ast::Expr::CompoundIdentifier(ids) => ids.last().map(|i| &i.value),
                    _ => None,
                };
                col.is_some_and(|c| c.eq_ignore_ascii_case(time_name))
                    && !matches!(
                        o.options.sort,
                        Some(ast::OrderBySort::Desc) | Some(ast::OrderBySort::Using(_))
                    )
            }
            _ => false,
        };
        if !order_ok {
            return Err(SqlError::at(
                e.span(),
                format!("every window must ORDER BY the event time `{time_name}` (ascending)"),
            ));
        }
        if let WinFunc::Shift { offset, .. } = func {
            // LAG/LEAD read one row; as a frame it is that row alone
            return Ok((
                columns,
                Frame::Rows {
                    lo: *offset,
                    hi: *offset,
                },
            ));
        }
        let Some(fr) = &spec.window_frame else {
            return Ok((columns, Frame::Range { lo: None, hi: 0 }));
        };
        let end = fr
            .end_bound
            .clone()
            .unwrap_or(ast::WindowFrameBound::CurrentRow);
        let frame = match fr.units {
            ast::WindowFrameUnits::Range => {
                let lo = match &fr.start_bound {
                    ast::WindowFrameBound::Preceding(None) => None,
                    b => Some(self.range_offset(e, b, "start")?),
                };
                let hi = match &end {
                    ast::WindowFrameBound::Preceding(None) => {
                        return Err(SqlError::at(
                            e.span(),
                            "a frame cannot end at UNBOUNDED PRECEDING",
                        ))
                    }
                    b => self.range_offset(e, b, "end")?,
                };
                if lo.is_some_and(|lo| lo > hi) {
                    return Err(SqlError::at(e.span(), "the frame starts after it ends"));
                }
                Frame::Range { lo, hi }
            }
            ast::WindowFrameUnits::Rows => {
                let lo = rows_offset(e, &fr.start_bound)?;
                let hi = rows_offset(e, &end)?;
                match (lo, hi) {
                    (None, Some(0)) => Frame::Range { lo: None, hi: 0 },
                    (Some(lo), Some(hi)) if lo <= hi => Frame::Rows { lo, hi },
                    (Some(_), Some(_)) => return Err(SqlError::at(e.span(), "the frame starts after it ends")),
                    _ => {
                        return Err(SqlError::at(
                            e.span(),
                            "ROWS frames support n PRECEDING, CURRENT ROW and n FOLLOWING bounds, and UNBOUNDED PRECEDING AND CURRENT ROW",
                        ))
                    }
                }
            }
            ast::WindowFrameUnits::Groups => {
                return Err(SqlError::at(
                    e.span(),
                    "GROUPS frames are not supported; use RANGE with INTERVAL bounds or ROWS",
                ))
            }
        };
        Ok((columns, frame))
    }

    fn range_offset(
        &self,
        e: &ast::Expr,
        b: &ast::WindowFrameBound,
        which: &str,
    ) -> Result<i64, SqlError> {
        let hint = "RANGE frames take INTERVAL bounds, e.g. RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW";
        match b {
            ast::WindowFrameBound::CurrentRow => Ok(0),
            ast::WindowFrameBound::Preceding(Some(x)) => interval_ms(x).map(|ms| -ms).map_err(|_| SqlError::at(x.span(), hint)),
            ast::WindowFrameBound::Following(Some(x)) => interval_ms(x).map_err(|_| SqlError::at(x.span(), hint)),
            ast::WindowFrameBound::Following(None) => Err(SqlError::at(
                e.span(),
                format!("UNBOUNDED FOLLOWING as the frame {which} would hold every row until the stream ends; bound it with INTERVAL '…' FOLLOWING"),
            )),
            ast::WindowFrameBound::Preceding(None) => Err(SqlError::at(e.span(), hint)),
        }
    }
}

/// ROWS bound as a signed row offset; `None` for UNBOUNDED PRECEDING.
fn rows_offset(e: &ast::Expr, b: &ast::WindowFrameBound) -> Result<Option<i64>, SqlError> {
    let n = |x: &ast::Expr| {
        match x {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::Number(n, _) => {
                    n.parse::<i64>().ok().filter(|n| *n >= 0 && *n <= 100_000)
                }
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| SqlError::at(x.span(), "ROWS bounds take a whole number from 0 to 100000"))
    };
    match b {
        ast::WindowFrameBound::CurrentRow => Ok(Some(0)),
        ast::WindowFrameBound::Preceding(None) => Ok(None),
        ast::WindowFrameBound::Preceding(Some(x)) => Ok(Some(-n(x)?)),
        ast::WindowFrameBound::Following(Some(x)) => Ok(Some(n(x)?)),
        ast::WindowFrameBound::Following(None) => Err(SqlError::at(
            e.span(),
            "UNBOUNDED FOLLOWING is not supported; it would hold every row until the stream ends",
        )),
    }
}
