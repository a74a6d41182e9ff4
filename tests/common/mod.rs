//! Shared helpers for integration tests: an in-process eddy server and a
//! connected client.

#![allow(dead_code)]

pub mod kafka;
pub mod process;
pub mod proxy;

/// The checkout the tests run from. Cargo sets `CARGO_MANIFEST_DIR` when it
/// runs a test; the compile-time value can name another clone when clones
/// share a target directory (as `scripts/test.sh` makes them do).
pub fn project_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}

/// The PostgreSQL JDBC driver scripts/install-test-deps.sh fetches
/// (`EDDY_PGJDBC_JAR`).
pub fn pgjdbc_jar() -> String {
    std::env::var("EDDY_PGJDBC_JAR").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/eddy/jdbc/postgresql-42.7.14.jar")
    })
}

/// The Python venv scripts/install-test-deps.sh makes
/// (`EDDY_PYTHON_VENV`).
pub fn python_venv() -> String {
    std::env::var("EDDY_PYTHON_VENV").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/eddy/python-venv")
    })
}

use tokio_postgres::{Client, NoTls};

pub struct TestServer {
    pub server: eddy::Server,
}

impl TestServer {
    /// A server whose keyed operators run as two shards (`--workers 2`),
    /// so that the end-to-end tests cover the split operators; the SQL
    /// logic tests run with the default of one.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`TestServer::start`] with more options set by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut eddy::ServerOptions)) -> Self {
        let mut options = eddy::ServerOptions::new("127.0.0.1:0".parse().expect("address"));
        options.workers = 2;
        configure(&mut options);
        let server = eddy::Server::start_with_options(options)
            .await
            .expect("eddy starts");
        Self { server }
    }

    pub fn port(&self) -> u16 {
        self.server.local_addr.port()
    }

    pub fn connection_string(&self) -> String {
        format!("host=127.0.0.1 port={} user=eddy dbname=eddy", self.port())
    }

    pub async fn connect(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.connection_string(), NoTls)
            .await
            .expect("connects to eddy");
        tokio::spawn(connection);
        client
    }

    pub async fn stop(self) {
        self.server.stop().await
    }
}

/// Runs `sql` with the simple protocol; returns the rows as text (NULL as
/// "NULL"), panicking with the server's message on error.
pub async fn query_text(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    eddy::bench::text_rows(messages)
}

pub async fn execute(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
}

pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// The real PostgreSQL the sink tests write to (scripts/postgres.sh starts it).
pub fn postgres_url() -> String {
    std::env::var("EDDY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/eddy_test".to_string())
}

/// A direct connection to that PostgreSQL, in UTC.
pub async fn connect_postgres() -> Client {
    let url = postgres_url();
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {url} (start it with scripts/postgres.sh start): {e}"
            )
        });
    tokio::spawn(connection);
    client
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .expect("set time zone");
    client
}

/// All rows of a query on the real PostgreSQL, as text, sorted.
pub async fn postgres_rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let mut rows = query_text(client, sql).await;
    rows.sort();
    rows
}

/// All rows of a query on eddy, as text, sorted.
pub async fn sorted_rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let mut rows = query_text(client, sql).await;
    rows.sort();
    rows
}

/// Runs the real psql against eddy on `port` with `args` (after the
/// connection options); its output.
pub async fn psql(port: u16, args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("psql")
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "eddy",
                "-d",
                "eddy",
            ])
            .args(["-p", &port.to_string()])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
    })
    .await
    .expect("psql task")
    .expect("psql is installed (scripts/install-test-deps.sh installs it)")
}

/// Polls `sql`'s first value until `accept` takes it (at most 60 s);
/// panics with the last rows and `expected` otherwise.
pub async fn first_value_until(
    client: &Client,
    sql: &str,
    expected: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = query_text(client, sql).await;
        let value = rows.first().and_then(|r| r.first()).cloned();
        if let Some(value) = value.filter(|v| accept(v)) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql}: still {rows:?}, expected {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
