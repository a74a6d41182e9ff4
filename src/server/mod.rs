//! The Postgres wire protocol server and the HTTP endpoint, all sessions
//! sharing one [`Engine`].
//!
//! - `connection.rs`: one connection from its first byte to its last
//!   (negotiation, TLS, the checked message stream, the message loop);
//! - `guard.rs`: every client message checked before it is decoded;
//! - `auth.rs`: trust or SCRAM-SHA-256 against the catalog's roles;
//! - `handler.rs`: pgwire's handlers, simple and extended query protocol;
//! - `tls.rs`: the certificate, for this protocol and for HTTP;
//! - [`http`], [`metrics`], [`web`]: `/metrics` and the web page.
//!
//! Limits ([`Access`]) keep any one client from exhausting the server:
//! a connection count (53300 beyond it; the accept loop backs off when the
//! process runs out of file descriptors, and says so once a minute), a
//! message size, an idle-session timeout, and the statement limits the
//! engine keeps (timeouts, cancel requests, memory).

mod auth;
mod connection;
mod guard;
mod handler;
pub mod http;
pub mod metrics;
mod params;
mod tls;
pub mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub use auth::AuthMode;
pub use tls::acceptor as tls_acceptor;

use crate::engine::interrupt::Interrupt;
use crate::engine::Engine;

/// Who may connect, and the limits every connection works within.
#[derive(Debug, Clone)]
pub struct Access {
    pub auth: AuthMode,
    /// Refuse clients that do not start TLS.
    pub require_tls: bool,
    /// Sessions at once (PostgreSQL's `max_connections`).
    pub max_connections: usize,
    /// The largest message a client may send.
    pub max_message_bytes: usize,
    /// End sessions idle this long (`None`: never).
    pub idle_session_timeout: Option<Duration>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            auth: AuthMode::Trust,
            require_tls: false,
            max_connections: 100,
            max_message_bytes: 64 << 20,
            idle_session_timeout: None,
        }
    }
}

/// What every connection shares.
struct ServerContext {
    handlers: handler::Handlers,
    tls: Option<TlsAcceptor>,
    access: Access,
    connections: Connections,
    /// Turns true when the server stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Binds `addr` (port 0 picks a free port) and returns the listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections on `listener` until `shutdown` turns true; each
/// open session ends then too (57P01).
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    access: Access,
    tls: Option<TlsAcceptor>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let context = Arc::new(ServerContext {
        handlers: handler::Handlers::new(engine, access.auth),
        tls,
        connections: Connections::new(access.max_connections),
        access,
        shutdown: shutdown.clone(),
    });
    let mut stopping = shutdown;
    let mut accept_errors = RateLimitedLog::new(Duration::from_secs(60));
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => return Ok(()),
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = Duration::ZERO;
                match context.connections.admit() {
                    Some(slot) => {
                        let context = context.clone();
                        tokio::spawn(async move {
                            connection::run(socket, peer, context).await;
                            drop(slot);
                        });
                    }
                    None => context.connections.refuse(socket),
                }
            }
            Err(e) => {
                // Out of file descriptors (or another passing failure): wait
                // before trying again rather than spin, and say so rarely.
                accept_errors.warn(&format!("cannot accept connections: {e}"));
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Logs a repeated warning at most once per interval, with how many times
/// it happened since.
struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, message: &str) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(repeated = self.suppressed, "{message}");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// Sessions by process id: the cancel key each was given, and its
/// interrupt.
type CancelKeys = Arc<Mutex<HashMap<i32, (Vec<u8>, Weak<Interrupt>)>>>;

/// The open sessions: how many (within the limit), and by process id, to
/// find the one a cancel request names.
struct Connections {
    max: usize,
    open: Arc<AtomicUsize>,
    /// Refusals being sent at once (a flood beyond it is just closed).
    refusing: Arc<AtomicUsize>,
    by_pid: CancelKeys,
}

/// Concurrent "too many connections" answers at most.
const MAX_REFUSALS_AT_ONCE: usize = 64;

/// A place among the open connections, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session findable by its cancel key until dropped.
struct Registration {
    pid: i32,
    by_pid: CancelKeys,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.by_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pid);
    }
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
            refusing: Arc::default(),
            by_pid: Arc::default(),
        }
    }

    /// A slot for a new connection, if there is room.
    fn admit(&self) -> Option<Slot> {
        let admitted = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        admitted.then(|| Slot(self.open.clone()))
    }

    /// Tells a connection over the limit so (after its first packet, as
    /// PostgreSQL does), unless too many are being told already.
    fn refuse(&self, mut socket: TcpStream) {
        if self.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSALS_AT_ONCE {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            return; // dropped: closed
        }
        let refusing = self.refusing.clone();
        tokio::spawn(async move {
            let answer = async {
                // An SSL request is declined; the startup packet after it
                // (or first) gets the error.
                let mut head = [0u8; 8];
                socket.read_exact(&mut head).await?;
                if head == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    socket.write_all(b"N").await?;
                }
                let refusal = connection::too_many_clients();
                socket.write_all(&refusal).await?;
                socket.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
            refusing.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Makes a session findable by the cancel key it was given.
    fn register(&self, pid: i32, secret: Vec<u8>, interrupt: Arc<Interrupt>) -> Registration {
        self.by_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, (secret, Arc::downgrade(&interrupt)));
        Registration {
            pid,
            by_pid: self.by_pid.clone(),
        }
    }

    /// A cancel request: interrupts the statement of the session with this
    /// key, if the key is right (else nothing, silently, as PostgreSQL).
    fn cancel(&self, pid: i32, secret: &[u8]) {
        let target = self
            .by_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .filter(|(key, _)| constant_time_eq(key, secret))
            .and_then(|(_, interrupt)| interrupt.upgrade());
        if let Some(interrupt) = target {
            interrupt.cancel();
        }
    }
}

/// Compares secrets without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}
