//! The admin API (`docs/api.md#admin-api`) as the operator uses it with a root key: accounts, keys,
//! imports, usage reports and the audit trail, with every refusal that applies.

mod common;

use common::api::{assert_request_id, spawn_app_without_root, Answer};
use common::{spawn_app, spawn_app_with, TestApp, ROOT};
use keywarden_core::hashing::{fingerprint, sha256_hex, SecretHasher};
use keywarden_core::model::{HashScheme, KeyType, Mode, StoredSecret};
use reqwest::Method;
use serde_json::{json, Value};

const T0_RFC3339: &str = "2026-03-20T10:00:00Z";

fn accounts_path(id: &str) -> String {
    format!("/v1/admin/accounts/{id}")
}

fn keys_path(account: &str) -> String {
    format!("/v1/admin/accounts/{account}/keys")
}

fn key_path(id: &str) -> String {
    format!("/v1/admin/keys/{id}")
}

/// Number of accounts the admin API lists.
async fn account_count(app: &TestApp) -> usize {
    app.admin_call(Method::GET, "/v1/admin/accounts?limit=100", None)
        .await
        .ok(200)
        .as_array()
        .unwrap()
        .len()
}

/// Number of keys (all modes) the admin API lists for the account.
async fn key_count(app: &TestApp, account: &str) -> usize {
    app.admin_call(Method::GET, &keys_path(account), None)
        .await
        .ok(200)
        .as_array()
        .unwrap()
        .len()
}

// ---- the root key ---------------------------------------------------------------------

#[tokio::test]
async fn every_admin_endpoint_needs_the_root_key() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (key_id, customer_key) = app.live_key(&acc).await;
    let calls = [
        (Method::POST, "/v1/admin/accounts".to_string()),
        (Method::GET, "/v1/admin/accounts".to_string()),
        (Method::GET, accounts_path(&acc)),
        (Method::PATCH, accounts_path(&acc)),
        (Method::DELETE, accounts_path(&acc)),
        (Method::POST, format!("{}/approve", accounts_path(&acc))),
        (Method::POST, keys_path(&acc)),
        (Method::GET, keys_path(&acc)),
        (Method::POST, format!("{}/usage", accounts_path(&acc))),
        (Method::GET, key_path(&key_id)),
        (Method::PATCH, key_path(&key_id)),
        (Method::POST, format!("{}/rotate", key_path(&key_id))),
        (Method::POST, format!("{}/revoke", key_path(&key_id))),
        (Method::GET, format!("{}/activity", key_path(&key_id))),
        (Method::POST, "/v1/admin/keys/import".to_string()),
        (Method::GET, "/v1/admin/events".to_string()),
    ];
    for (method, path) in &calls {
        let url = format!("{}{path}", app.admin);
        for bearer in [
            None,
            Some("wrong_root_key_0123456789"),
            Some(&*customer_key),
        ] {
            let mut req = app.client.request(method.clone(), &url).json(&json!({}));
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let a = Answer::of(req.send().await.unwrap()).await;
            let a = a.err(401, "root_key_required");
            assert_eq!(
                a.body["error"]["type"], "authentication_error",
                "{method} {path}"
            );
        }
    }
    // The root key in another header is not accepted either.
    let res = app
        .client
        .get(format!("{}/v1/admin/accounts", app.admin))
        .header("X-API-Key", ROOT)
        .send()
        .await
        .unwrap();
    Answer::of(res).await.err(401, "root_key_required");

    // Nothing changed.
    assert_eq!(account_count(&app).await, 1);
    app.assert_key_works(&customer_key).await;
    assert!(app.admin_key(&key_id).await["revoked_at"].is_null());
}

#[tokio::test]
async fn without_any_root_key_the_admin_api_is_disabled() {
    let app = spawn_app_without_root("").await;
    for bearer in [None, Some(ROOT)] {
        let mut req = app
            .client
            .post(format!("{}/v1/admin/accounts", app.admin))
            .json(&json!({ "name": "Acme" }));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let a = Answer::of(req.send().await.unwrap()).await;
        let a = a.err(503, "admin_disabled");
        assert!(
            a.message().contains("KEYWARDEN_ROOT_KEY"),
            "{}",
            a.message()
        );
        assert_request_id(&a.headers);
    }
    let res = app
        .client
        .get(format!("{}/v1/admin/events", app.admin))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap();
    Answer::of(res).await.err(503, "admin_disabled");
    // The process still serves health on both listeners.
    for base in [&app.admin, &app.public] {
        let res = app
            .client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

// ---- accounts -------------------------------------------------------------------------

#[tokio::test]
async fn accounts_are_created_read_listed_and_updated() {
    let app = spawn_app_with(
        r#"
[plans.tiers.default]
[plans.tiers.pro]
max_keys = 5
"#,
    )
    .await;
    let a = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Acme" })),
        )
        .await;
    assert_request_id(&a.headers);
    let v = a.ok(201);
    let id = v["id"].as_str().unwrap().to_string();
    let ulid = id.strip_prefix("acc_").expect("acc_ prefix");
    assert!(ulid.parse::<ulid::Ulid>().is_ok(), "{id}");
    assert_eq!(v["name"], "Acme");
    assert_eq!(v["plan"], "default");
    assert_eq!(v["status"], "active");
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(v["created_at"], T0_RFC3339);

    let other = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({
                "name": "Globex", "plan": "pro", "status": "pending",
                "metadata": { "crm_id": 42 },
            })),
        )
        .await
        .ok(201);
    assert_eq!(other["plan"], "pro");
    assert_eq!(other["status"], "pending");
    assert_eq!(other["metadata"], json!({ "crm_id": 42 }));

    assert_eq!(
        app.admin_call(Method::GET, &accounts_path(&id), None)
            .await
            .ok(200),
        v
    );
    let list = app
        .admin_call(Method::GET, "/v1/admin/accounts", None)
        .await
        .ok(200);
    assert_eq!(list, json!([v, other]));
    let page = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/accounts?limit=1&starting_after={id}"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(page, json!([other]));

    let patched = app
        .admin_call(
            Method::PATCH,
            &accounts_path(&id),
            Some(json!({
                "name": "Acme Ltd", "plan": "pro", "status": "suspended",
                "metadata": { "tier": "gold" },
            })),
        )
        .await
        .ok(200);
    assert_eq!(patched["name"], "Acme Ltd");
    assert_eq!(patched["plan"], "pro");
    assert_eq!(patched["status"], "suspended");
    assert_eq!(patched["metadata"], json!({ "tier": "gold" }));
    assert_eq!(
        app.admin_call(Method::GET, &accounts_path(&id), None)
            .await
            .ok(200),
        patched
    );
    let types = app.event_types(&format!("account_id={id}")).await;
    for t in ["account.created", "account.updated", "account.plan_changed"] {
        assert!(types.contains(&t.to_string()), "{t} missing from {types:?}");
    }
}

#[tokio::test]
async fn unknown_accounts_are_404() {
    let app = spawn_app().await;
    let nope = "acc_01JNOPE0000000000000000000";
    app.admin_call(Method::GET, &accounts_path(nope), None)
        .await
        .err(404, "not_found");
    app.admin_call(
        Method::PATCH,
        &accounts_path(nope),
        Some(json!({ "name": "x" })),
    )
    .await
    .err(404, "not_found");
    app.admin_call(Method::DELETE, &accounts_path(nope), None)
        .await
        .err(404, "not_found");
    app.admin_call(
        Method::POST,
        &format!("{}/approve", accounts_path(nope)),
        None,
    )
    .await
    .err(404, "not_found");
    app.admin_call(
        Method::POST,
        &keys_path(nope),
        Some(json!({ "mode": "test", "name": "k" })),
    )
    .await
    .err(404, "not_found");
    app.admin_call(Method::GET, &keys_path(nope), None)
        .await
        .err(404, "not_found");
    app.admin_call(
        Method::POST,
        &format!("{}/usage", accounts_path(nope)),
        Some(json!({ "unit": "words", "amount": 1 })),
    )
    .await
    .err(404, "not_found");
}

#[tokio::test]
async fn bad_account_input_is_refused_naming_the_field_and_creates_nothing() {
    let app = spawn_app().await;
    let create = |body: Value| app.admin_call(Method::POST, "/v1/admin/accounts", Some(body));
    create(json!({ "name": "x".repeat(101) }))
        .await
        .invalid("name");
    create(json!({ "name": "" })).await.invalid("name");
    create(json!({})).await.invalid("name");
    create(json!({ "name": ["Acme"] })).await.invalid("name");
    create(json!({ "name": "Acme", "country": "ES" }))
        .await
        .invalid("country");
    create(json!({ "name": "Acme", "plan": "gold" }))
        .await
        .invalid("plan");
    create(json!({ "name": "Acme", "status": "deleted" }))
        .await
        .invalid("status");
    create(json!({ "name": "Acme", "metadata": ["a"] }))
        .await
        .invalid("metadata");
    create(json!({ "name": "Acme", "metadata": { "blob": "b".repeat(4096) } }))
        .await
        .invalid("metadata");

    let res = app
        .admin_request(Method::POST, "/v1/admin/accounts")
        .header("content-type", "application/json")
        .body("{name: Acme}")
        .send()
        .await
        .unwrap();
    Answer::of(res).await.invalid("malformed JSON");

    let res = app
        .admin_request(Method::POST, "/v1/admin/accounts")
        .json(&json!({ "name": "Acme", "metadata": { "blob": "b".repeat(65 * 1024) } }))
        .send()
        .await
        .unwrap();
    Answer::of(res).await.err(413, "payload_too_large");

    assert_eq!(account_count(&app).await, 0);

    // The largest allowed values are fine.
    let meta = json!({ "blob": "b".repeat(4000) });
    assert!(meta.to_string().len() <= 4096);
    let v = create(json!({ "name": "n".repeat(100), "metadata": meta }))
        .await
        .ok(201);
    assert_eq!(v["name"], "n".repeat(100));

    // Updates are checked the same way and change nothing when refused.
    let id = v["id"].as_str().unwrap();
    let path = accounts_path(id);
    let patch = |body: Value| app.admin_call(Method::PATCH, &path, Some(body));
    patch(json!({ "name": "x".repeat(101) }))
        .await
        .invalid("name");
    patch(json!({ "plan": "gold" })).await.invalid("plan");
    patch(json!({ "metadata": { "blob": "b".repeat(4096) } }))
        .await
        .invalid("metadata");
    patch(json!({ "owner": "me" })).await.invalid("owner");
    let after = app
        .admin_call(Method::GET, &accounts_path(id), None)
        .await
        .ok(200);
    assert_eq!(after, v);
}

#[tokio::test]
async fn a_pending_account_gets_live_keys_once_approved() {
    let app = spawn_app().await;
    let acc = app
        .account_with(json!({ "name": "Acme", "status": "pending" }))
        .await;
    let live = json!({ "mode": "live", "name": "k" });
    let a = app
        .admin_call(Method::POST, &keys_path(&acc), Some(live.clone()))
        .await
        .err(403, "account_inactive");
    assert!(a.message().contains("pending"), "{}", a.message());
    // Test keys are always allowed, and work while the account is pending.
    let (_, test) = app.test_key(&acc).await;
    app.assert_key_works(&test).await;

    let v = app
        .admin_call(
            Method::POST,
            &format!("{}/approve", accounts_path(&acc)),
            None,
        )
        .await
        .ok(200);
    assert_eq!(v["status"], "active");
    let (_, token) = app.key_pair(&acc, live).await;
    app.assert_key_works(&token).await;
}

#[tokio::test]
async fn deleting_an_account_erases_it_and_its_keys_fail_at_once() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, live) = app.live_key(&acc).await;
    let (_, test) = app.test_key(&acc).await;
    let keep = app.account("Other").await;
    let (_, other) = app.live_key(&keep).await;
    app.assert_key_works(&live).await;
    app.flush_writer().await;

    let v = app
        .admin_call(Method::DELETE, &accounts_path(&acc), None)
        .await
        .ok(200);
    assert_eq!(v["deleted_accounts"], 1);
    assert_eq!(v["deleted_api_keys"], 2);
    assert_eq!(v["deleted_events"], 3, "{v}");
    assert_eq!(v["deleted_activity"], 1, "{v}");
    assert_eq!(v["deleted_usage"], 0);
    assert_eq!(v["deleted_grants"], 0);

    app.assert_key_refused(&live, "invalid_api_key").await;
    app.assert_key_refused(&test, "invalid_api_key").await;
    app.assert_key_works(&other).await;
    app.admin_call(Method::GET, &accounts_path(&acc), None)
        .await
        .err(404, "not_found");
    app.admin_call(Method::DELETE, &accounts_path(&acc), None)
        .await
        .err(404, "not_found");
    assert_eq!(account_count(&app).await, 1);
}

// ---- keys -----------------------------------------------------------------------------

#[tokio::test]
async fn a_key_is_created_with_every_field_and_its_secret_shown_once() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let a = app
        .admin_call(
            Method::POST,
            &keys_path(&acc),
            Some(json!({
                "mode": "live",
                "name": "billing",
                "description": "in the billing service's vault",
                "owner": "ana@example.com",
                "role": "developer",
                "scopes": ["account:read", "usage:read"],
                "expires_at": "2027-01-01T00:00:00Z",
                "ip_allowlist": ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"],
                "rate_limit": { "requests": 10, "per_seconds": 1 },
                "metadata": { "team": "billing" },
            })),
        )
        .await;
    assert_request_id(&a.headers);
    let v = a.ok(201);
    let token = v["api_key"].as_str().unwrap();
    assert!(token.starts_with("kw_sk_live_"), "{token}");
    let id = v["id"].as_str().unwrap();
    assert!(id
        .strip_prefix("key_")
        .unwrap()
        .parse::<ulid::Ulid>()
        .is_ok());
    assert_eq!(v["account_id"], acc.as_str());
    assert_eq!(v["mode"], "live");
    assert_eq!(v["type"], "secret");
    assert_eq!(v["name"], "billing");
    assert_eq!(v["description"], "in the billing service's vault");
    assert_eq!(v["owner"], "ana@example.com");
    assert_eq!(v["role"], "developer");
    assert_eq!(v["scopes"], json!(["account:read", "usage:read"]));
    assert_eq!(v["expires_at"], "2027-01-01T00:00:00Z");
    assert_eq!(
        v["ip_allowlist"],
        json!(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])
    );
    assert_eq!(v["rate_limit"], json!({ "requests": 10, "per_seconds": 1 }));
    assert_eq!(v["enabled"], true);
    assert_eq!(v["metadata"], json!({ "team": "billing" }));
    assert_eq!(v["prefix"], "kw_sk_live_");
    assert_eq!(v["start"], token[..15].to_string());
    assert_eq!(v["key_hash"], fingerprint(token));
    assert_eq!(v["created_at"], T0_RFC3339);
    assert!(v["last_used_at"].is_null() && v["revoked_at"].is_null());
    app.assert_key_works(token).await;

    // Read back by id or key_hash: the same metadata, no secret.
    let mut expected = v.clone();
    expected.as_object_mut().unwrap().remove("api_key");
    for reference in [id, v["key_hash"].as_str().unwrap()] {
        let got = app.admin_key(reference).await;
        assert!(!got.to_string().contains(token));
        assert_eq!(got["id"], id);
        assert_eq!(got["scopes"], expected["scopes"]);
        assert_eq!(got["description"], expected["description"]);
    }
}

#[tokio::test]
async fn defaults_and_publishable_keys() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let v = app
        .key(&acc, json!({ "mode": "test", "name": "plain" }))
        .await;
    assert_eq!(v["type"], "secret");
    assert_eq!(v["role"], "owner");
    assert_eq!(v["scopes"], json!(["*"]));
    assert!(v["api_key"].as_str().unwrap().starts_with("kw_sk_test_"));
    assert!(v["expires_at"].is_null());

    let p = app
        .key(
            &acc,
            json!({ "mode": "live", "type": "publishable", "name": "web", "role": "owner" }),
        )
        .await;
    assert_eq!(p["type"], "publishable");
    assert_eq!(p["role"], "member");
    assert_eq!(p["scopes"], json!([]));
    assert!(p["api_key"].as_str().unwrap().starts_with("kw_pk_live_"));

    let a = app
        .admin_call(
            Method::POST,
            &keys_path(&acc),
            Some(json!({ "mode": "live", "type": "publishable", "name": "web", "scopes": ["account:read"] })),
        )
        .await
        .err(400, "invalid_scope");
    assert!(a.message().contains("account:read"), "{}", a.message());
}

#[tokio::test]
async fn bad_key_input_is_refused_naming_the_field_and_creates_nothing() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let path = keys_path(&acc);
    let create = |body: Value| app.admin_call(Method::POST, &path, Some(body));
    let with = |extra: Value| {
        let mut b = json!({ "mode": "live", "name": "k" });
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };

    create(with(json!({ "name": "x".repeat(101) })))
        .await
        .invalid("name");
    create(with(json!({ "description": "d".repeat(501) })))
        .await
        .invalid("description");
    create(with(json!({ "owner": "o".repeat(201) })))
        .await
        .invalid("owner");
    create(with(json!({ "colour": "red" })))
        .await
        .invalid("colour");
    create(json!({ "name": "k" })).await.invalid("mode");
    create(with(json!({ "mode": "production" })))
        .await
        .invalid("mode");
    create(with(json!({ "type": "private" })))
        .await
        .invalid("type");
    create(with(json!({ "role": "superuser" })))
        .await
        .invalid("role");
    create(with(json!({ "scopes": "*" })))
        .await
        .invalid("scopes");
    create(with(json!({ "enabled": false })))
        .await
        .invalid("enabled");
    create(with(json!({ "metadata": { "blob": "b".repeat(4096) } })))
        .await
        .invalid("metadata");
    create(with(
        json!({ "rate_limit": { "requests": 0, "per_seconds": 1 } }),
    ))
    .await
    .invalid("rate_limit");
    create(with(json!({ "rate_limit": { "requests": 5 } })))
        .await
        .invalid("rate_limit");
    create(with(json!({ "ip_allowlist": ["localhost"] })))
        .await
        .invalid("ip_allowlist");
    create(with(json!({ "expires_at": "2020-01-01T00:00:00Z" })))
        .await
        .invalid("expires_at");
    create(with(json!({ "app_id": "app_01JNOPE0000000000000000000" })))
        .await
        .invalid("app_id");

    let a = create(with(
        json!({ "scopes": ["invoices:read", "usage:read", "billing:*", "invoices:read"] }),
    ))
    .await
    .err(400, "invalid_scope");
    let m = a.message();
    assert!(
        m.contains("invoices:read") && m.contains("billing:*"),
        "{m}"
    );
    assert!(!m.contains("usage:read"), "{m}");

    let res = app
        .admin_request(Method::POST, &keys_path(&acc))
        .header("content-type", "application/json")
        .body(r#"{"mode": "live", "name": }"#)
        .send()
        .await
        .unwrap();
    Answer::of(res).await.invalid("malformed JSON");

    let res = app
        .admin_request(Method::POST, &keys_path(&acc))
        .json(&with(json!({ "description": "d".repeat(65 * 1024) })))
        .send()
        .await
        .unwrap();
    Answer::of(res).await.err(413, "payload_too_large");

    assert_eq!(key_count(&app, &acc).await, 0);
}

#[tokio::test]
async fn keys_are_listed_by_mode() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (live_id, _) = app.live_key(&acc).await;
    let (test_id, _) = app.test_key(&acc).await;
    let other = app.account("Other").await;
    app.live_key(&other).await;

    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = app
        .admin_call(Method::GET, &keys_path(&acc), None)
        .await
        .ok(200);
    assert!(!all.to_string().contains("api_key"));
    assert_eq!(ids(all), vec![live_id.clone(), test_id.clone()]);
    let live = app
        .admin_call(Method::GET, &format!("{}?mode=live", keys_path(&acc)), None)
        .await
        .ok(200);
    assert_eq!(ids(live), vec![live_id]);
    let test = app
        .admin_call(Method::GET, &format!("{}?mode=test", keys_path(&acc)), None)
        .await
        .ok(200);
    assert_eq!(ids(test), vec![test_id]);
    app.admin_call(Method::GET, &format!("{}?mode=prod", keys_path(&acc)), None)
        .await
        .invalid("mode");
}

#[tokio::test]
async fn unknown_keys_are_404() {
    let app = spawn_app().await;
    for reference in ["key_01JNOPE0000000000000000000", "sha256_0000"] {
        let p = key_path(reference);
        app.admin_call(Method::GET, &p, None)
            .await
            .err(404, "not_found");
        app.admin_call(Method::PATCH, &p, Some(json!({ "name": "x" })))
            .await
            .err(404, "not_found");
        app.admin_call(Method::POST, &format!("{p}/rotate"), None)
            .await
            .err(404, "not_found");
        app.admin_call(Method::POST, &format!("{p}/revoke"), None)
            .await
            .err(404, "not_found");
        app.admin_call(Method::GET, &format!("{p}/activity"), None)
            .await
            .err(404, "not_found");
    }
}

#[tokio::test]
async fn patching_a_key_takes_effect_at_once() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    let path = key_path(&id);
    let patch = |body: Value| app.admin_call(Method::PATCH, &path, Some(body));

    let v = patch(json!({
        "name": "renamed", "description": "moved to vault 2", "owner": "bob",
        "role": "member", "scopes": ["account:read"],
        "expires_at": "2026-03-20T11:00:00Z", "rate_limit": { "requests": 5, "per_seconds": 60 },
        "metadata": { "v": 2 },
    }))
    .await
    .ok(200);
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["description"], "moved to vault 2");
    assert_eq!(v["owner"], "bob");
    assert_eq!(v["role"], "member");
    assert_eq!(v["scopes"], json!(["account:read"]));
    assert_eq!(v["expires_at"], "2026-03-20T11:00:00Z");
    assert_eq!(v["rate_limit"], json!({ "requests": 5, "per_seconds": 60 }));
    assert_eq!(v["metadata"], json!({ "v": 2 }));
    assert_eq!(app.admin_key(&id).await, v);

    // Narrower scopes apply to the very next request.
    app.assert_key_works(&token).await;
    app.call(Method::GET, "/v1/api-keys", &token, None)
        .await
        .err(403, "insufficient_scope");

    // `null` removes the expiry and the rate-limit override.
    let v = patch(json!({ "expires_at": null, "rate_limit": null }))
        .await
        .ok(200);
    assert!(
        v["expires_at"].is_null() && v["rate_limit"].is_null(),
        "{v}"
    );
    app.clock.advance_secs(7200);
    app.assert_key_works(&token).await;

    // An allowlist that excludes the caller applies at once.
    patch(json!({ "ip_allowlist": ["192.0.2.0/24"] }))
        .await
        .ok(200);
    app.assert_key_refused(&token, "ip_not_allowed").await;
    patch(json!({ "ip_allowlist": [] })).await.ok(200);
    app.assert_key_works(&token).await;

    // Refused patches change nothing.
    let before = app.admin_key(&id).await;
    patch(json!({ "name": "x".repeat(101) }))
        .await
        .invalid("name");
    patch(json!({ "description": "d".repeat(501) }))
        .await
        .invalid("description");
    patch(json!({ "scopes": ["nope", "account:read", "nada"] }))
        .await
        .err(400, "invalid_scope");
    patch(json!({ "mode": "test" })).await.invalid("mode");
    patch(json!({ "enabled": "no" })).await.invalid("enabled");
    patch(json!({ "expires_at": "2020-01-01T00:00:00Z" }))
        .await
        .invalid("expires_at");
    patch(json!({ "metadata": { "blob": "b".repeat(4096) } }))
        .await
        .invalid("metadata");
    assert_eq!(app.admin_key(&id).await, before);
    assert!(
        app.event_types(&format!("account_id={acc}&type=key.updated"))
            .await
            .len()
            >= 4
    );
}

#[tokio::test]
async fn admin_rotation_keeps_the_old_secret_for_the_grace() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, old) = app.live_key(&acc).await;
    let v = app
        .admin_call(
            Method::POST,
            &format!("{}/rotate", key_path(&id)),
            Some(json!({ "grace_period_seconds": 60 })),
        )
        .await
        .ok(200);
    let new = v["api_key"].as_str().unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["key_hash"], fingerprint(new));
    assert_eq!(v["rotation_grace_until"], "2026-03-20T10:01:00Z");
    app.assert_key_works(&old).await;
    app.assert_key_works(new).await;
    app.clock.advance_secs(61);
    app.assert_key_refused(&old, "api_key_revoked").await;
    app.assert_key_works(new).await;

    // No grace: the previous secret stops at once.
    let v = app
        .admin_call(
            Method::POST,
            &format!("{}/rotate", key_path(&id)),
            Some(json!({ "grace_period_seconds": 0 })),
        )
        .await
        .ok(200);
    app.assert_key_refused(new, "api_key_revoked").await;
    app.assert_key_works(v["api_key"].as_str().unwrap()).await;

    app.admin_call(
        Method::POST,
        &format!("{}/rotate", key_path(&id)),
        Some(json!({ "grace_period_seconds": 604_801 })),
    )
    .await
    .invalid("grace_period_seconds");
}

#[tokio::test]
async fn revocation_is_immediate_and_recorded() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    app.assert_key_works(&token).await;
    let path = format!("{}/revoke", key_path(&id));
    let revoke = |body: Option<Value>| app.admin_call(Method::POST, &path, body);
    revoke(Some(json!({ "reason": "r".repeat(201) })))
        .await
        .invalid("reason");
    app.assert_key_works(&token).await;

    let v = revoke(Some(json!({ "reason": "leaked in a log" })))
        .await
        .ok(200);
    assert_eq!(v["revoked_at"], T0_RFC3339);
    assert_eq!(v["revoked_reason"], "leaked in a log");
    app.assert_key_refused(&token, "api_key_revoked").await;

    // Revoking again keeps the first record; a revoked key cannot be rotated.
    app.clock.advance_secs(10);
    let again = revoke(None).await.ok(200);
    assert_eq!(again["revoked_at"], T0_RFC3339);
    assert_eq!(again["revoked_reason"], "leaked in a log");
    app.admin_call(Method::POST, &format!("{}/rotate", key_path(&id)), None)
        .await
        .err(409, "conflict");
    app.assert_key_refused(&token, "api_key_revoked").await;
}

#[tokio::test]
async fn an_expiry_set_by_the_operator_ends_the_key() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    app.admin_call(
        Method::PATCH,
        &key_path(&id),
        Some(json!({ "expires_at": "2026-03-21T10:00:00Z" })),
    )
    .await
    .ok(200);
    app.clock.advance_secs(86_399);
    app.assert_key_works(&token).await;
    app.clock.advance_secs(1);
    app.assert_key_refused(&token, "api_key_expired").await;
}

#[tokio::test]
async fn key_activity_lists_each_request() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    app.whoami(&token).await.ok(200);
    app.clock.advance_secs(5);
    app.call(Method::GET, "/v1/api-keys/key_nope", &token, None)
        .await
        .err(404, "not_found");
    app.flush_writer().await;
    let rows = app
        .admin_call(Method::GET, &format!("{}/activity", key_path(&id)), None)
        .await
        .ok(200);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    // Newest first.
    assert_eq!(rows[0]["at"], "2026-03-20T10:00:05Z");
    assert_eq!(rows[0]["path"], "/v1/api-keys/key_nope");
    assert_eq!(rows[1]["at"], T0_RFC3339);
    assert_eq!(
        rows[1],
        json!({
            "at": T0_RFC3339, "ip": "127.0.0.1", "method": "GET",
            "path": "/v1/account", "status": 200, "code": "valid",
        })
    );
}

// ---- plan limits ----------------------------------------------------------------------

#[tokio::test]
async fn plan_limits_bound_the_active_keys_of_an_account() {
    let app = spawn_app_with(
        r#"
[plans.tiers.default]
max_keys = 2
[plans.tiers.none]
max_keys = 0
"#,
    )
    .await;
    let acc = app.account("Acme").await;
    let (first, _) = app.live_key(&acc).await;
    app.test_key(&acc).await;
    let a = app
        .admin_call(
            Method::POST,
            &keys_path(&acc),
            Some(json!({ "mode": "live", "name": "third" })),
        )
        .await
        .err(403, "plan_limit_reached");
    assert_eq!(a.body["error"]["type"], "authorization_error");
    assert_eq!(key_count(&app, &acc).await, 2);

    // Revoked keys do not count.
    app.admin_call(Method::POST, &format!("{}/revoke", key_path(&first)), None)
        .await
        .ok(200);
    app.live_key(&acc).await;
    app.admin_call(
        Method::POST,
        &keys_path(&acc),
        Some(json!({ "mode": "test", "name": "fourth" })),
    )
    .await
    .err(403, "plan_limit_reached");

    let none = app
        .account_with(json!({ "name": "Free", "plan": "none" }))
        .await;
    for mode in ["live", "test"] {
        app.admin_call(
            Method::POST,
            &keys_path(&none),
            Some(json!({ "mode": mode, "name": "k" })),
        )
        .await
        .err(403, "plan_limit_reached");
    }
    assert_eq!(key_count(&app, &none).await, 0);
}

// ---- import ---------------------------------------------------------------------------

#[tokio::test]
async fn a_key_imported_by_its_hash_works_without_its_secret_being_sent() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let token = app
        .state
        .settings
        .template
        .generate(Mode::Live, KeyType::Secret)
        .expose()
        .to_string();
    let body = json!({
        "account_id": acc, "mode": "live", "name": "legacy",
        "scheme": "sha256", "hash": sha256_hex(token.as_bytes()),
        "key_hash": fingerprint(&token), "prefix": "kw_sk_live_",
        "scopes": ["account:read"], "role": "developer",
    });
    let a = app
        .admin_call(Method::POST, "/v1/admin/keys/import", Some(body.clone()))
        .await;
    assert!(!a.body.to_string().contains(&token));
    let v = a.ok(201);
    assert!(v.get("api_key").is_none());
    assert!(v["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(v["name"], "legacy");
    assert_eq!(v["role"], "developer");
    assert_eq!(v["scopes"], json!(["account:read"]));
    assert_eq!(v["key_hash"], fingerprint(&token));

    let me = app.whoami(&token).await.ok(200);
    assert_eq!(me["account_id"], acc.as_str());
    assert_eq!(me["key"]["id"], v["id"]);
    // The first use re-stores the secret under the deployment's scheme; it keeps working.
    let id = v["id"].as_str().unwrap();
    wait_until_stored_as(&app, id, HashScheme::HmacSha256).await;
    app.assert_key_works(&token).await;
    assert_eq!(
        app.event_types(&format!("account_id={acc}&type=key.created"))
            .await
            .len(),
        1
    );
}

/// Waits for the background re-hash of a key's secret to land (it runs off the request path).
async fn wait_until_stored_as(app: &TestApp, id: &str, scheme: HashScheme) {
    for _ in 0..200 {
        let rec = app.state.store.get_key(id).await.unwrap().unwrap();
        if rec.secret.scheme == scheme {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the secret of {id} was not re-stored as {scheme:?}");
}

/// A token of the deployment's format, and its stored form under `scheme` at the cheapest
/// cost, as another system would have kept it.
fn foreign_key(app: &TestApp, scheme: HashScheme) -> (String, StoredSecret) {
    let token = app
        .state
        .settings
        .template
        .generate(Mode::Live, KeyType::Secret);
    let segment = app
        .state
        .settings
        .template
        .parse(token.expose())
        .unwrap()
        .lookup_segment()
        .to_string();
    let stored = SecretHasher::new(scheme, None, vec![], 4)
        .unwrap()
        .store(&token, &segment)
        .unwrap();
    (token.expose().to_string(), stored)
}

#[tokio::test]
async fn imports_keep_their_scheme_and_fingerprint() {
    // No checksum, so a token can be altered and still reach the hash check.
    let app = spawn_app_with(
        r#"
[keys]
template = "kw_{type}_{mode}_{random:32}"
"#,
    )
    .await;
    let acc = app.account("Acme").await;

    // A plain SHA-256 import is identified by its fingerprint without being told it.
    let (plain, stored) = foreign_key(&app, HashScheme::Sha256);
    let v = app
        .admin_call(
            Method::POST,
            "/v1/admin/keys/import",
            Some(json!({
                "account_id": acc, "mode": "live", "name": "sha",
                "scheme": "sha256", "hash": stored.lookup.to_uppercase(),
            })),
        )
        .await
        .ok(201);
    assert_eq!(v["key_hash"], fingerprint(&plain));
    assert_eq!(v["scopes"], json!(["*"]));
    assert_eq!(app.admin_key(&fingerprint(&plain)).await["id"], v["id"]);
    app.assert_key_works(&plain).await;

    // A bcrypt import is found by its lookup segment, then checked slowly.
    let (slow, stored) = foreign_key(&app, HashScheme::Bcrypt);
    app.admin_call(
        Method::POST,
        "/v1/admin/keys/import",
        Some(json!({
            "account_id": acc, "mode": "live", "name": "bcrypt",
            "scheme": "bcrypt", "hash": stored.hash, "lookup": stored.lookup,
            "key_hash": fingerprint(&slow),
        })),
    )
    .await
    .ok(201);
    app.assert_key_works(&slow).await;
    // Another token with the same lookup segment is not that key.
    let mut wrong = slow[..slow.len() - 8].to_string();
    wrong.push_str("AAAAAAAA");
    assert_ne!(wrong, slow);
    let a = app.whoami(&wrong).await;
    assert_eq!((a.status, a.code()), (401, "invalid_api_key"), "{}", a.body);
}

#[tokio::test]
async fn bad_imports_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let base = json!({
        "account_id": acc, "mode": "live", "name": "legacy",
        "scheme": "sha256", "hash": "ab".repeat(32),
    });
    let import = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        app.admin_call(Method::POST, "/v1/admin/keys/import", Some(b))
    };
    import(json!({ "scheme": "md5" })).await.invalid("scheme");
    import(json!({ "hash": "xyz" })).await.invalid("hash");
    import(json!({ "scheme": "bcrypt", "hash": "$2b$12$abc" }))
        .await
        .invalid("lookup");
    import(json!({ "name": "x".repeat(101) }))
        .await
        .invalid("name");
    import(json!({ "secret": "kw_sk_live_x" }))
        .await
        .invalid("secret");
    import(json!({ "scopes": ["nope"] }))
        .await
        .err(400, "invalid_scope");
    import(json!({ "account_id": "acc_01JNOPE0000000000000000000" }))
        .await
        .err(404, "not_found");
    assert_eq!(key_count(&app, &acc).await, 0);
}

// ---- usage ----------------------------------------------------------------------------

#[tokio::test]
async fn reported_usage_adds_up_per_mode() {
    let app = spawn_app_with(
        r#"
[plans.tiers.default]
quotas = [ { unit = "words", limit = 1000, period = "month" }, { unit = "pages", limit = 10, period = "day" } ]
"#,
    )
    .await;
    let acc = app.account("Acme").await;
    let path = format!("{}/usage", accounts_path(&acc));
    let report = |body: Value| app.admin_call(Method::POST, &path, Some(body));

    let v = report(json!({ "unit": "words", "amount": 100 }))
        .await
        .ok(200);
    assert_eq!(v["plan"], "default");
    assert_eq!(v["mode"], "live");
    assert_eq!(v["words_used"], 100);
    assert_eq!(v["words_remaining"], 900);
    let v = report(json!({ "unit": "words", "amount": 150 }))
        .await
        .ok(200);
    assert_eq!(v["words_used"], 250);
    let day = v["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["unit"] == "pages")
        .unwrap()
        .clone();
    assert_eq!(
        (&day["used"], &day["limit"], &day["remaining"]),
        (&json!(0), &json!(10), &json!(10))
    );
    let v = report(json!({ "unit": "pages", "amount": 3, "mode": "test" }))
        .await
        .ok(200);
    assert_eq!(v["mode"], "test");
    assert_eq!(v["pages_used"], 3);
    assert_eq!(v["words_used"], 0);

    // The customer sees the same figures.
    let (_, token) = app.live_key(&acc).await;
    let mine = app
        .call(Method::GET, "/v1/account/usage", &token, None)
        .await
        .ok(200);
    assert_eq!(mine["words_used"], 250);
    assert_eq!(mine["pages_used"], 0);

    report(json!({ "unit": "tokens", "amount": 1 }))
        .await
        .invalid("unit");
    report(json!({ "unit": "words", "amount": -5 }))
        .await
        .invalid("amount");
    report(json!({ "unit": "words" })).await.invalid("amount");
    report(json!({ "unit": "words", "amount": 1, "mode": "staging" }))
        .await
        .invalid("mode");
    let v = report(json!({ "unit": "words", "amount": 0 }))
        .await
        .ok(200);
    assert_eq!(v["words_used"], 250);
}

// ---- events ---------------------------------------------------------------------------

#[tokio::test]
async fn the_audit_trail_records_the_lifecycle_of_accounts_and_keys() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, _) = app.live_key(&acc).await;
    app.admin_call(
        Method::POST,
        &format!("{}/rotate", key_path(&id)),
        Some(json!({ "grace_period_seconds": 60 })),
    )
    .await
    .ok(200);
    app.clock.advance_secs(3600);
    app.admin_call(
        Method::POST,
        &format!("{}/revoke", key_path(&id)),
        Some(json!({ "reason": "done" })),
    )
    .await
    .ok(200);

    let evs = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/events?account_id={acc}"),
            None,
        )
        .await
        .ok(200);
    let evs = evs.as_array().unwrap();
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "key.revoked",
            "key.rotated",
            "key.created",
            "account.created"
        ]
    );
    for e in evs {
        assert!(e["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(e["account_id"], acc.as_str());
        assert_eq!(e["actor"], "root");
        assert_eq!(e["ip"], "127.0.0.1");
    }
    assert_eq!(evs[0]["at"], "2026-03-20T11:00:00Z");
    assert_eq!(evs[0]["mode"], "live");
    assert_eq!(evs[0]["data"]["key_id"], id.as_str());
    assert_eq!(evs[0]["data"]["reason"], "done");
    assert_eq!(evs[1]["data"]["grace_period_seconds"], 60);
    assert!(evs[3]["mode"].is_null());

    // Filters: a type family, a start time, a page size.
    assert_eq!(
        app.event_types(&format!("account_id={acc}&type=key.*"))
            .await,
        ["key.revoked", "key.rotated", "key.created"]
    );
    assert_eq!(app.event_types("type=key.rotated").await, ["key.rotated"]);
    assert_eq!(
        app.event_types("since=2026-03-20T10:30:00Z").await,
        ["key.revoked"]
    );
    assert_eq!(app.event_types("limit=2").await.len(), 2);
    app.admin_call(Method::GET, "/v1/admin/events?since=yesterday", None)
        .await
        .invalid("since");
    app.admin_call(Method::GET, "/v1/admin/events?limit=1000", None)
        .await
        .invalid("limit");
    app.admin_call(Method::GET, "/v1/admin/events?kind=x", None)
        .await
        .invalid("kind");

    // The erasure removes the account's trail and records itself.
    app.admin_call(Method::DELETE, &accounts_path(&acc), None)
        .await
        .ok(200);
    let all = app
        .admin_call(Method::GET, "/v1/admin/events", None)
        .await
        .ok(200);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["type"], "account.erased");
    assert_eq!(all[0]["actor"], "root");
    assert_eq!(all[0]["data"]["account_id"], acc.as_str());
    assert_eq!(all[0]["data"]["counts"]["deleted_api_keys"], 1);
    assert_eq!(
        app.event_types(&format!("account_id={acc}")).await,
        ["account.erased"]
    );
}

#[tokio::test]
async fn self_service_changes_are_audited_with_the_key_as_actor() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (owner_id, owner) = app.live_key(&acc).await;
    let made = app
        .call(
            Method::POST,
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "made" })),
        )
        .await
        .ok(201);
    let made_id = made["id"].as_str().unwrap();
    app.call(
        Method::POST,
        &format!("/v1/api-keys/{made_id}/rotate"),
        &owner,
        None,
    )
    .await
    .ok(200);
    app.call(
        Method::DELETE,
        &format!("/v1/api-keys/{made_id}"),
        &owner,
        None,
    )
    .await
    .ok(204);
    app.call(Method::DELETE, "/v1/account/data", &owner, None)
        .await
        .ok(200);

    let all = app
        .admin_call(Method::GET, "/v1/admin/events", None)
        .await
        .ok(200);
    let erased = &all.as_array().unwrap()[0];
    assert_eq!(erased["type"], "account.erased");
    assert_eq!(erased["actor"], owner_id.as_str());
    assert_eq!(erased["data"]["counts"]["deleted_api_keys"], 2);
    assert_eq!(erased["data"]["counts"]["deleted_events"], 5);
}

// ---- error shapes on the admin listener -------------------------------------------------

#[tokio::test]
async fn admin_errors_follow_the_configured_style() {
    let app = spawn_app_with(
        r#"
[errors]
style = "problem"
doc_url = "https://docs.example.com/errors/{code}"
"#,
    )
    .await;
    let res = app
        .client
        .get(format!("{}/v1/admin/accounts", app.admin))
        .header("Accept-Language", "es")
        .send()
        .await
        .unwrap();
    let a = Answer::of(res).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let id = assert_request_id(&a.headers);
    assert_eq!(
        a.body,
        json!({
            "type": "https://docs.example.com/errors/root_key_required",
            "title": "Unauthorized",
            "status": 401,
            "detail": "Este punto de acceso necesita una clave raíz válida.",
            "code": "root_key_required",
            "request_id": id,
        })
    );

    let a = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": 1 })),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["code"], "invalid_request");
    assert_eq!(
        a.body["type"],
        "https://docs.example.com/errors/invalid_request"
    );
    assert!(a.body["detail"].as_str().unwrap().starts_with("name:"));
}
