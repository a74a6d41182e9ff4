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
//! State that does not fit in memory ([`super::memory`]) spills: values
//! of a [`SpillValue`] type can be moved to a *cold* [`StateTable`] (sorted
//! runs in a scratch directory) by [`ByWindow::evict`], keyed by window end
//! then key, so that a closed window's cold keys are one range. A cold key
//! is moved back to memory by [`ByWindow::load`] before it is read or
//! changed; [`ByWindow::take_closed`] and the checkpoint capture read cold
//! keys where they are.
//!
//! Invariants:
//! - a key is held under at most one window end (the end is part of the
//!   key of every windowed operator, so its bytes imply it);
//! - a key is in memory or cold, never both.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};

use super::checkpoint::StateDelta;
use super::codec::Encoder;
use super::table::StateTable;
use super::{Changed, KeyMap};
use crate::error::Result;

/// What a value costs in memory beyond its own bytes: its key's `Arc`, the
/// hash table's slot and the allocator's rounding.
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// Runs a cold table keeps at most (lookups consult each one's Bloom
/// filter; merging more often rewrites more).
const COLD_RUNS: usize = 16;
/// Bytes of evicted entries the cold table holds before it writes them.
const EVICT_PIECE_BYTES: usize = 16 << 20;
/// Cold entries a whole capture reads into memory at a time.
const COLD_PIECE: usize = 4096;
/// Entries sampled to estimate the bytes of an average one.
const SIZE_SAMPLE: usize = 64;

/// A value that can be written to disk and read back (operator state that
/// spills).
pub trait SpillValue: Sized {
    /// Writes the value as checkpoints store it.
    fn encode(&self, out: &mut Encoder);
    /// Reads back what [`SpillValue::encode`] wrote, for key `key`.
    fn decode(key: &Arc<[u8]>, bytes: &[u8]) -> Result<Self>;
    /// Bytes the value holds in memory (an estimate: it steers spilling).
    fn memory_bytes(&self) -> usize;
}

/// The cold key of `key` in window `window`: the window end, ordered as
/// signed numbers, then the key.
fn cold_key(window: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&((window as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The window end and key of a cold key.
fn split_cold_key(cold: &[u8]) -> Result<(i64, &[u8])> {
    if cold.len() < 8 {
        return Err(crate::internal!("a spilled key of {} bytes", cold.len()));
    }
    let window = u64::from_be_bytes(cold[..8].try_into().expect("8 bytes")) ^ (1 << 63);
    Ok((window as i64, &cold[8..]))
}

/// A cold entry read back: its window end, key and value.
fn decode_cold<V: SpillValue>(cold_key: &[u8], bytes: &[u8]) -> Result<WindowEntry<V>> {
    let (window, key) = split_cold_key(cold_key)?;
    let key: Arc<[u8]> = Arc::from(key);
    let value = V::decode(&key, bytes)?;
    Ok((window, key, value))
}

/// Keys spilled to disk.
#[derive(Debug)]
struct Cold {
    table: StateTable,
    /// How many keys are cold.
    keys: usize,
}

/// What a spillable state holds, in memory and on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillStats {
    /// Estimated bytes in memory.
    pub memory_bytes: usize,
    /// Keys on disk, and the bytes of their runs.
    pub cold_keys: u64,
    pub disk_bytes: u64,
    /// Lookups that went to disk, and those that found the key there.
    pub disk_reads: u64,
    pub disk_hits: u64,
}

impl SpillStats {
    /// Adds another part's figures (the shards of one operator).
    pub fn add(&mut self, other: &SpillStats) {
        self.memory_bytes += other.memory_bytes;
        self.cold_keys += other.cold_keys;
        self.disk_bytes += other.disk_bytes;
        self.disk_reads += other.disk_reads;
        self.disk_hits += other.disk_hits;
    }
}

/// The window end of state outside any window. Never closed.
pub const NO_WINDOW: i64 = i64::MAX;

/// The window end (µs) of each row of a `window_end` column (of any
/// timestamp type); [`NO_WINDOW`] where it is NULL.
pub fn window_ends(column: &ArrayRef) -> Result<Vec<i64>> {
    let ends = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let ends = ends.as_primitive::<TimestampMicrosecondType>();
    Ok(ends.iter().map(|end| end.unwrap_or(NO_WINDOW)).collect())
}

/// A key with its window end and value.
pub type WindowEntry<V> = (i64, Arc<[u8]>, V);

/// One window's state: by encoded key.
pub type WindowKeys<V> = KeyMap<Arc<[u8]>, Held<V>>;

/// A value in memory and its second-chance bit: set whenever the value is
/// read or changed through it, cleared as an eviction passes it over, so
/// that an eviction moves keys untouched since the last one first (hot
/// keys stay in memory).
#[derive(Debug)]
pub struct Held<V> {
    value: V,
    recent: std::cell::Cell<bool>,
}

impl<V> Held<V> {
    pub fn new(value: V) -> Self {
        Self {
            value,
            recent: std::cell::Cell::new(true),
        }
    }

    pub fn into_inner(self) -> V {
        self.value
    }
}

impl<V> std::ops::Deref for Held<V> {
    type Target = V;

    fn deref(&self) -> &V {
        self.recent.set(true);
        &self.value
    }
}

impl<V> std::ops::DerefMut for Held<V> {
    fn deref_mut(&mut self) -> &mut V {
        self.recent.set(true);
        &mut self.value
    }
}

/// State by window end, then by encoded key.
#[derive(Debug)]
pub struct ByWindow<V> {
    windows: BTreeMap<i64, WindowKeys<V>>,
    /// Keys of the largest window closed last: a new window's map is made
    /// this large (windows of a stream hold alike numbers of keys), so
    /// that it does not grow by rehashing from nothing.
    capacity_hint: usize,
    /// Keys spilled to disk (`None` until the first eviction).
    cold: Option<Cold>,
    /// Lookups that went to disk, and those that found the key there.
    disk_reads: u64,
    disk_hits: u64,
}

impl<V> Default for ByWindow<V> {
    fn default() -> Self {
        Self {
            windows: BTreeMap::new(),
            capacity_hint: 0,
            cold: None,
            disk_reads: 0,
            disk_hits: 0,
        }
    }
}

impl<V> ByWindow<V> {
    pub fn get(&self, window: i64, key: &[u8]) -> Option<&V> {
        Some(self.windows.get(&window)?.get(key)?)
    }

    pub fn get_mut(&mut self, window: i64, key: &[u8]) -> Option<&mut V> {
        Some(self.windows.get_mut(&window)?.get_mut(key)?)
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
            .or_insert_with(|| Held::new(make()))
    }

    /// Removes `key` from window `window`; the window goes with its last
    /// key.
    pub fn remove(&mut self, window: i64, key: &[u8]) -> Option<V> {
        let keys = self.windows.get_mut(&window)?;
        let removed = keys.remove(key);
        if keys.is_empty() {
            self.windows.remove(&window);
        }
        removed.map(Held::into_inner)
    }

    /// Takes the windows ending at or before `end` (never [`NO_WINDOW`])
    /// that are in memory ([`ByWindow::take_closed_loading`] takes their
    /// cold keys too).
    fn take_closed(&mut self, end: i64) -> BTreeMap<i64, WindowKeys<V>> {
        let open = self.windows.split_off(&end.saturating_add(1));
        let closed = std::mem::replace(&mut self.windows, open);
        if let Some(largest) = closed.values().map(|keys| keys.len()).max() {
            self.capacity_hint = largest;
        }
        closed
    }

    /// The number of keys held, in memory and cold.
    pub fn len(&self) -> usize {
        let cold = self.cold.as_ref().map_or(0, |c| c.keys);
        self.windows.values().map(|keys| keys.len()).sum::<usize>() + cold
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key in memory: its window end, the key, its value (cold keys
    /// are not among them).
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Arc<[u8]>, &V)> {
        self.windows.iter().flat_map(|(&window, keys)| {
            keys.iter()
                .map(move |(key, held)| (window, key, &held.value))
        })
    }

    /// The values in memory.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.windows
            .values()
            .flat_map(|keys| keys.values().map(|held| &held.value))
    }

    pub fn clear(&mut self) {
        self.windows.clear();
        self.cold = None;
    }
}

impl<V: SpillValue> ByWindow<V> {
    /// Moves key `key` of window `window` back to memory if it is cold;
    /// returns whether it was. Call before reading or changing a key (a
    /// key in memory, or state with nothing cold, costs a lookup).
    pub fn load(&mut self, window: i64, key: &[u8]) -> Result<bool> {
        if !self.has_cold() || self.get(window, key).is_some() {
            return Ok(false);
        }
        let Some(cold) = &mut self.cold else {
            return Ok(false);
        };
        self.disk_reads += 1;
        let Some(bytes) = cold.table.take(&cold_key(window, key))? else {
            return Ok(false);
        };
        cold.keys = cold.keys.saturating_sub(1);
        self.disk_hits += 1;
        let key: Arc<[u8]> = Arc::from(key);
        let value = V::decode(&key, &bytes)?;
        self.window_mut(window).insert(key, Held::new(value));
        Ok(true)
    }

    /// The value of cold key `key` of window `window`, read without moving
    /// it to memory.
    pub fn peek_cold(&self, window: i64, key: &[u8]) -> Result<Option<V>> {
        match self.peek_cold_bytes(window, key)? {
            Some(bytes) => Ok(Some(V::decode(&Arc::from(key), &bytes)?)),
            None => Ok(None),
        }
    }

    /// What [`Self::peek_cold`] decodes: the value as it is on disk.
    fn peek_cold_bytes(&self, window: i64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match &self.cold {
            Some(cold) => cold.table.peek(&cold_key(window, key)),
            None => Ok(None),
        }
    }

    /// Calls `f` with every cold key's window end, key and value, read
    /// without moving them to memory, a piece at a time (a whole capture).
    pub fn for_each_cold(&self, mut f: impl FnMut(WindowEntry<V>) -> Result<()>) -> Result<()> {
        self.for_each_cold_bytes(|cold_key, bytes| f(decode_cold(cold_key, bytes)?))
    }

    /// [`Self::for_each_cold`] with the cold table's keys and values as
    /// they are on disk.
    fn for_each_cold_bytes(&self, f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        match &self.cold {
            Some(cold) => cold
                .table
                .for_each_in(Bound::Unbounded, Bound::Unbounded, COLD_PIECE, f),
            None => Ok(()),
        }
    }

    /// Whether any key is cold (lookups that miss memory must [`Self::load`]).
    pub fn has_cold(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| c.keys > 0)
    }

    /// Takes the windows ending at or before `end` (never [`NO_WINDOW`]),
    /// their cold keys read back.
    pub fn take_closed_loading(&mut self, end: i64) -> Result<BTreeMap<i64, WindowKeys<V>>> {
        let mut closed = self.take_closed(end);
        let Some(cold) = &mut self.cold else {
            return Ok(closed);
        };
        let first = cold_key(i64::MIN, &[]);
        let past = cold_key(end.saturating_add(1), &[]);
        let entries = cold
            .table
            .range(Bound::Included(&first), Bound::Excluded(&past))?;
        for (cold_key, bytes) in &entries {
            let (window, key, value) = decode_cold(cold_key, bytes)?;
            closed
                .entry(window)
                .or_default()
                .insert(key, Held::new(value));
        }
        cold.keys = cold.keys.saturating_sub(entries.len());
        cold.table.delete_range(&first, &past);
        Ok(closed)
    }

    /// Estimated bytes in memory: the keys held times the average of a
    /// sample of them.
    pub fn memory_bytes(&self) -> usize {
        let held: usize = self.windows.values().map(|keys| keys.len()).sum();
        if held == 0 {
            return 0;
        }
        let sample: Vec<usize> = self
            .windows
            .values()
            .rev()
            .flat_map(|keys| keys.iter())
            .take(SIZE_SAMPLE)
            .map(|(key, held)| key.len() + held.value.memory_bytes() + ENTRY_OVERHEAD_BYTES)
            .collect();
        held * sample.iter().sum::<usize>() / sample.len().max(1)
    }

    /// [`Self::spill_stats`], counting in memory also `changed` (the keys
    /// changed since the last capture, which stay there).
    pub fn spill_stats_beside<K: Eq + std::hash::Hash>(&self, changed: &Changed<K>) -> SpillStats {
        let mut stats = self.spill_stats();
        stats.memory_bytes += changed.memory_bytes();
        stats
    }

    /// [`Self::evict`] to what `target_bytes` leaves beside `changed`.
    pub fn evict_beside<K: Eq + std::hash::Hash>(
        &mut self,
        target_bytes: usize,
        changed: &Changed<K>,
    ) -> Result<()> {
        self.evict(target_bytes.saturating_sub(changed.memory_bytes()))
    }

    /// What is held in memory and on disk.
    pub fn spill_stats(&self) -> SpillStats {
        SpillStats {
            memory_bytes: self.memory_bytes(),
            cold_keys: self.cold.as_ref().map_or(0, |c| c.keys as u64),
            disk_bytes: self.cold.as_ref().map_or(0, |c| c.table.disk_bytes()),
            disk_reads: self.disk_reads,
            disk_hits: self.disk_hits,
        }
    }

    /// Moves keys to disk until about `target_bytes` stay in memory: keys
    /// not read or changed since the last eviction first ([`Held`]), of
    /// the oldest windows first; then others, in the same order.
    pub fn evict(&mut self, target_bytes: usize) -> Result<()> {
        let held = self.memory_bytes();
        if held <= target_bytes {
            return Ok(());
        }
        let keys: usize = self.windows.values().map(|keys| keys.len()).sum();
        let per_key = (held / keys.max(1)).max(1);
        let mut to_move = (held - target_bytes).div_ceil(per_key);
        if self.cold.is_none() {
            self.cold = Some(Cold {
                table: StateTable::new(super::memory::scratch_store()?),
                keys: 0,
            });
        }
        let cold = self.cold.as_mut().expect("made above");
        let mut out = Encoder::new();
        // Written out a piece at a time: the cold table's memory never
        // holds much of what moves.
        let mut unflushed = 0;
        // First keys untouched since the last eviction (clearing the bits
        // of those passed over), oldest windows first; then any.
        for any in [false, true] {
            for (&window, keys) in self.windows.iter_mut() {
                if to_move == 0 {
                    break;
                }
                let chosen: Vec<Arc<[u8]>> = keys
                    .iter()
                    .filter(|(_, held)| any || !held.recent.replace(false))
                    .map(|(key, _)| key.clone())
                    .take(to_move)
                    .collect();
                for key in chosen {
                    let held = keys.remove(&key).expect("a key just listed");
                    out.bytes.clear();
                    held.value.encode(&mut out);
                    drop(held);
                    cold.table.put(&cold_key(window, &key), &out.bytes);
                    unflushed += key.len() + out.bytes.len();
                    to_move -= 1;
                    cold.keys += 1;
                    if unflushed >= EVICT_PIECE_BYTES {
                        cold.table.evict(0)?;
                        unflushed = 0;
                    }
                }
                // A map emptied to a quarter gives its slots back.
                if keys.len() <= keys.capacity() / 4 {
                    keys.shrink_to_fit();
                }
            }
        }
        self.windows.retain(|_, keys| !keys.is_empty());
        // Written out as a run, and merged now and then: the cold table's
        // memory holds nothing but what changed since.
        cold.table.evict(0)?;
        cold.table.compact(COLD_RUNS)?;
        Ok(())
    }

    /// Adds the state changed since the last capture to `delta` (all of it
    /// when the delta is full): values in memory encoded, cold ones as they
    /// are on disk, a changed key held nowhere as a delete. `changed`
    /// starts over.
    pub fn capture(
        &self,
        delta: &mut StateDelta,
        changed: &mut Changed<(i64, Arc<[u8]>)>,
    ) -> Result<()> {
        let encode = |delta: &mut StateDelta, key: &[u8], value: &V| {
            delta.put_with(
                |k| {
                    k.raw(key);
                },
                |v| value.encode(v),
            );
        };
        delta.try_put_changed_with(
            changed,
            |delta| {
                for (_, key, value) in self.iter() {
                    encode(delta, key, value);
                }
                self.for_each_cold_bytes(|cold_key, bytes| {
                    delta.put(split_cold_key(cold_key)?.1, bytes);
                    Ok(())
                })
            },
            |delta, (window, key)| {
                match self.get(*window, key) {
                    Some(value) => encode(delta, key, value),
                    None => match self.peek_cold_bytes(*window, key)? {
                        Some(bytes) => delta.put(key, bytes),
                        None => delta.delete(key),
                    },
                }
                Ok(())
            },
        )
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
        state.window_mut(20).insert(key(b"b"), Held::new(7));
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

    impl SpillValue for i64 {
        fn encode(&self, out: &mut Encoder) {
            out.i64(*self);
        }

        fn decode(_key: &Arc<[u8]>, bytes: &[u8]) -> Result<Self> {
            super::super::codec::Decoder::new(bytes).i64()
        }

        fn memory_bytes(&self) -> usize {
            8
        }
    }

    /// An eviction moves keys untouched since the previous one first: keys
    /// read or changed in between (or loaded back) stay in memory.
    #[test]
    fn eviction_keeps_keys_touched_since_the_last_one() {
        let mut state: ByWindow<i64> = ByWindow::default();
        let keys: Vec<Arc<[u8]>> = (0..100u32).map(|k| key(&k.to_be_bytes())).collect();
        for (value, k) in keys.iter().enumerate() {
            *state.get_or_insert_with(NO_WINDOW, k, || 0) += value as i64;
        }
        let per_key = state.memory_bytes() / 100;
        state.evict(per_key * 50).unwrap();
        assert_eq!(state.spill_stats().cold_keys, 50);
        // Twenty keys are used: read, changed, or loaded back from disk.
        let hot = &keys[..20];
        for (i, k) in hot.iter().enumerate() {
            state.load(NO_WINDOW, k).unwrap();
            match i % 2 {
                0 => *state.get_mut(NO_WINDOW, k).unwrap() += 1,
                _ => assert!(state.get(NO_WINDOW, k).is_some()),
            }
        }
        state.evict(per_key * 20).unwrap();
        for k in hot {
            assert!(
                state.windows[&NO_WINDOW].contains_key(k),
                "a used key went to disk"
            );
        }
        let in_memory = state.windows[&NO_WINDOW].len();
        assert!(in_memory <= 21, "{in_memory} keys in memory");
        assert_eq!(state.len(), 100);
    }
}
