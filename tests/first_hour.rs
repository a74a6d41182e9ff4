//! A new user's first hour (issue 33): the start cannot trip on a busy web
//! port, mistakes answer at once naming the object and the cause, and a
//! steady state logs nothing over and over. Against the real binary (its
//! log is what a user reads), a real Kafka broker and a real PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::kafka::{bootstrap, create_topic, fresh_topic, produce_values};
use common::process::{free_port, EddyProcess};
use tokio_postgres::Client;

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-first-hour-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `sql`'s error as `message (SQLSTATE)`; panics if it succeeds.
async fn error_of(client: &Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql}: accepted, expected an error"),
        Err(e) => common::describe(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_default_web_port_is_said_and_eddy_starts_without_the_page() {
    // Whoever holds 6544 (this test, or anything else on the machine), it
    // is taken while eddy starts.
    let _holder = std::net::TcpListener::bind("127.0.0.1:6544");
    let mut eddy = EddyProcess::spawn_default_http(&test_dir("default-port"), &[]);
    let client = eddy.connect().await;
    common::execute(&client, "SELECT 1").await;
    let log = eddy.log();
    assert!(
        log.contains("cannot listen on 127.0.0.1:6544")
            && log.contains("--http-listen")
            && log.contains("--no-http"),
        "{log}"
    );
    assert!(log.contains("psql -h 127.0.0.1 -p"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_explicit_web_port_stops_eddy_and_a_free_one_is_logged() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let taken = holder.local_addr().unwrap().to_string();
    let mut eddy = EddyProcess::spawn(&test_dir("explicit-port"), &["--http-listen", &taken], &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while eddy.is_running() {
        assert!(
            Instant::now() < deadline,
            "eddy runs without its requested web port"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        eddy.log().contains(&format!("cannot listen on {taken}")),
        "{}",
        eddy.log()
    );

    let free = format!("127.0.0.1:{}", free_port());
    let mut eddy = EddyProcess::spawn(&test_dir("free-port"), &["--http-listen", &free], &[]);
    eddy.wait_ready().await;
    let log = eddy.log();
    assert!(
        log.contains(&format!("web page at http://{free}/"))
            && log.contains(&format!("http://{free}/metrics")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_mistakes_answer_at_create_with_the_cause() {
    let mut eddy = EddyProcess::spawn(&test_dir("source-mistakes"), &[], &[]);
    let client = eddy.connect().await;
    let kafka = bootstrap();

    let missing = fresh_topic("never-created");
    let error = error_of(
        &client,
        &format!(
            "CREATE SOURCE s (id BIGINT) WITH (connector = 'kafka', topic = '{missing}', \
             properties.bootstrap.server = '{kafka}') FORMAT PLAIN ENCODE JSON"
        ),
    )
    .await;
    assert!(
        error.contains(&format!("Kafka topic \"{missing}\" does not exist"))
            && error.ends_with("(42704)"),
        "{error}"
    );

    let error = error_of(
        &client,
        "CREATE SOURCE s (id BIGINT) WITH (connector = 'kafka', topic = 't', \
         properties.bootstrap.server = '127.0.0.1:1') FORMAT PLAIN ENCODE JSON",
    )
    .await;
    assert!(
        error.contains("cannot reach the Kafka broker at 127.0.0.1:1")
            && error.contains("Connection refused")
            && error.ends_with("(08001)"),
        "{error}"
    );

    let error = error_of(
        &client,
        "CREATE SOURCE s (id BIGINT) WITH (connector = 'kafak', topic = 't') FORMAT PLAIN ENCODE JSON",
    )
    .await;
    assert!(
        error.contains("source connector 'kafak' is not supported") && error.ends_with("(0A000)"),
        "{error}"
    );

    let error = error_of(
        &client,
        "CREATE TABLE t (a BIGINT); CREATE MATERIALIZED VIEW v AS SELECT a FROM t; \
         CREATE SINK k FROM v WITH (connector = 'postgres', url = 'postgres://postgres@127.0.0.1:1/x', \
         table = 't', primary_key = 'a')",
    )
    .await;
    assert!(
        error.contains("Connection refused") && error.ends_with("(08001)"),
        "{error}"
    );
    // Nothing half-made: the names are free.
    let sources = common::query_text(&client, "SHOW SOURCES").await;
    assert!(sources.is_empty(), "{sources:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_json_is_read_and_columns_that_match_no_field_are_reported() {
    let topic = fresh_topic("nested-json");
    create_topic(&topic, 1).await;
    // camelCase fields (matched ignoring case), a nested object (a jsonb
    // column), and a field declared at the top that is nested (reported).
    let messages: Vec<(i32, String)> = (0..120)
        .map(|i| {
            (
                0,
                format!(
                    r#"{{"id": {i}, "dateTime": "2024-01-01 00:00:{:02}", "data": {{"price": {}, "tags": ["a"]}}}}"#,
                    i % 60,
                    i % 3
                ),
            )
        })
        .collect();
    produce_values(&topic, &messages).await;
    let mut eddy = EddyProcess::spawn(&test_dir("json-fields"), &[], &[]);
    let client = eddy.connect().await;
    common::execute(
        &client,
        &format!(
            "CREATE SOURCE events (id BIGINT, dateTime TIMESTAMP, price BIGINT, data JSONB) \
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}') \
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_price AS
             SELECT (data ->> 'price')::bigint AS price, count(*) AS n, count(datetime) AS timed,
                    count(price) AS top_level
             FROM events WHERE data @> '{{\"tags\": [\"a\"]}}' GROUP BY data ->> 'price'",
            bootstrap()
        ),
    )
    .await;
    let reason = common::first_value_until(
        &client,
        "SELECT reason FROM eddy_catalog.source_errors WHERE source = 'events'",
        "a row",
        |_| true,
    )
    .await;
    assert!(
        reason.contains("declared column price matched no field")
            && reason.contains("fields data, dateTime, id"),
        "{reason}"
    );
    let per_price = common::first_value_until(
        &client,
        "SELECT string_agg(price || ':' || n || ':' || timed || ':' || top_level, ' ' ORDER BY price) \
         FROM per_price",
        "every message",
        |v| v == "0:40:40:0 1:40:40:0 2:40:40:0",
    )
    .await;
    assert_eq!(per_price, "0:40:40:0 1:40:40:0 2:40:40:0");
    // Listed, not counted as bad messages: the messages were taken.
    let counts = common::query_text(&client, "SELECT bad_messages FROM eddy_catalog.sources").await;
    assert_eq!(counts, vec![vec!["0".to_string()]]);
    assert_eq!(
        eddy.log().matches("matched no field").count(),
        1,
        "said once in the log:\n{}",
        eddy.log()
    );
}

/// What a log line says, without its timestamp and with numbers as `#`:
/// the same message about different epochs or counts is the same line.
fn shape(line: &str) -> String {
    let message = line.split_once(' ').map_or(line, |(_, rest)| rest);
    message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_minute_with_a_source_and_a_sink_repeats_no_log_line() {
    let topic = fresh_topic("steady");
    create_topic(&topic, 1).await;
    let mut eddy = EddyProcess::spawn(&test_dir("steady"), &["--checkpoint-interval", "1s"], &[]);
    let client = eddy.connect().await;
    let table = fresh_topic("steady_counts").replace('-', "_");
    common::execute(
        &client,
        &format!(
            "CREATE SOURCE clicks (page TEXT) WITH (connector = 'kafka', topic = '{topic}', \
             properties.bootstrap.server = '{}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW page_counts AS SELECT page, count(*) AS n FROM clicks GROUP BY page;
             CREATE SINK counts_pg FROM page_counts WITH (connector = 'postgres', url = '{}', \
             table = '{table}', primary_key = 'page', create_table = 'true');
             FLUSH",
            bootstrap(),
            common::postgres_url()
        ),
    )
    .await;
    let setup_log = eddy.log().len();
    // A minute of traffic: a message every half second.
    for i in 0..120 {
        produce_values(&topic, &[(0, format!(r#"{{"page": "p{}"}}"#, i % 7))]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    common::execute(&client, "FLUSH").await;
    let log = eddy.log();
    let steady = &log[setup_log..];
    let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
    for line in steady.lines().filter(|l| !l.trim().is_empty()) {
        *shapes.entry(shape(line)).or_default() += 1;
    }
    let repeated: Vec<_> = shapes.iter().filter(|(_, n)| **n > 2).collect();
    assert!(
        repeated.is_empty(),
        "log lines repeated in a steady minute: {repeated:#?}\n--- the minute's log:\n{steady}"
    );
    let rows = common::query_text(&client, "SELECT sum(n) FROM page_counts").await;
    assert_eq!(rows, vec![vec!["120".to_string()]]);
}
