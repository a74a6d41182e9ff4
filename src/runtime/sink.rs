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
    /// [`entry_key`]`(epoch, index) -> epoch, kind, weight, row`; index 0
    /// marks the epoch itself, so that an empty epoch is replayed too.
    /// Returns how many entries it wrote. (Older checkpoints numbered the
    /// backlog from 0 instead of by epoch, which reads the same.)
    pub(super) fn checkpoint(&self, codec: &RowCodec, delta: &mut StateDelta) -> Result<u64> {
        let key = |index: u64| entry_key(self.epoch, index);
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
        Ok(index + 1)
    }

    /// Reads back a sink's unacknowledged epochs (of a view of `schema`)
    /// from its checkpointed entries, or why its backlog was given up.
    pub fn restore_all(
        schema: SchemaRef,
        mut entries: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<RestoredBacklog> {
        if let Some(reason) = entries.remove(&overflow_key()) {
            return Ok(RestoredBacklog::GivenUp(
                String::from_utf8_lossy(&reason).into_owned(),
            ));
        }
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
        let epochs = epochs
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
            .collect::<Result<_>>()?;
        Ok(RestoredBacklog::Epochs(epochs))
    }

    /// The memory its rows take.
    fn bytes(&self) -> usize {
        self.changes
            .iter()
            .map(|c| c.rows.get_array_memory_size() + c.weights.len() * 8)
            .sum()
    }
}

/// A sink's backlog as a checkpoint held it.
#[derive(Debug)]
pub enum RestoredBacklog {
    /// The epochs the sink had not acknowledged.
    Epochs(Vec<SinkEpoch>),
    /// The backlog outgrew its bound and was dropped; the sink stays
    /// failed with this reason (writing later epochs would leave a gap).
    GivenUp(String),
}

/// A durable sink's backlog may hold this much (its rows in memory; the
/// checkpoints hold the same). A target that takes nothing for long enough
/// to pass it fails the sink instead of growing eddy's memory and
/// checkpoints without bound.
pub const SINK_BACKLOG_LIMIT_BYTES: usize = 512 << 20;

/// The checkpoint key of entry `index` of a backlog epoch (in epoch order).
fn entry_key(epoch: u64, index: u64) -> Vec<u8> {
    let mut key = epoch.to_be_bytes().to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The checkpoint key that marks a backlog given up (after every epoch's).
fn overflow_key() -> Vec<u8> {
    entry_key(u64::MAX, 0)
}

/// A durable sink's epochs captured by checkpoints and not yet
/// acknowledged, oldest first, bounded by [`SINK_BACKLOG_LIMIT_BYTES`].
///
/// Checkpointed incrementally: each epoch's entries are keyed by its epoch
/// number, written by the first checkpoint after it was captured, and
/// deleted by the first one after the sink acknowledged it (a backlog that
/// waits is not rewritten every second).
#[derive(Debug)]
pub(super) struct SinkBacklog {
    epochs: std::collections::VecDeque<BacklogEpoch>,
    bytes: usize,
    limit: usize,
    /// `(epoch, entries)` of acknowledged epochs some checkpoint holds.
    to_delete: Vec<(u64, u64)>,
    /// Write the whole backlog next time (a restored backlog may have been
    /// keyed otherwise).
    full_next: bool,
    given_up: Option<String>,
}

#[derive(Debug)]
struct BacklogEpoch {
    epoch: SinkEpoch,
    /// Handed to the sink task.
    sent: bool,
    /// Entries a checkpoint holds (`None`: none holds it yet).
    checkpointed: Option<u64>,
    bytes: usize,
}

impl SinkBacklog {
    pub(super) fn new(restored: Option<RestoredBacklog>, limit: usize) -> Self {
        let mut backlog = Self {
            epochs: Default::default(),
            bytes: 0,
            limit,
            to_delete: vec![],
            full_next: true,
            given_up: None,
        };
        match restored {
            None => {}
            Some(RestoredBacklog::GivenUp(reason)) => backlog.given_up = Some(reason),
            Some(RestoredBacklog::Epochs(epochs)) => {
                for epoch in epochs {
                    // Past the limit already: given up, as it would be.
                    let _ = backlog.push(epoch);
                }
            }
        }
        backlog
    }

    /// Drops the epochs the sink made durable (up to `committed`).
    pub(super) fn acknowledged(&mut self, committed: u64) {
        while let Some(first) = self.epochs.front() {
            if !(first.sent && first.epoch.epoch <= committed) {
                break;
            }
            let done = self.epochs.pop_front().expect("a first epoch");
            self.bytes -= done.bytes;
            if let Some(entries) = done.checkpointed {
                self.to_delete.push((done.epoch.epoch, entries));
            }
        }
    }

    /// Adds a captured epoch. Past the limit the whole backlog is dropped
    /// and `Err` says why (the sink must fail: it can never write
    /// everything in order again).
    pub(super) fn push(&mut self, epoch: SinkEpoch) -> std::result::Result<(), String> {
        if let Some(reason) = &self.given_up {
            return Err(reason.clone());
        }
        let bytes = epoch.bytes();
        self.bytes += bytes;
        self.epochs.push_back(BacklogEpoch {
            epoch,
            sent: false,
            checkpointed: None,
            bytes,
        });
        // The oldest epoch (the one being written, or next) is not counted:
        // one epoch larger than the limit, such as a new sink's first (the
        // view's rows), is written like any other.
        let waiting = self.bytes - self.epochs.front().map_or(0, |e| e.bytes);
        if waiting <= self.limit {
            return Ok(());
        }
        let reason = format!(
            "its target took nothing while {} epochs ({} MB) waited behind the one it is \
             writing, more than the {} MB a sink may keep; they were dropped, so the sink cannot \
             go on exactly-once: DROP SINK and CREATE SINK again to start over from the view",
            self.epochs.len() - 1,
            waiting >> 20,
            self.limit >> 20
        );
        self.epochs.clear();
        self.bytes = 0;
        self.to_delete.clear();
        self.full_next = true;
        self.given_up = Some(reason.clone());
        Err(reason)
    }

    /// The epochs not handed to the sink yet, up to `through`.
    pub(super) fn unsent_through(
        &mut self,
        through: u64,
    ) -> impl Iterator<Item = (&SinkEpoch, &mut bool)> {
        self.epochs
            .iter_mut()
            .filter(|e| !e.sent)
            .take_while(move |e| e.epoch.epoch <= through)
            .map(|e| (&e.epoch, &mut e.sent))
    }

    /// The backlog's entries for a checkpoint: what changed since the last
    /// one, or everything when `full`.
    pub(super) fn capture(&mut self, codec: &RowCodec, full: bool) -> Result<StateDelta> {
        let full = full || std::mem::take(&mut self.full_next);
        let mut delta = StateDelta::new(full);
        if let Some(reason) = &self.given_up {
            if full {
                delta.put(overflow_key(), reason.as_bytes());
            }
            return Ok(delta);
        }
        if !full {
            for (epoch, entries) in self.to_delete.drain(..) {
                for index in 0..entries {
                    delta.delete(entry_key(epoch, index));
                }
            }
        }
        self.to_delete.clear();
        for epoch in &mut self.epochs {
            if full || epoch.checkpointed.is_none() {
                let entries = epoch.epoch.checkpoint(codec, &mut delta)?;
                epoch.checkpointed = Some(entries);
            }
        }
        Ok(delta)
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
    /// The sink's name, for the log.
    name: String,
    state: Mutex<SinkState>,
    last_failure: Mutex<Option<String>>,
    progress: watch::Sender<Progress>,
    dropped: AtomicBool,
    /// Rows the target refused that the sink skipped (`on_error = 'skip'`).
    rejected: RecentLog<RejectedRow>,
    /// This sink's mark in its target (a Postgres sink's progress row):
    /// made at CREATE SINK, kept in the checkpoints, so that another eddy
    /// writing a sink of the same name into the same place is noticed
    /// instead of silently skipping this one's epochs.
    writer: Mutex<String>,
    /// The epoch a new sink was created at: its lag counts from there, not
    /// from epoch 0, until its first commit.
    created_epoch: std::sync::atomic::AtomicU64,
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

/// A fresh random mark for a new sink (16 hex digits).
fn new_writer_mark() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system's random source does not fail on the platforms eddy runs
    // on; a clock-based mark is still unique enough if it ever did.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = (chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    /// The status of sink `name` (which its log lines name).
    pub fn new(name: &str) -> Arc<Self> {
        let (progress, _) = watch::channel(Progress::default());
        Arc::new(Self {
            name: name.to_string(),
            state: Mutex::default(),
            last_failure: Mutex::default(),
            progress,
            dropped: AtomicBool::new(false),
            rejected: RecentLog::default(),
            writer: Mutex::new(new_writer_mark()),
            created_epoch: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A new sink starts at `epoch` (see [`Self::lag_epochs`]).
    pub fn created_at(&self, epoch: u64) {
        self.created_epoch.store(epoch, Ordering::Relaxed);
    }

    /// Epochs published after the last one this sink committed (or after
    /// the one it was created at, before its first commit).
    pub fn lag_epochs(&self, published_epoch: u64) -> u64 {
        let since = self
            .committed_epoch()
            .max(self.created_epoch.load(Ordering::Relaxed));
        published_epoch.saturating_sub(since)
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

    /// The sink retries because of `reason` (`None`: it stopped retrying).
    /// The log says so once when it starts retrying and once when it stops
    /// (here, or when it commits), not at every retry; returns whether this
    /// was such a change of state.
    pub(crate) fn retrying(&self, reason: Option<String>) -> bool {
        let mut state = self.state();
        if reason.is_some() {
            state.retries += 1;
        }
        let changed = state.retrying.is_some() != reason.is_some();
        match (&reason, changed) {
            (Some(reason), true) => tracing::warn!(
                sink = %self.name,
                "{reason}; retrying with backoff (SHOW SINKS shows the latest reason)"
            ),
            (None, true) => tracing::info!(sink = %self.name, "writing again"),
            _ => {}
        }
        state.retrying = reason;
        changed
    }

    /// Whether the sink is retrying now.
    #[cfg(test)]
    fn is_retrying(&self) -> bool {
        self.state().retrying.is_some()
    }

    pub(crate) fn fail(&self, error: String) {
        tracing::error!(sink = %self.name, error = %error, "sink failed");
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        let mut state = self.state();
        state.retrying = None;
        state.writing_since = None;
        drop(state);
        self.progress.send_modify(|p| p.failed = true);
    }

    /// The figures users read (rows written, rows skipped), for a
    /// checkpoint: they survive a restart.
    pub(crate) fn capture_counts(&self) -> StateDelta {
        let mut delta = StateDelta::new(true);
        let mut value = Encoder::new();
        value.u64(self.rows_written()).u64(self.rejected.total());
        delta.put(b"counts", value.finish());
        delta.put(b"writer", self.writer().as_bytes());
        delta
    }

    /// This sink's mark in its target (see the field).
    pub fn writer(&self) -> String {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes back what [`Self::capture_counts`] wrote.
    pub fn restore_counts(&self, entries: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
        if let Some(value) = entries.get(&b"counts"[..]) {
            let mut d = Decoder::new(value);
            self.state().rows_written += d.u64()?;
            self.rejected.add_to_total(d.u64()?);
        }
        if let Some(writer) = entries.get(&b"writer"[..]) {
            *self.writer.lock().unwrap_or_else(|p| p.into_inner()) =
                String::from_utf8_lossy(writer).into_owned();
        }
        Ok(())
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
        if state.retrying.take().is_some() {
            tracing::info!(sink = %self.name, epoch, "writing again");
        }
        state.writing_since = None;
        state.rows_written += rows;
        state.committed_unix_ms = Some(chrono::Utc::now().timestamp_millis());
        drop(state);
        self.progress.send_modify(|p| p.committed_epoch = epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn a_new_sinks_lag_counts_from_its_creation() {
        let status = SinkStatus::new("s");
        status.created_at(1075);
        assert_eq!(status.lag_epochs(1075), 0);
        assert_eq!(status.lag_epochs(1077), 2);
        status.committed(1077, 3);
        assert_eq!(status.lag_epochs(1080), 3);
        // A restored sink (no creation epoch) lags from what it committed.
        assert_eq!(SinkStatus::new("s").lag_epochs(5), 5);
    }

    #[test]
    fn retrying_is_a_change_of_state_once() {
        let status = SinkStatus::new("s");
        assert!(status.retrying(Some("refused".into())));
        assert!(!status.retrying(Some("refused again".into())));
        assert_eq!(status.retries(), 2);
        assert!(status.is_retrying());
        status.committed(1, 1);
        assert!(!status.is_retrying());
        assert!(status.retrying(Some("refused".into())));
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]))
    }

    fn epoch(epoch: u64, rows: usize) -> SinkEpoch {
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|_| "x".repeat(100)),
                )),
            ],
        )
        .unwrap();
        let weights = Int64Array::from(vec![1; rows]);
        SinkEpoch {
            epoch,
            changes: vec![ChangeBatch::new(batch, weights).unwrap()],
        }
    }

    /// Applies `delta` to `state` as a checkpoint chain would.
    fn apply(state: &mut BTreeMap<Vec<u8>, Vec<u8>>, delta: StateDelta) {
        let full = delta.full;
        let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = delta
            .entries()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))))
            .collect::<Result<_>>()
            .unwrap();
        if full {
            state.clear();
        }
        for (key, value) in entries {
            match value {
                Some(value) => state.insert(key, value),
                None => state.remove(&key),
            };
        }
    }

    fn epochs_of(state: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u64> {
        match SinkEpoch::restore_all(schema(), state.clone()).unwrap() {
            RestoredBacklog::Epochs(epochs) => epochs.iter().map(|e| e.epoch).collect(),
            RestoredBacklog::GivenUp(reason) => panic!("given up: {reason}"),
        }
    }

    #[test]
    fn checkpoints_hold_exactly_the_unacknowledged_epochs() {
        let codec = RowCodec::try_new(schema()).unwrap();
        let mut backlog = SinkBacklog::new(None, usize::MAX);
        let mut state = BTreeMap::new();
        for e in 1..=3 {
            backlog.push(epoch(e, 3)).unwrap();
        }
        apply(&mut state, backlog.capture(&codec, false).unwrap());
        assert_eq!(epochs_of(&state), vec![1, 2, 3]);
        // Two are handed over and acknowledged; one more comes.
        for (_, sent) in backlog.unsent_through(2) {
            *sent = true;
        }
        backlog.acknowledged(2);
        backlog.push(epoch(4, 0)).unwrap();
        let delta = backlog.capture(&codec, false).unwrap();
        assert!(!delta.full, "incremental once written whole");
        apply(&mut state, delta);
        assert_eq!(epochs_of(&state), vec![3, 4]);
        let restored = SinkEpoch::restore_all(schema(), state.clone()).unwrap();
        let RestoredBacklog::Epochs(restored) = restored else {
            panic!("epochs")
        };
        assert_eq!(restored[0].changes[0].num_rows(), 3);
        assert!(
            restored[1].changes.is_empty(),
            "an empty epoch comes back too"
        );
    }

    #[test]
    fn past_the_limit_the_backlog_is_given_up_for_good() {
        let codec = RowCodec::try_new(schema()).unwrap();
        let one = epoch(1, 100).bytes();
        let mut backlog = SinkBacklog::new(None, one * 2);
        let mut state = BTreeMap::new();
        // The first, being written, does not count: even one far larger.
        backlog.push(epoch(1, 1000)).unwrap();
        backlog.push(epoch(2, 100)).unwrap();
        backlog.push(epoch(3, 100)).unwrap();
        apply(&mut state, backlog.capture(&codec, false).unwrap());
        let reason = backlog.push(epoch(4, 100)).unwrap_err();
        assert!(reason.contains("CREATE SINK again"), "{reason}");
        assert!(backlog.push(epoch(5, 1)).is_err(), "stays given up");
        apply(&mut state, backlog.capture(&codec, false).unwrap());
        match SinkEpoch::restore_all(schema(), state).unwrap() {
            RestoredBacklog::GivenUp(restored) => assert_eq!(restored, reason),
            RestoredBacklog::Epochs(epochs) => panic!("{} epochs came back", epochs.len()),
        }
    }
}
