//! The wire protocol as clients use it: the extended protocol with bound
//! parameters and binary results (tokio-postgres), declared parameter types
//! (as JDBC sends them), several clients at once, clients that go away,
//! a pool's DEALLOCATE / DISCARD ALL between its clients, and the names
//! and types of result columns (PostgreSQL's, RETURNING's included).

mod common;

use std::time::Duration;

use common::{execute, query_text, TestServer};
use tokio::io::AsyncWriteExt;
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_with_parameters_and_binary_results() {
    let server = TestServer::start().await;
    let client = server.connect().await;
    execute(
        &client,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, qty INT, price DOUBLE PRECISION, ok BOOLEAN, small SMALLINT, raw BYTEA)",
    )
    .await;

    // Parameter types are inferred from the target columns.
    let insert = client
        .prepare("INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .await
        .expect("prepare");
    assert_eq!(
        insert.params(),
        &[
            Type::INT8,
            Type::TEXT,
            Type::INT4,
            Type::FLOAT8,
            Type::BOOL,
            Type::INT2,
            Type::BYTEA
        ]
    );
    for i in 1..=5i64 {
        let raw: Vec<u8> = vec![i as u8, 0xff];
        let inserted = client
            .execute(
                &insert,
                &[
                    &i,
                    &format!("item-{i}"),
                    &(i as i32 * 10),
                    &(i as f64 / 4.0),
                    &(i % 2 == 0),
                    &(i as i16),
                    &raw,
                ],
            )
            .await
            .expect("insert");
        assert_eq!(inserted, 1);
    }
    // NULL parameters.
    client
        .execute(
            &insert,
            &[
                &6i64,
                &None::<String>,
                &None::<i32>,
                &None::<f64>,
                &None::<bool>,
                &None::<i16>,
                &None::<Vec<u8>>,
            ],
        )
        .await
        .expect("insert nulls");

    // Binary results decode into the Rust types of the columns.
    let rows = client
        .query(
            "SELECT id, name, qty, price, ok, small, raw FROM items WHERE qty > $1 ORDER BY id",
            &[&20i32],
        )
        .await
        .expect("query");
    assert_eq!(rows.len(), 3);
    let first = &rows[0];
    assert_eq!(first.get::<_, i64>(0), 3);
    assert_eq!(first.get::<_, String>(1), "item-3");
    assert_eq!(first.get::<_, i32>(2), 30);
    assert_eq!(first.get::<_, f64>(3), 0.75);
    assert!(!first.get::<_, bool>(4));
    assert_eq!(first.get::<_, i16>(5), 3);
    assert_eq!(first.get::<_, Vec<u8>>(6), vec![3u8, 0xff]);

    let nulls = client
        .query_one("SELECT name, qty FROM items WHERE id = $1", &[&6i64])
        .await
        .expect("null row");
    assert_eq!(nulls.get::<_, Option<String>>(0), None);
    assert_eq!(nulls.get::<_, Option<i32>>(1), None);

    // A prepared statement runs many times; each run sees current data.
    let count = client
        .prepare("SELECT count(*) FROM items WHERE ok = $1")
        .await
        .expect("prepare count");
    assert_eq!(
        client
            .query_one(&count, &[&true])
            .await
            .expect("count")
            .get::<_, i64>(0),
        2
    );
    client
        .execute("UPDATE items SET ok = $1 WHERE id = $2", &[&true, &1i64])
        .await
        .expect("update");
    assert_eq!(
        client
            .query_one(&count, &[&true])
            .await
            .expect("count")
            .get::<_, i64>(0),
        3
    );
    client
        .execute("DELETE FROM items WHERE id = $1", &[&1i64])
        .await
        .expect("delete");
    assert_eq!(
        client
            .query_one(&count, &[&true])
            .await
            .expect("count")
            .get::<_, i64>(0),
        2
    );

    // Views over parameters are refused; views are readable with parameters.
    execute(&client, "CREATE MATERIALIZED VIEW by_ok AS SELECT ok, count(*) AS n, sum(qty) AS q FROM items GROUP BY ok; FLUSH").await;
    let row = client
        .query_one("SELECT n, q FROM by_ok WHERE ok = $1", &[&false])
        .await
        .expect("view query");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 30 + 50));

    // Errors in the extended protocol carry their SQLSTATE, and the
    // connection stays usable.
    let error = client
        .execute(
            &insert,
            &[
                &2i64,
                &"dup",
                &1i32,
                &1.0f64,
                &true,
                &1i16,
                &Vec::<u8>::new(),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("23505"));
    let error = client.prepare("SELECT nope FROM items").await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("42703"));
    assert_eq!(
        client
            .query_one("SELECT 1::BIGINT", &[])
            .await
            .expect("still usable")
            .get::<_, i64>(0),
        1
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_parameter_types_as_jdbc_sends_them() {
    let server = TestServer::start().await;
    let client = server.connect().await;
    execute(
        &client,
        "CREATE TABLE people (id INT, name VARCHAR(20), born DATE, seen TIMESTAMP)",
    )
    .await;
    // JDBC declares the types of its parameters in Parse (setInt, setString,
    // setDate...) rather than asking the server; eddy takes them as given
    // and casts to the column type.
    let insert = client
        .prepare_typed(
            "INSERT INTO people VALUES ($1, $2, $3, $4)",
            &[Type::INT4, Type::VARCHAR, Type::TEXT, Type::TEXT],
        )
        .await
        .expect("prepare typed");
    client
        .execute(
            &insert,
            &[&7i32, &"ada", &"1815-12-10", &"2024-05-06 07:08:09"],
        )
        .await
        .expect("insert typed");
    let select = client
        .prepare_typed(
            "SELECT name, born::TEXT, seen::TEXT FROM people WHERE id = $1",
            &[Type::INT8],
        )
        .await
        .expect("prepare select");
    let row = client
        .query_one(&select, &[&7i64])
        .await
        .expect("select typed");
    assert_eq!(row.get::<_, String>(0), "ada");
    assert_eq!(row.get::<_, String>(1), "1815-12-10");
    assert_eq!(row.get::<_, String>(2), "2024-05-06T07:08:09");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_write_at_once_and_views_see_every_write() {
    let server = TestServer::start().await;
    let setup = server.connect().await;
    execute(&setup, "CREATE TABLE hits (client INT, n INT); CREATE MATERIALIZED VIEW per_client AS SELECT client, count(*) AS c, sum(n) AS s FROM hits GROUP BY client").await;
    let mut tasks = Vec::new();
    for c in 0..8 {
        let client = server.connect().await;
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO hits VALUES ($1, $2)")
                .await
                .expect("prepare");
            for n in 0..25 {
                client.execute(&insert, &[&c, &n]).await.expect("insert");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    execute(&setup, "FLUSH").await;
    let rows = query_text(&setup, "SELECT count(*), sum(c), sum(s) FROM per_client").await;
    assert_eq!(
        rows,
        vec![vec![
            "8".to_string(),
            "200".to_string(),
            (8 * 300).to_string()
        ]]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_do_not_disturb_others() {
    let server = TestServer::start().await;
    let client = server.connect().await;
    execute(
        &client,
        "CREATE TABLE t (x BIGINT); INSERT INTO t SELECT value FROM generate_series(1, 1000)",
    )
    .await;

    // A client that sends garbage instead of a startup message.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .expect("tcp");
    raw.write_all(b"\x00\x00\x00\x08garbage!")
        .await
        .expect("write");
    drop(raw);

    // A client that disconnects in the middle of a long query.
    let leaving = server.connect().await;
    let long_query = tokio::spawn(async move {
        let _ = leaving
            .simple_query("SELECT count(*) FROM generate_series(1, 200000000)")
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    long_query.abort();

    // Everyone else carries on.
    let rows = query_text(&client, "SELECT count(*) FROM t").await;
    assert_eq!(rows, vec![vec!["1000".to_string()]]);
    let other = server.connect().await;
    assert_eq!(
        query_text(&other, "SELECT sum(x) FROM t").await,
        vec![vec!["500500".to_string()]]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_all_forget_prepared_statements() {
    let server = TestServer::start().await;
    let client = server.connect().await;
    execute(
        &client,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1)",
    )
    .await;
    let count = "SELECT count(*) FROM t";
    for reset in ["DEALLOCATE ALL", "DISCARD ALL"] {
        let statement = client.prepare(count).await.unwrap();
        let n: i64 = client.query_one(&statement, &[]).await.unwrap().get(0);
        assert_eq!(n, 1);
        client.batch_execute(reset).await.unwrap();
        let error = client
            .query_one(&statement, &[])
            .await
            .expect_err("the statement is gone");
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME),
            "{reset}: {error:?}"
        );
    }
    // A name that is not prepared (tokio-postgres does not tell its
    // statements' names; session.rs's unit test deallocates by name).
    let error = client
        .batch_execute("DEALLOCATE never_prepared")
        .await
        .expect_err("not prepared");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME),
        "{error:?}"
    );
    // The connection goes on.
    assert_eq!(
        query_text(&client, count).await,
        vec![vec!["1".to_string()]]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_names_types_and_returning_as_postgres_gives_them() {
    let server = TestServer::start().await;
    let client = server.connect().await;
    execute(
        &client,
        "CREATE TABLE bid (auction BIGINT PRIMARY KEY, price BIGINT, extra JSONB);
         INSERT INTO bid VALUES (1, 10, '{\"a\": {\"b\": 2}}')",
    )
    .await;
    // Described (extended protocol) as PostgreSQL names and types them.
    let statement = client
        .prepare(
            "SELECT count(*), max(price), auction, auction, 1, 2 AS x, extra -> 'a', \
             extra #>> '{a,b}', INTERVAL '1 day' * 2 FROM bid GROUP BY auction, extra",
        )
        .await
        .expect("prepare");
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "count", "max", "auction", "auction", "?column?", "x", "?column?", "?column?",
            "?column?"
        ]
    );
    let types: Vec<&Type> = statement.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(
        types,
        [
            &Type::INT8,
            &Type::INT8,
            &Type::INT8,
            &Type::INT8,
            &Type::INT8,
            &Type::INT8,
            &Type::JSONB,
            &Type::TEXT,
            &Type::INTERVAL
        ]
    );
    let row = client.query_one(&statement, &[]).await.expect("query");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, String>(7), "2");
    // The simple protocol names them alike.
    let messages = client
        .simple_query("SELECT auction, auction, count(*) FROM bid GROUP BY auction")
        .await
        .expect("simple query");
    let names: Vec<String> = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(row.columns().iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .expect("a row");
    assert_eq!(names, ["auction", "auction", "count"]);
    // RETURNING: described, bound, and its rows returned.
    let insert = client
        .prepare("INSERT INTO bid VALUES ($1, $2, NULL) RETURNING auction, price * 2")
        .await
        .expect("prepare RETURNING");
    let names: Vec<&str> = insert.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["auction", "?column?"]);
    let rows = client
        .query(&insert, &[&2i64, &21i64])
        .await
        .expect("insert returning");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(1), 42);
    let deleted = client
        .query(
            "DELETE FROM bid WHERE auction = $1 RETURNING price",
            &[&2i64],
        )
        .await
        .expect("delete returning");
    assert_eq!(deleted[0].get::<_, i64>(0), 21);
    assert_eq!(
        query_text(&client, "SELECT count(*) FROM bid").await,
        vec![vec!["1".to_string()]]
    );
    server.stop().await;
}
