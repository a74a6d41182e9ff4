//! The `eddy` command: `eddy` (or `eddy serve`) runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "eddy",
    version,
    about = "A streaming SQL engine for materialized views"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Address for the Postgres wire protocol.
    #[arg(long, env = "EDDY_LISTEN", default_value = "127.0.0.1:6543")]
    listen: SocketAddr,
    /// Directory for eddy's data.
    #[arg(long, env = "EDDY_DATA_DIR", default_value = "./eddy-data")]
    data_dir: PathBuf,
    /// Address for the HTTP endpoint (Prometheus metrics at /metrics).
    #[arg(long, env = "EDDY_HTTP_LISTEN", default_value = "127.0.0.1:6544")]
    http_listen: SocketAddr,
    /// Do not serve the HTTP endpoint.
    #[arg(long)]
    no_http: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    match serve(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "eddy stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> eddy::Result<()> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        eddy::EddyError::InvalidParameter(format!(
            "cannot create data dir {}: {e}",
            args.data_dir.display()
        ))
    })?;
    let http = (!args.no_http).then_some(args.http_listen);
    let server = eddy::Server::start_with(args.listen, http).await?;
    if let Some(http) = server.http_addr {
        tracing::info!("metrics at http://{http}/metrics");
    }
    tracing::info!(
        listen = %server.local_addr,
        data_dir = %args.data_dir.display(),
        "eddy is ready: psql -h {} -p {} -U eddy",
        server.local_addr.ip(),
        server.local_addr.port()
    );
    tracing::warn!(
        "state is kept in memory only (checkpoints are not implemented yet): \
         tables and materialized views are lost when eddy stops"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
