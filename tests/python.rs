//! Real Python client libraries against eddy: SQLAlchemy's inspector over
//! psycopg (what Superset and notebooks use), from the venv
//! scripts/install-test-deps.sh makes (`EDDY_PYTHON_VENV`).

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
    let venv = common::python_venv();
    let script = format!("{}/tests/python/inspect_eddy.py", common::project_dir());
    let port = server.port().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(format!("{venv}/bin/python"))
            .args([&script, &port])
            .output()
    })
    .await
    .expect("python task")
    .expect("the test venv exists (scripts/install-test-deps.sh makes it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SQLAlchemy client failed:\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains("sqlalchemy ok"), "{stdout}");
    server.stop().await;
}
