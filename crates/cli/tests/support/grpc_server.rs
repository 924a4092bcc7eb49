//! Pieces of the tonic servers the tests write without codegen (no protoc): a method as a
//! closure, and the connections of a test's own listener.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::Service;
use tonic::{Request, Response, Status};

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
