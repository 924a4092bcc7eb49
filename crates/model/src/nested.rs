//! References held inside a resource rather than in its top-level fields: a plugin's setting
//! that names another resource (`grpc-transcode`'s `proto_id`), and the `proto_id` of each
//! command of a framed-protocol stream route. One table says where they are, so that a write,
//! a delete and a whole configuration (the YAML file, an applied document) are checked alike.

use serde_json::{Map, Value};

use crate::config::Plugins;
use crate::error::FieldError;
use crate::key::{Key, Kind};

/// Where in a resource a nested reference sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A field of the configuration of this plugin, wherever plugins are configured.
    Plugin(&'static str),
    /// A field of each command of a stream route's protocol (`protocol.conf.commands.<id>`).
    Command,
}

/// `field` of `holder` holds the id of a `to`, which APISIX calls a `noun`.
#[derive(Debug)]
pub struct NestedReference {
    pub holder: Holder,
    pub field: &'static str,
    pub to: Kind,
    pub noun: &'static str,
}

/// Every nested reference this build knows.
pub const NESTED_REFERENCES: &[NestedReference] = &[
    NestedReference {
        holder: Holder::Plugin("grpc-transcode"),
        field: "proto_id",
        to: Kind::Protos,
        noun: "proto",
    },
    NestedReference {
        holder: Holder::Command,
        field: "proto_id",
        to: Kind::Protos,
        noun: "proto",
    },
    NestedReference {
        holder: Holder::Plugin("websocket-frames"),
        field: "stream_route_id",
        to: Kind::StreamRoutes,
        noun: "stream route",
    },
    NestedReference {
        holder: Holder::Plugin("frames-push"),
        field: "stream_route_id",
        to: Kind::StreamRoutes,
        noun: "stream route",
    },
    NestedReference {
        holder: Holder::Plugin("device-push"),
        field: "stream_route_id",
        to: Kind::StreamRoutes,
        noun: "stream route",
    },
];

/// The parts of one resource that hold nested references.
#[derive(Debug, Clone, Copy)]
pub struct Holders<'a> {
    pub plugins: Option<&'a Plugins>,
    /// A framed-protocol stream route's commands, by id.
    pub commands: Option<&'a Map<String, Value>>,
}

/// One nested reference found in a resource: `path` (relative to the resource) names `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: String,
    pub target: Key,
    noun: &'static str,
}

impl Found {
    /// The error for a target that does not exist, at the field that names it.
    pub fn missing(&self) -> FieldError {
        FieldError::new(
            self.path.clone(),
            format!("{} `{}` does not exist", self.noun, self.target.id),
        )
    }
}

impl<'a> Holders<'a> {
    /// The holders of `value`, a `kind` as JSON. Plugins configured on a credential are
    /// credentials, never references, and a stream route alone has commands.
    pub fn of(kind: Kind, value: &'a Value) -> Holders<'a> {
        let plugins = match kind {
            Kind::Routes
            | Kind::Services
            | Kind::PluginConfigs
            | Kind::GlobalRules
            | Kind::Consumers
            | Kind::ConsumerGroups
            | Kind::StreamRoutes => value.get("plugins").and_then(Value::as_object),
            _ => None,
        };
        let commands = (kind == Kind::StreamRoutes)
            .then(|| value.pointer("/protocol/conf"))
            .flatten()
            .and_then(commands_of);
        Holders { plugins, commands }
    }

    /// Every reference these hold, in the order of [`NESTED_REFERENCES`].
    pub fn references(self) -> Vec<Found> {
        let mut found = Vec::new();
        for reference in NESTED_REFERENCES {
            let mut add = |path: String, value: Option<&Value>| {
                if let Some(id) = value.and_then(id_text) {
                    found.push(Found {
                        path,
                        target: Key::new(reference.to, id),
                        noun: reference.noun,
                    });
                }
            };
            match reference.holder {
                Holder::Plugin(name) => {
                    let config = self.plugins.and_then(|plugins| plugins.get(name));
                    add(
                        format!("plugins.{name}.{}", reference.field),
                        config.and_then(|c| c.get(reference.field)),
                    );
                }
                Holder::Command => {
                    for (id, command) in self.commands.into_iter().flatten() {
                        add(
                            format!("protocol.conf.commands.{id}.{}", reference.field),
                            command.get(reference.field),
                        );
                    }
                }
            }
        }
        found
    }
}

/// The commands of a stream route's `protocol.conf`.
pub(crate) fn commands_of(conf: &Value) -> Option<&Map<String, Value>> {
    conf.get("commands").and_then(Value::as_object)
}

/// An id as APISIX writes them: a non-empty string or a non-negative integer.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(kind: Kind, value: &Value) -> Vec<(String, Key)> {
        Holders::of(kind, value)
            .references()
            .into_iter()
            .map(|f| (f.path, f.target))
            .collect()
    }

    #[test]
    fn finds_ids_in_plugins_and_in_a_stream_routes_commands() {
        let route = json!({"plugins": {
            "grpc-transcode": {"proto_id": 7, "service": "s", "method": "m"},
            "websocket-frames": {"stream_route_id": "im"},
            "frames-push": {"stream_route_id": ""},
        }});
        assert_eq!(
            paths(Kind::Routes, &route),
            [
                (
                    "plugins.grpc-transcode.proto_id".to_owned(),
                    Key::new(Kind::Protos, "7")
                ),
                (
                    "plugins.websocket-frames.stream_route_id".to_owned(),
                    Key::new(Kind::StreamRoutes, "im")
                ),
            ]
        );
        let stream = json!({"protocol": {"name": "pylon-frames", "conf": {"commands": {
            "4097": {"uri": "/send", "proto_id": "im"},
            "4098": {"uri": "/ping"},
        }}}});
        assert_eq!(
            paths(Kind::StreamRoutes, &stream),
            [(
                "protocol.conf.commands.4097.proto_id".to_owned(),
                Key::new(Kind::Protos, "im")
            )]
        );
        // Commands are a stream route's only; a credential's plugins are credentials.
        assert!(paths(Kind::Routes, &stream).is_empty());
        assert!(paths(Kind::Credentials, &route).is_empty());
        let consumer = json!({"plugins": {"grpc-transcode": {"proto_id": "p"}}});
        let found = Holders::of(Kind::Consumers, &consumer).references();
        assert_eq!(
            found[0].missing().to_string(),
            "plugins.grpc-transcode.proto_id: proto `p` does not exist"
        );
    }
}
