//! A route's `remote_addrs`: the client networks it accepts.

use std::net::IpAddr;

use ipnet::IpNet;
use pylon_model::expr::parse_network;

/// An empty set means any client. Routes list a handful of networks, so a scan is the fastest
/// lookup.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddrSet {
    nets: Box<[IpNet]>,
}

impl AddrSet {
    /// On error, the index of the bad entry and why.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, (usize, String)> {
        let nets = entries
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_network(s.trim())
                    .ok_or_else(|| (i, format!("`{s}` is not an IP address or CIDR")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nets })
    }

    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        self.nets.is_empty() || contains(&self.nets, ip)
    }
}

/// Whether `ip` is in one of `nets`. A dual-stack listener reports IPv4 clients as
/// `::ffff:a.b.c.d`; they must still match the IPv4 networks users write.
pub(crate) fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> AddrSet {
        AddrSet::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_allows_every_client() {
        assert!(set(&[]).allows(ip("203.0.113.9")));
        assert!(set(&[]).allows(ip("2001:db8::1")));
    }

    #[test]
    fn v4_and_v6_networks_and_single_addresses() {
        let s = set(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]);
        assert!(s.allows(ip("10.255.0.1")));
        assert!(s.allows(ip("192.168.1.7")));
        assert!(!s.allows(ip("192.168.1.8")));
        assert!(s.allows(ip("2001:db8:ffff::1")));
        assert!(s.allows(ip("::1")));
        assert!(!s.allows(ip("2001:db9::1")));
        assert!(!s.allows(ip("11.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_networks() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.allows(ip("::ffff:10.1.2.3")));
        assert!(!s.allows(ip("::ffff:11.1.2.3")));
    }

    #[test]
    fn bad_entry_is_named() {
        let err = AddrSet::parse(&["10.0.0.0/8".into(), "10.0.0.300".into()]).unwrap_err();
        assert_eq!(
            err,
            (1, "`10.0.0.300` is not an IP address or CIDR".to_owned())
        );
    }
}
