//! # eddy: a streaming SQL engine for materialized views
//!
//! Users connect with any Postgres client, create tables and generated
//! sources (datagen, nexmark; Kafka later) and define
//! `CREATE MATERIALIZED VIEW ... AS SELECT`.
//! eddy keeps every view's result fresh **incrementally**: each change to an
//! input becomes a changelog and only that delta flows through the view's
//! operators.
//!
//! ```text
//!  psql ──pgwire──▶ server ──▶ sql::execute::Engine ──▶ DataFusion (queries, planning)
//!                                   │   CREATE MATERIALIZED VIEW
//!                                   ▼
//!                      plan::lower (LogicalPlan ─▶ StreamGraph of stream::Operator)
//!                                   │
//!  INSERT/UPDATE/DELETE ─▶ connectors::table ─▶ ChangeBatch ─▶ runtime (one worker,
//!                                   bounded queue) ─▶ view state (state::RowSet)
//!                                   │  every epoch: all views published at once
//!                                   ▼
//!                      SELECT reads one consistent epoch (catalog::snapshot)
//! ```
//!
//! - [`stream`]: the changelog ([`stream::ChangeBatch`]: rows + signed weights)
//!   and the incremental operators (project, filter, union, updating aggregate,
//!   window and session assignment, temporal filter).
//! - [`plan`]: lowers DataFusion's optimized logical plan into a
//!   [`stream::graph::StreamGraph`]; refuses, naming the construct, what it
//!   cannot maintain incrementally.
//! - [`runtime`]: runs all graphs on one worker fed by a bounded channel;
//!   publishes view state per epoch; `FLUSH` is a barrier through it.
//! - [`state`]: multisets of row-encoded rows with O(1) snapshots.
//! - [`catalog`]: names, schemas, dependencies; per-query snapshots.
//! - [`connectors`]: tables, the Postgres sink, the datagen and nexmark
//!   sources (Kafka to come).
//! - [`sql`]: statement parsing and execution; [`server`]: pgwire.
//!
//! State lives in memory: until checkpoints land, a restart starts empty.

pub mod catalog;
pub mod connectors;
pub mod error;
pub mod pg_types;
pub mod plan;
pub mod runtime;
pub mod server;
pub mod sql;
pub mod state;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

pub use error::{EddyError, Result};

/// A running eddy server (used by the binary and by tests).
pub struct Server {
    pub local_addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Starts the runtime and listens on `listen` (port 0 picks one).
    pub async fn start(listen: SocketAddr) -> Result<Server> {
        let runtime = runtime::RuntimeHandle::start()?;
        let engine = Arc::new(sql::execute::Engine::new(runtime));
        let listener = server::bind(listen)
            .await
            .map_err(|e| EddyError::InvalidParameter(format!("cannot listen on {listen}: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| internal!("no local address: {e}"))?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(engine, listener, async {
            let _ = stopped.await;
        }));
        Ok(Server {
            local_addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting connections and waits for the listener to close.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}
