//! `pylon`: run the gateway, validate configuration, print the version.

mod admin_client;
mod declarative;
mod node_config;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use pylon_admin::{AdminApi, AdminSettings, Role as AdminRole};
use pylon_discovery::Registry;
use pylon_model::{FieldError, ValidationErrors};
use pylon_proxy::{
    AccessLog, Addresses, ControlApi, ControlPriority, Exporter, Gateway, HandoffEvent,
    HandoffServer, MetricsApi, NodeIdentity, NodeStatus, Publisher, Registration, Snapshot,
    Takeover, TlsContext, METRICS_PATHS,
};
use pylon_store::{ConfigStore, EmbeddedStore, EtcdStore, Keyring, Replica, YamlStore};

use node_config::{NodeConfig, SourceKind};
use writes::Writes;

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
    /// Turn another proxy's configuration into a standalone resource file, printed on stdout,
    /// or sent to a node's Admin API as a change set (`--change-set TITLE`).
    ///
    /// What cannot be converted is listed on stderr as `file:line: directive: reason`. Exit
    /// status: 0 when everything converted, 3 when something was listed (the document is still
    /// printed or sent), 1 when a file cannot be read or the change set is refused, 2 when it
    /// is not valid nginx syntax.
    Import {
        #[command(subcommand)]
        source: ImportSource,
        /// Send the document to the Admin API as one draft change set with this title, instead
        /// of printing it.
        #[arg(long, value_name = "TITLE", global = true)]
        change_set: Option<String>,
        /// The tenant the change set is for (a platform admin's key may name any).
        #[arg(long, value_name = "TENANT", global = true)]
        tenant: Option<String>,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ImportSource {
    /// An nginx configuration: `nginx.conf` or a `conf.d` file, with its includes.
    Nginx { file: PathBuf },
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
        Command::Import {
            source,
            change_set,
            tenant,
            admin,
        } => {
            let destination = match change_set {
                Some(title) => Destination::ChangeSet {
                    title,
                    tenant,
                    admin,
                },
                None => Destination::Stdout,
            };
            return import(source, destination);
        }
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

/// Where `pylon import` puts the document.
enum Destination {
    Stdout,
    ChangeSet {
        title: String,
        tenant: Option<String>,
        admin: AdminTarget,
    },
}

/// `pylon import`: the exit status says whether everything converted (see [`Command::Import`]).
fn import(source: ImportSource, destination: Destination) -> std::process::ExitCode {
    use pylon_import::nginx;
    let ImportSource::Nginx { file } = source;
    let directives = match nginx::load(&file) {
        Ok(directives) => directives,
        Err(e) => {
            eprintln!("pylon: {e}");
            return std::process::ExitCode::from(match e {
                nginx::ParseError::Read { .. } => 1,
                nginx::ParseError::Syntax { .. } => 2,
            });
        }
    };
    let conversion = nginx::convert(&directives);
    let sent = match destination {
        Destination::Stdout => serde_yaml::to_string(&conversion.document)
            .map(|yaml| print!("{yaml}"))
            .context("cannot write the document"),
        Destination::ChangeSet {
            title,
            tenant,
            admin,
        } => send_change_set(&conversion.document, &title, tenant.as_deref(), &admin),
    };
    if let Err(e) = sent {
        eprintln!("pylon: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    for item in &conversion.unconverted {
        eprintln!("{item}");
    }
    if conversion.unconverted.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    }
}

/// Sends `document` to `POST /pylon/admin/change_sets/import` and says what was made.
fn send_change_set(
    document: &serde_json::Value,
    title: &str,
    tenant: Option<&str>,
    target: &AdminTarget,
) -> anyhow::Result<()> {
    let client = admin_client(target)?;
    let mut path = format!(
        "/pylon/admin/change_sets/import?title={}",
        query_value(title)
    );
    if let Some(tenant) = tenant {
        path.push_str(&format!("&tenant_id={}", query_value(tenant)));
    }
    let body = serde_json::to_vec(document)?;
    let created = client.request("POST", &path, Some(&body))?.json()?;
    println!(
        "change set {} ({} changes) is a draft of tenant {}: review and publish it through the Admin API",
        created["id"].as_str().unwrap_or_default(),
        created["changes"].as_array().map_or(0, Vec::len),
        created["tenant_id"].as_str().unwrap_or_default(),
    );
    Ok(())
}

/// `value` percent-encoded for a query string.
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client for the Admin API `target` names: its address and key, or the node config's.
fn admin_client(target: &AdminTarget) -> anyhow::Result<admin_client::AdminClient> {
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
    admin_client::AdminClient::new(&address, api_key)
}

fn config_command(action: ConfigAction, target: &AdminTarget) -> anyhow::Result<()> {
    let client = admin_client(target)?;
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
    let document = pylon_model::parse_standalone_document(&text).map_err(invalid)?;
    // Plugins are the plugins crate's to check: each resource's, then what only the whole
    // configuration shows (two consumers with one key). Paths are positions in the document.
    let locate = |error: FieldError| match error.path.split_once('.') {
        Some((resource, rest)) => {
            let located = document
                .entries
                .keys()
                .find(|key| key.to_string() == resource)
                .and_then(|key| document.locations.get(key));
            match located {
                Some(location) => FieldError::new(format!("{location}.{rest}"), error.message),
                None => error,
            }
        }
        None => error,
    };
    let protos = pylon_plugins::Protos::compile(&document.config, pylon_plugins::Protos::none());
    let mut plugin_errors: Vec<FieldError> = document
        .entries
        .iter()
        .flat_map(|(key, value)| {
            let location = &document.locations[key];
            pylon_plugins::check_resource(key.kind, value, &protos)
                .into_iter()
                .map(move |e| e.within(location))
        })
        .collect();
    plugin_errors.extend(
        pylon_plugins::check_config(&document.config)
            .into_iter()
            .map(locate),
    );
    if !plugin_errors.is_empty() {
        return Err(invalid(ValidationErrors(plugin_errors)));
    }
    let config = document.config;
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
    // Threads the control side starts for blocking work (the local config copy, the embedded
    // store's commits) run below the workers' priority, as the control thread does once the
    // workers have started.
    let control_priority = ControlPriority::below_current(if node.deployment.role.proxies() {
        node.proxy.control_nice
    } else {
        0
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || control_priority.enter())
        .build()?;
    runtime.block_on(async {
        let role = node.deployment.role;
        let node_id = node.node_id()?;
        let identity = NodeIdentity {
            id: node_id.clone(),
            labels: node.deployment.labels.clone(),
        };
        let keyring = Arc::new(keyring(&node)?);
        let tls = role.proxies().then(|| tls_context(&node)).transpose()?;
        let access_log = AccessLog::start(&node.access_log).context("access log")?;
        let admin_settings = node.runs_admin().then(|| admin_settings(&node)).transpose()?;

        // Everything above needs no store: a new process that fails there never disturbs a
        // running pylon. That one now hands its listening sockets over, and serves on with them
        // until this one is ready.
        let mut takeover = match node.handoff_socket() {
            Some(path) => Takeover::connect(path)
                .with_context(|| format!("taking over from the pylon at {}", path.display()))?,
            None => None,
        };
        let mut inherited = takeover.as_mut().map(Takeover::take_listeners).unwrap_or_default();
        // The embedded store admits one process at a time: the running pylon stops writing and
        // lets go of it first. Should this process fail before it serves, it takes it back.
        if let Some(takeover) = takeover
            .as_mut()
            .filter(|_| node.config.source == SourceKind::Embedded)
        {
            takeover
                .release_store()
                .with_context(|| format!("taking the store over from pid {}", takeover.pid()))?;
        }
        let (store, embedded) = open_store(&node).await?;
        let cache = (node.config.source == SourceKind::Etcd)
            .then(|| node.config.data_dir.join("etcd-copy.json"));
        let replica = Arc::new(
            Replica::start(store.clone(), cache)
                .await
                .context("reading the configuration")?,
        );

        let cell = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        // A node that proxies, and only such a node, has a TLS context.
        let mut publisher = match tls {
            Some(tls) => {
                let discovery =
                    Registry::new(&node.discovery).context("the node config's `discovery`")?;
                let mut publisher = Publisher::new(
                    &replica,
                    identity.clone(),
                    cell.clone(),
                    node.proxy.upstream.clone(),
                    Arc::new(tls),
                    keyring.clone(),
                    discovery,
                );
                publisher.publish_current();
                Some(publisher)
            }
            None => None,
        };
        let snapshot = cell.load_full();
        let admin = match admin_settings {
            Some(settings) => {
                let listener = match inherited.take_admin(node.admin.listen) {
                    Some(socket) => tokio::net::TcpListener::from_std(socket)?,
                    None => tokio::net::TcpListener::bind(node.admin.listen)
                        .await
                        .with_context(|| format!("admin.listen {}", node.admin.listen))?,
                };
                // A node that proxies answers a write once its workers serve it.
                let served = publisher.as_ref().map(Publisher::served);
                Some(AdminApi::new(
                    listener,
                    settings,
                    store.clone(),
                    replica.clone(),
                    served,
                    keyring.clone(),
                ))
            }
            None => None,
        };
        // Health checkers and the control API run here, on the control runtime.
        let status = NodeStatus {
            node: identity.clone(),
            role: role.as_str(),
            serving: role.proxies().then(|| cell.clone()),
            canaries: publisher.as_ref().map(Publisher::canaries),
            store: replica.subscribe(),
        };
        let health = publisher.as_ref().map(Publisher::health).unwrap_or_default();
        let metrics = if node.metrics.enabled {
            let api = MetricsApi::bind(&node.metrics, &mut inherited).await;
            Some(api.with_context(|| format!("metrics.listen {}", node.metrics.listen))?)
        } else {
            None
        };
        let exported = (status.clone(), health.clone());
        let control = if node.control.enabled {
            let discovery = publisher.as_ref().map(Publisher::discovery);
            let api = ControlApi::bind(&node.control, &mut inherited, health, status, discovery);
            let api = api.await;
            Some(api.with_context(|| format!("control.listen {}", node.control.listen))?)
        } else {
            None
        };
        let mut gateway = if role.proxies() {
            let gateway = Gateway::start(&node.proxy, cell, access_log, inherited)?;
            control_priority.enter();
            Some(gateway)
        } else {
            None
        };
        // A node that proxies tells the cluster about itself, where the store can be written.
        let registration = match &publisher {
            Some(publisher) if node.config.source != SourceKind::Yaml => {
                let addresses = Addresses {
                    http: gateway.as_ref().map_or(Vec::new(), |g| g.local_addrs().to_vec()),
                    https: gateway.as_ref().map_or(Vec::new(), |g| g.https_addrs().to_vec()),
                    admin: admin.as_ref().map(AdminApi::local_addr).transpose()?,
                    control: control.as_ref().map(ControlApi::local_addr).transpose()?,
                };
                let interval = node.deployment.heartbeat_interval;
                let role = role.as_str();
                let store = store.clone();
                Some(Registration::new(store, identity, role, addresses, interval, publisher))
            }
            _ => None,
        };
        let local_apis = LocalApis {
            control: control.as_ref(),
            metrics: metrics.as_ref(),
            admin: admin.as_ref(),
        };
        let mut handoff = node
            .handoff_socket()
            .and_then(|path| serve_handoff(path, gateway.as_mut(), &local_apis, &node));
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
        if let Some(metrics) = metrics {
            let addr = metrics.local_addr()?;
            println!("pylon: metrics listening on http://{addr}{}", METRICS_PATHS[0]);
            let (status, health) = exported;
            let traffic = gateway.as_ref().map(Gateway::traffic);
            let etcd = node.config.source == SourceKind::Etcd;
            let exporter = Exporter::new(traffic, status, health, etcd);
            tasks.push(tokio::spawn(metrics.serve(exporter)));
        }
        if let Some(admin) = &admin {
            println!("pylon: admin API listening on http://{}", admin.local_addr()?);
        }
        let mut writes = Writes::start(admin, embedded);
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
            for addr in gateway.proxied_addrs() {
                println!("pylon: PROXY protocol listening on http://{addr}");
            }
            for addr in gateway.proxied_https_addrs() {
                println!("pylon: PROXY protocol listening on https://{addr}");
            }
            for (addr, kind) in gateway.stream_addrs() {
                println!("pylon: stream listening on {kind}://{addr}");
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
        if let Some(registration) = registration {
            tasks.push(tokio::spawn(registration.run()));
        }
        let mut signals = Signals::new()?;
        loop {
            tokio::select! {
                () = signals.recv() => break,
                event = next_handoff_event(handoff.as_mut()) => match event {
                    HandoffEvent::ReleaseStore(release) => {
                        writes.release().await;
                        release.done();
                    }
                    HandoffEvent::StoreReturned => writes.reclaim().await,
                    HandoffEvent::Succeeded(pid) => {
                        println!("pylon: pid {pid} took over the listening sockets");
                        break;
                    }
                },
            }
        }
        println!("pylon: stopping: finishing in-flight requests");
        if let Some(handoff) = handoff {
            handoff.close();
        }
        for task in tasks {
            task.abort();
        }
        let gateway_stopped = async {
            match gateway {
                Some(gateway) => tokio::task::spawn_blocking(move || gateway.shutdown()).await,
                None => Ok(()),
            }
        };
        let ((), stopped) = tokio::join!(writes.stop(), gateway_stopped);
        stopped?;
        println!("pylon: stopped");
        Ok(())
    })
}

/// The Admin API's settings, with its keys resolved (generated on the first start if none is
/// configured).
fn admin_settings(node: &NodeConfig) -> anyhow::Result<AdminSettings> {
    let mut settings = node.admin.clone();
    if let Some(path) = settings.resolve_keys(&node.config.data_dir)? {
        println!(
            "pylon: admin API key in {} (no admin.admin_key configured)",
            path.display()
        );
    }
    Ok(settings)
}

/// The config store, and the embedded one's own handle: a restart hands it over.
async fn open_store(
    node: &NodeConfig,
) -> anyhow::Result<(Arc<dyn ConfigStore>, Option<Arc<EmbeddedStore>>)> {
    Ok(match node.config.source {
        SourceKind::Yaml => (Arc::new(YamlStore::open(&node.config.file).await?), None),
        SourceKind::Embedded => {
            let dir = node.config.data_dir.join("store");
            let store = Arc::new(
                EmbeddedStore::open(&dir)
                    .with_context(|| format!("config store {}", dir.display()))?,
            );
            (store.clone(), Some(store))
        }
        SourceKind::Etcd => {
            let store = EtcdStore::new(&node.config.etcd).context("config.etcd")?;
            (Arc::new(store), None)
        }
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
/// left to its default it would dump core and drop every request in flight). Caught from
/// creation on, so none is missed while the process is busy with a handoff.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = self.quit.recv() => {}
        }
    }
}

/// The node's listeners besides the proxy's, those it runs.
struct LocalApis<'a> {
    control: Option<&'a ControlApi>,
    metrics: Option<&'a MetricsApi>,
    admin: Option<&'a AdminApi>,
}

/// Listens on the handoff socket, ready to give a successor the proxy's, the Admin API's, the
/// control API's and the metrics listener's sockets. A failure costs only the restarts without
/// downtime: it is logged, and the node serves on.
fn serve_handoff(
    path: &Path,
    gateway: Option<&mut Gateway>,
    apis: &LocalApis<'_>,
    node: &NodeConfig,
) -> Option<HandoffServer> {
    let mut listeners = gateway.map(Gateway::take_listeners).unwrap_or_default();
    let started = apis
        .control
        .map_or(Ok(()), |api| api.share(&node.control, &mut listeners))
        .and_then(|()| {
            let metrics = apis.metrics;
            metrics.map_or(Ok(()), |api| api.share(&node.metrics, &mut listeners))
        })
        .and_then(|()| {
            apis.admin.map_or(Ok(()), |api| {
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

/// What a new process taking over needs of this one next; never without a handoff socket.
async fn next_handoff_event(handoff: Option<&mut HandoffServer>) -> HandoffEvent {
    match handoff {
        Some(handoff) => handoff.next().await,
        None => std::future::pending().await,
    }
}
