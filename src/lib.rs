//! # eddy: a streaming SQL engine for materialized views
//!
//! Users connect with any Postgres client, create tables and sources
//! (Kafka, datagen, nexmark) and define
//! `CREATE MATERIALIZED VIEW ... AS SELECT`.
//! eddy keeps every view's result fresh **incrementally**: each change to an
//! input becomes a changelog and only that delta flows through the view's
//! operators.
//!
//! ```text
//!  psql ──pgwire──▶ server ──▶ engine::Engine ──▶ DataFusion (queries, planning)
//!                     sql (parse) ─┘   │   CREATE MATERIALIZED VIEW
//!                                      ▼
//!                      plan::lower (LogicalPlan ─▶ StreamGraph of stream::Operator)
//!                                      │
//!  INSERT/UPDATE/DELETE ─▶ connectors::table ─▶ ChangeBatch ─▶ runtime (one worker,
//!  Kafka, generators ──▶ connectors (readers) ─┘      bounded queue) ─▶ view state
//!                                      │  every epoch: all views published at once
//!                                      ▼
//!                      SELECT reads one consistent epoch (catalog::Catalog::snapshot)
//! ```
//!
//! The modules stand in layers, each using only those below it (enforced
//! by `tests/layering.rs`; docs/ARCHITECTURE.md has the map):
//!
//! - [`server`]: pgwire and HTTP;
//! - [`engine`]: the coordinator, one file per statement family;
//! - [`sql`]: parsing and SQL-level rewriting;
//! - [`plan`]: lowers DataFusion's optimized logical plan into a
//!   [`stream::graph::StreamGraph`], one rule per operator kind; refuses,
//!   naming the construct, what it cannot maintain incrementally;
//! - [`catalog`]: names, schemas, dependencies; per-query snapshots;
//! - [`connectors`]: tables, the Kafka source and sink, the Postgres sink,
//!   the datagen and nexmark sources;
//! - [`runtime`]: runs all graphs on one worker fed by a bounded channel;
//!   publishes view state per epoch; checkpoints are barriers through it;
//! - [`stream`]: the incremental operators (project, filter, union,
//!   updating aggregate, window and session assignment, temporal filter,
//!   joins, top-N and window functions);
//! - [`state`]: multisets of row-encoded rows with O(1) snapshots, keyed
//!   state, checkpoint files;
//! - [`common`]: the changelog ([`common::ChangeBatch`]: rows + signed
//!   weights), relation ids, SQL and Postgres types;
//! - [`mod@bench`]: the Nexmark harness of `eddy bench nexmark` and
//!   `cargo bench --bench nexmark`.
//!
//! Operator state lives in memory and is checkpointed (`state::checkpoint`);
//! a restart restores the latest checkpoint and replays sources from the
//! offsets it recorded.

pub mod bench;
pub mod catalog;
pub mod common;
pub mod connectors;
pub mod engine;
pub mod error;
pub mod plan;
pub mod runtime;
pub mod server;
pub mod sql;
pub mod state;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

pub use error::{EddyError, Result};

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where the Postgres protocol listens (port 0 picks one).
    pub listen: SocketAddr,
    /// Where the HTTP endpoint listens, if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// The HTTP address is a default, not the operator's choice: if it is
    /// taken, say so and run without the endpoint instead of failing (the
    /// Postgres port is what a user came for).
    pub http_listen_optional: bool,
    /// Where checkpoints go: a directory or an object store URL; `None`:
    /// memory only (nothing survives a restart).
    pub checkpoint_location: Option<String>,
    /// Time between periodic checkpoints (zero: only on DDL, FLUSH,
    /// CHECKPOINT and shutdown).
    pub checkpoint_interval: std::time::Duration,
    /// Start from this named snapshot instead of the latest checkpoint.
    pub from_snapshot: Option<String>,
    /// Threads a keyed operator (GROUP BY, equi-join) is split across, each
    /// folding the keys that hash to it. Default 1: on a small machine the
    /// source readers already take the other cores (see docs/operations.md).
    pub workers: usize,
    /// What connector options may reach on this machine (files, hosts).
    pub connector_policy: connectors::policy::ConnectorPolicy,
    /// How clients authenticate; `None`: `trust` when every listen address
    /// is loopback, `password` otherwise.
    pub auth: Option<server::AuthMode>,
    /// Listen beyond loopback with `trust` anyway.
    pub insecure: bool,
    /// The bootstrap superuser's password (from `EDDY_PASSWORD` or
    /// `--password-file`), set at start.
    pub superuser_password: Option<String>,
    /// The TLS certificate chain and key (PEM), for both protocols.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Limits every connection works within (the auth mode is taken from
    /// `auth` above).
    pub access: server::Access,
    /// The key file that seals secrets; `None`: beside a local checkpoint
    /// directory (`<dir>.secrets.key`), else a key for this process only.
    pub secrets_key_file: Option<std::path::PathBuf>,
    /// The memory all ad hoc queries share (over it: 53200).
    pub query_memory_bytes: usize,
    /// The memory eddy aims to stay within (`None`: no limit): state may
    /// hold [`state::memory::state_share`] of it before it spills to disk;
    /// see `state::memory`.
    pub memory_limit_bytes: Option<usize>,
    /// Where spilled state goes (emptied at start); `None`: a directory
    /// under the system's temporary directory.
    pub spill_dir: Option<std::path::PathBuf>,
    /// The write-ahead log's directory; `None`: beside a local checkpoint
    /// directory (`<dir>.wal`), else no log (with checkpoints in memory or
    /// in an object store and no `wal_dir`, writes are durable only at the
    /// next checkpoint).
    pub wal_dir: Option<std::path::PathBuf>,
    /// How much a durable sink may keep waiting for its target before it
    /// fails (see `runtime::sink::SinkBacklog`).
    pub sink_backlog_limit_bytes: usize,
}

impl ServerOptions {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            http_listen: None,
            http_listen_optional: false,
            checkpoint_location: None,
            checkpoint_interval: runtime::checkpoint::DEFAULT_CHECKPOINT_INTERVAL,
            from_snapshot: None,
            workers: 1,
            connector_policy: connectors::policy::ConnectorPolicy::default(),
            auth: None,
            insecure: false,
            superuser_password: None,
            tls: None,
            access: server::Access::default(),
            secrets_key_file: None,
            query_memory_bytes: engine::DEFAULT_QUERY_MEMORY_BYTES,
            memory_limit_bytes: None,
            spill_dir: None,
            wal_dir: None,
            sink_backlog_limit_bytes: runtime::sink::SINK_BACKLOG_LIMIT_BYTES,
        }
    }
}

/// A running eddy server (used by the binary and by tests).
pub struct Server {
    /// Where the Postgres protocol listens.
    pub local_addr: SocketAddr,
    /// Where the HTTP endpoint (`/metrics`) listens, if it does.
    pub http_addr: Option<SocketAddr>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    engine: Arc<engine::Engine>,
}

impl Server {
    /// Starts the runtime and listens on `listen` (port 0 picks one), with
    /// no HTTP endpoint.
    pub async fn start(listen: SocketAddr) -> Result<Server> {
        Self::start_with(listen, None).await
    }

    /// Starts the runtime, the Postgres protocol on `listen` and, when
    /// given, the HTTP endpoint on `http_listen` (port 0 picks one).
    pub async fn start_with(listen: SocketAddr, http_listen: Option<SocketAddr>) -> Result<Server> {
        let mut options = ServerOptions::new(listen);
        options.http_listen = http_listen;
        Self::start_with_options(options).await
    }

    /// Starts a server: recovers from the latest complete checkpoint (or
    /// the named snapshot) when there is one, then listens.
    pub async fn start_with_options(options: ServerOptions) -> Result<Server> {
        let ServerOptions {
            listen,
            http_listen,
            http_listen_optional,
            checkpoint_location,
            checkpoint_interval,
            from_snapshot,
            workers,
            connector_policy,
            auth,
            insecure,
            superuser_password,
            tls,
            mut access,
            secrets_key_file,
            query_memory_bytes,
            memory_limit_bytes,
            spill_dir,
            wal_dir,
            sink_backlog_limit_bytes,
        } = options;
        if let Some(dir) = &spill_dir {
            state::memory::set_scratch_root(dir)?;
        }
        let loopback = listen.ip().is_loopback();
        access.auth = auth.unwrap_or(if loopback {
            server::AuthMode::Trust
        } else {
            server::AuthMode::Password
        });
        if access.auth == server::AuthMode::Trust && !loopback && !insecure {
            return Err(EddyError::InvalidParameter(format!(
                "eddy will not listen on {listen} with --auth trust: anyone who can reach that \
                 address could connect as any role; use --auth scram (the default there), \
                 or add --insecure to accept it"
            )));
        }
        if access.require_tls && tls.is_none() {
            return Err(EddyError::InvalidParameter(
                "--require-tls needs a certificate: --tls-cert and --tls-key".into(),
            ));
        }
        let tls = tls
            .map(|(cert, key)| server::tls_acceptor(&cert, &key))
            .transpose()?;
        // Files a local checkpoint directory `dir` has beside it: `dir<suffix>`.
        let beside_checkpoints = |suffix: &str| {
            checkpoint_location
                .as_ref()
                .filter(|l| !l.contains("://"))
                .map(|l| std::path::PathBuf::from(format!("{}{suffix}", l.trim_end_matches('/'))))
        };
        let secret_box = match secrets_key_file.or_else(|| beside_checkpoints(".secrets.key")) {
            Some(path) => catalog::secrets::SecretBox::from_key_file(&path)?,
            None => catalog::secrets::SecretBox::ephemeral()?,
        };
        let store = match &checkpoint_location {
            Some(location) => state::checkpoint::CheckpointStore::open(location)?,
            None => state::checkpoint::CheckpointStore::in_memory()?,
        };
        let recovered = match &from_snapshot {
            Some(name) => Some(store.load_snapshot(name).await?),
            None => store.latest().await?,
        };
        let checkpoints = Arc::new(runtime::checkpoint::Checkpointer::new(
            store,
            checkpoint_interval,
        ));
        checkpoints.continue_numbering().await?;
        let wal_dir = wal_dir.or_else(|| beside_checkpoints(".wal"));
        // LSNs must stay above every position a checkpoint names, even if
        // the log's files are gone.
        let floor = recovered
            .as_ref()
            .and_then(|(m, _)| m.meta.table_lsns.values().max().copied())
            .unwrap_or(0);
        let (wal, mut wal_records) = match &wal_dir {
            Some(dir) => {
                let (wal, records) = state::wal::WriteAheadLog::open(dir, floor)?;
                (Some(wal), records)
            }
            None => (None, Vec::new()),
        };
        if let (Some(wal), Some(name)) = (&wal, &from_snapshot) {
            // A snapshot is a point to go back to: the writes logged after
            // it belong to the abandoned present.
            if !wal_records.is_empty() {
                tracing::warn!(
                    snapshot = %name,
                    records = wal_records.len(),
                    "starting from a snapshot: the write-ahead log's records are discarded"
                );
            }
            wal_records.clear();
            wal.retain(Box::new(|_, _| false)).await?;
        }
        let state_limit = memory_limit_bytes.map(state::memory::state_share);
        let runtime = runtime::RuntimeHandle::start_with_memory_limit(state_limit)?;
        let mut engine = engine::Engine::with_checkpoints(runtime, checkpoints.clone())
            .with_workers(workers)
            .with_connector_policy(connector_policy)
            .with_secret_box(secret_box)
            .with_query_memory(query_memory_bytes)
            .with_sink_backlog_limit(sink_backlog_limit_bytes);
        if let Some(wal) = wal {
            engine = engine.with_wal(wal);
        }
        let engine = Arc::new(engine);
        match recovered {
            Some((manifest, restored)) => engine.recover(manifest, restored, wal_records).await?,
            None if !wal_records.is_empty() => tracing::warn!(
                records = wal_records.len(),
                "the write-ahead log holds records but there is no checkpoint to apply them to"
            ),
            None => {}
        }
        if let Some(password) = &superuser_password {
            engine.set_superuser_password(password)?;
            engine.checkpoint().await?;
        }
        let superuser = engine
            .catalog()
            .role(catalog::roles::BOOTSTRAP_SUPERUSER)
            .ok_or_else(|| internal!("the bootstrap superuser is gone"))?;
        if access.auth == server::AuthMode::Password && superuser.password.is_none() {
            return Err(EddyError::InvalidParameter(format!(
                "--auth scram needs a password for the superuser {}: set EDDY_PASSWORD or \
                 --password-file",
                catalog::roles::BOOTSTRAP_SUPERUSER
            )));
        }
        spawn_periodic_checkpoints(Arc::downgrade(&engine));
        spawn_health_sampler(Arc::downgrade(&engine));
        let cannot_listen = |addr: SocketAddr, e: std::io::Error| {
            EddyError::InvalidParameter(format!("cannot listen on {addr}: {e}"))
        };
        let listener = server::bind(listen)
            .await
            .map_err(|e| cannot_listen(listen, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| internal!("no local address: {e}"))?;
        let http = match http_listen {
            Some(addr) => match server::http::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(e) if http_listen_optional => {
                    tracing::warn!(
                        "no web page or /metrics: cannot listen on {addr}: {e}; choose another \
                         address with --http-listen or turn the endpoint off with --no-http"
                    );
                    None
                }
                Err(e) => return Err(cannot_listen(addr, e)),
            },
            None => None,
        };
        let http_addr = http
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| internal!("no local address: {e}"))?;
        let (shutdown, stopped) = tokio::sync::watch::channel(false);
        let stopped_http = stopped.clone();
        let http_access = server::http::HttpAccess {
            tls: tls.clone(),
            // Beyond loopback the page and /metrics need a role's password.
            password: http_addr.is_some_and(|a| !a.ip().is_loopback()),
        };
        let task = tokio::spawn(server::serve(
            engine.clone(),
            listener,
            access,
            tls,
            stopped,
        ));
        let http_task = http.map(|listener| {
            tokio::spawn(server::http::serve(
                engine.clone(),
                listener,
                http_access,
                async move {
                    let mut stopped = stopped_http;
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        });
        Ok(Server {
            local_addr,
            http_addr,
            shutdown,
            task,
            http_task,
            engine,
        })
    }

    /// Checkpoint figures since start.
    pub fn checkpoint_stats(&self) -> runtime::checkpoint::CheckpointStats {
        self.engine.checkpoints().stats()
    }

    /// Stops accepting connections, waits for the listeners to close, and
    /// takes a final checkpoint (a restart resumes exactly there).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(task) = self.http_task {
            let _ = task.await;
        }
        match self.engine.checkpoint().await {
            Ok(manifest) => tracing::info!(
                checkpoint = manifest.id,
                epoch = manifest.epoch,
                "final checkpoint taken"
            ),
            Err(e) => tracing::error!(error = %e, "final checkpoint failed"),
        }
        self.engine.checkpoints().close().await;
    }
}

/// Samples the health into the engine's monitor once a second (rates and
/// the web page's charts); ends when the engine is gone.
fn spawn_health_sampler(engine: std::sync::Weak<engine::Engine>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(engine::health::SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if let Err(e) = engine.sample_health().await {
                tracing::debug!(error = %e, "health sample");
            }
        }
    });
}

/// Takes a checkpoint every `checkpoint_interval` while something changed
/// since the last one; ends when the engine is gone.
fn spawn_periodic_checkpoints(engine: std::sync::Weak<engine::Engine>) {
    tokio::spawn(async move {
        loop {
            let interval = match engine.upgrade() {
                Some(engine) => engine.checkpoints().interval(),
                None => return,
            };
            let idle = interval.is_zero();
            tokio::time::sleep(if idle {
                std::time::Duration::from_millis(200)
            } else {
                interval
            })
            .await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if engine.checkpoints().is_closed() {
                return;
            }
            if idle {
                continue;
            }
            let published = engine.runtime().published().epoch;
            if engine.checkpoints().last_epoch().await == Some(published) {
                continue; // nothing changed since
            }
            if let Err(e) = engine.checkpoint().await {
                tracing::warn!(error = %e, "periodic checkpoint failed; will retry");
            }
        }
    });
}
