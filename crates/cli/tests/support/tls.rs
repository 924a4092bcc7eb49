//! TLS for tests: a test CA that issues certificates made in the test, a blocking HTTPS
//! client that reports what the handshake negotiated, and a TLS upstream server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

use super::WAIT;

/// An RSA key made with `openssl genrsa 2048` for these tests (ring can sign with RSA keys
/// but not generate them).
pub const RSA_KEY: &str = include_str!("rsa_test_key.pem");

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

/// A CA made in the test.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// An ECDSA P-256 certificate for `names`.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_with_key(names, KeyPair::generate().unwrap())
    }

    /// An RSA certificate for `names`.
    pub fn issue_rsa(&self, names: &[&str]) -> Issued {
        let key = KeyPair::from_pem_and_sign_algo(RSA_KEY, &rcgen::PKCS_RSA_SHA256).unwrap();
        self.issue_with_key(names, key)
    }

    fn issue_with_key(&self, names: &[&str], key: KeyPair) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// YAML for an `ssls` entry (indented as a list item under `ssls:`).
pub fn ssl_yaml(id: &str, snis: &[&str], issued: &Issued, extra: &str) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n      ");
    format!(
        "  - id: {id}\n    snis: [{}]\n    cert: |\n      {}\n    key: |\n      {}\n{extra}",
        snis.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", "),
        indent(&issued.cert),
        indent(&issued.key),
    )
}

/// A client config trusting `roots`, offering `alpn`.
pub fn client_config(roots: RootCertStore, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// What one HTTPS exchange saw.
#[derive(Debug)]
pub struct TlsExchange {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub alpn: Option<String>,
    pub resumed: bool,
    pub version: Option<rustls::ProtocolVersion>,
    /// The leaf certificate the server presented.
    pub peer_cert: Option<CertificateDer<'static>>,
}

/// A kept-alive HTTPS connection.
pub struct TlsConn {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsConn {
    /// Connects and completes the handshake; `sni` is also the name verified.
    pub fn connect(
        addr: SocketAddr,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> Result<TlsConn, rustls::Error> {
        let tcp = TcpStream::connect_timeout(&addr, WAIT)
            .map_err(|e| rustls::Error::General(format!("connect: {e}")))?;
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let conn = ClientConnection::new(config, name)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(match e.into_inner() {
                    Some(inner) => match inner.downcast::<rustls::Error>() {
                        Ok(tls) => *tls,
                        Err(other) => rustls::Error::General(other.to_string()),
                    },
                    None => rustls::Error::General("handshake I/O failed".to_owned()),
                });
            }
        }
        Ok(TlsConn { stream })
    }

    /// `GET path` with `Host: host`; the response must have a Content-Length.
    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<TlsExchange> {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
        self.stream.flush()?;
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.push(byte[0]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        response
            .parse(&raw)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        let conn = &self.stream.conn;
        Ok(TlsExchange {
            status: response.code.unwrap_or(0),
            body: String::from_utf8_lossy(&body).into_owned(),
            headers,
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            version: conn.protocol_version(),
            peer_cert: conn.peer_certificates().and_then(|c| c.first().cloned()),
        })
    }
}

/// Connects, sends one GET and returns what happened.
pub fn https_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<TlsExchange, String> {
    let mut conn = TlsConn::connect(addr, sni, config).map_err(|e| e.to_string())?;
    conn.get(sni, path).map_err(|e| e.to_string())
}

/// An HTTPS upstream: answers every request 200 with `name sni=<sni> client_cert=<yes|no>`.
/// With `client_ca`, it requires client certificates issued by that CA.
pub struct TlsUpstream {
    pub addr: SocketAddr,
}

impl TlsUpstream {
    pub fn start(name: &str, issued: &Issued, client_ca: Option<&TestCa>) -> TlsUpstream {
        let chain = CertificateDer::pem_slice_iter(issued.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_owned();
        std::thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                let (config, name) = (config.clone(), name.clone());
                std::thread::spawn(move || serve_tls(tcp, config, &name));
            }
        });
        TlsUpstream { addr }
    }
}

fn serve_tls(tcp: TcpStream, config: Arc<ServerConfig>, name: &str) {
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut stream = StreamOwned::new(conn, tcp);
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let sni = stream.conn.server_name().unwrap_or("-").to_owned();
        let client_cert = if stream.conn.peer_certificates().is_some() {
            "yes"
        } else {
            "no"
        };
        let body = format!("{name} sni={sni} client_cert={client_cert}");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

/// Trusts anything, and offers only the given signature schemes: how a test makes the
/// server choose between an RSA and an ECDSA certificate.
#[derive(Debug)]
pub struct OnlySchemes(pub Vec<rustls::SignatureScheme>);

impl ServerCertVerifier for OnlySchemes {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone()
    }
}
