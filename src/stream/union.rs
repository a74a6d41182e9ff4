//! UNION ALL: the changelog of a union is the union of the changelogs. Inputs
//! are re-labelled with the union's schema (DataFusion has already coerced
//! their types to match). The watermark is the inputs' merged one
//! ([`MergedWatermark`]).

use datafusion::arrow::datatypes::SchemaRef;

use super::watermark::MergedWatermark;
use super::Operator;
use crate::common::ChangeBatch;
use crate::error::Result;

pub struct UnionOperator {
    schema: SchemaRef,
    inputs: usize,
    watermark: MergedWatermark,
}

impl UnionOperator {
    pub fn new(schema: SchemaRef, inputs: usize, idle_timeout: Option<i64>) -> Self {
        Self {
            schema,
            inputs,
            watermark: MergedWatermark::new(inputs, idle_timeout),
        }
    }
}

impl Operator for UnionOperator {
    fn describe(&self) -> String {
        match self.watermark.idle_timeout() {
            Some(timeout) => format!(
                "UnionAll: {} inputs (idle after {})",
                self.inputs,
                super::window::describe_micros(timeout)
            ),
            None => format!("UnionAll: {} inputs", self.inputs),
        }
    }

    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        self.watermark.on_data(input);
        let columns = batch.rows.columns().to_vec();
        Ok(vec![batch.with_columns(self.schema.clone(), columns)?])
    }

    fn on_watermark(
        &mut self,
        input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        Ok((vec![], self.watermark.on_watermark(input, watermark)))
    }

    fn on_tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        Ok((vec![], self.watermark.on_tick(now)))
    }
}
