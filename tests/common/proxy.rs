//! A TCP proxy on loopback that can freeze: connections stay open and
//! nothing is forwarded (a SIGSTOPped server, a hung network path), to put
//! a sink's target out of reach without closing anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback proxy to `target` that forwards until frozen.
pub struct FreezableProxy {
    pub port: u16,
    frozen: Arc<AtomicBool>,
}

impl FreezableProxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, flag.clone()));
                    pump(server_read, client_write, flag).await;
                });
            }
        });
        Self { port, frozen }
    }

    /// A proxy to the test PostgreSQL, and its URL through the proxy.
    pub async fn to_test_postgres() -> (Self, String) {
        let target = super::postgres_url();
        let host_port = target
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("host:port in the test Postgres URL")
            .to_string();
        let proxy = Self::start(host_port.clone()).await;
        let url = target.replacen(&host_port, &format!("127.0.0.1:{}", proxy.port), 1);
        (proxy, url)
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding the bytes while the flag is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
