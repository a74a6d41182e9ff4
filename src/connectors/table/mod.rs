//! Tables: rows written with INSERT, UPDATE and DELETE, kept in memory.
//!
//! A write is computed against the current [`TableData`] into a new
//! `TableData` plus the [`ChangeBatch`] that describes it; the caller installs
//! the new data and hands the change to the runtime. A write that violates a
//! constraint (NOT NULL, PRIMARY KEY) fails as a whole and changes nothing.
//! The change is also what the write-ahead log keeps ([`TableData::encode_change`])
//! and what recovery applies again ([`TableData::apply`]).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::common::types::is_json_field;
use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};
use crate::state::codec::{Decoder, Encoder};
use crate::state::{RowCodec, RowSet};

/// A table's rows and, with a primary key, the index that enforces it.
#[derive(Debug, Clone)]
pub struct TableData {
    pub rows: RowSet,
    table_name: String,
    primary_key: Option<PrimaryKey>,
}

#[derive(Debug, Clone)]
struct PrimaryKey {
    columns: Vec<usize>,
    codec: Arc<RowCodec>,
    /// Encoded key -> encoded row.
    index: imbl::HashMap<Arc<[u8]>, Arc<[u8]>>,
}

impl TableData {
    pub fn try_new(table_name: &str, schema: SchemaRef, primary_key: Vec<usize>) -> Result<Self> {
        let primary_key = if primary_key.is_empty() {
            None
        } else {
            let codec = Arc::new(RowCodec::try_new(Arc::new(schema.project(&primary_key)?))?);
            Some(PrimaryKey {
                columns: primary_key,
                codec,
                index: imbl::HashMap::new(),
            })
        };
        Ok(Self {
            rows: RowSet::new(Arc::new(RowCodec::try_new(schema)?)),
            table_name: table_name.to_string(),
            primary_key,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        self.rows.schema()
    }

    pub fn primary_key_columns(&self) -> &[usize] {
        self.primary_key
            .as_ref()
            .map(|pk| pk.columns.as_slice())
            .unwrap_or(&[])
    }

    /// The table after inserting `rows`, and the change.
    pub fn insert(&self, rows: RecordBatch) -> Result<(TableData, ChangeBatch)> {
        self.check_values(&rows)?;
        let mut next = self.clone();
        next.add_rows(&rows)?;
        Ok((next, ChangeBatch::inserts(rows)))
    }

    /// The table after deleting `rows` (each must be present), and the change.
    pub fn delete(&self, rows: RecordBatch) -> Result<(TableData, ChangeBatch)> {
        let mut next = self.clone();
        next.remove_rows(&rows)?;
        Ok((next, ChangeBatch::deletes(rows)))
    }

    /// The table after replacing `old` rows by `new` rows (same order), and
    /// the change: the old rows retracted, the new inserted.
    pub fn update(&self, old: RecordBatch, new: RecordBatch) -> Result<(TableData, ChangeBatch)> {
        self.check_values(&new)?;
        let mut next = self.clone();
        next.remove_rows(&old)?;
        next.add_rows(&new)?;
        let weights: Vec<i64> = std::iter::repeat_n(-1, old.num_rows())
            .chain(std::iter::repeat_n(1, new.num_rows()))
            .collect();
        let rows = concat_batches(self.schema(), [&old, &new])?;
        Ok((next, ChangeBatch::new(rows, Int64Array::from(weights))?))
    }

    /// The table after a change computed earlier by [`Self::insert`],
    /// [`Self::delete`] or [`Self::update`] (replayed from the write-ahead
    /// log): its retractions removed, then its insertions added.
    pub fn apply(&self, change: &ChangeBatch) -> Result<TableData> {
        if change.weights.values().iter().any(|w| w.abs() != 1) {
            return Err(crate::internal!(
                "a table change with a weight other than 1 or -1"
            ));
        }
        let retracted = BooleanArray::from_unary(&change.weights, |w| w < 0);
        let inserted = BooleanArray::from_unary(&change.weights, |w| w > 0);
        let mut next = self.clone();
        next.remove_rows(&change.filter(&retracted)?.rows)?;
        next.add_rows(&change.filter(&inserted)?.rows)?;
        Ok(next)
    }

    /// A change of this table as the write-ahead log keeps it: the row
    /// count, then per row its weight and its `arrow-row` encoding.
    pub fn encode_change(&self, change: &ChangeBatch) -> Result<Vec<u8>> {
        let rows = self.rows.codec().encode(&change.rows)?;
        let mut out = Encoder::new();
        out.u64(rows.len() as u64);
        for (row, weight) in rows.iter().zip(change.weights.values()) {
            out.i64(*weight).bytes(row);
        }
        Ok(out.finish())
    }

    /// The change [`Self::encode_change`] wrote.
    pub fn decode_change(&self, bytes: &[u8]) -> Result<ChangeBatch> {
        let mut input = Decoder::new(bytes);
        let count = input.u64()? as usize;
        let mut weights = Vec::with_capacity(count.min(1 << 20));
        let mut rows = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            weights.push(input.i64()?);
            rows.push(input.bytes()?);
        }
        let batch = self.rows.codec().decode(rows.into_iter())?;
        ChangeBatch::new(batch, Int64Array::from(weights))
    }

    fn check_values(&self, rows: &RecordBatch) -> Result<()> {
        for (field, column) in self.schema().fields().iter().zip(rows.columns()) {
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(EddyError::NotNullViolation(format!(
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                    field.name(),
                    self.table_name
                )));
            }
            crate::common::types::check_length(field, column.as_ref())?;
            if is_json_field(field) {
                let strings = column
                    .as_string_opt::<i32>()
                    .ok_or_else(|| crate::internal!("json column is not text"))?;
                for value in strings.iter().flatten() {
                    if serde_json::from_str::<serde_json::Value>(value).is_err() {
                        return Err(EddyError::InvalidValue(format!(
                            "invalid input syntax for type json: \"{value}\""
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn add_rows(&mut self, rows: &RecordBatch) -> Result<()> {
        let encoded = self.rows.codec().encode(rows)?;
        if let Some(pk) = &mut self.primary_key {
            let keys = pk.codec.encode(&rows.project(&pk.columns)?)?;
            for (i, (key, row)) in keys.into_iter().zip(&encoded).enumerate() {
                if pk.index.contains_key(&key) {
                    let key_columns = rows.project(&pk.columns)?;
                    return Err(duplicate_key(&self.table_name, &key_columns, i));
                }
                pk.index.insert(key, row.clone());
            }
        }
        for row in encoded {
            self.rows.add_encoded(row, 1)?;
        }
        Ok(())
    }

    fn remove_rows(&mut self, rows: &RecordBatch) -> Result<()> {
        let encoded = self.rows.codec().encode(rows)?;
        if let Some(pk) = &mut self.primary_key {
            for key in pk.codec.encode(&rows.project(&pk.columns)?)? {
                pk.index.remove(&key);
            }
        }
        for row in encoded {
            self.rows.add_encoded(row, -1)?;
        }
        Ok(())
    }
}

fn duplicate_key(table: &str, key_columns: &RecordBatch, row: usize) -> EddyError {
    let names: Vec<&str> = key_columns
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let values: Vec<String> = key_columns
        .columns()
        .iter()
        .map(|c| {
            ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default())
                .map(|f| f.value(row).to_string())
                .unwrap_or_default()
        })
        .collect();
    EddyError::UniqueViolation {
        message: format!("duplicate key value violates unique constraint \"{table}_pkey\""),
        detail: format!(
            "Key ({})=({}) already exists.",
            names.join(", "),
            values.join(", ")
        ),
    }
}

/// A table's event-time watermark: `WATERMARK FOR column AS column - delay`.
/// The watermark is the largest event time written so far minus the delay;
/// it only moves forward.
#[derive(Debug)]
pub struct TableWatermark {
    pub column: usize,
    pub delay_micros: i64,
    current: std::sync::Mutex<Option<i64>>,
}

impl TableWatermark {
    pub fn new(column: usize, delay_micros: i64) -> Self {
        Self {
            column,
            delay_micros,
            current: std::sync::Mutex::new(None),
        }
    }

    /// Advances the watermark past the rows `change` inserts; returns the
    /// new watermark if it moved.
    pub fn observe(&self, change: &ChangeBatch) -> Result<Option<i64>> {
        let times = datafusion::arrow::compute::cast(
            change.rows.column(self.column),
            &datafusion::arrow::datatypes::DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                None,
            ),
        )?;
        let times = times.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        let newest = (0..change.num_rows())
            .filter(|&i| change.weights.value(i) > 0 && times.is_valid(i))
            .map(|i| times.value(i))
            .max();
        Ok(newest.and_then(|newest| self.advance_to(newest)))
    }

    /// Starts from a checkpointed watermark (it never goes back).
    pub fn resume_at(&self, watermark: i64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Some(current.map_or(watermark, |c| c.max(watermark)));
    }

    /// Advances the watermark as if a row at `time` arrived; returns the new
    /// watermark if it moved.
    pub fn advance_to(&self, time: i64) -> Option<i64> {
        let candidate = time - self.delay_micros;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_some_and(|c| c >= candidate) {
            return None;
        }
        *current = Some(candidate);
        Some(candidate)
    }

    pub fn current(&self) -> Option<i64> {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A `column AS PROCTIME()`: each row is stamped with the processing time at
/// which it is ingested. Stamps never go backwards (a clock step back is
/// absorbed), so a watermark that follows them is exact.
#[derive(Debug)]
pub struct ProcessingTime {
    /// The column's position in the relation.
    pub column: usize,
    last: std::sync::Mutex<i64>,
}

impl ProcessingTime {
    pub fn new(column: usize) -> Self {
        Self {
            column,
            last: std::sync::Mutex::new(i64::MIN),
        }
    }

    /// The current processing time (µs since the epoch), never less than a
    /// time this clock returned before.
    pub fn now(&self) -> i64 {
        let wall = crate::common::time::now_micros();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(wall);
        *last
    }

    /// `rows` in `schema` with the column set to `now`. `rows` either has the
    /// column (its values are replaced) or lacks it (it is inserted).
    pub fn stamp(&self, rows: &RecordBatch, schema: &SchemaRef, now: i64) -> Result<RecordBatch> {
        let inserted = rows.num_columns() < schema.fields().len();
        let stamps: datafusion::arrow::array::ArrayRef = Arc::new(
            datafusion::arrow::array::TimestampMicrosecondArray::from(vec![now; rows.num_rows()]),
        );
        let stamps =
            datafusion::arrow::compute::cast(&stamps, schema.field(self.column).data_type())?;
        let columns = (0..schema.fields().len())
            .map(|i| match i {
                i if i == self.column => stamps.clone(),
                i if inserted && i > self.column => rows.column(i - 1).clone(),
                i => rows.column(i).clone(),
            })
            .collect();
        let options = datafusion::arrow::array::RecordBatchOptions::new()
            .with_row_count(Some(rows.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &options,
        )?)
    }
}
