//! The floor every other module stands on: the types they all share and
//! nothing that knows about any of them.
//!
//! - [`changelog`]: [`ChangeBatch`], the rows + signed weights that flow
//!   between sources, operators, views and sinks;
//! - [`types`]: SQL column types and their Arrow representation;
//! - [`jsonb`]: jsonb values written as PostgreSQL writes them;
//! - [`pg_types`]: Arrow values as Postgres values (wire protocol and COPY);
//! - [`time`]: timestamp and interval literals as microseconds;
//! - [`recent`]: a bounded list of recent errors with their total count.
//!
//! Invariant: `common` imports nothing from the rest of eddy but
//! [`crate::error`].

pub mod changelog;
pub mod jsonb;
pub mod pg_types;
pub mod recent;
pub mod time;
pub mod types;

pub use changelog::ChangeBatch;

/// A table's, view's, source's (or a source reader's) id. Ids are never
/// reused, so a change in flight for a dropped relation can never reach a
/// new one of the same name.
pub type RelationId = u64;

/// The stack of every thread that plans statements or evaluates their
/// expressions (the server's async workers, the runtime thread, shard
/// threads). Trees of expressions recurse once per level in places eddy
/// does not control (sqlparser's `Clone` and `Drop`, expression
/// evaluation); `sql::limits` keeps statements many times below what this
/// takes. Only the pages a thread touches are ever committed.
pub const DEEP_STACK_BYTES: usize = 64 << 20;
