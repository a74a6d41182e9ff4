//! Lowering a DataFusion `LogicalPlan` into a streaming graph.
//!
//! The plan comes from DataFusion already analyzed (types coerced) and
//! optimized. Each node becomes an incremental operator; expressions become
//! DataFusion `PhysicalExpr`s evaluated over changelog batches. A node that
//! cannot be maintained incrementally is refused here, at CREATE time, with
//! an error that names the construct — never a view that silently differs
//! from the batch answer.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::common::{JoinType, NullEquality};
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Aggregate, Distinct, Expr, ExprSchemable, Join, LogicalPlan, Volatility,
};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::PhysicalExpr;

use crate::catalog::lookup::LookupRelationProvider;
use crate::catalog::window::{WindowedRelationProvider, Windowing};
use crate::catalog::RelationId;
use crate::catalog::RelationProvider;
use crate::error::{EddyError, Result};
use crate::stream::accumulator::{AggregateFolder, AggregateKind};
use crate::stream::aggregate::{AggregateCall, AggregateOperator, WindowedGroups};
use crate::stream::filter::FilterOperator;
use crate::stream::graph::{NodeIndex, StreamGraph};
use crate::stream::join::{JoinOperator, JoinSide, SideTime, WindowKey};
use crate::stream::over::{Numbering, OverOperator};
use crate::stream::project::ProjectOperator;
use crate::stream::session::SessionWindowOperator;
use crate::stream::session_aggregate::{
    SessionAggregateOperator, SessionClosing, SessionGroupColumn, SessionSpec,
};
use crate::stream::shard::sharded;
use crate::stream::source::{ConstantOperator, ScanOperator};
use crate::stream::temporal::TemporalFilterOperator;
use crate::stream::union::UnionOperator;
use crate::stream::window::WindowAssignOperator;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::logical_plan::{FetchType, SkipType};
use datafusion::logical_expr::utils::{conjunction, split_conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    lit, BinaryExpr, ColumnarValue, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::logical_expr::{SortExpr, Window};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_planner::create_window_expr;
use std::collections::HashMap;

/// The name of the marker that stands for `col > now() - interval` between
/// [`rewrite_temporal_filters`] and lowering.
const TEMPORAL_MARKER: &str = "eddy_temporal_filter";

/// Marks a temporal filter in a plan. Volatile, so that DataFusion neither
/// folds nor moves it like a constant; never evaluated (lowering turns it
/// into a [`TemporalFilterOperator`]).
#[derive(Debug, PartialEq, Eq, Hash)]
struct TemporalFilterMarker {
    signature: Signature,
}

impl ScalarUDFImpl for TemporalFilterMarker {
    fn name(&self) -> &str {
        TEMPORAL_MARKER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        datafusion::common::exec_err!(
            "temporal filters (now() in WHERE) run only inside materialized views"
        )
    }
}

/// Replaces each `col > now() - INTERVAL '...'` (also `>=`, `now()` alone,
/// and the mirrored `<` forms) in a WHERE clause by a marker, before
/// DataFusion's optimizer would fold `now()` into a constant.
pub fn rewrite_temporal_filters(plan: LogicalPlan) -> Result<LogicalPlan> {
    let marker = Arc::new(ScalarUDF::new_from_impl(TemporalFilterMarker {
        signature: Signature::any(3, Volatility::Volatile),
    }));
    let rewritten = plan.transform_up(|node| {
        let LogicalPlan::Filter(filter) = node else {
            return Ok(Transformed::no(node));
        };
        let mut changed = false;
        let conjuncts: Vec<Expr> = split_conjunction_owned(filter.predicate.clone())
            .into_iter()
            .map(|conjunct| {
                let bound = temporal_bound(&conjunct)
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                Ok(match bound {
                    Some((column, micros, inclusive)) => {
                        changed = true;
                        Expr::ScalarFunction(ScalarFunction::new_udf(
                            marker.clone(),
                            vec![column, lit(micros), lit(inclusive)],
                        ))
                    }
                    None => conjunct,
                })
            })
            .collect::<datafusion::error::Result<_>>()?;
        if !changed {
            return Ok(Transformed::no(LogicalPlan::Filter(filter)));
        }
        let predicate = conjunction(conjuncts).unwrap_or_else(|| lit(true));
        Ok(Transformed::yes(LogicalPlan::Filter(
            datafusion::logical_expr::Filter::try_new(predicate, filter.input)?,
        )))
    })?;
    Ok(rewritten.data)
}

/// `(column, interval µs, inclusive)` of a temporal bound; an error for a
/// bound of months or years (no fixed length).
fn temporal_bound(expr: &Expr) -> Result<Option<(Expr, i64, bool)>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return Ok(None);
    };
    let (column, bound, inclusive) = match op {
        Operator::Gt => (left, right, false),
        Operator::GtEq => (left, right, true),
        Operator::Lt => (right, left, false),
        Operator::LtEq => (right, left, true),
        _ => return Ok(None),
    };
    if !matches!(column.as_ref(), Expr::Column(_)) {
        return Ok(None);
    }
    let is_now = |e: &Expr| matches!(e, Expr::ScalarFunction(f) if f.func.name() == "now");
    let micros = match bound.as_ref() {
        e if is_now(e) => 0,
        Expr::BinaryExpr(BinaryExpr {
            left: now,
            op: Operator::Minus,
            right: interval,
        }) if is_now(now) => match interval.as_ref() {
            Expr::Literal(value, _) => crate::sql::types::scalar_interval_micros(value)?,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some((column.as_ref().clone(), micros, inclusive)))
}

fn temporal_marker_args(expr: &Expr) -> Option<(&Expr, i64, bool)> {
    let Expr::ScalarFunction(f) = expr else {
        return None;
    };
    if f.func.name() != TEMPORAL_MARKER {
        return None;
    }
    match f.args.as_slice() {
        [column, Expr::Literal(ScalarValue::Int64(Some(micros)), _), Expr::Literal(ScalarValue::Boolean(Some(inclusive)), _)] => {
            Some((column, *micros, *inclusive))
        }
        _ => None,
    }
}

/// Refuses expressions whose value can change between the insertion and the
/// retraction of the same row (`random()`, `now()`, ...): a view over them
/// could never retract what it inserted.
pub fn check_deterministic(plan: &LogicalPlan) -> Result<()> {
    let mut offending: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        for expr in node.expressions() {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility != Volatility::Immutable
                        && f.func.name() != TEMPORAL_MARKER
                    {
                        offending = Some(f.func.name().to_string());
                        return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if offending.is_some() {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        })
    })?;
    match offending {
        Some(name) => Err(EddyError::NotIncremental(format!(
            "function {name}() is not deterministic, so a materialized view over it could not \
             retract the rows it produced; materialized views accept only immutable functions"
        ))),
        None => Ok(()),
    }
}

/// How a view treats event time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeOptions {
    /// Windows stay open this long after the watermark passes their end.
    pub allowed_lateness_micros: i64,
    /// `EMIT ON WINDOW CLOSE`.
    pub emit_on_window_close: bool,
    /// Inputs of a multi-input operator idle for this long do not hold its
    /// watermark back.
    pub idle_timeout_micros: Option<i64>,
    /// `WITH (allow_cross_join = true)`: a join without an equality
    /// condition between two unbounded inputs is accepted.
    pub allow_cross_join: bool,
}

/// A view's graph, and what it does with time.
pub struct Lowered {
    pub graph: StreamGraph,
    /// Each window table function: the relation and its time column.
    pub windows: Vec<(RelationId, String)>,
    /// Whether an aggregate groups by `window_end` (its state is bounded).
    pub windowed_aggregate: bool,
}

/// Lowers an optimized plan into a streaming graph whose root produces the
/// plan's result as a changelog.
/// `relation_is_append_only` says which inputs never retract (interval joins
/// free state only over those); keyed operators are split into `workers`
/// shards folded in parallel (`stream::shard`).
pub fn lower(
    plan: &LogicalPlan,
    time: TimeOptions,
    workers: usize,
    relation_is_append_only: &dyn Fn(&RelationProvider) -> bool,
) -> Result<Lowered> {
    let mut lowering = Lowering {
        relation_is_append_only,
        workers,
        graph: StreamGraph::new(),
        rank_limits: HashMap::new(),
        time,
        windows: vec![],
        windows_watermarked: true,
        windowed_aggregate: false,
    };
    lowering.node(plan)?;
    if time.emit_on_window_close && !lowering.windowed_aggregate {
        return Err(EddyError::NotIncremental(
            "EMIT ON WINDOW CLOSE needs an aggregate grouped by window_end of TUMBLE(...), HOP(...) or SESSION(...)".into(),
        ));
    }
    Ok(Lowered {
        graph: lowering.graph,
        windows: lowering.windows,
        windowed_aggregate: lowering.windowed_aggregate,
    })
}

struct Lowering<'a> {
    relation_is_append_only: &'a dyn Fn(&RelationProvider) -> bool,
    /// Keyed operators are split into this many shards, folded in parallel.
    workers: usize,
    graph: StreamGraph,
    /// Upper bounds a filter put on a ranking window function's number
    /// (`rn <= 10`), by the address of the `Window` node computing it.
    rank_limits: HashMap<usize, usize>,
    time: TimeOptions,
    windows: Vec<(RelationId, String)>,
    /// Whether a watermark can reach every window's time column.
    windows_watermarked: bool,
    windowed_aggregate: bool,
}

impl Lowering<'_> {
    /// An aggregate straight over `SESSION(...)` of an append-only input,
    /// grouped by the session's keys and window (`window_end`, optionally
    /// `window_start`), as one operator that folds rows into sessions
    /// (`stream::session_aggregate`); `None` for any other shape, which
    /// lowers as `SessionWindow` then an aggregate.
    fn session_aggregate(&mut self, aggregate: &Aggregate) -> Result<Option<NodeIndex>> {
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

    /// The scan a window table function reads, with the window noted (its
    /// relation and time column, and whether a watermark reaches it, which
    /// is returned too). `projection`: the columns of the window's output
    /// (the relation's, then the window's) read above it; `None`: all.
    fn window_input(
        &mut self,
        windowed: &WindowedRelationProvider,
        projection: Option<&[usize]>,
    ) -> (NodeIndex, bool) {
        let relation = &windowed.relation;
        // The window operator reads the time column (and a session's keys);
        // above it, the projection's columns of the relation.
        let width = relation.rows().schema().fields().len();
        let columns_read = projection.map(|projection| {
            let mut read: Vec<usize> = projection.iter().copied().filter(|&c| c < width).collect();
            read.push(windowed.time_column);
            if let Windowing::Session { key_columns, .. } = &windowed.windowing {
                read.extend(key_columns);
            }
            read
        });
        let scan = self.graph.add_scan_reading(
            relation.id,
            columns_read,
            Box::new(ScanOperator::new(relation.id, relation.name.clone(), None)),
        );
        let watermarked = relation.may_have_watermark_on(windowed.time_column);
        self.windows_watermarked &= watermarked;
        let time_name = relation.rows().schema().field(windowed.time_column).name();
        self.windows.push((relation.id, time_name.clone()));
        (scan, watermarked)
    }

    fn node(&mut self, plan: &LogicalPlan) -> Result<NodeIndex> {
        match plan {
            LogicalPlan::TableScan(scan)
                if source_as_provider(&scan.source)?.is::<WindowedRelationProvider>() =>
            {
                if scan.fetch.is_some() {
                    return Err(not_incremental("LIMIT"));
                }
                let provider = source_as_provider(&scan.source)?;
                let windowed = provider
                    .downcast_ref::<WindowedRelationProvider>()
                    .ok_or_else(|| crate::internal!("window provider vanished"))?;
                let relation = &windowed.relation;
                let (scan_node, watermarked) =
                    self.window_input(windowed, scan.projection.as_deref());
                let time_name = relation
                    .rows()
                    .schema()
                    .field(windowed.time_column)
                    .name()
                    .clone();
                let schema = TableProvider::schema(windowed);
                let assign: Box<dyn crate::stream::Operator> = match &windowed.windowing {
                    Windowing::Fixed(spec) => Box::new(WindowAssignOperator::new(
                        windowed.time_column,
                        time_name.clone(),
                        *spec,
                        schema.clone(),
                        self.time.allowed_lateness_micros,
                    )),
                    Windowing::Session { gap, key_columns } => {
                        Box::new(SessionWindowOperator::try_new(
                            relation.rows().schema().clone(),
                            windowed.time_column,
                            key_columns.clone(),
                            *gap,
                            self.time.allowed_lateness_micros,
                            schema.clone(),
                            watermarked,
                        )?)
                    }
                };
                let assigned = self.graph.add(assign, vec![scan_node]);
                match &scan.projection {
                    None => Ok(assigned),
                    Some(columns) => {
                        let exprs: Vec<Arc<dyn PhysicalExpr>> = columns
                            .iter()
                            .map(|&i| {
                                Arc::new(Column::new(schema.field(i).name(), i))
                                    as Arc<dyn PhysicalExpr>
                            })
                            .collect();
                        let projected = Arc::new(schema.project(columns)?);
                        Ok(self.graph.add(
                            Box::new(ProjectOperator::new(exprs, projected)),
                            vec![assigned],
                        ))
                    }
                }
            }
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(not_incremental("LIMIT"));
                }
                if !scan.filters.is_empty() {
                    return Err(crate::internal!(
                        "filters were pushed into a scan that does not take them"
                    ));
                }
                let provider = source_as_provider(&scan.source)?;
                let relation = match provider.downcast_ref::<LookupRelationProvider>() {
                    Some(lookup) => lookup.relation.as_ref(),
                    None => provider.downcast_ref::<RelationProvider>().ok_or_else(|| {
                        crate::not_supported!(
                            "materialized views over {} are not supported",
                            scan.table_name
                        )
                    })?,
                };
                let op =
                    ScanOperator::new(relation.id, relation.name.clone(), scan.projection.clone());
                Ok(self
                    .graph
                    .add_scan_reading(relation.id, scan.projection.clone(), Box::new(op)))
            }
            LogicalPlan::Projection(projection) => {
                let input = self.node(&projection.input)?;
                let exprs = physical_exprs(&projection.expr, projection.input.schema())?;
                let op = ProjectOperator::new(exprs, arrow_schema(&projection.schema));
                Ok(self.graph.add(Box::new(op), vec![input]))
            }
            LogicalPlan::Filter(filter) => {
                self.note_rank_limits(filter);
                let mut node = self.node(&filter.input)?;
                let (temporal, plain): (Vec<&Expr>, Vec<&Expr>) =
                    split_conjunction(&filter.predicate)
                        .into_iter()
                        .partition(|e| temporal_marker_args(e).is_some());
                if let Some(predicate) = conjunction(plain.into_iter().cloned()) {
                    let predicate = physical_expr(&predicate, filter.input.schema())?;
                    node = self
                        .graph
                        .add(Box::new(FilterOperator::new(predicate)), vec![node]);
                }
                for marker in temporal {
                    let Some((column, micros, inclusive)) = temporal_marker_args(marker) else {
                        continue;
                    };
                    let time = physical_expr(column, filter.input.schema())?;
                    let schema = arrow_schema(filter.input.schema());
                    let op = TemporalFilterOperator::try_new(time, micros, inclusive, schema)?;
                    node = self.graph.add(Box::new(op), vec![node]);
                }
                Ok(node)
            }
            LogicalPlan::Aggregate(aggregate) => {
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
                    let op = AggregateOperator::try_new(
                        group_exprs.clone(),
                        calls,
                        output_schema.clone(),
                    )?;
                    Ok(match window {
                        Some(window) => op.with_window(window),
                        None => op,
                    })
                };
                let op = sharded(self.workers, make)?;
                Ok(self.graph.add(op, vec![input]))
            }
            LogicalPlan::Union(union) => {
                let inputs = union
                    .inputs
                    .iter()
                    .map(|i| self.node(i))
                    .collect::<Result<Vec<_>>>()?;
                let op = UnionOperator::new(
                    arrow_schema(&union.schema),
                    inputs.len(),
                    self.time.idle_timeout_micros,
                );
                Ok(self.graph.add(Box::new(op), inputs))
            }
            LogicalPlan::SubqueryAlias(alias) => self.node(&alias.input),
            LogicalPlan::Values(values) => {
                let schema = arrow_schema(&values.schema);
                let empty = DFSchema::empty();
                let one_row = RecordBatch::try_new_with_options(
                    Arc::new(Schema::empty()),
                    vec![],
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
                )?;
                let mut columns = Vec::with_capacity(schema.fields().len());
                for (column, field) in schema.fields().iter().enumerate() {
                    let mut cells = Vec::with_capacity(values.values.len());
                    for row in &values.values {
                        let cell = physical_expr(&row[column], &empty)?
                            .evaluate(&one_row)?
                            .into_array(1)?;
                        cells.push(datafusion::arrow::compute::cast(&cell, field.data_type())?);
                    }
                    let refs: Vec<&dyn datafusion::arrow::array::Array> =
                        cells.iter().map(|c| c.as_ref()).collect();
                    columns.push(concat(&refs)?);
                }
                let rows = RecordBatch::try_new(schema, columns)?;
                Ok(self
                    .graph
                    .add(Box::new(ConstantOperator::new(rows)), vec![]))
            }
            LogicalPlan::EmptyRelation(empty) => {
                let row_count = usize::from(empty.produce_one_row);
                let rows = RecordBatch::try_new_with_options(
                    arrow_schema(&empty.schema),
                    vec![],
                    &datafusion::arrow::array::RecordBatchOptions::new()
                        .with_row_count(Some(row_count)),
                )?;
                Ok(self
                    .graph
                    .add(Box::new(ConstantOperator::new(rows)), vec![]))
            }
            LogicalPlan::Distinct(Distinct::On(_)) => Err(not_incremental("DISTINCT ON")),
            LogicalPlan::Join(join) => self.join(join),
            LogicalPlan::Sort(sort) => match sort.fetch {
                Some(limit) => self.top_n(&sort.input, Some(&sort.expr), 0, limit),
                // A view is a set of rows: an ORDER BY alone changes nothing
                // (order the SELECT that reads the view).
                None => self.node(&sort.input),
            },
            LogicalPlan::Limit(limit) => {
                let offset = match limit.get_skip_type()? {
                    SkipType::Literal(offset) => offset,
                    SkipType::UnsupportedExpr => {
                        return Err(not_incremental("OFFSET of an expression"))
                    }
                };
                let fetch = match limit.get_fetch_type()? {
                    FetchType::Literal(Some(fetch)) => fetch,
                    FetchType::Literal(None) => {
                        return Err(not_incremental("OFFSET without LIMIT"))
                    }
                    FetchType::UnsupportedExpr => {
                        return Err(not_incremental("LIMIT of an expression"))
                    }
                };
                match limit.input.as_ref() {
                    LogicalPlan::Sort(sort) => {
                        self.top_n(&sort.input, Some(&sort.expr), offset, fetch)
                    }
                    input => self.top_n(input, None, offset, fetch),
                }
            }
            LogicalPlan::Window(window) => self.window(plan, window),
            LogicalPlan::Unnest(_) => Err(not_incremental("UNNEST")),
            LogicalPlan::RecursiveQuery(_) => Err(not_incremental("WITH RECURSIVE")),
            other => Err(EddyError::NotIncremental(format!(
                "{} cannot be maintained incrementally yet",
                other.display()
            ))),
        }
    }
}

impl Lowering<'_> {
    fn join(&mut self, join: &Join) -> Result<NodeIndex> {
        if join.on.is_empty()
            && !self.time.allow_cross_join
            && !at_most_one_row(&join.left)
            && !at_most_one_row(&join.right)
        {
            return Err(EddyError::NotIncremental(
                "a join without an equality condition between two unbounded inputs (a cross \
                 join) keeps every row of both sides and joins each change with all of them; \
                 add an equality condition, or create the view WITH (allow_cross_join = true)"
                    .into(),
            ));
        }
        for (l, r) in &join.on {
            check_join_key_types(l, r, join)?;
        }
        let left = self.node(&join.left)?;
        let right = self.node(&join.right)?;
        let filter = join
            .filter
            .as_ref()
            .map(|f| physical_expr(f, &join.left.schema().join(join.right.schema())?))
            .transpose()?;
        // `t FOR SYSTEM_TIME AS OF PROCTIME()`: the side that is only looked up.
        let lookup = match (reads_lookup(&join.left), reads_lookup(&join.right)) {
            (false, false) => None,
            (false, true) if matches!(join.join_type, JoinType::Inner | JoinType::Left) => Some(1),
            (true, false) if matches!(join.join_type, JoinType::Inner | JoinType::Right) => Some(0),
            _ => {
                return Err(EddyError::NotIncremental(format!(
                    "a {} join with a table FOR SYSTEM_TIME AS OF PROCTIME() is not supported: \
                     the looked-up table joins as the inner side of an inner or outer join",
                    join.join_type
                )))
            }
        };
        let mut description = match lookup {
            Some(_) => format!("{} Lookup Join:", join.join_type),
            None => format!("{} Join:", join.join_type),
        };
        if !join.on.is_empty() {
            let on: Vec<String> = join.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
            description.push_str(&format!(" on {}", on.join(", ")));
        }
        if let Some(filter) = &join.filter {
            description.push_str(&format!(" filter {filter}"));
        }
        let make = || -> Result<JoinOperator> {
            self.join_operator(join, &description, filter.clone(), lookup)
        };
        let op = sharded(self.workers, make)?;
        Ok(self.graph.add(op, vec![left, right]))
    }

    /// One join operator for `join` (see [`Lowering::join`]).
    fn join_operator(
        &self,
        join: &Join,
        description: &str,
        filter: Option<Arc<dyn PhysicalExpr>>,
        lookup: Option<usize>,
    ) -> Result<JoinOperator> {
        let (left_keys, right_keys): (Vec<Expr>, Vec<Expr>) = join.on.iter().cloned().unzip();
        let side = |keys: &[Expr], plan: &LogicalPlan| -> Result<JoinSide> {
            Ok(JoinSide {
                keys: physical_exprs(keys, plan.schema())?,
                schema: arrow_schema(plan.schema()),
            })
        };
        let mut op = JoinOperator::try_new(
            join.join_type,
            side(&left_keys, &join.left)?,
            side(&right_keys, &join.right)?,
            filter,
            join.null_equality == NullEquality::NullEqualsNull,
            arrow_schema(&join.schema),
            self.time.idle_timeout_micros,
            description.to_string(),
        )?;
        if join.null_aware {
            op = op.null_aware()?;
        }
        if let Some(side) = lookup {
            op = op.with_lookup_side(side);
        } else if let Some(filter) = &join.filter {
            // Each side either never retracts, or is a windowed aggregate's
            // output, whose rows settle once their window closes.
            let lateness = self.time.allowed_lateness_micros;
            let settling = |side: &LogicalPlan| -> Option<Option<i64>> {
                if is_append_only(side, self.relation_is_append_only) {
                    Some(None)
                } else if is_windowed_aggregate_output(side) {
                    Some(Some(lateness))
                } else {
                    None
                }
            };
            if let (Some(left), Some(right)) = (settling(&join.left), settling(&join.right)) {
                let (left_time, right_time) = interval_bounds(join, filter, [left, right])?;
                op = op.with_time_bounds(left_time, right_time);
            }
        }
        let window_key = join
            .on
            .iter()
            .position(|(l, r)| is_window_end(&join.left, l) && is_window_end(&join.right, r));
        if let Some(key_position) = window_key {
            op = op.with_window_key(WindowKey {
                key_position,
                allowed_lateness_micros: self.time.allowed_lateness_micros,
            });
        }
        Ok(op)
    }
}

/// Refuses a join key that compares values of different kinds (text with a
/// number, ...): DataFusion would cast one side, Postgres refuses them, and a
/// silent cast hides a mistake in the view.
fn check_join_key_types(left: &Expr, right: &Expr, join: &Join) -> Result<()> {
    fn family(data_type: &DataType) -> &'static str {
        match data_type {
            t if t.is_numeric() => "number",
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
            DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
            | DataType::Time32(_)
            | DataType::Time64(_) => "time",
            DataType::Boolean => "boolean",
            DataType::Null => "null",
            _ => "other",
        }
    }
    // The keys as written, before DataFusion's coercion cast them.
    let uncast = |expr: &Expr| match expr {
        Expr::Cast(cast) => cast.expr.as_ref().clone(),
        Expr::TryCast(cast) => cast.expr.as_ref().clone(),
        other => other.clone(),
    };
    let (left, right) = (uncast(left), uncast(right));
    let left_type = left.get_type(join.left.schema())?;
    let right_type = right.get_type(join.right.schema())?;
    let (lf, rf) = (family(&left_type), family(&right_type));
    if lf != rf && lf != "null" && rf != "null" {
        return Err(EddyError::TypeMismatch(format!(
            "join condition {left} = {right} compares {lf} ({left_type}) with {rf} ({right_type}); \
             cast one side explicitly"
        )));
    }
    Ok(())
}

impl Lowering<'_> {
    /// `ORDER BY ... LIMIT` (or a bare LIMIT: ordered by the whole row, any
    /// `n` rows being a right answer).
    fn top_n(
        &mut self,
        input: &LogicalPlan,
        order: Option<&[SortExpr]>,
        offset: usize,
        limit: usize,
    ) -> Result<NodeIndex> {
        let node = self.node(input)?;
        let schema = input.schema();
        let order_by = match order {
            Some(order) => sort_exprs(order, schema)?,
            None => (0..schema.fields().len())
                .map(|i| PhysicalSortExpr {
                    expr: Arc::new(Column::new(schema.field(i).name(), i)) as _,
                    options: SortOptions::default(),
                })
                .collect(),
        };
        let mut description = format!("TopN: limit {limit}");
        if offset > 0 {
            description.push_str(&format!(" offset {offset}"));
        }
        if let Some(order) = order {
            let order: Vec<String> = order.iter().map(|e| e.to_string()).collect();
            description.push_str(&format!(" order by {}", order.join(", ")));
        }
        let op = OverOperator::top_n(
            vec![],
            order_by,
            Numbering::Limit,
            offset,
            limit,
            arrow_schema(schema),
            arrow_schema(schema),
            description,
        )?
        .with_input_append_only(is_append_only(input, self.relation_is_append_only));
        Ok(self.graph.add(Box::new(op), vec![node]))
    }

    /// Finds bounds like `rn <= 10` in `filter` on the number of a ranking
    /// window function below it, for [`Lowering::ranked`]. The filter itself
    /// stays: the bound only tells the window how many rows to keep.
    fn note_rank_limits(&mut self, filter: &datafusion::logical_expr::Filter) {
        for conjunct in split_conjunction(&filter.predicate) {
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
                continue;
            };
            // The number, perhaps cast to the bound's type (a cast keeps order).
            let number = |e: &Expr| match e {
                Expr::Column(c) => Some(c.clone()),
                Expr::Cast(cast) => match cast.expr.as_ref() {
                    Expr::Column(c) => Some(c.clone()),
                    _ => None,
                },
                _ => None,
            };
            let (column, op, bound) = match (left.as_ref(), right.as_ref()) {
                (e, Expr::Literal(v, _)) if number(e).is_some() => (number(e), *op, v),
                (Expr::Literal(v, _), e) if number(e).is_some() => match op.swap() {
                    Some(op) => (number(e), op, v),
                    None => continue,
                },
                _ => continue,
            };
            let Some(column) = column else {
                continue;
            };
            let Some(bound) = bound.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                ScalarValue::Int64(Some(b)) => Some(b),
                _ => None,
            }) else {
                continue;
            };
            let limit = match op {
                Operator::LtEq | Operator::Eq => bound,
                Operator::Lt => bound - 1,
                _ => continue,
            };
            let limit = usize::try_from(limit.max(0)).unwrap_or(0);
            if let Some(window) = ranking_window(&filter.input, &column) {
                let slot = self
                    .rank_limits
                    .entry(std::ptr::from_ref(window) as usize)
                    .or_insert(limit);
                *slot = (*slot).min(limit);
            }
        }
    }

    /// Window functions (`OVER (PARTITION BY ... ORDER BY ...)`). A ranking
    /// function whose number a filter bounds is a per-partition top-N;
    /// anything else is recomputed per changed partition.
    fn window(&mut self, plan: &LogicalPlan, window: &Window) -> Result<NodeIndex> {
        let functions: Vec<WindowFunction> = window
            .window_expr
            .iter()
            .map(|e| match e.clone().unalias() {
                Expr::WindowFunction(function) => Ok(*function),
                other => Err(crate::internal!("window expression {other}")),
            })
            .collect::<Result<_>>()?;
        let Some(first) = functions.first() else {
            return Err(crate::internal!("a window node without functions"));
        };
        let (partition_by, order_by) = (&first.params.partition_by, &first.params.order_by);
        if functions
            .iter()
            .any(|f| &f.params.partition_by != partition_by || &f.params.order_by != order_by)
        {
            return Err(not_incremental(
                "window functions with different PARTITION BY or ORDER BY in one SELECT",
            ));
        }
        let input = self.node(&window.input)?;
        let schema = window.input.schema();
        let partition_exprs = physical_exprs(partition_by, schema)?;
        let order_exprs = sort_exprs(order_by, schema)?;
        let top_n_limit = self.rank_limits.get(&(std::ptr::from_ref(plan) as usize));
        let numbering = Numbering::from_function(first.fun.name());
        let op = match (top_n_limit, numbering, functions.len()) {
            (Some(&limit), Some(numbering), 1) => OverOperator::top_n(
                partition_exprs,
                order_exprs,
                numbering,
                0,
                limit,
                arrow_schema(schema),
                arrow_schema(&window.schema),
                format!("TopN: {} <= {limit}", window.window_expr[0].schema_name()),
            )?
            .with_input_append_only(is_append_only(&window.input, self.relation_is_append_only)),
            _ => {
                let physical = window
                    .window_expr
                    .iter()
                    .map(|e| {
                        create_window_expr(
                            e,
                            schema,
                            &ExecutionProps::new(),
                            &PhysicalPlanningContext::default(),
                        )
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let names: Vec<String> = window
                    .window_expr
                    .iter()
                    .map(|e| e.schema_name().to_string())
                    .collect();
                OverOperator::window(
                    partition_exprs,
                    order_exprs,
                    physical,
                    arrow_schema(schema),
                    arrow_schema(&window.schema),
                    format!("Window: {}", names.join(", ")),
                )?
            }
        };
        Ok(self.graph.add(Box::new(op), vec![input]))
    }
}

/// The `Window` node computing `column` of `plan` with a ranking function,
/// following the column down to where it is made ([`column_origin`]).
fn ranking_window<'a>(
    plan: &'a LogicalPlan,
    column: &datafusion::common::Column,
) -> Option<&'a LogicalPlan> {
    let (origin, index) = column_origin(plan, plan.schema().index_of_column(column).ok()?);
    let LogicalPlan::Window(window) = origin else {
        return None;
    };
    let inputs = window.input.schema().fields().len();
    let expr = window.window_expr.get(index.checked_sub(inputs)?)?;
    match expr.clone().unalias() {
        Expr::WindowFunction(f) if Numbering::from_function(f.fun.name()).is_some() => Some(origin),
        _ => None,
    }
}

/// Where output column `index` of `plan` is made: followed down through the
/// nodes that pass a column on unchanged (a projection or GROUP BY of the
/// plain column, filters, aliases, an ORDER BY without LIMIT). Returns that
/// node and the column's index in its output.
fn column_origin(plan: &LogicalPlan, index: usize) -> (&LogicalPlan, usize) {
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
fn expr_origin<'a>(plan: &'a LogicalPlan, expr: &Expr) -> Option<(&'a LogicalPlan, usize)> {
    let Expr::Column(column) = expr else {
        return None;
    };
    let index = plan.schema().index_of_column(column).ok()?;
    Some(column_origin(plan, index))
}

fn sort_exprs(order: &[SortExpr], schema: &DFSchema) -> Result<Vec<PhysicalSortExpr>> {
    order
        .iter()
        .map(|e| {
            Ok(PhysicalSortExpr {
                expr: physical_expr(&e.expr, schema)?,
                options: SortOptions {
                    descending: !e.asc,
                    nulls_first: e.nulls_first,
                },
            })
        })
        .collect()
}

/// Time bounds of an interval join's sides, from its conditions: each
/// `t <= f` (or `<`, `>=` mirrored, `BETWEEN`) where `t` is one side's
/// watermarked time column and `f` reads only the other side bounds the
/// rows of that other side by `f` (see `stream::join`).
///
/// `settles_after` is per side: `None` when its rows never change, else the
/// lateness after which a windowed aggregate's output row is final; such a
/// side's time column must be its `window_end` (see [`SideTime`]).
fn interval_bounds(
    join: &Join,
    filter: &Expr,
    settles_after: [Option<i64>; 2],
) -> Result<(SideTime, SideTime)> {
    let mut bounds: Vec<(Expr, Expr)> = Vec::new(); // (lower, upper): lower <= upper
    for conjunct in split_conjunction(filter) {
        match conjunct {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::Lt | Operator::LtEq => bounds.push((*left.clone(), *right.clone())),
                Operator::Gt | Operator::GtEq => bounds.push((*right.clone(), *left.clone())),
                _ => {}
            },
            Expr::Between(between) if !between.negated => {
                bounds.push((*between.low.clone(), *between.expr.clone()));
                bounds.push((*between.expr.clone(), *between.high.clone()));
            }
            _ => {}
        }
    }
    let sides = [join.left.as_ref(), join.right.as_ref()];
    let side_of = |expr: &Expr| -> Option<usize> {
        let columns = expr.column_refs();
        if columns.is_empty() {
            return None;
        }
        (0..2).find(|&s| columns.iter().all(|c| sides[s].schema().has_column(c)))
    };
    let mut times: [SideTime; 2] = [SideTime::default(), SideTime::default()];
    for (lower, upper) in bounds.into_iter().map(|(l, u)| move_constant_up(l, u)) {
        // `lower` is a side's watermarked time column, `upper` an expression
        // over the other side: that side's rows expire at `upper`.
        let (Some(time_side), Some(bound_side)) = (side_of(&lower), side_of(&upper)) else {
            continue;
        };
        let is_time_column = match settles_after[time_side] {
            None => is_watermark_column(sides[time_side], &lower),
            Some(_) => is_window_end(sides[time_side], &lower),
        };
        if time_side == bound_side || !is_time_column {
            continue;
        }
        if times[bound_side].expiry.is_some() {
            continue;
        }
        times[time_side].time = Some(physical_expr(&lower, sides[time_side].schema())?);
        times[bound_side].expiry = Some(physical_expr(&upper, sides[bound_side].schema())?);
    }
    for (time, settles_after) in times.iter_mut().zip(settles_after) {
        time.settles_after = settles_after;
        // A settling row may go only once final, which its own time column
        // tells: without one it stays.
        if settles_after.is_some() && time.time.is_none() {
            time.expiry = None;
        }
    }
    let [left, right] = times;
    Ok((left, right))
}

/// `t - c <= f` as `t <= f + c` (and `t + c <= f` as `t <= f - c`) for a
/// constant `c`, so that a bare time column is on the lower side.
fn move_constant_up(lower: Expr, upper: Expr) -> (Expr, Expr) {
    if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &lower {
        if matches!(right.as_ref(), Expr::Literal(..)) {
            let moved = match op {
                Operator::Minus => Some(Operator::Plus),
                Operator::Plus => Some(Operator::Minus),
                _ => None,
            };
            if let Some(moved) = moved {
                let upper =
                    Expr::BinaryExpr(BinaryExpr::new(Box::new(upper), moved, right.clone()));
                return (*left.clone(), upper);
            }
        }
    }
    (lower, upper)
}

/// The position of the group key that is a window's `window_end`, traced
/// under any alias and through an inner windowed aggregate (q5's max of
/// per-window counts).
fn window_end_key(aggregate: &Aggregate) -> Option<usize> {
    aggregate
        .group_expr
        .iter()
        .position(|e| is_window_end(&aggregate.input, e))
}

/// Whether `plan` is a windowed aggregate's output (grouped by a window's
/// end), passed on through projections, filters and aliases: its rows change
/// only while their window is open.
fn is_windowed_aggregate_output(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(aggregate) => window_end_key(aggregate).is_some(),
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            is_windowed_aggregate_output(plan.inputs()[0])
        }
        _ => false,
    }
}

/// Whether `expr` over `plan`'s output is the column a source's watermark is
/// declared on, passed through unchanged.
fn is_watermark_column(plan: &LogicalPlan, expr: &Expr) -> bool {
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

/// Whether `plan` reads a relation `FOR SYSTEM_TIME AS OF PROCTIME()`
/// (through projections, filters and aliases only).
fn reads_lookup(plan: &LogicalPlan) -> bool {
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
fn at_most_one_row(plan: &LogicalPlan) -> bool {
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

/// Whether `expr` over `plan`'s output is a window's `window_end`, passed
/// through unchanged (projections, filters, GROUP BY keys).
fn is_window_end(plan: &LogicalPlan, expr: &Expr) -> bool {
    let Some((LogicalPlan::TableScan(scan), index)) = expr_origin(plan, expr) else {
        return false;
    };
    let windowed = source_as_provider(&scan.source)
        .map(|p| p.is::<WindowedRelationProvider>())
        .unwrap_or(false);
    windowed && scan.projected_schema.field(index).name() == "window_end"
}

fn not_incremental(construct: &str) -> EddyError {
    EddyError::NotIncremental(format!(
        "{construct} is not supported in materialized views yet: eddy cannot maintain it incrementally"
    ))
}

fn aggregate_call(
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

fn physical_expr(expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    create_physical_expr(
        expr,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .map_err(|e| {
        let message = e.to_string();
        if message.contains("ubquer") {
            not_incremental("this subquery")
        } else {
            EddyError::from(e)
        }
    })
}

/// `expr`, over the columns of a windowed scan, over the input relation's
/// own columns instead (through the scan's projection, `unprojected`);
/// `None` when it reads a window column (`window_start` and after).
fn over_input_columns(
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

fn physical_exprs(exprs: &[Expr], schema: &DFSchema) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    exprs.iter().map(|e| physical_expr(e, schema)).collect()
}

fn arrow_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

/// A view's streaming graph and the schema of the rows it maintains.
pub struct PlannedView {
    pub graph: StreamGraph,
    pub schema: SchemaRef,
    /// See [`derive_key`].
    pub key: Option<Vec<usize>>,
    /// See [`is_append_only`].
    pub append_only: bool,
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
