//! The username and password the layer logs in with.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A username and password for the login endpoint.
///
/// The password is kept in a [`SecretString`], which zeroes its memory when dropped, and
/// `Debug` shows a placeholder in its place.
///
/// ```
/// use bigvision_auth::Credentials;
///
/// let credentials = Credentials::new("alice", "correct horse");
/// assert_eq!(credentials.username(), "alice");
/// assert!(!format!("{credentials:?}").contains("correct horse"));
/// ```
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: SecretString,
}

impl Credentials {
    /// Creates credentials from a username and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: SecretString::from(password.into()),
        }
    }

    /// Returns the username.
    pub fn username(&self) -> &str {
        &self.username
    }

    pub(crate) fn password(&self) -> &str {
        self.password.expose_secret()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}
