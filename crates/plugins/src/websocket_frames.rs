//! `websocket-frames`: the route's WebSocket clients are served by the gateway itself, each
//! message a call of a framed-protocol stream route (`protocol: pylon-frames`): a binary
//! message is one frame in its layout, or a text message one JSON call. The calls go to the
//! HTTP routes the stream route's commands name, as its TCP clients' frames do.
//!
//! With `mode: tcp` the frames go instead to the stream route's upstream (a framed TCP
//! backend), and the backend's frames come back as messages.
//!
//! The plugin only says so; the HTTP/1 codec answers the upgrade and serves the messages.

use std::sync::Arc;

use pylon_frames::PROTOCOL_NAME;
use pylon_model::FieldError;
use pylon_plugin::{BridgeMode, FramesBridge, Phases, Plugin};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "websocket-frames",
    priority: 504,
    schema: schema_of::<WebSocketFramesConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WebSocketFramesConfig {
    /// The stream route whose layout and commands the messages use; its `protocol` must be
    /// `pylon-frames`.
    #[schemars(length(min = 1))]
    stream_route_id: String,
    /// What a message carries: one frame for the commands' HTTP routes (`binary`), one JSON
    /// call (`json`), or one frame for the stream route's upstream (`tcp`).
    #[serde(default = "default_mode")]
    mode: Mode,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Binary,
    Json,
    Tcp,
}

fn default_mode() -> Mode {
    Mode::Binary
}

struct WebSocketFrames {
    bridge: FramesBridge,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: WebSocketFramesConfig = parse(config)?;
    if config.stream_route_id.is_empty() {
        return Err(FieldError::new("stream_route_id", "must not be empty"));
    }
    let mode = match config.mode {
        Mode::Binary => BridgeMode::Binary,
        Mode::Json => BridgeMode::Json,
        Mode::Tcp => BridgeMode::Tcp,
    };
    Ok(Arc::new(WebSocketFrames {
        bridge: FramesBridge {
            stream_route_id: config.stream_route_id.into(),
            mode,
        },
    }))
}

impl Plugin for WebSocketFrames {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::BRIDGE
    }

    fn frames_bridge(&self) -> Option<&FramesBridge> {
        Some(&self.bridge)
    }
}

/// The stream routes a resource's `websocket-frames` and `frames-push` name must exist and
/// speak frames (and, for `mode: tcp`, have an upstream), and the one `device-push` names
/// must be a push gateway: `stream_route` finds a stream route's JSON by id. Errors have
/// paths relative to the resource.
pub fn check_bridged_stream_route<'v>(
    resource: &Value,
    stream_route: impl Fn(&str) -> Option<&'v Value>,
) -> Option<FieldError> {
    check_websocket_stream_route(resource, &stream_route)
        .or_else(|| crate::frames_push::check_pushed_stream_route(resource, &stream_route))
        .or_else(|| crate::device_push::check_push_stream_route(resource, &stream_route))
}

fn check_websocket_stream_route<'v>(
    resource: &Value,
    stream_route: impl Fn(&str) -> Option<&'v Value>,
) -> Option<FieldError> {
    let id = resource
        .pointer("/plugins/websocket-frames/stream_route_id")?
        .as_str()?;
    let path = "plugins.websocket-frames.stream_route_id";
    let route = stream_route(id);
    if let Some(error) = frames_route_error(path, id, route) {
        return Some(error);
    }
    // A service's upstream is not looked up: the route names one, or a service that has one.
    let mode = resource.pointer("/plugins/websocket-frames/mode");
    let names_upstream = ["upstream", "upstream_id", "service_id"]
        .iter()
        .any(|field| route.is_some_and(|route| route.get(field).is_some()));
    (mode == Some(&Value::from("tcp")) && !names_upstream).then(|| {
        FieldError::new(
            path,
            format!("stream route `{id}` has no upstream for `mode: tcp` to relay frames to"),
        )
    })
}

/// Why stream route `id` (`route`, when it exists), named at `path`, cannot serve frames.
pub(crate) fn frames_route_error(
    path: &str,
    id: &str,
    route: Option<&Value>,
) -> Option<FieldError> {
    stream_route_error(path, id, route, PROTOCOL_NAME, "does not speak frames")
}

/// Why stream route `id` (`route`, when it exists), named at `path`, is not one whose
/// protocol is `protocol`: it is missing, or it `is_not` (`does not speak frames`, ...).
pub(crate) fn stream_route_error(
    path: &str,
    id: &str,
    route: Option<&Value>,
    protocol: &str,
    is_not: &str,
) -> Option<FieldError> {
    let Some(route) = route else {
        return Some(FieldError::new(
            path,
            format!("stream route `{id}` does not exist"),
        ));
    };
    let name = route.pointer("/protocol/name").and_then(Value::as_str);
    (name != Some(protocol)).then(|| {
        FieldError::new(
            path,
            format!("stream route `{id}` {is_not} (its protocol is not `{protocol}`)"),
        )
    })
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
    fn a_config_names_a_stream_route_and_a_mode() {
        assert_eq!(
            check(json!({"stream_route_id": "im", "mode": "json"})),
            Ok(())
        );
        assert_eq!(check(json!({"stream_route_id": "im"})), Ok(()));
        let refused = check(json!({"stream_route_id": "im", "mode": "text"})).unwrap_err();
        assert!(refused.starts_with("mode: "), "{refused}");
        let refused = check(json!({"stream_route_id": ""})).unwrap_err();
        assert_eq!(refused, "stream_route_id: must not be empty");
        let refused = check(json!({"mode": "json"})).unwrap_err();
        assert!(refused.contains("stream_route_id"), "{refused}");
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
        let route = |id: &str| json!({"plugins": {"websocket-frames": {"stream_route_id": id}}});
        assert_eq!(check_bridged_stream_route(&route("im"), lookup), None);
        let missing = check_bridged_stream_route(&route("chat"), lookup).unwrap();
        assert_eq!(
            missing.to_string(),
            "plugins.websocket-frames.stream_route_id: stream route `chat` does not exist"
        );
        let plain = check_bridged_stream_route(&route("tcp"), lookup).unwrap();
        assert_eq!(plain.path, "plugins.websocket-frames.stream_route_id");
        assert!(plain.message.contains("does not speak frames"), "{plain}");
        assert_eq!(check_bridged_stream_route(&json!({}), lookup), None);

        let backend = json!({"protocol": {"name": "pylon-frames", "conf": {}}, "upstream_id": "1"});
        let lookup = |id: &str| match id {
            "im" => Some(&frames),
            "backend" => Some(&backend),
            _ => None,
        };
        let tcp = |id: &str| json!({"plugins": {"websocket-frames": {"stream_route_id": id, "mode": "tcp"}}});
        assert_eq!(check_bridged_stream_route(&tcp("backend"), lookup), None);
        let no_upstream = check_bridged_stream_route(&tcp("im"), lookup).unwrap();
        assert_eq!(
            no_upstream.to_string(),
            "plugins.websocket-frames.stream_route_id: stream route `im` has no upstream for `mode: tcp` to relay frames to"
        );
    }
}
