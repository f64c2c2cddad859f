//! Per-socket limits that are not part of parsing: the request rate (a token bucket).
//! Size limits are enforced where the bytes are: frame size in the transport, text and
//! page sizes in `natter_protocol`'s parser, rooms per socket in `cmd::join`.

use std::time::Instant;

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            tokens: burst.max(1.0),
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            last: Instant::now(),
        }
    }

    /// Take a token now; false when the bucket is empty.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10.0, 3.0);
        r.last = t0;
        assert!((0..3).all(|_| r.take_at(t0)));
        assert!(!r.take_at(t0), "burst spent");
        // 10/s: one token every 100 ms.
        assert!(!r.take_at(t0 + Duration::from_millis(50)));
        assert!(r.take_at(t0 + Duration::from_millis(150)));
        assert!(!r.take_at(t0 + Duration::from_millis(150)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| r.take_at(later)));
        assert!(!r.take_at(later));
    }

    #[test]
    fn a_zero_rate_still_allows_one_burst() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(0.0, 0.0);
        r.last = t0;
        assert!(r.take_at(t0));
        assert!(!r.take_at(t0 + Duration::from_secs(60)));
    }
}
