//! The engine: the coordinator at the heart of eddy. Every statement a
//! session sends ends here, already parsed by [`crate::sql`]; the engine
//! executes it against the catalog, the tables and the runtime.
//!
//! One file per statement family, each an `impl Engine` block:
//!
//! | file | statements |
//! |---|---|
//! | `query.rs` | SELECT, and the DataFusion session every read plans in |
//! | `tables.rs` | CREATE TABLE, INSERT / UPDATE / DELETE |
//! | `sources.rs` | CREATE SOURCE |
//! | `views.rs` | CREATE / EXPLAIN CREATE MATERIALIZED VIEW |
//! | `sinks.rs` | CREATE SINK, DROP SINK |
//! | `drop.rs` | DROP TABLE / MATERIALIZED VIEW / SOURCE |
//! | `subscribe.rs` | SUBSCRIBE |
//! | `cursors.rs` | DECLARE / FETCH / CLOSE subscription cursors |
//! | `checkpoint.rs` | FLUSH, CHECKPOINT, CREATE SNAPSHOT; recovery |
//! | `session.rs` | SET, SHOW variable, BEGIN / COMMIT / ROLLBACK |
//! | `show.rs` | SHOW TABLES / SOURCES / MATERIALIZED VIEWS / SINKS / JOBS |
//!
//! beside `health.rs` (the figures `/metrics`, the web page and the
//! `eddy_catalog` tables of `system.rs` show), `jobs.rs` (backfill progress)
//! and `columns.rs` (batches built a column at a time).
//!
//! Invariants: DDL is serialized by one lock, so name and dependency checks
//! hold until the change is made; DDL is acknowledged only after a
//! checkpoint made it durable; a write holds its table's write lock from
//! evaluating the change until the runtime has it, so changes reach views
//! in the order they were applied.

mod access;
mod checked_arithmetic;
mod checkpoint;
mod columns;
mod cursors;
mod drop;
mod guarded_functions;
pub mod health;
pub mod interrupt;
pub mod jobs;
mod jsonb;
mod postgres_operators;
mod query;
mod returning;
mod session;
mod show;
mod sinks;
mod sources;
pub mod subscribe;
mod system;
mod tables;
mod views;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionConfig;

use crate::catalog::secrets::SecretBox;
use crate::catalog::{Catalog, DdlKey, RelationKind};
use crate::connectors::policy::ConnectorPolicy;
use crate::error::{EddyError, Result};
use crate::runtime::checkpoint::Checkpointer;
use crate::runtime::RuntimeHandle;
use crate::sql::EddyStatement;
use crate::state::checkpoint::CheckpointStore;
use crate::state::wal::WriteAheadLog;
use checkpoint::Restoring;
use health::Monitor;
use jobs::BackfillWatch;
pub use session::Session;
pub use subscribe::{Subscription, SUBSCRIPTION_QUEUE_EPOCHS};

/// The result of one statement.
pub enum StatementResult {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A query's rows as it produces them (never built whole), stopped by
    /// `guard` (cancel, timeout, the client going away) between batches.
    Stream {
        schema: SchemaRef,
        stream: datafusion::execution::SendableRecordBatchStream,
        guard: interrupt::StatementGuard,
    },
    /// A command tag such as `INSERT 0 3` or `CREATE TABLE`.
    Command(String),
    /// A write's RETURNING rows, then its command tag.
    Returned {
        tag: String,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
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
    /// `then`, after telling the client `notices` (NOTICEs).
    Noticed {
        notices: Vec<String>,
        then: Box<StatementResult>,
    },
    /// DEALLOCATE / DISCARD ALL: the protocol's prepared statements named
    /// `statements` are gone (the handler removes them from the
    /// connection), answered with `tag`.
    Deallocated {
        statements: Vec<String>,
        tag: String,
    },
}

/// The memory ad hoc queries share, unless told otherwise.
pub const DEFAULT_QUERY_MEMORY_BYTES: usize = 2 << 30;

/// What a prepared statement will take and return.
#[derive(Debug, Clone)]
pub struct Description {
    pub parameters: Vec<Option<DataType>>,
    pub result: Option<SchemaRef>,
}

/// The coordinator: shared by every session, it owns the catalog and the
/// handle to the runtime, and executes statements against them.
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
    /// What connector options may reach (files, hosts).
    policy: ConnectorPolicy,
    /// A durable sink's backlog beyond this fails the sink.
    sink_backlog_limit_bytes: usize,
    /// Seals secrets for the DDL log (see `catalog::secrets`).
    secret_box: Arc<SecretBox>,
    /// Where table writes are made durable before they are acknowledged
    /// (`None`: checkpoints in memory, nothing is durable anyway).
    wal: Option<WriteAheadLog>,
    /// When the write-ahead log was last trimmed.
    wal_trimmed: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Engine {
    /// An engine whose checkpoints go to memory only (tests, benchmarks).
    pub fn new(runtime: RuntimeHandle) -> Self {
        Self::with_checkpoints(
            runtime,
            Arc::new(Checkpointer::new(
                // Tests and benchmarks: a temporary directory is there.
                CheckpointStore::in_memory().expect("a temporary directory for checkpoints"),
                crate::runtime::checkpoint::DEFAULT_CHECKPOINT_INTERVAL,
            )),
        )
    }

    pub fn with_checkpoints(runtime: RuntimeHandle, checkpoints: Arc<Checkpointer>) -> Self {
        let base_state = Self::base_state(DEFAULT_QUERY_MEMORY_BYTES);
        Self {
            catalog: Arc::new(Catalog::new()),
            runtime,
            base_state,
            ddl_lock: tokio::sync::Mutex::new(()),
            checkpoints,
            monitor: Arc::default(),
            restoring: std::sync::Mutex::new(None),
            workers: 1,
            policy: ConnectorPolicy::default(),
            sink_backlog_limit_bytes: crate::runtime::sink::SINK_BACKLOG_LIMIT_BYTES,
            secret_box: Arc::new(SecretBox::ephemeral().expect("the system's random numbers")),
            wal: None,
            wal_trimmed: std::sync::Mutex::new(None),
        }
    }

    /// Logs table writes to `wal` before acknowledging them.
    pub fn with_wal(mut self, wal: WriteAheadLog) -> Self {
        self.wal = Some(wal);
        self
    }

    /// The DataFusion session every query starts from: eddy's catalog
    /// names, and a memory pool of `query_memory_bytes` that all ad hoc
    /// queries share (a query over it spills where it can, else fails with
    /// 53200; the server and the views go on).
    fn base_state(query_memory_bytes: usize) -> SessionState {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema("eddy", "public")
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_limit(query_memory_bytes, 1.0)
            .build_arc()
            .expect("a memory-limited runtime environment");
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_analyzer_rule(Arc::new(checked_arithmetic::CheckIntegerOverflow::default()))
            .with_type_planner(Arc::new(postgres_operators::PostgresTypes))
            .build();
        state
            .register_expr_planner(Arc::new(postgres_operators::PostgresOperators))
            .expect("registering an expression planner cannot fail");
        state
    }

    /// Lets ad hoc queries use at most `bytes` of memory together.
    pub fn with_query_memory(mut self, bytes: usize) -> Self {
        self.base_state = Self::base_state(bytes);
        self
    }

    /// Fails a durable sink whose waiting epochs pass `bytes`.
    pub fn with_sink_backlog_limit(mut self, bytes: usize) -> Self {
        self.sink_backlog_limit_bytes = bytes;
        self
    }

    /// Splits the keyed operators of views planned from now on across
    /// `workers` threads (at least one).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Seals secrets with `secret_box` (its key outlives the process).
    pub fn with_secret_box(mut self, secret_box: SecretBox) -> Self {
        self.secret_box = Arc::new(secret_box);
        self
    }

    /// Checks connector options against `policy` from now on.
    pub fn with_connector_policy(mut self, policy: ConnectorPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn checkpoints(&self) -> &Arc<Checkpointer> {
        &self.checkpoints
    }

    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Records the statement that created a table, source, view or sink in
    /// the catalog's DDL log (what checkpoints replay), once it exists.
    fn record_ddl(&self, statement: &EddyStatement, sql: &str) -> Result<()> {
        let (sink, name) = match statement {
            EddyStatement::CreateTable(create, _) => {
                match crate::sql::relation_name(&create.name) {
                    Ok(name) => (false, name),
                    Err(_) => return Ok(()),
                }
            }
            EddyStatement::CreateSource { table, .. } => {
                match crate::sql::relation_name(&table.name) {
                    Ok(name) => (false, name),
                    Err(_) => return Ok(()),
                }
            }
            EddyStatement::CreateView(view) => (false, view.name.clone()),
            EddyStatement::CreateSink(sink) => (true, sink.name.clone()),
            _ => return Ok(()),
        };
        let exists = if sink {
            self.catalog.sink(&name).is_some()
        } else {
            self.catalog.get(&name).is_some()
        };
        if !exists {
            return Ok(());
        }
        // Secrets written in the clear go into sealed secrets; the log keeps
        // references to them.
        let (sql, secrets) = match statement {
            EddyStatement::CreateSink(_) | EddyStatement::CreateSource { .. } => {
                crate::sql::connector::seal_option_literals(sql, &name)?
            }
            _ => (sql.to_string(), vec![]),
        };
        for (secret, value) in secrets {
            self.create_secret(&secret, &value, false, false, true)
                .or_else(|_| self.create_secret(&secret, &value, false, false, false))?;
        }
        self.catalog.record_ddl(
            if sink {
                DdlKey::Sink(name)
            } else {
                DdlKey::Relation(name)
            },
            &sql,
        );
        Ok(())
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
                | EddyStatement::CreateRole { .. }
                | EddyStatement::AlterRole { .. }
                | EddyStatement::DropRole { .. }
                | EddyStatement::Grant { .. }
                | EddyStatement::CreateSecret { .. }
                | EddyStatement::DropSecret { .. }
        );
        let recorded = is_ddl.then(|| statement.clone());
        let result = self.execute(session, statement, params).await?;
        if let Some(statement) = recorded {
            self.record_ddl(&statement, sql)?;
            if !self.is_restoring() {
                self.checkpoint().await.map_err(|e| {
                    let tables = match &statement {
                        EddyStatement::CreateTable(..) => {
                            "; the table takes no writes until a checkpoint succeeds"
                        }
                        _ => "",
                    };
                    EddyError::Checkpoint(format!(
                        "the statement took effect but is not durable yet (a later checkpoint \
                         will make it so){tables}: {e}"
                    ))
                })?;
            }
            if let EddyStatement::CreateView(view) = &statement {
                if let (false, Some(watch)) =
                    (session.background_ddl(), self.backfill_watch(&view.name))
                {
                    return Ok(StatementResult::Backfilling {
                        watch,
                        then: Box::new(result),
                    });
                }
            }
        }
        Ok(result)
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
                let mut query = query.as_ref().clone();
                let returning = returning::take_returning(&mut query);
                let (plan, names) = self
                    .plan(&self.query_state()?, &query, session.user())
                    .await?;
                let types = plan.get_parameter_types()?;
                let mut parameters = vec![None; types.len()];
                for (name, field) in types {
                    let index: usize = name.trim_start_matches('$').parse().unwrap_or(0);
                    if (1..=parameters.len()).contains(&index) {
                        parameters[index - 1] = field;
                    }
                }
                let result = match (statement, returning) {
                    (EddyStatement::Query(_), _) => {
                        Some(names.apply(&Arc::new(plan.schema().as_arrow().clone())))
                    }
                    (EddyStatement::Write { table, .. }, Some(returning)) => {
                        Some(self.returning_schema(table, &returning).await?)
                    }
                    _ => None,
                };
                Description { parameters, result }
            }
            EddyStatement::ShowTables => none(Some(show::names_schema())),
            EddyStatement::ShowViews => none(Some(system::views_batch(&[])?.schema())),
            EddyStatement::ShowSinks => none(Some(self.sinks_batch()?.schema())),
            EddyStatement::ShowJobs => none(Some(jobs::jobs_batch(&self.catalog)?.schema())),
            EddyStatement::Fetch { cursor, .. } => {
                none(Some(Self::cursor_schema(&session.cursors, cursor)?))
            }
            EddyStatement::ExplainCreateView(_) => none(Some(views::explain_schema())),
            // COPY's columns come with its CopyOutResponse, not a description.
            EddyStatement::Subscribe { copy: true, .. } => none(None),
            EddyStatement::Subscribe { view, .. } => none(Some(self.subscription_schema(view)?)),
            EddyStatement::ShowVariable(name) => none(Some(session::show_variable_schema(name))),
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
        use EddyStatement as S;
        self.authorize(session, &statement)?;
        match statement {
            S::Query(query) => self.query(session, &query, params).await,
            S::Write {
                table,
                kind,
                statement,
            } => {
                session.note_write();
                self.write(session, &table, kind, &statement, params).await
            }
            S::CreateTable(create, time) => self.create_table(*create, &time).await,
            S::CreateSource {
                table,
                time,
                clauses,
            } => self.create_source(*table, &time, *clauses).await,
            S::CreateView(view) => self.create_view(*view).await,
            S::ExplainCreateView(view) => self.explain_view(&view).await,
            S::CreateSink(sink) => self.create_sink(*sink).await,
            S::Drop {
                kind,
                names,
                if_exists,
                cascade,
            } => self.drop(kind, &names, if_exists, cascade).await,
            S::DropSink { names, if_exists } => self.drop_sinks(&names, if_exists).await,
            S::Subscribe {
                view,
                snapshot,
                copy,
            } => {
                let stop = session.endless_statement_guard();
                self.subscribe_statement(stop, &view, snapshot, copy).await
            }
            S::DeclareCursor {
                name,
                view,
                snapshot,
            } => {
                self.declare_cursor(&mut session.cursors, name, &view, snapshot)
                    .await
            }
            S::Fetch {
                cursor,
                count,
                timeout_ms,
            } => Self::fetch(&mut session.cursors, &cursor, count, timeout_ms).await,
            S::Close(name) => Self::close_cursor(&mut session.cursors, name),
            S::Flush => self.flush().await,
            S::Checkpoint => self.checkpoint_statement().await,
            S::CreateSnapshot(name) => self.snapshot_statement(&name).await,
            S::Transaction(step) => Self::transaction(session, step),
            S::Deallocate(name) => session.deallocate(name),
            S::Discard { all, tag } => session.discard(all, tag),
            S::Set { name, value } => self.set(session, name, value),
            S::ShowVariable(name) => self.show_variable(session, &name),
            S::ShowTables => self.show_names(RelationKind::Table),
            S::ShowSources => self.show_names(RelationKind::Source),
            S::ShowViews => self.show_views().await,
            S::ShowSinks => self.show_sinks(),
            S::ShowJobs => self.show_jobs(),
            S::CreateRole {
                name,
                options,
                if_not_exists,
            } => self.create_role(&name, &options, if_not_exists),
            S::AlterRole { name, options } => self.alter_role(&name, &options),
            S::DropRole { names, if_exists } => self.drop_roles(&names, if_exists),
            S::Grant {
                privileges,
                on,
                roles,
                grant,
            } => self.grant(&privileges, &on, &roles, grant),
            S::CreateSecret {
                name,
                value,
                sealed,
                if_not_exists,
                replace,
            } => self.create_secret(&name, &value.0, sealed, if_not_exists, replace),
            S::DropSecret { name, if_exists } => self.drop_secret(&name, if_exists),
        }
    }
}
