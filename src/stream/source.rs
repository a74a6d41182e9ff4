//! Leaves of a streaming graph: the scan of a relation (a table or another
//! materialized view), and constant relations (`VALUES`, `SELECT 1`).

use datafusion::arrow::array::RecordBatch;

use super::Operator;
use crate::common::ChangeBatch;
use crate::common::RelationId;
use crate::error::Result;

/// Receives the changelog of one relation, projected to the columns the
/// query reads.
pub struct ScanOperator {
    pub relation: RelationId,
    relation_name: String,
    projection: Option<Vec<usize>>,
}

impl ScanOperator {
    pub fn new(
        relation: RelationId,
        relation_name: String,
        projection: Option<Vec<usize>>,
    ) -> Self {
        Self {
            relation,
            relation_name,
            projection,
        }
    }
}

impl Operator for ScanOperator {
    fn describe(&self) -> String {
        match &self.projection {
            Some(p) => format!("Scan: {} columns={p:?}", self.relation_name),
            None => format!("Scan: {}", self.relation_name),
        }
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let batch = match &self.projection {
            Some(p) => ChangeBatch::new(batch.rows.project(p)?, batch.weights)?,
            None => batch,
        };
        Ok(if batch.is_empty() {
            vec![]
        } else {
            vec![batch]
        })
    }
}

/// A relation whose rows are fixed at CREATE time; it emits them once.
pub struct ConstantOperator {
    rows: RecordBatch,
}

impl ConstantOperator {
    pub fn new(rows: RecordBatch) -> Self {
        Self { rows }
    }
}

impl Operator for ConstantOperator {
    fn describe(&self) -> String {
        format!("Values: {} rows", self.rows.num_rows())
    }

    fn process(&mut self, _input: usize, _batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        Err(crate::internal!("a constant relation has no inputs"))
    }

    fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        Ok(vec![ChangeBatch::inserts(self.rows.clone())])
    }
}
