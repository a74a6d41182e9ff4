//! DataFusion's view of one relation at one moment: a `TableProvider` over an
//! immutable [`RowSet`] snapshot.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::RelationKind;
use crate::common::types::all_nullable;
use crate::common::RelationId;
use crate::state::RowSet;

#[derive(Debug)]
pub struct RelationProvider {
    pub id: RelationId,
    pub name: String,
    pub kind: RelationKind,
    rows: RowSet,
    /// The column a watermark follows, for tables and sources that declare
    /// one. Views pass on the watermarks of their inputs.
    pub watermark_column: Option<usize>,
    /// The relation's schema with every column nullable: NOT NULL is
    /// enforced by the table on write (with Postgres' error), not by
    /// DataFusion while it evaluates an INSERT.
    schema: SchemaRef,
}

impl RelationProvider {
    pub fn new(
        id: RelationId,
        name: String,
        kind: RelationKind,
        rows: RowSet,
        watermark_column: Option<usize>,
    ) -> Self {
        let schema = all_nullable(rows.schema());
        Self {
            id,
            name,
            kind,
            rows,
            watermark_column,
            schema,
        }
    }

    /// Whether watermarks can reach `column`: it has one, or the relation is
    /// a view (whose watermarks come from its inputs; assumed to).
    pub fn may_have_watermark_on(&self, column: usize) -> bool {
        self.kind == RelationKind::MaterializedView || self.watermark_column == Some(column)
    }

    pub fn rows(&self) -> &RowSet {
        &self.rows
    }

    /// The rows as batches in the provider's schema, for a query. A source
    /// has no rows to read here: it is read through a view, and saying so
    /// beats answering with nothing.
    pub fn current_batches(&self) -> DFResult<Vec<RecordBatch>> {
        if self.kind == RelationKind::Source {
            return Err(DataFusionError::External(Box::new(
                crate::error::EddyError::NotSupported(format!(
                    "source \"{0}\" can only be read by a materialized view \
                 (CREATE MATERIALIZED VIEW ... AS SELECT ... FROM {0})",
                    self.name
                )),
            )));
        }
        let stored = self
            .rows
            .to_batches()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        stored
            .into_iter()
            .map(|batch| {
                Ok(RecordBatch::try_new(
                    self.schema.clone(),
                    batch.columns().to_vec(),
                )?)
            })
            .collect()
    }
}

#[async_trait]
impl TableProvider for RelationProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        match self.kind {
            RelationKind::Table => TableType::Base,
            RelationKind::MaterializedView | RelationKind::Source => TableType::View,
        }
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batches = self.current_batches()?;
        let exec =
            MemorySourceConfig::try_new_exec(&[batches], self.schema(), projection.cloned())?;
        Ok(exec)
    }
}
