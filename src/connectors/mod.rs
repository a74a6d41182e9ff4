//! Sources and sinks. Each connector turns the outside world into changelogs
//! (or changelogs into the outside world).
//!
//! - `table`: tables written with INSERT/UPDATE/DELETE.
//! - `postgres`: a sink that upserts a view into a real PostgreSQL table.
//! - `datagen`: a source of generated rows at a set rate.

pub mod datagen;
pub mod postgres;
pub mod table;
