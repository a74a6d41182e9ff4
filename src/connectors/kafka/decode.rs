//! Message payloads to rows: JSON, CSV and Avro, one row per message, with
//! bad messages picked out instead of failing the batch.
//!
//! Avro payloads are single binary datums written with the schema given in
//! `ENCODE AVRO (schema = '...')` or `(schema.file = 'path')`; each becomes
//! a JSON object (timestamps normalized to µs) and goes the JSON way.
//!
//! JSON goes through eddy's one-pass decoder (`json.rs`), which can
//! build just the columns a reader asks for, when it takes every column's
//! type; otherwise through arrow-json (and CSV through arrow-csv), all
//! columns built: a batch of payloads is decoded in one go (the fast path).
//! When that fails, each payload is decoded alone to find the bad ones; the
//! good ones become the batch. Decoding uses an all-nullable schema so that
//! a missing field decodes; a NOT NULL column that came out null is then a
//! bad message ("missing required field"). arrow-json truncates a number
//! with a fraction into an integer column; eddy does not (PostgreSQL would
//! not either), so integer columns are decoded a second time as floats to
//! find such numbers and make their messages bad too.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringBuilder};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};

use super::json::{Decoded, JsonDecoder};
use crate::common::types::all_nullable;
use crate::connectors::format::MessageEncoding;
use crate::connectors::policy::ConnectorPolicy;
use crate::error::{EddyError, Result};

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
    /// JSON (and Avro) when every column's type is one it builds.
    json: Option<Arc<JsonDecoder>>,
}

impl PayloadDecoder {
    /// The declared columns a JSON payload's fields fill (`None` for other
    /// encodings).
    pub fn json_columns(&self) -> Option<Vec<String>> {
        (self.encoding == MessageEncoding::Json).then(|| {
            self.schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
    }

    /// A decoder of `encoding` into `schema`; `ENCODE AVRO (schema.file =
    /// ...)` reads the file only where `policy` allows.
    pub fn try_new(
        encoding: MessageEncoding,
        schema: SchemaRef,
        options: &BTreeMap<String, String>,
        policy: &ConnectorPolicy,
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
                    (None, Some(path)) => {
                        let path = policy.check_file("schema.file", path)?;
                        std::fs::read_to_string(&path).map_err(|e| {
                            EddyError::InvalidParameter(format!(
                                "cannot read Avro schema {}: {e}",
                                path.display()
                            ))
                        })?
                    }
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
        let json = match encoding {
            MessageEncoding::Json | MessageEncoding::Avro => {
                JsonDecoder::new(schema.clone()).map(Arc::new)
            }
            MessageEncoding::Csv => None,
        };
        Ok(Self {
            encoding,
            avro,
            decode_schema: all_nullable(&schema),
            schema,
            delimiter,
            json,
        })
    }

    /// This decoder with JSON decoded by arrow-json, all columns built (the
    /// path schemas the one-pass decoder does not take go; benchmarks
    /// compare the two).
    pub fn with_arrow_json(self) -> Self {
        Self { json: None, ..self }
    }

    /// Decodes `payloads`, one row each. `build` marks the columns the
    /// caller reads (`None`: all); the others may come out as placeholders
    /// (see `json.rs`). Which payloads are bad does not depend on it.
    pub fn decode(&self, payloads: &[&[u8]], build: Option<&[bool]>) -> Result<Decoded> {
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
            let mut decoded = as_json.decode(&slices, build)?;
            decoded.payload_of_row = decoded.payload_of_row.iter().map(|&p| origin[p]).collect();
            for (payload, reason) in decoded.bad.drain(..) {
                bad.push((origin[payload], reason));
            }
            bad.sort();
            decoded.bad = bad;
            return Ok(decoded);
        }
        if let (MessageEncoding::Json, Some(json)) = (self.encoding, &self.json) {
            return json.decode(payloads, build);
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
        let mut keep = vec![true; rows.num_rows()];
        if self.encoding == MessageEncoding::Json {
            for (row, reason) in self.fractions_in_integer_columns(payloads, &payload_of_row) {
                keep[row] = false;
                bad.push((payload_of_row[row], reason));
            }
        }
        // varchar(n) columns with a longer value.
        for (column, field) in self.schema.fields().iter().enumerate() {
            let Some(limit) = crate::common::types::max_chars(field) else {
                continue;
            };
            let Some(strings) = rows.column(column).as_string_opt::<i32>() else {
                continue;
            };
            for (row, kept) in keep.iter_mut().enumerate() {
                let long = strings.is_valid(row)
                    && crate::common::types::longer_than(strings.value(row), limit);
                if *kept && long {
                    *kept = false;
                    bad.push((
                        payload_of_row[row],
                        crate::common::types::too_long_reason(field),
                    ));
                }
            }
        }
        // NOT NULL columns that came out null: the field was missing.
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

    /// The rows (of the decoded `payload_of_row`) whose number in an
    /// integer column has a fraction, with the reason.
    fn fractions_in_integer_columns(
        &self,
        payloads: &[&[u8]],
        payload_of_row: &[usize],
    ) -> Vec<(usize, String)> {
        let integers: Vec<_> = self
            .schema
            .fields()
            .iter()
            .filter(|f| f.data_type().is_integer())
            .map(|f| Field::new(f.name(), DataType::Float64, true))
            .collect();
        if integers.is_empty() || payload_of_row.is_empty() {
            return vec![];
        }
        let shadow = Arc::new(Schema::new(integers));
        let decoded = (|| -> Result<RecordBatch> {
            let mut decoder = datafusion::arrow::json::ReaderBuilder::new(shadow.clone())
                .with_batch_size(payload_of_row.len())
                .build_decoder()?;
            for &payload in payload_of_row {
                decoder.decode(payloads[payload])?;
                decoder.decode(b"\n")?;
            }
            Ok(decoder
                .flush()?
                .unwrap_or_else(|| RecordBatch::new_empty(shadow.clone())))
        })();
        // Every row decoded once already; if this differs, leave it be.
        let Ok(floats) = decoded else { return vec![] };
        if floats.num_rows() != payload_of_row.len() {
            return vec![];
        }
        // The first such column of each row gives its reason.
        let mut found = BTreeMap::new();
        for (field, column) in shadow.fields().iter().zip(floats.columns()) {
            let column = column.as_primitive::<Float64Type>();
            for row in 0..column.len() {
                let value = column.value(row);
                if column.is_valid(row) && value.fract() != 0.0 {
                    found.entry(row).or_insert_with(|| {
                        format!("{value} is not an integer, for \"{}\"", field.name())
                    });
                }
            }
        }
        found.into_iter().collect()
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
            MessageEncoding::Json => self.decode_json(payloads)?,
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

impl PayloadDecoder {
    /// JSON payloads through arrow-json, except for jsonb columns: arrow-json
    /// reads no object or list into a text column, so those are read with
    /// serde_json, in jsonb form (as the one-pass decoder does).
    fn decode_json(&self, payloads: &[&[u8]]) -> Result<RecordBatch> {
        let fields = self.decode_schema.fields();
        let (jsonb, others): (Vec<usize>, Vec<usize>) =
            (0..fields.len()).partition(|&i| crate::common::types::is_json_field(&fields[i]));
        let arrow_schema = Arc::new(self.decode_schema.project(&others)?);
        let mut decoder = datafusion::arrow::json::ReaderBuilder::new(arrow_schema.clone())
            .with_batch_size(payloads.len().max(1))
            .build_decoder()?;
        // Fields differing from a column's name only in case, renamed once
        // for both readings below.
        let renamed: Vec<Option<Vec<u8>>> = payloads
            .iter()
            .map(|payload| self.keys_in_declared_case(payload))
            .collect();
        let payloads: Vec<&[u8]> = payloads
            .iter()
            .zip(&renamed)
            .map(|(payload, renamed)| renamed.as_deref().unwrap_or(payload))
            .collect();
        for payload in &payloads {
            // Each payload must be exactly one value.
            let consumed = decoder.decode(payload)?;
            if consumed != payload.len() {
                return Err(EddyError::InvalidValue(
                    "trailing data after the JSON value".into(),
                ));
            }
            decoder.decode(b"\n")?;
        }
        let decoded = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(arrow_schema.clone()));
        if jsonb.is_empty() {
            return Ok(decoded);
        }
        let mut builders: Vec<StringBuilder> = jsonb.iter().map(|_| StringBuilder::new()).collect();
        for payload in &payloads {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(payload)
                    .map_err(|e| EddyError::InvalidValue(format!("not a JSON object: {e}")))?;
            for (builder, &column) in builders.iter_mut().zip(&jsonb) {
                match object.get(fields[column].name()) {
                    None | Some(serde_json::Value::Null) => builder.append_null(),
                    Some(value) => builder.append_value(crate::common::jsonb::render(value)),
                }
            }
        }
        let mut jsonb_columns = jsonb.iter().zip(builders);
        let mut other_columns = decoded.columns().iter();
        let columns = (0..fields.len())
            .map(|i| match jsonb.contains(&i) {
                true => {
                    let (_, mut builder) = jsonb_columns.next().expect("one builder per column");
                    Arc::new(builder.finish()) as datafusion::arrow::array::ArrayRef
                }
                false => other_columns
                    .next()
                    .expect("one decoded column each")
                    .clone(),
            })
            .collect();
        Ok(RecordBatch::try_new(self.decode_schema.clone(), columns)?)
    }

    /// `payload` with each top-level field whose name matches a declared
    /// column only ignoring ASCII case renamed to the column's name, where
    /// no field has the column's exact name (what the one-pass decoder
    /// does); `None` when there is nothing to rename. The names are found
    /// by a scan of strings and brackets, not a parse, so that payloads
    /// arrow-json takes leniently (missing commas) are renamed too; ASCII
    /// case folding keeps a name's length, so it is renamed in place.
    fn keys_in_declared_case(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let keys = top_level_keys(payload);
        let fields = self.decode_schema.fields();
        let mut renamed: Option<Vec<u8>> = None;
        for field in fields.iter() {
            let name = field.name();
            if keys.iter().any(|(_, key)| key == name) {
                continue;
            }
            for ((start, end), key) in &keys {
                // A name written with escapes cannot be renamed in place.
                let plain = end - start == key.len();
                if plain && key.eq_ignore_ascii_case(name) {
                    renamed.get_or_insert_with(|| payload.to_vec())[*start..*end]
                        .copy_from_slice(name.as_bytes());
                }
            }
        }
        renamed
    }
}

/// The names of a JSON object's top-level fields (strings at depth 1
/// followed by a colon), unescaped, with their byte ranges between the
/// quotes.
fn top_level_keys(payload: &[u8]) -> Vec<((usize, usize), String)> {
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < payload.len() {
        match payload[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let start = i + 1;
                let mut end = start;
                while end < payload.len() && payload[end] != b'"' {
                    end += if payload[end] == b'\\' { 2 } else { 1 };
                }
                if end >= payload.len() {
                    break;
                }
                let after = payload[end + 1..].iter().find(|b| !b.is_ascii_whitespace());
                let key = match payload[start..end].contains(&b'\\') {
                    true => serde_json::from_slice::<String>(&payload[start - 1..end + 1]).ok(),
                    false => std::str::from_utf8(&payload[start..end])
                        .ok()
                        .map(String::from),
                };
                if let Some(key) = key.filter(|_| depth == 1 && after == Some(&b':')) {
                    keys.push(((start, end), key));
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    keys
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

    fn json_decoder(schema: SchemaRef) -> PayloadDecoder {
        PayloadDecoder::try_new(
            MessageEncoding::Json,
            schema,
            &BTreeMap::new(),
            &ConnectorPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn json_bad_messages_are_picked_out() {
        let decoder = json_decoder(schema());
        let payloads: Vec<&[u8]> = vec![
            br#"{"id": 1, "name": "a", "ts": "2024-01-01 00:00:01"}"#,
            br#"{"id": "x"}"#,
            b"not json",
            br#"{"name": "no id"}"#,
            br#"{"id": 5}"#,
        ];
        let decoded = decoder.decode(&payloads, None).unwrap();
        assert_eq!(decoded.rows.num_rows(), 2);
        assert_eq!(decoded.payload_of_row, vec![0, 4]);
        let bad: Vec<usize> = decoded.bad.iter().map(|b| b.0).collect();
        assert_eq!(bad, vec![1, 2, 3]);
        assert!(decoded.bad[2].1.contains("missing required field \"id\""));
    }

    /// A number with a fraction is not an integer, whichever decoder reads
    /// it (arrow-json alone would truncate 7.5 to 7); whole ones are.
    #[test]
    fn fractions_do_not_fill_integer_columns() {
        let one_pass = json_decoder(schema());
        let payloads: Vec<&[u8]> = vec![
            br#"{"id": 7.5}"#,
            br#"{"id": 7.0}"#,
            br#"{"id": 1e3}"#,
            br#"{"id": -0.25}"#,
            br#"{"id": 9}"#,
        ];
        for decoder in [one_pass.clone(), one_pass.with_arrow_json()] {
            let decoded = decoder.decode(&payloads, None).unwrap();
            assert_eq!(decoded.payload_of_row, vec![1, 2, 4]);
            let ids = decoded
                .rows
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            assert_eq!(ids.values().to_vec(), vec![7, 1000, 9]);
            let bad: Vec<usize> = decoded.bad.iter().map(|b| b.0).collect();
            assert_eq!(bad, vec![0, 3], "{:?}", decoded.bad);
            assert!(decoded.bad[0].1.contains("7.5"), "{:?}", decoded.bad);
        }
    }

    /// A string longer than its varchar(n) column is a bad message, by
    /// characters (not bytes), whichever decoder reads it and whether the
    /// column is built or not.
    #[test]
    fn strings_longer_than_their_column_are_bad() {
        use datafusion::sql::sqlparser::ast;
        let varchar = ast::DataType::Varchar(Some(ast::CharacterLength::IntegerLength {
            length: 3,
            unit: None,
        }));
        let schema = schema_of(vec![
            Field::new("id", DataType::Int64, false),
            crate::common::types::column_field("code", &varchar, true).unwrap(),
        ]);
        let one_pass = json_decoder(schema.clone());
        assert!(one_pass.json.is_some());
        let payloads: Vec<&[u8]> = vec![
            br#"{"id": 1, "code": "abc"}"#,
            br#"{"id": 2, "code": "abcd"}"#,
            br#"{"id": 3, "code": "\u00e9\u00e9\u00e9"}"#,
            "{\"id\": 4, \"code\": \"\u{e9}\u{e9}\u{e9}\u{e9}\"}".as_bytes(),
            br#"{"id": 5}"#,
        ];
        for (decoder, build) in [
            (one_pass.clone(), None),
            (one_pass.clone(), Some(&[true, false][..])),
            (one_pass.with_arrow_json(), None),
        ] {
            let decoded = decoder.decode(&payloads, build).unwrap();
            assert_eq!(decoded.payload_of_row, vec![0, 2, 4], "{:?}", decoded.bad);
            assert!(
                decoded.bad[0].1.contains("character varying(3)"),
                "{:?}",
                decoded.bad
            );
        }
    }

    /// Every column type the one-pass JSON decoder builds, NOT NULL too.
    fn all_types() -> SchemaRef {
        schema_of(vec![
            Field::new("b", DataType::Boolean, true),
            Field::new("i16", DataType::Int16, true),
            Field::new("i32", DataType::Int32, true),
            Field::new("id", DataType::Int64, false),
            Field::new("f32", DataType::Float32, true),
            Field::new("f64", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new(
                "tz",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ])
    }

    /// Payloads in and around JSON: good objects, and every way arrow-json
    /// is lenient or strict about them.
    fn generated_payloads(count: usize, seed: u64) -> Vec<Vec<u8>> {
        const VALUES: &[&str] = &[
            "0",
            "-1",
            "1.5",
            "1e3",
            "32767",
            "32768",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "1-2",
            "--1",
            "1e",
            "01",
            "1E+2",
            "-0.0",
            "+1",
            ".5",
            "1.0e400",
            "19723",
            r#""abc""#,
            r#""12""#,
            r#"" 12 ""#,
            r#""1.5""#,
            r#""-7""#,
            r#""2024-01-01T00:00:00.001""#,
            r#""2024-01-01 00:00:00+02:00""#,
            r#""2024-01-01T10:11:12Z""#,
            r#""2024-02-30""#,
            r#""2024-01-01""#,
            r#""2024-01-01T25:00:00""#,
            r#""true""#,
            r#""a\nb""#,
            r#""\u00e9""#,
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\ude00\ud83d""#,
            r#""\x""#,
            r#""\u12""#,
            "\"\u{e9}t\u{e9}\"",
            r#""\"quoted\"""#,
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "{}",
            r#"{"a": [1, {"b": null}]}"#,
            "[1, 2,]",
            "[]",
            "[1 2]",
            r#"{"a" 1}"#,
            "[[[[]]]]",
            r#"{"a":{"b":{"c":"\u0041"}}}"#,
            "[",
            "{",
            "\"open",
            r#""2024-02-29T12:00:00""#,
            r#""2023-02-29T00:00:00""#,
            r#""2024-12-31T23:59:59.999999999""#,
            r#""2024-01-01T00:00:60""#,
            r#""2024-01-01T00:60:00""#,
            r#""2024-01-01t00:00:00""#,
            r#""2024-01-01 00:00:00.""#,
            r#""2024-01-01T00:00:00.1234567891""#,
            r#""0000-01-01T00:00:00""#,
            r#""1969-12-31T23:59:59.5""#,
            r#""2024-04-31T00:00:00""#,
            r#""2024-13-01T00:00:00""#,
            r#""2100-02-29T00:00:00""#,
            r#""2000-02-29T00:00:00.000001""#,
            r#""2024-1-01T00:00:00""#,
            r#""2024-01-01T00:00:00.5+01:00""#,
            r#""2024-01-01T00:00:00Z""#,
            r#""+2024-01-01T00:00:00""#,
        ];
        const KEYS: &[&str] = &[
            "b",
            "i16",
            "i32",
            "id",
            "f32",
            "f64",
            "s",
            "d",
            "ts",
            "tz",
            "other",
            "ID",
            r#"i\u0064"#,
        ];
        let mut random = crate::stream::testing::random(seed);
        let mut next = |n: usize| random(n as u64) as usize;
        (0..count)
            .map(|_| {
                let mut text = String::new();
                match next(40) {
                    0 => return b"".to_vec(),
                    1 => return b"not json".to_vec(),
                    // Not UTF-8: in a short string, in a long one (past
                    // the 16 bytes the string search takes at a time), in a
                    // key, outside any string.
                    2 => {
                        const NOT_UTF8: &[&[u8]] = &[
                            b"{\"id\": 1, \"s\": \"\xff\"}",
                            b"{\"id\": 1, \"s\": \"abcdefghijklmnopqrstuvwxyz\xffabcdefghijklmnopqrstuvwxyz\"}",
                            b"{\"id\": 1, \"s\": \"abcdefghijklmnopqrstuvwxyz\xc3abcdefghijklmnopqrstuvwxyz\"}",
                            b"{\"id\": 1, \"\xe9\": 2}",
                            b"{\"id\": 1 \xff}",
                        ];
                        return NOT_UTF8[next(NOT_UTF8.len())].to_vec();
                    }
                    3 => text.push_str("  "),
                    4 => text.push('['),
                    _ => {}
                }
                text.push('{');
                // The NOT NULL field, mostly there.
                let with_id = next(5) != 0;
                // The key last written, by its index in KEYS: half of the
                // keys follow the schema's order (the decoder's fast path
                // for the expected key), the others are drawn at random.
                let mut previous = None;
                if with_id {
                    previous = Some(3);
                    text.push_str(&format!("\"id\": {}", next(1000)));
                }
                for field in 0..next(8) {
                    let separator = match next(12) {
                        0 => "",
                        1 => ",,",
                        2 => " , ",
                        _ if field == 0 && !with_id => "",
                        _ => ",",
                    };
                    text.push_str(separator);
                    // Mostly well-typed values, so that most rows decode.
                    let index = match (next(2), previous) {
                        (0, Some(previous)) => (previous + 1) % 10,
                        _ => next(KEYS.len()),
                    };
                    previous = Some(index);
                    let key = KEYS[index];
                    let value = match (next(6), key) {
                        (0, _) => VALUES[next(VALUES.len())].to_string(),
                        (_, "b") => ["true", "false"][next(2)].to_string(),
                        // Long strings, with escapes anywhere (before, in
                        // and across the 16 bytes the string search takes
                        // at a time).
                        (_, "s") if next(3) == 0 => {
                            const PIECES: &[&str] = &[
                                "a",
                                "bc",
                                r"\\",
                                r#"\""#,
                                r"\n",
                                r"\u00e9",
                                "\u{e9}",
                                "xyz0123456789",
                            ];
                            let pieces = next(70);
                            let mut string = String::from("\"");
                            for _ in 0..pieces {
                                // Now and then a bad escape.
                                string.push_str(match next(300) {
                                    0 => r"\q",
                                    _ => PIECES[next(PIECES.len())],
                                });
                            }
                            string.push('"');
                            string
                        }
                        (_, "s") => format!("\"s{}\"", next(100)),
                        (_, "ts" | "tz") => format!(
                            "\"2024-01-0{}T00:00:0{}.{}\"",
                            1 + next(9),
                            next(10),
                            next(1000)
                        ),
                        (_, "d") => ["\"2024-03-01\"", "19000"][next(2)].to_string(),
                        _ => format!("{}", next(1000)),
                    };
                    text.push_str(&format!("\"{key}\"{}:{value}", [" ", ""][next(2)]));
                }
                text.push('}');
                match next(30) {
                    0 => text.push_str(" {}"),
                    1 => text.push_str(" x"),
                    2 => text.push('\n'),
                    3 => {
                        text.pop();
                    }
                    _ => {}
                }
                text.into_bytes()
            })
            .collect()
    }

    #[test]
    fn one_pass_json_agrees_with_arrow_json() {
        let one_pass = json_decoder(all_types());
        assert!(one_pass.json.is_some(), "takes every column type");
        let arrow = one_pass.clone().with_arrow_json();
        let mut accepted = 0;
        for seed in 1..=40u64 {
            let payloads = generated_payloads(250, seed);
            let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let expected = arrow.decode(&payloads, None).unwrap();
            let actual = one_pass.decode(&payloads, None).unwrap();
            let bad = |d: &Decoded| d.bad.iter().map(|b| b.0).collect::<Vec<_>>();
            for (index, payload) in payloads.iter().enumerate() {
                let verdict = |d: &Decoded| d.payload_of_row.contains(&index);
                assert_eq!(
                    verdict(&actual),
                    verdict(&expected),
                    "payload {}: {:?} vs {:?}",
                    String::from_utf8_lossy(payload),
                    actual.bad.iter().find(|b| b.0 == index),
                    expected.bad.iter().find(|b| b.0 == index),
                );
            }
            assert_eq!(bad(&actual), bad(&expected));
            assert_eq!(actual.rows, expected.rows, "seed {seed}");
            accepted += actual.rows.num_rows();

            // Building a few columns: the same verdicts, the same values in
            // the columns built.
            let build = [
                false, true, false, true, false, false, true, false, true, false,
            ];
            let projected = one_pass.decode(&payloads, Some(&build)).unwrap();
            assert_eq!(bad(&projected), bad(&expected));
            for (column, built) in build.iter().enumerate() {
                if *built {
                    assert_eq!(projected.rows.column(column), expected.rows.column(column));
                }
            }
        }
        // The generator makes both kinds in earnest.
        assert!(
            accepted > 2000 && accepted < 8000,
            "{accepted} of 10000 accepted"
        );
    }

    #[test]
    fn columns_not_built_are_placeholders_of_their_type() {
        let decoder = json_decoder(all_types());
        let payloads: Vec<&[u8]> = vec![br#"{"id": 7, "s": "x", "ts": "2024-01-01T00:00:00"}"#];
        let build = [false; 10];
        let decoded = decoder.decode(&payloads, Some(&build)).unwrap();
        assert_eq!(decoded.rows.schema(), all_types());
        assert_eq!(decoded.rows.column(6).null_count(), 1, "nullable: null");
        assert_eq!(decoded.rows.column(3).null_count(), 0, "NOT NULL: zero");
        // A NOT NULL field that is missing is bad whether built or not.
        let payloads: Vec<&[u8]> = vec![br#"{"s": "x"}"#];
        let decoded = decoder.decode(&payloads, Some(&build)).unwrap();
        assert!(decoded.bad[0].1.contains("missing required field \"id\""));
    }

    #[test]
    fn avro_datums() {
        let schema_text = r#"{"type": "record", "name": "bid", "fields": [
            {"name": "id", "type": "long"},
            {"name": "name", "type": ["null", "string"]},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
        let options = BTreeMap::from([("schema".to_string(), schema_text.to_string())]);
        let decoder = PayloadDecoder::try_new(
            MessageEncoding::Avro,
            schema(),
            &options,
            &ConnectorPolicy::default(),
        )
        .unwrap();
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
        let decoded = decoder.decode(&payloads, None).unwrap();
        assert_eq!(decoded.payload_of_row, vec![0]);
        assert_eq!(decoded.bad.len(), 1);
        let ts = decoded
            .rows
            .column(2)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_000_000, "millis become µs");
        assert!(PayloadDecoder::try_new(
            MessageEncoding::Avro,
            schema(),
            &BTreeMap::new(),
            &ConnectorPolicy::default()
        )
        .is_err());
    }

    #[test]
    fn csv_with_a_delimiter() {
        let options = BTreeMap::from([("delimiter".to_string(), ";".to_string())]);
        let decoder = PayloadDecoder::try_new(
            MessageEncoding::Csv,
            schema(),
            &options,
            &ConnectorPolicy::default(),
        )
        .unwrap();
        let payloads: Vec<&[u8]> = vec![b"1;a;2024-01-01 00:00:01", b"oops;b;", b"3;;"];
        let decoded = decoder.decode(&payloads, None).unwrap();
        assert_eq!(decoded.payload_of_row, vec![0, 2]);
        assert_eq!(decoded.bad.len(), 1);
    }
}
