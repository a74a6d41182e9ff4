//! Event time against the batch oracle, and state bounded by the watermark.
//!
//! - For random out-of-order streams, the windows of an `EMIT ON WINDOW
//!   CLOSE` view equal DataFusion's batch answer over the same events with
//!   the late ones removed, and the default-emit view converges to the same;
//!   for TUMBLE and for SESSION windows (which merge and split).
//! - Over a long stream, the live state of a windowed aggregate stays
//!   bounded: it does not grow with the number of events.

mod common;

use common::{execute, query_text, sorted_rows, TestServer};
use proptest::prelude::*;

const WATERMARK_DELAY_S: i64 = 4;
const WINDOW_S: i64 = 10;
const BASE_MICROS: i64 = 1_704_067_200_000_000; // 2024-01-01 00:00:00

/// (key, value, event time in seconds after BASE)
type Event = (i32, i32, i64);

fn timestamp_sql(seconds: i64) -> String {
    format!("to_timestamp_micros({})", BASE_MICROS + seconds * 1_000_000)
}

/// Which events are late when the statements run in order: an event is late
/// when its window ended at or before the watermark seen before its
/// statement (the watermark moves after each statement).
fn on_time_events(statements: &[Vec<Event>]) -> Vec<Event> {
    let mut watermark: Option<i64> = None;
    let mut kept = Vec::new();
    for statement in statements {
        for &(key, value, t) in statement {
            let window_end = t.div_euclid(WINDOW_S) * WINDOW_S + WINDOW_S;
            if watermark.is_none_or(|w| window_end > w) {
                kept.push((key, value, t));
            }
        }
        if let Some(newest) = statement.iter().map(|e| e.2).max() {
            let candidate = newest - WATERMARK_DELAY_S;
            watermark = Some(watermark.map_or(candidate, |w| w.max(candidate)));
        }
    }
    kept
}

fn insert_sql(table: &str, events: &[Event]) -> String {
    let values: Vec<String> = events
        .iter()
        .map(|(k, v, t)| format!("({k}, {v}, {})", timestamp_sql(*t)))
        .collect();
    format!("INSERT INTO {table} VALUES {}", values.join(", "))
}

const WINDOWED: &str =
    "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total, max(v) AS top
    FROM TUMBLE({table}, ts, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end";

/// A windowed query, and which events count as on time for it.
struct WindowCase {
    /// The view's query over `{table}`.
    query: &'static str,
    /// Event time (s) after the last event at which a far-future event of
    /// key 99 closes every other key's windows.
    closing_offset_s: i64,
    on_time: fn(&[Vec<Event>]) -> Vec<Event>,
}

const TUMBLE_CASE: WindowCase = WindowCase {
    query: WINDOWED,
    closing_offset_s: 10 * WINDOW_S,
    on_time: on_time_events,
};

const SESSION_CASE: WindowCase = WindowCase {
    query: SESSIONS,
    closing_offset_s: 10 * SESSION_GAP_S,
    on_time: on_time_session_events,
};

async fn check(statements: Vec<Vec<Event>>, case: &WindowCase) -> Result<(), TestCaseError> {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let view = case.query.replace("{table}", "ev");
    execute(&eddy, &format!(
        "CREATE TABLE ev (k INT, v INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '{WATERMARK_DELAY_S}' SECOND);
         CREATE TABLE kept (k INT, v INT, ts TIMESTAMP);
         CREATE MATERIALIZED VIEW closed AS {view} EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW live AS {view};"
    )).await;
    for statement in &statements {
        execute(&eddy, &insert_sql("ev", statement)).await;
    }
    // Close every window: a far-future event of another key, itself in a
    // window that stays open.
    let last = statements.iter().flatten().map(|e| e.2).max().unwrap_or(0);
    let closing = (99, 0, last + case.closing_offset_s);
    execute(&eddy, &insert_sql("ev", &[closing])).await;
    execute(&eddy, "FLUSH").await;

    let kept = (case.on_time)(&statements);
    if !kept.is_empty() {
        execute(&eddy, &insert_sql("kept", &kept)).await;
    }
    let batch = sorted_rows(&eddy, &case.query.replace("{table}", "kept")).await;
    let closed = sorted_rows(&eddy, "SELECT * FROM closed").await;
    let live = sorted_rows(&eddy, "SELECT * FROM live WHERE k <> 99").await;
    prop_assert_eq!(
        &closed,
        &batch,
        "EMIT ON WINDOW CLOSE vs batch over on-time events"
    );
    prop_assert_eq!(&live, &batch, "default emit converges to the same");
    let late: i64 = query_text(
        &eddy,
        "SELECT late_rows FROM eddy_catalog.materialized_views WHERE name = 'closed'",
    )
    .await[0][0]
        .parse()
        .unwrap();
    let total: usize = statements.iter().map(Vec::len).sum();
    prop_assert_eq!(late as usize, total - kept.len(), "late events are counted");
    server.stop().await;
    Ok(())
}

fn statements() -> impl Strategy<Value = Vec<Vec<Event>>> {
    // Time moves forward about 3 s per event, with up to 12 s of disorder.
    prop::collection::vec((0..3i32, 0..50i32, -12..12i64), 1..80).prop_flat_map(|events| {
        let events: Vec<Event> = events
            .into_iter()
            .enumerate()
            .map(|(i, (k, v, jitter))| (k, v, (i as i64 * 3 + jitter).max(0)))
            .collect();
        let n = events.len();
        prop::collection::vec(1..6usize, n).prop_map(move |sizes| {
            let mut statements = Vec::new();
            let mut rest = events.as_slice();
            for size in sizes {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at(size.min(rest.len()));
                statements.push(head.to_vec());
                rest = tail;
            }
            statements
        })
    })
}

const SESSION_GAP_S: i64 = 5;

const SESSIONS: &str = "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS total
    FROM SESSION({table}, ts, INTERVAL '5' SECOND, k) GROUP BY k, window_start, window_end";

/// Session windows: an event is late when its own time is before the
/// watermark seen before its statement (it could reach a closed session).
fn on_time_session_events(statements: &[Vec<Event>]) -> Vec<Event> {
    let mut watermark: Option<i64> = None;
    let mut kept = Vec::new();
    for statement in statements {
        kept.extend(
            statement
                .iter()
                .filter(|e| watermark.is_none_or(|w| e.2 >= w))
                .copied(),
        );
        if let Some(newest) = statement.iter().map(|e| e.2).max() {
            let candidate = newest - WATERMARK_DELAY_S;
            watermark = Some(watermark.map_or(candidate, |w| w.max(candidate)));
        }
    }
    kept
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn windows_equal_batch_over_on_time_events(statements in statements()) {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(check(statements, &TUMBLE_CASE))?;
    }

    #[test]
    fn sessions_equal_batch_over_on_time_events(statements in statements()) {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(check(statements, &SESSION_CASE))?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_stays_bounded_over_a_long_stream() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(&eddy, "CREATE TABLE stream (k BIGINT, v BIGINT, ts TIMESTAMP, g BIGINT, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND);
        CREATE MATERIALIZED VIEW per_window AS
          SELECT k, window_start, window_end, count(*) AS n, max(v) AS top
          FROM TUMBLE(stream, ts, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end;
        CREATE MATERIALIZED VIEW per_window_closed AS
          SELECT k, window_end, count(*) AS n
          FROM HOP(stream, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) GROUP BY k, window_end
          EMIT ON WINDOW CLOSE;
        CREATE MATERIALIZED VIEW visits AS
          SELECT g, window_start, count(*) AS n
          FROM SESSION(stream, ts, INTERVAL '300' MILLISECOND, g) GROUP BY g, window_start, window_end").await;
    let batches = 60;
    let rows_per_batch = 500;
    let mut largest_state = Vec::new();
    for b in 0..batches {
        let (first, last) = (b * rows_per_batch, (b + 1) * rows_per_batch - 1);
        // 20 ms of event time per row: each batch covers 10 s. Session key
        // g takes turns: 10 rows (a 200 ms session) every second.
        execute(&eddy, &format!(
            "INSERT INTO stream SELECT value % 5 AS k, value AS v, to_timestamp_micros({BASE_MICROS} + value * 20000) AS ts,
               (value / 10) % 5 AS g
             FROM generate_series({first}, {last}); FLUSH"
        )).await;
        let state = query_text(&eddy,
            "SELECT view, state_keys FROM eddy_catalog.operator_stats
             WHERE operator LIKE '%Aggregate%' OR operator LIKE 'SessionWindow%' ORDER BY view, operator").await;
        largest_state.push(
            state
                .iter()
                .map(|r| r[1].parse::<u64>().unwrap())
                .collect::<Vec<_>>(),
        );
    }
    let peak_tumble = largest_state.iter().map(|s| s[0]).max().unwrap();
    let peak_hop = largest_state.iter().map(|s| s[1]).max().unwrap();
    let peak_session_rows = largest_state.iter().map(|s| s[2]).max().unwrap();
    println!(
        "{} events: peak live state keys {peak_tumble} (tumble), {peak_hop} (hop, emit on close), \
         {peak_session_rows} (session rows)",
        batches * rows_per_batch
    );
    // Sessions close 300 ms after their last row; the watermark trails by
    // 2 s, so about 2.3 s of rows (115) are held, never all 30000.
    assert!(
        peak_session_rows <= 2 * 130,
        "session state grew: {largest_state:?}"
    );
    // At most two windows are open at once: their groups, plus the values
    // max() keeps (one per row). Never freed, it would be all 30000 rows.
    let two_windows = 2 * (rows_per_batch as u64 + 5);
    assert!(
        peak_tumble <= two_windows,
        "tumble state grew: {largest_state:?}"
    );
    assert!(peak_hop <= 4 * 5, "hop state grew: {largest_state:?}");
    // And it does not grow: the end of the stream holds no more than the start.
    let early = largest_state[1..10].iter().map(|s| s[0]).max().unwrap();
    let late = largest_state[batches as usize - 10..]
        .iter()
        .map(|s| s[0])
        .max()
        .unwrap();
    assert!(
        late <= early,
        "state grows with the stream: early {early}, late {late}"
    );
    let rows = query_text(&eddy, "SELECT count(*), sum(n) FROM visits").await;
    assert_eq!(
        rows,
        vec![vec![
            (batches * rows_per_batch / 10).to_string(),
            (batches * rows_per_batch).to_string()
        ]],
        "one 10-row session per key turn"
    );
    let rows = query_text(&eddy, "SELECT count(*), sum(n) FROM per_window").await;
    assert_eq!(
        rows,
        vec![vec![
            (5 * batches).to_string(),
            (batches * rows_per_batch).to_string()
        ]]
    );
    server.stop().await;
}

/// The check on a source: a windowed view over a long generated
/// stream keeps a bounded number of live state entries while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_stays_bounded_over_a_generated_stream() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    let rows = 200_000;
    execute(&eddy, &format!(
        "CREATE SOURCE events (id BIGINT, k INT, v DOUBLE PRECISION, ts TIMESTAMP,
                               WATERMARK FOR ts AS ts - INTERVAL '100' MILLISECOND)
         WITH (connector = 'datagen', datagen.rows.per.second = '100000', datagen.max.rows = '{rows}',
               datagen.seed = '3', fields.k.min = '0', fields.k.max = '9',
               fields.ts.max.disorder = '50 milliseconds');
         CREATE MATERIALIZED VIEW per_10ms AS
           SELECT k, window_end, count(*) AS n, sum(v) AS total
           FROM TUMBLE(events, ts, INTERVAL '10' MILLISECOND) GROUP BY k, window_end
           EMIT ON WINDOW CLOSE"
    )).await;
    let mut samples = Vec::new();
    loop {
        let stats = query_text(&eddy,
            "SELECT o.state_keys, o.rows_in, v.rows, v.late_rows FROM eddy_catalog.operator_stats o
             JOIN eddy_catalog.materialized_views v ON v.name = o.view WHERE o.operator LIKE '%Aggregate%'").await;
        let values: Vec<u64> = stats[0].iter().map(|v| v.parse().unwrap()).collect();
        samples.push(values.clone());
        if values[1] + values[3] >= rows {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            samples.len() < 2_000,
            "the generator did not finish: {:?}",
            samples.last()
        );
    }
    let peak = samples.iter().map(|s| s[0]).max().unwrap();
    let windows_emitted = samples.last().unwrap()[2];
    println!("{rows} generated events, {} samples: peak live state {peak} groups, {windows_emitted} windows emitted", samples.len());
    // 10 µs of event time per row (2 s in all); 10 keys per 10 ms window; the watermark
    // trails by 100 ms (+50 ms disorder): about 16 windows x 10 keys open at once,
    // against 2000 if nothing were freed.
    assert!(peak <= 250, "window state grew to {peak}");
    assert!(
        windows_emitted >= 1_800,
        "closed windows were emitted: {windows_emitted}"
    );
    server.stop().await;
}
