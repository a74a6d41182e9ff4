//! Event-time windows: assigning rows to TUMBLE and HOP windows, and
//! dropping rows that arrive after their window has closed.
//!
//! A window is `[start, end)` in microseconds. Assignment is a pure function
//! of the row's time ([`WindowSpec::windows`]), shared by the batch path
//! (ad-hoc SELECT over `TUMBLE(...)`) and the streaming operator, so both
//! give the same windows.
//!
//! The operator keeps the input's watermark. A change whose window ends at or
//! before `watermark - allowed_lateness` is *late*: the window may already be
//! final (and its state freed) downstream, so the change is dropped and
//! counted, never applied. Because the watermark only advances, a row that
//! was late on insertion is late on retraction too.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};

use super::{Operator, OperatorCounters};
use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};

/// How rows are assigned to windows (all lengths in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumble { size: i64, offset: i64 },
    Hop { slide: i64, size: i64 },
}

impl WindowSpec {
    pub fn tumble(size: i64, offset: i64) -> Result<Self> {
        if size <= 0 {
            return Err(EddyError::InvalidParameter(format!(
                "TUMBLE window size must be positive, not {size} µs"
            )));
        }
        Ok(WindowSpec::Tumble {
            size,
            offset: offset.rem_euclid(size),
        })
    }

    pub fn hop(slide: i64, size: i64) -> Result<Self> {
        if slide <= 0 || size <= 0 {
            return Err(EddyError::InvalidParameter(
                "HOP slide and size must be positive".into(),
            ));
        }
        if size % slide != 0 {
            return Err(EddyError::InvalidParameter(format!(
                "HOP window size ({size} µs) must be a whole multiple of its slide ({slide} µs)"
            )));
        }
        Ok(WindowSpec::Hop { slide, size })
    }

    pub fn size(&self) -> i64 {
        match self {
            WindowSpec::Tumble { size, .. } | WindowSpec::Hop { size, .. } => *size,
        }
    }

    /// The `[start, end)` windows that contain time `t`.
    pub fn windows(&self, t: i64) -> impl Iterator<Item = (i64, i64)> {
        let (first, step, count, size) = match *self {
            WindowSpec::Tumble { size, offset } => {
                ((t - offset).div_euclid(size) * size + offset, size, 1, size)
            }
            WindowSpec::Hop { slide, size } => {
                let last = t.div_euclid(slide) * slide;
                (last - size + slide, slide, size / slide, size)
            }
        };
        (0..count).map(move |i| {
            let start = first + i * step;
            (start, start + size)
        })
    }

    pub fn describe(&self) -> String {
        match self {
            WindowSpec::Tumble { size, offset: 0 } => format!("tumble {}", describe_micros(*size)),
            WindowSpec::Tumble { size, offset } => {
                format!(
                    "tumble {} offset {}",
                    describe_micros(*size),
                    describe_micros(*offset)
                )
            }
            WindowSpec::Hop { slide, size } => format!(
                "hop {} every {}",
                describe_micros(*size),
                describe_micros(*slide)
            ),
        }
    }
}

pub fn describe_micros(micros: i64) -> String {
    match micros {
        m if m % 3_600_000_000 == 0 => format!("{}h", m / 3_600_000_000),
        m if m % 60_000_000 == 0 => format!("{}min", m / 60_000_000),
        m if m % 1_000_000 == 0 => format!("{}s", m / 1_000_000),
        m => format!("{m}µs"),
    }
}

/// The schema of a relation with `window_start` and `window_end` added.
pub fn windowed_schema(input: &Schema, time_column: usize) -> SchemaRef {
    let zone = match input.field(time_column).data_type() {
        DataType::Timestamp(_, zone) => zone.clone(),
        _ => None,
    };
    let window_type = DataType::Timestamp(TimeUnit::Microsecond, zone);
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("window_start", window_type.clone(), false));
    fields.push(Field::new("window_end", window_type, false));
    Arc::new(Schema::new(fields))
}

/// Row times in microseconds (NULL stays NULL).
pub fn times(rows: &RecordBatch, time_column: usize) -> Result<TimestampMicrosecondArray> {
    let column = rows.column(time_column);
    let DataType::Timestamp(_, zone) = column.data_type() else {
        return Err(crate::internal!(
            "window time column is {}",
            column.data_type()
        ));
    };
    Ok(cast(
        column,
        &DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
    )?
    .as_primitive::<TimestampMicrosecondType>()
    .clone())
}

/// Assigns `rows` to windows: each row once per window it falls in, with
/// `window_start` and `window_end` appended. Rows for which `keep(row,
/// window_end)` is false are left out. Returns the windowed rows and, for
/// each, the index of its input row.
pub fn assign(
    rows: &RecordBatch,
    time_column: usize,
    spec: &WindowSpec,
    schema: &SchemaRef,
    mut keep: impl FnMut(usize, i64) -> bool,
) -> Result<(RecordBatch, Vec<u32>)> {
    let times = times(rows, time_column)?;
    let mut indices = Vec::with_capacity(rows.num_rows());
    let (mut starts, mut ends) = (
        Vec::with_capacity(rows.num_rows()),
        Vec::with_capacity(rows.num_rows()),
    );
    for row in 0..rows.num_rows() {
        if times.is_null(row) {
            continue; // no time, no window
        }
        for (start, end) in spec.windows(times.value(row)) {
            if keep(row, end) {
                indices.push(row as u32);
                starts.push(start);
                ends.push(end);
            }
        }
    }
    let windowed = with_windows(rows, &indices, starts, ends, schema)?;
    Ok((windowed, indices))
}

/// The rows of `rows` at `indices`, each with its `window_start` and
/// `window_end` appended (the columns of `schema`).
pub fn with_windows(
    rows: &RecordBatch,
    indices: &[u32],
    starts: Vec<i64>,
    ends: Vec<i64>,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = if is_every_row(indices, rows.num_rows()) {
        // Each row in one window (a tumble, no late rows): the columns as
        // they are, not copies.
        rows.columns().to_vec()
    } else {
        let index_array = UInt32Array::from(indices.to_vec());
        rows.columns()
            .iter()
            .map(|c| take(c, &index_array, None))
            .collect::<Result<_, _>>()?
    };
    let window_type = schema.field(schema.fields().len() - 1).data_type().clone();
    let zone = match &window_type {
        DataType::Timestamp(_, zone) => zone.clone(),
        _ => None,
    };
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(starts).with_timezone_opt(zone.clone()),
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(ends).with_timezone_opt(zone),
    ));
    let options =
        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// Whether `indices` are `0..rows`, each row once and in order.
fn is_every_row(indices: &[u32], rows: usize) -> bool {
    indices.len() == rows
        && indices
            .iter()
            .enumerate()
            .all(|(i, &row)| row as usize == i)
}

/// Where a windowing operator stands in event time: the highest watermark
/// of its input and the lateness it allows after it. A window (or session)
/// that ends at or before [`WindowClock::closed_up_to`] is closed, and a
/// change that would fall in it is late. Shared by window assignment and
/// both session operators, so they agree on what is late.
#[derive(Debug, Clone, Copy)]
pub struct WindowClock {
    allowed_lateness: i64,
    watermark: Option<i64>,
}

impl WindowClock {
    pub fn new(allowed_lateness: i64) -> Self {
        Self {
            allowed_lateness,
            watermark: None,
        }
    }

    /// Takes in an input watermark; returns the watermark to pass on (the
    /// highest seen: watermarks never go back).
    pub fn advance(&mut self, watermark: i64) -> Option<i64> {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
        self.watermark
    }

    /// Windows ending at or before this are closed (`None`: no watermark
    /// yet, nothing is closed).
    pub fn closed_up_to(&self) -> Option<i64> {
        self.watermark.map(|w| w - self.allowed_lateness)
    }
}

/// Streaming window assignment with late-change dropping.
pub struct WindowAssignOperator {
    time_column: usize,
    time_column_name: String,
    spec: WindowSpec,
    schema: SchemaRef,
    clock: WindowClock,
    counters: OperatorCounters,
}

impl WindowAssignOperator {
    pub fn new(
        time_column: usize,
        time_column_name: String,
        spec: WindowSpec,
        schema: SchemaRef,
        allowed_lateness: i64,
    ) -> Self {
        Self {
            time_column,
            time_column_name,
            spec,
            schema,
            clock: WindowClock::new(allowed_lateness),
            counters: OperatorCounters::default(),
        }
    }
}

impl Operator for WindowAssignOperator {
    fn describe(&self) -> String {
        format!(
            "WindowAssign: {} on {}",
            self.spec.describe(),
            self.time_column_name
        )
    }

    fn counters(&self) -> OperatorCounters {
        self.counters.clone()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let closed_before = self.clock.closed_up_to();
        // Count late changes, not (change, window) pairs: a HOP row falls
        // in several windows, visited one after another.
        let mut late = 0u64;
        let mut last_late_row = None;
        let (rows, indices) = assign(
            &batch.rows,
            self.time_column,
            &self.spec,
            &self.schema,
            |row, end| {
                let on_time = closed_before.is_none_or(|closed| end > closed);
                if !on_time && last_late_row != Some(row) {
                    late += 1;
                    last_late_row = Some(row);
                }
                on_time
            },
        )?;
        self.counters.record_late(late);
        let weights = match is_every_row(&indices, batch.num_rows()) {
            true => batch.weights.clone(),
            false => indices
                .iter()
                .map(|&i| batch.weights.value(i as usize))
                .collect(),
        };
        let out = ChangeBatch::new(rows, weights)?;
        Ok(if out.is_empty() { vec![] } else { vec![out] })
    }

    fn on_watermark(
        &mut self,
        _input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        Ok((vec![], self.clock.advance(watermark)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble_and_hop_windows() {
        let tumble = WindowSpec::tumble(10, 0).unwrap();
        assert_eq!(tumble.windows(25).collect::<Vec<_>>(), vec![(20, 30)]);
        assert_eq!(tumble.windows(-1).collect::<Vec<_>>(), vec![(-10, 0)]);
        let offset = WindowSpec::tumble(10, 3).unwrap();
        assert_eq!(offset.windows(12).collect::<Vec<_>>(), vec![(3, 13)]);
        let hop = WindowSpec::hop(5, 15).unwrap();
        assert_eq!(
            hop.windows(12).collect::<Vec<_>>(),
            vec![(0, 15), (5, 20), (10, 25)]
        );
        assert!(WindowSpec::hop(4, 10).is_err());
        assert!(WindowSpec::tumble(0, 0).is_err());
    }
}
