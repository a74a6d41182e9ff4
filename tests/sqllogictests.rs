//! Runs every `sql-tests/*.slt` file against a real eddy server over the
//! Postgres wire protocol (tokio-postgres, simple query protocol), with
//! results compared as the text psql would print. Each file gets a fresh
//! server. `cargo test --test sqllogictests -- <substring>` runs matching
//! files only.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use tokio_postgres::{NoTls, SimpleQueryMessage};

struct EddyConnection {
    client: tokio_postgres::Client,
}

/// A statement's error as psql shows it: message, then DETAIL.
#[derive(Debug)]
struct StatementError {
    message: String,
    sqlstate: Option<String>,
}

impl std::fmt::Display for StatementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StatementError {}

impl From<tokio_postgres::Error> for StatementError {
    fn from(error: tokio_postgres::Error) -> Self {
        let message = match error.as_db_error() {
            Some(db) => match db.detail() {
                Some(detail) => format!("{}\nDETAIL: {detail}", db.message()),
                None => db.message().to_string(),
            },
            None => error.to_string(),
        };
        Self {
            message,
            sqlstate: error.code().map(|c| c.code().to_string()),
        }
    }
}

#[async_trait]
impl AsyncDB for EddyConnection {
    type Error = StatementError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Self::Error> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = 0;
        let mut returned_rows = false;
        let mut affected = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(description) => {
                    returned_rows = true;
                    columns = description.len();
                }
                SimpleQueryMessage::Row(row) => {
                    returned_rows = true;
                    columns = row.len();
                    rows.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(value) => value.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        if returned_rows {
            Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; columns],
                rows,
            })
        } else {
            Ok(DBOutput::StatementComplete(affected))
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "eddy"
    }

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await
    }

    fn error_sql_state(error: &Self::Error) -> Option<String> {
        error.sqlstate.clone()
    }
}

async fn run_file(path: &PathBuf) -> Result<(), String> {
    let server = eddy::Server::start("127.0.0.1:0".parse().expect("address"))
        .await
        .map_err(|e| format!("cannot start eddy: {e}"))?;
    let port = server.local_addr.port();
    let mut runner = Runner::new(move || async move {
        let config = format!("host=127.0.0.1 port={port} user=eddy dbname=eddy");
        let (client, connection) = tokio_postgres::connect(&config, NoTls)
            .await
            .map_err(StatementError::from)?;
        tokio::spawn(connection);
        Ok(EddyConnection { client })
    });
    let result = runner
        .run_file_async(path)
        .await
        .map_err(|e| e.display(true).to_string());
    server.stop().await;
    result
}

fn main() {
    // sinks.slt writes to the real PostgreSQL that scripts/postgres.sh starts.
    if std::env::var_os("EDDY_TEST_PG_URL").is_none() {
        std::env::set_var(
            "EDDY_TEST_PG_URL",
            "postgres://postgres@127.0.0.1:54329/eddy_test",
        );
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut files: Vec<PathBuf> =
        // At run time: the compile-time path can name another clone that
        // shares the target directory.
        std::fs::read_dir(format!(
            "{}/sql-tests",
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
        ))
            .expect("sql-tests directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "slt"))
            .filter(|p| {
                filter.is_empty()
                    || filter
                        .iter()
                        .any(|f| p.to_string_lossy().contains(f.as_str()))
            })
            .collect();
    files.sort();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        match runtime.block_on(run_file(file)) {
            Ok(()) => {
                passed += 1;
                println!("test sql-tests/{name} ... ok");
            }
            Err(e) => {
                failed += 1;
                println!("test sql-tests/{name} ... FAILED\n{e}");
            }
        }
    }
    println!("\nsqllogictests: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
