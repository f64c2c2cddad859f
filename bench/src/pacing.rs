//! How the load generator's senders pace themselves: when each sends within the period
//! (spread evenly, unless the run asks for the old synchronized bursts), and how soon it
//! resends what was not acknowledged.

use std::time::{Duration, Instant};

/// When a sender may resend its unacknowledged messages again: at once the first time,
/// then after 2, 4 and 8 s (at most), until an acknowledgement resets it.
#[derive(Default)]
pub struct RetryBackoff {
    next: Option<Instant>,
    delay: Duration,
}

impl RetryBackoff {
    const FIRST: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(8);

    /// Whether a resend is due at `now`; if so, the next one is pushed back.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.next.is_some_and(|t| now < t) {
            return false;
        }
        self.delay = if self.delay.is_zero() {
            Self::FIRST
        } else {
            (self.delay * 2).min(Self::MAX)
        };
        self.next = Some(now + self.delay);
        true
    }
}

/// How a run's senders were paced, as its report says it.
pub fn label(synchronized: bool) -> &'static str {
    if synchronized {
        "synchronized"
    } else {
        "spread"
    }
}

/// The offset, as a fraction of the send period, of member `index`'s ticks: the golden
/// ratio's multiples modulo 1 spread any number of senders evenly over the period.
pub fn phase(index: usize) -> f64 {
    (index as f64 * 0.618_033_988_749_895).fract()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_back_off_to_8_s_and_an_ack_resets_them() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut b = RetryBackoff::default();
        assert!(b.due(t0), "the first resend goes at once");
        assert!(!b.due(at(1)));
        assert!(b.due(at(2)));
        assert!(!b.due(at(5)));
        assert!(b.due(at(6)), "then 4 s later");
        assert!(!b.due(at(13)));
        assert!(b.due(at(14)), "then 8 s later");
        assert!(!b.due(at(21)));
        assert!(b.due(at(22)), "and never more than 8 s apart");
        let mut b = RetryBackoff::default();
        assert!(b.due(at(30)), "an ack starts over");
    }

    /// Senders are every `users`-th member: their ticks must still cover the period
    /// evenly, or the "spread" load would arrive in bursts after all.
    #[test]
    fn sender_phases_spread_over_the_period() {
        for (senders, step) in [(100usize, 10usize), (100, 1), (1000, 10), (40, 25)] {
            let mut bins = [0usize; 10];
            for s in 0..senders {
                let p = phase(s * step);
                assert!((0.0..1.0).contains(&p));
                bins[(p * 10.0) as usize] += 1;
            }
            let fair = senders / 10;
            assert!(
                bins.iter().all(|&b| b + 2 >= fair && b <= fair + 2),
                "{senders} senders every {step}: {bins:?}"
            );
        }
    }
}
