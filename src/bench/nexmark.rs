//! Nexmark: each query (`benches/nexmark/queries/`, built into the binary)
//! as a materialized view over N events of the built-in generator or of
//! Kafka topics, as fast as eddy takes them.
//!
//! `eddy bench nexmark --query q5 --events 10000000` and
//! `cargo bench --bench nexmark` (settings from the environment) run this.
//!
//! Each query runs in a child process of its own (the running binary again,
//! with [`CHILD_QUERY`] set, see [`run_child_if_asked`]), so that CPU time
//! and peak RSS are the query's: an in-process eddy server with the three
//! nexmark sources (no periodic checkpoints); the clock starts at
//! `CREATE MATERIALIZED VIEW` and stops when the view's scans have read
//! every event (each change goes through the whole graph before the next
//! is read). Reported per query:
//! - events read per CPU-second (user + system of the process, so a shared
//!   machine's noise matters less than wall time) — the events of the
//!   streams the view reads (bids only for q0), as `BENCHMARKS.md` counts
//!   Flink's — and per wall-second, and the cores that used;
//! - the baseline in the same run: DataFusion executing the same query as a
//!   batch over the same events already in memory (copies of the streams),
//!   its events per CPU-second and the ratio eddy / batch;
//! - peak RSS, the state bytes and keys of the view's operators (from a
//!   checkpoint taken after the run), the view's freshness at the end (from
//!   the arrival of the oldest change of the last epoch to that epoch's
//!   publication: an upper bound of the time from the last event to the
//!   final result), and how long the FLUSH after the run took (it writes a
//!   checkpoint of the view; not part of the CPU figure, as Flink's runs
//!   take no checkpoints);
//! - Flink's figures on this machine size and published, and twice the
//!   higher of the two (the target).
//!
//! With [`Source::Kafka`] the events are first written as JSON to three
//! fresh topics (one partition each, by eddy's own Kafka sink from a
//! nexmark run), and each query's sources read those topics from the
//! earliest offset: the set-up of Flink's published figures.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, ObjectNamePart, TableFactor, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use tokio_postgres::{Client, NoTls};

use crate::connectors::nexmark::NexmarkConfig;

use super::{
    cores_and_commit, cpu_seconds, execute, peak_rss_bytes, reset_peak_rss, rows, rss_bytes,
    BenchResult,
};

/// Set in a child process: the query it measures.
pub const CHILD_QUERY: &str = "EDDY_NEXMARK_QUERY";
const CHILD_EVENTS: &str = "EDDY_NEXMARK_EVENTS";
const CHILD_KAFKA_RUN: &str = "EDDY_NEXMARK_KAFKA_RUN";
const CHILD_KAFKA_BOOTSTRAP: &str = "EDDY_NEXMARK_KAFKA_BOOTSTRAP";
const CHILD_NO_BASELINE: &str = "EDDY_NEXMARK_NO_BASELINE";
const CHILD_CHECKPOINT_MS: &str = "EDDY_NEXMARK_CHECKPOINT_MS";
const CHILD_WORKERS: &str = "EDDY_NEXMARK_WORKERS";
/// The child's `--memory-limit` in bytes (absent: none).
const CHILD_MEMORY_LIMIT: &str = "EDDY_NEXMARK_MEMORY_LIMIT";

/// Events per second of event time: 1M events cover about 17 minutes.
pub const EVENT_RATE: u64 = 1_000;

/// The Nexmark queries q0–q22, by name, as the files hold them.
pub fn queries() -> Vec<(String, &'static str)> {
    macro_rules! files {
        ($($n:literal),*) => {
            [$(include_str!(concat!("../../benches/nexmark/queries/q", $n, ".sql"))),*]
        };
    }
    let texts = files!(
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22"
    );
    texts
        .into_iter()
        .enumerate()
        .map(|(n, text)| (format!("q{n}"), text))
        .collect()
}

/// `CREATE SOURCE` for one nexmark stream of a bounded run of `events`
/// events (all kinds), `rate` events per second of event time. Bids carry a
/// processing-time column for q12 and q13.
pub fn source_sql(table: &str, events: u64, rate: u64) -> String {
    format!(
        "CREATE SOURCE {table} ({}WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
         WITH (connector = 'nexmark', nexmark.table.type = '{table}',
               nexmark.event.rate = '{rate}', nexmark.max.events = '{events}',
               nexmark.max.emit.speed = 'true')",
        proctime_column(table)
    )
}

fn proctime_column(table: &str) -> &'static str {
    if table == "bid" {
        "p_time TIMESTAMP AS PROCTIME(), "
    } else {
        ""
    }
}

/// The table q13 looks up: 10,000 keys.
pub fn side_input_sql() -> String {
    let rows: Vec<String> = (0..10_000).map(|k| format!("({k}, 'v{k}')")).collect();
    format!(
        "CREATE TABLE side_input (key BIGINT PRIMARY KEY, value TEXT);
         INSERT INTO side_input VALUES {}",
        rows.join(", ")
    )
}

/// How many events of a run of `events` are of `table` (1 person : 3
/// auctions : 46 bids in every 50).
pub fn events_of(table: &str, events: u64) -> u64 {
    match table {
        "person" => events / 50,
        "auction" => events * 3 / 50,
        _ => events * 46 / 50,
    }
}

/// Renames the nexmark relations to their bounded copies (`bid_all`, ...).
struct ToCopies;

fn copy_name(ident: &mut Ident) {
    if ["person", "auction", "bid"].contains(&ident.value.to_lowercase().as_str()) {
        *ident = Ident::new(format!("{}_all", ident.value.to_lowercase()));
    }
}

impl VisitorMut for ToCopies {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<()> {
        if let [ObjectNamePart::Identifier(ident)] = relation.0.as_mut_slice() {
            copy_name(ident);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        // TUMBLE(bid, ...), HOP(...), SESSION(...): the relation is the first argument.
        if let TableFactor::Table {
            args: Some(args), ..
        } = factor
        {
            if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(ident)))) =
                args.args.first_mut()
            {
                copy_name(ident);
            }
        }
        ControlFlow::Continue(())
    }
}

/// The views that copy the streams, for [`over_copies`].
pub const COPIES_SQL: &str = "CREATE MATERIALIZED VIEW person_all AS SELECT * FROM person;
     CREATE MATERIALIZED VIEW auction_all AS SELECT * FROM auction;
     CREATE MATERIALIZED VIEW bid_all AS SELECT * FROM bid;";

/// `query` over the bounded copies; `FOR SYSTEM_TIME AS OF` dropped (the side
/// input does not change during a run).
pub fn over_copies(query: &str) -> BenchResult<String> {
    let query = query.replace("FOR SYSTEM_TIME AS OF PROCTIME()", "");
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, &query)
        .map_err(|e| format!("the query does not parse: {e}"))?;
    let _ = statements.visit(&mut ToCopies);
    statements
        .first()
        .map(ToString::to_string)
        .ok_or_else(|| "an empty query".to_string())
}

/// Flink 2.2.1 on this machine size, thousand events per CPU-second
/// (`BENCHMARKS.md`), and the published per-core figure.
pub fn flink(query: &str) -> (Option<f64>, Option<f64>) {
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

/// Where the events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// eddy's nexmark generator, in process.
    Generator,
    /// JSON topics on this Kafka broker (`host:port`), written first.
    Kafka { bootstrap: String },
}

impl Source {
    /// `generator` or `kafka`, as reports and file names say it.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Generator => "generator",
            Source::Kafka { .. } => "kafka",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events per query run (all kinds; a query reads those of its streams).
    pub events: u64,
    /// Query names (`q0` … `q22`).
    pub queries: Vec<String>,
    pub source: Source,
    /// Where the JSON report goes.
    pub json_path: PathBuf,
    /// Whether to run DataFusion's batch answer too (it holds every event
    /// in memory: leave it out of long runs).
    pub baseline: bool,
    /// Time between checkpoints during the run; zero (the default, like
    /// Flink's published runs): none until the FLUSH after it. Operators
    /// remember the keys changed since the last checkpoint, so a long run
    /// without checkpoints grows by those; measure long-run memory with
    /// checkpoints on, as a server runs (they then go to a temporary
    /// directory, as a server's go to disk).
    pub checkpoint_interval: Duration,
    /// Each query runs once per worker count here (threads a keyed operator
    /// is split across); `[1, 2]` reports the scaling.
    pub workers: Vec<usize>,
    /// The memory limit for state (`--memory-limit`); `None`: none.
    pub memory_limit: Option<usize>,
}

impl Options {
    /// All queries over `events` generated events.
    pub fn all(events: u64) -> Self {
        Self {
            events,
            queries: queries().into_iter().map(|(name, _)| name).collect(),
            source: Source::Generator,
            json_path: PathBuf::from("nexmark-generator.json"),
            baseline: true,
            checkpoint_interval: Duration::ZERO,
            workers: vec![1],
            memory_limit: None,
        }
    }
}

/// One query's figures, as its child measured them.
#[derive(Debug, Clone)]
pub struct Measured {
    pub query: String,
    pub workers: usize,
    pub events_read: u64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    pub freshness_ms: f64,
    pub flush_ms: f64,
    pub peak_rss_bytes: u64,
    /// RSS when the last event has been read.
    pub rss_bytes: u64,
    pub state_bytes: u64,
    pub state_keys: u64,
    pub view_rows: u64,
    /// Bytes on disk under `--memory-limit` when the last event was
    /// read: the operators' spilled keys and the view's spilled rows.
    pub spilled_bytes: u64,
    pub batch_cpu_seconds: f64,
    pub batch_rows: u64,
}

impl Measured {
    /// Thousand events read per CPU-second.
    pub fn k_events_per_cpu_second(&self) -> f64 {
        per_second(self.events_read, self.cpu_seconds) / 1e3
    }

    fn to_json(&self, events: u64) -> serde_json::Value {
        serde_json::json!({
            "query": self.query,
            "workers": self.workers,
            "events": events,
            "events_read": self.events_read,
            "cpu_seconds": self.cpu_seconds,
            "wall_seconds": self.wall_seconds,
            "freshness_ms": self.freshness_ms,
            "flush_ms": self.flush_ms,
            "peak_rss_bytes": self.peak_rss_bytes,
            "rss_bytes": self.rss_bytes,
            "state_bytes": self.state_bytes,
            "state_keys": self.state_keys,
            "view_rows": self.view_rows,
            "spilled_bytes": self.spilled_bytes,
            "batch_cpu_seconds": self.batch_cpu_seconds,
            "batch_rows": self.batch_rows,
        })
    }

    fn from_json(json: &str) -> BenchResult<Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("{e} in {json}"))?;
        let field = |name: &str| -> BenchResult<f64> {
            value[name]
                .as_f64()
                .ok_or_else(|| format!("no {name} in {json}"))
        };
        let query = value["query"]
            .as_str()
            .ok_or_else(|| format!("no query in {json}"))?;
        Ok(Self {
            query: query.to_string(),
            workers: field("workers")? as usize,
            events_read: field("events_read")? as u64,
            cpu_seconds: field("cpu_seconds")?,
            wall_seconds: field("wall_seconds")?,
            freshness_ms: field("freshness_ms")?,
            flush_ms: field("flush_ms")?,
            peak_rss_bytes: field("peak_rss_bytes")? as u64,
            rss_bytes: field("rss_bytes")? as u64,
            state_bytes: field("state_bytes")? as u64,
            state_keys: field("state_keys")? as u64,
            view_rows: field("view_rows")? as u64,
            spilled_bytes: field("spilled_bytes")? as u64,
            batch_cpu_seconds: field("batch_cpu_seconds")?,
            batch_rows: field("batch_rows")? as u64,
        })
    }
}

fn per_second(events: u64, seconds: f64) -> f64 {
    events as f64 / seconds.max(0.001)
}

/// In a child process (started by [`run`]), measures its query, prints the
/// figures as one JSON line and returns true; otherwise returns false. Call
/// it first thing in `main`, outside any async runtime.
pub fn run_child_if_asked() -> bool {
    let Ok(query) = std::env::var(CHILD_QUERY) else {
        return false;
    };
    let events = child_setting(CHILD_EVENTS, 1_000_000);
    let kafka = match (
        std::env::var(CHILD_KAFKA_RUN),
        std::env::var(CHILD_KAFKA_BOOTSTRAP),
    ) {
        (Ok(run_name), Ok(bootstrap)) => Some((run_name, bootstrap)),
        _ => None,
    };
    let baseline = std::env::var(CHILD_NO_BASELINE).is_err();
    let checkpoint_interval = Duration::from_millis(child_setting(CHILD_CHECKPOINT_MS, 0));
    let workers = child_setting(CHILD_WORKERS, 1);
    let measured = tokio::runtime::Runtime::new()
        .map_err(|e| format!("tokio runtime: {e}"))
        .and_then(|runtime| {
            runtime.block_on(measure(
                &query,
                events,
                kafka.as_ref(),
                baseline,
                checkpoint_interval,
                workers,
            ))
        });
    let _ = std::fs::remove_dir_all(checkpoint_dir());
    match measured {
        Ok(measured) => println!("{}", measured.to_json(events)),
        Err(e) => {
            eprintln!("{query}: {e}");
            std::process::exit(1);
        }
    }
    true
}

/// A number the parent passed to this child in `variable` (`default` when
/// unset or not a number).
fn child_setting<T: std::str::FromStr>(variable: &str, default: T) -> T {
    std::env::var(variable)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Runs every query of `options` in a child process each, printing a table
/// row as each ends; writes the JSON report. Returns the queries measured.
pub fn run(options: &Options) -> BenchResult<Vec<Measured>> {
    let known: Vec<String> = queries().into_iter().map(|(name, _)| name).collect();
    if let Some(unknown) = options.queries.iter().find(|q| !known.contains(q)) {
        return Err(format!("no Nexmark query {unknown}: q0 … q22"));
    }
    let events = options.events;
    let kafka_run = match &options.source {
        Source::Generator => None,
        Source::Kafka { bootstrap } => {
            let started = Instant::now();
            let run_name = produce_topics(events, bootstrap)?;
            println!(
                "{events} events written as JSON to topics nexmark-{{person,auction,bid}}-{run_name} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Some((run_name, bootstrap.clone()))
        }
    };
    let (cores, commit) = cores_and_commit();
    let source = options.source.name();
    println!(
        "Nexmark on eddy: {events} events per query from the {source}, {cores} cores, commit {commit}"
    );
    println!(
        "{:>4} {:>2} {:>10} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9} {:>7} {:>8} {:>9} {:>9}",
        "",
        "w",
        "k ev/CPU-s",
        "k ev/s",
        "cores",
        "batch k/s",
        "eddy/bt",
        "Flink",
        "publ.",
        "target",
        "RSS MB",
        "end MB",
        "state MB",
        "B/key",
        "spill MB",
        "fresh ms",
        "flush ms"
    );
    let this_binary =
        std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut measured = Vec::new();
    let runs = options
        .queries
        .iter()
        .flat_map(|q| options.workers.iter().map(move |w| (q, *w)));
    for (query, workers) in runs {
        let mut child = std::process::Command::new(&this_binary);
        child.env(CHILD_WORKERS, workers.to_string());
        if !options.baseline {
            child.env(CHILD_NO_BASELINE, "1");
        }
        child.env(
            CHILD_CHECKPOINT_MS,
            options.checkpoint_interval.as_millis().to_string(),
        );
        if let Some(bytes) = options.memory_limit {
            child.env(CHILD_MEMORY_LIMIT, bytes.to_string());
        }
        if let Some((run_name, bootstrap)) = &kafka_run {
            child
                .env(CHILD_KAFKA_RUN, run_name)
                .env(CHILD_KAFKA_BOOTSTRAP, bootstrap);
        }
        let output = child
            .env(CHILD_QUERY, query)
            .env(CHILD_EVENTS, events.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", this_binary.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(m) = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|json| Measured::from_json(json).ok())
        else {
            println!("{query:>4} failed ({})", output.status);
            continue;
        };
        let (here, published) = flink(query);
        let best = here.into_iter().chain(published).fold(0.0, f64::max);
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let baseline = |figure: String| {
            if options.baseline {
                figure
            } else {
                "-".to_string()
            }
        };
        println!(
            "{:>4} {:>2} {:>10.0} {:>9.0} {:>6.2} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>7.0} {:>9.1} {:>7} {:>8.0} {:>9.0} {:>9.0}",
            m.query,
            m.workers,
            m.k_events_per_cpu_second(),
            per_second(m.events_read, m.wall_seconds) / 1e3,
            m.cpu_seconds / m.wall_seconds.max(0.001),
            baseline(format!("{:.0}", per_second(m.events_read, m.batch_cpu_seconds) / 1e3)),
            baseline(format!("{:.2}", m.batch_cpu_seconds / m.cpu_seconds.max(0.001))),
            show(here),
            show(published),
            if best > 0.0 { format!("{:.0}", 2.0 * best) } else { "-".into() },
            m.peak_rss_bytes as f64 / 1e6,
            m.rss_bytes as f64 / 1e6,
            m.state_bytes as f64 / 1e6,
            m.state_bytes.checked_div(m.state_keys).map_or("-".into(), |b| b.to_string()),
            m.spilled_bytes as f64 / 1e6,
            m.freshness_ms,
            m.flush_ms,
        );
        measured.push(m);
    }
    print_scaling(&measured);
    let reports: Vec<serde_json::Value> = measured.iter().map(|m| m.to_json(events)).collect();
    let json = serde_json::json!({
        "commit": commit,
        "cores": cores,
        "events": events,
        "source": source,
        "queries": reports,
    });
    match std::fs::write(&options.json_path, format!("{json}\n")) {
        Ok(()) => println!("JSON: {}", options.json_path.display()),
        Err(e) => println!("could not write {}: {e}", options.json_path.display()),
    }
    println!(
        "k ev/CPU-s: thousand events read by the view (of the streams it reads) per \
         CPU-second of the process, as Flink's are counted; eddy/bt: \
         eddy's events per CPU-second over the batch baseline's (1: as fast as batch); Flink: \
         Flink 2.2.1 on this machine size; publ.: Flink's published per-core figure; target: \
         twice the higher of the two; RSS MB: peak RSS; end MB: RSS when the last event \
         was read; state MB: the operators' state a recovery reads (the last checkpoint's \
         base and deltas); B/key: operator state bytes per state key; spill MB: state on disk under \
         --memory-limit when the last event was read; w: worker \
         threads each keyed operator is split across"
    );
    Ok(measured)
}

/// Per query measured with more than one worker count: events per wall
/// second with each, over the fewest workers' figure.
fn print_scaling(measured: &[Measured]) {
    let mut queries: Vec<&str> = measured.iter().map(|m| m.query.as_str()).collect();
    queries.dedup();
    let mut header = false;
    for query in queries {
        let runs: Vec<&Measured> = measured.iter().filter(|m| m.query == query).collect();
        let [first, .., last] = runs.as_slice() else {
            continue;
        };
        if !header {
            println!("Scaling (thousand events per wall-second):");
            header = true;
        }
        let figures: Vec<String> = runs
            .iter()
            .map(|m| {
                format!(
                    "{} w {:.0}",
                    m.workers,
                    per_second(m.events_read, m.wall_seconds) / 1e3
                )
            })
            .collect();
        let speedup = first.wall_seconds / last.wall_seconds.max(0.001);
        println!(
            "{query:>4}: {}  ({}→{} workers: {speedup:.2}×)",
            figures.join(", "),
            first.workers,
            last.workers
        );
    }
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

/// Writes a nexmark run of `events` events as JSON to three fresh
/// one-partition topics, straight from the generator (a view feeding a sink
/// in between would hold every event in memory); returns the run's name
/// (part of the topics'). Each line is what eddy's Kafka sink writes for the
/// row (arrow's JSON writer), so the sources read them back as such.
fn produce_topics(events: u64, bootstrap: &str) -> BenchResult<String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    /// Events generated (and encoded) at a time.
    const CHUNK: u64 = 50_000;
    let run_name = format!(
        "{events}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .map_err(|e| format!("Kafka producer: {e}"))?;
    for table in ["person", "auction", "bid"] {
        let topic = kafka_topic(table, &run_name);
        let options = std::collections::BTreeMap::from([
            ("connector".to_string(), "nexmark".to_string()),
            ("nexmark.table.type".to_string(), table.to_string()),
            ("nexmark.event.rate".to_string(), EVENT_RATE.to_string()),
            ("nexmark.max.events".to_string(), events.to_string()),
        ]);
        let generator = NexmarkConfig::from_options(table, &[], &options)
            .map_err(|e| format!("nexmark {table}: {e}"))?;
        let mut written = 0i64;
        for first in (0..events).step_by(CHUNK as usize) {
            let rows = generator
                .rows(first, CHUNK.min(events - first))
                .map_err(|e| format!("nexmark {table}: {e}"))?;
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
            writer.write(&rows).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
            let lines = writer.into_inner();
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let mut record = BaseRecord::<(), [u8]>::to(&topic).payload(line);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => return Err(format!("producing to {topic}: {e}")),
                    }
                }
                written += 1;
            }
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(300))
            .map_err(|e| format!("flushing {topic}: {e}"))?;
        // Delivery failures are not reported to a plain producer: count what
        // the topic holds instead.
        let (_, high) = producer
            .client()
            .fetch_watermarks(&topic, 0, Duration::from_secs(30))
            .map_err(|e| format!("offsets of {topic}: {e}"))?;
        if high != written {
            return Err(format!(
                "{topic} holds {high} of the {written} events written"
            ));
        }
    }
    Ok(run_name)
}

/// The sources of one measurement: the generator, or the Kafka topics of
/// run `kafka` (run name, bootstrap).
fn sources_sql(table: &str, events: u64, kafka: Option<&(String, String)>) -> String {
    let Some((run_name, bootstrap)) = kafka else {
        return source_sql(table, events, EVENT_RATE);
    };
    format!(
        "CREATE SOURCE {table} ({}, {}WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
         WITH (connector = 'kafka', topic = '{}', properties.bootstrap.server = '{bootstrap}',
               scan.startup.mode = 'earliest')
         FORMAT PLAIN ENCODE JSON",
        kafka_columns(table),
        proctime_column(table),
        kafka_topic(table, run_name),
    )
}

/// Where this process's periodic checkpoints go (removed when it is done).
fn checkpoint_dir() -> PathBuf {
    std::env::temp_dir().join(format!("eddy-nexmark-{}", std::process::id()))
}

async fn start_server(
    checkpoint_interval: Duration,
    workers: usize,
) -> BenchResult<(crate::Server, Client)> {
    let mut options = crate::ServerOptions::new(([127, 0, 0, 1], 0).into());
    options.checkpoint_interval = checkpoint_interval;
    options.workers = workers;
    // (Read here rather than passed down: only a child has it.)
    options.memory_limit_bytes = std::env::var(CHILD_MEMORY_LIMIT)
        .ok()
        .and_then(|bytes| bytes.parse().ok());
    if !checkpoint_interval.is_zero() {
        // Periodic checkpoints go to disk, as a server's do: the in-memory
        // store would count its retained checkpoints in the RSS.
        let dir = checkpoint_dir();
        let _ = std::fs::remove_dir_all(&dir);
        options.checkpoint_location = Some(dir.to_string_lossy().into_owned());
    }
    let server = crate::Server::start_with_options(options)
        .await
        .map_err(|e| format!("eddy does not start: {e}"))?;
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=eddy", server.local_addr.port()),
        NoTls,
    )
    .await
    .map_err(|e| format!("cannot connect to eddy: {e}"))?;
    tokio::spawn(connection);
    Ok((server, client))
}

/// The relation an `operator_stats` row `(operator, rows_in)` of a scan
/// reads.
fn relation_of(scan: &[String]) -> &str {
    scan[0]
        .trim_start_matches("Scan: ")
        .split_whitespace()
        .next()
        .unwrap_or("")
}

/// Waits until every scan of `view` has read all events of its relation;
/// returns how many events that is (the events of the streams the view
/// reads, each stream once).
async fn wait_for_scans(client: &Client, view: &str, events: u64) -> BenchResult<u64> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let scans = rows(
            client,
            &format!(
                "SELECT operator, rows_in FROM eddy_catalog.operator_stats \
                 WHERE view = '{view}' AND operator LIKE 'Scan: %'"
            ),
        )
        .await?;
        let expected = |scan: &Vec<String>| {
            match relation_of(scan) {
                relation @ ("person" | "auction" | "bid") => events_of(relation, events),
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
            // A stream that the query reads twice (q5 and q7 read bids in
            // two subqueries) counts once, as a source operator read once
            // and shared (Flink's figures) would count it.
            let mut relations: Vec<&Vec<String>> = scans.iter().collect();
            relations.sort_by_key(|scan| relation_of(scan));
            relations.dedup_by_key(|scan| relation_of(scan));
            return Ok(relations.into_iter().map(expected).sum());
        }
        if Instant::now() > deadline {
            return Err(format!("{view} stalled: {scans:?}"));
        }
        // Each poll is a query the measured process answers (planning,
        // asking the runtime for its stats): poll rarely until the end is
        // near, then often, so that the poll costs little CPU and the clock
        // still stops within a few ms of the last event.
        let pause = if progress < 0.9 { 100 } else { 5 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// The first value of the first row, as a number (0 for NULL).
async fn number(client: &Client, sql: &str) -> BenchResult<f64> {
    let rows = rows(client, sql).await?;
    let value = rows
        .first()
        .and_then(|row| row.first())
        .ok_or_else(|| format!("no rows from {sql}"))?;
    Ok(value.parse().unwrap_or(0.0))
}

/// One query, measured in this process.
async fn measure(
    query_name: &str,
    events: u64,
    kafka: Option<&(String, String)>,
    baseline: bool,
    checkpoint_interval: Duration,
    workers: usize,
) -> BenchResult<Measured> {
    let (_, query) = queries()
        .into_iter()
        .find(|(name, _)| name == query_name)
        .ok_or_else(|| format!("no query {query_name}"))?;
    let (server, client) = start_server(checkpoint_interval, workers).await?;
    for table in ["person", "auction", "bid"] {
        execute(&client, &sources_sql(table, events, kafka)).await?;
    }
    // CREATE over Kafka returns at once; the clock stops at the last event.
    execute(&client, "SET background_ddl = true").await?;
    execute(&client, &side_input_sql()).await?;
    execute(&client, "FLUSH").await?;

    // The peak RSS from here is the view's.
    reset_peak_rss();
    let (cpu_start, wall_start) = (cpu_seconds(), Instant::now());
    execute(
        &client,
        &format!("CREATE MATERIALIZED VIEW {query_name} AS {query}"),
    )
    .await?;
    let events_read = wait_for_scans(&client, query_name, events).await?;
    let (cpu, wall) = (cpu_seconds() - cpu_start, wall_start.elapsed());
    let peak_rss = peak_rss_bytes();
    let rss = rss_bytes();
    let spilled_bytes = number(
        &client,
        &format!(
            "SELECT (SELECT coalesce(sum(spilled_bytes), 0) FROM eddy_catalog.operator_stats
                     WHERE view = '{query_name}')
                  + (SELECT coalesce(sum(spilled_bytes), 0) FROM eddy_catalog.materialized_views
                     WHERE name = '{query_name}')"
        ),
    )
    .await?;
    // The last epoch is published within 100 ms of the runtime going idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let freshness_ms = number(
        &client,
        &format!(
            "SELECT coalesce(freshness_ms, 0) FROM eddy_catalog.mv_stats WHERE name = '{query_name}'"
        ),
    )
    .await?;
    let flush_start = Instant::now();
    execute(&client, "FLUSH").await?;
    let flush = flush_start.elapsed();
    execute(&client, "CHECKPOINT").await?;
    let state = format!("FROM eddy_catalog.operator_stats WHERE view = '{query_name}'");
    let state_bytes = number(
        &client,
        &format!("SELECT coalesce(sum(state_bytes), 0) {state}"),
    )
    .await?;
    let state_keys = number(
        &client,
        &format!("SELECT coalesce(sum(state_keys), 0) {state}"),
    )
    .await?;
    let view_rows = number(&client, &format!("SELECT count(*) FROM {query_name}")).await?;

    let measured = Measured {
        query: query_name.to_string(),
        workers,
        events_read,
        cpu_seconds: cpu,
        wall_seconds: wall.as_secs_f64(),
        freshness_ms,
        flush_ms: flush.as_secs_f64() * 1e3,
        peak_rss_bytes: peak_rss,
        rss_bytes: rss,
        state_bytes: state_bytes as u64,
        state_keys: state_keys as u64,
        view_rows: view_rows as u64,
        spilled_bytes: spilled_bytes as u64,
        batch_cpu_seconds: 0.0,
        batch_rows: 0,
    };
    if !baseline {
        drop(client);
        server.stop().await;
        return Ok(measured);
    }
    // The batch baseline: the same query over copies of the streams.
    execute(&client, COPIES_SQL).await?;
    for table in ["person", "auction", "bid"] {
        wait_for_scans(&client, &format!("{table}_all"), events).await?;
    }
    execute(&client, "FLUSH").await?;
    let batch_sql = format!("SELECT count(*) FROM ({}) q", over_copies(query)?);
    let batch_cpu_start = cpu_seconds();
    let batch_rows = number(&client, &batch_sql).await?;
    let batch_cpu = cpu_seconds() - batch_cpu_start;
    drop(client);
    server.stop().await;
    Ok(Measured {
        batch_cpu_seconds: batch_cpu,
        batch_rows: batch_rows as u64,
        ..measured
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_figures_survive_their_json_line() {
        let m = Measured {
            query: "q5".into(),
            workers: 2,
            events_read: 920_000,
            cpu_seconds: 3.5,
            wall_seconds: 2.25,
            freshness_ms: 12.5,
            flush_ms: 30.0,
            peak_rss_bytes: 123_456_789,
            rss_bytes: 100_000_000,
            state_bytes: 4_096,
            state_keys: 17,
            view_rows: 25,
            spilled_bytes: 1 << 20,
            batch_cpu_seconds: 0.5,
            batch_rows: 25,
        };
        let back = Measured::from_json(&m.to_json(1_000_000).to_string()).unwrap();
        assert_eq!(back.query, "q5");
        assert_eq!(back.events_read, 920_000);
        assert_eq!(back.peak_rss_bytes, 123_456_789);
        assert_eq!(back.state_keys, 17);
        assert_eq!(back.spilled_bytes, 1 << 20);
        assert!((back.k_events_per_cpu_second() - 920.0 / 3.5).abs() < 1e-9);
    }

    #[test]
    fn queries_are_built_in_and_read_the_copies_in_the_baseline() {
        let all = queries();
        assert_eq!(all.len(), 23);
        let (_, q5) = &all[5];
        let batch = over_copies(q5).unwrap();
        assert!(batch.contains("bid_all"), "{batch}");
        assert!(!batch.contains("FROM bid "), "{batch}");
    }
}
