//! The `eddy` command: `eddy` (or `eddy serve`) runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The web page's and /metrics' address when `--http-listen` is not given.
const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6544);

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
    /// Measure this build.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Nexmark queries as materialized views over N events, each in a
    /// process of its own: events per CPU-second beside DataFusion's batch
    /// answer of the same query and Flink's figures, peak RSS, state bytes.
    Nexmark(NexmarkArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct NexmarkArgs {
    /// Queries to run, e.g. `q5` or `q0,q5,q7` (default: q0 to q22).
    #[arg(long, value_delimiter = ',')]
    query: Vec<String>,
    /// Events per query run (of all three kinds).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Where the events come from: `generator` (in process) or `kafka`
    /// (written to fresh topics first, then read back as JSON).
    #[arg(long, default_value = "generator")]
    source: String,
    /// The Kafka broker for `--source kafka`.
    #[arg(long, env = "EDDY_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// Where the JSON report goes (default: nexmark-<source>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip DataFusion's batch answer (it holds every event in memory;
    /// for long runs).
    #[arg(long)]
    no_baseline: bool,
    /// Checkpoints during the run, e.g. `1s` (default: none until the
    /// FLUSH after it, like Flink's published runs). Without them operators
    /// keep every key changed since the last checkpoint: measure long runs'
    /// memory with them on.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    checkpoint_interval: std::time::Duration,
    /// Worker counts to run each query with, e.g. `1,2` for the scaling
    /// from one to two (threads each keyed operator is split across).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    workers: Vec<usize>,
    /// The memory limit for operators' state in each query's process, e.g.
    /// `1GiB` (default: none); state beyond it spills to disk.
    #[arg(long, value_parser = parse_size)]
    memory_limit: Option<usize>,
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Address for the Postgres wire protocol.
    #[arg(long, env = "EDDY_LISTEN", default_value = "127.0.0.1:6543")]
    listen: SocketAddr,
    /// Directory for eddy's data.
    #[arg(long, env = "EDDY_DATA_DIR", default_value = "./eddy-data")]
    data_dir: PathBuf,
    /// Address for the HTTP endpoint (web page at /, Prometheus metrics at
    /// /metrics). Default 127.0.0.1:6544; if that default is taken eddy runs
    /// without the endpoint (an address given here must be free).
    #[arg(long, env = "EDDY_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Do not serve the HTTP endpoint.
    #[arg(long)]
    no_http: bool,
    /// Where checkpoints go: a directory, or an s3://, gs://, az:// URL
    /// (builds with `--features cloud`). Default: <data-dir>/checkpoints.
    #[arg(long, env = "EDDY_CHECKPOINT_URL")]
    checkpoint_url: Option<String>,
    /// Time between checkpoints, e.g. `1s`, `500ms`, `1m` (`0`: only on
    /// DDL, FLUSH, CHECKPOINT and shutdown). Also `SET checkpoint_interval`.
    #[arg(long, env = "EDDY_CHECKPOINT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    checkpoint_interval: std::time::Duration,
    /// Start from the named snapshot (taken with `CREATE SNAPSHOT name`)
    /// instead of the latest checkpoint.
    #[arg(long)]
    from_snapshot: Option<String>,
    /// Threads each keyed operator (GROUP BY aggregate, equi-join) of a view
    /// is split across, by key hash (default 1).
    #[arg(long, env = "EDDY_WORKERS")]
    workers: Option<usize>,
    /// A directory whose files connector options may name (Kafka TLS and
    /// keytab files, Avro schema files); repeat it (or separate with
    /// commas) for several. Default: none, no option may name a file.
    #[arg(long = "allow-path", env = "EDDY_ALLOW_PATH", value_delimiter = ',')]
    allow_path: Vec<PathBuf>,
    /// The hosts sources and sinks may connect to, comma-separated: names,
    /// `*.suffix`, addresses or CIDR blocks, each with an optional `:port`
    /// (e.g. `kafka.internal:9092,10.0.0.0/8`). Default: any host.
    #[arg(
        long = "allow-connect",
        env = "EDDY_ALLOW_CONNECT",
        value_delimiter = ','
    )]
    allow_connect: Vec<String>,
    /// How clients authenticate: `trust` (any client naming a role that may
    /// log in) or `scram` (SCRAM-SHA-256 passwords; `password` says the
    /// same). Default: trust when listening on loopback only, scram otherwise.
    #[arg(long, env = "EDDY_AUTH")]
    auth: Option<eddy::server::AuthMode>,
    /// Accept --auth trust on an address beyond loopback.
    #[arg(long)]
    insecure: bool,
    /// A file holding the superuser eddy's password (its first line); also
    /// EDDY_PASSWORD. Set at every start.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// A PEM certificate chain: TLS for the Postgres protocol and HTTP.
    #[arg(long, env = "EDDY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, env = "EDDY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS.
    #[arg(long)]
    require_tls: bool,
    /// Sessions at once (more are refused with 53300).
    #[arg(long, env = "EDDY_MAX_CONNECTIONS", default_value_t = 100)]
    max_connections: usize,
    /// The largest message a client may send, e.g. `64MB`, `1GB`.
    #[arg(long, env = "EDDY_MAX_MESSAGE_SIZE", default_value = "64MB", value_parser = parse_size)]
    max_message_size: usize,
    /// End sessions idle this long, e.g. `10m` (default 0: never).
    #[arg(long, env = "EDDY_IDLE_SESSION_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    idle_session_timeout: std::time::Duration,
    /// The memory eddy aims to stay within, e.g. `1GiB` (default: half of
    /// the machine's memory). State holds at most half of it; the coldest
    /// state beyond that moves to disk under the data directory.
    #[arg(long, env = "EDDY_MEMORY_LIMIT", value_parser = parse_size)]
    memory_limit: Option<usize>,
    /// The memory all ad hoc queries share, e.g. `2GB` (a query beyond it
    /// spills to disk where it can, else fails with 53200; default: a
    /// quarter of the memory limit).
    #[arg(long, env = "EDDY_QUERY_MEMORY_LIMIT", value_parser = parse_size)]
    query_memory_limit: Option<usize>,
    /// How much a sink may keep waiting for a target that takes nothing,
    /// e.g. `512MB`; beyond it the sink fails (DROP and CREATE it again).
    #[arg(long, env = "EDDY_SINK_BACKLOG_LIMIT", default_value = "512MB", value_parser = parse_size)]
    sink_backlog_limit: usize,
}

/// `64MB`, `512KB`, `1GB`, `1048576` (bytes).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim().to_ascii_uppercase();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("expected a size such as 64MB, got {text:?}"))?;
    let scale = match unit.trim().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}: use KB, MB or GB")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("size {text} is too large"))
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 1s or 500ms, got {text:?}"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1e3,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        other => return Err(format!("unknown duration unit {other:?}: use ms, s or m")),
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn main() -> std::process::ExitCode {
    // A child of `eddy bench nexmark` measuring one query.
    if eddy::bench::nexmark::run_child_if_asked() {
        return std::process::ExitCode::SUCCESS;
    }
    // Colours only on a terminal: a log written to a file (or a journal)
    // gets plain text, not escape codes.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(colours)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
        Some(Command::Bench(BenchCommand::Nexmark(args))) => return bench_nexmark(args),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(eddy::common::DEEP_STACK_BYTES)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "eddy stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench_nexmark(args: NexmarkArgs) -> std::process::ExitCode {
    use eddy::bench::nexmark::{Options, Source};
    let source = match args.source.as_str() {
        "generator" => Source::Generator,
        "kafka" => Source::Kafka {
            bootstrap: args.kafka_bootstrap,
        },
        other => {
            eprintln!("unknown --source {other}: generator or kafka");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut options = Options::all(args.events);
    if !args.query.is_empty() {
        options.queries = args.query;
    }
    options.json_path = args
        .json
        .unwrap_or_else(|| PathBuf::from(format!("nexmark-{}.json", args.source)));
    options.source = source;
    options.baseline = !args.no_baseline;
    options.checkpoint_interval = args.checkpoint_interval;
    options.workers = args.workers;
    options.memory_limit = args.memory_limit;
    match eddy::bench::nexmark::run(&options) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy bench nexmark: {e}");
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
    // The data (checkpoints with their catalog, the secrets key) is the
    // server's alone.
    private_directory(&args.data_dir)?;
    if let Some(url) = args
        .checkpoint_url
        .as_deref()
        .filter(|u| !u.contains("://"))
    {
        private_directory(std::path::Path::new(url))?;
    }
    let checkpoints = args.checkpoint_url.clone().unwrap_or_else(|| {
        args.data_dir
            .join("checkpoints")
            .to_string_lossy()
            .into_owned()
    });
    let mut options = eddy::ServerOptions::new(args.listen);
    options.http_listen = (!args.no_http).then(|| args.http_listen.unwrap_or(DEFAULT_HTTP_LISTEN));
    options.http_listen_optional = args.http_listen.is_none();
    options.checkpoint_location = Some(checkpoints.clone());
    options.checkpoint_interval = args.checkpoint_interval;
    options.from_snapshot = args.from_snapshot.clone();
    if let Some(workers) = args.workers {
        options.workers = workers;
    }
    let allow_connect = if args.allow_connect.is_empty() {
        None
    } else {
        Some(
            args.allow_connect
                .iter()
                .map(|entry| entry.parse())
                .collect::<eddy::Result<Vec<_>>>()?,
        )
    };
    options.connector_policy =
        eddy::connectors::policy::ConnectorPolicy::new(&args.allow_path, allow_connect)?;
    options.auth = args.auth;
    options.insecure = args.insecure;
    options.superuser_password = superuser_password(&args)?;
    options.tls = args.tls_cert.clone().zip(args.tls_key.clone());
    options.access.require_tls = args.require_tls;
    options.access.max_connections = args.max_connections.max(1);
    options.access.max_message_bytes = args.max_message_size.max(1024);
    options.access.idle_session_timeout =
        (!args.idle_session_timeout.is_zero()).then_some(args.idle_session_timeout);
    options.secrets_key_file = Some(args.data_dir.join("secrets.key"));
    options.wal_dir = Some(args.data_dir.join("wal"));
    let (memory_limit, limit_source) = match args.memory_limit {
        Some(bytes) => (bytes, "--memory-limit"),
        None => (
            eddy::state::memory::default_limit_bytes() as usize,
            "half of the machine's memory; set it with --memory-limit",
        ),
    };
    options.memory_limit_bytes = Some(memory_limit);
    options.spill_dir = Some(args.data_dir.join("spill"));
    let query_memory_limit = args.query_memory_limit.unwrap_or(memory_limit / 4);
    options.query_memory_bytes = query_memory_limit;
    options.sink_backlog_limit_bytes = args.sink_backlog_limit;
    let server = eddy::Server::start_with_options(options).await?;
    if let Some(http) = server.http_addr {
        tracing::info!("web page at http://{http}/, Prometheus metrics at http://{http}/metrics");
    }
    tracing::info!(
        listen = %server.local_addr,
        data_dir = %args.data_dir.display(),
        "eddy is ready: psql -h {} -p {} -U eddy",
        server.local_addr.ip(),
        server.local_addr.port()
    );
    tracing::info!(
        checkpoints = %checkpoints,
        interval_ms = args.checkpoint_interval.as_millis() as u64,
        "checkpointing"
    );
    tracing::info!(
        limit_mb = memory_limit >> 20,
        state_mb = eddy::state::memory::state_share(memory_limit) >> 20,
        queries_mb = query_memory_limit >> 20,
        "memory limit ({limit_source}): state beyond its share spills to {}",
        args.data_dir.join("spill").display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

/// Makes `dir` (if needed) and lets only eddy's user into it (0700).
fn private_directory(dir: &std::path::Path) -> eddy::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| {
        eddy::EddyError::InvalidParameter(format!("directory {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)
}

/// The superuser's password: `--password-file`'s first line, else
/// `EDDY_PASSWORD`.
fn superuser_password(args: &ServeArgs) -> eddy::Result<Option<String>> {
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            eddy::EddyError::InvalidParameter(format!("--password-file {}: {e}", path.display()))
        })?;
        let password = text.lines().next().unwrap_or("").to_string();
        if password.is_empty() {
            return Err(eddy::EddyError::InvalidParameter(format!(
                "--password-file {}: the first line is empty",
                path.display()
            )));
        }
        return Ok(Some(password));
    }
    Ok(std::env::var("EDDY_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty()))
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
