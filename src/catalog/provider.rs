//! DataFusion's view of one relation at one moment: a `TableProvider` over an
//! immutable [`RowSet`] snapshot, read batch by batch as a query pulls.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;

use super::RelationKind;
use crate::common::types::all_nullable;
use crate::common::RelationId;
use crate::state::RowSet;

#[derive(Debug, Clone)]
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
    /// A source's: how an ad hoc SELECT reads it.
    source_read: Option<crate::connectors::SourceRead>,
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
            source_read: None,
        }
    }

    /// A source's provider, scanned by reading the source once.
    pub fn reading_source_with(mut self, read: Option<crate::connectors::SourceRead>) -> Self {
        self.source_read = read;
        self
    }

    /// Whether watermarks can reach `column`: it has one, or the relation is
    /// a view (whose watermarks come from its inputs; assumed to).
    pub fn may_have_watermark_on(&self, column: usize) -> bool {
        self.kind == RelationKind::MaterializedView || self.watermark_column == Some(column)
    }

    pub fn rows(&self) -> &RowSet {
        &self.rows
    }

    /// The rows as batches in the provider's schema, for a query.
    pub fn current_batches(&self) -> DFResult<Vec<RecordBatch>> {
        self.scan_rows(crate::state::SCAN_BATCH_ROWS)?.collect()
    }

    /// A source without a snapshot read (a generator) has no rows to read
    /// here: it is read through a view, and saying so beats answering with
    /// nothing.
    fn check_readable(&self) -> DFResult<()> {
        if self.kind == RelationKind::Source && self.source_read.is_none() {
            return Err(DataFusionError::External(Box::new(
                crate::error::EddyError::NotSupported(format!(
                    "source \"{0}\" can only be read by a materialized view \
                 (CREATE MATERIALIZED VIEW ... AS SELECT ... FROM {0})",
                    self.name
                )),
            )));
        }
        Ok(())
    }

    /// The rows of this snapshot read lazily, `batch_rows` keyed rows at a
    /// time, in the provider's schema.
    fn scan_rows(
        &self,
        batch_rows: usize,
    ) -> DFResult<impl Iterator<Item = DFResult<RecordBatch>> + Send + 'static> {
        self.check_readable()?;
        let schema = self.schema.clone();
        Ok(self.rows.clone().scan(batch_rows).map(move |batch| {
            let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok(RecordBatch::try_new(
                schema.clone(),
                batch.columns().to_vec(),
            )?)
        }))
    }
}

/// One relation's snapshot as a DataFusion partition: each execution reads
/// it batch by batch as the query pulls (`LIMIT` stops the reading), so a
/// SELECT over a large view holds one decoded batch of it at a time.
#[derive(Debug)]
struct SnapshotPartition {
    relation: RelationProvider,
}

impl PartitionStream for SnapshotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.relation.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch_rows = ctx.session_config().batch_size();
        let rows = self.relation.scan_rows(batch_rows);
        let batches: Box<dyn Iterator<Item = DFResult<RecordBatch>> + Send> = match rows {
            Ok(rows) => Box::new(rows),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        Box::pin(RecordBatchStreamAdapter::new(
            self.relation.schema.clone(),
            futures::stream::iter(batches),
        ))
    }
}

/// A source read once for a query (see `connectors::kafka::snapshot`).
#[derive(Debug)]
struct SourcePartition {
    schema: SchemaRef,
    read: crate::connectors::SourceRead,
    limit: Option<usize>,
}

impl PartitionStream for SourcePartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (read, schema, limit) = (self.read.clone(), self.schema.clone(), self.limit);
        let batch = async move {
            let batch = (read.0)(limit)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok(RecordBatch::try_new(schema, batch.columns().to_vec())?)
        };
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(batch),
        ))
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
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        // Refused here, at planning, rather than when the query runs.
        self.check_readable()?;
        let partition: Arc<dyn PartitionStream> = match &self.source_read {
            Some(read) => Arc::new(SourcePartition {
                schema: self.schema.clone(),
                read: read.clone(),
                limit,
            }),
            None => Arc::new(SnapshotPartition {
                relation: self.clone(),
            }),
        };
        let exec = StreamingTableExec::try_new(
            self.schema(),
            vec![partition],
            projection,
            [],
            false,
            limit,
        )?;
        Ok(Arc::new(exec))
    }
}
