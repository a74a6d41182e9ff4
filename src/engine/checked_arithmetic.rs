//! Integer `+`, `-` and `*` that raise 22003 on overflow instead of
//! wrapping (DataFusion's operators wrap: `9223372036854775807 + 1` gave
//! `-9223372036854775808`; PostgreSQL answers `bigint out of range`).
//!
//! An analyzer rule, run after type coercion in every session, replaces
//! each integer `a + b`, `a - b` and `a * b` by a function that computes it
//! with Arrow's checked kernels. The function keeps the operator's output
//! name (`t.a + t.b`), so columns are named as before. Ad hoc queries get
//! the error (constant expressions already at planning, by DataFusion's
//! constant folding); in a materialized view the failing row is skipped and
//! counted as a row error, like a division by zero
//! (`stream::OperatorCounters::evaluate`). `sum` over BIGINT and NUMERIC is
//! checked the same way ([`register`]).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Datum};
use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::{i256, DataType, Decimal128Type, FieldRef, Int64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DataFusionError, Result as DFResult, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, Aggregate, AggregateUDF, AggregateUDFImpl, BinaryExpr, ColumnarValue, Expr,
    ExprSchemable, GroupsAccumulator, LogicalPlan, Operator, Projection, ReversedUDAF,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, SetMonotonicity, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use crate::error::EddyError;

/// The operators checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Checked {
    Add,
    Subtract,
    Multiply,
}

impl Checked {
    fn of(op: Operator) -> Option<Self> {
        match op {
            Operator::Plus => Some(Checked::Add),
            Operator::Minus => Some(Checked::Subtract),
            Operator::Multiply => Some(Checked::Multiply),
            _ => None,
        }
    }

    fn operator(self) -> Operator {
        match self {
            Checked::Add => Operator::Plus,
            Checked::Subtract => Operator::Minus,
            Checked::Multiply => Operator::Multiply,
        }
    }
}

/// `a op b` over two integers of one type, failing on overflow.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedArithmetic {
    op: Checked,
    name: &'static str,
    signature: Signature,
}

impl CheckedArithmetic {
    fn new(op: Checked) -> Self {
        let name = match op {
            Checked::Add => "__eddy_checked_add",
            Checked::Subtract => "__eddy_checked_subtract",
            Checked::Multiply => "__eddy_checked_multiply",
        };
        Self {
            op,
            name,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

/// PostgreSQL's name of an integer type, for its out-of-range message.
fn type_name(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        _ => "bigint",
    }
}

impl ScalarUDFImpl for CheckedArithmetic {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(arg_types[0].clone())
    }

    /// The operator's own name (`t.a + t.b`), so output columns keep it.
    fn schema_name(&self, args: &[Expr]) -> DFResult<String> {
        Ok(format!(
            "{} {} {}",
            args[0].schema_name(),
            self.op.operator(),
            args[1].schema_name()
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let [left, right] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(format!(
                "{} takes two arguments",
                self.name
            )));
        };
        let data_type = left.data_type();
        let both_scalars = matches!(
            (left, right),
            (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_))
        );
        let datum = |value: &ColumnarValue| -> DFResult<Box<dyn Datum>> {
            Ok(match value {
                ColumnarValue::Array(array) => Box::new(array.clone()),
                ColumnarValue::Scalar(scalar) => Box::new(scalar.to_scalar()?),
            })
        };
        let (l, r) = (datum(left)?, datum(right)?);
        let result: Result<ArrayRef, _> = match self.op {
            Checked::Add => numeric::add(l.as_ref(), r.as_ref()),
            Checked::Subtract => numeric::sub(l.as_ref(), r.as_ref()),
            Checked::Multiply => numeric::mul(l.as_ref(), r.as_ref()),
        };
        let result = result.map_err(|e| match e {
            datafusion::arrow::error::ArrowError::ArithmeticOverflow(_) => {
                DataFusionError::External(Box::new(EddyError::OutOfRange(format!(
                    "{} out of range",
                    type_name(&data_type)
                ))))
            }
            other => DataFusionError::ArrowError(Box::new(other), None),
        })?;
        Ok(if both_scalars {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)
        } else {
            ColumnarValue::Array(result)
        })
    }
}

/// The analyzer rule (see the module docs).
#[derive(Debug)]
pub struct CheckIntegerOverflow {
    functions: [Arc<ScalarUDF>; 3],
}

impl Default for CheckIntegerOverflow {
    fn default() -> Self {
        Self {
            functions: [Checked::Add, Checked::Subtract, Checked::Multiply]
                .map(|op| Arc::new(ScalarUDF::new_from_impl(CheckedArithmetic::new(op)))),
        }
    }
}

impl CheckIntegerOverflow {
    fn function(&self, op: Checked) -> Arc<ScalarUDF> {
        self.functions[op as usize].clone()
    }

    /// `expr` with its integer arithmetic checked; `schema` types its
    /// columns. (An aggregate's FILTER too, which renames the aggregate:
    /// see [`keep_aggregate_names`].)
    fn rewrite(&self, expr: Expr, schema: &DFSchema) -> DFResult<Transformed<Expr>> {
        expr.transform_down(|expr| match expr {
            Expr::AggregateFunction(mut aggregate) => {
                let mut changed = false;
                let args = std::mem::take(&mut aggregate.params.args);
                for arg in args {
                    let rewritten = self.rewrite(arg, schema)?;
                    changed |= rewritten.transformed;
                    aggregate.params.args.push(rewritten.data);
                }
                if let Some(filter) = aggregate.params.filter.take() {
                    let rewritten = self.rewrite(*filter, schema)?;
                    changed |= rewritten.transformed;
                    aggregate.params.filter = Some(Box::new(rewritten.data));
                }
                Ok(Transformed::new(
                    Expr::AggregateFunction(aggregate),
                    changed,
                    TreeNodeRecursion::Jump,
                ))
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let checked = Checked::of(op).filter(|_| {
                    let integer = |e: &Expr| {
                        e.get_type(schema)
                            .ok()
                            .filter(|t| t.is_integer() && !matches!(t, DataType::UInt64))
                    };
                    matches!((integer(&left), integer(&right)), (Some(l), Some(r)) if l == r)
                });
                Ok(match checked {
                    Some(checked) => Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(self.function(checked), vec![*left, *right]),
                    )),
                    None => Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })),
                })
            }
            other => Ok(Transformed::no(other)),
        })
    }
}

/// An aggregate whose expressions were rewritten, with the output names
/// it had. A checked FILTER changes an aggregate's name (DataFusion prints
/// the FILTER with `Display`, where a function cannot pass for an
/// operator); the plan above refers to the old name, so a projection puts
/// it back.
fn keep_aggregate_names(aggregate: Aggregate) -> DFResult<LogicalPlan> {
    let names = aggregate.schema.clone();
    let rebuilt = Aggregate::try_new(aggregate.input, aggregate.group_expr, aggregate.aggr_expr)?;
    let same = rebuilt.schema.fields().len() == names.fields().len()
        && rebuilt
            .schema
            .iter()
            .zip(names.iter())
            .all(|((_, new), (_, old))| new.name() == old.name());
    if same {
        return Ok(LogicalPlan::Aggregate(rebuilt));
    }
    let renamed = rebuilt
        .schema
        .iter()
        .zip(names.iter())
        .map(|((qualifier, new), (old_qualifier, old))| {
            Expr::Column(Column::new(qualifier.cloned(), new.name()))
                .alias_qualified(old_qualifier.cloned(), old.name())
        })
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(
        renamed,
        Arc::new(LogicalPlan::Aggregate(rebuilt)),
    )?))
}

impl AnalyzerRule for CheckIntegerOverflow {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DFResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            // Expressions read the node's inputs (a scan's, its table).
            // (A shared schema is only cloned as an `Arc`; a join's inputs
            // are merged into a new one.)
            let schema = match node.inputs().as_slice() {
                [] => node.schema().clone(),
                [input] => input.schema().clone(),
                inputs => {
                    let mut merged = inputs[0].schema().as_ref().clone();
                    for input in &inputs[1..] {
                        merged.merge(input.schema());
                    }
                    Arc::new(merged)
                }
            };
            let rewritten = node.map_expressions(|expr| self.rewrite(expr, &schema))?;
            match rewritten.data {
                LogicalPlan::Aggregate(aggregate) if rewritten.transformed => {
                    keep_aggregate_names(aggregate).map(Transformed::yes)
                }
                plan => Ok(Transformed::new_transformed(plan, rewritten.transformed)),
            }
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "eddy_check_integer_overflow"
    }
}

/// `sum` over BIGINT and over NUMERIC that raises 22003 when the sum
/// leaves BIGINT or its precision (DataFusion's wraps). Everything else
/// (other types, DISTINCT, window frames) is DataFusion's `sum`;
/// materialized views fold sums in `stream::accumulator`, which is exact
/// the same way.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedSum {
    inner: datafusion::functions_aggregate::sum::Sum,
}

/// Whether `args` are those of a plain BIGINT or NUMERIC sum (the
/// checked cases).
fn checked_sum(args: &AccumulatorArgs) -> bool {
    !args.is_distinct
        && matches!(
            args.return_field.data_type(),
            DataType::Int64 | DataType::Decimal128(..)
        )
}

impl AggregateUDFImpl for CheckedSum {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DFResult<Box<dyn Accumulator>> {
        if !checked_sum(&args) {
            return self.inner.accumulator(args);
        }
        Ok(Box::new(ExactSum {
            sum: i256::ZERO,
            seen: false,
            output: args.return_field.data_type().clone(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DFResult<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !checked_sum(&args) && self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DFResult<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DFResult<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.inner.reverse_expr()
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }
    // Not `simplify_expr_op_literal`: DataFusion's rewrites
    // `sum(a + c)` to `sum(a) + c * count(a)` with unchecked arithmetic.
}

/// An exact BIGINT or NUMERIC sum (in 256 bits), read as the sum's type:
/// BIGINT, or NUMERIC of the sum's precision, else 22003.
#[derive(Debug)]
struct ExactSum {
    sum: i256,
    seen: bool,
    output: DataType,
}

impl Accumulator for ExactSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DFResult<()> {
        let mut add = |value: i128| {
            self.sum = self.sum.wrapping_add(i256::from_i128(value));
            self.seen = true;
        };
        match values[0].data_type() {
            DataType::Decimal128(..) => values[0]
                .as_primitive::<Decimal128Type>()
                .iter()
                .flatten()
                .for_each(add),
            _ => values[0]
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .for_each(|v| add(i128::from(v))),
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DFResult<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> DFResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> DFResult<ScalarValue> {
        let sum = self.seen.then_some(self.sum);
        let value = match self.output {
            DataType::Decimal128(precision, scale) => sum
                .map(|sum| crate::common::types::decimal_in_precision(sum, precision))
                .transpose()
                .map(|sum| ScalarValue::Decimal128(sum, precision, scale)),
            _ => sum
                .map(|sum| {
                    sum.to_i128()
                        .and_then(|sum| i64::try_from(sum).ok())
                        .ok_or_else(|| EddyError::OutOfRange("bigint out of range".into()))
                })
                .transpose()
                .map(ScalarValue::Int64),
        };
        value.map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// Replaces `sum` in `state` by [`CheckedSum`].
pub fn register(state: &mut SessionState) -> DFResult<()> {
    let sum = AggregateUDF::new_from_impl(CheckedSum {
        inner: datafusion::functions_aggregate::sum::Sum::new(),
    });
    state.register_udaf(Arc::new(sum))?;
    Ok(())
}
