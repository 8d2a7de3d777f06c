//! `/v1/forward-auth` as nginx `auth_request`, Traefik ForwardAuth and Envoy ext_authz
//! call it: the client's own headers carry the key, the original method and path come in
//! proxy headers (or, for Envoy, in the request itself), and the answer's status and
//! `X-Keywarden-*` headers are what the proxy acts on.

mod common;

use common::{spawn_app, spawn_app_with, TestApp};
use reqwest::header::HeaderMap;
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
    }
}

/// `method` on `path` of the admin listener with `headers`.
async fn call(app: &TestApp, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = app.client.request(method, format!("{}{path}", app.admin));
    for (k, v) in headers {
        req = req.header(*k, *v);
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
    let res = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/accounts/{acc2}"),
            Some(json!({ "status": "suspended" })),
        )
        .await;
    assert_eq!(res.status(), 200);
    nginx(&app, "GET", "/v1/x", &[("X-API-Key", &t2)])
        .await
        .assert_denied(403, "account_inactive");
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
        "{ROUTES}\n[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
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
async fn envoy_original_path_in_header_or_in_the_request_path() {
    let app = spawn_app_with(ROUTES).await;
    let acc = app.account("Acme").await;
    let reader = scoped_key(&app, &acc, &["invoices:read"]).await;
    let bearer = format!("Bearer {reader}");
    let auth = [("Authorization", bearer.as_str())];

    // ext_authz with the method kept and the path in X-Original-URI.
    let h = [
        ("Authorization", bearer.as_str()),
        ("X-Original-URI", "/api/invoices/3"),
    ];
    call(&app, Method::GET, "/v1/forward-auth", &h)
        .await
        .assert_allowed();
    call(&app, Method::POST, "/v1/forward-auth", &h)
        .await
        .assert_denied(403, "insufficient_scope");

    // ext_authz with `path_prefix: /v1/forward-auth`: the original path follows it.
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
        .header("X-API-Key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-keywarden-status"], "200");
    app.stop().await;
}
