//! The HTTP endpoint (default 127.0.0.1:6544): `GET /metrics` serves
//! Prometheus text, `GET /` the web page ([`super::web`]) and
//! `GET /api/status` the JSON the page shows. A deliberately small HTTP/1.1 server on tokio: one
//! request per connection (`Connection: close`), enough for Prometheus and
//! curl; anything else is 404 (or 405 for methods other than GET/HEAD).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::Engine;

/// A request must arrive within this long, and its head be at most this big.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 16 * 1024;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` completes.
pub async fn serve(engine: Arc<Engine>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(&engine, stream).await {
                            tracing::debug!(error = %e, "HTTP request");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "HTTP accept"),
            },
        }
    }
}

async fn handle(engine: &Engine, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    let head = async {
        reader.read_line(&mut request_line).await?;
        // Skip the headers, up to the blank line.
        let mut size = request_line.len();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).await?;
            size += n;
            if n == 0 || line == "\r\n" || line == "\n" || size > MAX_HEAD_BYTES {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, head).await.is_err() {
        return Ok(());
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
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
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
