//! Nexmark: every query as a materialized view over N events, each in a
//! child process, beside DataFusion's batch answer and Flink's figures.
//! The harness is `eddy::bench::nexmark` (also `eddy bench nexmark`); see
//! its docs for what is measured and how.
//!
//! `cargo bench --bench nexmark`, with settings from the environment:
//! - `EDDY_BENCH_EVENTS`: events per query run (default 1,000,000);
//! - `EDDY_BENCH_QUERIES`: e.g. `q0,q5` (default all, q0 to q22);
//! - `EDDY_BENCH_SOURCE=kafka`: events written to and read from Kafka
//!   (broker `EDDY_TEST_KAFKA`, default 127.0.0.1:19092;
//!   `scripts/kafka.sh start`);
//! - `EDDY_BENCH_BASELINE=0`: no batch baseline (it holds every event in
//!   memory; for long runs);
//! - `EDDY_BENCH_CHECKPOINT_MS`: checkpoints during the run (default none;
//!   measure long runs' memory with them on);
//! - `EDDY_BENCH_WORKERS`: worker counts, e.g. `1,2` for the scaling from
//!   one worker to two (default 1).
//!
//! Output: a table, and JSON in `$CARGO_TARGET_DIR/nexmark-<source>.json`
//! (or under `target/`) with the core count, the commit and the source.

use std::path::PathBuf;

use eddy::bench::nexmark::{self, Options, Source};

mod common;
use common::env_number;

fn main() {
    if nexmark::run_child_if_asked() {
        return;
    }
    let mut options = Options::all(env_number("EDDY_BENCH_EVENTS", 1_000_000));
    if let Ok(list) = std::env::var("EDDY_BENCH_QUERIES") {
        options.queries = list.split(',').map(|q| q.trim().to_string()).collect();
    }
    if std::env::var("EDDY_BENCH_SOURCE").is_ok_and(|s| s == "kafka") {
        options.source = Source::Kafka {
            bootstrap: std::env::var("EDDY_TEST_KAFKA")
                .unwrap_or_else(|_| "127.0.0.1:19092".to_string()),
        };
    }
    options.baseline = std::env::var("EDDY_BENCH_BASELINE").map_or(true, |b| b != "0");
    options.checkpoint_interval =
        std::time::Duration::from_millis(env_number("EDDY_BENCH_CHECKPOINT_MS", 0));
    if let Ok(list) = std::env::var("EDDY_BENCH_WORKERS") {
        options.workers = list
            .split(',')
            .map(|w| {
                w.trim()
                    .parse()
                    .expect("EDDY_BENCH_WORKERS: numbers, e.g. 1,2")
            })
            .collect();
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    options.json_path = PathBuf::from(format!("{target}/nexmark-{}.json", options.source.name()));
    if let Err(e) = nexmark::run(&options) {
        eprintln!("nexmark: {e}");
        std::process::exit(1);
    }
}
