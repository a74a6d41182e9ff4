//! Message payloads to rows: JSON and CSV, one row per message, with bad
//! messages picked out instead of failing the batch.
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
        let delimiter = match (encoding, options.get("delimiter")) {
            (MessageEncoding::Csv, Some(d)) if d.len() == 1 => d.as_bytes()[0],
            (MessageEncoding::Csv, Some(d)) => {
                return Err(EddyError::InvalidParameter(format!(
                    "ENCODE CSV delimiter must be one character, not '{d}'"
                )))
            }
            (_, None) => b',',
            (_, Some(_)) => {
                return Err(EddyError::InvalidParameter(
                    "only ENCODE CSV takes options (delimiter)".into(),
                ))
            }
        };
        if let Some(unknown) = options.keys().find(|k| k.as_str() != "delimiter") {
            return Err(EddyError::InvalidParameter(format!(
                "unknown ENCODE option {unknown}; known: delimiter (CSV)"
            )));
        }
        if encoding == MessageEncoding::Avro {
            return Err(crate::not_supported!(
                "ENCODE AVRO is not implemented yet; use JSON or CSV"
            ));
        }
        Ok(Self {
            encoding,
            decode_schema: all_nullable(&schema),
            schema,
            delimiter,
        })
    }

    /// Decodes `payloads`, one row each.
    pub fn decode(&self, payloads: &[&[u8]]) -> Result<Decoded> {
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
                return Err(crate::not_supported!("ENCODE AVRO is not implemented yet"))
            }
        };
        Ok(rows)
    }
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
    fn csv_with_a_delimiter() {
        let options = BTreeMap::from([("delimiter".to_string(), ";".to_string())]);
        let decoder = PayloadDecoder::try_new(MessageEncoding::Csv, schema(), &options).unwrap();
        let payloads: Vec<&[u8]> = vec![b"1;a;2024-01-01 00:00:01", b"oops;b;", b"3;;"];
        let decoded = decoder.decode(&payloads).unwrap();
        assert_eq!(decoded.payload_of_row, vec![0, 2]);
        assert_eq!(decoded.bad.len(), 1);
    }
}
