//! The HTTP/1 client codec: writing a request head, reading a response head. Relaying the
//! bodies is the caller's: it knows which side streams from where.

use std::time::Duration;

use tokio::io::AsyncRead;

use crate::attempts::Failure;
use crate::error::GatewayError;
use crate::http1::{is_framing_header, BodyFraming, ResponseHead};
use crate::outbound::{
    forwards_header, plugin_may_set, push_header, write_forwarding_headers, RequestContext,
};
use crate::relay::{read_more, RelayError};
use crate::vars::RequestFields;

/// The request head as the upstream gets it: hop-by-hop headers dropped, `Host` as given,
/// and the `X-Forwarded-*` / `X-Real-IP` headers set.
pub(crate) fn write_request_head(
    out: &mut Vec<u8>,
    head: &impl RequestFields,
    context: &RequestContext<'_>,
    host: &[u8],
    framing: BodyFraming,
    upgrade: Option<&[u8]>,
) {
    let edits = context.edits;
    let connection = head.header("connection");
    out.extend_from_slice(edits.method.as_deref().unwrap_or(head.method()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(edits.uri.as_deref().unwrap_or(head.target()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(edits.host.as_deref().map_or(host, str::as_bytes));
    out.extend_from_slice(b"\r\n");
    // HTTP/2 may split `Cookie` into one field per cookie; HTTP/1 wants them on one line
    // (RFC 9113 §8.2.3).
    let join_cookies = head.protocol() == "HTTP/2.0" && !edits.headers.replaces("cookie");
    let mut cookies = 0;
    for (name, value) in head.headers() {
        if join_cookies && name.eq_ignore_ascii_case("cookie") {
            cookies += 1;
        } else if forwards_header(name, value, connection)
            && !is_framing_header(name)
            && !edits.headers.replaces(name)
        {
            push_header(out, name.as_bytes(), value);
        }
    }
    if cookies > 0 {
        out.extend_from_slice(b"Cookie: ");
        let values = head
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"));
        for (i, (_, value)) in values.enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in edits.headers.added() {
        if plugin_may_set(name) {
            push_header(out, name.as_bytes(), value.as_bytes());
        }
    }
    // The framing the gateway found, as one value: a client's list of equal lengths would be
    // read as a list, or refused, by a server that does not allow one (RFC 9112 §6.3).
    match framing {
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::Length(n) => push_header(
            out,
            b"Content-Length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        // An explicit zero stays: some servers want a length on every POST.
        BodyFraming::None if head.header("content-length").is_some() => {
            out.extend_from_slice(b"Content-Length: 0\r\n")
        }
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    if let Some(protocol) = upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_header(out, b"Upgrade", protocol);
    }
    write_forwarding_headers(out, head, context);
    out.extend_from_slice(b"\r\n");
}

/// Reads the upstream's next response head, interim or final, into `response`; returns its
/// length at the start of `up_buf`. `interim_seen`: an interim response came before this one,
/// so the upstream has answered and the request must not be replayed.
pub(crate) async fn read_response_head<R: AsyncRead + Unpin>(
    up: &mut R,
    up_buf: &mut bytes::BytesMut,
    response: &mut ResponseHead,
    max_head: usize,
    read_timeout: Duration,
    reused: bool,
    interim_seen: bool,
) -> Result<usize, Failure> {
    loop {
        match response.parse(up_buf, max_head) {
            Ok(Some(len)) => return Ok(len),
            Ok(None) => {}
            Err(_) => return Err(Failure::bad_response()),
        }
        match read_more(up, up_buf, read_timeout).await {
            Ok(n) if n > 0 => {}
            result => {
                let nothing_received = up_buf.is_empty() && !interim_seen;
                let timed_out = matches!(&result, Err(RelayError::Source(e)) if e.kind() == std::io::ErrorKind::TimedOut);
                return Err(Failure {
                    error: if timed_out {
                        GatewayError::GatewayTimeout
                    } else {
                        GatewayError::BadGateway
                    },
                    replayable: nothing_received,
                    stale: reused && nothing_received && !timed_out,
                    sent: true,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::RequestEdits;

    use super::*;
    use crate::http1::RequestHead;

    fn forwarded_head(wire: &str, framing: BodyFraming) -> String {
        edited_head(wire, framing, &RequestEdits::default())
    }

    fn edited_head(wire: &str, framing: BodyFraming, edits: &RequestEdits) -> String {
        let head = RequestHead::from_wire(wire);
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &head,
            &RequestContext {
                client_host: head.client_host(),
                client: "192.0.2.9".parse().unwrap(),
                local: "127.0.0.1:9080".parse().unwrap(),
                scheme: "http",
                edits,
            },
            b"backend",
            framing,
            None,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plugin_edits_change_what_the_upstream_gets() {
        let mut edits = RequestEdits {
            method: Some("POST".into()),
            uri: Some("/new?a=1".into()),
            host: Some("rewritten.example".into()),
            ..RequestEdits::default()
        };
        edits.headers.set("X-Set", "s");
        edits.headers.remove("X-Gone");
        edits.headers.add("X-Keep", "2");
        // Framing stays the codec's: a plugin cannot set these.
        edits.headers.set("Content-Length", "99");
        edits.headers.set("Transfer-Encoding", "chunked");
        let head = edited_head(
            "GET /old HTTP/1.1\r\nHost: a\r\nX-Set: old\r\nX-Gone: 1\r\nX-Keep: 1\r\n\r\n",
            BodyFraming::None,
            &edits,
        );
        assert!(
            head.starts_with("POST /new?a=1 HTTP/1.1\r\nHost: rewritten.example\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nX-Set: s\r\n") && !head.contains("X-Set: old"),
            "{head}"
        );
        assert!(!head.contains("X-Gone"), "{head}");
        assert!(
            head.contains("\r\nX-Keep: 1\r\n") && head.contains("\r\nX-Keep: 2\r\n"),
            "{head}"
        );
        assert!(
            !head.contains("Content-Length") && !head.contains("Transfer-Encoding"),
            "{head}"
        );
    }

    #[test]
    fn every_forwarded_for_line_is_kept_in_order() {
        let head = forwarded_head(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-For: \r\n\r\n",
            BodyFraming::None,
        );
        assert!(
            head.contains("\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.9\r\n"),
            "{head}"
        );
        assert_eq!(head.matches("X-Forwarded-For").count(), 1, "{head}");
    }

    #[test]
    fn a_request_goes_on_with_its_content_length_as_one_value() {
        let head = forwarded_head(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 005\r\n\r\n",
            BodyFraming::Length(5),
        );
        assert_eq!(head.matches("Content-Length").count(), 1, "{head}");
        assert!(head.contains("\r\nContent-Length: 5\r\n"), "{head}");
        let head = forwarded_head(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n",
            BodyFraming::None,
        );
        assert!(head.contains("\r\nContent-Length: 0\r\n"), "{head}");
        assert_eq!(head.matches("Content-Length").count(), 1, "{head}");
        let head = forwarded_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n", BodyFraming::None);
        assert!(!head.contains("Content-Length"), "{head}");
    }

    #[test]
    fn the_continue_expectation_stays_with_the_gateway() {
        let head = forwarded_head(
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            BodyFraming::Length(5),
        );
        assert!(!head.to_ascii_lowercase().contains("expect"), "{head}");
        assert!(head.contains("\r\nContent-Length: 5\r\n"), "{head}");
    }
}
