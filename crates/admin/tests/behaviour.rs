//! What the Admin API guarantees beyond APISIX's examples: who may use it, the limits on what
//! it reads, that nothing invalid is stored, concurrent writers, sealed private keys, and the
//! declarative dump and apply.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use pylon_model::{Key, Kind};
use pylon_store::Keyring;
use serde_json::{json, Value};
use support::{certificate, settings, TestApi, VIEWER_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPSTREAM: &str = r#"{"nodes": {"127.0.0.1:80": 1}}"#;

#[tokio::test]
async fn a_key_is_required_and_a_viewer_only_reads() {
    let api = TestApi::start().await;
    let missing = api.call_as(None, "GET", "/apisix/admin/routes", None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.body,
        json!({"error_msg": "failed to check token", "description": "missing apikey"})
    );
    let wrong = api
        .call_as(Some("guess"), "GET", "/apisix/admin/routes", None)
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body["description"], "wrong apikey");

    let read = api
        .call_as(Some(VIEWER_KEY), "GET", "/apisix/admin/routes", None)
        .await;
    assert_eq!(read.status, 200);
    let write = api
        .call_as(
            Some(VIEWER_KEY),
            "PUT",
            "/apisix/admin/upstreams/1",
            Some(UPSTREAM),
        )
        .await;
    assert_eq!(write.status, 401);
    assert_eq!(write.body["description"], "invalid method for role viewer");
    assert_eq!(api.stored(&Key::new(Kind::Upstreams, "1")), None);

    let by_query = api
        .call_as(
            None,
            "PUT",
            &format!("/apisix/admin/upstreams/1?api_key={}", support::ADMIN_KEY),
            Some(UPSTREAM),
        )
        .await;
    assert_eq!(by_query.status, 201);
    let request = Request::get("/apisix/admin/upstreams/1")
        .header("cookie", format!("x_api_key={VIEWER_KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(support::send(api.addr, request).await.status, 200);

    let head = api.call("HEAD", "/apisix/admin", None).await;
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn a_client_outside_allow_admin_is_refused() {
    let api = TestApi::with_settings(pylon_admin::AdminSettings {
        allow_admin: vec!["10.0.0.0/8".parse().unwrap()],
        ..settings()
    })
    .await;
    let refused = api.call("GET", "/apisix/admin/routes", None).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body["error_msg"]
        .as_str()
        .unwrap()
        .contains("allow_admin"));
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_unread() {
    let api = TestApi::with_settings(pylon_admin::AdminSettings {
        max_body_size: 64,
        ..settings()
    })
    .await;
    let large = json!({"nodes": {"127.0.0.1:80": 1}, "desc": "x".repeat(100)}).to_string();
    let refused = api
        .call("PUT", "/apisix/admin/upstreams/1", Some(&large))
        .await;
    assert_eq!(refused.status, 413);
    assert_eq!(api.stored(&Key::new(Kind::Upstreams, "1")), None);

    // A declared length over the limit is answered before any of the body is sent.
    let mut stream = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "PUT /apisix/admin/upstreams/1 HTTP/1.1\r\nhost: a\r\nx-api-key: {}\r\ncontent-length: 1000000\r\n\r\n",
        support::ADMIN_KEY
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test]
async fn invalid_json_and_invalid_resources_are_refused_naming_the_field() {
    let api = TestApi::start().await;
    let not_json = api
        .call("PUT", "/apisix/admin/routes/1", Some("{\"uri\": "))
        .await;
    assert_eq!(not_json.status, 400);
    assert!(not_json.body["error_msg"]
        .as_str()
        .unwrap()
        .starts_with("invalid request body"));

    let invalid = api
        .call(
            "PUT",
            "/apisix/admin/routes/1",
            Some(r#"{"uri": "/a", "upstream": {"nodes": [{"host": "127.0.0.1", "port": 70000, "weight": 1}]}}"#),
        )
        .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(
        invalid.body["error_msg"],
        "invalid configuration: upstream.nodes[0].port: must be 1..65535"
    );

    let dangling = api
        .call(
            "PUT",
            "/apisix/admin/routes/1",
            Some(r#"{"uri": "/a", "upstream_id": "nope"}"#),
        )
        .await;
    assert_eq!(dangling.status, 400);
    assert_eq!(
        dangling.body["error_msg"],
        "failed to fetch upstream info by upstream id [nope], response code: 404"
    );
    // APISIX's words for each reference, plugin configs included.
    let no_plugin_config = api
        .call(
            "PUT",
            "/apisix/admin/routes/1",
            Some(r#"{"uri": "/a", "plugin_config_id": "not_found", "upstream": {"nodes": {"127.0.0.1:80": 1}}}"#),
        )
        .await;
    assert_eq!(no_plugin_config.status, 400);
    assert_eq!(
        no_plugin_config.body["error_msg"],
        "failed to fetch plugin config info by plugin config id [not_found], response code: 404"
    );
    let no_upstream = api
        .call("PUT", "/apisix/admin/routes/1", Some(r#"{"uri": "/a"}"#))
        .await;
    assert_eq!(no_upstream.status, 400);
    assert!(no_upstream.body["error_msg"]
        .as_str()
        .unwrap()
        .contains("has no upstream"));
    // POST makes the id: one in the path is refused, as APISIX does.
    let posted = api
        .call(
            "POST",
            "/apisix/admin/routes/1",
            Some(r#"{"uri": "/a", "upstream": {"nodes": {"127.0.0.1:80": 1}}}"#),
        )
        .await;
    assert_eq!(posted.status, 400);
    assert_eq!(posted.body["error_msg"], "wrong route id, do not need it");
    assert_eq!(api.stored(&Key::new(Kind::Routes, "1")), None);

    // A write that would break another resource is refused too, naming that resource.
    api.call(
        "PUT",
        "/apisix/admin/services/s",
        Some(r#"{"upstream": {"nodes": {"127.0.0.1:80": 1}}}"#),
    )
    .await;
    let route = api
        .call(
            "PUT",
            "/apisix/admin/routes/r",
            Some(r#"{"uri": "/a", "service_id": "s"}"#),
        )
        .await;
    assert_eq!(route.status, 201, "{route:?}");
    let breaking = api
        .call(
            "PATCH",
            "/apisix/admin/services/s",
            Some(r#"{"upstream": null}"#),
        )
        .await;
    assert_eq!(breaking.status, 400);
    assert!(breaking.body["error_msg"]
        .as_str()
        .unwrap()
        .contains("routes/r: has no upstream"));
}

/// APISIX's proto examples paste a `.proto` file with its line breaks into the JSON string:
/// its decoder takes them, and so does Pylon, storing the text itself.
#[tokio::test]
async fn raw_line_breaks_inside_json_strings_are_stored_as_text() {
    let api = TestApi::start().await;
    let body = "{\"content\": \"syntax = \\\"proto3\\\";\n\tpackage helloworld;\"}";
    let created = api.call("PUT", "/apisix/admin/protos/1", Some(body)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let stored = api.stored(&Key::new(Kind::Protos, "1")).unwrap();
    assert_eq!(
        stored["content"],
        "syntax = \"proto3\";\n\tpackage helloworld;"
    );
}

#[tokio::test]
async fn concurrent_patches_to_different_fields_both_survive() {
    let api = TestApi::start().await;
    let route = r#"{"uri": "/a", "upstream": {"nodes": {"127.0.0.1:80": 1}}}"#;
    assert_eq!(
        api.call("PUT", "/apisix/admin/routes/1", Some(route))
            .await
            .status,
        201
    );
    for round in 0..5 {
        let name = format!(r#"{{"name": "n{round}"}}"#);
        let desc = format!(r#"{{"desc": "d{round}"}}"#);
        let (a, b) = tokio::join!(
            api.call("PATCH", "/apisix/admin/routes/1", Some(&name)),
            api.call("PATCH", "/apisix/admin/routes/1", Some(&desc)),
        );
        assert_eq!(
            (a.status.as_u16(), b.status.as_u16()),
            (200, 200),
            "{a:?} {b:?}"
        );
        let stored = api.stored(&Key::new(Kind::Routes, "1")).unwrap();
        assert_eq!(stored["name"], format!("n{round}"));
        assert_eq!(stored["desc"], format!("d{round}"));
    }
}

#[tokio::test]
async fn credentials_are_sealed_in_the_store_and_never_shown() {
    let api = TestApi::start().await;
    let body = r#"{"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}, "basic-auth": {"username": "jack", "password": "s3cret"}}}"#;
    assert_eq!(
        api.call("PUT", "/apisix/admin/consumers", Some(body))
            .await
            .status,
        201
    );
    let stored = api.stored(&Key::new(Kind::Consumers, "jack")).unwrap();
    for (pointer, plain) in [
        ("/plugins/key-auth/key", "auth-one"),
        ("/plugins/basic-auth/password", "s3cret"),
    ] {
        let sealed = stored.pointer(pointer).and_then(Value::as_str).unwrap();
        assert!(Keyring::is_sealed(sealed), "{pointer}: {sealed}");
        let mut opened = stored.clone();
        api.keyring
            .open_at(&mut opened, &[pointer.to_owned()])
            .unwrap();
        assert_eq!(opened.pointer(pointer).and_then(Value::as_str), Some(plain));
    }
    let shown = api.call("GET", "/apisix/admin/consumers/jack", None).await;
    assert_eq!(shown.status, 200);
    let plugins = &shown.body["value"]["plugins"];
    assert_eq!(plugins["key-auth"], json!({}), "{plugins}");
    assert_eq!(
        plugins["basic-auth"],
        json!({"username": "jack"}),
        "{plugins}"
    );
    // Sealed keys are still compared in the clear: a second consumer with the same key clashes.
    let rose = r#"{"username": "rose", "plugins": {"key-auth": {"key": "auth-one"}}}"#;
    assert_eq!(
        api.call("PUT", "/apisix/admin/consumers", Some(rose))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn an_ssl_private_key_is_sealed_in_the_store_and_patch_keeps_it() {
    let api = TestApi::start().await;
    let (cert, key) = certificate("a.test");
    let body = json!({"cert": cert, "key": key, "snis": ["a.test"]}).to_string();
    assert_eq!(
        api.call("PUT", "/apisix/admin/ssls/1", Some(&body))
            .await
            .status,
        201
    );
    let stored = api.stored(&Key::new(Kind::Ssls, "1")).unwrap();
    let sealed = stored["key"].as_str().unwrap();
    assert!(Keyring::is_sealed(sealed), "{sealed}");
    assert!(!sealed.contains("PRIVATE KEY"));
    let mut opened = stored.clone();
    api.keyring.open_ssl(&mut opened).unwrap();
    assert_eq!(opened["key"], key);

    let patched = api
        .call(
            "PATCH",
            "/apisix/admin/ssls/1",
            Some(r#"{"snis": ["a.test", "*.a.test"]}"#),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert!(patched.body["value"].get("key").is_none());
    let mut stored = api.stored(&Key::new(Kind::Ssls, "1")).unwrap();
    api.keyring.open_ssl(&mut stored).unwrap();
    assert_eq!(stored["key"], key);

    let (_, other_key) = certificate("a.test");
    let mismatched = api
        .call(
            "PATCH",
            "/apisix/admin/ssls/1",
            Some(&json!({"key": other_key}).to_string()),
        )
        .await;
    assert_eq!(mismatched.status, 400);
    assert_eq!(
        mismatched.body["error_msg"],
        "invalid configuration: key: does not match the certificate"
    );
}

/// APISIX's `t/admin/ssl.t`: `cert` and `key` may be references, stored as written (a
/// reference is not sealed: it is no key); this build resolves `$env://` only.
#[tokio::test]
async fn an_ssl_may_refer_to_its_key_material_by_environment_variable() {
    let api = TestApi::start().await;
    let (cert, _) = certificate("a.test");
    let body = json!({
        "sni": "test.com", "cert": "$ENV://APISIX_TEST_SSL_CERT", "key": "$env://APISIX_TEST_SSL_KEY",
        "certs": [cert], "keys": ["$ENV://APISIX_TEST_SSL_KEYS"],
    });
    let created = api
        .call("PUT", "/apisix/admin/ssls/1", Some(&body.to_string()))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let stored = api.stored(&Key::new(Kind::Ssls, "1")).unwrap();
    assert_eq!(stored["key"], "$env://APISIX_TEST_SSL_KEY");
    assert_eq!(stored["keys"][0], "$ENV://APISIX_TEST_SSL_KEYS");

    let secret = json!({
        "sni": "test.com", "cert": "$secret://vault/test/ssl/test.com.crt",
        "key": "$secret://vault/test/ssl/test.com.key",
    });
    let refused = api
        .call("PUT", "/apisix/admin/ssls/2", Some(&secret.to_string()))
        .await;
    assert_eq!(refused.status, 400);
    let message = refused.body["error_msg"].as_str().unwrap();
    assert!(
        message.starts_with(
            "invalid configuration: cert: `$secret://` references are not supported by this build"
        ),
        "{message}"
    );
    assert_eq!(api.stored(&Key::new(Kind::Ssls, "2")), None);
}

async fn dump(api: &TestApi) -> Value {
    let answer = api.call("GET", "/pylon/admin/config", None).await;
    assert_eq!(answer.status, 200);
    answer.body
}

async fn seed(api: &TestApi) {
    let (cert, key) = certificate("a.test");
    let ssl = json!({"cert": cert, "key": key, "snis": ["a.test"]}).to_string();
    for (path, body) in [
        ("/apisix/admin/upstreams/u1", UPSTREAM),
        (
            "/apisix/admin/routes/r1",
            r#"{"uri": "/a", "upstream_id": "u1"}"#,
        ),
        (
            "/apisix/admin/routes/r2",
            r#"{"uri": "/b", "upstream_id": "u1"}"#,
        ),
        ("/apisix/admin/consumers/jack", r#"{"username": "jack"}"#),
        (
            "/apisix/admin/consumers/jack/credentials/c1",
            r#"{"desc": "one"}"#,
        ),
        ("/apisix/admin/ssls/s1", ssl.as_str()),
    ] {
        let answer = api.call("PUT", path, Some(body)).await;
        assert_eq!(answer.status, 201, "{path}: {answer:?}");
    }
}

#[tokio::test]
async fn a_dump_applied_back_changes_nothing() {
    let api = TestApi::start().await;
    seed(&api).await;
    let before = dump(&api).await;
    let config = &before["config"];
    assert_eq!(config["routes"][0]["id"], "r1");
    assert_eq!(config["consumers"][0]["username"], "jack");
    assert_eq!(config["credentials"][0]["id"], "jack/credentials/c1");
    let ssl_key = config["ssls"][0]["key"].as_str().unwrap();
    assert!(Keyring::is_sealed(ssl_key), "dumped sealed: {ssl_key}");

    let viewer = api
        .call_as(
            Some(VIEWER_KEY),
            "POST",
            "/pylon/admin/config",
            Some(&before.to_string()),
        )
        .await;
    assert_eq!(viewer.status, 401);

    for query in ["?prune=true", ""] {
        let applied = api
            .call(
                "POST",
                &format!("/pylon/admin/config{query}"),
                Some(&before.to_string()),
            )
            .await;
        assert_eq!(applied.status, 200, "{applied:?}");
        assert_eq!(applied.body["changes"], json!([]));
        assert_eq!(applied.body["applied"], true);
        assert_eq!(applied.body["revision"], before["revision"]);
    }
    assert_eq!(dump(&api).await, before);
}

#[tokio::test]
async fn apply_updates_creates_and_prunes_only_when_asked() {
    let api = TestApi::start().await;
    seed(&api).await;
    let before = dump(&api).await;
    let untouched = api.store.0.get(&Key::new(Kind::Routes, "r1")).unwrap();

    // r2 changes, r1 is left out, a new upstream comes, written as YAML.
    let document = r#"
upstreams:
  - id: u1
    nodes: {"127.0.0.1:80": 1}
  - id: u2
    nodes: {"127.0.0.1:81": 1}
routes:
  - id: r2
    uri: /changed
    upstream_id: u2
"#;
    let dry = api
        .call(
            "POST",
            "/pylon/admin/config?dry_run=true&prune=true",
            Some(document),
        )
        .await;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["applied"], false);
    let expected_with_prune = json!([
        {"op": "delete", "key": "routes/r1"},
        {"op": "update", "key": "routes/r2"},
        {"op": "create", "key": "upstreams/u2"},
        {"op": "delete", "key": "consumers/jack"},
        {"op": "delete", "key": "credentials/jack/credentials/c1"},
        {"op": "delete", "key": "ssls/s1"},
    ]);
    assert_eq!(sorted(&dry.body["changes"]), sorted(&expected_with_prune));
    assert_eq!(dump(&api).await, before, "a dry run writes nothing");

    let kept = api
        .call("POST", "/pylon/admin/config", Some(document))
        .await;
    assert_eq!(kept.status, 200, "{kept:?}");
    assert_eq!(
        sorted(&kept.body["changes"]),
        sorted(&json!([
            {"op": "update", "key": "routes/r2"},
            {"op": "create", "key": "upstreams/u2"},
        ]))
    );
    let r2 = api.call("GET", "/apisix/admin/routes/r2", None).await;
    assert_eq!(r2.body["value"]["uri"], "/changed");
    assert_eq!(r2.body["modifiedIndex"], kept.body["revision"]);
    let r1 = api.store.0.get(&Key::new(Kind::Routes, "r1")).unwrap();
    assert_eq!(r1, untouched, "unchanged resources keep their revisions");

    let pruned = api
        .call("POST", "/pylon/admin/config?prune=true", Some(document))
        .await;
    assert_eq!(pruned.status, 200, "{pruned:?}");
    assert_eq!(pruned.body["changes"].as_array().unwrap().len(), 4);
    let after = dump(&api).await;
    assert_eq!(after["config"]["routes"].as_array().unwrap().len(), 1);
    assert!(after["config"].get("ssls").is_none());
}

#[tokio::test]
async fn an_invalid_apply_leaves_everything_as_it_was() {
    let api = TestApi::start().await;
    seed(&api).await;
    let before = dump(&api).await;
    let document = r#"
routes:
  - id: r1
    uri: /a
    upstream_id: gone
  - id: r3
    uri: no-slash
    upstream_id: u1
consumers:
  - username: rose
    group_id: nobody
"#;
    let refused = api
        .call("POST", "/pylon/admin/config?prune=true", Some(document))
        .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    let paths: Vec<&str> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"routes[0].upstream_id"), "{paths:?}");
    assert!(paths.contains(&"routes[1].uri"), "{paths:?}");
    assert_eq!(dump(&api).await, before);

    // Without prune, the stored resources are checked with the document: a reference to one
    // that stays is fine, and an error in a kept one names its key.
    let referencing = "routes:\n  - {id: r9, uri: /n, upstream_id: u1}\n";
    let applied = api
        .call("POST", "/pylon/admin/config", Some(referencing))
        .await;
    assert_eq!(applied.status, 200, "{applied:?}");
    let consumers = "consumers:\n  - {username: rose, group_id: nobody}\n";
    let refused = api
        .call("POST", "/pylon/admin/config", Some(consumers))
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.body["errors"][0],
        json!({"path": "consumers[0].group_id", "message": "consumer group `nobody` does not exist"})
    );

    // A resource written into the store by hand, dangling: kept without prune, it is named by
    // its key.
    let ghost = json!({"id": "ghost", "uri": "/g", "upstream_id": "none"});
    api.store
        .0
        .apply([(Key::new(Kind::Routes, "ghost"), Some(ghost))]);
    let mut seen = false;
    for _ in 0..100 {
        if api
            .call("GET", "/apisix/admin/routes/ghost", None)
            .await
            .status
            == 200
        {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(seen, "the replica never showed the hand-written route");
    let refused = api
        .call("POST", "/pylon/admin/config", Some(referencing))
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.body["errors"][0]["path"],
        "routes/ghost.upstream_id"
    );
}

#[tokio::test]
async fn an_apply_naming_a_missing_proto_or_stream_route_inside_plugins_is_refused() {
    let api = TestApi::start().await;
    seed(&api).await;
    let before = dump(&api).await;
    let document = r#"
routes:
  - id: ws
    uri: /ws
    plugins:
      websocket-frames: {stream_route_id: im}
global_rules:
  - id: g
    plugins:
      grpc-transcode: {proto_id: p9, service: s.S, method: M}
"#;
    let refused = api
        .call("POST", "/pylon/admin/config", Some(document))
        .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(
        refused.body["errors"],
        json!([
            {"path": "routes[0].plugins.websocket-frames.stream_route_id",
             "message": "stream route `im` does not exist"},
            {"path": "global_rules[0].plugins.grpc-transcode.proto_id",
             "message": "proto `p9` does not exist"},
        ])
    );
    assert_eq!(dump(&api).await, before);
}

fn sorted(changes: &Value) -> Vec<String> {
    let mut list: Vec<String> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c["op"], c["key"]))
        .collect();
    list.sort();
    list
}

#[tokio::test]
async fn the_schema_of_a_kind_is_served() {
    let api = TestApi::start().await;
    let schema = api.call("GET", "/apisix/admin/schema/route", None).await;
    assert_eq!(schema.status, 200);
    assert!(schema.body["properties"].get("uri").is_some(), "{schema:?}");
    let unknown = api.call("GET", "/apisix/admin/schema/nope", None).await;
    assert_eq!(unknown.body, json!({"error_msg": "not found schema: nope"}));
}

#[tokio::test]
async fn plugin_metadata_is_checked_by_its_plugin() {
    let api = TestApi::start().await;
    let key = Key::new(Kind::PluginMetadata, "cors");
    let refusals = [
        (
            "/apisix/admin/plugin_metadata/nope",
            r#"{"allow_origins": {}}"#,
            "invalid configuration: id: unknown plugin `nope`",
        ),
        (
            "/apisix/admin/plugin_metadata/key-auth",
            r#"{"header": "k"}"#,
            "invalid configuration: id: plugin `key-auth` has no metadata",
        ),
        (
            "/apisix/admin/plugin_metadata/cors",
            r#"{"allow_origins": {"partners": "a.example"}}"#,
            "invalid configuration: allow_origins.partners: must be `*`, `**`, `null` or origins like `https://a.example` separated by commas",
        ),
        (
            "/apisix/admin/plugin_metadata/cors",
            r#"{"allow_origins": ["https://a.example"]}"#,
            "invalid configuration: allow_origins: invalid type: sequence, expected a map",
        ),
    ];
    for (path, body, message) in refusals {
        let refused = api.call("PUT", path, Some(body)).await;
        assert_eq!(refused.status, 400, "{path} {body}");
        assert_eq!(refused.body["error_msg"], message, "{path} {body}");
    }
    assert_eq!(api.stored(&key), None);
    assert_eq!(api.stored(&Key::new(Kind::PluginMetadata, "nope")), None);

    let good = r#"{"allow_origins": {"partners": "https://a.example,https://b.example"}}"#;
    let written = api
        .call("PUT", "/apisix/admin/plugin_metadata/cors", Some(good))
        .await;
    assert_eq!(written.status, 201, "{written:?}");
    let stored = api.stored(&key).expect("stored");
    // A refused rewrite leaves the stored metadata as it was.
    let refused = api
        .call(
            "PUT",
            "/apisix/admin/plugin_metadata/cors",
            Some(r#"{"allow_origins": {"partners": 1}}"#),
        )
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(api.stored(&key), Some(stored));

    let schema = api
        .call(
            "GET",
            "/apisix/admin/plugins/cors?schema_type=metadata",
            None,
        )
        .await;
    assert_eq!(schema.status, 200);
    assert_eq!(schema.body["properties"]["allow_origins"]["type"], "object");
}

/// Clients that each write back to back, at once, through one node on the embedded store:
/// the node is the store's only writer, so not one of their writes may be refused as a
/// conflict, however busy the others keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_writers_on_one_node_are_never_refused_as_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(pylon_store::EmbeddedStore::open(dir.path()).unwrap());
    let replica = Arc::new(
        pylon_store::Replica::start(store.clone(), None)
            .await
            .unwrap(),
    );
    let keyring = Arc::new(Keyring::new(&["test secret".to_owned()]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = pylon_admin::AdminApi::new(listener, settings(), store, replica, None, keyring);
    let addr = api.local_addr().unwrap();
    let server = tokio::spawn(api.serve());
    let writers = (0..12).map(|writer| {
        tokio::spawn(async move {
            for i in 0..150 {
                let path = format!("/apisix/admin/upstreams/w{writer}-{}", i % 5);
                let request = Request::builder()
                    .method("PUT")
                    .uri(&path)
                    .header("host", addr.to_string())
                    .header("x-api-key", support::ADMIN_KEY)
                    .body(Full::new(Bytes::from(format!(
                        r#"{{"nodes": {{"127.0.0.1:80": 1}}, "desc": "{i}"}}"#
                    ))))
                    .unwrap();
                let answer = support::send(addr, request).await;
                assert!(answer.status.is_success(), "{path} ({i}): {answer:?}");
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    server.abort();
}
