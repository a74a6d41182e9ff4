//! `t FOR SYSTEM_TIME AS OF PROCTIME()`: a relation read as a lookup table.
//!
//! The SQL layer rewrites the clause to the table function
//! `__eddy_lookup(t)` (sqlparser's Postgres dialect has no table
//! versioning). For an ad-hoc SELECT the provider reads the relation's
//! snapshot, as a plain reference would. In a materialized view the scan of
//! a [`LookupRelationProvider`] marks the side of a lookup join
//! (`stream::join`): each row of the other side is joined with the rows the
//! table holds when it arrives, and later table changes do not retract or
//! add results.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::RelationProvider;
use crate::error::EddyError;

/// The name of the table function the SQL layer rewrites the clause to.
pub const LOOKUP_FUNCTION: &str = "__eddy_lookup";

/// The table function, bound to the relations of one query's snapshot.
#[derive(Debug)]
pub struct LookupFunction {
    relations: Arc<HashMap<String, Arc<RelationProvider>>>,
}

impl LookupFunction {
    pub fn new(relations: Arc<HashMap<String, Arc<RelationProvider>>>) -> Self {
        Self { relations }
    }
}

impl TableFunctionImpl for LookupFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let name = match args.exprs() {
            [Expr::Column(column)] => column.name.clone(),
            _ => {
                return Err(DataFusionError::External(Box::new(EddyError::Syntax(
                    "FOR SYSTEM_TIME AS OF follows a table name".into(),
                ))))
            }
        };
        let relation = self.relations.get(&name).ok_or_else(|| {
            DataFusionError::External(Box::new(EddyError::UndefinedRelation(format!(
                "relation \"{name}\" does not exist"
            ))))
        })?;
        Ok(Arc::new(LookupRelationProvider {
            relation: relation.clone(),
        }))
    }
}

/// A relation read as of processing time.
#[derive(Debug)]
pub struct LookupRelationProvider {
    pub relation: Arc<RelationProvider>,
}

#[async_trait]
impl TableProvider for LookupRelationProvider {
    fn schema(&self) -> SchemaRef {
        self.relation.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.relation.scan(state, projection, filters, limit).await
    }
}
