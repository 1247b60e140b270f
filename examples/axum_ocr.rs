//! An axum service that forwards documents to the BigVision API for its own clients, with
//! one token cache shared by every handler through axum state. It runs against the crate's
//! mock server on 127.0.0.1, sends itself a few requests, and exits.
//!
//! ```text
//! cargo run --example axum_ocr --features mock
//! ```

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bigvision_auth::mock::MockServer;
use bigvision_auth::{BigVisionAuthLayer, BoxError, Credentials};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// The client stack every handler shares: cloning it is cheap, and every clone uses the
/// same token cache.
type OcrClient =
    BoxCloneSyncService<Request<Full<Bytes>>, http::Response<hyper::body::Incoming>, BoxError>;

#[derive(Clone)]
struct AppState {
    ocr: OcrClient,
    ocr_url: String,
}

/// Forwards the request body to the API's OCR endpoint and returns its response.
async fn forward_document(State(state): State<AppState>, document: Bytes) -> (StatusCode, String) {
    let request = Request::post(&state.ocr_url)
        .header("content-type", "application/json")
        .body(Full::new(document))
        .expect("a valid request");
    match state.ocr.oneshot(request).await {
        Ok(response) => {
            let status = response.status();
            let body = match response.into_body().collect().await {
                Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                Err(error) => format!("failed to read the API's answer: {error}"),
            };
            (status, body)
        }
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            format!("OCR API call failed: {error}"),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let api = MockServer::builder()
        .user("svc", "svc-password")
        .start()
        .await?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = BigVisionAuthLayer::builder(client.clone(), Credentials::new("svc", "svc-password"))
        .base_url(api.base_url())
        .build()?;
    // Fail at start-up on a wrong password rather than on the first client request.
    auth.handle().login().await?;
    let ocr = ServiceBuilder::new()
        .boxed_clone_sync()
        .timeout(Duration::from_secs(30))
        .layer(auth)
        .service(client.clone());
    let state = AppState {
        ocr,
        ocr_url: api.url("/ocr"),
    };

    let app = Router::new()
        .route("/documents", post(forward_document))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "forwarding service on http://{address}/documents, API at {}",
        api.base_url()
    );

    for n in 0..5 {
        let request = Request::post(format!("http://{address}/documents"))
            .body(Full::new(Bytes::from(format!(r#"{{"page": {n}}}"#))))?;
        let response = client.request(request).await?;
        println!("document {n}: {}", response.status());
    }

    let stats = api.stats();
    println!(
        "API: {} login, {} calls authorized, {} rejected",
        stats.logins, stats.authorized, stats.rejected
    );
    server.abort();
    if stats.logins != 1 || stats.rejected != 0 {
        return Err("expected one login and no rejected calls".into());
    }
    Ok(())
}
