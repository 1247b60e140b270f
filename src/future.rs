//! The response future of [`BigVisionAuth`](crate::BigVisionAuth).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use sync_wrapper::SyncFuture;
use tower_service::Service;

use crate::cache::{self, Acquire, Outcome, Token};
use crate::handle::{AuthState, StateRef};
use crate::replay::ReplayBody;
use crate::service::copy_request;
use crate::{BoxError, Error};

/// A wait for a token fetch. Boxed, but only on the cold path; `SyncFuture` makes it `Sync`
/// whatever the channel's future is.
type Waiting = SyncFuture<Pin<Box<dyn Future<Output = Outcome> + Send>>>;

/// A ready-to-clone service and a copy of the request, kept for one replay.
type Replay<S, B> = (S, Request<B>);

pin_project! {
    /// The response future of [`BigVisionAuth`](crate::BigVisionAuth).
    ///
    /// It is not boxed: with a usable token it polls the inner service's future and looks at
    /// the response status, nothing more.
    pub struct ResponseFuture<S, B, P>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, P>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, P>
    where
        S: Service<Request<B>>,
    {
        // A request the layer does not authorize.
        Passthrough {
            #[pin]
            future: S::Future,
        },
        // A request sent with token `token_id`; `replay` is kept for one replay after a
        // rejection.
        Sent {
            #[pin]
            future: S::Future,
            token_id: u64,
            state: StateRef,
            replay: Option<Replay<S, B>>,
        },
        // A request waiting for a token, then for `service` to be ready.
        Acquiring {
            waiting: Option<Waiting>,
            token: Option<Arc<Token>>,
            service: Option<S>,
            request: Option<Request<B>>,
            state: Arc<AuthState>,
            policy: P,
        },
        // A rejected request waiting for the new token to replay with.
        Renewing {
            waiting: Option<Waiting>,
            rejected: Option<S::Response>,
            rejected_id: u64,
            replay: Option<Replay<S, B>>,
            state: Arc<AuthState>,
        },
        // A replay waiting for its service to be ready.
        ReplayReady {
            replay: Option<Replay<S, B>>,
            header: HeaderValue,
            token_id: u64,
            state: Arc<AuthState>,
        },
        // The replay, whose response goes to the caller whatever it is.
        Replayed {
            #[pin]
            future: S::Future,
            token_id: u64,
            state: Arc<AuthState>,
        },
    }
}

impl<S, B, P> ResponseFuture<S, B, P>
where
    S: Service<Request<B>>,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Passthrough { future },
        }
    }

    pub(crate) fn sent(
        future: S::Future,
        token_id: u64,
        state: StateRef,
        replay: Option<Replay<S, B>>,
    ) -> Self {
        ResponseFuture {
            state: State::Sent {
                future,
                token_id,
                state,
                replay,
            },
        }
    }

    pub(crate) fn acquire(
        service: S,
        request: Request<B>,
        state: Arc<AuthState>,
        policy: P,
    ) -> Self {
        ResponseFuture {
            state: State::Acquiring {
                waiting: None,
                token: None,
                service: Some(service),
                request: Some(request),
                state,
                policy,
            },
        }
    }
}

impl<S, B, P> fmt::Debug for ResponseFuture<S, B, P>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passthrough { .. } => "Passthrough",
            State::Sent { .. } => "Sent",
            State::Acquiring { .. } => "Acquiring",
            State::Renewing { .. } => "Renewing",
            State::ReplayReady { .. } => "ReplayReady",
            State::Replayed { .. } => "Replayed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// Gets a token from the cache, or waits for the fetch that will bring one.
fn poll_token(
    waiting: &mut Option<Waiting>,
    state: &AuthState,
    cx: &mut Context<'_>,
) -> Poll<Outcome> {
    let waiting = match waiting {
        Some(waiting) => waiting,
        None => match state.cache().acquire() {
            Acquire::Ready(token) => return Poll::Ready(Ok(token)),
            Acquire::Failed(error) => return Poll::Ready(Err(error)),
            Acquire::Wait(receiver) => {
                waiting.insert(SyncFuture::new(Box::pin(cache::wait_for(receiver))))
            }
        },
    };
    Pin::new(waiting).poll(cx)
}

impl<S, B, P, ResBody> Future for ResponseFuture<S, B, P>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    P: ReplayBody<B>,
{
    type Output = Result<Response<ResBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Passthrough { future } => {
                    return future.poll(cx).map_err(Error::inner);
                }
                StateProj::Sent {
                    future,
                    token_id,
                    state,
                    replay,
                } => {
                    let response = ready!(future.poll(cx)).map_err(Error::inner)?;
                    if response.status() != state.rejection_status {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(state) = state.upgrade() else {
                        return Poll::Ready(Ok(response));
                    };
                    state.cache().reject(*token_id);
                    let Some(replay) = replay.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    State::Renewing {
                        waiting: None,
                        rejected: Some(response),
                        rejected_id: *token_id,
                        replay: Some(replay),
                        state,
                    }
                }
                StateProj::Acquiring {
                    waiting,
                    token,
                    service,
                    request,
                    state,
                    policy,
                } => {
                    if token.is_none() {
                        let outcome = ready!(poll_token(waiting, state, cx));
                        *waiting = None;
                        match outcome {
                            Ok(new_token) => *token = Some(new_token),
                            Err(error) => return Poll::Ready(Err(error)),
                        }
                    }
                    // Polled ready only now that the token is here, so that no readiness
                    // slot is held while the login runs: the login may need that slot.
                    let Some(ready_service) = service.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    ready!(ready_service.poll_ready(cx)).map_err(Error::inner)?;
                    let (Some(token), Some(mut service), Some(mut request)) =
                        (token.take(), service.take(), request.take())
                    else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };

                    let replay = if state.replay {
                        policy
                            .clone_body(request.body())
                            .map(|body| (service.clone(), copy_request(&request, body)))
                    } else {
                        None
                    };
                    request
                        .headers_mut()
                        .insert(AUTHORIZATION, token.header.clone());
                    State::Sent {
                        future: service.call(request),
                        token_id: token.id,
                        state: state.state_ref(),
                        replay,
                    }
                }
                StateProj::Renewing {
                    waiting,
                    rejected,
                    rejected_id,
                    replay,
                    state,
                } => {
                    let outcome = ready!(poll_token(waiting, state, cx));
                    let Some(response) = rejected.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    match outcome {
                        Ok(token) if token.id != *rejected_id => State::ReplayReady {
                            replay: replay.take(),
                            header: token.header.clone(),
                            token_id: token.id,
                            state: state.clone(),
                        },
                        Ok(_) => return Poll::Ready(Ok(response)),
                        Err(error) => {
                            tracing::warn!(
                                %error,
                                "no new token to replay the rejected request with, returning the rejection"
                            );
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProj::ReplayReady {
                    replay,
                    header,
                    token_id,
                    state,
                } => {
                    let Some((service, _)) = replay.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    ready!(service.poll_ready(cx)).map_err(Error::inner)?;
                    let Some((mut service, mut request)) = replay.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };

                    request.headers_mut().insert(AUTHORIZATION, header.clone());
                    state.cache().counters().record_replay();
                    tracing::debug!(token_id = *token_id, "replaying the rejected request");
                    State::Replayed {
                        future: service.call(request),
                        token_id: *token_id,
                        state: state.clone(),
                    }
                }
                StateProj::Replayed {
                    future,
                    token_id,
                    state,
                } => {
                    let response = ready!(future.poll(cx)).map_err(Error::inner)?;
                    if response.status() == state.rejection_status {
                        state.cache().reject(*token_id);
                    }
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}

fn polled_after_completion() -> Error {
    Error::inner("BigVisionAuth response future polled after completion")
}
