//! `spawn_app()`: the real service on port 0 with a fresh SQLite database, a root key and
//! a movable clock, plus helpers that speak its HTTP API.
#![allow(dead_code)]

pub mod api;
pub mod pg;
pub mod upstream;
#[allow(unused_imports)]
pub use api::Answer;

use keywarden_core::ManualClock;
use keywarden_server::app::Service;
use keywarden_server::config::Config;
use reqwest::{Client, Method, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::net::TcpListener;

/// The root key every test app is configured with.
pub const ROOT: &str = "root_test_key_0123456789abcdef";

/// A running service.
pub struct TestApp {
    /// `http://127.0.0.1:PORT` of the public listener.
    pub public: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    /// The HTTP client.
    pub client: Client,
    /// The service's clock.
    pub clock: ManualClock,
    /// The shared state (for white-box checks).
    pub state: keywarden_server::state::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A start time for the clock: 2026-03-20T10:00:00Z.
pub const T0: i64 = 1_774_000_800_000;

/// Starts the service with the default config.
pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Starts the service with extra TOML laid over the test defaults.
pub async fn spawn_app_with(toml: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kw.db");
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
        (
            "KEYWARDEN_DATABASE_URL".to_string(),
            format!("sqlite://{}", db.display()),
        ),
    ];
    let mut config = Config::from_parts(toml, &vars).expect("test config");
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    spawn_config(config, dir).await
}

/// Starts the service with a complete config.
pub async fn spawn_config(config: Config, dir: tempfile::TempDir) -> TestApp {
    let clock = ManualClock::new(T0);
    let service = Service::build(config, Arc::new(clock.clone()))
        .await
        .expect("service builds");
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_url = format!("http://{}", public.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let state = service.state.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        service
            .run(public, admin, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestApp {
        public: public_url,
        admin: admin_url,
        client: Client::new(),
        clock,
        state,
        stop: Some(tx),
        task: Some(task),
        _dir: dir,
    }
}

impl TestApp {
    /// Stops the service gracefully and waits for it (the writer flushes).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// An admin call with the root key.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(ROOT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// A self-service call with `key` as bearer.
    pub async fn public(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.public))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// Creates an account (active unless `status` says otherwise) and returns its id.
    pub async fn account(&self, name: &str) -> String {
        let res = self
            .admin(
                Method::POST,
                "/v1/admin/accounts",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(res.status(), 201, "create account");
        res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a key with `body` for the account; returns the full response (with `api_key`).
    pub async fn key(&self, account: &str, body: Value) -> Value {
        let res = self
            .admin(
                Method::POST,
                &format!("/v1/admin/accounts/{account}/keys"),
                Some(body),
            )
            .await;
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "create key: {v}");
        v
    }

    /// A live secret key with default scopes; returns (key id, token).
    pub async fn live_key(&self, account: &str) -> (String, String) {
        let v = self
            .key(account, json!({ "mode": "live", "name": "k" }))
            .await;
        (
            v["id"].as_str().unwrap().to_string(),
            v["api_key"].as_str().unwrap().to_string(),
        )
    }

    /// `POST /v1/verify` with the root key.
    pub async fn verify(&self, body: Value) -> Value {
        let res = self.admin(Method::POST, "/v1/verify", Some(body)).await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }
}
