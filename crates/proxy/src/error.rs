//! Responses the gateway makes itself, in one place: status, reason and JSON body.

use std::io::Write;

use crate::http1::FramingError;

/// Why the gateway answers instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    BadRequest,
    RouteNotFound,
    RequestTimeout,
    UriTooLong,
    HeadersTooLarge,
    /// A request framed with a transfer coding the gateway does not implement.
    NotImplemented,
    /// An HTTP/1 request on a route whose upstream speaks only HTTP/2 (gRPC).
    HttpVersionNotSupported,
    BadGateway,
    NoUpstreamNode,
    /// A route with no upstream whose plugins did not answer.
    MissingUpstream,
    GatewayTimeout,
}

impl GatewayError {
    pub fn status(self) -> u16 {
        self.parts().0
    }

    fn parts(self) -> (u16, &'static str, &'static str) {
        match self {
            GatewayError::BadRequest => (400, "Bad Request", "400 Bad Request"),
            GatewayError::RouteNotFound => (404, "Not Found", "404 Route Not Found"),
            GatewayError::RequestTimeout => (408, "Request Timeout", "408 Request Timeout"),
            GatewayError::UriTooLong => (414, "URI Too Long", "414 Request-URI Too Large"),
            GatewayError::HeadersTooLarge => (
                431,
                "Request Header Fields Too Large",
                "431 Request Header Fields Too Large",
            ),
            GatewayError::NotImplemented => (501, "Not Implemented", "501 Not Implemented"),
            GatewayError::HttpVersionNotSupported => (
                505,
                "HTTP Version Not Supported",
                "505 HTTP/2 Required By The Upstream",
            ),
            GatewayError::BadGateway => (502, "Bad Gateway", "502 Bad Gateway"),
            GatewayError::NoUpstreamNode => {
                (503, "Service Unavailable", "503 No Upstream Node Available")
            }
            GatewayError::MissingUpstream => (
                503,
                "Service Unavailable",
                "503 Missing Upstream Configuration In Route Or Service",
            ),
            GatewayError::GatewayTimeout => (504, "Gateway Timeout", "504 Gateway Timeout"),
        }
    }

    /// What the client is told, e.g. `404 Route Not Found`.
    pub fn message(self) -> &'static str {
        self.parts().2
    }

    /// The JSON body: `{"error_msg":"<message>"}` and a newline.
    pub fn write_body(self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"error_msg":""#);
        out.extend_from_slice(self.message().as_bytes());
        out.extend_from_slice(b"\"}\n");
    }

    /// The gRPC status a gRPC client gets instead (the `grpc-status` codes of
    /// `grpc/doc/statuscodes.md`, chosen as gRPC's own HTTP-to-gRPC mapping does).
    pub fn grpc_status(self) -> u8 {
        match self {
            GatewayError::RouteNotFound
            | GatewayError::NotImplemented
            | GatewayError::HttpVersionNotSupported => 12, // UNIMPLEMENTED
            GatewayError::RequestTimeout | GatewayError::GatewayTimeout => 4, // DEADLINE_EXCEEDED
            GatewayError::BadGateway
            | GatewayError::NoUpstreamNode
            | GatewayError::MissingUpstream => 14, // UNAVAILABLE
            GatewayError::BadRequest | GatewayError::UriTooLong | GatewayError::HeadersTooLarge => {
                13 // INTERNAL
            }
        }
    }

    /// Writes the whole response into `out`; returns the body length.
    pub fn write_response(self, out: &mut Vec<u8>, close: bool) -> u64 {
        let (status, reason, _) = self.parts();
        let body_len = self.body_len();
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nServer: Pylon\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" },
        );
        self.write_body(out);
        body_len as u64
    }

    /// The length of what [`GatewayError::write_body`] writes.
    pub fn body_len(self) -> usize {
        self.message().len() + r#"{"error_msg":""}"#.len() + 1
    }
}

impl From<FramingError> for GatewayError {
    fn from(error: FramingError) -> Self {
        match error {
            // RFC 9112 §6.1: a server SHOULD answer a coding it does not understand with 501.
            FramingError::UnsupportedCoding => GatewayError::NotImplemented,
            _ => GatewayError::BadRequest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_with_exact_lengths() {
        let mut out = Vec::new();
        let len = GatewayError::RouteNotFound.write_response(&mut out, true);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("Content-Type: application/json"));
        assert!(head.ends_with("Connection: close"));
        assert_eq!(body, "{\"error_msg\":\"404 Route Not Found\"}\n");
        assert_eq!(len as usize, body.len());
        assert!(head.contains(&format!("Content-Length: {len}")));
    }
}
