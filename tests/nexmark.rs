//! Every Nexmark query (q0–q22, `benches/nexmark/queries/`) as a
//! materialized view on the `nexmark` source, against the batch oracle.
//!
//! A bounded nexmark run is copied into views (`person_all`, `auction_all`,
//! `bid_all`: plain `SELECT *`); DataFusion's batch answer of the same query
//! over those copies is the oracle. Each query's view must converge to it
//! once the sources have ended; the `EMIT ON WINDOW CLOSE` variants must
//! hold exactly the windows the final watermark closed.

mod common;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use common::{execute, project_dir, query_text, sorted_rows, TestServer};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, ObjectNamePart, TableFactor, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

const EVENTS: u64 = 30_000;
/// 1,000 events per second of event time: the run covers 30 s.
const EVENT_RATE: u64 = 1_000;
const BIDS: u64 = EVENTS * 46 / 50;

fn source_sql(table: &str) -> String {
    // Bids carry a processing-time column for q12 and q13.
    let proctime = if table == "bid" {
        "p_time TIMESTAMP AS PROCTIME(), "
    } else {
        ""
    };
    format!(
        "CREATE SOURCE {table} ({proctime}WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
         WITH (connector = 'nexmark', nexmark.table.type = '{table}',
               nexmark.event.rate = '{EVENT_RATE}', nexmark.max.events = '{EVENTS}',
               nexmark.max.emit.speed = 'true')"
    )
}

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
];

/// The Nexmark queries, by number.
fn nexmark_queries() -> Vec<(String, String)> {
    (0..=22)
        .map(|n| {
            let path = format!("{}/benches/nexmark/queries/q{n}.sql", project_dir());
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            (format!("q{n}"), text)
        })
        .collect()
}

/// Renames the nexmark relations to their bounded copies.
struct ToCopies;

fn copy_name(ident: &mut Ident) {
    if ["person", "auction", "bid"].contains(&ident.value.to_lowercase().as_str()) {
        *ident = Ident::new(format!("{}_all", ident.value.to_lowercase()));
    }
}

impl VisitorMut for ToCopies {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<()> {
        if let [ObjectNamePart::Identifier(ident)] = relation.0.as_mut_slice() {
            copy_name(ident);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        // TUMBLE(bid, ...), HOP(...), SESSION(...): the relation is the first argument.
        if let TableFactor::Table {
            args: Some(args), ..
        } = factor
        {
            if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(ident)))) =
                args.args.first_mut()
            {
                copy_name(ident);
            }
        }
        ControlFlow::Continue(())
    }
}

/// `query` over the bounded copies; `FOR SYSTEM_TIME AS OF` dropped (the side
/// input does not change during the run).
fn over_copies(query: &str) -> String {
    let query = query.replace("FOR SYSTEM_TIME AS OF PROCTIME()", "");
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, &query).expect("query parses");
    let _ = statements.visit(&mut ToCopies);
    statements[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_match_the_batch_oracle() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    for table in ["person", "auction", "bid"] {
        execute(&eddy, &source_sql(table)).await;
    }
    let side_input: Vec<String> = (0..10_000).map(|k| format!("({k}, 'v{k}')")).collect();
    execute(
        &eddy,
        &format!(
            "CREATE TABLE side_input (key BIGINT PRIMARY KEY, value TEXT);
             INSERT INTO side_input VALUES {}",
            side_input.join(", ")
        ),
    )
    .await;
    execute(
        &eddy,
        "CREATE MATERIALIZED VIEW person_all AS SELECT * FROM person;
         CREATE MATERIALIZED VIEW auction_all AS SELECT * FROM auction;
         CREATE MATERIALIZED VIEW bid_all AS SELECT * FROM bid;",
    )
    .await;
    let mut views: Vec<(String, String)> = nexmark_queries();
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

    // Every view reads its own copy of the streams; wait until all are done.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_mismatch = String::new();
    loop {
        match compare(&eddy, &views).await {
            Ok(()) => break,
            Err(mismatch) if Instant::now() < deadline => {
                last_mismatch = mismatch;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(mismatch) => panic!("no convergence: {mismatch} (before: {last_mismatch})"),
        }
    }
    server.stop().await;
}

/// Compares every query's view with the batch answer over the copies.
async fn compare(eddy: &tokio_postgres::Client, views: &[(String, String)]) -> Result<(), String> {
    let copied = query_text(eddy, "SELECT count(*) FROM bid_all").await[0][0].clone();
    if copied != BIDS.to_string() {
        return Err(format!("bid_all has {copied} of {BIDS} bids"));
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
        let batch = over_copies(query);
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
