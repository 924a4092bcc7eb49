//! gRPC through the gateway: a real gRPC client and server (tonic) with `scheme: grpc`, every
//! kind of call, statuses and metadata in headers and trailers, large streams, the gateway's
//! own errors as gRPC statuses, and the upstream connection shared and remade.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use support::grpc_server::Method;
use support::{closed_port, Pylon};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tonic::body::BoxBody;
use tonic::codec::{ProstCodec, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    count: u32,
    #[prost(bytes = "vec", tag = "3")]
    blob: Vec<u8>,
}

fn echo(text: &str, count: u32) -> Echo {
    Echo {
        text: text.to_owned(),
        count,
        blob: Vec::new(),
    }
}

// === the upstream: a tonic server written without codegen ===

type EchoStream = Pin<Box<dyn Stream<Item = Result<Echo, Status>> + Send>>;

/// `test.Echo`: Unary, ServerStream, ClientStream and Bidi.
#[derive(Clone)]
struct EchoService {
    name: &'static str,
}

impl NamedService for EchoService {
    const NAME: &'static str = "test.Echo";
}

impl Service<http::Request<BoxBody>> for EchoService {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        let name = self.name;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
            Ok(match request.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Method(move |r| unary(name, r)), request).await,
                "/test.Echo/ServerStream" => {
                    grpc.server_streaming(Method(server_stream), request).await
                }
                "/test.Echo/ClientStream" => {
                    grpc.client_streaming(Method(client_stream), request).await
                }
                "/test.Echo/Bidi" => grpc.streaming(Method(bidi), request).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Echoes the text with the server's name; `x-client` comes back as `x-echo`, the forwarding
/// headers as `x-seen-for`. `fail` is answered NOT_FOUND with a message and trailer metadata.
async fn unary(name: &'static str, request: Request<Echo>) -> Result<Response<Echo>, Status> {
    let metadata = request.metadata().clone();
    let message = request.into_inner();
    if message.text == "fail" {
        let mut status = Status::not_found("no such thing: ünïcode % too");
        status
            .metadata_mut()
            .insert("x-detail", MetadataValue::from_static("why"));
        return Err(status);
    }
    let mut response = Response::new(Echo {
        text: format!("{} from {name}", message.text),
        count: message.count,
        blob: message.blob,
    });
    for (from, to) in [("x-client", "x-echo"), ("x-forwarded-for", "x-seen-for")] {
        if let Some(value) = metadata.get(from) {
            response.metadata_mut().insert(to, value.clone());
        }
    }
    Ok(response)
}

/// `count` messages of `blob.len()` bytes each; `fail-late` then ends with ABORTED.
async fn server_stream(request: Request<Echo>) -> Result<Response<EchoStream>, Status> {
    let message = request.into_inner();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..message.count {
            let item = Echo {
                text: format!("item {i}"),
                count: i,
                blob: message.blob.clone(),
            };
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        if message.text == "fail-late" {
            let _ = tx.send(Err(Status::aborted("gave up late"))).await;
        }
    });
    Ok(Response::new(
        Box::pin(ReceiverStream::new(rx)) as EchoStream
    ))
}

/// Sums the counts and the blob bytes of every message.
async fn client_stream(request: Request<Streaming<Echo>>) -> Result<Response<Echo>, Status> {
    let mut messages = request.into_inner();
    let (mut count, mut bytes, mut n) = (0, 0, 0);
    while let Some(message) = messages.message().await? {
        count += message.count;
        bytes += message.blob.len();
        n += 1;
    }
    Ok(Response::new(echo(
        &format!("{n} messages, {bytes} bytes"),
        count,
    )))
}

/// Answers each message as it comes.
async fn bidi(request: Request<Streaming<Echo>>) -> Result<Response<EchoStream>, Status> {
    let mut messages = request.into_inner();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok(Some(message)) = messages.message().await {
            let reply = echo(&format!("re: {}", message.text), message.count * 2);
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::new(
        Box::pin(ReceiverStream::new(rx)) as EchoStream
    ))
}

/// Accepted connections, counted.
struct Counting {
    listener: TcpListener,
    accepted: Arc<AtomicUsize>,
}

impl Stream for Counting {
    type Item = std::io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.listener.poll_accept(cx) {
            Poll::Ready(Ok((stream, _))) => {
                self.accepted.fetch_add(1, Ordering::SeqCst);
                Poll::Ready(Some(Ok(stream)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A TLS connection to the test's gRPC server.
struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

struct GrpcUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    async fn start(name: &'static str) -> GrpcUpstream {
        Self::on("127.0.0.1:0".parse().unwrap(), name).await
    }

    async fn on(addr: SocketAddr, name: &'static str) -> GrpcUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let incoming = Counting {
            listener,
            accepted: accepted.clone(),
        };
        Self::serve(addr, accepted, incoming, name)
    }

    /// Behind TLS, offering only `h2` by ALPN; `accepted` counts the handshakes that chose it.
    async fn tls(name: &'static str, issued: &support::tls::Issued) -> GrpcUpstream {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(issued.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(support::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<std::io::Result<TlsIo>>(16);
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx, counted) = (acceptor.clone(), tx.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = tx.send(Ok(TlsIo(tls))).await;
                });
            }
        });
        Self::serve(addr, accepted, ReceiverStream::new(rx), name)
    }

    fn serve<I, IO>(
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        incoming: I,
        name: &'static str,
    ) -> GrpcUpstream
    where
        I: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            Server::builder()
                .add_service(EchoService { name })
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        GrpcUpstream {
            addr,
            accepted,
            stop: Some(stop),
            server,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
    }
}

fn routes(addr: SocketAddr) -> String {
    format!(
        "routes:\n  - id: grpc\n    uri: /test.Echo/*\n    upstream:\n      scheme: grpc\n      nodes:\n        \"{addr}\": 1\n"
    )
}

// === the client ===

async fn client(pylon: &Pylon) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{}", pylon.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

async fn call_unary(
    grpc: &mut tonic::client::Grpc<Channel>,
    request: Request<Echo>,
) -> Result<Response<Echo>, Status> {
    grpc.ready().await.unwrap();
    grpc.unary(request, path("/test.Echo/Unary"), ProstCodec::default())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_passes_with_its_metadata() {
    let up = GrpcUpstream::start("up").await;
    let pylon = Pylon::start(&routes(up.addr), "");
    let mut grpc = client(&pylon).await;

    let mut request = Request::new(echo("hi", 7));
    request
        .metadata_mut()
        .insert("x-client", MetadataValue::from_static("c1"));
    let response = call_unary(&mut grpc, request).await.unwrap();
    assert_eq!(response.metadata().get("x-echo").unwrap(), "c1");
    assert_eq!(response.metadata().get("x-seen-for").unwrap(), "127.0.0.1");
    assert_eq!(response.into_inner(), echo("hi from up", 7));

    let log = pylon.wait_access_log(1);
    assert_eq!(log[0]["uri"], "/test.Echo/Unary");
    assert_eq!(log[0]["route_id"], "grpc");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["upstream_addr"], up.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_come_through_in_trailers() {
    let up = GrpcUpstream::start("up").await;
    let pylon = Pylon::start(&routes(up.addr), "");
    let mut grpc = client(&pylon).await;

    let status = call_unary(&mut grpc, Request::new(echo("fail", 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such thing: ünïcode % too");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "why");

    // An error after messages: the messages, then the status from the trailers.
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            Request::new(echo("fail-late", 3)),
            path("/test.Echo/ServerStream"),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(stream.message().await.unwrap().unwrap().count, i);
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Aborted, "gave up late")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_delivers_every_message_of_a_large_stream() {
    let up = GrpcUpstream::start("up").await;
    let pylon = Pylon::start(&routes(up.addr), "");
    let mut grpc = client(&pylon).await;

    // 200 messages of 32 KiB: several MB, far beyond every flow-control window on the way.
    let request = Echo {
        text: "big".to_owned(),
        count: 200,
        blob: vec![0xab; 32 * 1024],
    };
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(
            Request::new(request),
            path("/test.Echo/ServerStream"),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while let Some(message) = stream.message().await.unwrap() {
        assert_eq!(message.count, received);
        assert_eq!(message.blob.len(), 32 * 1024);
        received += 1;
    }
    assert_eq!(received, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming_sends_every_message() {
    let up = GrpcUpstream::start("up").await;
    let pylon = Pylon::start(&routes(up.addr), "");
    let mut grpc = client(&pylon).await;

    let messages = (1..=100).map(|i| Echo {
        text: String::new(),
        count: i,
        blob: vec![1; 20 * 1024],
    });
    grpc.ready().await.unwrap();
    let response = grpc
        .client_streaming(
            Request::new(tokio_stream::iter(messages)),
            path("/test.Echo/ClientStream"),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.count, 5050);
    assert_eq!(
        response.text,
        format!("100 messages, {} bytes", 100 * 20 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_streaming_answers_each_message_before_the_next_is_sent() {
    let up = GrpcUpstream::start("up").await;
    let pylon = Pylon::start(&routes(up.addr), "");
    let mut grpc = client(&pylon).await;

    let (tx, rx) = mpsc::channel(1);
    grpc.ready().await.unwrap();
    let mut replies = grpc
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            path("/test.Echo/Bidi"),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    // Lock-step: a reply that waited for the end of the request stream would never come.
    for i in 0..20 {
        tx.send(echo(&format!("m{i}"), i)).await.unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert_eq!(reply, echo(&format!("re: m{i}"), i * 2));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_grpc_statuses() {
    let closed = closed_port();
    let pylon = Pylon::start(&routes(closed.addr), "");
    let mut grpc = client(&pylon).await;

    let status = call_unary(&mut grpc, Request::new(echo("hi", 1)))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "502 Bad Gateway")
    );

    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            Request::new(echo("hi", 1)),
            path("/other.Service/Call"),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unimplemented, "404 Route Not Found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_share_one_upstream_connection_per_worker_and_a_lost_one_is_remade() {
    let up = GrpcUpstream::start("first").await;
    let addr = up.addr;
    let pylon = Pylon::start(&routes(addr), "");
    // Many client connections, many calls at once: the upstream sees one connection per
    // worker at most.
    let mut calls = Vec::new();
    for i in 0..20 {
        let mut grpc = client(&pylon).await;
        calls.push(tokio::spawn(async move {
            for j in 0..5 {
                let reply = call_unary(&mut grpc, Request::new(echo("x", i * 10 + j)))
                    .await
                    .unwrap();
                assert_eq!(reply.into_inner().count, i * 10 + j);
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    let connections = up.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&connections),
        "{connections} upstream connections for 100 calls on 2 workers"
    );

    // The upstream goes away and comes back on the same address: the next calls reconnect.
    up.stop().await;
    let up = GrpcUpstream::on(addr, "second").await;
    let mut grpc = client(&pylon).await;
    let mut answered = None;
    for _ in 0..10 {
        if let Ok(reply) = call_unary(&mut grpc, Request::new(echo("again", 1))).await {
            answered = Some(reply.into_inner().text);
            break;
        }
    }
    assert_eq!(answered.as_deref(), Some("again from second"));
    assert!(up.accepted.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcs_upstreams_are_spoken_to_in_http2_over_tls() {
    let ca = support::tls::TestCa::new("upstream ca");
    let up = GrpcUpstream::tls("secure", &ca.issue(&["grpc.test"])).await;
    let routes = format!(
        "routes:\n  - id: grpcs\n    uri: /test.Echo/*\n    upstream:\n      scheme: grpcs\n      tls:\n        verify: false\n      nodes:\n        \"{}\": 1\n",
        up.addr
    );
    let pylon = Pylon::start(&routes, "");
    let mut grpc = client(&pylon).await;
    let reply = call_unary(&mut grpc, Request::new(echo("hi", 3)))
        .await
        .unwrap();
    assert_eq!(reply.into_inner(), echo("hi from secure", 3));
    let status = call_unary(&mut grpc, Request::new(echo("fail", 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        up.accepted.load(Ordering::SeqCst) >= 1,
        "the upstream's TLS handshake chose h2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_on_a_grpc_route_is_refused_not_sent_as_http1() {
    // The "upstream" only records whether the gateway connected to it at all.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    upstream.set_nonblocking(true).unwrap();
    let pylon = Pylon::start(&routes(upstream.local_addr().unwrap()), "");
    let mut conn = support::client::Conn::connect(pylon.addr);
    conn.send(
        b"POST /test.Echo/Unary HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\0\0\0\0\0",
    );
    let res = conn.read_response_to("POST").expect("a response");
    assert_eq!(res.status, 505, "{}", res.text());
    assert!(res.text().contains("HTTP/2"), "{}", res.text());
    let log = pylon.wait_access_log(1);
    assert_eq!(log[0]["status"], 505);
    assert_eq!(log[0]["failure"], "client_refused");
    assert!(
        upstream.accept().is_err(),
        "the gateway connected to the HTTP/2 upstream for an HTTP/1 request"
    );
}
