//! `frames-push`: the route's requests push a frame to a connected client of a framed-protocol
//! stream route (`protocol: pylon-frames`), found by the key its connection is bound to: a
//! backend's way to reach a client without waiting for its call.
//!
//! The plugin only says so; the gateway reads the request (`X-Frame-Connection-Key` or the
//! `key` query argument, `X-Frame-Command`, the body) and answers it itself. The route's other
//! plugins (`key-auth`, limits) run before, as for any request.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{FramesPush, Phases, Plugin};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::websocket_frames::frames_route_error;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "frames-push",
    priority: 503,
    schema: schema_of::<FramesPushConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FramesPushConfig {
    /// The stream route whose clients the frames go to; its `protocol` must be
    /// `pylon-frames`.
    #[schemars(length(min = 1))]
    stream_route_id: String,
}

struct FramesPushPlugin {
    push: FramesPush,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: FramesPushConfig = parse(config)?;
    if config.stream_route_id.is_empty() {
        return Err(FieldError::new("stream_route_id", "must not be empty"));
    }
    Ok(Arc::new(FramesPushPlugin {
        push: FramesPush {
            stream_route_id: config.stream_route_id.into(),
        },
    }))
}

impl Plugin for FramesPushPlugin {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::BRIDGE
    }

    fn frames_push(&self) -> Option<&FramesPush> {
        Some(&self.push)
    }
}

/// The stream route a resource's `frames-push` names must exist and speak frames:
/// `stream_route` finds a stream route's JSON by id. Errors have paths relative to the
/// resource.
pub(crate) fn check_pushed_stream_route<'v>(
    resource: &Value,
    stream_route: impl Fn(&str) -> Option<&'v Value>,
) -> Option<FieldError> {
    let id = resource
        .pointer("/plugins/frames-push/stream_route_id")?
        .as_str()?;
    let path = "plugins.frames-push.stream_route_id";
    frames_route_error(path, id, stream_route(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(config: Value) -> Result<(), String> {
        crate::testing::build(&DESCRIPTOR, config)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_config_names_a_stream_route() {
        assert_eq!(check(json!({"stream_route_id": "im"})), Ok(()));
        let refused = check(json!({"stream_route_id": ""})).unwrap_err();
        assert_eq!(refused, "stream_route_id: must not be empty");
        let refused = check(json!({})).unwrap_err();
        assert!(refused.contains("stream_route_id"), "{refused}");
        let refused = check(json!({"stream_route_id": "im", "mode": "json"})).unwrap_err();
        assert!(refused.contains("mode"), "{refused}");
    }

    #[test]
    fn the_stream_route_must_exist_and_speak_frames() {
        let frames = json!({"protocol": {"name": "pylon-frames", "conf": {}}});
        let plain = json!({"upstream_id": "1"});
        let lookup = |id: &str| match id {
            "im" => Some(&frames),
            "tcp" => Some(&plain),
            _ => None,
        };
        let route = |id: &str| json!({"plugins": {"frames-push": {"stream_route_id": id}}});
        assert_eq!(check_pushed_stream_route(&route("im"), lookup), None);
        let missing = check_pushed_stream_route(&route("chat"), lookup).unwrap();
        assert_eq!(
            missing.to_string(),
            "plugins.frames-push.stream_route_id: stream route `chat` does not exist"
        );
        let plain = check_pushed_stream_route(&route("tcp"), lookup).unwrap();
        assert_eq!(plain.path, "plugins.frames-push.stream_route_id");
        assert!(plain.message.contains("does not speak frames"), "{plain}");
        assert_eq!(check_pushed_stream_route(&json!({}), lookup), None);
    }
}
