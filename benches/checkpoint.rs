//! Checkpoints: what one costs against the state size and the share of it
//! that changed, how long a recovery takes against rebuilding the same
//! state, and throughput with periodic checkpoints on against off, all in
//! the same run (ratios, not wall-clock limits).
//!
//! `cargo bench --bench checkpoint` (largest table from `EDDY_BENCH_ROWS`,
//! default 400000; Nexmark events from `EDDY_BENCH_EVENTS`, default
//! 2000000). Checkpoints go to a local directory under the system temp dir.
//!
//! 1. For tables of S/16, S/4 and S rows (each with a grouped view over
//!    it): a whole checkpoint, then checkpoints after updating 0.1%, 1% and
//!    10% of the rows: duration and bytes written, and bytes as a share of
//!    the whole.
//! 2. Recovery: a restart from the last checkpoint of each size, against
//!    the baseline of building the same table and view again from SQL.
//! 3. Throughput: a bounded Nexmark bid stream into a windowed aggregate
//!    and an updating aggregate, with checkpoints every second against
//!    checkpoints only at DDL (interval 0), alternating, best of two each.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

mod common;
use common::{connect, env_number, first_value, fresh_dir, run};

struct Eddy {
    server: eddy::Server,
    client: Client,
}

async fn start(dir: &Path, interval: Duration) -> (Eddy, Duration) {
    let started = Instant::now();
    let mut options = eddy::ServerOptions::new("127.0.0.1:0".parse().expect("address"));
    options.checkpoint_location = Some(dir.to_string_lossy().into_owned());
    options.checkpoint_interval = interval;
    let server = eddy::Server::start_with_options(options)
        .await
        .expect("eddy starts");
    let took = started.elapsed();
    let client = connect(&server).await;
    (Eddy { server, client }, took)
}

/// Takes a checkpoint; returns its duration and bytes written.
async fn checkpoint(eddy: &Eddy) -> (Duration, u64) {
    run(&eddy.client, "CHECKPOINT").await;
    let stats = eddy.server.checkpoint_stats();
    let last = stats.last_completed().expect("a checkpoint");
    (last.duration, last.bytes_written)
}

/// A table and a grouped view over it. (`min`/`max`/`DISTINCT` keep a
/// multiset of values per group, written whole when the group changes: with
/// them a checkpoint costs changed groups × group size, not changed rows.)
const SETUP: &str = "CREATE TABLE t (id BIGINT PRIMARY KEY, g BIGINT, v BIGINT);
     CREATE MATERIALIZED VIEW by_g AS SELECT g, count(*) AS n, sum(v) AS total FROM t GROUP BY g";

async fn fill(client: &Client, rows: u64) {
    let chunk = 50_000;
    let mut from = 1;
    while from <= rows {
        let to = (from + chunk - 1).min(rows);
        run(
            client,
            &format!(
                "INSERT INTO t SELECT value AS id, value % 1000 AS g, value * 7 AS v FROM generate_series({from}, {to})"
            ),
        )
        .await;
        from = to + 1;
    }
    run(client, "FLUSH").await;
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

async fn checkpoint_cost(sizes: &[u64]) -> Vec<(u64, PathBuf)> {
    println!("\n1. checkpoint cost against state size and change");
    println!(
        "{:>9} {:>9} {:>11} {:>11} {:>10}",
        "rows", "changed", "ms", "MB written", "of whole"
    );
    let mut dirs = Vec::new();
    for &rows in sizes {
        let dir = fresh_dir(&format!("cost-{rows}"));
        let (eddy, _) = start(&dir, Duration::ZERO).await;
        run(&eddy.client, SETUP).await;
        fill(&eddy.client, rows).await;
        let (whole_time, whole_bytes) = checkpoint(&eddy).await;
        println!(
            "{rows:>9} {:>9} {:>11.1} {:>11.2} {:>9.1}%",
            "whole",
            whole_time.as_secs_f64() * 1e3,
            mb(whole_bytes),
            100.0
        );
        for per_mille in [1u64, 10, 100] {
            let changed = rows * per_mille / 1000;
            run(
                &eddy.client,
                &format!("UPDATE t SET v = v + 1 WHERE id <= {changed}"),
            )
            .await;
            let (time, bytes) = checkpoint(&eddy).await;
            println!(
                "{rows:>9} {changed:>9} {:>11.1} {:>11.3} {:>9.2}%",
                time.as_secs_f64() * 1e3,
                mb(bytes),
                100.0 * bytes as f64 / whole_bytes as f64
            );
        }
        eddy.server.stop().await;
        dirs.push((rows, dir));
    }
    dirs
}

async fn recovery(dirs: &[(u64, PathBuf)]) {
    println!("\n2. recovery against rebuilding the same state from SQL");
    println!(
        "{:>9} {:>12} {:>12} {:>8}",
        "rows", "recovery ms", "rebuild ms", "ratio"
    );
    for (rows, dir) in dirs {
        let (eddy, recovery) = start(dir, Duration::ZERO).await;
        let recovered = first_value(&eddy.client, "SELECT sum(n) FROM by_g")
            .await
            .unwrap_or_default();
        assert_eq!(recovered, rows.to_string(), "recovered view");
        eddy.server.stop().await;
        let scratch = fresh_dir(&format!("rebuild-{rows}"));
        let (eddy, _) = start(&scratch, Duration::ZERO).await;
        let started = Instant::now();
        run(&eddy.client, SETUP).await;
        fill(&eddy.client, *rows).await;
        let rebuild = started.elapsed();
        eddy.server.stop().await;
        println!(
            "{rows:>9} {:>12.1} {:>12.1} {:>8.3}",
            recovery.as_secs_f64() * 1e3,
            rebuild.as_secs_f64() * 1e3,
            recovery.as_secs_f64() / rebuild.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Events per second through a bounded Nexmark bid stream.
async fn nexmark_rate(events: u64, interval: Duration) -> (f64, u64) {
    let dir = fresh_dir("throughput");
    let (eddy, _) = start(&dir, interval).await;
    let started = Instant::now();
    run(
        &eddy.client,
        &format!(
            "CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
             WITH (connector = 'nexmark', nexmark.max.events = '{events}', nexmark.max.emit.speed = 'true');
             CREATE MATERIALIZED VIEW per_auction AS
               SELECT auction, count(*) AS n, max(price) AS top FROM bid GROUP BY auction;
             CREATE MATERIALIZED VIEW per_window AS
               SELECT auction, window_start, count(*) AS n, sum(price) AS total
               FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start;
             CREATE MATERIALIZED VIEW seen AS SELECT count(*) AS n FROM bid"
        ),
    )
    .await;
    // Bids are 46 of every 50 events.
    let bids = events / 50 * 46 + (events % 50).min(46);
    loop {
        let n: u64 = first_value(&eddy.client, "SELECT n FROM seen")
            .await
            .unwrap_or_default()
            .parse()
            .unwrap_or(0);
        if n >= bids {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let checkpoints = eddy.server.checkpoint_stats().completed;
    eddy.server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    (bids as f64 / elapsed.as_secs_f64(), checkpoints)
}

async fn throughput(events: u64) {
    println!("\n3. throughput with checkpoints every second against only at DDL");
    let mut on: f64 = 0.0;
    let mut off: f64 = 0.0;
    let mut taken = 0;
    for _ in 0..2 {
        let (rate, checkpoints) = nexmark_rate(events, Duration::from_secs(1)).await;
        on = on.max(rate);
        taken = taken.max(checkpoints);
        off = off.max(nexmark_rate(events, Duration::ZERO).await.0);
    }
    println!("checkpoints on : {on:>12.0} bids/s ({taken} checkpoints in the run)");
    println!("checkpoints off: {off:>12.0} bids/s");
    println!("ratio on/off   : {:>12.3}", on / off);
}

fn main() {
    let rows = env_number("EDDY_BENCH_ROWS", 400_000);
    let events = env_number("EDDY_BENCH_EVENTS", 2_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(async {
        let dirs = checkpoint_cost(&[rows / 16, rows / 4, rows]).await;
        recovery(&dirs).await;
        throughput(events).await;
    });
}
