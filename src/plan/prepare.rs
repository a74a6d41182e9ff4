//! What runs on a view's logical plan before DataFusion optimizes it:
//! temporal filters (`ts > now() - INTERVAL ...`) are marked before the
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
pub(super) fn temporal_bound(expr: &Expr) -> Result<Option<(Expr, i64, bool)>> {
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
            Expr::Literal(value, _) => crate::common::time::scalar_interval_micros(value)?,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some((column.as_ref().clone(), micros, inclusive)))
}

pub(super) fn temporal_marker_args(expr: &Expr) -> Option<(&Expr, i64, bool)> {
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
