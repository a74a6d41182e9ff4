//! Parsing the statements that name a connector, eddy's own:
//!
//! ```sql
//! CREATE SOURCE name (columns, WATERMARK FOR ...) [INCLUDE ...]
//! WITH (connector = 'kafka', topic = '...', properties.bootstrap.server = '...', ...)
//! [FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON | CSV | AVRO [(options)]]
//!
//! CREATE SINK name FROM view | AS SELECT ...
//! WITH (connector = 'postgres', url = '...', table = '...', key.with.dots = 'value', ...)
//! [FORMAT ... ENCODE ...]
//! ```
//!
//! Option names may hold dots, which sqlparser's `WITH (...)` does not
//! take, so the clauses after the column list are read here.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{self, Query};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{parse_statement, relation_name, EddyStatement, TimeColumns};
use crate::connectors::format::{
    FormatSpec, KafkaMetadata, MessageEncoding, MessageFormat, SourceClauses,
};
use crate::error::{EddyError, Result};

/// What a sink reads.
#[derive(Debug, Clone)]
pub enum SinkInput {
    View(String),
    Query(Box<Query>),
}

#[derive(Debug, Clone)]
pub struct CreateSink {
    pub name: String,
    pub input: SinkInput,
    /// Option names are lower-cased; values are kept as written.
    pub options: BTreeMap<String, String>,
    /// `FORMAT ... ENCODE ...`, if given.
    pub format: Option<FormatSpec>,
    pub if_not_exists: bool,
}

/// `[INCLUDE what [AS name] ...] WITH (options) [FORMAT ... ENCODE ...]`.
pub fn parse_source_clauses(sql: &str) -> Result<SourceClauses> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    let mut includes = Vec::new();
    while parser.parse_keyword(Keyword::INCLUDE) {
        let what = match parser.next_token().token {
            Token::Word(w) => w.value.to_lowercase(),
            other => {
                return Err(EddyError::Syntax(format!(
                    "expected what to INCLUDE, found {other}"
                )))
            }
        };
        let kind = match what.as_str() {
            "partition" => KafkaMetadata::Partition,
            "offset" => KafkaMetadata::Offset,
            "timestamp" => KafkaMetadata::Timestamp,
            "key" => KafkaMetadata::Key,
            other => {
                return Err(crate::not_supported!(
                    "INCLUDE {other}: a source can include partition, offset, timestamp or key"
                ))
            }
        };
        let name = if parser.parse_keyword(Keyword::AS) {
            super::normalize_ident(&parser.parse_identifier().map_err(syntax)?)
        } else {
            format!("kafka_{what}")
        };
        includes.push((kind, name));
    }
    parser.expect_keyword(Keyword::WITH).map_err(syntax)?;
    let options = parse_options(&mut parser)?;
    let format = parse_format(&mut parser)?;
    expect_end(&mut parser, "after the source's options")?;
    Ok(SourceClauses {
        includes,
        options,
        format,
    })
}

/// An optional `FORMAT <format> ENCODE <encoding> [(options)]`.
fn parse_format(parser: &mut Parser) -> Result<Option<FormatSpec>> {
    if !parser.parse_keyword(Keyword::FORMAT) {
        return Ok(None);
    }
    let word = |parser: &mut Parser, what: &str| match parser.next_token().token {
        Token::Word(w) => Ok(w.value.to_uppercase()),
        other => Err(EddyError::Syntax(format!("expected {what}, found {other}"))),
    };
    let format = match word(parser, "PLAIN, UPSERT or DEBEZIUM after FORMAT")?.as_str() {
        "PLAIN" => MessageFormat::Plain,
        "UPSERT" => MessageFormat::Upsert,
        "DEBEZIUM" => MessageFormat::Debezium,
        other => {
            return Err(crate::not_supported!(
                "FORMAT {other}; eddy knows FORMAT PLAIN, UPSERT and DEBEZIUM"
            ))
        }
    };
    expect_word(parser, "ENCODE")?;
    let encoding = match word(parser, "JSON, CSV or AVRO after ENCODE")?.as_str() {
        "JSON" => MessageEncoding::Json,
        "CSV" => MessageEncoding::Csv,
        "AVRO" => MessageEncoding::Avro,
        other => {
            return Err(crate::not_supported!(
                "ENCODE {other}; eddy knows ENCODE JSON, CSV and AVRO"
            ))
        }
    };
    let encode_options = if parser.peek_token().token == Token::LParen {
        parse_options(parser)?
    } else {
        BTreeMap::new()
    };
    Ok(Some(FormatSpec {
        format,
        encoding,
        encode_options,
    }))
}

fn syntax(e: impl std::fmt::Display) -> EddyError {
    EddyError::Syntax(
        e.to_string()
            .trim_start_matches("sql parser error: ")
            .to_string(),
    )
}

pub fn parse_create_sink(sql: &str) -> Result<CreateSink> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    parser.expect_keyword(Keyword::CREATE).map_err(syntax)?;
    expect_word(&mut parser, "SINK")?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = relation_name(&parser.parse_object_name(false).map_err(syntax)?)?;
    let input = if parser.parse_keyword(Keyword::FROM) {
        SinkInput::View(relation_name(
            &parser.parse_object_name(false).map_err(syntax)?,
        )?)
    } else if parser.parse_keyword(Keyword::AS) {
        // The query ends where the sink's `WITH (` starts (the last one at
        // the top level). Parsed on its own: in one stream, a query's last
        // table would take `WITH (...)` for table hints and the sink's
        // options would be missing ("Expected: WITH, found: EOF").
        let mut tokens = vec![];
        loop {
            let token = parser.next_token();
            if token.token == Token::EOF {
                break;
            }
            tokens.push(token);
        }
        let mut depth = 0i32;
        let mut options_at = None;
        for (i, token) in tokens.iter().enumerate() {
            match &token.token {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                Token::Word(w)
                    if depth == 0
                        && w.keyword == Keyword::WITH
                        && tokens.get(i + 1).is_some_and(|t| t.token == Token::LParen) =>
                {
                    options_at = Some(i)
                }
                _ => {}
            }
        }
        let options_at = options_at.ok_or_else(|| {
            EddyError::Syntax(format!(
                "CREATE SINK {name} needs WITH (connector = ..., ...) after its query"
            ))
        })?;
        let rest = tokens.split_off(options_at);
        let mut query = Parser::new(&dialect).with_tokens_with_locations(tokens);
        let input = SinkInput::Query(query.parse_query().map_err(syntax)?);
        expect_end(&mut query, "in the sink's query")?;
        parser = Parser::new(&dialect).with_tokens_with_locations(rest);
        input
    } else {
        return Err(EddyError::Syntax(format!(
            "expected FROM <materialized view> or AS SELECT ... after CREATE SINK {name}"
        )));
    };
    parser.expect_keyword(Keyword::WITH).map_err(syntax)?;
    let options = parse_options(&mut parser)?;
    let format = parse_format(&mut parser)?;
    expect_end(&mut parser, "after the WITH options")?;
    Ok(CreateSink {
        name,
        input,
        options,
        format,
        if_not_exists,
    })
}

/// `WITH (name = value, ...)` on its own (names may contain dots).
pub fn parse_with_options(sql: &str) -> Result<BTreeMap<String, String>> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    parser.expect_keyword(Keyword::WITH).map_err(syntax)?;
    let options = parse_options(&mut parser)?;
    expect_end(&mut parser, "after the WITH options")?;
    Ok(options)
}

/// `DROP <what> [IF EXISTS] name, ... [CASCADE]` for eddy's own objects.
pub fn parse_drop(sql: &str, what: &str) -> Result<(Vec<String>, bool, bool)> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    parser.expect_keyword(Keyword::DROP).map_err(syntax)?;
    expect_word(&mut parser, what)?;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let mut names = vec![relation_name(
        &parser.parse_object_name(false).map_err(syntax)?,
    )?];
    while parser.consume_token(&Token::Comma) {
        names.push(relation_name(
            &parser.parse_object_name(false).map_err(syntax)?,
        )?);
    }
    let cascade = parser.parse_keyword(Keyword::CASCADE);
    expect_end(&mut parser, &format!("in DROP {what}"))?;
    Ok((names, if_exists, cascade))
}

/// An optional `;`, then the end of the statement.
fn expect_end(parser: &mut Parser, context: &str) -> Result<()> {
    let _ = parser.consume_token(&Token::SemiColon);
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(EddyError::Syntax(format!("unexpected {other} {context}"))),
    }
}

fn expect_word(parser: &mut Parser, word: &str) -> Result<()> {
    match parser.next_token().token {
        Token::Word(w) if w.value.eq_ignore_ascii_case(word) => Ok(()),
        other => Err(EddyError::Syntax(format!("expected {word}, found {other}"))),
    }
}

/// `( name = value, ... )` where a name may contain dots.
fn parse_options(parser: &mut Parser) -> Result<BTreeMap<String, String>> {
    parser.expect_token(&Token::LParen).map_err(syntax)?;
    let mut options = BTreeMap::new();
    loop {
        let mut key = String::new();
        loop {
            match parser.next_token().token {
                Token::Word(w) => key.push_str(&w.value.to_lowercase()),
                other => {
                    return Err(EddyError::Syntax(format!(
                        "expected an option name, found {other}"
                    )))
                }
            }
            if !parser.consume_token(&Token::Period) {
                break;
            }
            key.push('.');
        }
        parser.expect_token(&Token::Eq).map_err(syntax)?;
        let value = match parser.next_token().token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) if w.keyword == Keyword::SECRET => {
                let name = super::normalize_ident(&parser.parse_identifier().map_err(syntax)?);
                format!("{}{name}", super::SECRET_REFERENCE)
            }
            Token::Word(w) => w.value,
            other => {
                return Err(EddyError::Syntax(format!(
                    "expected a value for option {key}, found {other}"
                )))
            }
        };
        if options.insert(key.clone(), value).is_some() {
            return Err(EddyError::Syntax(format!("option {key} is given twice")));
        }
        if parser.consume_token(&Token::RParen) {
            return Ok(options);
        }
        parser.expect_token(&Token::Comma).map_err(syntax)?;
    }
}

/// `CREATE SOURCE name (columns, WATERMARK ...) WITH (options)`: the column
/// list is read as CREATE TABLE's; the options (names with dots) by eddy.
pub(super) fn parse_create_source(sql: &str) -> Result<EddyStatement> {
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
    let clauses = Box::new(parse_source_clauses(clauses_sql.trim())?);
    Ok(EddyStatement::CreateSource {
        table,
        time,
        clauses,
    })
}

/// Connector options whose values are secrets when written in the clear.
const SENSITIVE_OPTIONS: [&str; 6] = [
    "password",
    "properties.sasl.password",
    "properties.ssl.key.password",
    "properties.ssl.keystore.password",
    "properties.ssl.key.pem",
    "properties.sasl.oauthbearer.config",
];

/// A CREATE SOURCE or CREATE SINK as the DDL log keeps it: every secret
/// written in the clear among its `WITH` options (a password, a key, the
/// password in a `url`) replaced by a reference to a secret named after
/// the object and the option, returned with its value to be created
/// first. The rest of the text is kept as written.
pub fn seal_option_literals(sql: &str, object: &str) -> Result<(String, Vec<(String, String)>)> {
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;
    let mut tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| EddyError::Syntax(e.to_string()))?;
    let significant = |tokens: &[Token], from: usize| {
        (from..tokens.len()).find(|&i| !matches!(tokens[i], Token::Whitespace(_)))
    };
    // The `(` that opens the WITH options: the last `WITH (` (a CREATE
    // SINK ... AS query may begin with `WITH name AS (...)`, a common table
    // expression, whose WITH is followed by a name).
    let Some(open) = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t, Token::Word(w) if w.keyword == Keyword::WITH))
        .filter_map(|(with, _)| {
            significant(&tokens, with + 1).filter(|&i| tokens[i] == Token::LParen)
        })
        .next_back()
    else {
        return Ok((sql.to_string(), vec![]));
    };
    let mut secrets = Vec::new();
    let mut url_password: Option<String> = None;
    let mut has_password_option = false;
    let mut changed = false;
    let mut at = open + 1;
    let mut close = None;
    while let Some(start) = significant(&tokens, at) {
        if tokens[start] == Token::RParen {
            close = Some(start);
            break;
        }
        // name (word . word ...) = value
        let mut name = String::new();
        let mut i = start;
        loop {
            match &tokens[i] {
                Token::Word(w) => name.push_str(&w.value.to_lowercase()),
                _ => return Ok((sql.to_string(), vec![])),
            }
            match significant(&tokens, i + 1) {
                Some(next) if tokens[next] == Token::Period => {
                    name.push('.');
                    i = significant(&tokens, next + 1).unwrap_or(tokens.len() - 1);
                }
                _ => break,
            }
        }
        let Some(eq) = significant(&tokens, i + 1).filter(|&e| tokens[e] == Token::Eq) else {
            return Ok((sql.to_string(), vec![]));
        };
        let Some(value) = significant(&tokens, eq + 1) else {
            break;
        };
        if name == "password" {
            has_password_option = true;
        }
        if let Token::SingleQuotedString(text) = &tokens[value] {
            if SENSITIVE_OPTIONS.contains(&name.as_str()) {
                let secret = format!("__{object}_{}", name.replace('.', "_"));
                secrets.push((secret.clone(), text.clone()));
                tokens[value] = Token::make_word(&format!("SECRET {secret}"), None);
                changed = true;
            } else if name == "url" {
                if let Some((bare, password)) = split_url_password(text) {
                    url_password = Some(password);
                    tokens[value] = Token::SingleQuotedString(bare);
                    changed = true;
                }
            }
        }
        at = match significant(&tokens, value + 1) {
            Some(next) if tokens[next] == Token::Comma => next + 1,
            Some(next) => next,
            None => break,
        };
    }
    if let (Some(password), Some(close)) = (url_password, close) {
        let secret = format!("__{object}_password");
        if !has_password_option {
            tokens.insert(
                close,
                Token::make_word(&format!(", password = SECRET {secret}"), None),
            );
            secrets.push((secret, password));
        }
    }
    if !changed {
        return Ok((sql.to_string(), secrets));
    }
    Ok((super::rewrite::render_tokens(&tokens), secrets))
}

/// `scheme://user:password@host...` without the password, and the
/// password; `None` when the URL has none.
fn split_url_password(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    Some((format!("{scheme}://{user}@{host}"), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let sink = parse_create_sink(
            "CREATE SINK s FROM Totals WITH (connector = 'postgres', url = 'postgres://h/db', primary_key = 'a,b', properties.x.y = 3)",
        )
        .unwrap();
        assert!(matches!(sink.input, SinkInput::View(ref v) if v == "totals"));
        assert_eq!(sink.options["properties.x.y"], "3");
        assert_eq!(sink.options["primary_key"], "a,b");
        let sink = parse_create_sink(
            "CREATE SINK s AS SELECT a, count(*) FROM t GROUP BY a WITH (connector = 'postgres')",
        )
        .unwrap();
        assert!(matches!(sink.input, SinkInput::Query(_)));
        // A query that ends in a table: its WITH (...) is the sink's
        // options, not table hints; a CTE's WITH stays the query's.
        for sql in [
            "CREATE SINK s AS SELECT a FROM t WITH (connector = 'postgres', table = 'x')",
            "CREATE SINK s AS WITH w AS (SELECT a FROM t) SELECT a FROM w WITH (connector = 'postgres', table = 'x')",
        ] {
            let sink = parse_create_sink(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let SinkInput::Query(query) = &sink.input else {
                panic!("{sql}: not a query")
            };
            assert!(!query.to_string().contains("connector"), "{query}");
            assert_eq!(sink.options["table"], "x");
        }
        assert!(parse_create_sink("CREATE SINK s AS SELECT a FROM t").is_err());
        assert!(parse_create_sink("CREATE SINK s WITH (connector = 'postgres')").is_err());
        assert!(parse_create_sink("CREATE SINK s FROM v WITH (a = 1, a = 2)").is_err());
    }

    #[test]
    fn clear_secrets_become_references_in_the_recorded_statement() {
        let sql = "CREATE SINK s FROM v WITH (connector = 'postgres', \
                   url = 'postgres://ann:pa''ss@db:5432/x', table = 't', \
                   properties.sasl.password = 'k')";
        let (sealed, secrets) = seal_option_literals(sql, "s").unwrap();
        assert!(
            !sealed.contains("pa'ss") && !sealed.contains("'k'"),
            "{sealed}"
        );
        assert!(
            sealed.contains("url = 'postgres://ann@db:5432/x'"),
            "{sealed}"
        );
        assert!(
            sealed.contains("properties.sasl.password = SECRET __s_properties_sasl_password"),
            "{sealed}"
        );
        assert!(
            sealed.contains(", password = SECRET __s_password)"),
            "{sealed}"
        );
        assert_eq!(
            secrets,
            vec![
                ("__s_properties_sasl_password".to_string(), "k".to_string()),
                ("__s_password".to_string(), "pa'ss".to_string())
            ]
        );
        // It parses, with the references in place of the values.
        let parsed = parse_create_sink(&sealed).unwrap();
        assert_eq!(
            super::super::secret_reference(&parsed.options["password"]),
            Some("__s_password")
        );
        // Behind a query with a common table expression too.
        let with_cte = "CREATE SINK s AS WITH recent AS (SELECT 1 AS a) SELECT a FROM recent \
                        WITH (connector = 'postgres', url = 'postgres://ann:hush@db/x', table = 't')";
        let (sealed, secrets) = seal_option_literals(with_cte, "s").unwrap();
        assert!(!sealed.contains("hush"), "{sealed}");
        assert_eq!(
            secrets,
            vec![("__s_password".to_string(), "hush".to_string())]
        );
        // Nothing to seal: the text as it was.
        let plain = "CREATE SINK s FROM v WITH (connector = 'kafka', topic = 't')";
        assert_eq!(
            seal_option_literals(plain, "s").unwrap(),
            (plain.to_string(), vec![])
        );
    }
}
