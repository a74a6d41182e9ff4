//! SQL: parsing eddy's statements and executing them.
//!
//! Statements are split at top-level semicolons, eddy's own statements
//! (`FLUSH`, `SHOW MATERIALIZED VIEWS`, `EXPLAIN CREATE MATERIALIZED VIEW`)
//! are recognised, and everything else is parsed by sqlparser (the parser
//! DataFusion uses). Queries are handed to DataFusion; DDL and DML are
//! executed by [`execute::Engine`].

pub mod execute;
mod information_schema;
pub mod jobs;
mod pg_catalog;
pub mod sink;
mod system;
pub mod types;

use datafusion::sql::sqlparser::ast::{self, ObjectName, ObjectType, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::catalog::RelationKind;
use crate::error::{EddyError, Result};

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
    CreateSink(Box<sink::CreateSink>),
    /// `CREATE SOURCE name (columns) WITH (connector = ..., ...)`.
    CreateSource {
        table: Box<ast::CreateTable>,
        time: Box<TimeColumns>,
        clauses: Box<sink::SourceClauses>,
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
    /// `CHECKPOINT`: take a checkpoint now.
    Checkpoint,
    /// `CREATE SNAPSHOT name`: a checkpoint kept under a name (a savepoint).
    CreateSnapshot(String),
    /// `SUBSCRIBE [TO] view [WITH (snapshot = true | false)]`.
    Subscribe {
        view: String,
        snapshot: bool,
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

/// Splits `sql` into statements at semicolons outside quotes, dollar quotes
/// and comments. Empty statements are dropped.
///
/// ```
/// let parts = eddy::sql::split_statements("INSERT INTO t VALUES ('a;b'); -- done;\nFLUSH;");
/// assert_eq!(parts, vec!["INSERT INTO t VALUES ('a;b')", " -- done;\nFLUSH"]);
/// ```
pub fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 1; // doubled quote escapes itself
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // $tag$ ... $tag$ (but not a $1 placeholder)
                if let Some(end) = sql[i + 1..].find('$') {
                    let tag = &sql[i..i + end + 2];
                    if tag[1..tag.len() - 1]
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_')
                        && !tag[1..].starts_with(|c: char| c.is_ascii_digit())
                    {
                        if let Some(close) = sql[i + tag.len()..].find(tag) {
                            i += tag.len() + close + tag.len() - 1;
                        }
                    }
                }
            }
            b';' => {
                statements.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    statements.push(&sql[start.min(sql.len())..]);
    statements.into_iter().filter(|s| !is_blank(s)).collect()
}

/// Whether `sql` holds nothing but whitespace and comments.
fn is_blank(sql: &str) -> bool {
    leading_words(sql, 1).is_empty()
}

/// The first `n` words of `sql`, uppercased, skipping comments.
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            break;
        }
    }
    rest.split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_uppercase)
        .collect()
}

/// Parses one statement (as returned by [`split_statements`]).
pub fn parse_statement(sql: &str) -> Result<EddyStatement> {
    let words = leading_words(sql, 4);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["FLUSH"] => return Ok(EddyStatement::Flush),
        ["CHECKPOINT"] => return Ok(EddyStatement::Checkpoint),
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
        ["CREATE", "SOURCE", ..] => return parse_create_source(sql),
        ["DROP", "SOURCE", ..] => {
            let (names, if_exists, cascade) = sink::parse_drop(sql, "SOURCE")?;
            return Ok(EddyStatement::Drop {
                kind: RelationKind::Source,
                names,
                if_exists,
                cascade,
            });
        }
        ["CREATE", "SINK", ..] => {
            return Ok(EddyStatement::CreateSink(Box::new(
                sink::parse_create_sink(sql)?,
            )))
        }
        ["DROP", "SINK", ..] => {
            let (names, if_exists, _cascade) = sink::parse_drop(sql, "SINK")?;
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
    // eddy's clauses that sqlparser does not know are taken out first.
    let (sql, time) = match words.as_slice() {
        ["CREATE", "TABLE", ..] => {
            let (sql, proctime) = extract_proctime(sql)?;
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
    let statement = classify(parsed.remove(0), sql)?;
    match (statement, time, emit_on_window_close) {
        (EddyStatement::CreateTable(create, _), time, false) => Ok(EddyStatement::CreateTable(
            create,
            Box::new(time.unwrap_or_default()),
        )),
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

/// Rewrites Flink's window spelling
/// `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))` to eddy's
/// `TUMBLE(t, ts, size)` (same for HOP, and for SESSION without PARTITION
/// BY). Other SQL is returned unchanged.
fn rewrite_flink_windows(sql: &str) -> Result<String> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.to_uppercase().contains("DESCRIPTOR") {
        return Ok(sql.to_string());
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| EddyError::Syntax(e.to_string()))?;
    let is_word =
        |t: &Token, w: &str| matches!(t, Token::Word(word) if word.value.eq_ignore_ascii_case(w));
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i], Token::Whitespace(_)))
        .collect();
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut skip_until = 0;
    // Paren depth of the original text, and the depths to which the ')'
    // that closed a rewritten `TABLE(` returns: that ')' is dropped.
    let mut depth = 0usize;
    let mut drop_close_at: Vec<usize> = Vec::new();
    for position in 0..significant.len() {
        let at = |k: usize| significant.get(position + k).map(|&j| &tokens[j]);
        if position < skip_until {
            continue;
        }
        let pattern = at(0).is_some_and(|t| is_word(t, "TABLE"))
            && at(1) == Some(&Token::LParen)
            && at(2).is_some_and(|t| ["TUMBLE", "HOP", "SESSION"].iter().any(|w| is_word(t, w)))
            && at(3) == Some(&Token::LParen)
            && at(4).is_some_and(|t| is_word(t, "TABLE"))
            && matches!(at(5), Some(Token::Word(_)))
            && at(6) == Some(&Token::Comma)
            && at(7).is_some_and(|t| is_word(t, "DESCRIPTOR"))
            && at(8) == Some(&Token::LParen)
            && matches!(at(9), Some(Token::Word(_)))
            && at(10) == Some(&Token::RParen);
        let space = Token::Whitespace(datafusion::sql::sqlparser::tokenizer::Whitespace::Space);
        if pattern {
            // TABLE ( TUMBLE ( TABLE t , DESCRIPTOR ( ts )  ->  TUMBLE ( t , ts
            for token in [at(2), at(3), at(5), at(6), at(9)].into_iter().flatten() {
                out.push(token.clone());
                out.push(space.clone());
            }
            drop_close_at.push(depth);
            depth += 2;
            skip_until = position + 11;
            continue;
        }
        let token = tokens[significant[position]].clone();
        match token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth = depth.saturating_sub(1);
                if drop_close_at.last() == Some(&depth) {
                    drop_close_at.pop();
                    continue;
                }
            }
            _ => {}
        }
        out.push(token);
        out.push(space);
    }
    Ok(render_tokens(&out))
}

/// Rewrites `t FOR SYSTEM_TIME AS OF PROCTIME()` (a lookup join's table,
/// which the Postgres dialect cannot parse) to the table function
/// `__eddy_lookup(t)` (`catalog::lookup`). Other SQL is returned unchanged.
fn rewrite_lookup_joins(sql: &str) -> Result<String> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};
    if !sql.to_uppercase().contains("SYSTEM_TIME") {
        return Ok(sql.to_string());
    }
    let mut tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| EddyError::Syntax(e.to_string()))?;
    let is_word =
        |t: &Token, w: &str| matches!(t, Token::Word(word) if word.value.eq_ignore_ascii_case(w));
    let significant = |tokens: &[Token], from: usize| -> Vec<usize> {
        (from..tokens.len())
            .filter(|&i| !matches!(tokens[i], Token::Whitespace(_)))
            .collect()
    };
    let mut from = 0;
    loop {
        let next = significant(&tokens, from);
        let Some(k) = (0..next.len()).find(|&k| {
            is_word(&tokens[next[k]], "FOR")
                && next
                    .get(k + 1)
                    .is_some_and(|&i| is_word(&tokens[i], "SYSTEM_TIME"))
        }) else {
            break;
        };
        let at = |j: usize| next.get(k + j).map(|&i| &tokens[i]);
        let proctime = at(2).is_some_and(|t| is_word(t, "AS"))
            && at(3).is_some_and(|t| is_word(t, "OF"))
            && at(4).is_some_and(|t| is_word(t, "PROCTIME"))
            && at(5) == Some(&Token::LParen)
            && at(6) == Some(&Token::RParen);
        if !proctime {
            return Err(crate::not_supported!(
                "FOR SYSTEM_TIME AS OF is supported only as FOR SYSTEM_TIME AS OF PROCTIME() \
                 (a lookup join against the table's rows at processing time)"
            ));
        }
        // The relation name before FOR: words joined by periods.
        let mut start = next[k];
        let before = |i: usize, tokens: &[Token]| {
            (0..i)
                .rev()
                .find(|&j| !matches!(tokens[j], Token::Whitespace(_)))
        };
        match before(start, &tokens) {
            Some(j) if matches!(tokens[j], Token::Word(_)) => start = j,
            _ => {
                return Err(EddyError::Syntax(
                    "FOR SYSTEM_TIME AS OF follows a table name".into(),
                ))
            }
        }
        while let Some(period) = before(start, &tokens).filter(|&j| tokens[j] == Token::Period) {
            match before(period, &tokens) {
                Some(j) if matches!(tokens[j], Token::Word(_)) => start = j,
                _ => break,
            }
        }
        let end = next[k]; // FOR
        let after = next[k + 6] + 1; // past ')'
        let function = Token::Word(Word {
            value: crate::catalog::lookup::LOOKUP_FUNCTION.to_string(),
            quote_style: None,
            keyword: datafusion::sql::sqlparser::keywords::Keyword::NoKeyword,
        });
        let mut rewritten: Vec<Token> = tokens[..start].to_vec();
        rewritten.push(function);
        rewritten.push(Token::LParen);
        rewritten.extend(tokens[start..end].iter().cloned());
        rewritten.push(Token::RParen);
        from = rewritten.len();
        rewritten.extend(tokens[after..].iter().cloned());
        tokens = rewritten;
    }
    Ok(render_tokens(&tokens))
}

/// SQL text of tokens (the inverse of the tokenizer).
fn render_tokens(tokens: &[datafusion::sql::sqlparser::tokenizer::Token]) -> String {
    use datafusion::sql::sqlparser::tokenizer::Token;
    tokens
        .iter()
        .map(|t| match t {
            // Display does not re-escape quotes inside strings.
            Token::SingleQuotedString(s) => format!("'{}'", s.replace('\'', "''")),
            other => other.to_string(),
        })
        .collect()
}

/// `SUBSCRIBE [TO] view [WITH (snapshot = true | false)]`.
fn parse_subscribe(sql: &str) -> Result<EddyStatement> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let rest = match words.get(1) {
        Some(w) if w.eq_ignore_ascii_case("TO") => &words[2..],
        _ => &words[1..],
    };
    let Some((name, options)) = rest.split_first() else {
        return Err(EddyError::Syntax(
            "SUBSCRIBE needs a materialized view".into(),
        ));
    };
    let name = name.trim_end_matches(';');
    let view = relation_name(&ObjectName::from(vec![ast::Ident::new(name)]))?;
    let view = if name.starts_with('"') {
        name.trim_matches('"').to_string()
    } else {
        view
    };
    let mut snapshot = true;
    if !options.is_empty() {
        let options = sink::parse_with_options(&options.join(" "))?;
        for (key, value) in options {
            match (key.as_str(), value.to_lowercase().as_str()) {
                ("snapshot", "true") => snapshot = true,
                ("snapshot", "false") => snapshot = false,
                _ => {
                    return Err(EddyError::InvalidParameter(format!(
                        "SUBSCRIBE option {key} = '{value}'; known: snapshot = true | false"
                    )))
                }
            }
        }
    }
    Ok(EddyStatement::Subscribe { view, snapshot })
}

/// A cursor's name as written: folded to lower case unless quoted.
fn cursor_name(word: &str) -> String {
    if word.starts_with('"') {
        word.trim_matches('"').to_string()
    } else {
        word.to_lowercase()
    }
}

/// `DECLARE c SUBSCRIPTION CURSOR FOR view [WITH (...)]`, or Materialize's
/// `DECLARE c CURSOR FOR SUBSCRIBE [TO] view [WITH (...)]`. Cursors over
/// queries are not there yet, and say so.
fn parse_declare(sql: &str) -> Result<EddyStatement> {
    let words: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let (name, rest) = match upper.as_slice() {
        [_, _, "SUBSCRIPTION", "CURSOR", "FOR", _, ..] => (words[1], &words[5..]),
        [_, _, "CURSOR", "FOR", "SUBSCRIBE", _, ..] => (words[1], &words[5..]),
        _ if upper.contains(&"CURSOR") => {
            return Err(crate::not_supported!(
                "cursors over queries; eddy has subscription cursors: DECLARE c SUBSCRIPTION CURSOR FOR <materialized view>"
            ))
        }
        _ => {
            return Err(EddyError::Syntax(
                "expected DECLARE <cursor> SUBSCRIPTION CURSOR FOR <materialized view>".into(),
            ))
        }
    };
    match parse_subscribe(&format!("SUBSCRIBE {}", rest.join(" ")))? {
        EddyStatement::Subscribe { view, snapshot } => Ok(EddyStatement::DeclareCursor {
            name: cursor_name(name),
            view,
            snapshot,
        }),
        _ => Err(crate::internal!("SUBSCRIBE parsed as something else")),
    }
}

/// `FETCH [NEXT | ALL | n | FORWARD n | FORWARD ALL] [FROM | IN] c
/// [WITH (timeout = '...')]`.
fn parse_fetch(sql: &str) -> Result<EddyStatement> {
    let sql = sql.trim().trim_end_matches(';');
    let (head, options) = match sql.to_uppercase().find(" WITH") {
        Some(at) => (&sql[..at], Some(&sql[at..])),
        None => (sql, None),
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    if words[0].eq_ignore_ascii_case("MOVE") {
        return Err(crate::not_supported!(
            "MOVE; FETCH reads a subscription cursor"
        ));
    }
    let mut rest: Vec<&str> = words[1..].to_vec();
    if rest
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("FORWARD"))
    {
        rest.remove(0);
    }
    let mut count = Some(1);
    if let Some(first) = rest.first() {
        let upper = first.to_uppercase();
        let known = match upper.as_str() {
            "NEXT" => true,
            "ALL" => {
                count = None;
                true
            }
            _ => match first.parse::<usize>() {
                Ok(n) => {
                    count = Some(n);
                    true
                }
                Err(_) => false,
            },
        };
        if known && rest.len() > 1 {
            rest.remove(0);
        }
    }
    if rest
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("FROM") || w.eq_ignore_ascii_case("IN"))
    {
        rest.remove(0);
    }
    let [cursor] = rest.as_slice() else {
        return Err(EddyError::Syntax(
            "expected FETCH [n | NEXT | ALL] [FROM] <cursor> [WITH (timeout = '...')]".into(),
        ));
    };
    let mut timeout_ms = None;
    if let Some(options) = options {
        for (key, value) in sink::parse_with_options(options.trim())? {
            match key.as_str() {
                "timeout" => {
                    let micros = types::interval_micros(&value)?;
                    if micros < 0 {
                        return Err(EddyError::InvalidParameter(
                            "FETCH timeout cannot be negative".into(),
                        ));
                    }
                    timeout_ms = Some(micros as u64 / 1000);
                }
                _ => {
                    return Err(EddyError::InvalidParameter(format!(
                        "FETCH option {key}; known: timeout"
                    )))
                }
            }
        }
    }
    Ok(EddyStatement::Fetch {
        cursor: cursor_name(cursor),
        count,
        timeout_ms,
    })
}

/// `CREATE SOURCE name (columns, WATERMARK ...) WITH (options)`: the column
/// list is read as CREATE TABLE's; the options (names with dots) by eddy.
fn parse_create_source(sql: &str) -> Result<EddyStatement> {
    let body = sql.trim_start();
    let after_create = body[6..].trim_start(); // "CREATE"
    let rest = &after_create[6..]; // "SOURCE"

    // The column list, if any, ends at the ')' matching the first '(' before
    // INCLUDE or WITH; a source without one (nexmark) takes its connector's
    // columns.
    let open = rest.find('(').filter(|&open| {
        !rest[..open]
            .split_whitespace()
            .any(|word| word.eq_ignore_ascii_case("WITH") || word.eq_ignore_ascii_case("INCLUDE"))
    });
    let Some(open) = open else {
        let upper = rest.to_uppercase();
        let with = [" INCLUDE ", " WITH"]
            .iter()
            .filter_map(|w| upper.find(w))
            .min()
            .ok_or_else(|| {
                EddyError::Syntax("CREATE SOURCE needs WITH (connector = ...)".into())
            })?;
        let (table, time) = source_columns(&format!("{} ()", rest[..with].trim()))?;
        return source_statement(table, time, &rest[with..]);
    };
    let mut depth = 0;
    let mut close = None;
    let mut in_quote = false;
    for (i, c) in rest.char_indices().skip(open) {
        match c {
            '\'' => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close =
        close.ok_or_else(|| EddyError::Syntax("unbalanced parentheses in CREATE SOURCE".into()))?;
    let (table, time) = source_columns(&rest[..=close])?;
    source_statement(table, time, &rest[close + 1..])
}

/// `name (columns)` of a CREATE SOURCE, read as CREATE TABLE's.
fn source_columns(name_and_columns: &str) -> Result<(Box<ast::CreateTable>, Box<TimeColumns>)> {
    match parse_statement(&format!("CREATE TABLE {name_and_columns}"))? {
        EddyStatement::CreateTable(table, time) => Ok((table, time)),
        _ => Err(crate::internal!(
            "CREATE SOURCE columns did not parse as a table"
        )),
    }
}

fn source_statement(
    table: Box<ast::CreateTable>,
    time: Box<TimeColumns>,
    clauses_sql: &str,
) -> Result<EddyStatement> {
    let clauses = Box::new(sink::parse_source_clauses(clauses_sql.trim())?);
    Ok(EddyStatement::CreateSource {
        table,
        time,
        clauses,
    })
}

/// Removes a trailing `EMIT ON WINDOW CLOSE` (before an optional `;`).
fn strip_emit_on_window_close(sql: &str) -> (String, bool) {
    let trimmed = sql.trim_end().trim_end_matches(';').trim_end();
    let words: Vec<&str> = trimmed.rsplitn(5, char::is_whitespace).collect();
    if words.len() == 5
        && words[..4]
            .iter()
            .rev()
            .map(|w| w.to_uppercase())
            .eq(["EMIT", "ON", "WINDOW", "CLOSE"])
    {
        (words[4].to_string(), true)
    } else {
        (sql.to_string(), false)
    }
}

/// Rewrites `column [type] AS PROCTIME()` in a CREATE TABLE column list to
/// `column TIMESTAMP`; returns the rest and the column's name.
fn extract_proctime(sql: &str) -> Result<(String, Option<String>)> {
    let upper = sql.to_uppercase();
    let Some(at) = upper.find("PROCTIME") else {
        return Ok((sql.to_string(), None));
    };
    let after = upper[at + 8..].trim_start();
    let Some(after) = after.strip_prefix('(').map(str::trim_start) else {
        return Ok((sql.to_string(), None));
    };
    if !after.starts_with(')') {
        return Err(EddyError::Syntax("PROCTIME() takes no arguments".into()));
    }
    let end = sql.len() - after.len() + 1;
    // The column item starts after the last '(' or ',' before it.
    let start = sql[..at].rfind([',', '(']).map_or(0, |i| i + 1);
    let item: Vec<&str> = sql[start..at].split_whitespace().collect();
    let (name, declared) = match item.as_slice() {
        [name, rest @ .., last] if last.eq_ignore_ascii_case("AS") => (*name, rest.join(" ")),
        _ => {
            return Err(EddyError::Syntax(
                "a processing-time column is declared as: name [TIMESTAMP] AS PROCTIME()".into(),
            ))
        }
    };
    if !declared.is_empty() && !declared.to_uppercase().starts_with("TIMESTAMP") {
        return Err(EddyError::TypeMismatch(format!(
            "processing-time column {name} must be a TIMESTAMP, not {declared}"
        )));
    }
    let column = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => name.to_lowercase(),
    };
    let rewritten = format!("{} {name} TIMESTAMP{}", &sql[..start], &sql[end..]);
    if rewritten.to_uppercase().contains("PROCTIME") {
        return Err(crate::not_supported!(
            "more than one PROCTIME() column in a relation"
        ));
    }
    Ok((rewritten, Some(column)))
}

/// Takes `WATERMARK FOR column AS expression` out of a CREATE TABLE column
/// list (sqlparser does not know it); returns the rest and the clause.
fn extract_watermark(sql: &str) -> Result<(String, Option<WatermarkClause>)> {
    let bytes = sql.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    let mut last_comma_at_depth_1: Option<usize> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => last_comma_at_depth_1 = Some(i),
            b'w' | b'W'
                if depth == 1
                    && sql[i..].len() >= 9
                    && sql[i..i + 9].eq_ignore_ascii_case("watermark") =>
            {
                let before_ok =
                    i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                let after_ok = bytes
                    .get(i + 9)
                    .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
                if before_ok && after_ok {
                    // The clause runs to the next comma or ')' at depth 1.
                    let (mut end, mut inner) = (i, 0usize);
                    while end < bytes.len() {
                        match bytes[end] {
                            b'\'' => {
                                end += 1;
                                while end < bytes.len() && bytes[end] != b'\'' {
                                    end += 1;
                                }
                            }
                            b'(' => inner += 1,
                            b')' if inner == 0 => break,
                            b')' => inner -= 1,
                            b',' if inner == 0 => break,
                            _ => {}
                        }
                        end += 1;
                    }
                    let clause = parse_watermark_clause(&sql[i..end])?;
                    let start = last_comma_at_depth_1.unwrap_or(i);
                    let rest = if last_comma_at_depth_1.is_some() {
                        format!("{}{}", &sql[..start], &sql[end..])
                    } else {
                        // First item: drop the comma after it instead.
                        let after = sql[end..]
                            .trim_start()
                            .strip_prefix(',')
                            .unwrap_or(&sql[end..]);
                        format!("{}{}", &sql[..start], after)
                    };
                    return Ok((rest, Some(clause)));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok((sql.to_string(), None))
}

fn parse_watermark_clause(clause: &str) -> Result<WatermarkClause> {
    let syntax = |e: datafusion::sql::sqlparser::parser::ParserError| {
        EddyError::Syntax(format!(
            "in WATERMARK FOR column AS expression: {}",
            e.to_string().trim_start_matches("sql parser error: ")
        ))
    };
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(clause).map_err(syntax)?;
    parser.next_token(); // WATERMARK
    parser
        .expect_keyword(datafusion::sql::sqlparser::keywords::Keyword::FOR)
        .map_err(syntax)?;
    let column = normalize_ident(&parser.parse_identifier().map_err(syntax)?);
    parser
        .expect_keyword(datafusion::sql::sqlparser::keywords::Keyword::AS)
        .map_err(syntax)?;
    let expression = parser.parse_expr().map_err(syntax)?;
    Ok(WatermarkClause { column, expression })
}

fn classify(statement: Statement, sql: &str) -> Result<EddyStatement> {
    Ok(match statement {
        Statement::Query(_) => EddyStatement::Query(Box::new(statement)),
        Statement::Explain {
            statement: ref inner,
            ..
        } if matches!(inner.as_ref(), Statement::Query(_)) => {
            EddyStatement::Query(Box::new(statement))
        }
        Statement::CreateTable(create) => {
            if create.query.is_some() {
                return Err(crate::not_supported!(
                    "CREATE TABLE ... AS SELECT is not supported; use CREATE MATERIALIZED VIEW"
                ));
            }
            EddyStatement::CreateTable(Box::new(create), Box::default())
        }
        Statement::CreateView(view) => {
            if !view.materialized {
                return Err(crate::not_supported!(
                    "plain views are not supported yet; use CREATE MATERIALIZED VIEW"
                ));
            }
            if view.or_replace || view.or_alter {
                return Err(crate::not_supported!(
                    "CREATE OR REPLACE MATERIALIZED VIEW is not supported yet"
                ));
            }
            let options = view_options(&view.options)?;
            EddyStatement::CreateView(Box::new(CreateView {
                name: relation_name(&view.name)?,
                columns: view
                    .columns
                    .iter()
                    .map(|c| normalize_ident(&c.name))
                    .collect(),
                query: view.query,
                if_not_exists: view.if_not_exists,
                definition: sql.trim().to_string(),
                emit_on_window_close: false,
                allowed_lateness_micros: options.allowed_lateness_micros,
                idle_timeout_micros: options.idle_timeout_micros,
                allow_cross_join: options.allow_cross_join,
            }))
        }
        Statement::Insert(ref insert) => {
            if insert.on.is_some() {
                return Err(crate::not_supported!(
                    "INSERT ... ON CONFLICT is not supported yet"
                ));
            }
            if insert.returning.is_some() {
                return Err(crate::not_supported!(
                    "INSERT ... RETURNING is not supported yet"
                ));
            }
            let table = match &insert.table {
                ast::TableObject::TableName(name) => relation_name(name)?,
                other => {
                    return Err(crate::not_supported!(
                        "INSERT INTO {other} is not supported"
                    ))
                }
            };
            EddyStatement::Write {
                table,
                kind: WriteKind::Insert,
                statement: Box::new(statement),
            }
        }
        Statement::Update(ref update) => {
            if update.from.is_some() {
                return Err(crate::not_supported!(
                    "UPDATE ... FROM is not supported yet"
                ));
            }
            if update.returning.is_some() {
                return Err(crate::not_supported!(
                    "UPDATE ... RETURNING is not supported yet"
                ));
            }
            let table = table_factor_name(&update.table.relation)?;
            EddyStatement::Write {
                table,
                kind: WriteKind::Update,
                statement: Box::new(statement),
            }
        }
        Statement::Delete(ref delete) => {
            if delete.using.is_some() {
                return Err(crate::not_supported!(
                    "DELETE ... USING is not supported yet"
                ));
            }
            if delete.returning.is_some() {
                return Err(crate::not_supported!(
                    "DELETE ... RETURNING is not supported yet"
                ));
            }
            let tables = match &delete.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            let [table] = tables.as_slice() else {
                return Err(crate::not_supported!(
                    "DELETE from several tables is not supported"
                ));
            };
            let table = table_factor_name(&table.relation)?;
            EddyStatement::Write {
                table,
                kind: WriteKind::Delete,
                statement: Box::new(statement),
            }
        }
        Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => {
            let kind = match object_type {
                ObjectType::Table => RelationKind::Table,
                ObjectType::MaterializedView => RelationKind::MaterializedView,
                other => return Err(crate::not_supported!("DROP {other} is not supported")),
            };
            let names = names
                .iter()
                .map(relation_name)
                .collect::<Result<Vec<_>>>()?;
            EddyStatement::Drop {
                kind,
                names,
                if_exists,
                cascade,
            }
        }
        Statement::Set(ast::Set::SingleAssignment {
            variable, values, ..
        }) => EddyStatement::Set {
            name: variable.to_string().to_lowercase(),
            value: values
                .iter()
                .map(|v| v.to_string().trim_matches('\'').to_string())
                .collect::<Vec<_>>()
                .join(", "),
        },
        Statement::Set(_) => EddyStatement::Set {
            name: String::new(),
            value: String::new(),
        },
        Statement::ShowVariable { variable } => EddyStatement::ShowVariable(
            variable
                .iter()
                .map(|i| i.value.to_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Statement::StartTransaction { .. } => EddyStatement::Transaction(TransactionStep::Begin),
        Statement::Commit { .. } => EddyStatement::Transaction(TransactionStep::Commit),
        Statement::Rollback {
            savepoint: None, ..
        } => EddyStatement::Transaction(TransactionStep::Rollback),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => EddyStatement::Transaction(TransactionStep::RollbackToSavepoint),
        Statement::Savepoint { .. } => EddyStatement::Transaction(TransactionStep::Savepoint),
        Statement::ReleaseSavepoint { .. } => EddyStatement::Transaction(TransactionStep::Release),
        other => {
            let text = other.to_string();
            let words: Vec<&str> = text.split_whitespace().take(2).collect();
            return Err(crate::not_supported!(
                "{} is not supported",
                words.join(" ")
            ));
        }
    })
}

/// The options of `CREATE MATERIALIZED VIEW v WITH (...)`.
#[derive(Debug, Default)]
struct ViewOptions {
    allowed_lateness_micros: i64,
    idle_timeout_micros: Option<i64>,
    allow_cross_join: bool,
}

/// `CREATE MATERIALIZED VIEW v WITH (allowed_lateness = '10 seconds',
/// idle_timeout = '30 seconds', allow_cross_join = true)`.
fn view_options(options: &ast::CreateTableOptions) -> Result<ViewOptions> {
    let options = match options {
        ast::CreateTableOptions::None => return Ok(ViewOptions::default()),
        ast::CreateTableOptions::With(options) => options,
        other => return Err(crate::not_supported!("view options {other}")),
    };
    let mut parsed = ViewOptions::default();
    for option in options {
        let ast::SqlOption::KeyValue { key, value } = option else {
            return Err(crate::not_supported!("materialized view option {option}"));
        };
        let micros = || -> Result<i64> {
            let text = value.to_string();
            let micros = types::interval_micros(text.trim_matches('\''))?;
            if micros < 0 {
                return Err(EddyError::InvalidParameter(format!(
                    "{} must not be negative",
                    key.value
                )));
            }
            Ok(micros)
        };
        match key.value.to_lowercase().as_str() {
            "allowed_lateness" => parsed.allowed_lateness_micros = micros()?,
            "idle_timeout" => parsed.idle_timeout_micros = Some(micros()?),
            "allow_cross_join" => {
                parsed.allow_cross_join =
                    match value.to_string().trim_matches('\'').to_lowercase().as_str() {
                        "true" | "on" => true,
                        "false" | "off" => false,
                        other => {
                            return Err(EddyError::InvalidParameter(format!(
                                "allow_cross_join must be true or false, not {other}"
                            )))
                        }
                    }
            }
            _ => {
                return Err(crate::not_supported!(
                    "materialized view option {option}; known: allowed_lateness, idle_timeout, allow_cross_join"
                ))
            }
        }
    }
    Ok(parsed)
}

fn table_factor_name(factor: &ast::TableFactor) -> Result<String> {
    match factor {
        ast::TableFactor::Table { name, .. } => relation_name(name),
        other => Err(crate::not_supported!("writing to {other} is not supported")),
    }
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
                    sink::KafkaMetadata::Partition,
                    "kafka_partition".to_string()
                ),
                (sink::KafkaMetadata::Offset, "o".to_string())
            ]
        );
        let format = clauses.format.unwrap();
        assert_eq!(format.format, sink::MessageFormat::Upsert);
        assert_eq!(format.encoding, sink::MessageEncoding::Csv);
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
