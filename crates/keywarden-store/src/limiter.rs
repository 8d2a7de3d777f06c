//! Limit state: per-key rate limits, per-IP lockout counters and quota counters.
//!
//! [`LocalLimiter`] keeps them in this process, each bounded in memory: idle per-key and
//! per-IP state is evicted and every map has a capacity, so a flood of distinct unknown keys
//! or addresses cannot grow memory without bound. [`Limiter`] is what the verifier calls: it
//! asks Redis when `redis_url` is set, so every replica shares one budget, and decides with
//! the local state when Redis is not configured or cannot answer.
//!
//! The arithmetic is `keywarden_core::limits`; this module only keeps the state.

use crate::redis_limiter::{QuotaStep, RedisLimiter, RedisStats};
use crate::store::{Store, StoreResult};
use keywarden_core::ip::LockoutBucket;
use keywarden_core::limits::{
    check_quota, GcraState, Lockout, LockoutState, Period, QuotaOutcome, QuotaSpec, RateLimit,
    RateOutcome,
};
use keywarden_core::model::{Millis, Mode};
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Identifies one quota counter: an account's usage of a unit in one mode and period.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuotaKey {
    /// The account.
    pub account_id: String,
    /// Live and test usage are separate.
    pub mode: Mode,
    /// The unit.
    pub unit: String,
    /// Start of the period in Unix milliseconds.
    pub period_start: Millis,
}

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

/// What the limiter holds and how its link to Redis fares, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimiterStats {
    /// Per-key rate entries in this process.
    pub rate_entries: u64,
    /// Per-IP lockout entries in this process.
    pub lockout_entries: u64,
    /// Quota counters in this process.
    pub quota_entries: u64,
    /// The Redis link, when `redis_url` is set.
    pub redis: Option<RedisStats>,
}

/// The limits the verifier applies: shared through Redis when it is configured and answers,
/// decided in this process otherwise (no Redis configured, or Redis unreachable).
///
/// Both paths run the same `keywarden_core::limits` functions on the same state, so a
/// request gets the same decision and the same figures either way; only the scope of the
/// state differs (every replica, or this one).
#[derive(Debug)]
pub struct Limiter {
    local: LocalLimiter,
    redis: Option<RedisLimiter>,
    /// The Redis outage count last acted on: when a new outage starts, local quota counters
    /// (possibly left from an earlier outage) are reloaded from the store.
    seen_outages: AtomicU64,
    /// The outage count when Redis last answered: when it answers again after an outage,
    /// the units counted here meanwhile are added to the shared counters.
    handed_over: AtomicU64,
}

impl Limiter {
    /// Limits kept in this process only.
    pub fn local(local: LocalLimiter) -> Self {
        Self {
            local,
            redis: None,
            seen_outages: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
        }
    }

    /// Limits shared through Redis, with `local` as the fallback while Redis cannot answer.
    pub fn shared(local: LocalLimiter, redis: RedisLimiter) -> Self {
        Self {
            local,
            redis: Some(redis),
            seen_outages: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
        }
    }

    /// The in-process state (the whole state without Redis, the fallback with it).
    pub fn local_state(&self) -> &LocalLimiter {
        &self.local
    }

    /// The Redis part, when configured.
    pub fn redis(&self) -> Option<&RedisLimiter> {
        self.redis.as_ref()
    }

    /// The lockout policy, if any.
    pub fn lockout_policy(&self) -> Option<Lockout> {
        self.local.lockout_policy()
    }

    /// Limit calls decided in process because Redis could not answer (0 without Redis).
    pub fn redis_fallbacks(&self) -> u64 {
        self.redis.as_ref().map_or(0, |r| r.stats().fallbacks)
    }

    /// A snapshot for metrics.
    pub fn stats(&self) -> LimiterStats {
        let (rate_entries, lockout_entries, quota_entries) = self.local.entry_counts();
        LimiterStats {
            rate_entries,
            lockout_entries,
            quota_entries,
            redis: self.redis.as_ref().map(RedisLimiter::stats),
        }
    }

    /// Called whenever a decision falls back to the local state.
    fn fell_back(&self, redis: &RedisLimiter) {
        let outages = redis.outages();
        if self.seen_outages.swap(outages, Ordering::Relaxed) != outages {
            self.local.forget_quotas();
        }
    }

    /// Called whenever Redis answered. The first answer after an outage hands the quota
    /// units counted here during the outage over to the shared counters (in the background),
    /// so usage is not undercounted once limits are shared again. A shared counter that does
    /// not exist is left alone: it starts from the stored usage, which holds those units.
    fn answered(&self, redis: &RedisLimiter) {
        let outages = redis.outages();
        if self.handed_over.load(Ordering::Relaxed) == outages
            || self.handed_over.swap(outages, Ordering::Relaxed) == outages
        {
            return;
        }
        let counts = self.local.drain_quota_counts();
        if counts.is_empty() {
            return;
        }
        let redis = redis.clone();
        tokio::spawn(async move {
            for (qk, units) in counts {
                // Lost if Redis fails again right away; the store still has them.
                let _ = redis.add_if_present(&qk, units).await;
            }
        });
    }

    /// Consumes `cost` from `key_id`'s rate budget.
    pub async fn rate(
        &self,
        key_id: &str,
        limit: RateLimit,
        cost: u32,
        now_ms: Millis,
    ) -> RateOutcome {
        if let Some(r) = &self.redis {
            match r.rate(key_id, limit, cost, now_ms).await {
                Ok(out) => {
                    self.answered(r);
                    return out;
                }
                Err(_) => self.fell_back(r),
            }
        }
        self.local.rate(key_id, limit, cost, now_ms)
    }

    /// `Some(retry_after)` while `bucket` is locked out.
    pub async fn locked(&self, bucket: &LockoutBucket, now_ms: Millis) -> Option<u64> {
        let policy = self.local.lockout_policy()?;
        if let Some(r) = &self.redis {
            match r.locked(bucket, policy, now_ms).await {
                Ok(left) => {
                    self.answered(r);
                    return left;
                }
                Err(_) => self.fell_back(r),
            }
        }
        self.local.locked(bucket, now_ms)
    }

    /// Counts an authentication failure from `bucket`; `Some(retry_after)` if now locked.
    pub async fn fail(&self, bucket: &LockoutBucket, now_ms: Millis) -> Option<u64> {
        let policy = self.local.lockout_policy()?;
        if let Some(r) = &self.redis {
            match r.fail(bucket, policy, now_ms).await {
                Ok(left) => {
                    self.answered(r);
                    return left;
                }
                Err(_) => self.fell_back(r),
            }
        }
        self.local.fail(bucket, now_ms)
    }

    /// Checks several quotas and consumes all of them only if every one allows it. A counter
    /// used for the first time (in Redis, or in this process) starts from the usage stored
    /// for its period.
    pub async fn consume_quotas(
        &self,
        store: &dyn Store,
        items: &[(QuotaKey, &QuotaSpec, u64)],
        now_ms: Millis,
    ) -> StoreResult<Vec<QuotaOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(r) = &self.redis {
            let mut seeds: Vec<Option<u64>> = vec![None; items.len()];
            // A counter reported missing gets its seed on the next round; it could only be
            // missing again if it expired in between. `answered` is false when the failure
            // was already counted as a fallback.
            let mut answered = true;
            for _ in 0..3 {
                match r.consume_quotas(items, &seeds, now_ms).await {
                    Ok(QuotaStep::Used { before, .. }) if before.len() == items.len() => {
                        self.answered(r);
                        return Ok(items
                            .iter()
                            .zip(&before)
                            .map(|((_, spec, cost), used)| check_quota(spec, *used, *cost, now_ms))
                            .collect());
                    }
                    Ok(QuotaStep::Missing(missing)) => {
                        for i in missing {
                            if let Some((qk, _, _)) = items.get(i) {
                                seeds[i] = Some(stored_usage(store, qk).await?);
                            }
                        }
                    }
                    // A malformed answer: decide here, and count it like a failure.
                    Ok(QuotaStep::Used { .. }) => break,
                    Err(_) => {
                        answered = false;
                        break;
                    }
                }
            }
            if answered {
                r.count_fallback();
            }
            self.fell_back(r);
        }
        for (qk, _, _) in items {
            self.load_local(store, qk).await?;
        }
        Ok(self.local.consume_quotas(items, now_ms))
    }

    /// Adds usage reported after the fact (never refused).
    pub async fn add_usage(
        &self,
        store: &dyn Store,
        qk: &QuotaKey,
        period: Period,
        amount: u64,
        now_ms: Millis,
    ) -> StoreResult<()> {
        if let Some(r) = &self.redis {
            let mut seed = None;
            let mut answered = true;
            for _ in 0..3 {
                match r.add_usage(qk, period, amount, seed, now_ms).await {
                    Ok(Some(_)) => {
                        self.answered(r);
                        return Ok(());
                    }
                    Ok(None) => seed = Some(stored_usage(store, qk).await?),
                    Err(_) => {
                        answered = false;
                        break;
                    }
                }
            }
            if answered {
                r.count_fallback();
            }
            self.fell_back(r);
        }
        self.load_local(store, qk).await?;
        self.local.add_usage(qk, amount);
        Ok(())
    }

    /// The units used so far in the counter's period.
    pub async fn quota_used(
        &self,
        store: &dyn Store,
        qk: &QuotaKey,
        period: Period,
        now_ms: Millis,
    ) -> StoreResult<u64> {
        if let Some(r) = &self.redis {
            let mut seed = None;
            let mut answered = true;
            for _ in 0..3 {
                match r.add_usage(qk, period, 0, seed, now_ms).await {
                    Ok(Some(used)) => {
                        self.answered(r);
                        return Ok(used);
                    }
                    Ok(None) => seed = Some(stored_usage(store, qk).await?),
                    Err(_) => {
                        answered = false;
                        break;
                    }
                }
            }
            if answered {
                r.count_fallback();
            }
            self.fell_back(r);
        }
        self.load_local(store, qk).await?;
        Ok(self.local.quota_used(qk).unwrap_or(0))
    }

    /// Takes back the units a request consumed when its usage could not be recorded (a
    /// strict charge that failed), so the request is neither counted nor answered: in Redis
    /// when it answers, in this process otherwise.
    pub async fn give_back(&self, items: &[(QuotaKey, u64)]) {
        for (qk, amount) in items {
            if let Some(r) = &self.redis {
                if r.take_back(qk, *amount).await.is_ok() {
                    continue;
                }
            }
            self.local.give_back(qk, *amount);
        }
    }

    /// Loads a local counter from the store the first time this process uses it.
    pub async fn load_local(&self, store: &dyn Store, qk: &QuotaKey) -> StoreResult<()> {
        if !self.local.quota_loaded(qk) {
            let used = stored_usage(store, qk).await?;
            self.local.load_quota(qk.clone(), used);
        }
        Ok(())
    }

    /// Forgets the counters of an account (after erasure): the local ones at once, the
    /// shared ones in the background (they would expire with their period anyway).
    pub fn forget_account(&self, account_id: &str) {
        self.local.forget_account(account_id);
        if let Some(r) = &self.redis {
            let (r, id) = (r.clone(), account_id.to_string());
            tokio::spawn(async move {
                let _ = r.forget_account(&id).await;
            });
        }
    }
}

impl From<LocalLimiter> for Limiter {
    fn from(local: LocalLimiter) -> Self {
        Limiter::local(local)
    }
}

/// The usage stored for a counter's period.
async fn stored_usage(store: &dyn Store, qk: &QuotaKey) -> StoreResult<u64> {
    store
        .get_usage(&qk.account_id, qk.mode, &qk.unit, qk.period_start)
        .await
}
