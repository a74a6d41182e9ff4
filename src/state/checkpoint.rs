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
//! state/<id>.data            the state written by checkpoint <id>
//! checkpoints/<id>.manifest  names the data files a complete checkpoint needs
//! snapshots/<name>/...       a named snapshot: its own manifest and files
//! ```
//!
//! Invariants:
//! - A checkpoint is complete only once its manifest exists; the manifest is
//!   written last, after every data file it names, in one `put` (the local
//!   store writes a temporary file and renames it).
//! - Checkpoints are incremental: a data file holds, per state table, either
//!   all of it or only the entries changed since the previous checkpoint. A
//!   manifest names, per state table, the chain of data files to read, the
//!   first one full. A chain that has grown as large as its base is
//!   rewritten whole (compaction), so recovery reads at most about twice the
//!   state.
//! - Every file carries a magic number, the format version and a CRC-32 of
//!   its contents; recovery refuses a file that does not check out, and
//!   falls back to the previous complete checkpoint.
//! - Data files are deleted only when no retained manifest names them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::codec::{crc32, Decoder, Encoder};
use crate::error::{EddyError, Result};

/// The version of the checkpoint format this eddy writes. It reads every
/// version up to this one and refuses newer ones by name. 2: manifests end
/// with each table's write-ahead log position.
pub const STATE_FORMAT_VERSION: u32 = 2;

const DATA_MAGIC: &[u8; 8] = b"EDDYDATA";
const MANIFEST_MAGIC: &[u8; 8] = b"EDDYMANI";
/// Complete checkpoints kept; older ones are deleted with the files only
/// they name.
const RETAINED_CHECKPOINTS: usize = 3;
/// A chain this long is rewritten whole.
const MAX_CHAIN: usize = 16;
/// Chains whose deltas stay under this many bytes are never compacted.
const MIN_COMPACTION_BYTES: u64 = 256 * 1024;

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
#[derive(Debug, Default, Clone)]
pub struct StateDelta {
    pub full: bool,
    chunks: Vec<Bytes>,
    current: Vec<u8>,
    len: u64,
}

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
        if self.current.len() >= CHUNK_BYTES {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if !self.current.is_empty() {
            let mut full = std::mem::take(&mut self.current);
            // The buffer doubled past the chunk size: keep what it holds,
            // not twice that, while the checkpoint is written.
            full.shrink_to_fit();
            self.chunks.push(Bytes::from(full));
        }
    }

    /// The number of entries.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoded size of the entries.
    fn encoded_len(&self) -> u64 {
        let chunks: usize = self.chunks.iter().map(|c| c.len()).sum();
        (chunks + self.current.len()) as u64
    }

    /// Adds the entries of `other` after these.
    pub fn append(&mut self, mut other: StateDelta) {
        self.cut();
        other.cut();
        self.chunks.append(&mut other.chunks);
        self.len += other.len;
    }

    /// The entries in order: `(key, Some(value))` or `(key, None)`.
    pub fn entries(&self) -> impl Iterator<Item = Result<(&[u8], Option<&[u8]>)>> {
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
        for entry in self.entries() {
            match entry.expect("entries this process encoded") {
                (key, Some(value)) => map.insert(key.to_vec(), value.to_vec()),
                (key, None) => map.remove(key),
            };
        }
        map
    }

    /// The encoded entries, to be written as they are.
    fn into_chunks(mut self) -> Vec<Bytes> {
        self.cut();
        self.chunks
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
        let changed = changed.take();
        self.full |= changed.is_all();
        if self.full {
            all(self);
        } else {
            for key in changed.keys() {
                each(self, key);
            }
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

    /// [`StateDelta::put_changed`] for a state table kept by window end;
    /// a changed key carries its window end.
    pub fn put_changed_by_window<V>(
        &mut self,
        state: &super::windowed::ByWindow<V>,
        changed: &mut super::Changed<(i64, std::sync::Arc<[u8]>)>,
        encode: impl Fn(&V, &mut Encoder),
    ) {
        self.put_changed_with(
            changed,
            |delta| {
                for (_, key, value) in state.iter() {
                    delta.put_encoded(key, value, &encode);
                }
            },
            |delta, (window, key)| match state.get(*window, key) {
                Some(value) => delta.put_encoded(key, value, &encode),
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
    /// State tables whose chains are due for compaction.
    pub compact: BTreeSet<String>,
}

impl CaptureRequest {
    /// Whether state table `name` is to be captured whole.
    pub fn wants_full(&self, name: &str) -> bool {
        self.all_full || !self.known.contains(name) || self.compact.contains(name)
    }
}

/// The data files one state table is read from, oldest (full) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub files: Vec<u64>,
    pub base_bytes: u64,
    pub delta_bytes: u64,
}

/// A data file named by a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// The record of one complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub id: u64,
    pub epoch: u64,
    pub created_unix_ms: u64,
    /// The DDL of every object, in creation order.
    pub catalog: Vec<String>,
    pub chains: BTreeMap<String, Chain>,
    pub files: BTreeMap<u64, DataFile>,
    pub meta: CheckpointMeta,
    /// Bytes this checkpoint wrote (its data file and manifest).
    pub bytes_written: u64,
}

impl Manifest {
    /// The request for the checkpoint after this one.
    pub fn next_request(&self) -> CaptureRequest {
        let compact = self
            .chains
            .iter()
            .filter(|(_, c)| {
                c.files.len() >= MAX_CHAIN || c.delta_bytes > c.base_bytes.max(MIN_COMPACTION_BYTES)
            })
            .map(|(name, _)| name.clone())
            .collect();
        CaptureRequest {
            all_full: false,
            known: self.chains.keys().cloned().collect(),
            compact,
        }
    }

    /// Bytes of state a recovery from this checkpoint reads.
    pub fn state_bytes(&self) -> u64 {
        self.files.values().map(|f| f.bytes).sum()
    }
}

/// A checkpoint read back: the catalog, every state table, the facts.
#[derive(Debug, Default)]
pub struct RestoredState {
    pub id: u64,
    pub epoch: u64,
    pub catalog: Vec<String>,
    pub states: HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    pub meta: CheckpointMeta,
}

impl RestoredState {
    /// Takes the entries of state table `name` (empty if it has none).
    pub fn take(&mut self, name: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.states.remove(name).unwrap_or_default()
    }
}

/// Checkpoint storage: a local directory or an object store URL.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: String,
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
        Ok(Self {
            store: Arc::from(store),
            root,
            location: location.to_string(),
        })
    }

    /// An in-memory store (for tests and `--no-checkpoints` runs).
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            root: Path::default(),
            location: "memory".into(),
        }
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

    /// Writes checkpoint `id` from `capture` on top of `previous`, then the
    /// manifest (last), then deletes what no retained checkpoint needs.
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
        // Which state tables go into the data file (an unchanged one keeps
        // its chain), and how many bytes each section takes: the file's
        // length comes first in it, and is known before anything is encoded.
        let mut chains = BTreeMap::new();
        let mut sections = Vec::new();
        let mut payload_len = 8u64; // the section count
        for (name, delta) in states {
            let previous_chain = previous.and_then(|m| m.chains.get(&name));
            let no_base = || {
                crate::internal!(
                    "state {name} has no previous checkpoint but was captured as a delta"
                )
            };
            if !delta.full && delta.is_empty() {
                chains.insert(name.clone(), previous_chain.ok_or_else(no_base)?.clone());
                continue;
            }
            let written = section_len(&name, &delta);
            payload_len += written;
            let chain = match (delta.full, previous_chain) {
                (true, _) => Chain {
                    files: vec![id],
                    base_bytes: written,
                    delta_bytes: 0,
                },
                (false, Some(chain)) => {
                    let mut chain = chain.clone();
                    chain.files.push(id);
                    chain.delta_bytes += written;
                    chain
                }
                (false, None) => return Err(no_base()),
            };
            chains.insert(name.clone(), chain);
            sections.push((name, delta));
        }
        let data_path = format!("state/{id:020}.data");
        let mut files = BTreeMap::new();
        let mut bytes_written = 0;
        if !sections.is_empty() {
            let mut data = ChunkedEnvelope::new(DATA_MAGIC, payload_len);
            data.encoder().u64(sections.len() as u64);
            for (name, delta) in sections {
                // Each entry is freed once encoded.
                encode_section(&mut data, &name, delta);
            }
            let (chunks, file) = data.finish()?;
            bytes_written += file.bytes;
            files.insert(
                id,
                DataFile {
                    path: data_path.clone(),
                    ..file
                },
            );
            self.put_chunks(&data_path, chunks).await?;
        }
        // Files of earlier checkpoints that the chains still read.
        let needed: BTreeSet<u64> = chains.values().flat_map(|c| c.files.clone()).collect();
        if let Some(previous) = previous {
            for file in &needed {
                if let Some(f) = previous.files.get(file) {
                    files.insert(*file, f.clone());
                }
            }
        }
        if let Some(missing) = needed.iter().find(|f| !files.contains_key(f)) {
            return Err(crate::internal!(
                "checkpoint {id} needs data file {missing} that no manifest names"
            ));
        }
        let mut manifest = Manifest {
            id,
            epoch,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            catalog,
            chains,
            files,
            meta,
            bytes_written,
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
        let payload = open_envelope(MANIFEST_MAGIC, &bytes, relative)?;
        decode_manifest(payload).map_err(|e| EddyError::Checkpoint(format!("{relative}: {e}")))
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

    /// Deletes manifests beyond the retained ones and data files that no
    /// retained manifest names.
    async fn collect_garbage(&self) -> Result<()> {
        let ids = self.manifest_ids("checkpoints").await?;
        let mut needed = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            let path = format!("checkpoints/{id:020}.manifest");
            if i < RETAINED_CHECKPOINTS {
                match self.read_manifest(&path).await {
                    Ok(m) => needed.extend(m.files.values().map(|f| f.path.clone())),
                    // Unreadable: it cannot be recovered from; keep its
                    // neighbours' files and leave it for inspection.
                    Err(_) => return Ok(()),
                }
            } else {
                self.delete(&path).await?;
            }
        }
        for path in self.list("state").await? {
            if !needed.contains(&path) {
                self.delete(&path).await?;
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

    /// Reads every state table of `manifest`.
    pub async fn load(&self, manifest: &Manifest) -> Result<RestoredState> {
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
            let payload = open_envelope(DATA_MAGIC, &bytes, &file.path)?;
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
        Ok(RestoredState {
            id: manifest.id,
            epoch: manifest.epoch,
            catalog: manifest.catalog.clone(),
            states,
            meta: manifest.meta.clone(),
        })
    }

    /// Copies checkpoint `manifest` to a named snapshot (a savepoint) that
    /// garbage collection never deletes.
    pub async fn save_snapshot(&self, name: &str, manifest: &Manifest) -> Result<()> {
        check_snapshot_name(name)?;
        let mut copy = manifest.clone();
        for file in copy.files.values_mut() {
            let bytes = self.get(&file.path).await?;
            let file_name = file.path.rsplit('/').next().unwrap_or(&file.path);
            let path = format!("snapshots/{name}/{file_name}");
            self.put(&path, bytes.to_vec()).await?;
            file.path = path;
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
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(magic);
    out.extend_from_slice(&STATE_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out
}

fn open_envelope<'a>(magic: &[u8; 8], bytes: &'a [u8], what: &str) -> Result<&'a [u8]> {
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
    Ok(payload)
}

/// The bytes [`encode_section`] writes for `delta`.
fn section_len(name: &str, delta: &StateDelta) -> u64 {
    (8 + name.len() + 1 + 8) as u64 + delta.encoded_len()
}

/// Encodes one state table's section: its header, then its entries' chunks
/// as they are.
fn encode_section(out: &mut ChunkedEnvelope, name: &str, delta: StateDelta) {
    out.encoder()
        .bytes(name.as_bytes())
        .u8(u8::from(delta.full))
        .u64(delta.len());
    for chunk in delta.into_chunks() {
        out.append(chunk);
    }
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

/// A file in the [`envelope`] format built in chunks as its payload is
/// encoded: no copy of the whole file and no doubling as a buffer grows,
/// so writing a large checkpoint needs its encoded size in memory once
/// (while the captured entries it encodes are freed as it goes). The
/// payload's length, which the header holds, is declared up front and
/// checked at the end.
struct ChunkedEnvelope {
    chunks: Vec<Bytes>,
    current: Encoder,
    /// Header bytes at the start of `current` (not payload).
    header: usize,
    declared_len: u64,
    payload_len: u64,
    payload_crc: crc32fast::Hasher,
    file_crc: crc32fast::Hasher,
}

/// The size at which a chunk is cut.
const CHUNK_BYTES: usize = 4 << 20;

impl ChunkedEnvelope {
    fn new(magic: &[u8; 8], payload_len: u64) -> Self {
        let mut current = Encoder::new();
        current.bytes.extend_from_slice(magic);
        current.u32(STATE_FORMAT_VERSION).u64(payload_len);
        Self {
            chunks: Vec::new(),
            header: current.bytes.len(),
            current,
            declared_len: payload_len,
            payload_len: 0,
            payload_crc: crc32fast::Hasher::new(),
            file_crc: crc32fast::Hasher::new(),
        }
    }

    /// Where the payload is appended.
    fn encoder(&mut self) -> &mut Encoder {
        &mut self.current
    }

    /// Appends an encoded chunk of the payload without copying it.
    fn append(&mut self, chunk: Bytes) {
        self.cut();
        self.payload_crc.update(&chunk);
        self.file_crc.update(&chunk);
        self.payload_len += chunk.len() as u64;
        self.chunks.push(chunk);
    }

    fn cut(&mut self) {
        if self.current.bytes.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.current.bytes);
        let payload = &bytes[self.header..];
        self.payload_crc.update(payload);
        self.payload_len += payload.len() as u64;
        self.file_crc.update(&bytes);
        self.header = 0;
        self.chunks.push(Bytes::from(bytes));
    }

    /// The file's chunks, and its size and CRC as a manifest names them
    /// (its path left empty).
    fn finish(mut self) -> Result<(Vec<Bytes>, DataFile)> {
        self.cut();
        if self.payload_len != self.declared_len {
            return Err(crate::internal!(
                "a checkpoint file's payload is {} bytes, but {} were declared",
                self.payload_len,
                self.declared_len
            ));
        }
        let trailer = self.payload_crc.finalize().to_le_bytes();
        self.file_crc.update(&trailer);
        self.chunks.push(Bytes::copy_from_slice(&trailer));
        let file = DataFile {
            path: String::new(),
            bytes: self.chunks.iter().map(|c| c.len() as u64).sum(),
            crc32: self.file_crc.finalize(),
        };
        Ok((self.chunks, file))
    }
}

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
            current: Vec::new(),
            len,
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
    e.finish()
}

fn decode_manifest(payload: &[u8]) -> Result<Manifest> {
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
    if !d.is_empty() {
        for _ in 0..d.u64()? {
            let name = string(d.bytes()?)?;
            meta.table_lsns.insert(name, d.u64()?);
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

    #[tokio::test]
    async fn incremental_chains_restore_the_latest_state() {
        let store = CheckpointStore::in_memory();
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
        assert_eq!(second.chains["a"].files, vec![1, 2]);
        // Unchanged state keeps its chain and writes nothing.
        let third = store
            .write(
                3,
                Some(&second),
                capture(30, vec![("a", delta::<&str, &str>(false, &[]))]),
                vec![],
            )
            .await
            .unwrap();
        assert!(third.files.keys().eq([1u64, 2].iter()));
        let (manifest, mut restored) = store.latest().await.unwrap().unwrap();
        assert_eq!(manifest.id, 3);
        assert_eq!(restored.epoch, 30);
        let a = restored.take("a");
        let keys: Vec<&[u8]> = a.keys().map(|k| k.as_slice()).collect();
        assert_eq!(keys, vec![b"k2".as_slice(), b"k3".as_slice()]);
    }

    /// A data file larger than a chunk (several sections, deletes, a full
    /// and a delta section) is written in pieces: on disk it is byte for
    /// byte the one-buffer format (so files of either kind read back), and
    /// it restores.
    #[tokio::test]
    async fn a_file_of_many_chunks_has_the_one_buffer_format() {
        let dir = std::env::temp_dir().join(format!("eddy-chunks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = CheckpointStore::open(dir.to_str().unwrap()).unwrap();
        let big: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..40_000u32)
            .map(|i| {
                let value = (i % 7 != 0).then(|| vec![(i % 251) as u8; 200 + (i % 50) as usize]);
                (i.to_be_bytes().to_vec(), value)
            })
            .collect();
        let first = store
            .write(
                1,
                None,
                capture(1, vec![("small", delta(true, &[("k", Some("v"))]))]),
                vec![],
            )
            .await
            .unwrap();
        let big_delta = delta(true, &big);
        let small = [(&b"k"[..], None), (&b"k2"[..], Some(&b"v2"[..]))];
        let states = vec![("big", big_delta.clone()), ("small", delta(false, &small))];
        // The expected file, encoded in one buffer.
        let mut payload = Encoder::new();
        payload.u64(states.len() as u64);
        type Entries<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;
        let sections: [(&str, bool, Entries); 2] = [
            (
                "big",
                true,
                big.iter().map(|(k, v)| (&k[..], v.as_deref())).collect(),
            ),
            ("small", false, small.to_vec()),
        ];
        for (name, full, entries) in &sections {
            payload
                .bytes(name.as_bytes())
                .u8(u8::from(*full))
                .u64(entries.len() as u64);
            for (key, value) in entries {
                payload.bytes(key);
                match value {
                    Some(value) => payload.u8(1).bytes(value),
                    None => payload.u8(0),
                };
            }
        }
        let expected = envelope(DATA_MAGIC, &payload.bytes);
        assert!(expected.len() > 2 * CHUNK_BYTES);

        let second = store
            .write(2, Some(&first), capture(2, states), vec![])
            .await
            .unwrap();
        let on_disk = std::fs::read(dir.join("state").join(format!("{:020}.data", 2))).unwrap();
        assert!(
            on_disk == expected,
            "the chunked file differs from the one-buffer format"
        );
        assert_eq!(second.files[&2].bytes, expected.len() as u64);
        assert_eq!(second.files[&2].crc32, crc32(&expected));
        assert_eq!(
            second.chains["big"].base_bytes,
            section_len("big", &big_delta)
        );
        assert!(
            big_delta.chunks.len() >= 2,
            "the delta spans several chunks"
        );

        let (_, mut restored) = store.latest().await.unwrap().unwrap();
        let big_back = restored.take("big");
        let kept: Vec<_> = big.iter().filter(|(_, v)| v.is_some()).collect();
        assert_eq!(big_back.len(), kept.len());
        for (key, value) in kept {
            assert_eq!(Some(&big_back[key.as_slice()]), value.as_ref());
        }
        let small = restored.take("small");
        assert_eq!(small.keys().collect::<Vec<_>>(), vec![&b"k2".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_damaged_file_falls_back_to_the_previous_checkpoint() {
        let dir = std::env::temp_dir().join(format!("eddy-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = CheckpointStore::open(dir.to_str().unwrap()).unwrap();
        let first = store
            .write(
                1,
                None,
                capture(1, vec![("s", delta(true, &[("k", Some("1"))]))]),
                vec![],
            )
            .await
            .unwrap();
        store
            .write(
                2,
                Some(&first),
                capture(2, vec![("s", delta(false, &[("k", Some("2"))]))]),
                vec![],
            )
            .await
            .unwrap();
        // Flip one byte of checkpoint 2's data file.
        let path = dir.join("state").join(format!("{:020}.data", 2));
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (manifest, mut restored) = store.latest().await.unwrap().unwrap();
        assert_eq!(manifest.id, 1);
        assert_eq!(restored.take("s")[b"k".as_slice()], b"1".to_vec());
        // A truncated manifest is skipped the same way.
        let manifest_path = dir.join("checkpoints").join(format!("{:020}.manifest", 1));
        let bytes = std::fs::read(&manifest_path).unwrap();
        std::fs::write(&manifest_path, &bytes[..bytes.len() - 3]).unwrap();
        let error = store.latest().await.unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
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
