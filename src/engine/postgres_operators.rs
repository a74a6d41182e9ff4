//! PostgreSQL operators and types DataFusion's SQL planner does not know,
//! planned into eddy's functions as the SQL is turned into expressions:
//!
//! - `interval * number`, `number * interval`, `interval / number`
//!   (DataFusion: "Cannot get result type for temporal operation"), with
//!   PostgreSQL's arithmetic: months and days scale separately, their
//!   fractions carry into days and time (30-day months), time is kept to
//!   the microsecond, a result out of range is 22008.
//! - jsonb's `->`, `->>`, `#>`, `#>>`, `@>`, `<@` and `?` over text
//!   holding JSON (see [`super::jsonb`]); a `#>` path is an array literal
//!   (`'{a,b}'`) or `ARRAY['a', 'b']`.
//! - the `json`/`jsonb` types in casts (`'{"a": 1}'::jsonb`): text tagged
//!   jsonb, so clients see jsonb; `timestamp`/`timestamptz` in casts and
//!   literals: microseconds, as eddy stores them (to the year 294276, not
//!   DataFusion's nanoseconds' 2262).
//!
//! Both planners see the operands' types, so an operator keeps
//! DataFusion's meaning for the types DataFusion has one for (`@>` of two
//! arrays, `*` of two numbers).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, IntervalMonthDayNanoArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Float64Type, Int64Type, IntervalMonthDayNano, IntervalUnit,
};
use datafusion::common::{DFSchema, Result as DFResult, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr, TypePlanner};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use datafusion::sql::sqlparser::ast::{self, BinaryOperator, TimezoneInfo};

use super::jsonb::JsonbFunction;
use crate::common::types::TIMESTAMP_UNIT;
use crate::error::EddyError;

/// Plans PostgreSQL's interval and jsonb operators.
#[derive(Debug)]
pub struct PostgresOperators;

/// Plans PostgreSQL's `json` and `jsonb` types.
#[derive(Debug)]
pub struct PostgresTypes;

/// Registers the functions the operators are planned into (also callable
/// by name).
pub fn register(state: &mut SessionState) -> DFResult<()> {
    super::jsonb::register(state)?;
    for divide in [false, true] {
        state.register_udf(interval_udf(divide))?;
    }
    // Materialize's name for the time a temporal filter compares with.
    if let Some(now) = state.scalar_functions().get("now").cloned() {
        state.register_udf(Arc::new(now.as_ref().clone().with_aliases(["mz_now"])))?;
    }
    Ok(())
}

fn call(udf: Arc<ScalarUDF>, args: Vec<Expr>) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(udf, args))
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_number(data_type: &DataType) -> bool {
    data_type.is_numeric()
}

fn is_interval(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Interval(_))
}

impl ExprPlanner for PostgresOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DFResult<PlannerResult<RawBinaryExpr>> {
        use BinaryOperator as B;
        let RawBinaryExpr { op, left, right } = expr;
        // jsonb's `||` (merge) and `-` (delete) are not built: refused by
        // name rather than computed as text (`||` would concatenate).
        if matches!(op, B::StringConcat | B::Minus) {
            let is_jsonb = |e: &Expr| {
                e.to_field(schema)
                    .is_ok_and(|(_, f)| crate::common::types::is_json_field(&f))
            };
            if is_jsonb(&left) || is_jsonb(&right) {
                return Err(datafusion::error::DataFusionError::External(Box::new(
                    crate::not_supported!("the jsonb operator {op} is not supported yet"),
                )));
            }
        }
        let handled = matches!(
            op,
            B::Multiply
                | B::Divide
                | B::Arrow
                | B::LongArrow
                | B::HashArrow
                | B::HashLongArrow
                | B::AtArrow
                | B::ArrowAt
                | B::Question
        );
        // An operand whose type is not known yet (a parameter) is left to
        // DataFusion.
        let types = match (handled, left.get_type(schema), right.get_type(schema)) {
            (true, Ok(l), Ok(r)) => Some((l, r)),
            _ => None,
        };
        let Some((left_type, right_type)) = types else {
            return Ok(PlannerResult::Original(RawBinaryExpr { op, left, right }));
        };
        let planned = match op {
            B::Multiply if is_interval(&left_type) && is_number(&right_type) => {
                Some(call(interval_udf(false), vec![left.clone(), right.clone()]))
            }
            B::Multiply if is_number(&left_type) && is_interval(&right_type) => {
                Some(call(interval_udf(false), vec![right.clone(), left.clone()]))
            }
            B::Divide if is_interval(&left_type) && is_number(&right_type) => {
                Some(call(interval_udf(true), vec![left.clone(), right.clone()]))
            }
            B::Arrow | B::LongArrow if is_text(&left_type) => {
                let text = op == B::LongArrow;
                let function = JsonbFunction::Field { text };
                Some(call(function.udf(), vec![left.clone(), right.clone()]))
            }
            B::HashArrow | B::HashLongArrow if is_text(&left_type) => {
                let text = op == B::HashLongArrow;
                let mut args = vec![left.clone()];
                args.extend(path_steps(&right, &right_type)?);
                Some(call(JsonbFunction::Path { text }.udf(), args))
            }
            B::AtArrow | B::ArrowAt if is_text(&left_type) && is_text(&right_type) => {
                let (whole, part) = match op {
                    B::AtArrow => (left.clone(), right.clone()),
                    _ => (right.clone(), left.clone()),
                };
                Some(call(JsonbFunction::Contains.udf(), vec![whole, part]))
            }
            B::Question if is_text(&left_type) && is_text(&right_type) => Some(call(
                JsonbFunction::Exists.udf(),
                vec![left.clone(), right.clone()],
            )),
            _ => None,
        };
        Ok(match planned {
            Some(expr) => PlannerResult::Planned(expr),
            None => PlannerResult::Original(RawBinaryExpr { op, left, right }),
        })
    }
}

/// The steps of a `#>` path: `'{a,b,0}'` (a text array literal, as
/// PostgreSQL reads it) or `ARRAY['a', 'b']`.
fn path_steps(path: &Expr, path_type: &DataType) -> DFResult<Vec<Expr>> {
    match path {
        Expr::Literal(ScalarValue::Utf8(Some(text)), _) => Ok(parse_text_array(text)?
            .into_iter()
            .map(|step| Expr::Literal(ScalarValue::Utf8(Some(step)), None))
            .collect()),
        Expr::ScalarFunction(function) if function.func.name() == "make_array" => {
            Ok(function.args.clone())
        }
        _ => Err(datafusion::error::DataFusionError::External(Box::new(
            crate::not_supported!(
                "a #> or #>> path of type {path_type} is not supported; write it as '{{a,b}}' \
                 or ARRAY['a', 'b']"
            ),
        ))),
    }
}

/// A one-dimensional PostgreSQL array literal of text: `{a,"b c",0}`.
fn parse_text_array(text: &str) -> DFResult<Vec<String>> {
    let malformed = || {
        datafusion::error::DataFusionError::External(Box::new(EddyError::InvalidValue(format!(
            "malformed array literal: \"{text}\""
        ))))
    };
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(malformed)?;
    let mut steps = Vec::new();
    if inner.trim().is_empty() {
        return Ok(steps);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut step = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next().ok_or_else(malformed)? {
                    '"' => break,
                    '\\' => step.push(chars.next().ok_or_else(malformed)?),
                    c => step.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '}' || c == '"' {
                    return Err(malformed());
                }
                step.push(c);
                chars.next();
            }
            step = step.trim_end().to_string();
        }
        steps.push(step);
        match chars.next() {
            None => return Ok(steps),
            Some(',') => continue,
            Some(_) => return Err(malformed()),
        }
    }
}

impl TypePlanner for PostgresTypes {
    fn plan_type_field(&self, sql_type: &ast::DataType) -> DFResult<Option<FieldRef>> {
        // Timestamps in a cast or literal are microseconds, as eddy stores
        // them (DataFusion's nanoseconds end in 2262; PostgreSQL's
        // microseconds reach the year 294276).
        let timestamp = match sql_type {
            ast::DataType::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
                Some(None)
            }
            ast::DataType::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
                Some(Some("+00:00"))
            }
            ast::DataType::Custom(name, _)
                if name.to_string().eq_ignore_ascii_case("timestamptz") =>
            {
                Some(Some("+00:00"))
            }
            _ => None,
        };
        if let Some(zone) = timestamp {
            let data_type = DataType::Timestamp(TIMESTAMP_UNIT, zone.map(Into::into));
            return Ok(Some(Arc::new(Field::new("", data_type, true))));
        }
        let is_json = match sql_type {
            ast::DataType::JSON | ast::DataType::JSONB => true,
            ast::DataType::Custom(name, _) => {
                let name = name.to_string();
                name.eq_ignore_ascii_case("jsonb") || name.eq_ignore_ascii_case("json")
            }
            _ => false,
        };
        // Not nullable: a cast to a field that carries metadata is as
        // nullable as its operand in DataFusion's logical plan, but also
        // nullable if the field is in its physical one (an aggregate over
        // such a cast then fails its schema check).
        Ok(is_json.then(|| Arc::new(super::jsonb::jsonb_field("").with_nullable(false))))
    }
}

fn interval_udf(divide: bool) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(IntervalScale {
        divide,
        signature: Signature::one_of(
            vec![
                TypeSignature::Exact(vec![
                    DataType::Interval(IntervalUnit::MonthDayNano),
                    DataType::Int64,
                ]),
                TypeSignature::Exact(vec![
                    DataType::Interval(IntervalUnit::MonthDayNano),
                    DataType::Float64,
                ]),
            ],
            Volatility::Immutable,
        ),
    }))
}

/// `interval * number` (`interval_mul`) and `interval / number`
/// (`interval_div`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct IntervalScale {
    divide: bool,
    signature: Signature,
}

impl ScalarUDFImpl for IntervalScale {
    fn name(&self) -> &str {
        if self.divide {
            "interval_div"
        } else {
            "interval_mul"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        let factor = match arg_types.get(1) {
            Some(t) if t.is_integer() => DataType::Int64,
            _ => DataType::Float64,
        };
        Ok(vec![DataType::Interval(IntervalUnit::MonthDayNano), factor])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Interval(IntervalUnit::MonthDayNano))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        super::jsonb::on_arrays(&args, |arrays, rows| {
            self.scale_rows(&arrays[0], &arrays[1], rows)
        })
    }
}

impl IntervalScale {
    fn scale_rows(&self, spans: &ArrayRef, factors: &ArrayRef, rows: usize) -> DFResult<ArrayRef> {
        let spans = cast(spans, &DataType::Interval(IntervalUnit::MonthDayNano))?;
        let spans = cast(&spans, &DataType::Interval(IntervalUnit::MonthDayNano))?;
        let spans = spans.as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>();
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            if spans.is_null(row) || factors.is_null(row) {
                out.push(None);
                continue;
            }
            let span = spans.value(row);
            let result = match factors.data_type() {
                DataType::Int64 if !self.divide => {
                    let n = factors.as_primitive::<Int64Type>().value(row);
                    multiply_exactly(span, n)
                }
                DataType::Int64 => {
                    let n = factors.as_primitive::<Int64Type>().value(row);
                    scale(span, n as f64, true)
                }
                _ => {
                    let f = cast(&factors.slice(row, 1), &DataType::Float64)?;
                    let f = f.as_primitive::<Float64Type>().value(0);
                    scale(span, f, self.divide)
                }
            }
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            out.push(Some(result));
        }
        Ok(Arc::new(IntervalMonthDayNanoArray::from(out)))
    }
}

fn interval_out_of_range() -> EddyError {
    EddyError::Planning {
        sqlstate: "22008",
        message: "interval out of range".into(),
    }
}

/// An interval times an integer: each part times it, none may overflow.
fn multiply_exactly(span: IntervalMonthDayNano, n: i64) -> Result<IntervalMonthDayNano, EddyError> {
    let n32 = i32::try_from(n).ok();
    let months = n32.and_then(|n| span.months.checked_mul(n));
    let days = n32.and_then(|n| span.days.checked_mul(n));
    let nanos = span.nanoseconds.checked_mul(n);
    match (months, days, nanos) {
        (Some(months), Some(days), Some(nanos)) => {
            Ok(IntervalMonthDayNano::new(months, days, nanos))
        }
        // A factor beyond i32 still scales a span of time alone.
        _ if span.months == 0 && span.days == 0 => span
            .nanoseconds
            .checked_mul(n)
            .map(|nanos| IntervalMonthDayNano::new(0, 0, nanos))
            .ok_or_else(interval_out_of_range),
        _ => Err(interval_out_of_range()),
    }
}

/// PostgreSQL's `interval_mul` / `interval_div` with a fractional factor:
/// the fraction of the months carries into days (30 a month), that of the
/// days into time; time is rounded to the microsecond.
fn scale(
    span: IntervalMonthDayNano,
    factor: f64,
    divide: bool,
) -> Result<IntervalMonthDayNano, EddyError> {
    if divide && factor == 0.0 {
        return Err(EddyError::DivisionByZero("division by zero".into()));
    }
    let by = |x: f64| if divide { x / factor } else { x * factor };
    // Round to the microsecond, as PostgreSQL's TSROUND does.
    let to_micros = |x: f64| (x * 1e6).round() / 1e6;
    let fits_i32 = |x: f64| x.is_finite() && x >= i32::MIN as f64 && x <= i32::MAX as f64;
    let months_exact = by(span.months as f64);
    let days_exact = by(span.days as f64);
    if !fits_i32(months_exact) || !fits_i32(days_exact) {
        return Err(interval_out_of_range());
    }
    let months = months_exact.trunc() as i32;
    let mut days = days_exact.trunc() as i32;
    let month_remainder_days = to_micros((months_exact - months as f64) * 30.0);
    let mut seconds_remainder = to_micros(
        (days_exact - days as f64 + month_remainder_days - month_remainder_days.trunc()) * 86400.0,
    );
    if seconds_remainder.abs() >= 86400.0 {
        let whole_days = (seconds_remainder / 86400.0).trunc();
        days = days
            .checked_add(whole_days as i32)
            .ok_or_else(interval_out_of_range)?;
        seconds_remainder -= whole_days * 86400.0;
    }
    days = days
        .checked_add(month_remainder_days.trunc() as i32)
        .ok_or_else(interval_out_of_range)?;
    let micros = (by(span.nanoseconds as f64 / 1000.0) + seconds_remainder * 1e6).round();
    if !micros.is_finite() || micros.abs() >= i64::MAX as f64 / 1000.0 {
        return Err(interval_out_of_range());
    }
    Ok(IntervalMonthDayNano::new(
        months,
        days,
        micros as i64 * 1000,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: IntervalMonthDayNano = IntervalMonthDayNano::new(0, 1, 0);
    const HOUR_NANOS: i64 = 3_600_000_000_000;

    #[test]
    fn scales_intervals_as_postgres_does() {
        assert_eq!(
            multiply_exactly(DAY, 365 * 2000).unwrap(),
            IntervalMonthDayNano::new(0, 730_000, 0)
        );
        // '1 mon' * 1.5 = '1 mon 15 days'; '1 day' / 2 = '12:00:00'
        assert_eq!(
            scale(IntervalMonthDayNano::new(1, 0, 0), 1.5, false).unwrap(),
            IntervalMonthDayNano::new(1, 15, 0)
        );
        assert_eq!(
            scale(DAY, 2.0, true).unwrap(),
            IntervalMonthDayNano::new(0, 0, 12 * HOUR_NANOS)
        );
        // '1 day 1 hour' * 2.5 = '2 days 14:30:00'
        assert_eq!(
            scale(IntervalMonthDayNano::new(0, 1, HOUR_NANOS), 2.5, false).unwrap(),
            IntervalMonthDayNano::new(0, 2, 14 * HOUR_NANOS + HOUR_NANOS / 2)
        );
    }

    #[test]
    fn out_of_range_and_division_by_zero_are_errors() {
        assert!(multiply_exactly(IntervalMonthDayNano::new(1, 0, 0), i64::MAX).is_err());
        assert!(scale(DAY, 1e300, false).is_err());
        assert!(matches!(
            scale(DAY, 0.0, true),
            Err(EddyError::DivisionByZero(_))
        ));
    }

    #[test]
    fn reads_text_array_literals() {
        assert_eq!(parse_text_array("{a,b,0}").unwrap(), ["a", "b", "0"]);
        assert_eq!(
            parse_text_array(r#"{ "x, y" , z }"#).unwrap(),
            ["x, y", "z"]
        );
        assert!(parse_text_array("{}").unwrap().is_empty());
        assert!(parse_text_array("a,b").is_err());
    }
}
