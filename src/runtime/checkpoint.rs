//! The checkpoint coordinator: decides what each checkpoint captures
//! (incremental or whole, per state table), writes it through the
//! [`CheckpointStore`], and keeps the figures operators watch.
//!
//! One checkpoint at a time: [`Checkpointer::begin`] hands out the single
//! [`CheckpointRun`], so checkpoints are totally ordered and each one's
//! deltas are relative to the one before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{EddyError, Result};
use crate::state::checkpoint::{Capture, CaptureRequest, CheckpointStore, Manifest};

/// The default time between checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Checkpoints remembered for `eddy_catalog.checkpoints` and the metrics.
const HISTORY: usize = 64;

/// One completed (or failed) checkpoint, for status displays.
#[derive(Debug, Clone)]
pub struct CheckpointRecord {
    pub id: u64,
    pub epoch: u64,
    pub completed_unix_ms: u64,
    pub duration: Duration,
    pub bytes_written: u64,
    /// Bytes a recovery from it reads.
    pub state_bytes: u64,
    pub error: Option<String>,
}

/// Checkpoint figures since start.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    pub completed: u64,
    pub failed: u64,
    pub history: VecDeque<CheckpointRecord>,
    /// Key and value bytes of each state table in the last completed
    /// checkpoint's runs (every version a recovery reads), by state table
    /// name (`view/<v>/op/<pos>-<id>`, ...).
    pub state_table_bytes: std::collections::BTreeMap<String, u64>,
}

impl CheckpointStats {
    /// Bytes of the state of operator `id` of view `view` in the last
    /// completed checkpoint.
    pub fn operator_state_bytes(&self, view: &str, id: u64) -> Option<u64> {
        let prefix = format!("view/{view}/op/");
        let suffix = format!("-{id:016x}");
        self.state_table_bytes
            .iter()
            .find(|(name, _)| name.starts_with(&prefix) && name.ends_with(&suffix))
            .map(|(_, bytes)| *bytes)
    }
}

impl CheckpointStats {
    /// The last completed checkpoint's record.
    pub fn last_completed(&self) -> Option<&CheckpointRecord> {
        self.history.iter().rev().find(|r| r.error.is_none())
    }
}

struct Progress {
    previous: Option<Manifest>,
    next_id: u64,
    /// The last attempt failed after the runtime handed over its changes:
    /// capture everything whole next time.
    retry_whole: bool,
}

pub struct Checkpointer {
    store: CheckpointStore,
    progress: tokio::sync::Mutex<Progress>,
    stats: Mutex<CheckpointStats>,
    interval_ms: AtomicU64,
    /// Set at shutdown, after the final checkpoint: no more checkpoints
    /// (another process may own the store by then).
    closed: AtomicBool,
}

/// The right to take the next checkpoint (one at a time).
pub struct CheckpointRun<'a> {
    checkpointer: &'a Checkpointer,
    progress: tokio::sync::MutexGuard<'a, Progress>,
    started: Instant,
}

impl Checkpointer {
    pub fn new(store: CheckpointStore, interval: Duration) -> Self {
        Self {
            store,
            progress: tokio::sync::Mutex::new(Progress {
                previous: None,
                next_id: 1,
                retry_whole: false,
            }),
            stats: Mutex::default(),
            interval_ms: AtomicU64::new(interval.as_millis() as u64),
            closed: AtomicBool::new(false),
        }
    }

    /// Refuses every later checkpoint; waits for one in progress to end.
    pub async fn close(&self) {
        let _progress = self.progress.lock().await;
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    /// `SET checkpoint_interval`: 0 turns periodic checkpoints off (DDL,
    /// FLUSH and shutdown still take one).
    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CheckpointStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Continues after a restored checkpoint: the next one builds on it.
    pub async fn resume_after(&self, manifest: Manifest) {
        let mut progress = self.progress.lock().await;
        progress.next_id = progress.next_id.max(manifest.id + 1);
        progress.previous = Some(manifest);
    }

    /// Numbers the next checkpoint after every one already in the store.
    pub async fn continue_numbering(&self) -> Result<()> {
        let newest = self.store.checkpoint_ids().await?.first().copied();
        let mut progress = self.progress.lock().await;
        if let Some(newest) = newest {
            progress.next_id = progress.next_id.max(newest + 1);
        }
        Ok(())
    }

    /// The epoch of the last complete checkpoint, if any.
    pub async fn last_epoch(&self) -> Option<u64> {
        self.progress
            .lock()
            .await
            .previous
            .as_ref()
            .map(|m| m.epoch)
    }

    /// Waits for the right to take the next checkpoint.
    pub async fn begin(&self) -> Result<CheckpointRun<'_>> {
        let progress = self.progress.lock().await;
        if self.is_closed() {
            return Err(EddyError::Shutdown(
                "eddy is shutting down: no more checkpoints".into(),
            ));
        }
        Ok(CheckpointRun {
            checkpointer: self,
            progress,
            started: Instant::now(),
        })
    }

    fn record(&self, record: CheckpointRecord) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if record.error.is_some() {
            stats.failed += 1;
        } else {
            stats.completed += 1;
        }
        stats.history.push_back(record);
        while stats.history.len() > HISTORY {
            stats.history.pop_front();
        }
    }
}

impl CheckpointRun<'_> {
    /// What the runtime is to capture.
    pub fn request(&self) -> CaptureRequest {
        match (&self.progress.previous, self.progress.retry_whole) {
            (Some(previous), false) => previous.next_request(),
            _ => CaptureRequest {
                all_full: true,
                ..CaptureRequest::default()
            },
        }
    }

    /// Writes the captured state and the catalog as the next checkpoint.
    /// `capture` is the runtime's answer; an error there counts as a
    /// failed checkpoint too.
    pub async fn complete(
        mut self,
        capture: Result<Capture>,
        catalog: Vec<String>,
    ) -> Result<Manifest> {
        let id = self.progress.next_id;
        let result = match capture {
            Ok(capture) => {
                let epoch = capture.epoch;
                self.checkpointer
                    .store
                    .write(id, self.progress.previous.as_ref(), capture, catalog)
                    .await
                    .map_err(|e| (epoch, e))
            }
            Err(e) => Err((0, e)),
        };
        self.progress.next_id += 1;
        let duration = self.started.elapsed();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        match result {
            Ok(manifest) => {
                self.progress.retry_whole = false;
                self.checkpointer.record(CheckpointRecord {
                    id,
                    epoch: manifest.epoch,
                    completed_unix_ms: now_ms,
                    duration,
                    bytes_written: manifest.bytes_written,
                    state_bytes: manifest.state_bytes(),
                    error: None,
                });
                tracing::debug!(
                    id,
                    epoch = manifest.epoch,
                    bytes = manifest.bytes_written,
                    ms = duration.as_secs_f64() * 1e3,
                    "checkpoint complete"
                );
                self.checkpointer
                    .stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .state_table_bytes = manifest.state_table_bytes();
                self.progress.previous = Some(manifest.clone());
                Ok(manifest)
            }
            Err((epoch, e)) => {
                self.progress.retry_whole = true;
                tracing::error!(id, error = %e, "checkpoint failed");
                self.checkpointer.record(CheckpointRecord {
                    id,
                    epoch,
                    completed_unix_ms: now_ms,
                    duration,
                    bytes_written: 0,
                    state_bytes: 0,
                    error: Some(e.to_string()),
                });
                Err(match e {
                    EddyError::Checkpoint(_) => e,
                    other => EddyError::Checkpoint(other.to_string()),
                })
            }
        }
    }
}
