//! The `falara` profile against Falara's "Authentication & Account" reference, as a client
//! sees it on the wire: `fal_` keys in `X-API-Key` only and their `sha256_` hashes, the
//! `{"detail": …}` errors, timestamps with a `+00:00` offset, the key management and account
//! endpoints with the reference's own example bodies, the plans' key limits and word quotas,
//! 50 requests a minute per key with `Retry-After`, a plan change effective at once, and the
//! erasure of the account's data. Through the gateway (an echo upstream) and the
//! self-service API, on the real binary.

#![cfg(unix)]

mod profile_support;

use keywarden_core::hashing::fingerprint;
use profile_support::{start_profile, Reply, Running};
use serde_json::{json, Value};

fn start(env: &[(&str, &str)]) -> Running {
    start_profile("falara", env)
}

async fn account(r: &Running, name: &str, plan: &str) -> String {
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/accounts",
            Some(json!({ "name": name, "plan": plan })),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_string()
}

/// A live key made by the operator with `role`; returns its token.
async fn admin_key(r: &Running, acc: &str, role: &str) -> String {
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": role, "role": role })),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["api_key"].as_str().unwrap().to_string()
}

async fn call(r: &Running, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
    r.public_call(method, path, &[("x-api-key", key)], body)
        .await
}

/// Asserts `{"detail": "…"}` and nothing else, with this status.
#[track_caller]
fn assert_detail(a: &Reply, status: u16) {
    assert_eq!(a.status, status, "{}", a.body);
    let obj = a.body.as_object().unwrap_or_else(|| panic!("{}", a.body));
    assert_eq!(obj.len(), 1, "{}", a.body);
    assert!(!obj["detail"].as_str().unwrap().is_empty(), "{}", a.body);
}

/// Asserts that `v` is an object with exactly these fields.
#[track_caller]
fn assert_fields(v: &Value, fields: &[&str]) {
    let obj = v.as_object().unwrap_or_else(|| panic!("{v}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = fields.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "{v}");
}

/// The fields of the reference's account bodies (GET and PATCH /v1/account).
const ACCOUNT_FIELDS: [&str; 4] = ["account_id", "account_name", "plan", "role"];

#[track_caller]
fn assert_key_shape(key: &str) {
    let rest = key.strip_prefix("fal_").unwrap_or_else(|| panic!("{key}"));
    assert!(rest.len() >= 24, "{key}");
    assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
}

/// `2026-03-20T10:00:00+00:00`: whole seconds and a `+00:00` offset.
#[track_caller]
fn assert_timestamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("{v}"));
    let b = s.as_bytes();
    assert_eq!(s.len(), 25, "{s}");
    assert!(s.ends_with("+00:00"), "{s}");
    for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        assert_eq!(b[i], c, "{s}");
    }
}

/// The current month's first and last day as (`YYYY-MM-01`, `YYYY-MM-DD`), UTC.
fn this_month() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let last = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (
        format!("{y:04}-{m:02}-01"),
        format!("{y:04}-{m:02}-{last:02}"),
    )
}

#[tokio::test]
async fn keys_account_usage_and_erasure_as_the_reference_shows_them() {
    let r = start(&[]);
    let acc = account(&r, "Eurotext GmbH", "professional").await;
    let owner = admin_key(&r, &acc, "owner").await;
    assert_key_shape(&owner);

    // X-API-Key only: a Bearer header is no key here; missing and invalid keys are 401.
    let a = r
        .public_call(
            "GET",
            "/v1/account",
            &[("authorization", &format!("Bearer {owner}"))],
            None,
        )
        .await;
    assert_detail(&a, 401);
    assert_detail(&r.public_call("GET", "/v1/account", &[], None).await, 401);
    assert_detail(
        &call(
            &r,
            "GET",
            "/v1/account",
            "fal_xxxxxxxxxxxxxxxxxxxxxxxx",
            None,
        )
        .await,
        401,
    );
    let a = r.public_call("GET", "/v1/translate", &[], None).await;
    assert_detail(&a, 401);

    // GET /v1/account: the reference's four fields, and no others.
    let a = call(&r, "GET", "/v1/account", &owner, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_fields(&a.body, &ACCOUNT_FIELDS);
    assert_eq!(a.body["account_id"], acc.as_str());
    assert_eq!(a.body["account_name"], "Eurotext GmbH");
    assert_eq!(a.body["plan"], "professional");
    assert_eq!(a.body["role"], "owner");

    // POST /v1/api-keys: 201 with the key once, its hash, name and creation time.
    let a = call(
        &r,
        "POST",
        "/v1/api-keys",
        &owner,
        Some(json!({ "name": "Production Backend" })),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_fields(&a.body, &["api_key", "key_hash", "name", "created_at"]);
    let backend = a.body["api_key"].as_str().unwrap().to_string();
    assert_key_shape(&backend);
    let backend_hash = a.body["key_hash"].as_str().unwrap().to_string();
    assert_eq!(backend_hash, fingerprint(&backend));
    assert!(backend_hash.starts_with("sha256_"));
    assert_eq!(backend_hash.len(), 7 + 64);
    assert_eq!(a.body["name"], "Production Backend");
    assert_timestamp(&a.body["created_at"]);

    // Stored as a plain SHA-256 digest, never as the key.
    let db = format!("sqlite://{}", r.dir.join("keywarden.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT scheme, hash, key_hash FROM api_keys")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(rows.len(), 2);
    for (scheme, hash, _) in &rows {
        assert_eq!(scheme, "sha256");
        assert!(!hash.contains("fal_"), "{hash}");
    }
    assert!(rows.iter().any(|(_, _, kh)| *kh == backend_hash));

    // The new key works through the gateway, which does not pass it on.
    let a = call(
        &r,
        "POST",
        "/v1/translate",
        &backend,
        Some(json!({ "text": "Hallo" })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["path"], "/v1/translate");
    assert!(a.body["headers"].get("x-api-key").is_none(), "{}", a.body);

    // A name over 100 characters is refused; the limit of the plan counts keys (3).
    let a = call(
        &r,
        "POST",
        "/v1/api-keys",
        &owner,
        Some(json!({ "name": "x".repeat(101) })),
    )
    .await;
    assert_detail(&a, 400);
    let a = call(
        &r,
        "POST",
        "/v1/api-keys",
        &owner,
        Some(json!({ "name": "Staging" })),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let staging = a.body["api_key"].as_str().unwrap().to_string();
    let staging_hash = a.body["key_hash"].as_str().unwrap().to_string();
    let a = call(
        &r,
        "POST",
        "/v1/api-keys",
        &owner,
        Some(json!({ "name": "Fourth" })),
    )
    .await;
    assert_detail(&a, 403);

    // GET /v1/api-keys: hash and metadata, never the key.
    let a = call(&r, "GET", "/v1/api-keys", &owner, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let list = a.body.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for k in list {
        assert_fields(k, &["key_hash", "name", "created_at"]);
        assert!(k["key_hash"].as_str().unwrap().starts_with("sha256_"));
        assert!(k["name"].is_string());
        assert_timestamp(&k["created_at"]);
        assert!(k.get("api_key").is_none());
    }
    let text = a.body.to_string();
    for secret in [&owner, &backend, &staging] {
        assert!(!text.contains(secret.as_str()));
    }
    assert!(list
        .iter()
        .any(|k| k["name"] == "Staging" && k["key_hash"] == staging_hash.as_str()));
    // One key, by its hash, reads the same.
    let a = call(
        &r,
        "GET",
        &format!("/v1/api-keys/{staging_hash}"),
        &owner,
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_fields(&a.body, &["key_hash", "name", "created_at"]);
    assert_eq!(a.body["name"], "Staging");

    // DELETE /v1/api-keys/{key_hash}: 204, the key stops working at once; unknown is 404.
    let a = call(
        &r,
        "DELETE",
        &format!("/v1/api-keys/{staging_hash}"),
        &owner,
        None,
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.body);
    assert_detail(&call(&r, "GET", "/v1/translate", &staging, None).await, 401);
    let a = call(
        &r,
        "DELETE",
        &format!("/v1/api-keys/sha256_{}", "0".repeat(64)),
        &owner,
        None,
    )
    .await;
    assert_detail(&a, 404);

    // PATCH /v1/account: the owner renames; the answer has the same four fields as GET.
    let a = call(
        &r,
        "PATCH",
        "/v1/account",
        &owner,
        Some(json!({ "account_name": "Eurotext International" })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_fields(&a.body, &ACCOUNT_FIELDS);
    assert_eq!(a.body["account_id"], acc.as_str());
    assert_eq!(a.body["account_name"], "Eurotext International");
    assert_eq!(a.body["plan"], "professional");
    assert_eq!(a.body["role"], "owner");
    for bad in [
        json!({ "account_name": "" }),
        json!({ "account_name": "y".repeat(101) }),
    ] {
        assert_detail(
            &call(&r, "PATCH", "/v1/account", &owner, Some(bad)).await,
            400,
        );
    }

    // GET /v1/account/usage: the month's words, period_end = the last second.
    let a = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/usage"),
            Some(json!({ "unit": "words", "amount": 42500 })),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(&r, "GET", "/v1/account/usage", &owner, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let (first, last) = this_month();
    assert_eq!(a.body["plan"], "professional");
    assert_eq!(a.body["period_start"], format!("{first}T00:00:00+00:00"));
    assert_eq!(a.body["period_end"], format!("{last}T23:59:59+00:00"));
    assert_eq!(a.body["words_used"], 42500);
    assert_eq!(a.body["words_limit"], 100000);
    assert_eq!(a.body["words_remaining"], 57500);

    // A used-up quota is lifted by a plan change at once.
    r.admin_call(
        "POST",
        &format!("/v1/admin/accounts/{acc}/usage"),
        Some(json!({ "unit": "words", "amount": 57500 })),
    )
    .await;
    let verify = |cost: u64| {
        r.admin_call(
            "POST",
            "/v1/verify",
            Some(json!({ "key": backend, "cost": { "words": cost } })),
        )
    };
    let v = verify(1).await;
    assert_eq!(
        (v.body["valid"].clone(), v.body["status"].clone()),
        (json!(false), json!(429)),
        "{}",
        v.body
    );
    let a = call(
        &r,
        "PATCH",
        "/v1/account/plan",
        &owner,
        Some(json!({ "plan": "business" })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_fields(&a.body, &ACCOUNT_FIELDS);
    assert_eq!(a.body["plan"], "business");
    assert_eq!(verify(1).await.body["valid"], true);
    let a = call(&r, "GET", "/v1/account/usage", &owner, None).await;
    assert_eq!(a.body["plan"], "business");
    assert_eq!(a.body["words_limit"], 500000);
    assert_eq!(a.body["words_remaining"], 500000 - 100001);

    // DELETE /v1/account/data: 200 with deleted_api_key; the keys are revoked at once.
    let a = call(&r, "DELETE", "/v1/account/data", &owner, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["deleted_api_key"], 3, "{}", a.body);
    for k in [&owner, &backend] {
        assert_detail(&call(&r, "GET", "/v1/account", k, None).await, 401);
    }
}

#[tokio::test]
async fn plans_limit_keys_and_roles_limit_what_a_key_may_do() {
    let r = start(&[]);
    // A new account starts on the free plan: no API keys.
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/accounts",
            Some(json!({ "name": "Solo" })),
        )
        .await;
    assert_eq!((a.status, &a.body["plan"]), (201, &json!("free")));

    // starter: 3 keys.
    let acc = account(&r, "Start", "starter").await;
    let owner = admin_key(&r, &acc, "owner").await;
    for name in ["a", "b"] {
        let a = call(
            &r,
            "POST",
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": name })),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    assert_detail(
        &call(
            &r,
            "POST",
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "c" })),
        )
        .await,
        403,
    );
    // free: none at all.
    let a = call(
        &r,
        "PATCH",
        "/v1/account/plan",
        &owner,
        Some(json!({ "plan": "free" })),
    )
    .await;
    assert_eq!((a.status, &a.body["plan"]), (200, &json!("free")));
    assert_detail(
        &call(
            &r,
            "POST",
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "c" })),
        )
        .await,
        403,
    );
    let a = call(&r, "GET", "/v1/account/usage", &owner, None).await;
    assert_eq!(a.body["words_limit"], 10000);
    // business: 10 keys.
    call(
        &r,
        "PATCH",
        "/v1/account/plan",
        &owner,
        Some(json!({ "plan": "business" })),
    )
    .await;
    for i in 3..10 {
        let a = call(
            &r,
            "POST",
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": format!("k{i}") })),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    assert_detail(
        &call(
            &r,
            "POST",
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": "k10" })),
        )
        .await,
        403,
    );
    // enterprise: unlimited keys and words.
    call(
        &r,
        "PATCH",
        "/v1/account/plan",
        &owner,
        Some(json!({ "plan": "enterprise" })),
    )
    .await;
    for i in 10..12 {
        let a = call(
            &r,
            "POST",
            "/v1/api-keys",
            &owner,
            Some(json!({ "name": format!("k{i}") })),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = call(&r, "GET", "/v1/account/usage", &owner, None).await;
    assert_eq!((a.status, &a.body["plan"]), (200, &json!("enterprise")));
    assert!(a.body.get("words_limit").is_none(), "{}", a.body);

    // A member reads the account but may not rename it, change its plan or manage keys.
    let member = admin_key(&r, &acc, "member").await;
    let a = call(&r, "GET", "/v1/account", &member, None).await;
    assert_eq!((a.status, &a.body["role"]), (200, &json!("member")));
    for (method, path, body) in [
        (
            "PATCH",
            "/v1/account",
            Some(json!({ "account_name": "Mine" })),
        ),
        ("PATCH", "/v1/account/plan", Some(json!({ "plan": "free" }))),
        ("POST", "/v1/api-keys", Some(json!({ "name": "m" }))),
        ("DELETE", "/v1/account/data", None),
    ] {
        assert_detail(&call(&r, method, path, &member, body).await, 403);
    }
    assert_eq!(
        call(&r, "GET", "/v1/account", &owner, None).await.body["account_name"],
        "Start"
    );
}

#[tokio::test]
async fn fifty_requests_a_minute_then_429_with_retry_after_and_an_upgrade_lifts_it() {
    // Every plan of the profile allows 50 a minute; to show that a plan change lifts a limit
    // already hit, enterprise is given more here through the usual environment override.
    let r = start(&[(
        "KEYWARDEN_PLANS__TIERS__ENTERPRISE__REQUESTS_PER_MINUTE",
        "1000",
    )]);
    let acc = account(&r, "Busy", "professional").await;
    let worker = admin_key(&r, &acc, "owner").await;
    let owner = admin_key(&r, &acc, "owner").await;
    for i in 0..50 {
        let a = call(&r, "GET", "/v1/jobs", &worker, None).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
    }
    let a = call(&r, "GET", "/v1/jobs", &worker, None).await;
    assert_detail(&a, 429);
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The limit is per key: another key of the account is not limited.
    assert_eq!(call(&r, "GET", "/v1/jobs", &owner, None).await.status, 200);

    // Moving to a plan with more requests lifts the limit at once.
    let a = call(
        &r,
        "PATCH",
        "/v1/account/plan",
        &owner,
        Some(json!({ "plan": "enterprise" })),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(&r, "GET", "/v1/jobs", &worker, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn roles_are_owner_and_member_only() {
    // Keywarden's other roles, given to a key while they were allowed...
    let all_roles = r#"["owner", "admin", "developer", "member"]"#;
    let before = start(&[("KEYWARDEN_KEYS__ALLOWED_ROLES", all_roles)]);
    let acc = account(&before, "Eurotext GmbH", "business").await;
    let admin = admin_key(&before, &acc, "admin").await;
    let db = format!("sqlite://{}", before.dir.join("keywarden.db").display());

    // ...are refused by the profile, naming the field: through the admin API...
    let r = start(&[("KEYWARDEN_DATABASE_URL", &db)]);
    let owner = admin_key(&r, &acc, "owner").await;
    let member = admin_key(&r, &acc, "member").await;
    let keys = format!("/v1/admin/accounts/{acc}/keys");
    for role in ["admin", "developer"] {
        let a = r
            .admin_call(
                "POST",
                &keys,
                Some(json!({ "mode": "live", "name": role, "role": role })),
            )
            .await;
        assert_detail(&a, 400);
        let detail = a.body["detail"].as_str().unwrap();
        assert!(detail.contains("role") && detail.contains(role), "{detail}");
    }
    let listed = r.admin_call("GET", &keys, None).await;
    let member_id = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "member")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = r
        .admin_call(
            "PATCH",
            &format!("/v1/admin/keys/{member_id}"),
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_detail(&a, 400);
    assert!(a.body["detail"].as_str().unwrap().contains("role"));
    let a = r
        .admin_call(
            "PATCH",
            &format!("/v1/admin/keys/{member_id}"),
            Some(json!({ "role": "owner" })),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["role"]),
        (200, &json!("owner")),
        "{}",
        a.body
    );
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/keys/import",
            Some(json!({
                "account_id": acc, "mode": "live", "name": "old", "scheme": "sha256",
                "hash": "0".repeat(64), "role": "developer",
            })),
        )
        .await;
    assert_detail(&a, 400);
    assert!(a.body["detail"].as_str().unwrap().contains("role"));

    // ...and through the self-service API, where a new key takes its creator's role.
    let a = call(
        &r,
        "POST",
        "/v1/api-keys",
        &admin,
        Some(json!({ "name": "from admin" })),
    )
    .await;
    assert_detail(&a, 400);
    assert!(a.body["detail"].as_str().unwrap().contains("role"));
    let a = call(
        &r,
        "POST",
        "/v1/api-keys",
        &owner,
        Some(json!({ "name": "from owner" })),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let made = a.body["api_key"].as_str().unwrap().to_string();
    let a = call(&r, "GET", "/v1/account", &made, None).await;
    assert_eq!(a.body["role"], "owner");
    let a = call(&r, "GET", "/v1/account", &member, None).await;
    assert_eq!(a.body["role"], "owner", "promoted above");

    // A portal session acts with an allowed role only.
    let portal = format!("/v1/admin/accounts/{acc}/portal-sessions");
    let a = r
        .admin_call("POST", &portal, Some(json!({ "role": "admin" })))
        .await;
    assert_detail(&a, 400);
    assert!(a.body["detail"].as_str().unwrap().contains("role"));
    let a = r
        .admin_call("POST", &portal, Some(json!({ "role": "member" })))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
}

#[tokio::test]
async fn another_accounts_key_is_404_and_an_unknown_plan_400() {
    let r = start(&[]);
    let mine = account(&r, "Eurotext GmbH", "professional").await;
    let theirs = account(&r, "Other AG", "professional").await;
    let owner = admin_key(&r, &mine, "owner").await;
    let other = admin_key(&r, &theirs, "owner").await;
    let their_hash = fingerprint(&other);
    // Another account's key, by its hash, is unknown here: 404, and it keeps working.
    for method in ["GET", "DELETE"] {
        let a = call(
            &r,
            method,
            &format!("/v1/api-keys/{their_hash}"),
            &owner,
            None,
        )
        .await;
        assert_detail(&a, 404);
    }
    let a = call(&r, "GET", "/v1/account", &other, None).await;
    assert_eq!((a.status, &a.body["account_id"]), (200, &json!(theirs)));
    let a = call(&r, "GET", "/v1/api-keys", &owner, None).await;
    assert!(!a.body.to_string().contains(&their_hash), "{}", a.body);

    // A plan that does not exist is 400; the account stays on its plan.
    for plan in ["platinum", "", "Professional"] {
        let a = call(
            &r,
            "PATCH",
            "/v1/account/plan",
            &owner,
            Some(json!({ "plan": plan })),
        )
        .await;
        assert_detail(&a, 400);
    }
    let a = call(&r, "GET", "/v1/account", &owner, None).await;
    assert_eq!(a.body["plan"], "professional");
}

#[tokio::test]
async fn serves_with_only_the_root_key() {
    profile_support::assert_serves_with_only_the_root_key("falara", &[]).await;
}

#[test]
fn config_check_passes_with_only_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keywarden"));
    cmd.args(["config", "check", "--profile", "falara"])
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
