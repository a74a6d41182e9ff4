//! How complex a statement may be. sqlparser builds a chain of binary
//! operators (`1+1+...+1`, `a AND b AND ...`) and of set operations
//! (`SELECT ... UNION ALL SELECT ...`) without recursion, one tree level
//! per operator; planning, optimizing, evaluating and even dropping such a
//! tree then recurse once per level. A statement of a few kilobytes used
//! to overflow a thread's stack and abort the whole server. Statements
//! whose chains are longer than the limits below are refused up front
//! (54001, as PostgreSQL's "stack depth limit exceeded" / "statement too
//! complex"); nesting by parentheses is bounded by sqlparser's own
//! recursion limit (42601).
//!
//! The limits are far below what the server's threads' stacks take (see
//! `tests/security.rs`, which runs chains just under and over them).

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{EddyError, Result};

/// Binary operators in one chain (between parentheses or commas).
pub const MAX_OPERATOR_CHAIN: usize = 1_000;
/// Set operations (UNION, INTERSECT, EXCEPT) in one statement.
pub const MAX_SET_OPERATIONS: usize = 200;

/// Refuses a statement whose operator or set-operation chains are longer
/// than the limits.
pub fn check_complexity(sql: &str) -> Result<()> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| EddyError::Syntax(e.to_string()))?;
    // Operators counted per open parenthesis level; a comma starts a new
    // list item, whose chain counts on its own.
    let mut chains: Vec<usize> = vec![0];
    let mut set_operations = 0usize;
    for token in &tokens {
        let depth = chains.len();
        let chain = chains.last_mut().expect("the outer level stays");
        match token {
            Token::LParen | Token::LBracket => chains.push(0),
            Token::RParen | Token::RBracket if depth > 1 => {
                chains.pop();
            }
            Token::Comma => *chain = 0,
            Token::Word(word) => match word.keyword {
                Keyword::AND | Keyword::OR | Keyword::LIKE | Keyword::ILIKE | Keyword::IS => {
                    *chain += 1
                }
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT => set_operations += 1,
                // A new statement clause starts a new chain.
                Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::HAVING
                | Keyword::ON
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE => *chain = 0,
                _ => {}
            },
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::Arrow
            | Token::LongArrow
            | Token::HashArrow
            | Token::HashLongArrow
            | Token::DoubleColon => *chain += 1,
            _ => {}
        }
        if *chains.last().expect("the outer level stays") > MAX_OPERATOR_CHAIN {
            return Err(EddyError::StatementTooComplex(format!(
                "statement too complex: an expression chains more than {MAX_OPERATOR_CHAIN} \
                 operators; split it, or use IN (...) or a table for long lists"
            )));
        }
    }
    if set_operations > MAX_SET_OPERATIONS {
        return Err(EddyError::StatementTooComplex(format!(
            "statement too complex: {set_operations} UNION/INTERSECT/EXCEPT in one statement \
             (at most {MAX_SET_OPERATIONS}); insert the parts into a table instead"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_chains_are_refused_and_long_lists_are_not() {
        let chain = |n: usize, op: &str| format!("SELECT {}", vec!["1"; n].join(op));
        assert!(check_complexity(&chain(MAX_OPERATOR_CHAIN, "+")).is_ok());
        let e = check_complexity(&chain(MAX_OPERATOR_CHAIN + 2, "+")).unwrap_err();
        assert_eq!(e.sqlstate(), "54001");
        assert!(check_complexity(&chain(MAX_OPERATOR_CHAIN + 2, " AND ")).is_err());
        assert!(check_complexity(&chain(MAX_OPERATOR_CHAIN + 2, " || ")).is_err());
        // Lists and VALUES rows are flat: any length.
        let list = format!("SELECT 1 IN ({})", vec!["1"; 20_000].join(", "));
        assert!(check_complexity(&list).is_ok());
        let values = format!(
            "INSERT INTO t VALUES {}",
            vec!["(1 + 1, 'a')"; 20_000].join(", ")
        );
        assert!(check_complexity(&values).is_ok());
        let unions = vec!["SELECT 1"; MAX_SET_OPERATIONS + 2].join(" UNION ALL ");
        assert_eq!(check_complexity(&unions).unwrap_err().sqlstate(), "54001");
    }
}
