//! The layer and its builder.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::{Cache, CacheOwner, FetchRequest, Fetcher, RenewalWindow};
use crate::client::{Backoff, FetchOutcome, FetchSettings, TokenClient, Transport};
use crate::exchange::{BigVisionExchange, TokenExchange};
use crate::handle::{AuthHandle, AuthState};
use crate::replay::CloneBody;
use crate::scope::{Origin, Scope};
use crate::stats::Counters;
use crate::{BigVisionAuth, BoxError, Credentials, Error};

/// The BigVision API's base URL.
pub const DEFAULT_BASE_URL: &str = "https://bigvision.id/api";
/// The login path, relative to the base URL.
pub const DEFAULT_LOGIN_PATH: &str = "/user/login";
/// The refresh path, relative to the base URL. The API does not document it; this is an
/// assumption.
pub const DEFAULT_REFRESH_PATH: &str = "/user/refresh";
/// The timeout of one login or refresh call, reply body included.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per fetch when the token endpoint fails in a transient way.
pub const DEFAULT_FETCH_ATTEMPTS: u32 = 3;

/// A [`tower::Layer`](tower_layer::Layer) that wraps a service in [`BigVisionAuth`].
///
/// Build it with [`BigVisionAuthLayer::builder`]. It is `Clone`; every service it makes, and
/// every clone of those, shares one token cache. When the layer, its services and its
/// handles are all dropped, the cache's background tasks stop.
pub struct BigVisionAuthLayer<P = CloneBody> {
    state: Arc<AuthState>,
    replay: P,
}

impl BigVisionAuthLayer {
    /// Starts a builder from the service that carries login and refresh requests (a
    /// hyper-util `Client`, say) and the credentials to log in with.
    ///
    /// The service may be the same client the layer wraps; it must not be wrapped in this
    /// layer itself.
    pub fn builder<L, ResBody>(login_service: L, credentials: Credentials) -> Builder
    where
        L: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
        L::Future: Send,
        L::Error: Into<BoxError>,
        ResBody: Body + Send + 'static,
        ResBody::Data: Send,
        ResBody::Error: Into<BoxError>,
    {
        Builder {
            transport: Transport::new(login_service),
            credentials,
            base_url: DEFAULT_BASE_URL.to_owned(),
            login_path: DEFAULT_LOGIN_PATH.to_owned(),
            refresh_path: DEFAULT_REFRESH_PATH.to_owned(),
            exchange: None,
            window: RenewalWindow::DEFAULT,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            fetch_attempts: DEFAULT_FETCH_ATTEMPTS,
            backoff: Backoff::default(),
            extra_origins: Vec::new(),
            allow_insecure_http: false,
            rejection_status: StatusCode::UNAUTHORIZED,
            replay_enabled: true,
            replay: CloneBody,
            content_type: None,
            #[cfg(feature = "redis")]
            token_store: None,
        }
    }
}

impl<P> BigVisionAuthLayer<P> {
    /// Returns a handle on the token cache.
    pub fn handle(&self) -> AuthHandle {
        AuthHandle::new(self.state.clone())
    }
}

impl<P: Clone> Clone for BigVisionAuthLayer<P> {
    fn clone(&self) -> Self {
        BigVisionAuthLayer {
            state: self.state.clone(),
            replay: self.replay.clone(),
        }
    }
}

impl<P: fmt::Debug> fmt::Debug for BigVisionAuthLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BigVisionAuthLayer")
            .field("state", &self.state)
            .field("replay", &self.replay)
            .finish()
    }
}

impl<S, P: Clone> Layer<S> for BigVisionAuthLayer<P> {
    type Service = BigVisionAuth<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BigVisionAuth::new(inner, self.state.clone(), self.replay.clone())
    }
}

/// Configures a [`BigVisionAuthLayer`]; [`Builder::build`] checks the settings.
#[must_use]
pub struct Builder<P = CloneBody> {
    transport: Transport,
    credentials: Credentials,
    base_url: String,
    login_path: String,
    refresh_path: String,
    exchange: Option<Arc<dyn TokenExchange>>,
    window: RenewalWindow,
    fetch_timeout: Duration,
    fetch_attempts: u32,
    backoff: Backoff,
    extra_origins: Vec<String>,
    allow_insecure_http: bool,
    rejection_status: StatusCode,
    replay_enabled: bool,
    replay: P,
    content_type: Option<HeaderValue>,
    #[cfg(feature = "redis")]
    token_store: Option<crate::RedisTokenStore>,
}

impl<P> fmt::Debug for Builder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("credentials", &self.credentials)
            .field("base_url", &self.base_url)
            .field("login_path", &self.login_path)
            .field("refresh_path", &self.refresh_path)
            .field("exchange", &self.exchange)
            .field("window", &self.window)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("fetch_attempts", &self.fetch_attempts)
            .field("backoff", &self.backoff)
            .field("extra_origins", &self.extra_origins)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .field("rejection_status", &self.rejection_status)
            .field("replay_enabled", &self.replay_enabled)
            .finish_non_exhaustive()
    }
}

impl<P> Builder<P> {
    /// Sets the API's base URL. Default: [`DEFAULT_BASE_URL`].
    ///
    /// The token is sent only to this URL's origin (scheme, host and port) and to those
    /// added with [`Builder::extra_origin`]. It must be `https://`, except on loopback
    /// addresses or with [`Builder::allow_insecure_http`].
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Sets the login path, appended to the base URL. Default: [`DEFAULT_LOGIN_PATH`].
    pub fn login_path(mut self, path: impl Into<String>) -> Self {
        self.login_path = path.into();
        self
    }

    /// Sets the refresh path, appended to the base URL. Default: [`DEFAULT_REFRESH_PATH`].
    pub fn refresh_path(mut self, path: impl Into<String>) -> Self {
        self.refresh_path = path.into();
        self
    }

    /// Replaces the BigVision login and refresh exchange with another token API's, such as
    /// [`OAuth2PasswordExchange`](crate::OAuth2PasswordExchange). The exchange then decides
    /// the login and refresh URLs; the base URL still sets the origin that gets the token.
    pub fn exchange(mut self, exchange: impl TokenExchange) -> Self {
        self.exchange = Some(Arc::new(exchange));
        self
    }

    /// Sets when tokens are renewed in the background. Default: [`RenewalWindow::DEFAULT`],
    /// the last quarter of the token's lifetime.
    pub fn renewal_window(mut self, window: RenewalWindow) -> Self {
        self.window = window;
        self
    }

    /// Sets the timeout of one login or refresh call, reply body included. It is separate
    /// from any timeout around the whole request: when that fires, the fetch goes on and
    /// serves the requests that come next. Default: [`DEFAULT_FETCH_TIMEOUT`].
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Sets how many attempts one fetch makes when the token endpoint is unreachable, times
    /// out or returns 429 or 5xx. Rejections are never retried. Default:
    /// [`DEFAULT_FETCH_ATTEMPTS`].
    pub fn fetch_attempts(mut self, attempts: u32) -> Self {
        self.fetch_attempts = attempts;
        self
    }

    /// Sets the backoff between failed attempts, and after a failed fetch, during which
    /// requests that need a new token fail at once with that fetch's error. Default:
    /// [`Backoff::default`], 500 ms doubling up to 30 s, with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Adds an origin (`https://host[:port]`) that also gets the token, besides the base
    /// URL's. Default: none.
    pub fn extra_origin(mut self, origin: impl Into<String>) -> Self {
        self.extra_origins.push(origin.into());
        self
    }

    /// Allows `http://` URLs to hosts other than loopback, which sends the password and
    /// tokens in clear text. Default: off, and building fails on such a URL.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }

    /// Sets the response status that means "this token is no longer good". Default: 401.
    pub fn rejection_status(mut self, status: StatusCode) -> Self {
        self.rejection_status = status;
        self
    }

    /// Turns off the replay of rejected requests: the caller gets the rejection, and the
    /// next request carries a new token. Default: on.
    pub fn without_replay(mut self) -> Self {
        self.replay_enabled = false;
        self
    }

    /// Adds `Content-Type` with this value to API requests that have none, as the BigVision
    /// API expects `application/json` on every call. A request's own `Content-Type` is
    /// never replaced. Default: none added.
    pub fn default_content_type(mut self, value: HeaderValue) -> Self {
        self.content_type = Some(value);
        self
    }

    /// Shares the token with other processes through Redis: see [`RedisTokenStore`].
    /// Default: none, and each process fetches its own tokens.
    ///
    /// [`RedisTokenStore`]: crate::RedisTokenStore
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn token_store(mut self, store: crate::RedisTokenStore) -> Self {
        self.token_store = Some(store);
        self
    }

    /// Sets which request bodies can be re-created for a replay. Default: [`CloneBody`].
    /// Use [`NoReplay`](crate::NoReplay) for a body type that is not `Clone`.
    pub fn replay_body<Q>(self, policy: Q) -> Builder<Q> {
        Builder {
            transport: self.transport,
            credentials: self.credentials,
            base_url: self.base_url,
            login_path: self.login_path,
            refresh_path: self.refresh_path,
            exchange: self.exchange,
            window: self.window,
            fetch_timeout: self.fetch_timeout,
            fetch_attempts: self.fetch_attempts,
            backoff: self.backoff,
            extra_origins: self.extra_origins,
            allow_insecure_http: self.allow_insecure_http,
            rejection_status: self.rejection_status,
            replay_enabled: self.replay_enabled,
            replay: policy,
            content_type: self.content_type,
            #[cfg(feature = "redis")]
            token_store: self.token_store,
        }
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the setting: a URL that does not parse or is not
    /// absolute, `http://` to a host other than loopback without
    /// [`Builder::allow_insecure_http`], a path that does not start with `/`, a renewal
    /// fraction outside (0, 1), a zero timeout, zero attempts, or a backoff whose first
    /// delay is zero or longer than its maximum.
    pub fn build(self) -> Result<BigVisionAuthLayer<P>, Error> {
        self.check_numbers()?;
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        let base_uri = parse_url("base_url", &base_url)?;
        let base_origin = Origin::parse("base_url", &base_uri)?;
        let mut origins = vec![base_origin];
        for extra in &self.extra_origins {
            origins.push(Origin::parse(
                "extra_origin",
                &parse_url("extra_origin", extra)?,
            )?);
        }

        for origin in &origins {
            if origin.is_insecure() && !self.allow_insecure_http {
                return Err(Error::config(
                    "base_url",
                    format!(
                        "{origin} is plain http to a host that is not loopback, which would \
                         send the password and tokens in clear text; use https://, or call \
                         allow_insecure_http() to accept that"
                    ),
                ));
            }
        }

        let exchange: Arc<dyn TokenExchange> = match self.exchange {
            Some(exchange) => exchange,
            None => {
                let login_url = join_path("login_path", &base_url, &self.login_path)?;
                let refresh_url = join_path("refresh_path", &base_url, &self.refresh_path)?;
                Arc::new(BigVisionExchange::new(login_url, refresh_url))
            }
        };
        let counters = Arc::new(Counters::default());
        let settings = FetchSettings {
            timeout: self.fetch_timeout,
            max_attempts: self.fetch_attempts,
            backoff: self.backoff,
        };
        #[cfg(feature = "redis")]
        let username = self.credentials.username().to_owned();
        let client = TokenClient::new(
            self.transport,
            exchange,
            self.credentials,
            settings,
            counters.clone(),
        );
        let fetcher: Box<dyn Fetcher> = Box::new(client);
        #[cfg(feature = "redis")]
        let fetcher: Box<dyn Fetcher> = match self.token_store {
            Some(store) => Box::new(store.into_fetcher(
                fetcher,
                &base_url,
                &username,
                self.window,
                &settings,
            )?),
            None => fetcher,
        };
        let cache = Cache::new(fetcher, self.window, counters);
        let state = AuthState::register(
            CacheOwner(Arc::new(cache)),
            Scope::new(origins),
            self.rejection_status,
            self.replay_enabled,
            self.content_type,
        );
        Ok(BigVisionAuthLayer {
            state,
            replay: self.replay,
        })
    }

    fn check_numbers(&self) -> Result<(), Error> {
        match self.window {
            RenewalWindow::Fraction(share) if !(share > 0.0 && share < 1.0) => {
                return Err(Error::config(
                    "renewal_window",
                    format!("the fraction must be between 0 and 1 (exclusive), got {share}"),
                ));
            }
            RenewalWindow::Fixed(window) if window.is_zero() => {
                return Err(Error::config(
                    "renewal_window",
                    "a fixed window must not be zero",
                ));
            }
            _ => {}
        }
        if self.fetch_timeout.is_zero() {
            return Err(Error::config("fetch_timeout", "must not be zero"));
        }
        if self.fetch_attempts == 0 {
            return Err(Error::config("fetch_attempts", "must be at least 1"));
        }
        if self.backoff.initial.is_zero() || self.backoff.initial > self.backoff.max {
            return Err(Error::config(
                "backoff",
                format!(
                    "the first delay must be above zero and at most the maximum, got {:?} and {:?}",
                    self.backoff.initial, self.backoff.max
                ),
            ));
        }
        Ok(())
    }
}

fn parse_url(setting: &'static str, url: &str) -> Result<Uri, Error> {
    url.parse::<Uri>()
        .map_err(|error| Error::config(setting, format!("{url:?} is not a valid URL: {error}")))
}

fn join_path(setting: &'static str, base_url: &str, path: &str) -> Result<Uri, Error> {
    if !path.starts_with('/') {
        return Err(Error::config(
            setting,
            format!("{path:?} must start with `/`; it is appended to the base URL"),
        ));
    }
    parse_url(setting, &format!("{base_url}{path}"))
}

impl Fetcher for TokenClient {
    fn fetch(
        &self,
        request: FetchRequest,
    ) -> Pin<Box<dyn Future<Output = FetchOutcome> + Send + '_>> {
        Box::pin(TokenClient::fetch(self, request.refresh_token))
    }
}
