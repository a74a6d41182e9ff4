//! Kafka JSON source throughput and latency, against a plain rdkafka
//! consumer in the same run.
//!
//! `scripts/kafka.sh start && cargo bench --bench kafka_source` (broker from
//! `EDDY_TEST_KAFKA`, default 127.0.0.1:19092; events from
//! `EDDY_BENCH_EVENTS`, default 500000).
//!
//! 1. Throughput: N JSON bid events are produced to a fresh topic (2
//!    partitions). Then, on this process's CPU clock (user + system, so a
//!    shared machine's noise matters less than wall time):
//!    - baseline: a plain rdkafka `StreamConsumer` reads all N messages and
//!      parses each with serde_json;
//!    - eddy: a Kafka source (FORMAT PLAIN ENCODE JSON) into a simple view
//!      (`count(*)`, `sum(price)` per auction) until the view has counted N.
//!
//!    Reported: events per CPU-second of each and the ratio eddy/baseline.
//! 2. Latency at a steady rate (`EDDY_BENCH_RATE` events/s, default 5000,
//!    for 10 s): from producing an event to its being visible in a SELECT of
//!    the view, p50/p99, next to the baseline consumer's produce-to-receive
//!    latency measured the same way.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::Message;
use tokio_postgres::NoTls;

mod common;
use common::{env_number, first_value};
use eddy::bench::cpu_seconds;

fn bootstrap() -> String {
    std::env::var("EDDY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

fn topic_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("bench-{what}-{nanos}")
}

async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    for result in admin
        .create_topics(
            &[NewTopic::new(name, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("Kafka (scripts/kafka.sh start)")
    {
        result.expect("topic created");
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn bid(i: u64, sent_micros: i64) -> String {
    format!(
        r#"{{"auction": {}, "bidder": {}, "price": {}, "channel": "Google", "date_time": "2024-01-01 00:00:00", "sent": {sent_micros}, "id": {i}}}"#,
        1000 + i % 100,
        2000 + i % 1000,
        (i * 7919) % 100_000
    )
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn produce_all(topic: &str, events: u64) {
    let producer = producer();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..events {
        let payload = bid(i, 0);
        let partition = (i % 2) as i32;
        let mut record = FutureRecord::<str, str>::to(topic)
            .payload(&payload)
            .partition(partition);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    // The local queue is full: let deliveries drain.
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if pending.len() == 10_000 {
            for delivery in pending.drain(..) {
                delivery.await.unwrap().unwrap();
            }
        }
    }
    for delivery in pending {
        delivery.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn consumer(topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", topic_name("baseline"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let events = env_number("EDDY_BENCH_EVENTS", 500_000);
    let topic = topic_name("throughput");
    create_topic(&topic).await;
    let started = Instant::now();
    produce_all(&topic, events).await;
    println!(
        "produced {events} JSON events to {topic} in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Baseline: a plain consumer loop that parses every message.
    let reader = consumer(&topic);
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut read = 0u64;
    let mut checksum = 0i64;
    while read < events {
        let message = reader.recv().await.unwrap();
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        checksum += value["price"].as_i64().unwrap();
        read += 1;
    }
    let baseline_cpu = cpu_seconds() - cpu;
    let baseline_wall = wall.elapsed().as_secs_f64();
    drop(reader);
    std::hint::black_box(checksum);

    // eddy: source -> view, until the view has counted every event.
    let server = eddy::Server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=eddy", server.local_addr.port()),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    client
        .batch_execute(&format!(
            "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT,
                                 date_time TIMESTAMP, sent BIGINT, id BIGINT)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_auction AS
               SELECT auction, count(*) AS bids, sum(price) AS volume FROM bids GROUP BY auction",
            bootstrap()
        ))
        .await
        .unwrap();
    loop {
        let counted = first_value(&client, "SELECT sum(bids) FROM per_auction").await;
        if counted.as_deref() == Some(events.to_string().as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let eddy_cpu = cpu_seconds() - cpu;
    let eddy_wall = wall.elapsed().as_secs_f64();
    let per_cpu = |cpu: f64| events as f64 / cpu;
    println!(
        "throughput ({events} events, 2 partitions):\n  \
         baseline rdkafka consumer + serde_json: {:>10.0} events/CPU-s ({:.0} events/s wall)\n  \
         eddy Kafka JSON source -> view:         {:>10.0} events/CPU-s ({:.0} events/s wall)\n  \
         ratio eddy/baseline (per CPU-s): {:.2}",
        per_cpu(baseline_cpu),
        events as f64 / baseline_wall,
        per_cpu(eddy_cpu),
        events as f64 / eddy_wall,
        per_cpu(eddy_cpu) / per_cpu(baseline_cpu)
    );

    // Latency at a steady rate.
    let rate = env_number("EDDY_BENCH_RATE", 5000);
    let seconds = 10u64;
    let topic = topic_name("latency");
    create_topic(&topic).await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE live (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT,
                                 date_time TIMESTAMP, sent BIGINT, id BIGINT)
             WITH (connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{}')
             FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW newest AS SELECT max(id) AS id FROM live",
            bootstrap()
        ))
        .await
        .unwrap();
    let baseline = consumer(&topic);
    let total = rate * seconds;
    let producer_task = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let producer = producer();
            let start = Instant::now();
            let mut sent_at = Vec::with_capacity(total as usize);
            for i in 0..total {
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                let sent = now_micros();
                let payload = bid(i, sent);
                sent_at.push(sent);
                let mut record = FutureRecord::<str, str>::to(&topic)
                    .payload(&payload)
                    .partition((i % 2) as i32);
                while let Err((_, returned)) = producer.send_result(record) {
                    record = returned;
                    producer.poll(Duration::from_millis(1));
                }
            }
            producer.flush(Duration::from_secs(30)).unwrap();
            sent_at
        })
    };
    // Baseline latency: produce to receive, in the same run.
    let baseline_task = tokio::spawn(async move {
        let mut delays = Vec::with_capacity(total as usize);
        while (delays.len() as u64) < total {
            let message = baseline.recv().await.unwrap();
            let value: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            delays.push((now_micros() - value["sent"].as_i64().unwrap()) as f64 / 1000.0);
        }
        delays
    });
    // eddy latency: poll the view; every id that became visible was
    // visible at most then.
    let mut seen: i64 = -1;
    let mut visible_at: Vec<(i64, i64)> = Vec::new(); // (newest id, time)
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while seen + 1 < total as i64 && Instant::now() < deadline {
        if let Some(id) = first_value(&client, "SELECT id FROM newest").await {
            let id: i64 = id.parse().unwrap_or(-1);
            if id > seen {
                visible_at.push((id, now_micros()));
                seen = id;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sent_at = producer_task.await.unwrap();
    let mut baseline_delays = baseline_task.await.unwrap();
    let mut delays = Vec::with_capacity(total as usize);
    let mut first = 0usize;
    for (newest, at) in visible_at {
        for sent in &sent_at[first..=(newest as usize)] {
            delays.push((at - sent) as f64 / 1000.0);
        }
        first = newest as usize + 1;
    }
    delays.sort_by(f64::total_cmp);
    baseline_delays.sort_by(f64::total_cmp);
    println!(
        "latency at {rate} events/s for {seconds} s (produce -> visible):\n  \
         baseline consumer receive: p50 {:.1} ms, p99 {:.1} ms\n  \
         eddy SELECT of the view:   p50 {:.1} ms, p99 {:.1} ms ({} of {total} events seen)",
        percentile(&baseline_delays, 0.5),
        percentile(&baseline_delays, 0.99),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.len()
    );
    server.stop().await;
}
