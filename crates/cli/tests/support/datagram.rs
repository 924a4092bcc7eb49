//! The two ends of UDP sessions through the gateway: an upstream that answers each datagram
//! with its name and the datagram, and keeps what it got and from where; a port that refuses
//! datagrams; and a client.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::WAIT;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// How often the upstream's thread looks whether it should stop.
const POLL: Duration = Duration::from_millis(50);

/// Datagrams an upstream got, each with the address it came from, in the order they came.
type Received = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// An upstream that answers every datagram with `<name>:<datagram>`.
pub struct UdpEcho {
    pub addr: SocketAddr,
    pub name: String,
    received: Received,
    stopped: Arc<AtomicBool>,
}

impl UdpEcho {
    pub fn start(name: &str) -> UdpEcho {
        let socket = UdpSocket::bind(loopback()).unwrap();
        socket.set_read_timeout(Some(POLL)).unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Received::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let (kept, stop, prefix) = (received.clone(), stopped.clone(), format!("{name}:"));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            while !stop.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                // Kept before it is answered: a client that has its answer finds it kept.
                kept.lock().unwrap().push((from, buf[..n].to_vec()));
                let answer = [prefix.as_bytes(), &buf[..n]].concat();
                let _ = socket.send_to(&answer, from);
            }
        });
        UdpEcho {
            addr,
            name: name.to_owned(),
            received,
            stopped,
        }
    }

    /// The answer to `sent`.
    pub fn answer(&self, sent: &[u8]) -> Vec<u8> {
        [self.name.as_bytes(), b":", sent].concat()
    }

    /// Every datagram so far, with the address it came from, in the order they came.
    pub fn received(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A loopback UDP port that refuses datagrams (ICMP port unreachable) for as long as this
/// guard lives: its socket is connected to another address, so the kernel gives it nothing
/// from anywhere else, yet no other socket can bind the port.
pub struct RefusingPort {
    pub addr: SocketAddr,
    _socket: UdpSocket,
}

pub fn refusing_port() -> RefusingPort {
    let socket = UdpSocket::bind(loopback()).unwrap();
    // The discard port: nothing is ever sent there.
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], 9)))
        .unwrap();
    RefusingPort {
        addr: socket.local_addr().unwrap(),
        _socket: socket,
    }
}

/// A client on a loopback port of its own, talking to one gateway address.
pub struct UdpClient {
    socket: UdpSocket,
    to: SocketAddr,
}

impl UdpClient {
    pub fn new(to: SocketAddr) -> UdpClient {
        let socket = UdpSocket::bind(loopback()).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        UdpClient { socket, to }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub fn send(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.to).unwrap();
    }

    /// The next datagram from the gateway (within [`WAIT`]).
    pub fn receive(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = self
                .socket
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no answer from {}: {e}", self.to));
            if from == self.to {
                return buf[..n].to_vec();
            }
        }
    }

    /// Sends `datagram` and returns the answer.
    pub fn ask(&self, datagram: &[u8]) -> Vec<u8> {
        self.send(datagram);
        self.receive()
    }

    /// Whether a datagram has arrived and waits to be read.
    pub fn has_mail(&self) -> bool {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let waiting = self.socket.peek_from(&mut buf).is_ok();
        self.socket.set_nonblocking(false).unwrap();
        waiting
    }
}
