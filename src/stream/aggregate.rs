//! Updating aggregate: GROUP BY with incrementally maintained aggregates.
//!
//! State is one entry per group, keyed by the row-encoded group key
//! (`arrow-row`), holding the number of input rows in the group and each
//! aggregate's [`AccumulatorState`]. For each input batch the operator folds
//! every change into its group, then emits, for each group the batch touched
//! and whose output changed, a retraction of the old output row and an
//! insertion of the new one. A group whose row count returns to zero is
//! removed (its output retracted), except the single group of an aggregate
//! without GROUP BY, which always has a row, as in batch SQL.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_plan::PhysicalExpr;

use super::accumulator::{AccumulatorState, AggregateFolder, PreparedInput};
use super::shard::KeyedOperator;
use super::{restore_in_pieces, Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::codec::{Decoder, Encoder};
use crate::state::windowed::{window_ends, ByWindow, Held, SpillStats, SpillValue, NO_WINDOW};
use crate::state::Changed;

/// One aggregate call: how to fold it, its argument and optional FILTER.
pub struct AggregateCall {
    pub folder: AggregateFolder,
    pub argument: Arc<dyn PhysicalExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    pub display: String,
}

/// Evaluating and folding a list of aggregate calls, shared by the
/// aggregate and the session window aggregate.
impl AggregateCall {
    /// What a batch is evaluated for: each call's argument, then its FILTER.
    pub(crate) fn exprs(calls: &[AggregateCall]) -> Vec<Arc<dyn PhysicalExpr>> {
        let mut exprs = Vec::with_capacity(calls.len() * 2);
        for call in calls {
            exprs.push(call.argument.clone());
            exprs.extend(call.filter.clone());
        }
        exprs
    }

    /// Each call's empty state.
    pub(crate) fn new_states(calls: &[AggregateCall]) -> Vec<AccumulatorState> {
        calls.iter().map(|c| c.folder.new_state()).collect()
    }

    /// Each call's value for `accumulators` (one state per call).
    pub(crate) fn values(
        calls: &[AggregateCall],
        accumulators: &[AccumulatorState],
    ) -> Result<Vec<ScalarValue>> {
        calls
            .iter()
            .zip(accumulators)
            .map(|(call, state)| call.folder.value(state))
            .collect()
    }

    /// Each call's value, or `None` when one is out of its type's range
    /// (22003, e.g. a BIGINT sum past 2^63): such a group has no row in the
    /// view until its value fits again, and `counters` (when given) count
    /// it as a failed row.
    pub(crate) fn values_in_range(
        calls: &[AggregateCall],
        accumulators: &[AccumulatorState],
        counters: Option<&mut OperatorCounters>,
    ) -> Result<Option<Vec<ScalarValue>>> {
        match Self::values(calls, accumulators) {
            Ok(values) => Ok(Some(values)),
            Err(error @ EddyError::OutOfRange(_)) => {
                if let Some(counters) = counters {
                    counters.row_failed(&error);
                }
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// The output columns of the calls for `rows` of values (each as
    /// [`AggregateCall::values`] made them).
    pub(crate) fn columns<'a>(
        calls: &[AggregateCall],
        rows: impl Iterator<Item = &'a [ScalarValue]> + Clone,
    ) -> Result<Vec<ArrayRef>> {
        (0..calls.len())
            .map(|position| {
                Ok(ScalarValue::iter_to_array(
                    rows.clone().map(|values| values[position].clone()),
                )?)
            })
            .collect()
    }
}

/// One batch's input to a list of aggregate calls: each call's argument in
/// its accumulation domain, and its FILTER mask.
pub(crate) struct CallInputs(Vec<(PreparedInput, Option<BooleanArray>)>);

impl CallInputs {
    /// From the columns [`AggregateCall::exprs`] evaluated to, in order.
    pub(crate) fn prepare(
        calls: &[AggregateCall],
        columns: &mut impl Iterator<Item = ArrayRef>,
    ) -> Result<Self> {
        let mut inputs = Vec::with_capacity(calls.len());
        for call in calls {
            let argument = columns
                .next()
                .ok_or_else(|| crate::internal!("missing argument"))?;
            let filter = match &call.filter {
                Some(_) => {
                    let mask = columns
                        .next()
                        .ok_or_else(|| crate::internal!("missing filter"))?;
                    Some(mask.as_boolean().clone())
                }
                None => None,
            };
            inputs.push((call.folder.prepare(&argument)?, filter));
        }
        Ok(Self(inputs))
    }

    /// Folds row `row` with `weight` into `accumulators` (one per call),
    /// for each call whose FILTER keeps the row.
    pub(crate) fn fold(
        &self,
        calls: &[AggregateCall],
        accumulators: &mut [AccumulatorState],
        row: usize,
        weight: i64,
    ) -> Result<()> {
        for ((call, state), (input, filter)) in calls.iter().zip(accumulators).zip(&self.0) {
            let selected = filter
                .as_ref()
                .is_none_or(|f| f.is_valid(row) && f.value(row));
            if selected {
                call.folder.update(state, input, row, weight)?;
            }
        }
        Ok(())
    }
}

/// A group's output row's aggregate values; `None`: it has no row.
type GroupOutput = Option<Vec<ScalarValue>>;

struct Group {
    /// The group's key, shared with the map, the dirty set and a batch's
    /// touched list (no copy per place).
    key: Arc<[u8]>,
    rows: i64,
    accumulators: Vec<AccumulatorState>,
    /// The batch that last changed it (`AggregateOperator::batch`): its
    /// output before that batch is remembered once.
    changed_in: u64,
}

impl SpillValue for Group {
    /// The group's row count and accumulators (as checkpoints store it).
    fn encode(&self, out: &mut Encoder) {
        out.i64(self.rows).u64(self.accumulators.len() as u64);
        for state in &self.accumulators {
            state.encode(out);
        }
    }

    fn decode(key: &Arc<[u8]>, bytes: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(bytes);
        let rows = d.i64()?;
        let count = d.u64()? as usize;
        // (A damaged count fails on the bytes, not on allocating for it.)
        let accumulators = (0..count.min(bytes.len()))
            .map(|_| AccumulatorState::decode(&mut d))
            .collect::<Result<Vec<_>>>()?;
        Ok(Group {
            key: key.clone(),
            rows,
            accumulators,
            changed_in: 0,
        })
    }

    fn memory_bytes(&self) -> usize {
        let accumulators: usize = self
            .accumulators
            .iter()
            .map(|state| std::mem::size_of_val(state) + AggregateFolder::memory_bytes(state))
            .sum();
        std::mem::size_of::<Group>() + accumulators
    }
}

/// How a windowed aggregate (GROUP BY ..., window_end) uses the watermark.
#[derive(Debug, Clone, Copy)]
pub struct WindowedGroups {
    /// Position of `window_end` among the group keys.
    pub end_key: usize,
    /// Windows stay open this long (µs) after the watermark passes their end.
    pub allowed_lateness: i64,
    /// Emit each window once, when it closes, instead of updating it.
    pub emit_on_close: bool,
    /// Whether a watermark reaches the window's time column; without one no
    /// window ever closes, and EXPLAIN says the state is unbounded.
    pub watermarked: bool,
}

pub struct AggregateOperator {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    calls: Vec<AggregateCall>,
    /// Row encoding of group keys; `None` for an aggregate without GROUP BY.
    key_codec: Option<RowConverter>,
    /// Groups by the end of their window (all under [`NO_WINDOW`] when the
    /// aggregate is not windowed), so that a closed window's groups go
    /// together.
    groups: ByWindow<Group>,
    schema: SchemaRef,
    counters: OperatorCounters,
    window: Option<WindowedGroups>,
    /// Groups changed (or removed) since the last checkpoint, with their
    /// window end.
    dirty: Changed<(i64, Arc<[u8]>)>,
    /// Counts input batches (see `Group::changed_in`).
    batch: u64,
}

impl AggregateOperator {
    /// Makes the aggregate window-aware: state of a window is freed once the
    /// watermark passes its end (plus the allowed lateness), and with
    /// `emit_on_close` the window's rows are emitted only then, once.
    pub fn with_window(mut self, window: WindowedGroups) -> Self {
        self.window = Some(window);
        self
    }
    pub fn try_new(
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        calls: Vec<AggregateCall>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let key_codec = if group_exprs.is_empty() {
            None
        } else {
            let fields = schema.fields()[..group_exprs.len()]
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            Some(RowConverter::new(fields)?)
        };
        Ok(Self {
            group_exprs,
            calls,
            key_codec,
            groups: ByWindow::default(),
            schema,
            counters: OperatorCounters::default(),
            window: None,
            dirty: Changed::default(),
            batch: 0,
        })
    }

    fn new_group(calls: &[AggregateCall], key: Arc<[u8]>) -> Group {
        Group {
            key,
            rows: 0,
            accumulators: AggregateCall::new_states(calls),
            changed_in: 0,
        }
    }

    /// Builds a changelog from `(group key, aggregate values, weight)` rows.
    fn build_output(&self, changes: Vec<(&[u8], Vec<ScalarValue>, i64)>) -> Result<ChangeBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        if let Some(codec) = &self.key_codec {
            let parser = codec.parser();
            columns.extend(codec.convert_rows(changes.iter().map(|(k, _, _)| parser.parse(k)))?);
        }
        columns.extend(AggregateCall::columns(
            &self.calls,
            changes.iter().map(|(_, v, _)| v.as_slice()),
        )?);
        let weights = Int64Array::from(changes.iter().map(|(_, _, w)| *w).collect::<Vec<_>>());
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(changes.len()));
        let rows = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        ChangeBatch::new(rows, weights)
    }
}

impl KeyedOperator for AggregateOperator {
    /// An aggregate without GROUP BY has one group: nothing to split.
    fn shardable(&self) -> bool {
        self.key_codec.is_some()
    }

    fn key_exprs(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        vec![self.group_exprs.clone()]
    }

    fn key_types(&self) -> Vec<DataType> {
        self.schema.fields()[..self.group_exprs.len()]
            .iter()
            .map(|f| f.data_type().clone())
            .collect()
    }

    /// A checkpointed state key is the row-encoded group key itself.
    fn key_of_state(state_key: &[u8]) -> Result<&[u8]> {
        Ok(state_key)
    }
}

impl Operator for AggregateOperator {
    fn describe(&self) -> String {
        let groups: Vec<String> = self.group_exprs.iter().map(|e| e.to_string()).collect();
        let calls: Vec<&str> = self.calls.iter().map(|c| c.display.as_str()).collect();
        let (kind, state) = match &self.window {
            Some(w) if !w.watermarked => (
                "UpdatingAggregate",
                "state unbounded: no watermark on the window's time column",
            ),
            Some(w) if w.emit_on_close => {
                ("WindowAggregate(emit on close)", "state freed by watermark")
            }
            Some(_) => ("UpdatingAggregate", "state freed by watermark"),
            None if self.key_codec.is_none() => ("UpdatingAggregate", "state: one row"),
            None => (
                "UpdatingAggregate",
                "state unbounded: grows with distinct groups",
            ),
        };
        format!(
            "{kind}: group_by=[{}], aggregates=[{}] ({state})",
            groups.join(", "),
            calls.join(", ")
        )
    }

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn on_watermark(
        &mut self,
        _input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let Some(window) = self.window else {
            return Ok((vec![], Some(watermark)));
        };
        let closed = self
            .groups
            .take_closed_loading(watermark.saturating_sub(window.allowed_lateness))?;
        let held = self.groups.len();
        let mut finished: Vec<Group> = Vec::new();
        for (end, groups) in closed {
            for (key, group) in groups {
                if window.emit_on_close && group.rows > 0 {
                    finished.push(group.into_inner());
                }
                self.dirty.note(held, || (end, key));
            }
        }
        if finished.is_empty() {
            return Ok((vec![], Some(watermark)));
        }
        let mut changes = Vec::with_capacity(finished.len());
        for group in &finished {
            let values = AggregateCall::values_in_range(
                &self.calls,
                &group.accumulators,
                Some(&mut self.counters),
            )?;
            if let Some(values) = values {
                changes.push((group.key.as_ref(), values, 1));
            }
        }
        if changes.is_empty() {
            return Ok((vec![], Some(watermark)));
        }
        Ok((vec![self.build_output(changes)?], Some(watermark)))
    }

    fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        if self.key_codec.is_some() {
            return Ok(vec![]);
        }
        // Without GROUP BY there is always exactly one output row.
        let key: Arc<[u8]> = Arc::from(&[][..]);
        let group = Self::new_group(&self.calls, key.clone());
        let values = AggregateCall::values(&self.calls, &group.accumulators)?;
        self.groups
            .window_mut(NO_WINDOW)
            .insert(key.clone(), Held::new(group));
        self.dirty.note(1, || (NO_WINDOW, key));
        Ok(vec![self.build_output(vec![(&[], values, 1)])?])
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        // Evaluate group keys, arguments and filters in one pass so that a row
        // failing any of them is skipped from all.
        let mut exprs = self.group_exprs.clone();
        exprs.extend(AggregateCall::exprs(&self.calls));
        let (batch, columns) = self.counters.evaluate(&exprs, &batch)?;
        let mut columns = columns.into_iter();
        let key_columns: Vec<ArrayRef> = columns.by_ref().take(self.group_exprs.len()).collect();
        let inputs = CallInputs::prepare(&self.calls, &mut columns)?;
        let keys = match &self.key_codec {
            Some(codec) => Some(codec.convert_columns(&key_columns)?),
            None => None,
        };
        // Window ends (µs) of the rows: their groups are kept by it.
        let windows = match &self.window {
            Some(window) => window_ends(&key_columns[window.end_key])?,
            None => vec![NO_WINDOW; batch.num_rows()],
        };

        // Fold every change; remember each touched group's output before
        // (`None`: the group is new). Rows come in runs of one window (a
        // batch of one, unwindowed): its groups are found once per run.
        self.batch += 1;
        let batch_number = self.batch;
        let mut touched: Vec<(i64, Arc<[u8]>, GroupOutput)> = Vec::new();
        let mut run_start = 0;
        while run_start < batch.num_rows() {
            let window = windows[run_start];
            let run_end = windows[run_start..]
                .iter()
                .position(|&other| other != window)
                .map_or(windows.len(), |length| run_start + length);
            if self.groups.has_cold() {
                // Cold groups this run touches come back to memory first.
                for row in run_start..run_end {
                    let key: &[u8] = keys.as_ref().map(|k| k.row(row).data()).unwrap_or(&[]);
                    self.groups.load(window, key)?;
                }
            }
            let groups = self.groups.window_mut(window);
            for row in run_start..run_end {
                let key: &[u8] = keys.as_ref().map(|k| k.row(row).data()).unwrap_or(&[]);
                let (group, created) = match groups.get_mut(key) {
                    Some(group) => (group, false),
                    None => {
                        let key: Arc<[u8]> = Arc::from(key);
                        let group = Self::new_group(&self.calls, key.clone());
                        (groups.entry(key).or_insert(Held::new(group)), true)
                    }
                };
                if group.changed_in != batch_number {
                    group.changed_in = batch_number;
                    let before = match created {
                        true => None,
                        // Counted when it was the group's new value.
                        false => {
                            AggregateCall::values_in_range(&self.calls, &group.accumulators, None)?
                        }
                    };
                    touched.push((window, group.key.clone(), before));
                }
                let weight = batch.weights.value(row);
                group.rows += weight;
                inputs.fold(&self.calls, &mut group.accumulators, row, weight)?;
            }
            run_start = run_end;
        }

        self.dirty.note_all(
            self.groups.len(),
            touched
                .iter()
                .map(|(window, key, _)| (*window, key.clone())),
        );
        if self.window.as_ref().is_some_and(|w| w.emit_on_close) {
            // Nothing is emitted before the window closes; empty groups go.
            for (window, key, _) in &touched {
                if self.groups.get(*window, key).is_some_and(|g| g.rows == 0) {
                    self.groups.remove(*window, key);
                }
            }
            return Ok(vec![]);
        }
        // Emit -old +new for groups whose output changed.
        let global = self.key_codec.is_none();
        let mut changes: Vec<(&[u8], Vec<ScalarValue>, i64)> = Vec::new();
        let mut after: Vec<GroupOutput> = Vec::with_capacity(touched.len());
        let mut emptied: Vec<(i64, &[u8])> = Vec::new();
        for (window, key, _) in &touched {
            let group = self
                .groups
                .get(*window, key)
                .ok_or_else(|| crate::internal!("group vanished"))?;
            if group.rows < 0 {
                return Err(crate::internal!(
                    "group has {} rows: a retraction arrived for a row never inserted",
                    group.rows
                ));
            }
            if group.rows == 0 && !global {
                emptied.push((*window, key));
            }
            after.push(if group.rows > 0 || global {
                AggregateCall::values_in_range(
                    &self.calls,
                    &group.accumulators,
                    Some(&mut self.counters),
                )?
            } else {
                None
            });
        }
        for ((_, key, old), new) in touched.iter().zip(after) {
            if *old == new {
                continue;
            }
            if let Some(old) = old {
                changes.push((key, old.clone(), -1));
            }
            if let Some(new) = new {
                changes.push((key, new, 1));
            }
        }
        let output = if changes.is_empty() {
            vec![]
        } else {
            vec![self.build_output(changes)?]
        };
        for (window, key) in emptied {
            self.groups.remove(window, key);
        }
        Ok(output)
    }

    /// Groups plus the values kept by min/max/count(DISTINCT); walks all
    /// state, so it is only computed when someone asks for the figures.
    fn state_keys(&self) -> Option<u64> {
        let values: u64 = self
            .groups
            .values()
            .flat_map(|g| g.accumulators.iter())
            .map(AggregateFolder::state_keys)
            .sum();
        Some(self.groups.len() as u64 + values)
    }

    /// Key: the group key; value: the group's row count and accumulators
    /// ([`SpillValue`] for `Group`).
    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        self.groups.capture(delta, &mut self.dirty)
    }

    /// The groups, and the set of those changed since the last checkpoint
    /// (which stays in memory).
    fn spill_stats(&self) -> Option<SpillStats> {
        Some(self.groups.spill_stats_beside(&self.dirty))
    }

    fn shrink(&mut self, target_bytes: usize) -> Result<()> {
        self.groups.evict_beside(target_bytes, &self.dirty)
    }

    fn restore(&mut self, entries: RestoredTable) -> Result<()> {
        self.groups.clear();
        self.dirty = Changed::default();
        restore_in_pieces(self, entries, Self::restore_piece)
    }
}

impl AggregateOperator {
    /// Restores a piece of the checkpointed groups (each an entry of its
    /// own).
    fn restore_piece(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        // Each group's window end, read back from its key (in bulk).
        let windows: Vec<i64> = match (&self.window, &self.key_codec) {
            (Some(window), Some(codec)) if !entries.is_empty() => {
                let parser = codec.parser();
                let keys = codec.convert_rows(entries.iter().map(|(k, _)| parser.parse(k)))?;
                window_ends(&keys[window.end_key])?
            }
            _ => vec![NO_WINDOW; entries.len()],
        };
        for ((key, value), window) in entries.iter().zip(windows) {
            let key: Arc<[u8]> = key.as_slice().into();
            let group = Group::decode(&key, value)?;
            if group.accumulators.len() != self.calls.len() {
                return Err(crate::error::EddyError::Checkpoint(format!(
                    "aggregate state has {} accumulators, the plan {}",
                    group.accumulators.len(),
                    self.calls.len()
                )));
            }
            self.groups.window_mut(window).insert(key, Held::new(group));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::accumulator::AggregateKind;
    use crate::stream::testing::Checkpoints;
    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema, TimeUnit};
    use datafusion::physical_expr::expressions::Column;
    use std::collections::BTreeMap;

    /// `(k, window end, sum(v))` and weight of each output row.
    type Output = BTreeMap<(i64, i64, i64), i64>;

    fn windowed_sum(emit_on_close: bool) -> AggregateOperator {
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("w", timestamp, false),
            Field::new("total", DataType::Int64, true),
        ]));
        let sum = AggregateCall {
            folder: AggregateFolder::try_new(
                AggregateKind::Sum,
                &DataType::Int64,
                DataType::Int64,
                &[],
                None,
            )
            .unwrap(),
            argument: Arc::new(Column::new("v", 2)),
            filter: None,
            display: "sum(v)".into(),
        };
        let groups: Vec<Arc<dyn PhysicalExpr>> =
            vec![Arc::new(Column::new("k", 0)), Arc::new(Column::new("w", 1))];
        AggregateOperator::try_new(groups, vec![sum], output)
            .unwrap()
            .with_window(WindowedGroups {
                end_key: 1,
                allowed_lateness: 0,
                emit_on_close,
                watermarked: true,
            })
    }

    /// Changes of `(k, window end, v)` rows.
    fn changes(rows: &[((i64, i64, i64), i64)]) -> ChangeBatch {
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("w", timestamp, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0 .0))),
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| r.0 .1),
                )),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0 .2))),
            ],
        )
        .unwrap();
        ChangeBatch::new(
            batch,
            Int64Array::from_iter_values(rows.iter().map(|r| r.1)),
        )
        .unwrap()
    }

    fn output(batches: Vec<ChangeBatch>) -> Output {
        let mut out = Output::new();
        for batch in batches {
            let int = |i: usize| {
                cast(batch.rows.column(i), &DataType::Int64)
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .clone()
            };
            let (k, w, total) = (int(0), int(1), int(2));
            for row in 0..batch.num_rows() {
                let weight = batch.weights.value(row);
                *out.entry((k.value(row), w.value(row), total.value(row)))
                    .or_default() += weight;
            }
        }
        out.retain(|_, weight| *weight != 0);
        out
    }

    /// An aggregate whose groups all go to disk after every batch answers
    /// as one that keeps them in memory: the same changes out, the same
    /// windows closed, the same checkpoints (its captures checked against
    /// its whole state), and its state restores.
    #[test]
    fn an_aggregate_spilled_to_disk_answers_as_one_in_memory() {
        for emit_on_close in [false, true] {
            let mut plain = windowed_sum(emit_on_close);
            let mut spilling = windowed_sum(emit_on_close);
            let mut checkpoints = Checkpoints::default();
            let mut next = crate::stream::testing::random(7);
            let mut held: Vec<(i64, i64, i64)> = Vec::new();
            let mut watermark = 0;
            for round in 0..60 {
                let mut batch = Vec::new();
                for _ in 0..40 {
                    if !held.is_empty() && next(3) == 0 {
                        let row = held.swap_remove(next(held.len() as u64) as usize);
                        batch.push((row, -1));
                    } else {
                        let window = watermark + 10 * (1 + next(4) as i64);
                        let row = (next(25) as i64, window, next(100) as i64);
                        held.push(row);
                        batch.push((row, 1));
                    }
                }
                let a = output(plain.process(0, changes(&batch)).unwrap());
                let b = output(spilling.process(0, changes(&batch)).unwrap());
                assert_eq!(a, b, "round {round}");
                spilling.shrink(0).unwrap();
                let stats = spilling.spill_stats().unwrap();
                assert_eq!(
                    spilling.groups.memory_bytes(),
                    0,
                    "every group went to disk"
                );
                // What stays: the set of groups changed since the checkpoint.
                assert_eq!(stats.memory_bytes, spilling.dirty.memory_bytes());
                if round % 5 == 4 {
                    watermark += 10;
                    held.retain(|row| row.1 > watermark);
                    let (a, _) = plain.on_watermark(0, watermark).unwrap();
                    let (b, _) = spilling.on_watermark(0, watermark).unwrap();
                    assert_eq!(output(a), output(b), "closing {watermark}");
                }
                checkpoints.capture(&mut spilling, &format!("round {round}"));
                assert_eq!(plain.state_keys(), spilling.state_keys());
            }
            let stats = spilling.spill_stats().unwrap();
            assert!(stats.disk_hits > 0 && stats.cold_keys > 0, "{stats:?}");
            let mut restored =
                crate::stream::testing::restored(&mut spilling, windowed_sum(emit_on_close));
            assert!(
                restored.spill_stats().unwrap().cold_keys > 0,
                "spilled as it restored"
            );
            assert_eq!(plain.state_keys(), restored.state_keys());
            let (a, _) = plain.on_watermark(0, i64::MAX - 1).unwrap();
            let (b, _) = restored.on_watermark(0, i64::MAX - 1).unwrap();
            assert_eq!(output(a), output(b));
        }
    }

    /// Groups of two windows, one emptied by a retraction; a capture after
    /// each batch (deltas that add up to the state), then a restore from
    /// them: the restored operator closes the same windows and answers the
    /// same.
    #[test]
    fn a_windowed_aggregate_closes_its_windows_also_after_a_restore() {
        for emit_on_close in [false, true] {
            let mut aggregate = windowed_sum(emit_on_close);
            let mut checkpoints = Checkpoints::default();
            let batches = [
                vec![((1, 10, 1), 1), ((1, 20, 2), 1), ((2, 10, 3), 1)],
                vec![((1, 10, 4), 1), ((2, 10, 3), -1), ((4, 20, 1), 1)],
                vec![((4, 20, 1), -1)],
            ];
            let mut emitted = Output::new();
            for (i, batch) in batches.iter().enumerate() {
                for (row, weight) in output(aggregate.process(0, changes(batch)).unwrap()) {
                    *emitted.entry(row).or_default() += weight;
                }
                checkpoints.capture(&mut aggregate, &format!("after batch {i}"));
            }
            emitted.retain(|_, weight| *weight != 0);
            let expected = match emit_on_close {
                true => Output::new(),
                false => Output::from([((1, 10, 5), 1), ((1, 20, 2), 1)]),
            };
            assert_eq!(emitted, expected, "emit on close: {emit_on_close}");
            assert_eq!(
                aggregate.state_keys().unwrap(),
                2,
                "the emptied groups are gone"
            );

            let mut whole = StateDelta::new(true);
            aggregate.checkpoint(&mut whole).unwrap();
            let mut restored = windowed_sum(emit_on_close);
            restored.restore(whole.into_map().into()).unwrap();
            assert_eq!(restored.state_keys().unwrap(), 2);

            for aggregate in [&mut aggregate, &mut restored] {
                let (closed, _) = aggregate.on_watermark(0, 15).unwrap();
                let expected = match emit_on_close {
                    true => Output::from([((1, 10, 5), 1)]),
                    false => Output::new(),
                };
                assert_eq!(output(closed), expected, "window 10 closes");
                assert_eq!(aggregate.state_keys().unwrap(), 1);
                let added = output(aggregate.process(0, changes(&[((3, 20, 7), 1)])).unwrap());
                let expected = match emit_on_close {
                    true => Output::new(),
                    false => Output::from([((3, 20, 7), 1)]),
                };
                assert_eq!(added, expected);
                let (closed, _) = aggregate.on_watermark(0, 25).unwrap();
                let expected = match emit_on_close {
                    true => Output::from([((1, 20, 2), 1), ((3, 20, 7), 1)]),
                    false => Output::new(),
                };
                assert_eq!(output(closed), expected, "window 20 closes");
                assert_eq!(aggregate.state_keys().unwrap(), 0);
            }
        }
    }
}
