//! The NUL character (U+0000) in any text a request carries — a JSON string or object key,
//! a path id, a query parameter — is refused with 400 naming the field, and nothing is
//! created or changed, on SQLite and on PostgreSQL (which cannot store it in text) alike.
//! The PostgreSQL run needs `KEYWARDEN_TEST_DATABASE_URL`.

mod common;

use common::api::Answer;
use common::pg::spawn_pg_app;
use common::{spawn_app, TestApp, ROOT};
use reqwest::Method;
use serde_json::{json, Value};

/// A raw call, so bodies and paths are sent exactly as written.
async fn raw(
    app: &TestApp,
    admin: bool,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> Answer {
    let base = if admin { &app.admin } else { &app.public };
    let mut req = app
        .client
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    Answer::of(req.send().await.unwrap()).await
}

/// Asserts a 400 naming `field` as holding NUL.
#[track_caller]
fn refused(a: Answer, field: &str) {
    let a = a.invalid(field);
    assert!(
        a.message().starts_with(&format!("{field}: ")) && a.message().contains("U+0000"),
        "the message should name {field:?} and NUL: {}",
        a.message()
    );
}

async fn count(app: &TestApp, path: &str) -> usize {
    let a = raw(app, true, Method::GET, path, ROOT, None).await;
    a.ok(200).as_array().unwrap().len()
}

async fn refuses_nul_everywhere(app: &TestApp) {
    let acc = app.account("Acme").await;
    let (key_id, token) = app.live_key(&acc).await;
    let accounts = count(app, "/v1/admin/accounts?limit=100").await;
    let keys = count(app, &format!("/v1/admin/accounts/{acc}/keys?limit=100")).await;
    let events = count(app, "/v1/admin/events?limit=100").await;

    // An account name, on its own and beside valid fields.
    let a = raw(
        app,
        true,
        Method::POST,
        "/v1/admin/accounts",
        ROOT,
        Some(r#"{"name":"Ac\u0000me"}"#),
    )
    .await;
    refused(a, "name");
    // A metadata string, however deep, and a metadata key.
    let a = raw(
        app,
        true,
        Method::POST,
        "/v1/admin/accounts",
        ROOT,
        Some(r#"{"name":"Acme","metadata":{"tags":["ok","bad\u0000"]}}"#),
    )
    .await;
    refused(a, "metadata.tags[1]");
    let a = raw(
        app,
        true,
        Method::POST,
        "/v1/admin/accounts",
        ROOT,
        Some(r#"{"name":"Acme","metadata":{"k\u0000":1}}"#),
    )
    .await;
    refused(a, "metadata");
    // A key name, through the admin API and the self-service API.
    let a = raw(
        app,
        true,
        Method::POST,
        &format!("/v1/admin/accounts/{acc}/keys"),
        ROOT,
        Some(r#"{"mode":"live","name":"\u0000"}"#),
    )
    .await;
    refused(a, "name");
    let a = raw(
        app,
        false,
        Method::POST,
        "/v1/api-keys",
        &token,
        Some(r#"{"name":"a\u0000"}"#),
    )
    .await;
    refused(a, "name");
    // A change to an existing key and account.
    let a = raw(
        app,
        true,
        Method::PATCH,
        &format!("/v1/admin/keys/{key_id}"),
        ROOT,
        Some(r#"{"description":"x\u0000"}"#),
    )
    .await;
    refused(a, "description");
    let a = raw(
        app,
        false,
        Method::PATCH,
        "/v1/account",
        &token,
        Some(r#"{"account_name":"\u0000"}"#),
    )
    .await;
    refused(a, "account_name");
    // Verify's fields.
    let a = raw(
        app,
        true,
        Method::POST,
        "/v1/verify",
        ROOT,
        Some(r#"{"key":"kw\u0000"}"#),
    )
    .await;
    refused(a, "key");
    // Path ids, on both listeners.
    let a = raw(
        app,
        true,
        Method::GET,
        "/v1/admin/accounts/acc_%00",
        ROOT,
        None,
    )
    .await;
    refused(a, "id");
    let a = raw(
        app,
        true,
        Method::PATCH,
        "/v1/admin/keys/%00",
        ROOT,
        Some(r#"{"name":"n"}"#),
    )
    .await;
    refused(a, "id");
    let a = raw(
        app,
        false,
        Method::GET,
        "/v1/api-keys/key_%00",
        &token,
        None,
    )
    .await;
    refused(a, "id");
    // Query parameters.
    let a = raw(
        app,
        true,
        Method::GET,
        "/v1/admin/accounts?starting_after=%00",
        ROOT,
        None,
    )
    .await;
    refused(a, "starting_after");
    let a = raw(
        app,
        true,
        Method::GET,
        "/v1/admin/events?type=key.%00",
        ROOT,
        None,
    )
    .await;
    refused(a, "type");
    let a = raw(
        app,
        false,
        Method::GET,
        "/v1/api-keys?starting_after=x%00",
        &token,
        None,
    )
    .await;
    refused(a, "starting_after");

    // An escaped backslash before `u0000` is no NUL.
    let a = raw(
        app,
        true,
        Method::POST,
        "/v1/admin/accounts",
        ROOT,
        Some(r#"{"name":"C:\\u0000"}"#),
    )
    .await;
    assert_eq!(a.ok(201)["name"], json!("C:\\u0000"));

    // Nothing else was made or changed.
    assert_eq!(
        count(app, "/v1/admin/accounts?limit=100").await,
        accounts + 1
    );
    assert_eq!(
        count(app, &format!("/v1/admin/accounts/{acc}/keys?limit=100")).await,
        keys
    );
    let k: Value = raw(
        app,
        true,
        Method::GET,
        &format!("/v1/admin/keys/{key_id}"),
        ROOT,
        None,
    )
    .await
    .ok(200);
    assert_eq!(k["description"], json!(""));
    let a: Value = raw(
        app,
        true,
        Method::GET,
        &format!("/v1/admin/accounts/{acc}"),
        ROOT,
        None,
    )
    .await
    .ok(200);
    assert_eq!(a["name"], json!("Acme"));
    // The one account created above made its one event.
    assert_eq!(count(app, "/v1/admin/events?limit=100").await, events + 1);
}

#[tokio::test]
async fn nul_is_refused_naming_the_field_on_sqlite() {
    let app = spawn_app().await;
    refuses_nul_everywhere(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn nul_is_refused_naming_the_field_on_postgres() {
    let Some(pg) = spawn_pg_app().await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    refuses_nul_everywhere(&pg.app).await;
    pg.stop().await;
}

/// A path id that is not UTF-8 once percent-decoded is refused in the configured error
/// format, like every other bad input (not axum's plain-text rejection).
#[tokio::test]
async fn a_path_id_that_is_not_utf8_is_refused_in_the_error_format() {
    let app = spawn_app().await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    for (admin, path, key) in [
        (true, "/v1/admin/accounts/%FF", ROOT),
        (false, "/v1/api-keys/%C3%28", token.as_str()),
    ] {
        let a = raw(&app, admin, Method::GET, path, key, None).await;
        assert_eq!(
            a.header("content-type"),
            Some("application/json"),
            "{path}: {:?}",
            a.body
        );
        a.invalid("id");
    }
    app.stop().await;
}
