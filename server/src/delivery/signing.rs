//! Chatwoot's webhook request headers (`Webhooks::Trigger`, 4.9+): a receiver written for
//! Chatwoot verifies rtgate's deliveries unchanged.
//!
//! - `X-Chatwoot-Delivery`: the delivery id, the same on every retry of one delivery.
//! - With a secret: `X-Chatwoot-Timestamp` (Unix seconds) and `X-Chatwoot-Signature:
//!   sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "X-Chatwoot-Delivery";
/// Header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "X-Chatwoot-Timestamp";
/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Chatwoot-Signature";

/// The MAC of `"<timestamp>.<body>"` under `secret`.
fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `sha256=<hex>` of `"<timestamp>.<body>"` under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Whether `header` is the signature of `body` at `timestamp` under `secret` (compared in
/// constant time), as a receiver checks it.
pub fn verify(secret: &[u8], timestamp: u64, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&given).is_ok()
}

/// The headers of one attempt: content type, the delivery id when the destination has
/// one, and timestamp and signature when it has a secret (Chatwoot's installation webhook
/// and automation webhooks send neither).
pub fn headers(
    delivery_id: Option<&str>,
    secret: Option<&[u8]>,
    timestamp: u64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("Content-Type", "application/json".to_string()),
        ("Accept", "application/json".to_string()),
    ];
    if let Some(id) = delivery_id {
        out.push((DELIVERY_HEADER, id.to_string()));
    }
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        out.push((TIMESTAMP_HEADER, timestamp.to_string()));
        out.push((SIGNATURE_HEADER, signature(secret, timestamp, body)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"event":"message_created"}' |
        //   openssl dgst -sha256 -hmac secret
        let sig = signature(b"secret", 1_700_000_000, br#"{"event":"message_created"}"#);
        assert_eq!(
            sig,
            "sha256=4fbf414139098588cc31e819ccebf960699d147368b51572e7657c1332d9c962"
        );
        assert!(verify(
            b"secret",
            1_700_000_000,
            br#"{"event":"message_created"}"#,
            &sig
        ));
        assert!(!verify(
            b"secret",
            1_700_000_001,
            br#"{"event":"message_created"}"#,
            &sig
        ));
        assert!(!verify(
            b"other",
            1_700_000_000,
            br#"{"event":"message_created"}"#,
            &sig
        ));
        assert!(!verify(
            b"secret",
            1_700_000_000,
            br#"{"event":"message_updated"}"#,
            &sig
        ));
        assert!(!verify(b"secret", 1_700_000_000, b"x", "md5=00"));
    }

    #[test]
    fn headers_carry_the_delivery_id_and_sign_only_with_a_secret() {
        let h = headers(Some("d-1"), Some(b"s"), 5, b"{}");
        let get = |name: &str| h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        assert_eq!(get(DELIVERY_HEADER).as_deref(), Some("d-1"));
        assert_eq!(get(TIMESTAMP_HEADER).as_deref(), Some("5"));
        assert_eq!(get(SIGNATURE_HEADER), Some(signature(b"s", 5, b"{}")));
        assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
        let unsigned = headers(None, None, 5, b"{}");
        assert!(
            unsigned
                .iter()
                .all(|(k, _)| ![DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER].contains(k))
        );
        assert_eq!(
            headers(None, Some(b""), 5, b"{}").len(),
            2,
            "an empty secret signs nothing"
        );
    }
}
