//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4 load balancer or
//! accelerator puts before a connection's first byte to say whom it carries, and that Pylon
//! puts before its own to upstreams that ask for it.
//!
//! Parsing is incremental and never reads past the header: [`parse`] says how many bytes the
//! header takes, or that more are needed, so the bytes after it (a TLS ClientHello, an HTTP
//! request) stay where they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What starts every version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the protocol's own bound).
const V1_MAX: usize = 107;
/// Version 2's fixed part: the signature, version and command, family, length.
const V2_FIXED: usize = 16;

/// Whom a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// The sender speaks for itself (a health check: v2 `LOCAL`, v1 `UNKNOWN`), or carries
    /// something other than TCP or UDP over IP: the connection's own addresses stand.
    Local,
    /// A client's connection: `source` is the client, `destination` the address it reached.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The header, and how many bytes it took.
    Complete(Header, usize),
    /// A header's start, not its end: read more.
    Incomplete,
    /// Not a PROXY protocol header, or a broken one.
    Invalid(&'static str),
}

/// Why a connection's header could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before its PROXY protocol header ended")]
    Closed,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads the header that starts `stream`, and not a byte more: what follows (a TLS
/// ClientHello, an HTTP request) stays in the socket for whoever reads next. Bytes are looked
/// at before they are taken, and taken only as far as the header goes.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Header, HeaderError> {
    let mut taken = Vec::new();
    let mut peeked = [0u8; 512];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let start = taken.len();
        taken.extend_from_slice(&peeked[..n]);
        match parse(&taken) {
            Parsed::Complete(header, length) => {
                taken.truncate(length);
                stream.read_exact(&mut taken[start..]).await?;
                return Ok(header);
            }
            // Every byte seen is the header's: take them all, and look at what comes next.
            Parsed::Incomplete => {
                stream.read_exact(&mut taken[start..]).await?;
            }
            Parsed::Invalid(reason) => return Err(HeaderError::Invalid(reason)),
        }
    }
}

/// Reads a version 1 or 2 header at the start of `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let starts = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    if bytes.is_empty() {
        Parsed::Incomplete
    } else if starts(&V2_SIGNATURE) {
        if bytes.len() < V2_SIGNATURE.len() {
            Parsed::Incomplete
        } else {
            parse_v2(bytes)
        }
    } else if starts(b"PROXY ") {
        parse_v1(bytes)
    } else {
        Parsed::Invalid("the connection does not start with a PROXY protocol header")
    }
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    let Some(end) = bytes.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Parsed::Invalid("a PROXY v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&bytes[..end]) else {
        return Parsed::Invalid("a PROXY v1 header that is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Some(Header::Local),
        ["PROXY", family @ ("TCP4" | "TCP6"), source, destination, source_port, destination_port] =>
        {
            let v6 = *family == "TCP6";
            let address = |text: &str| -> Option<IpAddr> {
                match text.parse::<IpAddr>().ok()? {
                    ip @ IpAddr::V4(_) if !v6 => Some(ip),
                    ip @ IpAddr::V6(_) if v6 => Some(ip),
                    _ => None,
                }
            };
            // Ports are decimal without leading zeros, as the protocol writes them.
            let port = |text: &str| -> Option<u16> {
                let canonical = text == "0" || !text.starts_with('0');
                canonical.then(|| text.parse().ok()).flatten()
            };
            (|| {
                Some(Header::Proxied {
                    source: SocketAddr::new(address(source)?, port(source_port)?),
                    destination: SocketAddr::new(address(destination)?, port(destination_port)?),
                })
            })()
        }
        _ => None,
    };
    match header {
        Some(header) => Parsed::Complete(header, end + 2),
        None => Parsed::Invalid("a malformed PROXY v1 header"),
    }
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    if bytes.len() < V2_FIXED {
        return Parsed::Incomplete;
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return Parsed::Invalid("a PROXY v2 header of another version");
    }
    let length = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let total = V2_FIXED + length;
    if bytes.len() < total {
        return Parsed::Incomplete;
    }
    let body = &bytes[V2_FIXED..total];
    let header = match command {
        0x0 => Header::Local,
        0x1 => match v2_addresses(bytes[13], body) {
            Ok(header) => header,
            Err(reason) => return Parsed::Invalid(reason),
        },
        _ => return Parsed::Invalid("a PROXY v2 header with an unknown command"),
    };
    Parsed::Complete(header, total)
}

/// The addresses of a v2 `PROXY` command; what follows them (TLVs) is skipped.
fn v2_addresses(family: u8, body: &[u8]) -> Result<Header, &'static str> {
    let short = "a PROXY v2 header shorter than its addresses";
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family >> 4 {
        // AF_INET: 4 + 4 address bytes, 2 + 2 port bytes.
        0x1 => {
            if body.len() < 12 {
                return Err(short);
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // AF_INET6: 16 + 16, then 2 + 2.
        0x2 => {
            if body.len() < 36 {
                return Err(short);
            }
            let ip = |at: usize| {
                let octets: [u8; 16] = body[at..at + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // AF_UNSPEC, AF_UNIX: nothing Pylon can route or log by.
        0x0 | 0x3 => Ok(Header::Local),
        _ => Err("a PROXY v2 header with an unknown address family"),
    }
}

/// The version 1 header for a connection from `source` to `destination` (both of one family).
pub(crate) fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        )
        .into_bytes(),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        )
        .into_bytes(),
        // Mixed families (an IPv4 client reaching an IPv6 upstream): nothing to say in v1.
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

/// The version 2 header for a TCP connection from `source` to `destination`.
pub(crate) fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    // Version 2, command PROXY.
    header.push(0x21);
    let source = canonical(source);
    let destination = canonical(destination);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            header.push(0x11); // TCP over IPv4
            header.extend_from_slice(&12u16.to_be_bytes());
            header.extend_from_slice(&s.ip().octets());
            header.extend_from_slice(&d.ip().octets());
            header.extend_from_slice(&s.port().to_be_bytes());
            header.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            header.push(0x21); // TCP over IPv6
            header.extend_from_slice(&36u16.to_be_bytes());
            header.extend_from_slice(&v6(s).octets());
            header.extend_from_slice(&v6(d).octets());
            header.extend_from_slice(&s.port().to_be_bytes());
            header.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    header
}

/// An IPv4 client seen on a dual-stack socket (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), address.port()),
            None => address,
        },
        IpAddr::V4(_) => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn reads_version_1_byte_for_byte() {
        let text = b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(text),
            Parsed::Complete(
                Header::Proxied {
                    source: addr("192.168.0.1:56324"),
                    destination: addr("10.0.0.2:443"),
                },
                43
            )
        );
        let six = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n";
        assert_eq!(
            parse(six),
            Parsed::Complete(
                Header::Proxied {
                    source: addr("[2001:db8::1]:4000"),
                    destination: addr("[2001:db8::2]:80"),
                },
                six.len()
            )
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Parsed::Complete(Header::Local, 35)
        );
        // Cut anywhere before its end, it asks for more.
        for cut in 1..text.len().min(43) {
            assert_eq!(parse(&text[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_broken_version_1_headers() {
        for broken in [
            &b"PROXY TCP4 192.168.0.1 10.0.0.2 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.2 1 2\r\n",
            b"PROXY TCP6 192.168.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 10.0.0.2 065535 2\r\n",
            b"PROXY TCP4 192.168.0.1 10.0.0.2 65536 2\r\n",
            b"PROXY TCP4  192.168.0.1 10.0.0.2 1 2\r\n",
            b"PROXY SCTP 192.168.0.1 10.0.0.2 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(
                matches!(parse(broken), Parsed::Invalid(_)),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&endless), Parsed::Invalid(_)));
    }

    #[test]
    fn reads_version_2_byte_for_byte() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        bytes.extend_from_slice(&[192, 168, 0, 1, 10, 0, 0, 2]);
        bytes.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        bytes.extend_from_slice(b"\x16\x03\x01"); // a TLS ClientHello follows
        let proxied = Header::Proxied {
            source: addr("192.168.0.1:56324"),
            destination: addr("10.0.0.2:443"),
        };
        assert_eq!(parse(&bytes), Parsed::Complete(proxied, 28));
        for cut in 1..28 {
            assert_eq!(parse(&bytes[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        // TLVs after the addresses are skipped, within the stated length.
        let mut with_tlv = V2_SIGNATURE.to_vec();
        with_tlv.extend_from_slice(&[0x21, 0x11, 0x00, 0x13]);
        with_tlv.extend_from_slice(&[192, 168, 0, 1, 10, 0, 0, 2, 0xdc, 0x04, 0x01, 0xbb]);
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        assert_eq!(parse(&with_tlv), Parsed::Complete(proxied, 35));
        // LOCAL: a health check of the balancer's own.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local), Parsed::Complete(Header::Local, 16));
    }

    #[test]
    fn refuses_broken_version_2_headers() {
        let fixed = |ver_cmd: u8, family: u8, length: u16| {
            let mut bytes = V2_SIGNATURE.to_vec();
            bytes.extend_from_slice(&[ver_cmd, family]);
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(&vec![0; usize::from(length)]);
            bytes
        };
        assert!(
            matches!(parse(&fixed(0x11, 0x11, 12)), Parsed::Invalid(_)),
            "version 1 in v2"
        );
        assert!(
            matches!(parse(&fixed(0x22, 0x11, 12)), Parsed::Invalid(_)),
            "command 2"
        );
        assert!(
            matches!(parse(&fixed(0x21, 0x11, 8)), Parsed::Invalid(_)),
            "too short"
        );
        assert!(
            matches!(parse(&fixed(0x21, 0x21, 20)), Parsed::Invalid(_)),
            "too short v6"
        );
        assert!(
            matches!(parse(&fixed(0x21, 0x51, 12)), Parsed::Invalid(_)),
            "family 5"
        );
    }

    #[test]
    fn writes_what_it_reads() {
        for (source, destination) in [
            (addr("192.168.0.1:56324"), addr("10.0.0.2:443")),
            (addr("[2001:db8::1]:4000"), addr("[2001:db8::2]:80")),
        ] {
            let proxied = Header::Proxied {
                source,
                destination,
            };
            let v1 = encode_v1(source, destination);
            assert_eq!(parse(&v1), Parsed::Complete(proxied, v1.len()));
            let v2 = encode_v2(source, destination);
            assert_eq!(parse(&v2), Parsed::Complete(proxied, v2.len()));
        }
        assert_eq!(
            encode_v1(addr("192.168.0.1:56324"), addr("10.0.0.2:443")),
            b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\n"
        );
        // A client seen through a dual-stack socket is written as the IPv4 address it is.
        let v2 = encode_v2(addr("[::ffff:192.168.0.1]:1"), addr("10.0.0.2:2"));
        assert_eq!(v2[13], 0x11);
    }
}
