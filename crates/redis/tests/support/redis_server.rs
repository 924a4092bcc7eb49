//! Real Redis servers for tests, each on free loopback ports in a temp dir of its own, killed
//! when dropped: one server ([`RedisServer`], plain or TLS), a Redis Cluster of three masters
//! made with `redis-cli --cluster create` ([`RedisCluster`]), and a Sentinel watching a
//! server ([`Sentinel`]).
//!
//! Needs `redis-server` and `redis-cli` on the PATH (Debian: `apt-get install redis-server`,
//! which `scripts/test.sh` does); without them a test fails, saying so.
#![allow(dead_code)] // Each test uses a part.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_WITHIN: Duration = Duration::from_secs(20);

/// One `redis-server` process.
pub struct RedisServer {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The TLS port, when started with TLS (`port` is then 0: no plain port).
    pub tls_port: Option<u16>,
    args: Vec<String>,
    /// A Sentinel takes none of a data server's persistence settings.
    sentinel: bool,
    process: Option<Child>,
}

impl RedisServer {
    /// A plain server, ready.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with `extra` arguments (`--requirepass`, ...), ready.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let mut args = vec!["--port".to_owned(), port.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut server = RedisServer::new(port, None, args);
        server.spawn();
        server
    }

    /// A server on a TLS port only, with `cert` and `key` (PEM files), not asking clients
    /// for certificates.
    pub fn start_tls(cert: &Path, key: &Path) -> RedisServer {
        let tls_port = free_port();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut server = RedisServer::new(0, Some(tls_port), args);
        server.spawn();
        server
    }

    fn new(port: u16, tls_port: Option<u16>, args: Vec<String>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("redis-test-")
            .tempdir()
            .expect("cannot create a temporary directory for redis");
        RedisServer {
            dir,
            port,
            tls_port,
            args,
            sentinel: false,
            process: None,
        }
    }

    /// `127.0.0.1:<port>` (the TLS port for a TLS server).
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port.unwrap_or(self.port))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let persistence: &[&str] = if self.sentinel {
            &[]
        } else {
            &["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        };
        let process = Command::new("redis-server")
            .args(&self.args)
            .args(persistence)
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server (apt-get install redis-server): {e}")
            });
        self.process = Some(process);
        let port = self.tls_port.unwrap_or(self.port);
        let deadline = Instant::now() + READY_WITHIN;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten())
            {
                panic!("redis-server exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (as a crash would: SIGKILL), keeping its port for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `redis-cli` against this server with `args`: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `redis-cli -p <port> <args>`: its standard output, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    try_redis_cli(port, args).unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"))
}

/// As [`redis_cli`], or why it failed: for a poll across a moment a server drops its
/// clients (a master that becomes a replica closes their connections).
pub fn try_redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (apt-get install redis-server): {e}"));
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A Redis Cluster of three masters (no replicas), every slot assigned, ready.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(RedisServer::address).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(nodes[0].port, &args);
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + READY_WITHIN;
        while !cluster.is_ok() {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn is_ok(&self) -> bool {
        self.nodes
            .iter()
            .all(|node| node.cli(&["cluster", "info"]).contains("cluster_state:ok"))
    }

    /// `host:port` of every node, as `redis_cluster_nodes` takes them.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::address).collect()
    }

    /// The sum over the nodes of `redis-cli <args>`, read as a number.
    pub fn sum(&self, args: &[&str]) -> i64 {
        self.nodes
            .iter()
            .map(|node| node.cli(args).parse::<i64>().unwrap_or(0))
            .sum()
    }
}

/// A Sentinel watching `master` (a [`RedisServer`]) under the name `name`, ready once it
/// answers for it.
pub struct Sentinel {
    server: RedisServer,
}

impl Sentinel {
    pub fn start(name: &str, master: &RedisServer) -> Sentinel {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("sentinel-test-")
            .tempdir()
            .expect("cannot create a temporary directory for redis-sentinel");
        let config: PathBuf = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {} 1\n",
                master.port
            ),
        )
        .expect("cannot write sentinel.conf");
        let mut server = RedisServer {
            dir,
            port,
            tls_port: None,
            args: vec![config.display().to_string(), "--sentinel".to_owned()],
            sentinel: true,
            process: None,
        };
        server.spawn();
        let sentinel = Sentinel { server };
        let deadline = Instant::now() + READY_WITHIN;
        while !sentinel
            .server
            .cli(&["sentinel", "get-master-addr-by-name", name])
            .contains(&master.port.to_string())
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel does not know {name}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinel
    }

    pub fn address(&self) -> String {
        self.server.address()
    }

    /// Waits until the Sentinel knows a replica of `name`.
    pub fn wait_for_replica(&self, name: &str) {
        let deadline = Instant::now() + READY_WITHIN;
        while !self
            .server
            .cli(&["sentinel", "replicas", name])
            .contains("slave")
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel sees no replica of {name}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails `name` over and waits until the Sentinel names the server on `port` as master.
    pub fn failover(&self, name: &str, port: u16) {
        self.server.cli(&["sentinel", "failover", name]);
        let deadline = Instant::now() + READY_WITHIN;
        while !self
            .server
            .cli(&["sentinel", "get-master-addr-by-name", name])
            .contains(&port.to_string())
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel did not promote {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}
