//! UNION ALL: the changelog of a union is the union of the changelogs. Inputs
//! are re-labelled with the union's schema (DataFusion has already coerced
//! their types to match).

use datafusion::arrow::datatypes::SchemaRef;

use super::{ChangeBatch, Operator};
use crate::error::Result;

pub struct UnionOperator {
    schema: SchemaRef,
    inputs: usize,
}

impl UnionOperator {
    pub fn new(schema: SchemaRef, inputs: usize) -> Self {
        Self { schema, inputs }
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
}
