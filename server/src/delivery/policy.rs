//! What an attempt's outcome means, and when to try again: pure functions of the outcome,
//! the attempt number, the delivery's age and a jitter draw supplied by the caller. And
//! the per-destination circuit breaker, a state machine with time as input.

use std::time::{Duration, Instant, SystemTime};

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status (and `Retry-After`, when it gave one).
    Status {
        /// The HTTP status.
        code: u16,
        /// Its `Retry-After`, read by [`parse_retry_after`].
        retry_after: Option<Duration>,
    },
    /// No answer within the timeout.
    Timeout,
    /// The connection could not be made or broke (DNS, refused, reset, TLS).
    Connect(String),
    /// The destination is not allowed (SSRF guard): never retried.
    Forbidden(String),
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered (2xx).
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Stop: a final failure, with why.
    GiveUp(String),
}

/// Bounds of the retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// No attempt starts later than this after the delivery was accepted.
    pub max_age: Duration,
    /// Ceiling of the first retry's delay; doubled on each further one.
    pub base: Duration,
    /// Longest delay between two attempts (a larger `Retry-After` is capped here).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_age: Duration::from_secs(3600),
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

/// Whether a status is worth retrying: 408, 429 and 5xx.
pub fn retryable_status(code: u16) -> bool {
    code == 408 || code == 429 || (500..600).contains(&code)
}

impl RetryPolicy {
    /// The verdict on attempt number `attempt` (1 for the first) of a delivery accepted
    /// `age` ago. `jitter` in `[0, 1]` spreads retries (full jitter); a `Retry-After` is a
    /// floor under it.
    pub fn judge(&self, outcome: &Outcome, attempt: u32, age: Duration, jitter: f64) -> Verdict {
        let why = match outcome {
            Outcome::Status { code, .. } if (200..300).contains(code) => return Verdict::Delivered,
            Outcome::Status { code, .. } if (300..400).contains(code) => {
                return Verdict::GiveUp(format!("HTTP {code}: redirects are not followed"));
            }
            Outcome::Status { code, .. } if !retryable_status(*code) => {
                return Verdict::GiveUp(format!("HTTP {code}"));
            }
            Outcome::Forbidden(reason) => {
                return Verdict::GiveUp(format!("destination not allowed: {reason}"));
            }
            Outcome::Status { code, .. } => format!("HTTP {code}"),
            Outcome::Timeout => "timed out".to_string(),
            Outcome::Connect(err) => format!("connection failed: {err}"),
        };
        if attempt >= self.max_attempts {
            return Verdict::GiveUp(format!("{why}, after {attempt} attempts"));
        }
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max_delay);
        let mut delay = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        if let Outcome::Status {
            retry_after: Some(after),
            ..
        } = outcome
        {
            delay = delay.max((*after).min(self.max_delay));
        }
        if age + delay > self.max_age {
            return Verdict::GiveUp(format!("{why}; no time left to retry (age {}s)", age.as_secs()));
        }
        Verdict::Retry(delay)
    }
}

/// Reads a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Settings of a destination's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
    /// Longest it stays open (each failed probe doubles the time, up to this).
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Deliveries go through; this many failed in a row.
    Closed(u32),
    /// Deliveries wait until then.
    Open(Instant),
    /// One probe is out (or may go out): its outcome decides.
    HalfOpen {
        /// Whether the probe has been let through.
        probing: bool,
    },
}

/// One destination's circuit breaker: a dead endpoint stops taking attempts (and the
/// executor's capacity) until a probe succeeds.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    open_for: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed(0),
            open_for: config.open_for,
        }
    }

    /// Where it stands.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// When it lets the next attempt through (`None`: now).
    pub fn blocked_until(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open(until) => Some(until),
            _ => None,
        }
    }

    /// Whether an attempt may start at `now` (taking the probe when half open).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed(_) => true,
            BreakerState::Open(until) if now >= until => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
            BreakerState::Open(_) => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
            BreakerState::HalfOpen { probing: true } => false,
        }
    }

    /// The attempt let through was not made after all: a probe may go again.
    pub fn abandon(&mut self) {
        if self.state == (BreakerState::HalfOpen { probing: true }) {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }

    /// An attempt ended: `ok` when the endpoint answered in a way that is not its fault
    /// (2xx or a 4xx other than 408/429).
    pub fn record(&mut self, ok: bool, now: Instant) {
        match (self.state, ok) {
            (_, true) => {
                self.state = BreakerState::Closed(0);
                self.open_for = self.config.open_for;
            }
            (BreakerState::Closed(n), false) if n + 1 >= self.config.failures => {
                self.state = BreakerState::Open(now + self.open_for);
            }
            (BreakerState::Closed(n), false) => self.state = BreakerState::Closed(n + 1),
            (BreakerState::HalfOpen { .. }, false) => {
                self.open_for = (self.open_for * 2).min(self.config.max_open_for);
                self.state = BreakerState::Open(now + self.open_for);
            }
            (BreakerState::Open(_), false) => {}
        }
    }
}

#[cfg(test)]
mod breaker_tests {
    use super::*;

    #[test]
    fn a_probe_not_made_lets_the_next_one_go() {
        let config = BreakerConfig {
            failures: 1,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(4),
        };
        let t0 = Instant::now();
        let mut b = Breaker::new(config);
        b.record(false, t0);
        assert!(!b.allow(t0));
        let later = t0 + Duration::from_secs(1);
        assert!(b.allow(later), "the probe");
        assert!(!b.allow(later), "one at a time");
        b.abandon();
        assert!(b.allow(later), "the probe was not made: another may go");
        b.record(true, later);
        assert_eq!(b.state(), BreakerState::Closed(0));
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn outcomes_are_delivered_retried_or_given_up() {
        let p = RetryPolicy::default();
        let age = Duration::from_secs(1);
        assert_eq!(p.judge(&status(200), 1, age, 0.5), Verdict::Delivered);
        assert_eq!(p.judge(&status(204), 3, age, 0.5), Verdict::Delivered);
        for code in [400, 401, 403, 404, 410, 422] {
            assert_eq!(
                p.judge(&status(code), 1, age, 0.5),
                Verdict::GiveUp(format!("HTTP {code}")),
                "{code}"
            );
        }
        assert!(matches!(p.judge(&status(301), 1, age, 0.5), Verdict::GiveUp(r) if r.contains("redirects")));
        for outcome in [
            status(408),
            status(429),
            status(500),
            status(503),
            Outcome::Timeout,
            Outcome::Connect("refused".into()),
        ] {
            assert!(
                matches!(p.judge(&outcome, 1, age, 0.5), Verdict::Retry(_)),
                "{outcome:?}"
            );
        }
        assert!(
            matches!(p.judge(&Outcome::Forbidden("loopback".into()), 1, age, 0.5), Verdict::GiveUp(r) if r.contains("not allowed"))
        );
    }

    #[test]
    fn delays_grow_with_full_jitter_and_are_bounded_by_attempts_and_age() {
        let p = RetryPolicy {
            max_attempts: 5,
            max_age: Duration::from_secs(60),
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        };
        let age = Duration::ZERO;
        assert_eq!(
            p.judge(&Outcome::Timeout, 1, age, 1.0),
            Verdict::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            p.judge(&Outcome::Timeout, 2, age, 1.0),
            Verdict::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            p.judge(&Outcome::Timeout, 3, age, 0.5),
            Verdict::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            p.judge(&Outcome::Timeout, 4, age, 1.0),
            Verdict::Retry(Duration::from_secs(8))
        );
        assert_eq!(
            p.judge(&Outcome::Timeout, 2, age, 0.0),
            Verdict::Retry(Duration::ZERO)
        );
        assert!(
            matches!(p.judge(&Outcome::Timeout, 5, age, 1.0), Verdict::GiveUp(r) if r.contains("after 5 attempts"))
        );
        // The next attempt would start past the age bound.
        assert!(
            matches!(p.judge(&Outcome::Timeout, 4, Duration::from_secs(55), 1.0), Verdict::GiveUp(r) if r.contains("no time left"))
        );
        let capped = RetryPolicy {
            max_attempts: 40,
            max_age: Duration::from_secs(1 << 20),
            ..p
        };
        assert_eq!(
            capped.judge(&Outcome::Timeout, 30, age, 1.0),
            Verdict::Retry(Duration::from_secs(10))
        );
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_the_longest_delay() {
        let p = RetryPolicy::default();
        let told = |secs| Outcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            p.judge(&told(30), 1, Duration::ZERO, 0.1),
            Verdict::Retry(Duration::from_secs(30))
        );
        assert_eq!(
            p.judge(&told(100_000), 1, Duration::ZERO, 0.1),
            Verdict::Retry(p.max_delay)
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn the_breaker_opens_after_failures_probes_once_and_closes_on_success() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(25),
        };
        let mut b = Breaker::new(config);
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.record(false, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed(2));
        b.record(false, t0);
        assert_eq!(b.state(), BreakerState::Open(t0 + Duration::from_secs(10)));
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        // One probe, and no second while it is out.
        assert!(b.allow(t0 + Duration::from_secs(10)));
        assert!(!b.allow(t0 + Duration::from_secs(10)));
        // A failed probe opens it for twice as long, at most max_open_for.
        b.record(false, t0 + Duration::from_secs(10));
        assert_eq!(b.state(), BreakerState::Open(t0 + Duration::from_secs(30)));
        assert!(b.allow(t0 + Duration::from_secs(30)));
        b.record(false, t0 + Duration::from_secs(30));
        assert_eq!(b.state(), BreakerState::Open(t0 + Duration::from_secs(55)));
        assert!(b.allow(t0 + Duration::from_secs(55)));
        b.record(true, t0 + Duration::from_secs(55));
        assert_eq!(b.state(), BreakerState::Closed(0));
        // A success resets the count, and the open time.
        for _ in 0..3 {
            b.record(false, t0 + Duration::from_secs(60));
        }
        assert_eq!(b.state(), BreakerState::Open(t0 + Duration::from_secs(70)));
    }
}
