//! Lowering a scan: `TableScan` of a table, view or source (or a lookup
//! of one, `FOR SYSTEM_TIME AS OF PROCTIME()`) → `Scan`.

use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::TableScan;

use super::exprs::not_incremental;
use super::Lowering;
use crate::catalog::lookup::LookupRelationProvider;
use crate::catalog::window::WindowedRelationProvider;
use crate::catalog::RelationProvider;
use crate::error::Result;
use crate::stream::graph::NodeIndex;
use crate::stream::source::ScanOperator;

impl Lowering<'_> {
    /// A scan of a table, view or source (or a lookup of one): a leaf that
    /// the runtime feeds the relation's changes.
    pub(super) fn scan(&mut self, scan: &TableScan) -> Result<NodeIndex> {
        if source_as_provider(&scan.source)?.is::<WindowedRelationProvider>() {
            return self.window_scan(scan);
        }
        if scan.fetch.is_some() {
            return Err(not_incremental("LIMIT"));
        }
        if !scan.filters.is_empty() {
            return Err(crate::internal!(
                "filters were pushed into a scan that does not take them"
            ));
        }
        let provider = source_as_provider(&scan.source)?;
        let relation = match provider.downcast_ref::<LookupRelationProvider>() {
            Some(lookup) => lookup.relation.as_ref(),
            None => provider.downcast_ref::<RelationProvider>().ok_or_else(|| {
                crate::not_supported!(
                    "materialized views over {} are not supported",
                    scan.table_name
                )
            })?,
        };
        let op = ScanOperator::new(relation.id, relation.name.clone(), scan.projection.clone());
        Ok(self
            .graph
            .add_scan_reading(relation.id, scan.projection.clone(), Box::new(op)))
    }
}
