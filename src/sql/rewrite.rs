//! eddy's clauses that sqlparser does not know, rewritten into SQL it does
//! (or taken out and returned beside it) before the statement is parsed:
//! Flink's `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), ...))`, lookup joins
//! (`FOR SYSTEM_TIME AS OF PROCTIME()`), `EMIT ON WINDOW CLOSE`,
//! `AS PROCTIME()` and `WATERMARK FOR` in a column list.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::{normalize_ident, WatermarkClause};
use crate::error::{EddyError, Result};

/// Rewrites Flink's window spelling
/// `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))` to eddy's
/// `TUMBLE(t, ts, size)` (same for HOP, and for SESSION without PARTITION
/// BY). Other SQL is returned unchanged.
pub(super) fn rewrite_flink_windows(sql: &str) -> Result<String> {
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
pub(super) fn rewrite_lookup_joins(sql: &str) -> Result<String> {
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
pub(super) fn render_tokens(tokens: &[datafusion::sql::sqlparser::tokenizer::Token]) -> String {
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

/// Removes RisingWave's `APPEND ONLY` after a CREATE TABLE's column list
/// (outside parentheses); says whether it was there. The table is then
/// append-only, as with `WITH (append_only = true)`.
pub(super) fn strip_append_only(sql: &str) -> Result<(String, bool)> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.to_uppercase().contains("APPEND") {
        return Ok((sql.to_string(), false));
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| EddyError::Syntax(e.to_string()))?;
    let is_word = |t: &Token, w: &str| matches!(t, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w));
    let mut depth = 0usize;
    let mut found = None;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            t if depth == 0 && is_word(t, "APPEND") => {
                let next = tokens[i + 1..]
                    .iter()
                    .position(|t| !matches!(t, Token::Whitespace(_)))
                    .map(|offset| i + 1 + offset);
                if let Some(next) = next.filter(|&n| is_word(&tokens[n], "ONLY")) {
                    found = Some((i, next));
                    break;
                }
            }
            _ => {}
        }
    }
    let Some((append, only)) = found else {
        return Ok((sql.to_string(), false));
    };
    let rest: Vec<Token> = tokens[..append]
        .iter()
        .chain(&tokens[only + 1..])
        .cloned()
        .collect();
    Ok((render_tokens(&rest), true))
}

/// Removes a trailing `EMIT ON WINDOW CLOSE` (before an optional `;`).
pub(super) fn strip_emit_on_window_close(sql: &str) -> (String, bool) {
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
pub(super) fn extract_proctime(sql: &str) -> Result<(String, Option<String>)> {
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
pub(super) fn extract_watermark(sql: &str) -> Result<(String, Option<WatermarkClause>)> {
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

pub(super) fn parse_watermark_clause(clause: &str) -> Result<WatermarkClause> {
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
