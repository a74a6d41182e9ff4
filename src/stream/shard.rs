//! Keyed operators split across worker threads (hash partitioning).
//!
//! A [`ShardedOperator`] holds one instance of a keyed operator (GROUP BY
//! aggregates, equi-joins: [`KeyedOperator`]) per worker; each instance (a
//! shard) owns the keys whose hash falls to it. An input batch is split by
//! the hash of each row's row-encoded key; shard 0 folds its part on the
//! runtime's thread while every other shard folds its part on a thread of
//! its own, which lives as long as the operator and owns that shard (its
//! allocations stay on one thread, and no thread is started per batch).
//! Watermarks, ticks, checkpoints and restores reach every shard the same
//! way; the runtime's thread waits for all of them.
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
//!   stable id is its shards' (EXPLAIN shows one operator);
//! - a panic in a shard's thread is raised again on the runtime's thread,
//!   which fails the view as any operator panic does.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::PhysicalExpr;

use super::{Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::Result;
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::windowed::SpillStats;

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
    /// Shard 0, folded on the runtime's thread.
    local: Box<dyn Operator>,
    /// Shards 1.., each on its own thread.
    remote: Vec<ShardThread>,
    description: String,
    /// What the shards say they replaced (`Operator::replaces`).
    replaces: Option<String>,
    stateful: bool,
    /// Per input, the key expressions over its rows.
    keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Row encoding of the keys: the operator's own.
    key_codec: RowConverter,
    key_of_state: fn(&[u8]) -> Result<&[u8]>,
    /// Rows whose key failed to evaluate are skipped here (each shard would
    /// have skipped them).
    counters: OperatorCounters,
    /// Each shard's last watermark passed on; the operator passes on their
    /// minimum.
    shard_watermarks: Vec<Option<i64>>,
    forwarded: Option<i64>,
}

/// Work for a shard's thread, and what it sends back.
type Job = Box<dyn FnOnce(&mut dyn Operator) -> Box<dyn Any + Send> + Send>;
type Done = std::thread::Result<Box<dyn Any + Send>>;

/// A thread that owns one shard and runs the jobs sent to it, in order,
/// answering each.
struct ShardThread {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShardThread {
    fn spawn(mut shard: Box<dyn Operator>, index: usize) -> Result<Self> {
        let (jobs, incoming) = mpsc::channel::<Job>();
        let (answer, done) = mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name(format!("eddy-shard-{index}"))
            .stack_size(crate::common::DEEP_STACK_BYTES)
            .spawn(move || {
                for job in incoming {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(shard.as_mut())
                    }));
                    if answer.send(result).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| crate::internal!("cannot start a shard thread: {e}"))?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    fn send<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut dyn Operator) -> R + Send + 'static,
    ) -> Result<()> {
        let job: Job = Box::new(move |shard| Box::new(work(shard)));
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| crate::internal!("a shard thread has stopped"))
    }

    /// The answer to the oldest job not yet answered; a panic in the job is
    /// raised here.
    fn receive<R: 'static>(&self) -> Result<R> {
        let answer = self
            .done
            .recv()
            .map_err(|_| crate::internal!("a shard thread has stopped"))?;
        let value = answer.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        value
            .downcast::<R>()
            .map(|v| *v)
            .map_err(|_| crate::internal!("a shard thread answered with the wrong type"))
    }
}

impl Drop for ShardThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl ShardedOperator {
    /// `shards` are identical, shardable operators (at least one).
    pub fn try_new<T: KeyedOperator>(shards: Vec<T>) -> Result<Self> {
        let count = shards.len();
        let mut shards = shards.into_iter();
        let first = shards
            .next()
            .ok_or_else(|| crate::internal!("a sharded operator needs a shard"))?;
        if !first.shardable() {
            return Err(crate::internal!("{} cannot be split", first.describe()));
        }
        let keys = first.key_exprs();
        let key_types = first.key_types();
        let key_codec = RowConverter::new(key_types.into_iter().map(SortField::new).collect())?;
        let description = first.describe();
        let replaces = first.replaces();
        let stateful = first.state_keys().is_some();
        let remote = shards
            .enumerate()
            .map(|(i, shard)| ShardThread::spawn(Box::new(shard), i + 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            local: Box::new(first),
            remote,
            description,
            replaces,
            stateful,
            keys,
            key_codec,
            key_of_state: T::key_of_state,
            counters: OperatorCounters::default(),
            shard_watermarks: vec![None; count],
            forwarded: None,
        })
    }

    fn shards(&self) -> usize {
        self.remote.len() + 1
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (crate::stream::graph::fnv1a64(key) % self.shards() as u64) as usize
    }

    /// Checkpointed entries split by the shard that owns each key.
    ///
    /// The parts are read into memory (each shard then restores within its
    /// part of the budget): sharded state restores whole for now.
    fn route_state(&self, entries: RestoredTable) -> Result<Vec<RestoredTable>> {
        let budget = entries.memory_budget.map(|b| b / self.shards());
        let mut parts = vec![BTreeMap::new(); self.shards()];
        entries.for_each_piece(|piece| {
            for (key, value) in piece {
                let shard = self.shard_of((self.key_of_state)(&key)?);
                parts[shard].insert(key, value);
            }
            Ok(())
        })?;
        Ok(parts
            .into_iter()
            .map(|part| RestoredTable::from(part).with_memory_budget(budget))
            .collect())
    }

    /// Runs `work` on every shard with its part at once (shard 0 on this
    /// thread); results in shard order.
    fn run<T, R, F>(&mut self, parts: Vec<T>, work: F) -> Result<Vec<R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(&mut dyn Operator, T) -> R + Send + Sync + 'static,
    {
        let work = Arc::new(work);
        let mut parts = parts.into_iter();
        let local_part = parts
            .next()
            .ok_or_else(|| crate::internal!("no part for shard 0"))?;
        // Send every job before folding here, so that all run at once; then
        // collect the answers even if one failed, so that none is left
        // queued for the next call.
        let mut sent = Vec::with_capacity(self.remote.len());
        for (shard, part) in self.remote.iter().zip(parts) {
            let work = work.clone();
            sent.push(shard.send(move |op| work(op, part)));
        }
        let local = work(self.local.as_mut(), local_part);
        let remote: Vec<Result<R>> = self
            .remote
            .iter()
            .zip(sent)
            .map(|(shard, sent)| sent.and_then(|()| shard.receive::<R>()))
            .collect();
        std::iter::once(Ok(local)).chain(remote).collect()
    }

    /// A figure of every shard (`&self` methods).
    fn gather<R: Send + 'static>(&self, figure: fn(&dyn Operator) -> R) -> Vec<R> {
        let mut figures = vec![figure(self.local.as_ref())];
        let sent: Vec<bool> = self
            .remote
            .iter()
            .map(|shard| shard.send(move |op| figure(op)).is_ok())
            .collect();
        for (shard, sent) in self.remote.iter().zip(sent) {
            if let (true, Ok(value)) = (sent, shard.receive::<R>()) {
                figures.push(value);
            }
        }
        figures
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

    /// Calls `step` on every shard; their changes, and the watermark to
    /// pass on.
    fn each_shard(
        &mut self,
        step: impl Fn(&mut dyn Operator) -> Result<(Vec<ChangeBatch>, Option<i64>)>
            + Send
            + Sync
            + 'static,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let parts = vec![(); self.shards()];
        let results = self.run(parts, move |shard, ()| step(shard))?;
        let mut output = Vec::new();
        let mut moved = Vec::with_capacity(results.len());
        for result in results {
            let (changes, watermark) = result?;
            output.extend(changes);
            moved.push(watermark);
        }
        Ok((output, self.merge_watermarks(moved)))
    }
}

impl Operator for ShardedOperator {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let keys = self
            .keys
            .get(input)
            .ok_or_else(|| crate::internal!("no input {input}"))?;
        let (batch, key_columns) = self.counters.evaluate(keys, &batch)?;
        let rows = batch.num_rows();
        let keys = self.key_codec.convert_columns(&key_columns)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); self.shards()];
        for row in 0..rows {
            indices[self.shard_of(keys.row(row).data())].push(row as u32);
        }
        // Every shard sees every batch (its share may be empty), so that
        // each knows its inputs are active (idle inputs, `stream::watermark`).
        let parts = indices
            .iter()
            .map(|part| match part.len() {
                n if n == rows => Ok(batch.clone()),
                _ => batch.take(part),
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = self.run(parts, move |shard, part| shard.process(input, part))?;
        let mut output = Vec::new();
        for changes in outputs {
            output.extend(changes?);
        }
        Ok(output)
    }

    fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        Ok(self.each_shard(|shard| Ok((shard.start()?, None)))?.0)
    }

    fn on_watermark(
        &mut self,
        input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        self.each_shard(move |shard| shard.on_watermark(input, watermark))
    }

    fn on_tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        self.each_shard(move |shard| shard.on_tick(now))
    }

    fn counters(&self) -> OperatorCounters {
        let mut counters = self.counters.clone();
        for shard in self.gather(|s| s.counters()) {
            counters.add(&shard);
        }
        counters
    }

    fn state_keys(&self) -> Option<u64> {
        self.stateful
            .then(|| self.gather(|s| s.state_keys()).into_iter().flatten().sum())
    }

    fn spill_stats(&self) -> Option<SpillStats> {
        let shards = self.gather(|s| s.spill_stats());
        shards.iter().any(Option::is_some).then(|| {
            let mut total = SpillStats::default();
            for shard in shards.iter().flatten() {
                total.add(shard);
            }
            total
        })
    }

    /// Each shard to an equal part of the target.
    fn shrink(&mut self, target_bytes: usize) -> Result<()> {
        let parts = vec![target_bytes / self.shards(); self.shards()];
        for shrunk in self.run(parts, |shard, target| shard.shrink(target))? {
            shrunk?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        let capture = |this: &mut Self, full: bool| -> Result<Vec<StateDelta>> {
            let parts = vec![(); this.shards()];
            this.run(parts, move |shard, ()| {
                let mut delta = StateDelta::new(full);
                shard.checkpoint(&mut delta).map(|()| delta)
            })?
            .into_iter()
            .collect()
        };
        let mut deltas = capture(self, delta.full)?;
        if deltas.iter().any(|d| d.full) && !deltas.iter().all(|d| d.full) {
            // A shard chose to write everything: the table is whole only
            // with every shard's entries.
            deltas = capture(self, true)?;
        }
        delta.full = delta.full || deltas.iter().any(|d| d.full);
        for shard_delta in deltas {
            delta.append(shard_delta);
        }
        Ok(())
    }

    fn restore(&mut self, entries: RestoredTable) -> Result<()> {
        let parts = self.route_state(entries)?;
        for restored in self.run(parts, |shard, part| shard.restore(part))? {
            restored?;
        }
        Ok(())
    }

    fn replaces(&self) -> Option<String> {
        self.replaces.clone()
    }

    /// The replaced operator keyed its state the same way (its shards would
    /// have been these).
    fn restore_replaced(&mut self, entries: RestoredTable) -> Result<()> {
        let parts = self.route_state(entries)?;
        for restored in self.run(parts, |shard, part| shard.restore_replaced(part))? {
            restored?;
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
    use crate::stream::testing::{int_pairs, random, Checkpoints};
    use datafusion::arrow::array::{Array, AsArray};
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
        let mut next = random(seed);
        (0..batches)
            .map(|b| {
                let rows = if b % 3 == 0 { 2_000 } else { 7 };
                let mut out = Vec::new();
                for _ in 0..rows {
                    if !live.is_empty() && next(3) == 0 {
                        let i = next(live.len() as u64) as usize;
                        out.push((live.swap_remove(i), -1));
                    } else {
                        let row = (next(50) as i64, next(1000) as i64);
                        live.push(row);
                        out.push((row, 1));
                    }
                }
                int_pairs(&input_schema(), &out)
            })
            .collect()
    }

    #[test]
    fn sharded_aggregate_equals_one_aggregate_and_restores_with_other_worker_counts() {
        let mut live = Vec::new();
        let mut one = aggregate();
        let mut three = sharded(3);
        let (mut expected, mut actual) = (Result3::new(), Result3::new());
        // What each one's checkpoints hold, captured after every batch
        // (whole once most groups changed, else the changed groups).
        let mut checkpoints = [Checkpoints::default(), Checkpoints::default()];
        for (i, batch) in changes(7, 30, &mut live).into_iter().enumerate() {
            fold(&mut expected, one.process(0, batch.clone()).unwrap());
            fold(&mut actual, three.process(0, batch).unwrap());
            assert_eq!(expected, actual);
            let operators: [&mut dyn Operator; 2] = [&mut one, &mut three];
            for (operator, checkpoints) in operators.into_iter().zip(&mut checkpoints) {
                checkpoints.capture(operator, &format!("after batch {i}"));
            }
        }
        // Batches of 2,000 rows change every group, those of 7 a few.
        let whole = checkpoints.map(|c| c.whole);
        assert!(whole.iter().all(|&w| (3..30).contains(&w)), "{whole:?}");
        assert_eq!(one.state_keys(), three.state_keys());

        let mut delta = StateDelta::new(true);
        three.checkpoint(&mut delta).unwrap();
        let entries = delta.into_map();
        let mut two = sharded(2);
        two.restore(entries.clone().into()).unwrap();
        let mut single = aggregate();
        single.restore(entries.into()).unwrap();
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
