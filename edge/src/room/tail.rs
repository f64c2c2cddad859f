//! When a room checks the stream's tail for a message it missed on the live subject: a
//! clock-free decision the room's task ([`super::live`]) asks at each `--tail-check-secs`
//! tick. Kept apart so the rule is tested on its own, with made-up instants.
//!
//! A live copy is lost only on a disruption the edge can see (its NATS connection dropped
//! or came back, the client dropped messages for a slow subscription, the stream's leader
//! changed: [`natter_bus::Disruptions`]), or right around traffic (a room that has just
//! started, or just received a message, may have lost the next one with nothing after it
//! to reveal the gap). A quiet room with none of those has nothing to find, so it checks
//! only every `--tail-check-quiet-secs`, a safety net for whatever goes unseen (a route
//! between NATS nodes that flapped). Checking every room on every tick was most of what
//! an idle natter cost NATS (SCALING.md §2).

use std::time::Duration;

use tokio::time::Instant;

/// When a room checks its tail: at the next tick after it was stirred (started, or a
/// message arrived) or after a disruption, else once per quiet period.
#[derive(Debug)]
pub struct TailSchedule {
    quiet: Duration,
    /// Started, or staged a message since the last check that succeeded.
    stirred: bool,
    /// The disruption count at the start of the last check that succeeded.
    epoch: u64,
    /// When the last check that succeeded started.
    checked_at: Instant,
}

impl TailSchedule {
    /// A room that starts at `now` when the disruption count is `epoch`: its first tick
    /// checks (the subscription may have reached the stream's leader late).
    pub fn new(now: Instant, epoch: u64, quiet: Duration) -> Self {
        TailSchedule {
            quiet,
            stirred: true,
            epoch,
            checked_at: now,
        }
    }

    /// The room staged a live message: the next one may be lost with nothing after it.
    pub fn stir(&mut self) {
        self.stirred = true;
    }

    /// Whether a tick at `now`, with the disruption count at `epoch`, checks the tail.
    pub fn due(&self, now: Instant, epoch: u64) -> bool {
        self.stirred || epoch != self.epoch || now.duration_since(self.checked_at) >= self.quiet
    }

    /// A check started at `started`, with the count at `epoch`, succeeded. (One that failed
    /// changes nothing: the next tick checks again.)
    pub fn checked(&mut self, started: Instant, epoch: u64) {
        self.stirred = false;
        self.epoch = epoch;
        self.checked_at = started;
    }
}

#[cfg(test)]
mod tests {
    use super::TailSchedule;
    use std::time::Duration;
    use tokio::time::Instant;

    const QUIET: Duration = Duration::from_secs(60);
    const TICK: Duration = Duration::from_secs(5);

    #[test]
    fn a_new_room_checks_at_its_first_tick_then_only_once_per_quiet_period() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 7, QUIET);
        assert!(s.due(t0 + TICK, 7));
        s.checked(t0 + TICK, 7);
        let mut checks = 0;
        for i in 2..=25 {
            let now = t0 + TICK * i;
            if s.due(now, 7) {
                checks += 1;
                s.checked(now, 7);
            }
        }
        // Ticks 2..=25 span two minutes: checks at 65 s and 125 s.
        assert_eq!(checks, 2);
    }

    #[test]
    fn a_message_makes_the_next_tick_check() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 0, QUIET);
        s.checked(t0, 0);
        assert!(!s.due(t0 + TICK, 0));
        s.stir();
        assert!(s.due(t0 + TICK, 0));
        s.checked(t0 + TICK, 0);
        assert!(!s.due(t0 + TICK * 2, 0));
    }

    #[test]
    fn a_disruption_makes_the_next_tick_check_until_one_succeeds() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 3, QUIET);
        s.checked(t0, 3);
        assert!(s.due(t0 + TICK, 4));
        // That check failed (NATS still down): nothing recorded, the next tick checks.
        assert!(s.due(t0 + TICK * 2, 5));
        s.checked(t0 + TICK * 2, 5);
        assert!(!s.due(t0 + TICK * 3, 5));
    }

    #[test]
    fn a_disruption_during_a_check_is_checked_for_again() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 1, QUIET);
        // The check started at count 1; a disconnect happened while it ran.
        s.checked(t0, 1);
        assert!(s.due(t0 + TICK, 2));
    }

    #[test]
    fn a_failed_check_leaves_a_stirred_room_due() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 0, QUIET);
        s.checked(t0, 0);
        s.stir();
        // No `checked`: the read failed.
        assert!(s.due(t0 + TICK, 0));
        assert!(s.due(t0 + TICK * 2, 0));
    }
}
