//! After a protocol upgrade (WebSocket): the two connections become one byte stream in each
//! direction. Bytes are relayed as they arrive, whatever frames they hold, so a large frame
//! is never buffered whole. The tunnel ends when either side closes (the other is told with
//! a FIN), on an error, or when neither side has sent anything for the idle timeout.

use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Bytes read per read call, in each direction.
const CHUNK: usize = 16 * 1024;

/// Bytes relayed each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Relays until one side closes or both stay silent for `idle`. `client_early` and
/// `upstream_early` are bytes each side sent that were read along with the upgrade
/// handshake; they go out first.
#[allow(clippy::too_many_arguments)]
pub async fn run<CR, CW, UR, UW>(
    client_read: &mut CR,
    client_write: &mut CW,
    client_early: &mut BytesMut,
    upstream_read: &mut UR,
    upstream_write: &mut UW,
    upstream_early: &mut BytesMut,
    idle: Duration,
) -> Relayed
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let last_activity = Cell::new(Instant::now());
    let to_upstream = Cell::new(0u64);
    let to_client = Cell::new(0u64);
    let upload = pump(
        client_read,
        upstream_write,
        client_early,
        &last_activity,
        &to_upstream,
    );
    let download = pump(
        upstream_read,
        client_write,
        upstream_early,
        &last_activity,
        &to_client,
    );
    let idle_watch = async {
        loop {
            let deadline = last_activity.get() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        _ = upload => {}
        _ = download => {}
        _ = idle_watch => {}
    }
    Relayed {
        to_upstream: to_upstream.get(),
        to_client: to_client.get(),
    }
}

/// One direction: `early` bytes first, then whatever `from` sends, until it closes (then
/// `to` gets a FIN) or either side fails.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    early: &mut BytesMut,
    last_activity: &Cell<Instant>,
    relayed: &Cell<u64>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !early.is_empty() {
        if to.write_all(early).await.is_err() {
            return;
        }
        relayed.set(relayed.get() + early.len() as u64);
        early.clear();
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        last_activity.set(Instant::now());
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
        relayed.set(relayed.get() + n as u64);
        last_activity.set(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn relays_both_ways_early_bytes_first_and_ends_when_one_side_closes() {
        let (mut client, mut gateway_client) = duplex(64);
        let (mut upstream, mut gateway_upstream) = duplex(64);
        let mut client_early = BytesMut::from(&b"c0"[..]);
        let mut upstream_early = BytesMut::from(&b"u0"[..]);
        let relay = async {
            let (mut cr, mut cw) = tokio::io::split(&mut gateway_client);
            let (mut ur, mut uw) = tokio::io::split(&mut gateway_upstream);
            run(
                &mut cr,
                &mut cw,
                &mut client_early,
                &mut ur,
                &mut uw,
                &mut upstream_early,
                Duration::from_secs(30),
            )
            .await
        };
        let peers = async {
            client.write_all(b"c1").await.unwrap();
            let mut got = [0u8; 4];
            upstream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"c0c1");
            upstream.write_all(b"u1").await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"u0u1");
            drop(upstream);
            // The upstream's close reaches the client as end of stream.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        };
        let (relayed, ()) = tokio::join!(relay, peers);
        assert_eq!(
            relayed,
            Relayed {
                to_upstream: 4,
                to_client: 4
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_after_the_idle_timeout() {
        let (_client, mut gateway_client) = duplex(64);
        let (_upstream, mut gateway_upstream) = duplex(64);
        let (mut cr, mut cw) = tokio::io::split(&mut gateway_client);
        let (mut ur, mut uw) = tokio::io::split(&mut gateway_upstream);
        let started = Instant::now();
        run(
            &mut cr,
            &mut cw,
            &mut BytesMut::new(),
            &mut ur,
            &mut uw,
            &mut BytesMut::new(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
