//! Sources and sinks. Each connector turns the outside world into changelogs
//! (or changelogs into the outside world).
//!
//! - `table`: tables written with INSERT/UPDATE/DELETE.

pub mod table;
