//! Which address a request comes from: the connection's peer, or, when the
//! peer is a trusted proxy (`GW_TRUSTED_PROXIES`), the right-most address of
//! the incoming `X-Forwarded-For` chain that is not itself a trusted proxy.
//!
//! The client address feeds rate-limit keys, `x-original-ip` and the
//! security log. An untrusted peer's `X-Forwarded-For` is never believed
//! (anyone can send one); it is still passed on, with the peer appended.

use crate::headers::X_FORWARDED_FOR;
use crate::headers::X_ORIGINAL_IP;
use http::{HeaderMap, HeaderValue, Request};
use std::net::IpAddr;

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a
/// bare address meaning that one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address range (expected e.g. 10.0.0.0/8, 2001:db8::/32 or 127.0.0.1)")]
pub struct BadCidr(pub String);

impl std::str::FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let bad = || BadCidr(text.to_string());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        // Host bits set (10.0.0.1/8) are refused: they usually mean a typo.
        if mask(network, prefix) != network {
            return Err(bad());
        }
        Ok(Self { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`GW_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
}

impl std::str::FromStr for TrustedProxies {
    type Err = BadCidr;

    /// A comma- or space-separated list of ranges; empty trusts nobody.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ranges = text
            .split([',', ' '])
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { ranges })
    }
}

impl TrustedProxies {
    /// Whether nobody is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The client address of a request from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        // Later headers and later entries were appended by closer proxies.
        let hops = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A trusted proxy writes addresses; anything else came from
            // further out, so the chain is not followed past it.
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }

    /// Resolves the client address of `req` from `peer` (the connection's
    /// address as a header value) and records it as `x-original-ip`; the
    /// value returned is the one to key rate limits and log with.
    pub fn resolve<B>(&self, peer: &HeaderValue, req: &mut Request<B>) -> HeaderValue {
        let client = match self.is_empty() {
            true => peer.clone(),
            false => match peer.to_str().ok().and_then(|p| p.parse::<IpAddr>().ok()) {
                Some(ip) => {
                    let client = self.client_ip(ip, req.headers());
                    if client == ip {
                        peer.clone()
                    } else {
                        crate::headers::peer_value(client)
                    }
                }
                None => peer.clone(),
            },
        };
        req.headers_mut().insert(X_ORIGINAL_IP, client.clone());
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:5678`, `[2001:db8::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cidr_ranges_are_parsed() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
            "example.com",
            "10.0.0/8",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn proxy_lists_are_parsed() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.0.0/16 ::1".parse().unwrap();
        assert!(t.trusts(ip("192.168.3.4")));
        assert!(t.trusts(ip("::1")));
        assert!(!t.trusts(ip("8.8.8.8")));
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert!("10.0.0.0/8,nonsense".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let none = TrustedProxies::default();
        let h = xff(&["1.2.3.4"]);
        assert_eq!(none.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(t.client_ip(ip("8.8.8.8"), &h), ip("8.8.8.8"));
    }

    #[test]
    fn trusted_peers_give_the_rightmost_untrusted_hop() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let peer = ip("10.0.0.1");
        // The client spoofed 6.6.6.6; the proxies added 1.2.3.4 and 10.0.0.9.
        let h = xff(&["6.6.6.6, 1.2.3.4, 10.0.0.9"]);
        assert_eq!(t.client_ip(peer, &h), ip("1.2.3.4"));
        // Split over several headers, in order.
        let h = xff(&["6.6.6.6", "1.2.3.4", "10.0.0.9"]);
        assert_eq!(t.client_ip(peer, &h), ip("1.2.3.4"));
        // No header: the proxy itself is the client.
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        // Every hop trusted: the left-most one.
        let h = xff(&["10.1.1.1, 10.0.0.9"]);
        assert_eq!(t.client_ip(peer, &h), ip("10.1.1.1"));
        // Garbage stops the walk at the last trusted hop.
        let h = xff(&["1.2.3.4, garbage, 10.0.0.9"]);
        assert_eq!(t.client_ip(peer, &h), ip("10.0.0.9"));
        // Ports are tolerated.
        let h = xff(&["1.2.3.4:5555"]);
        assert_eq!(t.client_ip(peer, &h), ip("1.2.3.4"));
        let h = xff(&["[2001:db8::7]:80"]);
        assert_eq!(t.client_ip(peer, &h), ip("2001:db8::7"));
    }

    #[test]
    fn resolve_sets_the_original_ip() {
        let t: TrustedProxies = "127.0.0.1".parse().unwrap();
        let mut req = Request::new(());
        req.headers_mut()
            .insert(X_FORWARDED_FOR, HeaderValue::from_static("9.9.9.9"));
        let client = t.resolve(&HeaderValue::from_static("127.0.0.1"), &mut req);
        assert_eq!(client, "9.9.9.9");
        assert_eq!(req.headers()[X_ORIGINAL_IP], "9.9.9.9");
        let client =
            TrustedProxies::default().resolve(&HeaderValue::from_static("127.0.0.1"), &mut req);
        assert_eq!(client, "127.0.0.1");
        assert_eq!(req.headers()[X_ORIGINAL_IP], "127.0.0.1");
    }
}
