//! Session window aggregate: `SESSION(...)` under `GROUP BY <its keys>,
//! [window_start,] window_end` over an append-only input, as one operator.
//!
//! Why: as two operators (`SessionWindow` then a windowed aggregate) every
//! row of a session is retracted and inserted again each time the session
//! grows, since its window changes; a session of K rows costs O(K) per new
//! row, O(K²) over its life. Over an append-only input the aggregate never
//! needs a session's rows back, so this operator keeps, per key, only the
//! open sessions as `(start, end, accumulators)`: a row folds into the
//! session it falls in, opens a new one, or bridges several, whose
//! accumulator states merge (`AccumulatorState::merge`). A row costs a map
//! lookup, whatever the session's length.
//!
//! Invariants, the same as the pair's (a test runs both side by side):
//! - a key's sessions are the connected parts of its rows' `[t, t + gap)`
//!   intervals (`session::session_bounds`), disjoint and kept by start (so
//!   also by end);
//! - a row at `t < watermark - allowed_lateness` is late: dropped, counted;
//! - a session ending at or before `watermark - allowed_lateness` is closed:
//!   emitted then (EMIT ON WINDOW CLOSE) and freed; no on-time row can reach
//!   it;
//! - otherwise each batch emits, per session it changed, a retraction of the
//!   session's row as the last batch left it and an insertion of its new
//!   row (none when they are equal).
//!
//! Upgrades: a view checkpointed by an eddy that planned the pair restores
//! into this operator from the `SessionWindow`'s state (the rows of the open
//! sessions, folded again; [`Operator::replaces`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::PhysicalExpr;

use super::accumulator::{AccumulatorState, AggregateFolder};
use super::aggregate::{AggregateCall, CallInputs};
use super::session::{
    decode_key_rows, describe_session, describe_session_window, free_closed_sessions, SessionSpec,
};
use super::shard::KeyedOperator;
use super::window::{times, WindowClock};
use super::{Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::Result;
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::codec::{Decoder, Encoder};
use crate::state::{Changed, KeyMap, RowCodec};

/// Where an output group column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionGroupColumn {
    /// The session key column at this position among the key columns.
    Key(usize),
    WindowStart,
    WindowEnd,
}

/// When sessions close and what is emitted.
#[derive(Debug, Clone, Copy)]
pub struct SessionClosing {
    /// Sessions stay open this long (µs) after the watermark passes their end.
    pub allowed_lateness: i64,
    /// Emit each session once, when it closes, instead of updating it.
    pub emit_on_close: bool,
    /// Whether a watermark reaches the time column (else nothing closes).
    pub watermarked: bool,
}

struct Session {
    end: i64,
    /// Input rows folded in (their multiplicities).
    rows: i64,
    accumulators: Vec<AccumulatorState>,
    /// The batch that last changed it (`SessionAggregateOperator::batch`).
    changed_in: u64,
}

/// One key's open sessions by start (disjoint, so also ordered by end).
type Sessions = BTreeMap<i64, Session>;

/// A key's entry in the operator's map.
struct KeySessions {
    /// The key, shared with the map, the dirty set and a batch's changes
    /// (no copy per place).
    key: Arc<[u8]>,
    /// The batch that last had rows of this key.
    touched_in: u64,
    sessions: Sessions,
}

impl KeySessions {
    fn new(key: &Arc<[u8]>, sessions: Sessions) -> Self {
        Self {
            key: key.clone(),
            touched_in: 0,
            sessions,
        }
    }
}

/// A session's output row: key, start, end, the aggregates' values.
type SessionRow = (Arc<[u8]>, i64, i64, Vec<ScalarValue>);

/// A session by key, start and end.
type SessionWindow = (Arc<[u8]>, i64, i64);

/// What folding a batch changed.
struct Folded {
    /// The changed sessions' rows as they were before the batch.
    before: Vec<SessionRow>,
    /// The keys the batch had rows of, each once.
    touched: Vec<Arc<[u8]>>,
}

pub struct SessionAggregateOperator {
    spec: SessionSpec,
    closing: SessionClosing,
    calls: Vec<AggregateCall>,
    /// The output's group columns, in the aggregate's order.
    group_columns: Vec<SessionGroupColumn>,
    /// The aggregate's output: the group columns, then one per call.
    schema: SchemaRef,
    /// Encodes whole input rows (to take over a `SessionWindow`'s state).
    row_codec: RowCodec,
    /// Encodes the key columns: the state's keys.
    key_codec: RowCodec,
    keys: KeyMap<Arc<[u8]>, KeySessions>,
    /// Keys changed since the last checkpoint.
    dirty: Changed<Arc<[u8]>>,
    clock: WindowClock,
    /// No open session ends before this, so an earlier watermark closes
    /// nothing and needs no scan.
    earliest_end: i64,
    /// Counts batches, to tell sessions a batch already changed.
    batch: u64,
    counters: OperatorCounters,
}

impl SessionAggregateOperator {
    /// `calls` evaluate over input rows; `schema` is the aggregate's output.
    pub fn try_new(
        input_schema: SchemaRef,
        spec: SessionSpec,
        closing: SessionClosing,
        calls: Vec<AggregateCall>,
        group_columns: Vec<SessionGroupColumn>,
        schema: SchemaRef,
    ) -> Result<Self> {
        if !group_columns.contains(&SessionGroupColumn::WindowEnd) {
            return Err(crate::internal!("a session aggregate groups by window_end"));
        }
        Ok(Self {
            key_codec: RowCodec::try_new(Arc::new(input_schema.project(&spec.key_columns)?))?,
            row_codec: RowCodec::try_new(input_schema)?,
            spec,
            closing,
            calls,
            group_columns,
            schema,
            keys: KeyMap::default(),
            dirty: Changed::default(),
            clock: WindowClock::new(closing.allowed_lateness),
            earliest_end: i64::MAX,
            batch: 0,
            counters: OperatorCounters::default(),
        })
    }

    /// Folds `batch` into the sessions.
    fn fold(&mut self, batch: &ChangeBatch) -> Result<Folded> {
        let (batch, columns) = self
            .counters
            .evaluate(&AggregateCall::exprs(&self.calls), batch)?;
        let inputs = CallInputs::prepare(&self.calls, &mut columns.into_iter())?;
        let times = times(&batch.rows, self.spec.time_column)?;
        let keys = self
            .key_codec
            .encode_rows(&batch.rows.project(&self.spec.key_columns)?)?;
        self.batch += 1;
        let closed_up_to = self.clock.closed_up_to();
        let mut before: Vec<SessionRow> = Vec::new();
        let mut touched: Vec<Arc<[u8]>> = Vec::new();
        let mut late = 0;
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                continue; // no time, no session
            }
            let t = times.value(row);
            if closed_up_to.is_some_and(|closed| t < closed) {
                late += 1;
                continue;
            }
            let weight = batch.weights.value(row);
            if weight <= 0 {
                return Err(crate::internal!(
                    "a retraction reached a session window aggregate, which folds only \
                     append-only input"
                ));
            }
            let key: &[u8] = keys.as_ref().map_or(&[], |k| k.row(row).data());
            let entry = match self.keys.get_mut(key) {
                Some(entry) => entry,
                None => {
                    let key: Arc<[u8]> = Arc::from(key);
                    let entry = KeySessions::new(&key, Sessions::new());
                    self.keys.entry(key).or_insert(entry)
                }
            };
            if entry.touched_in != self.batch {
                entry.touched_in = self.batch;
                touched.push(entry.key.clone());
            }
            let KeySessions { key, sessions, .. } = entry;
            let mut retract = |start: i64, session: &Session| -> Result<()> {
                let values = AggregateCall::values(&self.calls, &session.accumulators)?;
                before.push((key.clone(), start, session.end, values));
                Ok(())
            };
            let session = session_at(
                sessions,
                t,
                self.spec.gap,
                self.batch,
                &self.calls,
                &mut retract,
            )?;
            session.rows += weight;
            inputs.fold(&self.calls, &mut session.accumulators, row, weight)?;
            self.earliest_end = self.earliest_end.min(session.end);
        }
        self.counters.record_late(late);
        self.dirty
            .note_all(self.keys.len(), touched.iter().cloned());
        Ok(Folded { before, touched })
    }

    /// A changelog of session rows with their weights.
    fn build_output(&self, changes: Vec<(SessionRow, i64)>) -> Result<ChangeBatch> {
        let keys = self
            .key_codec
            .decode(changes.iter().map(|((key, ..), _)| &key[..]))?;
        let starts: ArrayRef = Arc::new(TimestampMicrosecondArray::from_iter_values(
            changes.iter().map(|((_, start, ..), _)| *start),
        ));
        let ends: ArrayRef = Arc::new(TimestampMicrosecondArray::from_iter_values(
            changes.iter().map(|((_, _, end, _), _)| *end),
        ));
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (position, source) in self.group_columns.iter().enumerate() {
            let column = match source {
                SessionGroupColumn::Key(k) => keys.column(*k).clone(),
                SessionGroupColumn::WindowStart => starts.clone(),
                SessionGroupColumn::WindowEnd => ends.clone(),
            };
            // The window's time zone, if any.
            columns.push(cast(&column, self.schema.field(position).data_type())?);
        }
        columns.extend(AggregateCall::columns(
            &self.calls,
            changes.iter().map(|((.., values), _)| values.as_slice()),
        )?);
        let weights = Int64Array::from_iter_values(changes.iter().map(|(_, w)| *w));
        let options = RecordBatchOptions::new().with_row_count(Some(changes.len()));
        let rows = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        ChangeBatch::new(rows, weights)
    }
}

/// The session that a row at `t` belongs to among one key's `sessions`,
/// made so: the one it falls in (extended to `t + gap`), or else a new one
/// merged with every session it bridges. A session that batch `batch` had
/// not changed yet is first passed to `retract` as it was.
fn session_at<'s>(
    sessions: &'s mut Sessions,
    t: i64,
    gap: i64,
    batch: u64,
    calls: &[AggregateCall],
    retract: &mut impl FnMut(i64, &Session) -> Result<()>,
) -> Result<&'s mut Session> {
    let reach = t.saturating_add(gap);
    // The common case: `t` within the last session starting at or before
    // it; earlier sessions end before that one starts, so none overlaps.
    let last = sessions
        .range(..reach)
        .next_back()
        .map(|(s, x)| (*s, x.end));
    if let Some((start, _)) = last.filter(|&(start, end)| start <= t && t < end) {
        let session = sessions
            .get_mut(&start)
            .ok_or_else(|| crate::internal!("session vanished"))?;
        if session.changed_in != batch {
            retract(start, session)?;
            session.changed_in = batch;
        }
        session.end = session.end.max(reach);
        return Ok(session);
    }
    // `[t, t + gap)` overlaps the sessions starting before `t + gap` and
    // ending after `t`: the latest ones, as they are ordered by end too.
    let overlapping: Vec<i64> = sessions
        .range(..reach)
        .rev()
        .take_while(|(_, s)| s.end > t)
        .map(|(start, _)| *start)
        .collect();
    let mut merged = Session {
        end: reach,
        rows: 0,
        accumulators: AggregateCall::new_states(calls),
        changed_in: batch,
    };
    let mut start = t;
    for old_start in overlapping {
        let old = sessions
            .remove(&old_start)
            .ok_or_else(|| crate::internal!("session vanished"))?;
        if old.changed_in != batch {
            retract(old_start, &old)?;
        }
        start = start.min(old_start);
        merged.end = merged.end.max(old.end);
        merged.rows += old.rows;
        for (into, from) in merged.accumulators.iter_mut().zip(old.accumulators) {
            into.merge(from)?;
        }
    }
    Ok(sessions.entry(start).or_insert(merged))
}

impl KeyedOperator for SessionAggregateOperator {
    /// Sessions without keys are one stream: nothing to split.
    fn shardable(&self) -> bool {
        !self.spec.key_columns.is_empty()
    }

    fn key_exprs(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        let input = self.row_codec.schema();
        let keys = self
            .spec
            .key_columns
            .iter()
            .map(|&c| Arc::new(Column::new(input.field(c).name(), c)) as Arc<dyn PhysicalExpr>);
        vec![keys.collect()]
    }

    fn key_types(&self) -> Vec<DataType> {
        let keys = self.key_codec.schema().fields().iter();
        keys.map(|f| f.data_type().clone()).collect()
    }

    /// A checkpointed state key is the row-encoded session key itself.
    fn key_of_state(state_key: &[u8]) -> Result<&[u8]> {
        Ok(state_key)
    }
}

impl Operator for SessionAggregateOperator {
    fn describe(&self) -> String {
        let kind = if self.closing.emit_on_close {
            "SessionWindowAggregate(emit on close)"
        } else {
            "SessionWindowAggregate"
        };
        let calls: Vec<&str> = self.calls.iter().map(|c| c.display.as_str()).collect();
        let state = if self.closing.watermarked {
            "state: accumulators of open sessions, freed by watermark"
        } else {
            "state unbounded: no watermark on the time column"
        };
        format!(
            "{kind}: {}, aggregates=[{}] ({state})",
            self.session(),
            calls.join(", ")
        )
    }

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let Folded { before, touched } = self.fold(&batch)?;
        if self.closing.emit_on_close {
            return Ok(vec![]);
        }
        // Old rows by window, so that an unchanged session emits nothing.
        let mut old: KeyMap<SessionWindow, Vec<ScalarValue>> = before
            .into_iter()
            .map(|(key, start, end, values)| ((key, start, end), values))
            .collect();
        let mut changes = Vec::new();
        for key in touched {
            let Some(entry) = self.keys.get(&key) else {
                continue;
            };
            for (&start, session) in &entry.sessions {
                if session.changed_in != self.batch {
                    continue;
                }
                let values = AggregateCall::values(&self.calls, &session.accumulators)?;
                let window = (key.clone(), start, session.end);
                if old.get(&window) == Some(&values) {
                    old.remove(&window);
                    continue;
                }
                changes.push(((key.clone(), start, session.end, values), 1));
            }
        }
        changes.extend(
            old.into_iter()
                .map(|((key, start, end), values)| ((key, start, end, values), -1)),
        );
        if changes.is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![self.build_output(changes)?])
    }

    fn on_watermark(
        &mut self,
        _input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let passed_on = self.clock.advance(watermark);
        let Some(closed_up_to) = self.clock.closed_up_to() else {
            return Ok((vec![], passed_on));
        };
        if self.earliest_end > closed_up_to {
            return Ok((vec![], passed_on));
        }
        // Closed sessions are a prefix of each key's sessions.
        let emit = self.closing.emit_on_close;
        let mut closed: Vec<(Arc<[u8]>, i64, Session)> = Vec::new();
        let mut earliest_end = i64::MAX;
        free_closed_sessions(&mut self.keys, &mut self.dirty, |entry| {
            let sessions = &mut entry.sessions;
            let mut freed = false;
            while let Some(first) = sessions.first_entry() {
                if first.get().end > closed_up_to {
                    earliest_end = earliest_end.min(first.get().end);
                    break;
                }
                let (start, session) = first.remove_entry();
                freed = true;
                if emit && session.rows > 0 {
                    closed.push((entry.key.clone(), start, session));
                }
            }
            (freed, sessions.is_empty())
        });
        self.earliest_end = earliest_end;
        if closed.is_empty() {
            return Ok((vec![], passed_on));
        }
        let changes = closed
            .into_iter()
            .map(|(key, start, session)| {
                let values = AggregateCall::values(&self.calls, &session.accumulators)?;
                Ok(((key, start, session.end, values), 1))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((vec![self.build_output(changes)?], passed_on))
    }

    /// Open sessions plus the values kept by min/max/count(DISTINCT).
    fn state_keys(&self) -> Option<u64> {
        let sessions = self.keys.values().flat_map(|k| k.sessions.values());
        let keys = sessions
            .map(|s| {
                1 + s
                    .accumulators
                    .iter()
                    .map(AggregateFolder::state_keys)
                    .sum::<u64>()
            })
            .sum();
        Some(keys)
    }

    /// Key: the session key; value: its open sessions as `(start, end, rows,
    /// accumulators)`.
    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        let encode = |entry: &KeySessions, out: &mut Encoder| {
            out.u64(entry.sessions.len() as u64);
            for (start, session) in &entry.sessions {
                out.i64(*start)
                    .i64(session.end)
                    .i64(session.rows)
                    .u64(session.accumulators.len() as u64);
                for state in &session.accumulators {
                    state.encode(out);
                }
            }
        };
        delta.put_changed(&self.keys, &mut self.dirty, encode);
        Ok(())
    }

    fn restore(&mut self, entries: RestoredTable) -> Result<()> {
        let entries = entries.into_map()?;
        self.keys.clear();
        self.dirty = Changed::default();
        self.earliest_end = i64::MAX;
        for (key, value) in entries {
            let mut d = Decoder::new(&value);
            let mut sessions = Sessions::new();
            for _ in 0..d.u64()? {
                let (start, end, rows) = (d.i64()?, d.i64()?, d.i64()?);
                let count = d.u64()? as usize;
                if count != self.calls.len() {
                    return Err(crate::error::EddyError::Checkpoint(format!(
                        "session aggregate state has {count} accumulators, the plan {}",
                        self.calls.len()
                    )));
                }
                let accumulators = (0..count)
                    .map(|_| AccumulatorState::decode(&mut d))
                    .collect::<Result<Vec<_>>>()?;
                self.earliest_end = self.earliest_end.min(end);
                let session = Session {
                    end,
                    rows,
                    accumulators,
                    changed_in: 0,
                };
                sessions.insert(start, session);
            }
            let key: Arc<[u8]> = key.into();
            self.keys
                .insert(key.clone(), KeySessions::new(&key, sessions));
        }
        Ok(())
    }

    /// The pair this operator replaces began with a `SessionWindow` over the
    /// same input.
    fn replaces(&self) -> Option<String> {
        Some(describe_session_window(
            self.row_codec.schema(),
            &self.spec,
            self.closing.watermarked,
        ))
    }

    /// The `SessionWindow`'s state holds the rows of the open sessions:
    /// folding them again gives these sessions' accumulators (what the
    /// pair's aggregate held for them).
    fn restore_replaced(&mut self, entries: RestoredTable) -> Result<()> {
        let entries = entries.into_map()?;
        self.restore(RestoredTable::default())?;
        let mut rows = Vec::new();
        for value in entries.values() {
            rows.extend(decode_key_rows(value)?);
        }
        if rows.is_empty() {
            return Ok(());
        }
        let batch = self
            .row_codec
            .decode(rows.iter().map(|(_, row, _)| &row[..]))?;
        let weights = Int64Array::from_iter_values(rows.iter().map(|(_, _, n)| *n));
        let folded = self.fold(&ChangeBatch::new(batch, weights)?)?;
        debug_assert!(folded.before.is_empty(), "no session existed before");
        Ok(())
    }
}

impl SessionAggregateOperator {
    /// `gap 10s on ts per [k]`, as the `SessionWindow` describes itself.
    fn session(&self) -> String {
        describe_session(self.row_codec.schema(), &self.spec)
    }
}

#[cfg(test)]
mod tests {
    //! The fused operator against the pair it replaces (`SessionWindow` then
    //! a windowed aggregate) over random out-of-order input with late rows,
    //! bridging rows and watermarks, in both emit modes; then across a
    //! checkpoint restored three ways: its own state, the pair's
    //! `SessionWindow` state (an upgrade), and split into two shards.
    use super::*;
    use crate::stream::accumulator::AggregateKind;
    use crate::stream::aggregate::{AggregateOperator, WindowedGroups};
    use crate::stream::session::SessionWindowOperator;
    use crate::stream::shard::ShardedOperator;
    use crate::stream::testing::{random, Checkpoints};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::arrow::util::display::array_value_to_string;

    const GAP: i64 = 10_000;
    const LATENESS: i64 = 5_000;

    fn timestamp() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, None)
    }

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
            Field::new("ts", timestamp(), true),
        ]))
    }

    /// `k, v, ts, window_start, window_end`: what SESSION(...) yields.
    fn windowed_schema() -> SchemaRef {
        let mut fields = input_schema().fields().to_vec();
        fields.push(Arc::new(Field::new("window_start", timestamp(), false)));
        fields.push(Arc::new(Field::new("window_end", timestamp(), false)));
        Arc::new(Schema::new(fields))
    }

    /// Grouped by `k` (when keyed) then the window; without keys by
    /// `window_end, window_start` (another order).
    fn group_columns(keyed: bool) -> Vec<SessionGroupColumn> {
        use SessionGroupColumn::*;
        if keyed {
            vec![Key(0), WindowStart, WindowEnd]
        } else {
            vec![WindowEnd, WindowStart]
        }
    }

    fn output_schema(keyed: bool) -> SchemaRef {
        let mut fields: Vec<Field> = group_columns(keyed)
            .iter()
            .map(|g| match g {
                SessionGroupColumn::Key(_) => Field::new("k", DataType::Int64, false),
                SessionGroupColumn::WindowStart => Field::new("window_start", timestamp(), false),
                SessionGroupColumn::WindowEnd => Field::new("window_end", timestamp(), false),
            })
            .collect();
        fields.push(Field::new("n", DataType::Int64, false));
        fields.push(Field::new("total", DataType::Int64, true));
        fields.push(Field::new("top", DataType::Int64, true));
        Arc::new(Schema::new(fields))
    }

    /// count(v), sum(v), max(v) with `v` at column `v`.
    fn calls(v: usize) -> Vec<AggregateCall> {
        let call = |kind, display: &str| AggregateCall {
            folder: AggregateFolder::try_new(kind, &DataType::Int64, DataType::Int64, &[], None)
                .unwrap(),
            argument: Arc::new(Column::new("v", v)),
            filter: None,
            display: display.into(),
        };
        vec![
            call(AggregateKind::Count, "count(v)"),
            call(AggregateKind::Sum, "sum(v)"),
            call(AggregateKind::Max, "max(v)"),
        ]
    }

    fn key_columns(keyed: bool) -> Vec<usize> {
        if keyed {
            vec![0]
        } else {
            vec![]
        }
    }

    /// The pair: `SessionWindow`, then the aggregate over its rows.
    struct Pair(SessionWindowOperator, AggregateOperator);

    impl Pair {
        fn new(keyed: bool, emit_on_close: bool) -> Self {
            let session = SessionWindowOperator::try_new(
                input_schema(),
                SessionSpec {
                    time_column: 2,
                    key_columns: key_columns(keyed),
                    gap: GAP,
                },
                LATENESS,
                windowed_schema(),
                true,
            )
            .unwrap();
            let column = |name: &str, i| Arc::new(Column::new(name, i)) as Arc<dyn PhysicalExpr>;
            let groups: Vec<_> = group_columns(keyed)
                .iter()
                .map(|g| match g {
                    SessionGroupColumn::Key(_) => column("k", 0),
                    SessionGroupColumn::WindowStart => column("window_start", 3),
                    SessionGroupColumn::WindowEnd => column("window_end", 4),
                })
                .collect();
            let end_key = group_columns(keyed)
                .iter()
                .position(|g| *g == SessionGroupColumn::WindowEnd)
                .unwrap();
            let aggregate = AggregateOperator::try_new(groups, calls(1), output_schema(keyed))
                .unwrap()
                .with_window(WindowedGroups {
                    end_key,
                    allowed_lateness: LATENESS,
                    emit_on_close,
                    watermarked: true,
                });
            Pair(session, aggregate)
        }

        fn process(&mut self, batch: ChangeBatch) -> Vec<ChangeBatch> {
            let mut out = Vec::new();
            for windowed in self.0.process(0, batch).unwrap() {
                out.extend(self.1.process(0, windowed).unwrap());
            }
            out
        }

        fn on_watermark(&mut self, watermark: i64) -> Vec<ChangeBatch> {
            let (mut out, passed) = self.0.on_watermark(0, watermark).unwrap();
            assert!(out.is_empty());
            if let Some(passed) = passed {
                out.extend(self.1.on_watermark(0, passed).unwrap().0);
            }
            out
        }
    }

    fn fused(keyed: bool, emit_on_close: bool) -> SessionAggregateOperator {
        SessionAggregateOperator::try_new(
            input_schema(),
            SessionSpec {
                time_column: 2,
                key_columns: key_columns(keyed),
                gap: GAP,
            },
            SessionClosing {
                allowed_lateness: LATENESS,
                emit_on_close,
                watermarked: true,
            },
            calls(1),
            group_columns(keyed),
            output_schema(keyed),
        )
        .unwrap()
    }

    /// A view: each row (as text) with its multiplicity.
    type View = BTreeMap<Vec<String>, i64>;

    fn apply(view: &mut View, batches: Vec<ChangeBatch>) {
        for batch in batches {
            for row in 0..batch.num_rows() {
                let cells = batch
                    .rows
                    .columns()
                    .iter()
                    .map(|c| array_value_to_string(c, row).unwrap())
                    .collect();
                let n = view.entry(cells).or_default();
                *n += batch.weights.value(row);
                assert!(*n >= 0, "a row retracted more than inserted");
            }
        }
        view.retain(|_, n| *n != 0);
    }

    /// Random steps: batches of rows of 4 keys whose times advance with
    /// jitter of ±1.5 gaps (rows bridge sessions and some arrive late), and
    /// watermarks trailing the latest time by half a gap.
    enum Step {
        Rows(ChangeBatch),
        Watermark(i64),
    }

    fn steps(seed: u64, count: usize, clock: &mut i64) -> Vec<Step> {
        let mut next = random(seed);
        let mut out = Vec::new();
        for _ in 0..count {
            if next(4) == 0 {
                out.push(Step::Watermark(*clock - GAP / 2));
                continue;
            }
            let rows = 1 + next(40) as usize;
            let (mut k, mut v, mut ts) = (vec![], vec![], vec![]);
            for _ in 0..rows {
                *clock += next(3_000) as i64;
                k.push(next(4) as i64);
                v.push(next(1_000) as i64);
                let jitter = next(3 * GAP as u64) as i64 - 3 * GAP / 2;
                ts.push((next(50) != 0).then_some(*clock + jitter));
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(Int64Array::from(v)),
                Arc::new(TimestampMicrosecondArray::from(ts)),
            ];
            let rows = RecordBatch::try_new(input_schema(), columns).unwrap();
            let weights = Int64Array::from(vec![1; rows.num_rows()]);
            out.push(Step::Rows(ChangeBatch::new(rows, weights).unwrap()));
        }
        out
    }

    fn run(operator: &mut dyn Operator, step: &Step) -> Vec<ChangeBatch> {
        match step {
            Step::Rows(batch) => operator.process(0, batch.clone()).unwrap(),
            Step::Watermark(w) => operator.on_watermark(0, *w).unwrap().0,
        }
    }

    fn entries(delta: StateDelta) -> RestoredTable {
        delta.into_map().into()
    }

    fn equals_the_pair(keyed: bool, emit_on_close: bool) {
        let mut clock = 1_000_000;
        let mut pair = Pair::new(keyed, emit_on_close);
        let mut one = fused(keyed, emit_on_close);
        let (mut expected, mut actual) = (View::new(), View::new());
        let mut watermark = None;
        // What each operator's checkpoints hold, captured after every
        // step: the pair's session window and aggregate, and the fused one.
        let mut checkpoints: [Checkpoints; 3] = Default::default();
        for (i, step) in steps(3, 300, &mut clock).into_iter().enumerate() {
            match &step {
                Step::Rows(batch) => apply(&mut expected, pair.process(batch.clone())),
                Step::Watermark(w) => {
                    watermark = Some(*w);
                    apply(&mut expected, pair.on_watermark(*w));
                }
            }
            apply(&mut actual, run(&mut one, &step));
            assert_eq!(expected, actual);
            let operators: [&mut dyn Operator; 3] = [&mut pair.0, &mut pair.1, &mut one];
            for (operator, checkpoints) in operators.into_iter().zip(&mut checkpoints) {
                checkpoints.capture(operator, &format!("after step {i}"));
            }
        }
        for checkpoints in &checkpoints {
            // Four keys: a batch mostly touches half of them (whole).
            let Checkpoints { deltas, whole, .. } = checkpoints;
            assert!(
                *deltas > 10 && *whole > 10,
                "{deltas} deltas, {whole} whole"
            );
        }
        assert!(pair.0.counters().late_rows > 0, "the input has late rows");
        assert_eq!(pair.0.counters().late_rows, one.counters().late_rows);
        assert!(!expected.is_empty());

        // Restored from its own state, from the pair's SessionWindow state,
        // and split into two shards.
        let mut own = StateDelta::new(true);
        one.checkpoint(&mut own).unwrap();
        let mut session_state = StateDelta::new(true);
        pair.0.checkpoint(&mut session_state).unwrap();
        let mut restored = fused(keyed, emit_on_close);
        restored.restore(entries(own.clone())).unwrap();
        let mut upgraded = fused(keyed, emit_on_close);
        upgraded.restore_replaced(entries(session_state)).unwrap();
        let mut restarted: Vec<Box<dyn Operator>> = vec![Box::new(restored), Box::new(upgraded)];
        if keyed {
            let mut shards = ShardedOperator::try_new(vec![
                fused(keyed, emit_on_close),
                fused(keyed, emit_on_close),
            ])
            .unwrap();
            shards.restore(entries(own)).unwrap();
            restarted.push(Box::new(shards));
        }
        let mut views = vec![expected.clone(); restarted.len()];
        for (operator, view) in restarted.iter_mut().zip(&mut views) {
            // Recovery passes the checkpointed watermark in again.
            if let Some(w) = watermark {
                apply(view, operator.on_watermark(0, w).unwrap().0);
            }
        }
        for step in steps(5, 300, &mut clock) {
            match &step {
                Step::Rows(batch) => apply(&mut expected, pair.process(batch.clone())),
                Step::Watermark(w) => apply(&mut expected, pair.on_watermark(*w)),
            }
            for (operator, view) in restarted.iter_mut().zip(&mut views) {
                apply(view, run(operator.as_mut(), &step));
                assert_eq!(&expected, view, "after restoring {}", operator.describe());
            }
        }
    }

    /// An upgrade: a graph checkpointed with the pair (scan, SessionWindow,
    /// aggregate) restores into the graph with the fused operator, which
    /// finds the SessionWindow's state by the id it had, and both go on
    /// alike.
    #[test]
    fn a_graph_checkpointed_with_the_pair_restores_into_the_fused_operator() {
        use crate::state::checkpoint::{CaptureRequest, RestoredState};
        use crate::stream::graph::StreamGraph;
        use crate::stream::source::ScanOperator;
        let scan = || Box::new(ScanOperator::new(7, "payments".into(), None));
        let mut old = StreamGraph::new();
        let leaf = old.add_scan(7, scan());
        let Pair(session, aggregate) = Pair::new(true, false);
        let windowed = old.add(Box::new(session), vec![leaf]);
        old.add(Box::new(aggregate), vec![windowed]);
        let mut clock = 1_000_000;
        let mut expected = View::new();
        let mut watermark = None;
        let feed = |graph: &mut StreamGraph, step: &Step| match step {
            Step::Rows(batch) => graph.push_relation(7, batch).unwrap(),
            Step::Watermark(w) => graph.push_watermark(7, *w).unwrap().0,
        };
        for step in steps(9, 200, &mut clock) {
            if let Step::Watermark(w) = step {
                watermark = Some(w);
            }
            apply(&mut expected, feed(&mut old, &step));
        }
        let mut tables = BTreeMap::new();
        old.checkpoint("v", &CaptureRequest::default(), &mut tables)
            .unwrap();
        let operators = tables
            .keys()
            .filter(|name| name.starts_with("v/op/"))
            .count();
        assert_eq!(operators, 2, "the pair's two stateful operators");
        let mut restored = RestoredState::default();
        for (name, delta) in tables {
            restored.insert(name, entries(delta));
        }

        let mut new = StreamGraph::new();
        let leaf = new.add_scan(7, scan());
        new.add(Box::new(fused(true, false)), vec![leaf]);
        new.restore("v", &mut restored, None).unwrap();
        let mut actual = expected.clone();
        if let Some(w) = watermark {
            apply(&mut actual, new.push_watermark(7, w).unwrap().0);
        }
        for step in steps(13, 200, &mut clock) {
            apply(&mut expected, feed(&mut old, &step));
            apply(&mut actual, feed(&mut new, &step));
            assert_eq!(expected, actual);
        }
    }

    #[test]
    fn keyed_sessions_equal_the_pair_and_restore() {
        equals_the_pair(true, false);
    }

    #[test]
    fn keyed_sessions_emitted_on_close_equal_the_pair_and_restore() {
        equals_the_pair(true, true);
    }

    #[test]
    fn unkeyed_sessions_equal_the_pair_and_restore() {
        equals_the_pair(false, false);
        equals_the_pair(false, true);
    }
}
