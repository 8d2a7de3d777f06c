//! Limit state kept in this process, each map bounded in memory: idle per-key and per-IP
//! state is evicted and every map has a capacity, so a flood of distinct unknown keys or
//! addresses cannot grow memory without bound.

use super::QuotaKey;
use keywarden_core::ip::LockoutBucket;
use keywarden_core::limits::{
    check_quota, GcraState, Lockout, LockoutState, QuotaOutcome, QuotaSpec, RateLimit, RateOutcome,
};
use keywarden_core::model::Millis;
use moka::sync::Cache;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limit state kept in this process.
#[derive(Clone, Debug)]
pub struct LocalLimiter {
    rates: Cache<String, Arc<Mutex<GcraState>>>,
    lockouts: Cache<LockoutBucket, Arc<Mutex<LockoutState>>>,
    quotas: Cache<QuotaKey, Arc<Mutex<QuotaCell>>>,
    lockout: Option<Lockout>,
}

/// A quota counter kept in process.
#[derive(Clone, Copy, Debug, Default)]
struct QuotaCell {
    /// Units used in the period.
    used: u64,
    /// What the counter started from (the stored usage when it was loaded), so what was
    /// counted here since can be handed over to Redis when it comes back.
    base: u64,
}

/// How much a [`LocalLimiter`] keeps and for how long an idle entry is kept.
///
/// An entry evicted early only forgets spending (the client gets a fuller bucket, a lockout
/// counts from zero, a quota counter is reloaded from the store), so the capacities bound
/// memory without ever refusing a request that would otherwise pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalBounds {
    /// Most per-key rate entries.
    pub max_rate_entries: u64,
    /// Most per-IP (per /64 for IPv6) lockout entries.
    pub max_lockout_entries: u64,
    /// Most quota counters.
    pub max_quota_entries: u64,
    /// A rate entry unused this long is dropped. Its bucket is full again after one window,
    /// so the longest window a key may have (a day) loses nothing.
    pub rate_idle: Duration,
    /// A quota counter unused this long is dropped (and reloaded from the store on use).
    pub quota_idle: Duration,
}

impl Default for LocalBounds {
    fn default() -> Self {
        Self {
            max_rate_entries: 1_000_000,
            max_lockout_entries: 1_000_000,
            max_quota_entries: 1_000_000,
            rate_idle: Duration::from_secs(86_400),
            quota_idle: Duration::from_secs(3_600),
        }
    }
}

impl LocalLimiter {
    /// A limiter with the given lockout policy (`None` = no lockout) and default bounds.
    pub fn new(lockout: Option<Lockout>) -> Self {
        Self::with_bounds(lockout, LocalBounds::default())
    }

    /// A limiter with the given lockout policy and bounds.
    pub fn with_bounds(lockout: Option<Lockout>, bounds: LocalBounds) -> Self {
        // A lockout entry idle for its window and its lock holds nothing that matters.
        let lock_idle = lockout
            .map(|l| Duration::from_millis(l.window_ms.max(l.lock_ms).max(1)))
            .unwrap_or(Duration::from_secs(300));
        Self {
            rates: Cache::builder()
                .max_capacity(bounds.max_rate_entries)
                .time_to_idle(bounds.rate_idle)
                .build(),
            lockouts: Cache::builder()
                .max_capacity(bounds.max_lockout_entries)
                .time_to_idle(lock_idle)
                .build(),
            quotas: Cache::builder()
                .max_capacity(bounds.max_quota_entries)
                .time_to_idle(bounds.quota_idle)
                .support_invalidation_closures()
                .build(),
            lockout,
        }
    }

    /// The lockout policy, if any.
    pub fn lockout_policy(&self) -> Option<Lockout> {
        self.lockout
    }

    /// Consumes `cost` from `key`'s rate budget.
    pub fn rate(&self, key: &str, limit: RateLimit, cost: u32, now_ms: Millis) -> RateOutcome {
        let cell = self
            .rates
            .get_with_by_ref(key, || Arc::new(Mutex::new(GcraState::default())));
        let mut state = cell.lock().unwrap_or_else(|p| p.into_inner());
        limit.check(&mut state, now_ms, cost)
    }

    /// `Some(retry_after)` while `bucket` is locked out.
    pub fn locked(&self, bucket: &LockoutBucket, now_ms: Millis) -> Option<u64> {
        let policy = self.lockout?;
        let cell = self.lockouts.get(bucket)?;
        let state = cell.lock().unwrap_or_else(|p| p.into_inner());
        policy.is_locked(&state, now_ms)
    }

    /// Counts an authentication failure from `bucket`; `Some(retry_after)` if now locked.
    pub fn fail(&self, bucket: &LockoutBucket, now_ms: Millis) -> Option<u64> {
        let policy = self.lockout?;
        let cell = self
            .lockouts
            .get_with(*bucket, || Arc::new(Mutex::new(LockoutState::default())));
        let mut state = cell.lock().unwrap_or_else(|p| p.into_inner());
        policy.record_failure(&mut state, now_ms)
    }

    /// Whether this counter is already loaded.
    pub fn quota_loaded(&self, key: &QuotaKey) -> bool {
        self.quotas.contains_key(key)
    }

    /// Loads a counter's stored baseline (from the database) unless it is loaded already.
    pub fn load_quota(&self, key: QuotaKey, used: u64) {
        self.quotas
            .get_with(key, || Arc::new(Mutex::new(QuotaCell { used, base: used })));
    }

    /// Checks several quotas and consumes all of them only if every one allows it.
    pub fn consume_quotas(
        &self,
        items: &[(QuotaKey, &QuotaSpec, u64)],
        now_ms: Millis,
    ) -> Vec<QuotaOutcome> {
        let cells: Vec<Arc<Mutex<QuotaCell>>> = items
            .iter()
            .map(|(k, _, _)| self.quotas.get_with_by_ref(k, Arc::default))
            .collect();
        // Every distinct counter is locked once, in address order (so requests over
        // overlapping sets cannot deadlock), and held from the check to the addition (so no
        // other request can spend the same units in between).
        let addr = |c: &Arc<Mutex<QuotaCell>>| Arc::as_ptr(c) as usize;
        let mut distinct: Vec<&Arc<Mutex<QuotaCell>>> = cells.iter().collect();
        distinct.sort_by_key(|c| addr(c));
        distinct.dedup_by_key(|c| addr(c));
        let mut guards: Vec<(usize, std::sync::MutexGuard<'_, QuotaCell>)> = distinct
            .into_iter()
            .map(|c| (addr(c), c.lock().unwrap_or_else(|p| p.into_inner())))
            .collect();
        let slot = |c: &Arc<Mutex<QuotaCell>>, guards: &[(usize, _)]| {
            guards.iter().position(|(a, _)| *a == addr(c)).unwrap_or(0)
        };
        let outcomes: Vec<QuotaOutcome> = items
            .iter()
            .zip(&cells)
            .map(|((_, spec, cost), cell)| {
                let used = guards[slot(cell, &guards)].1.used;
                check_quota(spec, used, *cost, now_ms)
            })
            .collect();
        if outcomes.iter().all(|o| o.allowed) {
            for ((_, _, cost), cell) in items.iter().zip(&cells) {
                let i = slot(cell, &guards);
                let g = &mut guards[i].1;
                g.used = g.used.saturating_add(*cost);
            }
        }
        outcomes
    }

    /// Adds usage reported after the fact (never refused).
    pub fn add_usage(&self, key: &QuotaKey, amount: u64) {
        if let Some(cell) = self.quotas.get(key) {
            let mut c = cell.lock().unwrap_or_else(|p| p.into_inner());
            c.used = c.used.saturating_add(amount);
        }
    }

    /// Takes back units consumed by a request that could not be counted after all (never
    /// below zero).
    pub fn give_back(&self, key: &QuotaKey, amount: u64) {
        if let Some(cell) = self.quotas.get(key) {
            let mut c = cell.lock().unwrap_or_else(|p| p.into_inner());
            c.used = c.used.saturating_sub(amount);
        }
    }

    /// The counter's current value, if loaded.
    pub fn quota_used(&self, key: &QuotaKey) -> Option<u64> {
        self.quotas
            .get(key)
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).used)
    }

    /// Takes every quota counter out: for each, the units counted here since it was loaded
    /// (only those above zero).
    pub fn drain_quota_counts(&self) -> Vec<(QuotaKey, u64)> {
        let mut out = Vec::new();
        for (key, cell) in self.quotas.iter() {
            let c = *cell.lock().unwrap_or_else(|p| p.into_inner());
            if c.used > c.base {
                out.push(((*key).clone(), c.used - c.base));
            }
        }
        self.quotas.invalidate_all();
        out
    }

    /// Forgets every quota counter, so each is reloaded from the store on its next use.
    pub fn forget_quotas(&self) {
        self.quotas.invalidate_all();
    }

    /// Forgets every counter of an account (after erasure).
    pub fn forget_account(&self, account_id: &str) {
        let id = account_id.to_string();
        let _ = self
            .quotas
            .invalidate_entries_if(move |k, _| k.account_id == id);
    }

    /// Entries held, for the memory-bound tests and metrics: (rates, lockouts, quotas).
    pub fn entry_counts(&self) -> (u64, u64, u64) {
        self.rates.run_pending_tasks();
        self.lockouts.run_pending_tasks();
        self.quotas.run_pending_tasks();
        (
            self.rates.entry_count(),
            self.lockouts.entry_count(),
            self.quotas.entry_count(),
        )
    }
}
