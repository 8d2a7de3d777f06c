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
"#,
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
        let (_, v) = self
            .admin_api("POST", "/v1/verify", Some(json!({ "key": key })))
            .await;
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
                panic!("{css}: {e}\nat {url:?}:\n{page}")
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
    rig.close().await;
}

/// A portal link opens a session once; the second use is refused; the session cannot
/// reach another account's key by editing the URL; it makes keys of its own account.
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
    rig.browser.goto(&link).await.unwrap();
    assert_eq!(rig.browser.current_url().await.unwrap().path(), "/portal");
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
    rig.browser.goto(&link).await.unwrap();
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
