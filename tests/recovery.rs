//! Checkpoints and recovery, in process: a clean stop and restart brings
//! back every object with its state (tables, views over tables, windowed
//! views over a generator, sinks' progress), the restored state keeps
//! being maintained incrementally, and a named snapshot restores an
//! earlier point. The kill -9 crash test against real Kafka and Postgres is
//! `tests/crash.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{execute, sorted_rows};
use tokio_postgres::{Client, NoTls};

struct Eddy {
    server: eddy::Server,
    client: Client,
}

async fn start(dir: &Path, snapshot: Option<&str>) -> Eddy {
    let mut options = eddy::ServerOptions::new("127.0.0.1:0".parse().expect("address"));
    options.checkpoint_location = Some(dir.to_string_lossy().into_owned());
    options.checkpoint_interval = Duration::from_millis(200);
    options.from_snapshot = snapshot.map(str::to_string);
    let server = eddy::Server::start_with_options(options)
        .await
        .expect("eddy starts");
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=eddy dbname=eddy",
            server.local_addr.port()
        ),
        NoTls,
    )
    .await
    .expect("connects");
    tokio::spawn(connection);
    Eddy { server, client }
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-recovery-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const TOTALS: &str = "SELECT * FROM totals ORDER BY 1";
const EXPECTED_TOTALS: &str = "SELECT region, count(*), sum(amount), min(amount), max(amount) \
                               FROM orders GROUP BY region ORDER BY 1";
const WINDOWS: &str = "SELECT * FROM per_window ORDER BY 1, 2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_every_object_with_its_state() {
    let dir = fresh_dir("resume");
    let eddy = start(&dir, None).await;
    execute(
        &eddy.client,
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, region TEXT, amount BIGINT);
         INSERT INTO orders VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'eu', 30), (4, 'ap', 5);
         CREATE MATERIALIZED VIEW totals AS
           SELECT region, count(*) AS n, sum(amount) AS total, min(amount) AS low, max(amount) AS high
           FROM orders GROUP BY region;
         CREATE SOURCE ticks (id BIGINT, at TIMESTAMP,
                              WATERMARK FOR at AS at - INTERVAL '1' SECOND)
           WITH (connector = 'datagen', datagen.rows.per.second = '2000',
                 datagen.max.rows = '4000', fields.id.start = '0');
         CREATE MATERIALIZED VIEW per_window AS
           SELECT window_start, count(*) AS n, sum(id) AS ids
           FROM TUMBLE(ticks, at, INTERVAL '250 milliseconds') GROUP BY window_start;
         UPDATE orders SET amount = 1 WHERE id = 3;
         DELETE FROM orders WHERE id = 4;
         FLUSH;",
    )
    .await;
    // Stop while the generator is half way.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let totals_before = sorted_rows(&eddy.client, TOTALS).await;
    assert_eq!(
        totals_before,
        sorted_rows(&eddy.client, EXPECTED_TOTALS).await
    );
    eddy.server.stop().await;

    let eddy = start(&dir, None).await;
    assert_eq!(sorted_rows(&eddy.client, TOTALS).await, totals_before);
    assert_eq!(
        sorted_rows(&eddy.client, "SELECT * FROM orders").await,
        vec![
            vec!["1", "eu", "10"],
            vec!["2", "us", "20"],
            vec!["3", "eu", "1"]
        ]
    );
    // The restored aggregate keeps going from its state: min over the
    // retained values, counts, sums.
    execute(
        &eddy.client,
        "INSERT INTO orders VALUES (5, 'eu', 0), (6, 'ap', 7);
         DELETE FROM orders WHERE id = 1;
         UPDATE orders SET region = 'us' WHERE id = 3;
         FLUSH;",
    )
    .await;
    assert_eq!(
        sorted_rows(&eddy.client, TOTALS).await,
        sorted_rows(&eddy.client, EXPECTED_TOTALS).await
    );
    // The generator resumed where the checkpoint had it: every row once.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows =
            common::query_text(&eddy.client, "SELECT sum(n), sum(ids) FROM per_window").await;
        if rows[0][0] == "4000" {
            assert_eq!(rows[0][1], (0..4000i64).sum::<i64>().to_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generator stalled at {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let windows = sorted_rows(&eddy.client, WINDOWS).await;
    assert_eq!(windows.len(), 8, "{windows:?}");
    assert!(windows.iter().all(|w| w[1] == "500"), "{windows:?}");

    // A named snapshot, then more changes; starting from the snapshot
    // brings back the state it holds, not the later one.
    execute(&eddy.client, "CREATE SNAPSHOT before_cleanup").await;
    let at_snapshot = sorted_rows(&eddy.client, TOTALS).await;
    execute(&eddy.client, "DELETE FROM orders; FLUSH;").await;
    assert!(sorted_rows(&eddy.client, TOTALS).await.is_empty());
    eddy.server.stop().await;

    let eddy = start(&dir, Some("before_cleanup")).await;
    assert_eq!(sorted_rows(&eddy.client, TOTALS).await, at_snapshot);
    assert_eq!(sorted_rows(&eddy.client, WINDOWS).await, windows);
    eddy.server.stop().await;

    // Settings and errors.
    let eddy = start(&dir, None).await;
    execute(&eddy.client, "SET checkpoint_interval = '50 milliseconds'").await;
    assert_eq!(
        common::query_text(&eddy.client, "SHOW checkpoint_interval").await,
        vec![vec!["50ms"]]
    );
    let error = eddy
        .client
        .batch_execute("CREATE SNAPSHOT 'no/slashes'")
        .await
        .expect_err("bad snapshot name");
    assert!(
        common::describe(&error).contains("snapshot name"),
        "{error}"
    );
    eddy.server.stop().await;
    let missing = {
        let mut options = eddy::ServerOptions::new("127.0.0.1:0".parse().expect("address"));
        options.checkpoint_location = Some(dir.to_string_lossy().into_owned());
        options.from_snapshot = Some("never_taken".into());
        eddy::Server::start_with_options(options).await
    };
    let error = missing.err().expect("unknown snapshot refused").to_string();
    assert!(error.contains("snapshot never_taken"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With periodic checkpoints off, runs `setup` then `change` (each ending
/// in a CHECKPOINT), and requires the second to write less than a
/// twentieth of the whole state the first left (what a recovery from it
/// reads; earlier checkpoints, DDL's, may have written parts of it).
/// `changed` says what `change` did, for the failure message.
async fn checkpoint_writes_a_small_delta(eddy: &Eddy, setup: &str, change: &str, changed: &str) {
    let last = || {
        let stats = eddy.server.checkpoint_stats();
        stats.last_completed().expect("a checkpoint").clone()
    };
    execute(&eddy.client, "SET checkpoint_interval = 0").await;
    execute(&eddy.client, setup).await;
    let whole = last().state_bytes;
    execute(&eddy.client, change).await;
    let delta = last().bytes_written;
    assert!(
        delta * 20 < whole,
        "a checkpoint after {changed} wrote {delta} bytes; the whole state took {whole}"
    );
}

/// The figures users read about a view (rows failed, rows late, each
/// operator's rows in and out) are kept across a restart, not reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_views_counters_survive_a_restart() {
    let dir = fresh_dir("counters");
    let eddy = start(&dir, None).await;
    execute(
        &eddy.client,
        "CREATE TABLE readings (k INT, d INT, ts TIMESTAMP,
                                WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
         CREATE MATERIALIZED VIEW ratios AS SELECT k, 100 / d AS r FROM readings;
         CREATE MATERIALIZED VIEW per_second AS
           SELECT window_start, count(*) AS n FROM TUMBLE(readings, ts, INTERVAL '1' SECOND)
           GROUP BY window_start, window_end;
         INSERT INTO readings VALUES (1, 0, '2024-01-01 00:00:10'), (2, 5, '2024-01-01 00:00:10');
         INSERT INTO readings VALUES (3, 0, '2024-01-01 00:00:01');
         FLUSH",
    )
    .await;
    let figures = "SELECT name, failed_rows, late_rows FROM eddy_catalog.materialized_views";
    let operators = "SELECT view, operator_id, rows_in, rows_out, rows_failed, late_rows \
                     FROM eddy_catalog.operator_stats";
    let before = sorted_rows(&eddy.client, figures).await;
    assert_eq!(
        before,
        vec![vec!["per_second", "0", "1"], vec!["ratios", "2", "0"]]
    );
    let operators_before = sorted_rows(&eddy.client, operators).await;
    eddy.server.stop().await;

    let eddy = start(&dir, None).await;
    assert_eq!(sorted_rows(&eddy.client, figures).await, before);
    assert_eq!(sorted_rows(&eddy.client, operators).await, operators_before);
    // And they go on counting from there.
    execute(
        &eddy.client,
        "INSERT INTO readings VALUES (4, 0, '2024-01-01 00:00:02'); FLUSH",
    )
    .await;
    assert_eq!(
        sorted_rows(&eddy.client, figures).await,
        vec![vec!["per_second", "0", "2"], vec!["ratios", "3", "0"]]
    );
    eddy.server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_incremental() {
    let dir = fresh_dir("incremental");
    let eddy = start(&dir, None).await;
    checkpoint_writes_a_small_delta(
        &eddy,
        "CREATE TABLE big (id BIGINT PRIMARY KEY, v BIGINT);
         INSERT INTO big SELECT value, value % 100 FROM generate_series(1, 20000);
         CREATE MATERIALIZED VIEW by_v AS SELECT v, count(*) AS n FROM big GROUP BY v;
         CHECKPOINT;",
        "UPDATE big SET v = v + 1 WHERE id <= 10; CHECKPOINT;",
        "10 changed rows",
    )
    .await;
    // Changing most rows writes the table whole (a fresh chain), a few
    // more changes go on top of it as a delta; both read back.
    execute(
        &eddy.client,
        "UPDATE big SET v = v + 2 WHERE id <= 15000; CHECKPOINT;
         DELETE FROM big WHERE id % 1000 = 0; CHECKPOINT;",
    )
    .await;
    eddy.server.stop().await;
    let eddy = start(&dir, None).await;
    assert_eq!(
        sorted_rows(&eddy.client, "SELECT * FROM by_v").await,
        sorted_rows(&eddy.client, "SELECT v, count(*) FROM big GROUP BY v").await
    );
    assert_eq!(
        sorted_rows(
            &eddy.client,
            "SELECT count(*), sum(v), sum(id) FILTER (WHERE v % 3 = 1) FROM big"
        )
        .await,
        sorted_rows(
            &eddy.client,
            "SELECT count(*), sum(CASE WHEN id <= 10 THEN v + 3 WHEN id <= 15000 THEN v + 2 ELSE v END), \
                    sum(id) FILTER (WHERE (CASE WHEN id <= 10 THEN v + 3 WHEN id <= 15000 THEN v + 2 ELSE v END) % 3 = 1) \
             FROM (SELECT value AS id, value % 100 AS v FROM generate_series(1, 20000)) \
             WHERE id % 1000 <> 0"
        )
        .await
    );
    eddy.server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A view whose changes are plain insertions keeps them as a log of
/// batches: its checkpoints write only the batches since the last one, a
/// restart reads the log back, and the first retraction (which folds the
/// log into the view's keyed rows) is checkpointed and restored too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_of_insertions_checkpoints_its_log_incrementally() {
    const VIEW: &str = "SELECT * FROM doubled";
    const EXPECTED: &str = "SELECT id, v * 2 FROM t";
    let dir = fresh_dir("row-log");
    let eddy = start(&dir, None).await;
    checkpoint_writes_a_small_delta(
        &eddy,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT);
         INSERT INTO t SELECT value, value % 100 FROM generate_series(1, 20000);
         CREATE MATERIALIZED VIEW doubled AS SELECT id, v * 2 AS w FROM t;
         CHECKPOINT;",
        "INSERT INTO t VALUES (20001, 1), (20002, 2); CHECKPOINT;",
        "2 new rows",
    )
    .await;
    eddy.server.stop().await;

    let eddy = start(&dir, None).await;
    let expected = sorted_rows(&eddy.client, EXPECTED).await;
    assert_eq!(expected.len(), 20002);
    assert_eq!(sorted_rows(&eddy.client, VIEW).await, expected);
    // More insertions after the restored log, then retractions.
    execute(
        &eddy.client,
        "INSERT INTO t VALUES (20003, 3); CHECKPOINT;
         DELETE FROM t WHERE id % 1000 = 0 OR id = 20003;
         INSERT INTO t VALUES (20004, 4); CHECKPOINT;",
    )
    .await;
    let expected = sorted_rows(&eddy.client, EXPECTED).await;
    assert_eq!(expected.len(), 20002 + 2 - 21);
    assert_eq!(sorted_rows(&eddy.client, VIEW).await, expected);
    eddy.server.stop().await;

    let eddy = start(&dir, None).await;
    assert_eq!(sorted_rows(&eddy.client, VIEW).await, expected);
    eddy.server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Kafka sink restarted behind a tail of aborted transactions longer than
/// its first read-back window (another incarnation killed mid-commit wrote
/// them) still finds its last committed epoch: nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_sink_finds_its_last_commit_behind_aborted_transactions() {
    use common::kafka::{bootstrap, consume_all, create_topic, fresh_topic};
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let dir = fresh_dir("kafka-sink-aborted-tail");
    let topic = fresh_topic("sink-aborted-tail");
    create_topic(&topic, 1).await;
    let eddy = start(&dir, None).await;
    execute(
        &eddy.client,
        &format!(
            "CREATE TABLE orders (id INT, amount INT) WITH (append_only = true);
             CREATE MATERIALIZED VIEW big AS SELECT id, amount FROM orders WHERE amount > 10;
             CREATE SINK big_out FROM big
               WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
               FORMAT PLAIN ENCODE JSON;
             INSERT INTO orders VALUES (1, 100), (2, 200), (3, 5);
             FLUSH;
             INSERT INTO orders VALUES (5, 500)",
            bootstrap()
        ),
    )
    .await;
    // The final checkpoint holds row 5's epoch as not yet acknowledged by
    // the sink; the sink (still running in this process) commits it soon
    // after: a restart must find it committed.
    eddy.server.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1,500 messages of this sink in a transaction that never committed.
    let aborted = topic.clone();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("transactional.id", fresh_topic("killed-incarnation"))
            .create()
            .expect("producer");
        let timeout = Duration::from_secs(30);
        producer.init_transactions(timeout).expect("init");
        producer.begin_transaction().expect("begin");
        for i in 0..1_500 {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "eddy-sink",
                    value: Some("big_out"),
                })
                .insert(Header {
                    key: "eddy-epoch",
                    value: Some("1000000"),
                });
            let payload = format!(r#"{{"aborted": {i}}}"#);
            producer
                .send(
                    BaseRecord::<(), str>::to(&aborted)
                        .payload(&payload)
                        .headers(headers),
                )
                .expect("send");
        }
        producer.flush(timeout).expect("flush");
        producer.abort_transaction(timeout).expect("abort");
    })
    .await
    .expect("aborted transaction");

    let eddy = start(&dir, None).await;
    execute(&eddy.client, "INSERT INTO orders VALUES (4, 400); FLUSH").await;
    let mut messages: Vec<String> = consume_all(&topic, 4)
        .await
        .into_iter()
        .filter_map(|(_, value)| value)
        .collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            r#"{"id":1,"amount":100}"#,
            r#"{"id":2,"amount":200}"#,
            r#"{"id":4,"amount":400}"#,
            r#"{"id":5,"amount":500}"#
        ],
        "each row once"
    );
    eddy.server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Views over joins, top-N, window functions and ordered aggregates keep
/// their state across a restart: changes after it retract what was emitted
/// before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_top_n_resume_from_their_state() {
    const VIEWS: &[(&str, &str)] = &[
        (
            "with_customer",
            "SELECT c.name, o.id, o.amount FROM customers c FULL JOIN orders o ON o.customer = c.id",
        ),
        (
            "buyers",
            "SELECT name FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer = c.id)",
        ),
        (
            "never_ordered",
            "SELECT name FROM customers WHERE id NOT IN (SELECT customer FROM orders)",
        ),
        (
            "top2",
            "SELECT * FROM (SELECT customer, id, amount, ROW_NUMBER() OVER \
             (PARTITION BY customer ORDER BY amount DESC, id) AS rn FROM orders) x WHERE rn <= 2",
        ),
        (
            "running",
            "SELECT id, sum(amount) OVER (PARTITION BY customer ORDER BY id) AS total FROM orders",
        ),
        (
            "history",
            "SELECT customer, string_agg(CAST(id AS TEXT), ',' ORDER BY id) AS ids FROM orders GROUP BY customer",
        ),
    ];
    let dir = fresh_dir("joins");
    let eddy = start(&dir, None).await;
    execute(
        &eddy.client,
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT);
         CREATE TABLE orders (id BIGINT PRIMARY KEY, customer BIGINT, amount BIGINT);
         INSERT INTO customers VALUES (1, 'ada'), (2, 'bob'), (3, 'cy');
         INSERT INTO orders VALUES (10, 1, 5), (11, 1, 9), (12, 1, 7), (13, 2, 3), (14, 4, 1);",
    )
    .await;
    for (name, query) in VIEWS {
        execute(
            &eddy.client,
            &format!("CREATE MATERIALIZED VIEW {name} AS {query}"),
        )
        .await;
    }
    execute(&eddy.client, "FLUSH").await;
    async fn check(client: &Client, views: &[(&str, &str)]) {
        for (name, query) in views {
            assert_eq!(
                sorted_rows(client, &format!("SELECT * FROM {name}")).await,
                sorted_rows(client, query).await,
                "{name}"
            );
        }
    }
    check(&eddy.client, VIEWS).await;
    eddy.server.stop().await;

    // After each restart, changes that retract rows emitted before it; the
    // last two cross a NULL key in the NOT IN subquery.
    for changes in [
        "DELETE FROM customers WHERE id = 1;
         DELETE FROM orders WHERE id = 11;
         INSERT INTO customers VALUES (4, 'dee');
         UPDATE orders SET amount = 100 WHERE id = 10;",
        "INSERT INTO orders VALUES (15, NULL, 2);",
        "DELETE FROM orders WHERE id = 15;",
    ] {
        let eddy = start(&dir, None).await;
        check(&eddy.client, VIEWS).await;
        execute(&eddy.client, &format!("{changes} FLUSH;")).await;
        check(&eddy.client, VIEWS).await;
        eddy.server.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
