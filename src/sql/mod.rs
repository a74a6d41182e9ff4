//! SQL: parsing eddy's statements (and SQL-level rewriting), nothing more.
//!
//! Statements are split at top-level semicolons (`split.rs`), eddy's own
//! statements (`FLUSH`, `SHOW MATERIALIZED VIEWS`, `CREATE SOURCE`,
//! `CREATE SINK`, `SUBSCRIBE`, ...) are recognised by their first words,
//! eddy's clauses sqlparser does not know are rewritten (`rewrite.rs`), and
//! everything else is parsed by sqlparser (the parser DataFusion uses) and
//! classified (`classify.rs`). The result, an [`EddyStatement`], is what
//! [`crate::engine::Engine`] executes.

mod access;
mod classify;
pub mod connector;
mod cursor;
pub mod limits;
pub mod output_names;
mod rewrite;
mod split;

use datafusion::sql::sqlparser::ast::{self, ObjectName, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::catalog::RelationKind;
use crate::error::{EddyError, Result};
use classify::classify;
use cursor::{cursor_name, parse_copy_subscribe, parse_declare, parse_fetch, parse_subscribe};
use rewrite::{
    extract_proctime, extract_watermark, rewrite_flink_windows, rewrite_lookup_joins,
    strip_append_only, strip_emit_on_window_close,
};
use split::leading_words;
pub use split::split_statements;

/// One statement, classified by what eddy does with it.
#[derive(Debug, Clone)]
pub enum EddyStatement {
    /// SELECT, VALUES, EXPLAIN SELECT: planned and run by DataFusion.
    Query(Box<Statement>),
    CreateTable(Box<ast::CreateTable>, Box<TimeColumns>),
    CreateView(Box<CreateView>),
    ExplainCreateView(Box<CreateView>),
    /// INSERT, UPDATE, DELETE on the named table.
    Write {
        table: String,
        kind: WriteKind,
        statement: Box<Statement>,
    },
    Drop {
        kind: RelationKind,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    },
    CreateSink(Box<connector::CreateSink>),
    /// `CREATE SOURCE name (columns) WITH (connector = ..., ...)`.
    CreateSource {
        table: Box<ast::CreateTable>,
        time: Box<TimeColumns>,
        clauses: Box<crate::connectors::format::SourceClauses>,
    },
    ShowSources,
    /// `SHOW JOBS`: backfills and how far they are.
    ShowJobs,
    /// `DROP SINK [IF EXISTS] name, ... [CASCADE]` (nothing depends on a
    /// sink, so CASCADE changes nothing).
    DropSink {
        names: Vec<String>,
        if_exists: bool,
    },
    Flush,
    ShowTables,
    ShowViews,
    ShowSinks,
    /// `SET name = value` (session settings; accepted and remembered).
    Set {
        name: String,
        value: String,
    },
    ShowVariable(String),
    /// BEGIN / COMMIT / ROLLBACK.
    Transaction(TransactionStep),
    /// `DEALLOCATE [PREPARE] name | ALL` (`None`: all): the session's
    /// prepared statements, as connection pools reset them between clients.
    Deallocate(Option<String>),
    /// `DISCARD ALL | PLANS | SEQUENCES | TEMP`: `all` resets the session.
    Discard {
        all: bool,
        tag: String,
    },
    /// `CHECKPOINT`: take a checkpoint now.
    Checkpoint,
    /// `CREATE SNAPSHOT name`: a checkpoint kept under a name (a savepoint).
    CreateSnapshot(String),
    /// `SUBSCRIBE [TO] view [WITH (snapshot = true | false)]`.
    Subscribe {
        view: String,
        snapshot: bool,
        /// `COPY (SUBSCRIBE ...) TO STDOUT`: the rows as COPY data.
        copy: bool,
    },
    /// `DECLARE c SUBSCRIPTION CURSOR FOR view [WITH (snapshot = ...)]`
    /// (also `DECLARE c CURSOR FOR SUBSCRIBE [TO] view ...`): a SUBSCRIBE
    /// whose changes the client takes with FETCH.
    DeclareCursor {
        name: String,
        view: String,
        snapshot: bool,
    },
    /// `FETCH [n | NEXT | ALL] [FROM | IN] c [WITH (timeout = '1s')]`:
    /// up to `count` rows (`None`: all there are), waiting up to `timeout_ms`
    /// (`None`: until there is at least one) when none are there.
    Fetch {
        cursor: String,
        count: Option<usize>,
        timeout_ms: Option<u64>,
    },
    /// `CLOSE c` / `CLOSE ALL` (`None`).
    Close(Option<String>),
    /// `CREATE ROLE name [WITH] options` (and `CREATE USER`, which logs in
    /// unless told NOLOGIN).
    CreateRole {
        name: String,
        options: RoleOptions,
        if_not_exists: bool,
    },
    /// `ALTER ROLE name [WITH] options` (and `ALTER USER`).
    AlterRole {
        name: String,
        options: RoleOptions,
    },
    /// `DROP ROLE [IF EXISTS] name, ...` (and `DROP USER`).
    DropRole {
        names: Vec<String>,
        if_exists: bool,
    },
    /// `GRANT privileges ON relations TO roles`, or (`grant: false`) the
    /// REVOKE of them.
    Grant {
        privileges: Vec<crate::catalog::Privilege>,
        on: GrantTarget,
        roles: Vec<String>,
        grant: bool,
    },
    /// `CREATE SECRET [IF NOT EXISTS] name AS 'value'`, or (`replace`)
    /// `ALTER SECRET name AS 'value'`.
    CreateSecret {
        name: String,
        value: SecretText,
        /// `AS ENCRYPTED '...'`: the value as the DDL log keeps it, sealed
        /// (see `catalog::secrets`).
        sealed: bool,
        if_not_exists: bool,
        replace: bool,
    },
    /// `DROP SECRET [IF EXISTS] name`.
    DropSecret {
        name: String,
        if_exists: bool,
    },
}

/// What `CREATE ROLE` / `ALTER ROLE` set (`None`: left as it is, or the
/// default).
#[derive(Clone, Default)]
pub struct RoleOptions {
    pub superuser: Option<bool>,
    pub login: Option<bool>,
    /// `PASSWORD 'text'` (`Some(Some(..))`) or `PASSWORD NULL`
    /// (`Some(None)`); the text may be a SCRAM verifier already.
    pub password: Option<Option<SecretText>>,
}

impl std::fmt::Debug for RoleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleOptions")
            .field("superuser", &self.superuser)
            .field("login", &self.login)
            .field("password", &self.password.as_ref().map(|p| p.is_some()))
            .finish()
    }
}

/// Text that must never be shown (a password, a secret's value): its
/// `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a connector option's value refers to a secret (`password = SECRET
/// name`): this prefix, then the secret's name. No quoted value can hold it
/// (the wire protocol refuses a NUL in a statement).
pub const SECRET_REFERENCE: &str = "\u{0}secret:";

/// The secret an option value refers to, if it is a reference.
pub fn secret_reference(value: &str) -> Option<&str> {
    value.strip_prefix(SECRET_REFERENCE)
}

/// What a GRANT or REVOKE is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantTarget {
    /// Named tables, views or sources.
    Relations(Vec<String>),
    /// `ALL TABLES IN SCHEMA public` (tables, views and sources, as in
    /// PostgreSQL tables and views).
    AllInSchema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStep {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackToSavepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Insert,
    Update,
    Delete,
}

/// What a CREATE TABLE / CREATE SOURCE column list says about time.
#[derive(Debug, Clone, Default)]
pub struct TimeColumns {
    /// `WATERMARK FOR column AS expression`.
    pub watermark: Option<WatermarkClause>,
    /// `column [TIMESTAMP] AS PROCTIME()`: a column filled with the
    /// processing time at which each row is ingested.
    pub proctime: Option<String>,
}

/// `WATERMARK FOR column AS expression` from a CREATE TABLE column list.
#[derive(Debug, Clone)]
pub struct WatermarkClause {
    pub column: String,
    pub expression: ast::Expr,
}

#[derive(Debug, Clone)]
pub struct CreateView {
    pub name: String,
    pub columns: Vec<String>,
    pub query: Box<ast::Query>,
    pub if_not_exists: bool,
    /// The statement as written, kept for SHOW and the catalog.
    pub definition: String,
    /// `... EMIT ON WINDOW CLOSE`: windows are emitted once, when closed.
    pub emit_on_window_close: bool,
    /// `WITH (allowed_lateness = '10 seconds')`, in µs.
    pub allowed_lateness_micros: i64,
    /// `WITH (idle_timeout = '30 seconds')`, in µs: an input without
    /// changes or watermarks for this long stops holding back the watermark
    /// of a multi-input operator.
    pub idle_timeout_micros: Option<i64>,
    /// `WITH (allow_cross_join = true)`.
    pub allow_cross_join: bool,
}

/// Parses one statement (as returned by [`split_statements`]).
pub fn parse_statement(sql: &str) -> Result<EddyStatement> {
    let words = leading_words(sql, 4);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["FLUSH"] => return Ok(EddyStatement::Flush),
        ["CHECKPOINT"] => return Ok(EddyStatement::Checkpoint),
        ["CREATE", "EXTERNAL", ..] => return Err(classify::external_table_refused()),
        ["CREATE", "SNAPSHOT", ..] => {
            let rest = sql.trim().trim_end_matches(';');
            let name = rest
                .split_whitespace()
                .nth(2)
                .filter(|_| rest.split_whitespace().count() == 3)
                .ok_or_else(|| EddyError::Syntax("expected CREATE SNAPSHOT <name>".into()))?;
            return Ok(EddyStatement::CreateSnapshot(
                name.trim_matches('"').to_string(),
            ));
        }
        ["SHOW", "TABLES", ..] => return Ok(EddyStatement::ShowTables),
        ["SHOW", "MATERIALIZED", "VIEWS", ..] => return Ok(EddyStatement::ShowViews),
        ["SHOW", "SINKS", ..] => return Ok(EddyStatement::ShowSinks),
        ["SHOW", "SOURCES", ..] => return Ok(EddyStatement::ShowSources),
        ["SHOW", "JOBS"] => return Ok(EddyStatement::ShowJobs),
        ["SUBSCRIBE", ..] => return parse_subscribe(sql),
        ["COPY", ..] if cursor::is_copy_of_subscribe(sql) => return parse_copy_subscribe(sql),
        ["DECLARE", ..] => return parse_declare(sql),
        ["FETCH", ..] | ["MOVE", ..] => return parse_fetch(sql),
        ["CLOSE", ..] => {
            let words: Vec<&str> = sql
                .trim()
                .trim_end_matches(';')
                .split_whitespace()
                .collect();
            return match words.as_slice() {
                [_, all] if all.eq_ignore_ascii_case("ALL") => Ok(EddyStatement::Close(None)),
                [_, name] => Ok(EddyStatement::Close(Some(cursor_name(name)))),
                _ => Err(EddyError::Syntax(
                    "expected CLOSE <cursor> or CLOSE ALL".into(),
                )),
            };
        }
        ["CREATE", "SECRET", ..] | ["ALTER", "SECRET", ..] | ["DROP", "SECRET", ..] => {
            return access::parse_secret(sql)
        }
        ["CREATE", "SOURCE", ..] => return connector::parse_create_source(sql),
        ["DROP", "SOURCE", ..] => {
            let (names, if_exists, cascade) = connector::parse_drop(sql, "SOURCE")?;
            return Ok(EddyStatement::Drop {
                kind: RelationKind::Source,
                names,
                if_exists,
                cascade,
            });
        }
        ["CREATE", "SINK", ..] => {
            return Ok(EddyStatement::CreateSink(Box::new(
                connector::parse_create_sink(sql)?,
            )))
        }
        ["DROP", "SINK", ..] => {
            let (names, if_exists, _cascade) = connector::parse_drop(sql, "SINK")?;
            return Ok(EddyStatement::DropSink { names, if_exists });
        }
        ["EXPLAIN", "CREATE", "MATERIALIZED", "VIEW"] => {
            let body = sql.trim_start();
            let create = &body["EXPLAIN".len()..];
            return match parse_statement(create)? {
                EddyStatement::CreateView(view) => Ok(EddyStatement::ExplainCreateView(view)),
                _ => Err(crate::internal!(
                    "EXPLAIN CREATE MATERIALIZED VIEW did not parse as one"
                )),
            };
        }
        _ => {}
    }
    // `CREATE USER` is `CREATE ROLE ... LOGIN`, and so on.
    let (sql, creates_user) = match access::user_as_role(sql, &words) {
        Some((role_sql, create)) => (std::borrow::Cow::Owned(role_sql), create),
        None => (std::borrow::Cow::Borrowed(sql), false),
    };
    let sql = sql.as_ref();
    // eddy's clauses that sqlparser does not know are taken out first.
    let mut declared_append_only = false;
    let (sql, time) = match words.as_slice() {
        ["CREATE", "TABLE", ..] => {
            let (sql, append_only) = strip_append_only(sql)?;
            declared_append_only = append_only;
            let (sql, proctime) = extract_proctime(&sql)?;
            let (sql, watermark) = extract_watermark(&sql)?;
            let time = TimeColumns {
                watermark,
                proctime,
            };
            (
                sql,
                (time.watermark.is_some() || time.proctime.is_some()).then_some(time),
            )
        }
        _ => (sql.to_string(), None),
    };
    let (sql, emit_on_window_close) = strip_emit_on_window_close(&sql);
    let sql = rewrite_flink_windows(&sql)?;
    let sql = rewrite_lookup_joins(&sql)?;
    let sql = sql.as_str();
    limits::check_complexity(sql)?;
    refuse_unbuilt_syntax(sql, &words)?;
    let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
        EddyError::Syntax(
            e.to_string()
                .trim_start_matches("sql parser error: ")
                .to_string(),
        )
    })?;
    if parsed.len() != 1 {
        return Err(EddyError::Syntax(format!(
            "expected one statement, found {}",
            parsed.len()
        )));
    }
    let statement = match parsed.remove(0) {
        Statement::CreateRole(create) => access::create_role(create, creates_user)?,
        statement => classify(statement, sql)?,
    };
    match (statement, time, emit_on_window_close) {
        (EddyStatement::CreateTable(mut create, _), time, false) => {
            if declared_append_only {
                mark_append_only(&mut create);
            }
            Ok(EddyStatement::CreateTable(
                create,
                Box::new(time.unwrap_or_default()),
            ))
        }
        (EddyStatement::CreateView(mut view), None, emit) => {
            view.emit_on_window_close = emit;
            Ok(EddyStatement::CreateView(view))
        }
        (EddyStatement::ExplainCreateView(mut view), None, emit) => {
            view.emit_on_window_close = emit;
            Ok(EddyStatement::ExplainCreateView(view))
        }
        (_, _, true) => Err(EddyError::Syntax(
            "EMIT ON WINDOW CLOSE belongs at the end of CREATE MATERIALIZED VIEW".into(),
        )),
        (statement, _, _) => Ok(statement),
    }
}

/// Syntax users bring from RisingWave and Materialize that eddy does not
/// have yet, refused by name (0A000) before sqlparser would answer with a
/// message about an unrelated token.
fn refuse_unbuilt_syntax(sql: &str, words: &[&str]) -> Result<()> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let words_only: Vec<String> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_uppercase(),
            other => other.to_string(),
        })
        .collect();
    let has = |pattern: &[&str]| {
        words_only
            .windows(pattern.len())
            .any(|window| window.iter().zip(pattern).all(|(w, p)| w == p))
    };
    if has(&["ASOF", "JOIN"]) || has(&["ASOF", "LEFT", "JOIN"]) {
        return Err(crate::not_supported!("ASOF JOIN is not supported yet"));
    }
    if matches!(words, ["CREATE", "TABLE", ..]) {
        if has(&["STRUCT", "<"]) {
            return Err(crate::not_supported!(
                "STRUCT<...> columns are not supported yet; declare the column JSONB and read \
                 its fields with -> and ->>"
            ));
        }
        if has(&["CONNECTOR", "="]) {
            return Err(crate::not_supported!(
                "CREATE TABLE with a connector is not supported yet; use CREATE SOURCE with the \
                 same options (a SELECT reads what it holds) and a materialized view over it"
            ));
        }
    }
    Ok(())
}

/// Adds `append_only = true` to a CREATE TABLE's WITH options (what
/// `APPEND ONLY` means).
fn mark_append_only(create: &mut ast::CreateTable) {
    let option = ast::SqlOption::KeyValue {
        key: ast::Ident::new("append_only"),
        value: ast::Expr::value(ast::Value::Boolean(true)),
    };
    create.table_options =
        match std::mem::replace(&mut create.table_options, ast::CreateTableOptions::None) {
            ast::CreateTableOptions::With(mut options) => {
                options.push(option);
                ast::CreateTableOptions::With(options)
            }
            _ => ast::CreateTableOptions::With(vec![option]),
        };
}

/// A Postgres identifier: unquoted names fold to lower case.
pub fn normalize_ident(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The name of a relation in eddy's single schema (`public`).
pub fn relation_name(name: &ObjectName) -> Result<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(normalize_ident)
                .ok_or_else(|| EddyError::Syntax(format!("invalid name {name}")))
        })
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [relation] => Ok(relation.clone()),
        [schema, relation] if schema == "public" => Ok(relation.clone()),
        _ => Err(EddyError::UndefinedRelation(format!(
            "relation \"{name}\" does not exist (eddy has one schema, public)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let sql = "SELECT 'a;b'; -- c;d\nSELECT \"x;\" FROM t; /* ; */ ; SELECT $$;$$, $1;";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0], "SELECT 'a;b'");
        assert!(parts[2].contains("$$;$$"));
    }

    #[test]
    fn recognises_eddy_statements() {
        assert!(matches!(
            parse_statement("flush").unwrap(),
            EddyStatement::Flush
        ));
        assert!(matches!(
            parse_statement("SHOW MATERIALIZED VIEWS").unwrap(),
            EddyStatement::ShowViews
        ));
        let explain = parse_statement("EXPLAIN CREATE MATERIALIZED VIEW v AS SELECT 1").unwrap();
        assert!(matches!(explain, EddyStatement::ExplainCreateView(v) if v.name == "v"));
        let view = parse_statement("CREATE MATERIALIZED VIEW v AS SELECT 1 emit on window close;")
            .unwrap();
        assert!(matches!(view, EddyStatement::CreateView(v) if v.emit_on_window_close));
    }

    #[test]
    fn rewrites_the_flink_window_spelling() {
        let sql = "SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) WHERE x = 'it''s'";
        let rewritten = rewrite_flink_windows(sql).unwrap();
        let compact: String = rewritten.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            compact,
            "SELECT * FROM TUMBLE ( bids , ts , INTERVAL '10' SECOND ) WHERE x = 'it''s'"
        );
        let hop = rewrite_flink_windows("SELECT 1 FROM TABLE(HOP(TABLE t, DESCRIPTOR(ts), INTERVAL '1' SECOND, INTERVAL '2' SECOND)) GROUP BY 1").unwrap();
        assert!(
            hop.split_whitespace()
                .collect::<String>()
                .contains("HOP(t,ts,INTERVAL'1'SECOND,INTERVAL'2'SECOND)GROUPBY1"),
            "{hop}"
        );
    }

    #[test]
    fn sources_may_leave_out_their_columns() {
        let statement = parse_statement(
            "CREATE SOURCE bid WITH (connector = 'nexmark', nexmark.max.events = '10')",
        )
        .unwrap();
        let EddyStatement::CreateSource {
            table,
            time,
            clauses,
        } = statement
        else {
            panic!("not a source")
        };
        assert!(table.columns.is_empty() && time.watermark.is_none());
        assert_eq!(clauses.options["nexmark.max.events"], "10");
        let statement = parse_statement(
            "CREATE SOURCE bid (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'nexmark')",
        )
        .unwrap();
        let EddyStatement::CreateSource { table, time, .. } = statement else {
            panic!("not a source")
        };
        assert!(table.columns.is_empty());
        assert_eq!(time.watermark.unwrap().column, "date_time");
    }

    #[test]
    fn reads_kafka_source_clauses() {
        let statement = parse_statement(
            "CREATE SOURCE s (id INT, ts TIMESTAMP) INCLUDE partition INCLUDE offset AS o \
             WITH (connector = 'kafka', topic = 'events') FORMAT UPSERT ENCODE CSV (delimiter = ';')",
        )
        .unwrap();
        let EddyStatement::CreateSource { table, clauses, .. } = statement else {
            panic!("not a source")
        };
        assert_eq!(table.columns.len(), 2);
        assert_eq!(
            clauses.includes,
            vec![
                (
                    crate::connectors::format::KafkaMetadata::Partition,
                    "kafka_partition".to_string()
                ),
                (
                    crate::connectors::format::KafkaMetadata::Offset,
                    "o".to_string()
                )
            ]
        );
        let format = clauses.format.unwrap();
        assert_eq!(
            format.format,
            crate::connectors::format::MessageFormat::Upsert
        );
        assert_eq!(
            format.encoding,
            crate::connectors::format::MessageEncoding::Csv
        );
        assert_eq!(format.encode_options["delimiter"], ";");
        let statement = parse_statement(
            "CREATE SOURCE s INCLUDE key WITH (connector = 'kafka') FORMAT PLAIN ENCODE JSON",
        )
        .unwrap();
        let EddyStatement::CreateSource { table, clauses, .. } = statement else {
            panic!("not a source")
        };
        assert!(table.columns.is_empty());
        assert_eq!(clauses.includes.len(), 1);
    }

    #[test]
    fn takes_the_watermark_out_of_create_table() {
        let statement = parse_statement(
            "CREATE TABLE bids (price INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND, note TEXT)",
        )
        .unwrap();
        let EddyStatement::CreateTable(create, time) = statement else {
            panic!("not a table")
        };
        let watermark = time.watermark.expect("a watermark");
        assert_eq!(watermark.column, "ts");
        assert_eq!(watermark.expression.to_string(), "ts - INTERVAL '5' SECOND");
        assert_eq!(create.columns.len(), 3);
        let first =
            parse_statement("CREATE TABLE t (WATERMARK FOR ts AS ts, ts TIMESTAMP)").unwrap();
        assert!(
            matches!(first, EddyStatement::CreateTable(c, t) if c.columns.len() == 1 && t.watermark.is_some())
        );
    }

    #[test]
    fn folds_unquoted_names() {
        let statement = parse_statement("DROP TABLE Public.\"MiXed\", Other CASCADE").unwrap();
        let EddyStatement::Drop { names, cascade, .. } = statement else {
            panic!("not a drop")
        };
        assert_eq!(names, vec!["MiXed".to_string(), "other".to_string()]);
        assert!(cascade);
    }
}
