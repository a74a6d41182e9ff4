//! Lowering `Sort` with a fetch and `Limit` → `TopN`.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::logical_expr::logical_plan::{FetchType, SkipType};
use datafusion::logical_expr::{Limit, LogicalPlan, Sort, SortExpr};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalSortExpr;

use super::exprs::{arrow_schema, not_incremental, sort_exprs};
use super::properties::is_append_only;
use super::Lowering;
use crate::error::Result;
use crate::stream::graph::NodeIndex;
use crate::stream::over::{Numbering, OverOperator};

impl Lowering<'_> {
    /// `ORDER BY`, with or without a LIMIT folded into it.
    pub(super) fn sort(&mut self, sort: &Sort) -> Result<NodeIndex> {
        match sort.fetch {
            Some(limit) => self.top_n(&sort.input, Some(&sort.expr), 0, limit),
            // A view is a set of rows: an ORDER BY alone changes nothing
            // (order the SELECT that reads the view).
            None => self.node(&sort.input),
        }
    }

    /// `[ORDER BY ...] LIMIT n [OFFSET m]`.
    pub(super) fn limit(&mut self, limit: &Limit) -> Result<NodeIndex> {
        let offset = match limit.get_skip_type()? {
            SkipType::Literal(offset) => offset,
            SkipType::UnsupportedExpr => return Err(not_incremental("OFFSET of an expression")),
        };
        let fetch = match limit.get_fetch_type()? {
            FetchType::Literal(Some(fetch)) => fetch,
            FetchType::Literal(None) => return Err(not_incremental("OFFSET without LIMIT")),
            FetchType::UnsupportedExpr => return Err(not_incremental("LIMIT of an expression")),
        };
        match limit.input.as_ref() {
            LogicalPlan::Sort(sort) => self.top_n(&sort.input, Some(&sort.expr), offset, fetch),
            input => self.top_n(input, None, offset, fetch),
        }
    }

    /// `ORDER BY ... LIMIT` (or a bare LIMIT: ordered by the whole row, any
    /// `n` rows being a right answer).
    pub(super) fn top_n(
        &mut self,
        input: &LogicalPlan,
        order: Option<&[SortExpr]>,
        offset: usize,
        limit: usize,
    ) -> Result<NodeIndex> {
        let node = self.node(input)?;
        let schema = input.schema();
        let order_by = match order {
            Some(order) => sort_exprs(order, schema)?,
            None => (0..schema.fields().len())
                .map(|i| PhysicalSortExpr {
                    expr: Arc::new(Column::new(schema.field(i).name(), i)) as _,
                    options: SortOptions::default(),
                })
                .collect(),
        };
        let mut description = format!("TopN: limit {limit}");
        if offset > 0 {
            description.push_str(&format!(" offset {offset}"));
        }
        if let Some(order) = order {
            let order: Vec<String> = order.iter().map(|e| e.to_string()).collect();
            description.push_str(&format!(" order by {}", order.join(", ")));
        }
        let op = OverOperator::top_n(
            vec![],
            order_by,
            Numbering::Limit,
            offset,
            limit,
            arrow_schema(schema),
            arrow_schema(schema),
            description,
        )?
        .with_input_append_only(is_append_only(input, self.relation_is_append_only));
        Ok(self.graph.add(Box::new(op), vec![node]))
    }
}
