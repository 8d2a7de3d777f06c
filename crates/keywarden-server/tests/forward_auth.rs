//! `/v1/forward-auth` as nginx `auth_request`, Traefik ForwardAuth and Envoy ext_authz
//! call it: the client's own headers carry the key, the original method and path come in
//! proxy headers (or, for Envoy, in the request itself), and the answer's status and
//! `X-Keywarden-*` headers are what the proxy acts on.

mod common;

use common::{spawn_app, spawn_app_with, TestApp};
use keywarden_server::routes::forward_auth::original_target;
use keywarden_server::routes::needs::{route_needs, Needs};
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};

const ROUTES: &str = r#"
default_route = "deny"

[scopes]
catalog = [
  { name = "invoices:read", description = "Read invoices" },
  { name = "invoices:write", description = "Write invoices" },
  { name = "reports:read", description = "Read reports" },
]

[[routes]]
path = "/public/**"
auth = "none"

[[routes]]
methods = ["GET"]
path = "/v1/invoices/**"
scopes = ["invoices:read"]

[[routes]]
path = "/api/{resource}/**"
method_scopes = { GET = "{resource}:read", POST = "{resource}:write" }
"#;

/// `forward_auth.convention` for Traefik and for Envoy (nginx is the default).
const TRAEFIK: &str = "[forward_auth]\nconvention = \"traefik\"\n";
const ENVOY: &str = "[forward_auth]\nconvention = \"envoy\"\n";

/// What a proxy gets back.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A denial: status, error code, `X-Keywarden-Status`, and `WWW-Authenticate` exactly
    /// on 401s.
    fn assert_denied(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        assert!(self.body["error"]["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")));
        assert_eq!(
            self.header("x-keywarden-status"),
            Some(status.to_string().as_str())
        );
        assert_eq!(self.header("x-keywarden-code"), Some(code));
        assert_eq!(
            self.header("www-authenticate").is_some(),
            status == 401,
            "WWW-Authenticate goes with 401 only"
        );
        assert!(self.header("x-keywarden-key-id").is_none());
    }

    fn assert_allowed(&self) {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.header("x-keywarden-status"), Some("200"));
        assert_eq!(self.header("x-keywarden-code"), Some("valid"));
    }
}

/// `method` on `path` of the admin listener with `headers`.
async fn call(app: &TestApp, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let raw: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    call_raw(app, method, path, &raw).await
}

/// [`call`] with header values as bytes, which need not be text.
async fn call_raw(app: &TestApp, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Answer {
    let mut req = app.client.request(method, format!("{}{path}", app.admin));
    for (k, v) in headers {
        req = req.header(*k, HeaderValue::from_bytes(v).unwrap());
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// nginx: the subrequest goes to `/v1/forward-auth` with `X-Original-Method` and
/// `X-Original-URI`.
async fn nginx(app: &TestApp, method: &str, uri: &str, extra: &[(&str, &str)]) -> Answer {
    let mut h = vec![("X-Original-Method", method), ("X-Original-URI", uri)];
    h.extend_from_slice(extra);
    call(app, Method::GET, "/v1/forward-auth", &h).await
}

async fn scoped_key(app: &TestApp, account: &str, scopes: &[&str]) -> String {
    let v = app
        .key(
            account,
            json!({ "mode": "live", "name": "scoped", "scopes": scopes }),
        )
        .await;
    v["api_key"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn nginx_allowed_request_carries_the_identity() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    let bearer = format!("Bearer {token}");

    let a = nginx(
        &app,
        "GET",
        "/v1/invoices/42?expand=lines",
        &[("Authorization", &bearer)],
    )
    .await;
    a.assert_allowed();
    assert_eq!(a.header("x-keywarden-key-id"), Some(id.as_str()));
    assert_eq!(a.header("x-keywarden-account-id"), Some(acc.as_str()));
    assert_eq!(a.header("x-keywarden-mode"), Some("live"));
    let scopes = a.header("x-keywarden-scopes").unwrap();
    assert!(scopes.split(' ').any(|s| s == "account:read"), "{scopes}");
    assert!(a
        .header("x-request-id")
        .is_some_and(|r| r.starts_with("req_")));
    // Draft-11 rate-limit fields: the default plan's 600 a minute, one used.
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=600;w=60"));
    let rl = a.header("ratelimit").unwrap();
    assert!(rl.starts_with("\"default\";r=599;t="), "{rl}");
    assert!(
        rl["\"default\";r=599;t=".len()..].parse::<u64>().is_ok(),
        "{rl}"
    );
    // The secret never comes back.
    for (_, v) in a.headers.iter() {
        assert!(!v.to_str().unwrap_or("").contains(&token));
    }

    // The X-API-Key header works too, and any method is asked about.
    let a = nginx(&app, "DELETE", "/v1/invoices/42", &[("X-API-Key", &token)]).await;
    a.assert_allowed();
    assert_eq!(a.header("x-keywarden-key-id"), Some(id.as_str()));
    app.stop().await;
}

#[tokio::test]
async fn denied_requests_get_status_body_and_www_authenticate() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;

    nginx(&app, "GET", "/v1/invoices", &[])
        .await
        .assert_denied(401, "missing_api_key");
    nginx(
        &app,
        "GET",
        "/v1/invoices",
        &[("Authorization", "Bearer kw_sk_live_nope")],
    )
    .await
    .assert_denied(401, "invalid_api_key");
    // Another Authorization scheme is not a key.
    nginx(
        &app,
        "GET",
        "/v1/invoices",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    )
    .await
    .assert_denied(401, "missing_api_key");

    let res = app
        .admin(
            Method::POST,
            &format!("/v1/admin/keys/{id}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let bearer = format!("Bearer {token}");
    let a = nginx(&app, "GET", "/v1/invoices", &[("Authorization", &bearer)]).await;
    a.assert_denied(401, "api_key_revoked");
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer realm=\"keywarden\"")
    );

    // A suspended account is a 403, which nginx passes on as is.
    let acc2 = app.account("Beta").await;
    let (_, t2) = app.live_key(&acc2).await;
    app.set_account_status(&acc2, "suspended").await;
    nginx(&app, "GET", "/v1/x", &[("X-API-Key", &t2)])
        .await
        .assert_denied(403, "account_inactive");
    app.stop().await;
}

#[tokio::test]
async fn renamed_codes_and_statuses_are_stamped_as_renamed() {
    let app = spawn_app_with(
        r#"
[errors]
rename = { api_key_expired = "api_key_revoked", missing_api_key = "no_key_given" }
status = { invalid_api_key = 418 }
"#,
    )
    .await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;

    // A new name keeps the status; a changed status keeps the name.
    nginx(&app, "GET", "/v1/invoices", &[])
        .await
        .assert_denied(401, "no_key_given");
    let a = nginx(
        &app,
        "GET",
        "/v1/invoices",
        &[("Authorization", "Bearer kw_sk_live_nope")],
    )
    .await;
    assert_eq!(a.status, 418, "{}", a.body);
    assert_eq!(a.header("x-keywarden-status"), Some("418"));
    assert_eq!(a.header("x-keywarden-code"), Some("invalid_api_key"));

    // An expired key reads as a revoked one, stamps included.
    let res = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/keys/{id}"),
            Some(json!({ "expires_at": "2026-03-20T11:00:00Z" })),
        )
        .await;
    assert_eq!(res.status(), 200);
    app.clock.advance_secs(7200);
    let bearer = format!("Bearer {token}");
    nginx(&app, "GET", "/v1/invoices", &[("Authorization", &bearer)])
        .await
        .assert_denied(401, "api_key_revoked");
    app.stop().await;
}

#[tokio::test]
async fn route_rules_decide_the_scopes() {
    let app = spawn_app_with(ROUTES).await;
    let acc = app.account("Acme").await;
    let reader = scoped_key(&app, &acc, &["invoices:read"]).await;
    let writer = scoped_key(&app, &acc, &["invoices:read", "invoices:write"]).await;
    let h = |t: &str| format!("Bearer {t}");
    let (hr, hw) = (h(&reader), h(&writer));
    let reader_h = [("Authorization", hr.as_str())];
    let writer_h = [("Authorization", hw.as_str())];

    // `scopes` on a route.
    nginx(&app, "GET", "/v1/invoices/7", &reader_h)
        .await
        .assert_allowed();
    // HEAD is asked like GET.
    nginx(&app, "HEAD", "/v1/invoices/7", &reader_h)
        .await
        .assert_allowed();

    // `method_scopes` with a capture.
    nginx(&app, "GET", "/api/invoices/7", &reader_h)
        .await
        .assert_allowed();
    nginx(&app, "POST", "/api/invoices", &reader_h)
        .await
        .assert_denied(403, "insufficient_scope");
    nginx(&app, "POST", "/api/invoices", &writer_h)
        .await
        .assert_allowed();
    nginx(&app, "GET", "/api/reports/2026", &writer_h)
        .await
        .assert_denied(403, "insufficient_scope");
    // A captured name that is no scope at all cannot be held by anyone.
    nginx(&app, "GET", "/api/secrets/1", &writer_h)
        .await
        .assert_denied(403, "insufficient_scope");
    // A method with no entry is denied.
    nginx(&app, "DELETE", "/api/invoices/7", &writer_h)
        .await
        .assert_denied(403, "insufficient_scope");

    // `auth = "none"` needs no key at all.
    let a = nginx(&app, "GET", "/public/docs/index.html", &[]).await;
    a.assert_allowed();
    assert!(a.header("x-keywarden-key-id").is_none());

    // `default_route = "deny"`: an unlisted path is refused even for a valid key...
    nginx(&app, "GET", "/v1/customers", &writer_h)
        .await
        .assert_denied(403, "insufficient_scope");
    nginx(&app, "POST", "/v1/invoices", &writer_h)
        .await
        .assert_denied(403, "insufficient_scope");
    // ...but a bad or missing key still learns that first.
    nginx(&app, "GET", "/v1/customers", &[])
        .await
        .assert_denied(401, "missing_api_key");
    // Path tricks do not slip past a rule.
    nginx(&app, "GET", "/public/../v1/customers", &writer_h)
        .await
        .assert_denied(403, "insufficient_scope");
    app.stop().await;
}

#[tokio::test]
async fn rate_limited_requests_get_429_with_retry_after() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "slow", "rate_limit": { "requests": 2, "per_seconds": 60 } }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();
    let h = [("X-API-Key", token)];
    let a = nginx(&app, "GET", "/v1/x", &h).await;
    a.assert_allowed();
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=2;w=60"));
    assert!(a
        .header("ratelimit")
        .unwrap()
        .starts_with("\"default\";r=1;"));
    nginx(&app, "GET", "/v1/x", &h).await.assert_allowed();

    let a = nginx(&app, "GET", "/v1/x", &h).await;
    a.assert_denied(429, "rate_limit_exceeded");
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=2;w=60"));
    assert!(a
        .header("ratelimit")
        .unwrap()
        .starts_with("\"default\";r=0;"));

    app.clock.advance_secs(retry as i64);
    nginx(&app, "GET", "/v1/x", &h).await.assert_allowed();
    app.stop().await;
}

#[tokio::test]
async fn repeated_failures_lock_out_the_client_with_429() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    for _ in 0..20 {
        nginx(&app, "GET", "/v1/x", &[("X-API-Key", "kw_sk_live_guess")])
            .await
            .assert_denied(401, "invalid_api_key");
    }
    let a = nginx(&app, "GET", "/v1/x", &[("X-API-Key", &token)]).await;
    a.assert_denied(429, "too_many_auth_failures");
    assert!(a
        .header("retry-after")
        .unwrap()
        .parse::<u64>()
        .is_ok_and(|r| r >= 1));
    app.stop().await;
}

#[tokio::test]
async fn traefik_headers_and_trusted_forwarded_for() {
    let app = spawn_app_with(&format!(
        "{ROUTES}\n[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{TRAEFIK}"
    ))
    .await;
    let acc = app.account("Acme").await;
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "office", "scopes": ["invoices:read"], "ip_allowlist": ["203.0.113.7"] }),
        )
        .await;
    let token = created["api_key"].as_str().unwrap();
    let bearer = format!("Bearer {token}");
    let traefik = |method: &'static str, uri: &'static str, xff: &'static str| {
        let bearer = bearer.clone();
        let app = &app;
        async move {
            call(
                app,
                Method::GET,
                "/v1/forward-auth",
                &[
                    ("X-Forwarded-Method", method),
                    ("X-Forwarded-Uri", uri),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "api.example.com"),
                    ("X-Forwarded-For", xff),
                    ("Authorization", &bearer),
                ],
            )
            .await
        }
    };
    // The proxy (127.0.0.1, trusted) says who the client is.
    let a = traefik("GET", "/v1/invoices/1", "203.0.113.7").await;
    a.assert_allowed();
    assert_eq!(a.header("x-keywarden-key-id"), created["id"].as_str());
    // Read right to left: the client's own claim (leftmost) is not believed.
    traefik("GET", "/v1/invoices/1", "203.0.113.7, 198.51.100.1")
        .await
        .assert_denied(401, "ip_not_allowed");
    traefik("GET", "/v1/invoices/1", "198.51.100.1")
        .await
        .assert_denied(401, "ip_not_allowed");
    // The original method and path are Traefik's, not the subrequest's.
    traefik("POST", "/v1/invoices/1", "203.0.113.7")
        .await
        .assert_denied(403, "insufficient_scope");

    // Traefik passes the client's own headers on: an X-Original-* pair the client wrote
    // chooses nothing.
    let forged = |uri: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move {
            let mut h = vec![
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/public/x"),
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-For", "203.0.113.7"),
            ];
            if !uri.is_empty() {
                h.push(("X-Forwarded-Uri", uri));
            }
            h.extend_from_slice(extra);
            call(app, Method::GET, "/v1/forward-auth", &h).await
        }
    };
    forged("/v1/invoices/1", &[])
        .await
        .assert_denied(401, "missing_api_key");
    // Without Traefik's own header, the client's does not stand in: 400, naming it.
    let a = forged("", &[]).await;
    a.assert_denied(400, "invalid_request");
    assert_eq!(a.body["error"]["message"], "X-Forwarded-Uri is missing");
    app.stop().await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let office = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "office", "ip_allowlist": ["203.0.113.7"] }),
        )
        .await;
    let office = office["api_key"].as_str().unwrap();
    let local = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "local", "ip_allowlist": ["127.0.0.1"] }),
        )
        .await;
    let local = local["api_key"].as_str().unwrap();

    // The forged header does not make the peer 203.0.113.7...
    nginx(
        &app,
        "GET",
        "/v1/x",
        &[("X-API-Key", office), ("X-Forwarded-For", "203.0.113.7")],
    )
    .await
    .assert_denied(401, "ip_not_allowed");
    // ...and the peer's own address still counts.
    nginx(
        &app,
        "GET",
        "/v1/x",
        &[("X-API-Key", local), ("X-Forwarded-For", "203.0.113.7")],
    )
    .await
    .assert_allowed();
    app.stop().await;
}

#[tokio::test]
async fn envoy_original_path_in_the_request_path() {
    let root = "[[routes]]\npath = \"/\"\nauth = \"none\"\n";
    let app = spawn_app_with(&format!("{ROUTES}\n{root}\n{ENVOY}")).await;
    let acc = app.account("Acme").await;
    let reader = scoped_key(&app, &acc, &["invoices:read"]).await;
    let bearer = format!("Bearer {reader}");
    let auth = [("Authorization", bearer.as_str())];

    // ext_authz with `path_prefix: /v1/forward-auth`: the original path follows it, and
    // the method is the request's own.
    let a = call(
        &app,
        Method::GET,
        "/v1/forward-auth/v1/invoices/3?x=1",
        &auth,
    )
    .await;
    a.assert_allowed();
    assert_eq!(a.header("x-keywarden-mode"), Some("live"));
    call(&app, Method::POST, "/v1/forward-auth/v1/invoices/3", &auth)
        .await
        .assert_denied(403, "insufficient_scope");
    call(&app, Method::GET, "/v1/forward-auth/public/logo.png", &[])
        .await
        .assert_allowed();
    call(&app, Method::GET, "/v1/forward-auth/v1/invoices/3", &[])
        .await
        .assert_denied(401, "missing_api_key");
    // The root path is decided like any other, with or without a query.
    for root in ["/v1/forward-auth/", "/v1/forward-auth/?lang=es"] {
        call(&app, Method::GET, root, &[]).await.assert_allowed();
    }
    call(&app, Method::GET, "/v1/forward-auth/v1/", &[])
        .await
        .assert_denied(401, "missing_api_key");

    // The other proxies' headers, which the client may send through Envoy, choose nothing.
    let forged = [
        ("X-Original-Method", "GET"),
        ("X-Original-URI", "/public/x"),
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/public/x"),
    ];
    call(
        &app,
        Method::DELETE,
        "/v1/forward-auth/v1/invoices/3",
        &forged,
    )
    .await
    .assert_denied(401, "missing_api_key");
    // With no original path after the prefix there is nothing to decide about.
    let a = call(&app, Method::GET, "/v1/forward-auth", &forged).await;
    a.assert_denied(400, "invalid_request");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("must follow /v1/forward-auth")),
        "{}",
        a.body
    );
    app.stop().await;
}

#[tokio::test]
async fn a_verify_token_is_required_when_configured() {
    let var = "KW_TEST_VERIFY_TOKEN_FORWARD_AUTH";
    let vt = "vt_forward_auth_0123456789abcdef";
    std::env::set_var(var, vt);
    let app = spawn_app_with(&format!("[auth]\nverify_token_env = \"{var}\"\n")).await;
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;

    let a = nginx(&app, "GET", "/v1/x", &[("X-API-Key", &token)]).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "root_key_required");
    assert_eq!(a.header("x-keywarden-status"), Some("401"));
    assert!(a.header("x-keywarden-key-id").is_none());
    nginx(
        &app,
        "GET",
        "/v1/x",
        &[
            ("X-API-Key", &token),
            ("X-Keywarden-Verify-Token", "not-the-token"),
        ],
    )
    .await
    .assert_denied(401, "root_key_required");

    let a = nginx(
        &app,
        "GET",
        "/v1/x",
        &[("X-API-Key", &token), ("X-Keywarden-Verify-Token", vt)],
    )
    .await;
    a.assert_allowed();
    assert_eq!(a.header("x-keywarden-key-id"), Some(id.as_str()));
    // The verify token is no substitute for the customer's key.
    nginx(&app, "GET", "/v1/x", &[("X-Keywarden-Verify-Token", vt)])
        .await
        .assert_denied(401, "missing_api_key");
    app.stop().await;
}

#[tokio::test]
async fn forward_auth_needs_no_root_key() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    // No Authorization: Bearer <root>; the client's key in X-API-Key is all it takes.
    let res = app
        .client
        .get(format!("{}/v1/forward-auth", app.admin))
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/v1/x")
        .header("X-API-Key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-keywarden-status"], "200");
    app.stop().await;
}

/// A public `/` and `/public/**`; every other path needs a key. Three failures lock.
const PUBLIC_ROOT: &str = r#"
[auth]
lockout = { max_failures = 3, window_seconds = 300, lock_seconds = 300 }

[[routes]]
path = "/"
auth = "none"

[[routes]]
path = "/public/**"
auth = "none"
"#;

#[tokio::test]
async fn an_original_uri_that_cannot_be_read_is_refused_not_replaced() {
    let app = spawn_app_with(PUBLIC_ROOT).await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;

    // Once replaced by the public `/`, each of these went through without a key.
    let unreadable: [&[u8]; 8] = [
        b"/admin/secret?q=<x>",
        b"/admin/<script>",
        b"/admin/`id`",
        "/admin/secret/é".as_bytes(),
        "/admin?q=é".as_bytes(),
        b"/admin/\xff",
        b"/admin/a b",
        b"admin/secret",
    ];
    for raw in unreadable {
        let a = call_raw(
            &app,
            Method::GET,
            "/v1/forward-auth",
            &[("X-Original-Method", b"GET"), ("X-Original-URI", raw)],
        )
        .await;
        a.assert_denied(400, "invalid_request");
        let message = a.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("X-Original-URI "), "{message}");
        assert_eq!(a.header("x-keywarden-code"), Some("invalid_request"));
        // Nor does another family's header stand in for it.
        call_raw(
            &app,
            Method::GET,
            "/v1/forward-auth",
            &[
                ("X-Original-Method", b"GET"),
                ("X-Original-URI", raw),
                ("X-Forwarded-Uri", b"/"),
            ],
        )
        .await
        .assert_denied(400, "invalid_request");
    }
    // Nothing was decided: no key was checked, no failure counted toward the lockout
    // (three lock here).
    for _ in 0..4 {
        call_raw(
            &app,
            Method::GET,
            "/v1/forward-auth",
            &[
                ("X-Original-Method", b"GET"),
                ("X-Original-URI", b"/admin?q=<x>"),
                ("X-API-Key", b"kw_sk_live_not_a_key"),
            ],
        )
        .await
        .assert_denied(400, "invalid_request");
    }
    nginx(&app, "GET", "/admin", &[("X-API-Key", &token)])
        .await
        .assert_allowed();

    // Percent-encoded, the same requests are decided about their own paths.
    for uri in [
        "/admin/secret?q=%3Cx%3E",
        "/admin/secret/%C3%A9",
        "/admin/%60id%60",
    ] {
        nginx(&app, "GET", uri, &[])
            .await
            .assert_denied(401, "missing_api_key");
    }
    nginx(&app, "GET", "/?q=%3Cx%3E", &[])
        .await
        .assert_allowed();
    app.stop().await;
}

#[tokio::test]
async fn nginx_is_the_default_convention_and_the_only_one_read() {
    let app = spawn_app_with(PUBLIC_ROOT).await;
    // Traefik's headers are not nginx's: the missing one is named.
    let a = call(
        &app,
        Method::GET,
        "/v1/forward-auth",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/public/x"),
        ],
    )
    .await;
    a.assert_denied(400, "invalid_request");
    assert_eq!(a.body["error"]["message"], "X-Original-Method is missing");
    let a = nginx(&app, "GET", "", &[]).await;
    a.assert_denied(400, "invalid_request");
    let a = call(
        &app,
        Method::GET,
        "/v1/forward-auth/public/x",
        &[("X-Original-Method", "GET")],
    )
    .await;
    a.assert_denied(400, "invalid_request");
    assert_eq!(a.body["error"]["message"], "X-Original-URI is missing");
    // With nginx's headers present, another family's (or the request's own path) chooses
    // nothing.
    let a = call(
        &app,
        Method::GET,
        "/v1/forward-auth/public/x",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/admin"),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/public/x"),
        ],
    )
    .await;
    a.assert_denied(401, "missing_api_key");
    // Sent twice: which one nginx set cannot be told, so neither is used.
    let a = call(
        &app,
        Method::GET,
        "/v1/forward-auth",
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/public/x"),
            ("X-Original-URI", "/admin"),
        ],
    )
    .await;
    a.assert_denied(400, "invalid_request");
    assert_eq!(
        a.body["error"]["message"],
        "X-Original-URI is sent more than once"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_convention_is_refused_at_startup() {
    let err = keywarden_server::config::Config::from_parts(
        "[forward_auth]\nconvention = \"haproxy\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.field, "forward_auth.convention");
    assert!(err.reason.contains("nginx"), "{}", err.reason);
}

/// A client a trusted proxy could not name (a hop that is no address) is unknown: it is
/// not the proxy, so it matches no allowlist, and its use is logged without an address.
#[tokio::test]
async fn a_client_a_trusted_proxy_cannot_name_matches_no_allowlist() {
    let app = spawn_app_with("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let acc = app.account("Acme").await;
    // The proxy's own address is on the allowlist, as when nginx runs beside the API.
    let created = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "local", "ip_allowlist": ["127.0.0.1"] }),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["api_key"].as_str().unwrap().to_string();
    let with_xff = |xff: &'static [u8]| {
        let app = &app;
        let token = token.clone();
        async move {
            let mut h: Vec<(&str, &[u8])> = vec![
                ("X-Original-Method", b"GET"),
                ("X-Original-URI", b"/v1/x"),
                ("X-API-Key", token.as_bytes()),
            ];
            if !xff.is_empty() {
                h.push(("X-Forwarded-For", xff));
            }
            call_raw(app, Method::GET, "/v1/forward-auth", &h).await
        }
    };
    // The proxy itself, and a client it names as 127.0.0.1, are allowed.
    with_xff(b"").await.assert_allowed();
    with_xff(b"127.0.0.1").await.assert_allowed();
    // A client it cannot name is not the proxy.
    for xff in [
        &b"unknown"[..],
        b"203.0.113.7, garbage",
        b"client.example.com",
        b"127.0.0.1\xff",
    ] {
        with_xff(xff).await.assert_denied(401, "ip_not_allowed");
    }
    app.flush_writer().await;
    let rows = app
        .admin(Method::GET, &format!("/v1/admin/keys/{id}/activity"), None)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 6, "{rows:?}");
    // Newest first: the four unknown clients, logged without an address.
    for row in &rows[..4] {
        assert_eq!(row["code"], "ip_not_allowed", "{row}");
        assert_eq!(row["ip"], Value::Null, "{row}");
    }
    assert_eq!(rows[4]["ip"], "127.0.0.1");
    let events = app
        .admin(Method::GET, "/v1/admin/events?type=key.ip_denied", None)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.iter().all(|e| e["ip"].is_null()), "{events:?}");
    app.stop().await;
}

/// Bytes a proxy may put in a header, biased towards what makes a path interesting.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(
        b"/?#%.;=&<>`\"{}|\\^ aApublicdmin~-_:@!$'()*+,\t\x80\xc3\xa9\xff".to_vec(),
    );
    let byte = prop_oneof![4 => interesting, 1 => any::<u8>()];
    (
        prop::sample::select(vec!["", "/", "/public/", "/admin/"]),
        prop::collection::vec(byte, 0..24),
    )
        .prop_map(|(start, rest)| {
            let mut raw = start.as_bytes().to_vec();
            raw.extend(rest);
            raw.retain(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
            raw
        })
}

/// A field value without the spaces and tabs around it, as HTTP reads it.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Over HTTP, for any original URI: a 400 refusal, or a decision about exactly the path
/// it names (public paths pass without a key, every other one asks for it, and one with no
/// canonical form is refused).
#[test]
fn any_original_uri_is_refused_or_decided_on_exactly_its_path() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Every case without a key fails authentication: the lockout must not get in the way.
    let config = PUBLIC_ROOT.replace("max_failures = 3", "max_failures = 1000000");
    let app = rt.block_on(spawn_app_with(&config));
    let mut runner = TestRunner::new(Cases {
        cases: 96,
        failure_persistence: None,
        ..Cases::default()
    });
    runner
        .run(&header_bytes(), |raw| {
            let a = rt.block_on(call_raw(
                &app,
                Method::GET,
                "/v1/forward-auth",
                &[("X-Original-Method", b"GET"), ("X-Original-URI", &raw)],
            ));
            let shown = String::from_utf8_lossy(&raw);
            // HTTP drops a field value's leading and trailing spaces and tabs on the wire, so
            // the service is asked about the value without them.
            let raw = trim_ows(&raw).to_vec();
            match original_target(&raw) {
                Err(_) => {
                    prop_assert_eq!(a.status, 400, "{}: {}", shown, a.body);
                    prop_assert_eq!(&a.body["error"]["code"], "invalid_request");
                }
                Ok(uri) => {
                    let text = std::str::from_utf8(&raw).unwrap();
                    let path = text.split('?').next().unwrap();
                    prop_assert_eq!(uri.path(), path);
                    // A path with no canonical form is refused; any other is decided.
                    let want = match route_needs(&app.state, "GET", path) {
                        Err(_) => 400,
                        Ok((Needs::Public, _)) => 200,
                        Ok(_) => 401,
                    };
                    prop_assert_eq!(a.status, want, "{}: {}", shown, a.body);
                }
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(app.stop());
}
