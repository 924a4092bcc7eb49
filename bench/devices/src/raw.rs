//! One connection outside the fleet, for hostile-input tests: send arbitrary bytes, then read
//! whatever comes back until the peer closes or a deadline passes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connects to `addr`, writes `bytes`, then reads for up to `read_timeout` in all. Returns what
/// was read and whether the peer closed the connection (end of stream or a reset) within that
/// time. A write the peer refuses part way (it closed early) is not an error: what it answered
/// before closing is still read.
///
/// A gateway that closes with unread bytes of ours pending makes its kernel send a reset, and
/// a reset can discard bytes it sent just before: send exactly the bytes a gateway will read to
/// see its answer reliably.
pub fn raw_session(
    addr: SocketAddr,
    bytes: &[u8],
    read_timeout: Duration,
) -> io::Result<(Vec<u8>, bool)> {
    let deadline = Instant::now() + read_timeout;
    let mut stream = TcpStream::connect_timeout(&addr, read_timeout)?;
    // Ignored: the answer to a refused write is whatever the read below finds.
    let _ = stream.write_all(bytes);
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((received, false));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok((received, true)),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok((received, false))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok((received, true)),
        }
    }
}
