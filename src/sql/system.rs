//! System tables in schema `eddy_catalog`, built when a query reads them:
//! - `materialized_views`: each view's row count, failed rows and status;
//! - `operator_stats`: rows in/out and state keys of every operator, the
//!   figures that show a view is maintained incrementally;
//! - `sinks`: each sink's target, status, progress and lag (= SHOW SINKS);
//! - `sources`: each source's connector and how many bad messages its
//!   readers skipped;
//! - `source_errors`: the bad messages sources skipped (the last 1000 per
//!   source), with where they were and why.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DFResult};

use crate::catalog::{Catalog, SinkEntry};
use crate::connectors::postgres::SinkMode;
use crate::runtime::checkpoint::CheckpointStats;
use crate::runtime::{RuntimeHandle, ViewStatus};

const TABLES: [&str; 6] = [
    "checkpoints",
    "materialized_views",
    "operator_stats",
    "sinks",
    "sources",
    "source_errors",
];

#[derive(Debug)]
pub struct SystemSchema {
    runtime: RuntimeHandle,
    catalog: Arc<Catalog>,
    checkpoints: CheckpointStats,
}

impl SystemSchema {
    pub fn new(
        runtime: RuntimeHandle,
        catalog: Arc<Catalog>,
        checkpoints: CheckpointStats,
    ) -> Self {
        Self {
            runtime,
            catalog,
            checkpoints,
        }
    }
}

/// `eddy_catalog.checkpoints`: the recent checkpoints, newest first.
fn checkpoints_batch(stats: &CheckpointStats) -> DFResult<RecordBatch> {
    let records: Vec<_> = stats.history.iter().rev().collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new(
            "completed_at",
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("duration_ms", DataType::Float64, false),
        Field::new("bytes_written", DataType::Int64, false),
        Field::new("state_bytes", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.id as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.epoch as i64),
            )),
            Arc::new(
                datafusion::arrow::array::TimestampMillisecondArray::from_iter_values(
                    records.iter().map(|r| r.completed_unix_ms as i64),
                ),
            ),
            Arc::new(datafusion::arrow::array::Float64Array::from_iter_values(
                records.iter().map(|r| r.duration.as_secs_f64() * 1e3),
            )),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.bytes_written as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.state_bytes as i64),
            )),
            Arc::new(StringArray::from_iter(
                records.iter().map(|r| r.error.clone()),
            )),
        ],
    )?)
}

/// The rows of `SHOW MATERIALIZED VIEWS` and `eddy_catalog.materialized_views`.
pub fn views_batch(views: &[ViewStatus]) -> DFResult<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("failed_rows", DataType::UInt64, false),
        Field::new("late_rows", DataType::UInt64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("last_error", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            views.iter().map(|v| v.name.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(views.iter().map(|v| v.rows))),
        Arc::new(UInt64Array::from_iter_values(
            views.iter().map(|v| v.rows_failed),
        )),
        Arc::new(UInt64Array::from_iter_values(
            views.iter().map(|v| v.late_rows),
        )),
        Arc::new(StringArray::from_iter_values(views.iter().map(
            |v| match &v.failed {
                Some(e) => format!("failed: {e}"),
                None => "running".to_string(),
            },
        ))),
        Arc::new(StringArray::from_iter(
            views.iter().map(|v| v.last_error.clone()),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The rows of `SHOW SINKS` and `eddy_catalog.sinks`; `epoch` is the last
/// published epoch, against which lag is counted.
pub fn sinks_batch(sinks: &[Arc<SinkEntry>], epoch: u64) -> DFResult<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("from", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("committed_epoch", DataType::UInt64, false),
        Field::new("lag_epochs", DataType::UInt64, false),
        Field::new("rows_written", DataType::UInt64, false),
    ]));
    let text = |f: &dyn Fn(&SinkEntry) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(sinks.iter().map(|s| f(s))))
    };
    let number = |f: &dyn Fn(&SinkEntry) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(sinks.iter().map(|s| f(s))))
    };
    let columns = vec![
        text(&|s| s.name.clone()),
        text(&|s| {
            if s.view_name.starts_with("__sink_") {
                "(query)".into()
            } else {
                s.view_name.clone()
            }
        }),
        text(&|s| s.target.clone()),
        text(&|s| match s.mode {
            SinkMode::Upsert => "upsert".into(),
            SinkMode::AppendOnly => "append-only".into(),
        }),
        text(&|s| s.status.describe()),
        number(&|s| s.status.committed_epoch()),
        number(&|s| epoch.saturating_sub(s.status.committed_epoch())),
        number(&|s| s.status.rows_written()),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn operators_batch(views: &[ViewStatus]) -> DFResult<RecordBatch> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("operator_id", DataType::Utf8, false),
        Field::new("operator", DataType::Utf8, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("rows_failed", DataType::UInt64, false),
        Field::new("late_rows", DataType::UInt64, false),
        Field::new("state_keys", DataType::UInt64, false),
    ]));
    let rows: Vec<(&str, &(u64, String, crate::stream::OperatorStats))> = views
        .iter()
        .flat_map(|v| v.operators.iter().map(move |o| (v.name.as_str(), o)))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|(v, _)| *v))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(_, o)| format!("{:016x}", o.0)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(_, o)| o.1.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|(_, o)| o.2.rows_in),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|(_, o)| o.2.rows_out),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|(_, o)| o.2.rows_failed),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|(_, o)| o.2.late_rows),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|(_, o)| o.2.state_keys),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The rows of `eddy_catalog.sources`.
fn sources_batch(catalog: &Catalog) -> DFResult<RecordBatch> {
    let (mut names, mut connectors, mut bad) = (vec![], vec![], vec![]);
    for relation in catalog.list() {
        let crate::catalog::Relation::Source(entry) = relation else {
            continue;
        };
        use crate::connectors::SourceConnector;
        let (connector, skipped) = match &entry.connector {
            SourceConnector::Kafka(config) => (
                format!("kafka topic {}", config.topic),
                config.errors.total(),
            ),
            SourceConnector::Datagen(_) => ("datagen".to_string(), 0),
            SourceConnector::Nexmark(_) => ("nexmark".to_string(), 0),
        };
        names.push(entry.name.clone());
        connectors.push(connector);
        bad.push(skipped);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, false),
        Field::new("bad_messages", DataType::UInt64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(connectors)),
            Arc::new(UInt64Array::from(bad)),
        ],
    )?)
}

/// The rows of `eddy_catalog.source_errors`.
fn source_errors_batch(catalog: &Catalog) -> DFResult<RecordBatch> {
    let (mut source, mut view, mut partition, mut offset, mut reason) =
        (vec![], vec![], vec![], vec![], vec![]);
    for relation in catalog.list() {
        let crate::catalog::Relation::Source(entry) = relation else {
            continue;
        };
        let crate::connectors::SourceConnector::Kafka(config) = &entry.connector else {
            continue;
        };
        for error in config.errors.recent() {
            source.push(entry.name.clone());
            view.push(error.view);
            partition.push(error.partition);
            offset.push(error.offset);
            reason.push(error.reason);
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(source)),
            Arc::new(StringArray::from(view)),
            Arc::new(datafusion::arrow::array::Int32Array::from(partition)),
            Arc::new(datafusion::arrow::array::Int64Array::from(offset)),
            Arc::new(StringArray::from(reason)),
        ],
    )?)
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if !TABLES.contains(&name) {
            return Ok(None);
        }
        if matches!(name, "source_errors" | "sources" | "checkpoints") {
            let batch = match name {
                "sources" => sources_batch(&self.catalog)?,
                "checkpoints" => checkpoints_batch(&self.checkpoints)?,
                _ => source_errors_batch(&self.catalog)?,
            };
            return Ok(Some(Arc::new(MemTable::try_new(
                batch.schema(),
                vec![vec![batch]],
            )?)));
        }
        if name == "sinks" {
            let batch = sinks_batch(&self.catalog.list_sinks(), self.runtime.published().epoch)?;
            return Ok(Some(Arc::new(MemTable::try_new(
                batch.schema(),
                vec![vec![batch]],
            )?)));
        }
        let (_, views) = self
            .runtime
            .status()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = match name {
            "materialized_views" => views_batch(&views)?,
            _ => operators_batch(&views)?,
        };
        Ok(Some(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
