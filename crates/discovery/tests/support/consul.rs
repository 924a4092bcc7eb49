//! A stand-in for Consul's HTTP API, as far as discovery uses it (Consul itself cannot be
//! installed where these tests run): `GET /v1/catalog/services`, `GET /v1/health/service/<name>`
//! (`?passing`), `GET /v1/kv/<prefix>?recurse`, each with Consul's blocking queries.
//!
//! As Consul does, every answer carries `X-Consul-Index`; a request with `?index=N` (N > 0)
//! is held until the index passes N or `?wait=` (`10s`, `500ms`, `1m`; 5 minutes at most)
//! runs out, then answered with the state of then. Here one index counts every change to
//! anything (Consul's is the Raft index, also shared, though endpoints may report the last
//! index that touched their data). An ACL token, when required, must come as
//! `X-Consul-Token`; a missing or wrong one is a 403, as with Consul's default-deny ACLs.
#![allow(dead_code)] // Each test uses a part.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    /// The service's own address; empty: the node's.
    pub address: String,
    pub node_address: String,
    pub port: u16,
    pub passing: bool,
    pub meta: Value,
}

impl Instance {
    pub fn new(id: &str, address: &str, port: u16) -> Instance {
        Instance {
            id: id.to_owned(),
            address: address.to_owned(),
            node_address: "192.0.2.1".to_owned(),
            port,
            passing: true,
            meta: json!({}),
        }
    }
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Vec<Instance>>,
    kv: BTreeMap<String, Vec<u8>>,
    token: Option<String>,
    failing: bool,
    /// Requests answered, path and query.
    requests: Vec<String>,
}

/// `(index, restarts)`: held queries wake when either moves.
type Clock = (u64, u64);

pub struct ConsulStandIn {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    clock: Arc<watch::Sender<Clock>>,
    server: tokio::task::JoinHandle<()>,
}

impl ConsulStandIn {
    /// Listening on a free loopback port, index 1, empty.
    pub async fn start() -> ConsulStandIn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind a loopback port");
        let address = listener.local_addr().expect("bound socket has an address");
        let state = Arc::new(Mutex::new(State::default()));
        let clock = Arc::new(watch::Sender::new((1, 0)));
        let server = tokio::spawn(serve(listener, state.clone(), clock.clone()));
        ConsulStandIn {
            address,
            state,
            clock,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`, as `discovery.consul.servers` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn require_token(&self, token: &str) {
        self.state().token = Some(token.to_owned());
    }

    /// Adds or replaces (by ID) an instance of `service`.
    pub fn register(&self, service: &str, instance: Instance) {
        self.change(|state| {
            let instances = state.services.entry(service.to_owned()).or_default();
            instances.retain(|i| i.id != instance.id);
            instances.push(instance);
        });
    }

    pub fn deregister(&self, service: &str, id: &str) {
        self.change(|state| {
            if let Some(instances) = state.services.get_mut(service) {
                instances.retain(|i| i.id != id);
                if instances.is_empty() {
                    state.services.remove(service);
                }
            }
        });
    }

    /// Sets whether every check of instance `id` of `service` passes.
    pub fn set_passing(&self, service: &str, id: &str, passing: bool) {
        self.change(|state| {
            let instances = state.services.get_mut(service).into_iter().flatten();
            for instance in instances.filter(|i| i.id == id) {
                instance.passing = passing;
            }
        });
    }

    pub fn put_kv(&self, key: &str, value: &str) {
        self.change(|state| {
            state.kv.insert(key.to_owned(), value.as_bytes().to_vec());
        });
    }

    pub fn delete_kv(&self, key: &str) {
        self.change(|state| {
            state.kv.remove(key);
        });
    }

    /// Every request is answered 500 while `failing`.
    pub fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }

    /// As a server restored from an older snapshot: the index goes back to `index`, and held
    /// queries are answered at once (their connections would have been cut).
    pub fn restart_at_index(&self, index: u64) {
        self.clock.send_modify(|(now, restarts)| {
            *now = index;
            *restarts += 1;
        });
    }

    pub fn index(&self) -> u64 {
        self.clock.borrow().0
    }

    /// How many requests were answered so far.
    pub fn request_count(&self) -> usize {
        self.state().requests.len()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    fn change(&self, edit: impl FnOnce(&mut State)) {
        edit(&mut self.state());
        self.clock.send_modify(|(index, _)| *index += 1);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ConsulStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, clock: Arc<watch::Sender<Clock>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (state, clock) = (state.clone(), clock.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (state, clock) = (state.clone(), clock.clone());
                async move { Ok::<_, Infallible>(answer(request, &state, &clock).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    state: &Mutex<State>,
    clock: &watch::Sender<Clock>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect();
    {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests.push(request.uri().to_string());
        if state.failing {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, 0, json!("failing"));
        }
        if let Some(token) = &state.token {
            let given = request.headers().get("x-consul-token");
            if given.and_then(|t| t.to_str().ok()) != Some(token) {
                return reply(StatusCode::FORBIDDEN, 0, json!("ACL not found"));
            }
        }
    }
    hold(&query, clock).await;
    let index = clock.borrow().0;
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    if path == "/v1/catalog/services" {
        let services: serde_json::Map<String, Value> = state
            .services
            .keys()
            .map(|name| (name.clone(), json!([])))
            .collect();
        return reply(StatusCode::OK, index, Value::Object(services));
    }
    if let Some(name) = path.strip_prefix("/v1/health/service/") {
        let passing_only = query.contains_key("passing");
        let entries: Vec<Value> = state
            .services
            .get(name)
            .into_iter()
            .flatten()
            .filter(|instance| instance.passing || !passing_only)
            .map(|instance| {
                let status = if instance.passing {
                    "passing"
                } else {
                    "critical"
                };
                json!({
                    "Node": {"Node": "node-1", "Address": instance.node_address},
                    "Service": {
                        "ID": instance.id, "Service": name, "Address": instance.address,
                        "Port": instance.port, "Meta": instance.meta, "Tags": [],
                    },
                    "Checks": [{"CheckID": "service:check", "Status": status}],
                })
            })
            .collect();
        return reply(StatusCode::OK, index, json!(entries));
    }
    if let Some(prefix) = path.strip_prefix("/v1/kv/") {
        let base64 = base64::engine::general_purpose::STANDARD;
        let entries: Vec<Value> = state
            .kv
            .iter()
            .filter(|(key, _)| {
                if query.contains_key("recurse") {
                    key.starts_with(prefix)
                } else {
                    key.as_str() == prefix
                }
            })
            .map(|(key, value)| {
                json!({
                    "Key": key, "Value": base64.encode(value), "Flags": 0,
                    "CreateIndex": 1, "ModifyIndex": index, "LockIndex": 0,
                })
            })
            .collect();
        if entries.is_empty() {
            return reply(StatusCode::NOT_FOUND, index, Value::Null);
        }
        return reply(StatusCode::OK, index, json!(entries));
    }
    reply(StatusCode::NOT_FOUND, index, json!("no such endpoint"))
}

/// Holds a blocking query (`?index=N`, N > 0) until the index passes N, the server restarts,
/// or `?wait=` runs out.
async fn hold(query: &BTreeMap<String, String>, clock: &watch::Sender<Clock>) {
    let Some(wanted) = query.get("index").and_then(|i| i.parse::<u64>().ok()) else {
        return;
    };
    if wanted == 0 {
        return;
    }
    let wait = query
        .get("wait")
        .and_then(|wait| parse_wait(wait))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(300));
    let restarts = clock.borrow().1;
    let mut clock = clock.subscribe();
    let _ = tokio::time::timeout(
        wait,
        clock.wait_for(|(index, restarted)| *index > wanted || *restarted != restarts),
    )
    .await;
}

fn parse_wait(wait: &str) -> Option<Duration> {
    if let Some(ms) = wait.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = wait.strip_suffix('s') {
        return s.parse().ok().map(Duration::from_secs);
    }
    if let Some(m) = wait.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| Duration::from_secs(60 * m));
    }
    None
}

fn reply(status: StatusCode, index: u64, body: Value) -> Response<Full<Bytes>> {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-consul-index", index.to_string())
        .body(Full::new(body))
        .expect("a valid response")
}
