//! `grpc-web`: a browser's gRPC-Web call becomes a gRPC call to the route's upstream
//! (`scheme: grpc`/`grpcs`), and the call's answer a gRPC-Web response: its messages as they
//! arrive, then its status and trailers as one last frame in the body, where a browser can
//! read them. Preflights are answered, and every response of the route carries the CORS
//! headers a page needs to read the status, as APISIX's plugin does.
//!
//! Messages are never decoded: gRPC-Web frames them as gRPC does, so they pass as they are,
//! only base64-decoded and encoded for the text content types. The upstream path is the
//! request's (`/package.Service/Method`), or the one a rewrite plugin gave it.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use pylon_model::FieldError;
use pylon_plugin::{
    Answer, AnswerHead, GrpcCall, Phases, Plugin, Reply, RequestCtx, ResponseCtx, ResponseHeaders,
    Step, Transcoder,
};
use pylon_protobuf::code_of_http_status;
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "grpc-web",
    priority: 505,
    schema: schema_of::<GrpcWebConfig>,
    build,
    credential: None,
    metadata: None,
};

/// The response headers a page may read: the call's status, when it comes as headers.
const EXPOSE_HEADERS: &str = "grpc-status,grpc-message";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GrpcWebConfig {
    /// The request headers a preflight allows, separated by commas.
    #[serde(default = "default_cors_allow_headers")]
    cors_allow_headers: String,
    /// The largest request body read, in bytes: a larger one is refused with 413.
    #[serde(default = "default_max_req_body_size")]
    #[schemars(range(min = 1))]
    max_req_body_size: usize,
}

fn default_cors_allow_headers() -> String {
    "content-type,x-grpc-web,x-user-agent".to_owned()
}

fn default_max_req_body_size() -> usize {
    64 * 1024 * 1024
}

struct GrpcWeb {
    /// Shared with every preflight's edits rather than copied into them.
    allow_headers: Arc<str>,
    max_body: usize,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: GrpcWebConfig = parse(config)?;
    if config.max_req_body_size == 0 {
        return Err(FieldError::new("max_req_body_size", "must be at least 1"));
    }
    let not_a_name = config
        .cors_allow_headers
        .split(',')
        .map(str::trim)
        .find(|name| name.is_empty() || !name.bytes().all(is_token_byte));
    if let Some(name) = not_a_name {
        return Err(FieldError::new(
            "cors_allow_headers",
            format!("must be header names separated by commas: `{name}` is not one"),
        ));
    }
    Ok(Arc::new(GrpcWeb {
        allow_headers: config.cors_allow_headers.into(),
        max_body: config.max_req_body_size,
    }))
}

/// A byte of an HTTP token (a header name), RFC 9110's `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How a gRPC-Web body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// The frames as they are: `application/grpc-web`, `application/grpc-web+proto`.
    Binary,
    /// The frames in base64: `application/grpc-web-text`, `application/grpc-web-text+proto`.
    Text,
}

/// The encoding a request's content type says, `None` when it is not gRPC-Web's.
fn encoding_of(content_type: &str) -> Option<Encoding> {
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    let is = |name: &str| mime.eq_ignore_ascii_case(name);
    if is("application/grpc-web") || is("application/grpc-web+proto") {
        Some(Encoding::Binary)
    } else if is("application/grpc-web-text") || is("application/grpc-web-text+proto") {
        Some(Encoding::Text)
    } else {
        None
    }
}

impl Plugin for GrpcWeb {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS | Phases::HEADER_FILTER | Phases::TRANSCODE
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        match ctx.method() {
            // A preflight: the CORS headers are added to it by `header_filter`.
            "OPTIONS" => return Step::Reply(Reply::status(204)),
            "POST" => {}
            other => {
                let message = format!("a gRPC-Web call is a POST, not a {other}");
                return Step::Reply(Reply::message(405, &message).header("Allow", "POST, OPTIONS"));
            }
        }
        let content_type = ctx.header("content-type");
        if content_type.as_deref().and_then(encoding_of).is_none() {
            let message = format!(
                "content type `{}` is not gRPC-Web's: application/grpc-web, \
                 application/grpc-web-text, either with +proto",
                content_type.as_deref().unwrap_or_default()
            );
            return Step::Reply(Reply::message(400, &message));
        }
        Step::Continue
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_, '_>) {
        let headers = &mut ctx.edits.headers;
        if ctx.request.method() == "OPTIONS" {
            headers.set("Access-Control-Allow-Methods", "POST");
            headers.set("Access-Control-Allow-Headers", &self.allow_headers);
        }
        // The `cors` plugin, when the route has it, has the say on origins.
        if headers.get("access-control-allow-origin").is_none() {
            headers.set("Access-Control-Allow-Origin", "*");
        }
        headers.set("Access-Control-Expose-Headers", EXPOSE_HEADERS);
    }

    fn transcoder(&self, ctx: &RequestCtx<'_>) -> Option<Box<dyn Transcoder>> {
        let content_type = ctx.header("content-type")?;
        let encoding = encoding_of(&content_type)?;
        Some(Box::new(WebCall {
            encoding,
            content_type: content_type.into_owned(),
            max_body: self.max_body,
            answered: false,
            head_status: None,
            failure: None,
        }))
    }
}

/// A call's status as gRPC-Web's trailer frame carries it.
#[derive(Debug, Clone, PartialEq)]
struct Status {
    code: u32,
    /// As gRPC sends it: percent-encoded.
    message: Vec<u8>,
    /// `grpc-status-details-bin`, as sent.
    details: Option<Vec<u8>>,
}

impl Status {
    /// The status in a header block, if it has one.
    fn of(headers: &dyn ResponseHeaders) -> Option<Status> {
        let code = std::str::from_utf8(headers.header("grpc-status")?)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Status {
            code,
            message: headers.header("grpc-message").unwrap_or_default().to_vec(),
            details: headers
                .header("grpc-status-details-bin")
                .map(<[u8]>::to_vec),
        })
    }

    /// A status of the gateway's own.
    fn new(code: u32, message: &str) -> Status {
        Status {
            code,
            message: message.as_bytes().to_vec(),
            details: None,
        }
    }

    /// The trailer frame: flag 0x80, the block's length (4 bytes, big-endian), and the
    /// block, written as HTTP/1 header lines.
    fn frame(&self) -> Vec<u8> {
        let mut block = format!("grpc-status:{}\r\ngrpc-message:", self.code).into_bytes();
        block.extend_from_slice(&self.message);
        block.extend_from_slice(b"\r\n");
        if let Some(details) = &self.details {
            block.extend_from_slice(b"grpc-status-details-bin:");
            block.extend_from_slice(details);
            block.extend_from_slice(b"\r\n");
        }
        let mut frame = Vec::with_capacity(5 + block.len());
        frame.push(0x80);
        // A few header lines: far below 4 GiB.
        frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
        frame.extend_from_slice(&block);
        frame
    }
}

/// One request's call.
struct WebCall {
    encoding: Encoding,
    /// The request's, which the response has too.
    content_type: String,
    max_body: usize,
    /// The response head was given to the gateway.
    answered: bool,
    /// A `grpc-status` in the response head (a trailers-only answer).
    head_status: Option<Status>,
    /// The upstream answered, but not as gRPC: its body is not passed on.
    failure: Option<Status>,
}

impl WebCall {
    /// The client's response head, the first time only: the messages then stream as they
    /// come, and the status follows them in the body.
    fn answer_head(&mut self, out: &mut Answer) {
        if !self.answered {
            self.answered = true;
            out.head = Some(AnswerHead {
                status: 200,
                headers: vec![("content-type".to_owned(), self.content_type.clone())],
            });
        }
    }

    /// Bytes of gRPC-Web body, base64-encoded for the text types: each piece on its own,
    /// padded, so that none waits for the next (a reader decodes by groups of four).
    fn write(&self, bytes: &[u8], out: &mut Answer) {
        match self.encoding {
            Encoding::Binary => out.body.extend_from_slice(bytes),
            Encoding::Text => out
                .body
                .extend_from_slice(STANDARD.encode(bytes).as_bytes()),
        }
    }
}

impl Transcoder for WebCall {
    fn body_limit(&self) -> usize {
        self.max_body
    }

    fn call(&mut self, ctx: &RequestCtx<'_>, body: Bytes) -> Result<GrpcCall, Reply> {
        let body = match self.encoding {
            Encoding::Binary => body,
            Encoding::Text => decode_text(&body)
                .map(Bytes::from)
                .ok_or_else(|| Reply::message(400, "the body is not base64"))?,
        };
        let path = match &ctx.edits.uri {
            Some(uri) => uri.split('?').next().unwrap_or_default(),
            None => ctx.path(),
        };
        Ok(GrpcCall {
            path: path.to_owned(),
            headers: metadata(ctx),
            body,
            deadline: None,
        })
    }

    fn head(&mut self, status: u16, headers: &dyn ResponseHeaders, out: &mut Answer) {
        if let Some(status) = Status::of(headers) {
            self.head_status = Some(status);
        } else if status != 200 {
            let message = format!("the upstream answered HTTP {status}");
            self.failure = Some(Status::new(code_of_http_status(status), &message));
        }
        self.answer_head(out);
    }

    fn data(&mut self, piece: &[u8], out: &mut Answer) {
        if self.failure.is_none() {
            self.write(piece, out);
        }
    }

    fn end(&mut self, trailers: Option<&dyn ResponseHeaders>, out: &mut Answer) {
        let status = self
            .failure
            .take()
            .or_else(|| trailers.and_then(Status::of))
            .or_else(|| self.head_status.take())
            .unwrap_or_else(|| Status::new(2, "the upstream sent no grpc-status"));
        self.answer_head(out);
        self.write(&status.frame(), out);
    }

    fn expired(&mut self, out: &mut Answer) {
        self.answer_head(out);
        self.write(&Status::new(4, "deadline exceeded").frame(), out);
    }
}

/// The request's headers as the call's metadata: the client's (with the plugins' edits),
/// but those that describe the HTTP exchange rather than the call, which the gateway writes.
fn metadata(ctx: &RequestCtx<'_>) -> Vec<(String, String)> {
    let is_metadata = |name: &str| {
        !name.starts_with(':')
            && !["content-type", "content-length", "accept-encoding", "te"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
    };
    let mut headers = Vec::new();
    ctx.for_each_header(&mut |name, value| {
        if !is_metadata(name) || ctx.edits.headers.replaces(name) {
            return;
        }
        if let Ok(value) = std::str::from_utf8(value) {
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
    });
    let added = ctx
        .edits
        .headers
        .added()
        .filter(|(name, _)| is_metadata(name));
    headers.extend(added.map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned())));
    headers
}

/// A gRPC-Web text body: base64, possibly several padded segments one after the other (a
/// client may encode each message apart). `None` when it is not base64.
fn decode_text(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut decoded = Vec::with_capacity(text.len() / 4 * 3);
    let mut start = 0;
    for end in (4..=text.len()).step_by(4) {
        // A segment ends with its padding, or with the body.
        if text[end - 1] == b'=' || end == text.len() {
            STANDARD.decode_vec(&text[start..end], &mut decoded).ok()?;
            start = end;
        }
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{ResponseEdits, Text};
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, reply_header, TestRequest};

    /// A header block, as the upstream's head or trailers.
    struct Block(Vec<(&'static str, &'static str)>);

    impl ResponseHeaders for Block {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    fn plugin(config: Value) -> Arc<dyn Plugin> {
        build_plugin(&DESCRIPTOR, config).unwrap()
    }

    fn post(content_type: &str) -> TestRequest {
        TestRequest::get("/demo.Echo/Say")
            .method("POST")
            .header("content-type", content_type)
    }

    /// The call made for `request` with `body`, and its transcoder.
    fn call_of(request: &TestRequest, body: &[u8]) -> (GrpcCall, Box<dyn Transcoder>) {
        let ctx = RequestCtx::new(request, "r", None);
        let mut transcoder = plugin(json!({})).transcoder(&ctx).expect("a transcoder");
        let call = transcoder
            .call(&ctx, Bytes::copy_from_slice(body))
            .expect("a call");
        (call, transcoder)
    }

    fn grpc_frame(message: &[u8]) -> Vec<u8> {
        pylon_protobuf::frame(message)
    }

    #[test]
    fn defaults_and_refusals_name_the_field() {
        let config = parse::<GrpcWebConfig>(&json!({})).unwrap();
        assert_eq!(
            config.cors_allow_headers,
            "content-type,x-grpc-web,x-user-agent"
        );
        assert_eq!(config.max_req_body_size, 64 * 1024 * 1024);

        let refused = |config: Value| {
            let e = refusal(&DESCRIPTOR, config);
            (e.path, e.message)
        };
        assert_eq!(
            refused(json!({"cors_allow_headers": "content-type, x b"})),
            (
                "cors_allow_headers".into(),
                "must be header names separated by commas: `x b` is not one".into()
            )
        );
        assert_eq!(
            refused(json!({"cors_allow_headers": "a,,b"})).0,
            "cors_allow_headers"
        );
        assert_eq!(
            refused(json!({"max_req_body_size": 0})),
            ("max_req_body_size".into(), "must be at least 1".into())
        );
        assert_eq!(
            refused(json!({"max_req_body_size": -1})).0,
            "max_req_body_size"
        );
        assert_eq!(refused(json!({"strip_path": true})).0, "strip_path");
    }

    #[test]
    fn only_grpc_web_posts_go_on_and_preflights_are_answered() {
        let plugin = plugin(json!({}));
        let access = |request: &TestRequest| {
            let mut ctx = RequestCtx::new(request, "r", None);
            replied(plugin.access(&mut ctx))
        };
        for content_type in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "Application/gRPC-Web-Text+proto; charset=utf-8",
        ] {
            assert!(access(&post(content_type)).is_none(), "{content_type}");
        }
        let preflight = access(&TestRequest::get("/demo.Echo/Say").method("OPTIONS")).unwrap();
        assert_eq!(preflight.status, 204);

        let get = access(&TestRequest::get("/demo.Echo/Say")).unwrap();
        assert_eq!(
            (get.status, reply_header(&get, "allow")),
            (405, Some("POST, OPTIONS"))
        );
        for refused in [
            post("application/grpc"),
            TestRequest::get("/x").method("POST"),
        ] {
            assert_eq!(access(&refused).unwrap().status, 400, "{refused:?}");
        }
    }

    #[test]
    fn every_response_gets_the_cors_headers_and_a_preflight_the_allowed_ones() {
        let plugin = plugin(json!({"cors_allow_headers": "content-type,x-custom"}));
        let filter = |request: &TestRequest, edits: &mut ResponseEdits| {
            let ctx = RequestCtx::new(request, "r", None);
            plugin.header_filter(&mut ResponseCtx {
                request: &ctx,
                status: 200,
                own_status: 200,
                headers: &Block(Vec::new()),
                edits,
            });
        };
        let mut edits = ResponseEdits::default();
        filter(&post("application/grpc-web"), &mut edits);
        let added: Vec<_> = edits.headers.added().collect();
        assert_eq!(
            added,
            [
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Expose-Headers", "grpc-status,grpc-message")
            ]
        );

        // After `cors` allowed an origin, and on a preflight.
        let mut edits = ResponseEdits::default();
        let origin = Text::Static("https://app.example");
        edits.headers.set("Access-Control-Allow-Origin", origin);
        filter(&TestRequest::get("/s/M").method("OPTIONS"), &mut edits);
        let get = |name| edits.headers.get(name).flatten();
        assert_eq!(
            get("access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(get("access-control-allow-methods"), Some("POST"));
        assert_eq!(
            get("access-control-allow-headers"),
            Some("content-type,x-custom")
        );
    }

    #[test]
    fn a_call_carries_the_frames_path_and_metadata() {
        let message = grpc_frame(b"hello");
        let request = post("application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("authorization", "Bearer t")
            .header("Accept-Encoding", "gzip");
        let (call, _) = call_of(&request, &message);
        assert_eq!(call.path, "/demo.Echo/Say");
        assert_eq!(call.body, message);
        assert_eq!(call.deadline, None);
        assert_eq!(
            call.headers,
            [
                ("x-grpc-web".to_owned(), "1".to_owned()),
                ("authorization".to_owned(), "Bearer t".to_owned())
            ]
        );

        // Text: the frames in base64, one segment or several.
        let two = [grpc_frame(b"a"), grpc_frame(b"bc")];
        let segments = format!("{}{}", STANDARD.encode(&two[0]), STANDARD.encode(&two[1]));
        let (call, _) = call_of(&post("application/grpc-web-text"), segments.as_bytes());
        assert_eq!(call.body, two.concat());

        let ctx_request = post("application/grpc-web-text");
        let ctx = RequestCtx::new(&ctx_request, "r", None);
        let mut transcoder = plugin(json!({})).transcoder(&ctx).unwrap();
        let refused = transcoder.call(&ctx, Bytes::from_static(b"not base64!"));
        assert_eq!(refused.unwrap_err().status, 400);
    }

    /// The whole answer to a call of content type `content_type` whose upstream answers
    /// `head`, `pieces` of body and `trailers`.
    fn answer(
        content_type: &str,
        head: (u16, Block),
        pieces: &[&[u8]],
        trailers: Option<Block>,
    ) -> (AnswerHead, Vec<u8>) {
        let mut body = grpc_frame(b"q");
        if encoding_of(content_type) == Some(Encoding::Text) {
            body = STANDARD.encode(body).into_bytes();
        }
        let (_, mut transcoder) = call_of(&post(content_type), &body);
        let mut out = Answer::default();
        transcoder.head(head.0, &head.1, &mut out);
        for piece in pieces {
            transcoder.data(piece, &mut out);
        }
        let trailers = trailers.as_ref().map(|t| t as &dyn ResponseHeaders);
        transcoder.end(trailers, &mut out);
        (out.head.expect("a head"), out.body)
    }

    fn trailer_frame(block: &str) -> Vec<u8> {
        let mut frame = vec![0x80];
        frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
        frame.extend_from_slice(block.as_bytes());
        frame
    }

    #[test]
    fn messages_pass_and_the_status_follows_as_a_trailer_frame() {
        let messages = [grpc_frame(b"one"), grpc_frame(b"two")].concat();
        let ok = Block(vec![("grpc-status", "0")]);
        let (head, body) = answer(
            "application/grpc-web+proto",
            (200, Block(Vec::new())),
            &[&messages[..7], &messages[7..]],
            Some(ok),
        );
        assert_eq!(head.status, 200);
        assert_eq!(
            head.headers,
            [(
                "content-type".to_owned(),
                "application/grpc-web+proto".to_owned()
            )]
        );
        let trailer = trailer_frame("grpc-status:0\r\ngrpc-message:\r\n");
        assert_eq!(body, [messages.clone(), trailer.clone()].concat());

        // Text: each piece its own padded segment.
        let (_, body) = answer(
            "application/grpc-web-text",
            (200, Block(Vec::new())),
            &[&messages[..7], &messages[7..]],
            Some(Block(vec![("grpc-status", "0")])),
        );
        let expected = [&messages[..7], &messages[7..], &trailer[..]].map(|p| STANDARD.encode(p));
        assert_eq!(String::from_utf8(body).unwrap(), expected.concat());
    }

    #[test]
    fn errors_come_in_the_trailer_frame() {
        // A trailers-only answer: the status was in the head.
        let head = Block(vec![
            ("grpc-status", "5"),
            ("grpc-message", "no%20such%20item"),
            ("grpc-status-details-bin", "CAU"),
        ]);
        let (head, body) = answer("application/grpc-web", (200, head), &[], None);
        assert_eq!(head.status, 200);
        let block = "grpc-status:5\r\ngrpc-message:no%20such%20item\r\n\
                     grpc-status-details-bin:CAU\r\n";
        assert_eq!(body, trailer_frame(block));

        // Not a gRPC answer: its body is dropped, its HTTP status says the code.
        let (_, body) = answer(
            "application/grpc-web",
            (404, Block(Vec::new())),
            &[b"<html>"],
            None,
        );
        let block = "grpc-status:12\r\ngrpc-message:the upstream answered HTTP 404\r\n";
        assert_eq!(body, trailer_frame(block));

        // No status at all.
        let (_, body) = answer(
            "application/grpc-web",
            (200, Block(Vec::new())),
            &[],
            Some(Block(Vec::new())),
        );
        let block = "grpc-status:2\r\ngrpc-message:the upstream sent no grpc-status\r\n";
        assert_eq!(body, trailer_frame(block));
    }

    #[test]
    fn text_bodies_decode_in_padded_segments() {
        assert_eq!(decode_text(b"").unwrap(), b"");
        assert_eq!(decode_text(b"YQ==YmM=ZGVm").unwrap(), b"abcdef");
        assert_eq!(decode_text(b"YWJj").unwrap(), b"abc");
        assert!(decode_text(b"YWJ").is_none());
        assert!(decode_text(b"Y===").is_none());
    }
}
