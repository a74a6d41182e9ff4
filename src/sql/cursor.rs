//! `SUBSCRIBE`, `DECLARE ... CURSOR`, `FETCH`: eddy's statements for
//! streaming a view's changes to a client.

use datafusion::sql::sqlparser::ast::{self, ObjectName};

use super::{relation_name, EddyStatement};
use crate::error::{EddyError, Result};

/// `SUBSCRIBE [TO] view [WITH (snapshot = true | false)]`.
pub(super) fn parse_subscribe(sql: &str) -> Result<EddyStatement> {
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
        let options = super::connector::parse_with_options(&options.join(" "))?;
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
    Ok(EddyStatement::Subscribe {
        view,
        snapshot,
        copy: false,
    })
}

/// Whether `sql` is `COPY (SUBSCRIBE ...) ...`.
pub(super) fn is_copy_of_subscribe(sql: &str) -> bool {
    let rest = sql.trim_start()[4..].trim_start();
    rest.strip_prefix('(').is_some_and(|inner| {
        inner
            .trim_start()
            .get(..9)
            .is_some_and(|w| w.eq_ignore_ascii_case("SUBSCRIBE"))
    })
}

/// `COPY (SUBSCRIBE [TO] view [WITH (...)]) TO STDOUT [WITH (FORMAT
/// text)]`, as Materialize users write it: the subscription's rows as COPY
/// text data.
pub(super) fn parse_copy_subscribe(sql: &str) -> Result<EddyStatement> {
    let rest = sql.trim().trim_end_matches(';').trim_end();
    let rest = rest[4..].trim_start();
    let inner_and_after = &rest[1..];
    // The SUBSCRIBE ends at the parenthesis that closes the one it opened.
    let mut depth = 1usize;
    let close = inner_and_after
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth == 0
        })
        .map(|(i, _)| i)
        .ok_or_else(|| EddyError::Syntax("COPY (SUBSCRIBE ...: missing )".into()))?;
    let target: Vec<String> = inner_and_after[close + 1..]
        .split_whitespace()
        .map(str::to_uppercase)
        .collect();
    let format_text = |options: &[String]| {
        let options = options.join(" ").replace(' ', "");
        matches!(
            options.as_str(),
            "" | "WITH(FORMATTEXT)" | "(FORMATTEXT)" | "WITH(FORMAT'TEXT')" | "(FORMAT'TEXT')"
        )
    };
    match target.as_slice() {
        [to, stdout, options @ ..] if to == "TO" && stdout == "STDOUT" && format_text(options) => {}
        [to, stdout, ..] if to == "TO" && stdout == "STDOUT" => {
            return Err(crate::not_supported!(
                "COPY (SUBSCRIBE ...) TO STDOUT supports FORMAT text only"
            ))
        }
        _ => {
            return Err(crate::not_supported!(
                "COPY (SUBSCRIBE ...) goes TO STDOUT only"
            ))
        }
    }
    match parse_subscribe(&inner_and_after[..close])? {
        EddyStatement::Subscribe { view, snapshot, .. } => Ok(EddyStatement::Subscribe {
            view,
            snapshot,
            copy: true,
        }),
        _ => Err(crate::internal!("SUBSCRIBE did not parse as one")),
    }
}

/// A cursor's name as written: folded to lower case unless quoted.
pub(super) fn cursor_name(word: &str) -> String {
    if word.starts_with('"') {
        word.trim_matches('"').to_string()
    } else {
        word.to_lowercase()
    }
}

/// `DECLARE c SUBSCRIPTION CURSOR FOR view [WITH (...)]`, or Materialize's
/// `DECLARE c CURSOR FOR SUBSCRIBE [TO] view [WITH (...)]`. Cursors over
/// queries are not there yet, and say so.
pub(super) fn parse_declare(sql: &str) -> Result<EddyStatement> {
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
        EddyStatement::Subscribe { view, snapshot, .. } => Ok(EddyStatement::DeclareCursor {
            name: cursor_name(name),
            view,
            snapshot,
        }),
        _ => Err(crate::internal!("SUBSCRIBE parsed as something else")),
    }
}

/// `FETCH [NEXT | ALL | n | FORWARD n | FORWARD ALL] [FROM | IN] c
/// [WITH (timeout = '...')]`.
pub(super) fn parse_fetch(sql: &str) -> Result<EddyStatement> {
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
        for (key, value) in super::connector::parse_with_options(options.trim())? {
            match key.as_str() {
                "timeout" => {
                    let micros = crate::common::time::interval_micros(&value)?;
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
