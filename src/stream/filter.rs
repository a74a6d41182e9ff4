//! Filter: keeps the changes whose row satisfies the predicate. Stateless: a
//! retraction of a row is kept exactly when its insertion was, because the
//! predicate is deterministic.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::physical_plan::PhysicalExpr;

use super::{Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::Result;

pub struct FilterOperator {
    predicate: Arc<dyn PhysicalExpr>,
    counters: OperatorCounters,
}

impl FilterOperator {
    pub fn new(predicate: Arc<dyn PhysicalExpr>) -> Self {
        Self {
            predicate,
            counters: OperatorCounters::default(),
        }
    }
}

impl Operator for FilterOperator {
    fn describe(&self) -> String {
        format!("Filter: {}", self.predicate)
    }

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let (kept, columns) = self
            .counters
            .evaluate(std::slice::from_ref(&self.predicate), &batch)?;
        let mask = columns[0]
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| crate::internal!("filter predicate is not boolean"))?;
        let out = kept.filter(mask)?;
        Ok(if out.is_empty() { vec![] } else { vec![out] })
    }
}
