//! Pylon's client of Redis: where the nodes of a cluster keep the state they share (the
//! counters of the Redis rate-limit policies, the push gateway's devices and messages).
//!
//! One [`Redis`] per distinct setting ([`Redis::shared`]) serves every plugin instance that
//! names that server. Each worker thread holds its own connection to it: a request's command
//! is written and answered on its worker's own runtime, multiplexed with the worker's other
//! requests, so no request waits for a lock or for another thread. A connection that fails
//! is dropped and made again on a later call; until then, calls fail at once rather than
//! each waiting for a connect to time out, and the caller's failure policy decides.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo, RedisConnectionInfo, RedisError, ServerErrorKind, TlsMode,
};
use thread_local::ThreadLocal;

/// Commands, replies and Lua scripts (run by their digest, [`Redis::invoke`]).
pub use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
pub use redis::{cmd, Cmd, Script, ScriptInvocation, Value};

/// How long a worker's calls fail at once after its connection failed, before one of them
/// connects again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Which servers hold the data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topology {
    /// One server.
    Single(Address),
    /// A Redis Cluster, found from any of these nodes; keys go to the node of their slot.
    Cluster(Vec<Address>),
    /// The master that these Sentinels name `master`, found again after a failover.
    Sentinel {
        sentinels: Vec<Address>,
        master: String,
        /// The Sentinels' own password, when they have one.
        password: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything that tells one Redis from another: two settings that are equal share one
/// [`Redis`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    pub topology: Topology,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database number (one server or Sentinel; a cluster has only 0).
    pub database: i64,
    /// TLS to the data servers: `Some(true)` checks their certificates against the system's
    /// roots, `Some(false)` does not.
    pub tls_verify: Option<bool>,
    /// The longest a connect or a command may take.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("not connected (the last attempt failed {0:?} ago)")]
    Reconnecting(Duration),
    #[error("timed out")]
    TimedOut,
}

/// A Redis, as [`Settings`] name it, with one connection per worker thread.
pub struct Redis {
    settings: Settings,
    name: String,
    connections: ThreadLocal<tokio::sync::Mutex<Slot>>,
    reachable: AtomicBool,
    failures: AtomicU64,
}

/// What every [`Redis`] in use reports, for the node's status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The servers, as configured (`host:port`, with `cluster:`/`sentinel:` for those).
    pub name: String,
    /// Whether the last call or connect succeeded.
    pub reachable: bool,
    /// Calls and connects that failed since the client was made.
    pub failures: u64,
}

/// Every Redis in use, by settings: the instances that use one hold it, and it goes with
/// the last of them.
static SHARED: Mutex<Option<HashMap<Settings, Weak<Redis>>>> = Mutex::new(None);

impl Redis {
    /// The Redis of `settings`, shared with every other user of the same settings. Nothing
    /// connects until the first call.
    pub fn shared(settings: Settings) -> Arc<Redis> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = shared.get_or_insert_with(HashMap::new);
        if let Some(redis) = shared.get(&settings).and_then(Weak::upgrade) {
            return redis;
        }
        shared.retain(|_, redis| redis.strong_count() > 0);
        let redis = Arc::new(Redis {
            name: name_of(&settings.topology),
            settings: settings.clone(),
            connections: ThreadLocal::new(),
            reachable: AtomicBool::new(true),
            failures: AtomicU64::new(0),
        });
        shared.insert(settings, Arc::downgrade(&redis));
        redis
    }

    /// The status of every Redis in use.
    pub fn statuses() -> Vec<Status> {
        let shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        let mut statuses: Vec<Status> = shared
            .iter()
            .flat_map(HashMap::values)
            .filter_map(Weak::upgrade)
            .map(|redis| redis.status())
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    pub fn status(&self) -> Status {
        Status {
            name: self.name.clone(),
            reachable: self.reachable.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs `script` on `key` with `args`, on this worker's connection: one round trip
    /// (`EVALSHA`, and `EVAL` the first time a server lacks the script).
    pub async fn run_script<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[i64],
    ) -> Result<T, Error> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        self.invoke(&invocation).await
    }

    /// Runs a script invocation (its keys in one slot), as [`Redis::run_script`] does.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        self.call(|mut connection| async move {
            match &mut connection {
                Connection::Server(c) => invocation.invoke_async(c).await,
                Connection::Cluster(c) => invocation.invoke_async(c).await,
            }
        })
        .await
    }

    /// Runs one command on this worker's connection. Commands issued at once from one
    /// worker share its connection and go out together.
    pub async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, Error> {
        self.call(|mut connection| async move {
            match &mut connection {
                Connection::Server(c) => command.query_async(c).await,
                Connection::Cluster(c) => command.query_async(c).await,
            }
        })
        .await
    }

    /// A call on this worker's connection, bounded by the timeout; a connection that fails
    /// is forgotten, to be made again.
    async fn call<T, F, Fut>(&self, run: F) -> Result<T, Error>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let result = tokio::time::timeout(self.settings.timeout, async {
            let (connection, generation) = self.connection().await?;
            run(connection).await.map_err(|e| {
                if is_connection_error(&e) {
                    self.forget(generation);
                }
                Error::Redis(e)
            })
        })
        .await
        .unwrap_or(Err(Error::TimedOut));
        self.record(result.is_ok());
        result
    }

    /// A connection of its own, for a command that blocks (`XREAD BLOCK`) and would hold up
    /// every other call on a shared one. Its replies may take `block` longer than the
    /// timeout.
    pub async fn dedicated(&self, block: Duration) -> Result<Dedicated, Error> {
        let connection = tokio::time::timeout(self.settings.timeout, self.connect_for(block))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        self.record(connection.is_ok());
        Ok(Dedicated {
            connection: connection?,
            timeout: self.settings.timeout + block,
        })
    }

    fn record(&self, ok: bool) {
        // Written only when it changes: every worker reads this line, and a store per call
        // would bounce it between their cores.
        if self.reachable.load(Ordering::Relaxed) != ok {
            self.reachable.store(ok, Ordering::Relaxed);
        }
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This worker's connection, made when it has none; with the generation that
    /// [`Redis::forget`] takes.
    async fn connection(&self) -> Result<(Connection, u64), Error> {
        let mut slot = self.connections.get_or_default().lock().await;
        match &slot.state {
            State::Connected(connection) => return Ok((connection.clone(), slot.generation)),
            State::Failed(at) if at.elapsed() < RECONNECT_PAUSE => {
                return Err(Error::Reconnecting(at.elapsed()));
            }
            State::Failed(_) | State::None => {}
        }
        // Other requests of this worker wait here for the same connect: one attempt, not one
        // each.
        match self.connect().await {
            Ok(connection) => {
                slot.generation += 1;
                slot.state = State::Connected(connection.clone());
                Ok((connection, slot.generation))
            }
            Err(e) => {
                tracing::warn!(redis = %self.name, "cannot connect: {e}");
                slot.state = State::Failed(Instant::now());
                Err(e.into())
            }
        }
    }

    /// Drops this worker's connection of `generation` after it failed: the next call
    /// connects again (after [`RECONNECT_PAUSE`]).
    fn forget(&self, generation: u64) {
        if let Some(slot) = self.connections.get() {
            if let Ok(mut slot) = slot.try_lock() {
                if slot.generation == generation && matches!(slot.state, State::Connected(_)) {
                    slot.state = State::Failed(Instant::now());
                }
            }
        }
    }

    async fn connect(&self) -> Result<Connection, RedisError> {
        self.connect_for(Duration::ZERO).await
    }

    /// A new connection whose replies may take `block` longer than the timeout.
    async fn connect_for(&self, block: Duration) -> Result<Connection, RedisError> {
        let settings = &self.settings;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout + block));
        match &settings.topology {
            Topology::Single(address) => {
                let client = Client::open(self.connection_info(address)?)?;
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Connection::Server(connection))
            }
            Topology::Cluster(nodes) => {
                let nodes = nodes
                    .iter()
                    .map(|node| self.connection_info(node))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout + block)
                    // A call is bounded by `timeout` as a whole: retries inside it would
                    // only hide a failing node past it.
                    .retries(1);
                if let Some(username) = &settings.username {
                    builder = builder.username(username);
                }
                if let Some(password) = &settings.password {
                    builder = builder.password(password);
                }
                if let Some(verify) = settings.tls_verify {
                    builder = builder.tls(tls_mode(verify));
                }
                let connection = builder.build()?.get_async_connection().await?;
                Ok(Connection::Cluster(connection))
            }
            Topology::Sentinel {
                sentinels,
                master,
                password,
            } => {
                let addresses = sentinels
                    .iter()
                    .map(|s| ConnectionAddr::Tcp(s.host.clone(), s.port));
                let mut builder =
                    SentinelClientBuilder::new(addresses, master, SentinelServerType::Master)?
                        .set_client_to_redis_db(settings.database);
                if let Some(username) = &settings.username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = &settings.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(password) = password {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                if let Some(verify) = settings.tls_verify {
                    builder = builder.set_client_to_redis_tls_mode(tls_mode(verify));
                }
                let mut client = builder.build()?;
                let connection = client.get_async_connection_with_config(&config).await?;
                Ok(Connection::Server(connection))
            }
        }
    }

    fn connection_info(&self, address: &Address) -> Result<ConnectionInfo, RedisError> {
        let settings = &self.settings;
        let addr = match settings.tls_verify {
            None => ConnectionAddr::Tcp(address.host.clone(), address.port),
            Some(verify) => ConnectionAddr::TcpTls {
                host: address.host.clone(),
                port: address.port,
                insecure: !verify,
                tls_params: None,
            },
        };
        let mut redis = RedisConnectionInfo::default().set_db(settings.database);
        if let Some(username) = &settings.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &settings.password {
            redis = redis.set_password(password);
        }
        Ok(addr.into_connection_info()?.set_redis_settings(redis))
    }
}

fn timed_out() -> RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}

fn tls_mode(verify: bool) -> TlsMode {
    if verify {
        TlsMode::Secure
    } else {
        TlsMode::Insecure
    }
}

fn name_of(topology: &Topology) -> String {
    let list = |addresses: &[Address]| {
        addresses
            .iter()
            .map(Address::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    match topology {
        Topology::Single(address) => address.to_string(),
        Topology::Cluster(nodes) => format!("cluster:{}", list(nodes)),
        Topology::Sentinel {
            sentinels, master, ..
        } => format!("sentinel:{master}@{}", list(sentinels)),
    }
}

/// Whether `error` says the connection is unusable, rather than that a command failed. A
/// server that became a replica (`READONLY`, after a Sentinel failover) is one to leave: the
/// next connection asks the Sentinels for the master again.
fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// A connection of one caller's own (see [`Redis::dedicated`]).
pub struct Dedicated {
    connection: Connection,
    timeout: Duration,
}

impl Dedicated {
    /// Runs one command, which may block up to the `block` the connection was made for.
    pub async fn query<T: FromRedisValue>(&mut self, command: &Cmd) -> Result<T, Error> {
        let reply = async {
            match &mut self.connection {
                Connection::Server(c) => command.query_async(c).await,
                Connection::Cluster(c) => command.query_async(c).await,
            }
        };
        tokio::time::timeout(self.timeout, reply)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
            .map_err(Error::Redis)
    }
}

/// A worker's connection to one Redis.
#[derive(Default)]
struct Slot {
    state: State,
    /// Counts the connections made, so that a failure forgets only the one it happened on.
    generation: u64,
}

#[derive(Default)]
enum State {
    #[default]
    None,
    Connected(Connection),
    /// The last connect, or the connection, failed at this instant.
    Failed(Instant),
}

/// One server's multiplexed connection (a single server, or a Sentinel's master), or a
/// cluster's. Cloning shares it.
#[derive(Clone)]
enum Connection {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}
