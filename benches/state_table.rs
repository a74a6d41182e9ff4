//! The state layer on its own: what reading state from disk costs against
//! reading it from memory, and how fast runs are written and merged, in
//! the same run (ratios, not wall-clock limits).
//!
//! `cargo bench --bench state_table` (keys from `EDDY_BENCH_KEYS`, default
//! 1000000; 16-byte keys and 48-byte values, as a windowed group key and
//! its accumulators). Runs go to a scratch directory under the system's
//! temporary directory.
//!
//! 1. Point lookups of random keys: all in memory, against all on disk
//!    (after `evict(0)`: sorted runs, a Bloom filter each), and lookups of
//!    keys that are not there (new keys: the Bloom filters answer).
//! 2. Writing: a flush of every key as one run (MB/s), and a merge of four
//!    runs of a quarter of the keys each.

use std::ops::Bound;
use std::time::Instant;

use eddy::state::table::{merge_runs, StateTable};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(i % 64).to_be_bytes());
    k[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    k
}

fn value(i: u64) -> [u8; 48] {
    let mut v = [7u8; 48];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Random key numbers below `n` (xorshift).
fn random(n: u64, count: usize) -> Vec<u64> {
    let mut state = 88_172_645_463_325_252u64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        })
        .collect()
}

/// Lookups per second of `keys` in `table` (each must find `found`).
fn lookups(table: &StateTable, keys: &[u64], found: bool) -> f64 {
    let started = Instant::now();
    for &i in keys {
        let got = table.peek(&key(i)).expect("lookup");
        assert_eq!(got.is_some(), found);
    }
    keys.len() as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let n = env_number("EDDY_BENCH_KEYS", 1_000_000);
    let probes = random(n, 200_000);
    let absent: Vec<u64> = probes.iter().map(|i| i + n).collect();
    let entry_bytes = 16 + 48;

    let store = eddy::state::memory::scratch_store().expect("a scratch directory");
    let mut table = StateTable::new(store.clone());
    for i in 0..n {
        table.put(&key(i), &value(i));
    }
    let in_memory = lookups(&table, &probes, true);

    let started = Instant::now();
    table.flush().expect("flush");
    let flush_seconds = started.elapsed().as_secs_f64();
    table.evict(0).expect("evict");
    assert_eq!(table.memory_bytes(), 0);
    let on_disk = lookups(&table, &probes, true);
    let new_keys = lookups(&table, &absent, false);
    let disk_bytes = table.disk_bytes();

    // Four runs of a quarter of the keys each (keys ordered within each).
    let mut quarters = Vec::new();
    for part in 0..4 {
        let mut quarter = StateTable::new(store.clone());
        for i in (part..n).step_by(4) {
            quarter.put(&key(i), &value(i));
        }
        quarters.push(quarter.flush().expect("flush").expect("a run"));
    }
    let (id, writer) = store.create().expect("a run");
    let started = Instant::now();
    let merged = merge_runs(&quarters, true, writer, id).expect("merge");
    let merge_seconds = started.elapsed().as_secs_f64();
    assert_eq!(merged.entries(), n);
    let merged = std::sync::Arc::new(merged);
    assert_eq!(
        merged.range(Bound::Unbounded, Bound::Unbounded).count() as u64,
        n
    );

    let mb = (n * entry_bytes) as f64 / 1e6;
    println!("state_table: {n} keys of 16 B with 48 B values ({mb:.0} MB of entries)");
    println!("  lookups in memory        {:>12.0} /s", in_memory);
    println!(
        "  lookups on disk          {:>12.0} /s   {:.2}x of memory",
        on_disk,
        on_disk / in_memory
    );
    println!(
        "  lookups of new keys      {:>12.0} /s   {:.2}x of memory (Bloom filters)",
        new_keys,
        new_keys / in_memory
    );
    println!(
        "  flush of every key       {:>12.1} MB/s  ({:.1} B per entry on disk)",
        mb / flush_seconds,
        disk_bytes as f64 / n as f64
    );
    println!(
        "  merge of 4 runs          {:>12.1} MB/s  ({:.2}x of the flush)",
        mb / merge_seconds,
        flush_seconds / merge_seconds
    );
}
