//! The docs cannot drift from the code: every `sql` block of README.md,
//! docs/sql.md and docs/operations.md (not the `sql synopsis` ones, which show grammar) runs, in
//! order, in real psql against a fresh eddy — the real binary, as a user
//! starts it — with the real Kafka and PostgreSQL of scripts/kafka.sh and
//! scripts/postgres.sh standing in for the `localhost:9092` and
//! `localhost:5432` the examples name (each Kafka topic and sink table an
//! example names is made fresh for the run). The README's table example is
//! `examples/quickstart.sql`, whose whole psql output tests/psql.rs
//! compares with `examples/quickstart.out`.

mod common;

use std::path::PathBuf;

use common::kafka::{bootstrap, create_topic, fresh_topic};
use common::process::EddyProcess;

/// A fenced block of a markdown file.
struct Block {
    /// The line its fence opens on (1-based).
    line: usize,
    /// The fence's info string (`sql`, `sql synopsis`, `sh`, ...).
    info: String,
    text: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = vec![];
    let mut open: Option<Block> = None;
    for (index, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    line: index + 1,
                    info: info.trim().to_string(),
                    text: String::new(),
                })
            }
            (Some(_), Some("")) => blocks.extend(open.take()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "a fenced block is not closed");
    blocks
}

/// The values of `name = '...'` options in `sql`.
fn option_values(sql: &str, name: &str) -> Vec<String> {
    let pattern = format!("{name} = '");
    sql.match_indices(&pattern)
        // The whole option name: `table = '...'`, not `create_table = '...'`.
        .filter(|(at, _)| {
            !sql[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
        .filter_map(|(at, _)| {
            let rest = &sql[at + pattern.len()..];
            Some(rest[..rest.find('\'')?].to_string())
        })
        .collect()
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eddy-docs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs the runnable `sql` blocks of `document` (relative to the project)
/// against a fresh eddy; panics naming the first block psql fails on.
async fn run_examples(document: &str) -> usize {
    let root = common::project_dir();
    let markdown = std::fs::read_to_string(format!("{root}/{document}")).expect("document");
    let examples: Vec<Block> = blocks(&markdown)
        .into_iter()
        .filter(|b| b.info == "sql")
        .collect();
    assert!(!examples.is_empty(), "{document} has no sql examples");
    // Where the examples point at a user's services, the test's; each
    // topic and sink table they name, fresh.
    let mut replacements = vec![
        ("'localhost:9092'".to_string(), format!("'{}'", bootstrap())),
        (
            "'postgres://postgres@localhost:5432/postgres'".to_string(),
            format!("'{}'", common::postgres_url()),
        ),
    ];
    let all: String = examples.iter().map(|b| b.text.as_str()).collect();
    for topic in option_values(&all, "topic") {
        let fresh = fresh_topic(&topic);
        create_topic(&fresh, 1).await;
        replacements.push((format!("topic = '{topic}'"), format!("topic = '{fresh}'")));
    }
    for table in option_values(&all, "table") {
        let fresh = fresh_topic(&format!("docs_{table}")).replace('-', "_");
        replacements.push((format!("table = '{table}'"), format!("table = '{fresh}'")));
    }
    let dir = test_dir(&document.replace(['/', '.'], "_"));
    let mut eddy = EddyProcess::spawn(&dir, &[], &[]);
    eddy.wait_ready().await;
    for block in &examples {
        let mut sql = block.text.clone();
        for (from, to) in &replacements {
            sql = sql.replace(from, to);
        }
        let file = dir.join(format!("block-{}.sql", block.line));
        std::fs::write(&file, &sql).expect("block file");
        let output = common::psql(eddy.port, vec!["-f".into(), file.display().to_string()]).await;
        assert!(
            output.status.success(),
            "{document}, the sql block at line {}, fails in psql:\n{}\n{}\n--- the block as run:\n{sql}",
            block.line,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
        );
    }
    assert!(eddy.is_running(), "{}", eddy.log());
    examples.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_run() {
    let ran = run_examples("README.md").await;
    assert!(ran >= 2, "the generator and table examples");
    // The README's table example is the start of examples/quickstart.sql
    // (whose output tests/psql.rs compares), statement for statement.
    let root = common::project_dir();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let quickstart = std::fs::read_to_string(format!("{root}/examples/quickstart.sql")).unwrap();
    let table_example = blocks(&readme)
        .into_iter()
        .find(|b| b.info == "sql" && b.text.starts_with("CREATE TABLE bids"))
        .expect("the README's table example");
    assert!(
        quickstart.contains(&table_example.text),
        "the README's table example is not examples/quickstart.sql's text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reference_examples_run() {
    let ran = run_examples("docs/sql.md").await;
    assert!(ran >= 8, "docs/sql.md's examples: {ran}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_examples_run() {
    run_examples("docs/operations.md").await;
}

#[test]
fn blocks_and_options_are_found() {
    let markdown = "text\n```sql\nSELECT 1;\n```\n```sql synopsis\nDROP x [CASCADE];\n```\n";
    let found = blocks(markdown);
    assert_eq!(found.len(), 2);
    assert_eq!((found[0].line, found[0].info.as_str()), (2, "sql"));
    assert_eq!(found[0].text, "SELECT 1;\n");
    assert_eq!(found[1].info, "sql synopsis");
    assert_eq!(
        option_values("WITH (topic = 'a', x = 1, topic = 'b')", "topic"),
        vec!["a", "b"]
    );
    assert_eq!(
        option_values(
            "(table = 't', create_table = 'true', x.table = 'y')",
            "table"
        ),
        vec!["t"]
    );
}
