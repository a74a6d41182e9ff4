//! Lowering `Projection` → `Project`.

use datafusion::logical_expr::Projection;

use super::exprs::{arrow_schema, physical_exprs};
use super::Lowering;
use crate::error::Result;
use crate::stream::graph::NodeIndex;
use crate::stream::project::ProjectOperator;

impl Lowering<'_> {
    pub(super) fn projection(&mut self, projection: &Projection) -> Result<NodeIndex> {
        let input = self.node(&projection.input)?;
        let exprs = physical_exprs(&projection.expr, projection.input.schema())?;
        let op = ProjectOperator::new(exprs, arrow_schema(&projection.schema));
        Ok(self.graph.add(Box::new(op), vec![input]))
    }
}
