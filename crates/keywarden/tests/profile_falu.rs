//! The `falu` profile against Falu's "API Keys" document: key shapes, test and live modes,
//! pending workspaces and their default keys, publishable and secret keys, restrictions,
//! revealing and rolling, and roles, through the gateway, the self-service API (under
//! `/dashboard/v1`) and the admin API (the Dashboard).

mod profile_support;

use profile_support::{start_profile, Reply, Running};
use serde_json::{json, Value};
use sha2::Digest;

/// The self-service base path of the profile.
const DASH: &str = "/dashboard/v1";
/// The resources of the catalog.
const RESOURCES: [&str; 8] = [
    "messages",
    "message_templates",
    "payments",
    "payment_refunds",
    "identity_verifications",
    "files",
    "webhooks",
    "events",
];

fn code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

/// Whether `token` is `prefix` followed by `n` base62 characters.
fn shaped(token: &str, prefix: &str, n: usize) -> bool {
    token
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == n && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A new workspace: its id and the keys made with it.
async fn workspace(r: &Running) -> (String, Vec<Value>) {
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/accounts",
            Some(json!({ "name": "Shop" })),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let keys = a.body["keys"].as_array().cloned().unwrap_or_default();
    (a.body["id"].as_str().unwrap().into(), keys)
}

async fn approve(r: &Running, acc: &str) -> Vec<Value> {
    let a = r
        .admin_call("POST", &format!("/v1/admin/accounts/{acc}/approve"), None)
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["status"], "active");
    a.body["keys"].as_array().cloned().unwrap_or_default()
}

fn of_type<'a>(keys: &'a [Value], t: &str) -> &'a Value {
    keys.iter().find(|k| k["type"] == t).expect(t)
}

async fn new_key(r: &Running, acc: &str, body: Value) -> Reply {
    r.admin_call(
        "POST",
        &format!("/v1/admin/accounts/{acc}/keys"),
        Some(body),
    )
    .await
}

async fn gw(r: &Running, method: &str, path: &str, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    r.public_call(method, path, &[("authorization", &auth)], None)
        .await
}

async fn dash(r: &Running, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
    let auth = format!("Bearer {key}");
    r.public_call(
        method,
        &format!("{DASH}{path}"),
        &[("authorization", &auth)],
        body,
    )
    .await
}

#[tokio::test]
async fn a_workspace_starts_pending_with_its_test_pair_and_gets_the_live_pair_on_approval() {
    let r = start_profile("falu", &[]);
    let (acc, keys) = workspace(&r).await;
    let got = r
        .admin_call("GET", &format!("/v1/admin/accounts/{acc}"), None)
        .await;
    assert_eq!(got.body["status"], "pending");
    // The test pair: publishable and secret, in the reference's shapes.
    assert_eq!(keys.len(), 2, "{keys:?}");
    let pk = of_type(&keys, "publishable");
    let sk = of_type(&keys, "secret");
    assert!(shaped(pk["api_key"].as_str().unwrap(), "fpkt_", 43), "{pk}");
    assert!(shaped(sk["api_key"].as_str().unwrap(), "fskt_", 43), "{sk}");
    assert_eq!(pk["mode"], "test");
    assert_eq!(sk["mode"], "test");

    // No live key for a pending workspace.
    let live = new_key(&r, &acc, json!({ "mode": "live", "name": "early" })).await;
    assert_eq!(live.status, 403, "{:?}", live.body);
    assert_eq!(code(&live), "account_inactive");

    // Approval makes the live pair: four keys in all.
    let live = approve(&r, &acc).await;
    assert_eq!(live.len(), 2, "{live:?}");
    let lpk = of_type(&live, "publishable")["api_key"].as_str().unwrap();
    let lsk = of_type(&live, "secret")["api_key"].as_str().unwrap();
    assert!(shaped(lpk, "fpkl_", 43), "{lpk}");
    assert!(shaped(lsk, "fskl_", 43), "{lsk}");
    let all = r
        .admin_call("GET", &format!("/v1/admin/accounts/{acc}/keys"), None)
        .await;
    assert_eq!(all.body.as_array().unwrap().len(), 4, "{:?}", all.body);
    // Approving again makes no more.
    assert!(approve(&r, &acc).await.is_empty());

    // Test and live keys reach the upstream in their own mode.
    let t = gw(&r, "GET", "/v1/payments", sk["api_key"].as_str().unwrap()).await;
    assert_eq!(t.status, 200, "{:?}", t.body);
    assert_eq!(t.body["headers"]["x-keywarden-mode"], "test");
    let l = gw(&r, "GET", "/v1/payments", lsk).await;
    assert_eq!(l.status, 200, "{:?}", l.body);
    assert_eq!(l.body["headers"]["x-keywarden-mode"], "live");

    // A suspended workspace's live keys stop; approval brings them back, with no new pair.
    let s = r
        .admin_call(
            "PATCH",
            &format!("/v1/admin/accounts/{acc}"),
            Some(json!({ "status": "suspended" })),
        )
        .await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    let d = gw(&r, "GET", "/v1/payments", lsk).await;
    assert_eq!(d.status, 403);
    assert_eq!(code(&d), "account_inactive");
    assert!(approve(&r, &acc).await.is_empty());
    assert_eq!(gw(&r, "GET", "/v1/payments", lsk).await.status, 200);
}

#[tokio::test]
async fn the_reference_example_keys_are_keys_of_this_profile() {
    let r = start_profile("falu", &[]);
    let (acc, _) = workspace(&r).await;
    let examples = [
        (
            "publishable",
            "fpkt_rFBfqDcayL3PigQ7xA2Ipy5NsUzr9q9Ld8TxBn3HCvg",
        ),
        ("secret", "fskt_LdVyn0upNzbQTSPYZ3aF7NAJlXPjcTECYVbIuuu8Ys"),
    ];
    for (t, token) in examples {
        let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        let i = r
            .admin_call(
                "POST",
                "/v1/admin/keys/import",
                Some(json!({
                    "account_id": acc, "mode": "test", "type": t, "name": "example",
                    "scheme": "sha256", "hash": hash, "prefix": &token[..5],
                })),
            )
            .await;
        assert_eq!(i.status, 201, "{:?}", i.body);
        let v = r
            .admin_call("POST", "/v1/verify", Some(json!({ "key": token })))
            .await;
        assert_eq!(v.body["code"], "valid", "{token}: {:?}", v.body);
        assert_eq!(v.body["key"]["type"], t);
        assert_eq!(v.body["account"]["id"], acc.as_str());
    }
}

#[tokio::test]
async fn no_key_is_missing_api_key_and_an_unknown_well_formed_key_invalid_api_key() {
    let r = start_profile("falu", &[]);
    let (_, keys) = workspace(&r).await;
    let sk = of_type(&keys, "secret")["api_key"].as_str().unwrap();
    assert_eq!(gw(&r, "GET", "/v1/payments", sk).await.status, 200);
    // No Authorization header, or one without a key in it.
    for headers in [vec![], vec![("authorization", "Bearer ")]] {
        let d = r.public_call("GET", "/v1/payments", &headers, None).await;
        assert_eq!(d.status, 401, "{headers:?}: {:?}", d.body);
        assert_eq!(code(&d), "missing_api_key", "{headers:?}");
    }
    // The shape of a test secret key, but no workspace's: 43 random base62 characters.
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let seed = sha2::Sha256::digest(sk.as_bytes());
    let random: String = (0..43)
        .map(|i| char::from(alphabet[usize::from(seed[i % 32] ^ (i as u8)) % 62]))
        .collect();
    for unknown in [format!("fskt_{random}"), format!("fskl_{random}")] {
        assert!(shaped(&unknown, &unknown[..5], 43), "{unknown}");
        assert_ne!(unknown, sk);
        let d = gw(&r, "GET", "/v1/payments", &unknown).await;
        assert_eq!(d.status, 401, "{unknown}: {:?}", d.body);
        assert_eq!(code(&d), "invalid_api_key", "{unknown}");
        assert!(
            d.body.get("path").is_none(),
            "{unknown} reached the upstream"
        );
    }
}

#[tokio::test]
async fn publishable_keys_only_identify_the_workspace_and_secret_keys_may_do_anything() {
    let r = start_profile("falu", &[]);
    let (acc, keys) = workspace(&r).await;
    let pk = of_type(&keys, "publishable")["api_key"].as_str().unwrap();
    let sk = of_type(&keys, "secret")["api_key"].as_str().unwrap();
    // A publishable key is a valid key of the workspace...
    let v = r
        .admin_call("POST", "/v1/verify", Some(json!({ "key": pk })))
        .await;
    assert_eq!(v.body["code"], "valid", "{:?}", v.body);
    assert_eq!(v.body["account"]["id"], acc.as_str());
    // ...that passes no scope-protected check, and not the self-service API.
    for res in RESOURCES {
        let d = gw(&r, "GET", &format!("/v1/{res}"), pk).await;
        assert_eq!(d.status, 403, "{res}: {:?}", d.body);
        assert_eq!(code(&d), "insufficient_scope");
        // The secret key is unrestricted by default: every resource, read and write.
        assert_eq!(
            gw(&r, "GET", &format!("/v1/{res}/x_1"), sk).await.status,
            200
        );
        assert_eq!(gw(&r, "POST", &format!("/v1/{res}"), sk).await.status, 200);
    }
    let d = dash(&r, "GET", "/api-keys", pk, None).await;
    assert_eq!(d.status, 403, "{:?}", d.body);
    let secret = of_type(&keys, "secret");
    assert_eq!(secret["scopes"], json!(["*"]));
    // A publishable key cannot be given a scope.
    let p = new_key(
        &r,
        &acc,
        json!({ "mode": "test", "type": "publishable", "name": "web", "scopes": ["messages:read"] }),
    )
    .await;
    assert_eq!(p.status, 400, "{:?}", p.body);
    assert_eq!(code(&p), "invalid_scope");
    // Outside the catalog's resources nothing passes, even unrestricted.
    let d = gw(&r, "GET", "/v1/balances", sk).await;
    assert_eq!(d.status, 403, "{:?}", d.body);
}

#[tokio::test]
async fn secret_keys_can_be_restricted_to_permissions_and_networks() {
    let r = start_profile("falu", &[]);
    let (acc, _) = workspace(&r).await;
    // Restricted to messages: a messages monitoring service.
    let k = new_key(
        &r,
        &acc,
        json!({ "mode": "test", "name": "monitor", "scopes": ["messages:read", "messages:write"] }),
    )
    .await;
    assert_eq!(k.status, 201, "{:?}", k.body);
    let token = k.body["api_key"].as_str().unwrap();
    assert_eq!(gw(&r, "GET", "/v1/messages", token).await.status, 200);
    assert_eq!(gw(&r, "POST", "/v1/messages", token).await.status, 200);
    let d = gw(&r, "GET", "/v1/payments", token).await;
    assert_eq!(d.status, 403);
    assert_eq!(code(&d), "insufficient_scope");
    // Read only.
    let k = new_key(
        &r,
        &acc,
        json!({ "mode": "test", "name": "reader", "scopes": ["payments:read", "payment_refunds:read"] }),
    )
    .await;
    let reader = k.body["api_key"].as_str().unwrap();
    assert_eq!(
        gw(&r, "GET", "/v1/payment_refunds/r_1", reader)
            .await
            .status,
        200
    );
    assert_eq!(
        gw(&r, "PATCH", "/v1/payments/p_1", reader).await.status,
        403
    );
    // A permission outside the catalog is refused, naming it.
    let bad = new_key(
        &r,
        &acc,
        json!({ "mode": "test", "name": "bad", "scopes": ["balances:read"] }),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(code(&bad), "invalid_scope");
    assert!(bad.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("balances:read"));

    // Networks: only from the listed ones; clearing them allows any.
    let k = new_key(
        &r,
        &acc,
        json!({ "mode": "test", "name": "server", "ip_allowlist": ["10.0.0.0/8"] }),
    )
    .await;
    let id = k.body["id"].as_str().unwrap().to_string();
    let token = k.body["api_key"].as_str().unwrap();
    let d = gw(&r, "GET", "/v1/messages", token).await;
    assert_eq!(d.status, 401, "{:?}", d.body);
    assert_eq!(code(&d), "ip_not_allowed");
    for list in [
        json!(["127.0.0.1"]),
        json!(["127.0.0.0/24", "::1"]),
        json!([]),
    ] {
        let p = r
            .admin_call(
                "PATCH",
                &format!("/v1/admin/keys/{id}"),
                Some(json!({ "ip_allowlist": list })),
            )
            .await;
        assert_eq!(p.status, 200, "{:?}", p.body);
        assert_eq!(
            gw(&r, "GET", "/v1/messages", token).await.status,
            200,
            "{list}"
        );
    }
    // Clearing all permissions makes the key unrestricted again.
    let k = new_key(
        &r,
        &acc,
        json!({ "mode": "test", "name": "narrow", "scopes": ["files:read"] }),
    )
    .await;
    let id = k.body["id"].as_str().unwrap().to_string();
    let token = k.body["api_key"].as_str().unwrap();
    assert_eq!(gw(&r, "POST", "/v1/files", token).await.status, 403);
    let p = r
        .admin_call(
            "PATCH",
            &format!("/v1/admin/keys/{id}"),
            Some(json!({ "scopes": [] })),
        )
        .await;
    assert_eq!(p.status, 200, "{:?}", p.body);
    assert_eq!(p.body["scopes"], json!(["*"]));
    assert_eq!(gw(&r, "POST", "/v1/files", token).await.status, 200);
    assert_eq!(gw(&r, "GET", "/v1/events", token).await.status, 200);
    // Created with none, likewise.
    let k = new_key(
        &r,
        &acc,
        json!({ "mode": "test", "name": "open", "scopes": [] }),
    )
    .await;
    assert_eq!(k.status, 201, "{:?}", k.body);
    assert_eq!(k.body["scopes"], json!(["*"]));
}

#[tokio::test]
async fn live_secrets_are_shown_once_test_secrets_can_be_revealed_and_rolling_is_immediate() {
    let r = start_profile("falu", &[]);
    let (acc, keys) = workspace(&r).await;
    let live = approve(&r, &acc).await;
    let test_sk = of_type(&keys, "secret");
    let live_sk = of_type(&live, "secret");
    let (test_id, test_token) = (
        test_sk["id"].as_str().unwrap(),
        test_sk["api_key"].as_str().unwrap(),
    );
    let (live_id, live_token) = (
        live_sk["id"].as_str().unwrap(),
        live_sk["api_key"].as_str().unwrap(),
    );
    // Reading a key never shows its secret.
    for (id, token) in [(test_id, test_token), (live_id, live_token)] {
        let g = r
            .admin_call("GET", &format!("/v1/admin/keys/{id}"), None)
            .await;
        assert_eq!(g.status, 200);
        assert!(!g.body.to_string().contains(token));
    }
    // A test secret can be revealed again; a live one cannot.
    let rv = r
        .admin_call("POST", &format!("/v1/admin/keys/{test_id}/reveal"), None)
        .await;
    assert_eq!(rv.status, 200, "{:?}", rv.body);
    assert_eq!(rv.body["api_key"], test_token);
    let rv = r
        .admin_call("POST", &format!("/v1/admin/keys/{live_id}/reveal"), None)
        .await;
    assert_eq!(rv.status, 409, "{:?}", rv.body);
    assert!(!rv.body.to_string().contains(live_token));
    // Where the key was copied to: a description on the key.
    let p = r
        .admin_call(
            "PATCH",
            &format!("/v1/admin/keys/{live_id}"),
            Some(json!({ "description": "vault: prod/payments" })),
        )
        .await;
    assert_eq!(p.status, 200);
    assert_eq!(p.body["description"], "vault: prod/payments");

    // Rolling: the old secret is invalid at once, the new one works; no grace period.
    for (id, old) in [(test_id, test_token), (live_id, live_token)] {
        let g = r
            .admin_call(
                "POST",
                &format!("/v1/admin/keys/{id}/rotate"),
                Some(json!({ "grace_period_seconds": 3600 })),
            )
            .await;
        assert_eq!(g.status, 400, "{:?}", g.body);
        let roll = r
            .admin_call(
                "POST",
                &format!("/v1/admin/keys/{id}/rotate"),
                Some(json!({})),
            )
            .await;
        assert_eq!(roll.status, 200, "{:?}", roll.body);
        let new = roll.body["api_key"].as_str().unwrap();
        assert_eq!(&new[..5], &old[..5]);
        let d = gw(&r, "GET", "/v1/messages", old).await;
        assert_eq!(d.status, 401);
        assert_eq!(code(&d), "api_key_revoked");
        assert_eq!(gw(&r, "GET", "/v1/messages", new).await.status, 200);
    }

    // The master key sealing test secrets was generated beside the database, private.
    let mk = r.dir.join("keywarden.db.master_key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&mk).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // A restart on the same database reveals the same test secrets.
    let rolled = r
        .admin_call("POST", &format!("/v1/admin/keys/{test_id}/reveal"), None)
        .await;
    let db = format!("sqlite://{}", r.dir.join("keywarden.db").display());
    let again = start_profile("falu", &[("KEYWARDEN_DATABASE_URL", &db)]);
    let rv = again
        .admin_call("POST", &format!("/v1/admin/keys/{test_id}/reveal"), None)
        .await;
    assert_eq!(rv.status, 200, "{:?}", rv.body);
    assert_eq!(rv.body["api_key"], rolled.body["api_key"]);
}

#[tokio::test]
async fn only_developers_admins_and_owners_view_and_manage_keys() {
    let r = start_profile("falu", &[]);
    let (acc, keys) = workspace(&r).await;
    let owner = of_type(&keys, "secret")["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut by_role = Vec::new();
    for role in ["admin", "developer", "member"] {
        let k = new_key(
            &r,
            &acc,
            json!({ "mode": "test", "name": role, "role": role }),
        )
        .await;
        assert_eq!(k.status, 201, "{:?}", k.body);
        by_role.push((
            role,
            k.body["api_key"].as_str().unwrap().to_string(),
            k.body["id"].as_str().unwrap().to_string(),
        ));
    }
    let member = &by_role[2];
    // A member may neither view nor manage keys, its own included.
    for (method, path, body) in [
        ("GET", "/api-keys".to_string(), None),
        ("GET", format!("/api-keys/{}", member.2), None),
        ("GET", format!("/api-keys/{}/activity", member.2), None),
        (
            "POST",
            "/api-keys".to_string(),
            Some(json!({ "name": "x" })),
        ),
        (
            "POST",
            format!("/api-keys/{}/rotate", member.2),
            Some(json!({})),
        ),
        ("DELETE", format!("/api-keys/{}", member.2), None),
    ] {
        let d = dash(&r, method, &path, &member.1, body).await;
        assert_eq!(d.status, 403, "{method} {path}: {:?}", d.body);
        assert_eq!(code(&d), "insufficient_role");
    }
    // Developers, admins and owners can.
    for token in [&by_role[0].1, &by_role[1].1, &owner] {
        let l = dash(&r, "GET", "/api-keys", token, None).await;
        assert_eq!(l.status, 200, "{:?}", l.body);
        assert!(!l.body.as_array().unwrap().is_empty());
        let c = dash(
            &r,
            "POST",
            "/api-keys",
            token,
            Some(json!({ "name": "ci" })),
        )
        .await;
        assert_eq!(c.status, 201, "{:?}", c.body);
        assert!(shaped(c.body["api_key"].as_str().unwrap(), "fskt_", 43));
        let id = c.body["id"].as_str().unwrap();
        let g = dash(&r, "GET", &format!("/api-keys/{id}"), token, None).await;
        assert_eq!(g.status, 200, "{:?}", g.body);
    }
    // A test key sees test keys only: the live ones are another mode's objects.
    let live = approve(&r, &acc).await;
    let live_id = of_type(&live, "secret")["id"].as_str().unwrap();
    let l = dash(&r, "GET", "/api-keys", &owner, None).await;
    assert!(l
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["mode"] == "test"));
    let d = dash(&r, "GET", &format!("/api-keys/{live_id}"), &owner, None).await;
    assert_eq!(d.status, 404, "{:?}", d.body);
}

#[tokio::test]
async fn serves_with_only_the_root_key() {
    // The master key sealing test secrets is generated beside the database.
    profile_support::assert_serves_with_only_the_root_key("falu", &["keywarden.db.master_key"])
        .await;
}

#[test]
fn config_check_passes_with_only_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args(["config", "check", "--profile", "falu"])
        .current_dir(dir.path())
        .env("KEYWARDEN_ROOT_KEY", profile_support::ROOT_KEY)
        .env_remove("KEYWARDEN_MASTER_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("f{type}k{mode}_{random:43}"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
