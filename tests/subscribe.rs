//! SUBSCRIBE streams a view's changes to a client: the snapshot first, then
//! inserts and deletes (an update is a delete and an insert) with their
//! epoch, in order; over the simple and extended protocols, and as
//! `COPY (SUBSCRIBE ...) TO STDOUT`.

mod common;

use std::time::Duration;

use common::{execute, TestServer};
use futures::StreamExt;
use tokio_postgres::SimpleQueryMessage;

/// Accounts and their owners' totals, with ann's first account.
const ACCOUNTS: &str = "CREATE TABLE accounts (id INT PRIMARY KEY, owner TEXT, balance INT);
     CREATE MATERIALIZED VIEW totals AS SELECT owner, sum(balance) AS total FROM accounts GROUP BY owner;
     INSERT INTO accounts VALUES (1, 'ann', 10);
     FLUSH";

/// The next data row of a SUBSCRIBE stream, as text.
async fn next_row(
    stream: &mut std::pin::Pin<Box<tokio_postgres::SimpleQueryStream>>,
) -> Vec<String> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("a row within 20 s")
            .expect("the stream goes on")
            .expect("no error");
        if let SimpleQueryMessage::Row(row) = message {
            return (0..row.len())
                .map(|i| row.get(i).unwrap_or("NULL").to_string())
                .collect();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_changes_in_order() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let writer = server.connect().await;
    execute(&eddy, ACCOUNTS).await;
    let subscriber = server.connect().await;
    let mut stream = Box::pin(
        subscriber
            .simple_query_raw("SUBSCRIBE TO totals")
            .await
            .unwrap(),
    );
    // The snapshot.
    let first = next_row(&mut stream).await;
    assert_eq!(&first[..3], ["ann", "10", "insert"]);
    let snapshot_epoch: i64 = first[3].parse().unwrap();

    execute(&writer, "INSERT INTO accounts VALUES (2, 'bob', 5); FLUSH").await;
    let row = next_row(&mut stream).await;
    assert_eq!(&row[..3], ["bob", "5", "insert"]);
    assert!(row[3].parse::<i64>().unwrap() > snapshot_epoch);

    // An update: the old row out, the new row in, in one epoch.
    execute(
        &writer,
        "UPDATE accounts SET balance = 12 WHERE id = 1; FLUSH",
    )
    .await;
    let out = next_row(&mut stream).await;
    let into = next_row(&mut stream).await;
    assert_eq!(&out[..3], ["ann", "10", "delete"]);
    assert_eq!(&into[..3], ["ann", "12", "insert"]);
    assert_eq!(out[3], into[3], "one epoch");

    execute(&writer, "DELETE FROM accounts WHERE id = 2; FLUSH").await;
    assert_eq!(&next_row(&mut stream).await[..3], ["bob", "5", "delete"]);

    // Without the snapshot, only what happens next.
    let late = server.connect().await;
    let mut changes = Box::pin(
        late.simple_query_raw("SUBSCRIBE totals WITH (snapshot = false)")
            .await
            .unwrap(),
    );
    // The row description comes once the subscription is in place; only
    // then is a change sure to reach it.
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), changes.next())
            .await
            .expect("a row description within 20 s")
            .expect("the stream goes on")
            .expect("no error");
        if matches!(message, SimpleQueryMessage::RowDescription(_)) {
            break;
        }
    }
    execute(&writer, "INSERT INTO accounts VALUES (3, 'cid', 1); FLUSH").await;
    assert_eq!(&next_row(&mut changes).await[..3], ["cid", "1", "insert"]);

    // A client that goes away is dropped; eddy goes on.
    drop(stream);
    drop(subscriber);
    execute(&writer, "INSERT INTO accounts VALUES (4, 'dan', 2); FLUSH").await;
    assert_eq!(&next_row(&mut changes).await[..3], ["dan", "2", "insert"]);

    let error = eddy
        .simple_query("SUBSCRIBE TO accounts")
        .await
        .unwrap_err();
    assert!(
        common::describe(&error).contains("is not a materialized view"),
        "{}",
        common::describe(&error)
    );
    server.stop().await;
}

/// A subscriber that does not keep up is dropped with an error once it is a
/// whole queue of epochs behind, instead of holding the runtime back or
/// making eddy buffer without bound; writers never wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_dropped_with_an_error() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        "CREATE TABLE t (k INT, v INT);
         CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM t GROUP BY k;
         DECLARE slow SUBSCRIPTION CURSOR FOR per_k",
    )
    .await;
    // About one epoch per statement (statements that reach the runtime
    // together share one, more so on a busy machine): twice as many as a
    // subscriber may be behind.
    let writer = server.connect().await;
    let epochs = eddy::engine::SUBSCRIPTION_QUEUE_EPOCHS * 2;
    for i in 0..epochs {
        execute(&writer, &format!("INSERT INTO t VALUES ({i}, 1)")).await;
    }
    execute(&writer, "FLUSH").await;
    let error = eddy
        .simple_query("FETCH ALL FROM slow")
        .await
        .expect_err("the subscriber fell behind");
    assert!(
        common::describe(&error).contains("subscription ended: the client fell behind"),
        "{}",
        common::describe(&error)
    );
    // The cursor is gone; the view and the writers went on.
    let gone = eddy.simple_query("FETCH slow").await.unwrap_err();
    assert!(common::describe(&gone).contains("does not exist"));
    let count = common::query_text(&eddy, "SELECT count(*) FROM per_k").await;
    assert_eq!(count, vec![vec![epochs.to_string()]]);

    // A subscriber that keeps up gets every epoch.
    execute(
        &eddy,
        "DECLARE keen SUBSCRIPTION CURSOR FOR per_k WITH (snapshot = false)",
    )
    .await;
    let mut seen = 0;
    for i in 0..epochs {
        execute(
            &writer,
            &format!("INSERT INTO t VALUES ({}, 1)", epochs + i),
        )
        .await;
        let rows = common::query_text(&eddy, "FETCH ALL keen").await;
        seen += rows.len();
    }
    assert_eq!(seen, epochs);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_over_the_extended_protocol_until_canceled() {
    let server = TestServer::start().await;
    let writer = server.connect().await;
    execute(&writer, ACCOUNTS).await;
    let subscriber = server.connect().await;
    // Parse, Describe, Bind, Execute: what drivers' streaming APIs send
    // (psycopg's cursor.stream, JDBC).
    let statement = subscriber.prepare("SUBSCRIBE totals").await.unwrap();
    let columns: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(columns, ["owner", "total", "op", "epoch"]);
    let rows = subscriber
        .query_raw(&statement, Vec::<String>::new())
        .await
        .unwrap();
    let mut rows = Box::pin(rows);
    async fn next(
        rows: &mut std::pin::Pin<Box<tokio_postgres::RowStream>>,
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        tokio::time::timeout(Duration::from_secs(20), rows.next())
            .await
            .expect("a row within 20 s")
            .expect("the stream goes on")
    }
    let row = next(&mut rows).await.expect("the snapshot row");
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2)
        ),
        ("ann".to_string(), 10, "insert".to_string())
    );
    // Each epoch is flushed as it happens, not when the statement ends.
    execute(&writer, "INSERT INTO accounts VALUES (2, 'bob', 5); FLUSH").await;
    let row = next(&mut rows).await.expect("the insert");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(2)),
        ("bob".to_string(), "insert".to_string())
    );
    // A cancel request ends it with 57014, and the connection goes on.
    subscriber
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let error = next(&mut rows).await.expect_err("canceled");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{error:?}"
    );
    let n: i64 = subscriber
        .query_one("SELECT count(*) FROM totals", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_subscribe_streams_copy_text_until_canceled() {
    let server = TestServer::start().await;
    let writer = server.connect().await;
    execute(&writer, ACCOUNTS).await;
    let subscriber = server.connect().await;
    // What Materialize documents for streaming changes over COPY.
    let copy = subscriber
        .copy_out("COPY (SUBSCRIBE totals) TO STDOUT")
        .await
        .expect("COPY OUT starts");
    let mut copy = Box::pin(copy);
    async fn next_line(
        copy: &mut std::pin::Pin<Box<tokio_postgres::CopyOutStream>>,
    ) -> Result<String, tokio_postgres::Error> {
        let data = tokio::time::timeout(Duration::from_secs(20), copy.next())
            .await
            .expect("data within 20 s")
            .expect("the copy goes on")?;
        Ok(String::from_utf8(data.to_vec()).expect("text"))
    }
    let first = next_line(&mut copy).await.expect("the snapshot");
    assert!(first.starts_with("ann\t10\tinsert\t"), "{first:?}");
    assert!(first.ends_with('\n'), "{first:?}");
    execute(
        &writer,
        "INSERT INTO accounts VALUES (2, 'tab\there', 5); FLUSH",
    )
    .await;
    let second = next_line(&mut copy).await.expect("the insert");
    assert!(second.starts_with("tab\\there\t5\tinsert\t"), "{second:?}");
    subscriber
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let error = next_line(&mut copy).await.expect_err("canceled");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{error:?}"
    );
    // Other targets and formats are refused by name.
    let refused = writer
        .batch_execute("COPY (SUBSCRIBE totals) TO '/tmp/x'")
        .await
        .expect_err("only STDOUT");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{refused:?}"
    );
    server.stop().await;
}
