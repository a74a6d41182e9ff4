//! Session windows: `SESSION(relation, time_column, gap [, key ...])`.
//!
//! Rows of one key (the optional key columns; all rows when there are none)
//! that follow each other by less than `gap` form one session, the window
//! `[first time, last time + gap)`. Unlike TUMBLE and HOP, a row's window
//! depends on its neighbours: a row can extend a session, bridge two
//! sessions into one, or (retracted) split one. [`session_bounds`] is the
//! one definition, used by the batch path (ad-hoc SELECT) and by the
//! streaming operator, so both agree.
//!
//! The streaming operator keeps the rows of each key's open sessions. On a
//! change it recomputes that key's sessions and emits the difference: the
//! rows of sessions that changed are retracted with their old window and
//! inserted with the new one, so a downstream aggregate grouped by
//! `window_start, window_end` sees sessions merge and split.
//!
//! Time rules: a change at time `t < watermark - allowed_lateness` is late
//! (dropped and counted). A session whose end is at or before `watermark -
//! allowed_lateness` is closed: no on-time row can reach it any more (it
//! would need `t < end`), so its rows are freed. Closing matches the rule of
//! the windowed aggregate downstream, which emits and frees it then.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;

use super::window::{describe_micros, times, with_windows, WindowClock};
use super::Operator;
use super::OperatorCounters;
use crate::common::ChangeBatch;
use crate::error::Result;
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::codec::{Decoder, Encoder};
use crate::state::RowCodec;
use crate::state::{Changed, KeyMap};

/// The sessions of times sorted ascending: `(start, end, rows in it)`.
pub fn session_bounds(sorted_times: &[i64], gap: i64) -> Vec<(i64, i64, usize)> {
    let mut sessions: Vec<(i64, i64, usize)> = Vec::new();
    for &t in sorted_times {
        match sessions.last_mut() {
            Some((_, end, rows)) if t < *end => {
                *end = (*end).max(t + gap);
                *rows += 1;
            }
            _ => sessions.push((t, t + gap, 1)),
        }
    }
    sessions
}

/// Batch assignment: every row with a time, with its session's window.
/// Returns the windowed rows (in the order of `schema`) and, for each, the
/// index of its input row.
pub fn assign_sessions(
    rows: &RecordBatch,
    time_column: usize,
    key_columns: &[usize],
    gap: i64,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let times = times(rows, time_column)?;
    let keys = key_codec(rows.schema_ref(), key_columns)?.encode(&rows.project(key_columns)?)?;
    let mut by_key: KeyMap<&[u8], Vec<(i64, u32)>> = KeyMap::default();
    for (row, key) in keys.iter().enumerate() {
        if times.is_valid(row) {
            by_key
                .entry(key)
                .or_default()
                .push((times.value(row), row as u32));
        }
    }
    let (mut indices, mut starts, mut ends) = (vec![], vec![], vec![]);
    for mut members in by_key.into_values() {
        members.sort_unstable();
        let sorted: Vec<i64> = members.iter().map(|m| m.0).collect();
        let mut next = members.iter();
        for (start, end, count) in session_bounds(&sorted, gap) {
            for (_, row) in next.by_ref().take(count) {
                indices.push(*row);
                starts.push(start);
                ends.push(end);
            }
        }
    }
    with_windows(rows, &indices, starts, ends, schema)
}

/// `SESSION(relation, time_column, gap, key_column ...)` over the input.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub time_column: usize,
    pub key_columns: Vec<usize>,
    /// µs.
    pub gap: i64,
}

/// `gap 10s on ts per [k]`: a session window for EXPLAIN.
pub(crate) fn describe_session(input_schema: &SchemaRef, spec: &SessionSpec) -> String {
    let keys: Vec<&str> = spec
        .key_columns
        .iter()
        .map(|&c| input_schema.field(c).name().as_str())
        .collect();
    format!(
        "gap {} on {} per [{}]",
        describe_micros(spec.gap),
        input_schema.field(spec.time_column).name(),
        keys.join(", ")
    )
}

/// How [`SessionWindowOperator`] describes itself (also the name a session
/// aggregate finds its state by, having replaced it).
pub(crate) fn describe_session_window(
    input_schema: &SchemaRef,
    spec: &SessionSpec,
    watermarked: bool,
) -> String {
    let state = if watermarked {
        "state: rows of open sessions, freed by watermark"
    } else {
        "state unbounded: no watermark on the time column"
    };
    format!(
        "SessionWindow: {} ({state})",
        describe_session(input_schema, spec)
    )
}

/// One key's checkpointed rows, `(time, encoded row, multiplicity)`, as
/// [`SessionWindowOperator`] writes them.
pub(crate) fn decode_key_rows(value: &[u8]) -> Result<Vec<TimedRow>> {
    let mut d = Decoder::new(value);
    let count = d.u64()?;
    let mut rows = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let time = d.i64()?;
        let row: Arc<[u8]> = d.bytes()?.into();
        rows.push((time, row, d.i64()?));
    }
    Ok(rows)
}

/// Frees what closed sessions hold, key by key: `free` drops a key's closed
/// sessions (a prefix of its state, sessions being disjoint and ordered)
/// and says whether it dropped any and whether the key is left empty.
/// Changed keys are noted in `dirty`; emptied keys go.
pub(crate) fn free_closed_sessions<V>(
    keys: &mut KeyMap<Arc<[u8]>, V>,
    dirty: &mut Changed<Arc<[u8]>>,
    mut free: impl FnMut(&mut V) -> (bool, bool),
) {
    let held = keys.len();
    keys.retain(|key, state| {
        let (freed, empty) = free(state);
        if freed {
            dirty.note(held, || key.clone());
        }
        !empty
    });
}

/// Encodes the session keys (`key_columns` of rows of `schema`).
fn key_codec(schema: &SchemaRef, key_columns: &[usize]) -> Result<RowCodec> {
    RowCodec::try_new(Arc::new(schema.project(key_columns)?))
}

/// One key's rows: `(time, encoded row) -> multiplicity`, sorted by time.
type KeyRows = BTreeMap<(i64, Arc<[u8]>), i64>;

/// `(time, encoded row, weight or multiplicity)`.
pub(crate) type TimedRow = (i64, Arc<[u8]>, i64);

/// Changes of one batch by key.
type ChangesByKey = KeyMap<Arc<[u8]>, Vec<TimedRow>>;

/// Streaming session assignment.
pub struct SessionWindowOperator {
    spec: SessionSpec,
    /// The output schema: the input's columns, then the window columns.
    schema: SchemaRef,
    /// Encodes whole input rows.
    codec: RowCodec,
    /// Encodes the key columns (made once, not per batch).
    key_codec: RowCodec,
    keys: KeyMap<Arc<[u8]>, KeyRows>,
    /// Keys changed since the last checkpoint.
    dirty: Changed<Arc<[u8]>>,
    clock: WindowClock,
    counters: OperatorCounters,
    /// Whether a watermark reaches the time column (for EXPLAIN).
    watermarked: bool,
}

impl SessionWindowOperator {
    pub fn try_new(
        input_schema: SchemaRef,
        spec: SessionSpec,
        allowed_lateness: i64,
        schema: SchemaRef,
        watermarked: bool,
    ) -> Result<Self> {
        Ok(Self {
            watermarked,
            key_codec: key_codec(&input_schema, &spec.key_columns)?,
            codec: RowCodec::try_new(input_schema)?,
            spec,
            schema,
            keys: KeyMap::default(),
            dirty: Changed::default(),
            clock: WindowClock::new(allowed_lateness),
            counters: OperatorCounters::default(),
        })
    }

    /// Each stored row with its session's window and multiplicity.
    fn windows_of(rows: &KeyRows, gap: i64) -> Vec<(i64, i64, Arc<[u8]>, i64)> {
        let times: Vec<i64> = rows.keys().map(|(t, _)| *t).collect();
        let mut entries = rows.iter();
        let mut out = Vec::with_capacity(rows.len());
        for (start, end, count) in session_bounds(&times, gap) {
            for ((_, row), weight) in entries.by_ref().take(count) {
                out.push((start, end, row.clone(), *weight));
            }
        }
        out
    }
}

impl Operator for SessionWindowOperator {
    fn describe(&self) -> String {
        describe_session_window(self.codec.schema(), &self.spec, self.watermarked)
    }

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let times = times(&batch.rows, self.spec.time_column)?;
        let keys = self
            .key_codec
            .encode(&batch.rows.project(&self.spec.key_columns)?)?;
        let rows = self.codec.encode(&batch.rows)?;
        let closed_before = self.clock.closed_up_to();
        // The changes of each key, applied after its old windows are known.
        let mut changed = ChangesByKey::default();
        let mut late = 0;
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                continue; // no time, no session
            }
            let t = times.value(row);
            if closed_before.is_some_and(|closed| t < closed) {
                late += 1;
                continue;
            }
            changed.entry(keys[row].clone()).or_default().push((
                t,
                rows[row].clone(),
                batch.weights.value(row),
            ));
        }
        self.counters.record_late(late);
        // (start, end, row) -> weight of the output change.
        let mut diff: BTreeMap<(i64, i64, Arc<[u8]>), i64> = BTreeMap::new();
        for (key, changes) in changed {
            self.dirty.note(self.keys.len() + 1, || key.clone());
            let stored = self.keys.entry(key.clone()).or_default();
            for (start, end, row, weight) in Self::windows_of(stored, self.spec.gap) {
                *diff.entry((start, end, row)).or_default() -= weight;
            }
            for (t, row, weight) in changes {
                let entry = stored.entry((t, row.clone())).or_default();
                *entry += weight;
                if *entry == 0 {
                    stored.remove(&(t, row));
                } else if *entry < 0 {
                    return Err(crate::internal!(
                        "session window: retraction of a row that is not there"
                    ));
                }
            }
            for (start, end, row, weight) in Self::windows_of(stored, self.spec.gap) {
                *diff.entry((start, end, row)).or_default() += weight;
            }
            if stored.is_empty() {
                self.keys.remove(&key);
            }
        }
        diff.retain(|_, weight| *weight != 0);
        if diff.is_empty() {
            return Ok(vec![]);
        }
        let decoded = self.codec.decode(diff.keys().map(|(_, _, row)| &row[..]))?;
        let indices: Vec<u32> = (0..diff.len() as u32).collect();
        let starts = diff.keys().map(|(s, _, _)| *s).collect();
        let ends = diff.keys().map(|(_, e, _)| *e).collect();
        let windowed = with_windows(&decoded, &indices, starts, ends, &self.schema)?;
        let weights: Vec<i64> = diff.into_values().collect();
        Ok(vec![ChangeBatch::new(windowed, weights.into())?])
    }

    fn on_watermark(
        &mut self,
        _input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let passed_on = self.clock.advance(watermark);
        if let Some(closed) = self.clock.closed_up_to() {
            // Closed sessions are a prefix of each key's rows: free them,
            // earliest first, stopping at the first open one.
            let gap = self.spec.gap;
            free_closed_sessions(&mut self.keys, &mut self.dirty, |rows| {
                let before = rows.len();
                while let Some(((first, _), _)) = rows.first_key_value() {
                    let mut end = first + gap;
                    let mut count = 0;
                    for (t, _) in rows.keys() {
                        if *t >= end {
                            break;
                        }
                        end = end.max(t + gap);
                        count += 1;
                    }
                    if end > closed {
                        break;
                    }
                    for _ in 0..count {
                        rows.pop_first();
                    }
                }
                (rows.len() != before, rows.is_empty())
            });
        }
        Ok((vec![], passed_on))
    }

    fn state_keys(&self) -> Option<u64> {
        Some(self.keys.values().map(|rows| rows.len() as u64).sum())
    }

    /// Key: the session key; value: its rows as `(time, row, multiplicity)`.
    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        let encode = |rows: &KeyRows, out: &mut Encoder| {
            out.u64(rows.len() as u64);
            for ((time, row), n) in rows {
                out.i64(*time).bytes(row).i64(*n);
            }
        };
        delta.put_changed(&self.keys, &mut self.dirty, encode);
        Ok(())
    }

    fn restore(&mut self, entries: RestoredTable) -> Result<()> {
        let entries = entries.into_map()?;
        self.keys.clear();
        self.dirty = Changed::default();
        for (key, value) in entries {
            let rows = decode_key_rows(&value)?
                .into_iter()
                .map(|(time, row, n)| ((time, row), n))
                .collect();
            self.keys.insert(key.into(), rows);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_split_at_gaps() {
        assert_eq!(
            session_bounds(&[1, 3, 7, 20, 24], 5),
            vec![(1, 12, 3), (20, 29, 2)]
        );
        // A gap of exactly `gap` ends a session.
        assert_eq!(session_bounds(&[0, 5], 5), vec![(0, 5, 1), (5, 10, 1)]);
        assert!(session_bounds(&[], 5).is_empty());
    }
}
