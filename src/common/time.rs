//! Time written in SQL: timestamp and interval literals as microseconds,
//! the unit eddy keeps event time in (Postgres' precision).

use datafusion::arrow::datatypes::{DataType, IntervalUnit};

use crate::error::{EddyError, Result};

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A timestamp literal such as `'2024-01-01 00:00:00'`, in µs since the
/// epoch.
pub fn parse_timestamp_micros(text: &str) -> Result<i64> {
    use datafusion::common::ScalarValue;
    let target = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None);
    match ScalarValue::Utf8(Some(text.to_string())).cast_to(&target) {
        Ok(ScalarValue::TimestampMicrosecond(Some(micros), _)) => Ok(micros),
        _ => Err(EddyError::InvalidParameter(format!(
            "'{text}' is not a timestamp"
        ))),
    }
}

/// An interval written as text (`'5 seconds'`, `'1 minute 30 seconds'`) in
/// microseconds. Months and years are refused: their length varies.
pub fn interval_micros(text: &str) -> Result<i64> {
    let value = datafusion::common::ScalarValue::Utf8(Some(text.to_lowercase()))
        .cast_to(&DataType::Interval(IntervalUnit::MonthDayNano))
        .map_err(|_| EddyError::InvalidValue(format!("invalid interval '{text}'")))?;
    scalar_interval_micros(&value)
}

/// A DataFusion interval value in microseconds (no months or years).
pub fn scalar_interval_micros(value: &datafusion::common::ScalarValue) -> Result<i64> {
    use datafusion::common::ScalarValue as V;
    let micros = match value {
        V::IntervalMonthDayNano(Some(v)) if v.months == 0 => i64::from(v.days) * 86_400_000_000 + v.nanoseconds / 1000,
        V::IntervalDayTime(Some(v)) => i64::from(v.days) * 86_400_000_000 + i64::from(v.milliseconds) * 1000,
        V::IntervalMonthDayNano(Some(_)) | V::IntervalYearMonth(Some(_)) => {
            return Err(EddyError::InvalidParameter(
                "intervals of months or years have no fixed length; use days, hours, minutes or seconds".into(),
            ))
        }
        other => return Err(EddyError::TypeMismatch(format!("expected an interval, found {other}"))),
    };
    Ok(micros)
}
