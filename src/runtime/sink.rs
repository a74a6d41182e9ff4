//! The contract between the runtime and a durable sink task (Postgres,
//! Kafka): the runtime hands a sink its view's changes one [`SinkEpoch`] at
//! a time, once the checkpoint holding them is complete; the sink reports
//! back through its [`SinkStatus`] which epoch it has made durable, and
//! the runtime keeps every epoch after that in each checkpoint until it
//! does. FLUSH, SHOW SINKS and the system tables read the same status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::watch;

use crate::common::recent::RecentLog;
use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};
use crate::state::checkpoint::StateDelta;
use crate::state::codec::{Decoder, Encoder};
use crate::state::RowCodec;

/// A view's changes in one epoch, for one sink.
#[derive(Debug, Clone)]
pub struct SinkEpoch {
    pub epoch: u64,
    pub changes: Vec<ChangeBatch>,
}

impl SinkEpoch {
    /// Writes this (unacknowledged) epoch into a checkpoint as entries
    /// `(position, index) -> epoch, kind, weight, row`; index 0 marks the
    /// epoch itself, so that an empty epoch is replayed too.
    pub(super) fn checkpoint(
        &self,
        codec: &RowCodec,
        position: u64,
        delta: &mut StateDelta,
    ) -> Result<()> {
        let key = |index: u64| {
            let mut key = position.to_be_bytes().to_vec();
            key.extend_from_slice(&index.to_be_bytes());
            key
        };
        let mut marker = Encoder::new();
        marker.u64(self.epoch).u8(0);
        delta.put(key(0), marker.finish());
        let mut index = 0u64;
        for change in &self.changes {
            let rows = codec.encode(&change.rows)?;
            for (row, weight) in rows.iter().zip(change.weights.values().iter()) {
                index += 1;
                let mut value = Encoder::new();
                value.u64(self.epoch).u8(1).i64(*weight).bytes(row);
                delta.put(key(index), value.finish());
            }
        }
        Ok(())
    }

    /// Reads back a sink's unacknowledged epochs (of a view of `schema`)
    /// from its checkpointed entries.
    pub fn restore_all(
        schema: SchemaRef,
        entries: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Vec<SinkEpoch>> {
        let codec = RowCodec::try_new(schema)?;
        // (epoch, its rows as (encoded row, weight))
        type EpochRows = (u64, Vec<(Vec<u8>, i64)>);
        let mut epochs: Vec<EpochRows> = Vec::new();
        for (key, value) in entries {
            let mut d = Decoder::new(&value);
            let epoch = d.u64()?;
            let is_row = d.u8()? == 1;
            if !is_row || key.get(8..) == Some(&0u64.to_be_bytes()[..]) {
                epochs.push((epoch, Vec::new()));
            }
            if is_row {
                let weight = d.i64()?;
                let row = d.bytes()?.to_vec();
                match epochs.last_mut() {
                    Some((_, rows)) => rows.push((row, weight)),
                    None => return Err(EddyError::Checkpoint("sink epoch without marker".into())),
                }
            }
        }
        epochs
            .into_iter()
            .map(|(epoch, rows)| {
                let changes = if rows.is_empty() {
                    vec![]
                } else {
                    let batch = codec.decode(rows.iter().map(|(r, _)| r.as_slice()))?;
                    let weights = datafusion::arrow::array::Int64Array::from(
                        rows.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
                    );
                    vec![ChangeBatch::new(batch, weights)?]
                };
                Ok(SinkEpoch { epoch, changes })
            })
            .collect()
    }
}

/// How a sink applies a view's changes to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    Upsert,
    AppendOnly,
}

/// What the sink reports; shared with SHOW SINKS and FLUSH.
#[derive(Debug)]
pub struct SinkStatus {
    state: Mutex<SinkState>,
    last_failure: Mutex<Option<String>>,
    progress: watch::Sender<Progress>,
    dropped: AtomicBool,
    /// Rows the target refused that the sink skipped (`on_error = 'skip'`).
    rejected: RecentLog<RejectedRow>,
}

/// A row a sink skipped because its target refused it, as
/// `eddy_catalog.sink_errors` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub epoch: u64,
    /// The row's key columns as JSON (all columns for a keyless sink).
    pub key: String,
    /// What the target said (with its SQLSTATE where it has one).
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
struct SinkState {
    retrying: Option<String>,
    rows_written: u64,
    /// Errors the sink retried after.
    retries: u64,
    /// When the sink began writing the epoch it has not committed yet.
    writing_since: Option<std::time::Instant>,
    /// When the last epoch was committed (Unix ms).
    committed_unix_ms: Option<i64>,
}

/// A sink that has been writing one epoch this long without committing it
/// shows as `stalled` (whatever it is waiting for: a retry, or a target
/// that accepted the connection and never answers).
pub const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The last epoch the sink has made durable, and whether it has failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub committed_epoch: u64,
    pub failed: bool,
}

impl SinkStatus {
    pub fn new(start_epoch: u64) -> Arc<Self> {
        let (progress, _) = watch::channel(Progress {
            committed_epoch: start_epoch,
            failed: false,
        });
        Arc::new(Self {
            state: Mutex::default(),
            last_failure: Mutex::default(),
            progress,
            dropped: AtomicBool::new(false),
            rejected: RecentLog::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `running`, `retrying: <reason>`, `stalled: ...` (no epoch written
    /// for [`STALLED_AFTER`]) or `failed: <reason>`.
    pub fn describe(&self) -> String {
        if let Some(error) = self.failure() {
            return format!("failed: {error}");
        }
        let state = self.state();
        let stalled = state
            .writing_since
            .map(|since| since.elapsed())
            .filter(|waited| *waited >= STALLED_AFTER);
        match (stalled, &state.retrying) {
            (Some(waited), Some(reason)) => format!(
                "stalled: no epoch written for {} s; retrying: {reason}",
                waited.as_secs()
            ),
            (Some(waited), None) => format!(
                "stalled: no epoch written for {} s; the target has not answered",
                waited.as_secs()
            ),
            (None, Some(reason)) => format!("retrying: {reason}"),
            (None, None) => "running".into(),
        }
    }

    /// The sink starts writing an epoch (see [`Self::describe`]).
    pub(crate) fn writing(&self) {
        let mut state = self.state();
        if state.writing_since.is_none() {
            state.writing_since = Some(std::time::Instant::now());
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn committed_epoch(&self) -> u64 {
        self.progress.borrow().committed_epoch
    }

    pub fn rows_written(&self) -> u64 {
        self.state().rows_written
    }

    /// Waits until `epoch` is durable in Postgres, or the sink has failed.
    pub async fn wait_for(&self, epoch: u64) {
        let mut progress = self.progress.subscribe();
        let _ = progress
            .wait_for(|p| p.failed || p.committed_epoch >= epoch)
            .await;
    }

    /// Tells the task to stop retrying and discard what it holds.
    pub fn mark_dropped(&self) {
        self.dropped.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.progress.borrow().failed
    }

    /// Errors the sink retried after.
    pub fn retries(&self) -> u64 {
        self.state().retries
    }

    /// When the sink last committed an epoch (Unix ms).
    pub fn committed_unix_ms(&self) -> Option<i64> {
        self.state().committed_unix_ms
    }

    pub(crate) fn retrying(&self, reason: Option<String>) {
        let mut state = self.state();
        if reason.is_some() {
            state.retries += 1;
        }
        state.retrying = reason;
    }

    pub(crate) fn fail(&self, error: String) {
        tracing::error!(error = %error, "sink failed");
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        let mut state = self.state();
        state.retrying = None;
        state.writing_since = None;
        drop(state);
        self.progress.send_modify(|p| p.failed = true);
    }

    /// The rows skipped so far (the last 1000), and how many in all.
    pub fn rejected(&self) -> &RecentLog<RejectedRow> {
        &self.rejected
    }

    /// The sink committed `epoch` without the rows in `skipped`.
    pub(crate) fn committed_skipping(&self, epoch: u64, rows: u64, skipped: Vec<RejectedRow>) {
        for row in skipped {
            tracing::warn!(epoch = row.epoch, key = %row.key, reason = %row.reason, "sink skipped a row");
            self.rejected.record(row);
        }
        self.committed(epoch, rows);
    }

    pub(crate) fn committed(&self, epoch: u64, rows: u64) {
        let mut state = self.state();
        state.retrying = None;
        state.writing_since = None;
        state.rows_written += rows;
        state.committed_unix_ms = Some(chrono::Utc::now().timestamp_millis());
        drop(state);
        self.progress.send_modify(|p| p.committed_epoch = epoch);
    }
}
