//! The runtime: runs every materialized view's streaming graph and publishes
//! their results per epoch.
//!
//! One worker thread owns all view graphs and view state. Commands arrive on
//! one bounded channel (writers wait when it is full: backpressure, never an
//! unbounded queue) and are handled strictly in order, which gives:
//! - a change is applied to every view before any later command is handled;
//! - `FLUSH` (a command like any other) returns only after every change sent
//!   before it is visible;
//! - a new view's backfill sees exactly the changes sent before it.
//!
//! When the channel is empty (or `EPOCH_MAX_MS` has passed under load) the
//! worker closes an epoch: it publishes the state of every view at once as a
//! [`PublishedEpoch`], so readers see all views as of the same point.
//! Publishing is O(number of views): view state is a persistent map.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::RelationId;
use crate::connectors::postgres::SinkEpoch;
use crate::error::{EddyError, Result};
use crate::state::{RowCodec, RowSet};
use crate::stream::graph::{GraphStats, StreamGraph};
use crate::stream::ChangeBatch;

/// Commands queued to the worker (bounded).
const COMMAND_QUEUE_CAPACITY: usize = 1024;
/// Epochs queued to one sink before the runtime waits for it (backpressure).
pub const SINK_QUEUE_EPOCHS: usize = 16;
/// How often processing time advances for operators (temporal filters).
const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest an epoch stays open while commands keep arriving.
const EPOCH_MAX_MS: u64 = 100;

/// The state of every view as of one completed epoch.
#[derive(Debug, Default)]
pub struct PublishedEpoch {
    pub epoch: u64,
    pub views: HashMap<RelationId, RowSet>,
}

/// A view to start: its graph and the rows it starts from.
pub struct ViewSpec {
    pub id: RelationId,
    pub name: String,
    pub schema: SchemaRef,
    pub graph: StreamGraph,
    /// The current rows of each input *table*; input views are read from the
    /// runtime's own state.
    pub table_snapshots: Vec<(RelationId, ChangeBatch)>,
}

/// What the runtime reports about one view.
#[derive(Debug, Clone)]
pub struct ViewStatus {
    pub id: RelationId,
    pub name: String,
    pub rows: u64,
    pub rows_failed: u64,
    /// Changes dropped because they arrived after their window closed.
    pub late_rows: u64,
    pub last_error: Option<String>,
    /// Set when the view stopped because of an internal error.
    pub failed: Option<String>,
    pub operators: GraphStats,
}

enum Command {
    CreateSink {
        id: u64,
        view: RelationId,
        epochs: mpsc::Sender<SinkEpoch>,
        /// Start with the view's current rows.
        snapshot: bool,
        /// A subscriber: dropped (its channel closed) when it falls behind,
        /// instead of holding the runtime back; not sent empty epochs.
        subscriber: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    DropSink {
        id: u64,
        reply: oneshot::Sender<()>,
    },
    /// Processing time moved on (about once a second).
    Tick,
    /// A source reader stopped on an error it was told not to skip: the
    /// views reading `relation` stop too, with `error`.
    FailReaders {
        relation: RelationId,
        error: String,
    },
    Changes {
        relation: RelationId,
        batch: ChangeBatch,
        /// The relation's event-time watermark after this change, if it moved.
        watermark: Option<i64>,
    },
    CreateView {
        spec: Box<ViewSpec>,
        reply: oneshot::Sender<Result<()>>,
    },
    DropView {
        id: RelationId,
        reply: oneshot::Sender<()>,
    },
    Flush {
        reply: oneshot::Sender<u64>,
    },
    Status {
        reply: oneshot::Sender<(u64, Vec<ViewStatus>)>,
    },
}

/// The handle sessions use to talk to the runtime. Cheap to clone.
#[derive(Clone)]
pub struct RuntimeHandle {
    commands: mpsc::Sender<Command>,
    published: Arc<RwLock<Arc<PublishedEpoch>>>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuntimeHandle")
    }
}

impl RuntimeHandle {
    /// Starts the worker thread.
    pub fn start() -> Result<Self> {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_CAPACITY);
        let published = Arc::new(RwLock::new(Arc::new(PublishedEpoch::default())));
        let worker = Worker {
            views: BTreeMap::new(),
            sinks: BTreeMap::new(),
            watermarks: HashMap::new(),
            readers: HashMap::new(),
            epoch: 0,
            dirty: false,
            published: published.clone(),
        };
        std::thread::Builder::new()
            .name("eddy-runtime".into())
            .spawn(move || worker.run(receiver))
            .map_err(|e| crate::internal!("cannot start the runtime thread: {e}"))?;
        // Ticks for processing time; a weak sender, so that the ticker ends
        // when the runtime's handles are gone. A tick is skipped while the
        // queue is full (the runtime is busy anyway).
        let ticks = commands.downgrade();
        std::thread::Builder::new()
            .name("eddy-ticker".into())
            .spawn(move || loop {
                std::thread::sleep(TICK_INTERVAL);
                match ticks.upgrade() {
                    Some(commands) => {
                        let _ = commands.try_send(Command::Tick);
                    }
                    None => break,
                }
            })
            .map_err(|e| crate::internal!("cannot start the ticker thread: {e}"))?;
        Ok(Self {
            commands,
            published,
        })
    }

    /// The state of every view as of the last completed epoch.
    pub fn published(&self) -> Arc<PublishedEpoch> {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn send(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| EddyError::Shutdown("the runtime has stopped".into()))
    }

    /// Sends a command that carries a reply channel, and waits for the reply.
    async fn request<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, response) = oneshot::channel();
        self.send(command(reply)).await?;
        response
            .await
            .map_err(|_| EddyError::Shutdown("the runtime has stopped".into()))
    }

    /// Queues a change of `relation`; returns once it is queued (in order).
    /// Queues a change of `relation` and, if it moved, the relation's new
    /// watermark; returns once queued (in order).
    pub async fn send_changes(
        &self,
        relation: RelationId,
        batch: ChangeBatch,
        watermark: Option<i64>,
    ) -> Result<()> {
        if batch.is_empty() && watermark.is_none() {
            return Ok(());
        }
        self.send(Command::Changes {
            relation,
            batch,
            watermark,
        })
        .await
    }

    /// Stops the views that read `relation` with `error` (a source reader
    /// failed).
    pub async fn fail_readers(&self, relation: RelationId, error: String) -> Result<()> {
        self.send(Command::FailReaders { relation, error }).await
    }

    /// Starts a view: backfills it and publishes its first state.
    pub async fn create_view(&self, spec: ViewSpec) -> Result<()> {
        self.request(|reply| Command::CreateView {
            spec: Box::new(spec),
            reply,
        })
        .await?
    }

    pub async fn drop_view(&self, id: RelationId) -> Result<()> {
        self.request(|reply| Command::DropView { id, reply }).await
    }

    /// Starts feeding `view`'s changes to a sink, one [`SinkEpoch`] per
    /// published epoch, starting with the view's current rows.
    pub async fn create_sink(
        &self,
        id: u64,
        view: RelationId,
        epochs: mpsc::Sender<SinkEpoch>,
    ) -> Result<()> {
        self.request(|reply| Command::CreateSink {
            id,
            view,
            epochs,
            snapshot: true,
            subscriber: false,
            reply,
        })
        .await?
    }

    /// Subscribes to a view's changes (`SUBSCRIBE`): every epoch's changes
    /// go to `epochs`, after the current rows when `snapshot`. A subscriber
    /// that falls behind by a whole channel is dropped.
    pub async fn subscribe(
        &self,
        id: u64,
        view: RelationId,
        epochs: mpsc::Sender<SinkEpoch>,
        snapshot: bool,
    ) -> Result<()> {
        self.request(|reply| Command::CreateSink {
            id,
            view,
            epochs,
            snapshot,
            subscriber: true,
            reply,
        })
        .await?
    }

    pub async fn drop_sink(&self, id: u64) -> Result<()> {
        self.request(|reply| Command::DropSink { id, reply }).await
    }

    /// Returns the epoch in which every change sent before is visible.
    pub async fn flush(&self) -> Result<u64> {
        self.request(|reply| Command::Flush { reply }).await
    }

    /// The status of every view, after every change sent before.
    pub async fn status(&self) -> Result<(u64, Vec<ViewStatus>)> {
        self.request(|reply| Command::Status { reply }).await
    }
}

struct RunningView {
    name: String,
    graph: StreamGraph,
    state: RowSet,
    failed: Option<String>,
}

/// What flows between relations inside the runtime.
enum Event {
    Change(RelationId, ChangeBatch),
    /// The relation's event-time watermark (µs) advanced.
    Watermark(RelationId, i64),
}

struct RunningSink {
    view: RelationId,
    /// The view's changes in the open epoch.
    pending: Vec<ChangeBatch>,
    epochs: mpsc::Sender<SinkEpoch>,
    /// A SUBSCRIBE client: never waited for (dropped when behind).
    subscriber: bool,
}

struct Worker {
    /// Ordered by id, which is creation order: a view comes after its inputs.
    views: BTreeMap<RelationId, RunningView>,
    sinks: BTreeMap<u64, RunningSink>,
    /// relation -> views that read it.
    readers: HashMap<RelationId, Vec<RelationId>>,
    /// The latest watermark of every relation that has one, for views
    /// created later.
    watermarks: HashMap<RelationId, i64>,
    epoch: u64,
    /// Whether anything changed since the last published epoch.
    dirty: bool,
    published: Arc<RwLock<Arc<PublishedEpoch>>>,
}

impl Worker {
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut epoch_opened = Instant::now();
        while let Some(command) = commands.blocking_recv() {
            self.handle(command);
            // Drain what is queued, closing the epoch when idle or when it has
            // been open too long.
            loop {
                if epoch_opened.elapsed() >= Duration::from_millis(EPOCH_MAX_MS) {
                    self.publish();
                    epoch_opened = Instant::now();
                }
                match commands.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => break,
                }
            }
            self.publish();
            epoch_opened = Instant::now();
        }
        tracing::info!("runtime stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Changes {
                relation,
                batch,
                watermark,
            } => {
                let mut events = VecDeque::new();
                if !batch.is_empty() {
                    events.push_back(Event::Change(relation, batch));
                }
                if let Some(watermark) = watermark {
                    events.push_back(Event::Watermark(relation, watermark));
                }
                self.propagate(events);
            }
            Command::CreateView { spec, reply } => {
                let result = self.create_view(*spec);
                self.publish();
                let _ = reply.send(result);
            }
            Command::DropView { id, reply } => {
                self.views.remove(&id);
                for readers in self.readers.values_mut() {
                    readers.retain(|v| *v != id);
                }
                self.readers.remove(&id);
                self.watermarks.remove(&id);
                self.dirty = true;
                self.publish();
                let _ = reply.send(());
            }
            Command::Flush { reply } => {
                self.publish();
                let _ = reply.send(self.epoch);
            }
            Command::CreateSink {
                id,
                view,
                epochs,
                snapshot: with_snapshot,
                subscriber,
                reply,
            } => {
                let result = match self.views.get(&view) {
                    Some(running) => running.state.to_change_batch().map(|snapshot| {
                        let pending = if snapshot.is_empty() || !with_snapshot {
                            vec![]
                        } else {
                            vec![snapshot]
                        };
                        self.sinks.insert(
                            id,
                            RunningSink {
                                view,
                                pending,
                                epochs,
                                subscriber,
                            },
                        );
                        self.dirty = true;
                    }),
                    None => Err(crate::internal!("sink {id} reads unknown view {view}")),
                };
                self.publish();
                let _ = reply.send(result);
            }
            Command::DropSink { id, reply } => {
                self.sinks.remove(&id);
                let _ = reply.send(());
            }
            Command::Tick => self.tick(crate::stream::temporal::now_micros()),
            Command::FailReaders { relation, error } => {
                for view_id in self.readers.get(&relation).cloned().unwrap_or_default() {
                    if let Some(view) = self.views.get_mut(&view_id) {
                        tracing::error!(view = %view.name, %error, "materialized view stopped");
                        view.failed = Some(error.clone());
                        self.dirty = true;
                    }
                }
            }
            Command::Status { reply } => {
                let _ = reply.send((self.epoch, self.status()));
            }
        }
    }

    fn create_view(&mut self, spec: ViewSpec) -> Result<()> {
        let ViewSpec {
            id,
            name,
            schema,
            mut graph,
            table_snapshots,
        } = spec;
        let mut state = RowSet::new(Arc::new(RowCodec::try_new(schema)?));
        for change in graph.start()? {
            state.apply(&change)?;
        }
        let mut snapshots: HashMap<RelationId, ChangeBatch> = table_snapshots.into_iter().collect();
        for input in graph.input_relations() {
            let rows = match (snapshots.remove(&input), self.views.get(&input)) {
                (Some(rows), _) => rows,
                (None, Some(view)) => view.state.to_change_batch()?,
                (None, None) => {
                    return Err(crate::internal!(
                        "view {name} reads unknown relation {input}"
                    ))
                }
            };
            if rows.is_empty() {
                continue;
            }
            for change in graph.push_relation(input, &rows)? {
                state.apply(&change)?;
            }
        }
        // Inputs whose watermark has already moved close what they can now.
        let mut root_watermark = None;
        for input in graph.input_relations() {
            if let Some(&watermark) = self.watermarks.get(&input) {
                let (changes, forwarded) = graph.push_watermark(input, watermark)?;
                for change in changes {
                    state.apply(&change)?;
                }
                root_watermark = forwarded.or(root_watermark);
            }
        }
        if let Some(watermark) = root_watermark {
            self.watermarks.insert(id, watermark);
        }
        for input in graph.input_relations() {
            self.readers.entry(input).or_default().push(id);
        }
        tracing::info!(view = %name, rows = state.len(), "materialized view started");
        self.views.insert(
            id,
            RunningView {
                name,
                graph,
                state,
                failed: None,
            },
        );
        self.dirty = true;
        Ok(())
    }

    /// Pushes a change through every view that reads `relation`, and the
    /// views' own changes on to the views that read them.
    /// Pushes changes and watermarks through every view that reads their
    /// relation, and the views' own changes and watermarks on to the views
    /// that read them.
    fn propagate(&mut self, mut events: VecDeque<Event>) {
        while let Some(event) = events.pop_front() {
            let relation = match &event {
                Event::Change(relation, _) => *relation,
                Event::Watermark(relation, watermark) => {
                    let known = self.watermarks.entry(*relation).or_insert(*watermark);
                    *known = (*known).max(*watermark);
                    *relation
                }
            };
            let Some(readers) = self.readers.get(&relation) else {
                continue;
            };
            for view_id in readers.clone() {
                self.step_view(view_id, &mut events, |graph| match &event {
                    Event::Change(_, batch) => {
                        graph.push_relation(relation, batch).map(|c| (c, None))
                    }
                    Event::Watermark(_, watermark) => graph.push_watermark(relation, *watermark),
                });
            }
        }
    }

    /// Runs `step` on one view's graph, then applies the changes it produced
    /// to the view's state, hands them to the view's sinks and queues them
    /// (and a watermark the view's root passed on) for the views downstream.
    /// A failing step stops that view only.
    fn step_view(
        &mut self,
        view_id: RelationId,
        events: &mut VecDeque<Event>,
        step: impl FnOnce(&mut StreamGraph) -> Result<(Vec<ChangeBatch>, Option<i64>)>,
    ) {
        let Some(view) = self.views.get_mut(&view_id) else {
            return;
        };
        if view.failed.is_some() {
            return;
        }
        let result = step(&mut view.graph).and_then(|(changes, watermark)| {
            Self::apply_to_view(view, changes).map(|c| (c, watermark))
        });
        match result {
            Ok((changes, watermark)) => {
                if !changes.is_empty() {
                    self.dirty = true;
                }
                for sink in self.sinks.values_mut().filter(|s| s.view == view_id) {
                    sink.pending.extend(changes.iter().cloned());
                }
                events.extend(changes.into_iter().map(|c| Event::Change(view_id, c)));
                if let Some(watermark) = watermark {
                    events.push_back(Event::Watermark(view_id, watermark));
                }
            }
            Err(e) => {
                tracing::error!(view = %view.name, error = %e, "materialized view stopped");
                view.failed = Some(e.to_string());
                self.dirty = true;
            }
        }
    }

    /// Lets every view see processing time `now`, and propagates what that
    /// changes (rows leaving temporal filters, watermarks released by idle
    /// inputs).
    fn tick(&mut self, now: i64) {
        let mut events = VecDeque::new();
        let views: Vec<RelationId> = self.views.keys().copied().collect();
        for view_id in views {
            self.step_view(view_id, &mut events, |graph| graph.tick(now));
        }
        self.propagate(events);
    }

    /// Applies a view's output changes to its state (all or nothing).
    fn apply_to_view(
        view: &mut RunningView,
        changes: Vec<ChangeBatch>,
    ) -> Result<Vec<ChangeBatch>> {
        let mut next = view.state.clone();
        for change in &changes {
            next.apply(change)?;
        }
        view.state = next;
        Ok(changes)
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.epoch += 1;
        let views = self
            .views
            .iter()
            .map(|(id, v)| (*id, v.state.clone()))
            .collect();
        let epoch = Arc::new(PublishedEpoch {
            epoch: self.epoch,
            views,
        });
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = epoch;
        self.dirty = false;
        // Every sink gets every epoch (empty ones too, so FLUSH can wait for
        // it). A sink that is behind makes this wait: backpressure.
        let mut gone = Vec::new();
        for (id, sink) in &mut self.sinks {
            let changes = std::mem::take(&mut sink.pending);
            let epoch = SinkEpoch {
                epoch: self.epoch,
                changes,
            };
            let delivered = if !sink.subscriber {
                sink.epochs.blocking_send(epoch).is_ok()
            } else if epoch.changes.is_empty() {
                !sink.epochs.is_closed()
            } else {
                // Full or gone: the subscriber is dropped, never waited for.
                sink.epochs.try_send(epoch).is_ok()
            };
            if !delivered {
                gone.push(*id);
            }
        }
        for id in gone {
            self.sinks.remove(&id);
        }
    }

    fn status(&self) -> Vec<ViewStatus> {
        self.views
            .iter()
            .map(|(id, v)| {
                let operators = v.graph.stats();
                ViewStatus {
                    id: *id,
                    name: v.name.clone(),
                    rows: v.state.len(),
                    rows_failed: operators.iter().map(|(_, _, s)| s.rows_failed).sum(),
                    late_rows: operators.iter().map(|(_, _, s)| s.late_rows).sum(),
                    last_error: v.graph.last_error(),
                    failed: v.failed.clone(),
                    operators,
                }
            })
            .collect()
    }
}
