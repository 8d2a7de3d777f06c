//! The self-service API (`docs/api.md#self-service-api`) as a customer uses it with one of its own keys: each
//! endpoint's answer, each way a key is refused (`docs/decision.md`), bad input (`docs/errors.md`), paging,
//! rotation and revocation, erasure, and how errors look in every style and language.

mod common;

use common::api::{assert_request_id, Answer};
use common::{spawn_app, spawn_app_with, TestApp};
use keywarden_core::hashing::fingerprint;
use keywarden_core::model::{KeyType, Mode};
use reqwest::Method;
use serde_json::{json, Value};

/// 2026-03-20T10:00:00Z, the test clock's start.
const T0_RFC3339: &str = "2026-03-20T10:00:00Z";

/// An account with one live owner key holding `*`; returns (account id, key id, token).
async fn customer(app: &TestApp, name: &str) -> (String, String, String) {
    let acc = app.account(name).await;
    let (id, token) = app.live_key(&acc).await;
    (acc, id, token)
}

/// A token that parses and has a valid checksum but was never issued.
fn unissued_token(app: &TestApp) -> String {
    app.state
        .settings
        .template
        .generate(Mode::Live, KeyType::Secret)
        .expose()
        .to_string()
}

/// Ids of the keys `GET /v1/api-keys` lists for `token`.
async fn listed_ids(app: &TestApp, token: &str) -> Vec<String> {
    let v = app
        .call(Method::GET, "/v1/api-keys?limit=100", token, None)
        .await
        .ok(200);
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

// ---- GET /v1/account ----------------------------------------------------------------

#[tokio::test]
async fn account_describes_the_caller_and_its_key() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({
                "mode": "live", "name": "ci", "role": "developer",
                "scopes": ["account:read", "api_keys:read"],
                "expires_at": "2026-04-01T00:00:00Z",
            }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();

    let a = app.whoami(token).await;
    assert_request_id(&a.headers);
    let v = a.ok(200);
    assert_eq!(v["account_id"], acc.as_str());
    assert_eq!(v["account_name"], "Acme");
    assert_eq!(v["plan"], "default");
    assert_eq!(v["role"], "developer");
    assert_eq!(v["mode"], "live");
    assert_eq!(v["status"], "active");
    let k = &v["key"];
    assert_eq!(k["id"], created["id"]);
    assert_eq!(k["name"], "ci");
    assert_eq!(k["prefix"], "kw_sk_live_");
    assert_eq!(k["start"], token[..15].to_string());
    assert_eq!(k["scopes"], json!(["account:read", "api_keys:read"]));
    assert_eq!(k["tier"], "default");
    assert_eq!(k["created_at"], T0_RFC3339);
    assert_eq!(k["expires_at"], "2026-04-01T00:00:00Z");
    assert!(k["last_used_at"].is_null(), "never used before: {k}");
    assert!(
        !v.to_string().contains(token),
        "the secret must not be echoed"
    );
    assert!(v.get("api_key").is_none() && k.get("api_key").is_none());

    // Once the use is recorded, the key shows it.
    app.flush_writer().await;
    app.clock.advance_secs(30);
    let v = app.whoami(token).await.ok(200);
    assert_eq!(v["key"]["last_used_at"], T0_RFC3339);
}

#[tokio::test]
async fn the_key_can_be_presented_in_x_api_key() {
    let app = spawn_app().await;
    let (_, _, token) = customer(&app, "Acme").await;
    let res = app
        .public_request(Method::GET, "/v1/account")
        .header("X-API-Key", &token)
        .send()
        .await
        .unwrap();
    Answer::of(res).await.ok(200);
}

// ---- credential failures (`docs/decision.md`) ----------------------------------------------------

#[tokio::test]
async fn a_missing_key_is_401_missing_api_key() {
    let app = spawn_app().await;
    let res = app
        .public_request(Method::GET, "/v1/account")
        .send()
        .await
        .unwrap();
    let a = Answer::of(res).await.err(401, "missing_api_key");
    assert!(a.header("www-authenticate").is_some());
    assert_eq!(a.body["error"]["type"], "authentication_error");

    // An Authorization header of another scheme is not a key.
    let res = app
        .public_request(Method::GET, "/v1/account")
        .basic_auth("user", Some("pass"))
        .send()
        .await
        .unwrap();
    Answer::of(res).await.err(401, "missing_api_key");

    // A stranger learns nothing from a query it sends: the key is asked for first.
    for path in ["/v1/api-keys?limit=lots", "/v1/events?limit=lots"] {
        let res = app.public_request(Method::GET, path).send().await.unwrap();
        Answer::of(res).await.err(401, "missing_api_key");
    }
}

#[tokio::test]
async fn malformed_unknown_and_tampered_keys_are_401_invalid_api_key() {
    let app = spawn_app().await;
    let (_, _, token) = customer(&app, "Acme").await;
    app.assert_key_refused("hello", "invalid_api_key").await;
    app.assert_key_refused(&unissued_token(&app), "invalid_api_key")
        .await;
    // The same token with its checksum broken.
    let mut tampered = token[..token.len() - 1].to_string();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    app.assert_key_refused(&tampered, "invalid_api_key").await;
    // The real one still works.
    app.assert_key_works(&token).await;
}

#[tokio::test]
async fn a_revoked_key_is_401_api_key_revoked_at_once() {
    let app = spawn_app().await;
    let (_, id, token) = customer(&app, "Acme").await;
    app.assert_key_works(&token).await;
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/keys/{id}/revoke"),
        Some(json!({ "reason": "leaked" })),
    )
    .await
    .ok(200);
    app.assert_key_refused(&token, "api_key_revoked").await;
}

#[tokio::test]
async fn an_expired_key_is_401_api_key_expired() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "k", "expires_at": "2026-03-20T11:00:00Z" }),
        )
        .await;
    app.assert_key_works(&token).await;
    app.clock.advance_secs(3599);
    app.assert_key_works(&token).await;
    app.clock.advance_secs(1);
    app.assert_key_refused(&token, "api_key_expired").await;
}

#[tokio::test]
async fn a_disabled_key_is_401_api_key_disabled_until_enabled() {
    let app = spawn_app().await;
    let (_, id, token) = customer(&app, "Acme").await;
    let path = format!("/v1/admin/keys/{id}");
    let v = app
        .admin_call(Method::PATCH, &path, Some(json!({ "enabled": false })))
        .await
        .ok(200);
    assert_eq!(v["enabled"], false);
    app.assert_key_refused(&token, "api_key_disabled").await;
    app.admin_call(Method::PATCH, &path, Some(json!({ "enabled": true })))
        .await
        .ok(200);
    app.assert_key_works(&token).await;
}

#[tokio::test]
async fn keys_of_a_suspended_account_are_403_account_inactive() {
    let app = spawn_app().await;
    let (acc, _, live) = customer(&app, "Acme").await;
    let (_, test) = app.test_key(&acc).await;
    app.set_account_status(&acc, "suspended").await;
    app.whoami(&live).await.err(403, "account_inactive");
    app.whoami(&test).await.err(403, "account_inactive");
    // Reactivated, both work again.
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/accounts/{acc}/approve"),
        None,
    )
    .await
    .ok(200);
    app.assert_key_works(&live).await;
    app.assert_key_works(&test).await;
}

#[tokio::test]
async fn a_live_key_of_a_pending_account_is_403_but_its_test_key_works() {
    let app = spawn_app().await;
    let (acc, _, live) = customer(&app, "Acme").await;
    let (_, test) = app.test_key(&acc).await;
    app.set_account_status(&acc, "pending").await;
    app.whoami(&live).await.err(403, "account_inactive");
    app.assert_key_works(&test).await;
}

#[tokio::test]
async fn a_key_used_outside_its_allowlist_is_401_ip_not_allowed() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, elsewhere) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "k", "ip_allowlist": ["203.0.113.0/24", "2001:db8::/32"] }),
        )
        .await;
    let (_, here) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "k", "ip_allowlist": ["2001:db8::1", "127.0.0.1"] }),
        )
        .await;
    app.assert_key_refused(&elsewhere, "ip_not_allowed").await;
    app.assert_key_works(&here).await;
    // The refusal is audited as an incident.
    app.flush_writer().await;
    assert!(app
        .event_types(&format!("account_id={acc}"))
        .await
        .contains(&"key.ip_denied".to_string()));
}

#[tokio::test]
async fn a_key_without_the_scope_is_403_insufficient_scope() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "k", "scopes": ["usage:read"] }),
        )
        .await;
    app.whoami(&token).await.err(403, "insufficient_scope");
    app.call(Method::GET, "/v1/api-keys", &token, None)
        .await
        .err(403, "insufficient_scope");
    app.call(Method::GET, "/v1/account/usage", &token, None)
        .await
        .ok(200);
}

#[tokio::test]
async fn a_switched_off_api_refuses_even_valid_keys_with_api_disabled() {
    let app = spawn_app_with(
        r#"
[server]
api_enabled = false
"#,
    )
    .await;
    let (_, _, token) = customer(&app, "Acme").await;
    app.whoami(&token).await.err(403, "api_disabled");
    app.call(
        Method::POST,
        "/v1/api-keys",
        &token,
        Some(json!({ "name": "k" })),
    )
    .await
    .err(403, "api_disabled");
}

#[tokio::test]
async fn repeated_failures_lock_the_client_ip_out_for_a_while() {
    let app = spawn_app_with(
        r#"
[auth]
lockout = { max_failures = 3, window_seconds = 60, lock_seconds = 120 }
"#,
    )
    .await;
    let (_, _, token) = customer(&app, "Acme").await;
    for _ in 0..3 {
        app.assert_key_refused("kw_nope", "invalid_api_key").await;
    }
    // Locked: even the right key is refused until the lock ends.
    let a = app.whoami(&token).await.err(429, "too_many_auth_failures");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    app.clock.advance_secs(120);
    app.assert_key_works(&token).await;
}

#[tokio::test]
async fn the_plan_rate_limit_applies_with_its_headers() {
    let app = spawn_app_with(
        r#"
[plans.tiers.default]
requests_per_minute = 2
"#,
    )
    .await;
    let (_, _, token) = customer(&app, "Acme").await;
    let a = app.whoami(&token).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=2;w=60"));
    assert!(
        a.header("ratelimit").unwrap().contains("r=1"),
        "{:?}",
        a.header("ratelimit")
    );
    app.whoami(&token).await.ok(200);

    let a = app.whoami(&token).await.err(429, "rate_limit_exceeded");
    assert_eq!(a.body["error"]["type"], "rate_limit_error");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=2;w=60"));
    assert!(
        a.header("ratelimit").unwrap().contains("r=0"),
        "{:?}",
        a.header("ratelimit")
    );

    app.clock.advance_secs(60);
    app.assert_key_works(&token).await;
}

#[tokio::test]
async fn a_used_up_requests_quota_is_429_quota_exceeded() {
    let app = spawn_app_with(
        r#"
[plans.tiers.default]
quotas = [ { unit = "requests", limit = 2, period = "day" } ]
"#,
    )
    .await;
    let (_, _, token) = customer(&app, "Acme").await;
    app.assert_key_works(&token).await;
    let usage = app
        .call(Method::GET, "/v1/account/usage", &token, None)
        .await
        .ok(200);
    assert_eq!(usage["requests_used"], 2);
    assert_eq!(usage["requests_remaining"], 0);
    let a = app.whoami(&token).await.err(429, "quota_exceeded");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    // The day ends at midnight UTC, 14 hours after the clock's start.
    assert_eq!(retry, 14 * 3600);
    app.clock.advance_secs(14 * 3600);
    app.assert_key_works(&token).await;
}

// ---- roles ------------------------------------------------------------------------------

/// Asserts that every owner-only endpoint refuses `token` with 403 insufficient_role.
async fn assert_not_owner(app: &TestApp, token: &str) {
    let cases = [
        (
            Method::PATCH,
            "/v1/account",
            Some(json!({ "account_name": "Hijacked" })),
        ),
        (
            Method::PATCH,
            "/v1/account/plan",
            Some(json!({ "plan": "default" })),
        ),
        (Method::DELETE, "/v1/account/data", None),
    ];
    for (method, path, body) in cases {
        app.call(method.clone(), path, token, body)
            .await
            .err(403, "insufficient_role");
    }
}

#[tokio::test]
async fn member_keys_neither_view_nor_manage_keys_nor_the_account() {
    let app = spawn_app().await;
    let (acc, owner_id, owner) = customer(&app, "Acme").await;
    let (member_id, member) = app.role_key(&acc, "member").await;

    app.whoami(&member).await.ok(200);
    // Viewing keys, its own included, takes a role that manages them.
    for path in [
        "/v1/api-keys".to_string(),
        format!("/v1/api-keys/{member_id}"),
        format!("/v1/api-keys/{member_id}/activity"),
        format!("/v1/api-keys/{owner_id}"),
    ] {
        app.call(Method::GET, &path, &member, None)
            .await
            .err(403, "insufficient_role");
    }

    app.call(
        Method::POST,
        "/v1/api-keys",
        &member,
        Some(json!({ "name": "x" })),
    )
    .await
    .err(403, "insufficient_role");
    app.call(
        Method::POST,
        &format!("/v1/api-keys/{owner_id}/rotate"),
        &member,
        None,
    )
    .await
    .err(403, "insufficient_role");
    app.call(
        Method::DELETE,
        &format!("/v1/api-keys/{owner_id}"),
        &member,
        None,
    )
    .await
    .err(403, "insufficient_role");
    assert_not_owner(&app, &member).await;

    // Nothing changed.
    app.assert_key_works(&owner).await;
    assert_eq!(listed_ids(&app, &owner).await.len(), 2);
    let v = app.whoami(&owner).await.ok(200);
    assert_eq!(v["account_name"], "Acme");
}

#[tokio::test]
async fn developer_and_admin_keys_manage_keys_but_not_the_account() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    for role in ["developer", "admin"] {
        let (_, token) = app.role_key(&acc, role).await;
        let made = app
            .call(
                Method::POST,
                "/v1/api-keys",
                &token,
                Some(json!({ "name": "made" })),
            )
            .await
            .ok(201);
        let id = made["id"].as_str().unwrap();
        app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &token, None)
            .await
            .ok(204);
        assert_not_owner(&app, &token).await;
    }
    let v = app.whoami(&owner).await.ok(200);
    assert_eq!(v["account_name"], "Acme");
}

// ---- PATCH /v1/account and /v1/account/plan -------------------------------------------

#[tokio::test]
async fn the_owner_renames_the_account() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let v = app
        .call(
            Method::PATCH,
            "/v1/account",
            &owner,
            Some(json!({ "account_name": "Acme Ltd" })),
        )
        .await
        .ok(200);
    assert_eq!(v["account_id"], acc.as_str());
    assert_eq!(v["account_name"], "Acme Ltd");
    assert_eq!(app.whoami(&owner).await.ok(200)["account_name"], "Acme Ltd");
    let admin_view = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .ok(200);
    assert_eq!(admin_view["name"], "Acme Ltd");
    assert!(app
        .event_types(&format!("account_id={acc}"))
        .await
        .contains(&"account.updated".to_string()));
}

#[tokio::test]
async fn a_bad_account_name_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let patch = |body: Value| app.call(Method::PATCH, "/v1/account", &owner, Some(body));
    patch(json!({ "account_name": "x".repeat(101) }))
        .await
        .invalid("account_name");
    patch(json!({ "account_name": "  " }))
        .await
        .invalid("account_name");
    patch(json!({ "account_name": 7 }))
        .await
        .invalid("account_name");
    patch(json!({ "account_name": "ok", "plan": "x" }))
        .await
        .invalid("plan");
    patch(json!({})).await.invalid("account_name");
    // 100 characters is fine.
    let v = patch(json!({ "account_name": "y".repeat(100) }))
        .await
        .ok(200);
    assert_eq!(v["account_name"], "y".repeat(100));
}

const PLANS: &str = r#"
[plans]
default = "basic"
[plans.tiers.basic]
max_keys = 10
quotas = [ { unit = "words", limit = 1000, period = "month" } ]
[plans.tiers.pro]
quotas = [ { unit = "words", limit = 50000, period = "month" } ]
[plans.tiers.none]
max_keys = 0
"#;

#[tokio::test]
async fn a_plan_change_takes_effect_at_once() {
    let app = spawn_app_with(PLANS).await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let usage = app
        .call(Method::GET, "/v1/account/usage", &owner, None)
        .await
        .ok(200);
    assert_eq!(usage["words_limit"], 1000);

    let v = app
        .call(
            Method::PATCH,
            "/v1/account/plan",
            &owner,
            Some(json!({ "plan": "pro" })),
        )
        .await
        .ok(200);
    assert_eq!(v["plan"], "pro");
    let me = app.whoami(&owner).await.ok(200);
    assert_eq!(me["plan"], "pro");
    assert_eq!(me["key"]["tier"], "pro");
    let usage = app
        .call(Method::GET, "/v1/account/usage", &owner, None)
        .await
        .ok(200);
    assert_eq!(usage["plan"], "pro");
    assert_eq!(usage["words_limit"], 50000);

    app.call(
        Method::PATCH,
        "/v1/account/plan",
        &owner,
        Some(json!({ "plan": "platinum" })),
    )
    .await
    .invalid("plan");
    assert_eq!(app.whoami(&owner).await.ok(200)["plan"], "pro");
}

// ---- GET /v1/account/usage ------------------------------------------------------------

#[tokio::test]
async fn usage_reports_each_quota_in_both_shapes() {
    let app = spawn_app_with(PLANS).await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/accounts/{acc}/usage"),
        Some(json!({ "unit": "words", "amount": 250 })),
    )
    .await
    .ok(200);
    let v = app
        .call(Method::GET, "/v1/account/usage", &owner, None)
        .await
        .ok(200);
    assert_eq!(v["plan"], "basic");
    assert_eq!(v["period_start"], "2026-03-01T00:00:00Z");
    assert_eq!(v["period_end"], "2026-04-01T00:00:00Z");
    let q = &v["quotas"][0];
    assert_eq!(
        (&q["unit"], &q["used"], &q["limit"], &q["remaining"]),
        (&json!("words"), &json!(250), &json!(1000), &json!(750))
    );
    assert_eq!(v["words_used"], 250);
    assert_eq!(v["words_limit"], 1000);
    assert_eq!(v["words_remaining"], 750);

    // Test-mode usage is counted apart.
    let (_, test) = app.test_key(&acc).await;
    let v = app
        .call(Method::GET, "/v1/account/usage", &test, None)
        .await
        .ok(200);
    assert_eq!(v["words_used"], 0);
}

// ---- DELETE /v1/account/data ----------------------------------------------------------

#[tokio::test]
async fn erasing_the_account_returns_counts_and_its_keys_fail_at_once() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let (_, other) = app.test_key(&acc).await;
    let (_, _, bystander) = customer(&app, "Other").await;
    app.assert_key_works(&other).await;

    let v = app
        .call(Method::DELETE, "/v1/account/data", &owner, None)
        .await
        .ok(200);
    assert_eq!(v["deleted_accounts"], 1);
    assert_eq!(v["deleted_api_keys"], 2);
    assert!(v["deleted_events"].as_u64().unwrap() >= 3, "{v}");
    for field in ["deleted_activity", "deleted_usage", "deleted_grants"] {
        assert!(v[field].is_u64(), "{field} missing: {v}");
    }

    app.assert_key_refused(&owner, "invalid_api_key").await;
    app.assert_key_refused(&other, "invalid_api_key").await;
    app.assert_key_works(&bystander).await;
    app.admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .err(404, "not_found");
    assert!(app
        .event_types("type=account.erased")
        .await
        .contains(&"account.erased".to_string()));
}

// ---- POST /v1/api-keys ----------------------------------------------------------------

#[tokio::test]
async fn creating_a_key_returns_it_once_and_it_works() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let v = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &owner,
            Some(json!({
                "name": "deploy",
                "scopes": ["account:read"],
                "description": "in the CI vault",
                "ip_allowlist": ["127.0.0.1"],
                "expires_at": "2026-06-01T00:00:00Z",
            })),
        )
        .await
        .ok(201);
    let token = v["api_key"].as_str().unwrap();
    assert!(token.starts_with("kw_sk_live_"), "{token}");
    assert!(v["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(v["key_hash"], fingerprint(token));
    assert_eq!(v["name"], "deploy");
    assert_eq!(v["prefix"], "kw_sk_live_");
    assert_eq!(v["start"], token[..15].to_string());
    assert_eq!(v["scopes"], json!(["account:read"]));
    assert_eq!(v["mode"], "live");
    assert_eq!(v["created_at"], T0_RFC3339);
    assert_eq!(v["expires_at"], "2026-06-01T00:00:00Z");

    // It works, with exactly what it was given.
    let me = app.whoami(token).await.ok(200);
    assert_eq!(me["account_id"], acc.as_str());
    app.call(Method::GET, "/v1/api-keys", token, None)
        .await
        .err(403, "insufficient_scope");
    // It is shown again only as metadata.
    let id = v["id"].as_str().unwrap();
    let again = app
        .call(Method::GET, &format!("/v1/api-keys/{id}"), &owner, None)
        .await
        .ok(200);
    assert!(again.get("api_key").is_none());
    assert_eq!(again["description"], "in the CI vault");
    assert_eq!(again["ip_allowlist"], json!(["127.0.0.1"]));
}

#[tokio::test]
async fn bad_key_input_is_refused_naming_the_field_and_creates_nothing() {
    let app = spawn_app().await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let create = |body: Value| app.call(Method::POST, "/v1/api-keys", &owner, Some(body));

    create(json!({ "name": "x".repeat(101) }))
        .await
        .invalid("name");
    create(json!({ "name": "" })).await.invalid("name");
    create(json!({ "name": "k", "description": "d".repeat(501) }))
        .await
        .invalid("description");
    create(json!({ "name": "k", "colour": "red" }))
        .await
        .invalid("colour");
    create(json!({ "name": "k", "scopes": "account:read" }))
        .await
        .invalid("scopes");
    create(json!({ "name": 42 })).await.invalid("name");
    create(json!({ "scopes": [] })).await.invalid("name");
    create(json!({ "name": "k", "expires_at": "tomorrow" }))
        .await
        .invalid("expires_at");
    create(json!({ "name": "k", "expires_at": "2026-03-20T09:00:00Z" }))
        .await
        .invalid("expires_at");
    create(json!({ "name": "k", "ip_allowlist": ["10.0.0.300"] }))
        .await
        .invalid("ip_allowlist");

    let a = create(json!({ "name": "k", "scopes": ["nope:read", "account:read", "zzz"] }))
        .await
        .err(400, "invalid_scope");
    assert!(
        a.message().contains("nope:read") && a.message().contains("zzz"),
        "{}",
        a.message()
    );
    assert!(!a.message().contains("account:read"), "{}", a.message());

    // Malformed JSON.
    let res = app
        .public_request(Method::POST, "/v1/api-keys")
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(r#"{"name": "k""#)
        .send()
        .await
        .unwrap();
    Answer::of(res).await.invalid("malformed JSON");

    // A body over 64 KiB.
    let res = app
        .public_request(Method::POST, "/v1/api-keys")
        .bearer_auth(&owner)
        .json(&json!({ "name": "k", "description": "d".repeat(70 * 1024) }))
        .send()
        .await
        .unwrap();
    Answer::of(res).await.err(413, "payload_too_large");

    // Only the caller's own key exists.
    assert_eq!(listed_ids(&app, &owner).await.len(), 1);
}

#[tokio::test]
async fn the_plan_limit_counts_active_keys_only() {
    let app = spawn_app_with(
        r#"
[plans.tiers.default]
max_keys = 2
"#,
    )
    .await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let create = || {
        app.call(
            Method::POST,
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "k" })),
        )
    };
    let second = create().await.ok(201);
    let a = create().await.err(403, "plan_limit_reached");
    assert!(a.message().contains('2'), "{}", a.message());
    // A revoked key no longer counts.
    let id = second["id"].as_str().unwrap();
    app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &owner, None)
        .await
        .ok(204);
    create().await.ok(201);
    create().await.err(403, "plan_limit_reached");
}

#[tokio::test]
async fn a_plan_without_keys_refuses_every_new_key() {
    let app = spawn_app_with(PLANS).await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/accounts/{acc}"),
        Some(json!({ "plan": "none" })),
    )
    .await
    .ok(200);
    app.call(
        Method::POST,
        "/v1/api-keys",
        &owner,
        Some(json!({ "name": "k" })),
    )
    .await
    .err(403, "plan_limit_reached");
    assert_eq!(listed_ids(&app, &owner).await.len(), 1);
}

// ---- GET /v1/api-keys -----------------------------------------------------------------

/// The URL inside a `Link: <…>; rel="next"` header.
fn next_link(a: &Answer) -> Option<String> {
    let link = a.header("link")?;
    assert!(link.ends_with("rel=\"next\""), "{link}");
    let start = link.find('<')? + 1;
    let end = link.find('>')?;
    Some(link[start..end].to_string())
}

#[tokio::test]
async fn the_key_list_pages_with_a_link_header_and_shows_no_secret() {
    let app = spawn_app().await;
    let (acc, owner_id, owner) = customer(&app, "Acme").await;
    let mut tokens = vec![owner.clone()];
    let mut expected = vec![owner_id];
    for _ in 0..4 {
        let (id, t) = app.live_key(&acc).await;
        expected.push(id);
        tokens.push(t);
    }
    // Rotated keys carry a previous secret: it must not show either.
    app.call(
        Method::POST,
        &format!("/v1/api-keys/{}/rotate", expected[1]),
        &owner,
        Some(json!({ "grace_period_seconds": 60 })),
    )
    .await
    .ok(200);

    let mut seen: Vec<String> = Vec::new();
    let mut url = "/v1/api-keys?limit=2".to_string();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 3, "too many pages");
        let a = app.call(Method::GET, &url, &owner, None).await;
        assert_eq!(a.status, 200, "{url}: {}", a.body);
        let text = a.body.to_string();
        for t in &tokens {
            assert!(!text.contains(t.as_str()), "a secret is listed");
        }
        for item in a.body.as_array().unwrap() {
            let obj = item.as_object().unwrap();
            assert!(!obj.contains_key("api_key"));
            for field in obj.keys() {
                assert!(
                    !field.contains("hash") || field == "key_hash",
                    "{field} must not be listed"
                );
                assert!(
                    !field.contains("secret") && !field.contains("lookup"),
                    "{field}"
                );
            }
            assert!(item["key_hash"].as_str().unwrap().starts_with("sha256_"));
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match next_link(&a) {
            Some(next) => {
                assert_eq!(a.body.as_array().unwrap().len(), 2);
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);

    app.call(Method::GET, "/v1/api-keys?limit=0", &owner, None)
        .await
        .invalid("limit");
    app.call(Method::GET, "/v1/api-keys?limit=lots", &owner, None)
        .await
        .invalid("limit");
}

// ---- GET / DELETE /v1/api-keys/{id} ---------------------------------------------------

#[tokio::test]
async fn a_key_is_found_by_id_or_key_hash() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let made = app
        .key(&acc, json!({ "mode": "live", "name": "target" }))
        .await;
    let id = made["id"].as_str().unwrap();
    let hash = made["key_hash"].as_str().unwrap();
    for reference in [id, hash] {
        let v = app
            .call(
                Method::GET,
                &format!("/v1/api-keys/{reference}"),
                &owner,
                None,
            )
            .await
            .ok(200);
        assert_eq!(v["id"], id);
        assert_eq!(v["name"], "target");
        assert_eq!(v["key_hash"], hash);
        assert!(v.get("api_key").is_none());
    }
    for unknown in ["key_01JNOPE0000000000000000000", "sha256_00ff", "x"] {
        app.call(
            Method::GET,
            &format!("/v1/api-keys/{unknown}"),
            &owner,
            None,
        )
        .await
        .err(404, "not_found");
    }
}

#[tokio::test]
async fn deleting_a_key_revokes_it_at_once() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let (id, victim) = app.live_key(&acc).await;
    let (_, by_hash) = app.live_key(&acc).await;
    app.assert_key_works(&victim).await;

    let a = app
        .call(Method::DELETE, &format!("/v1/api-keys/{id}"), &owner, None)
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(a.body, Value::Null);
    app.assert_key_refused(&victim, "api_key_revoked").await;
    let v = app
        .call(Method::GET, &format!("/v1/api-keys/{id}"), &owner, None)
        .await
        .ok(200);
    assert_eq!(v["revoked_at"], T0_RFC3339);

    // By key_hash too.
    app.call(
        Method::DELETE,
        &format!("/v1/api-keys/{}", fingerprint(&by_hash)),
        &owner,
        None,
    )
    .await
    .ok(204);
    app.assert_key_refused(&by_hash, "api_key_revoked").await;

    app.call(
        Method::DELETE,
        "/v1/api-keys/key_01JNOPE0000000000000000000",
        &owner,
        None,
    )
    .await
    .err(404, "not_found");
    app.assert_key_works(&owner).await;
}

// ---- POST /v1/api-keys/{id}/rotate ----------------------------------------------------

async fn rotate(app: &TestApp, caller: &str, id: &str, grace: u64) -> String {
    let v = app
        .call(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            caller,
            Some(json!({ "grace_period_seconds": grace })),
        )
        .await
        .ok(200);
    assert_eq!(v["id"], id);
    let token = v["api_key"].as_str().unwrap().to_string();
    assert_eq!(v["key_hash"], fingerprint(&token));
    token
}

#[tokio::test]
async fn rotation_with_a_grace_keeps_the_old_secret_until_it_ends() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let (id, old) = app.live_key(&acc).await;
    let new = rotate(&app, &owner, &id, 60).await;
    assert_ne!(new, old);
    app.assert_key_works(&old).await;
    app.assert_key_works(&new).await;
    app.clock.advance_secs(61);
    app.assert_key_refused(&old, "api_key_revoked").await;
    app.assert_key_works(&new).await;
}

#[tokio::test]
async fn rotation_without_a_grace_invalidates_the_old_secret_at_once() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let (id, old) = app.live_key(&acc).await;
    app.assert_key_works(&old).await;
    let new = rotate(&app, &owner, &id, 0).await;
    app.assert_key_refused(&old, "api_key_revoked").await;
    app.assert_key_works(&new).await;

    // An empty body means no grace as well.
    let v = app
        .call(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            &owner,
            None,
        )
        .await
        .ok(200);
    app.assert_key_refused(&new, "api_key_revoked").await;
    app.assert_key_works(v["api_key"].as_str().unwrap()).await;
}

#[tokio::test]
async fn a_second_rotation_ends_the_first_grace() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let (id, first) = app.live_key(&acc).await;
    let second = rotate(&app, &owner, &id, 3600).await;
    app.assert_key_works(&first).await;
    let third = rotate(&app, &owner, &id, 3600).await;
    // Only one rotated-out secret is kept, so the first one may no longer be recognised.
    let a = app.whoami(&first).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        ["api_key_revoked", "invalid_api_key"].contains(&a.code()),
        "{}",
        a.body
    );
    app.assert_key_works(&second).await;
    app.assert_key_works(&third).await;
}

#[tokio::test]
async fn a_bad_rotation_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let (id, token) = app.live_key(&acc).await;
    let path = format!("/v1/api-keys/{id}/rotate");
    for bad in [json!(604_801), json!(-1), json!("60")] {
        app.call(
            Method::POST,
            &path,
            &owner,
            Some(json!({ "grace_period_seconds": bad })),
        )
        .await
        .invalid("grace_period_seconds");
    }
    app.call(Method::POST, &path, &owner, Some(json!({ "grace": 1 })))
        .await
        .invalid("grace");
    app.assert_key_works(&token).await;
    assert_eq!(fingerprint(&token), app.admin_key(&id).await["key_hash"]);

    // The longest grace is allowed; a revoked key cannot be rotated.
    rotate(&app, &owner, &id, 604_800).await;
    app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &owner, None)
        .await
        .ok(204);
    app.call(Method::POST, &path, &owner, None)
        .await
        .err(409, "conflict");
}

// ---- activity and events --------------------------------------------------------------

#[tokio::test]
async fn activity_lists_the_key_s_recent_requests() {
    let app = spawn_app().await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    let (id, token) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "k", "scopes": ["account:read"] }),
        )
        .await;
    app.whoami(&token).await.ok(200);
    app.call(Method::GET, "/v1/api-keys", &token, None)
        .await
        .err(403, "insufficient_scope");
    app.flush_writer().await;

    let rows = app
        .call(
            Method::GET,
            &format!("/v1/api-keys/{id}/activity"),
            &owner,
            None,
        )
        .await
        .ok(200);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let mut seen: Vec<(String, String, u64, String)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["at"], T0_RFC3339);
            assert_eq!(r["ip"], "127.0.0.1");
            (
                r["method"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("GET".into(), "/v1/account".into(), 200, "valid".into()),
            (
                "GET".into(),
                "/v1/api-keys".into(),
                403,
                "insufficient_scope".into()
            ),
        ]
    );
    // Its last use shows in its metadata.
    let v = app
        .call(Method::GET, &format!("/v1/api-keys/{id}"), &owner, None)
        .await
        .ok(200);
    assert_eq!(v["last_used_at"], T0_RFC3339);
    assert_eq!(v["last_used_ip"], "127.0.0.1");
}

async fn events_of(app: &TestApp, token: &str) -> Vec<Value> {
    let v = app
        .call(Method::GET, "/v1/events", token, None)
        .await
        .ok(200);
    v.as_array().unwrap().clone()
}

#[tokio::test]
async fn events_are_the_account_s_of_the_caller_s_mode() {
    let app = spawn_app().await;
    let (acc, live_id, live) = customer(&app, "Acme").await;
    let (test_id, test) = app.test_key(&acc).await;
    let (_, _, other) = customer(&app, "Other").await;
    app.call(
        Method::PATCH,
        "/v1/account",
        &live,
        Some(json!({ "account_name": "Acme Ltd" })),
    )
    .await
    .ok(200);

    let live_events = events_of(&app, &live).await;
    let key_ids = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .filter(|e| e["type"] == "key.created")
            .map(|e| e["data"]["key_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(key_ids(&live_events), vec![live_id.clone()]);
    for e in &live_events {
        assert_eq!(e["account_id"], acc.as_str());
        assert!(e["id"].as_str().unwrap().starts_with("evt_"));
        assert!(e["mode"] == "live" || e["mode"].is_null(), "{e}");
    }
    let types: Vec<&str> = live_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"account.created"), "{types:?}");
    assert!(types.contains(&"account.updated"), "{types:?}");
    let renamed = live_events
        .iter()
        .find(|e| e["type"] == "account.updated")
        .unwrap();
    assert_eq!(renamed["actor"], live_id.as_str());

    assert_eq!(key_ids(&events_of(&app, &test).await), vec![test_id]);
    let theirs = events_of(&app, &other).await;
    assert!(theirs.iter().all(|e| e["account_id"] != acc.as_str()));
}

// ---- error styles, languages, renames, request ids (`docs/errors.md`) -------------------------

#[tokio::test]
async fn envelope_errors_carry_type_code_message_request_id_and_doc_url() {
    let app = spawn_app_with(
        r#"
[errors]
doc_url = "https://docs.example.com/errors#{code}"
"#,
    )
    .await;
    let res = app
        .public_request(Method::GET, "/v1/account")
        .send()
        .await
        .unwrap();
    let a = Answer::of(res).await.err(401, "missing_api_key");
    let id = assert_request_id(&a.headers);
    let e = &a.body["error"];
    assert_eq!(e["type"], "authentication_error");
    assert_eq!(e["message"], "No API key was provided.");
    assert_eq!(e["request_id"], id.as_str());
    assert_eq!(
        e["doc_url"],
        "https://docs.example.com/errors#missing_api_key"
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn problem_style_errors_are_rfc_9457() {
    let app = spawn_app_with(
        r#"
[errors]
style = "problem"
"#,
    )
    .await;
    let (_, _, owner) = customer(&app, "Acme").await;

    let res = app
        .public_request(Method::GET, "/v1/account")
        .send()
        .await
        .unwrap();
    let a = Answer::of(res).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let id = assert_request_id(&a.headers);
    let b = &a.body;
    assert_eq!(b["type"], "about:blank");
    assert_eq!(b["title"], "Unauthorized");
    assert_eq!(b["status"], 401);
    assert_eq!(b["detail"], "No API key was provided.");
    assert_eq!(b["code"], "missing_api_key");
    assert_eq!(b["request_id"], id.as_str());

    let a = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "x".repeat(101) })),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.body["code"], "invalid_request");
    assert_eq!(a.body["status"], 400);
    assert!(a.body["detail"].as_str().unwrap().contains("name"));

    let a = app
        .call(Method::GET, "/v1/api-keys/key_nope", &owner, None)
        .await;
    assert_eq!((a.status, &a.body["code"]), (404, &json!("not_found")));
    assert_eq!(a.body["title"], "Not Found");
}

#[tokio::test]
async fn detail_style_errors_are_a_bare_detail() {
    let app = spawn_app_with(
        r#"
[errors]
style = "detail"
"#,
    )
    .await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let a = app.whoami("hello").await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body, json!({ "detail": "The API key is invalid." }));
    assert_request_id(&a.headers);

    let a = app
        .call(
            Method::PATCH,
            "/v1/account",
            &owner,
            Some(json!({ "account_name": 1 })),
        )
        .await;
    assert_eq!(a.status, 400);
    let obj = a.body.as_object().unwrap();
    assert_eq!(obj.len(), 1);
    assert!(obj["detail"].as_str().unwrap().contains("account_name"));
}

#[tokio::test]
async fn accept_language_es_gives_spanish_messages() {
    let app = spawn_app().await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let res = app
        .public_request(Method::GET, "/v1/account")
        .header("Accept-Language", "es-ES,es;q=0.9,en;q=0.5")
        .send()
        .await
        .unwrap();
    let a = Answer::of(res).await.err(401, "missing_api_key");
    assert_eq!(a.message(), "No se ha proporcionado ninguna clave de API.");

    // A field-specific message keeps naming the field.
    let res = app
        .public_request(Method::POST, "/v1/api-keys")
        .bearer_auth(&owner)
        .header("Accept-Language", "es")
        .json(&json!({ "name": "x".repeat(101) }))
        .send()
        .await
        .unwrap();
    let a = Answer::of(res).await.invalid("name");
    assert!(
        a.message().starts_with("La petición no es válida."),
        "{}",
        a.message()
    );

    // Without the header the default language is used.
    app.whoami("hello").await.err(401, "invalid_api_key");
    assert_eq!(
        app.whoami("hello").await.message(),
        "The API key is invalid."
    );
}

#[tokio::test]
async fn a_spanish_deployment_answers_english_when_asked() {
    let app = spawn_app_with(
        r#"
[errors]
locale = "es"
"#,
    )
    .await;
    assert_eq!(
        app.whoami("hello").await.message(),
        "La clave de API no es válida."
    );
    let res = app
        .public_request(Method::GET, "/v1/account")
        .bearer_auth("hello")
        .header("Accept-Language", "en")
        .send()
        .await
        .unwrap();
    assert_eq!(Answer::of(res).await.message(), "The API key is invalid.");
}

#[tokio::test]
async fn a_renamed_code_reports_expiry_as_revocation() {
    let app = spawn_app_with(
        r#"
[errors]
rename = { api_key_expired = "api_key_revoked" }
"#,
    )
    .await;
    let acc = app.account("Acme").await;
    let (_, token) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "k", "expires_at": "2026-03-20T10:01:00Z" }),
        )
        .await;
    app.assert_key_works(&token).await;
    app.clock.advance_secs(60);
    let a = app.whoami(&token).await.err(401, "api_key_revoked");
    assert_eq!(a.message(), "The API key has been revoked.");
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let app = spawn_app().await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let mut ids = Vec::new();
    let mut check = |res: reqwest::Response, status: u16| {
        assert_eq!(res.status(), status, "{}", res.url());
        ids.push(assert_request_id(res.headers()));
    };

    check(
        app.public(Method::GET, "/v1/account", &owner, None).await,
        200,
    );
    check(
        app.public(Method::GET, "/v1/account", "nope", None).await,
        401,
    );
    check(
        app.public(Method::GET, "/v1/no/such/path", &owner, None)
            .await,
        404,
    );
    check(
        app.public(Method::GET, "/elsewhere", &owner, None).await,
        404,
    );
    check(
        app.public(Method::PUT, "/v1/account", &owner, None).await,
        405,
    );
    check(
        app.public(
            Method::POST,
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "x".repeat(70_000) })),
        )
        .await,
        413,
    );
    check(
        app.public(Method::DELETE, "/v1/api-keys/key_x", &owner, None)
            .await,
        404,
    );
    for base in [&app.public, &app.admin] {
        let res = app
            .client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        check(res, 200);
    }
    check(
        app.admin(Method::GET, "/v1/admin/accounts", None).await,
        200,
    );
    check(app.admin(Method::GET, "/v1/admin/nothing", None).await, 404);
    let res = app
        .client
        .get(format!("{}/v1/admin/accounts", app.admin))
        .send()
        .await
        .unwrap();
    check(res, 401);

    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");
}

// ---- deployment-chosen wording and shapes ---------------------------------------------

#[tokio::test]
async fn messages_are_set_per_code_and_language() {
    let app = spawn_app_with(
        r#"
[errors]
locale = "es"
[errors.messages.es]
invalid_api_key = "La API key proporcionada no es válida."
insufficient_scope = "La API key no tiene el scope requerido para esta operación."
[errors.messages.en]
invalid_api_key = "Bad key."
"#,
    )
    .await;
    let acc = app.account("Acme").await;
    let (_, narrow) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "n", "scopes": ["usage:read"] }),
        )
        .await;
    let a = app.whoami("hello").await.err(401, "invalid_api_key");
    assert_eq!(a.message(), "La API key proporcionada no es válida.");
    let a = app.whoami(&narrow).await.err(403, "insufficient_scope");
    assert_eq!(
        a.message(),
        "La API key no tiene el scope requerido para esta operación."
    );
    // Codes without a message of their own keep the built-in one of the language.
    let res = app
        .public_request(Method::GET, "/v1/account")
        .send()
        .await
        .unwrap();
    let a = Answer::of(res).await.err(401, "missing_api_key");
    assert_eq!(a.message(), "No se ha proporcionado ninguna clave de API.");
    // Another language asked for gets that language's own message.
    let res = app
        .public_request(Method::GET, "/v1/account")
        .bearer_auth("hello")
        .header("Accept-Language", "en")
        .send()
        .await
        .unwrap();
    assert_eq!(Answer::of(res).await.message(), "Bad key.");
    // The verify API reports the same message.
    let v = app.verify(json!({ "key": "hello" })).await;
    assert_eq!(v["message"], "La API key proporcionada no es válida.");
}

#[tokio::test]
async fn a_message_for_an_unknown_code_or_language_is_refused_at_startup() {
    use keywarden_server::config::Config;
    use keywarden_server::settings::Settings;
    for (toml, field) in [
        ("[errors.messages.es]\nnope = \"x\"\n", "nope"),
        ("[errors.messages.fr]\ninvalid_api_key = \"x\"\n", "fr"),
        (
            "[self_service]\nendpoints = [\"accounts\"]\n",
            "self_service.endpoints[0]",
        ),
        (
            "[self_service]\nperiod_end = \"end\"\n",
            "self_service.period_end",
        ),
        (
            "[server]\ntimestamp_offset = \"+01:00\"\n",
            "server.timestamp_offset",
        ),
    ] {
        let c = Config::from_parts(toml, &[]).unwrap();
        let pepper = keywarden_core::Secret::new("p".repeat(32));
        let e = Settings::from_config(c, Some(pepper))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{toml}: {e}");
    }
}

#[tokio::test]
async fn timestamps_can_carry_a_plus_zero_offset_in_whole_seconds() {
    let app = spawn_app_with(
        r#"
[server]
timestamp_offset = "+00:00"
timestamp_precision = "s"
"#,
    )
    .await;
    app.clock.advance_ms(123);
    let (acc, _, owner) = customer(&app, "Acme").await;
    let me = app.whoami(&owner).await.ok(200);
    assert_eq!(me["key"]["created_at"], "2026-03-20T10:00:00+00:00");
    let usage = app
        .call(Method::GET, "/v1/account/usage", &owner, None)
        .await
        .ok(200);
    assert_eq!(usage["period_start"], "2026-03-01T00:00:00+00:00");
    let admin = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .ok(200);
    assert_eq!(admin["created_at"], "2026-03-20T10:00:00+00:00");
    // Input in either form is read.
    let v = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "tmp", "expires_at": "2026-04-01T00:00:00+00:00" })),
        )
        .await
        .ok(201);
    assert_eq!(v["expires_at"], "2026-04-01T00:00:00+00:00");
}

#[tokio::test]
async fn patch_answers_show_the_caller_s_role_like_get() {
    let app = spawn_app_with(PLANS).await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let me = app.whoami(&owner).await.ok(200);
    let v = app
        .call(
            Method::PATCH,
            "/v1/account",
            &owner,
            Some(json!({ "account_name": "Acme Ltd" })),
        )
        .await
        .ok(200);
    for field in ["account_id", "plan", "role"] {
        assert_eq!(v[field], me[field], "{field}");
    }
    assert_eq!(v["role"], "owner");
    let v = app
        .call(
            Method::PATCH,
            "/v1/account/plan",
            &owner,
            Some(json!({ "plan": "pro" })),
        )
        .await
        .ok(200);
    assert_eq!((&v["plan"], &v["role"]), (&json!("pro"), &json!("owner")));
}

#[tokio::test]
async fn period_end_can_be_the_period_s_last_second() {
    let app = spawn_app_with(&format!(
        "{PLANS}\n[self_service]\nperiod_end = \"last_second\"\n"
    ))
    .await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let v = app
        .call(Method::GET, "/v1/account/usage", &owner, None)
        .await
        .ok(200);
    assert_eq!(v["period_start"], "2026-03-01T00:00:00Z");
    assert_eq!(v["period_end"], "2026-03-31T23:59:59Z");
    assert_eq!(v["quotas"][0]["period_end"], "2026-03-31T23:59:59Z");
}

#[tokio::test]
async fn answer_fields_can_be_renamed() {
    let app = spawn_app_with(
        r#"
[self_service]
rename = { deleted_api_keys = "deleted_api_key", created_at = "created" }
"#,
    )
    .await;
    let (_, _, owner) = customer(&app, "Acme").await;
    let list = app
        .call(Method::GET, "/v1/api-keys", &owner, None)
        .await
        .ok(200);
    assert!(list[0]["created"].is_string(), "{list}");
    assert!(list[0].get("created_at").is_none(), "{list}");
    let v = app
        .call(Method::DELETE, "/v1/account/data", &owner, None)
        .await
        .ok(200);
    assert_eq!(v["deleted_api_key"], 1, "{v}");
    assert!(v.get("deleted_api_keys").is_none(), "{v}");
    // Errors keep their shape.
    app.whoami("hello").await.err(401, "invalid_api_key");
}

#[tokio::test]
async fn endpoint_groups_left_out_are_not_served() {
    let app = spawn_app_with(
        r#"
[self_service]
endpoints = ["account"]
"#,
    )
    .await;
    let (_, _, owner) = customer(&app, "Acme").await;
    app.whoami(&owner).await.ok(200);
    for (method, path) in [
        (Method::GET, "/v1/api-keys"),
        (Method::GET, "/v1/events"),
        (Method::GET, "/v1/account/usage"),
        (Method::DELETE, "/v1/account/data"),
    ] {
        app.call(method, path, &owner, None)
            .await
            .err(404, "not_found");
    }
    app.call(
        Method::PATCH,
        "/v1/account",
        &owner,
        Some(json!({ "account_name": "x" })),
    )
    .await
    .err(405, "method_not_allowed");
}

#[tokio::test]
async fn an_upgrade_lifts_a_rate_limit_already_hit_at_once() {
    let app = spawn_app_with(
        r#"
[plans]
default = "small"
[plans.tiers.small]
requests_per_minute = 5
[plans.tiers.large]
requests_per_minute = 1000
"#,
    )
    .await;
    let (acc, _, owner) = customer(&app, "Acme").await;
    for _ in 0..5 {
        app.whoami(&owner).await.ok(200);
    }
    app.whoami(&owner).await.err(429, "rate_limit_exceeded");
    // The plan change itself goes through the operator (the owner's key is limited).
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/accounts/{acc}"),
        Some(json!({ "plan": "large" })),
    )
    .await
    .ok(200);
    let a = app.whoami(&owner).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.header("ratelimit-policy").unwrap().contains(";q=1000;"),
        "{:?}",
        a.header("ratelimit-policy")
    );
}

/// The rate budget left to a key and the account's request count, as a verify call reports
/// them (the call itself spends one of each).
async fn budget(app: &TestApp, token: &str) -> (Value, Value) {
    let v = app.verify(json!({ "key": token })).await;
    assert_eq!(v["valid"], true, "{v}");
    let used = v["quotas"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["unit"] == "requests"))
        .map(|q| q["used"].clone())
        .unwrap_or_else(|| panic!("no requests quota in {v}"));
    (v["ratelimit"]["remaining"].clone(), used)
}

#[tokio::test]
async fn refused_self_service_calls_spend_no_rate_budget_and_no_quota() {
    let app = spawn_app_with(
        "[plans.tiers.default]\nrequests_per_minute = 5\n\
         quotas = [{ unit = \"requests\", limit = 1000, period = \"day\" }]\n",
    )
    .await;
    let acc = app.account("Acme").await;
    let publishable = app
        .key(
            &acc,
            json!({ "mode": "live", "type": "publishable", "name": "web" }),
        )
        .await["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, member) = app.role_key(&acc, "member").await;

    let (p_left, used) = budget(&app, &publishable).await;
    let (m_left, _) = budget(&app, &member).await;
    assert_eq!((&p_left, &m_left), (&json!(4), &json!(4)));
    assert_eq!(used, json!(1));

    // More refusals than the budget holds: each one is refused for what it is, never 429.
    for _ in 0..6 {
        let a = app
            .call(Method::DELETE, "/v1/account/data", &publishable, None)
            .await
            .err(403, "insufficient_scope");
        assert!(a.message().contains("publishable"), "{}", a.message());
        assert!(a.header("ratelimit").is_none());
        app.whoami(&publishable)
            .await
            .err(403, "insufficient_scope");
        let a = app
            .call(
                Method::PATCH,
                "/v1/account",
                &member,
                Some(json!({ "account_name": "Mine now" })),
            )
            .await
            .err(403, "insufficient_role");
        assert!(a.message().contains("owner"), "{}", a.message());
        app.call(Method::DELETE, "/v1/account/data", &member, None)
            .await
            .err(403, "insufficient_role");
    }

    // Each verify above and below spent one; the 24 refusals spent nothing.
    let (p_left, _) = budget(&app, &publishable).await;
    let (m_left, used) = budget(&app, &member).await;
    assert_eq!((&p_left, &m_left), (&json!(3), &json!(3)));
    assert_eq!(used, json!(4));
    // The account is untouched.
    let a = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .ok(200);
    assert_eq!(a["name"], "Acme");
    app.stop().await;
}
