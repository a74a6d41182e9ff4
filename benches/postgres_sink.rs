//! Postgres sink throughput and latency, against a baseline in the same run.
//!
//! `cargo bench --bench postgres_sink` (PostgreSQL from `scripts/postgres.sh
//! start`, or `EDDY_TEST_PG_URL`; rows per phase from `EDDY_BENCH_ROWS`,
//! default 100000). For each phase (insert N rows, update N rows, a mix of
//! updates, deletes and inserts), it measures:
//! - eddy: the change through a table, a view and its Postgres sink, from
//!   the DML statement until FLUSH returns (FLUSH waits for the sink);
//! - baseline: the same rows written to Postgres by the best plain
//!   tokio-postgres method, binary COPY into a temporary table then
//!   `INSERT ... ON CONFLICT` / `DELETE ... USING`, in one transaction;
//!
//! - eddy without a sink: the same statements on a twin table and view, to
//!   separate eddy's own work from the sink's write;
//!
//! and reports rows/s of each, the end-to-end ratio eddy/baseline, the
//! sink's own write rate (rows / (with sink − without sink)) and its ratio
//! to the baseline, then the delay from an INSERT in eddy to its row being
//! visible in Postgres (p50/p99).

use std::time::{Duration, Instant};

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

mod common;
use eddy::bench::cores_and_commit;

fn postgres_url() -> String {
    std::env::var("EDDY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/eddy_test".to_string())
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {url} (scripts/postgres.sh start): {e}")
        });
    tokio::spawn(connection);
    client
}

/// (id, v, s) rows for the baseline.
type Row = (i64, i64, String);

async fn baseline_upsert(client: &mut Client, upserts: &[Row], deletes: &[i64]) {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_up (LIKE bench_baseline) ON COMMIT DELETE ROWS;
         CREATE TEMP TABLE IF NOT EXISTS stage_del (id BIGINT) ON COMMIT DELETE ROWS",
    )
    .await
    .unwrap();
    if !upserts.is_empty() {
        let sink = tx
            .copy_in("COPY stage_up (id, v, s) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::TEXT]);
        pin_mut!(writer);
        for (id, v, s) in upserts {
            let row: [&(dyn ToSql + Sync); 3] = [id, v, s];
            writer.as_mut().write(&row).await.unwrap();
        }
        writer.finish().await.unwrap();
        tx.batch_execute(
            "INSERT INTO bench_baseline SELECT * FROM stage_up ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, s = EXCLUDED.s",
        )
        .await
        .unwrap();
    }
    if !deletes.is_empty() {
        let sink = tx
            .copy_in("COPY stage_del (id) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT8]);
        pin_mut!(writer);
        for id in deletes {
            let row: [&(dyn ToSql + Sync); 1] = [id];
            writer.as_mut().write(&row).await.unwrap();
        }
        writer.finish().await.unwrap();
        tx.batch_execute("DELETE FROM bench_baseline t USING stage_del d WHERE t.id = d.id")
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

fn text_of(id: i64, round: i64) -> String {
    format!("row-{id}-{round}")
}

struct Phase {
    name: &'static str,
    rows: usize,
    eddy: Duration,
    eddy_without_sink: Duration,
    baseline: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = std::env::var("EDDY_BENCH_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let url = postgres_url();
    let mut pg = connect(&url).await;
    pg.batch_execute(
        "DROP TABLE IF EXISTS bench_sink, bench_baseline;
         CREATE TABLE bench_baseline (id BIGINT PRIMARY KEY, v BIGINT, s TEXT)",
    )
    .await
    .unwrap();

    let server = eddy::Server::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("eddy starts");
    let eddy = connect(&format!(
        "host=127.0.0.1 port={} user=eddy dbname=eddy",
        server.local_addr.port()
    ))
    .await;
    eddy.batch_execute(&format!(
        "CREATE TABLE src (id BIGINT PRIMARY KEY, v BIGINT, s TEXT);
         CREATE MATERIALIZED VIEW bench_view AS SELECT id, v, s FROM src;
         CREATE TABLE twin (id BIGINT PRIMARY KEY, v BIGINT, s TEXT);
         CREATE MATERIALIZED VIEW twin_view AS SELECT id, v, s FROM twin;
         CREATE SINK bench FROM bench_view WITH (connector = 'postgres', url = '{url}', table = 'bench_sink',
             primary_key = 'id', create_table = 'true')"
    ))
    .await
    .unwrap();

    let third = rows / 3;
    let updated = (1..=rows).filter(|id| id % 3 == 0).count();
    let deleted = (1..=rows).filter(|id| id % 3 == 1).count();
    let phases_sql = [
        ("insert", rows as usize, format!(
            "INSERT INTO src SELECT value AS id, value AS v, concat('row-', value, '-0') AS s FROM generate_series(1, {rows})"
        )),
        ("update", rows as usize, "UPDATE src SET v = v + 1, s = concat('row-', id, '-1')".to_string()),
        ("mixed", updated + deleted + third as usize, format!(
            "UPDATE src SET v = v + 1 WHERE id % 3 = 0; DELETE FROM src WHERE id % 3 = 1;
             INSERT INTO src SELECT value AS id, value AS v, concat('row-', value, '-2') AS s
             FROM generate_series({}, {})", rows + 1, rows + third
        )),
    ];
    let mut phases = Vec::new();
    for (round, (name, changed, sql)) in phases_sql.iter().enumerate() {
        // eddy: DML → view → sink → Postgres.
        let start = Instant::now();
        eddy.batch_execute(&format!("{sql}; FLUSH")).await.unwrap();
        let eddy_time = start.elapsed();
        // The same statements with no sink: eddy's own share.
        let start = Instant::now();
        eddy.batch_execute(&format!("{}; FLUSH", sql.replace("src", "twin")))
            .await
            .unwrap();
        let eddy_without_sink = start.elapsed();
        // Baseline: the same rows, straight into Postgres.
        let (upserts, deletes): (Vec<Row>, Vec<i64>) = match round {
            0 => (
                (1..=rows).map(|id| (id, id, text_of(id, 0))).collect(),
                vec![],
            ),
            1 => (
                (1..=rows).map(|id| (id, id + 1, text_of(id, 1))).collect(),
                vec![],
            ),
            _ => {
                let mut upserts: Vec<Row> = (1..=rows)
                    .filter(|id| id % 3 == 0)
                    .map(|id| (id, id + 2, text_of(id, 1)))
                    .collect();
                upserts.extend((rows + 1..=rows + third).map(|id| (id, id, text_of(id, 2))));
                (upserts, (1..=rows).filter(|id| id % 3 == 1).collect())
            }
        };
        let start = Instant::now();
        baseline_upsert(&mut pg, &upserts, &deletes).await;
        let baseline_time = start.elapsed();
        phases.push(Phase {
            name,
            rows: *changed,
            eddy: eddy_time,
            eddy_without_sink,
            baseline: baseline_time,
        });
    }
    // Both ways end with the same table.
    let digest = "SELECT count(*)::TEXT || ' ' || md5(string_agg(id || ':' || v || ':' || s, ',' ORDER BY id))";
    let sunk: String = pg
        .query_one(&format!("{digest} FROM bench_sink"), &[])
        .await
        .unwrap()
        .get(0);
    let direct: String = pg
        .query_one(&format!("{digest} FROM bench_baseline"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sunk, direct,
        "the sink and the baseline wrote different tables"
    );

    // Latency: one row inserted in eddy until it is visible in Postgres.
    let mut delays = Vec::new();
    for i in 0..200i64 {
        let id = 10 * rows + i;
        let start = Instant::now();
        eddy.batch_execute(&format!("INSERT INTO src VALUES ({id}, 0, 'latency')"))
            .await
            .unwrap();
        loop {
            if pg
                .query_opt("SELECT 1 FROM bench_sink WHERE id = $1", &[&id])
                .await
                .unwrap()
                .is_some()
            {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        delays.push(start.elapsed());
    }
    delays.sort();

    let (cores, commit) = cores_and_commit();
    println!("postgres sink benchmark: {rows} rows per phase, {cores} cores, commit {commit}");
    println!(
        "{:<8} {:>8} {:>13} {:>15} {:>7} {:>17} {:>10}",
        "phase",
        "rows",
        "eddy rows/s",
        "baseline rows/s",
        "ratio",
        "sink write rows/s",
        "sink ratio"
    );
    let mut json = Vec::new();
    for p in &phases {
        let eddy_rate = p.rows as f64 / p.eddy.as_secs_f64();
        let base_rate = p.rows as f64 / p.baseline.as_secs_f64();
        // The sink's own share: with sink minus the same work without one.
        let sink_time = p
            .eddy
            .saturating_sub(p.eddy_without_sink)
            .as_secs_f64()
            .max(1e-6);
        let sink_rate = p.rows as f64 / sink_time;
        println!(
            "{:<8} {:>8} {:>13.0} {:>15.0} {:>7.2} {:>17.0} {:>10.2}",
            p.name,
            p.rows,
            eddy_rate,
            base_rate,
            eddy_rate / base_rate,
            sink_rate,
            sink_rate / base_rate
        );
        json.push(format!(
            "{{\"phase\":\"{}\",\"rows\":{},\"eddy_rows_per_s\":{eddy_rate:.0},\"baseline_rows_per_s\":{base_rate:.0},\"ratio\":{:.3},\"sink_write_rows_per_s\":{sink_rate:.0},\"sink_ratio\":{:.3}}}",
            p.name, p.rows, eddy_rate / base_rate, sink_rate / base_rate
        ));
    }
    let (p50, p99) = (percentile(&delays, 0.5), percentile(&delays, 0.99));
    println!(
        "change-to-Postgres delay over {} single-row inserts: p50 {:.2} ms, p99 {:.2} ms",
        delays.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "{{\"bench\":\"postgres_sink\",\"commit\":\"{commit}\",\"cores\":{cores},\"phases\":[{}],\"delay_p50_ms\":{:.3},\"delay_p99_ms\":{:.3}}}",
        json.join(","), p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3
    );
    server.stop().await;
}
