//! Table writes with the write-ahead log against the same without it, in
//! one run (ratios, not wall-clock limits).
//!
//! `cargo bench --bench table_writes` (`EDDY_BENCH_SINGLE` single-row
//! INSERTs per client, default 2000, from 8 clients; `EDDY_BENCH_BATCHES`
//! INSERTs of 10,000 rows, default 40, from one client).
//!
//! Three servers, each with checkpoints only at DDL (so the log is all
//! that makes a write durable) and a grouped view over the table:
//! - `no log`: checkpoints in memory, no write-ahead log (the baseline:
//!   what eddy did before the log, acknowledging writes that a crash loses);
//! - `log, sync`: the default, each write acknowledged once synced (group
//!   commit: one fdatasync for every write waiting);
//! - `log, synchronous_commit = off`: acknowledged once written.
//!
//! Each is measured twice, alternating; the best of two counts.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

mod common;
use common::{connect, env_number, fresh_dir, run};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NoLog,
    LogSync,
    LogAsync,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoLog => "no log",
            Mode::LogSync => "log, sync",
            Mode::LogAsync => "log, synchronous_commit = off",
        }
    }
}

const CLIENTS: u64 = 8;

async fn connect_in(server: &eddy::Server, mode: Mode) -> Client {
    let client = connect(server).await;
    if mode == Mode::LogAsync {
        run(&client, "SET synchronous_commit = off").await;
    }
    client
}

/// (single-row INSERTs per second from 8 clients, rows per second in
/// batches) for one fresh server in `mode`.
async fn measure(mode: Mode, round: usize, single: u64, batches: u64) -> (f64, f64) {
    let mut options = eddy::ServerOptions::new("127.0.0.1:0".parse().expect("address"));
    options.checkpoint_interval = Duration::ZERO;
    if mode != Mode::NoLog {
        let dir = fresh_dir(&format!("writes-{round}"));
        options.checkpoint_location = Some(dir.join("checkpoints").to_string_lossy().into_owned());
        options.wal_dir = Some(dir.join("wal"));
    }
    let server = eddy::Server::start_with_options(options)
        .await
        .expect("eddy starts");
    let client = connect_in(&server, mode).await;
    run(
        &client,
        "CREATE TABLE t (k BIGINT PRIMARY KEY, g BIGINT, v BIGINT);
         CREATE MATERIALIZED VIEW by_g AS SELECT g, count(*) AS n, sum(v) AS s FROM t GROUP BY g",
    )
    .await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = connect_in(&server, mode).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..single {
                let k = c * single + i;
                client
                    .simple_query(&format!("INSERT INTO t VALUES ({k}, {}, {k})", k % 100))
                    .await
                    .expect("insert");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let single_rate = (CLIENTS * single) as f64 / started.elapsed().as_secs_f64();

    let rows_per_batch = 10_000;
    let base = 10_000_000;
    let started = Instant::now();
    for b in 0..batches {
        let from = base + b * rows_per_batch;
        run(
            &client,
            &format!(
                "INSERT INTO t SELECT v, v % 100, v * 3 FROM generate_series({from}, {}) AS s(v)",
                from + rows_per_batch - 1
            ),
        )
        .await;
    }
    let batch_rate = (batches * rows_per_batch) as f64 / started.elapsed().as_secs_f64();
    server.stop().await;
    (single_rate, batch_rate)
}

fn main() {
    let single = env_number("EDDY_BENCH_SINGLE", 2000);
    let batches = env_number("EDDY_BENCH_BATCHES", 40);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let modes = [Mode::NoLog, Mode::LogSync, Mode::LogAsync];
        let mut best = [(0.0f64, 0.0f64); 3];
        for round in 0..2 {
            for (i, mode) in modes.iter().enumerate() {
                let (s, b) = measure(*mode, round * 3 + i, single, batches).await;
                println!(
                    "round {round} {:32} single-row INSERTs from {CLIENTS} clients: {s:>9.0}/s   batched: {b:>10.0} rows/s",
                    mode.name()
                );
                best[i].0 = best[i].0.max(s);
                best[i].1 = best[i].1.max(b);
            }
        }
        println!();
        println!("best of two, and against no log (same run):");
        for (i, mode) in modes.iter().enumerate() {
            println!(
                "{:32} single-row: {:>9.0}/s ({:.2}x)   batched: {:>10.0} rows/s ({:.2}x)",
                mode.name(),
                best[i].0,
                best[i].0 / best[0].0,
                best[i].1,
                best[i].1 / best[0].1
            );
        }
    });
}
