//! PostgreSQL restarted in the middle of a stream: the sink retries with
//! backoff, holds its epochs, and resumes without losing or doubling a row.
//! (Its own test binary: restarting the shared server would disturb the
//! other sink tests.)

mod common;

use std::time::Duration;

use common::{
    connect_postgres, execute, postgres_rows, postgres_url, query_text, sorted_rows, TestServer,
};

fn restart_postgres() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
    let status = std::process::Command::new(script)
        .arg("restart")
        .status()
        .expect("scripts/postgres.sh runs");
    assert!(status.success(), "scripts/postgres.sh restart failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_survives_a_postgres_restart() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_restart")
        .await
        .unwrap();
    drop(pg);
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(&eddy, "CREATE TABLE t (id INT PRIMARY KEY, grp INT, v BIGINT);
        CREATE MATERIALIZED VIEW per_group AS SELECT grp, count(*) AS n, sum(v) AS total FROM t GROUP BY grp").await;
    execute(&eddy, &format!(
        "CREATE SINK restart_pg FROM per_group WITH (connector = 'postgres', url = '{}', table = 'sink_restart', create_table = 'true')",
        postgres_url()
    )).await;

    let writer_client = server.connect().await;
    let writer = tokio::spawn(async move {
        for i in 0..400 {
            let sql = match i % 4 {
                3 => format!("UPDATE t SET v = v + 1 WHERE id = {}", i - 2),
                _ => format!("INSERT INTO t VALUES ({i}, {}, {i})", i % 7),
            };
            execute(&writer_client, &sql).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut saw_retrying = false;
    let restart = tokio::task::spawn_blocking(restart_postgres);
    while !restart.is_finished() {
        let sinks = query_text(&eddy, "SHOW SINKS").await;
        saw_retrying |= sinks[0][4].starts_with("retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart.await.expect("restart task");
    println!("sink seen retrying during the restart: {saw_retrying}");
    writer.await.expect("writer");
    // FLUSH waits until the sink has caught up after reconnecting.
    execute(&eddy, "FLUSH").await;
    let pg = connect_postgres().await;
    let view = sorted_rows(
        &eddy,
        "SELECT grp::TEXT, n::TEXT, total::TEXT FROM per_group",
    )
    .await;
    let table = postgres_rows(
        &pg,
        "SELECT grp::TEXT, n::TEXT, total::TEXT FROM sink_restart",
    )
    .await;
    assert_eq!(
        table, view,
        "Postgres after a restart equals the view (sink was seen retrying: {saw_retrying})"
    );
    let n: i64 = view.iter().map(|r| r[1].parse::<i64>().unwrap()).sum();
    assert_eq!(n, 300, "every insert counted once");
    let sinks = query_text(&eddy, "SHOW SINKS").await;
    assert_eq!(sinks[0][4], "running");
    server.stop().await;
}
