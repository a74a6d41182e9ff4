//! Declared JSON columns that no message has a field for.
//!
//! A JSON source maps fields to columns by name (exactly, else ignoring
//! ASCII case), and a column whose field never appears is NULL in every
//! row: a typo, or a field that is nested deeper, reads as silent NULLs. Each reader looks at the field names of the first
//! [`SAMPLE`] messages (or of what arrived within [`SAMPLE_TIME`] of the
//! first one) and, if a declared column matched none of them, says so once
//! for the source — in `eddy_catalog.source_errors` and the log — naming
//! the fields the messages did have. Only the sample is parsed a second
//! time; the decoder is not touched.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Messages looked at before deciding.
const SAMPLE: usize = 100;
/// With fewer messages, how long after the first one to decide.
const SAMPLE_TIME: Duration = Duration::from_secs(5);
/// Field names listed in the report at most.
const LISTED_FIELDS: usize = 40;

/// One reader's sample of field names.
#[derive(Debug)]
pub struct FieldCheck {
    /// The declared payload columns.
    columns: Vec<String>,
    /// For each column, whether some sampled message had its field.
    matched: Vec<bool>,
    /// Field names the sampled messages had.
    fields: BTreeSet<String>,
    sampled: usize,
    first_at: Option<Instant>,
}

impl FieldCheck {
    pub fn new(columns: Vec<String>) -> Self {
        Self {
            matched: vec![false; columns.len()],
            columns,
            fields: BTreeSet::new(),
            sampled: 0,
            first_at: None,
        }
    }

    /// Looks at one more payload (not a JSON object: not counted, the
    /// decoder reports it).
    pub fn observe(&mut self, payload: &[u8]) {
        if self.sampled >= SAMPLE {
            return;
        }
        let Ok(object) =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
        else {
            return;
        };
        self.sampled += 1;
        self.first_at.get_or_insert_with(Instant::now);
        for field in object.keys() {
            if let Some(column) = self
                .columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(field))
            {
                self.matched[column] = true;
            }
            if self.fields.len() < LISTED_FIELDS {
                self.fields.insert(field.clone());
            }
        }
    }

    /// Whether the sample is complete: enough messages, or enough time
    /// since the first.
    pub fn is_complete(&self) -> bool {
        self.sampled >= SAMPLE || self.first_at.is_some_and(|t| t.elapsed() >= SAMPLE_TIME)
    }

    /// Once complete: the report, if some declared column matched no field.
    pub fn report(&self) -> Option<String> {
        let unmatched: Vec<&str> = self
            .columns
            .iter()
            .zip(&self.matched)
            .filter(|(_, matched)| !**matched)
            .map(|(column, _)| column.as_str())
            .collect();
        if unmatched.is_empty() {
            return None;
        }
        let fields: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        Some(format!(
            "declared column{} {} matched no field of the first {} messages (always NULL); \
             the messages have fields {}",
            if unmatched.len() == 1 { "" } else { "s" },
            unmatched.join(", "),
            self.sampled,
            fields.join(", "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(columns: &[&str], payloads: &[&str]) -> Option<String> {
        let mut check = FieldCheck::new(columns.iter().map(|c| c.to_string()).collect());
        for payload in payloads {
            check.observe(payload.as_bytes());
        }
        check.report()
    }

    #[test]
    fn a_column_no_message_has_is_reported_with_the_fields_they_have() {
        let report = checked(
            &["auction", "datetime", "price"],
            &[
                r#"{"auction": 1, "dateTime": "2024-01-01", "data": {"price": 3}}"#,
                "not json",
            ],
        )
        .expect("price matched nothing");
        assert!(
            report.contains("declared column price matched no field of the first 1 messages"),
            "{report}"
        );
        assert!(
            report.contains("fields auction, data, dateTime"),
            "{report}"
        );
    }

    #[test]
    fn columns_found_in_any_message_are_not_reported() {
        assert_eq!(
            checked(&["a", "b"], &[r#"{"a": 1}"#, r#"{"b": null}"#]),
            None
        );
    }

    #[test]
    fn the_sample_is_complete_after_enough_messages() {
        let mut check = FieldCheck::new(vec!["a".into()]);
        for _ in 0..SAMPLE {
            assert!(!check.is_complete());
            check.observe(br#"{"b": 1}"#);
        }
        assert!(check.is_complete());
    }
}
