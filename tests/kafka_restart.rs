//! A Kafka source keeps reading across a broker restart: nothing skipped,
//! nothing read twice. (Its own test binary: restarting the broker must not
//! disturb the other Kafka tests, and cargo runs test binaries one by one.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::kafka::{bootstrap, create_topic, eventually, fresh_topic, produce};
use common::{execute, TestServer};

fn restart_broker() {
    let root = common::project_dir();
    let port = bootstrap()
        .rsplit(':')
        .next()
        .expect("host:port")
        .to_string();
    let status = Command::new(format!("{root}/scripts/kafka.sh"))
        .arg("restart")
        .env("EDDY_KAFKA_PORT", port)
        .status()
        .expect("scripts/kafka.sh runs");
    assert!(status.success(), "scripts/kafka.sh restart failed");
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

    let server = TestServer::start().await;
    let eddy = server.connect().await;
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

    tokio::task::spawn_blocking(restart_broker)
        .await
        .expect("restart");
    tokio::time::sleep(Duration::from_secs(1)).await;

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
    server.stop().await;
}
