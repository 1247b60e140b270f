//! The service that authorizes requests.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response};
use tower_service::Service;

use crate::cache::{Token, thread_local_header};
use crate::future::ResponseFuture;
use crate::handle::{AuthHandle, AuthState};
use crate::replay::{CloneBody, ReplayBody};
use crate::{BoxError, Error};

/// Sets `Authorization: Bearer <token>` on every request to the API, logging in and
/// renewing the token as needed.
///
/// Made by [`BigVisionAuthLayer`](crate::BigVisionAuthLayer); every clone shares the layer's
/// token cache. See the [crate documentation](crate) for the behaviour.
///
/// # Readiness
///
/// `poll_ready` reports the inner service's readiness. When a request must wait for a
/// token, the layer drops the service that was polled ready, which releases its readiness
/// slot (a `Buffer` or concurrency-limit permit), and the response future polls a clone
/// ready once the token is there. So the login can go through the same limited client as
/// the API calls without waiting for a slot that a waiting request holds.
pub struct BigVisionAuth<S, P = CloneBody> {
    inner: S,
    state: Arc<AuthState>,
    /// This clone's view of the current token: one atomic load per request, with no
    /// thread-local bookkeeping.
    tokens: arc_swap::Cache<TokenSlot, Option<Arc<Token>>>,
    /// This clone's copy of the current token's header, with the token's id. A clone starts
    /// without one and takes it from its thread's copy at its first request, so clones made
    /// for tasks on different threads do not share the reference count of one buffer.
    ///
    /// NOTE: a clone that later moves to another thread (a task stolen by another tokio
    /// worker) keeps the buffer of the thread where it took its copy, until the next token.
    header: Option<(u64, HeaderValue)>,
    replay: P,
}

/// The shared token slot, as [`arc_swap::Cache`] wants it.
#[derive(Clone)]
struct TokenSlot(Arc<AuthState>);

impl std::ops::Deref for TokenSlot {
    type Target = arc_swap::ArcSwapOption<Token>;

    fn deref(&self) -> &Self::Target {
        self.0.cache().current()
    }
}

impl<S, P> BigVisionAuth<S, P> {
    pub(crate) fn new(inner: S, state: Arc<AuthState>, replay: P) -> Self {
        BigVisionAuth {
            inner,
            tokens: arc_swap::Cache::new(TokenSlot(state.clone())),
            header: None,
            state,
            replay,
        }
    }

    /// Returns a handle on the shared token cache.
    pub fn handle(&self) -> AuthHandle {
        AuthHandle::new(self.state.clone())
    }

    /// Returns a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Returns a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone> Clone for BigVisionAuth<S, P> {
    fn clone(&self) -> Self {
        BigVisionAuth {
            inner: self.inner.clone(),
            state: self.state.clone(),
            tokens: self.tokens.clone(),
            header: None,
            replay: self.replay.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for BigVisionAuth<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BigVisionAuth")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .field("replay", &self.replay)
            .finish()
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for BigVisionAuth<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    P: ReplayBody<ReqBody>,
{
    type Response = Response<ResBody>;
    type Error = Error;
    type Future = ResponseFuture<S, ReqBody, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::inner)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if !self.state.scope.allows(request.uri()) {
            tracing::debug!(
                uri.host = request.uri().host(),
                "request is not for the API's origin, sending it without a token"
            );
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        if request.headers().contains_key(AUTHORIZATION) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        if let Some(content_type) = &self.state.content_type
            && !request.headers().contains_key(CONTENT_TYPE)
        {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, content_type.clone());
        }

        let cache = self.state.cache();
        let token = self.tokens.load().as_deref();
        let Some(token) = token.filter(|token| cache.usable(token)) else {
            // No usable token, so the header this clone last sent is rejected or expired.
            // Keep no copy of it.
            self.header = None;
            // Release the readiness slot that `poll_ready` reserved: the login may need it
            // (a `Buffer` or `ConcurrencyLimit` shared with the login service). The response
            // future polls a clone ready once the token is there.
            self.inner = self.inner.clone();
            return ResponseFuture::acquire(
                self.inner.clone(),
                request,
                self.state.clone(),
                self.replay.clone(),
            );
        };
        // Copied before the header goes in: a replay sets its own, and a header map that is
        // still empty clones without allocating.
        let replay = replay_copy(&self.state, &self.replay, &self.inner, &request);
        let header = match &self.header {
            Some((id, header)) if *id == token.id => header.clone(),
            _ => take_header(&mut self.header, token),
        };
        let token_id = token.id;
        request.headers_mut().insert(AUTHORIZATION, header);
        let future = self.inner.call(request);
        ResponseFuture::sent(future, token_id, self.state.state_ref(), replay)
    }
}

/// Stores a copy of the token's header for this clone, taken from the thread's copy, and
/// returns a second copy. Runs at a clone's first request and at its first request with
/// each new token.
fn take_header(slot: &mut Option<(u64, HeaderValue)>, token: &Token) -> HeaderValue {
    let header = thread_local_header(token);
    *slot = Some((token.id, header.clone()));
    header
}

/// Copies the request for a replay after a 401, if replays are on and the policy can copy
/// its body.
fn replay_copy<S, P, B>(
    state: &AuthState,
    policy: &P,
    inner: &S,
    request: &Request<B>,
) -> Option<(S, Request<B>)>
where
    S: Clone,
    P: ReplayBody<B>,
{
    if !state.replay {
        return None;
    }
    let body = policy.clone_body(request.body())?;
    Some((inner.clone(), copy_request(request, body)))
}

/// Copies a request's head onto another body.
pub(crate) fn copy_request<A, B>(request: &Request<A>, body: B) -> Request<B> {
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}
