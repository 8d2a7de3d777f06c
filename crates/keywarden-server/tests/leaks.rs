//! Leaked keys as the reporters see them: GitHub's signed secret-scanning reports, GitLab's
//! token revocation API, `POST /v1/admin/leaks`, and the policy they all apply.

mod common;

use base64::Engine;
use common::{spawn_app_with, TestApp};
use keywarden_core::hashing::{sha256, sha256_hex};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A fresh P-256 signing key.
fn signing_key() -> SigningKey {
    let seed = sha256(ulid::Ulid::new().to_string().as_bytes());
    SigningKey::from_slice(&seed).expect("a valid scalar")
}

/// Writes GitHub's meta shape with `keys` (identifier, key).
fn write_keys(path: &Path, keys: &[(&str, &SigningKey)]) {
    let list: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(i, (id, k))| {
            json!({
                "key_identifier": id,
                "key": k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                "is_current": i == 0,
            })
        })
        .collect();
    std::fs::write(path, json!({ "public_keys": list }).to_string()).unwrap();
}

fn sign(key: &SigningKey, body: &[u8]) -> String {
    let sig: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

async fn github(app: &TestApp, id: Option<&str>, sig: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = app
        .client
        .post(format!("{}/v1/secret-scanning/github", app.public))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(id) = id {
        req = req.header("Github-Public-Key-Identifier", id);
    }
    if let Some(sig) = sig {
        req = req.header("Github-Public-Key-Signature", sig);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn report(token: &str, url: &str) -> String {
    json!([{ "token": token, "type": "keywarden_api_key", "url": url, "source": "content" }])
        .to_string()
}

/// `token` with its last character changed, so its checksum fails.
fn look_alike(token: &str) -> String {
    let mut s = token.to_string();
    let last = s.pop().unwrap();
    s.push(if last == 'A' { 'B' } else { 'A' });
    s
}

async fn events(app: &TestApp, kind: &str) -> Vec<Value> {
    let res = app
        .admin(Method::GET, &format!("/v1/admin/events?type={kind}"), None)
        .await;
    assert_eq!(res.status(), 200);
    res.json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn verify_code(app: &TestApp, token: &str) -> String {
    app.verify(json!({ "key": token })).await["code"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An app whose GitHub keys file holds `keys`, plus `extra` config.
async fn github_app(dir: &Path, keys: &[(&str, &SigningKey)], extra: &str) -> TestApp {
    let file = dir.join("github_keys.json");
    write_keys(&file, keys);
    spawn_app_with(&format!(
        "[leaks]\ngithub_public_keys_file = {:?}\n{extra}",
        file.display().to_string()
    ))
    .await
}

#[tokio::test]
async fn a_signed_github_report_revokes_the_key_within_a_second_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (current, older) = (signing_key(), signing_key());
    let app = github_app(
        dir.path(),
        &[("k-current", &current), ("k-old", &older)],
        "",
    )
    .await;
    let acc = app.account("Leaky").await;
    let (key_id, token) = app.live_key(&acc).await;
    assert_eq!(verify_code(&app, &token).await, "valid");

    let url = "https://github.com/octo/repo/blob/abc/config.env";
    let fake = look_alike(&token);
    let body = json!([
        { "token": token, "type": "keywarden_api_key", "url": url, "source": "content" },
        { "token": fake, "type": "keywarden_api_key", "url": url, "source": "content" },
        { "token": token, "type": "someone_elses_token", "url": url, "source": "content" },
    ])
    .to_string();
    let (status, answer) = github(
        &app,
        Some("k-current"),
        Some(&sign(&current, body.as_bytes())),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!([
            { "token_hash": sha256_hex(token.as_bytes()), "token_type": "keywarden_api_key", "label": "true_positive" },
            { "token_hash": sha256_hex(fake.as_bytes()), "token_type": "keywarden_api_key", "label": "false_positive" },
            { "token_hash": sha256_hex(token.as_bytes()), "token_type": "someone_elses_token", "label": "false_positive" },
        ])
    );

    // Revoked after the answer, and refused by verify within a second of it.
    let answered = Instant::now();
    loop {
        let code = verify_code(&app, &token).await;
        if code == "api_key_revoked" {
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(1),
            "still {code} a second after the report"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leaked = events(&app, "key.leaked").await;
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    assert_eq!(leaked[0]["account_id"], acc);
    assert_eq!(leaked[0]["data"]["key_id"], key_id);
    assert_eq!(leaked[0]["data"]["source"], url);
    assert_eq!(leaked[0]["data"]["reporter"], "github");
    assert_eq!(leaked[0]["data"]["action"], "revoked");
    let revoked = events(&app, "key.revoked").await;
    assert_eq!(revoked[0]["data"]["reason"], "leaked");
    let k = app
        .admin(Method::GET, &format!("/v1/admin/keys/{key_id}"), None)
        .await;
    assert_eq!(k.json::<Value>().await.unwrap()["revoked_reason"], "leaked");

    // A key signed with the older key is still accepted; the same token again is now a
    // false positive and records nothing more.
    let again = report(&token, url);
    let (status, answer) = github(
        &app,
        Some("k-old"),
        Some(&sign(&older, again.as_bytes())),
        &again,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer[0]["label"], "false_positive");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(events(&app, "key.leaked").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn github_reports_not_signed_by_a_listed_key_over_this_body_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (github_key, other) = (signing_key(), signing_key());
    let app = github_app(dir.path(), &[("k1", &github_key)], "").await;
    let acc = app.account("Safe").await;
    let (_, token) = app.live_key(&acc).await;
    let body = report(&token, "https://github.com/x/y");
    let good = sign(&github_key, body.as_bytes());
    let tampered = report(&token, "https://github.com/x/z");

    for (what, id, sig, body) in [
        (
            "signed by another key",
            Some("k1"),
            Some(sign(&other, body.as_bytes())),
            body.clone(),
        ),
        (
            "body changed after signing",
            Some("k1"),
            Some(good.clone()),
            tampered,
        ),
        (
            "unknown identifier",
            Some("k2"),
            Some(good.clone()),
            body.clone(),
        ),
        ("no signature", Some("k1"), None, body.clone()),
        ("no identifier", None, Some(good.clone()), body.clone()),
        (
            "not base64 DER",
            Some("k1"),
            Some("bm90IGEgc2lnbmF0dXJl".into()),
            body.clone(),
        ),
    ] {
        let (status, answer) = github(&app, id, sig.as_deref(), &body).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_signature", "{what}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(verify_code(&app, &token).await, "valid");
    assert!(events(&app, "key.leaked").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_replaced_github_keys_file_is_used_within_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (signing_key(), signing_key());
    let app = github_app(dir.path(), &[("k1", &first)], "").await;
    let body = "[]";
    let (status, _) = github(
        &app,
        Some("k2"),
        Some(&sign(&second, body.as_bytes())),
        body,
    )
    .await;
    assert_eq!(status, 401);

    write_keys(
        &dir.path().join("github_keys.json"),
        &[("k2", &second), ("k1", &first)],
    );
    let changed = Instant::now();
    loop {
        let (status, answer) = github(
            &app,
            Some("k2"),
            Some(&sign(&second, body.as_bytes())),
            body,
        )
        .await;
        if status == 200 {
            assert_eq!(answer, json!([]));
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "new key not used after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn under_notify_a_leaked_key_keeps_working_and_repeats_record_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let key = signing_key();
    let app = github_app(dir.path(), &[("k1", &key)], "action_live = \"notify\"\n").await;
    let acc = app.account("Notified").await;
    let (key_id, token) = app.live_key(&acc).await;
    let body = report(&token, "https://github.com/a/b");
    for _ in 0..2 {
        let (status, answer) =
            github(&app, Some("k1"), Some(&sign(&key, body.as_bytes())), &body).await;
        assert_eq!(status, 200);
        assert_eq!(answer[0]["label"], "true_positive");
    }
    // The same token by the admin API too: still one event.
    let res = app
        .admin(
            Method::POST,
            "/v1/admin/leaks",
            Some(json!({ "tokens": [token] })),
        )
        .await;
    assert_eq!(res.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(2);
    while events(&app, "key.leaked").await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let leaked = events(&app, "key.leaked").await;
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    assert_eq!(leaked[0]["data"]["action"], "notified");
    assert_eq!(leaked[0]["data"]["key_id"], key_id);
    assert_eq!(verify_code(&app, &token).await, "valid");
    app.stop().await;
}

#[tokio::test]
async fn without_a_keys_file_every_github_report_is_refused() {
    let app = spawn_app_with("").await;
    let (status, answer) = github(&app, Some("k1"), Some("AAAA"), "[]").await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["code"], "invalid_signature");
    app.stop().await;
}

const GITLAB_ENV: &str = "KEYWARDEN_TEST_GITLAB_REVOCATION_TOKEN";
const GITLAB_TOKEN: &str = "gitlab-revocation-token-0123456789";

async fn gitlab_app(extra: &str) -> TestApp {
    // One value for every test of this file, so setting it from several tests is harmless.
    std::env::set_var(GITLAB_ENV, GITLAB_TOKEN);
    spawn_app_with(&format!(
        "[leaks]\ngitlab_token_env = \"{GITLAB_ENV}\"\n{extra}"
    ))
    .await
}

async fn gitlab(
    app: &TestApp,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, format!("{}{path}", app.public));
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn gitlab_lists_the_token_types_and_revokes_tokens_idempotently() {
    let app = gitlab_app("token_types = [\"keywarden_api_key\", \"acme_key\"]\n").await;
    let acc = app.account("Lab").await;
    let (key_id, token) = app.live_key(&acc).await;

    // GitLab sends the bare token; a Bearer works too.
    for auth in [GITLAB_TOKEN.to_string(), format!("Bearer {GITLAB_TOKEN}")] {
        let (status, body) = gitlab(
            &app,
            Method::GET,
            "/v1/revocable_token_types",
            Some(&auth),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({ "types": ["keywarden_api_key", "acme_key"] }));
    }

    let location = "https://gitlab.example.com/group/project/-/blob/abc/app.env";
    let revocation = json!([
        { "type": "acme_key", "token": token, "location": location },
        { "type": "acme_key", "token": look_alike(&token), "location": location },
    ]);
    for _ in 0..2 {
        let (status, body) = gitlab(
            &app,
            Method::POST,
            "/v1/revoke_tokens",
            Some(GITLAB_TOKEN),
            Some(revocation.clone()),
        )
        .await;
        assert_eq!(status, 204, "{body}");
    }
    assert_eq!(verify_code(&app, &token).await, "api_key_revoked");
    let leaked = events(&app, "key.leaked").await;
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    assert_eq!(leaked[0]["data"]["key_id"], key_id);
    assert_eq!(leaked[0]["data"]["source"], location);
    assert_eq!(leaked[0]["data"]["reporter"], "gitlab");
    app.stop().await;
}

#[tokio::test]
async fn gitlab_calls_without_the_token_are_refused_and_change_nothing() {
    let app = gitlab_app("").await;
    let acc = app.account("Lab").await;
    let (_, token) = app.live_key(&acc).await;
    let revocation = json!([{ "type": "keywarden_api_key", "token": token, "location": "x" }]);
    for auth in [
        None,
        Some("wrong-token"),
        Some("Bearer wrong-token"),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        for (method, path, body) in [
            (Method::GET, "/v1/revocable_token_types", None),
            (Method::POST, "/v1/revoke_tokens", Some(revocation.clone())),
        ] {
            let (status, answer) = gitlab(&app, method, path, auth, body).await;
            assert_eq!(status, 401, "{path} with {auth:?}: {answer}");
            assert_eq!(answer["error"]["code"], "invalid_revocation_token");
        }
    }
    assert_eq!(verify_code(&app, &token).await, "valid");

    // Wrong tokens count toward the per-IP lockout like wrong keys.
    for _ in 0..20 {
        gitlab(
            &app,
            Method::GET,
            "/v1/revocable_token_types",
            Some("wrong"),
            None,
        )
        .await;
    }
    let (status, answer) = gitlab(
        &app,
        Method::GET,
        "/v1/revocable_token_types",
        Some(GITLAB_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(answer["error"]["code"], "too_many_auth_failures");
    app.stop().await;
}

#[tokio::test]
async fn gitlab_calls_are_rate_limited_per_client() {
    let app = gitlab_app("").await;
    let mut limited = None;
    for i in 0..70 {
        let (status, _) = gitlab(
            &app,
            Method::GET,
            "/v1/revocable_token_types",
            Some(GITLAB_TOKEN),
            None,
        )
        .await;
        if status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(status, 200);
    }
    assert_eq!(limited, Some(60));
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_answers_each_token_in_order_and_refuses_bad_input() {
    let app = spawn_app_with("").await;
    let acc = app.account("Admin").await;
    let (key_id, token) = app.live_key(&acc).await;
    let k: Value = app
        .admin(Method::GET, &format!("/v1/admin/keys/{key_id}"), None)
        .await
        .json()
        .await
        .unwrap();
    let fake = look_alike(&token);
    let res = app
        .admin(
            Method::POST,
            "/v1/admin/leaks",
            Some(json!({ "tokens": [fake, token, "not a key"], "source": "pastebin" })),
        )
        .await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer,
        json!([
            { "token_hash": format!("sha256_{}", sha256_hex(fake.as_bytes())), "label": "false_positive" },
            { "token_hash": k["key_hash"], "label": "true_positive" },
            { "token_hash": format!("sha256_{}", sha256_hex(b"not a key")), "label": "false_positive" },
        ])
    );
    assert_eq!(verify_code(&app, &token).await, "api_key_revoked");
    let leaked = events(&app, "key.leaked").await;
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0]["data"]["source"], "pastebin");
    assert_eq!(leaked[0]["actor"], "root");
    // The body never echoes a secret.
    assert!(!answer.to_string().contains(&token));

    for (body, field) in [
        (json!({ "tokens": [] }), "tokens"),
        (json!({ "tokens": ["x"], "extra": 1 }), "extra"),
        (json!({ "tokens": "x" }), "tokens"),
        (
            json!({ "tokens": ["x"], "source": "s".repeat(3000) }),
            "source",
        ),
    ] {
        let res = app.admin(Method::POST, "/v1/admin/leaks", Some(body)).await;
        assert_eq!(res.status(), 400);
        let v: Value = res.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    app.stop().await;
}
