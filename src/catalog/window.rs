//! `TUMBLE(relation, time_column, size [, offset])`,
//! `HOP(relation, time_column, slide, size)` and
//! `SESSION(relation, time_column, gap [, key_column ...])`: window table
//! functions that add `window_start` and `window_end` to a relation.
//!
//! For an ad-hoc SELECT the provider computes the windows over the
//! relation's snapshot (batch semantics: every row). In a materialized view,
//! `plan::lower` turns the scan of a [`WindowedRelationProvider`] into a scan
//! of the relation followed by a `WindowAssign` operator, which assigns the
//! same windows (`stream::window::assign`) and drops late changes; a
//! session window becomes a `SessionWindow` operator (`stream::session`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::RelationProvider;
use crate::common::time::scalar_interval_micros;
use crate::error::EddyError;
use crate::stream::session::assign_sessions;
use crate::stream::window::{assign, windowed_schema, WindowSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble,
    Hop,
    Session,
}

/// How rows are given windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Windowing {
    /// TUMBLE and HOP: a row's windows depend on its time alone.
    Fixed(WindowSpec),
    /// SESSION: rows of a key closer than `gap` (µs) share a window.
    Session { gap: i64, key_columns: Vec<usize> },
}

/// The table function, bound to the relations of one query's snapshot.
#[derive(Debug)]
pub struct WindowFunction {
    kind: WindowKind,
    relations: Arc<HashMap<String, Arc<RelationProvider>>>,
}

impl WindowFunction {
    pub fn new(kind: WindowKind, relations: Arc<HashMap<String, Arc<RelationProvider>>>) -> Self {
        Self { kind, relations }
    }
}

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::External(Box::new(EddyError::InvalidParameter(message)))
}

fn interval_argument(name: &str, expr: &Expr) -> DFResult<i64> {
    let Expr::Literal(value, _) = expr else {
        return Err(plan_error(format!(
            "{name} must be an interval literal such as INTERVAL '10' SECOND, not {expr}"
        )));
    };
    scalar_interval_micros(value).map_err(|e| plan_error(format!("{name}: {e}")))
}

impl TableFunctionImpl for WindowFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let function = match self.kind {
            WindowKind::Tumble => "TUMBLE(relation, time_column, size [, offset])",
            WindowKind::Hop => "HOP(relation, time_column, slide, size)",
            WindowKind::Session => "SESSION(relation, time_column, gap [, key_column ...])",
        };
        let expected = match self.kind {
            WindowKind::Tumble => 3..=4,
            WindowKind::Hop => 4..=4,
            WindowKind::Session => 3..=usize::MAX,
        };
        if !expected.contains(&exprs.len()) {
            return Err(plan_error(format!(
                "{function} takes {} arguments, not {}",
                expected.end(),
                exprs.len()
            )));
        }
        let name_of = |expr: &Expr, what: &str| match expr {
            Expr::Column(column) => Ok(column.name.clone()),
            other => Err(plan_error(format!(
                "{function}: {what} must be a name, not {other}"
            ))),
        };
        let relation_name = name_of(
            &exprs[0],
            "the first argument (a table or materialized view)",
        )?;
        let relation = self.relations.get(&relation_name).ok_or_else(|| {
            DataFusionError::External(Box::new(EddyError::UndefinedRelation(format!(
                "relation \"{relation_name}\" does not exist"
            ))))
        })?;
        let time_name = name_of(&exprs[1], "the second argument (the time column)")?;
        let schema = relation.rows().schema();
        let time_column = schema.index_of(&time_name).map_err(|_| {
            DataFusionError::External(Box::new(EddyError::UndefinedColumn(format!(
                "column \"{time_name}\" does not exist in {relation_name}"
            ))))
        })?;
        let time_type = schema.field(time_column).data_type();
        if !matches!(time_type, DataType::Timestamp(_, _)) {
            return Err(plan_error(format!(
                "{function}: the time column {time_name} must be a timestamp, not {time_type}"
            )));
        }
        let external = |e: EddyError| DataFusionError::External(Box::new(e));
        let windowing = match self.kind {
            WindowKind::Tumble => {
                let offset = exprs
                    .get(3)
                    .map(|e| interval_argument("the offset", e))
                    .transpose()?
                    .unwrap_or(0);
                Windowing::Fixed(
                    WindowSpec::tumble(interval_argument("the window size", &exprs[2])?, offset)
                        .map_err(external)?,
                )
            }
            WindowKind::Hop => Windowing::Fixed(
                WindowSpec::hop(
                    interval_argument("the slide", &exprs[2])?,
                    interval_argument("the window size", &exprs[3])?,
                )
                .map_err(external)?,
            ),
            WindowKind::Session => {
                let gap = interval_argument("the session gap", &exprs[2])?;
                if gap <= 0 {
                    return Err(plan_error(format!(
                        "SESSION gap must be positive, not {gap} µs"
                    )));
                }
                let key_columns = exprs[3..]
                    .iter()
                    .map(|e| {
                        let name = name_of(e, "a key column")?;
                        schema.index_of(&name).map_err(|_| {
                            external(EddyError::UndefinedColumn(format!(
                                "column \"{name}\" does not exist in {relation_name}"
                            )))
                        })
                    })
                    .collect::<DFResult<Vec<_>>>()?;
                Windowing::Session { gap, key_columns }
            }
        };
        Ok(Arc::new(WindowedRelationProvider {
            relation: relation.clone(),
            time_column,
            windowing,
            schema: windowed_schema(&relation.schema(), time_column),
        }))
    }
}

/// A relation with its rows assigned to windows.
#[derive(Debug)]
pub struct WindowedRelationProvider {
    pub relation: Arc<RelationProvider>,
    pub time_column: usize,
    pub windowing: Windowing,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for WindowedRelationProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batches = self.relation.current_batches()?;
        let external = |e: EddyError| DataFusionError::External(Box::new(e));
        let project = |windowed: RecordBatch| match projection {
            Some(columns) => windowed.project(columns),
            None => Ok(windowed),
        };
        let windowed = match &self.windowing {
            // Batch by batch, projected as they come: a row is in up to
            // size/slide windows, and one batch of all of them could hold
            // more string bytes than 32-bit offsets address.
            Windowing::Fixed(spec) => batches
                .iter()
                .map(|rows| {
                    let (windowed, _) =
                        assign(rows, self.time_column, spec, &self.schema, |_, _| true)
                            .map_err(external)?;
                    Ok(project(windowed)?)
                })
                .collect::<DFResult<Vec<_>>>()?,
            // Sessions span batches: assigned over all rows at once.
            Windowing::Session { gap, key_columns } => {
                let rows = concat_batches(&self.relation.schema(), &batches)?;
                let sessions =
                    assign_sessions(&rows, self.time_column, key_columns, *gap, &self.schema)
                        .map_err(external)?;
                vec![project(sessions)?]
            }
        };
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        Ok(MemorySourceConfig::try_new_exec(&[windowed], schema, None)?)
    }
}
