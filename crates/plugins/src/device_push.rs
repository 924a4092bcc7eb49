//! `device-push`: the route's requests are the push API of a push gateway (a stream route
//! with `protocol: pylon-push`): `POST` a message to devices, `GET` a message's counts.
//!
//! The plugin only says so; the gateway reads and answers the requests itself. The route's
//! other plugins (`key-auth`, `limit-count` ...) run before, as for any request.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{DevicePush, Phases, Plugin};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::websocket_frames::stream_route_error;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "device-push",
    priority: 502,
    schema: schema_of::<DevicePushConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DevicePushConfig {
    /// The push gateway whose devices the messages go to: a stream route whose `protocol`
    /// is `pylon-push`.
    #[schemars(length(min = 1))]
    stream_route_id: String,
}

struct DevicePushPlugin {
    push: DevicePush,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: DevicePushConfig = parse(config)?;
    if config.stream_route_id.is_empty() {
        return Err(FieldError::new("stream_route_id", "must not be empty"));
    }
    Ok(Arc::new(DevicePushPlugin {
        push: DevicePush {
            stream_route_id: config.stream_route_id.into(),
        },
    }))
}

impl Plugin for DevicePushPlugin {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::BRIDGE
    }

    fn device_push(&self) -> Option<&DevicePush> {
        Some(&self.push)
    }
}

/// The stream route a resource's `device-push` names must exist and be a push gateway:
/// `stream_route` finds a stream route's JSON by id. Errors have paths relative to the
/// resource.
pub(crate) fn check_push_stream_route<'v>(
    resource: &Value,
    stream_route: impl Fn(&str) -> Option<&'v Value>,
) -> Option<FieldError> {
    let id = resource
        .pointer("/plugins/device-push/stream_route_id")?
        .as_str()?;
    let path = "plugins.device-push.stream_route_id";
    let route = stream_route(id);
    let protocol = pylon_push::PROTOCOL_NAME;
    stream_route_error(path, id, route, protocol, "is not a push gateway")
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
        assert_eq!(check(json!({"stream_route_id": "devices"})), Ok(()));
        let refused = check(json!({"stream_route_id": ""})).unwrap_err();
        assert_eq!(refused, "stream_route_id: must not be empty");
        let refused = check(json!({"stream_route_id": "d", "app": "x"})).unwrap_err();
        assert!(refused.contains("app"), "{refused}");
    }

    #[test]
    fn the_stream_route_must_be_a_push_gateway() {
        let push = json!({"protocol": {"name": "pylon-push", "conf": {}}});
        let frames = json!({"protocol": {"name": "pylon-frames", "conf": {}}});
        let lookup = |id: &str| match id {
            "devices" => Some(&push),
            "im" => Some(&frames),
            _ => None,
        };
        let route = |id: &str| json!({"plugins": {"device-push": {"stream_route_id": id}}});
        assert_eq!(check_push_stream_route(&route("devices"), lookup), None);
        let missing = check_push_stream_route(&route("x"), lookup).unwrap();
        assert_eq!(
            missing.to_string(),
            "plugins.device-push.stream_route_id: stream route `x` does not exist"
        );
        let frames = check_push_stream_route(&route("im"), lookup).unwrap();
        assert!(frames.message.contains("not a push gateway"), "{frames}");
    }
}
