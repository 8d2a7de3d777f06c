//! Faults a deployment meets: slow or idle clients, a database that is locked, cut or
//! silent. Each answer must come within a bound, and what does not need the database
//! (health, cached keys) must keep working.

mod common;

use common::{spawn_app_with, spawn_config, TestApp, ROOT};
use keywarden_server::config::Config;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Generous: these bound a hang, they do not measure speed.
const BOUND: Duration = Duration::from_secs(5);

fn host(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Reads from `s` until the server closes it (EOF or reset), for at most `limit`;
/// `true` when it was closed.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.is_ok()
}

/// `GET path` answered 200 within the bound.
async fn answers(app: &TestApp, base: &str, path: &str) {
    let res = tokio::time::timeout(BOUND, app.client.get(format!("{base}{path}")).send())
        .await
        .unwrap_or_else(|_| panic!("{base}{path} did not answer"))
        .unwrap();
    assert_eq!(res.status(), 200, "{base}{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_partial_requests_is_bounded_and_the_admin_listener_keeps_serving() {
    let app = spawn_app_with(
        "[server]\nheader_read_timeout_ms = 2000\nmax_connections = 16\nadmin_max_connections = 16\n",
    )
    .await;
    let started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..48 {
        let mut s = TcpStream::connect(host(&app.public)).await.unwrap();
        // A head that never ends.
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        flood.push(s);
    }
    // The admin listener's connections are counted apart.
    answers(&app, &app.admin, "/healthz").await;
    answers(&app, &app.admin, "/readyz").await;

    // Beyond the public listener's 16, connections are closed at once; the others when
    // their head has not come within the header-read timeout. None stays open.
    let closings: Vec<_> = flood
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let closed = closed_within(&mut s, BOUND * 2).await;
                (closed, started.elapsed())
            })
        })
        .collect();
    let mut early = 0;
    for closing in closings {
        let (closed, at) = closing.await.unwrap();
        assert!(closed, "a partial request stayed open");
        if at < Duration::from_millis(1900) {
            early += 1;
        }
    }
    assert!(
        early >= 48 - 16,
        "only {early} were closed before the timeout"
    );
    // The listener serves again.
    answers(&app, &app.public, "/healthz").await;
    app.stop().await;
}

/// Starts a head on `s` and sends one more byte of it every 100 ms, never ending it:
/// whether the service cut the connection off (within twice the bound).
async fn head_trickled_is_cut_off(s: &mut TcpStream) -> bool {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // A closed connection fails a write once the reset arrives.
            if s.write_all(b"X").await.is_err() {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(BOUND * 2, trickle)
        .await
        .unwrap_or(false)
}

#[tokio::test]
async fn a_head_sent_slowly_or_a_connection_left_idle_is_closed() {
    let app =
        spawn_app_with("[server]\nheader_read_timeout_ms = 500\nidle_timeout_ms = 500\n").await;

    // Bytes keep coming, one every 100 ms, but the head does not end.
    let mut s = TcpStream::connect(host(&app.public)).await.unwrap();
    assert!(
        head_trickled_is_cut_off(&mut s).await,
        "a head trickled byte by byte was never cut off"
    );

    // A connection that says nothing at all.
    let mut silent = TcpStream::connect(host(&app.public)).await.unwrap();
    assert!(
        closed_within(&mut silent, BOUND).await,
        "a silent connection stayed open"
    );

    // A keep-alive connection left idle after its answer.
    let mut idle = TcpStream::connect(host(&app.admin)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, BOUND).await,
        "an idle connection stayed open"
    );

    // After an answer, the next head trickles in on the same connection: it is cut off
    // like the first one would be.
    let mut again = TcpStream::connect(host(&app.admin)).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = again.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        head_trickled_is_cut_off(&mut again).await,
        "a second head trickled byte by byte was never cut off"
    );
    app.stop().await;
}

/// A root-key admin call, with how long it took.
async fn timed_call(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, Duration) {
    let started = Instant::now();
    let res = tokio::time::timeout(BOUND * 3, app.admin(method, path, body))
        .await
        .unwrap_or_else(|_| panic!("{path} hung"));
    let status = res.status().as_u16();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    (status, v, started.elapsed())
}

/// A key verifies as valid, within the bound.
async fn verifies(app: &TestApp, token: &str) {
    let started = Instant::now();
    let v = app.verify(json!({ "key": token })).await;
    assert_eq!(v["valid"], true, "{v}");
    assert!(
        started.elapsed() < BOUND,
        "verify took {:?}",
        started.elapsed()
    );
}

/// Management calls while the store cannot answer: 503 `service_unavailable`, within the
/// bound; cached keys still verify.
async fn store_outage_answers(app: &TestApp, acc: &str, token: &str) {
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/admin/accounts".to_string(),
            Some(json!({"name": "B"})),
        ),
        (
            Method::POST,
            format!("/v1/admin/accounts/{acc}/keys"),
            Some(json!({"mode": "live", "name": "k2"})),
        ),
    ] {
        let (status, v, took) = timed_call(app, method, &path, body).await;
        assert_eq!(status, 503, "{path}: {v}");
        assert_eq!(v["error"]["code"], "service_unavailable", "{path}: {v}");
        assert!(took < BOUND, "{path} took {took:?}");
    }
    verifies(app, token).await;
}

#[tokio::test]
async fn a_locked_sqlite_database_answers_503_and_cached_keys_keep_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kw.db");
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
        (
            "KEYWARDEN_DATABASE_URL".to_string(),
            format!("sqlite://{}", db.display()),
        ),
    ];
    let mut config = Config::from_parts("[store]\ntimeout_ms = 500\n", &vars).unwrap();
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    let app = spawn_config(config, dir).await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    verifies(&app, &token).await;

    // Another process holds the write lock.
    use sqlx::Connection;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    store_outage_answers(&app, &acc, &token).await;

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    let (status, v, _) = timed_call(
        &app,
        Method::POST,
        "/v1/admin/accounts",
        Some(json!({"name": "C"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    app.stop().await;
}

/// An application lookup that fails on the database is an outage, not a wrong secret: 503,
/// and nothing counted toward the client's lockout.
#[tokio::test]
async fn a_failed_application_lookup_answers_503_and_counts_nothing_toward_the_lockout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kw.db");
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
        (
            "KEYWARDEN_DATABASE_URL".to_string(),
            format!("sqlite://{}", db.display()),
        ),
    ];
    let toml = "[auth]\napp_secret_header = \"X-App-Secret\"\n\
                [auth.lockout]\nmax_failures = 1\n";
    let mut config = Config::from_parts(toml, &vars).unwrap();
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    let app = spawn_config(config, dir).await;
    let acc = app.account("Acme").await;
    let created = app
        .admin(
            Method::POST,
            "/v1/admin/applications",
            Some(json!({ "name": "Ledger", "scopes": ["*"] })),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let app_id = created["id"].as_str().unwrap().to_string();
    let secret = created["secrets"]["production"]
        .as_str()
        .unwrap()
        .to_string();
    let grant = app
        .admin(
            Method::POST,
            &format!("/v1/admin/accounts/{acc}/grants"),
            Some(json!({ "app_id": app_id })),
        )
        .await;
    assert_eq!(grant.status(), 201);
    let grant: Value = grant.json().await.unwrap();
    let token = grant["key"]["api_key"].as_str().unwrap().to_string();
    let ask = json!({ "key": token, "app_secret": secret, "ip": "203.0.113.9" });
    assert_eq!(app.verify(ask.clone()).await["code"], "valid");

    // The application is forgotten by the cache (a change to it), then cannot be read.
    let res = app
        .admin(
            Method::PATCH,
            &format!("/v1/admin/applications/{app_id}"),
            Some(json!({ "description": "changed" })),
        )
        .await;
    assert_eq!(res.status(), 200);
    use sqlx::Connection;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rename = |from: &str, to: &str| format!("ALTER TABLE {from} RENAME TO {to}");
    sqlx::query(&rename("applications", "applications_away"))
        .execute(&mut other)
        .await
        .unwrap();
    for _ in 0..3 {
        let v = app.verify(ask.clone()).await;
        assert_eq!(v["code"], "service_unavailable", "{v}");
        assert_eq!(v["status"], 503, "{v}");
    }

    // Back again: the address was never locked out (one failure would have locked it).
    sqlx::query(&rename("applications_away", "applications"))
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    let v = app.verify(ask).await;
    assert_eq!(v["code"], "valid", "{v}");
    app.stop().await;
}

// ---- PostgreSQL behind a network that can go silent ----------------------------------------

/// A TCP proxy to PostgreSQL that can be cut: while cut, nothing it accepts or reads goes
/// further (no error, no close: packets just stop), as when a network drops them.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: Arc<watch::Sender<bool>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::channel(false).0);
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut open = state.subscribe();
                let upstream = upstream.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    if open.wait_for(|c| !*c).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, state.subscribe()));
                    tokio::spawn(pump(sr, cw, state.subscribe()));
                });
            }
        });
        Proxy { addr, cut }
    }

    fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies bytes from one side to the other, holding them while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.wait_for(|c| *c) => continue,
        };
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `postgres://user@host:port/db?query` → (`host:port`, the URL with the database `name`
/// reached through `via`).
fn through(url: &str, name: &str, via: std::net::SocketAddr) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail.split_once('?').map(|(_, q)| q);
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    let mut proxied = format!("postgres://{user}{via}/{name}");
    if let Some(q) = query {
        proxied = format!("{proxied}?{q}");
    }
    (hostport, proxied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_postgresql_answers_503_within_the_bound_and_cached_keys_keep_verifying() {
    let Ok(admin_url) = std::env::var("KEYWARDEN_TEST_DATABASE_URL") else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping this PostgreSQL test");
        return;
    };
    let name = format!("kw_cut_{}", ulid::Ulid::new().to_string().to_lowercase());
    let pool = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    let (upstream, _) = through(&admin_url, &name, "127.0.0.1:1".parse().unwrap());
    let proxy = Proxy::start(upstream).await;
    let (_, url) = through(&admin_url, &name, proxy.addr);

    let dir = tempfile::tempdir().unwrap();
    let vars = vec![
        ("KEYWARDEN_ROOT_KEY".to_string(), ROOT.to_string()),
        ("KEYWARDEN_DATABASE_URL".to_string(), url),
        (
            "KEYWARDEN_PEPPER".to_string(),
            "pepper-for-the-cut-test-0123456789".to_string(),
        ),
    ];
    let mut config = Config::from_parts("[store]\ntimeout_ms = 1000\n", &vars).unwrap();
    config.server.public_listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    let app = spawn_config(config, dir).await;
    let acc = app.account("Acme").await;
    let (_, token) = app.live_key(&acc).await;
    // The key's creation is announced to every replica, this one too, which drops the
    // lookup from the cache: let that notification land before the key is cached.
    tokio::time::sleep(Duration::from_millis(500)).await;
    verifies(&app, &token).await;

    proxy.cut(true);
    store_outage_answers(&app, &acc, &token).await;
    let started = Instant::now();
    let res = app
        .client
        .get(format!("{}/readyz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < BOUND,
        "readyz took {:?}",
        started.elapsed()
    );

    // Back: the service recovers by itself.
    proxy.cut(false);
    let mut recovered = false;
    for _ in 0..50 {
        let (status, _, _) = timed_call(
            &app,
            Method::POST,
            "/v1/admin/accounts",
            Some(json!({"name": "C"})),
        )
        .await;
        if status == 201 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "the service did not recover after the network came back"
    );
    app.stop().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await;
    pool.close().await;
}

#[tokio::test]
async fn a_zero_timeout_or_bound_is_refused_naming_the_field() {
    for (toml, field) in [
        (
            "[server]\nheader_read_timeout_ms = 0\n",
            "server.header_read_timeout_ms",
        ),
        ("[server]\nidle_timeout_ms = 0\n", "server.idle_timeout_ms"),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nadmin_max_connections = 0\n",
            "server.admin_max_connections",
        ),
        ("[store]\ntimeout_ms = 0\n", "store.timeout_ms"),
    ] {
        let vars = vec![(
            "KEYWARDEN_DATABASE_URL".to_string(),
            "sqlite::memory:".to_string(),
        )];
        let config = Config::from_parts(toml, &vars).unwrap();
        let clock = Arc::new(keywarden_core::ManualClock::new(common::T0));
        let err = keywarden_server::app::Service::build(config, clock)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{toml}: {err}");
    }
}
