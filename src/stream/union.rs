//! UNION ALL: the changelog of a union is the union of the changelogs. Inputs
//! are re-labelled with the union's schema (DataFusion has already coerced
//! their types to match).
//!
//! Watermark: the minimum of the inputs' watermarks, once every input has
//! one. With an idle timeout, an input that has sent neither changes nor
//! watermarks for that long (measured in runtime ticks) is left out of the
//! minimum until it sends again, so a quiet input does not hold everyone
//! back (when all are quiet, those that have a watermark decide). The union's watermark never goes backwards: changes from an input
//! that wakes up behind it may then be late downstream (as in Flink).

use datafusion::arrow::datatypes::SchemaRef;

use super::{ChangeBatch, Operator};
use crate::error::Result;

pub struct UnionOperator {
    schema: SchemaRef,
    inputs: usize,
    /// Each input's watermark.
    watermarks: Vec<Option<i64>>,
    idle_timeout: Option<i64>,
    /// Per input: whether it sent anything since the last tick, and the
    /// processing time (µs) of the last tick at which it had.
    active_since_tick: Vec<bool>,
    last_active: Vec<Option<i64>>,
    /// Processing time of the last tick.
    now: Option<i64>,
    /// The watermark passed on last.
    forwarded: Option<i64>,
}

impl UnionOperator {
    pub fn new(schema: SchemaRef, inputs: usize, idle_timeout: Option<i64>) -> Self {
        Self {
            schema,
            inputs,
            watermarks: vec![None; inputs],
            idle_timeout,
            active_since_tick: vec![false; inputs],
            last_active: vec![None; inputs],
            now: None,
            forwarded: None,
        }
    }

    fn is_idle(&self, input: usize) -> bool {
        match (self.idle_timeout, self.now, self.last_active[input]) {
            (Some(timeout), Some(now), Some(active)) => {
                !self.active_since_tick[input] && now - active > timeout
            }
            _ => false,
        }
    }

    /// The watermark to pass on, if it moved: the minimum over the inputs
    /// that are not idle (each must have a watermark); when all are idle,
    /// over those that have one.
    fn advance(&mut self) -> Option<i64> {
        let active: Vec<usize> = (0..self.inputs).filter(|&i| !self.is_idle(i)).collect();
        let candidate = if active.is_empty() {
            self.watermarks.iter().flatten().copied().min()?
        } else {
            let mut minimum = i64::MAX;
            for input in active {
                minimum = minimum.min(self.watermarks[input]?); // wait for it
            }
            minimum
        };
        if self.forwarded.is_some_and(|f| f >= candidate) {
            return None;
        }
        self.forwarded = Some(candidate);
        Some(candidate)
    }
}

impl Operator for UnionOperator {
    fn describe(&self) -> String {
        match self.idle_timeout {
            Some(timeout) => format!(
                "UnionAll: {} inputs (idle after {})",
                self.inputs,
                super::window::describe_micros(timeout)
            ),
            None => format!("UnionAll: {} inputs", self.inputs),
        }
    }

    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        self.active_since_tick[input] = true;
        let columns = batch.rows.columns().to_vec();
        Ok(vec![batch.with_columns(self.schema.clone(), columns)?])
    }

    fn on_watermark(
        &mut self,
        input: usize,
        watermark: i64,
    ) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        self.active_since_tick[input] = true;
        let slot = &mut self.watermarks[input];
        *slot = Some(slot.map_or(watermark, |w| w.max(watermark)));
        Ok((vec![], self.advance()))
    }

    fn on_tick(&mut self, now: i64) -> Result<(Vec<ChangeBatch>, Option<i64>)> {
        self.now = Some(now);
        for input in 0..self.inputs {
            // Inputs are first timed from the first tick.
            if self.active_since_tick[input] || self.last_active[input].is_none() {
                self.last_active[input] = Some(now);
            }
            self.active_since_tick[input] = false;
        }
        Ok((vec![], self.advance()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Schema;
    use std::sync::Arc;

    #[test]
    fn an_idle_input_stops_holding_the_watermark_back() {
        let second = 1_000_000;
        let mut union = UnionOperator::new(Arc::new(Schema::empty()), 2, Some(5 * second));
        union.on_tick(0).unwrap();
        // Input 1 never sends: the union waits for it.
        assert_eq!(union.on_watermark(0, 100).unwrap().1, None);
        assert_eq!(union.on_tick(3 * second).unwrap().1, None);
        union.on_watermark(0, 200).unwrap();
        // Past the timeout input 1 is idle, and input 0 alone decides.
        assert_eq!(union.on_tick(6 * second).unwrap().1, Some(200));
        assert_eq!(union.on_watermark(0, 300).unwrap().1, Some(300));
        // Input 1 wakes up behind: it counts again, the watermark holds.
        assert_eq!(union.on_watermark(1, 50).unwrap().1, None);
        assert_eq!(union.on_watermark(0, 400).unwrap().1, None);
        assert_eq!(union.on_watermark(1, 500).unwrap().1, Some(400));
        // When every input is quiet, those with a watermark decide.
        let mut quiet = UnionOperator::new(Arc::new(Schema::empty()), 2, Some(5 * second));
        quiet.on_tick(0).unwrap();
        quiet.on_watermark(0, 100).unwrap();
        assert_eq!(quiet.on_tick(second).unwrap().1, None);
        assert_eq!(quiet.on_tick(7 * second).unwrap().1, Some(100));
        // Without a timeout nobody is ever idle.
        let mut strict = UnionOperator::new(Arc::new(Schema::empty()), 2, None);
        strict.on_tick(0).unwrap();
        strict.on_watermark(0, 100).unwrap();
        assert_eq!(strict.on_tick(3600 * second).unwrap().1, None);
    }
}
