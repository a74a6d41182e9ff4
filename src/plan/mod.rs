//! Lowering a DataFusion `LogicalPlan` into a streaming graph.
//!
//! The plan comes from DataFusion already analyzed (types coerced) and
//! optimized (`prepare.rs` runs before the optimizer). Each node becomes an
//! incremental operator of `crate::stream`; expressions become DataFusion
//! `PhysicalExpr`s evaluated over changelog batches. A node that cannot be
//! maintained incrementally is refused here, at CREATE time, with an error
//! that names the construct — never a view that silently differs from the
//! batch answer.
//!
//! One rule per operator kind, each an `impl Lowering` block in its own
//! file, called from `Lowering::node`:
//!
//! | logical node | rule | operator (`crate::stream`) |
//! |---|---|---|
//! | `TableScan` | `scan.rs` | `Scan` |
//! | `TableScan` of `TUMBLE` / `HOP` / `SESSION` | `window.rs` | `WindowAssign`, `SessionWindow` |
//! | `Projection` | `project.rs` | `Project` |
//! | `Filter` | `filter.rs` | `Filter`, `TemporalFilter` |
//! | `Aggregate` | `aggregate.rs` | `UpdatingAggregate`, `SessionWindowAggregate` |
//! | `Union` | `union.rs` | `UnionAll` |
//! | `Values`, `EmptyRelation` | `values.rs` | `Values` |
//! | `Join` | `join.rs` | `Join` |
//! | `Sort` (with fetch), `Limit` | `top_n.rs` | `TopN` |
//! | `Window` | `over.rs` | `TopN` per partition, `Over` |
//!
//! A new operator is one file in `stream/`, one rule file here (and its arm
//! in `Lowering::node`), and one `sql-tests/*.slt` file. Shared helpers:
//! `exprs.rs` (physical expressions, schemas) and `properties.rs` (what a
//! subtree is: append-only, keyed, windowed, ...).

mod aggregate;
mod exprs;
mod filter;
mod join;
mod over;
mod prepare;
mod project;
mod properties;
mod scan;
mod top_n;
mod union;
mod values;
mod window;

use std::collections::HashMap;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{Distinct, LogicalPlan};

use crate::catalog::RelationProvider;
use crate::common::RelationId;
use crate::error::{EddyError, Result};
use crate::stream::graph::{NodeIndex, StreamGraph};
use exprs::not_incremental;
pub use prepare::{check_deterministic, rewrite_temporal_filters};
pub use properties::{derive_key, is_append_only};

/// How a view treats event time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeOptions {
    /// Windows stay open this long after the watermark passes their end.
    pub allowed_lateness_micros: i64,
    /// `EMIT ON WINDOW CLOSE`.
    pub emit_on_window_close: bool,
    /// Inputs of a multi-input operator idle for this long do not hold its
    /// watermark back.
    pub idle_timeout_micros: Option<i64>,
    /// `WITH (allow_cross_join = true)`: a join without an equality
    /// condition between two unbounded inputs is accepted.
    pub allow_cross_join: bool,
}

/// A view's graph, and what it does with time.
pub struct Lowered {
    pub graph: StreamGraph,
    /// Each window table function: the relation and its time column.
    pub windows: Vec<(RelationId, String)>,
    /// Whether an aggregate groups by `window_end` (its state is bounded).
    pub windowed_aggregate: bool,
}

/// Lowers an optimized plan into a streaming graph whose root produces the
/// plan's result as a changelog.
/// `relation_is_append_only` says which inputs never retract (interval joins
/// free state only over those); keyed operators are split into `workers`
/// shards folded in parallel (`stream::shard`).
pub fn lower(
    plan: &LogicalPlan,
    time: TimeOptions,
    workers: usize,
    relation_is_append_only: &dyn Fn(&RelationProvider) -> bool,
) -> Result<Lowered> {
    let mut lowering = Lowering {
        relation_is_append_only,
        workers,
        graph: StreamGraph::new(),
        rank_limits: HashMap::new(),
        time,
        windows: vec![],
        windows_watermarked: true,
        windowed_aggregate: false,
    };
    lowering.node(plan)?;
    if time.emit_on_window_close && !lowering.windowed_aggregate {
        return Err(EddyError::NotIncremental(
            "EMIT ON WINDOW CLOSE needs an aggregate grouped by window_end of TUMBLE(...), HOP(...) or SESSION(...)".into(),
        ));
    }
    Ok(Lowered {
        graph: lowering.graph,
        windows: lowering.windows,
        windowed_aggregate: lowering.windowed_aggregate,
    })
}

/// The state of one lowering: the graph built so far and what the rules
/// tell each other (windows seen, rank limits noted by filters).
struct Lowering<'a> {
    relation_is_append_only: &'a dyn Fn(&RelationProvider) -> bool,
    /// Keyed operators are split into this many shards, folded in parallel.
    workers: usize,
    graph: StreamGraph,
    /// Upper bounds a filter put on a ranking window function's number
    /// (`rn <= 10`), by the address of the `Window` node computing it.
    rank_limits: HashMap<usize, usize>,
    time: TimeOptions,
    windows: Vec<(RelationId, String)>,
    /// Whether a watermark can reach every window's time column.
    windows_watermarked: bool,
    windowed_aggregate: bool,
}

impl Lowering<'_> {
    /// Lowers `plan` and its inputs; returns the node producing its result.
    fn node(&mut self, plan: &LogicalPlan) -> Result<NodeIndex> {
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan),
            LogicalPlan::Projection(projection) => self.projection(projection),
            LogicalPlan::Filter(filter) => self.filter(filter),
            LogicalPlan::Aggregate(aggregate) => self.aggregate(aggregate),
            LogicalPlan::Union(union) => self.union(union),
            LogicalPlan::Values(values) => self.values(values),
            LogicalPlan::EmptyRelation(empty) => self.empty_relation(empty),
            LogicalPlan::Join(join) => self.join(join),
            LogicalPlan::Sort(sort) => self.sort(sort),
            LogicalPlan::Limit(limit) => self.limit(limit),
            LogicalPlan::Window(window) => self.over(plan, window),
            // An alias names; it computes nothing.
            LogicalPlan::SubqueryAlias(alias) => self.node(&alias.input),
            LogicalPlan::Distinct(Distinct::On(_)) => Err(not_incremental("DISTINCT ON")),
            LogicalPlan::Unnest(_) => Err(not_incremental("UNNEST")),
            LogicalPlan::RecursiveQuery(_) => Err(not_incremental("WITH RECURSIVE")),
            other => Err(EddyError::NotIncremental(format!(
                "{} cannot be maintained incrementally yet",
                other.display()
            ))),
        }
    }
}

/// A view's streaming graph and the schema of the rows it maintains.
pub struct PlannedView {
    pub graph: StreamGraph,
    pub schema: SchemaRef,
    /// See [`derive_key`].
    pub key: Option<Vec<usize>>,
    /// See [`is_append_only`].
    pub append_only: bool,
}
