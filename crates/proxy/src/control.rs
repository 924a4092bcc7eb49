//! The control API: one node's internal state over HTTP, APISIX's `/v1/...` endpoints.
//!
//! A small HTTP/1.1 server on the control runtime, one request per connection. It is meant
//! for the operator on the machine (loopback by default, as APISIX's): it has no
//! authentication, so it must never listen where traffic comes from.
//!
//! - `GET /v1/status`: the node's id, labels and role, the configuration revision it serves, and
//!   the store's (where they differ, a change is still being applied or was refused), and the
//!   canary change sets it serves.
//! - `GET /v1/discovery/<type>/dump`: a discovery type's followed services, their nodes, and
//!   its settings (secrets hidden), as APISIX's.
//! - `GET /v1/healthcheck`: every upstream with health checks, its nodes and their status.
//! - `GET /v1/healthcheck/<kind>/<id>`: the one defined at `<kind>/<id>` (`upstreams/1`, or
//!   `routes/7` for an inline upstream).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use pylon_discovery::Registry;
use pylon_store::View;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::canary::NodeIdentity;
use crate::handoff::{Kind, Listeners};
use crate::health::HealthRegistry;
use crate::local_http::{self, Answer};
use crate::snapshot::SnapshotCell;

/// The `control` section of the node config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    pub enabled: bool,
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// What `/v1/status` reports, read at each request.
#[derive(Clone)]
pub struct NodeStatus {
    pub node: NodeIdentity,
    /// `traditional`, `data_plane` or `control_plane`.
    pub role: &'static str,
    /// The snapshot the proxy serves; `None` on a node without a proxy (control plane).
    pub serving: Option<SnapshotCell>,
    /// The canary change sets the proxy serves ([`crate::Publisher::canaries`]); `None` on a
    /// node without a proxy.
    pub canaries: Option<watch::Receiver<Vec<String>>>,
    /// The node's copy of the store.
    pub store: watch::Receiver<Arc<View>>,
}

impl NodeStatus {
    /// Why the node cannot take traffic yet, if it cannot: it has no configuration (the store
    /// was never reached and there is no local copy of it), or its workers serve none.
    fn unready(&self) -> Option<&'static str> {
        let store = self.store.borrow();
        if !store.live && store.revision == 0 {
            return Some("no configuration loaded: the config store has not been reached");
        }
        if self.role == "control_plane" {
            return None;
        }
        match &self.serving {
            Some(cell) if cell.load().revision > 0 || store.revision == 0 => None,
            _ => Some("the workers serve no configuration yet"),
        }
    }

    fn report(&self) -> serde_json::Value {
        let store = self.store.borrow();
        let calls = pylon_plugin::call_failures();
        let waf = pylon_plugins::waf_verdicts();
        let mirror = pylon_plugins::mirror_counts();
        let file_log = pylon_plugins::file_log_counts();
        let redis: Vec<_> = pylon_plugins::Redis::statuses()
            .into_iter()
            .map(|redis| {
                serde_json::json!({
                    "name": redis.name,
                    "reachable": redis.reachable,
                    "failures": redis.failures,
                })
            })
            .collect();
        let mut report = serde_json::json!({
            "id": self.node.id,
            "labels": self.node.labels,
            "role": self.role,
            "version": env!("CARGO_PKG_VERSION"),
            "serving_revision": self.serving.as_ref().map(|cell| cell.load().revision),
            "canaries": self.canaries.as_ref().map(|canaries| canaries.borrow().clone()),
            "store": {
                "revision": store.revision,
                "resources": store.entries.len(),
                "connected": store.live,
            },
            "plugin_call_failures": {"let_through": calls.opened, "refused": calls.closed},
            "waf": {"refused": waf.refused, "would_refuse": waf.would_refuse},
            "proxy_mirror": {
                "mirrored": mirror.mirrored,
                "failed": mirror.failed,
                "dropped": mirror.dropped,
                "in_flight": mirror.in_flight,
            },
            "file_logger": {
                "written": file_log.written,
                "dropped": file_log.dropped,
                "failed": file_log.failed,
            },
            "redis": redis,
        });
        for (name, counts) in pylon_plugins::shipped_counts() {
            report[name] = serde_json::json!(counts);
        }
        report
    }
}

/// The control API's listener, bound and ready to serve.
pub struct ControlApi {
    listener: TcpListener,
    state: Arc<State>,
}

/// What the control API reports on.
struct State {
    health: Arc<HealthRegistry>,
    status: NodeStatus,
    /// On a node that proxies.
    discovery: Option<Registry>,
}

impl ControlApi {
    /// Listens on `settings.listen`: on the socket a predecessor handed over if there is one
    /// among `inherited` (see [`crate::Takeover`]), else on a new one.
    pub async fn bind(
        settings: &ControlSettings,
        inherited: &mut Listeners,
        health: Arc<HealthRegistry>,
        status: NodeStatus,
        discovery: Option<Registry>,
    ) -> io::Result<Self> {
        let listener = match inherited.take_tcp(settings.listen, Kind::Control) {
            Some(socket) => TcpListener::from_std(socket)?,
            None => TcpListener::bind(settings.listen).await?,
        };
        Ok(Self {
            listener,
            state: Arc::new(State {
                health,
                status,
                discovery,
            }),
        })
    }

    /// Adds a copy of the listening socket to `listeners`, for a successor to take over.
    pub fn share(&self, settings: &ControlSettings, listeners: &mut Listeners) -> io::Result<()> {
        let copy = self.listener.as_fd().try_clone_to_owned()?;
        listeners.push(settings.listen, Kind::Control, vec![copy])
    }

    /// The address actually listened on (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves for ever; run it on the control runtime.
    pub async fn serve(self) {
        let state = self.state;
        local_http::serve(self.listener, "control API", move |method, path| {
            let (status, body) = route(method, path, &state);
            Answer::json(status, body)
        })
        .await
    }
}

/// The status and JSON body for `method path`.
fn route(method: &str, path: &str, state: &State) -> (u16, String) {
    if method != "GET" {
        return error(405, "405 Method Not Allowed");
    }
    match path {
        "/v1/status" => return (200, state.status.report().to_string()),
        // For load balancers and orchestrators: the process answers at all.
        "/status" => return (200, r#"{"status":"ok"}"#.into()),
        "/status/ready" => {
            return match state.status.unready() {
                None => (200, r#"{"status":"ok"}"#.into()),
                Some(why) => (
                    503,
                    serde_json::json!({"status": "error", "error": why}).to_string(),
                ),
            }
        }
        _ => {}
    }
    if let Some(kind) = path
        .strip_prefix("/v1/discovery/")
        .and_then(|rest| rest.strip_suffix("/dump"))
    {
        let dump = state.discovery.as_ref().and_then(|d| d.dump(kind));
        return match dump {
            Some(dump) => (200, dump.to_string()),
            None => error(404, &format!("discovery `{kind}` is not configured")),
        };
    }
    let health = &state.health;
    let Some(rest) = path.strip_prefix("/v1/healthcheck") else {
        return error(404, "404 Not Found");
    };
    let json = match rest {
        "" | "/" => serde_json::to_string(&health.report_all()),
        _ => {
            let key = rest.trim_start_matches('/').trim_end_matches('/');
            match health.report(key) {
                Some(report) => serde_json::to_string(&report),
                None => return error(404, &format!("no health checker for {key}")),
            }
        }
    };
    match json {
        Ok(body) => (200, body),
        // Plain data with string keys: serializing it cannot fail.
        Err(e) => error(500, &e.to_string()),
    }
}

fn error(status: u16, message: &str) -> (u16, String) {
    let answer = Answer::error(status, message);
    (answer.status, answer.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(view: View) -> State {
        State {
            health: Arc::default(),
            status: NodeStatus {
                node: NodeIdentity {
                    id: "node-1".into(),
                    labels: [("zone".to_owned(), "east".to_owned())].into(),
                },
                role: "control_plane",
                serving: None,
                canaries: None,
                store: watch::channel(Arc::new(view)).1,
            },
            discovery: None,
        }
    }

    #[test]
    fn unknown_paths_and_upstreams_are_json_404s() {
        let state = state(View::default());
        let route = |method, path| route(method, path, &state);
        assert_eq!(route("GET", "/v1/healthcheck"), (200, "[]".into()));
        assert_eq!(
            route("GET", "/v1/schema"),
            (404, r#"{"error_msg":"404 Not Found"}"#.into())
        );
        assert_eq!(
            route("GET", "/v1/healthcheck/upstreams/1"),
            (
                404,
                r#"{"error_msg":"no health checker for upstreams/1"}"#.into()
            )
        );
        assert_eq!(route("POST", "/v1/healthcheck").0, 405);
        assert_eq!(
            route("GET", "/v1/discovery/dns/dump"),
            (
                404,
                r#"{"error_msg":"discovery `dns` is not configured"}"#.into()
            )
        );
    }

    #[test]
    fn a_node_is_ready_once_it_has_a_configuration() {
        let ready = |view: View| route("GET", "/status/ready", &state(view));
        let (code, body) = ready(View::default());
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("\"status\":\"error\""), "{body}");
        let live = View {
            live: true,
            ..View::default()
        };
        assert_eq!(ready(live), (200, r#"{"status":"ok"}"#.into()));
        // The local copy, while the store is away, is a configuration.
        let copy = View {
            revision: 7,
            ..View::default()
        };
        assert_eq!(ready(copy).0, 200);
        let state = state(View::default());
        assert_eq!(
            route("GET", "/status", &state),
            (200, r#"{"status":"ok"}"#.into())
        );
    }

    #[test]
    fn status_names_the_node_and_its_revisions() {
        let view = View {
            revision: 42,
            live: true,
            ..View::default()
        };
        let (code, body) = route("GET", "/v1/status", &state(view));
        assert_eq!(code, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["id"], "node-1");
        assert_eq!(body["labels"], serde_json::json!({"zone": "east"}));
        assert_eq!(body["role"], "control_plane");
        assert_eq!(body["serving_revision"], serde_json::Value::Null);
        assert_eq!(body["canaries"], serde_json::Value::Null);
        assert_eq!(body["store"]["revision"], 42);
        assert_eq!(body["store"]["connected"], true);
    }
}
