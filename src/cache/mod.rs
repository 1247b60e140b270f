//! The shared token state: the current token, single-flight fetches, background renewal,
//! backoff after failures and 401 invalidation. Nothing here speaks HTTP; fetches go
//! through a [`Fetcher`].

mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use secrecy::SecretString;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

pub use token::{DEFAULT_EXPIRY_MARGIN, RenewalWindow};
pub(crate) use token::{Freshness, Token, thread_local_header};

use crate::client::{Backoff, FetchOutcome};
use crate::stats::Counters;
use crate::{Endpoint, Error};

/// Gets new tokens; the cache's only way out to the token endpoints, or to a store that
/// shares tokens between processes.
pub(crate) trait Fetcher: Send + Sync + 'static {
    fn fetch(
        &self,
        request: FetchRequest,
    ) -> Pin<Box<dyn Future<Output = FetchOutcome> + Send + '_>>;
}

/// The context of a request for a new token.
#[derive(Debug)]
pub(crate) struct FetchRequest {
    /// The cached refresh token, unless there is none or it has expired.
    pub(crate) refresh_token: Option<SecretString>,
    /// The `Authorization` header of the token being replaced, if any.
    #[allow(
        dead_code,
        reason = "read by token stores that share tokens between processes"
    )]
    pub(crate) replacing: Option<http::HeaderValue>,
    /// Whether the API rejected the token being replaced.
    #[allow(
        dead_code,
        reason = "read by token stores that share tokens between processes"
    )]
    pub(crate) rejected: bool,
}

/// The result of a fetch, shared with every request that waited for it.
pub(crate) type Outcome = Result<Arc<Token>, Error>;

/// The next step for a request that found no usable token.
pub(crate) enum Acquire {
    Ready(Arc<Token>),
    Wait(watch::Receiver<Option<Outcome>>),
    Failed(Error),
}

/// The age below which a token's rejection is ignored, by the number of new tokens in a row
/// that the API rejected. It grows while new tokens keep being rejected, so a server that
/// rejects every token cannot cause a login per request.
const REJECTION_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(60),
    jitter: false,
};

/// A token rejected before this age, or before a tenth of its lifetime if that is shorter,
/// counts as a new token rejected. An older one ends the streak, so a server that ends
/// tokens early, but not at once, gets a renewal for each rejected token.
const NEW_TOKEN_AGE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct RefreshToken {
    secret: SecretString,
    /// `None` when the server gave no lifetime: used until rejected.
    expires_at: Option<Instant>,
}

#[derive(Debug)]
struct Failure {
    error: Error,
    retry_at: Instant,
}

/// Cold-path state, behind a mutex that is never held across an await.
#[derive(Debug, Default)]
struct Control {
    in_flight: Option<watch::Receiver<Option<Outcome>>>,
    refresh_token: Option<RefreshToken>,
    failure: Option<Failure>,
    tasks: Option<JoinSet<()>>,
    phase_timer: Option<AbortHandle>,
    /// New tokens in a row that the API rejected.
    rejected_new_tokens: u32,
    closed: bool,
    /// The runtime that ran the last task, for requests sent from outside any runtime.
    runtime: Option<Handle>,
}

impl Control {
    /// Returns the fetch in flight, if its task is still alive. A fetch whose task was
    /// dropped (its runtime shut down) is forgotten, so the next request starts another
    /// instead of waiting on it forever.
    fn live_fetch(&mut self) -> Option<&watch::Receiver<Option<Outcome>>> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|waiting| waiting.has_changed().is_err())
        {
            self.in_flight = None;
        }
        self.in_flight.as_ref()
    }

    /// Returns when the backoff after the last failed fetch ends, if it has not yet.
    fn backoff_until(&self, now: Instant) -> Option<Instant> {
        self.failure
            .as_ref()
            .map(|failure| failure.retry_at)
            .filter(|retry_at| now < *retry_at)
    }
}

/// The token state shared by a layer, its services, their clones and its handles.
pub(crate) struct Cache {
    current: ArcSwapOption<Token>,
    control: Mutex<Control>,
    fetcher: Box<dyn Fetcher>,
    window: RenewalWindow,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("has_token", &self.current.load().is_some())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Cache {
    pub(crate) fn new(
        fetcher: Box<dyn Fetcher>,
        window: RenewalWindow,
        counters: Arc<Counters>,
    ) -> Self {
        Cache {
            current: ArcSwapOption::empty(),
            control: Mutex::new(Control::default()),
            fetcher,
            window,
            counters,
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Returns whether the token may be sent now, starting a background renewal when it is
    /// due. Takes no lock and, while the token's timer runs, reads no clock.
    #[inline]
    pub(crate) fn usable(self: &Arc<Self>, token: &Token) -> bool {
        match token.freshness() {
            Freshness::Fresh => true,
            Freshness::RenewDue => {
                self.renew_in_background(token);
                true
            }
            Freshness::Expired => false,
        }
    }

    /// Returns the slot of the current token, for [`arc_swap::Cache`]s in services.
    pub(crate) fn current(&self) -> &ArcSwapOption<Token> {
        &self.current
    }

    /// Returns the time left until the current token expires.
    pub(crate) fn expires_in(&self) -> Option<Duration> {
        let token = self.current.load_full()?;
        Some(token.expires_at.saturating_duration_since(Instant::now()))
    }

    /// Returns a usable token, a fetch to wait for, or the error to fail with.
    pub(crate) fn acquire(self: &Arc<Self>) -> Acquire {
        let mut control = self.lock();
        let now = Instant::now();
        if let Some(token) = self.current.load_full()
            && token.freshness_by_clock(now) != Freshness::Expired
            && token.freshness() != Freshness::Expired
        {
            return Acquire::Ready(token);
        }
        if let Some(waiting) = control.live_fetch() {
            return Acquire::Wait(waiting.clone());
        }
        if let Some(failure) = &control.failure
            && now < failure.retry_at
        {
            self.counters.record_fast_failure();
            return Acquire::Failed(failure.error.clone());
        }

        tracing::debug!("no usable token, fetching one");
        match self.start_fetch(&mut control, None) {
            Ok(waiting) => Acquire::Wait(waiting),
            Err(error) => Acquire::Failed(error),
        }
    }

    /// Drops the token with this id, if it is still the current one, and starts a fetch.
    /// Returns whether the token was dropped. Rejections of tokens that were already
    /// replaced are ignored, and so are rejections of a new token after new tokens were
    /// rejected in a row, until the token is older than [`REJECTION_BACKOFF`] sets.
    pub(crate) fn reject(self: &Arc<Self>, token_id: u64) -> bool {
        let mut control = self.lock();
        let current = self.current.load_full();
        let Some(token) = current.filter(|token| token.id == token_id) else {
            return false;
        };

        let now = Instant::now();
        let age = now.saturating_duration_since(token.received_at);
        let lifetime = token
            .expires_at
            .saturating_duration_since(token.received_at);
        let new_token = age < NEW_TOKEN_AGE.min(lifetime / 10);
        if !new_token {
            control.rejected_new_tokens = 0;
        }
        let ignored_below = match control.rejected_new_tokens {
            0 => Duration::ZERO,
            streak => REJECTION_BACKOFF.delay(streak),
        };
        if age < ignored_below {
            tracing::warn!(
                token_id,
                age_ms = age.as_millis() as u64,
                ignored_below_ms = ignored_below.as_millis() as u64,
                streak = control.rejected_new_tokens,
                "API rejected another new token, keeping it until it is older"
            );
            return false;
        }
        if new_token {
            control.rejected_new_tokens += 1;
        }

        token.expire();
        self.current.store(None);
        self.counters.record_rejected_token();
        tracing::info!(token_id, "API rejected the token, renewing");
        if control.live_fetch().is_none() && control.backoff_until(now).is_none() {
            let _ = self.start_fetch(&mut control, Some(&token));
        }
        true
    }

    /// Stops the cache's tasks: the last owner is gone.
    pub(crate) fn close(&self) {
        let mut control = self.lock();
        control.closed = true;
        control.in_flight = None;
        let tasks = control.tasks.take();
        let timer = control.phase_timer.take();
        // The tasks are dropped after the lock is released, since a task's drop guard takes
        // the lock.
        drop(control);
        if let Some(timer) = timer {
            timer.abort();
        }
        if let Some(mut tasks) = tasks {
            tasks.abort_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        // A panic elsewhere cannot leave `Control` half-updated in a way that matters more
        // than losing the token state, so a poisoned lock is used as it is.
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cold]
    fn renew_in_background(self: &Arc<Self>, token: &Token) {
        if !token.claim_renewal() {
            return;
        }
        let mut control = self.lock();
        let still_current = self
            .current
            .load()
            .as_deref()
            .is_some_and(|current| current.id == token.id);
        if !still_current || control.live_fetch().is_some() {
            return;
        }
        if let Some(retry_at) = control.backoff_until(Instant::now()) {
            self.release_renewal_at(&mut control, token.id, retry_at);
            return;
        }

        tracing::debug!(
            token_id = token.id,
            expires_in_ms = token
                .expires_at
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
            "token due for renewal, renewing in the background"
        );
        if self.start_fetch(&mut control, None).is_err() {
            token.release_renewal();
        }
    }

    /// Makes the token due for renewal again at `retry_at`.
    fn release_renewal_at(self: &Arc<Self>, control: &mut Control, token_id: u64, at: Instant) {
        let cache = Arc::downgrade(self);
        let release = async move {
            tokio::time::sleep_until(at).await;
            let Some(cache) = cache.upgrade() else { return };
            if let Some(token) = cache
                .current
                .load_full()
                .filter(|token| token.id == token_id)
            {
                token.release_renewal();
            }
        };
        let _ = spawn_tracked(control, release);
    }

    /// Starts a fetch as a task of its own; `rejected` is the token the API just rejected.
    fn start_fetch(
        self: &Arc<Self>,
        control: &mut Control,
        rejected: Option<&Token>,
    ) -> Result<watch::Receiver<Option<Outcome>>, Error> {
        if control.closed {
            return Err(Error::NoRuntime);
        }
        let now = Instant::now();
        let refresh_token = match &control.refresh_token {
            Some(refresh) if refresh.expires_at.is_none_or(|at| now < at) => {
                Some(refresh.secret.clone())
            }
            Some(_) => {
                tracing::debug!("refresh token expired, logging in with the password");
                control.refresh_token = None;
                None
            }
            None => None,
        };

        let replacing = match rejected {
            Some(token) => Some(token.header.clone()),
            None => self
                .current
                .load()
                .as_deref()
                .map(|token| token.header.clone()),
        };
        let request = FetchRequest {
            refresh_token,
            replacing,
            rejected: rejected.is_some(),
        };

        let (sender, receiver) = watch::channel(None);
        let cache = self.clone();
        spawn_tracked(control, async move {
            let mut unfinished = UnfinishedFetch(Some(cache.clone()));
            let outcome = cache.fetcher.fetch(request).await;
            let result = cache.store(outcome);
            unfinished.0 = None;
            sender.send_replace(Some(result));
        })?;
        control.in_flight = Some(receiver.clone());
        Ok(receiver)
    }

    /// Stores a fetch's outcome and returns what waiting requests get.
    fn store(self: &Arc<Self>, outcome: FetchOutcome) -> Outcome {
        let now = Instant::now();
        let mut control = self.lock();
        control.in_flight = None;
        if outcome.refresh_rejected {
            control.refresh_token = None;
        }

        match outcome.result {
            Ok(grant) => {
                let token = Arc::new(Token::new(grant.header, now, grant.lifetime, self.window));
                match grant.refresh_token {
                    Some(secret) => {
                        control.refresh_token = Some(RefreshToken {
                            secret,
                            expires_at: grant.refresh_lifetime.map(|lifetime| now + lifetime),
                        });
                    }
                    // A refresh reply without a refresh token keeps the old one.
                    None if outcome.endpoint == Endpoint::Login => control.refresh_token = None,
                    None => {}
                }
                control.failure = None;
                self.current.store(Some(token.clone()));
                self.arm_phase_timer(&mut control, &token);
                Ok(token)
            }
            Err(error) => {
                let retry_at = outcome.retry_at.unwrap_or(now);
                tracing::error!(
                    %error,
                    retry_in_ms = retry_at.saturating_duration_since(now).as_millis() as u64,
                    "token fetch failed"
                );
                control.failure = Some(Failure {
                    error: error.clone(),
                    retry_at,
                });
                if let Some(token) = self.current.load_full()
                    && token.freshness_by_clock(now) != Freshness::Expired
                {
                    tracing::warn!(
                        token_id = token.id,
                        "keeping the current token until it expires"
                    );
                    self.release_renewal_at(&mut control, token.id, retry_at);
                }
                Err(error)
            }
        }
    }

    fn arm_phase_timer(&self, control: &mut Control, token: &Arc<Token>) {
        if let Some(previous) = control.phase_timer.take() {
            previous.abort();
        }
        // A current-thread runtime runs its timers only while a thread is inside its
        // `block_on`, which a program may enter only per request. Its tokens go by the clock.
        let runtime = Handle::try_current()
            .ok()
            .or_else(|| control.runtime.clone());
        if runtime.is_none_or(|runtime| runtime.runtime_flavor() == RuntimeFlavor::CurrentThread) {
            token.fall_back_to_clock();
            return;
        }
        control.phase_timer = spawn_tracked(control, token::drive_phases(token.clone())).ok();
        if control.phase_timer.is_none() {
            token.fall_back_to_clock();
        }
    }
}

/// Clears the fetch in flight when its task ends without storing an outcome. After a panic
/// it also records a failure, so that a fetch that always panics is retried with a delay
/// rather than once per request. After a runtime shutdown the next request simply starts
/// a new fetch.
struct UnfinishedFetch(Option<Arc<Cache>>);

impl Drop for UnfinishedFetch {
    fn drop(&mut self) {
        let Some(cache) = self.0.take() else { return };
        let mut control = cache.lock();
        if control.closed {
            return;
        }
        control.in_flight = None;
        if std::thread::panicking() {
            tracing::error!("token fetch panicked");
            control.failure = Some(Failure {
                error: Error::Aborted,
                retry_at: Instant::now() + REJECTION_BACKOFF.initial,
            });
        } else {
            tracing::warn!("token fetch stopped before it finished, as its runtime shut down");
        }
    }
}

/// Spawns a task that the cache aborts when its last owner is dropped: on the current
/// runtime, or on the last one seen when the caller runs outside any.
fn spawn_tracked(
    control: &mut Control,
    task: impl Future<Output = ()> + Send + 'static,
) -> Result<AbortHandle, Error> {
    let runtime = match Handle::try_current() {
        Ok(current) => control.runtime.insert(current).clone(),
        Err(_) => match &control.runtime {
            Some(last) => last.clone(),
            None => {
                tracing::warn!("no Tokio runtime to run a token fetch or timer on");
                return Err(Error::NoRuntime);
            }
        },
    };
    let tasks = control.tasks.get_or_insert_with(JoinSet::new);
    while tasks.try_join_next().is_some() {}
    Ok(tasks.spawn_on(task, &runtime))
}

/// Waits for a fetch's outcome.
pub(crate) async fn wait_for(mut waiting: watch::Receiver<Option<Outcome>>) -> Outcome {
    match waiting.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(Error::Aborted)),
        Err(_) => Err(Error::Aborted),
    }
}

/// Owns a [`Cache`] for the layer, its services and handles; the last one dropped stops
/// the cache's tasks.
#[derive(Debug)]
pub(crate) struct CacheOwner(pub(crate) Arc<Cache>);

impl Drop for CacheOwner {
    fn drop(&mut self) {
        self.0.close();
    }
}
