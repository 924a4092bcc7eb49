//! Pylon's plugins, with APISIX's names, fields, defaults and error bodies.
//!
//! Each plugin is one module: its configuration type (parsed with serde, its JSON Schema
//! derived from the same type), the checks the type cannot express, and the [`Plugin`]
//! implementation built from it. Building is validating: the Admin API builds a plugin to
//! check a write, and the snapshot compiler builds it again to serve it, so what is accepted
//! is exactly what can run.
//!
//! [`Plugin`]: pylon_plugin::Plugin
#![forbid(unsafe_code)]

mod api_breaker;
mod basic_auth;
mod batch;
mod catalog;
mod client_control;
mod compile;
mod compression;
mod config;
mod consumer_restriction;
mod cors;
mod credentials;
mod descriptor;
mod device_push;
mod fault_injection;
mod file_logger;
mod forward_auth;
mod frames_push;
mod grpc_transcode;
mod grpc_web;
mod header_ops;
mod hmac_auth;
mod http_logger;
mod ip_restriction;
mod ip_set;
mod jwt_auth;
mod key_auth;
mod limit_conn;
mod limit_count;
mod limit_req;
mod limits;
mod log_record;
mod logger;
mod mocking;
mod opentelemetry;
mod outbound;
mod post;
mod prometheus;
mod protos;
mod proxy_mirror;
mod proxy_rewrite;
mod query;
mod real_ip;
mod realm;
mod redirect;
mod regex_sub;
mod request_id;
mod request_validation;
mod response_rewrite;
mod syslog;
mod tcp_logger;
#[cfg(test)]
mod testing;
mod traffic_split;
mod udp_logger;
mod uri_blocker;
mod uri_rewrite;
mod waf;
mod websocket_frames;

pub use batch::ShipCounts;
pub use catalog::{find, CATALOG};
pub use compile::{
    builds_every_plugin, check, check_config, check_resource, frame_messages, push_config,
    secret_pointers, CompiledPlugins, FrameMessages, PUSH_AUTH_PLUGINS, STREAM_PLUGINS,
};
pub use credentials::{Credential, Credentials};
pub use descriptor::{Descriptor, MetadataSpec, Scope};
pub use file_logger::{file_log_counts, FileLogCounts};
pub use ip_set::IpSet;
pub use limit_conn::{stream_conn_key, StreamConnKey};
pub use protos::Protos;
pub use proxy_mirror::{mirror_counts, MirrorCounts};
/// The Redis servers the limiting plugins use, and whether each answers.
pub use pylon_redis::{Redis, Status as RedisStatus};
pub use traffic_split::{route_split_upstreams, SplitTarget, SplitUpstream};
pub use waf::{waf_verdicts, WafVerdicts};
pub use websocket_frames::check_bridged_stream_route;

/// What became of the entries of each plugin that sends in batches (the loggers' records,
/// `opentelemetry`'s spans), by the name `/v1/status` reports it under.
pub fn shipped_counts() -> [(&'static str, ShipCounts); 5] {
    [
        ("http_logger", http_logger::COUNTS.snapshot()),
        ("tcp_logger", tcp_logger::COUNTS.snapshot()),
        ("udp_logger", udp_logger::COUNTS.snapshot()),
        ("syslog", syslog::COUNTS.snapshot()),
        ("opentelemetry", opentelemetry::COUNTS.snapshot()),
    ]
}
