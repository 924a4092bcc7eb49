//! A connection that is plain TCP or TLS over TCP, as one type, so that the HTTP code is
//! written once for both. Plain connections keep tokio's lock-free split; only TLS ones, whose
//! two directions share one session state, go through tokio's split.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::tcp::{ReadHalf as TcpReadHalf, WriteHalf as TcpWriteHalf};
use tokio::net::TcpStream;

/// A client's connection to the gateway.
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;
/// The gateway's connection to an upstream node.
pub type UpstreamStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
    /// A client inside the process: the framed-protocol gateway, whose frames become HTTP
    /// requests served like any other.
    InProcess(DuplexStream),
}

/// The TCP connection under either kind of stream.
pub trait TcpCarrier {
    fn tcp(&self) -> &TcpStream;
}

impl TcpCarrier for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl TcpCarrier for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl<T: TcpCarrier> MaybeTls<T> {
    /// The TCP connection underneath; none for an in-process one.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTls::Plain(tcp) => Some(tcp),
            MaybeTls::Tls(tls) => Some(tls.tcp()),
            MaybeTls::InProcess(_) => None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> MaybeTls<T> {
    /// Read and write halves that can be used at the same time.
    pub fn split(&mut self) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
        match self {
            MaybeTls::Plain(tcp) => {
                let (read, write) = tcp.split();
                (ReadHalf::Plain(read), WriteHalf::Plain(write))
            }
            MaybeTls::Tls(tls) => {
                let (read, write) = tokio::io::split(&mut **tls);
                (ReadHalf::Tls(read), WriteHalf::Tls(write))
            }
            MaybeTls::InProcess(duplex) => {
                let (read, write) = tokio::io::split(duplex);
                (ReadHalf::InProcess(read), WriteHalf::InProcess(write))
            }
        }
    }
}

pub enum ReadHalf<'a, T> {
    Plain(TcpReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut T>),
    InProcess(tokio::io::ReadHalf<&'a mut DuplexStream>),
}

pub enum WriteHalf<'a, T> {
    Plain(TcpWriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut T>),
    InProcess(tokio::io::WriteHalf<&'a mut DuplexStream>),
}

/// Forwards each I/O call to whichever variant is there.
macro_rules! delegate_io {
    ($type:ident < $($generic:tt),* >, $($variant:ident),+) => {
        impl<$($generic),*> AsyncRead for $type<$($generic),*>
        where
            T: AsyncRead + AsyncWrite + Unpin,
        {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($type::$variant(io) => Pin::new(io).poll_read(cx, buf),)+
                }
            }
        }
    };
}

macro_rules! delegate_write {
    ($type:ident < $($generic:tt),* >, $($variant:ident),+) => {
        impl<$($generic),*> AsyncWrite for $type<$($generic),*>
        where
            T: AsyncRead + AsyncWrite + Unpin,
        {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($type::$variant(io) => Pin::new(io).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($type::$variant(io) => Pin::new(io).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($type::$variant(io) => io.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($type::$variant(io) => Pin::new(io).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($type::$variant(io) => Pin::new(io).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_io!(MaybeTls<T>, Plain, Tls, InProcess);
delegate_write!(MaybeTls<T>, Plain, Tls, InProcess);
delegate_io!(ReadHalf<'a, T>, Plain, Tls, InProcess);
delegate_write!(WriteHalf<'a, T>, Plain, Tls, InProcess);
