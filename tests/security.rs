//! Issue 29's attacks, each against a real eddy process (the binary, with
//! its own runtime and threads), each checking the answer and that a
//! healthy client is still served after it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{free_port, EddyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

/// A fresh directory for one test's eddy.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-security-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|db| db.code().code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

/// Runs `sql` and expects it to fail with `code`; returns the message.
async fn refused(client: &Client, sql: &str, code: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql}: accepted, expected {code}"),
        Err(e) => {
            assert_eq!(sqlstate(&e), code, "{sql}: {e:?}");
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default()
        }
    }
}

async fn one_value(client: &Client, sql: &str) -> String {
    let rows = common::query_text(client, sql).await;
    rows.first()
        .and_then(|r| r.first())
        .cloned()
        .unwrap_or_else(|| panic!("{sql}: no value"))
}

/// A healthy client is served: connects, answers.
async fn healthy(eddy: &mut EddyProcess) {
    let client = eddy.connect().await;
    assert_eq!(one_value(&client, "SELECT 1 + 1").await, "2");
}

async fn connect_as(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("eddy");
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

// ---- raw protocol --------------------------------------------------------

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec(); // 3.0
    for (k, v) in [("user", user), ("database", "eddy")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Sends `bytes` on a fresh connection, closes the sending side, and
/// returns what came back until the server closed (or 10 s passed).
async fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return vec![];
    };
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}

/// The backend messages in `bytes` (a leading single-byte SSL answer is
/// skipped by the caller).
fn backend_messages(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let kind = bytes[at];
        let length =
            i32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        let Ok(length) = usize::try_from(length) else {
            break;
        };
        if length < 4 || at + 1 + length > bytes.len() {
            break;
        }
        out.push((kind, bytes[at + 5..at + 1 + length].to_vec()));
        at += 1 + length;
    }
    out
}

/// Field `field` (`b'C'`: the SQLSTATE, `b'M'`: the message) of each
/// ErrorResponse in `bytes`.
fn error_fields(bytes: &[u8], field: u8) -> Vec<String> {
    backend_messages(bytes)
        .into_iter()
        .filter(|(kind, _)| *kind == b'E')
        .filter_map(|(_, body)| {
            body.split(|b| *b == 0)
                .find(|f| f.first() == Some(&field))
                .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        })
        .collect()
}

fn error_codes(bytes: &[u8]) -> Vec<String> {
    error_fields(bytes, b'C')
}

fn error_messages(bytes: &[u8]) -> Vec<String> {
    error_fields(bytes, b'M')
}

fn panics_in(log: &str) -> usize {
    log.matches("panicked").count()
}

// ---- the attacks -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_options_reach_no_file_no_code_and_no_disallowed_host() {
    let dir = test_dir("options");
    let allowed = dir.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(
        allowed.join("bid.avsc"),
        r#"{"type":"record","name":"bid","fields":[{"name":"a","type":"long"}]}"#,
    )
    .unwrap();
    let mut eddy = EddyProcess::spawn(
        &dir.join("data"),
        &[
            "--allow-path",
            &allowed.to_string_lossy(),
            "--allow-connect",
            "127.0.0.1:9,localhost:9",
        ],
        &[],
    );
    let client = eddy.connect().await;
    let kafka = |extra: &str| {
        format!(
            "CREATE SOURCE s (a BIGINT) WITH (connector = 'kafka', topic = 't', \
             properties.bootstrap.server = '127.0.0.1:9'{extra}) FORMAT PLAIN ENCODE JSON"
        )
    };
    // Code, commands and files through librdkafka settings.
    for setting in [
        "plugin.library.paths = '/tmp/evil.so'",
        "sasl.kerberos.kinit.cmd = 'touch /tmp/pwned'",
        "ssl.engine.location = '/tmp/evil.so'",
        "ssl.ca.location = '/etc/passwd'",
        "sasl.oauthbearer.token.endpoint.url = 'http://127.0.0.1:1/'",
    ] {
        let sql = kafka(&format!(", properties.{setting}"));
        refused(&client, &sql, "42501").await;
    }
    // Avro schema files: outside the allowed directory, existing or not,
    // the same refusal; inside, read.
    let avro = |path: &str| {
        format!(
            "CREATE SOURCE a (a BIGINT) WITH (connector = 'kafka', topic = 't', \
             properties.bootstrap.server = '127.0.0.1:9') \
             FORMAT PLAIN ENCODE AVRO (schema.file = '{path}')"
        )
    };
    let exists = refused(&client, &avro("/etc/passwd"), "42501").await;
    let missing = refused(&client, &avro("/etc/no-such-file"), "42501").await;
    assert_eq!(
        exists.replace("/etc/passwd", "X"),
        missing.replace("/etc/no-such-file", "X"),
        "the refusal must not tell whether a file exists"
    );
    let escape = format!("{}/../../etc/passwd", allowed.display());
    refused(&client, &avro(&escape), "42501").await;
    // An allowed schema file passes the file check: what stops the source
    // then is the broker nobody runs on port 9 (checked at CREATE SOURCE).
    let inside = allowed.join("bid.avsc");
    let unreachable = refused(&client, &avro(&inside.to_string_lossy()), "08001").await;
    assert!(
        unreachable.contains("cannot reach the Kafka broker at 127.0.0.1:9"),
        "{unreachable}"
    );
    // Hosts outside --allow-connect, for sources and sinks.
    refused(
        &client,
        "CREATE SOURCE far (a BIGINT) WITH (connector = 'kafka', topic = 't', \
         properties.bootstrap.server = '10.255.255.1:9092') FORMAT PLAIN ENCODE JSON",
        "42501",
    )
    .await;
    common::execute(
        &client,
        "CREATE TABLE t (a INT); CREATE MATERIALIZED VIEW v AS SELECT a FROM t",
    )
    .await;
    refused(
        &client,
        "CREATE SINK probe FROM v WITH (connector = 'postgres', url = 'postgres://x@127.0.0.1:22/x', \
         table = 't', primary_key = 'a')",
        "42501",
    )
    .await;
    // CREATE EXTERNAL TABLE is refused, not turned into an empty table.
    refused(
        &client,
        "CREATE EXTERNAL TABLE pw (line TEXT) STORED AS CSV LOCATION '/etc/passwd'",
        "0A000",
    )
    .await;
    refused(&client, "SELECT * FROM pw", "42P01").await;
    healthy(&mut eddy).await;
    assert_eq!(panics_in(&eddy.log()), 0, "{}", eddy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_too_complex_are_refused_and_the_server_stays_up() {
    let mut eddy = EddyProcess::spawn(&test_dir("complex"), &[], &[]);
    let client = eddy.connect().await;
    let chain = |n: usize, op: &str| format!("SELECT {}", vec!["1"; n].join(op));
    let limit = eddy::sql::limits::MAX_OPERATOR_CHAIN;
    // At the limit: answered.
    assert_eq!(
        one_value(&client, &chain(limit + 1, "+")).await,
        (limit + 1).to_string()
    );
    for op in ["+", " AND ", " || "] {
        // The issue's 1,805 terms, and far more: refused, not fatal.
        for n in [1_805, 20_000] {
            let message = refused(&client, &chain(n, op), "54001").await;
            assert!(message.contains("too complex"), "{message}");
        }
    }
    let unions = |n: usize| vec!["SELECT 1"; n].join(" UNION ALL ");
    let sets = eddy::sql::limits::MAX_SET_OPERATIONS;
    let rows = common::query_text(&client, &unions(sets + 1)).await;
    assert_eq!(rows.len(), sets + 1);
    refused(&client, &unions(600), "54001").await;
    refused(&client, &unions(5_000), "54001").await;
    // Deep parentheses: the parser's own limit.
    let nested = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    refused(&client, &nested, "42601").await;
    // The same limits hold inside a view's definition.
    common::execute(&client, "CREATE TABLE t (a INT)").await;
    let view = format!(
        "CREATE MATERIALIZED VIEW v AS SELECT {} FROM t",
        vec!["a"; 5_000].join(" + ")
    );
    refused(&client, &view, "54001").await;
    healthy(&mut eddy).await;
    assert!(eddy.is_running());
    assert_eq!(panics_in(&eddy.log()), 0, "{}", eddy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_get_an_error_and_a_close() {
    let mut eddy = EddyProcess::spawn(&test_dir("protocol"), &["--max-message-size", "1MB"], &[]);
    eddy.wait_ready().await;
    let port = eddy.port;
    let session = |messages: &[Vec<u8>]| {
        let mut bytes = startup_packet("eddy");
        for m in messages {
            bytes.extend_from_slice(m);
        }
        bytes
    };
    // The fuzz test's smallest panic: a 12-byte Bind of `\0\0\0`.
    let out = exchange(port, &session(&[message(b'B', b"\0\0\0")])).await;
    assert_eq!(error_codes(&out), ["08P01"], "{out:?}");
    // A NUL inside a query: nothing of it runs.
    let out = exchange(
        port,
        &session(&[message(b'Q', b"SELECT 1\0CREATE TABLE injected (a INT)\0")]),
    )
    .await;
    assert_eq!(error_codes(&out), ["08P01"]);
    // Invalid UTF-8: refused, not replaced and run.
    let out = exchange(port, &session(&[message(b'Q', b"SELECT '\xff\xfe'\0")])).await;
    assert_eq!(error_codes(&out), ["22021"]);
    // An unknown message type, and a length below 4.
    let out = exchange(port, &session(&[message(b'!', b"")])).await;
    assert_eq!(error_codes(&out), ["08P01"]);
    let out = exchange(port, &session(&[vec![b'Q', 0, 0, 0, 2]])).await;
    assert_eq!(error_codes(&out), ["08P01"]);
    // A message declaring more than --max-message-size: refused before its
    // body is read (none is sent).
    let mut huge = vec![b'Q'];
    huge.extend_from_slice(&(64i32 << 20).to_be_bytes());
    let started = Instant::now();
    let out = exchange(port, &session(&[huge])).await;
    assert_eq!(error_codes(&out), ["54000"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    // A protocol version this server does not speak: named.
    let mut v4 = startup_packet("eddy");
    v4[4..8].copy_from_slice(&(4i32 << 16).to_be_bytes());
    let out = exchange(port, &v4).await;
    assert_eq!(error_codes(&out), ["0A000"]);
    assert!(error_messages(&out)[0].contains("server supports 3.0 to 3.2"));
    // A garbage first packet.
    let out = exchange(port, &[0x7f, 1, 2, 3, 4, 5, 6, 7, 8]).await;
    assert_eq!(error_codes(&out), ["08P01"]);
    // The injected table does not exist; the server is fine.
    let client = eddy.connect().await;
    refused(&client, "SELECT * FROM injected", "42P01").await;
    healthy(&mut eddy).await;
    assert_eq!(panics_in(&eddy.log()), 0, "{}", eddy.log());
}

/// A small seeded generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Well-formed frontend messages the fuzzer mutates.
fn seed_messages() -> Vec<Vec<u8>> {
    let bind = [
        b"\0s1\0".as_slice(),
        &1i16.to_be_bytes(),
        &0i16.to_be_bytes(),
        &1i16.to_be_bytes(),
        &1i32.to_be_bytes(),
        b"7",
        &0i16.to_be_bytes(),
    ]
    .concat();
    vec![
        message(b'Q', b"SELECT 1\0"),
        message(b'Q', b"SELECT * FROM pg_catalog.pg_class LIMIT 1\0"),
        message(
            b'P',
            &[
                b"s1\0SELECT $1::int + 1\0".as_slice(),
                &1i16.to_be_bytes(),
                &23i32.to_be_bytes(),
            ]
            .concat(),
        ),
        message(b'B', &bind),
        message(b'D', b"P\0"),
        message(b'D', b"S\0s1\0"),
        message(b'E', &[b"\0".as_slice(), &0i32.to_be_bytes()].concat()),
        message(b'C', b"S\0s1\0"),
        message(b'S', b""),
        message(b'H', b""),
        message(b'd', b"data"),
        message(b'c', b""),
        message(b'f', b"oops\0"),
        message(b'p', b"password\0"),
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    match rng.below(7) {
        // Flip bytes.
        0 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(m.len());
                m[at] ^= 1 << rng.below(8);
            }
        }
        // Truncate the body (and fix the length to match).
        1 if m.len() > 5 => {
            let keep = 5 + rng.below(m.len() - 5);
            m.truncate(keep);
            let length = (keep - 1) as i32;
            m[1..5].copy_from_slice(&length.to_be_bytes());
        }
        // A random length field.
        2 => {
            let length = match rng.below(4) {
                0 => -1,
                1 => rng.below(16) as i32,
                2 => (rng.next() >> 33) as i32,
                _ => i32::MAX,
            };
            m[1..5].copy_from_slice(&length.to_be_bytes());
        }
        // Random bytes appended inside the body.
        3 => {
            let extra: Vec<u8> = (0..rng.below(32)).map(|_| rng.next() as u8).collect();
            m.extend_from_slice(&extra);
            let length = (m.len() - 1) as i32;
            m[1..5].copy_from_slice(&length.to_be_bytes());
        }
        // A random type byte.
        4 => m[0] = rng.next() as u8,
        // Entirely random bytes.
        5 => m = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        // Unchanged (well-formed messages in odd orders).
        _ => {}
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_fuzz_never_panics_and_healthy_clients_are_served() {
    let mut eddy = EddyProcess::spawn(&test_dir("fuzz"), &[], &[]);
    eddy.wait_ready().await;
    let port = eddy.port;
    let seeds = seed_messages();
    let mut rng = Rng(0x5eed_edd1_2026 ^ 0x9e37_79b9_7f4a_7c15);
    let (cases, probe_every) = (2_000, 100);
    let mut sent = 0usize;
    let mut by_sqlstate: BTreeMap<String, usize> = BTreeMap::new();
    for case in 0..cases {
        // Mostly a good startup then mutated messages; sometimes a mutated
        // first packet.
        let mut bytes = if rng.below(10) == 0 {
            let mut first = startup_packet("eddy");
            let at = rng.below(first.len());
            first[at] = rng.next() as u8;
            first
        } else {
            startup_packet("eddy")
        };
        for _ in 0..=rng.below(5) {
            let seed = &seeds[rng.below(seeds.len())];
            bytes.extend_from_slice(&mutate(&mut rng, seed));
            sent += 1;
        }
        let out = exchange(port, &bytes).await;
        for code in error_codes(&out) {
            *by_sqlstate.entry(code).or_default() += 1;
        }
        if case % probe_every == 0 {
            healthy(&mut eddy).await;
        }
    }
    healthy(&mut eddy).await;
    let panics = panics_in(&eddy.log());
    eprintln!("protocol fuzz: {cases} connections, {sent} messages, errors by SQLSTATE {by_sqlstate:?}, panics {panics}");
    assert_eq!(panics, 0, "{}", eddy.log());
    assert!(eddy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_roles_and_grants_decide_who_does_what() {
    let dir = test_dir("roles");
    let mut eddy = EddyProcess::spawn(
        &dir,
        &["--auth", "password"],
        &[("EDDY_PASSWORD", "super secret")],
    );
    eddy.wait_ready().await;
    let port = eddy.port;
    // Any password used to work; now only the right one.
    let wrong = connect_as(port, "eddy", Some("guess"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&wrong), "28P01");
    let unknown = connect_as(port, "mallory", Some("x"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&unknown), "28P01");
    let admin = connect_as(port, "eddy", Some("super secret"))
        .await
        .expect("the superuser logs in");
    assert_eq!(one_value(&admin, "SELECT current_user").await, "eddy");
    common::execute(
        &admin,
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, amount INT);
         CREATE TABLE salaries (name TEXT, pay INT);
         CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(amount) AS total FROM orders;
         INSERT INTO orders VALUES (1, 10), (2, 5);
         CREATE ROLE dash WITH LOGIN PASSWORD 'dash pw';
         CREATE USER writer PASSWORD 'writer pw';
         CREATE ROLE nologin PASSWORD 'x';
         GRANT SELECT ON totals TO dash;
         GRANT INSERT ON orders TO writer;
         FLUSH",
    )
    .await;
    let nologin = connect_as(port, "nologin", Some("x"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&nologin), "28P01");
    let dash = connect_as(port, "dash", Some("dash pw"))
        .await
        .expect("dash logs in");
    assert_eq!(one_value(&dash, "SELECT current_user").await, "dash");
    assert_eq!(one_value(&dash, "SELECT total FROM totals").await, "15");
    // Everything else is 42501 for the dashboard role.
    for sql in [
        "SELECT * FROM orders",
        "SELECT * FROM salaries",
        "SELECT * FROM eddy_catalog.sinks",
        "SELECT * FROM eddy_catalog.mv_stats",
        "SELECT * FROM totals JOIN orders ON true",
        "SELECT * FROM (SELECT * FROM orders) o",
        "INSERT INTO orders VALUES (3, 1)",
        "CREATE TABLE mine (a INT)",
        "CREATE MATERIALIZED VIEW m AS SELECT 1",
        "DROP MATERIALIZED VIEW totals",
        "CREATE ROLE x",
        "ALTER ROLE dash SUPERUSER",
        "GRANT SELECT ON orders TO dash",
        "CREATE SECRET s AS 'v'",
        "CHECKPOINT",
        "SHOW SINKS",
        "SET checkpoint_interval = '1s'",
        "SUBSCRIBE TO orders",
    ] {
        refused(&dash, sql, "42501").await;
    }
    // The catalog names are there (as in PostgreSQL), the data is not.
    assert!(
        !common::query_text(&dash, "SELECT relname FROM pg_catalog.pg_class")
            .await
            .is_empty()
    );
    // A role may change its own password.
    common::execute(&dash, "ALTER ROLE dash PASSWORD 'new pw'").await;
    assert!(connect_as(port, "dash", Some("dash pw")).await.is_err());
    connect_as(port, "dash", Some("new pw"))
        .await
        .expect("the new password");
    // The writer may insert but not read (INSERT needs no SELECT).
    let writer = connect_as(port, "writer", Some("writer pw"))
        .await
        .expect("writer logs in");
    common::execute(&writer, "INSERT INTO orders VALUES (3, 100)").await;
    refused(&writer, "SELECT * FROM orders", "42501").await;
    refused(&writer, "DELETE FROM orders", "42501").await;
    common::execute(&admin, "FLUSH").await;
    assert_eq!(one_value(&dash, "SELECT total FROM totals").await, "115");
    // Revoked: refused again; a role with grants cannot be dropped.
    refused(&admin, "DROP ROLE dash", "2BP01").await;
    common::execute(&admin, "REVOKE SELECT ON totals FROM dash").await;
    refused(&dash, "SELECT * FROM totals", "42501").await;
    common::execute(
        &admin,
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO dash",
    )
    .await;
    assert_eq!(one_value(&dash, "SELECT count(*) FROM salaries").await, "0");
    // psql's \du and \dp show roles and grants.
    let du = psql(port, "super secret", None, "\\du").await;
    assert!(
        du.contains("dash") && du.contains("writer") && du.contains("Superuser"),
        "{du}"
    );
    let dp = psql(port, "super secret", None, "\\dp orders").await;
    assert!(dp.contains("writer=a") && dp.contains("dash=r"), "{dp}");
    // Roles, passwords (as verifiers) and grants survive a restart.
    drop((admin, dash, writer));
    eddy.terminate();
    let mut eddy = EddyProcess::spawn(
        &dir,
        &["--auth", "password"],
        &[("EDDY_PASSWORD", "super secret")],
    );
    eddy.wait_ready().await;
    let dash = connect_as(eddy.port, "dash", Some("new pw"))
        .await
        .expect("dash after restart");
    assert_eq!(one_value(&dash, "SELECT count(*) FROM salaries").await, "0");
    refused(&dash, "CREATE TABLE mine (a INT)", "42501").await;
    // The manifests hold verifiers, never a password.
    let manifests = read_manifests(&dir);
    for password in ["super secret", "dash pw", "new pw", "writer pw"] {
        assert!(!manifests.contains(password), "{password} is in a manifest");
    }
    assert!(manifests.contains("SCRAM-SHA-256$4096:"));
    assert_eq!(panics_in(&eddy.log()), 0, "{}", eddy.log());
}

/// Every checkpoint manifest under `dir` (at any depth), as text.
fn read_manifests(dir: &Path) -> String {
    let mut text = String::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "manifest") {
                text.push_str(&String::from_utf8_lossy(
                    &std::fs::read(&path).expect("manifest"),
                ));
            }
        }
    }
    assert!(!text.is_empty(), "no manifest under {}", dir.display());
    text
}

/// What a client program printed (stdout, then stderr).
async fn client_output(program: &str, args: &[&str]) -> String {
    let program = program.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || Command::new(&program).args(&args).output())
        .await
        .unwrap()
        .expect("the client program runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs psql `command` as eddy; `tls`: the CA to verify against.
async fn psql(port: u16, password: &str, tls: Option<&Path>, command: &str) -> String {
    let mut conninfo = format!("host=127.0.0.1 port={port} user=eddy dbname=eddy");
    if let Some(ca) = tls {
        conninfo.push_str(&format!(
            " sslmode=verify-full sslrootcert={}",
            ca.display()
        ));
    }
    let command = command.to_string();
    let password = password.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args([&conninfo, "-X", "-c", &command])
            .env("PGPASSWORD", password)
            .output()
    })
    .await
    .expect("psql task")
    .expect("psql is installed (scripts/install-test-deps.sh)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A test CA and a certificate for 127.0.0.1 / localhost, made with the
/// openssl command: `(ca.pem, server.pem, server.key)`.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (scripts/install-test-deps.sh)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=eddy test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_psql_jdbc_and_psycopg_and_plaintext_refused_when_required() {
    let dir = test_dir("tls");
    let (ca, cert, key) = test_certificates(&dir);
    let http_port = free_port();
    let mut eddy = EddyProcess::spawn(
        &dir.join("data"),
        &[
            "--auth",
            "password",
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
            "--require-tls",
        ],
        &[("EDDY_PASSWORD", "tls pw")],
    );
    eddy.wait_ready().await;
    let port = eddy.port;
    let out = psql(port, "tls pw", Some(&ca), "SELECT 'over tls', current_user").await;
    assert!(out.contains("over tls") && out.contains("eddy"), "{out}");
    let out = psql(port, "tls pw", Some(&ca), "\\conninfo").await;
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");
    // Plaintext is refused (28000).
    let plain = connect_as(port, "eddy", Some("tls pw"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&plain), "28000");
    // JDBC and psycopg, verify-full against the test CA.
    let jar = common::pgjdbc_jar();
    let venv = common::python_venv();
    let (p, c) = (port.to_string(), ca.to_string_lossy().into_owned());
    let jdbc = format!("{}/tests/jdbc/JdbcTls.java", common::project_dir());
    let text = client_output("java", &["-cp", &jar, &jdbc, &p, &c, "tls pw"]).await;
    assert!(text.contains("jdbc tls ok"), "{text}");
    let psycopg = format!("{}/tests/python/tls_connect.py", common::project_dir());
    let python = format!("{venv}/bin/python");
    let text = client_output(&python, &[&psycopg, &p, &c, "tls pw"]).await;
    assert!(text.contains("psycopg tls ok"), "{text}");
    eddy.terminate();

    // HTTP: HTTPS with the same certificate; beyond loopback, basic auth.
    let mut eddy = EddyProcess::spawn(
        &dir.join("data2"),
        &[
            "--auth",
            "password",
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
            "--http-listen",
            &format!("0.0.0.0:{http_port}"),
        ],
        &[("EDDY_PASSWORD", "tls pw")],
    );
    eddy.wait_ready().await;
    let curl = |user: Option<&str>| {
        let mut command = Command::new("curl");
        command.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca.to_string_lossy(),
        ]);
        if let Some(user) = user {
            command.args(["-u", user]);
        }
        command.arg(format!("https://127.0.0.1:{http_port}/metrics"));
        String::from_utf8_lossy(&command.output().expect("curl").stdout).into_owned()
    };
    assert_eq!(curl(None), "401");
    assert_eq!(curl(Some("eddy:wrong")), "401");
    assert_eq!(curl(Some("eddy:tls pw")), "200");
    assert_eq!(panics_in(&eddy.log()), 0, "{}", eddy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_beyond_loopback_needs_insecure() {
    let dir = test_dir("insecure");
    let port = free_port();
    let mut eddy = EddyProcess::spawn_on(
        &dir,
        &format!("0.0.0.0:{port}"),
        port,
        &["--auth", "trust"],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while eddy.is_running() {
        assert!(
            Instant::now() < deadline,
            "eddy kept running with trust on 0.0.0.0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eddy.log().contains("--insecure"), "{}", eddy.log());
    // Without --auth on 0.0.0.0 the default is password, which needs one.
    let mut eddy = EddyProcess::spawn_on(&dir, &format!("0.0.0.0:{port}"), port, &[], &[]);
    while eddy.is_running() {
        assert!(
            Instant::now() < deadline,
            "eddy ran without a superuser password"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(eddy.log().contains("EDDY_PASSWORD"), "{}", eddy.log());
    // With --insecure it runs (traffic stays on loopback).
    let mut eddy = EddyProcess::spawn_on(
        &dir,
        &format!("0.0.0.0:{port}"),
        port,
        &["--auth", "trust", "--insecure"],
        &[],
    );
    healthy(&mut eddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_timeouts_and_disconnections_stop_queries() {
    let mut eddy = EddyProcess::spawn(&test_dir("cancel"), &[], &[]);
    let client = eddy.connect().await;
    let long = "SELECT count(*) FROM generate_series(1, 1000000000000)";
    // statement_timeout.
    common::execute(&client, "SET statement_timeout = '1s'").await;
    let started = Instant::now();
    let message = refused(&client, long, "57014").await;
    assert!(message.contains("statement timeout"), "{message}");
    let timeout_took = started.elapsed();
    assert!(timeout_took < Duration::from_secs(10), "{timeout_took:?}");
    common::execute(&client, "SET statement_timeout = 0").await;
    // A cancel request from another connection.
    let token = client.cancel_token();
    let canceler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        token.cancel_query(NoTls).await.expect("cancel request");
        sent
    });
    let message = refused(&client, long, "57014").await;
    let stopped = Instant::now();
    let sent = canceler.await.unwrap();
    assert!(message.contains("user request"), "{message}");
    let cancel_took = stopped.duration_since(sent);
    assert!(cancel_took < Duration::from_secs(5), "{cancel_took:?}");
    eprintln!("statement_timeout 1s answered after {timeout_took:?}; cancel answered {cancel_took:?} after the request");
    // A client that goes away: its query stops (eddy's CPU time stops
    // growing).
    // (Raw protocol: a client library keeps the socket open while a
    // query is pending.)
    let mut quitter = TcpStream::connect(("127.0.0.1", eddy.port)).await.unwrap();
    let mut bytes = startup_packet("eddy");
    bytes.extend_from_slice(&self::message(b'Q', format!("{long}\0").as_bytes()));
    quitter.write_all(&bytes).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(quitter); // the socket closes
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = cpu_seconds(eddy.child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burned = cpu_seconds(eddy.child.id()) - before;
    assert!(
        burned < 0.5,
        "eddy still burned {burned} CPU-s after the client left"
    );
    healthy(&mut eddy).await;
}

/// The process's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let after_name = &stat[stat.rfind(')').expect("stat") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_are_refused_politely_and_the_server_recovers() {
    let mut eddy = EddyProcess::spawn(&test_dir("flood"), &["--max-connections", "5"], &[]);
    eddy.wait_ready().await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            connect_as(eddy.port, "eddy", None)
                .await
                .expect("within the limit"),
        );
    }
    let over = connect_as(eddy.port, "eddy", None)
        .await
        .expect_err("over the limit");
    assert_eq!(sqlstate(&over), "53300");
    // A flood of raw connections over the limit: answered or closed, and
    // nothing logged per connection.
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", eddy.port)).await {
            flood.push(s);
        }
    }
    drop(flood);
    // A slot frees once the server has seen the client go.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match connect_as(eddy.port, "eddy", None).await {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(sqlstate(&e), "53300");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no slot again: {e:?}"),
        }
    };
    assert_eq!(one_value(&client, "SELECT 40 + 2").await, "42");
    assert_eq!(panics_in(&eddy.log()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_file_table_backs_off_and_logs_rarely() {
    let dir = test_dir("fds");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // eddy with few file descriptors: the accept loop runs out of them.
    let log = std::fs::File::create(dir.join("eddy.log")).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_eddy"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &dir.join("data").to_string_lossy(),
            "--no-http",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("eddy starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            flood.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(flood);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = connect_as(port, "eddy", None)
        .await
        .expect("served after the flood");
    assert_eq!(one_value(&client, "SELECT 1").await, "1");
    let log = std::fs::read_to_string(dir.join("eddy.log")).unwrap();
    let accept_lines = log.matches("cannot accept connections").count();
    assert!(accept_lines <= 2, "{accept_lines} accept warnings:\n{log}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_referenced_never_shown_and_sealed_at_rest() {
    let dir = test_dir("secrets");
    let mut eddy = EddyProcess::spawn(&dir, &[], &[]);
    let client = eddy.connect().await;
    common::execute(
        &client,
        "CREATE SECRET pg_pw AS 'hunter2-secret';
         CREATE TABLE t (k INT PRIMARY KEY, v INT);
         CREATE MATERIALIZED VIEW v AS SELECT k, sum(v) AS s FROM t GROUP BY k",
    )
    .await;
    refused(&client, "CREATE SECRET pg_pw AS 'again'", "42710").await;
    // A sink to a port where nothing answers: its target check fails, but
    // the statement text and errors never carry the secret.
    let pg = common::postgres_url();
    let message = refused(
        &client,
        "CREATE SINK s FROM v WITH (connector = 'postgres', url = 'postgres://eddy@127.0.0.1:1/x', \
         password = SECRET pg_pw, table = 't')",
        "08001",
    )
    .await;
    assert!(!message.contains("hunter2"), "{message}");
    refused(
        &client,
        "CREATE SINK s FROM v WITH (connector = 'postgres', url = 'postgres://x@127.0.0.1:1/x', \
         password = SECRET nope, table = 't')",
        "42704",
    )
    .await;
    // A real sink whose URL holds the password in the clear.
    let with_password = pg.replacen(
        "postgres://postgres@",
        "postgres://postgres:plain-pw-123@",
        1,
    );
    common::execute(
        &client,
        &format!(
            "CREATE SINK real FROM v WITH (connector = 'postgres', url = '{with_password}', \
             table = 'eddy_security_secret_sink', create_table = 'true'); FLUSH"
        ),
    )
    .await;
    // A secret an object still names cannot go (its restore needs it).
    common::execute(
        &client,
        &format!(
            "CREATE SINK by_ref FROM v WITH (connector = 'postgres', url = '{pg}', \
             password = SECRET pg_pw, table = 'eddy_security_secret_ref', create_table = 'true')"
        ),
    )
    .await;
    refused(&client, "DROP SECRET pg_pw", "2BP01").await;
    refused(&client, "DROP SECRET __real_password", "2BP01").await;
    let manifests = read_manifests(&dir);
    for plain in ["hunter2-secret", "plain-pw-123"] {
        assert!(!manifests.contains(plain), "{plain} is in a manifest");
    }
    assert!(
        manifests.contains("CREATE SECRET pg_pw AS ENCRYPTED"),
        "the secret is sealed"
    );
    assert!(
        manifests.contains("password = SECRET __real_password"),
        "the sink refers to it"
    );
    // Files of the data directory are the server's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("secrets.key")), 0o600);
    // SHOW / system tables never show them.
    for sql in [
        "SHOW SINKS",
        "SELECT * FROM eddy_catalog.sinks",
        "SELECT * FROM eddy_catalog.materialized_views",
    ] {
        let text = format!("{:?}", common::query_text(&client, sql).await);
        assert!(
            !text.contains("hunter2") && !text.contains("plain-pw"),
            "{sql}: {text}"
        );
    }
    // After a restart the secrets open again (with the data dir's key).
    drop(client);
    eddy.terminate();
    let mut eddy = EddyProcess::spawn(&dir, &[], &[]);
    let client = eddy.connect().await;
    common::execute(&client, "INSERT INTO t VALUES (1, 5); FLUSH").await;
    let pg_client = common::connect_postgres().await;
    let rows =
        common::postgres_rows(&pg_client, "SELECT k, s FROM eddy_security_secret_sink").await;
    assert_eq!(rows, vec![vec!["1".to_string(), "5".to_string()]]);
    assert!(!eddy.log().contains("plain-pw-123") && !eddy.log().contains("hunter2"));
    common::execute(&client, "DROP SINK real, by_ref; DROP SECRET pg_pw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_attacks_get_errors_and_the_server_stays_up() {
    let mut eddy = EddyProcess::spawn(&test_dir("memory"), &["--query-memory-limit", "256MB"], &[]);
    let client = eddy.connect().await;
    // A huge value from a tiny statement.
    refused(&client, "SELECT length(repeat('x', 1500000000))", "54000").await;
    refused(&client, "SELECT lpad('x', 2000000000)", "54000").await;
    assert_eq!(
        one_value(&client, "SELECT length(repeat('ab', 1000))").await,
        "2000"
    );
    // A sort over the query memory spills or fails cleanly, never takes
    // the server down.
    match client
        .simple_query("SELECT count(*) FROM (SELECT repeat(md5(v::text), 8) AS s FROM generate_series(1, 3000000) AS g(v) ORDER BY s) x")
        .await
    {
        Ok(_) => {}
        Err(e) => assert_eq!(sqlstate(&e), "53200", "{e:?}"),
    }
    // A big result streams: 3M rows arrive without eddy holding them all.
    let rows = client
        .query("SELECT v FROM generate_series(1, 3000000) AS g(v)", &[])
        .await
        .expect("a big result");
    assert_eq!(rows.len(), 3_000_000);
    healthy(&mut eddy).await;
    assert_eq!(panics_in(&eddy.log()), 0, "{}", eddy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoint_bounds_what_it_reads() {
    let http_port = free_port();
    let mut eddy = EddyProcess::spawn(
        &test_dir("http"),
        &["--http-listen", &format!("127.0.0.1:{http_port}")],
        &[],
    );
    eddy.wait_ready().await;
    // A request line without an end: refused at 16 KB, not read forever.
    let mut stream = TcpStream::connect(("127.0.0.1", http_port))
        .await
        .expect("http");
    let junk = vec![b'A'; 1 << 20];
    let _ = stream.write_all(&junk).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A normal request still works.
    let mut stream = TcpStream::connect(("127.0.0.1", http_port))
        .await
        .expect("http");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    healthy(&mut eddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_mistakes_never_answer_internal_error() {
    let mut eddy = EddyProcess::spawn(&test_dir("sqlstates"), &[], &[]);
    let client = eddy.connect().await;
    common::execute(
        &client,
        "CREATE TABLE t (a BIGINT, s TEXT, d DATE);
         CREATE TABLE k (id INT PRIMARY KEY, v TEXT NOT NULL);
         INSERT INTO k VALUES (1, 'x');
         CREATE MATERIALIZED VIEW kv AS SELECT id FROM k",
    )
    .await;
    for (sql, code) in [
        ("SELECT 1 / 0", "22012"),
        ("SELECT 9223372036854775807 + 1", "22003"),
        (
            "SELECT a * 4 FROM (VALUES (9223372036854775807)) AS v(a)",
            "22003",
        ),
        (
            "SELECT sum(a) FROM (VALUES (9223372036854775807), (1)) AS v(a)",
            "22003",
        ),
        ("SELECT 'abc'::int", "22P02"),
        ("SELECT DATE '2020-13-45'", "22P02"),
        ("INSERT INTO k VALUES (1, 'y')", "23505"),
        ("INSERT INTO k VALUES (2, NULL)", "23502"),
        ("DROP TABLE k", "2BP01"),
        ("CREATE TABLE kv (a INT)", "42P07"),
        ("DROP MATERIALIZED VIEW k", "42809"),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "0A000",
        ),
        (
            "CREATE MATERIALIZED VIEW r AS SELECT * FROM k, UNNEST([1, 2])",
            "0A000",
        ),
        ("CREATE SOURCE q (a INT) WITH (connector = 'nope')", "0A000"),
        (
            "CREATE SOURCE q (a INT) WITH (connector = 'datagen', rows_per_second = 'x')",
            "22023",
        ),
        ("SELECT length(repeat('x', 2000000000))", "54000"),
        (
            format!("SELECT {}", vec!["1"; 5_000].join("+")).as_str(),
            "54001",
        ),
        ("DROP ROLE nobody", "42704"),
        ("SELECT 'abc'::int", "22P02"),
        ("SELECT a + s FROM t", "42804"),
        ("SELECT nope FROM t", "42703"),
        ("SELECT * FROM nope", "42P01"),
        ("SELECT no_such_function(1)", "42883"),
        ("SELEC 1", "42601"),
        ("INSERT INTO t VALUES ('x', 'y', 'z')", "22P02"),
        ("CREATE TABLE t (a INT)", "42P07"),
    ] {
        match client.simple_query(sql).await {
            Ok(_) => panic!("{sql}: accepted"),
            Err(e) => {
                let got = sqlstate(&e);
                assert_ne!(got, "XX000", "{sql}: {e:?}");
                assert_eq!(got, code, "{sql}: {e:?}");
            }
        }
    }
    healthy(&mut eddy).await;
}
