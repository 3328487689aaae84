//! Client address keys for budgets. One IPv6 subscriber usually gets a whole
//! /64 (or more) and can rotate through it at will, so per-IP limits key an
//! IPv6 client on its network, not its address; IPv4 clients stay per address.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};

/// The throttle key of a client: its IPv4 address, or its IPv6 network of
/// `ipv6_prefix_len` bits (1..=128; validated in config). IPv4-mapped IPv6
/// addresses count as IPv4.
pub fn throttle_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpNet {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpNet::from(IpAddr::V4(v4)),
            None => Ipv6Net::new(v6, ipv6_prefix_len.clamp(1, 128))
                .map(|n| IpNet::V6(n.trunc()))
                .unwrap_or_else(|_| IpNet::from(ip)),
        },
        IpAddr::V4(_) => IpNet::from(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, len: u8) -> String {
        throttle_key(ip.parse().unwrap(), len).to_string()
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff", 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(key("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::/48");
        assert_eq!(key("2001:db8::1", 128), "2001:db8::1/128");
        assert_ne!(key("2001:db8:1:3::1", 64), key("2001:db8:1:2::1", 64));
    }

    #[test]
    fn ipv4_stays_per_address() {
        assert_eq!(key("192.0.2.7", 64), "192.0.2.7/32");
        assert_eq!(key("::ffff:192.0.2.7", 64), "192.0.2.7/32");
        assert_ne!(key("192.0.2.7", 64), key("192.0.2.8", 64));
    }
}
