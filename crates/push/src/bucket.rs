//! A token bucket: spreads sends over time at a rate, with a burst of at most a tenth of a
//! second's worth, so a broadcast to many devices goes out evenly rather than in one spike.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Bucket {
    /// Tokens per second.
    rate: f64,
    burst: f64,
    tokens: f64,
    filled_at: Instant,
}

impl Bucket {
    /// A bucket of `rate` tokens per second (at least 1), full at `now`.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            filled_at: now,
        }
    }

    /// Takes up to `wanted` tokens at `now`: how many it got (0 when empty).
    pub fn take(&mut self, wanted: usize, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.filled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.filled_at = now;
        let got = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= got as f64;
        got
    }

    /// How long until the next token, at `now` (zero when one is there).
    pub fn wait(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.filled_at).as_secs_f64();
        let missing = 1.0 - (self.tokens + elapsed * self.rate);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_at_the_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1000, start);
        // A tenth of a second's burst at once, then the rate.
        assert_eq!(bucket.take(500, start), 100);
        assert_eq!(bucket.take(1, start), 0);
        assert_eq!(bucket.wait(start), Duration::from_millis(1));
        assert_eq!(bucket.take(500, start + Duration::from_millis(50)), 50);
        // Idle time fills it to the burst, not beyond.
        assert_eq!(bucket.take(10_000, start + Duration::from_secs(10)), 100);
        let mut slow = Bucket::new(0, start);
        assert_eq!(slow.take(5, start), 1);
        assert_eq!(slow.wait(start), Duration::from_secs(1));
    }
}
