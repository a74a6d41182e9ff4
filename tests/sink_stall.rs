//! A sink whose target stops answering delays only that sink: writes to
//! tables, DDL (CREATE SINK to the silent target too: 08001 after 30 s),
//! CHECKPOINT, FLUSH (which names the sink) and SIGTERM all answer in
//! bounded time; once the target answers again the sink catches up,
//! exactly once. A target silent for long enough fails its sink instead of
//! growing its backlog without bound.
//!
//! The target is the real PostgreSQL (scripts/postgres.sh) behind a
//! freezing proxy (`common::proxy`). Each test names its sinks apart: the
//! target's `eddy_sink_progress` is keyed by sink name.

mod common;

use std::time::{Duration, Instant};

use common::process::EddyProcess;
use common::proxy::FreezableProxy;
use common::{connect_postgres, execute, postgres_rows, query_text};

/// `sql` answers (OK or error) within `bound`; returns the error if any.
async fn answers_within(
    client: &tokio_postgres::Client,
    sql: &str,
    bound: Duration,
) -> Option<tokio_postgres::Error> {
    let started = Instant::now();
    let result = tokio::time::timeout(bound, client.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("`{sql}` did not answer within {bound:?}"));
    eprintln!("`{sql}` answered in {:?}", started.elapsed());
    result.err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_target_delays_only_its_sink() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_stall")
        .await
        .unwrap();
    let (proxy, through_proxy) = FreezableProxy::to_test_postgres().await;

    let dir = std::env::temp_dir().join(format!("eddy-sink-stall-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut eddy = EddyProcess::spawn(&dir, &["--checkpoint-interval", "200ms"], &[]);
    let client = eddy.connect().await;
    execute(
        &client,
        &format!(
            "CREATE TABLE t (k INT PRIMARY KEY, v INT);
             CREATE MATERIALIZED VIEW v AS SELECT k, v FROM t;
             CREATE SINK s FROM v WITH (connector = 'postgres', url = '{through_proxy}',
                 table = 'sink_stall', primary_key = 'k', create_table = 'true');
             INSERT INTO t VALUES (0, 0);
             FLUSH"
        ),
    )
    .await;

    proxy.freeze(true);
    // Everything but the sink goes on, many checkpoints later.
    for k in 1..=200 {
        execute(&client, &format!("INSERT INTO t VALUES ({k}, {k})")).await;
    }
    let bound = Duration::from_secs(20);
    assert!(answers_within(&client, "CHECKPOINT", bound).await.is_none());
    assert!(answers_within(&client, "CREATE TABLE other (a INT)", bound)
        .await
        .is_none());
    assert!(
        answers_within(&client, "INSERT INTO other VALUES (1)", bound)
            .await
            .is_none()
    );
    // A new sink to the silent target: refused once the check times out.
    let started = Instant::now();
    let refused = answers_within(
        &client,
        &format!(
            "CREATE SINK s2 FROM v WITH (connector = 'postgres', url = '{through_proxy}',
                 table = 'sink_stall_2', primary_key = 'k', create_table = 'true')"
        ),
        Duration::from_secs(40),
    )
    .await
    .expect("CREATE SINK to a silent target fails");
    assert_eq!(refused.code().map(|c| c.code()), Some("08001"));
    assert!(common::describe(&refused).contains("did not answer within 30 s"));
    eprintln!(
        "CREATE SINK to a silent target answered in {:?}",
        started.elapsed()
    );
    let flush = answers_within(&client, "FLUSH", bound)
        .await
        .expect("FLUSH names the sink that did not write");
    let message = common::describe(&flush);
    assert!(message.contains("sink s has not written it"), "{message}");
    assert_eq!(
        query_text(&client, "SELECT count(*) FROM v").await,
        vec![vec!["201".to_string()]]
    );

    // The target answers again: the sink catches up, exactly once.
    proxy.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if client.simple_query("FLUSH").await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the sink did not catch up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rows = postgres_rows(&pg, "SELECT count(*)::TEXT, sum(v)::TEXT FROM sink_stall").await;
    assert_eq!(rows, vec![vec!["201".to_string(), "20100".to_string()]]);

    // SIGTERM answers while the sink is frozen again.
    proxy.freeze(true);
    execute(&client, "INSERT INTO t VALUES (999, 1)").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    drop(client);
    eddy.terminate();
    eprintln!("SIGTERM with a frozen sink took {:?}", started.elapsed());
    proxy.freeze(false);
}

/// A target that takes nothing for long enough that the sink's backlog
/// passes `--sink-backlog-limit` fails the sink instead of growing eddy's
/// memory and checkpoints without bound; the backlog is dropped, so the
/// sink stays failed (also across a restart: writing later epochs would
/// leave a gap) until it is created again, which starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_its_limit_fails_the_sink_for_good() {
    let pg = connect_postgres().await;
    pg.batch_execute("DROP TABLE IF EXISTS sink_overflow")
        .await
        .unwrap();
    let (proxy, through_proxy) = FreezableProxy::to_test_postgres().await;
    let dir = std::env::temp_dir().join(format!("eddy-sink-overflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = [
        "--checkpoint-interval",
        "200ms",
        "--sink-backlog-limit",
        "1MB",
    ];
    let mut eddy = EddyProcess::spawn(&dir, &args, &[]);
    let client = eddy.connect().await;
    let create_sink = format!(
        "CREATE SINK overflowing FROM v WITH (connector = 'postgres', url = '{through_proxy}',
             table = 'sink_overflow', primary_key = 'k', create_table = 'true')"
    );
    execute(
        &client,
        &format!(
            "CREATE TABLE t (k INT PRIMARY KEY, body TEXT);
             CREATE MATERIALIZED VIEW v AS SELECT k, body FROM t;
             {create_sink};
             INSERT INTO t VALUES (0, 'first');
             FLUSH"
        ),
    )
    .await;
    proxy.freeze(true);
    // About 3 MB of rows in several epochs (checkpoints every 200 ms) wait
    // for the frozen target.
    for chunk in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        execute(
            &client,
            &format!(
                "INSERT INTO t SELECT k, repeat('x', 1000) FROM generate_series({}, {}) AS g(k)",
                chunk * 500 + 1,
                chunk * 500 + 500
            ),
        )
        .await;
    }
    let status = "SELECT status FROM eddy_catalog.sinks WHERE name = 'overflowing'";
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let status = query_text(&client, status).await[0][0].clone();
        if status.starts_with("failed:") {
            break status;
        }
        assert!(Instant::now() < deadline, "the sink did not fail: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        failed.contains("more than the 1 MB") && failed.contains("CREATE SINK again"),
        "{failed}"
    );
    // The rest goes on.
    execute(&client, "INSERT INTO t VALUES (5000, 'later'); CHECKPOINT").await;

    // Failed for good, also after a restart and with the target back; its
    // figures are kept.
    let written = "SELECT rows_written FROM eddy_catalog.sinks WHERE name = 'overflowing'";
    assert_eq!(query_text(&client, written).await, vec![vec!["1"]]);
    drop(client);
    eddy.terminate();
    proxy.freeze(false);
    let mut eddy = EddyProcess::spawn(&dir, &args, &[]);
    let client = eddy.connect().await;
    let status = query_text(&client, status).await[0][0].clone();
    assert_eq!(query_text(&client, written).await, vec![vec!["1"]]);
    assert!(
        status.starts_with("failed:") && status.contains("CREATE SINK again"),
        "{status}"
    );
    let flush = client
        .simple_query("FLUSH")
        .await
        .expect_err("the sink failed");
    assert!(common::describe(&flush).contains("sink overflowing failed"));
    let count = "SELECT count(*)::TEXT FROM sink_overflow";
    assert_eq!(postgres_rows(&pg, count).await, vec![vec!["1".to_string()]]);

    // Created again, it starts over from the view: everything arrives.
    execute(
        &client,
        &format!("DROP SINK overflowing; {create_sink}; FLUSH"),
    )
    .await;
    assert_eq!(
        postgres_rows(&pg, count).await,
        vec![vec!["3002".to_string()]]
    );
    drop(client);
    eddy.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}
