//! The real `eddy` binary in a process of its own (its own runtime with
//! the binary's thread stacks, its own signals), for tests that kill it,
//! restart it, attack it or read its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

pub struct EddyProcess {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

/// A port free now on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl EddyProcess {
    /// Starts eddy on a free port with its data in `dir`, logging to
    /// `dir/eddy.log`, with `args` added (the defaults: no HTTP unless
    /// `--http-listen` is among them, checkpoints every 100 ms unless
    /// `--checkpoint-interval` is) and `env`
    /// set.
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> EddyProcess {
        let port = free_port();
        Self::spawn_on(dir, &format!("127.0.0.1:{port}"), port, args, env)
    }

    /// Starts eddy listening on `listen` (reached at 127.0.0.1:`port`).
    pub fn spawn_on(
        dir: &Path,
        listen: &str,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> EddyProcess {
        let no_http = !args.contains(&"--http-listen");
        Self::spawn_with(dir, listen, port, args, env, no_http)
    }

    /// Starts eddy on a free port as a user would, with its default web
    /// address (127.0.0.1:6544) unless `args` say otherwise.
    pub fn spawn_default_http(dir: &Path, args: &[&str]) -> EddyProcess {
        let port = free_port();
        Self::spawn_with(dir, &format!("127.0.0.1:{port}"), port, args, &[], false)
    }

    fn spawn_with(
        dir: &Path,
        listen: &str,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
        no_http: bool,
    ) -> EddyProcess {
        std::fs::create_dir_all(dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("eddy.log"))
            .expect("log file");
        let log_too = log.try_clone().expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_eddy"));
        command
            .args(["--listen", listen])
            .args(["--data-dir", &dir.to_string_lossy()])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("EDDY_PASSWORD")
            .stdout(log_too)
            .stderr(log);
        for (name, value) in env {
            command.env(name, value);
        }
        if !args.contains(&"--checkpoint-interval") {
            command.args(["--checkpoint-interval", "100ms"]);
        }
        if no_http {
            command.arg("--no-http");
        }
        let child = command.spawn().expect("eddy binary starts");
        EddyProcess {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// What eddy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("eddy.log")).unwrap_or_default()
    }

    /// Waits until eddy answers on its port (after its recovery); panics
    /// with its log if it exits first.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A connection to a port nothing listens on yet can connect to
            // itself (Linux's simultaneous open, when the ephemeral port the
            // kernel picks is that one); that is not eddy.
            let connected = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await;
            if connected
                .is_ok_and(|stream| stream.local_addr().ok().map(|a| a.port()) != Some(self.port))
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("eddy exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "eddy did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of role `eddy` once the server answers.
    pub async fn connect(&mut self) -> Client {
        self.wait_ready().await;
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=eddy dbname=eddy", self.port),
            NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("connects: {e}\n{}", self.log()));
        tokio::spawn(connection);
        client
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL"); // std's kill is SIGKILL on unix
        let _ = self.child.wait();
    }

    /// SIGTERM: a clean stop with a final checkpoint.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "eddy did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A failing test (a panic) does not leave eddy running.
impl Drop for EddyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
