//! TLS to upstream nodes (`scheme: https` and `grpcs`): one client config per upstream, built
//! when the snapshot is compiled, verifying certificates against the system's roots (and the
//! node's `trusted_ca`) unless the upstream turns verification off, and presenting a client
//! certificate for upstream mTLS.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

use super::{provider, TlsError};

/// How one upstream's connections are secured.
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    /// Identifies the config in the connection pool: connections made with different
    /// settings (server name, client certificate, verification) are never mixed.
    pub fingerprint: u64,
}

impl UpstreamTls {
    /// `alpn` is what the upstream will be spoken to in: `h2` for gRPC, else `http/1.1`.
    pub fn new(
        tls: Option<&pylon_model::UpstreamTls>,
        alpn: &[u8],
        roots: &Arc<RootCertStore>,
    ) -> Result<Self, TlsError> {
        let verify = tls.is_none_or(|t| t.verify);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::rustls)?;
        let builder = if verify {
            builder.with_root_certificates(roots.clone())
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
        };
        let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
        (verify, alpn).hash(&mut fingerprint);
        let mut config = match tls.and_then(|t| t.client_key_pair()).transpose() {
            Ok(Some(pair)) => {
                pair.chain.hash(&mut fingerprint);
                builder
                    .with_client_auth_cert(pair.chain, pair.key)
                    .map_err(TlsError::rustls)?
            }
            Ok(_) => builder.with_no_client_auth(),
            Err(e) => return Err(TlsError::Config(e.to_string())),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(UpstreamTls {
            config: Arc::new(config),
            fingerprint: fingerprint.finish(),
        })
    }

    /// Performs the handshake over an established TCP connection.
    pub async fn connect(
        &self,
        server_name: ServerName<'static>,
        tcp: TcpStream,
        timeout: Duration,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        tokio::time::timeout(timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)?
    }
}

/// The server name sent in SNI and verified against the certificate: the upstream host the
/// request will carry, as nginx's `proxy_ssl_name $proxy_host` does.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

/// For upstreams with `tls.verify: false`: the connection is encrypted but the peer is not
/// authenticated. Signatures are still checked, so the session keys belong to whoever holds
/// the presented certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl ServerCertVerifier for AcceptAnyCertificate {
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
