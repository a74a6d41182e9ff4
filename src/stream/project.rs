//! Projection: evaluates one expression per output column. Stateless; weights
//! pass through unchanged, so projecting a changelog gives the changelog of
//! the projection.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::PhysicalExpr;

use super::{Operator, RowErrorPolicy};
use crate::common::ChangeBatch;
use crate::error::Result;

pub struct ProjectOperator {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    errors: RowErrorPolicy,
}

impl ProjectOperator {
    pub fn new(exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef) -> Self {
        Self {
            exprs,
            schema,
            errors: RowErrorPolicy::default(),
        }
    }
}

impl Operator for ProjectOperator {
    fn describe(&self) -> String {
        let exprs: Vec<String> = self
            .exprs
            .iter()
            .zip(self.schema.fields())
            .map(|(e, f)| format!("{e} AS {}", f.name()))
            .collect();
        format!("Project: {}", exprs.join(", "))
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let (kept, columns) = self.errors.evaluate(&self.exprs, &batch)?;
        Ok(vec![kept.with_columns(self.schema.clone(), columns)?])
    }

    fn rows_failed(&self) -> u64 {
        self.errors.rows_failed
    }

    fn last_error(&self) -> Option<String> {
        self.errors.last_error.clone()
    }
}
