//! Every plugin this build has: its name, priority, schemas and how it is built.

use crate::descriptor::Descriptor;
use crate::{
    api_breaker, basic_auth, client_control, compression, consumer_restriction, cors, device_push,
    fault_injection, file_logger, forward_auth, frames_push, grpc_transcode, grpc_web, hmac_auth,
    http_logger, ip_restriction, jwt_auth, key_auth, limit_conn, limit_count, limit_req, mocking,
    opentelemetry, prometheus, proxy_mirror, proxy_rewrite, real_ip, redirect, request_id,
    request_validation, response_rewrite, syslog, tcp_logger, traffic_split, udp_logger,
    uri_blocker, waf, websocket_frames,
};

/// Every plugin, by name.
pub static CATALOG: &[Descriptor] = &[
    api_breaker::DESCRIPTOR,
    basic_auth::DESCRIPTOR,
    compression::BROTLI,
    compression::GZIP,
    client_control::DESCRIPTOR,
    consumer_restriction::DESCRIPTOR,
    cors::DESCRIPTOR,
    device_push::DESCRIPTOR,
    fault_injection::DESCRIPTOR,
    file_logger::DESCRIPTOR,
    forward_auth::DESCRIPTOR,
    frames_push::DESCRIPTOR,
    grpc_transcode::DESCRIPTOR,
    grpc_web::DESCRIPTOR,
    hmac_auth::DESCRIPTOR,
    http_logger::DESCRIPTOR,
    ip_restriction::DESCRIPTOR,
    jwt_auth::DESCRIPTOR,
    key_auth::DESCRIPTOR,
    limit_conn::DESCRIPTOR,
    limit_count::DESCRIPTOR,
    limit_req::DESCRIPTOR,
    mocking::DESCRIPTOR,
    opentelemetry::DESCRIPTOR,
    prometheus::DESCRIPTOR,
    proxy_mirror::DESCRIPTOR,
    proxy_rewrite::DESCRIPTOR,
    real_ip::DESCRIPTOR,
    redirect::DESCRIPTOR,
    request_id::DESCRIPTOR,
    request_validation::DESCRIPTOR,
    response_rewrite::DESCRIPTOR,
    syslog::DESCRIPTOR,
    tcp_logger::DESCRIPTOR,
    traffic_split::DESCRIPTOR,
    udp_logger::DESCRIPTOR,
    uri_blocker::DESCRIPTOR,
    waf::DESCRIPTOR,
    websocket_frames::DESCRIPTOR,
];

pub fn find(name: &str) -> Option<&'static Descriptor> {
    CATALOG.iter().find(|d| d.name == name)
}
