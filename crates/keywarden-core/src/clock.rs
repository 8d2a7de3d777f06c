//! Time as an input. Everything time-dependent takes a [`Clock`] so tests can move it.

use crate::model::Millis;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in Unix milliseconds (UTC).
    fn now_ms(&self) -> Millis;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `ms`.
    pub fn new(ms: Millis) -> Self {
        Self(Arc::new(AtomicI64::new(ms)))
    }
    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Moves the clock forward by `s` seconds.
    pub fn advance_secs(&self, s: i64) {
        self.advance_ms(s * 1000);
    }
    /// Sets the clock to `ms`.
    pub fn set_ms(&self, ms: Millis) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Nanoseconds on the monotonic clock as the kernel last noted it: at most a scheduler
/// tick (a few milliseconds) behind, and read without asking the CPU's counter, so several
/// times cheaper than a precise reading. For what is noted on every request and timed in
/// seconds or milliseconds: a connection's last activity, a cache entry's age.
#[cfg(target_os = "linux")]
pub fn coarse_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Nanoseconds on the monotonic clock, from the first reading (no coarse clock here).
#[cfg(not(target_os = "linux"))]
pub fn coarse_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos(),
    )
    .unwrap_or(u64::MAX)
}

/// How long from `then` (a reading of [`coarse_nanos`]) to `now` (a later one).
pub fn coarse_between(then: u64, now: u64) -> Duration {
    Duration::from_nanos(now.saturating_sub(then))
}

#[cfg(test)]
mod coarse_tests {
    use super::*;

    #[test]
    fn the_coarse_clock_keeps_up_with_the_precise_one() {
        let (c0, p0) = (coarse_nanos(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(60));
        let (c1, p1) = (coarse_nanos(), std::time::Instant::now());
        let coarse = coarse_between(c0, c1);
        let precise = p1 - p0;
        assert!(coarse >= Duration::from_millis(40), "{coarse:?}");
        let apart = coarse.abs_diff(precise);
        assert!(
            apart < Duration::from_millis(25),
            "{coarse:?} against {precise:?}"
        );
        assert_eq!(coarse_between(c1, c0), Duration::ZERO);
    }
}
