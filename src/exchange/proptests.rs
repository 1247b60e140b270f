//! Property tests: the reply readers never panic and always return a typed result.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{BigVisionExchange, OAuth2PasswordExchange, TokenExchange, TokenReply};
use crate::client::{MAX_REPLY_BYTES, check_grant};
use crate::{Endpoint, Error};

fn exchanges() -> Vec<Box<dyn TokenExchange>> {
    let url: http::Uri = "http://127.0.0.1:1/api/user/login".parse().unwrap();
    vec![
        Box::new(BigVisionExchange::new(url.clone(), url.clone())),
        Box::new(OAuth2PasswordExchange::new(url, "client")),
    ]
}

/// Reads a reply the way the layer does and checks that any error is a reply error.
fn read(status: u16, body: Vec<u8>) {
    let status = StatusCode::from_u16(status).unwrap();
    for exchange in exchanges() {
        for endpoint in [Endpoint::Login, Endpoint::Refresh] {
            let reply =
                TokenReply::new(status, HeaderMap::new(), Bytes::from(body.clone()), vec![]);
            let result = exchange
                .parse_reply(endpoint, &reply)
                .and_then(|grant| check_grant(endpoint, grant));
            match result {
                Ok(grant) => {
                    assert!(!grant.lifetime.is_zero());
                    assert!(grant.header.is_sensitive());
                }
                Err(error) => assert!(
                    matches!(
                        error,
                        Error::InvalidReply { .. }
                            | Error::LoginRejected { .. }
                            | Error::RefreshRejected { .. }
                    ),
                    "unexpected error kind: {error:?}"
                ),
            }
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("token".to_owned()),
                    Just("access_token".to_owned()),
                    Just("expires_in".to_owned()),
                    Just("refresh_token".to_owned()),
                    Just("refresh_expires_in".to_owned()),
                    Just("result".to_owned()),
                    Just("success".to_owned()),
                    Just("message".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_give_typed_results(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(403), 200u16..500],
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        read(status, body);
    }

    #[test]
    fn arbitrary_json_gives_typed_results(
        status in prop_oneof![Just(200u16), Just(401), 200u16..500],
        value in json_value(),
    ) {
        read(status, value.to_string().into_bytes());
    }

    #[test]
    fn arbitrary_token_fields_give_typed_results(
        token in prop_oneof![".{0,64}".prop_map(Value::String), json_value()],
        expires_in in json_value(),
        refresh in json_value(),
    ) {
        let body = json!({
            "success": true,
            "result": {"token": token.clone(), "expires_in": expires_in.clone(), "refresh_token": refresh},
            "access_token": token,
            "expires_in": expires_in,
        });
        read(200, body.to_string().into_bytes());
    }
}

#[test]
fn reply_at_the_cap_is_read() {
    let padding = "x".repeat(MAX_REPLY_BYTES - 200);
    let body = json!({
        "success": true,
        "result": {"token": "abc", "expires_in": 300, "padding": padding},
    });
    let bytes = body.to_string().into_bytes();
    assert!(bytes.len() <= MAX_REPLY_BYTES);

    read(200, bytes);
}

#[test]
fn sub_second_lifetime_names_the_value() {
    let url: http::Uri = "http://127.0.0.1:1/api/user/login".parse().unwrap();
    let exchange = BigVisionExchange::new(url.clone(), url);
    let body = json!({"success": true, "result": {"token": "t", "expires_in": 0.5}});
    let reply = TokenReply::new(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from(body.to_string()),
        vec![],
    );

    let error = exchange.parse_reply(Endpoint::Login, &reply).unwrap_err();

    assert!(
        matches!(
            error,
            Error::InvalidReply {
                field: "expires_in",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("0.5"), "{error}");
}
