//! Webhooks survive `kill -9` of the real binary (docs/webhooks.md): events committed by
//! management calls are in the outbox with their deliveries; a process killed before
//! sending them sends them after its restart, each exactly once per endpoint (counted by
//! `webhook-id`). Runs on SQLite always, and on a fresh PostgreSQL database when
//! `KEYWARDEN_TEST_DATABASE_URL` names a server.

#![cfg(unix)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROOT_KEY: &str = "hooks_root_key_0123456789abcdef";
const PEPPER: &str = "webhook_durability_pepper_0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the receiver got: webhook-ids per path.
type Got = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

/// A webhook receiver on its own threads, answering 204 to every POST.
fn receiver() -> (u16, Got) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Got = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(conn, &seen));
        }
    });
    (port, got)
}

/// Serves one keep-alive connection.
fn serve(conn: TcpStream, seen: &Got) {
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let (mut length, mut id) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "webhook-id" => id = value.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().entry(path).or_default().push(id);
        let s = r.get_mut();
        if s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .and_then(|()| s.flush())
            .is_err()
        {
            return;
        }
    }
}

/// One admin call on a fresh connection: (status, JSON body).
fn call(port: u16, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ROOT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

struct Site {
    dir: tempfile::TempDir,
    database_url: String,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Site {
    fn new(database_url: Option<String>) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("kw.db").display()));
        Site { dir, database_url }
    }

    fn command(&self, webhooks: bool) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keywarden"));
        c.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEYWARDEN_ROOT_KEY", ROOT_KEY)
            .env("KEYWARDEN_PEPPER", PEPPER)
            .env("KEYWARDEN_DATABASE_URL", &self.database_url)
            .env("KEYWARDEN_WEBHOOKS__ENABLED", webhooks.to_string())
            .env("KEYWARDEN_WEBHOOKS__ALLOW_PRIVATE_NETWORKS", "true")
            .env("KEYWARDEN_WEBHOOKS__POLL_INTERVAL_MS", "50");
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `keywarden webhooks create` for `url`: the endpoint's id.
    fn endpoint(&self, url: &str) -> String {
        let out = self
            .command(false)
            .args(["--json", "webhooks", "create", "--url", url])
            .args(["--event", "account.created,key.created"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["secret"].as_str().unwrap().starts_with("whsec_"));
        v["id"].as_str().unwrap().to_string()
    }

    /// Starts `serve` and waits for its admin listener: (server, admin port).
    fn start(&self, webhooks: bool) -> (Server, u16) {
        let (public, admin) = (free_port(), free_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = self
            .command(webhooks)
            .arg("serve")
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
        let mut server = Server(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", admin)).is_err() {
            if let Some(status) = server.0.try_wait().unwrap() {
                panic!("serve exited early ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "serve never listened:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (server, admin)
    }
}

/// SIGKILL: nothing is flushed, nothing is sent on the way out.
fn kill9(mut server: Server) {
    server.0.kill().unwrap();
    server.0.wait().unwrap();
}

fn delivered_once_after_a_kill(site: &Site) {
    let (port, got) = receiver();
    site.endpoint(&format!("http://127.0.0.1:{port}/a"));
    site.endpoint(&format!("http://127.0.0.1:{port}/b"));

    // The changes commit while this process sends nothing; then it is killed.
    let (server, admin) = site.start(false);
    let (status, acc) = call(
        admin,
        "POST",
        "/v1/admin/accounts",
        &json!({ "name": "Acme" }),
    );
    assert_eq!(status, 201, "{acc}");
    let path = format!("/v1/admin/accounts/{}/keys", acc["id"].as_str().unwrap());
    for i in 0..5 {
        let (status, key) = call(
            admin,
            "POST",
            &path,
            &json!({ "mode": "live", "name": format!("k{i}") }),
        );
        assert_eq!(status, 201, "{key}");
    }
    kill9(server);
    assert!(got.lock().unwrap().is_empty());

    // After the restart every event reaches each endpoint once.
    let (server, _) = site.start(true);
    let started = Instant::now();
    loop {
        let n: usize = got.lock().unwrap().values().map(Vec::len).sum();
        if n >= 12 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {n} of 12 deliveries arrived:\n{}",
            site.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Anything sent twice would arrive within a few polls.
    std::thread::sleep(Duration::from_millis(500));
    kill9(server);
    let got = got.lock().unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["/a", "/b"]);
    for ids in got.values() {
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((ids.len(), unique.len()), (6, 6), "{ids:?}");
        assert!(ids.iter().all(|id| id.starts_with("evt_")));
    }
    assert_eq!(
        got["/a"].iter().collect::<std::collections::BTreeSet<_>>(),
        got["/b"].iter().collect()
    );
}

#[test]
fn sqlite_webhooks_are_delivered_once_after_kill_9() {
    delivered_once_after_a_kill(&Site::new(None));
}

#[test]
fn postgres_webhooks_are_delivered_once_after_kill_9() {
    let Some(admin_url) = std::env::var("KEYWARDEN_TEST_DATABASE_URL").ok() else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    let name = format!(
        "kw_hooks_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    run_sql(&admin_url, &format!("CREATE DATABASE {name}"));
    let base = admin_url.split('?').next().unwrap();
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    let site = Site::new(Some(format!("{base}/{name}")));
    delivered_once_after_a_kill(&site);
    drop(site);
    run_sql(
        &admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}

fn run_sql(url: &str, sql: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Executor;
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            pool.execute(sql).await.unwrap();
            pool.close().await;
        });
}
