//! The request examples of APISIX's Admin API documentation, replayed against Pylon: the
//! documented status codes and answer shapes. Examples that use plugins are replayed without
//! them (this build has none); one test shows a write with plugins refused.

mod support;

use serde_json::json;
use support::{certificate, TestApi};

const ROUTE: &str = r#"{
    "uri": "/index.html",
    "hosts": ["foo.com", "*.bar.com"],
    "remote_addrs": ["127.0.0.0/8"],
    "methods": ["PUT", "GET"],
    "enable_websocket": true,
    "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}
}"#;

#[tokio::test]
async fn a_route_is_created_then_replaced_and_read_back() {
    let api = TestApi::start().await;
    let created = api.call("PUT", "/apisix/admin/routes/1", Some(ROUTE)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.headers["x-api-version"], "v3");
    assert_eq!(created.headers["content-type"], "application/json");
    assert_eq!(created.body["key"], "/pylon/routes/1");
    assert_eq!(created.body["value"]["id"], "1");
    assert_eq!(created.body["value"]["uri"], "/index.html");
    let create_time = created.body["value"]["create_time"].clone();
    assert!(create_time.is_i64());
    assert!(created.body["createdIndex"].is_u64());

    let changed = ROUTE.replace("/index.html", "/other.html");
    let replaced = api
        .call("PUT", "/apisix/admin/routes/1", Some(&changed))
        .await;
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.body["value"]["create_time"], create_time);
    assert_eq!(replaced.body["createdIndex"], created.body["createdIndex"]);
    assert!(replaced.body["modifiedIndex"].as_u64() > created.body["modifiedIndex"].as_u64());

    let read = api.call("GET", "/apisix/admin/routes/1", None).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["key"], "/pylon/routes/1");
    assert_eq!(read.body["value"]["hosts"], json!(["foo.com", "*.bar.com"]));
    assert_eq!(read.body["value"]["uri"], "/other.html");
    assert_eq!(read.body["modifiedIndex"], replaced.body["modifiedIndex"]);
    assert_eq!(read.body["createdIndex"], created.body["createdIndex"]);

    let missing = api.call("GET", "/apisix/admin/routes/2", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, json!({"message": "Key not found"}));
}

#[tokio::test]
async fn a_route_with_a_ttl_is_refused_as_pylon_keeps_nothing_that_expires() {
    let api = TestApi::start().await;
    let answer = api
        .call("PUT", "/apisix/admin/routes/2?ttl=60", Some(ROUTE))
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.body["error_msg"].as_str().unwrap().contains("ttl"));
    assert_eq!(
        api.call("GET", "/apisix/admin/routes/2", None).await.status,
        404
    );
}

#[tokio::test]
async fn the_route_patch_examples_merge_replace_and_disable() {
    let api = TestApi::start().await;
    assert_eq!(
        api.call("PUT", "/apisix/admin/routes/1", Some(ROUTE))
            .await
            .status,
        201
    );
    let patch = |body: &'static str| api.call("PATCH", "/apisix/admin/routes/1", Some(body));
    let nodes = |answer: &support::Answer| answer.body["value"]["upstream"]["nodes"].clone();

    let added = patch(r#"{"upstream": {"nodes": {"127.0.0.1:1981": 1}}}"#).await;
    assert_eq!(added.status, 200, "{added:?}");
    assert_eq!(
        nodes(&added),
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 1})
    );
    assert_eq!(added.body["value"]["upstream"]["type"], "roundrobin");

    let reweighted = patch(r#"{"upstream": {"nodes": {"127.0.0.1:1981": 10}}}"#).await;
    assert_eq!(
        nodes(&reweighted),
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 10})
    );

    let removed = patch(r#"{"upstream": {"nodes": {"127.0.0.1:1980": null}}}"#).await;
    assert_eq!(nodes(&removed), json!({"127.0.0.1:1981": 10}));

    let methods = patch(r#"{"methods": ["GET", "POST"]}"#).await;
    assert_eq!(methods.body["value"]["methods"], json!(["GET", "POST"]));

    let sub_nodes = api
        .call(
            "PATCH",
            "/apisix/admin/routes/1/upstream/nodes",
            Some(r#"{"127.0.0.1:1982": 1}"#),
        )
        .await;
    assert_eq!(sub_nodes.status, 200);
    assert_eq!(nodes(&sub_nodes), json!({"127.0.0.1:1982": 1}));

    // The documentation's example has a stray space in " PATCH", which a method cannot have.
    let sub_methods = api
        .call(
            "PATCH",
            "/apisix/admin/routes/1/methods",
            Some(r#"["POST", "DELETE", "PATCH"]"#),
        )
        .await;
    assert_eq!(sub_methods.status, 200);
    assert_eq!(
        sub_methods.body["value"]["methods"],
        json!(["POST", "DELETE", "PATCH"])
    );

    assert_eq!(patch(r#"{"status": 0}"#).await.body["value"]["status"], 0);
    assert_eq!(patch(r#"{"status": 1}"#).await.body["value"]["status"], 1);

    let stored = api.call("GET", "/apisix/admin/routes/1", None).await;
    assert_eq!(
        stored.body["value"]["upstream"]["nodes"],
        json!({"127.0.0.1:1982": 1})
    );
    assert_eq!(stored.body["value"]["uri"], "/index.html");

    let missing = api
        .call("PATCH", "/apisix/admin/routes/9", Some(r#"{"status": 0}"#))
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_service_examples_create_and_patch_its_upstream() {
    let api = TestApi::start().await;
    let created = api
        .call(
            "PUT",
            "/apisix/admin/services/201",
            Some(r#"{"enable_websocket": true, "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}"#),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["key"], "/pylon/services/201");
    let path = "/apisix/admin/services/201";
    api.call(
        "PATCH",
        path,
        Some(r#"{"upstream": {"nodes": {"127.0.0.1:1981": 1}}}"#),
    )
    .await;
    let reweighted = api
        .call(
            "PATCH",
            path,
            Some(r#"{"upstream": {"nodes": {"127.0.0.1:1981": 10}}}"#),
        )
        .await;
    assert_eq!(
        reweighted.body["value"]["upstream"]["nodes"],
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 10})
    );
    let removed = api
        .call(
            "PATCH",
            path,
            Some(r#"{"upstream": {"nodes": {"127.0.0.1:1980": null}}}"#),
        )
        .await;
    assert_eq!(
        removed.body["value"]["upstream"]["nodes"],
        json!({"127.0.0.1:1981": 10})
    );
    let replaced = api
        .call(
            "PATCH",
            "/apisix/admin/services/201/upstream/nodes",
            Some(r#"{"127.0.0.1:1982": 1}"#),
        )
        .await;
    assert_eq!(replaced.status, 200);
    assert_eq!(
        replaced.body["value"]["upstream"]["nodes"],
        json!({"127.0.0.1:1982": 1})
    );
}

#[tokio::test]
async fn the_upstream_examples_create_patch_and_replace_nodes() {
    let api = TestApi::start().await;
    let path = "/apisix/admin/upstreams/100";
    let created = api
        .call(
            "PUT",
            path,
            Some(r#"{"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}"#),
        )
        .await;
    assert_eq!(created.status, 201);
    api.call("PATCH", path, Some(r#"{"nodes": {"127.0.0.1:1981": 1}}"#))
        .await;
    let reweighted = api
        .call("PATCH", path, Some(r#"{"nodes": {"127.0.0.1:1981": 10}}"#))
        .await;
    assert_eq!(
        reweighted.body["value"]["nodes"],
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 10})
    );
    let removed = api
        .call(
            "PATCH",
            path,
            Some(r#"{"nodes": {"127.0.0.1:1980": null}}"#),
        )
        .await;
    assert_eq!(
        removed.body["value"]["nodes"],
        json!({"127.0.0.1:1981": 10})
    );
    let replaced = api
        .call(
            "PATCH",
            "/apisix/admin/upstreams/100/nodes",
            Some(r#"{"127.0.0.1:1982": 1}"#),
        )
        .await;
    assert_eq!(replaced.status, 200);
    assert_eq!(
        replaced.body["value"]["nodes"],
        json!({"127.0.0.1:1982": 1})
    );

    // The https and priority examples are accepted as they are.
    let https = api
        .call(
            "PUT",
            "/apisix/admin/routes/1",
            Some(r#"{"uri": "/get", "upstream": {"type": "roundrobin", "scheme": "https", "nodes": {"httpbin.org:443": 1}}}"#),
        )
        .await;
    assert_eq!(https.status, 201, "{https:?}");
    let priorities = api
        .call(
            "PUT",
            "/apisix/admin/routes/2",
            Some(
                r#"{"uri": "/hello", "upstream": {"type": "roundrobin", "nodes": [
                    {"host": "127.0.0.1", "port": 1980, "weight": 2000},
                    {"host": "127.0.0.1", "port": 1981, "weight": 1, "priority": -1}],
                    "checks": {"active": {"http_path": "/status",
                        "healthy": {"interval": 1, "successes": 1},
                        "unhealthy": {"interval": 1, "http_failures": 1}}}}}"#,
            ),
        )
        .await;
    assert_eq!(priorities.status, 201, "{priorities:?}");
}

#[tokio::test]
async fn delete_is_refused_while_referenced_unless_forced() {
    let api = TestApi::start().await;
    api.call(
        "PUT",
        "/apisix/admin/upstreams/1",
        Some(r#"{"nodes": {"127.0.0.1:8080": 1}, "type": "roundrobin"}"#),
    )
    .await;
    let route = api
        .call(
            "PUT",
            "/apisix/admin/routes/1",
            Some(r#"{"uri": "/*", "upstream_id": 1}"#),
        )
        .await;
    assert_eq!(route.status, 201, "{route:?}");
    assert_eq!(route.body["value"]["upstream_id"], 1);

    let refused = api.call("DELETE", "/apisix/admin/upstreams/1", None).await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.body,
        json!({"error_msg": "can not delete this upstream, route [1] is still using it now"})
    );
    let not_forced = api
        .call("DELETE", "/apisix/admin/upstreams/1?force=anyvalue", None)
        .await;
    assert_eq!(not_forced.status, 400);
    let forced = api
        .call("DELETE", "/apisix/admin/upstreams/1?force=true", None)
        .await;
    assert_eq!(forced.status, 200);
    assert_eq!(
        forced.body,
        json!({"deleted": "1", "key": "/pylon/upstreams/1"})
    );
    assert_eq!(
        api.call("GET", "/apisix/admin/upstreams/1", None)
            .await
            .status,
        404
    );
    assert_eq!(
        api.call("DELETE", "/apisix/admin/upstreams/1", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn services_plugin_configs_and_consumer_groups_in_use_are_not_deleted() {
    let api = TestApi::start().await;
    let upstream = r#"{"nodes": {"127.0.0.1:80": 1}}"#;
    api.call("PUT", "/apisix/admin/upstreams/u", Some(upstream))
        .await;
    api.call(
        "PUT",
        "/apisix/admin/services/s",
        Some(r#"{"upstream_id": "u"}"#),
    )
    .await;
    api.call(
        "PUT",
        "/apisix/admin/plugin_configs/p",
        Some(r#"{"plugins": {}}"#),
    )
    .await;
    api.call(
        "PUT",
        "/apisix/admin/consumer_groups/g",
        Some(r#"{"plugins": {}}"#),
    )
    .await;
    let route = r#"{"uri": "/a", "service_id": "s", "plugin_config_id": "p"}"#;
    assert_eq!(
        api.call("PUT", "/apisix/admin/routes/r", Some(route))
            .await
            .status,
        201
    );
    let consumer = r#"{"username": "jack", "group_id": "g"}"#;
    assert_eq!(
        api.call("PUT", "/apisix/admin/consumers", Some(consumer))
            .await
            .status,
        201
    );

    for (path, message) in [
        (
            "/apisix/admin/services/s",
            "can not delete this service directly, route [r] is still using it now",
        ),
        (
            "/apisix/admin/plugin_configs/p",
            "can not delete this plugin config, route [r] is still using it now",
        ),
        (
            "/apisix/admin/consumer_groups/g",
            "can not delete this consumer group, consumer [jack] is still using it now",
        ),
        (
            "/apisix/admin/upstreams/u",
            "can not delete this upstream, service [s] is still using it now",
        ),
    ] {
        let refused = api.call("DELETE", path, None).await;
        assert_eq!(refused.status, 400, "{path}");
        assert_eq!(refused.body["error_msg"], message);
    }
}

#[tokio::test]
async fn consumers_are_put_by_username_and_credentials_under_them() {
    let api = TestApi::start().await;
    let created = api
        .call(
            "PUT",
            "/apisix/admin/consumers",
            Some(r#"{"username": "jack"}"#),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["key"], "/pylon/consumers/jack");
    assert_eq!(created.body["value"]["username"], "jack");
    let replaced = api
        .call(
            "PUT",
            "/apisix/admin/consumers/jack",
            Some(r#"{"username": "jack", "desc": "hello world"}"#),
        )
        .await;
    assert_eq!(replaced.status, 200);
    let wrong = api
        .call(
            "PUT",
            "/apisix/admin/consumers/jack",
            Some(r#"{"username": "rose"}"#),
        )
        .await;
    assert_eq!(wrong.body, json!({"error_msg": "wrong username"}));
    let post = api
        .call(
            "POST",
            "/apisix/admin/consumers",
            Some(r#"{"username": "x"}"#),
        )
        .await;
    assert_eq!(post.status, 405);
    assert_eq!(
        post.body["error_msg"],
        "not supported `POST` method for consumer"
    );

    let credential = api
        .call(
            "PUT",
            "/apisix/admin/consumers/jack/credentials/auth-one",
            Some(r#"{"desc": "hello world"}"#),
        )
        .await;
    assert_eq!(credential.status, 201, "{credential:?}");
    assert_eq!(
        credential.body["key"],
        "/pylon/credentials/jack/credentials/auth-one"
    );
    assert!(credential.body["value"]["create_time"].is_i64());
    let listed = api
        .call("GET", "/apisix/admin/consumers/jack/credentials", None)
        .await;
    assert_eq!(listed.body["total"], 1);
    let one = api
        .call(
            "GET",
            "/apisix/admin/consumers/jack/credentials/auth-one",
            None,
        )
        .await;
    assert_eq!(one.body["value"]["desc"], "hello world");
    let orphan = api
        .call(
            "PUT",
            "/apisix/admin/consumers/rose/credentials/a",
            Some("{}"),
        )
        .await;
    assert_eq!(orphan.status, 404);
    assert_eq!(orphan.body, json!({"error_msg": "consumer not found"}));

    let consumers = api.call("GET", "/apisix/admin/consumers", None).await;
    assert_eq!(consumers.body["total"], 1, "credentials are not consumers");

    // A consumer's credentials go with it.
    let deleted = api
        .call("DELETE", "/apisix/admin/consumers/jack", None)
        .await;
    assert_eq!(deleted.status, 200);
    let gone = api
        .call(
            "GET",
            "/apisix/admin/consumers/jack/credentials/auth-one",
            None,
        )
        .await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn ssls_are_created_and_their_private_key_never_shown() {
    let api = TestApi::start().await;
    let (cert, key) = certificate("t.com");
    let body = json!({"cert": cert, "key": key, "snis": ["t.com"]}).to_string();
    let created = api.call("PUT", "/apisix/admin/ssls/1", Some(&body)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["value"]["snis"], json!(["t.com"]));
    assert!(created.body["value"].get("key").is_none());
    let read = api.call("GET", "/apisix/admin/ssls/1", None).await;
    assert_eq!(read.body["value"]["cert"], cert);
    assert!(read.body["value"].get("key").is_none());
    let listed = api.call("GET", "/apisix/admin/ssls", None).await;
    assert!(listed.body["list"][0]["value"].get("key").is_none());

    let posted = api.call("POST", "/apisix/admin/ssls", Some(&body)).await;
    assert_eq!(posted.status, 201);
    let id = posted.body["value"]["id"].as_str().unwrap();
    assert_eq!(id.len(), 20, "APISIX's id: a 20-digit revision");
    assert!(id.bytes().all(|b| b.is_ascii_digit()));
}

#[tokio::test]
async fn global_rules_plugin_configs_metadata_and_secrets_are_kept() {
    let api = TestApi::start().await;
    let rule = api
        .call(
            "PUT",
            "/apisix/admin/global_rules/1",
            Some(r#"{"plugins": {}}"#),
        )
        .await;
    assert_eq!(rule.status, 201, "{rule:?}");
    let post = api
        .call(
            "POST",
            "/apisix/admin/global_rules",
            Some(r#"{"plugins": {}}"#),
        )
        .await;
    assert_eq!(post.status, 405);
    let config = api
        .call(
            "PUT",
            "/apisix/admin/plugin_configs/1",
            Some(r#"{"plugins": {}, "desc": "blah"}"#),
        )
        .await;
    assert_eq!(config.status, 201);
    let patched = api
        .call(
            "PATCH",
            "/apisix/admin/plugin_configs/1",
            Some(r#"{"desc": "changed"}"#),
        )
        .await;
    assert_eq!(patched.body["value"]["desc"], "changed");

    // APISIX's example names a plugin it does not ship; cors is one whose metadata it
    // documents.
    let metadata = api
        .call(
            "PUT",
            "/apisix/admin/plugin_metadata/cors",
            Some(r#"{"allow_origins": {"key_1": "https://domain.com"}}"#),
        )
        .await;
    assert_eq!(metadata.status, 201, "{metadata:?}");
    assert_eq!(metadata.body["key"], "/pylon/plugin_metadata/cors");

    let secret = api
        .call(
            "PUT",
            "/apisix/admin/secrets/vault/test2",
            Some(r#"{"uri": "http://xxx/get", "prefix": "apisix", "token": "apisix"}"#),
        )
        .await;
    assert_eq!(secret.status, 201, "{secret:?}");
    assert_eq!(secret.body["key"], "/pylon/secrets/vault/test2");
    assert_eq!(secret.body["value"]["id"], "vault/test2");
    let read = api
        .call("GET", "/apisix/admin/secrets/vault/test2", None)
        .await;
    assert_eq!(read.body["value"]["token"], "apisix");
    let patched = api
        .call(
            "PATCH",
            "/apisix/admin/secrets/vault/test2",
            Some(r#"{"token": "new"}"#),
        )
        .await;
    assert_eq!(patched.body["value"]["token"], "new");
    let listed = api.call("GET", "/apisix/admin/secrets", None).await;
    assert_eq!(listed.body["total"], 1);
}

#[tokio::test]
async fn plugin_configurations_are_checked_at_write_time() {
    let api = TestApi::start().await;
    let refused = [
        (
            "/apisix/admin/services/201",
            r#"{"plugins": {"no-such-plugin": {}}, "upstream": {"nodes": {"127.0.0.1:1980": 1}}}"#,
            "invalid configuration: plugins.no-such-plugin: unknown plugin `no-such-plugin`",
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "plugins": {"key-auth": {"header": 5}}, "upstream": {"nodes": {"127.0.0.1:1980": 1}}}"#,
            "invalid configuration: plugins.key-auth.header: invalid type: integer `5`, expected a string",
        ),
        (
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "plugins": {"key-auth": {"_meta": {"gray_ratio": 150}}}, "upstream": {"nodes": {"127.0.0.1:1980": 1}}}"#,
            "invalid configuration: plugins.key-auth._meta.gray_ratio: must be an integer percentage from 0 to 100",
        ),
        (
            "/apisix/admin/consumers",
            r#"{"username": "jack", "plugins": {"key-auth": {}}}"#,
            "invalid configuration: plugins.key-auth: missing field `key`",
        ),
    ];
    for (path, body, error) in refused {
        let answer = api.call("PUT", path, Some(body)).await;
        assert_eq!(answer.status, 400, "{path} {body}");
        assert_eq!(answer.body["error_msg"], error, "{path} {body}");
    }
    for stored in ["services/201", "routes/1", "consumers/jack"] {
        let path = format!("/apisix/admin/{stored}");
        assert_eq!(api.call("GET", &path, None).await.status, 404, "{path}");
    }
    let jack = r#"{"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}}}"#;
    assert_eq!(
        api.call("PUT", "/apisix/admin/consumers", Some(jack))
            .await
            .status,
        201
    );
    // Another consumer with the same key would make the key name two consumers.
    let rose = r#"{"username": "rose", "plugins": {"key-auth": {"key": "auth-one"}}}"#;
    let answer = api.call("PUT", "/apisix/admin/consumers", Some(rose)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body["error_msg"],
        "invalid configuration: plugins.key-auth: the same credential as consumer `jack`"
    );
    assert_eq!(
        api.call("GET", "/apisix/admin/consumers/rose", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn lists_are_filtered_then_paged() {
    let api = TestApi::start().await;
    for (id, name, uri) in [
        ("1", "test-a", "/foo/1"),
        ("2", "test-b", "/bar"),
        ("3", "other", "/foo/3"),
    ] {
        let route = json!({"name": name, "uri": uri, "upstream": {"nodes": {"127.0.0.1:80": 1}}});
        let path = format!("/apisix/admin/routes/{id}");
        assert_eq!(
            api.call("PUT", &path, Some(&route.to_string()))
                .await
                .status,
            201
        );
    }
    let all = api.call("GET", "/apisix/admin/routes", None).await;
    assert_eq!(all.body["total"], 3);
    assert_eq!(all.body["list"].as_array().unwrap().len(), 3);
    assert_eq!(all.body["list"][0]["key"], "/pylon/routes/1");

    let filtered = api
        .call("GET", "/apisix/admin/routes?name=test&uri=foo", None)
        .await;
    assert_eq!(filtered.body["total"], 1);
    assert_eq!(filtered.body["list"][0]["value"]["id"], "1");
    // The documentation's example adds `label=`, saying it sets no condition; APISIX itself
    // (`t/admin/filter.t`) then keeps only resources with a label named "".
    let empty_label = api
        .call("GET", "/apisix/admin/routes?name=test&uri=foo&label=", None)
        .await;
    assert_eq!(empty_label.body, json!({"list": [], "total": 0}));

    let paged = api
        .call("GET", "/apisix/admin/routes?page=1&page_size=10", None)
        .await;
    assert_eq!(paged.body["total"], 3);
    assert_eq!(paged.body["list"].as_array().unwrap().len(), 3);
    let past_the_end = api
        .call("GET", "/apisix/admin/routes?page=2&page_size=10", None)
        .await;
    assert_eq!(past_the_end.body, json!({"list": [], "total": 3}));
    let bad = api
        .call("GET", "/apisix/admin/routes?page=1&page_size=5", None)
        .await;
    assert_eq!(bad.status, 400);

    api.call(
        "PUT",
        "/apisix/admin/upstreams/1",
        Some(r#"{"nodes": {"127.0.0.1:80": 1}}"#),
    )
    .await;
    api.call(
        "PUT",
        "/apisix/admin/services/1",
        Some(r#"{"upstream_id": "1"}"#),
    )
    .await;
    api.call(
        "PUT",
        "/apisix/admin/routes/4",
        Some(r#"{"uri": "/s", "service_id": 1}"#),
    )
    .await;
    let by_service = api
        .call("GET", "/apisix/admin/routes?filter=service_id%3D1", None)
        .await;
    assert_eq!(by_service.body["total"], 1);
    assert_eq!(by_service.body["list"][0]["value"]["id"], "4");

    let empty = api.call("GET", "/apisix/admin/stream_routes", None).await;
    assert_eq!(empty.body, json!({"list": [], "total": 0}));
}

#[tokio::test]
async fn schema_validation_answers_200_or_the_field_error() {
    let api = TestApi::start().await;
    let invalid = api
        .call(
            "POST",
            "/apisix/admin/schema/validate/routes",
            Some(r#"{"uri": 1980, "upstream": {"scheme": "https", "type": "roundrobin", "nodes": {"nghttp2.org": 1}}}"#),
        )
        .await;
    assert_eq!(invalid.status, 400);
    let message = invalid.body["error_msg"].as_str().unwrap();
    assert!(
        message.starts_with("invalid configuration: uri: "),
        "{message}"
    );
    let valid = api
        .call(
            "POST",
            "/apisix/admin/schema/validate/routes",
            Some(r#"{"uri": "/a", "upstream": {"nodes": {"nghttp2.org": 1}}}"#),
        )
        .await;
    assert_eq!(valid.status, 200);
    assert_eq!(
        api.call("GET", "/apisix/admin/routes", None).await.body["total"],
        0
    );
}

#[tokio::test]
async fn ids_are_checked_like_apisix() {
    let api = TestApi::start().await;
    let upstream = r#"{"nodes": {"127.0.0.1:80": 1}}"#;
    let mismatch = api
        .call(
            "PUT",
            "/apisix/admin/upstreams/1",
            Some(r#"{"id": "2", "nodes": {"127.0.0.1:80": 1}}"#),
        )
        .await;
    assert_eq!(mismatch.body, json!({"error_msg": "wrong upstream id"}));
    let missing = api
        .call("PUT", "/apisix/admin/upstreams", Some(upstream))
        .await;
    assert_eq!(missing.body, json!({"error_msg": "missing upstream id"}));
    let from_body = api
        .call(
            "PUT",
            "/apisix/admin/upstreams",
            Some(r#"{"id": 7, "nodes": {"127.0.0.1:80": 1}}"#),
        )
        .await;
    assert_eq!(from_body.status, 201);
    assert_eq!(from_body.body["key"], "/pylon/upstreams/7");
    let posted_with_id = api
        .call(
            "POST",
            "/apisix/admin/upstreams",
            Some(r#"{"id": 1, "nodes": {"127.0.0.1:80": 1}}"#),
        )
        .await;
    assert_eq!(
        posted_with_id.body,
        json!({"error_msg": "wrong upstream id, do not need it"})
    );
    let bad_id = api
        .call("PUT", "/apisix/admin/upstreams/a%20b", Some(upstream))
        .await;
    assert_eq!(bad_id.status, 400);
    assert_eq!(
        bad_id.body["error_msg"],
        "invalid upstream id `a%20b`: use 1 to 64 letters, digits, `-`, `_` or `.`"
    );
    // A username is longer than an id, and has no `.`.
    for (username, status) in [
        ("j".repeat(256), 201),
        ("j".repeat(257), 400),
        ("j.k".to_owned(), 400),
    ] {
        let consumer = json!({ "username": username }).to_string();
        let written = api
            .call("PUT", "/apisix/admin/consumers", Some(&consumer))
            .await;
        assert_eq!(written.status, status, "{username}: {written:?}");
        if status == 400 {
            assert_eq!(
                written.body["error_msg"],
                format!("invalid consumer username `{username}`: use 1 to 256 letters, digits, `-`, `_`")
            );
        }
    }
    let timed = api
        .call(
            "PUT",
            "/apisix/admin/upstreams/2",
            Some(r#"{"create_time": 1, "nodes": {"127.0.0.1:80": 1}}"#),
        )
        .await;
    assert_eq!(
        timed.body,
        json!({"error_msg": "the property is forbidden: create_time"})
    );
    let unknown = api.call("GET", "/apisix/admin/routez", None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.body,
        json!({"error_msg": "Unsupported resource type: routez"})
    );
}

/// APISIX's `t/admin/routes2.t`: an id given in the body alone is kept as given (a number stays
/// a number); the path's id is a string, and a PATCH, which names the path, makes it one.
#[tokio::test]
async fn an_id_is_kept_as_apisix_keeps_it() {
    let api = TestApi::start().await;
    let route = r#"{"id": 1, "uri": "/index.html", "upstream": {"nodes": {"127.0.0.1:8080": 1}}}"#;
    let from_body = api.call("PUT", "/apisix/admin/routes", Some(route)).await;
    assert_eq!(from_body.status, 201);
    assert_eq!(from_body.body["value"]["id"], json!(1));
    let read = api.call("GET", "/apisix/admin/routes/1", None).await;
    assert_eq!(read.body["value"]["id"], json!(1));

    let from_path = api.call("PUT", "/apisix/admin/routes/2", Some(route)).await;
    assert_eq!(from_path.status, 400, "the body's id is not the path's");
    let route2 = route.replace(r#""id": 1"#, r#""id": 2"#);
    let from_path = api
        .call("PUT", "/apisix/admin/routes/2", Some(&route2))
        .await;
    assert_eq!(from_path.status, 201);
    assert_eq!(from_path.body["value"]["id"], json!("2"));

    let patched = api
        .call("PATCH", "/apisix/admin/routes/1", Some(r#"{"desc": "d"}"#))
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["value"]["id"], json!("1"));
}

/// APISIX's `t/admin/upstream4.t`: a whole-body PATCH may state the times and they are kept; a
/// PATCH by sub-path sets the update time anyway.
#[tokio::test]
async fn a_patch_keeps_the_times_it_states_as_apisix_does() {
    let api = TestApi::start().await;
    let created = api
        .call(
            "PUT",
            "/apisix/admin/upstreams/1",
            Some(r#"{"nodes": {"127.0.0.1:8080": 1}}"#),
        )
        .await;
    assert_eq!(created.status, 201);
    let patch = |body: &'static str, path: &'static str| {
        let api = &api;
        async move { api.call("PATCH", path, Some(body)).await.body["value"].clone() }
    };
    let value = patch(
        r#"{"desc": "new upstream", "create_time": 1705252779}"#,
        "/apisix/admin/upstreams/1",
    )
    .await;
    assert_eq!(value["create_time"], 1705252779);
    let value = patch(
        r#"{"update_time": 1705252779}"#,
        "/apisix/admin/upstreams/1",
    )
    .await;
    assert_eq!(
        (&value["create_time"], &value["update_time"]),
        (&json!(1705252779), &json!(1705252779))
    );
    let value = patch("1705252000", "/apisix/admin/upstreams/1/update_time").await;
    assert!(
        value["update_time"].as_i64().unwrap() > 1705252779,
        "{value}"
    );
    let value = patch("1705252000", "/apisix/admin/upstreams/1/create_time").await;
    assert_eq!(value["create_time"], 1705252000);
}
