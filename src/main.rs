//! The `tern` command: parse arguments, set up logging and the runtime, run the
//! broker until SIGINT/SIGTERM. No broker logic lives here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tern::broker::Broker;
use tern::config::{Config, ListenerConfig};

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
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        let errors = tern::config::check_file(file);
        if errors.0.is_empty() {
            println!("{}: OK", file.display());
            return Ok(());
        }
        for e in &errors.0 {
            eprintln!("{}: {e}", file.display());
        }
        std::process::exit(1);
    }

    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("config error: {e}");
            }
            std::process::exit(2);
        }
    };
    if !cli.listen.is_empty() {
        config.listeners = cli
            .listen
            .iter()
            .map(|&bind| ListenerConfig { bind })
            .collect();
    }
    if let Some(dir) = &cli.data_dir {
        config.storage.dir = dir.clone();
    }
    let filter = cli.log.clone().unwrap_or_else(|| config.log.level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .with_context(|| format!("invalid log filter {filter:?}"))?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let broker = Broker::start(config).await?;
        wait_for_signal().await?;
        broker.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
