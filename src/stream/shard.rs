//! Keyed operators split across worker threads (hash partitioning).
//!
//! A [`ShardedOperator`] holds one instance of a keyed operator per worker;
//! each instance (a shard) owns the keys whose hash falls to it. An input
//! batch is split by the hash of each row's row-encoded key, and the shards
//! fold their parts at the same time, one on the runtime's thread and the
//! others on scoped threads; small batches are folded one shard after the
//! other on the runtime's thread, where a thread would cost more than it
//! saves. Watermarks and ticks go to each shard in turn. The operators that
//! split are those whose state is all keyed ([`KeyedOperator`]): GROUP BY
//! aggregates and equi-joins (not NOT IN).
//!
//! Invariants:
//! - a key always goes to the same shard: the shard is a fixed hash (FNV-1a,
//!   stable across builds) of the key's row encoding, the same bytes the
//!   operator keys its state by, so restoring routes checkpointed entries
//!   the same way whatever worker count wrote them;
//! - the output is the shards' outputs in shard order: each is the
//!   changelog of its own keys, and keys never span shards;
//! - state is written as one operator's (the shards' keys never collide):
//!   a checkpoint taken with N workers restores with M, and the operator's
//!   stable id is its shards' (EXPLAIN shows one operator).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::PhysicalExpr;

use super::{ChangeBatch, Operator, RowErrorPolicy};
use crate::error::Result;
use crate::state::checkpoint::StateDelta;

/// Batches with fewer rows are folded on the runtime's thread alone.
const PARALLEL_MIN_ROWS: usize = 512;

/// An operator whose state is keyed by a row-encoded key of its input rows,
/// so that it can be split into shards.
pub trait KeyedOperator: Operator + 'static {
    /// Whether this instance can be split (it keys all of its state).
    fn shardable(&self) -> bool;

    /// Per input, the expressions whose row encoding is the key.
    fn key_exprs(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>>;

    /// The keys' types (the row encoding's fields).
    fn key_types(&self) -> Vec<DataType>;

    /// The row-encoded key within one of this operator's checkpointed state
    /// keys.
    fn key_of_state(state_key: &[u8]) -> Result<&[u8]>
    where
        Self: Sized;
}

/// `make()` once, or split into `workers` shards when it can be.
pub fn sharded<T: KeyedOperator>(
    workers: usize,
    make: impl Fn() -> Result<T>,
) -> Result<Box<dyn Operator>> {
    let first = make()?;
    if workers < 2 || !first.shardable() {
        return Ok(Box::new(first));
    }
    let mut shards = vec![first];
    for _ in 1..workers {
        shards.push(make()?);
    }
    Ok(Box::new(ShardedOperator::try_new(shards)?))
}

/// One keyed operator, one instance per worker; see the module docs.
pub struct ShardedOperator {
    shards: Vec<Box<dyn Operator>>,
    /// Per input, the key expressions over its rows.
    keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Row encoding of the keys: the operator's own.
    key_codec: RowConverter,
    key_of_state: fn(&[u8]) -> Result<&[u8]>,
    /// Rows whose key failed to evaluate are skipped here (each shard would
    /// have skipped them).
    errors: RowErrorPolicy,
    /// Each shard's last watermark passed on; the operator passes on their
    /// minimum.
    shard_watermarks: Vec<Option<i64>>,
    forwarded: Option<i64>,
}

impl ShardedOperator {
    /// `shards` are identical, shardable operators (at least one).
    pub fn try_new<T: KeyedOperator>(shards: Vec<T>) -> Result<Self> {
        let first = shards
            .first()
            .ok_or_else(|| crate::internal!("a sharded operator needs a shard"))?;
        if !first.shardable() {
            return Err(crate::internal!("{} cannot be split", first.describe()));
        }
        let keys = first.key_exprs();
        let key_types = first.key_types();
        let key_codec = RowConverter::new(key_types.into_iter().map(SortField::new).collect())?;
        Ok(Self {
            shard_watermarks: vec![None; shards.len()],
            shards: shards
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Operator>)
                .collect(),
            keys,
            key_codec,
            key_of_state: T::key_of_state,
            errors: RowErrorPolicy::default(),
            forwarded: None,
        })
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (crate::stream::graph::fnv1a64(key) % self.shards.len() as u64) as usize
    }

    /// Runs `work` on every shard with its part, on threads of their own
    /// (the first on this one) when `parallel`; results in shard order.
    fn run<T: Send, R: Send>(
        &mut self,
        parts: Vec<T>,
        parallel: bool,
        work: impl Fn(&mut dyn Operator, T) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        let results: Vec<Result<R>> = if !parallel {
            self.shards
                .iter_mut()
                .zip(parts)
                .map(|(shard, part)| work(shard.as_mut(), part))
                .collect()
        } else {
            let work = &work;
            std::thread::scope(|scope| {
                let mut jobs = self.shards.iter_mut().zip(parts);
                let here = jobs.next();
                let spawned: Vec<_> = jobs
                    .map(|(shard, part)| scope.spawn(move || work(shard.as_mut(), part)))
                    .collect();
                let mut results = Vec::with_capacity(spawned.len() + 1);
                if let Some((shard, part)) = here {
                    results.push(work(shard.as_mut(), part));
                }
                for handle in spawned {
                    results.push(handle.join().unwrap_or_else(|panic| {
                        std::panic::resume_unwind(panic);
                    }));
                }
                results
            })
        };
        results.into_iter().collect()
    }

    /// The minimum of the shards' watermarks, when it moved.
    fn merge_watermarks(&mut self, moved: Vec<Option<i64>>) -> Option<i64> {
        for (slot, watermark) in self.shard_watermarks.iter_mut().zip(moved) {
            if watermark.is_some() {
                *slot = watermark;
            }
        }
        let merged = self
            .shard_watermarks
            .iter()
            .copied()
            .collect::<Option<Vec<i64>>>()?
            .into_iter()
            .min()?;
        if self.forwarded.is_some_and(|f| f >= merged) {
            return None;
        }
        self.forwarded = Some(merged);
        self.forwarded
    }

    /// Calls `step` on every shard, one after the other (watermarks and
    /// ticks mostly find little to do); their changes, and the watermark
    /// to pass on.
    fn each_shard(
        &mut self,
        step: impl Fn(&mut dyn Operator) -> Result<(Vec<ChangeBatch>, Option<i64>)> + Sync,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let parts = vec![(); self.shards.len()];
        let results = self.run(parts, false, |shard, ()| step(shard))?;
        let mut output = Vec::new();
        let mut moved = Vec::with_capacity(results.len());
        for (changes, watermark) in results {
            output.extend(changes);
            moved.push(watermark);
        }
        Ok((output, self.merge_watermarks(moved)))
    }
}

impl Operator for ShardedOperator {
    fn describe(&self) -> String {
        self.shards[0].describe()
    }

    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let keys = self
            .keys
            .get(input)
            .ok_or_else(|| crate::internal!("no input {input}"))?;
        let (batch, key_columns) = self.errors.evaluate(keys, &batch)?;
        let rows = batch.num_rows();
        let keys = self.key_codec.convert_columns(&key_columns)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); self.shards.len()];
        for row in 0..rows {
            indices[self.shard_of(keys.row(row).data())].push(row as u32);
        }
        // Every shard sees every batch (its share may be empty), so that
        // each knows its inputs are active (idle inputs, `stream::watermark`).
        let busy = indices.iter().filter(|rows| !rows.is_empty()).count();
        let parts = indices
            .iter()
            .map(|part| match part.len() {
                n if n == rows => Ok(batch.clone()),
                _ => batch.take(part),
            })
            .collect::<Result<Vec<_>>>()?;
        let parallel = busy > 1 && rows >= PARALLEL_MIN_ROWS;
        let outputs = self.run(parts, parallel, |shard, part| shard.process(input, part))?;
        Ok(outputs.into_iter().flatten().collect())
    }

    fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        Ok(self.each_shard(|shard| Ok((shard.start()?, None)))?.0)
    }

    fn on_watermark(
        &mut self,
        input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        self.each_shard(|shard| shard.on_watermark(input, watermark))
    }

    fn on_tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        self.each_shard(|shard| shard.on_tick(now))
    }

    fn late_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.late_rows()).sum()
    }

    fn state_keys(&self) -> u64 {
        self.shards.iter().map(|s| s.state_keys()).sum()
    }

    fn rows_failed(&self) -> u64 {
        self.errors.rows_failed + self.shards.iter().map(|s| s.rows_failed()).sum::<u64>()
    }

    fn last_error(&self) -> Option<String> {
        self.errors
            .last_error
            .clone()
            .or_else(|| self.shards.iter().find_map(|s| s.last_error()))
    }

    fn is_stateful(&self) -> bool {
        self.shards[0].is_stateful()
    }

    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        for shard in &mut self.shards {
            shard.checkpoint(delta)?;
        }
        Ok(())
    }

    fn restore(&mut self, entries: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
        let mut parts = vec![BTreeMap::new(); self.shards.len()];
        for (key, value) in entries {
            let shard = self.shard_of((self.key_of_state)(&key)?);
            parts[shard].insert(key, value);
        }
        for (shard, part) in self.shards.iter_mut().zip(parts) {
            shard.restore(part)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! A sharded aggregate against the same aggregate unsharded, over random
    //! insertions and retractions, and across a checkpoint restored with
    //! other worker counts.
    use super::*;
    use crate::stream::accumulator::{AggregateFolder, AggregateKind};
    use crate::stream::aggregate::{AggregateCall, AggregateOperator};
    use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema, SchemaRef};
    use datafusion::physical_expr::expressions::Column;

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    fn aggregate() -> AggregateOperator {
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("n", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
        ]));
        let call = |kind, display: &str| AggregateCall {
            folder: AggregateFolder::try_new(kind, &DataType::Int64, DataType::Int64, &[], None)
                .unwrap(),
            argument: Arc::new(Column::new("v", 1)),
            filter: None,
            display: display.into(),
        };
        let calls = vec![
            call(AggregateKind::Count, "count(*)"),
            call(AggregateKind::Sum, "sum(v)"),
        ];
        AggregateOperator::try_new(vec![Arc::new(Column::new("k", 0))], calls, output).unwrap()
    }

    fn sharded(workers: usize) -> ShardedOperator {
        ShardedOperator::try_new((0..workers).map(|_| aggregate()).collect()).unwrap()
    }

    type Result3 = BTreeMap<(i64, i64, Option<i64>), i64>;

    fn fold(into: &mut Result3, batches: Vec<ChangeBatch>) {
        for b in batches {
            let column = |i: usize| b.rows.column(i).as_primitive::<Int64Type>().clone();
            let (k, n, total) = (column(0), column(1), column(2));
            for i in 0..b.num_rows() {
                let row = (
                    k.value(i),
                    n.value(i),
                    total.is_valid(i).then(|| total.value(i)),
                );
                let weight = into.entry(row).or_insert(0);
                *weight += b.weights.value(i);
                if *weight == 0 {
                    into.remove(&row);
                }
            }
        }
    }

    /// Random changes: insertions of (key, value), and retractions of rows
    /// inserted before (so that every retraction is valid).
    fn changes(seed: u64, batches: usize, live: &mut Vec<(i64, i64)>) -> Vec<ChangeBatch> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..batches)
            .map(|b| {
                let rows = if b % 3 == 0 { 2_000 } else { 7 };
                let mut out = Vec::new();
                for _ in 0..rows {
                    if !live.is_empty() && next() % 3 == 0 {
                        let i = (next() % live.len() as u64) as usize;
                        out.push((live.swap_remove(i), -1));
                    } else {
                        let row = ((next() % 50) as i64, (next() % 1000) as i64);
                        live.push(row);
                        out.push((row, 1));
                    }
                }
                let keys = Int64Array::from(out.iter().map(|((k, _), _)| *k).collect::<Vec<_>>());
                let values = Int64Array::from(out.iter().map(|((_, v), _)| *v).collect::<Vec<_>>());
                let weights = Int64Array::from(out.iter().map(|(_, w)| *w).collect::<Vec<_>>());
                let rows =
                    RecordBatch::try_new(input_schema(), vec![Arc::new(keys), Arc::new(values)])
                        .unwrap();
                ChangeBatch::new(rows, weights).unwrap()
            })
            .collect()
    }

    #[test]
    fn sharded_aggregate_equals_one_aggregate_and_restores_with_other_worker_counts() {
        let mut live = Vec::new();
        let mut one = aggregate();
        let mut three = sharded(3);
        let (mut expected, mut actual) = (Result3::new(), Result3::new());
        for batch in changes(7, 30, &mut live) {
            fold(&mut expected, one.process(0, batch.clone()).unwrap());
            fold(&mut actual, three.process(0, batch).unwrap());
            assert_eq!(expected, actual);
        }
        assert_eq!(one.state_keys(), three.state_keys());

        let mut delta = StateDelta::new(true);
        three.checkpoint(&mut delta).unwrap();
        let entries: BTreeMap<Vec<u8>, Vec<u8>> = delta
            .entries
            .into_iter()
            .map(|(k, v)| (k, v.unwrap()))
            .collect();
        let mut two = sharded(2);
        two.restore(entries.clone()).unwrap();
        let mut single = aggregate();
        single.restore(entries).unwrap();
        let mut from_single = expected.clone();
        for batch in changes(11, 30, &mut live) {
            fold(&mut expected, one.process(0, batch.clone()).unwrap());
            fold(&mut actual, two.process(0, batch.clone()).unwrap());
            fold(&mut from_single, single.process(0, batch).unwrap());
            assert_eq!(expected, actual);
            assert_eq!(expected, from_single);
        }
    }
}
