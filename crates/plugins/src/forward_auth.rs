//! `forward-auth`: asks an authorization service about each request. A 2xx answer lets the
//! request through, with headers from the answer for the upstream; any other answer goes
//! back to the client as the service gave it.

mod client;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::{Call, FailurePolicy, Phases, Plugin, Reply, RequestCtx, Step, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::outbound::Endpoint;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "forward-auth",
    priority: 2002,
    schema: schema_of::<ForwardAuthConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ForwardAuthConfig {
    /// The authorization service: `http://host[:port]/path` (https is not supported yet).
    uri: String,
    /// Let requests through when the service cannot be asked (down, timed out, a malformed
    /// answer); otherwise they get `status_on_error`.
    #[serde(default)]
    allow_degradation: bool,
    /// The status requests get when the service cannot be asked.
    #[serde(default = "default_status_on_error")]
    #[schemars(range(min = 200, max = 599))]
    status_on_error: u16,
    /// Verify the service's certificate (for https, which is not supported yet).
    #[serde(default = "default_true")]
    #[allow(dead_code)] // Read once https is: APISIX stores it with every configuration.
    ssl_verify: bool,
    /// The method the service is asked with. `POST` is sent without the client's body.
    #[serde(default)]
    request_method: AuthMethod,
    /// The most of the client's body forwarded with `POST`, in bytes. Accepted for APISIX's
    /// stored configurations; the body is not forwarded yet.
    #[serde(default = "default_max_req_body_size")]
    #[schemars(range(min = 1))]
    max_req_body_size: u64,
    /// Client request headers sent on to the service.
    #[serde(default)]
    request_headers: Vec<String>,
    /// More headers for the service, with `$var`s (`$remote_addr`, `$request_uri`).
    extra_headers: Option<BTreeMap<String, String>>,
    /// Headers of an accepting answer set on the request for the upstream; one the answer
    /// lacks is removed from the request, so that a client cannot forge it.
    #[serde(default)]
    upstream_headers: Vec<String>,
    /// Headers of a refusing answer sent on to the client.
    #[serde(default)]
    client_headers: Vec<String>,
    /// How long asking may take, in milliseconds.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 60000))]
    timeout: u64,
    /// Keep connections to the service open. Accepted for APISIX's stored configurations:
    /// every request is asked on its own connection for now.
    #[serde(default = "default_true")]
    #[allow(dead_code)]
    // Read once connections are pooled: APISIX stores it with every configuration.
    keepalive: bool,
    /// How long an idle kept-alive connection stays open, in milliseconds.
    #[serde(default = "default_keepalive_timeout")]
    #[schemars(range(min = 1000))]
    keepalive_timeout: u64,
    /// How many idle connections are kept.
    #[serde(default = "default_keepalive_pool")]
    #[schemars(range(min = 1))]
    keepalive_pool: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
enum AuthMethod {
    #[default]
    Get,
    Post,
}

fn default_status_on_error() -> u16 {
    403
}

fn default_true() -> bool {
    true
}

fn default_max_req_body_size() -> u64 {
    64 << 20
}

fn default_timeout() -> u64 {
    3000
}

fn default_keepalive_timeout() -> u64 {
    60_000
}

fn default_keepalive_pool() -> u64 {
    5
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: ForwardAuthConfig = parse(config)?;
    let endpoint = Endpoint::parse(&config.uri).map_err(|e| FieldError::new("uri", e))?;
    if !(200..=599).contains(&config.status_on_error) {
        return Err(FieldError::new(
            "status_on_error",
            "must be from 200 to 599",
        ));
    }
    if !(1..=60_000).contains(&config.timeout) {
        return Err(FieldError::new("timeout", "must be from 1 to 60000"));
    }
    if config.max_req_body_size == 0 {
        return Err(FieldError::new("max_req_body_size", "must be at least 1"));
    }
    if config.keepalive_timeout < 1000 {
        return Err(FieldError::new(
            "keepalive_timeout",
            "must be at least 1000",
        ));
    }
    if config.keepalive_pool == 0 {
        return Err(FieldError::new("keepalive_pool", "must be at least 1"));
    }
    let lists = [
        ("request_headers", &config.request_headers),
        ("upstream_headers", &config.upstream_headers),
        ("client_headers", &config.client_headers),
    ];
    for (field, names) in lists {
        for (i, name) in names.iter().enumerate() {
            check_name(&format!("{field}.{i}"), name)?;
        }
    }
    let mut extra_headers = Vec::new();
    for (name, value) in config.extra_headers.iter().flatten() {
        let path = format!("extra_headers.{name}");
        check_name(&path, name)?;
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(FieldError::new(path, "invalid value character in header"));
        }
        extra_headers.push((name.clone(), Template::parse(value)));
    }
    Ok(Arc::new(ForwardAuth {
        endpoint,
        method: match config.request_method {
            AuthMethod::Get => "GET",
            AuthMethod::Post => "POST",
        },
        timeout: Duration::from_millis(config.timeout),
        policy: if config.allow_degradation {
            FailurePolicy::Open
        } else {
            FailurePolicy::Closed {
                status: config.status_on_error,
            }
        },
        request_headers: config.request_headers,
        extra_headers,
        upstream_headers: config.upstream_headers,
        client_headers: config.client_headers,
    }))
}

fn check_name(path: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(FieldError::new(path, "must be a header name"));
    }
    Ok(())
}

struct ForwardAuth {
    endpoint: Endpoint,
    method: &'static str,
    timeout: Duration,
    policy: FailurePolicy,
    request_headers: Vec<String>,
    extra_headers: Vec<(String, Template)>,
    upstream_headers: Vec<String>,
    client_headers: Vec<String>,
}

impl Plugin for ForwardAuth {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let headers = self.auth_headers(ctx);
        Step::Call(Call {
            work: Box::pin(async move {
                let answer = client::send(&self.endpoint, self.method, &headers).await?;
                if answer.status >= 300 {
                    let mut reply = Reply::status(answer.status);
                    for name in &self.client_headers {
                        if let Some(value) = answer.header(name) {
                            reply = reply.header(name.clone(), value);
                        }
                    }
                    reply.body = answer.body;
                    return Ok(Some(reply));
                }
                for name in &self.upstream_headers {
                    match answer.header(name) {
                        Some(value) => ctx.edits.headers.set(name.clone(), value.to_owned()),
                        None => ctx.edits.headers.remove(name.clone()),
                    }
                }
                Ok(None)
            }),
            timeout: self.timeout,
            policy: self.policy,
        })
    }
}

impl ForwardAuth {
    /// What the service is told of the request: APISIX's `X-Forwarded-*` headers, then
    /// `extra_headers` over them, then the client's `request_headers` not set already.
    fn auth_headers(&self, ctx: &RequestCtx<'_>) -> Vec<(String, String)> {
        let var = |name: &str| ctx.var(name).unwrap_or_default().into_owned();
        let mut headers = vec![
            ("X-Forwarded-Proto".to_owned(), var("scheme")),
            ("X-Forwarded-Method".to_owned(), ctx.method().to_owned()),
            ("X-Forwarded-Host".to_owned(), var("host")),
            ("X-Forwarded-Uri".to_owned(), var("request_uri")),
            ("X-Forwarded-For".to_owned(), ctx.client_ip().to_string()),
        ];
        for (name, value) in &self.extra_headers {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.clone(), value.render(ctx).into_owned()));
        }
        for name in &self.request_headers {
            if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                continue;
            }
            if let Some(value) = ctx.header(name) {
                headers.push((name.clone(), value.into_owned()));
            }
        }
        // A variable may bring in a CR LF (a decoded argument): it must not end the line.
        for (_, value) in &mut headers {
            value.retain(|c| !c.is_control() || c == '\t');
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use pylon_plugin::{ChainBuilder, Entry, Meta, RequestEdits, RequestPhase};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::testing::{build, refusal, TestRequest};

    /// An authorization service that answers one request with `answer` and hands over the
    /// request head it got.
    async fn service(answer: &'static str) -> (SocketAddr, oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request head ended early");
                head.extend_from_slice(&buf[..n]);
            }
            stream.write_all(answer.as_bytes()).await.unwrap();
            let _ = tx.send(String::from_utf8(head).unwrap());
        });
        (addr, rx)
    }

    /// Runs the plugin's access phase through a chain, as the gateway does: the reply the
    /// client gets, if any, and the edits to the request.
    async fn ask(config: Value, request: &TestRequest) -> (Option<Reply>, RequestEdits) {
        let plugin = build(&DESCRIPTOR, config).unwrap();
        let mut chain = ChainBuilder::new();
        chain.add(Entry::new(plugin, DESCRIPTOR.priority, Meta::default()));
        let chain = chain.build();
        let mut ctx = RequestCtx::new(request, "r1", None);
        let reply = chain.run(RequestPhase::Access, &mut ctx, None).await;
        (reply, ctx.edits)
    }

    fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn an_accepting_answer_lets_the_request_through_with_its_headers() {
        let (addr, asked) =
            service("HTTP/1.1 200 OK\r\nX-User-Id: 42\r\nContent-Length: 2\r\n\r\nok").await;
        let request = TestRequest::get("/orders?id=7")
            .method("DELETE")
            .header("Authorization", "Bearer t")
            .header("X-Role", "forged");
        let config = json!({
            "uri": format!("http://{addr}/auth?realm=a"),
            "request_headers": ["Authorization", "X-Absent"],
            "extra_headers": {"X-Route": "$route_id"},
            "upstream_headers": ["X-User-Id", "X-Role"]
        });
        let (reply, edits) = ask(config, &request).await;
        assert!(reply.is_none());
        assert_eq!(edits.headers.get("x-user-id"), Some(Some("42")));
        assert_eq!(edits.headers.get("x-role"), Some(None));
        let head = asked.await.unwrap();
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "GET /auth?realm=a HTTP/1.1");
        for expected in [
            format!("Host: {addr}"),
            "X-Forwarded-Proto: http".into(),
            "X-Forwarded-Method: DELETE".into(),
            "X-Forwarded-Host: example.com".into(),
            "X-Forwarded-Uri: /orders?id=7".into(),
            "X-Forwarded-For: 192.0.2.7".into(),
            "X-Route: r1".into(),
            "Authorization: Bearer t".into(),
        ] {
            assert!(lines.contains(&expected.as_str()), "{expected} in {head}");
        }
        assert!(!head.contains("X-Absent"));
    }

    #[tokio::test]
    async fn a_refusing_answer_goes_to_the_client() {
        let (addr, _) = service(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nX-Other: 1\r\n\
             Content-Length: 6\r\n\r\ndenied",
        )
        .await;
        let config = json!({
            "uri": format!("http://{addr}/"),
            "request_method": "POST",
            "client_headers": ["WWW-Authenticate"]
        });
        let (reply, _) = ask(config, &TestRequest::get("/")).await;
        let reply = reply.unwrap();
        assert_eq!((reply.status, &reply.body[..]), (401, &b"denied"[..]));
        assert_eq!(header(&reply, "www-authenticate"), Some("Bearer"));
        assert_eq!(header(&reply, "x-other"), None);
    }

    #[tokio::test]
    async fn chunked_and_unframed_answers_are_read_whole() {
        let (addr, asked) = service(
            "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nno \r\n4\r\nway!\r\n0\r\n\r\n",
        )
        .await;
        let (reply, _) = ask(
            json!({"uri": format!("http://{addr}")}),
            &TestRequest::get("/"),
        )
        .await;
        assert_eq!(&reply.unwrap().body[..], b"no way!");
        assert!(asked.await.unwrap().starts_with("GET / HTTP/1.1\r\n"));
        let (addr, _) = service("HTTP/1.1 302 Found\r\nLocation: /login\r\n\r\nuntil close").await;
        let config = json!({"uri": format!("http://{addr}"), "client_headers": ["Location"]});
        let reply = ask(config, &TestRequest::get("/")).await.0.unwrap();
        assert_eq!((reply.status, &reply.body[..]), (302, &b"until close"[..]));
        assert_eq!(header(&reply, "location"), Some("/login"));
    }

    #[tokio::test]
    async fn a_service_that_does_not_answer_in_time_gets_the_failure_policy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and holds connections without ever answering.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let uri = format!("http://{addr}/");
        let closed = json!({"uri": uri, "timeout": 200, "status_on_error": 503});
        let (reply, _) = ask(closed, &TestRequest::get("/")).await;
        assert_eq!(reply.map(|r| r.status), Some(503));
        let open = json!({"uri": uri, "timeout": 200, "allow_degradation": true});
        let (reply, edits) = ask(open, &TestRequest::get("/")).await;
        assert!(reply.is_none() && edits.is_empty());
    }

    #[tokio::test]
    async fn a_service_that_is_down_gets_the_failure_policy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri = format!("http://{addr}/");
        let (reply, _) = ask(json!({"uri": uri}), &TestRequest::get("/")).await;
        assert_eq!(reply.map(|r| r.status), Some(403));
        let open = json!({"uri": uri, "allow_degradation": true});
        assert!(ask(open, &TestRequest::get("/")).await.0.is_none());
    }

    #[tokio::test]
    async fn a_malformed_or_oversized_answer_gets_the_failure_policy() {
        for answer in [
            "NOT HTTP\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ] {
            let (addr, _) = service(answer).await;
            let config = json!({"uri": format!("http://{addr}/"), "status_on_error": 502});
            let (reply, _) = ask(config, &TestRequest::get("/")).await;
            assert_eq!(reply.map(|r| r.status), Some(502), "{answer:?}");
        }
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        let path = |config| refusal(&DESCRIPTOR, config).path;
        assert_eq!(path(json!({})), "");
        let https = refusal(&DESCRIPTOR, json!({"uri": "https://auth/"}));
        assert_eq!(https.path, "uri");
        assert!(https.message.contains("https is not supported yet"));
        let uri = "http://auth/";
        assert_eq!(
            path(json!({"uri": uri, "request_method": "PUT"})),
            "request_method"
        );
        assert_eq!(path(json!({"uri": uri, "timeout": 0})), "timeout");
        assert_eq!(path(json!({"uri": uri, "timeout": 60001})), "timeout");
        assert_eq!(
            path(json!({"uri": uri, "status_on_error": 600})),
            "status_on_error"
        );
        assert_eq!(
            path(json!({"uri": uri, "upstream_headers": ["ok", "X:Y"]})),
            "upstream_headers.1"
        );
        assert_eq!(
            path(json!({"uri": uri, "extra_headers": {"X-A": "a\nb"}})),
            "extra_headers.X-A"
        );
        assert_eq!(
            path(json!({"uri": uri, "keepalive_timeout": 10})),
            "keepalive_timeout"
        );
    }
}
