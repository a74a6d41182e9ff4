//! What runs on a view's logical plan before DataFusion optimizes it:
//! temporal filters (`ts > now() - INTERVAL ...`, `ts <= now() + INTERVAL
//! ...`, `ts BETWEEN now() - ... AND now() + ...`) are marked before the
//! optimizer could fold `now()` into a constant, and functions that are not
//! deterministic are refused.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    lit, BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{EddyError, Result};
use crate::stream::temporal::TemporalSide;

/// The name of the marker that stands for `col > now() - interval` between
/// [`rewrite_temporal_filters`] and lowering.
pub(super) const TEMPORAL_MARKER: &str = "eddy_temporal_filter";

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
        signature: Signature::any(4, Volatility::Volatile),
    }));
    let rewritten = plan.transform_up(|node| {
        let LogicalPlan::Filter(filter) = node else {
            return Ok(Transformed::no(node));
        };
        let mut changed = false;
        let conjuncts: Vec<Expr> = split_conjunction_owned(filter.predicate.clone())
            .into_iter()
            .flat_map(between_now_as_two_bounds)
            .map(|conjunct| {
                let bound = temporal_bound(&conjunct)
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                Ok(match bound {
                    Some(bound) => {
                        changed = true;
                        Expr::ScalarFunction(ScalarFunction::new_udf(
                            marker.clone(),
                            vec![
                                bound.column,
                                lit(bound.offset_micros),
                                lit(bound.inclusive),
                                lit(bound.side == TemporalSide::Upper),
                            ],
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

/// `ts BETWEEN a AND b` where a bound reads `now()`: `ts >= a` and
/// `ts <= b`, each then a temporal bound of its own.
fn between_now_as_two_bounds(conjunct: Expr) -> Vec<Expr> {
    let reads_now = |e: &Expr| {
        e.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if f.func.name() == "now")))
            .unwrap_or(false)
    };
    match conjunct {
        Expr::Between(between)
            if !between.negated && (reads_now(&between.low) || reads_now(&between.high)) =>
        {
            vec![
                between.expr.as_ref().clone().gt_eq(*between.low),
                between.expr.as_ref().clone().lt_eq(*between.high),
            ]
        }
        other => vec![other],
    }
}

/// One bound of a temporal filter: `column > now() + offset` (lower) or
/// `column < now() + offset` (upper), `>=`/`<=` when inclusive.
pub(super) struct TemporalBoundExpr {
    pub column: Expr,
    pub side: TemporalSide,
    pub offset_micros: i64,
    pub inclusive: bool,
}

/// A temporal bound of `expr`, if it is one: a column compared with
/// `now()`, `now() - INTERVAL ...` or `now() + INTERVAL ...`, either way
/// round; an error for an interval of months or years (no fixed length).
pub(super) fn temporal_bound(expr: &Expr) -> Result<Option<TemporalBoundExpr>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return Ok(None);
    };
    let (greater, inclusive) = match op {
        Operator::Gt => (true, false),
        Operator::GtEq => (true, true),
        Operator::Lt => (false, false),
        Operator::LtEq => (false, true),
        _ => return Ok(None),
    };
    let is_now = |e: &Expr| matches!(e, Expr::ScalarFunction(f) if f.func.name() == "now");
    // `column op bound`, or `bound op column` (the comparison mirrored).
    let (column, bound, column_greater) = match (left.as_ref(), right.as_ref()) {
        (column, bound) if reads_now(bound, &is_now) => (column, bound, greater),
        (bound, column) if reads_now(bound, &is_now) => (column, bound, !greater),
        _ => return Ok(None),
    };
    // `now() [± interval]` and `column [± interval]` (Materialize writes
    // `mz_now() <= event_ts + INTERVAL '5min'`): the interval moves to
    // now()'s side.
    let Some((now, now_offset)) = offset_of(bound)? else {
        return Ok(None);
    };
    let Some((column, column_offset)) = offset_of(column)? else {
        return Ok(None);
    };
    if !is_now(now) || !matches!(column, Expr::Column(_)) {
        return Ok(None);
    }
    let offset_micros = now_offset - column_offset;
    Ok(Some(TemporalBoundExpr {
        column: column.clone(),
        side: if column_greater {
            TemporalSide::Lower
        } else {
            TemporalSide::Upper
        },
        offset_micros,
        inclusive,
    }))
}

/// Whether `expr` is `now()` or `now() ± something`.
fn reads_now(expr: &Expr, is_now: &impl Fn(&Expr) -> bool) -> bool {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Minus | Operator::Plus,
            ..
        }) => is_now(left),
        e => is_now(e),
    }
}

/// `e`, `e + INTERVAL ...` or `e - INTERVAL ...` as `e` and the signed
/// interval in µs; `None` for anything else.
fn offset_of(expr: &Expr) -> Result<Option<(&Expr, i64)>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: op @ (Operator::Minus | Operator::Plus),
            right,
        }) => match right.as_ref() {
            Expr::Literal(
                value @ (ScalarValue::IntervalMonthDayNano(_)
                | ScalarValue::IntervalDayTime(_)
                | ScalarValue::IntervalYearMonth(_)),
                _,
            ) => {
                let micros = crate::common::time::scalar_interval_micros(value)?;
                Ok(Some((
                    left.as_ref(),
                    if *op == Operator::Minus {
                        -micros
                    } else {
                        micros
                    },
                )))
            }
            _ => Ok(None),
        },
        e => Ok(Some((e, 0))),
    }
}

/// The column, offset, inclusiveness and side of a temporal filter's
/// marker.
pub(super) fn temporal_marker_args(expr: &Expr) -> Option<(&Expr, i64, bool, TemporalSide)> {
    let Expr::ScalarFunction(f) = expr else {
        return None;
    };
    if f.func.name() != TEMPORAL_MARKER {
        return None;
    }
    match f.args.as_slice() {
        [column, Expr::Literal(ScalarValue::Int64(Some(micros)), _), Expr::Literal(ScalarValue::Boolean(Some(inclusive)), _), Expr::Literal(ScalarValue::Boolean(Some(upper)), _)] =>
        {
            let side = if *upper {
                TemporalSide::Upper
            } else {
                TemporalSide::Lower
            };
            Some((column, *micros, *inclusive, side))
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
