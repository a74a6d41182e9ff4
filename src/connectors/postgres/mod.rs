//! The Postgres sink: keeps a table in a real PostgreSQL equal to a
//! materialized view.
//!
//! The runtime hands the sink one [`SinkEpoch`](crate::runtime::sink::SinkEpoch) per completed checkpoint: the
//! view's changes in that epoch. The sink coalesces them per key (the last
//! state of a key wins; a key inserted and deleted within the epoch writes
//! nothing), then, in **one transaction**:
//!
//! 1. reads its row in `eddy_sink_progress` (`FOR UPDATE`); an epoch already
//!    recorded there is skipped, so a replayed epoch is never applied twice;
//! 2. binary-COPYs the upserted rows into a temporary staging table and
//!    applies them with `INSERT ... ON CONFLICT (key) DO UPDATE` (append-only
//!    sinks: plain INSERT);
//! 3. COPYs the deleted keys into a second staging table and `DELETE`s them;
//! 4. records the epoch in `eddy_sink_progress`.
//!
//! Errors that can pass (connection lost, server restarting, serialization
//! failures) are retried with exponential backoff, holding the epoch; the
//! bounded epoch channel then fills and backpressure reaches the runtime and
//! the writers. Other errors (table dropped, permission denied, a type that
//! no longer matches) put the sink into a visible failed state.

mod sink;

pub use sink::{reset_progress, spawn_sink, validate_target, PostgresSinkConfig};
