//! The Redis commands of the token store, each bounded by a timeout, and the warning
//! logged once per outage.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::OnceCell;

/// Deletes the token (KEYS[1]) only if its fingerprint is ARGV[1].
const DELETE_IF_CURRENT: &str = r"
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, 64) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Deletes the lock (KEYS[1]) only if ARGV[1] owns it.
const RELEASE_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Sets the lock's (KEYS[1]) lifetime to ARGV[2] milliseconds only if ARGV[1] owns it.
const EXTEND_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// A failed Redis command.
#[derive(Debug)]
pub(super) enum StoreError {
    Redis {
        command: &'static str,
        source: RedisError,
    },
    TimedOut {
        command: &'static str,
        after: Duration,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Redis { command, source } => {
                write!(f, "Redis command {command} failed: {source}")
            }
            StoreError::TimedOut { command, after } => {
                write!(f, "Redis command {command} timed out after {after:?}")
            }
        }
    }
}

/// One layer's connection to Redis: opened on first use, re-opened by the
/// [`ConnectionManager`] after a failure.
pub(super) struct Connection {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
    timeout: Duration,
    /// Set by the first failed command of an outage and cleared by the next success, so
    /// that an outage logs one warning instead of one per fetch.
    unreachable: AtomicBool,
    delete_if_current: Script,
    release_lock: Script,
    extend_lock: Script,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client is left out: its connection info may contain a password.
        f.debug_struct("Connection")
            .field("timeout", &self.timeout)
            .field("unreachable", &self.unreachable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(super) fn new(client: redis::Client, timeout: Duration) -> Self {
        Connection {
            client,
            manager: OnceCell::new(),
            timeout,
            unreachable: AtomicBool::new(false),
            delete_if_current: Script::new(DELETE_IF_CURRENT),
            release_lock: Script::new(RELEASE_LOCK),
            extend_lock: Script::new(EXTEND_LOCK),
        }
    }

    /// Returns the value stored at `key`, if any.
    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut manager = self.manager().await?;
        self.bounded("GET", async {
            redis::cmd("GET").arg(key).query_async(&mut manager).await
        })
        .await
    }

    /// Stores `value` at `key` for `ttl`.
    pub(super) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut manager = self.manager().await?;
        let ttl_ms = ttl.as_millis().max(1) as u64;
        self.bounded("SET", async {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut manager)
                .await
        })
        .await
    }

    /// Deletes `key`.
    pub(super) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut manager = self.manager().await?;
        self.bounded("DEL", async {
            redis::cmd("DEL").arg(key).query_async(&mut manager).await
        })
        .await
    }

    /// Deletes the token at `key` if its fingerprint is `fingerprint`; returns whether it
    /// did.
    pub(super) async fn delete_if_current(
        &self,
        key: &str,
        fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let deleted = self
            .run_script(
                "EVALSHA delete_if_current",
                &self.delete_if_current,
                key,
                &[fingerprint],
            )
            .await?;
        Ok(deleted == 1)
    }

    /// Takes the lock at `key` for `owner` if no one holds it; returns whether it did.
    pub(super) async fn try_lock(
        &self,
        key: &str,
        owner: &str,
        lifetime: Duration,
    ) -> Result<bool, StoreError> {
        let mut manager = self.manager().await?;
        let reply: Option<String> = self
            .bounded("SET NX", async {
                redis::cmd("SET")
                    .arg(key)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(lifetime.as_millis() as u64)
                    .query_async(&mut manager)
                    .await
            })
            .await?;
        Ok(reply.is_some())
    }

    /// Resets the lifetime of the lock at `key` if `owner` still holds it; returns whether
    /// it did.
    pub(super) async fn extend_lock(
        &self,
        key: &str,
        owner: &str,
        lifetime: Duration,
    ) -> Result<bool, StoreError> {
        let millis = lifetime.as_millis().to_string();
        let extended = self
            .run_script(
                "EVALSHA extend_lock",
                &self.extend_lock,
                key,
                &[owner, &millis],
            )
            .await?;
        Ok(extended == 1)
    }

    /// Deletes the lock at `key` if `owner` still holds it.
    pub(super) async fn release_lock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        self.run_script("EVALSHA release_lock", &self.release_lock, key, &[owner])
            .await?;
        Ok(())
    }

    /// Runs one of the compare-then-act scripts on `key` and returns its integer reply.
    async fn run_script(
        &self,
        command: &'static str,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<i64, StoreError> {
        let mut manager = self.manager().await?;
        self.bounded(command, async {
            let mut invocation = script.key(key);
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke_async(&mut manager).await
        })
        .await
    }

    async fn manager(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_max_delay(Duration::from_secs(2));
        let manager = self
            .manager
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await;
        match manager {
            Ok(manager) => Ok(manager.clone()),
            Err(source) => {
                let error = StoreError::Redis {
                    command: "connect",
                    source,
                };
                self.report_failure(&error);
                Err(error)
            }
        }
    }

    /// Runs a command with the timeout, and logs the first failure of an outage and the
    /// first success after it.
    async fn bounded<T>(
        &self,
        command: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(StoreError::Redis { command, source }),
            Err(_) => Err(StoreError::TimedOut {
                command,
                after: self.timeout,
            }),
        };
        match &result {
            Ok(_) => self.report_success(),
            Err(error) => self.report_failure(error),
        }
        result
    }

    fn report_success(&self) {
        if self.unreachable.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis token store is reachable again, sharing tokens");
        }
    }

    fn report_failure(&self, error: &StoreError) {
        if self.unreachable.swap(true, Ordering::Relaxed) {
            tracing::debug!(%error, "Redis token store still unreachable");
        } else {
            tracing::warn!(
                %error,
                "Redis token store unreachable, fetching tokens in this process until it is back"
            );
        }
    }
}
