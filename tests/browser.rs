//! eddy's web page in headless Chromium, driven by Selenium from the venv
//! scripts/install-test-deps.sh makes (`EDDY_PYTHON_VENV`): the page lists
//! the views, draws a running view's operator graph, and its numbers change
//! as rows arrive (see tests/browser/web_page.py).
//!
//! `EDDY_SCREENSHOT=path.png` also saves a screenshot of the page (the one
//! in docs/operations.md was made so).

mod common;

use std::process::Command;

use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_live_views_in_a_browser() {
    let server = eddy::Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .expect("eddy starts");
    let http = server.http_addr.expect("the HTTP endpoint listens");
    let pg_port = server.local_addr.port();
    let (client, connection) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={pg_port} user=eddy"), NoTls)
            .await
            .expect("connects");
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE clicks (page TEXT, ms INT);
             CREATE MATERIALIZED VIEW per_page AS
               SELECT page, count(*) AS hits, sum(ms) AS total_ms FROM clicks GROUP BY page;
             CREATE MATERIALIZED VIEW busy_pages AS
               SELECT page, hits FROM per_page WHERE hits > 1;
             INSERT INTO clicks VALUES ('/a', 5), ('/b', 7), ('/a', 9);
             FLUSH",
        )
        .await
        .expect("schema");
    let venv = common::python_venv();
    let script = format!("{}/tests/browser/web_page.py", common::project_dir());
    let mut args = vec![script, format!("http://{http}"), pg_port.to_string()];
    if let Ok(path) = std::env::var("EDDY_SCREENSHOT") {
        args.push(path);
    }
    let output = tokio::task::spawn_blocking(move || {
        Command::new(format!("{venv}/bin/python"))
            .args(&args)
            .output()
    })
    .await
    .expect("browser task")
    .expect("the test venv exists (scripts/install-test-deps.sh makes it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains("browser ok"), "{stdout}");
    server.stop().await;
}
