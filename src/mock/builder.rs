//! Configuration of a [`MockServer`] before it starts.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::fault::ExpiresIn;
use super::server::MockServer;
use super::state::Config;

/// Username of the user that exists when [`MockServerBuilder::user`] is never called.
pub(crate) const DEFAULT_USERNAME: &str = "demo";
/// Password of the default user.
pub(crate) const DEFAULT_PASSWORD: &str = "demo-password";

/// Builder for a [`MockServer`], created by [`MockServer::builder`].
///
/// Every setting has a default, so `MockServer::builder().start()` behaves
/// like [`MockServer::start`].
#[derive(Clone)]
pub struct MockServerBuilder {
    users: HashMap<String, String>,
    prefix: String,
    token_lifetime: Duration,
    refresh_lifetime: Duration,
    login_latency: Duration,
    refresh_latency: Duration,
    api_latency: Duration,
    rotate_refresh_tokens: bool,
    expires_in: ExpiresIn,
    bind: SocketAddr,
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        MockServerBuilder {
            users: HashMap::new(),
            prefix: "/api".to_owned(),
            token_lifetime: Duration::from_secs(300),
            refresh_lifetime: Duration::from_secs(1800),
            login_latency: Duration::ZERO,
            refresh_latency: Duration::ZERO,
            api_latency: Duration::ZERO,
            rotate_refresh_tokens: true,
            expires_in: ExpiresIn::Lifetime,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }
}

/// Shows usernames but not passwords.
impl fmt::Debug for MockServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut usernames: Vec<&str> = self.users.keys().map(String::as_str).collect();
        usernames.sort_unstable();
        f.debug_struct("MockServerBuilder")
            .field("usernames", &usernames)
            .field("prefix", &self.prefix)
            .field("token_lifetime", &self.token_lifetime)
            .field("refresh_lifetime", &self.refresh_lifetime)
            .field("login_latency", &self.login_latency)
            .field("refresh_latency", &self.refresh_latency)
            .field("api_latency", &self.api_latency)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("expires_in", &self.expires_in)
            .field("bind", &self.bind)
            .finish()
    }
}

impl MockServerBuilder {
    /// Adds a user that can log in.
    ///
    /// Call it several times to add several users. Adding a username again
    /// replaces its password. The default user `demo` with password
    /// `demo-password` exists only if this method is never called.
    pub fn user(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.insert(username.into(), password.into());
        self
    }

    /// Sets the path prefix of all endpoints (default `/api`).
    ///
    /// A missing leading slash is added and trailing slashes are removed, so
    /// `"api/"` means `/api`. An empty prefix or `"/"` puts the endpoints at
    /// the root, for example `/user/login`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long access tokens are valid (default 300 s).
    ///
    /// The server rejects a token as expired once this much time has passed
    /// on the tokio clock, and the reply's `expires_in` field reports it in
    /// whole seconds, rounded down, unless [`expires_in`](Self::expires_in)
    /// overrides the field.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Sets how long refresh tokens are valid (default 1800 s).
    pub fn refresh_lifetime(mut self, lifetime: Duration) -> Self {
        self.refresh_lifetime = lifetime;
        self
    }

    /// Sets the delay before the server replies to a login call (default 0).
    ///
    /// Credentials are checked and tokens issued before the delay, so the
    /// delay also shortens the lifetime the client has left.
    pub fn login_latency(mut self, latency: Duration) -> Self {
        self.login_latency = latency;
        self
    }

    /// Sets the delay before the server replies to a refresh call (default 0).
    pub fn refresh_latency(mut self, latency: Duration) -> Self {
        self.refresh_latency = latency;
        self
    }

    /// Sets the delay before the server replies to a protected API call
    /// (default 0). The token is checked before the delay.
    pub fn api_latency(mut self, latency: Duration) -> Self {
        self.api_latency = latency;
        self
    }

    /// Sets whether a refresh issues a new refresh token and revokes the
    /// old one (default `true`).
    ///
    /// With rotation off, a refresh reply returns the same refresh token and
    /// its remaining lifetime in `refresh_expires_in`.
    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> Self {
        self.rotate_refresh_tokens = rotate;
        self
    }

    /// Sets what the `expires_in` field of login and refresh replies
    /// contains (default [`ExpiresIn::Lifetime`]). The enforced lifetime
    /// does not change.
    pub fn expires_in(mut self, field: ExpiresIn) -> Self {
        self.expires_in = field;
        self
    }

    /// Sets the address to listen on (default `127.0.0.1:0`, an ephemeral
    /// port). [`start`](Self::start) fails for a non-loopback address.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Binds the listener and starts serving on the current tokio runtime.
    ///
    /// The accept loop and every connection run as tasks spawned with
    /// `tokio::spawn`, so a test that pauses the tokio clock also controls
    /// token expiry and latency on the server.
    ///
    /// # Errors
    ///
    /// Returns [`io::ErrorKind::InvalidInput`] if the bind address is not a
    /// loopback address, and the bind error if binding fails.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    pub async fn start(self) -> io::Result<MockServer> {
        if !self.bind.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "mock server address {} is not a loopback address; use 127.0.0.1 or [::1]",
                    self.bind
                ),
            ));
        }
        let bind = self.bind;
        MockServer::serve(bind, self.into_config()).await
    }

    fn into_config(self) -> Config {
        let mut users = self.users;
        if users.is_empty() {
            users.insert(DEFAULT_USERNAME.to_owned(), DEFAULT_PASSWORD.to_owned());
        }
        Config {
            users,
            prefix: normalize_prefix(&self.prefix),
            token_lifetime: self.token_lifetime,
            refresh_lifetime: self.refresh_lifetime,
            login_latency: self.login_latency,
            refresh_latency: self.refresh_latency,
            api_latency: self.api_latency,
            rotate_refresh_tokens: self.rotate_refresh_tokens,
            expires_in: self.expires_in,
        }
    }
}

/// Returns `prefix` with one leading slash and no trailing slash, or an
/// empty string for the root.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_normalization() {
        assert_eq!(normalize_prefix("/api"), "/api");
        assert_eq!(normalize_prefix("api/"), "/api");
        assert_eq!(normalize_prefix("/v1/api//"), "/v1/api");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix(""), "");
    }

    #[test]
    fn debug_hides_passwords() {
        let builder = MockServerBuilder::default().user("alice", "secret-password");
        let output = format!("{builder:?}");
        assert!(output.contains("alice"), "{output}");
        assert!(!output.contains("secret-password"), "{output}");
    }

    #[test]
    fn default_user_only_without_users() {
        let config = MockServerBuilder::default().into_config();
        assert_eq!(config.users.len(), 1);
        assert_eq!(config.users[DEFAULT_USERNAME], DEFAULT_PASSWORD);

        let config = MockServerBuilder::default()
            .user("alice", "a")
            .into_config();
        assert_eq!(config.users.len(), 1);
        assert!(config.users.contains_key("alice"));
    }
}
