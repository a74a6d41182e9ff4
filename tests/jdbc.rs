//! A real JDBC client against eddy: `tests/jdbc/JdbcSmoke.java` run by the
//! machine's Java with the PostgreSQL JDBC driver that
//! scripts/install-test-deps.sh fetches from Maven Central
//! (`EDDY_PGJDBC_JAR`).

mod common;

use std::process::Command;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_prepared_statements_and_views() {
    let jar = common::pgjdbc_jar();
    assert!(
        std::path::Path::new(&jar).exists(),
        "the PostgreSQL JDBC driver is missing at {jar}: run scripts/install-test-deps.sh"
    );
    let server = TestServer::start().await;
    let port = server.port().to_string();
    let source = format!("{}/tests/jdbc/JdbcSmoke.java", common::project_dir());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("java")
            .args(["-cp", &jar, &source, &port])
            .output()
    })
    .await
    .expect("java task")
    .expect("java is installed (scripts/install-test-deps.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "JDBC client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("jdbc ok"), "{stdout}");
    server.stop().await;
}
