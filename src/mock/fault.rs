//! Injected failures and the `expires_in` override.

use serde_json::{Value, json};

/// A failure that the mock sends in place of a normal login or refresh reply.
///
/// Queue one with [`MockServer::push_login_fault`](super::MockServer::push_login_fault)
/// or make it persistent with
/// [`MockServer::set_login_fault`](super::MockServer::set_login_fault)
/// (and the refresh counterparts). A faulted call counts in
/// [`MockStats::login_calls`](super::MockStats::login_calls) or
/// [`MockStats::refresh_calls`](super::MockStats::refresh_calls), never in
/// `logins` or `refreshes`, and issues no token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// A reply with any status, body and content type.
    ///
    /// `status` must be a final status code (200 to 599). The server sends
    /// 500 with an explanation in place of any other value, and omits the
    /// `Content-Type` header when `content_type` is not a valid header value.
    Status {
        /// HTTP status code of the reply.
        status: u16,
        /// Raw reply body.
        body: String,
        /// Value of the `Content-Type` header.
        content_type: &'static str,
        /// Value of the `Retry-After` header in seconds, if any.
        retry_after: Option<u64>,
    },
    /// HTTP 200 with this raw body and `Content-Type: application/json`.
    ///
    /// Use it for malformed or unexpected replies such as truncated JSON,
    /// `"success": false` with status 200, a missing token or `expires_in: 0`.
    Reply(String),
    /// HTTP 502 with a `text/html` error page, as a reverse proxy sends when
    /// the upstream is down.
    Html502,
    /// No reply: the server keeps the connection open until it stops.
    ///
    /// The configured latency does not apply because no reply is ever sent.
    Stall,
    /// Closes the connection without a reply, after the configured latency.
    Close,
}

/// Body of the [`Fault::Html502`] reply.
pub(crate) const HTML_502_BODY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n\
<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n\
</body>\r\n</html>\r\n";

impl Fault {
    /// Creates a [`Fault::Status`] with a BigVision-style JSON error body
    /// `{"success": false, "message": "<reason phrase>"}`.
    pub fn status(status: u16) -> Fault {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|code| code.canonical_reason())
            .unwrap_or("error");
        Fault::json(status, json!({"success": false, "message": reason}))
    }

    /// Creates a [`Fault::Status`] whose body is `value` as JSON.
    pub fn json(status: u16, value: Value) -> Fault {
        Fault::Status {
            status,
            body: value.to_string(),
            content_type: "application/json",
            retry_after: None,
        }
    }

    /// Creates a [`Fault::status`] reply that also carries
    /// `Retry-After: <seconds>`, as rate limiters (429) and overloaded
    /// servers (503) send.
    pub fn retry_after(status: u16, seconds: u64) -> Fault {
        match Fault::status(status) {
            Fault::Status {
                status,
                body,
                content_type,
                ..
            } => Fault::Status {
                status,
                body,
                content_type,
                retry_after: Some(seconds),
            },
            other => other,
        }
    }

    /// Creates a [`Fault::Reply`]: HTTP 200 with `body` sent as it is.
    pub fn reply(body: impl Into<String>) -> Fault {
        Fault::Reply(body.into())
    }

    /// Creates a [`Fault::Reply`] whose body is `value` as JSON, for
    /// well-formed replies with unexpected content.
    pub fn reply_json(value: Value) -> Fault {
        Fault::Reply(value.to_string())
    }
}

/// Content of the `expires_in` field in login and refresh replies.
///
/// This changes only the reply. The server still enforces the lifetime set
/// with [`MockServerBuilder::token_lifetime`](super::MockServerBuilder::token_lifetime).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExpiresIn {
    /// The enforced access token lifetime in whole seconds, rounded down.
    #[default]
    Lifetime,
    /// No `expires_in` field at all.
    Omit,
    /// This JSON value, for example `0`, `-5`, `"300"` or `null`.
    Value(Value),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_keeps_json_body() {
        let Fault::Status {
            status,
            body,
            content_type,
            retry_after,
        } = Fault::retry_after(429, 7)
        else {
            panic!("expected Fault::Status");
        };
        assert_eq!(status, 429);
        assert_eq!(content_type, "application/json");
        assert_eq!(retry_after, Some(7));
        let value: Value = serde_json::from_str(&body).expect("body is JSON");
        assert_eq!(value["success"], false);
        assert_eq!(value["message"], "Too Many Requests");
    }

    #[test]
    fn status_with_unknown_code_has_generic_message() {
        let Fault::Status { body, .. } = Fault::status(599) else {
            panic!("expected Fault::Status");
        };
        let value: Value = serde_json::from_str(&body).expect("body is JSON");
        assert_eq!(value["message"], "error");
    }
}
