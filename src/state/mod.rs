//! Relation state: the rows of a table or of a materialized view's result.
//!
//! A [`RowSet`] is a multiset of rows, each row encoded with `arrow-row` (so
//! equal rows have equal bytes and the map's order is the rows' sort order),
//! mapped to its multiplicity. It is a persistent map (`imbl`): cloning is
//! O(1) and shares structure, so a reader can hold the state of one epoch
//! while the runtime goes on changing the next. That is how every SELECT sees
//! one consistent snapshot without copying.
//!
//! Invariant: every multiplicity is positive. Applying a change that would
//! make one negative is refused (it means a retraction of a row that is not
//! there, which is a bug upstream).

pub mod checkpoint;
pub mod codec;

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::error::Result;
use crate::stream::ChangeBatch;

/// A hash map keyed by encoded bytes (group keys, join keys, rows), hashed
/// with foldhash (seeded per process) rather than std's SipHash, which cost
/// a tenth of a stateful view's time hashing whole encoded rows.
pub type KeyMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A hash set of encoded bytes; see [`KeyMap`].
pub type KeySet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The keys of a state table changed since the last checkpoint: each of
/// them, or, once they are as many as half the entries held, just that
/// ([`Changed::is_all`]): writing every entry then costs no more than a
/// lookup per changed key. A view or operator that changes most of what it
/// holds between checkpoints (a pass-through view's new rows, a windowed
/// join's rows that come and go) stops hashing and keeping a second
/// reference to every change; hashing them was a tenth of a pass-through
/// view's time.
#[derive(Debug)]
pub struct Changed<K> {
    keys: KeySet<K>,
    all: bool,
}

impl<K> Default for Changed<K> {
    fn default() -> Self {
        Self {
            keys: KeySet::default(),
            all: false,
        }
    }
}

impl<K: Eq + std::hash::Hash> Changed<K> {
    /// Everything changed (a state table not captured yet).
    pub fn all() -> Self {
        Self {
            keys: KeySet::default(),
            all: true,
        }
    }

    /// Whether the next capture is to write every entry.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// The changed keys (none once [`Changed::is_all`]).
    pub fn keys(&self) -> &KeySet<K> {
        &self.keys
    }

    /// Notes a changed key (made only when it is to be kept); `held` is the
    /// number of entries held after the change.
    pub fn note(&mut self, held: usize, key: impl FnOnce() -> K) {
        if !self.all && self.keys.insert(key()) {
            self.check(held);
        }
    }

    /// Notes changed keys; see [`Changed::note`].
    pub fn note_all(&mut self, held: usize, keys: impl IntoIterator<Item = K>) {
        if self.all {
            return;
        }
        let before = self.keys.len();
        self.keys.extend(keys);
        if self.keys.len() > before {
            self.check(held);
        }
    }

    fn check(&mut self, held: usize) {
        if self.keys.len() * 2 >= held {
            *self = Self::all();
        }
    }

    /// What changed since the last capture; from now on, nothing.
    pub fn take(&mut self) -> Self {
        std::mem::take(self)
    }
}

/// Encodes rows of one schema to bytes and back.
#[derive(Debug)]
pub struct RowCodec {
    schema: SchemaRef,
    converter: RowConverter,
}

impl RowCodec {
    pub fn try_new(schema: SchemaRef) -> Result<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            schema,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The encoded rows of `batch`, in order.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Arc<[u8]>>> {
        if self.schema.fields().is_empty() {
            return Ok(vec![Arc::from(&[][..]); batch.num_rows()]);
        }
        let rows = self.converter.convert_columns(batch.columns())?;
        Ok(rows.iter().map(|r| Arc::from(r.data())).collect())
    }

    /// The encoded rows of `batch` in one buffer (no allocation per row);
    /// `None` when the schema has no columns (every row encodes as empty).
    pub fn encode_rows(&self, batch: &RecordBatch) -> Result<Option<Rows>> {
        if self.schema.fields().is_empty() {
            return Ok(None);
        }
        Ok(Some(self.converter.convert_columns(batch.columns())?))
    }

    /// A batch holding `rows`, in order.
    pub fn decode<'a>(&self, rows: impl Iterator<Item = &'a [u8]>) -> Result<RecordBatch> {
        if self.schema.fields().is_empty() {
            let options = RecordBatchOptions::new().with_row_count(Some(rows.count()));
            return Ok(RecordBatch::try_new_with_options(
                self.schema.clone(),
                vec![],
                &options,
            )?);
        }
        let parser = self.converter.parser();
        let columns = self.converter.convert_rows(rows.map(|r| parser.parse(r)))?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// A multiset of rows with cheap snapshots.
#[derive(Debug, Clone)]
pub struct RowSet {
    codec: Arc<RowCodec>,
    rows: imbl::OrdMap<Arc<[u8]>, i64>,
    /// Total multiplicity, i.e. the number of rows a scan returns.
    len: u64,
}

impl RowSet {
    pub fn new(codec: Arc<RowCodec>) -> Self {
        Self {
            codec,
            rows: imbl::OrdMap::new(),
            len: 0,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        self.codec.schema()
    }

    pub fn codec(&self) -> &Arc<RowCodec> {
        &self.codec
    }

    /// Number of rows, counting duplicates.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct rows held.
    pub fn distinct_rows(&self) -> usize {
        self.rows.len()
    }

    pub fn multiplicity(&self, row: &[u8]) -> i64 {
        self.rows.get(row).copied().unwrap_or(0)
    }

    /// Adds `weight` copies of an encoded row (negative removes).
    pub fn add_encoded(&mut self, row: Arc<[u8]>, weight: i64) -> Result<()> {
        if weight > 0 {
            // Most inserted rows are new: one walk down the tree inserts
            // them (a search first was half of a pass-through view's time);
            // a row already there walks again with its sum.
            if let Some(current) = self.rows.insert(row.clone(), weight) {
                self.rows.insert(row, current + weight);
            }
        } else if weight < 0 {
            // Likewise most retracted rows go: one walk removes them; a row
            // with copies left walks again to keep them (as does one
            // retracted too often, put back before the refusal).
            let current = self.rows.remove(&row).unwrap_or(0);
            let next = current + weight;
            if next < 0 {
                if current > 0 {
                    self.rows.insert(row, current);
                }
                return Err(crate::internal!(
                    "row multiplicity would become {next}: a retraction of a row that is not there"
                ));
            }
            if next > 0 {
                self.rows.insert(row, next);
            }
        }
        self.len = (self.len as i64 + weight) as u64;
        Ok(())
    }

    /// Applies a changelog. All or nothing: on error the set is unchanged.
    pub fn apply(&mut self, change: &ChangeBatch) -> Result<()> {
        let encoded = self.codec.encode(&change.rows)?;
        let mut next = self.clone();
        for (row, weight) in encoded.into_iter().zip(change.weights.values().iter()) {
            next.add_encoded(row, *weight)?;
        }
        *self = next;
        Ok(())
    }

    /// Applies a changelog and returns the encoded rows it touched. All or
    /// nothing: on error the set is unchanged.
    pub fn apply_returning_rows(&mut self, change: &ChangeBatch) -> Result<Vec<Arc<[u8]>>> {
        let encoded = self.codec.encode(&change.rows)?;
        let mut next = self.clone();
        for (row, weight) in encoded.iter().zip(change.weights.values().iter()) {
            next.add_encoded(row.clone(), *weight)?;
        }
        *self = next;
        Ok(encoded)
    }

    /// Every distinct encoded row with its multiplicity, in row order.
    pub fn encoded_entries(&self) -> impl Iterator<Item = (&Arc<[u8]>, i64)> {
        self.rows.iter().map(|(row, n)| (row, *n))
    }

    /// All rows as one batch, each repeated by its multiplicity.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows = self
            .rows
            .iter()
            .flat_map(|(row, n)| std::iter::repeat_n(row.as_ref(), *n as usize));
        self.codec.decode(rows)
    }

    /// The whole set as a changelog of insertions (for backfill).
    pub fn to_change_batch(&self) -> Result<ChangeBatch> {
        let rows = self.codec.decode(self.rows.keys().map(|r| r.as_ref()))?;
        let weights = Int64Array::from(self.rows.values().copied().collect::<Vec<_>>());
        ChangeBatch::new(rows, weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn changes(values: &[i64], weights: &[i64]) -> ChangeBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .unwrap();
        ChangeBatch::new(rows, Int64Array::from(weights.to_vec())).unwrap()
    }

    fn set() -> RowSet {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RowSet::new(Arc::new(RowCodec::try_new(schema).unwrap()))
    }

    fn multiplicities(set: &RowSet) -> Vec<(i64, i64)> {
        let batch = set.to_change_batch().unwrap();
        let values = batch
            .rows
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        values
            .values()
            .iter()
            .copied()
            .zip(batch.weights.values().iter().copied())
            .collect()
    }

    /// New rows, repeated rows, partial and whole retractions; a retraction
    /// of a row that is not there fails and leaves the set as it was.
    #[test]
    fn row_set_counts_multiplicities() {
        let mut rows = set();
        rows.apply(&changes(&[1, 2, 1, 3], &[1, 1, 2, 1])).unwrap();
        assert_eq!(multiplicities(&rows), vec![(1, 3), (2, 1), (3, 1)]);
        assert_eq!((rows.len(), rows.distinct_rows()), (5, 3));
        rows.apply(&changes(&[1, 2, 4], &[-2, -1, 0])).unwrap();
        assert_eq!(multiplicities(&rows), vec![(1, 1), (3, 1)]);
        assert_eq!(rows.len(), 2);
        let before = multiplicities(&rows);
        // Refused on its own too, the row kept.
        let one = rows.codec().encode(&changes(&[1], &[1]).rows).unwrap();
        assert!(rows.add_encoded(one[0].clone(), -2).is_err());
        assert_eq!((multiplicities(&rows), rows.len()), (before.clone(), 2));
        assert!(rows.apply(&changes(&[3, 1], &[1, -2])).is_err());
        assert!(rows.apply(&changes(&[5], &[-1])).is_err());
        assert_eq!(multiplicities(&rows), before);
        assert_eq!(rows.len(), 2);
    }
}
