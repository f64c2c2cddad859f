//! When a room writes what it staged (`--coalesce-ms`): a clock-free decision the room's
//! task ([`super::live`]) asks after each batch of live messages, and the deadline it then
//! sleeps until. Kept apart so the rule is tested on its own, with made-up instants. With
//! `--coalesce-lag-ms` the window applies only while the edge is behind
//! ([`super::pressure`]).

use std::time::Duration;

/// When a room writes what it staged: at once, or (with `--coalesce-ms`) at most once per
/// window. A write opens a window; what arrives inside it waits for its end and goes out
/// in one write per socket, so a quiet room pays no delay and a busy one writes each
/// socket once per window however many messages it has.
pub struct Coalescer {
    window: Duration,
    /// When the last write happened.
    last: Option<tokio::time::Instant>,
    /// Set while staged frames wait for the window to end.
    due: Option<tokio::time::Instant>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Coalescer {
            window,
            last: None,
            due: None,
        }
    }

    /// Frames were staged at `now`: true when they are to be written at once; otherwise
    /// [`Coalescer::due`] says when. `engaged` is false while the edge keeps up and only
    /// coalesces when behind (`--coalesce-lag-ms`, [`super::pressure`]): then a batch goes
    /// out at once, unless a window it would join is already waiting.
    pub fn staged(&mut self, now: tokio::time::Instant, engaged: bool) -> bool {
        if self.due.is_some() {
            return false;
        }
        match self.last {
            Some(last) if engaged && !self.window.is_zero() && now < last + self.window => {
                self.due = Some(last + self.window);
                false
            }
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// When the staged frames are to be written, while they wait for a window's end.
    pub fn due(&self) -> Option<tokio::time::Instant> {
        self.due
    }

    /// The window ended and the staged frames were written at `now`.
    pub fn written(&mut self, now: tokio::time::Instant) {
        self.due = None;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::Coalescer;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn without_a_window_every_batch_is_written_at_once() {
        let mut c = Coalescer::new(Duration::ZERO);
        let t = Instant::now();
        for i in 0..5 {
            assert!(c.staged(t + Duration::from_micros(i), true));
            assert_eq!(c.due(), None);
        }
    }

    #[test]
    fn a_quiet_room_writes_at_once_and_a_busy_one_once_per_window() {
        let w = Duration::from_millis(20);
        let mut c = Coalescer::new(w);
        let t0 = Instant::now();
        // Quiet room: the first message goes out at once and opens a window.
        assert!(c.staged(t0, true));
        // Inside the window: wait for its end, however many batches come.
        assert!(!c.staged(t0 + Duration::from_millis(5), true));
        assert_eq!(c.due(), Some(t0 + w));
        assert!(!c.staged(t0 + Duration::from_millis(15), true));
        assert_eq!(c.due(), Some(t0 + w), "the deadline does not move");
        // The window's write opens the next window.
        c.written(t0 + w);
        assert_eq!(c.due(), None);
        assert!(!c.staged(t0 + w + Duration::from_millis(1), true));
        assert_eq!(c.due(), Some(t0 + w + w));
        c.written(t0 + w + w);
        // Quiet again for longer than a window: at once.
        assert!(c.staged(t0 + Duration::from_millis(100), true));
        assert_eq!(c.due(), None);
    }

    #[test]
    fn while_the_edge_keeps_up_a_window_delays_nothing() {
        let w = Duration::from_millis(20);
        let mut c = Coalescer::new(w);
        let t0 = Instant::now();
        assert!(c.staged(t0, false));
        assert!(
            c.staged(t0 + Duration::from_millis(5), false),
            "not behind: at once"
        );
        assert_eq!(c.due(), None);
        // Behind: the next batch inside the window waits for its end.
        assert!(!c.staged(t0 + Duration::from_millis(10), true));
        assert_eq!(c.due(), Some(t0 + Duration::from_millis(25)));
        // A batch joining a window already waiting waits too, whatever the state now.
        assert!(!c.staged(t0 + Duration::from_millis(12), false));
        c.written(t0 + Duration::from_millis(25));
        assert!(c.staged(t0 + Duration::from_millis(26), false));
    }
}
