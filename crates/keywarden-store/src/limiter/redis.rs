//! Limit state shared by every replica through Redis (`docs/operations.md#storage` `redis_url`): per-key rate
//! limits, the per-IP lockout and quota counters.
//!
//! Each decision is one Lua script, so it runs atomically on the server and two replicas
//! can never both spend the last unit. The scripts implement the formulas of
//! `keywarden_core::limits` on the same integer state (a TAT in microseconds; failures,
//! window start and lock end in milliseconds; a counter per quota period). The current
//! time is an argument taken from the caller's [`keywarden_core::Clock`], never Redis's own
//! clock, so a test clock drives Redis exactly as it drives the in-process limiter.
//!
//! Every script also returns the state it found; the caller runs the core function on that
//! state to build the figures a client sees, so both limiters answer with the same numbers
//! by construction and the script only has to agree on the decision (which the tests check
//! against the core function on many sequences).
//!
//! Keys are namespaced under a configurable prefix and carry TTLs: a rate key lives until its
//! bucket is full again, a lockout key until its window and lock are over, a quota counter
//! until its period has ended, so idle state disappears by itself.
//!
//! Failure handling: every call has a short timeout. When Redis cannot answer, the call
//! returns [`Unavailable`] at once and the caller decides in process instead; the first such
//! failure of an outage is logged as a warning, and every fallback is counted
//! ([`RedisStats`]). A dropped connection is reopened in the background with a capped
//! backoff, so nothing waits for a Redis that is down, and limits are shared again as soon
//! as it is back.

use crate::limiter::QuotaKey;
use keywarden_core::ip::LockoutBucket;
use keywarden_core::limits::{
    GcraState, Lockout, LockoutState, Period, QuotaSpec, RateLimit, RateOutcome,
};
use keywarden_core::model::Millis;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Script};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// GCRA over one key holding the TAT in microseconds; see `keywarden_core::limits`.
///
/// KEYS[1] = the TAT. ARGV = now (µs), T (µs), B (µs), cost, limit N.
/// Returns `{allowed, tat_found}`; the TAT is returned as a string so no digit is lost.
const RATE_LUA: &str = r"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local b = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local raw = redis.call('GET', KEYS[1]) or '0'
if limit == 0 or cost > limit then
  return {0, raw}
end
local tat = tonumber(raw)
if tat < now then
  tat = now
elseif tat > now + b then
  tat = now + b
end
local new = tat + cost * t
if new - now <= b then
  local keep = math.floor((new - now) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', string.format('%.0f', keep))
  return {1, raw}
end
return {0, raw}
";

/// `Lockout::record_failure` over a hash `{f = failures, s = window start, u = lock end}`.
///
/// KEYS[1] = the hash. ARGV = now (ms), max_failures, window (ms), lock (ms).
/// Returns the state found, `{f, s, u}`.
const FAIL_LUA: &str = r"
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local lock = tonumber(ARGV[4])
local st = redis.call('HMGET', KEYS[1], 'f', 's', 'u')
local f = tonumber(st[1] or '0')
local s = tonumber(st[2] or '0')
local u = tonumber(st[3] or '0')
local found = {string.format('%.0f', f), string.format('%.0f', s), string.format('%.0f', u)}
if u - now > 0 or max == 0 then
  return found
end
local nf, ns, nu = f + 1, s, u
if f == 0 or now - s >= window then
  nf, ns = 1, now
end
if nf >= max then
  nf, nu = 0, now + lock
end
redis.call('HSET', KEYS[1], 'f', string.format('%.0f', nf), 's', string.format('%.0f', ns),
  'u', string.format('%.0f', nu))
local keep = math.max(nu - now, ns + window - now, 0) + 1000
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', keep))
return found
";

/// All-or-nothing consumption of several quota counters.
///
/// KEYS = the counters. ARGV = per key, four values: cost, limit, TTL (ms) for a new
/// counter, and the stored usage to start a missing counter from (`''` when unknown).
/// Returns `{'-1', i…}` with the 1-based indices of missing counters that had no seed
/// (nothing is consumed then), else `{'1' | '0', used_before…}`: consumed or refused.
const QUOTA_LUA: &str = r"
local n = #KEYS
local used = {}
local missing = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if not v then
    local seed = ARGV[4 * i]
    if seed ~= '' then
      redis.call('SET', KEYS[i], seed, 'PX', ARGV[4 * i - 1])
      v = seed
    else
      missing[#missing + 1] = tostring(i)
    end
  end
  used[i] = v
end
if #missing > 0 then
  table.insert(missing, 1, '-1')
  return missing
end
local ok = '1'
for i = 1, n do
  if tonumber(used[i]) + tonumber(ARGV[4 * i - 3]) > tonumber(ARGV[4 * i - 2]) then
    ok = '0'
  end
end
if ok == '1' then
  for i = 1, n do
    if ARGV[4 * i - 3] ~= '0' then
      redis.call('INCRBY', KEYS[i], ARGV[4 * i - 3])
    end
  end
end
table.insert(used, 1, ok)
return used
";

/// Adds usage reported after the fact (never refused), or reads a counter with amount 0.
///
/// KEYS[1] = the counter. ARGV = amount, TTL (ms) for a new counter, seed (`''` = unknown).
/// Returns `{'-1'}` when the counter is missing and no seed was given, else `{'1', value}`.
const ADD_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  if ARGV[3] == '' then
    return {'-1'}
  end
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
  v = ARGV[3]
end
if ARGV[1] ~= '0' then
  v = redis.call('INCRBY', KEYS[1], ARGV[1])
end
return {'1', tostring(v)}
";

static RATE: LazyLock<Script> = LazyLock::new(|| Script::new(RATE_LUA));
static FAIL: LazyLock<Script> = LazyLock::new(|| Script::new(FAIL_LUA));
static QUOTA: LazyLock<Script> = LazyLock::new(|| Script::new(QUOTA_LUA));
static ADD: LazyLock<Script> = LazyLock::new(|| Script::new(ADD_LUA));

/// How long a quota counter outlives the end of its period, for replicas whose clocks
/// differ a little.
const QUOTA_KEEP_AFTER_PERIOD_MS: i64 = 3_600_000;

/// How to reach Redis and how long to wait for it.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…`.
    pub url: String,
    /// The start of every key name, so several deployments (or tests) can share a server.
    pub prefix: String,
    /// The longest a single limit call may wait for Redis before deciding in process.
    pub timeout: Duration,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// The first pause between reconnection attempts; it doubles after each failure.
    pub reconnect_min: Duration,
    /// The longest pause between reconnection attempts.
    pub reconnect_max: Duration,
}

impl RedisConfig {
    /// The defaults: a 250 ms call timeout, a 1 s connect timeout and reconnection attempts
    /// from 100 ms apart up to 2 s apart.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

/// Counters of the link to Redis, for health checks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedisStats {
    /// Whether the last call reached Redis.
    pub healthy: bool,
    /// Limit calls decided in process because Redis could not answer.
    pub fallbacks: u64,
    /// Outages seen: each starts at the first failed call after a successful one (or at a
    /// failed first connection).
    pub outages: u64,
    /// Connections opened, the first included.
    pub connects: u64,
}

/// Redis could not answer this call; the caller decides in process instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable;

/// What a quota consumption found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaStep {
    /// These counters (indices into the items) do not exist yet and need their stored usage
    /// as a starting point; nothing was consumed.
    Missing(Vec<usize>),
    /// The counters' values before this request, and whether its costs were consumed.
    Used {
        /// One value per item.
        before: Vec<u64>,
        /// True when every quota allowed the cost and all were added.
        consumed: bool,
    },
}

/// The connection, replaced when it breaks.
#[derive(Default)]
struct Slot {
    /// The current connection and its generation, so a failure on an old connection does
    /// not drop a newer one.
    conn: Option<(u64, MultiplexedConnection)>,
    generation: u64,
    /// A connection attempt is under way.
    connecting: bool,
    /// No attempt before this instant (backoff).
    next_attempt: Option<Instant>,
    /// The pause after the next failed attempt.
    backoff: Duration,
}

struct Inner {
    client: redis::Client,
    cfg: RedisConfig,
    slot: Mutex<Slot>,
    healthy: AtomicBool,
    fallbacks: AtomicU64,
    outages: AtomicU64,
    connects: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.cfg.prefix)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Limit state in Redis, shared by every replica that uses the same server and prefix.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

impl RedisLimiter {
    /// Opens the client and tries a first connection (bounded by `connect_timeout`). Only an
    /// invalid URL is an error: when Redis is unreachable the limiter starts in fallback and
    /// keeps trying in the background.
    pub async fn connect(cfg: RedisConfig) -> RedisResult<Self> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let backoff = cfg.reconnect_min;
        let inner = Arc::new(Inner {
            client,
            cfg,
            slot: Mutex::new(Slot {
                connecting: true,
                backoff,
                ..Slot::default()
            }),
            healthy: AtomicBool::new(true),
            fallbacks: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        });
        if let Err(e) = inner.establish().await {
            inner.lost(&e);
        }
        Ok(Self { inner })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.cfg.prefix
    }

    /// The counters of the link.
    pub fn stats(&self) -> RedisStats {
        let i = &self.inner;
        RedisStats {
            healthy: i.healthy.load(Ordering::Relaxed),
            fallbacks: i.fallbacks.load(Ordering::Relaxed),
            outages: i.outages.load(Ordering::Relaxed),
            connects: i.connects.load(Ordering::Relaxed),
        }
    }

    /// Outages seen so far (a cheap read for callers that act once per outage).
    pub fn outages(&self) -> u64 {
        self.inner.outages.load(Ordering::Relaxed)
    }

    /// Counts a decision made in process because Redis could not answer, when the caller
    /// gave up on Redis for a reason this module did not see.
    pub fn count_fallback(&self) {
        self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.inner.cfg.prefix)
    }

    /// The counter key of a quota: account, mode, period start, then the unit (free text).
    fn quota_key(&self, qk: &QuotaKey) -> String {
        format!(
            "{}:q:{}:{}:{}:{}",
            self.inner.cfg.prefix,
            qk.account_id,
            qk.mode.as_str(),
            qk.period_start,
            qk.unit
        )
    }

    /// Runs one call on the current connection within the timeout. Any failure counts as a
    /// fallback and drops the connection, so the next call reopens it.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, Unavailable>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &self.inner;
        let Some((generation, conn)) = inner.connection() else {
            inner.fallbacks.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable);
        };
        match tokio::time::timeout(inner.cfg.timeout, call(conn)).await {
            Ok(Ok(v)) => {
                inner.reached();
                Ok(v)
            }
            Ok(Err(e)) => {
                // Whatever went wrong, the next call starts on a fresh connection: a broken
                // one never recovers by itself, and reopening a good one costs little.
                inner.discard(generation);
                inner.fallbacks.fetch_add(1, Ordering::Relaxed);
                inner.lost(&e);
                Err(Unavailable)
            }
            Err(_) => {
                inner.discard(generation);
                inner.fallbacks.fetch_add(1, Ordering::Relaxed);
                inner.lost(&format_args!(
                    "no answer within {} ms",
                    inner.cfg.timeout.as_millis()
                ));
                Err(Unavailable)
            }
        }
    }

    /// Consumes `cost` from `key_id`'s rate budget, exactly as [`RateLimit::check`].
    pub async fn rate(
        &self,
        key_id: &str,
        limit: RateLimit,
        cost: u32,
        now_ms: Millis,
    ) -> Result<RateOutcome, Unavailable> {
        if limit.limit == 0 {
            // Closed whatever the state: no need to ask.
            return Ok(limit.check(&mut GcraState::default(), now_ms, cost));
        }
        let key = self.key("rl", key_id);
        let now_us = (i128::from(now_ms) * 1000).to_string();
        let (allowed, found): (i64, String) = self
            .run(|mut c| async move {
                RATE.key(key)
                    .arg(now_us)
                    .arg(limit.interval_us())
                    .arg(limit.burst_us())
                    .arg(cost)
                    .arg(limit.limit)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let mut state = GcraState {
            tat_us: found.parse().unwrap_or(0),
        };
        let out = limit.check(&mut state, now_ms, cost);
        debug_assert_eq!(
            out.allowed,
            allowed == 1,
            "the script and the core disagree"
        );
        Ok(out)
    }

    /// `Some(retry_after)` while `bucket` is locked, exactly as [`Lockout::is_locked`].
    pub async fn locked(
        &self,
        bucket: &LockoutBucket,
        policy: Lockout,
        now_ms: Millis,
    ) -> Result<Option<u64>, Unavailable> {
        let key = self.key("lo", &bucket.to_string());
        let until: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("u")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let state = LockoutState {
            locked_until_ms: until.and_then(|u| u.parse().ok()).unwrap_or(0),
            ..LockoutState::default()
        };
        Ok(policy.is_locked(&state, now_ms))
    }

    /// Counts an authentication failure from `bucket`, exactly as
    /// [`Lockout::record_failure`]; `Some(retry_after)` when the bucket is locked after it.
    pub async fn fail(
        &self,
        bucket: &LockoutBucket,
        policy: Lockout,
        now_ms: Millis,
    ) -> Result<Option<u64>, Unavailable> {
        let key = self.key("lo", &bucket.to_string());
        let found: Vec<String> = self
            .run(|mut c| async move {
                FAIL.key(key)
                    .arg(now_ms)
                    .arg(policy.max_failures)
                    .arg(policy.window_ms)
                    .arg(policy.lock_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let num = |i: usize| {
            found
                .get(i)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let mut state = LockoutState {
            failures: u32::try_from(num(0)).unwrap_or(u32::MAX),
            window_start_ms: num(1),
            locked_until_ms: num(2),
        };
        Ok(policy.record_failure(&mut state, now_ms))
    }

    /// Checks several quotas and consumes all of them only if every one allows the cost.
    /// `seeds[i]`, when given, starts a missing counter `i` from the stored usage.
    pub async fn consume_quotas(
        &self,
        items: &[(QuotaKey, &QuotaSpec, u64)],
        seeds: &[Option<u64>],
        now_ms: Millis,
    ) -> Result<QuotaStep, Unavailable> {
        let mut inv = QUOTA.prepare_invoke();
        for (i, (qk, spec, cost)) in items.iter().enumerate() {
            inv.key(self.quota_key(qk))
                .arg(*cost)
                .arg(spec.limit)
                .arg(quota_ttl_ms(spec.period, now_ms))
                .arg(
                    seeds
                        .get(i)
                        .copied()
                        .flatten()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                );
        }
        let reply: Vec<String> = self
            .run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let (head, rest) = reply.split_first().ok_or(Unavailable)?;
        let nums = || rest.iter().map(|v| v.parse::<u64>().unwrap_or(0));
        Ok(match head.as_str() {
            "-1" => QuotaStep::Missing(
                nums()
                    .filter_map(|i| usize::try_from(i).ok()?.checked_sub(1))
                    .collect(),
            ),
            ok => QuotaStep::Used {
                before: nums().collect(),
                consumed: ok == "1",
            },
        })
    }

    /// Adds `amount` to a quota counter (never refused) and returns the new value, or `None`
    /// when the counter is missing and no `seed` was given. An amount of 0 reads the counter.
    pub async fn add_usage(
        &self,
        qk: &QuotaKey,
        period: Period,
        amount: u64,
        seed: Option<u64>,
        now_ms: Millis,
    ) -> Result<Option<u64>, Unavailable> {
        let key = self.quota_key(qk);
        let reply: Vec<String> = self
            .run(|mut c| async move {
                ADD.key(key)
                    .arg(amount)
                    .arg(quota_ttl_ms(period, now_ms))
                    .arg(seed.map(|s| s.to_string()).unwrap_or_default())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match reply.as_slice() {
            [ok, value] if ok == "1" => Ok(Some(value.parse().unwrap_or(0))),
            _ => Ok(None),
        }
    }

    /// Adds `amount` to a quota counter only if it exists; `false` when it does not.
    pub async fn add_if_present(&self, qk: &QuotaKey, amount: u64) -> Result<bool, Unavailable> {
        let key = self.quota_key(qk);
        let reply: Vec<String> = self
            .run(|mut c| async move {
                ADD.key(key)
                    .arg(amount)
                    .arg(1_000)
                    .arg("")
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply.first().is_some_and(|ok| ok == "1"))
    }

    /// Takes `amount` back from a quota counter if it exists (a consumption that could not
    /// be recorded).
    pub async fn take_back(&self, qk: &QuotaKey, amount: u64) -> Result<(), Unavailable> {
        let key = self.quota_key(qk);
        let _: Vec<String> = self
            .run(|mut c| async move {
                ADD.key(key)
                    .arg(format!("-{amount}"))
                    .arg(1_000)
                    .arg("")
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Deletes the quota counters of an account (after its erasure).
    pub async fn forget_account(&self, account_id: &str) -> Result<u64, Unavailable> {
        let pattern = format!(
            "{}:q:{}:*",
            glob_escape(&self.inner.cfg.prefix),
            glob_escape(account_id)
        );
        self.delete_matching(pattern).await
    }

    /// Deletes every key under this limiter's prefix and returns how many there were: resets
    /// all shared limits at once (and lets tests clean up after themselves).
    pub async fn clear(&self) -> Result<u64, Unavailable> {
        let pattern = format!("{}:*", glob_escape(&self.inner.cfg.prefix));
        self.delete_matching(pattern).await
    }

    /// Deletes every key matching a `SCAN` pattern, a batch at a time.
    async fn delete_matching(&self, pattern: String) -> Result<u64, Unavailable> {
        let mut cursor: u64 = 0;
        let mut deleted: u64 = 0;
        loop {
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .run(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let n: u64 =
                    self.run(|mut c| async move {
                        redis::cmd("DEL").arg(keys).query_async(&mut c).await
                    })
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl Inner {
    /// The current connection, or `None` (and a reconnection started when one is due).
    fn connection(self: &Arc<Self>) -> Option<(u64, MultiplexedConnection)> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, c)) = &slot.conn {
            return Some((*g, c.clone()));
        }
        let due = slot.next_attempt.is_none_or(|t| Instant::now() >= t);
        if !slot.connecting && due {
            slot.connecting = true;
            let me = self.clone();
            tokio::spawn(async move {
                // A failure is already counted and backed off inside.
                let _ = me.establish().await;
            });
        }
        None
    }

    /// One connection attempt; installs the connection or schedules the next attempt.
    async fn establish(&self) -> Result<(), String> {
        let conn_cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.cfg.connect_timeout)
            .set_response_timeout(self.cfg.timeout);
        let attempt = tokio::time::timeout(
            self.cfg.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&conn_cfg),
        )
        .await;
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.connecting = false;
        match attempt {
            Ok(Ok(conn)) => {
                slot.generation += 1;
                slot.conn = Some((slot.generation, conn));
                slot.next_attempt = None;
                slot.backoff = self.cfg.reconnect_min;
                self.connects.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            failed => {
                slot.next_attempt = Some(Instant::now() + slot.backoff);
                slot.backoff = (slot.backoff * 2).min(self.cfg.reconnect_max);
                Err(match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!(
                        "no connection within {} ms",
                        self.cfg.connect_timeout.as_millis()
                    ),
                })
            }
        }
    }

    /// Drops the connection of `generation` if it is still the current one.
    fn discard(&self, generation: u64) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.conn.as_ref().is_some_and(|(g, _)| *g == generation) {
            slot.conn = None;
        }
    }

    /// A call reached Redis: ends an outage.
    fn reached(&self) {
        if !self.healthy.load(Ordering::Relaxed) && !self.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!(
                prefix = %self.cfg.prefix,
                "Redis is reachable again: rate limits, lockouts and quotas are shared again"
            );
        }
    }

    /// A call failed: starts an outage unless one is under way (one warning per outage).
    fn lost(&self, error: &dyn std::fmt::Display) {
        if self.healthy.load(Ordering::Relaxed) && self.healthy.swap(false, Ordering::SeqCst) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                prefix = %self.cfg.prefix,
                error = %error,
                "Redis is unreachable: rate limits, lockouts and quotas are enforced by each \
                 replica on its own until it is back"
            );
        }
    }
}

/// How long a new quota counter is kept: until its period ends, plus a margin.
fn quota_ttl_ms(period: Period, now_ms: Millis) -> i64 {
    let (_, end) = period.bounds(now_ms);
    end.saturating_sub(now_ms)
        .saturating_add(QUOTA_KEEP_AFTER_PERIOD_MS)
        .max(1_000)
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("kw:a*b?[c]\\"), "kw:a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn quota_counters_outlive_their_period_by_the_margin() {
        // 2026-03-31T23:59:59Z: one second left in the month.
        let now = 1_775_001_599_000;
        assert_eq!(
            quota_ttl_ms(Period::Month, now),
            1_000 + QUOTA_KEEP_AFTER_PERIOD_MS
        );
        assert_eq!(
            quota_ttl_ms(Period::Day, now),
            1_000 + QUOTA_KEEP_AFTER_PERIOD_MS
        );
    }

    #[tokio::test]
    async fn an_invalid_url_is_an_error_and_a_dead_server_is_not() {
        assert!(RedisLimiter::connect(RedisConfig::new("nonsense", "kw"))
            .await
            .is_err());
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = RedisLimiter::connect(RedisConfig::new(format!("redis://127.0.0.1:{port}"), "kw"))
            .await
            .unwrap();
        let s = r.stats();
        assert_eq!((s.healthy, s.outages, s.connects), (false, 1, 0));
        let out = r.rate("key_x", RateLimit::per_minute(5), 1, 0).await;
        assert_eq!(out, Err(Unavailable));
        assert_eq!(r.stats().fallbacks, 1);
        assert_eq!(r.stats().outages, 1, "one outage, however many calls fail");
    }
}
