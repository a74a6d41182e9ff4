//! A statement sqlparser parsed, classified by what eddy does with it
//! ([`EddyStatement`]); what eddy does not do is refused here, naming it.

use datafusion::sql::sqlparser::ast::{self, ObjectType, Statement};

use super::{
    normalize_ident, relation_name, CreateView, EddyStatement, TransactionStep, WriteKind,
};
use crate::catalog::RelationKind;
use crate::error::{EddyError, Result};

pub(super) fn classify(statement: Statement, sql: &str) -> Result<EddyStatement> {
    Ok(match statement {
        Statement::Query(_) => EddyStatement::Query(Box::new(statement)),
        Statement::Explain {
            statement: ref inner,
            ..
        } if matches!(inner.as_ref(), Statement::Query(_)) => {
            EddyStatement::Query(Box::new(statement))
        }
        Statement::CreateTable(create) => {
            if create.external {
                return Err(external_table_refused());
            }
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
            object_type: ObjectType::Role,
            if_exists,
            names,
            ..
        } => super::access::drop_role(&names, if_exists)?,
        Statement::AlterRole { name, operation } => super::access::alter_role(&name, operation)?,
        Statement::Grant(grant) => super::access::grant(
            &grant.privileges,
            grant.objects.as_ref(),
            &grant.grantees,
            true,
        )?,
        Statement::Revoke(revoke) => super::access::grant(
            &revoke.privileges,
            revoke.objects.as_ref(),
            &revoke.grantees,
            false,
        )?,
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
        Statement::Deallocate { name, .. } => EddyStatement::Deallocate(
            // Unquoted ALL is every statement; "all" quoted is a name.
            (name.quote_style.is_some() || !name.value.eq_ignore_ascii_case("all"))
                .then(|| normalize_ident(&name)),
        ),
        Statement::Discard { object_type } => EddyStatement::Discard {
            all: matches!(object_type, ast::DiscardObject::ALL),
            tag: format!("DISCARD {object_type}"),
        },
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
pub(super) struct ViewOptions {
    allowed_lateness_micros: i64,
    idle_timeout_micros: Option<i64>,
    allow_cross_join: bool,
}

/// `CREATE MATERIALIZED VIEW v WITH (allowed_lateness = '10 seconds',
/// idle_timeout = '30 seconds', allow_cross_join = true)`.
pub(super) fn view_options(options: &ast::CreateTableOptions) -> Result<ViewOptions> {
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
            let micros = crate::common::time::interval_micros(text.trim_matches('\''))?;
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

pub(super) fn table_factor_name(factor: &ast::TableFactor) -> Result<String> {
    match factor {
        ast::TableFactor::Table { name, .. } => relation_name(name),
        other => Err(crate::not_supported!("writing to {other} is not supported")),
    }
}

/// `CREATE EXTERNAL TABLE` (any form, whether sqlparser knows its file
/// format or not) is refused: it would name a file on the server.
pub(super) fn external_table_refused() -> EddyError {
    crate::not_supported!(
        "CREATE EXTERNAL TABLE is not supported: eddy reads data only through sources \
         (CREATE SOURCE), and no file on the server is reachable from SQL"
    )
}
