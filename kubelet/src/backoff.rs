//! Exponential backoff: one doubling-with-cap rule shared by error retries and
//! the per-container CrashLoopBackOff.
//!
//! Both are plain state machines over caller-supplied clocks, so tests drive
//! them without sleeping.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Upstream CrashLoopBackOff: first delay.
pub const CRASH_LOOP_INITIAL: Duration = Duration::from_secs(10);
/// Upstream CrashLoopBackOff: cap.
pub const CRASH_LOOP_MAX: Duration = Duration::from_secs(300);

fn doubled(current: Duration, max: Duration) -> Duration {
    current.saturating_mul(2).min(max)
}

/// Retry delay for one failing operation: `initial`, doubling up to `max`,
/// back to `initial` after [`Backoff::reset`] (call it on success).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff that first waits `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = doubled(self.next, self.max);
        delay
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    backoff: Duration,
    last_update: SystemTime,
}

/// Per-container restart backoff, as upstream `flowcontrol.Backoff` keyed by
/// container name: a restart is held back while less than the current delay
/// has passed since the previous instance finished. An entry expires when the
/// container last finished more than twice the cap after the last restart,
/// i.e. it ran fine for a long time.
#[derive(Debug, Clone)]
pub struct CrashLoopBackOff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for CrashLoopBackOff {
    fn default() -> Self {
        Self::new(CRASH_LOOP_INITIAL, CRASH_LOOP_MAX)
    }
}

impl CrashLoopBackOff {
    /// A tracker with the given first delay and cap.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    fn live_entry(&self, container: &str, finished_at: SystemTime) -> Option<&Entry> {
        let entry = self.entries.get(container)?;
        let since_update = finished_at
            .duration_since(entry.last_update)
            .unwrap_or_default();
        (since_update <= self.max.saturating_mul(2)).then_some(entry)
    }

    /// When the container whose previous instance finished at `finished_at`
    /// may be restarted; `None` if it may be restarted now.
    pub fn restart_after(
        &self,
        container: &str,
        finished_at: SystemTime,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let entry = self.live_entry(container, finished_at)?;
        let deadline = finished_at + entry.backoff;
        (now < deadline).then_some(deadline)
    }

    /// Records a restart of `container` after an instance that finished at
    /// `finished_at`; the next restart waits twice as long (up to the cap).
    pub fn record_restart(&mut self, container: &str, finished_at: SystemTime, now: SystemTime) {
        let backoff = match self.live_entry(container, finished_at) {
            Some(entry) => doubled(entry.backoff, self.max),
            None => self.initial.min(self.max),
        };
        self.entries.insert(
            container.to_owned(),
            Entry {
                backoff,
                last_update: now,
            },
        );
    }

    /// The current delay of a container, if it has restarted recently.
    pub fn current(&self, container: &str) -> Option<Duration> {
        self.entries.get(container).map(|e| e.backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn retry_backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn first_restart_is_immediate_then_ten_seconds_doubling() {
        let mut crash = CrashLoopBackOff::default();
        // First exit: no history, restart at once.
        assert_eq!(crash.restart_after("app", at(0), at(0)), None);
        crash.record_restart("app", at(0), at(0));
        // Second exit two seconds later: held for 10 s from its finish.
        assert_eq!(crash.restart_after("app", at(2), at(3)), Some(at(12)));
        assert_eq!(crash.restart_after("app", at(2), at(12)), None);
        crash.record_restart("app", at(2), at(12));
        assert_eq!(crash.current("app"), Some(Duration::from_secs(20)));
        assert_eq!(crash.restart_after("app", at(14), at(14)), Some(at(34)));
    }

    #[test]
    fn crash_loop_backoff_is_capped_at_five_minutes() {
        let mut crash = CrashLoopBackOff::default();
        for t in 0..10 {
            crash.record_restart("app", at(t), at(t));
        }
        assert_eq!(crash.current("app"), Some(CRASH_LOOP_MAX));
    }

    #[test]
    fn backoff_expires_after_a_long_healthy_run() {
        let mut crash = CrashLoopBackOff::default();
        crash.record_restart("app", at(0), at(0));
        crash.record_restart("app", at(1), at(11));
        // Ran for 20 minutes (> 2 x cap) before exiting: start over.
        assert_eq!(crash.restart_after("app", at(1211), at(1211)), None);
        crash.record_restart("app", at(1211), at(1211));
        assert_eq!(crash.current("app"), Some(CRASH_LOOP_INITIAL));
    }

    #[test]
    fn containers_back_off_independently() {
        let mut crash = CrashLoopBackOff::default();
        crash.record_restart("a", at(0), at(0));
        assert!(crash.restart_after("a", at(1), at(1)).is_some());
        assert_eq!(crash.restart_after("b", at(1), at(1)), None);
    }
}
