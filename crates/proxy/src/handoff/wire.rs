//! The handoff socket itself: a unix `SOCK_SEQPACKET` socket carrying short text messages, each
//! with at most one file descriptor attached.
//!
//! Through rustix rather than nix: rustix hands received descriptors over as `OwnedFd`, where
//! nix gives raw numbers that only `unsafe` code could take ownership of, and this crate
//! forbids `unsafe`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::HandoffError;

/// Longest message either side sends (an address and a few words).
const MAX_MESSAGE: usize = 256;

/// A message and the descriptor that came with it.
pub(super) struct Message {
    pub text: String,
    pub fd: Option<OwnedFd>,
}

/// Connects to the handoff socket at `path`; `None` when no process listens there (no file,
/// or one left behind by a process that is gone).
pub(super) fn connect(path: &Path) -> io::Result<Option<OwnedFd>> {
    let socket = seqpacket()?;
    match rustix::net::connect(&socket, &SocketAddrUnix::new(path)?) {
        Ok(()) => Ok(Some(socket)),
        Err(Errno::NOENT | Errno::CONNREFUSED) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Listens at `path`, replacing whatever socket is there. The socket is bound under a
/// temporary name and renamed into place, so the path never leads nowhere: a process starting
/// at that moment finds either the old socket or this one. Only this user may connect.
/// Returns the socket and the identity (device, inode) of the file it put in place.
pub(super) fn listen(path: &Path) -> io::Result<(OwnedFd, (u64, u64))> {
    if let Ok(existing) = std::fs::symlink_metadata(path) {
        if !existing.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
    }
    let mut temporary = PathBuf::from(path);
    temporary
        .as_mut_os_string()
        .push(format!(".{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let socket = seqpacket()?;
    rustix::net::bind(&socket, &SocketAddrUnix::new(&temporary)?)?;
    let placed = (|| {
        // Before `listen`: until then nobody can connect, whatever the umask allowed.
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        rustix::net::listen(&socket, 8)?;
        std::fs::rename(&temporary, path)?;
        let placed = std::fs::symlink_metadata(path)?;
        Ok((placed.dev(), placed.ino()))
    })();
    match placed {
        Ok(id) => Ok((socket, id)),
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            Err(e)
        }
    }
}

/// Whether the file at `path` is still the one `listen` put there.
pub(super) fn is_ours(path: &Path, id: (u64, u64)) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == id)
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Bounds every send and receive on `socket`, so that a stuck peer cannot hang a process.
pub(super) fn set_timeout(socket: &OwnedFd, timeout: Duration) -> io::Result<()> {
    sockopt::set_socket_timeout(socket, Timeout::Recv, Some(timeout))?;
    sockopt::set_socket_timeout(socket, Timeout::Send, Some(timeout))?;
    Ok(())
}

/// The pid of the process at the other end, which must run as the same user as this one.
pub(super) fn peer_pid(socket: &OwnedFd) -> Result<u32, HandoffError> {
    let peer = sockopt::socket_peercred(socket).map_err(io::Error::from)?;
    if peer.uid != rustix::process::geteuid() {
        return Err(HandoffError::OtherUser(peer.uid.as_raw()));
    }
    Ok(peer.pid.as_raw_nonzero().get().unsigned_abs())
}

pub(super) fn send(socket: &OwnedFd, text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    let iov = [IoSlice::new(text.as_bytes())];
    // A datagram goes whole or not at all; NOSIGNAL: a peer that is gone is an error, not
    // a SIGPIPE that kills this process.
    rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// The next message; `None` when the peer closed the connection.
pub(super) fn recv(socket: &OwnedFd) -> Result<Option<Message>, HandoffError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
            .map_err(io::Error::from)?
    };
    // Every descriptor received is owned from here on, so none leaks whatever happens next.
    let mut fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    if received
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(HandoffError::Protocol("message too long".to_owned()));
    }
    if received.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if fds.len() > 1 {
        return Err(HandoffError::Protocol(format!(
            "{} descriptors in one message",
            fds.len()
        )));
    }
    let text = std::str::from_utf8(&buf[..received.bytes])
        .map_err(|_| HandoffError::Protocol("not UTF-8".to_owned()))?;
    Ok(Some(Message {
        text: text.to_owned(),
        fd: fds.pop(),
    }))
}

/// Sends `text`; for replies whose failure changes nothing for the sender.
pub(super) fn tell(socket: &OwnedFd, text: &str) {
    if let Err(e) = send(socket, text, None) {
        tracing::debug!("handoff socket: sending {text:?}: {e}");
    }
}

/// Whether `fd` is a listening TCP socket, what a handoff carries for most kinds.
pub(super) fn is_tcp_listener(fd: impl AsFd) -> io::Result<bool> {
    let fd = fd.as_fd();
    Ok(sockopt::socket_type(fd)? == SocketType::STREAM
        && is_ip(fd)?
        && sockopt::socket_acceptconn(fd)?)
}

/// Whether `fd` is a UDP socket, what a handoff carries for the UDP listeners.
pub(super) fn is_udp_socket(fd: impl AsFd) -> io::Result<bool> {
    let fd = fd.as_fd();
    Ok(sockopt::socket_type(fd)? == SocketType::DGRAM && is_ip(fd)?)
}

fn is_ip(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let family = sockopt::socket_domain(fd)?;
    Ok(family == AddressFamily::INET || family == AddressFamily::INET6)
}
