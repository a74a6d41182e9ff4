//! The `nexmark` source: the standard Nexmark auction events (people,
//! auctions and bids, see [`generator`]) as three streams.
//!
//! ```sql
//! CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
//! WITH (connector = 'nexmark', nexmark.table.type = 'bid',
//!       nexmark.event.rate = '10000', nexmark.max.events = '1000000');
//! ```
//!
//! A source is one of the three streams (`nexmark.table.type`, by default the
//! source's name when that is `person`, `auction` or `bid`). Its columns are
//! the standard ones (see [`standard_schema`]); a column list may name a
//! subset of them, in any order, with types they cast to. Sources with the
//! same seed, rate and base time see one event sequence: event `n` is the
//! same person, auction or bid in all of them, so auction and bid ids
//! match up. `nexmark.event.rate` events (of all three kinds) are produced
//! per second, and event times advance by `1 / rate` seconds per event from
//! `nexmark.base.time`; `nexmark.max.events` bounds the run.
//! `nexmark.max.emit.speed = 'true'` emits events as fast as the engine
//! takes them (event times still advance by `1 / rate` per event), as the
//! benchmark and the tests do.

pub mod generator;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{can_cast_types, cast};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{EddyError, Result};
use generator::{EventKind, Timeline};

/// The three Nexmark streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexmarkTable {
    Person,
    Auction,
    Bid,
}

impl NexmarkTable {
    fn parse(name: &str) -> Option<Self> {
        match name.to_lowercase().as_str() {
            "person" => Some(Self::Person),
            "auction" => Some(Self::Auction),
            "bid" => Some(Self::Bid),
            _ => None,
        }
    }

    fn kind(self) -> EventKind {
        match self {
            Self::Person => EventKind::Person,
            Self::Auction => EventKind::Auction,
            Self::Bid => EventKind::Bid,
        }
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// The standard columns of a Nexmark stream (the names RisingWave and the
/// Nexmark SQL queries use).
pub fn standard_schema(table: NexmarkTable) -> SchemaRef {
    let columns: &[(&str, DataType)] = match table {
        NexmarkTable::Person => &[
            ("id", DataType::Int64),
            ("name", DataType::Utf8),
            ("email_address", DataType::Utf8),
            ("credit_card", DataType::Utf8),
            ("city", DataType::Utf8),
            ("state", DataType::Utf8),
            ("date_time", timestamp()),
            ("extra", DataType::Utf8),
        ],
        NexmarkTable::Auction => &[
            ("id", DataType::Int64),
            ("item_name", DataType::Utf8),
            ("description", DataType::Utf8),
            ("initial_bid", DataType::Int64),
            ("reserve", DataType::Int64),
            ("date_time", timestamp()),
            ("expires", timestamp()),
            ("seller", DataType::Int64),
            ("category", DataType::Int64),
            ("extra", DataType::Utf8),
        ],
        NexmarkTable::Bid => &[
            ("auction", DataType::Int64),
            ("bidder", DataType::Int64),
            ("price", DataType::Int64),
            ("channel", DataType::Utf8),
            ("url", DataType::Utf8),
            ("date_time", timestamp()),
            ("extra", DataType::Utf8),
        ],
    };
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, data_type)| Field::new(*name, data_type.clone(), false))
            .collect::<Vec<_>>(),
    ))
}

/// A checked nexmark source configuration.
#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    table: NexmarkTable,
    /// The source's columns: the standard ones, or the declared subset.
    schema: SchemaRef,
    /// For each column of `schema`, its standard column.
    columns: Vec<usize>,
    timeline: Arc<Timeline>,
    events_per_second: u64,
    max_events: Option<u64>,
    /// Emit as fast as the engine takes events, not at the event rate.
    max_emit_speed: bool,
}

const KNOWN_OPTIONS: &str = "nexmark.table.type, nexmark.event.rate, nexmark.max.events, \
                             nexmark.seed, nexmark.base.time, nexmark.max.emit.speed";

impl NexmarkConfig {
    /// The configuration of source `name` with the declared `columns` (empty:
    /// all standard columns).
    pub fn from_options(
        name: &str,
        declared: &[Field],
        options: &BTreeMap<String, String>,
    ) -> Result<Self> {
        for key in options.keys() {
            if key != "connector" && !KNOWN_OPTIONS.split(", ").any(|k| k == key) {
                return Err(EddyError::InvalidParameter(format!(
                    "unknown option {key} for a nexmark source; known: {KNOWN_OPTIONS}"
                )));
            }
        }
        let table = match options.get("nexmark.table.type") {
            Some(kind) => NexmarkTable::parse(kind).ok_or_else(|| {
                EddyError::InvalidParameter(format!(
                    "nexmark.table.type = '{kind}' is not one of person, auction, bid"
                ))
            })?,
            None => NexmarkTable::parse(name).ok_or_else(|| {
                EddyError::InvalidParameter(format!(
                    "source {name} needs nexmark.table.type = 'person', 'auction' or 'bid'"
                ))
            })?,
        };
        let standard = standard_schema(table);
        let (schema, columns) = if declared.is_empty() {
            (standard.clone(), (0..standard.fields().len()).collect())
        } else {
            let mut columns = Vec::with_capacity(declared.len());
            for field in declared {
                let index = standard.index_of(field.name()).map_err(|_| {
                    let names: Vec<&str> = standard
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect();
                    EddyError::UndefinedColumn(format!(
                        "nexmark {table:?} has no column \"{}\"; its columns are {}",
                        field.name(),
                        names.join(", ")
                    ))
                })?;
                let from = standard.field(index).data_type();
                if !can_cast_types(from, field.data_type()) {
                    return Err(EddyError::TypeMismatch(format!(
                        "nexmark column {} is {from}, which cannot be read as {}",
                        field.name(),
                        field.data_type()
                    )));
                }
                columns.push(index);
            }
            (Arc::new(Schema::new(declared.to_vec())), columns)
        };
        let number = |key: &str| -> Result<Option<u64>> {
            options
                .get(key)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        EddyError::InvalidParameter(format!(
                            "option {key} = '{v}' is not a whole number"
                        ))
                    })
                })
                .transpose()
        };
        let events_per_second = number("nexmark.event.rate")?.unwrap_or(10_000);
        if events_per_second == 0 {
            return Err(EddyError::InvalidParameter(
                "nexmark.event.rate must be positive".into(),
            ));
        }
        let seed = number("nexmark.seed")?.unwrap_or(0) as i64;
        let base_time_ms = match options.get("nexmark.base.time") {
            None => 1_704_067_200_000, // 2024-01-01 00:00:00
            Some(text) => crate::common::time::parse_timestamp_micros(text)? / 1000,
        };
        Ok(Self {
            table,
            schema,
            columns,
            timeline: Arc::new(Timeline::new(base_time_ms, events_per_second, seed)),
            events_per_second,
            max_events: number("nexmark.max.events")?,
            max_emit_speed: match options
                .get("nexmark.max.emit.speed")
                .map(|v| v.to_lowercase())
            {
                None => false,
                Some(v) if v == "true" => true,
                Some(v) if v == "false" => false,
                Some(v) => {
                    return Err(EddyError::InvalidParameter(format!(
                        "nexmark.max.emit.speed = '{v}' is not true or false"
                    )))
                }
            },
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Events (of all three kinds) emitted per second; `None`: as fast as
    /// the engine takes them.
    pub fn emit_rate(&self) -> Option<u64> {
        (!self.max_emit_speed).then_some(self.events_per_second)
    }

    pub fn max_events(&self) -> Option<u64> {
        self.max_events
    }

    /// This stream's rows among events `first .. first + count`.
    pub fn rows(&self, first: u64, count: u64) -> Result<RecordBatch> {
        let kind = self.table.kind();
        let events: Vec<u64> = (first..first + count)
            .filter(|&n| EventKind::of(n) == kind)
            .collect();
        let standard = self.standard_columns(&events);
        let columns = self
            .columns
            .iter()
            .zip(self.schema.fields())
            .map(|(&index, field)| {
                let column = &standard[index];
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    Ok(cast(column, field.data_type())?)
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(events.len()));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }

    fn standard_columns(&self, events: &[u64]) -> Vec<ArrayRef> {
        let timeline = &self.timeline;
        let ints = |values: Vec<i64>| Arc::new(Int64Array::from(values)) as ArrayRef;
        let times = |millis: Vec<i64>| {
            Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from(
                millis.into_iter().map(|m| m * 1000).collect::<Vec<_>>(),
            )) as ArrayRef
        };
        // Text columns copy each row's string once, into the array.
        fn texts<'a, T: 'a>(rows: &'a [T], field: impl Fn(&'a T) -> &'a str) -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(field)))
        }
        match self.table {
            NexmarkTable::Person => {
                let rows: Vec<_> = events.iter().map(|&n| timeline.person(n)).collect();
                vec![
                    ints(rows.iter().map(|p| p.id).collect()),
                    texts(&rows, |p| &p.name),
                    texts(&rows, |p| &p.email_address),
                    texts(&rows, |p| &p.credit_card),
                    texts(&rows, |p| p.city),
                    texts(&rows, |p| p.state),
                    times(rows.iter().map(|p| p.date_time).collect()),
                    texts(&rows, |p| &p.extra),
                ]
            }
            NexmarkTable::Auction => {
                let rows: Vec<_> = events.iter().map(|&n| timeline.auction(n)).collect();
                vec![
                    ints(rows.iter().map(|a| a.id).collect()),
                    texts(&rows, |a| &a.item_name),
                    texts(&rows, |a| &a.description),
                    ints(rows.iter().map(|a| a.initial_bid).collect()),
                    ints(rows.iter().map(|a| a.reserve).collect()),
                    times(rows.iter().map(|a| a.date_time).collect()),
                    times(rows.iter().map(|a| a.expires).collect()),
                    ints(rows.iter().map(|a| a.seller).collect()),
                    ints(rows.iter().map(|a| a.category).collect()),
                    texts(&rows, |a| &a.extra),
                ]
            }
            NexmarkTable::Bid => {
                let rows: Vec<_> = events.iter().map(|&n| timeline.bid(n)).collect();
                vec![
                    ints(rows.iter().map(|b| b.auction).collect()),
                    ints(rows.iter().map(|b| b.bidder).collect()),
                    ints(rows.iter().map(|b| b.price).collect()),
                    texts(&rows, |b| &b.channel),
                    texts(&rows, |b| &b.url),
                    times(rows.iter().map(|b| b.date_time).collect()),
                    texts(&rows, |b| &b.extra),
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::connectors::test_options as options;

    #[test]
    fn streams_split_the_events_in_the_standard_proportions() {
        let counts: Vec<usize> = ["person", "auction", "bid"]
            .iter()
            .map(|name| {
                let config = NexmarkConfig::from_options(name, &[], &options(&[])).unwrap();
                config.rows(0, 10_000).unwrap().num_rows()
            })
            .collect();
        assert_eq!(counts, vec![200, 600, 9200]);
    }

    #[test]
    fn declared_columns_pick_and_cast() {
        let declared = [
            Field::new("price", DataType::Float64, true),
            Field::new("auction", DataType::Int64, true),
        ];
        let config = NexmarkConfig::from_options(
            "bids",
            &declared,
            &options(&[("nexmark.table.type", "bid")]),
        )
        .unwrap();
        let rows = config.rows(0, 100).unwrap();
        assert_eq!(rows.num_columns(), 2);
        assert_eq!(rows.column(0).data_type(), &DataType::Float64);
        let error = NexmarkConfig::from_options(
            "bid",
            &[Field::new("cost", DataType::Int64, true)],
            &options(&[]),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("has no column \"cost\""),
            "{error}"
        );
        let error = NexmarkConfig::from_options("bids", &[], &options(&[])).unwrap_err();
        assert!(error.to_string().contains("nexmark.table.type"), "{error}");
    }
}
