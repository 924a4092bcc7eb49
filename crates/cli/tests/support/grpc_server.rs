//! Pieces of the tonic servers the tests write without codegen (no protoc): a method as a
//! closure, the connections of a test's own listener, and a service served on a fresh port.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpStream};
use tonic::body::BoxBody;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// Serves `service` on a fresh loopback port for as long as the test's runtime runs: its
/// address.
pub async fn serve<S>(service: S) -> SocketAddr
where
    S: Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming(Incoming(listener))
            .await
            .unwrap();
    });
    addr
}

/// A gRPC method as a closure.
#[derive(Clone)]
pub struct Method<F>(pub F);

impl<F, Req, Res, Fut> Service<Request<Req>> for Method<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Res>, Status>>,
{
    type Response = Response<Res>;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Req>) -> Fut {
        (self.0)(request)
    }
}

/// Connections accepted by the test's listener, for `serve_with_incoming`.
pub struct Incoming(pub TcpListener);

impl Stream for Incoming {
    type Item = std::io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_accept(cx)
            .map(|accepted| Some(accepted.map(|(stream, _)| stream)))
    }
}
