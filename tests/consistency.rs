//! Every SELECT sees all materialized views as of one epoch: while writers
//! move money between accounts (each UPDATE keeps the total), readers
//! querying several views in one SELECT never see a total that is off, nor
//! two views that disagree.

mod common;

use common::{execute, query_text, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_see_all_views_at_one_epoch_while_writers_run() {
    let server = TestServer::start().await;
    let setup = server.connect().await;
    execute(
        &setup,
        "CREATE TABLE ledger (account INT PRIMARY KEY, amount BIGINT);
         INSERT INTO ledger SELECT CAST(value AS INT), 100 FROM generate_series(1, 10);
         CREATE MATERIALIZED VIEW balances AS SELECT account, sum(amount) AS total FROM ledger GROUP BY account;
         CREATE MATERIALIZED VIEW grand_total AS SELECT sum(amount) AS total, count(*) AS accounts FROM ledger;
         CREATE MATERIALIZED VIEW audit AS SELECT sum(total) AS total FROM balances;
         FLUSH",
    )
    .await;

    let mut writers = Vec::new();
    for w in 0..2i64 {
        let client = server.connect().await;
        writers.push(tokio::spawn(async move {
            for i in 0..150i64 {
                let from = (i * 7 + w) % 10 + 1;
                let to = (i * 3 + w + 1) % 10 + 1;
                if from == to {
                    continue;
                }
                let amount = i % 13 + 1;
                execute(
                    &client,
                    &format!(
                        "UPDATE ledger SET amount = amount + CASE WHEN account = {from} THEN -{amount} ELSE {amount} END \
                         WHERE account IN ({from}, {to})"
                    ),
                )
                .await;
            }
        }));
    }
    let reader = server.connect().await;
    let mut readings = 0;
    while writers.iter().any(|w| !w.is_finished()) || readings < 10 {
        let rows = query_text(
            &reader,
            "SELECT g.total, g.accounts, a.total, (SELECT sum(total) FROM balances) FROM grand_total g, audit a",
        )
        .await;
        assert_eq!(
            rows,
            vec![vec!["1000", "10", "1000", "1000"]],
            "reading {readings}"
        );
        readings += 1;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    execute(&setup, "FLUSH").await;
    let balances = query_text(&setup, "SELECT sum(total), min(total) < 100 FROM balances").await;
    assert_eq!(balances, vec![vec!["1000", "t"]]);
    server.stop().await;
}
