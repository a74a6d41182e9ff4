//! Temporal filters: `WHERE ts > now() - INTERVAL '5' MINUTE` in a view
//! keeps exactly the rows of the last five minutes, retracting each row as it
//! ages out, so a "last N minutes" view never grows without bound; `WHERE
//! ts <= now() + INTERVAL '1' HOUR` shows a row from an hour before its
//! time on (rows about the future appear as their time comes). `ts BETWEEN
//! now() - ... AND now() + ...` is one of each, one after the other.
//!
//! A lower bound passes a change through when its row is still inside the
//! window and keeps it (keyed by its time) until processing time moves past
//! it; then, on a runtime tick, it retracts it. A change whose row has
//! already aged out is dropped: its insertion was (or would have been)
//! retracted already. State is the rows inside the window.
//!
//! An upper bound passes a change through when its row's time has come and
//! keeps the others (keyed by their time) until it comes; then, on a
//! runtime tick, it inserts them. State is the rows still to come.
//!
//! Either way the rows kept whose time a tick settles are a prefix of the
//! time-ordered state.

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

/// Which side of `now()` a temporal filter bounds its rows' time on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemporalSide {
    /// `ts > now() + offset`: rows leave as time passes.
    Lower,
    /// `ts < now() + offset`: rows arrive as time passes.
    Upper,
}

pub struct TemporalFilterOperator {
    time: Arc<dyn PhysicalExpr>,
    side: TemporalSide,
    offset_micros: i64,
    /// `>=` / `<=` rather than `>` / `<`.
    inclusive: bool,
    codec: RowCodec,
    /// time -> row -> net weight: rows inside the window (lower bound) or
    /// still to come (upper bound).
    live: BTreeMap<i64, KeyMap<Arc<[u8]>, i64>>,
    live_rows: u64,
    /// `(time, row)` entries changed since the last checkpoint.
    dirty: Changed<(i64, Arc<[u8]>)>,
}

impl TemporalFilterOperator {
    pub fn try_new(
        time: Arc<dyn PhysicalExpr>,
        side: TemporalSide,
        offset_micros: i64,
        inclusive: bool,
        schema: SchemaRef,
    ) -> Result<Self> {
        Ok(Self {
            time,
            side,
            offset_micros,
            inclusive,
            codec: RowCodec::try_new(schema)?,
            live: BTreeMap::new(),
            live_rows: 0,
            dirty: Changed::default(),
        })
    }

    /// Whether a row at `time` passes the bound at `now`.
    fn passes(&self, time: i64, now: i64) -> bool {
        let bound = now as i128 + self.offset_micros as i128;
        let time = time as i128;
        match (self.side, self.inclusive) {
            (TemporalSide::Lower, true) => time >= bound,
            (TemporalSide::Lower, false) => time > bound,
            (TemporalSide::Upper, true) => time <= bound,
            (TemporalSide::Upper, false) => time < bound,
        }
    }

    /// Whether a row at `time` stays in the state at `now`: a lower
    /// bound keeps the rows that pass, an upper one those that do not yet.
    fn kept(&self, time: i64, now: i64) -> bool {
        self.passes(time, now) == (self.side == TemporalSide::Lower)
    }

    /// Keeps `weight` more of the encoded `row` at `time`.
    fn keep(&mut self, time: i64, row: Arc<[u8]>, weight: i64) {
        let rows = self.live.entry(time).or_default();
        let net = rows.entry(row.clone()).or_insert(0);
        *net += weight;
        if *net == 0 {
            rows.remove(&row);
        }
        self.live_rows = (self.live_rows as i64 + weight) as u64;
        // Rows held counted by weight: near enough to the entries.
        self.dirty.note(self.live_rows as usize, || (time, row));
    }
}

impl Operator for TemporalFilterOperator {
    fn describe(&self) -> String {
        let op = match (self.side, self.inclusive) {
            (TemporalSide::Lower, true) => ">=",
            (TemporalSide::Lower, false) => ">",
            (TemporalSide::Upper, true) => "<=",
            (TemporalSide::Upper, false) => "<",
        };
        let offset = match self.offset_micros {
            o if o < 0 => format!(" - {}µs", -(o as i128)),
            0 => String::new(),
            o => format!(" + {o}µs"),
        };
        let state = match self.side {
            TemporalSide::Lower => "state freed as time passes",
            TemporalSide::Upper => "rows held until their time comes",
        };
        format!("TemporalFilter: {} {op} now(){offset} ({state})", self.time)
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
        let mut passed = Vec::with_capacity(batch.num_rows());
        for (row, encoded) in encoded.into_iter().enumerate() {
            if times.is_null(row) {
                continue;
            }
            let time = times.value(row);
            let passes = self.passes(time, now);
            if passes {
                passed.push(row as u32);
            }
            // A lower bound keeps what passes (to retract it later; a row
            // past it is gone for good), an upper bound what does not pass
            // yet (to insert it later).
            if self.kept(time, now) {
                self.keep(time, encoded, batch.weights.value(row));
            }
        }
        let out = batch.take(&passed)?;
        Ok(if out.is_empty() { vec![] } else { vec![out] })
    }

    fn on_tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        // Retracted by a lower bound, inserted by an upper one.
        let sign = match self.side {
            TemporalSide::Lower => -1,
            TemporalSide::Upper => 1,
        };
        let first_kept = self.live.keys().find(|&&t| self.kept(t, now)).copied();
        let settled = match first_kept {
            Some(t) => {
                let inside = self.live.split_off(&t);
                std::mem::replace(&mut self.live, inside)
            }
            None => std::mem::take(&mut self.live),
        };
        for (time, rows) in &settled {
            self.dirty.note_all(
                self.live_rows as usize,
                rows.keys().map(|row| (*time, row.clone())),
            );
        }
        let rows: Vec<(Arc<[u8]>, i64)> = settled
            .into_values()
            .flat_map(|m| m.into_iter())
            .filter(|(_, w)| *w != 0)
            .collect();
        if rows.is_empty() {
            return Ok((vec![], None));
        }
        let batch = self.codec.decode(rows.iter().map(|(r, _)| r.as_ref()))?;
        let weights: Vec<i64> = rows.iter().map(|(_, w)| sign * w).collect();
        self.live_rows = (self.live_rows as i64 - rows.iter().map(|(_, w)| w).sum::<i64>()) as u64;
        let settled = ChangeBatch::new(batch, Int64Array::from(weights))?;
        Ok((vec![settled], None))
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
        let mut filter = TemporalFilterOperator::try_new(
            time,
            TemporalSide::Lower,
            -INTERVAL,
            false,
            schema.clone(),
        )
        .unwrap();
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

    /// `t <= now()`: a row about the future is held, then inserted by the
    /// tick at its time; changes to rows whose time has come pass at once.
    #[test]
    fn an_upper_bound_holds_rows_until_their_time() {
        let field = |name: &str, t| Field::new(name, t, false);
        let schema = Arc::new(Schema::new(vec![
            field("k", DataType::Int64),
            field("t", DataType::Int64),
        ]));
        let time = Arc::new(Column::new("t", 1)) as Arc<dyn PhysicalExpr>;
        let mut filter =
            TemporalFilterOperator::try_new(time, TemporalSide::Upper, 0, true, schema.clone())
                .unwrap();
        let now = now_micros();
        let later = now + 3_600_000_000;
        let out = filter
            .process(0, int_pairs(&schema, &[((1, now - 1), 1), ((2, later), 1)]))
            .unwrap();
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
        assert_eq!(filter.state_keys(), Some(1));
        // Not yet: nothing to insert.
        assert!(filter.on_tick(later - 1).unwrap().0.is_empty());
        let (released, _) = filter.on_tick(later).unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].num_rows(), 1);
        assert_eq!(released[0].weights.value(0), 1);
        assert_eq!(filter.state_keys(), Some(0));
        // A row held and retracted before its time never shows.
        filter
            .process(0, int_pairs(&schema, &[((3, later + 5), 1)]))
            .unwrap();
        filter
            .process(0, int_pairs(&schema, &[((3, later + 5), -1)]))
            .unwrap();
        assert!(filter.on_tick(later + 10).unwrap().0.is_empty());
    }
}
