//! Raw TCP: an echo upstream, and the echo load through an L4 proxy. `--conns` connections,
//! each sending `--size` bytes and waiting for them back, over and over; with `--reconnect`
//! each exchange is on a new connection (connect, exchange, close), which measures what a
//! connection costs the proxy.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::args::Args;
use crate::window::Window;

pub async fn echo_server(addr: &str) -> Result<String, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    eprintln!(
        "pylon-loadgen: tcp echo on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    loop {
        let (mut tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let (mut read, mut write) = tcp.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

pub async fn run(addr: &str, args: &Args) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let conns: usize = args.num("conns", 50)?;
    let size: usize = args.num("size", 64)?;
    let reconnect = args.flag("reconnect");
    let message: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let window = Window::from_args(args)?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (message, window) = (message.clone(), window.clone());
        tasks.spawn(async move {
            let failure = if reconnect {
                reconnecting(addr, &message, &window).await
            } else {
                kept(addr, &message, &window).await
            }
            .err();
            if failure.is_some() {
                window.error();
            }
            failure
        });
    }
    Ok(window.report(tasks).await)
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(tcp)
}

/// Sends `message` and reads as many bytes back.
async fn exchange(tcp: &mut TcpStream, message: &[u8], buf: &mut [u8]) -> Result<(), String> {
    tcp.write_all(message).await.map_err(|e| e.to_string())?;
    tcp.read_exact(&mut buf[..message.len()])
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn kept(addr: SocketAddr, message: &[u8], window: &Window) -> Result<(), String> {
    let mut tcp = connect(addr).await?;
    let mut buf = vec![0u8; message.len()];
    while window.open() {
        exchange(&mut tcp, message, &mut buf).await?;
        window.done(false);
    }
    Ok(())
}

async fn reconnecting(addr: SocketAddr, message: &[u8], window: &Window) -> Result<(), String> {
    let mut buf = vec![0u8; message.len()];
    while window.open() {
        let mut tcp = connect(addr).await?;
        exchange(&mut tcp, message, &mut buf).await?;
        drop(tcp);
        window.done(false);
    }
    Ok(())
}
