//! Materialized views: `CREATE MATERIALIZED VIEW` plans the query with
//! DataFusion, lowers it to a streaming graph (`plan::lower`), and hands
//! the graph to the runtime with a backfill snapshot of its input tables
//! taken under their write locks (each table change reaches the view once:
//! in the snapshot or after it). Each source the view reads gets a reader
//! of its own under a fresh relation id.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::Statement;

use super::jobs::{kafka_inputs, BackfillWatch};
use super::show::rows;
use super::{Engine, StatementResult};
use crate::catalog::{Relation, TableEntry, ViewEntry};
use crate::common::{ChangeBatch, RelationId};
use crate::connectors::table::{ProcessingTime, TableWatermark};
use crate::connectors::ReaderSpec;
use crate::error::{EddyError, Result};
use crate::plan;
use crate::runtime::{RestoredView, ViewSpec};
use crate::sql::CreateView;
use crate::state::checkpoint::ReaderPosition;

pub(super) fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "QUERY PLAN",
        DataType::Utf8,
        false,
    )]))
}

impl Engine {
    /// Plans a view's query into a streaming graph and its output schema.
    pub(super) async fn plan_view(
        &self,
        view: &CreateView,
    ) -> Result<(plan::PlannedView, LogicalPlan)> {
        let mut state = self.query_state()?;
        // Uncorrelated scalar subqueries become joins with their one row, which
        // eddy maintains; DataFusion would otherwise run them as a separate
        // physical plan, which a streaming graph has no place for.
        state
            .config_mut()
            .options_mut()
            .optimizer
            .enable_physical_uncorrelated_scalar_subquery = false;
        let (logical, names) = self
            .plan(
                &state,
                &Statement::Query(view.query.clone()),
                crate::catalog::roles::BOOTSTRAP_SUPERUSER,
            )
            .await?;
        if !logical.get_parameter_types()?.is_empty() {
            return Err(crate::not_supported!(
                "parameters ($1) in CREATE MATERIALIZED VIEW"
            ));
        }
        let logical = plan::rewrite_temporal_filters(logical)?;
        plan::check_deterministic(&logical)?;
        let optimized = state.optimize(&logical)?;
        let time = plan::TimeOptions {
            allowed_lateness_micros: view.allowed_lateness_micros,
            idle_timeout_micros: view.idle_timeout_micros,
            allow_cross_join: view.allow_cross_join,
            emit_on_window_close: view.emit_on_window_close,
        };
        let relation_is_append_only =
            |relation: &crate::catalog::RelationProvider| match self.catalog.by_id(relation.id) {
                Some(Relation::Table(t)) => t.append_only,
                Some(Relation::View(v)) => v.append_only,
                Some(Relation::Source(s)) => s.connector.is_append_only(),
                None => false,
            };
        let lowered = plan::lower(&optimized, time, self.workers, &relation_is_append_only)?;
        if view.emit_on_window_close {
            // Windows close only as the watermark of their time column moves.
            for (relation, time_column) in &lowered.windows {
                let (name, schema, column) = match self.catalog.by_id(*relation) {
                    Some(Relation::Table(t)) => (
                        t.name.clone(),
                        t.schema.clone(),
                        t.watermark.as_ref().map(|w| w.column),
                    ),
                    Some(Relation::Source(s)) => (
                        s.name.clone(),
                        s.schema.clone(),
                        s.watermark.map(|(c, _)| c),
                    ),
                    _ => continue,
                };
                if column.map(|c| schema.field(c).name().as_str()) != Some(time_column.as_str()) {
                    return Err(EddyError::InvalidParameter(format!(
                        "EMIT ON WINDOW CLOSE needs a watermark on {name}.{time_column}: declare \
                         WATERMARK FOR {time_column} AS {time_column} - INTERVAL '...' in its CREATE"
                    )));
                }
            }
        }
        let graph = lowered.graph;
        let mut fields: Vec<Field> = names
            .apply(&Arc::new(logical.schema().as_arrow().clone()))
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if !view.columns.is_empty() {
            if view.columns.len() > fields.len() {
                return Err(EddyError::Syntax(
                    "CREATE MATERIALIZED VIEW specifies more column names than columns".into(),
                ));
            }
            for (field, name) in fields.iter_mut().zip(&view.columns) {
                *field = field.clone().with_name(name);
            }
        }
        for (i, field) in fields.iter().enumerate() {
            if fields[..i].iter().any(|f| f.name() == field.name()) {
                return Err(EddyError::Planning {
                    sqlstate: "42701",
                    message: format!(
                        "column \"{}\" specified more than once; give the columns of the view distinct names with AS",
                        field.name()
                    ),
                });
            }
        }
        // The optimized plan may have narrowed types or nullability; the
        // view stores what its root operator produces.
        let optimized_schema = optimized.schema().as_arrow();
        for (field, produced) in fields.iter_mut().zip(optimized_schema.fields()) {
            *field = field
                .clone()
                .with_data_type(produced.data_type().clone())
                .with_nullable(true);
        }
        let schema = Arc::new(Schema::new(fields));
        let key = plan::derive_key(&optimized);
        // EMIT ON WINDOW CLOSE emits each window once: only insertions.
        let append_only =
            view.emit_on_window_close || plan::is_append_only(&optimized, &relation_is_append_only);
        Ok((
            plan::PlannedView {
                graph,
                schema,
                key,
                append_only,
            },
            optimized,
        ))
    }

    pub(super) async fn create_view(&self, view: CreateView) -> Result<StatementResult> {
        let _ddl = self.ddl_lock.lock().await;
        if self.catalog.get(&view.name).is_some() {
            if view.if_not_exists {
                return Ok(StatementResult::Command("CREATE MATERIALIZED VIEW".into()));
            }
            return Err(EddyError::DuplicateRelation(format!(
                "relation \"{}\" already exists",
                view.name
            )));
        }
        let (planned, _) = self.plan_view(&view).await?;
        self.start_view(view, planned, None).await?;
        Ok(StatementResult::Command("CREATE MATERIALIZED VIEW".into()))
    }

    /// Plans a view, backfills it in the runtime and registers it. Callers
    /// hold the DDL lock.
    pub(super) async fn start_view(
        &self,
        view: CreateView,
        planned: plan::PlannedView,
        owner_sink: Option<String>,
    ) -> Result<Arc<ViewEntry>> {
        let inputs = planned.graph.input_relations();
        // Hold the write locks of the input tables while the backfill
        // snapshot is taken and the view is handed to the runtime, so the
        // view sees each table change exactly once: in the snapshot or after.
        let mut tables: Vec<Arc<TableEntry>> = inputs
            .iter()
            .filter_map(|id| match self.catalog.by_id(*id) {
                Some(Relation::Table(t)) => Some(t),
                _ => None,
            })
            .collect();
        tables.sort_by_key(|t| t.id);
        let mut guards = Vec::with_capacity(tables.len());
        for table in &tables {
            guards.push(table.write_lock.lock().await);
        }
        let restored = self.take_restored_view(&view.name);
        let mut table_snapshots = Vec::with_capacity(tables.len());
        if restored.is_none() {
            for table in &tables {
                let rows = table.data().rows.to_change_batch()?;
                table_snapshots.push((table.id, rows));
            }
        }
        // Each source this view reads gets a reader of its own, from the
        // first row, under a relation id of its own.
        let mut graph = planned.graph;
        let mut readers = Vec::new();
        for input in &inputs {
            if let Some(Relation::Source(source)) = self.catalog.by_id(*input) {
                let reader = self.catalog.allocate_id();
                graph.rebind(source.id, reader);
                table_snapshots.push((
                    reader,
                    ChangeBatch::inserts(RecordBatch::new_empty(source.schema.clone())),
                ));
                readers.push((source, reader, Arc::new(AtomicBool::new(false))));
            }
        }
        let id = self.catalog.allocate_id();
        let reader_names: Vec<(RelationId, String)> = readers
            .iter()
            .map(|(source, reader, _)| (*reader, format!("{}/{}", view.name, source.name)))
            .collect();
        let resume: Vec<Option<ReaderPosition>> = match &restored {
            Some(_) => reader_names
                .iter()
                .map(|(_, name)| self.restored_position(name))
                .collect(),
            None => vec![None; reader_names.len()],
        };
        let restore = restored.map(|state| RestoredView {
            state,
            reader_watermarks: reader_names
                .iter()
                .filter_map(|(reader, name)| {
                    Some((*reader, self.restored_watermark(&format!("reader/{name}"))?))
                })
                .collect(),
            reader_positions: reader_names
                .iter()
                .zip(&resume)
                .filter_map(|((reader, _), position)| Some((*reader, position.clone()?)))
                .collect(),
            watermark: self.restored_watermark(&format!("view/{}", view.name)),
        });
        let reader_watermarks = restore
            .as_ref()
            .map(|r| r.reader_watermarks.clone())
            .unwrap_or_default();
        let columns_read: Vec<Option<Vec<usize>>> = readers
            .iter()
            .map(|(_, reader, _)| graph.columns_read(*reader))
            .collect();
        self.runtime
            .create_view(ViewSpec {
                id,
                name: view.name.clone(),
                schema: planned.schema.clone(),
                graph,
                table_snapshots,
                readers: reader_names,
                restore,
            })
            .await?;
        drop(guards);
        for (((source, reader, stop), resume), columns_read) in
            readers.iter().zip(resume).zip(columns_read)
        {
            let watermark = source
                .watermark
                .map(|(column, delay)| TableWatermark::new(column, delay));
            if let (Some(watermark), Some((_, w))) = (
                &watermark,
                reader_watermarks.iter().find(|(r, _)| r == reader),
            ) {
                watermark.resume_at(*w);
            }
            let spec = ReaderSpec {
                schema: source.schema.clone(),
                proctime: source.proctime.map(ProcessingTime::new),
                watermark,
                relation: *reader,
                view: view.name.clone(),
                runtime: self.runtime.clone(),
                stop: stop.clone(),
                resume,
                columns_read,
            };
            match self.restoring_state().as_mut() {
                // Recovering: readers start once every object is back, so
                // that no change reaches a view before its sinks exist.
                Some(restoring) => restoring
                    .deferred_readers
                    .push((source.connector.clone(), spec)),
                None => source.connector.spawn_reader(spec),
            }
        }
        let entry = Arc::new(ViewEntry {
            id,
            name: view.name,
            schema: planned.schema,
            definition: view.definition,
            inputs,
            key: planned.key,
            append_only: planned.append_only,
            owner_sink,
            source_readers: readers.into_iter().map(|(_, _, stop)| stop).collect(),
        });
        self.catalog.insert(Relation::View(entry.clone()))?;
        Ok(entry)
    }

    pub(super) async fn explain_view(&self, view: &CreateView) -> Result<StatementResult> {
        let (planned, _) = self.plan_view(view).await?;
        let mut lines = vec![format!("MaterializedView: {}", view.name)];
        lines.extend(
            planned
                .graph
                .explain()
                .into_iter()
                .map(|l| format!("  {l}")),
        );
        let batch = RecordBatch::try_new(
            explain_schema(),
            vec![Arc::new(StringArray::from(lines)) as ArrayRef],
        )?;
        Ok(rows(batch))
    }

    /// A watch on the backfills of view `name`, if it reads Kafka sources.
    pub(super) fn backfill_watch(&self, name: &str) -> Option<BackfillWatch> {
        let Some(Relation::View(view)) = self.catalog.get(name) else {
            return None;
        };
        let sources = kafka_inputs(&self.catalog, &view.inputs);
        (!sources.is_empty())
            .then(|| BackfillWatch::new(self.runtime.clone(), name.to_string(), sources))
    }
}
