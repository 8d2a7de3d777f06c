//! `POST /v1/verify` as a backend uses it: every answer is 200 and the body's `status`
//! is what the backend should answer its own client.

mod common;

use common::{spawn_app, spawn_app_with, TestApp, ROOT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const CATALOG: &str = r#"
[scopes]
catalog = [
  { name = "invoices:read", description = "Read invoices" },
  { name = "invoices:write", description = "Write invoices" },
  { name = "reports:read", description = "Read reports" },
]
"#;

/// Asserts a denied verification: `valid` false, the code and the status.
fn assert_denied(v: &Value, code: &str, status: u16) {
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message explains the denial: {v}"
    );
}

fn assert_valid(v: &Value) {
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["code"], "valid", "{v}");
    assert_eq!(v["status"], 200, "{v}");
}

/// A verify call with an arbitrary bearer (or none).
async fn verify_as(app: &TestApp, bearer: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/v1/verify", app.admin))
        .json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    req.send().await.unwrap()
}

/// Changes the last character of a token to another base62 character.
fn corrupt_last(token: &str) -> String {
    let mut t = token.to_string();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

#[tokio::test]
async fn a_valid_key_reports_key_account_and_rate_limit() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let created = app
        .key(&acc, json!({ "mode": "live", "name": "backend" }))
        .await;
    let token = created["api_key"].as_str().unwrap();

    let v = app.verify(json!({ "key": token })).await;
    assert_valid(&v);
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    let key = &v["key"];
    assert_eq!(key["id"], created["id"]);
    assert_eq!(key["name"], "backend");
    assert_eq!(key["mode"], "live");
    assert_eq!(key["type"], "secret");
    // `*` is reported as the effective scopes it grants.
    let scopes = key["scopes"].as_array().unwrap();
    for s in ["account:read", "api_keys:write", "usage:read"] {
        assert!(scopes.contains(&json!(s)), "{key}");
    }
    assert_eq!(key["prefix"], created["prefix"]);
    assert_eq!(key["start"], created["start"]);
    assert_eq!(key["key_hash"], created["key_hash"]);
    assert_eq!(v["account"]["id"], acc);
    assert_eq!(v["account"]["name"], "Acme");
    assert_eq!(v["account"]["status"], "active");
    assert_eq!(v["account"]["plan"], "default");
    // The default plan allows 600 requests a minute; this was the first.
    assert_eq!(v["ratelimit"]["limit"], 600);
    assert_eq!(v["ratelimit"]["remaining"], 599);
    assert!(v["ratelimit"]["reset"].is_u64(), "{v}");
    // The answer never repeats the secret.
    assert!(!v.to_string().contains(token));
    assert!(v.get("retry_after").is_none());
    app.stop().await;
}

#[tokio::test]
async fn no_key_is_missing_api_key() {
    let app = spawn_app().await;
    assert_denied(&app.verify(json!({})).await, "missing_api_key", 401);
    assert_denied(
        &app.verify(json!({ "key": "" })).await,
        "missing_api_key",
        401,
    );
    app.stop().await;
}

#[tokio::test]
async fn garbage_wrong_checksum_and_unknown_keys_are_invalid() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;

    for garbage in ["nonsense", "kw_sk_live_short", "Bearer xyz", "kw_xx_live_"] {
        let v = app.verify(json!({ "key": garbage })).await;
        assert_denied(&v, "invalid_api_key", 401);
        assert!(v.get("key").is_none(), "no key details for a bad key: {v}");
    }
    // A real key with one character changed fails its checksum.
    let v = app.verify(json!({ "key": corrupt_last(&token) })).await;
    assert_denied(&v, "invalid_api_key", 401);
    // A well-formed key with a right checksum that was never issued.
    let unknown = app.state.settings.template.generate(
        keywarden_core::model::Mode::Live,
        keywarden_core::model::KeyType::Secret,
    );
    let v = app.verify(json!({ "key": unknown.expose() })).await;
    assert_denied(&v, "invalid_api_key", 401);
    assert!(v.get("key").is_none() && v.get("account").is_none(), "{v}");
    // The real key still works.
    assert_valid(&app.verify(json!({ "key": token })).await);
    app.stop().await;
}

#[tokio::test]
async fn revoked_key_is_refused() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    assert_valid(&app.verify(json!({ "key": token })).await);
    let res = app
        .admin(
            Method::POST,
            &format!("/v1/admin/keys/{id}/revoke"),
            Some(json!({ "reason": "leaked" })),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v = app.verify(json!({ "key": token })).await;
    assert_denied(&v, "api_key_revoked", 401);
    assert!(v.get("key").is_none(), "401s carry no key details: {v}");
    app.stop().await;
}

#[tokio::test]
async fn expired_key_is_refused_once_its_time_has_come() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    // T0 is 2026-03-20T10:00:00Z.
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "short", "expires_at": "2026-03-20T11:00:00Z" }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();
    assert_valid(&app.verify(json!({ "key": token })).await);
    app.clock.advance_secs(3599);
    assert_valid(&app.verify(json!({ "key": token })).await);
    app.clock.advance_secs(1);
    assert_denied(
        &app.verify(json!({ "key": token })).await,
        "api_key_expired",
        401,
    );
    app.stop().await;
}

#[tokio::test]
async fn disabled_key_is_refused_and_comes_back_when_enabled() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    assert_valid(&app.verify(json!({ "key": token })).await);
    let path = format!("/v1/admin/keys/{id}");
    let patch =
        |enabled: bool| app.admin(Method::PATCH, &path, Some(json!({ "enabled": enabled })));
    assert_eq!(patch(false).await.status(), 200);
    assert_denied(
        &app.verify(json!({ "key": token })).await,
        "api_key_disabled",
        401,
    );
    assert_eq!(patch(true).await.status(), 200);
    assert_valid(&app.verify(json!({ "key": token })).await);
    app.stop().await;
}

#[tokio::test]
async fn suspended_account_is_inactive() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    assert_valid(&app.verify(json!({ "key": token })).await);
    app.set_account_status(&acc, "suspended").await;
    let v = app.verify(json!({ "key": token })).await;
    assert_denied(&v, "account_inactive", 403);
    // A 403 says whose key it is, so the backend can tell the customer.
    assert_eq!(v["key"]["id"], id.as_str(), "{v}");
    assert_eq!(v["account"]["status"], "suspended", "{v}");
    app.stop().await;
}

#[tokio::test]
async fn pending_account_test_key_works_but_live_key_does_not() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, live) = app.live_key(&acc).await;
    let test = app.key(&acc, json!({ "mode": "test", "name": "t" })).await;
    let test = test["api_key"].as_str().unwrap();
    app.set_account_status(&acc, "pending").await;
    assert_denied(
        &app.verify(json!({ "key": live })).await,
        "account_inactive",
        403,
    );
    assert_valid(&app.verify(json!({ "key": test })).await);
    app.stop().await;
}

#[tokio::test]
async fn ip_allowlist_is_checked_against_the_given_ip() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "office", "ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"] }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();
    assert_valid(&app.verify(json!({ "key": token, "ip": "10.1.2.3" })).await);
    assert_valid(
        &app.verify(json!({ "key": token, "ip": "2001:db8::7" }))
            .await,
    );
    assert_denied(
        &app.verify(json!({ "key": token, "ip": "192.168.1.1" }))
            .await,
        "ip_not_allowed",
        401,
    );
    // Without an IP an allowlisted key cannot be checked, so it fails closed.
    assert_denied(
        &app.verify(json!({ "key": token })).await,
        "ip_not_allowed",
        401,
    );
    // A malformed IP is a bad request, not a decision.
    let res = verify_as(&app, Some(ROOT), json!({ "key": token, "ip": "not-an-ip" })).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("ip"));

    // The refusal is audited as an incident.
    app.state.verifier.writer().flush_now().await.unwrap();
    let events: Value = app
        .admin(
            Method::GET,
            &format!("/v1/admin/events?account_id={acc}&type=key.ip_denied"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let seen = events.as_array().is_some_and(|l| !l.is_empty());
    assert!(seen, "a key.ip_denied event is recorded");
    app.stop().await;
}

#[tokio::test]
async fn mode_of_the_object_must_match_the_key() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, live) = app.live_key(&acc).await;
    let test = app.key(&acc, json!({ "mode": "test", "name": "t" })).await;
    let test = test["api_key"].as_str().unwrap();
    assert_valid(&app.verify(json!({ "key": live, "mode": "live" })).await);
    assert_denied(
        &app.verify(json!({ "key": live, "mode": "test" })).await,
        "mode_mismatch",
        403,
    );
    assert_denied(
        &app.verify(json!({ "key": test, "mode": "live" })).await,
        "mode_mismatch",
        403,
    );
    assert_valid(&app.verify(json!({ "key": test, "mode": "test" })).await);
    app.stop().await;
}

#[tokio::test]
async fn scopes_all_and_any() {
    let app = spawn_app_with(CATALOG).await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "reader", "scopes": ["invoices:read", "reports:read"] }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();

    assert_valid(
        &app.verify(json!({ "key": token, "scopes": ["invoices:read"] }))
            .await,
    );
    assert_valid(
        &app.verify(json!({ "key": token, "scopes": ["invoices:read", "reports:read"] }))
            .await,
    );
    let v = app
        .verify(json!({ "key": token, "scopes": ["invoices:read", "invoices:write"] }))
        .await;
    assert_denied(&v, "insufficient_scope", 403);
    assert_eq!(v["key"]["scopes"], json!(["invoices:read", "reports:read"]));

    assert_valid(
        &app.verify(json!({ "key": token, "any_scopes": ["invoices:write", "reports:read"] }))
            .await,
    );
    assert_denied(
        &app.verify(json!({ "key": token, "any_scopes": ["invoices:write"] }))
            .await,
        "insufficient_scope",
        403,
    );
    // Both given: all of `scopes` and one of `any_scopes`.
    assert_valid(
        &app.verify(json!({
            "key": token, "scopes": ["invoices:read"], "any_scopes": ["invoices:write", "reports:read"]
        }))
        .await,
    );
    assert_denied(
        &app.verify(json!({
            "key": token, "scopes": ["invoices:read"], "any_scopes": ["invoices:write"]
        }))
        .await,
        "insufficient_scope",
        403,
    );
    // A scope outside the catalog is the caller's mistake: 400 naming it.
    let res = verify_as(
        &app,
        Some(ROOT),
        json!({ "key": token, "scopes": ["invoices:fly"] }),
    )
    .await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_scope");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invoices:fly"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_of_the_key_is_enforced_with_retry_after() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "slow", "rate_limit": { "requests": 3, "per_seconds": 60 } }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();
    for remaining in [2, 1, 0] {
        let v = app.verify(json!({ "key": token })).await;
        assert_valid(&v);
        assert_eq!(v["ratelimit"]["limit"], 3, "{v}");
        assert_eq!(v["ratelimit"]["remaining"], remaining, "{v}");
    }
    let v = app.verify(json!({ "key": token })).await;
    assert_denied(&v, "rate_limit_exceeded", 429);
    let retry = v["retry_after"].as_u64().expect("retry_after");
    assert!((1..=60).contains(&retry), "{v}");
    assert_eq!(v["ratelimit"]["remaining"], 0, "{v}");
    // After waiting as told, one more request fits.
    app.clock.advance_secs(retry as i64);
    assert_valid(&app.verify(json!({ "key": token })).await);
    assert_denied(
        &app.verify(json!({ "key": token })).await,
        "rate_limit_exceeded",
        429,
    );
    app.stop().await;
}

#[tokio::test]
async fn quota_is_consumed_by_cost_and_refused_when_used_up() {
    let app = spawn_app_with(
        r#"
[plans.tiers.default]
[plans.tiers.metered]
requests_per_minute = 1000
quotas = [ { unit = "words", limit = 100, period = "month" } ]
"#,
    )
    .await;
    let res = app
        .admin(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Wordy", "plan": "metered" })),
        )
        .await;
    assert_eq!(res.status(), 201);
    let acc = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, token) = app.live_key(&acc).await;

    let v = app
        .verify(json!({ "key": token, "cost": { "words": 60 } }))
        .await;
    assert_valid(&v);
    let q = &v["quotas"][0];
    assert_eq!(q["unit"], "words", "{v}");
    assert_eq!(q["used"], 60, "{v}");
    assert_eq!(q["limit"], 100, "{v}");
    assert_eq!(q["remaining"], 40, "{v}");

    let v = app
        .verify(json!({ "key": token, "cost": { "words": 60 } }))
        .await;
    assert_denied(&v, "quota_exceeded", 429);
    assert!(v["retry_after"].as_u64().is_some_and(|r| r >= 1), "{v}");
    // The refused request consumed nothing: 40 words still fit.
    let v = app
        .verify(json!({ "key": token, "cost": { "words": 40 } }))
        .await;
    assert_valid(&v);
    assert_eq!(v["quotas"][0]["remaining"], 0, "{v}");
    // A request that costs no words is not held back by the words quota.
    assert_valid(&app.verify(json!({ "key": token })).await);
    app.stop().await;
}

#[tokio::test]
async fn api_switched_off_refuses_everything() {
    let app = spawn_app_with("[server]\napi_enabled = false\n").await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    assert_denied(
        &app.verify(json!({ "key": token })).await,
        "api_disabled",
        403,
    );
    assert_denied(&app.verify(json!({})).await, "api_disabled", 403);
    app.stop().await;
}

#[tokio::test]
async fn repeated_failures_lock_out_the_ip_only() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    let bad_ip = "198.51.100.9";
    for i in 0..20 {
        let v = app
            .verify(json!({ "key": format!("kw_sk_live_bad{i}"), "ip": bad_ip }))
            .await;
        assert_denied(&v, "invalid_api_key", 401);
    }
    // Now even the right key from that address is refused.
    let v = app.verify(json!({ "key": token, "ip": bad_ip })).await;
    assert_denied(&v, "too_many_auth_failures", 429);
    let retry = v["retry_after"].as_u64().expect("retry_after");
    assert!((1..=300).contains(&retry), "{v}");
    // Another address is unaffected.
    assert_valid(
        &app.verify(json!({ "key": token, "ip": "198.51.100.10" }))
            .await,
    );
    // The lock ends on time.
    app.clock.advance_secs(300);
    assert_valid(&app.verify(json!({ "key": token, "ip": bad_ip })).await);
    app.stop().await;
}

#[tokio::test]
async fn the_key_can_come_in_the_original_headers() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;

    let v = app
        .verify(json!({ "headers": { "Authorization": format!("Bearer {token}") } }))
        .await;
    assert_valid(&v);
    assert_eq!(v["key"]["id"], id.as_str());
    let v = app
        .verify(json!({ "headers": { "X-API-Key": token } }))
        .await;
    assert_valid(&v);
    // Header names are case-insensitive.
    assert_valid(
        &app.verify(json!({ "headers": { "x-api-key": token } }))
            .await,
    );
    // Another Authorization scheme is ignored.
    assert_denied(
        &app.verify(json!({ "headers": { "Authorization": "Basic dXNlcjpwYXNz" } }))
            .await,
        "missing_api_key",
        401,
    );
    assert_denied(
        &app.verify(json!({ "headers": { "Accept": "application/json" } }))
            .await,
        "missing_api_key",
        401,
    );
    assert_denied(
        &app.verify(json!({ "headers": { "X-API-Key": corrupt_last(&token) } }))
            .await,
        "invalid_api_key",
        401,
    );
    app.stop().await;
}

#[tokio::test]
async fn verify_needs_the_root_key_or_the_verify_token() {
    let var = "KW_TEST_VERIFY_TOKEN_VERIFY_API";
    let verify_token = "vt_verify_api_0123456789abcdef";
    std::env::set_var(var, verify_token);
    let app = spawn_app_with(&format!("[auth]\nverify_token_env = \"{var}\"\n")).await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;

    let res = verify_as(&app, Some(verify_token), json!({ "key": token })).await;
    assert_eq!(res.status(), 200);
    assert_valid(&res.json::<Value>().await.unwrap());
    let res = verify_as(&app, Some(ROOT), json!({ "key": token })).await;
    assert_eq!(res.status(), 200);

    for bearer in [None, Some("wrong-token-wrong-token"), Some(token.as_str())] {
        let res = verify_as(&app, bearer, json!({ "key": token })).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{bearer:?}");
        assert!(res.headers().contains_key("www-authenticate"));
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "root_key_required", "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn without_a_verify_token_only_the_root_key_is_accepted() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    let res = verify_as(&app, None, json!({ "key": token })).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "root_key_required");
    assert!(body["error"]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
    // A customer's key is not a root key.
    let res = verify_as(&app, Some(&token), json!({ "key": token })).await;
    assert_eq!(res.status(), 401);
    // Malformed input is refused with the field named.
    let res = verify_as(&app, Some(ROOT), json!({ "key": token, "colour": "red" })).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("colour"));
    app.stop().await;
}

#[tokio::test]
async fn a_global_key_passes_with_full_access_and_no_account() {
    let var = "KW_TEST_GLOBAL_KEYS_VERIFY_API";
    let global = "global_key_verify_api_0123456789";
    std::env::set_var(var, format!("other_global_key_000000000, {global}"));
    let app = spawn_app_with(&format!("{CATALOG}\n[auth]\nglobal_keys_env = \"{var}\"\n")).await;

    let v = app
        .verify(json!({ "key": global, "scopes": ["invoices:write"] }))
        .await;
    assert_valid(&v);
    assert_eq!(v["key"]["id"], "global", "{v}");
    assert_eq!(v["key"]["scopes"], json!(["*"]), "{v}");
    assert!(v.get("account").is_none(), "{v}");
    assert_valid(
        &app.verify(json!({ "headers": { "X-API-Key": global } }))
            .await,
    );
    // Something close to it is not.
    assert_denied(
        &app.verify(json!({ "key": format!("{global}x") })).await,
        "invalid_api_key",
        401,
    );
    app.stop().await;
}

#[tokio::test]
async fn method_and_path_apply_the_route_rules_when_no_scopes_are_given() {
    let app = spawn_app_with(&format!(
        r#"
default_route = "deny"
{CATALOG}
[[routes]]
path = "/health"
auth = "none"

[[routes]]
path = "/v1/{{resource}}/**"
method_scopes = {{ GET = "{{resource}}:read", POST = "{{resource}}:write" }}
"#
    ))
    .await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "reader", "scopes": ["invoices:read"] }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();

    let ask = |method: &str, path: &str| json!({ "key": token, "method": method, "path": path });
    assert_valid(&app.verify(ask("GET", "/v1/invoices/9")).await);
    assert_denied(
        &app.verify(ask("POST", "/v1/invoices")).await,
        "insufficient_scope",
        403,
    );
    assert_denied(
        &app.verify(ask("GET", "/v1/reports/1")).await,
        "insufficient_scope",
        403,
    );
    // default_route = "deny".
    assert_denied(
        &app.verify(ask("GET", "/elsewhere")).await,
        "insufficient_scope",
        403,
    );
    // A public route needs no key at all.
    assert_valid(
        &app.verify(json!({ "method": "GET", "path": "/health" }))
            .await,
    );
    // Explicit scopes take precedence over the routes.
    assert_valid(
        &app.verify(json!({
            "key": token, "method": "GET", "path": "/elsewhere", "scopes": ["invoices:read"]
        }))
        .await,
    );
    app.stop().await;
}

#[tokio::test]
async fn renamed_codes_are_reported_under_their_new_name() {
    let app =
        spawn_app_with("[errors]\nrename = { api_key_expired = \"api_key_revoked\" }\n").await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "short", "expires_at": "2026-03-20T10:00:01Z" }),
        )
        .await;
    app.clock.advance_secs(2);
    let v = app
        .verify(json!({ "key": created["api_key"], "headers": {} }))
        .await;
    assert_denied(&v, "api_key_revoked", 401);
    app.stop().await;
}

#[tokio::test]
async fn an_unauthenticated_caller_learns_nothing_about_the_input() {
    let app = spawn_app().await;
    for body in [json!({ "colour": "red" }), json!({ "key": 5 })] {
        let res = verify_as(&app, None, body).await;
        assert_eq!(res.status(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "root_key_required", "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_key_in_the_original_query_is_not_kept_in_the_activity() {
    let app = spawn_app_with("[auth]\nsources = [\"query:api_key\"]\n").await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    let v = app
        .verify(json!({ "method": "GET", "path": format!("/v1/invoices?api_key={token}&page=2") }))
        .await;
    assert_valid(&v);
    assert_eq!(v["key"]["id"], id.as_str());
    app.state.verifier.writer().flush_now().await.unwrap();
    let res = app
        .admin(Method::GET, &format!("/v1/admin/keys/{id}/activity"), None)
        .await;
    assert_eq!(res.status(), 200);
    let activity: Value = res.json().await.unwrap();
    let text = activity.to_string();
    assert!(text.contains("/v1/invoices"), "{text}");
    assert!(!text.contains(&token), "the secret was stored: {text}");
    app.stop().await;
}
