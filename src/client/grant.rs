//! Checking a token grant and turning its lifetimes into durations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::exchange::TokenGrant;
use crate::{Endpoint, Error};

/// The maximum length of an access token in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The maximum access-token lifetime the layer accepts; a longer `expires_in` is cut to it.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The lifetime assumed for an access token whose reply has no `expires_in` and whose JWT
/// `exp` claim cannot be read.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// The maximum refresh-token lifetime the layer accepts; a longer `refresh_expires_in` is cut.
pub const MAX_REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A grant that passed every check, ready for the cache.
#[derive(Debug)]
pub(crate) struct CheckedGrant {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    pub(crate) lifetime: Duration,
    pub(crate) refresh_token: Option<SecretString>,
    /// `None` when the server gave no refresh lifetime.
    pub(crate) refresh_lifetime: Option<Duration>,
}

/// Checks the access token and lifetimes of a grant.
pub(crate) fn check_grant(endpoint: Endpoint, grant: TokenGrant) -> Result<CheckedGrant, Error> {
    let token = grant.access_token.expose_secret();
    let header = bearer_header(endpoint, token)?;
    let lifetime = access_lifetime(endpoint, grant.expires_in, token)?;
    let refresh_lifetime = grant
        .refresh_expires_in
        .filter(|seconds| *seconds > 0)
        .map(|seconds| Duration::from_secs(seconds as u64).min(MAX_REFRESH_LIFETIME));
    let refresh_token = grant
        .refresh_token
        .filter(|token| !token.expose_secret().is_empty());

    Ok(CheckedGrant {
        header,
        lifetime,
        refresh_token,
        refresh_lifetime,
    })
}

/// Builds a grant from a token that another process fetched, as read from a shared token
/// store: the token text gets the same checks as a fetched one, and the lifetimes the same
/// caps.
#[cfg(feature = "redis")]
pub(crate) fn stored_grant(
    endpoint: Endpoint,
    access_token: &str,
    lifetime: Duration,
    refresh_token: Option<SecretString>,
    refresh_lifetime: Option<Duration>,
) -> Result<CheckedGrant, Error> {
    Ok(CheckedGrant {
        header: bearer_header(endpoint, access_token)?,
        lifetime: lifetime.min(MAX_TOKEN_LIFETIME),
        refresh_token: refresh_token.filter(|token| !token.expose_secret().is_empty()),
        refresh_lifetime: refresh_lifetime.map(|lifetime| lifetime.min(MAX_REFRESH_LIFETIME)),
    })
}

/// Builds `Bearer <token>` once, for every request that uses this token.
fn bearer_header(endpoint: Endpoint, token: &str) -> Result<HeaderValue, Error> {
    const FIELD: &str = "token";
    if token.is_empty() {
        return Err(Error::invalid_reply(endpoint, FIELD, "is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::invalid_reply(
            endpoint,
            FIELD,
            format!(
                "is {} bytes long; the maximum is {MAX_TOKEN_LEN}",
                token.len()
            ),
        ));
    }
    if let Some(position) = token.bytes().position(|byte| !byte.is_ascii_graphic()) {
        return Err(Error::invalid_reply(
            endpoint,
            FIELD,
            format!(
                "has a byte that cannot go in an HTTP header at offset {position} \
                 (only visible ASCII is allowed)"
            ),
        ));
    }

    let mut value = Vec::with_capacity("Bearer ".len() + token.len());
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token.as_bytes());
    let mut header = HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|_| Error::invalid_reply(endpoint, FIELD, "cannot go in an HTTP header"))?;
    header.set_sensitive(true);
    Ok(header)
}

fn access_lifetime(
    endpoint: Endpoint,
    expires_in: Option<i64>,
    token: &str,
) -> Result<Duration, Error> {
    match expires_in {
        Some(seconds) if seconds <= 0 => Err(Error::invalid_reply(
            endpoint,
            "expires_in",
            format!("must be a positive number of seconds, got {seconds}"),
        )),
        Some(seconds) => {
            let lifetime = Duration::from_secs(seconds as u64);
            if lifetime > MAX_TOKEN_LIFETIME {
                tracing::warn!(
                    %endpoint,
                    expires_in = seconds,
                    cap_secs = MAX_TOKEN_LIFETIME.as_secs(),
                    "token lifetime too long, cut to the cap"
                );
            }
            Ok(lifetime.min(MAX_TOKEN_LIFETIME))
        }
        None => Ok(lifetime_from_jwt(token).unwrap_or_else(|| {
            tracing::warn!(
                %endpoint,
                assumed_secs = DEFAULT_TOKEN_LIFETIME.as_secs(),
                "reply has no expires_in and the token has no readable exp claim"
            );
            DEFAULT_TOKEN_LIFETIME
        })),
    }
}

/// Reads the `exp` claim of a JWT and returns the time left until it, by the system clock.
fn lifetime_from_jwt(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let left = exp - now;
    (left.is_finite() && left >= 1.0)
        .then(|| Duration::from_secs(left as u64).min(MAX_TOKEN_LIFETIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(token: &str, expires_in: Option<i64>) -> TokenGrant {
        TokenGrant {
            access_token: SecretString::from(token.to_owned()),
            expires_in,
            refresh_token: None,
            refresh_expires_in: None,
        }
    }

    fn jwt_with_exp(exp: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
        format!("{header}.{payload}.c2ln")
    }

    #[test]
    fn header_is_sensitive_bearer() {
        let checked = check_grant(Endpoint::Login, grant("abc.def", Some(300))).unwrap();

        assert_eq!(checked.header, "Bearer abc.def");
        assert!(checked.header.is_sensitive());
        assert_eq!(checked.lifetime, Duration::from_secs(300));
    }

    #[test]
    fn rejects_bad_token_bytes() {
        for token in ["", "with space", "new\nline", "tab\t", "ünï"] {
            let result = check_grant(Endpoint::Login, grant(token, Some(300)));

            assert!(
                matches!(result, Err(Error::InvalidReply { field: "token", .. })),
                "{token:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn rejects_overlong_token() {
        let token = "a".repeat(MAX_TOKEN_LEN + 1);

        let result = check_grant(Endpoint::Login, grant(&token, Some(300)));

        assert!(matches!(
            result,
            Err(Error::InvalidReply { field: "token", .. })
        ));
    }

    #[test]
    fn rejects_non_positive_lifetime() {
        for seconds in [0, -5] {
            let result = check_grant(Endpoint::Login, grant("t", Some(seconds)));

            assert!(matches!(
                result,
                Err(Error::InvalidReply {
                    field: "expires_in",
                    ..
                })
            ));
        }
    }

    #[test]
    fn caps_huge_lifetime() {
        let checked = check_grant(Endpoint::Login, grant("t", Some(i64::MAX))).unwrap();

        assert_eq!(checked.lifetime, MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn missing_lifetime_uses_jwt_exp() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = jwt_with_exp(now + 120);

        let checked = check_grant(Endpoint::Login, grant(&token, None)).unwrap();

        assert!(checked.lifetime <= Duration::from_secs(120));
        assert!(checked.lifetime >= Duration::from_secs(110));
    }

    #[test]
    fn missing_lifetime_without_jwt_uses_default() {
        let checked = check_grant(Endpoint::Login, grant("opaque", None)).unwrap();

        assert_eq!(checked.lifetime, DEFAULT_TOKEN_LIFETIME);
    }
}
