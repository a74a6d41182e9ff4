//! Projection: evaluates one expression per output column. Stateless; weights
//! pass through unchanged, so projecting a changelog gives the changelog of
//! the projection.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::PhysicalExpr;

use super::{Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::Result;

pub struct ProjectOperator {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    counters: OperatorCounters,
}

impl ProjectOperator {
    pub fn new(exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef) -> Self {
        Self {
            exprs,
            schema,
            counters: OperatorCounters::default(),
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

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let (kept, columns) = self.counters.evaluate(&self.exprs, &batch)?;
        Ok(vec![kept.with_columns(self.schema.clone(), columns)?])
    }
}
