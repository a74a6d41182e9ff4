//! Arrow values as Postgres values: the Postgres type of each Arrow type,
//! and each value's text and binary encoding. Shared by the wire protocol
//! server and the Postgres sink (whose binary COPY uses the same encoding).
//!
//! Text output follows Postgres' own output functions (`t`/`f` booleans,
//! `2024-01-02 03:04:05.5` timestamps, `1 day 02:00:00` intervals, `\x..`
//! bytea, shortest round-trip floats with `Infinity`/`NaN`), so psql and
//! drivers show what they would show for Postgres.

use std::error::Error;
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, IntervalMonthDayNanoType, IntervalUnit, Time64MicrosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use pgwire::types::format::FormatOptions as PgFormatOptions;
use pgwire::types::ToSqlText;
use postgres_types::{IsNull, ToSql, Type};

use crate::common::types::PG_TYPE_METADATA_KEY;

/// The SQL spelling of a column's Postgres type, for CREATE TABLE.
pub fn pg_type_sql(field: &Field) -> String {
    match field.data_type() {
        DataType::Decimal128(precision, scale) => format!("numeric({precision}, {scale})"),
        _ => match pg_type(field) {
            Type::BOOL => "boolean".into(),
            Type::INT2 => "smallint".into(),
            Type::INT4 => "integer".into(),
            Type::INT8 => "bigint".into(),
            Type::FLOAT4 => "real".into(),
            Type::FLOAT8 => "double precision".into(),
            Type::TIMESTAMP => "timestamp".into(),
            Type::TIMESTAMPTZ => "timestamptz".into(),
            other => other.name().to_string(),
        },
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

/// Microseconds between 1970-01-01 and 2000-01-01 (Postgres' epoch).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_OFFSET_DAYS: i32 = 10_957;

/// The Postgres type a column is sent as (and created as by the sink).
pub fn pg_type(field: &Field) -> Type {
    match field
        .metadata()
        .get(PG_TYPE_METADATA_KEY)
        .map(String::as_str)
    {
        Some("jsonb") => return Type::JSONB,
        Some("json") => return Type::JSON,
        Some("uuid") => return Type::TEXT,
        _ => {}
    }
    match field.data_type() {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 | DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Time64(TimeUnit::Microsecond) => Type::TIME,
        DataType::Interval(IntervalUnit::MonthDayNano) => Type::INTERVAL,
        _ => Type::TEXT,
    }
}

/// One cell of an Arrow array, encodable for pgwire's `DataRowEncoder`.
#[derive(Debug)]
pub struct Cell<'a> {
    pub array: &'a ArrayRef,
    pub row: usize,
}

impl ToSqlText for Cell<'_> {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _options: &PgFormatOptions,
    ) -> Result<IsNull, BoxError> {
        if self.array.is_null(self.row) {
            return Ok(IsNull::Yes);
        }
        let text = text_value(self.array, self.row)?;
        out.put_slice(text.as_bytes());
        Ok(IsNull::No)
    }
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if self.array.is_null(self.row) {
            return Ok(IsNull::Yes);
        }
        let (array, row) = (self.array, self.row);
        match array.data_type() {
            DataType::Boolean => out.put_u8(u8::from(array.as_boolean().value(row))),
            DataType::Int8 => out.put_i16(i16::from(array.as_primitive::<Int8Type>().value(row))),
            DataType::Int16 => out.put_i16(array.as_primitive::<Int16Type>().value(row)),
            DataType::UInt8 => out.put_i16(i16::from(array.as_primitive::<UInt8Type>().value(row))),
            DataType::Int32 => out.put_i32(array.as_primitive::<Int32Type>().value(row)),
            DataType::UInt16 => {
                out.put_i32(i32::from(array.as_primitive::<UInt16Type>().value(row)))
            }
            DataType::Int64 => out.put_i64(array.as_primitive::<Int64Type>().value(row)),
            DataType::UInt32 => {
                out.put_i64(i64::from(array.as_primitive::<UInt32Type>().value(row)))
            }
            DataType::UInt64 => put_numeric(
                out,
                i128::from(array.as_primitive::<UInt64Type>().value(row)),
                0,
            ),
            DataType::Float32 => out.put_f32(array.as_primitive::<Float32Type>().value(row)),
            DataType::Float64 => out.put_f64(array.as_primitive::<Float64Type>().value(row)),
            DataType::Decimal128(_, scale) => put_numeric(
                out,
                array.as_primitive::<Decimal128Type>().value(row),
                *scale,
            ),
            DataType::Binary => out.put_slice(array.as_binary::<i32>().value(row)),
            DataType::LargeBinary => out.put_slice(array.as_binary::<i64>().value(row)),
            DataType::Date32 => {
                out.put_i32(array.as_primitive::<Date32Type>().value(row) - PG_EPOCH_OFFSET_DAYS)
            }
            DataType::Timestamp(unit, _) => {
                out.put_i64(timestamp_micros(array, row, unit) - PG_EPOCH_OFFSET_MICROS)
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                out.put_i64(array.as_primitive::<Time64MicrosecondType>().value(row))
            }
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                let v = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
                out.put_i64(v.nanoseconds / 1000);
                out.put_i32(v.days);
                out.put_i32(v.months);
            }
            _ => {
                if *ty == Type::JSONB {
                    out.put_u8(1); // jsonb binary format version
                }
                out.put_slice(text_value(array, row)?.as_bytes());
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

fn timestamp_micros(array: &ArrayRef, row: usize, unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row) * 1_000_000,
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row) * 1000,
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
        TimeUnit::Nanosecond => array
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .div_euclid(1000),
    }
}

/// The Postgres text form of one non-null value.
pub fn text_value(array: &ArrayRef, row: usize) -> Result<String, BoxError> {
    Ok(match array.data_type() {
        DataType::Boolean => (if array.as_boolean().value(row) {
            "t"
        } else {
            "f"
        })
        .to_string(),
        DataType::Float32 => format_float(
            f64::from(array.as_primitive::<Float32Type>().value(row)),
            true,
        ),
        DataType::Float64 => format_float(array.as_primitive::<Float64Type>().value(row), false),
        DataType::Binary | DataType::LargeBinary => {
            let bytes = match array.data_type() {
                DataType::Binary => array.as_binary::<i32>().value(row),
                _ => array.as_binary::<i64>().value(row),
            };
            let mut text = String::with_capacity(2 + bytes.len() * 2);
            text.push_str("\\x");
            for b in bytes {
                let _ = write!(text, "{b:02x}");
            }
            text
        }
        DataType::Timestamp(unit, tz) => {
            format_timestamp(timestamp_micros(array, row, unit), tz.is_some())
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
            format_interval(v.months, v.days, v.nanoseconds / 1000)
        }
        _ => ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?
            .value(row)
            .to_string(),
    })
}

/// Floats as Postgres prints them: shortest round-trip digits, exponent
/// notation outside 1e-4..1e15 (1e6 for real), `Infinity`, `NaN`.
fn format_float(value: f64, single: bool) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let shortest = if single {
        format!("{:e}", value as f32)
    } else {
        format!("{value:e}")
    };
    let (mantissa, exponent) = shortest.split_once('e').unwrap_or((&shortest, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let limit = if single { 6 } else { 15 };
    if value != 0.0 && (exponent < -4 || exponent >= limit) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else if single {
        format!("{}", value as f32)
    } else {
        format!("{value}")
    }
}

fn format_timestamp(micros: i64, with_zone: bool) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let Some(datetime) = chrono::DateTime::from_timestamp(seconds, 0) else {
        return micros.to_string();
    };
    let mut text = datetime.format("%Y-%m-%d %H:%M:%S").to_string();
    if fraction != 0 {
        let digits = format!("{fraction:06}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
    if with_zone {
        text.push_str("+00");
    }
    text
}

fn format_interval(months: i32, days: i32, micros: i64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let (years, months) = (months / 12, months % 12);
    // Postgres: singular for exactly 1 only ("-1 days").
    let plural =
        |n: i64, unit: &str, units: &str| format!("{n} {}", if n == 1 { unit } else { units });
    if years != 0 {
        parts.push(plural(i64::from(years), "year", "years"));
    }
    if months != 0 {
        parts.push(plural(i64::from(months), "mon", "mons"));
    }
    if days != 0 {
        parts.push(plural(i64::from(days), "day", "days"));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        let abs = micros.unsigned_abs();
        let (hours, rest) = (abs / 3_600_000_000, abs % 3_600_000_000);
        let (minutes, rest) = (rest / 60_000_000, rest % 60_000_000);
        let (seconds, fraction) = (rest / 1_000_000, rest % 1_000_000);
        let mut time = format!("{sign}{hours:02}:{minutes:02}:{seconds:02}");
        if fraction != 0 {
            time.push('.');
            time.push_str(format!("{fraction:06}").trim_end_matches('0'));
        }
        parts.push(time);
    }
    parts.join(" ")
}

/// Postgres' binary NUMERIC: base-10000 digits with weight, sign and scale.
fn put_numeric(out: &mut BytesMut, unscaled: i128, scale: i8) {
    let negative = unscaled < 0;
    let magnitude = unscaled.unsigned_abs();
    let scale = scale.max(0) as u32;
    // Split into integer and fractional parts, then pad the fraction to a
    // multiple of 4 decimal digits so it splits into base-10000 digits.
    let divisor = 10u128.pow(scale);
    let mut integer = magnitude / divisor;
    let fraction_padded_digits = scale.div_ceil(4) * 4;
    let mut fraction = (magnitude % divisor) * 10u128.pow(fraction_padded_digits - scale);
    let mut integer_groups = Vec::new();
    while integer > 0 {
        integer_groups.push((integer % 10_000) as i16);
        integer /= 10_000;
    }
    integer_groups.reverse();
    let mut fraction_groups = vec![0i16; (fraction_padded_digits / 4) as usize];
    for slot in fraction_groups.iter_mut().rev() {
        *slot = (fraction % 10_000) as i16;
        fraction /= 10_000;
    }
    let mut digits: Vec<i16> = integer_groups
        .iter()
        .chain(&fraction_groups)
        .copied()
        .collect();
    let mut weight = integer_groups.len() as i16 - 1;
    // Strip leading and trailing zero groups (weight follows the leading ones).
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    out.put_i16(digits.len() as i16);
    out.put_i16(weight);
    out.put_u16(if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(scale as u16);
    for d in digits {
        out.put_i16(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(format_float(1.5, false), "1.5");
        assert_eq!(format_float(1e20, false), "1e+20");
        assert_eq!(format_float(0.00001, false), "1e-05");
        assert_eq!(format_float(100.0, false), "100");
        assert_eq!(format_float(f64::NEG_INFINITY, false), "-Infinity");
    }

    #[test]
    fn intervals_print_like_postgres() {
        assert_eq!(
            format_interval(14, 3, 4 * 3_600_000_000 + 500_000),
            "1 year 2 mons 3 days 04:00:00.5"
        );
        assert_eq!(format_interval(0, 0, 0), "00:00:00");
        assert_eq!(format_interval(0, 1, 0), "1 day");
        assert_eq!(format_interval(-12, -1, 0), "-1 years -1 days");
    }

    #[test]
    fn numeric_binary_matches_postgres() {
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3
        let mut out = BytesMut::new();
        put_numeric(&mut out, 12_345_678, 3);
        let words: Vec<i16> = out
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(words, vec![3, 1, 0, 3, 1, 2345, 6780]);
        let mut out = BytesMut::new();
        put_numeric(&mut out, -5, 2); // -0.05 = digits [500], weight -1
        let words: Vec<i16> = out
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(words, vec![1, -1, 0x4000, 2, 500]);
    }
}
