//! State shared by the server handle and its connection tasks.

use std::collections::{HashMap, VecDeque};
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::fault::{ExpiresIn, Fault};
use super::jwt::{TokenKind, encode_token};

/// Request counters of a [`MockServer`](super::MockServer), read with
/// [`MockServer::stats`](super::MockServer::stats).
///
/// `rejected` is always `rejected_missing + rejected_unknown + rejected_expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MockStats {
    /// POST requests to the login endpoint, including faulted and failed ones.
    pub login_calls: u64,
    /// Login calls that issued tokens.
    pub logins: u64,
    /// POST requests to the refresh endpoint, including faulted and failed ones.
    pub refresh_calls: u64,
    /// Refresh calls that issued a new access token.
    pub refreshes: u64,
    /// Protected API calls that got a 200 reply.
    pub authorized: u64,
    /// Protected API calls that got a 401 reply.
    pub rejected: u64,
    /// Rejected API calls that carried no bearer token.
    pub rejected_missing: u64,
    /// Rejected API calls whose token this server never issued, or revoked.
    ///
    /// This includes calls rejected by
    /// [`MockServer::reject_next_api_calls`](super::MockServer::reject_next_api_calls).
    pub rejected_unknown: u64,
    /// Rejected API calls whose token had expired.
    pub rejected_expired: u64,
}

/// One call to the protected API, as recorded by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// Request path including the prefix, without the query string,
    /// for example `/api/ocr`.
    pub path: String,
    /// Bearer token from the `Authorization` header, if the request had one.
    pub token: Option<String>,
    /// HTTP status code of the reply.
    pub status: u16,
}

/// Settings fixed when the server starts.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Password of each user, by username.
    pub(crate) users: HashMap<String, String>,
    /// Path prefix without a trailing slash, empty for the root.
    pub(crate) prefix: String,
    pub(crate) token_lifetime: Duration,
    pub(crate) refresh_lifetime: Duration,
    pub(crate) login_latency: Duration,
    pub(crate) refresh_latency: Duration,
    pub(crate) api_latency: Duration,
    pub(crate) rotate_refresh_tokens: bool,
    pub(crate) expires_in: ExpiresIn,
}

/// Atomic counterparts of the [`MockStats`] fields.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) login_calls: AtomicU64,
    pub(crate) logins: AtomicU64,
    pub(crate) refresh_calls: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) authorized: AtomicU64,
    pub(crate) rejected_missing: AtomicU64,
    pub(crate) rejected_unknown: AtomicU64,
    pub(crate) rejected_expired: AtomicU64,
}

/// Increments a counter by one.
pub(crate) fn increment(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// Owner and deadline of an issued token.
#[derive(Debug)]
struct TokenRecord {
    subject: String,
    expires_at: Instant,
}

/// Tokens that the server has issued and not revoked, by token text.
#[derive(Debug, Default)]
struct TokenTable {
    access: HashMap<String, TokenRecord>,
    refresh: HashMap<String, TokenRecord>,
}

/// Queued and persistent faults of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    queued: VecDeque<Fault>,
    persistent: Option<Fault>,
}

impl FaultPlan {
    pub(crate) fn push(&mut self, fault: Fault) {
        self.queued.push_back(fault);
    }

    pub(crate) fn set_persistent(&mut self, fault: Option<Fault>) {
        self.persistent = fault;
    }

    /// Takes the fault for the next call: the oldest queued one, else a copy
    /// of the persistent one.
    fn next_fault(&mut self) -> Option<Fault> {
        self.queued.pop_front().or_else(|| self.persistent.clone())
    }
}

/// Reason why the protected API rejected a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Missing,
    Unknown,
    Expired,
    /// Valid token rejected because [`Shared::reject_next`] was above zero.
    Revoked,
}

impl Rejection {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Rejection::Missing => "missing bearer token",
            Rejection::Unknown => "unknown or revoked token",
            Rejection::Expired => "token expired",
            Rejection::Revoked => "token revoked",
        }
    }
}

/// Tokens returned by a login or refresh.
#[derive(Debug)]
pub(crate) struct IssuedTokens {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    /// Remaining lifetime of `refresh_token`.
    pub(crate) refresh_expires_in: Duration,
}

/// State of one mock server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    /// Number of upcoming valid API calls to reject.
    pub(crate) reject_next: AtomicU64,
    pub(crate) login_faults: Mutex<FaultPlan>,
    pub(crate) refresh_faults: Mutex<FaultPlan>,
    pub(crate) api_calls: Mutex<Vec<ApiCall>>,
    tokens: Mutex<TokenTable>,
    signing_key: RandomState,
}

/// Locks `mutex`, ignoring poisoning: every critical section leaves the data
/// consistent, so a panic elsewhere never makes it unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: Config) -> Shared {
        Shared {
            config,
            counters: Counters::default(),
            reject_next: AtomicU64::new(0),
            login_faults: Mutex::new(FaultPlan::default()),
            refresh_faults: Mutex::new(FaultPlan::default()),
            api_calls: Mutex::new(Vec::new()),
            tokens: Mutex::new(TokenTable::default()),
            signing_key: RandomState::new(),
        }
    }

    pub(crate) fn stats(&self) -> MockStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        let counters = &self.counters;
        let rejected_missing = load(&counters.rejected_missing);
        let rejected_unknown = load(&counters.rejected_unknown);
        let rejected_expired = load(&counters.rejected_expired);
        MockStats {
            login_calls: load(&counters.login_calls),
            logins: load(&counters.logins),
            refresh_calls: load(&counters.refresh_calls),
            refreshes: load(&counters.refreshes),
            authorized: load(&counters.authorized),
            rejected: rejected_missing + rejected_unknown + rejected_expired,
            rejected_missing,
            rejected_unknown,
            rejected_expired,
        }
    }

    pub(crate) fn next_login_fault(&self) -> Option<Fault> {
        lock(&self.login_faults).next_fault()
    }

    pub(crate) fn next_refresh_fault(&self) -> Option<Fault> {
        lock(&self.refresh_faults).next_fault()
    }

    /// Returns whether `username` and `password` match a configured user.
    pub(crate) fn check_credentials(&self, username: &str, password: &str) -> bool {
        self.config
            .users
            .get(username)
            .is_some_and(|expected| expected == password)
    }

    fn new_token(&self, kind: TokenKind, subject: &str, lifetime: Duration) -> String {
        encode_token(kind, subject, lifetime, &self.signing_key)
    }

    /// Issues a new access and refresh token for `subject`.
    pub(crate) fn issue_tokens(&self, subject: &str) -> IssuedTokens {
        let config = &self.config;
        let access_token = self.new_token(TokenKind::Access, subject, config.token_lifetime);
        let refresh_token = self.new_token(TokenKind::Refresh, subject, config.refresh_lifetime);
        let now = Instant::now();

        let mut tokens = lock(&self.tokens);
        tokens.access.insert(
            access_token.clone(),
            TokenRecord {
                subject: subject.to_owned(),
                expires_at: now + config.token_lifetime,
            },
        );
        tokens.refresh.insert(
            refresh_token.clone(),
            TokenRecord {
                subject: subject.to_owned(),
                expires_at: now + config.refresh_lifetime,
            },
        );
        IssuedTokens {
            access_token,
            refresh_token,
            refresh_expires_in: config.refresh_lifetime,
        }
    }

    /// Exchanges a refresh token for a new access token, or returns `None`
    /// if the refresh token is unknown, expired or revoked.
    ///
    /// With rotation on, the old refresh token is revoked and a new one
    /// issued. With rotation off, the same refresh token comes back with its
    /// remaining lifetime.
    pub(crate) fn refresh(&self, refresh_token: &str) -> Option<IssuedTokens> {
        let config = &self.config;
        let now = Instant::now();
        let (subject, refresh_expires_at) = {
            let mut tokens = lock(&self.tokens);
            let record = tokens.refresh.get(refresh_token)?;
            if now >= record.expires_at {
                return None;
            }
            let found = (record.subject.clone(), record.expires_at);
            // Revoke under the same lock, so that two concurrent refreshes
            // with one token cannot both succeed.
            if config.rotate_refresh_tokens {
                tokens.refresh.remove(refresh_token);
            }
            found
        };
        if config.rotate_refresh_tokens {
            return Some(self.issue_tokens(&subject));
        }

        let access_token = self.new_token(TokenKind::Access, &subject, config.token_lifetime);
        lock(&self.tokens).access.insert(
            access_token.clone(),
            TokenRecord {
                subject,
                expires_at: now + config.token_lifetime,
            },
        );
        Some(IssuedTokens {
            access_token,
            refresh_token: refresh_token.to_owned(),
            refresh_expires_in: refresh_expires_at.saturating_duration_since(now),
        })
    }

    /// Checks an access token and updates the API counters.
    ///
    /// A valid token is rejected as [`Rejection::Revoked`] and removed while
    /// `reject_next` is above zero.
    pub(crate) fn authorize(&self, token: Option<&str>) -> Result<(), Rejection> {
        let result = self.check_access_token(token);
        let counters = &self.counters;
        match result {
            Ok(()) => increment(&counters.authorized),
            Err(Rejection::Missing) => increment(&counters.rejected_missing),
            Err(Rejection::Unknown | Rejection::Revoked) => increment(&counters.rejected_unknown),
            Err(Rejection::Expired) => increment(&counters.rejected_expired),
        }
        result
    }

    fn check_access_token(&self, token: Option<&str>) -> Result<(), Rejection> {
        let token = token.ok_or(Rejection::Missing)?;
        let mut tokens = lock(&self.tokens);
        let record = tokens.access.get(token).ok_or(Rejection::Unknown)?;
        if Instant::now() >= record.expires_at {
            return Err(Rejection::Expired);
        }
        let forced = self
            .reject_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if forced {
            tokens.access.remove(token);
            return Err(Rejection::Revoked);
        }
        Ok(())
    }

    /// Revokes every access and refresh token issued so far.
    pub(crate) fn revoke_all(&self) {
        let mut tokens = lock(&self.tokens);
        tokens.access.clear();
        tokens.refresh.clear();
    }

    pub(crate) fn record_api_call(&self, call: ApiCall) {
        lock(&self.api_calls).push(call);
    }
}
