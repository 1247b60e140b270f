//! Unit tests of the reply readers: `Debug` output, byte-order marks and string lifetimes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::{BigVisionExchange, OAuth2PasswordExchange, TokenExchange, TokenReply};
use crate::client::check_grant;
use crate::{Endpoint, Error, MAX_TOKEN_LIFETIME};

const ACCESS_TOKEN: &str = "access-0123456789abcdef";
const REFRESH_TOKEN: &str = "refresh-fedcba9876543210";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn bigvision() -> BigVisionExchange {
    let url: http::Uri = "http://127.0.0.1:1/api/user/login".parse().unwrap();
    BigVisionExchange::new(url.clone(), url)
}

fn oauth2() -> OAuth2PasswordExchange {
    let url = "http://127.0.0.1:1/realms/ocr/protocol/openid-connect/token";
    OAuth2PasswordExchange::new(url.parse().unwrap(), "client")
}

/// Returns each exchange with a successful reply body in its own format, carrying both tokens and
/// the given extra fields (such as `expires_in`).
fn exchanges_with_bodies(extra: &Value) -> Vec<(Box<dyn TokenExchange>, Vec<u8>)> {
    let extra = extra.as_object().cloned().unwrap_or_default();

    let mut result = Map::new();
    result.insert("token".into(), json!(ACCESS_TOKEN));
    result.insert("refresh_token".into(), json!(REFRESH_TOKEN));
    result.extend(extra.clone());
    let bigvision_body = json!({"success": true, "result": result});

    let mut oauth2_body = Map::new();
    oauth2_body.insert("access_token".into(), json!(ACCESS_TOKEN));
    oauth2_body.insert("token_type".into(), json!("Bearer"));
    oauth2_body.insert("refresh_token".into(), json!(REFRESH_TOKEN));
    oauth2_body.extend(extra);

    vec![
        (
            Box::new(bigvision()),
            bigvision_body.to_string().into_bytes(),
        ),
        (
            Box::new(oauth2()),
            Value::Object(oauth2_body).to_string().into_bytes(),
        ),
    ]
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> TokenReply {
    TokenReply::new(status, HeaderMap::new(), body.into(), vec![])
}

/// Parses a reply and checks the grant the way the layer does, and returns the access and
/// refresh lifetimes or the error message.
fn lifetimes(
    exchange: &dyn TokenExchange,
    body: Vec<u8>,
) -> Result<(Duration, Option<Duration>), String> {
    exchange
        .parse_reply(Endpoint::Login, &reply(StatusCode::OK, body))
        .and_then(|grant| check_grant(Endpoint::Login, grant))
        .map(|checked| (checked.lifetime, checked.refresh_lifetime))
        .map_err(|error| error.to_string())
}

fn assert_hides_tokens(debug: &str) {
    assert!(!debug.contains(ACCESS_TOKEN), "access token in {debug}");
    assert!(!debug.contains(REFRESH_TOKEN), "refresh token in {debug}");
}

#[test]
fn reply_debug_hides_tokens() {
    let body = exchanges_with_bodies(&json!({"expires_in": 300}))
        .remove(0)
        .1;
    let length = body.len();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-access-token", HeaderValue::from_static(ACCESS_TOKEN));
    let secrets = vec![SecretString::from(REFRESH_TOKEN.to_owned())];
    let reply = TokenReply::new(StatusCode::OK, headers, Bytes::from(body), secrets);

    for debug in [format!("{reply:?}"), format!("{reply:#?}")] {
        assert_hides_tokens(&debug);
        assert!(debug.contains("200"), "no status in {debug}");
        assert!(
            debug.contains("x-access-token"),
            "no header name in {debug}"
        );
        assert!(
            debug.contains(&format!("\"<{length} bytes>\"")),
            "no body length in {debug}"
        );
    }
}

#[test]
fn grant_debug_hides_tokens() {
    for (exchange, body) in exchanges_with_bodies(&json!({"expires_in": 300})) {
        let grant = exchange
            .parse_reply(Endpoint::Login, &reply(StatusCode::OK, body))
            .unwrap();
        assert_eq!(grant.access_token.expose_secret(), ACCESS_TOKEN);
        assert_eq!(
            grant
                .refresh_token
                .as_ref()
                .map(|token| token.expose_secret()),
            Some(REFRESH_TOKEN)
        );

        for debug in [format!("{grant:?}"), format!("{grant:#?}")] {
            assert_hides_tokens(&debug);
            assert!(debug.contains("[redacted]"), "{debug}");
        }
    }
}

#[test]
fn exchange_debug_hides_client_secret() {
    let secret = "client-secret-0123456789";
    let exchange = oauth2().client_secret(secret);

    for debug in [format!("{exchange:?}"), format!("{exchange:#?}")] {
        assert!(!debug.contains(secret), "client secret in {debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }
}

#[test]
fn bom_before_json_is_skipped() {
    for (exchange, body) in exchanges_with_bodies(&json!({"expires_in": 300})) {
        for prefix in [UTF8_BOM.to_vec(), [UTF8_BOM, b" \r\n\t"].concat()] {
            let bytes = [prefix.as_slice(), &body].concat();

            let grant = exchange
                .parse_reply(Endpoint::Login, &reply(StatusCode::OK, bytes))
                .unwrap();

            assert_eq!(grant.access_token.expose_secret(), ACCESS_TOKEN);
            assert_eq!(grant.expires_in, Some(300));
        }
    }
}

#[test]
fn bom_is_skipped_in_rejections() {
    let exchanges: [Box<dyn TokenExchange>; 2] = [Box::new(bigvision()), Box::new(oauth2())];
    for exchange in exchanges {
        for body in [
            br#"{"message": "wrong password"}"#.as_slice(),
            b"wrong password".as_slice(),
        ] {
            let bytes = [UTF8_BOM, body].concat();
            let reply = reply(StatusCode::UNAUTHORIZED, bytes);

            let error = exchange.parse_reply(Endpoint::Login, &reply).unwrap_err();

            match error {
                Error::LoginRejected { message, .. } => assert_eq!(message, "wrong password"),
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
    }
}

#[test]
fn only_one_bom_is_skipped() {
    for (exchange, body) in exchanges_with_bodies(&json!({"expires_in": 300})) {
        let bytes = [UTF8_BOM, UTF8_BOM, &body].concat();

        let error = exchange
            .parse_reply(Endpoint::Login, &reply(StatusCode::OK, bytes))
            .unwrap_err();

        assert!(
            matches!(error, Error::InvalidReply { field: "body", .. }),
            "{error:?}"
        );
    }
}

#[test]
fn string_lifetimes_are_read() {
    // Whitespace around the number is trimmed rather than rejected, because it cannot change
    // the value.
    let cases = [
        ("300", 300),
        ("299.9", 299),
        (" 300 ", 300),
        ("\t300\n", 300),
    ];
    for (text, seconds) in cases {
        let fields = json!({"expires_in": text, "refresh_expires_in": text});
        for (exchange, body) in exchanges_with_bodies(&fields) {
            let grant = exchange
                .parse_reply(Endpoint::Login, &reply(StatusCode::OK, body))
                .unwrap();

            assert_eq!(grant.expires_in, Some(seconds), "{text:?}");
            assert_eq!(grant.refresh_expires_in, Some(seconds), "{text:?}");
        }
    }
}

#[test]
fn string_and_number_lifetimes_match() {
    let literals = [
        "300",
        "299.9",
        "0.5",
        "-5",
        "-0.5",
        "0",
        "86401",
        "1e10",
        "18446744073709551616",
    ];
    for literal in literals {
        let number: Value = serde_json::from_str(literal).unwrap();
        assert!(number.is_number(), "{literal}");
        let as_number = json!({"expires_in": number, "refresh_expires_in": number});
        let as_string = json!({"expires_in": literal, "refresh_expires_in": literal});

        let from_numbers = exchanges_with_bodies(&as_number);
        let from_strings = exchanges_with_bodies(&as_string);
        for ((exchange, number_body), (_, string_body)) in
            from_numbers.into_iter().zip(from_strings)
        {
            assert_eq!(
                lifetimes(exchange.as_ref(), string_body),
                lifetimes(exchange.as_ref(), number_body),
                "{literal}"
            );
        }
    }
}

#[test]
fn string_lifetime_limits_match_numbers() {
    for (exchange, body) in exchanges_with_bodies(&json!({"expires_in": "86401"})) {
        let (lifetime, _) = lifetimes(exchange.as_ref(), body).unwrap();

        assert_eq!(lifetime, MAX_TOKEN_LIFETIME);
    }

    for (exchange, body) in exchanges_with_bodies(&json!({"expires_in": "-5"})) {
        let message = lifetimes(exchange.as_ref(), body).unwrap_err();

        assert!(
            message.contains("`expires_in` must be a positive number of seconds, got -5"),
            "{message}"
        );
    }

    for (exchange, body) in exchanges_with_bodies(&json!({"expires_in": "0.5"})) {
        let message = lifetimes(exchange.as_ref(), body).unwrap_err();

        assert!(
            message.contains("`expires_in` must be at least one second, got 0.5"),
            "{message}"
        );
    }
}

#[test]
fn non_numeric_string_lifetime_is_rejected() {
    for field in ["expires_in", "refresh_expires_in"] {
        for (exchange, body) in exchanges_with_bodies(&json!({ field: "abc" })) {
            let error = exchange
                .parse_reply(Endpoint::Login, &reply(StatusCode::OK, body))
                .unwrap_err();

            assert!(
                matches!(&error, Error::InvalidReply { field: named, .. } if *named == field),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains("is not a number of seconds: string of 3 characters"),
                "{message}"
            );
            assert!(!message.contains("abc"), "{message}");
        }
    }
}

#[test]
fn non_finite_string_lifetime_is_rejected() {
    for text in ["1e400", "-1e400", "inf", "NaN"] {
        for (exchange, body) in exchanges_with_bodies(&json!({"expires_in": text})) {
            let error = exchange
                .parse_reply(Endpoint::Login, &reply(StatusCode::OK, body))
                .unwrap_err();

            assert!(
                matches!(
                    error,
                    Error::InvalidReply {
                        field: "expires_in",
                        ..
                    }
                ),
                "{text}: {error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains("is not a finite number of seconds"),
                "{text}: {message}"
            );
            assert!(!message.contains(text), "{text}: {message}");
        }
    }
}

#[test]
fn exchange_debug_hides_url_user_information() {
    let login: http::Uri = "https://user:url-secret@bigvision.example/api/user/login"
        .parse()
        .unwrap();
    let refresh: http::Uri = "https://bigvision.example/api/user/refresh"
        .parse()
        .unwrap();
    let bigvision = BigVisionExchange::new(login.clone(), refresh);
    let oauth2 = OAuth2PasswordExchange::new(login, "client");

    let texts = [
        format!("{bigvision:?}"),
        format!("{bigvision:#?}"),
        format!("{oauth2:?}"),
        format!("{oauth2:#?}"),
    ];

    for text in &texts {
        assert!(!text.contains("url-secret"), "{text}");
        assert!(
            text.contains("https://[redacted]@bigvision.example/api/user/login"),
            "{text}"
        );
    }
    assert!(texts[0].contains("https://bigvision.example/api/user/refresh"));
}
