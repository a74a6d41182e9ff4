//! Message payloads to rows: JSON, CSV and Avro, one row per message, with
//! bad messages picked out instead of failing the batch.
//!
//! Avro payloads are single binary datums written with the schema given in
//! `ENCODE AVRO (schema = '...')` or `(schema.file = 'path')`; each becomes
//! a JSON object (timestamps normalized to µs) and goes the JSON way.
//!
//! A batch of payloads is decoded in one go (the fast path). When that
//! fails, each payload is decoded alone to find the bad ones; the good ones
//! become the batch. Decoding uses an all-nullable schema so that a missing
//! field decodes; a NOT NULL column that came out null is then a bad message
//! ("missing required field").

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;

use crate::catalog::all_nullable;
use crate::error::{EddyError, Result};
use crate::sql::sink::MessageEncoding;

/// How payloads are decoded.
#[derive(Debug, Clone)]
pub struct PayloadDecoder {
    encoding: MessageEncoding,
    /// ENCODE AVRO: the writer schema of the payloads.
    avro: Option<Arc<apache_avro::Schema>>,
    /// The declared columns the payload carries.
    schema: SchemaRef,
    decode_schema: SchemaRef,
    delimiter: u8,
}

/// Decoded rows, and the payloads that could not be decoded.
pub struct Decoded {
    pub rows: RecordBatch,
    /// For each row, the index of its payload.
    pub payload_of_row: Vec<usize>,
    /// `(payload index, reason)`.
    pub bad: Vec<(usize, String)>,
}

impl PayloadDecoder {
    pub fn try_new(
        encoding: MessageEncoding,
        schema: SchemaRef,
        options: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let known: &[&str] = match encoding {
            MessageEncoding::Json => &[],
            MessageEncoding::Csv => &["delimiter"],
            MessageEncoding::Avro => &["schema", "schema.file"],
        };
        if let Some(unknown) = options.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(EddyError::InvalidParameter(format!(
                "unknown ENCODE {encoding:?} option {unknown}; known: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let delimiter = match options.get("delimiter") {
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some(d) => {
                return Err(EddyError::InvalidParameter(format!(
                    "ENCODE CSV delimiter must be one character, not '{d}'"
                )))
            }
            None => b',',
        };
        let avro = match encoding {
            MessageEncoding::Avro => {
                let text = match (options.get("schema"), options.get("schema.file")) {
                    (Some(text), None) => text.clone(),
                    (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                        EddyError::InvalidParameter(format!("cannot read Avro schema {path}: {e}"))
                    })?,
                    _ => {
                        return Err(EddyError::InvalidParameter(
                            "ENCODE AVRO needs (schema = '<Avro schema JSON>') or (schema.file = 'path')"
                                .into(),
                        ))
                    }
                };
                let schema = apache_avro::Schema::parse_str(&text).map_err(|e| {
                    EddyError::InvalidParameter(format!("the Avro schema does not parse: {e}"))
                })?;
                Some(Arc::new(schema))
            }
            _ => None,
        };
        Ok(Self {
            encoding,
            avro,
            decode_schema: all_nullable(&schema),
            schema,
            delimiter,
        })
    }

    /// Decodes `payloads`, one row each.
    pub fn decode(&self, payloads: &[&[u8]]) -> Result<Decoded> {
        if let Some(schema) = &self.avro {
            // Avro datums to JSON objects, then the JSON way.
            let mut json = Vec::with_capacity(payloads.len());
            let mut origin = Vec::with_capacity(payloads.len());
            let mut bad = Vec::new();
            for (index, payload) in payloads.iter().enumerate() {
                match avro_to_json(schema, payload) {
                    Ok(text) => {
                        json.push(text);
                        origin.push(index);
                    }
                    Err(reason) => bad.push((index, reason)),
                }
            }
            let as_json = Self {
                encoding: MessageEncoding::Json,
                avro: None,
                ..self.clone()
            };
            let slices: Vec<&[u8]> = json.iter().map(|j| j.as_bytes()).collect();
            let mut decoded = as_json.decode(&slices)?;
            decoded.payload_of_row = decoded.payload_of_row.iter().map(|&p| origin[p]).collect();
            for (payload, reason) in decoded.bad.drain(..) {
                bad.push((origin[payload], reason));
            }
            bad.sort();
            decoded.bad = bad;
            return Ok(decoded);
        }
        if payloads.is_empty() {
            return Ok(Decoded {
                rows: RecordBatch::new_empty(self.schema.clone()),
                payload_of_row: vec![],
                bad: vec![],
            });
        }
        let (rows, payload_of_row, mut bad) = match self.decode_all(payloads) {
            Ok(rows) if rows.num_rows() == payloads.len() => {
                (rows, (0..payloads.len()).collect::<Vec<_>>(), vec![])
            }
            // A payload that was not one row (two JSON objects, an empty
            // one): find it below like any bad one.
            _ => self.decode_one_by_one(payloads)?,
        };
        // NOT NULL columns that came out null: the field was missing.
        let mut keep = vec![true; rows.num_rows()];
        for (column, field) in self.schema.fields().iter().enumerate() {
            if field.is_nullable() {
                continue;
            }
            let array = rows.column(column);
            for (row, kept) in keep.iter_mut().enumerate() {
                if *kept && array.is_null(row) {
                    *kept = false;
                    bad.push((
                        payload_of_row[row],
                        format!("missing required field \"{}\"", field.name()),
                    ));
                }
            }
        }
        let (rows, payload_of_row) = if keep.iter().all(|k| *k) {
            (rows, payload_of_row)
        } else {
            let mask = datafusion::arrow::array::BooleanArray::from(keep.clone());
            let rows = filter_record_batch(&rows, &mask)?;
            let payload_of_row = payload_of_row
                .into_iter()
                .zip(keep)
                .filter_map(|(p, k)| k.then_some(p))
                .collect();
            (rows, payload_of_row)
        };
        // Back to the declared schema (nullability included).
        let rows = RecordBatch::try_new(self.schema.clone(), rows.columns().to_vec())?;
        bad.sort();
        Ok(Decoded {
            rows,
            payload_of_row,
            bad,
        })
    }

    #[allow(clippy::type_complexity)]
    fn decode_one_by_one(
        &self,
        payloads: &[&[u8]],
    ) -> Result<(RecordBatch, Vec<usize>, Vec<(usize, String)>)> {
        let mut batches = Vec::new();
        let mut payload_of_row = Vec::new();
        let mut bad = Vec::new();
        for (index, payload) in payloads.iter().enumerate() {
            match self.decode_all(&[payload]) {
                Ok(rows) if rows.num_rows() == 1 => {
                    batches.push(rows);
                    payload_of_row.push(index);
                }
                Ok(rows) => bad.push((
                    index,
                    format!("expected one record, found {}", rows.num_rows()),
                )),
                Err(e) => bad.push((index, reason(&e))),
            }
        }
        let rows = concat_batches(&self.decode_schema, &batches)?;
        Ok((rows, payload_of_row, bad))
    }

    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch> {
        let rows = match self.encoding {
            MessageEncoding::Json => {
                let mut decoder =
                    datafusion::arrow::json::ReaderBuilder::new(self.decode_schema.clone())
                        .with_batch_size(payloads.len().max(1))
                        .build_decoder()?;
                for payload in payloads {
                    // Each payload must be exactly one value.
                    let consumed = decoder.decode(payload)?;
                    if consumed != payload.len() {
                        return Err(EddyError::InvalidValue(
                            "trailing data after the JSON value".into(),
                        ));
                    }
                    decoder.decode(b"\n")?;
                }
                decoder
                    .flush()?
                    .unwrap_or_else(|| RecordBatch::new_empty(self.decode_schema.clone()))
            }
            MessageEncoding::Csv => {
                let mut text = Vec::with_capacity(payloads.iter().map(|p| p.len() + 1).sum());
                for payload in payloads {
                    let line = payload.strip_suffix(b"\n").unwrap_or(payload);
                    if line.contains(&b'\n') {
                        return Err(EddyError::InvalidValue(
                            "a CSV message must be one line".into(),
                        ));
                    }
                    text.extend_from_slice(line);
                    text.push(b'\n');
                }
                let reader = datafusion::arrow::csv::ReaderBuilder::new(self.decode_schema.clone())
                    .with_header(false)
                    .with_delimiter(self.delimiter)
                    .with_batch_size(payloads.len().max(1))
                    .build(Cursor::new(text))?;
                let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                concat_batches(&self.decode_schema, &batches)?
            }
            MessageEncoding::Avro => {
                return Err(crate::internal!("Avro payloads are decoded as JSON"))
            }
        };
        Ok(rows)
    }
}

/// One Avro datum as a JSON object; timestamps become µs since the epoch.
fn avro_to_json(
    schema: &apache_avro::Schema,
    payload: &[u8],
) -> std::result::Result<String, String> {
    let mut reader = payload;
    let value = apache_avro::from_avro_datum(schema, &mut reader, None)
        .map_err(|e| format!("not an Avro datum of the source's schema: {e}"))?;
    if !reader.is_empty() {
        return Err(format!("{} bytes after the Avro datum", reader.len()));
    }
    if !matches!(value, apache_avro::types::Value::Record(_)) {
        return Err("an Avro message must be a record".to_string());
    }
    Ok(json_of(value)?.to_string())
}

fn json_of(value: apache_avro::types::Value) -> std::result::Result<serde_json::Value, String> {
    use apache_avro::types::Value;
    Ok(match value {
        Value::TimestampMillis(t) | Value::LocalTimestampMillis(t) => (t * 1000).into(),
        Value::TimestampNanos(t) | Value::LocalTimestampNanos(t) => (t / 1000).into(),
        Value::Union(_, inner) => json_of(*inner)?,
        Value::Record(fields) => serde_json::Value::Object(
            fields
                .into_iter()
                .map(|(name, v)| json_of(v).map(|v| (name, v)))
                .collect::<std::result::Result<_, _>>()?,
        ),
        other => serde_json::Value::try_from(other).map_err(|e| e.to_string())?,
    })
}

/// Why a payload did not decode, without the error's category prefixes.
fn reason(error: &EddyError) -> String {
    let text = error.to_string();
    let text = text.strip_prefix("internal error: ").unwrap_or(&text);
    for prefix in ["Json error: ", "Parser error: ", "Csv error: "] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text.to_string()
}

/// The schema of `fields`, shared.
pub fn schema_of(fields: Vec<datafusion::arrow::datatypes::Field>) -> SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

    fn schema() -> SchemaRef {
        schema_of(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ])
    }

    #[test]
    fn json_bad_messages_are_picked_out() {
        let decoder =
            PayloadDecoder::try_new(MessageEncoding::Json, schema(), &BTreeMap::new()).unwrap();
        let payloads: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a", "ts": "2024-01-01 00:00:01"}"#,
            br#"{"id": "x"}"#,
            b"not json",
            br#"{"name": "no id"}"#,
            br#"{"id": 5}"#,
        ];
        let decoded = decoder.decode(&payloads).unwrap();
        assert_eq!(decoded.rows.num_rows(), 2);
        assert_eq!(decoded.payload_of_row, vec![0, 4]);
        let bad: Vec<usize> = decoded.bad.iter().map(|b| b.0).collect();
        assert_eq!(bad, vec![1, 2, 3]);
        assert!(decoded.bad[2].1.contains("missing required field \"id\""));
    }

    #[test]
    fn avro_datums() {
        let schema_text = r#"{"type": "record", "name": "bid", "fields": [
            {"name": "id", "type": "long"},
            {"name": "name", "type": ["null", "string"]},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
        let options = BTreeMap::from([("schema".to_string(), schema_text.to_string())]);
        let decoder = PayloadDecoder::try_new(MessageEncoding::Avro, schema(), &options).unwrap();
        let avro = apache_avro::Schema::parse_str(schema_text).unwrap();
        let mut record = apache_avro::types::Record::new(&avro).unwrap();
        record.put("id", 7i64);
        record.put(
            "name",
            apache_avro::types::Value::Union(
                1,
                Box::new(apache_avro::types::Value::String("x".into())),
            ),
        );
        record.put("ts", apache_avro::types::Value::TimestampMillis(1_000));
        let datum = apache_avro::to_avro_datum(&avro, record).unwrap();
        let payloads: Vec<&[u8]> = vec![&datum, b"\x01garbage"];
        let decoded = decoder.decode(&payloads).unwrap();
        assert_eq!(decoded.payload_of_row, vec![0]);
        assert_eq!(decoded.bad.len(), 1);
        let ts = decoded
            .rows
            .column(2)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_000_000, "millis become µs");
        assert!(
            PayloadDecoder::try_new(MessageEncoding::Avro, schema(), &BTreeMap::new()).is_err()
        );
    }

    #[test]
    fn csv_with_a_delimiter() {
        let options = BTreeMap::from([("delimiter".to_string(), ";".to_string())]);
        let decoder = PayloadDecoder::try_new(MessageEncoding::Csv, schema(), &options).unwrap();
        let payloads: Vec<&[u8]> = vec![b"1;a;2024-01-01 00:00:01", b"oops;b;", b"3;;"];
        let decoded = decoder.decode(&payloads).unwrap();
        assert_eq!(decoded.payload_of_row, vec![0, 2]);
        assert_eq!(decoded.bad.len(), 1);
    }
}
