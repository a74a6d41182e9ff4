//! DataFusion's functions whose result a few bytes of SQL can make huge
//! (`repeat('x', 1500000000)` took 5.8 GB), replaced in every session by
//! versions that first compute what the result would weigh and refuse one
//! over [`MAX_RESULT_BYTES`] per call (54000), as PostgreSQL refuses a value
//! over 1 GB. Everything else about them is DataFusion's own.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::Result as DFResult;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use crate::error::EddyError;

/// The most one call of a guarded function may produce (all rows of a
/// batch together).
pub const MAX_RESULT_BYTES: u64 = 256 << 20;

/// How a guarded function's result size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times `n`.
    Repeat,
    /// `lpad` / `rpad(text, n [, fill])`: `n` characters, up to 4 bytes
    /// each.
    Pad,
}

/// A DataFusion function behind a result-size check.
#[derive(Debug)]
struct Guarded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
}

impl PartialEq for Guarded {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name() && self.growth == other.growth
    }
}

impl Eq for Guarded {}

impl Hash for Guarded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.growth.hash(state);
    }
}

/// Replaces `repeat`, `lpad` and `rpad` in `state` by guarded versions.
pub fn register(state: &mut SessionState) -> datafusion::error::Result<()> {
    for (name, growth) in [
        ("repeat", Growth::Repeat),
        ("lpad", Growth::Pad),
        ("rpad", Growth::Pad),
    ] {
        if let Some(inner) = state.scalar_functions().get(name).cloned() {
            let guarded = ScalarUDF::new_from_impl(Guarded { inner, growth });
            state.register_udf(Arc::new(guarded))?;
        }
    }
    Ok(())
}

/// An argument as an array of `rows` Int64 values (nulls count as 0).
fn int64_values(value: &ColumnarValue, rows: usize) -> DFResult<Vec<i64>> {
    let array = cast(&value.to_array(rows)?, &DataType::Int64)?;
    let ints = array.as_primitive::<Int64Type>();
    Ok((0..rows)
        .map(|i| if ints.is_null(i) { 0 } else { ints.value(i) })
        .collect())
}

impl Guarded {
    /// What the call would produce, in bytes (an upper bound).
    fn result_bytes(&self, args: &ScalarFunctionArgs) -> DFResult<u64> {
        let rows = args.number_rows.max(1);
        let (Some(text), Some(count)) = (args.args.first(), args.args.get(1)) else {
            return Ok(0);
        };
        let counts = int64_values(count, rows)?;
        let per_row: Vec<u64> = match self.growth {
            Growth::Repeat => {
                let lengths =
                    int64_values(&ColumnarValue::Array(length(&text.to_array(rows)?)?), rows)?;
                lengths
                    .iter()
                    .zip(&counts)
                    .map(|(l, n)| (*l).max(0) as u64 * (*n).max(0) as u64)
                    .collect()
            }
            Growth::Pad => counts.iter().map(|n| (*n).max(0) as u64 * 4).collect(),
        };
        Ok(per_row
            .iter()
            .fold(0u64, |total, b| total.saturating_add(*b)))
    }
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let bytes = self.result_bytes(&args)?;
        if bytes > MAX_RESULT_BYTES {
            return Err(datafusion::error::DataFusionError::External(Box::new(
                EddyError::ProgramLimitExceeded(format!(
                    "{}() would make a result of {bytes} bytes; at most {MAX_RESULT_BYTES} \
                     bytes per call",
                    self.inner.name()
                )),
            )));
        }
        self.inner.invoke_with_args(args)
    }
}
