//! WebSocket echo load: `--conns` connections, each upgrading on `--path`, then sending one
//! masked binary message of `--size` bytes and waiting for its echo, over and over.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::window::Window;
use crate::ws_frame::{self, OP_BINARY};

pub async fn run(addr: &str, args: &Args) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let conns: usize = args.num("conns", 50)?;
    let size: usize = args.num("size", 64)?;
    let upgrade = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        args.str("path", "/ws")
    );
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut message = Vec::new();
    ws_frame::write(&mut message, 0x80 | OP_BINARY, &payload, Some([7, 1, 8, 2]));
    let mut echo = Vec::new();
    ws_frame::write(&mut echo, 0x80 | OP_BINARY, &payload, None);
    let script = Arc::new(Script {
        upgrade: upgrade.into_bytes(),
        message,
        echo,
    });
    let window = Window::from_args(args)?;
    let mut connections = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (script, window) = (script.clone(), window.clone());
        connections.spawn(async move {
            let failure = connection(addr, &script, &window).await.err();
            if failure.is_some() {
                window.error();
            }
            failure
        });
    }
    Ok(window.report(connections).await)
}

/// What every connection sends and expects.
struct Script {
    upgrade: Vec<u8>,
    /// One masked binary frame.
    message: Vec<u8>,
    /// The same frame as the server sends it back, unmasked.
    echo: Vec<u8>,
}

/// One connection's life: the upgrade, then message and echo until the window closes. A
/// connection that fails is not replaced: the report counts it.
async fn connection(addr: SocketAddr, script: &Script, window: &Window) -> Result<(), String> {
    let Script {
        upgrade,
        message,
        echo,
    } = script;
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.write_all(upgrade).await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = vec![0u8; echo.len().max(1024)];
    loop {
        let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the upgrade".to_owned());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(format!(
            "upgrade answered {:?}",
            String::from_utf8_lossy(line)
        ));
    }
    let reply = &mut buf[..echo.len()];
    let mut checked = false;
    while window.open() {
        tcp.write_all(message).await.map_err(|e| e.to_string())?;
        tcp.read_exact(reply).await.map_err(|e| e.to_string())?;
        if !checked {
            if reply != echo {
                return Err("the echo differs from the message".to_owned());
            }
            checked = true;
        }
        window.done(false);
    }
    Ok(())
}
