//! Traffic control end to end: per-key rate limits with their headers, the per-IP lockout,
//! plan quotas and key limits, limits shared through Redis by several instances, and the
//! fallback to in-process limits when Redis cannot be reached.
//!
//! Every scenario runs on a movable clock, so its figures are exact. The scenarios in
//! `both!` run twice: with in-process limits and with Redis (when `KEYWARDEN_TEST_REDIS_URL`
//! names a server; CI sets it). Redis runs use a random key prefix each, so they never see
//! each other's state; without the variable they print a note and pass.

mod common;

use common::{spawn_config, Answer, TestApp, ROOT};
use keywarden_server::config::Config;
use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

// ---- setup --------------------------------------------------------------------------------

/// Where an instance keeps its limits.
#[derive(Clone, Debug)]
enum Backend {
    /// In process (no `redis_url`).
    Local,
    /// In Redis at `url`, under `prefix`.
    Redis { url: String, prefix: String },
}

impl Backend {
    /// A Redis backend with a fresh prefix, or `None` (with a note) when no test Redis is
    /// configured.
    fn redis() -> Option<Backend> {
        match std::env::var("KEYWARDEN_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(Backend::Redis {
                url,
                prefix: format!("kwtest:{}", ulid::Ulid::new()),
            }),
            _ => {
                eprintln!("KEYWARDEN_TEST_REDIS_URL is not set: skipping this Redis test");
                None
            }
        }
    }

    /// The same Redis server and prefix reached through another URL.
    fn via(&self, url: String) -> Backend {
        match self {
            Backend::Redis { prefix, .. } => Backend::Redis {
                url,
                prefix: prefix.clone(),
            },
            Backend::Local => Backend::Local,
        }
    }
}

/// Starts an instance on its own SQLite database.
async fn start(toml: &str, backend: &Backend) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kw.db").display());
    start_on(toml, backend, &url, dir).await
}

/// Starts an instance on the database at `database_url`.
async fn start_on(
    toml: &str,
    backend: &Backend,
    database_url: &str,
    dir: tempfile::TempDir,
) -> TestApp {
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
        (
            "KEYWARDEN_DATABASE_URL".to_string(),
            database_url.to_string(),
        ),
        // Instances sharing a PostgreSQL database must share the pepper too.
        (
            "KEYWARDEN_PEPPER".to_string(),
            "traffic-test-pepper-0123456789abcdef".to_string(),
        ),
    ];
    let mut config = Config::from_parts(toml, &vars).expect("test config");
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    if let Backend::Redis { url, prefix } = backend {
        config.store.redis_url = url.clone();
        config.store.redis_prefix = prefix.clone();
    }
    spawn_config(config, dir).await
}

/// Removes an instance's Redis keys (they would expire anyway).
async fn clear_redis(app: &TestApp) {
    if let Some(r) = app.state.verifier.limiter().redis() {
        let _ = r.clear().await;
    }
}

/// Runs a scenario once with in-process limits and once with Redis.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Local).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(backend) = super::Backend::redis() else { return };
                    super::$name(backend).await;
                }
            )*
        }
    };
}

both!(
    a_burst_of_n_is_admitted_and_n_plus_one_refused_with_retry_after,
    the_verify_api_reports_the_same_figures,
    lockout_locks_the_address_until_it_expires,
    a_forged_forwarded_for_from_an_untrusted_peer_changes_nothing,
    a_client_a_trusted_proxy_cannot_name_is_locked_out_apart,
    quotas_roll_over_at_the_end_of_the_utc_month_and_day,
    a_plan_change_applies_at_once_mid_period,
    unknown_keys_and_addresses_leave_no_unbounded_state,
);

/// `POST /v1/verify` with the root key.
async fn verify(app: &TestApp, body: Value) -> Value {
    app.verify(body).await
}

/// The `ratelimit` figures of a verify answer: (limit, remaining, reset, window).
fn figures(v: &Value) -> (u64, u64, u64, u64) {
    let r = &v["ratelimit"];
    let n = |f: &str| {
        r[f].as_u64()
            .unwrap_or_else(|| panic!("ratelimit.{f} in {v}"))
    };
    (n("limit"), n("remaining"), n("reset"), n("window"))
}

/// Asserts a refusal of the verify API with this code and retry-after.
#[track_caller]
fn assert_refused(v: &Value, code: &str, retry_after: u64) {
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], 429, "{v}");
    assert_eq!(v["retry_after"], retry_after, "{v}");
}

/// An account on `plan` with one live key; returns (account id, key id, token).
async fn customer(app: &TestApp, plan: Option<&str>) -> (String, String, String) {
    let mut body = json!({ "name": "Acme" });
    if let Some(p) = plan {
        body["plan"] = json!(p);
    }
    let res = app
        .admin(Method::POST, "/v1/admin/accounts", Some(body))
        .await;
    let v: Value = res.json().await.unwrap();
    let account = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string();
    let (key, token) = app.live_key(&account).await;
    (account, key, token)
}

// ---- rate limits --------------------------------------------------------------------------

async fn a_burst_of_n_is_admitted_and_n_plus_one_refused_with_retry_after(backend: Backend) {
    let app = start(
        "[plans.tiers.default]\nrequests_per_minute = 50\n",
        &backend,
    )
    .await;
    let (_, _, token) = customer(&app, None).await;
    // T = 1.2 s per request; the bucket holds 50.
    for i in 0..50u64 {
        let a = app.whoami(&token).await;
        assert_eq!(a.status, 200, "request {} of the burst: {}", i + 1, a.body);
        assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=50;w=60"));
        let reset = ((i + 1) * 1_200).div_ceil(1_000);
        assert_eq!(
            a.header("ratelimit"),
            Some(format!("\"default\";r={};t={reset}", 49 - i).as_str()),
            "request {}",
            i + 1
        );
    }
    // Request 51 needs 1.2 s of refill: Retry-After rounds up to 2.
    let a = app.whoami(&token).await.err(429, "rate_limit_exceeded");
    assert_eq!(a.body["error"]["type"], "rate_limit_error");
    assert_eq!(a.header("retry-after"), Some("2"));
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=50;w=60"));
    assert_eq!(a.header("ratelimit"), Some("\"default\";r=0;t=60"));
    // One second later 0.2 s are still missing: never a Retry-After of 0.
    app.clock.advance_secs(1);
    let a = app.whoami(&token).await.err(429, "rate_limit_exceeded");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.header("ratelimit"), Some("\"default\";r=0;t=59"));
    // Waiting the advertised time is enough, for one request.
    app.clock.advance_secs(1);
    let a = app.whoami(&token).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("ratelimit"), Some("\"default\";r=0;t=60"));
    app.whoami(&token).await.err(429, "rate_limit_exceeded");
    // A full window later the bucket is full again.
    app.clock.advance_secs(60);
    let a = app.whoami(&token).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("ratelimit"), Some("\"default\";r=49;t=2"));
    clear_redis(&app).await;
    app.stop().await;
}

async fn the_verify_api_reports_the_same_figures(backend: Backend) {
    let app = start(
        "[plans.tiers.default]\nrequests_per_minute = 50\n",
        &backend,
    )
    .await;
    let (account, _, token) = customer(&app, None).await;
    // The plan's 50 per minute: after 38 requests at once, 12 remain and the bucket is full
    // again in 45.6 s.
    let mut v = Value::Null;
    for _ in 0..38 {
        v = verify(&app, json!({ "key": token })).await;
        assert_eq!(v["valid"], true, "{v}");
    }
    assert_eq!(figures(&v), (50, 12, 46, 60));
    // Ten seconds later one more: 36.8 s of backlog leave room for 19.
    app.clock.advance_secs(10);
    let v = verify(&app, json!({ "key": token })).await;
    assert_eq!(figures(&v), (50, 19, 37, 60));
    // The same figures go into the headers of the self-service API.
    let a = app.whoami(&token).await;
    assert_eq!(a.header("ratelimit"), Some("\"default\";r=18;t=38"));

    // A key's own rate limit replaces the plan's: 7 per minute, T = 8.571 s.
    let k = app
        .key(
            &account,
            json!({ "mode": "live", "name": "slow", "rate_limit": { "requests": 7, "per_seconds": 60 } }),
        )
        .await;
    let slow = k["api_key"].as_str().unwrap();
    let v = verify(&app, json!({ "key": slow })).await;
    assert_eq!(figures(&v), (7, 6, 9, 60));
    for _ in 0..6 {
        assert_eq!(verify(&app, json!({ "key": slow })).await["valid"], true);
    }
    let v = verify(&app, json!({ "key": slow })).await;
    assert_refused(&v, "rate_limit_exceeded", 9);
    assert_eq!(figures(&v), (7, 0, 60, 60));
    let a = app.whoami(slow).await.err(429, "rate_limit_exceeded");
    assert_eq!(a.header("retry-after"), Some("9"));
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=7;w=60"));
    app.clock.advance_secs(9);
    assert_eq!(verify(&app, json!({ "key": slow })).await["valid"], true);
    clear_redis(&app).await;
    app.stop().await;
}

// ---- lockout ------------------------------------------------------------------------------

const LOCKOUT: &str =
    "[auth]\nlockout = { max_failures = 3, window_seconds = 60, lock_seconds = 120 }\n";

async fn lockout_locks_the_address_until_it_expires(backend: Backend) {
    let app = start(LOCKOUT, &backend).await;
    let (_, _, token) = customer(&app, None).await;
    let bad = "kw_sk_live_0000000000000000000000000000000000";
    let try_key = |key: &str, ip: &str| {
        let body = json!({ "key": key, "ip": ip });
        let app = &app;
        async move { verify(app, body).await }
    };
    // Two failures, then a minute passes: the window closes and counting starts over.
    for _ in 0..2 {
        assert_eq!(try_key(bad, "203.0.113.7").await["code"], "invalid_api_key");
    }
    app.clock.advance_secs(60);
    for _ in 0..2 {
        assert_eq!(try_key(bad, "203.0.113.7").await["code"], "invalid_api_key");
    }
    assert_eq!(try_key(&token, "203.0.113.7").await["valid"], true);
    // The third failure within the window locks the address for 120 s, valid key or not.
    assert_eq!(try_key(bad, "203.0.113.7").await["code"], "invalid_api_key");
    assert_refused(
        &try_key(&token, "203.0.113.7").await,
        "too_many_auth_failures",
        120,
    );
    // A valid key from another address is unaffected.
    assert_eq!(try_key(&token, "203.0.113.8").await["valid"], true);
    // IPv6 counts per /64: three addresses of one /64 lock all of it, and only it.
    for host in ["1", "2", "3"] {
        let ip = format!("2001:db8:1:2::{host}");
        assert_eq!(try_key(bad, &ip).await["code"], "invalid_api_key");
    }
    assert_refused(
        &try_key(&token, "2001:db8:1:2:ffff::9").await,
        "too_many_auth_failures",
        120,
    );
    assert_eq!(try_key(&token, "2001:db8:1:3::1").await["valid"], true);
    // Failures while locked neither count nor extend the lock.
    app.clock.advance_secs(100);
    assert_refused(
        &try_key(bad, "203.0.113.7").await,
        "too_many_auth_failures",
        20,
    );
    app.clock.advance_secs(19);
    assert_refused(
        &try_key(&token, "203.0.113.7").await,
        "too_many_auth_failures",
        1,
    );
    // The lock ends on time, and the next failure counts from one.
    app.clock.advance_secs(1);
    assert_eq!(try_key(&token, "203.0.113.7").await["valid"], true);
    assert_eq!(try_key(bad, "203.0.113.7").await["code"], "invalid_api_key");
    assert_eq!(try_key(&token, "203.0.113.7").await["valid"], true);
    // The /64 is free again too.
    assert_eq!(try_key(&token, "2001:db8:1:2::1").await["valid"], true);
    clear_redis(&app).await;
    app.stop().await;
}

async fn a_forged_forwarded_for_from_an_untrusted_peer_changes_nothing(backend: Backend) {
    // No trusted proxy: the peer (127.0.0.1) is the client, whatever it claims.
    let app = start(LOCKOUT, &backend).await;
    let (_, _, token) = customer(&app, None).await;
    let bad = "kw_sk_live_0000000000000000000000000000000000";
    let call = |key: &str, xff: &str| {
        app.public_request(Method::GET, "/v1/account")
            .bearer_auth(key)
            .header("x-forwarded-for", xff)
            .send()
    };
    for i in 0..3 {
        let a = Answer::of(call(bad, &format!("198.51.100.{i}")).await.unwrap()).await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    let a = Answer::of(call(&token, "198.51.100.200").await.unwrap()).await;
    let a = a.err(429, "too_many_auth_failures");
    assert_eq!(a.header("retry-after"), Some("120"));
    clear_redis(&app).await;
    app.stop().await;

    // Behind a trusted proxy the forwarded address is the client.
    let toml = format!("{LOCKOUT}[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
    let app = start(&toml, &backend.via_fresh_prefix()).await;
    let (_, _, token) = customer(&app, None).await;
    let call = |key: &str, xff: &str| {
        app.public_request(Method::GET, "/v1/account")
            .bearer_auth(key)
            .header("x-forwarded-for", xff)
            .send()
    };
    for _ in 0..3 {
        let a = Answer::of(call(bad, "198.51.100.1").await.unwrap()).await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    Answer::of(call(&token, "198.51.100.1").await.unwrap())
        .await
        .err(429, "too_many_auth_failures");
    let a = Answer::of(call(&token, "198.51.100.2").await.unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A client cannot hide behind an address it prepends: the right-most untrusted hop is
    // the client.
    Answer::of(call(&token, "198.51.100.2, 198.51.100.1").await.unwrap())
        .await
        .err(429, "too_many_auth_failures");
    let a = Answer::of(call(&token, "198.51.100.1, 198.51.100.2").await.unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    clear_redis(&app).await;
    app.stop().await;
}

async fn a_client_a_trusted_proxy_cannot_name_is_locked_out_apart(backend: Backend) {
    // The proxy (127.0.0.1) forwards clients; some it names with something that is no
    // address. They are unknown, not the proxy.
    let toml = format!("{LOCKOUT}[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
    let app = start(&toml, &backend).await;
    let (_, _, token) = customer(&app, None).await;
    let bad = "kw_sk_live_0000000000000000000000000000000000";
    let call = |key: &str, xff: &[u8]| {
        let mut req = app
            .public_request(Method::GET, "/v1/account")
            .bearer_auth(key);
        if !xff.is_empty() {
            req = req.header(
                "x-forwarded-for",
                reqwest::header::HeaderValue::from_bytes(xff).unwrap(),
            );
        }
        req.send()
    };
    // Three failures (the lockout's limit) from clients the proxy could not name...
    for xff in [
        &b"unknown"[..],
        b"203.0.113.7, garbage",
        b"198.51.100.1\xff",
    ] {
        let a = Answer::of(call(bad, xff).await.unwrap()).await;
        assert_eq!(a.status, 401, "{}", a.body);
    }
    // ...lock out every client it cannot name...
    Answer::of(call(&token, b"_hidden").await.unwrap())
        .await
        .err(429, "too_many_auth_failures");
    // ...and neither the proxy itself nor any client with an address.
    for xff in [&b""[..], b"127.0.0.1", b"198.51.100.1", b"203.0.113.7"] {
        let a = Answer::of(call(&token, xff).await.unwrap()).await;
        assert_eq!(
            a.status,
            200,
            "{}: {}",
            String::from_utf8_lossy(xff),
            a.body
        );
    }
    clear_redis(&app).await;
    app.stop().await;
}

impl Backend {
    /// The same kind of backend with a prefix of its own.
    fn via_fresh_prefix(&self) -> Backend {
        match self {
            Backend::Redis { url, .. } => Backend::Redis {
                url: url.clone(),
                prefix: format!("kwtest:{}", ulid::Ulid::new()),
            },
            Backend::Local => Backend::Local,
        }
    }
}

// ---- plans and quotas ---------------------------------------------------------------------

/// Unix milliseconds of an RFC 3339 instant.
fn ms(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// The quota of `unit` in a verify answer.
fn quota<'a>(v: &'a Value, unit: &str) -> &'a Value {
    v["quotas"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["unit"] == unit))
        .unwrap_or_else(|| panic!("no {unit} quota in {v}"))
}

async fn quotas_roll_over_at_the_end_of_the_utc_month_and_day(backend: Backend) {
    let app = start(
        r#"
[plans.tiers.default]
quotas = [
  { unit = "words", limit = 100, period = "month" },
  { unit = "requests", limit = 1000, period = "day" },
]
"#,
        &backend,
    )
    .await;
    let (account, _, token) = customer(&app, None).await;
    app.clock.set_ms(ms("2026-03-31T23:59:30Z"));
    let words = |n: u64| {
        let body = json!({ "key": token, "cost": { "words": n } });
        let app = &app;
        async move { verify(app, body).await }
    };
    let v = words(60).await;
    assert_eq!(v["valid"], true, "{v}");
    let q = quota(&v, "words");
    assert_eq!((&q["used"], &q["remaining"]), (&json!(60), &json!(40)));
    assert_eq!(q["period_start"], "2026-03-01T00:00:00Z");
    assert_eq!(q["period_end"], "2026-04-01T00:00:00Z");
    // More than what is left is refused until the month ends, in 30 s, and nothing of it
    // is consumed (neither words nor the request itself).
    let v = words(50).await;
    assert_refused(&v, "quota_exceeded", 30);
    assert_eq!(quota(&v, "words")["used"], 60);
    let v = words(40).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(quota(&v, "words")["remaining"], 0);
    assert_eq!(quota(&v, "requests")["used"], 2);
    app.clock.advance_secs(29);
    assert_refused(&words(1).await, "quota_exceeded", 1);
    // Midnight UTC on the first: a new month and a new day, both counters from zero.
    app.clock.advance_secs(1);
    let v = words(1).await;
    assert_eq!(v["valid"], true, "{v}");
    let q = quota(&v, "words");
    assert_eq!((&q["used"], &q["remaining"]), (&json!(1), &json!(99)));
    assert_eq!(q["period_start"], "2026-04-01T00:00:00Z");
    assert_eq!(q["period_end"], "2026-05-01T00:00:00Z");
    assert_eq!(quota(&v, "requests")["used"], 1);
    // Usage reported after the fact counts against the same quota.
    let res = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{account}/usage"),
            Some(json!({ "unit": "words", "amount": 98 })),
        )
        .await;
    let status = res.status();
    let usage: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["words_used"], 99, "{usage}");
    assert_refused(&words(2).await, "quota_exceeded", 30 * 86_400);
    assert_eq!(words(1).await["valid"], true);
    let usage = app
        .call(Method::GET, "/v1/account/usage", &token, None)
        .await
        .ok(200);
    assert_eq!(usage["words_used"], 100, "{usage}");
    assert_eq!(usage["words_remaining"], 0);
    assert_eq!(usage["requests_used"], 3, "{usage}");
    assert_eq!(usage["period_start"], "2026-04-01T00:00:00Z");
    // The next day only the daily counter starts over.
    app.clock.set_ms(ms("2026-04-02T00:00:00Z"));
    let v = words(0).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(quota(&v, "requests")["used"], 1);
    assert_eq!(quota(&v, "words")["used"], 100);
    clear_redis(&app).await;
    app.stop().await;
}

const PLANS: &str = r#"
[plans]
default = "free"
[plans.tiers.free]
requests_per_minute = 5
quotas = [ { unit = "words", limit = 100, period = "month" } ]
[plans.tiers.pro]
requests_per_minute = 50
quotas = [ { unit = "words", limit = 1000, period = "month" } ]
"#;

async fn a_plan_change_applies_at_once_mid_period(backend: Backend) {
    let app = start(PLANS, &backend).await;
    let (account, _, token) = customer(&app, None).await;
    let words = |n: u64| {
        let body = json!({ "key": token, "cost": { "words": n } });
        let app = &app;
        async move { verify(app, body).await }
    };
    let v = words(100).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(figures(&v).0, 5);
    assert_refused(&words(1).await, "quota_exceeded", 12 * 86_400 - 10 * 3_600);
    // Upgrade: the words already used count against the larger quota, and the larger rate
    // limit applies to the very next request.
    let res = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/accounts/{account}"),
            Some(json!({ "plan": "pro" })),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v = words(1).await;
    assert_eq!(v["valid"], true, "{v}");
    let q = quota(&v, "words");
    assert_eq!((&q["used"], &q["limit"]), (&json!(101), &json!(1000)));
    // The pro plan's limit starts afresh: what the free plan's bucket holds does not carry
    // over (so an upgrade lifts a limit already hit), and this request is its first.
    assert_eq!(figures(&v), (50, 49, 2, 60));
    for _ in 0..5 {
        assert_eq!(words(1).await["valid"], true);
    }
    // Downgrade: 106 words are over the free quota, so the next word is refused at once.
    let res = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/accounts/{account}"),
            Some(json!({ "plan": "free" })),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v = words(1).await;
    assert_refused(&v, "quota_exceeded", 12 * 86_400 - 10 * 3_600);
    assert_eq!(quota(&v, "words")["limit"], 100);
    assert_eq!(figures(&v).0, 5);
    let usage = app
        .call(Method::GET, "/v1/account/usage", &token, None)
        .await
        .ok(200);
    assert_eq!(usage["plan"], "free");
    assert_eq!(
        (&usage["words_used"], &usage["words_limit"]),
        (&json!(106), &json!(100))
    );
    assert_eq!(usage["words_remaining"], 0);
    clear_redis(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn max_keys_of_the_plan_is_enforced_on_creation() {
    let app = start(
        r#"
[plans]
default = "two"
[plans.tiers.two]
max_keys = 2
[plans.tiers.none]
max_keys = 0
"#,
        &Backend::Local,
    )
    .await;
    let (account, _, token) = customer(&app, None).await;
    app.live_key(&account).await;
    let res = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{account}/keys"),
            Some(json!({ "mode": "live", "name": "third" })),
        )
        .await;
    Answer::of(res).await.err(403, "plan_limit_reached");
    app.call(
        Method::POST,
        "/v1/api-keys",
        &token,
        Some(json!({ "name": "third" })),
    )
    .await
    .err(403, "plan_limit_reached");
    // A plan without API keys refuses the first one.
    let res = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Keyless", "plan": "none" })),
        )
        .await;
    let v: Value = res.json().await.unwrap();
    let other = v["id"].as_str().unwrap().to_string();
    let res = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{other}/keys"),
            Some(json!({ "mode": "live", "name": "first" })),
        )
        .await;
    Answer::of(res).await.err(403, "plan_limit_reached");
    app.stop().await;
}

#[test]
fn two_quotas_of_one_unit_are_refused_by_the_config_check() {
    let toml = r#"
[plans.tiers.default]
quotas = [
  { unit = "words", limit = 10, period = "day" },
  { unit = "words", limit = 100, period = "month" },
]
"#;
    let config = Config::from_parts(toml, &[]).unwrap();
    let pepper = keywarden_core::Secret::new("traffic-test-pepper-0123456789abcdef");
    let Err(err) = keywarden_server::settings::Settings::from_config(config, Some(pepper)) else {
        panic!("two quotas of one unit were accepted");
    };
    assert_eq!(err.field, "plans.tiers.default.quotas[1].unit", "{err}");
}

// ---- bounded state ------------------------------------------------------------------------

async fn unknown_keys_and_addresses_leave_no_unbounded_state(backend: Backend) {
    let app = start(LOCKOUT, &backend).await;
    // 300 unknown keys from 300 addresses: 200 IPv4 addresses, 100 addresses of one IPv6 /64.
    for i in 0..300u32 {
        let ip = if i < 200 {
            format!("10.1.{}.{}", i / 256, i % 256)
        } else {
            format!("2001:db8:5:5::{i:x}")
        };
        let token = format!("kw_sk_live_{}", ulid::Ulid::new());
        let v = verify(&app, json!({ "key": token, "ip": ip })).await;
        // The /64 is locked after its third failure.
        let code = v["code"].as_str().unwrap();
        assert!(
            code == "invalid_api_key" || (i >= 203 && code == "too_many_auth_failures"),
            "{v}"
        );
    }
    let stats = app.state.verifier.limiter().stats();
    match backend {
        // No rate entry for a key that does not exist; one lockout entry per address, one
        // for the whole /64 (each evicted once idle, and capped in number).
        Backend::Local => {
            assert_eq!(
                (stats.rate_entries, stats.lockout_entries),
                (0, 201),
                "{stats:?}"
            );
        }
        // With Redis nothing is kept in process; the Redis keys expire by themselves.
        Backend::Redis { .. } => {
            assert_eq!(
                (
                    stats.rate_entries,
                    stats.lockout_entries,
                    stats.quota_entries
                ),
                (0, 0, 0),
                "{stats:?}"
            );
            assert_eq!(stats.redis.unwrap().fallbacks, 0);
        }
    }
    clear_redis(&app).await;
    app.stop().await;
}

// ---- several instances on one Redis -------------------------------------------------------

/// One database for several instances: a fresh PostgreSQL database when
/// `KEYWARDEN_TEST_DATABASE_URL` names a server, else one SQLite file.
struct SharedDb {
    url: String,
    /// (admin URL, database name) of a PostgreSQL database to drop at the end.
    pg: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl SharedDb {
    async fn new() -> SharedDb {
        let dir = tempfile::tempdir().unwrap();
        match std::env::var("KEYWARDEN_TEST_DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => {
                let name = format!(
                    "kw_traffic_{}",
                    ulid::Ulid::new().to_string().to_lowercase()
                );
                let pool = sqlx::PgPool::connect(&admin).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                SharedDb {
                    url: with_database(&admin, &name),
                    pg: Some((admin, name)),
                    dir,
                }
            }
            _ => SharedDb {
                url: format!("sqlite://{}", dir.path().join("kw.db").display()),
                pg: None,
                dir,
            },
        }
    }

    /// A directory for one instance (the SQLite file lives in the first one).
    fn dir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.dir.path()).unwrap()
    }

    async fn drop_database(self) {
        if let Some((admin, name)) = self.pg {
            if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&pool)
                    .await;
                pool.close().await;
            }
        }
    }
}

/// `postgres://user@host:port/db?query` with the database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Three instances on one database and one Redis prefix.
async fn three_instances(toml: &str, backend: &Backend, db: &SharedDb) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(start_on(toml, backend, &db.url, db.dir()).await);
    }
    apps
}

/// Sends `n` verify calls at once, spread round-robin over `apps`; returns the answers.
async fn concurrently(apps: &[TestApp], n: usize, body: Value) -> Vec<Value> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = &apps[i % apps.len()];
        let req = app
            .client
            .post(format!("{}/v1/verify", app.admin))
            .bearer_auth(ROOT)
            .json(&body)
            .send();
        tasks.push(tokio::spawn(async move {
            let res = req.await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn three_instances_share_one_rate_limit_through_redis() {
    let Some(backend) = Backend::redis() else {
        return;
    };
    let db = SharedDb::new().await;
    let apps = three_instances(
        "[plans.tiers.default]\nrequests_per_minute = 50\n",
        &backend,
        &db,
    )
    .await;
    let (_, _, token) = customer(&apps[0], None).await;
    let answers = concurrently(&apps, 150, json!({ "key": token })).await;
    let valid = answers.iter().filter(|v| v["valid"] == true).count();
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|v| v["code"] == "rate_limit_exceeded")
        .collect();
    eprintln!(
        "three instances on one {} store, one key at 50/min: {valid} of 150 concurrent \
         requests admitted",
        if db.pg.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    assert_eq!(valid, 50, "admitted across three instances");
    assert_eq!(limited.len(), 100);
    for v in limited {
        assert_eq!(v["status"], 429);
        let retry = v["retry_after"].as_u64().unwrap();
        assert!((1..=60).contains(&retry), "{v}");
    }
    for app in &apps {
        let stats = app.state.verifier.limiter().stats();
        assert_eq!(stats.rate_entries, 0, "nothing decided in process");
        let redis = stats.redis.unwrap();
        assert!(redis.healthy);
        assert_eq!(redis.fallbacks, 0);
    }
    clear_redis(&apps[0]).await;
    for app in apps {
        app.stop().await;
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn three_instances_share_quotas_and_lockouts_through_redis() {
    let Some(backend) = Backend::redis() else {
        return;
    };
    let db = SharedDb::new().await;
    let toml = format!(
        "{LOCKOUT}[plans.tiers.default]\nrequests_per_minute = 1000\n\
         quotas = [ {{ unit = \"requests\", limit = 30, period = \"day\" }} ]\n"
    );
    let apps = three_instances(&toml, &backend, &db).await;
    let (_, _, token) = customer(&apps[0], None).await;
    let answers = concurrently(&apps, 90, json!({ "key": token })).await;
    let valid = answers.iter().filter(|v| v["valid"] == true).count();
    let exceeded = answers
        .iter()
        .filter(|v| v["code"] == "quota_exceeded")
        .count();
    assert_eq!((valid, exceeded), (30, 60));
    // Every instance sees the quota used up: the self-service call, which costs one request
    // too, is refused everywhere.
    for app in &apps {
        let usage = app
            .call(Method::GET, "/v1/account/usage", &token, None)
            .await;
        usage.err(429, "quota_exceeded");
    }
    // Failures from one address, spread over the instances, lock it on all of them.
    let bad = "kw_sk_live_0000000000000000000000000000000000";
    for app in &apps {
        let v = verify(app, json!({ "key": bad, "ip": "192.0.2.50" })).await;
        assert_eq!(v["code"], "invalid_api_key");
    }
    for app in &apps {
        let v = verify(app, json!({ "key": token, "ip": "192.0.2.50" })).await;
        assert_refused(&v, "too_many_auth_failures", 120);
    }
    for app in &apps {
        assert_eq!(app.state.verifier.limiter().redis_fallbacks(), 0);
    }
    clear_redis(&apps[0]).await;
    for app in apps {
        app.stop().await;
    }
    db.drop_database().await;
}

// ---- Redis unreachable --------------------------------------------------------------------

/// A port on which nothing listens.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A listener that accepts every connection and closes it at once.
async fn closing_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            drop(sock);
        }
    });
    (addr, task)
}

/// With Redis unreachable every limit still holds, decided in process: the rate limit, the
/// lockout and the quota; the fallbacks are counted and the outage is reported once.
async fn limits_hold_without_redis(redis_url: String) {
    let backend = Backend::Redis {
        url: redis_url,
        prefix: format!("kwtest:{}", ulid::Ulid::new()),
    };
    let toml = format!(
        "{LOCKOUT}[plans.tiers.default]\nrequests_per_minute = 5\n\
         quotas = [ {{ unit = \"words\", limit = 10, period = \"month\" }} ]\n"
    );
    let app = start(&toml, &backend).await;
    let (_, _, token) = customer(&app, None).await;
    let started = Instant::now();
    for i in 0..5 {
        let a = app.whoami(&token).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=5;w=60"));
    }
    let a = app.whoami(&token).await.err(429, "rate_limit_exceeded");
    assert_eq!(a.header("retry-after"), Some("12"));
    app.clock.advance_secs(60);
    let v = verify(&app, json!({ "key": token, "cost": { "words": 10 } })).await;
    assert_eq!(v["valid"], true, "{v}");
    let v = verify(&app, json!({ "key": token, "cost": { "words": 1 } })).await;
    assert_eq!(v["code"], "quota_exceeded", "{v}");
    for _ in 0..3 {
        let v = verify(&app, json!({ "key": "kw_sk_live_x", "ip": "192.0.2.1" })).await;
        assert_eq!(v["code"], "invalid_api_key");
    }
    let v = verify(&app, json!({ "key": token, "ip": "192.0.2.1" })).await;
    assert_refused(&v, "too_many_auth_failures", 120);
    // Nothing waited for Redis long.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let limiter = app.state.verifier.limiter();
    let redis = limiter.stats().redis.unwrap();
    assert!(!redis.healthy);
    assert_eq!(redis.outages, 1, "one outage, reported once");
    assert!(limiter.redis_fallbacks() >= 10, "{redis:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_fall_back_to_the_process_when_nothing_listens() {
    limits_hold_without_redis(format!("redis://127.0.0.1:{}", dead_port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_fall_back_to_the_process_when_redis_closes_every_connection() {
    let (addr, task) = closing_listener().await;
    limits_hold_without_redis(format!("redis://{addr}")).await;
    task.abort();
}

/// A TCP forwarder to Redis that the test switches off (existing connections cut, new ones
/// closed at once) and on again.
struct Forwarder {
    addr: SocketAddr,
    on: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let on = Arc::new(AtomicBool::new(true));
        let pipes: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (on2, pipes2) = (on.clone(), pipes.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !on2.load(Ordering::SeqCst) {
                    continue;
                }
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                pipes2.lock().unwrap().push(pipe.abort_handle());
            }
        });
        Forwarder {
            addr,
            on,
            pipes,
            task,
        }
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
        if !on {
            for pipe in self.pipes.lock().unwrap().drain(..) {
                pipe.abort();
            }
        }
    }
}

/// `redis://[userinfo@]host:port[/db]` → (host:port, the URL with `addr` in its place).
async fn redirect(url: &str, addr: SocketAddr) -> (SocketAddr, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    };
    let target = tokio::net::lookup_host(hostport)
        .await
        .unwrap()
        .next()
        .unwrap();
    (target, format!("{scheme}://{userinfo}{addr}{path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_are_shared_again_when_redis_comes_back() {
    let Some(backend) = Backend::redis() else {
        return;
    };
    let Backend::Redis { url, .. } = &backend else {
        unreachable!()
    };
    let (target, _) = redirect(url, "127.0.0.1:1".parse().unwrap()).await;
    let fwd = Forwarder::start(target).await;
    let (_, via_fwd) = redirect(url, fwd.addr).await;
    let db = SharedDb::new().await;
    // Instance A reaches Redis through the forwarder, instance B directly.
    let toml = "[plans.tiers.default]\n\
                quotas = [ { unit = \"words\", limit = 1000, period = \"month\" } ]\n";
    let a = start_on(toml, &backend.via(via_fwd), &db.url, db.dir()).await;
    let b = start_on(toml, &backend, &db.url, db.dir()).await;
    let (account, _, _) = customer(&a, None).await;
    let limited = |n: u32| {
        let a = &a;
        let account = account.clone();
        async move {
            let k = a
                .key(
                    &account,
                    json!({ "mode": "live", "name": "k", "rate_limit": { "requests": n, "per_seconds": 60 } }),
                )
                .await;
            k["api_key"].as_str().unwrap().to_string()
        }
    };
    let check = |app: &TestApp, token: String| {
        let body = json!({ "key": token });
        let req = app
            .client
            .post(format!("{}/v1/verify", app.admin))
            .bearer_auth(ROOT)
            .json(&body)
            .send();
        async move { req.await.unwrap().json::<Value>().await.unwrap()["valid"] == true }
    };
    // Words used by the account, as `app` sees them after using `n` more.
    let words = |app: &TestApp, token: String, n: u64| {
        let req = app
            .client
            .post(format!("{}/v1/verify", app.admin))
            .bearer_auth(ROOT)
            .json(&json!({ "key": token, "cost": { "words": n } }))
            .send();
        async move {
            let v: Value = req.await.unwrap().json().await.unwrap();
            assert_eq!(v["valid"], true, "{v}");
            quota(&v, "words")["used"].as_u64().unwrap()
        }
    };
    let kq = limited(1_000).await;

    // Redis up: one budget for both instances.
    let k1 = limited(4).await;
    assert!(check(&a, k1.clone()).await);
    assert!(check(&a, k1.clone()).await);
    assert!(check(&b, k1.clone()).await);
    assert!(check(&b, k1.clone()).await);
    assert!(!check(&a, k1.clone()).await);
    assert!(!check(&b, k1.clone()).await);
    assert_eq!(words(&a, kq.clone(), 10).await, 10);
    assert_eq!(words(&b, kq.clone(), 0).await, 10);
    assert_eq!(a.state.verifier.limiter().redis_fallbacks(), 0);

    // Redis cut off from A: A limits on its own, B (still on Redis) does not see A's use.
    fwd.set(false);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let k2 = limited(3).await;
    for _ in 0..3 {
        assert!(check(&a, k2.clone()).await);
    }
    assert!(
        !check(&a, k2.clone()).await,
        "A still limits while Redis is away"
    );
    let stats = a.state.verifier.limiter().stats().redis.unwrap();
    assert!(!stats.healthy);
    assert_eq!(stats.outages, 1);
    assert!(stats.fallbacks >= 4, "{stats:?}");
    assert!(check(&b, k2.clone()).await, "B never saw A's requests");
    // Quota units spent on A meanwhile are counted on A (from the stored usage on).
    words(&a, kq.clone(), 20).await;
    assert_eq!(
        words(&b, kq.clone(), 0).await,
        10,
        "B has not seen them yet"
    );

    // Redis back: A reconnects by itself and the budget is shared again.
    fwd.set(true);
    let k3 = limited(1_000).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a.state.verifier.limiter().stats().redis.unwrap().healthy {
        assert!(Instant::now() < deadline, "A did not reconnect");
        assert!(check(&a, k3.clone()).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fallbacks = a.state.verifier.limiter().redis_fallbacks();
    let k4 = limited(4).await;
    assert!(check(&a, k4.clone()).await);
    assert!(check(&b, k4.clone()).await);
    assert!(check(&a, k4.clone()).await);
    assert!(check(&b, k4.clone()).await);
    assert!(!check(&a, k4.clone()).await);
    assert!(!check(&b, k4.clone()).await);
    // The words spent on A during the outage were handed over to the shared counter.
    let deadline = Instant::now() + Duration::from_secs(5);
    while words(&b, kq.clone(), 0).await != 30 {
        assert!(Instant::now() < deadline, "A's words never reached Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(words(&a, kq.clone(), 0).await, 30);
    assert_eq!(a.state.verifier.limiter().stats().quota_entries, 0);
    let stats = a.state.verifier.limiter().stats().redis.unwrap();
    assert_eq!(stats.fallbacks, fallbacks, "no fallback once reconnected");
    assert_eq!(stats.outages, 1);
    assert!(stats.connects >= 2, "{stats:?}");

    clear_redis(&b).await;
    fwd.task.abort();
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

// ---- replicas on one PostgreSQL ----------------------------------------------------------

/// Asks `check` every 20 ms for up to 3 s; whether it came true. The caches' TTL is 60 s,
/// so within that time only the notification from the other replica can make it true.
async fn soon<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_one_replica_is_enforced_by_the_others_at_once() {
    let db = SharedDb::new().await;
    if db.pg.is_none() {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping this PostgreSQL test");
        return;
    }
    let a = start_on("", &Backend::Local, &db.url, db.dir()).await;
    let b = start_on("", &Backend::Local, &db.url, db.dir()).await;
    let acc = a.account("Acme").await;
    let (id, token) = a.live_key(&acc).await;
    let (rotated_id, rotated) = a.live_key(&acc).await;
    let (_, other) = a.live_key(&acc).await;
    // B knows an unknown key as unknown, and has the others cached.
    for key in [&token, &rotated, &other] {
        b.assert_key_works(key).await;
    }

    // Revoked on A: refused on B.
    a.admin_call(
        Method::POST,
        &format!("/v1/admin/keys/{id}/revoke"),
        Some(json!({})),
    )
    .await
    .ok(200);
    assert!(
        soon(|| async { b.whoami(&token).await.code() == "api_key_revoked" }).await,
        "B still accepts a key revoked on A"
    );

    // Rolled on A: the old secret is refused on B, the new one works there.
    let new = a
        .admin_call(
            Method::POST,
            &format!("/v1/admin/keys/{rotated_id}/rotate"),
            Some(json!({ "grace_period_seconds": 0 })),
        )
        .await
        .ok(200)["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        soon(|| async { b.whoami(&rotated).await.code() == "api_key_revoked" }).await,
        "B still accepts a secret rolled on A"
    );
    b.assert_key_works(&new).await;

    // The account suspended on A: B refuses its keys.
    a.set_account_status(&acc, "suspended").await;
    assert!(
        soon(|| async { b.whoami(&other).await.code() == "account_inactive" }).await,
        "B still serves an account suspended on A"
    );

    // Erased on A: B no longer knows the keys at all.
    a.admin_call(Method::DELETE, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .ok(200);
    assert!(
        soon(|| async { b.whoami(&new).await.code() == "invalid_api_key" }).await,
        "B still knows a key of an account erased on A"
    );

    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}
