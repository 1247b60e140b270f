//! A [`tower`] layer that logs in to the BigVision OCR API, keeps its bearer token fresh,
//! and sets `Authorization: Bearer <token>` on every request to the API.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use bigvision_auth::{BigVisionAuthLayer, Credentials};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let connector = hyper_rustls::HttpsConnectorBuilder::new()
//!     .with_webpki_roots()
//!     .https_only()
//!     .enable_http1()
//!     .build();
//! let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
//! let auth = BigVisionAuthLayer::builder(client.clone(), Credentials::new("alice", "secret"))
//!     .build()?;
//! // Fail fast at start-up on a wrong password.
//! auth.handle().login().await?;
//!
//! let service = ServiceBuilder::new()
//!     // Bounds each whole request, token wait included.
//!     .timeout(Duration::from_secs(30))
//!     // Logs in once, renews in the background, sets the Authorization header.
//!     .layer(auth)
//!     .service(client);
//!
//! let request = http::Request::post("https://bigvision.id/api/ocr")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! let response = service.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! # What the layer does
//!
//! - **One login for any number of requests.** The first request that finds no usable token
//!   starts a fetch; every other request, on any clone of the service, waits for that one
//!   fetch. The fetch runs as a task of its own, so a caller that gives up (a timeout, a
//!   dropped future) does not cancel it: it finishes and serves the requests that come next.
//! - **Renewal ahead of expiry.** Lifetimes are measured from the reply's arrival, on the
//!   monotonic clock. Inside the [`RenewalWindow`] (by default the last quarter of the
//!   token's lifetime), the next request starts one background renewal and is sent at once
//!   with the still-valid token. Only a request that finds the token expired, or within the
//!   safety margin ([`DEFAULT_EXPIRY_MARGIN`], at most a tenth of the lifetime) of expiry,
//!   waits.
//! - **Refresh token first.** A renewal uses the refresh token while it is valid, keeps the
//!   new one when the server rotates it, and logs in with the password when the refresh
//!   token has expired or is rejected.
//! - **401 handling.** A response with the rejection status (401 by default) drops the
//!   token it carried, if that token is still the current one, and starts one renewal.
//!   The request is then sent once more with the new token, if its body can be re-created
//!   (see [`ReplayBody`]); a rejection of the replay goes to the caller. A new token
//!   is one younger than 10 s or a tenth of its lifetime. After the API rejected a new
//!   token, a rejection of the next one is ignored until it is older than a backoff. The
//!   backoff starts at 250 ms and doubles with each new token rejected in a row, up to
//!   60 s, so a server that rejects every token cannot cause a login per request.
//! - **Failures.** Each login or refresh call has its own timeout. Transient failures
//!   (unreachable, timed out, 429, 5xx) are retried with exponential backoff and jitter,
//!   honouring `Retry-After`. A refresh that fails for any reason is followed at once by a
//!   password login. While the server rejects the credentials, login attempts slow down to
//!   one per [`MAX_REJECTED_LOGIN_DELAY`]. After a failed fetch, requests that need a new token fail at
//!   once with its typed [`Error`] until the backoff delay has passed; a failed background
//!   renewal keeps the still-valid token in use.
//! - **Secrets.** The token goes only to the base URL's origin and the extra origins you
//!   name; other requests pass through untouched. The header is marked sensitive. No
//!   `Debug` output, error or log line contains the password or a token.
//! - **Hot path.** With a usable token, a request costs one atomic load of the current
//!   token, one of its phase (kept current by a timer task, so no clock read), and a clone
//!   of the service clone's own copy of the header, taken from a copy per thread, so
//!   clones made for tasks on different cores do not write a shared reference count. No
//!   lock is taken. With [`NoReplay`] the layer makes no
//!   allocation of its own. The default [`CloneBody`] keeps a copy of the request for one
//!   replay, and copying a request whose header map is not empty allocates.
//!
//! # Where it sits in a stack
//!
//! Put the layer inside (after) `tower_http::follow_redirect::FollowRedirectLayer`, so
//! every hop of a redirect passes through the layer's origin check; either order is safe,
//! since a hop to another origin never gets the token. Put retry outside the layer, with
//! [`TokenRetryPolicy`] to retry requests that failed on a transient token-endpoint error.
//! A timeout outside the layer bounds the whole request, token wait included.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod cache;
mod client;
mod credentials;
mod error;
mod exchange;
mod future;
mod handle;
mod layer;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;
mod replay;
mod retry;
mod scope;
mod service;
mod stats;
#[cfg(feature = "redis")]
mod store;

pub use cache::{DEFAULT_EXPIRY_MARGIN, RenewalWindow};
pub use client::{
    Backoff, DEFAULT_TOKEN_LIFETIME, MAX_REFRESH_LIFETIME, MAX_REJECTED_LOGIN_DELAY,
    MAX_REPLY_BYTES, MAX_RETRY_AFTER, MAX_TOKEN_LEN, MAX_TOKEN_LIFETIME,
};
pub use credentials::Credentials;
pub use error::{Endpoint, Error, MAX_MESSAGE_LEN, SharedError};
pub use exchange::{
    BigVisionExchange, OAuth2PasswordExchange, TokenExchange, TokenGrant, TokenReply,
};
pub use future::ResponseFuture;
pub use handle::AuthHandle;
pub use layer::{
    BigVisionAuthLayer, Builder, DEFAULT_BASE_URL, DEFAULT_FETCH_ATTEMPTS, DEFAULT_FETCH_TIMEOUT,
    DEFAULT_LOGIN_PATH, DEFAULT_REFRESH_PATH,
};
pub use replay::{CloneBody, NoReplay, ReplayBody};
pub use retry::TokenRetryPolicy;
pub use service::BigVisionAuth;
pub use stats::{AuthStats, FailureCounts};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisTokenStore;

/// An error of any type, as tower passes them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
