//! `pylon`: run the gateway, validate configuration, print the version.

mod admin_client;
mod declarative;
mod node_config;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use pylon_admin::{AdminApi, Role as AdminRole};
use pylon_model::{FieldError, ValidationErrors};
use pylon_proxy::{
    AccessLog, ControlApi, Gateway, HandoffServer, NodeStatus, Publisher, Snapshot, Takeover,
    TlsContext,
};
use pylon_store::{ConfigStore, EmbeddedStore, EtcdStore, Keyring, Replica, YamlStore};

use node_config::{NodeConfig, SourceKind};

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
    /// Without -c, Pylon proxies on 127.0.0.1:9080 and serves the Admin API on 127.0.0.1:9180,
    /// with its configuration in the embedded store in ./data.
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
    /// The whole configuration as a YAML document, through a node's Admin API.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the whole configuration (standalone YAML, as conf/apisix.yaml).
    Dump,
    /// Show what `apply FILE` would change.
    Diff {
        file: PathBuf,
        /// Also list the resources that FILE does not have, which `apply --prune` deletes.
        #[arg(long)]
        prune: bool,
    },
    /// Make the configuration what FILE says, atomically: creates and updates what differs,
    /// leaves the rest untouched.
    Apply {
        file: PathBuf,
        /// Also delete the resources that FILE does not have.
        #[arg(long)]
        prune: bool,
    },
}

/// Which Admin API to talk to, and with which key.
#[derive(clap::Args)]
struct AdminTarget {
    /// Node config file: the Admin API's address and key are taken from it.
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The Admin API's address (host:port), instead of the node config's `admin.listen`.
    #[arg(long, value_name = "ADDR", global = true)]
    admin: Option<String>,
    /// An admin key, instead of the node config's first (or the one generated in its data dir).
    #[arg(
        long,
        env = "PYLON_API_KEY",
        value_name = "KEY",
        global = true,
        hide_env_values = true
    )]
    api_key: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::Validate { file, config } => validate(file.as_deref(), config.as_deref()),
        Command::Config { action, admin } => config_command(action, &admin),
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

fn config_command(action: ConfigAction, target: &AdminTarget) -> anyhow::Result<()> {
    let node = NodeConfig::load(target.config.as_deref())?;
    let address = match &target.admin {
        Some(address) => address.clone(),
        None => node.admin.listen.to_string(),
    };
    let api_key = match &target.api_key {
        Some(key) => key.clone(),
        None => {
            let mut settings = node.admin.clone();
            settings.resolve_keys(&node.config.data_dir)?;
            settings
                .admin_key
                .iter()
                .find(|k| k.role == AdminRole::Admin)
                .map(|k| k.key.clone())
                .context("no admin key: pass --api-key or set admin.admin_key")?
        }
    };
    let client = admin_client::AdminClient::new(&address, api_key)?;
    match action {
        ConfigAction::Dump => declarative::dump(&client),
        ConfigAction::Diff { file, prune } => declarative::diff(&client, &file, prune),
        ConfigAction::Apply { file, prune } => declarative::apply(&client, &file, prune),
    }
}

fn validate(file: Option<&Path>, node_config: Option<&Path>) -> anyhow::Result<()> {
    let node = NodeConfig::load(node_config)?;
    let file = file.unwrap_or(&node.config.file);
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let invalid =
        |errors: ValidationErrors| anyhow::anyhow!("{} is not valid:\n{errors}", file.display());
    let (entries, config) = pylon_model::parse_standalone(&text).map_err(invalid)?;
    // Plugins are the plugins crate's to check: each resource's, then what only the whole
    // configuration shows (two consumers with one key).
    let mut plugin_errors: Vec<FieldError> = entries
        .iter()
        .flat_map(|(key, value)| {
            pylon_plugins::check_resource(key.kind, value)
                .into_iter()
                .map(move |e| e.within(&key.to_string()))
        })
        .collect();
    plugin_errors.extend(pylon_plugins::check_config(&config));
    if !plugin_errors.is_empty() {
        return Err(invalid(ValidationErrors(plugin_errors)));
    }
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

    // The control side (config store, compiling snapshots, the Admin and control APIs) runs
    // here; the proxy workers have their own threads and runtimes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let role = node.deployment.role;
        let node_id = node.node_id()?;
        let store = open_store(&node).await?;
        let cache = (node.config.source == SourceKind::Etcd)
            .then(|| node.config.data_dir.join("etcd-copy.json"));
        let replica = Arc::new(
            Replica::start(store.clone(), cache)
                .await
                .context("reading the configuration")?,
        );
        let keyring = Arc::new(keyring(&node)?);

        let cell = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        let mut publisher = if role.proxies() {
            let tls = tls_context(&node)?;
            let mut publisher = Publisher::new(
                &replica,
                cell.clone(),
                node.proxy.upstream.clone(),
                Arc::new(tls),
                keyring.clone(),
            );
            publisher.publish_current()?;
            Some(publisher)
        } else {
            None
        };
        let snapshot = cell.load_full();
        let access_log = AccessLog::start(&node.access_log).context("access log")?;
        // Only now, with the configuration known to be good, is a running pylon asked for its
        // sockets: a new process that cannot start never disturbs the old one.
        let mut takeover = match node.handoff_socket() {
            Some(path) => Takeover::connect(path)
                .with_context(|| format!("taking over from the pylon at {}", path.display()))?,
            None => None,
        };
        let mut inherited = takeover.as_mut().map(Takeover::take_listeners).unwrap_or_default();
        let admin = if node.runs_admin() {
            let listener = match inherited.take_admin(node.admin.listen) {
                Some(socket) => tokio::net::TcpListener::from_std(socket)?,
                None => tokio::net::TcpListener::bind(node.admin.listen)
                    .await
                    .with_context(|| format!("admin.listen {}", node.admin.listen))?,
            };
            let mut settings = node.admin.clone();
            if let Some(path) = settings.resolve_keys(&node.config.data_dir)? {
                println!("pylon: admin API key in {} (no admin.admin_key configured)", path.display());
            }
            Some(AdminApi::new(listener, settings, store.clone(), replica.clone(), keyring.clone()))
        } else {
            None
        };
        // Health checkers and the control API run here, on the control runtime.
        let status = NodeStatus {
            id: node_id.clone(),
            role: role.as_str(),
            serving: role.proxies().then(|| cell.clone()),
            store: replica.subscribe(),
        };
        let health = publisher.as_ref().map(Publisher::health).unwrap_or_default();
        let control = if node.control.enabled {
            let api = ControlApi::bind(&node.control, &mut inherited, health, status).await;
            Some(api.with_context(|| format!("control.listen {}", node.control.listen))?)
        } else {
            None
        };
        let mut gateway = if role.proxies() {
            Some(Gateway::start(&node.proxy, cell, access_log, inherited)?)
        } else {
            None
        };
        let mut handoff = node.handoff_socket().and_then(|path| {
            serve_handoff(path, gateway.as_mut(), control.as_ref(), admin.as_ref(), &node)
        });
        if let Some(takeover) = takeover {
            let (pid, count) = (takeover.pid(), takeover.socket_count());
            if let Err(e) = takeover.finish() {
                tracing::warn!("pid {pid} was not told to stop (already stopping?): {e}");
            }
            println!("pylon: took over {count} listening socket(s) from pid {pid}");
        }
        let mut tasks = Vec::new();
        if let Some(control) = control {
            println!("pylon: control API listening on http://{}", control.local_addr()?);
            tasks.push(tokio::spawn(control.serve()));
        }
        if let Some(admin) = admin {
            println!("pylon: admin API listening on http://{}", admin.local_addr()?);
            tasks.push(tokio::spawn(admin.serve()));
        }
        if let Some(gateway) = &gateway {
            for addr in gateway.local_addrs() {
                println!("pylon: proxy listening on http://{addr}");
            }
            for addr in gateway.https_addrs() {
                println!(
                    "pylon: proxy listening on https://{addr} ({} certificate(s))",
                    snapshot.certificates.len()
                );
            }
        }
        if let Some(path) = node.handoff_socket().filter(|_| handoff.is_some()) {
            println!(
                "pylon: handoff socket: {} (another `pylon run` with this config takes over)",
                path.display()
            );
        }
        let view = replica.view();
        if !view.live {
            println!("pylon: the config store is unreachable: serving the local copy until it returns");
        }
        println!(
            "pylon: node {node_id} ({}); {} worker(s); config from {}, revision {}, {} route(s); access log: {}",
            role.as_str(),
            if role.proxies() { node.proxy.worker_count() } else { 0 },
            describe_source(&node),
            view.revision,
            snapshot.router.len(),
            if node.access_log.enabled { node.access_log.path.as_str() } else { "off" },
        );
        if role.proxies() && snapshot.router.is_empty() {
            println!("pylon: no routes yet: every request gets 404 until one is added");
        }
        if let Some(publisher) = publisher.take() {
            tasks.push(tokio::spawn(publisher.follow()));
        }
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
        for task in tasks {
            task.abort();
        }
        if let Some(gateway) = gateway {
            tokio::task::spawn_blocking(move || gateway.shutdown()).await?;
        }
        println!("pylon: stopped");
        Ok(())
    })
}

async fn open_store(node: &NodeConfig) -> anyhow::Result<Arc<dyn ConfigStore>> {
    Ok(match node.config.source {
        SourceKind::Yaml => Arc::new(YamlStore::open(&node.config.file).await?),
        SourceKind::Embedded => {
            let dir = node.config.data_dir.join("store");
            Arc::new(
                EmbeddedStore::open(&dir)
                    .with_context(|| format!("config store {}", dir.display()))?,
            )
        }
        SourceKind::Etcd => Arc::new(EtcdStore::new(&node.config.etcd).context("config.etcd")?),
    })
}

fn keyring(node: &NodeConfig) -> anyhow::Result<Keyring> {
    let secrets = &node.data_encryption.keyring;
    if !secrets.is_empty() || node.config.source != SourceKind::Embedded {
        return Ok(Keyring::new(secrets));
    }
    let path = node.config.data_dir.join("keyring");
    Keyring::load_or_generate(&path).with_context(|| format!("keyring {}", path.display()))
}

fn tls_context(node: &NodeConfig) -> anyhow::Result<TlsContext> {
    let trusted_ca =
        match &node.proxy.upstream.trusted_ca {
            Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                format!("proxy.upstream.trusted_ca: reading {}", path.display())
            })?),
            None => None,
        };
    TlsContext::new(trusted_ca.as_deref(), node.proxy.https.fallback_sni.clone())
        .context("proxy.upstream.trusted_ca")
}

fn describe_source(node: &NodeConfig) -> String {
    match node.config.source {
        SourceKind::Yaml => format!("{} (reloaded on change)", node.config.file.display()),
        SourceKind::Embedded => format!("the embedded store in {}", node.config.data_dir.display()),
        SourceKind::Etcd => format!(
            "etcd {} under {}",
            node.config.etcd.endpoints.join(","),
            node.config.etcd.prefix
        ),
    }
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

/// Listens on the handoff socket, ready to give a successor the proxy's, the Admin API's and
/// the control API's listening sockets. A failure costs only the restarts without downtime: it
/// is logged, and the node serves on.
fn serve_handoff(
    path: &Path,
    gateway: Option<&mut Gateway>,
    control: Option<&ControlApi>,
    admin: Option<&AdminApi>,
    node: &NodeConfig,
) -> Option<HandoffServer> {
    let mut listeners = gateway.map(Gateway::take_listeners).unwrap_or_default();
    let started = control
        .map_or(Ok(()), |api| api.share(&node.control, &mut listeners))
        .and_then(|()| {
            admin.map_or(Ok(()), |api| {
                listeners.share_admin(node.admin.listen, api.listener())
            })
        })
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
