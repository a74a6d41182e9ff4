//! The Postgres sink against a real PostgreSQL (scripts/postgres.sh): the
//! target table equals the view after FLUSH through inserts, updates and
//! deletes; types round-trip; targets are checked at CREATE SINK; recorded
//! epochs are never applied twice; a permanent error fails only the sink;
//! rows the target refuses are skipped and listed (or fail the sink).

mod common;

use common::{
    connect_postgres, execute, postgres_rows, postgres_url, query_text, sorted_rows, TestServer,
};
use proptest::prelude::*;

fn sink_options(table: &str, extra: &str) -> String {
    format!(
        "connector = 'postgres', url = '{}', table = '{table}'{extra}",
        postgres_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_follow_the_view_through_updates_and_deletes() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_totals")
        .await
        .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(&eddy, "CREATE TABLE orders (id INT PRIMARY KEY, customer TEXT, amount BIGINT);
        INSERT INTO orders VALUES (1, 'ann', 10), (2, 'bob', 20);
        CREATE MATERIALIZED VIEW totals AS SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer").await;
    // The key defaults to the view's GROUP BY columns.
    execute(
        &eddy,
        &format!(
            "CREATE SINK totals_pg FROM totals WITH ({})",
            sink_options("sink_totals", ", create_table = 'true'")
        ),
    )
    .await;
    execute(&eddy, "FLUSH").await;
    let view = "SELECT customer, n::TEXT, total::TEXT FROM totals";
    let table = "SELECT customer, n::TEXT, total::TEXT FROM sink_totals";
    assert_eq!(
        postgres_rows(&pg, table).await,
        sorted_rows(&eddy, view).await
    );
    assert_eq!(postgres_rows(&pg, table).await.len(), 2);

    execute(
        &eddy,
        "INSERT INTO orders VALUES (3, 'ann', 5), (4, 'cid', 7);
        UPDATE orders SET amount = 100 WHERE id = 2;
        DELETE FROM orders WHERE id = 4;
        INSERT INTO orders VALUES (5, 'dee', 1);
        DELETE FROM orders WHERE customer = 'bob';
        FLUSH",
    )
    .await;
    let expected = vec![
        vec!["ann".to_string(), "2".to_string(), "15".to_string()],
        vec!["dee".to_string(), "1".to_string(), "1".to_string()],
    ];
    assert_eq!(sorted_rows(&eddy, view).await, expected);
    assert_eq!(postgres_rows(&pg, table).await, expected);

    // The epoch is recorded with the rows.
    let progress = query_text(
        &pg,
        "SELECT epoch > 0 FROM eddy_sink_progress WHERE sink = 'totals_pg'",
    )
    .await;
    assert_eq!(progress, vec![vec!["t".to_string()]]);

    let sinks = query_text(&eddy, "SHOW SINKS").await;
    assert_eq!(sinks.len(), 1);
    assert_eq!(
        &sinks[0][..5],
        &[
            "totals_pg",
            "totals",
            "public.sink_totals",
            "upsert",
            "running"
        ]
    );
    assert_eq!(sinks[0][6], "0", "no lag after FLUSH");

    // A view with a sink cannot be dropped without CASCADE.
    let error = eddy
        .batch_execute("DROP MATERIALIZED VIEW totals")
        .await
        .unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("2BP01"));
    execute(&eddy, "DROP SINK totals_pg; DROP MATERIALIZED VIEW totals").await;
    assert!(query_text(&eddy, "SHOW SINKS").await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_types")
        .await
        .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(&eddy, "CREATE TABLE typed (id BIGINT PRIMARY KEY, b BOOLEAN, s SMALLINT, i INT, r REAL, d DOUBLE PRECISION,
          n NUMERIC(12, 3), t TEXT, dt DATE, ts TIMESTAMP, tz TIMESTAMPTZ, iv INTERVAL, by BYTEA, j JSONB);
        INSERT INTO typed VALUES
          (1, true, -3, 2147483647, 1.5, 0.1, -12345.678, 'héllo, \"world\"', '2024-02-29', '2024-01-02 03:04:05.25',
           '2024-01-02 03:04:05+00', '1 year 2 months 3 days 4 hours 5 minutes 6.5 seconds', decode('00ff10', 'hex'), '{\"a\": [1, 2.5, null]}'),
          (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (3, false, 0, 0, -0.25, 1e300, 0.001, '', '1970-01-01', '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00+00',
           '-1 days', decode('', 'hex'), '[]');
        CREATE MATERIALIZED VIEW typed_view AS SELECT * FROM typed").await;
    execute(
        &eddy,
        &format!(
            "CREATE SINK typed_pg FROM typed_view WITH ({})",
            sink_options("sink_types", ", primary_key = 'id', create_table = 'true'")
        ),
    )
    .await;
    execute(&eddy, "FLUSH").await;
    // Postgres' own text output of each value (simple protocol, no casts).
    let in_postgres = postgres_rows(&pg, "SELECT * FROM sink_types").await;
    // What eddy itself prints for the view (its text output is Postgres').
    let in_eddy = sorted_rows(&eddy, "SELECT * FROM typed_view").await;
    assert_eq!(in_postgres, in_eddy);
    assert_eq!(in_postgres[0][6], "-12345.678");
    assert_eq!(in_postgres[0][11], "1 year 2 mons 3 days 04:05:06.5");
    assert_eq!(in_postgres[0][12], "\\x00ff10");
    // The column types are the ones the view has.
    let types = postgres_rows(&pg, "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns WHERE table_name = 'sink_types' AND column_name IN ('n', 'tz', 'j', 'iv')").await;
    assert_eq!(
        types,
        vec![
            vec!["iv".to_string(), "interval".to_string()],
            vec!["j".to_string(), "jsonb".to_string()],
            vec!["n".to_string(), "numeric".to_string()],
            vec!["tz".to_string(), "timestamp with time zone".to_string()],
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_are_checked_at_create_sink() {
    let pg = connect_postgres().await;
    pg.batch_execute(
        "DROP TABLE IF EXISTS sink_wrong_type, sink_no_key, sink_ok;
         CREATE TABLE sink_wrong_type (k TEXT PRIMARY KEY, n TEXT);
         CREATE TABLE sink_no_key (k TEXT, n BIGINT);
         CREATE TABLE sink_ok (k VARCHAR(10) PRIMARY KEY, n BIGINT, extra INT DEFAULT 7);",
    )
    .await
    .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        "CREATE TABLE t (k TEXT, v INT); INSERT INTO t VALUES ('a', 1);
        CREATE MATERIALIZED VIEW counts AS SELECT k, count(*) AS n FROM t GROUP BY k;
        CREATE MATERIALIZED VIEW plain AS SELECT k, v FROM t",
    )
    .await;
    let create = |name: &str, view: &str, options: String| {
        format!("CREATE SINK {name} FROM {view} WITH ({options})")
    };
    let error_of = |sql: String| {
        let eddy = &eddy;
        async move {
            let error = eddy
                .batch_execute(&sql)
                .await
                .expect_err("CREATE SINK must fail");
            let db = error.as_db_error().expect("a server error");
            (db.code().code().to_string(), db.message().to_string())
        }
    };
    let (code, message) = error_of(create("s1", "counts", sink_options("missing_table", ""))).await;
    assert_eq!(code, "42P01");
    assert!(message.contains("does not exist"), "{message}");
    let (code, message) =
        error_of(create("s2", "counts", sink_options("sink_wrong_type", ""))).await;
    assert_eq!(code, "42804");
    assert!(
        message.contains("column \"n\" is int8 in the view but text"),
        "{message}"
    );
    let (_, message) = error_of(create("s3", "counts", sink_options("sink_no_key", ""))).await;
    assert!(
        message.contains("needs a primary key or unique index on (k)"),
        "{message}"
    );
    let (_, message) = error_of(create("s4", "plain", sink_options("sink_ok", ""))).await;
    assert!(message.contains("needs primary_key"), "{message}");
    let (code, message) = error_of(create(
        "s5",
        "plain",
        sink_options("sink_ok", ", type = 'append-only'"),
    ))
    .await;
    assert_eq!(code, "0A000");
    assert!(
        message.contains("append-only but its input updates"),
        "{message}"
    );
    let (code, message) = error_of(create(
        "s6",
        "counts",
        "connector = 'postgres', url = 'postgres://postgres@127.0.0.1:1/x', table = 't'"
            .to_string(),
    ))
    .await;
    assert_eq!(code, "08001", "an unreachable Postgres");
    // The cause, not only tokio-postgres' "error connecting to server".
    assert!(message.contains("Connection refused"), "{message}");
    let (code, message) = error_of(create(
        "s7",
        "counts",
        "connector = 'kafka', topic = 'x'".into(),
    ))
    .await;
    assert_eq!(code, "22023");
    assert!(
        message.contains("a Kafka sink needs properties.bootstrap.server"),
        "{message}"
    );
    let (code, _) = error_of(create("s8", "t", sink_options("sink_ok", ""))).await;
    assert_eq!(code, "42809");
    let (code, _) = error_of(create(
        "s9",
        "counts",
        sink_options("sink_ok", ", colour = 'blue'"),
    ))
    .await;
    assert_eq!(code, "22023");
    assert!(
        query_text(&eddy, "SHOW SINKS").await.is_empty(),
        "failed CREATE SINKs leave nothing behind"
    );

    // A matching table (varchar for text; extra columns keep their defaults).
    execute(
        &eddy,
        &create("good", "counts", sink_options("sink_ok", "")),
    )
    .await;
    execute(&eddy, "FLUSH").await;
    assert_eq!(
        postgres_rows(&pg, "SELECT k::TEXT, n::TEXT, extra::TEXT FROM sink_ok").await,
        vec![vec!["a", "1", "7"]]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_only_tables_feed_append_only_sinks() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_events")
        .await
        .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        "CREATE TABLE events (at BIGINT, kind TEXT) WITH (append_only = true);
        INSERT INTO events VALUES (1, 'a'), (2, 'b'), (2, 'b')",
    )
    .await;
    let error = eddy.batch_execute("DELETE FROM events").await.unwrap_err();
    assert!(error
        .as_db_error()
        .unwrap()
        .message()
        .contains("append-only"));
    execute(&eddy, &format!(
        "CREATE SINK events_pg AS SELECT at, upper(kind) AS kind FROM events WHERE at > 1 WITH ({})",
        sink_options("sink_events", ", type = 'append-only', create_table = 'true'")
    )).await;
    execute(&eddy, "INSERT INTO events VALUES (3, 'c'), (0, 'z'); FLUSH").await;
    assert_eq!(
        postgres_rows(&pg, "SELECT at::TEXT, kind FROM sink_events").await,
        vec![vec!["2", "B"], vec!["2", "B"], vec!["3", "C"]]
    );
    // The sink's own view is not listed and goes with the sink.
    assert!(query_text(&eddy, "SHOW MATERIALIZED VIEWS")
        .await
        .is_empty());
    let sinks = query_text(&eddy, "SHOW SINKS").await;
    assert_eq!(
        &sinks[0][1..4],
        &["(query)", "public.sink_events", "append-only"]
    );
    let error = eddy.batch_execute("DROP TABLE events").await.unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("2BP01"));
    execute(&eddy, "DROP TABLE events CASCADE").await;
    assert!(query_text(&eddy, "SHOW SINKS").await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_epochs_are_never_applied_twice() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_replay")
        .await
        .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        "CREATE TABLE t (k INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1);
        CREATE MATERIALIZED VIEW v AS SELECT k, v FROM t",
    )
    .await;
    execute(
        &eddy,
        &format!(
            "CREATE SINK replay FROM v WITH ({})",
            sink_options("sink_replay", ", primary_key = 'k', create_table = 'true'")
        ),
    )
    .await;
    execute(&eddy, "FLUSH").await;
    // Pretend Postgres already holds far later epochs (as after a crash and
    // replay): the sink must recognise them and write nothing.
    pg.batch_execute("UPDATE eddy_sink_progress SET epoch = epoch + 1000000 WHERE sink = 'replay'")
        .await
        .unwrap();
    execute(
        &eddy,
        "UPDATE t SET v = 2 WHERE k = 1; INSERT INTO t VALUES (2, 2); FLUSH",
    )
    .await;
    assert_eq!(
        postgres_rows(&pg, "SELECT k::TEXT, v::TEXT FROM sink_replay").await,
        vec![vec!["1", "1"]]
    );
    pg.batch_execute("UPDATE eddy_sink_progress SET epoch = 0 WHERE sink = 'replay'")
        .await
        .unwrap();
    execute(&eddy, "INSERT INTO t VALUES (3, 3); FLUSH").await;
    assert_eq!(
        postgres_rows(&pg, "SELECT k::TEXT, v::TEXT FROM sink_replay").await,
        vec![vec!["1", "1"], vec!["3", "3"]]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_only_the_sink() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_doomed")
        .await
        .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        "CREATE TABLE t (k INT, v INT); INSERT INTO t VALUES (1, 1);
        CREATE MATERIALIZED VIEW v AS SELECT k, sum(v) AS s FROM t GROUP BY k",
    )
    .await;
    execute(
        &eddy,
        &format!(
            "CREATE SINK doomed FROM v WITH ({})",
            sink_options("sink_doomed", ", create_table = 'true'")
        ),
    )
    .await;
    execute(&eddy, "FLUSH").await;
    pg.batch_execute("DROP TABLE sink_doomed").await.unwrap();
    // FLUSH returns at once, and says which sink did not write and why.
    execute(&eddy, "INSERT INTO t VALUES (1, 5), (2, 2)").await;
    let flush = eddy.simple_query("FLUSH").await.expect_err("a sink failed");
    let message = common::describe(&flush);
    assert!(
        message.contains("sink doomed failed") && message.contains("does not exist"),
        "{message}"
    );
    assert_eq!(flush.code().map(|c| c.code()), Some("55000"));
    let sinks = query_text(&eddy, "SHOW SINKS").await;
    assert!(sinks[0][4].starts_with("failed:"), "{sinks:?}");
    assert!(sinks[0][4].contains("does not exist"), "{sinks:?}");
    // The server and the view go on.
    execute(&eddy, "INSERT INTO t VALUES (2, 3)").await;
    let _ = eddy.simple_query("FLUSH").await;
    assert_eq!(
        sorted_rows(&eddy, "SELECT k, s FROM v").await,
        vec![vec!["1", "6"], vec!["2", "5"]]
    );
    execute(&eddy, "DROP SINK doomed").await;
    server.stop().await;
}

/// A target whose columns refuse some of the view's values: a NUL in text
/// (22021), a string longer than varchar(5) (22001), a number beyond
/// numeric(6,2) (22003) and a CHECK (23514).
const PICKY_TARGET: &str =
    "(k INT PRIMARY KEY, name VARCHAR(5), amount NUMERIC(6,2) CHECK (amount >= 0))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_target_refuses_are_skipped_and_listed() {
    let pg = connect_postgres().await;
    pg.batch_execute("DELETE FROM eddy_sink_errors WHERE sink IN ('picky', 'strict')")
        .await
        .ok(); // it may not exist yet
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS sink_picky, sink_picky_strict;
         CREATE TABLE sink_picky {PICKY_TARGET}; CREATE TABLE sink_picky_strict {PICKY_TARGET}"
    ))
    .await
    .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        "CREATE TABLE t (k INT PRIMARY KEY, name TEXT, amount NUMERIC(12,2));
        INSERT INTO t SELECT k, 'n' || k, k * 1.5 FROM generate_series(1, 200) AS g(k);
        CREATE MATERIALIZED VIEW v AS SELECT * FROM t",
    )
    .await;
    // Bad rows in the first epoch too: CREATE SINK starts with the view's rows.
    eddy.execute(
        "INSERT INTO t VALUES (1000, $1, 1), (1001, 'much too long', 1), (1002, 'big', 123456.78), (1003, 'neg', -5)",
        &[&"a\0b"],
    )
    .await
    .unwrap();
    execute(
        &eddy,
        &format!(
            "CREATE SINK picky FROM v WITH ({});
             CREATE SINK strict FROM v WITH ({})",
            sink_options("sink_picky", ", primary_key = 'k'"),
            sink_options(
                "sink_picky_strict",
                ", primary_key = 'k', on_error = 'fail'"
            )
        ),
    )
    .await;
    let flush = eddy.simple_query("FLUSH").await.expect_err("strict failed");
    let message = common::describe(&flush);
    assert!(
        message.contains("sink strict failed") && message.contains("on_error = 'fail'"),
        "{message}"
    );
    assert!(!message.contains("sink picky"), "{message}");
    // Every good row arrived; the four bad ones are listed with their key
    // and the reason, in eddy and (durably) in the target's database.
    let count = "SELECT count(*)::TEXT FROM sink_picky";
    assert_eq!(postgres_rows(&pg, count).await, vec![vec!["200"]]);
    let listed = "SELECT key, reason FROM eddy_sink_errors WHERE sink = 'picky' ORDER BY key";
    let listed = postgres_rows(&pg, listed).await;
    let keys: Vec<&str> = listed.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        keys,
        [
            r#"{"k":1000}"#,
            r#"{"k":1001}"#,
            r#"{"k":1002}"#,
            r#"{"k":1003}"#
        ]
    );
    for (row, code) in listed.iter().zip(["22021", "22001", "22003", "23514"]) {
        assert!(row[1].contains(code), "{row:?}");
    }
    let in_eddy = sorted_rows(&eddy, "SELECT sink, key FROM eddy_catalog.sink_errors").await;
    assert_eq!(in_eddy.len(), 4, "{in_eddy:?}");
    assert!(in_eddy.iter().all(|r| r[0] == "picky"));
    let sinks = query_text(
        &eddy,
        "SELECT name, status, rows_skipped::TEXT FROM eddy_catalog.sinks ORDER BY name",
    )
    .await;
    assert_eq!(sinks[0], ["picky", "running", "4"]);
    assert!(sinks[1][1].starts_with("failed:"), "{sinks:?}");

    // The sink goes on: a fixed row arrives, a deleted one goes, new bad
    // ones are skipped in later epochs too.
    execute(
        &eddy,
        "UPDATE t SET name = 'fixed' WHERE k = 1001; DELETE FROM t WHERE k <= 10;
         INSERT INTO t VALUES (2000, 'waytoolong', 1), (2001, 'ok', 2)",
    )
    .await;
    let _ = eddy.simple_query("FLUSH").await;
    assert_eq!(postgres_rows(&pg, count).await, vec![vec!["192"]]);
    assert_eq!(
        postgres_rows(
            &pg,
            "SELECT name FROM sink_picky WHERE k IN (1001, 2001) ORDER BY k"
        )
        .await,
        vec![vec!["fixed"], vec!["ok"]]
    );
    let skipped = query_text(
        &eddy,
        "SELECT rows_skipped::TEXT FROM eddy_catalog.sinks WHERE name = 'picky'",
    )
    .await;
    assert_eq!(skipped, vec![vec!["5"]]);
    // The strict sink wrote nothing of the epoch it failed on.
    assert_eq!(
        postgres_rows(&pg, "SELECT count(*)::TEXT FROM sink_picky_strict").await,
        vec![vec!["0"]]
    );
    execute(&eddy, "DROP SINK picky, strict").await;
    server.stop().await;
}

/// Two eddys with a sink of the same name into one database: the one
/// created later takes the name over, and the first one's sink fails with
/// a message saying so at its next write, instead of silently skipping its
/// epochs (the progress row is per sink name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_name_taken_over_by_another_eddy_fails_loudly() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_twin_a, sink_twin_b")
        .await
        .unwrap();
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let (a, b) = (first.connect().await, second.connect().await);
    for (eddy, table) in [(&a, "sink_twin_a"), (&b, "sink_twin_b")] {
        execute(
            eddy,
            &format!(
                "CREATE TABLE t (k INT PRIMARY KEY, v INT);
                 INSERT INTO t VALUES (1, 1), (2, 2);
                 CREATE MATERIALIZED VIEW v AS SELECT k, v FROM t;
                 CREATE SINK twin FROM v WITH ({});
                 FLUSH",
                sink_options(table, ", primary_key = 'k', create_table = 'true'")
            ),
        )
        .await;
    }
    // The second has everything; the first's next write finds the name
    // taken and fails, naming the cause.
    execute(&b, "INSERT INTO t VALUES (3, 3); FLUSH").await;
    let count = |table: &str| format!("SELECT count(*)::TEXT FROM {table}");
    assert_eq!(
        postgres_rows(&pg, &count("sink_twin_b")).await,
        vec![vec!["3"]]
    );
    execute(&a, "INSERT INTO t VALUES (4, 4)").await;
    let flush = a
        .simple_query("FLUSH")
        .await
        .expect_err("the name was taken over");
    let message = common::describe(&flush);
    assert!(
        message.contains("another sink named twin writes into this database"),
        "{message}"
    );
    assert_eq!(
        postgres_rows(&pg, &count("sink_twin_a")).await,
        vec![vec!["2"]]
    );
    first.stop().await;
    second.stop().await;
}

/// One random scenario: changes to a table, a view, and its sink.
async fn oracle_case(case: usize, changes: Vec<(u8, i32, i32)>) -> Result<(), TestCaseError> {
    let pg = connect_postgres().await;
    let table = format!("sink_oracle_{case}");
    pg.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(&eddy, "CREATE TABLE t (k INT, v INT);
        CREATE MATERIALIZED VIEW agg AS SELECT k % 4 AS bucket, count(*) AS n, sum(v) AS s, max(v) AS m FROM t GROUP BY k % 4").await;
    execute(
        &eddy,
        &format!(
            "CREATE SINK oracle_{case} FROM agg WITH ({})",
            sink_options(&table, ", create_table = 'true'")
        ),
    )
    .await;
    for (i, (op, k, v)) in changes.into_iter().enumerate() {
        let sql = match op % 4 {
            0 | 1 => format!("INSERT INTO t VALUES ({k}, {v}), ({}, {v})", k + 1),
            2 => format!("UPDATE t SET v = v + {v} WHERE k = {k}"),
            _ => format!("DELETE FROM t WHERE k = {k}"),
        };
        execute(&eddy, &sql).await;
        if i % 5 == 4 {
            execute(&eddy, "FLUSH").await;
        }
    }
    execute(&eddy, "FLUSH").await;
    let view = sorted_rows(
        &eddy,
        "SELECT bucket::TEXT, n::TEXT, s::TEXT, m::TEXT FROM agg",
    )
    .await;
    let batch = sorted_rows(
        &eddy,
        "SELECT (k % 4)::TEXT, count(*)::TEXT, sum(v)::TEXT, max(v)::TEXT FROM t GROUP BY k % 4",
    )
    .await;
    let sunk = postgres_rows(
        &pg,
        &format!("SELECT bucket::TEXT, n::TEXT, s::TEXT, m::TEXT FROM {table}"),
    )
    .await;
    prop_assert_eq!(&view, &batch);
    prop_assert_eq!(&sunk, &view);
    execute(&eddy, &format!("DROP SINK oracle_{case}")).await;
    server.stop().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 50, ..ProptestConfig::default() })]

    /// The oracle: Postgres table == view == DataFusion batch.
    #[test]
    fn postgres_equals_view_equals_batch(changes in prop::collection::vec((0u8..4, 0i32..8, -5i32..10), 1..30)) {
        static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(oracle_case(case, changes))?;
    }
}
