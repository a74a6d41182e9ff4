//! Queries: every SELECT (and the evaluation under DML) runs in DataFusion
//! over one consistent snapshot — tables as of now, every view as of the
//! last published epoch — with eddy's schemas (`public`, `eddy_catalog`,
//! `information_schema`, `pg_catalog`) and table functions (`TUMBLE`,
//! `HOP`, `SESSION`, lookups) registered.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;

use super::session::Session;
use super::system::SystemSchema;
use super::{Engine, StatementResult};
use crate::catalog::window::{WindowFunction, WindowKind};
use crate::common::types::all_nullable;
use crate::error::{EddyError, Result};
use crate::sql::output_names::{name_like_postgres, OutputNames};

/// Runs `plan` and returns its rows as one batch shaped like `schema`.
pub(super) async fn collect_rows(
    state: &SessionState,
    plan: LogicalPlan,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    conform(&collect_batch(state, plan).await?, schema)
}

pub(super) async fn collect_batch(state: &SessionState, plan: LogicalPlan) -> Result<RecordBatch> {
    let plan_schema = Arc::new(plan.schema().as_arrow().clone());
    let batches = DataFrame::new(state.clone(), plan).collect().await?;
    Ok(concat_batches(&plan_schema, &batches)?)
}

/// Casts the columns of `batch` to the types of `schema` and relabels them.
pub(super) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| Ok(cast(column, field.data_type())?))
        .collect::<Result<Vec<_>>>()?;
    let options =
        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    match RecordBatch::try_new_with_options(schema.clone(), columns.clone(), &options) {
        Ok(batch) => Ok(batch),
        // NULL in a NOT NULL column: the table reports it with Postgres' error.
        Err(_) => Ok(RecordBatch::try_new_with_options(
            all_nullable(schema),
            columns,
            &options,
        )?),
    }
}

/// eddy's functions in place of DataFusion's (guarded against huge
/// results, checked for overflow) and PostgreSQL's operators' functions.
fn register_functions(state: &mut SessionState) -> Result<()> {
    super::guarded_functions::register(state)?;
    super::checked_arithmetic::register(state)?;
    super::postgres_operators::register(state)?;
    Ok(())
}

impl Engine {
    /// A DataFusion session over one consistent snapshot: tables as of now,
    /// all views as of the last completed epoch.
    pub(super) fn query_state(&self) -> Result<SessionState> {
        let epoch = self.runtime.published();
        let public = Arc::new(MemorySchemaProvider::new());
        let mut relations = HashMap::new();
        for relation in self.catalog.snapshot(&epoch) {
            let relation = Arc::new(relation);
            relations.insert(relation.name.clone(), relation.clone());
            public.register_table(relation.name.clone(), relation)?;
        }
        let relations = Arc::new(relations);
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema("public", public)?;
        catalog.register_schema(
            "eddy_catalog",
            Arc::new(SystemSchema::new(
                self.runtime.clone(),
                self.catalog.clone(),
                self.checkpoints.stats(),
                self.monitor.clone(),
            )),
        )?;
        let listed = self.catalog.list();
        catalog.register_schema(
            "information_schema",
            crate::catalog::information_schema::information_schema(&listed)?,
        )?;
        let pg_catalog = crate::catalog::pg_catalog::pg_catalog(&listed, &self.catalog.roles())?;
        catalog.register_schema("pg_catalog", pg_catalog.schema.clone())?;
        let mut state = self.session_over(catalog)?;
        pg_catalog.register_functions(&mut state)?;
        // DataFusion looks table functions up by the name as written.
        for (name, kind) in [
            ("tumble", WindowKind::Tumble),
            ("hop", WindowKind::Hop),
            ("session", WindowKind::Session),
        ] {
            let function = Arc::new(WindowFunction::new(kind, relations.clone()));
            state.register_udtf(name, function.clone());
            state.register_udtf(&name.to_uppercase(), function);
        }
        state.register_udtf(
            crate::catalog::lookup::LOOKUP_FUNCTION,
            Arc::new(crate::catalog::lookup::LookupFunction::new(
                relations.clone(),
            )),
        );
        Ok(state)
    }

    /// A session whose catalog `eddy` is `catalog`, with eddy's functions,
    /// its clock set to now (`now()` and friends read the statement's start
    /// time).
    pub(super) fn session_over(&self, catalog: Arc<MemoryCatalogProvider>) -> Result<SessionState> {
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog("eddy".into(), catalog as Arc<dyn CatalogProvider>);
        let mut state = SessionStateBuilder::new_from_existing(self.base_state.clone())
            .with_catalog_list(catalogs as Arc<dyn CatalogProviderList>)
            .build();
        state.mark_start_execution();
        register_functions(&mut state)?;
        Ok(state)
    }

    /// Plans `statement` for a session of role `user` (`current_user`),
    /// with PostgreSQL's output column names: the plan's schema names
    /// repeated columns apart, the returned names show them alike.
    pub(super) async fn plan(
        &self,
        state: &SessionState,
        statement: &Statement,
        user: &str,
    ) -> Result<(LogicalPlan, OutputNames)> {
        let mut statement = statement.clone();
        crate::catalog::pg_catalog::rewrite_regclass(&mut statement, &self.catalog, user)?;
        let names = name_like_postgres(&mut statement);
        let plan = state
            .statement_to_plan(DFStatement::Statement(Box::new(statement)))
            .await?;
        Ok((plan, names))
    }

    /// A query: planned, checked against the role's privileges and run,
    /// its rows streamed; all of it stops on cancel, timeout or the
    /// client's going away.
    pub(super) async fn query(
        &self,
        session: &Session,
        statement: &Statement,
        params: Vec<ScalarValue>,
    ) -> Result<StatementResult> {
        let guard = session.statement_guard();
        let run = async {
            let state = self.query_state()?;
            let mut statement = statement.clone();
            crate::catalog::pg_catalog::inline_regclass_parameters(&mut statement, &params);
            let (mut plan, names) = self.plan(&state, &statement, session.user()).await?;
            self.authorize_plan(session, &plan, None)?;
            if !params.is_empty() {
                plan = plan.with_param_values(ParamValues::from(params))?;
            }
            let schema = names.apply(&Arc::new(plan.schema().as_arrow().clone()));
            let stream = DataFrame::new(state, plan).execute_stream().await?;
            Ok(StatementResult::Stream {
                schema,
                stream,
                guard: guard.clone(),
            })
        };
        match guard.run(run).await {
            // A catalog query DataFusion cannot plan, over catalog tables
            // eddy keeps empty: its answer is no rows.
            Err(e)
                if !matches!(
                    e,
                    EddyError::QueryCanceled(_) | EddyError::InsufficientPrivilege(_)
                ) =>
            {
                match crate::catalog::pg_catalog::provably_empty(statement) {
                    Some(schema) => Ok(StatementResult::Rows {
                        schema,
                        batches: vec![],
                    }),
                    None => Err(e),
                }
            }
            result => result,
        }
    }
}
