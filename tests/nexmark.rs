//! Every Nexmark query (q0–q22, `benches/nexmark/queries/`) as a
//! materialized view on the `nexmark` source, against the batch oracle.
//!
//! A bounded nexmark run is copied into views (`person_all`, `auction_all`,
//! `bid_all`: plain `SELECT *`); DataFusion's batch answer of the same query
//! over those copies is the oracle. Each query's view must converge to it
//! once the sources have ended; the `EMIT ON WINDOW CLOSE` variants must
//! hold exactly the windows the final watermark closed.

mod common;

use std::time::{Duration, Instant};

use common::{execute, query_text, sorted_rows, TestServer};
use eddy::bench::nexmark as shared;

const EVENTS: u64 = 30_000;
/// 1,000 events per second of event time: the run covers 30 s.
const EVENT_RATE: u64 = 1_000;

/// How a query's view is compared with the batch answer: `{}` is the query.
fn comparison(name: &str) -> &'static str {
    match name {
        // Processing-time windows differ between readers; their totals do not.
        "q12" => "SELECT sum(bid_count) AS bids, count(DISTINCT bidder) AS bidders FROM ({}) q",
        // Bids of equal price may swap places in an auction's top 10.
        "q19" => "SELECT auction, price, rank_number FROM ({}) q",
        _ => "SELECT * FROM ({}) q",
    }
}

/// Queries whose answer may be empty on this small run.
const MAY_BE_EMPTY: &[&str] = &["q14"];

/// Windowed aggregates with `EMIT ON WINDOW CLOSE`.
const CLOSED: &[(&str, &str)] = &[
    (
        "q5_closed",
        "SELECT auction, count(*) AS num, window_start, window_end
         FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         GROUP BY auction, window_start, window_end",
    ),
    (
        "q7_closed",
        "SELECT window_start, window_end, max(price) AS maxprice
         FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
    ),
    (
        "q11_closed",
        "SELECT bidder, count(*) AS bid_count, window_start, window_end
         FROM SESSION(bid, date_time, INTERVAL '10' SECOND, bidder)
         GROUP BY bidder, window_start, window_end",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_match_the_batch_oracle() {
    run_against_the_oracle(None).await;
}

/// The same with a memory limit of 256 KiB for all views together: the
/// aggregates' and joins' state and the views' logged rows go to disk
/// every epoch and come back as changes and queries need them. Then a
/// restart from the checkpoint under the same limit: the state spills as
/// it is restored, and every view still matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_match_the_batch_oracle_with_state_spilled() {
    run_against_the_oracle(Some(256 << 10)).await;
}

async fn run_against_the_oracle(memory_limit: Option<usize>) {
    let checkpoints = std::env::temp_dir().join(format!(
        "eddy-nexmark-oracle-{}-{}",
        std::process::id(),
        memory_limit.unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&checkpoints);
    let configure = |options: &mut eddy::ServerOptions| {
        options.memory_limit_bytes = memory_limit;
        options.checkpoint_location = Some(checkpoints.to_string_lossy().into_owned());
    };
    let server = TestServer::start_with(configure).await;
    let eddy = server.connect().await;
    for table in ["person", "auction", "bid"] {
        execute(&eddy, &shared::source_sql(table, EVENTS, EVENT_RATE)).await;
    }
    execute(&eddy, &shared::side_input_sql()).await;
    execute(&eddy, shared::COPIES_SQL).await;
    let mut views: Vec<(String, String)> = shared::queries()
        .into_iter()
        .map(|(name, query)| (name, query.to_string()))
        .collect();
    for (name, query) in &views {
        execute(
            &eddy,
            &format!("CREATE MATERIALIZED VIEW {name} AS {query}"),
        )
        .await;
    }
    for (name, query) in CLOSED {
        execute(
            &eddy,
            &format!("CREATE MATERIALIZED VIEW {name} AS {query} EMIT ON WINDOW CLOSE"),
        )
        .await;
        views.push((name.to_string(), query.to_string()));
    }
    // Over the append-only source, sessions fold straight into their
    // aggregate (`stream::session_aggregate`).
    let fused = query_text(
        &eddy,
        "SELECT count(*) FROM eddy_catalog.operator_stats
         WHERE view IN ('q11', 'q11_closed') AND operator LIKE 'SessionWindowAggregate%'",
    )
    .await;
    assert_eq!(fused[0][0], "2", "q11 plans one session aggregate");

    // Every view reads its own copy of the streams; wait until all are done.
    converge(&eddy, &views).await;
    if memory_limit.is_some() {
        let spilled = query_text(
            &eddy,
            "SELECT count(*) FROM eddy_catalog.operator_stats WHERE spilled_keys > 0",
        )
        .await;
        assert_ne!(spilled[0][0], "0", "no operator's state went to disk");
        // The copies of the streams keep their rows as logged batches,
        // which go to disk too (and were read back by the comparison).
        let spilled = query_text(
            &eddy,
            "SELECT count(*) FROM eddy_catalog.materialized_views
             WHERE name = 'bid_all' AND spilled_bytes > 0",
        )
        .await;
        assert_eq!(spilled[0][0], "1", "bid_all's rows stayed in memory");

        // A restart restores every view from the checkpoint, spilling as it
        // reads (the limit is far below the state), with the same answers.
        execute(&eddy, "CHECKPOINT").await;
        drop(eddy);
        server.stop().await;
        let server = TestServer::start_with(configure).await;
        let eddy = server.connect().await;
        let spilled = query_text(
            &eddy,
            "SELECT count(*) FROM eddy_catalog.operator_stats WHERE spilled_keys > 0",
        )
        .await;
        assert_ne!(spilled[0][0], "0", "the restore held all state in memory");
        converge(&eddy, &views).await;
        drop(eddy);
        server.stop().await;
    } else {
        server.stop().await;
    }
    let _ = std::fs::remove_dir_all(&checkpoints);
}

/// Waits until every view matches its batch answer (panics after 300 s).
async fn converge(eddy: &tokio_postgres::Client, views: &[(String, String)]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_mismatch = String::new();
    loop {
        match compare(eddy, views).await {
            Ok(()) => return,
            Err(mismatch) if Instant::now() < deadline => {
                last_mismatch = mismatch;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(mismatch) => panic!("no convergence: {mismatch} (before: {last_mismatch})"),
        }
    }
}

/// Compares every query's view with the batch answer over the copies.
async fn compare(eddy: &tokio_postgres::Client, views: &[(String, String)]) -> Result<(), String> {
    let bids = shared::events_of("bid", EVENTS);
    let copied = query_text(eddy, "SELECT count(*) FROM bid_all").await[0][0].clone();
    if copied != bids.to_string() {
        return Err(format!("bid_all has {copied} of {bids} bids"));
    }
    // The final watermark: the newest bid's time minus the 4 s delay.
    let watermark = query_text(
        eddy,
        "SELECT CAST(max(date_time) - INTERVAL '4' SECOND AS TEXT) FROM bid_all",
    )
    .await[0][0]
        .clone();
    let mut counts = Vec::new();
    for (name, query) in views {
        let batch = shared::over_copies(query).expect("the query parses");
        let batch = if name.ends_with("_closed") {
            format!("SELECT * FROM ({batch}) WHERE window_end <= TIMESTAMP '{watermark}'")
        } else {
            batch
        };
        let comparison = comparison(name);
        let expected = sorted_rows(eddy, &comparison.replace("{}", &batch)).await;
        let actual = sorted_rows(
            eddy,
            &comparison.replace("{}", &format!("SELECT * FROM {name}")),
        )
        .await;
        if expected.is_empty() && !MAY_BE_EMPTY.contains(&name.as_str()) {
            return Err(format!("{name}: the oracle is empty"));
        }
        counts.push(format!("{name}: {}", actual.len()));
        if actual != expected {
            return Err(format!(
                "{name}: {} rows, oracle {} rows; first differences: {:?}",
                actual.len(),
                expected.len(),
                actual.iter().zip(&expected).find(|(a, e)| a != e)
            ));
        }
    }
    println!("rows per view: {}", counts.join(", "));
    Ok(())
}
