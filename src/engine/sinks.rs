//! Sinks: `CREATE SINK` checks its target before anything starts, then
//! attaches a sink task (Postgres or Kafka) to a view — a named one, or one
//! of its own for `CREATE SINK ... AS SELECT` — and `DROP SINK` stops it.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use super::{Engine, StatementResult};
use crate::catalog::{Relation, SinkEntry, ViewEntry};
use crate::connectors::kafka;
use crate::connectors::kafka::sink::KafkaSinkConfig;
use crate::connectors::postgres::{self, PostgresSinkConfig};
use crate::error::{EddyError, Result};
use crate::runtime::sink::{RestoredBacklog, SinkEpoch, SinkMode, SinkStatus};
use crate::runtime::{DurableSinkSpec, DURABLE_SINK_QUEUE_EPOCHS};
use crate::sql::connector::{CreateSink, SinkInput};
use crate::sql::CreateView;

/// How long CREATE SINK waits for its target to answer the checks.
const TARGET_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `work` on sink `name`'s target, or 08001 when the target has not
/// answered within [`TARGET_CHECK_TIMEOUT`].
async fn within_target_timeout(
    name: &str,
    work: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    tokio::time::timeout(TARGET_CHECK_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(EddyError::ConnectionFailure(format!(
                "the target of sink {name} did not answer within {} s",
                TARGET_CHECK_TIMEOUT.as_secs()
            )))
        })
}

/// A checked sink of either kind.
enum SinkConfig {
    Postgres(Box<PostgresSinkConfig>),
    Kafka(KafkaSinkConfig),
}

impl SinkConfig {
    /// Checks at CREATE SINK that the target answers (and, for Postgres,
    /// that its table fits). Changes nothing a running sink relies on.
    async fn validate_target(&self) -> Result<()> {
        match self {
            Self::Postgres(config) => postgres::validate_target(config).await,
            Self::Kafka(config) => kafka::sink::validate_target(config).await,
        }
    }

    /// A new sink starts from its first epoch whatever an old sink of its
    /// name left in the target (Postgres keeps progress per sink name).
    async fn start_over(&self) -> Result<()> {
        match self {
            Self::Postgres(config) => postgres::reset_progress(config).await,
            Self::Kafka(_) => Ok(()),
        }
    }

    /// The hosts and ports the sink connects to (a Unix socket counts as
    /// `localhost`).
    fn peers(&self) -> Vec<(String, u16)> {
        match self {
            Self::Postgres(config) => config.peers(),
            Self::Kafka(config) => config.brokers(),
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
        epochs: tokio::sync::mpsc::Receiver<SinkEpoch>,
        status: Arc<SinkStatus>,
        fresh: bool,
    ) {
        match self {
            Self::Postgres(config) => postgres::spawn_sink(*config, epochs, status),
            Self::Kafka(config) => kafka::sink::spawn_sink(config, epochs, status, fresh),
        }
    }
}

impl Engine {
    /// `CREATE SINK`. The target is checked before the DDL lock is taken
    /// (it may take up to [`TARGET_CHECK_TIMEOUT`], and checkpoints and
    /// other DDL must not wait for it); under the lock the input is
    /// resolved again and the sink attached.
    pub(super) async fn create_sink(&self, create: CreateSink) -> Result<StatementResult> {
        let exists = || match self.catalog.sink(&create.name) {
            None => Ok(false),
            Some(_) if create.if_not_exists => Ok(true),
            Some(_) => Err(EddyError::DuplicateRelation(format!(
                "sink \"{}\" already exists",
                create.name
            ))),
        };
        if exists()? {
            return Ok(StatementResult::Command("CREATE SINK".into()));
        }
        let config = self.sink_config(&create).await?;
        self.check_sink_target(&config, &create.name).await?;
        let _ddl = self.ddl_lock.lock().await;
        if exists()? {
            return Ok(StatementResult::Command("CREATE SINK".into()));
        }
        // Under the lock, once the name is ours (a sink of this name that
        // runs must keep its progress); the target answered just now.
        if !self.is_restoring() {
            within_target_timeout(&create.name, config.start_over()).await?;
        }
        let (view, config, owned) = self.sink_config_and_view(&create, true).await?;
        let view = view.ok_or_else(|| crate::internal!("sink input not started"))?;
        let result = self.attach_sink(&create.name, config, &view).await;
        if result.is_err() && owned {
            self.runtime.drop_view(view.id).await?;
            self.catalog.remove(&view.name);
        }
        result
    }

    /// The checked configuration of the sink `create` makes, for its
    /// input as it is now (nothing started).
    async fn sink_config(&self, create: &CreateSink) -> Result<SinkConfig> {
        let (_, config, _) = self.sink_config_and_view(create, false).await?;
        Ok(config)
    }

    /// The sink's configuration, the view it reads and whether the sink
    /// owns it: a named view, or, for `CREATE SINK ... AS SELECT`, one of
    /// its own, started when `start` (under the DDL lock; otherwise only
    /// planned, and no view is returned).
    async fn sink_config_and_view(
        &self,
        create: &CreateSink,
        start: bool,
    ) -> Result<(Option<Arc<ViewEntry>>, SinkConfig, bool)> {
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
        let options = self.resolve_secrets(&create.options)?;
        // The view the sink reads: a named one, or one of its own. Either
        // way, the target is checked before anything starts.
        let config_for = |schema: &SchemaRef, key: &Option<Vec<usize>>, append_only: bool| {
            if kafka {
                return Ok::<_, EddyError>(SinkConfig::Kafka(KafkaSinkConfig::from_options(
                    &create.name,
                    &options,
                    create.format.as_ref(),
                    schema.clone(),
                    key.clone(),
                    append_only,
                    &self.policy,
                )?));
            }
            let config = PostgresSinkConfig::from_options(
                &create.name,
                &options,
                schema.clone(),
                key.clone(),
            )?;
            Self::check_sink_mode(&config, append_only)?;
            Ok(SinkConfig::Postgres(Box::new(config)))
        };
        match &create.input {
            SinkInput::View(name) => match self.catalog.require(name)? {
                Relation::View(v) if v.owner_sink.is_none() => {
                    let config = config_for(&v.schema, &v.key, v.append_only)?;
                    Ok((Some(v), config, false))
                }
                _ => Err(EddyError::WrongObjectType(format!(
                    "\"{name}\" is not a materialized view; sinks read materialized views \
                     (or use CREATE SINK ... AS SELECT)"
                ))),
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
                if !start {
                    return Ok((None, config, true));
                }
                let view = self
                    .start_view(definition, planned, Some(create.name.clone()))
                    .await?;
                Ok((Some(view), config, true))
            }
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

    /// Checks a sink's target at CREATE SINK (within [`TARGET_CHECK_TIMEOUT`]:
    /// a target that accepts connections and never answers is an error,
    /// not a hang). When recovering, the target is not waited for at all: a
    /// target that is away or silent (Postgres restarting, a broker down, a
    /// frozen host) must not keep eddy from starting, and the restored sink
    /// connects and retries on its own.
    async fn check_sink_target(&self, config: &SinkConfig, name: &str) -> Result<()> {
        for (host, port) in config.peers() {
            self.policy
                .check_connect(&format!("sink {name}"), &host, port)
                .await?;
        }
        if self.is_restoring() {
            return Ok(());
        }
        within_target_timeout(name, config.validate_target()).await
    }

    /// Starts a checked sink on `view` and registers it.
    async fn attach_sink(
        &self,
        name: &str,
        config: SinkConfig,
        view: &Arc<ViewEntry>,
    ) -> Result<StatementResult> {
        let id = self.catalog.allocate_id();
        let status = SinkStatus::new(name);
        let (sender, receiver) = tokio::sync::mpsc::channel(DURABLE_SINK_QUEUE_EPOCHS);
        let (target, mode) = (config.target(), config.mode());
        let restored = self
            .take_restored(&format!("sink/{name}"))
            .map(|table| SinkEpoch::restore_all(view.schema.clone(), table.into_map()?))
            .transpose()?;
        if let Some(RestoredBacklog::GivenUp(reason)) = &restored {
            status.fail(reason.clone());
        }
        if restored.is_none() {
            status.created_at(self.runtime.published().epoch);
        }
        if let Some(counts) = self.take_restored(&format!("sink/{name}/counters")) {
            status.restore_counts(counts.into_map()?)?;
        }
        config.spawn(receiver, status.clone(), restored.is_none());
        self.runtime
            .create_durable_sink(DurableSinkSpec {
                id,
                name: name.to_string(),
                view: view.id,
                epochs: sender,
                status: status.clone(),
                restored,
                backlog_limit_bytes: self.sink_backlog_limit_bytes,
            })
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

    pub(super) async fn drop_sinks(
        &self,
        names: &[String],
        if_exists: bool,
    ) -> Result<StatementResult> {
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
    pub(super) async fn remove_sink(&self, sink: &SinkEntry) -> Result<()> {
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
}
