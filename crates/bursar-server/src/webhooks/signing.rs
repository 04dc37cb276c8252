//! Webhook secrets and signatures, the Standard Webhooks scheme: a secret is
//! `whsec_` and the base64 of random bytes; a delivery carries
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature:
//! v1,<base64 of HMAC-SHA256(secret bytes, "{id}.{timestamp}.{body}")>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Random bytes in a new secret: 192 bits, beyond any guessing, and within
/// the 24 to 64 bytes Standard Webhooks asks for.
pub const SECRET_BYTES: usize = 24;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new secret, `whsec_` and the base64 of `SECRET_BYTES` random bytes.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
}

/// The key a secret stands for: the base64 decoding of what follows
/// `whsec_`. `None` for text that is not such a secret.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX)?)
        .ok()
        .filter(|key| !key.is_empty())
}

/// The `webhook-signature` header of a delivery: `v1,` and the base64 of
/// HMAC-SHA256 over `{id}.{timestamp}.{body}`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn the_specification_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a secret");
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn new_secrets_decode_to_their_bytes() {
        let secret = new_secret().expect("random bytes");
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_key(&secret).map(|key| key.len()), Some(SECRET_BYTES));
        assert_ne!(secret, new_secret().expect("random bytes"));
        assert_eq!(secret_key("whsec_"), None);
        assert_eq!(secret_key("whsec_!!"), None);
        assert_eq!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
    }
}
