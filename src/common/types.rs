//! SQL types and their Arrow representation.
//!
//! eddy stores every value as Arrow. Postgres types without an Arrow
//! counterpart are stored as the nearest Arrow type and tagged in the field's
//! metadata (`eddy.pg_type`), so the wire protocol reports the Postgres type
//! the user declared (jsonb is text that must parse as JSON).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, Schema, SchemaRef, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo, TimezoneInfo};

use crate::error::{EddyError, Result};

/// Field metadata key naming the declared Postgres type, where Arrow has none.
pub const PG_TYPE_METADATA_KEY: &str = "eddy.pg_type";

/// Timestamps are kept in microseconds, Postgres' precision.
pub const TIMESTAMP_UNIT: TimeUnit = TimeUnit::Microsecond;

/// Field metadata key of a `varchar(n)` / `char(n)` column's declared type
/// (`character varying(n)`): values of more than `n` characters are
/// refused on write and bad messages in a source (22001 `value too long
/// for type character varying(n)`).
pub const MAX_CHARS_METADATA_KEY: &str = "eddy.max_chars";

/// The Arrow field for a column declared with `sql_type`.
pub fn column_field(name: &str, sql_type: &ast::DataType, nullable: bool) -> Result<Field> {
    let (data_type, pg_type) = arrow_type(sql_type)?;
    let mut metadata = HashMap::new();
    if let Some(pg_type) = pg_type {
        metadata.insert(PG_TYPE_METADATA_KEY.to_string(), pg_type.to_string());
    }
    if let Some((limit, name)) = declared_length(sql_type) {
        metadata.insert(
            MAX_CHARS_METADATA_KEY.to_string(),
            format!("{name}({limit})"),
        );
    }
    Ok(Field::new(name, data_type, nullable).with_metadata(metadata))
}

/// `varchar(n)`, `char(n)` and their spellings: `n` and the type's name as
/// PostgreSQL says it. (A bare `char` is not limited here, though
/// PostgreSQL takes it as `char(1)`.)
fn declared_length(sql_type: &ast::DataType) -> Option<(u64, &'static str)> {
    use ast::DataType as S;
    let (length, name) = match sql_type {
        S::Varchar(Some(l)) | S::CharacterVarying(Some(l)) | S::CharVarying(Some(l)) => {
            (l, "character varying")
        }
        S::Char(Some(l)) | S::Character(Some(l)) => (l, "character"),
        _ => return None,
    };
    match length {
        ast::CharacterLength::IntegerLength { length, .. } => Some((*length, name)),
        ast::CharacterLength::Max => None,
    }
}

/// The most characters a value of `field` may hold, if declared.
pub fn max_chars(field: &Field) -> Option<usize> {
    let declared = field.metadata().get(MAX_CHARS_METADATA_KEY)?;
    let (_, limit) = declared.strip_suffix(')')?.split_once('(')?;
    limit.parse().ok()
}

/// Why a value of `field` longer than its declared length is refused.
pub fn too_long_reason(field: &Field) -> String {
    let declared = field
        .metadata()
        .get(MAX_CHARS_METADATA_KEY)
        .map_or("character varying", String::as_str);
    format!(
        "value too long for type {declared} in column \"{}\"",
        field.name()
    )
}

/// Whether `value` has more than `limit` characters. (Bytes bound the
/// characters from above: most values need no count.)
pub fn longer_than(value: &str, limit: usize) -> bool {
    value.len() > limit && value.chars().count() > limit
}

/// 22001 if a value of the text column `values` (of `field`) is longer
/// than the field's declared length.
pub fn check_length(field: &Field, values: &dyn datafusion::arrow::array::Array) -> Result<()> {
    let Some(limit) = max_chars(field) else {
        return Ok(());
    };
    let Some(strings) = values
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
    else {
        return Ok(());
    };
    match strings.iter().flatten().find(|v| longer_than(v, limit)) {
        Some(_) => Err(EddyError::Planning {
            sqlstate: "22001",
            message: too_long_reason(field),
        }),
        None => Ok(()),
    }
}

/// Whether values of `field` must be valid JSON.
pub fn is_json_field(field: &Field) -> bool {
    matches!(
        field
            .metadata()
            .get(PG_TYPE_METADATA_KEY)
            .map(String::as_str),
        Some("json" | "jsonb")
    )
}

fn arrow_type(sql_type: &ast::DataType) -> Result<(DataType, Option<&'static str>)> {
    use ast::DataType as S;
    let t = match sql_type {
        S::Boolean | S::Bool => DataType::Boolean,
        S::SmallInt(_) | S::Int2(_) => DataType::Int16,
        S::Int(_) | S::Integer(_) | S::Int4(_) => DataType::Int32,
        S::BigInt(_) | S::Int8(_) => DataType::Int64,
        S::Real | S::Float4 => DataType::Float32,
        S::Double(_) | S::DoublePrecision | S::Float8 => DataType::Float64,
        S::Float(ExactNumberInfo::Precision(p)) if *p <= 24 => DataType::Float32,
        S::Float(_) => DataType::Float64,
        S::Numeric(info) | S::Decimal(info) | S::Dec(info) => decimal_type(info)?,
        S::Text
        | S::String(_)
        | S::Varchar(_)
        | S::CharacterVarying(_)
        | S::Char(_)
        | S::Character(_) => DataType::Utf8,
        S::Uuid => return Ok((DataType::Utf8, Some("uuid"))),
        S::Date => DataType::Date32,
        S::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            DataType::Timestamp(TIMESTAMP_UNIT, None)
        }
        S::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            DataType::Timestamp(TIMESTAMP_UNIT, Some("+00:00".into()))
        }
        S::Time(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            DataType::Time64(TimeUnit::Microsecond)
        }
        S::Interval { .. } => DataType::Interval(IntervalUnit::MonthDayNano),
        S::Bytea => DataType::Binary,
        S::JSON => return Ok((DataType::Utf8, Some("json"))),
        S::JSONB => return Ok((DataType::Utf8, Some("jsonb"))),
        S::Custom(name, _) if name.to_string().eq_ignore_ascii_case("jsonb") => {
            return Ok((DataType::Utf8, Some("jsonb")))
        }
        S::Custom(name, _) if name.to_string().eq_ignore_ascii_case("timestamptz") => {
            DataType::Timestamp(TIMESTAMP_UNIT, Some("+00:00".into()))
        }
        other => {
            return Err(crate::not_supported!(
                "column type {other} is not supported"
            ))
        }
    };
    Ok((t, None))
}

fn decimal_type(info: &ExactNumberInfo) -> Result<DataType> {
    let (precision, scale) = match info {
        // Postgres' unconstrained numeric has no fixed scale; Arrow needs one.
        ExactNumberInfo::None => (38, 10),
        ExactNumberInfo::Precision(p) => (*p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
    };
    if !(1..=38).contains(&precision) || scale < 0 || scale as u64 > precision {
        return Err(EddyError::InvalidParameter(format!(
            "NUMERIC({precision},{scale}) is out of range: precision must be 1..38 and 0 <= scale <= precision"
        )));
    }
    Ok(DataType::Decimal128(precision as u8, scale as i8))
}

/// `schema` with every column nullable. NOT NULL is enforced by tables on
/// write, with Postgres' error, not by DataFusion while it evaluates.
pub fn all_nullable(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// An exact decimal value (unscaled, in 256 bits) with at most `precision`
/// digits, or 22003 (PostgreSQL's "numeric field overflow"): what a sum of
/// NUMERIC reads as, never a wrapped value.
pub fn decimal_in_precision(
    value: datafusion::arrow::datatypes::i256,
    precision: u8,
) -> Result<i128> {
    use datafusion::arrow::datatypes::i256;
    let limit = i256::from_i128(10i128.pow(u32::from(precision.min(38))));
    let overflow = || EddyError::OutOfRange("numeric field overflow".into());
    if value >= limit || value <= limit.wrapping_neg() {
        return Err(overflow());
    }
    value.to_i128().ok_or_else(overflow)
}
