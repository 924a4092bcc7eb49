//! The WebSocket echo upstream: answers the upgrade, then sends every data frame back
//! unmasked, answers pings, and returns a close. All frames read in one `read` are answered
//! with one `write`, so a busy connection costs it two system calls per batch.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ws_frame::{self, OP_CLOSE, OP_PING, OP_PONG};

/// Upgrade request heads larger than this are refused.
const MAX_HEAD: usize = 16 * 1024;

pub async fn serve(addr: &str) -> Result<String, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    eprintln!(
        "pylon-loadgen: websocket echo on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    loop {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = echo(tcp).await;
        });
    }
}

async fn echo(mut tcp: TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let head_end = loop {
        let n = tcp.read(&mut buf[filled..MAX_HEAD]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        if let Some(at) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if filled == MAX_HEAD {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let key = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    });
    let Some(key) = key else {
        tcp.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await?;
        return Ok(());
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws_frame::accept_key(key)
    );
    tcp.write_all(answer.as_bytes()).await?;
    buf.copy_within(head_end..filled, 0);
    filled -= head_end;

    let mut out = Vec::with_capacity(buf.len());
    loop {
        let mut at = 0;
        let mut closing = false;
        loop {
            match ws_frame::parse(&buf[at..filled]) {
                Ok(header) => {
                    let payload = at + header.payload.start..at + header.payload.end;
                    if let Some(mask) = header.mask {
                        ws_frame::apply_mask(&mut buf[payload.clone()], mask);
                    }
                    let body = &buf[payload.clone()];
                    match header.opcode() {
                        OP_PING => ws_frame::write(&mut out, 0x80 | OP_PONG, body, None),
                        OP_PONG => {}
                        OP_CLOSE => {
                            ws_frame::write(&mut out, 0x80 | OP_CLOSE, body, None);
                            closing = true;
                        }
                        _ => ws_frame::write(&mut out, header.first, body, None),
                    }
                    at = payload.end;
                    if closing {
                        break;
                    }
                }
                Err(needed) => {
                    if let Some(needed) = needed {
                        if needed > buf.len() {
                            buf.resize(needed, 0);
                        }
                    }
                    break;
                }
            }
        }
        if !out.is_empty() {
            tcp.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return Ok(());
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        let n = tcp.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}
