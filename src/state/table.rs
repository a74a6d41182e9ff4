//! State tables: keyed state held in memory while it fits and in sorted runs
//! on disk ([`super::run`]) when it does not.
//!
//! A [`StateTable`] maps byte keys to byte values, ordered by key, with
//! point lookups, range and prefix scans, point deletes and range deletes
//! (a closed window is one). It keeps:
//!
//! - **memory**: a `BTreeMap` of slots. A slot is *dirty* when it changed
//!   since the last flush (a put, or a delete that older runs must see), and
//!   *clean* when a run holds the same (a value read back from disk, or one
//!   flushed since);
//! - **runs**: immutable sorted runs, oldest first, each hiding what older
//!   ones say about the keys it has and the ranges it deleted.
//!
//! [`StateTable::flush`] writes every dirty slot and range delete as one new
//! run: that is both how a checkpoint captures the table (the run is the
//! checkpoint's file for it, written once) and how memory is made free
//! ([`StateTable::evict`] drops clean slots, flushing first when too few
//! are clean). A lookup that misses memory reads the runs, newest first,
//! and keeps what it found as a clean slot. [`StateTable::compact`] merges
//! the newest runs while they are as large as the next older one
//! (size-tiered), so a table has O(log n) runs and an entry is rewritten
//! O(log n) times, never the whole table at every checkpoint.
//!
//! Invariants:
//! - The table's content is: memory's slot for a key if there is one; else,
//!   if a pending range delete covers the key, nothing; else what the
//!   newest run that mentions the key (an entry, or a tombstone covering
//!   it) says; else nothing.
//! - While `complete`, memory holds every live entry and the runs need not
//!   be read (a table that never spilled reads no disk).
//! - Runs are never changed or deleted here: a checkpoint may still name a
//!   run a merge replaced. Deleting unreferenced files is the owner's job.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::run::{covered, merge_ranges, Lookup, Run, RunEntry, RunRange, RunWriter};
use crate::error::{EddyError, Result};

/// Entries (key, value) read in key order, a piece at a time.
pub type Piece = Vec<(Vec<u8>, Vec<u8>)>;

/// Memory a slot costs beyond its key and value bytes: the map's node
/// share, two vector headers and the allocator's rounding.
pub const SLOT_OVERHEAD_BYTES: usize = 96;
/// The bytes of entries a piecewise read ([`StateTable::for_each_in`])
/// holds at a time, whatever the count asked for (a view's logged rows
/// are entries of a MiB each).
pub const PIECE_BYTES: usize = 8 << 20;

/// Where state tables write their runs, and the numbers runs are named by.
#[derive(Debug)]
pub struct RunStore {
    dir: PathBuf,
    next_id: AtomicU64,
    /// A scratch store: runs are not synced, and the directory goes with
    /// the store.
    scratch: bool,
}

impl Drop for RunStore {
    fn drop(&mut self) {
        if self.scratch {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl RunStore {
    /// Opens (creating) `dir`; new runs are numbered after any already in it.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir).map_err(|e| {
            EddyError::Checkpoint(format!(
                "cannot create state directory {}: {e}",
                dir.display()
            ))
        })?;
        let listing = std::fs::read_dir(dir).map_err(|e| {
            EddyError::Checkpoint(format!(
                "cannot list state directory {}: {e}",
                dir.display()
            ))
        })?;
        let last = listing
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                name.to_str()?.strip_suffix(".run")?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0);
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            next_id: AtomicU64::new(last + 1),
            scratch: false,
        }))
    }

    /// A store for runs that need not survive the process (spilled state):
    /// `dir` is made empty, runs are written without syncing, and the
    /// directory is removed with the store.
    pub fn scratch(dir: &Path) -> Result<Arc<Self>> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| {
            EddyError::Checkpoint(format!(
                "cannot create spill directory {}: {e}",
                dir.display()
            ))
        })?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            next_id: AtomicU64::new(1),
            scratch: true,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of run `id`.
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.run"))
    }

    /// Starts a new run; returns its id and writer.
    pub fn create(&self) -> Result<(u64, RunWriter)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let writer = RunWriter::create(&self.path(id))?;
        Ok((
            id,
            if self.scratch {
                writer.scratch()
            } else {
                writer
            },
        ))
    }

    /// Opens run `id` (one a checkpoint named).
    pub fn open_run(&self, id: u64) -> Result<Arc<Run>> {
        Ok(Arc::new(Run::open(id, &self.path(id))?))
    }
}

/// One key's slot in memory.
#[derive(Debug)]
struct Slot {
    /// `None`: deleted (a tombstone older runs must see; always dirty).
    value: Option<Vec<u8>>,
    dirty: bool,
    /// Read since the eviction clock last passed (second chance).
    referenced: bool,
}

/// What a state table counted, for `eddy_catalog` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Lookups, and those memory answered.
    pub gets: u64,
    pub memory_hits: u64,
    /// Slots dropped from memory (their data stays in runs).
    pub evicted: u64,
    /// Runs written by flushes, and by merges.
    pub runs_flushed: u64,
    pub runs_merged: u64,
}

/// One keyed state table; see the module docs.
#[derive(Debug)]
pub struct StateTable {
    /// Where flushes and merges write (`None`: read only).
    store: Option<Arc<RunStore>>,
    memory: BTreeMap<Vec<u8>, Slot>,
    memory_bytes: usize,
    /// Keys that became dirty since the last flush (each once).
    dirty: Vec<Vec<u8>>,
    /// Ranges deleted since the last flush, over what the runs hold
    /// (sorted, not overlapping).
    range_deletes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Oldest first.
    runs: Vec<Arc<Run>>,
    complete: bool,
    /// Where the eviction clock stopped.
    clock_hand: Option<Vec<u8>>,
    stats: TableStats,
}

fn slot_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + SLOT_OVERHEAD_BYTES
}

impl StateTable {
    /// An empty table writing its runs to `store`.
    pub fn new(store: Arc<RunStore>) -> Self {
        Self::over(Some(store), Vec::new())
    }

    /// Reads `runs` (oldest first) and writes nothing: flushes, evictions
    /// and merges are refused.
    pub fn read_only(runs: Vec<Arc<Run>>) -> Self {
        Self::over(None, runs)
    }

    /// A table as a checkpoint left it: its runs, oldest first, read on
    /// demand (nothing is loaded here).
    pub fn open(store: Arc<RunStore>, runs: Vec<Arc<Run>>) -> Self {
        Self::over(Some(store), runs)
    }

    /// Nothing in memory over `runs`.
    fn over(store: Option<Arc<RunStore>>, runs: Vec<Arc<Run>>) -> Self {
        Self {
            store,
            memory: BTreeMap::new(),
            memory_bytes: 0,
            dirty: Vec::new(),
            range_deletes: Vec::new(),
            complete: runs.is_empty(),
            runs,
            clock_hand: None,
            stats: TableStats::default(),
        }
    }

    fn store(&self) -> Result<&Arc<RunStore>> {
        self.store
            .as_ref()
            .ok_or_else(|| crate::internal!("a read-only state table cannot write runs"))
    }

    /// Bytes held in memory (keys, values, per-slot overhead).
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Bytes of the runs the table reads.
    pub fn disk_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.file_bytes()).sum()
    }

    /// The runs, oldest first (what a checkpoint names after a flush).
    pub fn runs(&self) -> &[Arc<Run>] {
        &self.runs
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Whether memory holds every live entry.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether the last flush holds everything (nothing to write).
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.range_deletes.is_empty()
    }

    /// Replaces `key`'s slot, keeping `memory_bytes` and the dirty list.
    fn set_slot(&mut self, key: &[u8], value: Option<Vec<u8>>, dirty: bool) {
        let bytes = slot_bytes(key, value.as_deref());
        match self.memory.get_mut(key) {
            Some(slot) => {
                self.memory_bytes -= slot_bytes(key, slot.value.as_deref());
                if dirty && !slot.dirty {
                    self.dirty.push(key.to_vec());
                }
                slot.value = value;
                slot.dirty |= dirty;
                slot.referenced = true;
            }
            None => {
                if dirty {
                    self.dirty.push(key.to_vec());
                }
                self.memory.insert(
                    key.to_vec(),
                    Slot {
                        value,
                        dirty,
                        referenced: true,
                    },
                );
            }
        }
        self.memory_bytes += bytes;
    }

    /// Removes `key`'s slot from memory, if any.
    fn drop_slot(&mut self, key: &[u8]) {
        if let Some(slot) = self.memory.remove(key) {
            self.memory_bytes -= slot_bytes(key, slot.value.as_deref());
        }
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.set_slot(key, Some(value.to_vec()), true);
    }

    pub fn delete(&mut self, key: &[u8]) {
        if self.runs.is_empty() {
            // Nothing older to hide: the key just goes.
            self.drop_slot(key);
        } else {
            self.set_slot(key, None, true);
        }
    }

    /// Deletes every key in `[start, end)`.
    pub fn delete_range(&mut self, start: &[u8], end: &[u8]) {
        if start >= end {
            return;
        }
        let mut from_start = self.memory.split_off(start);
        let mut after = from_start.split_off(end);
        self.memory.append(&mut after);
        for (key, slot) in &from_start {
            self.memory_bytes -= slot_bytes(key, slot.value.as_deref());
        }
        if !self.runs.is_empty() {
            // Kept sorted and merged: `covered` searches them.
            self.range_deletes.push((start.to_vec(), end.to_vec()));
            self.range_deletes = merge_ranges(std::mem::take(&mut self.range_deletes));
        }
    }

    /// The value of `key`, read from the runs (and kept in memory) when
    /// memory does not have it.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<&[u8]>> {
        self.stats.gets += 1;
        if self.memory.contains_key(key) {
            self.stats.memory_hits += 1;
        } else {
            if self.complete || covered(&self.range_deletes, key) {
                return Ok(None);
            }
            match self.read_runs(key)? {
                Some(value) => self.set_slot(key, Some(value), false),
                None => return Ok(None),
            }
        }
        let slot = self.memory.get_mut(key).expect("a slot just checked");
        slot.referenced = true;
        Ok(slot.value.as_deref())
    }

    /// The value of `key` without keeping it in memory (for reading state
    /// that is not to be changed).
    pub fn peek(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(slot) = self.memory.get(key) {
            return Ok(slot.value.clone());
        }
        if self.complete || covered(&self.range_deletes, key) {
            return Ok(None);
        }
        self.read_runs(key)
    }

    /// Removes `key` and returns its value (an entry moving back to
    /// memory elsewhere).
    pub fn take(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.stats.gets += 1;
        let value = self.peek(key)?;
        if value.is_some() {
            self.delete(key);
        }
        Ok(value)
    }

    /// What the runs say about `key`, newest first.
    fn read_runs(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for run in self.runs.iter().rev() {
            match run.get(key)? {
                Lookup::Put(value) => return Ok(Some(value)),
                Lookup::Deleted => return Ok(None),
                Lookup::Absent => {}
            }
        }
        Ok(None)
    }

    /// The live entries with keys in `[start, end)`, in key order.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.range_up_to(start, end, usize::MAX)?.0)
    }

    /// Calls `f` with the live entries in `[start, end)` in key order,
    /// reading at most `piece` of them (and about [`PIECE_BYTES`]) into
    /// memory at a time.
    pub fn for_each_in(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        piece: usize,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.for_each_piece_in(start, end, piece, |entries| {
            entries.iter().try_for_each(|(key, value)| f(key, value))
        })
    }

    /// [`Self::for_each_in`] handing over each piece as read (owned, for a
    /// caller that keeps the entries).
    pub fn for_each_piece_in(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        piece: usize,
        mut f: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        let piece = piece.max(1);
        let (mut entries, mut more) = self.range_up_to(start, end, piece)?;
        loop {
            let last = entries.last().filter(|_| more).map(|(key, _)| key.clone());
            if !entries.is_empty() {
                f(entries)?;
            }
            let Some(last) = last else {
                return Ok(());
            };
            (entries, more) = self.range_up_to(Bound::Excluded(&last), end, piece)?;
        }
    }

    /// The first `limit` live entries of [`Self::range`], fewer once they
    /// hold [`PIECE_BYTES`]; and whether it stopped before the end.
    fn range_up_to(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<(Piece, bool)> {
        let memory = self
            .memory
            .range::<[u8], _>((start, end))
            .map(|(k, slot)| Ok((k.clone(), slot.value.clone())));
        let mut sources: Vec<Source> = vec![Source::new(Box::new(memory))?];
        if !self.complete {
            for run in self.runs.iter().rev() {
                let entries: RunRange = run.range(start, end);
                sources.push(Source::new(Box::new(entries))?);
            }
        }
        let mut merge = Merge { sources };
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some((key, decider, value)) = merge.next_key()? {
            let Some(value) = value else { continue };
            // Source 0 is memory; source d > 0 is the d-th newest run, and
            // the range deletes of everything newer may hide its entry.
            let hidden = decider > 0
                && (covered(&self.range_deletes, &key)
                    || self
                        .runs
                        .iter()
                        .rev()
                        .take(decider - 1)
                        .any(|r| r.covers(&key)));
            if !hidden {
                bytes += key.len() + value.len();
                out.push((key, value));
                if out.len() == limit || (limit != usize::MAX && bytes >= PIECE_BYTES) {
                    return Ok((out, true));
                }
            }
        }
        Ok((out, false))
    }

    /// The live entries whose keys start with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match prefix_end(prefix) {
            Some(end) => self.range(Bound::Included(prefix), Bound::Excluded(&end)),
            None => self.range(Bound::Included(prefix), Bound::Unbounded),
        }
    }

    /// Writes every change since the last flush as one new run (none when
    /// there is none) and marks memory clean; returns the run.
    pub fn flush(&mut self) -> Result<Option<Arc<Run>>> {
        if self.is_clean() {
            return Ok(None);
        }
        let (id, mut writer) = self.store()?.create()?;
        let mut dirty = std::mem::take(&mut self.dirty);
        // Most of memory changed (a table filled since the last flush): one
        // walk in key order beats sorting the changed keys and looking each
        // one up.
        let walk = dirty.len() * 4 >= self.memory.len();
        if !walk {
            dirty.sort_unstable();
            // A key deleted (or range-deleted) and put again is listed twice.
            dirty.dedup();
        }
        let written = if walk {
            self.memory
                .iter()
                .filter(|(_, slot)| slot.dirty)
                .try_for_each(|(key, slot)| writer.add(key, slot.value.as_deref()))
        } else {
            dirty.iter().try_for_each(|key| match self.memory.get(key) {
                Some(slot) => writer.add(key, slot.value.as_deref()),
                // Dirty, then gone in a range delete: the tombstone says so.
                None => Ok(()),
            })
        };
        let range_deletes = std::mem::take(&mut self.range_deletes);
        for (start, end) in &range_deletes {
            writer.delete_range(start, end);
        }
        let run = match written.and_then(|()| writer.finish(id)) {
            Ok(run) => Arc::new(run),
            Err(e) => {
                // Nothing changed: the next flush tries the same again.
                self.dirty = dirty;
                self.range_deletes = range_deletes;
                return Err(e);
            }
        };
        if walk {
            for slot in self.memory.values_mut() {
                slot.dirty = false;
            }
            // The run holds the deletes now.
            let mut freed = 0;
            self.memory.retain(|key, slot| {
                let keep = slot.value.is_some();
                if !keep {
                    freed += slot_bytes(key, None);
                }
                keep
            });
            self.memory_bytes -= freed;
        } else {
            for key in &dirty {
                let tombstone = match self.memory.get_mut(key.as_slice()) {
                    Some(slot) => {
                        slot.dirty = false;
                        slot.value.is_none()
                    }
                    None => false,
                };
                if tombstone {
                    // The run holds the delete now.
                    self.drop_slot(key);
                }
            }
        }
        self.runs.push(run.clone());
        self.stats.runs_flushed += 1;
        Ok(Some(run))
    }

    /// Drops clean slots, least recently read first (a clock: a slot read
    /// since the clock last passed gets a second chance), until memory is
    /// at most `target_bytes`; flushes first when clean slots are too few.
    pub fn evict(&mut self, target_bytes: usize) -> Result<()> {
        if self.memory_bytes <= target_bytes {
            return Ok(());
        }
        self.sweep(target_bytes);
        if self.memory_bytes > target_bytes {
            self.flush()?;
            self.sweep(target_bytes);
        }
        Ok(())
    }

    /// Two turns of the clock at most (the first may only clear marks),
    /// starting where the last sweep stopped.
    fn sweep(&mut self, target_bytes: usize) {
        for _turn in 0..2 {
            let mut excess = self.memory_bytes.saturating_sub(target_bytes);
            if excess == 0 {
                break;
            }
            let mut victims = Vec::new();
            let hand = self.clock_hand.take();
            let parts = match &hand {
                Some(hand) => [
                    (Bound::Excluded(hand.as_slice()), Bound::Unbounded),
                    (Bound::Unbounded, Bound::Included(hand.as_slice())),
                ],
                None => [(Bound::Unbounded, Bound::Unbounded); 2],
            };
            let parts = if hand.is_some() {
                &parts[..]
            } else {
                &parts[..1]
            };
            'clock: for &range in parts {
                for (key, slot) in self.memory.range_mut::<[u8], _>(range) {
                    if excess == 0 {
                        break 'clock;
                    }
                    if slot.dirty || std::mem::take(&mut slot.referenced) {
                        continue;
                    }
                    excess = excess.saturating_sub(slot_bytes(key, slot.value.as_deref()));
                    victims.push(key.clone());
                }
            }
            self.clock_hand = victims.last().cloned().or(hand);
            if !victims.is_empty() {
                self.complete = false;
            }
            self.stats.evicted += victims.len() as u64;
            for key in victims {
                self.drop_slot(&key);
            }
        }
    }

    /// Merges the newest runs while together they are at least as large as
    /// the next older one (all of them when more than `max_runs` would
    /// stay): a run is rewritten each time the data merged into it doubles.
    /// Returns whether it merged.
    pub fn compact(&mut self, max_runs: usize) -> Result<bool> {
        let sizes: Vec<u64> = self.runs.iter().map(|r| r.file_bytes()).collect();
        let Some(first) = pick_merge(&sizes, max_runs) else {
            return Ok(false);
        };
        let (id, writer) = self.store()?.create()?;
        let merged = Arc::new(merge_runs(&self.runs[first..], first == 0, writer, id)?);
        self.runs.truncate(first);
        self.runs.push(merged);
        self.stats.runs_merged += 1;
        Ok(true)
    }
}

/// Which runs to merge, given their sizes (oldest first): the newest run
/// and the older ones before it while each is of a size alike the group's
/// so far (from a quarter of it to twice it), so that merges join runs of
/// similar sizes: an entry is rewritten about once each time the data
/// around it doubles, and a large run is not rewritten to take in a few
/// small ones. All of them when more than `max_runs` would stay. Returns
/// the first of the runs to merge (the group goes to the newest), or
/// `None`.
pub fn pick_merge(sizes: &[u64], max_runs: usize) -> Option<usize> {
    let (&newest, older) = sizes.split_last()?;
    let mut group = newest;
    let mut first = sizes.len() - 1;
    for &size in older.iter().rev() {
        if size > group.saturating_mul(2) || size.saturating_mul(4) < group {
            break;
        }
        group += size;
        first -= 1;
    }
    if first + 1 > max_runs.max(1) {
        first = 0;
    }
    (sizes.len() - first >= 2).then_some(first)
}

/// Writes `group` (consecutive runs, oldest first) as one run through
/// `writer`. A group that starts with the oldest run (`bottom`) drops
/// deletes: nothing older is left for them to hide.
pub fn merge_runs(group: &[Arc<Run>], bottom: bool, mut writer: RunWriter, id: u64) -> Result<Run> {
    let sources = group
        .iter()
        .rev()
        .map(|run| Source::new(Box::new(run.range(Bound::Unbounded, Bound::Unbounded))))
        .collect::<Result<Vec<_>>>()?;
    let mut merge = Merge { sources };
    while let Some((key, decider, value)) = merge.next_key()? {
        // Hidden by a range delete of a newer run of the group. (It stays
        // hidden from runs older than the group by the group's tombstones,
        // kept below.)
        let hidden = group.iter().rev().take(decider).any(|r| r.covers(&key));
        match (hidden, value) {
            (true, _) => {}
            (false, Some(value)) => writer.add(&key, Some(&value))?,
            (false, None) if !bottom => writer.add(&key, None)?,
            (false, None) => {}
        }
    }
    if !bottom {
        let tombstones = group
            .iter()
            .flat_map(|r| r.tombstones().iter().cloned())
            .collect();
        for (start, end) in merge_ranges(tombstones) {
            writer.delete_range(&start, &end);
        }
    }
    writer.finish(id)
}

/// The first key after every key starting with `prefix` (`None`: no such
/// key, the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Sorted entries (deletes as `None`) read one at a time.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<RunEntry>> + 'a>;

/// Calls `f` with each key of `sources` (each sorted, without repeated
/// keys; newest first) once, in key order, with the newest source's value
/// (`None`: deleted there).
pub fn merge_newest_first(
    sources: Vec<Entries>,
    mut f: impl FnMut(&[u8], Option<&[u8]>) -> Result<()>,
) -> Result<()> {
    let sources = sources
        .into_iter()
        .map(Source::new)
        .collect::<Result<Vec<_>>>()?;
    let mut merge = Merge { sources };
    while let Some((key, _, value)) = merge.next_key()? {
        f(&key, value.as_deref())?;
    }
    Ok(())
}

/// One sorted input of a merge, with its next entry read ahead.
struct Source<'a> {
    entries: Entries<'a>,
    head: Option<RunEntry>,
}

impl<'a> Source<'a> {
    fn new(mut entries: Entries<'a>) -> Result<Self> {
        let head = entries.next().transpose()?;
        Ok(Self { entries, head })
    }

    /// Takes the head and reads the next entry.
    fn advance(&mut self) -> Result<Option<RunEntry>> {
        let next = self.entries.next().transpose()?;
        Ok(std::mem::replace(&mut self.head, next))
    }
}

/// A key, the index of the source that decides it, and its value there.
type Decided = (Vec<u8>, usize, Option<Vec<u8>>);

/// A merge of sorted sources, newest first.
struct Merge<'a> {
    sources: Vec<Source<'a>>,
}

impl Merge<'_> {
    /// The smallest key any source has left, the newest source that has
    /// it, and what that source says (`None`: deleted); every source moves
    /// past the key.
    fn next_key(&mut self) -> Result<Option<Decided>> {
        let Some(key) = self
            .sources
            .iter()
            .filter_map(|s| s.head.as_ref().map(|(k, _)| k))
            .min()
            .cloned()
        else {
            return Ok(None);
        };
        let mut decided: Option<(usize, Option<Vec<u8>>)> = None;
        for (i, source) in self.sources.iter_mut().enumerate() {
            if source.head.as_ref().is_some_and(|(k, _)| *k == key) {
                let (_, value) = source.advance()?.expect("a head");
                decided.get_or_insert((i, value));
            }
        }
        let (decider, value) = decided.expect("the smallest key has a source");
        Ok(Some((key, decider, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store(name: &str) -> Arc<RunStore> {
        let dir = std::env::temp_dir().join(format!("eddy-table-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        RunStore::open(&dir).unwrap()
    }

    /// Keys `[k / 8, k % 8]`: eight prefixes of eight keys.
    fn key(k: u8) -> Vec<u8> {
        vec![k / 8, k % 8]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, Vec<u8>),
        Delete(u8),
        DeleteRange(u8, u8),
        Get(u8),
        Range(u8, u8),
        Prefix(u8),
        Flush,
        Evict(usize),
        Compact(usize),
        Checkpoint,
        Restore,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..64u8, proptest::collection::vec(any::<u8>(), 0..24)).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0..64u8).prop_map(Op::Delete),
            1 => (0..=64u8, 0..=64u8).prop_map(|(a, b)| Op::DeleteRange(a.min(b), a.max(b))),
            3 => (0..64u8).prop_map(Op::Get),
            1 => (0..=64u8, 0..=64u8).prop_map(|(a, b)| Op::Range(a.min(b), a.max(b))),
            1 => (0..8u8).prop_map(Op::Prefix),
            1 => Just(Op::Flush),
            2 => (0..3000usize).prop_map(Op::Evict),
            1 => (1..4usize).prop_map(Op::Compact),
            1 => Just(Op::Checkpoint),
            1 => Just(Op::Restore),
        ]
    }

    fn range_key(k: u8) -> Vec<u8> {
        // 64 is past every key.
        if k == 64 {
            vec![8, 0]
        } else {
            key(k)
        }
    }

    fn check_memory_bytes(table: &StateTable) {
        let counted: usize = table
            .memory
            .iter()
            .map(|(k, s)| slot_bytes(k, s.value.as_deref()))
            .sum();
        assert_eq!(table.memory_bytes(), counted);
    }

    fn run_model(store: &Arc<RunStore>, ops: Vec<Op>) {
        let mut table = StateTable::new(store.clone());
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        // The runs and the model as of the last checkpoint.
        type Saved = (Vec<Arc<Run>>, BTreeMap<Vec<u8>, Vec<u8>>);
        let mut checkpoint: Option<Saved> = None;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    table.put(&key(k), &v);
                    model.insert(key(k), v);
                }
                Op::Delete(k) => {
                    table.delete(&key(k));
                    model.remove(&key(k));
                }
                Op::DeleteRange(a, b) => {
                    let (start, end) = (range_key(a), range_key(b));
                    table.delete_range(&start, &end);
                    model.retain(|k, _| *k < start || *k >= end);
                }
                Op::Get(k) => {
                    let got = table.get(&key(k)).unwrap().map(<[u8]>::to_vec);
                    assert_eq!(got, model.get(&key(k)).cloned(), "get {k}");
                }
                Op::Range(a, b) => {
                    let (start, end) = (range_key(a), range_key(b));
                    let got = table
                        .range(Bound::Included(&start), Bound::Excluded(&end))
                        .unwrap();
                    let expected: Vec<_> = model
                        .range(start.clone()..end.clone())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert_eq!(got, expected, "range {a}..{b}");
                    // The same a few entries at a time.
                    let mut pieces = Vec::new();
                    let bounds = (Bound::Included(&start[..]), Bound::Excluded(&end[..]));
                    table
                        .for_each_in(bounds.0, bounds.1, 1 + (a as usize) % 3, |k, v| {
                            pieces.push((k.to_vec(), v.to_vec()));
                            Ok(())
                        })
                        .unwrap();
                    assert_eq!(pieces, expected, "range {a}..{b} in pieces");
                }
                Op::Prefix(p) => {
                    let got = table.prefix(&[p]).unwrap();
                    let expected: Vec<_> = model
                        .iter()
                        .filter(|(k, _)| k[0] == p)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert_eq!(got, expected, "prefix {p}");
                }
                Op::Flush => {
                    table.flush().unwrap();
                    assert!(table.is_clean());
                }
                Op::Evict(target) => {
                    table.evict(target).unwrap();
                    assert!(table.memory_bytes() <= target.max(table.memory_bytes().min(target)));
                }
                Op::Compact(max_runs) => {
                    table.compact(max_runs).unwrap();
                }
                Op::Checkpoint => {
                    table.flush().unwrap();
                    checkpoint = Some((table.runs().to_vec(), model.clone()));
                }
                Op::Restore => {
                    let (runs, saved) = checkpoint.clone().unwrap_or_default();
                    table = StateTable::open(store.clone(), runs);
                    model = saved;
                }
            }
            check_memory_bytes(&table);
        }
        // Everything, in order, at the end.
        let all = table.range(Bound::Unbounded, Bound::Unbounded).unwrap();
        let expected: Vec<_> = model.into_iter().collect();
        assert_eq!(all, expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Random puts, deletes, range deletes, lookups and scans agree with
        /// a `BTreeMap`, across flushes, evictions to any memory size,
        /// merges, and restores from a checkpoint's runs.
        #[test]
        fn a_state_table_agrees_with_a_btree_map(ops in proptest::collection::vec(op(), 1..120)) {
            let store = store("model");
            run_model(&store, ops);
        }
    }

    /// Memory stays within the target once flushed: a table bigger than
    /// its memory answers from its runs, and merges keep the runs few.
    #[test]
    fn a_table_larger_than_memory_spills_and_stays_correct() {
        let store = store("spill");
        let mut table = StateTable::new(store);
        let value = |i: u32| format!("value-{i}-{}", "x".repeat(40)).into_bytes();
        for round in 0..20u32 {
            for i in 0..1000u32 {
                let k = (i * 7919 + round * 13) % 5000;
                table.put(&k.to_be_bytes(), &value(k + round));
            }
            table.evict(64 * 1024).unwrap();
            assert!(table.memory_bytes() <= 64 * 1024);
            table.compact(8).unwrap();
            assert!(table.runs().len() <= 8, "{} runs", table.runs().len());
        }
        assert!(!table.is_complete());
        let all = table.range(Bound::Unbounded, Bound::Unbounded).unwrap();
        let distinct: std::collections::BTreeSet<u32> = (0..20u32)
            .flat_map(|round| (0..1000u32).map(move |i| (i * 7919 + round * 13) % 5000))
            .collect();
        assert_eq!(all.len(), distinct.len());
        // Close windows: whole prefixes of keys go with one range delete.
        table.delete_range(&0u32.to_be_bytes(), &2500u32.to_be_bytes());
        let gone = *distinct.iter().next().unwrap();
        let kept = *distinct.range(2500..).next().unwrap();
        assert_eq!(table.get(&gone.to_be_bytes()).unwrap(), None);
        assert!(table.get(&kept.to_be_bytes()).unwrap().is_some());
        table.flush().unwrap();
        while table.compact(1).unwrap() {}
        assert_eq!(table.runs().len(), 1);
        let kept = distinct.iter().filter(|&&k| k >= 2500).count() as u64;
        assert_eq!(table.runs()[0].entries(), kept);
        assert!(table.stats().evicted > 0 && table.stats().runs_merged > 0);
    }

    /// A scratch table's disk holds only the runs it reads: a merge
    /// removes the files of the runs it replaced (spilled state that
    /// kept every merged run grew its directory to twice the state).
    #[test]
    fn a_scratch_table_removes_the_runs_a_merge_replaced() {
        let dir = std::env::temp_dir().join(format!("eddy-table-scratch-{}", std::process::id()));
        let mut table = StateTable::new(RunStore::scratch(&dir).unwrap());
        let files = || {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("run".as_ref()))
                .count()
        };
        for round in 0..30u32 {
            for i in 0..200u32 {
                table.put(&(round * 200 + i).to_be_bytes(), b"value");
            }
            table.evict(0).unwrap();
            table.compact(4).unwrap();
            assert_eq!(files(), table.runs().len(), "after round {round}");
        }
        assert!(table.stats().runs_merged > 0);
        assert_eq!(
            table
                .range(Bound::Unbounded, Bound::Unbounded)
                .unwrap()
                .len(),
            6000
        );
        drop(table);
        assert!(!dir.exists(), "the directory goes with the table");
    }

    #[test]
    fn merges_join_runs_of_similar_sizes() {
        assert_eq!(pick_merge(&[], 8), None);
        assert_eq!(pick_merge(&[10], 8), None);
        assert_eq!(pick_merge(&[10, 10], 8), Some(0));
        // A large run is not rewritten to take in small ones, nor a new
        // small one merged into a large one.
        assert_eq!(pick_merge(&[1, 1000], 8), None);
        assert_eq!(pick_merge(&[1000, 1], 8), None);
        assert_eq!(pick_merge(&[1000, 10, 10, 10], 8), Some(1));
        // Too many runs: all of them.
        assert_eq!(pick_merge(&[1000, 1, 100_000], 2), Some(0));
        // Steady checkpoints keep the runs few.
        let mut runs: Vec<u64> = Vec::new();
        for _ in 0..1000 {
            runs.push(10);
            while let Some(first) = pick_merge(&runs, 12) {
                let merged = runs.drain(first..).sum();
                runs.push(merged);
            }
            assert!(runs.len() <= 12, "{runs:?}");
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
