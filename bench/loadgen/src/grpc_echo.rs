//! A gRPC upstream for the transcoding benchmark: every call is answered with its own request
//! message and `grpc-status: 0`, over h2c. A unary method whose input and output types are the
//! same (`bench.Echo/Say`) is thereby served whole, with nothing of a gRPC library in the way.

use bytes::Bytes;
use h2::server;
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::TcpListener;

pub async fn serve(addr: &str) -> Result<String, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    loop {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut conn) = server::handshake(tcp).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    let mut message = Vec::new();
                    while let Some(Ok(data)) = body.data().await {
                        let _ = body.flow_control().release_capacity(data.len());
                        message.extend_from_slice(&data);
                    }
                    let head = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("a static head");
                    let Ok(mut send) = respond.send_response(head, false) else {
                        return;
                    };
                    let _ = send.send_data(Bytes::from(message), false);
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let _ = send.send_trailers(trailers);
                });
            }
        });
    }
}
