//! A connection's own state: the role it authenticated as, its settings
//! (`SET` / `SHOW`, `statement_timeout` among them), its transaction block
//! (BEGIN ... COMMIT), its subscription cursors, and the interrupt that
//! stops its running statement.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use std::time::Duration;

use super::cursors::Cursors;
use super::interrupt::{Interrupt, StatementGuard};
use super::show::rows;
use super::{Engine, StatementResult};
use crate::catalog::roles::BOOTSTRAP_SUPERUSER;
use crate::error::{EddyError, Result};
use crate::sql::TransactionStep;

/// Per-connection state (see the module docs).
#[derive(Debug)]
pub struct Session {
    /// The role the client authenticated as (`current_user`).
    user: String,
    settings: BTreeMap<String, String>,
    /// Inside BEGIN ... COMMIT: whether a statement of the block wrote.
    transaction: Option<bool>,
    pub(super) cursors: Cursors,
    interrupt: Arc<Interrupt>,
    /// `SET statement_timeout`: statements stop (57014) after this long.
    statement_timeout: Option<Duration>,
    /// `SET synchronous_commit = off`: a table write is acknowledged once
    /// written to the write-ahead log, without waiting for its sync.
    synchronous_commit: bool,
    /// The names of the protocol's prepared statements (Parse with a name),
    /// for DEALLOCATE.
    prepared: std::collections::BTreeSet<String>,
}

/// The bootstrap superuser's session (recovery, tests, benchmarks).
impl Default for Session {
    fn default() -> Self {
        Self::new(BOOTSTRAP_SUPERUSER.to_string(), Arc::default())
    }
}

impl Session {
    /// A session of role `user`, stopped through `interrupt`.
    pub fn new(user: String, interrupt: Arc<Interrupt>) -> Self {
        Self {
            user,
            settings: Self::default_settings(),
            transaction: None,
            cursors: Cursors::default(),
            interrupt,
            statement_timeout: None,
            synchronous_commit: true,
            prepared: Default::default(),
        }
    }

    /// The settings a session starts with (and `DISCARD ALL` goes back to).
    fn default_settings() -> BTreeMap<String, String> {
        let settings = [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("datestyle", "ISO, MDY"),
            ("timezone", "UTC"),
            ("search_path", "public"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("transaction isolation level", "read committed"),
            ("transaction_isolation", "read committed"),
            ("background_ddl", "false"),
            ("synchronous_commit", "on"),
        ];
        settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The client prepared a statement named `name` (Parse).
    pub fn prepared(&mut self, name: &str) {
        self.prepared.insert(name.to_string());
    }

    /// The client closed the statement named `name` (Close).
    pub fn deallocated(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    /// `DEALLOCATE name` (26000 if there is none) or `DEALLOCATE ALL`.
    pub(super) fn deallocate(&mut self, name: Option<String>) -> Result<StatementResult> {
        let (statements, tag) = match name {
            None => (
                std::mem::take(&mut self.prepared).into_iter().collect(),
                "DEALLOCATE ALL",
            ),
            Some(name) if self.prepared.remove(&name) => (vec![name], "DEALLOCATE"),
            Some(name) => {
                return Err(EddyError::Planning {
                    sqlstate: "26000",
                    message: format!("prepared statement \"{name}\" does not exist"),
                })
            }
        };
        Ok(StatementResult::Deallocated {
            statements,
            tag: tag.into(),
        })
    }

    /// `DISCARD ALL` (what connection pools send between clients): closes
    /// the cursors, resets the settings and deallocates the prepared
    /// statements, as PostgreSQL does; not inside a transaction block
    /// (25001). eddy keeps no plans, sequences or temporary tables, so the
    /// other kinds have nothing to discard.
    pub(super) fn discard(&mut self, all: bool, tag: String) -> Result<StatementResult> {
        if !all {
            return Ok(StatementResult::Command(tag));
        }
        if self.transaction.is_some() {
            return Err(EddyError::Planning {
                sqlstate: "25001",
                message: "DISCARD ALL cannot run inside a transaction block".into(),
            });
        }
        self.cursors = Cursors::default();
        self.settings = Self::default_settings();
        self.statement_timeout = None;
        self.synchronous_commit = true;
        let statements = std::mem::take(&mut self.prepared).into_iter().collect();
        Ok(StatementResult::Deallocated { statements, tag })
    }

    /// Whether a write waits for the write-ahead log's sync.
    pub fn synchronous_commit(&self) -> bool {
        self.synchronous_commit
    }

    /// The role the session runs as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The limits of a statement starting now (cancel requests, the
    /// statement timeout, the client going away).
    pub fn statement_guard(&self) -> StatementGuard {
        StatementGuard::new(&self.interrupt, self.statement_timeout)
    }

    /// The limits of a statement that runs until the client stops it (a
    /// SUBSCRIBE): cancel requests and the client going away, no timeout.
    pub fn endless_statement_guard(&self) -> StatementGuard {
        StatementGuard::new(&self.interrupt, None)
    }
    /// A statement of the session wrote (a later ROLLBACK cannot undo it).
    pub(super) fn note_write(&mut self) {
        if let Some(wrote) = self.transaction.as_mut() {
            *wrote = true;
        }
    }

    /// Whether DDL returns at once instead of waiting for its backfill
    /// (`SET background_ddl = true`).
    pub(super) fn background_ddl(&self) -> bool {
        // SET checks the value and stores it as `true` / `false`.
        self.settings
            .get("background_ddl")
            .is_some_and(|v| v == "true")
    }
}

pub(super) fn show_variable_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}

impl Engine {
    /// BEGIN / COMMIT / ROLLBACK. eddy applies every statement when it runs,
    /// so a block is a bracket: reads in it see the latest epoch each, and
    /// COMMIT has nothing left to do. ROLLBACK of a block that wrote cannot
    /// undo the writes, and says so (0A000) instead of pretending.
    pub(super) fn transaction(
        session: &mut Session,
        step: TransactionStep,
    ) -> Result<StatementResult> {
        match step {
            TransactionStep::Begin => {
                session.transaction.get_or_insert(false);
                Ok(StatementResult::TransactionStart("BEGIN".into()))
            }
            TransactionStep::Commit => {
                session.transaction = None;
                Ok(StatementResult::TransactionEnd("COMMIT".into()))
            }
            TransactionStep::Rollback => match session.transaction.take() {
                Some(true) => Err(crate::not_supported!(
                    "ROLLBACK cannot undo the writes of this transaction block: eddy applies \
                     each statement when it runs (the block has ended)"
                )),
                _ => Ok(StatementResult::TransactionEnd("ROLLBACK".into())),
            },
            // Savepoints bracket like blocks: fine until there is a write to
            // undo.
            TransactionStep::Savepoint => Ok(StatementResult::Command("SAVEPOINT".into())),
            TransactionStep::Release => Ok(StatementResult::Command("RELEASE".into())),
            TransactionStep::RollbackToSavepoint => match session.transaction {
                Some(true) => Err(crate::not_supported!(
                    "ROLLBACK TO SAVEPOINT cannot undo writes: eddy applies each statement when it runs"
                )),
                _ => Ok(StatementResult::Command("ROLLBACK".into())),
            },
        }
    }

    /// `SET name = value`: eddy's own settings are checked (and
    /// `checkpoint_interval` is the server's); others are remembered for
    /// SHOW, as clients and drivers expect.
    pub(super) fn set(
        &self,
        session: &mut Session,
        name: String,
        value: String,
    ) -> Result<StatementResult> {
        match name.as_str() {
            "background_ddl" => {
                let on = match value.trim_matches('\'').to_ascii_lowercase().as_str() {
                    "true" | "on" | "1" | "yes" => true,
                    "false" | "off" | "0" | "no" => false,
                    other => {
                        return Err(EddyError::InvalidParameter(format!(
                            "background_ddl takes a boolean (true or false), not \"{other}\""
                        )))
                    }
                };
                session.settings.insert(name, on.to_string());
            }
            "checkpoint_interval" => {
                let micros = crate::common::time::interval_micros(value.trim_matches('\''))?;
                if micros < 0 {
                    return Err(EddyError::InvalidParameter(
                        "checkpoint_interval cannot be negative".into(),
                    ));
                }
                self.checkpoints
                    .set_interval(std::time::Duration::from_micros(micros as u64));
            }
            "synchronous_commit" => {
                // PostgreSQL's values: every one but `off` waits for the
                // sync (eddy has no replicas to wait for).
                let value = value.trim_matches('\'').to_ascii_lowercase();
                session.synchronous_commit = match value.as_str() {
                    "off" | "false" | "0" | "no" => false,
                    "on" | "true" | "1" | "yes" | "local" | "remote_write" | "remote_apply" => true,
                    other => {
                        return Err(EddyError::InvalidParameter(format!(
                            "invalid value for parameter \"synchronous_commit\": \"{other}\""
                        )))
                    }
                };
                session.settings.insert(name, value);
            }
            "statement_timeout" => {
                session.statement_timeout = parse_timeout(&value)?;
                session.settings.insert(name, value);
            }
            "" => {}
            _ => {
                session.settings.insert(name, value);
            }
        }
        Ok(StatementResult::Command("SET".into()))
    }

    /// `SHOW name`.
    pub(super) fn show_variable(&self, session: &Session, name: &str) -> Result<StatementResult> {
        let interval = (name == "checkpoint_interval")
            .then(|| format!("{}ms", self.checkpoints.interval().as_millis()));
        let value = interval
            .or_else(|| session.settings.get(name).cloned())
            .ok_or_else(|| EddyError::Planning {
                sqlstate: "42704",
                message: format!("unrecognized configuration parameter \"{name}\""),
            })?;
        let batch = RecordBatch::try_new(
            show_variable_schema(name),
            vec![Arc::new(StringArray::from(vec![value])) as ArrayRef],
        )?;
        Ok(rows(batch))
    }
}

/// A `statement_timeout` value: milliseconds, or a number with a unit
/// (`'1s'`, `'500ms'`, `'2min'`); 0 turns it off.
fn parse_timeout(value: &str) -> Result<Option<Duration>> {
    let text = value.trim().trim_matches('\'').trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        EddyError::InvalidParameter(format!(
            "invalid value for parameter \"statement_timeout\": \"{value}\""
        ))
    })?;
    let millis = match unit.trim() {
        "" | "ms" => number,
        "s" => number * 1e3,
        "min" => number * 60e3,
        "h" => number * 3600e3,
        other => {
            return Err(EddyError::InvalidParameter(format!(
                "invalid unit \"{other}\" for parameter \"statement_timeout\": use ms, s, min or h"
            )))
        }
    };
    Ok((millis > 0.0).then(|| Duration::from_secs_f64(millis / 1e3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deallocated(result: Result<StatementResult>) -> (Vec<String>, String) {
        match result.unwrap() {
            StatementResult::Deallocated { statements, tag } => (statements, tag),
            _ => panic!("not a DEALLOCATE result"),
        }
    }

    #[test]
    fn deallocate_forgets_by_name_or_all_and_close_forgets_too() {
        let mut session = Session::default();
        for name in ["a", "b", "c"] {
            session.prepared(name);
        }
        session.deallocated("c"); // the client closed it
        let (gone, tag) = deallocated(session.deallocate(Some("a".into())));
        assert_eq!((gone, tag.as_str()), (vec!["a".to_string()], "DEALLOCATE"));
        let e = session.deallocate(Some("a".into())).err().expect("gone");
        assert_eq!(e.sqlstate(), "26000");
        assert!(session.deallocate(Some("c".into())).is_err());
        let (gone, tag) = deallocated(session.deallocate(None));
        assert_eq!(
            (gone, tag.as_str()),
            (vec!["b".to_string()], "DEALLOCATE ALL")
        );
    }

    #[test]
    fn discard_all_resets_the_session_outside_a_block() {
        let mut session = Session::default();
        session.prepared("p");
        session.settings.insert("search_path".into(), "x".into());
        session.statement_timeout = Some(Duration::from_secs(1));
        session.transaction = Some(false);
        let e = session
            .discard(true, "DISCARD ALL".into())
            .err()
            .expect("in a block");
        assert_eq!(e.sqlstate(), "25001");
        session.transaction = None;
        let (gone, _) = deallocated(session.discard(true, "DISCARD ALL".into()));
        assert_eq!(gone, vec!["p".to_string()]);
        assert_eq!(session.settings["search_path"], "public");
        assert_eq!(session.statement_timeout, None);
    }
}
