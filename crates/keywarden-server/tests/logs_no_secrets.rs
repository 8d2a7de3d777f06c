//! No secret reaches a log line, even at DEBUG: a whole session of account and key work is
//! run with every log line captured in memory, then searched for the root key, the pepper
//! and every API key the service handed out. This binary holds a single test because it
//! installs the process-wide log subscriber.

mod common;

use common::api::Answer;
use common::{spawn_app_with, TestApp, ROOT};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Every log byte written, shared with the subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

fn install_subscriber() -> Captured {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    captured
}

/// Records every response's request id and status, and every secret seen in a body.
#[derive(Default)]
struct Session {
    requests: Vec<(String, u16)>,
    secrets: Vec<String>,
}

impl Session {
    async fn take(&mut self, res: Response) -> Answer {
        let id = res
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("every response has X-Request-Id")
            .to_string();
        let status = res.status().as_u16();
        self.requests.push((id, status));
        let a = Answer::of(res).await;
        if let Some(k) = a.body["api_key"].as_str() {
            self.secrets.push(k.to_string());
        }
        a
    }

    async fn admin(&mut self, app: &TestApp, m: Method, path: &str, body: Option<Value>) -> Answer {
        let res = app.admin(m, path, body).await;
        self.take(res).await
    }

    async fn public(
        &mut self,
        app: &TestApp,
        m: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Answer {
        let res = app.public(m, path, key, body).await;
        self.take(res).await
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let logs = install_subscriber();
    let app = spawn_app_with(
        r#"
[auth]
sources = ["bearer", "header:X-API-Key", "query:api_key"]
[scopes]
catalog = [ { name = "invoices:read", description = "Read invoices" } ]
[plans.tiers.default]
requests_per_minute = 600
quotas = [ { unit = "words", limit = 1000, period = "month" } ]
"#,
    )
    .await;
    let db = app.state.settings.config.store.database_url.clone();
    let pepper_file = keywarden_store::pepper::pepper_path_for(&db).expect("a SQLite file");
    let pepper = std::fs::read_to_string(&pepper_file)
        .expect("the pepper file beside the database")
        .trim()
        .to_string();
    assert!(pepper.len() >= 32, "a real pepper");

    let mut s = Session::default();
    // Accounts and keys through the admin API.
    let acc = s
        .admin(
            &app,
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({ "name": "Acme" })),
        )
        .await;
    assert_eq!(acc.status, 201);
    let acc = acc.body["id"].as_str().unwrap().to_string();
    let keys = format!("/v1/admin/accounts/{acc}/keys");
    let live = s
        .admin(
            &app,
            Method::POST,
            &keys,
            Some(json!({ "mode": "live", "name": "main" })),
        )
        .await;
    assert_eq!(live.status, 201);
    let live_id = live.body["id"].as_str().unwrap().to_string();
    let test = s
        .admin(
            &app,
            Method::POST,
            &keys,
            Some(json!({ "mode": "test", "name": "sandbox", "scopes": ["invoices:read"] })),
        )
        .await;
    assert_eq!(test.status, 201);
    let test_key = test.body["api_key"].as_str().unwrap().to_string();
    let rotated = s
        .admin(
            &app,
            Method::POST,
            &format!("/v1/admin/keys/{live_id}/rotate"),
            Some(json!({ "grace_period_seconds": 60 })),
        )
        .await;
    assert_eq!(rotated.status, 200);
    let live_key = rotated.body["api_key"].as_str().unwrap().to_string();
    let old_live = live.body["api_key"].as_str().unwrap().to_string();

    // Verification in every form, good and bad.
    for body in [
        json!({ "key": live_key, "cost": { "words": 5 } }),
        json!({ "key": old_live }),
        json!({ "headers": { "Authorization": format!("Bearer {test_key}") } }),
        json!({ "headers": { "X-API-Key": live_key }, "ip": "203.0.113.9" }),
        json!({ "key": format!("{live_key}x") }),
        json!({ "key": &live_key[..live_key.len() - 1] }),
        json!({ "key": test_key, "scopes": ["invoices:read"], "mode": "live" }),
    ] {
        let a = s.admin(&app, Method::POST, "/v1/verify", Some(body)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // A malformed body that holds a key is refused without echoing it into the logs.
    let a = s
        .admin(
            &app,
            Method::POST,
            "/v1/verify",
            Some(json!({ "key": live_key, "unknown": live_key })),
        )
        .await;
    assert_eq!(a.status, 400);
    let res = app
        .client
        .get(format!("{}/v1/forward-auth", app.admin))
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", format!("/v1/invoices?api_key={live_key}"))
        .header("Authorization", format!("Bearer {live_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(s.take(res).await.status, 200);
    // Wrong credentials on the admin API.
    let res = app
        .client
        .get(format!("{}/v1/admin/accounts", app.admin))
        .bearer_auth(&live_key)
        .send()
        .await
        .unwrap();
    assert_eq!(s.take(res).await.status, 401);

    // Self-service with the account's own key, by header and by query.
    let me = s
        .public(&app, Method::GET, "/v1/account", &live_key, None)
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    let res = app
        .client
        .get(format!(
            "{}/v1/account/usage?api_key={live_key}",
            app.public
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(s.take(res).await.status, 200);
    let made = s
        .public(
            &app,
            Method::POST,
            "/v1/api-keys",
            &live_key,
            Some(json!({ "name": "ci" })),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let made_id = made.body["id"].as_str().unwrap().to_string();
    let made_key = made.body["api_key"].as_str().unwrap().to_string();
    let a = s
        .public(&app, Method::GET, "/v1/api-keys", &made_key, None)
        .await;
    assert_eq!(a.status, 200);
    let a = s
        .public(
            &app,
            Method::POST,
            &format!("/v1/api-keys/{made_id}/rotate"),
            &live_key,
            Some(json!({ "grace_period_seconds": 0 })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = s
        .public(
            &app,
            Method::DELETE,
            &format!("/v1/api-keys/{made_id}"),
            &live_key,
            None,
        )
        .await;
    assert_eq!(a.status, 204);
    let a = s
        .public(&app, Method::GET, "/v1/events", &live_key, None)
        .await;
    assert_eq!(a.status, 200);
    let a = s
        .public(&app, Method::GET, "/v1/account", &made_key, None)
        .await;
    assert_eq!(a.status, 401);

    // Revoke, then erase everything.
    let a = s
        .admin(
            &app,
            Method::POST,
            &format!("/v1/admin/keys/{live_id}/revoke"),
            Some(json!({ "reason": "done" })),
        )
        .await;
    assert_eq!(a.status, 200);
    let owner = s
        .admin(
            &app,
            Method::POST,
            &keys,
            Some(json!({ "mode": "live", "name": "owner" })),
        )
        .await;
    let owner_key = owner.body["api_key"].as_str().unwrap().to_string();
    let a = s
        .public(&app, Method::DELETE, "/v1/account/data", &owner_key, None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = s
        .admin(
            &app,
            Method::POST,
            "/v1/verify",
            Some(json!({ "key": owner_key })),
        )
        .await;
    assert_eq!(a.body["code"], "invalid_api_key");

    app.stop().await;

    let text = logs.text();
    assert!(
        text.lines().count() >= s.requests.len(),
        "logs were captured:\n{text}"
    );
    assert!(text.contains(" DEBUG "), "DEBUG lines are captured too");
    assert!(s.secrets.len() >= 6, "every api_key was collected");
    let mut secrets: Vec<(String, String)> = vec![
        ("the root key".into(), ROOT.into()),
        ("the pepper".into(), pepper.clone()),
    ];
    for k in &s.secrets {
        secrets.push((format!("api key {}…", &k[..12]), k.clone()));
        // The part after the displayable start must not leak either.
        secrets.push((
            format!("the secret part of {}…", &k[..12]),
            k[16..].to_string(),
        ));
    }
    for (what, secret) in &secrets {
        if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
            panic!("{what} leaked into the logs:\n{line}");
        }
    }

    // One line per request, with its id and status.
    for (id, status) in &s.requests {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("request_id={id}")) && l.contains("status="))
            .collect();
        assert_eq!(lines.len(), 1, "one request line for {id}:\n{text}");
        assert!(
            lines[0].contains(&format!("status={status}")),
            "{}",
            lines[0]
        );
    }
}
