//! Limit state: per-key rate limits, per-IP lockout counters and quota counters.
//!
//! [`Limiter`], here, is the front the verifier calls: it asks the Redis back end
//! (`redis.rs`) when `redis_url` is set, so every replica shares one budget, and decides
//! with the local back end ([`LocalLimiter`], `local.rs`) when Redis is not configured or
//! cannot answer.
//!
//! The arithmetic is `keywarden_core::limits`; this module only keeps the state.

mod local;
pub mod redis;

use crate::store::{Store, StoreResult};
use keywarden_core::ip::LockoutBucket;
use keywarden_core::limits::{
    check_quota, Lockout, Period, QuotaOutcome, QuotaSpec, RateLimit, RateOutcome,
};
use keywarden_core::model::{Millis, Mode};
pub use local::{LocalBounds, LocalLimiter};
use redis::{QuotaStep, RedisLimiter, RedisStats};
use std::sync::atomic::{AtomicU64, Ordering};

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
