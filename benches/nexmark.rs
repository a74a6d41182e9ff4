//! Nexmark: every query (`benches/nexmark/queries/`) as a materialized view
//! over N events of the built-in generator, as fast as eddy takes them.
//!
//! `cargo bench --bench nexmark` (events from `EDDY_BENCH_EVENTS`, default
//! 1,000,000; queries from `EDDY_BENCH_QUERIES`, e.g. `q0,q5`, default all).
//!
//! Each query runs in a child process of its own (this binary again, with
//! `EDDY_NEXMARK_QUERY` set), so that CPU time and peak RSS are the query's:
//! an in-process eddy server with the three nexmark sources (no periodic
//! checkpoints); the clock starts at `CREATE MATERIALIZED VIEW` and stops
//! when the view's scans have read every event (each change goes through
//! the whole graph before the next is read). Reported per query:
//! - events read per CPU-second (user + system of the process, so a shared
//!   machine's noise matters less than wall time) — the events of the
//!   streams the view reads (bids only for q0), as `../shared/BENCHMARKS.md`
//!   counts Flink's — and per wall-second, and the cores that used;
//! - the baseline in the same run: DataFusion executing the same query as a
//!   batch over the same events already in memory (copies of the streams),
//!   its events per CPU-second and the ratio eddy / batch;
//! - peak RSS, the state bytes of the view's operators (in a checkpoint
//!   taken after the run), the view's freshness at the end (from the
//!   arrival of the oldest change of the last epoch to that epoch's
//!   publication: an upper bound of the time from the last event to the
//!   final result), and how long the FLUSH after the run took (it writes
//!   a checkpoint of the view; not part of the CPU figure, as Flink's runs
//!   take no checkpoints);
//! - Flink's figures on this machine size beside them.
//!
//! With `EDDY_BENCH_SOURCE=kafka` (broker `EDDY_TEST_KAFKA`, default
//! 127.0.0.1:19092; `scripts/kafka.sh start`) the events are first written
//! as JSON to three fresh topics (one partition each, by eddy's own Kafka
//! sink from a nexmark run), and each query's sources read those topics
//! from the earliest offset: the set-up of Flink's figures.
//!
//! Output: a table, and JSON in `$CARGO_TARGET_DIR/nexmark-<source>.json` (or
//! under `target/`) with the core count, the commit and the source.

#[path = "nexmark/shared.rs"]
mod shared;

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

mod common;
use common::{cores_and_commit, cpu_seconds, env_number, project_dir, rows, run};

/// 1 ms of event time between events: 1M events cover about 17 minutes.
const EVENT_RATE: u64 = 1_000;

/// Flink 2.2.1 on this machine size, thousand events per CPU-second
/// (`../shared/BENCHMARKS.md`), and the published per-core figure.
fn flink(query: &str) -> (Option<f64>, Option<f64>) {
    let here = [
        ("q0", 153.0),
        ("q1", 202.0),
        ("q2", 201.0),
        ("q3", 380.0),
        ("q4", 63.0),
        ("q5", 92.0),
        ("q7", 39.0),
        ("q8", 406.0),
        ("q9", 48.0),
        ("q10", 146.0),
        ("q11", 107.0),
        ("q12", 130.0),
        ("q13", 143.0),
        ("q14", 194.0),
        ("q15", 60.0),
        ("q16", 12.8),
        ("q17", 106.0),
        ("q18", 98.0),
        ("q19", 67.0),
        ("q20", 52.0),
        ("q21", 105.0),
        ("q22", 132.0),
    ];
    let published = [
        ("q0", 155.0),
        ("q1", 158.0),
        ("q2", 175.0),
        ("q3", 152.0),
        ("q4", 34.0),
        ("q5", 22.0),
        ("q7", 12.0),
        ("q8", 146.0),
        ("q9", 14.0),
        ("q10", 58.0),
        ("q11", 40.0),
        ("q12", 76.0),
        ("q13", 131.0),
        ("q14", 161.0),
        ("q15", 72.0),
        ("q16", 19.0),
        ("q17", 117.0),
        ("q18", 54.0),
        ("q19", 44.0),
        ("q20", 19.0),
        ("q21", 99.0),
        ("q22", 130.0),
    ];
    let find = |table: &[(&str, f64)]| table.iter().find(|(q, _)| *q == query).map(|(_, v)| *v);
    (find(&here), find(&published))
}

/// Peak resident set size of this process (VmHWM), in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Waits until every scan of `view` has read all events of its relation;
/// returns how many events that is (the events the view reads).
async fn wait_for_scans(client: &Client, view: &str, events: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let scans = rows(
            client,
            &format!(
                "SELECT operator, rows_in FROM eddy_catalog.operator_stats \
                 WHERE view = '{view}' AND operator LIKE 'Scan: %'"
            ),
        )
        .await;
        let expected = |scan: &Vec<String>| {
            let relation = scan[0]
                .trim_start_matches("Scan: ")
                .split_whitespace()
                .next()
                .unwrap_or("");
            match relation {
                "person" | "auction" | "bid" => shared::events_of(relation, events),
                _ => 0, // a table (q13's side input): read at creation
            }
        };
        // The share of its events the slowest scan has read.
        let progress = scans
            .iter()
            .map(|scan| match expected(scan) {
                0 => 1.0,
                n => scan[1].parse::<u64>().unwrap_or(0) as f64 / n as f64,
            })
            .fold(f64::INFINITY, f64::min);
        if !scans.is_empty() && progress >= 1.0 {
            return scans.iter().map(expected).sum();
        }
        assert!(Instant::now() < deadline, "{view} stalled: {scans:?}");
        // Each poll is a query the measured process answers (planning,
        // asking the runtime for its stats): poll rarely until the end is
        // near, then often, so that the poll costs little CPU and the clock
        // still stops within a few ms of the last event.
        let pause = if progress < 0.9 { 100 } else { 5 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

fn bootstrap() -> String {
    std::env::var("EDDY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

/// The columns of each stream as JSON in Kafka (the generator's, without
/// the processing-time column).
fn kafka_columns(table: &str) -> &'static str {
    match table {
        "person" => {
            "id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT, state TEXT, \
             date_time TIMESTAMP, extra TEXT"
        }
        "auction" => {
            "id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT, reserve BIGINT, \
             date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra TEXT"
        }
        _ => "auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP, extra TEXT",
    }
}

fn kafka_topic(table: &str, run: &str) -> String {
    format!("nexmark-{table}-{run}")
}

/// Writes a nexmark run of `events` events as JSON to three fresh topics,
/// with eddy's Kafka sink; returns the run's name (part of the topics').
async fn produce_topics(events: u64) -> String {
    let run_name = format!(
        "{events}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    );
    let (server, client) = start_server().await;
    for table in ["person", "auction", "bid"] {
        run(&client, &shared::source_sql(table, events, EVENT_RATE)).await;
        let columns: Vec<&str> = kafka_columns(table)
            .split(", ")
            .map(|c| c.split_whitespace().next().unwrap_or(""))
            .collect();
        run(
            &client,
            &format!(
                "CREATE MATERIALIZED VIEW {table}_json AS SELECT {} FROM {table};
                 CREATE SINK {table}_out FROM {table}_json
                   WITH (connector = 'kafka', topic = '{}', properties.bootstrap.server = '{}')
                   FORMAT PLAIN ENCODE JSON",
                columns.join(", "),
                kafka_topic(table, &run_name),
                bootstrap()
            ),
        )
        .await;
    }
    for table in ["person", "auction", "bid"] {
        let _ = wait_for_scans(&client, &format!("{table}_json"), events).await;
    }
    // FLUSH returns once every sink has committed what the views hold.
    run(&client, "FLUSH").await;
    drop(client);
    server.stop().await;
    run_name
}

/// The sources of one measurement: the generator, or the Kafka topics of
/// run `kafka_run`.
fn sources_sql(table: &str, events: u64, kafka_run: Option<&str>) -> String {
    let Some(run_name) = kafka_run else {
        return shared::source_sql(table, events, EVENT_RATE);
    };
    let proctime = if table == "bid" {
        "p_time TIMESTAMP AS PROCTIME(), "
    } else {
        ""
    };
    format!(
        "CREATE SOURCE {table} ({}, {proctime}WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
         WITH (connector = 'kafka', topic = '{}', properties.bootstrap.server = '{}',
               scan.startup.mode = 'earliest')
         FORMAT PLAIN ENCODE JSON",
        kafka_columns(table),
        kafka_topic(table, run_name),
        bootstrap()
    )
}

async fn start_server() -> (eddy::Server, Client) {
    let mut options = eddy::ServerOptions::new("127.0.0.1:0".parse().expect("address"));
    options.checkpoint_interval = Duration::ZERO;
    let server = eddy::Server::start_with_options(options)
        .await
        .expect("eddy starts");
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=eddy", server.local_addr.port()),
        NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(connection);
    (server, client)
}

/// One query, measured in this process; prints one JSON line.
async fn measure(query_name: &str, events: u64, kafka_run: Option<&str>) {
    let (_, query) = shared::queries(&project_dir())
        .into_iter()
        .find(|(name, _)| name == query_name)
        .unwrap_or_else(|| panic!("no query {query_name}"));
    let (server, client) = start_server().await;
    for table in ["person", "auction", "bid"] {
        run(&client, &sources_sql(table, events, kafka_run)).await;
    }
    // CREATE over Kafka returns at once; the clock stops at the last event.
    run(&client, "SET background_ddl = true").await;
    run(&client, &shared::side_input_sql()).await;
    run(&client, "FLUSH").await;

    // Reset the peak RSS to what the set-up holds now.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (cpu_start, wall_start) = (cpu_seconds(), Instant::now());
    run(
        &client,
        &format!("CREATE MATERIALIZED VIEW {query_name} AS {query}"),
    )
    .await;
    let events_read = wait_for_scans(&client, query_name, events).await;
    let (cpu, wall) = (cpu_seconds() - cpu_start, wall_start.elapsed());
    let peak_rss = peak_rss_bytes();
    // The last epoch is published within 100 ms of the runtime going idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let freshness_ms: f64 = rows(
        &client,
        &format!(
            "SELECT coalesce(freshness_ms, 0) FROM eddy_catalog.mv_stats WHERE name = '{query_name}'"
        ),
    )
    .await[0][0]
        .parse()
        .unwrap_or(0.0);
    let flush_start = Instant::now();
    run(&client, "FLUSH").await;
    let flush = flush_start.elapsed();
    run(&client, "CHECKPOINT").await;
    let state_bytes: u64 = rows(
        &client,
        &format!(
            "SELECT coalesce(sum(state_bytes), 0), coalesce(sum(state_keys), 0) \
             FROM eddy_catalog.operator_stats WHERE view = '{query_name}'"
        ),
    )
    .await[0][0]
        .parse()
        .unwrap_or(0);
    let view_rows =
        rows(&client, &format!("SELECT count(*) FROM {query_name}")).await[0][0].clone();

    // The batch baseline: the same query over copies of the streams.
    run(&client, shared::COPIES_SQL).await;
    for table in ["person", "auction", "bid"] {
        let _ = wait_for_scans(&client, &format!("{table}_all"), events).await;
    }
    run(&client, "FLUSH").await;
    let batch_sql = format!("SELECT count(*) FROM ({}) q", shared::over_copies(&query));
    let batch_cpu_start = cpu_seconds();
    let batch_rows = rows(&client, &batch_sql).await[0][0].clone();
    let batch_cpu = cpu_seconds() - batch_cpu_start;
    println!(
        "{{\"query\":\"{query_name}\",\"events\":{events},\"events_read\":{events_read},\"cpu_seconds\":{cpu:.3},\
         \"wall_seconds\":{:.3},\"freshness_ms\":{freshness_ms:.1},\"flush_ms\":{:.1},\"peak_rss_bytes\":{peak_rss},\
         \"state_bytes\":{state_bytes},\"view_rows\":{view_rows},\"batch_cpu_seconds\":{batch_cpu:.3},\
         \"batch_rows\":{batch_rows}}}",
        wall.as_secs_f64(),
        flush.as_secs_f64() * 1e3,
    );
    drop(client);
    server.stop().await;
}

/// A measured query, as its child printed it.
struct Measured {
    query: String,
    events_read: u64,
    cpu: f64,
    wall: f64,
    freshness_ms: f64,
    flush_ms: f64,
    peak_rss: u64,
    state_bytes: u64,
    batch_cpu: f64,
}

fn field(json: &str, name: &str) -> f64 {
    let at = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("{name} in {json}"));
    let rest = &json[at + name.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().unwrap_or(0.0)
}

fn per_second(events: u64, seconds: f64) -> f64 {
    events as f64 / seconds.max(0.001)
}

fn main() {
    let events = env_number("EDDY_BENCH_EVENTS", 1_000_000);
    if let Ok(query) = std::env::var("EDDY_NEXMARK_QUERY") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let kafka_run = std::env::var("EDDY_NEXMARK_KAFKA_RUN").ok();
        runtime.block_on(measure(&query, events, kafka_run.as_deref()));
        return;
    }
    let kafka = std::env::var("EDDY_BENCH_SOURCE").is_ok_and(|s| s == "kafka");
    let kafka_run = kafka.then(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let started = Instant::now();
        let run_name = runtime.block_on(produce_topics(events));
        println!(
            "{events} events written as JSON to topics nexmark-{{person,auction,bid}}-{run_name} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        run_name
    });
    let selected: Vec<String> = match std::env::var("EDDY_BENCH_QUERIES") {
        Ok(list) => list.split(',').map(|q| q.trim().to_string()).collect(),
        Err(_) => (0..=22).map(|n| format!("q{n}")).collect(),
    };
    let (cores, commit) = cores_and_commit();
    let source = if kafka { "kafka" } else { "generator" };
    println!(
        "Nexmark on eddy: {events} events per query from the {source}, {cores} cores, commit {commit}"
    );
    println!(
        "{:>4} {:>10} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "",
        "k ev/CPU-s",
        "k ev/s",
        "cores",
        "batch k/s",
        "eddy/bt",
        "Flink",
        "publ.",
        "target",
        "RSS MB",
        "state MB",
        "fresh ms",
        "flush ms"
    );
    let mut measured = Vec::new();
    for query in &selected {
        let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"));
        if let Some(run_name) = &kafka_run {
            child.env("EDDY_NEXMARK_KAFKA_RUN", run_name);
        }
        let output = child
            .env("EDDY_NEXMARK_QUERY", query)
            .env("EDDY_BENCH_EVENTS", events.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(json) = stdout.lines().rev().find(|l| l.starts_with('{')) else {
            println!("{query:>4} failed ({})", output.status);
            continue;
        };
        let m = Measured {
            query: query.clone(),
            events_read: field(json, "events_read") as u64,
            cpu: field(json, "cpu_seconds"),
            wall: field(json, "wall_seconds"),
            freshness_ms: field(json, "freshness_ms"),
            flush_ms: field(json, "flush_ms"),
            peak_rss: field(json, "peak_rss_bytes") as u64,
            state_bytes: field(json, "state_bytes") as u64,
            batch_cpu: field(json, "batch_cpu_seconds"),
        };
        let (here, published) = flink(query);
        let best = here.into_iter().chain(published).fold(0.0, f64::max);
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        println!(
            "{:>4} {:>10.0} {:>9.0} {:>6.2} {:>10.0} {:>8.2} {:>8} {:>8} {:>8} {:>9.0} {:>9.1} {:>9.0} {:>9.0}",
            m.query,
            per_second(m.events_read, m.cpu) / 1e3,
            per_second(m.events_read, m.wall) / 1e3,
            m.cpu / m.wall.max(0.001),
            per_second(m.events_read, m.batch_cpu) / 1e3,
            m.batch_cpu / m.cpu.max(0.001),
            show(here),
            show(published),
            if best > 0.0 { format!("{:.0}", 2.0 * best) } else { "-".into() },
            m.peak_rss as f64 / 1e6,
            m.state_bytes as f64 / 1e6,
            m.freshness_ms,
            m.flush_ms,
        );
        measured.push((json.to_string(), m));
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{target}/nexmark-{source}.json");
    let queries: Vec<&str> = measured.iter().map(|(json, _)| json.as_str()).collect();
    let json = format!(
        "{{\"commit\":\"{commit}\",\"cores\":{cores},\"events\":{events},\"source\":\"{source}\",\"queries\":[{}]}}\n",
        queries.join(",")
    );
    match std::fs::write(&path, json) {
        Ok(()) => println!("JSON: {path}"),
        Err(e) => println!("could not write {path}: {e}"),
    }
    println!(
        "k ev/CPU-s: thousand events read by the view (of the streams it reads) per \
         CPU-second of the process, as Flink's are counted; eddy/bt: \
         eddy's events per CPU-second over the batch baseline's (1: as fast as batch); Flink: \
         Flink 2.2.1 on this machine size; publ.: Flink's published per-core figure; target: \
         twice the higher of the two"
    );
}
