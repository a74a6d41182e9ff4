//! The pgwire handlers: the simple and extended query protocols over one
//! shared [`Engine`], each connection with its own [`Session`].
//!
//! A failing statement sends an ErrorResponse with the statement's SQLSTATE
//! and leaves the connection usable. Rows are sent as the query produces
//! them (never built whole), and a cancel request, a `statement_timeout`
//! or the client going away stop the query between batches.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use futures::{stream, Sink, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{
    Close, CloseComplete, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::PgWireBackendMessage;
use tokio::sync::Mutex;

use super::auth::{AuthMode, Startup};
use super::params;
use crate::common::pg_types::{pg_type, Cell};
use crate::engine::interrupt::{Interrupt, StatementGuard};
use crate::engine::{Description, Engine, Session, StatementResult};
use crate::error::EddyError;
use crate::sql::{parse_statement, split_statements, EddyStatement};

/// What pgwire's message processing calls on: authentication and both
/// query protocols.
pub(super) struct Handlers {
    pub(super) handler: Arc<EddyHandler>,
    pub(super) startup: Arc<Startup>,
}

impl Handlers {
    pub(super) fn new(engine: Arc<Engine>, auth: AuthMode) -> Self {
        let startup = Arc::new(Startup::new(auth, engine.catalog().clone()));
        Self {
            handler: Arc::new(EddyHandler {
                engine: engine.clone(),
                parser: Arc::new(EddyParser { engine }),
            }),
            startup,
        }
    }
}

pub(super) struct EddyHandler {
    engine: Arc<Engine>,
    parser: Arc<EddyParser>,
}

/// The connection's session: made on first use, for the role the client
/// authenticated as, with the connection's interrupt (see `connection.rs`).
fn session_of<C: ClientInfo>(client: &C) -> Arc<Mutex<Session>> {
    if let Some(session) = client.session_extensions().get::<Mutex<Session>>() {
        return session;
    }
    // Read outside `get_or_insert_with`: the extensions' lock is not
    // re-entrant.
    let interrupt = client
        .session_extensions()
        .get::<Arc<Interrupt>>()
        .map(|i| i.as_ref().clone())
        .unwrap_or_default();
    let user = client
        .metadata()
        .get(METADATA_USER)
        .cloned()
        .unwrap_or_default();
    client
        .session_extensions()
        .get_or_insert_with(|| Mutex::new(Session::new(user, interrupt)))
}

pub(super) fn to_pgwire(error: EddyError) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".into(), error.sqlstate().into(), error.to_string());
    info.detail = error.detail().map(str::to_string);
    info.hint = error.hint().map(str::to_string);
    if matches!(error, EddyError::Internal(_)) {
        tracing::error!(error = %error, "internal error");
    }
    PgWireError::UserError(Box::new(info))
}

fn field_infos(schema: &SchemaRef, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f),
                format.format_for(i),
            )
        })
        .collect()
}

/// Rows built whole, as one response.
fn rows_response(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(field_infos(schema, format));
    let mut encoder = DataRowEncoder::new(fields.clone());
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            for column in batch.columns() {
                encoder.encode_field(&Cell { array: column, row })?;
            }
            rows.push(Ok(encoder.take_row()));
        }
    }
    Ok(QueryResponse::new(fields, stream::iter(rows)))
}

fn into_response(result: StatementResult, format: &Format) -> PgWireResult<Response> {
    match result {
        StatementResult::Command(tag) => Ok(Response::Execution(Tag::new(&tag))),
        // The caller removed the statements from the connection (see
        // `forget_statements`).
        StatementResult::Deallocated { tag, .. } => Ok(Response::Execution(Tag::new(&tag))),
        StatementResult::TransactionStart(tag) => Ok(Response::TransactionStart(Tag::new(&tag))),
        StatementResult::TransactionEnd(tag) => Ok(Response::TransactionEnd(Tag::new(&tag))),
        StatementResult::Rows { schema, batches } => {
            Ok(Response::Query(rows_response(&schema, &batches, format)?))
        }
        StatementResult::Returned {
            tag,
            schema,
            batches,
        } => {
            let mut response = rows_response(&schema, &batches, format)?;
            // pgwire appends the number of rows sent, which RETURNING
            // makes the number of rows written: `INSERT 0 3` is sent as
            // `INSERT 0` and its 3 rows.
            let tag = tag.rsplit_once(' ').map_or(tag.as_str(), |(verb, _)| verb);
            response.set_command_tag(tag);
            Ok(Response::Query(response))
        }
        StatementResult::Stream {
            schema,
            stream,
            guard,
        } => {
            let fields = Arc::new(field_infos(&schema, format));
            Ok(Response::Query(QueryResponse::new(
                fields.clone(),
                rows_of(stream, guard, fields),
            )))
        }
        StatementResult::Backfilling { then, .. } | StatementResult::Noticed { then, .. } => {
            into_response(*then, format)
        }
        StatementResult::Subscription(_) => Err(to_pgwire(crate::internal!(
            "a SUBSCRIBE is streamed by the handler, not answered as one response"
        ))),
    }
}

/// A query's rows, encoded batch by batch as the client takes them; the
/// statement's guard (cancel, timeout, disconnection) is checked at every
/// batch, and the first error ends the rows.
fn rows_of(
    batches: datafusion::execution::SendableRecordBatchStream,
    guard: StatementGuard,
    fields: Arc<Vec<FieldInfo>>,
) -> impl futures::Stream<Item = PgWireResult<DataRow>> + Send {
    let next_batch = stream::unfold(Some((batches, guard)), |state| async move {
        let (mut batches, guard) = state?;
        let next = guard
            .run(async { batches.next().await.transpose().map_err(EddyError::from) })
            .await;
        match next {
            Ok(Some(batch)) => Some((Ok(batch), Some((batches, guard)))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    next_batch.flat_map(move |batch| {
        let rows: Vec<PgWireResult<DataRow>> = match batch {
            Ok(batch) => {
                let mut encoder = DataRowEncoder::new(fields.clone());
                let mut rows = Vec::with_capacity(batch.num_rows());
                for row in 0..batch.num_rows() {
                    let mut encoded = Ok(());
                    for column in batch.columns() {
                        encoded = encoder.encode_field(&Cell { array: column, row });
                        if encoded.is_err() {
                            break;
                        }
                    }
                    match encoded {
                        Ok(()) => rows.push(Ok(encoder.take_row())),
                        Err(e) => {
                            rows.push(Err(e));
                            break;
                        }
                    }
                }
                rows
            }
            Err(e) => vec![Err(to_pgwire(e))],
        };
        stream::iter(rows)
    })
}

/// DEALLOCATE / DISCARD ALL: the connection's prepared statements named
/// `statements` go.
fn forget_statements<C: ClientPortalStore>(client: &C, statements: &[String])
where
    C::PortalStore: PortalStore,
{
    for name in statements {
        client.portal_store().rm_statement(name);
    }
}

/// Sends the client a NOTICE per progress report of a backfill, until it
/// is done.
async fn report_backfill<C>(
    client: &mut C,
    mut watch: crate::engine::jobs::BackfillWatch,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    while let Some(report) = watch.next_report().await {
        send_notices(client, vec![report]).await?;
    }
    Ok(())
}

/// Sends the client each of `notices` as a NOTICE.
async fn send_notices<C>(client: &mut C, notices: Vec<String>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::SinkExt;
    for notice in notices {
        let notice = ErrorInfo::new("NOTICE".into(), "00000".into(), notice);
        client
            .send(PgWireBackendMessage::NoticeResponse(notice.into()))
            .await?;
    }
    Ok(())
}

/// Sends a SUBSCRIBE's rows to `client` as each epoch arrives, flushing
/// after each; returns the error that ended it (the client fell behind,
/// canceled it, or the view was dropped). A client that went away ends it
/// with an I/O error. Over the simple protocol the rows' description comes
/// first (`describe`); over the extended one the client had it from
/// Describe, in the formats its Bind asked for (`format`).
async fn stream_subscription<C>(
    client: &mut C,
    mut subscription: crate::engine::subscribe::Subscription,
    format: &Format,
    describe: bool,
) -> PgWireResult<ErrorInfo>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::SinkExt;
    if subscription.as_copy {
        return stream_subscription_as_copy(client, subscription).await;
    }
    let fields = field_infos(&subscription.schema, format);
    if describe {
        let description =
            pgwire::messages::data::RowDescription::new(fields.iter().map(Into::into).collect());
        client
            .send(PgWireBackendMessage::RowDescription(description))
            .await?;
    }
    let fields = Arc::new(fields);
    loop {
        match subscription.next_batch().await {
            Some(Ok(batch)) => {
                let mut encoder = DataRowEncoder::new(fields.clone());
                for row in 0..batch.num_rows() {
                    for column in batch.columns() {
                        encoder.encode_field(&Cell { array: column, row })?;
                    }
                    client
                        .feed(PgWireBackendMessage::DataRow(encoder.take_row()))
                        .await?;
                }
                client.flush().await?;
            }
            Some(Err(e)) => return Ok(subscription_end(e)),
            None => {
                return Ok(subscription_end(crate::error::EddyError::Shutdown(
                    "subscription ended".into(),
                )))
            }
        }
    }
}

/// The error a subscription ended with, as the client is told it.
fn subscription_end(error: crate::error::EddyError) -> ErrorInfo {
    match to_pgwire(error) {
        PgWireError::UserError(info) => *info,
        other => ErrorInfo::new("ERROR".into(), "XX000".into(), other.to_string()),
    }
}

/// `COPY (SUBSCRIBE ...) TO STDOUT`: a CopyOutResponse, then each row as
/// COPY text data (tab-separated, `\N` for NULL, backslash escapes),
/// flushed per epoch, until the subscription ends; returns the error that
/// ended it, as [`stream_subscription`] does.
async fn stream_subscription_as_copy<C>(
    client: &mut C,
    mut subscription: crate::engine::subscribe::Subscription,
) -> PgWireResult<ErrorInfo>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::SinkExt;
    use pgwire::messages::copy::{CopyData, CopyOutResponse};
    let columns = subscription.schema.fields().len();
    client
        .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
            0,
            columns as i16,
            vec![0; columns],
        )))
        .await?;
    loop {
        match subscription.next_batch().await {
            Some(Ok(batch)) => {
                for row in 0..batch.num_rows() {
                    let mut line = String::new();
                    for (i, column) in batch.columns().iter().enumerate() {
                        if i > 0 {
                            line.push('\t');
                        }
                        if column.is_null(row) {
                            line.push_str("\\N");
                            continue;
                        }
                        let text = crate::common::pg_types::text_value(column, row)
                            .map_err(PgWireError::ApiError)?;
                        copy_text_escape(&text, &mut line);
                    }
                    line.push('\n');
                    client
                        .feed(PgWireBackendMessage::CopyData(CopyData::new(line.into())))
                        .await?;
                }
                client.flush().await?;
            }
            Some(Err(e)) => return Ok(subscription_end(e)),
            None => {
                return Ok(subscription_end(crate::error::EddyError::Shutdown(
                    "subscription ended".into(),
                )))
            }
        }
    }
}

/// A value in COPY's text format: backslash, tab, newline and carriage
/// return escaped.
fn copy_text_escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for EddyHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client);
        let mut session = session.lock().await;
        let mut responses = Vec::new();
        for sql in split_statements(query) {
            let outcome = match parse_statement(sql) {
                Ok(statement) => {
                    self.engine
                        .execute_sql(&mut session, sql, statement, vec![])
                        .await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(StatementResult::Subscription(subscription)) => {
                    // Streamed straight to the client, flushed per epoch.
                    let info =
                        stream_subscription(client, subscription, &Format::UnifiedText, true)
                            .await?;
                    responses.push(Response::Error(Box::new(info)));
                    break;
                }
                Ok(StatementResult::Backfilling { watch, then }) => {
                    report_backfill(client, watch).await?;
                    responses.push(into_response(*then, &Format::UnifiedText)?);
                }
                Ok(StatementResult::Noticed { notices, then }) => {
                    send_notices(client, notices).await?;
                    responses.push(into_response(*then, &Format::UnifiedText)?);
                }
                Ok(StatementResult::Deallocated { statements, tag }) => {
                    forget_statements(client, &statements);
                    responses.push(Response::Execution(Tag::new(&tag)));
                }
                Ok(result) => responses.push(into_response(result, &Format::UnifiedText)?),
                Err(e) => {
                    // Like Postgres: the first error ends the query string.
                    let PgWireError::UserError(info) = to_pgwire(e) else {
                        unreachable!()
                    };
                    responses.push(Response::Error(info));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// A parsed statement with what it takes and returns.
#[derive(Debug, Clone)]
pub struct PreparedStatement {
    sql: String,
    statement: EddyStatement,
    description: Description,
}

pub(super) struct EddyParser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for EddyParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PreparedStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = split_statements(sql);
        let sql = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(to_pgwire(EddyError::Syntax(
                    "cannot insert multiple commands into a prepared statement".into(),
                )))
            }
        };
        let statement = parse_statement(sql).map_err(to_pgwire)?;
        let description = {
            let session = session_of(client);
            let session = session.lock().await;
            self.engine
                .describe(&session, &statement)
                .await
                .map_err(to_pgwire)?
        };
        Ok(Some(PreparedStatement {
            sql: sql.to_string(),
            statement,
            description,
        }))
    }

    fn get_parameter_types(&self, stmt: &PreparedStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .description
            .parameters
            .iter()
            .map(|t| match t {
                Some(data_type) => pg_type(&Field::new("", data_type.clone(), true)),
                None => Type::TEXT,
            })
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &PreparedStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.description.result {
            Some(schema) => field_infos(schema, format.unwrap_or(&Format::UnifiedText)),
            None => vec![],
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for EddyHandler {
    type Statement = PreparedStatement;
    type QueryParser = EddyParser;

    fn query_parser(&self) -> Arc<EddyParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PreparedStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stored = &portal.statement;
        let prepared = &stored.statement;
        let mut values = Vec::with_capacity(portal.parameter_len());
        for (i, raw) in portal.parameters.iter().enumerate() {
            let inferred: Option<&DataType> = prepared
                .description
                .parameters
                .get(i)
                .and_then(|t| t.as_ref());
            let declared = stored.parameter_types.get(i).cloned().flatten();
            let wire_type = declared.unwrap_or_else(|| match inferred {
                Some(t) => pg_type(&Field::new("", t.clone(), true)),
                None => Type::TEXT,
            });
            let value = params::decode_parameter(
                raw.as_ref(),
                &wire_type,
                portal.parameter_format.format_for(i),
                inferred,
            )
            .map_err(to_pgwire)?;
            values.push(value);
        }
        let session = session_of(client);
        let mut session = session.lock().await;
        let result = self
            .engine
            .execute_sql(
                &mut session,
                &prepared.sql,
                prepared.statement.clone(),
                values,
            )
            .await
            .map_err(to_pgwire)?;
        let result = match result {
            StatementResult::Subscription(subscription) => {
                // Streamed straight to the client, flushed per epoch (a
                // QueryResponse's rows would wait in the connection's
                // buffer), until it cancels or goes away.
                let format = &portal.result_column_format;
                let info = stream_subscription(client, subscription, format, false).await?;
                return Ok(Response::Error(Box::new(info)));
            }
            StatementResult::Backfilling { watch, then } => {
                report_backfill(client, watch).await?;
                *then
            }
            StatementResult::Noticed { notices, then } => {
                send_notices(client, notices).await?;
                *then
            }
            StatementResult::Deallocated { statements, tag } => {
                forget_statements(client, &statements);
                StatementResult::Command(tag)
            }
            result => result,
        };
        into_response(result, &portal.result_column_format)
    }

    /// Parse, as pgwire does it, noting a named statement's name in the
    /// session for DEALLOCATE.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let named = message.name.clone().filter(|n| !n.is_empty());
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client
                .portal_store()
                .put_empty_statement(named.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME)),
        }
        if let Some(name) = &named {
            session_of(client).lock().await.prepared(name);
        }
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// Close, as pgwire does it; a closed statement is no longer one
    /// DEALLOCATE can name.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                session_of(client).lock().await.deallocated(name);
            }
            TARGET_TYPE_BYTE_PORTAL => client.portal_store().rm_portal(name),
            _ => {}
        }
        client
            .send(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
            .await?;
        Ok(())
    }
}
