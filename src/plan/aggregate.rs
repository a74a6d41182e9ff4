//! Lowering `Aggregate` (GROUP BY) → `UpdatingAggregate` (windowed when
//! grouped by a window's `window_end`), or, over `SESSION(...)` of an
//! append-only input, one `SessionWindowAggregate`.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{lit, Aggregate, Expr, LogicalPlan};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::PhysicalExpr;

use super::exprs::{arrow_schema, not_incremental, physical_expr, physical_exprs};
use super::properties::window_end_key;
use super::Lowering;
use crate::catalog::window::{WindowedRelationProvider, Windowing};
use crate::error::{EddyError, Result};
use crate::stream::accumulator::{AggregateFolder, AggregateKind};
use crate::stream::aggregate::{AggregateCall, AggregateOperator, WindowedGroups};
use crate::stream::graph::NodeIndex;
use crate::stream::session::SessionSpec;
use crate::stream::session_aggregate::{
    SessionAggregateOperator, SessionClosing, SessionGroupColumn,
};
use crate::stream::shard::sharded;

pub(super) fn aggregate_call(
    expr: &Expr,
    input_schema: &DFSchema,
    output_type: datafusion::arrow::datatypes::DataType,
) -> Result<AggregateCall> {
    let unaliased = match expr {
        Expr::Alias(alias) => alias.expr.as_ref(),
        other => other,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = unaliased else {
        return Err(crate::internal!(
            "aggregate expression is not an aggregate function: {expr}"
        ));
    };
    let AggregateFunctionParams {
        args,
        distinct,
        filter,
        order_by,
        ..
    } = params;
    let kind = AggregateKind::from_function(func.name(), *distinct)?;
    let mut delimiter = None;
    let argument = match args.as_slice() {
        [] => Expr::Literal(datafusion::common::ScalarValue::Int64(Some(1)), None),
        [single] => single.clone(),
        [value, Expr::Literal(separator, _)] if kind == AggregateKind::StringAgg => {
            delimiter = Some(match separator {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => s.clone(),
                _ => String::new(),
            });
            value.clone()
        }
        _ => {
            return Err(EddyError::NotIncremental(format!(
                "aggregate {}() with {} arguments is not supported in materialized views yet",
                func.name(),
                args.len()
            )))
        }
    };
    // An ordered aggregate folds (order keys..., value) structs.
    let (argument, order) = if kind.is_ordered() {
        let mut fields = Vec::with_capacity(2 * (order_by.len() + 1));
        for (i, sort) in order_by.iter().enumerate() {
            fields.push(lit(format!("k{i}")));
            fields.push(sort.expr.clone());
        }
        fields.push(lit("value"));
        fields.push(argument);
        let options: Vec<SortOptions> = order_by
            .iter()
            .map(|s| SortOptions {
                descending: !s.asc,
                nulls_first: s.nulls_first,
            })
            .collect();
        (
            datafusion::functions::core::expr_fn::named_struct(fields),
            options,
        )
    } else {
        if !order_by.is_empty() && !matches!(kind, AggregateKind::Min | AggregateKind::Max) {
            return Err(EddyError::NotIncremental(format!(
                "{}(... ORDER BY ...) is not supported in materialized views yet",
                func.name()
            )));
        }
        (argument, vec![])
    };
    let argument = physical_expr(&argument, input_schema)?;
    let argument_type = argument.data_type(input_schema.as_arrow())?;
    let filter = filter
        .as_ref()
        .map(|f| physical_expr(f, input_schema))
        .transpose()?;
    Ok(AggregateCall {
        folder: AggregateFolder::try_new(kind, &argument_type, output_type, &order, delimiter)?,
        argument,
        filter,
        display: unaliased.schema_name().to_string(),
    })
}

/// `expr`, over the columns of a windowed scan, over the input relation's
/// own columns instead (through the scan's projection, `unprojected`);
/// `None` when it reads a window column (`window_start` and after).
pub(super) fn over_input_columns(
    expr: &Arc<dyn PhysicalExpr>,
    unprojected: &dyn Fn(usize) -> Option<usize>,
    window_start: usize,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let mut reads_window = false;
    let mapped = Arc::clone(expr)
        .transform(|e| {
            let Some(column) = e.downcast_ref::<Column>() else {
                return Ok(Transformed::no(e));
            };
            match unprojected(column.index()) {
                Some(i) if i < window_start => {
                    Ok(Transformed::yes(
                        Arc::new(Column::new(column.name(), i)) as Arc<dyn PhysicalExpr>
                    ))
                }
                _ => {
                    reads_window = true;
                    Ok(Transformed::no(e))
                }
            }
        })?
        .data;
    Ok((!reads_window).then_some(mapped))
}

impl Lowering<'_> {
    /// GROUP BY: an updating aggregate (by window end when grouped by a
    /// window's `window_end`), or one session aggregate where it can fuse.
    pub(super) fn aggregate(&mut self, aggregate: &Aggregate) -> Result<NodeIndex> {
        if aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err(not_incremental("GROUPING SETS, ROLLUP and CUBE"));
        }
        if let Some(fused) = self.session_aggregate(aggregate)? {
            return Ok(fused);
        }
        let input = self.node(&aggregate.input)?;
        let input_schema = aggregate.input.schema();
        let group_exprs = physical_exprs(&aggregate.group_expr, input_schema)?;
        let output_schema = arrow_schema(&aggregate.schema);
        // Grouped by a window's end, or else by a column of that name
        // past what the trace does not follow (a join of windowed
        // inputs).
        let window_end = window_end_key(aggregate).or_else(|| {
            let by_name = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "window_end");
            let position = aggregate.group_expr.iter().position(by_name);
            position.filter(|_| !self.windows.is_empty())
        });
        let window = window_end.map(|end_key| WindowedGroups {
            end_key,
            allowed_lateness: self.time.allowed_lateness_micros,
            emit_on_close: self.time.emit_on_window_close,
            watermarked: self.windows_watermarked,
        });
        self.windowed_aggregate |= window.is_some();
        let make = || -> Result<AggregateOperator> {
            let calls = aggregate
                .aggr_expr
                .iter()
                .enumerate()
                .map(|(i, expr)| {
                    let output_type = output_schema
                        .field(group_exprs.len() + i)
                        .data_type()
                        .clone();
                    aggregate_call(expr, input_schema, output_type)
                })
                .collect::<Result<Vec<_>>>()?;
            let op = AggregateOperator::try_new(group_exprs.clone(), calls, output_schema.clone())?;
            Ok(match window {
                Some(window) => op.with_window(window),
                None => op,
            })
        };
        let op = sharded(self.workers, make)?;
        Ok(self.graph.add(op, vec![input]))
    }

    /// An aggregate straight over `SESSION(...)` of an append-only input,
    /// grouped by the session's keys and window (`window_end`, optionally
    /// `window_start`), as one operator that folds rows into sessions
    /// (`stream::session_aggregate`); `None` for any other shape, which
    /// lowers as `SessionWindow` then an aggregate.
    pub(super) fn session_aggregate(&mut self, aggregate: &Aggregate) -> Result<Option<NodeIndex>> {
        let LogicalPlan::TableScan(scan) = aggregate.input.as_ref() else {
            return Ok(None);
        };
        let Ok(provider) = source_as_provider(&scan.source) else {
            return Ok(None);
        };
        let Some(windowed) = provider.downcast_ref::<WindowedRelationProvider>() else {
            return Ok(None);
        };
        let Windowing::Session { gap, key_columns } = &windowed.windowing else {
            return Ok(None);
        };
        let relation = &windowed.relation;
        if scan.fetch.is_some() || !(self.relation_is_append_only)(relation) {
            return Ok(None);
        }
        let input_schema = relation.rows().schema().clone();
        let (window_start, window_end) =
            (input_schema.fields().len(), input_schema.fields().len() + 1);
        // The scan's column `i` as a column of the window's schema.
        let unprojected = |i: usize| {
            scan.projection
                .as_ref()
                .map_or(Some(i), |p| p.get(i).copied())
        };
        let scan_schema = aggregate.input.schema();
        let mut group_columns = Vec::with_capacity(aggregate.group_expr.len());
        for expr in &aggregate.group_expr {
            let Expr::Column(column) = expr else {
                return Ok(None);
            };
            let Some(column) = scan_schema
                .index_of_column(column)
                .ok()
                .and_then(unprojected)
            else {
                return Ok(None);
            };
            group_columns.push(match column {
                c if c == window_start => SessionGroupColumn::WindowStart,
                c if c == window_end => SessionGroupColumn::WindowEnd,
                c => match key_columns.iter().position(|&k| k == c) {
                    Some(k) => SessionGroupColumn::Key(k),
                    None => return Ok(None),
                },
            });
        }
        let grouped_by = |g| group_columns.contains(&g);
        if !grouped_by(SessionGroupColumn::WindowEnd)
            || !(0..key_columns.len()).all(|k| grouped_by(SessionGroupColumn::Key(k)))
        {
            return Ok(None);
        }
        // The calls' arguments and filters read input rows: their columns
        // are the scan's, unprojected; `None` when one reads the window's.
        let output_schema = arrow_schema(&aggregate.schema);
        let session_calls = || -> Result<Option<Vec<AggregateCall>>> {
            let mut calls = Vec::with_capacity(aggregate.aggr_expr.len());
            for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
                let output_type = output_schema.field(group_columns.len() + i).data_type();
                let mut call = aggregate_call(expr, scan_schema, output_type.clone())?;
                let input_exprs = std::iter::once(&mut call.argument).chain(call.filter.as_mut());
                for expr in input_exprs {
                    match over_input_columns(expr, &unprojected, window_start)? {
                        Some(over_input) => *expr = over_input,
                        None => return Ok(None),
                    }
                }
                calls.push(call);
            }
            Ok(Some(calls))
        };
        if session_calls()?.is_none() {
            return Ok(None);
        }

        let (scan_node, watermarked) = self.window_input(windowed, None);
        self.windowed_aggregate = true;
        let spec = SessionSpec {
            time_column: windowed.time_column,
            key_columns: key_columns.clone(),
            gap: *gap,
        };
        let closing = SessionClosing {
            allowed_lateness: self.time.allowed_lateness_micros,
            emit_on_close: self.time.emit_on_window_close,
            watermarked,
        };
        let make = || -> Result<SessionAggregateOperator> {
            let calls = session_calls()?
                .ok_or_else(|| crate::internal!("session aggregate calls vanished"))?;
            SessionAggregateOperator::try_new(
                input_schema.clone(),
                spec.clone(),
                closing,
                calls,
                group_columns.clone(),
                output_schema.clone(),
            )
        };
        let op = sharded(self.workers, make)?;
        Ok(Some(self.graph.add(op, vec![scan_node])))
    }
}
