//! JSON objects to Arrow columns in one pass: the Kafka source's
//! `ENCODE JSON` (and `ENCODE AVRO`, which goes through JSON).
//!
//! arrow-json's decoder copies every string and number of a batch into a
//! tape first, then builds every column of the schema from the tape. A view
//! mostly reads a few of a topic's fields (Nexmark q8 reads 3 of the 18
//! fields of persons and auctions, and the long `extra` strings not at all),
//! so this decoder scans each payload once, noting where the value of each
//! declared field lies, then checks every declared field's value against
//! its column's type but builds only the columns it is asked for; a column
//! not asked for comes out as a placeholder (nulls, or zeros under NOT
//! NULL) that nothing downstream reads.
//!
//! Invariants:
//! - Whether a payload is accepted never depends on which columns are
//!   built: every declared field is checked. Views reading different
//!   columns of one topic therefore agree on its bad messages.
//! - A payload is accepted exactly when arrow-json accepts it as one row of
//!   the all-nullable schema, with the same values (the tests run both over
//!   generated payloads); this includes arrow-json's leniencies: commas
//!   between fields may be missing or doubled, a number is any run of
//!   `0-9 + - . e E` until its column parses it, a numeric string fills a
//!   numeric column, a number with an exponent fills an integer column
//!   when it is whole (a fraction is a bad message: see decode.rs),
//!   the last of repeated fields wins (the earlier ones are not checked).
//! - A row is appended to the columns only once all its fields checked out;
//!   a bad payload leaves nothing behind.
//!
//! Schemas with a column type not listed in [`ColumnType`] are decoded by
//! arrow-json (see `decode.rs`).

use std::sync::Arc;

use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    make_array, new_null_array, Array, ArrayRef, BooleanBuilder, PrimitiveBuilder, RecordBatch,
    RecordBatchOptions, StringBuilder,
};
use datafusion::arrow::compute::kernels::cast_utils::{string_to_datetime, Parser};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Field, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use num_traits::NumCast;

use crate::error::Result;

/// Decoded rows, and the payloads that could not be decoded.
pub struct Decoded {
    pub rows: RecordBatch,
    /// For each row, the index of its payload.
    pub payload_of_row: Vec<usize>,
    /// `(payload index, reason)`.
    pub bad: Vec<(usize, String)>,
}

/// The column types this decoder builds (the types of eddy's SQL types that
/// JSON carries as numbers, strings and booleans).
#[derive(Debug, Clone)]
enum ColumnType {
    Boolean,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    /// jsonb: any JSON value, kept as text in jsonb form
    /// (`common::jsonb`).
    Jsonb,
    Date32,
    /// Microseconds; a string without an offset is read in `zone` (UTC
    /// when the column has none). `naive_utc`: that is UTC, so the common
    /// form is parsed without arrow's general parser.
    Timestamp {
        zone: Option<Tz>,
        naive_utc: bool,
    },
}

/// Whether naive timestamps of a column are read as UTC (no zone, or the
/// `+00:00` eddy gives TIMESTAMP WITH TIME ZONE).
fn reads_naive_as_utc(zone: &Option<Tz>) -> bool {
    match zone {
        None => true,
        Some(zone) => {
            use chrono::{Offset, TimeZone};
            // A fixed zone: the same offset in winter and in summer.
            let winter = chrono::DateTime::UNIX_EPOCH.naive_utc();
            let summer = winter + chrono::Days::new(180);
            [winter, summer]
                .iter()
                .all(|t| zone.offset_from_utc_datetime(t).fix().local_minus_utc() == 0)
        }
    }
}

impl ColumnType {
    fn of(field: &Field) -> Option<Self> {
        Some(match field.data_type() {
            DataType::Utf8 if crate::common::types::is_json_field(field) => Self::Jsonb,
            DataType::Boolean => Self::Boolean,
            DataType::Int16 => Self::Int16,
            DataType::Int32 => Self::Int32,
            DataType::Int64 => Self::Int64,
            DataType::Float32 => Self::Float32,
            DataType::Float64 => Self::Float64,
            DataType::Utf8 => Self::Utf8,
            DataType::Date32 => Self::Date32,
            DataType::Timestamp(TimeUnit::Microsecond, zone) => {
                let zone = match zone {
                    Some(zone) => Some(zone.parse().ok()?),
                    None => None,
                };
                Self::Timestamp {
                    naive_utc: reads_naive_as_utc(&zone),
                    zone,
                }
            }
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct Column {
    name: Box<[u8]>,
    /// The name followed by the quote that closes it in a payload, when the
    /// name holds no `"` or `\\`: a key that starts with these bytes is
    /// this name, unescaped (the first quote or backslash of the key is the
    /// closing quote).
    plain_key: Option<Box<[u8]>>,
    column_type: ColumnType,
    /// NOT NULL: a missing or null field makes the payload bad.
    required: bool,
    /// `varchar(n)`: a longer string makes the payload bad (why, then).
    max_chars: Option<(usize, String)>,
}

/// Decodes payloads that are each one JSON object into rows of a schema.
#[derive(Debug)]
pub struct JsonDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
}

/// What kind of JSON value a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `escaped`: it has backslash escapes (its bytes are not its text).
    String {
        escaped: bool,
    },
    Number,
    True,
    False,
    Null,
    /// An object or a list (only a jsonb column takes one).
    Nested,
}

/// Where a field's value lies in its payload: for a string, the bytes
/// between the quotes.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    kind: Kind,
}

/// A field's value, checked against its column's type.
#[derive(Debug, Clone, Copy)]
enum Value {
    Null,
    Boolean(bool),
    /// Integers, dates (days) and timestamps (µs).
    Int(i64),
    Float32(f32),
    Float64(f64),
    /// Text at these bytes of the payload.
    Text(usize, usize),
    /// Text at these bytes of the row's unescaped-text buffer.
    Unescaped(usize, usize),
}

impl Value {
    /// The text of a `Text` or `Unescaped` value ("" for others).
    fn text<'a>(self, payload: &'a str, unescaped: &'a str) -> &'a str {
        match self {
            Self::Text(start, end) => &payload[start..end],
            Self::Unescaped(start, end) => &unescaped[start..end],
            _ => "",
        }
    }
}

/// A column being built for one batch.
enum Builder {
    /// Not asked for: its values are checked, not kept.
    Skipped,
    Boolean(BooleanBuilder),
    Int16(PrimitiveBuilder<Int16Type>),
    Int32(PrimitiveBuilder<Int32Type>),
    Int64(PrimitiveBuilder<Int64Type>),
    Float32(PrimitiveBuilder<Float32Type>),
    Float64(PrimitiveBuilder<Float64Type>),
    Utf8(StringBuilder),
    Date32(PrimitiveBuilder<Date32Type>),
    Timestamp(PrimitiveBuilder<TimestampMicrosecondType>),
}

impl Builder {
    fn new(column_type: &ColumnType, capacity: usize) -> Self {
        match column_type {
            ColumnType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Int16 => Self::Int16(PrimitiveBuilder::with_capacity(capacity)),
            ColumnType::Int32 => Self::Int32(PrimitiveBuilder::with_capacity(capacity)),
            ColumnType::Int64 => Self::Int64(PrimitiveBuilder::with_capacity(capacity)),
            ColumnType::Float32 => Self::Float32(PrimitiveBuilder::with_capacity(capacity)),
            ColumnType::Float64 => Self::Float64(PrimitiveBuilder::with_capacity(capacity)),
            ColumnType::Utf8 | ColumnType::Jsonb => {
                Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnType::Date32 => Self::Date32(PrimitiveBuilder::with_capacity(capacity)),
            ColumnType::Timestamp { .. } => {
                Self::Timestamp(PrimitiveBuilder::with_capacity(capacity))
            }
        }
    }

    /// Appends a value that [`JsonDecoder::value`] checked for this
    /// column's type.
    fn append(&mut self, value: Value, payload: &str, unescaped: &str) {
        fn int<T: ArrowPrimitiveType>(builder: &mut PrimitiveBuilder<T>, value: Value)
        where
            T::Native: NumCast,
        {
            match value {
                Value::Int(v) => builder.append_option(NumCast::from(v)),
                _ => builder.append_null(),
            }
        }
        match self {
            Self::Skipped => {}
            Self::Boolean(b) => match value {
                Value::Boolean(v) => b.append_value(v),
                _ => b.append_null(),
            },
            Self::Int16(b) => int(b, value),
            Self::Int32(b) => int(b, value),
            Self::Int64(b) => int(b, value),
            Self::Date32(b) => int(b, value),
            Self::Timestamp(b) => int(b, value),
            Self::Float32(b) => match value {
                Value::Float32(v) => b.append_value(v),
                _ => b.append_null(),
            },
            Self::Float64(b) => match value {
                Value::Float64(v) => b.append_value(v),
                _ => b.append_null(),
            },
            Self::Utf8(b) => match value {
                Value::Text(..) | Value::Unescaped(..) => {
                    b.append_value(value.text(payload, unescaped))
                }
                _ => b.append_null(),
            },
        }
    }

    fn finish(self, data_type: &DataType) -> Option<ArrayRef> {
        Some(match self {
            Self::Skipped => return None,
            Self::Boolean(mut b) => Arc::new(b.finish()),
            Self::Int16(mut b) => Arc::new(b.finish()),
            Self::Int32(mut b) => Arc::new(b.finish()),
            Self::Int64(mut b) => Arc::new(b.finish()),
            Self::Float32(mut b) => Arc::new(b.finish()),
            Self::Float64(mut b) => Arc::new(b.finish()),
            Self::Utf8(mut b) => Arc::new(b.finish()),
            Self::Date32(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish().with_data_type(data_type.clone())),
        })
    }
}

impl JsonDecoder {
    /// A decoder for `schema`, or `None` when a column has a type it does
    /// not build.
    pub fn new(schema: SchemaRef) -> Option<Self> {
        let columns = schema
            .fields()
            .iter()
            .map(|field| {
                let name = field.name().as_bytes();
                // Only ASCII names: a payload whose bytes the scan saw are
                // all ASCII is valid UTF-8 without another pass.
                let plain = name.is_ascii() && !name.iter().any(|&b| b == b'"' || b == b'\\');
                Some(Column {
                    name: name.into(),
                    plain_key: plain.then(|| [name, b"\""].concat().into()),
                    column_type: ColumnType::of(field)?,
                    required: !field.is_nullable(),
                    max_chars: crate::common::types::max_chars(field)
                        .map(|limit| (limit, crate::common::types::too_long_reason(field))),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { schema, columns })
    }

    /// Decodes `payloads`, one row each, building the columns `build` marks
    /// (all when `None`).
    pub fn decode(&self, payloads: &[&[u8]], build: Option<&[bool]>) -> Result<Decoded> {
        let mut builders: Vec<Builder> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| match build {
                Some(build) if !build.get(i).copied().unwrap_or(true) => Builder::Skipped,
                _ => Builder::new(&column.column_type, payloads.len()),
            })
            .collect();
        let built: Vec<bool> = builders
            .iter()
            .map(|b| !matches!(b, Builder::Skipped))
            .collect();
        let mut spans: Vec<Option<Span>> = vec![None; self.columns.len()];
        let mut values: Vec<Value> = vec![Value::Null; self.columns.len()];
        let mut unescaped = String::new();
        let mut dates = LastDate::default();
        let mut payload_of_row = Vec::with_capacity(payloads.len());
        let mut bad = Vec::new();
        for (index, payload) in payloads.iter().enumerate() {
            spans.fill(None);
            unescaped.clear();
            let checked = self
                .scan(payload, &mut spans)
                .and_then(|all_ascii| {
                    let text = match all_ascii {
                        true => {
                            debug_assert!(std::str::from_utf8(payload).is_ok());
                            // SAFETY: the scan accepted the payload and saw
                            // every byte of it (the string search flags a
                            // chunk with a byte >= 0x80, all else is matched
                            // against ASCII syntax), none above 0x7F: ASCII
                            // is valid UTF-8.
                            unsafe { std::str::from_utf8_unchecked(payload) }
                        }
                        false => std::str::from_utf8(payload).map_err(|_| not_utf8())?,
                    };
                    for (i, column) in self.columns.iter().enumerate() {
                        values[i] = self.value(
                            column,
                            spans[i],
                            built[i],
                            text,
                            &mut unescaped,
                            &mut dates,
                        )?;
                    }
                    Ok(text)
                })
                // Not UTF-8 is the reason given first, as arrow-json does.
                .map_err(|bad| match std::str::from_utf8(payload) {
                    Ok(_) => bad,
                    Err(_) => not_utf8(),
                });
            match checked {
                Ok(text) => {
                    for (builder, value) in builders.iter_mut().zip(&values) {
                        builder.append(*value, text, &unescaped);
                    }
                    payload_of_row.push(index);
                }
                Err(Bad(reason)) => bad.push((index, *reason)),
            }
        }
        let rows = payload_of_row.len();
        let columns = builders
            .into_iter()
            .zip(self.schema.fields())
            .map(|(builder, field)| {
                builder
                    .finish(field.data_type())
                    .unwrap_or_else(|| placeholder(field.data_type(), field.is_nullable(), rows))
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let rows = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(Decoded {
            rows,
            payload_of_row,
            bad,
        })
    }

    /// Notes in `spans` where each declared field's value lies; checks the
    /// payload is one JSON object and nothing else. `Ok(true)`: every byte
    /// of it is ASCII (and so it is UTF-8); `Ok(false)`: maybe not.
    fn scan(&self, payload: &[u8], spans: &mut [Option<Span>]) -> Result<bool, Bad> {
        let mut scanner = Scanner {
            bytes: payload,
            pos: 0,
            non_ascii: false,
        };
        scanner.skip_whitespace();
        match scanner.peek() {
            Some(b'{') => scanner.pos += 1,
            Some(_) => return Err("expected a JSON object".into()),
            None => return Err("expected one record, found 0".into()),
        }
        // Fields mostly come in the same order as the columns: try the
        // column after the last one matched first.
        let mut guess = 0;
        let mut key_text = String::new();
        // Fields whose names match a column's only ignoring ASCII case:
        // they fill the columns no field matched exactly (as RisingWave
        // reads JSON), the last such field winning.
        let mut differing_in_case: Vec<(usize, Span)> = Vec::new();
        loop {
            scanner.skip_whitespace_and_commas();
            match scanner.next("parsing object")? {
                b'"' => {
                    // The expected key, compared in place: no search for
                    // its end and no lookup by name.
                    let expected = self.columns.get(guess).and_then(|c| c.plain_key.as_deref());
                    if let Some(key) = expected.filter(|k| payload[scanner.pos..].starts_with(k)) {
                        scanner.pos += key.len();
                        scanner.colon()?;
                        spans[guess] = Some(scanner.value()?);
                        guess += 1;
                        continue;
                    }
                    let (start, end, escaped) = scanner.string()?;
                    scanner.colon()?;
                    let span = scanner.value()?;
                    let key = if escaped {
                        key_text.clear();
                        let raw =
                            std::str::from_utf8(&payload[start..end]).map_err(|_| not_utf8())?;
                        unescape(raw, &mut key_text)?;
                        key_text.as_bytes()
                    } else {
                        &payload[start..end]
                    };
                    if let Some(column) = self.column_named(key, guess) {
                        spans[column] = Some(span);
                        guess = column + 1;
                    } else if let Some(column) = self.column_named_ignoring_case(key) {
                        differing_in_case.push((column, span));
                    }
                }
                b'}' => break,
                other => return Err(unexpected(other, "parsing object")),
            }
        }
        scanner.skip_whitespace();
        if scanner.peek().is_some() {
            return Err("trailing data after the JSON object".into());
        }
        // Applied last first, each to a column nothing filled yet.
        for (column, span) in differing_in_case.into_iter().rev() {
            if spans[column].is_none() {
                spans[column] = Some(span);
            }
        }
        Ok(!scanner.non_ascii)
    }

    fn column_named_ignoring_case(&self, key: &[u8]) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(key))
    }

    fn column_named(&self, key: &[u8], guess: usize) -> Option<usize> {
        if self.columns.get(guess).is_some_and(|c| *c.name == *key) {
            return Some(guess);
        }
        self.columns.iter().position(|c| *c.name == *key)
    }

    /// The value of `column` at `span`, checked against its type.
    ///
    /// Inlined into its one caller: returned through memory, the result
    /// was read back with wider loads than the stores that wrote it, which
    /// stalls store-to-load forwarding (a fifth of the decoder's own time).
    #[inline(always)]
    fn value(
        &self,
        column: &Column,
        span: Option<Span>,
        built: bool,
        payload: &str,
        unescaped: &mut String,
        dates: &mut LastDate,
    ) -> Result<Value, Bad> {
        let Some(span) = span.filter(|s| s.kind != Kind::Null) else {
            if column.required {
                return Err(format!(
                    "missing required field \"{}\"",
                    String::from_utf8_lossy(&column.name)
                )
                .into());
            }
            return Ok(Value::Null);
        };
        let raw = &payload[span.start..span.end];
        // A string value's text (unescaped into `unescaped` if need be).
        let mut text = |escaped: bool| -> Result<Value, Bad> {
            if !escaped {
                return Ok(Value::Text(span.start, span.end));
            }
            let start = unescaped.len();
            unescape(raw, unescaped)?;
            Ok(Value::Unescaped(start, unescaped.len()))
        };
        let mismatch = || {
            let shown: String = raw.chars().take(40).collect();
            Bad::from(format!(
                "expected {} for \"{}\", found {shown}",
                type_name(&column.column_type),
                String::from_utf8_lossy(&column.name)
            ))
        };
        let unparsable = |s: &str| {
            Bad::from(format!(
                "failed to parse \"{s}\" as {} for \"{}\"",
                type_name(&column.column_type),
                String::from_utf8_lossy(&column.name)
            ))
        };
        match (&column.column_type, span.kind) {
            // Any value, checked as JSON (the scan is lenient about commas)
            // whether built or not, kept in jsonb form.
            (ColumnType::Jsonb, kind) => {
                let json = match kind {
                    // The quotes around a string are part of its JSON.
                    Kind::String { .. } => &payload[span.start - 1..span.end + 1],
                    _ => raw,
                };
                let normalized = crate::common::jsonb::normalize(json).map_err(|e| {
                    Bad::from(format!(
                        "invalid JSON for \"{}\": {e}",
                        String::from_utf8_lossy(&column.name)
                    ))
                })?;
                if !built {
                    return Ok(Value::Null);
                }
                let start = unescaped.len();
                unescaped.push_str(&normalized);
                Ok(Value::Unescaped(start, unescaped.len()))
            }
            (ColumnType::Boolean, Kind::True) => Ok(Value::Boolean(true)),
            (ColumnType::Boolean, Kind::False) => Ok(Value::Boolean(false)),
            // varchar(n): the length is checked whether built or not (an
            // escaped string not built is unescaped for it, in the batch's
            // scratch text).
            (ColumnType::Utf8, Kind::String { escaped }) if column.max_chars.is_some() => {
                let value = text(escaped)?;
                let s = value.text(payload, unescaped);
                if let Some((limit, reason)) = &column.max_chars {
                    if crate::common::types::longer_than(s, *limit) {
                        return Err(Bad::from(reason.clone()));
                    }
                }
                Ok(if built { value } else { Value::Null })
            }
            // Not built: the escapes were checked by the scan.
            (ColumnType::Utf8, Kind::String { .. }) if !built => Ok(Value::Null),
            (ColumnType::Utf8, Kind::String { escaped }) => text(escaped),
            (ColumnType::Timestamp { zone, naive_utc }, Kind::String { escaped }) => {
                let s = text(escaped)?.text(payload, unescaped);
                if let Some(micros) = naive_utc.then(|| naive_utc_micros(s, dates)).flatten() {
                    return Ok(Value::Int(micros));
                }
                let parsed = match zone {
                    Some(zone) => string_to_datetime(zone, s).map(|t| t.timestamp_micros()),
                    None => string_to_datetime(&chrono::Utc, s).map(|t| t.timestamp_micros()),
                };
                parsed
                    .map(Value::Int)
                    .map_err(|e| Bad::from(format!("{}: {e}", unparsable(s).0)))
            }
            (ColumnType::Timestamp { .. }, Kind::Number) => {
                lexical_core::parse::<i64>(raw.as_bytes())
                    .or_else(|_| lexical_core::parse::<f64>(raw.as_bytes()).map(|x| x as i64))
                    .map(Value::Int)
                    .map_err(|_| unparsable(raw))
            }
            (numeric, Kind::String { escaped }) if is_numeric(numeric) => {
                let s = text(escaped)?.text(payload, unescaped);
                parse_string(numeric, s).ok_or_else(|| unparsable(s))
            }
            (numeric, Kind::Number) if is_numeric(numeric) => {
                parse_number(numeric, raw.as_bytes()).ok_or_else(|| unparsable(raw))
            }
            _ => Err(mismatch()),
        }
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fraction]` (the form eddy's and arrow's JSON
/// writers give a timestamp) as µs since the epoch in UTC, or `None` for
/// any other form, left to arrow's parser. Where both parse, they agree:
/// the same fields, ranges and truncation to µs (the tests compare them).
///
/// Events of a stream mostly fall on the same day as the one before:
/// `dates` keeps the last date's day number, so that the calendar
/// arithmetic (a 64-bit division among it) runs once a day, not per value.
fn naive_utc_micros(s: &str, dates: &mut LastDate) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b.len() == 20 || b.len() > 29 {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + (d - b'0') as u32)
        })
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let nanos = match b.len() {
        19 => 0,
        len => {
            if b[19] != b'.' {
                return None;
            }
            // 1 to 9 digits of a second.
            digits(20..len)? * 10u32.pow(9 - (len - 20) as u32)
        }
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = match dates.date == b[..10] {
        true => dates.days,
        false => {
            let (year, month, day) = (digits(0..4)? as i32, digits(5..7)?, digits(8..10)?);
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let month_days = match month {
                1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
                4 | 6 | 9 | 11 => 30,
                2 if leap => 29,
                2 => 28,
                _ => return None,
            };
            if day == 0 || day > month_days {
                return None;
            }
            let days = days_from_civil(year, month, day);
            dates.date.copy_from_slice(&b[..10]);
            dates.days = days;
            days
        }
    };
    let seconds = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    Some(seconds * 1_000_000 + (nanos / 1000) as i64)
}

/// The last date [`naive_utc_micros`] read (`YYYY-MM-DD`, checked) and its
/// day number; all zero bytes (no date) at first.
#[derive(Default)]
struct LastDate {
    date: [u8; 10],
    days: i64,
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year } as i64;
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = month as i64;
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn is_numeric(column_type: &ColumnType) -> bool {
    matches!(
        column_type,
        ColumnType::Int16
            | ColumnType::Int32
            | ColumnType::Int64
            | ColumnType::Float32
            | ColumnType::Float64
            | ColumnType::Date32
    )
}

fn type_name(column_type: &ColumnType) -> &'static str {
    match column_type {
        ColumnType::Boolean => "a boolean",
        ColumnType::Int16 => "a smallint",
        ColumnType::Int32 => "an integer",
        ColumnType::Int64 => "a bigint",
        ColumnType::Float32 => "a real",
        ColumnType::Float64 => "a double precision",
        ColumnType::Utf8 => "a string",
        ColumnType::Jsonb => "JSON",
        ColumnType::Date32 => "a date",
        ColumnType::Timestamp { .. } => "a timestamp",
    }
}

/// A JSON number in a numeric column: an integer column takes an integer,
/// else a whole float that fits (`1e3`, `2.0`), never one with a fraction.
fn parse_number(column_type: &ColumnType, bytes: &[u8]) -> Option<Value> {
    fn int<T: lexical_core::FromLexical + NumCast + Into<i64>>(bytes: &[u8]) -> Option<Value> {
        let value = match lexical_core::parse::<T>(bytes) {
            Ok(v) => v,
            Err(_) => lexical_core::parse::<f64>(bytes)
                .ok()
                .filter(|f| f.fract() == 0.0)
                .and_then(NumCast::from)?,
        };
        Some(Value::Int(value.into()))
    }
    match column_type {
        ColumnType::Int16 => int::<i16>(bytes),
        ColumnType::Int32 | ColumnType::Date32 => int::<i32>(bytes),
        ColumnType::Int64 => int::<i64>(bytes),
        ColumnType::Float32 => lexical_core::parse::<f32>(bytes).ok().map(Value::Float32),
        ColumnType::Float64 => lexical_core::parse::<f64>(bytes).ok().map(Value::Float64),
        _ => None,
    }
}

/// A JSON string in a numeric column, parsed as arrow parses text.
fn parse_string(column_type: &ColumnType, s: &str) -> Option<Value> {
    match column_type {
        ColumnType::Int16 => Int16Type::parse(s).map(|v| Value::Int(v.into())),
        ColumnType::Int32 => Int32Type::parse(s).map(|v| Value::Int(v.into())),
        ColumnType::Int64 => Int64Type::parse(s).map(Value::Int),
        ColumnType::Date32 => Date32Type::parse(s).map(|v| Value::Int(v.into())),
        ColumnType::Float32 => Float32Type::parse(s).map(Value::Float32),
        ColumnType::Float64 => Float64Type::parse(s).map(Value::Float64),
        _ => None,
    }
}

/// The column of a type that was not asked for: nulls, or zeros (and empty
/// strings) under NOT NULL, which a batch's schema requires to hold no null.
fn placeholder(data_type: &DataType, nullable: bool, rows: usize) -> ArrayRef {
    let nulls = new_null_array(data_type, rows);
    if nullable {
        return nulls;
    }
    // The buffers of a null array are zeroed: the same data without the
    // null mask is zeros (and, for strings, offsets of empty strings).
    let data = nulls.to_data().into_builder().nulls(None);
    match data.build() {
        Ok(data) => make_array(data),
        Err(_) => nulls,
    }
}

fn unexpected(byte: u8, context: &str) -> Bad {
    format!("Encountered unexpected '{}' whilst {context}", byte as char).into()
}

/// Why a payload is bad. Boxed, so that the scanner's results stay small
/// (they are returned for every value of every payload).
#[derive(Debug)]
#[allow(clippy::box_collection)] // one pointer wide, on purpose
struct Bad(Box<String>);

impl From<String> for Bad {
    fn from(reason: String) -> Self {
        Self(Box::new(reason))
    }
}

impl From<&str> for Bad {
    fn from(reason: &str) -> Self {
        Self(Box::new(reason.into()))
    }
}

/// A cursor over one payload that checks JSON syntax as arrow-json's tape
/// decoder does.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Whether a string search passed a byte above 0x7F (or may have).
    non_ascii: bool,
}

impl Scanner<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn next(&mut self, context: &str) -> Result<u8, Bad> {
        let byte = self
            .peek()
            .ok_or_else(|| format!("unexpected end of the message whilst {context}"))?;
        self.pos += 1;
        Ok(byte)
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Between an object's fields and a list's items arrow-json skips
    /// commas as if whitespace.
    #[inline]
    fn skip_whitespace_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    #[inline]
    fn colon(&mut self) -> Result<(), Bad> {
        self.skip_whitespace();
        match self.next("parsing colon")? {
            b':' => Ok(()),
            other => Err(unexpected(other, "parsing colon")),
        }
    }

    /// A string whose opening quote was just read: its bytes' range and
    /// whether it has escapes (each checked). Always inlined, for the same
    /// reason as [`JsonDecoder::value`].
    #[inline(always)]
    fn string(&mut self) -> Result<(usize, usize, bool), Bad> {
        let start = self.pos;
        let mut escaped = false;
        loop {
            let Some(at) = quote_or_backslash(&self.bytes[self.pos..], &mut self.non_ascii) else {
                return Err("unexpected end of the message whilst parsing string".into());
            };
            self.pos += at + 1;
            if self.bytes[self.pos - 1] == b'"' {
                return Ok((start, self.pos - 1, escaped));
            }
            escaped = true;
            // The one-letter escapes (all of Nexmark's) are skipped here;
            // `\u` and bad escapes take the long way.
            match self.peek() {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 1,
                _ => {
                    self.escape()?;
                }
            }
        }
    }

    /// An escape sequence after its backslash: the character it stands for.
    fn escape(&mut self) -> Result<char, Bad> {
        Ok(match self.next("parsing escape sequence")? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                if let Some(c) = char::from_u32(high as u32) {
                    return Ok(c);
                }
                // A surrogate: the other half must follow.
                match self.next("parsing surrogate pair escape")? {
                    b'\\' => {}
                    other => return Err(unexpected(other, "parsing surrogate pair escape")),
                }
                match self.next("parsing surrogate pair unicode")? {
                    b'u' => {}
                    other => return Err(unexpected(other, "parsing surrogate pair unicode")),
                }
                let low = self.hex4()?;
                surrogate_pair(high, low)?
            }
            other => return Err(unexpected(other, "parsing escape sequence")),
        })
    }

    fn hex4(&mut self) -> Result<u16, Bad> {
        let mut value = 0u16;
        for _ in 0..4 {
            let byte = self.next("parsing unicode escape")?;
            let digit = (byte as char)
                .to_digit(16)
                .ok_or_else(|| unexpected(byte, "unicode escape"))?;
            value = (value << 4) | digit as u16;
        }
        Ok(value)
    }

    /// A value, after optional whitespace; objects and lists are skipped
    /// (checked, not kept). Always inlined, for the same reason as
    /// [`JsonDecoder::value`] (its `Result<Span, Bad>` was copied back in
    /// overlapping pieces that stalled the load after it).
    #[inline(always)]
    fn value(&mut self) -> Result<Span, Bad> {
        self.skip_whitespace();
        let start = self.pos;
        let kind = match self.next("parsing value")? {
            b'"' => {
                let (start, end, escaped) = self.string()?;
                return Ok(Span {
                    start,
                    end,
                    kind: Kind::String { escaped },
                });
            }
            b'-' | b'0'..=b'9' => {
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                ) {
                    self.pos += 1;
                }
                Kind::Number
            }
            b'n' => self.literal(b"null", Kind::Null)?,
            b't' => self.literal(b"true", Kind::True)?,
            b'f' => self.literal(b"false", Kind::False)?,
            open @ (b'{' | b'[') => {
                self.nested(open)?;
                Kind::Nested
            }
            other => return Err(unexpected(other, "parsing value")),
        };
        Ok(Span {
            start,
            end: self.pos,
            kind,
        })
    }

    fn literal(&mut self, word: &[u8], kind: Kind) -> Result<Kind, Bad> {
        for &expected in &word[1..] {
            let byte = self.next("parsing literal")?;
            if byte != expected {
                return Err(unexpected(byte, "parsing literal"));
            }
        }
        Ok(kind)
    }

    /// The rest of an object or list whose opening bracket was just read.
    /// Iterative, so that deep nesting cannot overflow the stack.
    fn nested(&mut self, open: u8) -> Result<(), Bad> {
        let mut open_brackets = vec![open];
        while let Some(&innermost) = open_brackets.last() {
            self.skip_whitespace_and_commas();
            if innermost == b'{' {
                match self.next("parsing object")? {
                    b'}' => {
                        open_brackets.pop();
                        continue;
                    }
                    b'"' => {
                        self.string()?;
                        self.colon()?;
                    }
                    other => return Err(unexpected(other, "parsing object")),
                }
            } else if self.peek() == Some(b']') {
                self.pos += 1;
                open_brackets.pop();
                continue;
            }
            // A value of the object or list: a bracket opens another level.
            self.skip_whitespace();
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    self.pos += 1;
                    open_brackets.push(open);
                }
                _ => {
                    self.value()?;
                }
            }
        }
        Ok(())
    }
}

/// The index of the first `"` or `\\` in `bytes`; sets `non_ascii` if a
/// byte above 0x7F may come before it (some after it may count too).
///
/// Strings end, and escapes begin, at these bytes. Nexmark's `extra` has a
/// `\\` every 40 bytes or so, so most searches are short: on x86_64 the
/// search compares 16 bytes at a time with SSE2 inline (no call, no
/// set-up; `memchr2`'s dispatch and alignment prologue cost more than the
/// search itself on such pieces); elsewhere the first 16 bytes are
/// compared eight at a time, then `memchr2` takes the rest.
#[inline]
fn quote_or_backslash(bytes: &[u8], non_ascii: &mut bool) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut offset = 0;
        for chunk in bytes.chunks_exact(16) {
            let chunk: [u8; 16] = chunk.try_into().unwrap_or_default();
            // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU
            // has it (the function only needs `target_feature` to be callable).
            let (found, high) = unsafe { sse2::quotes_or_backslashes(&chunk) };
            *non_ascii |= high != 0;
            if found != 0 {
                return Some(offset + found.trailing_zeros() as usize);
            }
            offset += 16;
        }
        let tail = &bytes[offset..];
        let at = tail.iter().position(|&b| b == b'"' || b == b'\\');
        *non_ascii |= !tail[..at.unwrap_or(tail.len())].is_ascii();
        at.map(|at| offset + at)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Not tracked here: the decoder checks UTF-8 itself.
        *non_ascii = true;
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
        const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
        const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
        const WORDS_BEFORE_MEMCHR: usize = 2;
        // The high bit of each zero byte of `v` (and maybe of bytes above the
        // first zero byte, which the lowest set bit ignores).
        let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let mut offset = 0;
        for chunk in bytes.chunks_exact(8).take(WORDS_BEFORE_MEMCHR) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let found = zero_bytes(word ^ QUOTES) | zero_bytes(word ^ BACKSLASHES);
            if found != 0 {
                return Some(offset + (found.trailing_zeros() / 8) as usize);
            }
            offset += 8;
        }
        memchr::memchr2(b'"', b'\\', &bytes[offset..]).map(|at| offset + at)
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_set_epi64x,
    };

    /// Bit `i` of the first set when byte `i` of `chunk` is `"` or `\\`, of
    /// the second when it is above 0x7F.
    #[target_feature(enable = "sse2")]
    #[inline]
    pub(super) fn quotes_or_backslashes(chunk: &[u8; 16]) -> (u32, u32) {
        // Two words from a reference: the compiler makes one unaligned load.
        let low = i64::from_le_bytes(chunk[..8].try_into().unwrap_or_default());
        let high = i64::from_le_bytes(chunk[8..].try_into().unwrap_or_default());
        let bytes = _mm_set_epi64x(high, low);
        let quotes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslashes = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        let found = _mm_movemask_epi8(_mm_or_si128(quotes, backslashes)) as u32;
        (found, _mm_movemask_epi8(bytes) as u32)
    }
}

fn not_utf8() -> Bad {
    Bad::from("Encountered non-UTF-8 data")
}

fn surrogate_pair(high: u16, low: u16) -> Result<char, Bad> {
    match (high, low) {
        (0xD800..=0xDBFF, 0xDC00..=0xDFFF) => {
            let code = (((high - 0xD800) as u32) << 10) | ((low - 0xDC00) as u32 + 0x1_0000);
            char::from_u32(code)
                .ok_or_else(|| format!("Invalid UTF-16 surrogate pair {code}").into())
        }
        _ => {
            Err(format!("Invalid UTF-16 surrogate pair. High: {high:#02X}, Low: {low:#02X}").into())
        }
    }
}

/// Appends the text of a string (between its quotes) with its escapes
/// resolved.
fn unescape(raw: &str, out: &mut String) -> Result<(), Bad> {
    let mut scanner = Scanner {
        bytes: raw.as_bytes(),
        pos: 0,
        non_ascii: false,
    };
    loop {
        // Backslashes are ASCII: the pieces between them are whole text.
        let rest = &raw[scanner.pos..];
        let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) else {
            out.push_str(rest);
            return Ok(());
        };
        out.push_str(&rest[..at]);
        scanner.pos += at + 1;
        out.push(scanner.escape()?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the fast path parses a timestamp, arrow's parser gives the same
    /// µs; the form writers give always takes the fast path.
    #[test]
    fn common_timestamps_parse_as_arrow_parses_them() {
        let arrow = |s: &str| {
            string_to_datetime(&chrono::Utc, s)
                .ok()
                .map(|t| t.timestamp_micros())
        };
        let edges = [
            "2024-02-29T12:00:00",
            "2023-02-29T00:00:00",
            "2024-12-31T23:59:59.999999999",
            "2024-01-01T00:00:60",
            "2024-01-01T00:60:00",
            "2024-01-01T24:00:00",
            "2024-01-01t00:00:00",
            "2024-01-01 00:00:00.",
            "2024-01-01T00:00:00.1234567891",
            "0000-01-01T00:00:00",
            "0001-03-01T00:00:00.1",
            "1969-12-31T23:59:59.5",
            "2024-04-31T00:00:00",
            "2024-13-01T00:00:00",
            "2024-00-01T00:00:00",
            "2024-01-00T00:00:00",
            "2100-02-29T00:00:00",
            "2000-02-29T00:00:00.000001",
            "2024-1-01T00:00:00",
            "2024-01-01T00:00:00.5+01:00",
            "2024-01-01T00:00:00Z",
            "+2024-01-01T00:00:00",
            "2024-01-01T00:00:0a",
            "2024-01-01X00:00:00",
        ];
        let mut checked = 0;
        // The last date read is kept: each edge case is read after every
        // other one (a date taken from that one's cache), and afresh.
        for s in edges {
            let fresh = naive_utc_micros(s, &mut LastDate::default());
            for before in edges {
                let mut dates = LastDate::default();
                naive_utc_micros(before, &mut dates);
                assert_eq!(naive_utc_micros(s, &mut dates), fresh, "{s} after {before}");
            }
            if let Some(fast) = fresh {
                assert_eq!(Some(fast), arrow(s), "{s}");
                checked += 1;
            }
        }
        assert!(checked >= 6, "{checked} edge cases took the fast path");
        // Every day of four years (a leap year, a century that is not one,
        // one that is), at times with 0 to 9 digits of a second.
        let mut dates = LastDate::default();
        for year in [1600, 1970, 2000, 2023, 2024, 2100] {
            for day in 0..366 {
                let date = chrono::NaiveDate::from_yo_opt(year, day + 1);
                let Some(date) = date else { continue };
                let digits = (day % 10) as usize;
                let fraction = &"123456789"[..digits];
                let dot = if digits == 0 { "" } else { "." };
                let s = format!(
                    "{date}T{:02}:{:02}:{:02}{dot}{fraction}",
                    day % 24,
                    day % 60,
                    (day * 7) % 60
                );
                assert_eq!(naive_utc_micros(&s, &mut dates), arrow(&s), "{s}");
                assert_eq!(naive_utc_micros(&s, &mut dates), arrow(&s), "{s} again");
                assert!(arrow(&s).is_some(), "{s}");
            }
        }
    }
}
