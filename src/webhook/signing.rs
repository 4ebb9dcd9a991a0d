//! Standard Webhooks signatures on deliveries (docs/webhooks.md); receivers verify them with any
//! Standard Webhooks library, as the tests do with the reference one.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};

/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        // docs/webhooks.md: the reference implementation's own test vector.
        let key = crate::config::WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .unwrap()
            .key();
        let sig = sign(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    proptest::proptest! {
        /// Whatever the id, key and body (text: our bodies are JSON, and the reference library
        /// reads them as UTF-8), the reference library (not our code) accepts what we sign, and
        /// refuses it for another body.
        #[test]
        fn the_reference_verifier_accepts_every_signature(
            id in "[a-zA-Z0-9_]{1,40}",
            key in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
            body in ".{0,300}",
        ) {
            let body = body.into_bytes();
            let now = chrono::Utc::now().timestamp();
            let secret = format!("whsec_{}", B64.encode(&key));
            let receiver = standardwebhooks::Webhook::new(&secret).unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert("webhook-id", id.parse().unwrap());
            headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
            headers.insert("webhook-signature", sign(&key, &id, now, &body).parse().unwrap());
            proptest::prop_assert!(receiver.verify(&body, &headers).is_ok());
            let mut other = body.clone();
            other.push(b'!');
            proptest::prop_assert!(receiver.verify(&other, &headers).is_err());
        }
    }
}
