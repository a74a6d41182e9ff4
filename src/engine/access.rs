//! Who may do what: the privilege checks every statement passes before it
//! runs, and the statements that change them (roles, grants, secrets).
//!
//! - A superuser may do everything.
//! - Any role may read the relations it was granted SELECT on (queries,
//!   SUBSCRIBE), write the tables it was granted INSERT / UPDATE / DELETE
//!   on (UPDATE and DELETE read the table too, so they also need SELECT),
//!   read `pg_catalog` and `information_schema` (names and types, as in
//!   PostgreSQL), list relations (SHOW TABLES / SOURCES / MATERIALIZED
//!   VIEWS), FLUSH, and manage its own session (SET, cursors,
//!   transactions) and its own password.
//! - Everything else needs a superuser (42501): DDL, roles, grants,
//!   secrets, CHECKPOINT, snapshots, SHOW SINKS / JOBS and the
//!   `eddy_catalog` tables (they name other objects' options and targets).
//!
//! Privileges are checked on the planned query, relation by relation as
//! DataFusion resolved them (a window table function or lookup counts as
//! a read of the relation it reads).

use std::collections::BTreeMap;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;

use super::session::Session;
use super::{Engine, StatementResult};
use crate::catalog::lookup::LookupRelationProvider;
use crate::catalog::roles::{undefined_role, ScramVerifier, BOOTSTRAP_SUPERUSER};
use crate::catalog::window::WindowedRelationProvider;
use crate::catalog::{Privilege, Relation, RelationProvider, Role};
use crate::common::RelationId;
use crate::error::{EddyError, Result};
use crate::sql::{secret_reference, EddyStatement, GrantTarget, RoleOptions};

/// The schemas every role may read.
const OPEN_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

fn denied(what: &str) -> EddyError {
    EddyError::InsufficientPrivilege(format!("permission denied: {what}"))
}

impl Engine {
    fn is_superuser(&self, session: &Session) -> bool {
        self.catalog
            .role(session.user())
            .is_some_and(|role| role.superuser)
    }

    fn require_superuser(&self, session: &Session, what: &str) -> Result<()> {
        if self.is_superuser(session) {
            Ok(())
        } else {
            Err(denied(&format!("{what} needs a superuser")))
        }
    }

    /// Refuses a statement the session's role may not run (the checks of
    /// queries and DML are on their plans: [`Self::authorize_plan`]).
    pub(super) fn authorize(&self, session: &Session, statement: &EddyStatement) -> Result<()> {
        use EddyStatement as S;
        let what = match statement {
            S::Query(_)
            | S::Write { .. }
            | S::Flush
            | S::Fetch { .. }
            | S::Close(_)
            | S::Transaction(_)
            | S::Deallocate(_)
            | S::Discard { .. }
            | S::ShowVariable(_)
            | S::ShowTables
            | S::ShowSources
            | S::ShowViews => return Ok(()),
            S::Set { name, .. } if name != "checkpoint_interval" => return Ok(()),
            S::Subscribe { view, .. } | S::DeclareCursor { view, .. } => {
                return self.require_privilege(session, view, Privilege::Select)
            }
            // A role may change its own password, nothing else about itself.
            S::AlterRole { name, options }
                if name == session.user()
                    && options.superuser.is_none()
                    && options.login.is_none() =>
            {
                return Ok(())
            }
            S::CreateTable(..) => "CREATE TABLE",
            S::CreateSource { .. } => "CREATE SOURCE",
            S::CreateView(_) | S::ExplainCreateView(_) => "CREATE MATERIALIZED VIEW",
            S::CreateSink(_) => "CREATE SINK",
            S::Drop { .. } | S::DropSink { .. } => "DROP",
            S::CreateRole { .. } | S::AlterRole { .. } | S::DropRole { .. } => "managing roles",
            S::Grant { .. } => "GRANT and REVOKE",
            S::CreateSecret { .. } | S::DropSecret { .. } => "managing secrets",
            S::Checkpoint => "CHECKPOINT",
            S::CreateSnapshot(_) => "CREATE SNAPSHOT",
            S::ShowSinks => "SHOW SINKS",
            S::ShowJobs => "SHOW JOBS",
            S::Set { .. } => "SET checkpoint_interval",
        };
        self.require_superuser(session, what)
    }

    /// Refuses unless the role holds `privilege` on relation `name`.
    fn require_privilege(&self, session: &Session, name: &str, privilege: Privilege) -> Result<()> {
        let relation = self.catalog.require(name)?;
        if self
            .catalog
            .roles()
            .holds(session.user(), relation.id(), privilege)
        {
            Ok(())
        } else {
            Err(denied(&format!(
                "{} on {} \"{name}\" is not granted to role \"{}\"",
                privilege.keyword(),
                relation.kind().noun(),
                session.user()
            )))
        }
    }

    /// Refuses a planned query (or DML) that reads a relation the role may
    /// not read, or writes `target` without `write` privilege.
    pub(super) fn authorize_plan(
        &self,
        session: &Session,
        plan: &LogicalPlan,
        target: Option<(&str, Privilege)>,
    ) -> Result<()> {
        if self.is_superuser(session) {
            return Ok(());
        }
        if let Some((table, privilege)) = target {
            self.require_privilege(session, table, privilege)?;
        }
        let mut refused: Option<EddyError> = None;
        plan.apply_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = node else {
                return Ok(TreeNodeRecursion::Continue);
            };
            let schema = scan.table_name.schema().unwrap_or("public");
            let outcome = if OPEN_SCHEMAS.contains(&schema) {
                Ok(())
            } else if schema == "eddy_catalog" {
                Err(denied(&format!(
                    "eddy_catalog.{} needs a superuser (it names other objects' options)",
                    scan.table_name.table()
                )))
            } else {
                match scanned_relation(scan) {
                    Some((id, name)) => self.require_privilege_by_id(session, id, &name),
                    None => Err(denied(&format!("reading {}", scan.table_name))),
                }
            };
            match outcome {
                Ok(()) => Ok(TreeNodeRecursion::Continue),
                Err(e) => {
                    refused = Some(e);
                    Ok(TreeNodeRecursion::Stop)
                }
            }
        })?;
        refused.map_or(Ok(()), Err)
    }

    fn require_privilege_by_id(&self, session: &Session, id: RelationId, name: &str) -> Result<()> {
        if self
            .catalog
            .roles()
            .holds(session.user(), id, Privilege::Select)
        {
            Ok(())
        } else {
            Err(denied(&format!(
                "SELECT on \"{name}\" is not granted to role \"{}\"",
                session.user()
            )))
        }
    }

    /// `CREATE ROLE`.
    pub(super) fn create_role(
        &self,
        name: &str,
        options: &RoleOptions,
        if_not_exists: bool,
    ) -> Result<StatementResult> {
        if self.catalog.role(name).is_some() && if_not_exists {
            return Ok(StatementResult::Command("CREATE ROLE".into()));
        }
        let role = Role {
            name: name.to_string(),
            superuser: options.superuser.unwrap_or(false),
            login: options.login.unwrap_or(false),
            password: role_password(options)?.flatten(),
        };
        self.catalog
            .change_roles(|roles| roles.create(role), &[name.to_string()], &[])?;
        Ok(StatementResult::Command("CREATE ROLE".into()))
    }

    /// `ALTER ROLE`.
    pub(super) fn alter_role(&self, name: &str, options: &RoleOptions) -> Result<StatementResult> {
        let mut role = self
            .catalog
            .role(name)
            .ok_or_else(|| undefined_role(name))?;
        if name == BOOTSTRAP_SUPERUSER
            && (options.superuser == Some(false) || options.login == Some(false))
        {
            return Err(EddyError::Planning {
                sqlstate: "55006",
                message: format!("role {name} is the bootstrap superuser: it stays one"),
            });
        }
        if let Some(superuser) = options.superuser {
            role.superuser = superuser;
        }
        if let Some(login) = options.login {
            role.login = login;
        }
        if let Some(password) = role_password(options)? {
            role.password = password;
        }
        self.catalog
            .change_roles(|roles| roles.replace(role), &[name.to_string()], &[])?;
        Ok(StatementResult::Command("ALTER ROLE".into()))
    }

    /// Sets the bootstrap superuser's password (from `EDDY_PASSWORD` or
    /// `--password-file` at start).
    pub fn set_superuser_password(&self, password: &str) -> Result<()> {
        let options = RoleOptions {
            password: Some(Some(crate::sql::SecretText(password.to_string()))),
            ..RoleOptions::default()
        };
        self.alter_role(BOOTSTRAP_SUPERUSER, &options).map(|_| ())
    }

    /// `DROP ROLE`.
    pub(super) fn drop_roles(&self, names: &[String], if_exists: bool) -> Result<StatementResult> {
        let names: Vec<String> = names
            .iter()
            .filter(|name| !(if_exists && self.catalog.role(name).is_none()))
            .cloned()
            .collect();
        let relation_name = |id: RelationId| {
            self.catalog
                .by_id(id)
                .map(|r| format!("{} {}", r.kind().noun(), r.name()))
                .unwrap_or_else(|| format!("relation {id}"))
        };
        self.catalog.change_roles(
            |roles| {
                for name in &names {
                    roles.drop_role(name, relation_name)?;
                }
                Ok(())
            },
            &names,
            &[],
        )?;
        Ok(StatementResult::Command("DROP ROLE".into()))
    }

    /// `GRANT` / `REVOKE`.
    pub(super) fn grant(
        &self,
        privileges: &[Privilege],
        on: &GrantTarget,
        role_names: &[String],
        grant: bool,
    ) -> Result<StatementResult> {
        for role in role_names {
            if self.catalog.role(role).is_none() {
                return Err(undefined_role(role));
            }
        }
        let relations: Vec<Relation> = match on {
            GrantTarget::Relations(names) => names
                .iter()
                .map(|name| self.catalog.require(name))
                .collect::<Result<_>>()?,
            GrantTarget::AllInSchema => self
                .catalog
                .list()
                .into_iter()
                .filter(Relation::listed_to_clients)
                .collect(),
        };
        for relation in &relations {
            let writes = privileges.iter().any(|p| *p != Privilege::Select);
            // Named explicitly, a view or source cannot take writes (ALL
            // TABLES IN SCHEMA gives them SELECT only, below).
            if writes
                && grant
                && !matches!(relation, Relation::Table(_))
                && matches!(on, GrantTarget::Relations(_))
            {
                return Err(EddyError::WrongObjectType(format!(
                    "\"{}\" is a {}: only tables take INSERT, UPDATE and DELETE",
                    relation.name(),
                    relation.kind().noun()
                )));
            }
        }
        let touched: Vec<(RelationId, String)> = relations
            .iter()
            .map(|r| (r.id(), r.name().to_string()))
            .collect();
        self.catalog.change_roles(
            |roles| {
                for relation in &relations {
                    // ALL TABLES IN SCHEMA: views and sources take SELECT only.
                    let applicable: Vec<Privilege> = privileges
                        .iter()
                        .copied()
                        .filter(|p| {
                            *p == Privilege::Select || matches!(relation, Relation::Table(_))
                        })
                        .collect();
                    for role in role_names {
                        if grant {
                            roles.grant(relation.id(), role, &applicable);
                        } else {
                            roles.revoke(relation.id(), role, &applicable);
                        }
                    }
                }
                Ok(())
            },
            &[],
            &touched,
        )?;
        Ok(StatementResult::Command(
            if grant { "GRANT" } else { "REVOKE" }.into(),
        ))
    }

    /// `CREATE SECRET` / `ALTER SECRET` (`replace`); `sealed`: the value is
    /// as the DDL log keeps it (a recovery replaying it).
    pub(super) fn create_secret(
        &self,
        name: &str,
        value: &str,
        sealed: bool,
        if_not_exists: bool,
        replace: bool,
    ) -> Result<StatementResult> {
        let exists = self.catalog.secret(name).is_some();
        let tag = if replace {
            "ALTER SECRET"
        } else {
            "CREATE SECRET"
        };
        match (exists, replace, if_not_exists) {
            (true, false, true) => return Ok(StatementResult::Command(tag.into())),
            (true, false, false) => {
                return Err(EddyError::Planning {
                    sqlstate: "42710",
                    message: format!("secret \"{name}\" already exists"),
                })
            }
            (false, true, _) => {
                return Err(EddyError::Planning {
                    sqlstate: "42704",
                    message: format!("secret \"{name}\" does not exist"),
                })
            }
            _ => {}
        }
        let (plain, sealed_text) = if sealed {
            (self.secret_box.open(name, value)?, value.to_string())
        } else {
            (value.to_string(), self.secret_box.seal(name, value)?)
        };
        self.catalog.set_secret(
            name,
            plain,
            &format!(
                "CREATE SECRET {} AS ENCRYPTED '{sealed_text}'",
                crate::catalog::roles::quote_ident(name)
            ),
        );
        Ok(StatementResult::Command(tag.into()))
    }

    /// `DROP SECRET`.
    pub(super) fn drop_secret(&self, name: &str, if_exists: bool) -> Result<StatementResult> {
        // A source or sink restored from a checkpoint resolves its secrets
        // again, so one still named by an option must stay.
        let users: Vec<String> = self
            .catalog
            .object_statements()
            .into_iter()
            .filter(|(_, statement)| {
                let options = match crate::sql::parse_statement(statement) {
                    Ok(EddyStatement::CreateSource { clauses, .. }) => clauses.options,
                    Ok(EddyStatement::CreateSink(create)) => create.options,
                    _ => return false,
                };
                options.values().any(|v| secret_reference(v) == Some(name))
            })
            .map(|(object, _)| object)
            .collect();
        if !users.is_empty() {
            return Err(EddyError::DependentObjects {
                message: format!(
                    "cannot drop secret \"{name}\" because other objects depend on it"
                ),
                detail: users
                    .iter()
                    .map(|object| format!("{object} uses secret {name}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
        if !self.catalog.remove_secret(name) && !if_exists {
            return Err(EddyError::Planning {
                sqlstate: "42704",
                message: format!("secret \"{name}\" does not exist"),
            });
        }
        Ok(StatementResult::Command("DROP SECRET".into()))
    }

    /// Connector options with every `SECRET name` reference replaced by
    /// the secret's value (only the connector ever holds it).
    pub(super) fn resolve_secrets(
        &self,
        options: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        options
            .iter()
            .map(|(key, value)| match secret_reference(value) {
                Some(name) => self
                    .catalog
                    .secret(name)
                    .map(|secret| (key.clone(), secret))
                    .ok_or_else(|| EddyError::Planning {
                        sqlstate: "42704",
                        message: format!("secret \"{name}\" (option {key}) does not exist"),
                    }),
                None => Ok((key.clone(), value.clone())),
            })
            .collect()
    }
}

/// What `PASSWORD` sets: `None` (not given), `Some(None)` (NULL) or a
/// verifier (a password is turned into one; a verifier is kept).
fn role_password(options: &RoleOptions) -> Result<Option<Option<ScramVerifier>>> {
    match &options.password {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(text)) => {
            let verifier = match ScramVerifier::parse(&text.0) {
                Some(verifier) => verifier,
                None if text.0.is_empty() => {
                    return Err(EddyError::InvalidParameter(
                        "an empty password is not allowed; use PASSWORD NULL for none".into(),
                    ))
                }
                None => ScramVerifier::from_password(&text.0)?,
            };
            Ok(Some(Some(verifier)))
        }
    }
}

/// The relation a scan reads: through its provider (a relation, a window
/// table function over one, or a lookup of one).
fn scanned_relation(scan: &datafusion::logical_expr::TableScan) -> Option<(RelationId, String)> {
    let provider = source_as_provider(&scan.source).ok()?;
    if let Some(relation) = provider.downcast_ref::<RelationProvider>() {
        return Some((relation.id, relation.name.clone()));
    }
    if let Some(windowed) = provider.downcast_ref::<WindowedRelationProvider>() {
        return Some((windowed.relation.id, windowed.relation.name.clone()));
    }
    provider
        .downcast_ref::<LookupRelationProvider>()
        .map(|lookup| (lookup.relation.id, lookup.relation.name.clone()))
}
