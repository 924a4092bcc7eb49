//! Test support: the real `pylon` binary on ephemeral loopback ports, real upstream servers,
//! and a raw HTTP/1.1 client that shows exactly what went over the wire.
#![allow(dead_code)] // each test binary uses its own subset

pub mod client;
pub mod cluster;
pub mod datagram;
pub mod frames;
pub mod grpc_server;
pub mod http2;
pub mod jwt;
pub mod protocols;
pub mod proxy_header;
pub mod receivers;
pub mod stream;
pub mod tls;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bounded wait for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `pylon run` process with its own temp dir, node config and routes file.
pub struct Pylon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The HTTPS listener, when there is one.
    pub https_addr: Option<SocketAddr>,
    /// The listeners whose connections start with a PROXY protocol header, plain and TLS.
    pub proxied_addrs: Vec<SocketAddr>,
    pub proxied_https_addrs: Vec<SocketAddr>,
    /// The stream (L4) listeners in the order pylon printed them, each with its kind: `tcp`,
    /// `tcp+tls`, `tcp+proxy`, `tcp+tls+proxy` or `udp`.
    pub stream_addrs: Vec<(String, SocketAddr)>,
    /// Where a successor takes this pylon over.
    pub handoff_socket: Option<PathBuf>,
    /// What pylon printed up to the line saying it serves.
    pub startup: Vec<String>,
    /// The control API (`/v1/healthcheck`), on a free port of its own.
    pub control: Option<SocketAddr>,
    /// The metrics listener, likewise.
    pub metrics: Option<SocketAddr>,
    /// The Admin API, on nodes that run one.
    pub admin: Option<SocketAddr>,
    stdout_lines: mpsc::Receiver<String>,
}

impl Pylon {
    /// Starts pylon with `routes` (standalone YAML) and extra node config under `proxy:`
    /// (indented YAML lines, may be empty).
    pub fn start(routes: &str, proxy_extra: &str) -> Pylon {
        Self::try_start(routes, proxy_extra).unwrap_or_else(|e| panic!("pylon did not start: {e}"))
    }

    pub fn try_start(routes: &str, proxy_extra: &str) -> Result<Pylon, String> {
        Self::launch(
            routes,
            "\"127.0.0.1:0\"",
            Some("\"127.0.0.1:0\""),
            proxy_extra,
        )
    }

    /// Starts a second pylon, in a temp dir of its own with `routes`, on this one's listen
    /// addresses and handoff socket, as an operator restarting or upgrading would: it takes
    /// the listening sockets over and this one drains and exits. Returns once the new one
    /// serves (its startup lines are in [`Pylon::startup`]).
    pub fn successor(&self, routes: &str, proxy_extra: &str) -> Pylon {
        let handoff = self
            .handoff_socket
            .as_ref()
            .expect("pylon has a handoff socket");
        let extra = format!("  handoff_socket: \"{}\"\n{proxy_extra}", handoff.display());
        let https = self.https_addr.map(|a| format!("\"{a}\""));
        Self::launch(
            routes,
            &format!("\"{}\"", self.addr),
            https.as_deref(),
            &extra,
        )
        .unwrap_or_else(|e| panic!("the successor did not start: {e}"))
    }

    /// Writes the node config (`listen`, `https.listen` unless `proxy_extra` has its own
    /// `https:`) and starts pylon on it.
    fn launch(
        routes: &str,
        listen: &str,
        https_listen: Option<&str>,
        proxy_extra: &str,
    ) -> Result<Pylon, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("apisix.yaml"), routes).unwrap();
        // A `workers` line in `proxy_extra` replaces the default one: YAML refuses a key twice.
        let workers = if proxy_extra.contains("workers:") {
            ""
        } else {
            "  workers: 2\n"
        };
        // Every test gets an HTTPS listener on a free port unless it configures its own.
        let https = match https_listen {
            Some(addr) if !proxy_extra.contains("https:") => {
                format!("  https:\n    listen: [{addr}]\n")
            }
            _ => String::new(),
        };
        let node = format!(
            "proxy:\n  listen: [{listen}]\n{workers}{https}{proxy_extra}\naccess_log:\n  path: access.log\ncontrol:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\nlog:\n  level: info\nconfig:\n  source: yaml\n  file: apisix.yaml\n"
        );
        Self::run_node(dir, &node)
    }

    /// Starts pylon on the node config `node` (whole YAML), in `dir`, which may hold the data
    /// dir of an earlier run. On a node without a proxy, [`Pylon::addr`] is unspecified.
    pub fn run_node(dir: tempfile::TempDir, node: &str) -> Result<Pylon, String> {
        let config = dir.path().join("node.yaml");
        std::fs::write(&config, node).unwrap();
        Self::run_config(dir, &config)
    }

    /// Starts pylon on the node config file `config`, which may live elsewhere and serve other
    /// pylons too (an operator restarting a node runs the same config again), in `dir`, where
    /// it logs.
    pub fn run_config(dir: tempfile::TempDir, config: &Path) -> Result<Pylon, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
            .arg("run")
            .arg("-c")
            .arg(config)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log_path = dir.path().join("pylon.stderr");
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(log_path).unwrap();
            let _ = std::io::copy(&mut BufReader::new(stderr), &mut file);
        });
        let deadline = Instant::now() + WAIT;
        let (mut addr, mut https_addr, mut control, mut handoff_socket) = (None, None, None, None);
        let (mut admin, mut metrics) = (None, None);
        let (mut proxied_addrs, mut proxied_https_addrs) = (Vec::new(), Vec::new());
        let mut stream_addrs = Vec::new();
        let mut startup = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("pylon: proxy listening on http://") {
                        addr = Some(a.parse().unwrap());
                    } else if let Some(a) = line.strip_prefix("pylon: proxy listening on https://")
                    {
                        https_addr = a.split(' ').next().and_then(|a| a.parse().ok());
                    } else if let Some(a) =
                        line.strip_prefix("pylon: control API listening on http://")
                    {
                        control = Some(a.parse().unwrap());
                    } else if let Some(a) = line.strip_prefix("pylon: metrics listening on http://")
                    {
                        metrics = a.split('/').next().and_then(|a| a.parse().ok());
                    } else if let Some(a) =
                        line.strip_prefix("pylon: admin API listening on http://")
                    {
                        admin = Some(a.parse().unwrap());
                    } else if let Some(a) =
                        line.strip_prefix("pylon: PROXY protocol listening on http://")
                    {
                        proxied_addrs.push(a.parse().unwrap());
                    } else if let Some(a) =
                        line.strip_prefix("pylon: PROXY protocol listening on https://")
                    {
                        proxied_https_addrs.push(a.parse().unwrap());
                    } else if let Some(a) = line.strip_prefix("pylon: stream listening on ") {
                        let (kind, addr) = a.split_once("://").expect("kind://address");
                        stream_addrs.push((kind.to_owned(), addr.parse().unwrap()));
                    } else if let Some(path) = line.strip_prefix("pylon: handoff socket: ") {
                        handoff_socket = path.split(' ').next().map(PathBuf::from);
                    }
                    let ready = line.contains(" worker(s); ");
                    startup.push(line);
                    if ready {
                        // Printed after every listener and the handoff socket.
                        return Ok(Pylon {
                            child,
                            dir,
                            addr: addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                            https_addr,
                            proxied_addrs,
                            proxied_https_addrs,
                            stream_addrs,
                            control,
                            metrics,
                            admin,
                            handoff_socket,
                            startup,
                            stdout_lines: rx,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    std::thread::sleep(Duration::from_millis(100));
                    let stderr = std::fs::read_to_string(dir.path().join("pylon.stderr"))
                        .unwrap_or_default();
                    return Err(format!("exited {status:?}; stderr:\n{stderr}"));
                }
            }
        }
    }

    pub fn routes_path(&self) -> PathBuf {
        self.dir.path().join("apisix.yaml")
    }

    /// Replaces the routes file atomically, as a deployment tool would.
    pub fn write_routes(&self, routes: &str) {
        let tmp = self.dir.path().join("apisix.yaml.tmp");
        std::fs::write(&tmp, routes).unwrap();
        std::fs::rename(&tmp, self.routes_path()).unwrap();
    }

    /// Everything pylon logged to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pylon.stderr")).unwrap_or_default()
    }

    /// Waits until stderr contains `needle` (bounded).
    pub fn wait_for_log(&self, needle: &str) {
        wait_until(
            || self.stderr().contains(needle),
            &format!("log line containing {needle:?}"),
        );
    }

    /// The access log's lines so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        read_json_lines(&self.dir.path().join("access.log"))
    }

    /// Waits until the access log has at least `n` lines and returns them.
    pub fn wait_access_log(&self, n: usize) -> Vec<serde_json::Value> {
        wait_until(
            || self.access_log().len() >= n,
            &format!("{n} access log lines"),
        );
        self.access_log()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Takes the temp dir (with the node's data dir), so that a later run can start on it.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `QUIT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit and returns its exit code and stdout lines.
    pub fn wait_exit(&mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.stdout_lines.try_iter().collect());
            }
            assert!(
                Instant::now() < deadline,
                "pylon did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pylon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// Runs the `pylon` binary with `args` in `dir`, with `env` added: exit code, stdout, stderr.
pub fn pylon_command(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `pylon validate` on a file holding `text`: exit code, stdout, stderr.
pub fn validate(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apisix.yaml"), text).unwrap();
    pylon_command(dir.path(), &["validate", "apisix.yaml"], &[])
}

/// Polls `cond` every 20 ms for at most [`WAIT`].
pub fn wait_until(cond: impl FnMut() -> bool, what: &str) {
    wait_until_within(WAIT, cond, what);
}

/// Polls `cond` every 20 ms for at most `within`.
pub fn wait_until_within(within: Duration, mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that refuses connections for as long as this guard lives.
///
/// The port is bound and never listened on, so a connection to it is refused at once (RST),
/// as on any closed port, while no other socket can bind it (it is bound without
/// `SO_REUSEADDR`). Binding a listener on `127.0.0.1:0` and dropping it instead gives the port
/// back: another test of the same binary (they run in parallel) may start an upstream on it,
/// and the "closed" address answers.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

/// Reserves a loopback port that nothing listens on; see [`ClosedPort`].
pub fn closed_port() -> ClosedPort {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    ClosedPort {
        addr,
        _socket: socket,
    }
}

// === reloads ===

impl Pylon {
    /// How many configuration versions pylon has published so far, the first one included.
    pub fn published(&self) -> usize {
        self.stderr().matches("configuration published").count()
    }

    /// Replaces the routes file and waits (bounded) until pylon has published it: every request
    /// sent after this returns sees the new configuration.
    pub fn reload(&self, routes: &str) {
        let before = self.published();
        self.write_routes(routes);
        wait_until(
            || self.published() > before,
            "the new routes file to be published",
        );
    }
}

// === exit ===

impl Pylon {
    /// Once pylon has exited: the stdout lines not yet taken, up to the end of the stream
    /// (bounded). After [`Pylon::wait_exit`] the last lines may still be in the pipe.
    pub fn rest_of_stdout(&mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => return lines,
            }
        }
    }
}
