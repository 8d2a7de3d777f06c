//! What a key can reach through the self-service API: only its own account, only its own
//! mode, never more scopes or a stronger role than it holds, and nothing at all for a
//! publishable key.

mod common;

use common::api::Answer;
use common::{spawn_app, TestApp};
use keywarden_core::hashing::fingerprint;
use reqwest::Method;
use serde_json::{json, Value};

/// One key as its owner knows it.
#[derive(Clone, Debug)]
struct Key {
    id: String,
    token: String,
    key_hash: String,
}

async fn make_key(app: &TestApp, account: &str, body: Value) -> Key {
    let v = app.key(account, body).await;
    Key {
        id: v["id"].as_str().unwrap().to_string(),
        token: v["api_key"].as_str().unwrap().to_string(),
        key_hash: v["key_hash"].as_str().unwrap().to_string(),
    }
}

async fn live(app: &TestApp, account: &str) -> Key {
    make_key(app, account, json!({ "mode": "live", "name": "live" })).await
}

async fn test(app: &TestApp, account: &str) -> Key {
    make_key(app, account, json!({ "mode": "test", "name": "test" })).await
}

/// Every self-service call that names a key, as (method, path, body).
fn calls_on(reference: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/v1/api-keys/{reference}"), None),
        (
            Method::GET,
            format!("/v1/api-keys/{reference}/activity"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/api-keys/{reference}/rotate"),
            Some(json!({ "grace_period_seconds": 0 })),
        ),
        (Method::DELETE, format!("/v1/api-keys/{reference}"), None),
    ]
}

/// Asserts that `caller` gets 404 not_found on every call naming `target` (by id and by
/// key_hash), and that `target` is untouched afterwards.
async fn assert_unreachable(app: &TestApp, caller: &Key, target: &Key) {
    let before = app.admin_key(&target.id).await;
    for reference in [&target.id, &target.key_hash] {
        for (method, path, body) in calls_on(reference) {
            let a = app.call(method.clone(), &path, &caller.token, body).await;
            assert_eq!(
                (a.status, a.code()),
                (404, "not_found"),
                "{method} {path}: {}",
                a.body
            );
            assert!(
                !a.body.to_string().contains(&target.id),
                "a 404 must not reveal the key"
            );
        }
    }
    // Not revoked, not rotated, still working.
    let after = app.admin_key(&target.id).await;
    assert_eq!(after["key_hash"], before["key_hash"]);
    assert!(after["revoked_at"].is_null());
    assert!(after["rotation_grace_until"].is_null());
    app.assert_key_works(&target.token).await;
}

/// Ids listed by `GET /v1/api-keys` for the caller.
async fn listed(app: &TestApp, caller: &Key) -> Vec<String> {
    let v = app
        .call(Method::GET, "/v1/api-keys?limit=100", &caller.token, None)
        .await
        .ok(200);
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(keys: &[&Key]) -> Vec<String> {
    let mut ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    ids.sort();
    ids
}

// ---- accounts -------------------------------------------------------------------------

#[tokio::test]
async fn an_account_cannot_reach_another_account_s_keys() {
    let app = spawn_app().await;
    let a = app.account("A").await;
    let b = app.account("B").await;
    let a_live = live(&app, &a).await;
    let a_test = test(&app, &a).await;
    let b_live = live(&app, &b).await;
    let b_test = test(&app, &b).await;
    let b_member = make_key(
        &app,
        &b,
        json!({ "mode": "live", "name": "m", "role": "member", "scopes": ["account:read"] }),
    )
    .await;

    // Each of A's keys against each of B's keys of every mode.
    for caller in [&a_live, &a_test] {
        for target in [&b_live, &b_test, &b_member] {
            assert_unreachable(&app, caller, target).await;
        }
    }
    // And the other way round.
    for caller in [&b_live, &b_test] {
        for target in [&a_live, &a_test] {
            assert_unreachable(&app, caller, target).await;
        }
    }

    // Lists show only the caller's account.
    assert_eq!(listed(&app, &a_live).await, sorted(&[&a_live]));
    assert_eq!(listed(&app, &b_live).await, sorted(&[&b_live, &b_member]));
}

#[tokio::test]
async fn another_account_s_events_and_account_are_not_visible() {
    let app = spawn_app().await;
    let a = app.account("A").await;
    let b = app.account("B").await;
    let a_live = live(&app, &a).await;
    let b_live = live(&app, &b).await;

    let me = app.whoami(&a_live.token).await.ok(200);
    assert_eq!(me["account_id"], a.as_str());
    let evs = app
        .call(Method::GET, "/v1/events", &a_live.token, None)
        .await
        .ok(200);
    let text = evs.to_string();
    assert!(!text.contains(&b) && !text.contains(&b_live.id), "{text}");
    for e in evs.as_array().unwrap() {
        assert_eq!(e["account_id"], a.as_str());
    }

    // A's owner changing its account changes nothing of B.
    app.call(
        Method::PATCH,
        "/v1/account",
        &a_live.token,
        Some(json!({ "account_name": "A renamed" })),
    )
    .await
    .ok(200);
    app.call(Method::DELETE, "/v1/account/data", &a_live.token, None)
        .await
        .ok(200);
    let b_me = app.whoami(&b_live.token).await.ok(200);
    assert_eq!(b_me["account_id"], b.as_str());
    assert_eq!(b_me["account_name"], "B");
}

// ---- modes ----------------------------------------------------------------------------

#[tokio::test]
async fn test_keys_cannot_see_or_touch_live_keys_and_back() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let live_owner = live(&app, &acc).await;
    let live_other = live(&app, &acc).await;
    let test_owner = test(&app, &acc).await;
    let test_other = test(&app, &acc).await;

    for target in [&live_owner, &live_other] {
        assert_unreachable(&app, &test_owner, target).await;
    }
    for target in [&test_owner, &test_other] {
        assert_unreachable(&app, &live_owner, target).await;
    }
    assert_eq!(
        listed(&app, &test_owner).await,
        sorted(&[&test_owner, &test_other])
    );
    assert_eq!(
        listed(&app, &live_owner).await,
        sorted(&[&live_owner, &live_other])
    );

    // Within its own mode a key reaches its siblings.
    let v = app
        .call(
            Method::GET,
            &format!("/v1/api-keys/{}", test_other.id),
            &test_owner.token,
            None,
        )
        .await
        .ok(200);
    assert_eq!(v["mode"], "test");
}

#[tokio::test]
async fn a_test_key_always_creates_a_test_key() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let caller = test(&app, &acc).await;
    let live_key = live(&app, &acc).await;

    let v = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &caller.token,
            Some(json!({ "name": "made" })),
        )
        .await
        .ok(201);
    assert_eq!(v["mode"], "test");
    let token = v["api_key"].as_str().unwrap();
    assert!(token.starts_with("kw_sk_test_"), "{token}");
    assert_eq!(app.whoami(token).await.ok(200)["mode"], "test");

    // There is no way to ask for live.
    for body in [
        json!({ "name": "x", "mode": "live" }),
        json!({ "name": "x", "type": "secret", "mode": "live" }),
    ] {
        app.call(Method::POST, "/v1/api-keys", &caller.token, Some(body))
            .await
            .invalid("unknown field");
    }
    let made = Key {
        id: v["id"].as_str().unwrap().to_string(),
        token: token.to_string(),
        key_hash: fingerprint(token),
    };
    assert_unreachable(&app, &made, &live_key).await;
    // Two test keys and one live key, nothing else.
    assert_eq!(listed(&app, &caller).await.len(), 2);
    assert_eq!(listed(&app, &live_key).await, sorted(&[&live_key]));
}

// ---- no escalation --------------------------------------------------------------------

#[tokio::test]
async fn a_key_cannot_grant_more_scopes_than_it_holds() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let caller = make_key(
        &app,
        &acc,
        json!({ "mode": "live", "name": "ci", "scopes": ["api_keys:write", "api_keys:read", "usage:read"] }),
    )
    .await;
    let create = |scopes: Value| {
        app.call(
            Method::POST,
            "/v1/api-keys",
            &caller.token,
            Some(json!({ "name": "child", "scopes": scopes })),
        )
    };
    for wider in [
        json!(["*"]),
        json!(["account:read"]),
        json!(["usage:read", "api_keys:delete"]),
        json!(["api_keys:*"]),
    ] {
        create(wider.clone()).await.err(403, "insufficient_scope");
    }
    // Equal or narrower is fine.
    let v = create(json!(["usage:read"])).await.ok(201);
    assert_eq!(v["scopes"], json!(["usage:read"]));
    let child = v["api_key"].as_str().unwrap();
    app.call(Method::GET, "/v1/account/usage", child, None)
        .await
        .ok(200);
    app.call(Method::GET, "/v1/api-keys", child, None)
        .await
        .err(403, "insufficient_scope");
    create(json!(["api_keys:write", "api_keys:read", "usage:read"]))
        .await
        .ok(201);

    // Without scopes the new key gets the caller's, not the wider defaults.
    let v = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &caller.token,
            Some(json!({ "name": "inherit" })),
        )
        .await
        .ok(201);
    assert_eq!(
        v["scopes"],
        json!(["api_keys:write", "api_keys:read", "usage:read"])
    );
    app.whoami(v["api_key"].as_str().unwrap())
        .await
        .err(403, "insufficient_scope");

    // The refused attempts created nothing: the caller and three children.
    assert_eq!(
        app.admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}/keys"), None)
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn a_key_cannot_create_a_key_with_a_stronger_role() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    for role in ["developer", "admin", "owner"] {
        let caller = make_key(
            &app,
            &acc,
            json!({ "mode": "live", "name": role, "role": role }),
        )
        .await;
        let v = app
            .call(
                Method::POST,
                "/v1/api-keys",
                &caller.token,
                Some(json!({ "name": "child" })),
            )
            .await
            .ok(201);
        let child = v["api_key"].as_str().unwrap();
        assert_eq!(app.whoami(child).await.ok(200)["role"], role);
        assert_eq!(app.admin_key(v["id"].as_str().unwrap()).await["role"], role);

        // Asking for a role is not possible at all.
        app.call(
            Method::POST,
            "/v1/api-keys",
            &caller.token,
            Some(json!({ "name": "child", "role": "owner" })),
        )
        .await
        .invalid("role");
    }
    // A developer's child is still not an owner.
    let developer = make_key(
        &app,
        &acc,
        json!({ "mode": "live", "name": "dev", "role": "developer" }),
    )
    .await;
    let v = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &developer.token,
            Some(json!({ "name": "child" })),
        )
        .await
        .ok(201);
    app.call(
        Method::DELETE,
        "/v1/account/data",
        v["api_key"].as_str().unwrap(),
        None,
    )
    .await
    .err(403, "insufficient_role");
}

// ---- publishable keys -----------------------------------------------------------------

#[tokio::test]
async fn publishable_keys_cannot_use_the_self_service_api() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let owner = live(&app, &acc).await;
    let pk = make_key(
        &app,
        &acc,
        json!({ "mode": "live", "type": "publishable", "name": "web" }),
    )
    .await;
    assert!(pk.token.starts_with("kw_pk_live_"));

    let mut calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/account".into(), None),
        (
            Method::PATCH,
            "/v1/account".into(),
            Some(json!({ "account_name": "pwned" })),
        ),
        (
            Method::PATCH,
            "/v1/account/plan".into(),
            Some(json!({ "plan": "default" })),
        ),
        (Method::GET, "/v1/account/usage".into(), None),
        (
            Method::POST,
            "/v1/api-keys".into(),
            Some(json!({ "name": "x" })),
        ),
        (Method::GET, "/v1/api-keys".into(), None),
        (Method::GET, "/v1/events".into(), None),
        (Method::DELETE, "/v1/account/data".into(), None),
    ];
    calls.extend(calls_on(&owner.id));
    calls.extend(calls_on(&pk.id));
    for (method, path, body) in calls {
        let a: Answer = app.call(method.clone(), &path, &pk.token, body).await;
        assert_eq!(
            (a.status, a.code()),
            (403, "insufficient_scope"),
            "{method} {path}: {}",
            a.body
        );
    }

    // Nothing changed: the account, the owner key, the publishable key itself.
    let me = app.whoami(&owner.token).await.ok(200);
    assert_eq!(me["account_name"], "Acme");
    assert_eq!(listed(&app, &owner).await, sorted(&[&owner, &pk]));
    let pk_after = app.admin_key(&pk.id).await;
    assert_eq!(pk_after["key_hash"], pk.key_hash.as_str());
    assert!(pk_after["revoked_at"].is_null());
}

#[tokio::test]
async fn a_publishable_key_with_public_scopes_still_cannot_manage_anything() {
    let app = common::spawn_app_with(
        r#"
[scopes]
catalog = [ { name = "products:read", description = "Read the catalogue", public = true } ]
"#,
    )
    .await;
    let acc = app.account("Acme").await;
    let owner = live(&app, &acc).await;
    let pk = make_key(
        &app,
        &acc,
        json!({ "mode": "live", "type": "publishable", "name": "web" }),
    )
    .await;
    assert_eq!(
        app.admin_key(&pk.id).await["scopes"],
        json!(["products:read"])
    );
    for (method, path) in [
        (Method::GET, "/v1/account"),
        (Method::GET, "/v1/api-keys"),
        (Method::DELETE, "/v1/account/data"),
    ] {
        app.call(method, path, &pk.token, None)
            .await
            .err(403, "insufficient_scope");
    }
    app.assert_key_works(&owner.token).await;
}
