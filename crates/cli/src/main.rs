//! `pylon`: run the gateway, validate configuration, print the version.

mod node_config;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use pylon_proxy::{AccessLog, ControlApi, Gateway, Publisher, Snapshot, TlsContext};
use pylon_store::YamlStore;

use node_config::NodeConfig;

#[derive(Parser)]
#[command(
    name = "pylon",
    version,
    about = "Pylon, a dynamic high-performance API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGTERM or SIGINT.
    ///
    /// Without -c, Pylon listens on 127.0.0.1:9080 and reads its routes from
    /// conf/apisix.yaml, reloading that file whenever it changes.
    Run {
        /// Node config file (listen addresses, workers, timeouts, config source, logs).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check a configuration without running it; prints every error with its path.
    Validate {
        /// A standalone resource file (apisix.yaml format). Defaults to the node config's.
        file: Option<PathBuf>,
        /// Node config file to check too (and whose resource file to check by default).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::Validate { file, config } => validate(file.as_deref(), config.as_deref()),
        Command::Version => {
            println!("pylon {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pylon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn validate(file: Option<&Path>, node_config: Option<&Path>) -> anyhow::Result<()> {
    let node = NodeConfig::load(node_config)?;
    let file = file.unwrap_or(&node.config.file);
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (_, config) = pylon_model::parse_standalone(&text)
        .map_err(|errors| anyhow::anyhow!("{} is not valid:\n{errors}", file.display()))?;
    println!(
        "{}: valid ({} routes, {} services, {} upstreams, {} ssls)",
        file.display(),
        config.routes.len(),
        config.services.len(),
        config.upstreams.len(),
        config.ssls.len()
    );
    Ok(())
}

fn run(node_config: Option<&Path>) -> anyhow::Result<()> {
    let node = NodeConfig::load(node_config)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&node.log.level).context("log.level")?,
        )
        .with_writer(std::io::stderr)
        .init();

    // The control side (config store, compiling snapshots) runs here; the workers have their
    // own threads and runtimes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = YamlStore::open(&node.config.file).await?;
        let cell = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        let trusted_ca = match &node.proxy.upstream.trusted_ca {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("proxy.upstream.trusted_ca: reading {}", path.display()))?,
            ),
            None => None,
        };
        let tls = TlsContext::new(trusted_ca.as_deref(), node.proxy.https.fallback_sni.clone())
            .context("proxy.upstream.trusted_ca")?;
        let mut publisher = Publisher::new(
            Arc::new(store),
            cell.clone(),
            node.proxy.upstream.clone(),
            Arc::new(tls),
        );
        let snapshot = publisher.load().await?;
        let access_log = AccessLog::start(&node.access_log).context("access log")?;
        // Health checkers and the control API run here, on the control runtime.
        let control = if node.control.enabled {
            let api = ControlApi::bind(&node.control, publisher.health()).await;
            Some(api.with_context(|| format!("control.listen {}", node.control.listen))?)
        } else {
            None
        };
        let gateway = Gateway::start(&node.proxy, cell, access_log)?;
        if let Some(control) = control {
            println!("pylon: control API listening on http://{}", control.local_addr()?);
            tokio::spawn(control.serve());
        }

        for addr in gateway.local_addrs() {
            println!("pylon: proxy listening on http://{addr}");
        }
        for addr in gateway.https_addrs() {
            println!(
                "pylon: proxy listening on https://{addr} ({} certificate(s))",
                snapshot.certificates.len()
            );
        }
        println!(
            "pylon: {} worker(s); config from {} (reloaded on change), revision {}, {} route(s); access log: {}",
            node.proxy.worker_count(),
            node.config.file.display(),
            snapshot.revision,
            snapshot.router.len(),
            if node.access_log.enabled { node.access_log.path.as_str() } else { "off" },
        );
        if snapshot.router.is_empty() {
            println!(
                "pylon: no routes yet: every request gets 404 until {} has some",
                node.config.file.display()
            );
        }
        let follower = tokio::spawn(publisher.follow());
        wait_for_signal().await?;
        println!("pylon: stopping: finishing in-flight requests");
        follower.abort();
        tokio::task::spawn_blocking(move || gateway.shutdown()).await?;
        println!("pylon: stopped");
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
