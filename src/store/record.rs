//! The stored form of a shared token: the Redis key, the layout of the value and its
//! optional encryption.
//!
//! A value is `<fingerprint>:j:<JSON>` in clear, or `<fingerprint>:x:<base64url of nonce
//! and ciphertext>` when encrypted. The fingerprint is the SHA-256 of the access token in
//! lowercase hex, so a Lua script can compare it without decoding the rest.

use std::fmt;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// The length of a token fingerprint in bytes: SHA-256 in hex.
pub(super) const FINGERPRINT_LEN: usize = 64;

/// The maximum length of a value that is decoded; a longer one is treated as invalid. Two tokens of
/// [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN) with JSON, base64 and the AEAD tag fit in it.
const MAX_VALUE_LEN: usize = 64 * 1024;

/// The length of an XChaCha20-Poly1305 nonce in bytes.
const NONCE_LEN: usize = 24;

/// Returns the Redis key of the token for this API and user: the prefix, a colon and the
/// SHA-256, in hex, of the base URL, a NUL byte and the username.
pub(super) fn token_key(prefix: &str, base_url: &str, username: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(base_url.as_bytes());
    hasher.update([0]);
    hasher.update(username.as_bytes());
    format!("{prefix}:{}", to_hex(&hasher.finalize()))
}

/// Returns the fingerprint of an access token: its SHA-256 in lowercase hex.
pub(super) fn fingerprint(access_token: &str) -> String {
    to_hex(&Sha256::digest(access_token.as_bytes()))
}

fn to_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Returns the wall-clock time in milliseconds since the Unix epoch.
pub(super) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A token as stored in Redis, with wall-clock deadlines so that every process reads the
/// same expiry.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredToken {
    pub(super) access_token: String,
    /// When the process that fetched the token received it, in Unix milliseconds.
    pub(super) received_at_ms: u64,
    /// When the access token expires, in Unix milliseconds.
    pub(super) expires_at_ms: u64,
    pub(super) refresh_token: Option<String>,
    /// When the refresh token expires, in Unix milliseconds; `None` when the server gave
    /// no lifetime.
    pub(super) refresh_expires_at_ms: Option<u64>,
}

impl Drop for StoredToken {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(refresh_token) = &mut self.refresh_token {
            refresh_token.zeroize();
        }
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("received_at_ms", &self.received_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("refresh_expires_at_ms", &self.refresh_expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// The reason a stored value could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InvalidValue(pub(super) &'static str);

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Encodes and decodes stored values, encrypting them when a key is set.
pub(super) struct Codec {
    cipher: Option<XChaCha20Poly1305>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl Codec {
    pub(super) fn new(key: Option<&[u8; 32]>) -> Self {
        Codec {
            cipher: key.map(|key| XChaCha20Poly1305::new(key.into())),
        }
    }

    /// Encodes `token` for the Redis key `key`. An encrypted value is bound to its key
    /// (as associated data), so it cannot be copied to another user's key.
    pub(super) fn encode(&self, key: &str, token: &StoredToken) -> Result<Vec<u8>, InvalidValue> {
        let json = Zeroizing::new(
            serde_json::to_vec(token).map_err(|_| InvalidValue("cannot be serialized"))?,
        );
        let mut value = fingerprint(&token.access_token).into_bytes();
        match &self.cipher {
            None => {
                value.extend_from_slice(b":j:");
                value.extend_from_slice(&json);
            }
            Some(cipher) => {
                let mut nonce = [0u8; NONCE_LEN];
                getrandom::fill(&mut nonce)
                    .map_err(|_| InvalidValue("no random nonce: the OS random source failed"))?;
                let payload = Payload {
                    msg: &json,
                    aad: key.as_bytes(),
                };
                let ciphertext = cipher
                    .encrypt(&XNonce::from(nonce), payload)
                    .map_err(|_| InvalidValue("cannot be encrypted"))?;
                let mut sealed = nonce.to_vec();
                sealed.extend_from_slice(&ciphertext);
                value.extend_from_slice(b":x:");
                value.extend_from_slice(URL_SAFE_NO_PAD.encode(sealed).as_bytes());
            }
        }
        Ok(value)
    }

    /// Decodes a value read from the Redis key `key`, checking that its fingerprint matches
    /// the access token inside.
    pub(super) fn decode(&self, key: &str, value: &[u8]) -> Result<StoredToken, InvalidValue> {
        if value.len() > MAX_VALUE_LEN {
            return Err(InvalidValue("is longer than the maximum of 64 KiB"));
        }
        if value.len() < FINGERPRINT_LEN + 3 || value[FINGERPRINT_LEN] != b':' {
            return Err(InvalidValue("does not start with a token fingerprint"));
        }
        let (stored_fingerprint, rest) = value.split_at(FINGERPRINT_LEN);
        let body = &rest[3..];
        let json = match (&rest[..3], &self.cipher) {
            (b":j:", None) => Zeroizing::new(body.to_vec()),
            (b":x:", Some(cipher)) => decrypt(cipher, key, body)?,
            (b":x:", None) => {
                return Err(InvalidValue(
                    "is encrypted, but this store has no encryption key",
                ));
            }
            (b":j:", Some(_)) => {
                return Err(InvalidValue(
                    "is not encrypted, but this store has an encryption key",
                ));
            }
            _ => return Err(InvalidValue("has an unknown format")),
        };
        let token: StoredToken =
            serde_json::from_slice(&json).map_err(|_| InvalidValue("is not valid JSON"))?;
        if fingerprint(&token.access_token).as_bytes() != stored_fingerprint {
            return Err(InvalidValue(
                "has a fingerprint that does not match its token",
            ));
        }
        Ok(token)
    }
}

fn decrypt(
    cipher: &XChaCha20Poly1305,
    key: &str,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, InvalidValue> {
    let sealed = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| InvalidValue("is not valid base64"))?;
    if sealed.len() < NONCE_LEN {
        return Err(InvalidValue("is too short to hold a nonce"));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| InvalidValue("is too short to hold a nonce"))?;
    let payload = Payload {
        msg: ciphertext,
        aad: key.as_bytes(),
    };
    cipher
        .decrypt(&XNonce::from(nonce), payload)
        .map(Zeroizing::new)
        .map_err(|_| {
            InvalidValue("cannot be decrypted: the encryption key differs or the value was altered")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "bigvision-auth:v1:abc";

    fn token() -> StoredToken {
        StoredToken {
            access_token: "header.claims.signature".to_owned(),
            received_at_ms: 1_000,
            expires_at_ms: 301_000,
            refresh_token: Some("refresh-secret".to_owned()),
            refresh_expires_at_ms: Some(1_801_000),
        }
    }

    #[test]
    fn clear_value_round_trips() {
        let codec = Codec::new(None);

        let value = codec.encode(KEY, &token()).unwrap();
        let decoded = codec.decode(KEY, &value).unwrap();

        assert_eq!(decoded.access_token, "header.claims.signature");
        assert_eq!(decoded.expires_at_ms, 301_000);
        assert_eq!(decoded.refresh_token.as_deref(), Some("refresh-secret"));
        assert!(value.starts_with(fingerprint("header.claims.signature").as_bytes()));
    }

    #[test]
    fn encrypted_value_hides_tokens() {
        let codec = Codec::new(Some(&[7; 32]));

        let value = codec.encode(KEY, &token()).unwrap();
        let text = String::from_utf8(value.clone()).unwrap();
        let decoded = codec.decode(KEY, &value).unwrap();

        assert!(!text.contains("header.claims.signature"), "{text}");
        assert!(!text.contains("refresh-secret"), "{text}");
        assert_eq!(decoded.access_token, "header.claims.signature");
    }

    #[test]
    fn encryption_uses_fresh_nonces() {
        let codec = Codec::new(Some(&[7; 32]));

        let first = codec.encode(KEY, &token()).unwrap();
        let second = codec.encode(KEY, &token()).unwrap();

        assert_ne!(first, second);
    }

    #[test]
    fn encrypted_value_is_bound_to_key() {
        let codec = Codec::new(Some(&[7; 32]));
        let value = codec.encode(KEY, &token()).unwrap();

        let result = codec.decode("bigvision-auth:v1:other", &value);

        assert!(result.is_err());
    }

    #[test]
    fn wrong_key_or_mode_is_invalid() {
        let clear = Codec::new(None).encode(KEY, &token()).unwrap();
        let sealed = Codec::new(Some(&[7; 32])).encode(KEY, &token()).unwrap();

        assert!(Codec::new(Some(&[7; 32])).decode(KEY, &clear).is_err());
        assert!(Codec::new(None).decode(KEY, &sealed).is_err());
        assert!(Codec::new(Some(&[8; 32])).decode(KEY, &sealed).is_err());
    }

    #[test]
    fn altered_fingerprint_is_invalid() {
        let codec = Codec::new(None);
        let mut value = codec.encode(KEY, &token()).unwrap();
        value[0] = if value[0] == b'0' { b'1' } else { b'0' };

        let result = codec.decode(KEY, &value);

        assert!(result.is_err());
    }

    #[test]
    fn key_depends_on_url_and_user() {
        let key = token_key("p", "https://bigvision.id/api", "alice");

        assert!(key.starts_with("p:"));
        assert_eq!(key.len(), "p:".len() + 64);
        assert_ne!(key, token_key("p", "https://bigvision.id/api", "bob"));
        assert_ne!(key, token_key("p", "https://other.example/api", "alice"));
        assert_eq!(key, token_key("p", "https://bigvision.id/api", "alice"));
    }
}
