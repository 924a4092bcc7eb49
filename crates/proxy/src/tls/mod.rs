//! TLS on both sides of the gateway: termination on the https listener with a certificate
//! chosen per SNI from the `ssls` resources, and TLS to upstreams. Certificates and client
//! configs are built when a snapshot is compiled, never per handshake.

mod acceptor;
mod connector;
mod stream;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;

pub use acceptor::{accept, Carries, Handshake, SniTable};
pub use connector::{server_name, UpstreamTls};
pub use stream::{ClientStream, MaybeTls, UpstreamStream};

/// What TLS needs across config versions, made once per process.
pub struct TlsContext {
    /// Shared by every server config, so a session resumes even after the ssls changed.
    pub(crate) sessions: Arc<dyn rustls::server::StoresServerSessions>,
    pub(crate) tickets: Arc<dyn rustls::server::ProducesTickets>,
    /// Roots that upstream certificates are verified against.
    pub(crate) upstream_roots: Arc<RootCertStore>,
    /// The SNI whose certificate answers clients that send none, or one no ssl covers.
    pub(crate) fallback_sni: Option<String>,
}

impl TlsContext {
    /// `trusted_ca`: PEM certificates trusted for upstreams besides the system's roots.
    pub fn new(trusted_ca: Option<&str>, fallback_sni: Option<String>) -> Result<Self, TlsError> {
        let tickets = rustls::crypto::ring::Ticketer::new().map_err(TlsError::rustls)?;
        Ok(TlsContext {
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
            tickets,
            upstream_roots: Arc::new(upstream_roots(trusted_ca)?),
            fallback_sni,
        })
    }
}

/// TLS 1.2 sessions remembered for resumption by id (TLS 1.3 resumes with stateless tickets).
const SESSION_CACHE: usize = 20_000;

fn upstream_roots(trusted_ca: Option<&str>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!("loading the system's trusted certificates: {error}");
    }
    roots.add_parsable_certificates(system.certs);
    if let Some(pem) = trusted_ca {
        let certs = pylon_model::parse_certificates(pem)
            .map_err(|e| TlsError::Config(format!("trusted_ca: {e}")))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("trusted_ca: {e}")))?;
        }
    }
    Ok(roots)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    fn rustls(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

/// The one cryptography provider (ring: pure Rust and C, nothing to install).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
