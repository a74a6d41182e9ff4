//! Incremental aggregate state that supports retraction.
//!
//! Each aggregate keeps exactly what it needs to produce its value after any
//! sequence of insertions and retractions:
//! - `count`, `sum`, `avg`: running totals plus the count of non-null inputs
//!   (a sum over no non-null rows is NULL). Integer sums wrap like DataFusion's,
//!   which keeps them exactly invertible.
//! - `min`, `max`, `count/sum/avg(DISTINCT)`: a multiset of the values
//!   (row-encoded, so the map's order is the values' order); retracting the
//!   current minimum exposes the next one. A DISTINCT sum is recomputed from
//!   the distinct values of the group when the group changes.
//! - `bool_and`, `bool_or`: counts of true and false inputs.
//! - `first_value`, `last_value`, `string_agg`, `array_agg` (with or without
//!   `ORDER BY`): a multiset of (order keys, value), row-encoded with the
//!   order's directions, so the map's order is the aggregate's order (by
//!   value when there is no ORDER BY). The argument arrives as a struct of
//!   the order keys then the value.
//!
//! States of the same aggregate merge ([`AccumulatorState::merge`]) as if one
//! had folded the other's inputs: a session window aggregate merges the
//! sessions a row bridges.

use std::collections::BTreeMap;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array,
};
use datafusion::arrow::compute::{cast, SortOptions};
use datafusion::arrow::datatypes::{i256, DataType, Decimal128Type, Float64Type, Int64Type};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::ScalarValue;

use crate::common::types::decimal_in_precision;
use crate::error::{EddyError, Result};

/// Which aggregate function, as eddy maintains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    Count,
    CountDistinct,
    Sum,
    SumDistinct,
    AvgDistinct,
    Avg,
    Min,
    Max,
    BoolAnd,
    BoolOr,
    FirstValue,
    LastValue,
    StringAgg,
    ArrayAgg,
}

impl AggregateKind {
    /// Maps a DataFusion aggregate function name (and DISTINCT) to the kind
    /// eddy can maintain, or names why not.
    pub fn from_function(name: &str, distinct: bool) -> Result<Self> {
        let kind = match (name, distinct) {
            ("count", false) => AggregateKind::Count,
            ("count", true) => AggregateKind::CountDistinct,
            ("sum", false) => AggregateKind::Sum,
            ("sum", true) => AggregateKind::SumDistinct,
            ("avg" | "mean", false) => AggregateKind::Avg,
            ("avg" | "mean", true) => AggregateKind::AvgDistinct,
            ("min", _) => AggregateKind::Min,
            ("max", _) => AggregateKind::Max,
            ("bool_and", _) => AggregateKind::BoolAnd,
            ("bool_or", _) => AggregateKind::BoolOr,
            ("first_value", false) => AggregateKind::FirstValue,
            ("last_value", false) => AggregateKind::LastValue,
            ("string_agg", false) => AggregateKind::StringAgg,
            ("array_agg", false) => AggregateKind::ArrayAgg,
            (other, true) => {
                return Err(EddyError::NotIncremental(format!(
                    "aggregate {other}(DISTINCT ...) is not supported in materialized views yet \
                     (count, sum, avg, min and max with DISTINCT are)"
                )))
            }
            (other, false) => {
                return Err(EddyError::NotIncremental(format!(
                    "aggregate function {other}() cannot be maintained incrementally yet; \
                     supported: count, sum, avg, min, max, count(DISTINCT), bool_and, bool_or, \
                     first_value, last_value, string_agg, array_agg"
                )))
            }
        };
        Ok(kind)
    }

    /// Whether the aggregate folds (order keys, value) structs in order.
    pub fn is_ordered(self) -> bool {
        matches!(
            self,
            AggregateKind::FirstValue
                | AggregateKind::LastValue
                | AggregateKind::StringAgg
                | AggregateKind::ArrayAgg
        )
    }
}

/// How sums are accumulated, chosen from the argument type.
#[derive(Debug, Clone, Copy)]
enum NumericDomain {
    Int,
    Float,
    Decimal { scale: i8 },
}

/// One aggregate of an aggregate operator, ready to fold inputs.
#[derive(Debug)]
pub struct AggregateFolder {
    kind: AggregateKind,
    domain: Option<NumericDomain>,
    /// Row encoding of single values, for min/max/count(DISTINCT).
    value_codec: Option<RowConverter>,
    output_type: DataType,
    /// string_agg's delimiter.
    delimiter: String,
}

/// One aggregate's input for one batch, converted to the accumulation domain.
pub enum PreparedInput {
    /// count: only whether the value is non-null matters.
    Validity(ArrayRef),
    Int(Int64Array),
    Float(Float64Array),
    Decimal(Decimal128Array),
    /// min/max/distinct: row-encoded values, with the original for nulls.
    Encoded(Rows, ArrayRef),
    Bool(BooleanArray),
}

/// The running state of one aggregate in one group.
#[derive(Debug, Clone)]
pub enum AccumulatorState {
    Count(i64),
    /// Wider than any input so that a sum is exact until it is read:
    /// reading one outside BIGINT is an error (22003), never a wrapped value.
    IntSum {
        sum: i128,
        count: i64,
    },
    FloatSum {
        sum: f64,
        count: i64,
    },
    /// Exact in 256 bits (38-digit values summed do not fit 128); read as
    /// the output's precision or 22003.
    DecimalSum {
        sum: i256,
        count: i64,
    },
    Values(BTreeMap<Box<[u8]>, i64>),
    Bools {
        trues: i64,
        falses: i64,
    },
}

impl AggregateFolder {
    /// `order` gives the directions of the order keys of an ordered
    /// aggregate, whose `arg_type` is then a struct of the keys and the value.
    pub fn try_new(
        kind: AggregateKind,
        arg_type: &DataType,
        output_type: DataType,
        order: &[SortOptions],
        delimiter: Option<String>,
    ) -> Result<Self> {
        let domain = match kind {
            AggregateKind::Sum | AggregateKind::Avg => Some(match arg_type {
                t if t.is_integer() => NumericDomain::Int,
                t if t.is_floating() => NumericDomain::Float,
                DataType::Decimal128(_, scale) => NumericDomain::Decimal { scale: *scale },
                DataType::Null => NumericDomain::Int,
                other => {
                    return Err(EddyError::NotIncremental(format!(
                        "{kind:?} over {other} is not supported in materialized views yet"
                    )))
                }
            }),
            _ => None,
        };
        let value_codec = match kind {
            AggregateKind::Min
            | AggregateKind::Max
            | AggregateKind::CountDistinct
            | AggregateKind::SumDistinct
            | AggregateKind::AvgDistinct => {
                Some(RowConverter::new(vec![SortField::new(arg_type.clone())])?)
            }
            kind if kind.is_ordered() => {
                let DataType::Struct(fields) = arg_type else {
                    return Err(crate::internal!("ordered aggregate over {arg_type}"));
                };
                if fields.len() != order.len() + 1 {
                    return Err(crate::internal!("ordered aggregate without its value"));
                }
                let sort_fields = fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| match order.get(i) {
                        Some(options) => {
                            SortField::new_with_options(f.data_type().clone(), *options)
                        }
                        None => SortField::new(f.data_type().clone()),
                    })
                    .collect();
                Some(RowConverter::new(sort_fields)?)
            }
            _ => None,
        };
        Ok(Self {
            kind,
            domain,
            value_codec,
            output_type,
            delimiter: delimiter.unwrap_or_default(),
        })
    }

    pub fn kind(&self) -> AggregateKind {
        self.kind
    }

    pub fn new_state(&self) -> AccumulatorState {
        match (self.kind, self.domain) {
            (AggregateKind::Count, _) => AccumulatorState::Count(0),
            (_, Some(NumericDomain::Int)) => AccumulatorState::IntSum { sum: 0, count: 0 },
            (_, Some(NumericDomain::Float)) => AccumulatorState::FloatSum { sum: 0.0, count: 0 },
            (_, Some(NumericDomain::Decimal { .. })) => AccumulatorState::DecimalSum {
                sum: i256::ZERO,
                count: 0,
            },
            (AggregateKind::BoolAnd | AggregateKind::BoolOr, _) => AccumulatorState::Bools {
                trues: 0,
                falses: 0,
            },
            _ => AccumulatorState::Values(BTreeMap::new()),
        }
    }

    /// Converts a batch of argument values to this aggregate's domain.
    pub fn prepare(&self, values: &ArrayRef) -> Result<PreparedInput> {
        Ok(match (self.kind, self.domain) {
            (AggregateKind::Count, _) => PreparedInput::Validity(values.clone()),
            (_, Some(NumericDomain::Int)) => PreparedInput::Int(
                cast(values, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            (_, Some(NumericDomain::Float)) => PreparedInput::Float(
                cast(values, &DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            (_, Some(NumericDomain::Decimal { .. })) => {
                PreparedInput::Decimal(values.as_primitive::<Decimal128Type>().clone())
            }
            (AggregateKind::BoolAnd | AggregateKind::BoolOr, _) => {
                PreparedInput::Bool(cast(values, &DataType::Boolean)?.as_boolean().clone())
            }
            (kind, _) if kind.is_ordered() => {
                let codec = self.codec()?;
                PreparedInput::Encoded(
                    codec.convert_columns(values.as_struct().columns())?,
                    values.clone(),
                )
            }
            _ => {
                let codec = self.codec()?;
                PreparedInput::Encoded(
                    codec.convert_columns(std::slice::from_ref(values))?,
                    values.clone(),
                )
            }
        })
    }

    fn codec(&self) -> Result<&RowConverter> {
        self.value_codec
            .as_ref()
            .ok_or_else(|| crate::internal!("aggregate without value codec"))
    }

    /// Folds row `row` of `input` with `weight` (+n inserts, -n retracts).
    pub fn update(
        &self,
        state: &mut AccumulatorState,
        input: &PreparedInput,
        row: usize,
        weight: i64,
    ) -> Result<()> {
        match (state, input) {
            (AccumulatorState::Count(count), PreparedInput::Validity(values)) => {
                if values.is_valid(row) {
                    *count += weight;
                }
            }
            (AccumulatorState::IntSum { sum, count }, PreparedInput::Int(values)) => {
                if values.is_valid(row) {
                    *sum += i128::from(values.value(row)) * i128::from(weight);
                    *count += weight;
                }
            }
            (AccumulatorState::FloatSum { sum, count }, PreparedInput::Float(values)) => {
                if values.is_valid(row) {
                    *count += weight;
                    // Reset at zero rows so float rounding residue of
                    // retracted values cannot linger.
                    *sum = if *count == 0 {
                        0.0
                    } else {
                        *sum + values.value(row) * weight as f64
                    };
                }
            }
            (AccumulatorState::DecimalSum { sum, count }, PreparedInput::Decimal(values)) => {
                if values.is_valid(row) {
                    let value = i256::from_i128(values.value(row));
                    *sum =
                        sum.wrapping_add(value.wrapping_mul(i256::from_i128(i128::from(weight))));
                    *count += weight;
                }
            }
            (AccumulatorState::Values(multiset), PreparedInput::Encoded(rows, original)) => {
                if original.is_valid(row) {
                    let key = rows.row(row);
                    let remove = match multiset.get_mut(key.as_ref()) {
                        Some(n) => {
                            *n += weight;
                            *n == 0
                        }
                        None => {
                            multiset.insert(key.as_ref().into(), weight);
                            false
                        }
                    };
                    if remove {
                        multiset.remove(key.as_ref());
                    }
                }
            }
            (AccumulatorState::Bools { trues, falses }, PreparedInput::Bool(values)) => {
                if values.is_valid(row) {
                    if values.value(row) {
                        *trues += weight;
                    } else {
                        *falses += weight;
                    }
                }
            }
            _ => return Err(crate::internal!("aggregate state and input do not match")),
        }
        Ok(())
    }

    /// The aggregate's current value, in the plan's output type.
    pub fn value(&self, state: &AccumulatorState) -> Result<ScalarValue> {
        let value = match state {
            AccumulatorState::Count(count) => ScalarValue::Int64(Some(*count)),
            AccumulatorState::IntSum { count: 0, .. }
            | AccumulatorState::FloatSum { count: 0, .. }
            | AccumulatorState::DecimalSum { count: 0, .. } => ScalarValue::Null,
            AccumulatorState::IntSum { sum, count } => match self.kind {
                AggregateKind::Avg => ScalarValue::Float64(Some(*sum as f64 / *count as f64)),
                _ => ScalarValue::Int64(Some(bigint(*sum)?)),
            },
            AccumulatorState::FloatSum { sum, count } => match self.kind {
                AggregateKind::Avg => ScalarValue::Float64(Some(sum / *count as f64)),
                _ => ScalarValue::Float64(Some(*sum)),
            },
            AccumulatorState::DecimalSum { sum, count } => {
                let Some(NumericDomain::Decimal { scale }) = self.domain else {
                    return Err(crate::internal!("decimal sum without decimal domain"));
                };
                match self.kind {
                    AggregateKind::Avg => self.decimal_average(*sum, *count, scale)?,
                    _ => self.decimal_sum(*sum, scale)?,
                }
            }
            AccumulatorState::Values(multiset) => match self.kind {
                AggregateKind::CountDistinct => ScalarValue::Int64(Some(multiset.len() as i64)),
                AggregateKind::Min => self.decode(multiset.keys().next().map(|k| k.as_ref()))?,
                AggregateKind::Max => {
                    self.decode(multiset.keys().next_back().map(|k| k.as_ref()))?
                }
                AggregateKind::SumDistinct | AggregateKind::AvgDistinct => {
                    self.distinct_sum(multiset)?
                }
                AggregateKind::FirstValue => self
                    .ordered_values(multiset.iter().take(1).map(|(k, _)| (k, 1)))?
                    .first()
                    .cloned()
                    .unwrap_or(ScalarValue::Null),
                AggregateKind::LastValue => self
                    .ordered_values(multiset.iter().next_back().map(|(k, _)| (k, 1)).into_iter())?
                    .first()
                    .cloned()
                    .unwrap_or(ScalarValue::Null),
                AggregateKind::StringAgg => {
                    let values = self.ordered_values(multiset.iter().map(|(k, n)| (k, *n)))?;
                    let texts: Vec<String> = values
                        .iter()
                        .filter(|v| !v.is_null())
                        .map(|v| v.to_string())
                        .collect();
                    if texts.is_empty() {
                        ScalarValue::Utf8(None)
                    } else {
                        ScalarValue::Utf8(Some(texts.join(&self.delimiter)))
                    }
                }
                AggregateKind::ArrayAgg => {
                    let values = self.ordered_values(multiset.iter().map(|(k, n)| (k, *n)))?;
                    match (values.first(), &self.output_type) {
                        (None, _) => ScalarValue::Null,
                        (Some(_), DataType::List(field)) => ScalarValue::List(
                            ScalarValue::new_list_nullable(&values, field.data_type()),
                        ),
                        (Some(_), other) => {
                            return Err(crate::internal!("array_agg with output type {other}"))
                        }
                    }
                }
                other => return Err(crate::internal!("{other:?} kept a value multiset")),
            },
            AccumulatorState::Bools { trues, falses } => {
                if trues + falses == 0 {
                    ScalarValue::Null
                } else if self.kind == AggregateKind::BoolAnd {
                    ScalarValue::Boolean(Some(*falses == 0))
                } else {
                    ScalarValue::Boolean(Some(*trues > 0))
                }
            }
        };
        Ok(value.cast_to(&self.output_type)?)
    }

    /// A decimal average in the plan's output scale, truncated like
    /// DataFusion's: `sum * 10^(output scale - input scale) / count`.
    fn decimal_average(&self, sum: i256, count: i64, scale: i8) -> Result<ScalarValue> {
        let DataType::Decimal128(out_precision, out_scale) = self.output_type else {
            return Err(crate::internal!(
                "decimal avg with output type {}",
                self.output_type
            ));
        };
        let shift = i256::from_i128(10i128.pow((out_scale - scale).max(0) as u32));
        let avg = sum
            .wrapping_mul(shift)
            .wrapping_div(i256::from_i128(i128::from(count)));
        Ok(ScalarValue::Decimal128(
            Some(decimal_in_precision(avg, out_precision)?),
            out_precision,
            out_scale,
        ))
    }

    /// A decimal sum in the output's precision (38 digits when the output
    /// is not a decimal), or 22003 when it does not fit.
    fn decimal_sum(&self, sum: i256, scale: i8) -> Result<ScalarValue> {
        let precision = match self.output_type {
            DataType::Decimal128(precision, _) => precision,
            _ => 38,
        };
        Ok(ScalarValue::Decimal128(
            Some(decimal_in_precision(sum, precision)?),
            precision,
            scale,
        ))
    }

    /// sum or avg over the distinct values of a group.
    fn distinct_sum(&self, multiset: &BTreeMap<Box<[u8]>, i64>) -> Result<ScalarValue> {
        if multiset.is_empty() {
            return Ok(ScalarValue::Null);
        }
        let codec = self.codec()?;
        let parser = codec.parser();
        let values = codec.convert_rows(multiset.keys().map(|k| parser.parse(k)))?;
        let values = &values[0];
        let decimal_sum = || {
            let decimals = values.as_primitive::<Decimal128Type>().values();
            decimals
                .iter()
                .fold(i256::ZERO, |a, b| a.wrapping_add(i256::from_i128(*b)))
        };
        let as_f64 = || -> Result<Vec<f64>> {
            let floats = cast(values, &DataType::Float64)?;
            Ok(floats.as_primitive::<Float64Type>().values().to_vec())
        };
        Ok(match (self.kind, values.data_type()) {
            (AggregateKind::SumDistinct, t) if t.is_integer() => {
                let ints = cast(values, &DataType::Int64)?;
                ScalarValue::Int64(Some(bigint(
                    ints.as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .map(|v| i128::from(*v))
                        .sum(),
                )?))
            }
            (AggregateKind::SumDistinct, DataType::Decimal128(_, scale)) => {
                self.decimal_sum(decimal_sum(), *scale)?
            }
            (AggregateKind::SumDistinct, _) => ScalarValue::Float64(Some(as_f64()?.iter().sum())),
            (AggregateKind::AvgDistinct, DataType::Decimal128(_, scale)) => {
                self.decimal_average(decimal_sum(), values.len() as i64, *scale)?
            }
            _ => {
                let floats = as_f64()?;
                ScalarValue::Float64(Some(floats.iter().sum::<f64>() / floats.len() as f64))
            }
        })
    }

    /// The values (the last field) of ordered entries, each `n` times.
    fn ordered_values<'a>(
        &self,
        entries: impl Iterator<Item = (&'a Box<[u8]>, i64)>,
    ) -> Result<Vec<ScalarValue>> {
        let entries: Vec<(&Box<[u8]>, i64)> = entries.collect();
        if entries.is_empty() {
            return Ok(vec![]);
        }
        let codec = self.codec()?;
        let parser = codec.parser();
        let columns = codec.convert_rows(entries.iter().map(|(k, _)| parser.parse(k)))?;
        let values = columns
            .last()
            .ok_or_else(|| crate::internal!("ordered aggregate without values"))?;
        let mut out = Vec::new();
        for (row, (_, n)) in entries.iter().enumerate() {
            let value = ScalarValue::try_from_array(values, row)?;
            for _ in 0..*n {
                out.push(value.clone());
            }
        }
        Ok(out)
    }

    fn decode(&self, key: Option<&[u8]>) -> Result<ScalarValue> {
        let Some(key) = key else {
            return Ok(ScalarValue::Null);
        };
        let codec = self.codec()?;
        let parser = codec.parser();
        let columns = codec.convert_rows(std::iter::once(parser.parse(key)))?;
        Ok(ScalarValue::try_from_array(&columns[0], 0)?)
    }

    /// Keys held as state, for the state-size figures.
    /// Bytes `state` holds in memory (an estimate: it steers spilling).
    pub fn memory_bytes(state: &AccumulatorState) -> usize {
        match state {
            // A B-tree entry: the boxed value, its count and node overhead.
            AccumulatorState::Values(multiset) => {
                multiset.keys().map(|value| value.len() + 48).sum::<usize>()
            }
            _ => 0,
        }
    }

    pub fn state_keys(state: &AccumulatorState) -> u64 {
        match state {
            AccumulatorState::Values(multiset) => multiset.len() as u64,
            _ => 0,
        }
    }
}

/// An exact integer sum as BIGINT, or 22003 when it does not fit.
fn bigint(sum: i128) -> Result<i64> {
    i64::try_from(sum).map_err(|_| EddyError::OutOfRange("bigint out of range".into()))
}

impl AccumulatorState {
    /// Folds `other`'s inputs into this state, as if they had been folded
    /// here (both states of the same aggregate).
    pub fn merge(&mut self, other: AccumulatorState) -> Result<()> {
        match (self, other) {
            (AccumulatorState::Count(n), AccumulatorState::Count(m)) => *n += m,
            (
                AccumulatorState::IntSum { sum, count },
                AccumulatorState::IntSum { sum: s, count: c },
            ) => {
                *sum += s;
                *count += c;
            }
            (
                AccumulatorState::FloatSum { sum, count },
                AccumulatorState::FloatSum { sum: s, count: c },
            ) => {
                *count += c;
                *sum = if *count == 0 { 0.0 } else { *sum + s };
            }
            (
                AccumulatorState::DecimalSum { sum, count },
                AccumulatorState::DecimalSum { sum: s, count: c },
            ) => {
                *sum = sum.wrapping_add(s);
                *count += c;
            }
            (AccumulatorState::Values(values), AccumulatorState::Values(others)) => {
                for (value, n) in others {
                    let total = values.get(&value).copied().unwrap_or(0) + n;
                    if total == 0 {
                        values.remove(&value);
                    } else {
                        values.insert(value, total);
                    }
                }
            }
            (
                AccumulatorState::Bools { trues, falses },
                AccumulatorState::Bools {
                    trues: t,
                    falses: f,
                },
            ) => {
                *trues += t;
                *falses += f;
            }
            _ => return Err(crate::internal!("merging states of different aggregates")),
        }
        Ok(())
    }

    /// Appends this state to a checkpoint value.
    pub fn encode(&self, out: &mut crate::state::codec::Encoder) {
        match self {
            AccumulatorState::Count(n) => {
                out.u8(0).i64(*n);
            }
            AccumulatorState::IntSum { sum, count } => {
                out.u8(6).i128(*sum).i64(*count);
            }
            AccumulatorState::FloatSum { sum, count } => {
                out.u8(2).f64(*sum).i64(*count);
            }
            AccumulatorState::DecimalSum { sum, count } => {
                out.u8(7).bytes(&sum.to_le_bytes()).i64(*count);
            }
            AccumulatorState::Values(values) => {
                out.u8(4).u64(values.len() as u64);
                for (value, n) in values {
                    out.bytes(value).i64(*n);
                }
            }
            AccumulatorState::Bools { trues, falses } => {
                out.u8(5).i64(*trues).i64(*falses);
            }
        }
    }

    /// Reads a state written by [`AccumulatorState::encode`].
    pub fn decode(d: &mut crate::state::codec::Decoder<'_>) -> Result<Self> {
        Ok(match d.u8()? {
            0 => AccumulatorState::Count(d.i64()?),
            // Before sums were exact: an i64 (wrapped if it overflowed).
            1 => AccumulatorState::IntSum {
                sum: i128::from(d.i64()?),
                count: d.i64()?,
            },
            6 => AccumulatorState::IntSum {
                sum: d.i128()?,
                count: d.i64()?,
            },
            2 => AccumulatorState::FloatSum {
                sum: d.f64()?,
                count: d.i64()?,
            },
            // Before decimal sums were exact: 128 bits (wrapped).
            3 => AccumulatorState::DecimalSum {
                sum: i256::from_i128(d.i128()?),
                count: d.i64()?,
            },
            7 => AccumulatorState::DecimalSum {
                sum: {
                    let bytes: [u8; 32] = d.bytes()?.try_into().map_err(|_| {
                        EddyError::Checkpoint("a decimal sum of the wrong size".into())
                    })?;
                    i256::from_le_bytes(bytes)
                },
                count: d.i64()?,
            },
            4 => {
                let mut values = BTreeMap::new();
                for _ in 0..d.u64()? {
                    let value: Box<[u8]> = d.bytes()?.into();
                    values.insert(value, d.i64()?);
                }
                AccumulatorState::Values(values)
            }
            5 => AccumulatorState::Bools {
                trues: d.i64()?,
                falses: d.i64()?,
            },
            other => {
                return Err(EddyError::Checkpoint(format!(
                    "unknown aggregate state kind {other}"
                )))
            }
        })
    }
}
