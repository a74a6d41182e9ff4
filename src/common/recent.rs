//! [`RecentLog`]: the last entries of something that keeps happening (bad
//! messages a source skipped, rows a sink could not write) and how many
//! there were in all. The list is bounded so a flood of errors cannot grow
//! memory; the total keeps counting past it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Entries kept by default (the system tables show these).
pub const RECENT_KEPT: usize = 1000;

#[derive(Debug)]
pub struct RecentLog<T> {
    recent: Mutex<VecDeque<T>>,
    total: AtomicU64,
    capacity: usize,
}

impl<T: Clone> Default for RecentLog<T> {
    fn default() -> Self {
        Self::with_capacity(RECENT_KEPT)
    }
}

impl<T: Clone> RecentLog<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            recent: Mutex::default(),
            total: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    pub fn record(&self, entry: T) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The kept entries, oldest first.
    pub fn recent(&self) -> Vec<T> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }

    /// How many were recorded in all (also those no longer kept, and those
    /// counted before a restart: see [`Self::add_to_total`]).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Adds what was counted before a restart (from a checkpoint).
    pub fn add_to_total(&self, count: u64) {
        self.total.fetch_add(count, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_and_counts_all() {
        let log = RecentLog::with_capacity(3);
        for i in 0..10 {
            log.record(i);
        }
        assert_eq!(log.recent(), vec![7, 8, 9]);
        assert_eq!(log.total(), 10);
        log.add_to_total(5);
        assert_eq!(log.total(), 15);
    }
}
