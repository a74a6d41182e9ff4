//! Temporal filters: `WHERE ts > now() - INTERVAL '5' MINUTE` in a view
//! keeps exactly the rows of the last five minutes, retracting each row as it
//! ages out, so a "last N minutes" view never grows without bound.
//!
//! The operator passes a change through when its row is still inside the
//! window and keeps it (keyed by its time) until processing time moves past
//! `ts + interval`; then, on a runtime tick, it retracts it. A change whose
//! row has already aged out is dropped: its insertion was (or would have
//! been) retracted already. State is the rows inside the window.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::physical_plan::PhysicalExpr;

use super::Operator;
use crate::common::time::now_micros;
use crate::common::ChangeBatch;
use crate::error::Result;
use crate::state::checkpoint::{RestoredTable, StateDelta};
use crate::state::RowCodec;
use crate::state::{Changed, KeyMap};

pub struct TemporalFilterOperator {
    time: Arc<dyn PhysicalExpr>,
    interval_micros: i64,
    /// `>=` rather than `>`.
    inclusive: bool,
    codec: RowCodec,
    /// time -> row -> net weight, for rows still inside the window.
    live: BTreeMap<i64, KeyMap<Arc<[u8]>, i64>>,
    live_rows: u64,
    /// `(time, row)` entries changed since the last checkpoint.
    dirty: Changed<(i64, Arc<[u8]>)>,
}

impl TemporalFilterOperator {
    pub fn try_new(
        time: Arc<dyn PhysicalExpr>,
        interval_micros: i64,
        inclusive: bool,
        schema: SchemaRef,
    ) -> Result<Self> {
        Ok(Self {
            time,
            interval_micros,
            inclusive,
            codec: RowCodec::try_new(schema)?,
            live: BTreeMap::new(),
            live_rows: 0,
            dirty: Changed::default(),
        })
    }

    /// Whether a row at `time` is still inside the window at `now`.
    fn inside(&self, time: i64, now: i64) -> bool {
        let end = time + self.interval_micros;
        if self.inclusive {
            end >= now
        } else {
            end > now
        }
    }
}

impl Operator for TemporalFilterOperator {
    fn describe(&self) -> String {
        let op = if self.inclusive { ">=" } else { ">" };
        format!(
            "TemporalFilter: {} {op} now() - {}µs (state freed as time passes)",
            self.time, self.interval_micros
        )
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let now = now_micros();
        let times = self
            .time
            .evaluate(&batch.rows)?
            .into_array(batch.num_rows())?;
        let zone = match times.data_type() {
            DataType::Timestamp(_, zone) => zone.clone(),
            _ => None,
        };
        let times = cast(&times, &DataType::Timestamp(TimeUnit::Microsecond, zone))?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        let encoded = self.codec.encode(&batch.rows)?;
        let mut kept = Vec::with_capacity(batch.num_rows());
        for (row, encoded) in encoded.into_iter().enumerate() {
            if times.is_null(row) || !self.inside(times.value(row), now) {
                continue;
            }
            kept.push(row as u32);
            let weight = batch.weights.value(row);
            let rows = self.live.entry(times.value(row)).or_default();
            let net = rows.entry(encoded.clone()).or_insert(0);
            *net += weight;
            if *net == 0 {
                rows.remove(&encoded);
            }
            self.live_rows = (self.live_rows as i64 + weight) as u64;
            // Rows held counted by weight: near enough to the entries.
            self.dirty
                .note(self.live_rows as usize, || (times.value(row), encoded));
        }
        let out = batch.take(&kept)?;
        Ok(if out.is_empty() { vec![] } else { vec![out] })
    }

    fn on_tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        let first_inside = self.live.keys().find(|&&t| self.inside(t, now)).copied();
        let expired = match first_inside {
            Some(t) => {
                let inside = self.live.split_off(&t);
                std::mem::replace(&mut self.live, inside)
            }
            None => std::mem::take(&mut self.live),
        };
        for (time, rows) in &expired {
            self.dirty.note_all(
                self.live_rows as usize,
                rows.keys().map(|row| (*time, row.clone())),
            );
        }
        let rows: Vec<(Arc<[u8]>, i64)> = expired
            .into_values()
            .flat_map(|m| m.into_iter())
            .filter(|(_, w)| *w != 0)
            .collect();
        if rows.is_empty() {
            return Ok((vec![], None));
        }
        let batch = self.codec.decode(rows.iter().map(|(r, _)| r.as_ref()))?;
        let weights: Vec<i64> = rows.iter().map(|(_, w)| -w).collect();
        self.live_rows = (self.live_rows as i64 + weights.iter().sum::<i64>()) as u64;
        let expired = ChangeBatch::new(batch, Int64Array::from(weights))?;
        Ok((vec![expired], None))
    }

    fn state_keys(&self) -> Option<u64> {
        Some(self.live_rows)
    }

    /// Key: the row's time (8 bytes) then the row; value: its net weight.
    fn checkpoint(&mut self, delta: &mut StateDelta) -> Result<()> {
        let key = |time: i64, row: &[u8]| {
            let mut key = time.to_be_bytes().to_vec();
            key.extend_from_slice(row);
            key
        };
        let live = &self.live;
        delta.put_changed_with(
            &mut self.dirty,
            |delta| {
                for (time, rows) in live {
                    for (row, weight) in rows {
                        delta.put(key(*time, row), weight.to_le_bytes());
                    }
                }
            },
            |delta, (time, row)| match live.get(time).and_then(|rows| rows.get(row)) {
                Some(weight) => delta.put(key(*time, row), weight.to_le_bytes()),
                None => delta.delete(key(*time, row)),
            },
        );
        Ok(())
    }

    fn restore(&mut self, entries: RestoredTable) -> Result<()> {
        let entries = entries.into_map()?;
        self.live.clear();
        self.dirty = Changed::default();
        self.live_rows = 0;
        for (key, value) in entries {
            let damaged = || crate::error::EddyError::Checkpoint("temporal filter state".into());
            let time = i64::from_be_bytes(
                key.get(..8)
                    .ok_or_else(damaged)?
                    .try_into()
                    .map_err(|_| damaged())?,
            );
            let weight = i64::from_le_bytes(value.as_slice().try_into().map_err(|_| damaged())?);
            self.live
                .entry(time)
                .or_default()
                .insert(key[8..].into(), weight);
            self.live_rows = (self.live_rows as i64 + weight) as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::testing::{int_pairs, random, Checkpoints};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    /// Rows `(k, t)` kept while `t > now - 10 s`, with random insertions,
    /// retractions and ticks that expire the oldest, captured after every
    /// step: what its checkpoints hold is its state.
    #[test]
    fn checkpoints_hold_the_rows_changed() {
        let field = |name: &str, t| Field::new(name, t, false);
        let schema = Arc::new(Schema::new(vec![
            field("k", DataType::Int64),
            field("t", DataType::Int64),
        ]));
        // The time column as a timestamp (the filter casts it to one).
        let time = Arc::new(Column::new("t", 1)) as Arc<dyn PhysicalExpr>;
        const INTERVAL: i64 = 10_000_000;
        let mut filter =
            TemporalFilterOperator::try_new(time, INTERVAL, false, schema.clone()).unwrap();
        // Times an hour ahead: inside the window whatever the clock reads.
        let start = now_micros() + 3_600_000_000;
        let mut next = random(5);
        let mut live: Vec<(i64, i64)> = Vec::new();
        let mut checkpoints = Checkpoints::default();
        for step in 0..300i64 {
            if step % 10 == 9 {
                // Expires the rows more than 10 s older than the step's.
                let now = start + step * 100_000 + INTERVAL - 2_000_000;
                filter.on_tick(now).unwrap();
                live.retain(|(_, t)| *t + INTERVAL > now);
            } else {
                let mut changes = Vec::new();
                for _ in 0..1 + next(3) {
                    if !live.is_empty() && next(4) == 0 {
                        let row = live.swap_remove(next(live.len() as u64) as usize);
                        changes.push((row, -1));
                    } else {
                        let row = (next(5) as i64, start + step * 100_000 + next(10) as i64);
                        live.push(row);
                        changes.push((row, 1));
                    }
                }
                filter.process(0, int_pairs(&schema, &changes)).unwrap();
            }
            checkpoints.capture(&mut filter, &format!("after step {step}"));
        }
        assert_eq!(filter.state_keys().unwrap(), live.len() as u64);
        let Checkpoints { deltas, whole, .. } = checkpoints;
        assert!(deltas > 100 && whole >= 3, "{deltas} deltas, {whole} whole");
    }
}
