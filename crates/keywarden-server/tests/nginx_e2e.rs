//! The shipped nginx recipe (`docs/integrations/nginx.conf`) with a real nginx in front of
//! a small upstream, asking a real Keywarden: what the client gets and what the upstream
//! sees. Without nginx the test is skipped locally and fails under CI (`CI` set).

mod common;

use common::spawn_app_with;
use common::upstream::spawn_upstream;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CONFIG: &str = r#"
[server]
trusted_proxies = ["127.0.0.1/32"]

[auth]
lockout = { max_failures = 4, window_seconds = 300, lock_seconds = 300 }

[scopes]
catalog = [{ name = "invoices:read", description = "Read invoices" }]

[[routes]]
methods = ["GET"]
path = "/invoices/**"
scopes = ["invoices:read"]

[[routes]]
path = "/"
auth = "none"
"#;

fn find_nginx() -> Option<PathBuf> {
    let fixed = Path::new("/usr/sbin/nginx");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    })
}

/// nginx, stopped when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The recipe with its placeholders filled in, plus what a throwaway instance needs: no
/// daemon, one process, and pid, logs and temporary files in `dir`.
fn recipe(dir: &Path, listen: &str, keywarden: &str, upstream: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/integrations/nginx.conf");
    let text = std::fs::read_to_string(&path).expect("docs/integrations/nginx.conf");
    for token in ["LISTEN_ADDR", "KEYWARDEN_ADMIN_ADDR", "UPSTREAM_ADDR"] {
        assert!(
            text.contains(token),
            "the recipe lost its {token} placeholder"
        );
    }
    let d = dir.display();
    let http = format!(
        "http {{\n    access_log {d}/access.log;\n    client_body_temp_path {d}/body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
    );
    let body = text
        .replace("KEYWARDEN_ADMIN_ADDR", keywarden)
        .replace("UPSTREAM_ADDR", upstream)
        .replace("LISTEN_ADDR", listen)
        .replacen("http {\n", &http, 1);
    format!("daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n{body}")
}

async fn start_nginx(bin: &Path, keywarden: &str, upstream: &str) -> (Nginx, String) {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, recipe(dir.path(), &listen, keywarden, upstream)).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx starts");
    let mut nginx = Nginx { child, dir };
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(&listen).await.is_ok() {
            return (nginx, format!("http://{listen}"));
        }
        if let Ok(Some(status)) = nginx.child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = nginx.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            panic!("nginx exited ({status}): {stderr}\n{}", nginx.error_log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nginx did not listen on {listen}:\n{}", nginx.error_log());
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        assert!(self.body["error"]["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")));
        assert!(self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")));
        assert_eq!(
            self.headers.get_all("www-authenticate").iter().count(),
            usize::from(status == 401),
            "WWW-Authenticate goes with 401 only, once"
        );
        assert_eq!(
            self.headers.get_all("retry-after").iter().count(),
            usize::from(status == 429),
            "Retry-After goes with 429 only, once"
        );
        assert_eq!(
            self.header("x-request-id"),
            self.body["error"]["request_id"].as_str(),
            "the body and the header name the same request"
        );
    }
}

/// `GET <target>` sent to `base` byte for byte (an HTTP client would percent-encode what a
/// browser or a script may send raw): the status and the body.
async fn get_raw(base: &str, target: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    Got {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

#[tokio::test]
async fn nginx_recipe_end_to_end() {
    let Some(bin) = find_nginx() else {
        if std::env::var_os("CI").is_some() {
            panic!("nginx is not installed: .ci/run installs it with apt-get (package nginx)");
        }
        eprintln!("skipping nginx_recipe_end_to_end: nginx is not installed");
        return;
    };
    let app = spawn_app_with(CONFIG).await;
    let up = spawn_upstream().await;
    let (nginx, base) = start_nginx(
        &bin,
        app.admin.trim_start_matches("http://"),
        &up.addr.to_string(),
    )
    .await;
    let client = reqwest::Client::new();
    let acc = app.account("Acme").await;
    let (id, token) = app.live_key(&acc).await;
    let bearer = format!("Bearer {token}");

    // A valid key: the upstream answers and saw the identity, not the credential.
    let got = get(
        &client,
        &format!("{base}/invoices/42?x=1"),
        &[
            ("Authorization", bearer.as_str()),
            ("X-Keywarden-Key-Id", "key_forged"),
            ("X-Keywarden-Scopes", "*"),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}\n{}", got.body, nginx.error_log());
    assert_eq!(got.header("x-upstream"), Some("yes"));
    assert_eq!(got.body["uri"], "/invoices/42?x=1");
    assert!(got.header("ratelimit").is_some());
    let seen = up.last();
    assert_eq!(seen.header("x-keywarden-key-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-keywarden-account-id"), Some(acc.as_str()));
    assert_eq!(seen.header("x-keywarden-mode"), Some("live"));
    assert!(seen
        .header("x-keywarden-scopes")
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(seen.headers.get_all("x-keywarden-key-id").iter().count(), 1);
    assert!(seen
        .header("x-request-id")
        .is_some_and(|r| r.starts_with("req_")));
    assert!(seen.header("authorization").is_none());
    assert!(seen.header("x-keywarden-status").is_none());
    assert!(seen.header("x-keywarden-code").is_none());
    for (name, value) in &seen.headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(&token),
            "the credential reached the upstream in {name}"
        );
    }
    // The other default source is removed too.
    let got = get(
        &client,
        &format!("{base}/invoices/43"),
        &[("X-API-Key", token.as_str())],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let seen = up.last();
    assert!(seen.header("x-api-key").is_none());
    assert_eq!(seen.header("x-keywarden-key-id"), Some(id.as_str()));

    // The public `/` passes without a key...
    let (status, _) = get_raw(&base, b"/?q=%3Cx%3E").await;
    assert_eq!(status, 200, "{}", nginx.error_log());
    assert_eq!(up.last().uri, "/?q=%3Cx%3E");
    let proxied = up.seen().len();
    // ...but a URI Keywarden cannot read exactly is refused (400 and Keywarden's body),
    // never decided as that `/`: nothing reaches the upstream.
    for target in [
        &b"/admin/secret?q=<x>"[..],
        b"/admin/`id`",
        "/admin/secret/é".as_bytes(),
    ] {
        let (status, body) = get_raw(&base, target).await;
        assert_eq!(status, 400, "{body}\n{}", nginx.error_log());
        assert!(body.contains("invalid_request"), "{body}");
    }
    assert_eq!(up.seen().len(), proxied, "an unreadable URI went upstream");

    // A key without the route's scope: 403 with Keywarden's body.
    let narrow = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "narrow", "scopes": ["account:read"] }),
        )
        .await["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let got = get(
        &client,
        &format!("{base}/invoices/1"),
        &[("Authorization", &format!("Bearer {narrow}"))],
    )
    .await;
    got.assert_error(403, "insufficient_scope");

    // Over the key's rate limit: 429 with Retry-After and the figures.
    let limited = app
        .key(
            &acc,
            json!({ "mode": "live", "name": "limited",
                    "rate_limit": { "requests": 2, "per_seconds": 60 } }),
        )
        .await["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let limited = format!("Bearer {limited}");
    for _ in 0..2 {
        let got = get(
            &client,
            &format!("{base}/invoices/2"),
            &[("Authorization", limited.as_str())],
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.body);
    }
    let got = get(
        &client,
        &format!("{base}/invoices/2"),
        &[("Authorization", limited.as_str())],
    )
    .await;
    got.assert_error(429, "rate_limit_exceeded");
    let retry: u64 = got.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(got.header("ratelimit").is_some());
    assert!(got.header("ratelimit-policy").is_some());
    assert_eq!(
        up.seen().len(),
        proxied + 2,
        "denied requests went upstream"
    );

    // A bad key: 401 with Keywarden's body. Each denial counts once toward the lockout
    // (4 failures lock): the render call of the recipe counts nothing.
    for _ in 0..4 {
        let got = get(
            &client,
            &format!("{base}/invoices/3"),
            &[("Authorization", "Bearer kw_sk_live_not_a_valid_key")],
        )
        .await;
        got.assert_error(401, "invalid_api_key");
    }
    // The fifth is locked out: 429 with Retry-After, through nginx's 500 mapping.
    let got = get(
        &client,
        &format!("{base}/invoices/3"),
        &[("Authorization", bearer.as_str())],
    )
    .await;
    got.assert_error(429, "too_many_auth_failures");
    assert!(got.header("retry-after").is_some());
    assert_eq!(
        up.seen().len(),
        proxied + 2,
        "denied requests went upstream"
    );

    drop(nginx);

    // Keywarden unreachable: nginx's own 502, and nothing reaches the upstream.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (nginx, base) = start_nginx(&bin, &gone, &up.addr.to_string()).await;
    let got = get(
        &client,
        &format!("{base}/invoices/4"),
        &[("Authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert_eq!(
        up.seen().len(),
        proxied + 2,
        "a request went upstream unchecked"
    );
    drop(nginx);
    app.stop().await;
}

/// The render mode the recipe's `@keywarden_denied` uses, without nginx: it answers with the
/// denial it is told about and decides (and counts) nothing.
#[tokio::test]
async fn forward_auth_renders_an_earlier_denial_without_counting() {
    let app = spawn_app_with(
        r#"
[auth]
lockout = { max_failures = 2, window_seconds = 300, lock_seconds = 300 }
[errors]
rename = { api_key_expired = "api_key_revoked" }
"#,
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/forward-auth", app.admin);
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;

    // A decision carries its wire code next to its status.
    let got = get(
        &client,
        &url,
        &[("X-Original-Method", "GET"), ("X-Original-URI", "/x")],
    )
    .await;
    got.assert_error(401, "missing_api_key");
    assert_eq!(got.header("x-keywarden-code"), Some("missing_api_key"));
    assert_eq!(got.header("x-keywarden-status"), Some("401"));

    let render = |code: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut h = vec![("X-Keywarden-Render", code)];
            h.extend_from_slice(extra);
            get(&client, &url, &h).await
        }
    };
    let got = render(
        "rate_limit_exceeded",
        &[
            ("X-Keywarden-Status", "429"),
            ("X-Keywarden-Retry-After", "7"),
        ],
    )
    .await;
    got.assert_error(429, "rate_limit_exceeded");
    assert_eq!(got.header("retry-after"), Some("7"));
    assert_eq!(got.header("x-keywarden-status"), Some("429"));

    let got = render("api_key_revoked", &[("Accept-Language", "es")]).await;
    got.assert_error(401, "api_key_revoked");
    assert_ne!(
        got.body["error"]["message"],
        get(&client, &url, &[("X-Keywarden-Render", "api_key_revoked")])
            .await
            .body["error"]["message"],
        "rendered in the client's language"
    );

    for bad in ["valid", "no_such_code"] {
        let got = render(bad, &[]).await;
        assert_eq!(got.status, 400, "{bad}: {}", got.body);
    }

    // Rendering failures many times over locks nobody out.
    for _ in 0..5 {
        render("invalid_api_key", &[("X-Keywarden-Status", "401")])
            .await
            .assert_error(401, "invalid_api_key");
    }
    let bearer = format!("Bearer {token}");
    let got = get(
        &client,
        &url,
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/x"),
            ("Authorization", bearer.as_str()),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.header("x-keywarden-code"), Some("valid"));
    app.stop().await;
}
