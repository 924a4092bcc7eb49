//! TLS handshakes per second: each of `--conns` tasks connects, handshakes, sends one
//! `GET` with `Connection: close`, reads the response to the end, and starts over.
//!
//! With `--resume`, each task has its own session cache, so every connection after a task's
//! first offers the ticket (TLS 1.3) or session id (TLS 1.2) its previous connection got:
//! a shared cache would hand out more tickets than the server sends back and fall back to
//! full handshakes. The report says which fraction actually resumed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption, Tls12Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CipherSuite, ClientConfig, DigitallySignedStruct, HandshakeKind, ProtocolVersion,
    SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::args::Args;
use crate::window::Window;

pub async fn run(addr: &str, args: &Args) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let sni = args.str("sni", "bench.test");
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("--sni: {e}"))?;
    let version = match args.str("tls", "1.3") {
        "1.2" => &rustls::version::TLS12,
        "1.3" => &rustls::version::TLS13,
        other => return Err(format!("--tls: `{other}` is not 1.2 or 1.3")),
    };
    let resume = args.flag("resume");
    let suites = match args.str("suites", "browser") {
        "browser" => Suites::Browser,
        "rustls" => Suites::Rustls,
        other => return Err(format!("--suites: `{other}` is not browser or rustls")),
    };
    let conns: usize = args.num("conns", 64)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n",
        args.str("path", "/hello")
    );
    let request: Arc<[u8]> = request.into_bytes().into();
    let shared = client_config(version, suites, false)?;
    let window = Window::from_args(args)?;
    let negotiated = Arc::new(Mutex::new(None));
    for _ in 0..conns {
        let connector = TlsConnector::from(if resume {
            client_config(version, suites, true)?
        } else {
            shared.clone()
        });
        let (name, request, window, negotiated) = (
            name.clone(),
            request.clone(),
            window.clone(),
            negotiated.clone(),
        );
        tokio::spawn(async move {
            while window.open() {
                match exchange(addr, &connector, &name, &request).await {
                    Ok(outcome) => {
                        window.done(outcome.resumed);
                        if let Ok(mut first) = negotiated.lock() {
                            first.get_or_insert(outcome.negotiated);
                        }
                    }
                    Err(_) => {
                        window.error();
                        // A server that is down should not turn this into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    let counts = window.close().await;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let done = load(&counts.done);
    let negotiated = match negotiated.lock().ok().and_then(|n| *n) {
        Some((version, suite)) => format!("version={version:?} suite={suite:?}"),
        None => "version=none suite=none".to_owned(),
    };
    Ok(format!(
        "rate={:.1} done={done} errors={} resumed={:.3} {negotiated}",
        window.rate(),
        load(&counts.errors),
        if done == 0 {
            0.0
        } else {
            load(&counts.resumed) as f64 / done as f64
        },
    ))
}

struct Outcome {
    resumed: bool,
    /// Protocol version and cipher suite, to show that both servers negotiated the same.
    negotiated: (ProtocolVersion, CipherSuite),
}

async fn exchange(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: &ServerName<'static>,
    request: &[u8],
) -> Result<Outcome, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let session = tls.get_ref().1;
    let outcome = Outcome {
        resumed: session.handshake_kind() == Some(HandshakeKind::Resumed),
        negotiated: (
            session.protocol_version().ok_or("no version")?,
            session
                .negotiated_cipher_suite()
                .ok_or("no cipher suite")?
                .suite(),
        ),
    };
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    // The response, to the server's close. Only its status line is looked at; a close
    // without close_notify after a complete response counts as a close.
    let mut head = [0u8; 12];
    let mut got = 0;
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let take = n.min(head.len() - got);
                head[got..got + take].copy_from_slice(&buf[..take]);
                got += take;
            }
            Err(e) if got == head.len() => {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    break;
                }
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if &head != b"HTTP/1.1 200" {
        return Err(format!(
            "response starts with {:?}",
            String::from_utf8_lossy(&head[..got])
        ));
    }
    Ok(outcome)
}

/// The order in which the client offers cipher suites; the servers follow the client's.
#[derive(Clone, Copy)]
enum Suites {
    /// AES-128-GCM first, as browsers do: the handshake hashes with SHA-256.
    Browser,
    /// rustls's default, AES-256-GCM first: SHA-384, which ring computes without SIMD on
    /// AMD processors (its AVX code is for Intel's only).
    Rustls,
}

/// `resume`: a session cache of this config's own, for one task.
fn client_config(
    version: &'static rustls::SupportedProtocolVersion,
    suites: Suites,
    resume: bool,
) -> Result<Arc<ClientConfig>, String> {
    use rustls::crypto::ring::cipher_suite::*;
    let mut provider = rustls::crypto::ring::default_provider();
    if let Suites::Browser = suites {
        provider.cipher_suites = vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
    }
    let provider = Arc::new(provider);
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        // TLS 1.2 by session id, the server-side state that nginx's ssl_session_cache and
        // Pylon's session cache keep; TLS 1.3 always resumes with tickets.
        Resumption::store(Arc::new(ClientSessionMemoryCache::new(4)))
            .tls12_resumption(Tls12Resumption::SessionIdOnly)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Accepts any certificate and any signature: the client only drives load, and checking the
/// server's signature would make each handshake cost the client as much as the server.
#[derive(Debug)]
struct TrustAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
