//! The changelog: what flows between sources, operators, views and sinks.
//!
//! A [`ChangeBatch`] is an Arrow `RecordBatch` of rows plus a signed weight
//! per row (+1 insert, -1 retract; an update is a retraction followed by an
//! insertion). A plain append-only stream is a changelog whose weights are
//! all +1. Table DML, Kafka upserts and deletes, and the output of operators
//! whose results change all travel in this one shape.
//!
//! Invariant: a batch has exactly one non-null weight per row.

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::Result;

/// A batch of changes: rows and their signed weights.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch};
/// use eddy::common::ChangeBatch;
///
/// let rows = RecordBatch::try_from_iter([("x", Arc::new(Int32Array::from(vec![1, 2])) as _)]).unwrap();
/// // An update of x = 1 to x = 2: retract the old row, insert the new one.
/// let update = ChangeBatch::new(rows, Int64Array::from(vec![-1, 1])).unwrap();
/// assert_eq!(update.num_rows(), 2);
/// // Weights must match the rows.
/// let rows = RecordBatch::try_from_iter([("x", Arc::new(Int32Array::from(vec![1])) as _)]).unwrap();
/// assert!(ChangeBatch::new(rows, Int64Array::from(vec![1, 1])).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub rows: RecordBatch,
    pub weights: Int64Array,
}

impl ChangeBatch {
    pub fn new(rows: RecordBatch, weights: Int64Array) -> Result<Self> {
        if rows.num_rows() != weights.len() || weights.null_count() != 0 {
            return Err(crate::internal!(
                "change batch has {} rows but {} weights ({} null)",
                rows.num_rows(),
                weights.len(),
                weights.null_count()
            ));
        }
        Ok(Self { rows, weights })
    }

    /// All rows inserted once.
    pub fn inserts(rows: RecordBatch) -> Self {
        let weights = Int64Array::from(vec![1; rows.num_rows()]);
        Self { rows, weights }
    }

    /// All rows retracted once.
    pub fn deletes(rows: RecordBatch) -> Self {
        let weights = Int64Array::from(vec![-1; rows.num_rows()]);
        Self { rows, weights }
    }

    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.num_rows() == 0
    }

    pub fn schema(&self) -> SchemaRef {
        self.rows.schema()
    }

    /// Keeps the rows where `mask` is true (null counts as false).
    pub fn filter(&self, mask: &BooleanArray) -> Result<Self> {
        let rows = filter_record_batch(&self.rows, mask)?;
        let weights = datafusion::arrow::compute::filter(&self.weights, mask)?;
        let weights = weights
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| crate::internal!("filtered weights are not Int64"))?
            .clone();
        Ok(Self { rows, weights })
    }

    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &[u32]) -> Result<Self> {
        let indices = datafusion::arrow::array::UInt32Array::from(indices.to_vec());
        let rows = take_record_batch(&self.rows, &indices)?;
        let weights: Vec<i64> = indices
            .values()
            .iter()
            .map(|&i| self.weights.value(i as usize))
            .collect();
        Ok(Self {
            rows,
            weights: Int64Array::from(weights),
        })
    }

    /// The same weights over new columns (e.g. after a projection).
    pub fn with_columns(&self, schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<Self> {
        let options = datafusion::arrow::array::RecordBatchOptions::new()
            .with_row_count(Some(self.num_rows()));
        let rows = RecordBatch::try_new_with_options(schema, columns, &options)?;
        Ok(Self {
            rows,
            weights: self.weights.clone(),
        })
    }
}
