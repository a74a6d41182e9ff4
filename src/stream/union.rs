//! UNION ALL: the changelog of a union is the union of the changelogs. Inputs
//! are re-labelled with the union's schema (DataFusion has already coerced
//! their types to match).

use datafusion::arrow::datatypes::SchemaRef;

use super::{ChangeBatch, Operator};
use crate::error::Result;

pub struct UnionOperator {
    schema: SchemaRef,
    inputs: usize,
    /// Each input's watermark; the union's is their minimum, once all have one.
    watermarks: Vec<Option<i64>>,
}

impl UnionOperator {
    pub fn new(schema: SchemaRef, inputs: usize) -> Self {
        Self {
            schema,
            inputs,
            watermarks: vec![None; inputs],
        }
    }
}

impl Operator for UnionOperator {
    fn describe(&self) -> String {
        format!("UnionAll: {} inputs", self.inputs)
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let columns = batch.rows.columns().to_vec();
        Ok(vec![batch.with_columns(self.schema.clone(), columns)?])
    }

    fn on_watermark(
        &mut self,
        input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let slot = &mut self.watermarks[input];
        *slot = Some(slot.map_or(watermark, |w| w.max(watermark)));
        let all: Option<Vec<i64>> = self.watermarks.iter().copied().collect();
        Ok((vec![], all.and_then(|w| w.into_iter().min())))
    }
}
