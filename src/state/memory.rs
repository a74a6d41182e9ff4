//! The memory limit for state, and where state that does not fit goes.
//!
//! `--memory-limit` is the memory eddy aims to stay within; state gets
//! [`state_share`] of it. After each epoch the runtime adds up what its
//! spillable operators and views' rows hold
//! ([`crate::stream::Operator::spill_stats`], `RowSet::memory_bytes`)
//! and, over the state's share, asks each to shrink to its part of it
//! ([`shares`], [`crate::stream::Operator::shrink`]); they move cold
//! entries to sorted runs or files in a scratch directory
//! ([`scratch_store`], [`ScratchFile`]) and read them back when needed.
//!
//! The limit is the runtime's (`RuntimeHandle::start_with_memory_limit`);
//! the scratch root is process-wide. Scratch runs are a cache of what
//! memory could not hold, never a checkpoint: a restart clears them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::table::RunStore;
use crate::error::{EddyError, Result};

static SCRATCH_ROOT: Mutex<Option<PathBuf>> = Mutex::new(None);
static NEXT_SCRATCH: AtomicU64 = AtomicU64::new(0);

/// Makes `dir` the place for scratch runs, emptied first (what an
/// earlier process spilled there is of no use to this one).
pub fn set_scratch_root(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| {
            EddyError::Checkpoint(format!(
                "cannot empty spill directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        EddyError::Checkpoint(format!(
            "cannot create spill directory {}: {e}",
            dir.display()
        ))
    })?;
    *SCRATCH_ROOT.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
    Ok(())
}

/// A fresh path under the scratch root (the process's temporary
/// directory when none was set).
fn scratch_path(suffix: &str) -> PathBuf {
    let root = SCRATCH_ROOT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("eddy-spill-{}", std::process::id())));
    let n = NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed);
    root.join(format!("{n:08}{suffix}"))
}

/// A fresh scratch directory for one state table's spilled entries,
/// removed with the store.
pub fn scratch_store() -> Result<Arc<RunStore>> {
    RunStore::scratch(&scratch_path(""))
}

/// Where a piece of a [`ScratchFile`] is: `(offset, length)` in bytes.
pub type Span = (u64, u64);

/// A scratch file, written once by [`ScratchFile::create`] and then read
/// at any offset (from any thread); removed when dropped, so the last
/// snapshot holding a piece of it removes it. It holds no open file
/// between reads (a log spilled a piece at a time has many).
#[derive(Debug)]
pub struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    /// A new file holding `pieces` one after another; returns it and
    /// where each piece is.
    pub fn create<B: AsRef<[u8]>>(
        pieces: impl IntoIterator<Item = Result<B>>,
    ) -> Result<(Arc<Self>, Vec<Span>)> {
        use std::io::Write;
        let path = scratch_path(".spill");
        let failed = |path: &Path, e: std::io::Error| {
            EddyError::Checkpoint(format!("cannot write spill file {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| failed(&path, e))?;
        // Owned from here: an error below removes the file.
        let scratch = Self { path };
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut spans = Vec::new();
        let mut offset = 0u64;
        for piece in pieces {
            let piece = piece?;
            let piece = piece.as_ref();
            writer
                .write_all(piece)
                .map_err(|e| failed(&scratch.path, e))?;
            spans.push((offset, piece.len() as u64));
            offset += piece.len() as u64;
        }
        writer.flush().map_err(|e| failed(&scratch.path, e))?;
        drop(writer);
        Ok((Arc::new(scratch), spans))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `length` bytes at `offset`.
    pub fn read(&self, offset: u64, length: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0; length as usize];
        let file = std::fs::File::open(&self.path);
        file.and_then(|f| f.read_exact_at(&mut bytes, offset))
            .map_err(|e| {
                EddyError::Checkpoint(format!(
                    "cannot read spill file {} at {offset}: {e}",
                    self.path.display()
                ))
            })?;
        Ok(bytes)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Hands memory freed by spilling back to the system. glibc's allocator
/// keeps freed pages for reuse, so without this the process's resident
/// size would not fall when state moves to disk.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only releases free memory of the allocator's
        // own arenas; it takes no pointers and is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The machine's memory: the smaller of physical memory and the cgroup's
/// limit, when they can be read.
pub fn machine_bytes() -> Option<u64> {
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// What state may hold of a memory limit of `limit` bytes: half. The
/// rest is for what eddy works with besides (batches in flight, captures
/// being written, a quarter for ad hoc queries by default) and for what
/// the allocator keeps: measured on Nexmark, the process held about twice
/// the state it counted.
pub fn state_share(limit: usize) -> usize {
    limit / 2
}

/// The default limit: half of the machine's memory (4 GiB when it cannot
/// be read).
pub fn default_limit_bytes() -> u64 {
    machine_bytes().map_or(4 << 30, |bytes| bytes / 2)
}

/// Shares of `limit` for operators holding `held` bytes each: what each
/// is to shrink to so that all together hold at most three quarters of
/// the limit (the rest is room to grow before the next shrink). `None`
/// when they fit.
pub fn shares(limit: usize, held: &[usize]) -> Option<Vec<usize>> {
    let total: usize = held.iter().sum();
    if total <= limit {
        return None;
    }
    let target = limit / 4 * 3;
    Some(
        held.iter()
            .map(|&bytes| (bytes as u128 * target as u128 / total as u128) as usize)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_shrink_in_proportion_below_the_limit() {
        assert_eq!(shares(100, &[30, 60]), None);
        let shares = shares(100, &[100, 300]).unwrap();
        assert_eq!(shares, vec![18, 56]);
        assert!(shares.iter().sum::<usize>() <= 75);
        assert!(machine_bytes().is_some_and(|b| b > 0));
    }
}
