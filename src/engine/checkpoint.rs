//! Checkpoints and recovery. A checkpoint is a barrier through the runtime
//! taken with the catalog as of the same moment (under the DDL lock); FLUSH
//! is a checkpoint that also waits for the sinks. Recovery replays the
//! checkpointed catalog's DDL with a [`Restoring`] context: each object is
//! restored from its checkpointed state instead of backfilled, and source
//! readers start only once every object is back.

use super::session::Session;
use super::{Engine, StatementResult};
use crate::connectors::{ReaderSpec, SourceConnector};
use crate::error::{EddyError, Result};
use crate::state::checkpoint::{Manifest, ReaderPosition, RestoredState, RestoredTable};
use crate::state::wal::WalRecord;

/// FLUSH waits at most this long for the sinks to write its checkpoint.
const FLUSH_SINK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The write-ahead log is trimmed at most this often.
const WAL_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A recovery in progress: the checkpoint being restored, and the source
/// readers to start when every object is back.
pub(super) struct Restoring {
    pub(super) state: RestoredState,
    pub(super) deferred_readers: Vec<(SourceConnector, ReaderSpec)>,
}

impl Engine {
    /// Takes a checkpoint now: a barrier through the runtime (with the
    /// catalog as of the same moment), the state written, then the durable
    /// sinks told they may commit its epoch.
    pub async fn checkpoint(&self) -> Result<Manifest> {
        let run = self.checkpoints.begin().await?;
        let request = run.request();
        let (capture, catalog, new_tables) = {
            let _ddl = self.ddl_lock.lock().await;
            let mut capture = self.runtime.capture(request).await;
            if let Ok(capture) = &mut capture {
                self.capture_source_counts(capture);
            }
            (capture, self.catalog.ddl_log(), self.tables_not_durable())
        };
        let manifest = run.complete(capture, catalog).await?;
        // The checkpoint holds them now: they take writes.
        for table in new_tables {
            table
                .durable
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.runtime.checkpoint_done(manifest.epoch).await?;
        self.trim_wal().await;
        Ok(manifest)
    }

    /// The tables no checkpoint holds yet.
    fn tables_not_durable(&self) -> Vec<std::sync::Arc<crate::catalog::TableEntry>> {
        self.catalog
            .list()
            .into_iter()
            .filter_map(|relation| match relation {
                crate::catalog::Relation::Table(table)
                    if !table.durable.load(std::sync::atomic::Ordering::Acquire) =>
                {
                    Some(table)
                }
                _ => None,
            })
            .collect()
    }

    /// Each Kafka source's bad-message count (`source/<name>/errors`), so
    /// that it survives a restart.
    fn capture_source_counts(&self, capture: &mut crate::state::checkpoint::Capture) {
        for relation in self.catalog.list() {
            if let crate::catalog::Relation::Source(source) = relation {
                if let SourceConnector::Kafka(config) = &source.connector {
                    capture.states.insert(
                        format!("source/{}/errors", source.name),
                        config.errors.capture(),
                    );
                }
            }
        }
    }

    /// Deletes the write-ahead log segments every retained checkpoint
    /// holds (at most every [`WAL_TRIM_INTERVAL`]; a failure only waits
    /// for the next time: the log is kept whole meanwhile).
    async fn trim_wal(&self) {
        let Some(wal) = &self.wal else {
            return;
        };
        {
            let mut last = self.wal_trimmed.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < WAL_TRIM_INTERVAL) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let positions = match self.checkpoints.store().retained_table_lsns().await {
            Ok(positions) => positions,
            Err(e) => {
                tracing::warn!(error = %e, "write-ahead log not trimmed: cannot read the retained checkpoints");
                return;
            }
        };
        // A record is needed while a checkpoint that holds its table holds
        // an older position of it.
        let needed = Box::new(move |relation: &str, lsn: u64| {
            let name = format!("table/{relation}");
            positions
                .iter()
                .any(|tables| tables.get(&name).is_some_and(|&covered| lsn > covered))
        });
        if let Err(e) = wal.retain(needed).await {
            tracing::warn!(error = %e, "write-ahead log not trimmed");
        }
    }

    /// Takes a checkpoint and keeps it as the named snapshot (a savepoint:
    /// never garbage-collected; `eddy --from-snapshot <name>` starts from it).
    pub async fn snapshot(&self, name: &str) -> Result<Manifest> {
        let manifest = self.checkpoint().await?;
        self.checkpoints
            .store()
            .save_snapshot(name, &manifest)
            .await?;
        Ok(manifest)
    }

    /// Rebuilds everything a checkpoint holds: replays its catalog, each
    /// object restored from its checkpointed state instead of backfilled,
    /// source readers resumed where the checkpoint had them.
    pub async fn recover(
        &self,
        manifest: Manifest,
        restored: RestoredState,
        wal_records: Vec<WalRecord>,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let epoch = restored.epoch;
        *self.restoring_state() = Some(Restoring {
            state: restored,
            deferred_readers: Vec::new(),
        });
        let mut session = Session::default();
        for ddl in &manifest.catalog {
            let result = match crate::sql::parse_statement(ddl) {
                Ok(statement) => self.execute_sql(&mut session, ddl, statement, vec![]).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                *self.restoring_state() = None;
                return Err(EddyError::Checkpoint(format!(
                    "checkpoint {} cannot be restored: `{ddl}` failed: {e}",
                    manifest.id
                )));
            }
        }
        let restoring = self.restoring_state().take();
        self.runtime.resume_epoch(epoch).await?;
        // The writes acknowledged after the checkpoint, before any source
        // reader starts (tables and views as they were at the crash).
        let replayed = self
            .replay_wal(wal_records, &manifest.meta.table_lsns)
            .await?;
        for (connector, spec) in restoring.map(|r| r.deferred_readers).unwrap_or_default() {
            connector.spawn_reader(spec);
        }
        tracing::info!(
            checkpoint = manifest.id,
            epoch,
            objects = manifest.catalog.len(),
            replayed_writes = replayed,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "recovered from checkpoint"
        );
        self.checkpoints.resume_after(manifest).await;
        Ok(())
    }

    pub(super) fn restoring_state(&self) -> std::sync::MutexGuard<'_, Option<Restoring>> {
        self.restoring.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_restoring(&self) -> bool {
        self.restoring_state().is_some()
    }

    /// Takes checkpointed state table `name`, when restoring (read when
    /// its entries are asked for).
    pub(super) fn take_restored(&self, name: &str) -> Option<RestoredTable> {
        self.restoring_state().as_mut()?.state.remove(name)
    }

    pub(super) fn restored_watermark(&self, name: &str) -> Option<i64> {
        self.restoring_state()
            .as_ref()?
            .state
            .meta
            .watermarks
            .get(name)
            .copied()
    }

    /// A restored table's write-ahead log position.
    pub(super) fn restored_table_lsn(&self, name: &str) -> Option<u64> {
        self.restoring_state()
            .as_ref()?
            .state
            .meta
            .table_lsns
            .get(name)
            .copied()
    }

    pub(super) fn restored_position(&self, reader: &str) -> Option<ReaderPosition> {
        self.restoring_state()
            .as_ref()?
            .state
            .meta
            .readers
            .get(reader)
            .cloned()
    }

    /// Takes everything checkpointed under `view/<name>/`.
    pub(super) fn take_restored_view(&self, name: &str) -> Option<RestoredState> {
        let mut guard = self.restoring_state();
        let restoring = &mut guard.as_mut()?.state;
        let prefix = format!("view/{name}/");
        if !restoring.contains(&format!("{prefix}rows")) {
            return None;
        }
        let keys: Vec<String> = restoring
            .names()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        let mut view = RestoredState::default();
        for key in keys {
            if let Some(table) = restoring.remove(&key) {
                view.insert(key, table);
            }
        }
        Some(view)
    }

    /// `FLUSH`: a checkpoint (every change before it is visible, durable,
    /// and handed to the sinks), then a wait for every sink that has not
    /// failed to commit it.
    pub(super) async fn flush(&self) -> Result<StatementResult> {
        let manifest = self.checkpoint().await?;
        let deadline = tokio::time::Instant::now() + FLUSH_SINK_WAIT;
        let mut behind = Vec::new();
        let mut notices = Vec::new();
        for sink in self.catalog.list_sinks() {
            let skipped = sink.status.rejected().total();
            if skipped > 0 {
                notices.push(format!(
                    "sink {} has skipped {skipped} row(s) its target refused (on_error = 'skip'); \
                     see eddy_catalog.sink_errors",
                    sink.name
                ));
            }
            let written = tokio::time::timeout_at(deadline, sink.status.wait_for(manifest.epoch))
                .await
                .is_ok();
            if let Some(failure) = sink.status.failure() {
                behind.push(format!("sink {} failed: {failure}", sink.name));
            } else if !written {
                behind.push(format!(
                    "sink {} has not written it within {} s ({})",
                    sink.name,
                    FLUSH_SINK_WAIT.as_secs(),
                    sink.status.describe()
                ));
            }
        }
        if !behind.is_empty() {
            return Err(EddyError::Planning {
                sqlstate: "55000",
                message: format!(
                    "FLUSH: every change is visible and checkpointed (epoch {}), but {}",
                    manifest.epoch,
                    behind.join("; ")
                ),
            });
        }
        let flushed = StatementResult::Command("FLUSH".into());
        if notices.is_empty() {
            return Ok(flushed);
        }
        Ok(StatementResult::Noticed {
            notices,
            then: Box::new(flushed),
        })
    }

    /// `CHECKPOINT`.
    pub(super) async fn checkpoint_statement(&self) -> Result<StatementResult> {
        self.checkpoint().await?;
        Ok(StatementResult::Command("CHECKPOINT".into()))
    }

    /// `CREATE SNAPSHOT name`.
    pub(super) async fn snapshot_statement(&self, name: &str) -> Result<StatementResult> {
        self.snapshot(name).await?;
        Ok(StatementResult::Command("CREATE SNAPSHOT".into()))
    }
}
