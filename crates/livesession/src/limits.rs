//! Connection limits: how many WebSockets one client address and one session may hold,
//! and how fast one address may open them or call the endpoints that cost something
//! (session creation, checkout, token refresh, failed webhook signatures). A refused
//! WebSocket is closed with 4009 and a reason that says when to retry; a refused HTTP
//! request gets 429 with `Retry-After`.
//!
//! "One address" is the client's address as [`crate::proxy`] decides it (behind a trusted
//! proxy, from `X-Forwarded-For`), IPv4-mapped IPv6 folded to IPv4, and IPv6 grouped by
//! /64: one subscriber usually holds a whole /64, and per-address limits that a client
//! escapes by changing its interface identifier would limit nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub per_ip: usize,
    pub per_session: usize,
    /// WebSocket connection attempts.
    pub connect: Rate,
    /// `POST /api/sessions` and the free-mode `POST /start`.
    pub create: Rate,
    /// `POST /api/checkout` and `POST /api/checkout/claim`.
    pub checkout: Rate,
    /// `POST /api/sessions/{id}/token`.
    pub token: Rate,
    /// Stripe webhook deliveries whose signature fails (verified ones are never limited).
    pub webhook_failures: Rate,
    /// Wrong admin tokens: each one takes from the bucket, and while it is empty every
    /// admin-token request from the address (the right token too) is refused.
    pub admin_failures: Rate,
}

/// A token bucket's size: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// A usable rate: at least one attempt per 100 s, bursts of at least one.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second: if per_second.is_finite() {
                per_second.max(0.01)
            } else {
                0.01
            },
            burst: if burst.is_finite() {
                burst.max(1.0)
            } else {
                1.0
            },
        }
    }
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateClass {
    Connect,
    Create,
    Checkout,
    Token,
    WebhookFailure,
    /// A wrong admin token ([`ConnectionLimits::admin_locked`], [`ConnectionLimits::admin_failed`]).
    AdminFailure,
}

impl RateClass {
    pub const ALL: [RateClass; 6] = [
        RateClass::Connect,
        RateClass::Create,
        RateClass::Checkout,
        RateClass::Token,
        RateClass::WebhookFailure,
        RateClass::AdminFailure,
    ];

    /// The class's name in `/metrics` (docs/operations.md).
    pub fn as_str(self) -> &'static str {
        match self {
            RateClass::Connect => "connect",
            RateClass::Create => "create",
            RateClass::Checkout => "checkout",
            RateClass::Token => "token",
            RateClass::WebhookFailure => "webhook_failure",
            RateClass::AdminFailure => "admin_failure",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The key limits are counted under: IPv4-mapped addresses as IPv4, IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

#[derive(Default)]
struct Counts {
    by_ip: HashMap<IpAddr, usize>,
    by_session: HashMap<String, usize>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets per client address for one class of requests.
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Whether `ip` could make an attempt now, without counting one.
    pub fn peek(&self, ip: IpAddr) -> Result<(), Refused> {
        let now = Instant::now();
        let Rate { per_second, burst } = self.rate;
        let buckets = self.buckets.lock().unwrap();
        let Some(bucket) = buckets.get(&client_key(ip)) else {
            return Ok(());
        };
        let tokens = (bucket.tokens
            + now.duration_since(bucket.updated).as_secs_f64() * per_second)
            .min(burst);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Refused::Rate(Duration::from_secs_f64(
                ((1.0 - tokens) / per_second).max(1.0),
            )))
        }
    }

    /// Counts one attempt from `ip`; refused with the time until one is allowed again.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Refused> {
        let now = Instant::now();
        let Rate { per_second, burst } = self.rate;
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 10_000 {
            // Forget addresses whose bucket has refilled: they would start full anyway.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(client_key(ip)).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens = (bucket.tokens
            + now.duration_since(bucket.updated).as_secs_f64() * per_second)
            .min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refused::Rate(Duration::from_secs_f64(
                ((1.0 - bucket.tokens) / per_second).max(1.0),
            )))
        }
    }
}

pub struct ConnectionLimits {
    caps: Arc<ConnectionCaps>,
    connect: RateLimiter,
    create: RateLimiter,
    checkout: RateLimiter,
    token: RateLimiter,
    webhook_failures: RateLimiter,
    admin_failures: RateLimiter,
    /// Refusals per class, by [`RateClass::index`] (`/metrics`).
    refused: [AtomicU64; RateClass::ALL.len()],
}

/// Why a connection was refused, for the 4009 close reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Too many attempts; retry after this long.
    Rate(Duration),
    PerIp(usize),
    PerSession(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Rate(after) => write!(
                f,
                "too many connection attempts; retry in {} s",
                Refused::seconds(*after)
            ),
            Refused::PerIp(n) => write!(
                f,
                "too many connections from this address (limit {n}); retry in 30 s"
            ),
            Refused::PerSession(n) => write!(
                f,
                "too many connections to this session (limit {n}); retry in 30 s"
            ),
        }
    }
}

impl Refused {
    /// Whole seconds to wait, rounded up, at least one.
    pub fn seconds(after: Duration) -> u64 {
        (after.as_secs_f64().ceil() as u64).max(1)
    }

    /// Seconds until a retry may succeed (`Retry-After`).
    pub fn retry_after(&self) -> u64 {
        match self {
            Refused::Rate(after) => Refused::seconds(*after),
            Refused::PerIp(_) | Refused::PerSession(_) => 30,
        }
    }
}

/// Caps on live connections per client address and per session. The WebSocket limits
/// hold one; the DevTools endpoint has its own, with its own caps.
pub struct ConnectionCaps {
    per_ip: usize,
    per_session: usize,
    counts: Mutex<Counts>,
    /// Connections refused by the per-address and the per-session cap (`/metrics`).
    refused_per_ip: AtomicU64,
    refused_per_session: AtomicU64,
}

/// A held connection; dropping it frees its place.
pub struct ConnectionSlot {
    limits: Arc<ConnectionCaps>,
    ip: IpAddr,
    session: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap();
        decrement(&mut counts.by_ip, &self.ip);
        decrement(&mut counts.by_session, &self.session);
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl ConnectionLimits {
    pub fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            caps: ConnectionCaps::new(config.per_ip, config.per_session),
            connect: RateLimiter::new(config.connect),
            create: RateLimiter::new(config.create),
            checkout: RateLimiter::new(config.checkout),
            token: RateLimiter::new(config.token),
            webhook_failures: RateLimiter::new(config.webhook_failures),
            admin_failures: RateLimiter::new(config.admin_failures),
            refused: Default::default(),
        })
    }

    /// Counts one WebSocket connection attempt from `ip` (token bucket).
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Refused> {
        self.check(RateClass::Connect, ip)
    }

    /// Counts one request of `class` from `ip`.
    pub fn check(&self, class: RateClass, ip: IpAddr) -> Result<(), Refused> {
        match class {
            RateClass::Connect => &self.connect,
            RateClass::Create => &self.create,
            RateClass::Checkout => &self.checkout,
            RateClass::Token => &self.token,
            RateClass::WebhookFailure => &self.webhook_failures,
            RateClass::AdminFailure => &self.admin_failures,
        }
        .attempt(ip)
        .inspect_err(|_| self.count_refusal(class))
    }

    /// Refused while `ip` has used up its wrong admin tokens: then every admin-token
    /// request from it, the right token included, waits for the bucket to refill.
    pub fn admin_locked(&self, ip: IpAddr) -> Result<(), Refused> {
        self.admin_failures
            .peek(ip)
            .inspect_err(|_| self.count_refusal(RateClass::AdminFailure))
    }

    fn count_refusal(&self, class: RateClass) {
        self.refused[class.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests (or WebSocket attempts) refused so far by `class`'s rate limit; for
    /// [`RateClass::AdminFailure`], requests refused while their address was locked out.
    pub fn refusals(&self, class: RateClass) -> u64 {
        self.refused[class.index()].load(Ordering::Relaxed)
    }

    /// The WebSocket caps per address and per session (control and VNC).
    pub fn caps(&self) -> &ConnectionCaps {
        &self.caps
    }

    /// Counts one wrong admin token from `ip`.
    pub fn admin_failed(&self, ip: IpAddr) {
        let _ = self.admin_failures.attempt(ip);
    }

    /// Takes a place for a connection from `ip` to `session`.
    pub fn acquire(&self, ip: IpAddr, session: &str) -> Result<ConnectionSlot, Refused> {
        self.caps.acquire(ip, session)
    }
}

impl ConnectionCaps {
    pub fn new(per_ip: usize, per_session: usize) -> Arc<Self> {
        Arc::new(Self {
            per_ip,
            per_session,
            counts: Mutex::default(),
            refused_per_ip: AtomicU64::new(0),
            refused_per_session: AtomicU64::new(0),
        })
    }

    /// Connections refused so far by the per-address cap and by the per-session cap.
    pub fn refusals(&self) -> (u64, u64) {
        (
            self.refused_per_ip.load(Ordering::Relaxed),
            self.refused_per_session.load(Ordering::Relaxed),
        )
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr, session: &str) -> Result<ConnectionSlot, Refused> {
        let ip = client_key(ip);
        let mut counts = self.counts.lock().unwrap();
        if counts.by_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip {
            self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::PerIp(self.per_ip));
        }
        if counts.by_session.get(session).copied().unwrap_or(0) >= self.per_session {
            self.refused_per_session.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::PerSession(self.per_session));
        }
        *counts.by_ip.entry(ip).or_default() += 1;
        *counts.by_session.entry(session.to_owned()).or_default() += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
            session: session.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: usize, per_session: usize) -> Arc<ConnectionLimits> {
        let rate = Rate::new(2.0, 3.0);
        ConnectionLimits::new(LimitsConfig {
            per_ip,
            per_session,
            connect: rate,
            create: Rate::new(1.0, 1.0),
            checkout: rate,
            token: rate,
            webhook_failures: rate,
            admin_failures: rate,
        })
    }

    #[test]
    fn caps_apply_per_address_and_per_session_and_free_up_on_drop() {
        let l = limits(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let s1 = l.acquire(a, "s").unwrap();
        let _s2 = l.acquire(a, "s").unwrap();
        assert_eq!(l.acquire(a, "t").err(), Some(Refused::PerIp(2)));
        let _s3 = l.acquire(b, "s").unwrap();
        assert_eq!(l.acquire(b, "s").err(), Some(Refused::PerSession(3)));
        drop(s1);
        assert!(
            l.acquire(b, "s").is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn attempts_are_rate_limited_with_a_retry_time() {
        let l = limits(10, 10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            l.attempt(ip).unwrap();
        }
        let Err(Refused::Rate(after)) = l.attempt(ip) else {
            panic!("the burst is spent")
        };
        assert!(after >= Duration::from_secs(1));
        assert!(Refused::Rate(after).to_string().contains("retry in"));
        assert!(
            l.attempt("127.0.0.9".parse().unwrap()).is_ok(),
            "other addresses are not affected"
        );
        std::thread::sleep(Duration::from_millis(600));
        assert!(l.attempt(ip).is_ok(), "the bucket refills");
    }

    #[test]
    fn classes_have_their_own_buckets() {
        let l = limits(10, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        l.check(RateClass::Create, ip).unwrap();
        let Err(refused) = l.check(RateClass::Create, ip) else {
            panic!("a burst of one")
        };
        assert_eq!(refused.retry_after(), 1);
        for class in [RateClass::Connect, RateClass::Checkout, RateClass::Token] {
            assert!(l.check(class, ip).is_ok(), "{class:?} is counted apart");
        }
        // Refusals are counted per class (what `/metrics` shows).
        assert_eq!(l.refusals(RateClass::Create), 1);
        assert_eq!(l.refusals(RateClass::Connect), 0);
    }

    #[test]
    fn cap_refusals_are_counted_per_cap() {
        let l = limits(1, 2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let _held = l.acquire(a, "s").unwrap();
        assert!(l.acquire(a, "t").is_err());
        let _b = l.acquire(b, "s").unwrap();
        assert!(l.acquire("192.0.2.3".parse().unwrap(), "s").is_err());
        assert!(l.acquire(a, "u").is_err());
        assert_eq!(l.caps().refusals(), (2, 1));
    }

    #[test]
    fn wrong_admin_tokens_lock_the_address_out_until_the_bucket_refills() {
        let l = limits(10, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.admin_locked(ip).is_ok(), "peeking counts nothing");
        }
        for _ in 0..3 {
            l.admin_locked(ip).unwrap();
            l.admin_failed(ip);
        }
        let Err(Refused::Rate(after)) = l.admin_locked(ip) else {
            panic!("three wrong tokens spend a burst of three")
        };
        assert!(after >= Duration::from_secs(1));
        assert!(
            l.admin_locked("192.0.2.2".parse().unwrap()).is_ok(),
            "other addresses go on"
        );
        std::thread::sleep(Duration::from_millis(600));
        assert!(l.admin_locked(ip).is_ok(), "the bucket refills");
    }

    #[test]
    fn ipv6_counts_by_its_slash_64_and_mapped_ipv4_as_ipv4() {
        let l = limits(1, 10);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = l.acquire(a, "s").unwrap();
        assert_eq!(l.acquire(b, "s").err(), Some(Refused::PerIp(1)));
        assert!(l.acquire(other, "s").is_ok());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), v4);
        let _v4 = l.acquire(v4, "t").unwrap();
        assert_eq!(l.acquire(mapped, "t").err(), Some(Refused::PerIp(1)));
    }

    #[test]
    fn retry_times_round_up() {
        assert_eq!(Refused::seconds(Duration::from_millis(1500)), 2);
        assert_eq!(Refused::seconds(Duration::from_millis(10)), 1);
        assert_eq!(Refused::PerIp(3).retry_after(), 30);
    }
}
