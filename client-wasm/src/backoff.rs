//! Reconnection delays: exponential backoff with full jitter, honouring the server's
//! advice. Sans-IO: it computes delays, the caller sleeps.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bounds of the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest delay ever used.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(250),
            max: Duration::from_secs(20),
        }
    }
}

/// Exponential backoff with full jitter: the n-th consecutive retry waits a uniformly
/// random time in `[0, min(max, base·2ⁿ)]`, but never less than what the server advised.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff seeded from the system's randomness.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff::with_seed(config, rand::random())
    }

    /// A deterministic backoff, for tests.
    pub fn with_seed(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Consecutive failed attempts so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.config.base.saturating_mul(factor).min(self.config.max)
    }

    /// The delay before the next attempt; `advice` is the server's minimum, if it gave one.
    pub fn next_delay(&mut self, advice: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        let jittered = Duration::from_millis(self.rng.random_range(0..=ceiling.as_millis() as u64));
        self.attempt = self.attempt.saturating_add(1);
        match advice {
            // Advice is a floor; jitter on top spreads a herd of clients told the same.
            Some(floor) => floor + jittered / 2,
            None => jittered,
        }
    }

    /// A connection succeeded: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_grow_to_the_max_and_reset() {
        let mut b = Backoff::with_seed(
            BackoffConfig {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            7,
        );
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay(None);
            assert!(d <= Duration::from_secs(1));
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        let mut b = Backoff::with_seed(BackoffConfig::default(), 1);
        let mut delays: Vec<u128> = (0..200)
            .map(|_| {
                b.reset();
                b.next_delay(None).as_millis()
            })
            .collect();
        delays.sort_unstable();
        assert!(delays[0] < 50, "some retries come almost at once");
        assert!(delays[199] > 200, "some wait close to the ceiling");
    }

    #[test]
    fn server_advice_is_a_floor() {
        let mut b = Backoff::with_seed(BackoffConfig::default(), 3);
        for _ in 0..20 {
            assert!(b.next_delay(Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
    }
}
