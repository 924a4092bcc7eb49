//! The gateway starts, proxies, and answers unknown paths with a JSON 404.

mod support;

use support::client::get;
use support::upstream::Upstream;
use support::Pylon;

#[test]
fn proxies_a_route_and_answers_404_elsewhere() {
    let up = Upstream::start("a");
    let pylon = Pylon::start(
        &format!(
            "routes:\n  - id: r1\n    uri: /hello\n    upstream:\n      nodes:\n        {}\n",
            up.node()
        ),
        "",
    );
    let res = get(pylon.addr, "example.com", "/hello");
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "a");
    assert_eq!(res.header("x-upstream"), Some("a"));

    let res = get(pylon.addr, "example.com", "/nope");
    assert_eq!(res.status, 404);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(
        res.json(),
        serde_json::json!({"error_msg": "404 Route Not Found"})
    );

    // Two workers log independently: the lines need not be in request order.
    let log = pylon.wait_access_log(2);
    let proxied = log.iter().find(|l| l["status"] == 200).expect("200 logged");
    assert_eq!(proxied["route_id"], "r1");
    assert_eq!(proxied["upstream_addr"], up.addr.to_string());
    assert!(log.iter().any(|l| l["status"] == 404));
}
