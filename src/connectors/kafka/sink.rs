//! Kafka sinks: a view's changes as messages on a topic.
//!
//! ```sql
//! CREATE SINK totals_out FROM totals
//! WITH (connector = 'kafka', topic = 'totals', properties.bootstrap.server = '127.0.0.1:9092')
//! FORMAT UPSERT ENCODE JSON;
//! ```
//!
//! - `FORMAT PLAIN ENCODE JSON`: one message per inserted row (the view must
//!   be append-only; an updating view is refused at CREATE time).
//! - `FORMAT UPSERT ENCODE JSON`: keyed by the view's key (its GROUP BY
//!   columns, or `primary_key = 'a,b'`); per epoch, the last row of each key,
//!   or a tombstone (null value) for a deleted key.
//! - `FORMAT DEBEZIUM ENCODE JSON`: `{"before": ..., "after": ..., "op":
//!   "c" | "u" | "d"}` per changed key (per changed row for a keyless view).
//!
//! Delivery is exactly-once for consumers that read with
//! `isolation.level = read_committed`: the sink gets one epoch per completed
//! checkpoint and writes it in one Kafka transaction (transactional id
//! `eddy-sink-<name>`), each message carrying the headers `eddy-sink` and
//! `eddy-epoch`. On start, the sink reads the newest committed messages of
//! the topic to learn the last epoch it committed, and skips epochs up to
//! it (a restart replays the epochs the checkpoint had not seen
//! acknowledged). A failed transaction is aborted and the epoch retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};

/// A sink's producer, with eddy's client context (errors logged once per
/// change of state).
type FutureProducer = rdkafka::producer::FutureProducer<super::ReaderContext>;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::common::ChangeBatch;
use crate::connectors::epoch::{appended_rows, json_rows, key_fates, take_rows, KeyFate};
use crate::connectors::format::{FormatSpec, MessageEncoding, MessageFormat};
use crate::connectors::policy::ConnectorPolicy;
use crate::connectors::OnError;
use crate::error::{EddyError, Result};
use crate::runtime::sink::{RejectedRow, SinkEpoch, SinkMode, SinkStatus};

const BACKOFF_START_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// What the `eddy-sink` and `eddy-epoch` headers add to a message, at most
/// (names, a sink name up to 63 bytes, an epoch, framing).
const HEADER_BYTES: usize = 128;

/// A checked Kafka sink configuration.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub sink_name: String,
    pub topic: String,
    client: BTreeMap<String, String>,
    format: MessageFormat,
    /// Key columns of the view (UPSERT; DEBEZIUM when the view has a key).
    key: Vec<usize>,
    schema: SchemaRef,
    /// What to do with a message larger than the producer takes.
    on_error: OnError,
    /// librdkafka's `message.max.bytes`: a larger message is refused.
    max_message_bytes: usize,
}

impl KafkaSinkConfig {
    /// The brokers it connects to first (`host`, `port`).
    pub fn brokers(&self) -> Vec<(String, u16)> {
        super::client::bootstrap_hosts(&self.client)
    }

    /// Reads the options for a sink on a view of `schema` whose key is
    /// `view_key` and which only inserts when `append_only`.
    pub fn from_options(
        sink_name: &str,
        options: &BTreeMap<String, String>,
        format: Option<&FormatSpec>,
        schema: SchemaRef,
        view_key: Option<Vec<usize>>,
        append_only: bool,
        policy: &ConnectorPolicy,
    ) -> Result<Self> {
        let client = super::client::client_settings(
            options,
            &["topic", "primary_key", "on_error"],
            "a Kafka sink; known: topic, properties.bootstrap.server, \
             properties.<librdkafka setting>, primary_key, on_error",
            policy,
        )?;
        let max_message_bytes = match client.get("message.max.bytes") {
            None => DEFAULT_MAX_MESSAGE_BYTES,
            Some(value) => value.parse().map_err(|_| {
                EddyError::InvalidParameter(format!(
                    "properties.message.max.bytes = '{value}' is not a number of bytes"
                ))
            })?,
        };
        let declared_key = options
            .get("primary_key")
            .map(|columns| {
                columns
                    .split(',')
                    .map(|c| {
                        let c = c.trim();
                        schema.index_of(c).map_err(|_| {
                            EddyError::UndefinedColumn(format!(
                                "primary_key column \"{c}\" is not a column of the sink's input"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        if !client.contains_key("bootstrap.servers") {
            return Err(EddyError::InvalidParameter(
                "a Kafka sink needs properties.bootstrap.server = 'host:port'".into(),
            ));
        }
        let topic = options.get("topic").cloned().ok_or_else(|| {
            EddyError::InvalidParameter("a Kafka sink needs topic = '...'".into())
        })?;
        let format = format.ok_or_else(|| {
            EddyError::InvalidParameter(
                "a Kafka sink needs FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON".into(),
            )
        })?;
        if format.encoding != MessageEncoding::Json || !format.encode_options.is_empty() {
            return Err(crate::not_supported!(
                "a Kafka sink writes ENCODE JSON (without options) only"
            ));
        }
        let key = declared_key.or(view_key).unwrap_or_default();
        match format.format {
            MessageFormat::Plain if !append_only => {
                return Err(EddyError::NotSupported(format!(
                    "sink {sink_name}: FORMAT PLAIN needs an append-only input, but this one \
                     updates and deletes rows; use FORMAT UPSERT or FORMAT DEBEZIUM"
                )))
            }
            MessageFormat::Upsert if key.is_empty() => {
                return Err(EddyError::InvalidParameter(format!(
                    "sink {sink_name}: FORMAT UPSERT needs a key: the view has none, so give \
                     primary_key = 'column, ...'"
                )))
            }
            _ => {}
        }
        Ok(Self {
            sink_name: sink_name.to_string(),
            topic,
            client,
            format: format.format,
            key,
            schema,
            on_error: OnError::from_options(options)?,
            max_message_bytes,
        })
    }

    pub fn mode(&self) -> SinkMode {
        match self.format {
            MessageFormat::Plain => SinkMode::AppendOnly,
            MessageFormat::Upsert | MessageFormat::Debezium => SinkMode::Upsert,
        }
    }

    pub fn target(&self) -> String {
        format!("kafka topic {}", self.topic)
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (name, value) in &self.client {
            config.set(name, value);
        }
        config
    }

    fn context(&self) -> super::ReaderContext {
        super::ReaderContext::labelled(format!("sink {}", self.sink_name))
    }

    fn producer(&self) -> Result<FutureProducer> {
        let mut config = self.client_config();
        config.set("message.timeout.ms", "30000");
        config
            .create_with_context(self.context())
            .map_err(|e| EddyError::InvalidParameter(format!("Kafka sink {}: {e}", self.sink_name)))
    }

    /// A producer whose writes are transactions of this sink.
    fn transactional_producer(&self) -> Result<FutureProducer> {
        let mut config = self.client_config();
        config
            .set("message.timeout.ms", "30000")
            .set("transactional.id", format!("eddy-sink-{}", self.sink_name))
            .set("transaction.timeout.ms", "60000");
        config
            .create_with_context(self.context())
            .map_err(|e| EddyError::InvalidParameter(format!("Kafka sink {}: {e}", self.sink_name)))
    }

    /// The last epoch this sink committed to its topic: the newest
    /// `eddy-epoch` header among this sink's committed messages near the
    /// end of each partition (0 if none).
    fn last_committed_epoch(&self) -> Result<u64> {
        let mut config = self.client_config();
        config
            .set("group.id", format!("eddy-sink-{}-recovery", self.sink_name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer<super::ReaderContext> =
            config.create_with_context(self.context()).map_err(|e| {
                EddyError::InvalidParameter(format!("Kafka sink {}: {e}", self.sink_name))
            })?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .map_err(|e| EddyError::InvalidParameter(format!("Kafka: {e}")))?;
        // partition -> (first offset, end offset): the partitions with data.
        let mut ranges = BTreeMap::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition.id(), METADATA_TIMEOUT)
                .map_err(|e| EddyError::InvalidParameter(format!("Kafka: {e}")))?;
            if high > low {
                ranges.insert(partition.id(), (low, high));
            }
        }
        // Each partition's tail is read back, further each round, until it
        // shows a committed message of this sink or is read whole: the tail
        // can be aborted transactions (an eddy killed mid-commit) longer
        // than one window, and stopping there would take an older epoch
        // for the last committed one and write epochs twice.
        let mut newest = 0u64;
        let mut window = RECOVERY_SCAN_MESSAGES;
        while !ranges.is_empty() {
            let found = self.scan_from(&consumer, &ranges, window)?;
            newest = newest.max(found.values().copied().max().unwrap_or(0));
            ranges.retain(|partition, (low, high)| {
                !found.contains_key(partition) && *high - window > *low
            });
            window = window.saturating_mul(4);
        }
        Ok(newest)
    }

    /// Reads each partition of `ranges` from `window` messages before its
    /// end to its (committed) end; returns the newest epoch of this sink
    /// seen in each partition that has one.
    fn scan_from(
        &self,
        consumer: &BaseConsumer<super::ReaderContext>,
        ranges: &BTreeMap<i32, (i64, i64)>,
        window: i64,
    ) -> Result<BTreeMap<i32, u64>> {
        let mut list = TopicPartitionList::new();
        for (&partition, &(low, high)) in ranges {
            let start = high.saturating_sub(window).max(low);
            list.add_partition_offset(&self.topic, partition, Offset::Offset(start))
                .map_err(|e| EddyError::InvalidParameter(format!("Kafka: {e}")))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| EddyError::InvalidParameter(format!("Kafka: {e}")))?;
        let mut found = BTreeMap::new();
        let mut open = ranges.len();
        // Read as long as messages come; a broker silent this long fails
        // the scan (a partial one could miss the newest epoch: the sink
        // retries instead of guessing).
        let mut deadline = std::time::Instant::now() + METADATA_TIMEOUT;
        while open > 0 {
            if std::time::Instant::now() >= deadline {
                return Err(EddyError::InvalidParameter(format!(
                    "Kafka sink {}: reading back topic {} to find the last committed epoch \
                     got nothing for {} s",
                    self.sink_name,
                    self.topic,
                    METADATA_TIMEOUT.as_secs()
                )));
            }
            let polled = consumer.poll(Duration::from_millis(200));
            if polled.is_some() {
                deadline = std::time::Instant::now() + METADATA_TIMEOUT;
            }
            match polled {
                Some(Ok(message)) => {
                    if let Some(epoch) = epoch_header(&message, &self.sink_name) {
                        let newest = found.entry(message.partition()).or_insert(0);
                        *newest = epoch.max(*newest);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
                Some(Err(e)) => tracing::warn!(sink = %self.sink_name, error = %e, "Kafka"),
                None => {}
            }
        }
        Ok(found)
    }

    /// The messages `(key, value)` of one epoch; a `None` value is a
    /// tombstone.
    fn messages(&self, changes: &[ChangeBatch]) -> Result<Vec<KeyValue>> {
        match self.format {
            MessageFormat::Plain => {
                let rows = take_rows(changes, &appended_rows(changes)?)?;
                Ok(json_rows(rows.as_ref())?
                    .into_iter()
                    .map(|value| (None, Some(value)))
                    .collect())
            }
            MessageFormat::Upsert => {
                let (fates, keys) = self.changed_keys(changes)?;
                let afters: Vec<_> = fates.iter().filter_map(|f| f.after).collect();
                let mut values = json_rows(take_rows(changes, &afters)?.as_ref())?.into_iter();
                Ok(fates
                    .iter()
                    .zip(keys)
                    .map(|(fate, key)| (Some(key), fate.after.and_then(|_| values.next())))
                    .collect())
            }
            MessageFormat::Debezium if self.key.is_empty() => {
                // Keyless: every retraction is a delete, every insertion a create.
                let mut messages = Vec::new();
                for change in changes {
                    let rows = json_rows(Some(&change.rows))?;
                    for (row, weight) in rows.into_iter().zip(change.weights.values()) {
                        let event = if *weight > 0 {
                            debezium_event(None, Some(&row))
                        } else {
                            debezium_event(Some(&row), None)
                        };
                        for _ in 0..weight.unsigned_abs() {
                            messages.push((None, Some(event.clone())));
                        }
                    }
                }
                Ok(messages)
            }
            MessageFormat::Debezium => {
                let (fates, keys) = self.changed_keys(changes)?;
                let befores: Vec<_> = fates.iter().filter_map(|f| f.before).collect();
                let afters: Vec<_> = fates.iter().filter_map(|f| f.after).collect();
                let mut before_rows =
                    json_rows(take_rows(changes, &befores)?.as_ref())?.into_iter();
                let mut after_rows = json_rows(take_rows(changes, &afters)?.as_ref())?.into_iter();
                Ok(fates
                    .iter()
                    .zip(keys)
                    .map(|(fate, key)| {
                        let before = fate.before.and_then(|_| before_rows.next());
                        let after = fate.after.and_then(|_| after_rows.next());
                        (
                            Some(key),
                            Some(debezium_event(before.as_deref(), after.as_deref())),
                        )
                    })
                    .collect())
            }
        }
    }

    /// The keys the epoch changed (existing before or after it), and the
    /// JSON of each key's columns.
    fn changed_keys(&self, changes: &[ChangeBatch]) -> Result<(Vec<KeyFate>, Vec<String>)> {
        let fates: Vec<KeyFate> = key_fates(&self.schema, &self.key, changes)?
            .into_iter()
            .filter(|f| f.after.is_some() || f.before.is_some())
            .collect();
        let rows: Vec<_> = fates.iter().filter_map(|f| f.after.or(f.before)).collect();
        let rows = take_rows(changes, &rows)?;
        let keys = rows.map(|r| r.project(&self.key)).transpose()?;
        Ok((fates, json_rows(keys.as_ref())?))
    }
}

/// A message `(key, value)`; a `None` value is a tombstone.
type KeyValue = (Option<String>, Option<String>);

impl KafkaSinkConfig {
    /// Takes out of `messages` those larger than the producer takes (which
    /// no retry would ever send), as the rows skipped; under `on_error =
    /// 'fail'` the first one is the error instead.
    fn take_oversized(
        &self,
        epoch: u64,
        messages: &mut Vec<KeyValue>,
    ) -> std::result::Result<Vec<RejectedRow>, String> {
        let size = |(key, value): &KeyValue| {
            key.as_ref().map_or(0, String::len)
                + value.as_ref().map_or(0, String::len)
                + HEADER_BYTES
        };
        if messages.iter().all(|m| size(m) <= self.max_message_bytes) {
            return Ok(vec![]);
        }
        let mut skipped = Vec::new();
        let mut refused = None;
        messages.retain(|message| {
            let bytes = size(message);
            if bytes <= self.max_message_bytes {
                return true;
            }
            let reason = format!(
                "a message of {bytes} bytes is larger than message.max.bytes ({})",
                self.max_message_bytes
            );
            let key = match message {
                (Some(key), _) => key.clone(),
                (None, value) => {
                    let value = value.as_deref().unwrap_or_default();
                    let start: String = value.chars().take(200).collect();
                    format!("{start}...")
                }
            };
            refused.get_or_insert_with(|| reason.clone());
            skipped.push(RejectedRow { epoch, key, reason });
            false
        });
        match (self.on_error, refused) {
            (OnError::Fail, Some(reason)) => Err(format!("{reason} (on_error = 'fail')")),
            _ => Ok(skipped),
        }
    }
}

/// `{"before": ..., "after": ..., "op": ...}`.
fn debezium_event(before: Option<&str>, after: Option<&str>) -> String {
    let op = match (before, after) {
        (None, _) => "c",
        (Some(_), Some(_)) => "u",
        (Some(_), None) => "d",
    };
    format!(
        r#"{{"before":{},"after":{},"op":"{op}"}}"#,
        before.unwrap_or("null"),
        after.unwrap_or("null")
    )
}

/// Checks at CREATE SINK that the broker answers.
pub async fn validate_target(config: &KafkaSinkConfig) -> Result<()> {
    let producer = config.producer()?;
    let topic = config.topic.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
            .map(|_| ())
    })
    .await
    .map_err(|e| crate::internal!("Kafka metadata task: {e}"))?
    .map_err(|e| {
        EddyError::InvalidParameter(format!(
            "cannot reach Kafka for sink {}: {e}",
            config.sink_name
        ))
    })
}

/// Messages read back from the end of each partition, at first, to find
/// the sink's last committed epoch (four times as many each round while a
/// partition's tail shows none).
const RECOVERY_SCAN_MESSAGES: i64 = 1000;
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

fn epoch_header(message: &BorrowedMessage<'_>, sink: &str) -> Option<u64> {
    let headers = message.headers()?;
    let mut this_sink = false;
    let mut epoch = None;
    for header in headers.iter() {
        match (header.key, header.value) {
            ("eddy-sink", Some(value)) => this_sink = value == sink.as_bytes(),
            ("eddy-epoch", Some(value)) => {
                epoch = std::str::from_utf8(value).ok()?.parse().ok();
            }
            _ => {}
        }
    }
    epoch.filter(|_| this_sink)
}

/// Sets up the transactional producer and learns the last committed epoch
/// (none for a `fresh` sink: what the topic holds is an earlier sink's).
fn start_transactions(config: &KafkaSinkConfig, fresh: bool) -> Result<(FutureProducer, u64)> {
    let producer = config.transactional_producer()?;
    // Fences off an earlier incarnation and aborts its open transaction.
    producer
        .init_transactions(TRANSACTION_TIMEOUT)
        .map_err(|e| {
            EddyError::InvalidParameter(format!("Kafka sink {}: {e}", config.sink_name))
        })?;
    let committed = if fresh {
        0
    } else {
        config.last_committed_epoch()?
    };
    Ok((producer, committed))
}

/// Starts the sink task; it runs until the runtime drops the epoch channel.
/// A `fresh` sink was just created; otherwise it was restored.
pub fn spawn_sink(
    config: KafkaSinkConfig,
    mut epochs: mpsc::Receiver<SinkEpoch>,
    status: Arc<SinkStatus>,
    fresh: bool,
) {
    tokio::spawn(async move {
        let mut started = None;
        let mut backoff_ms = BACKOFF_START_MS;
        while started.is_none() {
            let attempt = {
                let config = config.clone();
                tokio::task::spawn_blocking(move || start_transactions(&config, fresh)).await
            };
            match attempt {
                Ok(Ok(ready)) => started = Some(ready),
                Ok(Err(e)) if status.is_dropped() => {
                    tracing::debug!(error = %e, "Kafka sink dropped while starting");
                    return;
                }
                Ok(Err(e)) => {
                    let reason = format!("Kafka unavailable: {e}");
                    status.retrying(Some(reason));
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                }
                Err(e) => {
                    status.fail(format!("Kafka sink task: {e}"));
                    while epochs.recv().await.is_some() {} // never hold the runtime
                    return;
                }
            }
        }
        let (producer, committed) = started.expect("started");
        status.retrying(None);
        let producer = Arc::new(producer);
        while let Some(SinkEpoch { epoch, changes }) = epochs.recv().await {
            if status.has_failed() || status.is_dropped() {
                continue; // keep draining so the runtime never waits on us
            }
            if epoch <= committed {
                status.committed(epoch, 0); // written before a restart
                continue;
            }
            let mut messages = match config.messages(&changes) {
                Ok(messages) => messages,
                Err(e) => {
                    status.fail(format!("sink {}: {e}", config.sink_name));
                    continue;
                }
            };
            let skipped = match config.take_oversized(epoch, &mut messages) {
                Ok(skipped) => skipped,
                Err(reason) => {
                    status.fail(format!("sink {} epoch {epoch}: {reason}", config.sink_name));
                    continue;
                }
            };
            let mut backoff_ms = BACKOFF_START_MS;
            let epoch_text = epoch.to_string();
            status.writing();
            loop {
                if status.is_dropped() {
                    break;
                }
                if messages.is_empty() {
                    status.committed_skipping(epoch, 0, skipped);
                    break;
                }
                let result = write_transaction(&producer, &config, &epoch_text, &messages).await;
                match result {
                    Ok(()) => {
                        status.committed_skipping(epoch, messages.len() as u64, skipped);
                        break;
                    }
                    Err(e) => {
                        let aborting = producer.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            aborting.abort_transaction(TRANSACTION_TIMEOUT)
                        })
                        .await;
                        let reason = format!("Kafka unavailable: {e}");
                        status.retrying(Some(reason));
                        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    }
                }
            }
        }
        tracing::info!(sink = %config.sink_name, "Kafka sink stopped");
    });
}

/// Writes one epoch's messages as one transaction.
async fn write_transaction(
    producer: &Arc<FutureProducer>,
    config: &KafkaSinkConfig,
    epoch: &str,
    messages: &[KeyValue],
) -> std::result::Result<(), KafkaError> {
    producer.begin_transaction()?;
    let sends = messages.iter().map(|(key, value)| {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "eddy-sink",
                value: Some(config.sink_name.as_str()),
            })
            .insert(Header {
                key: "eddy-epoch",
                value: Some(epoch),
            });
        let mut record: FutureRecord<'_, str, str> =
            FutureRecord::to(&config.topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer.send(record, Duration::from_secs(30))
    });
    let results = futures::future::join_all(sends).await;
    if let Some((e, _)) = results.into_iter().find_map(|r| r.err()) {
        return Err(e);
    }
    let committing = producer.clone();
    tokio::task::spawn_blocking(move || committing.commit_transaction(TRANSACTION_TIMEOUT))
        .await
        .map_err(|_| KafkaError::Canceled)?
}
