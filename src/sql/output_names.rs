//! PostgreSQL's names for a query's output columns.
//!
//! DataFusion names an unaliased output column after its whole expression
//! (`count(*)`, `max(bid.price)`, `Int64(1)`) and refuses two columns of the
//! same name ("Projections require unique expression names"). PostgreSQL
//! names it after the outermost function, column or type (`count`, `max`,
//! `?column?` — `FigureColname` in its parser) and lets names repeat
//! (`SELECT a, a`), which dashboards, ORMs and BI tools rely on.
//!
//! Before a query is planned, [`name_like_postgres`] gives each unaliased
//! item of its top-level SELECT lists PostgreSQL's name as an alias, and
//! gives an item whose name repeats an earlier one a unique internal alias.
//! The returned [`OutputNames`] maps those internal aliases back, so what a
//! client sees (its row description, a view's columns) has PostgreSQL's
//! names, repeats included. Only the outermost query is renamed: subqueries
//! name their columns as DataFusion does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    self, AccessExpr, Expr, Ident, Query, Select, SelectItem, SetExpr, Statement, TrimWhereField,
    Value,
};

use super::normalize_ident;

/// PostgreSQL's name of a column that has no better one.
const NO_NAME: &str = "?column?";

/// The internal alias an output column of a repeated name is planned under.
fn internal_alias(index: usize, name: &str) -> String {
    format!("__eddy_output_{index}_{name}")
}

/// The client-facing names of output columns planned under internal aliases.
#[derive(Debug, Default, Clone)]
pub struct OutputNames {
    renamed: HashMap<String, String>,
}

impl OutputNames {
    /// `schema` with each internally aliased column under its client name.
    pub fn apply(&self, schema: &SchemaRef) -> SchemaRef {
        if self.renamed.is_empty() {
            return schema.clone();
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|field| match self.renamed.get(field.name()) {
                Some(name) => field.as_ref().clone().with_name(name),
                None => field.as_ref().clone(),
            })
            .collect();
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
    }
}

/// Names the output columns of `statement` (a query, or the query of an
/// INSERT) as PostgreSQL does; see the module docs.
pub fn name_like_postgres(statement: &mut Statement) -> OutputNames {
    let mut names = OutputNames::default();
    match statement {
        Statement::Query(query) => name_query(query, true, &mut names),
        Statement::Insert(insert) => {
            if let Some(source) = insert.source.as_mut() {
                name_query(source, false, &mut names);
            }
        }
        _ => {}
    }
    names
}

fn name_query(query: &mut Query, client_facing: bool, names: &mut OutputNames) {
    name_set_expr(&mut query.body, client_facing, names);
}

/// The leftmost SELECT of a set operation names its columns; the others
/// only need names that do not repeat.
fn name_set_expr(body: &mut SetExpr, client_facing: bool, names: &mut OutputNames) {
    match body {
        SetExpr::Select(select) => name_select(select, client_facing, names),
        SetExpr::Query(query) => name_query(query, client_facing, names),
        SetExpr::SetOperation { left, right, .. } => {
            name_set_expr(left, client_facing, names);
            name_set_expr(right, false, names);
        }
        _ => {}
    }
}

fn name_select(select: &mut Select, client_facing: bool, names: &mut OutputNames) {
    let mut taken = HashSet::new();
    for (index, item) in select.projection.iter_mut().enumerate() {
        let (expr, name) = match &*item {
            SelectItem::UnnamedExpr(expr) => (expr.clone(), figure_name(expr).0),
            SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), normalize_ident(alias)),
            _ => continue,
        };
        let is_repeat = !taken.insert(name.clone());
        let alias = if is_repeat {
            let alias = internal_alias(index, &name);
            if client_facing {
                names.renamed.insert(alias.clone(), name);
            }
            alias
        } else if matches!(
            item,
            SelectItem::ExprWithAlias { .. }
                | SelectItem::UnnamedExpr(Expr::Identifier(_) | Expr::CompoundIdentifier(_))
        ) {
            // Named already: DataFusion names a column after it, as
            // PostgreSQL does.
            continue;
        } else {
            name
        };
        *item = SelectItem::ExprWithAlias {
            expr,
            alias: Ident::with_quote('"', alias),
        };
    }
}

/// How sure PostgreSQL is of a name: a type cast keeps its operand's name
/// only if that is better than a guess.
#[derive(PartialEq, PartialOrd)]
enum Strength {
    None,
    Guess,
    Sure,
}

/// PostgreSQL's `FigureColnameInternal`: the name of an unaliased output
/// column computed by `expr`.
fn figure_name(expr: &Expr) -> (String, Strength) {
    use Strength::{Guess, Sure};
    let sure = |name: &str| (name.to_string(), Sure);
    match expr {
        Expr::Identifier(ident) => (normalize_ident(ident), Sure),
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(last) => (normalize_ident(last), Sure),
            None => none(),
        },
        Expr::CompoundFieldAccess { root, access_chain } => match access_chain.last() {
            Some(AccessExpr::Dot(field)) => figure_name(field),
            _ => figure_name(root),
        },
        Expr::Function(function) => match function.name.0.last().and_then(|p| p.as_ident()) {
            Some(ident) => (normalize_ident(ident), Sure),
            None => none(),
        },
        Expr::Cast {
            expr, data_type, ..
        } => {
            let operand = figure_name(expr);
            if operand.1 == Sure {
                operand
            } else {
                (type_name(data_type), Sure)
            }
        }
        Expr::TypedString(typed) => (type_name(&typed.data_type), Sure),
        Expr::Interval(_) => sure("interval"),
        Expr::Value(value) if matches!(value.value, Value::Boolean(_)) => sure("bool"),
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => figure_name(inner),
        Expr::Case { .. } => ("case".into(), Guess),
        Expr::Array(_) => ("array".into(), Guess),
        Expr::Exists { .. } => sure("exists"),
        Expr::Subquery(query) => match query.body.as_ref() {
            SetExpr::Select(select) => match select.projection.first() {
                Some(SelectItem::UnnamedExpr(expr)) => figure_name(expr),
                Some(SelectItem::ExprWithAlias { alias, .. }) => (normalize_ident(alias), Sure),
                _ => none(),
            },
            _ => none(),
        },
        Expr::Extract { .. } => sure("extract"),
        Expr::Substring { .. } => sure("substring"),
        Expr::Position { .. } => sure("position"),
        Expr::Overlay { .. } => sure("overlay"),
        Expr::Ceil { .. } => sure("ceil"),
        Expr::Floor { .. } => sure("floor"),
        Expr::AtTimeZone { .. } => sure("timezone"),
        Expr::Trim { trim_where, .. } => match trim_where {
            Some(TrimWhereField::Leading) => sure("ltrim"),
            Some(TrimWhereField::Trailing) => sure("rtrim"),
            _ => sure("btrim"),
        },
        _ => none(),
    }
}

fn none() -> (String, Strength) {
    (NO_NAME.to_string(), Strength::None)
}

/// The name PostgreSQL's grammar gives a type in a cast (`bigint` is
/// `int8`, `varchar(10)` is `varchar`).
fn type_name(data_type: &ast::DataType) -> String {
    use ast::DataType as T;
    let name = match data_type {
        T::Boolean | T::Bool => "bool",
        T::SmallInt(_) | T::Int2(_) => "int2",
        T::Int(_) | T::Integer(_) | T::Int4(_) => "int4",
        T::BigInt(_) | T::Int8(_) => "int8",
        T::Real | T::Float4 => "float4",
        T::Double(_) | T::DoublePrecision | T::Float8 | T::Float(_) => "float8",
        T::Numeric(_) | T::Decimal(_) | T::Dec(_) => "numeric",
        T::Varchar(_) | T::CharacterVarying(_) => "varchar",
        T::Char(_) | T::Character(_) => "bpchar",
        T::Timestamp(_, ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz) => "timestamptz",
        T::Timestamp(..) => "timestamp",
        T::Time(..) => "time",
        other => return other.to_string().to_lowercase(),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn renamed(sql: &str) -> (String, Vec<(String, String)>) {
        let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        let names = name_like_postgres(&mut statement);
        let mut renamed: Vec<_> = names.renamed.into_iter().collect();
        renamed.sort();
        (statement.to_string(), renamed)
    }

    #[test]
    fn names_columns_as_postgres_does() {
        let (sql, renamed) = renamed(
            "SELECT count(*), max(b.price), b.auction, x::bigint, '1'::bigint, 1 + 1, \
             CASE WHEN a THEN 1 END, EXTRACT(year FROM ts), \"Upper\", COUNT(*) AS n FROM b",
        );
        assert_eq!(
            sql,
            "SELECT count(*) AS \"count\", max(b.price) AS \"max\", b.auction, \
             x::BIGINT AS \"x\", '1'::BIGINT AS \"int8\", 1 + 1 AS \"?column?\", \
             CASE WHEN a THEN 1 END AS \"case\", EXTRACT(YEAR FROM ts) AS \"extract\", \
             \"Upper\", COUNT(*) AS n FROM b"
        );
        assert!(renamed.is_empty());
    }

    #[test]
    fn repeated_names_are_planned_apart_and_shown_alike() {
        let (sql, renamed) = renamed("SELECT a, a, 1 AS x, 2 AS x, 1, 2 FROM t");
        assert_eq!(
            sql,
            "SELECT a, a AS \"__eddy_output_1_a\", 1 AS x, 2 AS \"__eddy_output_3_x\", \
             1 AS \"?column?\", 2 AS \"__eddy_output_5_?column?\" FROM t"
        );
        assert_eq!(
            renamed,
            [
                ("__eddy_output_1_a".into(), "a".into()),
                ("__eddy_output_3_x".into(), "x".into()),
                ("__eddy_output_5_?column?".into(), "?column?".into()),
            ]
        );
    }

    #[test]
    fn only_the_first_branch_of_a_union_names_the_columns() {
        let (sql, renamed) = renamed("SELECT a, a FROM t UNION ALL SELECT b, b FROM u");
        assert_eq!(
            sql,
            "SELECT a, a AS \"__eddy_output_1_a\" FROM t UNION ALL \
             SELECT b, b AS \"__eddy_output_1_b\" FROM u"
        );
        assert_eq!(renamed.len(), 1);
    }

    #[test]
    fn an_insert_needs_distinct_names_only() {
        let (sql, renamed) =
            renamed("INSERT INTO t SELECT g, g % 10, g FROM generate_series(1, 10) AS s(g)");
        assert_eq!(
            sql,
            "INSERT INTO t SELECT g, g % 10 AS \"?column?\", g AS \"__eddy_output_2_g\" \
             FROM generate_series(1, 10) AS s (g)"
        );
        assert!(renamed.is_empty());
    }
}
