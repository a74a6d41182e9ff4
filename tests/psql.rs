//! The real psql client against eddy: the README's quick-start session
//! (`examples/quickstart.sql`) runs with `psql -f` and prints exactly
//! `examples/quickstart.out`. psql comes from scripts/install-test-deps.sh.

mod common;

use std::process::Command;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_session_runs_in_psql() {
    let server = TestServer::start().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let port = server.port().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args([
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "eddy",
                "-d",
                "eddy",
            ])
            .args(["-f", &format!("{root}/examples/quickstart.sql")])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
    })
    .await
    .expect("psql task")
    .expect("psql is installed (scripts/install-test-deps.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}\n{stdout}");
    let expected = std::fs::read_to_string(format!("{root}/examples/quickstart.out"))
        .expect("expected output");
    assert_eq!(
        stdout, expected,
        "psql output differs from examples/quickstart.out"
    );
    server.stop().await;
}
