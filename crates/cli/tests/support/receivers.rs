//! Receivers of what the gateway sends besides proxied requests (loggers' records): a TCP
//! server that keeps the bytes of each connection, and a UDP socket that keeps each
//! datagram. Each serves on its own thread until dropped.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bytes one connection carried so far, and whether it has ended.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

pub struct TcpReceiver {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    stopped: Arc<AtomicBool>,
}

impl TcpReceiver {
    pub fn start() -> TcpReceiver {
        Self::on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Listens on `addr` (to bring a receiver up where one was expected).
    pub fn on(addr: SocketAddr) -> TcpReceiver {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (all, stop) = (connections.clone(), stopped.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(Connection::default());
                    all.len() - 1
                };
                let (all, stop) = (all.clone(), stop.clone());
                std::thread::spawn(move || keep(stream, index, &all, &stop));
            }
        });
        TcpReceiver {
            addr,
            connections,
            stopped,
        }
    }

    /// Every connection so far, in the order they came.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }
}

/// Reads `stream` to its end into connection `index`.
fn keep(mut stream: TcpStream, index: usize, all: &Mutex<Vec<Connection>>, stopped: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut chunk = [0; 16 * 1024];
    while !stopped.load(Ordering::SeqCst) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.lock().unwrap()[index]
                .bytes
                .extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    all.lock().unwrap()[index].closed = true;
}

impl Drop for TcpReceiver {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

pub struct UdpReceiver {
    pub addr: SocketAddr,
    datagrams: Arc<Mutex<Vec<Vec<u8>>>>,
    stopped: Arc<AtomicBool>,
}

impl UdpReceiver {
    pub fn start() -> UdpReceiver {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (all, stop) = (datagrams.clone(), stopped.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0; 65_536];
            while !stop.load(Ordering::SeqCst) {
                if let Ok(n) = socket.recv(&mut buf) {
                    all.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        });
        UdpReceiver {
            addr,
            datagrams,
            stopped,
        }
    }

    /// Every datagram so far, in the order they came.
    pub fn datagrams(&self) -> Vec<Vec<u8>> {
        self.datagrams.lock().unwrap().clone()
    }
}

impl Drop for UdpReceiver {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A loopback address nothing listens on (its port was free a moment ago).
pub fn closed_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
