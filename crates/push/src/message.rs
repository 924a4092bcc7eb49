//! The messages of the push API: a request's body read and checked field by field, and the
//! message it becomes, with the bytes of the `push` frame body every device is sent.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pylon_model::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Delivery;
use crate::tags::TagExpr;

/// The longest id (of a message, an app or a device), in bytes.
pub const MAX_ID_LEN: usize = 128;
/// The most devices one push may list.
pub const MAX_DEVICES: usize = 1000;
/// The largest `data`, serialized, in bytes.
pub const MAX_DATA: usize = 32 * 1024;

/// Whether `id` may name a message, an app or a device: 1 to [`MAX_ID_LEN`] letters, digits
/// and `_.:@-` (they become parts of Redis keys).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} bytes"));
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-');
    if !id.bytes().all(allowed) {
        return Err("may hold letters, digits and `_.:@-` only".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Normal,
    /// Sent at once: not held by the app's rate nor queued behind a broadcast.
    High,
}

/// Whom a message is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Devices(Vec<String>),
    /// The app's devices whose tags match the expression.
    Tag(String),
    /// Every device of the app.
    All,
}

impl Target {
    /// Whether the message goes out by fan-out on every node (to a tag or to all), rather
    /// than to listed devices.
    pub fn is_broadcast(&self) -> bool {
        !matches!(self, Target::Devices(_))
    }
}

/// A message accepted by the push API: what is kept in Redis and read back by every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub app_id: String,
    pub target: Target,
    pub data: Value,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// Milliseconds since the Unix epoch after which it is not delivered.
    pub expires_at: u64,
    /// Devices per second a broadcast reaches, across the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
}

/// The body of a push request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    id: Option<String>,
    app_id: String,
    device_id: Option<String>,
    device_ids: Option<Vec<String>>,
    tag: Option<String>,
    #[serde(default)]
    all: bool,
    data: Value,
    ttl: Option<u64>,
    #[serde(default)]
    priority: Priority,
    collapse_key: Option<String>,
    rate: Option<u64>,
}

/// The `push` frame body a device is sent for a message.
#[derive(Serialize)]
struct PushFrame<'m> {
    id: &'m str,
    priority: Priority,
    data: &'m Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<&'m str>,
}

impl Message {
    /// Reads a push request's body at `now_ms`, with the delivery defaults; the error names
    /// the field.
    pub fn from_request(
        body: &[u8],
        delivery: &Delivery,
        now_ms: u64,
    ) -> Result<Message, FieldError> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let request: PushRequest =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                FieldError::new(path, e.into_inner().to_string())
            })?;
        let id = match request.id {
            Some(id) => {
                check_id(&id).map_err(|e| FieldError::new("id", e))?;
                id
            }
            None => new_id(now_ms),
        };
        check_id(&request.app_id).map_err(|e| FieldError::new("app_id", e))?;
        let targets = [
            request.device_id.is_some(),
            request.device_ids.is_some(),
            request.tag.is_some(),
            request.all,
        ];
        if targets.iter().filter(|t| **t).count() != 1 {
            return Err(FieldError::new(
                "",
                "give exactly one of `device_id`, `device_ids`, `tag` and `all: true`",
            ));
        }
        let target = if let Some(device) = request.device_id {
            check_id(&device).map_err(|e| FieldError::new("device_id", e))?;
            Target::Devices(vec![device])
        } else if let Some(mut devices) = request.device_ids {
            if devices.is_empty() || devices.len() > MAX_DEVICES {
                return Err(FieldError::new(
                    "device_ids",
                    format!("must list 1 to {MAX_DEVICES} devices"),
                ));
            }
            for (i, device) in devices.iter().enumerate() {
                check_id(device).map_err(|e| FieldError::new(format!("device_ids[{i}]"), e))?;
            }
            devices.sort();
            devices.dedup();
            Target::Devices(devices)
        } else if let Some(tag) = request.tag {
            TagExpr::parse(&tag).map_err(|e| FieldError::new("tag", e))?;
            Target::Tag(tag)
        } else {
            Target::All
        };
        let data_len = serde_json::to_vec(&request.data).map_or(0, |d| d.len());
        if data_len > MAX_DATA {
            return Err(FieldError::new(
                "data",
                format!("is {data_len} bytes; at most {MAX_DATA}"),
            ));
        }
        let ttl = request.ttl.unwrap_or(delivery.ttl);
        if !(1..=delivery.max_ttl).contains(&ttl) {
            return Err(FieldError::new(
                "ttl",
                format!("must be 1 to {} seconds", delivery.max_ttl),
            ));
        }
        if let Some(key) = &request.collapse_key {
            check_id(key).map_err(|e| FieldError::new("collapse_key", e))?;
            if target.is_broadcast() {
                return Err(FieldError::new(
                    "collapse_key",
                    "applies to messages to devices, not to a tag or to all",
                ));
            }
        }
        if let Some(rate) = request.rate {
            if !target.is_broadcast() {
                return Err(FieldError::new(
                    "rate",
                    "applies to messages to a tag or to all",
                ));
            }
            if rate == 0 {
                return Err(FieldError::new(
                    "rate",
                    "must be at least 1 device per second",
                ));
            }
        }
        Ok(Message {
            id,
            app_id: request.app_id,
            target,
            data: request.data,
            priority: request.priority,
            collapse_key: request.collapse_key,
            expires_at: now_ms + ttl * 1000,
            rate: request.rate,
        })
    }

    /// The body of the `push` frame that carries this message.
    pub fn frame_body(&self) -> Bytes {
        let frame = PushFrame {
            id: &self.id,
            priority: self.priority,
            data: &self.data,
            collapse_key: self.collapse_key.as_deref(),
        };
        serde_json::to_vec(&frame)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new message id: the time it was made and 64 random bits, so ids sort by age and do not
/// collide across nodes.
fn new_id(now_ms: u64) -> String {
    format!("{now_ms:x}-{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(body: Value) -> Result<Message, FieldError> {
        Message::from_request(body.to_string().as_bytes(), &Delivery::default(), 1_000)
    }

    fn refused(body: Value) -> (String, String) {
        let e = read(body).unwrap_err();
        (e.path, e.message)
    }

    #[test]
    fn every_target_reads() {
        let m = read(json!({"app_id": "a", "device_id": "d1", "data": {"t": 1}})).unwrap();
        assert_eq!(m.target, Target::Devices(vec!["d1".into()]));
        assert_eq!(m.expires_at, 1_000 + 86_400_000);
        let m = read(
            json!({"app_id": "a", "device_ids": ["d2", "d1", "d2"], "data": 1,
            "ttl": 5, "priority": "high", "collapse_key": "score", "id": "m-1"}),
        )
        .unwrap();
        assert_eq!(m.target, Target::Devices(vec!["d1".into(), "d2".into()]));
        assert_eq!(
            (m.id.as_str(), m.priority, m.expires_at),
            ("m-1", Priority::High, 6_000)
        );
        let m = read(json!({"app_id": "a", "tag": "a AND NOT b", "data": 1, "rate": 10})).unwrap();
        assert_eq!(
            (m.target, m.rate),
            (Target::Tag("a AND NOT b".into()), Some(10))
        );
        let m = read(json!({"app_id": "a", "all": true, "data": "hi"})).unwrap();
        assert_eq!(m.target, Target::All);
        assert_eq!(
            std::str::from_utf8(&m.frame_body()).unwrap(),
            format!(r#"{{"id":"{}","priority":"normal","data":"hi"}}"#, m.id)
        );
    }

    #[test]
    fn a_bad_request_names_its_field() {
        let cases = [
            (
                json!({"device_id": "d", "data": 1}),
                "",
                "missing field `app_id`",
            ),
            (json!({"app_id": "a", "data": 1}), "", "give exactly one of"),
            (
                json!({"app_id": "a", "device_id": "d", "all": true, "data": 1}),
                "",
                "give exactly one of",
            ),
            (
                json!({"app_id": "a", "device_id": "d x", "data": 1}),
                "device_id",
                "may hold",
            ),
            (
                json!({"app_id": "a", "device_ids": ["d", ""], "data": 1}),
                "device_ids[1]",
                "must be 1 to",
            ),
            (
                json!({"app_id": "a", "device_ids": [], "data": 1}),
                "device_ids",
                "must list",
            ),
            (
                json!({"app_id": "a", "tag": "a AND", "data": 1}),
                "tag",
                "ends where",
            ),
            (
                json!({"app_id": "a", "all": true, "data": 1, "ttl": 0}),
                "ttl",
                "must be 1 to",
            ),
            (
                json!({"app_id": "a", "all": true, "data": 1, "priority": "urgent"}),
                "priority",
                "unknown variant",
            ),
            (
                json!({"app_id": "a", "all": true, "data": 1, "collapse_key": "k"}),
                "collapse_key",
                "applies to",
            ),
            (
                json!({"app_id": "a", "device_id": "d", "data": 1, "rate": 5}),
                "rate",
                "applies to",
            ),
            (
                json!({"app_id": "a", "device_id": "d", "data": 1, "extra": 5}),
                "extra",
                "unknown field",
            ),
            (
                json!({"app_id": "a", "device_id": "d", "data": "x".repeat(MAX_DATA)}),
                "data",
                "bytes; at most",
            ),
        ];
        for (body, path, message) in cases {
            let (p, m) = refused(body.clone());
            assert_eq!(p, path, "{body}: {m}");
            assert!(m.contains(message), "{body}: {m}");
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("app.1:x@y-z_").is_ok());
        assert!(check_id("{slot}").is_err());
        assert!(check_id(&"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert_ne!(new_id(5), new_id(5));
    }
}
