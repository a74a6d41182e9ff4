//! The watermark of an operator with several inputs (union, join).
//!
//! It is the minimum of the inputs' watermarks, once every input has one.
//! With an idle timeout, an input that has sent neither changes nor
//! watermarks for that long (measured in runtime ticks) is left out of the
//! minimum until it sends again, so a quiet input does not hold everyone
//! back (when all are quiet, those that have a watermark decide). The merged
//! watermark never goes backwards: changes from an input that wakes up
//! behind it may then be late downstream (as in Flink).

/// Tracks the inputs' watermarks and activity; see the module docs.
#[derive(Debug)]
pub struct MergedWatermark {
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

impl MergedWatermark {
    pub fn new(inputs: usize, idle_timeout: Option<i64>) -> Self {
        Self {
            watermarks: vec![None; inputs],
            idle_timeout,
            active_since_tick: vec![false; inputs],
            last_active: vec![None; inputs],
            now: None,
            forwarded: None,
        }
    }

    pub fn idle_timeout(&self) -> Option<i64> {
        self.idle_timeout
    }

    /// The newest merged watermark passed on.
    pub fn current(&self) -> Option<i64> {
        self.forwarded
    }

    /// Input `input`'s own watermark, if it sent one.
    pub fn input(&self, input: usize) -> Option<i64> {
        self.watermarks[input]
    }

    /// Input `input` sent changes.
    pub fn on_data(&mut self, input: usize) {
        self.active_since_tick[input] = true;
    }

    /// Input `input`'s watermark moved; the merged one to pass on, if it moved.
    pub fn on_watermark(&mut self, input: usize, watermark: i64) -> Option<i64> {
        self.active_since_tick[input] = true;
        let slot = &mut self.watermarks[input];
        *slot = Some(slot.map_or(watermark, |w| w.max(watermark)));
        self.advance()
    }

    /// Processing time moved; the merged watermark to pass on, if an input
    /// going idle moved it.
    pub fn on_tick(&mut self, now: i64) -> Option<i64> {
        self.now = Some(now);
        for input in 0..self.watermarks.len() {
            // Inputs are first timed from the first tick.
            if self.active_since_tick[input] || self.last_active[input].is_none() {
                self.last_active[input] = Some(now);
            }
            self.active_since_tick[input] = false;
        }
        self.advance()
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
        let inputs = self.watermarks.len();
        let active: Vec<usize> = (0..inputs).filter(|&i| !self.is_idle(i)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_input_stops_holding_the_watermark_back() {
        let second = 1_000_000;
        let mut merged = MergedWatermark::new(2, Some(5 * second));
        merged.on_tick(0);
        // Input 1 never sends: the merge waits for it.
        assert_eq!(merged.on_watermark(0, 100), None);
        assert_eq!(merged.on_tick(3 * second), None);
        merged.on_watermark(0, 200);
        // Past the timeout input 1 is idle, and input 0 alone decides.
        assert_eq!(merged.on_tick(6 * second), Some(200));
        assert_eq!(merged.on_watermark(0, 300), Some(300));
        // Input 1 wakes up behind: it counts again, the watermark holds.
        assert_eq!(merged.on_watermark(1, 50), None);
        assert_eq!(merged.on_watermark(0, 400), None);
        assert_eq!(merged.on_watermark(1, 500), Some(400));
        // When every input is quiet, those with a watermark decide.
        let mut quiet = MergedWatermark::new(2, Some(5 * second));
        quiet.on_tick(0);
        quiet.on_watermark(0, 100);
        assert_eq!(quiet.on_tick(second), None);
        assert_eq!(quiet.on_tick(7 * second), Some(100));
        // Without a timeout nobody is ever idle.
        let mut strict = MergedWatermark::new(2, None);
        strict.on_tick(0);
        strict.on_watermark(0, 100);
        assert_eq!(strict.on_tick(3600 * second), None);
    }
}
