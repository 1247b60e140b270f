//! Exponential backoff with jitter, and `Retry-After`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Exponential backoff between failed attempts at the token endpoints.
///
/// After the `n`-th failed attempt in a row, the next attempt waits
/// `min(max, initial * 2^(n-1))`. With jitter on (the default), the wait is drawn uniformly
/// from the upper half of that range, `[delay / 2, delay]`, so clients that failed together
/// do not retry together. The same sequence spaces retries inside one fetch and the fetches
/// that follow a failed one, so the endpoints see at most one attempt per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The maximum delay.
    pub max: Duration,
    /// Whether delays are randomized.
    pub jitter: bool,
}

impl Backoff {
    /// The default first delay: 500 ms.
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(500);
    /// The default longest delay: 30 s.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

    /// Creates a backoff with jitter from its first and longest delays.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            jitter: true,
        }
    }

    /// Turns jitter off, so every delay is exact (useful in tests).
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Returns the delay after `failures` failed attempts in a row (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let full = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        if self.jitter {
            full / 2 + full.mul_f64(random_unit() / 2.0)
        } else {
            full
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Backoff::DEFAULT_INITIAL, Backoff::DEFAULT_MAX)
    }
}

/// Returns a random number in `[0, 1)`, from the standard library's randomly keyed hasher.
fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let bits = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Reads `Retry-After` as delay-seconds or as an HTTP date.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(
        date.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_max() {
        let backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(350)).without_jitter();

        let delays: Vec<u128> = (1..=4).map(|n| backoff.delay(n).as_millis()).collect();

        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[test]
    fn jitter_stays_in_upper_half() {
        let backoff = Backoff::new(Duration::from_millis(1000), Duration::from_secs(10));

        for _ in 0..100 {
            let delay = backoff.delay(1);
            assert!(delay >= Duration::from_millis(500));
            assert!(delay <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));

        let later = SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        headers.insert(http::header::RETRY_AFTER, date.parse().unwrap());
        let parsed = parse_retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100));
        assert!(parsed <= Duration::from_secs(120));

        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), None);
    }
}
