//! Nexmark queries as materialized views on the `nexmark` source, against
//! the batch oracle.
//!
//! A bounded nexmark run is copied into a view (`bid_all`, a plain `SELECT
//! *`); DataFusion's batch answer over that copy is the oracle. Each query's
//! view must converge to it once the source has ended; the `EMIT ON WINDOW
//! CLOSE` variants must hold exactly the windows the final watermark closed.

mod common;

use std::time::{Duration, Instant};

use common::{execute, query_text, sorted_rows, TestServer};

const EVENTS: u64 = 40_000;
/// 1,000 events per second of event time: the run covers 40 s.
const EVENT_RATE: u64 = 1_000;

fn source_sql(table: &str) -> String {
    format!(
        "CREATE SOURCE {table} (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
         WITH (connector = 'nexmark', nexmark.table.type = '{table}',
               nexmark.event.rate = '{EVENT_RATE}', nexmark.max.events = '{EVENTS}',
               nexmark.max.emit.speed = 'true')"
    )
}

/// (name, query over `{bid}`, emit on window close)
const QUERIES: &[(&str, &str, bool)] = &[
    // q0: pass-through.
    (
        "q0",
        "SELECT auction, bidder, price, date_time FROM {bid}",
        false,
    ),
    // q1: currency conversion.
    (
        "q1",
        "SELECT auction, bidder, 0.908 * price AS price, date_time FROM {bid}",
        false,
    ),
    // q2: selection.
    (
        "q2",
        "SELECT auction, price FROM {bid} WHERE auction % 123 = 0",
        false,
    ),
    // q5, its windowed part: bids per auction over 10 s windows every 2 s.
    (
        "q5",
        "SELECT auction, count(*) AS num, window_start, window_end
         FROM HOP({bid}, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         GROUP BY auction, window_start, window_end",
        false,
    ),
    (
        "q5_closed",
        "SELECT auction, count(*) AS num, window_start, window_end
         FROM HOP({bid}, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         GROUP BY auction, window_start, window_end",
        true,
    ),
    // q7, its windowed part: the highest bid of each 10 s window.
    (
        "q7",
        "SELECT window_start, window_end, max(price) AS maxprice
         FROM TUMBLE({bid}, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
        false,
    ),
    (
        "q7_closed",
        "SELECT window_start, window_end, max(price) AS maxprice
         FROM TUMBLE({bid}, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
        true,
    ),
    // q12-style: bids per bidder per 10 s window (q12 itself windows on
    // processing time, which no oracle can repeat; see sql-tests/).
    (
        "q12",
        "SELECT bidder, count(*) AS bid_count, window_start, window_end
         FROM TUMBLE({bid}, date_time, INTERVAL '10' SECOND) GROUP BY bidder, window_start, window_end",
        false,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_match_the_batch_oracle() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    for table in ["person", "auction", "bid"] {
        execute(&eddy, &source_sql(table)).await;
    }
    execute(
        &eddy,
        "CREATE MATERIALIZED VIEW bid_all AS SELECT * FROM bid;
         CREATE MATERIALIZED VIEW event_counts AS
           SELECT 'person' AS kind, count(*) AS n FROM person
           UNION ALL SELECT 'auction', count(*) FROM auction
           UNION ALL SELECT 'bid', count(*) FROM bid",
    )
    .await;
    for (name, query, closed) in QUERIES {
        let emit = if *closed { " EMIT ON WINDOW CLOSE" } else { "" };
        execute(
            &eddy,
            &format!(
                "CREATE MATERIALIZED VIEW {name} AS {}{emit}",
                query.replace("{bid}", "bid")
            ),
        )
        .await;
    }

    // Every view reads its own copy of the stream; wait until all are done.
    let bids = EVENTS * 46 / 50;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_mismatch = String::new();
    loop {
        match compare(&eddy, bids).await {
            Ok(()) => break,
            Err(mismatch) if Instant::now() < deadline => {
                last_mismatch = mismatch;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(mismatch) => panic!("no convergence: {mismatch} (before: {last_mismatch})"),
        }
    }
    let counts = sorted_rows(&eddy, "SELECT kind, n FROM event_counts").await;
    assert_eq!(
        counts,
        vec![
            vec!["auction".to_string(), (EVENTS * 3 / 50).to_string()],
            vec!["bid".to_string(), bids.to_string()],
            vec!["person".to_string(), (EVENTS / 50).to_string()],
        ]
    );
    server.stop().await;
}

/// Compares every query's view with the batch answer over `bid_all`.
async fn compare(eddy: &tokio_postgres::Client, bids: u64) -> Result<(), String> {
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
    for (name, query, closed) in QUERIES {
        let batch = query.replace("{bid}", "bid_all");
        let batch = if *closed {
            format!("SELECT * FROM ({batch}) WHERE window_end <= TIMESTAMP '{watermark}'")
        } else {
            batch
        };
        let expected = sorted_rows(eddy, &batch).await;
        let actual = sorted_rows(eddy, &format!("SELECT * FROM {name}")).await;
        if expected.is_empty() {
            return Err(format!("{name}: the oracle is empty"));
        }
        if actual != expected {
            return Err(format!(
                "{name}: {} rows, oracle {} rows; first differences: {:?}",
                actual.len(),
                expected.len(),
                actual.iter().zip(&expected).find(|(a, e)| a != e)
            ));
        }
    }
    Ok(())
}
