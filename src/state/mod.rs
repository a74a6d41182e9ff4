//! Relation state: the rows of a table or of a materialized view's result.
//!
//! A [`RowSet`] is a multiset of rows, each row encoded with `arrow-row` (so
//! equal rows have equal bytes and the map's order is the rows' sort order),
//! mapped to its multiplicity. It is a persistent map (`imbl`): cloning is
//! O(1) and shares structure, so a reader can hold the state of one epoch
//! while the runtime goes on changing the next. That is how every SELECT sees
//! one consistent snapshot without copying.
//!
//! A view's set also keeps a `row_log::RowLog`: while its changes are
//! plain insertions it appends their batches there, unencoded, and folds
//! them into the map at the first change that is not.
//!
//! Invariant: every multiplicity is positive. Applying a change that would
//! make one negative is refused (it means a retraction of a row that is not
//! there, which is a bug upstream).

pub mod checkpoint;
pub mod codec;
pub mod memory;
mod row_log;
pub mod run;
pub mod table;
pub mod wal;
pub mod windowed;

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::common::ChangeBatch;
use crate::error::Result;
use checkpoint::StateDelta;
use row_log::RowLog;

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

    /// Bytes the noted keys' set holds (its slots; the keys' own bytes
    /// are shared with the state they name).
    pub fn memory_bytes(&self) -> usize {
        self.keys.capacity() * (std::mem::size_of::<K>() + 1)
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

/// The most keyed rows [`RowSet::to_batches`] puts in one batch (and a
/// relation read whole for a query).
pub const SCAN_BATCH_ROWS: usize = 65_536;

/// A multiset of rows with cheap snapshots: keyed rows (encoded, with
/// their multiplicities) and, for a view, a log of inserted batches.
#[derive(Debug, Clone)]
pub struct RowSet {
    codec: Arc<RowCodec>,
    rows: imbl::OrdMap<Arc<[u8]>, i64>,
    /// Rows inserted while `appending`, as the batches they came in.
    log: RowLog,
    /// Whether plain insertions go to `log` (a view's set until its first
    /// other change).
    appending: bool,
    /// Total multiplicity, i.e. the number of rows a scan returns.
    len: u64,
    /// Estimated bytes of the keyed rows in memory.
    keyed_bytes: usize,
}

/// Bytes a keyed row costs beside its encoding: the map entry (pointer,
/// length, multiplicity) and the shared allocation's counts.
const KEYED_ROW_OVERHEAD: usize = 48;

impl RowSet {
    /// A set that keys every row (a table's).
    pub fn new(codec: Arc<RowCodec>) -> Self {
        Self {
            codec,
            rows: imbl::OrdMap::new(),
            log: RowLog::default(),
            appending: false,
            len: 0,
            keyed_bytes: 0,
        }
    }

    /// A view's set: plain insertions are logged as batches until the
    /// first change that is not one. Its checkpoint is two state tables,
    /// the keyed rows and [`Self::capture_log`].
    pub fn appending(codec: Arc<RowCodec>) -> Self {
        // A batch without columns has nothing to log (and IPC would lose
        // its row count).
        let appending = !codec.schema().fields().is_empty();
        Self {
            appending,
            ..Self::new(codec)
        }
    }

    /// A view's set as checkpointed: keyed rows `row -> multiplicity` and
    /// the log's state table (spilled as it is read past its memory
    /// budget).
    pub fn restore(
        codec: Arc<RowCodec>,
        keyed: impl IntoIterator<Item = (Vec<u8>, i64)>,
        log: checkpoint::RestoredTable,
    ) -> Result<Self> {
        let mut set = Self::appending(codec);
        for (row, multiplicity) in keyed {
            set.add_encoded(Arc::from(row), multiplicity)?;
        }
        set.log = RowLog::restore(set.codec.schema(), log)?;
        set.len += set.log.rows();
        Ok(set)
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

    /// Number of distinct keyed rows (the entries of the keyed rows'
    /// state table; logged rows are not among them).
    pub fn distinct_rows(&self) -> usize {
        self.rows.len()
    }

    /// The multiplicity of a keyed row (logged copies not counted).
    pub fn multiplicity(&self, row: &[u8]) -> i64 {
        self.rows.get(row).copied().unwrap_or(0)
    }

    /// Adds `weight` copies of an encoded row (negative removes).
    pub fn add_encoded(&mut self, row: Arc<[u8]>, weight: i64) -> Result<()> {
        if weight > 0 {
            // Most inserted rows are new: one walk down the tree inserts
            // them (a search first was half of a pass-through view's time);
            // a row already there walks again with its sum.
            let bytes = row.len() + KEYED_ROW_OVERHEAD;
            match self.rows.insert(row.clone(), weight) {
                Some(current) => drop(self.rows.insert(row, current + weight)),
                None => self.keyed_bytes += bytes,
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
            } else if current > 0 {
                self.keyed_bytes -= row.len() + KEYED_ROW_OVERHEAD;
            }
        }
        self.len = (self.len as i64 + weight) as u64;
        Ok(())
    }

    /// Applies a changelog. All or nothing: on error the set is unchanged.
    pub fn apply(&mut self, change: &ChangeBatch) -> Result<()> {
        self.apply_returning_rows(change).map(drop)
    }

    /// Applies a changelog and returns the encoded keyed rows it touched
    /// (logged insertions are none; a fold touches every row it keys). All
    /// or nothing: on error the set is unchanged.
    pub fn apply_returning_rows(&mut self, change: &ChangeBatch) -> Result<Vec<Arc<[u8]>>> {
        if self.appending && change.weights.values().iter().all(|&w| w == 1) {
            // Under the set's schema (names, nullability); a batch that
            // does not fit it is keyed, whose encoding checks the types.
            if let Ok(batch) =
                RecordBatch::try_new(self.codec.schema().clone(), change.rows.columns().to_vec())
            {
                let rows = batch.num_rows() as u64;
                self.log.push(batch)?;
                self.len += rows;
                return Ok(Vec::new());
            }
        }
        let mut next = self.clone();
        next.appending = false;
        let mut touched = Vec::new();
        let logged = next.log.take();
        for batch in logged.batches(self.codec.schema()) {
            for row in next.codec.encode(&batch?)? {
                next.add_encoded(row.clone(), 1)?;
                touched.push(row);
            }
        }
        // Logged rows were counted already.
        next.len = self.len;
        let encoded = next.codec.encode(&change.rows)?;
        for (row, weight) in encoded.iter().zip(change.weights.values().iter()) {
            next.add_encoded(row.clone(), *weight)?;
        }
        *self = next;
        touched.extend(encoded);
        Ok(touched)
    }

    /// Estimated bytes this set holds in memory: its keyed rows and the
    /// logged batches not spilled.
    pub fn memory_bytes(&self) -> usize {
        self.keyed_bytes + self.log.memory_bytes()
    }

    /// Bytes of logged batches spilled to disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.log.spilled_bytes()
    }

    /// Moves logged batches to disk until the set holds about
    /// `target_bytes` in memory. Keyed rows stay in memory.
    pub fn spill(&mut self, target_bytes: usize) -> Result<()> {
        let log_target = target_bytes.saturating_sub(self.keyed_bytes);
        self.log.spill(log_target, self.codec.schema())
    }

    /// Every distinct keyed row with its multiplicity, in row order.
    pub fn encoded_entries(&self) -> impl Iterator<Item = (&Arc<[u8]>, i64)> {
        self.rows.iter().map(|(row, n)| (row, *n))
    }

    /// The log's state-table delta since the previous capture (all of it
    /// when `full`).
    pub fn capture_log(&mut self, full: bool) -> Result<StateDelta> {
        self.log.capture(self.codec.schema(), full)
    }

    /// All rows, each repeated by its multiplicity: the keyed rows in row
    /// order, then the logged ones in arrival order. In batches of at most
    /// `SCAN_BATCH_ROWS` keyed rows and the log's own batches (one batch
    /// of a large set could hold more string bytes than Arrow's 32-bit
    /// offsets can address).
    pub fn to_batches(&self) -> Result<Vec<RecordBatch>> {
        self.clone().scan(SCAN_BATCH_ROWS).collect()
    }

    /// Reads this set's rows as [`Self::to_batches`] orders them, one batch
    /// of at most `batch_rows` keyed rows at a time, decoding each only when
    /// it is asked for: a query over a large view holds one batch of it,
    /// not a decoded copy of the whole. The set is a snapshot (cloning is
    /// O(1)), so the scan sees no later change.
    pub fn scan(self, batch_rows: usize) -> RowSetScan {
        RowSetScan {
            set: self,
            batch_rows: batch_rows.max(1),
            position: ScanPosition::Start,
            next_logged: 0,
        }
    }

    /// The whole set as a changelog of insertions (for backfill).
    pub fn to_change_batch(&self) -> Result<ChangeBatch> {
        let rows = self.codec.decode(self.rows.keys().map(|r| r.as_ref()))?;
        let weights = self
            .rows
            .values()
            .copied()
            .chain(std::iter::repeat_n(1, self.log.rows() as usize));
        ChangeBatch::new(
            self.with_logged(rows)?,
            Int64Array::from_iter_values(weights),
        )
    }

    /// `keyed` followed by the logged rows.
    fn with_logged(&self, keyed: RecordBatch) -> Result<RecordBatch> {
        if self.log.is_empty() {
            return Ok(keyed);
        }
        let mut batches = vec![keyed];
        for batch in self.log.batches(self.codec.schema()) {
            batches.push(batch?);
        }
        Ok(concat_batches(self.codec.schema(), &batches)?)
    }
}

/// Where a [`RowSetScan`] is among the keyed rows.
#[derive(Debug)]
enum ScanPosition {
    Start,
    /// `copies_left` more copies of `row` are due, then the rows after it.
    After {
        row: Arc<[u8]>,
        copies_left: i64,
    },
    /// Every keyed row is read.
    Done,
}

/// A snapshot of a [`RowSet`] read batch by batch ([`RowSet::scan`]).
#[derive(Debug)]
pub struct RowSetScan {
    set: RowSet,
    batch_rows: usize,
    position: ScanPosition,
    /// The next logged batch, once the keyed rows are read.
    next_logged: usize,
}

impl RowSetScan {
    /// The next keyed rows (with repeats), at most `batch_rows`; none when
    /// every keyed row is read.
    fn next_keyed(&mut self) -> Vec<Arc<[u8]>> {
        use std::ops::Bound;
        let mut rows = Vec::new();
        let (mut entries, mut pending) = match &self.position {
            ScanPosition::Done => return rows,
            ScanPosition::Start => (self.set.rows.range::<_, [u8]>(..), None),
            ScanPosition::After { row, copies_left } => (
                self.set
                    .rows
                    .range::<_, [u8]>((Bound::Excluded(row.as_ref()), Bound::Unbounded)),
                Some((row.clone(), *copies_left)),
            ),
        };
        loop {
            if let Some((row, copies)) = pending.take() {
                // A row repeated past the batch's end goes on in the next.
                let taken = copies.min((self.batch_rows - rows.len()) as i64);
                rows.extend(std::iter::repeat_n(row.clone(), taken as usize));
                if rows.len() == self.batch_rows {
                    self.position = ScanPosition::After {
                        row,
                        copies_left: copies - taken,
                    };
                    return rows;
                }
            }
            match entries.next() {
                Some((row, copies)) => pending = Some((row.clone(), *copies)),
                None => {
                    self.position = ScanPosition::Done;
                    return rows;
                }
            }
        }
    }
}

impl Iterator for RowSetScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let keyed = self.next_keyed();
        if !keyed.is_empty() {
            return Some(self.set.codec.decode(keyed.iter().map(|r| r.as_ref())));
        }
        let logged = self
            .set
            .log
            .batch(self.next_logged, self.set.codec.schema())?;
        self.next_logged += 1;
        Some(logged)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    fn view_set() -> RowSet {
        RowSet::appending(set().codec().clone())
    }

    /// The state table a chain of captured deltas reads back as.
    fn replay(table: &mut BTreeMap<Vec<u8>, Vec<u8>>, delta: &StateDelta) {
        if delta.full {
            table.clear();
        }
        for entry in delta.entries() {
            match entry.unwrap() {
                (key, Some(value)) => table.insert(key.to_vec(), value.to_vec()),
                (key, None) => table.remove(key),
            };
        }
    }

    /// A view's plain insertions are logged (no keyed rows, nothing
    /// touched, scans in arrival order); the first other change folds the
    /// log into the keyed rows, touching each, and keys every row after.
    #[test]
    fn view_set_logs_insertions_until_another_change() {
        let mut rows = view_set();
        assert!(rows
            .apply_returning_rows(&changes(&[3, 1], &[1, 1]))
            .unwrap()
            .is_empty());
        assert!(rows
            .apply_returning_rows(&changes(&[1, 2], &[1, 1]))
            .unwrap()
            .is_empty());
        assert_eq!((rows.len(), rows.distinct_rows()), (4, 0));
        assert_eq!(multiplicities(&rows), vec![(3, 1), (1, 1), (1, 1), (2, 1)]);

        // A refused retraction leaves the log as it was.
        assert!(rows.apply(&changes(&[7], &[-1])).is_err());
        assert_eq!((rows.len(), rows.distinct_rows()), (4, 0));

        let touched = rows.apply_returning_rows(&changes(&[1], &[-1])).unwrap();
        assert_eq!(touched.len(), 5, "four folded rows and the retracted one");
        assert_eq!(multiplicities(&rows), vec![(1, 1), (2, 1), (3, 1)]);
        assert_eq!((rows.len(), rows.distinct_rows()), (3, 3));
        // Keyed from now on, insertions too.
        rows.apply(&changes(&[4], &[1])).unwrap();
        assert_eq!(rows.distinct_rows(), 4);
        // A weight other than one is keyed at once.
        let mut rows = view_set();
        rows.apply(&changes(&[5, 6], &[2, 1])).unwrap();
        assert_eq!((rows.len(), rows.distinct_rows()), (3, 2));
    }

    /// A view fed a row at a time holds a batch per 1,024 rows, not per
    /// row: small batches merge into the last one until it is saved.
    #[test]
    fn view_set_merges_small_batches_until_saved() {
        let mut rows = view_set();
        for value in 0..1500 {
            rows.apply(&changes(&[value], &[1])).unwrap();
        }
        let sizes = |rows: &RowSet| -> Vec<usize> {
            let schema = rows.schema().clone();
            rows.log
                .batches(&schema)
                .map(|b| b.unwrap().num_rows())
                .collect()
        };
        assert_eq!(sizes(&rows), vec![1024, 476]);
        let arrival: Vec<(i64, i64)> = (0..1500).map(|v| (v, 1)).collect();
        assert_eq!(multiplicities(&rows), arrival);
        rows.capture_log(false).unwrap();
        rows.apply(&changes(&[1500], &[1])).unwrap();
        rows.apply(&changes(&[1501], &[1])).unwrap();
        assert_eq!(sizes(&rows), vec![1024, 476, 2]);
        assert_eq!(rows.len(), 1502);
    }

    /// The log's captures, replayed as a chain, restore the same set: each
    /// capture holds only the batches appended since the previous one, a
    /// full one all of them, and the capture after a fold empties it.
    #[test]
    fn view_set_log_checkpoints_chain_and_restore() {
        let restored = |keyed: &RowSet, table: &BTreeMap<Vec<u8>, Vec<u8>>| {
            let keyed = keyed
                .encoded_entries()
                .map(|(row, n)| (row.to_vec(), n))
                .collect::<Vec<_>>();
            RowSet::restore(set().codec().clone(), keyed, table.clone().into()).unwrap()
        };
        let mut rows = view_set();
        let mut table = BTreeMap::new();
        rows.apply(&changes(&[1, 2], &[1, 1])).unwrap();
        let first = rows.capture_log(false).unwrap();
        assert_eq!(first.len(), 1);
        replay(&mut table, &first);
        rows.apply(&changes(&[3], &[1])).unwrap();
        rows.apply(&changes(&[4, 5], &[1, 1])).unwrap();
        let second = rows.capture_log(false).unwrap();
        let keys: Vec<Vec<u8>> = second.entries().map(|e| e.unwrap().0.to_vec()).collect();
        assert!(!second.full);
        assert_eq!(
            keys,
            vec![1u64.to_be_bytes().to_vec()],
            "batches 1 and 2 only"
        );
        replay(&mut table, &second);
        assert!(rows.capture_log(false).unwrap().is_empty(), "nothing new");
        let back = restored(&rows, &table);
        assert_eq!(multiplicities(&back), multiplicities(&rows));
        assert_eq!(back.len(), 5);

        // A restored log goes on where it was saved.
        let mut back = back;
        back.apply(&changes(&[6], &[1])).unwrap();
        replay(&mut table, &back.capture_log(false).unwrap());
        assert_eq!(
            multiplicities(&restored(&back, &table)),
            multiplicities(&back)
        );
        let whole = back.capture_log(true).unwrap();
        assert!(whole.full);
        let mut rewritten = BTreeMap::new();
        replay(&mut rewritten, &whole);
        assert_eq!(
            multiplicities(&restored(&back, &rewritten)),
            multiplicities(&back)
        );

        // A gap in the chain is refused, not read as a shorter log.
        let mut gapped = table.clone();
        gapped.remove(0u64.to_be_bytes().as_slice());
        assert!(RowSet::restore(set().codec().clone(), vec![], gapped.into()).is_err());

        back.apply(&changes(&[6], &[-1])).unwrap();
        let cleared = back.capture_log(false).unwrap();
        assert!(cleared.full && cleared.is_empty());
        replay(&mut table, &cleared);
        assert!(table.is_empty());
    }

    /// Under the memory limit a view's log moves its older batches to a
    /// scratch file: scans, whole reads, captures, restores and the fold
    /// read the same rows as before, memory falls to about the newest
    /// batch, and the file goes with the last snapshot holding it.
    #[test]
    fn view_set_log_spills_to_disk_with_the_same_rows() {
        let mut rows = view_set();
        for start in (0..6000).step_by(1500) {
            let values: Vec<i64> = (start..start + 1500).collect();
            rows.apply(&changes(&values, &vec![1; 1500])).unwrap();
        }
        let before = multiplicities(&rows);
        let held = rows.memory_bytes();
        let mut table = BTreeMap::new();
        replay(&mut table, &rows.capture_log(false).unwrap());
        rows.apply(&changes(&[6000, 6001], &[1, 1])).unwrap();

        rows.spill(0).unwrap();
        let files = rows.log.spill_files();
        assert_eq!(files.len(), 1);
        assert!(files[0].exists());
        assert!(
            rows.memory_bytes() < held / 2,
            "{} of {held}",
            rows.memory_bytes()
        );
        assert!(rows.spilled_bytes() > 0);
        let mut all = before.clone();
        all.extend([(6000, 1), (6001, 1)]);
        assert_eq!(multiplicities(&rows), all);
        let scanned: usize = rows.clone().scan(700).map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(scanned, 6002);
        // Spilled unsaved batches are read back for the capture.
        replay(&mut table, &rows.capture_log(false).unwrap());
        let back = RowSet::restore(set().codec().clone(), vec![], table.clone().into()).unwrap();
        assert_eq!(multiplicities(&back), all);
        // A restore with no memory to spare spills as it reads, an entry
        // at a time, and reads back the same rows.
        let budgeted = checkpoint::RestoredTable::from(table.clone())
            .with_memory_budget(Some(0))
            .with_piece(1);
        let back = RowSet::restore(set().codec().clone(), vec![], budgeted).unwrap();
        assert!(back.spilled_bytes() > 0);
        assert!(back.memory_bytes() < held / 2);
        assert_eq!(multiplicities(&back), all);
        // Spilling again writes only what is still in memory (the saved
        // pair), to a second file; the newest batch stays.
        rows.apply(&changes(&[6002], &[1])).unwrap();
        rows.spill(0).unwrap();
        assert_eq!(rows.log.spill_files().len(), 2);
        assert_eq!(multiplicities(&rows).last(), Some(&(6002, 1)));

        let snapshot = rows.clone();
        rows.apply(&changes(&[0, 5999], &[-1, -1])).unwrap();
        assert_eq!((rows.len(), rows.distinct_rows()), (6001, 6001));
        assert_eq!(rows.spilled_bytes(), 0, "the fold read the log back");
        assert!(files[0].exists(), "a snapshot still reads the file");
        assert_eq!(snapshot.len(), 6003);
        drop(snapshot);
        assert!(!files[0].exists());
    }

    /// A scan reads every row with its repeats, in the order of
    /// `to_batches`, whatever the batch size: a row repeated past a
    /// batch's end goes on in the next, logged rows come last, and a scan
    /// sees its snapshot, not later changes.
    #[test]
    fn scan_reads_a_snapshot_batch_by_batch() {
        let values = |batches: Vec<RecordBatch>| -> Vec<i64> {
            batches
                .iter()
                .flat_map(|b| {
                    let column = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    column.values().to_vec()
                })
                .collect()
        };
        let mut rows = view_set();
        rows.apply(&changes(&[10, 11], &[1, 1])).unwrap();
        rows.apply(&changes(&[3, 1, 2, 3], &[1, 5, 1, -1])).unwrap();
        rows.apply(&changes(&[20, 21, 22], &[1, 1, 1])).unwrap();
        let snapshot = rows.clone();
        rows.apply(&changes(&[1, 4], &[-5, 1])).unwrap();
        let expected = vec![1, 1, 1, 1, 1, 2, 10, 11, 20, 21, 22];
        assert_eq!(values(snapshot.to_batches().unwrap()), expected);
        for batch_rows in [1, 2, 3, 5, 6, 100] {
            let batches: Vec<RecordBatch> = snapshot
                .clone()
                .scan(batch_rows)
                .collect::<Result<_>>()
                .unwrap();
            assert!(batches.iter().all(|b| b.num_rows() <= batch_rows.max(3)));
            assert_eq!(values(batches), expected, "batches of {batch_rows}");
        }
        assert_eq!(rows.clone().scan(4).count(), 2);
        assert_eq!(set().scan(4).count(), 0);
        // Rows only logged come in their batches.
        let mut logged = view_set();
        logged.apply(&changes(&[8, 7], &[1, 1])).unwrap();
        logged.apply(&changes(&[9], &[1])).unwrap();
        let batches: Vec<RecordBatch> = logged.scan(1).collect::<Result<_>>().unwrap();
        assert_eq!(values(batches), vec![8, 7, 9]);
    }
}
