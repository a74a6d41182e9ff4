//! Operators over ordered partitions of their input:
//! - top-N: `ORDER BY ... LIMIT n [OFFSET m]`, and per-group top-N —
//!   `ROW_NUMBER()` / `RANK()` / `DENSE_RANK() OVER (PARTITION BY ... ORDER
//!   BY ...)` under a filter `<= n` (`= 1` is deduplication);
//! - window functions: any `f(...) OVER (PARTITION BY ... ORDER BY ...
//!   [frame])`, evaluated by DataFusion's own window expressions.
//!
//! State per partition: every input row in sort order (a multiset keyed by
//! the row-encoded sort key, then the row itself, so ties are broken the
//! same way every time), and what the partition emitted last. After a batch,
//! each touched partition is computed again and the difference with what it
//! emitted goes out: a row retracted from inside the top-N lets the next one
//! move up, a row whose number (or window value) changed is retracted and
//! inserted again.
//!
//! The whole input is kept (a retraction can bring any row into the top-N),
//! except under a ROW_NUMBER or LIMIT top-N over an append-only input: no
//! row leaves, so a row pushed out of the first `offset + limit` never
//! comes back, and only those are kept.
//! Partitions spill under the memory limit (`state::windowed::ByWindow`,
//! all under [`NO_WINDOW`]): a cold partition is loaded before a change
//! touches it.
//!
//! Recomputing a top-N partition reads only its first `offset + limit` rows
//! (more with ties under RANK); a window function reads the whole partition,
//! so its cost per change grows with the partition (a window without
//! PARTITION BY is one partition).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::window::WindowExpr;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::PhysicalExpr;

use super::{encode_keys, restore_in_pieces, Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::codec::{Decoder, Encoder};
use crate::state::windowed::{ByWindow, Held, SpillStats, SpillValue, NO_WINDOW};
use crate::state::RowCodec;
use crate::state::{Changed, KeyMap, KeySet};

/// How the kept rows are numbered, and whether the number is a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// `LIMIT`: no number column.
    Limit,
    RowNumber,
    Rank,
    DenseRank,
}

impl Numbering {
    pub fn from_function(name: &str) -> Option<Self> {
        match name {
            "row_number" => Some(Numbering::RowNumber),
            "rank" => Some(Numbering::Rank),
            "dense_rank" => Some(Numbering::DenseRank),
            _ => None,
        }
    }
}

type SortedRows = BTreeMap<(Arc<[u8]>, Arc<[u8]>), i64>;

/// A row (row-encoded) and its number in the partition.
type Numbered = (Arc<[u8]>, i64);

#[derive(Default)]
struct Partition {
    /// (sort key, row) → multiplicity.
    rows: SortedRows,
    /// What the partition emitted last: (row, number) for a top-N, (output
    /// row, 0) for window functions.
    emitted: Vec<(Arc<[u8]>, i64)>,
}

impl SpillValue for Partition {
    /// Its rows (sort key, row, multiplicity), then what it emitted (row,
    /// number).
    fn encode(&self, out: &mut Encoder) {
        out.u64(self.rows.len() as u64);
        for ((key, row), multiplicity) in &self.rows {
            out.bytes(key).bytes(row).i64(*multiplicity);
        }
        out.u64(self.emitted.len() as u64);
        for (row, number) in &self.emitted {
            out.bytes(row).i64(*number);
        }
    }

    fn decode(_key: &Arc<[u8]>, bytes: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(bytes);
        let mut partition = Partition::default();
        for _ in 0..d.u64()? {
            let sort_key: Arc<[u8]> = Arc::from(d.bytes()?);
            let row: Arc<[u8]> = Arc::from(d.bytes()?);
            partition.rows.insert((sort_key, row), d.i64()?);
        }
        for _ in 0..d.u64()? {
            let row: Arc<[u8]> = Arc::from(d.bytes()?);
            partition.emitted.push((row, d.i64()?));
        }
        if !d.is_empty() {
            return Err(EddyError::Checkpoint(
                "top-N state has trailing bytes".into(),
            ));
        }
        Ok(partition)
    }

    fn memory_bytes(&self) -> usize {
        // Each kept row: its two `Arc`s' bytes and counts, and the tree's
        // entry (with its nodes' slack); an emitted row shares its `Arc`.
        let rows: usize = self
            .rows
            .keys()
            .map(|(key, row)| key.len() + row.len() + 2 * 32 + 64)
            .sum();
        let emitted = self.emitted.capacity() * std::mem::size_of::<(Arc<[u8]>, i64)>();
        std::mem::size_of::<Partition>() + rows + emitted
    }
}

/// What a partition shows.
enum Shown {
    TopN {
        numbering: Numbering,
        offset: usize,
        limit: usize,
    },
    /// Each input row with the values of the window functions.
    Window {
        functions: Vec<Arc<dyn WindowExpr>>,
        output_codec: RowCodec,
    },
}

pub struct OverOperator {
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    order_by: Vec<PhysicalSortExpr>,
    shown: Shown,
    partition_converter: RowConverter,
    order_converter: RowConverter,
    input_codec: RowCodec,
    output_schema: SchemaRef,
    /// By partition key, all under [`NO_WINDOW`].
    partitions: ByWindow<Partition>,
    /// Keep only this many first rows per partition (append-only input).
    keep_first: Option<usize>,
    /// Distinct rows kept over all partitions, in memory and on disk.
    kept_rows: u64,
    /// Partitions changed since the last checkpoint.
    dirty: Changed<(i64, Arc<[u8]>)>,
    counters: OperatorCounters,
    description: String,
}

impl OverOperator {
    /// A top-N. `output_schema` is the input's, plus the number column
    /// unless `numbering` is [`Numbering::Limit`].
    #[allow(clippy::too_many_arguments)]
    pub fn top_n(
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        numbering: Numbering,
        offset: usize,
        limit: usize,
        input_schema: SchemaRef,
        output_schema: SchemaRef,
        description: String,
    ) -> Result<Self> {
        if offset > 0 && matches!(numbering, Numbering::Rank | Numbering::DenseRank) {
            return Err(crate::internal!("an offset applies to row numbers only"));
        }
        let shown = Shown::TopN {
            numbering,
            offset,
            limit,
        };
        Self::try_new(
            partition_by,
            order_by,
            shown,
            input_schema,
            output_schema,
            description,
        )
    }

    /// Window functions sharing one PARTITION BY and ORDER BY. `output_schema`
    /// is the input's plus one column per function.
    pub fn window(
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        functions: Vec<Arc<dyn WindowExpr>>,
        input_schema: SchemaRef,
        output_schema: SchemaRef,
        description: String,
    ) -> Result<Self> {
        let shown = Shown::Window {
            functions,
            output_codec: RowCodec::try_new(output_schema.clone())?,
        };
        Self::try_new(
            partition_by,
            order_by,
            shown,
            input_schema,
            output_schema,
            description,
        )
    }

    fn try_new(
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        shown: Shown,
        input_schema: SchemaRef,
        output_schema: SchemaRef,
        description: String,
    ) -> Result<Self> {
        let partition_fields = partition_by
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(&input_schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let order_fields = order_by
            .iter()
            .map(|e| {
                Ok(SortField::new_with_options(
                    e.expr.data_type(&input_schema)?,
                    e.options,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            partition_by,
            order_by,
            shown,
            partition_converter: RowConverter::new(partition_fields)?,
            order_converter: RowConverter::new(order_fields)?,
            input_codec: RowCodec::try_new(input_schema)?,
            output_schema,
            partitions: ByWindow::default(),
            keep_first: None,
            kept_rows: 0,
            dirty: Changed::default(),
            counters: OperatorCounters::default(),
            description,
        })
    }

    /// Whether the input never retracts: then a ROW_NUMBER / LIMIT top-N
    /// keeps only the rows it may show (other operators are unchanged).
    pub fn with_input_append_only(mut self, append_only: bool) -> Self {
        if !append_only {
            return self;
        }
        if let Shown::TopN {
            numbering: Numbering::RowNumber | Numbering::Limit,
            offset,
            limit,
        } = &self.shown
        {
            self.keep_first = Some(offset + limit);
        }
        self
    }

    /// What a partition shows now.
    fn show(&self, rows: &SortedRows) -> Result<Vec<(Arc<[u8]>, i64)>> {
        match &self.shown {
            Shown::TopN {
                numbering,
                offset,
                limit,
            } => Ok(top(rows, *numbering, *offset, *limit)),
            Shown::Window {
                functions,
                output_codec,
            } => {
                // The partition's rows in order, each as often as it occurs.
                let ordered = rows.iter().flat_map(|((_, row), &multiplicity)| {
                    std::iter::repeat_n(row.as_ref(), multiplicity.max(0) as usize)
                });
                let input = self.input_codec.decode(ordered)?;
                let mut columns = input.columns().to_vec();
                for function in functions {
                    columns.push(function.evaluate(&input)?);
                }
                let output = datafusion::arrow::array::RecordBatch::try_new(
                    self.output_schema.clone(),
                    columns,
                )?;
                Ok(output_codec
                    .encode(&output)?
                    .into_iter()
                    .map(|row| (row, 0))
                    .collect())
            }
        }
    }
}

/// Keeps the first `keep` rows (counting multiplicities) of `rows`.
fn keep_first(rows: &mut SortedRows, keep: usize) {
    let keep = keep as i64;
    let mut seen = 0i64;
    let mut cut = None;
    for (slot, multiplicity) in rows.iter_mut() {
        if seen >= keep {
            cut = Some(slot.clone());
            break;
        }
        *multiplicity = (*multiplicity).min(keep - seen);
        seen += *multiplicity;
    }
    if let Some(cut) = cut {
        rows.split_off(&cut);
    }
}

/// The rows a top-N partition shows, in order, with their numbers.
fn top(
    rows: &SortedRows,
    numbering: Numbering,
    offset: usize,
    limit: usize,
) -> Vec<(Arc<[u8]>, i64)> {
    let mut shown = Vec::new();
    let mut position = 0usize;
    let mut rank = 0i64;
    let mut dense = 0i64;
    let mut previous_key: Option<&Arc<[u8]>> = None;
    'rows: for ((key, row), &multiplicity) in rows {
        let new_key = previous_key != Some(key);
        previous_key = Some(key);
        if new_key {
            dense += 1;
            // RANK: the position of the first row of equal keys.
            rank = position as i64 + 1;
        }
        for _ in 0..multiplicity {
            position += 1;
            let number = match numbering {
                Numbering::Limit | Numbering::RowNumber => position as i64,
                Numbering::Rank => rank,
                Numbering::DenseRank => dense,
            };
            let shown_up_to = (offset + limit) as i64;
            if number > shown_up_to {
                break 'rows;
            }
            if number > offset as i64 {
                shown.push((row.clone(), number));
            }
        }
    }
    shown
}

impl Operator for OverOperator {
    fn describe(&self) -> String {
        match self.keep_first {
            Some(n) => format!(
                "{} (state bounded: {n} rows per partition)",
                self.description
            ),
            None => format!(
                "{} (state unbounded: keeps every input row)",
                self.description
            ),
        }
    }

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let mut exprs = self.partition_by.clone();
        exprs.extend(self.order_by.iter().map(|e| e.expr.clone()));
        let (batch, columns) = self.counters.evaluate(&exprs, &batch)?;
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let (partition_columns, order_columns) = columns.split_at(self.partition_by.len());
        let partitions = encode_keys(
            &self.partition_converter,
            partition_columns,
            batch.num_rows(),
        )?;
        let order_keys = encode_keys(&self.order_converter, order_columns, batch.num_rows())?;
        let rows = self.input_codec.encode(&batch.rows)?;
        // Partitions that went to disk come back first.
        if self.partitions.has_cold() {
            for key in &partitions {
                self.partitions.load(NO_WINDOW, key)?;
            }
        }
        let mut touched: KeySet<Arc<[u8]>> = KeySet::default();
        for (i, weight) in batch.weights.values().iter().enumerate() {
            let partition =
                self.partitions
                    .get_or_insert_with(NO_WINDOW, &partitions[i], Partition::default);
            let slot = (order_keys[i].clone(), rows[i].clone());
            let before = partition.rows.len();
            let multiplicity = partition.rows.entry(slot.clone()).or_insert(0);
            *multiplicity += weight;
            if *multiplicity == 0 {
                partition.rows.remove(&slot);
            }
            self.kept_rows = (self.kept_rows + partition.rows.len() as u64) - before as u64;
            touched.insert(partitions[i].clone());
        }
        self.dirty.note_all(
            self.partitions.len(),
            touched.iter().map(|key| (NO_WINDOW, key.clone())),
        );

        // (row, number) → weight of the change.
        let mut changes: KeyMap<(Arc<[u8]>, i64), i64> = KeyMap::default();
        for key in touched {
            let Some(partition) = self.partitions.get(NO_WINDOW, &key) else {
                continue;
            };
            let shown = self.show(&partition.rows)?;
            let partition = self
                .partitions
                .get_mut(NO_WINDOW, &key)
                .ok_or_else(|| crate::internal!("top-N partition vanished"))?;
            for (row, number) in std::mem::take(&mut partition.emitted) {
                *changes.entry((row, number)).or_insert(0) -= 1;
            }
            for (row, number) in &shown {
                *changes.entry((row.clone(), *number)).or_insert(0) += 1;
            }
            if let Some(keep) = self.keep_first {
                let before = partition.rows.len();
                keep_first(&mut partition.rows, keep);
                self.kept_rows -= (before - partition.rows.len()) as u64;
            }
            if partition.rows.is_empty() {
                self.partitions.remove(NO_WINDOW, &key);
            } else {
                partition.emitted = shown;
            }
        }
        changes.retain(|_, weight| *weight != 0);
        if changes.is_empty() {
            return Ok(vec![]);
        }
        let mut ordered: Vec<(Numbered, i64)> = changes.into_iter().collect();
        ordered.sort_unstable();
        let rows = ordered.iter().map(|((row, _), _)| row.as_ref());
        let columns: Vec<ArrayRef> = match &self.shown {
            Shown::TopN { numbering, .. } => {
                let mut columns = self.input_codec.decode(rows)?.columns().to_vec();
                if *numbering != Numbering::Limit {
                    let numbers =
                        Int64Array::from_iter_values(ordered.iter().map(|((_, n), _)| *n));
                    let target = self.output_schema.field(columns.len()).data_type();
                    columns.push(cast(&numbers, target)?);
                }
                columns
            }
            Shown::Window { output_codec, .. } => output_codec.decode(rows)?.columns().to_vec(),
        };
        let weights = Int64Array::from_iter_values(ordered.iter().map(|(_, w)| *w));
        let rows =
            datafusion::arrow::array::RecordBatch::try_new(self.output_schema.clone(), columns)?;
        Ok(vec![ChangeBatch::new(rows, weights)?])
    }

    /// Distinct rows kept, in memory and on disk.
    fn state_keys(&self) -> Option<u64> {
        Some(self.kept_rows)
    }

    /// One entry per partition ([`SpillValue`] for `Partition`).
    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        self.partitions.capture(delta, &mut self.dirty)
    }

    /// The partitions, and the set of those changed since the last
    /// checkpoint (which stays in memory).
    fn spill_stats(&self) -> Option<SpillStats> {
        Some(self.partitions.spill_stats_beside(&self.dirty))
    }

    fn shrink(&mut self, target_bytes: usize) -> Result<()> {
        self.partitions.evict_beside(target_bytes, &self.dirty)
    }

    fn restore(&mut self, entries: RestoredTable) -> Result<()> {
        self.partitions.clear();
        self.dirty = Changed::default();
        self.kept_rows = 0;
        restore_in_pieces(self, entries, Self::restore_piece)
    }
}

impl OverOperator {
    /// Restores a piece of the checkpointed partitions (each an entry of
    /// its own).
    fn restore_piece(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let partitions = self.partitions.window_mut(NO_WINDOW);
        for (key, value) in entries {
            let key: Arc<[u8]> = Arc::from(key);
            let partition = Partition::decode(&key, &value)?;
            self.kept_rows += partition.rows.len() as u64;
            partitions.insert(key, Held::new(partition));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with sort keys `keys` (one byte each), each row distinct.
    fn rows(keys: &[(u8, i64)]) -> SortedRows {
        keys.iter()
            .enumerate()
            .map(|(i, (key, n))| ((Arc::from(&[*key][..]), Arc::from(&[i as u8][..])), *n))
            .collect()
    }

    fn numbers(shown: Vec<Numbered>) -> Vec<i64> {
        shown.into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn ties_are_numbered_as_sql_numbers_them() {
        // Keys 1, 2, 2, 3 (the second 2 occurring twice), 4.
        let sorted = rows(&[(1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]);
        assert_eq!(
            numbers(top(&sorted, Numbering::RowNumber, 0, 3)),
            vec![1, 2, 3]
        );
        assert_eq!(numbers(top(&sorted, Numbering::Limit, 2, 2)), vec![3, 4]);
        // RANK keeps every row tied with the last one in.
        assert_eq!(
            numbers(top(&sorted, Numbering::Rank, 0, 2)),
            vec![1, 2, 2, 2]
        );
        assert_eq!(
            numbers(top(&sorted, Numbering::Rank, 0, 5)),
            vec![1, 2, 2, 2, 5]
        );
        assert_eq!(
            numbers(top(&sorted, Numbering::DenseRank, 0, 3)),
            vec![1, 2, 2, 2, 3]
        );
        assert!(top(&sorted, Numbering::RowNumber, 0, 0).is_empty());
    }

    #[test]
    fn keeping_the_first_rows_counts_duplicates() {
        let mut sorted = rows(&[(1, 1), (2, 3), (3, 1)]);
        keep_first(&mut sorted, 3);
        let kept: Vec<i64> = sorted.values().copied().collect();
        assert_eq!(kept, vec![1, 2]);
        keep_first(&mut sorted, 10);
        assert_eq!(sorted.values().sum::<i64>(), 3);
    }

    /// A top-3 per partition under random insertions and retractions over
    /// 30 partitions, captured after every change: what its checkpoints
    /// hold is its state, whether a capture held the changed partitions or
    /// (after a batch touching most of them) all of them.
    #[test]
    fn checkpoints_hold_the_partitions_changed() {
        use crate::stream::testing::{int_pairs, random, Checkpoints};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_expr::expressions::Column;
        let field = |name: &str| Field::new(name, DataType::Int64, false);
        let input = Arc::new(Schema::new(vec![field("k"), field("v")]));
        let output = Arc::new(Schema::new(vec![field("k"), field("v"), field("n")]));
        let column = |name: &str, i| Arc::new(Column::new(name, i)) as Arc<dyn PhysicalExpr>;
        let mut top = OverOperator::top_n(
            vec![column("k", 0)],
            vec![PhysicalSortExpr::new_default(column("v", 1))],
            Numbering::RowNumber,
            0,
            3,
            input.clone(),
            output,
            "top 3".into(),
        )
        .unwrap();
        let mut next = random(11);
        let mut live: Vec<(i64, i64)> = Vec::new();
        let mut checkpoints = Checkpoints::default();
        for step in 0..300 {
            let count = if step % 50 == 25 { 200 } else { 1 + next(3) };
            let mut changes = Vec::new();
            for _ in 0..count {
                if !live.is_empty() && next(3) == 0 {
                    let row = live.swap_remove(next(live.len() as u64) as usize);
                    changes.push((row, -1));
                } else {
                    let row = (next(30) as i64, next(1_000) as i64);
                    live.push(row);
                    changes.push((row, 1));
                }
            }
            top.process(0, int_pairs(&input, &changes)).unwrap();
            checkpoints.capture(&mut top, &format!("after step {step}"));
        }
        let Checkpoints { deltas, whole, .. } = checkpoints;
        assert!(deltas > 200 && whole > 5, "{deltas} deltas, {whole} whole");
    }

    /// A top-3 spilled to disk after every change (and restored from a
    /// whole capture midway) emits what one in memory emits, under
    /// insertions and retractions.
    #[test]
    fn a_top_n_spilled_to_disk_answers_as_one_in_memory() {
        use crate::stream::testing::{int_pairs, random};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::util::display::array_value_to_string;
        use datafusion::physical_expr::expressions::Column;
        let field = |name: &str| Field::new(name, DataType::Int64, false);
        let input = Arc::new(Schema::new(vec![field("k"), field("v")]));
        let output = Arc::new(Schema::new(vec![field("k"), field("v"), field("n")]));
        let column = |name: &str, i| Arc::new(Column::new(name, i)) as Arc<dyn PhysicalExpr>;
        let make = || {
            OverOperator::top_n(
                vec![column("k", 0)],
                vec![PhysicalSortExpr::new_default(column("v", 1))],
                Numbering::Rank,
                0,
                3,
                input.clone(),
                output.clone(),
                "top 3".into(),
            )
            .unwrap()
        };
        let consolidate = |into: &mut BTreeMap<String, i64>, batches: Vec<ChangeBatch>| {
            for b in batches {
                for i in 0..b.num_rows() {
                    let row: Vec<String> = (0..b.rows.num_columns())
                        .map(|c| array_value_to_string(b.rows.column(c), i).unwrap())
                        .collect();
                    *into.entry(row.join(",")).or_insert(0) += b.weights.value(i);
                }
            }
            into.retain(|_, n| *n != 0);
        };
        let (mut memory, mut spilled) = (make(), make());
        let (mut expected, mut got) = (BTreeMap::new(), BTreeMap::new());
        let mut next = random(5);
        let mut live: Vec<(i64, i64)> = Vec::new();
        let mut most_cold = 0;
        for step in 0..300 {
            let mut changes = Vec::new();
            for _ in 0..1 + next(4) {
                if !live.is_empty() && next(3) == 0 {
                    let row = live.swap_remove(next(live.len() as u64) as usize);
                    changes.push((row, -1));
                } else {
                    let row = (next(40) as i64, next(50) as i64);
                    live.push(row);
                    changes.push((row, 1));
                }
            }
            consolidate(
                &mut expected,
                memory.process(0, int_pairs(&input, &changes)).unwrap(),
            );
            consolidate(
                &mut got,
                spilled.process(0, int_pairs(&input, &changes)).unwrap(),
            );
            assert_eq!(got, expected, "after step {step}");
            assert_eq!(
                spilled.state_keys(),
                memory.state_keys(),
                "after step {step}"
            );
            if step == 150 {
                spilled = crate::stream::testing::restored(&mut spilled, make());
            }
            spilled.shrink(0).unwrap();
            assert_eq!(
                spilled.partitions.memory_bytes(),
                0,
                "every partition on disk"
            );
            most_cold = most_cold.max(spilled.spill_stats().unwrap().cold_keys);
        }
        assert!(most_cold > 20, "{most_cold} partitions went to disk");
    }
}
