//! Helpers for tests against the real Kafka broker of scripts/kafka.sh.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;

use super::sorted_rows;

pub fn bootstrap() -> String {
    std::env::var("EDDY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

/// A topic name no other test (or earlier run) uses.
pub fn fresh_topic(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap_or_else(|e| panic!("Kafka at {} (scripts/kafka.sh start): {e}", bootstrap()))
}

pub async fn create_topic(name: &str, partitions: i32) {
    let results = admin()
        .create_topics(
            // Kept forever: tests produce messages with old timestamps
            // (2024), which the broker's 24-hour retention would otherwise
            // delete at its next check (every 5 minutes), mid-test.
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))
                .set("retention.ms", "-1")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces `(partition, payload)` messages without keys, in order.
pub async fn produce_values(topic: &str, messages: &[(i32, String)]) {
    let messages: Vec<(i32, Option<&str>, Option<&str>)> = messages
        .iter()
        .map(|(partition, payload)| (*partition, None, Some(payload.as_str())))
        .collect();
    produce(topic, &messages).await;
}

/// Produces `(partition, key, payload)` messages, in order, and waits for
/// all of them to be delivered.
pub async fn produce(topic: &str, messages: &[(i32, Option<&str>, Option<&str>)]) {
    let producer = producer();
    // join_all polls the sends in order, so each partition gets its
    // messages in the order given.
    let sends = messages.iter().map(|(partition, key, payload)| {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).partition(*partition);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        producer.send(record, Duration::from_secs(30))
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("message delivered");
    }
}

/// Waits until `sql` returns `expected` (sources are read asynchronously).
pub async fn eventually(client: &Client, sql: &str, expected: Vec<Vec<&str>>) {
    let expected: Vec<Vec<String>> = expected
        .into_iter()
        .map(|row| row.into_iter().map(String::from).collect())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sorted_rows(client, sql).await;
        if rows == expected {
            return;
        }
        if Instant::now() > deadline {
            panic!("{sql}: still {rows:?}, expected {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `topic` from the beginning until at least `at_least` messages came
/// and none came for a moment: `(key, value)` as text.
pub async fn consume_all(topic: &str, at_least: usize) -> Vec<(Option<String>, Option<String>)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", fresh_topic("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let quiet = if messages.len() >= at_least {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Ok(Ok(message)) => messages.push((
                message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                message
                    .payload()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            )),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) if messages.len() >= at_least => return messages,
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: {} messages, expected at least {at_least}",
            messages.len()
        );
    }
}
