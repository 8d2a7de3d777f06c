//! The `falco` profile against Falco's "Authentication & Security" document: what a client
//! sees through the gateway, the verify API and the admin API (the Developer Portal).

mod profile_support;

use profile_support::{start_profile, Reply, Running};
use serde_json::{json, Value};

const API_KEY: &str = "X-Falco-Api-Key";
const APP_SECRET: &str = "X-Falco-App-Secret";

/// The 13 unit scopes of the reference.
const UNIT_SCOPES: [&str; 13] = [
    "customers:read",
    "customers:write",
    "customers:delete",
    "articles:read",
    "articles:write",
    "invoices:read",
    "invoices:write",
    "invoices:attachments:read",
    "invoices:attachments:write",
    "invoices:send",
    "invoices:ingest:ubl",
    "invoices:ingest:pdf",
    "peppol:participants:read",
];

struct App {
    id: String,
    production: String,
    sandbox: String,
}

async fn create_app(r: &Running, scopes: &[&str]) -> App {
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/applications",
            Some(json!({
                "name": "Acme Books",
                "description": "Sync invoices with Acme Books",
                "url": "https://acme.example/falco",
                "scopes": scopes,
            })),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    App {
        id: a.body["id"].as_str().unwrap().into(),
        production: a.body["secrets"]["production"].as_str().unwrap().into(),
        sandbox: a.body["secrets"]["sandbox"].as_str().unwrap().into(),
    }
}

async fn create_account(r: &Running) -> String {
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/accounts",
            Some(json!({ "name": "Customer" })),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["id"].as_str().unwrap().into()
}

/// The customer grants `scopes` to the application; the key made under the grant.
async fn grant(r: &Running, account: &str, app: &App, scopes: &[&str], mode: &str) -> Value {
    let g = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{account}/grants"),
            Some(json!({ "app_id": app.id, "scopes": scopes, "mode": mode })),
        )
        .await;
    assert_eq!(g.status, 201, "{:?}", g.body);
    g.body["key"].clone()
}

async fn gw(r: &Running, method: &str, path: &str, key: &str, secret: Option<&str>) -> Reply {
    let mut h = vec![(API_KEY, key)];
    if let Some(s) = secret {
        h.push((APP_SECRET, s));
    }
    r.public_call(method, path, &h, None).await
}

fn code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn both_headers_are_required_and_the_secret_matches_the_environment() {
    let r = start_profile("falco", &[]);
    let app = create_app(&r, &["customers:read"]).await;
    let acc = create_account(&r).await;
    let live = grant(&r, &acc, &app, &["customers:read"], "live").await;
    let live_key = live["api_key"].as_str().unwrap();
    let test = grant(&r, &acc, &app, &["customers:read"], "test").await;
    let test_key = test["api_key"].as_str().unwrap();
    // The profile's own shape: the environment, 32 random characters and a checksum.
    for (key, prefix) in [(live_key, "falco_prod_"), (test_key, "falco_sandbox_")] {
        let rest = key.strip_prefix(prefix).unwrap_or_else(|| panic!("{key}"));
        assert_eq!(rest.len(), 38, "{key}");
        assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
    }

    // Both headers, the production secret with a live key: through to the upstream.
    let ok = gw(&r, "GET", "/v1/customers", live_key, Some(&app.production)).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body["path"], "/v1/customers");
    let up = &ok.body["headers"];
    assert_eq!(up["x-keywarden-mode"], "live");
    assert_eq!(up["x-keywarden-account-id"], acc.as_str());
    assert!(
        up.get("x-falco-api-key").is_none(),
        "the key reached the upstream: {up}"
    );
    assert!(
        up.get("x-falco-app-secret").is_none(),
        "the application's secret reached the upstream: {up}"
    );
    // The sandbox secret goes with a test key.
    let ok = gw(&r, "GET", "/v1/customers/c_1", test_key, Some(&app.sandbox)).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body["headers"]["x-keywarden-mode"], "test");
    assert!(ok.body["headers"].get("x-falco-app-secret").is_none());

    // default_route = "deny": a path no route names is refused, however good the key.
    for (method, path) in [
        ("GET", "/v1/quotes"),
        ("GET", "/v1/quotes/q_1"),
        ("GET", "/v2/customers"),
        ("GET", "/v1"),
        ("GET", "/"),
        ("POST", "/v1/peppol/participants/0208:0123456789"),
    ] {
        let d = gw(&r, method, path, live_key, Some(&app.production)).await;
        assert_eq!(d.status, 403, "{method} {path}: {:?}", d.body);
        assert_eq!(code(&d), "insufficient_scope", "{method} {path}");
        assert!(
            d.body.get("path").is_none(),
            "{method} {path} reached the upstream"
        );
    }

    // No secret, the other environment's, or a wrong one: 401.
    for (key, secret) in [
        (live_key, None),
        (live_key, Some(app.sandbox.as_str())),
        (test_key, Some(app.production.as_str())),
        (live_key, Some("not-the-secret")),
        (live_key, Some("")),
    ] {
        let d = gw(&r, "GET", "/v1/customers", key, secret).await;
        assert_eq!(d.status, 401, "{secret:?}: {:?}", d.body);
        assert_eq!(code(&d), "invalid_app_secret");
    }

    // No key: 401, whatever secret comes with it.
    let d = r
        .public_call(
            "GET",
            "/v1/customers",
            &[(APP_SECRET, &app.production)],
            None,
        )
        .await;
    assert_eq!(d.status, 401);
    assert_eq!(code(&d), "missing_api_key");
    // The key in X-Falco-Api-Key only: as a Bearer token it is not read.
    let bearer = format!("Bearer {live_key}");
    let d = r
        .public_call(
            "GET",
            "/v1/customers",
            &[("authorization", &bearer), (APP_SECRET, &app.production)],
            None,
        )
        .await;
    assert_eq!(d.status, 401);
    assert_eq!(code(&d), "missing_api_key");
    let d = r
        .public_call(
            "GET",
            "/v1/customers",
            &[("X-API-Key", live_key), (APP_SECRET, &app.production)],
            None,
        )
        .await;
    assert_eq!(d.status, 401);
    assert_eq!(code(&d), "missing_api_key");
}

#[tokio::test]
async fn an_application_has_an_id_its_fields_and_two_secrets() {
    let r = start_profile("falco", &[]);
    let app = create_app(&r, &UNIT_SCOPES).await;
    assert!(app.id.starts_with("app_"), "{}", app.id);
    assert_ne!(app.production, app.sandbox);
    let got = r
        .admin_call("GET", &format!("/v1/admin/applications/{}", app.id), None)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["name"], "Acme Books");
    assert_eq!(got.body["description"], "Sync invoices with Acme Books");
    assert_eq!(got.body["url"], "https://acme.example/falco");
    assert_eq!(got.body["scopes"], json!(UNIT_SCOPES));
    // The secrets are shown once, at creation.
    let text = got.body.to_string();
    assert!(!text.contains(&app.production) && !text.contains(&app.sandbox));

    // The URL is optional.
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/applications",
            Some(json!({ "name": "No page", "scopes": ["invoices:read"] })),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert!(a.body["url"].is_null());

    // Every unit scope, and invoices:delete, is in the catalog; nothing else is.
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/applications",
            Some(json!({ "name": "Deleter", "scopes": ["invoices:delete"] })),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/applications",
            Some(json!({ "name": "Quotes", "scopes": ["quotes:read"] })),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["code"], "invalid_scope");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("quotes:read"));

    // Rotating a secret: the new one works, the old one stops at once.
    let acc = create_account(&r).await;
    let key = grant(&r, &acc, &app, &["customers:read"], "live").await;
    let key = key["api_key"].as_str().unwrap();
    let rot = r
        .admin_call(
            "POST",
            &format!(
                "/v1/admin/applications/{}/secrets/production/rotate",
                app.id
            ),
            None,
        )
        .await;
    assert_eq!(rot.status, 200, "{:?}", rot.body);
    let new = rot.body["secret"].as_str().unwrap();
    assert_eq!(
        gw(&r, "GET", "/v1/customers", key, Some(&app.production))
            .await
            .status,
        401
    );
    assert_eq!(
        gw(&r, "GET", "/v1/customers", key, Some(new)).await.status,
        200
    );
}

#[tokio::test]
async fn a_key_belongs_to_an_application_and_carries_only_the_granted_scopes() {
    let r = start_profile("falco", &[]);
    let acc = create_account(&r).await;
    // A key of no application is refused at creation.
    let k = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "loose" })),
        )
        .await;
    assert_eq!(k.status, 400, "{:?}", k.body);
    assert!(k.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("app_id"));

    let app = create_app(&r, &["customers:read", "invoices:read", "invoices:send"]).await;
    // A grant holds at most what the application requested.
    let g = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/grants"),
            Some(json!({ "app_id": app.id, "scopes": ["customers:delete"] })),
        )
        .await;
    assert_eq!(g.status, 400, "{:?}", g.body);
    assert_eq!(g.body["error"]["code"], "invalid_scope");
    assert!(g.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("customers:delete"));

    // The key made under the grant has only the approved scopes.
    let key = grant(&r, &acc, &app, &["customers:read", "invoices:read"], "live").await;
    assert_eq!(key["app_id"], app.id.as_str());
    assert_eq!(key["scopes"], json!(["customers:read", "invoices:read"]));
    let token = key["api_key"].as_str().unwrap();
    let s = Some(app.production.as_str());
    assert_eq!(gw(&r, "GET", "/v1/customers", token, s).await.status, 200);
    assert_eq!(
        gw(&r, "GET", "/v1/invoices/i_1", token, s).await.status,
        200
    );
    let d = gw(&r, "POST", "/v1/invoices/i_1/send", token, s).await;
    assert_eq!(d.status, 403);
    assert_eq!(code(&d), "insufficient_scope");
    // Another key for the application, made by the operator, stays within the grant.
    let more = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "second", "app_id": app.id, "scopes": ["invoices:send"] })),
        )
        .await;
    assert_eq!(more.status, 400, "{:?}", more.body);
    let more = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "second", "app_id": app.id })),
        )
        .await;
    assert_eq!(more.status, 201, "{:?}", more.body);
    assert_eq!(
        more.body["scopes"],
        json!(["customers:read", "invoices:read"])
    );

    // Revoking an exposed key takes effect at once.
    let id = key["id"].as_str().unwrap();
    let rv = r
        .admin_call(
            "POST",
            &format!("/v1/admin/keys/{id}/revoke"),
            Some(json!({ "reason": "exposed" })),
        )
        .await;
    assert_eq!(rv.status, 200, "{:?}", rv.body);
    let d = gw(&r, "GET", "/v1/customers", token, s).await;
    assert_eq!(d.status, 401);
    assert_eq!(code(&d), "api_key_revoked");
}

/// Asks the verify API whether `key` (with `secret`) holds every scope of `scopes`.
async fn holds(r: &Running, key: &str, secret: &str, scopes: &[&str]) -> bool {
    let v = r
        .admin_call(
            "POST",
            "/v1/verify",
            Some(json!({ "key": key, "app_secret": secret, "scopes": scopes })),
        )
        .await;
    assert_eq!(v.status, 200, "{:?}", v.body);
    match v.body["code"].as_str() {
        Some("valid") => true,
        Some("insufficient_scope") => false,
        other => panic!("{scopes:?}: {other:?} {:?}", v.body),
    }
}

#[tokio::test]
async fn aggregate_scopes_expand_exactly_as_the_reference_lists_them() {
    let r = start_profile("falco", &[]);
    let mut requested: Vec<&str> = UNIT_SCOPES.to_vec();
    requested.push("invoices:delete");
    let app = create_app(&r, &requested).await;
    let acc = create_account(&r).await;
    let cases: [(&str, &[&str]); 4] = [
        ("customers:write", &["customers:read", "customers:write"]),
        ("articles:write", &["articles:read", "articles:write"]),
        (
            "invoices:write",
            &[
                "invoices:read",
                "invoices:write",
                "invoices:attachments:read",
                "invoices:attachments:write",
                "invoices:delete",
            ],
        ),
        (
            "invoices:attachments:write",
            &["invoices:attachments:read", "invoices:attachments:write"],
        ),
    ];
    for (alias, expands_to) in cases {
        let key = grant(&r, &acc, &app, &[alias], "test").await;
        let token = key["api_key"].as_str().unwrap();
        for unit in requested.iter().copied() {
            let expected = expands_to.contains(&unit);
            assert_eq!(
                holds(&r, token, &app.sandbox, &[unit]).await,
                expected,
                "{alias} -> {unit}"
            );
        }
    }

    // Through the gateway: invoices:write reads, writes and deletes invoices and their
    // attachments, and does not send them.
    let key = grant(&r, &acc, &app, &["invoices:write"], "test").await;
    let token = key["api_key"].as_str().unwrap();
    let s = Some(app.sandbox.as_str());
    for (method, path, status) in [
        ("GET", "/v1/invoices", 200),
        ("POST", "/v1/invoices", 200),
        ("PUT", "/v1/invoices/i_1", 200),
        ("DELETE", "/v1/invoices/i_1", 200),
        ("GET", "/v1/invoices/i_1/attachments", 200),
        ("POST", "/v1/invoices/i_1/attachments", 200),
        ("POST", "/v1/invoices/i_1/send", 403),
        ("POST", "/v1/invoices/ingest/ubl", 403),
        ("GET", "/v1/customers", 403),
    ] {
        let a = gw(&r, method, path, token, s).await;
        assert_eq!(a.status, status, "{method} {path}: {:?}", a.body);
    }
    // The unit scopes behind the routes of their own.
    let key = grant(
        &r,
        &acc,
        &app,
        &[
            "invoices:send",
            "invoices:ingest:ubl",
            "invoices:ingest:pdf",
            "peppol:participants:read",
            "customers:delete",
        ],
        "test",
    )
    .await;
    let token = key["api_key"].as_str().unwrap();
    for (method, path, status) in [
        ("POST", "/v1/invoices/i_1/send", 200),
        ("POST", "/v1/invoices/ingest/ubl", 200),
        ("POST", "/v1/invoices/ingest/pdf", 200),
        ("GET", "/v1/peppol/participants/0208:0123456789", 200),
        ("DELETE", "/v1/customers/c_1", 200),
        ("GET", "/v1/customers/c_1", 403),
        ("GET", "/v1/invoices", 403),
    ] {
        let a = gw(&r, method, path, token, s).await;
        assert_eq!(a.status, status, "{method} {path}: {:?}", a.body);
    }
}

#[tokio::test]
async fn an_application_that_requested_invoices_write_may_delete_invoices() {
    let r = start_profile("falco", &[]);
    let app = create_app(&r, &["invoices:write"]).await;
    let acc = create_account(&r).await;
    let key = grant(&r, &acc, &app, &["invoices:write"], "live").await;
    assert_eq!(key["scopes"], json!(["invoices:write"]));
    let token = key["api_key"].as_str().unwrap();
    let s = Some(app.production.as_str());
    // invoices:delete is enabled, so invoices:write brings it with the other three.
    for unit in [
        "invoices:read",
        "invoices:write",
        "invoices:attachments:read",
        "invoices:attachments:write",
        "invoices:delete",
    ] {
        assert!(holds(&r, token, &app.production, &[unit]).await, "{unit}");
    }
    for unit in ["invoices:send", "customers:read"] {
        assert!(!holds(&r, token, &app.production, &[unit]).await, "{unit}");
    }
    for (method, path, status) in [
        ("GET", "/v1/invoices/i_1", 200),
        ("PATCH", "/v1/invoices/i_1", 200),
        ("DELETE", "/v1/invoices/i_1", 200),
        ("DELETE", "/v1/invoices/i_1/attachments/a_1", 200),
        ("POST", "/v1/invoices/i_1/send", 403),
        ("GET", "/v1/customers", 403),
    ] {
        let a = gw(&r, method, path, token, s).await;
        assert_eq!(a.status, status, "{method} {path}: {:?}", a.body);
    }
    // What invoices:write brings may be granted alone; nothing beyond it may.
    let key = grant(&r, &acc, &app, &["invoices:delete"], "live").await;
    let token = key["api_key"].as_str().unwrap();
    assert_eq!(
        gw(&r, "DELETE", "/v1/invoices/i_1", token, s).await.status,
        200
    );
    assert_eq!(
        gw(&r, "GET", "/v1/invoices/i_1", token, s).await.status,
        403
    );
    let g = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/grants"),
            Some(json!({ "app_id": app.id, "scopes": ["invoices:send"] })),
        )
        .await;
    assert_eq!(g.status, 400, "{:?}", g.body);
    assert_eq!(g.body["error"]["code"], "invalid_scope");
}

#[tokio::test]
async fn a_key_bound_to_no_application_is_refused_when_it_is_used() {
    // A key made before every key had to belong to an application...
    let loose = start_profile("falco", &[("KEYWARDEN_KEYS__REQUIRE_APP", "false")]);
    let acc = create_account(&loose).await;
    let k = loose
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "loose" })),
        )
        .await;
    assert_eq!(k.status, 201, "{:?}", k.body);
    let token = k.body["api_key"].as_str().unwrap();
    assert_eq!(
        gw(&loose, "GET", "/v1/customers", token, None).await.status,
        200
    );
    // ...is refused by the profile on the same database.
    let db = format!("sqlite://{}", loose.dir.join("keywarden.db").display());
    let r = start_profile("falco", &[("KEYWARDEN_DATABASE_URL", &db)]);
    let d = gw(&r, "GET", "/v1/customers", token, None).await;
    assert_eq!(d.status, 401, "{:?}", d.body);
    assert_eq!(code(&d), "invalid_api_key");
    let v = r
        .admin_call("POST", "/v1/verify", Some(json!({ "key": token })))
        .await;
    assert_eq!(v.body["valid"], false);
    assert_eq!(v.body["code"], "invalid_api_key");
}

#[tokio::test]
async fn serves_with_only_the_root_key() {
    profile_support::assert_serves_with_only_the_root_key("falco", &[]).await;
}

#[test]
fn config_check_passes_with_only_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args(["config", "check", "--profile", "falco"])
        .current_dir(dir.path())
        .env("KEYWARDEN_ROOT_KEY", profile_support::ROOT_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("X-Falco-Api-Key"));
    // Checking writes nothing.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
