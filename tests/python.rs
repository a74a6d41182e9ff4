//! Real Python client libraries against eddy: SQLAlchemy's inspector over
//! psycopg (what Superset and notebooks use) and psycopg's streaming of a
//! SUBSCRIBE, from the venv scripts/install-test-deps.sh makes
//! (`EDDY_PYTHON_VENV`).

mod common;

use std::process::Command;

use common::{execute, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_inspects_and_queries_eddy() {
    let server = TestServer::start().await;
    let eddy = server.connect().await;
    execute(
        &eddy,
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT, amount INT);
         CREATE MATERIALIZED VIEW per_customer AS
           SELECT customer, count(*) AS n, sum(amount) AS total FROM orders GROUP BY customer;
         INSERT INTO orders VALUES (1, 'ann', 10), (2, 'ann', 5), (3, 'bob', 7);
         FLUSH",
    )
    .await;
    let stdout = run_script("inspect_eddy.py", server.port()).await;
    assert!(stdout.contains("sqlalchemy ok"), "{stdout}");
    // The same schema, streamed: ends when the script breaks out of the
    // stream (closing its connection).
    let stdout = run_script("stream_subscribe.py", server.port()).await;
    assert!(stdout.contains("stream ok"), "{stdout}");
    server.stop().await;
}

/// Runs `tests/python/<script> <port>` in the test venv; its stdout, after
/// checking it succeeded.
async fn run_script(script: &str, port: u16) -> String {
    let venv = common::python_venv();
    let script = format!("{}/tests/python/{script}", common::project_dir());
    let port = port.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(format!("{venv}/bin/python"))
            .args([&script, &port])
            .output()
    })
    .await
    .expect("python task")
    .expect("the test venv exists (scripts/install-test-deps.sh makes it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stderr}\n{stdout}"
    );
    stdout
}
