//! The `facturascripts` profile against FacturaScripts' "API key authentication" document:
//! key shape, the two headers, global keys, permissions per resource and method, the
//! authentication errors and activity tracking, through the gateway and the admin API
//! (the admin panel).

mod profile_support;

use profile_support::{start_profile, Reply, Running};
use serde_json::json;
use std::time::{Duration, Instant};

/// The resources the catalog holds at least.
const RESOURCES: [&str; 9] = [
    "clientes",
    "proveedores",
    "productos",
    "facturaclientes",
    "facturaproveedores",
    "albaranclientes",
    "pedidoclientes",
    "presupuestoclientes",
    "contactos",
];

fn code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

async fn account(r: &Running) -> String {
    let a = r
        .admin_call(
            "POST",
            "/v1/admin/accounts",
            Some(json!({ "name": "Mi empresa" })),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["id"].as_str().unwrap().into()
}

/// A user key with `scopes`: (id, token).
async fn user_key(r: &Running, acc: &str, scopes: &[&str]) -> (String, String) {
    let k = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({
                "mode": "live", "name": "erp", "description": "ERP sync",
                "owner": "admin", "scopes": scopes,
            })),
        )
        .await;
    assert_eq!(k.status, 201, "{:?}", k.body);
    (
        k.body["id"].as_str().unwrap().into(),
        k.body["api_key"].as_str().unwrap().into(),
    )
}

async fn api(r: &Running, method: &str, path: &str, token: &str) -> Reply {
    r.public_call(method, path, &[("X-Auth-Token", token)], None)
        .await
}

#[tokio::test]
async fn keys_are_20_random_characters_sent_in_x_auth_token_or_token() {
    let r = start_profile("facturascripts", &[]);
    let acc = account(&r).await;
    let (id, token) = user_key(&r, &acc, &[]).await;
    assert_eq!(token.len(), 20, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
    let (_, other) = user_key(&r, &acc, &[]).await;
    assert_ne!(token, other);

    // The key's properties: description, owner (the username), enabled, creation date.
    let k = r
        .admin_call("GET", &format!("/v1/admin/keys/{id}"), None)
        .await;
    assert_eq!(k.body["prefix"], "");
    assert_eq!(k.body["description"], "ERP sync");
    assert_eq!(k.body["owner"], "admin");
    assert_eq!(k.body["enabled"], true);
    assert!(k.body["created_at"].is_string());
    assert!(k.body["last_used_at"].is_null());

    // Testing authentication: the API root, with either header.
    for header in ["X-Auth-Token", "Token"] {
        let ok = r
            .public_call("GET", "/api/3", &[(header, &token)], None)
            .await;
        assert_eq!(ok.status, 200, "{header}: {:?}", ok.body);
        assert_eq!(ok.body["path"], "/api/3");
        assert!(
            ok.body["headers"]
                .get(header.to_ascii_lowercase())
                .is_none(),
            "the key reached the upstream"
        );
    }
    // In any other header it is not read.
    let bearer = format!("Bearer {token}");
    for h in [("authorization", bearer.as_str()), ("X-API-Key", &token)] {
        let d = r.public_call("GET", "/api/3", &[h], None).await;
        assert_eq!(d.status, 401, "{h:?}");
    }

    // lastactivity: the key's last use is recorded...
    last_used_after(&r, &id, None).await;
    // ...and moves with a later use: once the uses above are written (the writer flushes
    // at least every second), one more use changes it again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let settled = last_used_after(&r, &id, None).await;
    assert_eq!(api(&r, "GET", "/api/3", &token).await.status, 200);
    let later = last_used_after(&r, &id, Some(&settled)).await;
    assert_ne!(later, settled);
}

/// The key's `last_used_at` once it is set and differs from `before`, waiting for the
/// batched writer (10 s at most); checks `last_used_ip` along the way.
async fn last_used_after(r: &Running, id: &str, before: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let k = r
            .admin_call("GET", &format!("/v1/admin/keys/{id}"), None)
            .await;
        if let Some(at) = k.body["last_used_at"].as_str() {
            if before != Some(at) {
                assert_eq!(k.body["last_used_ip"], "127.0.0.1");
                return at.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "last_used_at never moved from {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn invalid_missing_and_disabled_keys_are_401_and_a_missing_permission_403() {
    let r = start_profile("facturascripts", &[]);
    let acc = account(&r).await;
    let (id, token) = user_key(&r, &acc, &["clientes:get"]).await;
    assert_eq!(api(&r, "GET", "/api/3/clientes", &token).await.status, 200);

    // Missing or invalid: 401.
    let d = r.public_call("GET", "/api/3/clientes", &[], None).await;
    assert_eq!(d.status, 401);
    assert_eq!(code(&d), "missing_api_key");
    for bad in ["abcdefghij0123456789", "short", &token[..19]] {
        let d = api(&r, "GET", "/api/3/clientes", bad).await;
        assert_eq!(d.status, 401, "{bad}");
        assert_eq!(code(&d), "invalid_api_key");
    }
    // No permission for the resource or the method: 403.
    for (method, path) in [
        ("POST", "/api/3/clientes"),
        ("GET", "/api/3/proveedores"),
        ("DELETE", "/api/3/clientes/7"),
    ] {
        let d = api(&r, method, path, &token).await;
        assert_eq!(d.status, 403, "{method} {path}");
        assert_eq!(code(&d), "insufficient_scope");
    }
    // enabled = false: 401 until enabled again.
    let set = |enabled: bool| {
        let r = &r;
        let id = id.clone();
        async move {
            let p = r
                .admin_call(
                    "PATCH",
                    &format!("/v1/admin/keys/{id}"),
                    Some(json!({ "enabled": enabled })),
                )
                .await;
            assert_eq!(p.status, 200, "{:?}", p.body);
        }
    };
    set(false).await;
    let d = api(&r, "GET", "/api/3/clientes", &token).await;
    assert_eq!(d.status, 401);
    assert_eq!(code(&d), "api_key_disabled");
    let d = api(&r, "GET", "/api/3", &token).await;
    assert_eq!(d.status, 401);
    set(true).await;
    assert_eq!(api(&r, "GET", "/api/3/clientes", &token).await.status, 200);
}

#[tokio::test]
async fn permissions_are_per_resource_and_method() {
    let r = start_profile("facturascripts", &[]);
    let acc = account(&r).await;
    // Every resource of the catalog takes each of the four permissions.
    for res in RESOURCES {
        let perms: Vec<String> = ["get", "post", "put", "delete"]
            .iter()
            .map(|m| format!("{res}:{m}"))
            .collect();
        let perms: Vec<&str> = perms.iter().map(String::as_str).collect();
        let (_, token) = user_key(&r, &acc, &perms).await;
        for (method, path) in [
            ("GET", format!("/api/3/{res}")),
            ("GET", format!("/api/3/{res}/12")),
            ("POST", format!("/api/3/{res}")),
            ("PUT", format!("/api/3/{res}/12")),
            ("PATCH", format!("/api/3/{res}/12")),
            ("DELETE", format!("/api/3/{res}/12")),
        ] {
            let a = api(&r, method, &path, &token).await;
            assert_eq!(a.status, 200, "{method} {path}: {:?}", a.body);
        }
    }
    // Each permission allows its methods only: put is PUT and PATCH.
    let cases: [(&str, &[(&str, u16)]); 4] = [
        (
            "productos:get",
            &[("GET", 200), ("POST", 403), ("PUT", 403), ("DELETE", 403)],
        ),
        (
            "productos:post",
            &[("GET", 403), ("POST", 200), ("PATCH", 403), ("DELETE", 403)],
        ),
        (
            "productos:put",
            &[("GET", 403), ("PUT", 200), ("PATCH", 200), ("DELETE", 403)],
        ),
        (
            "productos:delete",
            &[("GET", 403), ("POST", 403), ("PUT", 403), ("DELETE", 200)],
        ),
    ];
    for (perm, expect) in cases {
        let (_, token) = user_key(&r, &acc, &[perm]).await;
        for (method, status) in expect {
            let a = api(&r, method, "/api/3/productos/3", &token).await;
            assert_eq!(a.status, *status, "{perm}: {method}");
        }
        // The API root needs only a valid key.
        assert_eq!(api(&r, "GET", "/api/3", &token).await.status, 200);
    }
    // A permission outside the catalog is refused, naming it.
    let k = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "x", "scopes": ["clientes:read"] })),
        )
        .await;
    assert_eq!(k.status, 400);
    assert_eq!(code(&k), "invalid_scope");

    // Full access: every resource, every method.
    let (_, full) = user_key(&r, &acc, &["*"]).await;
    for res in RESOURCES {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let a = api(&r, method, &format!("/api/3/{res}/1"), &full).await;
            assert_eq!(a.status, 200, "{method} {res}");
        }
    }
    // A resource outside the catalog is refused even with full access: its permissions
    // cannot be given, so nothing may pass.
    for (method, path) in [
        ("GET", "/api/3/pluginrecursos"),
        ("POST", "/api/3/pluginrecursos/1"),
        ("DELETE", "/api/3/pluginrecursos/1/lineas"),
    ] {
        let d = api(&r, method, path, &full).await;
        assert_eq!(d.status, 403, "{method} {path}: {:?}", d.body);
        assert_eq!(code(&d), "insufficient_scope", "{method} {path}");
        assert!(d.body.get("path").is_none(), "{path} reached the upstream");
    }
    // Only /api/3 reaches the API: any other path is refused, whatever the key.
    for path in [
        "/",
        "/api",
        "/api/2/clientes",
        "/api/30",
        "/api/3x/clientes",
        "/clientes",
        "/v1/clientes",
    ] {
        let d = api(&r, "GET", path, &full).await;
        assert_eq!(d.status, 403, "{path}: {:?}", d.body);
        assert!(d.body.get("path").is_none(), "{path} reached the upstream");
    }
    // A key made without permissions has none beyond the API root.
    let (_, none) = user_key(&r, &acc, &[]).await;
    let k = r
        .admin_call(
            "POST",
            &format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({ "mode": "live", "name": "bare" })),
        )
        .await;
    assert_eq!(k.body["scopes"], json!([]));
    assert_eq!(api(&r, "GET", "/api/3", &none).await.status, 200);
    assert_eq!(api(&r, "GET", "/api/3/clientes", &none).await.status, 403);
}

#[tokio::test]
async fn global_keys_from_the_environment_have_full_access() {
    let globals = "GlobalKeyOne0123456789,GlobalKeyTwo0123456789";
    let r = start_profile("facturascripts", &[("KEYWARDEN_GLOBAL_KEYS", globals)]);
    for g in globals.split(',') {
        for (method, path) in [
            ("GET", "/api/3"),
            ("GET", "/api/3/clientes"),
            ("POST", "/api/3/facturaclientes"),
            ("DELETE", "/api/3/productos/9"),
        ] {
            let a = r.public_call(method, path, &[("Token", g)], None).await;
            assert_eq!(a.status, 200, "{method} {path}: {:?}", a.body);
        }
    }
    // Without the variable, the same tokens are nothing.
    let plain = start_profile("facturascripts", &[]);
    let d = api(&plain, "GET", "/api/3", "GlobalKeyOne0123456789").await;
    assert_eq!(d.status, 401);
}

#[tokio::test]
async fn a_disabled_api_is_403() {
    let r = start_profile(
        "facturascripts",
        &[
            ("KEYWARDEN_SERVER__API_ENABLED", "false"),
            ("KEYWARDEN_GLOBAL_KEYS", "GlobalKeyOne0123456789"),
        ],
    );
    // A user key with full access, made in the admin panel while the API is off.
    let acc = account(&r).await;
    let (_, user) = user_key(&r, &acc, &["*"]).await;
    for (headers, path) in [
        (vec![("X-Auth-Token", "GlobalKeyOne0123456789")], "/api/3"),
        (vec![("Token", "GlobalKeyOne0123456789")], "/api/3/clientes"),
        (vec![("X-Auth-Token", user.as_str())], "/api/3"),
        (vec![("Token", user.as_str())], "/api/3/productos/1"),
        (vec![], "/api/3"),
    ] {
        let d: Reply = r.public_call("GET", path, &headers, None).await;
        assert_eq!(d.status, 403, "{path}: {:?}", d.body);
        assert_eq!(code(&d), "api_disabled");
    }
    // Switched on again, the same key works.
    let db = format!("sqlite://{}", r.dir.join("keywarden.db").display());
    let on = start_profile("facturascripts", &[("KEYWARDEN_DATABASE_URL", &db)]);
    assert_eq!(
        api(&on, "GET", "/api/3/productos/1", &user).await.status,
        200
    );
}

#[tokio::test]
async fn serves_with_only_the_root_key() {
    profile_support::assert_serves_with_only_the_root_key("facturascripts", &[]).await;
}

#[test]
fn config_check_passes_with_only_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args(["config", "check", "--profile", "facturascripts"])
        .current_dir(dir.path())
        .env("KEYWARDEN_ROOT_KEY", profile_support::ROOT_KEY)
        .env_remove("KEYWARDEN_GLOBAL_KEYS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("X-Auth-Token"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
