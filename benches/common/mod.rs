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
