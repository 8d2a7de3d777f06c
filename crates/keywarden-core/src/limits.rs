//! Rate limits, the per-IP lockout and quota periods (plans in `docs/concepts.md#objects`,
//! the lockout and limits in `docs/decision.md`, headers in `docs/errors.md`), as pure arithmetic over an injected time.
//!
//! Every function takes the current time as `now_ms` (Unix milliseconds, UTC, as given by a
//! [`crate::clock::Clock`]) and the caller keeps the state, so the same math runs in
//! process, inside a Redis Lua script, and in tests that move time by hand.
//!
//! # Rate limit: GCRA over integer microseconds
//!
//! A [`RateLimit`] of `N` requests per window `W` is a generic cell rate algorithm
//! (equivalently, a token bucket holding `N` tokens that refills continuously at `N / W`).
//! All times are integer microseconds, which stay exact in a Lua double until the year 2255:
//!
//! ```text
//! W   = max(1, window_ms * 1000)           window, µs
//! T   = max(1, floor(W / N))                emission interval: cost of one request, µs
//! B   = N * T                               burst allowance (≤ W), µs
//! now = now_ms * 1000
//! tat = clamp(state.tat_us, now, now + B)   when the bucket would be full again
//! new = tat + cost * T
//! allowed      ⇔  new - now ≤ B             (then state.tat_us = new)
//! remaining    = floor((B - (tat' - now)) / T)       tat' = new if allowed, else tat
//! reset_secs   = ceil((tat' - now) / 1e6)            time until the bucket is full again
//! retry_after  = ceil((new - B - now) / 1e6), ≥ 1    only when refused
//! cost > N     ⇒  refused, state kept, retry_after = ceil(W / 1e6)
//! N = 0        ⇒  every request refused, retry_after = ceil(W / 1e6)
//! ```
//!
//! Rounding `T` down and taking `B = N·T` rather than `W` keeps the two promises exact at
//! any rate: a burst of exactly `N` is admitted and request `N + 1` is refused, and a client
//! sending one request every `W / N` (or slower) is never refused, because it spends `T` per
//! request and the bucket refills at least `T` in between. The price is that the long-run
//! rate may exceed `N / W` by less than one part in `T` (under 0.1 % whenever `T ≥ 1 ms`).
//!
//! Equivalently, a request is admitted iff for every earlier admitted request at time `a`
//! (and for `a = now`), `cost + (cost admitted in [a, now]) ≤ N + (now − a) / T`. So no
//! instant admits more than `N`, while a window of length `W` that opens with a full burst
//! and continues at the refill rate admits about `2N − 1`: the burst is the tolerance that
//! makes `N` at once possible. Over `k` windows at most `(k + 1)·N` are admitted.
//!
//! # Lockout: a fixed window opened by the first failure
//!
//! See [`Lockout`]: `max_failures` failures within `window_ms` of the first one lock the
//! client for `lock_ms` from the locking failure; then counting starts over.
//!
//! # Quotas: UTC calendar periods
//!
//! See [`Period`] and [`check_quota`]: a period is `[start of the UTC day or month, start of
//! the next)`, and a request is admitted iff `used + cost ≤ limit`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Microseconds in one millisecond.
const US_PER_MS: i128 = 1_000;
/// Microseconds in one second.
const US_PER_SEC: i128 = 1_000_000;
/// Milliseconds in one second.
const MS_PER_SEC: i128 = 1_000;
/// Milliseconds in one UTC day (leap seconds do not exist in Unix time).
const MS_PER_DAY: i64 = 86_400_000;

/// The policy name used in both rate-limit header fields; Keywarden advertises one policy.
const POLICY_NAME: &str = "default";

/// Rounds a non-negative duration in microseconds up to whole seconds, because a client told
/// to wait that long must then find the request admitted. Negative durations count as zero.
fn ceil_secs_us(us: i128) -> u64 {
    if us <= 0 {
        return 0;
    }
    u64::try_from((us + US_PER_SEC - 1) / US_PER_SEC).unwrap_or(u64::MAX)
}

/// Rounds a non-negative duration in milliseconds up to whole seconds, for the same reason as
/// [`ceil_secs_us`].
fn ceil_secs_ms(ms: i128) -> u64 {
    if ms <= 0 {
        return 0;
    }
    u64::try_from((ms + MS_PER_SEC - 1) / MS_PER_SEC).unwrap_or(u64::MAX)
}

/// Stores an internal microsecond figure into the `i64` state, saturating instead of
/// wrapping, because a clamped state is still a valid (if generous) state.
fn to_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// N requests per W: a burst of N at once is admitted, request N+1 is refused with
/// retry_after ≤ W, and a steady client at N/W is never refused.
///
/// It is a generic cell rate algorithm; the formulas are in the [module documentation](self).
/// A limit of zero refuses every request, and a zero window is treated as one microsecond,
/// so misconfiguration fails closed instead of dividing by zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Requests admitted per window, which is also the largest burst admitted at once.
    pub limit: u32,
    /// The window in milliseconds over which `limit` requests are admitted.
    pub window_ms: u64,
}

/// The state of one rate-limited key: the only thing a limiter has to store per key.
///
/// The default (zero) state is a full bucket at any time after 1970, because its arrival
/// time lies in the past; a missing Redis key reads as the same zero.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcraState {
    /// The theoretical arrival time, in Unix microseconds: the instant at which the bucket
    /// would be full again if no more requests came. A single integer, so Redis can keep it
    /// in one key.
    pub tat_us: i64,
}

/// What a rate-limit check decided and the figures a client is shown about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateOutcome {
    /// Whether the request is admitted (and its cost consumed).
    pub allowed: bool,
    /// The policy's request count per window, echoed so a response can be rendered from
    /// the outcome alone.
    pub limit: u32,
    /// How many more single requests would be admitted right now, after this one.
    pub remaining: u32,
    /// Seconds (rounded up) until the bucket is completely full again; 0 when it is full.
    pub reset_secs: u64,
    /// Seconds (rounded up) until this request would be admitted; 0 when it was admitted,
    /// never 0 when it was refused, so it can go straight into `Retry-After`.
    pub retry_after_secs: u64,
    /// The policy's window in whole seconds (rounded up, at least 1), for the `w` parameter.
    pub window_secs: u64,
}

/// The derived integer constants of a [`RateLimit`], computed once per call.
#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Emission interval `T` in microseconds, at least 1.
    interval: i128,
    /// Burst allowance `B = N·T` in microseconds.
    burst: i128,
}

impl RateLimit {
    /// A limit of `limit` requests per `window_ms` milliseconds.
    pub const fn new(limit: u32, window_ms: u64) -> Self {
        Self { limit, window_ms }
    }

    /// `n` requests per minute, the unit plans are configured in (`requests_per_minute`).
    pub const fn per_minute(n: u32) -> Self {
        Self::new(n, 60_000)
    }

    /// `n` requests per second, for tight per-key overrides.
    pub const fn per_second(n: u32) -> Self {
        Self::new(n, 1_000)
    }

    /// The window in microseconds, at least 1 so that the division below is defined.
    fn window_us(&self) -> i128 {
        (i128::from(self.window_ms) * US_PER_MS).max(1)
    }

    /// `T` and `B`, or `None` for a zero limit (which admits nothing).
    fn gcra(&self) -> Option<Gcra> {
        if self.limit == 0 {
            return None;
        }
        let n = i128::from(self.limit);
        let interval = (self.window_us() / n).max(1);
        Some(Gcra {
            interval,
            burst: n * interval,
        })
    }

    /// The emission interval `T = max(1, floor(W / N))` in microseconds: what one request
    /// costs. Exposed so other implementations of the same math (the Redis script) can be
    /// checked against this one. A zero limit yields the whole window.
    pub fn interval_us(&self) -> i64 {
        to_i64(self.gcra().map_or(self.window_us(), |g| g.interval))
    }

    /// The burst allowance `B = N·T` in microseconds: how far ahead of now the state may run.
    /// A zero limit yields 0.
    pub fn burst_us(&self) -> i64 {
        to_i64(self.gcra().map_or(0, |g| g.burst))
    }

    /// The window in whole seconds, rounded up and at least 1, as the headers need.
    pub fn window_secs(&self) -> u64 {
        ceil_secs_ms(i128::from(self.window_ms)).max(1)
    }

    /// Builds an outcome from the backlog `tat - now` left after the decision.
    fn figures(&self, g: Gcra, backlog: i128, allowed: bool, retry_us: i128) -> RateOutcome {
        let backlog = backlog.clamp(0, g.burst);
        let remaining = (g.burst - backlog) / g.interval;
        RateOutcome {
            allowed,
            limit: self.limit,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(self.limit),
            reset_secs: ceil_secs_us(backlog),
            retry_after_secs: if allowed {
                0
            } else {
                ceil_secs_us(retry_us).max(1)
            },
            window_secs: self.window_secs(),
        }
    }

    /// The outcome for a policy that admits nothing (a zero limit).
    fn closed(&self) -> RateOutcome {
        RateOutcome {
            allowed: false,
            limit: self.limit,
            remaining: 0,
            reset_secs: 0,
            retry_after_secs: self.window_secs(),
            window_secs: self.window_secs(),
        }
    }

    /// The state's arrival time clamped into `[now, now + B]`: an idle bucket is no fuller
    /// than full, and a state left by a larger limit (a plan downgrade) or by a clock that
    /// stepped back is no emptier than empty, so the retry-after stays within one window.
    fn clamped_tat(g: Gcra, state: &GcraState, now: i128) -> i128 {
        i128::from(state.tat_us).clamp(now, now + g.burst)
    }

    /// Decides whether a request costing `cost` units is admitted at `now_ms`, consuming the
    /// cost from `state` only when it is.
    ///
    /// A cost above the limit can never be admitted and is refused with a retry-after of one
    /// window, so a client that retries does not spin. A cost of zero is always admitted
    /// (unless the limit is zero) and reports the current figures.
    pub fn check(&self, state: &mut GcraState, now_ms: i64, cost: u32) -> RateOutcome {
        let Some(g) = self.gcra() else {
            return self.closed();
        };
        let now = i128::from(now_ms) * US_PER_MS;
        let tat = Self::clamped_tat(g, state, now);
        if cost > self.limit {
            let mut out = self.figures(g, tat - now, false, 0);
            out.retry_after_secs = self.window_secs();
            return out;
        }
        let new_tat = tat + i128::from(cost) * g.interval;
        if new_tat - now <= g.burst {
            state.tat_us = to_i64(new_tat);
            self.figures(g, new_tat - now, true, 0)
        } else {
            self.figures(g, tat - now, false, new_tat - g.burst - now)
        }
    }

    /// The figures for one more single request at `now_ms`, without consuming anything:
    /// `allowed` says whether it would be admitted and `remaining` how many would be.
    pub fn peek(&self, state: &GcraState, now_ms: i64) -> RateOutcome {
        let Some(g) = self.gcra() else {
            return self.closed();
        };
        let now = i128::from(now_ms) * US_PER_MS;
        let backlog = Self::clamped_tat(g, state, now) - now;
        let allowed = backlog + g.interval <= g.burst;
        self.figures(g, backlog, allowed, backlog + g.interval - g.burst)
    }

    /// The `RateLimit-Policy` field value (IETF httpapi ratelimit-headers draft 11), for
    /// example `"default";q=50;w=60`: the quota `q` per window of `w` seconds.
    pub fn policy_header(&self) -> String {
        policy_header(self.limit, self.window_secs())
    }
}

/// Renders a `RateLimit-Policy` field value from its two figures.
fn policy_header(limit: u32, window_secs: u64) -> String {
    FieldValue::new(("q", u64::from(limit)), ("w", window_secs))
        .as_str()
        .to_owned()
}

/// A rate-limit field value, `"default";a=1;b=2`, written on the stack: every answer a
/// rate limit applies to carries one.
#[derive(Clone, Copy)]
pub struct FieldValue {
    buf: [u8; 64],
    len: usize,
}

impl FieldValue {
    /// The policy's name and two parameters (at most 55 bytes in all).
    fn new(first: (&str, u64), second: (&str, u64)) -> Self {
        let mut value = FieldValue {
            buf: [0; 64],
            len: 0,
        };
        let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
        for part in [
            "\"",
            POLICY_NAME,
            "\";",
            first.0,
            "=",
            a.format(first.1),
            ";",
            second.0,
            "=",
            b.format(second.1),
        ] {
            value.buf[value.len..value.len + part.len()].copy_from_slice(part.as_bytes());
            value.len += part.len();
        }
        value
    }

    /// The value as text (visible ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl RateOutcome {
    /// The `RateLimit` field value (IETF httpapi ratelimit-headers draft 11), for example
    /// `"default";r=12;t=37`: `r` requests remain and the bucket is full again in `t` seconds.
    pub fn header(&self) -> String {
        self.header_value().as_str().to_owned()
    }

    /// [`RateOutcome::header`] without allocating.
    pub fn header_value(&self) -> FieldValue {
        FieldValue::new(("r", u64::from(self.remaining)), ("t", self.reset_secs))
    }

    /// The `RateLimit-Policy` field value for the policy that produced this outcome, so a
    /// response can carry both fields when only the outcome is at hand.
    pub fn policy_header(&self) -> String {
        policy_header(self.limit, self.window_secs)
    }
}

/// The per-IP lockout policy after repeated authentication failures (`docs/decision.md`).
///
/// Semantics, exactly: the first failure opens a fixed window of `window_ms`; failures at
/// `now` with `now - window_start < window_ms` count in it, and the first failure at or after
/// its end opens a new window with a count of 1. The failure that brings the count to
/// `max_failures` locks the client until `locking failure + lock_ms` (exclusive) and resets
/// the count, so after the lock counting starts over from zero. Failures while locked are
/// neither counted nor extend the lock, so a lock always ends on time.
///
/// Because windows start at a failure rather than on a clock boundary, any span of
/// `window_ms` sees at most `2·(max_failures − 1)` failures without a lock. A `max_failures`
/// of 0 disables locking; a `lock_ms` of 0 never holds a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lockout {
    /// Failures within one window that lock the client (default 20).
    pub max_failures: u32,
    /// Length of the counting window, from its first failure, in milliseconds (default 5 min).
    pub window_ms: u64,
    /// How long a lock lasts from the locking failure, in milliseconds (default 5 min).
    pub lock_ms: u64,
}

impl Default for Lockout {
    /// `docs/decision.md`: 20 failures in 5 minutes lock the IP for 5 minutes.
    fn default() -> Self {
        Self {
            max_failures: 20,
            window_ms: 300_000,
            lock_ms: 300_000,
        }
    }
}

/// The lockout state of one client (one IP, or one IPv6 /64): three numbers, all zero when
/// nothing has happened, so an evicted entry and a fresh one behave the same.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutState {
    /// Failures counted in the current window.
    pub failures: u32,
    /// When the current window opened (its first failure), Unix milliseconds.
    pub window_start_ms: i64,
    /// The instant the current lock ends (exclusive), Unix milliseconds; in the past when
    /// the client is not locked.
    pub locked_until_ms: i64,
}

impl Lockout {
    /// `Some(retry_after_secs)`, at least 1, while the client is locked at `now_ms`.
    pub fn is_locked(&self, state: &LockoutState, now_ms: i64) -> Option<u64> {
        let left = i128::from(state.locked_until_ms) - i128::from(now_ms);
        (left > 0).then(|| ceil_secs_ms(left).max(1))
    }

    /// Counts one authentication failure at `now_ms`. Returns `Some(retry_after_secs)` when
    /// the client is locked after it: because this failure reached `max_failures`, or because
    /// an earlier one did and the lock still holds (in which case nothing is counted).
    pub fn record_failure(&self, state: &mut LockoutState, now_ms: i64) -> Option<u64> {
        if let Some(left) = self.is_locked(state, now_ms) {
            return Some(left);
        }
        if self.max_failures == 0 {
            return None;
        }
        let elapsed = i128::from(now_ms) - i128::from(state.window_start_ms);
        if state.failures == 0 || elapsed >= i128::from(self.window_ms) {
            state.failures = 1;
            state.window_start_ms = now_ms;
        } else {
            state.failures = state.failures.saturating_add(1);
        }
        if state.failures < self.max_failures {
            return None;
        }
        state.failures = 0;
        state.locked_until_ms = to_i64(i128::from(now_ms) + i128::from(self.lock_ms));
        self.is_locked(state, now_ms)
    }

    /// Whether the state holds nothing that matters at `now_ms` (no lock, no failure inside
    /// an open window), so the limiter may evict it: dropping it equals the default state.
    pub fn is_idle(&self, state: &LockoutState, now_ms: i64) -> bool {
        let elapsed = i128::from(now_ms) - i128::from(state.window_start_ms);
        self.is_locked(state, now_ms).is_none()
            && (state.failures == 0 || elapsed >= i128::from(self.window_ms))
    }
}

/// A quota period: a UTC calendar day or month (plans in `docs/concepts.md#objects`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From 00:00:00.000 UTC to the next midnight UTC.
    Day,
    /// From the first of the month, 00:00 UTC, to the first of the next month.
    Month,
}

impl Period {
    /// The period containing `now_ms`, as `[start, end)` in Unix milliseconds: `start ≤ now_ms
    /// < end`. Months follow the proleptic Gregorian calendar, so February has 29 days in leap
    /// years and December is followed by January of the next year.
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        let day = now_ms.div_euclid(MS_PER_DAY);
        let (start_day, end_day) = match self {
            Period::Day => (day, day + 1),
            Period::Month => {
                let (y, m) = year_month_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
            }
        };
        let to_ms = |d: i64| d.checked_mul(MS_PER_DAY).unwrap_or(i64::MAX);
        (to_ms(start_day), to_ms(end_day))
    }

    /// The configuration and wire spelling: `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`),
/// because it is exact for every `i64` day count we produce and cannot fail.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year and month (1–12) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`), the inverse of [`days_from_civil`].
fn year_month_from_days(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // The month is 1..=12 by construction, so the conversion cannot fail.
    (year, u32::try_from(month).unwrap_or(1))
}

/// One quota of a plan: at most `limit` units of `unit` per `period` (`docs/concepts.md#objects`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// What is counted, e.g. `requests` or `words`; names the usage counter.
    pub unit: String,
    /// Units allowed per period.
    pub limit: u64,
    /// The calendar period after which the count starts again.
    pub period: Period,
}

/// What a quota check decided, with the figures the usage report and headers show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuotaOutcome {
    /// The unit checked, so several outcomes can be told apart.
    pub unit: String,
    /// Units used in the period, including this request's cost only if it was admitted.
    pub used: u64,
    /// Units allowed per period.
    pub limit: u64,
    /// Units still available in the period (`limit − used`, never negative).
    pub remaining: u64,
    /// Start of the period, Unix milliseconds (inclusive).
    pub period_start: i64,
    /// End of the period, Unix milliseconds (exclusive): when the count starts again.
    pub period_end: i64,
    /// Whether the request fits in the quota.
    pub allowed: bool,
    /// Seconds (rounded up) until `period_end` when refused, at least 1; 0 when admitted.
    pub retry_after_secs: u64,
}

/// Checks a request costing `cost` units against `spec`, given `used_before` units already
/// used in the period containing `now_ms`.
///
/// Admitted iff `used_before + cost ≤ limit`, so a request landing exactly on the limit is
/// admitted and usage reported after the fact beyond the limit refuses everything (even a
/// zero cost) until the period ends. The caller persists `used` when `allowed`.
pub fn check_quota(spec: &QuotaSpec, used_before: u64, cost: u64, now_ms: i64) -> QuotaOutcome {
    let (period_start, period_end) = spec.period.bounds(now_ms);
    let after = used_before.checked_add(cost).filter(|&u| u <= spec.limit);
    let allowed = after.is_some();
    let used = after.unwrap_or(used_before);
    QuotaOutcome {
        unit: spec.unit.clone(),
        used,
        limit: spec.limit,
        remaining: spec.limit.saturating_sub(used),
        period_start,
        period_end,
        allowed,
        retry_after_secs: if allowed {
            0
        } else {
            ceil_secs_ms(i128::from(period_end) - i128::from(now_ms)).max(1)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2025-01-01T00:00:00Z, a round start for the rate tests.
    const T0: i64 = 1_735_689_600_000;

    /// Parses an RFC 3339 instant into Unix milliseconds, so period tests read as dates.
    fn ms(rfc3339: &str) -> i64 {
        let t =
            time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
                .expect("test instants are valid RFC 3339");
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).expect("in range")
    }

    #[test]
    fn burst_of_n_is_admitted_and_n_plus_one_is_refused() {
        // (limit, window_ms, expected retry_after of request N+1 at the same instant)
        let cases: &[(u32, u64, u64)] = &[
            (1, 1_000, 1),
            (7, 60_000, 9),   // T = 8.571428 s
            (50, 60_000, 2),  // T = 1.2 s
            (600, 60_000, 1), // T = 0.1 s
            (3, 3_600_000, 1_200),
            (1, 60_000, 60),
            (100_000, 1_000, 1), // T = 10 µs: the burst must stay exact at high rates
        ];
        for &(n, w, retry) in cases {
            let rl = RateLimit::new(n, w);
            let mut st = GcraState::default();
            for i in 0..n {
                let out = rl.check(&mut st, T0, 1);
                assert!(out.allowed, "{n}/{w}: request {} refused", i + 1);
                assert_eq!(out.remaining, n - i - 1, "{n}/{w}: remaining");
                assert_eq!(out.retry_after_secs, 0);
            }
            let before = st;
            let out = rl.check(&mut st, T0, 1);
            assert!(!out.allowed, "{n}/{w}: request N+1 admitted");
            assert_eq!(out.remaining, 0);
            assert_eq!(out.retry_after_secs, retry, "{n}/{w}: retry_after");
            assert!(out.retry_after_secs <= rl.window_secs());
            assert_eq!(st, before, "a refusal must not touch the state");
            // Waiting the advertised time is enough.
            let later = T0 + i64::try_from(retry * 1000).unwrap();
            assert!(
                rl.check(&mut st, later, 1).allowed,
                "{n}/{w}: retry_after too short"
            );
        }
    }

    #[test]
    fn headers_at_several_points() {
        let rl = RateLimit::per_minute(50);
        assert_eq!(rl.policy_header(), "\"default\";q=50;w=60");
        assert_eq!(
            RateLimit::new(10, 1_500).policy_header(),
            "\"default\";q=10;w=2"
        );
        let mut st = GcraState::default();
        // A full bucket.
        let p = rl.peek(&st, T0);
        assert_eq!((p.allowed, p.remaining, p.reset_secs), (true, 50, 0));
        assert_eq!(p.header(), "\"default\";r=50;t=0");
        // One request: 49 left, full again after T = 1.2 s.
        assert_eq!(rl.check(&mut st, T0, 1).header(), "\"default\";r=49;t=2");
        // Thirty-eight requests: backlog 45.6 s.
        for _ in 1..37 {
            rl.check(&mut st, T0, 1);
        }
        let out = rl.check(&mut st, T0, 1);
        assert_eq!(out.header(), "\"default\";r=12;t=46");
        assert_eq!(out.policy_header(), "\"default\";q=50;w=60");
        // Ten seconds later the backlog is 35.6 s: 24.4 s of room holds 20 requests.
        let p = rl.peek(&st, T0 + 10_000);
        assert_eq!(p.header(), "\"default\";r=20;t=36");
        assert_eq!(st.tat_us, (T0 + 45_600) * 1000, "peek must not consume");
        // Drain the rest at T0 + 10 s.
        for _ in 0..20 {
            assert!(rl.check(&mut st, T0 + 10_000, 1).allowed);
        }
        let out = rl.check(&mut st, T0 + 10_000, 1);
        assert!(!out.allowed);
        // The backlog is now 59.6 s, so the next unit fits in 0.8 s.
        assert_eq!(out.header(), "\"default\";r=0;t=60");
        assert_eq!(out.retry_after_secs, 1);
        // After the reset the bucket is full again.
        let p = rl.peek(&st, T0 + 70_000);
        assert_eq!(p.header(), "\"default\";r=50;t=0");
    }

    #[test]
    fn the_largest_figures_fit_the_fields() {
        let out = RateOutcome {
            allowed: true,
            limit: u32::MAX,
            remaining: u32::MAX,
            reset_secs: u64::MAX,
            retry_after_secs: 0,
            window_secs: u64::MAX,
        };
        assert_eq!(
            out.header(),
            "\"default\";r=4294967295;t=18446744073709551615"
        );
        assert_eq!(out.header_value().as_str(), out.header());
        assert_eq!(
            out.policy_header(),
            "\"default\";q=4294967295;w=18446744073709551615"
        );
    }

    #[test]
    fn steady_client_at_exactly_n_per_w_is_never_refused() {
        let cases: &[(u32, u64)] = &[
            (7, 60_000),
            (50, 60_000),
            (600, 60_000),
            (1, 1_000),
            (3, 10_000),
            (1_000, 1_000),
            (13, 7_000),
        ];
        for &(n, w) in cases {
            let rl = RateLimit::new(n, w);
            // Schedule A: every ceil(W / N) ms.
            let step = i64::try_from(w.div_ceil(u64::from(n))).unwrap();
            let mut st = GcraState::default();
            for k in 0..10_000i64 {
                let out = rl.check(&mut st, T0 + k * step, 1);
                assert!(out.allowed, "{n}/{w} ceil schedule: request {k} refused");
            }
            // Schedule B: request k at floor(k·W/N) ms, i.e. exactly N per W on average with
            // up to 1 ms of jitter from the millisecond clock.
            let mut st = GcraState::default();
            for k in 0..10_000i64 {
                let at = T0 + k * i64::try_from(w).unwrap() / i64::from(n);
                let out = rl.check(&mut st, at, 1);
                assert!(out.allowed, "{n}/{w} exact schedule: request {k} refused");
            }
        }
    }

    #[test]
    fn costs_above_one() {
        let rl = RateLimit::per_minute(10); // T = 6 s
        let mut st = GcraState::default();
        let out = rl.check(&mut st, T0, 4);
        assert_eq!((out.allowed, out.remaining, out.reset_secs), (true, 6, 24));
        let out = rl.check(&mut st, T0, 6);
        assert_eq!((out.allowed, out.remaining, out.reset_secs), (true, 0, 60));
        // Three more need 3 × 6 s to drip out.
        let out = rl.check(&mut st, T0, 3);
        assert_eq!((out.allowed, out.retry_after_secs), (false, 18));
        // After 12 s only two fit: a cost of 3 is refused with 6 s left, 2 is admitted.
        let out = rl.check(&mut st, T0 + 12_000, 3);
        assert_eq!(
            (out.allowed, out.remaining, out.retry_after_secs),
            (false, 2, 6)
        );
        let out = rl.check(&mut st, T0 + 12_000, 2);
        assert_eq!((out.allowed, out.remaining), (true, 0));
        // A cost above the limit is never admitted; retry after one window.
        let mut fresh = GcraState::default();
        let out = rl.check(&mut fresh, T0, 11);
        assert_eq!(
            (out.allowed, out.retry_after_secs, out.remaining),
            (false, 60, 10)
        );
        assert_eq!(fresh, GcraState::default());
        // Zero cost is a free look.
        let out = rl.check(&mut fresh, T0, 0);
        assert_eq!((out.allowed, out.remaining, out.reset_secs), (true, 10, 0));
    }

    #[test]
    fn degenerate_policies_fail_closed() {
        let zero = RateLimit::per_minute(0);
        let mut st = GcraState::default();
        let out = zero.check(&mut st, T0, 1);
        assert_eq!(
            (out.allowed, out.retry_after_secs, out.remaining),
            (false, 60, 0)
        );
        assert!(!zero.peek(&st, T0).allowed);
        assert_eq!(zero.policy_header(), "\"default\";q=0;w=60");
        // A zero window still limits the burst to N and reports a 1 s window.
        let instant = RateLimit::new(2, 0);
        let mut st = GcraState::default();
        assert!(instant.check(&mut st, T0, 1).allowed);
        assert!(instant.check(&mut st, T0, 1).allowed);
        let out = instant.check(&mut st, T0, 1);
        assert_eq!(
            (out.allowed, out.retry_after_secs, out.window_secs),
            (false, 1, 1)
        );
        assert!(instant.check(&mut st, T0 + 1, 1).allowed);
    }

    #[test]
    fn foreign_state_is_clamped() {
        let rl = RateLimit::per_minute(6); // T = 10 s
                                           // A state far in the future (a plan downgrade, or a clock that stepped back) waits at
                                           // most one window.
        let mut st = GcraState {
            tat_us: (T0 + 3_600_000) * 1000,
        };
        let out = rl.check(&mut st, T0, 1);
        assert_eq!(
            (out.allowed, out.retry_after_secs, out.reset_secs),
            (false, 10, 60)
        );
        // A state far in the past is a full bucket.
        let mut st = GcraState { tat_us: i64::MIN };
        assert_eq!(rl.check(&mut st, T0, 1).remaining, 5);
        // Extreme clocks do not overflow: beyond the `i64` microsecond range the state
        // saturates, and a clock that jumps back to the far past sees an empty bucket.
        let mut st = GcraState::default();
        assert!(rl.check(&mut st, i64::MAX, 1).allowed);
        assert_eq!(st.tat_us, i64::MAX);
        assert!(!rl.check(&mut st, i64::MIN, 1).allowed);
        // Before 1970 the zero state lies in the future, so it reads as an empty bucket.
        let out = rl.check(&mut GcraState::default(), i64::MIN, 1);
        assert_eq!((out.allowed, out.retry_after_secs), (false, 10));
    }

    #[test]
    fn lockout_counts_locks_and_unlocks() {
        let lo = Lockout::default();
        assert_eq!(
            (lo.max_failures, lo.window_ms, lo.lock_ms),
            (20, 300_000, 300_000)
        );
        let mut st = LockoutState::default();
        assert!(lo.is_idle(&st, T0));
        // Nineteen failures one second apart do not lock.
        for i in 0..19 {
            assert_eq!(
                lo.record_failure(&mut st, T0 + i * 1000),
                None,
                "failure {i}"
            );
            assert_eq!(lo.is_locked(&st, T0 + i * 1000), None);
        }
        assert!(!lo.is_idle(&st, T0 + 19_000));
        // The twentieth locks for 300 s from itself.
        let at = T0 + 19_000;
        assert_eq!(lo.record_failure(&mut st, at), Some(300));
        assert_eq!(lo.is_locked(&st, at), Some(300));
        assert_eq!(lo.is_locked(&st, at + 299_001), Some(1));
        assert_eq!(lo.is_locked(&st, at + 299_999), Some(1));
        // Failures while locked neither count nor extend the lock.
        assert_eq!(lo.record_failure(&mut st, at + 100_000), Some(200));
        assert_eq!(lo.is_locked(&st, at + 300_000), None);
        assert!(lo.is_idle(&st, at + 300_000));
        // After the lock the count starts over: one failure does not re-lock.
        assert_eq!(lo.record_failure(&mut st, at + 300_000), None);
        assert_eq!(st.failures, 1);
    }

    #[test]
    fn lockout_forgets_failures_outside_the_window() {
        let lo = Lockout::default();
        let mut st = LockoutState::default();
        // Ten failures at the start of a window, ten more after it ended: no lock.
        for i in 0..10 {
            assert_eq!(lo.record_failure(&mut st, T0 + i), None);
        }
        assert!(lo.is_idle(&st, T0 + 300_000));
        for i in 0..10 {
            assert_eq!(lo.record_failure(&mut st, T0 + 300_000 + i), None);
        }
        assert_eq!((st.failures, st.window_start_ms), (10, T0 + 300_000));
        // Ten more inside the new window lock at the last one.
        for i in 0..9 {
            assert_eq!(lo.record_failure(&mut st, T0 + 400_000 + i), None);
        }
        assert_eq!(lo.record_failure(&mut st, T0 + 599_999), Some(300));
        // The last failure of a window still counts; the window's end restarts it.
        let mut st = LockoutState::default();
        for _ in 0..19 {
            lo.record_failure(&mut st, T0);
        }
        assert_eq!(lo.record_failure(&mut st, T0 + 299_999), Some(300));
        let mut st = LockoutState::default();
        for _ in 0..19 {
            lo.record_failure(&mut st, T0);
        }
        assert_eq!(lo.record_failure(&mut st, T0 + 300_000), None);
    }

    #[test]
    fn lockout_edge_policies() {
        let off = Lockout {
            max_failures: 0,
            ..Lockout::default()
        };
        let mut st = LockoutState::default();
        for i in 0..100 {
            assert_eq!(off.record_failure(&mut st, T0 + i), None);
        }
        let first = Lockout {
            max_failures: 1,
            window_ms: 1_000,
            lock_ms: 1_500,
        };
        let mut st = LockoutState::default();
        assert_eq!(first.record_failure(&mut st, T0), Some(2));
        assert_eq!(first.is_locked(&st, T0 + 1_499), Some(1));
        assert_eq!(first.is_locked(&st, T0 + 1_500), None);
        let no_lock = Lockout {
            max_failures: 1,
            window_ms: 1_000,
            lock_ms: 0,
        };
        let mut st = LockoutState::default();
        assert_eq!(no_lock.record_failure(&mut st, T0), None);
        assert!(no_lock.is_idle(&st, T0));
    }

    #[test]
    fn period_bounds() {
        let cases: &[(&str, Period, &str, &str)] = &[
            (
                "2024-02-29T12:34:56.789Z",
                Period::Day,
                "2024-02-29T00:00:00Z",
                "2024-03-01T00:00:00Z",
            ),
            (
                "2024-02-29T12:34:56.789Z",
                Period::Month,
                "2024-02-01T00:00:00Z",
                "2024-03-01T00:00:00Z",
            ),
            (
                "2025-02-28T23:59:59.999Z",
                Period::Month,
                "2025-02-01T00:00:00Z",
                "2025-03-01T00:00:00Z",
            ),
            (
                "2025-12-31T23:59:59.999Z",
                Period::Day,
                "2025-12-31T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            (
                "2025-12-31T23:59:59.999Z",
                Period::Month,
                "2025-12-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            (
                "2026-01-01T00:00:00Z",
                Period::Day,
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
            ),
            (
                "2026-01-01T00:00:00Z",
                Period::Month,
                "2026-01-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
            ),
            (
                "2025-04-30T23:59:59.999Z",
                Period::Month,
                "2025-04-01T00:00:00Z",
                "2025-05-01T00:00:00Z",
            ),
            (
                "2000-02-15T00:00:00Z",
                Period::Month,
                "2000-02-01T00:00:00Z",
                "2000-03-01T00:00:00Z",
            ),
            (
                "1969-12-31T23:59:59.999Z",
                Period::Day,
                "1969-12-31T00:00:00Z",
                "1970-01-01T00:00:00Z",
            ),
        ];
        for &(now, period, start, end) in cases {
            assert_eq!(
                period.bounds(ms(now)),
                (ms(start), ms(end)),
                "{period} of {now}"
            );
        }
        assert_eq!(Period::Day.as_str(), "day");
        assert_eq!(Period::Month.to_string(), "month");
    }

    #[test]
    fn quota_spec_parses_strictly() {
        let spec: QuotaSpec =
            serde_json::from_str(r#"{"unit":"words","limit":100000,"period":"month"}"#).unwrap();
        assert_eq!(
            spec,
            QuotaSpec {
                unit: "words".into(),
                limit: 100_000,
                period: Period::Month
            }
        );
        assert!(serde_json::from_str::<QuotaSpec>(
            r#"{"unit":"words","limit":1,"period":"month","extra":1}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<QuotaSpec>(r#"{"unit":"w","limit":1,"period":"Month"}"#)
                .is_err()
        );
    }

    #[test]
    fn quota_at_limit_then_refused_until_next_period() {
        let spec = QuotaSpec {
            unit: "requests".into(),
            limit: 100,
            period: Period::Day,
        };
        let now = ms("2025-12-31T23:00:00Z");
        let end = ms("2026-01-01T00:00:00Z");
        // (used_before, cost, allowed, used, remaining, retry_after)
        let cases: &[(u64, u64, bool, u64, u64, u64)] = &[
            (0, 1, true, 1, 99, 0),
            (99, 1, true, 100, 0, 0),
            (90, 10, true, 100, 0, 0),
            (100, 1, false, 100, 0, 3_600),
            (95, 10, false, 95, 5, 3_600),
            (100, 0, true, 100, 0, 0),
            (150, 0, false, 150, 0, 3_600),
            (0, 101, false, 0, 100, 3_600),
            (1, u64::MAX, false, 1, 99, 3_600),
        ];
        for &(before, cost, allowed, used, remaining, retry) in cases {
            let q = check_quota(&spec, before, cost, now);
            assert_eq!(
                (q.allowed, q.used, q.remaining, q.retry_after_secs),
                (allowed, used, remaining, retry),
                "used {before} + cost {cost}"
            );
            assert_eq!(
                (q.period_end, q.limit, q.unit.as_str()),
                (end, 100, "requests")
            );
        }
        // A refusal in the last millisecond still says at least 1 s.
        let q = check_quota(&spec, 100, 1, end - 1);
        assert_eq!(q.retry_after_secs, 1);
        // The next period starts from zero, which is the caller's counter key.
        let q = check_quota(&spec, 0, 1, end);
        assert!(q.allowed);
        assert_eq!(q.period_start, end);
    }

    /// One arrival in a generated pattern: the gap since the previous one and its cost.
    fn arrivals(max_gap: i64) -> impl Strategy<Value = Vec<(i64, u32)>> {
        prop::collection::vec(
            (
                prop_oneof![3 => Just(0i64), 7 => 0..=max_gap],
                prop_oneof![8 => Just(1u32), 2 => 1u32..=4],
            ),
            1..300,
        )
    }

    proptest! {
        /// The admission rule is exactly the token bucket: a request is admitted iff for every
        /// earlier admitted request at `a` (and `a = now`), the cost admitted in `[a, now]`
        /// plus this cost is at most `N + (now − a) / T`. Hence any interval of length `L`
        /// admits at most `N + L / T`; in particular a burst is at most N.
        #[test]
        fn admissions_match_the_token_bucket(
            n in 1u32..=40,
            w in 1u64..=120_000,
            gaps in arrivals(5_000),
        ) {
            let rl = RateLimit::new(n, w);
            let t = i128::from(rl.interval_us());
            let cap = i128::from(n);
            let mut st = GcraState::default();
            let mut now = T0;
            let mut admitted: Vec<(i128, i128)> = Vec::new();
            for (gap, cost) in gaps {
                now += gap;
                let now_us = i128::from(now) * 1000;
                let cost_i = i128::from(cost);
                let fits = |since: i128, used: i128| (used + cost_i - cap) * t <= now_us - since;
                // The case `a = now` with nothing admitted yet at `now` is `cost ≤ N`.
                let mut ok = cost <= n;
                for (i, &(a, _)) in admitted.iter().enumerate() {
                    let used: i128 = admitted[i..].iter().map(|x| x.1).sum();
                    ok &= fits(a, used);
                }
                let peek = rl.peek(&st, now);
                let out = rl.check(&mut st, now, cost);
                prop_assert_eq!(out.allowed, ok, "at {} cost {}", now - T0, cost);
                if cost == 1 {
                    prop_assert_eq!(peek.allowed, out.allowed);
                }
                if out.allowed {
                    admitted.push((now_us, cost_i));
                    prop_assert_eq!(out.retry_after_secs, 0);
                } else {
                    prop_assert!(out.retry_after_secs >= 1);
                    prop_assert!(out.retry_after_secs <= rl.window_secs());
                    // Waiting the advertised time is enough.
                    let mut copy = st;
                    let later = now + i64::try_from(out.retry_after_secs * 1000).unwrap();
                    prop_assert_eq!(rl.check(&mut copy, later, cost).allowed, cost <= n);
                }
                prop_assert!(out.remaining <= n);
            }
            // No interval holds more than N + L / T, so an instant holds at most N.
            for i in 0..admitted.len() {
                let mut sum = 0;
                for j in i..admitted.len() {
                    sum += admitted[j].1;
                    let span = admitted[j].0 - admitted[i].0;
                    prop_assert!(sum <= cap + span / t, "{} admitted in {} µs", sum, span);
                }
            }
        }

        /// Over a long run, at most N per W (plus the initial burst) is ever admitted, for
        /// clients far greedier than the limit.
        #[test]
        fn long_run_rate_is_bounded(
            n in 1u32..=40,
            w in 1_000u64..=60_000,
            gaps in arrivals(200),
        ) {
            let rl = RateLimit::new(n, w);
            let mut st = GcraState::default();
            let mut now = T0;
            let mut total = 0u64;
            for (gap, cost) in gaps {
                now += gap;
                if rl.check(&mut st, now, cost).allowed {
                    total += u64::from(cost);
                }
            }
            let elapsed = u64::try_from(now - T0).unwrap();
            // T ≥ 1 ms here, so the rounding of T costs under 0.1 %: allow one extra unit.
            let bound = u64::from(n) + (elapsed * u64::from(n)).div_ceil(w) + 1;
            prop_assert!(total <= bound, "{} admitted in {} ms, bound {}", total, elapsed, bound);
        }

        /// After `reset_secs` the bucket is full again and nothing earlier than that is.
        #[test]
        fn reset_means_full(n in 1u32..=100, w in 1u64..=100_000, k in 1u32..=100) {
            let rl = RateLimit::new(n, w);
            let mut st = GcraState::default();
            let mut out = rl.peek(&st, T0);
            for _ in 0..k.min(n) {
                out = rl.check(&mut st, T0, 1);
            }
            let later = T0 + i64::try_from(out.reset_secs * 1000).unwrap();
            prop_assert_eq!(rl.peek(&st, later).remaining, n);
            if out.reset_secs > 0 {
                let earlier = later - 1000;
                prop_assert!(rl.peek(&st, earlier).reset_secs > 0);
            }
        }

        /// Period bounds agree with the `time` crate's calendar for four centuries around now.
        #[test]
        fn period_bounds_match_the_calendar(now in -2_208_988_800_000i64..=10_413_792_000_000) {
            let dt = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
                .unwrap();
            let to_ms = |d: time::OffsetDateTime| {
                i64::try_from(d.unix_timestamp_nanos() / 1_000_000).unwrap()
            };
            let day = dt.replace_time(time::Time::MIDNIGHT);
            prop_assert_eq!(
                Period::Day.bounds(now),
                (to_ms(day), to_ms(day + time::Duration::days(1)))
            );
            let month = day.replace_day(1).unwrap();
            let next = if month.month() == time::Month::December {
                month.replace_year(month.year() + 1).unwrap().replace_month(time::Month::January)
            } else {
                month.replace_month(month.month().next())
            }
            .unwrap();
            let (start, end) = Period::Month.bounds(now);
            prop_assert_eq!((start, end), (to_ms(month), to_ms(next)));
            prop_assert!(start <= now && now < end);
        }
    }
}
