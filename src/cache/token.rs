//! A cached access token, and the phase from which the hot path learns whether to send it.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

/// The time before expiry at which a token stops being sent, unless a tenth of the
/// token's lifetime is shorter. It absorbs the time a request spends on the network and a
/// server that ends the token a little early.
pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// When, before its expiry, a token is renewed in the background.
///
/// The default, a quarter of the token's lifetime, renews a 300-second BigVision token 75
/// seconds before it expires. A fixed window of minutes would make such a token due for
/// renewal as soon as it arrives. A window of a few seconds would leave no time for a slow
/// endpoint, a timeout and a retry or two before requests have to wait. A window that is a share of the
/// lifetime fits tokens of any length.
///
/// Whatever the window, a token is never due for renewal before a tenth of its lifetime has
/// passed, so that a window as long as the lifetime cannot cause a renewal per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RenewalWindow {
    /// Renew when this share of the lifetime is left (between 0 and 1).
    Fraction(f64),
    /// Renew when this much time is left.
    Fixed(Duration),
}

impl RenewalWindow {
    /// The default window: the last quarter of the token's lifetime.
    pub const DEFAULT: RenewalWindow = RenewalWindow::Fraction(0.25);

    fn before_expiry(&self, lifetime: Duration) -> Duration {
        match *self {
            RenewalWindow::Fraction(share) => lifetime.mul_f64(share.clamp(0.0, 1.0)),
            RenewalWindow::Fixed(window) => window,
        }
    }
}

impl Default for RenewalWindow {
    fn default() -> Self {
        RenewalWindow::DEFAULT
    }
}

// The phases of a token. A timer task moves a token from FRESH to RENEW_DUE to EXPIRED, so
// the hot path learns the token's state from one atomic load instead of the clock.
// When that task stops early (its runtime shut down) or cannot run on its own (a
// current-thread runtime), the token moves to CLOCK and the hot path reads the clock for it.
const FRESH: u8 = 0;
const RENEW_DUE: u8 = 1;
const RENEWING: u8 = 2;
const EXPIRED: u8 = 3;
const CLOCK: u8 = 4;
const CLOCK_RENEWING: u8 = 5;

/// The action the hot path may take with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Send it.
    Fresh,
    /// Send it, and start a background renewal.
    RenewDue,
    /// Do not send it; wait for a new one.
    Expired,
}

/// An access token with its `Authorization` header and its deadlines.
///
/// Aligned to 128 bytes so that no other allocation shares its cache lines. Every core reads
/// the phase and the id on every request, and a neighbour written by another core (such as
/// the reference count of some other buffer) would make those reads miss.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Token {
    /// Tells tokens apart, so a 401 for an old token cannot drop a newer one.
    pub(crate) id: u64,
    /// `Bearer <token>`, marked sensitive; cloning it does not allocate.
    pub(crate) header: HeaderValue,
    pub(crate) received_at: Instant,
    pub(crate) renew_at: Instant,
    /// The expiry less the safety margin: the token is not sent after this.
    pub(crate) usable_until: Instant,
    pub(crate) expires_at: Instant,
    phase: AtomicU8,
}

impl Token {
    /// Makes a token with an id no other token in this process has.
    pub(crate) fn new(
        header: HeaderValue,
        received_at: Instant,
        lifetime: Duration,
        window: RenewalWindow,
    ) -> Self {
        let expires_at = received_at + lifetime;
        let margin = DEFAULT_EXPIRY_MARGIN.min(lifetime / 10);
        let usable_until = expires_at - margin;
        let earliest_renewal = received_at + lifetime / 10;
        let renew_at = expires_at
            .checked_sub(window.before_expiry(lifetime))
            .unwrap_or(received_at)
            .max(earliest_renewal)
            .min(usable_until);
        Token {
            id: next_token_id(),
            header,
            received_at,
            renew_at,
            usable_until,
            expires_at,
            phase: AtomicU8::new(FRESH),
        }
    }

    /// Returns what may be done with the token now; reads the clock only in CLOCK phases.
    ///
    /// NOTE: the phase moves only when the timer task runs. If every thread of its runtime
    /// is blocked for longer than the safety margin, a request sent right after the block,
    /// before the timer task runs, can carry a token that has just expired. The API's 401
    /// then renews it, and the request is replayed.
    #[inline]
    pub(crate) fn freshness(&self) -> Freshness {
        match self.phase.load(Ordering::Acquire) {
            FRESH | RENEWING => Freshness::Fresh,
            RENEW_DUE => Freshness::RenewDue,
            EXPIRED => Freshness::Expired,
            _ => self.freshness_by_clock(Instant::now()),
        }
    }

    pub(crate) fn freshness_by_clock(&self, now: Instant) -> Freshness {
        if now >= self.usable_until {
            Freshness::Expired
        } else if now >= self.renew_at && self.phase.load(Ordering::Acquire) != CLOCK_RENEWING {
            Freshness::RenewDue
        } else {
            Freshness::Fresh
        }
    }

    /// Claims the right to start a background renewal; only one caller wins.
    pub(crate) fn claim_renewal(&self) -> bool {
        self.phase
            .compare_exchange(RENEW_DUE, RENEWING, Ordering::AcqRel, Ordering::Acquire)
            .or_else(|_| {
                self.phase.compare_exchange(
                    CLOCK,
                    CLOCK_RENEWING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
            })
            .is_ok()
    }

    /// Makes the token due for renewal again, after a renewal failed or could not start.
    pub(crate) fn release_renewal(&self) {
        let _ =
            self.phase
                .compare_exchange(RENEWING, RENEW_DUE, Ordering::AcqRel, Ordering::Acquire);
        let _ =
            self.phase
                .compare_exchange(CLOCK_RENEWING, CLOCK, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn expire(&self) {
        self.phase.store(EXPIRED, Ordering::Release);
    }

    fn mark_due(&self) {
        let _ = self
            .phase
            .compare_exchange(FRESH, RENEW_DUE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Hands the token over to the clock, because its timer stopped or cannot run.
    pub(crate) fn fall_back_to_clock(&self) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |phase| match phase {
                FRESH | RENEW_DUE => Some(CLOCK),
                RENEWING => Some(CLOCK_RENEWING),
                _ => None,
            });
    }
}

/// Returns an id no other token in this process has. The copies of a header, per thread in
/// [`thread_local_header`] and per service clone, are found by this id, so ids from
/// different layers must never collide.
fn next_token_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// This thread's copies of the headers of the last two tokens it sent, by token id.
    static HEADERS: RefCell<[(u64, Option<HeaderValue>); 2]> =
        const { RefCell::new([(0, None), (0, None)]) };
}

/// Returns the token's `Authorization` header, cloned from this thread's own copy.
///
/// Cloning a header value increments a reference count in its buffer. With one buffer for
/// all threads, every request on every core writes the same cache line. With a copy per
/// thread, each core writes its own. The copy costs one allocation per thread per token.
#[inline]
pub(crate) fn thread_local_header(token: &Token) -> HeaderValue {
    let local = HEADERS.try_with(|slots| {
        if let (id, Some(header)) = &slots.borrow()[0]
            && *id == token.id
        {
            return header.clone();
        }
        copy_header_for_thread(&mut slots.borrow_mut(), token)
    });
    // The thread-local is gone only while this thread is exiting.
    local.unwrap_or_else(|_| token.header.clone())
}

/// Puts the token's header in this thread's first slot, from the second slot or as a new
/// copy, and returns a clone of it.
#[cold]
fn copy_header_for_thread(
    slots: &mut [(u64, Option<HeaderValue>); 2],
    token: &Token,
) -> HeaderValue {
    slots.swap(0, 1);
    if slots[0].0 != token.id || slots[0].1.is_none() {
        let copy = match HeaderValue::from_bytes(token.header.as_bytes()) {
            Ok(mut own) => {
                own.set_sensitive(true);
                own
            }
            Err(_) => token.header.clone(),
        };
        slots[0] = (token.id, Some(copy));
    }
    slots[0].1.clone().unwrap_or_else(|| token.header.clone())
}

/// Moves a token through its phases at its deadlines. Runs as a task; if the task is
/// dropped before the end, the token falls back to the clock.
pub(crate) async fn drive_phases(token: Arc<Token>) {
    struct FallBackOnDrop(Option<Arc<Token>>);
    impl Drop for FallBackOnDrop {
        fn drop(&mut self) {
            if let Some(token) = self.0.take() {
                token.fall_back_to_clock();
            }
        }
    }

    let mut guard = FallBackOnDrop(Some(token.clone()));
    tokio::time::sleep_until(token.renew_at).await;
    token.mark_due();
    tokio::time::sleep_until(token.usable_until).await;
    token.expire();
    guard.0 = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime_secs: u64, window: RenewalWindow) -> Token {
        let header = HeaderValue::from_static("Bearer t");
        Token::new(
            header,
            Instant::now(),
            Duration::from_secs(lifetime_secs),
            window,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn default_window_renews_in_last_quarter() {
        let start = Instant::now();

        let token = token(300, RenewalWindow::DEFAULT);

        assert_eq!(token.renew_at - start, Duration::from_secs(225));
        assert_eq!(token.usable_until - start, Duration::from_secs(295));
        assert_eq!(token.expires_at - start, Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn window_longer_than_lifetime_is_bounded() {
        let start = Instant::now();

        let token = token(300, RenewalWindow::Fixed(Duration::from_secs(3600)));

        assert_eq!(token.renew_at - start, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn phases_follow_the_deadlines() {
        let token = Arc::new(token(100, RenewalWindow::DEFAULT));
        tokio::spawn(drive_phases(token.clone()));

        tokio::time::sleep(Duration::from_secs(74)).await;
        assert_eq!(token.freshness(), Freshness::Fresh);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(token.freshness(), Freshness::RenewDue);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(token.freshness(), Freshness::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn stopped_timer_falls_back_to_clock() {
        let token = Arc::new(token(100, RenewalWindow::DEFAULT));
        let task = tokio::spawn(drive_phases(token.clone()));
        tokio::task::yield_now().await;

        task.abort();
        let _ = task.await;
        tokio::time::sleep(Duration::from_secs(96)).await;

        assert_eq!(token.freshness(), Freshness::Expired);
    }

    #[test]
    fn thread_copies_follow_the_token() {
        let tokens: Vec<Token> = ["Bearer a", "Bearer b", "Bearer c"]
            .into_iter()
            .map(|text| {
                let header = HeaderValue::from_static(text);
                let lifetime = Duration::from_secs(100);
                Token::new(header, Instant::now(), lifetime, RenewalWindow::DEFAULT)
            })
            .collect();

        for round in 0..3 {
            for token in &tokens {
                let header = thread_local_header(token);

                assert_eq!(header, token.header, "round {round}");
                assert!(header.is_sensitive());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_caller_claims_renewal() {
        let token = Arc::new(token(100, RenewalWindow::DEFAULT));
        tokio::spawn(drive_phases(token.clone()));
        tokio::time::sleep(Duration::from_secs(80)).await;

        assert!(token.claim_renewal());
        assert!(!token.claim_renewal());
        assert_eq!(token.freshness(), Freshness::Fresh);
        token.release_renewal();
        assert_eq!(token.freshness(), Freshness::RenewDue);
    }
}

#[cfg(test)]
mod timing_tests {
    use super::*;

    /// The hot path reads no clock, so the timer task must flip the phase promptly. A thread
    /// that reads the phase in a loop must see the token due for renewal, and then expired,
    /// within a few milliseconds of each deadline. The bound allows for a machine busy with
    /// other tests; on an idle one the lag is the timer's 1 ms resolution.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn phase_flips_within_milliseconds() {
        const ALLOWED_LAG: Duration = Duration::from_millis(50);
        for _ in 0..5 {
            let header = HeaderValue::from_static("Bearer t");
            let lifetime = Duration::from_millis(400);
            let token = Arc::new(Token::new(
                header,
                Instant::now(),
                lifetime,
                RenewalWindow::DEFAULT,
            ));
            tokio::spawn(drive_phases(token.clone()));

            let watcher = tokio::task::spawn_blocking({
                let token = token.clone();
                move || {
                    let mut due_seen = None;
                    let give_up = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < give_up {
                        match token.freshness() {
                            Freshness::Fresh => {}
                            Freshness::RenewDue => {
                                due_seen.get_or_insert_with(Instant::now);
                            }
                            Freshness::Expired => return (due_seen, Instant::now()),
                        }
                        std::hint::spin_loop();
                    }
                    panic!("the token never read as expired");
                }
            });
            let (due_seen, expired_seen) = watcher.await.unwrap();

            let due_lag = due_seen.unwrap().saturating_duration_since(token.renew_at);
            let expiry_lag = expired_seen.saturating_duration_since(token.usable_until);
            assert!(
                due_lag <= ALLOWED_LAG,
                "renewal point seen {due_lag:?} late"
            );
            assert!(expiry_lag <= ALLOWED_LAG, "expiry seen {expiry_lag:?} late");
            assert!(due_seen.unwrap() >= token.renew_at);
            assert!(expired_seen >= token.usable_until);
        }
    }
}
