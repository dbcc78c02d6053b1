//! Where a desktop's browser may connect: the egress policy and the routes that enforce it.
//!
//! A sandboxed desktop has its own network namespace. With [`EgressMode::None`] it holds
//! only its own loopback, so nothing outside the desktop is reachable. With
//! [`EgressMode::Internet`] a user-mode network stack (`slirp4netns`, with its mapping of
//! the host's loopback turned off) gives it a default route, and the gateway adds
//! `prohibit` routes inside the namespace for the ranges a browser must never reach: the
//! host's loopback and its own addresses, private and shared ranges, link-local (the cloud
//! metadata address 169.254.169.254), multicast and reserved space. The operator can add
//! destinations to deny, or turn the default route off and list the only destinations
//! allowed. The kernel picks the longest matching prefix; [`EgressPolicy::allows`] is the
//! same rule in code, so the two can be checked against each other.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// Ranges no desktop reaches unless the operator allows a more specific (or the same)
/// prefix explicitly.
pub const ALWAYS_BLOCKED: &[&str] = &[
    "0.0.0.0/8",      // "this network"
    "10.0.0.0/8",     // private
    "100.64.0.0/10",  // carrier-grade NAT
    "127.0.0.0/8",    // the host's loopback (the namespace has its own)
    "169.254.0.0/16", // link-local, including the metadata address
    "172.16.0.0/12",  // private
    "192.0.0.0/24",   // IETF protocol assignments
    "192.168.0.0/16", // private
    "198.18.0.0/15",  // benchmarking
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved and broadcast
];

/// slirp4netns's virtual network: the desktop is 10.0.2.100, its gateway 10.0.2.2 and its
/// DNS forwarder 10.0.2.3. The namespace's connected route for it is more specific than
/// the blocked 10.0.0.0/8, which keeps DNS working; the gateway address would map to the
/// host's loopback, which `--disable-host-loopback` refuses.
pub const SLIRP_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const SLIRP_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressMode {
    /// No network beyond the desktop's own loopback.
    #[default]
    None,
    /// Outbound connections through a user-mode network stack, minus the blocked ranges.
    Internet,
}

impl FromStr for EgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "internet" => Ok(Self::Internet),
            other => Err(format!(
                "unknown egress mode {other:?}; expected \"none\" or \"internet\""
            )),
        }
    }
}

/// An IPv4 prefix such as `10.0.0.0/8` (a bare address means `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is longer than 32 bits"));
        }
        let network = Ipv4Addr::from(u32::from(addr) & Self::mask(prefix));
        Ok(Self { network, prefix })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .map_err(|_| format!("{s:?}: the prefix length must be a number 0-32"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| {
            format!("{s:?} is not an IPv4 address or prefix (desktops have no IPv6 route)")
        })?;
        Self::new(addr, prefix).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// One route inside the desktop's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Traffic to this prefix is refused at once (EACCES), before it leaves the namespace.
    Prohibit(Cidr),
    /// Traffic to this prefix goes out through the user-mode stack.
    Via(Cidr),
}

impl Route {
    /// The `ip route add` arguments for this route.
    pub fn ip_args(&self) -> Vec<String> {
        match self {
            Route::Prohibit(c) => vec!["route".into(), "add".into(), "prohibit".into(), c.to_string()],
            Route::Via(c) => vec![
                "route".into(),
                "add".into(),
                c.to_string(),
                "via".into(),
                SLIRP_GATEWAY.to_string(),
            ],
        }
    }

    fn cidr(&self) -> Cidr {
        match self {
            Route::Prohibit(c) | Route::Via(c) => *c,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub mode: EgressMode,
    /// If not empty, the only destinations reachable (the default route is removed).
    /// An allowed prefix also overrides a blocked range it is inside of.
    pub allow: Vec<Cidr>,
    /// Destinations refused in addition to [`ALWAYS_BLOCKED`].
    pub deny: Vec<Cidr>,
}

impl EgressPolicy {
    /// Every prohibited prefix: the fixed ranges, the operator's, and the host's own
    /// addresses (a service bound to 0.0.0.0 answers on them).
    fn blocked(&self, host_addrs: &[Ipv4Addr]) -> Vec<Cidr> {
        let mut blocked: Vec<Cidr> = ALWAYS_BLOCKED
            .iter()
            .map(|c| c.parse().expect("the fixed ranges parse"))
            .collect();
        blocked.extend(self.deny.iter().copied());
        blocked.extend(host_addrs.iter().map(|a| Cidr::new(*a, 32).expect("/32")));
        blocked
    }

    /// The routes to add once the network stack is up (after its own default route).
    /// Whether the default route stays is [`EgressPolicy::keeps_default_route`].
    pub fn routes(&self, host_addrs: &[Ipv4Addr]) -> Vec<Route> {
        if self.mode == EgressMode::None {
            return Vec::new();
        }
        let mut routes: Vec<Route> = Vec::new();
        // An explicit deny wins over an allow of the same prefix; an allow wins over a
        // fixed range of the same prefix. The kernel keeps one route per prefix.
        for c in &self.deny {
            push_unique(&mut routes, Route::Prohibit(*c));
        }
        for c in &self.allow {
            push_unique(&mut routes, Route::Via(*c));
        }
        for c in self.blocked(host_addrs) {
            push_unique(&mut routes, Route::Prohibit(c));
        }
        routes
    }

    pub fn keeps_default_route(&self) -> bool {
        self.mode == EgressMode::Internet && self.allow.is_empty()
    }

    /// Whether a connection to `ip` would leave the desktop: longest prefix wins, as in
    /// the kernel's routing table the policy produces.
    pub fn allows(&self, ip: IpAddr, host_addrs: &[Ipv4Addr]) -> bool {
        let IpAddr::V4(ip) = ip else {
            return false; // no IPv6 route exists in a desktop
        };
        if self.mode == EgressMode::None {
            return false;
        }
        let best = self
            .routes(host_addrs)
            .into_iter()
            .filter(|r| r.cidr().contains(ip))
            .max_by_key(|r| r.cidr().prefix());
        match best {
            Some(Route::Via(_)) => true,
            Some(Route::Prohibit(_)) => false,
            None => self.keeps_default_route(),
        }
    }
}

fn push_unique(routes: &mut Vec<Route>, route: Route) {
    if !routes.iter().any(|r| r.cidr() == route.cidr()) {
        routes.push(route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn internet() -> EgressPolicy {
        EgressPolicy {
            mode: EgressMode::Internet,
            ..Default::default()
        }
    }

    #[test]
    fn cidrs_parse_normalise_and_reject_garbage() {
        assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_string(), "0.0.0.0/0");
        for bad in ["10.0.0.0/33", "10.0.0/8", "::1/128", "example.com", "1.2.3.4/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn with_no_egress_nothing_is_reachable() {
        let none = EgressPolicy::default();
        for dest in ["1.1.1.1", "127.0.0.1", "10.0.2.2", "169.254.169.254"] {
            assert!(!none.allows(ip(dest), &[]), "{dest}");
        }
        assert!(none.routes(&[]).is_empty());
        assert!(!none.keeps_default_route());
    }

    #[test]
    fn internet_mode_blocks_loopback_private_link_local_and_metadata() {
        let p = internet();
        for dest in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
        ] {
            assert!(!p.allows(ip(dest), &[]), "{dest} should be blocked");
        }
        for dest in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "93.184.216.34"] {
            assert!(p.allows(ip(dest), &[]), "{dest} should be allowed");
        }
    }

    #[test]
    fn the_hosts_own_public_address_is_blocked() {
        let host = [Ipv4Addr::new(203, 0, 113, 7)];
        assert!(!internet().allows(ip("203.0.113.7"), &host));
        assert!(internet().allows(ip("203.0.113.8"), &host));
        assert!(internet().routes(&host).contains(&Route::Prohibit("203.0.113.7/32".parse().unwrap())));
    }

    #[test]
    fn operator_deny_and_allow_lists() {
        let deny = EgressPolicy {
            deny: vec!["93.184.216.0/24".parse().unwrap()],
            ..internet()
        };
        assert!(!deny.allows(ip("93.184.216.34"), &[]));
        assert!(deny.allows(ip("1.1.1.1"), &[]));

        let allow = EgressPolicy {
            allow: vec!["93.184.216.0/24".parse().unwrap(), "10.9.8.7".parse().unwrap()],
            deny: vec!["93.184.216.66".parse().unwrap()],
            ..internet()
        };
        assert!(!allow.keeps_default_route());
        assert!(allow.allows(ip("93.184.216.34"), &[]));
        assert!(!allow.allows(ip("93.184.216.66"), &[]), "a more specific deny wins");
        assert!(!allow.allows(ip("1.1.1.1"), &[]), "not on the allowlist");
        assert!(allow.allows(ip("10.9.8.7"), &[]), "an explicit allow opens a private address");
        assert!(!allow.allows(ip("10.9.8.6"), &[]));
        assert!(!allow.allows(ip("169.254.169.254"), &[]));
    }

    #[test]
    fn generated_routes_are_what_ip_route_gets() {
        let p = EgressPolicy {
            allow: vec!["10.9.8.7".parse().unwrap()],
            deny: vec!["10.0.0.0/8".parse().unwrap()],
            ..internet()
        };
        let routes = p.routes(&[Ipv4Addr::new(192, 0, 2, 1)]);
        let lines: Vec<String> = routes.iter().map(|r| r.ip_args().join(" ")).collect();
        assert_eq!(lines[0], "route add prohibit 10.0.0.0/8");
        assert_eq!(lines[1], "route add 10.9.8.7/32 via 10.0.2.2");
        assert!(lines.contains(&"route add prohibit 169.254.0.0/16".to_owned()));
        assert!(lines.contains(&"route add prohibit 127.0.0.0/8".to_owned()));
        assert!(lines.contains(&"route add prohibit 192.0.2.1/32".to_owned()));
        // One route per prefix: the kernel would refuse a second one.
        let mut prefixes: Vec<Cidr> = routes.iter().map(Route::cidr).collect();
        prefixes.sort_by_key(|c| (u32::from(c.network), c.prefix));
        prefixes.dedup();
        assert_eq!(prefixes.len(), routes.len());
        // The matcher agrees with the routes for every route's own address.
        for r in &routes {
            let dest = IpAddr::V4(r.cidr().network);
            assert_eq!(p.allows(dest, &[Ipv4Addr::new(192, 0, 2, 1)]), matches!(r, Route::Via(_)), "{r:?}");
        }
    }
}
