//! `SHOW TABLES | SOURCES | MATERIALIZED VIEWS | SINKS | JOBS`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::jobs::jobs_batch;
use super::system::{sinks_batch, views_batch};
use super::{Engine, StatementResult};
use crate::catalog::{Relation, RelationKind};
use crate::error::Result;

pub(super) fn rows(batch: RecordBatch) -> StatementResult {
    StatementResult::Rows {
        schema: batch.schema(),
        batches: vec![batch],
    }
}

pub(super) fn names_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]))
}

impl Engine {
    /// The names of the relations of one kind, as SHOW TABLES/SOURCES list them.
    pub(super) fn show_names(&self, kind: RelationKind) -> Result<StatementResult> {
        let names: Vec<String> = self
            .catalog
            .list()
            .into_iter()
            .filter(|r| r.kind() == kind)
            .map(|r| r.name().to_string())
            .collect();
        let batch = RecordBatch::try_new(
            names_schema(),
            vec![Arc::new(StringArray::from(names)) as ArrayRef],
        )?;
        Ok(rows(batch))
    }

    pub(super) fn sinks_batch(&self) -> Result<RecordBatch> {
        Ok(sinks_batch(
            &self.catalog.list_sinks(),
            self.runtime.published().epoch,
        )?)
    }

    /// `SHOW MATERIALIZED VIEWS` (a sink's own view is not listed).
    pub(super) async fn show_views(&self) -> Result<StatementResult> {
        let (_, mut views) = self.runtime.status().await?;
        views.retain(|v| {
            matches!(self.catalog.get(&v.name), Some(Relation::View(e)) if e.owner_sink.is_none())
        });
        super::health::note_waiting_inputs(&self.catalog, &mut views);
        Ok(rows(views_batch(&views)?))
    }

    /// `SHOW SINKS`.
    pub(super) fn show_sinks(&self) -> Result<StatementResult> {
        Ok(rows(self.sinks_batch()?))
    }

    /// `SHOW JOBS`.
    pub(super) fn show_jobs(&self) -> Result<StatementResult> {
        Ok(rows(jobs_batch(&self.catalog)?))
    }
}
