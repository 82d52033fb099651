//! Scalar expressions and their evaluation with SQL three-valued logic.
//!
//! Expressions are type-checked when compiled ([`crate::sql`]); evaluation
//! therefore never fails: impossible operations (division by zero, overflow,
//! a cast that does not parse) yield NULL, as documented in `docs/sql.md`.

use crate::time::{self, TimeField};
use crate::value::{DataType, Value};
use std::cmp::Ordering;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
    Concat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Func {
    Abs,
    Lower,
    Upper,
    Length,
    NullIf,
    UaBrowser,
    UaIsBot,
}

/// A typed scalar expression.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Expr {
    /// An input column by index.
    Column(usize),
    Literal(Value),
    /// The value of window call N of the view.
    Slot(usize),
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
        /// Result type; arithmetic on BIGINT/DOUBLE mixes widens to DOUBLE.
        ty: DataType,
    },
    Not(Box<Expr>),
    Neg(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// Searched CASE; a simple CASE is rewritten to this form.
    Case {
        branches: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Coalesce(Vec<Expr>),
    Cast {
        expr: Box<Expr>,
        to: DataType,
    },
    Extract {
        field: TimeField,
        expr: Box<Expr>,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Call {
        func: Func,
        args: Vec<Expr>,
    },
}

/// Where an expression reads its inputs from.
pub struct Ctx<'a> {
    pub row: &'a [Value],
    pub slots: &'a [Value],
}

impl Expr {
    pub fn eval(&self, ctx: &Ctx<'_>) -> Value {
        match self {
            Expr::Column(i) => ctx.row[*i].clone(),
            Expr::Literal(v) => v.clone(),
            Expr::Slot(i) => ctx.slots[*i].clone(),
            Expr::Binary {
                op,
                left,
                right,
                ty,
            } => match op {
                BinOp::And => and(left.eval(ctx), || right.eval(ctx)),
                BinOp::Or => or(left.eval(ctx), || right.eval(ctx)),
                BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
                    // by reference: comparing a column with a literal clones nothing
                    compare_op(*op, &left.eval_ref(ctx), &right.eval_ref(ctx))
                }
                // operands by reference: a column or window value is read
                // in place, not cloned and dropped
                _ => binary(*op, *ty, &left.eval_ref(ctx), &right.eval_ref(ctx)),
            },
            Expr::Not(e) => match e.eval(ctx) {
                Value::Boolean(b) => Value::Boolean(!b),
                _ => Value::Null,
            },
            Expr::Neg(e) => match e.eval(ctx) {
                Value::BigInt(i) => i.checked_neg().map_or(Value::Null, Value::BigInt),
                Value::Double(d) => Value::Double(-d),
                Value::Interval(i) => i.checked_neg().map_or(Value::Null, Value::Interval),
                _ => Value::Null,
            },
            Expr::IsNull { expr, negated } => Value::Boolean(expr.eval(ctx).is_null() != *negated),
            Expr::Case {
                branches,
                otherwise,
            } => {
                for (cond, result) in branches {
                    if cond.is_true(ctx) {
                        return result.eval(ctx);
                    }
                }
                otherwise.as_ref().map_or(Value::Null, |e| e.eval(ctx))
            }
            Expr::Coalesce(list) => list
                .iter()
                .map(|e| e.eval(ctx))
                .find(|v| !v.is_null())
                .unwrap_or(Value::Null),
            Expr::Cast { expr, to } => cast(expr.eval(ctx), *to),
            Expr::Extract { field, expr } => match expr.eval(ctx) {
                Value::Timestamp(ms) => match field {
                    TimeField::Epoch => Value::Double(ms as f64 / 1000.0),
                    f => time::extract(*f, ms).map_or(Value::Null, Value::BigInt),
                },
                Value::Interval(ms) => match field {
                    TimeField::Epoch => Value::Double(ms as f64 / 1000.0),
                    _ => Value::Null,
                },
                _ => Value::Null,
            },
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let v = expr.eval(ctx);
                if v.is_null() {
                    return Value::Null;
                }
                let mut saw_null = false;
                for item in list {
                    match compare(&v, &item.eval(ctx)) {
                        Some(Ordering::Equal) => return Value::Boolean(!negated),
                        None => saw_null = true,
                        _ => {}
                    }
                }
                if saw_null {
                    Value::Null
                } else {
                    Value::Boolean(*negated)
                }
            }
            Expr::Call { func, args } => call(*func, args, ctx),
        }
    }

    /// True when the expression evaluates to TRUE (not FALSE, not NULL): a
    /// WHERE, FILTER, QUALIFY or CASE condition. Same answer as comparing
    /// [`Expr::eval`] with TRUE, without building the intermediate values
    /// of comparisons and AND/OR/NOT.
    pub fn is_true(&self, ctx: &Ctx<'_>) -> bool {
        self.truth(ctx) == Some(true)
    }

    /// The expression's truth value: `None` for NULL (or a non-boolean).
    fn truth(&self, ctx: &Ctx<'_>) -> Option<bool> {
        match self {
            Expr::Binary {
                op, left, right, ..
            } => match op {
                // three-valued: FALSE wins an AND, TRUE an OR, else NULL taints
                BinOp::And => match left.truth(ctx) {
                    Some(false) => Some(false),
                    l => match right.truth(ctx) {
                        Some(false) => Some(false),
                        r => (l == Some(true) && r == Some(true)).then_some(true),
                    },
                },
                BinOp::Or => match left.truth(ctx) {
                    Some(true) => Some(true),
                    l => match right.truth(ctx) {
                        Some(true) => Some(true),
                        r => (l == Some(false) && r == Some(false)).then_some(false),
                    },
                },
                BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
                    compare_truth(*op, &left.eval_ref(ctx), &right.eval_ref(ctx))
                }
                _ => self.eval(ctx).as_truth(),
            },
            Expr::Not(e) => e.truth(ctx).map(|b| !b),
            Expr::IsNull { expr, negated } => Some(expr.eval_ref(ctx).is_null() != *negated),
            Expr::Column(i) => ctx.row[*i].as_truth(),
            Expr::Slot(i) => ctx.slots[*i].as_truth(),
            Expr::Literal(v) => v.as_truth(),
            _ => self.eval(ctx).as_truth(),
        }
    }

    /// Like [`Expr::eval`], but columns, literals and slots are borrowed.
    pub fn eval_ref<'a>(&'a self, ctx: &'a Ctx<'_>) -> std::borrow::Cow<'a, Value> {
        use std::borrow::Cow;
        match self {
            Expr::Column(i) => Cow::Borrowed(&ctx.row[*i]),
            Expr::Literal(v) => Cow::Borrowed(v),
            Expr::Slot(i) => Cow::Borrowed(&ctx.slots[*i]),
            _ => Cow::Owned(self.eval(ctx)),
        }
    }

    /// Does the expression read any window call?
    pub fn uses_slots(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| found |= matches!(e, Expr::Slot(_)));
        found
    }

    /// Visits every sub-expression, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Column(_) | Expr::Literal(_) | Expr::Slot(_) => {}
            Expr::Binary { left, right, .. } => {
                left.walk(f);
                right.walk(f);
            }
            Expr::Not(e)
            | Expr::Neg(e)
            | Expr::IsNull { expr: e, .. }
            | Expr::Cast { expr: e, .. }
            | Expr::Extract { expr: e, .. } => e.walk(f),
            Expr::Case {
                branches,
                otherwise,
            } => {
                for (c, r) in branches {
                    c.walk(f);
                    r.walk(f);
                }
                if let Some(o) = otherwise {
                    o.walk(f);
                }
            }
            Expr::Coalesce(list) | Expr::Call { args: list, .. } => {
                list.iter().for_each(|e| e.walk(f))
            }
            Expr::InList { expr, list, .. } => {
                expr.walk(f);
                list.iter().for_each(|e| e.walk(f));
            }
        }
    }
}

fn and(l: Value, r: impl FnOnce() -> Value) -> Value {
    match l {
        Value::Boolean(false) => Value::Boolean(false),
        Value::Boolean(true) => match r() {
            Value::Boolean(b) => Value::Boolean(b),
            _ => Value::Null,
        },
        _ => match r() {
            Value::Boolean(false) => Value::Boolean(false),
            _ => Value::Null,
        },
    }
}

fn or(l: Value, r: impl FnOnce() -> Value) -> Value {
    match l {
        Value::Boolean(true) => Value::Boolean(true),
        Value::Boolean(false) => match r() {
            Value::Boolean(b) => Value::Boolean(b),
            _ => Value::Null,
        },
        _ => match r() {
            Value::Boolean(true) => Value::Boolean(true),
            _ => Value::Null,
        },
    }
}

/// SQL comparison: `None` when either side is NULL.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if a.is_null() || b.is_null() {
        return None;
    }
    Some(if a == b {
        Ordering::Equal
    } else {
        a.total_cmp(b)
    })
}

/// A SQL comparison: NULL if either side is NULL; numbers compare across
/// BIGINT and DOUBLE; -0.0 equals 0.0 and NaN equals NaN (above all numbers).
pub fn compare_op(op: BinOp, l: &Value, r: &Value) -> Value {
    compare_truth(op, l, r).map_or(Value::Null, Value::Boolean)
}

/// [`compare_op`] as a truth value (`None` for NULL).
fn compare_truth(op: BinOp, l: &Value, r: &Value) -> Option<bool> {
    if l.is_null() || r.is_null() {
        return None;
    }
    let eq = l == r;
    Some(match op {
        BinOp::Eq => eq,
        BinOp::NotEq => !eq,
        _ if eq => matches!(op, BinOp::LtEq | BinOp::GtEq),
        _ => {
            let o = l.total_cmp(r);
            match op {
                BinOp::Lt | BinOp::LtEq => o == Ordering::Less,
                _ => o == Ordering::Greater,
            }
        }
    })
}

/// Evaluates a non-logical binary operator. `ty` is the compiled result type.
pub fn binary(op: BinOp, ty: DataType, l: &Value, r: &Value) -> Value {
    use Value::*;
    if l.is_null() || r.is_null() {
        return Null;
    }
    match op {
        BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
            compare_op(op, l, r)
        }
        BinOp::Concat => Text(Arc::from(format!("{l}{r}").as_str())),
        _ => arith(op, ty, l, r),
    }
}

fn arith(op: BinOp, ty: DataType, l: &Value, r: &Value) -> Value {
    use Value::*;
    match (l, r) {
        (&Timestamp(t), &Interval(i)) => match op {
            BinOp::Add => t.checked_add(i).map_or(Null, Timestamp),
            BinOp::Sub => t.checked_sub(i).map_or(Null, Timestamp),
            _ => Null,
        },
        (&Interval(i), &Timestamp(t)) if op == BinOp::Add => {
            t.checked_add(i).map_or(Null, Timestamp)
        }
        (&Timestamp(a), &Timestamp(b)) if op == BinOp::Sub => {
            a.checked_sub(b).map_or(Null, Interval)
        }
        (&Interval(a), &Interval(b)) => match op {
            BinOp::Add => a.checked_add(b).map_or(Null, Interval),
            BinOp::Sub => a.checked_sub(b).map_or(Null, Interval),
            _ => Null,
        },
        (&Interval(a), &BigInt(b)) if op == BinOp::Mul => a.checked_mul(b).map_or(Null, Interval),
        (&BigInt(a), &BigInt(b)) if ty == DataType::BigInt => match op {
            BinOp::Add => a.checked_add(b).map_or(Null, BigInt),
            BinOp::Sub => a.checked_sub(b).map_or(Null, BigInt),
            BinOp::Mul => a.checked_mul(b).map_or(Null, BigInt),
            BinOp::Mod => a.checked_rem(b).map_or(Null, BigInt),
            _ => Null,
        },
        (l, r) => {
            let (Some(a), Some(b)) = (l.as_f64(), r.as_f64()) else {
                return Null;
            };
            match op {
                BinOp::Add => Double(a + b),
                BinOp::Sub => Double(a - b),
                BinOp::Mul => Double(a * b),
                BinOp::Div if b == 0.0 => Null,
                BinOp::Div => Double(a / b),
                BinOp::Mod if b == 0.0 => Null,
                BinOp::Mod => Double(a % b),
                _ => Null,
            }
        }
    }
}

/// CAST with NULL on failure (a cast that cannot succeed is refused at
/// compile time; one that fails on a value, like `'abc'` to BIGINT, is NULL).
pub fn cast(v: Value, to: DataType) -> Value {
    use Value::*;
    match (v, to) {
        (Null, _) => Null,
        (BigInt(i), DataType::BigInt) => BigInt(i),
        (BigInt(i), DataType::Double) => Double(i as f64),
        (BigInt(i), DataType::Boolean) => Boolean(i != 0),
        (BigInt(i), DataType::Timestamp) => Timestamp(i),
        (Double(d), DataType::Double) => Double(d),
        (Double(d), DataType::BigInt) => {
            let r = d.round();
            if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&r) {
                BigInt(r as i64)
            } else {
                Null
            }
        }
        (Boolean(b), DataType::Boolean) => Boolean(b),
        (Boolean(b), DataType::BigInt) => BigInt(b as i64),
        (Boolean(b), DataType::Double) => Double(b as i64 as f64),
        (Timestamp(t), DataType::Timestamp) => Timestamp(t),
        (Timestamp(t), DataType::BigInt) => BigInt(t),
        (Text(s), DataType::Text) => Text(s),
        (Text(s), DataType::BigInt) => s.trim().parse::<i64>().map_or(Null, BigInt),
        (Text(s), DataType::Double) => s.trim().parse::<f64>().map_or(Null, Double),
        (Text(s), DataType::Boolean) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" => Boolean(true),
            "false" | "f" | "0" | "no" => Boolean(false),
            _ => Null,
        },
        (Text(s), DataType::Timestamp) => time::parse_timestamp(&s).map_or(Null, Timestamp),
        (v, DataType::Text) => Text(Arc::from(v.to_string().as_str())),
        _ => Null,
    }
}

fn call(func: Func, args: &[Expr], ctx: &Ctx<'_>) -> Value {
    let v = args[0].eval(ctx);
    match func {
        Func::NullIf => {
            let w = args[1].eval(ctx);
            if compare(&v, &w) == Some(Ordering::Equal) {
                Value::Null
            } else {
                v
            }
        }
        Func::Abs => match v {
            Value::BigInt(i) => i.checked_abs().map_or(Value::Null, Value::BigInt),
            Value::Double(d) => Value::Double(d.abs()),
            _ => Value::Null,
        },
        Func::Lower => match v {
            Value::Text(s) => Value::text(&s.to_lowercase()),
            _ => Value::Null,
        },
        Func::Upper => match v {
            Value::Text(s) => Value::text(&s.to_uppercase()),
            _ => Value::Null,
        },
        Func::Length => match v {
            Value::Text(s) => Value::BigInt(s.chars().count() as i64),
            _ => Value::Null,
        },
        Func::UaBrowser => match v {
            Value::Text(s) => Value::text(&crate::enrich::ua_browser(&s)),
            _ => Value::Null,
        },
        Func::UaIsBot => match v {
            Value::Text(s) => Value::Boolean(crate::enrich::ua_is_bot(&s)),
            _ => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value) -> Box<Expr> {
        Box::new(Expr::Literal(v))
    }

    fn eval(e: &Expr) -> Value {
        e.eval(&Ctx {
            row: &[],
            slots: &[],
        })
    }

    #[test]
    fn three_valued_logic() {
        let t = Value::Boolean(true);
        let f = Value::Boolean(false);
        let n = Value::Null;
        assert_eq!(and(n.clone(), || f.clone()), f);
        assert_eq!(and(n.clone(), || t.clone()), n);
        assert_eq!(or(n.clone(), || t.clone()), t);
        assert_eq!(or(n.clone(), || f.clone()), n);
    }

    /// `is_true` is `eval(..) == TRUE` for every nesting of AND, OR, NOT,
    /// IS NULL and comparisons over TRUE, FALSE, NULL and non-boolean values.
    #[test]
    fn is_true_agrees_with_eval_under_three_valued_logic() {
        let leaves = [
            Value::Boolean(true),
            Value::Boolean(false),
            Value::Null,
            Value::BigInt(1),
        ];
        let row = leaves.to_vec();
        let ctx = Ctx {
            row: &row,
            slots: &row,
        };
        let mut exprs: Vec<Expr> = (0..leaves.len())
            .flat_map(|i| {
                [
                    Expr::Column(i),
                    Expr::Slot(i),
                    Expr::Literal(leaves[i].clone()),
                ]
            })
            .collect();
        let atoms = exprs.clone();
        for a in &atoms {
            exprs.push(Expr::Not(Box::new(a.clone())));
            exprs.push(Expr::IsNull {
                expr: Box::new(a.clone()),
                negated: false,
            });
            for b in &atoms {
                for op in [
                    BinOp::And,
                    BinOp::Or,
                    BinOp::Eq,
                    BinOp::NotEq,
                    BinOp::Lt,
                    BinOp::GtEq,
                ] {
                    let e = Expr::Binary {
                        op,
                        left: Box::new(a.clone()),
                        right: Box::new(b.clone()),
                        ty: DataType::Boolean,
                    };
                    exprs.push(Expr::Not(Box::new(e.clone())));
                    exprs.push(e);
                }
            }
        }
        for e in &exprs {
            assert_eq!(
                e.is_true(&ctx),
                e.eval(&ctx) == Value::Boolean(true),
                "{e:?}"
            );
        }
    }

    #[test]
    fn division_by_zero_is_null_and_division_is_double() {
        let e = Expr::Binary {
            op: BinOp::Div,
            left: lit(Value::BigInt(1)),
            right: lit(Value::BigInt(0)),
            ty: DataType::Double,
        };
        assert_eq!(eval(&e), Value::Null);
        let e = Expr::Binary {
            op: BinOp::Div,
            left: lit(Value::BigInt(1)),
            right: lit(Value::BigInt(4)),
            ty: DataType::Double,
        };
        assert!(eval(&e).bit_eq(&Value::Double(0.25)));
    }

    #[test]
    fn overflow_is_null() {
        let e = Expr::Binary {
            op: BinOp::Add,
            left: lit(Value::BigInt(i64::MAX)),
            right: lit(Value::BigInt(1)),
            ty: DataType::BigInt,
        };
        assert_eq!(eval(&e), Value::Null);
    }

    #[test]
    fn casts() {
        assert_eq!(
            cast(Value::text(" 42 "), DataType::BigInt),
            Value::BigInt(42)
        );
        assert_eq!(cast(Value::text("x"), DataType::BigInt), Value::Null);
        assert_eq!(cast(Value::Double(2.5), DataType::BigInt), Value::BigInt(3));
        assert_eq!(cast(Value::BigInt(7), DataType::Text), Value::text("7"));
    }
}
