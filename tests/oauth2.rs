//! The OAuth 2.0 password and refresh-token exchange against a token endpoint on loopback
//! that replies as Keycloak does.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigvision_auth::{BigVisionAuthLayer, Credentials, Error, OAuth2PasswordExchange};
use bytes::Bytes;
use common::*;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A token endpoint at `/token` and a protected API under `/api`. It records the form of
/// every token request and issues `access-N` / `refresh-N` tokens that live 60 / 600 s.
#[derive(Clone, Default)]
struct Keycloak {
    grants: Arc<Mutex<Vec<HashMap<String, String>>>>,
    issued: Arc<Mutex<Vec<String>>>,
    token_type: Arc<Mutex<&'static str>>,
}

impl Keycloak {
    async fn start() -> (Keycloak, String) {
        let keycloak = Keycloak::default();
        *keycloak.token_type.lock().unwrap() = "Bearer";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = keycloak.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let server = server.clone();
                let service = hyper::service::service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.answer(request).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (keycloak, base)
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path().starts_with("/api") {
            let token = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_owned);
            let known = token.is_some_and(|token| self.issued.lock().unwrap().contains(&token));
            let status = if known {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            return reply(status, json!({}));
        }

        let form_encoded = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|value| value == "application/x-www-form-urlencoded");
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
        self.grants.lock().unwrap().push(form.clone());
        if !form_encoded {
            return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
        }

        let granted = match form.get("grant_type").map(String::as_str) {
            Some("password") => form.get("password").is_some_and(|p| p == PASSWORD),
            Some("refresh_token") => form
                .get("refresh_token")
                .is_some_and(|token| self.issued.lock().unwrap().contains(token)),
            _ => false,
        };
        if !granted {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_grant", "error_description": "Invalid user credentials"}),
            );
        }
        let n = self.grants.lock().unwrap().len();
        let (access, refresh) = (format!("access-{n}"), format!("refresh-{n}"));
        self.issued
            .lock()
            .unwrap()
            .extend([access.clone(), refresh.clone()]);
        reply(
            StatusCode::OK,
            json!({
                "access_token": access,
                "expires_in": 60,
                "refresh_token": refresh,
                "refresh_expires_in": 600,
                "token_type": *self.token_type.lock().unwrap(),
            }),
        )
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn layer(base: &str, password: &str) -> BigVisionAuthLayer {
    let exchange = OAuth2PasswordExchange::new(format!("{base}/token").parse().unwrap(), "ocr")
        .client_secret("client-secret")
        .scope("openid");
    BigVisionAuthLayer::builder(client(), Credentials::new(USERNAME, password))
        .base_url(format!("{base}/api"))
        .exchange(exchange)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn password_grant_then_refresh_grant() {
    let (keycloak, base) = Keycloak::start().await;
    let layer = layer(&base, PASSWORD);
    let handle = layer.handle();
    let mut service = ServiceBuilder::new().layer(layer).service(client());

    let first = service
        .ready()
        .await
        .unwrap()
        .call(get(format!("{base}/api/x")))
        .await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    let renewed = service
        .ready()
        .await
        .unwrap()
        .call(get(format!("{base}/api/x")))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(first.unwrap().status(), StatusCode::OK);
    assert_eq!(renewed.unwrap().status(), StatusCode::OK);
    let grants = keycloak.grants.lock().unwrap().clone();
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0]["grant_type"], "password");
    assert_eq!(grants[0]["username"], USERNAME);
    assert_eq!(grants[0]["client_id"], "ocr");
    assert_eq!(grants[0]["client_secret"], "client-secret");
    assert_eq!(grants[0]["scope"], "openid");
    assert_eq!(grants[1]["grant_type"], "refresh_token");
    assert_eq!(grants[1]["refresh_token"], "refresh-1");
    assert_eq!(handle.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_is_login_rejected() {
    let (_keycloak, base) = Keycloak::start().await;
    let layer = layer(&base, "wrong password");

    let error = layer.handle().login().await.unwrap_err();

    match error {
        Error::LoginRejected { status, message } => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(message, "Invalid user credentials");
        }
        other => panic!("expected LoginRejected, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn non_bearer_token_type_is_invalid() {
    let (keycloak, base) = Keycloak::start().await;
    *keycloak.token_type.lock().unwrap() = "mac";
    let layer = layer(&base, PASSWORD);

    let error = layer.handle().login().await.unwrap_err();

    assert!(
        matches!(
            error,
            Error::InvalidReply {
                field: "token_type",
                ..
            }
        ),
        "{error}"
    );
}
