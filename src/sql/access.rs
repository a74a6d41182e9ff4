//! Statements about who may do what: roles (`CREATE/ALTER/DROP ROLE`, and
//! the `USER` spellings), privileges (`GRANT`, `REVOKE`) and secrets
//! (`CREATE/ALTER/DROP SECRET`, eddy's own, as RisingWave and Materialize
//! have them).

use datafusion::sql::sqlparser::ast::{
    self, Action, AlterRoleOperation, GrantObjects, Privileges, RoleOption,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{normalize_ident, relation_name, EddyStatement, GrantTarget, RoleOptions, SecretText};
use crate::catalog::Privilege;
use crate::error::{EddyError, Result};

/// `CREATE USER` / `ALTER USER` / `DROP USER` are their ROLE statements
/// (`CREATE USER` logs in unless told NOLOGIN): the text with USER
/// replaced, and whether it was `CREATE USER`.
pub(super) fn user_as_role(sql: &str, words: &[&str]) -> Option<(String, bool)> {
    let (create, verb) = match words {
        ["CREATE", "USER", ..] => (true, "CREATE"),
        ["ALTER", "USER", ..] => (false, "ALTER"),
        ["DROP", "USER", ..] => (false, "DROP"),
        _ => return None,
    };
    let trimmed = sql.trim_start();
    let at = trimmed.to_uppercase().find("USER")?;
    Some((
        format!("{verb} ROLE{}", &trimmed[at + "USER".len()..]),
        create,
    ))
}

fn role_name(name: &ast::ObjectName) -> Result<String> {
    match name.0.as_slice() {
        [part] => part
            .as_ident()
            .map(normalize_ident)
            .ok_or_else(|| EddyError::Syntax(format!("invalid role name {name}"))),
        _ => Err(EddyError::Syntax(format!("invalid role name {name}"))),
    }
}

fn password(password: &ast::Password) -> Result<Option<SecretText>> {
    match password {
        ast::Password::NullPassword => Ok(None),
        ast::Password::Password(ast::Expr::Value(value)) => match &value.value {
            ast::Value::SingleQuotedString(text) => Ok(Some(SecretText(text.clone()))),
            ast::Value::Null => Ok(None),
            _ => Err(EddyError::Syntax("PASSWORD takes a quoted string".into())),
        },
        ast::Password::Password(_) => {
            Err(EddyError::Syntax("PASSWORD takes a quoted string".into()))
        }
    }
}

fn unsupported_option(option: &RoleOption) -> EddyError {
    let shown = match option {
        RoleOption::Password(_) => "PASSWORD".to_string(),
        other => other.to_string(),
    };
    crate::not_supported!(
        "role option {shown} is not supported: eddy roles have SUPERUSER, LOGIN and PASSWORD"
    )
}

/// `CREATE ROLE`, classified.
pub(super) fn create_role(create: ast::CreateRole, is_user: bool) -> Result<EddyStatement> {
    let [name] = create.names.as_slice() else {
        return Err(crate::not_supported!(
            "CREATE ROLE of several roles at once"
        ));
    };
    let unsupported = [
        create.inherit.is_some(),
        create.bypassrls.is_some(),
        create.create_db.is_some(),
        create.create_role.is_some(),
        create.replication.is_some(),
        create.connection_limit.is_some(),
        create.valid_until.is_some(),
        !create.in_role.is_empty(),
        !create.in_group.is_empty(),
        !create.role.is_empty(),
        !create.user.is_empty(),
        !create.admin.is_empty(),
        create.authorization_owner.is_some(),
    ];
    if unsupported.iter().any(|u| *u) {
        return Err(crate::not_supported!(
            "CREATE ROLE with options other than SUPERUSER, LOGIN and PASSWORD"
        ));
    }
    Ok(EddyStatement::CreateRole {
        name: role_name(name)?,
        options: RoleOptions {
            superuser: create.superuser,
            login: create.login.or(is_user.then_some(true)),
            password: create.password.as_ref().map(password).transpose()?,
        },
        if_not_exists: create.if_not_exists,
    })
}

/// `ALTER ROLE name [WITH] options`, classified.
pub(super) fn alter_role(
    name: &ast::Ident,
    operation: AlterRoleOperation,
) -> Result<EddyStatement> {
    let AlterRoleOperation::WithOptions { options } = operation else {
        return Err(crate::not_supported!(
            "ALTER ROLE {operation}: eddy can change SUPERUSER, LOGIN and PASSWORD"
        ));
    };
    let mut set = RoleOptions::default();
    for option in &options {
        match option {
            RoleOption::SuperUser(on) => set.superuser = Some(*on),
            RoleOption::Login(on) => set.login = Some(*on),
            RoleOption::Password(p) => set.password = Some(password(p)?),
            other => return Err(unsupported_option(other)),
        }
    }
    Ok(EddyStatement::AlterRole {
        name: normalize_ident(name),
        options: set,
    })
}

/// `DROP ROLE`, classified.
pub(super) fn drop_role(names: &[ast::ObjectName], if_exists: bool) -> Result<EddyStatement> {
    Ok(EddyStatement::DropRole {
        names: names.iter().map(role_name).collect::<Result<_>>()?,
        if_exists,
    })
}

/// `GRANT` / `REVOKE` of privileges on relations to roles, classified.
pub(super) fn grant(
    privileges: &Privileges,
    objects: Option<&GrantObjects>,
    grantees: &[ast::Grantee],
    grant: bool,
) -> Result<EddyStatement> {
    let verb = if grant { "GRANT" } else { "REVOKE" };
    let privileges = match privileges {
        Privileges::All { .. } => Privilege::ALL.to_vec(),
        Privileges::Actions(actions) => actions
            .iter()
            .map(|action| match action {
                Action::Select { columns: None } => Ok(Privilege::Select),
                Action::Insert { columns: None } => Ok(Privilege::Insert),
                Action::Update { columns: None } => Ok(Privilege::Update),
                Action::Delete => Ok(Privilege::Delete),
                other => Err(crate::not_supported!(
                    "{verb} {other}: eddy grants SELECT, INSERT, UPDATE and DELETE on whole \
                     relations"
                )),
            })
            .collect::<Result<_>>()?,
    };
    let on = match objects {
        Some(GrantObjects::Tables(names)) | Some(GrantObjects::Views(names)) => {
            GrantTarget::Relations(names.iter().map(relation_name).collect::<Result<_>>()?)
        }
        Some(GrantObjects::AllTablesInSchema { schemas })
        | Some(GrantObjects::AllViewsInSchema { schemas })
        | Some(GrantObjects::AllMaterializedViewsInSchema { schemas }) => {
            for schema in schemas {
                if !schema.to_string().eq_ignore_ascii_case("public") {
                    return Err(EddyError::Planning {
                        sqlstate: "3F000",
                        message: format!(
                            "schema \"{schema}\" does not exist (eddy's relations are in public)"
                        ),
                    });
                }
            }
            GrantTarget::AllInSchema
        }
        other => {
            return Err(crate::not_supported!(
                "{verb} ... ON {}: eddy grants privileges on tables, views and sources",
                other.map(|o| o.to_string()).unwrap_or_default()
            ))
        }
    };
    let roles = grantees
        .iter()
        .map(|grantee| match &grantee.name {
            Some(ast::GranteeName::ObjectName(name)) => role_name(name),
            _ => Err(crate::not_supported!("{verb} to {grantee}")),
        })
        .collect::<Result<_>>()?;
    Ok(EddyStatement::Grant {
        privileges,
        on,
        roles,
        grant,
    })
}

/// `CREATE SECRET [IF NOT EXISTS] name AS 'value'`, `ALTER SECRET name AS
/// 'value'`, `DROP SECRET [IF EXISTS] name`.
pub(super) fn parse_secret(sql: &str) -> Result<EddyStatement> {
    let syntax = |e: &dyn std::fmt::Display| EddyError::Syntax(e.to_string());
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(sql)
        .map_err(|e| syntax(&e))?;
    let verb = parser
        .expect_one_of_keywords(&[Keyword::CREATE, Keyword::ALTER, Keyword::DROP])
        .map_err(|e| syntax(&e))?;
    parser
        .expect_keyword(Keyword::SECRET)
        .map_err(|e| syntax(&e))?;
    let statement = match verb {
        Keyword::DROP => {
            let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = normalize_ident(&parser.parse_identifier().map_err(|e| syntax(&e))?);
            EddyStatement::DropSecret { name, if_exists }
        }
        _ => {
            let if_not_exists = verb == Keyword::CREATE
                && parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = normalize_ident(&parser.parse_identifier().map_err(|e| syntax(&e))?);
            parser.expect_keyword(Keyword::AS).map_err(|e| syntax(&e))?;
            // `AS ENCRYPTED '...'`: the value sealed, as the DDL log keeps it.
            let sealed = parser.parse_keyword(Keyword::ENCRYPTED);
            let value = match parser.next_token().token {
                Token::SingleQuotedString(value) => value,
                other => {
                    return Err(EddyError::Syntax(format!(
                        "expected the secret's value as a quoted string, found {other}"
                    )))
                }
            };
            EddyStatement::CreateSecret {
                name,
                value: SecretText(value),
                sealed,
                if_not_exists,
                replace: verb == Keyword::ALTER,
            }
        }
    };
    let _ = parser.consume_token(&Token::SemiColon);
    if parser.peek_token().token != Token::EOF {
        return Err(EddyError::Syntax(format!(
            "unexpected {} after the secret statement",
            parser.peek_token().token
        )));
    }
    Ok(statement)
}
