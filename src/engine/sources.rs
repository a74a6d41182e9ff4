//! `CREATE SOURCE`: a catalog entry with a checked connector config and no
//! rows of its own. Each view that reads it gets a reader of its own (see
//! [`super::views`]).

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::{self};

use super::tables::{table_columns, time_columns};
use super::{Engine, StatementResult};
use crate::catalog::Relation;
use crate::connectors::format::SourceClauses;
use crate::connectors::{datagen, kafka, nexmark, SourceConnector};
use crate::error::{EddyError, Result};
use crate::sql::TimeColumns;

impl Engine {
    pub(super) async fn create_source(
        &self,
        table: ast::CreateTable,
        time: &TimeColumns,
        clauses: SourceClauses,
    ) -> Result<StatementResult> {
        let clauses = SourceClauses {
            options: self.resolve_secrets(&clauses.options)?,
            ..clauses
        };
        let options = &clauses.options;
        let (name, mut fields, key) = table_columns(&table)?;
        // Before the connector is checked (a Kafka source asks its brokers):
        // an existing source is all IF NOT EXISTS needs to know.
        if table.if_not_exists && self.catalog.get(&name).is_some() {
            return Ok(StatementResult::Command("CREATE SOURCE".into()));
        }
        let connector_name = options.get("connector").map(|c| c.to_lowercase());
        // An unknown connector is the mistake to name, before anything its
        // other clauses say.
        if let Some(other) = connector_name
            .as_deref()
            .filter(|c| !["kafka", "datagen", "nexmark"].contains(c))
        {
            return Err(crate::not_supported!(
                "source connector '{other}' is not supported; use 'kafka', 'datagen' or 'nexmark'"
            ));
        }
        if connector_name.as_deref() != Some("kafka") {
            if !key.is_empty() {
                return Err(crate::not_supported!("sources have no primary key"));
            }
            if clauses.format.is_some() || !clauses.includes.is_empty() {
                return Err(crate::not_supported!(
                    "FORMAT ... ENCODE ... and INCLUDE are for Kafka sources"
                ));
            }
        }
        // The connector makes every column but the processing-time one,
        // which each reader stamps.
        let proctime_field = match &time.proctime {
            Some(column) => {
                let position = fields
                    .iter()
                    .position(|f| f.name() == column)
                    .ok_or_else(|| crate::internal!("PROCTIME() column {column} vanished"))?;
                Some((position, fields.remove(position)))
            }
            None => None,
        };
        let declared_others = !fields.is_empty();
        let connector = match connector_name.as_deref() {
            Some("datagen") => {
                if fields.is_empty() {
                    return Err(EddyError::InvalidParameter(
                        "a datagen source needs a column list".into(),
                    ));
                }
                SourceConnector::Datagen(datagen::DatagenConfig::from_options(
                    Arc::new(Schema::new(fields)),
                    options,
                )?)
            }
            Some("nexmark") => SourceConnector::Nexmark(nexmark::NexmarkConfig::from_options(
                &name, &fields, options,
            )?),
            Some("kafka") => {
                if time.proctime.is_some() && !key.is_empty() {
                    return Err(crate::not_supported!(
                        "a PROCTIME() column on a source with a PRIMARY KEY"
                    ));
                }
                let config =
                    kafka::KafkaSourceConfig::from_clauses(fields, &key, &clauses, &self.policy)?;
                if let Some(counts) = self.take_restored(&format!("source/{name}/errors")) {
                    config.errors.restore(counts.into_map()?)?;
                }
                for (host, port) in config.brokers() {
                    self.policy
                        .check_connect(&format!("source {name}"), &host, port)
                        .await?;
                }
                let config = Arc::new(config);
                // A recovery does not wait for the brokers: one that is
                // away must not keep eddy from starting (the readers wait
                // for it and say so).
                if !self.is_restoring() {
                    let checked = config.clone();
                    tokio::task::spawn_blocking(move || checked.check_topic())
                        .await
                        .map_err(|e| crate::internal!("Kafka topic check: {e}"))??;
                }
                SourceConnector::Kafka(config)
            }
            Some(other) => return Err(crate::internal!("connector '{other}' passed the check")),
            None => {
                return Err(EddyError::InvalidParameter(
                    "CREATE SOURCE needs WITH (connector = 'kafka', 'datagen' or 'nexmark', ...)"
                        .into(),
                ))
            }
        };
        let mut schema = connector.schema();
        if let Some((position, field)) = proctime_field {
            // Where it was declared; after the connector's own columns when
            // it was the only one declared.
            let position = if declared_others {
                position
            } else {
                schema.fields().len()
            };
            let mut all: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            all.insert(position, field);
            schema = Arc::new(Schema::new(all));
        }
        let (watermark, proctime) = time_columns(time, &schema)?;
        let _ddl = self.ddl_lock.lock().await;
        if self.catalog.get(&name).is_some() && table.if_not_exists {
            return Ok(StatementResult::Command("CREATE SOURCE".into()));
        }
        self.catalog
            .insert(Relation::Source(Arc::new(crate::catalog::SourceEntry {
                id: self.catalog.allocate_id(),
                name,
                schema,
                connector,
                watermark: watermark.map(|w| (w.column, w.delay_micros)),
                proctime: proctime.map(|p| p.column),
            })))?;
        Ok(StatementResult::Command("CREATE SOURCE".into()))
    }
}
