//! The framed protocol's load: `--conns` connections, each keeping `--inflight` frames of
//! command `--command` with a `--size`-byte body in flight, a new one sent as each answer
//! comes. The layout is the documented example (crates/frames/README.md): `0x09`, a 20-byte
//! header (body length u32, command u16, sequence u32, version u8, flags u8, user id u32, four
//! reserved bytes, all big-endian), the body, `0x0A`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::window::Window;

const START: u8 = 0x09;
const END: u8 = 0x0a;
const HEADER: usize = 20;

pub async fn run(addr: &str, args: &Args) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let conns: usize = args.num("conns", 10)?;
    let inflight: usize = args.num("inflight", 1)?;
    let size: usize = args.num("size", 32)?;
    let command: u16 = args.num("command", 4097)?;
    let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let window = Window::from_args(args)?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (body, window) = (body.clone(), window.clone());
        tasks.spawn(async move {
            let failure = connection(addr, command, &body, inflight, &window)
                .await
                .err();
            if failure.is_some() {
                window.error();
            }
            failure
        });
    }
    Ok(window.report(tasks).await)
}

fn frame(out: &mut Vec<u8>, command: u16, sequence: u32, body: &[u8]) {
    out.push(START);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&42u32.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(body);
    out.push(END);
}

/// The length of the whole frame at the start of `buf`, once its header is in.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    if buf.len() < 1 + HEADER {
        return Ok(None);
    }
    if buf[0] != START {
        return Err(format!("an answer starting with {:#04x}", buf[0]));
    }
    let body = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
    Ok(Some(1 + HEADER + body + 1))
}

async fn connection(
    addr: SocketAddr,
    command: u16,
    body: &[u8],
    inflight: usize,
    window: &Window,
) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut sequence = 0u32;
    let mut out = Vec::new();
    for _ in 0..inflight {
        sequence += 1;
        frame(&mut out, command, sequence, body);
    }
    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    while window.open() {
        let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the gateway closed the connection".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        out.clear();
        let mut at = 0;
        while let Some(len) = frame_len(&buf[at..])? {
            if buf.len() - at < len {
                break;
            }
            let answer_command = u16::from_be_bytes([buf[at + 5], buf[at + 6]]);
            if answer_command != command {
                return Err(format!("an error frame (command {answer_command})"));
            }
            at += len;
            window.done(false);
            sequence = sequence.wrapping_add(1);
            frame(&mut out, command, sequence, body);
        }
        buf.drain(..at);
        if !out.is_empty() {
            tcp.write_all(&out).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
