//! Splitting a query string into statements, and reading their first
//! words (which tell eddy's own statements apart before sqlparser runs).

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
pub(super) fn is_blank(sql: &str) -> bool {
    leading_words(sql, 1).is_empty()
}

/// The first `n` words of `sql`, uppercased, skipping comments.
pub(super) fn leading_words(sql: &str, n: usize) -> Vec<String> {
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
