//! `pylon`: run the gateway, validate configuration, print the version.

mod node_config;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use pylon_proxy::{
    AccessLog, ControlApi, ControlSettings, Gateway, HandoffServer, Publisher, Snapshot, Takeover,
    TlsContext,
};
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
    /// Run the gateway in the foreground until SIGTERM, SIGINT or SIGQUIT.
    ///
    /// Without -c, Pylon listens on 127.0.0.1:9080 and reads its routes from
    /// conf/apisix.yaml, reloading that file whenever it changes.
    ///
    /// If a pylon with the same config is running, this one takes its listening sockets over
    /// (through `proxy.handoff_socket`) and the old one drains and exits: a restart or binary
    /// upgrade that refuses and resets no connection.
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
        // Only now, with the configuration known to be good, is a running pylon asked for its
        // sockets: a new process that cannot start never disturbs the old one.
        let mut takeover = match node.handoff_socket() {
            Some(path) => Takeover::connect(path)
                .with_context(|| format!("taking over from the pylon at {}", path.display()))?,
            None => None,
        };
        let mut inherited = takeover.as_mut().map(Takeover::take_listeners).unwrap_or_default();
        // Health checkers and the control API run here, on the control runtime.
        let control = if node.control.enabled {
            let api = ControlApi::bind(&node.control, &mut inherited, publisher.health()).await;
            Some(api.with_context(|| format!("control.listen {}", node.control.listen))?)
        } else {
            None
        };
        let mut gateway = Gateway::start(&node.proxy, cell, access_log, inherited)?;
        let mut handoff = node
            .handoff_socket()
            .and_then(|path| serve_handoff(path, &mut gateway, control.as_ref(), &node.control));
        if let Some(takeover) = takeover {
            let (pid, count) = (takeover.pid(), takeover.socket_count());
            if let Err(e) = takeover.finish() {
                tracing::warn!("pid {pid} was not told to stop (already stopping?): {e}");
            }
            println!("pylon: took over {count} listening socket(s) from pid {pid}");
        }
        let control = match control {
            Some(control) => {
                println!("pylon: control API listening on http://{}", control.local_addr()?);
                Some(tokio::spawn(control.serve()))
            }
            None => None,
        };

        for addr in gateway.local_addrs() {
            println!("pylon: proxy listening on http://{addr}");
        }
        for addr in gateway.https_addrs() {
            println!(
                "pylon: proxy listening on https://{addr} ({} certificate(s))",
                snapshot.certificates.len()
            );
        }
        if let Some(path) = node.handoff_socket().filter(|_| handoff.is_some()) {
            println!(
                "pylon: handoff socket: {} (another `pylon run` with this config takes over)",
                path.display()
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
        tokio::select! {
            signal = wait_for_signal() => signal?,
            pid = successor(handoff.as_mut()) => {
                println!("pylon: pid {pid} took over the listening sockets");
            }
        }
        println!("pylon: stopping: finishing in-flight requests");
        if let Some(handoff) = handoff {
            handoff.close();
        }
        if let Some(control) = control {
            control.abort();
        }
        follower.abort();
        tokio::task::spawn_blocking(move || gateway.shutdown()).await?;
        println!("pylon: stopped");
        Ok(())
    })
}

/// SIGTERM, SIGINT, or SIGQUIT (nginx's graceful stop, which operators send out of habit:
/// left to its default it would dump core and drop every request in flight).
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = quit.recv() => {}
    }
    Ok(())
}

/// Listens on the handoff socket, ready to give a successor the proxy's and the control API's
/// listening sockets. A failure costs only the restarts without downtime: it is logged, and
/// the node serves on.
fn serve_handoff(
    path: &Path,
    gateway: &mut Gateway,
    control: Option<&ControlApi>,
    control_settings: &ControlSettings,
) -> Option<HandoffServer> {
    let mut listeners = gateway.take_listeners();
    let started = control
        .map_or(Ok(()), |api| api.share(control_settings, &mut listeners))
        .and_then(|()| HandoffServer::start(path, listeners));
    match started {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!(
                "handoff socket {}: {e}; a restart will not be able to take over",
                path.display()
            );
            None
        }
    }
}

/// Completes when a new process has taken the listening sockets over; never without a
/// handoff socket.
async fn successor(handoff: Option<&mut HandoffServer>) -> u32 {
    match handoff {
        Some(handoff) => handoff.successor().await,
        None => std::future::pending().await,
    }
}
