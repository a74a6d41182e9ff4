//! The catalog: which tables and materialized views exist, their schemas and
//! how they depend on each other.
//!
//! The catalog holds metadata and table data; the runtime holds the state of
//! materialized views and publishes it per epoch. [`Catalog::snapshot`] puts
//! the two together into the relations one query sees: tables as they are
//! now, and every view as of the same completed epoch.
//!
//! Relation ids ([`RelationId`]) are never reused.

pub mod information_schema;
pub mod lookup;
pub mod pg_catalog;
mod provider;
pub mod roles;
pub mod secrets;
pub mod window;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use datafusion::arrow::datatypes::SchemaRef;

pub use provider::RelationProvider;

use crate::common::RelationId;
use crate::connectors::table::TableData;
use crate::error::{EddyError, Result};
use crate::runtime::PublishedEpoch;
use crate::state::{RowCodec, RowSet};
pub use roles::{Privilege, Role, Roles};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    MaterializedView,
    Source,
}

impl RelationKind {
    pub fn noun(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::MaterializedView => "materialized view",
            RelationKind::Source => "source",
        }
    }
}

/// A table: rows written by INSERT/UPDATE/DELETE.
#[derive(Debug)]
pub struct TableEntry {
    pub id: RelationId,
    pub name: String,
    pub schema: SchemaRef,
    /// The current rows. Held only briefly (never across an await).
    pub data: Mutex<TableData>,
    /// Serializes writers of this table from computing a change until it is
    /// handed to the runtime, so changes reach the runtime in the order they
    /// were applied here. CREATE MATERIALIZED VIEW holds it while it takes the
    /// backfill snapshot. (An `Arc` so that a write's durable part can own
    /// it in a task of its own.)
    pub write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Only INSERT is allowed (`WITH (append_only = true)`), so views over
    /// it can feed append-only sinks.
    pub append_only: bool,
    /// `WATERMARK FOR column AS ...`, if declared; for a PROCTIME() column
    /// without one, the watermark follows the processing time.
    pub watermark: Option<crate::connectors::table::TableWatermark>,
    /// The `column AS PROCTIME()`, stamped on every written row.
    pub proctime: Option<crate::connectors::table::ProcessingTime>,
    /// A checkpoint holds the table (its CREATE TABLE is durable). Until
    /// then it takes no writes: a write acknowledged to a table that a
    /// crash would forget would be lost (the write-ahead log replays
    /// writes into the tables a checkpoint holds).
    pub durable: std::sync::atomic::AtomicBool,
}

impl TableEntry {
    /// The current rows (held briefly; never across an await).
    pub fn data(&self) -> std::sync::MutexGuard<'_, TableData> {
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the rows by `next` (computed from them under the write lock).
    pub fn install(&self, next: TableData) {
        *self.data() = next;
    }
}

/// A materialized view's definition (its state lives in the runtime).
#[derive(Debug)]
pub struct ViewEntry {
    pub id: RelationId,
    pub name: String,
    pub schema: SchemaRef,
    pub definition: String,
    /// The relations the view reads directly.
    pub inputs: Vec<RelationId>,
    /// Columns that identify a row (the GROUP BY columns of an aggregate),
    /// when the view has such a key.
    pub key: Option<Vec<usize>>,
    /// Whether the view only ever inserts rows.
    pub append_only: bool,
    /// A view owned by a sink (`CREATE SINK ... AS SELECT`): not listed, not
    /// queryable, dropped with its sink.
    pub owner_sink: Option<String>,
    /// Stop flags of the source readers this view runs.
    pub source_readers: Vec<Arc<std::sync::atomic::AtomicBool>>,
}

/// A sink: where a view's changes are written.
#[derive(Debug)]
pub struct SinkEntry {
    pub id: u64,
    pub name: String,
    pub view: RelationId,
    pub view_name: String,
    pub target: String,
    pub mode: crate::runtime::sink::SinkMode,
    pub status: Arc<crate::runtime::sink::SinkStatus>,
}

impl SinkEntry {
    /// What the sink reads, as users see it: its view, or `(query)` for
    /// `CREATE SINK ... AS SELECT` (whose own view is not shown anywhere).
    pub fn reads(&self) -> String {
        if self.view_name.starts_with("__sink_") {
            "(query)".into()
        } else {
            self.view_name.clone()
        }
    }
}

/// A source: rows that come from a connector (`datagen`, `nexmark`). Each view
/// that reads it runs its own reader from the start.
#[derive(Debug)]
pub struct SourceEntry {
    pub id: RelationId,
    pub name: String,
    pub schema: SchemaRef,
    pub connector: crate::connectors::SourceConnector,
    /// `(column, delay µs)` of `WATERMARK FOR column AS column - delay`.
    pub watermark: Option<(usize, i64)>,
    /// The `column AS PROCTIME()`, stamped by each reader.
    pub proctime: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum Relation {
    Table(Arc<TableEntry>),
    View(Arc<ViewEntry>),
    Source(Arc<SourceEntry>),
}

impl Relation {
    pub fn id(&self) -> RelationId {
        match self {
            Relation::Table(t) => t.id,
            Relation::View(v) => v.id,
            Relation::Source(s) => s.id,
        }
    }

    /// Whether catalog-reading clients (information_schema, pg_catalog) see
    /// it: tables and materialized views, not sources (they cannot be
    /// queried) nor the private views of sinks.
    pub fn listed_to_clients(&self) -> bool {
        match self {
            Relation::Table(_) => true,
            Relation::View(v) => v.owner_sink.is_none(),
            Relation::Source(_) => false,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Relation::Table(t) => &t.name,
            Relation::View(v) => &v.name,
            Relation::Source(s) => &s.name,
        }
    }

    pub fn kind(&self) -> RelationKind {
        match self {
            Relation::Table(_) => RelationKind::Table,
            Relation::View(_) => RelationKind::MaterializedView,
            Relation::Source(_) => RelationKind::Source,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        match self {
            Relation::Table(t) => &t.schema,
            Relation::View(v) => &v.schema,
            Relation::Source(s) => &s.schema,
        }
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    relations: RwLock<BTreeMap<String, Relation>>,
    sinks: Mutex<BTreeMap<String, Arc<SinkEntry>>>,
    roles: RwLock<Roles>,
    /// Secret values by name (in memory only; see `secrets.rs`).
    secrets: RwLock<BTreeMap<String, String>>,
    next_id: AtomicU64,
    /// The statement that makes each object as it is now, in creation
    /// order: what a checkpoint records as the catalog (see [`DdlKey`]).
    ddl: Mutex<Vec<(DdlKey, String)>>,
}

/// What an entry of the DDL log makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlKey {
    /// A table, source or view: its CREATE, as first written (a later
    /// `IF NOT EXISTS` changes nothing).
    Relation(String),
    /// A sink: its CREATE SINK, as first written.
    Sink(String),
    /// A role: a CREATE ROLE of it as it is now (replaced in place when it
    /// changes, so that grants recorded after it stay after it).
    Role(String),
    /// What role `.1` may do on relation `.0`: one GRANT, replaced in
    /// place when it changes.
    Grant(String, String),
    /// A secret: its CREATE SECRET with the value sealed, replaced in
    /// place when it changes.
    Secret(String),
}

impl DdlKey {
    /// Whether a new statement for the key replaces the one recorded (the
    /// object changed), rather than being ignored (recorded already).
    fn replaces(&self) -> bool {
        matches!(
            self,
            DdlKey::Role(_) | DdlKey::Grant(..) | DdlKey::Secret(_)
        )
    }
}

impl Catalog {
    pub fn new() -> Self {
        Self {
            relations: RwLock::default(),
            sinks: Mutex::default(),
            roles: RwLock::default(),
            secrets: RwLock::default(),
            next_id: AtomicU64::new(1),
            ddl: Mutex::default(),
        }
    }

    fn ddl(&self) -> std::sync::MutexGuard<'_, Vec<(DdlKey, String)>> {
        self.ddl
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the statement that makes the object `key` names (see
    /// [`DdlKey`] for which replace an earlier one).
    pub fn record_ddl(&self, key: DdlKey, statement: &str) {
        let mut ddl = self.ddl();
        let statement = statement.trim().to_string();
        match ddl.iter_mut().find(|(k, _)| *k == key) {
            Some((_, recorded)) if key.replaces() => *recorded = statement,
            Some(_) => {}
            None => ddl.push((key, statement)),
        }
    }

    fn forget_ddl(&self, keep: impl Fn(&DdlKey) -> bool) {
        self.ddl().retain(|(k, _)| keep(k));
    }

    /// The value of secret `name`.
    pub fn secret(&self, name: &str) -> Option<String> {
        self.secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The names of the secrets.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Sets secret `name` to `value`, recording `statement` (the CREATE
    /// SECRET with the value sealed) in the DDL log.
    pub fn set_secret(&self, name: &str, value: String, statement: &str) {
        self.secrets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), value);
        self.record_ddl(DdlKey::Secret(name.to_string()), statement);
    }

    /// Forgets secret `name`; whether there was one.
    pub fn remove_secret(&self, name: &str) -> bool {
        let removed = self
            .secrets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some();
        self.forget_ddl(|k| !matches!(k, DdlKey::Secret(n) if n == name));
        removed
    }

    /// The role called `name`, as it is now.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.roles().get(name).cloned()
    }

    /// Every role and grant, as they are now.
    pub fn roles(&self) -> std::sync::RwLockReadGuard<'_, Roles> {
        self.roles.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes roles or grants; the DDL log follows: a role changed or
    /// created is recorded as its CREATE ROLE, a dropped one forgotten, and
    /// every grant on the relations `touched` recorded as it now stands.
    pub fn change_roles<T>(
        &self,
        change: impl FnOnce(&mut Roles) -> Result<T>,
        touched_roles: &[String],
        touched_relations: &[(RelationId, String)],
    ) -> Result<T> {
        let mut roles = self.roles.write().unwrap_or_else(|p| p.into_inner());
        let outcome = change(&mut roles)?;
        for name in touched_roles {
            match roles.get(name) {
                Some(role) => {
                    self.record_ddl(DdlKey::Role(name.clone()), &role.defining_statement())
                }
                None => self.forget_ddl(|k| !matches!(k, DdlKey::Role(n) if n == name)),
            }
        }
        for (id, relation) in touched_relations {
            let granted = roles.grants_on(*id);
            self.forget_ddl(|k| {
                !matches!(k, DdlKey::Grant(r, role) if r == relation
                    && !granted.iter().any(|(g, _)| g == role))
            });
            for (role, privileges) in granted {
                let list: Vec<&str> = privileges.iter().map(|p| p.keyword()).collect();
                self.record_ddl(
                    DdlKey::Grant(relation.clone(), role.clone()),
                    &format!(
                        "GRANT {} ON {} TO {}",
                        list.join(", "),
                        roles::quote_ident(relation),
                        roles::quote_ident(&role)
                    ),
                );
            }
        }
        Ok(outcome)
    }

    /// The statements that create every object, in creation order.
    pub fn ddl_log(&self) -> Vec<String> {
        self.ddl().iter().map(|(_, s)| s.clone()).collect()
    }

    /// The recorded CREATE statements of relations and sinks, as
    /// `(name, statement)`.
    pub fn object_statements(&self) -> Vec<(String, String)> {
        self.ddl()
            .iter()
            .filter_map(|(key, statement)| match key {
                DdlKey::Relation(name) | DdlKey::Sink(name) => {
                    Some((name.clone(), statement.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn sinks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<SinkEntry>>> {
        self.sinks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn sink(&self, name: &str) -> Option<Arc<SinkEntry>> {
        self.sinks().get(name).cloned()
    }

    pub fn list_sinks(&self) -> Vec<Arc<SinkEntry>> {
        self.sinks().values().cloned().collect()
    }

    pub fn insert_sink(&self, sink: Arc<SinkEntry>) -> Result<()> {
        let mut sinks = self.sinks();
        if sinks.contains_key(&sink.name) {
            return Err(EddyError::DuplicateRelation(format!(
                "sink \"{}\" already exists",
                sink.name
            )));
        }
        sinks.insert(sink.name.clone(), sink);
        Ok(())
    }

    pub fn remove_sink(&self, name: &str) {
        self.sinks().remove(name);
        self.forget_ddl(|k| !matches!(k, DdlKey::Sink(n) if n == name));
    }

    /// Sinks that read view `id`.
    pub fn sinks_on(&self, id: RelationId) -> Vec<Arc<SinkEntry>> {
        self.sinks()
            .values()
            .filter(|s| s.view == id)
            .cloned()
            .collect()
    }

    pub fn allocate_id(&self) -> RelationId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Relation>> {
        self.relations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Relation>> {
        self.relations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Relation> {
        self.read().get(name).cloned()
    }

    /// The relation called `name`, or the Postgres error for a missing one.
    pub fn require(&self, name: &str) -> Result<Relation> {
        self.get(name).ok_or_else(|| {
            EddyError::UndefinedRelation(format!("relation \"{name}\" does not exist"))
        })
    }

    pub fn by_id(&self, id: RelationId) -> Option<Relation> {
        self.read().values().find(|r| r.id() == id).cloned()
    }

    /// All relations, ordered by name.
    pub fn list(&self) -> Vec<Relation> {
        self.read().values().cloned().collect()
    }

    /// Adds a relation; fails if the name is taken.
    pub fn insert(&self, relation: Relation) -> Result<()> {
        let mut relations = self.write();
        if relations.contains_key(relation.name()) {
            return Err(EddyError::DuplicateRelation(format!(
                "relation \"{}\" already exists",
                relation.name()
            )));
        }
        relations.insert(relation.name().to_string(), relation);
        Ok(())
    }

    /// Drops relation `name`, with the grants on it.
    pub fn remove(&self, name: &str) {
        if let Some(relation) = self.write().remove(name) {
            self.roles
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .forget_relation(relation.id());
        }
        self.forget_ddl(|k| match k {
            DdlKey::Relation(n) | DdlKey::Grant(n, _) => n != name,
            _ => true,
        });
    }

    /// Views that read `id` directly, oldest first.
    pub fn dependents(&self, id: RelationId) -> Vec<Arc<ViewEntry>> {
        let mut views: Vec<Arc<ViewEntry>> = self
            .read()
            .values()
            .filter_map(|r| match r {
                Relation::View(v) if v.inputs.contains(&id) => Some(v.clone()),
                _ => None,
            })
            .collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// Every relation as one query sees it: tables as of now, views as of
    /// `epoch`. A view not yet in `epoch` is left out.
    pub fn snapshot(&self, epoch: &PublishedEpoch) -> Vec<RelationProvider> {
        self.list()
            .into_iter()
            .filter_map(|relation| {
                let source_read = match &relation {
                    Relation::Source(s) => s.connector.snapshot_read(s.schema.clone(), s.proctime),
                    _ => None,
                };
                let (rows, watermark_column) = match &relation {
                    Relation::Table(t) => (
                        t.data
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .rows
                            .clone(),
                        t.watermark.as_ref().map(|w| w.column),
                    ),
                    Relation::View(v) => (epoch.views.get(&v.id)?.clone(), None),
                    // Planned over; an ad hoc scan reads the connector.
                    Relation::Source(s) => (
                        RowSet::new(Arc::new(RowCodec::try_new(s.schema.clone()).ok()?)),
                        s.watermark.map(|(column, _)| column),
                    ),
                };
                Some(
                    RelationProvider::new(
                        relation.id(),
                        relation.name().to_string(),
                        relation.kind(),
                        rows,
                        watermark_column,
                    )
                    .reading_source_with(source_read),
                )
            })
            .collect()
    }
}
