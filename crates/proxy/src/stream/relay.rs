//! Moving a stream connection's bytes both ways until both sides are done, or neither side has
//! sent a byte for the idle timeout.

use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

/// Bytes read at once from either side.
const CHUNK: usize = 16 * 1024;

/// How a relay ended, and what it moved.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Relayed {
    /// Bytes from the client to the upstream.
    pub from_client: u64,
    /// Bytes from the upstream to the client.
    pub from_upstream: u64,
    /// Neither side sent anything for the idle timeout.
    pub idle: bool,
    /// A side failed (reset, a write that could not complete) rather than closing.
    pub broken: bool,
}

/// Relays until both directions have ended (each side's end of input is passed on as a
/// half-close, so a request-then-answer protocol sees the client's end and still answers), a
/// side fails, or nothing moves for `idle`. Without `half_close`, the first side to end ends
/// both, as nginx's stream proxy does by default.
pub(crate) async fn relay<C, U>(client: C, upstream: U, idle: Duration, half_close: bool) -> Relayed
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_in, client_out) = tokio::io::split(client);
    let (upstream_in, upstream_out) = tokio::io::split(upstream);
    let last_moved = Cell::new(Instant::now());
    let (from_client, from_upstream) = (Cell::new(0), Cell::new(0));
    let ended = async {
        let up = copy(
            client_in,
            upstream_out,
            &from_client,
            &last_moved,
            half_close,
        );
        let down = copy(
            upstream_in,
            client_out,
            &from_upstream,
            &last_moved,
            half_close,
        );
        if half_close {
            let (up, down) = tokio::join!(up, down);
            up.and(down)
        } else {
            tokio::select! {
                up = up => up,
                down = down => down,
            }
        }
    };
    let watchdog = async {
        loop {
            let deadline = last_moved.get() + idle;
            tokio::time::sleep_until(deadline).await;
            if last_moved.get() + idle <= Instant::now() {
                return;
            }
        }
    };
    let (idle, broken) = tokio::select! {
        ended = ended => (false, ended.is_err()),
        () = watchdog => (true, false),
    };
    Relayed {
        from_client: from_client.get(),
        from_upstream: from_upstream.get(),
        idle,
        broken,
    }
}

/// One direction: reads until the end of input, writing each read on, then, with
/// `half_close`, half-closes the writing side.
async fn copy<R, W>(
    mut from: ReadHalf<R>,
    mut to: WriteHalf<W>,
    moved: &Cell<u64>,
    last_moved: &Cell<Instant>,
    half_close: bool,
) -> std::io::Result<()>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    // Never zeroed: a read fills what it hands on.
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.clear();
        if from.read_buf(&mut buf).await? == 0 {
            return match half_close {
                true => to.shutdown().await,
                false => Ok(()),
            };
        }
        to.write_all(&buf).await?;
        let n = buf.len();
        moved.set(moved.get() + n as u64);
        last_moved.set(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_go_both_ways_and_each_end_is_passed_on() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let peers = async {
            client_peer.write_all(b"ping").await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            upstream_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping", "the client's end reached the upstream");
            // The upstream still answers after the client's half-close.
            upstream_peer.write_all(b"pong!").await.unwrap();
            upstream_peer.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client_peer.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"pong!");
        };
        let relayed = relay(client, upstream, Duration::from_secs(60), true);
        let (relayed, ()) = tokio::join!(relayed, peers);
        assert_eq!((relayed.from_client, relayed.from_upstream), (4, 5));
        assert!(!relayed.idle && !relayed.broken);
    }

    #[tokio::test]
    async fn without_half_close_the_first_end_ends_both() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        client_peer.write_all(b"ping").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let relayed = relay(client, upstream, Duration::from_secs(60), false).await;
        assert_eq!((relayed.from_client, relayed.from_upstream), (4, 0));
        // The upstream got the bytes, then the end of both; the client no answer.
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        let mut answer = Vec::new();
        client_peer.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_for_the_timeout_is_ended_and_traffic_puts_it_off() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let started = Instant::now();
        let peers = async {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            upstream_peer.read_exact(&mut byte).await.unwrap();
            (client_peer, upstream_peer)
        };
        let (relayed, _peers) = tokio::join!(
            relay(client, upstream, Duration::from_secs(10), true),
            peers
        );
        assert!(relayed.idle);
        assert_eq!(relayed.from_client, 1);
        // Ten seconds after the last byte, not after the start.
        assert!(
            started.elapsed() >= Duration::from_secs(16),
            "{:?}",
            started.elapsed()
        );
    }
}
