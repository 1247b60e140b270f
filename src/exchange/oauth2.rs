//! The OAuth 2.0 password and refresh-token grants (RFC 6749, sections 4.3 and 6).

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::bigvision::grant_from_fields;
use super::{TokenExchange, TokenGrant, TokenReply, json_kind};
use crate::{Credentials, Endpoint, Error};

/// The OAuth 2.0 resource-owner password grant, renewed with the refresh-token grant.
///
/// Both go to one token endpoint as `application/x-www-form-urlencoded` POSTs
/// (`grant_type=password` and `grant_type=refresh_token`), with the client ID and, for a
/// confidential client, the client secret in the form. The reply is the standard
/// `{"access_token", "expires_in", "refresh_token", "refresh_expires_in"}` object; a non-2xx
/// reply is a rejection quoted from `error_description` or `error`. Keycloak's token endpoint,
/// `<realm URL>/protocol/openid-connect/token`, speaks this.
///
/// ```
/// use bigvision_auth::OAuth2PasswordExchange;
///
/// let exchange = OAuth2PasswordExchange::new(
///     "https://keycloak.example/realms/ocr/protocol/openid-connect/token".parse().unwrap(),
///     "ocr-client",
/// )
/// .client_secret("s3cret")
/// .scope("openid");
/// # let _ = exchange;
/// ```
#[derive(Clone)]
pub struct OAuth2PasswordExchange {
    token_url: Uri,
    client_id: String,
    client_secret: Option<SecretString>,
    scope: Option<String>,
}

impl std::fmt::Debug for OAuth2PasswordExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2PasswordExchange")
            .field("token_url", &super::RedactedUrl(&self.token_url))
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

impl OAuth2PasswordExchange {
    /// Creates the exchange for a token endpoint and a public client.
    pub fn new(token_url: Uri, client_id: impl Into<String>) -> Self {
        OAuth2PasswordExchange {
            token_url,
            client_id: client_id.into(),
            client_secret: None,
            scope: None,
        }
    }

    /// Sets the client secret of a confidential client. Default: none.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// Sets the `scope` parameter of the password grant. Default: none.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Returns the token endpoint URL.
    pub fn token_url(&self) -> &Uri {
        &self.token_url
    }

    fn form_post(&self, pairs: &[(&str, &str)]) -> Result<Request<Full<Bytes>>, Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(pairs.iter().copied());
        form.append_pair("client_id", &self.client_id);
        if let Some(secret) = &self.client_secret {
            form.append_pair("client_secret", secret.expose_secret());
        }

        Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form.finish())))
            .map_err(|error| Error::config("token_url", format!("cannot build a request: {error}")))
    }
}

impl TokenExchange for OAuth2PasswordExchange {
    fn login_request(&self, credentials: &Credentials) -> Result<Request<Full<Bytes>>, Error> {
        let mut pairs = vec![
            ("grant_type", "password"),
            ("username", credentials.username()),
            ("password", credentials.password()),
        ];
        if let Some(scope) = &self.scope {
            pairs.push(("scope", scope));
        }
        self.form_post(&pairs)
    }

    fn refresh_request(&self, refresh_token: &SecretString) -> Result<Request<Full<Bytes>>, Error> {
        self.form_post(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ])
    }

    fn parse_reply(&self, endpoint: Endpoint, reply: &TokenReply) -> Result<TokenGrant, Error> {
        let parsed = reply.json(endpoint);
        if !reply.status.is_success() {
            let message = reply.server_message(parsed.as_ref().ok());
            return Err(reply.rejected(endpoint, message));
        }

        let mut json = parsed?;
        if !json.is_object() {
            return Err(Error::invalid_reply(
                endpoint,
                "body",
                format!("is not an object but {}", json_kind(&json)),
            ));
        }
        if let Some(kind) = json.get("token_type").and_then(Value::as_str)
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(Error::invalid_reply(
                endpoint,
                "token_type",
                format!("is {kind:?}, but only Bearer tokens are supported"),
            ));
        }
        grant_from_fields(endpoint, &mut json, "access_token", "access_token")
    }
}
