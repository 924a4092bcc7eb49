//! A set of IP networks, v4 and v6, that answers "is this client in it" in O(log n).
//!
//! `ip-restriction` and `real-ip` take lists of addresses and CIDRs that can run to thousands
//! of entries (a country's blocks, a CDN's edge). They are parsed once, when the plugin is
//! built, into sorted ranges with overlapping and adjacent ones merged, and a lookup is one
//! binary search.

use std::net::IpAddr;

use ipnet::IpNet;
use pylon_model::expr::parse_network;
use pylon_model::FieldError;

#[derive(Debug, Clone, Default)]
pub struct IpSet {
    v4: Box<[(u128, u128)]>,
    v6: Box<[(u128, u128)]>,
}

impl IpSet {
    /// Parses `entries` (addresses or CIDRs); a bad entry is reported at `field[i]`.
    pub fn parse(field: &str, entries: &[String]) -> Result<IpSet, FieldError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let net = parse_network(entry.trim()).ok_or_else(|| {
                FieldError::new(
                    format!("{field}[{i}]"),
                    format!("invalid ip address: {entry}"),
                )
            })?;
            match net {
                IpNet::V4(net) => v4.push((
                    u32::from(net.network()).into(),
                    u32::from(net.broadcast()).into(),
                )),
                IpNet::V6(net) => v6.push((net.network().into(), net.broadcast().into())),
            }
        }
        Ok(IpSet {
            v4: merged(v4),
            v6: merged(v6),
        })
    }

    /// Whether `ip` is in the set. An IPv4 client that a dual-stack listener reports as
    /// `::ffff:a.b.c.d` is matched against the IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => within(&self.v4, u32::from(ip).into()),
            IpAddr::V6(ip) => within(&self.v6, u128::from(ip)),
        }
    }
}

/// Inclusive ranges sorted by start, overlapping or adjacent ones joined. IPv4 ranges are
/// kept as `u128` too: one merge and one search for both families.
fn merged(mut ranges: Vec<(u128, u128)>) -> Box<[(u128, u128)]> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.into_boxed_slice()
}

fn within(ranges: &[(u128, u128)], ip: u128) -> bool {
    // The last range starting at or before `ip` is the only one that can hold it.
    let after = ranges.partition_point(|&(start, _)| start <= ip);
    after > 0 && ip <= ranges[after - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> IpSet {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        IpSet::parse("list", &entries).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_networks_of_both_families() {
        let s = set(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]);
        for inside in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.7",
            "2001:db8:ffff::1",
            "::1",
        ] {
            assert!(s.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.8",
            "2001:db9::",
            "::2",
        ] {
            assert!(!s.contains(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_networks() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:11.1.2.3")));
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let s = set(&["10.0.1.0/24", "10.0.0.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(
            &*s.v4,
            &[(0x0a00_0000, 0x0a00_01ff), (0x0a00_0300, 0x0a00_03ff)]
        );
        assert!(s.contains(ip("10.0.1.255")) && !s.contains(ip("10.0.2.0")));
    }

    #[test]
    fn the_whole_space_and_its_last_address() {
        let s = set(&["0.0.0.0/0", "255.255.255.255", "::/0"]);
        assert_eq!(s.v4.len(), 1);
        assert!(s.contains(ip("255.255.255.255")) && s.contains(ip("ffff::1")));
        assert!(!IpSet::default().contains(ip("1.2.3.4")));
    }

    #[test]
    fn a_bad_entry_is_named_with_its_index() {
        let entries = ["10.0.0.0/8".to_owned(), "10.0.0.0/33".to_owned()];
        let err = IpSet::parse("whitelist", &entries).unwrap_err();
        assert_eq!(err.path, "whitelist[1]");
        assert_eq!(err.message, "invalid ip address: 10.0.0.0/33");
    }
}
