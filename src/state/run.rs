//! Sorted runs: the immutable files that hold state tables on disk.
//!
//! A run is one state table's changes as of one moment, sorted by key:
//! puts, point deletes, and range deletes (`[start, end)` tombstones). A
//! newer run hides what older runs say about a key: its own entry for the
//! key if it has one, else a range tombstone of its covering the key. A run
//! is written once (to a temporary name, synced, then renamed) and never
//! changed; merging runs writes a new one. So a checkpoint can name runs and
//! copy only the new ones, and a reader can go on reading a run while a
//! merge replaces it.
//!
//! Layout:
//!
//! ```text
//! header  "EDDYRUN\0" | format version u32
//! blocks  entries, about BLOCK_BYTES of them | crc32 u32 of the entries
//!         entry: varint shared | varint suffix len | varint value len + 1
//!                (0: a delete) | key suffix | value
//! meta    entries u64 | index: count, (bytes(first key), offset, len)*
//!         | bloom: hashes u32, bytes(bits)
//!         | tombstones: count, (bytes(start), bytes(end))*
//!         | groups: count, (bytes(key prefix), entries u64, bytes u64)*
//! footer  meta offset u64 | meta len u64 | crc32(meta) u32 | "EDDYRUN\0"
//! ```
//!
//! A key is stored as the bytes it shares with the previous key of its
//! block and the rest (state keys share long prefixes: a window's end, a
//! join key). Every block and the meta carry a CRC-32: a damaged run is an
//! error naming the file, never a wrong answer or a panic.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::codec::{crc32, Decoder, Encoder};
use crate::error::{EddyError, Result};

const RUN_MAGIC: &[u8; 8] = b"EDDYRUN\0";
const RUN_FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: u64 = 12;
const FOOTER_BYTES: usize = 28;
/// A block is closed once its entries pass this many bytes: small enough
/// that a point lookup reads little, large enough that the index stays a
/// small fraction of the run.
const BLOCK_BYTES: usize = 4096;
/// Bloom filter bits per key and hash functions: about 1% false positives.
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_HASHES: u32 = 7;

/// What a run says about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The key's value as of this run.
    Put(Vec<u8>),
    /// Deleted (a point delete, or a range tombstone of the run).
    Deleted,
    /// The run says nothing: ask older runs.
    Absent,
}

/// A key and its value as a run holds it (`None`: deleted).
pub type RunEntry = (Vec<u8>, Option<Vec<u8>>);

/// A block's place in the file.
#[derive(Debug, Clone)]
struct BlockHandle {
    first_key: Vec<u8>,
    offset: u64,
    len: u64,
}

/// An open run: its index, bloom filter and tombstones in memory (small),
/// its blocks read from the file on demand.
#[derive(Debug)]
pub struct Run {
    id: u64,
    path: PathBuf,
    file: File,
    entries: u64,
    file_bytes: u64,
    index: Vec<BlockHandle>,
    bloom: Bloom,
    /// Sorted by start and not overlapping (merged when written).
    tombstones: Vec<(Vec<u8>, Vec<u8>)>,
    groups: Vec<GroupStats>,
    /// A scratch run's file goes with the run ([`RunWriter::scratch`]).
    remove_on_drop: bool,
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The entries of a run whose keys start with one prefix (a state table's
/// id, in a checkpoint's runs): how many, and their key and value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    pub prefix: Vec<u8>,
    pub entries: u64,
    pub bytes: u64,
}

impl Run {
    /// Opens run `id` at `path`, checking its footer and meta.
    pub fn open(id: u64, path: &Path) -> Result<Self> {
        let damaged = |why: String| {
            EddyError::Checkpoint(format!("state run {} is damaged: {why}", path.display()))
        };
        let file = File::open(path).map_err(|e| {
            EddyError::Checkpoint(format!("cannot open state run {}: {e}", path.display()))
        })?;
        let file_bytes = file
            .metadata()
            .map_err(|e| EddyError::Checkpoint(format!("{}: {e}", path.display())))?
            .len();
        if file_bytes < HEADER_BYTES + FOOTER_BYTES as u64 {
            return Err(damaged(format!("{file_bytes} bytes is too short")));
        }
        let header = read_exact_at(&file, path, 0, HEADER_BYTES as usize)?;
        if &header[..8] != RUN_MAGIC {
            return Err(damaged("not an eddy state run (bad magic)".into()));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version > RUN_FORMAT_VERSION {
            return Err(EddyError::Checkpoint(format!(
                "state run {} has format version {version}, but this eddy reads versions up to \
                 {RUN_FORMAT_VERSION}: run a newer eddy",
                path.display()
            )));
        }
        let footer = read_exact_at(&file, path, file_bytes - FOOTER_BYTES as u64, FOOTER_BYTES)?;
        let mut d = Decoder::new(&footer);
        let (meta_offset, meta_len, meta_crc) = (d.u64()?, d.u64()?, d.u32()?);
        if d.raw(8)? != RUN_MAGIC
            || meta_offset.checked_add(meta_len) != Some(file_bytes - FOOTER_BYTES as u64)
        {
            return Err(damaged("bad footer (truncated?)".into()));
        }
        let meta = read_exact_at(&file, path, meta_offset, meta_len as usize)?;
        if crc32(&meta) != meta_crc {
            return Err(damaged("meta checksum mismatch".into()));
        }
        let mut d = Decoder::new(&meta);
        let entries = d.u64()?;
        let blocks = d.u64()?;
        let mut index = Vec::with_capacity(blocks.min(1 << 20) as usize);
        for _ in 0..blocks {
            let first_key = d.bytes()?.to_vec();
            let (offset, len) = (d.u64()?, d.u64()?);
            if offset.checked_add(len).is_none_or(|end| end > meta_offset) {
                return Err(damaged(format!("block at {offset} runs past the blocks")));
            }
            index.push(BlockHandle {
                first_key,
                offset,
                len,
            });
        }
        let hashes = d.u32()?;
        let bits = d.bytes()?.to_vec();
        let tombstones = (0..d.u64()?)
            .map(|_| Ok((d.bytes()?.to_vec(), d.bytes()?.to_vec())))
            .collect::<Result<Vec<_>>>()?;
        let groups = (0..d.u64()?)
            .map(|_| {
                Ok(GroupStats {
                    prefix: d.bytes()?.to_vec(),
                    entries: d.u64()?,
                    bytes: d.u64()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            id,
            path: path.to_path_buf(),
            file,
            entries,
            file_bytes,
            index,
            bloom: Bloom { bits, hashes },
            tombstones,
            groups,
            remove_on_drop: false,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries (puts and point deletes) in the run.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The file's size.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The run's range tombstones, sorted and not overlapping.
    pub fn tombstones(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.tombstones
    }

    /// Entries and bytes by key prefix, when the writer counted them
    /// ([`RunWriter::group_stats_by`]), in key order.
    pub fn group_stats(&self) -> &[GroupStats] {
        &self.groups
    }

    /// Whether a range tombstone of this run covers `key`.
    pub fn covers(&self, key: &[u8]) -> bool {
        covered(&self.tombstones, key)
    }

    /// What this run says about `key`.
    pub fn get(&self, key: &[u8]) -> Result<Lookup> {
        if self.bloom.may_contain(key) {
            if let Some(block) = self.block_for(key) {
                let entries = self.read_block(block)?;
                let mut cursor = BlockCursor::new(&entries);
                // Keys compared in the cursor's buffer: no copy per entry.
                while let Some(value) = cursor.advance()? {
                    match cursor.key.as_slice().cmp(key) {
                        Ordering::Less => continue,
                        Ordering::Equal => {
                            return Ok(value.map_or(Lookup::Deleted, |v| Lookup::Put(v.to_vec())))
                        }
                        Ordering::Greater => break,
                    }
                }
            }
        }
        Ok(if self.covers(key) {
            Lookup::Deleted
        } else {
            Lookup::Absent
        })
    }

    /// The block that would hold `key`: the last one starting at or before it.
    fn block_for(&self, key: &[u8]) -> Option<usize> {
        let after = self
            .index
            .partition_point(|b| b.first_key.as_slice() <= key);
        after.checked_sub(1)
    }

    fn read_block(&self, block: usize) -> Result<Vec<u8>> {
        let handle = &self.index[block];
        let mut bytes = read_exact_at(&self.file, &self.path, handle.offset, handle.len as usize)?;
        let split = bytes.len().checked_sub(4).ok_or_else(|| {
            EddyError::Checkpoint(format!(
                "state run {} is damaged: block {block} is too short",
                self.path.display()
            ))
        })?;
        let stored = u32::from_le_bytes(bytes[split..].try_into().expect("4 bytes"));
        bytes.truncate(split);
        if crc32(&bytes) != stored {
            return Err(EddyError::Checkpoint(format!(
                "state run {} is damaged: block {block} checksum mismatch",
                self.path.display()
            )));
        }
        Ok(bytes)
    }

    /// Reads every block and checks its checksum (an error names the
    /// file and the block); holds one block at a time.
    pub fn verify(&self) -> Result<()> {
        (0..self.index.len()).try_for_each(|block| self.read_block(block).map(drop))
    }

    /// The run's entries with keys in `[start, end)`, in key order (point
    /// deletes as `None`; range tombstones are not entries).
    pub fn range(self: &Arc<Self>, start: Bound<&[u8]>, end: Bound<&[u8]>) -> RunRange {
        let first_block = match start {
            Bound::Included(key) | Bound::Excluded(key) => self.block_for(key).unwrap_or(0),
            Bound::Unbounded => 0,
        };
        RunRange {
            run: self.clone(),
            next_block: first_block,
            block: Vec::new(),
            block_position: 0,
            previous_key: Vec::new(),
            start: bound_to_owned(start),
            end: bound_to_owned(end),
            done: false,
        }
    }
}

/// A run's entries in a key range, read block by block.
#[derive(Debug)]
pub struct RunRange {
    run: Arc<Run>,
    next_block: usize,
    block: Vec<u8>,
    block_position: usize,
    previous_key: Vec<u8>,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    done: bool,
}

impl RunRange {
    fn next_entry(&mut self) -> Result<Option<RunEntry>> {
        while !self.done {
            if self.block_position >= self.block.len() {
                if self.next_block >= self.run.index.len() {
                    self.done = true;
                    break;
                }
                self.block = self.run.read_block(self.next_block)?;
                self.next_block += 1;
                self.block_position = 0;
                self.previous_key.clear();
            }
            let mut cursor = BlockCursor {
                bytes: &self.block,
                position: self.block_position,
                key: std::mem::take(&mut self.previous_key),
            };
            let entry = cursor.next_entry()?;
            self.block_position = cursor.position;
            self.previous_key = cursor.key;
            let Some((key, value)) = entry else { continue };
            let before_start = match &self.start {
                Bound::Included(s) => key.as_slice() < s.as_slice(),
                Bound::Excluded(s) => key.as_slice() <= s.as_slice(),
                Bound::Unbounded => false,
            };
            if before_start {
                continue;
            }
            let past_end = match &self.end {
                Bound::Included(e) => key.as_slice() > e.as_slice(),
                Bound::Excluded(e) => key.as_slice() >= e.as_slice(),
                Bound::Unbounded => false,
            };
            if past_end {
                self.done = true;
                break;
            }
            return Ok(Some((key, value.map(<[u8]>::to_vec))));
        }
        Ok(None)
    }
}

impl Iterator for RunRange {
    type Item = Result<RunEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(entry) => entry.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A key and its value as a block holds it.
type BlockEntry<'a> = (Vec<u8>, Option<&'a [u8]>);

/// Decodes one block's entries in order.
struct BlockCursor<'a> {
    bytes: &'a [u8],
    position: usize,
    /// The previous key (the next one shares a prefix with it).
    key: Vec<u8>,
}

impl<'a> BlockCursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            position: 0,
            key: Vec::new(),
        }
    }

    /// The next key (owned: it is rebuilt from the previous one) and value.
    fn next_entry(&mut self) -> Result<Option<BlockEntry<'a>>> {
        Ok(self.advance()?.map(|value| (self.key.clone(), value)))
    }

    /// Moves to the next entry: its key in `self.key`, its value returned
    /// (`Some(None)`: a delete; `None`: the block ended).
    #[allow(clippy::option_option)]
    fn advance(&mut self) -> Result<Option<Option<&'a [u8]>>> {
        if self.position >= self.bytes.len() {
            return Ok(None);
        }
        let mut d = Decoder::new(&self.bytes[self.position..]);
        let shared = d.varint()? as usize;
        let suffix_len = d.varint()? as usize;
        let value_len = d.varint()?;
        if shared > self.key.len() {
            return Err(EddyError::Checkpoint(format!(
                "state run block: a key shares {shared} bytes with a key of {}",
                self.key.len()
            )));
        }
        self.key.truncate(shared);
        self.key.extend_from_slice(d.raw(suffix_len)?);
        let value = match value_len {
            0 => None,
            n => Some(d.raw((n - 1) as usize)?),
        };
        self.position += d.position();
        Ok(Some(value))
    }
}

fn read_exact_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset).map_err(|e| {
        EddyError::Checkpoint(format!(
            "reading {len} bytes at {offset} of state run {}: {e}",
            path.display()
        ))
    })?;
    Ok(bytes)
}

fn bound_to_owned(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether one of `tombstones` (sorted by start, not overlapping) covers
/// `key`.
pub fn covered(tombstones: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
    let after = tombstones.partition_point(|(start, _)| start.as_slice() <= key);
    after
        .checked_sub(1)
        .is_some_and(|i| key < tombstones[i].1.as_slice())
}

/// Sorts `[start, end)` ranges and merges those that overlap or touch;
/// empty ones go.
pub fn merge_ranges(mut ranges: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    ranges.retain(|(start, end)| start < end);
    ranges.sort();
    let mut merged: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Writes a run: entries in strictly increasing key order, then
/// [`RunWriter::finish`]. Until then the file has a temporary name.
pub struct RunWriter {
    path: PathBuf,
    temporary: PathBuf,
    /// `None` once finished.
    out: Option<BufWriter<File>>,
    offset: u64,
    block: Encoder,
    block_first_key: Option<Vec<u8>>,
    previous_key: Option<Vec<u8>>,
    index: Vec<BlockHandle>,
    hashes: Vec<u64>,
    entries: u64,
    tombstones: Vec<(Vec<u8>, Vec<u8>)>,
    /// Count entries by the first this many bytes of their keys (0: not).
    group_prefix_len: usize,
    groups: Vec<GroupStats>,
    /// Sync the file before naming it (not for scratch runs).
    sync: bool,
    renamed: bool,
}

impl RunWriter {
    /// Starts run file `path` (written as `path.tmp` until finished),
    /// creating its directory if need be.
    pub fn create(path: &Path) -> Result<Self> {
        let temporary = Self::temporary_path(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
        }
        let file = File::create(&temporary).map_err(|e| write_error(&temporary, e))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(RUN_MAGIC)
            .and_then(|()| out.write_all(&RUN_FORMAT_VERSION.to_le_bytes()))
            .map_err(|e| write_error(&temporary, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            temporary,
            out: Some(out),
            offset: HEADER_BYTES,
            block: Encoder::new(),
            block_first_key: None,
            previous_key: None,
            index: Vec::new(),
            hashes: Vec::new(),
            entries: 0,
            tombstones: Vec::new(),
            group_prefix_len: 0,
            groups: Vec::new(),
            sync: true,
            renamed: false,
        })
    }

    /// A scratch run (spilled state): its file is named without syncing
    /// it first (it need not survive a crash) and removed when the last
    /// handle to the run goes (a merge that replaced it, a table dropped).
    pub fn scratch(mut self) -> Self {
        self.sync = false;
        self
    }

    /// Where run `path` is written until it is finished.
    pub fn temporary_path(path: &Path) -> PathBuf {
        path.with_extension("run.tmp")
    }

    /// Counts entries and bytes by the first `prefix_len` bytes of their
    /// keys, kept in the run's meta ([`Run::group_stats`]).
    pub fn group_stats_by(mut self, prefix_len: usize) -> Self {
        self.group_prefix_len = prefix_len;
        self
    }

    /// Adds `key` with `value` (`None`: a delete). Keys must increase.
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let shared = match &self.previous_key {
            Some(previous) if previous.as_slice() >= key => {
                return Err(crate::internal!(
                    "state run {}: keys out of order",
                    self.path.display()
                ))
            }
            Some(previous) if self.block_first_key.is_some() => {
                previous.iter().zip(key).take_while(|(a, b)| a == b).count()
            }
            _ => 0,
        };
        if self.block_first_key.is_none() {
            self.block_first_key = Some(key.to_vec());
        }
        self.block
            .varint(shared as u64)
            .varint((key.len() - shared) as u64)
            .varint(value.map_or(0, |v| v.len() as u64 + 1))
            .raw(&key[shared..]);
        if let Some(value) = value {
            self.block.raw(value);
        }
        self.hashes.push(key_hash(key));
        self.entries += 1;
        if self.group_prefix_len > 0 {
            let prefix = &key[..self.group_prefix_len.min(key.len())];
            let bytes = (key.len() + value.map_or(0, <[u8]>::len)) as u64;
            match self.groups.last_mut() {
                Some(group) if group.prefix == prefix => {
                    group.entries += 1;
                    group.bytes += bytes;
                }
                _ => self.groups.push(GroupStats {
                    prefix: prefix.to_vec(),
                    entries: 1,
                    bytes,
                }),
            }
        }
        match &mut self.previous_key {
            Some(previous) => {
                previous.clear();
                previous.extend_from_slice(key);
            }
            None => self.previous_key = Some(key.to_vec()),
        }
        if self.block.bytes.len() >= BLOCK_BYTES {
            self.close_block()?;
        }
        Ok(())
    }

    /// Deletes `[start, end)` from older runs.
    pub fn delete_range(&mut self, start: &[u8], end: &[u8]) {
        self.tombstones.push((start.to_vec(), end.to_vec()));
    }

    fn close_block(&mut self) -> Result<()> {
        let Some(first_key) = self.block_first_key.take() else {
            return Ok(());
        };
        let entries = std::mem::take(&mut self.block.bytes);
        let crc = crc32(&entries);
        let out = self.out.as_mut().expect("an unfinished run");
        out.write_all(&entries)
            .and_then(|()| out.write_all(&crc.to_le_bytes()))
            .map_err(|e| write_error(&self.temporary, e))?;
        let len = entries.len() as u64 + 4;
        self.index.push(BlockHandle {
            first_key,
            offset: self.offset,
            len,
        });
        self.offset += len;
        self.block.bytes = entries;
        self.block.bytes.clear();
        Ok(())
    }

    /// Entries added so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Whether the run would say nothing (no entry, no tombstone).
    pub fn is_empty(&self) -> bool {
        self.entries == 0 && self.tombstones.is_empty()
    }

    /// Writes the meta and footer, syncs the file and gives it its name;
    /// returns it opened as run `id`.
    pub fn finish(mut self, id: u64) -> Result<Run> {
        self.close_block()?;
        let bloom = Bloom::build(&self.hashes);
        let mut meta = Encoder::new();
        meta.u64(self.entries).u64(self.index.len() as u64);
        for block in &self.index {
            meta.bytes(&block.first_key)
                .u64(block.offset)
                .u64(block.len);
        }
        meta.u32(bloom.hashes).bytes(&bloom.bits);
        let tombstones = merge_ranges(std::mem::take(&mut self.tombstones));
        meta.u64(tombstones.len() as u64);
        for (start, end) in &tombstones {
            meta.bytes(start).bytes(end);
        }
        meta.u64(self.groups.len() as u64);
        for group in &self.groups {
            meta.bytes(&group.prefix)
                .u64(group.entries)
                .u64(group.bytes);
        }
        let meta = meta.finish();
        let mut footer = Encoder::new();
        footer
            .u64(self.offset)
            .u64(meta.len() as u64)
            .u32(crc32(&meta))
            .raw(RUN_MAGIC);
        let mut out = self.out.take().expect("an unfinished run");
        out.write_all(&meta)
            .and_then(|()| out.write_all(&footer.finish()))
            .and_then(|()| out.flush())
            .map_err(|e| write_error(&self.temporary, e))?;
        let file = out
            .into_inner()
            .map_err(|e| write_error(&self.temporary, e.into_error()))?;
        if self.sync {
            file.sync_data()
                .map_err(|e| write_error(&self.temporary, e))?;
        }
        drop(file);
        std::fs::rename(&self.temporary, &self.path).map_err(|e| write_error(&self.path, e))?;
        self.renamed = true;
        let mut run = Run::open(id, &self.path)?;
        // Unsynced means scratch: see `Self::scratch`.
        run.remove_on_drop = !self.sync;
        Ok(run)
    }
}

impl Drop for RunWriter {
    fn drop(&mut self) {
        // An unfinished run leaves nothing behind.
        if !self.renamed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

fn write_error(path: &Path, e: std::io::Error) -> EddyError {
    let what = format!("writing state run {}: {e}", path.display());
    if e.raw_os_error() == Some(28) {
        EddyError::DiskFull(what)
    } else {
        EddyError::Checkpoint(what)
    }
}

/// A Bloom filter over a run's keys: a lookup of a key the run lacks
/// reads no block (mostly).
#[derive(Debug)]
struct Bloom {
    bits: Vec<u8>,
    hashes: u32,
}

impl Bloom {
    fn build(key_hashes: &[u64]) -> Self {
        let bytes = (key_hashes.len() * BLOOM_BITS_PER_KEY).div_ceil(8).max(8);
        let mut bloom = Self {
            bits: vec![0; bytes],
            hashes: BLOOM_HASHES,
        };
        for &hash in key_hashes {
            for bit in bloom.bit_positions(hash) {
                bloom.bits[bit / 8] |= 1 << (bit % 8);
            }
        }
        bloom
    }

    fn bit_positions(&self, hash: u64) -> impl Iterator<Item = usize> {
        // Double hashing: h1 + i * h2 for the i-th function.
        let bits = (self.bits.len() * 8) as u64;
        let (h1, h2) = (hash, (hash >> 32) | 1);
        (0..u64::from(self.hashes))
            .map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
    }

    fn may_contain(&self, key: &[u8]) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        self.bit_positions(key_hash(key))
            .all(|bit| self.bits[bit / 8] & (1 << (bit % 8)) != 0)
    }
}

/// A 64-bit hash of a key that every eddy computes alike (it is stored in
/// files: a process-seeded or version-dependent hash would not do).
fn key_hash(key: &[u8]) -> u64 {
    let mut hash = 0x9E37_79B9_7F4A_7C15 ^ key.len() as u64;
    for chunk in key.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        hash ^= hash >> 32;
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eddy-run-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key(i: u32) -> Vec<u8> {
        // Long shared prefixes, as state keys have.
        format!("window-0000/group-{i:08}").into_bytes()
    }

    #[test]
    fn a_run_answers_lookups_and_ranges() {
        let dir = dir("lookups");
        let path = dir.join("1.run");
        let mut writer = RunWriter::create(&path).unwrap().group_stats_by(7);
        for i in 0..5000 {
            let value = (i % 3 != 0).then(|| format!("value {i}").into_bytes());
            writer.add(&key(i * 2), value.as_deref()).unwrap();
        }
        writer.delete_range(&key(20_000), &key(30_000));
        writer.delete_range(&key(25_000), &key(35_000));
        assert!(writer.add(&key(0), Some(b"late")).is_err());
        let run = Arc::new(writer.finish(1).unwrap());
        assert_eq!(run.entries(), 5000);
        // Keys "window-0000/..." share their first 7 bytes.
        let groups = run.group_stats();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            (groups[0].prefix.as_slice(), groups[0].entries),
            (&b"window-"[..], 5000)
        );
        assert!(run.index.len() > 10, "several blocks");
        assert_eq!(run.get(&key(4)).unwrap(), Lookup::Put(b"value 2".to_vec()));
        assert_eq!(run.get(&key(6)).unwrap(), Lookup::Deleted);
        assert_eq!(run.get(&key(5)).unwrap(), Lookup::Absent);
        assert_eq!(run.get(b"a").unwrap(), Lookup::Absent);
        assert_eq!(run.get(&key(26_000)).unwrap(), Lookup::Deleted);
        assert_eq!(run.get(&key(34_999)).unwrap(), Lookup::Deleted);
        assert_eq!(run.get(&key(35_000)).unwrap(), Lookup::Absent);
        assert_eq!(run.tombstones(), &[(key(20_000), key(35_000))]);
        let keys = |start: Bound<&[u8]>, end: Bound<&[u8]>| -> Vec<Vec<u8>> {
            run.range(start, end).map(|e| e.unwrap().0).collect()
        };
        let (k100, k200) = (key(100), key(200));
        assert_eq!(
            keys(Bound::Included(&k100), Bound::Excluded(&k200)),
            (50..100).map(|i| key(i * 2)).collect::<Vec<_>>()
        );
        assert_eq!(
            keys(Bound::Excluded(&k100), Bound::Included(&k200)),
            (51..=100).map(|i| key(i * 2)).collect::<Vec<_>>()
        );
        assert_eq!(keys(Bound::Unbounded, Bound::Unbounded).len(), 5000);
        // The file reopens as it was written.
        let again = Run::open(1, &path).unwrap();
        assert_eq!(
            again.get(&key(4)).unwrap(),
            Lookup::Put(b"value 2".to_vec())
        );
        assert!(!dir.join("1.run.tmp").exists());
    }

    #[test]
    fn a_damaged_run_is_an_error_naming_it() {
        let dir = dir("damaged");
        let path = dir.join("2.run");
        let mut writer = RunWriter::create(&path).unwrap();
        for i in 0..2000 {
            writer.add(&key(i), Some(b"v")).unwrap();
        }
        drop(writer.finish(2).unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let run = Run::open(2, &path).unwrap();
        let error = run.get(&key(1)).unwrap_err().to_string();
        assert!(
            error.contains("checksum") && error.contains("2.run"),
            "{error}"
        );
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(Run::open(2, &path).is_err());
        std::fs::write(&path, b"not a run at all, not at all, not at all, no").unwrap();
        assert!(Run::open(2, &path)
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }

    #[test]
    fn an_empty_run_and_one_of_tombstones_only() {
        let dir = dir("empty");
        let writer = RunWriter::create(&dir.join("3.run")).unwrap();
        assert!(writer.is_empty());
        let run = Arc::new(writer.finish(3).unwrap());
        assert_eq!(run.get(b"k").unwrap(), Lookup::Absent);
        assert_eq!(run.range(Bound::Unbounded, Bound::Unbounded).count(), 0);
        let mut writer = RunWriter::create(&dir.join("4.run")).unwrap();
        writer.delete_range(b"a", b"c");
        let run = writer.finish(4).unwrap();
        assert_eq!(run.get(b"b").unwrap(), Lookup::Deleted);
        assert_eq!(run.get(b"c").unwrap(), Lookup::Absent);
    }

    #[test]
    fn ranges_merge_and_cover() {
        let r = |a: &str, b: &str| (a.as_bytes().to_vec(), b.as_bytes().to_vec());
        let merged = merge_ranges(vec![
            r("d", "f"),
            r("a", "b"),
            r("b", "c"),
            r("x", "x"),
            r("e", "g"),
        ]);
        assert_eq!(merged, vec![r("a", "c"), r("d", "g")]);
        assert!(covered(&merged, b"a") && covered(&merged, b"bz") && !covered(&merged, b"c"));
        assert!(covered(&merged, b"f") && !covered(&merged, b"g") && !covered(&merged, b"0"));
    }
}
