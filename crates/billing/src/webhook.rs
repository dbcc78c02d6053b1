//! Webhook signatures, as Stripe documents them: the `Stripe-Signature` header carries
//! `t=<unix seconds>` and one or more `v1=<hex HMAC-SHA256>` (several while a secret is
//! being rolled); the signed message is `"{t}.{raw body}"` under the endpoint's secret.
//! Any `v1` may match; comparison is constant-time; `t` must be within the tolerance.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("no v1 signature matches")]
    Mismatch,
    #[error("the signature timestamp is outside the tolerance")]
    Stale,
}

/// Verifies `header` for `payload` with `secret` at `now` (Unix seconds).
pub fn verify_signature(
    payload: &[u8],
    header: Option<&str>,
    secret: &str,
    tolerance_secs: i64,
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                )
            }
            // Undecodable entries cannot match; skip them rather than reject the header.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {} // v0 (test-mode legacy) and future schemes are ignored
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    // `verify_slice` compares in constant time; each candidate gets its own clone.
    if !signatures
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// A `Stripe-Signature` header value for `payload`, as Stripe computes it. For tools and
/// tests that play Stripe; the server only verifies.
pub fn signature_header(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The parts of a Stripe event we read. `data.object` depends on the type.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

impl Event {
    pub fn object_str(&self, field: &str) -> Option<&str> {
        self.data.object.get(field)?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, payload: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(payload);
        hex::encode(mac.finalize().into_bytes())
    }

    const NOW: i64 = 1_800_000_000;
    const BODY: &[u8] =
        br#"{"id":"evt_1","type":"checkout.session.completed","data":{"object":{}}}"#;

    #[test]
    fn a_valid_signature_passes_and_any_v1_may_match() {
        let good = sign("whsec_a", NOW, BODY);
        let header = format!("t={NOW},v1={good}");
        assert_eq!(
            verify_signature(BODY, Some(&header), "whsec_a", 300, NOW),
            Ok(())
        );
        let rolled = format!(
            "t={NOW},v1={},v1={good},v0=abcd",
            sign("whsec_old", NOW, BODY)
        );
        assert_eq!(
            verify_signature(BODY, Some(&rolled), "whsec_a", 300, NOW + 10),
            Ok(())
        );
    }

    #[test]
    fn bad_signatures_are_refused_with_their_reason() {
        let good = sign("whsec_a", NOW, BODY);
        assert_eq!(
            verify_signature(BODY, None, "whsec_a", 300, NOW),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(BODY, Some("garbage"), "whsec_a", 300, NOW),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(BODY, Some(&format!("v1={good}")), "whsec_a", 300, NOW),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(BODY, Some(&format!("t={NOW}")), "whsec_a", 300, NOW),
            Err(SignatureError::Malformed)
        );
        let header = format!("t={NOW},v1={good}");
        assert_eq!(
            verify_signature(BODY, Some(&header), "whsec_b", 300, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"{\"tampered\":1}", Some(&header), "whsec_a", 300, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(BODY, Some(&header), "whsec_a", 300, NOW + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(BODY, Some(&header), "whsec_a", 300, NOW - 301),
            Err(SignatureError::Stale)
        );
        // The timestamp is part of the signed message: changing it breaks the signature.
        let moved = format!("t={},v1={good}", NOW + 1);
        assert_eq!(
            verify_signature(BODY, Some(&moved), "whsec_a", 300, NOW),
            Err(SignatureError::Mismatch)
        );
    }
}
