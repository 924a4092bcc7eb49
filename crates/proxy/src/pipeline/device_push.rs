//! A request on a route with `device-push`, once its plugins let it through: the push API of
//! the push gateway the plugin names (see `pylon_push`). The gateway answers it itself.
//!
//! - `POST` with a message as JSON (`app_id`; one of `device_id`, `device_ids`, `tag`,
//!   `all: true`; `data`; optional `id`, `ttl`, `priority`, `collapse_key`, `rate`): 202
//!   `{"id"}` once the message is in Redis, queued for its devices or in the broadcast
//!   stream. 400 naming the field at fault; 409 when its `id` is taken; 413 for a body too
//!   long; 503 when Redis cannot be reached (nothing was accepted).
//! - `GET ?id=...`: 200 with the message and its counts (`targets`, `sent`, `delivered`,
//!   `expired`); 404 once it is gone (past its TTL and retention) or never was.

use pylon_plugin::{DevicePush, Reply};
use pylon_push::message::{now_ms, MAX_DATA};
use pylon_push::Message;
use pylon_router::RequestView;
use serde_json::json;

use super::{Downstream, PluginWork};
use crate::error::GatewayError;
use crate::outcome::{End, Outcome};
use crate::vars::RequestVars;
use crate::worker::Worker;

/// The longest push request body: the largest `data` and room for the other fields.
const MAX_BODY: usize = MAX_DATA + 64 * 1024;

/// Serves a push API request on the gateway `push` names, and answers it.
pub(super) async fn serve<D: Downstream>(
    worker: &Worker,
    downstream: &mut D,
    vars: &RequestVars<'_, D::Head>,
    push: &DevicePush,
    PluginWork { plugins, ctx }: PluginWork<'_>,
) -> Outcome {
    let hub = {
        let view = worker.view();
        let Some(gateway) = view.snapshot.stream.push_route(&push.stream_route_id) else {
            // Refused when written through the Admin API; a declarative file can still say so.
            tracing::warn!(
                route = ctx.route_id(),
                stream_route = %push.stream_route_id,
                "device-push names a stream route that is not a push gateway"
            );
            return downstream.error(vars, GatewayError::BadGateway).await;
        };
        gateway.hub().clone()
    };
    let reply = match vars.method() {
        "POST" => match downstream.read_body(vars, MAX_BODY).await {
            Ok(Some(body)) => match Message::from_request(&body, &hub.delivery(), now_ms()) {
                Ok(message) => {
                    let id = message.id.clone();
                    match hub.push(message).await {
                        Ok(true) => Reply::json(202, &json!({ "id": id })),
                        Ok(false) => error(409, &format!("id: `{id}` is taken by another message")),
                        Err(e) => unavailable(&e),
                    }
                }
                Err(e) => error(400, &e.to_string()),
            },
            Ok(None) => error(413, &format!("body: longer than {MAX_BODY} bytes")),
            Err(e) => return downstream.error(vars, e).await,
        },
        "GET" => match vars.var("arg_id") {
            Some(id) => match hub.message(&id).await {
                Ok(Some((message, counts))) => Reply::json(
                    200,
                    &json!({
                        "id": message.id,
                        "app_id": message.app_id,
                        "target": message.target,
                        "priority": message.priority,
                        "expires_at": message.expires_at,
                        "counts": counts,
                    }),
                ),
                Ok(None) => error(404, &format!("no message `{id}`")),
                Err(e) => unavailable(&e),
            },
            None => error(400, "id: the `id` query argument is required"),
        },
        _ => error(
            405,
            "device-push takes POST (a message) and GET (its counts)",
        )
        .header("allow", "POST, GET"),
    };
    let reply = plugins.reply(ctx, reply);
    downstream.reply(vars, &reply, End::Complete).await
}

fn unavailable(e: &pylon_push::StoreError) -> Reply {
    tracing::warn!("device-push: Redis: {e}");
    error(
        503,
        "the push store (Redis) cannot be reached; nothing was accepted",
    )
}

/// The gateway's error body: `{"error_msg": ...}`.
fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, &json!({ "error_msg": message }))
}
