//! Incremental operators and the changelog data they exchange.
//!
//! Everything that flows between operators is a [`ChangeBatch`]: an Arrow
//! `RecordBatch` plus a signed weight per row (+1 insert, -1 retract; an update
//! is a retraction followed by an insertion). Operators implement
//! [`Operator`]: one required method, `process`, that turns an input changelog
//! into output changelogs, and lifecycle hooks with defaults.
//!
//! Invariant: an operator's output is a changelog whose *consolidated* sum is
//! the change of its batch result. Operators never see rows of other epochs
//! out of order, and never emit a row with weight 0.

pub mod accumulator;
pub mod aggregate;
pub mod filter;
pub mod graph;
pub mod join;
pub mod over;
pub mod project;
pub mod session;
pub mod session_aggregate;
pub mod shard;
pub mod source;
pub mod temporal;
#[cfg(test)]
pub(crate) mod testing;
pub mod union;
pub mod watermark;
pub mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::row::RowConverter;
use datafusion::physical_plan::PhysicalExpr;

use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::windowed::SpillStats;

/// What an operator reports about its work, for `eddy_catalog.operator_stats`
/// and for the test that shows maintenance is incremental.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorStats {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Rows skipped because evaluating an expression on them failed.
    pub rows_failed: u64,
    /// Keys (groups, distinct values) held as state.
    pub state_keys: u64,
    /// Changes dropped because they arrived after their window closed.
    pub late_rows: u64,
}

/// An incremental operator.
///
/// Construction (in `plan/`) is separate from running (in `runtime/`): an
/// operator is built with everything it needs and then only sees changelogs.
pub trait Operator: Send {
    /// A one-line description for EXPLAIN, e.g. `Filter: v > 10`.
    fn describe(&self) -> String;

    /// Consumes a changelog arriving on input `input` and returns the
    /// changelog of this operator's output.
    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>>;

    /// Output produced before any input arrives (a constant relation, or the
    /// single row of an aggregate without GROUP BY).
    fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        Ok(vec![])
    }

    /// The watermark of input `input` advanced to `watermark` (event time,
    /// µs): no change with an earlier time is expected from it. Returns the
    /// changes this releases (closed windows) and the watermark to pass on.
    /// By default the watermark passes through unchanged.
    fn on_watermark(
        &mut self,
        _input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        Ok((vec![], Some(watermark)))
    }

    /// Processing time moved to `now` (µs since the epoch): the changes it
    /// causes (rows aging out of a temporal filter) and a watermark to pass
    /// on, if it moved (an input of a union went idle). Called about once a
    /// second by the runtime.
    fn on_tick(&mut self, _now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        Ok((vec![], None))
    }

    /// What the operator counted: rows skipped and changes dropped late.
    fn counters(&self) -> OperatorCounters {
        OperatorCounters::default()
    }

    /// Keys held as state (groups, rows, sessions), or `None` for an
    /// operator that keeps no state: checkpoints capture and restore only
    /// operators that do. (Watermarks are not state: recovery passes each
    /// input's checkpointed watermark in again.)
    fn state_keys(&self) -> Option<u64> {
        None
    }

    /// What the operator's spillable state holds in memory and on disk, or
    /// `None` when it cannot spill (its state, if any, stays in memory).
    fn spill_stats(&self) -> Option<SpillStats> {
        None
    }

    /// Moves state to disk until about `target_bytes` stay in memory (the
    /// memory limit's share of this operator; see `state::memory`).
    fn shrink(&mut self, _target_bytes: usize) -> Result<()> {
        Ok(())
    }

    /// Adds the state changed since the last call to `delta` (all of it
    /// when `delta.full`). Called between epochs, at a checkpoint barrier.
    /// An operator may set `delta.full` and write everything when that is
    /// cheaper than its changes.
    fn checkpoint(&mut self, _delta: &mut StateDelta) -> Result<()> {
        Ok(())
    }

    /// Replaces the state with checkpointed entries (instead of `start`).
    /// An operator whose state spills reads them a piece at a time and
    /// spills past the table's memory budget.
    fn restore(&mut self, _entries: RestoredTable) -> Result<()> {
        Ok(())
    }

    /// The description of an operator that an earlier eddy planned in this
    /// one's place (over the same inputs) and whose checkpointed state
    /// [`Operator::restore_replaced`] takes, so that a view checkpointed
    /// before an upgrade keeps its state after it.
    fn replaces(&self) -> Option<String> {
        None
    }

    /// Replaces the state with the checkpointed entries of the operator
    /// [`Operator::replaces`] names.
    fn restore_replaced(&mut self, _entries: RestoredTable) -> Result<()> {
        Err(crate::internal!("{} replaces no operator", self.describe()))
    }
}

/// Restores `entries` into `operator` a piece at a time with
/// `restore_piece`; whenever the operator then holds more than the table's
/// memory budget, it spills to three quarters of it (so a recovery's
/// memory stays within the limit however large the checkpoint).
pub(crate) fn restore_in_pieces<O: Operator>(
    operator: &mut O,
    entries: RestoredTable,
    mut restore_piece: impl FnMut(&mut O, Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
) -> Result<()> {
    let budget = entries.memory_budget;
    entries.for_each_piece(|piece| {
        restore_piece(operator, piece)?;
        if let Some(budget) = budget {
            let held = operator.spill_stats().map_or(0, |s| s.memory_bytes);
            if held > budget {
                operator.shrink(budget / 4 * 3)?;
            }
        }
        Ok(())
    })
}

/// Late drops are logged at most this often per operator.
const LATE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What an operator counts as it works, beyond the rows in and out that
/// the graph counts: rows it skipped because an expression failed on them
/// (and the last such error), and changes it dropped because they arrived
/// after their window closed. Every operator that can skip or drop rows
/// holds one and returns it from [`Operator::counters`].
#[derive(Debug, Clone, Default)]
pub struct OperatorCounters {
    /// Rows skipped because evaluating an expression on them failed.
    pub rows_failed: u64,
    /// The last evaluation error, for status displays.
    pub last_error: Option<String>,
    /// Changes dropped because they arrived after their window closed.
    pub late_rows: u64,
    last_late_log: Option<Instant>,
}

impl OperatorCounters {
    /// Evaluates `exprs` over `batch.rows`; returns the batch restricted to
    /// the rows that evaluated, and the evaluated columns for them.
    ///
    /// When a batch fails (division by zero, a failed cast, ...) it retries
    /// row by row so that only the failing rows are skipped (and counted).
    /// Expressions are deterministic (volatile functions are refused at
    /// CREATE time), so a row that fails on insert also fails on
    /// retraction: the skipped rows never leave a half-retracted result
    /// behind.
    pub fn evaluate(
        &mut self,
        exprs: &[Arc<dyn PhysicalExpr>],
        batch: &ChangeBatch,
    ) -> Result<(ChangeBatch, Vec<ArrayRef>)> {
        match evaluate_all(exprs, &batch.rows) {
            Ok(columns) => Ok((batch.clone(), columns)),
            Err(batch_error) => {
                let mut good_rows = Vec::with_capacity(batch.num_rows());
                for row in 0..batch.num_rows() {
                    let single = batch.rows.slice(row, 1);
                    match evaluate_all(exprs, &single) {
                        Ok(_) => good_rows.push(row as u32),
                        Err(e) => self.row_failed(&e),
                    }
                }
                if good_rows.len() == batch.num_rows() {
                    // The batch failed as a whole but every row alone passed:
                    // not a row error, report it.
                    return Err(batch_error);
                }
                tracing::warn!(
                    failed_rows = batch.num_rows() - good_rows.len(),
                    error = self.last_error.as_deref().unwrap_or(""),
                    "skipping rows whose evaluation failed"
                );
                let kept = batch.take(&good_rows)?;
                let columns = evaluate_all(exprs, &kept.rows)?;
                Ok((kept, columns))
            }
        }
    }

    /// Counts one row skipped because evaluating it failed with `error`.
    pub fn row_failed(&mut self, error: &dyn std::fmt::Display) {
        self.rows_failed += 1;
        self.last_error = Some(error.to_string());
    }

    /// Counts `late` changes dropped for arriving after their window
    /// closed, and logs them (at most every `LATE_LOG_INTERVAL`).
    pub fn record_late(&mut self, late: u64) {
        if late == 0 {
            return;
        }
        self.late_rows += late;
        if self
            .last_late_log
            .is_none_or(|t| t.elapsed() >= LATE_LOG_INTERVAL)
        {
            self.last_late_log = Some(Instant::now());
            tracing::warn!(
                late_rows_total = self.late_rows,
                "dropped changes that arrived after their window closed"
            );
        }
    }

    /// Adds another instance's counts (the shards of one operator); the
    /// first last error stays.
    pub fn add(&mut self, other: &OperatorCounters) {
        self.rows_failed += other.rows_failed;
        self.late_rows += other.late_rows;
        if self.last_error.is_none() {
            self.last_error.clone_from(&other.last_error);
        }
    }
}

/// The row-encoded key of each of `rows` rows, from its key `columns`
/// (encoded by `converter`); without key columns every row has the same
/// empty key (a join without equality, a top-N without PARTITION BY).
pub fn encode_keys(
    converter: &RowConverter,
    columns: &[ArrayRef],
    rows: usize,
) -> Result<Vec<Arc<[u8]>>> {
    if columns.is_empty() {
        return Ok(vec![Arc::from(&[][..]); rows]);
    }
    let keys = converter.convert_columns(columns)?;
    Ok(keys.iter().map(|k| Arc::from(k.data())).collect())
}

fn evaluate_all(exprs: &[Arc<dyn PhysicalExpr>], rows: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| {
            e.evaluate(rows)
                .and_then(|v| v.into_array(rows.num_rows()))
                .map_err(EddyError::from)
        })
        .collect()
}
