//! Bind parameters from the wire to DataFusion values.

use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use pgwire::api::results::FieldFormat;
use postgres_types::Type;

use crate::error::{EddyError, Result};

/// Decodes one parameter sent as `pg_type` in `format`, into `target` (the
/// type DataFusion inferred, when it did).
pub fn decode_parameter(
    value: Option<&Bytes>,
    pg_type: &Type,
    format: FieldFormat,
    target: Option<&DataType>,
) -> Result<ScalarValue> {
    let target = target.cloned().unwrap_or_else(|| data_type_of(pg_type));
    let Some(bytes) = value else {
        return Ok(ScalarValue::try_from(&target).unwrap_or(ScalarValue::Null));
    };
    let decoded = match format {
        FieldFormat::Text => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| EddyError::InvalidParameter("parameter is not valid UTF-8".into()))?;
            if matches!(target, DataType::Binary) {
                return Ok(ScalarValue::Binary(Some(decode_bytea_text(text)?)));
            }
            ScalarValue::Utf8(Some(text.to_string()))
        }
        FieldFormat::Binary => decode_binary(bytes, pg_type)?,
    };
    decoded.cast_to(&target).map_err(|e| {
        EddyError::InvalidValue(format!("invalid value for parameter of type {target}: {e}"))
    })
}

fn decode_binary(bytes: &[u8], pg_type: &Type) -> Result<ScalarValue> {
    let fixed = |n: usize| -> Result<&[u8]> {
        if bytes.len() == n {
            Ok(bytes)
        } else {
            Err(EddyError::InvalidParameter(format!(
                "binary parameter of type {pg_type} has {} bytes, expected {n}",
                bytes.len()
            )))
        }
    };
    let be = |b: &[u8]| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[8 - b.len()..].copy_from_slice(b);
        out
    };
    Ok(match *pg_type {
        Type::BOOL => ScalarValue::Boolean(Some(fixed(1)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes([fixed(2)?[0], bytes[1]]))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(
            fixed(4)?.try_into().unwrap_or_default(),
        ))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(be(fixed(8)?)))),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(
            fixed(4)?.try_into().unwrap_or_default(),
        ))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(be(fixed(8)?)))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            ScalarValue::Utf8(Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                EddyError::InvalidParameter("text parameter is not valid UTF-8".into())
            })?))
        }
        Type::JSONB => ScalarValue::Utf8(Some(
            String::from_utf8_lossy(bytes.get(1..).unwrap_or_default()).into(),
        )),
        Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        Type::NUMERIC => ScalarValue::Utf8(Some(decode_numeric(bytes)?)),
        Type::DATE => {
            let days = i32::from_be_bytes(fixed(4)?.try_into().unwrap_or_default());
            ScalarValue::Date32(Some(days + 10_957))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let micros = i64::from_be_bytes(be(fixed(8)?)) + 946_684_800_000_000;
            let zone = (*pg_type == Type::TIMESTAMPTZ).then(|| "+00:00".into());
            ScalarValue::TimestampMicrosecond(Some(micros), zone)
        }
        ref other => {
            return Err(crate::not_supported!(
                "binary format for parameters of type {other} is not supported; send it as text"
            ))
        }
    })
}

/// Postgres' binary NUMERIC (base-10000 digits with weight, sign and display
/// scale) as decimal text.
fn decode_numeric(bytes: &[u8]) -> Result<String> {
    let word = |i: usize| -> Result<u16> {
        bytes
            .get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| EddyError::InvalidParameter("truncated binary numeric parameter".into()))
    };
    let (count, weight, sign, scale) = (
        usize::from(word(0)?),
        word(1)? as i16,
        word(2)?,
        usize::from(word(3)?),
    );
    if sign == 0xC000 {
        return Err(EddyError::InvalidValue(
            "NaN is not a valid numeric value here".into(),
        ));
    }
    let digits: Vec<u16> = (0..count).map(|i| word(4 + i)).collect::<Result<_>>()?;
    // Group i is worth digits[i] * 10000^(weight - i).
    let group = |exponent: i64| -> u16 {
        let index = i64::from(weight) - exponent;
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut integer = String::new();
    for exponent in (0..=i64::from(weight)).rev() {
        let digit = group(exponent);
        if integer.is_empty() {
            if digit != 0 {
                integer = digit.to_string();
            }
        } else {
            integer.push_str(&format!("{digit:04}"));
        }
    }
    if integer.is_empty() {
        integer.push('0');
    }
    let mut fraction = String::new();
    let mut exponent = -1;
    while fraction.len() < scale {
        fraction.push_str(&format!("{:04}", group(exponent)));
        exponent -= 1;
    }
    fraction.truncate(scale);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Ok(if scale > 0 {
        format!("{sign}{integer}.{fraction}")
    } else {
        format!("{sign}{integer}")
    })
}

/// Postgres' bytea text input: `\x0a0b` hex, or the bytes as written.
fn decode_bytea_text(text: &str) -> Result<Vec<u8>> {
    let Some(hex) = text.strip_prefix("\\x") else {
        return Ok(text.as_bytes().to_vec());
    };
    if hex.len() % 2 != 0 {
        return Err(EddyError::InvalidValue(
            "invalid hexadecimal data: odd number of digits".into(),
        ));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| {
                EddyError::InvalidValue(format!("invalid hexadecimal digit in \"{text}\""))
            })
        })
        .collect()
}

/// The Arrow type a parameter of Postgres type `pg_type` becomes.
pub fn data_type_of(pg_type: &Type) -> DataType {
    match *pg_type {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => DataType::Decimal128(38, 10),
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => DataType::Utf8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(words: &[i16]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn binary_numeric_decodes() {
        assert_eq!(
            decode_numeric(&numeric(&[3, 1, 0, 3, 1, 2345, 6780])).unwrap(),
            "12345.678"
        );
        assert_eq!(
            decode_numeric(&numeric(&[1, -1, 0x4000, 2, 500])).unwrap(),
            "-0.05"
        );
        assert_eq!(
            decode_numeric(&numeric(&[1, -2, 0, 6, 1200])).unwrap(),
            "0.000012"
        );
        assert_eq!(decode_numeric(&numeric(&[1, 1, 0, 0, 1])).unwrap(), "10000");
        assert_eq!(decode_numeric(&numeric(&[0, 0, 0, 2])).unwrap(), "0.00");
    }
}
