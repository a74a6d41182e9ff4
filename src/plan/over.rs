//! Lowering `Window` (functions `OVER (PARTITION BY ... ORDER BY ...)`) →
//! a per-partition `TopN` where a filter bounds a ranking function, else
//! `Over`.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator, Window};
use datafusion::physical_planner::create_window_expr;

use super::exprs::{arrow_schema, not_incremental, physical_exprs, sort_exprs};
use super::properties::{column_origin, is_append_only};
use super::Lowering;
use crate::error::Result;
use crate::stream::graph::NodeIndex;
use crate::stream::over::{Numbering, OverOperator};

/// The `Window` node computing `column` of `plan` with a ranking function,
/// following the column down to where it is made ([`column_origin`]).
pub(super) fn ranking_window<'a>(
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

impl Lowering<'_> {
    /// Finds bounds like `rn <= 10` in `filter` on the number of a ranking
    /// window function below it, for [`Lowering::ranked`]. The filter itself
    /// stays: the bound only tells the window how many rows to keep.
    pub(super) fn note_rank_limits(&mut self, filter: &datafusion::logical_expr::Filter) {
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
    pub(super) fn over(&mut self, plan: &LogicalPlan, window: &Window) -> Result<NodeIndex> {
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
