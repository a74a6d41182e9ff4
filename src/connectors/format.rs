//! What a `CREATE SOURCE` or `CREATE SINK` says about its connector beyond
//! the columns: the `WITH (...)` options, `FORMAT ... ENCODE ...` (how
//! messages map to changes) and the metadata a source `INCLUDE`s. `sql`
//! parses these; the connectors check and use them.

use std::collections::BTreeMap;

/// `FORMAT PLAIN | UPSERT | DEBEZIUM`: how messages map to changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    /// Every message is an inserted row.
    Plain,
    /// The key identifies the row; a null value deletes it.
    Upsert,
    /// `{"before": ..., "after": ...}` change events.
    Debezium,
}

/// `ENCODE JSON | CSV | AVRO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEncoding {
    Json,
    Csv,
    Avro,
}

/// `FORMAT <format> ENCODE <encoding> [(options)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatSpec {
    pub format: MessageFormat,
    pub encoding: MessageEncoding,
    pub encode_options: BTreeMap<String, String>,
}

/// Kafka metadata a source can expose as columns: `INCLUDE partition
/// [AS name]`, and likewise `offset`, `timestamp`, `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaMetadata {
    Partition,
    Offset,
    Timestamp,
    Key,
}

/// What follows a CREATE SOURCE's column list.
#[derive(Debug, Clone, Default)]
pub struct SourceClauses {
    pub includes: Vec<(KafkaMetadata, String)>,
    pub options: BTreeMap<String, String>,
    pub format: Option<FormatSpec>,
}
