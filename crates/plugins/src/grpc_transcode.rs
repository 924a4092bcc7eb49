//! `grpc-transcode`: an HTTP/JSON request becomes a gRPC call to the route's upstream
//! (`scheme: grpc`/`grpcs`), and the call's answer becomes JSON, with APISIX's fields.
//!
//! Beyond APISIX: without `method`, the method is the one of `service` whose
//! `google.api.http` annotation matches the request's verb and path (path variables, `body`
//! and query arguments filling its input as the HttpRule specification says); and a
//! server-streaming method answers as it streams, one JSON message per line (NDJSON), or as
//! server-sent events to a client that accepts `text/event-stream`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use prost::Message;
use pylon_model::FieldError;
use pylon_plugin::{
    Answer, AnswerHead, GrpcCall, Phases, Plugin, Reply, RequestCtx, ResponseHeaders, Transcoder,
};
use pylon_protobuf::{
    frame, http_status, Binding, Codec, Deframer, FieldDescriptor, MessageDescriptor,
    MethodDescriptor, Schema,
};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::protos::id_text;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "grpc-transcode",
    priority: 506,
    schema: schema_of::<GrpcTranscodeConfig>,
    build,
    credential: None,
    metadata: None,
};

/// The most request body read: gRPC's default largest message.
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GrpcTranscodeConfig {
    /// The `protos` resource that defines the service (a string or integer id).
    proto_id: Value,
    /// The service's full name: `package.Service`.
    service: String,
    /// The method to call. Pylon: without it, the method is chosen by the service's
    /// `google.api.http` annotations.
    #[serde(default)]
    method: Option<String>,
    /// The most the call may take, in milliseconds; 0: the route's timeouts.
    #[serde(default)]
    deadline: f64,
    /// How messages are read from and written as JSON.
    #[serde(default = "default_pb_option")]
    pb_option: Vec<String>,
    /// On an error, decode `grpc-status-details-bin` into the body's `details`.
    #[serde(default)]
    show_status_in_body: bool,
    /// The message type of the status details, to decode them as JSON.
    #[serde(default)]
    status_detail_type: Option<String>,
    /// The largest response accepted, in bytes.
    #[serde(default = "default_max_resp_body_size")]
    #[schemars(range(min = 1))]
    max_resp_body_size: usize,
}

fn default_pb_option() -> Vec<String> {
    [
        "enum_as_name",
        "int64_as_number",
        "auto_default_values",
        "disable_hooks",
    ]
    .map(String::from)
    .to_vec()
}

fn default_max_resp_body_size() -> usize {
    64 * 1024 * 1024
}

/// How the plugin finds the method of a request.
enum Methods {
    /// The one configured.
    Fixed(MethodDescriptor),
    /// By the service's annotations.
    Annotated(Vec<Binding>),
}

struct GrpcTranscode {
    shared: Arc<Shared>,
}

/// What every request's transcoder reads.
struct Shared {
    methods: Methods,
    codec: Codec,
    deadline: Option<Duration>,
    /// The message type of status details, when they are shown.
    details: Option<DetailsType>,
    max_response: usize,
}

/// How status details are shown: all of them, those of `message` decoded.
struct DetailsType {
    message: Option<MessageDescriptor>,
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: GrpcTranscodeConfig = parse(config)?;
    let shared = compile(&config, env)?;
    Ok(Arc::new(GrpcTranscode {
        shared: Arc::new(shared),
    }))
}

fn compile(config: &GrpcTranscodeConfig, env: &BuildEnv<'_>) -> Result<Shared, FieldError> {
    if !matches!(config.proto_id, Value::String(_) | Value::Number(_)) {
        return Err(FieldError::new(
            "proto_id",
            "must be a string or an integer",
        ));
    }
    if !(config.deadline >= 0.0 && config.deadline.is_finite()) {
        return Err(FieldError::new(
            "deadline",
            "must be 0 or more milliseconds",
        ));
    }
    if config.max_resp_body_size == 0 {
        return Err(FieldError::new("max_resp_body_size", "must be at least 1"));
    }
    let codec = Codec::from_options(&config.pb_option)
        .map_err(|e| FieldError::new(format!("pb_option[{}]", e.index), e.message))?;
    let schema: &Arc<Schema> = env.protos.schema(&id_text(&config.proto_id), "proto_id")?;
    let service = schema
        .service(&config.service)
        .map_err(|e| FieldError::new("service", e.to_string()))?;
    let methods = match &config.method {
        Some(method) => {
            let method = schema
                .method(&config.service, method)
                .map_err(|e| FieldError::new("method", e.to_string()))?;
            refuse_client_streaming(&method, "method")?;
            Methods::Fixed(method)
        }
        None => {
            let bindings = Binding::of_service(&service)
                .map_err(|e| FieldError::new("service", e.to_string()))?;
            if bindings.is_empty() {
                return Err(FieldError::new(
                    "method",
                    format!(
                        "is required: service `{}` has no google.api.http annotations",
                        config.service
                    ),
                ));
            }
            for binding in &bindings {
                refuse_client_streaming(binding.method(), "service")?;
            }
            Methods::Annotated(bindings)
        }
    };
    let details = match (&config.status_detail_type, config.show_status_in_body) {
        (Some(name), _) => {
            let message = schema.message(name).ok_or_else(|| {
                FieldError::new(
                    "status_detail_type",
                    format!("message `{name}` is not defined in the proto"),
                )
            })?;
            config.show_status_in_body.then_some(DetailsType {
                message: Some(message),
            })
        }
        (None, true) => Some(DetailsType { message: None }),
        (None, false) => None,
    };
    Ok(Shared {
        methods,
        codec,
        deadline: (config.deadline > 0.0)
            .then(|| Duration::from_secs_f64(config.deadline / 1000.0)),
        details,
        max_response: config.max_resp_body_size,
    })
}

fn refuse_client_streaming(method: &MethodDescriptor, field: &str) -> Result<(), FieldError> {
    if method.is_client_streaming() {
        return Err(FieldError::new(
            field,
            format!(
                "method `{}` streams requests, which an HTTP request cannot carry",
                method.full_name()
            ),
        ));
    }
    Ok(())
}

impl Plugin for GrpcTranscode {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::TRANSCODE
    }

    fn transcoder(&self, _ctx: &RequestCtx<'_>) -> Option<Box<dyn Transcoder>> {
        Some(Box::new(Call {
            shared: self.shared.clone(),
            output: None,
            response_field: None,
            form: Form::Unary,
            deframer: Deframer::new(self.shared.max_response),
            head_status: None,
            body: Vec::new(),
            failure: None,
            streaming: false,
            deadline: None,
        }))
    }
}

/// How the client gets the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// One JSON message, once the call's status is known.
    Unary,
    /// One JSON message per line, as they arrive.
    Lines,
    /// One server-sent event per message, as they arrive.
    Events,
}

/// One request's call.
struct Call {
    shared: Arc<Shared>,
    /// The method's output type, once the call is made.
    output: Option<MessageDescriptor>,
    /// The output's field that is the answer's body (the binding's `response_body`); `None`:
    /// the whole message.
    response_field: Option<FieldDescriptor>,
    form: Form,
    deframer: Deframer,
    /// A `grpc-status` in the response head (a trailers-only answer), with its message.
    head_status: Option<(u32, String)>,
    /// A unary answer's JSON, until its status is known.
    body: Vec<u8>,
    /// Why the answer could not be read, as a gRPC status.
    failure: Option<(u32, String)>,
    /// A streamed answer's head went out: the status comes as its last line or event.
    streaming: bool,
    /// When the call's deadline passes.
    deadline: Option<Instant>,
}

impl Transcoder for Call {
    fn body_limit(&self) -> usize {
        MAX_REQUEST_BODY
    }

    fn call(&mut self, ctx: &RequestCtx<'_>, body: Bytes) -> Result<GrpcCall, Reply> {
        let body = match body.iter().all(u8::is_ascii_whitespace) {
            true => None,
            false => Some(
                serde_json::from_slice::<Value>(&body)
                    .map_err(|e| Reply::message(400, &format!("the body is not JSON: {e}")))?,
            ),
        };
        let query = query_args(ctx.var("args").as_deref().unwrap_or(""));
        let (method, input) = match &self.shared.methods {
            Methods::Fixed(method) => {
                let mut input = match body {
                    None => Map::new(),
                    Some(Value::Object(object)) => object,
                    Some(_) => return Err(Reply::message(400, "the body must be a JSON object")),
                };
                for (name, value) in &query {
                    pylon_protobuf::set_param(&method.input(), &mut input, name, value)
                        .map_err(|e| Reply::message(400, &e.to_string()))?;
                }
                (method.clone(), Value::Object(input))
            }
            Methods::Annotated(bindings) => {
                let Some(bound) = Binding::find(bindings, ctx.method(), ctx.path()) else {
                    let message = format!("no method is bound to {} {}", ctx.method(), ctx.path());
                    return Err(Reply::message(404, &message));
                };
                let body = body.filter(|_| bound.takes_body());
                let input = bound
                    .input(body, &query)
                    .map_err(|e| Reply::message(400, &e.to_string()))?;
                self.response_field = bound.response_body().cloned();
                (bound.method().clone(), input)
            }
        };
        let wire = self
            .shared
            .codec
            .encode(&method.input(), &input)
            .map_err(|e| Reply::message(400, &e.to_string()))?;
        if method.is_server_streaming() {
            let events = ctx
                .header("accept")
                .is_some_and(|accept| accept.contains("text/event-stream"));
            self.form = if events { Form::Events } else { Form::Lines };
        }
        self.output = Some(method.output());
        self.deadline = self.shared.deadline.map(|d| Instant::now() + d);
        let mut headers = Vec::new();
        if let Some(deadline) = self.shared.deadline {
            headers.push((
                "grpc-timeout".to_owned(),
                format!("{}m", deadline.as_millis().max(1)),
            ));
        }
        Ok(GrpcCall {
            path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
            headers,
            body: Bytes::from(frame(&wire)),
            deadline: self.shared.deadline,
        })
    }

    fn head(&mut self, status: u16, headers: &dyn ResponseHeaders, out: &mut Answer) {
        if let Some(code) = grpc_status(headers) {
            self.head_status = Some((code, grpc_message(headers)));
            return;
        }
        if status != 200 {
            self.failure = Some((13, format!("the upstream answered HTTP {status}")));
            return;
        }
        let content_type = match self.form {
            Form::Unary => return,
            Form::Lines => "application/x-ndjson",
            Form::Events => "text/event-stream",
        };
        self.streaming = true;
        out.head = Some(AnswerHead {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
        });
    }

    fn data(&mut self, piece: &[u8], out: &mut Answer) {
        if self.failure.is_some() {
            return;
        }
        let Some(output) = &self.output else { return };
        let (codec, form, body) = (&self.shared.codec, self.form, &mut self.body);
        let field = self.response_field.as_ref();
        let mut failure = None;
        let mut messages = 0;
        let pushed = self.deframer.push(piece, |message| {
            messages += 1;
            if failure.is_some() {
                return;
            }
            let into = match form {
                Form::Unary => &mut *body,
                Form::Lines | Form::Events => &mut out.body,
            };
            let start = into.len();
            if form == Form::Events {
                into.extend_from_slice(b"data: ");
            }
            let decoded = match field {
                Some(field) => codec.decode_field(output, field, message, into),
                None => codec.decode(output, message, into),
            };
            if let Err(e) = decoded {
                into.truncate(start);
                failure = Some((13, e.to_string()));
                return;
            }
            into.extend_from_slice(if form == Form::Events { b"\n\n" } else { b"\n" });
        });
        if let Err(e) = pushed {
            failure = Some((13, format!("the response is not gRPC: {e}")));
        } else if form == Form::Unary && messages > 0 && body.len() > self.shared.max_response {
            failure = Some((8, "the response is over max_resp_body_size".into()));
        }
        self.failure = self.failure.take().or(failure);
    }

    fn end(&mut self, trailers: Option<&dyn ResponseHeaders>, out: &mut Answer) {
        let from_trailers = trailers.and_then(|t| Some((grpc_status(t)?, grpc_message(t))));
        let details = trailers.and_then(|t| t.header("grpc-status-details-bin"));
        let details = details.map(|d| self.details(d)).unwrap_or_default();
        let status = self
            .failure
            .take()
            .or(from_trailers)
            .or_else(|| self.head_status.take())
            .or_else(|| self.deframer.finish().err().map(|e| (13, e.to_string())))
            .unwrap_or_else(|| (13, "the upstream sent no grpc-status".into()));
        // The upstream gave up on the call at its `grpc-timeout` (some servers say CANCELLED
        // then): past the deadline, a failed call failed by it.
        if status.0 != 0 && self.deadline.is_some_and(|d| Instant::now() >= d) {
            return self.expired(out);
        }
        self.answer(status, details, out);
    }

    fn expired(&mut self, out: &mut Answer) {
        self.answer((4, "deadline exceeded".into()), Vec::new(), out);
    }
}

impl Call {
    /// The client's answer once the call's status is known: a unary answer's message, or
    /// the error; a stream that went out gets the error as its last line or event.
    fn answer(&mut self, (code, message): (u32, String), details: Vec<Value>, out: &mut Answer) {
        let status_headers = [
            ("grpc-status".to_owned(), code.to_string()),
            ("grpc-message".to_owned(), message.clone()),
        ];
        let error = json!({ "code": code, "message": message, "details": details });
        if self.streaming {
            if code != 0 {
                let error = json!({ "error": error }).to_string();
                match self.form {
                    Form::Events => {
                        out.body.extend_from_slice(b"event: error\ndata: ");
                        out.body.extend_from_slice(error.as_bytes());
                        out.body.extend_from_slice(b"\n\n");
                    }
                    _ => {
                        out.body.extend_from_slice(error.as_bytes());
                        out.body.push(b'\n');
                    }
                }
            }
            return;
        }
        let (status, body) = if code == 0 {
            let body = match std::mem::take(&mut self.body) {
                body if body.is_empty() => b"{}".to_vec(),
                mut body => {
                    body.pop(); // the line's end
                    body
                }
            };
            (200, body)
        } else {
            (http_status(code), error.to_string().into_bytes())
        };
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(status_headers);
        out.head = Some(AnswerHead { status, headers });
        out.body = body;
    }

    /// `grpc-status-details-bin` (a google.rpc.Status) as the body's `details`, when they
    /// are shown: each of the configured type decoded, any other as its type and bytes.
    fn details(&self, encoded: &[u8]) -> Vec<Value> {
        let Some(shown) = &self.shared.details else {
            return Vec::new();
        };
        let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
        let trimmed = encoded
            .strip_suffix(b"==")
            .or_else(|| encoded.strip_suffix(b"="))
            .unwrap_or(encoded);
        let Ok(bytes) = engine.decode(trimmed) else {
            return Vec::new();
        };
        let Ok(status) = RpcStatus::decode(bytes.as_slice()) else {
            return Vec::new();
        };
        status
            .details
            .iter()
            .map(|any| {
                let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
                let decoded = shown
                    .message
                    .as_ref()
                    .filter(|m| m.full_name() == type_name)
                    .and_then(|m| self.shared.codec.decode_value(m, &any.value).ok());
                decoded.unwrap_or_else(|| {
                    json!({
                        "type_url": any.type_url,
                        "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                    })
                })
            })
            .collect()
    }
}

/// google.rpc.Status, as `grpc-status-details-bin` carries it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// google.protobuf.Any.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

fn grpc_status(headers: &dyn ResponseHeaders) -> Option<u32> {
    std::str::from_utf8(headers.header("grpc-status")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `grpc-message`, percent-decoded as gRPC encodes it.
fn grpc_message(headers: &dyn ResponseHeaders) -> String {
    headers
        .header("grpc-message")
        .map(|m| String::from_utf8_lossy(&percent_decode(m, false)).into_owned())
        .unwrap_or_default()
}

/// The query string's arguments, decoded (`+` is a space), in order.
fn query_args(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode =
                |s: &str| String::from_utf8_lossy(&percent_decode(s.as_bytes(), true)).into_owned();
            (decode(name), decode(value))
        })
        .collect()
}

fn percent_decode(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let escaped = (input[i] == b'%')
            .then(|| input.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (escaped, input[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') if plus_is_space => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    out
}
