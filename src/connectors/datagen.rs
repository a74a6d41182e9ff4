//! The `datagen` source: rows generated from per-column generators at a set
//! rate, deterministic for a seed, bounded (`datagen.max.rows`) or not.
//!
//! ```sql
//! CREATE SOURCE clicks (id BIGINT, page INT, ts TIMESTAMP,
//!                       WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
//! WITH (connector = 'datagen', datagen.rows.per.second = '1000',
//!       datagen.max.rows = '100000', datagen.seed = '7',
//!       fields.page.min = '0', fields.page.max = '9');
//! ```
//!
//! Each materialized view that reads a source runs its own generator from
//! the first row, so every view sees the same rows (like a Kafka source read
//! from the earliest offset). Column generators by type:
//! - integers: `sequence` (default; `start`, default 1) or `random`
//!   (`min`/`max`, inclusive);
//! - floats and numeric: `random` in `[min, max)`;
//! - text: `random` letters of `length` (default 8), or one of `values`
//!   (comma-separated);
//! - boolean: random;
//! - timestamp: event time. Row `i` is at `datagen.start.time` (default
//!   2024-01-01 00:00:00) plus `i / rows.per.second` seconds, minus a random
//!   `max.disorder` (default 0) to make out-of-order streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use crate::error::{EddyError, Result};

#[derive(Debug, Clone)]
enum ColumnGenerator {
    Sequence {
        start: i64,
    },
    RandomInt {
        min: i64,
        max: i64,
    },
    RandomFloat {
        min: f64,
        max: f64,
    },
    RandomText {
        length: usize,
    },
    Choice {
        values: Vec<String>,
    },
    RandomBool,
    EventTime {
        start_micros: i64,
        disorder_micros: i64,
    },
}

/// A checked datagen configuration.
#[derive(Debug, Clone)]
pub struct DatagenConfig {
    schema: SchemaRef,
    columns: Vec<ColumnGenerator>,
    rows_per_second: u64,
    max_rows: Option<u64>,
    seed: u64,
}

fn option_error(message: String) -> EddyError {
    EddyError::InvalidParameter(message)
}

fn parse_number<T: std::str::FromStr>(
    options: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<T>> {
    options
        .get(key)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| option_error(format!("option {key} = '{v}' is not a valid number")))
        })
        .transpose()
}

impl DatagenConfig {
    pub fn from_options(schema: SchemaRef, options: &BTreeMap<String, String>) -> Result<Self> {
        for key in options.keys() {
            let known = matches!(
                key.as_str(),
                "connector"
                    | "datagen.rows.per.second"
                    | "datagen.max.rows"
                    | "datagen.seed"
                    | "datagen.start.time"
            ) || key.starts_with("fields.");
            if !known {
                return Err(option_error(format!(
                    "unknown option {key} for a datagen source; known: datagen.rows.per.second, datagen.max.rows, \
                     datagen.seed, datagen.start.time, fields.<column>.<kind|start|min|max|length|values|max.disorder>"
                )));
            }
        }
        let start_time = match options.get("datagen.start.time") {
            None => 1_704_067_200_000_000, // 2024-01-01 00:00:00
            Some(text) => crate::common::time::parse_timestamp_micros(text)
                .map_err(|e| option_error(format!("datagen.start.time: {e}")))?,
        };
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let get = |name: &str| options.get(&format!("fields.{}.{name}", field.name()));
            let number = |name: &str| {
                parse_number::<f64>(options, &format!("fields.{}.{name}", field.name()))
            };
            let kind = get("kind").map(|k| k.to_lowercase());
            let generator = match (field.data_type(), kind.as_deref()) {
                (t, None | Some("sequence")) if t.is_integer() && get("min").is_none() => {
                    ColumnGenerator::Sequence {
                        start: number("start")?.unwrap_or(1.0) as i64,
                    }
                }
                (t, None | Some("random")) if t.is_integer() => {
                    let (min, max) = (
                        number("min")?.unwrap_or(0.0) as i64,
                        number("max")?.unwrap_or(1000.0) as i64,
                    );
                    if min > max {
                        return Err(option_error(format!(
                            "fields.{}.min must not exceed max",
                            field.name()
                        )));
                    }
                    ColumnGenerator::RandomInt { min, max }
                }
                (t, None | Some("random"))
                    if t.is_floating() || matches!(t, DataType::Decimal128(_, _)) =>
                {
                    ColumnGenerator::RandomFloat {
                        min: number("min")?.unwrap_or(0.0),
                        max: number("max")?.unwrap_or(1.0),
                    }
                }
                (DataType::Utf8, None | Some("random")) => match get("values") {
                    Some(values) => ColumnGenerator::Choice {
                        values: values.split(',').map(|v| v.trim().to_string()).collect(),
                    },
                    None => ColumnGenerator::RandomText {
                        length: number("length")?.unwrap_or(8.0) as usize,
                    },
                },
                (DataType::Boolean, None | Some("random")) => ColumnGenerator::RandomBool,
                (DataType::Timestamp(_, _), None | Some("event_time")) => {
                    let disorder = match get("max.disorder") {
                        Some(text) => crate::common::time::interval_micros(text)?,
                        None => 0,
                    };
                    ColumnGenerator::EventTime {
                        start_micros: start_time,
                        disorder_micros: disorder,
                    }
                }
                (t, kind) => {
                    return Err(crate::not_supported!(
                        "datagen cannot generate column {} of type {t}{}",
                        field.name(),
                        kind.map(|k| format!(" with kind '{k}'"))
                            .unwrap_or_default()
                    ))
                }
            };
            columns.push(generator);
        }
        let rows_per_second =
            parse_number::<u64>(options, "datagen.rows.per.second")?.unwrap_or(1000);
        if rows_per_second == 0 {
            return Err(option_error(
                "datagen.rows.per.second must be positive".into(),
            ));
        }
        Ok(Self {
            schema,
            columns,
            rows_per_second,
            max_rows: parse_number::<u64>(options, "datagen.max.rows")?,
            seed: parse_number::<u64>(options, "datagen.seed")?.unwrap_or(0),
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn rows_per_second(&self) -> u64 {
        self.rows_per_second
    }

    pub fn max_rows(&self) -> Option<u64> {
        self.max_rows
    }

    /// Rows `first..first + count` (a pure function of the seed and index).
    pub fn rows(&self, first: u64, count: u64) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (c, (generator, field)) in self.columns.iter().zip(self.schema.fields()).enumerate() {
            let random = |i: u64| {
                splitmix64(self.seed ^ (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ ((c as u64) << 56))
            };
            let indices = first..first + count;
            let array: ArrayRef = match generator {
                ColumnGenerator::Sequence { start } => Arc::new(Int64Array::from_iter_values(
                    indices.map(|i| start + i as i64),
                )),
                ColumnGenerator::RandomInt { min, max } => {
                    let span = (max - min) as u64 + 1;
                    Arc::new(Int64Array::from_iter_values(
                        indices.map(|i| min + (random(i) % span) as i64),
                    ))
                }
                ColumnGenerator::RandomFloat { min, max } => {
                    Arc::new(Float64Array::from_iter_values(indices.map(|i| {
                        min + (max - min) * (random(i) >> 11) as f64 / (1u64 << 53) as f64
                    })))
                }
                ColumnGenerator::RandomText { length } => {
                    Arc::new(StringArray::from_iter_values(indices.map(|i| {
                        let mut state = random(i);
                        (0..*length)
                            .map(|_| {
                                state = splitmix64(state);
                                (b'a' + (state % 26) as u8) as char
                            })
                            .collect::<String>()
                    })))
                }
                ColumnGenerator::Choice { values } => {
                    Arc::new(StringArray::from_iter_values(indices.map(|i| {
                        values[(random(i) % values.len() as u64) as usize].as_str()
                    })))
                }
                ColumnGenerator::RandomBool => Arc::new(BooleanArray::from_iter(
                    indices.map(|i| Some(random(i) % 2 == 0)),
                )),
                ColumnGenerator::EventTime {
                    start_micros,
                    disorder_micros,
                } => {
                    let step = 1_000_000 / self.rows_per_second.max(1) as i64;
                    Arc::new(TimestampMicrosecondArray::from_iter_values(indices.map(
                        |i| {
                            let jitter = if *disorder_micros > 0 {
                                (random(i) % (*disorder_micros as u64 + 1)) as i64
                            } else {
                                0
                            };
                            start_micros + i as i64 * step.max(1) - jitter
                        },
                    )))
                }
            };
            // Generated as Int64/Float64/µs timestamps; stored as declared.
            let array = if array.data_type() == field.data_type() {
                array
            } else {
                cast(&array, field.data_type())?
            };
            columns.push(array);
        }
        let options = datafusion::arrow::array::RecordBatchOptions::new()
            .with_row_count(Some(count as usize));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

/// SplitMix64: a tiny, good-enough, reproducible mixer.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    #[test]
    fn same_seed_same_rows_any_batching() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("k", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let options = BTreeMap::from([
            ("connector".to_string(), "datagen".to_string()),
            ("datagen.seed".to_string(), "7".to_string()),
            ("fields.k.min".to_string(), "0".to_string()),
            ("fields.k.max".to_string(), "9".to_string()),
            (
                "fields.ts.max.disorder".to_string(),
                "2 seconds".to_string(),
            ),
        ]);
        let config = DatagenConfig::from_options(schema, &options).unwrap();
        let whole = config.rows(0, 100).unwrap();
        let parts = [config.rows(0, 40).unwrap(), config.rows(40, 60).unwrap()];
        let joined = datafusion::arrow::compute::concat_batches(&whole.schema(), &parts).unwrap();
        assert_eq!(whole, joined);
        let k = whole
            .column(1)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        assert!(k.values().iter().all(|v| (0..=9).contains(v)));
        assert!(
            k.values().iter().any(|v| *v != k.value(0)),
            "random values vary"
        );
    }
}
