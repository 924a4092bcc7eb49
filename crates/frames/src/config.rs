//! The configuration of a framed-protocol stream route: its `protocol.conf` when
//! `protocol.name` is [`PROTOCOL_NAME`]. Parsing refuses unknown fields; [`FramesConfig::validate`]
//! then reports every problem with the path of its field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use pylon_model::FieldError;

use crate::layout::MAX_FIELDS;

/// The `protocol.name` of a stream route whose connections speak frames.
pub const PROTOCOL_NAME: &str = "pylon-frames";

/// The longest start or end marker, in bytes.
pub const MAX_MARKER: usize = 4;
/// The longest header: enough for any real layout, small enough to bound a header's read.
const MAX_HEADER_LENGTH: u32 = 1024;
/// The largest `max_body`: a connection buffers one body at a time, up to this.
const MAX_BODY_LIMIT: u64 = 64 << 20;
const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
/// A year, as the longest timeout anywhere in the model.
const MAX_READ_TIMEOUT: u64 = 31_536_000;
/// HTTP methods a command can be sent as.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// `protocol.conf` of a framed-protocol stream route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramesConfig {
    /// Where the markers, the header's fields and the body are.
    pub layout: LayoutConfig,
    /// The largest body accepted, in bytes; a header announcing more is a bad frame.
    #[serde(default = "default_max_body")]
    pub max_body: u64,
    /// Calls a connection runs at once; it stops reading while this many are in flight.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Seconds a client may stay silent: mid-frame, between frames with no call in flight, or
    /// not reading the answers waiting for it.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: u64,
    /// What a bad frame, a client silent mid-frame or a failed call gets.
    #[serde(default)]
    pub on_error: ErrorAction,
    /// The calls: command id (decimal) to the HTTP request it becomes.
    pub commands: BTreeMap<String, CommandRoute>,
    /// What a frame whose command is not in `commands` gets.
    #[serde(default)]
    pub unknown_command: ErrorAction,
}

fn default_max_body() -> u64 {
    1 << 20
}

fn default_max_in_flight() -> u32 {
    100
}

fn default_read_timeout() -> u64 {
    60
}

/// `layout`: a frame is the start marker, `header_length` header bytes, the body and the end
/// marker. Offsets are within the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutConfig {
    /// The bytes every frame starts with, as hex (`"09"`); none when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The bytes every frame ends with, as hex; none when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// The header's size in bytes, between the start marker and the body.
    pub header_length: u32,
    /// Where the length is, and (`length_includes`) what it counts.
    pub body_length: FieldSpec,
    #[serde(default)]
    pub length_includes: LengthIncludes,
    /// Where the command id is: it picks the call.
    pub command: FieldSpec,
    /// Where the sequence id is: an answer carries its request's.
    pub sequence: FieldSpec,
    /// Other header values, by name (a version, flags, a user id ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldSpec>,
}

/// An unsigned integer in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub offset: u32,
    /// 1, 2, 4 or 8 bytes.
    pub width: u8,
    #[serde(default)]
    pub order: ByteOrder,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    /// Most significant byte first (network order).
    #[default]
    Big,
    Little,
}

/// What the body length counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthIncludes {
    #[default]
    Body,
    HeaderAndBody,
    /// Everything: markers, header and body.
    Frame,
}

/// `on_error` and `unknown_command`: close the connection, or answer with a frame first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ErrorAction {
    #[default]
    Close,
    /// A frame with this command and these header fields, an empty body and the sequence id of
    /// the frame it answers (0 when that is unknown).
    ErrorFrame {
        command: u64,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        fields: BTreeMap<String, u64>,
    },
}

/// The HTTP request a command becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRoute {
    /// The request's path, matched against HTTP routes as any request's.
    pub uri: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// The request's `Host`; the stream route's server address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The `protos` resource whose messages the bodies are; without it, bodies pass as bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto_id: Option<String>,
    /// The request body's message type, e.g. `im.SendReq` (with `proto_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The answer body's message type (with `proto_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

fn default_method() -> String {
    "POST".to_owned()
}

// === impl FramesConfig ===

impl FramesConfig {
    /// Reads a configuration, refusing unknown fields; the error names the field. Call
    /// [`FramesConfig::validate`] next (or build a [`crate::Protocol`], which does).
    pub fn from_json(value: &Value) -> Result<Self, FieldError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            FieldError::new(path, e.into_inner().to_string())
        })
    }

    /// Every problem, in field order, with paths relative to the configuration.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> = (self.layout.validate().into_iter())
            .map(|e| e.within("layout"))
            .collect();
        if !(1..=MAX_BODY_LIMIT).contains(&self.max_body) {
            errors.push(FieldError::new(
                "max_body",
                format!("must be 1 to {MAX_BODY_LIMIT}"),
            ));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight) {
            errors.push(FieldError::new(
                "max_in_flight",
                format!("must be 1 to {MAX_IN_FLIGHT_LIMIT}"),
            ));
        }
        if !(1..=MAX_READ_TIMEOUT).contains(&self.read_timeout) {
            errors.push(FieldError::new(
                "read_timeout",
                format!("must be 1 to {MAX_READ_TIMEOUT} seconds"),
            ));
        }
        self.validate_action(&self.on_error, "on_error", &mut errors);
        if self.commands.is_empty() {
            errors.push(FieldError::new(
                "commands",
                "must name at least one command",
            ));
        }
        for (key, route) in &self.commands {
            let path = format!("commands.{key}");
            match key.parse::<u64>() {
                Ok(id) if id.to_string() == *key => {
                    if let Some(e) = self.command_fits(id) {
                        errors.push(FieldError::new(&path, e));
                    }
                }
                _ => errors.push(FieldError::new(
                    &path,
                    "must be a command id: a decimal number without leading zeros",
                )),
            }
            errors.extend(route.validate().into_iter().map(|e| e.within(&path)));
        }
        self.validate_action(&self.unknown_command, "unknown_command", &mut errors);
        errors
    }

    fn validate_action(&self, action: &ErrorAction, path: &str, errors: &mut Vec<FieldError>) {
        let ErrorAction::ErrorFrame { command, fields } = action else {
            return;
        };
        if let Some(e) = self.command_fits(*command) {
            errors.push(FieldError::new(format!("{path}.command"), e));
        }
        for (name, &value) in fields {
            let path = format!("{path}.fields.{name}");
            match self.layout.fields.get(name) {
                None => errors.push(FieldError::new(path, "not a field of layout.fields")),
                Some(spec) => {
                    if let Some(max) = spec.max_value().filter(|&max| value > max) {
                        errors.push(FieldError::new(
                            path,
                            format!(
                                "does not fit the field's {} bytes (at most {max})",
                                spec.width
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Why `id` cannot be written in the command field, if it cannot.
    fn command_fits(&self, id: u64) -> Option<String> {
        let spec = self.layout.command;
        let max = spec.max_value()?;
        (id > max).then(|| {
            format!(
                "does not fit layout.command's {} bytes (at most {max})",
                spec.width
            )
        })
    }
}

// === impl LayoutConfig ===

impl LayoutConfig {
    /// Every problem, with paths relative to the layout.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (path, marker) in [("start", &self.start), ("end", &self.end)] {
            if let Some(Err(e)) = marker.as_deref().map(parse_marker) {
                errors.push(FieldError::new(path, e));
            }
        }
        if !(1..=MAX_HEADER_LENGTH).contains(&self.header_length) {
            errors.push(FieldError::new(
                "header_length",
                format!("must be 1 to {MAX_HEADER_LENGTH}"),
            ));
        }
        if self.fields.len() > MAX_FIELDS {
            errors.push(FieldError::new(
                "fields",
                format!("at most {MAX_FIELDS} named fields"),
            ));
        }
        for name in self.fields.keys() {
            if !is_field_name(name) {
                errors.push(FieldError::new(
                    format!("fields.{name}"),
                    "a field name is 1 to 32 letters, digits, '_' or '-'",
                ));
            }
        }

        // Placed fields, for the overlap check: those whose width is valid.
        let mut placed: Vec<(String, u64, u64)> = Vec::new();
        for (path, spec) in self.specs() {
            if spec.max_value().is_none() {
                errors.push(FieldError::new(
                    format!("{path}.width"),
                    "must be 1, 2, 4 or 8",
                ));
                continue;
            }
            let (start, end) = (
                u64::from(spec.offset),
                u64::from(spec.offset) + u64::from(spec.width),
            );
            if end > u64::from(self.header_length) {
                errors.push(FieldError::new(
                    format!("{path}.offset"),
                    format!(
                        "field runs past header_length {} (offset {} + width {})",
                        self.header_length, spec.offset, spec.width
                    ),
                ));
            }
            if let Some((other, other_start, other_end)) = placed
                .iter()
                .find(|(_, other_start, other_end)| start < *other_end && *other_start < end)
            {
                errors.push(FieldError::new(
                    path.clone(),
                    format!(
                        "overlaps {other} (header bytes {other_start} to {})",
                        other_end - 1
                    ),
                ));
            }
            placed.push((path, start, end));
        }
        errors
    }

    /// The header's fields with their paths, in document order.
    pub(crate) fn specs(&self) -> impl Iterator<Item = (String, FieldSpec)> + '_ {
        [
            ("body_length", self.body_length),
            ("command", self.command),
            ("sequence", self.sequence),
        ]
        .into_iter()
        .map(|(path, spec)| (path.to_owned(), spec))
        .chain(
            self.fields
                .iter()
                .map(|(name, spec)| (format!("fields.{name}"), *spec)),
        )
    }
}

impl FieldSpec {
    /// The largest value the field holds, or `None` when its width is not 1, 2, 4 or 8.
    pub(crate) fn max_value(&self) -> Option<u64> {
        match self.width {
            1 | 2 | 4 => Some((1 << (8 * u32::from(self.width))) - 1),
            8 => Some(u64::MAX),
            _ => None,
        }
    }
}

/// A marker's bytes from its hex form; empty for no marker.
pub(crate) fn parse_marker(hex: &str) -> Result<Vec<u8>, String> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("must be hex digits, two per byte (\"09\")".to_owned());
    }
    if digits.len() / 2 > MAX_MARKER {
        return Err(format!("at most {MAX_MARKER} bytes"));
    }
    let nibble = |d: u8| match d {
        b'0'..=b'9' => d - b'0',
        _ => (d | 0x20) - b'a' + 10,
    };
    Ok(digits
        .chunks(2)
        .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
        .collect())
}

fn is_field_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

// === impl CommandRoute ===

impl CommandRoute {
    /// Every problem, with paths relative to the command.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !self.uri.starts_with('/') {
            errors.push(FieldError::new("uri", "must start with '/'"));
        }
        if !METHODS.contains(&self.method.as_str()) {
            errors.push(FieldError::new(
                "method",
                format!("must be one of {}", METHODS.join(", ")),
            ));
        }
        if self.host.as_deref() == Some("") {
            errors.push(FieldError::new("host", "must not be empty"));
        }
        match &self.proto_id {
            Some(_) => {
                for (path, name) in [("request", &self.request), ("response", &self.response)] {
                    if name.as_deref().is_none_or(str::is_empty) {
                        errors.push(FieldError::new(
                            path,
                            "a message type is required with proto_id",
                        ));
                    }
                }
            }
            None => {
                for (path, name) in [("request", &self.request), ("response", &self.response)] {
                    if name.is_some() {
                        errors.push(FieldError::new(path, "needs proto_id"));
                    }
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// HelloTalk's layout with two commands: the README's example.
    fn hellotalk() -> Value {
        json!({
            "layout": {
                "start": "09", "end": "0a", "header_length": 20,
                "body_length": {"offset": 0, "width": 4},
                "command": {"offset": 4, "width": 2},
                "sequence": {"offset": 6, "width": 4},
                "fields": {
                    "version": {"offset": 10, "width": 1},
                    "flags": {"offset": 11, "width": 1},
                    "user_id": {"offset": 12, "width": 4}
                }
            },
            "on_error": {"action": "error_frame", "command": 65535, "fields": {"version": 1}},
            "commands": {
                "4097": {"uri": "/im/send", "host": "im.internal", "proto_id": "im",
                         "request": "im.SendReq", "response": "im.SendResp"},
                "4098": {"uri": "/im/ping", "method": "GET"}
            }
        })
    }

    fn errors_of(value: Value) -> Vec<String> {
        match FramesConfig::from_json(&value) {
            Ok(config) => config.validate().iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn the_documented_example_is_valid_with_its_defaults() {
        let config = FramesConfig::from_json(&hellotalk()).unwrap();
        assert_eq!(config.validate(), vec![]);
        assert_eq!(config.max_body, 1_048_576);
        assert_eq!(config.max_in_flight, 100);
        assert_eq!(config.read_timeout, 60);
        assert_eq!(config.unknown_command, ErrorAction::Close);
        assert_eq!(config.layout.length_includes, LengthIncludes::Body);
        assert_eq!(config.layout.command.order, ByteOrder::Big);
        assert_eq!(config.commands["4098"].method, "GET");
        assert_eq!(config.commands["4097"].method, "POST");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let mut value = hellotalk();
        value["layout"]["command"]["signed"] = json!(true);
        assert_eq!(
            errors_of(value),
            ["layout.command.signed: unknown field `signed`, expected one of `offset`, `width`, `order`"]
        );
        let mut value = hellotalk();
        value["commands"]["4097"]["timeout"] = json!(3);
        assert!(errors_of(value)[0].starts_with("commands.4097.timeout: unknown field `timeout`"));
        let mut value = hellotalk();
        value["on_error"] = json!({"action": "error_frame", "command": 1, "body": "x"});
        assert!(errors_of(value)[0].starts_with("on_error: unknown field `body`"));
        let mut value = hellotalk();
        value["layout"]["length_includes"] = json!("header");
        assert!(errors_of(value)[0].starts_with("layout.length_includes: unknown variant `header`"));
    }

    #[test]
    fn every_layout_problem_is_reported_with_its_path() {
        let mut value = hellotalk();
        let layout = &mut value["layout"];
        layout["start"] = json!("0x9");
        layout["end"] = json!("0a0b0c0d0e");
        layout["command"] = json!({"offset": 19, "width": 2});
        layout["sequence"] = json!({"offset": 2, "width": 4});
        layout["fields"]["flags"] = json!({"offset": 11, "width": 3});
        layout["fields"]["bad name"] = json!({"offset": 16, "width": 1});
        assert_eq!(
            errors_of(value),
            [
                "layout.start: must be hex digits, two per byte (\"09\")",
                "layout.end: at most 4 bytes",
                "layout.fields.bad name: a field name is 1 to 32 letters, digits, '_' or '-'",
                "layout.command.offset: field runs past header_length 20 (offset 19 + width 2)",
                "layout.sequence: overlaps body_length (header bytes 0 to 3)",
                "layout.fields.flags.width: must be 1, 2, 4 or 8",
            ]
        );
    }

    #[test]
    fn header_length_bounds_every_field() {
        let mut value = hellotalk();
        value["layout"]["header_length"] = json!(0);
        let errors = errors_of(value);
        assert_eq!(errors[0], "layout.header_length: must be 1 to 1024");
        assert!(errors.contains(
            &"layout.body_length.offset: field runs past header_length 0 (offset 0 + width 4)"
                .to_owned()
        ));
    }

    #[test]
    fn limits_commands_and_error_frames_are_checked() {
        let mut value = hellotalk();
        value["max_body"] = json!(0);
        value["max_in_flight"] = json!(0);
        value["read_timeout"] = json!(0);
        value["on_error"] = json!({"action": "error_frame", "command": 65536,
                                   "fields": {"version": 256, "colour": 1}});
        value["unknown_command"] = json!({"action": "error_frame", "command": 7});
        value["commands"] = json!({
            "70000": {"uri": "/a"},
            "x1": {"uri": "b", "method": "post"},
            "012": {"uri": "/c", "proto_id": "im", "request": ""},
            "13": {"uri": "/d", "response": "im.R", "host": ""}
        });
        assert_eq!(
            errors_of(value),
            [
                "max_body: must be 1 to 67108864",
                "max_in_flight: must be 1 to 10000",
                "read_timeout: must be 1 to 31536000 seconds",
                "on_error.command: does not fit layout.command's 2 bytes (at most 65535)",
                "on_error.fields.colour: not a field of layout.fields",
                "on_error.fields.version: does not fit the field's 1 bytes (at most 255)",
                "commands.012: must be a command id: a decimal number without leading zeros",
                "commands.012.request: a message type is required with proto_id",
                "commands.012.response: a message type is required with proto_id",
                "commands.13.host: must not be empty",
                "commands.13.response: needs proto_id",
                "commands.70000: does not fit layout.command's 2 bytes (at most 65535)",
                "commands.x1: must be a command id: a decimal number without leading zeros",
                "commands.x1.uri: must start with '/'",
                "commands.x1.method: must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
            ]
        );
    }

    #[test]
    fn a_route_needs_a_command() {
        let mut value = hellotalk();
        value["commands"] = json!({});
        assert_eq!(
            errors_of(value),
            ["commands: must name at least one command"]
        );
    }

    #[test]
    fn markers_are_hex_in_either_case_and_optional() {
        assert_eq!(parse_marker("09"), Ok(vec![0x09]));
        assert_eq!(parse_marker("CaFe"), Ok(vec![0xca, 0xfe]));
        assert_eq!(parse_marker(""), Ok(vec![]));
        assert!(parse_marker("0g").is_err());
    }
}
