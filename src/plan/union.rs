//! Lowering `Union` (UNION ALL; DISTINCT arrives as an aggregate above
//! it) → `UnionAll`.

use datafusion::logical_expr::Union;

use super::exprs::arrow_schema;
use super::Lowering;
use crate::error::Result;
use crate::stream::graph::NodeIndex;
use crate::stream::union::UnionOperator;

impl Lowering<'_> {
    pub(super) fn union(&mut self, union: &Union) -> Result<NodeIndex> {
        let inputs = union
            .inputs
            .iter()
            .map(|i| self.node(i))
            .collect::<Result<Vec<_>>>()?;
        let op = UnionOperator::new(
            arrow_schema(&union.schema),
            inputs.len(),
            self.time.idle_timeout_micros,
        );
        Ok(self.graph.add(Box::new(op), inputs))
    }
}
