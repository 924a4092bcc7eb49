//! TLS termination: the server config for a handshake is chosen by the client's SNI, among the
//! `ssls` of the current snapshot. Each ssl is compiled into its own `rustls` server config
//! (its key pairs, its client-certificate policy, its protocol versions), so a lookup is one
//! or two hash probes and the handshake itself is rustls's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pylon_model::{Ssl, SslType, TlsVersion};
use pylon_router::{HostPattern, HostTable};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{provider, TlsContext, TlsError};

/// ALPN protocols offered to clients, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// A fatal `unrecognized_name` alert (RFC 6066): no certificate for the name the client asked.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// A ClientHello larger than this is not one a real client sends.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What a TLS listener's connections carry, which says what ALPN offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    /// HTTP: `h2` or `http/1.1`, as the client prefers.
    Http,
    /// A stream listener's bytes, relayed as they are: no protocol is chosen, so that a
    /// client never speaks one the upstream behind does not.
    Bytes,
}

/// One ssl's server configs, by what the connection carries.
struct Configs {
    http: Arc<ServerConfig>,
    bytes: Arc<ServerConfig>,
}

/// The server configs of one snapshot, by SNI.
#[derive(Default)]
pub struct SniTable {
    by_name: HostTable<Option<Arc<Configs>>>,
    /// For clients that send no SNI, or one nothing matches.
    fallback: Option<Arc<Configs>>,
    len: usize,
}

impl SniTable {
    /// Compiles every enabled server ssl. One that fails is left out and logged, so the
    /// others keep working; validation has already refused what it can recognise as broken.
    pub fn compile(ssls: &BTreeMap<String, Ssl>, tls: &TlsContext) -> SniTable {
        let mut table = SniTable::default();
        for (id, ssl) in ssls
            .iter()
            .filter(|(_, ssl)| ssl.kind == SslType::Server && ssl.is_enabled())
        {
            let config = match server_config(ssl, tls) {
                Ok(http) => {
                    let mut bytes = http.clone();
                    bytes.alpn_protocols.clear();
                    Arc::new(Configs {
                        http: Arc::new(http),
                        bytes: Arc::new(bytes),
                    })
                }
                Err(e) => {
                    tracing::error!("ssls/{id}: left out: {e}");
                    continue;
                }
            };
            table.len += 1;
            for name in ssl.server_names() {
                let Ok(pattern) = HostPattern::parse(name) else {
                    continue;
                };
                let slot = table.by_name.entry(&pattern);
                // Ssls are compiled in id order: the first to claim a name keeps it.
                if slot.is_none() {
                    *slot = Some(config.clone());
                } else {
                    tracing::warn!("ssls/{id}: sni `{name}` is already served by another ssl");
                }
            }
        }
        if let Some(name) = &tls.fallback_sni {
            table.fallback = table.find(&name.to_ascii_lowercase()).cloned();
            if table.fallback.is_none() {
                tracing::warn!("fallback_sni `{name}`: no ssl has a certificate for it");
            }
        }
        table
    }

    /// How many ssls are being served.
    pub fn len(&self) -> usize {
        self.len
    }

    fn find<'a>(&'a self, name: &'a str) -> Option<&'a Arc<Configs>> {
        self.by_name.matching(name).flatten().next()
    }

    fn lookup(&self, sni: Option<&str>, carries: Carries) -> Option<Arc<ServerConfig>> {
        let configs = sni
            .and_then(|name| self.find(&name.to_ascii_lowercase()).cloned())
            .or_else(|| self.fallback.clone())?;
        Some(match carries {
            Carries::Http => configs.http.clone(),
            Carries::Bytes => configs.bytes.clone(),
        })
    }
}

/// The outcome of accepting one TLS connection.
pub enum Handshake {
    Done(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The client went away, sent garbage, timed out, or asked for a name nobody serves;
    /// the connection is over (with an alert where TLS allows one).
    Failed(String),
}

/// Reads the ClientHello, picks the ssl for its SNI from `table`, and completes the handshake
/// for a connection that `carries` what it says, all within `timeout`.
pub async fn accept(
    mut tcp: TcpStream,
    table: &SniTable,
    carries: Carries,
    timeout: Duration,
) -> Handshake {
    let handshake = async {
        let mut acceptor = Acceptor::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut read_total = 0;
        let accepted = loop {
            let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the ClientHello".to_owned());
            }
            read_total += n;
            if read_total > MAX_CLIENT_HELLO {
                return Err("ClientHello too large".to_owned());
            }
            acceptor
                .read_tls(&mut &buf[..n])
                .map_err(|e| e.to_string())?;
            match acceptor.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) => continue,
                Err((error, alert)) => {
                    let mut out = Vec::new();
                    let mut alert = alert;
                    let _ = alert.write(&mut out);
                    let _ = tcp.write_all(&out).await;
                    return Err(error.to_string());
                }
            }
        };
        let sni = accepted.client_hello().server_name().map(str::to_owned);
        let Some(config) = table.lookup(sni.as_deref(), carries) else {
            let _ = tcp.write_all(&UNRECOGNIZED_NAME).await;
            return Err(format!(
                "no certificate for sni {}",
                sni.as_deref().unwrap_or("(none)")
            ));
        };
        tokio_rustls::StartHandshake::from_parts(accepted, tcp)
            .into_stream(config)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Handshake::Done(Box::new(stream)),
        Ok(Err(reason)) => Handshake::Failed(reason),
        Err(_) => Handshake::Failed("handshake timed out".to_owned()),
    }
}

fn server_config(ssl: &Ssl, tls: &TlsContext) -> Result<ServerConfig, TlsError> {
    let keys = ssl
        .key_pairs()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .into_iter()
        .map(|pair| {
            let key = provider()
                .key_provider
                .load_private_key(pair.key)
                .map_err(TlsError::rustls)?;
            Ok(Arc::new(CertifiedKey::new(pair.chain, key)))
        })
        .collect::<Result<Vec<_>, TlsError>>()?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match &ssl.ssl_protocols {
        Some(versions) => versions
            .iter()
            .map(|v| match v {
                TlsVersion::Tls12 => &rustls::version::TLS12,
                TlsVersion::Tls13 => &rustls::version::TLS13,
            })
            .collect(),
        None => rustls::DEFAULT_VERSIONS.to_vec(),
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(TlsError::rustls)?;
    let builder = match ssl.client_ca() {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in ca.map_err(|e| TlsError::Config(e.to_string()))? {
                roots.add(cert).map_err(TlsError::rustls)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config(format!("client.ca: {e}")))?;
            builder.with_client_cert_verifier(Arc::new(DepthLimited {
                inner: verifier,
                depth: ssl.client.as_ref().map_or(1, |c| c.depth as usize),
            }))
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(KeyPairs(keys)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = tls.sessions.clone();
    config.ticketer = tls.tickets.clone();
    Ok(config)
}

/// An ssl's certificates (an RSA and an ECDSA one, say): each client gets the first one whose
/// key can sign with a scheme the client accepts.
#[derive(Debug)]
struct KeyPairs(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for KeyPairs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        self.0
            .iter()
            .find(|pair| pair.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

/// Client certificate verification with a limit on the chain's length, as nginx's
/// `ssl_verify_depth`: with depth 1 the client's certificate must be issued by a trusted CA
/// directly; each step of depth allows one intermediate more.
#[derive(Debug)]
struct DepthLimited {
    inner: Arc<dyn ClientCertVerifier>,
    depth: usize,
}

impl ClientCertVerifier for DepthLimited {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() >= self.depth.max(1) {
            return Err(rustls::Error::General(format!(
                "client certificate chain longer than depth {}",
                self.depth
            )));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
