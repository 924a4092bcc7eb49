//! `grpc-transcode`: HTTP/JSON clients (HTTP/1.1 and HTTP/2, the same assertions) calling a
//! real gRPC server (tonic, messages and service written by hand, no protoc) through a proto
//! sent as text to the Admin API: unary calls by GET and POST, nested messages, enums, 64-bit
//! integers as numbers and as strings, repeated and map fields, an error status as HTTP and
//! JSON, a deadline, `google.api.http` annotations with path variables and body, and a
//! server stream as NDJSON and as server-sent events. Bad protos and plugin configurations
//! are refused by the Admin API with the field and the reason.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::{json, Value};
use support::client::{admin, Response};
use support::grpc_server::{self, Method};
use support::protocols::{call, PROTOCOLS};
use support::{wait_until, Pylon};
use tokio::sync::mpsc;
use tonic::body::BoxBody;
use tonic::codec::ProstCodec;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Status};

const ADMIN_KEY: &str = "test-admin-key";

/// The proto the gateway gets, as text: what the hand-written types below encode.
const SHOP_PROTO: &str = r#"syntax = "proto3";
package demo;
import "google/api/annotations.proto";

enum Kind { KIND_UNSPECIFIED = 0; BOOK = 1; GAME = 2; }
message Price { int64 cents = 1; string currency = 2; }
message Item {
  string id = 1;
  string name = 2;
  Kind kind = 3;
  Price price = 4;
  repeated string tags = 5;
  map<string, int32> stock = 6;
}
message GetItemRequest { string id = 1; }
message ListRequest { int32 count = 1; string fail = 2; }
message SlowRequest { uint32 millis = 1; }

service Shop {
  rpc GetItem (GetItemRequest) returns (Item) {
    option (google.api.http) = {
      get: "/v1/items/{id}"
      additional_bindings { get: "/v1/items/{id}/price" response_body: "price" }
      additional_bindings { get: "/v1/items/{id}/tags" response_body: "tags" }
    };
  }
  rpc PutItem (Item) returns (Item) {
    option (google.api.http) = { post: "/v1/shelves/{id}/items" body: "*" };
  }
  rpc List (ListRequest) returns (stream Item) {
    option (google.api.http) = { get: "/v1/items" };
  }
  rpc Slow (SlowRequest) returns (Item);
}
"#;

// === the upstream: demo.Shop, by hand ===

#[derive(Clone, PartialEq, prost::Message)]
struct Price {
    #[prost(int64, tag = "1")]
    cents: i64,
    #[prost(string, tag = "2")]
    currency: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Item {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(int32, tag = "3")]
    kind: i32,
    #[prost(message, optional, tag = "4")]
    price: Option<Price>,
    #[prost(string, repeated, tag = "5")]
    tags: Vec<String>,
    #[prost(map = "string, int32", tag = "6")]
    stock: HashMap<String, i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetItemRequest {
    #[prost(string, tag = "1")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListRequest {
    #[prost(int32, tag = "1")]
    count: i32,
    #[prost(string, tag = "2")]
    fail: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SlowRequest {
    #[prost(uint32, tag = "1")]
    millis: u32,
}

/// Beyond 2^53: a JSON number would lose it in most clients.
const BIG_CENTS: i64 = 9_007_199_254_740_993;

#[derive(Clone)]
struct Shop;

impl NamedService for Shop {
    const NAME: &'static str = "demo.Shop";
}

impl Service<http::Request<BoxBody>> for Shop {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/demo.Shop/GetItem" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(Method(get_item), request).await
                }
                "/demo.Shop/PutItem" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(Method(put_item), request).await
                }
                "/demo.Shop/List" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.server_streaming(Method(list), request).await
                }
                "/demo.Shop/Slow" => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    grpc.unary(Method(slow), request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

fn item(id: &str) -> Item {
    Item {
        id: id.to_owned(),
        name: format!("item {id}"),
        kind: 2,
        price: Some(Price {
            cents: BIG_CENTS,
            currency: "EUR".into(),
        }),
        tags: vec!["a".into(), "b".into()],
        stock: HashMap::from([("paris".to_owned(), 3)]),
    }
}

async fn get_item(request: Request<GetItemRequest>) -> Result<tonic::Response<Item>, Status> {
    let id = request.into_inner().id;
    if id == "missing" {
        return Err(Status::not_found(format!("no item {id}")));
    }
    Ok(tonic::Response::new(item(&id)))
}

async fn put_item(request: Request<Item>) -> Result<tonic::Response<Item>, Status> {
    Ok(tonic::Response::new(request.into_inner()))
}

type Items = Pin<Box<dyn Stream<Item = Result<Item, Status>> + Send>>;

/// `count` items, in order; then, with `fail`, an ABORTED status.
async fn list(request: Request<ListRequest>) -> Result<tonic::Response<Items>, Status> {
    let ListRequest { count, fail } = request.into_inner();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..count {
            if tx.send(Ok(item(&i.to_string()))).await.is_err() {
                return;
            }
        }
        if !fail.is_empty() {
            let _ = tx.send(Err(Status::aborted(fail))).await;
        }
    });
    Ok(tonic::Response::new(
        Box::pin(ReceiverStream::new(rx)) as Items
    ))
}

async fn slow(request: Request<SlowRequest>) -> Result<tonic::Response<Item>, Status> {
    let millis = request.into_inner().millis;
    tokio::time::sleep(Duration::from_millis(millis.into())).await;
    Ok(tonic::Response::new(item("slow")))
}

async fn start_shop() -> SocketAddr {
    grpc_server::serve(Shop).await
}

// === the gateway ===

fn start_pylon() -> Pylon {
    let node = format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key:\n    - {{name: admin, key: {ADMIN_KEY}, role: admin}}\n\
         config:\n  source: embedded\n  data_dir: data\n"
    );
    Pylon::run_node(tempfile::tempdir().unwrap(), &node)
        .unwrap_or_else(|e| panic!("pylon did not start: {e}"))
}

fn put(pylon: &Pylon, path: &str, body: Value) -> Response {
    admin(
        pylon.admin.expect("an Admin API"),
        ADMIN_KEY,
        "PUT",
        path,
        Some(&body),
    )
}

/// A route at `uri` to the shop through `grpc-transcode` configured as `plugin`.
fn route(pylon: &Pylon, id: &str, uri: &str, plugin: Value) {
    let res = put(
        pylon,
        &format!("/apisix/admin/routes/{id}"),
        json!({"uri": uri, "upstream_id": "shop", "plugins": {"grpc-transcode": plugin}}),
    );
    assert!(res.status < 300, "route {id}: {}", res.text());
}

/// The gateway with the shop's proto, its upstream, and the routes every test calls.
fn gateway(shop: SocketAddr) -> Pylon {
    let pylon = start_pylon();
    let res = put(
        &pylon,
        "/apisix/admin/protos/shop",
        json!({"content": SHOP_PROTO}),
    );
    assert!(res.status < 300, "{}", res.text());
    let upstream = json!({"scheme": "grpc", "nodes": {shop.to_string(): 1}});
    let res = put(&pylon, "/apisix/admin/upstreams/shop", upstream);
    assert!(res.status < 300, "{}", res.text());
    let fixed =
        |method: &str| json!({"proto_id": "shop", "service": "demo.Shop", "method": method});
    route(&pylon, "get", "/item", fixed("GetItem"));
    route(&pylon, "put", "/put", fixed("PutItem"));
    let strings = json!({"proto_id": "shop", "service": "demo.Shop", "method": "GetItem",
        "pb_option": ["int64_as_string", "enum_as_value"]});
    route(&pylon, "strings", "/item-as-strings", strings);
    let slow =
        json!({"proto_id": "shop", "service": "demo.Shop", "method": "Slow", "deadline": 300});
    route(&pylon, "slow", "/slow", slow);
    route(&pylon, "list", "/list", fixed("List"));
    route(
        &pylon,
        "annotated",
        "/v1/*",
        json!({"proto_id": "shop", "service": "demo.Shop"}),
    );
    wait_until(
        || support::client::get(pylon.addr, "example.com", "/v1/items/1").status == 200,
        "the routes to be served",
    );
    pylon
}

/// The same request over HTTP/1.1 and HTTP/2: both answers, checked alike by the caller.
async fn both(
    pylon: &Pylon,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<Response> {
    let mut answers = Vec::new();
    for protocol in PROTOCOLS {
        answers.push(
            call(
                protocol,
                pylon.addr,
                method,
                target,
                headers,
                body.as_bytes(),
            )
            .await,
        );
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_by_get_and_post_carry_every_kind_of_field() {
    let pylon = gateway(start_shop().await);

    for res in both(&pylon, "GET", "/item?id=7", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("content-type"), Some("application/json"));
        assert_eq!(res.header("grpc-status"), Some("0"));
        assert_eq!(
            res.json(),
            json!({"id": "7", "name": "item 7", "kind": "GAME",
                "price": {"cents": BIG_CENTS, "currency": "EUR"},
                "tags": ["a", "b"], "stock": {"paris": 3}})
        );
    }

    let body = json!({"id": "p1", "name": "pen", "kind": "BOOK",
        "price": {"cents": "12", "currency": "USD"}, "tags": ["x"], "stock": {"lyon": 2}});
    for res in both(
        &pylon,
        "POST",
        "/put",
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
    {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(
            res.json(),
            json!({"id": "p1", "name": "pen", "kind": "BOOK",
                "price": {"cents": 12, "currency": "USD"}, "tags": ["x"], "stock": {"lyon": 2}})
        );
    }

    // int64 as a string (and enums as numbers), by `pb_option`.
    for res in both(&pylon, "GET", "/item-as-strings?id=8", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        let json = res.json();
        assert_eq!(json["price"]["cents"], json!(BIG_CENTS.to_string()));
        assert_eq!(json["kind"], json!(2));
    }

    // A body that is not the method's JSON never reaches the upstream.
    for res in both(&pylon, "POST", "/put", &[], "{\"tags\": 5}").await {
        assert_eq!(res.status, 400, "{}", res.text());
        assert!(
            res.json()["message"].as_str().unwrap().contains("Item"),
            "{}",
            res.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_status_is_an_http_status_with_a_json_body() {
    let pylon = gateway(start_shop().await);
    for res in both(&pylon, "GET", "/item?id=missing", &[], "").await {
        assert_eq!(res.status, 404, "{}", res.text());
        assert_eq!(res.header("grpc-status"), Some("5"));
        assert_eq!(res.header("grpc-message"), Some("no item missing"));
        assert_eq!(
            res.json(),
            json!({"code": 5, "message": "no item missing", "details": []})
        );
    }
    // The deadline passes before the call's answer: DEADLINE_EXCEEDED, as a 504.
    for res in both(&pylon, "GET", "/slow?millis=5000", &[], "").await {
        assert_eq!(res.status, 504, "{}", res.text());
        assert_eq!(res.json()["code"], json!(4), "{}", res.text());
    }
    // Within it, the answer.
    for res in both(&pylon, "GET", "/slow?millis=1", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json()["id"], "slow");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_choose_the_method_and_fill_it_from_path_body_and_query() {
    let pylon = gateway(start_shop().await);
    for res in both(&pylon, "GET", "/v1/items/42", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json()["name"], "item 42");
    }
    // `body: "*"`: the body is the message, the path variable sets its id over the body's.
    let body = json!({"id": "ignored", "name": "lamp", "tags": ["t"]}).to_string();
    for res in both(&pylon, "POST", "/v1/shelves/s9/items", &[], &body).await {
        assert_eq!(res.status, 200, "{}", res.text());
        let json = res.json();
        assert_eq!(
            (json["id"].clone(), json["name"].clone()),
            (json!("s9"), json!("lamp"))
        );
    }
    // `response_body`: one field of the answer is the body, whatever its type.
    for res in both(&pylon, "GET", "/v1/items/42/price", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json(), json!({"cents": BIG_CENTS, "currency": "EUR"}));
    }
    for res in both(&pylon, "GET", "/v1/items/42/tags", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json(), json!(["a", "b"]));
    }
    // No rule for this verb and path.
    for res in both(&pylon, "DELETE", "/v1/items/42", &[], "").await {
        assert_eq!(res.status, 404, "{}", res.text());
        assert_eq!(
            res.json()["message"],
            "no method is bound to DELETE /v1/items/42"
        );
    }
}

/// The items of a streamed answer, in the order they came, and its final error if any.
fn lines(res: &Response, events: bool) -> Vec<Value> {
    let text = res.text();
    let payloads: Vec<&str> = if events {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                let data = event.lines().find_map(|l| l.strip_prefix("data: "));
                data.unwrap_or_else(|| panic!("an event without data: {event:?}"))
            })
            .collect()
    } else {
        text.lines().collect()
    };
    payloads
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_answers_as_ndjson_or_as_server_sent_events() {
    let pylon = gateway(start_shop().await);
    for res in both(&pylon, "GET", "/list?count=3", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("content-type"), Some("application/x-ndjson"));
        let ids: Vec<Value> = lines(&res, false).iter().map(|l| l["id"].clone()).collect();
        assert_eq!(ids, [json!("0"), json!("1"), json!("2")]);
    }
    // Through the annotation too, as events.
    let accept = [("accept", "text/event-stream")];
    for res in both(&pylon, "GET", "/v1/items?count=4", &accept, "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("content-type"), Some("text/event-stream"));
        let ids: Vec<Value> = lines(&res, true).iter().map(|l| l["id"].clone()).collect();
        assert_eq!(ids, [json!("0"), json!("1"), json!("2"), json!("3")]);
    }
    // A stream that fails after its items ends with the error as its last line.
    for res in both(&pylon, "GET", "/list?count=2&fail=gave%20up", &[], "").await {
        assert_eq!(res.status, 200, "{}", res.text());
        let lines = lines(&res, false);
        assert_eq!(lines.len(), 3, "{}", res.text());
        assert_eq!(
            lines[2],
            json!({"error": {"code": 10, "message": "gave up", "details": []}})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protos_and_plugin_configs_are_refused_with_the_field() {
    let pylon = start_pylon();
    let broken = "syntax = \"proto3\";\npackage p;\nmessage M {\n  strin name = 1;\n}\n";
    let res = put(
        &pylon,
        "/apisix/admin/protos/bad",
        json!({"content": broken}),
    );
    assert_eq!(res.status, 400, "{}", res.text());
    let message = res.json()["error_msg"].as_str().unwrap().to_owned();
    assert!(message.contains("content: bad.proto:4:3: "), "{message}");

    let res = put(
        &pylon,
        "/apisix/admin/protos/shop",
        json!({"content": SHOP_PROTO}),
    );
    assert!(res.status < 300, "{}", res.text());
    let upstream = json!({"scheme": "grpc", "nodes": {"127.0.0.1:1": 1}});
    assert!(put(&pylon, "/apisix/admin/upstreams/shop", upstream).status < 300);
    let refused = |plugin: Value, field: &str, reason: &str| {
        let res = put(
            &pylon,
            "/apisix/admin/routes/r",
            json!({"uri": "/r", "upstream_id": "shop", "plugins": {"grpc-transcode": plugin}}),
        );
        assert_eq!(res.status, 400, "{}", res.text());
        let message = res.json()["error_msg"].as_str().unwrap().to_owned();
        let expected = format!("plugins.grpc-transcode.{field}: {reason}");
        assert!(message.contains(&expected), "{message}\nwanted: {expected}");
    };
    let base = |extra: Value| {
        let mut plugin = json!({"proto_id": "shop", "service": "demo.Shop", "method": "GetItem"});
        plugin
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        plugin
    };
    refused(
        base(json!({"proto_id": "nope"})),
        "proto_id",
        "proto `nope` does not exist",
    );
    refused(
        base(json!({"service": "demo.Nope"})),
        "service",
        "service `demo.Nope` is not defined in the proto",
    );
    refused(
        base(json!({"method": "Nope"})),
        "method",
        "method `Nope` is not defined in service `demo.Shop`",
    );
    refused(
        base(json!({"pb_option": ["enum_as_name", "int64_as_hexstring"]})),
        "pb_option[1]",
        "`int64_as_hexstring` is not supported",
    );
    refused(
        base(json!({"deadline": -1})),
        "deadline",
        "must be 0 or more milliseconds",
    );

    // A proto change that drops a method a route calls is refused, naming the route's field;
    // the proto stays as it was.
    let route =
        json!({"uri": "/r", "upstream_id": "shop", "plugins": {"grpc-transcode": base(json!({}))}});
    assert!(put(&pylon, "/apisix/admin/routes/r", route).status < 300);
    let without = SHOP_PROTO.replace("rpc GetItem (GetItemRequest)", "rpc Fetch (GetItemRequest)");
    let res = put(
        &pylon,
        "/apisix/admin/protos/shop",
        json!({"content": without}),
    );
    assert_eq!(res.status, 400, "{}", res.text());
    let message = res.json()["error_msg"].as_str().unwrap().to_owned();
    let expected = "routes/r.plugins.grpc-transcode.method: method `GetItem` is not defined in service `demo.Shop`";
    assert!(message.contains(expected), "{message}\nwanted: {expected}");
    let stored = admin(
        pylon.admin.unwrap(),
        ADMIN_KEY,
        "GET",
        "/apisix/admin/protos/shop",
        None,
    );
    assert_eq!(stored.json()["value"]["content"], SHOP_PROTO);
}

#[test]
fn a_proto_in_use_is_not_deleted_until_its_last_user_is() {
    let pylon = start_pylon();
    let call = |method: &str, path: &str| {
        admin(
            pylon.admin.expect("an Admin API"),
            ADMIN_KEY,
            method,
            path,
            None,
        )
    };
    let res = put(
        &pylon,
        "/apisix/admin/protos/shop",
        json!({"content": SHOP_PROTO}),
    );
    assert!(res.status < 300, "{}", res.text());
    let upstream = json!({"scheme": "grpc", "nodes": {"127.0.0.1:1": 1}});
    assert!(put(&pylon, "/apisix/admin/upstreams/shop", upstream).status < 300);
    route(
        &pylon,
        "r",
        "/item",
        json!({"proto_id": "shop", "service": "demo.Shop", "method": "GetItem"}),
    );

    let refused = call("DELETE", "/apisix/admin/protos/shop");
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(
        refused.json()["error_msg"],
        "can not delete this proto, route [r] is still using it now"
    );
    assert_eq!(call("GET", "/apisix/admin/protos/shop").status, 200);

    assert_eq!(call("DELETE", "/apisix/admin/routes/r").status, 200);
    assert_eq!(call("DELETE", "/apisix/admin/protos/shop").status, 200);
    assert_eq!(call("GET", "/apisix/admin/protos/shop").status, 404);
}
