//! DataFusion's view of one relation at one moment: a `TableProvider` over an
//! immutable [`RowSet`] snapshot.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::{RelationId, RelationKind};
use crate::state::RowSet;

#[derive(Debug)]
pub struct RelationProvider {
    pub id: RelationId,
    pub name: String,
    pub kind: RelationKind,
    rows: RowSet,
}

impl RelationProvider {
    pub fn new(id: RelationId, name: String, kind: RelationKind, rows: RowSet) -> Self {
        Self { id, name, kind, rows }
    }

    pub fn rows(&self) -> &RowSet {
        &self.rows
    }
}

#[async_trait]
impl TableProvider for RelationProvider {
    fn schema(&self) -> SchemaRef {
        self.rows.schema().clone()
    }

    fn table_type(&self) -> TableType {
        match self.kind {
            RelationKind::Table => TableType::Base,
            RelationKind::MaterializedView => TableType::View,
        }
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batch = self.rows.to_batch().map_err(|e| DataFusionError::External(Box::new(e)))?;
        let exec = MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?;
        Ok(exec)
    }
}
