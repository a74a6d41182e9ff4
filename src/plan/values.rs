//! Lowering `Values` and `EmptyRelation` → `Values` (constant rows).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::logical_expr::{EmptyRelation, Values};

use super::exprs::{arrow_schema, physical_expr};
use super::Lowering;
use crate::error::Result;
use crate::stream::graph::NodeIndex;
use crate::stream::source::ConstantOperator;

impl Lowering<'_> {
    /// `VALUES (...)`: constant rows.
    pub(super) fn values(&mut self, values: &Values) -> Result<NodeIndex> {
        let schema = arrow_schema(&values.schema);
        let empty = DFSchema::empty();
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let mut columns = Vec::with_capacity(schema.fields().len());
        for (column, field) in schema.fields().iter().enumerate() {
            let mut cells = Vec::with_capacity(values.values.len());
            for row in &values.values {
                let cell = physical_expr(&row[column], &empty)?
                    .evaluate(&one_row)?
                    .into_array(1)?;
                cells.push(datafusion::arrow::compute::cast(&cell, field.data_type())?);
            }
            let refs: Vec<&dyn datafusion::arrow::array::Array> =
                cells.iter().map(|c| c.as_ref()).collect();
            columns.push(concat(&refs)?);
        }
        let rows = RecordBatch::try_new(schema, columns)?;
        Ok(self
            .graph
            .add(Box::new(ConstantOperator::new(rows)), vec![]))
    }

    /// No rows, or the one row of a SELECT without FROM.
    pub(super) fn empty_relation(&mut self, empty: &EmptyRelation) -> Result<NodeIndex> {
        let row_count = usize::from(empty.produce_one_row);
        let rows = RecordBatch::try_new_with_options(
            arrow_schema(&empty.schema),
            vec![],
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(row_count)),
        )?;
        Ok(self
            .graph
            .add(Box::new(ConstantOperator::new(rows)), vec![]))
    }
}
