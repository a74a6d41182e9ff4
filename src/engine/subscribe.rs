//! `SUBSCRIBE view`: a view's changes per epoch, as rows with `op` and
//! `epoch`, through a bounded queue — a client that falls behind is dropped
//! rather than holding the runtime back or growing eddy's memory. Cursors
//! over subscriptions are in `cursors.rs`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::interrupt::StatementGuard;
use super::{Engine, StatementResult};
use crate::catalog::{Relation, ViewEntry};
use crate::error::{EddyError, Result};
use crate::runtime::sink::SinkEpoch;
use crate::runtime::RuntimeHandle;

/// A running SUBSCRIBE: the view's epochs, as rows.
#[derive(Debug)]
pub struct Subscription {
    pub schema: SchemaRef,
    /// `COPY (SUBSCRIBE ...) TO STDOUT`: sent as COPY text data.
    pub as_copy: bool,
    epochs: tokio::sync::mpsc::Receiver<SinkEpoch>,
    /// A SUBSCRIBE statement's cancel requests and disconnection (a
    /// cursor's subscription has none: each FETCH is its own statement).
    stop: Option<StatementGuard>,
    /// Ends the runtime side when the client is gone.
    _guard: SubscriptionGuard,
}

#[derive(Debug)]
struct SubscriptionGuard {
    id: u64,
    runtime: RuntimeHandle,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        // Outside a runtime (shutting down) there is nothing left to tell.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (runtime, id) = (self.runtime.clone(), self.id);
            handle.spawn(async move {
                let _ = runtime.drop_sink(id).await;
            });
        }
    }
}

impl Subscription {
    /// The next epoch's changes as one batch (`op` is `insert` or `delete`;
    /// a row inserted twice appears twice); `None` when the subscription
    /// ended, `Err` when it fell behind.
    /// A cancel request or the client going away ends it with 57014.
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        let Self { epochs, stop, .. } = self;
        let next = match stop {
            Some(guard) => guard.run(async { Ok(epochs.recv().await) }).await,
            None => Ok(epochs.recv().await),
        };
        match next {
            Ok(Some(epoch)) => Some(self.rows_of(epoch)),
            Ok(None) => Some(Err(fell_behind())),
            Err(stopped) => Some(Err(stopped)),
        }
    }

    /// The next epoch's changes if they have arrived (`None`: not yet).
    pub(super) fn try_next_batch(&mut self) -> Option<Result<RecordBatch>> {
        match self.epochs.try_recv() {
            Ok(epoch) => Some(self.rows_of(epoch)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(Err(fell_behind())),
        }
    }

    fn rows_of(&self, epoch: SinkEpoch) -> Result<RecordBatch> {
        let width = self.schema.fields().len() - 2;
        let mut batches = Vec::new();
        for change in &epoch.changes {
            let mut indices = Vec::new();
            let mut ops = Vec::new();
            for (row, weight) in change.weights.values().iter().enumerate() {
                for _ in 0..weight.unsigned_abs() {
                    indices.push(row as u32);
                    ops.push(if *weight > 0 { "insert" } else { "delete" });
                }
            }
            let taken = datafusion::arrow::compute::take_record_batch(
                &change.rows,
                &datafusion::arrow::array::UInt32Array::from(indices),
            )?;
            let mut columns: Vec<ArrayRef> = taken.columns()[..width].to_vec();
            columns.push(Arc::new(StringArray::from(ops.clone())));
            columns.push(Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                epoch.epoch as i64;
                ops.len()
            ])));
            batches.push(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        Ok(datafusion::arrow::compute::concat_batches(
            &self.schema,
            &batches,
        )?)
    }
}

pub(super) fn fell_behind() -> EddyError {
    EddyError::OutOfRange(
        "subscription ended: the client fell behind (or the view was dropped)".into(),
    )
}

/// Epochs with changes a SUBSCRIBE client may be behind before it is
/// dropped (it never holds the runtime back, nor makes eddy's memory grow).
pub const SUBSCRIPTION_QUEUE_EPOCHS: usize = 256;

impl Engine {
    /// `SUBSCRIBE view`: the view's changes, streamed.
    pub(super) async fn subscribe(&self, name: &str, snapshot: bool) -> Result<Subscription> {
        let (view, schema) = self.subscribed_view(name)?;
        let id = self.catalog.allocate_id();
        let (sender, receiver) = tokio::sync::mpsc::channel(SUBSCRIPTION_QUEUE_EPOCHS);
        self.runtime
            .subscribe(id, view.id, sender, snapshot)
            .await?;
        Ok(Subscription {
            schema,
            as_copy: false,
            epochs: receiver,
            stop: None,
            _guard: SubscriptionGuard {
                id,
                runtime: self.runtime.clone(),
            },
        })
    }

    /// The view `SUBSCRIBE name` reads, and the rows it sends: the view's
    /// columns, then `op` and `epoch`.
    fn subscribed_view(&self, name: &str) -> Result<(Arc<ViewEntry>, SchemaRef)> {
        let view = match self.catalog.require(name)? {
            Relation::View(v) if v.owner_sink.is_none() => v,
            _ => {
                return Err(EddyError::WrongObjectType(format!(
                    "\"{name}\" is not a materialized view; SUBSCRIBE reads materialized views"
                )))
            }
        };
        let mut fields: Vec<Field> = view
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("op", DataType::Utf8, false));
        fields.push(Field::new("epoch", DataType::Int64, false));
        Ok((view, Arc::new(Schema::new(fields))))
    }

    /// The rows `SUBSCRIBE name` sends (for a client that describes the
    /// statement before running it: the extended protocol).
    pub(super) fn subscription_schema(&self, name: &str) -> Result<SchemaRef> {
        Ok(self.subscribed_view(name)?.1)
    }

    /// `SUBSCRIBE [TO] view`: runs until `stop` says the client canceled
    /// it or went away.
    pub(super) async fn subscribe_statement(
        &self,
        stop: StatementGuard,
        view: &str,
        snapshot: bool,
        copy: bool,
    ) -> Result<StatementResult> {
        let mut subscription = self.subscribe(view, snapshot).await?;
        subscription.stop = Some(stop);
        subscription.as_copy = copy;
        Ok(StatementResult::Subscription(subscription))
    }
}
