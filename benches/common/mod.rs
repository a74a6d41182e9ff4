//! Helpers every benchmark uses: settings from the environment, and
//! running SQL against eddy (failures panic: a failed statement fails the
//! benchmark). The CPU clock and the machine's cores and commit are
//! `eddy::bench`'s, which `eddy bench` uses too.

#![allow(dead_code)]

use tokio_postgres::{Client, SimpleQueryMessage};

/// A number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs statements; a failure is the benchmark's failure.
pub async fn run(client: &Client, sql: &str) {
    eddy::bench::execute(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The first column of the first row, if there is one and it is not NULL.
pub async fn first_value(client: &Client, sql: &str) -> Option<String> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    })
}

/// A client of role `eddy` of the in-process server `server`.
pub async fn connect(server: &eddy::Server) -> Client {
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=eddy dbname=eddy",
            server.local_addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connects");
    tokio::spawn(connection);
    client
}

/// An empty directory `eddy-bench-<name>-<pid>` under the system temp dir.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
