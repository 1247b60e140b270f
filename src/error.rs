//! The error type of the layer, its token fetches and its configuration.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// A shared, cloneable error from another crate, kept as the `source()` of an [`Error`].
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// The token endpoint that a fetch called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The password login.
    Login,
    /// The refresh-token exchange.
    Refresh,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Login => "login",
            Endpoint::Refresh => "refresh",
        })
    }
}

/// Errors returned by [`BigVisionAuth`](crate::BigVisionAuth), its handle and its builder.
///
/// The service's error type is this enum. It converts into [`tower::BoxError`] and can be
/// downcast from it, so a retry policy can tell a transient failure of the token endpoint
/// ([`Error::is_transient`]) from rejected credentials. No variant contains a password or a
/// token: server messages are cut to [`MAX_MESSAGE_LEN`] characters, stripped of control
/// characters, and any occurrence of the password or a token is replaced.
///
/// [`tower::BoxError`]: https://docs.rs/tower/0.5/tower/type.BoxError.html
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The login endpoint rejected the username or password (HTTP 401 or 403, or a reply with
    /// `success: false`). Retrying with the same credentials will not help.
    LoginRejected {
        /// The HTTP status of the reply.
        status: StatusCode,
        /// The server's message, sanitized; empty when the reply had none.
        message: String,
    },
    /// The refresh endpoint rejected the refresh token. The layer handles this itself by
    /// logging in again; it reaches a caller only when that login also fails.
    RefreshRejected {
        /// The HTTP status of the reply.
        status: StatusCode,
        /// The server's message, sanitized; empty when the reply had none.
        message: String,
    },
    /// The token endpoint could not be reached, or the connection failed mid-reply.
    Unreachable {
        /// The endpoint that was called.
        endpoint: Endpoint,
        /// The transport error of the login/refresh service.
        source: SharedError,
    },
    /// The token endpoint did not reply within the per-call timeout.
    TimedOut {
        /// The endpoint that was called.
        endpoint: Endpoint,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The token endpoint replied with HTTP 429 or 5xx on every attempt.
    Unavailable {
        /// The endpoint that was called.
        endpoint: Endpoint,
        /// The HTTP status of the last reply.
        status: StatusCode,
        /// The delay the server asked for with `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The token endpoint's reply could not be understood.
    InvalidReply {
        /// The endpoint that was called.
        endpoint: Endpoint,
        /// The JSON field (or `body`) that was wrong.
        field: &'static str,
        /// The problem with it.
        problem: String,
    },
    /// The layer's configuration is invalid; returned by the builder.
    InvalidConfig {
        /// The setting that was rejected.
        setting: &'static str,
        /// The problem and how to fix it.
        problem: String,
    },
    /// No Tokio runtime was running to start a token fetch or its timer.
    NoRuntime,
    /// A token fetch ended without a result: it panicked, or its Tokio runtime shut down.
    /// The next request after a short delay starts a new fetch.
    Aborted,
    /// The inner service failed.
    Inner(SharedError),
}

/// The maximum number of characters of a server message kept in an [`Error`].
pub const MAX_MESSAGE_LEN: usize = 200;

impl Error {
    /// Wraps an error of the inner service.
    pub(crate) fn inner(error: impl Into<tower::BoxError>) -> Self {
        Error::Inner(Arc::from(error.into()))
    }

    pub(crate) fn config(setting: &'static str, problem: impl Into<String>) -> Self {
        Error::InvalidConfig {
            setting,
            problem: problem.into(),
        }
    }

    pub(crate) fn invalid_reply(
        endpoint: Endpoint,
        field: &'static str,
        problem: impl Into<String>,
    ) -> Self {
        Error::InvalidReply {
            endpoint,
            field,
            problem: problem.into(),
        }
    }

    /// Returns `true` when the failure may pass by itself: the token endpoint was unreachable,
    /// timed out or returned 429/5xx, or a fetch found no runtime or ended without a result. A request that failed
    /// with such an error may be retried; see [`TokenRetryPolicy`](crate::TokenRetryPolicy).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::TimedOut { .. }
                | Error::Unavailable { .. }
                | Error::NoRuntime
                | Error::Aborted
        )
    }

    /// Returns `true` when the server rejected the credentials or the refresh token.
    pub fn is_rejected(&self) -> bool {
        matches!(
            self,
            Error::LoginRejected { .. } | Error::RefreshRejected { .. }
        )
    }

    /// Returns the token endpoint involved, if the error came from a token fetch.
    pub fn endpoint(&self) -> Option<Endpoint> {
        match self {
            Error::LoginRejected { .. } => Some(Endpoint::Login),
            Error::RefreshRejected { .. } => Some(Endpoint::Refresh),
            Error::Unreachable { endpoint, .. }
            | Error::TimedOut { endpoint, .. }
            | Error::Unavailable { endpoint, .. }
            | Error::InvalidReply { endpoint, .. } => Some(*endpoint),
            _ => None,
        }
    }

    /// Returns the HTTP status of the token endpoint's reply, where there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::LoginRejected { status, .. }
            | Error::RefreshRejected { status, .. }
            | Error::Unavailable { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Returns the delay the token endpoint asked for with `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::LoginRejected { status, message } => {
                write!(f, "login rejected with status {status}")?;
                write_message(f, message)?;
                f.write_str("; check the username and password")
            }
            Error::RefreshRejected { status, message } => {
                write!(f, "refresh token rejected with status {status}")?;
                write_message(f, message)
            }
            Error::Unreachable { endpoint, .. } => {
                write!(f, "{endpoint} endpoint unreachable")
            }
            Error::TimedOut { endpoint, after } => {
                write!(f, "{endpoint} endpoint timed out after {after:?}")
            }
            Error::Unavailable {
                endpoint,
                status,
                retry_after,
            } => {
                write!(f, "{endpoint} endpoint unavailable with status {status}")?;
                match retry_after {
                    Some(delay) => write!(f, " (retry after {delay:?})"),
                    None => Ok(()),
                }
            }
            Error::InvalidReply {
                endpoint,
                field,
                problem,
            } => write!(f, "invalid {endpoint} reply: `{field}` {problem}"),
            Error::InvalidConfig { setting, problem } => {
                write!(f, "invalid setting `{setting}`: {problem}")
            }
            Error::NoRuntime => f.write_str(
                "no Tokio runtime to run the token fetch on; send requests from a Tokio task",
            ),
            Error::Aborted => f.write_str(
                "token fetch ended without a result: it panicked or its runtime shut down",
            ),
            Error::Inner(_) => f.write_str("inner service failed"),
        }
    }
}

fn write_message(f: &mut fmt::Formatter<'_>, message: &str) -> fmt::Result {
    if message.is_empty() {
        Ok(())
    } else {
        write!(f, ": {message:?}")
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Unreachable { source, .. } => Some(&**source),
            Error::Inner(source) => Some(&**source),
            _ => None,
        }
    }
}

/// Cleans a message quoted from a server: removes the secrets given, drops control
/// characters and cuts it to [`MAX_MESSAGE_LEN`] characters.
pub(crate) fn sanitize_message(raw: &str, secrets: &[&str]) -> String {
    let mut text = raw.to_owned();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        // A server that echoes the request quotes the secret as the request carried it:
        // JSON-escaped in a JSON body, percent-encoded in a form.
        let json_escaped = serde_json::to_string(secret).unwrap_or_default();
        let json_escaped = json_escaped.trim_matches('"').to_owned();
        let form_encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [json_escaped.as_str(), form_encoded.as_str(), secret] {
            if !form.is_empty() && text.contains(form) {
                text = text.replace(form, "[redacted]");
            }
        }
    }

    let mut clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_LEN)
        .collect();
    if text.chars().count() > MAX_MESSAGE_LEN {
        clean.push('…');
    }
    clean.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_redacts_cuts_and_strips() {
        let raw = format!("bad password hunter2\r\n\u{1b}[31m{}", "x".repeat(500));

        let clean = sanitize_message(&raw, &["hunter2"]);

        assert!(!clean.contains("hunter2"));
        assert!(clean.contains("[redacted]"));
        assert!(!clean.chars().any(char::is_control));
        assert!(clean.chars().count() <= MAX_MESSAGE_LEN + 1);
    }

    #[test]
    fn sanitize_redacts_escaped_forms() {
        let secret = r#"p"q\w z&=x9Q"#;
        let json_echo = format!("bad body: {}", serde_json::json!({ "password": secret }));
        let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let form_echo = format!("bad body: password={form}");

        for echo in [json_echo, form_echo] {
            let clean = sanitize_message(&echo, &[secret]);

            assert!(clean.contains("[redacted]"), "{clean}");
            assert!(!clean.contains("x9Q"), "{clean}");
        }
    }

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: StdError + Send + Sync + 'static>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn error_downcasts_from_box_error() {
        let boxed: tower::BoxError = Box::new(Error::NoRuntime);

        let error = boxed.downcast_ref::<Error>();

        assert!(matches!(error, Some(Error::NoRuntime)));
    }
}
