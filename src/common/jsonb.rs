//! jsonb values as PostgreSQL writes them. eddy keeps jsonb as text; what
//! it produces (a Kafka message's nested field, the result of `->`) is
//! written in PostgreSQL's jsonb form, so that equal values compare and
//! group alike whatever spacing and key order the input had.

use std::cmp::Ordering;

use serde_json::Value;

/// `value` as PostgreSQL writes jsonb: `", "` and `": "` between items,
/// object keys shortest first, then bytewise.
pub fn render(value: &Value) -> String {
    let mut out = String::new();
    render_into(value, &mut out);
    out
}

fn render_into(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_into(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort_by(|a, b| match a.len().cmp(&b.len()) {
                Ordering::Equal => a.cmp(b),
                other => other,
            });
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                render_into(&fields[key], out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `text` (JSON) in jsonb form, or why it is not JSON.
pub fn normalize(text: &str) -> Result<String, String> {
    serde_json::from_str::<Value>(text)
        .map(|value| render(&value))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_jsonb_as_postgres_does() {
        assert_eq!(
            normalize(r#"{"bb":1,"a":[1,{"c":"d"}],"ab":null}"#).unwrap(),
            r#"{"a": [1, {"c": "d"}], "ab": null, "bb": 1}"#
        );
        assert_eq!(normalize(r#" "x\"y" "#).unwrap(), r#""x\"y""#);
        assert!(normalize("{oops").is_err());
    }
}
