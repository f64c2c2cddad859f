//! Whether the edge is behind, for `--coalesce-lag-ms`: write coalescing that costs a busy
//! room up to a window of latency only while the edge cannot keep up, and nothing when it
//! can.
//!
//! The signal is the edge's **scheduling lag**: every [`PERIOD`] a probe task yields and
//! measures how long it waits to run again. Tokio runs a yielded task once its worker has
//! no other ready task, or at the worker's next poll of the sockets and timers (every 61
//! tasks run), so the wait is how far behind the edge's work is: tens of microseconds on an
//! edge that keeps up, milliseconds on one whose cores are saturated (its own work, or a
//! CPU limit, or a neighbour on the node taking the cores).
//!
//! The rule ([`LagRule`], clock-free so it is tested with made-up instants) looks at the
//! (upper) median of the last [`WINDOW`] samples (100 ms), so that a lone late sample (a
//! burst of joins, a neighbour's time slice) changes nothing: a median at or over the
//! threshold engages coalescing; a median under half the threshold for [`CALM`] (two
//! seconds) releases it. The slower release keeps the edge from flapping while coalescing
//! itself is what made it keep up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use natter_ops::{Gauge, Histogram};
use tokio::time::Instant;

/// How often the probe samples the lag.
pub const PERIOD: Duration = Duration::from_millis(10);
/// How many of the latest samples the rule looks at (their median: 100 ms of lag).
pub const WINDOW: usize = 10;
/// How long the median must stay under half the threshold before coalescing stops.
pub const CALM: Duration = Duration::from_secs(2);

/// When rooms coalesce their writes (with `--coalesce-ms`): always, or only while the
/// edge is behind (`--coalesce-lag-ms`).
pub struct Pressure {
    /// No threshold: coalesce always.
    always: bool,
    behind: AtomicBool,
}

impl Pressure {
    /// Coalesce always (`--coalesce-lag-ms 0`).
    pub fn always() -> Arc<Pressure> {
        Arc::new(Pressure {
            always: true,
            behind: AtomicBool::new(false),
        })
    }

    /// Coalesce while the scheduling lag says the edge is behind; starts the probe task,
    /// which observes each sample in `lags` and sets `engaged` to 0 or 1, and ends once the
    /// returned handle is dropped.
    pub fn probe(threshold: Duration, lags: Histogram, engaged: Gauge) -> Arc<Pressure> {
        let p = Arc::new(Pressure {
            always: false,
            behind: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&p);
        tokio::spawn(run_probe(weak, LagRule::new(threshold), lags, engaged));
        p
    }

    /// Whether rooms coalesce now.
    pub fn engaged(&self) -> bool {
        self.always || self.behind.load(Ordering::Relaxed)
    }
}

async fn run_probe(p: Weak<Pressure>, mut rule: LagRule, lags: Histogram, engaged: Gauge) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Lives as long as the rooms' handle: one sample per tick.
    loop {
        tick.tick().await;
        let t0 = std::time::Instant::now();
        tokio::task::yield_now().await;
        let lag = t0.elapsed();
        lags.observe(lag);
        let Some(p) = p.upgrade() else { return };
        let behind = rule.sample(Instant::now(), lag);
        if p.behind.swap(behind, Ordering::Relaxed) != behind {
            engaged.set(i64::from(behind));
            tracing::debug!(
                behind,
                lag_us = lag.as_micros() as u64,
                "write coalescing {}",
                if behind { "engaged" } else { "released" }
            );
        }
    }
}

/// The rule that turns lag samples into engaged or not; see the module doc.
#[derive(Debug)]
pub struct LagRule {
    threshold: Duration,
    /// The last [`WINDOW`] samples (a ring, oldest overwritten).
    recent: [Duration; WINDOW],
    next: usize,
    behind: bool,
    /// Since when the median was under half the threshold, while engaged.
    calm_since: Option<Instant>,
}

impl LagRule {
    pub fn new(threshold: Duration) -> Self {
        LagRule {
            threshold,
            recent: [Duration::ZERO; WINDOW],
            next: 0,
            behind: false,
            calm_since: None,
        }
    }

    /// A sample of `lag` taken at `now`: whether the edge counts as behind.
    pub fn sample(&mut self, now: Instant, lag: Duration) -> bool {
        self.recent[self.next] = lag;
        self.next = (self.next + 1) % WINDOW;
        let mut sorted = self.recent;
        sorted.sort_unstable();
        let median = sorted[WINDOW / 2];
        if median >= self.threshold {
            self.behind = true;
            self.calm_since = None;
        } else if self.behind {
            if median < self.threshold / 2 {
                let since = *self.calm_since.get_or_insert(now);
                if now.duration_since(since) >= CALM {
                    self.behind = false;
                    self.calm_since = None;
                }
            } else {
                self.calm_since = None;
            }
        }
        self.behind
    }
}

#[cfg(test)]
mod tests {
    use super::{LagRule, Pressure, CALM};
    use natter_ops::Histogram;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    /// Feed `n` samples of `lag` 10 ms apart from `*t`; the last answer.
    fn feed(r: &mut LagRule, t: &mut Instant, n: usize, lag: Duration) -> bool {
        let mut behind = false;
        for _ in 0..n {
            *t += 10 * MS;
            behind = r.sample(*t, lag);
        }
        behind
    }

    #[test]
    fn lone_late_samples_change_nothing() {
        let mut r = LagRule::new(2 * MS);
        let mut t = Instant::now();
        assert!(!feed(&mut r, &mut t, 20, Duration::from_micros(40)));
        // Four of ten late (a burst of joins): the median is still on time.
        for _ in 0..5 {
            assert!(!feed(&mut r, &mut t, 4, 30 * MS));
            assert!(!feed(&mut r, &mut t, 6, Duration::from_micros(40)));
        }
    }

    #[test]
    fn a_late_median_engages_and_calm_samples_release() {
        let mut r = LagRule::new(2 * MS);
        let mut t = Instant::now();
        assert!(!feed(&mut r, &mut t, 10, Duration::from_micros(40)));
        // Late samples: engaged once they are the (upper) median, five of ten.
        assert!(!feed(&mut r, &mut t, 4, 2 * MS));
        assert!(feed(&mut r, &mut t, 1, 2 * MS), "at the threshold: behind");
        assert!(feed(&mut r, &mut t, 20, 3 * MS));
        // On time again: the median falls under half after six samples, and CALM later
        // the edge lets go.
        assert!(feed(&mut r, &mut t, 6, Duration::from_micros(100)));
        let calm_from = t;
        while t < calm_from + CALM - 10 * MS {
            assert!(feed(&mut r, &mut t, 1, Duration::from_micros(100)));
        }
        assert!(!feed(&mut r, &mut t, 1, Duration::from_micros(100)));
    }

    #[test]
    fn a_median_between_half_and_the_threshold_holds_on() {
        let mut r = LagRule::new(2 * MS);
        let mut t = Instant::now();
        assert!(feed(&mut r, &mut t, 10, 5 * MS));
        // 1.5 ms: not late enough to engage, not calm enough to let go, however long.
        assert!(feed(&mut r, &mut t, 200, 1500 * Duration::from_micros(1)));
        let mut fresh = LagRule::new(2 * MS);
        assert!(!feed(
            &mut fresh,
            &mut t,
            200,
            1500 * Duration::from_micros(1)
        ));
    }

    /// The probe on a real runtime: a task that holds the only worker for 30 ms at a time
    /// makes the edge behind a 20 ms threshold; once it stops, the probe lets go. (Wide
    /// margins: a loaded test machine delays samples by milliseconds, not by tens.)
    #[test]
    fn the_probe_engages_while_the_runtime_is_held_and_lets_go_after() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = Pressure::probe(20 * MS, Histogram::new(&[0.001]), Default::default());
            let busy = Arc::new(AtomicBool::new(true));
            let hold = busy.clone();
            let hog = tokio::spawn(async move {
                // Bounded: at most 1,000 rounds of 30 ms.
                for _ in 0..1_000 {
                    if !hold.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(30 * MS);
                    tokio::task::yield_now().await;
                }
            });
            let mut engaged = false;
            for _ in 0..500 {
                if p.engaged() {
                    engaged = true;
                    break;
                }
                tokio::time::sleep(MS).await;
            }
            busy.store(false, Ordering::Relaxed);
            hog.await.unwrap();
            assert!(engaged, "a runtime held 30 ms at a time is behind");
            let mut released = false;
            for _ in 0..1_000 {
                tokio::time::sleep(10 * MS).await;
                if !p.engaged() {
                    released = true;
                    break;
                }
            }
            assert!(
                released,
                "an idle runtime is not behind once CALM has passed"
            );
        });
    }

    #[test]
    fn always_is_engaged_without_a_probe() {
        assert!(Pressure::always().engaged());
    }
}
