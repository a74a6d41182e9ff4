//! Benchmarks a user runs against their own build: `eddy bench nexmark`
//! (and `cargo bench --bench nexmark`, which runs the same code).
//!
//! Figures are events per CPU-second of the measuring process (user +
//! system), which a shared machine's noise moves less than wall time, with
//! a baseline measured in the same run beside them.

pub mod nexmark;

use tokio_postgres::{Client, SimpleQueryMessage};

/// This process's CPU time (user + system), from /proc/self/stat; 0 where
/// there is no /proc.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses).
    let Some(end) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0, // USER_HZ
        _ => 0.0,
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

/// Resident set size of this process now (VmRSS), in bytes.
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A `kB` figure of `/proc/self/status`, in bytes (0 if unreadable).
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The machine's core count and the commit of the checkout in the current
/// directory (or eddy's version outside one), printed with figures.
pub fn cores_and_commit() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| format!("v{}", env!("CARGO_PKG_VERSION")));
    (cores, commit)
}

/// A benchmark's failure, as the message to print.
pub type BenchResult<T> = std::result::Result<T, String>;

/// Runs statements; a failure fails the benchmark, naming the statement.
pub async fn execute(client: &Client, sql: &str) -> BenchResult<()> {
    client.batch_execute(sql).await.map_err(|e| failed(sql, e))
}

/// The rows of a query, as text (NULL as "NULL").
pub async fn rows(client: &Client, sql: &str) -> BenchResult<Vec<Vec<String>>> {
    let messages = client.simple_query(sql).await.map_err(|e| failed(sql, e))?;
    Ok(text_rows(messages))
}

/// A statement's failure: the server's message and SQLSTATE when it sent
/// one (the client error alone says only "db error").
fn failed(sql: &str, error: tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{sql}: {} ({})", db.message(), db.code().code()),
        None => format!("{sql}: {error}"),
    }
}

/// The rows among a simple query's messages, as text (NULL as "NULL").
pub fn text_rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
