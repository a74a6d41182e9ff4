//! Lowering `Filter` → `Filter` and `TemporalFilter`.

use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, Filter};

use super::exprs::{arrow_schema, physical_expr};
use super::prepare::temporal_marker_args;
use super::Lowering;
use crate::error::Result;
use crate::stream::filter::FilterOperator;
use crate::stream::graph::NodeIndex;
use crate::stream::temporal::TemporalFilterOperator;

impl Lowering<'_> {
    /// A WHERE clause: its plain conjuncts as one `Filter`, each temporal
    /// bound (`ts > now() - INTERVAL ...`, `ts <= now() + INTERVAL ...`,
    /// marked by [`super::prepare`]) as a `TemporalFilter` above it.
    pub(super) fn filter(&mut self, filter: &Filter) -> Result<NodeIndex> {
        self.note_rank_limits(filter);
        let mut node = self.node(&filter.input)?;
        let (temporal, plain): (Vec<&Expr>, Vec<&Expr>) = split_conjunction(&filter.predicate)
            .into_iter()
            .partition(|e| temporal_marker_args(e).is_some());
        if let Some(predicate) = conjunction(plain.into_iter().cloned()) {
            let predicate = physical_expr(&predicate, filter.input.schema())?;
            node = self
                .graph
                .add(Box::new(FilterOperator::new(predicate)), vec![node]);
        }
        for marker in temporal {
            let Some((column, offset, inclusive, side)) = temporal_marker_args(marker) else {
                continue;
            };
            let time = physical_expr(column, filter.input.schema())?;
            let schema = arrow_schema(filter.input.schema());
            let op = TemporalFilterOperator::try_new(time, side, offset, inclusive, schema)?;
            node = self.graph.add(Box::new(op), vec![node]);
        }
        Ok(node)
    }
}
