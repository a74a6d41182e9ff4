//! System tables in schema `eddy_catalog`, built when a query reads them:
//! - `materialized_views`: each view's row count, failed rows and status;
//! - `mv_stats`: each view's throughput, state, watermark and freshness;
//! - `operator_stats`: every operator's place in its view's graph, rows
//!   in/out (and per second), state keys and watermark: the figures that
//!   show a view is maintained incrementally;
//! - `sinks`: each sink's target, status, progress and lag (= SHOW SINKS);
//! - `sink_stats`: each sink's throughput, retries and last commit;
//! - `sink_errors`: the rows sinks skipped because their target refused
//!   them (`on_error = 'skip'`; the last 1000 per sink since eddy started,
//!   all of them in the target's `eddy_sink_errors` for a Postgres sink);
//! - `sources`: each source's connector and how many bad messages its
//!   readers skipped;
//! - `source_stats`: each source's throughput, lag and watermark;
//! - `source_partitions`: per Kafka partition and reading view, where the
//!   reader is, where the partition ends and the lag;
//! - `source_errors`: the bad messages sources skipped (the last 1000 per
//!   source), with where they were and why;
//! - `checkpoints`: the recent checkpoints;
//! - `jobs`: backfills and how far they are (= SHOW JOBS).
//!
//! The `*_stats` tables show the same figures as `/metrics` (both are
//! rendered from one [`Health`]); rates come from the [`Monitor`]'s last
//! seconds of samples and are NULL until it has two.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int32Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DFResult};

use super::columns::{some, Columns};
use super::health::{operator_key, sink_key, source_key, view_key, Health, Monitor};
use crate::catalog::{Catalog, SinkEntry};
use crate::runtime::checkpoint::CheckpointStats;
use crate::runtime::sink::SinkMode;
use crate::runtime::{RuntimeHandle, ViewStatus};

const TABLES: [&str; 12] = [
    "checkpoints",
    "jobs",
    "materialized_views",
    "mv_stats",
    "operator_stats",
    "sink_errors",
    "sink_stats",
    "sinks",
    "source_errors",
    "source_partitions",
    "source_stats",
    "sources",
];

/// `eddy_catalog.mv_stats`.
fn mv_stats_batch(health: &Health, monitor: &Monitor) -> DFResult<RecordBatch> {
    let views = &health.views;
    Columns::default()
        .text("name", some(views.iter().map(|v| &v.name)))
        .uint("rows", views.iter().map(|v| v.rows))
        .float(
            "changes_per_second",
            views
                .iter()
                .map(|v| monitor.rate(&view_key(&v.name, "changes"))),
        )
        .uint(
            "state_keys",
            views
                .iter()
                .map(|v| v.operators.iter().map(|o| o.stats.state_keys).sum()),
        )
        .uint("late_rows", views.iter().map(|v| v.late_rows))
        .uint("failed_rows", views.iter().map(|v| v.rows_failed))
        .timestamp("watermark", views.iter().map(|v| v.watermark))
        .float(
            "freshness_ms",
            views
                .iter()
                .map(|v| v.freshness.last_seconds.map(|s| s * 1e3)),
        )
        .float(
            "avg_freshness_ms",
            views.iter().map(|v| {
                let f = &v.freshness;
                (f.count > 0).then(|| f.sum_seconds * 1e3 / f.count as f64)
            }),
        )
        .text("status", some(views.iter().map(ViewStatus::status)))
        .batch()
}

/// `eddy_catalog.source_stats`.
fn source_stats_batch(health: &Health, monitor: &Monitor) -> DFResult<RecordBatch> {
    let sources = &health.sources;
    let rate = |what: &'static str| {
        sources
            .iter()
            .map(move |s| monitor.rate(&source_key(&s.name, what)))
    };
    Columns::default()
        .text("name", some(sources.iter().map(|s| &s.name)))
        .text("connector", some(sources.iter().map(|s| s.connector)))
        .text("topic", sources.iter().map(|s| s.topic.as_ref()))
        .int(
            "messages",
            sources.iter().map(|s| s.messages.map(|m| m as i64)),
        )
        .int("bytes", sources.iter().map(|s| s.bytes.map(|b| b as i64)))
        .float("messages_per_second", rate("messages"))
        .float("bytes_per_second", rate("bytes"))
        .int("lag_messages", sources.iter().map(|s| s.lag()))
        .uint("bad_messages", sources.iter().map(|s| s.bad_messages))
        .timestamp("watermark", sources.iter().map(|s| s.watermark()))
        .batch()
}

/// `eddy_catalog.source_partitions`.
fn source_partitions_batch(health: &Health) -> DFResult<RecordBatch> {
    let rows: Vec<_> = health
        .sources
        .iter()
        .flat_map(|s| s.partitions.iter().map(move |p| (s, p)))
        .collect();
    Columns::default()
        .text("source", some(rows.iter().map(|(s, _)| &s.name)))
        .text("view", some(rows.iter().map(|(_, ((v, _), _))| v)))
        .add(
            "partition",
            DataType::Int32,
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|(_, ((_, p), _))| *p),
            )),
        )
        .int("next_offset", rows.iter().map(|(_, (_, p))| p.next_offset))
        .int("high_offset", rows.iter().map(|(_, (_, p))| p.high_offset))
        .int("lag_messages", rows.iter().map(|(_, (_, p))| p.lag()))
        .timestamp("event_time", rows.iter().map(|(_, (_, p))| p.event_time))
        .uint(
            "bad_messages",
            rows.iter().map(|(_, (_, p))| p.bad_messages),
        )
        .batch()
}

/// `eddy_catalog.sink_stats`.
fn sink_stats_batch(health: &Health, monitor: &Monitor) -> DFResult<RecordBatch> {
    let sinks = &health.sinks;
    Columns::default()
        .text("name", some(sinks.iter().map(|s| &s.name)))
        .text("from", some(sinks.iter().map(|s| s.reads())))
        .uint(
            "rows_written",
            sinks.iter().map(|s| s.status.rows_written()),
        )
        .float(
            "rows_per_second",
            sinks
                .iter()
                .map(|s| monitor.rate(&sink_key(&s.name, "rows"))),
        )
        .uint("retries", sinks.iter().map(|s| s.status.retries()))
        .uint(
            "committed_epoch",
            sinks.iter().map(|s| s.status.committed_epoch()),
        )
        .uint(
            "lag_epochs",
            sinks.iter().map(|s| s.status.lag_epochs(health.epoch)),
        )
        .timestamp(
            "last_commit_at",
            sinks
                .iter()
                .map(|s| s.status.committed_unix_ms().map(|ms| ms * 1000)),
        )
        .text("status", some(sinks.iter().map(|s| s.status.describe())))
        .batch()
}

#[derive(Debug)]
pub struct SystemSchema {
    runtime: RuntimeHandle,
    catalog: Arc<Catalog>,
    checkpoints: CheckpointStats,
    monitor: Arc<Monitor>,
}

impl SystemSchema {
    pub fn new(
        runtime: RuntimeHandle,
        catalog: Arc<Catalog>,
        checkpoints: CheckpointStats,
        monitor: Arc<Monitor>,
    ) -> Self {
        Self {
            runtime,
            catalog,
            checkpoints,
            monitor,
        }
    }

    async fn health(&self) -> DFResult<Health> {
        Health::gather(&self.runtime, &self.catalog, self.checkpoints.clone())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// `eddy_catalog.checkpoints`: the recent checkpoints, newest first.
fn checkpoints_batch(stats: &CheckpointStats) -> DFResult<RecordBatch> {
    let records: Vec<_> = stats.history.iter().rev().collect();
    Columns::default()
        .int("id", records.iter().map(|r| Some(r.id as i64)))
        .int("epoch", records.iter().map(|r| Some(r.epoch as i64)))
        .timestamp_ms(
            "completed_at",
            records.iter().map(|r| Some(r.completed_unix_ms as i64)),
        )
        .float(
            "duration_ms",
            records.iter().map(|r| Some(r.duration.as_secs_f64() * 1e3)),
        )
        .int(
            "bytes_written",
            records.iter().map(|r| Some(r.bytes_written as i64)),
        )
        .int(
            "state_bytes",
            records.iter().map(|r| Some(r.state_bytes as i64)),
        )
        .text("error", records.iter().map(|r| r.error.as_ref()))
        .batch()
}

/// The rows of `SHOW MATERIALIZED VIEWS` and `eddy_catalog.materialized_views`.
pub fn views_batch(views: &[ViewStatus]) -> DFResult<RecordBatch> {
    let batch = view_memory_batch(views)?;
    Ok(batch.project(&(0..batch.num_columns() - 2).collect::<Vec<_>>())?)
}

/// The rows of `eddy_catalog.materialized_views`: those of `SHOW
/// MATERIALIZED VIEWS` and the bytes of each view's rows in memory and on
/// disk.
fn view_memory_batch(views: &[ViewStatus]) -> DFResult<RecordBatch> {
    Columns::default()
        .text("name", some(views.iter().map(|v| &v.name)))
        .uint("rows", views.iter().map(|v| v.rows))
        .uint("failed_rows", views.iter().map(|v| v.rows_failed))
        .uint("late_rows", views.iter().map(|v| v.late_rows))
        .text("status", some(views.iter().map(ViewStatus::status)))
        .text("last_error", views.iter().map(|v| v.last_error.as_ref()))
        .uint("memory_bytes", views.iter().map(|v| v.memory_bytes as u64))
        .uint("spilled_bytes", views.iter().map(|v| v.spilled_bytes))
        .batch()
}

/// The rows of `SHOW SINKS` and `eddy_catalog.sinks`; `epoch` is the last
/// published epoch, against which lag is counted.
pub fn sinks_batch(sinks: &[Arc<SinkEntry>], epoch: u64) -> DFResult<RecordBatch> {
    Columns::default()
        .text("name", some(sinks.iter().map(|s| &s.name)))
        .text("from", some(sinks.iter().map(|s| s.reads())))
        .text("target", some(sinks.iter().map(|s| &s.target)))
        .text(
            "type",
            some(sinks.iter().map(|s| match s.mode {
                SinkMode::Upsert => "upsert",
                SinkMode::AppendOnly => "append-only",
            })),
        )
        .text("status", some(sinks.iter().map(|s| s.status.describe())))
        .uint(
            "committed_epoch",
            sinks.iter().map(|s| s.status.committed_epoch()),
        )
        .uint(
            "lag_epochs",
            sinks.iter().map(|s| s.status.lag_epochs(epoch)),
        )
        .uint(
            "rows_written",
            sinks.iter().map(|s| s.status.rows_written()),
        )
        .uint(
            "rows_skipped",
            sinks.iter().map(|s| s.status.rejected().total()),
        )
        .batch()
}

/// The rows of `eddy_catalog.sink_errors`.
fn sink_errors_batch(sinks: &[Arc<SinkEntry>]) -> DFResult<RecordBatch> {
    let rows: Vec<_> = sinks
        .iter()
        .flat_map(|s| {
            s.status
                .rejected()
                .recent()
                .into_iter()
                .map(move |r| (&s.name, r))
        })
        .collect();
    Columns::default()
        .text("sink", some(rows.iter().map(|(s, _)| s)))
        .uint("epoch", rows.iter().map(|(_, r)| r.epoch))
        .text("key", some(rows.iter().map(|(_, r)| &r.key)))
        .text("reason", some(rows.iter().map(|(_, r)| &r.reason)))
        .batch()
}

fn operators_batch(
    views: &[ViewStatus],
    checkpoints: &CheckpointStats,
    monitor: &Monitor,
) -> DFResult<RecordBatch> {
    let rows: Vec<_> = views
        .iter()
        .flat_map(|v| v.operators.iter().map(move |o| (v.name.as_str(), o)))
        .collect();
    let rate = |what: &'static str| {
        rows.iter()
            .map(move |(v, o)| monitor.rate(&operator_key(v, o.id, what)))
    };
    // A figure of operators that can spill; NULL for the others.
    let spill = |figure: &dyn Fn(&crate::state::windowed::SpillStats) -> u64| {
        rows.iter()
            .map(|(_, o)| o.spill.as_ref().map(|s| figure(s) as i64))
            .collect::<Vec<_>>()
    };
    Columns::default()
        .text("view", some(rows.iter().map(|(v, _)| v)))
        .text(
            "operator_id",
            some(rows.iter().map(|(_, o)| format!("{:016x}", o.id))),
        )
        .text(
            "parent_id",
            rows.iter()
                .map(|(_, o)| o.parent.map(|p| format!("{p:016x}"))),
        )
        .text("operator", some(rows.iter().map(|(_, o)| &o.description)))
        .uint("rows_in", rows.iter().map(|(_, o)| o.stats.rows_in))
        .uint("rows_out", rows.iter().map(|(_, o)| o.stats.rows_out))
        .float("rows_in_per_second", rate("rows_in"))
        .float("rows_out_per_second", rate("rows_out"))
        .uint("rows_failed", rows.iter().map(|(_, o)| o.stats.rows_failed))
        .uint("late_rows", rows.iter().map(|(_, o)| o.stats.late_rows))
        .uint("state_keys", rows.iter().map(|(_, o)| o.stats.state_keys))
        .int(
            "state_bytes",
            rows.iter()
                .map(|(v, o)| checkpoints.operator_state_bytes(v, o.id).map(|b| b as i64)),
        )
        .int(
            "state_bytes_per_key",
            rows.iter().map(|(v, o)| {
                let bytes = checkpoints.operator_state_bytes(v, o.id)?;
                bytes.checked_div(o.stats.state_keys).map(|b| b as i64)
            }),
        )
        .int("memory_bytes", spill(&|s| s.memory_bytes as u64))
        .int("spilled_keys", spill(&|s| s.cold_keys))
        .int("spilled_bytes", spill(&|s| s.disk_bytes))
        .int("disk_reads", spill(&|s| s.disk_reads))
        .int("disk_hits", spill(&|s| s.disk_hits))
        .timestamp("watermark", rows.iter().map(|(_, o)| o.watermark))
        .batch()
}

/// The rows of `eddy_catalog.sources`.
fn sources_batch(catalog: &Catalog) -> DFResult<RecordBatch> {
    use crate::connectors::SourceConnector;
    let sources: Vec<(String, String, u64)> = catalog
        .list()
        .into_iter()
        .filter_map(|relation| match relation {
            crate::catalog::Relation::Source(entry) => Some(entry),
            _ => None,
        })
        .map(|entry| {
            let (connector, skipped) = match &entry.connector {
                SourceConnector::Kafka(config) => (
                    format!("kafka topic {}", config.topic),
                    config.errors.total(),
                ),
                SourceConnector::Datagen(_) => ("datagen".to_string(), 0),
                SourceConnector::Nexmark(_) => ("nexmark".to_string(), 0),
            };
            (entry.name.clone(), connector, skipped)
        })
        .collect();
    Columns::default()
        .text("name", some(sources.iter().map(|s| &s.0)))
        .text("connector", some(sources.iter().map(|s| &s.1)))
        .uint("bad_messages", sources.iter().map(|s| s.2))
        .batch()
}

/// The rows of `eddy_catalog.source_errors`.
fn source_errors_batch(catalog: &Catalog) -> DFResult<RecordBatch> {
    let mut errors = vec![];
    for relation in catalog.list() {
        let crate::catalog::Relation::Source(entry) = relation else {
            continue;
        };
        let crate::connectors::SourceConnector::Kafka(config) = &entry.connector else {
            continue;
        };
        errors.extend(
            config
                .errors
                .recent()
                .into_iter()
                .map(|e| (entry.name.clone(), e)),
        );
    }
    Columns::default()
        .text("source", some(errors.iter().map(|(s, _)| s)))
        .text("view", some(errors.iter().map(|(_, e)| &e.view)))
        .add(
            "partition",
            DataType::Int32,
            Arc::new(Int32Array::from_iter_values(
                errors.iter().map(|(_, e)| e.partition),
            )),
        )
        .int("offset", errors.iter().map(|(_, e)| Some(e.offset)))
        .text("reason", some(errors.iter().map(|(_, e)| &e.reason)))
        .batch()
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        let batch = match name {
            "sources" => sources_batch(&self.catalog)?,
            "source_errors" => source_errors_batch(&self.catalog)?,
            "sink_errors" => sink_errors_batch(&self.catalog.list_sinks())?,
            "checkpoints" => checkpoints_batch(&self.checkpoints)?,
            "jobs" => super::jobs::jobs_batch(&self.catalog)
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
            "sinks" => sinks_batch(&self.catalog.list_sinks(), self.runtime.published().epoch)?,
            "materialized_views" => view_memory_batch(&self.health().await?.views)?,
            "operator_stats" => operators_batch(
                &self.health().await?.views,
                &self.checkpoints,
                &self.monitor,
            )?,
            "mv_stats" => mv_stats_batch(&self.health().await?, &self.monitor)?,
            "source_stats" => source_stats_batch(&self.health().await?, &self.monitor)?,
            "source_partitions" => source_partitions_batch(&self.health().await?)?,
            "sink_stats" => sink_stats_batch(&self.health().await?, &self.monitor)?,
            _ => return Ok(None),
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
