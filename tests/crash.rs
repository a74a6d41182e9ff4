//! The crash test: eddy killed with SIGKILL at random moments, restarted
//! each time, ends with exactly the results of an uninterrupted run over the
//! same Kafka input: every view, the Postgres sink's table and the Kafka
//! sink's committed messages equal row for row (nothing lost, nothing
//! doubled), and a table's DML survives. In the interrupted run, the
//! Postgres sink's target also stops answering (a frozen proxy) for half of
//! the run, kills included, and answers again later.
//!
//! The interrupted run keeps its state spilled: a memory limit of one byte
//! moves every aggregate's groups to disk after every epoch, so recovery
//! and the checkpoints it starts from work with state on disk too.
//!
//! Real processes (the `eddy` binary), a real Kafka broker and a real
//! PostgreSQL (scripts/kafka.sh and scripts/postgres.sh start them).

mod common;

use std::time::{Duration, Instant};

use common::kafka::{bootstrap, consume_all, create_topic, fresh_topic, produce};
use common::process::EddyProcess;
use common::proxy::FreezableProxy;
use common::{connect_postgres, postgres_rows, postgres_url, query_text, sorted_rows};
use tokio_postgres::Client;

const EVENTS: i64 = 300_000;
/// How many times eddy is killed while catching up.
const KILLS: i64 = 6;
const KEYS: i64 = 40;
/// The interrupted run's arguments: state spilled to disk.
const SPILLED: &[&str] = &["--memory-limit", "1"];

/// A small deterministic generator for kill timings (the seed is printed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn event(i: i64) -> String {
    // Event time moves 1 ms per event with a little disorder (4 ms), far
    // below the watermark delay: no event is late in any run.
    let at_ms = 1_700_000_000_000 + i - (i % 5);
    let at = chrono::DateTime::from_timestamp_millis(at_ms)
        .expect("time")
        .naive_utc()
        .format("%Y-%m-%d %H:%M:%S%.3f");
    format!(
        r#"{{"id": {i}, "k": {}, "v": {}, "at": "{at}"}}"#,
        i % KEYS,
        (i * 7919) % 1000
    )
}

async fn produce_events(topic: &str, from: i64, to: i64) {
    let payloads: Vec<String> = (from..to).map(event).collect();
    let messages: Vec<(i32, Option<&str>, Option<&str>)> = payloads
        .iter()
        .map(|p| (0, None, Some(p.as_str())))
        .collect();
    produce(topic, &messages).await;
}

fn setup_sql(input: &str, pg_url: &str, pg_table: &str, out_topic: &str) -> String {
    format!(
        "CREATE SOURCE events (id BIGINT, k BIGINT, v BIGINT, at TIMESTAMP,
                               WATERMARK FOR at AS at - INTERVAL '2' SECOND)
           WITH (connector = 'kafka', topic = '{input}', properties.bootstrap.server = '{kafka}',
                 scan.startup.mode = 'earliest')
           FORMAT PLAIN ENCODE JSON;
         CREATE MATERIALIZED VIEW per_key AS
           SELECT k, count(*) AS n, sum(v) AS total, max(v) AS top, min(id) AS first
           FROM events GROUP BY k;
         CREATE MATERIALIZED VIEW per_window AS
           SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total
           FROM TUMBLE(events, at, INTERVAL '1' SECOND) GROUP BY k, window_start, window_end
           EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW seen AS SELECT count(*) AS n, count(DISTINCT id) AS ids FROM events;
         CREATE SINK per_key_pg FROM per_key
           WITH (connector = 'postgres', url = '{pg_url}', table = '{pg_table}', create_table = 'true');
         CREATE SINK per_window_out FROM per_window
           WITH (connector = 'kafka', topic = '{out_topic}', properties.bootstrap.server = '{kafka}')
           FORMAT PLAIN ENCODE JSON;
         CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT);
         INSERT INTO notes VALUES (1, 'one'), (2, 'two');
         FLUSH;",
        kafka = bootstrap(),
    )
}

/// Windows of 1 s that the last watermark closes: every event time is
/// `base + i - (i % 5)` ms and the watermark trails the newest by 2 s.
fn closed_windows() -> i64 {
    let newest = (EVENTS - 1) - ((EVENTS - 1) % 5);
    (newest - 2000).div_euclid(1000) * KEYS
}

/// Waits until every view of the run has read every event (each view has
/// a reader of its own), then makes the sinks current.
async fn caught_up(client: &Client) {
    let expected = vec![
        EVENTS.to_string(),
        EVENTS.to_string(),
        EVENTS.to_string(),
        closed_windows().to_string(),
    ];
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let progress = query_text(
            client,
            "SELECT (SELECT n FROM seen), (SELECT ids FROM seen), \
                    (SELECT sum(n) FROM per_key), (SELECT count(*) FROM per_window)",
        )
        .await;
        if progress.first() == Some(&expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {progress:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::execute(client, "FLUSH").await;
}

const VIEWS: [&str; 4] = [
    "SELECT * FROM per_key",
    "SELECT * FROM per_window",
    "SELECT * FROM seen",
    "SELECT * FROM notes",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_and_doubles_nothing() {
    let input = fresh_topic("crash_in");
    // One partition: the input arrives while eddy runs, and with several
    // partitions one running ahead of another (at its end) could make
    // events late depending on timing, so that runs would differ for
    // reasons that are not recovery. (tests/kafka.rs covers partitions.)
    create_topic(&input, 1).await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    println!("crash test seed {seed}");
    let mut random = Lcg(seed);
    let suffix = input.replace('-', "_");
    let root = std::env::temp_dir().join(format!("eddy-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // The interrupted run.
    let crashed_dir = root.join("crashed");
    let crashed_pg = format!("crash_pg_{suffix}");
    let crashed_out = fresh_topic("crash_out");
    create_topic(&crashed_out, 1).await;
    let (proxy, through_proxy) = FreezableProxy::to_test_postgres().await;
    let mut eddy = EddyProcess::spawn(&crashed_dir, SPILLED, &[]);
    let mut client = eddy.connect().await;
    common::execute(
        &client,
        &setup_sql(&input, &through_proxy, &crashed_pg, &crashed_out),
    )
    .await;
    for chunk in 0..KILLS {
        // The Postgres sink's target stops answering mid-run (connections
        // open, nothing forwarded), across kills, then comes back.
        proxy.freeze((1..4).contains(&chunk));
        // A chunk of input arrives; eddy is killed while it reads it.
        let per_chunk = EVENTS / KILLS;
        produce_events(&input, chunk * per_chunk, (chunk + 1) * per_chunk).await;
        if chunk == 2 {
            // DML between crashes: durable once acknowledged (the
            // write-ahead log), with no checkpoint needed (and FLUSH would
            // wait for the frozen sink).
            common::execute(
                &client,
                "UPDATE notes SET body = 'uno' WHERE id = 1; INSERT INTO notes VALUES (3, 'three');",
            )
            .await;
        }
        if chunk == 3 {
            // Kill while a checkpoint is being taken.
            let racing = tokio::spawn({
                let client = eddy.connect().await;
                async move { client.batch_execute("CHECKPOINT").await }
            });
            tokio::time::sleep(Duration::from_millis(random.next(5))).await;
            eddy.kill();
            let _ = racing.await;
        } else {
            tokio::time::sleep(Duration::from_millis(random.next(400))).await;
            eddy.kill();
        }
        eddy = EddyProcess::spawn(&crashed_dir, SPILLED, &[]);
        client = eddy.connect().await;
        // Restarted: every object is back, with the table's flushed rows.
        let notes = sorted_rows(&client, "SELECT * FROM notes").await;
        let expected_notes = if chunk >= 2 {
            vec![vec!["1", "uno"], vec!["2", "two"], vec!["3", "three"]]
        } else {
            vec![vec!["1", "one"], vec!["2", "two"]]
        };
        assert_eq!(notes, expected_notes, "notes after restart {chunk}");
        println!(
            "restart {chunk}: events seen so far {:?}",
            query_text(&client, "SELECT n, ids FROM seen").await
        );
    }
    caught_up(&client).await;
    // One more kill at rest, then a clean SIGTERM stop and start: the same.
    let at_rest: Vec<Vec<Vec<String>>> = {
        let mut all = Vec::new();
        for sql in VIEWS {
            all.push(sorted_rows(&client, sql).await);
        }
        all
    };
    eddy.kill();
    eddy = EddyProcess::spawn(&crashed_dir, SPILLED, &[]);
    let client = eddy.connect().await;
    for (sql, before) in VIEWS.iter().zip(&at_rest) {
        assert_eq!(
            &sorted_rows(&client, sql).await,
            before,
            "{sql} after kill at rest"
        );
    }
    eddy.terminate();
    let mut eddy = EddyProcess::spawn(&crashed_dir, SPILLED, &[]);
    let crashed = eddy.connect().await;
    caught_up(&crashed).await;
    let spilled = query_text(
        &crashed,
        "SELECT count(*) FROM eddy_catalog.operator_stats WHERE spilled_keys > 0",
    )
    .await;
    assert_ne!(spilled[0][0], "0", "the interrupted run's state is on disk");

    // The uninterrupted run over the same input.
    let reference_pg = format!("ref_pg_{suffix}");
    let reference_out = fresh_topic("crash_ref_out");
    create_topic(&reference_out, 1).await;
    let mut reference = EddyProcess::spawn(&root.join("reference"), &[], &[]);
    let uninterrupted = reference.connect().await;
    common::execute(
        &uninterrupted,
        &setup_sql(&input, &postgres_url(), &reference_pg, &reference_out),
    )
    .await;
    common::execute(
        &uninterrupted,
        "UPDATE notes SET body = 'uno' WHERE id = 1; INSERT INTO notes VALUES (3, 'three');",
    )
    .await;
    caught_up(&uninterrupted).await;

    for sql in VIEWS {
        let expected = sorted_rows(&uninterrupted, sql).await;
        assert!(!expected.is_empty(), "{sql} is empty");
        assert_eq!(sorted_rows(&crashed, sql).await, expected, "{sql}");
    }
    let pg = connect_postgres().await;
    let expected = postgres_rows(&pg, &format!("SELECT * FROM {reference_pg}")).await;
    assert_eq!(expected.len(), KEYS as usize);
    assert_eq!(
        postgres_rows(&pg, &format!("SELECT * FROM {crashed_pg}")).await,
        expected,
        "the Postgres sink's table"
    );
    let windows = query_text(&uninterrupted, "SELECT count(*) FROM per_window").await[0][0]
        .parse::<usize>()
        .expect("count");
    let mut expected: Vec<String> = consume_all(&reference_out, windows)
        .await
        .into_iter()
        .filter_map(|(_, v)| v)
        .collect();
    let mut got: Vec<String> = consume_all(&crashed_out, windows)
        .await
        .into_iter()
        .filter_map(|(_, v)| v)
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(expected.len(), windows);
    assert_eq!(got, expected, "the Kafka sink's committed messages");

    eddy.kill();
    reference.kill();
    if std::env::var("EDDY_KEEP_CRASH_DIR").is_err() {
        let _ = std::fs::remove_dir_all(&root);
    }
}
