//! The new process's side of a handoff: receive the listening sockets, have the old process
//! let go of the config store if this one needs it, then, once serving, tell the old process
//! to drain.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use socket2::SockRef;

use super::{wire, HandoffError, Kind, Listeners};

/// The protocol this version speaks.
pub(super) const HELLO: &str = "take 1";
/// Said by an old process that is already stopping: its sockets are closing anyway.
pub(super) const STOPPING: &str = "refused stopping";
/// Asks the old process to stop writing to the config store and let go of it.
pub(super) const RELEASE_STORE: &str = "release store";
/// The old process's answer: it will write no more, and has let go of the store.
pub(super) const RELEASED: &str = "released";
/// Tells the old process that this one serves: it stops accepting and drains.
pub(super) const READY: &str = "ready";

/// Every step of the exchange is quick (the old process only sends what it holds); this
/// bounds a peer that hangs.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Releasing the store waits for the old process's Admin API requests in flight.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Listening sockets received from the process being replaced, which keeps serving on them
/// until [`Takeover::finish`].
pub struct Takeover {
    connection: OwnedFd,
    pid: u32,
    listeners: Listeners,
    received: usize,
}

impl Takeover {
    /// Takes the listening sockets of the pylon listening at the handoff socket `path`.
    /// `None` when there is none, or when it is already stopping.
    pub fn connect(path: &Path) -> Result<Option<Takeover>, HandoffError> {
        let Some(connection) = wire::connect(path)? else {
            return Ok(None);
        };
        wire::set_timeout(&connection, STEP_TIMEOUT)?;
        let pid = wire::peer_pid(&connection)?;
        wire::send(&connection, HELLO, None)?;
        let mut groups: Vec<(usize, SocketAddr, Kind, Vec<OwnedFd>)> = Vec::new();
        let mut received = 0;
        loop {
            let message = wire::recv(&connection)?.ok_or_else(|| {
                HandoffError::Protocol(format!("pid {pid} closed the connection"))
            })?;
            let mut words = message.text.split(' ');
            match (words.next(), message.fd) {
                (Some("socket"), Some(fd)) => {
                    let (index, configured, kind) = parse_socket(words)
                        .ok_or_else(|| HandoffError::Protocol(message.text.clone()))?;
                    let socket = checked(fd, kind)?;
                    received += 1;
                    match groups.last_mut() {
                        Some(group) if group.0 == index => group.3.push(socket),
                        _ => groups.push((index, configured, kind, vec![socket])),
                    }
                }
                (Some("end"), None) if words.next() == Some(&received.to_string()) => break,
                _ if message.text == STOPPING => return Ok(None),
                (Some("refused"), None) => {
                    return Err(HandoffError::Refused(
                        message.text["refused".len()..].trim().to_owned(),
                    ))
                }
                _ => return Err(HandoffError::Protocol(message.text)),
            }
        }
        let mut listeners = Listeners::default();
        for (_, configured, kind, sockets) in groups {
            listeners.push(configured, kind, sockets)?;
        }
        Ok(Some(Takeover {
            connection,
            pid,
            listeners,
            received,
        }))
    }

    /// The process the sockets came from.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many listening sockets came over.
    pub fn socket_count(&self) -> usize {
        self.received
    }

    /// The sockets received, for [`crate::Gateway::start`].
    pub fn take_listeners(&mut self) -> Listeners {
        std::mem::take(&mut self.listeners)
    }

    /// Has the old process stop taking writes and let go of the config store (the embedded
    /// store admits one process at a time); returns once it has, and every write it
    /// acknowledged is on disk. It serves requests on meanwhile, from the configuration it
    /// has. Should this process end before [`Takeover::finish`], the old one takes the store
    /// back.
    pub fn release_store(&mut self) -> Result<(), HandoffError> {
        wire::set_timeout(&self.connection, RELEASE_TIMEOUT)?;
        wire::send(&self.connection, RELEASE_STORE, None)?;
        let answer = wire::recv(&self.connection)?.ok_or_else(|| {
            HandoffError::Protocol(format!("pid {} closed the connection", self.pid))
        })?;
        wire::set_timeout(&self.connection, STEP_TIMEOUT)?;
        match answer.text.as_str() {
            RELEASED if answer.fd.is_none() => Ok(()),
            STOPPING => Err(HandoffError::Refused("it is stopping".to_owned())),
            _ => Err(HandoffError::Protocol(answer.text)),
        }
    }

    /// Tells the old process that this one serves on the sockets now: it stops accepting and
    /// drains. An error means the old process did not get the word, usually because it was
    /// stopping anyway.
    pub fn finish(self) -> Result<(), HandoffError> {
        Ok(wire::send(&self.connection, READY, None)?)
    }
}

/// `<listener> <kind> <configured address>`.
fn parse_socket<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<(usize, SocketAddr, Kind)> {
    let index = words.next()?.parse().ok()?;
    let kind = Kind::from_word(words.next()?)?;
    let configured = words.next()?.parse().ok()?;
    words.next().is_none().then_some((index, configured, kind))
}

/// A received descriptor, if it is the socket `kind` says: a listening TCP socket, or a UDP
/// one for a kind that serves datagrams.
fn checked(fd: OwnedFd, kind: Kind) -> Result<OwnedFd, HandoffError> {
    let (fits, expected) = if kind.is_datagram() {
        (wire::is_udp_socket(&fd)?, "a UDP socket")
    } else {
        (wire::is_tcp_listener(&fd)?, "a listening TCP socket")
    };
    if !fits {
        return Err(HandoffError::Protocol(format!(
            "a `{}` descriptor that is not {expected}",
            kind.word()
        )));
    }
    // Shared with the old process (the flag belongs to the socket, not the descriptor), and
    // already set there; set again so this side does not depend on it.
    SockRef::from(&fd).set_nonblocking(true)?;
    Ok(fd)
}
