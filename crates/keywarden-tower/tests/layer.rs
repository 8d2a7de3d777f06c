//! The layer through the invoices example app (`examples/invoices/app.rs`), driven with
//! `tower::ServiceExt::oneshot` on a fresh in-memory store per test.

#[path = "../examples/invoices/app.rs"]
mod app;

use app::{IssuedKey, NewKey};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use keywarden_core::codes::Locale;
use keywarden_core::model::{new_id, Account, Application, KeyType, Mode, RateLimitSpec};
use keywarden_core::Secret;
use keywarden_tower::{
    ErrorFormat, ErrorStyle, Keywarden, KeywardenLayer, Principal, RequireScopes,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use tower::ServiceExt;

/// The example app on a fresh in-memory store, with one active account.
struct TestApp {
    kw: Keywarden,
    router: Router,
    account: Account,
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    /// The error code of an envelope body.
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The request id header, checked for its `req_<ULID>` shape.
    fn request_id(&self) -> &str {
        let id = self.header("x-request-id");
        let ulid = id.strip_prefix("req_").unwrap_or("");
        assert!(
            ulid.len() == 26 && ulid.parse::<ulid::Ulid>().is_ok(),
            "bad X-Request-Id {id:?} on a {} response",
            self.status
        );
        id
    }

    /// Checks a denial in the envelope style, with the matching request id.
    fn assert_denied(&self, status: u16, code: &str, error_type: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.code(), code, "{}", self.body);
        assert_eq!(self.body["error"]["type"], error_type);
        assert!(!self.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .is_empty());
        assert_eq!(self.body["error"]["request_id"], self.request_id());
        assert_eq!(self.header("content-type"), "application/json");
        assert_eq!(
            self.headers.contains_key(header::WWW_AUTHENTICATE),
            status == 401
        );
    }
}

fn key_spec(scopes: &[&str]) -> NewKey {
    NewKey {
        name: "test".into(),
        mode: Mode::Test,
        key_type: KeyType::Secret,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        rate_limit: None,
        ip_allowlist: Vec::new(),
        app_id: None,
    }
}

async fn spawn() -> TestApp {
    let kw = app::keywarden("sqlite::memory:").await.unwrap();
    let account = app::create_account(&kw, "Acme").await.unwrap();
    let router = app::app(&kw).unwrap();
    TestApp {
        kw,
        router,
        account,
    }
}

impl TestApp {
    async fn key(&self, scopes: &[&str]) -> IssuedKey {
        self.key_with(key_spec(scopes)).await
    }

    async fn key_with(&self, spec: NewKey) -> IssuedKey {
        app::issue_key(&self.kw, &self.account, spec).await.unwrap()
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        send(&self.router, req).await
    }

    async fn get(&self, path: &str, key: Option<&IssuedKey>) -> Reply {
        self.send(request(Method::GET, path, key)).await
    }
}

fn request(method: Method, path: &str, key: Option<&IssuedKey>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {}", k.token.expose()));
    }
    b.body(Body::empty()).unwrap()
}

fn create_invoice(key: &IssuedKey) -> Request<Body> {
    Request::post("/invoices")
        .header("authorization", format!("Bearer {}", key.token.expose()))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"customer":"Globex","amount_cents":12500}"#))
        .unwrap()
}

async fn send(router: &Router, req: Request<Body>) -> Reply {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn no_key_is_401_missing_api_key_in_the_envelope() {
    let t = spawn().await;
    let r = t.get("/invoices", None).await;
    r.assert_denied(401, "missing_api_key", "authentication_error");
    assert_eq!(r.body["error"]["message"], "No API key was provided.");
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"keywarden\"");
    // The public route needs nothing.
    let r = t.get("/", None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_bad_key_is_401_invalid_api_key_and_never_echoed() {
    let t = spawn().await;
    let template = &t.kw.verifier().config().template;
    // A well-formed key with a valid checksum that was never issued, then garbage.
    let unknown = template.generate(Mode::Test, KeyType::Secret);
    for token in [unknown.expose(), "kw_sk_test_not-a-key", "hunter2"] {
        let req = Request::get("/invoices")
            .header("x-api-key", token)
            .body(Body::empty())
            .unwrap();
        let r = t.send(req).await;
        r.assert_denied(401, "invalid_api_key", "authentication_error");
        assert!(!r.body.to_string().contains(token));
        assert!(!format!("{:?}", r.headers).contains(token));
    }
}

#[tokio::test]
async fn a_valid_key_reaches_the_handler_with_its_principal() {
    let t = spawn().await;
    let key = t.key(&["invoices:read"]).await;
    let r = t.get("/me", Some(&key)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({
            "key_id": key.record.id,
            "account_id": t.account.id,
            "mode": "test",
            "key_type": "secret",
            "scopes": ["invoices:read"],
            "app_id": null,
        })
    );
    r.request_id();
    // The plan's rate limit applied, and its figures are shown.
    assert_eq!(r.header("ratelimit-policy"), "\"default\";q=600;w=60");
    assert!(r.header("ratelimit").starts_with("\"default\";r=599;"));
    let r = t.get("/invoices", Some(&key)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({ "data": [] }));
}

#[tokio::test]
async fn the_key_may_come_from_x_api_key_and_other_schemes_are_ignored() {
    let t = spawn().await;
    let key = t.key(&["invoices:read"]).await;
    let req = Request::get("/invoices")
        .header("x-api-key", key.token.expose())
        .body(Body::empty())
        .unwrap();
    assert_eq!(t.send(req).await.status, 200);
    let basic = Request::get("/invoices")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(Body::empty())
        .unwrap();
    t.send(basic)
        .await
        .assert_denied(401, "missing_api_key", "authentication_error");
}

#[tokio::test]
async fn a_missing_scope_is_403_insufficient_scope() {
    let t = spawn().await;
    let reader = t.key(&["invoices:read"]).await;
    let r = t.send(create_invoice(&reader)).await;
    r.assert_denied(403, "insufficient_scope", "authorization_error");
    assert_eq!(
        r.body["error"]["message"],
        "The API key lacks a scope this request needs."
    );

    // `invoices:write` is an alias that includes `invoices:read`.
    let writer = t.key(&["invoices:write"]).await;
    let r = t.send(create_invoice(&writer)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["created_by"], writer.record.id.as_str());
    r.request_id();
    let listed = t.get("/invoices", Some(&writer)).await;
    assert_eq!(listed.body["data"][0]["customer"], "Globex");
    // Same account and mode: the reader sees it too.
    let listed = t.get("/invoices", Some(&reader)).await;
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(1));

    // Another account sees none of it.
    let other = app::create_account(&t.kw, "Globex").await.unwrap();
    let outsider = app::issue_key(&t.kw, &other, key_spec(&["invoices:read"]))
        .await
        .unwrap();
    let listed = t.get("/invoices", Some(&outsider)).await;
    assert_eq!(listed.body, json!({ "data": [] }));
}

#[tokio::test]
async fn a_revoked_key_is_401_at_once() {
    let t = spawn().await;
    let key = t.key(&["invoices:read"]).await;
    assert_eq!(t.get("/invoices", Some(&key)).await.status, 200);

    let v = t.kw.verifier();
    let mut revoked = key.record.clone();
    revoked.revoked_at = Some(v.clock().now_ms());
    revoked.revoked_reason = Some("leaked".into());
    v.store().update_key(&revoked, &[]).await.unwrap();
    v.invalidate_key(&revoked);

    t.get("/invoices", Some(&key)).await.assert_denied(
        401,
        "api_key_revoked",
        "authentication_error",
    );
}

#[tokio::test]
async fn a_rate_limited_key_gets_429_with_retry_after() {
    let t = spawn().await;
    let key = t
        .key_with(NewKey {
            rate_limit: Some(RateLimitSpec {
                requests: 2,
                per_seconds: 60,
            }),
            ..key_spec(&["invoices:read"])
        })
        .await;
    for remaining in ["1", "0"] {
        let r = t.get("/invoices", Some(&key)).await;
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit").contains(&format!(";r={remaining};")));
    }
    let r = t.get("/invoices", Some(&key)).await;
    r.assert_denied(429, "rate_limit_exceeded", "rate_limit_error");
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-policy"), "\"default\";q=2;w=60");
    assert!(r.header("ratelimit").starts_with("\"default\";r=0;"));
}

#[tokio::test]
async fn a_publishable_key_gets_no_secret_scope() {
    let t = spawn().await;
    // Even granted `*`, a publishable key holds public scopes only, and this catalog has none.
    let key = t
        .key_with(NewKey {
            key_type: KeyType::Publishable,
            ..key_spec(&["*"])
        })
        .await;
    let me = t.get("/me", Some(&key)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["key_type"], "publishable");
    assert_eq!(me.body["scopes"], json!([]));
    t.get("/invoices", Some(&key)).await.assert_denied(
        403,
        "insufficient_scope",
        "authorization_error",
    );
}

#[tokio::test]
async fn every_response_through_the_layer_has_its_own_request_id() {
    let t = spawn().await;
    let reader = t.key(&["invoices:read"]).await;
    let writer = t.key(&["invoices:write"]).await;
    let replies = [
        t.get("/invoices", None).await,          // 401
        t.send(create_invoice(&reader)).await,   // 403
        t.get("/invoices", Some(&reader)).await, // 200
        t.send(create_invoice(&writer)).await,   // 201
        t.send(request(Method::DELETE, "/invoices", Some(&writer)))
            .await, // 405
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [401, 403, 200, 201, 405]);
    let mut ids: Vec<&str> = replies.iter().map(Reply::request_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), replies.len(), "request ids repeat: {ids:?}");
}

#[tokio::test]
async fn an_id_assigned_upstream_is_kept() {
    let t = spawn().await;
    let mut req = request(Method::GET, "/invoices", None);
    let id = keywarden_tower::RequestId::from_string("req_01J00000000000000000000000".into());
    req.extensions_mut().insert(id);
    let r = t.send(req).await;
    assert_eq!(
        r.body["error"]["request_id"],
        "req_01J00000000000000000000000"
    );
    assert_eq!(r.header("x-request-id"), "req_01J00000000000000000000000");
}

#[tokio::test]
async fn errors_speak_the_clients_language() {
    let t = spawn().await;
    let req = Request::get("/invoices")
        .header("accept-language", "es-ES,es;q=0.9,en;q=0.5")
        .body(Body::empty())
        .unwrap();
    let r = t.send(req).await;
    r.assert_denied(401, "missing_api_key", "authentication_error");
    assert_eq!(
        r.body["error"]["message"],
        "No se ha proporcionado ninguna clave de API."
    );
}

#[tokio::test]
async fn require_scopes_answers_in_the_layers_format() {
    let t = spawn().await;
    let format = ErrorFormat {
        style: ErrorStyle::Problem,
        locale: Locale::Es,
        doc_url: "https://docs.example.com/errors#{code}".into(),
        ..ErrorFormat::default()
    };
    let router = Router::new()
        .route(
            "/write",
            post(|| async { "written" })
                .route_layer(RequireScopes::new(&t.kw, &["invoices:write"]).unwrap()),
        )
        .layer(KeywardenLayer::new(t.kw.clone()).error_format(format));
    let reader = t.key(&["invoices:read"]).await;
    let r = send(&router, request(Method::POST, "/write", Some(&reader))).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(r.body["code"], "insufficient_scope");
    assert_eq!(r.body["status"], 403);
    assert_eq!(
        r.body["type"],
        "https://docs.example.com/errors#insufficient_scope"
    );
    assert_eq!(r.body["request_id"], r.request_id());
    assert!(r.body["detail"].as_str().unwrap().contains("permiso"));
    let r = send(&router, request(Method::POST, "/write", None)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["code"], "missing_api_key");
}

#[tokio::test]
async fn scopes_required_on_the_layer_are_checked_before_the_rate_limit() {
    let t = spawn().await;
    let limited = || NewKey {
        rate_limit: Some(RateLimitSpec {
            requests: 1,
            per_seconds: 60,
        }),
        ..key_spec(&["invoices:read"])
    };

    // Within the decision (`docs/decision.md`): a scope refusal consumes no rate-limit budget.
    let ordered = Router::new().route(
        "/write",
        post(|| async { "written" }).route_layer(
            KeywardenLayer::new(t.kw.clone())
                .require_scopes(&["invoices:write"])
                .unwrap(),
        ),
    );
    let key = t.key_with(limited()).await;
    for _ in 0..3 {
        send(&ordered, request(Method::POST, "/write", Some(&key)))
            .await
            .assert_denied(403, "insufficient_scope", "authorization_error");
    }
    assert_eq!(t.get("/invoices", Some(&key)).await.status, 200);

    // After the decision (`RequireScopes`): the refused request was already counted.
    let key = t.key_with(limited()).await;
    t.send(create_invoice(&key)).await.assert_denied(
        403,
        "insufficient_scope",
        "authorization_error",
    );
    t.get("/invoices", Some(&key)).await.assert_denied(
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
    );

    assert!(KeywardenLayer::new(t.kw.clone())
        .require_scopes(&["invoices:delete"])
        .is_err());
    let err = RequireScopes::new(&t.kw, &["invoices:read", "nope", "*"]).unwrap_err();
    assert_eq!(err.unknown, ["nope", "*"]);
}

#[tokio::test]
async fn any_scope_of_a_list_may_be_enough() {
    let t = spawn().await;
    let check = RequireScopes::any(&t.kw, &["invoices:write", "usage:read"]).unwrap();
    let layer = KeywardenLayer::new(t.kw.clone())
        .require_any_scope(&["invoices:write", "usage:read"])
        .unwrap();
    let router = Router::new()
        .route("/a", get(|| async { "ok" }).route_layer(check))
        .layer(KeywardenLayer::new(t.kw.clone()))
        .merge(Router::new().route("/b", get(|| async { "ok" }).route_layer(layer)));
    let usage = t.key(&["usage:read"]).await;
    let reader = t.key(&["invoices:read"]).await;
    for path in ["/a", "/b"] {
        assert_eq!(
            send(&router, request(Method::GET, path, Some(&usage)))
                .await
                .status,
            200
        );
        send(&router, request(Method::GET, path, Some(&reader)))
            .await
            .assert_denied(403, "insufficient_scope", "authorization_error");
    }
}

#[tokio::test]
async fn the_client_ip_comes_from_connect_info() {
    let t = spawn().await;
    let key = t
        .key_with(NewKey {
            ip_allowlist: vec!["10.1.2.0/24".into()],
            ..key_spec(&["invoices:read"])
        })
        .await;
    let from = |ip: Option<&str>| {
        let mut req = request(Method::GET, "/invoices", Some(&key));
        if let Some(ip) = ip {
            let addr: SocketAddr = format!("{ip}:40000").parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(addr));
        }
        req
    };
    assert_eq!(t.send(from(Some("10.1.2.3"))).await.status, 200);
    t.send(from(Some("10.9.9.9"))).await.assert_denied(
        401,
        "ip_not_allowed",
        "authentication_error",
    );
    // An unknown client address cannot be in an allowlist.
    t.send(from(None))
        .await
        .assert_denied(401, "ip_not_allowed", "authentication_error");
}

#[tokio::test]
async fn a_global_key_is_a_principal_of_no_account() {
    let (catalog, aliases) = app::scopes();
    let global = "fs-global-key-0123456789abcdef";
    let kw = Keywarden::builder()
        .database_url("sqlite::memory:")
        .catalog(catalog, aliases)
        .global_keys(vec![Secret::new(global)])
        .build()
        .await
        .unwrap();
    let router = app::app(&kw).unwrap();
    let req = Request::get("/me")
        .header("authorization", format!("Bearer {global}"))
        .body(Body::empty())
        .unwrap();
    let r = send(&router, req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["key_id"], "global");
    assert_eq!(r.body["account_id"], Value::Null);
    assert_eq!(r.body["mode"], Value::Null);
    let scopes = r.body["scopes"].as_array().unwrap();
    assert!(scopes.contains(&json!("invoices:write")));
    kw.shutdown().await;
}

#[tokio::test]
async fn handlers_without_the_layer_fail_closed() {
    let t = spawn().await;
    let key = t.key(&["invoices:read"]).await;
    let router = Router::new()
        .route("/me", get(|p: Principal| async move { p.key_id }))
        .route(
            "/scoped",
            get(|| async { "ok" })
                .route_layer(RequireScopes::new(&t.kw, &["invoices:read"]).unwrap()),
        )
        .route(
            "/optional",
            get(|p: Option<Principal>| async move {
                if p.is_some() {
                    "a caller"
                } else {
                    "nobody"
                }
            }),
        );
    for path in ["/me", "/scoped"] {
        let r = send(&router, request(Method::GET, path, Some(&key))).await;
        assert_eq!(r.status, 500, "{path}");
        assert_eq!(r.code(), "internal_error");
        assert_eq!(r.body["error"]["request_id"], r.request_id());
    }
    let r = send(&router, request(Method::GET, "/optional", Some(&key))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Value::String("nobody".into()));
}

#[tokio::test]
async fn use_is_written_in_the_background_and_flushed_on_shutdown() {
    let t = spawn().await;
    let key = t.key(&["invoices:read"]).await;
    let addr: SocketAddr = "192.0.2.10:5000".parse().unwrap();
    let mut req = request(Method::GET, "/invoices", Some(&key));
    req.extensions_mut().insert(ConnectInfo(addr));
    assert_eq!(t.send(req).await.status, 200);
    t.kw.shutdown().await;
    let store = t.kw.verifier().store();
    let stored = store.get_key(&key.record.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_ip.as_deref(), Some("192.0.2.10"));
    let activity = store.list_activity(&key.record.id, 10).await.unwrap();
    assert_eq!(activity.len(), 1);
    assert_eq!(activity[0].path, "/invoices");
    assert_eq!(activity[0].code, "valid");
}

/// An application with its two secrets, stored as the server's admin API would.
async fn application(kw: &Keywarden) -> (String, Secret, Secret) {
    let hasher = &kw.verifier().config().hasher;
    let production = Secret::new("fal_prod_0123456789abcdefghijklmnopqrstuv".to_string());
    let sandbox = Secret::new("fal_sbox_0123456789abcdefghijklmnopqrstuv".to_string());
    let app = Application {
        id: new_id("app"),
        name: "Ledger sync".into(),
        description: String::new(),
        url: None,
        scopes: vec!["invoices:read".into()],
        production: hasher.store(&production, "").unwrap(),
        sandbox: hasher.store(&sandbox, "").unwrap(),
        created_at: kw.verifier().clock().now_ms(),
    };
    kw.verifier().store().create_app(&app, &[]).await.unwrap();
    (app.id, production, sandbox)
}

#[tokio::test]
async fn keys_of_an_application_need_its_secret_of_the_matching_environment() {
    let (catalog, aliases) = app::scopes();
    let kw = Keywarden::builder()
        .database_url("sqlite::memory:")
        .catalog(catalog, aliases)
        .app_secret_header("X-App-Secret")
        .build()
        .await
        .unwrap();
    let account = app::create_account(&kw, "Acme").await.unwrap();
    let router = app::app(&kw).unwrap();
    let (app_id, production, sandbox) = application(&kw).await;
    let issue = |mode: Mode, app_id: Option<String>| {
        let kw = kw.clone();
        let account = account.clone();
        async move {
            let spec = NewKey {
                mode,
                app_id,
                ..key_spec(&["invoices:read"])
            };
            app::issue_key(&kw, &account, spec).await.unwrap()
        }
    };
    let call = |key: &IssuedKey, secret: Option<&Secret>| {
        let mut b = Request::get("/invoices")
            .header("authorization", format!("Bearer {}", key.token.expose()));
        if let Some(s) = secret {
            b = b.header("x-app-secret", s.expose());
        }
        send(&router, b.body(Body::empty()).unwrap())
    };

    let test_key = issue(Mode::Test, Some(app_id.clone())).await;
    let live_key = issue(Mode::Live, Some(app_id.clone())).await;
    // Both headers, environments matching the key's mode.
    assert_eq!(call(&test_key, Some(&sandbox)).await.status, 200);
    assert_eq!(call(&live_key, Some(&production)).await.status, 200);
    // The key alone, the other environment's secret, or a wrong one: refused.
    for (key, secret) in [
        (&test_key, None),
        (&test_key, Some(&production)),
        (&live_key, Some(&sandbox)),
    ] {
        let r = call(key, secret).await;
        r.assert_denied(401, "invalid_app_secret", "authentication_error");
    }
    let wrong = Secret::new("fal_prod_not-the-secret-at-all-0123456789".to_string());
    let r = call(&live_key, Some(&wrong)).await;
    r.assert_denied(401, "invalid_app_secret", "authentication_error");
    assert!(!r.body.to_string().contains(wrong.expose()));
    // A key of no application needs no application secret.
    let own = issue(Mode::Test, None).await;
    assert_eq!(call(&own, None).await.status, 200);
    kw.shutdown().await;
}
