//! What lowering needs to know about a logical plan beyond one node: where
//! a column comes from, whether it is a window's end or a watermarked time
//! column, whether a result only grows, what identifies its rows.

use datafusion::common::JoinType;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};

use crate::catalog::lookup::LookupRelationProvider;
use crate::catalog::window::WindowedRelationProvider;
use crate::catalog::RelationProvider;

/// Where output column `index` of `plan` is made: followed down through the
/// nodes that pass a column on unchanged (a projection or GROUP BY of the
/// plain column, filters, aliases, an ORDER BY without LIMIT). Returns that
/// node and the column's index in its output.
pub(super) fn column_origin(plan: &LogicalPlan, index: usize) -> (&LogicalPlan, usize) {
    let input_column = |input: &LogicalPlan, expr: Option<&Expr>| match expr {
        Some(Expr::Column(c)) => input.schema().index_of_column(c).ok(),
        _ => None,
    };
    let passed_on = match plan {
        LogicalPlan::Projection(projection) => {
            let expr = projection.expr.get(index).map(|e| e.clone().unalias());
            input_column(&projection.input, expr.as_ref()).map(|i| (projection.input.as_ref(), i))
        }
        LogicalPlan::Aggregate(aggregate) => {
            input_column(&aggregate.input, aggregate.group_expr.get(index))
                .map(|i| (aggregate.input.as_ref(), i))
        }
        LogicalPlan::Sort(sort) if sort.fetch.is_none() => Some((sort.input.as_ref(), index)),
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => Some((plan.inputs()[0], index)),
        _ => None,
    };
    match passed_on {
        Some((input, index)) => column_origin(input, index),
        None => (plan, index),
    }
}

/// [`column_origin`] of `expr`, when it is a column of `plan`'s output.
pub(super) fn expr_origin<'a>(
    plan: &'a LogicalPlan,
    expr: &Expr,
) -> Option<(&'a LogicalPlan, usize)> {
    let Expr::Column(column) = expr else {
        return None;
    };
    let index = plan.schema().index_of_column(column).ok()?;
    Some(column_origin(plan, index))
}

/// Whether `expr` over `plan`'s output is a window's `window_end`, passed
/// through unchanged (projections, filters, GROUP BY keys).
pub(super) fn is_window_end(plan: &LogicalPlan, expr: &Expr) -> bool {
    let Some((LogicalPlan::TableScan(scan), index)) = expr_origin(plan, expr) else {
        return false;
    };
    let windowed = source_as_provider(&scan.source)
        .map(|p| p.is::<WindowedRelationProvider>())
        .unwrap_or(false);
    windowed && scan.projected_schema.field(index).name() == "window_end"
}

/// Whether `expr` over `plan`'s output is the column a source's watermark is
/// declared on, passed through unchanged.
pub(super) fn is_watermark_column(plan: &LogicalPlan, expr: &Expr) -> bool {
    let Some((LogicalPlan::TableScan(scan), index)) = expr_origin(plan, expr) else {
        return false;
    };
    let Ok(provider) = source_as_provider(&scan.source) else {
        return false;
    };
    let Some(relation) = provider.downcast_ref::<RelationProvider>() else {
        return false;
    };
    let source_index = match &scan.projection {
        Some(projection) => projection.get(index).copied(),
        None => Some(index),
    };
    source_index.is_some() && relation.watermark_column == source_index
}

/// Whether `plan` is a windowed aggregate's output (grouped by a window's
/// end), passed on through projections, filters and aliases: its rows change
/// only while their window is open.
pub(super) fn is_windowed_aggregate_output(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(aggregate) => window_end_key(aggregate).is_some(),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            is_windowed_aggregate_output(plan.inputs()[0])
        }
        _ => false,
    }
}

/// Whether `plan` reads a relation `FOR SYSTEM_TIME AS OF PROCTIME()`
/// (through projections, filters and aliases only).
pub(super) fn reads_lookup(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)
            .map(|p| p.is::<LookupRelationProvider>())
            .unwrap_or(false),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            plan.inputs().iter().all(|i| reads_lookup(i))
        }
        _ => false,
    }
}

/// Whether `plan` yields at most one row whatever its inputs hold (an
/// aggregate without GROUP BY, one VALUES row, ...): a join with it needs no
/// equality condition.
pub(super) fn at_most_one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(aggregate) => aggregate.group_expr.is_empty(),
        LogicalPlan::Values(values) => values.values.len() <= 1,
        LogicalPlan::EmptyRelation(_) => true,
        LogicalPlan::Limit(limit) => {
            matches!(limit.get_fetch_type(), Ok(datafusion::logical_expr::logical_plan::FetchType::Literal(Some(n))) if n <= 1)
                || at_most_one_row(&limit.input)
        }
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Sort(_) => plan.inputs().iter().all(|i| at_most_one_row(i)),
        _ => false,
    }
}

/// The output columns that identify a row of `plan`'s result, if there are
/// such: the GROUP BY columns of an aggregate, followed through filters and
/// projections that keep them as plain columns.
pub fn derive_key(plan: &LogicalPlan) -> Option<Vec<usize>> {
    match plan {
        LogicalPlan::Aggregate(aggregate) if !aggregate.group_expr.is_empty() => {
            Some((0..aggregate.group_expr.len()).collect())
        }
        LogicalPlan::Filter(filter) => derive_key(&filter.input),
        LogicalPlan::SubqueryAlias(alias) => derive_key(&alias.input),
        LogicalPlan::Projection(projection) => {
            let input_key = derive_key(&projection.input)?;
            let input_schema = projection.input.schema();
            input_key
                .iter()
                .map(|&k| {
                    projection
                        .expr
                        .iter()
                        .position(|e| match e.clone().unalias() {
                            Expr::Column(column) => {
                                input_schema.index_of_column(&column).ok() == Some(k)
                            }
                            _ => false,
                        })
                })
                .collect()
        }
        _ => None,
    }
}

/// Whether `plan`'s result only ever grows (no retractions), given which
/// relations do.
pub fn is_append_only(
    plan: &LogicalPlan,
    relation_is_append_only: &dyn Fn(&RelationProvider) -> bool,
) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)
            .ok()
            .and_then(|p| {
                p.downcast_ref::<RelationProvider>()
                    .map(relation_is_append_only)
            })
            .unwrap_or(false),
        LogicalPlan::Join(join)
            if !matches!(
                join.join_type,
                JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
            ) =>
        {
            false
        }
        LogicalPlan::Join(_)
        | LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Union(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Values(_)
        | LogicalPlan::EmptyRelation(_) => plan
            .inputs()
            .iter()
            .all(|input| is_append_only(input, relation_is_append_only)),
        _ => false,
    }
}

/// The position of the group key that is a window's `window_end`, traced
/// under any alias and through an inner windowed aggregate (q5's max of
/// per-window counts).
pub(super) fn window_end_key(aggregate: &Aggregate) -> Option<usize> {
    aggregate
        .group_expr
        .iter()
        .position(|e| is_window_end(&aggregate.input, e))
}
