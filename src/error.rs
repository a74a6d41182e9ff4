//! One error type for all of eddy, with variants by meaning.
//!
//! Every variant maps to a Postgres SQLSTATE (`EddyError::sqlstate`) so that
//! clients see the same error classes they know from Postgres. Errors that come
//! from DataFusion or Arrow are classified by `From<DataFusionError>`.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

pub type Result<T, E = EddyError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EddyError {
    /// The statement could not be parsed (42601).
    #[error("{0}")]
    Syntax(String),
    /// A table or materialized view that does not exist (42P01).
    #[error("{0}")]
    UndefinedRelation(String),
    /// A column that does not exist (42703).
    #[error("{0}")]
    UndefinedColumn(String),
    /// An object outside eddy that a statement names and that does not
    /// exist, such as a source's Kafka topic (42704).
    #[error("{0}")]
    UndefinedObject(String),
    /// CREATE of a name that is taken (42P07).
    #[error("{0}")]
    DuplicateRelation(String),
    /// A statement applied to the wrong kind of object, e.g. DROP TABLE on a view (42809).
    #[error("{0}")]
    WrongObjectType(String),
    /// INSERT of a primary key that exists (23505).
    #[error("{message}")]
    UniqueViolation { message: String, detail: String },
    /// NULL into a NOT NULL column (23502).
    #[error("{0}")]
    NotNullViolation(String),
    /// DROP of an object that others depend on (2BP01).
    #[error("{message}")]
    DependentObjects { message: String, detail: String },
    /// Operands or values of incompatible types (42804).
    #[error("{0}")]
    TypeMismatch(String),
    /// A value that cannot be read as its type, e.g. `'abc'::int` (22P02).
    #[error("{0}")]
    InvalidValue(String),
    /// Division by zero (22012).
    #[error("{0}")]
    DivisionByZero(String),
    /// A value outside the range of its type (22003).
    #[error("{0}")]
    OutOfRange(String),
    /// A feature eddy does not have (yet); the message names it (0A000).
    #[error("{0}")]
    NotSupported(String),
    /// A query shape that cannot be maintained incrementally (yet); the
    /// message names the construct and why (0A000).
    #[error("{0}")]
    NotIncremental(String),
    /// A protocol-level problem such as a bad parameter (08P01 / 22023).
    #[error("{0}")]
    InvalidParameter(String),
    /// The role may not do this: a missing privilege, or a file or host
    /// the operator did not allow (42501).
    #[error("{0}")]
    InsufficientPrivilege(String),
    /// A statement stopped by a cancel request, its statement_timeout or
    /// its client going away (57014).
    #[error("{0}")]
    QueryCanceled(String),
    /// A statement nested too deep for the server to plan (54001, "statement
    /// too complex").
    #[error("{0}")]
    StatementTooComplex(String),
    /// A value, message or result larger than the server takes (54000).
    #[error("{0}")]
    ProgramLimitExceeded(String),
    /// A query over its share of memory (53200).
    #[error("{0}")]
    OutOfMemory(String),
    /// A client that may not connect: unknown role, no LOGIN, TLS required
    /// (28000).
    #[error("{0}")]
    InvalidAuthorization(String),
    /// An external system (a sink's Postgres) could not be reached (08001).
    #[error("{0}")]
    ConnectionFailure(String),
    /// The server is shutting down or a background task is gone (57P01).
    #[error("{0}")]
    Shutdown(String),
    /// A write the write-ahead log could not make durable because its disk
    /// is full (53100); nothing of the write took effect.
    #[error("{0}")]
    DiskFull(String),
    /// A write the write-ahead log could not make durable for another I/O
    /// reason (58030); nothing of the write took effect.
    #[error("{0}")]
    LogWrite(String),
    /// Checkpoint storage failed, or a checkpoint is missing, truncated,
    /// corrupted or of an unknown format version (58030: I/O error).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A bug: an invariant did not hold (XX000).
    #[error("internal error: {0}")]
    Internal(String),
    /// Anything else DataFusion reported, kept with its class (42000 unless classified).
    #[error("{message}")]
    Planning {
        sqlstate: &'static str,
        message: String,
    },
}

impl EddyError {
    /// The Postgres SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            EddyError::Syntax(_) => "42601",
            EddyError::UndefinedRelation(_) => "42P01",
            EddyError::UndefinedColumn(_) => "42703",
            EddyError::UndefinedObject(_) => "42704",
            EddyError::DuplicateRelation(_) => "42P07",
            EddyError::WrongObjectType(_) => "42809",
            EddyError::UniqueViolation { .. } => "23505",
            EddyError::NotNullViolation(_) => "23502",
            EddyError::DependentObjects { .. } => "2BP01",
            EddyError::TypeMismatch(_) => "42804",
            EddyError::InvalidValue(_) => "22P02",
            EddyError::DivisionByZero(_) => "22012",
            EddyError::OutOfRange(_) => "22003",
            EddyError::NotSupported(_) | EddyError::NotIncremental(_) => "0A000",
            EddyError::InvalidParameter(_) => "22023",
            EddyError::InsufficientPrivilege(_) => "42501",
            EddyError::QueryCanceled(_) => "57014",
            EddyError::StatementTooComplex(_) => "54001",
            EddyError::ProgramLimitExceeded(_) => "54000",
            EddyError::OutOfMemory(_) => "53200",
            EddyError::InvalidAuthorization(_) => "28000",
            EddyError::ConnectionFailure(_) => "08001",
            EddyError::Shutdown(_) => "57P01",
            EddyError::DiskFull(_) => "53100",
            EddyError::LogWrite(_) | EddyError::Checkpoint(_) => "58030",
            EddyError::Internal(_) => "XX000",
            EddyError::Planning { sqlstate, .. } => sqlstate,
        }
    }

    /// Secondary detail, sent as the DETAIL field.
    pub fn detail(&self) -> Option<&str> {
        match self {
            EddyError::UniqueViolation { detail, .. }
            | EddyError::DependentObjects { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// A suggestion for the user, sent as the HINT field.
    pub fn hint(&self) -> Option<&str> {
        match self {
            EddyError::DependentObjects { .. } => {
                Some("Use DROP ... CASCADE to drop the dependent objects too.")
            }
            _ => None,
        }
    }
}

/// Shorthand for an `EddyError::NotSupported` naming the missing feature.
#[macro_export]
macro_rules! not_supported {
    ($($arg:tt)*) => { $crate::error::EddyError::NotSupported(format!($($arg)*)) };
}

/// Shorthand for an `EddyError::Internal`: an invariant that did not hold.
#[macro_export]
macro_rules! internal {
    ($($arg:tt)*) => { $crate::error::EddyError::Internal(format!($($arg)*)) };
}

impl From<ArrowError> for EddyError {
    fn from(e: ArrowError) -> Self {
        match e {
            ArrowError::DivideByZero => EddyError::DivisionByZero("division by zero".into()),
            ArrowError::CastError(m) | ArrowError::ParseError(m) => cast_error(m),
            ArrowError::ComputeError(m) if m.contains("overflow") => EddyError::OutOfRange(m),
            ArrowError::ArithmeticOverflow(m) => EddyError::OutOfRange(m),
            other => EddyError::Internal(other.to_string()),
        }
    }
}

impl From<DataFusionError> for EddyError {
    fn from(e: DataFusionError) -> Self {
        // eddy's own errors raised inside DataFusion (table providers, table
        // functions) keep their class.
        if let DataFusionError::External(inner) = e.find_root() {
            if let Some(eddy) = inner.downcast_ref::<EddyError>() {
                return EddyError::Planning {
                    sqlstate: eddy.sqlstate(),
                    message: eddy.to_string(),
                };
            }
        }
        match e.find_root() {
            DataFusionError::ArrowError(arrow, _) => {
                let arrow_message = arrow.to_string();
                match arrow.as_ref() {
                    ArrowError::DivideByZero => {
                        EddyError::DivisionByZero("division by zero".into())
                    }
                    ArrowError::CastError(_) | ArrowError::ParseError(_) => {
                        cast_error(strip_prefix(&arrow_message))
                    }
                    ArrowError::ArithmeticOverflow(_) => {
                        EddyError::OutOfRange(strip_prefix(&arrow_message))
                    }
                    ArrowError::ComputeError(m) if m.contains("overflow") => {
                        EddyError::OutOfRange(strip_prefix(&arrow_message))
                    }
                    _ => EddyError::Internal(arrow_message),
                }
            }
            DataFusionError::SQL(parse, _) => EddyError::Syntax(parse.to_string()),
            DataFusionError::ResourcesExhausted(m) => EddyError::OutOfMemory(format!(
                "out of memory for this query ({m}); queries share --query-memory-limit"
            )),
            DataFusionError::NotImplemented(m) => EddyError::NotSupported(m.clone()),
            DataFusionError::SchemaError(schema_error, _) => {
                let m = schema_error.to_string();
                if m.contains("No field named") {
                    EddyError::UndefinedColumn(m)
                } else {
                    EddyError::Planning {
                        sqlstate: "42000",
                        message: m,
                    }
                }
            }
            DataFusionError::Plan(m) => classify_plan_message(m),
            DataFusionError::Execution(m) if m.contains("Divide by zero") => {
                EddyError::DivisionByZero("division by zero".into())
            }
            DataFusionError::Execution(m) if m.contains("Cast error") => {
                EddyError::InvalidValue(m.clone())
            }
            other => {
                let m = other.to_string();
                if m.contains("Divide by zero") || m.contains("divide by zero") {
                    EddyError::DivisionByZero("division by zero".into())
                } else if m.contains("Cast error") || m.contains("Cannot cast") {
                    EddyError::InvalidValue(m)
                } else if m.contains("overflow") {
                    EddyError::OutOfRange(m)
                } else {
                    EddyError::Planning {
                        sqlstate: "XX000",
                        message: m,
                    }
                }
            }
        }
    }
}

/// A value that does not fit its target type: a number out of the
/// type's range is 22003 (`smallint out of range`, as PostgreSQL says it),
/// anything else 22P02. Arrow says both as "Can't cast value 70000 to type
/// Int16".
fn cast_error(message: String) -> EddyError {
    let out_of_range = message
        .split_once("Can't cast value ")
        .and_then(|(_, rest)| rest.split_once(" to type "))
        .and_then(|(value, target)| {
            value.trim().parse::<f64>().ok()?;
            match target.trim() {
                "Int8" | "Int16" | "UInt8" => Some("smallint"),
                "Int32" | "UInt16" => Some("integer"),
                "Int64" | "UInt32" | "UInt64" => Some("bigint"),
                _ => None,
            }
        });
    match out_of_range {
        Some(type_name) => EddyError::OutOfRange(format!("{type_name} out of range")),
        None => EddyError::InvalidValue(message),
    }
}

fn strip_prefix(m: &str) -> String {
    m.split_once(": ")
        .map(|(_, rest)| rest)
        .unwrap_or(m)
        .to_string()
}

fn classify_plan_message(m: &str) -> EddyError {
    if let Some(rest) = m.strip_prefix("table '") {
        // DataFusion: "table 'eddy.public.x' not found"
        let name = rest.split('\'').next().unwrap_or(rest);
        let short = name.rsplit('.').next().unwrap_or(name);
        return EddyError::UndefinedRelation(format!("relation \"{short}\" does not exist"));
    }
    if m.contains("No field named") {
        return EddyError::UndefinedColumn(m.to_string());
    }
    if m.contains("require unique expression names") {
        return EddyError::Planning {
            sqlstate: "42701",
            message: m.to_string(),
        };
    }
    if m.contains("Cannot infer common")
        || m.contains("There isn't a common type")
        || m.contains("Cannot coerce")
    {
        return EddyError::TypeMismatch(m.to_string());
    }
    if m.contains("not supported") || m.contains("Unsupported") {
        return EddyError::NotSupported(m.to_string());
    }
    if m.contains("does not support")
        || m.contains("No function matches")
        || m.contains("Invalid function")
    {
        return EddyError::Planning {
            sqlstate: "42883",
            message: m.to_string(),
        };
    }
    EddyError::Planning {
        sqlstate: "42000",
        message: m.to_string(),
    }
}
