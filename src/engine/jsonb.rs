//! PostgreSQL's jsonb operators and functions over eddy's jsonb values.
//!
//! eddy stores `json`/`jsonb` as text that parses as JSON, tagged `jsonb`
//! in the field's metadata (`common::types`). These functions read such
//! text (or any text holding JSON) and answer as PostgreSQL does:
//!
//! | operator | function                                 | result           |
//! |----------|------------------------------------------|------------------|
//! | `j -> k` | `jsonb_object_field(j, k)`               | jsonb            |
//! | `j ->> k`| `jsonb_object_field_text(j, k)`          | text             |
//! | `j #> p` | `jsonb_extract_path(j, VARIADIC p)`      | jsonb            |
//! | `j #>> p`| `jsonb_extract_path_text(j, VARIADIC p)` | text             |
//! | `a @> b` | `jsonb_contains(a, b)` (`<@` swapped)    | boolean          |
//! | `j ? k`  | `jsonb_exists(j, k)`                     | boolean          |
//!
//! plus `jsonb_typeof`, `jsonb_array_length` and `jsonb_build_object(key,
//! value, ...)` (numbers and booleans as JSON's, jsonb as itself, NULL as
//! null, anything else as its text). `k` is a text key or an
//! integer array index (negative counts from the end); a path's steps are
//! keys, or indexes written as text. A missing key or index, or a step into
//! a scalar, is NULL. Text that is not JSON is 22P02. jsonb results are
//! written as PostgreSQL writes jsonb (`{"a": 1, "b": [1, 2]}`, keys
//! shortest first).
//!
//! The operators are planned into these calls by
//! [`super::postgres_operators`].

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Int32Builder, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{exec_err, Result as DFResult};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use serde_json::Value;

use crate::common::jsonb::render;
use crate::common::types::PG_TYPE_METADATA_KEY;
use crate::error::EddyError;

/// What a jsonb function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum JsonbFunction {
    /// `->` / `->>`: one step, a key of an object or an index of an array.
    Field {
        text: bool,
    },
    /// `#>` / `#>>` / `jsonb_extract_path[_text]`: steps, each a key or
    /// an index written as text.
    Path {
        text: bool,
    },
    /// `@>`.
    Contains,
    /// `?`.
    Exists,
    TypeOf,
    ArrayLength,
}

impl JsonbFunction {
    fn name(self) -> &'static str {
        match self {
            JsonbFunction::Field { text: false } => "jsonb_object_field",
            JsonbFunction::Field { text: true } => "jsonb_object_field_text",
            JsonbFunction::Path { text: false } => "jsonb_extract_path",
            JsonbFunction::Path { text: true } => "jsonb_extract_path_text",
            JsonbFunction::Contains => "jsonb_contains",
            JsonbFunction::Exists => "jsonb_exists",
            JsonbFunction::TypeOf => "jsonb_typeof",
            JsonbFunction::ArrayLength => "jsonb_array_length",
        }
    }

    /// The same function under PostgreSQL's `json_` name.
    fn json_name(self) -> &'static str {
        match self {
            JsonbFunction::Field { text: false } => "json_object_field",
            JsonbFunction::Field { text: true } => "json_object_field_text",
            JsonbFunction::Path { text: false } => "json_extract_path",
            JsonbFunction::Path { text: true } => "json_extract_path_text",
            JsonbFunction::Contains => "json_contains",
            JsonbFunction::Exists => "json_exists",
            JsonbFunction::TypeOf => "json_typeof",
            JsonbFunction::ArrayLength => "json_array_length",
        }
    }

    const ALL: [JsonbFunction; 8] = [
        JsonbFunction::Field { text: false },
        JsonbFunction::Field { text: true },
        JsonbFunction::Path { text: false },
        JsonbFunction::Path { text: true },
        JsonbFunction::Contains,
        JsonbFunction::Exists,
        JsonbFunction::TypeOf,
        JsonbFunction::ArrayLength,
    ];

    /// The function as a DataFusion UDF.
    pub(super) fn udf(self) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(Jsonb {
            function: self,
            signature: Signature::variadic_any(Volatility::Immutable),
        }))
    }

    fn arity(self) -> std::ops::RangeInclusive<usize> {
        match self {
            JsonbFunction::Field { .. } | JsonbFunction::Contains | JsonbFunction::Exists => 2..=2,
            JsonbFunction::Path { .. } => 1..=usize::MAX,
            JsonbFunction::TypeOf | JsonbFunction::ArrayLength => 1..=1,
        }
    }
}

/// Registers the jsonb functions (also under `json_` names) in `state`.
pub fn register(state: &mut SessionState) -> DFResult<()> {
    for function in JsonbFunction::ALL {
        let udf = function
            .udf()
            .as_ref()
            .clone()
            .with_aliases([function.json_name()]);
        state.register_udf(Arc::new(udf))?;
    }
    state.register_udf(Arc::new(ScalarUDF::new_from_impl(BuildObject {
        signature: Signature::variadic_any(Volatility::Immutable),
    })))?;
    Ok(())
}

/// `jsonb_build_object(key, value, ...)` (also `json_build_object`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct BuildObject {
    signature: Signature,
}

impl ScalarUDFImpl for BuildObject {
    fn name(&self) -> &str {
        "jsonb_build_object"
    }

    fn aliases(&self) -> &[String] {
        static ALIASES: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["json_build_object".to_string()]);
        &ALIASES
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        if args.arg_fields.len() % 2 != 0 {
            return Err(datafusion::error::DataFusionError::External(Box::new(
                EddyError::InvalidParameter(
                    "argument list must have even number of elements (json_build_object takes \
                     keys and values)"
                        .into(),
                ),
            )));
        }
        Ok(Arc::new(jsonb_field(self.name())))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        on_arrays(&args, |arrays, rows| {
            build_objects(arrays, rows, &args.arg_fields)
        })
    }
}

/// One JSON object per row from key/value argument pairs.
fn build_objects(arrays: &[ArrayRef], rows: usize, fields: &[FieldRef]) -> DFResult<ArrayRef> {
    let mut out = StringBuilder::new();
    for row in 0..rows {
        let mut object = serde_json::Map::new();
        for (pair, fields) in arrays.chunks(2).zip(fields.chunks(2)) {
            if pair[0].is_null(row) {
                return Err(datafusion::error::DataFusionError::External(Box::new(
                    EddyError::InvalidParameter("null value not allowed for object key".into()),
                )));
            }
            let key = json_of(&pair[0], row, &fields[0])?;
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            object.insert(key, json_of(&pair[1], row, &fields[1])?);
        }
        out.append_value(render(&Value::Object(object)));
    }
    Ok(Arc::new(out.finish()))
}

/// One value as JSON: numbers and booleans as themselves, jsonb parsed,
/// NULL as null, anything else as its PostgreSQL text.
fn json_of(array: &ArrayRef, row: usize, field: &Field) -> DFResult<Value> {
    // A NULL literal's array has no null mask: its type says it.
    if array.is_null(row) || array.data_type() == &DataType::Null {
        return Ok(Value::Null);
    }
    let text = crate::common::pg_types::text_value(array, row)
        .map_err(datafusion::error::DataFusionError::External)?;
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        t if t.is_numeric() => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        DataType::Utf8 if crate::common::types::is_json_field(field) => parse(&text)?,
        _ => Value::String(text),
    })
}

/// Evaluates a function over its arguments as arrays (`compute` gets them
/// and the row count); the result is a scalar when every argument was.
pub(super) fn on_arrays(
    args: &ScalarFunctionArgs,
    compute: impl FnOnce(&[ArrayRef], usize) -> DFResult<ArrayRef>,
) -> DFResult<ColumnarValue> {
    let rows = args.number_rows;
    let arrays = args
        .args
        .iter()
        .map(|a| a.to_array(rows))
        .collect::<DFResult<Vec<ArrayRef>>>()?;
    let result = compute(&arrays, rows)?;
    if args
        .args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)))
    {
        Ok(ColumnarValue::Scalar(
            datafusion::common::ScalarValue::try_from_array(&result, 0)?,
        ))
    } else {
        Ok(ColumnarValue::Array(result))
    }
}

/// The Arrow field of a jsonb value.
pub fn jsonb_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(
        PG_TYPE_METADATA_KEY.to_string(),
        "jsonb".to_string(),
    )]))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Jsonb {
    function: JsonbFunction,
    signature: Signature,
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

fn is_step(data_type: &DataType) -> bool {
    is_text(data_type) || data_type.is_integer()
}

impl ScalarUDFImpl for Jsonb {
    fn name(&self) -> &str {
        self.function.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(match self.function {
            JsonbFunction::Contains | JsonbFunction::Exists => DataType::Boolean,
            JsonbFunction::ArrayLength => DataType::Int32,
            _ => DataType::Utf8,
        })
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        let types: Vec<&DataType> = args.arg_fields.iter().map(|f| f.data_type()).collect();
        let name = self.function.name();
        if !self.function.arity().contains(&types.len()) {
            return exec_err!("{name}() takes {:?} arguments", self.function.arity());
        }
        let arguments_fit = match self.function {
            JsonbFunction::Field { .. } | JsonbFunction::Path { .. } => {
                is_text(types[0]) && types[1..].iter().all(|t| is_step(t))
            }
            JsonbFunction::Exists | JsonbFunction::Contains => types.iter().all(|t| is_text(t)),
            JsonbFunction::TypeOf | JsonbFunction::ArrayLength => is_text(types[0]),
        };
        if !arguments_fit {
            return Err(datafusion::error::DataFusionError::External(Box::new(
                EddyError::Planning {
                    sqlstate: "42883",
                    message: format!(
                        "function {name}({}) does not exist: it takes jsonb (or text holding \
                         JSON){}",
                        types
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        match self.function {
                            JsonbFunction::Field { .. } | JsonbFunction::Path { .. } =>
                                " and keys (text) or indexes (integer)",
                            JsonbFunction::Exists => " and a key (text)",
                            _ => "",
                        }
                    ),
                },
            )));
        }
        let field = match self.function {
            JsonbFunction::Field { text: false } | JsonbFunction::Path { text: false } => {
                jsonb_field(name)
            }
            _ => Field::new(name, self.return_type(&[])?, true),
        };
        Ok(Arc::new(field))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        on_arrays(&args, |arrays, rows| evaluate(self.function, arrays, rows))
    }
}

/// One step of a path: a key, or an array index.
enum Step {
    Key(String),
    Index(i64),
}

/// The steps of each row: text arguments as keys, integers as indexes.
fn steps_of(arrays: &[ArrayRef]) -> DFResult<Vec<StepColumn>> {
    arrays
        .iter()
        .map(|array| {
            Ok(if array.data_type().is_integer() {
                StepColumn::Index(cast(array, &DataType::Int64)?)
            } else {
                StepColumn::Key(cast(array, &DataType::Utf8)?)
            })
        })
        .collect()
}

enum StepColumn {
    Key(ArrayRef),
    Index(ArrayRef),
}

impl StepColumn {
    fn at(&self, row: usize) -> Option<Step> {
        match self {
            StepColumn::Key(array) => {
                let keys = array.as_string::<i32>();
                keys.is_valid(row)
                    .then(|| Step::Key(keys.value(row).into()))
            }
            StepColumn::Index(array) => {
                let indexes = array.as_primitive::<Int64Type>();
                indexes
                    .is_valid(row)
                    .then(|| Step::Index(indexes.value(row)))
            }
        }
    }
}

fn parse(text: &str) -> DFResult<Value> {
    serde_json::from_str(text).map_err(|e| {
        datafusion::error::DataFusionError::External(Box::new(EddyError::InvalidValue(format!(
            "invalid input syntax for type json: {e}"
        ))))
    })
}

fn evaluate(function: JsonbFunction, arrays: &[ArrayRef], rows: usize) -> DFResult<ArrayRef> {
    let documents = cast(&arrays[0], &DataType::Utf8)?;
    let documents = documents.as_string::<i32>();
    match function {
        JsonbFunction::Field { text } | JsonbFunction::Path { text } => {
            let steps = steps_of(&arrays[1..])?;
            let by_path = matches!(function, JsonbFunction::Path { .. });
            let mut out = StringBuilder::new();
            for row in 0..rows {
                if documents.is_null(row) {
                    out.append_null();
                    continue;
                }
                let document = parse(documents.value(row))?;
                let mut at = Some(&document);
                for column in &steps {
                    at = match (at, column.at(row)) {
                        (Some(value), Some(step)) => descend(value, &step, by_path),
                        _ => None,
                    };
                }
                match at {
                    None => out.append_null(),
                    Some(Value::Null) if text => out.append_null(),
                    Some(Value::String(s)) if text => out.append_value(s),
                    Some(value) => out.append_value(render(value)),
                }
            }
            Ok(Arc::new(out.finish()))
        }
        JsonbFunction::Contains | JsonbFunction::Exists => {
            let other = cast(&arrays[1], &DataType::Utf8)?;
            let other = other.as_string::<i32>();
            let mut out = BooleanBuilder::new();
            for row in 0..rows {
                if documents.is_null(row) || other.is_null(row) {
                    out.append_null();
                    continue;
                }
                let document = parse(documents.value(row))?;
                let answer = if function == JsonbFunction::Contains {
                    contains(&document, &parse(other.value(row))?, true)
                } else {
                    let key = other.value(row);
                    match &document {
                        Value::Object(fields) => fields.contains_key(key),
                        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(key)),
                        _ => false,
                    }
                };
                out.append_value(answer);
            }
            Ok(Arc::new(out.finish()))
        }
        JsonbFunction::TypeOf => {
            let mut out = StringBuilder::new();
            for row in 0..rows {
                if documents.is_null(row) {
                    out.append_null();
                    continue;
                }
                out.append_value(match parse(documents.value(row))? {
                    Value::Null => "null",
                    Value::Bool(_) => "boolean",
                    Value::Number(_) => "number",
                    Value::String(_) => "string",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                });
            }
            Ok(Arc::new(out.finish()))
        }
        JsonbFunction::ArrayLength => {
            let mut out = Int32Builder::new();
            for row in 0..rows {
                if documents.is_null(row) {
                    out.append_null();
                    continue;
                }
                match parse(documents.value(row))? {
                    Value::Array(items) => out.append_value(items.len() as i32),
                    Value::Object(_) => {
                        return Err(datafusion::error::DataFusionError::External(Box::new(
                            EddyError::InvalidParameter(
                                "cannot get array length of a non-array".into(),
                            ),
                        )))
                    }
                    _ => {
                        return Err(datafusion::error::DataFusionError::External(Box::new(
                            EddyError::InvalidParameter(
                                "cannot get array length of a scalar".into(),
                            ),
                        )))
                    }
                }
            }
            Ok(Arc::new(out.finish()))
        }
    }
}

/// One step into `value`. `->` takes text keys of objects and integer
/// indexes of arrays only; a path also reads an index written as text.
fn descend<'a>(value: &'a Value, step: &Step, by_path: bool) -> Option<&'a Value> {
    let index_into = |items: &'a Vec<Value>, index: i64| {
        let index = if index < 0 {
            items.len() as i64 + index
        } else {
            index
        };
        usize::try_from(index).ok().and_then(|i| items.get(i))
    };
    match (value, step) {
        (Value::Object(fields), Step::Key(key)) => fields.get(key),
        (Value::Array(items), Step::Index(index)) => index_into(items, *index),
        (Value::Array(items), Step::Key(key)) if by_path => key
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|i| index_into(items, i)),
        _ => None,
    }
}

/// PostgreSQL's `@>`: every part of `part` is in `whole`; an array
/// contains an array whose elements it contains in any order, and a
/// top-level array contains a scalar that is one of its elements.
fn contains(whole: &Value, part: &Value, top_level: bool) -> bool {
    match (whole, part) {
        (Value::Object(fields), Value::Object(wanted)) => wanted.iter().all(|(key, value)| {
            fields
                .get(key)
                .is_some_and(|have| contains(have, value, false))
        }),
        (Value::Array(items), Value::Array(wanted)) => wanted.iter().all(|value| {
            items.iter().any(|have| match (have, value) {
                (Value::Array(_) | Value::Object(_), _) => contains(have, value, false),
                _ => scalar_equal(have, value),
            })
        }),
        (Value::Array(items), scalar) if top_level && !scalar.is_array() && !scalar.is_object() => {
            items.iter().any(|have| scalar_equal(have, scalar))
        }
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => false,
        _ => scalar_equal(whole, part),
    }
}

/// Scalars are equal as jsonb compares them: numbers by value.
fn scalar_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn text_of(array: &ArrayRef) -> Vec<Option<String>> {
        array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(String::from))
            .collect()
    }

    #[test]
    fn steps_into_objects_and_arrays_as_postgres_does() {
        let doc = strings(&[Some(r#"{"a": {"b": [10, "x", null]}, "n": null}"#); 1]);
        let field = |key: &str, text| {
            text_of(
                &evaluate(
                    JsonbFunction::Field { text },
                    &[doc.clone(), strings(&[Some(key)])],
                    1,
                )
                .unwrap(),
            )
        };
        assert_eq!(
            field("a", false),
            [Some(r#"{"b": [10, "x", null]}"#.into())]
        );
        assert_eq!(field("missing", true), [None]);
        assert_eq!(field("n", false), [Some("null".into())]);
        assert_eq!(field("n", true), [None]);
        let path = |steps: &[&str], text| {
            let mut args = vec![doc.clone()];
            args.extend(steps.iter().map(|s| strings(&[Some(s)])));
            text_of(&evaluate(JsonbFunction::Path { text }, &args, 1).unwrap())
        };
        assert_eq!(path(&["a", "b", "1"], true), [Some("x".into())]);
        assert_eq!(path(&["a", "b", "-3"], false), [Some("10".into())]);
        assert_eq!(path(&["a", "b", "7"], false), [None]);
        assert_eq!(path(&["a", "b", "0", "deeper"], false), [None]);
        // `->` indexes arrays by integer only.
        let array = strings(&[Some("[1, 2, 3]")]);
        let by_index = evaluate(
            JsonbFunction::Field { text: true },
            &[array.clone(), Arc::new(Int64Array::from(vec![-1]))],
            1,
        )
        .unwrap();
        assert_eq!(text_of(&by_index), [Some("3".into())]);
        let by_text = evaluate(
            JsonbFunction::Field { text: true },
            &[array, strings(&[Some("0")])],
            1,
        )
        .unwrap();
        assert_eq!(text_of(&by_text), [None]);
    }

    #[test]
    fn containment_follows_postgres() {
        let json = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let holds = |a: &str, b: &str| contains(&json(a), &json(b), true);
        assert!(holds(
            r#"{"a": 1, "b": {"c": [1, 2]}}"#,
            r#"{"b": {"c": [2]}}"#
        ));
        assert!(!holds(r#"{"a": 1}"#, r#"{"a": 2}"#));
        assert!(holds("[1, 2, [3, 4]]", "[[4], 1]"));
        assert!(holds(r#"["foo", "bar"]"#, r#""foo""#));
        assert!(!holds(r#"{"a": ["foo"]}"#, r#"{"a": "foo"}"#));
        assert!(holds("1.0", "1"));
        assert!(!holds(r#"{"a": 1}"#, "[]"));
    }

    #[test]
    fn text_that_is_not_json_is_an_error() {
        let err = evaluate(JsonbFunction::TypeOf, &[strings(&[Some("{oops")])], 1).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid input syntax for type json"),
            "{err}"
        );
    }
}
