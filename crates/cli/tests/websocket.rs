//! WebSocket through the gateway: the upgrade passes on routes with `enable_websocket`, frames
//! flow both ways, a close on either side closes the other, and idle tunnels time out.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use support::Pylon;

/// A WebSocket server that echoes every data message; `close_after` makes it close the
/// connection itself after that many messages.
async fn echo_server(close_after: Option<usize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut echoed = 0;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        if ws.send(message).await.is_err() {
                            return;
                        }
                        echoed += 1;
                        if close_after == Some(echoed) {
                            let _ = ws.close(None).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn routes(upstream: SocketAddr, websocket: bool, extra: &str) -> String {
    format!(
        "routes:\n  - id: ws\n    uri: /ws\n    enable_websocket: {websocket}\n{extra}    upstream:\n      nodes:\n        \"{upstream}\": 1\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_through_the_tunnel() {
    let upstream = echo_server(None).await;
    let pylon = Pylon::start(&routes(upstream, true, ""), "");
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", pylon.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);

    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    // A message far larger than any buffer of the gateway's.
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));

    // The client closes: the close reaches the server, whose answer ends the tunnel.
    ws.close(None).await.unwrap();
    let rest = tokio::time::timeout(support::WAIT, async {
        let mut rest = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            rest.push(m);
        }
        rest
    })
    .await
    .expect("the tunnel ends after a close");
    assert!(rest.iter().all(Message::is_close), "{rest:?}");

    let log = pylon.wait_access_log(1);
    assert_eq!(log[0]["status"], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_closing_closes_the_client() {
    let upstream = echo_server(Some(1)).await;
    let pylon = Pylon::start(&routes(upstream, true, ""), "");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", pylon.addr))
        .await
        .unwrap();
    ws.send(Message::text("only one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("only one"));
    let next = tokio::time::timeout(support::WAIT, ws.next())
        .await
        .expect("the server's close arrives");
    assert!(
        matches!(next, Some(Ok(Message::Close(_))) | None),
        "{next:?}"
    );
}

#[test]
fn routes_without_enable_websocket_do_not_upgrade() {
    let up = support::upstream::Upstream::start("plain");
    let pylon = Pylon::start(&routes(up.addr, false, ""), "");
    let res = support::client::raw(
        pylon.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    // An ordinary request reaches the upstream: the upgrade headers are dropped as hop-by-hop.
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "plain");
    let seen = up.received();
    assert!(!seen[0].has_header("upgrade"));
    assert_eq!(
        seen[0].header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_read_timeout() {
    let upstream = echo_server(None).await;
    let pylon = Pylon::start(
        &routes(
            upstream,
            true,
            "    timeout:\n      connect: 1\n      send: 1\n      read: 1\n",
        ),
        "",
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", pylon.addr))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    // Silence on both sides: the gateway ends the tunnel (well within the bound).
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the idle tunnel was not closed");
}
