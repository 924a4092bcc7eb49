//! A request on a route with `frames-push`, once its plugins let it through: its body goes,
//! as one frame, to the client of the plugin's frames route bound to the request's key (see
//! [`crate::stream::bindings`]), and the gateway answers it itself.
//!
//! `POST`, with the key in `X-Frame-Connection-Key` (or the `key` query argument) and the
//! frame's command in `X-Frame-Command`. The body is the frame's as it is; a JSON body
//! (`Content-Type: application/json`) for a command whose route names message types is
//! encoded as its `response` message, the type the client reads that command's frames as.
//!
//! - 202 `{"sequence"}`: the frame waits in the client's queue, with that sequence id.
//! - 404: no client of the route is bound to the key on this node.
//! - 503: the client's queue is full (it does not read): the pusher may retry later.
//! - 400 naming the header (or `body`) at fault; 413 for a body over the route's `max_body`;
//!   405 for another method.

use bytes::Bytes;
use pylon_frames::{EncodeError, Frame};
use pylon_plugin::{FramesPush, Reply, RequestCtx};
use pylon_router::RequestView;
use serde_json::{json, Value};

use super::{Downstream, PluginWork};
use crate::error::GatewayError;
use crate::outcome::{End, Outcome};
use crate::stream::bindings::Pushed;
use crate::vars::{RequestFields, RequestVars};
use crate::worker::Worker;

/// The request header with the key of the connection to push to.
const KEY_HEADER: &str = "x-frame-connection-key";
/// The request header with the pushed frame's command.
const COMMAND_HEADER: &str = "x-frame-command";
/// What a JSON body may hold besides what its message encodes to.
const JSON_OVERHEAD: usize = 64 * 1024;

/// Pushes the request's body to the client `push` names, and answers the request.
pub(super) async fn push<D: Downstream>(
    worker: &Worker,
    downstream: &mut D,
    vars: &RequestVars<'_, D::Head>,
    push: &FramesPush,
    PluginWork { plugins, ctx }: PluginWork<'_>,
) -> Outcome {
    let view = worker.view();
    let stream_route = &push.stream_route_id;
    let Some(route) = view.snapshot.stream.frames_route(stream_route) else {
        // Refused when written through the Admin API; a declarative file can still say so.
        tracing::warn!(
            route = ctx.route_id(),
            %stream_route,
            "frames-push names a stream route that does not speak frames"
        );
        return downstream.error(vars, GatewayError::BadGateway).await;
    };
    // Compiled frames routes have their protocol: `frames_route` found the route by it.
    let Some(frames) = route.frames.as_deref() else {
        return downstream.error(vars, GatewayError::BadGateway).await;
    };
    let layout = frames.protocol().layout();
    let max_body = usize::try_from(layout.max_body()).unwrap_or(usize::MAX);

    let request = match PushRequest::of(ctx, vars) {
        Ok(request) => request,
        Err(reply) => {
            let reply = plugins.reply(ctx, reply);
            return downstream.reply(vars, &reply, End::Complete).await;
        }
    };
    let messages = (request.json)
        .then(|| frames.messages(request.command))
        .flatten();
    let limit = match messages {
        Some(_) => max_body.saturating_mul(2).saturating_add(JSON_OVERHEAD),
        None => max_body,
    };
    let reply = match downstream.read_body(vars, limit).await {
        Ok(Some(body)) => {
            let body = match messages {
                Some(messages) => encode_json(frames.codec(), &messages.response, &body),
                None => Ok(body),
            };
            match body {
                Ok(body) if body.len() > max_body => too_long(max_body),
                Ok(body) => {
                    let frame = Frame {
                        command: request.command,
                        body,
                        ..Frame::default()
                    };
                    let pushed = (worker.bindings).push(&route.id, &request.key, frame, layout);
                    answer(pushed, &request.key)
                }
                Err(reply) => reply,
            }
        }
        Ok(None) => too_long(limit),
        Err(error) => return downstream.error(vars, error).await,
    };
    let reply = plugins.reply(ctx, reply);
    downstream.reply(vars, &reply, End::Complete).await
}

/// What a push request asks for, from its head.
struct PushRequest {
    key: String,
    command: u64,
    /// The body is JSON.
    json: bool,
}

impl PushRequest {
    fn of<H: RequestFields>(
        ctx: &RequestCtx<'_>,
        vars: &RequestVars<'_, H>,
    ) -> Result<Self, Reply> {
        if vars.method() != "POST" {
            return Err(error(405, "frames-push takes POST").header("allow", "POST"));
        }
        let key = ctx
            .header(KEY_HEADER)
            .or_else(|| vars.var("arg_key"))
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty());
        let Some(key) = key else {
            return Err(error(
                400,
                "X-Frame-Connection-Key: required (or the `key` query argument)",
            ));
        };
        let Some(command) = ctx.header(COMMAND_HEADER) else {
            return Err(error(400, "X-Frame-Command: required"));
        };
        let Ok(command) = command.trim().parse() else {
            return Err(error(
                400,
                &format!("X-Frame-Command: `{command}` is not a command id (a decimal integer)"),
            ));
        };
        let json = ctx.header("content-type").is_some_and(|content_type| {
            let media = content_type.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/json")
        });
        Ok(PushRequest { key, command, json })
    }
}

/// A JSON body as a `message`.
fn encode_json(
    codec: &pylon_protobuf::Codec,
    message: &pylon_protobuf::MessageDescriptor,
    body: &[u8],
) -> Result<Bytes, Reply> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| error(400, &format!("body: not JSON: {e}")))?;
    let wire = codec.encode(message, &value).map_err(|e| {
        let name = message.full_name();
        error(400, &format!("body: not a `{name}`: {e}"))
    })?;
    Ok(Bytes::from(wire))
}

/// The answer to a push the registry took, or refused.
fn answer(pushed: Result<Pushed, EncodeError>, key: &str) -> Reply {
    match pushed {
        Ok(Pushed::Queued(sequence)) => Reply::json(202, &json!({ "sequence": sequence })),
        Ok(Pushed::NotBound) => error(404, &format!("no connection for key `{key}`")),
        Ok(Pushed::Full) => error(503, &format!("the push queue of key `{key}` is full")),
        Err(EncodeError::BodyTooLong { max, .. }) => {
            too_long(usize::try_from(max).unwrap_or(usize::MAX))
        }
        Err(e @ EncodeError::TooWide { .. }) => {
            // The sequence id wraps within its field, and pushes set no other field.
            error(400, &format!("X-Frame-Command: {e}"))
        }
    }
}

fn too_long(max: usize) -> Reply {
    error(
        413,
        &format!("body: longer than {max} bytes, the most a push takes"),
    )
}

/// The gateway's error body: `{"error_msg": ...}`.
fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, &json!({ "error_msg": message }))
}
