//! The console's and the portal's HTTP behaviour without a browser (`docs/console.md`):
//! security headers, cookie attributes, sessions stored hashed, portal links' rules, and
//! the pages' language. The flows themselves run in a real Chromium
//! (`crates/keywarden/tests/browser.rs`).

mod common;

use common::{spawn_app, spawn_app_with, ROOT};
use keywarden_core::Clock;
use reqwest::header::{ACCEPT_LANGUAGE, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use reqwest::Method;
use serde_json::json;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Signs in to the console: the `Set-Cookie` header.
async fn sign_in(admin: &str, root_key: &str) -> (u16, String) {
    let res = no_redirects()
        .post(format!("{admin}/console/login"))
        .form(&[("root_key", root_key)])
        .send()
        .await
        .unwrap();
    let cookie = res
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (res.status().as_u16(), cookie)
}

#[tokio::test]
async fn pages_carry_a_strict_policy_and_sessions_are_stored_hashed() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/console/login", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let css = app
        .client
        .get(format!("{}/console/assets/app.css", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert!(css.headers().contains_key(CONTENT_SECURITY_POLICY));

    // A wrong key gives no cookie.
    let (status, cookie) = sign_in(&app.admin, "not-the-root-key-at-all").await;
    assert_eq!(status, 401);
    assert!(cookie.is_empty());
    // The root key gives an HttpOnly, SameSite=Strict cookie for /console only.
    let (status, cookie) = sign_in(&app.admin, ROOT).await;
    assert_eq!(status, 303);
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "not behind TLS by default: {cookie}"
    );
    let sid = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    assert_eq!(sid.len(), 64, "256 random bits");
    assert!(!sid.contains(ROOT));
    let now = app.clock.now_ms();
    let state = &app.state;
    assert!(state
        .store
        .get_web_session(&sid, now)
        .await
        .unwrap()
        .is_none());
    let plain = keywarden_core::hashing::sha256_hex(sid.as_bytes());
    assert!(state
        .store
        .get_web_session(&plain, now)
        .await
        .unwrap()
        .is_none());
    let hash = keywarden_server::web::console_id_hash(&sid, &keywarden_core::Secret::new(ROOT));
    assert!(state
        .store
        .get_web_session(&hash, now)
        .await
        .unwrap()
        .is_some());
    // The session opens the console; without it the console sends to sign-in.
    let page = no_redirects()
        .get(format!("{}/console/accounts", app.admin))
        .header("cookie", format!("keywarden_console={sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = no_redirects()
        .get(format!("{}/console/accounts", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()[LOCATION], "/console/login");
    app.stop().await;
}

/// The service over a SQLite file that outlives it, with `root_key`.
async fn spawn_on(db: &std::path::Path, root_key: &str) -> common::TestApp {
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), root_key.to_string()),
        (
            "KEYWARDEN_DATABASE_URL".to_string(),
            format!("sqlite://{}", db.display()),
        ),
    ];
    let mut config = keywarden_server::config::Config::from_parts("", &vars).unwrap();
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    common::spawn_config(config, tempfile::tempdir().unwrap()).await
}

#[tokio::test]
async fn a_root_key_taken_out_of_the_configuration_ends_its_console_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kw.db");
    let app = spawn_on(&db, ROOT).await;
    let (status, cookie) = sign_in(&app.admin, ROOT).await;
    assert_eq!(status, 303);
    let session = cookie.split(';').next().unwrap().to_string();
    let open = |admin: String, session: String| async move {
        get_as(format!("{admin}/console/accounts"), session).await
    };
    assert_eq!(open(app.admin.clone(), session.clone()).await.status(), 200);
    app.stop().await;
    // The same database, restarted with the old key beside a new one: still signed in.
    let both = format!("{ROOT},root_test_key_fedcba9876543210");
    let app = spawn_on(&db, &both).await;
    assert_eq!(open(app.admin.clone(), session.clone()).await.status(), 200);
    app.stop().await;
    // The old key removed: the session sends to sign-in.
    let app = spawn_on(&db, "root_test_key_fedcba9876543210").await;
    let res = open(app.admin.clone(), session.clone()).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], "/console/login");
    app.stop().await;
}

#[tokio::test]
async fn secure_cookies_and_public_url_follow_the_configuration() {
    let app = spawn_app_with(
        "[server]\nsecure_cookies = true\npublic_url = \"https://keys.example.com/\"\n",
    )
    .await;
    let (_, cookie) = sign_in(&app.admin, ROOT).await;
    assert!(cookie.contains("Secure"), "{cookie}");
    let acc = app.account("Linked").await;
    let link = link_with(&app, &acc, json!({})).await;
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://keys.example.com/portal/start?token="),
        "{url}"
    );
    // The portal's cookie is Secure too.
    let opened = open_link(&app, &link).await;
    assert_eq!(opened.status(), 303);
    let cookie = opened.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("Secure") && cookie.contains("Path=/portal"),
        "{cookie}"
    );
    app.stop().await;
}

#[tokio::test]
async fn portal_links_refuse_bad_input_and_end_with_suspension() {
    let app = spawn_app().await;
    let acc = app.account("Portal").await;
    let path = format!("/v1/admin/accounts/{acc}/portal-sessions");
    app.admin_call(
        Method::POST,
        &path,
        Some(json!({ "return_url": "javascript:alert(1)" })),
    )
    .await
    .invalid("return_url");
    // It would become a Location header: a line break is refused up front.
    app.admin_call(
        Method::POST,
        &path,
        Some(json!({ "return_url": "https://app.example.com/\nx" })),
    )
    .await
    .invalid("return_url");
    app.admin_call(Method::POST, &path, Some(json!({ "role": "emperor" })))
        .await
        .err(400, "invalid_request");
    app.admin_call(
        Method::POST,
        "/v1/admin/accounts/acc_nope/portal-sessions",
        Some(json!({})),
    )
    .await
    .err(404, "not_found");
    // Without the root key: refused before anything else.
    let res = app
        .client
        .post(format!("{}{path}", app.admin))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let link = app
        .admin_call(Method::POST, &path, Some(json!({ "mode": "test" })))
        .await
        .ok(201);
    // The link names the configured public address; the test's listener is on its own port.
    let raw = link["url"].as_str().unwrap();
    let url = format!("{}{}", app.public, &raw[raw.find("/portal/").unwrap()..]);
    let started = open_link(&app, &link).await;
    assert_eq!(started.status(), 303);
    let cookie = started.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(cookie.contains("Path=/portal"), "{cookie}");
    // Lax, so the first page after a link opened from another site gets the cookie.
    assert!(
        cookie.contains("SameSite=Lax") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let home = |session: String| {
        let url = format!("{}/portal", app.public);
        async move { get_as(url, session).await.status().as_u16() }
    };
    assert_eq!(home(session.clone()).await, 200);
    // Used once: the second time is refused, and the link's page says so.
    assert_eq!(open_link(&app, &link).await.status(), 404);
    assert_eq!(no_redirects().get(&url).send().await.unwrap().status(), 404);
    // Suspending the account ends its portal session.
    app.set_account_status(&acc, "suspended").await;
    assert_eq!(home(session).await, 401);
    app.admin_call(Method::POST, &path, Some(json!({})))
        .await
        .err(403, "account_inactive");
    app.stop().await;
}

#[tokio::test]
async fn pages_speak_spanish_when_asked() {
    let app = spawn_app().await;
    let page = |lang: &'static str| {
        let url = format!("{}/console/login", app.admin);
        let client = app.client.clone();
        async move {
            client
                .get(url)
                .header(ACCEPT_LANGUAGE, lang)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let es = page("es-ES,es;q=0.9").await;
    assert!(es.contains("<html lang=\"es\">"), "{es}");
    assert!(es.contains("Iniciar sesión"), "{es}");
    let en = page("en-GB").await;
    assert!(en.contains("<html lang=\"en\">"));
    assert!(en.contains("Sign in"));
    // The copy button's words, the one it shows after copying included.
    let acc = app.account("Hola").await;
    let (console, csrf) = console_session(&app).await;
    let shown = no_redirects()
        .post(format!("{}/console/accounts/{acc}/keys", app.admin))
        .header("cookie", &console)
        .header(ACCEPT_LANGUAGE, "es")
        .form(&[("csrf", csrf.as_str()), ("name", "clave")])
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 201);
    let es = body(shown).await;
    assert!(
        es.contains("data-copied=\"Copiado\">Copiar</button>"),
        "{es}"
    );
    app.stop().await;
}

/// Opens a portal link for `acc` with `role`: the session cookie and the page's CSRF token.
async fn portal_session(app: &common::TestApp, acc: &str, role: &str) -> (String, String) {
    let link = link_with(app, acc, json!({ "role": role })).await;
    let started = open_link(app, &link).await;
    let cookie = started.headers()[SET_COOKIE].to_str().unwrap();
    let session = cookie.split(';').next().unwrap().to_string();
    let page = get_as(format!("{}/portal", app.public), &session)
        .await
        .text()
        .await
        .unwrap();
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with its token")
        + 19;
    let csrf = page[at..at + page[at..].find('"').unwrap()].to_string();
    (session, csrf)
}

#[tokio::test]
async fn an_owner_renames_and_changes_plan_in_the_portal_and_signing_out_ends_the_session() {
    let app = spawn_app_with("[plans.tiers.default]\n[plans.tiers.pro]\nmax_keys = 5\n").await;
    let acc = app.account("Before").await;
    let post = |session: String, path: &'static str, form: Vec<(&'static str, String)>| {
        let url = format!("{}{path}", app.public);
        async move {
            no_redirects()
                .post(url)
                .header("cookie", session)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let account_path = format!("/v1/admin/accounts/{acc}");
    let account = || app.admin_call(Method::GET, &account_path, None);

    // A member may not rename the account or change its plan.
    let (member, member_csrf) = portal_session(&app, &acc, "member").await;
    let res = post(
        member.clone(),
        "/portal/account",
        vec![("csrf", member_csrf.clone()), ("name", "Taken".into())],
    )
    .await;
    assert_eq!(res.status(), 403);
    // The refusal is a page of the portal, with its stylesheet.
    let page = res.text().await.unwrap();
    assert!(page.contains("href=\"/portal/assets/app.css\""), "{page}");
    assert!(page.contains("<h1>Nothing was changed</h1>"), "{page}");
    assert_eq!(account().await.ok(200)["name"], "Before");

    let (owner, csrf) = portal_session(&app, &acc, "owner").await;
    // Without its token the form changes nothing.
    let res = post(
        owner.clone(),
        "/portal/account",
        vec![("name", "Forged".into())],
    )
    .await;
    assert_eq!(res.status(), 403);
    let res = post(
        owner.clone(),
        "/portal/account",
        vec![("csrf", csrf.clone()), ("name", "After".into())],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], "/portal");
    let res = post(
        owner.clone(),
        "/portal/plan",
        vec![("csrf", csrf.clone()), ("plan", "pro".into())],
    )
    .await;
    assert_eq!(res.status(), 303);
    let a = account().await.ok(200);
    assert_eq!(
        (a["name"].as_str(), a["plan"].as_str()),
        (Some("After"), Some("pro"))
    );
    // A form that gives neither a name nor a plan, or both, changes nothing.
    for fields in [
        vec![("csrf", csrf.clone())],
        vec![
            ("csrf", csrf.clone()),
            ("name", "Both".into()),
            ("plan", "free".into()),
        ],
    ] {
        let res = post(owner.clone(), "/portal/account", fields).await;
        assert_eq!(res.status(), 400);
        assert!(res
            .text()
            .await
            .unwrap()
            .contains("either a new name or a new plan"));
    }
    let a = account().await.ok(200);
    assert_eq!(
        (a["name"].as_str(), a["plan"].as_str()),
        (Some("After"), Some("pro"))
    );
    // An unknown plan is refused with the reason, and the plan stays.
    let res = post(
        owner.clone(),
        "/portal/plan",
        vec![("csrf", csrf.clone()), ("plan", "platinum".into())],
    )
    .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("platinum"));
    assert_eq!(account().await.ok(200)["plan"], "pro");

    // Signing out clears the cookie and ends the session on the server.
    let res = post(owner.clone(), "/portal/logout", vec![("csrf", csrf)]).await;
    let cleared = res.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let home = get_as(format!("{}/portal", app.public), owner).await;
    assert_eq!(home.status(), 401);
    // The member's own session is untouched.
    let home = get_as(format!("{}/portal", app.public), member).await;
    assert_eq!(home.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_portal_keeps_to_its_sessions_mode_and_to_the_self_service_groups_served() {
    let app = spawn_app_with(
        "[self_service]\nendpoints = [\"account\", \"usage\", \"api_keys\", \"portal\"]\n\
         [plans.tiers.default]\n[plans.tiers.pro]\n",
    )
    .await;
    let acc = app.account("Scoped").await;
    let link = link_with(&app, &acc, json!({ "mode": "test" })).await;
    let started = open_link(&app, &link).await;
    let cookie = started.headers()[SET_COOKIE].to_str().unwrap();
    let session = cookie.split(';').next().unwrap().to_string();
    let page = get_as(format!("{}/portal", app.public), &session)
        .await
        .text()
        .await
        .unwrap();
    // Renaming and plan changes are not served here: the page has no such forms.
    assert!(!page.contains("action=\"/portal/plan\""), "{page}");
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = page[at..at + page[at..].find('"').unwrap()].to_string();
    let post = |path: &str, form: Vec<(&'static str, String)>| {
        no_redirects()
            .post(format!("{}{path}", app.public))
            .header("cookie", &session)
            .form(&form)
            .send()
    };

    // A refused form comes back with what was typed and what was wrong; nothing is made.
    let res = post(
        "/portal/keys",
        vec![
            ("csrf", csrf.clone()),
            ("name", "nightly <export>".into()),
            ("scopes", "no:such-scope".into()),
            ("rate_requests", "10".into()),
            ("rate_per_seconds", "60".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(page.contains("id=\"key-form-error\""), "{page}");
    assert!(page.contains("no:such-scope"), "the error names the scope");
    assert!(
        page.contains("value=\"nightly &lt;export&gt;\""),
        "typed name kept, escaped"
    );
    assert!(page.contains(
        "name=\"rate_requests\" type=\"number\" min=\"1\" inputmode=\"numeric\" value=\"10\""
    ));
    let keys = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}/keys"), None)
        .await
        .ok(200);
    assert_eq!(keys, json!([]));

    // A test-mode session makes a test key even when the form names no mode.
    let res = post(
        "/portal/keys",
        vec![
            ("csrf", csrf.clone()),
            ("mode", String::new()),
            ("name", "ci".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let keys = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}/keys"), None)
        .await
        .ok(200);
    let modes: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["test"]);

    // A posted rename or plan change is refused, and changes nothing.
    for (path, field, value) in [
        ("/portal/account", "name", "Renamed"),
        ("/portal/plan", "plan", "pro"),
    ] {
        let res = post(path, vec![("csrf", csrf.clone()), (field, value.into())])
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    let a = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .ok(200);
    assert_eq!(
        (a["name"].as_str(), a["plan"].as_str()),
        (Some("Scoped"), Some("default"))
    );
    app.stop().await;
}

/// The page at `url`, as the session in `cookie` sees it (`/`, which pages escape in text
/// and attributes as `&#x2f;`, read back as `/`).
/// A page fetched with the session in `cookie` (`name=value`), redirects not followed.
async fn get_as(url: impl reqwest::IntoUrl, cookie: impl AsRef<str>) -> reqwest::Response {
    no_redirects()
        .get(url)
        .header("cookie", cookie.as_ref())
        .send()
        .await
        .unwrap()
}

async fn page_text(url: String, cookie: String) -> String {
    get_as(url, cookie)
        .await
        .text()
        .await
        .unwrap()
        .replace("&#x2f;", "/")
}

#[tokio::test]
async fn key_lists_go_on_page_by_page() {
    let app = spawn_app_with("[plans.tiers.default]\nmax_keys = 200\n").await;
    let acc = app.account("Many keys").await;
    let mut ids = Vec::new();
    for i in 0..101 {
        let k = app
            .key(&acc, json!({ "name": format!("k{i}"), "mode": "test" }))
            .await;
        ids.push(k["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    let (_, cookie) = sign_in(&app.admin, ROOT).await;
    let session = cookie.split(';').next().unwrap().to_string();
    let page = |path: String| page_text(format!("{}{path}", app.admin), session.clone());
    let first = page(format!("/console/accounts/{acc}?mode=test")).await;
    assert!(first.contains(&ids[99]) && !first.contains(&ids[100]));
    let next = format!("?mode=test&amp;after={}\" id=\"keys-next\"", ids[99]);
    assert!(first.contains(&next), "{first}");
    let second = page(format!(
        "/console/accounts/{acc}?mode=test&after={}",
        ids[99]
    ))
    .await;
    assert!(second.contains(&ids[100]) && !second.contains(&ids[99]));
    assert!(!second.contains("id=\"keys-next\""));
    assert!(second.contains("id=\"keys-first\""));
    // Anything but a key id is ignored: the first page.
    let odd = page(format!("/console/accounts/{acc}?mode=test&after=%00x")).await;
    assert!(odd.contains(&ids[0]));

    // The portal pages the same way.
    let (portal, _) = portal_session(&app, &acc, "owner").await;
    let portal_page = |path: String| page_text(format!("{}{path}", app.public), portal.clone());
    let first = portal_page("/portal?mode=test".into()).await;
    assert!(first.contains(&ids[99]) && !first.contains(&ids[100]));
    assert!(first.contains("id=\"keys-next\""));
    let second = portal_page(format!("/portal?mode=test&after={}", ids[99])).await;
    assert!(second.contains(&ids[100]) && !second.contains(&ids[99]));
    app.stop().await;
}

#[tokio::test]
async fn the_portal_rolls_and_revokes_keys_it_reaches_and_only_those() {
    let app = spawn_app().await;
    let acc = app.account("Roller").await;
    let other = app.account("Other").await;
    let mine = app
        .key(
            &acc,
            json!({ "name": "mine", "role": "developer", "mode": "live" }),
        )
        .await;
    let theirs = app
        .key(&other, json!({ "name": "theirs", "mode": "live" }))
        .await;
    let (mine_id, theirs_id) = (mine["id"].as_str().unwrap(), theirs["id"].as_str().unwrap());
    let post = |session: String, path: String, form: Vec<(&'static str, String)>| {
        let public = app.public.clone();
        async move {
            no_redirects()
                .post(format!("{public}{path}"))
                .header("cookie", session)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };

    // A member manages no key: refused, nothing changes.
    let (member, csrf) = portal_session(&app, &acc, "member").await;
    let res = post(
        member,
        format!("/portal/keys/{mine_id}/rotate"),
        vec![("csrf", csrf)],
    )
    .await;
    assert_eq!(res.status(), 403);

    let (dev, csrf) = portal_session(&app, &acc, "developer").await;
    // Another account's key looks like no key at all.
    let res = post(
        dev.clone(),
        format!("/portal/keys/{theirs_id}/revoke"),
        vec![("csrf", csrf.clone())],
    )
    .await;
    assert_eq!(res.status(), 404);
    let theirs_now = app
        .admin_call(Method::GET, &format!("/v1/admin/keys/{theirs_id}"), None)
        .await
        .ok(200);
    assert!(theirs_now["revoked_at"].is_null());

    // Rolling shows the new secret once; the old one is refused at once.
    let old = mine["api_key"].as_str().unwrap().to_string();
    let res = post(
        dev.clone(),
        format!("/portal/keys/{mine_id}/rotate"),
        vec![("csrf", csrf.clone()), ("grace_seconds", String::new())],
    )
    .await;
    assert_eq!(res.status(), 201);
    let page = res.text().await.unwrap();
    assert!(!page.contains(&old));
    assert_eq!(
        app.verify(json!({ "key": old })).await["code"],
        "api_key_revoked"
    );

    // Revoking leads back to the key's page, which says so.
    let res = post(
        dev.clone(),
        format!("/portal/keys/{mine_id}/revoke"),
        vec![("csrf", csrf), ("reason", "left the team".into())],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], format!("/portal/keys/{mine_id}"));
    let k = app
        .admin_call(Method::GET, &format!("/v1/admin/keys/{mine_id}"), None)
        .await
        .ok(200);
    assert_eq!(k["revoked_reason"], "left the team");
    app.stop().await;
}

/// A page's text, `/` read back from `&#x2f;` (see [`page_text`]).
async fn body(res: reqwest::Response) -> String {
    res.text().await.unwrap().replace("&#x2f;", "/")
}

/// A signed-in console: its session cookie and the CSRF token of its forms.
async fn console_session(app: &common::TestApp) -> (String, String) {
    let (status, cookie) = sign_in(&app.admin, ROOT).await;
    assert_eq!(status, 303);
    let session = cookie.split(';').next().unwrap().to_string();
    let page = page_text(format!("{}/console/accounts", app.admin), session.clone()).await;
    (session, csrf_of(&page))
}

/// The CSRF token in a page's first form.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with its token")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

/// A form posted by the session in `cookie`, redirects not followed.
async fn post_form(url: String, cookie: &str, form: &[(&str, &str)]) -> reqwest::Response {
    no_redirects()
        .post(url)
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

/// The secrets a page shows (the read-only `.secret` fields).
fn secrets_on(page: &str) -> Vec<String> {
    page.split("class=\"secret\" type=\"text\" readonly value=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

/// The ids of an account's keys, through the admin API.
async fn key_ids(app: &common::TestApp, acc: &str) -> Vec<String> {
    let keys = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}/keys"), None)
        .await
        .ok(200);
    keys.as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_console_shows_an_accounts_default_keys_once_when_it_is_made_and_approved() {
    let app = spawn_app_with("[keys]\ndefault_sets = true\n").await;
    let (console, csrf) = console_session(&app).await;
    // Made pending: its test pair, each secret shown once on the answer.
    let res = post_form(
        format!("{}/console/accounts", app.admin),
        &console,
        &[
            ("csrf", &csrf),
            ("name", "Defaults Ltd"),
            ("status", "pending"),
        ],
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let page = body(res).await;
    let shown = secrets_on(&page);
    assert_eq!(shown.len(), 2, "{page}");
    assert!(shown[0].starts_with("kw_pk_test_"), "{shown:?}");
    assert!(shown[1].starts_with("kw_sk_test_"), "{shown:?}");
    assert!(page.contains("shown only this once"), "{page}");
    let marker = "data-replace-url=\"/console/accounts/";
    let at = page.find(marker).unwrap() + marker.len();
    let acc = page[at..at + page[at..].find('"').unwrap()].to_string();
    assert!(acc.starts_with("acc_"), "{acc}");
    assert_eq!(app.verify(json!({ "key": shown[1] })).await["valid"], true);
    assert_eq!(key_ids(&app, &acc).await.len(), 2);

    // Approved: its live pair, shown once the same way.
    let res = post_form(
        format!("{}/console/accounts/{acc}/status", app.admin),
        &console,
        &[("csrf", &csrf), ("status", "active")],
    )
    .await;
    assert_eq!(res.status(), 201);
    let page = body(res).await;
    let live = secrets_on(&page);
    assert_eq!(live.len(), 2, "{page}");
    assert!(live[0].starts_with("kw_pk_live_") && live[1].starts_with("kw_sk_live_"));
    assert_eq!(app.verify(json!({ "key": live[1] })).await["valid"], true);
    assert_eq!(key_ids(&app, &acc).await.len(), 4);

    // The account's page never shows them again.
    for mode in ["live", "test"] {
        let page = page_text(
            format!("{}/console/accounts/{acc}?mode={mode}", app.admin),
            console.clone(),
        )
        .await;
        for s in shown.iter().chain(&live) {
            assert!(!page.contains(s.as_str()), "a secret on the account's page");
        }
    }
    // Suspending and approving again makes no new keys: back to the account's page.
    for status in ["suspended", "active"] {
        let res = post_form(
            format!("{}/console/accounts/{acc}/status", app.admin),
            &console,
            &[("csrf", &csrf), ("status", status)],
        )
        .await;
        assert_eq!(res.status(), 303, "{status}");
        assert_eq!(res.headers()[LOCATION], format!("/console/accounts/{acc}"));
    }
    assert_eq!(key_ids(&app, &acc).await.len(), 4);

    // Made active at once: all four.
    let res = post_form(
        format!("{}/console/accounts", app.admin),
        &console,
        &[
            ("csrf", &csrf),
            ("name", "Straight In"),
            ("status", "active"),
        ],
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(secrets_on(&body(res).await).len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn without_the_api_keys_group_the_portal_makes_and_shows_no_keys() {
    let app = spawn_app_with(
        "[self_service]\nendpoints = [\"account\", \"portal\"]\n\
         [plans.tiers.default]\nquotas = [ { unit = \"requests\", limit = 50, period = \"month\" } ]\n",
    )
    .await;
    let acc = app.account("No keys here").await;
    let (id, token) = app.live_key(&acc).await;
    let (portal, csrf) = portal_session(&app, &acc, "owner").await;
    let home = page_text(format!("{}/portal", app.public), portal.clone()).await;
    assert!(home.contains("No keys here"), "{home}");
    for absent in [
        "id=\"create-key\"",
        id.as_str(),
        "Usage this period",
        "Requests by outcome",
    ] {
        assert!(!home.contains(absent), "{absent} on {home}");
    }

    let res = post_form(
        format!("{}/portal/keys", app.public),
        &portal,
        &[("csrf", &csrf), ("name", "sneaky")],
    )
    .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        key_ids(&app, &acc).await,
        std::slice::from_ref(&id),
        "no key was made"
    );
    let page = get_as(format!("{}/portal/keys/{id}", app.public), &portal).await;
    assert_eq!(page.status(), 404);
    for action in ["rotate", "revoke"] {
        let res = post_form(
            format!("{}/portal/keys/{id}/{action}", app.public),
            &portal,
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(res.status(), 404, "{action}");
    }
    assert_eq!(app.verify(json!({ "key": token })).await["valid"], true);
    app.stop().await;
}

const MASTER_KEY: &str = "6b657977617264656e2d746573742d6d61737465722d6b65792d303132333435";

#[tokio::test]
async fn the_console_disables_enables_rotates_with_grace_and_reveals_only_test_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("master.key");
    std::fs::write(&master, MASTER_KEY).unwrap();
    let app = spawn_app_with(&format!(
        "[keys]\nrecoverable_test_secrets = true\nmaster_key_file = \"{}\"\n",
        master.display()
    ))
    .await;
    let acc = app.account("Switches").await;
    let (id, first) = app.live_key(&acc).await;
    let (console, csrf) = console_session(&app).await;
    let key_page = || page_text(format!("{}/console/keys/{id}", app.admin), console.clone());

    // Disabled: refused; enabled again: accepted.
    let set = |enabled: &'static str| {
        let (url, console, csrf) = (
            format!("{}/console/keys/{id}/enabled", app.admin),
            console.clone(),
            csrf.clone(),
        );
        async move { post_form(url, &console, &[("csrf", &csrf), ("enabled", enabled)]).await }
    };
    let res = set("false").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()[LOCATION], format!("/console/keys/{id}"));
    let v = app.verify(json!({ "key": first })).await;
    assert_eq!(
        (v["valid"].as_bool(), v["code"].as_str()),
        (Some(false), Some("api_key_disabled"))
    );
    let page = key_page().await;
    assert!(
        page.contains("<dd id=\"key-state\">disabled</dd>"),
        "{page}"
    );
    assert!(page.contains(">Enable</button>"));
    set("true").await;
    assert_eq!(app.verify(json!({ "key": first })).await["valid"], true);
    assert!(key_page()
        .await
        .contains("<dd id=\"key-state\">active</dd>"));
    assert_eq!(set("maybe").await.status(), 400);

    // Rotated with a grace period of 60 s: both secrets work until it ends.
    let res = post_form(
        format!("{}/console/keys/{id}/rotate", app.admin),
        &console,
        &[("csrf", &csrf), ("grace_seconds", "60")],
    )
    .await;
    assert_eq!(res.status(), 201);
    let page = body(res).await;
    assert!(page.contains("Key rotated"), "{page}");
    let second = secrets_on(&page).pop().unwrap();
    assert_ne!(second, first);
    assert_eq!(app.verify(json!({ "key": first })).await["valid"], true);
    assert_eq!(app.verify(json!({ "key": second })).await["valid"], true);
    assert!(key_page().await.contains("Previous secret works until"));
    app.clock.advance_ms(61_000);
    assert_eq!(
        app.verify(json!({ "key": first })).await["code"],
        "api_key_revoked"
    );
    assert_eq!(app.verify(json!({ "key": second })).await["valid"], true);

    // A live key never offers "reveal", nor reveals when asked.
    assert!(!key_page().await.contains("id=\"reveal\""));
    let res = post_form(
        format!("{}/console/keys/{id}/reveal", app.admin),
        &console,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(res.status(), 409);
    assert!(!body(res).await.contains(&second));
    // A test key made with recoverable test secrets on does.
    let (test_id, test_token) = app.test_key(&acc).await;
    let page = page_text(
        format!("{}/console/keys/{test_id}", app.admin),
        console.clone(),
    )
    .await;
    assert!(page.contains("id=\"reveal\""), "{page}");
    let res = post_form(
        format!("{}/console/keys/{test_id}/reveal", app.admin),
        &console,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(secrets_on(&body(res).await), [test_token]);
    app.stop().await;
}

/// The event types of an audit page, top to bottom.
fn audit_types(page: &str) -> Vec<String> {
    page.split("</td><td data-label=\"Type\"><code>")
        .skip(1)
        .map(|rest| rest[..rest.find('<').unwrap()].to_string())
        .collect()
}

#[tokio::test]
async fn the_audit_page_filters_by_account_type_and_date() {
    let app = spawn_app().await;
    let a = app.account("Audited A").await;
    let b = app.account("Audited B").await;
    let (ka, _) = app.live_key(&a).await;
    app.live_key(&b).await;
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/keys/{ka}/revoke"),
        Some(json!({})),
    )
    .await
    .ok(200);
    // Two days later, one more change.
    app.clock.advance_ms(2 * 86_400_000);
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/accounts/{b}"),
        Some(json!({ "name": "Audited B2" })),
    )
    .await
    .ok(200);
    let (console, _) = console_session(&app).await;
    let audit = |query: String| {
        page_text(
            format!("{}/console/audit?{query}", app.admin),
            console.clone(),
        )
    };

    let page = audit(String::new()).await;
    let all = audit_types(&page);
    assert!(
        page.contains("&quot;reason&quot;"),
        "each event's data: {page}"
    );
    assert_eq!(
        all.first().map(String::as_str),
        Some("account.updated"),
        "newest first: {all:?}"
    );
    for t in ["account.created", "key.created", "key.revoked"] {
        assert!(all.iter().any(|x| x == t), "{t} in {all:?}");
    }

    let page = audit(format!("account_id={a}")).await;
    assert_eq!(
        audit_types(&page),
        ["key.revoked", "key.created", "account.created"]
    );
    assert!(!page.contains(&b), "another account's events");
    assert!(
        page.contains(&format!("value=\"{a}\"")),
        "the filter is kept in its field"
    );

    let created = audit_types(&audit("type=key.created".into()).await);
    assert_eq!(created, ["key.created", "key.created"]);
    let keys = audit_types(&audit("type=key.*".into()).await);
    assert_eq!(keys, ["key.revoked", "key.created", "key.created"]);
    assert_eq!(
        audit_types(&audit(format!("account_id={b}&type=key.*")).await),
        ["key.created"]
    );

    // Since a date: from that day's start on.
    assert_eq!(
        audit_types(&audit("since=2026-03-22".into()).await),
        ["account.updated"]
    );
    assert_eq!(
        audit_types(&audit("since=2026-03-23".into()).await),
        Vec::<String>::new()
    );
    assert!(audit(String::from("since=2026-03-23"))
        .await
        .contains("No events match."));
    let bad = get_as(
        format!("{}/console/audit?since=yesterday", app.admin),
        &console,
    )
    .await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn key_pages_show_their_activity_chart_counts_and_the_portal_its_quota() {
    let app = spawn_app_with(
        "[plans.tiers.default]\nquotas = [ { unit = \"requests\", limit = 1000, period = \"month\" } ]\n",
    )
    .await;
    let acc = app.account("Busy").await;
    let (id, token) = app
        .key_pair(
            &acc,
            json!({ "mode": "live", "name": "busy", "scopes": ["account:read"] }),
        )
        .await;
    for path in ["/orders/1", "/orders/2", "/orders/3"] {
        let v = app
            .verify(
                json!({ "key": token, "method": "POST", "path": path, "scopes": ["account:read"] }),
            )
            .await;
        assert_eq!(v["valid"], true, "{v}");
    }
    let v = app
        .verify(
            json!({ "key": token, "method": "GET", "path": "/usage", "scopes": ["usage:read"] }),
        )
        .await;
    assert_eq!(v["code"], "insufficient_scope", "{v}");
    app.flush_writer().await;

    let (console, _) = console_session(&app).await;
    let page = page_text(format!("{}/console/keys/{id}", app.admin), console).await;
    let table = &page[page
        .find("<table class=\"activity rows\">")
        .expect("an activity table")..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows: Vec<&str> = table.split("<tr><td>").skip(1).collect();
    assert_eq!(rows.len(), 4, "{table}");
    // Newest first: the refused one, then the three allowed.
    let cells = |method: &str, path: &str, status: u16, code: &str| {
        format!(
            "<td data-label=\"Method\">{method}</td><td data-label=\"Path\"><code>{path}</code></td>\
             <td data-label=\"Status\">{status}</td><td data-label=\"Code\"><code>{code}</code>"
        )
    };
    assert!(
        rows[0].contains(&cells("GET", "/usage", 403, "insufficient_scope")),
        "{}",
        rows[0]
    );
    for (row, path) in rows[1..]
        .iter()
        .zip(["/orders/3", "/orders/2", "/orders/1"])
    {
        assert!(row.contains(&cells("POST", path, 200, "valid")), "{row}");
    }
    assert!(
        page.contains("(4 in all; insufficient_scope: 1; valid: 3)"),
        "the chart's caption counts them: {page}"
    );

    let (portal, _) = portal_session(&app, &acc, "owner").await;
    let home = page_text(format!("{}/portal", app.public), portal.clone()).await;
    assert!(home.contains("requests: 3 of 1000 (month)"), "{home}");
    assert!(
        home.contains("(4 in all; insufficient_scope: 1; valid: 3)"),
        "{home}"
    );
    let key = page_text(format!("{}/portal/keys/{id}", app.public), portal).await;
    assert_eq!(key.matches("<tr><td>").count(), 4, "{key}");
    app.stop().await;
}

/// A new portal link for `acc`: the 201 answer's body.
async fn new_link(app: &common::TestApp, acc: &str) -> serde_json::Value {
    link_with(app, acc, json!({})).await
}

/// A new portal link for `acc` asked for with `body`: the 201 answer's body.
async fn link_with(app: &common::TestApp, acc: &str, body: serde_json::Value) -> serde_json::Value {
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/accounts/{acc}/portal-sessions"),
        Some(body),
    )
    .await
    .ok(201)
}

/// The link's page on the test's public listener (the link's `GET`): the answer.
async fn link_page(app: &common::TestApp, link: &serde_json::Value) -> reqwest::Response {
    let raw = link["url"].as_str().unwrap();
    let url = format!("{}{}", app.public, &raw[raw.find("/portal/").unwrap()..]);
    no_redirects().get(url).send().await.unwrap()
}

/// Uses a link as its page's button does (the form posting its token): the answer.
async fn open_link(app: &common::TestApp, link: &serde_json::Value) -> reqwest::Response {
    let raw = link["url"].as_str().unwrap();
    let token = &raw[raw.find("token=").unwrap() + 6..];
    no_redirects()
        .post(format!("{}/portal/start", app.public))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_portal_links_page_uses_nothing_until_its_button_is_pressed() {
    let app = spawn_app().await;
    let acc = app.account("Previewed & Co").await;
    let link = link_with(&app, &acc, json!({ "mode": "test" })).await;
    let raw = link["url"].as_str().unwrap();
    let token = &raw[raw.find("token=").unwrap() + 6..];
    // A chat tool's preview, a mail scanner, the customer: three fetches of the link.
    for _ in 0..3 {
        let page = link_page(&app, &link).await;
        assert_eq!(page.status(), 200);
        assert!(!page.headers().contains_key(SET_COOKIE));
        assert_safety_headers(&page, "a portal link's page");
        // The token is in the page's address: no other site is told it.
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        let html = body(page).await;
        assert!(html.contains("Previewed &amp; Co"), "{html}");
        assert!(html.contains("(test)"), "{html}");
        assert!(
            html.contains("<form method=\"post\" action=\"/portal/start\">"),
            "{html}"
        );
        assert!(
            html.contains(&format!("name=\"token\" value=\"{token}\"")),
            "{html}"
        );
    }
    // The button: the session opens, once.
    let started = open_link(&app, &link).await;
    assert_eq!(started.status(), 303);
    assert_eq!(started.headers()[LOCATION], "/portal");
    let session = session_of(&started);
    let home = get_as(format!("{}/portal", app.public), &session).await;
    assert_eq!(home.status(), 200);
    let used = link_page(&app, &link).await;
    assert_eq!(used.status(), 404);
    // Opening a link changes nothing, and its page does not say otherwise.
    let html = body(used).await;
    assert!(html.contains("already been used or has expired"), "{html}");
    assert!(html.contains("<h1>Not found</h1>"), "{html}");
    assert_eq!(open_link(&app, &link).await.status(), 404);

    // Made-up, empty and missing tokens: the same refusal, and no cookie.
    for form in [vec![("token", "not-a-token")], vec![("token", "")], vec![]] {
        let res = no_redirects()
            .post(format!("{}/portal/start", app.public))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{form:?}");
        assert!(!res.headers().contains_key(SET_COOKIE));
    }
    let res = no_redirects()
        .get(format!("{}/portal/start?token=not-a-token", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // An expired link's page says so; a suspended account's link offers nothing.
    let late = new_link(&app, &acc).await;
    app.clock.advance_ms(5 * 60_000);
    assert_eq!(link_page(&app, &late).await.status(), 404);
    let fresh = new_link(&app, &acc).await;
    app.set_account_status(&acc, "suspended").await;
    assert_eq!(link_page(&app, &fresh).await.status(), 404);

    // In Spanish when asked.
    let other = app.account("Otra").await;
    let link = new_link(&app, &other).await;
    let raw = link["url"].as_str().unwrap();
    let url = format!("{}{}", app.public, &raw[raw.find("/portal/").unwrap()..]);
    let es = no_redirects()
        .get(url)
        .header(ACCEPT_LANGUAGE, "es")
        .send()
        .await
        .unwrap();
    let es = body(es).await;
    assert!(es.contains("Abrir el portal"), "{es}");
    app.stop().await;
}

/// The session cookie (`name=value`) a portal link's answer set.
fn session_of(res: &reqwest::Response) -> String {
    let cookie = res.headers()[SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn portal_links_last_five_minutes_and_portal_sessions_an_hour() {
    let app = spawn_app().await;
    let acc = app.account("Timed").await;
    let link = new_link(&app, &acc).await;
    assert_eq!(
        link["expires_at"],
        keywarden_server::views::ts(common::T0 + 5 * 60_000)
    );
    let late = new_link(&app, &acc).await;
    // At 4:59 a link opens; at 5:00 it no longer does.
    app.clock.advance_ms(5 * 60_000 - 1_000);
    let opened = open_link(&app, &link).await;
    assert_eq!(opened.status(), 303);
    let session = session_of(&opened);
    assert!(opened.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=3600"));
    app.clock.advance_ms(1_000);
    let refused = open_link(&app, &late).await;
    assert_eq!(refused.status(), 404);
    assert!(refused.headers().get(SET_COOKIE).is_none());

    // The session lasts an hour from its opening.
    let home = |session: String| {
        let url = format!("{}/portal", app.public);
        async move { get_as(url, session).await.status() }
    };
    app.clock.advance_ms(3_600_000 - 2_000);
    assert_eq!(home(session.clone()).await, 200);
    app.clock.advance_ms(1_000);
    assert_eq!(home(session).await, 401);
    app.stop().await;
}

#[tokio::test]
async fn the_portal_key_form_keeps_to_the_sessions_role_and_the_plans_key_limit() {
    let app = spawn_app_with("[plans.tiers.default]\nmax_keys = 2\n").await;
    let acc = app.account("Limited").await;
    let (dev, csrf) = portal_session(&app, &acc, "developer").await;
    let home = page_text(format!("{}/portal", app.public), dev.clone()).await;
    assert!(!home.contains("<option value=\"owner\""), "{home}");
    let create = |role: &'static str, name: &'static str| {
        let (url, dev, csrf) = (
            format!("{}/portal/keys", app.public),
            dev.clone(),
            csrf.clone(),
        );
        async move {
            post_form(
                url,
                &dev,
                &[("csrf", &csrf), ("name", name), ("role", role)],
            )
            .await
        }
    };
    // A developer cannot make an owner's key.
    let res = create("owner", "too strong").await;
    assert_eq!(res.status(), 403);
    let page = body(res).await;
    assert!(page.contains("id=\"key-form-error\""), "{page}");
    assert!(key_ids(&app, &acc).await.is_empty(), "no key was made");
    assert_eq!(create("developer", "one").await.status(), 201);
    assert_eq!(create("member", "two").await.status(), 201);
    // The plan's limit reached: the form says so, and makes nothing.
    let res = create("member", "three").await;
    assert_eq!(res.status(), 403);
    let page = body(res).await;
    assert!(
        page.contains("<code id=\"key-form-error-code\">plan_limit_reached</code>"),
        "{page}"
    );
    assert!(page.contains("value=\"three\""), "the form as typed");
    assert_eq!(key_ids(&app, &acc).await.len(), 2);
    app.stop().await;
}

/// Asserts the headers every page of the console and the portal carries.
#[track_caller]
fn assert_safety_headers(res: &reqwest::Response, what: &str) {
    let h = res.headers();
    assert_eq!(
        h.get(CONTENT_SECURITY_POLICY).map(|v| v.to_str().unwrap()),
        Some(keywarden_server::web::CSP),
        "{what}"
    );
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["cache-control"], "no-store", "{what}");
}

#[tokio::test]
async fn portal_pages_carry_the_safety_headers_and_portal_sessions_are_stored_hashed() {
    let app = spawn_app().await;
    let acc = app.account("Headers").await;
    let link = new_link(&app, &acc).await;
    let raw = link["url"].as_str().unwrap();
    let token = &raw[raw.find("token=").unwrap() + 6..];
    let now = app.clock.now_ms();
    let store = &app.state.store;
    // The link is stored under its hash only.
    assert!(store.get_web_session(token, now).await.unwrap().is_none());
    let hash = keywarden_server::web::id_hash(token);
    assert!(store.get_web_session(&hash, now).await.unwrap().is_some());

    let started = open_link(&app, &link).await;
    assert_eq!(started.status(), 303);
    assert_safety_headers(&started, "the /portal/start redirect");
    let session = session_of(&started);
    let sid = session.split_once('=').unwrap().1.to_string();
    assert_eq!(sid.len(), 64, "256 random bits");
    assert_ne!(sid, token);
    assert!(store.get_web_session(&sid, now).await.unwrap().is_none());
    let stored = store
        .get_web_session(&keywarden_server::web::id_hash(&sid), now)
        .await
        .unwrap()
        .expect("the session, under its hash");
    assert_eq!(stored.kind, keywarden_core::model::WebSessionKind::Portal);
    assert_eq!(stored.account_id.as_deref(), Some(acc.as_str()));

    let home = get_as(format!("{}/portal", app.public), &session).await;
    assert_eq!(home.status(), 200);
    assert_safety_headers(&home, "/portal");
    let csrf = csrf_of(&body(home).await);
    let made = post_form(
        format!("{}/portal/keys", app.public),
        &session,
        &[("csrf", &csrf), ("name", "headers")],
    )
    .await;
    assert_eq!(made.status(), 201);
    assert_safety_headers(&made, "a page showing a secret");
    let id = key_ids(&app, &acc).await.pop().unwrap();
    let key = get_as(format!("{}/portal/keys/{id}", app.public), &session).await;
    assert_eq!(key.status(), 200);
    assert_safety_headers(&key, "a key's page");
    let ended = no_redirects()
        .get(format!("{}/portal", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 401);
    assert_safety_headers(&ended, "a page without a session");
    let css = no_redirects()
        .get(format!("{}/portal/assets/app.js", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(css.headers().contains_key(CONTENT_SECURITY_POLICY));
    app.stop().await;
}

#[tokio::test]
async fn erasing_an_account_ends_its_portal_sessions_and_links() {
    let app = spawn_app().await;
    let acc = app.account("Erased").await;
    let (portal, _) = portal_session(&app, &acc, "owner").await;
    let unused = new_link(&app, &acc).await;
    assert_eq!(
        get_as(format!("{}/portal", app.public), &portal)
            .await
            .status(),
        200
    );
    app.admin_call(Method::DELETE, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .ok(200);
    let home = get_as(format!("{}/portal", app.public), &portal).await;
    assert_eq!(home.status(), 401);
    let sid = portal.split_once('=').unwrap().1;
    let hash = keywarden_server::web::id_hash(sid);
    let now = app.clock.now_ms();
    assert!(app
        .state
        .store
        .get_web_session(&hash, now)
        .await
        .unwrap()
        .is_none());
    assert_eq!(open_link(&app, &unused).await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_root_key_taken_out_of_the_configuration_ends_the_portal_links_and_sessions_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kw.db");
    let other = "root_test_key_fedcba9876543210";
    let app = spawn_on(&db, ROOT).await;
    let acc = app.account("Rooted").await;
    let (session, _) = portal_session(&app, &acc, "owner").await;
    let unused = new_link(&app, &acc).await;
    let home = |public: String, session: String| async move {
        get_as(format!("{public}/portal"), session).await.status()
    };
    assert_eq!(home(app.public.clone(), session.clone()).await, 200);
    app.stop().await;

    // Restarted with the same key beside another: both still count.
    let app = spawn_on(&db, &format!("{ROOT},{other}")).await;
    assert_eq!(home(app.public.clone(), session.clone()).await, 200);
    // A link made with the other key.
    let res = app
        .client
        .post(format!(
            "{}/v1/admin/accounts/{acc}/portal-sessions",
            app.admin
        ))
        .bearer_auth(other)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let by_other: serde_json::Value = res.json().await.unwrap();
    app.stop().await;

    // The first key taken out: its session and its unused link end; the other key's link
    // still opens.
    let app = spawn_on(&db, other).await;
    assert_eq!(home(app.public.clone(), session.clone()).await, 401);
    let hash = keywarden_server::web::id_hash(session.split_once('=').unwrap().1);
    let now = app.clock.now_ms();
    assert!(app
        .state
        .store
        .get_web_session(&hash, now)
        .await
        .unwrap()
        .is_none());
    assert_eq!(open_link(&app, &unused).await.status(), 404);
    let opened = open_link(&app, &by_other).await;
    assert_eq!(opened.status(), 303);
    assert_eq!(home(app.public.clone(), session_of(&opened)).await, 200);
    app.stop().await;
}

/// The overview's numbers: accounts, live keys, test keys.
async fn census_on(app: &common::TestApp) -> (String, String, String) {
    let (console, _) = console_session(app).await;
    let page = page_text(format!("{}/console", app.admin), console).await;
    let num = |id: &str| {
        let marker = format!("id=\"{id}\">");
        let at = page.find(&marker).unwrap() + marker.len();
        page[at..at + page[at..].find('<').unwrap()].to_string()
    };
    (
        num("census-accounts"),
        num("census-live"),
        num("census-test"),
    )
}

/// The overview counts only keys in use: enabled, unexpired and unrevoked.
async fn overview_counts_keys_in_use(app: &common::TestApp) {
    let acc = app.account("Census").await;
    let (disabled, _) = app.live_key(&acc).await;
    let (revoked, _) = app.live_key(&acc).await;
    app.live_key(&acc).await;
    app.key(
        &acc,
        json!({ "mode": "live", "name": "soon", "expires_at": keywarden_server::views::ts(common::T0 + 60_000) }),
    )
    .await;
    app.test_key(&acc).await;
    assert_eq!(census_on(app).await, ("1".into(), "4".into(), "1".into()));
    app.admin_call(
        Method::PATCH,
        &format!("/v1/admin/keys/{disabled}"),
        Some(json!({ "enabled": false })),
    )
    .await
    .ok(200);
    app.admin_call(
        Method::POST,
        &format!("/v1/admin/keys/{revoked}/revoke"),
        Some(json!({})),
    )
    .await
    .ok(200);
    assert_eq!(census_on(app).await, ("1".into(), "2".into(), "1".into()));
    // A minute on, the key that expires then is no longer counted.
    app.clock.advance_ms(60_000);
    assert_eq!(census_on(app).await, ("1".into(), "1".into(), "1".into()));
}

#[tokio::test]
async fn the_overview_counts_only_keys_in_use_on_sqlite() {
    let app = spawn_app().await;
    overview_counts_keys_in_use(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn the_overview_counts_only_keys_in_use_on_postgres() {
    let Some(pg) = common::pg::spawn_pg_app().await else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    overview_counts_keys_in_use(&pg.app).await;
    pg.stop().await;
}

#[tokio::test]
async fn every_form_without_its_sessions_token_is_refused_before_anything_is_read() {
    let app = spawn_app().await;
    let acc = app.account("Guarded").await;
    let (key, token) = app.live_key(&acc).await;
    let (console, csrf) = console_session(&app).await;
    let (portal, portal_csrf) = portal_session(&app, &acc, "owner").await;
    let console_forms = [
        "/console/logout".to_string(),
        "/console/accounts".into(),
        format!("/console/accounts/{acc}/status"),
        format!("/console/accounts/{acc}/plan"),
        format!("/console/accounts/{acc}/erase"),
        format!("/console/accounts/{acc}/keys"),
        format!("/console/keys/{key}/enabled"),
        format!("/console/keys/{key}/reveal"),
        format!("/console/keys/{key}/rotate"),
        format!("/console/keys/{key}/revoke"),
        "/console/applications".into(),
        // The application does not exist: the token is checked before it is looked up.
        "/console/applications/app_none/secrets/production/rotate".into(),
    ];
    let portal_forms = [
        "/portal/logout".to_string(),
        "/portal/account".into(),
        "/portal/plan".into(),
        "/portal/keys".into(),
        format!("/portal/keys/{key}/rotate"),
        format!("/portal/keys/{key}/revoke"),
        "/portal/authorize".into(),
    ];
    // Each form otherwise valid, with a token of another session or none at all.
    let fields = |token: &str| {
        let mut form = vec![
            ("status", "suspended".to_string()),
            ("plan", "default".into()),
            ("confirm", "Guarded".into()),
            ("name", "Forged".into()),
            ("enabled", "false".into()),
            ("mode", "live".into()),
        ];
        if !token.is_empty() {
            form.push(("csrf", token.to_string()));
        }
        form
    };
    let sessions = [
        (
            app.admin.clone(),
            &console,
            &console_forms[..],
            portal_csrf.as_str(),
            "/console",
        ),
        (
            app.public.clone(),
            &portal,
            &portal_forms[..],
            csrf.as_str(),
            "/portal",
        ),
    ];
    for (base, cookie, forms, foreign, home) in sessions {
        for path in forms {
            for token in [foreign, ""] {
                let res = no_redirects()
                    .post(format!("{base}{path}"))
                    .header("cookie", cookie.as_str())
                    .form(&fields(token))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 403, "{path} with {token:?}");
                let page = body(res).await;
                assert!(
                    page.contains("did not come from this page"),
                    "{path}: {page}"
                );
                assert!(page.contains(&format!("href=\"{home}\"")), "{path}: {page}");
            }
        }
    }
    // With its token, a form whose fields cannot be read (a field given twice) is refused
    // with 400, naming the field, and changes nothing either.
    let res = no_redirects()
        .post(format!("{}/console/accounts/{acc}/status", app.admin))
        .header("cookie", console.as_str())
        .form(&[
            ("csrf", csrf.as_str()),
            ("status", "suspended"),
            ("status", "active"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let page = body(res).await;
    assert!(page.contains("could not be read (status: "), "{page}");
    // Nothing changed: the account, its one key and both sessions are as they were.
    let account = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}"), None)
        .await
        .ok(200);
    assert_eq!(
        (account["name"].as_str(), account["status"].as_str()),
        (Some("Guarded"), Some("active"))
    );
    assert_eq!(app.verify(json!({ "key": token })).await["valid"], true);
    let keys = app
        .admin_call(Method::GET, &format!("/v1/admin/accounts/{acc}/keys"), None)
        .await
        .ok(200);
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    let still = page_text(format!("{}/console/accounts", app.admin), console.clone()).await;
    assert!(still.contains("Guarded"), "{still}");
    let still = page_text(format!("{}/portal", app.public), portal.clone()).await;
    assert!(still.contains("Guarded"), "{still}");
    app.stop().await;
}

#[tokio::test]
async fn error_pages_keep_the_navigation_of_a_signed_in_session() {
    let app = spawn_app().await;
    let acc = app.account("Lost").await;
    let nav = "<nav aria-label=\"Main\">";

    // The console: an unknown key's page is an error with the bar and its sign-out form.
    let (console, csrf) = console_session(&app).await;
    let res = get_as(format!("{}/console/keys/key_nope", app.admin), &console).await;
    assert_eq!(res.status(), 404);
    let page = body(res).await;
    assert!(page.contains(nav), "{page}");
    assert!(page.contains("href=\"/console/accounts\""), "{page}");
    assert_eq!(csrf_of(&page), csrf);
    // A form without its token is refused on a page that still has the bar.
    let refused = post_form(
        format!("{}/console/accounts", app.admin),
        &console,
        &[("name", "x")],
    )
    .await;
    assert_eq!(refused.status(), 403);
    assert!(body(refused).await.contains(nav));

    // The portal: the same, with the session's way back to the operator's application.
    let link = link_with(
        &app,
        &acc,
        json!({ "return_url": "https://app.example.com/settings" }),
    )
    .await;
    let session = session_of(&open_link(&app, &link).await);
    let res = get_as(format!("{}/portal/keys/key_nope", app.public), &session).await;
    assert_eq!(res.status(), 404);
    let page = body(res).await;
    assert!(page.contains(nav), "{page}");
    assert!(page.contains("No such key"), "{page}");
    assert!(
        page.contains("href=\"https://app.example.com/settings\""),
        "{page}"
    );
    assert!(page.contains("action=\"/portal/logout\""), "{page}");

    // Without a session, an error page has no bar: nothing to navigate or sign out of.
    let res = no_redirects()
        .get(format!("{}/portal", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(!body(res).await.contains(nav));
    let res = no_redirects()
        .get(format!("{}/portal/start?token=nope", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(!body(res).await.contains(nav));
    app.stop().await;
}
