//! A mock BigVision server on a loopback address, for tests.
//!
//! [`MockServer`] speaks the BigVision login protocol over HTTP/1.1:
//!
//! - `POST {prefix}/user/login` with `{"username": "...", "password": "..."}`
//!   returns `{"result": {"token", "expires_in", "refresh_expires_in",
//!   "refresh_token"}, "success": true}`, or 401 for wrong credentials and
//!   400 for a malformed body.
//! - `POST {prefix}/user/refresh` with `{"refresh_token": "..."}` returns the
//!   same shape, or 401 if the refresh token is unknown, expired or revoked.
//! - Every other path under the prefix is the protected API. It requires
//!   `Authorization: Bearer <token>` with a valid access token and returns
//!   `{"success": true, "result": {"path": "...", "text": "mock OCR result"}}`.
//!   Otherwise it returns 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
//! - Paths outside the prefix return 404.
//!
//! Error replies have the body `{"success": false, "message": "..."}`.
//! Request bodies larger than 64 KiB get 413, and login or refresh calls
//! with a method other than POST get 405.
//!
//! Tokens look like JWTs (base64url header, claims and a fake signature).
//! The claims are `exp`, `iat`, `iss` (`"mock-bigvision"`), `sub` (the
//! username), `jti` and `typ` (`"Bearer"` or `"Refresh"`). The server
//! accepts only tokens it issued itself and enforces expiry with the tokio
//! clock, so `tokio::time::pause` and `tokio::time::advance` control it.
//!
//! Tests can inject failures with [`Fault`], revoke tokens and read
//! [`MockStats`] counters and the list of [`ApiCall`]s.
//!
//! # Example
//!
//! ```
//! use bigvision_auth::mock::{Fault, MockServer};
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let server = MockServer::start().await?;
//! // The first login call gets 503 with `Retry-After: 1`.
//! server.push_login_fault(Fault::retry_after(503, 1));
//!
//! let client = Client::builder(TokioExecutor::new()).build_http();
//! let login_request = || {
//!     http::Request::post(server.url("/user/login"))
//!         .header("content-type", "application/json")
//!         .body(Full::new(bytes::Bytes::from_static(
//!             br#"{"username": "demo", "password": "demo-password"}"#,
//!         )))
//! };
//! let first = client.request(login_request()?).await?;
//! assert_eq!(first.status(), 503);
//! let second = client.request(login_request()?).await?;
//! assert_eq!(second.status(), 200);
//!
//! let stats = server.stats();
//! assert_eq!(stats.login_calls, 2);
//! assert_eq!(stats.logins, 1);
//! # Ok(())
//! # }
//! ```

mod builder;
mod fault;
mod jwt;
mod routes;
mod server;
mod state;

pub use builder::MockServerBuilder;
pub use fault::{ExpiresIn, Fault};
pub use server::MockServer;
pub use state::{ApiCall, MockStats};
