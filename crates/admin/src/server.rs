//! The HTTP side: accept connections (HTTP/1.1, keep-alive), check who is asking, read the
//! body within its limit, and hand the request to the endpoint it names.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use pylon_store::{ConfigStore, Keyring, Replica, Revision};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::address::Target;
use crate::audit::Record;
use crate::auth;
use crate::body::json_body;
use crate::control;
use crate::declarative;
use crate::plugins;
use crate::query::Query;
use crate::resources;
use crate::response::Reply;
use crate::schema;
use crate::settings::AdminSettings;
use crate::writer::Backend;

/// A client has this long to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors, ...), so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// When the API stops, how long an idle keep-alive connection may still bring a request
/// already on its way: closing at once would cut off a request the client has sent.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The Admin API, on a listener its caller bound (so that a restart can hand it over).
pub struct AdminApi {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    settings: AdminSettings,
    backend: Backend,
}

impl AdminApi {
    /// The API on `listener`: it writes to `store`, reads and checks against `replica` (this
    /// process's copy of that store), answers a write once `served` (the revision this
    /// node's workers serve, on a node that proxies) has reached it, and seals SSL private
    /// keys with `keyring`. The settings'
    /// keys must be resolved (see [`AdminSettings::resolve_keys`]): with none, every request is
    /// refused.
    pub fn new(
        listener: TcpListener,
        settings: AdminSettings,
        store: Arc<dyn ConfigStore>,
        replica: Arc<Replica>,
        served: Option<watch::Receiver<Revision>>,
        keyring: Arc<Keyring>,
    ) -> AdminApi {
        AdminApi {
            listener,
            shared: Arc::new(Shared {
                settings,
                backend: Backend {
                    store,
                    replica,
                    served,
                    keyring,
                    turn: tokio::sync::Mutex::default(),
                },
            }),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The listening socket, so that a successor process can be handed a copy.
    pub fn listener(&self) -> &TcpListener {
        &self.listener
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        self.serve_until(std::future::pending()).await;
    }

    /// Serves until `stop` completes, then stops accepting and returns once every connection
    /// has closed: requests in flight are answered, and so is a request already on its way on
    /// an idle keep-alive connection (it waits [`IDLE_GRACE`] for one); each of those answers
    /// says `Connection: close`. Connections not accepted yet wait in the listening socket's
    /// queue, for whoever serves it next: this API again, or the process that took it over.
    pub async fn serve_until(&self, stop: impl Future<Output = ()>) {
        let (stopping, stopped) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let (shared, stopped) = (self.shared.clone(), stopped.clone());
                        connections.spawn(serve_connection(shared, stream, peer, stopped));
                    }
                    Err(e) => {
                        tracing::warn!("admin API accept failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                // Reaps the connections that ended, so that the set holds only open ones.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let _ = stopping.send(true);
        while connections.join_next().await.is_some() {}
    }
}

/// Serves one connection until it closes; once `stopped` turns true, closes it after the
/// request in flight or one that arrives within [`IDLE_GRACE`].
async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stopped: watch::Receiver<bool>,
) {
    let closing = stopped.clone();
    let service = hyper::service::service_fn(move |request| {
        let (shared, closing) = (shared.clone(), closing.clone());
        async move {
            let mut response = shared.respond(peer, request).await;
            if *closing.borrow() {
                // Read by hyper too: it closes the connection once this response is written.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // The guard `wait_for` returns is dropped here, not held across what follows.
    let stopping = async {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    };
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stopping => {
            match tokio::time::timeout(IDLE_GRACE, connection.as_mut()).await {
                Ok(served) => served,
                Err(_) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!("admin API connection from {peer}: {e}");
    }
}

impl Shared {
    async fn respond(&self, peer: SocketAddr, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let cors = self.settings.enable_admin_cors;
        if !auth::address_allowed(&self.settings.allow_admin, peer.ip()) {
            return auth::address_refused().into_response(cors);
        }
        if cors && request.method() == Method::OPTIONS {
            return Reply::preflight();
        }
        let reply = self.dispatch(peer, request).await;
        reply.into_response(cors)
    }

    async fn dispatch(&self, peer: SocketAddr, request: Request<Incoming>) -> Reply {
        let query = Query::parse(request.uri().query().unwrap_or_default());
        let target = match Target::parse(request.uri().path()) {
            Ok(target) => target,
            Err(reply) => return reply,
        };
        let method = request.method().clone();
        let backend = &self.backend;
        backend.catch_up().await;
        let caller = match auth::identify(
            &self.settings.admin_key,
            &backend.replica.view(),
            request.headers(),
            &query,
        ) {
            Ok(caller) => caller,
            Err(reply) => return reply,
        };
        let record = Record::new(&caller, peer, format!("{method} {}", request.uri().path()));
        let limit = match target {
            Target::Config => self.settings.max_config_size,
            _ => self.settings.max_body_size,
        };
        let body = match read_body(request, limit).await {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        match (target, &method) {
            (Target::Root, &Method::HEAD) => Reply::empty(StatusCode::OK),
            (Target::Resource(address), _) => {
                if let Err(reply) = auth::check_writes(&caller, &method) {
                    return reply;
                }
                match json_body(&body) {
                    Ok(json) => {
                        resources::handle(backend, &record, &method, address, &query, json).await
                    }
                    Err(reply) => reply,
                }
            }
            (Target::Schema(name), &Method::GET) => schema::schema(&name),
            (Target::PluginList, &Method::GET) => plugins::list(&query),
            (Target::Plugins, &Method::GET) => plugins::all(),
            (Target::Plugin(name), &Method::GET) => plugins::schema(&name, &query),
            (Target::Validate(kind), &Method::POST) => match json_body(&body) {
                Ok(json) => schema::validate(&kind, json),
                Err(reply) => reply,
            },
            (Target::Config, _) if caller.tenant.is_some() => auth::forbidden(
                "the whole configuration is the platform's: a tenant's users use change sets",
            ),
            (Target::Config, &Method::GET) => {
                declarative::dump(&backend.replica.view(), &backend.keyring)
            }
            (Target::Config, &Method::POST) => match auth::check_writes(&caller, &method) {
                Ok(()) => declarative::apply(backend, &record, &query, &body).await,
                Err(reply) => reply,
            },
            (Target::Control(path), _) => {
                control::handle(backend, &record, &method, &path, &query, &body).await
            }
            _ => Reply::error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

/// The whole body, or 413 as soon as it is known to exceed `limit` (the rest is not read, and
/// the connection is closed after the answer).
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Reply> {
    let too_large = || Reply {
        close: true,
        ..Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Reply {
            close: true,
            ..Reply::bad_request(format!("invalid request body: {e}"))
        }),
    }
}
