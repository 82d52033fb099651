//! `CREATE VIEW … AS SELECT … FROM table [WHERE …] [WINDOW …] [QUALIFY …]`
//! and the window calls inside it.

use super::scalar::Compiler;
use super::table::{object_name, stored_name};
use super::SqlError;
use crate::expr::Expr;
use crate::plan::{Catalog, View};
use crate::value::{Column, DataType, Schema};
use sqlparser::ast::{self as ast, Spanned};

pub(super) fn compile_view(catalog: &Catalog, cv: &ast::CreateView) -> Result<View, SqlError> {
    let name = stored_name(&cv.name, "view")?;
    let q = &cv.query;
    let unsupported = |span, what: &str| {
        Err(SqlError::at(span, format!("{what} is not supported in a feature view; a view is SELECT … FROM <table> [WHERE …] [WINDOW …] [QUALIFY …] with window functions")))
    };
    if q.with.is_some() {
        return unsupported(q.span(), "WITH");
    }
    if q.order_by.is_some() {
        return unsupported(
            q.span(),
            "ORDER BY on the view (rows come out in log order)",
        );
    }
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return unsupported(q.span(), "LIMIT");
    }
    let ast::SetExpr::Select(sel) = q.body.as_ref() else {
        return unsupported(q.body.span(), "UNION and other set operations");
    };
    if sel.distinct.is_some() {
        return unsupported(sel.span(), "SELECT DISTINCT");
    }
    if !matches!(&sel.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty()) {
        return unsupported(
            sel.span(),
            "GROUP BY (use window functions: one row per event)",
        );
    }
    if sel.having.is_some() {
        return unsupported(sel.span(), "HAVING (use QUALIFY)");
    }
    let [from] = sel.from.as_slice() else {
        return unsupported(
            sel.span(),
            "a view must read exactly one table; joins and multiple tables",
        );
    };
    if !from.joins.is_empty() {
        return unsupported(
            from.span(),
            "JOIN (views keyed by another column are their own views)",
        );
    }
    let ast::TableFactor::Table { name: tname, .. } = &from.relation else {
        return unsupported(from.span(), "a subquery in FROM");
    };
    let tname_s = object_name(tname);
    let (table_idx, table) = catalog.table(&tname_s).ok_or_else(|| {
        SqlError::at(
            tname.span(),
            format!("unknown table `{tname_s}`; define it with CREATE TABLE before the view"),
        )
    })?;

    let mut c = Compiler {
        table,
        named_windows: sel
            .named_window
            .iter()
            .map(|ast::NamedWindowDefinition(id, w)| (id.value.to_ascii_lowercase(), w))
            .collect(),
        calls: Vec::new(),
        groups: Vec::new(),
        aliases: Vec::new(),
        allow_windows: false,
        allow_aliases: false,
    };
    let filter = match &sel.selection {
        Some(w) => Some(bool_expr(&mut c, w)?),
        None => None,
    };
    c.allow_windows = true;
    let mut select = Vec::new();
    let mut output = Schema::default();
    for item in &sel.projection {
        let (ex, alias, span): (&ast::Expr, Option<&ast::Ident>, _) = match item {
            ast::SelectItem::UnnamedExpr(e) => (e, None, e.span()),
            ast::SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias), expr.span()),
            ast::SelectItem::Wildcard(_) => {
                for (i, col) in table.schema.columns.iter().enumerate() {
                    push_output(&mut output, col.name.clone(), col.data_type, item.span())?;
                    select.push(Expr::Column(i));
                    c.aliases
                        .push((col.name.clone(), (Expr::Column(i), col.data_type)));
                }
                continue;
            }
            other => return unsupported(other.span(), "this select item"),
        };
        let (x, ty) = c.expr(ex)?;
        let col_name = match (alias, ex) {
            (Some(a), _) => a.value.clone(),
            (None, ast::Expr::Identifier(id)) => id.value.clone(),
            (None, ast::Expr::CompoundIdentifier(ids)) => {
                ids.last().expect("non-empty").value.clone()
            }
            (None, _) => return Err(SqlError::at(span, "give this expression a name with AS")),
        };
        let ty =
            match ty {
                DataType::Interval => return Err(SqlError::at(
                    span,
                    "an INTERVAL cannot be an output column; use EXTRACT(EPOCH FROM …) for seconds",
                )),
                DataType::Null => {
                    return Err(SqlError::at(
                        span,
                        "give NULL a type, e.g. CAST(NULL AS BIGINT)",
                    ))
                }
                t => t,
            };
        push_output(&mut output, col_name.clone(), ty, span)?;
        c.aliases.push((col_name, (x.clone(), ty)));
        select.push(x);
    }
    let qualify = match &sel.qualify {
        Some(q) => {
            c.allow_aliases = true;
            Some(bool_expr(&mut c, q)?)
        }
        None => None,
    };
    let qualify_at_arrival = qualify.as_ref().is_some_and(|q| !q.uses_slots());
    let label_columns = select
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            let mut f = false;
            e.walk(&mut |x| {
                if let Expr::Slot(i) = x {
                    f |= c.calls[*i].is_following();
                }
            });
            f
        })
        .map(|(i, _)| i)
        .collect();
    Ok(View {
        name,
        table: table_idx,
        output,
        filter,
        calls: c.calls,
        groups: c.groups,
        select,
        qualify,
        qualify_at_arrival,
        label_columns,
    })
}

fn push_output(
    out: &mut Schema,
    name: String,
    ty: DataType,
    span: sqlparser::tokenizer::Span,
) -> Result<(), SqlError> {
    if out.index_of(&name).is_some() {
        return Err(SqlError::at(
            span,
            format!("output column `{name}` appears twice; rename one with AS"),
        ));
    }
    out.columns.push(Column {
        name,
        data_type: ty,
    });
    Ok(())
}

pub(super) fn bool_expr(c: &mut Compiler<'_>, e: &ast::Expr) -> Result<Expr, SqlError> {
    let (x, t) = c.expr(e)?;
    if !matches!(t, DataType::Boolean | DataType::Null) {
        return Err(SqlError::at(
            e.span(),
            format!("expected a BOOLEAN condition, got {t}"),
        ));
    }
    Ok(x)
}
