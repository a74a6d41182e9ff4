//! A Kafka source keeps reading across a broker restart: nothing skipped,
//! nothing read twice; while the broker is away the view's status and SHOW
//! JOBS say so, and the log says it once when the broker goes and once
//! when it is back (not per reconnect). (Its own test binary: stopping the
//! broker must not disturb the other Kafka tests, and cargo runs test
//! binaries one by one.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::execute;
use common::kafka::{bootstrap, create_topic, eventually, fresh_topic, produce};
use common::process::EddyProcess;
use tokio_postgres::Client;

/// `scripts/kafka.sh <action>` for the test broker.
fn broker(action: &'static str) {
    let root = common::project_dir();
    let port = bootstrap()
        .rsplit(':')
        .next()
        .expect("host:port")
        .to_string();
    let status = Command::new(format!("{root}/scripts/kafka.sh"))
        .arg(action)
        .env("EDDY_KAFKA_PORT", port)
        .status()
        .expect("scripts/kafka.sh runs");
    assert!(status.success(), "scripts/kafka.sh {action} failed");
}

/// Polls `sql`'s first value until it starts with `prefix` (at most 60 s).
async fn status_becomes(client: &Client, sql: &str, prefix: &str) -> String {
    let expected = format!("{prefix}...");
    common::first_value_until(client, sql, &expected, |v| v.starts_with(prefix)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_survives_a_broker_restart() {
    let topic = fresh_topic("restart");
    create_topic(&topic, 2).await;
    let batch = |from: i64, to: i64| -> Vec<String> {
        (from..to).map(|i| format!(r#"{{"id": {i}}}"#)).collect()
    };
    let send = |payloads: &[String]| {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| ((i % 2) as i32, None, Some(p.clone())))
            .collect::<Vec<(i32, Option<&str>, Option<String>)>>()
    };
    let first = batch(0, 500);
    let messages = send(&first);
    let messages: Vec<(i32, Option<&str>, Option<&str>)> = messages
        .iter()
        .map(|(p, k, v)| (*p, *k, v.as_deref()))
        .collect();
    produce(&topic, &messages).await;

    let dir = std::env::temp_dir().join(format!("eddy-kafka-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut process = EddyProcess::spawn(&dir, &[], &[]);
    let eddy = process.connect().await;
    execute(
        &eddy,
        &format!(
            "CREATE SOURCE ids (id BIGINT)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW seen AS
               SELECT count(*) AS n, count(DISTINCT id) AS distinct_ids, min(id) AS first, max(id) AS last FROM ids",
            bootstrap()
        ),
    )
    .await;
    eventually(
        &eddy,
        "SELECT * FROM seen",
        vec![vec!["500", "500", "0", "499"]],
    )
    .await;

    tokio::task::spawn_blocking(|| broker("stop"))
        .await
        .expect("stop");
    let view_status = "SELECT status FROM eddy_catalog.materialized_views WHERE name = 'seen'";
    let waiting =
        status_becomes(&eddy, view_status, "waiting: source ids cannot reach Kafka").await;
    assert!(waiting.contains("Connection refused"), "{waiting}");
    // Some reconnects later, still one line.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let said = |log: &str, what: &str| {
        log.lines()
            .filter(|l| l.contains("view seen") && l.contains(what))
            .count()
    };
    assert_eq!(
        said(&process.log(), "retrying until it answers"),
        1,
        "{}",
        process.log()
    );
    tokio::task::spawn_blocking(|| broker("start"))
        .await
        .expect("start");
    status_becomes(&eddy, view_status, "running").await;
    assert_eq!(
        said(&process.log(), "Kafka reachable again"),
        1,
        "{}",
        process.log()
    );

    let second = batch(500, 1000);
    let messages = send(&second);
    let messages: Vec<(i32, Option<&str>, Option<&str>)> = messages
        .iter()
        .map(|(p, k, v)| (*p, *k, v.as_deref()))
        .collect();
    produce(&topic, &messages).await;
    eventually(
        &eddy,
        "SELECT * FROM seen",
        vec![vec!["1000", "1000", "0", "999"]],
    )
    .await;
    process.terminate();
}
