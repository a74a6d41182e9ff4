//! Expressions and schemas of the logical plan as the operators take them
//! (DataFusion `PhysicalExpr`s, Arrow schemas), and the refusal message.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, SortExpr};
use datafusion::physical_expr::{create_physical_expr, PhysicalSortExpr};
use datafusion::physical_plan::PhysicalExpr;

use crate::error::{EddyError, Result};

pub(super) fn physical_expr(expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    create_physical_expr(
        expr,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .map_err(|e| {
        let message = e.to_string();
        if message.contains("ubquer") {
            not_incremental("this subquery")
        } else {
            EddyError::from(e)
        }
    })
}

pub(super) fn physical_exprs(
    exprs: &[Expr],
    schema: &DFSchema,
) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    exprs.iter().map(|e| physical_expr(e, schema)).collect()
}

pub(super) fn arrow_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

pub(super) fn sort_exprs(order: &[SortExpr], schema: &DFSchema) -> Result<Vec<PhysicalSortExpr>> {
    order
        .iter()
        .map(|e| {
            Ok(PhysicalSortExpr {
                expr: physical_expr(&e.expr, schema)?,
                options: SortOptions {
                    descending: !e.asc,
                    nulls_first: e.nulls_first,
                },
            })
        })
        .collect()
}

pub(super) fn not_incremental(construct: &str) -> EddyError {
    EddyError::NotIncremental(format!(
        "{construct} is not supported in materialized views yet: eddy cannot maintain it incrementally"
    ))
}
