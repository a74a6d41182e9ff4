//! Support for the operators' tests.

use std::collections::BTreeMap;

use super::Operator;
use crate::state::checkpoint::{RestoredTable, StateDelta};

/// What an operator's checkpoints hold: its captures applied in order, as
/// recovery would read their chain (a whole capture starts it over).
#[derive(Default)]
pub(crate) struct Checkpoints {
    stored: BTreeMap<Vec<u8>, Vec<u8>>,
    captured: bool,
    /// Captures written as deltas.
    pub deltas: usize,
    /// Captures written whole (the first, and those the operator chose).
    pub whole: usize,
}

impl Checkpoints {
    /// Captures what `operator` changed since its last capture (everything
    /// the first time), applies it to what is stored, and requires that to
    /// equal a capture of all of the operator's state.
    pub fn capture(&mut self, operator: &mut dyn Operator, context: &str) {
        let mut delta = StateDelta::new(!self.captured);
        self.captured = true;
        operator.checkpoint(&mut delta).expect("checkpoint");
        if delta.full {
            self.stored.clear();
            self.whole += 1;
        } else {
            self.deltas += 1;
        }
        for entry in delta.entries() {
            match entry.expect("entries this process encoded") {
                (key, Some(value)) => self.stored.insert(key.to_vec(), value.to_vec()),
                (key, None) => self.stored.remove(key),
            };
        }
        let mut all = StateDelta::new(true);
        operator.checkpoint(&mut all).expect("checkpoint");
        assert_eq!(
            all.into_map(),
            self.stored,
            "{}: {context}",
            operator.describe()
        );
    }
}

/// `fresh` with the state of a whole capture of `operator`, restored two
/// entries at a time with no memory to spare: what a recovery under a
/// tight limit does (it spills between pieces, and a key's entries may
/// span pieces).
pub(crate) fn restored<O: Operator>(operator: &mut O, mut fresh: O) -> O {
    let mut whole = StateDelta::new(true);
    operator.checkpoint(&mut whole).expect("checkpoint");
    let table = RestoredTable::from(whole.into_map())
        .with_memory_budget(Some(0))
        .with_piece(2);
    fresh.restore(table).expect("restore");
    fresh
}

/// A repeatable stream of numbers below the bound asked for (xorshift).
pub(crate) fn random(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed.max(1);
    move |below| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    }
}

/// A change batch of `(k, v)` Int64 rows with their weights.
pub(crate) fn int_pairs(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    changes: &[((i64, i64), i64)],
) -> crate::common::ChangeBatch {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use std::sync::Arc;
    let column = |f: fn(&((i64, i64), i64)) -> i64| {
        Arc::new(Int64Array::from_iter_values(changes.iter().map(f))) as _
    };
    let rows = RecordBatch::try_new(schema.clone(), vec![column(|c| c.0 .0), column(|c| c.0 .1)])
        .expect("rows");
    crate::common::ChangeBatch::new(
        rows,
        Int64Array::from_iter_values(changes.iter().map(|c| c.1)),
    )
    .expect("changes")
}
