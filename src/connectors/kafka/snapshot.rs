//! An ad hoc `SELECT` over a Kafka source: what the topic holds now, read
//! once, as RisingWave and Materialize answer a query over a source.
//!
//! Every partition is read from its first offset to its end as the query
//! starts (the high watermark then), through the views' own reader
//! (`Reader::changes`: the same decoding, bad messages skipped, FORMAT
//! UPSERT and DEBEZIUM applied), and the changes are summed into the rows
//! the source holds: for UPSERT the current row of each key, for DEBEZIUM
//! the rows not deleted. Nothing is recorded (no bad-message counts, no
//! offsets), and messages that arrive meanwhile are not waited for.
//!
//! Bounded: a read stops after [`MAX_MESSAGES`] messages (a query that
//! needs more is 54000, naming a view as the way to read the whole topic)
//! or [`READ_TIMEOUT`]; a `LIMIT` of a plain source stops it once that
//! many rows are read.

use std::collections::HashMap;

use datafusion::arrow::array::RecordBatch;
use rdkafka::message::Message;

use super::*;

/// The most messages one SELECT over a source reads.
pub const MAX_MESSAGES: usize = 1_000_000;
/// How long one SELECT over a source may read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages decoded at a time.
const CHUNK: usize = 4096;

/// One received message as a batch of one.
struct One<'a, M: Message>(&'a M);

impl<M: Message> ReceivedBatch for One<'_, M> {
    fn len(&self) -> usize {
        1
    }
    fn partition(&self, _: usize) -> i32 {
        self.0.partition()
    }
    fn offset(&self, _: usize) -> i64 {
        self.0.offset()
    }
    fn timestamp_ms(&self, _: usize) -> Option<i64> {
        self.0.timestamp().to_millis()
    }
    fn key(&self, _: usize) -> Option<&[u8]> {
        self.0.key()
    }
    fn payload(&self, _: usize) -> Option<&[u8]> {
        self.0.payload()
    }
}

impl KafkaSourceConfig {
    /// The rows the topic holds now, in `schema` (the source's columns,
    /// with its PROCTIME() column if it has one); at most `limit` rows.
    pub async fn read_snapshot(
        self: &Arc<Self>,
        schema: SchemaRef,
        proctime: Option<usize>,
        limit: Option<usize>,
    ) -> Result<RecordBatch> {
        let mut reader = Reader::new(
            self.clone(),
            schema.clone(),
            proctime.map(ProcessingTime::new),
            None,
            // Readers' consumer groups are never joined (partitions are
            // assigned): the id only names the client.
            RelationId::MAX,
            "(SELECT)".into(),
        )?;
        reader.field_check = None;
        let consumer = reader.consumer.clone();
        let topic = self.topic.clone();
        // librdkafka's metadata calls block: off the async workers.
        let ends = tokio::task::spawn_blocking(move || -> Result<BTreeMap<i32, (i64, i64)>> {
            let metadata = consumer
                .fetch_metadata(Some(&topic), CHECK_TIMEOUT)
                .map_err(|e| {
                    EddyError::ConnectionFailure(format!(
                        "cannot read Kafka topic \"{topic}\": {e}"
                    ))
                })?;
            let mut ends = BTreeMap::new();
            for partition in metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions())
            {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition.id(), CHECK_TIMEOUT)
                    .map_err(kafka_error)?;
                ends.insert(partition.id(), (low, high));
            }
            Ok(ends)
        })
        .await
        .map_err(|e| crate::internal!("reading a source's offsets: {e}"))??;
        let mut assignment = TopicPartitionList::new();
        let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
        for (&partition, &(low, high)) in &ends {
            if high > low {
                assignment
                    .add_partition_offset(&self.topic, partition, Offset::Offset(low))
                    .map_err(kafka_error)?;
                remaining.insert(partition, high);
            }
        }
        let mut changes: Vec<ChangeBatch> = Vec::new();
        let mut rows_read = 0usize;
        let plain = self.format == MessageFormat::Plain;
        let wanted = limit.filter(|_| plain).unwrap_or(usize::MAX);
        if !remaining.is_empty() {
            reader.consumer.assign(&assignment).map_err(kafka_error)?;
        }
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        let mut messages_read = 0usize;
        let mut chunk = Messages::default();
        while !remaining.is_empty() && rows_read < wanted {
            let received = tokio::time::timeout_at(deadline, reader.consumer.recv())
                .await
                .map_err(|_| {
                    EddyError::QueryCanceled(format!(
                        "reading Kafka topic \"{}\" took more than {} s; read it through a \
                         materialized view",
                        self.topic,
                        READ_TIMEOUT.as_secs()
                    ))
                })?;
            match received {
                Ok(message) => {
                    let partition = message.partition();
                    if remaining
                        .get(&partition)
                        .is_some_and(|&high| message.offset() + 1 >= high)
                    {
                        remaining.remove(&partition);
                    }
                    chunk.push_from(&One(&message), 0);
                    messages_read += 1;
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    remaining.remove(&partition);
                }
                Err(e) => return Err(kafka_error(e)),
            }
            if messages_read > MAX_MESSAGES {
                return Err(EddyError::ProgramLimitExceeded(format!(
                    "Kafka topic \"{}\" holds more than {MAX_MESSAGES} messages, the most a \
                     SELECT over a source reads; read it through a materialized view (or add \
                     a LIMIT)",
                    self.topic
                )));
            }
            if chunk.list.len() >= CHUNK || remaining.is_empty() {
                let (segments, _bad) = reader.changes(&chunk, false)?;
                for segment in segments {
                    rows_read += segment.change.num_rows();
                    changes.push(segment.change);
                }
                chunk = Messages::default();
            }
        }
        if !chunk.list.is_empty() {
            let (segments, _bad) = reader.changes(&chunk, false)?;
            changes.extend(segments.into_iter().map(|s| s.change));
        }
        current_rows(&schema, changes, limit)
    }
}

/// The rows `changes` add up to (each row as many times as its net
/// weight), in the order they first came; at most `limit`.
fn current_rows(
    schema: &SchemaRef,
    changes: Vec<ChangeBatch>,
    limit: Option<usize>,
) -> Result<RecordBatch> {
    let codec = RowCodec::try_new(schema.clone())?;
    let mut order: Vec<Arc<[u8]>> = Vec::new();
    let mut net: HashMap<Arc<[u8]>, i64> = HashMap::new();
    for change in &changes {
        for (row, weight) in codec
            .encode(&change.rows)?
            .into_iter()
            .zip(change.weights.values())
        {
            let entry = net.entry(row.clone()).or_insert_with(|| {
                order.push(row);
                0
            });
            *entry += *weight;
        }
    }
    let limit = limit.unwrap_or(usize::MAX);
    let mut rows: Vec<&[u8]> = Vec::new();
    'rows: for row in &order {
        for _ in 0..net[row].max(0) {
            if rows.len() >= limit {
                break 'rows;
            }
            rows.push(&row[..]);
        }
    }
    codec.decode(rows.into_iter())
}
