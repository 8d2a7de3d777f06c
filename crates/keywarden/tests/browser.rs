//! The operator console and the customer portal, driven through the real binary by a real
//! headless Chromium (Debian's `chromium` and `chromium-driver`) over WebDriver
//! (`docs/console.md`). Each test saves a screenshot of the page it ends on under
//! `target/screenshots/`, so a person can look.
//!
//! Without `chromedriver` the tests fail when `CI` is set, and are skipped with a message
//! otherwise.

#![cfg(unix)]

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT_KEY: &str = "browser_root_key_0123456789abcdef";
const PEPPER: &str = "browser_test_pepper_0123456789abcdef";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited early ({status})");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never listened"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `chromedriver` and `chromium`, or why the tests cannot run.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(n))
                    .find(|p| p.is_file())
            })
        })
    };
    let driver = find(&["chromedriver"])?;
    let browser = find(&["chromium", "chromium-browser", "google-chrome"])?;
    Some((driver, browser))
}

/// The running binary, a chromedriver and a WebDriver session on it.
struct Rig {
    _server: Proc,
    _driver: Proc,
    _dir: tempfile::TempDir,
    public: u16,
    admin: u16,
    http: reqwest::Client,
    browser: Client,
}

impl Rig {
    /// `None` (after saying why) when Chromium is missing on a developer's machine; a
    /// failure in CI.
    async fn start() -> Option<Rig> {
        Self::start_with("").await
    }

    /// [`Rig::start`] with `extra` TOML at the end of the service's configuration.
    async fn start_with(extra: &str) -> Option<Rig> {
        let Some((driver_bin, browser_bin)) = browser_tools() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium and chromedriver are needed in CI (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipped: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("keywarden.toml"),
            r#"
[plans]
default = "free"
[plans.tiers.free]
quotas = [ { unit = "requests", limit = 1000, period = "month" } ]
[plans.tiers.pro]
quotas = [ { unit = "requests", limit = 100000, period = "month" } ]
"#
            .to_string()
                + extra,
        )
        .unwrap();
        let (public, admin) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut server = Command::new(env!("CARGO_BIN_EXE_keywarden"))
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEYWARDEN_ROOT_KEY", ROOT_KEY)
            .env("KEYWARDEN_PEPPER", PEPPER)
            .env(
                "KEYWARDEN_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("kw.db").display()),
            )
            .env(
                "KEYWARDEN_SERVER__PUBLIC_LISTEN",
                format!("127.0.0.1:{public}"),
            )
            .env(
                "KEYWARDEN_SERVER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(admin, &mut server, "keywarden serve");
        wait_for_port(public, &mut server, "keywarden serve");
        let server = Proc(server);

        let port = free_port();
        let mut driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut driver, "chromedriver");
        let driver = Proc(driver);

        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": browser_bin,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,1000",
                         format!("--user-data-dir={}", dir.path().join("profile").display())],
            }),
        );
        let browser = ClientBuilder::new(hyper_util_connector())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session on chromedriver");
        Some(Rig {
            _server: server,
            _driver: driver,
            _dir: dir,
            public,
            admin,
            http: reqwest::Client::new(),
            browser,
        })
    }

    fn console(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// An admin API call with the root key: (status, JSON body).
    async fn admin_api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = self.console(path);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        }
        .bearer_auth(ROOT_KEY);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/verify`: whether the key is accepted now, and its code.
    async fn verify(&self, key: &str) -> (bool, String) {
        self.verify_body(json!({ "key": key })).await
    }

    /// `POST /v1/verify` with this body: whether it is accepted, and its code.
    async fn verify_body(&self, body: Value) -> (bool, String) {
        let (_, v) = self.admin_api("POST", "/v1/verify", Some(body)).await;
        (
            v["valid"].as_bool().unwrap_or(false),
            v["code"].as_str().unwrap_or("").to_string(),
        )
    }

    /// Saves the page the browser shows as `target/screenshots/{name}.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.browser.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The element, once the page shows it (a page may still be loading).
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        let found = self
            .browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(el) => el,
            Err(e) => {
                let url = self.browser.current_url().await.map(|u| u.to_string());
                let page = self.source().await;
                // The page as it was when the element did not come, for a person to see.
                let test = std::thread::current()
                    .name()
                    .unwrap_or("browser")
                    .to_string();
                let shot = format!("failed_{}", test.replace("::", "_"));
                self.screenshot(&shot).await;
                panic!("{css}: {e}\nat {url:?} (screenshot {shot}.png):\n{page}")
            }
        }
    }

    async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    /// What a form control holds now.
    async fn value(&self, css: &str) -> String {
        let el = self.element(css).await;
        el.prop("value").await.unwrap().unwrap_or_default()
    }

    async fn fill(&self, css: &str, value: &str) {
        let el = self.element(css).await;
        el.clear().await.unwrap();
        el.send_keys(value).await.unwrap();
    }

    /// Clicks a link or a submit button and waits until the next page has loaded.
    async fn click(&self, css: &str) {
        let old = self.element("html").await;
        self.element(css).await.click().await.unwrap();
        self.wait_for_next_page(old).await;
    }

    /// Clicks a control that stays on the page (a checkbox).
    async fn tick(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// Clicks a destructive button, accepts the browser's confirmation, and waits for the
    /// next page.
    async fn click_confirmed(&self, css: &str) {
        let old = self.element("html").await;
        self.element(css).await.click().await.unwrap();
        self.browser.accept_alert().await.unwrap();
        self.wait_for_next_page(old).await;
    }

    /// Waits until `old` (the previous page's root) is gone and the new page is loaded.
    async fn wait_for_next_page(&self, old: fantoccini::elements::Element) {
        let started = Instant::now();
        while old.tag_name().await.is_ok() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the page did not change"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        while self
            .browser
            .execute("return document.readyState", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .as_deref()
            != Some("complete")
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the page did not load"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn source(&self) -> String {
        self.browser.source().await.unwrap()
    }

    /// The HTTP status the page now shown was answered with.
    async fn status(&self) -> u16 {
        let v = self
            .browser
            .execute(
                "return performance.getEntriesByType('navigation')[0].responseStatus",
                vec![],
            )
            .await
            .unwrap();
        v.as_u64().unwrap_or(0) as u16
    }

    /// The path of the page now shown.
    async fn path(&self) -> String {
        self.browser.current_url().await.unwrap().path().to_string()
    }

    /// Runs `script` in the page and returns what it returns.
    async fn run(&self, script: &str) -> Value {
        self.browser.execute(script, vec![]).await.unwrap()
    }

    /// Asserts that every visible form control of the page has a label.
    async fn assert_controls_labelled(&self) {
        let unlabelled = self
            .run(
                "return Array.from(document.querySelectorAll('input, select, textarea'))\
                 .filter(e => e.type !== 'hidden' && e.offsetParent !== null)\
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))\
                 .map(e => e.outerHTML)",
            )
            .await;
        assert_eq!(
            unlabelled,
            json!([]),
            "controls without a label on {}",
            self.path().await
        );
    }

    /// The new secret a page shows in `#{id}`.
    async fn secret(&self, id: &str) -> String {
        self.value(&format!("#{id}")).await
    }

    async fn sign_in(&self) {
        self.browser.goto(&self.console("/console")).await.unwrap();
        self.fill("#root_key", ROOT_KEY).await;
        self.click("#sign-in").await;
        assert_eq!(self.browser.current_url().await.unwrap().path(), "/console");
    }

    /// A new account through the admin API: its id.
    async fn account(&self, name: &str) -> String {
        let (status, a) = self
            .admin_api("POST", "/v1/admin/accounts", Some(json!({ "name": name })))
            .await;
        assert_eq!(status, 201, "{a}");
        a["id"].as_str().unwrap().to_string()
    }

    /// A single-use portal link for the account.
    async fn portal_link(&self, account: &str, body: Value) -> String {
        let (status, link) = self
            .admin_api(
                "POST",
                &format!("/v1/admin/accounts/{account}/portal-sessions"),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{link}");
        let url = link["url"].as_str().unwrap().to_string();
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{}/portal/", self.public)),
            "{url}"
        );
        url
    }

    /// Opens a portal link and presses its button, which uses the link: the portal's home
    /// page is shown.
    async fn open_portal(&self, link: &str) {
        self.browser.goto(link).await.unwrap();
        self.click("#open-portal").await;
        assert_eq!(self.path().await, "/portal");
    }

    async fn close(self) {
        let _ = self.browser.clone().close().await;
    }
}

fn hyper_util_connector() -> hyper_util::client::legacy::connect::HttpConnector {
    hyper_util::client::legacy::connect::HttpConnector::new()
}

/// Sign in; create an account and a live key; the secret is shown once and gone after a
/// reload; roll it and the old secret is refused by `POST /v1/verify`; revoke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_key_lifecycle() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    rig.sign_in().await;
    rig.click("a[href='/console/accounts']").await;
    rig.fill("#account-name", "Acme Browsers").await;
    rig.click("#create-account-submit").await;
    assert!(rig.text("h1").await.contains("Acme Browsers"));

    rig.screenshot("console_account").await;
    let url = rig.browser.current_url().await.unwrap();
    let account_id = url.path().rsplit('/').next().unwrap().to_string();
    assert!(account_id.starts_with("acc_"), "{url}");
    rig.fill("#key-name", "billing backend").await;
    rig.fill("#key-description", "vault: prod/billing").await;
    // A refused form comes back as typed, with what was wrong; no key is made.
    rig.fill("#key-ips", "203.0.113.0/24, not-an-address").await;
    rig.click("#create-key-submit").await;
    let error = rig.text("#key-form-error").await;
    assert!(error.contains("not-an-address"), "{error}");
    assert_eq!(rig.value("#key-name").await, "billing backend");
    assert_eq!(rig.value("#key-description").await, "vault: prod/billing");
    assert_eq!(
        rig.value("#key-ips").await,
        "203.0.113.0/24, not-an-address"
    );
    let (_, keys) = rig
        .admin_api(
            "GET",
            &format!("/v1/admin/accounts/{account_id}/keys"),
            None,
        )
        .await;
    assert_eq!(keys, json!([]));
    rig.screenshot("console_key_form_refused").await;
    rig.fill("#key-ips", "").await;
    rig.click("#create-key-submit").await;
    let secret_field = rig.browser.find(Locator::Css("#secret")).await.unwrap();
    let first = secret_field.prop("value").await.unwrap().unwrap();
    assert!(first.starts_with("kw_sk_live_"), "{first}");
    assert!(rig.text(".warning").await.contains("shown only"));
    assert_eq!(rig.verify(&first).await, (true, "valid".into()));
    rig.screenshot("console_secret_shown_once").await;

    // Reloading shows the key's own page: no secret anywhere on it.
    rig.browser.refresh().await.unwrap();
    assert!(rig.text("#key-state").await.contains("active"));
    assert_eq!(
        rig.browser.current_url().await.unwrap().path(),
        format!("/console/keys/{}", rig.text("#key-id").await)
    );
    let page = rig.source().await;
    assert!(!page.contains(&first), "the secret survived a reload");
    assert!(rig.browser.find(Locator::Css("#secret")).await.is_err());

    // Roll: a new secret, the old one refused at once.
    rig.click("#roll").await;
    let second = rig
        .browser
        .find(Locator::Css("#secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first, second);
    assert_eq!(rig.verify(&first).await, (false, "api_key_revoked".into()));
    assert_eq!(rig.verify(&second).await, (true, "valid".into()));

    // Revoke with a reason.
    rig.click("#done").await;
    rig.fill("#reason", "rotated out").await;
    rig.click_confirmed("#revoke").await;
    assert!(rig.text("#key-state").await.contains("revoked"));
    assert!(!rig.verify(&second).await.0);
    rig.screenshot("console_key_revoked").await;

    // The overview counts the account and its key's decisions.
    rig.browser.goto(&rig.console("/console")).await.unwrap();
    assert_eq!(rig.text("#census-accounts").await, "1");
    assert_eq!(
        rig.text("#census-live").await,
        "0",
        "the only live key is revoked"
    );
    rig.screenshot("console_overview").await;
    rig.close().await;
}

/// A form posted without its CSRF token changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_form_without_csrf_changes_nothing() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    rig.sign_in().await;
    rig.browser
        .goto(&rig.console("/console/accounts"))
        .await
        .unwrap();
    rig.fill("#account-name", "Forged Inc").await;
    // The page's own form, its token taken out.
    rig.browser
        .execute(
            "document.querySelector('#create-account input[name=csrf]').remove();",
            vec![],
        )
        .await
        .unwrap();
    rig.click("#create-account-submit").await;
    assert!(rig
        .text("#error-message")
        .await
        .contains("nothing was changed"));
    let (_, list) = rig.admin_api("GET", "/v1/admin/accounts", None).await;
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    // A wrong token is refused the same way.
    rig.browser
        .goto(&rig.console("/console/accounts"))
        .await
        .unwrap();
    rig.fill("#account-name", "Forged Inc").await;
    rig.browser
        .execute(
            "document.querySelector('#create-account input[name=csrf]').value = 'f'.repeat(64);",
            vec![],
        )
        .await
        .unwrap();
    rig.click("#create-account-submit").await;
    assert!(rig
        .text("#error-message")
        .await
        .contains("nothing was changed"));
    // The refusal is a console page, styled like the others.
    assert!(rig.text(".brand").await.contains("console"));
    let (_, list) = rig.admin_api("GET", "/v1/admin/accounts", None).await;
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    rig.screenshot("console_csrf_refused").await;

    // With its token, a form does its work: an application, its two secrets shown once.
    rig.browser
        .goto(&rig.console("/console/applications"))
        .await
        .unwrap();
    rig.fill("#app-name", "Ledger Sync").await;
    rig.tick("#create-app input[value='usage:read']").await;
    rig.click("#create-app-submit").await;
    let production = rig
        .browser
        .find(Locator::Css("#secret-production"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(!production.is_empty());
    rig.screenshot("console_application_secrets").await;
    rig.browser.refresh().await.unwrap();
    rig.element("#create-app").await;
    assert!(!rig.source().await.contains(&production), "shown once");
    let (_, apps) = rig.admin_api("GET", "/v1/admin/applications", None).await;
    assert_eq!(apps[0]["scopes"], json!(["usage:read"]), "{apps}");
    // The page it ends on: the applications, without the secrets.
    assert_eq!(rig.path().await, "/console/applications");
    rig.screenshot("console_applications_after_reload").await;
    rig.close().await;
}

/// A portal link's page opens a session once, when its button is pressed; the second use
/// is refused; the session cannot reach another account's key by editing the URL; it makes
/// keys of its own account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_link_is_single_use_and_scoped_to_its_account() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let mine = rig.account("Customer One").await;
    let theirs = rig.account("Customer Two").await;
    let (status, other_key) = rig
        .admin_api(
            "POST",
            &format!("/v1/admin/accounts/{theirs}/keys"),
            Some(json!({ "mode": "live", "name": "not yours" })),
        )
        .await;
    assert_eq!(status, 201, "{other_key}");
    let other_id = other_key["id"].as_str().unwrap();

    let link = rig
        .portal_link(
            &mine,
            json!({ "mode": "live", "return_url": "https://example.com/account" }),
        )
        .await;
    // Opening the link shows its page and uses nothing: opened again (as a chat tool's
    // preview would have done first), it still offers its button.
    rig.browser.goto(&link).await.unwrap();
    rig.browser.goto(&link).await.unwrap();
    assert_eq!(rig.status().await, 200);
    assert_eq!(rig.text("#start-account").await, "Customer One");
    rig.screenshot("portal_start").await;
    rig.click("#open-portal").await;
    assert_eq!(rig.path().await, "/portal");
    assert_eq!(rig.text("#account-name").await, "Customer One");
    assert!(!rig.source().await.contains("not yours"));
    rig.screenshot("portal_home").await;

    // Make a key in the portal; its secret is shown once.
    rig.fill("#key-name", "portal key").await;
    rig.click("#create-key-submit").await;
    let secret = rig
        .browser
        .find(Locator::Css("#secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rig.verify(&secret).await, (true, "valid".into()));

    // Another account's key, by editing the URL: not found, like an unknown one.
    rig.browser
        .goto(&format!(
            "http://127.0.0.1:{}/portal/keys/{other_id}",
            rig.public
        ))
        .await
        .unwrap();
    assert!(rig.text("#error-message").await.contains("No such key"));
    assert!(!rig.source().await.contains("not yours"));
    // The error page keeps the session's navigation: back to the keys from there.
    rig.screenshot("portal_error_with_navigation").await;
    rig.click("nav a[href='/portal']").await;
    assert_eq!(rig.path().await, "/portal");

    // The link again: refused.
    rig.browser.goto(&link).await.unwrap();
    assert!(rig
        .text("#error-message")
        .await
        .contains("already been used or has expired"));
    rig.screenshot("portal_link_used_twice").await;
    rig.close().await;
}

/// The consent page: the account's owner approves an application's request, and a grant
/// with its key is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_consent_creates_a_grant() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let account = rig.account("Consenting Co").await;
    let (status, app) = rig
        .admin_api(
            "POST",
            "/v1/admin/applications",
            Some(json!({ "name": "Ledger Sync", "scopes": ["usage:read", "account:read"] })),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap();
    let link = rig.portal_link(&account, json!({ "mode": "test" })).await;
    rig.open_portal(&link).await;
    rig.browser
        .goto(&format!(
            "http://127.0.0.1:{}/portal/authorize?app_id={app_id}&scopes=usage:read",
            rig.public
        ))
        .await
        .unwrap();
    assert!(rig.text("h1").await.contains("Ledger Sync"));
    rig.screenshot("portal_consent").await;
    rig.click("#approve-consent").await;
    let secret = rig
        .browser
        .find(Locator::Css("#secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(secret.starts_with("kw_sk_test_"), "{secret}");
    let (_, grants) = rig
        .admin_api("GET", &format!("/v1/admin/accounts/{account}/grants"), None)
        .await;
    let grants = grants.as_array().unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["app_id"], app_id);
    assert_eq!(grants[0]["scopes"], json!(["usage:read"]));
    rig.screenshot("portal_grant_key_shown").await;
    rig.close().await;
}

/// The operator works an account through its life: finds it by searching, approves it,
/// suspends it, changes its plan, is refused erasing it under a wrong name, then erases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_account_actions() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let (status, pending) = rig
        .admin_api(
            "POST",
            "/v1/admin/accounts",
            Some(json!({ "name": "Pending Parts", "status": "pending" })),
        )
        .await;
    assert_eq!(status, 201, "{pending}");
    let id = pending["id"].as_str().unwrap().to_string();
    rig.account("Other Outfit").await;
    let account_path = format!("/v1/admin/accounts/{id}");
    let account = || rig.admin_api("GET", &account_path, None);
    rig.sign_in().await;

    // Search: only the accounts whose name or id match.
    rig.browser
        .goto(&rig.console("/console/accounts?q=pending"))
        .await
        .unwrap();
    assert_eq!(rig.value("#q").await, "pending");
    let page = rig.source().await;
    assert!(page.contains("Pending Parts") && !page.contains("Other Outfit"));
    rig.screenshot("console_accounts_search").await;
    rig.fill("#q", "no such name").await;
    rig.click(".search button").await;
    assert!(rig.source().await.contains("No accounts match."));
    rig.screenshot("console_accounts_no_match").await;
    // The way back to every account.
    rig.click("a[href='/console/accounts']").await;
    let page = rig.source().await;
    assert!(page.contains("Pending Parts") && page.contains("Other Outfit"));
    rig.fill("#q", &id).await;
    rig.click(".search button").await;
    rig.click(&format!("a[href='/console/accounts/{id}']"))
        .await;
    assert_eq!(rig.text("#account-status").await, "pending");

    // Approve, then suspend (confirmed), each shown and stored.
    rig.click("#approve").await;
    assert_eq!(rig.text("#account-status").await, "active");
    assert_eq!(account().await.1["status"], "active");
    rig.click_confirmed("#suspend").await;
    assert_eq!(rig.text("#account-status").await, "suspended");
    assert_eq!(account().await.1["status"], "suspended");
    assert_eq!(rig.text("#approve").await, "Reactivate");

    // Change plan.
    let plan = rig.element("#plan").await;
    plan.select_by_value("pro").await.unwrap();
    rig.click("#change-plan").await;
    assert_eq!(account().await.1["plan"], "pro");
    assert!(rig.source().await.contains("<strong>pro</strong>"));
    rig.screenshot("console_account_suspended_on_pro").await;

    // Erase under a wrong name: refused with 400, the account still there.
    rig.fill("#confirm", "Pending Part").await;
    rig.click_confirmed("#erase").await;
    assert_eq!(rig.status().await, 400);
    assert!(rig
        .text("#error-message")
        .await
        .contains("type the account's name exactly"));
    assert_eq!(account().await.0, 200);
    rig.screenshot("console_erase_refused").await;
    rig.click("#error-message + p a, a[href^='/console/accounts/']")
        .await;
    assert_eq!(rig.path().await, format!("/console/accounts/{id}"));

    // Under its name: erased, back to the list without it.
    rig.fill("#confirm", "Pending Parts").await;
    rig.click_confirmed("#erase").await;
    assert_eq!(rig.path().await, "/console/accounts");
    assert!(!rig.source().await.contains("Pending Parts"));
    assert_eq!(account().await.0, 404);
    rig.screenshot("console_account_erased").await;
    rig.close().await;
}

/// An application's secret rotated in the console: the new one differs and works, the old
/// one is refused at once, and a reload no longer shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_rotates_an_application_secret() {
    let Some(rig) = Rig::start_with("[auth]\napp_secret_header = \"X-App-Secret\"\n").await else {
        return;
    };
    let (status, app) = rig
        .admin_api(
            "POST",
            "/v1/admin/applications",
            Some(json!({ "name": "Ledger Sync", "scopes": ["usage:read"] })),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap();
    let old = app["secrets"]["production"].as_str().unwrap().to_string();
    let account = rig.account("Granting Co").await;
    let (status, grant) = rig
        .admin_api(
            "POST",
            &format!("/v1/admin/accounts/{account}/grants"),
            Some(json!({ "app_id": app_id, "mode": "live" })),
        )
        .await;
    assert_eq!(status, 201, "{grant}");
    let key = grant["key"]["api_key"].as_str().unwrap().to_string();
    let with = |secret: &str| json!({ "key": key, "app_secret": secret });
    assert_eq!(rig.verify_body(with(&old)).await, (true, "valid".into()));

    rig.sign_in().await;
    rig.click("a[href='/console/applications']").await;
    rig.click_confirmed(&format!("#rotate-{app_id}-production"))
        .await;
    let new = rig.secret("secret-production").await;
    assert!(new.starts_with("kwapp_prod_"), "{new}");
    assert_ne!(new, old);
    assert!(rig.text(".warning").await.contains("shown only this once"));
    rig.screenshot("console_application_secret_rotated").await;
    assert_eq!(
        rig.verify_body(with(&old)).await,
        (false, "invalid_app_secret".into())
    );
    assert_eq!(rig.verify_body(with(&new)).await, (true, "valid".into()));

    rig.browser.refresh().await.unwrap();
    rig.element("#create-app").await;
    assert_eq!(rig.path().await, "/console/applications");
    let page = rig.source().await;
    assert!(!page.contains(&new) && !page.contains(&old), "shown once");
    rig.screenshot("console_applications_after_rotation").await;
    rig.close().await;
}

/// After a secret is shown, neither Back then Forward nor a reload brings it back, in the
/// console or the portal; the copy button says it copied, in the page's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_the_browser_history() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let account = rig.account("History Co").await;
    rig.sign_in().await;
    rig.browser
        .goto(&rig.console(&format!("/console/accounts/{account}")))
        .await
        .unwrap();
    rig.fill("#key-name", "history").await;
    rig.click("#create-key-submit").await;
    let secret = rig.secret("secret").await;
    assert!(secret.starts_with("kw_sk_live_"), "{secret}");
    // Copy: the button says so.
    assert_eq!(rig.text("button.copy").await, "Copy");
    rig.tick("button.copy").await;
    let started = Instant::now();
    while rig.text("button.copy").await != "Copied" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the copy button never changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.screenshot("console_secret_copied").await;

    // Back, then Forward: the key's page, without its secret.
    let old = rig.element("html").await;
    rig.browser.back().await.unwrap();
    rig.wait_for_next_page(old).await;
    assert_eq!(rig.path().await, format!("/console/accounts/{account}"));
    assert!(!rig.source().await.contains(&secret));
    let old = rig.element("html").await;
    rig.browser.forward().await.unwrap();
    rig.wait_for_next_page(old).await;
    rig.element("#key-id").await;
    assert!(rig.path().await.starts_with("/console/keys/key_"));
    assert!(
        !rig.source().await.contains(&secret),
        "Forward showed the secret again"
    );
    assert!(rig.browser.find(Locator::Css("#secret")).await.is_err());
    rig.screenshot("console_forward_after_secret").await;

    // The portal: the same after Back and Forward, and after a reload.
    let link = rig.portal_link(&account, json!({ "mode": "live" })).await;
    rig.open_portal(&link).await;
    rig.fill("#key-name", "portal history").await;
    rig.click("#create-key-submit").await;
    let secret = rig.secret("secret").await;
    assert!(secret.starts_with("kw_sk_live_"), "{secret}");
    rig.browser.refresh().await.unwrap();
    rig.element("#key-id").await;
    assert!(rig.path().await.starts_with("/portal/keys/key_"));
    assert!(
        !rig.source().await.contains(&secret),
        "a reload showed the secret"
    );
    rig.browser
        .goto(&format!("http://127.0.0.1:{}/portal", rig.public))
        .await
        .unwrap();
    rig.fill("#key-name", "portal history 2").await;
    rig.click("#create-key-submit").await;
    let secret = rig.secret("secret").await;
    let old = rig.element("html").await;
    rig.browser.back().await.unwrap();
    rig.wait_for_next_page(old).await;
    assert_eq!(rig.path().await, "/portal");
    let old = rig.element("html").await;
    rig.browser.forward().await.unwrap();
    rig.wait_for_next_page(old).await;
    rig.element("#key-id").await;
    assert!(
        !rig.source().await.contains(&secret),
        "Forward showed the secret again"
    );
    rig.screenshot("portal_forward_after_secret").await;
    rig.close().await;
}

/// On a phone-sized screen (390×844) the pages are usable: nothing wider than the screen,
/// no table scrolled sideways, every visible control labelled, and the sign-in form
/// reached with Tab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_fit_a_phone_and_every_control_is_labelled() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    rig.browser.set_window_size(390, 844).await.unwrap();
    let account = rig.account("Pocket Co").await;
    let (status, key) = rig
        .admin_api(
            "POST",
            &format!("/v1/admin/accounts/{account}/keys"),
            Some(json!({ "mode": "live", "name": "pocket key" })),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap();
    assert!(rig.verify(key["api_key"].as_str().unwrap()).await.0);

    // The keyboard alone signs in: Tab from the root key reaches the button.
    rig.browser.goto(&rig.console("/console")).await.unwrap();
    rig.element("#root_key").await.click().await.unwrap();
    rig.element("#root_key")
        .await
        .send_keys(&format!(
            "{ROOT_KEY}{}",
            char::from(fantoccini::key::Key::Tab)
        ))
        .await
        .unwrap();
    assert_eq!(rig.run("return document.activeElement.id").await, "sign-in");
    rig.assert_controls_labelled().await;
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth";
    // A table's rows are stacked on a phone: none is scrolled sideways either.
    let tables_fit = "return [...document.querySelectorAll('table')]\
        .every(t => t.scrollWidth <= t.clientWidth + 1)";
    assert_eq!(
        rig.run(fits).await,
        true,
        "the sign-in page is wider than the phone"
    );
    rig.screenshot("phone_console_sign_in").await;
    let old = rig.element("html").await;
    rig.element("#sign-in")
        .await
        .send_keys(&char::from(fantoccini::key::Key::Enter).to_string())
        .await
        .unwrap();
    rig.wait_for_next_page(old).await;
    assert_eq!(rig.path().await, "/console");

    let pages = [
        "/console".to_string(),
        "/console/accounts".into(),
        format!("/console/accounts/{account}"),
        format!("/console/keys/{key_id}"),
        "/console/applications".into(),
        "/console/audit".into(),
    ];
    for path in &pages {
        rig.browser.goto(&rig.console(path)).await.unwrap();
        rig.element("main").await;
        rig.assert_controls_labelled().await;
        assert_eq!(rig.run(fits).await, true, "{path} is wider than the phone");
        assert_eq!(
            rig.run(tables_fit).await,
            true,
            "a table on {path} scrolls sideways"
        );
    }
    rig.browser
        .goto(&rig.console(&format!("/console/accounts/{account}")))
        .await
        .unwrap();
    rig.element("#create-key").await;
    rig.screenshot("phone_console_account").await;
    rig.browser
        .goto(&rig.console("/console/audit"))
        .await
        .unwrap();
    rig.element("main").await;
    rig.screenshot("phone_console_audit").await;

    let link = rig.portal_link(&account, json!({})).await;
    rig.open_portal(&link).await;
    rig.element("#account-name").await;
    for path in ["/portal".to_string(), format!("/portal/keys/{key_id}")] {
        rig.browser
            .goto(&format!("http://127.0.0.1:{}{path}", rig.public))
            .await
            .unwrap();
        rig.element("main").await;
        rig.assert_controls_labelled().await;
        assert_eq!(rig.run(fits).await, true, "{path} is wider than the phone");
        assert_eq!(
            rig.run(tables_fit).await,
            true,
            "a table on {path} scrolls sideways"
        );
    }
    rig.browser
        .goto(&format!("http://127.0.0.1:{}/portal", rig.public))
        .await
        .unwrap();
    rig.element("#create-key").await;
    rig.screenshot("phone_portal_home").await;
    rig.close().await;
}
