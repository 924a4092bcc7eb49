//! `real-ip`: takes the client's address from what a trusted proxy in front of the gateway
//! sent (`X-Forwarded-For`, another header, a query argument), as nginx's realip module does.
//! Every later plugin, the `remote_addr` variable and the access log see that address.

use std::net::IpAddr;
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, RequestCtx, Step};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::ip_set::IpSet;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "real-ip",
    priority: 23000,
    schema: schema_of::<RealIpConfig>,
    build,
    credential: None,
    metadata: None,
};

const FORWARDED_FOR: &str = "http_x_forwarded_for";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RealIpConfig {
    /// The variable that holds the client's address: `http_x_forwarded_for` (its last
    /// address), `http_x_real_ip`, `arg_realip`, ... An address may carry a port
    /// (`192.0.2.1:80`, `[2001:db8::1]:80`).
    #[schemars(length(min = 1))]
    source: String,
    /// The proxies whose word is taken: when set, a request from any other peer keeps its
    /// peer's address. Addresses and CIDRs, IPv4 or IPv6. Unset: every peer is trusted.
    #[schemars(length(min = 1))]
    trusted_addresses: Option<Vec<String>>,
    /// With `http_x_forwarded_for` and `trusted_addresses`: the client is the last address
    /// of the chain that is not a trusted proxy, rather than the last address.
    #[serde(default)]
    recursive: bool,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: RealIpConfig = parse(config)?;
    if config.source.is_empty() {
        return Err(FieldError::new("source", "must not be empty"));
    }
    let trusted = match &config.trusted_addresses {
        Some(list) if list.is_empty() => {
            return Err(FieldError::new(
                "trusted_addresses",
                "must list at least one address",
            ))
        }
        Some(list) => Some(IpSet::parse("trusted_addresses", list)?),
        None => None,
    };
    Ok(Arc::new(RealIp {
        recursive: config.recursive && trusted.is_some(),
        source: config.source,
        trusted,
    }))
}

struct RealIp {
    source: String,
    trusted: Option<IpSet>,
    recursive: bool,
}

impl RealIp {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.as_ref().is_none_or(|set| set.contains(ip))
    }

    /// The client's address as the source gives it, port and all.
    fn claimed<'v>(&self, value: &'v str) -> &'v str {
        if self.source != FORWARDED_FOR {
            return value;
        }
        let mut hops = value.rsplit(',').map(str::trim);
        if !self.recursive {
            return hops.next().unwrap_or(value);
        }
        // Walk back from the gateway: each trusted proxy vouches for the hop before it; the
        // first untrusted hop is the client. If all are trusted, the first one is.
        let mut earliest = value;
        for hop in hops {
            earliest = hop;
            if !address(hop).is_some_and(|ip| self.trusts(ip)) {
                break;
            }
        }
        earliest
    }
}

impl Plugin for RealIp {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        if !self.trusts(ctx.client_ip()) {
            return Step::Continue;
        }
        let found = ctx
            .var(&self.source)
            .and_then(|value| address(self.claimed(&value)));
        match found {
            Some(ip) => ctx.set_client_ip(ip),
            None => tracing::debug!(source = %self.source, "real-ip: no usable address"),
        }
        Step::Continue
    }
}

/// The IP of `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1` or `[2001:db8::1]:80`; `None` for
/// anything else, a port outside 1..=65535 included.
fn address(text: &str) -> Option<IpAddr> {
    let (ip, port) = match text.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, rest) = bracketed.split_once(']')?;
            let port = match rest {
                "" => None,
                rest => Some(rest.strip_prefix(':')?),
            };
            (ip.parse::<std::net::Ipv6Addr>().ok()?.into(), port)
        }
        None => match text.parse::<IpAddr>() {
            Ok(ip) => (ip, None),
            Err(_) => {
                let (ip, port) = text.rsplit_once(':')?;
                (ip.parse::<std::net::Ipv4Addr>().ok()?.into(), Some(port))
            }
        },
    };
    match port {
        Some(port) => port.parse::<u16>().ok().filter(|&p| p != 0).map(|_| ip),
        None => Some(ip),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, TestRequest};

    /// The client address after `real-ip` ran on `request`.
    fn client(config: Value, request: &TestRequest) -> String {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        assert_eq!(replied(plugin.rewrite(&mut ctx)), None);
        let ip = ctx.client_ip().to_string();
        assert_eq!(ctx.var("remote_addr").as_deref(), Some(ip.as_str()));
        ip
    }

    fn xff(value: &str) -> TestRequest {
        TestRequest::get("/")
            .from("10.0.0.2")
            .header("X-Forwarded-For", value)
    }

    #[test]
    fn the_last_forwarded_address_is_the_client() {
        let config = json!({"source": "http_x_forwarded_for"});
        assert_eq!(client(config.clone(), &xff("198.51.100.7")), "198.51.100.7");
        assert_eq!(
            client(config.clone(), &xff("203.0.113.1, 198.51.100.7")),
            "198.51.100.7"
        );
        assert_eq!(
            client(config, &xff("203.0.113.1,  2001:db8::9")),
            "2001:db8::9"
        );
    }

    #[test]
    fn other_headers_and_query_arguments_with_ports() {
        let header = TestRequest::get("/").header("X-Real-IP", "198.51.100.7:8080");
        assert_eq!(
            client(json!({"source": "http_x_real_ip"}), &header),
            "198.51.100.7"
        );
        let arg = TestRequest::get("/?realip=[2001:db8::1]:443");
        assert_eq!(client(json!({"source": "arg_realip"}), &arg), "2001:db8::1");
    }

    #[test]
    fn an_untrusted_peer_keeps_its_own_address() {
        let config = json!({
            "source": "http_x_forwarded_for",
            "trusted_addresses": ["10.0.0.0/8"],
        });
        assert_eq!(client(config.clone(), &xff("198.51.100.7")), "198.51.100.7");
        let untrusted = xff("198.51.100.7").from("192.0.2.50");
        assert_eq!(client(config, &untrusted), "192.0.2.50");
    }

    #[test]
    fn recursive_skips_trusted_proxies_from_the_right() {
        let config = json!({
            "source": "http_x_forwarded_for",
            "trusted_addresses": ["10.0.0.0/8", "2001:db8::/32"],
            "recursive": true,
        });
        let chain = "1.1.1.1, 198.51.100.7, 10.0.0.9, 2001:db8::3";
        assert_eq!(client(config.clone(), &xff(chain)), "198.51.100.7");
        // Every hop trusted: the first one is the client.
        assert_eq!(
            client(config.clone(), &xff("10.1.1.1, 10.0.0.9")),
            "10.1.1.1"
        );
        // Without `recursive` the last hop wins, trusted or not.
        let mut flat = config;
        flat["recursive"] = json!(false);
        assert_eq!(client(flat, &xff(chain)), "2001:db8::3");
    }

    #[test]
    fn an_unusable_address_leaves_the_peer() {
        let config = json!({"source": "http_x_forwarded_for"});
        for bad in [
            "",
            "unknown",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "[::1",
            "1.2.3.4, nope",
        ] {
            assert_eq!(client(config.clone(), &xff(bad)), "10.0.0.2", "{bad:?}");
        }
        let absent = TestRequest::get("/").from("10.0.0.3");
        assert_eq!(client(config, &absent), "10.0.0.3");
    }

    #[test]
    fn bad_configurations_are_refused_where_they_are_wrong() {
        let cases = [
            (json!({}), ""),
            (json!({"source": ""}), "source"),
            (
                json!({"source": "http_x_real_ip", "trusted_addresses": []}),
                "trusted_addresses",
            ),
            (
                json!({"source": "http_x_real_ip", "trusted_addresses": ["10.0.0.0/8", "x"]}),
                "trusted_addresses[1]",
            ),
            (
                json!({"source": "http_x_real_ip", "recursive": "yes"}),
                "recursive",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
    }
}
