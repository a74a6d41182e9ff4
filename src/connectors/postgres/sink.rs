//! The Postgres sink task, its configuration and its status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::pin_mut;
use postgres_types::ToSql;
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{Client, NoTls};

use crate::common::pg_types::{pg_type, pg_type_sql, Cell};
use crate::common::ChangeBatch;
use crate::connectors::epoch::{appended_rows, json_rows, key_fates, take_rows, RowRef};
use crate::connectors::OnError;
use crate::error::{EddyError, Result};
use crate::runtime::sink::{RejectedRow, SinkEpoch, SinkMode, SinkStatus};
use crate::state::RowCodec;

/// The table that records, per sink, the last epoch written.
const PROGRESS_TABLE: &str = "eddy_sink_progress";
/// The table that lists, per sink, the rows it skipped (`on_error =
/// 'skip'`), written in the same transaction as the epoch.
const ERRORS_TABLE: &str = "eddy_sink_errors";
const BACKOFF_START_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;
/// One epoch's transaction must be answered within this long; beyond it
/// the connection is dropped (Postgres rolls the transaction back) and the
/// epoch retried, so a target that stops answering cannot hold the sink.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `WITH (...)` options of a Postgres sink, checked.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    pub sink_name: String,
    pub connection: tokio_postgres::Config,
    /// `schema.table`, each part as written (unquoted names as given).
    pub table: (String, String),
    pub mode: SinkMode,
    pub create_table: bool,
    /// Key column indices in the view's schema (upsert mode).
    pub key: Vec<usize>,
    pub schema: SchemaRef,
    /// What to do with a row Postgres refuses (a NUL in text, a value out
    /// of the target column's range, a constraint).
    pub on_error: OnError,
}

fn option_error(message: String) -> EddyError {
    EddyError::InvalidParameter(message)
}

impl PostgresSinkConfig {
    /// Reads the options. `derived_key` is the view's own key, if it has one
    /// (the GROUP BY columns of an aggregate).
    pub fn from_options(
        sink_name: &str,
        options: &BTreeMap<String, String>,
        schema: SchemaRef,
        derived_key: Option<Vec<usize>>,
    ) -> Result<Self> {
        const KNOWN: [&str; 12] = [
            "connector",
            "url",
            "host",
            "port",
            "user",
            "password",
            "dbname",
            "table",
            "primary_key",
            "type",
            "create_table",
            "on_error",
        ];
        if let Some(unknown) = options.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(option_error(format!(
                "unknown option {unknown} for a postgres sink; known: {}",
                KNOWN.join(", ")
            )));
        }
        let mut connection = match options.get("url") {
            Some(url) => url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| option_error(format!("invalid url for sink {sink_name}: {e}")))?,
            None => tokio_postgres::Config::new(),
        };
        if let Some(host) = options.get("host") {
            connection.host(host);
        }
        if let Some(port) = options.get("port") {
            connection.port(
                port.parse()
                    .map_err(|_| option_error(format!("invalid port {port}")))?,
            );
        }
        if let Some(user) = options.get("user") {
            connection.user(user);
        }
        if let Some(password) = options.get("password") {
            connection.password(password);
        }
        if let Some(dbname) = options.get("dbname") {
            connection.dbname(dbname);
        }
        if connection.get_hosts().is_empty() {
            return Err(option_error(
                "a postgres sink needs url = 'postgres://...' or host = '...'".into(),
            ));
        }
        if connection.get_user().is_none() {
            connection.user("postgres");
        }
        // Every outbound connection is bounded: connecting, and (through
        // TCP keepalives and the kernel's user timeout) a peer that stops
        // answering mid-write.
        connection
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(60));
        let table = options
            .get("table")
            .ok_or_else(|| option_error("a postgres sink needs table = '[schema.]table'".into()))?;
        let table = match table.split_once('.') {
            Some((schema, name)) => (schema.to_string(), name.to_string()),
            None => ("public".to_string(), table.clone()),
        };
        let mode = match options.get("type").map(|t| t.to_lowercase()).as_deref() {
            None | Some("upsert") => SinkMode::Upsert,
            Some("append-only" | "append_only") => SinkMode::AppendOnly,
            Some(other) => {
                return Err(option_error(format!(
                    "type must be 'upsert' or 'append-only', not '{other}'"
                )))
            }
        };
        let create_table = match options
            .get("create_table")
            .map(|v| v.to_lowercase())
            .as_deref()
        {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(option_error(format!(
                    "create_table must be 'true' or 'false', not '{other}'"
                )))
            }
        };
        let key = match (options.get("primary_key"), mode) {
            (Some(columns), _) => columns
                .split(',')
                .map(|c| {
                    let c = c.trim();
                    schema.index_of(c).map_err(|_| {
                        EddyError::UndefinedColumn(format!("primary_key column \"{c}\" is not a column of the view"))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            (None, SinkMode::AppendOnly) => vec![],
            (None, SinkMode::Upsert) => match derived_key {
                Some(key) if !key.is_empty() => key,
                _ => {
                    return Err(option_error(format!(
                        "sink {sink_name} needs primary_key = 'col,...': the view has no key of its own \
                         (only GROUP BY views do)"
                    )))
                }
            },
        };
        Ok(Self {
            sink_name: sink_name.to_string(),
            connection,
            table,
            mode,
            create_table,
            key,
            schema,
            on_error: OnError::from_options(options)?,
        })
    }

    /// The hosts and ports it connects to (a Unix socket counts as
    /// `localhost`).
    pub fn peers(&self) -> Vec<(String, u16)> {
        let ports = self.connection.get_ports();
        self.connection
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    tokio_postgres::config::Host::Tcp(name) => (name.clone(), port),
                    tokio_postgres::config::Host::Unix(_) => ("localhost".to_string(), port),
                }
            })
            .collect()
    }

    fn qualified_table(&self) -> String {
        format!("{}.{}", quote(&self.table.0), quote(&self.table.1))
    }

    fn columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect()
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

async fn connect(config: &PostgresSinkConfig) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connection.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres sink connection ended");
        }
    });
    // The staging tables are made with IF NOT EXISTS every epoch, and each
    // NOTICE that they exist would be a log line a second (tokio-postgres
    // logs notices); warnings and errors still arrive.
    client
        .batch_execute("SET client_min_messages = warning")
        .await?;
    Ok(client)
}

/// A connection for CREATE SINK: failing to connect is 08001.
async fn connect_for_statement(config: &PostgresSinkConfig) -> Result<Client> {
    connect(config).await.map_err(|e| {
        EddyError::ConnectionFailure(pg_error(
            &format!("cannot connect to Postgres for sink {}", config.sink_name),
            &e,
        ))
    })
}

/// A connection for the sink task, with eddy's tables in place.
async fn connect_ready(config: &PostgresSinkConfig) -> Result<Client, tokio_postgres::Error> {
    let client = connect(config).await?;
    ensure_tables(&client).await?;
    Ok(client)
}

/// Starts a new sink's progress over: it writes from its first epoch,
/// whatever an old sink of its name committed. Runs at CREATE SINK once
/// the name is taken (a restored sink keeps its progress, to skip what it
/// already committed).
pub async fn reset_progress(config: &PostgresSinkConfig) -> Result<()> {
    let client = connect_for_statement(config).await?;
    client
        .execute(
            &format!("DELETE FROM {PROGRESS_TABLE} WHERE sink = $1"),
            &[&config.sink_name],
        )
        .await
        .map_err(|e| EddyError::InvalidParameter(pg_error("Postgres", &e)))?;
    Ok(())
}

/// `context: <what Postgres said> (<SQLSTATE>)`, or for an error of the
/// connection, tokio-postgres's words with their causes ("error connecting
/// to server: Connection refused (os error 111)"): its own message alone
/// does not say why.
fn pg_error(context: &str, e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{context}: {} ({})", db.message(), db.code().code()),
        None => {
            let mut text = format!("{context}: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            text
        }
    }
}

/// Checks (or creates) the target table and eddy's tables. Runs at CREATE
/// SINK, so mistakes are reported there (a sink restored from a checkpoint
/// is not checked again).
pub async fn validate_target(config: &PostgresSinkConfig) -> Result<()> {
    let client = connect_for_statement(config).await?;
    let user_error =
        |e: tokio_postgres::Error| EddyError::InvalidParameter(pg_error("Postgres", &e));
    if config.create_table {
        let columns: Vec<String> = config
            .schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", quote(f.name()), pg_type_sql(f)))
            .collect();
        let key: Vec<String> = config
            .key
            .iter()
            .map(|&i| quote(config.schema.field(i).name()))
            .collect();
        let primary_key = if key.is_empty() {
            String::new()
        } else {
            format!(", PRIMARY KEY ({})", key.join(", "))
        };
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({}{primary_key})",
                config.qualified_table(),
                columns.join(", ")
            ))
            .await
            .map_err(user_error)?;
    }
    check_columns(&client, config).await?;
    ensure_tables(&client).await.map_err(user_error)?;
    Ok(())
}

/// Creates eddy's own tables in the target's database if missing: the
/// sinks' progress and the rows they skipped. At CREATE SINK and at every
/// connection of a sink (a sink restored from an older eddy's checkpoint
/// may not have the second).
async fn ensure_tables(client: &Client) -> Result<(), tokio_postgres::Error> {
    for definition in [
        format!(
            "{PROGRESS_TABLE} (sink TEXT PRIMARY KEY, epoch BIGINT NOT NULL, \
             updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), writer TEXT)"
        ),
        format!(
            "{ERRORS_TABLE} (sink TEXT NOT NULL, epoch BIGINT NOT NULL, key TEXT NOT NULL, \
             reason TEXT NOT NULL, skipped_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ),
    ] {
        if let Err(e) = client
            .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {definition}"))
            .await
        {
            // Two sinks creating it at once: one wins, the other sees it exist.
            let raced = matches!(e.code().map(|c| c.code()), Some("23505" | "42P07"));
            if !raced {
                return Err(e);
            }
        }
    }
    // Progress tables made before writers were marked. (Only then: an
    // ALTER TABLE locks the table against every sink's epoch, even when
    // there is nothing to add, and this runs at every connection.)
    let marked = client
        .query_opt(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
             AND attname = 'writer' AND NOT attisdropped",
            &[&PROGRESS_TABLE],
        )
        .await?
        .is_some();
    if !marked {
        client
            .batch_execute(&format!(
                "ALTER TABLE {PROGRESS_TABLE} ADD COLUMN IF NOT EXISTS writer TEXT"
            ))
            .await?;
    }
    Ok(())
}

/// The target's columns must match the view's, by name and type; upsert
/// sinks need a unique index on exactly the key columns.
async fn check_columns(client: &Client, config: &PostgresSinkConfig) -> Result<()> {
    let table = config.qualified_table();
    let rows = client
        .query(
            "SELECT a.attname::text, t.typname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table],
        )
        .await
        .map_err(|e| EddyError::InvalidParameter(pg_error("Postgres", &e)))?;
    if rows.is_empty() {
        return Err(EddyError::UndefinedRelation(format!(
            "the Postgres table {table} does not exist: create it, or set create_table = 'true'"
        )));
    }
    let target: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for field in config.schema.fields() {
        let expected = pg_type(field).name().to_string();
        let Some(actual) = target.get(field.name()) else {
            return Err(EddyError::UndefinedColumn(format!(
                "column \"{}\" of the view is missing from the Postgres table {table}",
                field.name()
            )));
        };
        let text_like = |t: &str| matches!(t, "text" | "varchar" | "bpchar");
        if *actual != expected && !(text_like(actual) && text_like(&expected)) {
            return Err(EddyError::TypeMismatch(format!(
                "column \"{}\" is {expected} in the view but {actual} in the Postgres table {table}",
                field.name()
            )));
        }
    }
    if config.mode == SinkMode::Upsert {
        let mut key: Vec<String> = config
            .key
            .iter()
            .map(|&i| config.schema.field(i).name().clone())
            .collect();
        key.sort();
        let indexes = client
            .query(
                "SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique GROUP BY i.indexrelid",
                &[&table],
            )
            .await
            .map_err(|e| EddyError::InvalidParameter(pg_error("Postgres", &e)))?;
        if !indexes.iter().any(|r| r.get::<_, Vec<String>>(0) == key) {
            return Err(EddyError::InvalidParameter(format!(
                "upsert into {table} needs a primary key or unique index on ({}) in Postgres",
                key.join(", ")
            )));
        }
    }
    Ok(())
}

/// One epoch's writes after coalescing per key.
struct EpochWrite {
    /// Rows to insert or update.
    upserts: Option<RecordBatch>,
    /// Key columns of rows to delete.
    deletes: Option<RecordBatch>,
}

impl EpochWrite {
    fn rows(&self) -> u64 {
        (self.upserts.as_ref().map_or(0, |b| b.num_rows())
            + self.deletes.as_ref().map_or(0, |b| b.num_rows())) as u64
    }
}

/// The last state of each key wins; a key that did not exist before the
/// epoch and does not exist after it writes nothing.
fn coalesce(config: &PostgresSinkConfig, changes: &[ChangeBatch]) -> Result<EpochWrite> {
    if config.mode == SinkMode::AppendOnly {
        return Ok(EpochWrite {
            upserts: take_rows(changes, &appended_rows(changes)?)?,
            deletes: None,
        });
    }
    let fates = key_fates(&config.schema, &config.key, changes)?;
    let upserts: Vec<RowRef> = fates.iter().filter_map(|f| f.after).collect();
    let deleted_keys: Vec<&[u8]> = fates
        .iter()
        .filter(|f| f.before.is_some() && f.after.is_none())
        .map(|f| &f.key[..])
        .collect();
    let codec = RowCodec::try_new(Arc::new(config.schema.project(&config.key)?))?;
    let deletes = (!deleted_keys.is_empty())
        .then(|| codec.decode(deleted_keys.into_iter()))
        .transpose()?;
    Ok(EpochWrite {
        upserts: take_rows(changes, &upserts)?,
        deletes,
    })
}

/// COPYs `rows` in binary into `table` (columns in order).
async fn copy_rows(
    transaction: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &RecordBatch,
) -> Result<(), tokio_postgres::Error> {
    let schema = rows.schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
    let types: Vec<postgres_types::Type> = schema.fields().iter().map(|f| pg_type(f)).collect();
    let sink = transaction
        .copy_in(&format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            columns.join(", ")
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let mut cells: Vec<Cell<'_>> = Vec::with_capacity(columns.len());
    for row in 0..rows.num_rows() {
        cells.clear();
        cells.extend(rows.columns().iter().map(|array| Cell { array, row }));
        let values: Vec<&(dyn ToSql + Sync)> =
            cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Why an epoch was not written: Postgres' error (retried if transient,
/// else the sink fails), or a reason to retry of eddy's own.
enum Retry {
    Error(tokio_postgres::Error),
    Because(String),
}

/// Where one kind of row goes: COPYed into a staging table, then moved
/// into the target by one statement.
struct Stage {
    table: &'static str,
    create: String,
    apply: String,
    /// The columns of the staged rows that identify a skipped row (all of
    /// them for a keyless sink).
    key: Vec<usize>,
    /// How a skipped row's reason starts ("" for rows written, "delete: ").
    what: &'static str,
}

impl PostgresSinkConfig {
    fn upsert_stage(&self) -> Stage {
        let table = self.qualified_table();
        let columns = self.columns().join(", ");
        let apply = match self.mode {
            SinkMode::AppendOnly => {
                format!("INSERT INTO {table} ({columns}) SELECT {columns} FROM eddy_stage_upserts")
            }
            SinkMode::Upsert => {
                let key: Vec<String> = self
                    .key
                    .iter()
                    .map(|&i| quote(self.schema.field(i).name()))
                    .collect();
                let updates: Vec<String> = self
                    .schema
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !self.key.contains(i))
                    .map(|(_, f)| format!("{0} = EXCLUDED.{0}", quote(f.name())))
                    .collect();
                let action = if updates.is_empty() {
                    "NOTHING".to_string()
                } else {
                    format!("UPDATE SET {}", updates.join(", "))
                };
                format!(
                    "INSERT INTO {table} ({columns}) SELECT {columns} FROM eddy_stage_upserts ON CONFLICT ({}) DO {action}",
                    key.join(", ")
                )
            }
        };
        Stage {
            table: "eddy_stage_upserts",
            create: format!(
                "CREATE TEMP TABLE IF NOT EXISTS eddy_stage_upserts (LIKE {table}) ON COMMIT DELETE ROWS"
            ),
            apply,
            key: match self.mode {
                SinkMode::AppendOnly => (0..self.schema.fields().len()).collect(),
                SinkMode::Upsert => self.key.clone(),
            },
            what: "",
        }
    }

    fn delete_stage(&self) -> Stage {
        let table = self.qualified_table();
        let key: Vec<String> = self
            .key
            .iter()
            .map(|&i| quote(self.schema.field(i).name()))
            .collect();
        let matches: Vec<String> = key.iter().map(|k| format!("t.{k} = d.{k}")).collect();
        Stage {
            table: "eddy_stage_deletes",
            create: format!(
                "CREATE TEMP TABLE IF NOT EXISTS eddy_stage_deletes ON COMMIT DELETE ROWS AS SELECT {} FROM {table} WITH NO DATA",
                key.join(", ")
            ),
            apply: format!(
                "DELETE FROM {table} t USING eddy_stage_deletes d WHERE {}",
                matches.join(" AND ")
            ),
            key: (0..self.key.len()).collect(),
            what: "delete: ",
        }
    }
}

/// Whether Postgres refused the rows themselves (a data exception such as
/// a NUL in text or a value out of range, or a constraint), rather than
/// the connection or the server.
fn is_row_error(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| matches!(&code.code()[..2], "22" | "23"))
}

/// Stages `rows` and applies them.
async fn apply_rows(
    transaction: &tokio_postgres::Transaction<'_>,
    stage: &Stage,
    rows: &RecordBatch,
) -> Result<(), tokio_postgres::Error> {
    copy_rows(transaction, stage.table, rows).await?;
    transaction.batch_execute(&stage.apply).await
}

/// Applies `rows` leaving out each row Postgres refuses: halves of a
/// refused chunk are tried again, each under a savepoint, down to single
/// rows, which go to `skipped` (a handful of bad rows costs a few dozen
/// round trips, not one per row).
async fn apply_rows_skipping(
    transaction: &tokio_postgres::Transaction<'_>,
    stage: &Stage,
    rows: &RecordBatch,
    epoch: u64,
    skipped: &mut Vec<RejectedRow>,
) -> Result<(), tokio_postgres::Error> {
    let mut pending = vec![(0, rows.num_rows())];
    while let Some((offset, len)) = pending.pop() {
        let chunk = rows.slice(offset, len);
        transaction.batch_execute("SAVEPOINT eddy_rows").await?;
        let applied = async {
            apply_rows(transaction, stage, &chunk).await?;
            transaction
                .batch_execute(&format!("TRUNCATE {}", stage.table))
                .await
        }
        .await;
        match applied {
            Ok(()) => {
                transaction
                    .batch_execute("RELEASE SAVEPOINT eddy_rows")
                    .await?
            }
            Err(e) if is_row_error(&e) => {
                transaction
                    .batch_execute("ROLLBACK TO SAVEPOINT eddy_rows; RELEASE SAVEPOINT eddy_rows")
                    .await?;
                if len > 1 {
                    let half = len / 2;
                    pending.push((offset + half, len - half));
                    pending.push((offset, half));
                    continue;
                }
                let key = chunk
                    .project(&stage.key)
                    .ok()
                    .and_then(|key| json_rows(Some(&key)).ok())
                    .and_then(|mut rows| rows.pop())
                    .unwrap_or_default();
                skipped.push(RejectedRow {
                    epoch,
                    key,
                    reason: format!("{}{}", stage.what, pg_error("Postgres refused the row", &e)),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What writing an epoch came to.
enum Written {
    /// Postgres had recorded it already (a replay after a restart).
    AlreadyRecorded,
    /// Written and recorded, without these rows (refused, `on_error =
    /// 'skip'`; none otherwise).
    Committed(Vec<RejectedRow>),
    /// Another sink of this name writes into this database: its progress
    /// row carries another writer's mark. Nothing was written.
    ForeignWriter(String),
}

/// Applies one epoch in one transaction, as the sink marked `writer`:
/// with `skipping`, each row Postgres refuses is left out and listed in
/// [`ERRORS_TABLE`] in the same transaction; without, the first refusal
/// fails the whole epoch.
async fn write_epoch(
    client: &mut Client,
    config: &PostgresSinkConfig,
    writer: &str,
    epoch: u64,
    write: &EpochWrite,
    skipping: bool,
) -> Result<Written, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let recorded: Option<(i64, Option<String>)> = transaction
        .query_opt(
            &format!("SELECT epoch, writer FROM {PROGRESS_TABLE} WHERE sink = $1 FOR UPDATE"),
            &[&config.sink_name],
        )
        .await?
        .map(|row| (row.get(0), row.get(1)));
    match recorded {
        // A row from before writers were marked is this sink's own.
        Some((_, Some(other))) if other != writer => return Ok(Written::ForeignWriter(other)),
        Some((recorded, _)) if recorded as u64 >= epoch => return Ok(Written::AlreadyRecorded),
        _ => {}
    }
    let mut skipped = Vec::new();
    let stages = [
        (&write.upserts, config.upsert_stage()),
        (&write.deletes, config.delete_stage()),
    ];
    for (rows, stage) in stages {
        let Some(rows) = rows else { continue };
        transaction.batch_execute(&stage.create).await?;
        if skipping {
            apply_rows_skipping(&transaction, &stage, rows, epoch, &mut skipped).await?;
        } else {
            apply_rows(&transaction, &stage, rows).await?;
        }
    }
    if !skipped.is_empty() {
        let keys: Vec<&str> = skipped.iter().map(|r| r.key.as_str()).collect();
        let reasons: Vec<&str> = skipped.iter().map(|r| r.reason.as_str()).collect();
        transaction
            .execute(
                &format!(
                    "INSERT INTO {ERRORS_TABLE} (sink, epoch, key, reason) \
                     SELECT $1, $2, k, r FROM unnest($3::text[], $4::text[]) AS s(k, r)"
                ),
                &[&config.sink_name, &(epoch as i64), &keys, &reasons],
            )
            .await?;
    }
    transaction
        .execute(
            &format!(
                "INSERT INTO {PROGRESS_TABLE} (sink, epoch, writer) VALUES ($1, $2, $3) \
                 ON CONFLICT (sink) DO UPDATE SET epoch = EXCLUDED.epoch, \
                 writer = EXCLUDED.writer, updated_at = now()"
            ),
            &[&config.sink_name, &(epoch as i64), &writer],
        )
        .await?;
    transaction.commit().await?;
    Ok(Written::Committed(skipped))
}

/// `work`'s outcome, or a reason to retry when Postgres has not answered
/// it within [`WRITE_TIMEOUT`].
async fn within_write_timeout<T>(
    what: &str,
    work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Retry> {
    match tokio::time::timeout(WRITE_TIMEOUT, work).await {
        Ok(result) => result.map_err(Retry::Error),
        Err(_) => Err(Retry::Because(format!(
            "Postgres did not answer {what} within {} s",
            WRITE_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether retrying can help: lost connections, a server starting or
/// stopping, resource shortage, serialization failures.
fn is_transient(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("58")
                || code == "40001"
                || code == "40P01"
        }
    }
}

/// Starts the sink task; it runs until the runtime drops the epoch channel.
pub fn spawn_sink(
    config: PostgresSinkConfig,
    mut epochs: mpsc::Receiver<SinkEpoch>,
    status: Arc<SinkStatus>,
) {
    tokio::spawn(async move {
        let writer = status.writer();
        let mut client: Option<Client> = None;
        while let Some(SinkEpoch { epoch, changes }) = epochs.recv().await {
            if status.has_failed() || status.is_dropped() {
                continue; // keep draining so the runtime never waits on us
            }
            let write = match coalesce(&config, &changes) {
                Ok(write) => write,
                Err(e) => {
                    status.fail(e.to_string());
                    continue;
                }
            };
            if write.upserts.is_none() && write.deletes.is_none() {
                status.committed(epoch, 0);
                continue;
            }
            let mut backoff_ms = BACKOFF_START_MS;
            // Row by row only once the whole epoch was refused for a row.
            let mut skipping = false;
            status.writing();
            loop {
                if status.is_dropped() {
                    break;
                }
                // A peer that holds the connection and never answers (a
                // frozen server), writing or connecting, costs a retry, not
                // the sink.
                let result = match client.as_mut() {
                    Some(c) => {
                        let writing = write_epoch(c, &config, &writer, epoch, &write, skipping);
                        within_write_timeout("the epoch's transaction", writing).await
                    }
                    None => {
                        match within_write_timeout("the connection", connect_ready(&config)).await {
                            Ok(c) => {
                                client = Some(c);
                                continue;
                            }
                            Err(retry) => Err(retry),
                        }
                    }
                };
                let reason = match result {
                    Ok(Written::AlreadyRecorded) => {
                        status.committed(epoch, 0); // committed before a restart
                        break;
                    }
                    Ok(Written::Committed(skipped)) => {
                        let written = write.rows().saturating_sub(skipped.len() as u64);
                        status.committed_skipping(epoch, written, skipped);
                        break;
                    }
                    Ok(Written::ForeignWriter(other)) => {
                        status.fail(format!(
                            "another sink named {} writes into this database ({PROGRESS_TABLE} \
                             shows writer {other}, this sink is {writer}): another eddy, or a sink \
                             of this name created again elsewhere; give one of them another name",
                            config.sink_name
                        ));
                        break;
                    }
                    Err(Retry::Because(reason)) => reason,
                    Err(Retry::Error(e)) if is_transient(&e) => {
                        pg_error("Postgres unavailable", &e)
                    }
                    Err(Retry::Error(e))
                        if is_row_error(&e) && config.on_error == OnError::Skip && !skipping =>
                    {
                        skipping = true;
                        continue;
                    }
                    Err(Retry::Error(e)) => {
                        let policy = if is_row_error(&e) {
                            " (on_error = 'fail')"
                        } else {
                            ""
                        };
                        status.fail(format!(
                            "{}{policy}",
                            pg_error(
                                &format!("writing epoch {epoch} to {}", config.qualified_table()),
                                &e,
                            )
                        ));
                        break;
                    }
                };
                status.retrying(Some(reason));
                client = None; // closing it rolls an open transaction back
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
            }
        }
        tracing::info!(sink = %config.sink_name, "postgres sink stopped");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn config(schema: SchemaRef) -> PostgresSinkConfig {
        let options = BTreeMap::from([
            ("connector".to_string(), "postgres".to_string()),
            ("url".to_string(), "postgres://u@localhost/db".to_string()),
            ("table".to_string(), "t".to_string()),
            ("primary_key".to_string(), "k".to_string()),
        ]);
        PostgresSinkConfig::from_options("s", &options, schema, None).unwrap()
    }

    fn changes(schema: &SchemaRef, rows: &[(i64, &str, i64)]) -> ChangeBatch {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        ChangeBatch::new(
            batch,
            Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>()),
        )
        .unwrap()
    }

    #[test]
    fn last_state_of_a_key_wins() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let config = config(schema.clone());
        let epoch = vec![
            // key 1 existed: updated twice -> one upsert with the last value
            changes(&schema, &[(1, "a", -1), (1, "b", 1)]),
            changes(
                &schema,
                &[(1, "b", -1), (1, "c", 1), (2, "x", 1), (3, "old", -1)],
            ),
            // key 2 inserted and deleted within the epoch -> nothing
            changes(&schema, &[(2, "x", -1)]),
        ];
        let write = coalesce(&config, &epoch).unwrap();
        let upserts = write.upserts.unwrap();
        assert_eq!(upserts.num_rows(), 1);
        assert_eq!(
            upserts
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0),
            "c"
        );
        let deletes = write.deletes.unwrap();
        assert_eq!(deletes.num_rows(), 1);
        assert_eq!(
            deletes
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            3
        );
    }
}
