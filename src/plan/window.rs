//! Lowering a window table function (`TUMBLE`, `HOP`, `SESSION`) →
//! `Scan` → `WindowAssign` (or `SessionWindow`) [→ `Project`].

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::TableScan;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::PhysicalExpr;

use super::exprs::not_incremental;
use super::Lowering;
use crate::catalog::window::{WindowedRelationProvider, Windowing};
use crate::error::Result;
use crate::stream::graph::NodeIndex;
use crate::stream::project::ProjectOperator;
use crate::stream::session::{SessionSpec, SessionWindowOperator};
use crate::stream::source::ScanOperator;
use crate::stream::window::WindowAssignOperator;

impl Lowering<'_> {
    /// A scan of `TUMBLE(...)`, `HOP(...)` or `SESSION(...)`: the relation's
    /// scan, then window assignment (`WindowAssign` or `SessionWindow`), then
    /// the scan's projection.
    pub(super) fn window_scan(&mut self, scan: &TableScan) -> Result<NodeIndex> {
        if scan.fetch.is_some() {
            return Err(not_incremental("LIMIT"));
        }
        let provider = source_as_provider(&scan.source)?;
        let windowed = provider
            .downcast_ref::<WindowedRelationProvider>()
            .ok_or_else(|| crate::internal!("window provider vanished"))?;
        let relation = &windowed.relation;
        let (scan_node, watermarked) = self.window_input(windowed, scan.projection.as_deref());
        let time_name = relation
            .rows()
            .schema()
            .field(windowed.time_column)
            .name()
            .clone();
        let schema = TableProvider::schema(windowed);
        let assign: Box<dyn crate::stream::Operator> = match &windowed.windowing {
            Windowing::Fixed(spec) => Box::new(WindowAssignOperator::new(
                windowed.time_column,
                time_name.clone(),
                *spec,
                schema.clone(),
                self.time.allowed_lateness_micros,
            )),
            Windowing::Session { gap, key_columns } => Box::new(SessionWindowOperator::try_new(
                relation.rows().schema().clone(),
                SessionSpec {
                    time_column: windowed.time_column,
                    key_columns: key_columns.clone(),
                    gap: *gap,
                },
                self.time.allowed_lateness_micros,
                schema.clone(),
                watermarked,
            )?),
        };
        let assigned = self.graph.add(assign, vec![scan_node]);
        match &scan.projection {
            None => Ok(assigned),
            Some(columns) => {
                let exprs: Vec<Arc<dyn PhysicalExpr>> = columns
                    .iter()
                    .map(|&i| {
                        Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                let projected = Arc::new(schema.project(columns)?);
                Ok(self.graph.add(
                    Box::new(ProjectOperator::new(exprs, projected)),
                    vec![assigned],
                ))
            }
        }
    }

    /// The scan a window table function reads, with the window noted (its
    /// relation and time column, and whether a watermark reaches it, which
    /// is returned too). `projection`: the columns of the window's output
    /// (the relation's, then the window's) read above it; `None`: all.
    pub(super) fn window_input(
        &mut self,
        windowed: &WindowedRelationProvider,
        projection: Option<&[usize]>,
    ) -> (NodeIndex, bool) {
        let relation = &windowed.relation;
        // The window operator reads the time column (and a session's keys);
        // above it, the projection's columns of the relation.
        let width = relation.rows().schema().fields().len();
        let columns_read = projection.map(|projection| {
            let mut read: Vec<usize> = projection.iter().copied().filter(|&c| c < width).collect();
            read.push(windowed.time_column);
            if let Windowing::Session { key_columns, .. } = &windowed.windowing {
                read.extend(key_columns);
            }
            read
        });
        let scan = self.graph.add_scan_reading(
            relation.id,
            columns_read,
            Box::new(ScanOperator::new(relation.id, relation.name.clone(), None)),
        );
        let watermarked = relation.may_have_watermark_on(windowed.time_column);
        self.windows_watermarked &= watermarked;
        let time_name = relation.rows().schema().field(windowed.time_column).name();
        self.windows.push((relation.id, time_name.clone()));
        (scan, watermarked)
    }
}
