//! Each worker's idle upstream connections, by node address. Nothing here is shared between
//! workers, so checkout and checkin take no lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;

use crate::snapshot::PoolSettings;
use crate::tls::UpstreamStream;

/// A connection to an upstream node, with its read buffer.
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub buf: BytesMut,
    /// Requests this connection has carried.
    pub requests: u64,
}

struct Idle {
    conn: UpstreamConn,
    expires: Instant,
}

/// Which connections are interchangeable: same node, and for TLS the same settings (server
/// name, client certificate, verification), which the second half identifies; 0 is plain TCP.
pub type PoolKey = (SocketAddr, u64);

#[derive(Default)]
pub struct Pool {
    idle: HashMap<PoolKey, Vec<Idle>>,
}

impl Pool {
    /// The most recently used live idle connection to `addr`, if any.
    pub fn checkout(&mut self, key: PoolKey, now: Instant) -> Option<UpstreamConn> {
        let idle = self.idle.get_mut(&key)?;
        while let Some(entry) = idle.pop() {
            if entry.expires > now && is_quiet(&entry.conn.stream) {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse unless it has served its quota or the pool for `addr` is full.
    pub fn checkin(
        &mut self,
        key: PoolKey,
        conn: UpstreamConn,
        settings: &PoolSettings,
        now: Instant,
    ) {
        if conn.requests >= settings.requests || settings.size == 0 {
            return;
        }
        let idle = self.idle.entry(key).or_default();
        if idle.len() >= settings.size {
            // The oldest goes: the newest is the likeliest to still be open at the other end.
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            expires: now + settings.idle_timeout,
        });
    }

    /// Closes idle connections that expired or that the upstream closed.
    pub fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, idle| {
            idle.retain(|entry| entry.expires > now && is_quiet(&entry.conn.stream));
            !idle.is_empty()
        });
    }

    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

/// An idle connection must have nothing to read: data or EOF means the upstream closed it or
/// sent bytes no request asked for. Tokio answers from its cached readiness, so a quiet
/// connection usually costs no system call here.
/// For TLS the raw socket is probed: an idle TLS connection has no bytes in flight either.
fn is_quiet(stream: &UpstreamStream) -> bool {
    let mut probe = [0u8; 1];
    // Upstream connections are always TCP.
    stream.tcp().is_some_and(
        |tcp| matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use crate::tls::MaybeTls;

    async fn pair(listener: &TcpListener) -> (UpstreamConn, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let conn = UpstreamConn {
            stream: MaybeTls::Plain(client.unwrap()),
            buf: BytesMut::new(),
            requests: 1,
        };
        (conn, server.unwrap().0)
    }

    #[tokio::test]
    async fn reuses_live_connections_and_drops_closed_or_expired_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = (listener.local_addr().unwrap(), 0);
        let settings = PoolSettings {
            size: 2,
            idle_timeout: Duration::from_secs(60),
            requests: 10,
        };
        let mut pool = Pool::default();
        let now = Instant::now();

        let (live, _live_server) = pair(&listener).await;
        let (closed, mut closed_server) = pair(&listener).await;
        pool.checkin(addr, live, &settings, now);
        pool.checkin(addr, closed, &settings, now);
        closed_server.shutdown().await.unwrap();
        drop(closed_server);
        tokio::time::sleep(Duration::from_millis(50)).await;

        // The newest was closed by its server: checkout skips it and returns the live one.
        assert!(pool.checkout(addr, Instant::now()).is_some());
        assert!(pool.checkout(addr, Instant::now()).is_none());

        let (conn, _server) = pair(&listener).await;
        pool.checkin(addr, conn, &settings, now);
        assert!(
            pool.checkout(addr, now + Duration::from_secs(61)).is_none(),
            "expired"
        );

        let (mut spent, _server) = pair(&listener).await;
        spent.requests = 10;
        pool.checkin(addr, spent, &settings, now);
        assert_eq!(
            pool.idle_count(),
            0,
            "a connection past its request quota is closed"
        );
    }
}
