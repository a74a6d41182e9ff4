//! The runtime: runs every materialized view's streaming graph and publishes
//! their results per epoch.
//!
//! One worker thread owns all view graphs and view state. Commands arrive on
//! one bounded channel (writers wait when it is full: backpressure, never an
//! unbounded queue) and are handled strictly in order, which gives:
//! - a change is applied to every view before any later command is handled;
//! - `FLUSH` (a checkpoint barrier, a command like any other) returns only
//!   after every change sent before it is visible;
//! - a new view's backfill sees exactly the changes sent before it.
//!
//! When the channel is empty (or `EPOCH_MAX_MS` has passed under load) the
//! worker closes an epoch: it publishes the state of every view at once as a
//! [`PublishedEpoch`], so readers see all views as of the same point.
//! Publishing is O(number of views): view state is a persistent map.
//!
//! Checkpoints are barriers in the same command stream: `Capture` is handled
//! between two commands, so every change before it is in every view and
//! none after it is (aligned by construction). The capture holds each
//! table's and view's changed rows, every stateful operator's changed state,
//! the position each source reader had reached with the last change it sent,
//! and the watermarks. Durable sinks (Postgres, Kafka) are handed a view's
//! changes only once the checkpoint that holds them is complete
//! (`CheckpointDone`), as one epoch; epochs a sink has not acknowledged are
//! part of every checkpoint until it does, so a crash between a checkpoint
//! and a sink's commit replays them, and the sink skips what it already
//! committed. A sink that is behind never blocks the runtime: what its
//! channel does not take waits in that backlog.

pub mod checkpoint;
pub mod sink;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, oneshot};

use crate::common::ChangeBatch;
use crate::common::RelationId;
use crate::error::{EddyError, Result};
use crate::state::checkpoint::{
    Capture, CaptureRequest, CheckpointMeta, ReaderPosition, RestoredState, StateDelta,
};
use crate::state::{Changed, RowCodec, RowSet};
use crate::stream::graph::{GraphStats, StreamGraph};
use sink::{RestoredBacklog, SinkBacklog, SinkEpoch, SinkStatus};

/// Commands queued to the worker (bounded). Small on purpose: a source
/// command carries a batch of up to thousands of rows, and a checkpoint
/// barrier (also FLUSH and DDL) waits behind everything queued before it.
const COMMAND_QUEUE_CAPACITY: usize = 32;
/// Checkpoint epochs queued to one durable sink's task at once; beyond
/// them the epochs wait in the runtime's backlog for the sink
/// (`release_to_sinks`), so a sink that cannot commit never holds the
/// runtime back.
pub const DURABLE_SINK_QUEUE_EPOCHS: usize = 2;
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
    /// runtime's own state. Not used when restoring.
    pub table_snapshots: Vec<(RelationId, ChangeBatch)>,
    /// The view's source readers: relation id and checkpoint name.
    pub readers: Vec<(RelationId, String)>,
    /// Restore from a checkpoint instead of backfilling.
    pub restore: Option<RestoredView>,
}

/// A view's state as a checkpoint holds it.
pub struct RestoredView {
    /// Its rows and operators' state (`view/<name>/...` state tables).
    pub state: RestoredState,
    /// Watermarks of its source readers (tables and views have their own).
    pub reader_watermarks: Vec<(RelationId, i64)>,
    /// Where its source readers resume: also what the next checkpoint
    /// records for a reader that has not read anything new by then.
    pub reader_positions: Vec<(RelationId, SourcePosition)>,
    /// The view's own watermark.
    pub watermark: Option<i64>,
}

/// What a source reader reports with a change: where it has read up to.
pub type SourcePosition = ReaderPosition;

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
    /// Why an input of the view cannot deliver now (a source's brokers are
    /// unreachable); the engine sets it, the runtime does not know.
    pub waiting: Option<String>,
    pub operators: GraphStats,
    /// Estimated bytes of the view's rows held in memory.
    pub memory_bytes: usize,
    /// Bytes of the view's rows spilled to disk under the memory limit.
    pub spilled_bytes: u64,
    /// The view's event-time watermark (µs), if it has one.
    pub watermark: Option<i64>,
    /// How long changes took from arriving to being readable in the view.
    pub freshness: Freshness,
}

impl ViewStatus {
    /// `running`, `waiting: <why>` while an input cannot deliver, or
    /// `failed: <why>` once the view stopped.
    pub fn status(&self) -> String {
        match (&self.failed, &self.waiting) {
            (Some(e), _) => format!("failed: {e}"),
            (None, Some(why)) => format!("waiting: {why}"),
            (None, None) => "running".to_string(),
        }
    }
}

/// Freshness: for each epoch that changed a view, the time from the
/// arrival of the oldest change in it (a write, or a source reader
/// receiving messages) to the epoch being published, when SELECTs see it.
/// Kept as the last value and a Prometheus-style histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Freshness {
    pub last_seconds: Option<f64>,
    /// Counts of observations at most each of [`FRESHNESS_BUCKETS`]
    /// (cumulative, as Prometheus wants them).
    pub buckets: [u64; FRESHNESS_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

/// The freshness histogram's upper bounds, in seconds.
pub const FRESHNESS_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl Freshness {
    fn observe(&mut self, seconds: f64) {
        self.last_seconds = Some(seconds);
        self.count += 1;
        self.sum_seconds += seconds;
        for (bucket, bound) in self.buckets.iter_mut().zip(FRESHNESS_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }
}

enum Command {
    CreateSink {
        id: u64,
        view: RelationId,
        epochs: mpsc::Sender<SinkEpoch>,
        /// Start with the view's current rows.
        snapshot: bool,
        /// A durable sink: its name and status. It gets one epoch per
        /// completed checkpoint. `None`: a SUBSCRIBE client, sent every
        /// epoch with changes and dropped (its channel closed) when it falls
        /// behind, instead of holding the runtime back.
        durable: Option<(String, Arc<SinkStatus>, usize)>,
        /// Restored: the epochs it had not acknowledged at the checkpoint
        /// (or that it had given them up).
        restored: Option<RestoredBacklog>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A table exists (or was restored): its rows, for checkpoints.
    RegisterTable {
        id: RelationId,
        name: String,
        rows: RowSet,
        watermark: Option<i64>,
        /// Restored from a checkpoint: its rows are checkpointed already.
        restored: bool,
        /// Its write-ahead log position: the checkpointed one, or for a
        /// new table the log's end (older records are another table's).
        lsn: u64,
        reply: oneshot::Sender<()>,
    },
    ForgetTable {
        id: RelationId,
    },
    /// A checkpoint barrier: capture the state as of now.
    Capture {
        request: CaptureRequest,
        reply: oneshot::Sender<Result<Capture>>,
    },
    /// The checkpoint of `epoch` is durable: durable sinks may commit it.
    CheckpointDone {
        epoch: u64,
    },
    /// Continue epoch numbering after a restored checkpoint.
    ResumeEpoch {
        epoch: u64,
        reply: oneshot::Sender<()>,
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
        /// A table's rows after this change (and its log position).
        table_rows: Option<TableRows>,
        /// A source reader's position after this change.
        position: Option<SourcePosition>,
        /// When the change arrived at eddy (for freshness).
        arrived: Instant,
    },
    CreateView {
        spec: Box<ViewSpec>,
        reply: oneshot::Sender<Result<()>>,
    },
    DropView {
        id: RelationId,
        reply: oneshot::Sender<()>,
    },
    Status {
        reply: oneshot::Sender<(u64, Vec<ViewStatus>)>,
    },
    /// Publish what the changes queued before made.
    Publish {
        reply: oneshot::Sender<()>,
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
    /// Starts the worker thread, with no memory limit for state.
    pub fn start() -> Result<Self> {
        Self::start_with_memory_limit(None)
    }

    /// Starts the worker thread; beyond `memory_limit` bytes of state in
    /// memory, operators spill (`state::memory`).
    pub fn start_with_memory_limit(memory_limit: Option<usize>) -> Result<Self> {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_CAPACITY);
        let published = Arc::new(RwLock::new(Arc::new(PublishedEpoch::default())));
        let worker = Worker {
            views: BTreeMap::new(),
            tables: BTreeMap::new(),
            positions: HashMap::new(),
            sinks: BTreeMap::new(),
            watermarks: HashMap::new(),
            readers: HashMap::new(),
            epoch: 0,
            released_through: 0,
            dirty: false,
            arrival: None,
            published: published.clone(),
            memory_limit,
        };
        std::thread::Builder::new()
            .name("eddy-runtime".into())
            .stack_size(crate::common::DEEP_STACK_BYTES)
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

    /// Queues a change of `relation` and, if it moved, the relation's new
    /// watermark; returns once queued (in order).
    pub async fn send_changes(
        &self,
        relation: RelationId,
        batch: ChangeBatch,
        watermark: Option<i64>,
    ) -> Result<()> {
        self.send_change(relation, batch, watermark, None, None, Instant::now())
            .await
    }

    /// Queues a change of table `relation` whose rows are now `rows`;
    /// `lsn`: its write-ahead log record (what the next checkpoint records
    /// as the table's position).
    pub async fn send_table_changes(
        &self,
        relation: RelationId,
        batch: ChangeBatch,
        watermark: Option<i64>,
        rows: RowSet,
        lsn: Option<u64>,
    ) -> Result<()> {
        let table_rows = Some(TableRows { rows, lsn });
        self.send_change(relation, batch, watermark, table_rows, None, Instant::now())
            .await
    }

    /// Queues a change from a source reader that has now read up to
    /// `position` (sent even when empty: the position moved). `arrived`:
    /// when the reader received the oldest of the change's messages.
    pub async fn send_source_changes(
        &self,
        relation: RelationId,
        batch: ChangeBatch,
        watermark: Option<i64>,
        position: SourcePosition,
        arrived: Instant,
    ) -> Result<()> {
        self.send_change(relation, batch, watermark, None, Some(position), arrived)
            .await
    }

    async fn send_change(
        &self,
        relation: RelationId,
        batch: ChangeBatch,
        watermark: Option<i64>,
        table_rows: Option<TableRows>,
        position: Option<SourcePosition>,
        arrived: Instant,
    ) -> Result<()> {
        if batch.is_empty() && watermark.is_none() && position.is_none() {
            return Ok(());
        }
        self.send(Command::Changes {
            relation,
            batch,
            watermark,
            table_rows,
            position,
            arrived,
        })
        .await
    }

    /// Registers a table's rows for checkpoints (at CREATE TABLE, or when
    /// restored).
    pub async fn register_table(
        &self,
        id: RelationId,
        name: String,
        rows: RowSet,
        watermark: Option<i64>,
        restored: bool,
        lsn: u64,
    ) -> Result<()> {
        self.request(|reply| Command::RegisterTable {
            id,
            name,
            rows,
            watermark,
            restored,
            lsn,
            reply,
        })
        .await
    }

    pub async fn forget_table(&self, id: RelationId) -> Result<()> {
        self.send(Command::ForgetTable { id }).await
    }

    /// Captures the state for a checkpoint (a barrier in the command stream).
    pub async fn capture(&self, request: CaptureRequest) -> Result<Capture> {
        self.request(|reply| Command::Capture { request, reply })
            .await?
    }

    /// The checkpoint of `epoch` is durable.
    pub async fn checkpoint_done(&self, epoch: u64) -> Result<()> {
        self.send(Command::CheckpointDone { epoch }).await
    }

    /// Continues epoch numbering from a restored checkpoint's epoch.
    pub async fn resume_epoch(&self, epoch: u64) -> Result<()> {
        self.request(|reply| Command::ResumeEpoch { epoch, reply })
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

    /// Starts a durable sink on its view: it gets one [`SinkEpoch`] per
    /// completed checkpoint. A new sink starts with the view's rows; a
    /// restored one with the epochs it had not acknowledged.
    pub async fn create_durable_sink(&self, sink: DurableSinkSpec) -> Result<()> {
        let DurableSinkSpec {
            id,
            name,
            view,
            epochs,
            status,
            restored,
            backlog_limit_bytes,
        } = sink;
        let snapshot = restored.is_none();
        self.request(|reply| Command::CreateSink {
            id,
            view,
            epochs,
            snapshot,
            durable: Some((name, status, backlog_limit_bytes)),
            restored,
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
            durable: None,
            restored: None,
            reply,
        })
        .await?
    }

    pub async fn drop_sink(&self, id: u64) -> Result<()> {
        self.request(|reply| Command::DropSink { id, reply }).await
    }

    /// Publishes the effect of every change sent before: a SELECT from now
    /// on sees it.
    pub async fn publish(&self) -> Result<()> {
        self.request(|reply| Command::Publish { reply }).await
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
    /// Rows changed since the last checkpoint.
    touched: Touched,
    /// Source readers: relation id and checkpoint name.
    readers: Vec<(RelationId, String)>,
    failed: Option<String>,
    /// When the oldest change the view holds but has not published yet
    /// arrived.
    unpublished_since: Option<Instant>,
    freshness: Freshness,
}

impl RunningView {
    /// Stops the view on `error` (it keeps its rows and says why).
    fn stop(&mut self, error: String) {
        tracing::error!(view = %self.name, %error, "materialized view stopped");
        self.failed = Some(error);
    }

    /// A view running from `state`, with `touched` rows to checkpoint.
    fn new(
        name: String,
        graph: StreamGraph,
        state: RowSet,
        touched: Touched,
        readers: Vec<(RelationId, String)>,
    ) -> Self {
        Self {
            name,
            graph,
            state,
            touched,
            readers,
            failed: None,
            unpublished_since: None,
            freshness: Freshness::default(),
        }
    }
}

/// A table's rows, kept for checkpoints (the catalog owns the table).
struct TrackedTable {
    name: String,
    rows: RowSet,
    touched: Touched,
    /// The write-ahead log record of the last change applied.
    lsn: u64,
}

/// A table's rows after a change, and the change's write-ahead log record.
pub(crate) struct TableRows {
    rows: RowSet,
    lsn: Option<u64>,
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
    /// `None`: a SUBSCRIBE client, never waited for (dropped when behind).
    durable: Option<DurableSink>,
}

/// What [`RuntimeHandle::create_durable_sink`] starts.
pub struct DurableSinkSpec {
    pub id: u64,
    pub name: String,
    /// The view it reads.
    pub view: RelationId,
    /// Where its epochs go (the sink task).
    pub epochs: mpsc::Sender<SinkEpoch>,
    pub status: Arc<SinkStatus>,
    /// From a checkpoint; `None`: a new sink.
    pub restored: Option<RestoredBacklog>,
    /// Its backlog beyond this fails it.
    pub backlog_limit_bytes: usize,
}

/// A sink that commits once per checkpoint.
struct DurableSink {
    name: String,
    status: Arc<SinkStatus>,
    codec: Arc<RowCodec>,
    /// Captured in a checkpoint, not yet acknowledged by the sink.
    backlog: SinkBacklog,
}

struct Worker {
    /// Ordered by id, which is creation order: a view comes after its inputs.
    views: BTreeMap<RelationId, RunningView>,
    tables: BTreeMap<RelationId, TrackedTable>,
    /// Where each source reader has read up to.
    positions: HashMap<RelationId, SourcePosition>,
    sinks: BTreeMap<u64, RunningSink>,
    /// relation -> views that read it.
    readers: HashMap<RelationId, Vec<RelationId>>,
    /// The latest watermark of every relation that has one, for views
    /// created later.
    watermarks: HashMap<RelationId, i64>,
    epoch: u64,
    /// Durable sinks may have every epoch up to this one (the last
    /// completed checkpoint's).
    released_through: u64,
    /// Whether anything changed since the last published epoch.
    dirty: bool,
    /// When the change being propagated arrived (`None`: not from a write
    /// or a source, e.g. processing time moving on).
    arrival: Option<Instant>,
    published: Arc<RwLock<Arc<PublishedEpoch>>>,
    /// Bytes of spillable state to keep in memory at most.
    memory_limit: Option<usize>,
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
                    self.keep_within_memory_limit();
                    self.publish();
                    epoch_opened = Instant::now();
                }
                match commands.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => break,
                }
            }
            // Spilled first, so that the epoch readers hold is the spilled
            // state (else they would keep the memory spilling freed).
            self.keep_within_memory_limit();
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
                table_rows,
                position,
                arrived,
            } => {
                if let Some(TableRows { rows, lsn }) = table_rows {
                    if let Some(table) = self.tables.get_mut(&relation) {
                        if let Some(lsn) = lsn {
                            table.lsn = lsn;
                        }
                        match rows.codec().encode(&batch.rows) {
                            Ok(encoded) => table.touched.note_all(rows.distinct_rows(), encoded),
                            // Cannot happen for rows of the table's own
                            // schema; capture it whole next time instead.
                            Err(_) => table.touched = Touched::all(),
                        }
                        table.rows = rows;
                        // A change even without readers: the next
                        // checkpoint must hold it.
                        self.dirty = true;
                    }
                }
                if let Some(position) = position {
                    match self.positions.get_mut(&relation) {
                        Some(known) => known.advance(position),
                        None => {
                            self.positions.insert(relation, position);
                        }
                    }
                }
                let mut events = VecDeque::new();
                if !batch.is_empty() {
                    events.push_back(Event::Change(relation, batch));
                }
                if let Some(watermark) = watermark {
                    events.push_back(Event::Watermark(relation, watermark));
                }
                self.arrival = Some(arrived);
                self.propagate(events);
                self.arrival = None;
            }
            Command::CreateView { spec, reply } => {
                let result = guarded(|| self.create_view(*spec));
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
            Command::CreateSink {
                id,
                view,
                epochs,
                snapshot: with_snapshot,
                durable,
                restored,
                reply,
            } => {
                let result = match self.views.get(&view) {
                    Some(running) => running.state.to_change_batch().map(|snapshot| {
                        let pending = if snapshot.is_empty() || !with_snapshot {
                            vec![]
                        } else {
                            vec![snapshot]
                        };
                        let durable = durable.map(|(name, status, limit)| DurableSink {
                            name,
                            status,
                            codec: running.state.codec().clone(),
                            backlog: SinkBacklog::new(restored, limit),
                        });
                        self.sinks.insert(
                            id,
                            RunningSink {
                                view,
                                pending,
                                epochs,
                                durable,
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
            Command::RegisterTable {
                id,
                name,
                rows,
                watermark,
                restored,
                lsn,
                reply,
            } => {
                let touched = if restored {
                    Touched::default()
                } else {
                    Touched::all()
                };
                self.tables.insert(
                    id,
                    TrackedTable {
                        name,
                        rows,
                        touched,
                        lsn,
                    },
                );
                if let Some(watermark) = watermark {
                    self.watermarks.insert(id, watermark);
                }
                let _ = reply.send(());
            }
            Command::ForgetTable { id } => {
                self.tables.remove(&id);
            }
            Command::Capture { request, reply } => {
                let _ = reply.send(self.capture(&request));
            }
            Command::CheckpointDone { epoch } => self.release_to_sinks(epoch),
            Command::ResumeEpoch { epoch, reply } => {
                self.epoch = self.epoch.max(epoch);
                // The restored sinks' backlogs are in that checkpoint.
                self.released_through = self.released_through.max(epoch);
                let _ = reply.send(());
            }
            Command::Tick => self.tick(crate::common::time::now_micros()),
            Command::FailReaders { relation, error } => {
                for view_id in self.readers.get(&relation).cloned().unwrap_or_default() {
                    if let Some(view) = self.views.get_mut(&view_id) {
                        view.stop(error.clone());
                        self.dirty = true;
                    }
                }
            }
            Command::Status { reply } => {
                let _ = reply.send((self.epoch, self.status()));
            }
            Command::Publish { reply } => {
                self.publish();
                let _ = reply.send(());
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
            readers,
            restore,
        } = spec;
        let codec = Arc::new(RowCodec::try_new(schema)?);
        if let Some(restore) = restore {
            return self.restore_view(id, name, codec, graph, readers, restore);
        }
        let mut state = RowSet::appending(codec);
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
            RunningView::new(name, graph, state, Touched::all(), readers),
        );
        self.dirty = true;
        Ok(())
    }

    /// Starts a view from checkpointed state: its rows and operator state
    /// as they were, then each input's watermark passed in again (which
    /// re-arms the operators' watermark logic; windows it closes were
    /// already closed, so nothing is emitted twice).
    fn restore_view(
        &mut self,
        id: RelationId,
        name: String,
        codec: Arc<RowCodec>,
        mut graph: StreamGraph,
        readers: Vec<(RelationId, String)>,
        restore: RestoredView,
    ) -> Result<()> {
        let RestoredView {
            mut state,
            reader_watermarks,
            reader_positions,
            watermark,
        } = restore;
        self.positions.extend(reader_positions);
        let prefix = format!("view/{name}");
        // What this view may hold as it restores: what the limit leaves
        // beside the views restored before it (which were kept within
        // their shares after each).
        let budget = self
            .memory_limit
            .map(|limit| limit.saturating_sub(self.held_state_bytes()).max(limit / 8));
        graph.restore(&prefix, &mut state, budget)?;
        let keyed = state
            .take(&format!("{prefix}/rows"))
            .into_map()?
            .into_iter()
            .map(|(row, multiplicity)| Ok((row, decode_multiplicity(&multiplicity)?)))
            .collect::<Result<Vec<_>>>()?;
        // Checkpoints from before the log have no log table: none logged.
        // Its rows get what the operators left of the budget (an eighth
        // of it at least, as a view gets of the limit).
        let operators: usize = graph
            .spill_stats()
            .iter()
            .map(|(_, s)| s.memory_bytes)
            .sum();
        let log = state
            .take(&format!("{prefix}/log"))
            .with_memory_budget(budget.map(|b| b.saturating_sub(operators).max(b / 8)));
        let mut rows = RowSet::restore(codec, keyed, log)?;
        for (reader, watermark) in reader_watermarks {
            self.watermarks.insert(reader, watermark);
        }
        // What the restored watermarks still release is a change since
        // the checkpoint.
        let mut touched = Touched::default();
        for input in graph.input_relations() {
            if let Some(&watermark) = self.watermarks.get(&input) {
                let (changes, _) = graph.push_watermark(input, watermark)?;
                for change in changes {
                    let changed = rows.apply_returning_rows(&change)?;
                    touched.note_all(rows.distinct_rows(), changed);
                }
            }
        }
        if let Some(watermark) = watermark {
            self.watermarks.insert(id, watermark);
        }
        for input in graph.input_relations() {
            self.readers.entry(input).or_default().push(id);
        }
        tracing::info!(view = %name, rows = rows.len(), "materialized view restored");
        self.views
            .insert(id, RunningView::new(name, graph, rows, touched, readers));
        self.dirty = true;
        // Within its share before the next view restores.
        self.keep_within_memory_limit();
        Ok(())
    }

    /// The checkpoint barrier: everything as of the end of the current
    /// epoch. Moves each durable sink's changes into an epoch of their own.
    fn capture(&mut self, request: &CaptureRequest) -> Result<Capture> {
        self.publish();
        let mut states = BTreeMap::new();
        let mut meta = CheckpointMeta::default();
        for (id, table) in &mut self.tables {
            let name = format!("table/{}", table.name);
            let delta = rows_delta(&table.rows, &mut table.touched, request.wants_full(&name));
            states.insert(name.clone(), delta);
            meta.table_lsns.insert(name.clone(), table.lsn);
            if let Some(&w) = self.watermarks.get(id) {
                meta.watermarks.insert(name, w);
            }
        }
        for (id, view) in &mut self.views {
            let prefix = format!("view/{}", view.name);
            let rows_name = format!("{prefix}/rows");
            let delta = rows_delta(
                &view.state,
                &mut view.touched,
                request.wants_full(&rows_name),
            );
            states.insert(rows_name, delta);
            let log_name = format!("{prefix}/log");
            let log = view.state.capture_log(request.wants_full(&log_name))?;
            states.insert(log_name, log);
            view.graph.checkpoint(&prefix, request, &mut states)?;
            if let Some(&w) = self.watermarks.get(id) {
                meta.watermarks.insert(prefix, w);
            }
            for (reader, name) in &view.readers {
                if let Some(position) = self.positions.get(reader) {
                    meta.readers.insert(name.clone(), position.clone());
                }
                if let Some(&w) = self.watermarks.get(reader) {
                    meta.watermarks.insert(format!("reader/{name}"), w);
                }
            }
        }
        for sink in self.sinks.values_mut() {
            let Some(durable) = &mut sink.durable else {
                continue;
            };
            durable
                .backlog
                .acknowledged(durable.status.committed_epoch());
            let changes = std::mem::take(&mut sink.pending);
            let captured = SinkEpoch {
                epoch: self.epoch,
                changes,
            };
            if let Err(reason) = durable.backlog.push(captured) {
                if durable.status.failure().as_deref() != Some(reason.as_str()) {
                    let reason = match durable.status.failure() {
                        Some(first) => format!("{first}; then {reason}"),
                        None => reason,
                    };
                    durable.status.fail(reason);
                }
            }
            let name = format!("sink/{}", durable.name);
            let delta = durable
                .backlog
                .capture(&durable.codec, request.wants_full(&name))?;
            states.insert(name, delta);
            states.insert(
                format!("sink/{}/counters", durable.name),
                durable.status.capture_counts(),
            );
        }
        Ok(Capture {
            epoch: self.epoch,
            states,
            meta,
        })
    }

    /// Hands durable sinks the epochs captured by checkpoints up to `epoch`,
    /// as many as their channels take. A sink that is behind (its target
    /// slow, away or silent) keeps the rest here, in its checkpointed
    /// backlog, and gets them at a later tick or checkpoint: a sink never
    /// holds the runtime, so writes, DDL and checkpoints go on.
    fn release_to_sinks(&mut self, epoch: u64) {
        self.released_through = self.released_through.max(epoch);
        let epoch = self.released_through;
        let mut gone = Vec::new();
        for (id, sink) in &mut self.sinks {
            let Some(durable) = &mut sink.durable else {
                continue;
            };
            for (captured, sent) in durable.backlog.unsent_through(epoch) {
                match sink.epochs.try_send(captured.clone()) {
                    Ok(()) => *sent = true,
                    Err(mpsc::error::TrySendError::Full(_)) => break,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        gone.push(*id);
                        break;
                    }
                }
            }
        }
        for id in gone {
            self.sinks.remove(&id);
        }
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

    /// Runs `step` on one view's graph (a panic in an operator is a bug, and
    /// fails that view only), then applies the changes it produced
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
        let result = guarded(|| step(&mut view.graph)).and_then(|(changes, watermark)| {
            Self::apply_to_view(view, changes).map(|c| (c, watermark))
        });
        match result {
            Ok((changes, watermark)) => {
                if !changes.is_empty() {
                    self.dirty = true;
                    if let Some(arrived) = self.arrival {
                        view.unpublished_since =
                            Some(view.unpublished_since.map_or(arrived, |t| t.min(arrived)));
                    }
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
                view.stop(e.to_string());
                self.dirty = true;
            }
        }
    }

    /// Over `--memory-limit`, has each spillable operator and each view's
    /// rows move state to disk down to their share
    /// (`state::memory::shares`). One that cannot (its disk failed) stops
    /// its view, as a failed change does.
    fn keep_within_memory_limit(&mut self) {
        let Some(limit) = self.memory_limit else {
            return;
        };
        let held = self.state_held();
        let bytes: Vec<usize> = held.iter().map(|(_, _, bytes)| *bytes).collect();
        let Some(shares) = crate::state::memory::shares(limit, &bytes) else {
            return;
        };
        let mut rows_spilled = false;
        for ((view_id, op, _), share) in held.into_iter().zip(shares) {
            let Some(view) = self.views.get_mut(&view_id) else {
                continue;
            };
            let shrunk = match op {
                Some(op) => view.graph.shrink(op, share),
                None => {
                    rows_spilled = true;
                    view.state.spill(share)
                }
            };
            if let Err(e) = shrunk {
                view.stop(format!("spilling state to disk failed: {e}"));
                self.dirty = true;
            }
        }
        // Rows spilled with no epoch to publish: readers get them as the
        // same epoch.
        if rows_spilled && !self.dirty {
            self.republish();
        }
        crate::state::memory::return_freed_memory();
    }

    /// The state in memory of every spillable operator of every running
    /// view, and of each view's rows (`None`): view, operator, bytes.
    fn state_held(&self) -> Vec<(RelationId, Option<u64>, usize)> {
        self.views
            .iter()
            .filter(|(_, view)| view.failed.is_none())
            .flat_map(|(id, view)| {
                let operators = view.graph.spill_stats().into_iter();
                operators
                    .map(move |(op, stats)| (*id, Some(op), stats.memory_bytes))
                    .chain([(*id, None, view.state.memory_bytes())])
            })
            .collect()
    }

    /// The bytes of [`Self::state_held`].
    fn held_state_bytes(&self) -> usize {
        self.state_held().iter().map(|(_, _, bytes)| bytes).sum()
    }

    /// Replaces the published epoch's views with the runtime's, which hold
    /// the same rows (nothing changed since it was published).
    fn republish(&mut self) {
        let views = self.published_views();
        let mut published = self.published.write().unwrap_or_else(|p| p.into_inner());
        *published = Arc::new(PublishedEpoch {
            epoch: published.epoch,
            views,
        });
    }

    /// Every view's rows as readers are to see them (O(1) snapshots).
    fn published_views(&self) -> HashMap<RelationId, RowSet> {
        self.views
            .iter()
            .map(|(id, v)| (*id, v.state.clone()))
            .collect()
    }

    /// Lets every view see processing time `now`, and propagates what that
    /// changes (rows leaving temporal filters, watermarks released by idle
    /// inputs).
    fn tick(&mut self, now: i64) {
        // Sinks that were behind take what they can now.
        self.release_to_sinks(self.released_through);
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
        let mut touched = Vec::new();
        for change in &changes {
            let changed = next.apply_returning_rows(change)?;
            if !view.touched.is_all() {
                touched.extend(changed);
            }
        }
        view.touched.note_all(next.distinct_rows(), touched);
        view.state = next;
        Ok(changes)
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.epoch += 1;
        let views = self.published_views();
        let now = Instant::now();
        for view in self.views.values_mut() {
            if let Some(arrived) = view.unpublished_since.take() {
                view.freshness
                    .observe(now.saturating_duration_since(arrived).as_secs_f64());
            }
        }
        let epoch = Arc::new(PublishedEpoch {
            epoch: self.epoch,
            views,
        });
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = epoch;
        self.dirty = false;
        // Subscribers get every epoch with changes; a full or closed channel
        // drops the subscriber, never holds the runtime. (Durable sinks get
        // their epochs per checkpoint, in `release_to_sinks`.)
        let mut gone = Vec::new();
        for (id, sink) in &mut self.sinks {
            if sink.durable.is_some() {
                continue; // handed over per checkpoint
            }
            let changes = std::mem::take(&mut sink.pending);
            let epoch = SinkEpoch {
                epoch: self.epoch,
                changes,
            };
            let delivered = if epoch.changes.is_empty() {
                !sink.epochs.is_closed()
            } else {
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
                    rows_failed: operators.iter().map(|o| o.stats.rows_failed).sum(),
                    late_rows: operators.iter().map(|o| o.stats.late_rows).sum(),
                    last_error: v.graph.last_error(),
                    failed: v.failed.clone(),
                    waiting: None,
                    operators,
                    memory_bytes: v.state.memory_bytes(),
                    spilled_bytes: v.state.spilled_bytes(),
                    watermark: self.watermarks.get(id).copied(),
                    freshness: v.freshness.clone(),
                }
            })
            .collect()
    }
}

/// The rows of a table or view changed since the last checkpoint.
type Touched = Changed<Arc<[u8]>>;

/// A table's or view's rows as a state table: row -> multiplicity; only
/// the `touched` rows unless `full` or all are (then the file is at most
/// twice the delta's size, and starts a fresh chain).
fn rows_delta(rows: &RowSet, touched: &mut Touched, full: bool) -> StateDelta {
    let mut delta = StateDelta::new(full);
    delta.put_changed_with(
        touched,
        |delta| {
            for (row, n) in rows.encoded_entries() {
                delta.put(row, n.to_le_bytes());
            }
        },
        |delta, row| match rows.multiplicity(row) {
            0 => delta.delete(row),
            n => delta.put(row, n.to_le_bytes()),
        },
    );
    delta
}

fn decode_multiplicity(bytes: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| EddyError::Checkpoint("a row multiplicity is not 8 bytes".into()))?;
    Ok(i64::from_le_bytes(bytes))
}

/// Runs `work`, turning a panic (a bug in an operator) into an internal
/// error, so that one view's bug stops that view and not the runtime.
fn guarded<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(crate::internal!("an operator panicked: {message}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changed rows are noted one by one until they are half the rows held;
    /// from then on (and for a view just started) the next checkpoint
    /// writes every row, and after it rows are noted one by one again.
    #[test]
    fn touched_rows_turn_into_all_at_half() {
        let row = |i: u8| -> Arc<[u8]> { Arc::from(&[i][..]) };
        let mut touched = Touched::default();
        touched.note_all(10, [row(1), row(2)]);
        touched.note(10, || row(2));
        assert!(!touched.is_all() && touched.keys().len() == 2);
        touched.note_all(0, []); // nothing changed: nothing to write
        assert!(!touched.is_all());
        touched.note_all(10, [row(3), row(4), row(5)]);
        assert!(touched.is_all() && touched.keys().is_empty());
        touched.note(10, || unreachable!("no key is made once all changed"));

        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "v",
                datafusion::arrow::datatypes::DataType::Int64,
                false,
            ),
        ]));
        let rows = RowSet::new(Arc::new(RowCodec::try_new(schema).unwrap()));
        assert!(rows_delta(&rows, &mut touched, false).full);
        assert!(!touched.is_all() && touched.keys().is_empty());
        touched.note(10, || row(7));
        let delta = rows_delta(&rows, &mut touched, false);
        assert!(!delta.full && delta.len() == 1);
    }

    #[test]
    fn a_panicking_operator_becomes_an_error() {
        let error = guarded(|| -> Result<()> { panic!("index out of bounds") }).unwrap_err();
        assert!(error
            .to_string()
            .contains("an operator panicked: index out of bounds"));
        assert_eq!(guarded(|| Ok(7)).unwrap(), 7);
    }
}
