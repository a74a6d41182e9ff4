//! Maintenance is incremental: the work one changed row causes does not grow
//! with the size of the table. Shown with the operators' row counters
//! (`eddy_catalog.operator_stats`), not with timings.

mod common;

use common::{execute, query_text, TestServer};

/// Total rows that entered any operator of `view` so far.
async fn rows_processed(client: &tokio_postgres::Client, view: &str) -> u64 {
    let rows = query_text(
        client,
        &format!("SELECT sum(rows_in) FROM eddy_catalog.operator_stats WHERE view = '{view}'"),
    )
    .await;
    rows[0][0].parse().expect("a row count")
}

/// Loads `table_rows` rows, then measures the operator work of one UPDATE,
/// one INSERT and one DELETE on the views.
async fn work_for_one_row_changes(table_rows: u64) -> Vec<u64> {
    let server = TestServer::start().await;
    let client = server.connect().await;
    execute(
        &client,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, k BIGINT, v BIGINT)",
    )
    .await;
    execute(
        &client,
        &format!("INSERT INTO t SELECT value AS id, value % 10 AS k, value AS v FROM generate_series(1, {table_rows})"),
    )
    .await;
    execute(
        &client,
        "CREATE MATERIALIZED VIEW per_key AS SELECT k, count(*) AS n, sum(v) AS s, max(v) AS m FROM t GROUP BY k;
         CREATE MATERIALIZED VIEW filtered AS SELECT id, v * 2 AS w FROM t WHERE v % 3 = 0;
         CREATE MATERIALIZED VIEW stacked AS SELECT n, count(*) AS c FROM per_key GROUP BY n;
         FLUSH",
    )
    .await;
    let views = ["per_key", "filtered", "stacked"];
    let mut work = Vec::new();
    for change in [
        "UPDATE t SET v = v + 3 WHERE id = 6",
        "INSERT INTO t VALUES (0, 3, 42)",
        "DELETE FROM t WHERE id = 9",
    ] {
        let mut before = Vec::new();
        for view in views {
            before.push(rows_processed(&client, view).await);
        }
        execute(&client, &format!("{change}; FLUSH")).await;
        for (view, before) in views.iter().zip(before) {
            work.push(rows_processed(&client, view).await - before);
        }
    }
    // The views are still right after the changes.
    let n = query_text(&client, "SELECT sum(n) FROM per_key").await;
    assert_eq!(n[0][0], table_rows.to_string());
    server.stop().await;
    work
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_per_change_does_not_grow_with_table_size() {
    let small = work_for_one_row_changes(1_000).await;
    let large = work_for_one_row_changes(50_000).await;
    println!("rows processed per view (per_key, filtered, stacked) for UPDATE, INSERT, DELETE of one row: {large:?}");
    assert_eq!(
        small, large,
        "operator work for the same one-row changes: 1k rows {small:?}, 50k rows {large:?}"
    );
    // An update is one retraction and one insertion: a handful of rows per
    // operator, never a rescan.
    assert!(
        large.iter().all(|&rows| rows <= 12),
        "per-view rows processed: {large:?}"
    );
    assert!(
        large.iter().any(|&rows| rows > 0),
        "the changes reached the views: {large:?}"
    );
}
