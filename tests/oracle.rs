//! The oracle: incremental must never disagree with batch.
//!
//! For random tables and random sequences of INSERT/UPDATE/DELETE, with
//! materialized views of every supported shape created before, during and
//! after the changes, every view's content after FLUSH equals DataFusion
//! running the view's query as a batch over the final tables.

mod common;

use common::{execute, query_text, TestServer};
use proptest::prelude::*;

/// View shapes; `{c}` is replaced by a random constant.
const VIEW_QUERIES: &[&str] = &[
    "SELECT k, count(*) AS n, sum(v) AS total, min(v) AS low, max(v) AS high, avg(v) AS mean, \
     count(v) AS nv, count(DISTINCT s) AS ds FROM t GROUP BY k",
    "SELECT k, s, v * 2 + 1 AS x FROM t WHERE v > {c}",
    "SELECT s, count(*) AS n FROM t WHERE k IS NOT NULL GROUP BY s HAVING count(*) > {c}",
    "SELECT count(*) AS n, sum(v) AS total, bool_and(v > {c}) AS all_big, bool_or(v < 0) AS any_neg, \
     min(s) AS first_s, max(s) AS last_s FROM t",
    "SELECT k, v FROM t UNION ALL SELECT k, v FROM u WHERE v <> {c}",
    "SELECT DISTINCT s, k % 2 AS parity FROM t",
    "SELECT k, sum(v) FILTER (WHERE s = 'a') AS a_total, count(*) FILTER (WHERE v > {c}) AS big FROM t GROUP BY k",
    "SELECT coalesce(s, 'none') AS s, k + v AS kv FROM t WHERE k = {c} OR v IS NULL",
    "SELECT k, count(DISTINCT v) AS dv, sum(DISTINCT v) AS sdv FROM u GROUP BY k",
    "SELECT s, max(k) AS mk FROM (SELECT s, k FROM t UNION ALL SELECT s, k FROM u) x GROUP BY s",
    "SELECT k, sum(d) AS sd, avg(d) AS ad, min(d) AS lo, max(d) AS hi, sum(d * v) AS dv FROM t GROUP BY k",
    "SELECT s, avg(DISTINCT d) AS ad, count(*) FILTER (WHERE d > {c}) AS n FROM t GROUP BY s",
    // Joins: changes on both sides, duplicate keys, NULL keys.
    "SELECT t.k, t.v, u.v AS uv, u.s AS us FROM t JOIN u ON t.k = u.k WHERE t.v > {c}",
    "SELECT t.k, t.s, u.v AS uv FROM t LEFT JOIN u ON t.k = u.k AND u.v > {c}",
    "SELECT t.k, u.k AS uk, t.v, u.v AS uv FROM t FULL JOIN u ON t.k = u.k AND t.s = u.s",
    "SELECT u.s, count(*) AS n, sum(t.v) AS tv FROM t RIGHT JOIN u ON t.k = u.k GROUP BY u.s",
    "SELECT k, count(*) AS n FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.k = t.k AND u.v > {c}) GROUP BY k",
    "SELECT k, v FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = t.k AND u.s = t.s)",
    "SELECT k, v, (SELECT max(v) FROM u WHERE u.k = t.k) AS top_u FROM t",
    // Top-N: the order covers every column, so the batch answer is unique.
    "SELECT k, v, s, d FROM t ORDER BY v DESC, k, s, d LIMIT 3 OFFSET 1",
    "SELECT * FROM (SELECT k, v, s, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v, s, d) AS rn FROM t) x WHERE rn <= 2",
    "SELECT * FROM (SELECT s, v, RANK() OVER (PARTITION BY s ORDER BY v DESC) AS r FROM u) x WHERE r <= {c}",
    // Window functions: the order covers the row, so frames are unique.
    "SELECT k, v, sum(v) OVER (PARTITION BY k ORDER BY v, s, d) AS running, \
     count(*) OVER (PARTITION BY s) AS in_s FROM t",
    // Ordered aggregates and DISTINCT ON (orders that leave no ties).
    "SELECT k, string_agg(s, ',' ORDER BY s, v) AS ss, first_value(v ORDER BY v DESC) AS fv, \
     last_value(s ORDER BY s) AS ls, array_agg(v ORDER BY v) AS av FROM t GROUP BY k",
    "SELECT DISTINCT ON (k) k, v, s FROM u ORDER BY k, v, s, d",
    "SELECT k FROM t WHERE v > {c} UNION SELECT k FROM u",
    "SELECT k, v FROM t WHERE k NOT IN (SELECT k FROM u WHERE v > {c})",
    // Nested JSON: rows as jsonb documents, read back with ->, ->>, #>>, @>.
    "SELECT x ->> 's' AS js, sum((x #>> '{n,v}')::int) AS sv, count(x -> 'n' -> 'k') AS nk, \
     count(*) FILTER (WHERE x @> '{\"n\": {\"k\": {c}}}') AS kc \
     FROM (SELECT ('{\"s\": ' || coalesce('\"' || s || '\"', 'null') || ', \"n\": {\"k\": ' \
     || coalesce(k::text, 'null') || ', \"v\": ' || coalesce(v::text, 'null') || '}}')::jsonb AS x \
     FROM t) q GROUP BY x ->> 's'",
];

/// A view over the first view (created with it), to exercise view-on-view.
const STACKED_QUERY: &str = "SELECT n, count(*) AS groups, sum(total) AS total FROM v0 GROUP BY n";

/// (k, v, s, d in hundredths)
type Row = (Option<i32>, Option<i32>, Option<&'static str>, Option<i32>);

#[derive(Debug, Clone)]
enum Change {
    Insert {
        table: &'static str,
        rows: Vec<Row>,
    },
    Update {
        table: &'static str,
        delta: i32,
        k: i32,
    },
    UpdateKey {
        table: &'static str,
        from: i32,
        to: i32,
    },
    Delete {
        table: &'static str,
        above: i32,
    },
    DeleteKey {
        table: &'static str,
        k: i32,
    },
}

fn sql_value<T: ToString>(value: &Option<T>, quote: bool) -> String {
    match value {
        None => "NULL".into(),
        Some(v) if quote => format!("'{}'", v.to_string()),
        Some(v) => v.to_string(),
    }
}

impl Change {
    fn sql(&self) -> String {
        match self {
            Change::Insert { table, rows } => {
                let values: Vec<String> = rows
                    .iter()
                    .map(|(k, v, s, d)| {
                        let d = d.map(|d| format!("{}.{:02}", d / 100, d % 100));
                        format!(
                            "({}, {}, {}, {})",
                            sql_value(k, false),
                            sql_value(v, false),
                            sql_value(s, true),
                            sql_value(&d, false)
                        )
                    })
                    .collect();
                format!("INSERT INTO {table} VALUES {}", values.join(", "))
            }
            Change::Update { table, delta, k } => {
                format!("UPDATE {table} SET v = v + {delta} WHERE k = {k}")
            }
            Change::UpdateKey { table, from, to } => {
                format!("UPDATE {table} SET k = {to}, s = 'c' WHERE k = {from}")
            }
            Change::Delete { table, above } => format!("DELETE FROM {table} WHERE v > {above}"),
            Change::DeleteKey { table, k } => {
                format!("DELETE FROM {table} WHERE k = {k} OR k IS NULL")
            }
        }
    }
}

fn table() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just("t"), 1 => Just("u")]
}

fn row() -> impl Strategy<Value = Row> {
    (
        prop::option::weighted(0.9, 0..5i32),
        prop::option::weighted(0.9, -5..20i32),
        prop::option::weighted(0.85, prop_oneof![Just("a"), Just("b"), Just("c")]),
        prop::option::weighted(0.85, 0..2000i32),
    )
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (table(), prop::collection::vec(row(), 1..6)).prop_map(|(table, rows)| Change::Insert { table, rows }),
        2 => (table(), -3..4i32, 0..5i32).prop_map(|(table, delta, k)| Change::Update { table, delta, k }),
        1 => (table(), 0..5i32, 0..5i32).prop_map(|(table, from, to)| Change::UpdateKey { table, from, to }),
        1 => (table(), 0..20i32).prop_map(|(table, above)| Change::Delete { table, above }),
        1 => (table(), 0..5i32).prop_map(|(table, k)| Change::DeleteKey { table, k }),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    changes: Vec<Change>,
    /// (query index, constant, position in `changes` at which it is created)
    views: Vec<(usize, i32, usize)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop::collection::vec(change(), 1..25).prop_flat_map(|changes| {
        let len = changes.len();
        let views = prop::collection::vec((0..VIEW_QUERIES.len(), -2..6i32, 0..=len), 1..5);
        (Just(changes), views).prop_map(|(changes, mut views)| {
            // v0 is always the grouped aggregate, so the stacked view has an input.
            views[0].0 = 0;
            Scenario { changes, views }
        })
    })
}

fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

/// Runs `scenario` on a server whose operators keep at most
/// `memory_limit` bytes of state in memory (`Some(1)`: all of it goes to
/// disk after every epoch).
async fn check(scenario: Scenario, memory_limit: Option<usize>) -> Result<(), TestCaseError> {
    let server = TestServer::start_with(|options| options.memory_limit_bytes = memory_limit).await;
    let client = server.connect().await;
    execute(
        &client,
        "CREATE TABLE t (k INT, v INT, s TEXT, d NUMERIC(8, 2)); CREATE TABLE u (k INT, v INT, s TEXT, d NUMERIC(8, 2))",
    )
    .await;
    let queries: Vec<String> = scenario
        .views
        .iter()
        .map(|(q, c, _)| VIEW_QUERIES[*q].replace("{c}", &c.to_string()))
        .collect();
    let create = |i: usize| format!("CREATE MATERIALIZED VIEW v{i} AS {}", queries[i]);
    for step in 0..=scenario.changes.len() {
        for (i, (_, _, at)) in scenario.views.iter().enumerate() {
            if *at == step {
                execute(&client, &create(i)).await;
                if i == 0 {
                    execute(
                        &client,
                        &format!("CREATE MATERIALIZED VIEW stacked AS {STACKED_QUERY}"),
                    )
                    .await;
                }
            }
        }
        if let Some(change) = scenario.changes.get(step) {
            execute(&client, &change.sql()).await;
        }
    }
    execute(&client, "FLUSH").await;
    for (i, query) in queries.iter().enumerate() {
        let incremental = sorted(query_text(&client, &format!("SELECT * FROM v{i}")).await);
        let batch = sorted(query_text(&client, &format!("SELECT * FROM ({query}) AS batch")).await);
        prop_assert_eq!(incremental, batch, "view v{} = {}", i, query);
    }
    let stacked = sorted(query_text(&client, "SELECT * FROM stacked").await);
    let stacked_batch = sorted(
        query_text(
            &client,
            &format!(
                "SELECT * FROM ({}) AS batch",
                STACKED_QUERY.replace("FROM v0", &format!("FROM ({}) v0", queries[0]))
            ),
        )
        .await,
    );
    prop_assert_eq!(stacked, stacked_batch, "stacked view over v0");
    if memory_limit.is_some() {
        // v0 groups: with rows, its groups went to disk.
        let groups = query_text(&client, "SELECT count(*) FROM v0").await;
        let spilled = query_text(
            &client,
            "SELECT coalesce(sum(spilled_keys), 0) FROM eddy_catalog.operator_stats \
             WHERE view = 'v0'",
        )
        .await;
        if groups[0][0] != "0" {
            prop_assert!(
                spilled[0][0] != "0",
                "v0 has {} groups, none on disk",
                groups[0][0]
            );
        }
    }
    drop(client);
    server.stop().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 400, ..ProptestConfig::default() })]

    #[test]
    fn views_equal_batch_queries(scenario in scenario()) {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(check(scenario, None))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// The same with a memory limit of one byte: every epoch, the state of
    /// every operator that can spill goes to disk, and comes back as
    /// changes need it.
    #[test]
    fn views_equal_batch_queries_with_state_spilled(scenario in scenario()) {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(check(scenario, Some(1)))?;
    }
}
