//! Kafka sources against a real Apache Kafka broker (scripts/kafka.sh starts
//! it; `EDDY_TEST_KAFKA` is its bootstrap address). Messages are produced
//! with rdkafka, read by eddy's Kafka sources, and the views compared with
//! what was produced.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{
    admin, bootstrap, consume_all, create_topic, eventually, fresh_topic, produce, produce_values,
};
use common::{execute, query_text, sorted_rows, TestServer};
use rdkafka::admin::{AdminOptions, NewPartitions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_source_with_metadata_and_bad_messages() {
    let topic = fresh_topic("plain-json");
    create_topic(&topic, 2).await;
    produce(
        &topic,
        &[
            (
                0,
                Some("a"),
                Some(r#"{"id": 1, "name": "ann", "score": 10}"#),
            ),
            (
                1,
                Some("b"),
                Some(r#"{"id": 2, "name": "bob", "score": 20}"#),
            ),
            (0, None, Some("this is not json")),
            (1, None, Some(r#"{"id": "three", "name": "x"}"#)),
            (0, None, Some(r#"{"name": "no id"}"#)),
            (1, None, None),
            (
                0,
                Some("c"),
                Some(r#"{"id": 3, "name": "cid", "score": 30, "extra": true}"#),
            ),
        ],
    )
    .await;
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE people (id BIGINT NOT NULL, name TEXT, score INT)
             INCLUDE partition INCLUDE offset AS position INCLUDE key
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW everyone AS
               SELECT id, name, score, kafka_partition, position, kafka_key FROM people;
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(score) AS total FROM people",
            bootstrap()
        ),
    )
    .await;
    eventually(
        &eddy,
        "SELECT * FROM everyone",
        vec![
            vec!["1", "ann", "10", "0", "0", "a"],
            vec!["2", "bob", "20", "1", "0", "b"],
            vec!["3", "cid", "30", "0", "3", "c"],
        ],
    )
    .await;
    eventually(&eddy, "SELECT * FROM totals", vec![vec!["3", "60"]]).await;
    // The bad messages are listed once, whichever view's reader met them
    // first.
    let errors = sorted_rows(
        &eddy,
        "SELECT view, partition, \"offset\", reason FROM eddy_catalog.source_errors",
    )
    .await;
    let places: Vec<(String, String)> = errors
        .iter()
        .map(|r| (r[1].clone(), r[2].clone()))
        .collect();
    assert_eq!(
        places,
        vec![
            ("0".to_string(), "1".to_string()),
            ("0".to_string(), "2".to_string()),
            ("1".to_string(), "1".to_string()),
            ("1".to_string(), "2".to_string()),
        ],
        "{errors:?}"
    );
    assert!(
        errors[1][3].contains("missing required field \"id\""),
        "{errors:?}"
    );
    assert!(errors[3][3].contains("empty message"), "{errors:?}");
    // Two views read the source: the source counts the four bad messages
    // once; each view's reader skipped two per partition.
    let sources = query_text(
        &eddy,
        "SELECT name, connector, bad_messages FROM eddy_catalog.sources",
    )
    .await;
    assert_eq!(
        sources,
        vec![vec![
            "people".to_string(),
            format!("kafka topic {topic}"),
            "4".to_string()
        ]]
    );
    let per_view = sorted_rows(
        &eddy,
        "SELECT view, partition, bad_messages FROM eddy_catalog.source_partitions",
    )
    .await;
    assert_eq!(
        per_view,
        vec![
            vec!["everyone", "0", "2"],
            vec!["everyone", "1", "2"],
            vec!["totals", "0", "2"],
            vec!["totals", "1", "2"],
        ]
    );
    server.stop().await;
}

/// Each view's reader builds only the columns the view reads (a PROCTIME()
/// column in between shifts the payload's columns), yet every view takes
/// the same messages for bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_build_only_the_columns_they_read() {
    let topic = fresh_topic("columns");
    create_topic(&topic, 1).await;
    let order = |id: i64, note: &str, amount: &str, second: i64, city: &str| {
        format!(
            r#"{{"id": {id}, "note": "{note}", "amount": {amount}, "ts": "2024-01-01 00:00:{second:02}", "city": "{city}"}}"#
        )
    };
    let payloads = [
        (0, order(1, "a", "5", 1, "Oslo")),
        (0, order(2, "b", "7", 2, "Rome")),
        (0, order(3, "c", "\"lots\"", 3, "Oslo")),
        (0, order(4, "d", "1", 12, "Oslo")),
    ];
    produce_values(&topic, &payloads).await;
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE orders (id BIGINT, arrived TIMESTAMP AS PROCTIME(), note TEXT, amount INT,
                ts TIMESTAMP, city TEXT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW by_city AS SELECT city, sum(amount) AS total FROM orders GROUP BY city;
             CREATE MATERIALIZED VIEW notes AS SELECT note FROM orders WHERE id > 1;
             CREATE MATERIALIZED VIEW per_10s AS
               SELECT window_start, count(*) AS n, max(note) AS last_note
               FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end;
             CREATE MATERIALIZED VIEW everything AS SELECT id, note, amount, ts, city FROM orders",
            bootstrap()
        ),
    )
    .await;
    eventually(
        &eddy,
        "SELECT * FROM by_city",
        vec![vec!["Oslo", "6"], vec!["Rome", "7"]],
    )
    .await;
    eventually(&eddy, "SELECT * FROM notes", vec![vec!["b"], vec!["d"]]).await;
    eventually(
        &eddy,
        "SELECT * FROM per_10s",
        vec![
            vec!["2024-01-01 00:00:00", "2", "b"],
            vec!["2024-01-01 00:00:10", "1", "d"],
        ],
    )
    .await;
    eventually(
        &eddy,
        "SELECT * FROM everything",
        vec![
            vec!["1", "a", "5", "2024-01-01 00:00:01", "Oslo"],
            vec!["2", "b", "7", "2024-01-01 00:00:02", "Rome"],
            vec!["4", "d", "1", "2024-01-01 00:00:12", "Oslo"],
        ],
    )
    .await;
    // The bad amount is bad for every view, whether it reads amount or not
    // (listed and counted once for the source).
    let bad = sorted_rows(&eddy, "SELECT \"offset\" FROM eddy_catalog.source_errors").await;
    assert_eq!(bad, vec![vec!["2"]]);
    let per_view = sorted_rows(
        &eddy,
        "SELECT view, bad_messages FROM eddy_catalog.source_partitions",
    )
    .await;
    assert_eq!(
        per_view,
        ["by_city", "everything", "notes", "per_10s"]
            .iter()
            .map(|view| vec![view.to_string(), "1".to_string()])
            .collect::<Vec<_>>()
    );
    // The watermark follows ts (read from its place in the payload, which
    // the PROCTIME() column before it does not shift) in every reader.
    eventually(
        &eddy,
        "SELECT watermark FROM eddy_catalog.source_stats WHERE name = 'orders'",
        vec![vec!["2024-01-01 00:00:11"]],
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_debezium_and_csv_sources() {
    let (upserts, changes, lines) = (
        fresh_topic("upsert"),
        fresh_topic("debezium"),
        fresh_topic("csv"),
    );
    for topic in [&upserts, &changes, &lines] {
        create_topic(topic, 1).await;
    }
    produce(
        &upserts,
        &[
            (0, Some("1"), Some(r#"{"id": 1, "city": "Oslo"}"#)),
            (0, Some("2"), Some(r#"{"id": 2, "city": "Rome"}"#)),
            (0, Some("1"), Some(r#"{"id": 1, "city": "Bergen"}"#)),
            (0, Some("2"), None),
            (0, None, Some(r#"{"id": 9, "city": "no key"}"#)),
        ],
    )
    .await;
    produce(
        &changes,
        &[
            (
                0,
                None,
                Some(r#"{"before": null, "after": {"id": 1, "qty": 5}, "op": "c"}"#),
            ),
            (
                0,
                None,
                Some(r#"{"payload": {"before": null, "after": {"id": 2, "qty": 7}, "op": "c"}}"#),
            ),
            (
                0,
                None,
                Some(r#"{"before": {"id": 1, "qty": 5}, "after": {"id": 1, "qty": 6}, "op": "u"}"#),
            ),
            (
                0,
                None,
                Some(r#"{"before": {"id": 2, "qty": 7}, "after": null, "op": "d"}"#),
            ),
        ],
    )
    .await;
    produce(
        &lines,
        &[
            (0, None, Some("1;north;2.5")),
            (0, None, Some("2;south;x")),
            (0, None, Some("3;;1")),
        ],
    )
    .await;
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let kafka = bootstrap();
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE cities (id BIGINT PRIMARY KEY, city TEXT)
             WITH (connector = 'kafka', topic = '{upserts}', properties.bootstrap.server = '{kafka}')
             FORMAT UPSERT ENCODE JSON;
             CREATE SOURCE stock (id BIGINT, qty INT)
             WITH (connector = 'kafka', topic = '{changes}', properties.bootstrap.server = '{kafka}')
             FORMAT DEBEZIUM ENCODE JSON;
             CREATE SOURCE readings (id INT, region TEXT, value DOUBLE PRECISION)
             WITH (connector = 'kafka', topic = '{lines}', properties.bootstrap.server = '{kafka}')
             FORMAT PLAIN ENCODE CSV (delimiter = ';');
             CREATE MATERIALIZED VIEW current_cities AS SELECT * FROM cities;
             CREATE MATERIALIZED VIEW stock_now AS SELECT * FROM stock;
             CREATE MATERIALIZED VIEW per_region AS SELECT region, count(*) AS n, sum(value) AS total FROM readings GROUP BY region"
        ),
    )
    .await;
    eventually(
        &eddy,
        "SELECT * FROM current_cities",
        vec![vec!["1", "Bergen"]],
    )
    .await;
    eventually(&eddy, "SELECT * FROM stock_now", vec![vec!["1", "6"]]).await;
    eventually(
        &eddy,
        "SELECT * FROM per_region",
        vec![vec!["NULL", "1", "1"], vec!["north", "1", "2.5"]],
    )
    .await;
    let skipped = query_text(&eddy, "SELECT count(*) FROM eddy_catalog.source_errors").await;
    assert_eq!(
        skipped,
        vec![vec!["2".to_string()]],
        "the keyless upsert and the bad CSV line"
    );
    server.stop().await;
}

/// Events spread over three partitions, out of order within each: the
/// per-partition watermark closes exactly the windows the oracle closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_over_a_partitioned_topic() {
    let topic = fresh_topic("windows");
    create_topic(&topic, 3).await;
    // Event i at second (i / 3 + a jitter of up to 2 s), in partition i % 3.
    let events: Vec<(i32, i64, i64)> = (0..600i64)
        .map(|i| ((i % 3) as i32, i, i / 3 - (i * 7 % 3)))
        .collect();
    let payloads: Vec<(i32, String)> = events
        .iter()
        .map(|(p, i, s)| {
            (
                *p,
                format!(
                    r#"{{"id": {i}, "ts": "2024-01-01 00:{:02}:{:02}"}}"#,
                    (*s).max(0) / 60,
                    (*s).max(0) % 60
                ),
            )
        })
        .collect();
    produce_values(&topic, &payloads).await;
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE ticks (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW all_ticks AS SELECT * FROM ticks;
             CREATE MATERIALIZED VIEW per_10s AS
               SELECT window_start, count(*) AS n FROM TUMBLE(ticks, ts, INTERVAL '10' SECOND)
               GROUP BY window_start, window_end EMIT ON WINDOW CLOSE",
            bootstrap()
        ),
    )
    .await;
    eventually(&eddy, "SELECT count(*) FROM all_ticks", vec![vec!["600"]]).await;
    // The last event is at 199 s: the watermark is at 196 s, so windows up
    // to [180, 190) are closed, and nothing was late.
    let oracle = sorted_rows(
        &eddy,
        "SELECT window_start, count(*) FROM TUMBLE(all_ticks, ts, INTERVAL '10' SECOND)
         WHERE window_end <= TIMESTAMP '2024-01-01 00:03:16' GROUP BY window_start",
    )
    .await;
    assert_eq!(oracle.len(), 19);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let closed = sorted_rows(&eddy, "SELECT * FROM per_10s").await;
        if closed == oracle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed windows {closed:?} vs {oracle:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = query_text(
        &eddy,
        "SELECT late_rows FROM eddy_catalog.materialized_views WHERE name = 'per_10s'",
    )
    .await;
    assert_eq!(late, vec![vec!["0".to_string()]]);
    // A partition added later is read too.
    admin()
        .create_partitions(
            &[NewPartitions::new(&topic, 4)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("add a partition")
        .into_iter()
        .for_each(|r| {
            r.expect("partition added");
        });
    produce(
        &topic,
        &[(
            3,
            None,
            Some(r#"{"id": 1000, "ts": "2024-01-01 00:03:30"}"#),
        )],
    )
    .await;
    eventually(&eddy, "SELECT count(*) FROM all_ticks", vec![vec!["601"]]).await;
    server.stop().await;
}

/// Values that would be silently wrong are bad messages with a reason: a
/// fraction into BIGINT, a missing event time, an event time far in the
/// future (which would otherwise drag the watermark along and make every
/// later message late). Each is counted once per source however many
/// views read it, and the count survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_and_bad_clocks_are_counted_once() {
    let topic = fresh_topic("bad-clock");
    create_topic(&topic, 1).await;
    let mut payloads: Vec<(i32, String)> = (0..100)
        .map(|i| {
            (
                0,
                format!(
                    r#"{{"id": {i}, "ts": "2024-01-01 00:{:02}:{:02}"}}"#,
                    i / 60,
                    i % 60
                ),
            )
        })
        .collect();
    payloads.insert(
        10,
        (0, r#"{"id": 7.5, "ts": "2024-01-01 00:00:10"}"#.into()),
    );
    payloads.insert(20, (0, r#"{"id": 1000}"#.into()));
    payloads.insert(30, (0, r#"{"id": 1001, "ts": null}"#.into()));
    payloads.insert(
        40,
        (0, r#"{"id": 1002, "ts": "2100-01-01 00:00:00"}"#.into()),
    );
    produce_values(&topic, &payloads).await;
    let data_dir = std::env::temp_dir().join(format!("eddy-{topic}"));
    let _ = std::fs::remove_dir_all(&data_dir);
    let location = data_dir.to_string_lossy().to_string();
    let start = || {
        let location = location.clone();
        TestServer::start_with(move |options| options.checkpoint_location = Some(location))
    };
    let server = start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE ticks (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW all_ticks AS SELECT * FROM ticks;
             CREATE MATERIALIZED VIEW per_10s AS
               SELECT window_start, count(*) AS n FROM TUMBLE(ticks, ts, INTERVAL '10' SECOND)
               GROUP BY window_start, window_end",
            bootstrap()
        ),
    )
    .await;
    eventually(&eddy, "SELECT count(*) FROM all_ticks", vec![vec!["100"]]).await;
    eventually(&eddy, "SELECT sum(n) FROM per_10s", vec![vec!["100"]]).await;
    // Nothing was late: the message from 2100 did not move the watermark.
    let late = query_text(
        &eddy,
        "SELECT late_rows FROM eddy_catalog.materialized_views WHERE name = 'per_10s'",
    )
    .await;
    assert_eq!(late, vec![vec!["0"]]);
    // Four bad messages, counted once for the source, once per view beside.
    let count = "SELECT bad_messages FROM eddy_catalog.sources WHERE name = 'ticks'";
    assert_eq!(query_text(&eddy, count).await, vec![vec!["4"]]);
    let per_view = sorted_rows(
        &eddy,
        "SELECT view, bad_messages FROM eddy_catalog.source_partitions WHERE source = 'ticks'",
    )
    .await;
    assert_eq!(per_view, vec![vec!["all_ticks", "4"], vec!["per_10s", "4"]]);
    let reasons = query_text(
        &eddy,
        "SELECT \"offset\", reason FROM eddy_catalog.source_errors ORDER BY \"offset\"",
    )
    .await;
    let offsets: Vec<&str> = reasons.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(offsets, ["10", "20", "30", "40"], "{reasons:?}");
    assert!(reasons[0][1].contains("7.5"), "{reasons:?}");
    assert!(reasons[1][1].contains("missing event time"), "{reasons:?}");
    assert!(reasons[2][1].contains("missing event time"), "{reasons:?}");
    assert!(
        reasons[3][1].contains("2100-01-01") && reasons[3][1].contains("watermark.max_future"),
        "{reasons:?}"
    );
    // A view created later reads them again without counting them again.
    execute(
        &eddy,
        "CREATE MATERIALIZED VIEW late_comer AS SELECT count(*) AS n FROM ticks",
    )
    .await;
    eventually(&eddy, "SELECT n FROM late_comer", vec![vec!["100"]]).await;
    assert_eq!(query_text(&eddy, count).await, vec![vec!["4"]]);
    execute(&eddy, "CHECKPOINT").await;
    server.stop().await;

    // After a restart the count is still there, and one more bad message
    // adds one.
    let server = start().await;
    let eddy = server.connect().await;
    assert_eq!(query_text(&eddy, count).await, vec![vec!["4"]]);
    produce_values(&topic, &[(0, "not json".to_string())]).await;
    eventually(&eddy, count, vec![vec!["5"]]).await;

    // The option is checked; 'off' takes any time.
    let error = eddy
        .batch_execute(&format!(
            "CREATE SOURCE s (ts TIMESTAMP, WATERMARK FOR ts AS ts)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}',
                   watermark.max_future = 'soon')
             FORMAT PLAIN ENCODE JSON",
            bootstrap()
        ))
        .await
        .expect_err("refused");
    assert!(common::describe(&error).contains("watermark.max_future = 'soon'"));
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE anytime (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}',
                   watermark.max_future = 'off')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW far AS SELECT count(*) AS n FROM anytime WHERE ts > '2099-01-01'",
            bootstrap()
        ),
    )
    .await;
    eventually(&eddy, "SELECT n FROM far", vec![vec!["1"]]).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Whether a row is late depends on the messages before it in its
/// partition, not on how many eddy read at once: one view reads the topic
/// live (a few messages at a time, as they are produced), another reads
/// the same messages as a backlog (thousands at a time); both drop the
/// same rows, the ones a message-by-message watermark makes late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_do_not_depend_on_read_speed() {
    const BASE_MS: i64 = 1_704_067_200_000; // 2024-01-01 00:00:00
    const DELAY_MS: i64 = 1_000;
    const WINDOW_MS: i64 = 1_000;
    let topic = fresh_topic("lateness");
    create_topic(&topic, 1).await;
    // Every fifth message is up to 3.6 s behind the others.
    let times: Vec<i64> = (0..1500i64)
        .map(|i| {
            let behind = if i % 5 == 0 { (i * 7919 % 37) * 100 } else { 0 };
            BASE_MS + i * 100 - behind
        })
        .collect();
    // The oracle: the watermark before each message follows the newest
    // time before it; a row whose window ended by then is late.
    let mut newest: Option<i64> = None;
    let mut on_time: std::collections::BTreeMap<i64, i64> = Default::default();
    let mut late = 0;
    for &t in &times {
        let window_start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
        if newest.is_some_and(|n| window_start + WINDOW_MS <= n - DELAY_MS) {
            late += 1;
        } else {
            *on_time.entry(window_start).or_default() += 1;
        }
        newest = Some(newest.map_or(t, |n| n.max(t)));
    }
    assert!(late > 50, "the data has late rows: {late}");
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let view = |name: &str| {
        format!(
            "CREATE MATERIALIZED VIEW {name} AS
               SELECT window_start, count(*) AS n FROM TUMBLE(ticks, ts, INTERVAL '1' SECOND)
               GROUP BY window_start, window_end"
        )
    };
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE ticks (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             {}",
            bootstrap(),
            view("live")
        ),
    )
    .await;
    let payloads: Vec<(i32, String)> = times
        .iter()
        .enumerate()
        .map(|(i, t)| (0, format!(r#"{{"id": {i}, "ts": {}}}"#, t * 1000)))
        .collect();
    for chunk in payloads.chunks(5) {
        produce_values(&topic, chunk).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    execute(&eddy, &view("backlog")).await;
    let expected: Vec<Vec<String>> = {
        let mut rows: Vec<Vec<String>> = on_time
            .iter()
            .map(|(start, n)| {
                let start = chrono::DateTime::from_timestamp_millis(*start).unwrap();
                vec![start.format("%Y-%m-%d %H:%M:%S").to_string(), n.to_string()]
            })
            .collect();
        rows.sort();
        rows
    };
    let late_rows = |name: &'static str| {
        format!("SELECT late_rows FROM eddy_catalog.materialized_views WHERE name = '{name}'")
    };
    for name in ["live", "backlog"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = sorted_rows(&eddy, &format!("SELECT * FROM {name}")).await;
            if rows == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {} windows, {} rows vs {} expected; late: {:?} vs {late}",
                rows.len(),
                rows.iter()
                    .map(|r| r[1].parse::<i64>().unwrap())
                    .sum::<i64>(),
                times.len() - late,
                query_text(&eddy, &late_rows(name)).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            query_text(&eddy, &late_rows(name)).await,
            vec![vec![late.to_string()]],
            "{name}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_fail_stops_the_view() {
    let topic = fresh_topic("strict");
    create_topic(&topic, 1).await;
    produce(
        &topic,
        &[(0, None, Some(r#"{"id": 1}"#)), (0, None, Some("{oops"))],
    )
    .await;
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE strict (id BIGINT)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}', on_error = 'fail')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW strict_view AS SELECT * FROM strict",
            bootstrap()
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = query_text(
            &eddy,
            "SELECT status, last_error FROM eddy_catalog.materialized_views WHERE name = 'strict_view'",
        )
        .await;
        if status[0][0] != "running" {
            assert!(
                status[0][0].contains("partition 0 offset 1")
                    && status[0][0].contains("on_error = 'fail'"),
                "{status:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the view did not stop: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kafka_source_definitions() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let kafka = bootstrap();
    for (sql, message) in [
        (
            format!("CREATE SOURCE s (id INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{kafka}')"),
            "needs FORMAT",
        ),
        (
            "CREATE SOURCE s (id INT) WITH (connector = 'kafka', topic = 't') FORMAT PLAIN ENCODE JSON".to_string(),
            "properties.bootstrap.server",
        ),
        (
            format!("CREATE SOURCE s (id INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{kafka}') FORMAT UPSERT ENCODE JSON"),
            "FORMAT UPSERT needs a PRIMARY KEY",
        ),
        (
            format!("CREATE SOURCE s (id INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{kafka}') FORMAT PLAIN ENCODE AVRO"),
            "ENCODE AVRO needs (schema = '<Avro schema JSON>') or (schema.file = 'path')",
        ),
        (
            format!("CREATE SOURCE s (id INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{kafka}') FORMAT PLAIN ENCODE AVRO (schema = '{{\"type\": \"nope\"}}')"),
            "the Avro schema does not parse",
        ),
        (
            format!("CREATE SOURCE s (id INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{kafka}', scan.startup.mode = 'middle') FORMAT PLAIN ENCODE JSON"),
            "is not earliest, latest or timestamp",
        ),
        (
            "CREATE SOURCE s (id INT) WITH (connector = 'datagen') FORMAT PLAIN ENCODE JSON".to_string(),
            "are for Kafka sources",
        ),
        (
            format!("CREATE SOURCE s (id INT) WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = '{kafka}', properties.fetch.wait.max.ms = 'soon') FORMAT PLAIN ENCODE JSON"),
            "fetch.wait.max.ms",
        ),
    ] {
        let error = eddy.batch_execute(&sql).await.expect_err(&sql);
        let text = common::describe(&error);
        assert!(text.contains(message), "{sql}: {text}");
    }
    server.stop().await;
}

/// `{"customer": ..., "total": ...}` as a row of text.
fn customer_total(json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(json).expect("JSON");
    vec![
        value["customer"].as_str().expect("customer").to_string(),
        value["total"].to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_write_what_the_views_hold() {
    let (plain, upsert, debezium) = (
        fresh_topic("sink-plain"),
        fresh_topic("sink-upsert"),
        fresh_topic("sink-debezium"),
    );
    for topic in [&plain, &upsert, &debezium] {
        create_topic(topic, 1).await;
    }
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let kafka = bootstrap();
    execute(
        &eddy,
        &format!(
            "CREATE TABLE orders (id INT, customer TEXT, amount INT) WITH (append_only = true);
             CREATE TABLE accounts (id INT PRIMARY KEY, customer TEXT, amount INT);
             CREATE MATERIALIZED VIEW big_orders AS SELECT id, customer, amount FROM orders WHERE amount > 10;
             CREATE MATERIALIZED VIEW totals AS SELECT customer, sum(amount) AS total FROM accounts GROUP BY customer;
             CREATE SINK big_out FROM big_orders
               WITH (connector = 'kafka', topic = '{plain}', properties.bootstrap.server = '{kafka}')
               FORMAT PLAIN ENCODE JSON;
             CREATE SINK totals_out FROM totals
               WITH (connector = 'kafka', topic = '{upsert}', properties.bootstrap.server = '{kafka}')
               FORMAT UPSERT ENCODE JSON;
             CREATE SINK totals_cdc AS SELECT customer, sum(amount) AS total FROM accounts GROUP BY customer
               WITH (connector = 'kafka', topic = '{debezium}', properties.bootstrap.server = '{kafka}')
               FORMAT DEBEZIUM ENCODE JSON;"
        ),
    )
    .await;
    execute(
        &eddy,
        "INSERT INTO orders VALUES (1, 'ann', 5), (2, 'bob', 50), (3, 'ann', 70);
         INSERT INTO accounts VALUES (1, 'ann', 10), (2, 'bob', 20), (3, 'cid', 30);
         FLUSH;
         UPDATE accounts SET amount = 15 WHERE id = 1;
         DELETE FROM accounts WHERE id = 3;
         INSERT INTO orders VALUES (4, 'cid', 11);
         FLUSH",
    )
    .await;

    // PLAIN: one message per row of the append-only view.
    let mut values: Vec<String> = consume_all(&plain, 3)
        .await
        .into_iter()
        .map(|(_, v)| v.expect("a value"))
        .collect();
    values.sort();
    assert_eq!(
        values,
        vec![
            r#"{"id":2,"customer":"bob","amount":50}"#,
            r#"{"id":3,"customer":"ann","amount":70}"#,
            r#"{"id":4,"customer":"cid","amount":11}"#,
        ]
    );

    // UPSERT: replaying key -> last value (a tombstone deletes) gives the view.
    let view = sorted_rows(&eddy, "SELECT customer, total FROM totals").await;
    let messages = consume_all(&upsert, 4).await;
    let mut table = std::collections::BTreeMap::new();
    for (key, value) in &messages {
        let key = key.clone().expect("upsert messages have keys");
        match value {
            Some(value) => table.insert(key, customer_total(value)),
            None => table.remove(&key),
        };
    }
    let mut replayed: Vec<Vec<String>> = table.into_values().collect();
    replayed.sort();
    assert_eq!(replayed, view, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|(k, v)| v.is_none() && k.as_deref() == Some(r#"{"customer":"cid"}"#)),
        "a tombstone for the deleted group: {messages:?}"
    );

    // DEBEZIUM: before/after events replay to the view too.
    let events = consume_all(&debezium, 5).await;
    let mut table = std::collections::BTreeMap::new();
    let mut ops = Vec::new();
    for (_, value) in &events {
        let event: serde_json::Value =
            serde_json::from_str(value.as_deref().expect("a value")).unwrap();
        ops.push(event["op"].as_str().unwrap().to_string());
        if !event["before"].is_null() {
            table.remove(&event["before"]["customer"].to_string());
        }
        if !event["after"].is_null() {
            table.insert(
                event["after"]["customer"].to_string(),
                customer_total(&event["after"].to_string()),
            );
        }
    }
    let mut replayed: Vec<Vec<String>> = table.into_values().collect();
    replayed.sort();
    assert_eq!(replayed, view, "{events:?}");
    ops.sort();
    assert_eq!(ops, vec!["c", "c", "c", "d", "u"], "{events:?}");

    // An updating view cannot feed FORMAT PLAIN.
    let error = eddy
        .batch_execute(&format!(
            "CREATE SINK wrong FROM totals WITH (connector = 'kafka', topic = 'x', properties.bootstrap.server = '{kafka}')
             FORMAT PLAIN ENCODE JSON"
        ))
        .await
        .expect_err("refused");
    assert!(
        common::describe(&error).contains("FORMAT PLAIN needs an append-only input"),
        "{}",
        common::describe(&error)
    );
    let sinks = query_text(
        &eddy,
        "SELECT name, status FROM eddy_catalog.sinks ORDER BY name",
    )
    .await;
    assert!(sinks.iter().all(|r| r[1] == "running"), "{sinks:?}");
    server.stop().await;
}

/// A message larger than the producer takes is skipped and listed
/// (`on_error = 'skip'`, the default) or fails the sink (`'fail'`); the
/// rest of the epoch is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_follow_the_sinks_policy() {
    let (skipping, failing) = (fresh_topic("sink-big-skip"), fresh_topic("sink-big-fail"));
    for topic in [&skipping, &failing] {
        create_topic(topic, 1).await;
    }
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let kafka = bootstrap();
    execute(
        &eddy,
        &format!(
            "CREATE TABLE notes (id INT, body TEXT) WITH (append_only = true);
             CREATE MATERIALIZED VIEW all_notes AS SELECT id, body FROM notes;
             CREATE SINK notes_skip FROM all_notes
               WITH (connector = 'kafka', topic = '{skipping}', properties.bootstrap.server = '{kafka}',
                     properties.message.max.bytes = '2000')
               FORMAT PLAIN ENCODE JSON;
             CREATE SINK notes_fail FROM all_notes
               WITH (connector = 'kafka', topic = '{failing}', properties.bootstrap.server = '{kafka}',
                     properties.message.max.bytes = '2000', on_error = 'fail')
               FORMAT PLAIN ENCODE JSON;
             INSERT INTO notes VALUES (1, 'short'), (2, repeat('x', 5000)), (3, 'also short')"
        ),
    )
    .await;
    let flush = eddy
        .simple_query("FLUSH")
        .await
        .expect_err("notes_fail failed");
    let message = common::describe(&flush);
    assert!(
        message.contains("sink notes_fail failed") && message.contains("message.max.bytes (2000)"),
        "{message}"
    );
    let mut values: Vec<String> = consume_all(&skipping, 2)
        .await
        .into_iter()
        .map(|(_, v)| v.expect("a value"))
        .collect();
    values.sort();
    assert_eq!(
        values,
        [
            r#"{"id":1,"body":"short"}"#,
            r#"{"id":3,"body":"also short"}"#
        ]
    );
    let errors = query_text(
        &eddy,
        "SELECT sink, key, reason FROM eddy_catalog.sink_errors",
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0][0], "notes_skip");
    assert!(
        errors[0][1].starts_with(r#"{"id":2,"body":"xxx"#),
        "{errors:?}"
    );
    assert!(
        errors[0][2].contains("larger than message.max.bytes"),
        "{errors:?}"
    );
    let sinks = query_text(
        &eddy,
        "SELECT name, status, rows_written::TEXT, rows_skipped::TEXT FROM eddy_catalog.sinks ORDER BY name",
    )
    .await;
    assert!(sinks[0][1].starts_with("failed:"), "{sinks:?}");
    assert_eq!(sinks[1], ["notes_skip", "running", "2", "1"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_source_with_an_inline_schema_and_a_schema_file() {
    use apache_avro::types::{Record, Value};
    let topic = fresh_topic("avro");
    create_topic(&topic, 1).await;
    let schema_text = r#"{"type": "record", "name": "reading", "fields": [
        {"name": "sensor", "type": "string"},
        {"name": "value", "type": "double"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
    let schema = apache_avro::Schema::parse_str(schema_text).unwrap();
    let datum = |sensor: &str, value: f64, at_ms: i64| {
        let mut record = Record::new(&schema).unwrap();
        record.put("sensor", sensor);
        record.put("value", value);
        record.put("at", Value::TimestampMillis(at_ms));
        apache_avro::to_avro_datum(&schema, record).unwrap()
    };
    let base = 1_704_067_200_000i64; // 2024-01-01 00:00:00
    let payloads = [
        datum("a", 1.5, base),
        datum("b", 2.0, base + 1000),
        b"\x02no".to_vec(),
        datum("a", 3.0, base + 2000),
    ];
    // Avro payloads are bytes, not text: produce them directly.
    let producer = common::kafka::producer();
    for payload in &payloads {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), [u8]>::to(&topic).payload(payload.as_slice()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    // Schema files are read only inside a directory the server allows.
    let schemas = std::env::temp_dir().join(format!("{topic}-schemas"));
    std::fs::create_dir_all(&schemas).unwrap();
    let schema_file = schemas.join(format!("{topic}.avsc"));
    std::fs::write(&schema_file, schema_text).unwrap();
    let server = TestServer::start_with(|options| {
        options.connector_policy =
            eddy::connectors::policy::ConnectorPolicy::new(std::slice::from_ref(&schemas), None)
                .expect("a policy");
    })
    .await;
    let eddy = server.connect().await;
    let kafka = bootstrap();
    let inline = schema_text.replace('\'', "''");
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE readings (sensor TEXT, value DOUBLE PRECISION, at TIMESTAMP)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{kafka}')
             FORMAT PLAIN ENCODE AVRO (schema = '{inline}');
             CREATE SOURCE readings_again (sensor TEXT, at TIMESTAMP)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{kafka}')
             FORMAT PLAIN ENCODE AVRO (schema.file = '{}');
             CREATE MATERIALIZED VIEW per_sensor AS
               SELECT sensor, count(*) AS n, sum(value) AS total, max(at) AS last FROM readings GROUP BY sensor;
             CREATE MATERIALIZED VIEW again AS SELECT sensor, at FROM readings_again",
            schema_file.display()
        ),
    )
    .await;
    eventually(
        &eddy,
        "SELECT * FROM per_sensor",
        vec![
            vec!["a", "2", "4.5", "2024-01-01 00:00:02"],
            vec!["b", "1", "2", "2024-01-01 00:00:01"],
        ],
    )
    .await;
    eventually(&eddy, "SELECT count(*) FROM again", vec![vec!["3"]]).await;
    let errors = query_text(
        &eddy,
        "SELECT \"offset\", reason FROM eddy_catalog.source_errors WHERE view = 'per_sensor'",
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0][0], "2");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_modes() {
    let topic = fresh_topic("startup");
    create_topic(&topic, 1).await;
    // Three messages with broker timestamps one minute apart.
    let base = 1_704_067_200_000i64;
    let producer = common::kafka::producer();
    for (i, at) in [base, base + 60_000, base + 120_000]
        .into_iter()
        .enumerate()
    {
        let payload = format!(r#"{{"id": {i}}}"#);
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), str>::to(&topic)
                    .payload(&payload)
                    .timestamp(at),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let kafka = bootstrap();
    let source = |name: &str, startup: &str| {
        format!(
            "CREATE SOURCE {name} (id INT) INCLUDE timestamp
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{kafka}', {startup})
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW {name}_ids AS SELECT id, kafka_timestamp FROM {name};"
        )
    };
    execute(
        &eddy,
        &[
            source("from_start", "scan.startup.mode = 'earliest'"),
            source(
                "from_time",
                &format!(
                    "scan.startup.mode = 'timestamp', scan.startup.timestamp.millis = '{}'",
                    base + 60_000
                ),
            ),
            source("from_now", "scan.startup.mode = 'latest'"),
        ]
        .concat(),
    )
    .await;
    eventually(
        &eddy,
        "SELECT * FROM from_start_ids",
        vec![
            vec!["0", "2024-01-01 00:00:00"],
            vec!["1", "2024-01-01 00:01:00"],
            vec!["2", "2024-01-01 00:02:00"],
        ],
    )
    .await;
    eventually(
        &eddy,
        "SELECT id FROM from_time_ids",
        vec![vec!["1"], vec!["2"]],
    )
    .await;
    // 'latest' sees only what comes after it started reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce(&topic, &[(0, None, Some(r#"{"id": 3}"#))]).await;
    eventually(&eddy, "SELECT id FROM from_now_ids", vec![vec!["3"]]).await;
    server.stop().await;
}

/// CREATE MATERIALIZED VIEW over a topic with messages waits until its
/// reader has read what the topic held, sending NOTICEs as it goes; SHOW
/// JOBS shows the backfill; with `background_ddl` the CREATE returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_report_progress() {
    let topic = fresh_topic("backfill");
    create_topic(&topic, 2).await;
    let messages: Vec<String> = (0..20_000).map(|i| format!(r#"{{"v": {i}}}"#)).collect();
    let batch: Vec<(i32, Option<&str>, Option<&str>)> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| ((i % 2) as i32, None, Some(m.as_str())))
        .collect();
    produce(&topic, &batch).await;
    let server = TestServer::start().await;
    // A connection whose NOTICEs are collected.
    let (client, mut connection) =
        tokio_postgres::connect(&server.connection_string(), tokio_postgres::NoTls)
            .await
            .expect("connects");
    let (notices, mut noticed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notice(notice)) = message {
                let _ = notices.send(notice.message().to_string());
            }
        }
    });
    execute(
        &client,
        &format!(
            "CREATE SOURCE numbers (v BIGINT)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON",
            bootstrap()
        ),
    )
    .await;
    execute(
        &client,
        "CREATE MATERIALIZED VIEW total AS SELECT count(*) AS n, sum(v) AS s FROM numbers",
    )
    .await;
    // Returned once caught up: the view holds every message already.
    assert_eq!(
        query_text(&client, "SELECT n, s FROM total").await,
        vec![vec!["20000".to_string(), (19_999 * 20_000 / 2).to_string()]]
    );
    let mut reports = vec![];
    while let Ok(notice) = noticed.try_recv() {
        reports.push(notice);
    }
    let last = reports.last().expect("a NOTICE at the end of the backfill");
    assert!(
        last.starts_with("materialized view \"total\" backfilled 20000 messages in"),
        "{reports:?}"
    );
    assert!(
        reports[..reports.len() - 1]
            .iter()
            .all(|r| r.starts_with("backfilling materialized view \"total\": ")),
        "{reports:?}"
    );
    assert_eq!(
        query_text(
            &client,
            "SELECT view, job, status, progress, messages_read, messages_total FROM eddy_catalog.jobs"
        )
        .await,
        vec![vec![
            "total",
            "backfill from numbers",
            "done",
            "100",
            "20000",
            "20000"
        ]]
    );

    // In the background: CREATE returns at once; SHOW JOBS follows it.
    execute(
        &client,
        "SET background_ddl = true;
         CREATE MATERIALIZED VIEW biggest AS SELECT max(v) AS m FROM numbers",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = query_text(&client, "SHOW JOBS").await;
        let biggest: Vec<&Vec<String>> = jobs.iter().filter(|j| j[0] == "biggest").collect();
        if let [job] = biggest.as_slice() {
            if job[2] == "done" {
                assert_eq!(job[4..6], ["20000".to_string(), "20000".to_string()]);
                break;
            }
            assert_eq!(job[2], "running");
        }
        assert!(Instant::now() < deadline, "{jobs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(noticed.try_recv().is_err(), "no NOTICE in the background");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_over_a_source_reads_what_the_topic_holds() {
    let (plain, upserts, empty) = (
        fresh_topic("select-plain"),
        fresh_topic("select-upsert"),
        fresh_topic("select-empty"),
    );
    create_topic(&plain, 2).await;
    create_topic(&upserts, 1).await;
    create_topic(&empty, 1).await;
    produce(
        &plain,
        &[
            (0, None, Some(r#"{"id": 1, "name": "ann"}"#)),
            (1, None, Some(r#"{"id": 2, "name": "bob"}"#)),
            (0, None, Some("not json")),
            (1, None, Some(r#"{"id": 3, "name": "cid"}"#)),
        ],
    )
    .await;
    produce(
        &upserts,
        &[
            (0, Some("1"), Some(r#"{"id": 1, "city": "Oslo"}"#)),
            (0, Some("2"), Some(r#"{"id": 2, "city": "Rome"}"#)),
            (0, Some("1"), Some(r#"{"id": 1, "city": "Bergen"}"#)),
            (0, Some("3"), Some(r#"{"id": 3, "city": "Lima"}"#)),
            (0, Some("2"), None),
        ],
    )
    .await;
    let server = TestServer::start().await;
    let client = server.connect().await;
    let with = |topic: &str| {
        format!(
            "WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}', \
             scan.startup.mode = 'earliest')",
            bootstrap()
        )
    };
    execute(
        &client,
        &format!(
            "CREATE SOURCE people (id BIGINT, name TEXT) INCLUDE partition {} FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE cities (id BIGINT PRIMARY KEY, city TEXT) {} FORMAT UPSERT ENCODE JSON;
             CREATE SOURCE nothing (id BIGINT) {} FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE ticks (n BIGINT) WITH (connector = 'datagen', datagen.rows.per.second = '1')",
            with(&plain),
            with(&upserts),
            with(&empty)
        ),
    )
    .await;
    // Every partition to its end, bad messages skipped, as a view reads it.
    assert_eq!(
        query_text(
            &client,
            "SELECT id, name, kafka_partition FROM people ORDER BY id"
        )
        .await,
        vec![
            vec!["1", "ann", "0"],
            vec!["2", "bob", "1"],
            vec!["3", "cid", "1"],
        ]
    );
    assert_eq!(
        query_text(&client, "SELECT count(*) FROM people LIMIT 2").await,
        vec![vec!["3"]]
    );
    assert_eq!(
        query_text(&client, "SELECT * FROM (SELECT id FROM people LIMIT 2) x")
            .await
            .len(),
        2
    );
    // FORMAT UPSERT: the current row of each key.
    assert_eq!(
        query_text(&client, "SELECT id, city FROM cities ORDER BY id").await,
        vec![vec!["1", "Bergen"], vec!["3", "Lima"]]
    );
    assert!(query_text(&client, "SELECT * FROM nothing")
        .await
        .is_empty());
    // Nothing was counted: a SELECT is not a reader.
    assert_eq!(
        query_text(
            &client,
            "SELECT bad_messages FROM eddy_catalog.sources WHERE name = 'people'"
        )
        .await,
        vec![vec!["0"]]
    );
    // A generator holds nothing to read.
    let error = client
        .simple_query("SELECT * FROM ticks")
        .await
        .expect_err("a generator is read by views");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{error:?}"
    );
    server.stop().await;
}
