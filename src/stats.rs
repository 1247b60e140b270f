//! Counters for users who export metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Endpoint, Error};

/// The layer's counters, updated with relaxed atomics on the cold paths only.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    logins: AtomicU64,
    login_failures: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    rejected_tokens: AtomicU64,
    replays: AtomicU64,
    fast_failures: AtomicU64,
    rejected: AtomicU64,
    unreachable: AtomicU64,
    timed_out: AtomicU64,
    unavailable: AtomicU64,
    invalid_replies: AtomicU64,
}

impl Counters {
    /// Counts one call of a token endpoint, and its failure by kind.
    pub(crate) fn record_call(&self, endpoint: Endpoint, failure: Option<&Error>) {
        let counter = match (endpoint, failure.is_none()) {
            (Endpoint::Login, true) => &self.logins,
            (Endpoint::Login, false) => &self.login_failures,
            (Endpoint::Refresh, true) => &self.refreshes,
            (Endpoint::Refresh, false) => &self.refresh_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);

        let kind = match failure {
            None => return,
            Some(Error::LoginRejected { .. } | Error::RefreshRejected { .. }) => &self.rejected,
            Some(Error::Unreachable { .. }) => &self.unreachable,
            Some(Error::TimedOut { .. }) => &self.timed_out,
            Some(Error::Unavailable { .. }) => &self.unavailable,
            Some(_) => &self.invalid_replies,
        };
        kind.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_rejected_token(&self) {
        self.rejected_tokens.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_replay(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_fast_failure(&self) {
        self.fast_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, expires_in: Option<Duration>) -> AuthStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AuthStats {
            logins: load(&self.logins),
            login_failures: load(&self.login_failures),
            refreshes: load(&self.refreshes),
            refresh_failures: load(&self.refresh_failures),
            rejected_tokens: load(&self.rejected_tokens),
            replays: load(&self.replays),
            fast_failures: load(&self.fast_failures),
            failures: FailureCounts {
                rejected: load(&self.rejected),
                unreachable: load(&self.unreachable),
                timed_out: load(&self.timed_out),
                unavailable: load(&self.unavailable),
                invalid_replies: load(&self.invalid_replies),
            },
            expires_in,
        }
    }
}

/// A snapshot of the layer's counters, taken without a lock by
/// [`AuthHandle::stats`](crate::AuthHandle::stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AuthStats {
    /// Successful password logins.
    pub logins: u64,
    /// Failed login attempts (rejected, unreachable, timed out, unavailable or unreadable).
    pub login_failures: u64,
    /// Successful refreshes.
    pub refreshes: u64,
    /// Failed refresh attempts.
    pub refresh_failures: u64,
    /// Tokens dropped because the API rejected them (HTTP 401 by default).
    pub rejected_tokens: u64,
    /// Requests sent a second time with a new token after a rejection.
    pub replays: u64,
    /// Requests failed at once with the last fetch's error while the layer waited out its
    /// backoff delay.
    pub fast_failures: u64,
    /// Failed calls of either token endpoint, by kind.
    pub failures: FailureCounts,
    /// The time left until the current token expires; `None` when no token is cached.
    pub expires_in: Option<Duration>,
}

/// Failed calls of the token endpoints by kind, part of [`AuthStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FailureCounts {
    /// Rejected credentials or refresh tokens ([`Error::LoginRejected`],
    /// [`Error::RefreshRejected`]).
    pub rejected: u64,
    /// Connection failures ([`Error::Unreachable`]).
    pub unreachable: u64,
    /// Calls past the fetch timeout ([`Error::TimedOut`]).
    pub timed_out: u64,
    /// HTTP 429 and 5xx replies ([`Error::Unavailable`]).
    pub unavailable: u64,
    /// Replies that could not be read ([`Error::InvalidReply`]).
    pub invalid_replies: u64,
}
