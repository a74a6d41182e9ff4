//! Lowering `Join` → `Join` (inner, outer, semi, anti; lookup joins;
//! state bounded by windows and interval conditions where they allow).

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{JoinType, NullEquality};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Join, LogicalPlan, Operator};
use datafusion::physical_plan::PhysicalExpr;

use super::exprs::{arrow_schema, physical_expr, physical_exprs};
use super::properties::{
    at_most_one_row, is_append_only, is_watermark_column, is_window_end,
    is_windowed_aggregate_output, reads_lookup,
};
use super::Lowering;
use crate::error::{EddyError, Result};
use crate::stream::graph::NodeIndex;
use crate::stream::join::{JoinOperator, JoinSide, SideTime, WindowKey};
use crate::stream::shard::sharded;

/// Refuses a join key that compares values of different kinds (text with a
/// number, ...): DataFusion would cast one side, Postgres refuses them, and a
/// silent cast hides a mistake in the view.
pub(super) fn check_join_key_types(left: &Expr, right: &Expr, join: &Join) -> Result<()> {
    pub(super) fn family(data_type: &DataType) -> &'static str {
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

/// Time bounds of an interval join's sides, from its conditions: each
/// `t <= f` (or `<`, `>=` mirrored, `BETWEEN`) where `t` is one side's
/// watermarked time column and `f` reads only the other side bounds the
/// rows of that other side by `f` (see `stream::join`).
///
/// `settles_after` is per side: `None` when its rows never change, else the
/// lateness after which a windowed aggregate's output row is final; such a
/// side's time column must be its `window_end` (see [`SideTime`]).
pub(super) fn interval_bounds(
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
pub(super) fn move_constant_up(lower: Expr, upper: Expr) -> (Expr, Expr) {
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

impl Lowering<'_> {
    pub(super) fn join(&mut self, join: &Join) -> Result<NodeIndex> {
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
    pub(super) fn join_operator(
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
