//! When a room checks the stream's tail for a message it missed on the live subject: a
//! clock-free decision the room's task ([`super::live`]) asks at each `--tail-check-secs`
//! tick. Kept apart so the rule is tested on its own, with made-up instants.
//!
//! A lost live copy is revealed by the next message the room receives (its previous
//! sequence does not match; [`super::delivery`] repairs the gap first). What no message
//! reveals is a loss *after the last one*, so the check matters only:
//! - when the room goes quiet after traffic (or after it started: its subscription may
//!   have reached the stream's leader late): at the first tick that finds no message since
//!   the previous one. A room busier than one message per tick never needs it;
//! - after a disruption the edge can see (its NATS connection dropped or came back, the
//!   client dropped messages for a slow subscription, the stream's leader changed:
//!   [`natter_bus::Disruptions`]): at the next tick, in every room;
//! - otherwise once per `--tail-check-quiet-secs`, a safety net for a loss the edge cannot
//!   see (a route between NATS nodes that flapped).
//!
//! Checking every room on every tick was most of what an idle natter cost NATS, and would
//! be as much again under load (SCALING.md §2).
//!
//! The same reasoning sets when a room relists its names ([`NamesRecheck`]): a `userLeft`
//! this edge should have received is lost only in a disruption of its connection.

use std::time::Duration;

use tokio::time::Instant;

/// When a room checks its tail; see the module doc.
#[derive(Debug)]
pub struct TailSchedule {
    quiet: Duration,
    /// Started, or staged a message, since the last check that succeeded.
    stirred: bool,
    /// Staged a message since the previous tick.
    recent: bool,
    /// The disruption count at the start of the last check that succeeded.
    epoch: u64,
    /// When the last check that succeeded started.
    checked_at: Instant,
}

impl TailSchedule {
    /// A room that starts at `now` when the disruption count is `epoch`.
    pub fn new(now: Instant, epoch: u64, quiet: Duration) -> Self {
        TailSchedule {
            quiet,
            stirred: true,
            recent: false,
            epoch,
            checked_at: now,
        }
    }

    /// The room staged a live message.
    pub fn stir(&mut self) {
        self.stirred = true;
        self.recent = true;
    }

    /// A tick at `now`, with the disruption count at `epoch`: whether to check the tail.
    pub fn tick(&mut self, now: Instant, epoch: u64) -> bool {
        let gone_quiet = self.stirred && !std::mem::take(&mut self.recent);
        gone_quiet || epoch != self.epoch || now.duration_since(self.checked_at) >= self.quiet
    }

    /// A check started at `started`, with the count at `epoch`, succeeded. (One that failed
    /// changes nothing: the next tick checks again.)
    pub fn checked(&mut self, started: Instant, epoch: u64) {
        self.stirred = false;
        self.epoch = epoch;
        self.checked_at = started;
    }
}

/// When a room lists its names besides every `--presence-check-secs`: at the first tick
/// after a disruption of its edge's NATS connection (a `userLeft` on its way may have been
/// lost) and at the one after it, since a name is announced gone only when two listings in
/// a row miss it; and at the tick after any listing that missed a name for the first time
/// ([`NamesRecheck::confirm`]).
#[derive(Debug)]
pub struct NamesRecheck {
    /// The connection-disruption count last seen.
    epoch: u64,
    /// Listings still owed for it.
    owed: u8,
}

impl NamesRecheck {
    pub fn new(epoch: u64) -> Self {
        NamesRecheck { epoch, owed: 0 }
    }

    /// A tick with the connection-disruption count at `epoch`: whether to list the names.
    pub fn tick(&mut self, epoch: u64) -> bool {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.owed = 2;
        }
        self.owed > 0
    }

    /// A listing succeeded (a failed one is owed still).
    pub fn listed(&mut self) {
        self.owed = self.owed.saturating_sub(1);
    }

    /// A listing (by either path) missed a name the members know of for the first time:
    /// the confirming listing is owed at the next tick, not a whole
    /// `--presence-check-secs` later, so a name whose `userLeft` was lost is announced
    /// about one tick after the listing that first misses it.
    pub fn confirm(&mut self) {
        self.owed = self.owed.max(1);
    }
}

/// The room's two periodic duties on one clock: the tail tick (every `--tail-check-secs`,
/// asking [`TailSchedule`] and [`NamesRecheck`]) and the names tick (every
/// `--presence-check-secs`). The room's task asks [`Ticks::due`] after everything it
/// handles and arms a timer for [`Ticks::next`] only to sleep, so a busy room polls no
/// timer per message and a room that never goes idle still ticks.
#[derive(Debug)]
pub struct Ticks {
    tail: Period,
    names: Period,
}

#[derive(Debug)]
struct Period {
    every: Duration,
    next: Instant,
}

impl Period {
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        // A late tick is not made up for: the next one is a whole period later.
        self.next = now + self.every;
        true
    }
}

/// Which ticks are due.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub tail: bool,
    pub names: bool,
}

impl Ticks {
    /// Ticks of a room started at `now`: each first due one period later.
    pub fn new(now: Instant, tail_every: Duration, names_every: Duration) -> Self {
        Ticks {
            tail: Period {
                every: tail_every,
                next: now + tail_every,
            },
            names: Period {
                every: names_every,
                next: now + names_every,
            },
        }
    }

    /// When the next tick is due.
    pub fn next(&self) -> Instant {
        self.tail.next.min(self.names.next)
    }

    /// The ticks due at `now` (each then next due a period after `now`).
    pub fn due(&mut self, now: Instant) -> Due {
        Due {
            tail: self.tail.due(now),
            names: self.names.due(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Due, NamesRecheck, TailSchedule, Ticks};
    use std::time::Duration;
    use tokio::time::Instant;

    const QUIET: Duration = Duration::from_secs(60);
    const TICK: Duration = Duration::from_secs(5);

    /// Run ticks `from..=to` (checks succeed); the ticks that checked.
    fn run(s: &mut TailSchedule, t0: Instant, ticks: std::ops::RangeInclusive<u32>) -> Vec<u32> {
        let mut checked = Vec::new();
        for i in ticks {
            let now = t0 + TICK * i;
            if s.tick(now, 0) {
                s.checked(now, 0);
                checked.push(i);
            }
        }
        checked
    }

    #[test]
    fn a_new_quiet_room_checks_at_its_first_tick_then_once_per_quiet_period() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 0, QUIET);
        // Two minutes of ticks: the first, then 60 s after it, and 60 s after that.
        assert_eq!(run(&mut s, t0, 1..=25), vec![1, 13, 25]);
    }

    #[test]
    fn a_room_checks_once_at_the_first_tick_without_a_message() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 0, QUIET);
        assert_eq!(run(&mut s, t0, 1..=1), vec![1]);
        // Messages before ticks 2, 3 and 4: the next message would reveal any loss.
        for i in 2..=4 {
            s.stir();
            assert_eq!(run(&mut s, t0, i..=i), Vec::<u32>::new(), "tick {i}");
        }
        // Tick 5 finds none since tick 4: the last one may have a lost successor.
        assert_eq!(run(&mut s, t0, 5..=8), vec![5]);
    }

    #[test]
    fn a_busy_room_checks_only_once_per_quiet_period() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 0, QUIET);
        let mut checked = Vec::new();
        for i in 1..=25 {
            s.stir();
            checked.extend(run(&mut s, t0, i..=i));
        }
        assert_eq!(checked, vec![12, 24]);
    }

    #[test]
    fn a_disruption_makes_the_next_tick_check_until_one_succeeds() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 3, QUIET);
        s.checked(t0, 3);
        assert!(s.tick(t0 + TICK, 4));
        // That check failed (NATS still down): nothing recorded, the next tick checks.
        assert!(s.tick(t0 + TICK * 2, 5));
        s.checked(t0 + TICK * 2, 5);
        assert!(!s.tick(t0 + TICK * 3, 5));
    }

    #[test]
    fn a_disruption_in_a_busy_room_checks_at_once() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 0, QUIET);
        s.checked(t0, 0);
        s.stir();
        assert!(s.tick(t0 + TICK, 1));
    }

    #[test]
    fn a_disruption_during_a_check_is_checked_for_again() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 1, QUIET);
        // The check started at count 1; a disconnect happened while it ran.
        s.checked(t0, 1);
        assert!(s.tick(t0 + TICK, 2));
    }

    #[test]
    fn a_failed_check_of_a_room_gone_quiet_is_retried_at_the_next_tick() {
        let t0 = Instant::now();
        let mut s = TailSchedule::new(t0, 0, QUIET);
        s.checked(t0, 0);
        s.stir();
        assert!(!s.tick(t0 + TICK, 0));
        assert!(s.tick(t0 + TICK * 2, 0));
        // No `checked`: the read failed.
        assert!(s.tick(t0 + TICK * 3, 0));
    }

    #[test]
    fn names_are_listed_twice_after_a_disruption_and_failures_are_owed() {
        let mut r = NamesRecheck::new(4);
        assert!(!r.tick(4));
        assert!(r.tick(5));
        // That listing failed: still two owed.
        assert!(r.tick(5));
        r.listed();
        assert!(r.tick(5));
        r.listed();
        assert!(!r.tick(5));
        // Another disruption while one was owed starts over.
        assert!(r.tick(6));
        r.listed();
        assert!(r.tick(7));
        r.listed();
        assert!(r.tick(7));
        r.listed();
        assert!(!r.tick(7));
    }

    #[test]
    fn a_first_miss_is_confirmed_at_the_next_tick() {
        let mut r = NamesRecheck::new(0);
        assert!(!r.tick(0));
        // The periodic listing missed a name: one more listing, at the next tick.
        r.confirm();
        assert!(r.tick(0));
        r.listed();
        assert!(!r.tick(0));
        // A miss during a disruption's two listings owes no third.
        assert!(r.tick(1));
        r.confirm();
        r.listed();
        assert!(r.tick(1));
        r.listed();
        assert!(!r.tick(1));
    }

    #[test]
    fn ticks_come_each_period_and_late_ones_are_not_made_up() {
        let t0 = Instant::now();
        let mut t = Ticks::new(t0, TICK, TICK * 3);
        assert_eq!(t.next(), t0 + TICK);
        assert_eq!(t.due(t0 + TICK / 2), Due::default());
        assert_eq!(
            t.due(t0 + TICK),
            Due {
                tail: true,
                names: false
            }
        );
        assert_eq!(t.due(t0 + TICK), Due::default(), "once per period");
        assert_eq!(t.next(), t0 + TICK * 2);
        assert_eq!(
            t.due(t0 + TICK * 2),
            Due {
                tail: true,
                names: false
            }
        );
        assert_eq!(
            t.due(t0 + TICK * 3),
            Due {
                tail: true,
                names: true
            }
        );
        assert_eq!(t.next(), t0 + TICK * 4);
        // Busy for a long while: one tick of each, then a period from there.
        let late = t0 + TICK * 20 + Duration::from_millis(7);
        assert_eq!(
            t.due(late),
            Due {
                tail: true,
                names: true
            }
        );
        assert_eq!(
            t.due(late + TICK - Duration::from_millis(1)),
            Due::default()
        );
        assert_eq!(t.next(), late + TICK);
        assert_eq!(
            t.due(late + TICK),
            Due {
                tail: true,
                names: false
            }
        );
    }
}
