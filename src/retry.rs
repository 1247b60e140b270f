//! A `tower::retry::Policy` that retries requests failed by transient token errors.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Sleep;

use crate::service::copy_request;
use crate::{Backoff, BoxError, Error};

/// Retries requests that failed because the token endpoint was unreachable, timed out or
/// overloaded ([`Error::is_transient`]); never those failed by rejected credentials, an
/// unreadable reply or the inner service.
///
/// Optionally, [`TokenRetryPolicy::replay_status`] also retries a response with the given
/// status once: with the layer's own replay turned off
/// ([`Builder::without_replay`](crate::Builder::without_replay)), this moves the 401 replay
/// outside the layer. The request body must be `Clone`.
///
/// It works on the layer's [`Error`] and on a [`BoxError`] that wraps one (as tower's
/// `Timeout` returns), so it may sit outside a timeout layer:
///
/// ```
/// use std::time::Duration;
///
/// use bigvision_auth::TokenRetryPolicy;
/// use tower::ServiceBuilder;
/// use tower::retry::RetryLayer;
///
/// let stack = ServiceBuilder::new()
///     .layer(RetryLayer::new(TokenRetryPolicy::new(2)))
///     .timeout(Duration::from_secs(30));
/// # let _ = stack;
/// ```
#[derive(Debug, Clone)]
pub struct TokenRetryPolicy {
    retries_left: u32,
    failures: u32,
    backoff: Backoff,
    replay_status: Option<StatusCode>,
}

impl TokenRetryPolicy {
    /// The default backoff between retries: 1 s doubling up to 10 s, with jitter. Its first
    /// step is longer than the layer's own first backoff step, so a retry does not meet the
    /// same cached error.
    pub const DEFAULT_BACKOFF: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(10),
        jitter: true,
    };

    /// Creates a policy that retries each request at most `retries` times.
    pub fn new(retries: u32) -> Self {
        TokenRetryPolicy {
            retries_left: retries,
            failures: 0,
            backoff: Self::DEFAULT_BACKOFF,
            replay_status: None,
        }
    }

    /// Sets the backoff between retries. Default: [`TokenRetryPolicy::DEFAULT_BACKOFF`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Also retries, once, a response with this status (typically 401), without delay.
    /// Default: none.
    pub fn replay_status(mut self, status: StatusCode) -> Self {
        self.replay_status = Some(status);
        self
    }

    fn should_retry_error(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        error
            .downcast_ref::<Error>()
            .is_some_and(Error::is_transient)
    }

    fn next_delay(&mut self, error: Option<&Error>) -> Option<Duration> {
        if self.retries_left == 0 {
            return None;
        }
        self.retries_left -= 1;
        self.failures += 1;
        let delay = self.backoff.delay(self.failures);
        Some(match error.and_then(Error::retry_after) {
            Some(asked) => delay.max(asked.min(crate::MAX_RETRY_AFTER)),
            None => delay,
        })
    }

    fn retry_response<ResBody>(&mut self, response: &Response<ResBody>) -> Option<Sleep> {
        let status = self.replay_status.take()?;
        (response.status() == status && self.retries_left > 0).then(|| {
            self.retries_left -= 1;
            tokio::time::sleep(Duration::ZERO)
        })
    }
}

impl<B: Clone, ResBody> tower::retry::Policy<Request<B>, Response<ResBody>, Error>
    for TokenRetryPolicy
{
    type Future = Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResBody>, Error>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) => self.retry_response(response),
            Err(error) if self.should_retry_error(error) => {
                self.next_delay(Some(error)).map(tokio::time::sleep)
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        Some(copy_request(request, request.body().clone()))
    }
}

impl<B: Clone, ResBody> tower::retry::Policy<Request<B>, Response<ResBody>, BoxError>
    for TokenRetryPolicy
{
    type Future = Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResBody>, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) => self.retry_response(response),
            Err(error) if self.should_retry_error(&**error) => {
                let delay = self.next_delay(error.downcast_ref::<Error>())?;
                Some(tokio::time::sleep(delay))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        Some(copy_request(request, request.body().clone()))
    }
}
