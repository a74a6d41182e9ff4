//! Acknowledged writes are durable: a table write answered OK survives a
//! kill -9 whether or not a checkpoint came after it (the write-ahead log
//! holds it), and a write the log cannot take fails with 53100 / 58030 and
//! leaves nothing behind.
//!
//! Real processes (the `eddy` binary). The disk-full test mounts a small
//! tmpfs, so the suite runs as root (as scripts/test.sh does).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::EddyProcess;
use common::{execute, query_text};
use tokio_postgres::Client;

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn count(client: &Client, sql: &str) -> i64 {
    query_text(client, sql).await[0][0]
        .parse()
        .expect("a count")
}

/// Single-row INSERTs from `clients` concurrent sessions, `per_client`
/// each, keys `from..`, every one acknowledged.
async fn insert_concurrently(eddy: &mut EddyProcess, clients: i64, per_client: i64, from: i64) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = eddy.connect().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let k = from + c * per_client + i;
                client
                    .simple_query(&format!("INSERT INTO t VALUES ({k}, {})", k % 7))
                    .await
                    .expect("insert acknowledged");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_without_a_checkpoint() {
    let dir = test_dir("kill");
    // Checkpoints only at DDL: every write below is in the log alone.
    let mut eddy = EddyProcess::spawn(&dir, &["--checkpoint-interval", "0"], &[]);
    let client = eddy.connect().await;
    execute(
        &client,
        "CREATE TABLE t (k BIGINT PRIMARY KEY, g BIGINT);
         CREATE MATERIALIZED VIEW per_g AS SELECT g, count(*) AS n FROM t GROUP BY g",
    )
    .await;
    insert_concurrently(&mut eddy, 8, 250, 0).await;
    // Batches, updates and deletes too.
    execute(
        &client,
        "INSERT INTO t SELECT v, v % 7 FROM generate_series(10000, 19999) AS s(v);
         UPDATE t SET g = 100 WHERE k < 500;
         DELETE FROM t WHERE k >= 19000",
    )
    .await;
    eddy.kill();

    let mut eddy = EddyProcess::spawn(&dir, &["--checkpoint-interval", "0"], &[]);
    let client = eddy.connect().await;
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 2000 + 9000);
    assert_eq!(
        count(&client, "SELECT count(*) FROM t WHERE g = 100").await,
        500
    );
    // The view saw the replayed writes as changes.
    execute(&client, "FLUSH").await;
    assert_eq!(count(&client, "SELECT sum(n) FROM per_g").await, 11000);
    assert_eq!(
        count(&client, "SELECT n FROM per_g WHERE g = 100").await,
        500
    );
    assert!(
        eddy.log().contains("replayed_writes"),
        "recovery reports the replayed writes:\n{}",
        eddy.log()
    );

    // Writes after a replay and a checkpoint, then another kill: the log
    // goes on from where it was, and what the checkpoint holds is not
    // applied twice.
    execute(&client, "CHECKPOINT").await;
    insert_concurrently(&mut eddy, 2, 100, 50_000).await;
    execute(&client, "SET synchronous_commit = off").await;
    execute(&client, "INSERT INTO t VALUES (90000, 1), (90001, 1)").await;
    eddy.kill();
    let mut eddy = EddyProcess::spawn(&dir, &["--checkpoint-interval", "0"], &[]);
    let client = eddy.connect().await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM t").await,
        11000 + 200 + 2
    );
    execute(&client, "FLUSH").await;
    assert_eq!(count(&client, "SELECT sum(n) FROM per_g").await, 11202);
    eddy.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_trimmed_once_checkpoints_hold_its_records() {
    let dir = test_dir("trim");
    let mut eddy = EddyProcess::spawn(&dir, &["--checkpoint-interval", "100ms"], &[]);
    let client = eddy.connect().await;
    execute(&client, "CREATE TABLE t (k BIGINT PRIMARY KEY, g BIGINT)").await;
    let wal = dir.join("wal");
    let segments = |wal: &Path| std::fs::read_dir(wal).map(|d| d.count()).unwrap_or(0);
    // Enough to fill more than one segment would take long; instead:
    // records written, then a checkpoint every 100 ms for > 10 s (the trim
    // interval): the segment holding them goes.
    execute(
        &client,
        "INSERT INTO t SELECT v, v * 2 FROM generate_series(1, 1000) AS s(v)",
    )
    .await;
    let with_records = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(with_records > 1000, "the rows are in the log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let biggest = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .max()
            .unwrap_or(0);
        if biggest < 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not trimmed: {} segments",
            segments(&wal)
        );
        execute(&client, "CHECKPOINT").await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // After the trim a kill -9 loses nothing: the checkpoint has them.
    eddy.kill();
    let mut eddy = EddyProcess::spawn(&dir, &[], &[]);
    let client = eddy.connect().await;
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, 1000);
    eddy.terminate();
}

/// A tmpfs of `megabytes` at `dir` (unmounted when dropped).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, megabytes: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed: this test needs root (scripts/test.sh runs as root)",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while filler.write_all(&small).is_ok() {}
    let _ = filler.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_and_loses_nothing_acknowledged() {
    let root = test_dir("full");
    let mount = root.join("disk");
    let _tmpfs = Tmpfs::mount(&mount, 48);
    let data = mount.join("data");
    // Data dir, log and eddy's own log file all on the small disk.
    let mut eddy = EddyProcess::spawn(&data, &["--checkpoint-interval", "0"], &[]);
    let client = eddy.connect().await;
    execute(
        &client,
        "CREATE TABLE t (k BIGINT PRIMARY KEY, g BIGINT);
         INSERT INTO t SELECT v, 0 FROM generate_series(1, 100) AS s(v)",
    )
    .await;
    fill(&mount);
    // Writes fail with 53100 and change nothing; reads go on.
    let mut refused = 0;
    for k in 1000..1020 {
        match client
            .simple_query(&format!("INSERT INTO t VALUES ({k}, 1)"))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                assert_eq!(code, "53100", "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "a full disk refused no write");
    let acknowledged = 100 + (20 - refused);
    assert_eq!(count(&client, "SELECT count(*) FROM t").await, acknowledged);
    // A table created now cannot be made durable: CREATE TABLE says so, and
    // the table takes no write (a crash would forget it, and the writes).
    let created = client
        .simple_query("CREATE TABLE later (k BIGINT)")
        .await
        .expect_err("no checkpoint can hold it");
    let message = common::describe(&created);
    assert!(
        message.contains("not durable yet") && message.contains("takes no writes"),
        "{message}"
    );
    let write = client
        .simple_query("INSERT INTO later VALUES (1)")
        .await
        .expect_err("refused");
    assert_eq!(write.code().map(|c| c.code()), Some("55000"), "{write:?}");
    // Space again: writes resume, into the new table too once a checkpoint
    // holds it.
    std::fs::remove_file(mount.join("filler")).unwrap();
    execute(&client, "INSERT INTO t VALUES (5000, 2)").await;
    execute(&client, "CHECKPOINT; INSERT INTO later VALUES (1)").await;
    eddy.kill();
    let mut eddy = EddyProcess::spawn(&data, &["--checkpoint-interval", "0"], &[]);
    let client = eddy.connect().await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM t").await,
        acknowledged + 1
    );
    assert_eq!(count(&client, "SELECT count(*) FROM later").await, 1);
    eddy.terminate();
}
