//! Keyed operator state by window end: each window's keys in a map of
//! their own.
//!
//! A windowed operator (a join on a window key, an aggregate grouped by a
//! window) frees a window's state once the watermark passes its end. Kept
//! in one map, that is a hash probe and a cache miss per key, plus an index
//! from window end to keys (an `Arc` clone and a push per new key); kept
//! per window, a closed window goes as one map, taken with one
//! `BTreeMap::split_off`. State outside any window (an operator without a
//! window key, or a NULL window end) lives under [`NO_WINDOW`], which is
//! never closed.
//!
//! Invariant: a key is held under at most one window end (the end is part
//! of the key of every windowed operator, so its bytes imply it).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};

use super::KeyMap;
use crate::error::Result;

/// The window end of state outside any window. Never closed.
pub const NO_WINDOW: i64 = i64::MAX;

/// The window end (µs) of each row of a `window_end` column (of any
/// timestamp type); [`NO_WINDOW`] where it is NULL.
pub fn window_ends(column: &ArrayRef) -> Result<Vec<i64>> {
    let ends = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let ends = ends.as_primitive::<TimestampMicrosecondType>();
    Ok(ends.iter().map(|end| end.unwrap_or(NO_WINDOW)).collect())
}

/// One window's state: by encoded key.
pub type WindowKeys<V> = KeyMap<Arc<[u8]>, V>;

/// State by window end, then by encoded key.
#[derive(Debug)]
pub struct ByWindow<V> {
    windows: BTreeMap<i64, WindowKeys<V>>,
    /// Keys of the largest window closed last: a new window's map is made
    /// this large (windows of a stream hold alike numbers of keys), so
    /// that it does not grow by rehashing from nothing.
    capacity_hint: usize,
}

impl<V> Default for ByWindow<V> {
    fn default() -> Self {
        Self {
            windows: BTreeMap::new(),
            capacity_hint: 0,
        }
    }
}

impl<V> ByWindow<V> {
    pub fn get(&self, window: i64, key: &[u8]) -> Option<&V> {
        self.windows.get(&window)?.get(key)
    }

    pub fn get_mut(&mut self, window: i64, key: &[u8]) -> Option<&mut V> {
        self.windows.get_mut(&window)?.get_mut(key)
    }

    /// The keys of window `window` (none at first), for a run of lookups
    /// in one window without finding it each time. A window left empty
    /// stays until it closes (or [`ByWindow::remove`] empties it).
    pub fn window_mut(&mut self, window: i64) -> &mut WindowKeys<V> {
        let capacity = self.capacity_hint;
        self.windows
            .entry(window)
            .or_insert_with(|| WindowKeys::with_capacity_and_hasher(capacity, Default::default()))
    }

    /// Key `key`'s value in window `window`, made with `make` if it has
    /// none.
    pub fn get_or_insert_with(
        &mut self,
        window: i64,
        key: &Arc<[u8]>,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        self.window_mut(window)
            .entry(key.clone())
            .or_insert_with(make)
    }

    /// Removes `key` from window `window`; the window goes with its last
    /// key.
    pub fn remove(&mut self, window: i64, key: &[u8]) -> Option<V> {
        let keys = self.windows.get_mut(&window)?;
        let removed = keys.remove(key);
        if keys.is_empty() {
            self.windows.remove(&window);
        }
        removed
    }

    /// Takes the windows ending at or before `end` (never [`NO_WINDOW`]).
    pub fn take_closed(&mut self, end: i64) -> BTreeMap<i64, WindowKeys<V>> {
        let open = self.windows.split_off(&end.saturating_add(1));
        let closed = std::mem::replace(&mut self.windows, open);
        if let Some(largest) = closed.values().map(|keys| keys.len()).max() {
            self.capacity_hint = largest;
        }
        closed
    }

    /// The number of keys held (a sum over the open windows).
    pub fn len(&self) -> usize {
        self.windows.values().map(|keys| keys.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.values().all(|keys| keys.is_empty())
    }

    /// Every key: its window end, the key, its value.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Arc<[u8]>, &V)> {
        self.windows
            .iter()
            .flat_map(|(&window, keys)| keys.iter().map(move |(key, value)| (window, key, value)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.windows.values().flat_map(|keys| keys.values())
    }

    pub fn clear(&mut self) {
        self.windows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: &[u8]) -> Arc<[u8]> {
        Arc::from(bytes)
    }

    #[test]
    fn closed_windows_go_whole_and_no_window_stays() {
        let mut state: ByWindow<i64> = ByWindow::default();
        *state.get_or_insert_with(10, &key(b"a"), || 0) += 1;
        *state.get_or_insert_with(10, &key(b"a"), || 0) += 1;
        *state.get_or_insert_with(20, &key(b"a"), || 0) += 5;
        state.window_mut(20).insert(key(b"b"), 7);
        *state.get_or_insert_with(NO_WINDOW, &key(b"c"), || 0) += 9;
        assert_eq!(state.len(), 4);
        assert_eq!(state.get(10, b"a"), Some(&2));
        assert_eq!(state.get(20, b"a"), Some(&5));
        assert_eq!(state.get(30, b"a"), None);

        let closed = state.take_closed(10);
        assert_eq!(closed.keys().copied().collect::<Vec<_>>(), vec![10]);
        assert_eq!(state.len(), 3);
        assert_eq!(state.get(10, b"a"), None);

        // Removing a window's last key removes the window.
        assert_eq!(state.remove(20, b"a"), Some(5));
        assert_eq!(state.remove(20, b"b"), Some(7));
        assert_eq!(state.remove(20, b"b"), None);
        assert_eq!(state.windows.len(), 1);

        // Even the latest watermark leaves NO_WINDOW.
        assert!(state.take_closed(i64::MAX).is_empty());
        assert!(state.take_closed(i64::MAX - 1).is_empty());
        let all: Vec<_> = state.iter().map(|(w, k, v)| (w, k.to_vec(), *v)).collect();
        assert_eq!(all, vec![(NO_WINDOW, b"c".to_vec(), 9)]);
        state.clear();
        assert!(state.is_empty());
    }
}
