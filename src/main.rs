//! The `tern` command: parse arguments, set up logging and the runtime, run the
//! broker until SIGINT/SIGTERM. No broker logic lives here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tern::broker::Broker;
use tern::config::{Config, Overrides};

#[derive(Parser, Debug)]
#[command(
    name = "tern",
    version,
    about = "An MQTT 3.1.1 / 5.0 broker for edge gateways"
)]
struct Cli {
    /// TOML configuration file (see configs/tern.toml). Without one, Tern listens on
    /// 127.0.0.1:1883 with built-in defaults.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Listen on ADDR (plain TCP) instead of the configured listeners. Repeatable.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Data directory of the durable store (overrides [storage] dir).
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Log filter, e.g. "info", "debug", "tern=debug,warn". Overrides [log] level.
    #[arg(long = "log", value_name = "LEVEL")]
    log: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a configuration file and print every error with its key.
    /// With --against-running, also ask the running broker (its admin
    /// endpoint) what a SIGHUP would do with the file: each change, applied
    /// live or taking a restart. Exit status: 0 valid (and, against the running
    /// broker, every change applies live), 1 invalid, 2 the running broker
    /// could not be asked, 3 valid but some changes take a restart. When the
    /// file changes [admin] bind or token, give the running ones with
    /// --admin / --token.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
        /// Compare with the running broker's configuration (its [admin]
        /// endpoint: from FILE unless given below).
        #[arg(long = "against-running")]
        against_running: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add a user to a Mosquitto-format password file or change their password
    /// (argon2id), or delete one with -D. The file is created if missing.
    Passwd {
        /// Delete USER instead.
        #[arg(short = 'D', long = "delete")]
        delete: bool,
        /// Read the password from the first line of standard input instead of
        /// asking twice on the terminal.
        #[arg(long = "stdin")]
        stdin: bool,
        /// The password file.
        file: PathBuf,
        /// The username.
        user: String,
    },
    /// Work queues of a running broker, through its admin endpoint ([admin]
    /// bind; the address and token come from -c FILE, or --admin / --token).
    Queue {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        op: QueueCmd,
    },
    /// A running broker's numbers, through its admin endpoint (as for
    /// `tern queue`).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clients of a running broker, through its admin endpoint.
    Clients {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        op: ClientsCmd,
    },
    /// Retained messages of a running broker, through its admin endpoint (as
    /// for `tern queue`).
    Retained {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        op: RetainedCmd,
    },
    /// Bridges of a running broker, through its admin endpoint (as for
    /// `tern queue`).
    Bridge {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        op: BridgeCmd,
    },
}

/// Where the admin endpoint of a running broker is, and how to reach it.
#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// The admin endpoint (default: [admin] bind of the config file, else
    /// 127.0.0.1:8080).
    #[arg(long = "admin", value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// The admin token (default: [admin] token of the config file).
    #[arg(long = "token", value_name = "TOKEN")]
    token: Option<String>,
    /// Use HTTPS, trusting the CA certificates in FILE (PEM). Default, when
    /// the config file sets [admin] tls: its certificate file, which works
    /// for a self-signed certificate or a file that holds the CA too.
    #[arg(long = "ca", value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ClientsCmd {
    /// Sessions in client id order: state, protocol, address, keep-alive,
    /// subscriptions, inflight, queued, user.
    List {
        /// Start after this client id (the last one of the previous page).
        #[arg(long = "after", value_name = "ID")]
        after: Option<String>,
        #[arg(long = "limit", default_value_t = 100)]
        limit: usize,
    },
    /// Close a client's connection (v5: DISCONNECT 0x98); its session stays.
    Kick { id: String },
}

#[derive(Subcommand, Debug)]
enum RetainedCmd {
    /// Retained messages in topic order (level by level): QoS, size, expiry
    /// left, the first 64 bytes (quoted text, or base64: when not UTF-8).
    List {
        /// Start after this topic (the last one of the previous page).
        #[arg(long = "after", value_name = "TOPIC")]
        after: Option<String>,
        #[arg(long = "limit", default_value_t = 100)]
        limit: usize,
        /// Only topics this MQTT filter matches (e.g. 'sensors/+/temp').
        #[arg(long = "filter", value_name = "FILTER")]
        filter: Option<String>,
        /// Include the $SYS tree.
        #[arg(long = "sys")]
        sys: bool,
    },
    /// Clear a topic's retained message, as an empty retained PUBLISH would
    /// (also on disk).
    Clear { topic: String },
}

#[derive(Subcommand, Debug)]
enum BridgeCmd {
    /// Every bridge: connected or not, buffered, forwarded, received, refused,
    /// dead-lettered, the last error; bridges a reload removed with their
    /// buffer kept.
    List,
    /// Drop what waits in a bridge's buffer (not what is in flight); a bridge
    /// a reload removed is forgotten with it.
    Purge { name: String },
}

#[derive(Subcommand, Debug)]
enum QueueCmd {
    /// Every queue with its depth, in flight, consumers and dead letters.
    List,
    /// One queue's numbers.
    Stats { name: String },
    /// The next messages of a queue, without taking them.
    Peek {
        name: String,
        #[arg(default_value_t = 10)]
        n: usize,
    },
    /// Remove a queue's waiting messages (not those in flight).
    Purge { name: String },
    /// Move dead letters back to the queue each came from (or --to), their
    /// delivery count reset.
    Redrive {
        dlq: String,
        #[arg(long = "to", value_name = "QUEUE")]
        to: Option<String>,
        /// At most this many per second.
        #[arg(long = "rate", value_name = "N")]
        rate: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    tern::memory::configure();
    let cli = Cli::parse();
    if let Some(Command::Passwd {
        delete,
        stdin,
        file,
        user,
    }) = &cli.command
    {
        return passwd(file, user, *delete, *stdin);
    }
    if let Some(Command::Queue { admin, op }) = &cli.command {
        let ep = admin_endpoint(cli.config.as_deref(), admin)?;
        let op = queue_op(op);
        return print_answer("tern queue", tern::admin::cli::run(&ep, op));
    }
    if let Some(Command::Status { admin }) = &cli.command {
        let ep = admin_endpoint(cli.config.as_deref(), admin)?;
        return print_answer("tern status", tern::admin::cli::run_status(&ep));
    }
    if let Some(Command::Clients { admin, op }) = &cli.command {
        use tern::admin::cli::{run_clients, ClientsOp};
        let ep = admin_endpoint(cli.config.as_deref(), admin)?;
        let op = match op {
            ClientsCmd::List { after, limit } => ClientsOp::List {
                after: after.clone(),
                limit: *limit,
            },
            ClientsCmd::Kick { id } => ClientsOp::Kick(id.clone()),
        };
        return print_answer("tern clients", run_clients(&ep, op));
    }
    if let Some(Command::Retained { admin, op }) = &cli.command {
        use tern::admin::cli::{run_retained, RetainedOp};
        let ep = admin_endpoint(cli.config.as_deref(), admin)?;
        let op = match op {
            RetainedCmd::List {
                after,
                limit,
                filter,
                sys,
            } => RetainedOp::List {
                after: after.clone(),
                limit: *limit,
                filter: filter.clone(),
                sys: *sys,
            },
            RetainedCmd::Clear { topic } => RetainedOp::Clear(topic.clone()),
        };
        return print_answer("tern retained", run_retained(&ep, op));
    }
    if let Some(Command::Bridge { admin, op }) = &cli.command {
        use tern::admin::cli::{run_bridge, BridgeOp};
        let ep = admin_endpoint(cli.config.as_deref(), admin)?;
        let op = match op {
            BridgeCmd::List => BridgeOp::List,
            BridgeCmd::Purge { name } => BridgeOp::Purge(name.clone()),
        };
        return print_answer("tern bridge", run_bridge(&ep, op));
    }
    if let Some(Command::CheckConfig {
        file,
        against_running,
        admin,
    }) = &cli.command
    {
        let mut errors = tern::config::check_file(file).0;
        if errors.is_empty() {
            // The file is valid: now the files it names (as the environment
            // overrides them, like a start would).
            match Config::load(Some(file)) {
                Ok(config) => errors = tern::broker::check_files(&config),
                Err(e) => errors = e.0,
            }
        }
        if errors.is_empty() {
            println!("{}: OK", file.display());
            if !against_running {
                return Ok(());
            }
            let ep = admin_endpoint(Some(file), admin)?;
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match rt.block_on(tern::admin::cli::check_against_running(&ep, &text)) {
                Ok((report, restart)) => {
                    println!("{}", report.trim_end());
                    std::process::exit(if restart { 3 } else { 0 });
                }
                // The broker's own verdict on the file is a refusal too.
                Err(e) if e.starts_with("the broker would not load it") => {
                    eprintln!("{}: {e}", file.display());
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!(
                        "{}: cannot ask the running broker: {e} (its [admin] bind and token \
                         come from this file unless --admin / --token say otherwise)",
                        file.display()
                    );
                    std::process::exit(2);
                }
            }
        }
        for e in &errors {
            eprintln!("{}: {e}", file.display());
        }
        std::process::exit(1);
    }

    // Serving: first of all (no thread yet), the allocator's settings.
    let tcache_kept = tern::memory::reexec_without_tcache().err();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("config error: {e}");
            }
            std::process::exit(2);
        }
    };
    let overrides = Overrides {
        listen: cli.listen.clone(),
        data_dir: cli.data_dir.clone(),
        log: cli.log.clone(),
    };
    let filter = cli.log.clone().unwrap_or_else(|| config.log.level.clone());
    let log_level = init_logging(&filter, &config.log.format)?;
    if let Some(reason) = tcache_kept {
        tracing::warn!("{reason}: memory freed by closed connections may stay resident");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        // Handlers first: a SIGHUP (or SIGTERM) arriving while the store is being
        // recovered must not kill the process with the default action.
        let signals = Signals::new(cli.config.clone(), log_level)?;
        let broker = Broker::start_with(config, overrides).await?;
        tern::sd_notify::ready();
        signals.run_until_stop(&broker).await;
        tern::sd_notify::stopping();
        broker.shutdown().await;
        Ok(())
    })
}

/// The log filter a reload may change (`[log] level`).
type LogLevel =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Log to stderr, human or JSON; returns the handle that changes the filter.
fn init_logging(filter: &str, format: &str) -> anyhow::Result<LogLevel> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(env_filter);
    let json = format == "json";
    // One JSON object per line, for collectors: the event's fields, its span
    // (the connection: peer, id, client, user) and the time.
    let as_json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let as_text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(as_json)
        .with(as_text)
        .init();
    Ok(handle)
}

struct Signals {
    /// The config file to read again on SIGHUP.
    config_file: Option<PathBuf>,
    log_level: LogLevel,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new(config_file: Option<PathBuf>, log_level: LogLevel) -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            config_file,
            log_level,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// Serve until SIGINT or SIGTERM; SIGHUP reloads the config file, the
    /// certificates, the password file and the ACL file (connections stay).
    async fn run_until_stop(mut self, broker: &Broker) {
        let Signals {
            config_file,
            log_level,
            term,
            int,
            hup,
        } = &mut self;
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    tern::sd_notify::reloading();
                    // The file again: what can change live applies now. A file
                    // that no longer parses changes nothing.
                    let config = match config_file {
                        Some(path) => match Config::load(Some(path)) {
                            Ok(c) => Some(c),
                            Err(errors) => {
                                for e in &errors.0 {
                                    tracing::error!("reload: {}: {e} (nothing reloaded)", path.display());
                                }
                                tern::sd_notify::ready();
                                continue;
                            }
                        },
                        None => None,
                    };
                    let errors = broker.reload(config.as_ref()).await;
                    // `--log` on the command line stays over the file.
                    let level = broker.config().log.level.clone();
                    let changed = tracing_subscriber::EnvFilter::try_new(&level)
                        .map_err(|e| e.to_string())
                        .and_then(|f| log_level.reload(f).map_err(|e| e.to_string()));
                    if let Err(e) = changed {
                        tracing::warn!("reload: log level {level:?} not applied: {e}");
                    }
                    if errors.is_empty() {
                        tracing::info!("reload done");
                    }
                    tern::sd_notify::ready();
                }
            }
        }
    }
}

/// `tern passwd [-D] [--stdin] FILE USER`.
fn passwd(file: &std::path::Path, user: &str, delete: bool, stdin: bool) -> anyhow::Result<()> {
    use tern::auth::PasswordFile;
    let mut pw = match std::fs::read_to_string(file) {
        Ok(text) => {
            PasswordFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !delete => PasswordFile::new(),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", file.display())),
    };
    if delete {
        if !pw.remove(user) {
            anyhow::bail!("{}: no user {user:?}", file.display());
        }
    } else {
        // Mosquitto's file format splits at the first ':' and lines at '\n'.
        if user.is_empty() || user.contains([':', '\n', '\r']) {
            anyhow::bail!("a username must be non-empty and contain no ':' or line break");
        }
        let password = if stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        } else {
            let first = rpassword::prompt_password("Password: ").context("reading the password")?;
            let again =
                rpassword::prompt_password("Reenter password: ").context("reading the password")?;
            if first != again {
                anyhow::bail!("the passwords do not match");
            }
            first
        };
        if password.is_empty() {
            anyhow::bail!("an empty password is not allowed");
        }
        pw.set(user, password.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    write_private(file, &pw.to_text()).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// Replace `path` with `text` atomically (a temporary file renamed over it): a
/// crash must not leave half a password file. A symlink is followed (the file it
/// points to is replaced), and an existing file keeps its mode and, where we may
/// set it, its owner and group (a broker running as another user must still read
/// it after `sudo tern passwd`); a new file is 0600.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let resolved = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e),
    };
    let path = resolved.as_path();
    let existing = std::fs::metadata(path).ok();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some(m) = &existing {
            f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            // Only root may give a file away; for anyone else the owner is
            // already theirs or cannot change, which is not an error here.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The admin endpoint: `--admin` / `--token` / `--ca`, else `[admin]` of the
/// config file, else 127.0.0.1:8080 over plain HTTP without a token.
fn admin_endpoint(
    config: Option<&std::path::Path>,
    args: &AdminArgs,
) -> anyhow::Result<tern::admin::cli::Endpoint> {
    let from_file = match config {
        Some(p) => Some(
            Config::load(Some(p))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .admin,
        ),
        None => None,
    };
    let addr = args
        .admin
        .or(from_file.as_ref().and_then(|a| a.bind))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let ca = args.ca.clone().or_else(|| {
        from_file
            .as_ref()
            .and_then(|a| a.tls.as_ref())
            .map(|t| t.cert.clone())
    });
    let tls = match ca {
        Some(ca) => Some(
            tern::tls::client_config(Some(&ca), None, &[], false)
                .map_err(|e| anyhow::anyhow!("admin TLS: {e}"))?,
        ),
        None => None,
    };
    let token = args.token.clone().or(from_file.and_then(|a| a.token));
    Ok(tern::admin::cli::Endpoint { addr, token, tls })
}

fn queue_op(op: &QueueCmd) -> tern::admin::cli::QueueOp {
    use tern::admin::cli::QueueOp;
    match op {
        QueueCmd::List => QueueOp::List,
        QueueCmd::Stats { name } => QueueOp::Stats(name.clone()),
        QueueCmd::Peek { name, n } => QueueOp::Peek(name.clone(), *n),
        QueueCmd::Purge { name } => QueueOp::Purge(name.clone()),
        QueueCmd::Redrive { dlq, to, rate } => QueueOp::Redrive {
            dlq: dlq.clone(),
            to: to.clone(),
            rate: *rate,
        },
    }
}

/// Run an admin call; print its text, or its error and exit 1.
fn print_answer(
    what: &str,
    call: impl std::future::Future<Output = Result<String, String>>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(call) {
        Ok(text) => {
            println!("{}", text.trim_end());
            Ok(())
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            std::process::exit(1);
        }
    }
}
