//! The login and refresh exchange of a token API, behind a trait.
//!
//! The layer's cache, single flight, renewal, 401 handling and origin scoping do not depend on
//! the shape of the token API's requests and replies: a [`TokenExchange`] builds the login and
//! refresh requests and reads their replies. [`BigVisionExchange`] is the default; the
//! [`OAuth2PasswordExchange`] speaks the OAuth 2.0 password and refresh-token grants
//! (RFC 6749, sections 4.3 and 6), as Keycloak does.
//!
//! The layer does the rest of the work around an exchange: it caps reply bodies at
//! [`MAX_REPLY_BYTES`](crate::MAX_REPLY_BYTES), maps HTTP 429 and 5xx to
//! [`Error::Unavailable`] before the exchange reads the reply, retries transient failures,
//! checks the token's bytes and turns `expires_in` into a deadline.

mod bigvision;
mod oauth2;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Number, Value};

pub use bigvision::BigVisionExchange;
pub use oauth2::OAuth2PasswordExchange;

use crate::{Credentials, Endpoint, Error};

/// Builds login and refresh requests for one token API and reads their replies.
///
/// Implementations must not put a secret into an error: quote server messages through
/// [`TokenReply::message`], which sanitizes them.
pub trait TokenExchange: fmt::Debug + Send + Sync + 'static {
    /// Builds the request that logs in with a username and password.
    fn login_request(&self, credentials: &Credentials) -> Result<Request<Full<Bytes>>, Error>;

    /// Builds the request that trades a refresh token for a new access token.
    fn refresh_request(&self, refresh_token: &SecretString) -> Result<Request<Full<Bytes>>, Error>;

    /// Reads a reply of the login or refresh endpoint. Replies with status 429 or 5xx never
    /// reach this method.
    ///
    /// # Errors
    ///
    /// [`Error::LoginRejected`] or [`Error::RefreshRejected`] when the server rejected the
    /// request, and [`Error::InvalidReply`] when the reply cannot be understood.
    fn parse_reply(&self, endpoint: Endpoint, reply: &TokenReply) -> Result<TokenGrant, Error>;
}

/// The UTF-8 byte-order mark, which some servers write before a JSON body.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A reply of a token endpoint, read whole and capped in size.
///
/// Its `Debug` output shows the status, the header names and the body's length, but no header
/// value or body byte, because those may contain tokens.
pub struct TokenReply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The HTTP headers.
    pub headers: HeaderMap,
    /// The body, at most [`MAX_REPLY_BYTES`](crate::MAX_REPLY_BYTES) long.
    pub body: Bytes,
    secrets: Vec<SecretString>,
}

impl TokenReply {
    pub(crate) fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        secrets: Vec<SecretString>,
    ) -> Self {
        TokenReply {
            status,
            headers,
            body,
            secrets,
        }
    }

    /// Parses the body as JSON, skipping one leading UTF-8 byte-order mark.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidReply`] naming the `body` field, with the parser's message and the
    /// content type, when the body is empty or not JSON.
    pub fn json(&self, endpoint: Endpoint) -> Result<Value, Error> {
        if self.body.is_empty() {
            return Err(Error::invalid_reply(
                endpoint,
                "body",
                format!("is empty (status {})", self.status),
            ));
        }
        // serde_json skips whitespace before the value but rejects a byte-order mark.
        serde_json::from_slice(self.body_without_bom()).map_err(|error| {
            let content_type = self
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("none");
            Error::invalid_reply(
                endpoint,
                "body",
                format!(
                    "is not JSON ({error}; status {}, content type {content_type:?})",
                    self.status
                ),
            )
        })
    }

    /// Cleans a message from the server for use in an error: it removes any secret that the
    /// request carried, drops control characters and cuts the text to
    /// [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN) characters.
    pub fn message(&self, raw: &str) -> String {
        let secrets: Vec<&str> = self
            .secrets
            .iter()
            .map(|secret| secret.expose_secret())
            .collect();
        crate::error::sanitize_message(raw, &secrets)
    }

    /// Returns the server's message from a JSON reply (`message`, `error_description` or
    /// `error`), or the start of a non-JSON body, sanitized.
    pub fn server_message(&self, json: Option<&Value>) -> String {
        let from_json = json.and_then(|value| {
            ["message", "error_description", "error", "msg"]
                .iter()
                .find_map(|key| value.get(key))
                .map(|field| match field {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
        });
        match from_json {
            Some(text) => self.message(&text),
            None if json.is_some() => String::new(),
            None => self.message(&String::from_utf8_lossy(self.body_without_bom())),
        }
    }

    /// Returns the body without one leading UTF-8 byte-order mark.
    fn body_without_bom(&self) -> &[u8] {
        self.body.strip_prefix(UTF8_BOM).unwrap_or(&self.body)
    }

    /// Returns the rejection error that fits the endpoint.
    pub fn rejected(&self, endpoint: Endpoint, message: String) -> Error {
        match endpoint {
            Endpoint::Login => Error::LoginRejected {
                status: self.status,
                message,
            },
            Endpoint::Refresh => Error::RefreshRejected {
                status: self.status,
                message,
            },
        }
    }
}

impl fmt::Debug for TokenReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReply")
            .field("status", &self.status)
            .field("headers", &HeaderNames(&self.headers))
            .field("body", &format!("<{} bytes>", self.body.len()))
            .finish_non_exhaustive()
    }
}

/// The names of a header map, for `Debug` output that leaves out the values.
struct HeaderNames<'a>(&'a HeaderMap);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A URL for `Debug` output, with any user information (`user:password@`) replaced.
pub(crate) struct RedactedUrl<'a>(pub(crate) &'a http::Uri);

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        let Some((_, host)) = url
            .authority()
            .and_then(|authority| authority.as_str().rsplit_once('@'))
        else {
            return write!(f, "{url}");
        };
        let scheme = url.scheme_str().unwrap_or_default();
        let path = url.path_and_query().map_or("", |path| path.as_str());
        write!(f, "{scheme}://[redacted]@{host}{path}")
    }
}

/// The tokens a successful login or refresh returned, before the layer checks them.
#[derive(Clone)]
pub struct TokenGrant {
    /// The access token, sent as `Authorization: Bearer <access_token>`.
    pub access_token: SecretString,
    /// Seconds until the access token expires, as the reply gave them. `None` when the reply
    /// had no lifetime: the layer then reads the JWT `exp` claim, or assumes
    /// [`DEFAULT_TOKEN_LIFETIME`](crate::DEFAULT_TOKEN_LIFETIME).
    pub expires_in: Option<i64>,
    /// The refresh token, if the reply had one.
    pub refresh_token: Option<SecretString>,
    /// Seconds until the refresh token expires. `None` or `Some(0)` means unknown: the
    /// layer then uses the refresh token until the server rejects it.
    pub refresh_expires_in: Option<i64>,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish()
    }
}

/// Reads a lifetime in seconds from a JSON number or a string that contains one.
///
/// A string such as `"300"` or `"299.9"` is read as the number it contains, and both then
/// follow the same rules. Fractions are cut to whole seconds, and a value between zero and one
/// second is rejected. Values beyond the `i64` range are clamped to it, so the layer's caps
/// apply. Returns `Ok(None)` for a missing or `null` field.
pub(crate) fn seconds_field(
    endpoint: Endpoint,
    field: &'static str,
    value: Option<&Value>,
) -> Result<Option<i64>, Error> {
    let number = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(number)) => number.clone(),
        Some(Value::String(text)) => number_in_string(endpoint, field, text)?,
        Some(_) => {
            return Err(Error::invalid_reply(
                endpoint,
                field,
                format!("is not a number of seconds: {}", describe_json(value)),
            ));
        }
    };
    whole_seconds(endpoint, field, &number).map(Some)
}

/// Reads the number in a string lifetime.
///
/// Whitespace around the number is trimmed, because it cannot change the value. The text
/// follows Rust's `i64` and `f64` syntax, which also accepts forms that JSON does not, such as
/// `+5` and `.5`. Errors give the string's length but not its text, in case a server put a
/// token in the wrong field.
fn number_in_string(endpoint: Endpoint, field: &'static str, text: &str) -> Result<Number, Error> {
    let trimmed = text.trim();
    if let Ok(whole) = trimmed.parse::<i64>() {
        return Ok(Number::from(whole));
    }

    let length = text.chars().count();
    let Ok(real) = trimmed.parse::<f64>() else {
        return Err(Error::invalid_reply(
            endpoint,
            field,
            format!("is not a number of seconds: string of {length} characters"),
        ));
    };
    // `from_f64` rejects infinity, which `1e400` parses to, and NaN.
    Number::from_f64(real).ok_or_else(|| {
        Error::invalid_reply(
            endpoint,
            field,
            format!("is not a finite number of seconds: string of {length} characters"),
        )
    })
}

/// Turns a JSON number into whole seconds.
fn whole_seconds(endpoint: Endpoint, field: &'static str, number: &Number) -> Result<i64, Error> {
    if let Some(whole) = number.as_i64() {
        return Ok(whole);
    }

    let Some(seconds) = number.as_f64().filter(|seconds| seconds.is_finite()) else {
        return Err(Error::invalid_reply(
            endpoint,
            field,
            format!(
                "is not a number of seconds: {}",
                describe_json(Some(&Value::Number(number.clone())))
            ),
        ));
    };
    // Cutting a sub-second lifetime would give zero, which the layer rejects for `expires_in`
    // and reads as unknown for `refresh_expires_in`.
    if seconds > 0.0 && seconds < 1.0 {
        return Err(Error::invalid_reply(
            endpoint,
            field,
            format!("must be at least one second, got {seconds}"),
        ));
    }
    Ok(seconds.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
}

/// Takes a token string out of a JSON field without copying it.
pub(crate) fn token_field(
    endpoint: Endpoint,
    field: &'static str,
    value: Option<&mut Value>,
) -> Result<Option<SecretString>, Error> {
    match value.map(Value::take) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(SecretString::from(text))),
        Some(other) => Err(Error::invalid_reply(
            endpoint,
            field,
            format!("is not a string but {}", json_kind(&other)),
        )),
    }
}

fn describe_json(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => format!("string of {} characters", text.chars().count()),
        Some(other) => {
            let text = other.to_string();
            if text.len() > 40 {
                format!("{}…", text.chars().take(40).collect::<String>())
            } else {
                text
            }
        }
        None => "missing".to_owned(),
    }
}

pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
