//! Request handling: routing, login, refresh and the protected API.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::fault::{ExpiresIn, Fault, HTML_502_BODY};
use super::state::{ApiCall, IssuedTokens, Shared, increment};

/// Largest request body the server reads, in bytes. Larger bodies get 413.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reply type of every endpoint.
pub(crate) type Reply = Response<Full<Bytes>>;

/// Service error that makes hyper close the connection without a reply,
/// used for [`Fault::Close`].
#[derive(Debug)]
pub(crate) struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed by an injected fault")
    }
}

impl Error for CloseConnection {}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

/// Endpoint that a request path maps to.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Login,
    Refresh,
    Api,
    NotFound,
}

fn classify(prefix: &str, path: &str) -> Endpoint {
    let Some(rest) = path.strip_prefix(prefix) else {
        return Endpoint::NotFound;
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return Endpoint::NotFound;
    }
    match rest {
        "/user/login" => Endpoint::Login,
        "/user/refresh" => Endpoint::Refresh,
        _ => Endpoint::Api,
    }
}

/// Routes one request to its endpoint and returns the reply.
///
/// Returns `Err` only for [`Fault::Close`], so that hyper drops the
/// connection without a reply.
pub(crate) async fn handle<B>(
    shared: Arc<Shared>,
    request: Request<B>,
) -> Result<Reply, CloseConnection>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = match classify(&shared.config.prefix, &path) {
        Endpoint::Login => login(&shared, request).await,
        Endpoint::Refresh => refresh(&shared, request).await,
        Endpoint::Api => Ok(api(&shared, request).await),
        Endpoint::NotFound => Ok(error_reply(StatusCode::NOT_FOUND, "not found")),
    };
    match &result {
        Ok(reply) => tracing::debug!(
            %method,
            %path,
            status = reply.status().as_u16(),
            "mock BigVision server sent a reply"
        ),
        Err(_) => tracing::debug!(
            %method,
            %path,
            "mock BigVision server closed the connection without a reply"
        ),
    }
    result
}

async fn login<B>(shared: &Shared, request: Request<B>) -> Result<Reply, CloseConnection>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    if request.method() != Method::POST {
        return Ok(method_not_allowed());
    }
    increment(&shared.counters.login_calls);
    let latency = shared.config.login_latency;
    if let Some(fault) = shared.next_login_fault() {
        return send_fault(fault, latency).await;
    }

    let reply = match read_json::<LoginRequest, B>(request.into_body()).await {
        Err(reply) => reply,
        Ok(login) if shared.check_credentials(&login.username, &login.password) => {
            let issued = shared.issue_tokens(&login.username);
            increment(&shared.counters.logins);
            token_reply(shared, &issued)
        }
        Ok(_) => error_reply(StatusCode::UNAUTHORIZED, "invalid username or password"),
    };
    delay(latency).await;
    Ok(reply)
}

async fn refresh<B>(shared: &Shared, request: Request<B>) -> Result<Reply, CloseConnection>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    if request.method() != Method::POST {
        return Ok(method_not_allowed());
    }
    increment(&shared.counters.refresh_calls);
    let latency = shared.config.refresh_latency;
    if let Some(fault) = shared.next_refresh_fault() {
        return send_fault(fault, latency).await;
    }

    let reply = match read_json::<RefreshRequest, B>(request.into_body()).await {
        Err(reply) => reply,
        Ok(body) => match shared.refresh(&body.refresh_token) {
            Some(issued) => {
                increment(&shared.counters.refreshes);
                token_reply(shared, &issued)
            }
            None => error_reply(StatusCode::UNAUTHORIZED, "refresh token expired or revoked"),
        },
    };
    delay(latency).await;
    Ok(reply)
}

async fn api<B>(shared: &Shared, request: Request<B>) -> Reply
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let path = request.uri().path().to_owned();
    let token = bearer_token(request.headers());

    // The body is read (and discarded) only to enforce the size limit.
    let reply = match read_body(request.into_body()).await {
        Err(reply) => reply,
        Ok(_) => match shared.authorize(token.as_deref()) {
            Ok(()) => json_reply(
                StatusCode::OK,
                &json!({"success": true, "result": {"path": path, "text": "mock OCR result"}}),
            ),
            Err(rejection) => {
                let mut reply = error_reply(StatusCode::UNAUTHORIZED, rejection.message());
                reply.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                reply
            }
        },
    };
    shared.record_api_call(ApiCall {
        path,
        token,
        status: reply.status().as_u16(),
    });
    delay(shared.config.api_latency).await;
    reply
}

/// Extracts the token of an `Authorization: Bearer <token>` header. Any
/// other scheme, an empty token or a value that is not visible ASCII counts
/// as no token.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return None;
    }
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    Some(token.to_owned())
}

/// Sleeps for `latency`, through the tokio clock so paused-time tests
/// control it.
async fn delay(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

async fn send_fault(fault: Fault, latency: Duration) -> Result<Reply, CloseConnection> {
    if matches!(fault, Fault::Stall) {
        return std::future::pending().await;
    }
    delay(latency).await;
    match fault {
        Fault::Stall | Fault::Close => Err(CloseConnection),
        Fault::Reply(body) => Ok(raw_reply(
            StatusCode::OK,
            Some(HeaderValue::from_static("application/json")),
            body,
        )),
        Fault::Html502 => Ok(raw_reply(
            StatusCode::BAD_GATEWAY,
            Some(HeaderValue::from_static("text/html")),
            HTML_502_BODY,
        )),
        Fault::Status {
            status,
            body,
            content_type,
            retry_after,
        } => {
            let Some(status) = StatusCode::from_u16(status)
                .ok()
                .filter(|code| (200..=599).contains(&code.as_u16()))
            else {
                let message = format!("invalid fault status {status}: use 200 to 599");
                return Ok(error_reply(StatusCode::INTERNAL_SERVER_ERROR, &message));
            };
            let mut reply = raw_reply(status, HeaderValue::from_str(content_type).ok(), body);
            if let Some(seconds) = retry_after {
                reply
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            Ok(reply)
        }
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`], or returns the error reply.
async fn read_body<B>(body: B) -> Result<Bytes, Reply>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => {
            let message = format!("request body exceeds the limit of {MAX_BODY_BYTES} bytes");
            Err(error_reply(StatusCode::PAYLOAD_TOO_LARGE, &message))
        }
        Err(error) => {
            let message = format!("failed to read request body: {error}");
            Err(error_reply(StatusCode::BAD_REQUEST, &message))
        }
    }
}

/// Reads and parses a JSON body, or returns the error reply.
async fn read_json<T, B>(body: B) -> Result<T, Reply>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes).map_err(|error| {
        let message = format!("invalid request body: {error}");
        error_reply(StatusCode::BAD_REQUEST, &message)
    })
}

fn token_reply(shared: &Shared, issued: &IssuedTokens) -> Reply {
    let mut result = Map::new();
    result.insert("token".into(), issued.access_token.clone().into());
    match &shared.config.expires_in {
        ExpiresIn::Lifetime => {
            let seconds = shared.config.token_lifetime.as_secs();
            result.insert("expires_in".into(), seconds.into());
        }
        ExpiresIn::Omit => {}
        ExpiresIn::Value(value) => {
            result.insert("expires_in".into(), value.clone());
        }
    }
    let refresh_seconds = issued.refresh_expires_in.as_secs();
    result.insert("refresh_expires_in".into(), refresh_seconds.into());
    result.insert("refresh_token".into(), issued.refresh_token.clone().into());
    json_reply(StatusCode::OK, &json!({"result": result, "success": true}))
}

fn method_not_allowed() -> Reply {
    let mut reply = error_reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed, use POST",
    );
    reply
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("POST"));
    reply
}

fn error_reply(status: StatusCode, message: &str) -> Reply {
    json_reply(status, &json!({"success": false, "message": message}))
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    raw_reply(
        status,
        Some(HeaderValue::from_static("application/json")),
        value.to_string(),
    )
}

fn raw_reply(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: impl Into<Bytes>,
) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    if let Some(content_type) = content_type {
        reply.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_respects_prefix_boundary() {
        assert_eq!(classify("/api", "/api/user/login"), Endpoint::Login);
        assert_eq!(classify("/api", "/api/user/refresh"), Endpoint::Refresh);
        assert_eq!(classify("/api", "/api/ocr"), Endpoint::Api);
        assert_eq!(classify("/api", "/api"), Endpoint::Api);
        assert_eq!(classify("/api", "/apix/ocr"), Endpoint::NotFound);
        assert_eq!(classify("/api", "/user/login"), Endpoint::NotFound);
        assert_eq!(classify("", "/user/login"), Endpoint::Login);
        assert_eq!(classify("", "/ocr"), Endpoint::Api);
    }

    #[test]
    fn bearer_token_parsing() {
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer   ", None),
        ];
        for (header, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(header));
            assert_eq!(bearer_token(&headers).as_deref(), expected, "{header:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
