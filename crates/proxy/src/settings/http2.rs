//! The `proxy.http2` section of the node config: what a client's HTTP/2 connection may use,
//! and the limits that stop one connection from costing the gateway more than it should.

use serde::{Deserialize, Serialize};

/// HTTP/2 on the client side (h2c with prior knowledge, and `h2` over TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Settings {
    /// Streams a client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a stream beyond it is refused with RST_STREAM REFUSED_STREAM, which tells the client it
    /// may retry it.
    pub max_concurrent_streams: u32,
    /// Largest request header block, decoded, in bytes: a larger one is answered 431. A header
    /// block sent in CONTINUATION frames counts as one, so a CONTINUATION flood ends the
    /// connection once it passes this (GOAWAY).
    pub max_header_list_size: u32,
    /// Bytes of request body a client may send on one stream ahead of the upstream reading it
    /// (the stream flow-control window).
    pub initial_window_size: u32,
    /// The same for all the streams of a connection together.
    pub initial_connection_window_size: u32,
    /// Largest frame payload the gateway accepts, 16384..=16777215.
    pub max_frame_size: u32,
    /// Response bytes queued for one stream ahead of the client's flow-control window; the
    /// upstream is read no faster than the client takes them.
    pub max_send_buffer_size: u32,
    /// Streams the client reset before the gateway got to them, held at once; past this the
    /// connection is closed with GOAWAY ENHANCE_YOUR_CALM (the "rapid reset" attack,
    /// CVE-2023-44487, opens and cancels streams faster than they can be served).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway had to reset because of the client's protocol errors, over the life
    /// of a connection; past this: GOAWAY ENHANCE_YOUR_CALM.
    pub max_local_error_reset_streams: usize,
    /// Streams the client may cancel after the gateway started working on them (routing,
    /// reaching the upstream), over the life of a connection. Past this, and when they are more
    /// than half of the connection's streams, the connection is closed with GOAWAY
    /// ENHANCE_YOUR_CALM: the slower form of rapid reset. A client that cancels now and then
    /// (gRPC deadlines) never reaches it.
    pub max_client_resets: u64,
    /// Seconds a client has to do its part once the gateway starts closing its connection
    /// (idle for `keepalive_timeout`, or the worker stopping): answer the PING that follows the
    /// GOAWAY and read what is sent to it. Past it, the connection takes no new stream, and it
    /// is dropped once it has had no stream in flight for as long: a client that ignores the
    /// GOAWAY, stalls half-way through a frame or stops reading does not hold it.
    pub close_timeout: f64,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            initial_window_size: 65_535,
            initial_connection_window_size: 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_send_buffer_size: 64 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_client_resets: 200,
            close_timeout: 10.0,
        }
    }
}

/// The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Far beyond any client's need to finish closing, and a bound that keeps the deadline
/// arithmetic from overflowing.
const MAX_CLOSE_TIMEOUT: f64 = 3600.0;

impl Http2Settings {
    /// Every problem with these settings, with the field's path under `proxy`.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, field: &str, rule: &str| {
            if !ok {
                errors.push(format!("proxy.http2.{field}: {rule}"));
            }
        };
        check(
            self.max_concurrent_streams >= 1,
            "max_concurrent_streams",
            "must be at least 1",
        );
        check(
            self.max_header_list_size >= 1024,
            "max_header_list_size",
            "must be at least 1024",
        );
        check(
            self.initial_window_size <= MAX_WINDOW,
            "initial_window_size",
            "must be at most 2147483647",
        );
        check(
            (65_535..=MAX_WINDOW).contains(&self.initial_connection_window_size),
            "initial_connection_window_size",
            "must be 65535..=2147483647",
        );
        check(
            (16_384..=16_777_215).contains(&self.max_frame_size),
            "max_frame_size",
            "must be 16384..=16777215",
        );
        check(
            self.max_send_buffer_size >= 1024,
            "max_send_buffer_size",
            "must be at least 1024",
        );
        check(
            self.max_pending_accept_reset_streams >= 1,
            "max_pending_accept_reset_streams",
            "must be at least 1",
        );
        check(
            self.max_local_error_reset_streams >= 1,
            "max_local_error_reset_streams",
            "must be at least 1",
        );
        check(
            self.close_timeout > 0.0 && self.close_timeout <= MAX_CLOSE_TIMEOUT,
            "close_timeout",
            "must be a number of seconds > 0 and at most 3600",
        );
        errors
    }

    /// The `h2` server configured with these settings.
    pub(crate) fn server(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .initial_window_size(self.initial_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer_size as usize)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        builder
    }

    /// The `h2` client for upstream connections: the same windows and buffers, so a stream
    /// relayed end to end is held back by the same bounds on both sides. `max_response_head`
    /// bounds a response's header block, as for HTTP/1 upstreams.
    pub(crate) fn client(&self, max_response_head: usize) -> h2::client::Builder {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(self.initial_window_size)
            .initial_connection_window_size(self.initial_connection_window_size)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer_size as usize)
            .max_header_list_size(u32::try_from(max_response_head).unwrap_or(u32::MAX))
            .enable_push(false);
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(Http2Settings::default().validate().is_empty());
        let bad = Http2Settings {
            max_concurrent_streams: 0,
            max_frame_size: 1000,
            initial_window_size: u32::MAX,
            close_timeout: 0.0,
            ..Http2Settings::default()
        };
        let errors = bad.validate();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("proxy.http2.max_concurrent_streams"));
    }
}
