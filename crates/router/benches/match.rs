//! A micro benchmark without a framework: lookup time with 1 route and with 10,000.
//! Run with `cargo bench -p pylon-router`.

use std::borrow::Cow;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use pylon_router::{RequestView, RouteSpec, Router};

struct Req<'a> {
    path: &'a str,
    host: &'a str,
}

impl RequestView for Req<'_> {
    fn path(&self) -> &str {
        self.path
    }
    fn host(&self) -> Option<&str> {
        Some(self.host)
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn remote_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
    fn var(&self, _: &str) -> Option<Cow<'_, str>> {
        None
    }
}

fn build(n: usize) -> Router<usize> {
    let routes = (0..n)
        .flat_map(|i| {
            let mut by_host = RouteSpec::new(format!("/api/v1/svc{i}/*"), i);
            by_host.hosts = vec![format!("*.tenant{i}.example.com")];
            [
                RouteSpec::new(format!("/api/v1/svc{i}/items/:id"), i),
                by_host,
            ]
        })
        .collect();
    Router::new(routes).unwrap()
}

fn bench(label: &str, router: &Router<usize>, req: &Req<'_>) {
    const ITERATIONS: u32 = 2_000_000;
    assert!(
        router.find(req).is_some(),
        "{label}: the request should match"
    );
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        black_box(router.find(black_box(req)));
    }
    println!(
        "{label:<44} {:>6.0} ns/lookup",
        start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
    );
}

fn main() {
    for n in [1, 10_000] {
        let router = build(n);
        let last = n - 1;
        let param = format!("/api/v1/svc{last}/items/42");
        let host = format!("www.tenant{last}.example.com");
        let prefix = format!("/api/v1/svc{last}/orders/9");
        bench(
            &format!("{} routes, param path, unknown host", 2 * n),
            &router,
            &Req {
                path: &param,
                host: "other.org",
            },
        );
        bench(
            &format!("{} routes, prefix path, wildcard host", 2 * n),
            &router,
            &Req {
                path: &prefix,
                host: &host,
            },
        );
    }
}
