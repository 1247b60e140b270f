//! Tokens go only to the API's origin, and no secret shows in output.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigvision_auth::mock::MockServer;
use bigvision_auth::{BigVisionAuthLayer, BigVisionExchange, Credentials, Error};
use bytes::Bytes;
use common::*;
use http::header::{AUTHORIZATION, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

/// A server on loopback that redirects: `/api/away` to `away_url`, `/api/hop` to
/// `/api/final` on itself. It records whether each request carried a token.
struct Redirector {
    base_url: String,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

async fn start_redirector(away_url: String) -> Redirector {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let recorded = recorded.clone();
            let away_url = away_url.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let path = request.uri().path().to_owned();
                let has_token = request.headers().contains_key(AUTHORIZATION);
                recorded.lock().unwrap().push((path.clone(), has_token));
                let response = match path.as_str() {
                    "/api/away" => redirect(&away_url),
                    "/api/hop" => redirect("/api/final"),
                    _ => Response::new(Full::new(Bytes::from_static(b"final"))),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Redirector {
        base_url: format!("http://{addr}/api"),
        seen,
    }
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(LOCATION, location)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Builds a layer whose API origin is the redirector and which logs in at the mock.
fn redirector_layer(redirector: &Redirector, mock: &MockServer) -> BigVisionAuthLayer {
    let exchange = BigVisionExchange::new(
        mock.url("/user/login").parse().unwrap(),
        mock.url("/user/refresh").parse().unwrap(),
    );
    BigVisionAuthLayer::builder(client(), Credentials::new(USERNAME, PASSWORD))
        .base_url(redirector.base_url.clone())
        .exchange(exchange)
        .build()
        .unwrap()
}

#[tokio::test]
async fn redirect_outside_drops_token() {
    let mock = MockServer::start().await.unwrap();
    let capture = MockServer::start().await.unwrap();
    let redirector = start_redirector(capture.url("/capture")).await;
    let mut service = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(redirector_layer(&redirector, &mock))
        .service(client());

    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(format!("{}/away", redirector.base_url)))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(capture.api_calls().len(), 1);
    assert_eq!(capture.api_calls()[0].token, None);
    assert_eq!(
        redirector.seen.lock().unwrap()[0],
        ("/api/away".to_owned(), true)
    );
}

#[tokio::test]
async fn redirect_inside_drops_token() {
    let mock = MockServer::start().await.unwrap();
    let capture = MockServer::start().await.unwrap();
    let redirector = start_redirector(capture.url("/capture")).await;
    let mut service = ServiceBuilder::new()
        .layer(redirector_layer(&redirector, &mock))
        .layer(FollowRedirectLayer::new())
        .service(client());

    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(format!("{}/away", redirector.base_url)))
        .await
        .unwrap();

    // The capture server's 401 reaches the layer as if the API had rejected the token, so
    // the layer replays once; neither attempt carries the token past the redirect.
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!capture.api_calls().is_empty());
    assert!(capture.api_calls().iter().all(|call| call.token.is_none()));
}

#[tokio::test]
async fn same_origin_redirect_keeps_token() {
    let mock = MockServer::start().await.unwrap();
    let redirector = start_redirector(String::new()).await;
    let mut service = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(redirector_layer(&redirector, &mock))
        .service(client());

    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(format!("{}/hop", redirector.base_url)))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let seen = redirector.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("/api/hop".to_owned(), true),
            ("/api/final".to_owned(), true)
        ]
    );
}

#[tokio::test]
async fn extra_origin_gets_token() {
    let mock = MockServer::start().await.unwrap();
    let other = MockServer::start().await.unwrap();
    let layer = builder(&mock)
        .extra_origin(format!("http://{}", other.addr()))
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());

    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(other.url("/ocr")))
        .await
        .unwrap();

    // The other server did not issue the token, but it was sent to it.
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(other.api_calls()[0].token.is_some());
}

#[test]
fn plain_http_to_remote_host_is_rejected() {
    let layer = BigVisionAuthLayer::builder(client(), Credentials::new(USERNAME, PASSWORD))
        .base_url("http://bigvision.example/api")
        .build();

    let error = layer.unwrap_err();

    assert!(matches!(
        error,
        Error::InvalidConfig {
            setting: "base_url",
            ..
        }
    ));
    assert!(error.to_string().contains("allow_insecure_http"));
}

#[test]
fn plain_http_to_remote_host_needs_opt_in() {
    let layer = BigVisionAuthLayer::builder(client(), Credentials::new(USERNAME, PASSWORD))
        .base_url("http://bigvision.example/api")
        .allow_insecure_http()
        .build();

    assert!(layer.is_ok());
}

type Configure = Box<dyn Fn(bigvision_auth::Builder) -> bigvision_auth::Builder>;

#[test]
fn invalid_settings_name_the_setting() {
    let cases: Vec<(&str, Configure)> = vec![
        ("base_url", Box::new(|b| b.base_url("not a url"))),
        ("base_url", Box::new(|b| b.base_url("/relative"))),
        ("login_path", Box::new(|b| b.login_path("user/login"))),
        (
            "renewal_window",
            Box::new(|b| b.renewal_window(bigvision_auth::RenewalWindow::Fraction(1.5))),
        ),
        (
            "fetch_timeout",
            Box::new(|b| b.fetch_timeout(Duration::ZERO)),
        ),
        ("fetch_attempts", Box::new(|b| b.fetch_attempts(0))),
        ("extra_origin", Box::new(|b| b.extra_origin("ftp://x"))),
    ];
    for (expected, configure) in cases {
        let builder = BigVisionAuthLayer::builder(client(), Credentials::new(USERNAME, PASSWORD))
            .base_url("http://127.0.0.1:1/api");

        let error = configure(builder).build().unwrap_err();

        assert!(
            matches!(error, Error::InvalidConfig { setting, .. } if setting == expected),
            "{expected}: {error}"
        );
    }
}

#[tokio::test]
async fn default_content_type_fills_only_missing() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let recording_client = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let content_type = request.headers().get(http::header::CONTENT_TYPE).cloned();
        recorded.lock().unwrap().push(content_type);
        client().request(request)
    });
    let mock = MockServer::start().await.unwrap();
    let layer = builder(&mock)
        .default_content_type(http::HeaderValue::from_static("application/json"))
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(recording_client);

    let plain = get(mock.url("/ocr"));
    let mut own = get(mock.url("/ocr"));
    own.headers_mut()
        .insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
    let other_origin = get("http://127.0.0.1:9/elsewhere".to_owned());
    service.ready().await.unwrap().call(plain).await.unwrap();
    service.ready().await.unwrap().call(own).await.unwrap();
    let _ = service.ready().await.unwrap().call(other_origin).await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].as_ref().unwrap(), "application/json");
    assert_eq!(seen[1].as_ref().unwrap(), "text/plain");
    assert_eq!(seen[2], None);
}
