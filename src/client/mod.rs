//! Logging in and refreshing over the user's login/refresh service, with a timeout per call
//! and retries with backoff. No caching happens here.

mod backoff;
mod grant;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::StatusCode;
use secrecy::SecretString;
use tokio::time::Instant;
use tracing::Instrument;

pub use backoff::Backoff;
pub use grant::{DEFAULT_TOKEN_LIFETIME, MAX_REFRESH_LIFETIME, MAX_TOKEN_LEN, MAX_TOKEN_LIFETIME};
pub use transport::MAX_REPLY_BYTES;

pub(crate) use grant::CheckedGrant;
#[cfg(test)]
pub(crate) use grant::check_grant;
#[cfg(feature = "redis")]
pub(crate) use grant::stored_grant;
pub(crate) use transport::Transport;

use crate::exchange::{TokenExchange, TokenReply};
use crate::stats::Counters;
use crate::{Credentials, Endpoint, Error};
use transport::TransportError;

/// The longest `Retry-After` the layer honours; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The maximum delay between login attempts while the server rejects the credentials. The
/// same password cannot start to work by itself, and identity servers can lock an account
/// after repeated failures, so these attempts slow down further than others.
pub const MAX_REJECTED_LOGIN_DELAY: Duration = Duration::from_secs(300);

/// Timeouts and retries of one token fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchSettings {
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
}

/// The result of one fetch.
#[derive(Debug)]
pub(crate) struct FetchOutcome {
    pub(crate) result: Result<CheckedGrant, Error>,
    /// The endpoint that produced `result`.
    pub(crate) endpoint: Endpoint,
    /// The refresh token given to the fetch was rejected and must not be used again.
    pub(crate) refresh_rejected: bool,
    /// On failure: the earliest time for the next attempt.
    pub(crate) retry_at: Option<Instant>,
}

/// Logs in and refreshes through a [`TokenExchange`] over a [`Transport`].
#[derive(Debug)]
pub(crate) struct TokenClient {
    transport: Transport,
    exchange: Arc<dyn TokenExchange>,
    credentials: Credentials,
    settings: FetchSettings,
    counters: Arc<Counters>,
    /// Failed attempts since the last success; sets the next backoff delay.
    failure_streak: AtomicU32,
}

impl TokenClient {
    pub(crate) fn new(
        transport: Transport,
        exchange: Arc<dyn TokenExchange>,
        credentials: Credentials,
        settings: FetchSettings,
        counters: Arc<Counters>,
    ) -> Self {
        TokenClient {
            transport,
            exchange,
            credentials,
            settings,
            counters,
            failure_streak: AtomicU32::new(0),
        }
    }

    /// Gets a new token: by refresh token when one is given, by password login otherwise.
    ///
    /// A refresh gets one attempt. When it fails for any reason, the password login follows
    /// at once, with the usual retries: the login is the documented way to a token, and the
    /// refresh endpoint may be missing, down or slow while the login works. The refresh
    /// token is dropped only when it was rejected or the reply could not be read.
    pub(crate) async fn fetch(&self, refresh_token: Option<SecretString>) -> FetchOutcome {
        let mut refresh_rejected = false;
        if let Some(refresh_token) = refresh_token {
            match self
                .call_with_retries(Endpoint::Refresh, Some(&refresh_token), 1)
                .await
            {
                Ok(grant) => return self.outcome(Ok(grant), Endpoint::Refresh, false),
                // An unreadable reply most likely means the refresh endpoint is not at the
                // configured path; the password still works, so the refresh token is dropped.
                Err(error @ (Error::RefreshRejected { .. } | Error::InvalidReply { .. })) => {
                    tracing::info!(%error, "refresh failed, logging in with the password");
                    refresh_rejected = true;
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "refresh failed, logging in with the password and keeping the refresh token"
                    );
                }
            }
        }
        let result = self
            .call_with_retries(Endpoint::Login, None, self.settings.max_attempts)
            .await;
        self.outcome(result, Endpoint::Login, refresh_rejected)
    }

    fn outcome(
        &self,
        result: Result<CheckedGrant, Error>,
        endpoint: Endpoint,
        refresh_rejected: bool,
    ) -> FetchOutcome {
        let retry_at = match &result {
            Ok(_) => {
                self.failure_streak.store(0, Ordering::Relaxed);
                None
            }
            Err(error) => Some(Instant::now() + self.next_delay(error)),
        };
        FetchOutcome {
            result,
            endpoint,
            refresh_rejected,
            retry_at,
        }
    }

    /// Records a failed attempt and returns the delay before the next one.
    fn next_delay(&self, error: &Error) -> Duration {
        let streak = self.failure_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let delay = match error {
            Error::LoginRejected { .. } => Backoff {
                max: self.settings.backoff.max.max(MAX_REJECTED_LOGIN_DELAY),
                ..self.settings.backoff
            }
            .delay(streak),
            _ => self.settings.backoff.delay(streak),
        };
        match error.retry_after() {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }

    async fn call_with_retries(
        &self,
        endpoint: Endpoint,
        refresh_token: Option<&SecretString>,
        max_attempts: u32,
    ) -> Result<CheckedGrant, Error> {
        let mut attempt = 1;
        loop {
            let span = tracing::debug_span!("bigvision_auth.fetch", %endpoint, attempt);
            let started = Instant::now();
            let result = self
                .call_once(endpoint, refresh_token)
                .instrument(span)
                .await;
            self.counters.record_call(endpoint, result.as_ref().err());

            let error = match result {
                Ok(grant) => {
                    tracing::debug!(
                        %endpoint,
                        attempt,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        lifetime_secs = grant.lifetime.as_secs(),
                        "token fetched"
                    );
                    return Ok(grant);
                }
                Err(error) => error,
            };
            let retry_after_too_long = error
                .retry_after()
                .is_some_and(|asked| asked > self.settings.backoff.max);
            if !error.is_transient() || attempt >= max_attempts || retry_after_too_long {
                return Err(error);
            }

            let delay = self.next_delay(&error);
            tracing::warn!(
                %endpoint,
                attempt,
                %error,
                retry_in_ms = delay.as_millis() as u64,
                "token fetch failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn call_once(
        &self,
        endpoint: Endpoint,
        refresh_token: Option<&SecretString>,
    ) -> Result<CheckedGrant, Error> {
        let request = match refresh_token {
            Some(token) => self.exchange.refresh_request(token)?,
            None => self.exchange.login_request(&self.credentials)?,
        };

        let timeout = self.settings.timeout;
        let sent = tokio::time::timeout(timeout, self.transport.send(request)).await;
        let (parts, body) = match sent {
            Err(_) => {
                return Err(Error::TimedOut {
                    endpoint,
                    after: timeout,
                });
            }
            Ok(Err(TransportError::TooLarge)) => {
                return Err(Error::invalid_reply(
                    endpoint,
                    "body",
                    format!("is longer than {MAX_REPLY_BYTES} bytes"),
                ));
            }
            Ok(Err(TransportError::Failed(source))) => {
                return Err(Error::Unreachable {
                    endpoint,
                    source: Arc::from(source),
                });
            }
            Ok(Ok(reply)) => reply,
        };

        if parts.status == StatusCode::TOO_MANY_REQUESTS || parts.status.is_server_error() {
            return Err(Error::Unavailable {
                endpoint,
                status: parts.status,
                retry_after: backoff::parse_retry_after(&parts.headers),
            });
        }

        let mut secrets = vec![SecretString::from(self.credentials.password().to_owned())];
        secrets.extend(refresh_token.cloned());
        let reply = TokenReply::new(parts.status, parts.headers, body, secrets);
        let grant = self.exchange.parse_reply(endpoint, &reply)?;
        grant::check_grant(endpoint, grant)
    }
}
