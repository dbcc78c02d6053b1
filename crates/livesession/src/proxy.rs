//! Who the client is: its address, and whether it reached us over TLS.
//!
//! Without trusted proxies (the default) the client is the TCP peer, and the
//! `X-Forwarded-*` headers are removed from every request before anything reads them: a
//! client cannot choose the address its rate limits are counted under. When the peer is
//! one of `--trusted-proxies`, the client's address is the right-most `X-Forwarded-For`
//! entry that is not itself a trusted proxy, `X-Forwarded-Proto: https` means the browser
//! used TLS (HSTS, `Secure` cookies), and `X-Forwarded-Host` is the host the browser asked
//! for (the Origin check).
//!
//! The [`client_info`] middleware runs first on every request and applies this once, the
//! way a "proxy fix" does: it replaces the request's `ConnectInfo<SocketAddr>` with the
//! client's address (so every handler, limit and log line sees the client, not the
//! proxy), replaces `Host` with the forwarded host, and records a [`ClientInfo`].

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::HOST;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED: &str = "forwarded";

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{s:?} is not an IP address or a CIDR range such as 10.0.0.0/8 or fd00::/8")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(match addr {
            IpAddr::V4(v4) => Cidr {
                network: IpAddr::V4(mask_v4(v4, prefix)),
                prefix,
            },
            // `::ffff:10.0.0.0/104` is the IPv4 range it maps.
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
                let v4 = v6.to_ipv4_mapped().expect("mapped");
                Cidr {
                    network: IpAddr::V4(mask_v4(v4, prefix - 96)),
                    prefix: prefix - 96,
                }
            }
            IpAddr::V6(v6) => Cidr {
                network: IpAddr::V6(mask_v6(v6, prefix)),
                prefix,
            },
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `--trusted-proxies`: ranges separated by commas. Empty (an empty environment variable,
/// the default) means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl std::ops::Deref for TrustedProxies {
    type Target = [Cidr];

    fn deref(&self) -> &[Cidr] {
        &self.0
    }
}

pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`) or in brackets. `unknown`, obfuscated names and garbage are `None`.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

/// The client's address for a request from `peer` with these `X-Forwarded-For` header
/// values (in the order received). Untrusted peers are the client, whatever they say.
/// From a trusted peer, the list is read from the right (each proxy appends the address
/// it received from) and the first address that is not a trusted proxy is the client:
/// whatever is left of it was written by the client and proves nothing. An unreadable
/// entry stops the walk at the last address a trusted proxy vouched for.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_addr(entry) else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(trusted, client) {
            break;
        }
    }
    client
}

/// The last (nearest proxy's) value of a header that proxies may send as a list.
fn last_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|v| !v.is_empty())
}

/// A host as a `Host` header may carry it: a name or address, optionally a port.
fn plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// What the server knows about who sent a request; see the module comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address (the peer's, unless a trusted proxy named another).
    pub ip: IpAddr,
    /// Whether the client reached us over TLS (ours, or a trusted proxy's).
    pub https: bool,
    /// Whether a trusted proxy forwarded the request.
    pub via_proxy: bool,
}

/// Reads and applies the forwarding headers; see the module comment.
pub async fn client_info(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let tls = app.tls.is_some();
    let trusted = &app.config.trusted_proxies;
    // Another node relaying a request (cluster/): its signature names the client.
    let relayed = match request.headers_mut().remove(crate::cluster::RELAY_HEADER) {
        None => None,
        Some(value) => {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let checked = match (app.cluster.secret(), value.to_str()) {
                (Some(secret), Ok(value)) => crate::cluster::verify_relay(secret, value, request.method().as_str(), path),
                (None, _) => Err("this node is not in a cluster (no cluster secret)"),
                (Some(_), Err(_)) => Err("malformed relay header"),
            };
            match checked {
                Ok(from) => Some(from),
                Err(why) => {
                    tracing::warn!(peer = %peer.ip(), why, "refused a request claiming to be relayed by a node");
                    return crate::error::ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "relay_refused",
                        format!("relay refused: {why}"),
                    )
                    .into_response();
                }
            }
        }
    };
    let headers = request.headers_mut();
    let info = if let Some(from) = &relayed {
        // The relaying node passed the client's own forwarding headers on; it already
        // applied them, so they are not read twice.
        for name in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, FORWARDED] {
            headers.remove(name);
        }
        ClientInfo { ip: from.client_ip, https: from.https, via_proxy: true }
    } else if is_trusted(trusted, peer.ip()) {
        let ip = client_ip(
            peer.ip(),
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            trusted,
        );
        let https = match last_value(headers, X_FORWARDED_PROTO) {
            Some(proto) => proto.eq_ignore_ascii_case("https"),
            None => tls,
        };
        if let Some(host) = last_value(headers, X_FORWARDED_HOST)
            .filter(|h| plausible_host(h))
            .and_then(|h| HeaderValue::from_str(h).ok())
        {
            headers.insert(HOST, host);
        }
        ClientInfo {
            ip,
            https,
            via_proxy: true,
        }
    } else {
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            FORWARDED,
        ] {
            headers.remove(name);
        }
        ClientInfo {
            ip: peer.ip().to_canonical(),
            https: tls,
            via_proxy: false,
        }
    };
    let port = if info.via_proxy { 0 } else { peer.port() };
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(info.ip, port)));
    request.extensions_mut().insert(info);
    if let Some(from) = relayed {
        request.extensions_mut().insert(from);
    }
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        if let Some(info) = parts.extensions.get::<ClientInfo>() {
            return Ok(*info);
        }
        // Only without the middleware (never in the server): the peer, as it is.
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientInfo {
            ip,
            https: false,
            via_proxy: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.9")), "IPv4-mapped peers match");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12:3456::1")) && !v6.contains(ip("fe80::1")));
        let mapped: Cidr = "::ffff:192.168.0.0/112".parse().unwrap();
        assert_eq!(mapped.to_string(), "192.168.0.0/16");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "10.0.0.0/x",
            "1.2.3",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_trusted_list_is_comma_separated_and_may_be_empty() {
        let list: TrustedProxies = "127.0.0.1, 10.0.0.0/8,".parse().unwrap();
        assert_eq!(list.len(), 2);
        assert!(is_trusted(&list, ip("10.1.1.1")) && !is_trusted(&list, ip("192.0.2.1")));
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert!(" , ".parse::<TrustedProxies>().unwrap().is_empty());
        assert!("127.0.0.1,nonsense".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_forward() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.5"), ["198.51.100.1"], &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("203.0.113.5"), ["198.51.100.1"], &[]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() {
        let trusted = cidrs(&["10.0.0.0/8", "192.168.1.1"]);
        // client → 192.168.1.1 (proxy) → 10.0.0.2 (proxy) → us
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                ["6.6.6.6, 198.51.100.7", "192.168.1.1"],
                &trusted
            ),
            ip("198.51.100.7"),
            "the spoofed left-most entry is ignored"
        );
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["198.51.100.7:4711"], &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["[2001:db8::7]:443"], &trusted),
            ip("2001:db8::7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.2"), std::iter::empty(), &trusted),
            ip("10.0.0.2")
        );
        // Only proxies in the list: the left-most of them.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["10.9.9.9, 192.168.1.1"], &trusted),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last vouched-for address.
        assert_eq!(
            client_ip(ip("10.0.0.2"), ["198.51.100.7, unknown"], &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), ["198.51.100.8"], &trusted),
            ip("198.51.100.8"),
            "an IPv4-mapped peer is its IPv4 address"
        );
    }

    #[test]
    fn list_headers_use_the_nearest_value_and_hosts_are_checked() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        h.append(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        assert_eq!(last_value(&h, X_FORWARDED_PROTO), Some("https"));
        assert_eq!(last_value(&h, X_FORWARDED_HOST), None);
        assert!(plausible_host("sessions.example.com:8443"));
        assert!(plausible_host("[::1]:8080"));
        assert!(!plausible_host("evil.example/path"));
        assert!(!plausible_host(""));
    }
}
