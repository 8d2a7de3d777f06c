//! The limiter: in-process state stays bounded under a flood, the Redis scripts decide
//! exactly as the core functions on the same state, Redis counters are atomic across
//! limiters and start from the stored usage, and an unreachable Redis falls back to the
//! in-process state.
//!
//! The Redis cases run when `KEYWARDEN_TEST_REDIS_URL` names a server (CI sets it), each
//! under its own random key prefix, and print a note and pass otherwise.

use keywarden_core::ip::{lockout_bucket, LockoutBucket};
use keywarden_core::limits::{
    check_quota, GcraState, Lockout, LockoutState, Period, QuotaSpec, RateLimit,
};
use keywarden_core::model::Mode;
use keywarden_store::limiter::redis::QuotaStep;
use keywarden_store::{
    open, Limiter, LocalBounds, LocalLimiter, QuotaKey, RedisConfig, RedisLimiter, Store,
    UsageDelta,
};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// 2026-03-20T10:00:00Z.
const T0: i64 = 1_774_000_800_000;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The Redis URL for tests, or `None` (with a note) when none is configured.
fn redis_url() -> Option<String> {
    match std::env::var("KEYWARDEN_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("KEYWARDEN_TEST_REDIS_URL is not set: skipping this Redis test");
            None
        }
    }
}

/// A fresh key prefix, so tests never see each other's keys.
fn prefix() -> String {
    format!("kwtest:{}", ulid::Ulid::new())
}

/// A limiter on the test Redis under `prefix`.
async fn redis(url: &str, prefix: &str) -> RedisLimiter {
    let r = RedisLimiter::connect(RedisConfig::new(url, prefix))
        .await
        .expect("valid URL");
    assert!(
        r.stats().healthy,
        "the test Redis at {url} is not reachable"
    );
    r
}

/// A raw connection for looking at what the scripts stored.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A port on which nothing listens.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A migrated SQLite store in its own directory.
async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/kw.db", dir.path().display());
    (open(&url).await.unwrap(), dir)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn qk(account: &str, unit: &str, period: Period, now: i64) -> QuotaKey {
    QuotaKey {
        account_id: account.into(),
        mode: Mode::Live,
        unit: unit.into(),
        period_start: period.bounds(now).0,
    }
}

#[test]
fn a_flood_of_addresses_stays_within_the_bounds() {
    let bounds = LocalBounds {
        max_lockout_entries: 200,
        max_rate_entries: 200,
        ..LocalBounds::default()
    };
    let l = LocalLimiter::with_bounds(Some(Lockout::default()), bounds);
    // Looking an address up stores nothing.
    for i in 0..5_000u32 {
        let b = lockout_bucket(IpAddr::from(i.to_be_bytes()));
        assert_eq!(l.locked(&b, T0), None);
    }
    assert_eq!(l.entry_counts().1, 0);
    // Failures from 20,000 distinct addresses keep at most the capacity.
    for i in 0..20_000u32 {
        let b = lockout_bucket(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        l.fail(&b, T0);
    }
    let (_, lockouts, _) = l.entry_counts();
    assert!(lockouts <= 200, "{lockouts} lockout entries");
    // An IPv6 /64 is one entry, however many addresses it holds.
    let l = LocalLimiter::new(Some(Lockout::default()));
    for i in 0..5_000u16 {
        l.fail(&lockout_bucket(ip(&format!("2001:db8::{i:x}"))), T0);
    }
    assert_eq!(l.entry_counts().1, 1);
    // Rate entries are bounded the same way.
    let l = LocalLimiter::with_bounds(None, bounds);
    for i in 0..20_000 {
        l.rate(&format!("key_{i}"), RateLimit::per_minute(5), 1, T0);
    }
    assert!(l.entry_counts().0 <= 200);
}

#[tokio::test]
async fn the_local_limiter_needs_no_redis() {
    let (store, _dir) = store().await;
    let l = Limiter::local(LocalLimiter::new(Some(Lockout {
        max_failures: 2,
        window_ms: 60_000,
        lock_ms: 60_000,
    })));
    assert!(l.redis().is_none());
    let limit = RateLimit::per_minute(3);
    for _ in 0..3 {
        assert!(l.rate("key_a", limit, 1, T0).await.allowed);
    }
    let out = l.rate("key_a", limit, 1, T0).await;
    assert_eq!((out.allowed, out.retry_after_secs), (false, 20));
    let b = lockout_bucket(ip("192.0.2.1"));
    assert_eq!(l.fail(&b, T0).await, None);
    assert_eq!(l.fail(&b, T0).await, Some(60));
    assert_eq!(l.locked(&b, T0 + 59_001).await, Some(1));
    assert_eq!(l.locked(&b, T0 + 60_000).await, None);
    // Quotas start from the stored usage.
    let spec = QuotaSpec {
        unit: "words".into(),
        limit: 50,
        period: Period::Month,
    };
    let key = qk("acc_local", "words", Period::Month, T0);
    store
        .add_usage(&[UsageDelta {
            account_id: key.account_id.clone(),
            mode: key.mode,
            unit: key.unit.clone(),
            period_start: key.period_start,
            amount: 45,
        }])
        .await
        .unwrap();
    let items = [(key.clone(), &spec, 5u64)];
    assert!(l.consume_quotas(store.as_ref(), &items, T0).await.unwrap()[0].allowed);
    let out = l.consume_quotas(store.as_ref(), &items, T0).await.unwrap();
    assert!(!out[0].allowed);
    assert_eq!(
        l.quota_used(store.as_ref(), &key, Period::Month, T0)
            .await
            .unwrap(),
        50
    );
    assert_eq!(l.redis_fallbacks(), 0);
    assert_eq!(l.stats().redis, None);
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_local_state() {
    let (store, _dir) = store().await;
    let r = RedisLimiter::connect(RedisConfig::new(
        format!("redis://127.0.0.1:{}", dead_port()),
        prefix(),
    ))
    .await
    .unwrap();
    let l = Limiter::shared(LocalLimiter::new(Some(Lockout::default())), r);
    let limit = RateLimit::per_minute(2);
    assert!(l.rate("key_a", limit, 1, T0).await.allowed);
    assert!(l.rate("key_a", limit, 1, T0).await.allowed);
    let out = l.rate("key_a", limit, 1, T0).await;
    assert_eq!((out.allowed, out.retry_after_secs), (false, 30));
    let b = lockout_bucket(ip("192.0.2.9"));
    assert_eq!(l.locked(&b, T0).await, None);
    assert_eq!(l.fail(&b, T0).await, None);
    let spec = QuotaSpec {
        unit: "requests".into(),
        limit: 1,
        period: Period::Day,
    };
    let key = qk("acc_dead", "requests", Period::Day, T0);
    let items = [(key.clone(), &spec, 1u64)];
    assert!(l.consume_quotas(store.as_ref(), &items, T0).await.unwrap()[0].allowed);
    assert!(!l.consume_quotas(store.as_ref(), &items, T0).await.unwrap()[0].allowed);
    l.add_usage(store.as_ref(), &key, Period::Day, 4, T0)
        .await
        .unwrap();
    assert_eq!(
        l.quota_used(store.as_ref(), &key, Period::Day, T0)
            .await
            .unwrap(),
        5
    );
    let stats = l.stats().redis.unwrap();
    assert!(!stats.healthy);
    assert_eq!(stats.outages, 1, "one outage, one warning");
    assert_eq!(stats.fallbacks, 9, "every call above fell back once");
    assert_eq!(l.redis_fallbacks(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_script_decides_exactly_as_the_core() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let r = redis(&url, &p).await;
    let mut conn = raw(&url).await;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let policies = [
        RateLimit::per_minute(50),
        RateLimit::per_minute(7),
        RateLimit::new(3, 10_000),
        RateLimit::per_second(1_000),
        RateLimit::new(13, 7_000),
        RateLimit::new(100_000, 1_000),
        RateLimit::per_minute(0),
    ];
    for (n, limit) in policies.into_iter().enumerate() {
        let key_id = format!("key_{n}");
        let mut state = GcraState::default();
        let mut now = T0;
        for step in 0..400 {
            now += match rng.below(4) {
                0 => 0,
                1 => i64::try_from(rng.below(50)).unwrap(),
                _ => i64::try_from(rng.below(limit.window_ms.max(1) / 4 + 1)).unwrap(),
            };
            let cost = match rng.below(10) {
                0 => 0,
                1 => u32::try_from(rng.below(5)).unwrap() + 1,
                2 => limit.limit.saturating_add(1),
                _ => 1,
            };
            let want = limit.check(&mut state, now, cost);
            let got = r.rate(&key_id, limit, cost, now).await.unwrap();
            assert_eq!(got, want, "{limit:?} step {step} cost {cost}");
            let stored: Option<String> = redis::cmd("GET")
                .arg(format!("{p}:rl:{key_id}"))
                .query_async(&mut conn)
                .await
                .unwrap();
            if let Some(tat) = stored {
                assert_eq!(tat.parse::<i64>().unwrap(), state.tat_us, "step {step}");
            }
        }
    }
    assert_eq!(r.stats().fallbacks, 0);
    r.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lockout_script_decides_exactly_as_the_core() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let r = redis(&url, &p).await;
    let mut conn = raw(&url).await;
    let mut rng = Rng(0x0bad_cafe_f00d_0001);
    let policies = [
        Lockout::default(),
        Lockout {
            max_failures: 3,
            window_ms: 1_000,
            lock_ms: 2_500,
        },
        Lockout {
            max_failures: 1,
            window_ms: 10,
            lock_ms: 0,
        },
        Lockout {
            max_failures: 0,
            window_ms: 1_000,
            lock_ms: 1_000,
        },
    ];
    for (n, policy) in policies.into_iter().enumerate() {
        let bucket: LockoutBucket = lockout_bucket(ip(&format!("2001:db8:{n:x}::1")));
        let mut state = LockoutState::default();
        let mut now = T0;
        for step in 0..300 {
            now += i64::try_from(rng.below(policy.window_ms / 5 + 2)).unwrap();
            if rng.below(3) == 0 {
                assert_eq!(
                    r.locked(&bucket, policy, now).await.unwrap(),
                    policy.is_locked(&state, now),
                    "{policy:?} locked? step {step}"
                );
                continue;
            }
            let want = policy.record_failure(&mut state, now);
            let got = r.fail(&bucket, policy, now).await.unwrap();
            assert_eq!(got, want, "{policy:?} step {step}");
            let fields: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{p}:lo:{bucket}"))
                .arg("f")
                .arg("s")
                .arg("u")
                .query_async(&mut conn)
                .await
                .unwrap();
            if let [Some(f), Some(s), Some(u)] = fields.as_slice() {
                assert_eq!(
                    (
                        f.parse::<u32>().unwrap(),
                        s.parse::<i64>().unwrap(),
                        u.parse::<i64>().unwrap()
                    ),
                    (state.failures, state.window_start_ms, state.locked_until_ms),
                    "{policy:?} stored state, step {step}"
                );
            }
        }
    }
    r.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn limiters_sharing_a_prefix_share_one_budget() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let limiters = [
        redis(&url, &p).await,
        redis(&url, &p).await,
        redis(&url, &p).await,
    ];
    let limit = RateLimit::per_minute(50);
    let mut tasks = Vec::new();
    for i in 0..150 {
        let r = limiters[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            r.rate("key_shared", limit, 1, T0).await.unwrap().allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 50);
    // Another prefix is another budget.
    let other = redis(&url, &prefix()).await;
    assert!(
        other
            .rate("key_shared", limit, 1, T0)
            .await
            .unwrap()
            .allowed
    );
    other.clear().await.unwrap();
    assert!(limiters[0].clear().await.unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn quota_counters_are_all_or_nothing_across_limiters() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let limiters = [
        redis(&url, &p).await,
        redis(&url, &p).await,
        redis(&url, &p).await,
    ];
    let requests = QuotaSpec {
        unit: "requests".into(),
        limit: 100,
        period: Period::Day,
    };
    let words = QuotaSpec {
        unit: "words".into(),
        limit: 250,
        period: Period::Month,
    };
    // Seed both counters at zero.
    let items = [
        (qk("acc_q", "requests", Period::Day, T0), &requests, 0u64),
        (qk("acc_q", "words", Period::Month, T0), &words, 0u64),
    ];
    assert_eq!(
        limiters[0].consume_quotas(&items, &[], T0).await.unwrap(),
        QuotaStep::Missing(vec![0, 1])
    );
    assert_eq!(
        limiters[0]
            .consume_quotas(&items, &[Some(0), Some(0)], T0)
            .await
            .unwrap(),
        QuotaStep::Used {
            before: vec![0, 0],
            consumed: true
        }
    );
    // 300 requests of 1 request and 3 words each: words run out first, after 83.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let r = limiters[i % 3].clone();
        let (requests, words) = (requests.clone(), words.clone());
        tasks.push(tokio::spawn(async move {
            let items = [
                (qk("acc_q", "requests", Period::Day, T0), &requests, 1u64),
                (qk("acc_q", "words", Period::Month, T0), &words, 3u64),
            ];
            match r.consume_quotas(&items, &[], T0).await.unwrap() {
                QuotaStep::Used { consumed, .. } => consumed,
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut consumed = 0;
    for t in tasks {
        consumed += usize::from(t.await.unwrap());
    }
    assert_eq!(consumed, 83);
    let step = limiters[1].consume_quotas(&items, &[], T0).await.unwrap();
    assert_eq!(
        step,
        QuotaStep::Used {
            before: vec![83, 249],
            consumed: true
        }
    );
    limiters[0].clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_quota_counters_start_from_the_stored_usage() {
    let Some(url) = redis_url() else { return };
    let (store, _dir) = store().await;
    let p = prefix();
    let l = Limiter::shared(LocalLimiter::new(None), redis(&url, &p).await);
    let spec = QuotaSpec {
        unit: "words".into(),
        limit: 50,
        period: Period::Month,
    };
    let key = qk("acc_seed", "words", Period::Month, T0);
    store
        .add_usage(&[UsageDelta {
            account_id: key.account_id.clone(),
            mode: key.mode,
            unit: key.unit.clone(),
            period_start: key.period_start,
            amount: 40,
        }])
        .await
        .unwrap();
    let items = [(key.clone(), &spec, 4u64)];
    let mut outs = Vec::new();
    for _ in 0..3 {
        outs.push(l.consume_quotas(store.as_ref(), &items, T0).await.unwrap());
    }
    let allowed: Vec<bool> = outs.iter().map(|o| o[0].allowed).collect();
    assert_eq!(allowed, [true, true, false]);
    assert_eq!(outs[2][0], check_quota(&spec, 48, 4, T0));
    let used = l
        .quota_used(store.as_ref(), &key, Period::Month, T0)
        .await
        .unwrap();
    assert_eq!(used, 48);
    l.add_usage(store.as_ref(), &key, Period::Month, 5, T0)
        .await
        .unwrap();
    let used = l
        .quota_used(store.as_ref(), &key, Period::Month, T0)
        .await
        .unwrap();
    assert_eq!(used, 53);
    // A report for a counter nobody used yet starts from the store too.
    let other = qk("acc_seed2", "words", Period::Month, T0);
    store
        .add_usage(&[UsageDelta {
            account_id: other.account_id.clone(),
            mode: other.mode,
            unit: other.unit.clone(),
            period_start: other.period_start,
            amount: 7,
        }])
        .await
        .unwrap();
    l.add_usage(store.as_ref(), &other, Period::Month, 3, T0)
        .await
        .unwrap();
    assert_eq!(
        l.quota_used(store.as_ref(), &other, Period::Month, T0)
            .await
            .unwrap(),
        10
    );
    assert_eq!(l.redis_fallbacks(), 0);
    // Nothing went through the local state.
    assert_eq!(l.local_state().entry_counts(), (0, 0, 0));
    l.redis().unwrap().clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_keys_expire_by_themselves() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let r = redis(&url, &p).await;
    let conn = raw(&url).await;
    let pttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            ms
        }
    };
    // A rate key lives until its bucket is full again (plus a second).
    for _ in 0..10 {
        r.rate("key_ttl", RateLimit::per_minute(50), 1, T0)
            .await
            .unwrap();
    }
    let ttl = pttl(format!("{p}:rl:key_ttl")).await;
    assert!((11_000..=13_000).contains(&ttl), "rate key TTL {ttl} ms");
    // A lockout key lives until its window (or lock) is over.
    let bucket = lockout_bucket(ip("198.51.100.7"));
    r.fail(&bucket, Lockout::default(), T0).await.unwrap();
    let ttl = pttl(format!("{p}:lo:{bucket}")).await;
    assert!(
        (299_000..=301_000).contains(&ttl),
        "lockout key TTL {ttl} ms"
    );
    // A quota counter lives until its period ends (plus a margin).
    let spec = QuotaSpec {
        unit: "requests".into(),
        limit: 10,
        period: Period::Day,
    };
    let key = qk("acc_ttl", "requests", Period::Day, T0);
    r.consume_quotas(&[(key.clone(), &spec, 1)], &[Some(0)], T0)
        .await
        .unwrap();
    let ttl = pttl(format!("{p}:q:acc_ttl:live:{}:requests", key.period_start)).await;
    // T0 is 10:00 UTC: 14 h left in the day, plus the one-hour margin.
    assert!(
        (14 * 3_600_000 + 3_590_000..=15 * 3_600_000).contains(&ttl),
        "quota key TTL {ttl} ms"
    );
    r.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_call_is_cut_short_by_the_timeout() {
    // A listener that accepts and then never answers: connecting works, calls stall.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let accept = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            keep.lock().await.push(sock);
        }
    });
    let cfg = RedisConfig {
        timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(300),
        ..RedisConfig::new(format!("redis://{addr}"), prefix())
    };
    let started = std::time::Instant::now();
    let l = Limiter::shared(
        LocalLimiter::new(None),
        RedisLimiter::connect(cfg).await.unwrap(),
    );
    for _ in 0..5 {
        let t = std::time::Instant::now();
        assert!(
            l.rate("key_s", RateLimit::per_minute(5), 1, T0)
                .await
                .allowed
        );
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
    assert!(
        !l.rate("key_s", RateLimit::per_minute(5), 1, T0)
            .await
            .allowed
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(l.redis_fallbacks() >= 6);
    assert_eq!(l.stats().redis.unwrap().outages, 1);
    accept.abort();
}

#[test]
fn local_quota_consumption_is_atomic_across_threads() {
    let l = LocalLimiter::new(None);
    let requests = QuotaSpec {
        unit: "requests".into(),
        limit: 250,
        period: Period::Day,
    };
    let words = QuotaSpec {
        unit: "words".into(),
        limit: 100_000,
        period: Period::Month,
    };
    let rk = qk("acc_t", "requests", Period::Day, T0);
    let wk = qk("acc_t", "words", Period::Month, T0);
    l.load_quota(rk.clone(), 0);
    l.load_quota(wk.clone(), 0);
    let admitted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (l, admitted) = (&l, &admitted);
            let (requests, words, rk, wk) = (&requests, &words, rk.clone(), wk.clone());
            s.spawn(move || {
                // Half the threads name the counters in the other order.
                let items = if t % 2 == 0 {
                    vec![(rk, requests, 1u64), (wk, words, 3u64)]
                } else {
                    vec![(wk, words, 3u64), (rk, requests, 1u64)]
                };
                for _ in 0..100 {
                    if l.consume_quotas(&items, T0).iter().all(|o| o.allowed) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 250);
    assert_eq!(l.quota_used(&rk), Some(250));
    assert_eq!(l.quota_used(&wk), Some(750));
}

#[test]
fn draining_hands_over_only_what_was_counted_here() {
    let l = LocalLimiter::new(None);
    let spec = QuotaSpec {
        unit: "words".into(),
        limit: 100,
        period: Period::Month,
    };
    let counted = qk("acc_d", "words", Period::Month, T0);
    let idle = qk("acc_e", "words", Period::Month, T0);
    l.load_quota(counted.clone(), 40);
    l.load_quota(idle.clone(), 70);
    assert!(l.consume_quotas(&[(counted.clone(), &spec, 5)], T0)[0].allowed);
    l.add_usage(&counted, 3);
    assert_eq!(l.quota_used(&counted), Some(48));
    assert_eq!(l.drain_quota_counts(), vec![(counted.clone(), 8)]);
    assert_eq!(l.entry_counts().2, 0);
    assert!(!l.quota_loaded(&counted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erased_account_loses_its_shared_counters() {
    let Some(url) = redis_url() else { return };
    let (store, _dir) = store().await;
    let p = prefix();
    let l = Limiter::shared(LocalLimiter::new(None), redis(&url, &p).await);
    let spec = QuotaSpec {
        unit: "words".into(),
        limit: 100,
        period: Period::Month,
    };
    for account in ["acc_gone", "acc_kept"] {
        let items = [(qk(account, "words", Period::Month, T0), &spec, 1u64)];
        l.consume_quotas(store.as_ref(), &items, T0).await.unwrap();
    }
    l.forget_account("acc_gone");
    let mut conn = raw(&url).await;
    let start = Period::Month.bounds(T0).0;
    let exists = |account: &str| format!("{p}:q:{account}:live:{start}:words");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: u64 = redis::cmd("EXISTS")
            .arg(exists("acc_gone"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept: u64 = redis::cmd("EXISTS")
        .arg(exists("acc_kept"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    l.redis().unwrap().clear().await.unwrap();
}
