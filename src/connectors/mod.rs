//! Sources and sinks. Each connector turns the outside world into changelogs
//! (or changelogs into the outside world).
//!
//! - `table`: tables written with INSERT/UPDATE/DELETE.
//! - `postgres`: a sink that upserts a view into a real PostgreSQL table.
//! - `datagen`: a source of generated rows at a set rate.
//! - `nexmark`: the standard Nexmark person/auction/bid streams.
//! - `kafka`: Kafka topics as sources, and views into Kafka topics.
//!
//! Every view that reads a source runs a reader of its own
//! ([`SourceConnector::spawn_reader`]). Generated sources share one reader:
//! row (or event) `i` is a pure function of `i`, so each reader starts at 0
//! and every view sees the same rows.

pub mod datagen;
pub mod epoch;
pub mod format;
pub mod kafka;
pub mod nexmark;
pub mod policy;
pub mod postgres;
pub mod table;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::common::ChangeBatch;
use crate::common::RelationId;
use crate::error::Result;
use crate::runtime::RuntimeHandle;
use crate::state::checkpoint::ReaderPosition;
use table::TableWatermark;

/// What a source does with a message it cannot read, and a sink with a
/// row its target refuses: `skip` it (counted and listed in
/// `eddy_catalog.source_errors` / `sink_errors`, the default) or `fail`
/// (the views reading the source, or the sink, stop with the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    #[default]
    Skip,
    Fail,
}

impl OnError {
    /// The `on_error` option.
    pub fn from_options(options: &std::collections::BTreeMap<String, String>) -> Result<Self> {
        match options.get("on_error").map(|m| m.to_lowercase()).as_deref() {
            None | Some("skip") => Ok(Self::Skip),
            Some("fail") => Ok(Self::Fail),
            Some(other) => Err(crate::error::EddyError::InvalidParameter(format!(
                "on_error = '{other}' is not skip or fail"
            ))),
        }
    }
}

/// What the readers of one source have read (all its readers together):
/// messages (generated rows for datagen and nexmark) and their bytes (Kafka
/// payloads; generated rows have none).
#[derive(Debug, Default)]
pub struct SourceCounters {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl SourceCounters {
    pub fn read(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The connector of a `CREATE SOURCE`.
#[derive(Debug, Clone)]
pub enum SourceConnector {
    Datagen(datagen::DatagenConfig),
    Nexmark(nexmark::NexmarkConfig),
    Kafka(Arc<kafka::KafkaSourceConfig>),
}

/// How an ad hoc SELECT reads a source: the rows it holds now, read once,
/// at most the given number.
#[derive(Clone)]
pub struct SourceRead(
    #[allow(clippy::type_complexity)]
    pub  Arc<
        dyn Fn(
                Option<usize>,
            ) -> futures::future::BoxFuture<
                'static,
                crate::error::Result<datafusion::arrow::array::RecordBatch>,
            > + Send
            + Sync,
    >,
);

impl std::fmt::Debug for SourceRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceRead")
    }
}

impl SourceConnector {
    /// How an ad hoc SELECT reads the source (Kafka: what the topic holds
    /// now, see `kafka::snapshot`); `None` for generators, which hold
    /// nothing until read.
    pub fn snapshot_read(
        &self,
        schema: datafusion::arrow::datatypes::SchemaRef,
        proctime: Option<usize>,
    ) -> Option<SourceRead> {
        match self {
            SourceConnector::Kafka(config) => {
                let config = config.clone();
                Some(SourceRead(Arc::new(move |limit| {
                    let (config, schema) = (config.clone(), schema.clone());
                    Box::pin(async move { config.read_snapshot(schema, proctime, limit).await })
                })))
            }
            SourceConnector::Datagen(_) | SourceConnector::Nexmark(_) => None,
        }
    }

    /// Whether the source only ever adds rows.
    pub fn is_append_only(&self) -> bool {
        match self {
            SourceConnector::Datagen(_) | SourceConnector::Nexmark(_) => true,
            SourceConnector::Kafka(config) => config.is_append_only(),
        }
    }
}

/// What one reader of a source needs.
pub struct ReaderSpec {
    /// The source's columns (the connector's, plus a PROCTIME() column).
    pub schema: SchemaRef,
    pub proctime: Option<table::ProcessingTime>,
    pub watermark: Option<TableWatermark>,
    /// The relation id the reader's changes go to.
    pub relation: RelationId,
    /// The view it reads for (for error reports).
    pub view: String,
    pub runtime: RuntimeHandle,
    pub stop: Arc<AtomicBool>,
    /// Where to resume, from a checkpoint; `None`: the source's startup
    /// position.
    pub resume: Option<ReaderPosition>,
    /// The columns of `schema` the view reads (`None`: all). A reader may
    /// leave the others unbuilt (placeholders of their type); it still
    /// checks them, so that what it takes for a bad message does not depend
    /// on the view.
    pub columns_read: Option<Vec<usize>>,
}

impl SourceConnector {
    /// What the source's readers have read.
    pub fn counters(&self) -> &SourceCounters {
        match self {
            Self::Datagen(config) => &config.counters,
            Self::Nexmark(config) => &config.counters,
            Self::Kafka(config) => &config.counters,
        }
    }

    /// The columns the connector produces.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Self::Datagen(config) => config.schema(),
            Self::Nexmark(config) => config.schema(),
            Self::Kafka(config) => config.schema(),
        }
    }

    /// Starts a reader task.
    pub fn spawn_reader(&self, spec: ReaderSpec) {
        match self {
            Self::Datagen(config) => spawn_generator(Generator::Datagen(config.clone()), spec),
            Self::Nexmark(config) => spawn_generator(Generator::Nexmark(config.clone()), spec),
            Self::Kafka(config) => kafka::spawn_reader(config.clone(), spec),
        }
    }
}

/// A generated source: position (row or event) `i` is a pure function of
/// `i`.
enum Generator {
    Datagen(datagen::DatagenConfig),
    Nexmark(nexmark::NexmarkConfig),
}

impl Generator {
    /// Positions per second the reader produces at most; `None`: as fast as
    /// the runtime takes them.
    fn rate(&self) -> Option<u64> {
        match self {
            Self::Datagen(config) => Some(config.rows_per_second()),
            Self::Nexmark(config) => config.emit_rate(),
        }
    }

    /// What the source's readers have generated.
    fn counters(&self) -> &SourceCounters {
        match self {
            Self::Datagen(config) => &config.counters,
            Self::Nexmark(config) => &config.counters,
        }
    }

    /// The position the source ends at, if it is bounded.
    fn end(&self) -> Option<u64> {
        match self {
            Self::Datagen(config) => config.max_rows(),
            Self::Nexmark(config) => config.max_events(),
        }
    }

    /// The rows of positions `first .. first + count` (for nexmark, only the
    /// events of the source's kind among them).
    fn rows(&self, first: u64, count: u64) -> Result<RecordBatch> {
        match self {
            Self::Datagen(config) => config.rows(first, count),
            Self::Nexmark(config) => config.rows(first, count),
        }
    }
}

/// Positions per generated batch at most; a batch is also cut at each tick.
const MAX_BATCH: u64 = 4096;
const TICK: Duration = Duration::from_millis(100);

/// How often a relation whose watermark follows a PROCTIME() column moves it
/// while no rows arrive (so processing-time windows close on time).
pub const PROCESSING_TIME_HEARTBEAT: Duration = Duration::from_millis(250);

/// Runs one reader of a generated source until the source ends or `stop`
/// is set. Sending waits when the runtime is behind (backpressure), so the
/// rate is an upper bound. With a PROCTIME() column it stamps every batch,
/// and while idle (or after the end) moves a processing-time watermark until
/// stopped.
fn spawn_generator(generator: Generator, spec: ReaderSpec) {
    let ReaderSpec {
        schema,
        proctime,
        watermark,
        relation,
        view: _,
        runtime,
        stop,
        resume,
        columns_read: _,
    } = spec;
    let clock_drives_watermark = matches!(
        (&proctime, &watermark),
        (Some(p), Some(w)) if p.column == w.column
    );
    tokio::spawn(async move {
        let started = Instant::now();
        let rate = generator.rate();
        let first = match resume {
            Some(ReaderPosition::Generator { next }) => next,
            _ => 0,
        };
        let mut position: u64 = first;
        let mut last_heartbeat = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let ended = generator.end().is_some_and(|end| position >= end);
            if ended && !clock_drives_watermark {
                break;
            }
            if let (true, Some(clock), Some(watermark)) =
                (clock_drives_watermark, &proctime, &watermark)
            {
                if last_heartbeat.elapsed() >= PROCESSING_TIME_HEARTBEAT {
                    last_heartbeat = Instant::now();
                    if let Some(moved) = watermark.advance_to(clock.now()) {
                        let empty = ChangeBatch::inserts(RecordBatch::new_empty(schema.clone()));
                        if runtime
                            .send_changes(relation, empty, Some(moved))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            if ended {
                tokio::time::sleep(TICK).await;
                continue;
            }
            let due = match rate {
                Some(rate) => first + (started.elapsed().as_secs_f64() * rate as f64) as u64,
                None => {
                    // Unthrottled: let other tasks run between batches.
                    tokio::task::yield_now().await;
                    position + MAX_BATCH
                }
            };
            let mut count = due.saturating_sub(position).min(MAX_BATCH);
            if let Some(end) = generator.end() {
                count = count.min(end - position);
            }
            if count == 0 {
                tokio::time::sleep(TICK).await;
                continue;
            }
            let generated = std::time::Instant::now();
            let result = generator.rows(position, count).and_then(|rows| {
                let rows = match &proctime {
                    Some(clock) => clock.stamp(&rows, &schema, clock.now())?,
                    None => rows,
                };
                let change = ChangeBatch::inserts(rows);
                let moved = watermark
                    .as_ref()
                    .map(|w| w.observe(&change))
                    .transpose()?
                    .flatten();
                Ok((change, moved))
            });
            match result {
                Ok((change, moved)) => {
                    generator.counters().read(change.num_rows() as u64, 0);
                    let next = ReaderPosition::Generator {
                        next: position + count,
                    };
                    if runtime
                        .send_source_changes(relation, change, moved, next, generated)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    position += count;
                }
                Err(e) => {
                    tracing::error!(error = %e, relation, "source reader stopped");
                    break;
                }
            }
        }
        tracing::debug!(relation, position, "source reader finished");
    });
}

/// Connector options as the parser hands them over, for tests.
#[cfg(test)]
pub(crate) fn test_options(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
