//! No password or token shows in tracing output at any level, in errors or in `Debug`.
//!
//! This test has a binary of its own: tracing caches per call site whether anyone listens,
//! and tests on other threads without a subscriber would make it cache "no one".

mod common;

use std::error::Error as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigvision_auth::mock::{Fault, MockServer};
use bigvision_auth::{BigVisionAuthLayer, Credentials};
use bytes::Bytes;
use common::*;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

async fn status<S>(service: &mut S, url: String) -> Result<StatusCode, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>>,
{
    let response = service.ready().await?.call(get(url)).await?;
    Ok(response.status())
}

/// A `MakeWriter` that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Wraps the login client and records every token its replies carry.
fn recording_login_client(
    tokens: Arc<Mutex<Vec<String>>>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let tokens = tokens.clone();
        async move {
            let response = client().request(request).await?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await?.to_bytes();
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                for key in ["token", "refresh_token"] {
                    if let Some(token) = json["result"][key].as_str() {
                        tokens.lock().unwrap().push(token.to_owned());
                    }
                }
            }
            Ok::<_, BoxError>(Response::from_parts(parts, Full::new(bytes)))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn no_secret_in_logs_errors_or_debug() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(40))
        .refresh_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let layer = BigVisionAuthLayer::builder(
        recording_login_client(tokens.clone()),
        Credentials::new(USERNAME, PASSWORD),
    )
    .base_url(server.base_url())
    .build()
    .unwrap();
    let handle = layer.handle();
    // Checks that the header reaches the client marked sensitive.
    let checking_client = tower::service_fn(|request: Request<Full<Bytes>>| {
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            assert!(value.is_sensitive());
        }
        client().request(request)
    });
    let mut service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(checking_client);
    let mut output = Vec::new();

    // Login, a login rejected with a message that echoes the password, a retried 503.
    server.push_login_fault(Fault::json(
        401,
        serde_json::json!({"success": false, "message": format!("wrong password {PASSWORD}")}),
    ));
    let rejected = handle.login().await.unwrap_err();
    output.push(format!("{rejected} {rejected:?}"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.push_login_fault(Fault::status(503));
    assert_eq!(
        status(&mut service, server.url("/ocr")).await.unwrap(),
        StatusCode::OK
    );
    // A refresh in the background, then a revocation followed by a replay.
    tokio::time::sleep(Duration::from_secs(31)).await;
    status(&mut service, server.url("/ocr")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.revoke_all();
    assert_eq!(
        status(&mut service, server.url("/ocr")).await.unwrap(),
        StatusCode::OK
    );
    // A failure that reaches the caller, with a transport error as its source.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.revoke_all();
    server.set_login_fault(Some(Fault::Close));
    server.set_refresh_fault(Some(Fault::Close));
    let rejected_again = status(&mut service, server.url("/ocr")).await.unwrap();
    assert_eq!(rejected_again, StatusCode::UNAUTHORIZED);
    let failed = status(&mut service, server.url("/ocr")).await;
    let failed = match failed {
        Ok(status) => panic!("expected a failure, got {status}"),
        Err(error) => error,
    };
    output.push(format!("{failed} {failed:?}"));
    let mut source = failed.source();
    while let Some(error) = source {
        output.push(format!("{error} {error:?}"));
        source = error.source();
    }
    output.push(format!(
        "{layer:?} {service:?} {handle:?} {:?}",
        handle.stats()
    ));
    output.push(format!("{:?}", Credentials::new(USERNAME, PASSWORD)));

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let output = output.join("\n");
    let tokens = tokens.lock().unwrap().clone();
    assert!(tokens.len() >= 6, "only {} tokens recorded", tokens.len());
    assert!(
        logs.contains("token fetched"),
        "tracing output was not captured"
    );
    assert!(output.contains("[redacted]"));
    for (name, text) in [("logs", &logs), ("output", &output)] {
        assert!(!text.contains(PASSWORD), "password in {name}");
        for token in &tokens {
            let signature = token.rsplit('.').next().unwrap();
            assert!(!text.contains(token.as_str()), "token in {name}");
            assert!(!text.contains(signature), "token signature in {name}");
        }
    }
}
