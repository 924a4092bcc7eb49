//! Real etcd servers for tests: one member or a static cluster of several, on free loopback
//! ports, with their data in a temporary directory; members can be killed, stopped, restarted
//! and wiped. Every process is killed when the [`EtcdCluster`] is dropped.
//!
//! Needs `etcd` and `etcdctl` on the `PATH` (Debian: `apt-get install etcd-server`, which
//! `scripts/test.sh` does); without them a test fails, saying so, rather than passing unseen.
//! Depends on nothing but std and `tempfile`, so that any crate's tests can include it with
//! `#[path = ".../support/etcd.rs"] mod etcd;`.
#![allow(dead_code)] // Each test crate uses a part.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a member may take to start and join its cluster (elections included).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a stopped member may take to exit before it is killed.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// `name=peer URL` for every member, as `--initial-cluster` takes it.
    initial_cluster: String,
    /// Changed by a wipe, so that the new cluster is not mistaken for the old one.
    token: String,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

impl EtcdCluster {
    /// One member, running and ready.
    pub fn single() -> EtcdCluster {
        EtcdCluster::start(1)
    }

    /// A static cluster of `size` members, all running and ready.
    pub fn start(size: usize) -> EtcdCluster {
        assert!(size > 0, "a cluster needs a member");
        require_installed("etcd");
        require_installed("etcdctl");
        let dir = tempfile::Builder::new()
            .prefix("etcd-test-")
            .tempdir()
            .expect("cannot create a temporary directory for etcd");
        let ports = free_ports(2 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("member{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            token: format!("pylon-test-{}", ports[0]),
            dir,
            members,
            initial_cluster,
        };
        cluster.restart(&(0..size).collect::<Vec<_>>());
        cluster
    }

    /// Every member's client URL, in member order, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[member].client_port)
    }

    /// Kills `member` with SIGKILL: no goodbye to clients or peers.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut process) = self.members[member].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Stops `member` with SIGTERM, killing it if it has not exited in time.
    pub fn stop(&mut self, member: usize) {
        let Some(mut process) = self.members[member].process.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(process.id().to_string())
            .status();
        let deadline = Instant::now() + EXIT_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = process.kill();
        let _ = process.wait();
    }

    /// Freezes `member` with SIGSTOP: its connections stay open but nothing answers on them.
    pub fn pause(&mut self, member: usize) {
        self.signal(member, "STOP");
    }

    /// Thaws a member frozen by [`EtcdCluster::pause`].
    pub fn resume(&mut self, member: usize) {
        self.signal(member, "CONT");
    }

    /// The member that is the cluster's leader now, as the running members report it.
    pub fn leader(&self) -> usize {
        // `endpoint status` prints one line per member: URL, ID, version, DB size, is leader, ...
        let status = self.etcdctl(&["endpoint", "status"]);
        let leader_url = status
            .lines()
            .map(|line| line.split(", ").collect::<Vec<_>>())
            .find(|fields| fields.get(4) == Some(&"true"))
            .map(|fields| fields[0].to_owned())
            .unwrap_or_else(|| panic!("no member reports being the leader:\n{status}"));
        (0..self.members.len())
            .find(|&i| self.endpoint(i) == leader_url)
            .unwrap_or_else(|| panic!("the leader {leader_url} is none of this cluster's members"))
    }

    /// Starts `members` (those not running) again with the data they had, and waits until each
    /// is ready. Members of a cluster that lost its quorum must be restarted together.
    pub fn restart(&mut self, members: &[usize]) {
        for &member in members {
            if self.members[member].process.is_none() {
                self.spawn(member);
            }
        }
        for &member in members {
            self.wait_ready(member);
        }
    }

    /// Replaces a one-member cluster with a new, empty one on the same port: its revision starts
    /// again from 1.
    pub fn wipe_and_restart(&mut self) {
        assert_eq!(
            self.members.len(),
            1,
            "only a one-member cluster can be wiped (a wiped member cannot rejoin its cluster)"
        );
        self.kill(0);
        fs::remove_dir_all(self.data_dir(0)).expect("cannot remove etcd's data directory");
        self.token = format!("{}-wiped", self.token);
        self.restart(&[0]);
    }

    /// Runs `etcdctl` (API v3) against the running members; returns its output, or panics
    /// with it if the command failed.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let endpoints = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.process.is_some())
            .map(|(i, _)| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",");
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=5s", "--command-timeout=15s"])
            .args(args)
            .output()
            .expect("cannot run etcdctl");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn signal(&self, member: usize, signal: &str) {
        let process = self.members[member]
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("etcd {} is not running", self.members[member].name));
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(process.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    fn data_dir(&self, member: usize) -> PathBuf {
        self.dir.path().join(&self.members[member].name)
    }

    fn log_path(&self, member: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[member].name))
    }

    fn spawn(&mut self, member: usize) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(member))
            .expect("cannot create etcd's log file");
        let stderr = log.try_clone().expect("cannot share etcd's log file");
        let m = &self.members[member];
        let client_url = format!("http://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let process = Command::new("etcd")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", self.data_dir(member).display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--initial-cluster-state=new")
            // Elections that a busy test machine does not set off by being slow.
            .arg("--heartbeat-interval=200")
            .arg("--election-timeout=3000")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("cannot start etcd");
        self.members[member].process = Some(process);
    }

    /// Waits until `member` reports itself healthy (it has a leader and serves reads).
    fn wait_ready(&mut self, member: usize) {
        let port = self.members[member].client_port;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(process) = &mut self.members[member].process {
                if let Ok(Some(status)) = process.try_wait() {
                    self.members[member].process = None;
                    panic!(
                        "etcd {} exited ({status}) while starting:\n{}",
                        self.members[member].name,
                        self.log_tail(member)
                    );
                }
            }
            if is_healthy(port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd {} not healthy within {READY_WITHIN:?}:\n{}",
                    self.members[member].name,
                    self.log_tail(member)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self, member: usize) -> String {
        let mut log = String::new();
        if let Ok(mut file) = File::open(self.log_path(member)) {
            let _ = file.read_to_string(&mut log);
        }
        let start = log.len().saturating_sub(3000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(0);
        log[start..].to_owned()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            self.kill(member);
        }
    }
}

fn require_installed(program: &str) {
    if let Err(e) = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        panic!(
            "these tests need a real `{program}` on the PATH ({e}): install etcd \
             (Debian: `apt-get install etcd-server`), or run scripts/test.sh, which does"
        );
    }
}

/// Ports nothing listens on now. All are held at once so that none is handed out twice.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound socket has an address").port())
        .collect()
}

/// Whether etcd's `/health` on `port` says `"health":"true"`.
fn is_healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.contains(r#""health":"true""#)
}
