//! Shows the layer logging in once, renewing its token in the background and logging in
//! again when the refresh token expires.
//!
//! With no environment set, it runs against the crate's mock server on 127.0.0.1, with
//! lifetimes cut to seconds so that every kind of renewal happens within about 16 seconds:
//!
//! ```text
//! cargo run --example quickstart --features mock
//! ```
//!
//! With `BIGVISION_USERNAME` and `BIGVISION_PASSWORD` set, it logs in to a real server
//! instead (`BIGVISION_BASE_URL`, default `https://bigvision.id/api`) and sends a few GET
//! requests to `BIGVISION_PATH` (default `/user/info`) under it.

use std::env;
use std::process::ExitCode;
use std::time::Duration;

use bigvision_auth::mock::MockServer;
use bigvision_auth::{AuthHandle, AuthStats, BigVisionAuthLayer, BoxError, Credentials};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Access-token lifetime of the mock. The default renewal window (the last quarter) makes
/// the layer renew 3 s after each login or refresh.
const TOKEN_LIFETIME: Duration = Duration::from_secs(4);
/// Refresh-token lifetime of the mock. Refresh tokens are not rotated, so each one expires
/// this long after the login that issued it, and the renewal after that is a password login.
const REFRESH_LIFETIME: Duration = Duration::from_secs(8);
/// Time between two API requests.
const REQUEST_INTERVAL: Duration = Duration::from_millis(250);
/// How long the mock run sends requests: two login cycles.
const RUN_TIME: Duration = Duration::from_secs(16);
/// The timeout around each whole request, token wait included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The maximum wait, after the last request, for a renewal still in flight.
const SETTLE_TIME: Duration = Duration::from_secs(2);
/// Requests sent in the run against a real server.
const REMOTE_REQUESTS: u32 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let result = match remote_credentials() {
        Ok(Some(credentials)) => run_remote(credentials).await,
        Ok(None) => run_mock().await,
        Err(error) => Err(error),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// Reads the credentials for a real server, or returns `None` when neither variable is set.
fn remote_credentials() -> Result<Option<Credentials>, BoxError> {
    let username = env::var("BIGVISION_USERNAME").ok();
    let password = env::var("BIGVISION_PASSWORD").ok();
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials::new(username, password))),
        (None, None) => Ok(None),
        _ => Err(
            "set both BIGVISION_USERNAME and BIGVISION_PASSWORD to use a real server, \
                  or neither to use the mock server"
                .into(),
        ),
    }
}

async fn run_mock() -> Result<ExitCode, BoxError> {
    // NOTE: with rotation on (the mock's default), every refresh would issue a refresh token
    // with a full lifetime, and a busy client would never have to log in again.
    let server = MockServer::builder()
        .token_lifetime(TOKEN_LIFETIME)
        .refresh_lifetime(REFRESH_LIFETIME)
        .rotate_refresh_tokens(false)
        .start()
        .await?;
    println!("mock server at {}", server.base_url());
    println!(
        "access tokens last {} s, refresh tokens {} s; one request every {} ms for {} s",
        TOKEN_LIFETIME.as_secs(),
        REFRESH_LIFETIME.as_secs(),
        REQUEST_INTERVAL.as_millis(),
        RUN_TIME.as_secs(),
    );

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth =
        BigVisionAuthLayer::builder(client.clone(), Credentials::new("demo", "demo-password"))
            .base_url(server.base_url())
            .build()?;
    let handle = auth.handle();
    let mut service = ServiceBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .layer(auth)
        .service(client);

    let start = Instant::now();
    let mut events = EventPrinter::new(start);
    handle.login().await?;
    events.print_changes(&handle);

    let mut sent = 0u64;
    let mut ok = 0u64;
    let mut failed = 0u64;
    let mut ticks = tokio::time::interval(REQUEST_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while start.elapsed() < RUN_TIME {
        ticks.tick().await;
        let request = Request::post(server.url("/ocr"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(br#"{"image": "aGVsbG8="}"#)))?;
        sent += 1;
        match service.ready().await?.call(request).await {
            Ok(response) if response.status().is_success() => ok += 1,
            Ok(response) => {
                failed += 1;
                println!(
                    "{}  request answered {}",
                    events.since_start(),
                    response.status()
                );
            }
            Err(error) => {
                failed += 1;
                println!(
                    "{}  request failed: {}",
                    events.since_start(),
                    error_chain(&*error)
                );
            }
        }
        events.print_changes(&handle);
    }

    // A renewal started by the last request may still be in flight. Waiting for it makes the
    // two sets of counters below describe the same calls.
    let settle_until = Instant::now() + SETTLE_TIME;
    while Instant::now() < settle_until && !counters_agree(&server, &handle) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    events.print_changes(&handle);

    let mock = server.stats();
    let layer = handle.stats();
    println!();
    println!("requests sent {sent}, answered 2xx {ok}, failed {failed}");
    println!(
        "mock server: {} logins, {} refreshes, {} requests authorized, {} rejected",
        mock.logins, mock.refreshes, mock.authorized, mock.rejected
    );
    println!(
        "layer: {} logins, {} refreshes, {} failed token calls, {} tokens rejected, {} replays",
        layer.logins,
        layer.refreshes,
        layer.login_failures + layer.refresh_failures,
        layer.rejected_tokens,
        layer.replays,
    );

    let clean = failed == 0
        && mock.rejected == 0
        && mock.authorized == sent
        && layer.rejected_tokens == 0
        && layer.login_failures == 0
        && layer.refresh_failures == 0;
    if clean {
        println!("every request was authorized and none was rejected");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED: some requests or token calls failed or were rejected");
        Ok(ExitCode::FAILURE)
    }
}

/// Returns whether the layer has stored every token that the mock server issued.
fn counters_agree(server: &MockServer, handle: &AuthHandle) -> bool {
    let mock = server.stats();
    let layer = handle.stats();
    mock.logins == layer.logins && mock.refreshes == layer.refreshes
}

/// Prints a line for each login, refresh or failed token call that the handle's counters
/// show since the last call. A line's time is when the change was seen, which can be up to
/// one request interval after the call.
struct EventPrinter {
    start: Instant,
    last: AuthStats,
    last_login_at: Option<Duration>,
}

impl EventPrinter {
    fn new(start: Instant) -> Self {
        EventPrinter {
            start,
            last: AuthStats::default(),
            last_login_at: None,
        }
    }

    fn since_start(&self) -> String {
        format!("{:5.1} s", self.start.elapsed().as_secs_f64())
    }

    fn print_changes(&mut self, handle: &AuthHandle) {
        let now = handle.stats();
        let time = self.since_start();
        let expires = match now.expires_in {
            Some(left) => format!("token expires in {:.1} s", left.as_secs_f64()),
            None => "no token cached".to_owned(),
        };
        for _ in self.last.refreshes..now.refreshes {
            println!("{time}  refresh  {expires}");
        }
        for _ in self.last.logins..now.logins {
            let elapsed = self.start.elapsed();
            let reason = match self.last_login_at {
                None => "first login".to_owned(),
                Some(at) if elapsed - at >= REFRESH_LIFETIME => format!(
                    "refresh token from the login at {:.1} s has expired",
                    at.as_secs_f64()
                ),
                Some(_) => "password login".to_owned(),
            };
            println!("{time}  login    {expires} ({reason})");
            self.last_login_at = Some(elapsed);
        }
        for _ in self.last.refresh_failures..now.refresh_failures {
            println!("{time}  refresh call failed");
        }
        for _ in self.last.login_failures..now.login_failures {
            println!("{time}  login call failed");
        }
        for _ in self.last.rejected_tokens..now.rejected_tokens {
            println!("{time}  API rejected the token");
        }
        self.last = now;
    }
}

async fn run_remote(credentials: Credentials) -> Result<ExitCode, BoxError> {
    let base_url = env::var("BIGVISION_BASE_URL")
        .unwrap_or_else(|_| bigvision_auth::DEFAULT_BASE_URL.to_owned());
    let base_url = base_url.trim_end_matches('/').to_owned();
    // NOTE: the API's documentation names no endpoint besides login, so `/user/info` is a
    // guess. A 404 from it still shows that the request went out with a token.
    let path = env::var("BIGVISION_PATH").unwrap_or_else(|_| "/user/info".to_owned());
    println!("server {base_url}, user {}", credentials.username());

    // Plain http stays possible for a server on loopback. The layer rejects a base URL with
    // http to any other host.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let auth = BigVisionAuthLayer::builder(client.clone(), credentials)
        .base_url(base_url.as_str())
        // The BigVision API expects `Content-Type: application/json` on every call.
        .default_content_type(HeaderValue::from_static("application/json"))
        .build()?;
    let handle = auth.handle();
    let mut service = ServiceBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .layer(auth)
        .service(client);

    handle.login().await?;
    let expires = handle.expires_in().unwrap_or_default();
    println!("logged in; token expires in {} s", expires.as_secs());

    let url = format!("{base_url}{path}");
    let mut rejected = false;
    for attempt in 1..=REMOTE_REQUESTS {
        let request = Request::get(url.as_str()).body(Full::new(Bytes::new()))?;
        let response = service.ready().await?.call(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("GET {url}: {status} ({} bytes)", body.len());
        rejected |= status == http::StatusCode::UNAUTHORIZED;
        if attempt < REMOTE_REQUESTS {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    let stats = handle.stats();
    println!(
        "layer: {} logins, {} refreshes, {} tokens rejected",
        stats.logins, stats.refreshes, stats.rejected_tokens
    );
    Ok(if rejected {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Formats an error with its sources, as `outer: inner: ...`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
