//! `RETURNING` of INSERT, UPDATE and DELETE: the rows written (for
//! DELETE, the rows removed; for UPDATE, the new rows) run through the
//! RETURNING list as a query over just those rows, under the table's name
//! (or its alias), with PostgreSQL's output names. DataFusion plans the
//! DML without the list; the command tag stays `INSERT 0 n`, `UPDATE n`,
//! `DELETE n`. The list is evaluated before the write is applied, so an
//! error in it (a division by zero) leaves the table unchanged, as in
//! PostgreSQL.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::MemTable;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    FromTable, Ident, SelectItem, Statement, TableFactor, TableWithJoins,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::query::collect_batch;
use super::Engine;
use crate::error::{EddyError, Result};
use crate::sql::normalize_ident;
use crate::sql::output_names::name_like_postgres;

/// A write's RETURNING list and the name its rows go by.
#[derive(Debug, Clone)]
pub(super) struct Returning {
    items: Vec<SelectItem>,
    alias: Option<String>,
}

/// Takes the RETURNING list out of an INSERT, UPDATE or DELETE (and an
/// INSERT's alias, which only the list reads).
pub(super) fn take_returning(statement: &mut Statement) -> Option<Returning> {
    let alias_of = |table: &TableWithJoins| match &table.relation {
        TableFactor::Table {
            alias: Some(alias), ..
        } => Some(normalize_ident(&alias.name)),
        _ => None,
    };
    let (items, alias) = match statement {
        Statement::Insert(insert) => {
            // Only RETURNING reads an INSERT's alias; DataFusion refuses it.
            let alias = insert
                .table_alias
                .take()
                .map(|alias| normalize_ident(&alias.alias));
            (insert.returning.take()?, alias)
        }
        Statement::Update(update) => (update.returning.take()?, alias_of(&update.table)),
        Statement::Delete(delete) => {
            let alias = match &delete.from {
                FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => {
                    tables.first().and_then(alias_of)
                }
            };
            (delete.returning.take()?, alias)
        }
        _ => return None,
    };
    Some(Returning { items, alias })
}

impl Engine {
    /// The columns a write's RETURNING list gives (for Describe).
    pub(super) async fn returning_schema(
        &self,
        table: &str,
        returning: &Returning,
    ) -> Result<SchemaRef> {
        let schema = match self.catalog.require(table)? {
            crate::catalog::Relation::Table(t) => t.schema.clone(),
            _ => return Err(crate::not_supported!("RETURNING from \"{table}\"")),
        };
        let empty = RecordBatch::new_empty(crate::common::types::all_nullable(&schema));
        Ok(self.returning_rows(table, returning, empty).await?.0)
    }

    /// The RETURNING list evaluated over `rows` (rows of table `table`):
    /// the schema the client sees, and the rows.
    pub(super) async fn returning_rows(
        &self,
        table: &str,
        returning: &Returning,
        rows: RecordBatch,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let written = Arc::new(MemTable::try_new(rows.schema(), vec![vec![rows]])?);
        let public = Arc::new(MemorySchemaProvider::new());
        public.register_table(table.to_string(), written)?;
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema("public", public as Arc<dyn SchemaProvider>)?;
        let state = self.session_over(catalog)?;
        let quoted = |name: &str| Ident::with_quote('"', name).to_string();
        let items: Vec<String> = returning.items.iter().map(|i| i.to_string()).collect();
        let sql = format!(
            "SELECT {} FROM {} AS {}",
            items.join(", "),
            quoted(table),
            quoted(returning.alias.as_deref().unwrap_or(table))
        );
        let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, &sql)
            .map_err(|e| EddyError::Syntax(format!("RETURNING {}: {e}", items.join(", "))))?
            .remove(0);
        let names = name_like_postgres(&mut statement);
        let plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(statement)))
            .await?;
        let schema = names.apply(&Arc::new(plan.schema().as_arrow().clone()));
        let batch = collect_batch(&state, plan).await?;
        Ok((schema, vec![batch]))
    }
}
