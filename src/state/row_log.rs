//! An append-only log of row batches: how a view holds the rows that
//! reached it as plain insertions.
//!
//! A view whose changes only ever insert (a pass-through or projection of
//! a stream, a lookup join) would otherwise encode every row and insert it
//! into the keyed multiset, which was a third of such a view's CPU. The
//! log keeps the batches as they came instead: appending one costs a
//! reference count. [`super::RowSet`] folds the log into its keyed part at
//! the first change that is not a plain insertion (a retraction, a
//! multiplicity other than one) and keys every row from then on.
//!
//! Checkpoints: the log is its own state table, entries
//! `first batch index (u64, big-endian) -> Arrow IPC stream of batches`.
//! Each capture writes the batches appended since the previous one, so a
//! chain of deltas reads back, in key order, as the log in arrival order.
//!
//! Invariants:
//! - Every batch has the set's schema and at least one row; each row
//!   counts once.
//! - `saved` leading batches are in the checkpoint chain and never change
//!   (entries' keys count batches); the last batch, unsaved and small, may
//!   take in the next one. After a fold (`cleared`), the next capture
//!   rewrites the table whole (empty).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use super::checkpoint::StateDelta;
use crate::error::{EddyError, Result};

/// The IPC stream of one checkpoint entry is cut after this many bytes
/// (so that one entry never holds a whole large log).
const ENTRY_BYTES: usize = 1 << 20;

/// A batch appended after one of fewer rows than this, not yet saved, is
/// merged into it: a view fed a row at a time would otherwise hold a
/// batch (a few hundred bytes of arrays and buffers) per row.
const SMALL_BATCH_ROWS: usize = 1024;

#[derive(Debug, Clone, Default)]
pub(crate) struct RowLog {
    batches: imbl::Vector<RecordBatch>,
    rows: u64,
    /// How many leading batches are in the checkpoint chain.
    saved: usize,
    /// The log was emptied after some of it was saved.
    cleared: bool,
}

impl RowLog {
    /// Appends a batch (of the set's schema); empty ones are not kept.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = batch.num_rows() as u64;
        let unsaved_small = (self.batches.len() > self.saved)
            .then(|| self.batches.back())
            .flatten()
            .filter(|last| last.num_rows() < SMALL_BATCH_ROWS);
        match unsaved_small {
            Some(last) => {
                let merged = concat_batches(&batch.schema(), [last, &batch])?;
                *self.batches.back_mut().expect("a last batch") = merged;
            }
            None => self.batches.push_back(batch),
        }
        self.rows += rows;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batches in arrival order.
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.batches.iter()
    }

    /// The `index`th batch in arrival order.
    pub fn batch(&self, index: usize) -> Option<&RecordBatch> {
        self.batches.get(index)
    }

    /// Empties the log, returning its batches.
    pub fn take(&mut self) -> Vec<RecordBatch> {
        self.cleared |= self.saved > 0;
        self.saved = 0;
        self.rows = 0;
        std::mem::take(&mut self.batches).into_iter().collect()
    }

    /// The log's state-table delta since the previous capture: the batches
    /// appended since, or (`full`, or after [`Self::take`]) all of them.
    pub fn capture(&mut self, schema: &SchemaRef, full: bool) -> Result<StateDelta> {
        let full = full || self.cleared;
        let from = if full { 0 } else { self.saved };
        let mut delta = StateDelta::new(full);
        let mut entry: Option<(usize, StreamWriter<Vec<u8>>)> = None;
        for (index, batch) in self.batches.iter().enumerate().skip(from) {
            let (_, writer) = match &mut entry {
                Some(open) => open,
                None => entry.insert((index, StreamWriter::try_new(Vec::new(), schema)?)),
            };
            writer.write(batch)?;
            if writer.get_ref().len() >= ENTRY_BYTES {
                let (first, writer) = entry.take().expect("an entry is open");
                delta.put((first as u64).to_be_bytes(), writer.into_inner()?);
            }
        }
        if let Some((first, writer)) = entry {
            delta.put((first as u64).to_be_bytes(), writer.into_inner()?);
        }
        self.saved = self.batches.len();
        self.cleared = false;
        Ok(delta)
    }

    /// The log as checkpointed: `entries` are its state table.
    pub fn restore(
        schema: &SchemaRef,
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Self> {
        let mut log = Self::default();
        for (key, value) in entries {
            let first: [u8; 8] = key
                .as_slice()
                .try_into()
                .map_err(|_| EddyError::Checkpoint("a row log key is not a batch index".into()))?;
            if u64::from_be_bytes(first) != log.batches.len() as u64 {
                return Err(EddyError::Checkpoint(format!(
                    "row log entry {} follows {} batches: the log has a gap",
                    u64::from_be_bytes(first),
                    log.batches.len()
                )));
            }
            for batch in StreamReader::try_new(value.as_slice(), None)? {
                let batch = batch?;
                // Stored under this schema; the fields' names follow it.
                // As saved, not merged: entries' keys count these batches.
                let batch = RecordBatch::try_new(Arc::clone(schema), batch.columns().to_vec())?;
                log.rows += batch.num_rows() as u64;
                log.batches.push_back(batch);
            }
        }
        log.saved = log.batches.len();
        Ok(log)
    }
}
