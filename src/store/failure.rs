//! The failure of the last shared fetch, kept in Redis so that other processes wait out the
//! same backoff instead of calling the failing endpoint one after another.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{Endpoint, Error};

/// The JSON fields an [`Error::InvalidReply`] names, so that a failure read back from Redis
/// names the same one. A field outside this list reads back as `body`, with its name at
/// the start of the problem.
const KNOWN_FIELDS: &[&str] = &[
    "body",
    "result",
    "token",
    "access_token",
    "expires_in",
    "refresh_token",
    "refresh_expires_in",
    "token_type",
];

/// A failed fetch as other processes see it: how many fetches in a row failed, until when
/// no process should call the endpoints, and the error to fail their requests with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredFailure {
    /// Failed fetches in a row, across all processes; sets the next backoff delay.
    pub(super) failures: u32,
    /// Unix time in milliseconds before which no process calls the endpoints.
    pub(super) retry_at_ms: u64,
    pub(super) error: StoredError,
}

/// The parts of an [`Error`] that another process needs to return the same kind of error.
/// Server messages are stored as the error contains them: sanitized, so without secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum StoredError {
    LoginRejected {
        status: u16,
        message: String,
    },
    RefreshRejected {
        status: u16,
        message: String,
    },
    Unreachable {
        endpoint: StoredEndpoint,
        detail: String,
    },
    TimedOut {
        endpoint: StoredEndpoint,
        after_ms: u64,
    },
    Unavailable {
        endpoint: StoredEndpoint,
        status: u16,
        retry_after_ms: Option<u64>,
    },
    InvalidReply {
        endpoint: StoredEndpoint,
        field: String,
        problem: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum StoredEndpoint {
    Login,
    Refresh,
}

impl From<Endpoint> for StoredEndpoint {
    fn from(endpoint: Endpoint) -> Self {
        match endpoint {
            Endpoint::Login => StoredEndpoint::Login,
            Endpoint::Refresh => StoredEndpoint::Refresh,
        }
    }
}

impl From<StoredEndpoint> for Endpoint {
    fn from(endpoint: StoredEndpoint) -> Self {
        match endpoint {
            StoredEndpoint::Login => Endpoint::Login,
            StoredEndpoint::Refresh => Endpoint::Refresh,
        }
    }
}

impl StoredError {
    /// Returns the shareable parts of a fetch error. Errors of this process alone (no
    /// runtime, an aborted fetch) are not shared.
    pub(super) fn from_error(error: &Error) -> Option<StoredError> {
        let stored = match error {
            Error::LoginRejected { status, message } => StoredError::LoginRejected {
                status: status.as_u16(),
                message: message.clone(),
            },
            Error::RefreshRejected { status, message } => StoredError::RefreshRejected {
                status: status.as_u16(),
                message: message.clone(),
            },
            Error::Unreachable { endpoint, source } => StoredError::Unreachable {
                endpoint: (*endpoint).into(),
                detail: source.to_string(),
            },
            Error::TimedOut { endpoint, after } => StoredError::TimedOut {
                endpoint: (*endpoint).into(),
                after_ms: after.as_millis() as u64,
            },
            Error::Unavailable {
                endpoint,
                status,
                retry_after,
            } => StoredError::Unavailable {
                endpoint: (*endpoint).into(),
                status: status.as_u16(),
                retry_after_ms: retry_after.map(|delay| delay.as_millis() as u64),
            },
            Error::InvalidReply {
                endpoint,
                field,
                problem,
            } => StoredError::InvalidReply {
                endpoint: (*endpoint).into(),
                field: (*field).to_owned(),
                problem: problem.clone(),
            },
            _ => return None,
        };
        Some(stored)
    }

    /// Returns the endpoint the failed fetch called last.
    pub(super) fn endpoint(&self) -> Endpoint {
        match self {
            StoredError::LoginRejected { .. } => Endpoint::Login,
            StoredError::RefreshRejected { .. } => Endpoint::Refresh,
            StoredError::Unreachable { endpoint, .. }
            | StoredError::TimedOut { endpoint, .. }
            | StoredError::Unavailable { endpoint, .. }
            | StoredError::InvalidReply { endpoint, .. } => (*endpoint).into(),
        }
    }

    /// Returns the error this process reports: the same variant as in the process that
    /// fetched. A transport error comes back as its message, marked as another process's.
    pub(super) fn to_error(&self) -> Error {
        let status = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        match self {
            StoredError::LoginRejected {
                status: code,
                message,
            } => Error::LoginRejected {
                status: status(*code),
                message: message.clone(),
            },
            StoredError::RefreshRejected {
                status: code,
                message,
            } => Error::RefreshRejected {
                status: status(*code),
                message: message.clone(),
            },
            StoredError::Unreachable { endpoint, detail } => Error::Unreachable {
                endpoint: (*endpoint).into(),
                source: Arc::new(SharedFetchFailure(detail.clone())),
            },
            StoredError::TimedOut { endpoint, after_ms } => Error::TimedOut {
                endpoint: (*endpoint).into(),
                after: Duration::from_millis(*after_ms),
            },
            StoredError::Unavailable {
                endpoint,
                status: code,
                retry_after_ms,
            } => Error::Unavailable {
                endpoint: (*endpoint).into(),
                status: status(*code),
                retry_after: retry_after_ms.map(Duration::from_millis),
            },
            StoredError::InvalidReply {
                endpoint,
                field,
                problem,
            } => match KNOWN_FIELDS.iter().find(|known| **known == field.as_str()) {
                Some(known) => Error::InvalidReply {
                    endpoint: (*endpoint).into(),
                    field: known,
                    problem: problem.clone(),
                },
                None => Error::InvalidReply {
                    endpoint: (*endpoint).into(),
                    field: "body",
                    problem: format!("field {field:?} {problem}"),
                },
            },
        }
    }
}

/// The transport error of a fetch in another process, known only by its message.
#[derive(Debug)]
struct SharedFetchFailure(String);

impl fmt::Display for SharedFetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "another process sharing this token through Redis failed: {}",
            self.0
        )
    }
}

impl std::error::Error for SharedFetchFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(error: Error) -> Error {
        let stored = StoredError::from_error(&error).expect("shareable error");
        let json = serde_json::to_string(&stored).unwrap();
        let read: StoredError = serde_json::from_str(&json).unwrap();
        read.to_error()
    }

    #[test]
    fn errors_keep_their_variant() {
        let rejected = round_trip(Error::LoginRejected {
            status: StatusCode::UNAUTHORIZED,
            message: "bad password".into(),
        });
        let unavailable = round_trip(Error::Unavailable {
            endpoint: Endpoint::Refresh,
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(Duration::from_secs(7)),
        });
        let timed_out = round_trip(Error::TimedOut {
            endpoint: Endpoint::Login,
            after: Duration::from_secs(10),
        });
        let unreachable = round_trip(Error::Unreachable {
            endpoint: Endpoint::Login,
            source: Arc::new(std::io::Error::other("connection refused")),
        });

        assert!(matches!(
            rejected,
            Error::LoginRejected { status, ref message }
                if status == StatusCode::UNAUTHORIZED && message == "bad password"
        ));
        assert!(rejected.is_rejected());
        assert!(matches!(
            unavailable,
            Error::Unavailable { endpoint: Endpoint::Refresh, status, retry_after: Some(delay) }
                if status == StatusCode::SERVICE_UNAVAILABLE && delay == Duration::from_secs(7)
        ));
        assert!(matches!(
            timed_out,
            Error::TimedOut { endpoint: Endpoint::Login, after } if after == Duration::from_secs(10)
        ));
        assert!(unreachable.is_transient());
        let source = std::error::Error::source(&unreachable).unwrap().to_string();
        assert!(source.contains("connection refused"), "{source}");
        assert!(source.contains("another process"), "{source}");
    }

    #[test]
    fn invalid_reply_keeps_known_field() {
        let known = round_trip(Error::InvalidReply {
            endpoint: Endpoint::Login,
            field: "expires_in",
            problem: "is negative".into(),
        });
        let unknown = round_trip(Error::InvalidReply {
            endpoint: Endpoint::Login,
            field: "data.jwt",
            problem: "is missing".into(),
        });

        assert!(matches!(
            known,
            Error::InvalidReply {
                field: "expires_in",
                ..
            }
        ));
        assert!(matches!(
            unknown,
            Error::InvalidReply { field: "body", ref problem, .. }
                if problem == "field \"data.jwt\" is missing"
        ));
    }

    #[test]
    fn local_errors_are_not_shared() {
        assert_eq!(StoredError::from_error(&Error::Aborted), None);
        assert_eq!(StoredError::from_error(&Error::NoRuntime), None);
    }
}
