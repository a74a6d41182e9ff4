//! The engine: executes statements against the catalog, the tables and the
//! runtime. It is shared by all sessions; per-connection settings live in
//! [`Session`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, Statement};

use super::jobs::{jobs_batch, kafka_inputs, BackfillWatch};
use super::sink::{CreateSink, SinkInput, SourceClauses};
use super::system::{sinks_batch, views_batch, SystemSchema};
use super::types::column_field;
use super::{
    normalize_ident, CreateView, EddyStatement, TimeColumns, TransactionStep, WatermarkClause,
    WriteKind,
};
use crate::catalog::window::{WindowFunction, WindowKind};
use crate::catalog::RelationId;
use crate::catalog::{
    all_nullable, Catalog, Relation, RelationKind, SinkEntry, TableEntry, ViewEntry,
};
use crate::connectors::kafka::sink::KafkaSinkConfig;
use crate::connectors::postgres::{self, PostgresSinkConfig, SinkMode, SinkStatus};
use crate::connectors::table::{ProcessingTime, TableData, TableWatermark};
use crate::connectors::{datagen, kafka, nexmark, ReaderSpec, SourceConnector};
use crate::error::{EddyError, Result};
use crate::plan;
use crate::runtime::checkpoint::Checkpointer;
use crate::runtime::{RestoredView, RuntimeHandle, ViewSpec, DURABLE_SINK_QUEUE_EPOCHS};
use crate::server::monitor::{Health, Monitor};
use crate::state::checkpoint::{CheckpointStore, Manifest, ReaderPosition, RestoredState};
use crate::stream::ChangeBatch;
use std::sync::atomic::AtomicBool;

/// The result of one statement.
#[derive(Debug)]
pub enum StatementResult {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A command tag such as `INSERT 0 3` or `CREATE TABLE`.
    Command(String),
    /// BEGIN: the session is now in a transaction block.
    TransactionStart(String),
    /// COMMIT / ROLLBACK: the block ended.
    TransactionEnd(String),
    /// SUBSCRIBE: rows of `schema` (the view's columns, `op`, `epoch`) as
    /// changes happen, until the client goes or falls behind.
    Subscription(Subscription),
    /// CREATE MATERIALIZED VIEW over Kafka sources: report the backfill's
    /// progress to the client (as NOTICEs) until it is done, then `then`.
    Backfilling {
        watch: BackfillWatch,
        then: Box<StatementResult>,
    },
}

/// A running SUBSCRIBE: the view's epochs, as rows.
#[derive(Debug)]
pub struct Subscription {
    pub schema: SchemaRef,
    epochs: tokio::sync::mpsc::Receiver<postgres::SinkEpoch>,
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
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        let Some(epoch) = self.epochs.recv().await else {
            return Some(Err(fell_behind()));
        };
        Some(self.rows_of(epoch))
    }

    /// The next epoch's changes if they have arrived (`None`: not yet).
    fn try_next_batch(&mut self) -> Option<Result<RecordBatch>> {
        match self.epochs.try_recv() {
            Ok(epoch) => Some(self.rows_of(epoch)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(Err(fell_behind())),
        }
    }

    fn rows_of(&self, epoch: postgres::SinkEpoch) -> Result<RecordBatch> {
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

fn fell_behind() -> EddyError {
    EddyError::OutOfRange(
        "subscription ended: the client fell behind (or the view was dropped)".into(),
    )
}

/// Epochs with changes a SUBSCRIBE client may be behind before it is
/// dropped (it never holds the runtime back, nor makes eddy's memory grow).
pub const SUBSCRIPTION_QUEUE_EPOCHS: usize = 256;

/// A subscription cursor (`DECLARE c SUBSCRIPTION CURSOR FOR view`): its
/// changes wait for FETCH, within the subscription's bounded queue.
#[derive(Debug)]
struct Cursor {
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

/// Per-connection state: settings (`SET` / `SHOW`), the transaction block,
/// subscription cursors.
#[derive(Debug)]
pub struct Session {
    settings: BTreeMap<String, String>,
    /// Inside BEGIN ... COMMIT: whether a statement of the block wrote.
    transaction: Option<bool>,
    cursors: BTreeMap<String, Cursor>,
}

impl Default for Session {
    fn default() -> Self {
        let settings = [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("datestyle", "ISO, MDY"),
            ("timezone", "UTC"),
            ("search_path", "public"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("transaction isolation level", "read committed"),
            ("transaction_isolation", "read committed"),
            ("background_ddl", "false"),
        ];
        Self {
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            transaction: None,
            cursors: BTreeMap::new(),
        }
    }
}

/// A recovery in progress: the checkpoint being restored, and the source
/// readers to start when every object is back.
struct Restoring {
    state: RestoredState,
    deferred_readers: Vec<(SourceConnector, ReaderSpec)>,
}

/// What a prepared statement will take and return.
#[derive(Debug, Clone)]
pub struct Description {
    pub parameters: Vec<Option<DataType>>,
    pub result: Option<SchemaRef>,
}

pub struct Engine {
    catalog: Arc<Catalog>,
    runtime: RuntimeHandle,
    base_state: SessionState,
    /// Serializes DDL so that name checks and dependency checks hold.
    ddl_lock: tokio::sync::Mutex<()>,
    checkpoints: Arc<Checkpointer>,
    /// The last minutes of health figures (rates, charts).
    monitor: Arc<Monitor>,
    /// While recovering: the checkpoint the replayed DDL restores from.
    restoring: std::sync::Mutex<Option<Restoring>>,
    /// Keyed operators of new views are split across this many threads.
    workers: usize,
}

impl Engine {
    /// An engine whose checkpoints go to memory only (tests, benchmarks).
    pub fn new(runtime: RuntimeHandle) -> Self {
        Self::with_checkpoints(
            runtime,
            Arc::new(Checkpointer::new(
                CheckpointStore::in_memory(),
                crate::runtime::checkpoint::DEFAULT_CHECKPOINT_INTERVAL,
            )),
        )
    }

    pub fn with_checkpoints(runtime: RuntimeHandle, checkpoints: Arc<Checkpointer>) -> Self {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema("eddy", "public")
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false);
        let base_state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        Self {
            catalog: Arc::new(Catalog::new()),
            runtime,
            base_state,
            ddl_lock: tokio::sync::Mutex::new(()),
            checkpoints,
            monitor: Arc::default(),
            restoring: std::sync::Mutex::new(None),
            workers: 1,
        }
    }

    /// Splits the keyed operators of views planned from now on across
    /// `workers` threads (at least one).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    pub fn checkpoints(&self) -> &Arc<Checkpointer> {
        &self.checkpoints
    }

    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    /// Takes a checkpoint now: a barrier through the runtime (with the
    /// catalog as of the same moment), the state written, then the durable
    /// sinks told they may commit its epoch.
    pub async fn checkpoint(&self) -> Result<Manifest> {
        let run = self.checkpoints.begin().await?;
        let request = run.request();
        let (capture, catalog) = {
            let _ddl = self.ddl_lock.lock().await;
            (self.runtime.capture(request).await, self.catalog.ddl_log())
        };
        let manifest = run.complete(capture, catalog).await?;
        self.runtime.checkpoint_done(manifest.epoch).await?;
        Ok(manifest)
    }

    /// Takes a checkpoint and keeps it as the named snapshot (a savepoint:
    /// never garbage-collected; `eddy --from-snapshot <name>` starts from it).
    pub async fn snapshot(&self, name: &str) -> Result<Manifest> {
        let manifest = self.checkpoint().await?;
        self.checkpoints
            .store()
            .save_snapshot(name, &manifest)
            .await?;
        Ok(manifest)
    }

    /// Rebuilds everything a checkpoint holds: replays its catalog, each
    /// object restored from its checkpointed state instead of backfilled,
    /// source readers resumed where the checkpoint had them.
    pub async fn recover(&self, manifest: Manifest, restored: RestoredState) -> Result<()> {
        let started = std::time::Instant::now();
        let epoch = restored.epoch;
        *self.restoring_state() = Some(Restoring {
            state: restored,
            deferred_readers: Vec::new(),
        });
        let mut session = Session::default();
        for ddl in &manifest.catalog {
            let result = match super::parse_statement(ddl) {
                Ok(statement) => self.execute_sql(&mut session, ddl, statement, vec![]).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                *self.restoring_state() = None;
                return Err(EddyError::Checkpoint(format!(
                    "checkpoint {} cannot be restored: `{ddl}` failed: {e}",
                    manifest.id
                )));
            }
        }
        let restoring = self.restoring_state().take();
        self.runtime.resume_epoch(epoch).await?;
        for (connector, spec) in restoring.map(|r| r.deferred_readers).unwrap_or_default() {
            connector.spawn_reader(spec);
        }
        tracing::info!(
            checkpoint = manifest.id,
            epoch,
            objects = manifest.catalog.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "recovered from checkpoint"
        );
        self.checkpoints.resume_after(manifest).await;
        Ok(())
    }

    fn restoring_state(&self) -> std::sync::MutexGuard<'_, Option<Restoring>> {
        self.restoring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_restoring(&self) -> bool {
        self.restoring_state().is_some()
    }

    /// Takes the checkpointed entries of state table `name`, when restoring.
    fn take_restored(&self, name: &str) -> Option<BTreeMap<Vec<u8>, Vec<u8>>> {
        self.restoring_state().as_mut()?.state.states.remove(name)
    }

    fn restored_watermark(&self, name: &str) -> Option<i64> {
        self.restoring_state()
            .as_ref()?
            .state
            .meta
            .watermarks
            .get(name)
            .copied()
    }

    fn restored_position(&self, reader: &str) -> Option<ReaderPosition> {
        self.restoring_state()
            .as_ref()?
            .state
            .meta
            .readers
            .get(reader)
            .cloned()
    }

    /// Takes everything checkpointed under `view/<name>/`.
    fn take_restored_view(&self, name: &str) -> Option<RestoredState> {
        let mut guard = self.restoring_state();
        let restoring = &mut guard.as_mut()?.state;
        let prefix = format!("view/{name}/");
        if !restoring.states.contains_key(&format!("{prefix}rows")) {
            return None;
        }
        let keys: Vec<String> = restoring
            .states
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        let mut view = RestoredState::default();
        for key in keys {
            if let Some(entries) = restoring.states.remove(&key) {
                view.states.insert(key, entries);
            }
        }
        Some(view)
    }

    fn record_ddl(&self, statement: &EddyStatement, sql: &str) {
        let (sink, name) = match statement {
            EddyStatement::CreateTable(create, _) => match super::relation_name(&create.name) {
                Ok(name) => (false, name),
                Err(_) => return,
            },
            EddyStatement::CreateSource { table, .. } => match super::relation_name(&table.name) {
                Ok(name) => (false, name),
                Err(_) => return,
            },
            EddyStatement::CreateView(view) => (false, view.name.clone()),
            EddyStatement::CreateSink(sink) => (true, sink.name.clone()),
            _ => return,
        };
        let exists = if sink {
            self.catalog.sink(&name).is_some()
        } else {
            self.catalog.get(&name).is_some()
        };
        if exists {
            self.catalog.record_ddl(sink, &name, sql);
        }
    }

    /// Executes one statement whose text is `sql`: DDL is recorded in the
    /// catalog and made durable by a checkpoint before it returns.
    pub async fn execute_sql(
        &self,
        session: &mut Session,
        sql: &str,
        statement: EddyStatement,
        params: Vec<ScalarValue>,
    ) -> Result<StatementResult> {
        let is_ddl = matches!(
            statement,
            EddyStatement::CreateTable(..)
                | EddyStatement::CreateSource { .. }
                | EddyStatement::CreateView(_)
                | EddyStatement::CreateSink(_)
                | EddyStatement::Drop { .. }
                | EddyStatement::DropSink { .. }
        );
        let recorded = is_ddl.then(|| statement.clone());
        let result = self.execute(session, statement, params).await?;
        if let Some(statement) = recorded {
            self.record_ddl(&statement, sql);
            if !self.is_restoring() {
                self.checkpoint().await.map_err(|e| {
                    EddyError::Checkpoint(format!(
                        "the statement took effect but is not durable yet (a later checkpoint \
                         will make it so): {e}"
                    ))
                })?;
            }
            if let EddyStatement::CreateView(view) = &statement {
                // SET checks the value and stores it as `true` / `false`.
                let background = session
                    .settings
                    .get("background_ddl")
                    .is_some_and(|v| v == "true");
                if let (false, Some(watch)) = (background, self.backfill_watch(&view.name)) {
                    return Ok(StatementResult::Backfilling {
                        watch,
                        then: Box::new(result),
                    });
                }
            }
        }
        Ok(result)
    }

    /// A watch on the backfills of view `name`, if it reads Kafka sources.
    fn backfill_watch(&self, name: &str) -> Option<BackfillWatch> {
        let Some(Relation::View(view)) = self.catalog.get(name) else {
            return None;
        };
        let sources = kafka_inputs(&self.catalog, &view.inputs);
        (!sources.is_empty())
            .then(|| BackfillWatch::new(self.runtime.clone(), name.to_string(), sources))
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// A DataFusion session over one consistent snapshot: tables as of now,
    /// all views as of the last completed epoch.
    fn query_state(&self) -> Result<SessionState> {
        let epoch = self.runtime.published();
        let public = Arc::new(MemorySchemaProvider::new());
        let mut relations = HashMap::new();
        for relation in self.catalog.snapshot(&epoch) {
            let relation = Arc::new(relation);
            relations.insert(relation.name.clone(), relation.clone());
            public.register_table(relation.name.clone(), relation)?;
        }
        let relations = Arc::new(relations);
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema("public", public)?;
        catalog.register_schema(
            "eddy_catalog",
            Arc::new(SystemSchema::new(
                self.runtime.clone(),
                self.catalog.clone(),
                self.checkpoints.stats(),
                self.monitor.clone(),
            )),
        )?;
        let listed = self.catalog.list();
        catalog.register_schema(
            "information_schema",
            super::information_schema::information_schema(&listed)?,
        )?;
        let pg_catalog = super::pg_catalog::pg_catalog(&listed)?;
        catalog.register_schema("pg_catalog", pg_catalog.schema.clone())?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog("eddy".into(), catalog as Arc<dyn CatalogProvider>);
        let mut state = SessionStateBuilder::new_from_existing(self.base_state.clone())
            .with_catalog_list(catalogs as Arc<dyn CatalogProviderList>)
            .build();
        // now() and friends read the statement's start time.
        state.mark_start_execution();
        pg_catalog.register_functions(&mut state)?;
        // DataFusion looks table functions up by the name as written.
        for (name, kind) in [
            ("tumble", WindowKind::Tumble),
            ("hop", WindowKind::Hop),
            ("session", WindowKind::Session),
        ] {
            let function = Arc::new(WindowFunction::new(kind, relations.clone()));
            state.register_udtf(name, function.clone());
            state.register_udtf(&name.to_uppercase(), function);
        }
        state.register_udtf(
            crate::catalog::lookup::LOOKUP_FUNCTION,
            Arc::new(crate::catalog::lookup::LookupFunction::new(
                relations.clone(),
            )),
        );
        Ok(state)
    }

    async fn plan(&self, state: &SessionState, statement: &Statement) -> Result<LogicalPlan> {
        let mut statement = statement.clone();
        super::pg_catalog::rewrite_regclass(&mut statement, &self.catalog)?;
        Ok(state
            .statement_to_plan(DFStatement::Statement(Box::new(statement)))
            .await?)
    }

    /// Parameter and result types of a statement, for the extended protocol.
    pub async fn describe(
        &self,
        session: &Session,
        statement: &EddyStatement,
    ) -> Result<Description> {
        let none = |result: Option<SchemaRef>| Description {
            parameters: vec![],
            result,
        };
        Ok(match statement {
            EddyStatement::Query(query)
            | EddyStatement::Write {
                statement: query, ..
            } => {
                let plan = self.plan(&self.query_state()?, query).await?;
                let types = plan.get_parameter_types()?;
                let mut parameters = vec![None; types.len()];
                for (name, field) in types {
                    let index: usize = name.trim_start_matches('$').parse().unwrap_or(0);
                    if (1..=parameters.len()).contains(&index) {
                        parameters[index - 1] = field;
                    }
                }
                let result = matches!(statement, EddyStatement::Query(_))
                    .then(|| Arc::new(plan.schema().as_arrow().clone()));
                Description { parameters, result }
            }
            EddyStatement::ShowTables => none(Some(show_tables_schema())),
            EddyStatement::ShowViews => none(Some(views_batch(&[])?.schema())),
            EddyStatement::ShowSinks => none(Some(self.sinks_batch()?.schema())),
            EddyStatement::ShowJobs => none(Some(jobs_batch(&self.catalog)?.schema())),
            EddyStatement::Fetch { cursor, .. } => {
                none(Some(Self::cursor_schema(session, cursor)?))
            }
            EddyStatement::ExplainCreateView(_) => none(Some(explain_schema())),
            EddyStatement::ShowVariable(name) => none(Some(show_variable_schema(name))),
            _ => none(None),
        })
    }

    /// Executes one statement with positional parameters `$1, $2, ...`.
    pub async fn execute(
        &self,
        session: &mut Session,
        statement: EddyStatement,
        params: Vec<ScalarValue>,
    ) -> Result<StatementResult> {
        match statement {
            EddyStatement::Query(query) => self.query(&query, params).await,
            EddyStatement::CreateTable(create, time) => self.create_table(*create, &time).await,
            EddyStatement::CreateView(view) => self.create_view(*view).await,
            EddyStatement::ExplainCreateView(view) => self.explain_view(&view).await,
            EddyStatement::Write {
                table,
                kind,
                statement,
            } => {
                if let Some(wrote) = session.transaction.as_mut() {
                    *wrote = true;
                }
                self.write(&table, kind, &statement, params).await
            }
            EddyStatement::Transaction(step) => Self::transaction(session, step),
            EddyStatement::Subscribe { view, snapshot } => Ok(StatementResult::Subscription(
                self.subscribe(&view, snapshot).await?,
            )),
            EddyStatement::DeclareCursor {
                name,
                view,
                snapshot,
            } => {
                if session.cursors.contains_key(&name) {
                    return Err(EddyError::Planning {
                        sqlstate: "42P03",
                        message: format!("cursor \"{name}\" already exists"),
                    });
                }
                let subscription = self.subscribe(&view, snapshot).await?;
                session.cursors.insert(
                    name,
                    Cursor {
                        subscription,
                        buffered: VecDeque::new(),
                    },
                );
                Ok(StatementResult::Command("DECLARE CURSOR".into()))
            }
            EddyStatement::Fetch {
                cursor,
                count,
                timeout_ms,
            } => Self::fetch(session, &cursor, count, timeout_ms).await,
            EddyStatement::Close(name) => {
                match name {
                    None => session.cursors.clear(),
                    Some(name) => {
                        session
                            .cursors
                            .remove(&name)
                            .ok_or_else(|| no_such_cursor(&name))?;
                    }
                }
                Ok(StatementResult::Command("CLOSE CURSOR".into()))
            }
            EddyStatement::Drop {
                kind,
                names,
                if_exists,
                cascade,
            } => self.drop(kind, &names, if_exists, cascade).await,
            EddyStatement::CreateSink(sink) => self.create_sink(*sink).await,
            EddyStatement::DropSink { names, if_exists } => {
                self.drop_sinks(&names, if_exists).await
            }
            EddyStatement::ShowSinks => Ok(rows(self.sinks_batch()?)),
            EddyStatement::CreateSource {
                table,
                time,
                clauses,
            } => self.create_source(*table, &time, *clauses).await,
            EddyStatement::ShowSources => self.show_names(RelationKind::Source),
            EddyStatement::ShowJobs => Ok(rows(jobs_batch(&self.catalog)?)),
            EddyStatement::Flush => {
                // A checkpoint: every change before is visible, durable,
                // and handed to the sinks; wait for every sink that has not
                // failed to commit it.
                let manifest = self.checkpoint().await?;
                for sink in self.catalog.list_sinks() {
                    sink.status.wait_for(manifest.epoch).await;
                }
                Ok(StatementResult::Command("FLUSH".into()))
            }
            EddyStatement::Checkpoint => {
                self.checkpoint().await?;
                Ok(StatementResult::Command("CHECKPOINT".into()))
            }
            EddyStatement::CreateSnapshot(name) => {
                self.snapshot(&name).await?;
                Ok(StatementResult::Command("CREATE SNAPSHOT".into()))
            }
            EddyStatement::ShowTables => self.show_names(RelationKind::Table),
            EddyStatement::ShowViews => {
                let (_, mut views) = self.runtime.status().await?;
                views.retain(|v| matches!(self.catalog.get(&v.name), Some(Relation::View(e)) if e.owner_sink.is_none()));
                Ok(rows(views_batch(&views)?))
            }
            EddyStatement::Set { name, value } if name == "background_ddl" => {
                let on = match value.trim_matches('\'').to_ascii_lowercase().as_str() {
                    "true" | "on" | "1" | "yes" => true,
                    "false" | "off" | "0" | "no" => false,
                    other => {
                        return Err(EddyError::InvalidParameter(format!(
                            "background_ddl takes a boolean (true or false), not \"{other}\""
                        )))
                    }
                };
                session.settings.insert(name, on.to_string());
                Ok(StatementResult::Command("SET".into()))
            }
            EddyStatement::Set { name, value } if name == "checkpoint_interval" => {
                let micros = super::types::interval_micros(value.trim_matches('\''))?;
                if micros < 0 {
                    return Err(EddyError::InvalidParameter(
                        "checkpoint_interval cannot be negative".into(),
                    ));
                }
                self.checkpoints
                    .set_interval(std::time::Duration::from_micros(micros as u64));
                Ok(StatementResult::Command("SET".into()))
            }
            EddyStatement::Set { name, value } => {
                if !name.is_empty() {
                    session.settings.insert(name, value);
                }
                Ok(StatementResult::Command("SET".into()))
            }
            EddyStatement::ShowVariable(name) => {
                let interval = (name == "checkpoint_interval")
                    .then(|| format!("{}ms", self.checkpoints.interval().as_millis()));
                let value = interval
                    .or_else(|| session.settings.get(&name).cloned())
                    .ok_or_else(|| EddyError::Planning {
                        sqlstate: "42704",
                        message: format!("unrecognized configuration parameter \"{name}\""),
                    })?;
                let batch = RecordBatch::try_new(
                    show_variable_schema(&name),
                    vec![Arc::new(StringArray::from(vec![value])) as ArrayRef],
                )?;
                Ok(rows(batch))
            }
        }
    }

    async fn query(
        &self,
        statement: &Statement,
        params: Vec<ScalarValue>,
    ) -> Result<StatementResult> {
        let run = async {
            let state = self.query_state()?;
            let mut plan = self.plan(&state, statement).await?;
            if !params.is_empty() {
                plan = plan.with_param_values(ParamValues::from(params))?;
            }
            let schema = Arc::new(plan.schema().as_arrow().clone());
            let batches = DataFrame::new(state, plan).collect().await?;
            Ok(StatementResult::Rows { schema, batches })
        };
        match run.await {
            // A catalog query DataFusion cannot plan, over catalog tables
            // eddy keeps empty: its answer is no rows.
            Err(e) => match super::pg_catalog::provably_empty(statement) {
                Some(schema) => Ok(StatementResult::Rows {
                    schema,
                    batches: vec![],
                }),
                None => Err(e),
            },
            result => result,
        }
    }

    async fn create_table(
        &self,
        create: ast::CreateTable,
        time: &TimeColumns,
    ) -> Result<StatementResult> {
        let (name, fields, key_indices) = table_columns(&create)?;
        let append_only = table_append_only(&create.table_options)?;
        let schema = Arc::new(Schema::new(fields));
        let (watermark, proctime) = time_columns(time, &schema)?;
        let _ddl = self.ddl_lock.lock().await;
        if self.catalog.get(&name).is_some() && create.if_not_exists {
            return Ok(StatementResult::Command("CREATE TABLE".into()));
        }
        let mut data = TableData::try_new(&name, schema.clone(), key_indices)?;
        let restored = self.take_restored(&format!("table/{name}"));
        if let Some(entries) = &restored {
            let codec = data.rows.codec().clone();
            let mut rows: Vec<&[u8]> = Vec::new();
            for (row, n) in entries {
                let n = i64::from_le_bytes(n.as_slice().try_into().map_err(|_| {
                    EddyError::Checkpoint(format!("table {name}: bad row multiplicity"))
                })?);
                rows.extend(std::iter::repeat_n(row.as_slice(), n.max(0) as usize));
            }
            if !rows.is_empty() {
                let batch = codec.decode(rows.into_iter())?;
                data = data.insert(batch)?.0;
            }
        }
        let restored_watermark = self.restored_watermark(&format!("table/{name}"));
        let clock_drives_watermark = matches!(
            (&proctime, &watermark),
            (Some(p), Some(w)) if p.column == w.column
        );
        let table = Arc::new(TableEntry {
            id: self.catalog.allocate_id(),
            name,
            schema,
            data: std::sync::Mutex::new(data),
            write_lock: tokio::sync::Mutex::new(()),
            append_only,
            watermark,
            proctime,
        });
        if let (Some(w), Some(watermark)) = (restored_watermark, &table.watermark) {
            watermark.resume_at(w);
        }
        let rows = table.data().rows.clone();
        self.runtime
            .register_table(
                table.id,
                table.name.clone(),
                rows,
                restored_watermark,
                restored.is_some(),
            )
            .await?;
        self.catalog.insert(Relation::Table(table.clone()))?;
        if clock_drives_watermark {
            spawn_processing_time_watermark(Arc::downgrade(&table), self.runtime.clone());
        }
        Ok(StatementResult::Command("CREATE TABLE".into()))
    }

    /// The names of the relations of one kind, as SHOW TABLES/SOURCES list them.
    fn show_names(&self, kind: RelationKind) -> Result<StatementResult> {
        let names: Vec<String> = self
            .catalog
            .list()
            .into_iter()
            .filter(|r| r.kind() == kind)
            .map(|r| r.name().to_string())
            .collect();
        let batch = RecordBatch::try_new(
            show_tables_schema(),
            vec![Arc::new(StringArray::from(names)) as ArrayRef],
        )?;
        Ok(rows(batch))
    }

    async fn create_source(
        &self,
        table: ast::CreateTable,
        time: &TimeColumns,
        clauses: SourceClauses,
    ) -> Result<StatementResult> {
        let options = &clauses.options;
        let (name, mut fields, key) = table_columns(&table)?;
        let connector_name = options.get("connector").map(|c| c.to_lowercase());
        if connector_name.as_deref() != Some("kafka") {
            if !key.is_empty() {
                return Err(crate::not_supported!("sources have no primary key"));
            }
            if clauses.format.is_some() || !clauses.includes.is_empty() {
                return Err(crate::not_supported!(
                    "FORMAT ... ENCODE ... and INCLUDE are for Kafka sources"
                ));
            }
        }
        // The connector makes every column but the processing-time one,
        // which each reader stamps.
        let proctime_field = match &time.proctime {
            Some(column) => {
                let position = fields
                    .iter()
                    .position(|f| f.name() == column)
                    .ok_or_else(|| crate::internal!("PROCTIME() column {column} vanished"))?;
                Some((position, fields.remove(position)))
            }
            None => None,
        };
        let declared_others = !fields.is_empty();
        let connector =
            match connector_name.as_deref() {
                Some("datagen") => {
                    if fields.is_empty() {
                        return Err(EddyError::InvalidParameter(
                            "a datagen source needs a column list".into(),
                        ));
                    }
                    SourceConnector::Datagen(datagen::DatagenConfig::from_options(
                        Arc::new(Schema::new(fields)),
                        options,
                    )?)
                }
                Some("nexmark") => SourceConnector::Nexmark(nexmark::NexmarkConfig::from_options(
                    &name, &fields, options,
                )?),
                Some("kafka") => {
                    if time.proctime.is_some() && !key.is_empty() {
                        return Err(crate::not_supported!(
                            "a PROCTIME() column on a source with a PRIMARY KEY"
                        ));
                    }
                    SourceConnector::Kafka(Arc::new(kafka::KafkaSourceConfig::from_clauses(
                        fields, &key, &clauses,
                    )?))
                }
                Some(other) => {
                    return Err(crate::not_supported!(
                "source connector '{other}' is not supported; use 'kafka', 'datagen' or 'nexmark'"
            ))
                }
                None => return Err(EddyError::InvalidParameter(
                    "CREATE SOURCE needs WITH (connector = 'kafka', 'datagen' or 'nexmark', ...)"
                        .into(),
                )),
            };
        let mut schema = connector.schema();
        if let Some((position, field)) = proctime_field {
            // Where it was declared; after the connector's own columns when
            // it was the only one declared.
            let position = if declared_others {
                position
            } else {
                schema.fields().len()
            };
            let mut all: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            all.insert(position, field);
            schema = Arc::new(Schema::new(all));
        }
        let (watermark, proctime) = time_columns(time, &schema)?;
        let _ddl = self.ddl_lock.lock().await;
        if self.catalog.get(&name).is_some() && table.if_not_exists {
            return Ok(StatementResult::Command("CREATE SOURCE".into()));
        }
        self.catalog
            .insert(Relation::Source(Arc::new(crate::catalog::SourceEntry {
                id: self.catalog.allocate_id(),
                name,
                schema,
                connector,
                watermark: watermark.map(|w| (w.column, w.delay_micros)),
                proctime: proctime.map(|p| p.column),
            })))?;
        Ok(StatementResult::Command("CREATE SOURCE".into()))
    }

    /// Plans a view's query into a streaming graph and its output schema.
    async fn plan_view(&self, view: &CreateView) -> Result<(plan::PlannedView, LogicalPlan)> {
        let mut state = self.query_state()?;
        // Uncorrelated scalar subqueries become joins with their one row, which
        // eddy maintains; DataFusion would otherwise run them as a separate
        // physical plan, which a streaming graph has no place for.
        state
            .config_mut()
            .options_mut()
            .optimizer
            .enable_physical_uncorrelated_scalar_subquery = false;
        let logical = self
            .plan(&state, &Statement::Query(view.query.clone()))
            .await?;
        if !logical.get_parameter_types()?.is_empty() {
            return Err(crate::not_supported!(
                "parameters ($1) in CREATE MATERIALIZED VIEW"
            ));
        }
        let logical = plan::rewrite_temporal_filters(logical)?;
        plan::check_deterministic(&logical)?;
        let optimized = state.optimize(&logical)?;
        let time = plan::TimeOptions {
            allowed_lateness_micros: view.allowed_lateness_micros,
            idle_timeout_micros: view.idle_timeout_micros,
            allow_cross_join: view.allow_cross_join,
            emit_on_window_close: view.emit_on_window_close,
        };
        let relation_is_append_only =
            |relation: &crate::catalog::RelationProvider| match self.catalog.by_id(relation.id) {
                Some(Relation::Table(t)) => t.append_only,
                Some(Relation::View(v)) => v.append_only,
                Some(Relation::Source(s)) => s.connector.is_append_only(),
                None => false,
            };
        let lowered = plan::lower(&optimized, time, self.workers, &relation_is_append_only)?;
        if view.emit_on_window_close {
            // Windows close only as the watermark of their time column moves.
            for (relation, time_column) in &lowered.windows {
                let (name, schema, column) = match self.catalog.by_id(*relation) {
                    Some(Relation::Table(t)) => (
                        t.name.clone(),
                        t.schema.clone(),
                        t.watermark.as_ref().map(|w| w.column),
                    ),
                    Some(Relation::Source(s)) => (
                        s.name.clone(),
                        s.schema.clone(),
                        s.watermark.map(|(c, _)| c),
                    ),
                    _ => continue,
                };
                if column.map(|c| schema.field(c).name().as_str()) != Some(time_column.as_str()) {
                    return Err(EddyError::InvalidParameter(format!(
                        "EMIT ON WINDOW CLOSE needs a watermark on {name}.{time_column}: declare \
                         WATERMARK FOR {time_column} AS {time_column} - INTERVAL '...' in its CREATE"
                    )));
                }
            }
        }
        let graph = lowered.graph;
        let mut fields: Vec<Field> = logical
            .schema()
            .as_arrow()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if !view.columns.is_empty() {
            if view.columns.len() > fields.len() {
                return Err(EddyError::Syntax(
                    "CREATE MATERIALIZED VIEW specifies more column names than columns".into(),
                ));
            }
            for (field, name) in fields.iter_mut().zip(&view.columns) {
                *field = field.clone().with_name(name);
            }
        }
        for (i, field) in fields.iter().enumerate() {
            if fields[..i].iter().any(|f| f.name() == field.name()) {
                return Err(EddyError::Planning {
                    sqlstate: "42701",
                    message: format!(
                        "column \"{}\" specified more than once; give the columns of the view distinct names with AS",
                        field.name()
                    ),
                });
            }
        }
        // The optimized plan may have narrowed types or nullability; the
        // view stores what its root operator produces.
        let optimized_schema = optimized.schema().as_arrow();
        for (field, produced) in fields.iter_mut().zip(optimized_schema.fields()) {
            *field = field
                .clone()
                .with_data_type(produced.data_type().clone())
                .with_nullable(true);
        }
        let schema = Arc::new(Schema::new(fields));
        let key = plan::derive_key(&optimized);
        // EMIT ON WINDOW CLOSE emits each window once: only insertions.
        let append_only =
            view.emit_on_window_close || plan::is_append_only(&optimized, &relation_is_append_only);
        Ok((
            plan::PlannedView {
                graph,
                schema,
                key,
                append_only,
            },
            optimized,
        ))
    }

    async fn create_view(&self, view: CreateView) -> Result<StatementResult> {
        let _ddl = self.ddl_lock.lock().await;
        if self.catalog.get(&view.name).is_some() {
            if view.if_not_exists {
                return Ok(StatementResult::Command("CREATE MATERIALIZED VIEW".into()));
            }
            return Err(EddyError::DuplicateRelation(format!(
                "relation \"{}\" already exists",
                view.name
            )));
        }
        let (planned, _) = self.plan_view(&view).await?;
        self.start_view(view, planned, None).await?;
        Ok(StatementResult::Command("CREATE MATERIALIZED VIEW".into()))
    }

    /// Plans a view, backfills it in the runtime and registers it. Callers
    /// hold the DDL lock.
    async fn start_view(
        &self,
        view: CreateView,
        planned: plan::PlannedView,
        owner_sink: Option<String>,
    ) -> Result<Arc<ViewEntry>> {
        let inputs = planned.graph.input_relations();
        // Hold the write locks of the input tables while the backfill
        // snapshot is taken and the view is handed to the runtime, so the
        // view sees each table change exactly once: in the snapshot or after.
        let mut tables: Vec<Arc<TableEntry>> = inputs
            .iter()
            .filter_map(|id| match self.catalog.by_id(*id) {
                Some(Relation::Table(t)) => Some(t),
                _ => None,
            })
            .collect();
        tables.sort_by_key(|t| t.id);
        let mut guards = Vec::with_capacity(tables.len());
        for table in &tables {
            guards.push(table.write_lock.lock().await);
        }
        let restored = self.take_restored_view(&view.name);
        let mut table_snapshots = Vec::with_capacity(tables.len());
        if restored.is_none() {
            for table in &tables {
                let rows = table.data().rows.to_change_batch()?;
                table_snapshots.push((table.id, rows));
            }
        }
        // Each source this view reads gets a reader of its own, from the
        // first row, under a relation id of its own.
        let mut graph = planned.graph;
        let mut readers = Vec::new();
        for input in &inputs {
            if let Some(Relation::Source(source)) = self.catalog.by_id(*input) {
                let reader = self.catalog.allocate_id();
                graph.rebind(source.id, reader);
                table_snapshots.push((
                    reader,
                    ChangeBatch::inserts(RecordBatch::new_empty(source.schema.clone())),
                ));
                readers.push((source, reader, Arc::new(AtomicBool::new(false))));
            }
        }
        let id = self.catalog.allocate_id();
        let reader_names: Vec<(RelationId, String)> = readers
            .iter()
            .map(|(source, reader, _)| (*reader, format!("{}/{}", view.name, source.name)))
            .collect();
        let resume: Vec<Option<ReaderPosition>> = match &restored {
            Some(_) => reader_names
                .iter()
                .map(|(_, name)| self.restored_position(name))
                .collect(),
            None => vec![None; reader_names.len()],
        };
        let restore = restored.map(|state| RestoredView {
            state,
            reader_watermarks: reader_names
                .iter()
                .filter_map(|(reader, name)| {
                    Some((*reader, self.restored_watermark(&format!("reader/{name}"))?))
                })
                .collect(),
            reader_positions: reader_names
                .iter()
                .zip(&resume)
                .filter_map(|((reader, _), position)| Some((*reader, position.clone()?)))
                .collect(),
            watermark: self.restored_watermark(&format!("view/{}", view.name)),
        });
        let reader_watermarks = restore
            .as_ref()
            .map(|r| r.reader_watermarks.clone())
            .unwrap_or_default();
        let columns_read: Vec<Option<Vec<usize>>> = readers
            .iter()
            .map(|(_, reader, _)| graph.columns_read(*reader))
            .collect();
        self.runtime
            .create_view(ViewSpec {
                id,
                name: view.name.clone(),
                schema: planned.schema.clone(),
                graph,
                table_snapshots,
                readers: reader_names,
                restore,
            })
            .await?;
        drop(guards);
        for (((source, reader, stop), resume), columns_read) in
            readers.iter().zip(resume).zip(columns_read)
        {
            let watermark = source
                .watermark
                .map(|(column, delay)| TableWatermark::new(column, delay));
            if let (Some(watermark), Some((_, w))) = (
                &watermark,
                reader_watermarks.iter().find(|(r, _)| r == reader),
            ) {
                watermark.resume_at(*w);
            }
            let spec = ReaderSpec {
                schema: source.schema.clone(),
                proctime: source.proctime.map(ProcessingTime::new),
                watermark,
                relation: *reader,
                view: view.name.clone(),
                runtime: self.runtime.clone(),
                stop: stop.clone(),
                resume,
                columns_read,
            };
            match self.restoring_state().as_mut() {
                // Recovering: readers start once every object is back, so
                // that no change reaches a view before its sinks exist.
                Some(restoring) => restoring
                    .deferred_readers
                    .push((source.connector.clone(), spec)),
                None => source.connector.spawn_reader(spec),
            }
        }
        let entry = Arc::new(ViewEntry {
            id,
            name: view.name,
            schema: planned.schema,
            definition: view.definition,
            inputs,
            key: planned.key,
            append_only: planned.append_only,
            owner_sink,
            source_readers: readers.into_iter().map(|(_, _, stop)| stop).collect(),
        });
        self.catalog.insert(Relation::View(entry.clone()))?;
        Ok(entry)
    }

    async fn create_sink(&self, create: CreateSink) -> Result<StatementResult> {
        let _ddl = self.ddl_lock.lock().await;
        if self.catalog.sink(&create.name).is_some() {
            if create.if_not_exists {
                return Ok(StatementResult::Command("CREATE SINK".into()));
            }
            return Err(EddyError::DuplicateRelation(format!(
                "sink \"{}\" already exists",
                create.name
            )));
        }
        let kafka = match create
            .options
            .get("connector")
            .map(|c| c.to_lowercase())
            .as_deref()
        {
            Some("postgres") if create.format.is_some() => {
                return Err(crate::not_supported!(
                    "FORMAT ... ENCODE ... is for Kafka sinks; a Postgres sink writes rows"
                ))
            }
            Some("postgres") => false,
            Some("kafka") => true,
            Some(other) => {
                return Err(crate::not_supported!(
                    "sink connector '{other}' is not supported; use 'postgres' or 'kafka'"
                ))
            }
            None => {
                return Err(EddyError::InvalidParameter(
                    "CREATE SINK needs WITH (connector = 'postgres' or 'kafka', ...)".into(),
                ))
            }
        };
        // The view the sink reads: a named one, or one of its own. Either
        // way, the target is checked before anything starts.
        let config_for = |schema: &SchemaRef, key: &Option<Vec<usize>>, append_only: bool| {
            if kafka {
                return Ok::<_, EddyError>(SinkConfig::Kafka(KafkaSinkConfig::from_options(
                    &create.name,
                    &create.options,
                    create.format.as_ref(),
                    schema.clone(),
                    key.clone(),
                    append_only,
                )?));
            }
            let config = PostgresSinkConfig::from_options(
                &create.name,
                &create.options,
                schema.clone(),
                key.clone(),
            )?;
            Self::check_sink_mode(&config, append_only)?;
            Ok(SinkConfig::Postgres(Box::new(config)))
        };
        let (view, config, owned) = match &create.input {
            SinkInput::View(name) => match self.catalog.require(name)? {
                Relation::View(v) if v.owner_sink.is_none() => {
                    let config = config_for(&v.schema, &v.key, v.append_only)?;
                    self.check_sink_target(&config, &create.name).await?;
                    (v, config, false)
                }
                _ => {
                    return Err(EddyError::WrongObjectType(format!(
                        "\"{name}\" is not a materialized view; sinks read materialized views \
                         (or use CREATE SINK ... AS SELECT)"
                    )))
                }
            },
            SinkInput::Query(query) => {
                let definition = CreateView {
                    name: format!("__sink_{}", create.name),
                    columns: vec![],
                    query: query.clone(),
                    if_not_exists: false,
                    definition: query.to_string(),
                    emit_on_window_close: false,
                    allowed_lateness_micros: 0,
                    idle_timeout_micros: None,
                    allow_cross_join: false,
                };
                let (planned, _) = self.plan_view(&definition).await?;
                let config = config_for(&planned.schema, &planned.key, planned.append_only)?;
                self.check_sink_target(&config, &create.name).await?;
                let view = self
                    .start_view(definition, planned, Some(create.name.clone()))
                    .await?;
                (view, config, true)
            }
        };
        let result = self.attach_sink(&create.name, config, &view).await;
        if result.is_err() && owned {
            self.runtime.drop_view(view.id).await?;
            self.catalog.remove(&view.name);
        }
        result
    }

    /// `SUBSCRIBE view`: the view's changes, streamed.
    async fn subscribe(&self, name: &str, snapshot: bool) -> Result<Subscription> {
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
        let id = self.catalog.allocate_id();
        let (sender, receiver) = tokio::sync::mpsc::channel(SUBSCRIPTION_QUEUE_EPOCHS);
        self.runtime
            .subscribe(id, view.id, sender, snapshot)
            .await?;
        Ok(Subscription {
            schema: Arc::new(Schema::new(fields)),
            epochs: receiver,
            _guard: SubscriptionGuard {
                id,
                runtime: self.runtime.clone(),
            },
        })
    }

    /// FETCH from a subscription cursor: up to `count` rows (all there
    /// are: `None`); when none are there, waits for the next epoch with
    /// changes, at most `timeout_ms` if given. A cursor that fell behind is
    /// closed with an error.
    async fn fetch(
        session: &mut Session,
        name: &str,
        count: Option<usize>,
        timeout_ms: Option<u64>,
    ) -> Result<StatementResult> {
        let cursor = session
            .cursors
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
            session.cursors.remove(name);
            return Err(e);
        }
        let batch = cursor.take(want)?;
        Ok(StatementResult::Rows {
            schema: batch.schema(),
            batches: vec![batch],
        })
    }

    /// The columns FETCH from cursor `name` returns.
    pub fn cursor_schema(session: &Session, name: &str) -> Result<SchemaRef> {
        session
            .cursors
            .get(name)
            .map(|c| c.subscription.schema.clone())
            .ok_or_else(|| no_such_cursor(name))
    }

    /// BEGIN / COMMIT / ROLLBACK. eddy applies every statement when it runs,
    /// so a block is a bracket: reads in it see the latest epoch each, and
    /// COMMIT has nothing left to do. ROLLBACK of a block that wrote cannot
    /// undo the writes, and says so (0A000) instead of pretending.
    fn transaction(session: &mut Session, step: TransactionStep) -> Result<StatementResult> {
        match step {
            TransactionStep::Begin => {
                session.transaction.get_or_insert(false);
                Ok(StatementResult::TransactionStart("BEGIN".into()))
            }
            TransactionStep::Commit => {
                session.transaction = None;
                Ok(StatementResult::TransactionEnd("COMMIT".into()))
            }
            TransactionStep::Rollback => match session.transaction.take() {
                Some(true) => Err(crate::not_supported!(
                    "ROLLBACK cannot undo the writes of this transaction block: eddy applies \
                     each statement when it runs (the block has ended)"
                )),
                _ => Ok(StatementResult::TransactionEnd("ROLLBACK".into())),
            },
            // Savepoints bracket like blocks: fine until there is a write to
            // undo.
            TransactionStep::Savepoint => Ok(StatementResult::Command("SAVEPOINT".into())),
            TransactionStep::Release => Ok(StatementResult::Command("RELEASE".into())),
            TransactionStep::RollbackToSavepoint => match session.transaction {
                Some(true) => Err(crate::not_supported!(
                    "ROLLBACK TO SAVEPOINT cannot undo writes: eddy applies each statement when it runs"
                )),
                _ => Ok(StatementResult::Command("ROLLBACK".into())),
            },
        }
    }

    fn check_sink_mode(config: &PostgresSinkConfig, append_only: bool) -> Result<()> {
        if config.mode == SinkMode::AppendOnly && !append_only {
            return Err(EddyError::NotSupported(format!(
                "sink {} is append-only but its input updates and deletes rows (aggregates, tables that \
                 allow UPDATE/DELETE); use type = 'upsert' with a primary_key",
                config.sink_name
            )));
        }
        Ok(())
    }

    /// Checks a sink's target at CREATE SINK. When recovering, a target that
    /// is away (Postgres restarting, a broker down) must not keep eddy from
    /// starting: the sink retries on its own, so the error is only logged.
    async fn check_sink_target(&self, config: &SinkConfig, name: &str) -> Result<()> {
        let restoring = self.is_restoring();
        match config.validate_target(!restoring).await {
            Err(e) if restoring => {
                tracing::warn!(sink = name, error = %e, "sink target unavailable at recovery; the sink will retry");
                Ok(())
            }
            other => other,
        }
    }

    /// Starts a checked sink on `view` and registers it.
    async fn attach_sink(
        &self,
        name: &str,
        config: SinkConfig,
        view: &Arc<ViewEntry>,
    ) -> Result<StatementResult> {
        let id = self.catalog.allocate_id();
        let status = SinkStatus::new(0);
        let (sender, receiver) = tokio::sync::mpsc::channel(DURABLE_SINK_QUEUE_EPOCHS);
        let (target, mode) = (config.target(), config.mode());
        let restored = self
            .take_restored(&format!("sink/{name}"))
            .map(|entries| crate::runtime::decode_sink_epochs(view.schema.clone(), entries))
            .transpose()?;
        config.spawn(receiver, status.clone(), restored.is_none());
        self.runtime
            .create_durable_sink(
                id,
                name.to_string(),
                view.id,
                sender,
                status.clone(),
                restored,
            )
            .await?;
        self.catalog.insert_sink(Arc::new(SinkEntry {
            id,
            name: name.to_string(),
            view: view.id,
            view_name: view.name.clone(),
            target,
            mode,
            status,
        }))?;
        Ok(StatementResult::Command("CREATE SINK".into()))
    }

    async fn drop_sinks(&self, names: &[String], if_exists: bool) -> Result<StatementResult> {
        let _ddl = self.ddl_lock.lock().await;
        // Check them all before dropping any.
        let mut sinks = Vec::with_capacity(names.len());
        for name in names {
            match self.catalog.sink(name) {
                Some(sink) => sinks.push(sink),
                None if if_exists => {}
                None => {
                    return Err(EddyError::UndefinedRelation(format!(
                        "sink \"{name}\" does not exist"
                    )))
                }
            }
        }
        for sink in sinks {
            self.remove_sink(&sink).await?;
        }
        Ok(StatementResult::Command("DROP SINK".into()))
    }

    /// Stops a sink, and drops the view it owns if it has one.
    async fn remove_sink(&self, sink: &SinkEntry) -> Result<()> {
        sink.status.mark_dropped();
        self.runtime.drop_sink(sink.id).await?;
        self.catalog.remove_sink(&sink.name);
        if let Some(Relation::View(view)) = self.catalog.by_id(sink.view) {
            if view.owner_sink.as_deref() == Some(sink.name.as_str()) {
                self.runtime.drop_view(view.id).await?;
                self.catalog.remove(&view.name);
            }
        }
        Ok(())
    }

    /// eddy's health as Prometheus text (for the HTTP endpoint).
    /// Everything eddy knows about its health now.
    pub async fn health(&self) -> Result<Health> {
        Health::gather(&self.runtime, &self.catalog, self.checkpoints.stats()).await
    }

    /// The health history (rates, the web page's charts).
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Takes one sample of the health into the monitor.
    pub async fn sample_health(&self) -> Result<()> {
        let health = self.health().await?;
        self.monitor.record(&health);
        Ok(())
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(crate::server::metrics::render(&self.health().await?))
    }

    fn sinks_batch(&self) -> Result<RecordBatch> {
        Ok(sinks_batch(
            &self.catalog.list_sinks(),
            self.runtime.published().epoch,
        )?)
    }

    async fn explain_view(&self, view: &CreateView) -> Result<StatementResult> {
        let (planned, _) = self.plan_view(view).await?;
        let mut lines = vec![format!("MaterializedView: {}", view.name)];
        lines.extend(
            planned
                .graph
                .explain()
                .into_iter()
                .map(|l| format!("  {l}")),
        );
        let batch = RecordBatch::try_new(
            explain_schema(),
            vec![Arc::new(StringArray::from(lines)) as ArrayRef],
        )?;
        Ok(rows(batch))
    }

    async fn write(
        &self,
        table_name: &str,
        kind: WriteKind,
        statement: &Statement,
        params: Vec<ScalarValue>,
    ) -> Result<StatementResult> {
        let table = match self.catalog.require(table_name)? {
            Relation::Table(t) => t,
            Relation::Source(s) => {
                return Err(EddyError::WrongObjectType(format!(
                    "cannot change source \"{}\": its rows come from its connector",
                    s.name
                )))
            }
            Relation::View(v) => {
                return Err(EddyError::WrongObjectType(format!(
                    "cannot change materialized view \"{}\"",
                    v.name
                )))
            }
        };
        if table.append_only && kind != WriteKind::Insert {
            return Err(crate::not_supported!(
                "table \"{}\" is append-only (WITH (append_only = true)): only INSERT is allowed",
                table.name
            ));
        }
        let statement = match &table.proctime {
            Some(clock) => leave_out_processing_time(statement, &table.schema, clock.column)?,
            None => statement.clone(),
        };
        // Plan and evaluate against the table as it is under the write lock.
        let _write = table.write_lock.lock().await;
        let state = self.query_state()?;
        let mut plan = self.plan(&state, &statement).await?;
        if !params.is_empty() {
            plan = plan.with_param_values(ParamValues::from(params))?;
        }
        let LogicalPlan::Dml(dml) = plan else {
            return Err(crate::internal!("{kind:?} did not plan as DML"));
        };
        let schema = table.schema.clone();
        let width = schema.fields().len();
        let (tag, change) = match (kind, &dml.op) {
            (WriteKind::Insert, WriteOp::Insert(_)) => {
                let mut new = collect_rows(&state, (*dml.input).clone(), &schema).await?;
                if let Some(clock) = &table.proctime {
                    new = clock.stamp(&new, &schema, clock.now())?;
                }
                let count = new.num_rows();
                let change = table.write(|data| data.insert(new))?;
                (format!("INSERT 0 {count}"), change)
            }
            (WriteKind::Delete, WriteOp::Delete) => {
                let old = collect_rows(&state, (*dml.input).clone(), &schema).await?;
                let count = old.num_rows();
                let change = table.write(|data| data.delete(old))?;
                (format!("DELETE {count}"), change)
            }
            (WriteKind::Update, WriteOp::Update) => {
                let LogicalPlan::Projection(projection) = dml.input.as_ref() else {
                    return Err(crate::internal!("UPDATE did not plan as a projection"));
                };
                // Evaluate the old and the new row side by side.
                let source = projection.input.as_ref().clone();
                let mut exprs: Vec<Expr> = source
                    .schema()
                    .columns()
                    .into_iter()
                    .take(width)
                    .map(Expr::Column)
                    .collect();
                exprs.extend(
                    projection
                        .expr
                        .iter()
                        .enumerate()
                        .map(|(i, e)| e.clone().unalias().alias(format!("__eddy_new_{i}"))),
                );
                let both = LogicalPlanBuilder::from(source).project(exprs)?.build()?;
                let batch = collect_batch(&state, both).await?;
                let old = conform(&batch.project(&(0..width).collect::<Vec<_>>())?, &schema)?;
                let mut new = conform(
                    &batch.project(&(width..2 * width).collect::<Vec<_>>())?,
                    &schema,
                )?;
                if let Some(clock) = &table.proctime {
                    new = clock.stamp(&new, &schema, clock.now())?;
                }
                let count = old.num_rows();
                let change = table.write(|data| data.update(old, new))?;
                (format!("UPDATE {count}"), change)
            }
            (kind, op) => return Err(crate::internal!("{kind:?} planned as {op}")),
        };
        let watermark = table
            .watermark
            .as_ref()
            .map(|w| w.observe(&change))
            .transpose()?
            .flatten();
        let rows = table.data().rows.clone();
        self.runtime
            .send_table_changes(table.id, change, watermark, rows)
            .await?;
        Ok(StatementResult::Command(tag))
    }

    async fn drop(
        &self,
        kind: RelationKind,
        names: &[String],
        if_exists: bool,
        cascade: bool,
    ) -> Result<StatementResult> {
        let _ddl = self.ddl_lock.lock().await;
        let tag = match kind {
            RelationKind::Table => "DROP TABLE",
            RelationKind::MaterializedView => "DROP MATERIALIZED VIEW",
            RelationKind::Source => "DROP SOURCE",
        };
        // Check everything before dropping anything.
        let mut targets = Vec::with_capacity(names.len());
        for name in names {
            match self.catalog.get(name) {
                None if if_exists => continue,
                None => {
                    return Err(EddyError::UndefinedRelation(format!(
                        "{} \"{name}\" does not exist",
                        kind.noun()
                    )))
                }
                Some(r) if r.kind() != kind => {
                    return Err(EddyError::WrongObjectType(format!(
                        "\"{name}\" is not a {}; use DROP {}",
                        kind.noun(),
                        r.kind().noun().to_uppercase()
                    )))
                }
                Some(r) => targets.push(r),
            }
        }
        for target in &targets {
            if let (false, Some(sink)) = (cascade, self.catalog.sinks_on(target.id()).first()) {
                return Err(EddyError::DependentObjects {
                    message: format!(
                        "cannot drop {} {} because other objects depend on it",
                        kind.noun(),
                        target.name()
                    ),
                    detail: format!(
                        "sink {} depends on {} {}",
                        sink.name,
                        kind.noun(),
                        target.name()
                    ),
                });
            }
            let dependents = self.catalog.dependents(target.id());
            if let (false, Some(first)) = (cascade, dependents.first()) {
                let dependent = match &first.owner_sink {
                    Some(sink) => format!("sink {sink}"),
                    None => format!("materialized view {}", first.name),
                };
                return Err(EddyError::DependentObjects {
                    message: format!(
                        "cannot drop {} {} because other objects depend on it",
                        kind.noun(),
                        target.name()
                    ),
                    detail: format!("{dependent} depends on {} {}", kind.noun(), target.name()),
                });
            }
        }
        for target in targets {
            self.drop_with_dependents(target).await?;
        }
        Ok(StatementResult::Command(tag.into()))
    }

    /// Drops `relation` and, first, every view that depends on it.
    async fn drop_with_dependents(&self, relation: Relation) -> Result<()> {
        let mut order = vec![relation];
        let mut i = 0;
        while i < order.len() {
            for dependent in self.catalog.dependents(order[i].id()) {
                if !order.iter().any(|r| r.id() == dependent.id) {
                    order.push(Relation::View(dependent));
                }
            }
            i += 1;
        }
        // Newest first: a view is dropped before the views it reads.
        order.sort_by_key(|r| std::cmp::Reverse(r.id()));
        for relation in order {
            for sink in self.catalog.sinks_on(relation.id()) {
                self.remove_sink(&sink).await?;
            }
            if self.catalog.get(relation.name()).is_none() {
                continue; // a sink's own view, gone with its sink
            }
            match &relation {
                Relation::Source(_) => {}
                Relation::View(v) => {
                    for reader in &v.source_readers {
                        reader.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.runtime.drop_view(v.id).await?
                }
                Relation::Table(t) => {
                    let _write = t.write_lock.lock().await;
                    self.runtime.forget_table(t.id).await?;
                }
            }
            self.catalog.remove(relation.name());
        }
        Ok(())
    }
}

/// Runs `plan` and returns its rows as one batch shaped like `schema`.
async fn collect_rows(
    state: &SessionState,
    plan: LogicalPlan,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    conform(&collect_batch(state, plan).await?, schema)
}

async fn collect_batch(state: &SessionState, plan: LogicalPlan) -> Result<RecordBatch> {
    let plan_schema = Arc::new(plan.schema().as_arrow().clone());
    let batches = DataFrame::new(state.clone(), plan).collect().await?;
    Ok(concat_batches(&plan_schema, &batches)?)
}

/// Casts the columns of `batch` to the types of `schema` and relabels them.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| Ok(cast(column, field.data_type())?))
        .collect::<Result<Vec<_>>>()?;
    let options =
        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    match RecordBatch::try_new_with_options(schema.clone(), columns.clone(), &options) {
        Ok(batch) => Ok(batch),
        // NULL in a NOT NULL column: the table reports it with Postgres' error.
        Err(_) => Ok(RecordBatch::try_new_with_options(
            all_nullable(schema),
            columns,
            &options,
        )?),
    }
}

/// The name, Arrow fields and primary-key column indices of a CREATE TABLE
/// (also used for the column list of CREATE SOURCE).
fn table_columns(create: &ast::CreateTable) -> Result<(String, Vec<Field>, Vec<usize>)> {
    let name = super::relation_name(&create.name)?;
    let mut primary_key: Vec<String> = Vec::new();
    let mut not_null: Vec<bool> = Vec::new();
    for column in &create.columns {
        let mut required = false;
        for option in &column.options {
            match &option.option {
                ast::ColumnOption::NotNull => required = true,
                ast::ColumnOption::Null => {}
                ast::ColumnOption::PrimaryKey(_) => {
                    required = true;
                    primary_key.push(normalize_ident(&column.name));
                }
                other => {
                    return Err(crate::not_supported!(
                        "column option {other} is not supported yet"
                    ))
                }
            }
        }
        not_null.push(required);
    }
    for constraint in &create.constraints {
        match constraint {
            ast::TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(EddyError::Planning {
                        sqlstate: "42P16",
                        message: format!(
                            "multiple primary keys for table \"{name}\" are not allowed"
                        ),
                    });
                }
                for column in &pk.columns {
                    match &column.column.expr {
                        ast::Expr::Identifier(ident) => primary_key.push(normalize_ident(ident)),
                        other => {
                            return Err(crate::not_supported!("primary key on expression {other}"))
                        }
                    }
                }
            }
            other => {
                return Err(crate::not_supported!(
                    "table constraint {other} is not supported yet"
                ))
            }
        }
    }
    let mut fields = Vec::with_capacity(create.columns.len());
    for (column, required) in create.columns.iter().zip(&not_null) {
        let column_name = normalize_ident(&column.name);
        if fields.iter().any(|f: &Field| f.name() == &column_name) {
            return Err(EddyError::Planning {
                sqlstate: "42701",
                message: format!("column \"{column_name}\" specified more than once"),
            });
        }
        let in_key = primary_key.contains(&column_name);
        fields.push(column_field(
            &column_name,
            &column.data_type,
            !(*required || in_key),
        )?);
    }
    let mut key_indices = Vec::with_capacity(primary_key.len());
    for key in &primary_key {
        let index = fields.iter().position(|f| f.name() == key).ok_or_else(|| {
            EddyError::UndefinedColumn(format!("column \"{key}\" named in key does not exist"))
        })?;
        key_indices.push(index);
    }
    Ok((name, fields, key_indices))
}

/// `WATERMARK FOR ts AS ts [- INTERVAL '...']` checked against the columns.
/// A checked sink of either kind.
enum SinkConfig {
    Postgres(Box<PostgresSinkConfig>),
    Kafka(KafkaSinkConfig),
}

impl SinkConfig {
    /// Checks at CREATE SINK that the target answers (and, for Postgres,
    /// that its table fits).
    /// A `fresh` sink starts its progress over; a restored one keeps it.
    async fn validate_target(&self, fresh: bool) -> Result<()> {
        match self {
            Self::Postgres(config) => postgres::validate_target(config, fresh).await,
            Self::Kafka(config) => kafka::sink::validate_target(config).await,
        }
    }

    fn target(&self) -> String {
        match self {
            Self::Postgres(config) => format!("{}.{}", config.table.0, config.table.1),
            Self::Kafka(config) => config.target(),
        }
    }

    fn mode(&self) -> SinkMode {
        match self {
            Self::Postgres(config) => config.mode,
            Self::Kafka(config) => config.mode(),
        }
    }

    fn spawn(
        self,
        epochs: tokio::sync::mpsc::Receiver<postgres::SinkEpoch>,
        status: Arc<SinkStatus>,
        fresh: bool,
    ) {
        match self {
            Self::Postgres(config) => postgres::spawn_sink(*config, epochs, status),
            Self::Kafka(config) => kafka::sink::spawn_sink(config, epochs, status, fresh),
        }
    }
}

/// A write to a table with a PROCTIME() column: INSERT without a column
/// list names the other columns (the stamp fills that one); naming it in
/// INSERT or UPDATE is refused.
fn leave_out_processing_time(
    statement: &Statement,
    schema: &SchemaRef,
    column: usize,
) -> Result<Statement> {
    let name = schema.field(column).name();
    let refuse = || {
        Err(EddyError::Planning {
            sqlstate: "428C9",
            message: format!(
                "column \"{name}\" is PROCTIME(): it is set to the time each row is written"
            ),
        })
    };
    let is_it = |object: &ast::ObjectName| {
        object
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| &normalize_ident(ident) == name)
    };
    let mut statement = statement.clone();
    match &mut statement {
        Statement::Insert(insert) if insert.columns.is_empty() => {
            insert.columns = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != column)
                .map(|(_, f)| ast::ObjectName::from(vec![ast::Ident::with_quote('"', f.name())]))
                .collect();
        }
        Statement::Insert(insert) if insert.columns.iter().any(is_it) => return refuse(),
        Statement::Update(update)
            if update.assignments.iter().any(|a| match &a.target {
                ast::AssignmentTarget::ColumnName(object) => is_it(object),
                ast::AssignmentTarget::Tuple(objects) => objects.iter().any(is_it),
            }) =>
        {
            return refuse()
        }
        _ => {}
    }
    Ok(statement)
}

/// The watermark and processing-time column a column list declares. A
/// `PROCTIME()` column without a WATERMARK clause gets the watermark: it
/// follows the processing time.
fn time_columns(
    time: &TimeColumns,
    schema: &SchemaRef,
) -> Result<(Option<TableWatermark>, Option<ProcessingTime>)> {
    let proctime = time
        .proctime
        .as_ref()
        .map(|column| {
            schema
                .index_of(column)
                .map(ProcessingTime::new)
                .map_err(|_| crate::internal!("PROCTIME() column {column} vanished"))
        })
        .transpose()?;
    let watermark = match (&time.watermark, &proctime) {
        (Some(clause), _) => Some(table_watermark(clause, schema.fields())?),
        (None, Some(clock)) => Some(TableWatermark::new(clock.column, 0)),
        (None, None) => None,
    };
    Ok((watermark, proctime))
}

/// Moves the watermark of a table whose watermark follows a PROCTIME()
/// column while no rows arrive, so processing-time windows close on time.
/// It takes the write lock, so its watermark is ordered with the writes.
fn spawn_processing_time_watermark(
    table: std::sync::Weak<TableEntry>,
    runtime: crate::runtime::RuntimeHandle,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::connectors::PROCESSING_TIME_HEARTBEAT).await;
            let Some(table) = table.upgrade() else {
                break; // dropped
            };
            let (Some(clock), Some(watermark)) = (&table.proctime, &table.watermark) else {
                break;
            };
            let _write = table.write_lock.lock().await;
            if let Some(moved) = watermark.advance_to(clock.now()) {
                let empty = ChangeBatch::inserts(RecordBatch::new_empty(table.schema.clone()));
                if runtime
                    .send_changes(table.id, empty, Some(moved))
                    .await
                    .is_err()
                {
                    break; // shutting down
                }
            }
        }
    });
}

fn table_watermark(
    clause: &WatermarkClause,
    fields: &[FieldRef],
) -> Result<crate::connectors::table::TableWatermark> {
    let column = fields
        .iter()
        .position(|f| f.name() == &clause.column)
        .ok_or_else(|| {
            EddyError::UndefinedColumn(format!(
                "watermark column \"{}\" does not exist",
                clause.column
            ))
        })?;
    if !matches!(fields[column].data_type(), DataType::Timestamp(_, _)) {
        return Err(EddyError::TypeMismatch(format!(
            "watermark column \"{}\" must be a timestamp, not {}",
            clause.column,
            fields[column].data_type()
        )));
    }
    let is_column = |e: &ast::Expr| matches!(e, ast::Expr::Identifier(i) if normalize_ident(i) == clause.column);
    let delay = match &clause.expression {
        e if is_column(e) => 0,
        ast::Expr::BinaryOp { left, op: ast::BinaryOperator::Minus, right } if is_column(left) => match right.as_ref() {
            ast::Expr::Interval(interval) => {
                let value = interval.value.to_string();
                let value = value.trim_matches('\'');
                let text = match &interval.leading_field {
                    Some(unit) => format!("{value} {unit}"),
                    None => value.to_string(),
                };
                super::types::interval_micros(&text)?
            }
            other => {
                return Err(EddyError::TypeMismatch(format!(
                    "the watermark delay must be an interval such as INTERVAL '5' SECOND, not {other}"
                )))
            }
        },
        other => {
            return Err(crate::not_supported!(
                "watermark expression {other}: use WATERMARK FOR {0} AS {0} - INTERVAL '...' (or AS {0})",
                clause.column
            ))
        }
    };
    if delay < 0 {
        return Err(EddyError::InvalidParameter(
            "the watermark delay must not be negative".into(),
        ));
    }
    Ok(crate::connectors::table::TableWatermark::new(column, delay))
}

/// `CREATE TABLE ... WITH (append_only = true)`.
fn table_append_only(options: &ast::CreateTableOptions) -> Result<bool> {
    let ast::CreateTableOptions::With(options) = options else {
        return match options {
            ast::CreateTableOptions::None => Ok(false),
            other => Err(crate::not_supported!("table options {other}")),
        };
    };
    let mut append_only = false;
    for option in options {
        match option {
            ast::SqlOption::KeyValue { key, value }
                if key.value.eq_ignore_ascii_case("append_only") =>
            {
                append_only = match value.to_string().trim_matches('\'').to_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(EddyError::InvalidParameter(format!(
                            "append_only must be true or false, not {other}"
                        )))
                    }
                };
            }
            other => return Err(crate::not_supported!("table option {other}")),
        }
    }
    Ok(append_only)
}

fn no_such_cursor(name: &str) -> EddyError {
    EddyError::Planning {
        sqlstate: "34000",
        message: format!("cursor \"{name}\" does not exist"),
    }
}

fn rows(batch: RecordBatch) -> StatementResult {
    StatementResult::Rows {
        schema: batch.schema(),
        batches: vec![batch],
    }
}

fn show_tables_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)]))
}

fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "QUERY PLAN",
        DataType::Utf8,
        false,
    )]))
}

fn show_variable_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}
