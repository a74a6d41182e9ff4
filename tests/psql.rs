//! The real psql client against eddy: the README's quick-start session
//! (`examples/quickstart.sql`) runs with `psql -f` and prints exactly
//! `examples/quickstart.out`; psql's list meta-commands (`\dt`, `\dm`,
//! `\dv`, `\d`, `\dn`, `\l`, `\df`) answer from eddy's catalog; RETURNING
//! prints its rows and then the command tag. psql comes from
//! scripts/install-test-deps.sh.

mod common;

use common::{psql, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_session_runs_in_psql() {
    let server = TestServer::start().await;
    let root = common::project_dir();
    let output = psql(
        server.port(),
        vec!["-f".into(), format!("{root}/examples/quickstart.sql")],
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_meta_commands_answer() {
    let server = TestServer::start().await;
    let commands = [
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT)",
        "CREATE MATERIALIZED VIEW per_customer AS SELECT customer, count(*) AS n FROM orders GROUP BY customer",
        "\\dt",
        "\\dm",
        "\\dv",
        "\\d",
        "\\dn",
        "\\l",
        "\\df",
        "\\d orders",
        "\\d per_customer",
    ];
    let output = psql(
        server.port(),
        commands
            .iter()
            .flat_map(|c| ["-c".to_string(), c.to_string()])
            .collect(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}\n{stdout}");
    // psql says an empty list (\\dv: eddy has no plain views) on stderr.
    assert_eq!(stderr.trim(), "Did not find any relations.", "{stderr}");
    for expected in [
        " public | orders | table | eddy",
        " public | per_customer | materialized view | eddy",
        " eddy_catalog | eddy",
        " eddy | eddy  | UTF8",
        "List of functions",
        // \d <name>: columns, types, nullability and the primary key.
        "Table \"public.orders\"",
        " id | bigint | | not null |",
        " customer | text | | |",
        "Indexes: \"orders_pkey\" PRIMARY KEY, btree (id)",
        "Materialized view \"public.per_customer\"",
        " n | bigint | | |",
    ] {
        let squeezed: String = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        let wanted: String = expected.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            squeezed.contains(&wanted),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_prints_its_rows_then_the_command_tag() {
    let server = TestServer::start().await;
    let commands = [
        "CREATE TABLE t (id INT PRIMARY KEY, n INT)",
        "INSERT INTO t VALUES (1, 2), (2, 3) RETURNING id, n * 10",
        "UPDATE t SET n = n + 1 WHERE id = 2 RETURNING n",
        "DELETE FROM t WHERE id = 1 RETURNING *",
    ];
    let output = psql(
        server.port(),
        commands
            .iter()
            .flat_map(|c| ["-c".to_string(), c.to_string()])
            .collect(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}\n{stdout}");
    assert!(stderr.trim().is_empty(), "{stderr}");
    let squeezed: String = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "id | ?column? ----+---------- 1 | 20 2 | 30 (2 rows) INSERT 0 2",
        "n --- 4 (1 row) UPDATE 1",
        "id | n ----+--- 1 | 2 (1 row) DELETE 1",
    ] {
        assert!(
            squeezed.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    server.stop().await;
}
