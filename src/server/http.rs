//! The HTTP endpoint (default 127.0.0.1:6544): `GET /metrics` serves
//! Prometheus text, `GET /` the web page ([`super::web`]) and
//! `GET /api/status` the JSON the page shows. A deliberately small
//! HTTP/1.1 server on tokio: one request per connection (`Connection:
//! close`), enough for Prometheus, curl and a browser; anything else is 404
//! (or 405 for methods other than GET/HEAD).
//!
//! Bounded like the Postgres side: a request's head must arrive within
//! [`REQUEST_TIMEOUT`] and be at most [`MAX_HEAD_BYTES`] (431 beyond), its
//! body is never read, and at most [`MAX_CONNECTIONS`] requests are served
//! at once. With a certificate it speaks HTTPS only; listening beyond
//! loopback it asks for a superuser's name and password (HTTP basic auth,
//! checked against the role's SCRAM verifier).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::engine::Engine;

/// A request's head must arrive within this long ...
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and be at most this big.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Requests served at once (more wait for a free one).
const MAX_CONNECTIONS: usize = 64;

/// How the endpoint is reached and who may read it.
#[derive(Clone)]
pub struct HttpAccess {
    /// Serve HTTPS with this certificate.
    pub tls: Option<TlsAcceptor>,
    /// Ask for a superuser's name and password.
    pub password: bool,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    access: HttpAccess,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let engine = engine.clone();
                    let access = access.clone();
                    tokio::spawn(async move {
                        let outcome = tokio::time::timeout(
                            REQUEST_TIMEOUT * 2,
                            serve_connection(&engine, &access, stream),
                        )
                        .await;
                        if let Ok(Err(e)) = outcome {
                            tracing::debug!(error = %e, "HTTP request");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn serve_connection(
    engine: &Engine,
    access: &HttpAccess,
    stream: TcpStream,
) -> std::io::Result<()> {
    match &access.tls {
        Some(acceptor) => {
            let stream = acceptor.accept(stream).await?;
            handle(engine, access, stream).await
        }
        None => handle(engine, access, stream).await,
    }
}

/// A request's head: its method, path and the credentials it carries.
struct Head {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// Reads up to the end of the head (a blank line); `None` when it does
/// not come in time or is too big (answered 408 / 431 by the caller).
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Result<Head, &'static str>> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find_head_end(&buf) {
                buf.truncate(end);
                return Ok(Ok(()));
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Ok(Err("431 Request Header Fields Too Large"));
            }
            let want = chunk.len().min(MAX_HEAD_BYTES - buf.len());
            let n = stream.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Ok(Err("400 Bad Request"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => Ok(Err("408 Request Timeout")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Err(status))) => Ok(Err(status)),
        Ok(Ok(Ok(()))) => {
            let text = String::from_utf8_lossy(&buf);
            let mut lines = text.lines();
            let mut request = lines.next().unwrap_or("").split_whitespace();
            let method = request.next().unwrap_or("").to_string();
            let path = request
                .next()
                .unwrap_or("")
                .split('?')
                .next()
                .unwrap_or("")
                .to_string();
            let authorization = lines.find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("authorization")
                    .then(|| value.trim().to_string())
            });
            Ok(Ok(Head {
                method,
                path,
                authorization,
            }))
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// Whether `authorization` (`Basic base64(name:password)`) names a
/// superuser and its password.
fn authorized(engine: &Engine, authorization: Option<&str>) -> bool {
    let Some(credentials) = authorization
        .and_then(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
        })
        .and_then(|b| BASE64.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return false;
    };
    let Some((name, password)) = credentials.split_once(':') else {
        return false;
    };
    let Some(role) = engine.catalog().role(name) else {
        return false;
    };
    let Some(verifier) = role.password.filter(|_| role.superuser && role.login) else {
        return false;
    };
    let salted = gen_salted_password(password, &verifier.salt, verifier.iterations as usize);
    match ScramSecret::verifier_from_salted_password(
        verifier.salt.clone(),
        salted,
        verifier.iterations as usize,
    ) {
        ScramSecret::Verifier { stored_key, .. } => {
            stored_key.len() == verifier.stored_key.len()
                && stored_key
                    .iter()
                    .zip(&verifier.stored_key)
                    .fold(0u8, |d, (a, b)| d | (a ^ b))
                    == 0
        }
        ScramSecret::SaltedPassword { .. } => false,
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    engine: &Engine,
    access: &HttpAccess,
    mut stream: S,
) -> std::io::Result<()> {
    let head = match read_head(&mut stream).await? {
        Ok(head) => head,
        Err(status) => {
            return respond(
                &mut stream,
                status,
                "text/plain; charset=utf-8",
                &[],
                "",
                true,
            )
            .await
        }
    };
    let (method, path) = (head.method.as_str(), head.path.as_str());
    if access.password && !authorized(engine, head.authorization.as_deref()) {
        return respond(
            &mut stream,
            "401 Unauthorized",
            "text/plain; charset=utf-8",
            &["WWW-Authenticate: Basic realm=\"eddy\", charset=\"UTF-8\""],
            "a superuser's name and password are needed\n",
            method != "HEAD",
        )
        .await;
    }
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => match engine.health().await {
            Ok(health) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                super::metrics::render(&health),
            ),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            ),
        },
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            super::web::PAGE.to_string(),
        ),
        ("GET" | "HEAD", "/api/status") => match engine.health().await {
            Ok(health) => (
                "200 OK",
                "application/json",
                super::web::status_json(&health, engine.monitor()).to_string(),
            ),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            ),
        },
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    respond(
        &mut stream,
        status,
        content_type,
        &[],
        &body,
        method != "HEAD",
    )
    .await
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    headers: &[&str],
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
