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
//! Under the memory limit the log moves its oldest batches to a scratch
//! file ([`RowLog::spill`]): each as an Arrow IPC stream at an offset,
//! read back when a scan, a capture or a fold reaches it. Snapshots share
//! the file; the last to drop it removes it.
//!
//! Invariants:
//! - Every batch has the set's schema and at least one row; each row
//!   counts once.
//! - `memory_bytes` is the sum of the in-memory batches' sizes,
//!   `spilled_bytes` of the spilled ones' IPC lengths.
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

use super::checkpoint::{RestoredTable, StateDelta};
use super::memory::ScratchFile;
use crate::error::{EddyError, Result};

/// The IPC stream of one checkpoint entry is cut after this many bytes
/// (so that one entry never holds a whole large log).
const ENTRY_BYTES: usize = 1 << 20;

/// A batch appended after one of fewer rows than this, not yet saved, is
/// merged into it: a view fed a row at a time would otherwise hold a
/// batch (a few hundred bytes of arrays and buffers) per row.
const SMALL_BATCH_ROWS: usize = 1024;

/// One batch of the log.
#[derive(Debug, Clone)]
enum Logged {
    Memory(RecordBatch),
    /// An Arrow IPC stream of the batch in a scratch file.
    Spilled {
        file: Arc<ScratchFile>,
        offset: u64,
        length: u64,
        rows: usize,
    },
}

impl Logged {
    fn rows(&self) -> usize {
        match self {
            Logged::Memory(batch) => batch.num_rows(),
            Logged::Spilled { rows, .. } => *rows,
        }
    }

    /// The batch, under `schema` (read back from disk if spilled).
    fn read(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        match self {
            Logged::Memory(batch) => Ok(batch.clone()),
            Logged::Spilled {
                file,
                offset,
                length,
                ..
            } => {
                let bytes = file.read(*offset, *length)?;
                let mut batches = read_ipc(schema, &bytes)?;
                match (batches.pop(), batches.is_empty()) {
                    (Some(batch), true) => Ok(batch),
                    _ => Err(crate::internal!("a spilled log batch is not one batch")),
                }
            }
        }
    }
}

/// The batches of an IPC stream, under `schema` (stored under it; the
/// fields' names follow it).
fn read_ipc(schema: &SchemaRef, bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    StreamReader::try_new(bytes, None)?
        .map(|batch| {
            Ok(RecordBatch::try_new(
                Arc::clone(schema),
                batch?.columns().to_vec(),
            )?)
        })
        .collect()
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RowLog {
    batches: imbl::Vector<Logged>,
    rows: u64,
    /// How many leading batches are in the checkpoint chain.
    saved: usize,
    /// The log was emptied after some of it was saved.
    cleared: bool,
    memory_bytes: usize,
    spilled_bytes: u64,
}

impl RowLog {
    /// Appends a batch (of the set's schema); empty ones are not kept.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = batch.num_rows() as u64;
        let unsaved_small = match self.batches.back() {
            Some(Logged::Memory(last))
                if self.batches.len() > self.saved && last.num_rows() < SMALL_BATCH_ROWS =>
            {
                Some(last)
            }
            _ => None,
        };
        match unsaved_small {
            Some(last) => {
                let merged = concat_batches(&batch.schema(), [last, &batch])?;
                self.memory_bytes -= last.get_array_memory_size();
                self.memory_bytes += merged.get_array_memory_size();
                *self.batches.back_mut().expect("a last batch") = Logged::Memory(merged);
            }
            None => {
                self.memory_bytes += batch.get_array_memory_size();
                self.batches.push_back(Logged::Memory(batch));
            }
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

    /// Bytes of the batches held in memory (Arrow's count of their
    /// buffers).
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Bytes of the batches spilled to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    /// The batches in arrival order (spilled ones read back as reached).
    pub fn batches<'a>(
        &'a self,
        schema: &'a SchemaRef,
    ) -> impl Iterator<Item = Result<RecordBatch>> + 'a {
        self.batches.iter().map(move |logged| logged.read(schema))
    }

    /// The `index`th batch in arrival order.
    pub fn batch(&self, index: usize, schema: &SchemaRef) -> Option<Result<RecordBatch>> {
        self.batches.get(index).map(|logged| logged.read(schema))
    }

    /// The scratch files holding spilled batches.
    #[cfg(test)]
    pub fn spill_files(&self) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = self
            .batches
            .iter()
            .filter_map(|logged| match logged {
                Logged::Spilled { file, .. } => Some(file.path().to_path_buf()),
                Logged::Memory(_) => None,
            })
            .collect();
        files.dedup();
        files
    }

    /// Empties the log, returning what it held (read it with
    /// [`Self::batches`]).
    pub fn take(&mut self) -> RowLog {
        let taken = std::mem::take(self);
        self.cleared = taken.cleared || taken.saved > 0;
        taken
    }

    /// Moves the oldest in-memory batches to a scratch file until at most
    /// `target_bytes` stay in memory. The newest batch stays (small ones
    /// merge into it).
    pub fn spill(&mut self, target_bytes: usize, schema: &SchemaRef) -> Result<()> {
        let mut chosen = Vec::new();
        let mut left = self.memory_bytes;
        for (index, logged) in self.batches.iter().enumerate() {
            if left <= target_bytes || index + 1 == self.batches.len() {
                break;
            }
            if let Logged::Memory(batch) = logged {
                left -= batch.get_array_memory_size();
                chosen.push(index);
            }
        }
        if chosen.is_empty() {
            return Ok(());
        }
        let encoded = chosen.iter().map(|&index| match &self.batches[index] {
            Logged::Memory(batch) => {
                let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
                writer.write(batch)?;
                Ok(writer.into_inner()?)
            }
            Logged::Spilled { .. } => Err(crate::internal!("a chosen batch is spilled")),
        });
        let (file, spans) = ScratchFile::create(encoded)?;
        for (index, (offset, length)) in chosen.into_iter().zip(spans) {
            let rows = self.batches[index].rows();
            self.batches.set(
                index,
                Logged::Spilled {
                    file: Arc::clone(&file),
                    offset,
                    length,
                    rows,
                },
            );
            self.spilled_bytes += length;
        }
        self.memory_bytes = left;
        Ok(())
    }

    /// The log's state-table delta since the previous capture: the batches
    /// appended since, or (`full`, or after [`Self::take`]) all of them.
    pub fn capture(&mut self, schema: &SchemaRef, full: bool) -> Result<StateDelta> {
        let full = full || self.cleared;
        let from = if full { 0 } else { self.saved };
        let mut delta = StateDelta::new(full);
        let mut entry: Option<(usize, StreamWriter<Vec<u8>>)> = None;
        for (index, logged) in self.batches.iter().enumerate().skip(from) {
            let batch = logged.read(schema)?;
            let (_, writer) = match &mut entry {
                Some(open) => open,
                None => entry.insert((index, StreamWriter::try_new(Vec::new(), schema)?)),
            };
            writer.write(&batch)?;
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

    /// The log as checkpointed: `entries` are its state table. Past the
    /// table's memory budget, the oldest batches read go to a scratch file
    /// as the rest is read.
    pub fn restore(schema: &SchemaRef, entries: RestoredTable) -> Result<Self> {
        let mut log = Self::default();
        let budget = entries.memory_budget;
        entries.for_each_piece(|piece| {
            for (key, value) in piece {
                log.restore_entry(schema, &key, &value)?;
                if let Some(budget) = budget.filter(|&b| log.memory_bytes > b) {
                    log.spill(budget / 2, schema)?;
                }
            }
            Ok(())
        })?;
        log.saved = log.batches.len();
        Ok(log)
    }

    /// Appends a checkpoint entry's batches (`key`: the index of its first).
    fn restore_entry(&mut self, schema: &SchemaRef, key: &[u8], value: &[u8]) -> Result<()> {
        let first: [u8; 8] = key
            .try_into()
            .map_err(|_| EddyError::Checkpoint("a row log key is not a batch index".into()))?;
        if u64::from_be_bytes(first) != self.batches.len() as u64 {
            return Err(EddyError::Checkpoint(format!(
                "row log entry {} follows {} batches: the log has a gap",
                u64::from_be_bytes(first),
                self.batches.len()
            )));
        }
        // As saved, not merged: entries' keys count these batches.
        for batch in read_ipc(schema, value)? {
            self.rows += batch.num_rows() as u64;
            self.memory_bytes += batch.get_array_memory_size();
            self.batches.push_back(Logged::Memory(batch));
        }
        Ok(())
    }
}
