//! JWT-shaped tokens with a fake signature.
//!
//! The tokens look like real BigVision tokens to a client that decodes them,
//! but nothing verifies the signature, because the server accepts a token
//! only if it is in its own table of issued tokens.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

/// Value of the `iss` claim.
pub(crate) const ISSUER: &str = "mock-bigvision";

/// Source of `jti` values. It is shared by all servers in the process, so no
/// two mock servers issue the same token.
static NEXT_JTI: AtomicU64 = AtomicU64::new(1);

/// The kind of token to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Access token: RS256 header, `typ` claim `"Bearer"`.
    Access,
    /// Refresh token: HS256 header, `typ` claim `"Refresh"`.
    Refresh,
}

impl TokenKind {
    fn algorithm(self) -> &'static str {
        match self {
            TokenKind::Access => "RS256",
            TokenKind::Refresh => "HS256",
        }
    }

    fn typ_claim(self) -> &'static str {
        match self {
            TokenKind::Access => "Bearer",
            TokenKind::Refresh => "Refresh",
        }
    }
}

/// Encodes a new token for `subject` that expires `lifetime` from now.
///
/// `exp` and `iat` come from the system clock because clients compare them
/// with wall-clock time. The server enforces expiry with its own
/// `tokio::time::Instant` deadline. `signing_key` makes the fake signature
/// differ between servers.
pub(crate) fn encode_token(
    kind: TokenKind,
    subject: &str,
    lifetime: Duration,
    signing_key: &RandomState,
) -> String {
    let jti = NEXT_JTI.fetch_add(1, Ordering::Relaxed);
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let header = json!({"alg": kind.algorithm(), "typ": "JWT"});
    let claims = json!({
        "exp": issued_at.saturating_add(lifetime.as_secs()),
        "iat": issued_at,
        "iss": ISSUER,
        "sub": subject,
        "jti": jti.to_string(),
        "typ": kind.typ_claim(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );

    // 32 pseudo-random bytes, the size of a SHA-256 based signature.
    let mut signature = Vec::with_capacity(32);
    for block in 0u8..4 {
        let word = signing_key.hash_one((block, signing_input.as_str()));
        signature.extend_from_slice(&word.to_be_bytes());
    }
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn decode_segment(segment: &str) -> Value {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .expect("segment is base64url");
        serde_json::from_slice(&bytes).expect("segment is JSON")
    }

    #[test]
    fn access_token_has_jwt_shape() {
        let key = RandomState::new();
        let token = encode_token(TokenKind::Access, "demo", Duration::from_secs(300), &key);
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3);

        let header = decode_segment(segments[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");

        let claims = decode_segment(segments[1]);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "demo");
        assert_eq!(claims["typ"], "Bearer");
        let exp = claims["exp"].as_u64().expect("exp is a number");
        let iat = claims["iat"].as_u64().expect("iat is a number");
        assert_eq!(exp - iat, 300);

        let signature = URL_SAFE_NO_PAD.decode(segments[2]).expect("signature");
        assert_eq!(signature.len(), 32);
    }

    #[test]
    fn refresh_token_uses_hs256() {
        let key = RandomState::new();
        let token = encode_token(TokenKind::Refresh, "demo", Duration::from_secs(60), &key);
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(decode_segment(segments[0])["alg"], "HS256");
        assert_eq!(decode_segment(segments[1])["typ"], "Refresh");
    }

    #[test]
    fn tokens_are_unique() {
        let key = RandomState::new();
        let first = encode_token(TokenKind::Access, "demo", Duration::from_secs(1), &key);
        let second = encode_token(TokenKind::Access, "demo", Duration::from_secs(1), &key);
        assert_ne!(first, second);
    }
}
