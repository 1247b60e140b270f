//! The origins (scheme, host and port) that may receive the token.

use std::fmt;
use std::net::IpAddr;

use http::Uri;

use crate::Error;

/// A scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: Scheme,
    host: String,
    port: u16,
    /// The authority as configured, for a fast comparison with requests that spell it the
    /// same way.
    authority: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Origin {
    /// Reads the origin of an absolute `http` or `https` URL.
    pub(crate) fn parse(setting: &'static str, url: &Uri) -> Result<Origin, Error> {
        if url
            .authority()
            .is_some_and(|authority| authority.as_str().contains('@'))
        {
            return Err(Error::config(
                setting,
                "the URL contains user information (`user:password@`); remove it, and pass \
                 the API's credentials with `Credentials`",
            ));
        }
        let scheme = match url.scheme_str() {
            Some(scheme) if scheme.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(scheme) if scheme.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(other) => {
                return Err(Error::config(
                    setting,
                    format!(
                        "scheme {other:?} is not supported; use https:// (or http:// on loopback)"
                    ),
                ));
            }
            None => {
                return Err(Error::config(
                    setting,
                    format!("{url} is not an absolute URL; give it as https://host/path"),
                ));
            }
        };
        let host = url
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| Error::config(setting, format!("{url} has no host")))?;
        Ok(Origin {
            scheme,
            authority: url
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
            host: normalize_host(host),
            port: url.port_u16().unwrap_or(match scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
            }),
        })
    }

    /// Returns whether requests to this origin travel without TLS to another machine.
    pub(crate) fn is_insecure(&self) -> bool {
        self.scheme == Scheme::Http && !is_loopback(&self.host)
    }

    #[inline]
    fn matches(&self, uri: &Uri) -> bool {
        let same_spelling = uri.scheme() == Some(self.scheme.as_http())
            && uri
                .authority()
                .is_some_and(|authority| authority.as_str().eq_ignore_ascii_case(&self.authority));
        same_spelling || self.matches_parsed(uri)
    }

    fn matches_parsed(&self, uri: &Uri) -> bool {
        let scheme = match uri.scheme() {
            Some(scheme) if *scheme == http::uri::Scheme::HTTPS => Scheme::Https,
            Some(scheme) if *scheme == http::uri::Scheme::HTTP => Scheme::Http,
            _ => return false,
        };
        let Some(host) = uri.host() else { return false };
        let port = uri.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        scheme == self.scheme
            && port == self.port
            && trim_brackets(host).eq_ignore_ascii_case(&self.host)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({self})")
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Scheme {
    fn as_http(self) -> &'static http::uri::Scheme {
        match self {
            Scheme::Http => &http::uri::Scheme::HTTP,
            Scheme::Https => &http::uri::Scheme::HTTPS,
        }
    }
}

fn trim_brackets(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

fn normalize_host(host: &str) -> String {
    trim_brackets(host).to_ascii_lowercase()
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The origins that receive the token: the API's and any extra ones the user named.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    origins: Vec<Origin>,
}

impl Scope {
    pub(crate) fn new(origins: Vec<Origin>) -> Self {
        Scope { origins }
    }

    /// Returns whether a request to `uri` may carry the token. A relative URI has no origin
    /// and never does.
    #[inline]
    pub(crate) fn allows(&self, uri: &Uri) -> bool {
        self.origins.iter().any(|origin| origin.matches(uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        Origin::parse("base_url", &url.parse().unwrap()).unwrap()
    }

    #[test]
    fn matches_scheme_host_and_port() {
        let scope = Scope::new(vec![origin("https://BigVision.id/api")]);

        let allowed = |url: &str| scope.allows(&url.parse().unwrap());

        assert!(allowed("https://bigvision.id/api/ocr"));
        assert!(allowed("https://bigvision.id:443/other"));
        assert!(!allowed("http://bigvision.id/api/ocr"));
        assert!(!allowed("https://bigvision.id:8443/api"));
        assert!(!allowed("https://bigvision.id.evil.example/api"));
        assert!(!allowed("https://evil.example/api"));
        assert!(!allowed("/api/ocr"));
    }

    #[test]
    fn loopback_http_is_not_insecure() {
        assert!(!origin("http://127.0.0.1:8080/api").is_insecure());
        assert!(!origin("http://[::1]:8080/api").is_insecure());
        assert!(!origin("http://localhost/api").is_insecure());
        assert!(origin("http://10.0.0.1/api").is_insecure());
        assert!(!origin("https://bigvision.id/api").is_insecure());
    }

    #[test]
    fn ipv6_origin_matches() {
        let scope = Scope::new(vec![origin("http://[::1]:9000/api")]);

        assert!(scope.allows(&"http://[::1]:9000/api/x".parse().unwrap()));
    }

    #[test]
    fn rejects_other_schemes_relative_and_userinfo() {
        for url in ["ftp://host/x", "/relative", "https://user:secret@host/api"] {
            let result = Origin::parse("base_url", &url.parse().unwrap());

            assert!(matches!(result, Err(Error::InvalidConfig { .. })), "{url}");
        }
    }
}
