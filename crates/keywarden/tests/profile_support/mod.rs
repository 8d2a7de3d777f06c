//! What the profiles' conformance tests share: the real binary started with `--profile`,
//! on its own embedded store in a fresh directory, with only the root key, its listeners
//! and the gateway's upstream set from the environment (plus whatever a test adds), and a
//! small upstream that answers every request with what it received.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The root key every profile is started with.
pub const ROOT_KEY: &str = "profile-tests-root-key-0123456789";

/// A running `keywarden serve --profile NAME`, killed when dropped.
pub struct Running {
    /// The public listener, `http://127.0.0.1:PORT`.
    pub public: String,
    /// The admin listener, `http://127.0.0.1:PORT`.
    pub admin: String,
    /// The root key.
    pub root: String,
    /// The upstream the gateway proxies to, `http://127.0.0.1:PORT`.
    pub upstream: String,
    /// The working directory, where the database and its generated files live.
    pub dir: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// What the service wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keywarden.log")).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the binary on the built-in profile `name`. `env` is laid over the defaults
/// (root key, listeners on free ports, the database in a fresh directory, the gateway
/// pointed at a new echo upstream), so a test can override any of them.
pub fn start_profile(name: &str, env: &[(&str, &str)]) -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let upstream = start_upstream();
    let (public_port, admin_port) = (free_port(), free_port());
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("KEYWARDEN_ROOT_KEY".into(), ROOT_KEY.into());
    vars.insert(
        "KEYWARDEN_DATABASE_URL".into(),
        format!("sqlite://{}", dir.join("keywarden.db").display()),
    );
    vars.insert(
        "KEYWARDEN_SERVER__PUBLIC_LISTEN".into(),
        format!("127.0.0.1:{public_port}"),
    );
    vars.insert(
        "KEYWARDEN_SERVER__ADMIN_LISTEN".into(),
        format!("127.0.0.1:{admin_port}"),
    );
    vars.insert("KEYWARDEN_GATEWAY__UPSTREAM".into(), upstream.clone());
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    let log = std::fs::File::create(dir.join("keywarden.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keywarden"));
    cmd.args(["serve", "--profile", name])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // Nothing of the test runner's own Keywarden settings leaks in.
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYWARDEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(&vars);
    let child = cmd.spawn().expect("keywarden starts");
    let mut running = Running {
        public: format!("http://127.0.0.1:{public_port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        root: ROOT_KEY.into(),
        upstream,
        dir,
        child,
        _tmp: tmp,
    };
    wait_ready(&mut running, admin_port);
    running
}

/// Starts `keywarden serve ARGS` in a fresh working directory with nothing in its
/// environment but the root key and the two listeners, as an operator first runs it: the
/// database and whatever is generated beside it land in that directory, and without an
/// upstream there is no gateway.
pub fn start_bare(args: &[&str]) -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (public_port, admin_port) = (free_port(), free_port());
    let log = std::fs::File::create(dir.join("keywarden.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .arg("serve")
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .env("KEYWARDEN_ROOT_KEY", ROOT_KEY)
        .env(
            "KEYWARDEN_SERVER__PUBLIC_LISTEN",
            format!("127.0.0.1:{public_port}"),
        )
        .env(
            "KEYWARDEN_SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin_port}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("keywarden starts");
    let mut running = Running {
        public: format!("http://127.0.0.1:{public_port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        root: ROOT_KEY.into(),
        upstream: String::new(),
        dir,
        child,
        _tmp: tmp,
    };
    wait_ready(&mut running, admin_port);
    running
}

/// The profile `name` starts with only the root key (and its listeners) set, both built in
/// (`--profile NAME`) and from its file (`--config profiles/NAME.toml`): `/readyz` answers
/// 200 on the admin listener, and the database and each of `generated` are created in the
/// working directory.
pub async fn assert_serves_with_only_the_root_key(name: &str, generated: &[&str]) {
    let file = format!("{}/../../profiles/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    for args in [["--profile", name], ["--config", file.as_str()]] {
        let r = start_bare(&args);
        let ready = call("GET", &format!("{}/readyz", r.admin), &[], None).await;
        assert_eq!(ready.status, 200, "{args:?}: {:?}\n{}", ready.body, r.log());
        for f in std::iter::once(&"keywarden.db").chain(generated) {
            assert!(
                r.dir.join(f).is_file(),
                "{args:?}: no {f} in the working directory:\n{}",
                r.log()
            );
        }
    }
}

/// Waits until `/readyz` answers 200 on the admin listener; panics with the log when the
/// process exits or does not get there within 60 s.
fn wait_ready(r: &mut Running, port: u16) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = r.child.try_wait().unwrap() {
            panic!("keywarden exited with {status}:\n{}", r.log());
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && head.ends_with(b"200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "keywarden is not ready after 60 s:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the echo upstream on its own thread: every request is answered 200 with
/// `{method, path, query, headers, body}` (header names in lower case).
fn start_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(echo);
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}")
}

async fn echo(req: axum::extract::Request) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// An answer: status, headers, and the body as JSON (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Value,
}

impl Reply {
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request: `headers` as given, `body` as JSON when present.
pub async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Value>) -> Reply {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

impl Running {
    /// An admin API call with the root key.
    pub async fn admin_call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {}", self.root);
        call(
            method,
            &format!("{}{path}", self.admin),
            &[("authorization", &auth)],
            body,
        )
        .await
    }

    /// A request to the public listener (gateway or self-service) with `headers`.
    pub async fn public_call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        call(method, &format!("{}{path}", self.public), headers, body).await
    }
}
