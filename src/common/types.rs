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

/// The Arrow field for a column declared with `sql_type`.
pub fn column_field(name: &str, sql_type: &ast::DataType, nullable: bool) -> Result<Field> {
    let (data_type, pg_type) = arrow_type(sql_type)?;
    let field = Field::new(name, data_type, nullable);
    Ok(match pg_type {
        Some(pg_type) => field.with_metadata(HashMap::from([(
            PG_TYPE_METADATA_KEY.to_string(),
            pg_type.to_string(),
        )])),
        None => field,
    })
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
