//! The server name a TLS client asks for, read from its ClientHello without taking it off the
//! socket, so that a stream route can pick an upstream by name and pass the TLS connection
//! through untouched (what nginx's `ssl_preread` does).

/// The most of a ClientHello looked at: one TLS record.
pub(crate) const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A ClientHello, with its server name if it sends one.
    Tls(Option<String>),
    /// The start of one: read more.
    Incomplete,
    /// Not TLS (or not a ClientHello in its first record).
    NotTls,
}

/// Reads the server name from the ClientHello at the start of `bytes`.
pub(crate) fn client_hello(bytes: &[u8]) -> Hello {
    // A handshake record (22), TLS 1.x.
    if bytes.is_empty() {
        return Hello::Incomplete;
    }
    if bytes[0] != 22 || bytes.get(1).is_some_and(|&major| major != 3) {
        return Hello::NotTls;
    }
    if bytes.len() < 5 {
        return Hello::Incomplete;
    }
    let record = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if bytes.len() < 5 + record {
        return Hello::Incomplete;
    }
    match server_name(&bytes[5..5 + record]) {
        Some(name) => Hello::Tls(name),
        None => Hello::NotTls,
    }
}

/// The server name in a handshake message that must be a ClientHello; `None` when it is not
/// one or is malformed, `Some(None)` when it names no server.
fn server_name(message: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(message);
    // Handshake type 1 (ClientHello), a 3-byte length, the legacy version, the random.
    if r.u8()? != 1 {
        return None;
    }
    let length = r.u24()?;
    let mut hello = Reader(r.take(length)?);
    hello.take(2 + 32)?;
    let session_id = usize::from(hello.u8()?);
    hello.take(session_id)?;
    let suites = usize::from(hello.u16()?);
    hello.take(suites)?;
    let compression = usize::from(hello.u8()?);
    hello.take(compression)?;
    if hello.0.is_empty() {
        return Some(None);
    }
    let extensions = usize::from(hello.u16()?);
    let mut extensions = Reader(hello.take(extensions)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = usize::from(extensions.u16()?);
        let mut body = Reader(extensions.take(length)?);
        // server_name (RFC 6066): a list of names, of which the host_name (0) one counts.
        if kind == 0 {
            let list = usize::from(body.u16()?);
            let mut list = Reader(body.take(list)?);
            while !list.0.is_empty() {
                let name_type = list.u8()?;
                let length = usize::from(list.u16()?);
                let name = list.take(length)?;
                if name_type == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    return Some(Some(name.to_ascii_lowercase()));
                }
            }
            return Some(None);
        }
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first record a rustls client sends for `name`.
    fn hello_for(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_of_a_real_client_hello_is_read_at_every_length() {
        let hello = hello_for("Api.Example.com");
        assert_eq!(
            client_hello(&hello),
            Hello::Tls(Some("api.example.com".to_owned()))
        );
        for cut in 0..hello.len() {
            assert_eq!(client_hello(&hello[..cut]), Hello::Incomplete, "{cut}");
        }
    }

    #[test]
    fn other_protocols_and_broken_hellos_are_not_tls() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(b"SSH-2.0-OpenSSH\r\n"), Hello::NotTls);
        let mut hello = hello_for("a.test");
        // A handshake message that is not a ClientHello.
        hello[5] = 2;
        assert_eq!(client_hello(&hello), Hello::NotTls);
        // An address as the name: clients send no server_name.
        let by_address = hello_for("127.0.0.1");
        assert_eq!(client_hello(&by_address), Hello::Tls(None));
    }
}
