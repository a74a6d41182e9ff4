//! Building the batches of system tables and SHOW statements a column at
//! a time, every column nullable (the tables are read, never written).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::error::Result as DFResult;

/// Builds a record batch a column at a time.
#[derive(Default)]
pub(super) struct Columns {
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
}

impl Columns {
    pub(super) fn add(mut self, name: &str, data_type: DataType, array: ArrayRef) -> Self {
        self.fields.push(Field::new(name, data_type, true));
        self.arrays.push(array);
        self
    }

    pub(super) fn text<S: AsRef<str>>(
        self,
        name: &str,
        values: impl IntoIterator<Item = Option<S>>,
    ) -> Self {
        let array = StringArray::from_iter(values);
        self.add(name, DataType::Utf8, Arc::new(array))
    }

    pub(super) fn uint(self, name: &str, values: impl IntoIterator<Item = u64>) -> Self {
        let array = UInt64Array::from_iter_values(values);
        self.add(name, DataType::UInt64, Arc::new(array))
    }

    pub(super) fn int(self, name: &str, values: impl IntoIterator<Item = Option<i64>>) -> Self {
        let array = Int64Array::from_iter(values);
        self.add(name, DataType::Int64, Arc::new(array))
    }

    pub(super) fn float(self, name: &str, values: impl IntoIterator<Item = Option<f64>>) -> Self {
        let array = Float64Array::from_iter(values);
        self.add(name, DataType::Float64, Arc::new(array))
    }

    /// A timestamp column from ms since the Unix epoch.
    pub(super) fn timestamp_ms(
        self,
        name: &str,
        values: impl IntoIterator<Item = Option<i64>>,
    ) -> Self {
        let array = TimestampMillisecondArray::from_iter(values);
        self.add(
            name,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            Arc::new(array),
        )
    }

    /// A timestamp column from µs since the Unix epoch.
    pub(super) fn timestamp(
        self,
        name: &str,
        values: impl IntoIterator<Item = Option<i64>>,
    ) -> Self {
        let array = TimestampMicrosecondArray::from_iter(values);
        self.add(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, None),
            Arc::new(array),
        )
    }

    pub(super) fn batch(self) -> DFResult<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(self.fields)),
            self.arrays,
        )?)
    }
}

pub(super) fn some<T>(values: impl IntoIterator<Item = T>) -> impl Iterator<Item = Option<T>> {
    values.into_iter().map(Some)
}
