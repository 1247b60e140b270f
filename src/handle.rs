//! The state a layer shares with its services, and the handle users hold on it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use http::{HeaderValue, StatusCode};

use crate::Error;
use crate::cache::{self, Acquire, Cache, CacheOwner};
use crate::scope::Scope;
use crate::stats::AuthStats;

/// The state that a layer, its services and their clones share.
pub(crate) struct AuthState {
    /// The key of this state in [`REGISTRY`].
    pub(crate) id: u64,
    pub(crate) owner: CacheOwner,
    pub(crate) scope: Scope,
    pub(crate) rejection_status: StatusCode,
    pub(crate) replay: bool,
    pub(crate) content_type: Option<HeaderValue>,
}

/// Every live [`AuthState`] by id, so that a response future on the hot path can carry a
/// plain [`StateRef`] instead of a reference count: incrementing a count shared by all
/// clones on every request makes the cores contend for it. Looked up only after a
/// rejection.
static REGISTRY: LazyLock<Mutex<HashMap<u64, Weak<AuthState>>>> = LazyLock::new(Default::default);

/// Refers to an [`AuthState`] without keeping it alive; copying it costs nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateRef {
    id: u64,
    pub(crate) rejection_status: StatusCode,
}

impl StateRef {
    /// Returns the state, unless every layer, service and handle on it was dropped.
    pub(crate) fn upgrade(&self) -> Option<Arc<AuthState>> {
        let registry = REGISTRY
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.get(&self.id).and_then(Weak::upgrade)
    }
}

impl AuthState {
    /// Wraps the state in an `Arc` and registers it.
    pub(crate) fn register(
        owner: CacheOwner,
        scope: Scope,
        rejection_status: StatusCode,
        replay: bool,
        content_type: Option<HeaderValue>,
    ) -> Arc<AuthState> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let state = Arc::new(AuthState {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            owner,
            scope,
            rejection_status,
            replay,
            content_type,
        });
        let mut registry = REGISTRY
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.insert(state.id, Arc::downgrade(&state));
        state
    }

    pub(crate) fn state_ref(&self) -> StateRef {
        StateRef {
            id: self.id,
            rejection_status: self.rejection_status,
        }
    }

    #[inline]
    pub(crate) fn cache(&self) -> &Arc<Cache> {
        &self.owner.0
    }
}

impl Drop for AuthState {
    fn drop(&mut self) {
        let mut registry = REGISTRY
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.remove(&self.id);
    }
}

impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthState")
            .field("cache", self.cache())
            .field("scope", &self.scope)
            .field("rejection_status", &self.rejection_status)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// A handle on a layer's token cache, for logging in ahead of the first request and for
/// monitoring. It never hands out the token.
///
/// Get one from [`BigVisionAuthLayer::handle`](crate::BigVisionAuthLayer::handle) or
/// [`BigVisionAuth::handle`](crate::BigVisionAuth::handle). Like a service, a handle keeps
/// the cache and its background tasks alive.
#[derive(Clone)]
pub struct AuthHandle {
    state: Arc<AuthState>,
}

impl AuthHandle {
    pub(crate) fn new(state: Arc<AuthState>) -> Self {
        AuthHandle { state }
    }

    /// Logs in now, unless a usable token is cached or a fetch is already in flight (then it
    /// waits for that fetch). Call it at start-up to fail fast on a wrong password.
    ///
    /// # Errors
    ///
    /// The fetch's error, such as [`Error::LoginRejected`] for wrong credentials. During
    /// the backoff after a failed fetch, it returns that fetch's error at once.
    pub async fn login(&self) -> Result<(), Error> {
        match self.state.cache().acquire() {
            Acquire::Ready(_) => Ok(()),
            Acquire::Failed(error) => Err(error),
            Acquire::Wait(waiting) => cache::wait_for(waiting).await.map(|_| ()),
        }
    }

    /// Returns the time left until the current token expires: zero once it has expired, and
    /// `None` when no token is cached (before the first login, or after the API rejected the
    /// token).
    pub fn expires_in(&self) -> Option<Duration> {
        self.state.cache().expires_in()
    }

    /// Returns a snapshot of the layer's counters, read without a lock.
    pub fn stats(&self) -> AuthStats {
        self.state.cache().counters().snapshot(self.expires_in())
    }
}

impl fmt::Debug for AuthHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthHandle")
            .field("expires_in", &self.expires_in())
            .finish()
    }
}
