//! The HTTP endpoint's `/metrics`: valid Prometheus text whose counters move
//! as changes flow (tables, views, a Kafka source from the real broker).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::{bootstrap, create_topic, fresh_topic, produce};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

/// `GET path` on `addr`: (status line, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: eddy\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// An eddy with its HTTP endpoint, the endpoint's address and a client.
async fn server_with_http() -> (eddy::Server, std::net::SocketAddr, tokio_postgres::Client) {
    let server = eddy::Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let http = server.http_addr.expect("the HTTP endpoint listens");
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=eddy", server.local_addr.port()),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    (server, http, client)
}

/// Parses the exposition text: every sample line is `name{labels} value`,
/// and every family has HELP and TYPE. Returns sample → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            typed.insert(parts.next().unwrap().to_string());
            assert!(
                matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} has no TYPE line");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        samples.insert(
            series.to_string(),
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}")),
        );
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_changes_flow() {
    let topic = fresh_topic("metrics");
    create_topic(&topic, 1).await;
    produce(
        &topic,
        &[
            (0, None, Some(r#"{"v": 1}"#)),
            (0, None, Some(r#"{"v": 2}"#)),
            (0, None, Some("oops")),
        ],
    )
    .await;
    let (server, http, client) = server_with_http().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (k INT, v INT);
             CREATE MATERIALIZED VIEW per_k AS SELECT k, sum(v) AS total FROM t GROUP BY k;
             CREATE SOURCE events (v INT)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW event_sum AS SELECT sum(v) AS s FROM events;
             INSERT INTO t VALUES (1, 10), (2, 20), (1, 5);
             FLUSH",
            bootstrap()
        ))
        .await
        .unwrap();

    let (status, body) = get(http, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let before = parse(&body);
    assert_eq!(before[r#"eddy_view_rows{view="per_k"}"#], 2.0, "{body}");
    assert_eq!(before[r#"eddy_view_running{view="per_k"}"#], 1.0);
    let rows_in = |samples: &BTreeMap<String, f64>| -> f64 {
        samples
            .iter()
            .filter(|(k, _)| k.starts_with(r#"eddy_operator_rows_in_total{view="per_k""#))
            .map(|(_, v)| v)
            .sum()
    };
    let first = rows_in(&before);
    assert!(first > 0.0, "{body}");

    client
        .batch_execute("INSERT INTO t VALUES (3, 1), (3, 2); FLUSH")
        .await
        .unwrap();
    let after = parse(&get(http, "/metrics").await.1);
    assert_eq!(after[r#"eddy_view_rows{view="per_k"}"#], 3.0);
    assert!(rows_in(&after) > first, "counters move");
    // Freshness: each epoch that changed the view is one observation, and
    // the histogram's buckets are cumulative up to +Inf = count.
    let count = r#"eddy_view_freshness_seconds_count{view="per_k"}"#;
    assert!(after[count] > before[count], "{body}");
    assert_eq!(
        after[r#"eddy_view_freshness_seconds_bucket{view="per_k",le="+Inf"}"#],
        after[count]
    );
    assert!(after[r#"eddy_view_freshness_seconds_sum{view="per_k"}"#] > 0.0);
    assert!(
        after[r#"eddy_view_freshness_seconds_bucket{view="per_k",le="0.001"}"#]
            <= after[r#"eddy_view_freshness_seconds_bucket{view="per_k",le="10"}"#]
    );
    // DDL and FLUSH take checkpoints: the counter moves and the last one's
    // figures are there.
    let checkpoints = "eddy_checkpoints_completed_total";
    assert!(after[checkpoints] > before[checkpoints], "{body}");
    assert!(after["eddy_checkpoint_written_bytes"] > 0.0);
    // The aggregate's state in that checkpoint.
    assert!(
        after
            .iter()
            .any(|(k, v)| k.starts_with(r#"eddy_operator_state_bytes{view="per_k""#) && *v > 0.0),
        "{body}"
    );
    assert!(after["eddy_checkpoint_epoch"] >= before["eddy_checkpoint_epoch"]);

    // The Kafka source: messages read and the malformed one counted.
    let source = format!(r#"{{source="events",topic="{topic}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let samples = parse(&get(http, "/metrics").await.1);
        let read = samples
            .get(&format!("eddy_source_messages_total{source}"))
            .copied();
        let bad = samples
            .get(&format!("eddy_source_malformed_messages_total{source}"))
            .copied();
        // The lag comes from librdkafka's statistics, about once a second:
        // all three messages read, none left.
        let lag = samples
            .get(r#"eddy_source_lag_messages{source="events",view="event_sum",partition="0"}"#)
            .copied();
        if read == Some(3.0) && bad == Some(1.0) && lag == Some(0.0) {
            assert!(samples[&format!("eddy_source_bytes_total{source}")] > 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "source metrics: {read:?} read, {bad:?} malformed, lag {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(get(http, "/nope").await.0, "HTTP/1.1 404 Not Found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_own_view_and_generated_sources_show_as_the_docs_say() {
    let (server, http, client) = server_with_http().await;
    let table = fresh_topic("own_view").replace('-', "_");
    client
        .batch_execute(&format!(
            "CREATE TABLE t (k INT PRIMARY KEY, v INT);
             CREATE SINK s AS SELECT k, v FROM t WITH (connector = 'postgres', url = '{}', \
             table = '{table}', primary_key = 'k', create_table = 'true');
             CREATE SOURCE gen (n BIGINT) WITH (connector = 'datagen', datagen.max.rows = '50', \
             datagen.rows.per.second = '1000');
             CREATE MATERIALIZED VIEW gen_count AS SELECT count(*) AS c FROM gen;
             INSERT INTO t VALUES (1, 1);
             FLUSH",
            common::postgres_url()
        ))
        .await
        .unwrap();
    // Generated rows are counted like Kafka messages.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = common::query_text(
            &client,
            "SELECT messages FROM eddy_catalog.source_stats WHERE name = 'gen'",
        )
        .await;
        if rows == vec![vec!["50".to_string()]] {
            break;
        }
        assert!(Instant::now() < deadline, "source_stats: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sink's own view is the sink's: not a view anywhere.
    let (_, metrics) = get(http, "/metrics").await;
    let (_, status) = get(http, "/api/status").await;
    let mv_stats = common::query_text(&client, "SELECT name FROM eddy_catalog.mv_stats").await;
    for (what, text) in [
        ("/metrics", metrics),
        ("/api/status", status),
        ("mv_stats", format!("{mv_stats:?}")),
    ] {
        assert!(
            !text.contains("__sink"),
            "{what} shows the sink's own view:\n{text}"
        );
    }
    assert!(
        common::query_text(&client, "SELECT name FROM eddy_catalog.sinks").await
            == vec![vec!["s".to_string()]]
    );
    server.stop().await;
}
