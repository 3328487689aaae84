//! Client IP: the socket peer, unless the peer is a trusted proxy; then the
//! rightmost address that is not itself a trusted proxy, read from exactly
//! ONE header (`server.client_ip_header`). Every other forwarding header is
//! ignored: reading several lets a client add the one the proxy does not
//! overwrite (e.g. its own `Forwarded: for=` beside the proxy's
//! `X-Forwarded-For`) and pick its own address. Garbage never wins: an
//! unparsable hop stops the walk and the last trusted address seen is used.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::ClientIpHeader;

/// At most this many hops are read; longer chains are cut at the right end.
const MAX_HOPS: usize = 32;

pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ClientIpHeader,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<&str> = Vec::new();
    for v in headers.get_all(header.name()) {
        let Ok(v) = v.to_str() else { return peer };
        match header {
            ClientIpHeader::Forwarded => {
                for elem in v.split(',') {
                    for pair in elem.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=') {
                            if k.trim().eq_ignore_ascii_case("for") {
                                hops.push(val.trim());
                            }
                        }
                    }
                }
            }
            ClientIpHeader::XForwardedFor | ClientIpHeader::XRealIp => hops.extend(v.split(',')),
        }
    }
    let mut current = peer;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        match parse_hop(hop) {
            Some(ip) => {
                current = ip;
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            None => return current,
        }
    }
    current
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_hop(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // "[v6]", "[v6]:port" or "v4:port"; anything else is garbage.
    let is_port = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return host
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| canonical(IpAddr::V6(ip)));
    }
    let (host, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let ip = client_ip(peer, &h(&[("x-forwarded-for", "1.2.3.4")]), &[], XFF);
        assert_eq!(ip, peer);
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(peer, &h(&[("x-forwarded-for", "1.2.3.4")]), &trusted, XFF),
            peer
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let hdr = h(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
        assert_eq!(
            client_ip(peer, &hdr, &trusted, XFF),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let hdr = h(&[(
            "forwarded",
            "for=\"[2001:db8::1]:443\";proto=https, for=10.0.0.3",
        )]);
        assert_eq!(
            client_ip(peer, &hdr, &trusted, ClientIpHeader::Forwarded),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let hdr = h(&[("x-real-ip", "198.51.100.4")]);
        assert_eq!(
            client_ip(peer, &hdr, &trusted, ClientIpHeader::XRealIp),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let hdr = h(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "7.7.7.7"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        let ip = |which| client_ip(peer, &hdr, &trusted, which).to_string();
        assert_eq!(ip(XFF), "1.2.3.4");
        assert_eq!(ip(ClientIpHeader::Forwarded), "6.6.6.6");
        assert_eq!(ip(ClientIpHeader::XRealIp), "7.7.7.7");
        // The configured header absent: the trusted peer is the client.
        let hdr = h(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(client_ip(peer, &hdr, &trusted, XFF), peer);
    }

    #[test]
    fn garbage_and_long_chains_never_escape() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let hdr = h(&[("x-forwarded-for", "1.2.3.4, garbage")]);
        assert_eq!(client_ip(peer, &hdr, &trusted, XFF), peer);
        for bad in [
            "[::1",
            "[::1]x",
            "[1.2.3.4]",
            "1.2.3.4:x",
            "1.2.3.4:123456",
            "1.2.3.4:",
        ] {
            let hdr = h(&[("x-forwarded-for", bad)]);
            assert_eq!(client_ip(peer, &hdr, &trusted, XFF), peer, "{bad}");
        }
        let hdr = h(&[("x-forwarded-for", "[2001:db8::1]:80")]);
        assert_eq!(
            client_ip(peer, &hdr, &trusted, XFF),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let hdr = h(&[("x-forwarded-for", "192.0.2.1:8080")]);
        assert_eq!(
            client_ip(peer, &hdr, &trusted, XFF),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let long = vec!["10.1.1.1"; 5000].join(",");
        let hdr = h(&[("x-forwarded-for", &long)]);
        assert!(trusted[0].contains(&client_ip(peer, &hdr, &trusted, XFF)));
    }
}
