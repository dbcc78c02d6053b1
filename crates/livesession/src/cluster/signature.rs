//! How a node proves that a request comes from another node of the cluster: the
//! `X-Livesession-Relay` header, an HMAC-SHA256 under the cluster secret over the sending
//! node, the time, the client the request is relayed for, the method and the path (with
//! its query). The receiving node accepts it within [`MAX_SKEW`] of its own clock, and
//! then counts the request under the named client's address (its limits, its log lines)
//! rather than the relaying node's.
//!
//! It authenticates the request head, not the connection: nodes talk plain HTTP on their
//! internal addresses, so those belong on a private network (docs/scaling.md).

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::ClusterSecret;

pub const RELAY_HEADER: &str = "x-livesession-relay";

/// How far apart the sending and receiving nodes' clocks (and the relay's delay) may be.
pub const MAX_SKEW_MS: i64 = 30_000;

/// A request relayed by another node, as its valid signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedFrom {
    pub node_id: String,
    pub client_ip: IpAddr,
    pub https: bool,
}

fn mac(secret: &ClusterSecret, from: &str, at_ms: i64, client: IpAddr, https: bool, method: &str, path: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    mac.update(format!("v1\n{from}\n{at_ms}\n{client}\n{}\n{method}\n{path}", u8::from(https)).as_bytes());
    mac
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The header value for relaying `method path` for `client` from node `from`.
pub fn sign(secret: &ClusterSecret, from: &str, client: IpAddr, https: bool, method: &str, path: &str) -> String {
    let at = now_ms();
    let sig = hex::encode(mac(secret, from, at, client, https, method, path).finalize().into_bytes());
    format!("v1 {from} {at} {client} {} {sig}", u8::from(https))
}

/// Checks a relay header: `Ok` with what it says when its signature is valid and fresh.
/// The reason for a refusal names no secret.
pub fn verify_relay(secret: &ClusterSecret, value: &str, method: &str, path: &str) -> Result<RelayedFrom, &'static str> {
    let parts: Vec<&str> = value.split(' ').collect();
    let [version, from, at, client, https, sig] = parts[..] else {
        return Err("malformed relay header");
    };
    if version != "v1" {
        return Err("unknown relay header version");
    }
    let at: i64 = at.parse().map_err(|_| "malformed relay time")?;
    let client: IpAddr = client.parse().map_err(|_| "malformed relayed client address")?;
    let https = match https {
        "0" => false,
        "1" => true,
        _ => return Err("malformed relay header"),
    };
    let sig = hex::decode(sig).map_err(|_| "malformed relay signature")?;
    mac(secret, from, at, client, https, method, path)
        .verify_slice(&sig)
        .map_err(|_| "the relay signature does not match (another cluster secret?)")?;
    if (now_ms() - at).abs() > MAX_SKEW_MS {
        return Err("the relay header is stale (are the nodes' clocks apart?)");
    }
    Ok(RelayedFrom { node_id: from.to_owned(), client_ip: client, https })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::parse(s).unwrap()
    }

    #[test]
    fn a_signed_head_verifies_only_unchanged_and_under_the_same_secret() {
        let k = secret("0123456789abcdef0123456789abcdef");
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let value = sign(&k, "node-a", client, true, "GET", "/api/sessions/s1/vnc?token=t");
        let ok = verify_relay(&k, &value, "GET", "/api/sessions/s1/vnc?token=t").unwrap();
        assert_eq!(ok, RelayedFrom { node_id: "node-a".into(), client_ip: client, https: true });

        // Another path, method or secret: refused.
        assert!(verify_relay(&k, &value, "GET", "/api/sessions/s2/vnc?token=t").is_err());
        assert!(verify_relay(&k, &value, "POST", "/api/sessions/s1/vnc?token=t").is_err());
        let other = secret("fedcba9876543210fedcba9876543210");
        assert!(verify_relay(&other, &value, "GET", "/api/sessions/s1/vnc?token=t").is_err());
        // A changed client address or node in the header: the signature no longer matches.
        let forged = value.replace("203.0.113.7", "198.51.100.1");
        assert!(verify_relay(&k, &forged, "GET", "/api/sessions/s1/vnc?token=t").is_err());
        let forged = value.replace("node-a", "node-b");
        assert!(verify_relay(&k, &forged, "GET", "/api/sessions/s1/vnc?token=t").is_err());
        assert_eq!(verify_relay(&k, "v1 x", "GET", "/"), Err("malformed relay header"));
    }

    #[test]
    fn a_stale_head_is_refused() {
        let k = secret("0123456789abcdef0123456789abcdef");
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let at = now_ms() - MAX_SKEW_MS - 1_000;
        let sig = hex::encode(mac(&k, "n", at, client, false, "GET", "/").finalize().into_bytes());
        let value = format!("v1 n {at} {client} 0 {sig}");
        assert_eq!(
            verify_relay(&k, &value, "GET", "/"),
            Err("the relay header is stale (are the nodes' clocks apart?)")
        );
    }
}
