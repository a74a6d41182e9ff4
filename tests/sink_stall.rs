//! A sink whose target stops answering delays only that sink: writes to
//! tables, DDL, CHECKPOINT, FLUSH (which names the sink) and SIGTERM all
//! answer in bounded time; once the target answers again the sink catches
//! up, exactly once.
//!
//! The target is the real PostgreSQL (scripts/postgres.sh) behind a TCP
//! proxy in this test that can freeze: connections stay open, nothing is
//! forwarded (a SIGSTOPped server, a hung network path).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::EddyProcess;
use common::{connect_postgres, execute, postgres_rows, postgres_url, query_text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback proxy to `target` that forwards until frozen.
struct FreezableProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl FreezableProxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, flag.clone()));
                    pump(server_read, client_write, flag).await;
                });
            }
        });
        Self { port, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding the bytes while the flag is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

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
    let target = postgres_url();
    let host_port = target
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the test Postgres URL")
        .to_string();
    let proxy = FreezableProxy::start(host_port.clone()).await;
    let through_proxy = target.replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);

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
