//! What a key may reach and give through the self-service API (docs/self-service.md): it
//! sees and manages only the keys it could have made — role not above its own, effective
//! scopes within its own, restrictions (expiry, IP allowlist, rate limit, application) no
//! looser than its own — plus itself; and a key it makes keeps its restrictions.

mod common;

use common::{spawn_app_with, TestApp, T0};
use keywarden_core::codes::Code;
use keywarden_core::decision::CompiledKey;
use keywarden_core::hashing::fingerprint;
use keywarden_core::model::{RateLimitSpec, Role};
use keywarden_server::manage::{Actor, KeyPatch, Manager};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;

/// A catalog with scopes of the customer's own API beside the built-in ones.
const CATALOG: &str = r#"
[scopes]
catalog = [
  { name = "invoices:read", description = "Read invoices" },
  { name = "invoices:write", description = "Write invoices" },
]
"#;

/// The built-in scopes a key needs to read, make, rotate and revoke keys.
const MANAGE: [&str; 4] = [
    "account:read",
    "api_keys:read",
    "api_keys:write",
    "api_keys:delete",
];

/// 2026-03-20T12:00:00Z: two hours after the test clock's start.
const T0_PLUS_2H: &str = "2026-03-20T12:00:00Z";

async fn spawn() -> TestApp {
    spawn_app_with(CATALOG).await
}

/// A live key made by the operator with `body` laid over `{mode: live, name}`; returns
/// (id, token).
async fn key(app: &TestApp, acc: &str, body: Value) -> (String, String) {
    let mut b = json!({ "mode": "live", "name": "k" });
    for (k, v) in body.as_object().unwrap() {
        b[k] = v.clone();
    }
    app.key_pair(acc, b).await
}

/// Ids of the keys `GET /v1/api-keys` lists for `token`.
async fn listed(app: &TestApp, token: &str) -> Vec<String> {
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

/// Asserts that `caller` can neither read, list, rotate nor revoke key `id`: each answers
/// 404 `not_found`, as for a key that does not exist, and the key keeps its secret.
async fn assert_out_of_reach(app: &TestApp, caller: &str, id: &str, token: &str) {
    let hash = fingerprint(token);
    for reference in [id, hash.as_str()] {
        for (method, path, body) in [
            (
                Method::POST,
                format!("/v1/api-keys/{reference}/rotate"),
                Some(json!({ "grace_period_seconds": 0 })),
            ),
            (Method::DELETE, format!("/v1/api-keys/{reference}"), None),
            (Method::GET, format!("/v1/api-keys/{reference}"), None),
            (
                Method::GET,
                format!("/v1/api-keys/{reference}/activity"),
                None,
            ),
        ] {
            let a = app.call(method.clone(), &path, caller, body).await;
            assert!(
                a.body.get("api_key").is_none(),
                "{method} {path} handed out a secret"
            );
            a.err(404, "not_found");
        }
    }
    assert!(!listed(app, caller).await.contains(&id.to_string()));
    // The key is untouched: same secret, still working.
    assert_eq!(app.admin_key(id).await["key_hash"], hash);
    assert_eq!(app.admin_key(id).await["revoked_at"], Value::Null);
    let v = app.verify(json!({ "key": token, "ip": "127.0.0.1" })).await;
    assert_eq!(v["code"], "valid", "{v}");
}

/// Rotates `id` with `caller`; returns the new token.
async fn rotate(app: &TestApp, caller: &str, id: &str) -> String {
    let v = app
        .call(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            caller,
            Some(json!({ "grace_period_seconds": 0 })),
        )
        .await
        .ok(200);
    v["api_key"].as_str().unwrap().to_string()
}

// ---- what a key reaches ------------------------------------------------------------------

#[tokio::test]
async fn developer_and_admin_keys_cannot_take_over_the_owner_key() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (owner_id, owner) = key(&app, &acc, json!({ "role": "owner" })).await;
    for role in ["developer", "admin"] {
        let (_, caller) = key(&app, &acc, json!({ "role": role })).await;
        assert_out_of_reach(&app, &caller, &owner_id, &owner).await;
        // Without the owner's secret, the account stays out of reach too.
        app.call(
            Method::PATCH,
            "/v1/account",
            &caller,
            Some(json!({ "account_name": "Hijacked" })),
        )
        .await
        .err(403, "insufficient_role");
    }
    // A developer does not reach an admin key either.
    let (admin_id, admin) = key(&app, &acc, json!({ "role": "admin" })).await;
    let (_, developer) = key(&app, &acc, json!({ "role": "developer" })).await;
    assert_out_of_reach(&app, &developer, &admin_id, &admin).await;
    assert_eq!(app.whoami(&owner).await.ok(200)["account_name"], "Acme");
}

#[tokio::test]
async fn an_admin_reaches_a_key_only_within_its_own_scopes() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (_, admin) = key(&app, &acc, json!({ "role": "admin", "scopes": MANAGE })).await;
    let (reader_id, reader) = key(
        &app,
        &acc,
        json!({ "role": "member", "scopes": ["invoices:read"] }),
    )
    .await;
    // The admin cannot read invoices, so it may not get a secret that can.
    assert_out_of_reach(&app, &admin, &reader_id, &reader).await;

    // A narrower key within the admin's scopes is its to manage.
    let (narrow_id, narrow) = key(
        &app,
        &acc,
        json!({ "role": "developer", "scopes": ["account:read", "api_keys:read"] }),
    )
    .await;
    assert!(listed(&app, &admin).await.contains(&narrow_id));
    let new = rotate(&app, &admin, &narrow_id).await;
    app.assert_key_refused(&narrow, "api_key_revoked").await;
    app.assert_key_works(&new).await;

    // An admin that holds invoices:read reaches the reader, as it could have made it.
    let mut scopes = MANAGE.to_vec();
    scopes.push("invoices:read");
    let (_, admin2) = key(&app, &acc, json!({ "role": "admin", "scopes": scopes })).await;
    let new = rotate(&app, &admin2, &reader_id).await;
    assert_eq!(
        app.admin_key(&reader_id).await["key_hash"],
        fingerprint(&new)
    );
    app.call(
        Method::DELETE,
        &format!("/v1/api-keys/{reader_id}"),
        &admin2,
        None,
    )
    .await
    .ok(204);
}

#[tokio::test]
async fn keys_of_the_same_or_a_lower_role_are_reached_and_listed() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (owner_id, owner) = key(&app, &acc, json!({ "role": "owner" })).await;
    let (admin_id, _) = key(&app, &acc, json!({ "role": "admin" })).await;
    let (dev_id, developer) = key(&app, &acc, json!({ "role": "developer" })).await;
    let (dev2_id, _) = key(&app, &acc, json!({ "role": "developer" })).await;
    let (member_id, member) = key(&app, &acc, json!({ "role": "member" })).await;
    let (member2_id, _) = key(&app, &acc, json!({ "role": "member" })).await;

    let all = vec![
        owner_id.clone(),
        admin_id.clone(),
        dev_id.clone(),
        dev2_id.clone(),
        member_id.clone(),
        member2_id.clone(),
    ];
    assert_eq!(listed(&app, &owner).await, all);
    assert_eq!(
        listed(&app, &developer).await,
        vec![
            dev_id.clone(),
            dev2_id.clone(),
            member_id.clone(),
            member2_id.clone()
        ]
    );
    // A member does not view keys at all, not even its own.
    app.call(Method::GET, "/v1/api-keys", &member, None)
        .await
        .err(403, "insufficient_role");
    // A developer manages the other developer's key and a member's.
    rotate(&app, &developer, &dev2_id).await;
    app.call(
        Method::DELETE,
        &format!("/v1/api-keys/{member2_id}"),
        &developer,
        None,
    )
    .await
    .ok(204);
    // The owner reaches everything.
    rotate(&app, &owner, &admin_id).await;
}

#[tokio::test]
async fn the_list_pages_through_the_keys_in_reach_only() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (dev_id, developer) = key(&app, &acc, json!({ "role": "developer" })).await;
    let mut expected = vec![dev_id];
    for _ in 0..4 {
        // Keys out of reach between those in reach, so that a page must look past them.
        for _ in 0..3 {
            key(&app, &acc, json!({ "role": "owner" })).await;
        }
        expected.push(key(&app, &acc, json!({ "role": "member" })).await.0);
    }
    let mut seen = Vec::new();
    let mut url = "/v1/api-keys?limit=2".to_string();
    for page in 1.. {
        assert!(page <= 3, "too many pages");
        let a = app.call(Method::GET, &url, &developer, None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let items = a.body.as_array().unwrap();
        seen.extend(items.iter().map(|k| k["id"].as_str().unwrap().to_string()));
        match a.header("link") {
            Some(link) => {
                assert_eq!(items.len(), 2);
                let start = link.find('<').unwrap() + 1;
                url = link[start..link.find('>').unwrap()].to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_key_always_reaches_itself() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    // A developer with fewer scopes than its own key needs to be reached by another.
    let (id, developer) = key(
        &app,
        &acc,
        json!({ "role": "developer", "scopes": ["api_keys:read", "api_keys:write"], "expires_at": T0_PLUS_2H }),
    )
    .await;
    app.call(Method::GET, &format!("/v1/api-keys/{id}"), &developer, None)
        .await
        .ok(200);
    assert_eq!(listed(&app, &developer).await, vec![id.clone()]);
    let new = rotate(&app, &developer, &id).await;
    app.assert_key_refused(&developer, "api_key_revoked").await;
    // It keeps its role and restrictions.
    let v = app.admin_key(&id).await;
    assert_eq!(v["role"], "developer");
    assert_eq!(v["expires_at"], T0_PLUS_2H);
    assert_eq!(v["scopes"], json!(["api_keys:read", "api_keys:write"]));

    // A member key does not read keys, itself included: viewing keys takes a role that
    // manages them.
    let (mid, member) = key(
        &app,
        &acc,
        json!({ "role": "member", "scopes": ["api_keys:read"] }),
    )
    .await;
    app.call(Method::GET, &format!("/v1/api-keys/{mid}"), &member, None)
        .await
        .err(403, "insufficient_role");
    app.call(Method::GET, "/v1/api-keys", &member, None)
        .await
        .err(403, "insufficient_role");
    app.call(Method::GET, &format!("/v1/api-keys/{id}"), &new, None)
        .await
        .ok(200);
}

#[tokio::test]
async fn a_restricted_key_does_not_reach_a_less_restricted_one() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (_, caller) = key(
        &app,
        &acc,
        json!({
            "role": "developer",
            "expires_at": T0_PLUS_2H,
            "ip_allowlist": ["127.0.0.0/8"],
            "rate_limit": { "requests": 300, "per_seconds": 60 },
        }),
    )
    .await;
    let within = json!({
        "role": "developer",
        "expires_at": "2026-03-20T11:00:00Z",
        "ip_allowlist": ["127.0.0.1"],
        "rate_limit": { "requests": 2, "per_seconds": 1 },
    });
    // Each restriction loosened in turn puts the sibling out of reach.
    let loosened = [
        ("expires_at", Value::Null),
        ("expires_at", json!("2026-03-20T13:00:00Z")),
        ("ip_allowlist", json!([])),
        ("ip_allowlist", json!(["127.0.0.1", "10.0.0.1"])),
        // No rate limit of its own: the plan's 600 a minute.
        ("rate_limit", Value::Null),
        ("rate_limit", json!({ "requests": 100, "per_seconds": 1 })),
        // The same rate with a burst larger than the caller's.
        ("rate_limit", json!({ "requests": 600, "per_seconds": 120 })),
    ];
    for (field, value) in loosened {
        let mut body = within.clone();
        body[field] = value.clone();
        let (id, token) = key(&app, &acc, body).await;
        assert_out_of_reach(&app, &caller, &id, &token).await;
    }
    let (id, _) = key(&app, &acc, within).await;
    rotate(&app, &caller, &id).await;
}

#[tokio::test]
async fn a_key_without_a_rate_limit_of_its_own_compares_by_its_plan_s() {
    // The default plan allows 600 requests a minute.
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (_, caller) = key(&app, &acc, json!({ "role": "developer" })).await;
    // Under the plan's 600 a minute: reached; above it: not.
    let (slow, _) = key(
        &app,
        &acc,
        json!({ "role": "developer", "rate_limit": { "requests": 5, "per_seconds": 1 } }),
    )
    .await;
    rotate(&app, &caller, &slow).await;
    let (fast, fast_token) = key(
        &app,
        &acc,
        json!({ "role": "developer", "rate_limit": { "requests": 50, "per_seconds": 1 } }),
    )
    .await;
    assert_out_of_reach(&app, &caller, &fast, &fast_token).await;
}

// ---- what a key gives ---------------------------------------------------------------------

#[tokio::test]
async fn a_new_key_inherits_its_creator_s_restrictions() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (_, creator) = key(
        &app,
        &acc,
        json!({
            "role": "developer",
            "expires_at": T0_PLUS_2H,
            "ip_allowlist": ["127.0.0.1/32"],
            "rate_limit": { "requests": 5, "per_seconds": 3600 },
        }),
    )
    .await;
    let made = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &creator,
            Some(json!({ "name": "child" })),
        )
        .await
        .ok(201);
    assert_eq!(made["expires_at"], T0_PLUS_2H);
    let id = made["id"].as_str().unwrap();
    let child = made["api_key"].as_str().unwrap();
    let v = app.admin_key(id).await;
    assert_eq!(v["expires_at"], T0_PLUS_2H);
    assert_eq!(v["ip_allowlist"], json!(["127.0.0.1/32"]));
    assert_eq!(
        v["rate_limit"],
        json!({ "requests": 5, "per_seconds": 3600 })
    );
    assert_eq!(v["role"], "developer");

    // They hold: five requests an hour, then 429; gone after two hours.
    for _ in 0..5 {
        app.assert_key_works(child).await;
    }
    app.whoami(child).await.err(429, "rate_limit_exceeded");
    app.clock.advance_secs(2 * 3600 + 1);
    app.assert_key_refused(child, "api_key_expired").await;
}

#[tokio::test]
async fn a_new_key_may_not_outlive_or_outreach_its_creator() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (_, creator) = key(
        &app,
        &acc,
        json!({
            "role": "developer",
            "expires_at": T0_PLUS_2H,
            "ip_allowlist": ["127.0.0.0/24", "2001:db8::/32"],
        }),
    )
    .await;
    let create = |body: Value| app.call(Method::POST, "/v1/api-keys", &creator, Some(body));

    let a = create(json!({ "name": "k", "expires_at": "2026-03-20T12:00:01Z" }))
        .await
        .invalid("expires_at");
    assert!(a.message().contains(T0_PLUS_2H), "{}", a.message());
    create(json!({ "name": "k", "ip_allowlist": [] }))
        .await
        .invalid("ip_allowlist");
    let a = create(json!({ "name": "k", "ip_allowlist": ["127.0.0.1", "10.0.0.0/8"] }))
        .await
        .invalid("ip_allowlist");
    assert!(a.message().contains("10.0.0.0/8"), "{}", a.message());
    assert!(!a.message().contains("127.0.0.1"), "{}", a.message());
    // A network wider than the creator's, though overlapping it.
    create(json!({ "name": "k", "ip_allowlist": ["127.0.0.0/16"] }))
        .await
        .invalid("ip_allowlist");
    create(json!({ "name": "k", "ip_allowlist": ["2001::/16"] }))
        .await
        .invalid("ip_allowlist");
    // Nothing was made.
    assert_eq!(listed(&app, &creator).await.len(), 1);

    // Narrower is fine, in both families, and an earlier expiry too.
    let made = create(json!({
        "name": "k",
        "expires_at": "2026-03-20T11:00:00Z",
        "ip_allowlist": ["127.0.0.1", "2001:db8:1::/48"],
    }))
    .await
    .ok(201);
    assert_eq!(made["expires_at"], "2026-03-20T11:00:00Z");
    app.assert_key_works(made["api_key"].as_str().unwrap())
        .await;
    let v = app.admin_key(made["id"].as_str().unwrap()).await;
    assert_eq!(v["ip_allowlist"], json!(["127.0.0.1", "2001:db8:1::/48"]));
}

#[tokio::test]
async fn an_unrestricted_creator_leaves_its_key_unrestricted_unless_asked() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (_, owner) = key(&app, &acc, json!({ "role": "owner" })).await;
    let made = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "k" })),
        )
        .await
        .ok(201);
    let v = app.admin_key(made["id"].as_str().unwrap()).await;
    assert_eq!(v["expires_at"], Value::Null);
    assert_eq!(v["ip_allowlist"], json!([]));
    assert_eq!(v["rate_limit"], Value::Null);
}

#[tokio::test]
async fn rotation_keeps_the_key_s_restrictions() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let (_, owner) = key(&app, &acc, json!({ "role": "owner" })).await;
    let (id, _) = key(
        &app,
        &acc,
        json!({
            "role": "developer",
            "expires_at": T0_PLUS_2H,
            "ip_allowlist": ["127.0.0.1/32"],
            "rate_limit": { "requests": 3, "per_seconds": 3600 },
        }),
    )
    .await;
    let before = app.admin_key(&id).await;
    let new = rotate(&app, &owner, &id).await;
    let after = app.admin_key(&id).await;
    for field in ["expires_at", "ip_allowlist", "rate_limit", "role", "scopes"] {
        assert_eq!(before[field], after[field], "{field}");
    }
    for _ in 0..3 {
        app.assert_key_works(&new).await;
    }
    app.whoami(&new).await.err(429, "rate_limit_exceeded");
    app.clock.advance_secs(2 * 3600 + 1);
    app.assert_key_refused(&new, "api_key_expired").await;
}

// ---- what a key changes ---------------------------------------------------------------------

/// The management layer's bounds for a change made by a customer's key: the self-service
/// API has no endpoint changing a key's restrictions, so this is checked one level down.
#[tokio::test]
async fn a_change_made_by_a_key_cannot_lift_a_restriction_beyond_its_own() {
    let app = spawn().await;
    let acc = app.account("Acme").await;
    let restricted = json!({
        "role": "developer",
        "expires_at": T0_PLUS_2H,
        "ip_allowlist": ["127.0.0.1/32"],
        "rate_limit": { "requests": 5, "per_seconds": 3600 },
    });
    let (caller_id, _) = key(&app, &acc, restricted.clone()).await;
    let (sibling_id, _) = key(&app, &acc, restricted).await;

    let state = &app.state;
    let m = Manager::new(state);
    let record = state.store.get_key(&caller_id).await.unwrap().unwrap();
    let account = m.account(&acc).await.unwrap();
    let within = m.ceiling(
        Arc::new(CompiledKey::compile(record, &state.settings.catalog)),
        &account,
    );
    let actor = Actor::key(&caller_id, None);
    let hour = 3_600_000;
    for id in [&caller_id, &sibling_id] {
        let k = m.key_within(&within, id).await.unwrap();
        let before = app.admin_key(id).await;
        let lifts = [
            (
                "expires_at",
                KeyPatch {
                    expires_at: Some(None),
                    ..KeyPatch::default()
                },
            ),
            (
                "expires_at",
                KeyPatch {
                    expires_at: Some(Some(T0 + 3 * hour)),
                    ..KeyPatch::default()
                },
            ),
            (
                "ip_allowlist",
                KeyPatch {
                    ip_allowlist: Some(vec![]),
                    ..KeyPatch::default()
                },
            ),
            (
                "ip_allowlist",
                KeyPatch {
                    ip_allowlist: Some(vec!["10.0.0.1".into()]),
                    ..KeyPatch::default()
                },
            ),
            (
                "rate_limit",
                KeyPatch {
                    rate_limit: Some(None),
                    ..KeyPatch::default()
                },
            ),
            (
                "rate_limit",
                KeyPatch {
                    rate_limit: Some(Some(RateLimitSpec {
                        requests: 6,
                        per_seconds: 3600,
                    })),
                    ..KeyPatch::default()
                },
            ),
        ];
        for (field, patch) in lifts {
            let e = m
                .update_key(&actor, k.clone(), patch, Some(&within))
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::InvalidRequest, "{field}");
            let detail = e.detail.unwrap_or_default();
            assert!(detail.starts_with(field), "{field}: {detail}");
        }
        let e = m
            .update_key(
                &actor,
                k.clone(),
                KeyPatch {
                    role: Some(Role::Admin),
                    ..KeyPatch::default()
                },
                Some(&within),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InsufficientRole);
        assert_eq!(
            app.admin_key(id).await,
            before,
            "a refused change changed the key"
        );

        // Narrowing is fine.
        let k = m
            .update_key(
                &actor,
                k,
                KeyPatch {
                    expires_at: Some(Some(T0 + hour)),
                    rate_limit: Some(Some(RateLimitSpec {
                        requests: 1,
                        per_seconds: 3600,
                    })),
                    ..KeyPatch::default()
                },
                Some(&within),
            )
            .await
            .unwrap();
        assert_eq!(k.expires_at, Some(T0 + hour));
    }
}
