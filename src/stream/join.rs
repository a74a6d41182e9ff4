//! Joins of two changelogs: inner, left/right/full outer, semi and anti, on
//! equality keys with an optional residual condition (`filter`) evaluated on
//! the pair.
//!
//! State: each side's rows grouped by join key, each with its multiplicity
//! and the number of rows of the other side it matches (counted with
//! multiplicity, after the residual condition). A change on one side is
//! joined with the other side's state, then applied to its own side's state;
//! changes of the two sides arrive one batch at a time, so this is the
//! bilinear delta rule `Δ(L ⋈ R) = ΔL ⋈ R + L' ⋈ ΔR` with `L' = L + ΔL`.
//!
//! Rows that appear alone (the null-padded rows of an outer join, the rows
//! of a semi or anti join) depend only on whether a row's match count is
//! zero: a change that moves another row's count across zero retracts or
//! inserts that row's lone output. A row whose key holds a NULL never
//! matches (unless the join treats NULLs as equal) and is not kept.
//!
//! Invariants: a kept row has a non-zero multiplicity; its match count is
//! the sum of the multiplicities of the other side's matching rows.
//!
//! `NOT IN (subquery)` is a null-aware anti join: a left row shows when the
//! right side is empty; else, when no right key is NULL, its own key is not
//! NULL and nothing matches it. A right change that empties the right side
//! or adds its first NULL key (or undoes either) changes every left row's
//! answer: the operator then emits the difference of the two answers.
//!
//! A lookup join (`t FOR SYSTEM_TIME AS OF PROCTIME()`) keeps only the
//! looked-up side: its changes update the state and emit nothing; each change
//! of the other side joins the rows held when it arrives, and is not kept.
//! The watermark is the other side's.
//!
//! State is unbounded unless time bounds it:
//! - a window join (the key holds a window's end): a key whose window the
//!   watermark has closed (plus the allowed lateness) can see no further
//!   change on either side and is dropped (each side keeps its keys by
//!   window end, so a closed window goes as one map);
//! - an interval join over append-only inputs (`b.t BETWEEN a.t - INTERVAL
//!   '5' SECOND AND a.t`, `b.t BETWEEN a.start AND a.expires`): a condition
//!   `other.t <= f(row)` on the other side's watermarked time column means
//!   no row of the other side later than `f(row)` matches; once that side's
//!   watermark passes `f(row)` the row is dropped. Rows of a side whose time
//!   column is bounded that arrive behind its watermark are late: dropped
//!   (counted in `late_rows`), as the rows they would have matched may be
//!   gone. A side may also be a windowed aggregate's output (Nexmark q7's
//!   max price per window) whose time column is the window end: its rows
//!   change only while their window is open, so its watermark counts as the
//!   allowed lateness earlier, and its rows go only once final as well.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch,
    RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::JoinType;
use datafusion::physical_plan::PhysicalExpr;

use super::shard::KeyedOperator;
use super::watermark::MergedWatermark;
use super::{encode_keys, restore_in_pieces, Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::codec::{Decoder, Encoder};
use crate::state::windowed::{
    window_ends, ByWindow, SpillStats, SpillValue, WindowKeys, NO_WINDOW,
};
use crate::state::RowCodec;
use crate::state::{Changed, KeyMap};

/// Which rows of a side appear alone in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lone {
    /// None (inner side).
    Never,
    /// Those without a match (outer and anti joins).
    Unmatched,
    /// Those with at least one match (semi joins).
    Matched,
}

impl Lone {
    /// Whether a row with `matches` matching rows is output alone.
    fn shows(self, matches: i64) -> bool {
        match self {
            Lone::Never => false,
            Lone::Unmatched => matches == 0,
            Lone::Matched => matches != 0,
        }
    }
}

/// Where a kept row is: its window end ([`NO_WINDOW`] outside windows), its
/// join key and the row (both row-encoded).
type KeyedRow = (i64, Arc<[u8]>, Arc<[u8]>);

/// A join key under its window end.
type WindowedKey = (i64, Arc<[u8]>);

/// A key's rows, each with its entry. Most keys hold one row (a person by
/// id, a windowed aggregate's group): it is kept inline, without a hash map
/// of its own (an allocation per key, and a hash of the row per lookup).
/// `Many` is never empty: its last row's removal makes the bucket `Empty`.
#[derive(Debug, Default)]
enum Bucket {
    #[default]
    Empty,
    One(Arc<[u8]>, Entry),
    Many(KeyMap<Arc<[u8]>, Entry>),
}

impl Bucket {
    fn get(&self, row: &[u8]) -> Option<&Entry> {
        match self {
            Self::Empty => None,
            Self::One(kept, entry) => (**kept == *row).then_some(entry),
            Self::Many(rows) => rows.get(row),
        }
    }

    fn get_mut(&mut self, row: &[u8]) -> Option<&mut Entry> {
        match self {
            Self::Empty => None,
            Self::One(kept, entry) => (**kept == *row).then_some(entry),
            Self::Many(rows) => rows.get_mut(row),
        }
    }

    /// Sets `row`'s entry.
    fn insert(&mut self, row: Arc<[u8]>, entry: Entry) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(row, entry),
            Self::One(kept, _) if kept == row => Self::One(row, entry),
            Self::One(kept, kept_entry) => {
                Self::Many(KeyMap::from_iter([(kept, kept_entry), (row, entry)]))
            }
            Self::Many(mut rows) => {
                rows.insert(row, entry);
                Self::Many(rows)
            }
        };
    }

    fn remove(&mut self, row: &[u8]) -> Option<Entry> {
        match self {
            Self::One(kept, _) if **kept == *row => match std::mem::take(self) {
                Self::One(_, entry) => Some(entry),
                _ => None,
            },
            Self::Many(rows) => {
                let removed = rows.remove(row);
                if rows.is_empty() {
                    *self = Self::Empty;
                }
                removed
            }
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }

    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(..) => 1,
            Self::Many(rows) => rows.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Arc<[u8]>, &Entry)> {
        let (one, many) = match self {
            Self::Empty => (None, None),
            Self::One(row, entry) => (Some((row, entry)), None),
            Self::Many(rows) => (None, Some(rows.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn into_rows(self) -> impl Iterator<Item = Arc<[u8]>> {
        let (one, many) = match self {
            Self::Empty => (None, None),
            Self::One(row, _) => (Some(row), None),
            Self::Many(rows) => (None, Some(rows.into_keys())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl SpillValue for Bucket {
    /// The rows with their multiplicities, match counts and expiries (a
    /// checkpoint's entries hold no expiry: see `JoinOperator::restore`).
    fn encode(&self, out: &mut Encoder) {
        out.u64(self.len() as u64);
        for (row, entry) in self.iter() {
            out.bytes(row)
                .i64(entry.multiplicity)
                .i64(entry.matches)
                .i64(entry.expires);
        }
    }

    fn decode(_key: &Arc<[u8]>, bytes: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(bytes);
        let mut bucket = Bucket::Empty;
        for _ in 0..d.u64()? {
            let row: Arc<[u8]> = Arc::from(d.bytes()?);
            let entry = Entry {
                multiplicity: d.i64()?,
                matches: d.i64()?,
                expires: d.i64()?,
            };
            bucket.insert(row, entry);
        }
        Ok(bucket)
    }

    fn memory_bytes(&self) -> usize {
        // A row's bytes with its `Arc`'s counts and the allocator's
        // rounding; for many rows, the hash table's slots (its capacity,
        // not its length).
        let rows: usize = self.iter().map(|(row, _)| row.len() + 32).sum();
        let slots = match self {
            Self::Many(rows) => rows.capacity() * (std::mem::size_of::<(Arc<[u8]>, Entry)>() + 1),
            _ => 0,
        };
        std::mem::size_of::<Bucket>() + rows + slots
    }
}

/// A side's kept rows by window end, then by join key ([`ByWindow`]): a
/// window join's key holds its window's end, so a key's rows share it, and
/// a closed window goes as one map. Rows of a join without a window key,
/// and rows whose window end is NULL, are kept under [`NO_WINDOW`].
#[derive(Default)]
struct WindowedRows {
    windows: ByWindow<Bucket>,
}

impl WindowedRows {
    fn get(&self, window: i64, key: &[u8]) -> Option<&Bucket> {
        self.windows.get(window, key)
    }

    fn get_mut(&mut self, window: i64, key: &[u8]) -> Option<&mut Bucket> {
        self.windows.get_mut(window, key)
    }

    /// Key `key`'s rows, made empty if it has none.
    fn bucket(&mut self, window: i64, key: &Arc<[u8]>) -> &mut Bucket {
        self.windows
            .get_or_insert_with(window, key, Bucket::default)
    }

    /// Forgets key `key` if it has no rows left.
    fn drop_if_empty(&mut self, window: i64, key: &[u8]) {
        if self.get(window, key).is_some_and(Bucket::is_empty) {
            self.windows.remove(window, key);
        }
    }

    /// Takes the windows ending at or before `end` (never [`NO_WINDOW`]),
    /// with their keys on disk.
    fn take_closed(&mut self, end: i64) -> Result<BTreeMap<i64, WindowKeys<Bucket>>> {
        self.windows.take_closed_loading(end)
    }

    /// Brings key `key`'s rows back to memory if they went to disk.
    fn load(&mut self, window: i64, key: &[u8]) -> Result<()> {
        self.windows.load(window, key).map(drop)
    }

    /// Every kept row: window end, key, row, entry.
    fn iter(&self) -> impl Iterator<Item = (i64, &Arc<[u8]>, &Arc<[u8]>, &Entry)> {
        self.windows.iter().flat_map(|(window, key, bucket)| {
            bucket
                .iter()
                .map(move |(row, entry)| (window, key, row, entry))
        })
    }

    fn clear(&mut self) {
        self.windows.clear();
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    multiplicity: i64,
    matches: i64,
    /// When no row of the other side can match this one any more (µs;
    /// [`NEVER`] unless an interval join bounds this side).
    expires: i64,
}

/// The expiry of a row that time does not bound.
const NEVER: i64 = i64::MAX;

/// A key's window end, for dropping state once the window closed.
#[derive(Debug, Clone, Copy)]
pub struct WindowKey {
    /// The position of `window_end` among the join keys.
    pub key_position: usize,
    pub allowed_lateness_micros: i64,
}

/// One input of the join.
pub struct JoinSide {
    /// The key expressions over this side's rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// This side's input schema.
    pub schema: SchemaRef,
}

/// How time bounds one side's rows (interval joins).
#[derive(Default)]
pub struct SideTime {
    /// This side's watermarked time column, when a condition bounds it by
    /// the other side: rows behind this side's watermark are late.
    pub time: Option<Arc<dyn PhysicalExpr>>,
    /// The latest time (µs) of a row of the other side that can match a row
    /// of this side: once the other side's watermark passes it, the row goes.
    pub expiry: Option<Arc<dyn PhysicalExpr>>,
    /// `None` when this side's rows never change (append-only). Else this
    /// side is a windowed aggregate's output and `time` its window end: a row
    /// may still be retracted until this side's watermark passes its time by
    /// this lateness (µs), so only then is it final, and this side's
    /// watermark counts as that much earlier.
    pub settles_after: Option<i64>,
}

struct SideState {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    time: SideTime,
    /// The keys of kept rows by the rows' expiry (µs), when `time.expiry`
    /// is set: a key, not its rows, so that the index holds no row whose
    /// key went to disk.
    by_expiry: BTreeMap<i64, Vec<WindowedKey>>,
    codec: RowCodec,
    lone: Lone,
    rows: WindowedRows,
    /// Kept rows (distinct), for the state figures.
    kept: u64,
    /// Rows changed since the last checkpoint.
    dirty: Changed<KeyedRow>,
}

impl SideState {
    /// Adds `weight` copies of `row` (new rows expire at `expires`).
    fn add(
        &mut self,
        (window, key, row): (i64, &Arc<[u8]>, &Arc<[u8]>),
        weight: i64,
        matches: i64,
        expires: i64,
    ) {
        let bucket = self.rows.bucket(window, key);
        match bucket.get_mut(row) {
            Some(entry) => {
                entry.multiplicity += weight;
                entry.matches = matches;
                if entry.multiplicity == 0 {
                    bucket.remove(row);
                    self.kept -= 1;
                }
            }
            None => {
                bucket.insert(
                    row.clone(),
                    Entry {
                        multiplicity: weight,
                        matches,
                        expires,
                    },
                );
                self.kept += 1;
            }
        }
        if bucket.is_empty() {
            self.rows.drop_if_empty(window, key);
        }
        self.dirty
            .note(self.kept as usize, || (window, key.clone(), row.clone()));
    }
}

/// Writes a kept row's state key: `[side][key length][key][row length][row]`.
fn state_key<'a>(side: u8, key: &'a [u8], row: &'a [u8]) -> impl FnOnce(&mut Encoder) + 'a {
    move |out| {
        out.u8(side).bytes(key).bytes(row);
    }
}

/// Writes a kept row's state value: `(multiplicity, matches)`.
fn state_value(entry: Entry) -> impl FnOnce(&mut Encoder) {
    move |out| {
        out.i64(entry.multiplicity).i64(entry.matches);
    }
}

/// The answer of every left row of a null-aware anti join depends on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RightSide {
    Empty,
    HasNullKey,
    /// Not empty, no NULL key: each row by its own matches.
    Keyed,
}

/// What a null-aware anti join (`NOT IN`) keeps besides the sides' rows.
#[derive(Debug, Default)]
struct NotIn {
    /// All right rows, and those with a NULL key (not kept as rows).
    right_rows: i64,
    right_null_keys: i64,
    /// Left rows with a NULL key (shown only while the right side is empty).
    left_null_keys: KeyMap<Arc<[u8]>, i64>,
    dirty: bool,
}

impl NotIn {
    fn right_side(&self) -> RightSide {
        if self.right_rows == 0 {
            RightSide::Empty
        } else if self.right_null_keys > 0 {
            RightSide::HasNullKey
        } else {
            RightSide::Keyed
        }
    }
}

pub struct JoinOperator {
    join_type: JoinType,
    /// `NOT IN`: a null-aware anti join.
    not_in: Option<NotIn>,
    /// Whether matching pairs are output (not for semi and anti joins).
    pairs: bool,
    sides: [SideState; 2],
    key_converter: RowConverter,
    /// The join keys' types (the fields of `key_converter`).
    key_types: Vec<DataType>,
    nulls_equal: bool,
    /// The residual condition over `pair_schema` (left columns, then right).
    filter: Option<Arc<dyn PhysicalExpr>>,
    pair_schema: SchemaRef,
    output_schema: SchemaRef,
    window_key: Option<WindowKey>,
    /// The side read `FOR SYSTEM_TIME AS OF PROCTIME()`, if any.
    lookup: Option<usize>,
    watermark: MergedWatermark,
    counters: OperatorCounters,
    description: String,
}

impl JoinOperator {
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        join_type: JoinType,
        left: JoinSide,
        right: JoinSide,
        filter: Option<Arc<dyn PhysicalExpr>>,
        nulls_equal: bool,
        output_schema: SchemaRef,
        idle_timeout: Option<i64>,
        description: String,
    ) -> Result<Self> {
        let (pairs, lone) = match join_type {
            JoinType::Inner => (true, [Lone::Never, Lone::Never]),
            JoinType::Left => (true, [Lone::Unmatched, Lone::Never]),
            JoinType::Right => (true, [Lone::Never, Lone::Unmatched]),
            JoinType::Full => (true, [Lone::Unmatched, Lone::Unmatched]),
            JoinType::LeftSemi => (false, [Lone::Matched, Lone::Never]),
            JoinType::LeftAnti => (false, [Lone::Unmatched, Lone::Never]),
            JoinType::RightSemi => (false, [Lone::Never, Lone::Matched]),
            JoinType::RightAnti => (false, [Lone::Never, Lone::Unmatched]),
            other => {
                return Err(EddyError::NotIncremental(format!(
                    "{other} joins are not supported in materialized views yet"
                )))
            }
        };
        if left.keys.len() != right.keys.len() {
            return Err(crate::internal!("join sides have different key counts"));
        }
        let mut key_fields = Vec::with_capacity(left.keys.len());
        let mut key_types = Vec::with_capacity(left.keys.len());
        for (l, r) in left.keys.iter().zip(&right.keys) {
            let (lt, rt) = (l.data_type(&left.schema)?, r.data_type(&right.schema)?);
            if lt != rt {
                return Err(EddyError::TypeMismatch(format!(
                    "join key types differ: {lt} = {rt}; cast one side so that both have the same type"
                )));
            }
            key_types.push(lt.clone());
            key_fields.push(SortField::new(lt));
        }
        let mut pair_fields: Vec<_> = left.schema.fields().iter().cloned().collect();
        pair_fields.extend(right.schema.fields().iter().cloned());
        let pair_fields = pair_fields
            .into_iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>();
        let side = |side: JoinSide, lone: Lone| -> Result<SideState> {
            Ok(SideState {
                keys: side.keys,
                time: SideTime::default(),
                by_expiry: BTreeMap::new(),
                codec: RowCodec::try_new(side.schema)?,
                lone,
                rows: WindowedRows::default(),
                kept: 0,
                dirty: Changed::default(),
            })
        };
        Ok(Self {
            join_type,
            pairs,
            sides: [side(left, lone[0])?, side(right, lone[1])?],
            key_converter: RowConverter::new(key_fields)?,
            key_types,
            nulls_equal,
            filter,
            pair_schema: Arc::new(datafusion::arrow::datatypes::Schema::new(pair_fields)),
            output_schema,
            window_key: None,
            lookup: None,
            not_in: None,
            watermark: MergedWatermark::new(2, idle_timeout),
            counters: OperatorCounters::default(),
            description,
        })
    }

    /// Bytes of state that stays in memory beside the rows: the changes
    /// since the last checkpoint and the expiry index.
    fn unspillable_bytes(&self) -> usize {
        let index_entry = std::mem::size_of::<WindowedKey>();
        self.sides
            .iter()
            .map(|side| {
                let indexed: usize = side.by_expiry.values().map(Vec::capacity).sum();
                side.dirty.memory_bytes() + indexed * index_entry
            })
            .sum()
    }

    /// Whether the sides' rows may go to disk (see `spill_stats`).
    fn spillable(&self) -> bool {
        self.not_in.is_none()
    }

    /// Makes a left anti join null-aware (`NOT IN`): see the module docs.
    pub fn null_aware(mut self) -> Result<Self> {
        if self.join_type != JoinType::LeftAnti || self.filter.is_some() {
            return Err(EddyError::NotIncremental(
                "NOT IN with a correlated subquery is not supported in materialized views yet; \
                 write it as NOT EXISTS (which differs only when the subquery yields NULL)"
                    .into(),
            ));
        }
        self.not_in = Some(NotIn::default());
        Ok(self)
    }

    /// The left rows (with multiplicity) a null-aware anti join shows for
    /// `right_side`, by the match counts as they are now.
    fn not_in_shown(&self, right_side: RightSide) -> KeyMap<Arc<[u8]>, i64> {
        let mut shown: KeyMap<Arc<[u8]>, i64> = KeyMap::default();
        let Some(not_in) = &self.not_in else {
            return shown;
        };
        if right_side == RightSide::HasNullKey {
            return shown;
        }
        for (_, _, row, entry) in self.sides[0].rows.iter() {
            if right_side == RightSide::Empty || entry.matches == 0 {
                *shown.entry(row.clone()).or_insert(0) += entry.multiplicity;
            }
        }
        if right_side == RightSide::Empty {
            for (row, n) in &not_in.left_null_keys {
                *shown.entry(row.clone()).or_insert(0) += n;
            }
        }
        shown
    }

    /// Makes `side` a lookup table: see the module docs.
    pub fn with_lookup_side(mut self, side: usize) -> Self {
        debug_assert_eq!(
            self.sides[side].lone,
            Lone::Never,
            "a looked-up side is inner"
        );
        self.lookup = Some(side);
        self
    }

    /// Time bounds of the sides' rows (interval joins over append-only
    /// inputs): see the module docs.
    pub fn with_time_bounds(mut self, left: SideTime, right: SideTime) -> Self {
        self.sides[0].time = left;
        self.sides[1].time = right;
        self
    }

    /// Drops a key's state once the watermark closed its window.
    pub fn with_window_key(mut self, window_key: WindowKey) -> Self {
        self.window_key = Some(window_key);
        self
    }

    /// Evaluates the residual condition on pairs; a pair whose evaluation
    /// fails does not match (counted as a failed row; deterministic, so the
    /// pair fails the same way when retracted).
    fn evaluate_filter(&mut self, pairs: &RecordBatch) -> Result<Vec<bool>> {
        let Some(filter) = &self.filter else {
            return Ok(vec![true; pairs.num_rows()]);
        };
        let evaluate = |rows: &RecordBatch| -> Result<Vec<bool>> {
            let value = filter.evaluate(rows)?.into_array(rows.num_rows())?;
            let mask = value
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| crate::internal!("join condition is not boolean"))?;
            Ok((0..mask.len())
                .map(|i| mask.is_valid(i) && mask.value(i))
                .collect())
        };
        match evaluate(pairs) {
            Ok(mask) => Ok(mask),
            Err(_) => {
                let mut mask = Vec::with_capacity(pairs.num_rows());
                for row in 0..pairs.num_rows() {
                    match evaluate(&pairs.slice(row, 1)) {
                        Ok(one) => mask.push(one[0]),
                        Err(e) => {
                            self.counters.row_failed(&e);
                            mask.push(false);
                        }
                    }
                }
                Ok(mask)
            }
        }
    }

    /// Columns of `this` side's rows and `other` side's rows, in left-right
    /// order; a missing side is all NULL.
    fn lay_out(
        &self,
        this: usize,
        this_columns: Option<Vec<ArrayRef>>,
        other_columns: Option<Vec<ArrayRef>>,
        rows: usize,
        schema: &SchemaRef,
    ) -> Vec<ArrayRef> {
        let nulls = |side: usize| -> Vec<ArrayRef> {
            self.sides[side]
                .codec
                .schema()
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), rows))
                .collect()
        };
        let this_columns = this_columns.unwrap_or_else(|| nulls(this));
        let other_columns = other_columns.unwrap_or_else(|| nulls(1 - this));
        let (left, right) = if this == 0 {
            (this_columns, other_columns)
        } else {
            (other_columns, this_columns)
        };
        let mut columns = left;
        columns.extend(right);
        debug_assert_eq!(columns.len(), schema.fields().len());
        columns
    }

    /// A change batch of `columns` (re-typed to `schema` where the join's
    /// schema widened a type) and `weights`.
    fn change(
        schema: &SchemaRef,
        columns: Vec<ArrayRef>,
        weights: Vec<i64>,
    ) -> Result<ChangeBatch> {
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    Ok(cast(&c, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(weights.len()));
        let rows = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
        ChangeBatch::new(rows, Int64Array::from(weights))
    }

    /// The output of lone rows of side `side`: padded with NULLs for outer
    /// joins, bare for semi and anti joins.
    fn lone_output(
        &self,
        side: usize,
        columns: Vec<ArrayRef>,
        weights: Vec<i64>,
    ) -> Result<ChangeBatch> {
        let columns = if self.pairs {
            self.lay_out(
                side,
                Some(columns),
                None,
                weights.len(),
                &self.output_schema,
            )
        } else {
            columns
        };
        Self::change(&self.output_schema, columns, weights)
    }

    /// Drops the rows of side `side` that are behind its watermark, when its
    /// time is bounded (see the module docs).
    fn drop_late(&mut self, side: usize, batch: ChangeBatch) -> Result<ChangeBatch> {
        let (Some(time), Some(watermark)) =
            (&self.sides[side].time.time, self.settled_watermark(side))
        else {
            return Ok(batch);
        };
        let times = micros(&time.evaluate(&batch.rows)?.into_array(batch.num_rows())?)?;
        let on_time: BooleanArray = (0..times.len())
            .map(|i| Some(times.is_null(i) || times.value(i) >= watermark))
            .collect();
        let late = on_time.false_count();
        if late == 0 {
            return Ok(batch);
        }
        // Counted, not logged: a join drops late rows as a matter of course
        // (the rows they would have matched are gone).
        self.counters.late_rows += late as u64;
        batch.filter(&on_time)
    }

    /// The expiry (µs) of each row of `rows` of side `side`, when set: the
    /// time after which no row of the other side matches it, and for a
    /// settling side no later than its own time (when it is final).
    fn expiries(&self, side: usize, rows: &RecordBatch) -> Result<Option<Int64Array>> {
        let time = &self.sides[side].time;
        let Some(expiry) = &time.expiry else {
            return Ok(None);
        };
        let expiries = micros(&expiry.evaluate(rows)?.into_array(rows.num_rows())?)?;
        let Some(own_time) = time.time.as_ref().filter(|_| time.settles_after.is_some()) else {
            return Ok(Some(expiries));
        };
        let own = micros(&own_time.evaluate(rows)?.into_array(rows.num_rows())?)?;
        // A null time never settles: such a row is never dropped.
        Ok(Some(
            expiries
                .iter()
                .zip(own.iter())
                .map(|(e, t)| Some(e?.max(t?)))
                .collect(),
        ))
    }

    /// Side `side`'s watermark, as early as its rows may still change.
    fn settled_watermark(&self, side: usize) -> Option<i64> {
        let lateness = self.sides[side].time.settles_after.unwrap_or(0);
        Some(self.watermark.input(side)?.saturating_sub(lateness))
    }

    /// Rows of side `side` whose expiry is before this go: no row of the
    /// other side can match them any more (and, settling, they are final).
    fn expiry_threshold(&self, side: usize) -> Option<i64> {
        let other = self.settled_watermark(1 - side)?;
        if self.sides[side].time.settles_after.is_none() {
            return Some(other);
        }
        Some(other.min(self.settled_watermark(side)?))
    }

    /// The window end (µs) of each of `rows` keys: the key's own when it
    /// holds one, else [`NO_WINDOW`].
    fn windows(&self, keys: &[ArrayRef], rows: usize) -> Result<Vec<i64>> {
        let Some(window) = self.window_key else {
            return Ok(vec![NO_WINDOW; rows]);
        };
        window_ends(&keys[window.key_position])
    }
}

impl KeyedOperator for JoinOperator {
    /// A join without equality keys pairs every row with every other, and
    /// NOT IN answers depend on the whole right side: neither splits.
    fn shardable(&self) -> bool {
        !self.key_types.is_empty() && self.not_in.is_none()
    }

    fn key_exprs(&self) -> Vec<Vec<Arc<dyn PhysicalExpr>>> {
        self.sides.iter().map(|s| s.keys.clone()).collect()
    }

    fn key_types(&self) -> Vec<DataType> {
        self.key_types.clone()
    }

    /// State keys are `[side][key][row]` (see `checkpoint`).
    fn key_of_state(state_key: &[u8]) -> Result<&[u8]> {
        let mut d = Decoder::new(state_key);
        match d.u8()? {
            0 | 1 => d.bytes(),
            other => Err(EddyError::Checkpoint(format!(
                "join state of side {other} is not keyed"
            ))),
        }
    }
}

impl Operator for JoinOperator {
    fn describe(&self) -> String {
        let freed = |side: usize| self.sides[side].time.expiry.is_some();
        let state = if self.lookup.is_some() {
            "state: the looked-up side's rows"
        } else if self.window_key.is_some() {
            "state bounded: freed as windows close"
        } else if freed(0) && freed(1) {
            "state bounded: freed by the watermarks"
        } else if freed(0) {
            "state: left rows freed by the watermark, right rows unbounded"
        } else if freed(1) {
            "state: right rows freed by the watermark, left rows unbounded"
        } else {
            "state unbounded: keeps both inputs"
        };
        format!("{} ({state})", self.description)
    }

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        self.watermark.on_data(input);
        let (this, other) = (input, 1 - input);
        let batch = self.drop_late(this, batch)?;
        let (batch, key_columns) = self.counters.evaluate(&self.sides[this].keys, &batch)?;
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let keys = encode_keys(&self.key_converter, &key_columns, batch.num_rows())?;
        let rows = self.sides[this].codec.encode(&batch.rows)?;
        let weights = batch.weights.values();
        let matchable: Vec<bool> = (0..batch.num_rows())
            .map(|i| self.nulls_equal || key_columns.iter().all(|c| c.is_valid(i)))
            .collect();
        let windows = self.windows(&key_columns, batch.num_rows())?;
        // Keys whose rows went to disk come back first, on both sides.
        for side in self.sides.iter_mut().filter(|s| s.rows.windows.has_cold()) {
            for (key, window) in keys.iter().zip(&windows) {
                side.rows.load(*window, key)?;
            }
        }

        if self.lookup == Some(this) {
            for i in (0..batch.num_rows()).filter(|&i| matchable[i]) {
                let row = (windows[i], &keys[i], &rows[i]);
                self.sides[this].add(row, weights[i], 0, NEVER);
            }
            return Ok(vec![]);
        }
        let expiries = self.expiries(this, &batch.rows)?;
        let expiry_threshold = self.expiry_threshold(this);

        // Candidate pairs: each row with every kept row of its key on the other side.
        let mut pair_this: Vec<u32> = Vec::new();
        let mut pair_other: Vec<Arc<[u8]>> = Vec::new();
        let mut pair_other_multiplicity: Vec<i64> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if !matchable[i] {
                continue;
            }
            if let Some(bucket) = self.sides[other].rows.get(windows[i], key) {
                for (row, entry) in bucket.iter() {
                    pair_this.push(i as u32);
                    pair_other.push(row.clone());
                    pair_other_multiplicity.push(entry.multiplicity);
                }
            }
        }
        let pair_rows = pair_this.len();
        // The pairs' columns, for the residual condition and the pairs output
        // (a semi or anti join without a condition needs only the counts).
        let (this_pair_columns, other_pair_columns) =
            if pair_rows > 0 && (self.pairs || self.filter.is_some()) {
                let indices = UInt32Array::from(pair_this.clone());
                let this_columns: Vec<ArrayRef> = batch
                    .rows
                    .columns()
                    .iter()
                    .map(|c| take(c, &indices, None))
                    .collect::<std::result::Result<_, _>>()?;
                let other_columns = self.sides[other]
                    .codec
                    .decode(pair_other.iter().map(|r| r.as_ref()))?
                    .columns()
                    .to_vec();
                (this_columns, other_columns)
            } else {
                (vec![], vec![])
            };
        let pass = if self.filter.is_some() && pair_rows > 0 {
            let columns = self.lay_out(
                this,
                Some(this_pair_columns.clone()),
                Some(other_pair_columns.clone()),
                pair_rows,
                &self.pair_schema,
            );
            let pairs = RecordBatch::try_new(self.pair_schema.clone(), columns)?;
            self.evaluate_filter(&pairs)?
        } else {
            vec![true; pair_rows]
        };

        let mut output = Vec::new();
        let mut matched_pairs: Vec<u32> = Vec::new();
        let mut pair_weights: Vec<i64> = Vec::new();
        let mut matches = vec![0i64; batch.num_rows()];
        let mut other_lone_rows: Vec<Arc<[u8]>> = Vec::new();
        let mut other_lone_weights: Vec<i64> = Vec::new();
        let other_lone = self.sides[other].lone;
        for p in 0..pair_rows {
            if !pass[p] {
                continue;
            }
            let i = pair_this[p] as usize;
            let weight = weights[i];
            if self.pairs {
                matched_pairs.push(p as u32);
                pair_weights.push(weight * pair_other_multiplicity[p]);
            }
            matches[i] += pair_other_multiplicity[p];
            if other_lone != Lone::Never {
                let side = &mut self.sides[other];
                let entry = side
                    .rows
                    .get_mut(windows[i], &keys[i])
                    .and_then(|bucket| bucket.get_mut(&pair_other[p]))
                    .ok_or_else(|| crate::internal!("joined row vanished from the state"))?;
                let before = other_lone.shows(entry.matches);
                entry.matches += weight;
                let after = other_lone.shows(entry.matches);
                if before != after {
                    other_lone_rows.push(pair_other[p].clone());
                    other_lone_weights.push(if after {
                        entry.multiplicity
                    } else {
                        -entry.multiplicity
                    });
                }
                let held = side.kept as usize;
                side.dirty.note(held, || {
                    (windows[i], keys[i].clone(), pair_other[p].clone())
                });
            }
        }
        if !matched_pairs.is_empty() {
            // Every pair matched (always so without a condition): take none.
            let all_matched = matched_pairs.len() == pair_rows;
            let selected = UInt32Array::from(matched_pairs);
            let pick = |columns: Vec<ArrayRef>| -> Result<Vec<ArrayRef>> {
                if all_matched {
                    return Ok(columns);
                }
                Ok(columns
                    .iter()
                    .map(|c| take(c, &selected, None))
                    .collect::<std::result::Result<_, _>>()?)
            };
            let columns = self.lay_out(
                this,
                Some(pick(this_pair_columns)?),
                Some(pick(other_pair_columns)?),
                pair_weights.len(),
                &self.output_schema,
            );
            output.push(Self::change(&self.output_schema, columns, pair_weights)?);
        }
        if let Some(not_in) = &mut self.not_in {
            if this == 1 {
                // Right rows: the rows crossing zero above are the change only
                // if the right side stays keyed.
                let before = not_in.right_side();
                for i in 0..batch.num_rows() {
                    not_in.right_rows += weights[i];
                    if !matchable[i] {
                        not_in.right_null_keys += weights[i];
                    }
                }
                not_in.dirty = true;
                let after = not_in.right_side();
                if (before, after) != (RightSide::Keyed, RightSide::Keyed) {
                    let mut crossed: KeyMap<Arc<[u8]>, i64> = KeyMap::default();
                    for (row, weight) in other_lone_rows.drain(..).zip(other_lone_weights.drain(..))
                    {
                        *crossed.entry(row).or_insert(0) += weight;
                    }
                    let now = self.not_in_shown(after);
                    let mut was = self.not_in_shown(before);
                    if before == RightSide::Keyed {
                        // Shown before this batch = shown now by matches, less
                        // the rows that crossed zero in it.
                        for (row, weight) in crossed {
                            *was.entry(row).or_insert(0) -= weight;
                        }
                    }
                    let mut change = now;
                    for (row, n) in was {
                        *change.entry(row).or_insert(0) -= n;
                    }
                    for (row, weight) in change.into_iter().filter(|(_, w)| *w != 0) {
                        other_lone_rows.push(row);
                        other_lone_weights.push(weight);
                    }
                }
            }
        }
        if !other_lone_rows.is_empty() {
            let columns = self.sides[other]
                .codec
                .decode(other_lone_rows.iter().map(|r| r.as_ref()))?
                .columns()
                .to_vec();
            output.push(self.lone_output(other, columns, other_lone_weights)?);
        }

        // This side's lone rows, then its state.
        let this_lone = self.sides[this].lone;
        let mut lone_rows: Vec<u32> = Vec::new();
        let mut lone_weights: Vec<i64> = Vec::new();
        let right_side = self.not_in.as_ref().map(NotIn::right_side);
        for i in 0..batch.num_rows() {
            let shows = match right_side {
                // A left row of NOT IN.
                Some(RightSide::Empty) if this == 0 => true,
                Some(RightSide::HasNullKey) if this == 0 => false,
                Some(RightSide::Keyed) if this == 0 => matchable[i] && matches[i] == 0,
                _ => this_lone.shows(matches[i]),
            };
            if shows {
                lone_rows.push(i as u32);
                lone_weights.push(weights[i]);
            }
            if let (Some(not_in), false, 0) = (&mut self.not_in, matchable[i], this) {
                let n = not_in.left_null_keys.entry(rows[i].clone()).or_insert(0);
                *n += weights[i];
                if *n == 0 {
                    not_in.left_null_keys.remove(&rows[i]);
                }
                not_in.dirty = true;
            }
            // A row that no future row of the other side can match is not kept.
            let expiry = expiries
                .as_ref()
                .filter(|e| e.is_valid(i))
                .map(|e| e.value(i));
            let expired = expiry.is_some_and(|e| expiry_threshold.is_some_and(|w| e < w));
            if matchable[i] && self.lookup.is_none() && !expired {
                let side = &mut self.sides[this];
                let row = (windows[i], &keys[i], &rows[i]);
                side.add(row, weights[i], matches[i], expiry.unwrap_or(NEVER));
                if let Some(expiry) = expiry {
                    let key = (windows[i], keys[i].clone());
                    side.by_expiry.entry(expiry).or_default().push(key);
                }
            }
        }
        if !lone_rows.is_empty() {
            let selected = UInt32Array::from(lone_rows);
            let columns = batch
                .rows
                .columns()
                .iter()
                .map(|c| take(c, &selected, None))
                .collect::<std::result::Result<_, _>>()?;
            output.push(self.lone_output(this, columns, lone_weights)?);
        }
        Ok(output)
    }

    fn on_watermark(
        &mut self,
        input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        if let Some(lookup) = self.lookup {
            // Only the streamed side's time counts.
            let streamed = (input != lookup).then_some(watermark);
            return Ok((vec![], streamed));
        }
        let merged = self.watermark.on_watermark(input, watermark);
        // Rows that no row of the other side can match any more (a settling
        // side's rows also wait for their own side's watermark).
        for expiring in 0..2 {
            let Some(threshold) = self.expiry_threshold(expiring) else {
                continue;
            };
            let side = &mut self.sides[expiring];
            let live = side.by_expiry.split_off(&threshold);
            let expired = std::mem::replace(&mut side.by_expiry, live);
            // Each key once (it is listed per row), its rows read back
            // from disk if they went there.
            let mut keys: Vec<WindowedKey> = expired.into_values().flatten().collect();
            keys.sort_unstable();
            keys.dedup();
            for (window, key) in keys {
                side.rows.load(window, &key)?;
                let Some(bucket) = side.rows.get_mut(window, &key) else {
                    continue;
                };
                let gone: Vec<Arc<[u8]>> = bucket
                    .iter()
                    .filter(|(_, entry)| entry.expires < threshold)
                    .map(|(row, _)| row.clone())
                    .collect();
                for row in gone {
                    bucket.remove(&row);
                    side.kept -= 1;
                    side.dirty
                        .note(side.kept as usize, || (window, key.clone(), row));
                }
                side.rows.drop_if_empty(window, &key);
            }
        }
        if let (Some(merged), Some(window)) = (merged, self.window_key) {
            // A window ending at or before this can change no more.
            let closed_before = merged.saturating_sub(window.allowed_lateness_micros);
            for side in &mut self.sides {
                let closed = side.rows.take_closed(closed_before)?;
                let rows: usize = closed
                    .values()
                    .flat_map(|keys| keys.values())
                    .map(|bucket| bucket.len())
                    .sum();
                side.kept -= rows as u64;
                // Mostly a no-op: a window join's rows come and go, so its
                // changes soon count as all of its state.
                side.dirty.note_all(
                    side.kept as usize,
                    closed.into_iter().flat_map(|(window, keys)| {
                        keys.into_iter().flat_map(move |(key, bucket)| {
                            bucket
                                .into_inner()
                                .into_rows()
                                .map(move |row| (window, key.clone(), row))
                        })
                    }),
                );
            }
        }
        Ok((vec![], merged))
    }

    fn on_tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        Ok((vec![], self.watermark.on_tick(now)))
    }

    fn state_keys(&self) -> Option<u64> {
        Some(self.sides.iter().map(|s| s.kept).sum())
    }

    /// State entries: `[side][key length][key][row length][row] →
    /// (multiplicity, matches)`. A side whose changes since the last
    /// checkpoint are half its rows (a windowed join's rows come and go) is
    /// written whole, and with it the whole table (one holds both sides).
    /// Both sides' rows, unless they cannot spill: a `NOT IN` join's left
    /// rows are all read when the right side empties (they stay in memory
    /// for now). An interval join's expiry index holds keys, not rows, and
    /// stays in memory (a key per kept row).
    fn spill_stats(&self) -> Option<SpillStats> {
        if !self.spillable() {
            return None;
        }
        let mut stats = self.sides[0].rows.windows.spill_stats();
        stats.add(&self.sides[1].rows.windows.spill_stats());
        stats.memory_bytes += self.unspillable_bytes();
        Some(stats)
    }

    /// Each side to its part of the target (less what cannot spill), as it
    /// holds its part of the memory.
    fn shrink(&mut self, target_bytes: usize) -> Result<()> {
        if !self.spillable() {
            return Ok(());
        }
        let target_bytes = target_bytes.saturating_sub(self.unspillable_bytes());
        let held = self.sides.each_ref().map(|s| s.rows.windows.memory_bytes());
        let total: usize = held.iter().sum();
        for (side, held) in self.sides.iter_mut().zip(held) {
            let share = (target_bytes as u128 * held as u128 / total.max(1) as u128) as usize;
            side.rows.windows.evict(share)?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        if self.sides.iter().any(|side| side.dirty.is_all()) {
            delta.full = true;
        }
        for (index, side) in self.sides.iter_mut().enumerate() {
            // Encoded in place in the delta: no allocation per entry.
            let side_index = index as u8;
            let rows = &side.rows;
            // Changed rows whose key is on disk: read after, each key once.
            let mut cold = BTreeMap::<(i64, Arc<[u8]>), Vec<Arc<[u8]>>>::new();
            delta.try_put_changed_with(
                &mut side.dirty,
                |delta| {
                    for (_, key, row, entry) in rows.iter() {
                        delta.put_with(state_key(side_index, key, row), state_value(*entry));
                    }
                    rows.windows.for_each_cold(|(_, key, bucket)| {
                        for (row, entry) in bucket.iter() {
                            delta.put_with(state_key(side_index, &key, row), state_value(*entry));
                        }
                        Ok(())
                    })
                },
                |delta, (window, key, row)| {
                    match rows.get(*window, key) {
                        Some(bucket) => match bucket.get(row) {
                            Some(entry) => {
                                delta.put_with(state_key(side_index, key, row), state_value(*entry))
                            }
                            None => delta.delete_with(state_key(side_index, key, row)),
                        },
                        None => cold
                            .entry((*window, key.clone()))
                            .or_default()
                            .push(row.clone()),
                    }
                    Ok(())
                },
            )?;
            for ((window, key), changed) in cold {
                let bucket = rows.windows.peek_cold(window, &key)?;
                for row in changed {
                    match bucket.as_ref().and_then(|b| b.get(&row)) {
                        Some(entry) => {
                            delta.put_with(state_key(side_index, &key, &row), state_value(*entry))
                        }
                        None => delta.delete_with(state_key(side_index, &key, &row)),
                    }
                }
            }
        }
        // NOT IN: one entry `[2]` with the right side's counts and the left
        // rows with a NULL key.
        if let Some(not_in) = &mut self.not_in {
            if delta.full || not_in.dirty {
                let mut out = Encoder::new();
                out.i64(not_in.right_rows)
                    .i64(not_in.right_null_keys)
                    .u64(not_in.left_null_keys.len() as u64);
                for (row, n) in &not_in.left_null_keys {
                    out.bytes(row).i64(*n);
                }
                delta.put(vec![2], out.finish());
                not_in.dirty = false;
            }
        }
        Ok(())
    }

    fn restore(&mut self, entries: RestoredTable) -> Result<()> {
        for side in &mut self.sides {
            side.rows.clear();
            side.dirty = Changed::default();
            side.by_expiry.clear();
            side.kept = 0;
        }
        if let Some(not_in) = &mut self.not_in {
            *not_in = NotIn::default();
        }
        restore_in_pieces(self, entries, Self::restore_piece)
    }
}

impl JoinOperator {
    /// Restores a piece of the checkpointed entries (in key order: a key's
    /// rows may continue from the previous piece, whose spill may have
    /// moved them to disk).
    fn restore_piece(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        // Each side's rows: key, row, entry.
        let mut restored: [Vec<RestoredRow>; 2] = Default::default();
        for (state_key, value) in entries {
            let mut d = Decoder::new(&state_key);
            let index = d.u8()? as usize;
            if index == 2 {
                let not_in = self.not_in.as_mut().ok_or_else(|| {
                    EddyError::Checkpoint("NOT IN state for a join that is not NOT IN".into())
                })?;
                let mut v = Decoder::new(&value);
                not_in.right_rows = v.i64()?;
                not_in.right_null_keys = v.i64()?;
                for _ in 0..v.u64()? {
                    let row: Arc<[u8]> = Arc::from(v.bytes()?);
                    not_in.left_null_keys.insert(row, v.i64()?);
                }
                continue;
            }
            let key: Arc<[u8]> = Arc::from(d.bytes()?);
            let row: Arc<[u8]> = Arc::from(d.bytes()?);
            let mut v = Decoder::new(&value);
            let entry = Entry {
                multiplicity: v.i64()?,
                matches: v.i64()?,
                expires: NEVER,
            };
            restored
                .get_mut(index)
                .ok_or_else(|| EddyError::Checkpoint(format!("join state names side {index}")))?
                .push((key, row, entry));
        }
        for (index, entries) in restored.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            // The window of each key, from the key itself.
            let windows = match self.window_key {
                None => vec![NO_WINDOW; entries.len()],
                Some(_) => {
                    let parser = self.key_converter.parser();
                    let columns = self
                        .key_converter
                        .convert_rows(entries.iter().map(|(key, _, _)| parser.parse(key)))?;
                    self.windows(&columns, entries.len())?
                }
            };
            // Expiries are not checkpointed: they follow from the rows.
            let expiries = match self.sides[index].time.expiry {
                Some(_) => {
                    let codec = &self.sides[index].codec;
                    let rows = codec.decode(entries.iter().map(|(_, row, _)| row.as_ref()))?;
                    self.expiries(index, &rows)?
                }
                None => None,
            };
            let side = &mut self.sides[index];
            for (i, ((key, row, mut entry), window)) in entries.into_iter().zip(windows).enumerate()
            {
                if let Some(expiries) = expiries.as_ref().filter(|e| e.is_valid(i)) {
                    entry.expires = expiries.value(i);
                    side.by_expiry
                        .entry(entry.expires)
                        .or_default()
                        .push((window, key.clone()));
                }
                // Keys are contiguous in key order: only a piece's first
                // key can have rows restored (and spilled) before it.
                if i == 0 {
                    side.rows.load(window, &key)?;
                }
                side.rows.bucket(window, &key).insert(row, entry);
                side.kept += 1;
            }
        }
        Ok(())
    }
}

/// A kept row read from a checkpoint: key, row, entry.
type RestoredRow = (Arc<[u8]>, Arc<[u8]>, Entry);

/// A timestamp column as µs since the epoch.
fn micros(column: &ArrayRef) -> Result<Int64Array> {
    let micros = cast(
        &cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
        &DataType::Int64,
    )?;
    Ok(micros
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .clone())
}

impl std::fmt::Debug for JoinOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinOperator({:?})", self.join_type)
    }
}

#[cfg(test)]
mod tests {
    //! The join against a slow, obviously right reference: a nested loop
    //! over the current inputs, after every change.
    use super::*;
    use crate::stream::testing::Checkpoints;
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;
    use std::collections::BTreeMap as Multiset;

    type Row = (Option<i32>, i32); // (key, value)

    fn schema(value: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, true),
            Field::new(value, DataType::Int32, false),
        ]))
    }

    fn batch(schema: &SchemaRef, rows: &[(Row, i64)]) -> ChangeBatch {
        let keys = Int32Array::from(rows.iter().map(|((k, _), _)| *k).collect::<Vec<_>>());
        let values = Int32Array::from(rows.iter().map(|((_, v), _)| *v).collect::<Vec<_>>());
        let rows_batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(keys), Arc::new(values)]).unwrap();
        let weights = Int64Array::from(rows.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        ChangeBatch::new(rows_batch, weights).unwrap()
    }

    /// Output rows as (left key, left value, right key, right value).
    type Out = (Option<i32>, Option<i32>, Option<i32>, Option<i32>);

    fn consolidate(into: &mut Multiset<Out, i64>, batches: Vec<ChangeBatch>) {
        for b in batches {
            let column = |i: usize| {
                b.rows
                    .column(i)
                    .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                    .clone()
            };
            let (lk, lv, rk, rv) = (column(0), column(1), column(2), column(3));
            let get = |a: &datafusion::arrow::array::Int32Array, i: usize| {
                a.is_valid(i).then(|| a.value(i))
            };
            for i in 0..b.num_rows() {
                let row = (get(&lk, i), get(&lv, i), get(&rk, i), get(&rv, i));
                let n = into.entry(row).or_insert(0);
                *n += b.weights.value(i);
                if *n == 0 {
                    into.remove(&row);
                }
            }
        }
    }

    /// FULL JOIN ON l.k = r.k AND l.v < r.v, by nested loops.
    fn reference(left: &Multiset<Row, i64>, right: &Multiset<Row, i64>) -> Multiset<Out, i64> {
        let matches = |l: &Row, r: &Row| l.0.is_some() && l.0 == r.0 && l.1 < r.1;
        let mut out = Multiset::new();
        for (l, ln) in left {
            let mut matched = false;
            for (r, rn) in right {
                if matches(l, r) {
                    matched = true;
                    *out.entry((l.0, Some(l.1), r.0, Some(r.1))).or_insert(0) += ln * rn;
                }
            }
            if !matched {
                *out.entry((l.0, Some(l.1), None, None)).or_insert(0) += ln;
            }
        }
        for (r, rn) in right {
            if !left.keys().any(|l| matches(l, r)) {
                *out.entry((None, None, r.0, Some(r.1))).or_insert(0) += rn;
            }
        }
        out
    }

    /// Also split into three shards (`stream::shard`), NULL keys included.
    #[test]
    fn a_full_join_with_a_condition_equals_nested_loops_after_every_change() {
        let (ls, rs) = (schema("lv"), schema("rv"));
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, true),
            Field::new("lv", DataType::Int32, true),
            Field::new("k", DataType::Int32, true),
            Field::new("rv", DataType::Int32, true),
        ]));
        let key = || vec![Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>];
        // l.v < r.v over the pair (l.k, l.v, r.k, r.v).
        let filter = Arc::new(datafusion::physical_expr::expressions::BinaryExpr::new(
            Arc::new(Column::new("lv", 1)),
            datafusion::logical_expr::Operator::Lt,
            Arc::new(Column::new("rv", 3)),
        ));
        let make = || {
            JoinOperator::try_new(
                JoinType::Full,
                JoinSide {
                    keys: key(),
                    schema: ls.clone(),
                },
                JoinSide {
                    keys: key(),
                    schema: rs.clone(),
                },
                Some(filter.clone()),
                false,
                output.clone(),
                None,
                "test".into(),
            )
            .unwrap()
        };
        // In memory, and with every row moved to disk after every change.
        for spill in [false, true] {
            let sharded =
                super::super::shard::ShardedOperator::try_new(vec![make(), make(), make()]);
            let joins: [Box<dyn Operator>; 2] = [Box::new(make()), Box::new(sharded.unwrap())];
            for join in joins {
                random_changes_match_nested_loops(join, &ls, &rs, spill);
            }
        }
    }

    /// A window join keyed by `(k, window_end)`: a closed window's rows go
    /// (on both sides), and a join restored from a checkpoint puts each row
    /// back under its window (taken from its key), so it drops the same rows
    /// and answers the same afterwards.
    #[test]
    fn a_window_join_drops_closed_windows_also_after_a_restore() {
        use datafusion::arrow::array::TimestampMicrosecondArray;
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
        let side_schema = |value: &str| {
            Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int32, false),
                Field::new("w", timestamp.clone(), false),
                Field::new(value, DataType::Int32, false),
            ]))
        };
        let (ls, rs) = (side_schema("lv"), side_schema("rv"));
        let output = Arc::new(Schema::new(
            ls.fields()
                .iter()
                .chain(rs.fields())
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let keys = || {
            vec![
                Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>,
                Arc::new(Column::new("w", 1)) as Arc<dyn PhysicalExpr>,
            ]
        };
        let make = || {
            JoinOperator::try_new(
                JoinType::Inner,
                JoinSide {
                    keys: keys(),
                    schema: ls.clone(),
                },
                JoinSide {
                    keys: keys(),
                    schema: rs.clone(),
                },
                None,
                false,
                output.clone(),
                None,
                "window join".into(),
            )
            .unwrap()
            .with_window_key(WindowKey {
                key_position: 1,
                allowed_lateness_micros: 0,
            })
        };
        let rows = |schema: &SchemaRef, rows: &[(i32, i64, i32)]| {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(TimestampMicrosecondArray::from_iter_values(
                        rows.iter().map(|r| r.1),
                    )),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
                ],
            )
            .unwrap();
            ChangeBatch::new(batch, Int64Array::from(vec![1; rows.len()])).unwrap()
        };
        // (left value, right value) of each output pair, with its weight.
        let pairs = |batches: Vec<ChangeBatch>| {
            let mut out = Multiset::new();
            for b in batches {
                let (l, r) = (b.rows.column(2), b.rows.column(5));
                let int = |c: &ArrayRef| {
                    c.as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                        .clone()
                };
                let (l, r) = (int(l), int(r));
                for i in 0..b.num_rows() {
                    *out.entry((l.value(i), r.value(i))).or_insert(0) += b.weights.value(i);
                }
            }
            out
        };

        let mut join = make();
        join.process(0, rows(&ls, &[(1, 10, 100), (2, 10, 101), (1, 20, 102)]))
            .unwrap();
        // Two rows of one key on the right (10, 1).
        let out = join
            .process(1, rows(&rs, &[(1, 10, 200), (1, 20, 201), (1, 10, 202)]))
            .unwrap();
        assert_eq!(
            pairs(out),
            Multiset::from([((100, 200), 1), ((100, 202), 1), ((102, 201), 1)])
        );
        assert_eq!(join.state_keys().unwrap(), 6);

        let mut whole = StateDelta::new(true);
        join.checkpoint(&mut whole).unwrap();
        let mut restored = make();
        restored.restore(whole.into_map().into()).unwrap();
        assert_eq!(restored.state_keys().unwrap(), 6);

        for join in [&mut join, &mut restored] {
            join.on_watermark(0, 15).unwrap();
            join.on_watermark(1, 15).unwrap();
            assert_eq!(
                join.state_keys().unwrap(),
                2,
                "window 10 closed on both sides"
            );
            let out = join
                .process(1, rows(&rs, &[(1, 20, 203), (2, 10, 204)]))
                .unwrap();
            assert_eq!(pairs(out), Multiset::from([((102, 203), 1)]));
            assert_eq!(
                join.state_keys().unwrap(),
                4,
                "a row of a closed window is kept"
            );
            join.on_watermark(0, 25).unwrap();
            join.on_watermark(1, 25).unwrap();
            assert_eq!(join.state_keys().unwrap(), 0);
        }
    }

    /// An interval join (`r.t BETWEEN l.t AND l.e`, the shape of Nexmark
    /// q9) spilled to disk after every change answers and keeps the same
    /// as one in memory: expired rows go from disk too, also after a
    /// restore, and once both watermarks pass everything nothing is left.
    #[test]
    fn an_interval_join_spilled_to_disk_answers_and_expires_as_one_in_memory() {
        use datafusion::arrow::array::TimestampMicrosecondArray;
        use datafusion::arrow::util::display::array_value_to_string;
        use datafusion::logical_expr::Operator as Op;
        use datafusion::physical_expr::expressions::BinaryExpr;
        let timestamp = DataType::Timestamp(TimeUnit::Microsecond, None);
        let field = |name: &str, data_type: &DataType| Field::new(name, data_type.clone(), false);
        let ls = Arc::new(Schema::new(vec![
            field("k", &DataType::Int32),
            field("t", &timestamp),
            field("e", &timestamp),
        ]));
        let rs = Arc::new(Schema::new(vec![
            field("k", &DataType::Int32),
            field("t", &timestamp),
        ]));
        let output = Arc::new(Schema::new(
            ls.fields()
                .iter()
                .chain(rs.fields())
                .cloned()
                .collect::<Vec<_>>(),
        ));
        let column = |name: &str, index: usize| -> Arc<dyn PhysicalExpr> {
            Arc::new(Column::new(name, index))
        };
        // Over the pair (l.k, l.t, l.e, r.k, r.t).
        let filter: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(BinaryExpr::new(column("t", 4), Op::GtEq, column("t", 1))),
            Op::And,
            Arc::new(BinaryExpr::new(column("t", 4), Op::LtEq, column("e", 2))),
        ));
        let make = || {
            JoinOperator::try_new(
                JoinType::Inner,
                JoinSide {
                    keys: vec![column("k", 0)],
                    schema: ls.clone(),
                },
                JoinSide {
                    keys: vec![column("k", 0)],
                    schema: rs.clone(),
                },
                Some(filter.clone()),
                false,
                output.clone(),
                None,
                "interval join".into(),
            )
            .unwrap()
            .with_time_bounds(
                SideTime {
                    time: Some(column("t", 1)),
                    expiry: Some(column("e", 2)),
                    settles_after: None,
                },
                SideTime {
                    time: Some(column("t", 1)),
                    expiry: Some(column("t", 1)),
                    settles_after: None,
                },
            )
        };
        let rows = |side: usize, rows: &[(i32, i64, i64)]| {
            let times = |f: fn(&(i32, i64, i64)) -> i64| -> ArrayRef {
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(f),
                ))
            };
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                times(|r| r.1),
            ];
            if side == 0 {
                columns.push(times(|r| r.2));
            }
            let schema = if side == 0 { ls.clone() } else { rs.clone() };
            let batch = RecordBatch::try_new(schema, columns).unwrap();
            ChangeBatch::new(batch, Int64Array::from(vec![1; rows.len()])).unwrap()
        };
        let consolidate = |into: &mut Multiset<String, i64>, batches: Vec<ChangeBatch>| {
            for b in batches {
                for i in 0..b.num_rows() {
                    let row: Vec<String> = b
                        .rows
                        .columns()
                        .iter()
                        .map(|c| array_value_to_string(c, i).unwrap())
                        .collect();
                    *into.entry(row.join(",")).or_insert(0) += b.weights.value(i);
                }
            }
            into.retain(|_, n| *n != 0);
        };

        let (mut memory, mut spilled) = (make(), make());
        let (mut expected, mut got) = (Multiset::new(), Multiset::new());
        let mut seed = 11u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut now = 100i64;
        let mut spilled_keys = 0;
        for step in 0..300 {
            now += next(3) as i64;
            let side = next(2) as usize;
            let batch: Vec<(i32, i64, i64)> = (0..1 + next(4))
                .map(|_| {
                    let t = now + next(4) as i64;
                    (next(20) as i32, t, t + next(30) as i64)
                })
                .collect();
            consolidate(
                &mut expected,
                memory.process(side, rows(side, &batch)).unwrap(),
            );
            consolidate(&mut got, spilled.process(side, rows(side, &batch)).unwrap());
            if step % 7 == 0 {
                // Rows come at most 4 behind `now`: never late.
                for join in [&mut memory, &mut spilled] {
                    join.on_watermark(0, now - 1).unwrap();
                    join.on_watermark(1, now - 1).unwrap();
                }
            }
            if step == 150 {
                spilled = crate::stream::testing::restored(&mut spilled, make());
            }
            spilled.shrink(0).unwrap();
            let stats = spilled.spill_stats().unwrap();
            assert_eq!(
                stats.memory_bytes,
                spilled.unspillable_bytes(),
                "rows all on disk"
            );
            spilled_keys = spilled_keys.max(stats.cold_keys);
            assert_eq!(got, expected, "after step {step}");
            assert_eq!(
                spilled.state_keys(),
                memory.state_keys(),
                "after step {step}"
            );
        }
        assert!(spilled_keys > 10, "{spilled_keys} keys went to disk");
        assert!(!expected.is_empty());
        for join in [&mut memory, &mut spilled] {
            join.on_watermark(0, now + 100).unwrap();
            join.on_watermark(1, now + 100).unwrap();
            assert_eq!(join.state_keys(), Some(0));
        }
        assert_eq!(spilled.spill_stats().unwrap().cold_keys, 0);
    }

    fn random_changes_match_nested_loops(
        mut join: Box<dyn Operator>,
        ls: &SchemaRef,
        rs: &SchemaRef,
        spill: bool,
    ) {
        let (mut left, mut right) = (Multiset::new(), Multiset::new());
        let mut view = Multiset::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut checkpoints = Checkpoints::default();
        for step in 0..400 {
            if step % 2 == 1 {
                // A capture every other change: written whole (some side
                // changed by half its rows) or as a delta; either way what
                // the checkpoints hold is the state.
                checkpoints.capture(join.as_mut(), &format!("after step {step}"));
            }
            let side = next(2) as usize;
            let state = if side == 0 { &mut left } else { &mut right };
            let mut changes = Vec::new();
            for _ in 0..1 + next(3) {
                // Retract an existing row now and then, else insert one.
                let existing: Vec<Row> = state.keys().copied().collect();
                let (row, weight) = if !existing.is_empty() && next(3) == 0 {
                    (existing[next(existing.len() as u64) as usize], -1)
                } else {
                    let key = if next(6) == 0 {
                        None
                    } else {
                        Some(next(4) as i32)
                    };
                    ((key, next(5) as i32), 1)
                };
                let n = state.entry(row).or_insert(0);
                *n += weight;
                if *n == 0 {
                    state.remove(&row);
                }
                changes.push((row, weight));
            }
            let schema = if side == 0 { ls } else { rs };
            consolidate(
                &mut view,
                join.process(side, batch(schema, &changes)).unwrap(),
            );
            assert_eq!(view, reference(&left, &right));
            if spill {
                join.shrink(0).unwrap();
                // Only the sets of rows changed since the last capture stay.
                let held = join.spill_stats().unwrap().memory_bytes;
                assert!(held < 4096, "{held} bytes in memory");
            }
        }
        if spill {
            let stats = join.spill_stats().unwrap();
            assert!(stats.disk_hits > 0 && stats.cold_keys > 0, "{stats:?}");
        }
        let Checkpoints { deltas, whole, .. } = checkpoints;
        assert!(deltas > 10 && whole > 10, "{deltas} deltas, {whole} whole");
    }
}
