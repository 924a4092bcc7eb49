//! Request variables, APISIX-style (`uri`, `host`, `arg_x`, `http_x`, `cookie_x`, ...), computed
//! only when something reads them: the query string and cookies are scanned on demand.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use pylon_router::RequestView;

use crate::http1::RequestHead;

/// The parts of a request head that variables read, whichever protocol it came in on.
pub trait RequestFields {
    fn method(&self) -> &str;
    /// The request target as received: path and query (or an HTTP/1 absolute-form URI).
    fn target(&self) -> &str;
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])>;
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`, as `$server_protocol` gives it.
    fn protocol(&self) -> &'static str;

    /// The head's size in bytes, as HTTP/1.1 writes it (the log's `request_length`).
    fn head_length(&self) -> u64 {
        let line = self.method().len() + 1 + self.target().len() + 1 + self.protocol().len() + 2;
        let fields: usize = self.headers().map(|(n, v)| n.len() + 2 + v.len() + 2).sum();
        (line + fields + 2) as u64
    }

    /// The first header called `name` (any case).
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl RequestFields for RequestHead {
    fn method(&self) -> &str {
        RequestHead::method(self)
    }
    fn target(&self) -> &str {
        RequestHead::target(self)
    }
    fn path(&self) -> &str {
        RequestHead::path(self)
    }
    fn query(&self) -> Option<&str> {
        RequestHead::query(self)
    }
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        RequestHead::headers(self)
    }
    fn protocol(&self) -> &'static str {
        if self.minor_version() == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        RequestHead::header(self, name)
    }
    fn head_length(&self) -> u64 {
        self.raw().len() as u64
    }
}

pub struct RequestVars<'a, H = RequestHead> {
    pub head: &'a H,
    /// The request's host, lowercased and without port.
    pub host: Option<&'a str>,
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// Set when the client connected over TLS: the SNI it sent, if any.
    pub tls: Option<TlsInfo<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct TlsInfo<'a> {
    pub server_name: Option<&'a str>,
}

impl<H> RequestVars<'_, H> {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

impl<H: RequestFields> RequestView for RequestVars<'_, H> {
    fn path(&self) -> &str {
        self.head.path()
    }

    fn for_each_header(&self, each: &mut dyn FnMut(&str, &[u8])) {
        for (name, value) in self.head.headers() {
            each(name, value);
        }
    }

    fn host(&self) -> Option<&str> {
        self.host
    }

    fn method(&self) -> &str {
        self.head.method()
    }

    fn remote_addr(&self) -> IpAddr {
        self.client.ip()
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(arg) = name.strip_prefix("arg_") {
            return query_arg(self.head.query()?, arg);
        }
        if let Some(header) = name.strip_prefix("http_") {
            let value = self
                .head
                .headers()
                .find(|(n, _)| header_matches_var(n, header))?
                .1;
            return Some(text(value));
        }
        if let Some(cookie) = name.strip_prefix("cookie_") {
            return self
                .head
                .headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .find_map(|(_, v)| cookie_value(v, cookie))
                .map(text);
        }
        Some(match name {
            "uri" => Cow::Borrowed(self.head.path()),
            "request_uri" => Cow::Borrowed(self.head.target()),
            "args" | "query_string" => Cow::Borrowed(self.head.query()?),
            "host" => Cow::Borrowed(self.host?),
            "request_method" => Cow::Borrowed(self.head.method()),
            "remote_addr" => Cow::Owned(self.client.ip().to_string()),
            "remote_port" => Cow::Owned(self.client.port().to_string()),
            "server_addr" => Cow::Owned(self.local.ip().to_string()),
            "server_port" => Cow::Owned(self.local.port().to_string()),
            "scheme" => Cow::Borrowed(self.scheme()),
            "ssl_server_name" => Cow::Borrowed(self.tls?.server_name?),
            "server_protocol" => Cow::Borrowed(self.head.protocol()),
            _ => return None,
        })
    }

    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.head.header(name).map(text)
    }
}

/// `http_x_api_key` names the header `X-Api-Key`: `_` stands for `-`, case does not matter.
fn header_matches_var(header: &str, var: &str) -> bool {
    header.len() == var.len()
        && header
            .bytes()
            .zip(var.bytes())
            .all(|(h, v)| h.eq_ignore_ascii_case(&v) || (h == b'-' && v == b'_'))
}

/// A header value as text. Nearly all are ASCII, which `from_utf8` checks a word at a time;
/// only the others pay for `from_utf8_lossy`'s replacement of what is not UTF-8.
fn text(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(value),
    }
}

/// The first value of `name` in a query string, percent-decoded.
fn query_arg<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn cookie_value<'v>(header: &'v [u8], name: &str) -> Option<&'v [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Writes the host of a `Host` header value into `out`: lowercased, without the port.
/// Returns false when the value is not a plausible host.
pub fn normalize_host(raw: &[u8], out: &mut String) -> bool {
    out.clear();
    let host = if raw.first() == Some(&b'[') {
        match raw.iter().position(|&b| b == b']') {
            Some(end) => &raw[..=end],
            None => return false,
        }
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    if host.is_empty()
        || !host.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
    {
        return false;
    }
    out.extend(host.iter().map(|&b| b.to_ascii_lowercase() as char));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_vars(wire: &str, check: impl FnOnce(&RequestVars<'_>)) {
        let head = RequestHead::from_wire(wire);
        let vars = RequestVars {
            head: &head,
            host: Some("example.com"),
            client: "10.1.2.3:5555".parse().unwrap(),
            local: "127.0.0.1:9080".parse().unwrap(),
            tls: None,
        };
        check(&vars);
    }

    #[test]
    fn variables_read_the_request_on_demand() {
        with_vars(
            "GET /p/q?a=1&name=J%C3%B6rg+K&flag HTTP/1.1\r\nX-Api-Key: k1\r\nCookie: sid=abc; theme=dark\r\n\r\n",
            |v| {
                assert_eq!(v.var("uri").as_deref(), Some("/p/q"));
                assert_eq!(v.var("request_uri").as_deref(), Some("/p/q?a=1&name=J%C3%B6rg+K&flag"));
                assert_eq!(v.var("arg_a").as_deref(), Some("1"));
                assert_eq!(v.var("arg_name").as_deref(), Some("Jörg K"));
                assert_eq!(v.var("arg_flag").as_deref(), Some(""));
                assert_eq!(v.var("arg_missing"), None);
                assert_eq!(v.var("http_x_api_key").as_deref(), Some("k1"));
                assert_eq!(v.var("cookie_theme").as_deref(), Some("dark"));
                assert_eq!(v.var("cookie_nope"), None);
                assert_eq!(v.var("remote_addr").as_deref(), Some("10.1.2.3"));
                assert_eq!(v.var("server_port").as_deref(), Some("9080"));
                assert_eq!(v.var("host").as_deref(), Some("example.com"));
            },
        );
    }

    #[test]
    fn hosts_are_normalized() {
        let mut out = String::new();
        assert!(normalize_host(b"API.Example.com:8080", &mut out));
        assert_eq!(out, "api.example.com");
        assert!(normalize_host(b"[::1]:80", &mut out));
        assert_eq!(out, "[::1]");
        assert!(!normalize_host(b"bad host", &mut out));
        assert!(!normalize_host(b"", &mut out));
    }
}
