//! Durable checkpoints through `object_store`.
//!
//! A checkpoint is everything eddy needs to resume as of one epoch: the
//! catalog (the DDL of every object, in creation order), every *state table*
//! (a table's rows, a view's rows, one operator's keyed state, a sink's
//! uncommitted epochs; each a map of byte keys to byte values), and the
//! small per-object facts (watermarks, source positions).
//!
//! Layout under the store's root:
//!
//! ```text
//! runs/<id>.run              sorted runs holding every state table
//! checkpoints/<id>.manifest  names the runs a complete checkpoint needs
//! snapshots/<name>/...       a named snapshot: its own manifest and runs
//! state/<id>.data            state of format-2 checkpoints (read only)
//! ```
//!
//! State tables live in one keyspace of sorted runs ([`super::run`]): a
//! table's keys are prefixed with its id (4 bytes, big-endian), which the
//! manifest maps to its name. A checkpoint writes one run with every
//! table's changes since the previous one (a table captured whole, or
//! dropped, also gets a range tombstone over its prefix). Merges run in the
//! background, one at a time, as [`pick_merge`] says: a later checkpoint
//! puts the merged run in place of its inputs (past `MAX_RUNS` it waits
//! for the merge, or merges itself). So a checkpoint costs what changed,
//! and an entry is rewritten O(log n) times, never all state at every
//! checkpoint.
//!
//! Invariants:
//! - A checkpoint is complete only once its manifest exists; the manifest is
//!   written last, after every run it names, in one `put` (the local store
//!   writes a temporary file and renames it).
//! - Runs are written once and never changed; a checkpoint uploads only
//!   runs no earlier checkpoint named. With a local store the runs are
//!   written in place; with a remote one they are written to a local cache
//!   first, uploaded, and downloaded again when a recovery needs them.
//! - Every file carries a magic number, the format version and CRC-32s;
//!   recovery refuses a file that does not check out, and falls back to the
//!   previous complete checkpoint.
//! - Runs and data files are deleted only when no retained manifest names
//!   them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::codec::{crc32, Decoder, Encoder};
use super::run::{Run, RunWriter};
use super::table::{merge_runs, pick_merge, prefix_end, StateTable};
use crate::error::{EddyError, Result};

/// The version of the checkpoint format this eddy writes. It reads every
/// version up to this one and refuses newer ones by name. 2: manifests end
/// with each table's write-ahead log position. 3: state tables in sorted
/// runs (format-2 data files are still read; the first checkpoint after
/// an upgrade writes every table whole).
pub const STATE_FORMAT_VERSION: u32 = 3;

const DATA_MAGIC: &[u8; 8] = b"EDDYDATA";
const MANIFEST_MAGIC: &[u8; 8] = b"EDDYMANI";
/// Complete checkpoints kept; older ones are deleted with the files only
/// they name.
const RETAINED_CHECKPOINTS: usize = 3;
/// Runs a checkpoint keeps at most: beyond them it merges them all.
const MAX_RUNS: usize = 12;
/// The bytes of a state table's id at the start of each of its keys.
const TABLE_PREFIX_BYTES: usize = 4;

/// Writes `bytes` as they are (for [`StateDelta::put_with`]).
fn raw(out: &mut Encoder, bytes: &[u8]) {
    out.raw(bytes);
}

/// One state table's entries in a checkpoint: all of them (`full`), or the
/// ones changed since the previous checkpoint (a `None` value deletes).
///
/// The entries are kept as the data file encodes them (`bytes(key) 1
/// bytes(value)`, or `bytes(key) 0` for a delete), in chunks of about
/// `CHUNK_BYTES`: capturing a state table costs no allocation per entry,
/// a large one never doubles a buffer as it grows, and writing hands the
/// chunks to storage without copying them. A delta read back from a file
/// is a slice of it.
///
/// A delta that outgrows [`DELTA_MEMORY_BYTES`] (a large table captured
/// whole) sorts what it holds into a run in a scratch directory and goes
/// on in memory: capturing and writing it hold at most that much of it
/// (per table), and [`StateDelta::for_each_sorted`] merges the runs.
#[derive(Debug, Default, Clone)]
pub struct StateDelta {
    pub full: bool,
    chunks: Vec<Bytes>,
    current: Vec<u8>,
    len: u64,
    /// Bytes of `chunks`.
    chunk_bytes: usize,
    /// Entries sorted into runs (each without repeated keys), oldest
    /// first; all of them were captured before the entries in memory.
    spilled: Vec<Arc<Run>>,
    /// The scratch directories of `spilled`, removed with the last clone.
    spill_stores: Vec<Arc<super::table::RunStore>>,
    /// Spilling failed once: the rest stays in memory.
    spill_failed: bool,
    /// [`DELTA_MEMORY_BYTES`] unless a test says otherwise.
    #[cfg(test)]
    spill_at: Option<usize>,
}

/// A delta's entry: a key and its value (`None`: deleted).
type DeltaEntry<'a> = (&'a [u8], Option<&'a [u8]>);

/// What a [`StateDelta`] holds in memory before it sorts it into a run on
/// disk.
const DELTA_MEMORY_BYTES: usize = 64 << 20;

impl StateDelta {
    /// An empty delta to be filled with all entries (`full`) or with the
    /// changed ones.
    pub fn new(full: bool) -> Self {
        Self {
            full,
            ..Self::default()
        }
    }

    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put_with(|k| raw(k, key.as_ref()), |v| raw(v, value.as_ref()));
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.delete_with(|k| raw(k, key.as_ref()));
    }

    /// Adds a delete whose key is encoded in place.
    pub fn delete_with(&mut self, key: impl FnOnce(&mut Encoder)) {
        self.entry(key, None::<fn(&mut Encoder)>);
    }

    /// Adds an entry whose key and value are encoded in place.
    pub fn put_with(&mut self, key: impl FnOnce(&mut Encoder), value: impl FnOnce(&mut Encoder)) {
        self.entry(key, Some(value));
    }

    fn entry(&mut self, key: impl FnOnce(&mut Encoder), value: Option<impl FnOnce(&mut Encoder)>) {
        let mut out = Encoder {
            bytes: std::mem::take(&mut self.current),
        };
        out.prefixed(key);
        match value {
            Some(value) => {
                out.u8(1).prefixed(value);
            }
            None => {
                out.u8(0);
            }
        }
        self.current = out.bytes;
        self.len += 1;
        #[cfg(test)]
        let chunk_bytes = self.spill_at.map_or(CHUNK_BYTES, |at| at.min(CHUNK_BYTES));
        #[cfg(not(test))]
        let chunk_bytes = CHUNK_BYTES;
        if self.current.len() >= chunk_bytes {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if !self.current.is_empty() {
            let mut full = std::mem::take(&mut self.current);
            // The buffer doubled past the chunk size: keep what it holds,
            // not twice that, while the checkpoint is written.
            full.shrink_to_fit();
            self.chunk_bytes += full.len();
            self.chunks.push(Bytes::from(full));
        }
        #[cfg(test)]
        let spill_at = self.spill_at.unwrap_or(DELTA_MEMORY_BYTES);
        #[cfg(not(test))]
        let spill_at = DELTA_MEMORY_BYTES;
        if self.chunk_bytes >= spill_at && !self.spill_failed {
            if let Err(e) = self.spill() {
                // Kept in memory instead: correct, only larger.
                tracing::warn!(error = %e, "cannot move a checkpoint's state to disk; it stays in memory");
                self.spill_failed = true;
            }
        }
    }

    /// Sorts the entries in memory into a run in a scratch directory (the
    /// last of a key winning) and empties memory.
    fn spill(&mut self) -> Result<()> {
        let store = super::memory::scratch_store()?;
        let (id, mut writer) = store.create()?;
        for (key, value) in self.sorted_memory_entries()? {
            writer.add(key, value)?;
        }
        let run = writer.finish(id)?;
        self.spilled.push(Arc::new(run));
        self.spill_stores.push(store);
        self.chunks.clear();
        self.chunk_bytes = 0;
        Ok(())
    }

    /// The entries in memory sorted by key, each key once with the value
    /// captured last.
    fn sorted_memory_entries(&self) -> Result<Vec<DeltaEntry<'_>>> {
        let mut entries = self.memory_entries().collect::<Result<Vec<_>>>()?;
        // Stable: of equal keys the one captured last sorts last (kept).
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let last_of_each: Vec<DeltaEntry> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !superseded(&entries, *i))
            .map(|(_, entry)| *entry)
            .collect();
        Ok(last_of_each)
    }

    /// The number of entries.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the entries of `other`, whose keys are not among these (a
    /// shard's).
    pub fn append(&mut self, mut other: StateDelta) {
        self.cut();
        other.cut();
        self.chunks.append(&mut other.chunks);
        self.chunk_bytes += other.chunk_bytes;
        self.spilled.append(&mut other.spilled);
        self.spill_stores.append(&mut other.spill_stores);
        self.len += other.len;
    }

    /// Whether some entries went to disk ([`Self::entries`] does not read
    /// them).
    pub fn spilled(&self) -> bool {
        !self.spilled.is_empty()
    }

    /// The entries in capture order: `(key, Some(value))` or `(key,
    /// None)`. Only for a delta that did not spill (a file's, a test's):
    /// else the first item is an error; see [`Self::for_each_sorted`].
    pub fn entries(&self) -> impl Iterator<Item = Result<(&[u8], Option<&[u8]>)>> {
        let spilled = self.spilled().then(|| {
            Err(crate::internal!(
                "a checkpoint delta moved to disk read as if in memory"
            ))
        });
        spilled.into_iter().chain(self.memory_entries())
    }

    /// Calls `f` with each key once, in key order, and its last captured
    /// value (`None`: deleted), on disk or in memory.
    pub fn for_each_sorted(
        &self,
        mut f: impl FnMut(&[u8], Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        let in_memory = self.sorted_memory_entries()?.into_iter();
        if self.spilled.is_empty() {
            return in_memory
                .into_iter()
                .try_for_each(|(key, value)| f(key, value));
        }
        // Newest first: memory, then the runs from the newest.
        let memory = in_memory.map(|(k, v)| Ok((k.to_vec(), v.map(<[u8]>::to_vec))));
        let mut sources: Vec<super::table::Entries> = vec![Box::new(memory)];
        for run in self.spilled.iter().rev() {
            sources.push(Box::new(
                run.range(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
            ));
        }
        super::table::merge_newest_first(sources, |key, value| f(key, value))
    }

    /// The entries held in memory, in capture order.
    fn memory_entries(&self) -> impl Iterator<Item = Result<(&[u8], Option<&[u8]>)>> {
        self.chunks
            .iter()
            .map(|c| c.as_ref())
            .chain(std::iter::once(self.current.as_slice()))
            .flat_map(|chunk| {
                let mut d = Decoder::new(chunk);
                std::iter::from_fn(move || (!d.is_empty()).then(|| decode_entry(&mut d)))
            })
    }

    /// The entries as a map, the last of a key winning (tests).
    #[cfg(test)]
    pub fn into_map(self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut map = BTreeMap::new();
        self.for_each_sorted(|key, value| {
            if let Some(value) = value {
                map.insert(key.to_vec(), value.to_vec());
            }
            Ok(())
        })
        .expect("entries this process encoded");
        map
    }

    /// Writes a state table's changes since its last capture: `all` of it
    /// when the delta is full or `changed` says everything changed (the
    /// delta becomes full: those keys were not noted), else `each` changed
    /// key. `changed` starts over.
    pub fn put_changed_with<K: Eq + std::hash::Hash>(
        &mut self,
        changed: &mut super::Changed<K>,
        all: impl FnOnce(&mut Self),
        mut each: impl FnMut(&mut Self, &K),
    ) {
        let written: std::result::Result<(), std::convert::Infallible> = self.try_put_changed_with(
            changed,
            |delta| {
                all(delta);
                Ok(())
            },
            |delta, key| {
                each(delta, key);
                Ok(())
            },
        );
        let Ok(()) = written;
    }

    /// [`StateDelta::put_changed_with`] for state read with I/O that can
    /// fail (state spilled to disk): the first error stops the capture.
    pub fn try_put_changed_with<K: Eq + std::hash::Hash, E>(
        &mut self,
        changed: &mut super::Changed<K>,
        all: impl FnOnce(&mut Self) -> std::result::Result<(), E>,
        mut each: impl FnMut(&mut Self, &K) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let changed = changed.take();
        self.full |= changed.is_all();
        if self.full {
            all(self)
        } else {
            changed.keys().iter().try_for_each(|key| each(self, key))
        }
    }

    /// [`StateDelta::put_changed_with`] for a state table kept as the map
    /// `state`: a changed key gone from it is a delete. Values are encoded
    /// in place.
    pub fn put_changed<K, V, S>(
        &mut self,
        state: &std::collections::HashMap<K, V, S>,
        changed: &mut super::Changed<K>,
        encode: impl Fn(&V, &mut Encoder),
    ) where
        K: AsRef<[u8]> + Eq + std::hash::Hash,
        S: std::hash::BuildHasher,
    {
        self.put_changed_with(
            changed,
            |delta| {
                for (key, value) in state {
                    delta.put_encoded(key.as_ref(), value, &encode);
                }
            },
            |delta, key| match state.get(key) {
                Some(value) => delta.put_encoded(key.as_ref(), value, &encode),
                None => delta.delete(key),
            },
        );
    }

    /// Puts `key` as it is, with `value` encoded in place.
    fn put_encoded<V>(&mut self, key: &[u8], value: &V, encode: &impl Fn(&V, &mut Encoder)) {
        self.put_with(|out| raw(out, key), |out| encode(value, out));
    }
}

/// Where a source reader was, as of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderPosition {
    /// A generator: the next position to produce.
    Generator { next: u64 },
    /// Kafka: the next offset to read and the newest event time seen
    /// (µs, for the watermark), per partition.
    Kafka {
        next_offsets: BTreeMap<i32, i64>,
        event_times: BTreeMap<i32, i64>,
    },
}

impl ReaderPosition {
    /// Moves on to `later`, a position reported after this one (a Kafka
    /// reader reports only the partitions a batch came from).
    pub fn advance(&mut self, later: ReaderPosition) {
        match (self, later) {
            (
                ReaderPosition::Kafka {
                    next_offsets,
                    event_times,
                },
                ReaderPosition::Kafka {
                    next_offsets: more_offsets,
                    event_times: more_times,
                },
            ) => {
                next_offsets.extend(more_offsets);
                event_times.extend(more_times);
            }
            (this, later) => *this = later,
        }
    }
}

/// Small facts recorded with a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Event-time watermark per relation (by its checkpoint name).
    pub watermarks: BTreeMap<String, i64>,
    /// Position per source reader (`<view>/<source>`).
    pub readers: BTreeMap<String, ReaderPosition>,
    /// Per table (by its checkpoint name): the LSN of the last
    /// write-ahead log record the checkpoint holds; recovery replays the
    /// table's newer records.
    pub table_lsns: BTreeMap<String, u64>,
}

/// What the runtime captured for one checkpoint.
#[derive(Debug, Default)]
pub struct Capture {
    pub epoch: u64,
    /// Every live state table, changed or not.
    pub states: BTreeMap<String, StateDelta>,
    pub meta: CheckpointMeta,
}

/// Which state tables the runtime must capture whole.
#[derive(Debug, Clone, Default)]
pub struct CaptureRequest {
    /// Capture everything whole (no previous checkpoint, or the previous
    /// attempt failed after the runtime had handed over its changes).
    pub all_full: bool,
    /// State tables the previous checkpoint has (others are new: whole).
    pub known: BTreeSet<String>,
}

impl CaptureRequest {
    /// Whether state table `name` is to be captured whole.
    pub fn wants_full(&self, name: &str) -> bool {
        self.all_full || !self.known.contains(name)
    }
}

/// The data files one state table is read from, oldest (full) first
/// (format 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub files: Vec<u64>,
    pub base_bytes: u64,
    pub delta_bytes: u64,
}

/// A data file named by a manifest (format 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// A run named by a manifest, with what it holds of each state table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    pub id: u64,
    /// Relative to the store's root (`runs/...`, `snapshots/<name>/...`).
    pub path: String,
    pub bytes: u64,
    /// `(table id, entries, key and value bytes)`, by table id.
    pub tables: Vec<(u32, u64, u64)>,
}

impl RunRef {
    fn of(run: &Run, path: String) -> Self {
        let tables = run
            .group_stats()
            .iter()
            .filter_map(|g| Some((table_of_prefix(&g.prefix)?, g.entries, g.bytes)))
            .collect();
        Self {
            id: run.id(),
            path,
            bytes: run.file_bytes(),
            tables,
        }
    }
}

/// The record of one complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub id: u64,
    pub epoch: u64,
    pub created_unix_ms: u64,
    /// The DDL of every object, in creation order.
    pub catalog: Vec<String>,
    /// Format 2: each state table's chain of data files.
    pub chains: BTreeMap<String, Chain>,
    pub files: BTreeMap<u64, DataFile>,
    pub meta: CheckpointMeta,
    /// Bytes this checkpoint wrote (its runs and manifest).
    pub bytes_written: u64,
    /// Every state table's id: its keys in the runs start with it.
    pub tables: BTreeMap<String, u32>,
    /// The id the next new state table gets (ids are not reused).
    pub next_table_id: u32,
    /// The runs holding every state table, oldest first.
    pub runs: Vec<RunRef>,
}

impl Manifest {
    /// The request for the checkpoint after this one. A format-2
    /// checkpoint's tables are in no run: all are captured whole.
    pub fn next_request(&self) -> CaptureRequest {
        CaptureRequest {
            all_full: false,
            known: self.tables.keys().cloned().collect(),
        }
    }

    /// Bytes of state a recovery from this checkpoint reads.
    pub fn state_bytes(&self) -> u64 {
        let runs: u64 = self.runs.iter().map(|r| r.bytes).sum();
        runs + self.files.values().map(|f| f.bytes).sum::<u64>()
    }

    /// Key and value bytes of each state table across the runs (every
    /// version a recovery reads), by name.
    pub fn state_table_bytes(&self) -> BTreeMap<String, u64> {
        let mut by_id: HashMap<u32, u64> = HashMap::new();
        for run in &self.runs {
            for (table, _, bytes) in &run.tables {
                *by_id.entry(*table).or_default() += bytes;
            }
        }
        let chains = self
            .chains
            .iter()
            .map(|(name, chain)| (name.clone(), chain.base_bytes + chain.delta_bytes));
        self.tables
            .iter()
            .map(|(name, id)| (name.clone(), by_id.get(id).copied().unwrap_or(0)))
            .chain(chains)
            .collect()
    }
}

/// A checkpoint read back: the catalog, every state table, the facts.
///
/// The state tables are not read here: each is read when it is taken
/// ([`RestoredTable`]), so a recovery holds one table's entries at a time
/// (and an operator that restores a piece at a time, less).
#[derive(Debug, Default)]
pub struct RestoredState {
    pub id: u64,
    pub epoch: u64,
    pub catalog: Vec<String>,
    tables: HashMap<String, RestoredTable>,
    pub meta: CheckpointMeta,
}

impl RestoredState {
    /// Takes state table `name` (empty if it has none).
    pub fn take(&mut self, name: &str) -> RestoredTable {
        self.tables.remove(name).unwrap_or_default()
    }

    /// Takes state table `name` if there is one.
    pub fn remove(&mut self, name: &str) -> Option<RestoredTable> {
        self.tables.remove(name)
    }

    /// Reads state table `name` whole (small tables: counters, a sink's
    /// progress).
    pub fn take_entries(&mut self, name: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        self.take(name).into_map()
    }

    pub fn insert(&mut self, name: String, table: RestoredTable) {
        self.tables.insert(name, table);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }

    /// The names of the state tables not taken yet.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tables.keys()
    }
}

/// Entries a restore reads into memory at a time (fewer when they hold
/// [`super::table::PIECE_BYTES`]).
pub const RESTORE_PIECE: usize = 8192;

/// One state table of a restored checkpoint: its entries in key order,
/// read from the checkpoint's runs when they are asked for, a piece at a
/// time ([`RestoredTable::for_each_piece`]) or whole
/// ([`RestoredTable::into_map`]).
///
/// An operator whose state can spill restores a piece at a time and,
/// once it holds more than [`RestoredTable::memory_budget`], spills
/// between pieces: a recovery stays within the memory limit however
/// large the checkpoint.
#[derive(Debug)]
pub struct RestoredTable {
    source: TableSource,
    /// The bytes of state its restorer may hold in memory before it
    /// spills (`None`: no limit). Set by the runtime, which knows the
    /// memory limit and what else is held.
    pub memory_budget: Option<usize>,
    /// Entries read into memory at a time.
    piece: usize,
}

impl Default for RestoredTable {
    fn default() -> Self {
        Self {
            source: TableSource::Empty,
            memory_budget: None,
            piece: RESTORE_PIECE,
        }
    }
}

#[derive(Debug, Default)]
enum TableSource {
    #[default]
    Empty,
    /// Entries already in memory (a format-2 checkpoint, tests).
    Entries(BTreeMap<Vec<u8>, Vec<u8>>),
    /// The table's keys (after its id prefix) in a checkpoint's runs.
    Runs {
        reader: Arc<StateTable>,
        prefix: [u8; TABLE_PREFIX_BYTES],
    },
}

impl From<BTreeMap<Vec<u8>, Vec<u8>>> for RestoredTable {
    fn from(entries: BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        Self {
            source: TableSource::Entries(entries),
            ..Self::default()
        }
    }
}

impl RestoredTable {
    /// Calls `f` with the entries in key order, a piece at a time (the
    /// keys without the checkpoint's table prefix).
    pub fn for_each_piece(
        self,
        mut f: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        let piece = self.piece.max(1);
        match self.source {
            TableSource::Empty => Ok(()),
            TableSource::Entries(entries) => {
                let mut entries = entries.into_iter().peekable();
                while entries.peek().is_some() {
                    f(entries.by_ref().take(piece).collect())?;
                }
                Ok(())
            }
            TableSource::Runs { reader, prefix } => {
                let end = prefix_end(&prefix);
                let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                reader.for_each_piece_in(Bound::Included(&prefix), end, piece, |mut entries| {
                    for (key, _) in &mut entries {
                        key.drain(..TABLE_PREFIX_BYTES);
                    }
                    f(entries)
                })
            }
        }
    }

    /// Every entry, read into memory.
    pub fn into_map(self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        if let TableSource::Entries(entries) = self.source {
            return Ok(entries);
        }
        let mut map = BTreeMap::new();
        self.for_each_piece(|piece| {
            map.extend(piece);
            Ok(())
        })?;
        Ok(map)
    }

    /// The same table with `budget` bytes to restore into.
    pub fn with_memory_budget(mut self, budget: Option<usize>) -> Self {
        self.memory_budget = budget;
        self
    }

    /// The same table read `piece` entries at a time (tests make pieces
    /// small to restore across many).
    pub fn with_piece(mut self, piece: usize) -> Self {
        self.piece = piece;
        self
    }
}

/// The key prefix of state table `id`.
fn table_prefix(id: u32) -> [u8; TABLE_PREFIX_BYTES] {
    id.to_be_bytes()
}

/// The table id a run's group prefix stands for.
fn table_of_prefix(prefix: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(prefix.try_into().ok()?))
}

/// A directory removed when the last handle to it goes (the local run
/// cache of an in-memory or remote store).
#[derive(Debug)]
struct TemporaryDir(std::path::PathBuf);

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, private temporary directory.
fn temporary_dir(what: &str) -> Result<Arc<TemporaryDir>> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("eddy-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| EddyError::Checkpoint(format!("cannot create {}: {e}", dir.display())))?;
    Ok(Arc::new(TemporaryDir(dir)))
}

/// Checkpoint storage: a local directory or an object store URL.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: String,
    /// Where store paths are files here: the store's own directory when it
    /// is local, else a cache that runs are written to before upload and
    /// downloaded to for reading.
    local_root: std::path::PathBuf,
    /// Whether `local_root` is the store itself (nothing to upload).
    local: bool,
    /// Keeps a temporary cache directory while the store is in use.
    _cache: Option<Arc<TemporaryDir>>,
    /// The merge running in the background, if any.
    merge: Arc<std::sync::Mutex<Option<PendingMerge>>>,
}

/// A merge of runs running in the background: once done, its run takes
/// the place of `inputs` (consecutive runs of the checkpoint it started
/// from) in the next checkpoint.
#[derive(Debug)]
struct PendingMerge {
    inputs: Vec<String>,
    path: String,
    task: tokio::task::JoinHandle<Result<Run>>,
}

impl CheckpointStore {
    /// Opens `location`: a directory path (created if missing), a
    /// `file://` URL, or `s3://`, `gs://`, `az://` URLs in builds with the
    /// `cloud` feature.
    pub fn open(location: &str) -> Result<Self> {
        let is_url = location.contains("://");
        if !is_url || location.starts_with("file://") {
            let dir = location.trim_start_matches("file://");
            std::fs::create_dir_all(dir).map_err(|e| {
                EddyError::Checkpoint(format!("cannot create checkpoint directory {dir}: {e}"))
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| EddyError::Checkpoint(format!("checkpoint directory {dir}: {e}")))?;
            return Ok(Self {
                store: Arc::new(store),
                root: Path::default(),
                location: dir.to_string(),
                local_root: std::path::PathBuf::from(dir),
                local: true,
                _cache: None,
                merge: Arc::default(),
            });
        }
        let url = url::Url::parse(location)
            .map_err(|e| EddyError::InvalidParameter(format!("checkpoint URL {location}: {e}")))?;
        let options: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                ["AWS_", "GOOGLE_", "AZURE_"]
                    .iter()
                    .any(|prefix| k.starts_with(prefix))
            })
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect();
        let (store, root) = object_store::parse_url_opts(&url, options).map_err(|e| {
            EddyError::InvalidParameter(format!(
                "checkpoint store {location}: {e} (s3://, gs:// and az:// need eddy built with \
                 `--features cloud`)"
            ))
        })?;
        Self::remote(Arc::from(store), root, location.to_string())
    }

    /// A store whose files are not local: runs go through a temporary
    /// local cache.
    fn remote(store: Arc<dyn ObjectStore>, root: Path, location: String) -> Result<Self> {
        let cache = temporary_dir("run-cache")?;
        Ok(Self {
            store,
            root,
            location,
            local_root: cache.0.clone(),
            local: false,
            _cache: Some(cache),
            merge: Arc::default(),
        })
    }

    /// An in-memory store (for tests and `--no-checkpoints` runs); its runs
    /// are cached in a temporary directory, as a remote store's are.
    pub fn in_memory() -> Result<Self> {
        Self::remote(
            Arc::new(object_store::memory::InMemory::new()),
            Path::default(),
            "memory".into(),
        )
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, relative: &str) -> Path {
        let mut path = self.root.clone();
        for part in relative.split('/') {
            path = path.join(part);
        }
        path
    }

    async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_chunks(relative, vec![Bytes::from(bytes)]).await
    }

    async fn put_chunks(&self, relative: &str, chunks: Vec<Bytes>) -> Result<()> {
        self.store
            .put(&self.path(relative), PutPayload::from_iter(chunks))
            .await
            .map_err(|e| EddyError::Checkpoint(format!("writing {relative}: {e}")))?;
        Ok(())
    }

    async fn get(&self, relative: &str) -> Result<Bytes> {
        let result = self
            .store
            .get(&self.path(relative))
            .await
            .map_err(|e| EddyError::Checkpoint(format!("reading {relative}: {e}")))?;
        result
            .bytes()
            .await
            .map_err(|e| EddyError::Checkpoint(format!("reading {relative}: {e}")))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix_path = self.path(prefix);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix_path))
            .try_collect()
            .await
            .map_err(|e| EddyError::Checkpoint(format!("listing {prefix}: {e}")))?;
        let root = self.root.as_ref();
        Ok(objects
            .into_iter()
            .map(|o| {
                let full = o.location.as_ref();
                full.strip_prefix(root)
                    .unwrap_or(full)
                    .trim_start_matches('/')
                    .to_string()
            })
            .collect())
    }

    /// The local file of store path `relative`.
    fn local_path(&self, relative: &str) -> std::path::PathBuf {
        self.local_root.join(relative)
    }

    /// Opens run `run`, downloading it to the local cache first when the
    /// store is remote and the cache lacks it.
    async fn open_run(&self, run: &RunRef) -> Result<Arc<Run>> {
        let path = self.local_path(&run.path);
        if !self.local && !path.exists() {
            let bytes = self.get(&run.path).await?;
            let (target, what) = (path.clone(), run.path.clone());
            Self::blocking(move || {
                let partial = target.with_extension("download");
                let cached = (|| {
                    if let Some(dir) = partial.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::write(&partial, &bytes)?;
                    std::fs::rename(&partial, &target)
                })();
                cached.map_err(|e| {
                    EddyError::Checkpoint(format!("caching {what} at {}: {e}", partial.display()))
                })
            })
            .await?;
        }
        let id = run.id;
        let opened = Self::blocking(move || Run::open(id, &path)).await?;
        if opened.file_bytes() != run.bytes {
            return Err(EddyError::Checkpoint(format!(
                "{} is damaged: {} bytes, the manifest says {}",
                run.path,
                opened.file_bytes(),
                run.bytes
            )));
        }
        Ok(Arc::new(opened))
    }

    /// Runs blocking file work off the async threads.
    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| crate::internal!("checkpoint file work stopped: {e}"))?
    }

    /// Writes checkpoint `id` from `capture` on top of `previous`: one run
    /// of every change, the run of a finished background merge in place of
    /// its inputs (and a new merge started when [`pick_merge`] asks), the
    /// uploads a remote store needs, then the manifest (last), then deletes
    /// what no retained checkpoint needs.
    pub async fn write(
        &self,
        id: u64,
        previous: Option<&Manifest>,
        capture: Capture,
        catalog: Vec<String>,
    ) -> Result<Manifest> {
        let Capture {
            epoch,
            states,
            meta,
        } = capture;
        let (mut tables, mut next_table_id, mut runs) = match previous {
            Some(m) => (m.tables.clone(), m.next_table_id, m.runs.clone()),
            None => (BTreeMap::new(), 0, Vec::new()),
        };
        // Tables gone since the previous checkpoint: a tombstone each.
        let dropped: Vec<u32> = tables
            .iter()
            .filter(|(name, _)| !states.contains_key(*name))
            .map(|(_, id)| *id)
            .collect();
        tables.retain(|name, _| states.contains_key(name));
        let mut sections = Vec::new();
        for (name, delta) in states {
            let table = match tables.get(&name) {
                Some(table) => *table,
                None if delta.full => {
                    let table = next_table_id;
                    next_table_id = next_table_id.checked_add(1).ok_or_else(|| {
                        crate::internal!("state table ids ran out (2^32 tables created)")
                    })?;
                    tables.insert(name, table);
                    table
                }
                None => {
                    return Err(crate::internal!(
                        "state {name} has no previous checkpoint but was captured as a delta"
                    ))
                }
            };
            if delta.full || !delta.is_empty() {
                sections.push((table, delta));
            }
        }
        sections.sort_by_key(|(table, _)| *table);

        let mut bytes_written = 0;
        let mut written_here = BTreeSet::new();
        let run_path = |seq: u64| {
            let run_id = (id << 16) | seq;
            (run_id, format!("runs/{run_id:020}.run"))
        };
        let (run_id, path) = run_path(0);
        let local = self.local_path(&path);
        let run = Self::blocking(move || write_changes(&local, run_id, sections, dropped)).await?;
        if let Some(run) = run {
            bytes_written += run.file_bytes();
            written_here.insert(path.clone());
            runs.push(RunRef::of(&run, path));
        }
        // A merge done in the background takes its inputs' place; past
        // `MAX_RUNS` the checkpoint waits for it, or merges itself.
        let over = runs.len() > MAX_RUNS;
        if let Some(done) = self.finished_merge(&runs, over).await {
            adopt(&mut runs, done, &mut written_here, &mut bytes_written);
        }
        if runs.len() > MAX_RUNS {
            let done = self.merge_now(&runs, 0, run_path(1)).await?;
            adopt(&mut runs, done, &mut written_here, &mut bytes_written);
        }
        self.start_merge(&runs, run_path(2)).await?;
        if !self.local {
            for run in runs.iter().filter(|r| written_here.contains(&r.path)) {
                let bytes = tokio::fs::read(self.local_path(&run.path))
                    .await
                    .map_err(|e| EddyError::Checkpoint(format!("reading {}: {e}", run.path)))?;
                self.put(&run.path, bytes).await?;
            }
        }
        let mut manifest = Manifest {
            id,
            epoch,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            catalog,
            chains: BTreeMap::new(),
            files: BTreeMap::new(),
            meta,
            bytes_written,
            tables,
            next_table_id,
            runs,
        };
        let encoded = envelope(MANIFEST_MAGIC, &encode_manifest(&manifest));
        manifest.bytes_written += encoded.len() as u64;
        // Written last: the checkpoint exists from here on.
        self.put(&format!("checkpoints/{id:020}.manifest"), encoded)
            .await?;
        if let Err(e) = self.collect_garbage().await {
            tracing::warn!(error = %e, "checkpoint garbage collection failed; will retry");
        }
        Ok(manifest)
    }

    /// The run of the background merge, once it is done (or, with
    /// `wait`, once it is): `None` when none ran, it failed (logged; the
    /// next one tries again), or its inputs are no longer all there.
    async fn finished_merge(&self, runs: &[RunRef], wait: bool) -> Option<MergedRun> {
        let pending = {
            let mut slot = self.merge.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(p) if wait || p.task.is_finished() => slot.take(),
                _ => None,
            }
        }?;
        let run = match pending.task.await {
            Ok(Ok(run)) => run,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "merging checkpoint runs failed; will try again");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "merging checkpoint runs stopped; will try again");
                return None;
            }
        };
        if !self.local_path(&pending.path).exists() {
            // Its file went (a cache emptied under eddy): merge again later.
            return None;
        }
        let paths: Vec<&str> = runs.iter().map(|r| r.path.as_str()).collect();
        let inputs: Vec<&str> = pending.inputs.iter().map(String::as_str).collect();
        let first = paths.windows(inputs.len()).position(|w| w == inputs)?;
        Some(MergedRun {
            first,
            inputs: inputs.len(),
            run: RunRef::of(&run, pending.path),
        })
    }

    /// Merges `runs[first..]` now, as `(id, path)`.
    async fn merge_now(
        &self,
        runs: &[RunRef],
        first: usize,
        (merged_id, path): (u64, String),
    ) -> Result<MergedRun> {
        let group = self.open_group(&runs[first..]).await?;
        let local = self.local_path(&path);
        let merged =
            Self::blocking(move || merge_into(&local, &group, first == 0, merged_id)).await?;
        Ok(MergedRun {
            first,
            inputs: runs.len() - first,
            run: RunRef::of(&merged, path),
        })
    }

    /// Starts merging the runs [`pick_merge`] picks, in the background, as
    /// `(id, path)`, unless a merge is running.
    async fn start_merge(&self, runs: &[RunRef], (merged_id, path): (u64, String)) -> Result<()> {
        if self
            .merge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let sizes: Vec<u64> = runs.iter().map(|r| r.bytes).collect();
        let Some(first) = pick_merge(&sizes, MAX_RUNS) else {
            return Ok(());
        };
        let group = self.open_group(&runs[first..]).await?;
        let local = self.local_path(&path);
        let task =
            tokio::task::spawn_blocking(move || merge_into(&local, &group, first == 0, merged_id));
        *self.merge.lock().unwrap_or_else(|p| p.into_inner()) = Some(PendingMerge {
            inputs: runs[first..].iter().map(|r| r.path.clone()).collect(),
            path,
            task,
        });
        Ok(())
    }

    async fn open_group(&self, runs: &[RunRef]) -> Result<Vec<Arc<Run>>> {
        let mut group = Vec::with_capacity(runs.len());
        for run in runs {
            group.push(self.open_run(run).await?);
        }
        Ok(group)
    }

    /// The ids of the manifests present, newest first.
    async fn manifest_ids(&self, dir: &str) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self
            .list(dir)
            .await?
            .iter()
            .filter_map(|p| {
                p.rsplit('/')
                    .next()?
                    .strip_suffix(".manifest")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    async fn read_manifest(&self, relative: &str) -> Result<Manifest> {
        let bytes = self.get(relative).await?;
        let (version, payload) = open_envelope(MANIFEST_MAGIC, &bytes, relative)?;
        decode_manifest(payload, version)
            .map_err(|e| EddyError::Checkpoint(format!("{relative}: {e}")))
    }

    /// The tables' write-ahead log positions in each checkpoint a recovery
    /// may start from (the retained ones), newest first.
    pub async fn retained_table_lsns(&self) -> Result<Vec<BTreeMap<String, u64>>> {
        let mut positions = Vec::new();
        for id in self
            .manifest_ids("checkpoints")
            .await?
            .into_iter()
            .take(RETAINED_CHECKPOINTS)
        {
            let manifest = self
                .read_manifest(&format!("checkpoints/{id:020}.manifest"))
                .await?;
            positions.push(manifest.meta.table_lsns);
        }
        Ok(positions)
    }

    /// Deletes manifests beyond the retained ones, and data files and runs
    /// that no retained manifest names (in the store and in a remote
    /// store's local cache).
    async fn collect_garbage(&self) -> Result<()> {
        let ids = self.manifest_ids("checkpoints").await?;
        let mut needed = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            let path = format!("checkpoints/{id:020}.manifest");
            if i < RETAINED_CHECKPOINTS {
                match self.read_manifest(&path).await {
                    Ok(m) => {
                        needed.extend(m.files.values().map(|f| f.path.clone()));
                        needed.extend(m.runs.iter().map(|r| r.path.clone()));
                    }
                    // Unreadable: it cannot be recovered from; keep its
                    // neighbours' files and leave it for inspection.
                    Err(_) => return Ok(()),
                }
            } else {
                self.delete(&path).await?;
            }
        }
        // A merge running writes a run no manifest names yet.
        if let Some(pending) = &*self.merge.lock().unwrap_or_else(|p| p.into_inner()) {
            let temporary = RunWriter::temporary_path(std::path::Path::new(&pending.path));
            needed.insert(pending.path.clone());
            needed.insert(temporary.to_string_lossy().into_owned());
        }
        for dir in ["state", "runs"] {
            for path in self.list(dir).await? {
                if !needed.contains(&path) {
                    self.delete(&path).await?;
                }
            }
        }
        if !self.local {
            let cached = self.local_path("runs");
            if let Ok(listing) = std::fs::read_dir(&cached) {
                for entry in listing.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !needed.contains(&format!("runs/{name}")) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(())
    }

    async fn delete(&self, relative: &str) -> Result<()> {
        match self.store.delete(&self.path(relative)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(EddyError::Checkpoint(format!("deleting {relative}: {e}"))),
        }
    }

    /// Loads the newest complete checkpoint whose files all check out;
    /// reports each one skipped and why. `None` when there is none at all.
    pub async fn latest(&self) -> Result<Option<(Manifest, RestoredState)>> {
        let ids = self.manifest_ids("checkpoints").await?;
        let mut problems = Vec::new();
        for id in &ids {
            let path = format!("checkpoints/{id:020}.manifest");
            let attempt = async {
                let manifest = self.read_manifest(&path).await?;
                let restored = self.load(&manifest).await?;
                Ok::<_, EddyError>((manifest, restored))
            };
            match attempt.await {
                Ok(found) => {
                    for problem in &problems {
                        tracing::error!(
                            "{problem}; recovering from the previous complete checkpoint {id}"
                        );
                    }
                    return Ok(Some(found));
                }
                Err(e @ EddyError::Checkpoint(_)) if is_version_error(&e) => return Err(e),
                Err(e) => problems.push(format!("checkpoint {id} is unusable: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(None)
        } else {
            Err(EddyError::Checkpoint(format!(
                "no usable checkpoint in {}: {}",
                self.location,
                problems.join("; ")
            )))
        }
    }

    /// Opens every state table of `manifest`: format-2 tables are read,
    /// runs are opened and their blocks' checksums verified (one pass over
    /// the files, holding nothing), their entries read when a table is
    /// taken.
    pub async fn load(&self, manifest: &Manifest) -> Result<RestoredState> {
        let mut tables: HashMap<String, RestoredTable> = self
            .load_chains(manifest)
            .await?
            .into_iter()
            .map(|(name, entries)| (name, RestoredTable::from(entries)))
            .collect();
        let mut runs = Vec::with_capacity(manifest.runs.len());
        for run in &manifest.runs {
            runs.push(self.open_run(run).await?);
        }
        let verified = runs.clone();
        Self::blocking(move || verified.iter().try_for_each(|run| run.verify())).await?;
        // Read-only: nothing is written through this table.
        let reader = Arc::new(StateTable::read_only(runs));
        for (name, id) in &manifest.tables {
            let source = TableSource::Runs {
                reader: Arc::clone(&reader),
                prefix: table_prefix(*id),
            };
            tables.insert(
                name.clone(),
                RestoredTable {
                    source,
                    ..RestoredTable::default()
                },
            );
        }
        Ok(RestoredState {
            id: manifest.id,
            epoch: manifest.epoch,
            catalog: manifest.catalog.clone(),
            tables,
            meta: manifest.meta.clone(),
        })
    }

    /// Reads the state tables a format-2 manifest keeps in data files.
    async fn load_chains(
        &self,
        manifest: &Manifest,
    ) -> Result<HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>> {
        let mut sections: BTreeMap<u64, HashMap<String, StateDelta>> = BTreeMap::new();
        for (id, file) in &manifest.files {
            let bytes = self.get(&file.path).await?;
            if bytes.len() as u64 != file.bytes || crc32(&bytes) != file.crc32 {
                return Err(EddyError::Checkpoint(format!(
                    "{} is damaged: {} bytes (expected {}), checksum mismatch",
                    file.path,
                    bytes.len(),
                    file.bytes
                )));
            }
            let (_, payload) = open_envelope(DATA_MAGIC, &bytes, &file.path)?;
            let payload = bytes.slice_ref(payload);
            let decoded = decode_sections(&payload)
                .map_err(|e| EddyError::Checkpoint(format!("{}: {e}", file.path)))?;
            sections.insert(*id, decoded);
        }
        let mut states = HashMap::new();
        for (name, chain) in &manifest.chains {
            let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for file in &chain.files {
                let delta = sections
                    .get_mut(file)
                    .and_then(|s| s.remove(name))
                    .ok_or_else(|| {
                        EddyError::Checkpoint(format!(
                            "data file {file} lacks state {name} that checkpoint {} names",
                            manifest.id
                        ))
                    })?;
                if delta.full {
                    entries.clear();
                }
                for entry in delta.entries() {
                    match entry? {
                        (key, Some(value)) => entries.insert(key.to_vec(), value.to_vec()),
                        (key, None) => entries.remove(key),
                    };
                }
            }
            states.insert(name.clone(), entries);
        }
        Ok(states)
    }

    /// Copies checkpoint `manifest` to a named snapshot (a savepoint) that
    /// garbage collection never deletes.
    pub async fn save_snapshot(&self, name: &str, manifest: &Manifest) -> Result<()> {
        check_snapshot_name(name)?;
        let mut copy = manifest.clone();
        let in_snapshot = |path: &str| {
            let file_name = path.rsplit('/').next().unwrap_or(path);
            format!("snapshots/{name}/{file_name}")
        };
        for file in copy.files.values_mut() {
            let bytes = self.get(&file.path).await?;
            let path = in_snapshot(&file.path);
            self.put(&path, bytes.to_vec()).await?;
            file.path = path;
        }
        for run in &mut copy.runs {
            let bytes = self.get(&run.path).await?;
            let path = in_snapshot(&run.path);
            self.put(&path, bytes.to_vec()).await?;
            run.path = path;
        }
        let encoded = envelope(MANIFEST_MAGIC, &encode_manifest(&copy));
        self.put(&format!("snapshots/{name}/snapshot.manifest"), encoded)
            .await
    }

    /// Loads the named snapshot.
    pub async fn load_snapshot(&self, name: &str) -> Result<(Manifest, RestoredState)> {
        check_snapshot_name(name)?;
        let manifest = self
            .read_manifest(&format!("snapshots/{name}/snapshot.manifest"))
            .await
            .map_err(|e| EddyError::Checkpoint(format!("snapshot {name}: {e}")))?;
        let restored = self.load(&manifest).await?;
        Ok((manifest, restored))
    }

    /// The ids of the complete checkpoints present, newest first.
    pub async fn checkpoint_ids(&self) -> Result<Vec<u64>> {
        self.manifest_ids("checkpoints").await
    }
}

fn check_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(EddyError::InvalidParameter(format!(
            "snapshot name \"{name}\": use letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

fn is_version_error(e: &EddyError) -> bool {
    e.to_string().contains("format version")
}

/// `magic | version | length | payload | crc32(payload)`.
fn envelope(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    envelope_of_version(magic, STATE_FORMAT_VERSION, payload)
}

fn envelope_of_version(magic: &[u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out
}

/// The format version and payload of a file [`envelope`] wrote.
fn open_envelope<'a>(magic: &[u8; 8], bytes: &'a [u8], what: &str) -> Result<(u32, &'a [u8])> {
    let damaged = |why: &str| EddyError::Checkpoint(format!("{what} is damaged: {why}"));
    if bytes.len() < 24 || &bytes[..8] != magic {
        return Err(damaged(
            "not an eddy checkpoint file (bad magic or truncated)",
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > STATE_FORMAT_VERSION {
        return Err(EddyError::Checkpoint(format!(
            "{what} has checkpoint format version {version}, but this eddy reads versions up to \
             {STATE_FORMAT_VERSION}: run a newer eddy, or start from an empty data directory"
        )));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    if bytes.len() != 24 + len {
        return Err(damaged(&format!(
            "{} bytes, expected {} (truncated)",
            bytes.len(),
            24 + len
        )));
    }
    let payload = &bytes[20..20 + len];
    let stored = u32::from_le_bytes(bytes[20 + len..].try_into().expect("4 bytes"));
    if crc32(payload) != stored {
        return Err(damaged("checksum mismatch"));
    }
    Ok((version, payload))
}

/// A merged run and the runs it replaces: `inputs` runs from `first`.
#[derive(Debug)]
struct MergedRun {
    first: usize,
    inputs: usize,
    run: RunRef,
}

/// A writer of a checkpoint run at `path`: it counts entries and bytes by
/// table.
fn checkpoint_run_writer(path: &std::path::Path) -> Result<RunWriter> {
    Ok(RunWriter::create(path)?.group_stats_by(TABLE_PREFIX_BYTES))
}

/// Merges `group` (consecutive runs, `bottom`: from the oldest) into run
/// `id` at `path`.
fn merge_into(path: &std::path::Path, group: &[Arc<Run>], bottom: bool, id: u64) -> Result<Run> {
    merge_runs(group, bottom, checkpoint_run_writer(path)?, id)
}

/// Puts `merged` in its inputs' place, as a run this checkpoint writes.
fn adopt(
    runs: &mut Vec<RunRef>,
    merged: MergedRun,
    written_here: &mut BTreeSet<String>,
    bytes_written: &mut u64,
) {
    *bytes_written += merged.run.bytes;
    written_here.insert(merged.run.path.clone());
    runs.splice(merged.first..merged.first + merged.inputs, [merged.run]);
}

/// Writes one checkpoint's changes as run `run_id` at `path`: for each
/// state table (by id), a tombstone over its keys when it was captured
/// whole, then its entries sorted by key (the last of a key winning); a
/// tombstone for each dropped table. `None` when there is nothing to say.
fn write_changes(
    path: &std::path::Path,
    run_id: u64,
    sections: Vec<(u32, StateDelta)>,
    dropped: Vec<u32>,
) -> Result<Option<Run>> {
    let mut writer = checkpoint_run_writer(path)?;
    let whole = sections.iter().filter(|(_, d)| d.full).map(|(t, _)| *t);
    for table in whole.chain(dropped) {
        let prefix = table_prefix(table);
        let end = prefix_end(&prefix).ok_or_else(|| crate::internal!("table id {table}"))?;
        writer.delete_range(&prefix, &end);
    }
    let mut key = Vec::new();
    for (table, delta) in sections {
        let prefix = table_prefix(table);
        delta.for_each_sorted(|k, value| {
            // A delete in a whole capture hides nothing its tombstone
            // does not.
            if delta.full && value.is_none() {
                return Ok(());
            }
            key.clear();
            key.extend_from_slice(&prefix);
            key.extend_from_slice(k);
            writer.add(&key, value)
        })?;
    }
    if writer.is_empty() {
        return Ok(None);
    }
    Ok(Some(writer.finish(run_id)?))
}

/// Whether entry `i` of key-sorted `entries` has a later one of its key.
fn superseded(entries: &[DeltaEntry], i: usize) -> bool {
    entries
        .get(i + 1)
        .is_some_and(|(next, _)| *next == entries[i].0)
}

/// One entry as [`StateDelta`] encodes it.
fn decode_entry<'a>(d: &mut Decoder<'a>) -> Result<(&'a [u8], Option<&'a [u8]>)> {
    let key = d.bytes()?;
    let value = match d.u8()? {
        0 => None,
        _ => Some(d.bytes()?),
    };
    Ok((key, value))
}

/// The size at which a chunk is cut.
const CHUNK_BYTES: usize = 4 << 20;

/// The sections of a data file; each delta's entries are a slice of
/// `payload`, checked here.
fn decode_sections(payload: &Bytes) -> Result<HashMap<String, StateDelta>> {
    let mut d = Decoder::new(payload);
    let count = d.u64()?;
    let mut sections = HashMap::new();
    for _ in 0..count {
        let name = string(d.bytes()?)?;
        let full = d.u8()? != 0;
        let len = d.u64()?;
        let start = d.position();
        for _ in 0..len {
            decode_entry(&mut d)?;
        }
        let delta = StateDelta {
            full,
            chunks: vec![payload.slice(start..d.position())],
            len,
            ..StateDelta::default()
        };
        sections.insert(name, delta);
    }
    Ok(sections)
}

fn string(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| EddyError::Checkpoint("a name is not UTF-8".into()))
}

fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u64(m.id).u64(m.epoch).u64(m.created_unix_ms);
    e.u64(m.bytes_written);
    e.u64(m.catalog.len() as u64);
    for ddl in &m.catalog {
        e.bytes(ddl.as_bytes());
    }
    e.u64(m.chains.len() as u64);
    for (name, chain) in &m.chains {
        e.bytes(name.as_bytes())
            .u64(chain.base_bytes)
            .u64(chain.delta_bytes)
            .u64(chain.files.len() as u64);
        for f in &chain.files {
            e.u64(*f);
        }
    }
    e.u64(m.files.len() as u64);
    for (id, file) in &m.files {
        e.u64(*id)
            .bytes(file.path.as_bytes())
            .u64(file.bytes)
            .u32(file.crc32);
    }
    e.u64(m.meta.watermarks.len() as u64);
    for (name, w) in &m.meta.watermarks {
        e.bytes(name.as_bytes()).i64(*w);
    }
    e.u64(m.meta.readers.len() as u64);
    for (name, position) in &m.meta.readers {
        e.bytes(name.as_bytes());
        match position {
            ReaderPosition::Generator { next } => {
                e.u8(0).u64(*next);
            }
            ReaderPosition::Kafka {
                next_offsets,
                event_times,
            } => {
                e.u8(1);
                for map in [next_offsets, event_times] {
                    e.u64(map.len() as u64);
                    for (partition, value) in map {
                        e.i64(i64::from(*partition)).i64(*value);
                    }
                }
            }
        }
    }
    e.u64(m.meta.table_lsns.len() as u64);
    for (name, lsn) in &m.meta.table_lsns {
        e.bytes(name.as_bytes()).u64(*lsn);
    }
    // Format 3.
    e.u64(m.tables.len() as u64);
    for (name, id) in &m.tables {
        e.bytes(name.as_bytes()).u32(*id);
    }
    e.u32(m.next_table_id);
    e.u64(m.runs.len() as u64);
    for run in &m.runs {
        e.u64(run.id)
            .bytes(run.path.as_bytes())
            .u64(run.bytes)
            .u64(run.tables.len() as u64);
        for (table, entries, bytes) in &run.tables {
            e.u32(*table).u64(*entries).u64(*bytes);
        }
    }
    e.finish()
}

/// A manifest of format `version`.
fn decode_manifest(payload: &[u8], version: u32) -> Result<Manifest> {
    let mut d = Decoder::new(payload);
    let id = d.u64()?;
    let epoch = d.u64()?;
    let created_unix_ms = d.u64()?;
    let bytes_written = d.u64()?;
    let mut catalog = Vec::new();
    for _ in 0..d.u64()? {
        catalog.push(string(d.bytes()?)?);
    }
    let mut chains = BTreeMap::new();
    for _ in 0..d.u64()? {
        let name = string(d.bytes()?)?;
        let base_bytes = d.u64()?;
        let delta_bytes = d.u64()?;
        let mut files = Vec::new();
        for _ in 0..d.u64()? {
            files.push(d.u64()?);
        }
        chains.insert(
            name,
            Chain {
                files,
                base_bytes,
                delta_bytes,
            },
        );
    }
    let mut files = BTreeMap::new();
    for _ in 0..d.u64()? {
        let id = d.u64()?;
        let path = string(d.bytes()?)?;
        let bytes = d.u64()?;
        let crc32 = d.u32()?;
        files.insert(id, DataFile { path, bytes, crc32 });
    }
    let mut meta = CheckpointMeta::default();
    for _ in 0..d.u64()? {
        let name = string(d.bytes()?)?;
        meta.watermarks.insert(name, d.i64()?);
    }
    for _ in 0..d.u64()? {
        let name = string(d.bytes()?)?;
        let position = match d.u8()? {
            0 => ReaderPosition::Generator { next: d.u64()? },
            1 => {
                let mut maps = [BTreeMap::new(), BTreeMap::new()];
                for map in &mut maps {
                    for _ in 0..d.u64()? {
                        let partition = d.i64()? as i32;
                        map.insert(partition, d.i64()?);
                    }
                }
                let [next_offsets, event_times] = maps;
                ReaderPosition::Kafka {
                    next_offsets,
                    event_times,
                }
            }
            other => {
                return Err(EddyError::Checkpoint(format!(
                    "unknown source position kind {other}"
                )))
            }
        };
        meta.readers.insert(name, position);
    }
    // Version 1 manifests end here.
    if version >= 2 && !d.is_empty() {
        for _ in 0..d.u64()? {
            let name = string(d.bytes()?)?;
            meta.table_lsns.insert(name, d.u64()?);
        }
    }
    let mut tables = BTreeMap::new();
    let mut next_table_id = 0;
    let mut runs = Vec::new();
    if version >= 3 {
        for _ in 0..d.u64()? {
            let name = string(d.bytes()?)?;
            tables.insert(name, d.u32()?);
        }
        next_table_id = d.u32()?;
        for _ in 0..d.u64()? {
            let id = d.u64()?;
            let path = string(d.bytes()?)?;
            let bytes = d.u64()?;
            let counted = (0..d.u64()?)
                .map(|_| Ok((d.u32()?, d.u64()?, d.u64()?)))
                .collect::<Result<Vec<_>>>()?;
            runs.push(RunRef {
                id,
                path,
                bytes,
                tables: counted,
            });
        }
    }
    Ok(Manifest {
        id,
        epoch,
        created_unix_ms,
        catalog,
        chains,
        files,
        meta,
        bytes_written,
        tables,
        next_table_id,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(epoch: u64, states: Vec<(&str, StateDelta)>) -> Capture {
        Capture {
            epoch,
            states: states
                .into_iter()
                .map(|(n, d)| (n.to_string(), d))
                .collect(),
            meta: CheckpointMeta::default(),
        }
    }

    fn delta<K: AsRef<[u8]>, V: AsRef<[u8]>>(full: bool, entries: &[(K, Option<V>)]) -> StateDelta {
        let mut delta = StateDelta::new(full);
        for (key, value) in entries {
            match value {
                Some(value) => delta.put(key, value),
                None => delta.delete(key),
            }
        }
        delta
    }

    /// Writes checkpoint `id` (of epoch `id`, no catalog) of `states`.
    async fn write_states(
        store: &CheckpointStore,
        id: u64,
        previous: Option<&Manifest>,
        states: Vec<(&str, StateDelta)>,
    ) -> Manifest {
        store
            .write(id, previous, capture(id, states), vec![])
            .await
            .unwrap()
    }

    /// A restore reads large entries (a view's logged rows: a MiB each) a
    /// few at a time, however many entries a piece may hold.
    #[tokio::test]
    async fn a_restored_table_of_large_entries_is_read_in_pieces_of_bytes() {
        let store = CheckpointStore::in_memory().unwrap();
        let value = vec![7u8; 1 << 20];
        let entries: Vec<(Vec<u8>, Option<&[u8]>)> = (0..20u64)
            .map(|i| (i.to_be_bytes().to_vec(), Some(value.as_slice())))
            .collect();
        write_states(&store, 1, None, vec![("log", delta(true, &entries))]).await;
        let (_, mut restored) = store.latest().await.unwrap().unwrap();
        let mut pieces = Vec::new();
        restored
            .take("log")
            .for_each_piece(|piece| {
                pieces.push(piece.len());
                Ok(())
            })
            .unwrap();
        assert_eq!(pieces.iter().sum::<usize>(), 20);
        assert!(pieces.iter().all(|&n| n <= 8), "{pieces:?}");
    }

    fn restored_keys(restored: &mut RestoredState, name: &str) -> Vec<Vec<u8>> {
        restored.take_entries(name).unwrap().into_keys().collect()
    }

    /// A delta past its memory share sorts what it holds into runs on
    /// disk; read back (and written to a checkpoint) it is the last value
    /// of each key as captured, deletes included, and the scratch files go
    /// with it.
    #[tokio::test]
    async fn a_delta_larger_than_memory_spills_sorted_runs_with_the_same_entries() {
        let mut spilled = StateDelta {
            spill_at: Some(256),
            ..StateDelta::new(false)
        };
        let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut seed = 3u64;
        for i in 0..3000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("key{:03}", (seed >> 33) % 400).into_bytes();
            if (seed >> 20) % 5 == 0 {
                spilled.delete(&key);
                model.insert(key, None);
            } else {
                let value = format!("value {i}").into_bytes();
                spilled.put(&key, &value);
                model.insert(key, Some(value));
            }
        }
        assert!(spilled.spilled.len() > 10, "{} runs", spilled.spilled.len());
        assert!(spilled.entries().next().unwrap().is_err());
        let dirs: Vec<_> = spilled
            .spill_stores
            .iter()
            .map(|s| s.dir().to_path_buf())
            .collect();
        let mut read = BTreeMap::new();
        spilled
            .for_each_sorted(|key, value| {
                assert!(read
                    .insert(key.to_vec(), value.map(<[u8]>::to_vec))
                    .is_none());
                Ok(())
            })
            .unwrap();
        assert_eq!(read, model);

        let store = CheckpointStore::in_memory().unwrap();
        let base: Vec<(Vec<u8>, Option<&str>)> =
            model.keys().map(|k| (k.clone(), Some("old"))).collect();
        let first = write_states(&store, 1, None, vec![("t", delta(true, &base))]).await;
        write_states(&store, 2, Some(&first), vec![("t", spilled)]).await;
        let (_, mut restored) = store.latest().await.unwrap().unwrap();
        let live: BTreeMap<Vec<u8>, Vec<u8>> = model
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        assert_eq!(restored.take_entries("t").unwrap(), live);
        assert!(dirs.iter().all(|d| !d.exists()), "scratch runs removed");
    }

    #[tokio::test]
    async fn incremental_checkpoints_restore_the_latest_state() {
        let store = CheckpointStore::in_memory().unwrap();
        let first = store
            .write(
                1,
                None,
                capture(
                    10,
                    vec![("a", delta(true, &[("k1", Some("v1")), ("k2", Some("v2"))]))],
                ),
                vec!["CREATE TABLE a (x INT)".into()],
            )
            .await
            .unwrap();
        assert_eq!(first.runs.len(), 1);
        // Two entries of a 4-byte table id, a 2-byte key and a 2-byte value.
        assert_eq!(first.state_table_bytes()["a"], 16);
        let second = store
            .write(
                2,
                Some(&first),
                capture(
                    20,
                    vec![("a", delta(false, &[("k1", None), ("k3", Some("v3"))]))],
                ),
                first.catalog.clone(),
            )
            .await
            .unwrap();
        // Unchanged state writes no run.
        let third = store
            .write(
                3,
                Some(&second),
                capture(30, vec![("a", delta::<&str, &str>(false, &[]))]),
                vec![],
            )
            .await
            .unwrap();
        // (It may take in a merge the second one started.)
        assert!(
            !third.runs.iter().any(|r| r.id == 3 << 16),
            "{:?}",
            third.runs
        );
        let (manifest, mut restored) = store.latest().await.unwrap().unwrap();
        assert_eq!(manifest.id, 3);
        assert_eq!(restored.epoch, 30);
        assert_eq!(
            restored_keys(&mut restored, "a"),
            vec![b"k2".to_vec(), b"k3".to_vec()]
        );
    }

    /// Many checkpoints of several tables (whole and incremental captures,
    /// deletes, a table dropped and one added) agree with a model after
    /// each one, through merges; runs stay few; a remote store's runs are
    /// downloaded again when its local cache lost them.
    #[tokio::test]
    async fn checkpoints_merge_runs_and_agree_with_a_model() {
        let store = CheckpointStore::in_memory().unwrap();
        let mut model: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        let mut previous: Option<Manifest> = None;
        // Whether a merge run in the background was taken in.
        let mut adopted = false;
        for id in 1..=40u64 {
            let mut states = Vec::new();
            for table in ["big", "small", "late"] {
                let exists = match table {
                    "late" => id >= 20,
                    "small" => id < 30,
                    _ => true,
                };
                if !exists {
                    model.remove(table);
                    continue;
                }
                let known = previous
                    .as_ref()
                    .is_some_and(|m| m.tables.contains_key(table));
                // Whole now and then, as after a failed checkpoint.
                let full = !known || id % 17 == 0;
                let entries = model.entry(table.to_string()).or_default();
                if full {
                    entries.clear();
                }
                let mut changes = Vec::new();
                let count = if table == "big" { 3000 } else { 20 };
                for i in 0..count {
                    let k = ((id * 7919 + i * 31) % 5000).to_be_bytes().to_vec();
                    if (i + id) % 5 == 0 {
                        entries.remove(&k);
                        changes.push((k, None));
                    } else {
                        let v = format!("{table}-{id}-{i}").into_bytes();
                        entries.insert(k.clone(), v.clone());
                        changes.push((k, Some(v)));
                    }
                }
                if full {
                    // A whole capture writes what is there.
                    changes = entries
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect();
                }
                states.push((table, delta(full, &changes)));
            }
            let manifest = write_states(&store, id, previous.as_ref(), states).await;
            assert!(
                manifest.runs.len() <= MAX_RUNS,
                "{} runs",
                manifest.runs.len()
            );
            adopted |= manifest.runs.iter().any(|r| r.id & 0xffff == 2);
            if id % 10 == 0 {
                if id == 30 {
                    // The cache lost everything: the store still has it.
                    let _ = std::fs::remove_dir_all(store.local_path("runs"));
                }
                let (_, mut restored) = store.latest().await.unwrap().unwrap();
                let mut back: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
                for name in manifest.tables.keys() {
                    // Read as a restore reads it: a piece at a time.
                    let mut entries = BTreeMap::new();
                    let table = restored.take(name).with_piece(7);
                    table
                        .for_each_piece(|piece| {
                            assert!((1..=7).contains(&piece.len()));
                            entries.extend(piece);
                            Ok(())
                        })
                        .unwrap();
                    back.insert(name.clone(), entries);
                }
                assert_eq!(back, model, "after checkpoint {id}");
            }
            previous = Some(manifest);
        }
        assert!(adopted, "no background merge was taken in");
        let last = previous.unwrap();
        assert!(!last.tables.contains_key("small"));
        assert!(last.state_table_bytes()["big"] > 0);
    }

    #[tokio::test]
    async fn a_damaged_run_falls_back_to_the_previous_checkpoint() {
        let dir = std::env::temp_dir().join(format!("eddy-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = CheckpointStore::open(dir.to_str().unwrap()).unwrap();
        let first = write_states(
            &store,
            1,
            None,
            vec![("s", delta(true, &[("k", Some("1"))]))],
        )
        .await;
        let states = vec![("s", delta(false, &[("k", Some("2"))]))];
        let second = write_states(&store, 2, Some(&first), states).await;
        // Flip one byte of a block of a run only checkpoint 2 names.
        let run = second
            .runs
            .iter()
            .find(|r| !first.runs.contains(r))
            .unwrap();
        let path = dir.join(&run.path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[14] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (manifest, mut restored) = store.latest().await.unwrap().unwrap();
        assert_eq!(manifest.id, 1);
        assert_eq!(
            restored.take_entries("s").unwrap()[b"k".as_slice()],
            b"1".to_vec()
        );
        // A truncated manifest is skipped the same way.
        let manifest_path = dir.join("checkpoints").join(format!("{:020}.manifest", 1));
        let bytes = std::fs::read(&manifest_path).unwrap();
        std::fs::write(&manifest_path, &bytes[..bytes.len() - 3]).unwrap();
        let error = store.latest().await.unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A format-2 checkpoint (a data file of sections and a manifest of
    /// chains, as eddy wrote before runs) restores, and the first
    /// checkpoint after it captures every table whole into a run.
    #[tokio::test]
    async fn a_format_2_checkpoint_restores_and_upgrades() {
        let store = CheckpointStore::in_memory().unwrap();
        let mut payload = Encoder::new();
        payload.u64(1).bytes(b"t").u8(1).u64(2);
        payload.bytes(b"k1").u8(1).bytes(b"v1");
        payload.bytes(b"k2").u8(1).bytes(b"v2");
        let data = envelope_of_version(DATA_MAGIC, 2, &payload.bytes);
        let file = DataFile {
            path: format!("state/{:020}.data", 7),
            bytes: data.len() as u64,
            crc32: crc32(&data),
        };
        store.put(&file.path, data).await.unwrap();
        let old = Manifest {
            id: 7,
            epoch: 70,
            created_unix_ms: 0,
            catalog: vec!["CREATE TABLE t (x INT)".into()],
            chains: BTreeMap::from([(
                "t".to_string(),
                Chain {
                    files: vec![7],
                    base_bytes: 1,
                    delta_bytes: 0,
                },
            )]),
            files: BTreeMap::from([(7, file)]),
            meta: CheckpointMeta::default(),
            bytes_written: 0,
            tables: BTreeMap::new(),
            next_table_id: 0,
            runs: Vec::new(),
        };
        let encoded = envelope_of_version(MANIFEST_MAGIC, 2, &encode_manifest(&old));
        store
            .put(&format!("checkpoints/{:020}.manifest", 7), encoded)
            .await
            .unwrap();
        let (manifest, mut restored) = store.latest().await.unwrap().unwrap();
        assert_eq!((manifest.id, restored.epoch), (7, 70));
        assert_eq!(manifest.catalog, old.catalog);
        assert_eq!(
            restored_keys(&mut restored, "t"),
            vec![b"k1".to_vec(), b"k2".to_vec()]
        );
        assert!(manifest.next_request().wants_full("t"));
        let states = vec![("t", delta(true, &[("k1", Some("v1"))]))];
        let next = write_states(&store, 8, Some(&manifest), states).await;
        assert!(next.chains.is_empty() && next.runs.len() == 1);
        let (_, mut restored) = store.latest().await.unwrap().unwrap();
        assert_eq!(restored_keys(&mut restored, "t"), vec![b"k1".to_vec()]);
    }

    #[tokio::test]
    async fn a_snapshot_keeps_its_runs() {
        let store = CheckpointStore::in_memory().unwrap();
        let first = write_states(
            &store,
            1,
            None,
            vec![("s", delta(true, &[("k", Some("1"))]))],
        )
        .await;
        store.save_snapshot("before", &first).await.unwrap();
        let mut previous = first;
        // Later checkpoints delete the runs only the first one named.
        for id in 2..=6 {
            let states = vec![("s", delta(true, &[("k", Some(id.to_string()))]))];
            previous = write_states(&store, id, Some(&previous), states).await;
        }
        let (manifest, mut restored) = store.load_snapshot("before").await.unwrap();
        assert!(manifest
            .runs
            .iter()
            .all(|r| r.path.starts_with("snapshots/before/")));
        assert_eq!(
            restored.take_entries("s").unwrap()[b"k".as_slice()],
            b"1".to_vec()
        );
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let mut bytes = envelope(MANIFEST_MAGIC, b"payload");
        bytes[8..12].copy_from_slice(&(STATE_FORMAT_VERSION + 1).to_le_bytes());
        let error = open_envelope(MANIFEST_MAGIC, &bytes, "m")
            .unwrap_err()
            .to_string();
        let newer = format!("format version {}", STATE_FORMAT_VERSION + 1);
        assert!(error.contains(&newer), "{error}");
        assert!(
            error.contains(&format!("up to {STATE_FORMAT_VERSION}")),
            "{error}"
        );
    }
}
