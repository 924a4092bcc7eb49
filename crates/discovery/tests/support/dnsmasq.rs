//! A real dnsmasq for tests: authoritative for `pylon.test` on a free loopback port, answering
//! from a hosts file the test replaces ([`Dnsmasq::set_hosts`]) and from SRV records given at
//! start, every record with a TTL of one second. Killed when dropped.
//!
//! Needs `dnsmasq` at /usr/sbin or on the PATH (Debian: `apt-get install dnsmasq-base`, which
//! `scripts/test.sh` does); without it a test fails, saying so.
#![allow(dead_code)] // Each test uses a part.

use std::fs;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The domain whose names dnsmasq answers for, NXDOMAIN included.
pub const DOMAIN: &str = "pylon.test";

const READY_WITHIN: Duration = Duration::from_secs(20);

pub struct Dnsmasq {
    dir: tempfile::TempDir,
    ip: String,
    port: u16,
    /// `--srv-host` values: `_service._proto.name,target,port,priority,weight`.
    srv: Vec<String>,
    process: Option<Child>,
}

impl Dnsmasq {
    /// Started on 127.0.0.1 with `hosts` (hosts-file lines) and `srv` records, and ready.
    pub fn start(hosts: &str, srv: &[&str]) -> Dnsmasq {
        Dnsmasq::start_on("127.0.0.1", free_port(), hosts, srv)
    }

    /// Started on port 53 of a loopback address of its own, as a `resolv.conf` can name it
    /// (it has no port): needs the privilege to bind port 53.
    pub fn start_on_port_53(hosts: &str) -> Dnsmasq {
        for _ in 0..100 {
            let ip = format!("127.53.{}.{}", varying_byte(), varying_byte().max(1));
            // The probe is closed before dnsmasq binds the port.
            let probe = UdpSocket::bind((ip.as_str(), 53)).map(drop);
            match probe {
                Ok(()) => return Dnsmasq::start_on(&ip, 53, hosts, &[]),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    panic!("this test runs dnsmasq on port 53, which needs root: {e}")
                }
                Err(_) => continue,
            }
        }
        panic!("no loopback address with port 53 free");
    }

    fn start_on(ip: &str, port: u16, hosts: &str, srv: &[&str]) -> Dnsmasq {
        let dir = tempfile::Builder::new()
            .prefix("dnsmasq-test-")
            .tempdir()
            .expect("cannot create a temporary directory for dnsmasq");
        let mut dnsmasq = Dnsmasq {
            dir,
            ip: ip.to_owned(),
            port,
            srv: srv.iter().map(|s| s.to_string()).collect(),
            process: None,
        };
        dnsmasq.write_hosts(hosts);
        dnsmasq.spawn();
        dnsmasq
    }

    /// `<ip>:<port>`, as `discovery.dns.servers` takes it.
    pub fn server(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Replaces the hosts file and has dnsmasq read it again (SIGHUP).
    pub fn set_hosts(&mut self, hosts: &str) {
        self.write_hosts(hosts);
        let process = self.process.as_ref().expect("dnsmasq is not running");
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(process.id().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -HUP failed: {status}");
    }

    /// Kills dnsmasq: queries go unanswered (refused) until [`Dnsmasq::restart`].
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts dnsmasq again on the same port, with `srv` records this time.
    pub fn restart(&mut self, srv: &[&str]) {
        self.kill();
        self.srv = srv.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    fn write_hosts(&self, hosts: &str) {
        // Written aside then renamed, so that dnsmasq never reads half a file.
        let staged = self.dir.path().join("hosts.new");
        fs::write(&staged, hosts).expect("cannot write the hosts file");
        fs::rename(&staged, self.hosts_path()).expect("cannot replace the hosts file");
    }

    fn spawn(&mut self) {
        let program = ["/usr/sbin/dnsmasq", "dnsmasq"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "these tests need a real `dnsmasq` (Debian: `apt-get install dnsmasq-base`), \
                     or run scripts/test.sh, which installs it"
                )
            });
        let log = fs::File::create(self.log_path()).expect("cannot create dnsmasq's log");
        let mut command = Command::new(program);
        command
            .arg("--no-daemon")
            .arg(format!("--port={}", self.port))
            .arg(format!("--listen-address={}", self.ip))
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--conf-file=/dev/null")
            .arg("--pid-file=")
            .arg(format!("--local=/{DOMAIN}/"))
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .arg("--local-ttl=1")
            .arg("--auth-ttl=1")
            .args(self.srv.iter().map(|srv| format!("--srv-host={srv}")));
        if is_root() {
            // Left to itself, dnsmasq started by root drops to `nobody`, who cannot read the
            // temporary directory.
            command.arg("--user=root");
        }
        let process = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share dnsmasq's log"))
            .stderr(log)
            .spawn()
            .expect("cannot start dnsmasq");
        self.process = Some(process);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let process = self.process.as_mut().expect("dnsmasq is running");
            if let Ok(Some(status)) = process.try_wait() {
                panic!(
                    "dnsmasq exited ({status}) while starting:\n{}",
                    fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if TcpStream::connect((self.ip.as_str(), self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq not listening within {READY_WITHIN:?}:\n{}",
                fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A byte that differs between test processes and calls, enough to keep loopback addresses of
/// tests running side by side apart.
fn varying_byte() -> u8 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id()) as u8
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A port free for both TCP and UDP on loopback (dnsmasq serves both on one).
fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let port = tcp
            .local_addr()
            .expect("bound socket has an address")
            .port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}
