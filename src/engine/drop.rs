//! `DROP TABLE | MATERIALIZED VIEW | SOURCE [CASCADE]`: everything named is
//! checked before anything goes; dependents (views, sinks) go first, newest
//! first.

use super::{Engine, StatementResult};
use crate::catalog::{Relation, RelationKind};
use crate::error::{EddyError, Result};

impl Engine {
    pub(super) async fn drop(
        &self,
        kind: RelationKind,
        names: &[String],
        if_exists: bool,
        cascade: bool,
    ) -> Result<StatementResult> {
        let _ddl = self.ddl_lock.lock().await;
        let tag = match kind {
            RelationKind::Table => "DROP TABLE",
            RelationKind::MaterializedView => "DROP MATERIALIZED VIEW",
            RelationKind::Source => "DROP SOURCE",
        };
        // Check everything before dropping anything.
        let mut targets = Vec::with_capacity(names.len());
        for name in names {
            match self.catalog.get(name) {
                None if if_exists => continue,
                None => {
                    return Err(EddyError::UndefinedRelation(format!(
                        "{} \"{name}\" does not exist",
                        kind.noun()
                    )))
                }
                Some(r) if r.kind() != kind => {
                    return Err(EddyError::WrongObjectType(format!(
                        "\"{name}\" is not a {}; use DROP {}",
                        kind.noun(),
                        r.kind().noun().to_uppercase()
                    )))
                }
                Some(r) => targets.push(r),
            }
        }
        for target in &targets {
            if let (false, Some(sink)) = (cascade, self.catalog.sinks_on(target.id()).first()) {
                return Err(EddyError::DependentObjects {
                    message: format!(
                        "cannot drop {} {} because other objects depend on it",
                        kind.noun(),
                        target.name()
                    ),
                    detail: format!(
                        "sink {} depends on {} {}",
                        sink.name,
                        kind.noun(),
                        target.name()
                    ),
                });
            }
            let dependents = self.catalog.dependents(target.id());
            if let (false, Some(first)) = (cascade, dependents.first()) {
                let dependent = match &first.owner_sink {
                    Some(sink) => format!("sink {sink}"),
                    None => format!("materialized view {}", first.name),
                };
                return Err(EddyError::DependentObjects {
                    message: format!(
                        "cannot drop {} {} because other objects depend on it",
                        kind.noun(),
                        target.name()
                    ),
                    detail: format!("{dependent} depends on {} {}", kind.noun(), target.name()),
                });
            }
        }
        for target in targets {
            self.drop_with_dependents(target).await?;
        }
        Ok(StatementResult::Command(tag.into()))
    }

    /// Drops `relation` and, first, every view that depends on it.
    pub(super) async fn drop_with_dependents(&self, relation: Relation) -> Result<()> {
        let mut order = vec![relation];
        let mut i = 0;
        while i < order.len() {
            for dependent in self.catalog.dependents(order[i].id()) {
                if !order.iter().any(|r| r.id() == dependent.id) {
                    order.push(Relation::View(dependent));
                }
            }
            i += 1;
        }
        // Newest first: a view is dropped before the views it reads.
        order.sort_by_key(|r| std::cmp::Reverse(r.id()));
        for relation in order {
            for sink in self.catalog.sinks_on(relation.id()) {
                self.remove_sink(&sink).await?;
            }
            if self.catalog.get(relation.name()).is_none() {
                continue; // a sink's own view, gone with its sink
            }
            match &relation {
                Relation::Source(_) => {}
                Relation::View(v) => {
                    for reader in &v.source_readers {
                        reader.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.runtime.drop_view(v.id).await?
                }
                Relation::Table(t) => {
                    let _write = t.write_lock.lock().await;
                    self.runtime.forget_table(t.id).await?;
                }
            }
            self.catalog.remove(relation.name());
        }
        Ok(())
    }
}
