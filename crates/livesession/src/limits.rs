//! Connection limits: how many WebSockets one client address and one session may hold,
//! and how fast one address may open them. A refused connection is closed with 4009 and a
//! reason that says when to retry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub per_ip: usize,
    pub per_session: usize,
    /// Connection attempts per second per address, sustained.
    pub attempts_per_second: f64,
    /// Attempts an address may make at once before the rate applies.
    pub attempt_burst: f64,
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

pub struct ConnectionLimits {
    config: LimitsConfig,
    counts: Mutex<Counts>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
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
                after.as_secs().max(1)
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

/// A held connection; dropping it frees its place.
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
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
            config,
            counts: Mutex::default(),
            buckets: Mutex::default(),
        })
    }

    /// Counts one connection attempt from `ip` (token bucket).
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Refused> {
        let now = Instant::now();
        let (rate, burst) = (self.config.attempts_per_second, self.config.attempt_burst);
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 10_000 {
            // Forget addresses whose bucket has refilled: they would start full anyway.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Refused::Rate(Duration::from_secs_f64(
                ((1.0 - bucket.tokens) / rate).max(1.0),
            )))
        }
    }

    /// Takes a place for a connection from `ip` to `session`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, session: &str) -> Result<ConnectionSlot, Refused> {
        let mut counts = self.counts.lock().unwrap();
        if counts.by_ip.get(&ip).copied().unwrap_or(0) >= self.config.per_ip {
            return Err(Refused::PerIp(self.config.per_ip));
        }
        if counts.by_session.get(session).copied().unwrap_or(0) >= self.config.per_session {
            return Err(Refused::PerSession(self.config.per_session));
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
        ConnectionLimits::new(LimitsConfig {
            per_ip,
            per_session,
            attempts_per_second: 2.0,
            attempt_burst: 3.0,
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
}
