//! Zero-downtime restarts: a new `pylon run` takes the listening sockets over from the running
//! one instead of binding its own.
//!
//! Binding again with `SO_REUSEPORT` is not enough: every socket of a reuseport group has its
//! own accept queue, and when the old process closes its sockets, the connections still waiting
//! in their queues are reset. Passing the very same sockets on, as nginx, HAProxy and Envoy do,
//! keeps every queue alive: whichever process holds a socket accepts from it.
//!
//! The exchange, over the old process's unix socket (`SOCK_SEQPACKET`, so each message arrives
//! whole and a descriptor never comes apart from the line that describes it):
//!
//! 1. The new process connects and says `take 1` (the protocol version).
//! 2. The old one sends each listening socket in a message of its own, `socket <listener>
//!    <kind> <configured address>` (the kind: `http`, `https`, `tcp`, `tcp+tls`, each maybe
//!    with `+proxy`; `udp`; `control`, `metrics`, `admin`) with the descriptor attached
//!    (`SCM_RIGHTS`), then `end <count>`. It keeps serving meanwhile. The control API's, the
//!    metrics listener's and the Admin API's sockets go too: their ports are fixed, and the
//!    new process could not bind them while the old one holds them.
//! 3. A new process whose config store admits one process at a time (the embedded store)
//!    says `release store`. The old one stops taking Admin API requests (new ones wait in the
//!    listening socket's queue, for the new process), answers those in flight, lets go of the
//!    store once its last write is on disk, and says `released`. Its workers serve on from the
//!    configuration they have; the new process opens the store.
//! 4. The new process starts its workers on the sockets (binding more on the same address
//!    when it has more workers, giving a worker several when it has fewer), puts its own
//!    handoff socket in place of the old one's, says `ready`, and serves the Admin API.
//! 5. The old process stops accepting and drains as on SIGTERM. Its copies of the sockets
//!    close, but the sockets live on in the new process, queued connections included.
//!
//! Whoever finds nobody at the socket starts on its own. A new process that gets the sockets
//! but fails before `ready` leaves the old one serving as if nothing had happened (taking the
//! store back, and Admin API requests again, if it had let go of them); an old process that
//! is already stopping refuses, and the new one binds its own sockets (or, needing the store
//! the old one holds until it exits, fails).

mod server;
mod takeover;
mod wire;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use socket2::SockRef;

use crate::accept::{Protocol, Serves};

pub use server::{HandoffEvent, HandoffServer, StoreRelease};
pub use takeover::Takeover;

/// What can go wrong on the handoff socket.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The other side said something this version does not understand.
    #[error("unexpected message on the handoff socket: {0}")]
    Protocol(String),
    /// The other side declined, and said why.
    #[error("the other process refused the handoff: {0}")]
    Refused(String),
    /// Listening sockets are only passed between processes of the same user.
    #[error("the process at the handoff socket runs as another user (uid {0})")]
    OtherUser(u32),
}

/// Listening sockets by listen address: those a process hands over, or has inherited.
#[derive(Default)]
pub struct Listeners {
    groups: Vec<Group>,
}

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A data-plane listener.
    Proxy(Serves),
    /// The control API ([`crate::ControlApi`]).
    Control,
    /// The metrics listener ([`crate::MetricsApi`]).
    Metrics,
    /// The Admin API, which lives outside this crate: see [`Listeners::take_admin`].
    Admin,
}

/// The sockets of one listen address (one per worker of the process that bound them):
/// listening TCP sockets, or bound UDP sockets for a [`Kind`] that serves datagrams.
struct Group {
    /// The address as the configuration says it (port 0 included).
    configured: SocketAddr,
    /// The address actually bound.
    local: SocketAddr,
    kind: Kind,
    sockets: Vec<OwnedFd>,
}

impl Kind {
    fn word(self) -> String {
        match self {
            Kind::Proxy(serves) => serves.word(),
            Kind::Control => "control".to_owned(),
            Kind::Metrics => "metrics".to_owned(),
            Kind::Admin => "admin".to_owned(),
        }
    }

    fn from_word(word: &str) -> Option<Kind> {
        Serves::all()
            .map(Kind::Proxy)
            .chain([Kind::Control, Kind::Metrics, Kind::Admin])
            .find(|kind| kind.word() == word)
    }

    /// Its sockets are UDP sockets rather than listening TCP ones.
    fn is_datagram(self) -> bool {
        matches!(self, Kind::Proxy(serves) if serves.protocol == Protocol::Udp)
    }
}

/// The address `socket` is bound to.
pub(crate) fn local_addr(socket: &OwnedFd) -> std::io::Result<SocketAddr> {
    SockRef::from(socket)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))
}

impl Listeners {
    pub(crate) fn push(
        &mut self,
        configured: SocketAddr,
        kind: Kind,
        sockets: Vec<OwnedFd>,
    ) -> std::io::Result<()> {
        let Some(first) = sockets.first() else {
            return Ok(());
        };
        self.groups.push(Group {
            configured,
            local: local_addr(first)?,
            kind,
            sockets,
        });
        Ok(())
    }

    /// The sockets for the listen address `requested`: those of the first listener of that
    /// kind configured the same way, or bound at exactly that address (the previous
    /// configuration may have said port 0 where this one names the port it got). Empty when
    /// there are none.
    pub(crate) fn take(&mut self, requested: SocketAddr, kind: Kind) -> Vec<OwnedFd> {
        let found = self
            .groups
            .iter()
            .position(|g| g.kind == kind && (g.configured == requested || g.local == requested));
        match found {
            Some(i) => self.groups.remove(i).sockets,
            None => Vec::new(),
        }
    }

    /// The Admin API's listening socket for `addr`, if a predecessor handed one over.
    pub fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        self.take_tcp(addr, Kind::Admin)
    }

    /// The listening TCP socket of the control API or the metrics listener at `addr`, if a
    /// predecessor handed one over.
    pub(crate) fn take_tcp(&mut self, addr: SocketAddr, kind: Kind) -> Option<TcpListener> {
        self.take(addr, kind).pop().map(TcpListener::from)
    }

    /// Adds a copy of the Admin API's listening socket, for a successor to take over.
    pub fn share_admin(
        &mut self,
        configured: SocketAddr,
        listener: &tokio::net::TcpListener,
    ) -> std::io::Result<()> {
        use std::os::fd::AsFd;
        let copy = listener.as_fd().try_clone_to_owned()?;
        self.push(configured, Kind::Admin, vec![copy])
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpStream, UdpSocket};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("pylon-{name}-{}.sock", std::process::id()))
    }

    fn any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn a_successor_gets_the_very_sockets_then_the_old_process_hears_it_serves() {
        let path = socket_path("handoff");
        let http = TcpListener::bind(any_port()).unwrap();
        let https = TcpListener::bind(any_port()).unwrap();
        let udp = UdpSocket::bind(any_port()).unwrap();
        let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
        let udp_addr = udp.local_addr().unwrap();
        let mut own = Listeners::default();
        let groups = [
            (
                Serves::http(false, false),
                OwnedFd::from(http.try_clone().unwrap()),
            ),
            (
                Serves::http(true, false),
                OwnedFd::from(https.try_clone().unwrap()),
            ),
            (Serves::udp(), OwnedFd::from(udp.try_clone().unwrap())),
        ];
        for (serves, socket) in groups {
            own.push(any_port(), Kind::Proxy(serves), vec![socket])
                .unwrap();
        }
        let mut server = HandoffServer::start(&path, own).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only this user may take the sockets");

        // Blocking, on this thread: the server side has a thread of its own.
        let mut takeover = Takeover::connect(&path).unwrap().unwrap();
        assert_eq!(takeover.pid(), std::process::id());
        assert_eq!(takeover.socket_count(), 3);
        let mut inherited = takeover.take_listeners();
        // Matched by the configured address and scheme, or by the address bound.
        assert!(inherited
            .take(https_addr, Kind::Proxy(Serves::http(false, false)))
            .is_empty());
        let tls = inherited.take(https_addr, Kind::Proxy(Serves::http(true, false)));
        let mut plain = inherited.take(any_port(), Kind::Proxy(Serves::http(false, false)));
        let mut datagrams = inherited.take(udp_addr, Kind::Proxy(Serves::udp()));
        assert_eq!((plain.len(), tls.len(), datagrams.len()), (1, 1, 1));

        // The very socket: a connection made to the original is accepted on the copy.
        let client = TcpStream::connect(http_addr).unwrap();
        let plain = TcpListener::from(plain.remove(0));
        plain.set_nonblocking(false).unwrap();
        let (accepted, peer) = plain.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(accepted);
        // And a datagram sent to the original UDP socket is read on the copy.
        let sender = UdpSocket::bind(any_port()).unwrap();
        sender.send_to(b"hello", udp_addr).unwrap();
        let copy = UdpSocket::from(datagrams.remove(0));
        copy.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = copy.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"hello"[..], sender.local_addr().unwrap())
        );

        takeover.finish().unwrap();
        assert!(matches!(
            server.next().await,
            HandoffEvent::Succeeded(pid) if pid == std::process::id()
        ));
        server.close();
        assert!(
            !path.exists(),
            "the socket file is removed by the process that made it"
        );
        assert!(Takeover::connect(&path).unwrap().is_none());
    }

    #[tokio::test]
    async fn the_store_goes_to_a_successor_that_asks_and_comes_back_if_it_fails() {
        let path = socket_path("store");
        let mut server = HandoffServer::start(&path, Listeners::default()).unwrap();
        // Each successor blocks on a thread of its own: this one answers the server's events.
        let successor = |serves: bool| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut takeover = Takeover::connect(&path).unwrap().unwrap();
                let released = takeover.release_store();
                if serves && released.is_ok() {
                    takeover.finish().unwrap();
                }
                released
            })
        };
        let release = |event| match event {
            HandoffEvent::ReleaseStore(release) => release,
            other => panic!("the successor asked for the store, not {other:?}"),
        };

        // The owner does not let go (it is stopping): the successor is refused.
        let refused = successor(true);
        drop(release(server.next().await));
        let refusal = refused.join().unwrap().unwrap_err();
        assert!(matches!(refusal, HandoffError::Refused(_)), "{refusal}");

        // Released to a successor that then fails: the store comes back.
        let failing = successor(false);
        release(server.next().await).done();
        failing.join().unwrap().unwrap();
        assert!(matches!(server.next().await, HandoffEvent::StoreReturned));

        // Released to a successor that serves: it is the last word.
        let serving = successor(true);
        release(server.next().await).done();
        serving.join().unwrap().unwrap();
        assert!(matches!(
            server.next().await,
            HandoffEvent::Succeeded(pid) if pid == std::process::id()
        ));
        server.close();
    }

    #[test]
    fn a_descriptor_that_is_not_the_socket_its_kind_says_is_refused() {
        let path = socket_path("mismatch");
        let tcp = TcpListener::bind(any_port()).unwrap();
        let mut own = Listeners::default();
        own.push(any_port(), Kind::Proxy(Serves::udp()), vec![tcp.into()])
            .unwrap();
        let server = HandoffServer::start(&path, own).unwrap();
        let refused = Takeover::connect(&path).err().expect("a refused takeover");
        assert_eq!(
            refused.to_string(),
            "unexpected message on the handoff socket: a `udp` descriptor that is not a UDP socket"
        );
        server.close();
    }

    #[test]
    fn a_stale_socket_file_means_nobody_to_take_over_from() {
        let path = socket_path("stale");
        let server = HandoffServer::start(&path, Listeners::default()).unwrap();
        // What a killed process leaves: the file, with nobody listening.
        let kept = path.with_extension("kept");
        std::fs::hard_link(&path, &kept).unwrap();
        server.close();
        std::fs::rename(&kept, &path).unwrap();
        assert!(Takeover::connect(&path).unwrap().is_none());
        // And a new server replaces it.
        let server = HandoffServer::start(&path, Listeners::default()).unwrap();
        let takeover = Takeover::connect(&path).unwrap().unwrap();
        assert_eq!(takeover.socket_count(), 0);
        drop(takeover);
        server.close();
    }
}
