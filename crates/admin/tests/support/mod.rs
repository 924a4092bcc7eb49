//! A real Admin API on a loopback port, over a real in-memory store, and a small client.

#![allow(dead_code)] // Each test binary uses its own part of the support.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use pylon_admin::{AdminApi, AdminKey, AdminSettings, Role};
use pylon_model::{Key, Kind};
use pylon_store::{
    ConfigStore, Entry, EventLog, Keyring, Listing, Replica, Revision, StoreError, Txn, WatchStream,
};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN_KEY: &str = "test-admin-key";
pub const VIEWER_KEY: &str = "test-viewer-key";

/// A store over [`EventLog`]: the revisioned map with watches and transactions that every
/// local backend is built on.
#[derive(Default)]
pub struct LogStore(pub EventLog);

#[async_trait]
impl ConfigStore for LogStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        Ok(self.0.list_current())
    }
    async fn history(&self, kind: Kind, id_prefix: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(self.0.history(kind, id_prefix))
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>, StoreError> {
        Ok(self.0.get(key))
    }
    async fn committed_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.0.revision())
    }
    async fn watch(&self, after: Revision) -> Result<WatchStream, StoreError> {
        self.0.watch(after)
    }
    async fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        self.0.commit(txn)
    }
}

pub struct TestApi {
    pub addr: SocketAddr,
    pub store: Arc<LogStore>,
    pub keyring: Arc<Keyring>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn settings() -> AdminSettings {
    AdminSettings {
        admin_key: vec![
            AdminKey {
                name: "admin".into(),
                key: ADMIN_KEY.into(),
                role: Role::Admin,
            },
            AdminKey {
                name: "viewer".into(),
                key: VIEWER_KEY.into(),
                role: Role::Viewer,
            },
        ],
        ..AdminSettings::default()
    }
}

impl TestApi {
    pub async fn start() -> TestApi {
        TestApi::with_settings(settings()).await
    }

    pub async fn with_settings(settings: AdminSettings) -> TestApi {
        let store = Arc::new(LogStore::default());
        let replica = Arc::new(Replica::start(store.clone(), None).await.unwrap());
        let keyring = Arc::new(Keyring::new(&["test secret".to_owned()]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = AdminApi::new(
            listener,
            settings,
            store.clone(),
            replica,
            None,
            keyring.clone(),
        );
        let addr = api.local_addr().unwrap();
        let server = tokio::spawn(api.serve());
        TestApi {
            addr,
            store,
            keyring,
            server,
        }
    }

    /// A request with the admin key.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.call_as(Some(ADMIN_KEY), method, path, body).await
    }

    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        send(self.addr, request).await
    }

    /// The stored value of a key, as the store holds it.
    pub fn stored(&self, key: &Key) -> Option<Value> {
        self.store.0.get(key).map(|e| e.value)
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A self-signed certificate for `name` and its private key, as PEM.
pub fn certificate(name: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (certified.cert.pem(), certified.key_pair.serialize_pem())
}
