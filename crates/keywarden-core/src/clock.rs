//! Time as an input. Everything time-dependent takes a [`Clock`] so tests can move it.

use crate::model::Millis;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

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
