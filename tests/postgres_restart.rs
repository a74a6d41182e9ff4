//! PostgreSQL restarted, or down for a while, in the middle of a stream: the
//! sink retries with backoff while nothing else waits for it, and resumes
//! without losing or doubling a row.
//! (Its own test binary: restarting the shared server would disturb the
//! other sink tests.)

mod common;

use std::time::Duration;

use common::{
    connect_postgres, execute, postgres_rows, postgres_url, query_text, sorted_rows, TestServer,
};

/// Both tests stop or restart the one PostgreSQL: one at a time.
static POSTGRES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn restart_postgres() {
    postgres_script("restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_survives_a_postgres_restart() {
    let _serial = POSTGRES.lock().await;
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

fn postgres_script(action: &str) {
    let script = format!("{}/scripts/postgres.sh", common::project_dir());
    let status = std::process::Command::new(script)
        .arg(action)
        .status()
        .expect("scripts/postgres.sh runs");
    assert!(status.success(), "scripts/postgres.sh {action} failed");
}

/// With PostgreSQL down, the sink keeps its epochs in eddy (checkpointed)
/// and nothing else waits: every write, a DDL and a CHECKPOINT answer. When
/// PostgreSQL is back, everything arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_holds_only_its_sink() {
    let _serial = POSTGRES.lock().await;

    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_backpressure")
        .await
        .unwrap();
    drop(pg);
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(&eddy, &format!(
        "CREATE TABLE t (id INT PRIMARY KEY, v INT);
         CREATE MATERIALIZED VIEW v AS SELECT id, v FROM t;
         CREATE SINK bp FROM v WITH (connector = 'postgres', url = '{}', table = 'sink_backpressure',
                                    primary_key = 'id', create_table = 'true')",
        postgres_url()
    )).await;
    tokio::task::spawn_blocking(|| postgres_script("stop"))
        .await
        .unwrap();

    let statements = 8_000;
    let writer_client = server.connect().await;
    let writer = tokio::spawn(async move {
        for i in 0..statements {
            execute(&writer_client, &format!("INSERT INTO t VALUES ({i}, {i})")).await;
        }
    });
    // Every write is acknowledged while PostgreSQL is down (many
    // checkpoints later), and DDL and CHECKPOINT answer.
    tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("writers are never held back by a sink")
        .expect("writer");
    tokio::time::timeout(
        Duration::from_secs(20),
        execute(
            &eddy,
            "CHECKPOINT; CREATE TABLE other (a INT); INSERT INTO other VALUES (1)",
        ),
    )
    .await
    .expect("CHECKPOINT and DDL answer");
    let sinks = query_text(&eddy, "SELECT status, lag_epochs FROM eddy_catalog.sinks").await;
    println!("all {statements} writes acknowledged with PostgreSQL down; sink {sinks:?}");
    // On a slow machine the writes outlast the stall threshold, and the
    // status leads with "stalled: no epoch written for N s; retrying: ...".
    assert!(sinks[0][0].contains("retrying"), "{sinks:?}");

    tokio::task::spawn_blocking(|| postgres_script("start"))
        .await
        .unwrap();
    // The sink catches up (FLUSH says so once it has).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while eddy.simple_query("FLUSH").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pg = connect_postgres().await;
    let table = postgres_rows(
        &pg,
        "SELECT count(*)::TEXT, sum(v)::TEXT FROM sink_backpressure",
    )
    .await;
    let expected = (0..statements as i64).sum::<i64>();
    assert_eq!(
        table,
        vec![vec![statements.to_string(), expected.to_string()]]
    );
    server.stop().await;
}
