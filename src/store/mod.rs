//! Sharing one token between processes through Redis.
//!
//! [`SharedFetcher`] sits between the cache and the [`TokenClient`](crate::client::TokenClient).
//! The cache calls it only when its own token is due for renewal, expired or rejected, so
//! Redis is never on the hot path. A fetch then:
//!
//! 1. after a rejection, deletes the shared token if it is still the rejected one
//!    (compare-and-delete in a Lua script);
//! 2. returns the shared token without an HTTP call when it differs from the token being
//!    replaced and is not yet due for renewal by the layer's [`RenewalWindow`];
//! 3. otherwise takes a lock (`SET NX PX`). The holder reads the shared token again, then
//!    fetches with the shared refresh token (or its own), stores the result and releases
//!    the lock. It extends the lock while its fetch runs, so a process that stops holding
//!    it frees it within one lock lifetime. The others poll the shared token with backoff
//!    until a new one appears or they can take the lock;
//! 4. when the holder's fetch fails, stores the failure with a retry time from the count
//!    of failures in a row across all processes. Until then, every process fails its fetch
//!    with the same error at once, so the fleet calls a failing endpoint once per backoff;
//! 5. on any Redis error or timeout, fetches in this process as it would without Redis.

mod connection;
mod failure;
mod record;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::cache::{DEFAULT_EXPIRY_MARGIN, FetchRequest, Fetcher, RenewalWindow};
use crate::client::{Backoff, CheckedGrant, FetchOutcome, FetchSettings, stored_grant};
use crate::{Endpoint, Error};
use connection::{Connection, StoreError};
use failure::{StoredError, StoredFailure};
use record::{Codec, StoredToken};

/// Shares one BigVision token between processes through Redis; pass it to
/// [`Builder::token_store`](crate::Builder::token_store).
///
/// Without a token store every process logs in and renews on its own. With one, the
/// processes that use the same base URL and username share a token. One of them logs in
/// or refreshes while the others wait for its result, so a fleet makes about as many
/// token calls as a single process. When that call fails, every process fails its
/// requests with the same error until the shared backoff ends, so a fleet does not call
/// a failing endpoint more often than a single process would. Requests never wait on
/// Redis while the process has a usable token, because only token fetches call it. When Redis is unreachable or slow, each process fetches its own tokens
/// as it would without a store, logs one warning per outage, and shares again at its next
/// renewal after Redis is back.
///
/// # What Redis stores
///
/// The token lives at `<key prefix>:<hex SHA-256 of the base URL, a NUL byte and the
/// username>`, and its lock at the same key with `:lock` appended. After a failed login
/// or refresh, `:failure` contains the error's kind, HTTP status and sanitized server
/// message. It also contains the number of failures in a row and the time before which no
/// process calls the endpoints again. The backoff grows with that number, as [`Backoff`]
/// sets out. The password is never
/// stored or hashed into the key. The value holds the access token, the refresh token and
/// their expiry times as Unix milliseconds, and expires from Redis with the refresh token
/// (with the access token when there is no refresh token or its lifetime is unknown).
/// Expiry times come from the wall clock of the process that fetched the token, so the
/// processes' clocks should be synchronized; a skew shortens or lengthens the time a
/// token is used by the same amount.
///
/// **Redis then holds bearer credentials.** Anyone who can read the key can call the API
/// as this user until the tokens expire. Restrict access with Redis ACLs, use `rediss://`
/// (TLS, which needs one of the `redis` crate's TLS features, such as
/// `tokio-rustls-comp`), and consider [`RedisTokenStore::encryption_key`], which encrypts
/// the value with XChaCha20-Poly1305.
///
/// All processes that share a token must use the same key prefix and the same encryption
/// key (or none); a value that a process cannot decode counts as missing, and that
/// process replaces it.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use bigvision_auth::{BigVisionAuthLayer, Credentials, RedisTokenStore};
/// # use bytes::Bytes;
/// # use http_body_util::Full;
/// # let client = hyper_util::client::legacy::Client::builder(
/// #     hyper_util::rt::TokioExecutor::new(),
/// # )
/// # .build_http::<Full<Bytes>>();
///
/// let store = RedisTokenStore::from_url("rediss://bigvision:secret@redis.internal:6380/0")?
///     .lock_lifetime(Duration::from_secs(20));
/// let auth = BigVisionAuthLayer::builder(client, Credentials::new("alice", "secret"))
///     .token_store(store)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisTokenStore {
    client: redis::Client,
    key_prefix: String,
    lock_lifetime: Duration,
    poll_backoff: Backoff,
    command_timeout: Duration,
    encryption_key: Option<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client is left out: its connection info may contain a password.
        f.debug_struct("RedisTokenStore")
            .field("key_prefix", &self.key_prefix)
            .field("lock_lifetime", &self.lock_lifetime)
            .field("poll_backoff", &self.poll_backoff)
            .field("command_timeout", &self.command_timeout)
            .field("encrypted", &self.encryption_key.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisTokenStore {
    /// The default key prefix.
    pub const DEFAULT_KEY_PREFIX: &'static str = "bigvision-auth:v1";
    /// The default lock lifetime.
    pub const DEFAULT_LOCK_LIFETIME: Duration = Duration::from_secs(15);
    /// The shortest lock lifetime accepted.
    pub const MIN_LOCK_LIFETIME: Duration = Duration::from_secs(1);
    /// The default timeout of one Redis command.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
    /// The default backoff between polls while another process fetches: 50 ms doubling
    /// up to 500 ms, with jitter.
    pub const DEFAULT_POLL_BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        jitter: true,
    };

    /// Creates a store that connects with `client`. The connection opens on the first
    /// fetch, in the Tokio runtime that runs it.
    pub fn new(client: redis::Client) -> Self {
        RedisTokenStore {
            client,
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            lock_lifetime: Self::DEFAULT_LOCK_LIFETIME,
            poll_backoff: Self::DEFAULT_POLL_BACKOFF,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            encryption_key: None,
        }
    }

    /// Creates a store from a Redis URL such as `redis://127.0.0.1:6379/0` or
    /// `rediss://user:password@host:6380/0`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for `token_store` when the URL does not parse.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|error| {
            // The error may quote the URL, which may contain a password, so only its
            // category is shown.
            Error::config(
                "token_store",
                format!(
                    "the Redis URL is invalid ({:?}); expected redis://[user:password@]host[:port][/db]",
                    error.kind()
                ),
            )
        })?;
        Ok(RedisTokenStore::new(client))
    }

    /// Sets the prefix of the Redis keys. Default: [`Self::DEFAULT_KEY_PREFIX`].
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets how long the lock on a fetch lasts when its holder stops extending it. The
    /// holder extends it every third of this while its fetch runs, so it bounds how long
    /// the other processes wait after a holder crashes, not how long a fetch may take.
    /// Default: [`Self::DEFAULT_LOCK_LIFETIME`]; at least [`Self::MIN_LOCK_LIFETIME`].
    pub fn lock_lifetime(mut self, lifetime: Duration) -> Self {
        self.lock_lifetime = lifetime;
        self
    }

    /// Sets the backoff between reads of the shared token while another process fetches.
    /// Default: [`Self::DEFAULT_POLL_BACKOFF`].
    pub fn poll_backoff(mut self, backoff: Backoff) -> Self {
        self.poll_backoff = backoff;
        self
    }

    /// Sets the timeout of one Redis command, after which the fetch goes on without Redis.
    /// Default: [`Self::DEFAULT_COMMAND_TIMEOUT`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Encrypts the stored tokens with XChaCha20-Poly1305 under this 32-byte key, with a
    /// random nonce per write. Every process that shares the token needs the same key.
    /// Default: no encryption.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.encryption_key = Some(Zeroizing::new(key));
        self
    }

    /// Checks the settings and wraps `inner` in a fetcher that shares its tokens.
    pub(crate) fn into_fetcher(
        self,
        inner: Box<dyn Fetcher>,
        base_url: &str,
        username: &str,
        window: RenewalWindow,
        fetch: &FetchSettings,
    ) -> Result<SharedFetcher, Error> {
        if self.key_prefix.is_empty() {
            return Err(Error::config(
                "token_store",
                "the key prefix must not be empty",
            ));
        }
        if self.lock_lifetime < Self::MIN_LOCK_LIFETIME {
            return Err(Error::config(
                "token_store",
                format!(
                    "the lock lifetime must be at least {:?}, got {:?}",
                    Self::MIN_LOCK_LIFETIME,
                    self.lock_lifetime
                ),
            ));
        }
        if self.command_timeout.is_zero() {
            return Err(Error::config(
                "token_store",
                "the command timeout must not be zero",
            ));
        }
        let backoff = self.poll_backoff;
        if backoff.initial.is_zero() || backoff.initial > backoff.max {
            return Err(Error::config(
                "token_store",
                format!(
                    "the poll backoff's first delay must be above zero and at most the \
                     maximum, got {:?} and {:?}",
                    backoff.initial, backoff.max
                ),
            ));
        }

        let key = record::token_key(&self.key_prefix, base_url, username);
        let lock_key = format!("{key}:lock");
        let failure_key = format!("{key}:failure");
        // The maximum time a fetch can take: every attempt times out, with the maximum
        // backoff between attempts.
        let longest_fetch = fetch.timeout.saturating_mul(fetch.max_attempts)
            + fetch
                .backoff
                .max
                .saturating_mul(fetch.max_attempts.saturating_sub(1));
        Ok(SharedFetcher {
            inner,
            connection: Connection::new(self.client, self.command_timeout),
            codec: Codec::new(self.encryption_key.as_deref()),
            key,
            lock_key,
            failure_key,
            failure_backoff: fetch.backoff,
            window,
            lock_lifetime: self.lock_lifetime,
            poll_backoff: self.poll_backoff,
            max_wait: longest_fetch + self.lock_lifetime,
        })
    }
}

/// How long a shared failure stays in Redis after its retry time, so that a failure soon
/// after continues the count of failures in a row.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// A [`Fetcher`] that shares tokens through Redis and falls back to `inner` alone.
pub(crate) struct SharedFetcher {
    inner: Box<dyn Fetcher>,
    connection: Connection,
    codec: Codec,
    key: String,
    lock_key: String,
    /// The key of the last failed fetch's [`StoredFailure`].
    failure_key: String,
    /// The backoff every process waits out after failed fetches, by the shared count.
    failure_backoff: Backoff,
    window: RenewalWindow,
    lock_lifetime: Duration,
    poll_backoff: Backoff,
    /// How long a process waits for another's fetch before it fetches on its own.
    max_wait: Duration,
}

/// The reason a fetch goes on without Redis.
enum Fallback {
    Unreachable,
    WaitTimedOut,
}

impl From<StoreError> for Fallback {
    fn from(_: StoreError) -> Self {
        // The connection has logged the error.
        Fallback::Unreachable
    }
}

impl Fetcher for SharedFetcher {
    fn fetch(
        &self,
        request: FetchRequest,
    ) -> Pin<Box<dyn Future<Output = FetchOutcome> + Send + '_>> {
        Box::pin(self.fetch_shared(request))
    }
}

impl SharedFetcher {
    async fn fetch_shared(&self, request: FetchRequest) -> FetchOutcome {
        let replacing = request
            .replacing
            .as_ref()
            .and_then(token_text)
            .map(record::fingerprint);
        match self.share(&request, replacing.as_deref()).await {
            Ok(outcome) => outcome,
            Err(Fallback::Unreachable | Fallback::WaitTimedOut) => self.inner.fetch(request).await,
        }
    }

    /// Returns the shared token, or fetches one under the lock and shares it. Fails only
    /// before any fetch has started.
    async fn share(
        &self,
        request: &FetchRequest,
        replacing: Option<&str>,
    ) -> Result<FetchOutcome, Fallback> {
        if request.rejected
            && let Some(fingerprint) = replacing
        {
            let deleted = self
                .connection
                .delete_if_current(&self.key, fingerprint)
                .await?;
            tracing::debug!(
                deleted,
                "API rejected the token, dropped it from Redis if shared"
            );
        }

        let started = Instant::now();
        let mut polls = 0;
        loop {
            let stored = self.read().await?;
            if let Some(outcome) = stored
                .as_ref()
                .and_then(|stored| self.adopt(stored, replacing))
            {
                return Ok(outcome);
            }
            if let Some(outcome) = self.shared_failure().await? {
                return Ok(outcome);
            }
            let owner = lock_owner();
            if self
                .connection
                .try_lock(&self.lock_key, &owner, self.lock_lifetime)
                .await?
            {
                return Ok(self.fetch_locked(request, replacing, &owner).await);
            }
            if started.elapsed() >= self.max_wait {
                tracing::warn!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "another process has held the token lock too long, fetching in this process"
                );
                return Err(Fallback::WaitTimedOut);
            }
            polls += 1;
            tokio::time::sleep(self.poll_backoff.delay(polls)).await;
        }
    }

    /// Fetches a token while holding the lock, shares it and releases the lock.
    async fn fetch_locked(
        &self,
        request: &FetchRequest,
        replacing: Option<&str>,
        owner: &str,
    ) -> FetchOutcome {
        let outcome = self.fetch_and_store(request, replacing, owner).await;
        if self
            .connection
            .release_lock(&self.lock_key, owner)
            .await
            .is_err()
        {
            tracing::debug!("token lock not released, it expires by itself");
        }
        outcome
    }

    async fn fetch_and_store(
        &self,
        request: &FetchRequest,
        replacing: Option<&str>,
        owner: &str,
    ) -> FetchOutcome {
        // Another process may have stored a new token between the last read and the lock.
        let stored = self.read().await.unwrap_or(None);
        if let Some(outcome) = stored
            .as_ref()
            .and_then(|stored| self.adopt(stored, replacing))
        {
            return outcome;
        }
        // A fetch of another process may also have failed since.
        if let Ok(Some(outcome)) = self.shared_failure().await {
            return outcome;
        }

        // A shared refresh token is the newest one: a rotating server has revoked the
        // one this process may hold.
        let now_ms = record::now_unix_ms();
        let (refresh_token, refresh_expires_at_ms) = match stored
            .as_ref()
            .and_then(|stored| usable_refresh(stored, now_ms))
        {
            Some((secret, expires_at_ms)) => (Some(secret), expires_at_ms),
            None => (request.refresh_token.clone(), None),
        };
        let inner_request = FetchRequest {
            refresh_token: refresh_token.clone(),
            replacing: request.replacing.clone(),
            rejected: request.rejected,
        };
        let mut outcome = self
            .holding_lock(owner, self.inner.fetch(inner_request))
            .await;

        let received_at_ms = record::now_unix_ms();
        if let Ok(grant) = &mut outcome.result {
            // A refresh reply without a refresh token keeps the one it was sent with.
            if grant.refresh_token.is_none() && outcome.endpoint == Endpoint::Refresh {
                grant.refresh_token = refresh_token;
                grant.refresh_lifetime = refresh_expires_at_ms
                    .map(|at| Duration::from_millis(at.saturating_sub(received_at_ms)));
            }
            self.write(grant, received_at_ms).await;
            self.clear_failure().await;
        } else if let Err(error) = &outcome.result {
            outcome.retry_at = Some(self.share_failure(error, outcome.retry_at).await);
        }
        outcome
    }

    /// Returns the failure of another process's fetch while its backoff lasts, as this
    /// process's outcome, so that the fleet calls a failing endpoint once per backoff.
    async fn shared_failure(&self) -> Result<Option<FetchOutcome>, StoreError> {
        let Some(failure) = self.read_failure().await? else {
            return Ok(None);
        };
        let now_ms = record::now_unix_ms();
        if now_ms >= failure.retry_at_ms {
            return Ok(None);
        }
        let wait = Duration::from_millis(failure.retry_at_ms - now_ms);
        tracing::debug!(
            failures = failure.failures,
            retry_in_ms = wait.as_millis() as u64,
            "a token fetch failed in a process sharing the token, waiting out its backoff"
        );
        Ok(Some(FetchOutcome {
            result: Err(failure.error.to_error()),
            endpoint: failure.error.endpoint(),
            refresh_rejected: false,
            retry_at: Some(Instant::now() + wait),
        }))
    }

    /// Shares a failed fetch and returns when the next fetch may start: after this
    /// process's own delay or the backoff for the failures in a row across the fleet,
    /// whichever is later.
    async fn share_failure(&self, error: &Error, retry_at: Option<Instant>) -> Instant {
        let now = Instant::now();
        let own_delay = retry_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        let Some(error) = StoredError::from_error(error) else {
            return now + own_delay;
        };
        let previous = self.read_failure().await.ok().flatten();
        let failures = previous
            .map_or(0, |failure| failure.failures)
            .saturating_add(1);
        let delay = own_delay.max(self.failure_backoff.delay(failures));
        let failure = StoredFailure {
            failures,
            retry_at_ms: record::now_unix_ms() + delay.as_millis() as u64,
            error,
        };
        match serde_json::to_vec(&failure) {
            // Kept past its retry time, so that the next failure continues the count.
            Ok(value) => {
                let ttl = delay + FAILURE_MEMORY;
                // A failure is logged by the connection; this process still backs off.
                let _ = self.connection.set(&self.failure_key, &value, ttl).await;
            }
            Err(problem) => tracing::warn!(%problem, "token fetch failure not shared"),
        }
        now + delay
    }

    /// Reads the last shared failure; a value that cannot be decoded counts as missing.
    async fn read_failure(&self) -> Result<Option<StoredFailure>, StoreError> {
        let Some(value) = self.connection.get(&self.failure_key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&value) {
            Ok(failure) => Ok(Some(failure)),
            Err(problem) => {
                tracing::warn!(%problem, "shared fetch failure in Redis is invalid, ignoring it");
                Ok(None)
            }
        }
    }

    /// Forgets the shared failures after a fetch succeeded.
    async fn clear_failure(&self) {
        // A failure is logged by the connection; the entry expires by itself.
        let _ = self.connection.delete(&self.failure_key).await;
    }

    /// Runs `work` while extending the lock every third of its lifetime.
    async fn holding_lock<F: Future>(&self, owner: &str, work: F) -> F::Output {
        let extend = async {
            loop {
                tokio::time::sleep(self.lock_lifetime / 3).await;
                let extended = self
                    .connection
                    .extend_lock(&self.lock_key, owner, self.lock_lifetime)
                    .await;
                if let Ok(false) = extended {
                    tracing::debug!(
                        "token lock expired during the fetch, another process may fetch too"
                    );
                }
            }
        };
        tokio::select! {
            output = work => output,
            () = extend => unreachable!("the lock extension loop never ends"),
        }
    }

    /// Reads the shared token; a value that cannot be decoded counts as missing.
    async fn read(&self) -> Result<Option<StoredToken>, StoreError> {
        let Some(value) = self.connection.get(&self.key).await? else {
            return Ok(None);
        };
        let value = Zeroizing::new(value);
        match self.codec.decode(&self.key, &value) {
            Ok(stored) => Ok(Some(stored)),
            Err(problem) => {
                tracing::warn!(%problem, "shared token in Redis is invalid, replacing it");
                Ok(None)
            }
        }
    }

    /// Returns the shared token as a fetch outcome when it differs from the token being
    /// replaced and is not yet due for renewal.
    fn adopt(&self, stored: &StoredToken, replacing: Option<&str>) -> Option<FetchOutcome> {
        if replacing == Some(record::fingerprint(&stored.access_token).as_str()) {
            return None;
        }
        let now_ms = record::now_unix_ms();
        if now_ms >= renew_at_ms(self.window, stored) {
            return None;
        }

        let lifetime = Duration::from_millis(stored.expires_at_ms - now_ms);
        let (refresh_token, refresh_lifetime) = match usable_refresh(stored, now_ms) {
            Some((secret, expires_at_ms)) => (
                Some(secret),
                expires_at_ms.map(|at| Duration::from_millis(at - now_ms)),
            ),
            None => (None, None),
        };
        // `Login` makes the cache drop its own refresh token when the shared one has none.
        let endpoint = match refresh_token {
            Some(_) => Endpoint::Refresh,
            None => Endpoint::Login,
        };
        match stored_grant(
            endpoint,
            &stored.access_token,
            lifetime,
            refresh_token,
            refresh_lifetime,
        ) {
            Ok(grant) => {
                tracing::debug!(
                    expires_in_ms = lifetime.as_millis() as u64,
                    "using the token shared through Redis"
                );
                Some(FetchOutcome {
                    result: Ok(grant),
                    endpoint,
                    refresh_rejected: false,
                    retry_at: None,
                })
            }
            Err(error) => {
                tracing::warn!(%error, "shared token in Redis is invalid, replacing it");
                None
            }
        }
    }

    /// Shares a fetched grant until its refresh token expires, or its access token when
    /// the refresh token's lifetime is unknown.
    async fn write(&self, grant: &CheckedGrant, received_at_ms: u64) {
        let Some(access_token) = token_text(&grant.header) else {
            return;
        };
        let expires_at_ms = received_at_ms + grant.lifetime.as_millis() as u64;
        let refresh_expires_at_ms = grant
            .refresh_lifetime
            .map(|lifetime| received_at_ms + lifetime.as_millis() as u64);
        let stored_until_ms = match (&grant.refresh_token, refresh_expires_at_ms) {
            (Some(_), Some(at)) => at.max(expires_at_ms),
            _ => expires_at_ms,
        };
        let stored = StoredToken {
            access_token: access_token.to_owned(),
            received_at_ms,
            expires_at_ms,
            refresh_token: grant
                .refresh_token
                .as_ref()
                .map(|secret| secret.expose_secret().to_owned()),
            refresh_expires_at_ms,
        };
        let value = match self.codec.encode(&self.key, &stored) {
            Ok(value) => Zeroizing::new(value),
            Err(problem) => {
                tracing::warn!(%problem, "token not shared through Redis");
                return;
            }
        };
        let ttl = Duration::from_millis(stored_until_ms - received_at_ms);
        // A failure is logged by the connection; the token is still used in this process.
        let _ = self.connection.set(&self.key, &value, ttl).await;
    }
}

impl fmt::Debug for SharedFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFetcher")
            .field("connection", &self.connection)
            .field("codec", &self.codec)
            .field("lock_lifetime", &self.lock_lifetime)
            .finish_non_exhaustive()
    }
}

/// Returns the token text of a `Bearer <token>` header.
fn token_text(header: &HeaderValue) -> Option<&str> {
    header.to_str().ok()?.strip_prefix("Bearer ")
}

/// Returns the stored refresh token and its expiry, if it has not expired.
fn usable_refresh(stored: &StoredToken, now_ms: u64) -> Option<(SecretString, Option<u64>)> {
    let secret = stored.refresh_token.as_ref()?;
    match stored.refresh_expires_at_ms {
        Some(at) if at <= now_ms => None,
        expires_at_ms => Some((SecretString::from(secret.clone()), expires_at_ms)),
    }
}

/// Returns when a process that had fetched `stored` itself would start renewing it, in
/// Unix milliseconds. It mirrors the rule of the cache's `Token::new`: the renewal window
/// before expiry, not before a tenth of the lifetime, and not after the expiry margin.
fn renew_at_ms(window: RenewalWindow, stored: &StoredToken) -> u64 {
    let lifetime = stored.expires_at_ms.saturating_sub(stored.received_at_ms);
    let before_expiry = match window {
        RenewalWindow::Fraction(share) => (lifetime as f64 * share.clamp(0.0, 1.0)) as u64,
        RenewalWindow::Fixed(window) => window.as_millis() as u64,
    };
    let margin = (DEFAULT_EXPIRY_MARGIN.as_millis() as u64).min(lifetime / 10);
    let earliest = stored.received_at_ms + lifetime / 10;
    let usable_until = stored.expires_at_ms - margin;
    stored
        .expires_at_ms
        .saturating_sub(before_expiry)
        .max(earliest)
        .min(usable_until)
}

/// Returns a lock owner id that no other process or fetch uses.
fn lock_owner() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = getrandom::u64().unwrap_or_else(|_| record::now_unix_ms());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{random:016x}-{count}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(received_at_ms: u64, expires_at_ms: u64) -> StoredToken {
        StoredToken {
            access_token: "token".to_owned(),
            received_at_ms,
            expires_at_ms,
            refresh_token: None,
            refresh_expires_at_ms: None,
        }
    }

    #[test]
    fn renewal_point_matches_window() {
        // 300 s token: a quarter before expiry is 75 s.
        let token = stored(0, 300_000);

        assert_eq!(renew_at_ms(RenewalWindow::DEFAULT, &token), 225_000);
        assert_eq!(
            renew_at_ms(RenewalWindow::Fixed(Duration::from_secs(60)), &token),
            240_000
        );
    }

    #[test]
    fn renewal_point_is_bounded() {
        let token = stored(0, 10_000);

        // A window longer than the lifetime waits a tenth of it.
        assert_eq!(
            renew_at_ms(RenewalWindow::Fixed(Duration::from_secs(60)), &token),
            1_000
        );
        // A tiny window still renews before the expiry margin (a tenth of 10 s).
        assert_eq!(
            renew_at_ms(RenewalWindow::Fixed(Duration::from_millis(1)), &token),
            9_000
        );
    }

    #[test]
    fn expired_refresh_token_is_unusable() {
        let mut token = stored(0, 300_000);
        token.refresh_token = Some("refresh".to_owned());
        token.refresh_expires_at_ms = Some(1_000);

        assert!(usable_refresh(&token, 999).is_some());
        assert!(usable_refresh(&token, 1_000).is_none());
    }

    #[test]
    fn lock_owners_differ() {
        assert_ne!(lock_owner(), lock_owner());
    }
}
