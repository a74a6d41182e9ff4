//! Kafka sources (and, in [`sink`], sinks), through rdkafka.
//!
//! ```sql
//! CREATE SOURCE events (id BIGINT, v INT, ts TIMESTAMP,
//!                       WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
//! INCLUDE partition INCLUDE offset
//! WITH (connector = 'kafka', topic = 'events',
//!       properties.bootstrap.server = '127.0.0.1:9092',
//!       scan.startup.mode = 'earliest')
//! FORMAT PLAIN ENCODE JSON;
//! ```
//!
//! Like every source, each view that reads a Kafka source runs a reader of
//! its own ([`spawn_reader`]): a consumer that assigns itself every
//! partition of the topic (no group coordination, no offset commits) from
//! the startup position, and picks up partitions added later. Messages are
//! decoded in batches (see [`decode`]); a bad message is skipped, counted
//! and recorded in `eddy_catalog.source_errors`, or, with `on_error =
//! 'fail'`, stops the views that read the source. librdkafka reconnects to
//! a broker that went away and the consumer resumes at its position, so
//! nothing is skipped or read twice.
//!
//! The watermark is tracked per partition: the source's is the minimum over
//! the partitions that still have messages to deliver; a partition that has
//! reached its end (or never had messages) does not hold the others back
//! (when every partition is at its end, those that had messages decide).

mod client;
pub mod decode;
mod field_check;
mod json;
mod native;
pub mod sink;
mod snapshot;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::common::ChangeBatch;
use crate::common::RelationId;
use crate::connectors::format::{FormatSpec, KafkaMetadata, MessageFormat, SourceClauses};
use crate::connectors::policy::ConnectorPolicy;
use crate::connectors::table::{ProcessingTime, TableWatermark};
use crate::connectors::OnError;
use crate::error::{EddyError, Result};
use crate::runtime::RuntimeHandle;
use crate::state::checkpoint::ReaderPosition;
use crate::state::RowCodec;
use decode::PayloadDecoder;
use native::{ClientEvents, ConsumerQueue, Delivered};

/// Messages per batch at most; a batch is also cut after [`BATCH_WAIT`].
const MAX_BATCH: usize = 4096;
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How long librdkafka waits to fetch again when its queue is full.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// How often librdkafka reports the partitions' offsets (for the lag).
const STATISTICS_INTERVAL_MS: &str = "1000";
/// How often a reader looks for partitions added to its topic.
const PARTITION_CHECK: Duration = Duration::from_secs(5);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long CREATE SOURCE waits for the brokers to describe the topic.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    Earliest,
    Latest,
    /// The first message at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A bad message, as `eddy_catalog.source_errors` shows it.
#[derive(Debug, Clone)]
pub struct SourceError {
    pub view: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// The bad messages of one source: each counted once, however many views
/// read it (the last 1000 listed), and the count kept across restarts.
///
/// Every reader of a source takes the same messages for bad (the decoder's
/// invariant), and reads each partition in offset order. So the first
/// reader past a bad message counts it, and a later one skips every bad
/// message at or below the highest offset counted in its partition:
/// everything up to there was counted by whoever got there first.
#[derive(Debug, Default)]
pub struct SourceErrors {
    log: crate::common::recent::RecentLog<SourceError>,
    /// Per partition, the highest offset of a bad message counted.
    counted_through: Mutex<BTreeMap<i32, i64>>,
    /// Declared JSON columns that matched no field of a reader's first
    /// messages (see `field_check`): listed, not counted as bad messages.
    fields: Mutex<Option<SourceError>>,
}

/// The key of the total in [`SourceErrors::capture`]'s entries (partition
/// keys are four bytes).
const TOTAL_KEY: &[u8] = b"total";

impl SourceErrors {
    /// Counts and lists `error` unless a reader counted it already.
    fn record(&self, error: SourceError) {
        let mut counted = self
            .counted_through
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if counted
            .get(&error.partition)
            .is_some_and(|&through| error.offset <= through)
        {
            return;
        }
        counted.insert(error.partition, error.offset);
        // Under the lock: a capture sees the count and the offsets agree.
        self.log.record(error);
    }

    /// The last bad messages (up to 1000), oldest first, then the
    /// columns that match no field, if a reader found some.
    pub fn recent(&self) -> Vec<SourceError> {
        let mut recent = self.log.recent();
        recent.extend(self.fields_lock().clone());
        recent
    }

    fn fields_lock(&self) -> std::sync::MutexGuard<'_, Option<SourceError>> {
        self.fields.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `error` (declared columns matching no field) unless a reader
    /// did already; true when it is new.
    fn note_fields(&self, error: SourceError) -> bool {
        let mut fields = self.fields_lock();
        let new = fields.is_none();
        fields.get_or_insert(error);
        new
    }

    /// Whether a reader reported unmatched columns already (later readers
    /// need not look).
    fn fields_checked(&self) -> bool {
        self.fields_lock().is_some()
    }

    /// Bad messages in all (since the source was created).
    pub fn total(&self) -> u64 {
        self.log.total()
    }

    /// The count and where it stands, for a checkpoint. After a restart,
    /// readers go back to their checkpointed offsets; what they read again
    /// up to these offsets was counted already.
    pub fn capture(&self) -> crate::state::checkpoint::StateDelta {
        let counted = self
            .counted_through
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut delta = crate::state::checkpoint::StateDelta::new(true);
        delta.put(TOTAL_KEY, self.log.total().to_be_bytes());
        for (partition, offset) in counted.iter() {
            delta.put(partition.to_be_bytes(), offset.to_be_bytes());
        }
        delta
    }

    /// Takes back what [`Self::capture`] wrote.
    pub fn restore(&self, entries: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
        let mut counted = self
            .counted_through
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let corrupt = || EddyError::Checkpoint("bad source error counts".into());
        for (key, value) in entries {
            let value: [u8; 8] = value.try_into().map_err(|_| corrupt())?;
            if key == TOTAL_KEY {
                self.log.add_to_total(u64::from_be_bytes(value));
            } else {
                let partition: [u8; 4] = key.try_into().map_err(|_| corrupt())?;
                counted.insert(i32::from_be_bytes(partition), i64::from_be_bytes(value));
            }
        }
        Ok(())
    }
}

/// Where each reader of a source is, per partition: what it has read, what
/// the broker holds (from librdkafka's statistics, about once a second) and
/// the newest event time it saw; and each reader's watermark. Read by the
/// metrics, `eddy_catalog.source_stats` and the web page.
#[derive(Debug, Default)]
pub struct ReadProgress {
    state: Mutex<ReadState>,
}

#[derive(Debug, Default)]
struct ReadState {
    /// (view the reader feeds, partition) -> progress.
    partitions: BTreeMap<(String, i32), PartitionProgress>,
    /// view -> the reader's event-time watermark (µs).
    watermarks: BTreeMap<String, i64>,
    /// view -> the reader's backfill.
    backfills: BTreeMap<String, Backfill>,
    /// view -> why its reader cannot reach the brokers now.
    troubles: BTreeMap<String, String>,
}

/// A reader's backfill: reading what the topic held when the reader
/// started (from its startup position or checkpoint to the partitions' end
/// offsets then). Shown by `SHOW JOBS` and reported to the client creating
/// the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    /// When the reader started (Unix ms).
    pub started_unix_ms: i64,
    /// partition -> (first offset to read, end offset when it started).
    pub partitions: BTreeMap<i32, (i64, i64)>,
    /// Messages of that range read so far.
    pub read: i64,
    /// How long it took, once done (ms).
    pub finished_after_ms: Option<i64>,
    /// Why it ended without reading everything (the reader failed, or the
    /// broker could not say where the partitions end).
    pub error: Option<String>,
}

impl Backfill {
    /// Messages to read in all.
    pub fn total(&self) -> i64 {
        self.partitions
            .values()
            .map(|(start, end)| (end - start).max(0))
            .sum()
    }

    pub fn is_done(&self) -> bool {
        self.finished_after_ms.is_some()
    }
}

/// One reader's progress in one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The offset after the last message read.
    pub next_offset: Option<i64>,
    /// The partition's first offset the broker still holds.
    pub low_offset: Option<i64>,
    /// The offset the next message written to the partition gets (for
    /// `read_committed` readers: the last stable offset).
    pub high_offset: Option<i64>,
    /// The newest event time read from the partition (µs).
    pub event_time: Option<i64>,
    /// Bad messages this reader skipped in the partition (since eddy
    /// started; the source's total, counted once, survives restarts).
    pub bad_messages: u64,
}

impl PartitionProgress {
    /// Messages in the partition the reader has not read yet, once the
    /// broker's end is known.
    pub fn lag(&self) -> Option<i64> {
        let high = self.high_offset?;
        let read = match (self.next_offset, self.low_offset) {
            (Some(next), Some(low)) => next.max(low),
            (next, low) => next.or(low)?,
        };
        Some((high - read).max(0))
    }
}

impl ReadProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, view: &str, partition: i32, change: impl FnOnce(&mut PartitionProgress)) {
        change(
            self.lock()
                .partitions
                .entry((view.to_string(), partition))
                .or_default(),
        );
    }

    /// The reader of `view` cannot reach its brokers because of `reason`
    /// (`None`: it can again).
    fn set_trouble(&self, view: &str, reason: Option<String>) {
        let mut state = self.lock();
        match reason {
            Some(reason) => state.troubles.insert(view.to_string(), reason),
            None => state.troubles.remove(view),
        };
    }

    /// Why the reader of `view` cannot reach its brokers now, if it cannot.
    pub fn trouble(&self, view: &str) -> Option<String> {
        self.lock().troubles.get(view).cloned()
    }

    /// Every reader that cannot reach its brokers now: (view, why).
    pub fn troubles(&self) -> Vec<(String, String)> {
        self.lock()
            .troubles
            .iter()
            .map(|(v, r)| (v.clone(), r.clone()))
            .collect()
    }

    fn set_watermark(&self, view: &str, watermark: i64) {
        self.lock().watermarks.insert(view.to_string(), watermark);
    }

    /// A reader starts to read `partitions` (first offset, end offset).
    fn start_backfill(
        &self,
        view: &str,
        partitions: BTreeMap<i32, (i64, i64)>,
        error: Option<String>,
    ) {
        let mut backfill = Backfill {
            started_unix_ms: chrono::Utc::now().timestamp_millis(),
            partitions,
            read: 0,
            finished_after_ms: None,
            error,
        };
        if backfill.total() == 0 || backfill.error.is_some() {
            backfill.finished_after_ms = Some(0);
        }
        self.lock().backfills.insert(view.to_string(), backfill);
    }

    /// Counts what the reader of `view` has read of its backfill, from the
    /// next offsets it reported.
    fn backfill_read(&self, view: &str) {
        let mut state = self.lock();
        let ReadState {
            partitions,
            backfills,
            ..
        } = &mut *state;
        let Some(backfill) = backfills.get_mut(view).filter(|b| !b.is_done()) else {
            return;
        };
        let done: i64 = backfill
            .partitions
            .iter()
            .map(|(p, (start, end))| {
                match partitions
                    .get(&(view.to_string(), *p))
                    .and_then(|p| p.next_offset)
                {
                    Some(next) => (next.min(*end) - start).max(0),
                    None => 0,
                }
            })
            .sum();
        backfill.read = done;
        if done >= backfill.total() {
            backfill.finished_after_ms =
                Some(chrono::Utc::now().timestamp_millis() - backfill.started_unix_ms);
        }
    }

    /// The reader of `view` stopped on `error` before catching up.
    fn end_backfill(&self, view: &str, error: &str) {
        if let Some(backfill) = self.lock().backfills.get_mut(view).filter(|b| !b.is_done()) {
            backfill.error = Some(error.to_string());
            backfill.finished_after_ms =
                Some(chrono::Utc::now().timestamp_millis() - backfill.started_unix_ms);
        }
    }

    /// The backfill of the reader of `view`, once it started.
    pub fn backfill(&self, view: &str) -> Option<Backfill> {
        self.lock().backfills.get(view).cloned()
    }

    /// Every reader's backfill: `(view, backfill)`.
    pub fn backfills(&self) -> Vec<(String, Backfill)> {
        let state = self.lock();
        state
            .backfills
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Forgets a reader (its view was dropped).
    pub fn forget(&self, view: &str) {
        let mut state = self.lock();
        state.backfills.remove(view);
        state.partitions.retain(|(v, _), _| v != view);
        state.watermarks.remove(view);
    }

    /// Every reader's partitions: `((view, partition), progress)`.
    pub fn partitions(&self) -> Vec<((String, i32), PartitionProgress)> {
        let state = self.lock();
        state
            .partitions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Every reader's watermark: `(view, µs)`.
    pub fn watermarks(&self) -> Vec<(String, i64)> {
        let state = self.lock();
        state
            .watermarks
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// A checked Kafka source configuration.
#[derive(Debug)]
pub struct KafkaSourceConfig {
    pub topic: String,
    /// librdkafka settings (`properties.*`, with `bootstrap.servers`).
    client: BTreeMap<String, String>,
    startup: Startup,
    format: MessageFormat,
    /// Decodes payloads into the declared columns.
    decoder: PayloadDecoder,
    /// The declared columns, then the INCLUDEd metadata columns.
    schema: SchemaRef,
    metadata: Vec<KafkaMetadata>,
    on_error: OnError,
    /// A message whose event time is further than this ahead of the clock
    /// is bad (`None`: any time is taken). Only with a WATERMARK.
    max_future_micros: Option<i64>,
    pub errors: Arc<SourceErrors>,
    pub counters: crate::connectors::SourceCounters,
    pub progress: Arc<ReadProgress>,
}

const KNOWN_OPTIONS: &str = "topic, properties.bootstrap.server, properties.<librdkafka setting>, \
                             scan.startup.mode, scan.startup.timestamp.millis, on_error, \
                             watermark.max_future";

/// How far ahead of the clock an event may be stamped by default: clocks
/// of producers drift by seconds, not days, and one message stamped in
/// 2100 would otherwise move the watermark there and make every later
/// message late.
const DEFAULT_MAX_FUTURE_MICROS: i64 = 24 * 3600 * 1_000_000;

impl KafkaSourceConfig {
    /// The brokers it connects to first (`host`, `port`).
    pub fn brokers(&self) -> Vec<(String, u16)> {
        client::bootstrap_hosts(&self.client)
    }

    /// Whether the topic's messages only add rows (FORMAT PLAIN): UPSERT and
    /// DEBEZIUM messages update and delete them.
    pub fn is_append_only(&self) -> bool {
        self.format == MessageFormat::Plain
    }

    /// The configuration of a source with `declared` columns (and `key`,
    /// the PRIMARY KEY columns, which FORMAT UPSERT requires).
    pub fn from_clauses(
        declared: Vec<Field>,
        key: &[usize],
        clauses: &SourceClauses,
        policy: &ConnectorPolicy,
    ) -> Result<Self> {
        let options = &clauses.options;
        let client = client::client_settings(
            options,
            &[
                "topic",
                "scan.startup.mode",
                "scan.startup.timestamp.millis",
                "on_error",
                "watermark.max_future",
            ],
            &format!("a Kafka source; known: {KNOWN_OPTIONS}"),
            policy,
        )?;
        if !client.contains_key("bootstrap.servers") {
            return Err(EddyError::InvalidParameter(
                "a Kafka source needs properties.bootstrap.server = 'host:port'".into(),
            ));
        }
        let topic = options.get("topic").cloned().ok_or_else(|| {
            EddyError::InvalidParameter("a Kafka source needs topic = '...'".into())
        })?;
        let startup = match options
            .get("scan.startup.mode")
            .map(|m| m.to_lowercase())
            .as_deref()
        {
            None | Some("earliest") => Startup::Earliest,
            Some("latest") => Startup::Latest,
            Some("timestamp") => {
                let millis = options
                    .get("scan.startup.timestamp.millis")
                    .ok_or_else(|| {
                        EddyError::InvalidParameter(
                            "scan.startup.mode = 'timestamp' needs scan.startup.timestamp.millis"
                                .into(),
                        )
                    })?;
                Startup::Timestamp(millis.parse().map_err(|_| {
                    EddyError::InvalidParameter(format!(
                        "scan.startup.timestamp.millis = '{millis}' is not a whole number"
                    ))
                })?)
            }
            Some(other) => {
                return Err(EddyError::InvalidParameter(format!(
                    "scan.startup.mode = '{other}' is not earliest, latest or timestamp"
                )))
            }
        };
        let on_error = OnError::from_options(options)?;
        let max_future_micros = match options.get("watermark.max_future") {
            None => Some(DEFAULT_MAX_FUTURE_MICROS),
            Some(off) if off.eq_ignore_ascii_case("off") => None,
            Some(text) => match crate::common::time::interval_micros(text) {
                Ok(micros) if micros >= 0 => Some(micros),
                _ => {
                    return Err(EddyError::InvalidParameter(format!(
                        "watermark.max_future = '{text}' is not an interval such as '1 day' \
                         (or 'off')"
                    )))
                }
            },
        };
        let spec = clauses.format.clone().ok_or_else(|| {
            EddyError::InvalidParameter(
                "a Kafka source needs FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON | CSV".into(),
            )
        })?;
        let FormatSpec {
            format,
            encoding,
            encode_options,
        } = spec;
        if declared.is_empty() {
            return Err(EddyError::InvalidParameter(
                "a Kafka source needs a column list".into(),
            ));
        }
        match (format, key.is_empty()) {
            (MessageFormat::Upsert, true) => {
                return Err(EddyError::InvalidParameter(
                    "FORMAT UPSERT needs a PRIMARY KEY: the message key identifies the row".into(),
                ))
            }
            (MessageFormat::Plain | MessageFormat::Debezium, false) => {
                return Err(crate::not_supported!(
                    "a PRIMARY KEY on a source is for FORMAT UPSERT"
                ))
            }
            _ => {}
        }
        if format != MessageFormat::Plain
            && encoding != crate::connectors::format::MessageEncoding::Json
        {
            return Err(crate::not_supported!("FORMAT {format:?} needs ENCODE JSON"));
        }
        let payload_schema = Arc::new(Schema::new(declared.clone()));
        let decoder = PayloadDecoder::try_new(encoding, payload_schema, &encode_options, policy)?;
        let mut fields = declared;
        let mut metadata = Vec::new();
        for (kind, name) in &clauses.includes {
            if fields.iter().any(|f| f.name() == name) {
                return Err(EddyError::DuplicateRelation(format!(
                    "column \"{name}\" specified more than once"
                )));
            }
            let data_type = match kind {
                KafkaMetadata::Partition => DataType::Int32,
                KafkaMetadata::Offset => DataType::Int64,
                KafkaMetadata::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
                KafkaMetadata::Key => DataType::Utf8,
            };
            fields.push(Field::new(name, data_type, true));
            metadata.push(*kind);
        }
        let config = Self {
            topic,
            client,
            startup,
            format,
            decoder,
            schema: Arc::new(Schema::new(fields)),
            metadata,
            on_error,
            max_future_micros,
            errors: Arc::new(SourceErrors::default()),
            counters: Default::default(),
            progress: Arc::default(),
        };
        // librdkafka checks its settings when a client is made: a bad
        // setting is an error now, not a failed reader later.
        drop(config.consumer(0, None)?);
        Ok(config)
    }

    /// The declared columns, then the metadata columns.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Asks the brokers about the topic (blocking, at most
    /// [`CHECK_TIMEOUT`]), so that CREATE SOURCE answers a wrong address or
    /// a missing topic at once instead of a view waiting on it silently:
    /// 08001 with librdkafka's reason when no broker answers, 42704 when
    /// the topic does not exist.
    pub fn check_topic(&self) -> Result<()> {
        let servers = self
            .client
            .get("bootstrap.servers")
            .map_or("", String::as_str);
        let mut config = ClientConfig::new();
        // A producer's metadata request would create the topic on a broker
        // that allows it (librdkafka's producer default); a reader's does
        // not, and the check must answer as the reader will find it.
        config.set("allow.auto.create.topics", "false");
        for (name, value) in &self.client {
            config.set(name, value);
        }
        let context = ReaderContext {
            answers_itself: true,
            ..ReaderContext::labelled(format!("CREATE SOURCE check of topic {}", self.topic))
        };
        // A plain client (a producer's) serves its errors, with librdkafka's
        // reasons, to the context when polled; a consumer hands out codes.
        use rdkafka::producer::Producer;
        let client: rdkafka::producer::BaseProducer<ReaderContext> =
            config.create_with_context(context).map_err(kafka_error)?;
        let metadata = client
            .client()
            .fetch_metadata(Some(&self.topic), CHECK_TIMEOUT)
            .map_err(|e| {
                // librdkafka's last client error says why (connection
                // refused, name not resolved, ...); the fetch only timed out.
                client.poll(Duration::from_millis(100));
                let why = client.context().last_trouble();
                EddyError::ConnectionFailure(format!(
                    "cannot reach the Kafka broker at {servers} within {} s: {}",
                    CHECK_TIMEOUT.as_secs(),
                    why.unwrap_or_else(|| e.to_string())
                ))
            })?;
        let missing = || {
            EddyError::UndefinedObject(format!(
                "Kafka topic \"{}\" does not exist on the broker at {servers}; create it first \
                 (kafka-topics.sh --create --topic {} ...)",
                self.topic, self.topic
            ))
        };
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(missing)?;
        match topic.error() {
            Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                Err(missing())
            }
            Some(error) => Err(EddyError::InvalidParameter(format!(
                "Kafka topic \"{}\" on {servers}: {}",
                self.topic,
                rdkafka::types::RDKafkaErrorCode::from(error)
            ))),
            None if topic.partitions().is_empty() => Err(missing()),
            None => Ok(()),
        }
    }

    /// A consumer for the reader of `relation`; with `view`, it reports
    /// the broker's partition offsets into [`Self::progress`] for that view.
    fn consumer(
        &self,
        relation: RelationId,
        view: Option<&str>,
    ) -> Result<StreamConsumer<ReaderContext>> {
        let mut config = ClientConfig::new();
        config
            .set("group.id", format!("eddy-reader-{relation}"))
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            // KIP-714 client metrics for the broker: with them on, every
            // poll records its idle ratio in a histogram under a lock.
            .set("enable.metrics.push", "false")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // librdkafka stops fetching a partition for this long once
            // `queued.min.messages` (100,000) wait in its queue; at the
            // default 1 s a reader that empties the queue in 0.3 s sat idle
            // for the rest (catch-up ran at a third of its speed).
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .set(
                "auto.offset.reset",
                if self.startup == Startup::Latest {
                    "latest"
                } else {
                    "earliest"
                },
            );
        for (name, value) in &self.client {
            config.set(name, value);
        }
        let context = ReaderContext {
            progress: view.map(|view| (self.progress.clone(), view.to_string())),
            label: match view {
                Some(view) => format!("topic {}, view {view}", self.topic),
                None => format!("topic {}", self.topic),
            },
            trouble: Mutex::default(),
            answers_itself: false,
        };
        config.create_with_context(context).map_err(kafka_error)
    }
}

/// eddy's librdkafka client context (readers, sinks, checks): reports
/// client errors once per change of state, not once per retry (a broker
/// that is down makes librdkafka report an error for every reconnect, ~20
/// a second); leaves out reaching the end of a partition, which librdkafka
/// reports as an error but is an ordinary event for a reader; and takes the
/// partitions' offsets from librdkafka's statistics.
#[derive(Default)]
pub struct ReaderContext {
    /// Where to report the offsets and the brokers' state, and for which
    /// view's reader.
    progress: Option<(Arc<ReadProgress>, String)>,
    /// Whose client this is, for the log ("source s, view v", "sink k").
    label: String,
    /// What the client reported while its brokers are unreachable.
    trouble: Mutex<Trouble>,
    /// A client that does not retry (the CREATE SOURCE check, whose error
    /// answers the statement): its troubles are not logged as warnings.
    answers_itself: bool,
}

/// A client's trouble reaching its brokers, and what the log said of it.
#[derive(Debug, Default)]
struct Trouble {
    /// The last error reported since a broker last answered.
    reason: Option<String>,
    /// When a trouble was last logged as a warning.
    warned_at: Option<Instant>,
    /// Whether this trouble was logged (so its end is too).
    said: bool,
}

/// A client whose trouble comes and goes (an error every few seconds with
/// the broker up between them) warns at most this often.
const WARN_AT_MOST_EVERY: Duration = Duration::from_secs(60);

impl ReaderContext {
    /// A context for the client of `label`.
    pub fn labelled(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            ..Self::default()
        }
    }

    fn trouble(&self) -> std::sync::MutexGuard<'_, Trouble> {
        self.trouble.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client reports `reason`: a warning when it is the first since a
    /// broker last answered, at debug level after that.
    fn report(&self, reason: String) {
        self.note(reason, true);
    }

    /// A summary (librdkafka's "1/1 brokers are down", a failed metadata
    /// fetch) that says less than the connection error it follows: kept
    /// only while nothing more precise is known.
    fn report_summary(&self, reason: String) {
        self.note(reason, false);
    }

    fn note(&self, reason: String, precise: bool) {
        let mut trouble = self.trouble();
        let first = trouble.reason.is_none();
        if !first && !precise {
            tracing::debug!(client = %self.label, "Kafka: {reason}");
            return;
        }
        let quiet = trouble
            .warned_at
            .is_some_and(|at| at.elapsed() < WARN_AT_MOST_EVERY);
        if first && !quiet && !self.answers_itself {
            tracing::warn!(client = %self.label, "Kafka: {reason}; retrying until it answers");
            trouble.warned_at = Some(Instant::now());
            trouble.said = true;
        } else {
            tracing::debug!(client = %self.label, "Kafka: {reason}");
        }
        trouble.reason = Some(reason.clone());
        drop(trouble);
        if let Some((progress, view)) = &self.progress {
            progress.set_trouble(view, Some(reason));
        }
    }

    /// A broker answered again.
    fn reachable(&self) {
        let mut trouble = self.trouble();
        if trouble.reason.take().is_none() {
            return;
        }
        if std::mem::take(&mut trouble.said) {
            tracing::info!(client = %self.label, "Kafka reachable again");
        }
        drop(trouble);
        if let Some((progress, view)) = &self.progress {
            progress.set_trouble(view, None);
        }
    }

    /// What the client reported since a broker last answered.
    fn last_trouble(&self) -> Option<String> {
        self.trouble().reason.clone()
    }
}

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {}
            Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) => {
                self.report_summary(reason.to_string())
            }
            _ => self.report(reason.to_string()),
        }
    }

    /// librdkafka's own log lines repeat what [`Self::error`] reports (and
    /// more, per reconnect): only its severe ones reach eddy's log.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical => {
                tracing::error!(client = %self.label, "librdkafka {fac}: {log_message}")
            }
            _ => tracing::debug!(client = %self.label, "librdkafka {fac}: {log_message}"),
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            self.reachable();
        }
        let Some((progress, view)) = &self.progress else {
            return;
        };
        for topic in statistics.topics.values() {
            for (&partition, stats) in &topic.partitions {
                // librdkafka's internal "unassigned" partition, and
                // partitions whose offsets it has not learnt yet (< 0).
                if partition < 0 || stats.hi_offset < 0 {
                    continue;
                }
                // A read_committed reader cannot read past the last
                // stable offset.
                let high = if stats.ls_offset >= 0 {
                    stats.ls_offset.min(stats.hi_offset)
                } else {
                    stats.hi_offset
                };
                progress.update(view, partition, |p| {
                    p.high_offset = Some(high);
                    p.low_offset = (stats.lo_offset >= 0).then_some(stats.lo_offset);
                });
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// Only for the CREATE SOURCE check's client, which sends nothing.
impl rdkafka::producer::ProducerContext for ReaderContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

fn kafka_error(e: KafkaError) -> EddyError {
    EddyError::InvalidParameter(format!("Kafka: {e}"))
}

/// Per-partition event time, merged into the source's watermark.
///
/// Indexed by partition number (a topic's partitions are `0..count`): the
/// reader notes every message here, and a hash lookup per message was 2 %
/// of a join query's CPU.
#[derive(Default)]
struct PartitionClock {
    /// By partition: `None` for a partition not assigned or seen yet.
    partitions: Vec<Option<PartitionTime>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PartitionTime {
    /// The newest event time seen.
    newest: Option<i64>,
    /// At its end (no message to deliver now).
    at_end: bool,
}

impl PartitionClock {
    /// A partition's entry, made when first met. librdkafka never reports
    /// a message or an end for a negative (unassigned) partition.
    fn entry(&mut self, partition: i32) -> Option<&mut PartitionTime> {
        let index = usize::try_from(partition).ok()?;
        if index >= self.partitions.len() {
            self.partitions.resize(index + 1, None);
        }
        Some(self.partitions[index].get_or_insert_with(PartitionTime::default))
    }

    /// A partition now being read: until it delivers or reaches its end, it
    /// holds the watermark back.
    fn assigned(&mut self, partition: i32) {
        self.entry(partition);
    }

    fn saw(&mut self, partition: i32, time: Option<i64>) {
        if let Some(entry) = self.entry(partition) {
            entry.at_end = false;
            if let Some(time) = time {
                entry.newest = Some(entry.newest.map_or(time, |t| t.max(time)));
            }
        }
    }

    /// The newest event time seen on `partition`.
    fn time(&self, partition: i32) -> Option<i64> {
        let index = usize::try_from(partition).ok()?;
        self.partitions.get(index).copied().flatten()?.newest
    }

    fn at_end(&mut self, partition: i32) {
        if let Some(entry) = self.entry(partition) {
            entry.at_end = true;
        }
    }

    /// The time the watermark may follow: the minimum over the partitions
    /// with messages to deliver (each must have a time), or, when all are
    /// at their end, over those that have a time.
    fn merged(&self) -> Option<i64> {
        let known = || self.partitions.iter().flatten();
        if known().all(|p| p.at_end) {
            return known().filter_map(|p| p.newest).min();
        }
        known()
            .filter(|p| !p.at_end)
            .map(|p| p.newest)
            .collect::<Option<Vec<i64>>>()?
            .into_iter()
            .min()
    }
}

/// Runs one reader of a Kafka source until its stop flag is set; on an
/// error it cannot skip, the views it feeds stop with it.
pub fn spawn_reader(config: Arc<KafkaSourceConfig>, spec: super::ReaderSpec) {
    let super::ReaderSpec {
        schema,
        proctime,
        watermark,
        relation,
        view,
        runtime,
        stop,
        resume,
        columns_read,
    } = spec;
    let resume = match resume {
        Some(ReaderPosition::Kafka {
            next_offsets,
            event_times,
        }) => Some((next_offsets, event_times)),
        _ => None,
    };
    tokio::spawn(async move {
        let progress = config.progress.clone();
        let reader = Reader::new(config, schema, proctime, watermark, relation, view.clone())
            .map(|r| r.building(columns_read.as_deref()));
        let mut reader = match reader.map(|r| r.resuming(resume)) {
            Ok(reader) => reader,
            Err(e) => {
                progress.start_backfill(&view, BTreeMap::new(), Some(e.to_string()));
                let _ = runtime.fail_readers(relation, e.to_string()).await;
                return;
            }
        };
        match reader.run(&runtime, &stop).await {
            // Stopped: its view is gone.
            Ok(()) => reader.config.progress.forget(&reader.view),
            Err(e) => {
                tracing::error!(relation, error = %e, "Kafka source reader stopped");
                reader
                    .config
                    .progress
                    .end_backfill(&reader.view, &e.to_string());
                let _ = runtime.fail_readers(relation, e.to_string()).await;
            }
        }
    });
}

/// A batch of received messages, read by index: the messages librdkafka
/// delivered (decoded in place, without a copy) or copies of some of them
/// ([`Messages`], when resuming splits a batch).
trait ReceivedBatch {
    fn len(&self) -> usize;
    fn partition(&self, index: usize) -> i32;
    fn offset(&self, index: usize) -> i64;
    fn timestamp_ms(&self, index: usize) -> Option<i64>;
    fn key(&self, index: usize) -> Option<&[u8]>;
    fn payload(&self, index: usize) -> Option<&[u8]>;
}

impl ReceivedBatch for [Delivered<'_>] {
    fn len(&self) -> usize {
        <[Delivered<'_>]>::len(self)
    }
    fn partition(&self, index: usize) -> i32 {
        self[index].partition()
    }
    fn offset(&self, index: usize) -> i64 {
        self[index].offset()
    }
    fn timestamp_ms(&self, index: usize) -> Option<i64> {
        self[index].timestamp_ms()
    }
    fn key(&self, index: usize) -> Option<&[u8]> {
        self[index].key()
    }
    fn payload(&self, index: usize) -> Option<&[u8]> {
        self[index].payload()
    }
}

impl ReceivedBatch for Messages {
    fn len(&self) -> usize {
        self.list.len()
    }
    fn partition(&self, index: usize) -> i32 {
        self.list[index].partition
    }
    fn offset(&self, index: usize) -> i64 {
        self.list[index].offset
    }
    fn timestamp_ms(&self, index: usize) -> Option<i64> {
        self.list[index].timestamp_ms
    }
    fn key(&self, index: usize) -> Option<&[u8]> {
        self.list[index].key.clone().map(|range| &self.bytes[range])
    }
    fn payload(&self, index: usize) -> Option<&[u8]> {
        self.list[index]
            .payload
            .clone()
            .map(|range| &self.bytes[range])
    }
}

/// One message's parts that a change needs; its key and payload are
/// ranges of its batch's buffer ([`Messages`]).
struct Received {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<std::ops::Range<usize>>,
    payload: Option<std::ops::Range<usize>>,
}

/// Copies of received messages, their keys and payloads in one buffer (a
/// copy of its own per message cost an allocation and a free per message).
#[derive(Default)]
struct Messages {
    bytes: Vec<u8>,
    list: Vec<Received>,
}

impl Messages {
    /// Copies message `index` of `batch` (not the headers, which no
    /// change reads).
    fn push_from<B: ReceivedBatch + ?Sized>(&mut self, batch: &B, index: usize) {
        let mut copy = |part: Option<&[u8]>| {
            part.map(|part| {
                let start = self.bytes.len();
                self.bytes.extend_from_slice(part);
                start..self.bytes.len()
            })
        };
        let (key, payload) = (copy(batch.key(index)), copy(batch.payload(index)));
        self.list.push(Received {
            partition: batch.partition(index),
            offset: batch.offset(index),
            timestamp_ms: batch.timestamp_ms(index),
            key,
            payload,
        });
    }
}

/// A bad message of a batch: `(index in the batch, reason)`.
type BadMessage = (usize, String);

/// The values whose `keep` is true.
fn kept<T>(values: Vec<T>, keep: &[bool]) -> Vec<T> {
    values
        .into_iter()
        .zip(keep)
        .filter_map(|(v, k)| k.then_some(v))
        .collect()
}

/// Part of a batch's change: the rows of its messages before a cut, the
/// offsets after them (per partition), and the watermark to pass on after
/// them (`None` for the batch's last part, whose watermark is the one
/// after the whole batch).
struct Segment {
    change: ChangeBatch,
    position: BTreeMap<i32, i64>,
    watermark: Option<i64>,
}

struct Reader {
    config: Arc<KafkaSourceConfig>,
    /// Shared with each batch being read: the batch's messages borrow it
    /// while they are decoded in place.
    consumer: Arc<StreamConsumer<ReaderContext>>,
    /// The consumer's statistics, errors and logs, served between batches
    /// (see `native`).
    events: Option<ClientEvents<ReaderContext>>,
    schema: SchemaRef,
    proctime: Option<ProcessingTime>,
    watermark: Option<TableWatermark>,
    relation: RelationId,
    view: String,
    clock: PartitionClock,
    assigned: usize,
    /// FORMAT UPSERT: the current row of each message key.
    upserted: crate::state::KeyMap<Vec<u8>, Arc<[u8]>>,
    codec: RowCodec,
    /// Resuming from a checkpoint: the next offset to deliver per partition.
    resume: Option<BTreeMap<i32, i64>>,
    /// The payload columns to build (`None`: all): those the view reads,
    /// and the watermark's.
    build: Option<Vec<bool>>,
    /// JSON: the field names of the first messages, until the source's
    /// declared columns are known to match some (see `field_check`).
    field_check: Option<field_check::FieldCheck>,
}

impl Reader {
    fn new(
        config: Arc<KafkaSourceConfig>,
        schema: SchemaRef,
        proctime: Option<ProcessingTime>,
        watermark: Option<TableWatermark>,
        relation: RelationId,
        view: String,
    ) -> Result<Self> {
        let consumer = Arc::new(config.consumer(relation, Some(&view))?);
        let codec = RowCodec::try_new(config.schema())?;
        let events = ClientEvents::split_off(consumer.clone());
        Ok(Self {
            consumer,
            events,
            schema,
            proctime,
            watermark,
            relation,
            view,
            clock: PartitionClock::default(),
            assigned: 0,
            upserted: Default::default(),
            codec,
            resume: None,
            build: None,
            field_check: match config.format {
                MessageFormat::Debezium => None,
                _ if config.errors.fields_checked() => None,
                _ => config
                    .decoder
                    .json_columns()
                    .map(field_check::FieldCheck::new),
            },
            config,
        })
    }

    /// Builds only the payload columns among `columns_read` (columns of the
    /// reader's schema, which has a PROCTIME() column the payload lacks)
    /// and the watermark's.
    fn building(mut self, columns_read: Option<&[usize]>) -> Self {
        let Some(columns_read) = columns_read else {
            return self;
        };
        let payload_columns = self.config.schema().fields().len() - self.config.metadata.len();
        let mut build = vec![false; payload_columns];
        let proctime = self.proctime.as_ref().map(|p| p.column);
        for &column in columns_read {
            let column = match proctime {
                Some(p) if column == p => continue,
                Some(p) if column > p => column - 1,
                _ => column,
            };
            if let Some(built) = build.get_mut(column) {
                *built = true;
            }
        }
        if let Some(built) = self.event_time_column().and_then(|c| build.get_mut(c)) {
            *built = true;
        }
        self.build = (!build.iter().all(|b| *b)).then_some(build);
        self
    }

    /// The event times (µs) of decoded `rows`, when the reader has a
    /// watermark.
    fn event_times(&self, rows: &RecordBatch) -> Result<Option<TimestampMicrosecondArray>> {
        let Some(column) = self.event_time_column() else {
            return Ok(None);
        };
        let times = cast(
            rows.column(column),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        times
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .cloned()
            .map(Some)
            .ok_or_else(|| crate::internal!("watermark column is not a timestamp"))
    }

    /// Where the watermark's column is among the decoded columns (the
    /// reader's schema has a PROCTIME() column they lack, stamped later).
    fn event_time_column(&self) -> Option<usize> {
        let column = self.watermark.as_ref()?.column;
        match &self.proctime {
            Some(p) if p.column < column => Some(column - 1),
            _ => Some(column),
        }
    }

    /// Resumes at checkpointed offsets. An UPSERT source re-reads its
    /// partitions from the beginning up to them without emitting, to know
    /// each key's current row again.
    fn resuming(mut self, resume: Option<(BTreeMap<i32, i64>, BTreeMap<i32, i64>)>) -> Self {
        // The partitions' event times come back too, so that partitions at
        // their end let the watermark move as it did before the restart.
        if let Some((offsets, times)) = resume {
            tracing::info!(topic = %self.config.topic, view = %self.view, ?offsets, "Kafka source resuming at checkpointed offsets");
            for (partition, time) in times {
                self.clock.saw(partition, Some(time));
            }
            for (&partition, &next) in &offsets {
                self.config
                    .progress
                    .update(&self.view, partition, |p| p.next_offset = Some(next));
            }
            self.resume = Some(offsets);
        }
        self
    }

    /// Messages before the resume offset of their partition: already in
    /// the checkpointed state.
    fn already_delivered(&self, partition: i32, offset: i64) -> bool {
        self.resume
            .as_ref()
            .is_some_and(|offsets| offsets.get(&partition).is_some_and(|&next| offset < next))
    }

    /// Assigns the topic's partitions not assigned yet (all, the first
    /// time), at the startup position; later ones from their beginning.
    fn assign_new_partitions(&mut self) -> Result<()> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.config.topic), METADATA_TIMEOUT)
            .map_err(kafka_error)?;
        let Some(topic) = metadata.topics().first() else {
            return Ok(());
        };
        let count = topic.partitions().len();
        if count <= self.assigned {
            return Ok(());
        }
        let first_time = self.assigned == 0;
        let mut list = TopicPartitionList::new();
        let rebuild_keys = self.config.format == MessageFormat::Upsert;
        let resume = self.resume.clone().unwrap_or_default();
        let mut resumed = false;
        for partition in self.assigned..count {
            let offset = match (first_time, self.config.startup) {
                _ if resume.contains_key(&(partition as i32)) => {
                    resumed = true;
                    if rebuild_keys {
                        Offset::Beginning
                    } else {
                        Offset::Offset(resume[&(partition as i32)])
                    }
                }
                (false, _) | (true, Startup::Earliest) => Offset::Beginning,
                (true, Startup::Latest) => Offset::End,
                (true, Startup::Timestamp(millis)) => Offset::Offset(millis),
            };
            list.add_partition_offset(&self.config.topic, partition as i32, offset)
                .map_err(kafka_error)?;
            self.clock.assigned(partition as i32);
        }
        if let (true, Startup::Timestamp(_), false) = (first_time, self.config.startup, resumed) {
            list = self
                .consumer
                .offsets_for_times(list, METADATA_TIMEOUT)
                .map_err(kafka_error)?;
        }
        if first_time {
            self.start_backfill(&list);
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(kafka_error)?;
        tracing::info!(topic = %self.config.topic, partitions = count, "Kafka source reading");
        self.assigned = count;
        Ok(())
    }

    /// Notes what the backfill reads: from the assigned offsets to each
    /// partition's end now.
    fn start_backfill(&self, assigned: &TopicPartitionList) {
        let mut partitions = BTreeMap::new();
        for element in assigned.elements() {
            let partition = element.partition();
            let (low, high) = match self.consumer.fetch_watermarks(
                &self.config.topic,
                partition,
                METADATA_TIMEOUT,
            ) {
                Ok(offsets) => offsets,
                Err(e) => {
                    let error = format!("cannot learn where partition {partition} ends: {e}");
                    self.config
                        .progress
                        .start_backfill(&self.view, BTreeMap::new(), Some(error));
                    return;
                }
            };
            let start = match element.offset() {
                Offset::Offset(n) => n.clamp(low, high),
                Offset::End => high,
                _ => low,
            };
            partitions.insert(partition, (start, high));
        }
        self.config
            .progress
            .start_backfill(&self.view, partitions, None);
    }

    async fn run(&mut self, runtime: &RuntimeHandle, stop: &AtomicBool) -> Result<()> {
        let mut last_check: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Some(events) = &self.events {
                events.serve();
            }
            if last_check.is_none_or(|t| t.elapsed() >= PARTITION_CHECK) {
                last_check = Some(Instant::now());
                match self.assign_new_partitions() {
                    // The broker may be away or the topic gone: the job and
                    // the view show it (logged once, by the context) and
                    // the reader starts once the partitions are known.
                    Err(e) => self
                        .consumer
                        .context()
                        .report_summary(format!("cannot read the topic's partitions: {e}")),
                    Ok(()) => self.consumer.context().reachable(),
                }
            }
            // The batch's messages stay in librdkafka's buffers and are
            // decoded there (copying them out cost ~3 % of a view over
            // large messages).
            let consumer = self.consumer.clone();
            let mut queue = ConsumerQueue::of(&consumer);
            let mut batch: Vec<Delivered<'_>> = Vec::with_capacity(MAX_BATCH);
            // Reused by each drain of this batch.
            let mut drained = Vec::new();
            // When the batch's first message arrived (for freshness).
            let mut arrived = None;
            let deadline = tokio::time::Instant::now() + BATCH_WAIT;
            // One stream per batch: `recv` makes one per message, and each
            // takes a lock twice to register and drop its waker.
            let mut messages = consumer.stream();
            while batch.len() < MAX_BATCH {
                // What is queued already is taken many at a time and
                // without a timer (a timer per message was a tenth of the
                // reader's time); then wait for more until the deadline.
                let room = MAX_BATCH - batch.len();
                let all_taken = match queue.as_mut().map(|q| q.drain(&mut drained, room)) {
                    Some(1..) => {
                        // Every message is kept, also after an error.
                        let mut all_taken = true;
                        for next in drained.drain(..) {
                            all_taken &= self.take(next, &mut batch, &mut arrived);
                        }
                        all_taken
                    }
                    _ => match tokio::time::timeout_at(deadline, messages.next()).await {
                        Ok(Some(next)) => {
                            self.take(next.map(Delivered::Polled), &mut batch, &mut arrived)
                        }
                        // A consumer's stream never ends.
                        Ok(None) | Err(_) => break, // waited long enough
                    },
                };
                if !all_taken {
                    // A transport error: librdkafka retries and reconnects.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
            drop(messages);
            let mut position = BTreeMap::new();
            for message in &batch {
                position.insert(message.partition(), message.offset() + 1);
            }
            let mut segments = if self.resume.is_some() {
                let (mut replayed, mut live) = (Messages::default(), Messages::default());
                for (index, message) in batch.iter().enumerate() {
                    match self.already_delivered(message.partition(), message.offset()) {
                        true => replayed.push_from(&batch[..], index),
                        false => live.push_from(&batch[..], index),
                    }
                }
                if !replayed.list.is_empty() {
                    // Rebuilds the UPSERT key map; the changes are in the
                    // checkpointed state already.
                    let _ = self.changes(&replayed, false)?;
                }
                self.accept(&live)?
            } else {
                self.accept(&batch[..])?
            };
            drop(batch);
            // Segments cut where the watermark moves (see advance_clock)
            // go first, each with its watermark; the last goes below.
            let change = segments
                .pop()
                .ok_or_else(|| crate::internal!("a batch's change without its last part"))?
                .change;
            for Segment {
                change,
                position,
                watermark,
            } in segments
            {
                if let Some(watermark) = watermark {
                    self.config.progress.set_watermark(&self.view, watermark);
                }
                let position = self.position(position);
                let arrived = arrived.unwrap_or_else(Instant::now);
                runtime
                    .send_source_changes(self.relation, change, watermark, position, arrived)
                    .await?;
            }
            for (&partition, &next) in &position {
                let time = self.clock.time(partition);
                self.config.progress.update(&self.view, partition, |p| {
                    p.next_offset = Some(next);
                    p.event_time = time.or(p.event_time);
                });
            }
            let moved = match (&self.watermark, self.clock.merged()) {
                (Some(watermark), Some(time)) => watermark.advance_to(time),
                _ => None,
            };
            if let Some(watermark) = moved {
                self.config.progress.set_watermark(&self.view, watermark);
            }
            if change.is_empty() && moved.is_none() && position.is_empty() {
                continue;
            }
            let position = self.position(position);
            runtime
                .send_source_changes(
                    self.relation,
                    change,
                    moved,
                    position,
                    arrived.unwrap_or_else(Instant::now),
                )
                .await?;
            // After queueing: what the backfill has read is in the runtime's
            // queue, ahead of anything asked of the runtime from now on.
            self.config.progress.backfill_read(&self.view);
        }
    }

    /// The checkpointed position after the messages whose next offsets
    /// (per partition) are `next_offsets`.
    fn position(&self, next_offsets: BTreeMap<i32, i64>) -> ReaderPosition {
        let event_times = next_offsets
            .keys()
            .filter_map(|p| Some((*p, self.clock.time(*p)?)))
            .collect();
        ReaderPosition::Kafka {
            next_offsets,
            event_times,
        }
    }

    /// Adds a received message to `batch`, or notes what the consumer
    /// reported instead; false: a transport error (logged).
    fn take<'c>(
        &mut self,
        next: std::result::Result<Delivered<'c>, KafkaError>,
        batch: &mut Vec<Delivered<'c>>,
        arrived: &mut Option<Instant>,
    ) -> bool {
        match next {
            Ok(message) => {
                arrived.get_or_insert_with(Instant::now);
                self.clock.saw(message.partition(), None);
                batch.push(message);
                true
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                self.clock.at_end(partition);
                true
            }
            Err(e) => {
                // Logged once per change of state, not per message.
                self.consumer.context().report(e.to_string());
                false
            }
        }
    }

    /// The change a batch of messages makes, in segments; its bad messages
    /// are recorded (or, under `on_error = 'fail'`, the error).
    fn accept<B: ReceivedBatch + ?Sized>(&mut self, batch: &B) -> Result<Vec<Segment>> {
        let bytes = (0..batch.len())
            .map(|i| batch.payload(i).map_or(0, |p| p.len()) as u64)
            .sum();
        self.config.counters.read(batch.len() as u64, bytes);
        self.check_fields(batch);
        let (segments, mut bad) = self.changes(batch, true)?;
        // In message order: within a partition, offset order (which the
        // source's count relies on, see SourceErrors).
        bad.sort_by_key(|(index, _)| *index);
        for (index, reason) in bad {
            let error = SourceError {
                view: self.view.clone(),
                partition: batch.partition(index),
                offset: batch.offset(index),
                reason,
            };
            if self.config.on_error == OnError::Fail {
                return Err(EddyError::InvalidValue(format!(
                    "bad message in topic {} partition {} offset {}: {} (on_error = 'fail')",
                    self.config.topic, error.partition, error.offset, error.reason
                )));
            }
            self.config
                .progress
                .update(&self.view, error.partition, |p| p.bad_messages += 1);
            self.config.errors.record(error);
        }
        Ok(segments)
    }

    /// Samples the batch's field names until the declared columns are
    /// known to match; reports those that matched nothing once per source.
    fn check_fields<B: ReceivedBatch + ?Sized>(&mut self, batch: &B) {
        let Some(check) = &mut self.field_check else {
            return;
        };
        for index in 0..batch.len() {
            if let Some(payload) = batch.payload(index) {
                check.observe(payload);
            }
        }
        if !check.is_complete() {
            return;
        }
        if let (Some(reason), Some(last)) = (check.report(), batch.len().checked_sub(1)) {
            let error = SourceError {
                view: self.view.clone(),
                partition: batch.partition(last),
                offset: batch.offset(last),
                reason: reason.clone(),
            };
            if self.config.errors.note_fields(error) {
                tracing::warn!(topic = %self.config.topic, view = %self.view, "{reason}");
            }
        }
        self.field_check = None;
    }

    /// The change a batch of messages makes, in segments (see
    /// [`Self::advance_clock`]; one unless `cut`), and its bad messages
    /// `(index, reason)`.
    fn changes<B: ReceivedBatch + ?Sized>(
        &mut self,
        batch: &B,
        cut: bool,
    ) -> Result<(Vec<Segment>, Vec<BadMessage>)> {
        // The payloads to decode: (message index, payload, weight).
        // Borrowed from the messages, except Debezium's before/after parts.
        let mut pieces: Vec<(usize, std::borrow::Cow<'_, [u8]>, i64)> =
            Vec::with_capacity(batch.len());
        let mut bad = Vec::new();
        // FORMAT UPSERT deletions: message indices.
        let mut deletions: Vec<usize> = Vec::new();
        for index in 0..batch.len() {
            match (self.config.format, batch.payload(index)) {
                (MessageFormat::Upsert, _) if batch.key(index).is_none() => {
                    bad.push((index, "FORMAT UPSERT message without a key".to_string()))
                }
                (MessageFormat::Upsert, None) => deletions.push(index),
                (_, None) => bad.push((index, "empty message".to_string())),
                (MessageFormat::Plain | MessageFormat::Upsert, Some(payload)) => {
                    pieces.push((index, std::borrow::Cow::Borrowed(payload), 1))
                }
                (MessageFormat::Debezium, Some(payload)) => match debezium_parts(payload) {
                    Ok(parts) => pieces.extend(
                        parts
                            .into_iter()
                            .map(|(p, w)| (index, std::borrow::Cow::Owned(p), w)),
                    ),
                    Err(reason) => bad.push((index, reason)),
                },
            }
        }
        let payloads: Vec<&[u8]> = pieces.iter().map(|(_, p, _)| p.as_ref()).collect();
        let decoded = self
            .config
            .decoder
            .decode(&payloads, self.build.as_deref())?;
        bad.extend(
            decoded
                .bad
                .iter()
                .map(|(piece, reason)| (pieces[*piece].0, reason.clone())),
        );
        let message_of_row: Vec<usize> = decoded
            .payload_of_row
            .iter()
            .map(|&piece| pieces[piece].0)
            .collect();
        let rows = self.with_metadata(&decoded.rows, &message_of_row, batch)?;
        let weights: Vec<i64> = decoded
            .payload_of_row
            .iter()
            .map(|&p| pieces[p].2)
            .collect();
        // The event times are cast once, for both the checks and the clock.
        let (rows, message_of_row, weights, times) = match self.event_times(&rows)? {
            None => (rows, message_of_row, weights, None),
            Some(times) => {
                match self.bad_event_times(&times, &message_of_row, &mut bad) {
                    None => (rows, message_of_row, weights, Some(times)),
                    // Every row of a bad message goes (a Debezium update is two).
                    Some(keep) => {
                        let mask = datafusion::arrow::array::BooleanArray::from(keep.clone());
                        let times: TimestampMicrosecondArray =
                            kept(times.iter().collect(), &keep).into_iter().collect();
                        (
                            datafusion::arrow::compute::filter_record_batch(&rows, &mask)?,
                            kept(message_of_row, &keep),
                            kept(weights, &keep),
                            Some(times),
                        )
                    }
                }
            }
        };
        let cuts = match &times {
            Some(times) => self.advance_clock(times, &message_of_row, &weights, batch, cut),
            None => vec![],
        };
        // Rows (and UPSERT deletions) are in message order: each segment
        // is the rows of the messages before its cut.
        let mut segments = Vec::with_capacity(cuts.len() + 1);
        let mut first_row = 0;
        let mut first_message = 0;
        let ends = cuts
            .iter()
            .map(|&(message, watermark)| (message, Some(watermark)))
            .chain([(batch.len(), None)]);
        for (end_message, watermark) in ends {
            let end_row = first_row
                + message_of_row[first_row..].partition_point(|&message| message < end_message);
            let segment_rows = rows.slice(first_row, end_row - first_row);
            let segment_messages = &message_of_row[first_row..end_row];
            let change = if self.config.format == MessageFormat::Upsert {
                let segment_deletions: Vec<usize> = deletions
                    .iter()
                    .copied()
                    .filter(|m| (first_message..end_message).contains(m))
                    .collect();
                self.upsert_change(&segment_rows, segment_messages, &segment_deletions, batch)?
            } else {
                ChangeBatch::new(segment_rows, weights[first_row..end_row].to_vec().into())?
            };
            let change = match &self.proctime {
                Some(clock) => {
                    let stamped = clock.stamp(&change.rows, &self.schema, clock.now())?;
                    ChangeBatch::new(stamped, change.weights.clone())?
                }
                None => change,
            };
            let mut position = BTreeMap::new();
            for message in first_message..end_message {
                position.insert(batch.partition(message), batch.offset(message) + 1);
            }
            segments.push(Segment {
                change,
                position,
                watermark,
            });
            (first_row, first_message) = (end_row, end_message);
        }
        Ok((segments, bad))
    }

    /// Notes each inserted row's event time in its partition's clock, in
    /// message order. Where the watermark would have moved before a row
    /// that is behind it (so the row may be late), returns a cut there:
    /// `(message index, watermark)`; the messages before the cut go to the
    /// view with that watermark after them, before the rest. So whether a
    /// row is late depends on the messages read before it, not on how many
    /// arrived together: a backlog read 4,096 messages at a time and a
    /// live topic read one message at a time give the same late rows (for
    /// one partition exactly; with several, on the order the partitions'
    /// messages were read in). Rows not behind the watermark are late by
    /// neither rule, so in-order data is never cut.
    fn advance_clock<B: ReceivedBatch + ?Sized>(
        &mut self,
        times: &TimestampMicrosecondArray,
        message_of_row: &[usize],
        weights: &[i64],
        batch: &B,
        cut: bool,
    ) -> Vec<(usize, i64)> {
        let Some(watermark) = &self.watermark else {
            return vec![];
        };
        let mut cuts = Vec::new();
        for (row, &message) in message_of_row.iter().enumerate() {
            if weights[row] <= 0 || !times.is_valid(row) {
                continue;
            }
            let time = times.value(row);
            let partition = batch.partition(message);
            // Behind its own partition's newest time by more than the
            // delay (cheap: in-order rows stop here), then behind the
            // merged watermark.
            let behind = self
                .clock
                .time(partition)
                .is_some_and(|newest| time < newest - watermark.delay_micros);
            if cut && behind && message > cuts.last().map_or(0, |&(m, _)| m) {
                if let Some(newest) = self.clock.merged() {
                    let candidate = newest - watermark.delay_micros;
                    if time < candidate && watermark.current().is_none_or(|w| w < candidate) {
                        watermark.advance_to(newest);
                        cuts.push((message, candidate));
                    }
                }
            }
            self.clock.saw(partition, Some(time));
        }
        cuts
    }

    /// With a WATERMARK, a message whose event time is missing (it could
    /// never be placed in event time) or further ahead of the clock than
    /// `watermark.max_future` (it would drag the watermark along and make
    /// every later message late) is bad: it is added to `bad`, and the
    /// rows to keep are returned (`None`: all of them).
    fn bad_event_times(
        &self,
        times: &TimestampMicrosecondArray,
        message_of_row: &[usize],
        bad: &mut Vec<BadMessage>,
    ) -> Option<Vec<bool>> {
        let column = self
            .watermark
            .as_ref()
            .map_or("", |w| self.schema.field(w.column).name().as_str());
        let latest = self
            .config
            .max_future_micros
            .map(|ahead| crate::common::time::now_micros().saturating_add(ahead));
        let mut bad_messages = Vec::new();
        for (row, &message) in message_of_row.iter().enumerate() {
            let reason = if times.is_null(row) {
                format!("missing event time: \"{column}\" (the WATERMARK column) is null or absent")
            } else if latest.is_some_and(|latest| times.value(row) > latest) {
                let shown = chrono::DateTime::from_timestamp_micros(times.value(row))
                    .map_or_else(|| times.value(row).to_string(), |t| t.to_rfc3339());
                format!(
                    "event time {shown} in \"{column}\" is further ahead of the clock than \
                     watermark.max_future allows"
                )
            } else {
                continue;
            };
            if bad_messages.last() != Some(&message) {
                bad_messages.push(message);
                bad.push((message, reason));
            }
        }
        if bad_messages.is_empty() {
            return None;
        }
        let bad_messages: std::collections::HashSet<usize> = bad_messages.into_iter().collect();
        Some(
            message_of_row
                .iter()
                .map(|m| !bad_messages.contains(m))
                .collect(),
        )
    }

    /// FORMAT UPSERT: each new row replaces its message key's row, each
    /// deletion (a message without a value) removes it, in message order.
    fn upsert_change<B: ReceivedBatch + ?Sized>(
        &mut self,
        rows: &RecordBatch,
        message_of_row: &[usize],
        deletions: &[usize],
        batch: &B,
    ) -> Result<ChangeBatch> {
        let encoded = self.codec.encode(rows)?;
        // (message index, the new row or None for a deletion)
        let mut steps: Vec<(usize, Option<Arc<[u8]>>)> = message_of_row
            .iter()
            .zip(encoded)
            .map(|(&message, row)| (message, Some(row)))
            .collect();
        steps.extend(deletions.iter().map(|&message| (message, None)));
        steps.sort_by_key(|(message, _)| *message);
        let mut out: Vec<(Arc<[u8]>, i64)> = Vec::new();
        for (message, row) in steps {
            let key = batch.key(message).map(<[u8]>::to_vec).unwrap_or_default();
            if let Some(old) = self.upserted.remove(&key) {
                out.push((old, -1));
            }
            if let Some(row) = row {
                out.push((row.clone(), 1));
                self.upserted.insert(key, row);
            }
        }
        let rows = self.codec.decode(out.iter().map(|(r, _)| &r[..]))?;
        let weights: Vec<i64> = out.iter().map(|(_, w)| *w).collect();
        ChangeBatch::new(rows, weights.into())
    }

    /// The decoded columns, then the metadata columns of each row's message.
    fn with_metadata<B: ReceivedBatch + ?Sized>(
        &self,
        rows: &RecordBatch,
        message_of_row: &[usize],
        batch: &B,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        for kind in &self.config.metadata {
            let messages = message_of_row.iter().copied();
            let column: ArrayRef = match kind {
                KafkaMetadata::Partition => Arc::new(Int32Array::from_iter_values(
                    messages.map(|m| batch.partition(m)),
                )),
                KafkaMetadata::Offset => Arc::new(Int64Array::from_iter_values(
                    messages.map(|m| batch.offset(m)),
                )),
                KafkaMetadata::Timestamp => Arc::new(TimestampMicrosecondArray::from_iter(
                    messages.map(|m| batch.timestamp_ms(m).map(|ms| ms * 1000)),
                )),
                KafkaMetadata::Key => {
                    Arc::new(StringArray::from_iter(message_of_row.iter().map(|&m| {
                        batch
                            .key(m)
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                    })))
                }
            };
            columns.push(column);
        }
        let options = datafusion::arrow::array::RecordBatchOptions::new()
            .with_row_count(Some(rows.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            self.config.schema(),
            columns,
            &options,
        )?)
    }
}

/// The `before` (-1) and `after` (+1) rows of a Debezium change event, as
/// JSON payloads (`{"payload": {...}}` envelopes are unwrapped).
fn debezium_parts(payload: &[u8]) -> std::result::Result<Vec<(Vec<u8>, i64)>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let event = match value.get("payload") {
        Some(inner) if inner.is_object() => inner,
        _ => &value,
    };
    let object = event
        .as_object()
        .ok_or_else(|| "a Debezium event must be a JSON object".to_string())?;
    if !object.contains_key("before") && !object.contains_key("after") {
        return Err("a Debezium event needs \"before\" or \"after\"".to_string());
    }
    let mut parts = Vec::new();
    for (field, weight) in [("before", -1), ("after", 1)] {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => {}
            Some(row @ serde_json::Value::Object(_)) => {
                parts.push((row.to_string().into_bytes(), weight))
            }
            Some(_) => return Err(format!("Debezium \"{field}\" must be an object or null")),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_at_their_end_do_not_hold_the_watermark() {
        let mut clock = PartitionClock::default();
        clock.assigned(0);
        clock.assigned(1);
        clock.saw(0, Some(100));
        assert_eq!(clock.merged(), None, "partition 1 has not spoken yet");
        clock.saw(1, None);
        assert_eq!(clock.merged(), None, "partition 1 has messages coming");
        clock.saw(1, Some(50));
        assert_eq!(clock.merged(), Some(50));
        clock.at_end(1);
        assert_eq!(clock.merged(), Some(100));
        clock.at_end(0);
        assert_eq!(clock.merged(), Some(50), "all at the end: those with times");
        clock.at_end(2); // an empty partition
        assert_eq!(clock.merged(), Some(50));
    }

    #[test]
    fn debezium_events_become_retractions_and_insertions() {
        let update = br#"{"before": {"id": 1, "v": 1}, "after": {"id": 1, "v": 2}, "op": "u"}"#;
        let parts = debezium_parts(update).unwrap();
        assert_eq!(parts.iter().map(|p| p.1).collect::<Vec<_>>(), vec![-1, 1]);
        let wrapped =
            br#"{"schema": {}, "payload": {"before": null, "after": {"id": 2}, "op": "c"}}"#;
        assert_eq!(debezium_parts(wrapped).unwrap().len(), 1);
        assert!(debezium_parts(b"[1]").is_err());
        assert!(debezium_parts(br#"{"op": "c"}"#).is_err());
    }
}
