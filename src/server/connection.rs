//! One client connection, from its first byte to its last.
//!
//! eddy runs the connection itself rather than through pgwire's
//! `process_socket`, so that nothing a client sends can crash or exhaust
//! the server, and so that it can always answer:
//!
//! 1. Negotiation: the first packet is read and checked
//!    ([`guard::first_packet`]): an SSLRequest is answered `S` and TLS
//!    begins (or `N` without a certificate), a GSS request `N`, a cancel
//!    request fires the matching session's interrupt, an unsupported
//!    protocol version gets an error naming the supported ones. With
//!    `--require-tls`, a plaintext startup is refused (28000).
//! 2. A reader task reads the stream and passes on only whole messages
//!    that the [`guard::MessageGuard`] checked (length within
//!    `--max-message-size`, structure, UTF-8); it reads ahead a bounded
//!    amount, and seeing the client go (EOF) interrupts the statement
//!    running for it.
//! 3. The message loop hands each message to pgwire's `process_message`
//!    (authentication, simple and extended query protocol); a message the
//!    guard refused is answered with a FATAL ErrorResponse naming what was
//!    wrong, and the connection closes. An idle session past
//!    `idle_session_timeout` (when set) and a server shutting down end it
//!    the same way.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, DefaultClient, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::either::Either;

use super::guard::{self, FirstPacket, MessageGuard, Violation};
use super::handler::PreparedStatement;
use super::ServerContext;
use crate::engine::interrupt::Interrupt;

/// A client has this long to finish negotiation and authentication.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Checked messages the reader may hold for the session beyond the one
/// being handled, in bytes (a single larger message is still taken, alone).
const READ_AHEAD_BYTES: usize = 1 << 20;
/// Messages the reader may hold at once.
const READ_AHEAD_MESSAGES: usize = 64;

/// The stream under the protocol: TCP (`Left`), or TLS over it (`Right`).
pub(super) type Stream = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// A checked message, holding its share of the read-ahead budget until
/// the session has taken it.
type Checked = Result<(Bytes, Option<OwnedSemaphorePermit>), Violation>;

/// What pgwire reads: the checked messages, in order; and where it writes:
/// the stream.
struct Duplex {
    messages: mpsc::Receiver<Checked>,
    current: Bytes,
    /// Frees the current message's budget once it has been read.
    permit: Option<OwnedSemaphorePermit>,
    /// Set when the reader refused a message (the loop reports it).
    refused: Arc<StdMutex<Option<Violation>>>,
    write: WriteHalf<Stream>,
}

impl AsyncRead for Duplex {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.current.is_empty() {
            this.permit = None;
            match this.messages.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())), // end of stream
                Poll::Ready(Some(Ok((message, permit)))) => {
                    this.current = message;
                    this.permit = permit;
                }
                Poll::Ready(Some(Err(violation))) => {
                    *this.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(violation);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "message refused",
                    )));
                }
            }
        }
        let n = this.current.len().min(buf.remaining());
        buf.put_slice(&this.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}

type Socket = Framed<Duplex, PgWireMessageServerCodec<PreparedStatement>>;

/// How a connection's negotiation ended.
enum Negotiated {
    /// A session to run: the stream, whether it is TLS, the startup packet
    /// and whatever the client sent after it.
    Session {
        stream: Stream,
        secure: bool,
        startup: Vec<u8>,
        rest: BytesMut,
    },
    /// Nothing more to do (a cancel request, or the client left).
    Done,
}

/// Serves one accepted connection to its end.
pub(super) async fn run(socket: TcpStream, peer: SocketAddr, context: Arc<ServerContext>) {
    let _ = socket.set_nodelay(true);
    let negotiated = tokio::time::timeout(STARTUP_TIMEOUT, negotiate(socket, &context)).await;
    let (stream, secure, startup, rest) = match negotiated {
        Ok(Ok(Negotiated::Session {
            stream,
            secure,
            startup,
            rest,
        })) => (stream, secure, startup, rest),
        Ok(Ok(Negotiated::Done)) | Err(_) => return,
        Ok(Err((mut stream, error))) => {
            tracing::debug!(%peer, error = %error.message, "refused at startup");
            let _ = stream.write_all(&error_response_bytes(&error)).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    serve_session(stream, secure, startup, rest, peer, context).await;
}

/// An error to send before closing: SQLSTATE and message.
struct Refusal {
    sqlstate: &'static str,
    message: String,
}

impl From<Violation> for Refusal {
    fn from(v: Violation) -> Self {
        Self {
            sqlstate: v.sqlstate(),
            message: v.to_string(),
        }
    }
}

/// Reads the first packet(s): SSL/GSS negotiation, a cancel request or the
/// startup packet.
async fn negotiate(
    socket: TcpStream,
    context: &ServerContext,
) -> Result<Negotiated, (Stream, Refusal)> {
    let mut stream: Stream = Either::Left(socket);
    let mut secure = false;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let (first, used) = loop {
            match guard::first_packet(&buf) {
                Ok(Some(found)) => break found,
                Ok(None) => {}
                Err(v) => return Err((stream, v.into())),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(Negotiated::Done),
                Ok(_) => {}
            }
        };
        let _ = buf.split_to(used);
        match first {
            FirstPacket::SslRequest if secure => {
                return Err((
                    stream,
                    Violation::Malformed("an SSL request inside TLS".into()).into(),
                ))
            }
            FirstPacket::SslRequest => match (&context.tls, stream) {
                (Some(acceptor), Either::Left(socket)) if buf.is_empty() => {
                    let mut socket = socket;
                    if socket.write_all(b"S").await.is_err() {
                        return Ok(Negotiated::Done);
                    }
                    match acceptor.accept(socket).await {
                        Ok(tls) => {
                            stream = Either::Right(Box::new(tls));
                            secure = true;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return Ok(Negotiated::Done);
                        }
                    }
                }
                (_, mut plain) => {
                    // No certificate (or bytes pipelined after the request,
                    // which TLS would not cover): plaintext goes on.
                    if plain.write_all(b"N").await.is_err() {
                        return Ok(Negotiated::Done);
                    }
                    stream = plain;
                }
            },
            FirstPacket::GssEncRequest => {
                if stream.write_all(b"N").await.is_err() {
                    return Ok(Negotiated::Done);
                }
            }
            FirstPacket::Cancel { pid, secret } => {
                context.connections.cancel(pid, &secret);
                return Ok(Negotiated::Done);
            }
            FirstPacket::Startup { packet } => {
                if context.access.require_tls && !secure {
                    return Err((
                        stream,
                        Refusal {
                            sqlstate: "28000",
                            message: "this server requires TLS: connect with sslmode=require \
                                      (or verify-full)"
                                .into(),
                        },
                    ));
                }
                return Ok(Negotiated::Session {
                    stream,
                    secure,
                    startup: packet,
                    rest: buf,
                });
            }
        }
    }
}

/// A FATAL ErrorResponse as bytes (sent where no pgwire socket exists yet).
fn error_response_bytes(refusal: &Refusal) -> Vec<u8> {
    let mut info = ErrorInfo::new(
        "FATAL".into(),
        refusal.sqlstate.into(),
        refusal.message.clone(),
    );
    info.severity = "FATAL".into();
    let mut out = BytesMut::new();
    let _ = PgWireBackendMessage::ErrorResponse(ErrorResponse::from(info)).encode(&mut out);
    out.to_vec()
}

/// Reads the stream, checks each message and passes the good ones on; the
/// first bad one is passed on as its violation, and reading stops. Seeing
/// the client go interrupts its running statement.
async fn read_messages(
    mut read: ReadHalf<Stream>,
    mut buf: BytesMut,
    mut guard: MessageGuard,
    budget: Arc<Semaphore>,
    out: mpsc::Sender<Checked>,
    interrupt: Arc<Interrupt>,
) {
    loop {
        loop {
            match guard.next(&buf) {
                Ok(Some(length)) => {
                    let message = buf.split_to(length).freeze();
                    let share = length.min(READ_AHEAD_BYTES) as u32;
                    let Ok(permit) = budget.clone().acquire_many_owned(share).await else {
                        return;
                    };
                    if out.send(Ok((message, Some(permit)))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(violation) => {
                    let _ = out.send(Err(violation)).await;
                    return;
                }
            }
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                interrupt.disconnect();
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Runs a session after negotiation: authentication, then statements.
async fn serve_session(
    stream: Stream,
    secure: bool,
    startup: Vec<u8>,
    rest: BytesMut,
    peer: SocketAddr,
    context: Arc<ServerContext>,
) {
    let (read, write) = tokio::io::split(stream);
    let interrupt = Arc::new(Interrupt::default());
    let (sender, receiver) = mpsc::channel::<Checked>(READ_AHEAD_MESSAGES);
    // The startup packet goes first, as it came.
    if sender.try_send(Ok((Bytes::from(startup), None))).is_err() {
        return;
    }
    let budget = Arc::new(Semaphore::new(READ_AHEAD_BYTES));
    let guard = MessageGuard::new(
        context.access.max_message_bytes,
        context.access.auth.is_password(),
    );
    let reader = tokio::spawn(read_messages(
        read,
        rest,
        guard,
        budget,
        sender,
        interrupt.clone(),
    ));
    let refused = Arc::new(StdMutex::new(None));
    let duplex = Duplex {
        messages: receiver,
        current: Bytes::new(),
        permit: None,
        refused: refused.clone(),
        write,
    };
    let mut socket: Socket = Framed::new(
        duplex,
        PgWireMessageServerCodec::new(DefaultClient::new(peer, secure)),
    );
    socket.set_state(PgWireConnectionState::AwaitingStartup);
    socket.session_extensions().insert(interrupt.clone());

    let outcome = message_loop(&mut socket, &context, &interrupt, &refused).await;
    if let Some(refusal) = outcome {
        let mut info = ErrorInfo::new("FATAL".into(), refusal.sqlstate.into(), refusal.message);
        info.severity = "FATAL".into();
        let _ = socket
            .send(PgWireBackendMessage::ErrorResponse(info.into()))
            .await;
    }
    let _ = socket.close().await;
    interrupt.disconnect();
    reader.abort();
}

/// Handles messages until the session ends; returns the FATAL error to
/// send, if it ends with one.
async fn message_loop(
    socket: &mut Socket,
    context: &Arc<ServerContext>,
    interrupt: &Arc<Interrupt>,
    refused: &Arc<StdMutex<Option<Violation>>>,
) -> Option<Refusal> {
    let handlers = &context.handlers;
    let startup_handler = handlers.startup.clone();
    let simple = handlers.handler.clone();
    let extended = handlers.handler.clone();
    let copy = Arc::new(pgwire::api::NoopHandler);
    let cancel = Arc::new(pgwire::api::NoopHandler);
    let startup_deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut shutdown = context.shutdown.clone();
    let mut registration = None;
    loop {
        let authenticating = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let idle_limit = (!authenticating
            && matches!(socket.state(), PgWireConnectionState::ReadyForQuery))
        .then_some(context.access.idle_session_timeout)
        .flatten();
        let idle = async {
            match (authenticating, idle_limit) {
                (true, _) => tokio::time::sleep_until(startup_deadline).await,
                (false, Some(limit)) => tokio::time::sleep(limit).await,
                (false, None) => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            message = socket.next() => message,
            _ = idle => {
                return (!authenticating).then(|| Refusal {
                    sqlstate: "57P05",
                    message: "terminating connection due to idle-session timeout".into(),
                });
            }
            _ = shutdown.wait_for(|stopping| *stopping) => {
                return Some(Refusal {
                    sqlstate: "57P01",
                    message: "terminating connection because the server is shutting down".into(),
                });
            }
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(_)) => {
                return refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .map(Refusal::from);
            }
            None => return None,
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return None;
        }
        let is_extended = message.is_extended_query();
        let result = process_message(
            message,
            socket,
            startup_handler.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(error) = result {
            let error = with_startup_user(error, socket);
            let fatal = error.is_fatal();
            if let PgWireError::IoError(_) = error {
                return None;
            }
            if process_error(socket, error, is_extended).await.is_err() || fatal {
                return None;
            }
        }
        if registration.is_none() && matches!(socket.state(), PgWireConnectionState::ReadyForQuery)
        {
            // Authenticated: cancel requests may now find this session.
            let (pid, secret) = socket.pid_and_secret_key();
            registration = Some(context.connections.register(
                pid,
                secret.to_bytes().to_vec(),
                interrupt.clone(),
            ));
        }
    }
}

/// pgwire names the user of the SCRAM exchange in a failed login, which
/// libpq leaves empty (PostgreSQL too ignores it): name the startup user,
/// in PostgreSQL's words.
fn with_startup_user(error: PgWireError, socket: &Socket) -> PgWireError {
    match error {
        PgWireError::InvalidPassword(_) => {
            let user = socket
                .metadata()
                .get(pgwire::api::METADATA_USER)
                .cloned()
                .unwrap_or_default();
            let mut info = ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            );
            info.severity = "FATAL".into();
            PgWireError::UserError(Box::new(info))
        }
        other => other,
    }
}

/// The FATAL ErrorResponse for a connection over `max_connections`.
pub(super) fn too_many_clients() -> Vec<u8> {
    error_response_bytes(&Refusal {
        sqlstate: "53300",
        message: "sorry, too many clients already".into(),
    })
}
