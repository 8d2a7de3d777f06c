//! Delegated access and key kinds: third-party applications and their two secrets, grants
//! of an account to an application, two-header authentication in every place a key is
//! checked, publishable keys, default key sets, recoverable test secrets, and rolling
//! versus rotating a key, each with every refusal, and the audit trail of a whole flow.

mod common;

use common::{spawn_app_with, spawn_config, Answer, TestApp, ROOT};
use keywarden_core::model::HashScheme;
use keywarden_server::app::Service;
use keywarden_server::config::Config;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;

const APP_HEADER: &str = "X-App-Secret";

/// A catalog with one public scope, an alias, and the two-header setting on.
const CATALOG: &str = r#"
[auth]
app_secret_header = "X-App-Secret"

[scopes]
catalog = [
  { name = "customers:read", description = "Read customers", public = true },
  { name = "customers:write", description = "Write customers" },
  { name = "invoices:read", description = "Read invoices" },
  { name = "invoices:write", description = "Write invoices" },
  { name = "invoices:send", description = "Send invoices" },
]

[scopes.aliases]
"invoices:all" = ["invoices:read", "invoices:write"]
"#;

async fn spawn(extra: &str) -> TestApp {
    spawn_app_with(&format!("{CATALOG}\n{extra}")).await
}

/// An application as the operator creates it.
struct App {
    id: String,
    production: String,
    sandbox: String,
}

async fn create_app(app: &TestApp, scopes: Value) -> App {
    let v = app
        .admin_call(
            Method::POST,
            "/v1/admin/applications",
            Some(json!({
                "name": "Ledger Sync",
                "description": "Syncs invoices to a ledger",
                "url": "https://ledger.example/keywarden",
                "scopes": scopes,
            })),
        )
        .await
        .ok(201);
    App {
        id: v["id"].as_str().unwrap().to_string(),
        production: v["secrets"]["production"].as_str().unwrap().to_string(),
        sandbox: v["secrets"]["sandbox"].as_str().unwrap().to_string(),
    }
}

/// A grant made by the operator: (grant id, key id, token).
async fn admin_grant(app: &TestApp, account: &str, body: Value) -> (String, String, String) {
    let v = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/accounts/{account}/grants"),
            Some(body),
        )
        .await
        .ok(201);
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"]["id"].as_str().unwrap().to_string(),
        v["key"]["api_key"].as_str().unwrap().to_string(),
    )
}

/// `POST /v1/verify` with a key, an optional application secret and scopes.
async fn verify(app: &TestApp, key: &str, secret: Option<&str>, scopes: &[&str]) -> Value {
    let mut body = json!({ "key": key, "scopes": scopes });
    if let Some(s) = secret {
        body["app_secret"] = json!(s);
    }
    app.verify(body).await
}

#[track_caller]
fn assert_code(v: &Value, code: &str) {
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["valid"], code == "valid", "{v}");
}

/// A self-service call carrying an application secret too.
async fn call_with_secret(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    secret: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = app.public_request(method, path).bearer_auth(key);
    if let Some(s) = secret {
        req = req.header(APP_HEADER, s);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    Answer::of(req.send().await.unwrap()).await
}

// ---------------------------------------------------------------------------------------
// Applications
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn applications_are_created_read_listed_and_updated_and_secrets_shown_once() {
    let app = spawn("").await;
    let res = app
        .admin_call(
            Method::POST,
            "/v1/admin/applications",
            Some(json!({
                "name": "Ledger Sync",
                "description": "Syncs invoices",
                "url": "https://ledger.example",
                "scopes": ["customers:read", "invoices:all"],
            })),
        )
        .await;
    let created = res.ok(201);
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("app_") && id.len() == 30, "{id}");
    let production = created["secrets"]["production"].as_str().unwrap();
    let sandbox = created["secrets"]["sandbox"].as_str().unwrap();
    assert!(production.starts_with("kwapp_prod_") && production.len() == 11 + 32);
    assert!(sandbox.starts_with("kwapp_sbx_") && sandbox.len() == 10 + 32);
    assert_ne!(production, sandbox);
    assert_eq!(created["scopes"], json!(["customers:read", "invoices:all"]));
    assert_eq!(created["url"], "https://ledger.example");

    // Read back and listed: never a secret, nor a stored hash.
    let got = app
        .admin_call(Method::GET, &format!("/v1/admin/applications/{id}"), None)
        .await
        .ok(200);
    let listed = app
        .admin_call(Method::GET, "/v1/admin/applications", None)
        .await
        .ok(200);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id);
    for v in [&got, &listed] {
        let text = v.to_string();
        assert!(
            !text.contains(production) && !text.contains(sandbox),
            "{text}"
        );
        assert!(
            !text.contains("secrets") && !text.contains("lookup"),
            "{text}"
        );
    }
    assert_eq!(got["name"], "Ledger Sync");
    assert_eq!(got["description"], "Syncs invoices");

    // Stored as HMAC digests only.
    let stored = app.state.store.get_app(id).await.unwrap().unwrap();
    assert_eq!(stored.production.scheme, HashScheme::HmacSha256);
    assert_eq!(stored.sandbox.scheme, HashScheme::HmacSha256);
    assert!(!stored.production.lookup.contains(production));

    // Updated: name, URL removed, scopes replaced.
    let patched = app
        .admin_call(
            Method::PATCH,
            &format!("/v1/admin/applications/{id}"),
            Some(json!({ "name": "Ledger Sync 2", "url": null, "scopes": ["customers:read"] })),
        )
        .await
        .ok(200);
    assert_eq!(patched["name"], "Ledger Sync 2");
    assert!(patched["url"].is_null());
    assert_eq!(patched["scopes"], json!(["customers:read"]));
    assert!(patched.get("secrets").is_none());
    let got = app
        .admin_call(Method::GET, &format!("/v1/admin/applications/{id}"), None)
        .await
        .ok(200);
    assert_eq!(got["name"], "Ledger Sync 2");
}

#[tokio::test]
async fn application_input_is_checked_against_the_catalog_and_creates_nothing_when_bad() {
    let app = spawn("").await;
    let create = |body: Value| {
        let app = &app;
        async move {
            app.admin_call(Method::POST, "/v1/admin/applications", Some(body))
                .await
        }
    };
    let a = create(json!({ "name": "x", "scopes": ["customers:read", "payments:refund"] }))
        .await
        .err(400, "invalid_scope");
    assert!(a.message().contains("payments:refund"), "{}", a.message());
    create(json!({ "name": "x", "scopes": [] }))
        .await
        .err(400, "invalid_scope");
    create(json!({ "name": "x" })).await.invalid("scopes");
    create(json!({ "name": "", "scopes": ["customers:read"] }))
        .await
        .invalid("name");
    create(json!({ "name": "x", "scopes": ["customers:read"], "url": "ftp://x" }))
        .await
        .invalid("url");
    create(json!({ "name": "x", "scopes": ["customers:read"], "url": "https://a b" }))
        .await
        .invalid("url");
    create(json!({ "name": "x", "scopes": ["customers:read"], "description": "d".repeat(501) }))
        .await
        .invalid("description");
    create(json!({ "name": "x", "scopes": ["customers:read"], "secret": "mine" }))
        .await
        .invalid("secret");
    let listed = app
        .admin_call(Method::GET, "/v1/admin/applications", None)
        .await
        .ok(200);
    assert_eq!(listed, json!([]));

    // Unknown applications are 404 everywhere; so is an environment that does not exist.
    let unknown = "app_01JNOPE0000000000000000000";
    app.admin_call(
        Method::GET,
        &format!("/v1/admin/applications/{unknown}"),
        None,
    )
    .await
    .err(404, "not_found");
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/applications/{unknown}"),
        Some(json!({ "name": "y" })),
    )
    .await
    .err(404, "not_found");
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/applications/{unknown}/secrets/production/rotate"),
        None,
    )
    .await
    .err(404, "not_found");
    let real = create_app(&app, json!(["customers:read"])).await;
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/applications/{}/secrets/staging/rotate", real.id),
        None,
    )
    .await
    .err(404, "not_found");
    // A PATCH with a scope outside the catalog changes nothing.
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/applications/{}", real.id),
        Some(json!({ "scopes": ["nope:nope"] })),
    )
    .await
    .err(400, "invalid_scope");
    let got = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/applications/{}", real.id),
            None,
        )
        .await
        .ok(200);
    assert_eq!(got["scopes"], json!(["customers:read"]));
}

#[tokio::test]
async fn every_new_admin_endpoint_needs_the_root_key() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let (grant, key, _) = admin_grant(&app, &acc, json!({ "app_id": a.id })).await;
    let calls = [
        (Method::POST, "/v1/admin/applications".to_string()),
        (Method::GET, "/v1/admin/applications".to_string()),
        (Method::GET, format!("/v1/admin/applications/{}", a.id)),
        (Method::PATCH, format!("/v1/admin/applications/{}", a.id)),
        (
            Method::POST,
            format!("/v1/admin/applications/{}/secrets/sandbox/rotate", a.id),
        ),
        (Method::POST, format!("/v1/admin/accounts/{acc}/grants")),
        (Method::GET, format!("/v1/admin/accounts/{acc}/grants")),
        (Method::GET, format!("/v1/admin/grants/{grant}")),
        (Method::DELETE, format!("/v1/admin/grants/{grant}")),
        (Method::POST, format!("/v1/admin/keys/{key}/reveal")),
    ];
    for (method, path) in &calls {
        for bearer in [
            None,
            Some("wrong_root_key_0123456789"),
            Some(a.production.as_str()),
        ] {
            let mut req = app
                .client
                .request(method.clone(), format!("{}{path}", app.admin))
                .json(&json!({}));
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            Answer::of(req.send().await.unwrap())
                .await
                .err(401, "root_key_required");
        }
    }
    // Nothing changed.
    let grants = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/accounts/{acc}/grants"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(grants.as_array().unwrap().len(), 1);
    assert_eq!(
        app.event_types("type=application.*").await,
        vec!["application.created"]
    );
}

// ---------------------------------------------------------------------------------------
// Two-header authentication
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn two_header_auth_in_verify_needs_the_secret_of_the_keys_environment() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read", "invoices:read"])).await;
    let (_, _, live) = admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "live" })).await;
    let (_, _, test) = admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "test" })).await;
    assert!(live.starts_with("kw_sk_live_") && test.starts_with("kw_sk_test_"));

    let scopes = ["customers:read"];
    // Production goes with live keys, sandbox with test keys.
    assert_code(
        &verify(&app, &live, Some(&a.production), &scopes).await,
        "valid",
    );
    assert_code(
        &verify(&app, &test, Some(&a.sandbox), &scopes).await,
        "valid",
    );
    // The other environment's secret, a wrong one, or none: 401 invalid_app_secret.
    for (key, secret) in [
        (&live, Some(a.sandbox.as_str())),
        (&test, Some(a.production.as_str())),
        (&live, Some("kwapp_prod_0000000000000000000000000000000")),
        (&live, None),
        (&test, Some("")),
    ] {
        let v = verify(&app, key, secret, &scopes).await;
        assert_code(&v, "invalid_app_secret");
        assert_eq!(v["status"], 401);
    }
    // The secret may also come in the original request's headers.
    let v = app
        .verify(json!({ "headers": { "X-API-Key": live, "X-App-Secret": a.production } }))
        .await;
    assert_code(&v, "valid");
    let v = app
        .verify(json!({ "headers": { "X-API-Key": live, "X-App-Secret": a.sandbox } }))
        .await;
    assert_code(&v, "invalid_app_secret");

    // Keys bound to no application are unaffected.
    let (_, plain) = app.live_key(&acc).await;
    assert_code(&verify(&app, &plain, None, &scopes).await, "valid");
    assert_code(
        &verify(&app, &plain, Some("anything"), &scopes).await,
        "valid",
    );

    // The app secret is checked before the scopes: a wrong secret says nothing about them.
    assert_code(
        &verify(&app, &live, Some(&a.sandbox), &["invoices:send"]).await,
        "invalid_app_secret",
    );
    assert_code(
        &verify(&app, &live, Some(&a.production), &["invoices:send"]).await,
        "insufficient_scope",
    );
}

#[tokio::test]
async fn each_app_secret_is_rotated_on_its_own_and_the_old_one_stops_at_once() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let (_, _, live) = admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "live" })).await;
    let (_, _, test) = admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "test" })).await;
    // Warm the caches with the current secrets.
    assert_code(
        &verify(&app, &live, Some(&a.production), &[]).await,
        "valid",
    );
    assert_code(&verify(&app, &test, Some(&a.sandbox), &[]).await, "valid");

    let v = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/applications/{}/secrets/production/rotate", a.id),
            None,
        )
        .await
        .ok(200);
    assert_eq!(v["environment"], "production");
    let new_production = v["secret"].as_str().unwrap().to_string();
    assert!(new_production.starts_with("kwapp_prod_"));
    assert_ne!(new_production, a.production);
    assert!(v.get("secrets").is_none());

    assert_code(
        &verify(&app, &live, Some(&a.production), &[]).await,
        "invalid_app_secret",
    );
    assert_code(
        &verify(&app, &live, Some(&new_production), &[]).await,
        "valid",
    );
    // The sandbox secret did not change.
    assert_code(&verify(&app, &test, Some(&a.sandbox), &[]).await, "valid");

    let v = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/applications/{}/secrets/sandbox/rotate", a.id),
            None,
        )
        .await
        .ok(200);
    let new_sandbox = v["secret"].as_str().unwrap().to_string();
    assert!(new_sandbox.starts_with("kwapp_sbx_"));
    assert_code(
        &verify(&app, &test, Some(&a.sandbox), &[]).await,
        "invalid_app_secret",
    );
    assert_code(&verify(&app, &test, Some(&new_sandbox), &[]).await, "valid");
    assert_code(
        &verify(&app, &live, Some(&new_production), &[]).await,
        "valid",
    );

    // The rotated secrets are never shown again.
    let got = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/applications/{}", a.id),
            None,
        )
        .await
        .ok(200)
        .to_string();
    assert!(!got.contains(&new_production) && !got.contains(&new_sandbox));
}

#[tokio::test]
async fn two_header_auth_in_forward_auth_and_the_self_service_api() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read", "account:read"])).await;
    let (_, _, live) = admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "live" })).await;

    let forward = |secret: Option<String>| {
        let app = &app;
        let live = live.clone();
        async move {
            let mut req = app
                .client
                .get(format!("{}/v1/forward-auth", app.admin))
                .header("X-Original-Method", "GET")
                .header("X-Original-URI", "/v1/customers/1")
                .header("X-API-Key", live);
            if let Some(s) = secret {
                req = req.header(APP_HEADER, s);
            }
            Answer::of(req.send().await.unwrap()).await
        }
    };
    let ok = forward(Some(a.production.clone())).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("x-keywarden-account-id"), Some(acc.as_str()));
    for secret in [Some(a.sandbox.clone()), Some("wrong".to_string()), None] {
        let denied = forward(secret).await.err(401, "invalid_app_secret");
        assert_eq!(denied.header("x-keywarden-status"), Some("401"));
    }

    // The self-service API checks the key the same way.
    let who = call_with_secret(
        &app,
        Method::GET,
        "/v1/account",
        &live,
        Some(&a.production),
        None,
    )
    .await
    .ok(200);
    assert_eq!(who["account_id"], acc.as_str());
    assert_eq!(who["role"], "member");
    call_with_secret(
        &app,
        Method::GET,
        "/v1/account",
        &live,
        Some(&a.sandbox),
        None,
    )
    .await
    .err(401, "invalid_app_secret");
    call_with_secret(&app, Method::GET, "/v1/account", &live, None, None)
        .await
        .err(401, "invalid_app_secret");
}

#[tokio::test]
async fn two_header_auth_in_the_gateway() {
    // An upstream that answers who it was told the caller is, and whether the
    // credentials reached it.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let router = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        axum::Json(json!({
            "key_id": h("x-keywarden-key-id"),
            "app_secret": h("x-app-secret"),
            "api_key": h("x-api-key"),
        }))
    });
    let server = tokio::spawn(async move {
        axum::serve(upstream, router).await.unwrap();
    });
    let app = spawn(&format!(
        "[gateway]\nupstream = \"http://{upstream_addr}\"\n"
    ))
    .await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let (_, key_id, live) =
        admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "live" })).await;

    let through = |secret: Option<String>| {
        let app = &app;
        let live = live.clone();
        async move {
            let mut req = app
                .client
                .get(format!("{}/customers/1", app.public))
                .header("X-API-Key", live);
            if let Some(s) = secret {
                req = req.header(APP_HEADER, s);
            }
            Answer::of(req.send().await.unwrap()).await
        }
    };
    let ok = through(Some(a.production.clone())).await.ok(200);
    assert_eq!(ok["key_id"], key_id.as_str());
    // Neither credential reaches the upstream.
    assert_eq!(ok["app_secret"], "");
    assert_eq!(ok["api_key"], "");
    for secret in [Some(a.sandbox.clone()), Some("wrong".into()), None] {
        through(secret).await.err(401, "invalid_app_secret");
    }
    server.abort();
}

#[tokio::test]
async fn without_the_header_setting_keys_of_applications_need_no_secret() {
    let app = spawn_app_with(
        r#"
[scopes]
catalog = [{ name = "customers:read", description = "Read customers" }]
"#,
    )
    .await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let (_, _, live) = admin_grant(&app, &acc, json!({ "app_id": a.id })).await;
    assert_code(
        &verify(&app, &live, None, &["customers:read"]).await,
        "valid",
    );
    assert_code(
        &verify(&app, &live, Some(&a.sandbox), &["customers:read"]).await,
        "valid",
    );
}

#[tokio::test]
async fn app_secrets_are_hmac_digests_even_when_keys_use_bcrypt() {
    let app = spawn("[keys]\nhash = \"bcrypt\"\nbcrypt_cost = 4\n").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let stored = app.state.store.get_app(&a.id).await.unwrap().unwrap();
    assert_eq!(stored.production.scheme, HashScheme::HmacSha256);
    assert_eq!(stored.sandbox.scheme, HashScheme::HmacSha256);
    assert!(stored.production.hash.is_empty());
    let (_, key_id, live) = admin_grant(&app, &acc, json!({ "app_id": a.id })).await;
    let key = app.state.store.get_key(&key_id).await.unwrap().unwrap();
    assert_eq!(key.secret.scheme, HashScheme::Bcrypt);
    assert_code(
        &verify(&app, &live, Some(&a.production), &[]).await,
        "valid",
    );
    assert_code(
        &verify(&app, &live, Some(&a.sandbox), &[]).await,
        "invalid_app_secret",
    );
}

// ---------------------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_operator_grants_at_most_the_requested_scopes() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read", "invoices:all"])).await;
    let grants_path = format!("/v1/admin/accounts/{acc}/grants");

    // Wider than requested: 400 invalid_scope naming each offender, and nothing made.
    let refused = app
        .admin_call(
            Method::POST,
            &grants_path,
            Some(json!({ "app_id": a.id, "scopes": ["customers:read", "customers:write", "invoices:send"] })),
        )
        .await
        .err(400, "invalid_scope");
    assert!(
        refused.message().contains("customers:write"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("invoices:send"),
        "{}",
        refused.message()
    );
    assert!(
        !refused.message().contains("customers:read,"),
        "{}",
        refused.message()
    );
    for body in [
        json!({ "app_id": a.id, "scopes": ["*"] }),
        json!({ "app_id": a.id, "scopes": ["nope:nope"] }),
        json!({ "app_id": a.id, "scopes": [] }),
    ] {
        app.admin_call(Method::POST, &grants_path, Some(body))
            .await
            .err(400, "invalid_scope");
    }
    app.admin_call(
        Method::POST,
        &grants_path,
        Some(json!({ "app_id": "app_01JNOPE0000000000000000000" })),
    )
    .await
    .invalid("app_id");
    app.admin_call(
        Method::POST,
        "/v1/admin/accounts/acc_01JNOPE0000000000000000000/grants",
        Some(json!({ "app_id": a.id })),
    )
    .await
    .err(404, "not_found");
    let none = app
        .admin_call(Method::GET, &grants_path, None)
        .await
        .ok(200);
    assert_eq!(none, json!([]));
    assert!(app.event_types("type=grant.*").await.is_empty());
    assert_eq!(app.state.store.count_active_keys(&acc).await.unwrap(), 0);

    // Within the request (an alias member counts): the grant and its key.
    let v = app
        .admin_call(
            Method::POST,
            &grants_path,
            Some(json!({ "app_id": a.id, "scopes": ["customers:read", "invoices:read"] })),
        )
        .await
        .ok(201);
    let grant_id = v["id"].as_str().unwrap();
    assert!(grant_id.starts_with("grt_"));
    assert_eq!(v["account_id"], acc.as_str());
    assert_eq!(v["app_id"], a.id.as_str());
    assert_eq!(v["scopes"], json!(["customers:read", "invoices:read"]));
    let key = &v["key"];
    assert_eq!(key["app_id"], a.id.as_str());
    assert_eq!(key["mode"], "live");
    assert_eq!(key["type"], "secret");
    assert_eq!(key["role"], "member");
    assert_eq!(key["scopes"], json!(["customers:read", "invoices:read"]));
    let token = key["api_key"].as_str().unwrap();
    let stored = app
        .state
        .store
        .get_key(key["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.grant_id.as_deref(), Some(grant_id));

    // The key holds at most the granted scopes.
    assert_code(
        &verify(&app, token, Some(&a.production), &["invoices:read"]).await,
        "valid",
    );
    assert_code(
        &verify(&app, token, Some(&a.production), &["invoices:write"]).await,
        "insufficient_scope",
    );

    // Read back and listed.
    let got = app
        .admin_call(Method::GET, &format!("/v1/admin/grants/{grant_id}"), None)
        .await
        .ok(200);
    assert_eq!(got["scopes"], json!(["customers:read", "invoices:read"]));
    assert!(got.get("key").is_none());
    let list = app
        .admin_call(Method::GET, &grants_path, None)
        .await
        .ok(200);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Without scopes, everything the application requested.
    let v = app
        .admin_call(
            Method::POST,
            &grants_path,
            Some(json!({ "app_id": a.id, "mode": "test" })),
        )
        .await
        .ok(201);
    assert_eq!(v["scopes"], json!(["customers:read", "invoices:all"]));
    assert_eq!(v["key"]["mode"], "test");
}

#[tokio::test]
async fn grant_refusals_leave_nothing_behind() {
    let app = spawn("[plans.tiers.default]\n[plans.tiers.free]\nmax_keys = 0\n").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    // A live key for a pending account is refused before a grant exists.
    let pending = app
        .account_with(json!({ "name": "Pending", "status": "pending" }))
        .await;
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/accounts/{pending}/grants"),
        Some(json!({ "app_id": a.id, "mode": "live" })),
    )
    .await
    .err(403, "account_inactive");
    // A plan without API keys: no grant either.
    let free = app
        .account_with(json!({ "name": "Free", "plan": "free" }))
        .await;
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/accounts/{free}/grants"),
        Some(json!({ "app_id": a.id })),
    )
    .await
    .err(403, "plan_limit_reached");
    for acc in [&pending, &free] {
        let list = app
            .admin_call(
                Method::GET,
                &format!("/v1/admin/accounts/{acc}/grants"),
                None,
            )
            .await
            .ok(200);
        assert_eq!(list, json!([]));
    }
    assert!(app.event_types("type=grant.*").await.is_empty());
    // A test-mode grant for the pending account is fine.
    admin_grant(&app, &pending, json!({ "app_id": a.id, "mode": "test" })).await;
}

#[tokio::test]
async fn an_owner_grants_through_the_self_service_api_within_its_own_scopes() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let other = app.account("Other").await;
    let a = create_app(&app, json!(["customers:read", "invoices:all"])).await;
    let (_, owner) = app.role_key(&acc, "owner").await;
    let (_, owner_test) = app.test_key(&acc).await;

    // A stranger learns nothing about the input: the key is checked first.
    let res = app
        .public_request(Method::POST, "/v1/grants")
        .body("not json")
        .send()
        .await
        .unwrap();
    Answer::of(res).await.err(401, "missing_api_key");

    // Wider than requested: 400 invalid_scope.
    let refused = app
        .call(
            Method::POST,
            "/v1/grants",
            &owner,
            Some(json!({ "app_id": a.id, "scopes": ["invoices:send"] })),
        )
        .await
        .err(400, "invalid_scope");
    assert!(
        refused.message().contains("invoices:send"),
        "{}",
        refused.message()
    );
    app.call(
        Method::POST,
        "/v1/grants",
        &owner,
        Some(json!({ "app_id": "app_01JNOPE0000000000000000000" })),
    )
    .await
    .invalid("app_id");

    // Granted: the key has the caller's mode, the app and the granted scopes.
    let v = app
        .call(
            Method::POST,
            "/v1/grants",
            &owner,
            Some(json!({ "app_id": a.id, "scopes": ["invoices:read"] })),
        )
        .await
        .ok(201);
    let grant_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["account_id"], acc.as_str());
    assert_eq!(v["key"]["mode"], "live");
    assert_eq!(v["key"]["app_id"], a.id.as_str());
    assert_eq!(v["key"]["scopes"], json!(["invoices:read"]));
    let grant_key = v["key"]["api_key"].as_str().unwrap().to_string();
    assert_code(
        &verify(&app, &grant_key, Some(&a.production), &["invoices:read"]).await,
        "valid",
    );
    let v = app
        .call(
            Method::POST,
            "/v1/grants",
            &owner_test,
            Some(json!({ "app_id": a.id })),
        )
        .await
        .ok(201);
    assert_eq!(v["key"]["mode"], "test");
    assert_eq!(v["scopes"], json!(["customers:read", "invoices:all"]));

    // Listed and read by the account; another account's grant is 404.
    let list = app
        .call(Method::GET, "/v1/grants", &owner, None)
        .await
        .ok(200);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let got = app
        .call(Method::GET, &format!("/v1/grants/{grant_id}"), &owner, None)
        .await
        .ok(200);
    assert_eq!(got["scopes"], json!(["invoices:read"]));
    let (_, stranger) = app.role_key(&other, "owner").await;
    app.call(
        Method::GET,
        &format!("/v1/grants/{grant_id}"),
        &stranger,
        None,
    )
    .await
    .err(404, "not_found");
    app.call(
        Method::DELETE,
        &format!("/v1/grants/{grant_id}"),
        &stranger,
        None,
    )
    .await
    .err(404, "not_found");
    assert_eq!(
        app.call(Method::GET, "/v1/grants", &stranger, None)
            .await
            .ok(200),
        json!([])
    );

    // Only owners grant; a key never grants beyond its own scopes.
    let (_, developer) = app.role_key(&acc, "developer").await;
    app.call(
        Method::POST,
        "/v1/grants",
        &developer,
        Some(json!({ "app_id": a.id })),
    )
    .await
    .err(403, "insufficient_role");
    app.call(
        Method::DELETE,
        &format!("/v1/grants/{grant_id}"),
        &developer,
        None,
    )
    .await
    .err(403, "insufficient_role");
    let (_, narrow_owner) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "narrow", "scopes": ["customers:read"] }),
        )
        .await;
    app.call(
        Method::POST,
        "/v1/grants",
        &narrow_owner,
        Some(json!({ "app_id": a.id, "scopes": ["invoices:read"] })),
    )
    .await
    .err(403, "insufficient_scope");
    app.call(
        Method::POST,
        "/v1/grants",
        &narrow_owner,
        Some(json!({ "app_id": a.id, "scopes": ["customers:read"] })),
    )
    .await
    .ok(201);
    // An application's own key manages no grants, even with its secret.
    let who = call_with_secret(
        &app,
        Method::POST,
        "/v1/grants",
        &grant_key,
        Some(&a.production),
        Some(json!({ "app_id": a.id })),
    )
    .await;
    assert_eq!(who.status, 403, "{}", who.body);
    assert_eq!(
        app.call(Method::GET, "/v1/grants", &owner, None)
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn keys_of_an_application_stay_within_their_grant() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read", "invoices:all"])).await;
    let b = create_app(&app, json!(["customers:read"])).await;
    let (grant, grant_key_id, _) = admin_grant(
        &app,
        &acc,
        json!({ "app_id": a.id, "scopes": ["customers:read", "invoices:read"] }),
    )
    .await;
    let keys = format!("/v1/admin/accounts/{acc}/keys");

    // More keys of the application come under the grant, within its scopes.
    let extra = app
        .admin_call(
            Method::POST,
            &keys,
            Some(json!({ "mode": "test", "name": "ci", "app_id": a.id })),
        )
        .await
        .ok(201);
    assert_eq!(extra["app_id"], a.id.as_str());
    assert_eq!(extra["scopes"], json!(["customers:read", "invoices:read"]));
    let extra_id = extra["id"].as_str().unwrap();
    let stored = app.state.store.get_key(extra_id).await.unwrap().unwrap();
    assert_eq!(stored.grant_id.as_deref(), Some(grant.as_str()));
    app.admin_call(
        Method::POST,
        &keys,
        Some(
            json!({ "mode": "live", "name": "wide", "app_id": a.id, "scopes": ["invoices:write"] }),
        ),
    )
    .await
    .err(400, "invalid_scope");
    // An application the account has not granted: refused, naming app_id.
    app.admin_call(
        Method::POST,
        &keys,
        Some(json!({ "mode": "live", "name": "nogrant", "app_id": b.id })),
    )
    .await
    .invalid("app_id");
    // Widening a grant's key afterwards is refused too.
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/keys/{grant_key_id}"),
        Some(json!({ "scopes": ["customers:read", "invoices:write"] })),
    )
    .await
    .err(400, "invalid_scope");
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/keys/{grant_key_id}"),
        Some(json!({ "scopes": ["customers:read"] })),
    )
    .await
    .ok(200);
}

#[tokio::test]
async fn deleting_a_grant_revokes_its_keys_at_once() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let (_, owner) = app.role_key(&acc, "owner").await;
    let v = app
        .call(
            Method::POST,
            "/v1/grants",
            &owner,
            Some(json!({ "app_id": a.id })),
        )
        .await
        .ok(201);
    let grant = v["id"].as_str().unwrap().to_string();
    let first_id = v["key"]["id"].as_str().unwrap().to_string();
    let first = v["key"]["api_key"].as_str().unwrap().to_string();
    // A second key under the grant, rotated with a grace so its old secret still works.
    let extra = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "second", "app_id": a.id })),
        )
        .await
        .ok(201);
    let second_id = extra["id"].as_str().unwrap().to_string();
    let second_old = extra["api_key"].as_str().unwrap().to_string();
    let rotated = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/keys/{second_id}/rotate"),
            Some(json!({ "grace_period_seconds": 3600 })),
        )
        .await
        .ok(200);
    let second_new = rotated["api_key"].as_str().unwrap().to_string();
    // Another grant of the same application stays untouched.
    let (_, kept_id, kept) = admin_grant(&app, &acc, json!({ "app_id": a.id })).await;
    // Every key works, and is cached.
    for k in [&first, &second_old, &second_new, &kept] {
        assert_code(&verify(&app, k, Some(&a.production), &[]).await, "valid");
    }

    app.call(Method::DELETE, &format!("/v1/grants/{grant}"), &owner, None)
        .await
        .ok(204);

    // At once, without waiting for any cache: the grant's keys are revoked.
    for k in [&first, &second_old, &second_new] {
        let v = verify(&app, k, Some(&a.production), &[]).await;
        assert_code(&v, "api_key_revoked");
        assert_eq!(v["status"], 401);
        call_with_secret(
            &app,
            Method::GET,
            "/v1/account",
            k,
            Some(&a.production),
            None,
        )
        .await
        .err(401, "api_key_revoked");
    }
    assert_code(
        &verify(&app, &kept, Some(&a.production), &[]).await,
        "valid",
    );
    for id in [&first_id, &second_id] {
        let k = app.admin_key(id).await;
        assert!(k["revoked_at"].is_string(), "{k}");
        assert_eq!(k["revoked_reason"], "grant deleted");
    }
    assert!(app.admin_key(&kept_id).await["revoked_at"].is_null());
    app.call(Method::GET, &format!("/v1/grants/{grant}"), &owner, None)
        .await
        .err(404, "not_found");
    app.call(Method::DELETE, &format!("/v1/grants/{grant}"), &owner, None)
        .await
        .err(404, "not_found");

    // The operator deletes grants too, and is told which keys were revoked.
    let list = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/accounts/{acc}/grants"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let kept_grant = list[0]["id"].as_str().unwrap().to_string();
    let v = app
        .admin_call(
            Method::DELETE,
            &format!("/v1/admin/grants/{kept_grant}"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(v["revoked_keys"], json!([kept_id]));
    assert_code(
        &verify(&app, &kept, Some(&a.production), &[]).await,
        "api_key_revoked",
    );
    app.admin_call(
        Method::DELETE,
        &format!("/v1/admin/grants/{kept_grant}"),
        None,
    )
    .await
    .err(404, "not_found");
}

// ---------------------------------------------------------------------------------------
// Publishable keys
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn publishable_keys_hold_only_public_scopes_and_manage_nothing() {
    let app = spawn("[keys.type_tags]\nsecret = \"sk\"\npublishable = \"pub\"\n").await;
    let acc = app.account("Acme").await;
    let keys = format!("/v1/admin/accounts/{acc}/keys");
    // Defaults: the public scopes, role member, its own type tag.
    let v = app
        .key(
            &acc,
            json!({ "mode": "test", "type": "publishable", "name": "web" }),
        )
        .await;
    assert_eq!(v["type"], "publishable");
    assert_eq!(v["scopes"], json!(["customers:read"]));
    assert_eq!(v["role"], "member");
    let pk = v["api_key"].as_str().unwrap().to_string();
    let pk_id = v["id"].as_str().unwrap().to_string();
    assert!(pk.starts_with("kw_pub_test_"), "{pk}");
    let (_, sk) = app.test_key(&acc).await;
    assert!(sk.starts_with("kw_sk_test_"), "{sk}");

    // Never a secret scope, nor `*`, at creation or later.
    for scopes in [
        json!(["invoices:read"]),
        json!(["*"]),
        json!(["customers:read", "account:read"]),
    ] {
        let a = app
            .admin_call(
                Method::POST,
                &keys,
                Some(
                    json!({ "mode": "test", "type": "publishable", "name": "x", "scopes": scopes }),
                ),
            )
            .await
            .err(400, "invalid_scope");
        assert!(a.message().contains("public"), "{}", a.message());
    }
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/keys/{pk_id}"),
        Some(json!({ "scopes": ["invoices:write"] })),
    )
    .await
    .err(400, "invalid_scope");

    // Calling a secret scope: 403 insufficient_scope, in verify and forward-auth alike.
    assert_code(&verify(&app, &pk, None, &["customers:read"]).await, "valid");
    let v = verify(&app, &pk, None, &["invoices:read"]).await;
    assert_code(&v, "insufficient_scope");
    assert_eq!(v["status"], 403);
    let v = app
        .verify(json!({ "key": pk, "any_scopes": ["invoices:read", "account:read"] }))
        .await;
    assert_code(&v, "insufficient_scope");

    // The self-service API, every part of it: refused.
    let calls: [(Method, &str, Option<Value>); 6] = [
        (Method::GET, "/v1/account", None),
        (Method::GET, "/v1/api-keys", None),
        (
            Method::POST,
            "/v1/api-keys",
            Some(json!({ "name": "escalate" })),
        ),
        (Method::GET, "/v1/grants", None),
        (
            Method::POST,
            "/v1/grants",
            Some(json!({ "app_id": "app_x" })),
        ),
        (Method::DELETE, "/v1/account/data", None),
    ];
    for (method, path, body) in calls {
        let a = app.call(method.clone(), path, &pk, body).await;
        assert_eq!(a.status, 403, "{method} {path}: {}", a.body);
        assert_eq!(a.code(), "insufficient_scope", "{method} {path}");
    }
    app.call(
        Method::POST,
        &format!("/v1/api-keys/{pk_id}/rotate"),
        &pk,
        None,
    )
    .await
    .err(403, "insufficient_scope");
    // Nothing changed: the account still exists with its two keys.
    app.assert_key_works(&sk).await;
    assert_eq!(app.state.store.count_active_keys(&acc).await.unwrap(), 2);
}

// ---------------------------------------------------------------------------------------
// Default key sets and recoverable test secrets
// ---------------------------------------------------------------------------------------

/// (id, type, mode, api_key) of each key an account answer carries.
fn issued(v: &Value) -> Vec<(String, String, String, String)> {
    v["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    (
                        k["id"].as_str().unwrap().to_string(),
                        k["type"].as_str().unwrap().to_string(),
                        k["mode"].as_str().unwrap().to_string(),
                        k["api_key"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn default_sets_make_the_test_pair_at_creation_and_the_live_pair_at_approval() {
    let app = spawn("[keys]\ndefault_sets = true\n").await;
    let v = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Pending Co", "status": "pending" })),
        )
        .await
        .ok(201);
    let acc = v["id"].as_str().unwrap().to_string();
    let test = issued(&v);
    assert_eq!(test.len(), 2, "{v}");
    assert_eq!(
        (test[0].1.as_str(), test[0].2.as_str()),
        ("publishable", "test")
    );
    assert_eq!((test[1].1.as_str(), test[1].2.as_str()), ("secret", "test"));
    assert!(test[0].3.starts_with("kw_pk_test_"));
    assert!(test[1].3.starts_with("kw_sk_test_"));
    let listed = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/accounts/{acc}/keys?mode=live"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(listed, json!([]), "no live keys before approval");
    // The test secret key works; the publishable one identifies the account only.
    app.assert_key_works(&test[1].3).await;
    assert_code(
        &verify(&app, &test[0].3, None, &["customers:read"]).await,
        "valid",
    );
    app.whoami(&test[0].3).await.err(403, "insufficient_scope");

    // Approval makes the live pair, once.
    let v = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/accounts/{acc}/approve"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(v["status"], "active");
    let live = issued(&v);
    assert_eq!(live.len(), 2, "{v}");
    assert_eq!(
        (live[0].1.as_str(), live[0].2.as_str()),
        ("publishable", "live")
    );
    assert_eq!((live[1].1.as_str(), live[1].2.as_str()), ("secret", "live"));
    assert!(live[0].3.starts_with("kw_pk_live_") && live[1].3.starts_with("kw_sk_live_"));
    app.assert_key_works(&live[1].3).await;
    let again = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/accounts/{acc}/approve"),
            None,
        )
        .await
        .ok(200);
    assert!(again.get("keys").is_none(), "{again}");
    // Suspended and made active again: no new keys either.
    app.set_account_status(&acc, "suspended").await;
    let back = app
        .admin_call(
            Method::PATCH,
            &format!("/v1/admin/accounts/{acc}"),
            Some(json!({ "status": "active" })),
        )
        .await
        .ok(200);
    assert!(back.get("keys").is_none(), "{back}");
    assert_eq!(app.state.store.count_active_keys(&acc).await.unwrap(), 4);

    // An account created active is approved at once: all four keys.
    let v = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Active Co" })),
        )
        .await
        .ok(201);
    let four: Vec<(String, String)> = issued(&v).into_iter().map(|(_, t, m, _)| (t, m)).collect();
    assert_eq!(
        four,
        [
            ("publishable", "test"),
            ("secret", "test"),
            ("publishable", "live"),
            ("secret", "live")
        ]
        .map(|(t, m)| (t.to_string(), m.to_string()))
    );
    // Approving a pending account made active by PATCH gives the live pair too.
    let v = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Patched Co", "status": "pending" })),
        )
        .await
        .ok(201);
    let patched = v["id"].as_str().unwrap();
    let v = app
        .admin_call(
            Method::PATCH,
            &format!("/v1/admin/accounts/{patched}"),
            Some(json!({ "status": "active" })),
        )
        .await
        .ok(200);
    assert_eq!(issued(&v).len(), 2);
}

#[tokio::test]
async fn without_default_sets_accounts_come_with_no_keys() {
    let app = spawn("").await;
    let v = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Acme" })),
        )
        .await
        .ok(201);
    assert!(v.get("keys").is_none(), "{v}");
    let acc = v["id"].as_str().unwrap();
    assert_eq!(app.state.store.count_active_keys(acc).await.unwrap(), 0);
}

const MASTER_KEY: &str = "6b657977617264656e2d746573742d6d61737465722d6b65792d303132333435";

/// A service with default sets and recoverable test secrets, its master key in a file.
async fn spawn_recoverable() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    std::fs::write(&path, format!("{MASTER_KEY}\n")).unwrap();
    let app = spawn(&format!(
        "[keys]\ndefault_sets = true\nrecoverable_test_secrets = true\nmaster_key_file = \"{}\"\n",
        path.display()
    ))
    .await;
    (app, dir)
}

async fn reveal(app: &TestApp, id: &str) -> Answer {
    app.admin_call(Method::POST, &format!("/v1/admin/keys/{id}/reveal"), None)
        .await
}

#[tokio::test]
async fn test_secrets_can_be_revealed_again_and_live_secrets_never() {
    let (app, _dir) = spawn_recoverable().await;
    let v = app
        .admin_call(
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Acme", "status": "pending" })),
        )
        .await
        .ok(201);
    let acc = v["id"].as_str().unwrap().to_string();
    let test = issued(&v);
    for (id, _, _, token) in &test {
        let shown = reveal(&app, id).await.ok(200);
        assert_eq!(shown["api_key"], token.as_str());
        assert_eq!(shown["id"], id.as_str());
        // Stored sealed, never in the clear.
        let rec = app.state.store.get_key(id).await.unwrap().unwrap();
        let sealed = rec.recoverable.unwrap();
        assert!(sealed.starts_with("v1.") && !sealed.contains(token.as_str()));
    }

    let v = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/accounts/{acc}/approve"),
            None,
        )
        .await
        .ok(200);
    let live = issued(&v);
    assert_eq!(live.len(), 2);
    for (id, _, _, token) in &live {
        let a = reveal(&app, id).await.err(409, "conflict");
        assert!(a.message().contains("live"), "{}", a.message());
        assert!(!a.body.to_string().contains(token.as_str()));
        let rec = app.state.store.get_key(id).await.unwrap().unwrap();
        assert!(rec.recoverable.is_none(), "live secrets are never sealed");
    }
    // A live key made any other way is not recoverable either.
    let (live_id, _) = app.live_key(&acc).await;
    reveal(&app, &live_id).await.err(409, "conflict");

    // Rotating a test key keeps the new secret recoverable; the old one is gone.
    let (sk_id, _, _, old) = &test[1];
    let rotated = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/keys/{sk_id}/rotate"),
            Some(json!({ "grace_period_seconds": 0 })),
        )
        .await
        .ok(200);
    let new = rotated["api_key"].as_str().unwrap();
    let shown = reveal(&app, sk_id).await.ok(200);
    assert_eq!(shown["api_key"], new);
    assert_ne!(shown["api_key"], old.as_str());

    // A revoked key's secret is gone for good.
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/keys/{sk_id}/revoke"),
        None,
    )
    .await
    .ok(200);
    reveal(&app, sk_id).await.err(409, "conflict");
    assert!(app
        .state
        .store
        .get_key(sk_id)
        .await
        .unwrap()
        .unwrap()
        .recoverable
        .is_none());
    reveal(&app, "key_01JNOPE0000000000000000000")
        .await
        .err(404, "not_found");

    // Each reveal is in the audit trail, without the secret.
    let evs = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/events?account_id={acc}&type=key.revealed"),
            None,
        )
        .await
        .ok(200);
    assert_eq!(evs.as_array().unwrap().len(), 3);
    let text = evs.to_string();
    for (_, _, _, token) in test.iter().chain(&live) {
        assert!(!text.contains(token.as_str()));
    }
}

#[tokio::test]
async fn without_recoverable_test_secrets_nothing_is_revealed() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let (id, _) = app.test_key(&acc).await;
    let a = reveal(&app, &id).await.err(409, "conflict");
    assert!(
        a.message().contains("recoverable_test_secrets"),
        "{}",
        a.message()
    );
    assert!(app
        .state
        .store
        .get_key(&id)
        .await
        .unwrap()
        .unwrap()
        .recoverable
        .is_none());
}

#[tokio::test]
async fn a_wrong_or_missing_master_key_stops_the_service_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file_db = format!("sqlite://{}", dir.path().join("kw.db").display());
    let build_on = |db: String, extra: &str| {
        let vars = vec![
            ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
            ("KEYWARDEN_DATABASE_URL".to_string(), db),
            ("KEYWARDEN_PEPPER".to_string(), MASTER_KEY.to_string()),
        ];
        let config = Config::from_parts(
            &format!("[keys]\nrecoverable_test_secrets = true\n{extra}"),
            &vars,
        )
        .unwrap();
        async move {
            Service::build(config, Arc::new(keywarden_core::ManualClock::new(0)))
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        }
    };
    let build = |extra: &str| build_on(file_db.clone(), extra);
    // No master key anywhere and no database file to keep one beside: refused.
    let e = build_on(
        "sqlite::memory:".into(),
        "master_key_env = \"KW_TEST_MASTER_KEY_THAT_IS_NEVER_SET\"\n",
    )
    .await;
    assert!(e.contains("keys.recoverable_test_secrets"), "{e}");
    assert!(e.contains("KW_TEST_MASTER_KEY_THAT_IS_NEVER_SET"), "{e}");
    // With the embedded store, one is generated beside the database instead.
    let e = build("master_key_env = \"KW_TEST_MASTER_KEY_THAT_IS_NEVER_SET\"\n").await;
    assert_eq!(e, "");
    assert!(dir.path().join("kw.db.master_key").exists());

    let missing = dir.path().join("missing.key");
    let e = build(&format!("master_key_file = \"{}\"\n", missing.display())).await;
    assert!(e.contains("keys.master_key_file"), "{e}");

    let short = dir.path().join("short.key");
    std::fs::write(&short, "abcdef").unwrap();
    let e = build(&format!("master_key_file = \"{}\"\n", short.display())).await;
    assert!(e.contains("keys.master_key_file"), "{e}");
    assert!(!e.contains("abcdef"), "the key is never echoed: {e}");

    // The pepper is not a master key.
    let same = dir.path().join("same.key");
    std::fs::write(&same, MASTER_KEY).unwrap();
    let e = build(&format!("master_key_file = \"{}\"\n", same.display())).await;
    assert!(
        e.contains("keys.master_key_file") && e.contains("pepper"),
        "{e}"
    );
    assert!(!e.contains(MASTER_KEY), "{e}");
}

// ---------------------------------------------------------------------------------------
// Roll versus rotate
// ---------------------------------------------------------------------------------------

/// A secret rotated out two or more rotations ago: refused as revoked, cached or not.
async fn assert_rotated_out(app: &TestApp, key: &str) {
    app.assert_key_refused(key, "api_key_revoked").await;
}

#[tokio::test]
async fn a_roll_ends_the_old_secret_at_once_and_a_rotation_keeps_it_for_its_grace() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let (id, first) = app.live_key(&acc).await;
    let rotate = |grace: u64| {
        let app = &app;
        let id = id.clone();
        async move {
            app.admin_call(
                Method::POST,
                &format!("/v1/admin/keys/{id}/rotate"),
                Some(json!({ "grace_period_seconds": grace })),
            )
            .await
            .ok(200)["api_key"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    app.assert_key_works(&first).await;

    // A roll: the old secret is refused at once (cached or not), the new one works.
    let second = rotate(0).await;
    app.assert_key_refused(&first, "api_key_revoked").await;
    app.assert_key_works(&second).await;

    // A rotation with a grace: both work until it ends.
    let third = rotate(600).await;
    app.assert_key_works(&second).await;
    app.assert_key_works(&third).await;
    assert!(app.admin_key(&id).await["rotation_grace_until"].is_string());
    app.clock.advance_secs(599);
    app.assert_key_works(&second).await;
    app.clock.advance_secs(1);
    app.assert_key_refused(&second, "api_key_revoked").await;
    app.assert_key_works(&third).await;

    // A second rotation during a grace ends the first grace at once.
    let fourth = rotate(600).await;
    app.assert_key_works(&third).await;
    let fifth = rotate(600).await;
    assert_rotated_out(&app, &third).await;
    app.assert_key_works(&fourth).await;
    app.assert_key_works(&fifth).await;
    // ... and a roll during a grace ends it too.
    let sixth = rotate(0).await;
    assert_rotated_out(&app, &fourth).await;
    app.assert_key_refused(&fifth, "api_key_revoked").await;
    app.assert_key_works(&sixth).await;

    // Too long a grace is refused and changes nothing.
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/keys/{id}/rotate"),
        Some(json!({ "grace_period_seconds": 604_801 })),
    )
    .await
    .invalid("grace_period_seconds");
    app.assert_key_works(&sixth).await;

    // Each one is audited, with its grace and whether it cut a running one short.
    let evs = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/events?account_id={acc}&type=key.rotated"),
            None,
        )
        .await
        .ok(200);
    let mut seen: Vec<(u64, bool)> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["data"]["grace_period_seconds"].as_u64().unwrap(),
                e["data"]["previous_grace_ended"].as_bool().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        (0, false),
        (600, false),
        (600, false),
        (600, true),
        (0, true),
    ];
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn customers_roll_and_rotate_their_own_keys_the_same_way() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let (_, owner) = app.role_key(&acc, "owner").await;
    let (id, target) = app.live_key(&acc).await;
    app.assert_key_works(&target).await;
    let v = app
        .call(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            &owner,
            Some(json!({ "grace_period_seconds": 60 })),
        )
        .await
        .ok(200);
    let rotated = v["api_key"].as_str().unwrap().to_string();
    app.assert_key_works(&target).await;
    app.assert_key_works(&rotated).await;
    let v = app
        .call(
            Method::POST,
            &format!("/v1/api-keys/{id}/rotate"),
            &owner,
            None,
        )
        .await
        .ok(200);
    let rolled = v["api_key"].as_str().unwrap().to_string();
    assert_rotated_out(&app, &target).await;
    app.assert_key_refused(&rotated, "api_key_revoked").await;
    app.assert_key_works(&rolled).await;
}

// ---------------------------------------------------------------------------------------
// The audit trail of a whole flow
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_audit_trail_of_a_full_flow_is_read_back_through_the_admin_api() {
    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let (owner_id, owner) = app.role_key(&acc, "owner").await;

    // Application created, updated, its sandbox secret rotated.
    let a = create_app(&app, json!(["customers:read", "invoices:all"])).await;
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/applications/{}", a.id),
        Some(json!({ "description": "Now with attachments" })),
    )
    .await
    .ok(200);
    let sandbox = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/applications/{}/secrets/sandbox/rotate", a.id),
            None,
        )
        .await
        .ok(200)["secret"]
        .as_str()
        .unwrap()
        .to_string();

    // Granted by the account's owner; its key; a second key by the operator; a rotation.
    let v = app
        .call(
            Method::POST,
            "/v1/grants",
            &owner,
            Some(json!({ "app_id": a.id, "scopes": ["invoices:read"] })),
        )
        .await
        .ok(201);
    let grant = v["id"].as_str().unwrap().to_string();
    let grant_key_id = v["key"]["id"].as_str().unwrap().to_string();
    let grant_key = v["key"]["api_key"].as_str().unwrap().to_string();
    let extra = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "test", "name": "ci", "app_id": a.id })),
        )
        .await
        .ok(201);
    let extra_id = extra["id"].as_str().unwrap().to_string();
    let extra_key = extra["api_key"].as_str().unwrap().to_string();
    let rotated = app
        .admin_call(
            Method::POST,
            &format!("/v1/admin/keys/{grant_key_id}/rotate"),
            Some(json!({ "grace_period_seconds": 30 })),
        )
        .await
        .ok(200)["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    app.clock.advance_secs(1);
    // Deleted by the owner: both keys revoked.
    app.call(Method::DELETE, &format!("/v1/grants/{grant}"), &owner, None)
        .await
        .ok(204);
    assert_code(
        &verify(&app, &rotated, Some(&a.production), &[]).await,
        "api_key_revoked",
    );
    assert_code(
        &verify(&app, &extra_key, Some(&sandbox), &[]).await,
        "api_key_revoked",
    );

    // The application's events (not an account's).
    let evs = app
        .admin_call(Method::GET, "/v1/admin/events?type=application.*", None)
        .await
        .ok(200);
    let mut kinds: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "application.created",
            "application.secret_rotated",
            "application.updated"
        ]
    );
    for e in evs.as_array().unwrap() {
        assert_eq!(e["actor"], "root");
        assert_eq!(e["data"]["app_id"], a.id.as_str());
        assert!(e["account_id"].is_null());
    }
    let rotated_ev = evs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "application.secret_rotated")
        .unwrap();
    assert_eq!(rotated_ev["data"]["environment"], "sandbox");

    // The account's trail: grant, keys, rotation, revocations, grant deleted.
    let evs = app
        .admin_call(
            Method::GET,
            &format!("/v1/admin/events?account_id={acc}&limit=100"),
            None,
        )
        .await
        .ok(200);
    let list = evs.as_array().unwrap();
    let find = |kind: &str, key: Option<&str>| -> Vec<&Value> {
        list.iter()
            .filter(|e| e["type"] == kind)
            .filter(|e| key.is_none_or(|k| e["data"]["key_id"] == k))
            .collect()
    };
    let created = find("grant.created", None);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["actor"], owner_id.as_str());
    assert_eq!(created[0]["data"]["grant_id"], grant.as_str());
    assert_eq!(created[0]["data"]["app_id"], a.id.as_str());
    assert_eq!(created[0]["data"]["scopes"], json!(["invoices:read"]));
    assert_eq!(find("key.created", Some(&grant_key_id)).len(), 1);
    assert_eq!(
        find("key.created", Some(&grant_key_id))[0]["actor"],
        owner_id.as_str()
    );
    assert_eq!(find("key.created", Some(&extra_id))[0]["actor"], "root");
    let rot = find("key.rotated", Some(&grant_key_id));
    assert_eq!(rot.len(), 1);
    assert_eq!(rot[0]["data"]["grace_period_seconds"], 30);
    for id in [&grant_key_id, &extra_id] {
        let revoked = find("key.revoked", Some(id));
        assert_eq!(revoked.len(), 1, "{id}");
        assert_eq!(revoked[0]["data"]["reason"], "grant deleted");
        assert_eq!(revoked[0]["actor"], owner_id.as_str());
    }
    let deleted = find("grant.deleted", None);
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["actor"], owner_id.as_str());
    let mut revoked_keys: Vec<&str> = deleted[0]["data"]["revoked_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    revoked_keys.sort();
    let mut want = vec![grant_key_id.as_str(), extra_id.as_str()];
    want.sort();
    assert_eq!(revoked_keys, want);
    // Modes: key events carry the key's, grant events none.
    assert_eq!(find("key.created", Some(&extra_id))[0]["mode"], "test");
    assert!(deleted[0]["mode"].is_null());

    // The type filter works on the new families too.
    let grants_only = app
        .event_types(&format!("account_id={acc}&type=grant.*"))
        .await;
    let mut grants_only: Vec<&str> = grants_only.iter().map(String::as_str).collect();
    grants_only.sort();
    assert_eq!(grants_only, ["grant.created", "grant.deleted"]);

    // The customer sees its own grant events through the self-service API.
    let mine = app
        .call(Method::GET, "/v1/events?limit=100", &owner, None)
        .await
        .ok(200);
    let mine: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        mine.contains(&"grant.created") && mine.contains(&"grant.deleted"),
        "{mine:?}"
    );

    // No secret anywhere in the trail.
    let all = app
        .admin_call(Method::GET, "/v1/admin/events?limit=100", None)
        .await
        .ok(200)
        .to_string();
    for s in [
        &a.production,
        &a.sandbox,
        &sandbox,
        &grant_key,
        &rotated,
        &extra_key,
        &owner,
    ] {
        assert!(
            !all.contains(s.as_str()),
            "a secret leaked into the audit trail"
        );
    }
}

#[tokio::test]
async fn the_embedded_store_keeps_applications_and_grants_across_a_restart() {
    // The service rebuilt on the same database still checks the app secrets it stored.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kw.db");
    let pepper_vars = |db: &std::path::Path| {
        vec![
            ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
            (
                "KEYWARDEN_DATABASE_URL".to_string(),
                format!("sqlite://{}", db.display()),
            ),
        ]
    };
    let mut config = Config::from_parts(CATALOG, &pepper_vars(&db)).unwrap();
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    let keep = tempfile::tempdir().unwrap();
    let app = spawn_config(config.clone(), keep).await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let (_, _, live) = admin_grant(&app, &acc, json!({ "app_id": a.id })).await;
    app.stop().await;

    let again = spawn_config(config, tempfile::tempdir().unwrap()).await;
    assert_code(
        &verify(&again, &live, Some(&a.production), &[]).await,
        "valid",
    );
    assert_code(
        &verify(&again, &live, Some(&a.sandbox), &[]).await,
        "invalid_app_secret",
    );
    drop(dir);
}

#[tokio::test]
async fn two_header_auth_in_the_tower_layer() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use keywarden_tower::{Keywarden, KeywardenLayer};
    use tower::ServiceExt;

    let app = spawn("").await;
    let acc = app.account("Acme").await;
    let a = create_app(&app, json!(["customers:read"])).await;
    let (_, _, live) = admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "live" })).await;
    let (_, _, test) = admin_grant(&app, &acc, json!({ "app_id": a.id, "mode": "test" })).await;
    let (_, plain) = app.live_key(&acc).await;

    // An embedding service on the same engine as the server.
    let kw = Keywarden::from_parts(app.state.verifier.clone())
        .with_app_secret_header(axum::http::HeaderName::from_static("x-app-secret"));
    let service = axum::Router::new()
        .route("/customers", axum::routing::get(|| async { "customers" }))
        .layer(KeywardenLayer::new(kw));
    let call = |key: String, secret: Option<String>| {
        let service = service.clone();
        async move {
            let mut req = axum::http::Request::get("/customers").header("x-api-key", key);
            if let Some(s) = secret {
                req = req.header(APP_HEADER, s);
            }
            let res = service
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    assert_eq!(call(live.clone(), Some(a.production.clone())).await.0, 200);
    assert_eq!(call(test.clone(), Some(a.sandbox.clone())).await.0, 200);
    assert_eq!(call(plain.clone(), None).await.0, 200);
    for (key, secret) in [
        (&live, Some(a.sandbox.clone())),
        (&test, Some(a.production.clone())),
        (&live, Some("wrong".to_string())),
        (&live, None),
    ] {
        assert_eq!(
            call(key.clone(), secret).await,
            (401, "invalid_app_secret".to_string())
        );
    }
}
