//! The Nexmark set-up shared by `benches/nexmark.rs` and `tests/nexmark.rs`:
//! the sources the queries read, the query files, and the same query over
//! bounded copies of the streams (for DataFusion's batch answer).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, ObjectNamePart, TableFactor, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// `CREATE SOURCE` for one nexmark stream of a bounded run of `events`
/// events (all kinds), `rate` events per second of event time. Bids carry a
/// processing-time column for q12 and q13.
pub fn source_sql(table: &str, events: u64, rate: u64) -> String {
    let proctime = if table == "bid" {
        "p_time TIMESTAMP AS PROCTIME(), "
    } else {
        ""
    };
    format!(
        "CREATE SOURCE {table} ({proctime}WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
         WITH (connector = 'nexmark', nexmark.table.type = '{table}',
               nexmark.event.rate = '{rate}', nexmark.max.events = '{events}',
               nexmark.max.emit.speed = 'true')"
    )
}

/// The table q13 looks up: 10,000 keys.
pub fn side_input_sql() -> String {
    let rows: Vec<String> = (0..10_000).map(|k| format!("({k}, 'v{k}')")).collect();
    format!(
        "CREATE TABLE side_input (key BIGINT PRIMARY KEY, value TEXT);
         INSERT INTO side_input VALUES {}",
        rows.join(", ")
    )
}

/// How many events of a run of `events` are of `table` (1 person : 3
/// auctions : 46 bids in every 50).
pub fn events_of(table: &str, events: u64) -> u64 {
    match table {
        "person" => events / 50,
        "auction" => events * 3 / 50,
        _ => events * 46 / 50,
    }
}

/// The Nexmark queries, by number: (name, query).
pub fn queries(project_dir: &str) -> Vec<(String, String)> {
    (0..=22)
        .map(|n| {
            let path = format!("{project_dir}/benches/nexmark/queries/q{n}.sql");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            (format!("q{n}"), text)
        })
        .collect()
}

/// Renames the nexmark relations to their bounded copies (`bid_all`, ...).
struct ToCopies;

fn copy_name(ident: &mut Ident) {
    if ["person", "auction", "bid"].contains(&ident.value.to_lowercase().as_str()) {
        *ident = Ident::new(format!("{}_all", ident.value.to_lowercase()));
    }
}

impl VisitorMut for ToCopies {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &mut ObjectName) -> ControlFlow<()> {
        if let [ObjectNamePart::Identifier(ident)] = relation.0.as_mut_slice() {
            copy_name(ident);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        // TUMBLE(bid, ...), HOP(...), SESSION(...): the relation is the first argument.
        if let TableFactor::Table {
            args: Some(args), ..
        } = factor
        {
            if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(ident)))) =
                args.args.first_mut()
            {
                copy_name(ident);
            }
        }
        ControlFlow::Continue(())
    }
}

/// The views that copy the streams, for [`over_copies`].
pub const COPIES_SQL: &str = "CREATE MATERIALIZED VIEW person_all AS SELECT * FROM person;
     CREATE MATERIALIZED VIEW auction_all AS SELECT * FROM auction;
     CREATE MATERIALIZED VIEW bid_all AS SELECT * FROM bid;";

/// `query` over the bounded copies; `FOR SYSTEM_TIME AS OF` dropped (the side
/// input does not change during a run).
pub fn over_copies(query: &str) -> String {
    let query = query.replace("FOR SYSTEM_TIME AS OF PROCTIME()", "");
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, &query).expect("query parses");
    let _ = statements.visit(&mut ToCopies);
    statements[0].to_string()
}
