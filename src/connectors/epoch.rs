//! What one epoch of a view's changes did to each key: shared by the sinks.
//!
//! A keyed view holds at most one row per key. Over an epoch a key may be
//! retracted and re-inserted several times; a sink needs only its fate: the
//! row it had before the epoch (if its first change retracted one) and the
//! row it has after (if its last change inserted one). A key that did not
//! exist before and does not exist after writes nothing.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::common::ChangeBatch;
use crate::error::{EddyError, Result};
use crate::state::RowCodec;

/// A row of one of the epoch's change batches: `(batch, row)`.
pub type RowRef = (usize, usize);

/// The fate of one key over an epoch.
#[derive(Debug, Clone)]
pub struct KeyFate {
    /// The encoded key columns.
    pub key: Arc<[u8]>,
    /// The row the key had before the epoch.
    pub before: Option<RowRef>,
    /// The row the key has after the epoch.
    pub after: Option<RowRef>,
}

/// The fate of every key the epoch touched, in the order first touched.
pub fn key_fates(
    schema: &SchemaRef,
    key: &[usize],
    changes: &[ChangeBatch],
) -> Result<Vec<KeyFate>> {
    let codec = RowCodec::try_new(Arc::new(schema.project(key)?))?;
    let mut index: crate::state::KeyMap<Arc<[u8]>, usize> = Default::default();
    let mut fates: Vec<KeyFate> = Vec::new();
    for (b, change) in changes.iter().enumerate() {
        let keys = codec.encode(&change.rows.project(key)?)?;
        for (r, (key, weight)) in keys.into_iter().zip(change.weights.values()).enumerate() {
            let position = *index.entry(key.clone()).or_insert_with(|| {
                fates.push(KeyFate {
                    key,
                    before: (*weight < 0).then_some((b, r)),
                    after: None,
                });
                fates.len() - 1
            });
            fates[position].after = (*weight > 0).then_some((b, r));
        }
    }
    Ok(fates)
}

/// The rows an append-only view inserted over an epoch (a row inserted
/// twice, twice); a retraction is an error: the view is not append-only.
pub fn appended_rows(changes: &[ChangeBatch]) -> Result<Vec<RowRef>> {
    let mut rows = Vec::new();
    for (b, change) in changes.iter().enumerate() {
        for (r, weight) in change.weights.values().iter().enumerate() {
            if *weight < 0 {
                return Err(EddyError::NotSupported(
                    "an append-only sink received a retraction: its view is not append-only".into(),
                ));
            }
            rows.extend(std::iter::repeat_n((b, r), *weight as usize));
        }
    }
    Ok(rows)
}

/// The rows at `rows` of the epoch's batches, as one batch (None if none).
pub fn take_rows(changes: &[ChangeBatch], rows: &[RowRef]) -> Result<Option<RecordBatch>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let batches: Vec<&RecordBatch> = changes.iter().map(|c| &c.rows).collect();
    Ok(Some(datafusion::arrow::compute::interleave_record_batch(
        &batches, rows,
    )?))
}

/// Each row of `rows` as a JSON object (NULL columns left out).
pub fn json_rows(rows: Option<&RecordBatch>) -> Result<Vec<String>> {
    let Some(rows) = rows else {
        return Ok(vec![]);
    };
    if rows.num_rows() == 0 {
        return Ok(vec![]);
    }
    let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(rows)?;
    writer.finish()?;
    let text = String::from_utf8(writer.into_inner())
        .map_err(|e| crate::internal!("JSON writer produced invalid UTF-8: {e}"))?;
    Ok(text.lines().map(str::to_string).collect())
}
