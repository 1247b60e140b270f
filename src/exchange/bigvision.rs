//! The BigVision login and refresh exchange.

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{
    RedactedUrl, TokenExchange, TokenGrant, TokenReply, json_kind, seconds_field, token_field,
};
use crate::{Credentials, Endpoint, Error};

/// The BigVision exchange: JSON login with username and password, JSON refresh with the
/// refresh token.
///
/// Login is `POST <login URL>` with `{"username": .., "password": ..}`; refresh is
/// `POST <refresh URL>` with `{"refresh_token": ..}`. A successful reply of either is
/// `{"success": true, "result": {"token", "expires_in", "refresh_token",
/// "refresh_expires_in"}}`. A reply with status 401 or 403, with `success: false`, or with any
/// other status outside 2xx is a rejection, quoted from its `message` or `error` field.
#[derive(Clone)]
pub struct BigVisionExchange {
    login_url: Uri,
    refresh_url: Uri,
}

impl std::fmt::Debug for BigVisionExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BigVisionExchange")
            .field("login_url", &RedactedUrl(&self.login_url))
            .field("refresh_url", &RedactedUrl(&self.refresh_url))
            .finish()
    }
}

impl BigVisionExchange {
    /// Creates the exchange for the given login and refresh URLs.
    pub fn new(login_url: Uri, refresh_url: Uri) -> Self {
        BigVisionExchange {
            login_url,
            refresh_url,
        }
    }

    /// Returns the login URL.
    pub fn login_url(&self) -> &Uri {
        &self.login_url
    }

    /// Returns the refresh URL.
    pub fn refresh_url(&self) -> &Uri {
        &self.refresh_url
    }
}

pub(crate) fn json_post(url: &Uri, body: Vec<u8>) -> Result<Request<Full<Bytes>>, Error> {
    Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| Error::config("url", format!("cannot build a request: {error}")))
}

impl TokenExchange for BigVisionExchange {
    fn login_request(&self, credentials: &Credentials) -> Result<Request<Full<Bytes>>, Error> {
        let body = json!({
            "username": credentials.username(),
            "password": credentials.password(),
        });
        json_post(&self.login_url, body.to_string().into_bytes())
    }

    fn refresh_request(&self, refresh_token: &SecretString) -> Result<Request<Full<Bytes>>, Error> {
        let body = json!({ "refresh_token": refresh_token.expose_secret() });
        json_post(&self.refresh_url, body.to_string().into_bytes())
    }

    fn parse_reply(&self, endpoint: Endpoint, reply: &TokenReply) -> Result<TokenGrant, Error> {
        let parsed = reply.json(endpoint);
        let rejected_status = !reply.status.is_success();
        let mut json = match parsed {
            Ok(json) => json,
            Err(_) if rejected_status => {
                return Err(reply.rejected(endpoint, reply.server_message(None)));
            }
            Err(error) => return Err(error),
        };

        let success = json.get("success").and_then(Value::as_bool);
        if rejected_status || success == Some(false) {
            return Err(reply.rejected(endpoint, reply.server_message(Some(&json))));
        }

        let result = match json.get_mut("result") {
            Some(result @ Value::Object(_)) => result,
            Some(other) => {
                return Err(Error::invalid_reply(
                    endpoint,
                    "result",
                    format!("is not an object but {}", json_kind(other)),
                ));
            }
            None => return Err(Error::invalid_reply(endpoint, "result", "is missing")),
        };

        grant_from_fields(endpoint, result, "result.token", "token")
    }
}

/// Reads the four token fields from a JSON object; `token_key` names the access token field.
pub(crate) fn grant_from_fields(
    endpoint: Endpoint,
    object: &mut Value,
    token_path: &'static str,
    token_key: &str,
) -> Result<TokenGrant, Error> {
    let access_token = token_field(endpoint, token_path, object.get_mut(token_key))?
        .ok_or_else(|| Error::invalid_reply(endpoint, token_path, "is missing"))?;
    let expires_in = seconds_field(endpoint, "expires_in", object.get("expires_in"))?;
    let refresh_token = token_field(endpoint, "refresh_token", object.get_mut("refresh_token"))?;
    let refresh_expires_in = seconds_field(
        endpoint,
        "refresh_expires_in",
        object.get("refresh_expires_in"),
    )?;

    Ok(TokenGrant {
        access_token,
        expires_in,
        refresh_token,
        refresh_expires_in,
    })
}
