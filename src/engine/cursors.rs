//! Subscription cursors (`DECLARE c SUBSCRIPTION CURSOR FOR view`,
//! `FETCH`, `CLOSE`): a SUBSCRIBE whose changes wait, within the
//! subscription's bounded queue, for the client to FETCH them. A session
//! holds its cursors ([`Cursors`]); the statements work on them.

use std::collections::{BTreeMap, VecDeque};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::subscribe::Subscription;
use super::{Engine, StatementResult};
use crate::error::{EddyError, Result};

/// A session's open cursors, by name.
#[derive(Debug, Default)]
pub(super) struct Cursors(BTreeMap<String, Cursor>);

/// A subscription cursor (`DECLARE c SUBSCRIPTION CURSOR FOR view`): its
/// changes wait for FETCH, within the subscription's bounded queue.
#[derive(Debug)]
pub(super) struct Cursor {
    subscription: Subscription,
    /// Rows received and not fetched yet.
    buffered: VecDeque<RecordBatch>,
}

impl Cursor {
    fn buffered_rows(&self) -> usize {
        self.buffered.iter().map(RecordBatch::num_rows).sum()
    }

    /// Moves what has arrived into the buffer (at most `want` rows' worth
    /// of epochs beyond what is buffered, so a small FETCH takes little).
    fn receive(&mut self, want: usize) -> Result<()> {
        while self.buffered_rows() < want {
            match self.subscription.try_next_batch() {
                Some(batch) => self.buffered.push_back(batch?),
                None => break,
            }
        }
        Ok(())
    }

    /// Takes up to `want` buffered rows.
    fn take(&mut self, want: usize) -> Result<RecordBatch> {
        let mut taken = Vec::new();
        let mut left = want;
        while left > 0 {
            let Some(batch) = self.buffered.pop_front() else {
                break;
            };
            if batch.num_rows() > left {
                self.buffered
                    .push_front(batch.slice(left, batch.num_rows() - left));
                taken.push(batch.slice(0, left));
                left = 0;
            } else {
                left -= batch.num_rows();
                taken.push(batch);
            }
        }
        Ok(datafusion::arrow::compute::concat_batches(
            &self.subscription.schema,
            &taken,
        )?)
    }
}

fn no_such_cursor(name: &str) -> EddyError {
    EddyError::Planning {
        sqlstate: "34000",
        message: format!("cursor \"{name}\" does not exist"),
    }
}

impl Engine {
    /// FETCH from a subscription cursor: up to `count` rows (all there
    /// are: `None`); when none are there, waits for the next epoch with
    /// changes, at most `timeout_ms` if given. A cursor that fell behind is
    /// closed with an error.
    pub(super) async fn fetch(
        cursors: &mut Cursors,
        name: &str,
        count: Option<usize>,
        timeout_ms: Option<u64>,
    ) -> Result<StatementResult> {
        let cursor = cursors
            .0
            .get_mut(name)
            .ok_or_else(|| no_such_cursor(name))?;
        let want = count.unwrap_or(usize::MAX);
        let mut outcome = cursor.receive(want);
        if outcome.is_ok() && want > 0 && cursor.buffered.is_empty() {
            let next = cursor.subscription.next_batch();
            let arrived = match timeout_ms {
                Some(ms) => tokio::time::timeout(std::time::Duration::from_millis(ms), next)
                    .await
                    .ok(),
                None => Some(next.await),
            };
            outcome = match arrived.flatten() {
                Some(Ok(batch)) => {
                    cursor.buffered.push_back(batch);
                    cursor.receive(want)
                }
                Some(Err(e)) => Err(e),
                None => Ok(()),
            };
        }
        if let Err(e) = outcome {
            cursors.0.remove(name);
            return Err(e);
        }
        let batch = cursor.take(want)?;
        Ok(StatementResult::Rows {
            schema: batch.schema(),
            batches: vec![batch],
        })
    }

    /// The columns FETCH from cursor `name` returns.
    pub(super) fn cursor_schema(cursors: &Cursors, name: &str) -> Result<SchemaRef> {
        cursors
            .0
            .get(name)
            .map(|c| c.subscription.schema.clone())
            .ok_or_else(|| no_such_cursor(name))
    }

    /// `DECLARE name SUBSCRIPTION CURSOR FOR view`.
    pub(super) async fn declare_cursor(
        &self,
        cursors: &mut Cursors,
        name: String,
        view: &str,
        snapshot: bool,
    ) -> Result<StatementResult> {
        if cursors.0.contains_key(&name) {
            return Err(EddyError::Planning {
                sqlstate: "42P03",
                message: format!("cursor \"{name}\" already exists"),
            });
        }
        let subscription = self.subscribe(view, snapshot).await?;
        cursors.0.insert(
            name,
            Cursor {
                subscription,
                buffered: VecDeque::new(),
            },
        );
        Ok(StatementResult::Command("DECLARE CURSOR".into()))
    }

    /// `CLOSE name` / `CLOSE ALL` (`None`).
    pub(super) fn close_cursor(
        cursors: &mut Cursors,
        name: Option<String>,
    ) -> Result<StatementResult> {
        match name {
            None => cursors.0.clear(),
            Some(name) => {
                cursors
                    .0
                    .remove(&name)
                    .ok_or_else(|| no_such_cursor(&name))?;
            }
        }
        Ok(StatementResult::Command("CLOSE CURSOR".into()))
    }
}
