//! The `factuarea` profile against Factuarea's authentication reference, as a client sees it
//! on the wire: key shapes and storage, the two ways to present a key and which wins, the
//! closed scope catalog and the method rule of the routes, the error envelope with the
//! reference's own Spanish messages, `doc_url` and `request_id`, revocation and expiry as
//! `api_key_revoked`, the lockout, `GET /v1/account`, rotation with a grace period, the
//! IP allowlist with its audit event, the reference's own example keys imported by their
//! bcrypt hashes, and the choices the profile makes where the reference is silent. Through
//! the gateway (an echo upstream) and the self-service API, on the real binary.

#![cfg(unix)]

mod profile_support;

use keywarden_core::codes::{Code, Locale};
use keywarden_core::hashing::{fingerprint, SecretHasher};
use keywarden_core::model::HashScheme;
use keywarden_core::Secret;
use profile_support::{start_profile, Reply, Running};
use serde_json::{json, Value};
use std::time::Duration;

/// Every scope the reference's catalog lists (`*` apart).
const CATALOG: &[&str] = &[
    "clients:read",
    "clients:write",
    "clients:delete",
    "products:read",
    "products:write",
    "products:delete",
    "suppliers:read",
    "suppliers:write",
    "suppliers:delete",
    "invoices:read",
    "invoices:write",
    "invoices:delete",
    "invoices:send",
    "invoices:void",
    "quotes:read",
    "quotes:write",
    "quotes:delete",
    "quotes:send",
    "quotes:transition",
    "proformas:read",
    "proformas:write",
    "proformas:delete",
    "proformas:send",
    "proformas:transition",
    "delivery_notes:read",
    "delivery_notes:write",
    "delivery_notes:delete",
    "delivery_notes:transition",
    "delivery_notes:gdpr_forget",
    "purchase_invoices:read",
    "purchase_invoices:write",
    "purchase_invoices:delete",
    "purchase_invoices:transition",
    "recurring_invoices:read",
    "recurring_invoices:write",
    "recurring_invoices:delete",
    "recurring_invoices:transition",
    "taxes:read",
    "taxes:write",
    "taxes:delete",
    "series:read",
    "series:write",
    "pdfs:read",
    "tax_reports:read",
    "tax_reports:write",
    "account:read",
    "verifactu:read",
    "verifactu:write",
    "facturae:read",
    "facturae:write",
    "webhooks:read",
    "webhooks:write",
    "webhooks:delete",
    "events:read",
];

const INVALID: &str = "La API key proporcionada no es válida.";
const NO_SCOPE: &str = "La API key no tiene el scope requerido para esta operación.";

fn start() -> Running {
    start_profile("factuarea", &[])
}

async fn company(r: &Running, name: &str) -> String {
    let a = r
        .admin_call("POST", "/v1/admin/accounts", Some(json!({ "name": name })))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_string()
}

/// Creates a key in the dashboard (the admin API); returns the whole answer.
async fn key(r: &Running, acc: &str, body: Value) -> Value {
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(body),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body
}

fn token(v: &Value) -> String {
    v["api_key"].as_str().unwrap().to_string()
}

async fn bearer(r: &Running, method: &str, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    r.public_call(method, path, &[("authorization", &auth)], None)
        .await
}

async fn x_api_key(r: &Running, method: &str, path: &str, token: &str) -> Reply {
    r.public_call(method, path, &[("x-api-key", token)], None)
        .await
}

/// Asserts the reference's error envelope: status, type, code, message when given,
/// `request_id` equal to `X-Request-Id`, and `doc_url` for the code.
#[track_caller]
fn assert_error(a: &Reply, status: u16, kind: &str, code: &str, message: Option<&str>) {
    assert_eq!(a.status, status, "{}", a.body);
    let e = &a.body["error"];
    assert_eq!(e["type"], kind, "{}", a.body);
    assert_eq!(e["code"], code, "{}", a.body);
    if let Some(m) = message {
        assert_eq!(e["message"], m, "{}", a.body);
    }
    let id = a.header("x-request-id").expect("X-Request-Id");
    assert_eq!(e["request_id"], id);
    let ulid = id.strip_prefix("req_").expect("req_ prefix");
    assert_eq!(ulid.len(), 26, "{id}");
    assert_eq!(
        e["doc_url"],
        format!("https://docs.factuarea.com/guides/errors#{code}")
    );
}

#[track_caller]
fn assert_shape(token: &str, prefix: &str) {
    let rest = token
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{token}"));
    assert_eq!(rest.len(), 24, "{token}");
    assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
}

#[tokio::test]
async fn keys_headers_scopes_and_errors_as_the_reference_shows_them() {
    let r = start();
    let acc = company(&r, "Acme SL").await;
    let live = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "ERP", "scopes": ["clients:read", "account:read"] }),
    )
    .await;
    let live_token = token(&live);
    assert_shape(&live_token, "fact_live_");
    assert_eq!(live["prefix"], "fact_live_");
    let test = key(
        &r,
        &acc,
        json!({ "mode": "test", "name": "sandbox", "scopes": ["clients:read"] }),
    )
    .await;
    assert_shape(&token(&test), "fact_test_");
    assert_eq!(test["mode"], "test");

    // Only the bcrypt cost-12 hash of the secret is stored.
    let db = format!("sqlite://{}", r.dir.join("keywarden.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT scheme, hash FROM api_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for (scheme, hash) in &rows {
        assert_eq!(scheme, "bcrypt");
        assert!(
            hash.starts_with("$2b$12$") || hash.starts_with("$2y$12$"),
            "{hash}"
        );
        assert!(!hash.contains(&live_token[10..]), "the secret is stored");
    }
    pool.close().await;

    // Authorization: Bearer, through the gateway: the upstream gets the request, not the key.
    let a = bearer(&r, "GET", "/v1/clients?limit=10", &live_token).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["path"], "/v1/clients");
    assert_eq!(a.body["query"], "limit=10");
    assert!(a.body["headers"].get("authorization").is_none());
    assert!(a.body["headers"].get("x-api-key").is_none());
    // The API behind learns the key's scopes (the action scopes are its to check), and
    // which key and company; a client cannot claim scopes of its own.
    let up = &a.body["headers"];
    assert_eq!(
        up["x-keywarden-scopes"], "account:read clients:read",
        "{up}"
    );
    assert_eq!(up["x-keywarden-key-id"], live["id"], "{up}");
    assert_eq!(up["x-keywarden-account-id"], acc.as_str(), "{up}");
    let a = r
        .public_call(
            "GET",
            "/v1/clients",
            &[
                ("authorization", &format!("Bearer {live_token}")),
                ("x-keywarden-scopes", "*"),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["headers"]["x-keywarden-scopes"], "account:read clients:read",
        "{}",
        a.body
    );
    assert!(a.header("x-request-id").unwrap().starts_with("req_"));
    // X-API-Key works the same, and on a test key.
    let a = x_api_key(&r, "GET", "/v1/clients", &live_token).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["headers"]["x-keywarden-mode"], "live");
    // The prefix tells the API which environment: a test key reaches it as test mode.
    let a = bearer(&r, "GET", "/v1/clients/42", &token(&test)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["headers"]["x-keywarden-mode"], "test");
    // The secret is shown once: the dashboard never shows it again.
    let a = r
        .admin_call(
            "GET",
            &format!("/v1/admin/keys/{}", live["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.get("api_key").is_none());
    assert!(!a.body.to_string().contains(&live_token[10..]));
    // Both sent: Bearer wins, whichever of the two is the good one.
    let good_bearer = format!("Bearer {live_token}");
    let a = r
        .public_call(
            "GET",
            "/v1/clients",
            &[
                ("authorization", &good_bearer),
                ("x-api-key", "fact_live_nope"),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let bad = "fact_live_8KqW3pXnR2VbY7TcA9eFmN5z";
    let bad_bearer = format!("Bearer {bad}");
    let a = r
        .public_call(
            "GET",
            "/v1/clients",
            &[("authorization", &bad_bearer), ("x-api-key", &live_token)],
            None,
        )
        .await;
    assert_error(
        &a,
        401,
        "authentication_error",
        "invalid_api_key",
        Some(INVALID),
    );

    // No header at all.
    let a = r.public_call("GET", "/v1/clients", &[], None).await;
    assert_error(&a, 401, "authentication_error", "missing_api_key", None);
    assert!(!a.body["error"]["message"].as_str().unwrap().is_empty());
    // Unknown key, wrong format, right lookup with the wrong secret: invalid_api_key.
    let mut tampered = live_token.clone();
    let last = if tampered.ends_with('a') { "b" } else { "a" };
    tampered.replace_range(tampered.len() - 1.., last);
    for t in [
        bad,
        "fact_live_short",
        "sk_live_8KqW3pXnR2VbY7TcA9eFmN5z",
        &tampered,
    ] {
        let a = bearer(&r, "GET", "/v1/clients", t).await;
        assert_error(
            &a,
            401,
            "authentication_error",
            "invalid_api_key",
            Some(INVALID),
        );
    }

    // A scope the key lacks: 403, authorization_error, insufficient_scope, the message.
    for (method, path) in [
        ("POST", "/v1/clients"),
        ("PUT", "/v1/clients/1"),
        ("PATCH", "/v1/clients/1"),
        ("DELETE", "/v1/clients/1"),
        ("GET", "/v1/invoices"),
    ] {
        let a = bearer(&r, method, path, &live_token).await;
        assert_error(
            &a,
            403,
            "authorization_error",
            "insufficient_scope",
            Some(NO_SCOPE),
        );
    }

    // The catalog is closed: a scope outside it is invalid_scope at creation.
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "x", "scopes": ["clients:admin"] })),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "invalid_scope");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("clients:admin"));

    // Every scope of the catalog exists, and each grants its method on its resource.
    let all = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "all", "scopes": CATALOG }),
    )
    .await;
    let all_token = token(&all);
    for resource in [
        "clients",
        "products",
        "suppliers",
        "invoices",
        "quotes",
        "proformas",
        "delivery_notes",
        "purchase_invoices",
        "recurring_invoices",
        "taxes",
        "webhooks",
    ] {
        for method in ["GET", "POST", "PATCH", "DELETE"] {
            let a = bearer(&r, method, &format!("/v1/{resource}/7"), &all_token).await;
            assert_eq!(a.status, 200, "{method} {resource}: {}", a.body);
            assert_eq!(a.body["method"], method);
        }
    }
    for resource in ["series", "tax_reports", "verifactu", "facturae"] {
        for method in ["GET", "POST"] {
            let a = bearer(&r, method, &format!("/v1/{resource}"), &all_token).await;
            assert_eq!(a.status, 200, "{method} {resource}: {}", a.body);
        }
        let a = bearer(&r, "DELETE", &format!("/v1/{resource}/1"), &all_token).await;
        assert_eq!(a.status, 403, "{resource} has no :delete scope");
    }
    // /v1/events is the API's event catalog (events:read), not Keywarden's.
    let a = bearer(&r, "GET", "/v1/events/evt_1", &all_token).await;
    assert_eq!(
        (a.status, &a.body["path"]),
        (200, &json!("/v1/events/evt_1"))
    );
    // The super-scope grants everything.
    let star = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "owner", "scopes": ["*"] }),
    )
    .await;
    for (method, path) in [("DELETE", "/v1/quotes/3"), ("POST", "/v1/invoices")] {
        assert_eq!(bearer(&r, method, path, &token(&star)).await.status, 200);
    }
    // Keys are managed in the dashboard, not through the public API: /v1/api-keys is only
    // a path of the API behind, which no scope of the catalog opens.
    let a = bearer(&r, "GET", "/v1/api-keys", &token(&star)).await;
    assert_error(
        &a,
        403,
        "authorization_error",
        "insufficient_scope",
        Some(NO_SCOPE),
    );

    // GET /v1/account: the key's metadata, never the secret.
    let a = bearer(&r, "GET", "/v1/account", &live_token).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let k = &a.body["key"];
    assert_eq!(k["id"], live["id"]);
    assert_eq!(k["name"], "ERP");
    assert_eq!(k["prefix"], "fact_live_");
    assert_eq!(k["scopes"], json!(["account:read", "clients:read"]));
    assert_eq!(k["tier"], "standard");
    assert!(k["last_used_at"].is_string(), "{k}");
    assert!(k["expires_at"].is_null(), "{k}");
    assert!(!a.body.to_string().contains(&live_token[10..]));
    assert_eq!(
        x_api_key(&r, "GET", "/v1/account", &live_token)
            .await
            .status,
        200
    );
    // Without account:read it is refused like any other missing scope.
    let a = bearer(&r, "GET", "/v1/account", &token(&test)).await;
    assert_error(
        &a,
        403,
        "authorization_error",
        "insufficient_scope",
        Some(NO_SCOPE),
    );

    // Revoked: 401 api_key_revoked at once.
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/keys/{}/revoke", live["id"].as_str().unwrap()),
            Some(json!({})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = bearer(&r, "GET", "/v1/clients", &live_token).await;
    assert_error(&a, 401, "authentication_error", "api_key_revoked", None);
}

#[tokio::test]
async fn an_expired_key_is_reported_as_revoked() {
    let r = start();
    let acc = company(&r, "Acme SL").await;
    // Long enough for the bcrypt work of creating and first checking the key.
    let soon = time_in(20);
    let k = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "demo", "scopes": ["clients:read", "account:read"], "expires_at": soon }),
    )
    .await;
    let t = token(&k);
    let a = bearer(&r, "GET", "/v1/account", &t).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["key"]["expires_at"].is_string());
    let mut a = bearer(&r, "GET", "/v1/clients", &t).await;
    for _ in 0..60 {
        if a.status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        a = bearer(&r, "GET", "/v1/clients", &t).await;
    }
    assert_error(&a, 401, "authentication_error", "api_key_revoked", None);
}

/// An RFC 3339 timestamp `secs` seconds from now, in whole seconds.
fn time_in(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs
        + 1;
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = (now / 86_400) as i64;
    let rem = now % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[tokio::test]
async fn rotation_keeps_both_secrets_for_the_grace_period() {
    let r = start();
    let acc = company(&r, "Acme SL").await;
    let k = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "ERP", "scopes": ["clients:read"] }),
    )
    .await;
    let old = token(&k);
    assert_eq!(bearer(&r, "GET", "/v1/clients", &old).await.status, 200);
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/keys/{}/rotate", k["id"].as_str().unwrap()),
            Some(json!({ "grace_period_seconds": 3600 })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let new = a.body["api_key"].as_str().unwrap().to_string();
    assert_shape(&new, "fact_live_");
    assert_ne!(new, old);
    for t in [&old, &new] {
        let a = bearer(&r, "GET", "/v1/clients", t).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Rotating without a grace ends the old secret at once.
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/keys/{}/rotate", k["id"].as_str().unwrap()),
            Some(json!({ "grace_period_seconds": 0 })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let newest = a.body["api_key"].as_str().unwrap().to_string();
    assert_eq!(bearer(&r, "GET", "/v1/clients", &newest).await.status, 200);
    let a = bearer(&r, "GET", "/v1/clients", &new).await;
    assert_eq!(a.status, 401, "{}", a.body);
}

#[tokio::test]
async fn an_ip_outside_the_allowlist_is_401_and_audited() {
    let r = start();
    let acc = company(&r, "Acme SL").await;
    let fenced = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "server", "scopes": ["clients:read"], "ip_allowlist": ["203.0.113.0/24", "2001:db8::/32"] }),
    )
    .await;
    let a = bearer(&r, "GET", "/v1/clients", &token(&fenced)).await;
    assert_error(&a, 401, "authentication_error", "ip_not_allowed", None);
    assert!(
        a.body.get("path").is_none(),
        "it reached the upstream: {}",
        a.body
    );
    // An empty allowlist allows any IP.
    let open = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "any", "scopes": ["clients:read"], "ip_allowlist": [] }),
    )
    .await;
    assert_eq!(
        bearer(&r, "GET", "/v1/clients", &token(&open)).await.status,
        200
    );
    // The incident is in the audit log: key.ip_denied, naming the key.
    let mut seen = None;
    for _ in 0..100 {
        let a = r
            .admin_call("GET", "/v1/admin/events?type=key.ip_denied", None)
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let list = a.body.as_array().cloned().unwrap_or_default();
        if let Some(e) = list.first() {
            assert_eq!(list.len(), 1, "{}", a.body);
            seen = Some(e.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = seen.expect("no key.ip_denied event");
    assert_eq!(e["type"], "key.ip_denied", "{e}");
    assert_eq!(e["account_id"], acc.as_str(), "{e}");
    assert_eq!(e["data"]["key_id"], fenced["id"], "{e}");
    assert_eq!(e["actor"], fenced["id"], "{e}");
    assert_eq!(e["ip"], "127.0.0.1", "{e}");
}

#[tokio::test]
async fn the_old_secret_stops_when_a_short_grace_ends() {
    let r = start();
    let acc = company(&r, "Acme SL").await;
    let k = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "ERP", "scopes": ["clients:read"] }),
    )
    .await;
    let old = token(&k);
    assert_eq!(bearer(&r, "GET", "/v1/clients", &old).await.status, 200);
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/keys/{}/rotate", k["id"].as_str().unwrap()),
            Some(json!({ "grace_period_seconds": 2 })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let new = a.body["api_key"].as_str().unwrap().to_string();
    let rotated = std::time::Instant::now();
    // Both work during the grace...
    assert_eq!(bearer(&r, "GET", "/v1/clients", &old).await.status, 200);
    assert_eq!(bearer(&r, "GET", "/v1/clients", &new).await.status, 200);
    // ...and the old one stops once it is over.
    let mut a = bearer(&r, "GET", "/v1/clients", &old).await;
    while a.status == 200 {
        assert!(
            rotated.elapsed() < Duration::from_secs(30),
            "the old secret still works 30 s after a 2 s grace"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        a = bearer(&r, "GET", "/v1/clients", &old).await;
    }
    assert!(rotated.elapsed() >= Duration::from_secs(1), "stopped early");
    assert_error(&a, 401, "authentication_error", "api_key_revoked", None);
    assert_eq!(bearer(&r, "GET", "/v1/clients", &new).await.status, 200);
}

/// The reference's own example keys.
const LIVE_EXAMPLE: &str = "fact_live_8KqW3pXnR2VbY7TcA9eFmN5z";
const TEST_EXAMPLE: &str = "fact_test_3pXnR2VbY7TcA9eFmN5z8KqW";

#[tokio::test]
async fn the_reference_example_keys_work_once_their_bcrypt_hashes_are_imported() {
    let r = start();
    let acc = company(&r, "Acme SL").await;
    // What Factuarea keeps of a key: its bcrypt hash at cost 12, nothing else.
    let bcrypt = SecretHasher::new(HashScheme::Bcrypt, None, Vec::new(), 12).unwrap();
    for (example, mode) in [(LIVE_EXAMPLE, "live"), (TEST_EXAMPLE, "test")] {
        let prefix = format!("fact_{mode}_");
        assert_shape(example, &prefix);
        let a = bearer(&r, "GET", "/v1/clients", example).await;
        assert_error(
            &a,
            401,
            "authentication_error",
            "invalid_api_key",
            Some(INVALID),
        );
        let stored = bcrypt
            .store(
                &Secret::new(example),
                &example[prefix.len()..prefix.len() + 8],
            )
            .unwrap();
        assert!(stored.hash.starts_with("$2b$12$"), "{}", stored.hash);
        let i = r
            .admin_call(
                "POST",
                "/v1/admin/keys/import",
                Some(json!({
                    "account_id": acc, "mode": mode, "name": "example", "scheme": "bcrypt",
                    "hash": stored.hash, "lookup": stored.lookup, "prefix": prefix,
                    "key_hash": fingerprint(example), "scopes": ["clients:read", "account:read"],
                })),
            )
            .await;
        assert_eq!(i.status, 201, "{}", i.body);
        assert_eq!(i.body["mode"], mode);
        // Either header, as the reference sends them; the prefix gives the environment.
        let a = bearer(&r, "GET", "/v1/clients?limit=10", example).await;
        assert_eq!(a.status, 200, "{mode}: {}", a.body);
        assert_eq!(a.body["query"], "limit=10");
        assert_eq!(a.body["headers"]["x-keywarden-mode"], mode);
        assert_eq!(a.body["headers"]["x-keywarden-key-id"], i.body["id"]);
        let a = x_api_key(&r, "GET", "/v1/clients", example).await;
        assert_eq!(a.status, 200, "{mode}: {}", a.body);
        assert_eq!(a.body["headers"]["x-keywarden-mode"], mode);
        assert!(a.body["headers"].get("x-api-key").is_none());
        let a = bearer(&r, "GET", "/v1/account", example).await;
        assert_eq!(a.status, 200, "{mode}: {}", a.body);
        assert_eq!(a.body["key"]["id"], i.body["id"]);
        assert_eq!(a.body["key"]["prefix"], prefix.as_str());
        // The scopes still hold.
        let a = bearer(&r, "POST", "/v1/clients", example).await;
        assert_error(
            &a,
            403,
            "authorization_error",
            "insufficient_scope",
            Some(NO_SCOPE),
        );
    }
}

#[tokio::test]
async fn the_choices_the_profile_makes_where_the_reference_is_silent() {
    let r = start();
    let acc = company(&r, "Acme SL").await;

    // Messages are Spanish unless the client asks for English.
    let bad = format!("Bearer {LIVE_EXAMPLE}");
    for (lang, message) in [
        (None, INVALID),
        (Some("es-ES,es;q=0.9"), INVALID),
        (
            Some("en-GB,en;q=0.8"),
            Code::InvalidApiKey.message(Locale::En),
        ),
    ] {
        let mut headers = vec![("authorization", bad.as_str())];
        headers.extend(lang.map(|l| ("accept-language", l)));
        let a = r.public_call("GET", "/v1/clients", &headers, None).await;
        assert_error(
            &a,
            401,
            "authentication_error",
            "invalid_api_key",
            Some(message),
        );
    }

    // A key created with no scopes reads its own account, and nothing else.
    let bare = key(&r, &acc, json!({ "mode": "live", "name": "bare" })).await;
    assert_eq!(bare["scopes"], json!(["account:read"]));
    let a = bearer(&r, "GET", "/v1/account", &token(&bare)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["key"]["scopes"], json!(["account:read"]));
    let auth = format!("Bearer {}", token(&bare));
    let a = r
        .public_call(
            "GET",
            "/v1/clients",
            &[("authorization", &auth), ("accept-language", "en")],
            None,
        )
        .await;
    assert_error(
        &a,
        403,
        "authorization_error",
        "insufficient_scope",
        Some(Code::InsufficientScope.message(Locale::En)),
    );

    // HEAD is a read: it needs {resource}:read, like GET.
    let reader = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "reader", "scopes": ["clients:read"] }),
    )
    .await;
    let writer = key(
        &r,
        &acc,
        json!({ "mode": "live", "name": "writer", "scopes": ["clients:write", "clients:delete"] }),
    )
    .await;
    for path in ["/v1/clients", "/v1/clients/7"] {
        let a = bearer(&r, "HEAD", path, &token(&reader)).await;
        assert_eq!(a.status, 200, "{path}");
        let a = bearer(&r, "HEAD", path, &token(&writer)).await;
        assert_eq!(a.status, 403, "{path}");
        assert!(a.header("x-request-id").is_some());
    }

    // A disabled key is refused as revoked, until enabled again.
    let id = reader["id"].as_str().unwrap();
    for (enabled, status) in [(false, 401), (true, 200)] {
        let a = r
            .admin_call(
                "PATCH",
                &format!("/v1/admin/keys/{id}"),
                Some(json!({ "enabled": enabled })),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = bearer(&r, "GET", "/v1/clients", &token(&reader)).await;
        assert_eq!(a.status, status, "{}", a.body);
        if !enabled {
            assert_error(&a, 401, "authentication_error", "api_key_revoked", None);
        }
    }

    // A rotation's grace is at most 7 days.
    let rotate_path = format!("/v1/admin/keys/{id}/rotate");
    let rotate = |grace: u64| {
        r.admin_call(
            "POST",
            &rotate_path,
            Some(json!({ "grace_period_seconds": grace })),
        )
    };
    let a = rotate(604_801).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "invalid_request");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("grace_period_seconds"));
    assert_eq!(
        bearer(&r, "GET", "/v1/clients", &token(&reader))
            .await
            .status,
        200
    );
    let a = rotate(604_800).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let new = a.body["api_key"].as_str().unwrap();
    for t in [new, token(&reader).as_str()] {
        assert_eq!(bearer(&r, "GET", "/v1/clients", t).await.status, 200);
    }
}

#[tokio::test]
async fn repeated_failures_are_429_too_many_auth_failures() {
    let r = start();
    let mut last = None;
    for _ in 0..25 {
        let a = bearer(
            &r,
            "GET",
            "/v1/clients",
            "fact_live_8KqW3pXnR2VbY7TcA9eFmN5z",
        )
        .await;
        if a.status == 429 {
            last = Some(a);
            break;
        }
        assert_error(
            &a,
            401,
            "authentication_error",
            "invalid_api_key",
            Some(INVALID),
        );
    }
    let a = last.expect("the lockout answers 429");
    assert_error(&a, 429, "rate_limit_error", "too_many_auth_failures", None);
    assert!(a.header("retry-after").is_some());
}

#[tokio::test]
async fn serves_with_only_the_root_key() {
    profile_support::assert_serves_with_only_the_root_key("factuarea", &[]).await;
}

#[test]
fn config_check_passes_with_only_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keywarden"));
    cmd.args(["config", "check", "--profile", "factuarea"])
        .current_dir(dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYWARDEN_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env("KEYWARDEN_ROOT_KEY", profile_support::ROOT_KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config is valid"), "{stdout}");
    assert!(
        !stdout.contains(profile_support::ROOT_KEY),
        "the root key is printed"
    );
    // Checking writes nothing.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
