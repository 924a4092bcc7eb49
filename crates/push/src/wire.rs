//! The bodies of the device protocol's frames (see the crate's README): what a device sends,
//! read and checked, and what the gateway sends, written.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::message::check_id;
use crate::tags::check_tag;

/// The most tags a device may have.
pub const MAX_DEVICE_TAGS: usize = 64;

/// The body of a device's `auth` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The credential the route's authentication plugin checks (a key, a JWT).
    pub token: String,
    pub device_id: String,
    pub app_id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The network the device is on (`wifi`, `4g` ...): it picks the heartbeat interval.
    #[serde(default)]
    pub network: Option<String>,
}

impl Hello {
    /// Reads and checks an `auth` body; the error says what is wrong, for the device's
    /// `error` frame.
    pub fn parse(body: &[u8]) -> Result<Hello, String> {
        let mut hello: Hello =
            serde_json::from_slice(body).map_err(|e| format!("bad auth frame: {e}"))?;
        check_id(&hello.device_id).map_err(|e| format!("device_id {e}"))?;
        check_id(&hello.app_id).map_err(|e| format!("app_id {e}"))?;
        if hello.tags.len() > MAX_DEVICE_TAGS {
            return Err(format!("at most {MAX_DEVICE_TAGS} tags"));
        }
        for tag in &hello.tags {
            check_tag(tag).map_err(|e| format!("tag {tag:?} {e}"))?;
        }
        if let Some(network) = &hello.network {
            check_id(network).map_err(|e| format!("network {e}"))?;
        }
        hello.tags.sort();
        hello.tags.dedup();
        Ok(hello)
    }
}

/// The body of an `ack` frame.
#[derive(Deserialize)]
struct Ack {
    id: String,
}

/// The message id an `ack` body acknowledges.
pub fn ack_id(body: &[u8]) -> Result<String, String> {
    let ack: Ack = serde_json::from_slice(body).map_err(|e| format!("bad ack frame: {e}"))?;
    check_id(&ack.id).map_err(|e| format!("ack id {e}"))?;
    Ok(ack.id)
}

#[derive(Serialize)]
struct AuthOk<'a> {
    heartbeat: u64,
    node: &'a str,
}

/// The `auth_ok` body: the ping interval the device is to keep, and the node it reached.
pub fn auth_ok(heartbeat: u64, node: &str) -> Bytes {
    json(&AuthOk { heartbeat, node })
}

#[derive(Serialize)]
struct HeartbeatChanged {
    heartbeat: u64,
}

/// The `pong` body that tells the device its ping interval changed.
pub fn heartbeat(interval: u64) -> Bytes {
    json(&HeartbeatChanged {
        heartbeat: interval,
    })
}

#[derive(Serialize)]
struct Reconnect {
    after_ms: u64,
}

/// The `reconnect` body: when the device is to come back (to any node).
pub fn reconnect(after_ms: u64) -> Bytes {
    json(&Reconnect { after_ms })
}

#[derive(Serialize)]
struct Error<'a> {
    error: &'a str,
}

/// The `error` body sent before the gateway closes a connection.
pub fn error(why: &str) -> Bytes {
    json(&Error { error: why })
}

fn json(value: &impl Serialize) -> Bytes {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_reads_and_checks() {
        let hello = Hello::parse(
            br#"{"token":"k","device_id":"d1","app_id":"a","tags":["b","a","b"],"network":"4g"}"#,
        )
        .unwrap();
        assert_eq!(hello.tags, ["a", "b"]);
        assert_eq!(hello.network.as_deref(), Some("4g"));
        let refused = |body: &str| Hello::parse(body.as_bytes()).unwrap_err();
        assert!(refused("garbage").starts_with("bad auth frame"));
        assert!(refused(r#"{"token":"k","device_id":"","app_id":"a"}"#).starts_with("device_id"));
        assert!(
            refused(r#"{"token":"k","device_id":"d","app_id":"a","tags":["x y"]}"#)
                .starts_with("tag \"x y\"")
        );
        assert!(
            refused(r#"{"token":"k","device_id":"d","app_id":"a","x":1}"#)
                .contains("unknown field")
        );
    }

    #[test]
    fn ack_and_gateway_bodies() {
        assert_eq!(ack_id(br#"{"id":"m-1"}"#).unwrap(), "m-1");
        assert!(ack_id(b"{}").is_err());
        assert_eq!(&auth_ok(240, "gw")[..], br#"{"heartbeat":240,"node":"gw"}"#);
        assert_eq!(&reconnect(5)[..], br#"{"after_ms":5}"#);
        assert_eq!(&error("replaced")[..], br#"{"error":"replaced"}"#);
    }
}
