//! Helpers for the admin and self-service API suites: reading answers, asserting error
//! codes, making keys of every kind, and a service with no root key at all.

use super::{spawn_config, TestApp, ROOT};
use keywarden_server::config::Config;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};

/// A parsed answer: status, headers and JSON body (`Null` when the body is empty).
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`Null` for an empty body, a string for a non-JSON one).
    pub body: Value,
}

impl Answer {
    /// Reads a response whole.
    pub async fn of(res: Response) -> Answer {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The envelope's error code (empty when there is none).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The envelope's error message (empty when there is none).
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// Asserts a success status and returns the body.
    #[track_caller]
    pub fn ok(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self.body
    }

    /// Asserts an enveloped error with this status and code; returns the answer.
    #[track_caller]
    pub fn err(self, status: u16, code: &str) -> Answer {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected answer: {}",
            self.body
        );
        self
    }

    /// Asserts a 400 `invalid_request` whose message names `field`.
    #[track_caller]
    pub fn invalid(self, field: &str) -> Answer {
        let a = self.err(400, "invalid_request");
        assert!(
            a.message().contains(field),
            "the message should name {field:?}: {}",
            a.message()
        );
        a
    }
}

/// Checks the `X-Request-Id` header: `req_` and a 26-character ULID.
#[track_caller]
pub fn assert_request_id(headers: &reqwest::header::HeaderMap) -> String {
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("X-Request-Id header")
        .to_string();
    let ulid = id.strip_prefix("req_").expect("req_ prefix");
    assert_eq!(ulid.len(), 26, "{id}");
    assert!(ulid.parse::<ulid::Ulid>().is_ok(), "{id} is not a ULID");
    id
}

/// Starts the service with `toml` and no root key configured at all.
pub async fn spawn_app_without_root(toml: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kw.db");
    let vars = vec![(
        "KEYWARDEN_DATABASE_URL".to_string(),
        format!("sqlite://{}", db.display()),
    )];
    let mut config = Config::from_parts(toml, &vars).expect("test config");
    assert!(config.server.root_keys.is_empty());
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    spawn_config(config, dir).await
}

impl TestApp {
    /// A request to the public listener, to add headers before sending.
    pub fn public_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.public))
    }

    /// A request to the admin listener with the root key, to add headers before sending.
    pub fn admin_request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(ROOT)
    }

    /// An admin call, read whole.
    pub async fn admin_call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        Answer::of(self.admin(method, path, body).await).await
    }

    /// A self-service call with `key` as bearer, read whole.
    pub async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> Answer {
        Answer::of(self.public(method, path, key, body).await).await
    }

    /// `GET /v1/account` with `key`: what a customer sees when using it.
    pub async fn whoami(&self, key: &str) -> Answer {
        self.call(Method::GET, "/v1/account", key, None).await
    }

    /// Asserts that `key` works (`GET /v1/account` answers 200).
    pub async fn assert_key_works(&self, key: &str) {
        let a = self.whoami(key).await;
        assert_eq!(a.status, 200, "the key should work: {}", a.body);
    }

    /// Asserts that `key` is refused with 401 and `code`.
    pub async fn assert_key_refused(&self, key: &str, code: &str) {
        self.whoami(key).await.err(401, code);
    }

    /// Sets an account's status (`active`, `suspended`, ...) through the admin API.
    pub async fn set_account_status(&self, account: &str, status: &str) {
        self.admin_call(
            Method::PATCH,
            &format!("/v1/admin/accounts/{account}"),
            Some(json!({ "status": status })),
        )
        .await
        .ok(200);
    }

    /// Creates an account with an explicit body; returns its id.
    pub async fn account_with(&self, body: Value) -> String {
        let v = self
            .admin_call(Method::POST, "/v1/admin/accounts", Some(body))
            .await
            .ok(201);
        v["id"].as_str().unwrap().to_string()
    }

    /// Creates a key with `body` through the admin API; returns (id, token).
    pub async fn key_pair(&self, account: &str, body: Value) -> (String, String) {
        let v = self.key(account, body).await;
        (
            v["id"].as_str().unwrap().to_string(),
            v["api_key"].as_str().unwrap().to_string(),
        )
    }

    /// A test-mode secret key with default scopes; returns (id, token).
    pub async fn test_key(&self, account: &str) -> (String, String) {
        self.key_pair(account, json!({ "mode": "test", "name": "t" }))
            .await
    }

    /// A live secret key with this role and default scopes; returns (id, token).
    pub async fn role_key(&self, account: &str, role: &str) -> (String, String) {
        self.key_pair(
            account,
            json!({ "mode": "live", "name": role, "role": role }),
        )
        .await
    }

    /// A key's metadata as the operator sees it.
    pub async fn admin_key(&self, id: &str) -> Value {
        self.admin_call(Method::GET, &format!("/v1/admin/keys/{id}"), None)
            .await
            .ok(200)
    }

    /// Writes everything the background writer holds (activity, last use) now.
    pub async fn flush_writer(&self) {
        self.state.verifier.writer().flush_now().await.unwrap();
    }

    /// Audit event types the admin API lists, newest first, for `query` (e.g. `account_id=…`).
    pub async fn event_types(&self, query: &str) -> Vec<String> {
        let v = self
            .admin_call(Method::GET, &format!("/v1/admin/events?{query}"), None)
            .await
            .ok(200);
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    }
}
