//! Pylon's data plane.
//!
//! The performance idea is nginx's: one worker thread per core, each with its own listener
//! socket (`SO_REUSEPORT`), its own upstream connection pools and its own balancer state, so a
//! request never takes a lock or wakes another thread. Heads are parsed in place into buffers
//! that live as long as the connection, and bodies stream through in both directions as they
//! arrive. The configuration is one immutable [`Snapshot`] per version, compiled on the control
//! side and swapped in atomically; a worker notices a new one with a pointer comparison.
//! `BENCHMARKS.md` has the figures against nginx on the same machine.
#![forbid(unsafe_code)]

mod accept;
mod access_log;
mod attempts;
mod canary;
mod compile;
mod control;
mod downstream;
mod error;
mod handoff;
mod health;
pub mod http1;
mod local_http;
mod metrics;
mod outbound;
mod outcome;
mod pipeline;
mod proxy_protocol;
mod publish;
mod registration;
mod relay;
mod rewind;
mod runtime;
mod server;
mod settings;
mod snapshot;
mod stream;
mod tls;
mod tunnel;
mod upstream;
mod vars;
mod worker;

pub use access_log::AccessLog;
pub use canary::NodeIdentity;
pub use control::{ControlApi, ControlSettings, NodeStatus};
pub use handoff::{HandoffError, HandoffEvent, HandoffServer, Listeners, StoreRelease, Takeover};
pub use health::HealthRegistry;
pub use metrics::{Exporter, MetricsApi, MetricsSettings, Traffic, METRICS_PATHS};
pub use publish::Publisher;
pub use registration::{Addresses, Registration};
pub use runtime::ControlPriority;
pub use server::Gateway;
pub use settings::{
    AccessLogSettings, Http2Settings, HttpsSettings, ProxyProtocolSettings, ProxySettings,
    StreamListen, StreamSettings, UdpListen, UpstreamDefaults,
};
pub use snapshot::{CompileError, Snapshot, SnapshotCell};
pub use tls::{TlsContext, TlsError};
