//! Tables: `CREATE TABLE` (columns, primary key, watermark, PROCTIME()) and
//! DML. A write is planned and evaluated by DataFusion against the table
//! as it is under the table's write lock, applied to the table's rows, and
//! handed to the runtime as a change before the lock is released, so
//! changes reach every view in the order they were applied.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::sql::sqlparser::ast::{self, Statement};

use super::query::{collect_batch, collect_rows, conform};
use super::returning::take_returning;
use super::session::Session;
use super::{Engine, StatementResult};
use crate::catalog::{Privilege, Relation, TableEntry};
use crate::common::types::column_field;
use crate::common::ChangeBatch;
use crate::connectors::table::{ProcessingTime, TableData, TableWatermark};
use crate::error::{EddyError, Result};
use crate::runtime::RuntimeHandle;
use crate::sql::{normalize_ident, TimeColumns, WatermarkClause, WriteKind};
use crate::state::wal::{WalRecord, WriteAheadLog};

/// The name, Arrow fields and primary-key column indices of a CREATE TABLE
/// (also used for the column list of CREATE SOURCE).
pub(super) fn table_columns(create: &ast::CreateTable) -> Result<(String, Vec<Field>, Vec<usize>)> {
    let name = crate::sql::relation_name(&create.name)?;
    let mut primary_key: Vec<String> = Vec::new();
    let mut not_null: Vec<bool> = Vec::new();
    for column in &create.columns {
        let mut required = false;
        for option in &column.options {
            match &option.option {
                ast::ColumnOption::NotNull => required = true,
                ast::ColumnOption::Null => {}
                ast::ColumnOption::PrimaryKey(_) => {
                    required = true;
                    primary_key.push(normalize_ident(&column.name));
                }
                other => {
                    return Err(crate::not_supported!(
                        "column option {other} is not supported yet"
                    ))
                }
            }
        }
        not_null.push(required);
    }
    for constraint in &create.constraints {
        match constraint {
            ast::TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(EddyError::Planning {
                        sqlstate: "42P16",
                        message: format!(
                            "multiple primary keys for table \"{name}\" are not allowed"
                        ),
                    });
                }
                for column in &pk.columns {
                    match &column.column.expr {
                        ast::Expr::Identifier(ident) => primary_key.push(normalize_ident(ident)),
                        other => {
                            return Err(crate::not_supported!("primary key on expression {other}"))
                        }
                    }
                }
            }
            other => {
                return Err(crate::not_supported!(
                    "table constraint {other} is not supported yet"
                ))
            }
        }
    }
    let mut fields = Vec::with_capacity(create.columns.len());
    for (column, required) in create.columns.iter().zip(&not_null) {
        let column_name = normalize_ident(&column.name);
        if fields.iter().any(|f: &Field| f.name() == &column_name) {
            return Err(EddyError::Planning {
                sqlstate: "42701",
                message: format!("column \"{column_name}\" specified more than once"),
            });
        }
        let in_key = primary_key.contains(&column_name);
        fields.push(column_field(
            &column_name,
            &column.data_type,
            !(*required || in_key),
        )?);
    }
    let mut key_indices = Vec::with_capacity(primary_key.len());
    for key in &primary_key {
        let index = fields.iter().position(|f| f.name() == key).ok_or_else(|| {
            EddyError::UndefinedColumn(format!("column \"{key}\" named in key does not exist"))
        })?;
        key_indices.push(index);
    }
    Ok((name, fields, key_indices))
}

/// A write to a table with a PROCTIME() column: INSERT without a column
/// list names the other columns (the stamp fills that one); naming it in
/// INSERT or UPDATE is refused.
pub(super) fn leave_out_processing_time(
    statement: &Statement,
    schema: &SchemaRef,
    column: usize,
) -> Result<Statement> {
    let name = schema.field(column).name();
    let refuse = || {
        Err(EddyError::Planning {
            sqlstate: "428C9",
            message: format!(
                "column \"{name}\" is PROCTIME(): it is set to the time each row is written"
            ),
        })
    };
    let is_it = |object: &ast::ObjectName| {
        object
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| &normalize_ident(ident) == name)
    };
    let mut statement = statement.clone();
    match &mut statement {
        Statement::Insert(insert) if insert.columns.is_empty() => {
            insert.columns = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != column)
                .map(|(_, f)| ast::ObjectName::from(vec![ast::Ident::with_quote('"', f.name())]))
                .collect();
        }
        Statement::Insert(insert) if insert.columns.iter().any(is_it) => return refuse(),
        Statement::Update(update)
            if update.assignments.iter().any(|a| match &a.target {
                ast::AssignmentTarget::ColumnName(object) => is_it(object),
                ast::AssignmentTarget::Tuple(objects) => objects.iter().any(is_it),
            }) =>
        {
            return refuse()
        }
        _ => {}
    }
    Ok(statement)
}

/// The watermark and processing-time column a column list declares. A
/// `PROCTIME()` column without a WATERMARK clause gets the watermark: it
/// follows the processing time.
pub(super) fn time_columns(
    time: &TimeColumns,
    schema: &SchemaRef,
) -> Result<(Option<TableWatermark>, Option<ProcessingTime>)> {
    let proctime = time
        .proctime
        .as_ref()
        .map(|column| {
            schema
                .index_of(column)
                .map(ProcessingTime::new)
                .map_err(|_| crate::internal!("PROCTIME() column {column} vanished"))
        })
        .transpose()?;
    let watermark = match (&time.watermark, &proctime) {
        (Some(clause), _) => Some(table_watermark(clause, schema.fields())?),
        (None, Some(clock)) => Some(TableWatermark::new(clock.column, 0)),
        (None, None) => None,
    };
    Ok((watermark, proctime))
}

/// Moves the watermark of a table whose watermark follows a PROCTIME()
/// column while no rows arrive, so processing-time windows close on time.
/// It takes the write lock, so its watermark is ordered with the writes.
pub(super) fn spawn_processing_time_watermark(
    table: std::sync::Weak<TableEntry>,
    runtime: crate::runtime::RuntimeHandle,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(crate::connectors::PROCESSING_TIME_HEARTBEAT).await;
            let Some(table) = table.upgrade() else {
                break; // dropped
            };
            let (Some(clock), Some(watermark)) = (&table.proctime, &table.watermark) else {
                break;
            };
            let _write = table.write_lock.lock().await;
            if let Some(moved) = watermark.advance_to(clock.now()) {
                let empty = ChangeBatch::inserts(RecordBatch::new_empty(table.schema.clone()));
                if runtime
                    .send_changes(table.id, empty, Some(moved))
                    .await
                    .is_err()
                {
                    break; // shutting down
                }
            }
        }
    });
}

pub(super) fn table_watermark(
    clause: &WatermarkClause,
    fields: &[FieldRef],
) -> Result<crate::connectors::table::TableWatermark> {
    let column = fields
        .iter()
        .position(|f| f.name() == &clause.column)
        .ok_or_else(|| {
            EddyError::UndefinedColumn(format!(
                "watermark column \"{}\" does not exist",
                clause.column
            ))
        })?;
    if !matches!(fields[column].data_type(), DataType::Timestamp(_, _)) {
        return Err(EddyError::TypeMismatch(format!(
            "watermark column \"{}\" must be a timestamp, not {}",
            clause.column,
            fields[column].data_type()
        )));
    }
    let is_column = |e: &ast::Expr| matches!(e, ast::Expr::Identifier(i) if normalize_ident(i) == clause.column);
    let delay = match &clause.expression {
        e if is_column(e) => 0,
        ast::Expr::BinaryOp { left, op: ast::BinaryOperator::Minus, right } if is_column(left) => match right.as_ref() {
            ast::Expr::Interval(interval) => {
                let value = interval.value.to_string();
                let value = value.trim_matches('\'');
                let text = match &interval.leading_field {
                    Some(unit) => format!("{value} {unit}"),
                    None => value.to_string(),
                };
                crate::common::time::interval_micros(&text)?
            }
            other => {
                return Err(EddyError::TypeMismatch(format!(
                    "the watermark delay must be an interval such as INTERVAL '5' SECOND, not {other}"
                )))
            }
        },
        other => {
            return Err(crate::not_supported!(
                "watermark expression {other}: use WATERMARK FOR {0} AS {0} - INTERVAL '...' (or AS {0})",
                clause.column
            ))
        }
    };
    if delay < 0 {
        return Err(EddyError::InvalidParameter(
            "the watermark delay must not be negative".into(),
        ));
    }
    Ok(crate::connectors::table::TableWatermark::new(column, delay))
}

/// `CREATE TABLE ... WITH (append_only = true)`.
pub(super) fn table_append_only(options: &ast::CreateTableOptions) -> Result<bool> {
    let ast::CreateTableOptions::With(options) = options else {
        return match options {
            ast::CreateTableOptions::None => Ok(false),
            other => Err(crate::not_supported!("table options {other}")),
        };
    };
    let mut append_only = false;
    for option in options {
        match option {
            ast::SqlOption::KeyValue { key, value }
                if key.value.eq_ignore_ascii_case("append_only") =>
            {
                append_only = match value.to_string().trim_matches('\'').to_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(EddyError::InvalidParameter(format!(
                            "append_only must be true or false, not {other}"
                        )))
                    }
                };
            }
            other => return Err(crate::not_supported!("table option {other}")),
        }
    }
    Ok(append_only)
}

impl Engine {
    pub(super) async fn create_table(
        &self,
        create: ast::CreateTable,
        time: &TimeColumns,
    ) -> Result<StatementResult> {
        let (name, fields, key_indices) = table_columns(&create)?;
        let append_only = table_append_only(&create.table_options)?;
        let schema = Arc::new(Schema::new(fields));
        let (watermark, proctime) = time_columns(time, &schema)?;
        let _ddl = self.ddl_lock.lock().await;
        if self.catalog.get(&name).is_some() && create.if_not_exists {
            return Ok(StatementResult::Command("CREATE TABLE".into()));
        }
        let mut data = TableData::try_new(&name, schema.clone(), key_indices)?;
        let restored = self.take_restored(&format!("table/{name}"));
        let was_restored = restored.is_some();
        if let Some(table) = restored {
            let codec = data.rows.codec().clone();
            // A piece of rows at a time: never the whole table decoded twice.
            table.for_each_piece(|entries| {
                let mut rows: Vec<&[u8]> = Vec::new();
                for (row, n) in &entries {
                    let n = i64::from_le_bytes(n.as_slice().try_into().map_err(|_| {
                        EddyError::Checkpoint(format!("table {name}: bad row multiplicity"))
                    })?);
                    rows.extend(std::iter::repeat_n(row.as_slice(), n.max(0) as usize));
                }
                if !rows.is_empty() {
                    let batch = codec.decode(rows.into_iter())?;
                    data = data.insert(batch)?.0;
                }
                Ok(())
            })?;
        }
        let restored_watermark = self.restored_watermark(&format!("table/{name}"));
        let clock_drives_watermark = matches!(
            (&proctime, &watermark),
            (Some(p), Some(w)) if p.column == w.column
        );
        let table = Arc::new(TableEntry {
            id: self.catalog.allocate_id(),
            name,
            schema,
            data: std::sync::Mutex::new(data),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            append_only,
            watermark,
            proctime,
            // Restored: a checkpoint holds it. New: once the checkpoint
            // after its CREATE TABLE completes (Engine::checkpoint).
            durable: std::sync::atomic::AtomicBool::new(was_restored),
        });
        if let (Some(w), Some(watermark)) = (restored_watermark, &table.watermark) {
            watermark.resume_at(w);
        }
        // A restored table resumes at its checkpointed log position; a new
        // one starts at the log's end (older records of its name were
        // another table's).
        let lsn = self
            .restored_table_lsn(&format!("table/{}", table.name))
            .or_else(|| self.wal.as_ref().map(|wal| wal.last_lsn()))
            .unwrap_or(0);
        let rows = table.data().rows.clone();
        self.runtime
            .register_table(
                table.id,
                table.name.clone(),
                rows,
                restored_watermark,
                was_restored,
                lsn,
            )
            .await?;
        self.catalog.insert(Relation::Table(table.clone()))?;
        if clock_drives_watermark {
            spawn_processing_time_watermark(Arc::downgrade(&table), self.runtime.clone());
        }
        Ok(StatementResult::Command("CREATE TABLE".into()))
    }

    /// INSERT, UPDATE or DELETE: the rows to write are evaluated (which a
    /// cancel or timeout may stop), then the change is applied and handed
    /// to the runtime (which nothing stops half way).
    pub(super) async fn write(
        &self,
        session: &Session,
        table_name: &str,
        kind: WriteKind,
        statement: &Statement,
        params: Vec<ScalarValue>,
    ) -> Result<StatementResult> {
        let table = match self.catalog.require(table_name)? {
            Relation::Table(t) => t,
            Relation::Source(s) => {
                return Err(EddyError::WrongObjectType(format!(
                    "cannot change source \"{}\": its rows come from its connector",
                    s.name
                )))
            }
            Relation::View(v) => {
                return Err(EddyError::WrongObjectType(format!(
                    "cannot change materialized view \"{}\"",
                    v.name
                )))
            }
        };
        if !table.durable.load(std::sync::atomic::Ordering::Acquire) {
            return Err(EddyError::Planning {
                sqlstate: "55000",
                message: format!(
                    "table \"{}\" takes no writes yet: no checkpoint holds it (the one after \
                     its CREATE TABLE failed), so a crash would forget it and the writes; \
                     writes resume once a checkpoint succeeds (CHECKPOINT tries one now)",
                    table.name
                ),
            });
        }
        if table.append_only && kind != WriteKind::Insert {
            return Err(crate::not_supported!(
                "table \"{}\" is append-only (WITH (append_only = true)): only INSERT is allowed",
                table.name
            ));
        }
        let mut statement = match &table.proctime {
            Some(clock) => leave_out_processing_time(statement, &table.schema, clock.column)?,
            None => statement.clone(),
        };
        let returning = take_returning(&mut statement);
        // Plan and evaluate against the table as it is under the write lock.
        let write_lock = table.write_lock.clone().lock_owned().await;
        let state = self.query_state()?;
        let (mut plan, _) = self.plan(&state, &statement, session.user()).await?;
        let privilege = match kind {
            WriteKind::Insert => Privilege::Insert,
            WriteKind::Update => Privilege::Update,
            WriteKind::Delete => Privilege::Delete,
        };
        self.authorize_plan(session, &plan, Some((table_name, privilege)))?;
        let guard = session.statement_guard();
        if !params.is_empty() {
            plan = plan.with_param_values(ParamValues::from(params))?;
        }
        let LogicalPlan::Dml(dml) = plan else {
            return Err(crate::internal!("{kind:?} did not plan as DML"));
        };
        let schema = table.schema.clone();
        let width = schema.fields().len();
        // The rows a RETURNING list reads.
        let written: RecordBatch;
        let (tag, (next, change)) = match (kind, &dml.op) {
            (WriteKind::Insert, WriteOp::Insert(_)) => {
                let mut new = guard
                    .run(collect_rows(&state, (*dml.input).clone(), &schema))
                    .await?;
                if let Some(clock) = &table.proctime {
                    new = clock.stamp(&new, &schema, clock.now())?;
                }
                let count = new.num_rows();
                written = new.clone();
                (format!("INSERT 0 {count}"), table.data().insert(new)?)
            }
            (WriteKind::Delete, WriteOp::Delete) => {
                let old = guard
                    .run(collect_rows(&state, (*dml.input).clone(), &schema))
                    .await?;
                let count = old.num_rows();
                written = old.clone();
                (format!("DELETE {count}"), table.data().delete(old)?)
            }
            (WriteKind::Update, WriteOp::Update) => {
                let LogicalPlan::Projection(projection) = dml.input.as_ref() else {
                    return Err(crate::internal!("UPDATE did not plan as a projection"));
                };
                // Evaluate the old and the new row side by side.
                let source = projection.input.as_ref().clone();
                let mut exprs: Vec<Expr> = source
                    .schema()
                    .columns()
                    .into_iter()
                    .take(width)
                    .map(Expr::Column)
                    .collect();
                exprs.extend(
                    projection
                        .expr
                        .iter()
                        .enumerate()
                        .map(|(i, e)| e.clone().unalias().alias(format!("__eddy_new_{i}"))),
                );
                let both = LogicalPlanBuilder::from(source).project(exprs)?.build()?;
                let batch = guard.run(collect_batch(&state, both)).await?;
                let old = conform(&batch.project(&(0..width).collect::<Vec<_>>())?, &schema)?;
                let mut new = conform(
                    &batch.project(&(width..2 * width).collect::<Vec<_>>())?,
                    &schema,
                )?;
                if let Some(clock) = &table.proctime {
                    new = clock.stamp(&new, &schema, clock.now())?;
                }
                let count = old.num_rows();
                written = new.clone();
                (format!("UPDATE {count}"), table.data().update(old, new)?)
            }
            (kind, op) => return Err(crate::internal!("{kind:?} planned as {op}")),
        };
        let returned = match &returning {
            Some(returning) => Some(
                guard
                    .run(self.returning_rows(&table.name, returning, written))
                    .await?,
            ),
            None => None,
        };
        // From here on the write is no longer the client's to stop: once in
        // the log it must take effect, so it runs to the end in a task of
        // its own (holding the write lock) even if the statement is dropped.
        let durable = tokio::spawn(apply_write(
            table,
            next,
            change,
            self.wal.clone(),
            session.synchronous_commit(),
            self.runtime.clone(),
            write_lock,
        ));
        durable
            .await
            .map_err(|e| crate::internal!("a table write's task failed: {e}"))??;
        Ok(match returned {
            Some((schema, batches)) => StatementResult::Returned {
                tag,
                schema,
                batches,
            },
            None => StatementResult::Command(tag),
        })
    }

    /// Recovery: applies the write-ahead log's records of each table that
    /// are newer than the checkpoint's position for it, in log order, as
    /// if they were written again (views see them as changes). Returns how
    /// many were applied.
    pub(super) async fn replay_wal(
        &self,
        records: Vec<WalRecord>,
        positions: &std::collections::BTreeMap<String, u64>,
    ) -> Result<usize> {
        let mut applied = 0;
        let mut unknown = std::collections::BTreeMap::<String, usize>::new();
        for record in records {
            let covered = positions.get(&format!("table/{}", record.relation));
            let table = match (covered, self.catalog.get(&record.relation)) {
                (Some(&covered), _) if record.lsn <= covered => continue,
                (Some(_), Some(Relation::Table(table))) => table,
                _ => {
                    // Its table is not in the checkpoint (its CREATE was
                    // never checkpointed): nothing to apply it to.
                    *unknown.entry(record.relation).or_default() += 1;
                    continue;
                }
            };
            let _write = table.write_lock.lock().await;
            let (next, change) = {
                let data = table.data();
                let change = data.decode_change(&record.payload).map_err(|e| {
                    EddyError::Checkpoint(format!(
                        "write-ahead log record {} of table {}: {e}",
                        record.lsn, record.relation
                    ))
                })?;
                (data.apply(&change)?, change)
            };
            take_effect(&table, next, change, &self.runtime, Some(record.lsn)).await?;
            applied += 1;
        }
        for (relation, records) in unknown {
            tracing::warn!(
                table = %relation,
                records,
                "write-ahead log: records of a table no checkpoint holds were not replayed"
            );
        }
        Ok(applied)
    }
}

/// The durable part of a table write, under the table's write lock: the
/// change logged (and synced, unless `synchronous_commit` is off), then
/// installed and handed to the runtime. If logging fails nothing changes.
async fn apply_write(
    table: Arc<TableEntry>,
    next: TableData,
    change: ChangeBatch,
    wal: Option<WriteAheadLog>,
    sync: bool,
    runtime: RuntimeHandle,
    _write_lock: tokio::sync::OwnedMutexGuard<()>,
) -> Result<()> {
    let lsn = match &wal {
        // A write that changed nothing (an UPDATE matching no row) has
        // nothing to make durable.
        Some(wal) if !change.is_empty() => {
            let payload = next.encode_change(&change)?;
            Some(wal.append(&table.name, payload, sync).await?)
        }
        _ => None,
    };
    take_effect(&table, next, change, &runtime, lsn).await
}

/// A logged change takes effect: the table's rows replaced, its watermark
/// moved, and the change handed to the runtime with its log record.
async fn take_effect(
    table: &TableEntry,
    next: TableData,
    change: ChangeBatch,
    runtime: &RuntimeHandle,
    lsn: Option<u64>,
) -> Result<()> {
    table.install(next);
    let watermark = table
        .watermark
        .as_ref()
        .map(|w| w.observe(&change))
        .transpose()?
        .flatten();
    let rows = table.data().rows.clone();
    runtime
        .send_table_changes(table.id, change, watermark, rows, lsn)
        .await
}
