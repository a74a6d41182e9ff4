//! The memory limit for state, and where state that does not fit goes.
//!
//! `--memory-limit` bounds the keyed state operators hold in memory: after
//! each command the runtime adds up what its spillable operators hold
//! ([`crate::stream::Operator::memory_bytes`]) and, over the limit, asks
//! each to shrink to its share of it ([`crate::stream::Operator::shrink`]);
//! they move cold entries to sorted runs in a scratch directory
//! ([`scratch_store`]) and read them back when a change needs them.
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

/// A fresh scratch directory for one state table's spilled entries,
/// removed with the store.
pub fn scratch_store() -> Result<Arc<RunStore>> {
    let root = SCRATCH_ROOT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("eddy-spill-{}", std::process::id())));
    let n = NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed);
    RunStore::scratch(&root.join(format!("{n:08}")))
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
