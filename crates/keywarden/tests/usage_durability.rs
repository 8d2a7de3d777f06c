//! Usage survives `kill -9` of the real binary within the promise of its durability mode
//! (`docs/usage-durability.md`):
//! - `strict`: every unit a `POST /v1/verify` with `cost` acknowledged is stored, however
//!   the process dies;
//! - `batched`: what was acknowledged more than the usage window before the kill is stored;
//!   once the requests stop and the window has passed, nothing is missing.
//!
//! After each restart on the same database the quota counters start from the stored usage:
//! a cost that would go over the limit by one unit is refused, the exact rest accepted.
//!
//! Runs on SQLite always, and on a fresh PostgreSQL database when
//! `KEYWARDEN_TEST_DATABASE_URL` names a server.

#![cfg(unix)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROOT_KEY: &str = "usage_root_key_0123456789abcdef";
const PEPPER: &str = "usage_durability_pepper_0123456789";
/// The quota: large enough never to refuse a request of the load.
const LIMIT: u64 = 100_000_000;
/// The usage window of the batched runs, in ms.
const WINDOW_MS: u64 = 100;
/// Connections sending at once.
const CLIENTS: usize = 8;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 connection, kept alive.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        Ok(Conn(BufReader::new(s)))
    }

    /// Sends one request and reads its whole answer: (status, JSON body).
    fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let s = self.0.get_mut();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        s.flush()?;
        let mut line = String::new();
        if self.0.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let mut length = 0;
        loop {
            line.clear();
            if self.0.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v
                        .trim()
                        .parse()
                        .map_err(|_| std::io::ErrorKind::InvalidData)?;
                }
            }
        }
        let mut buf = vec![0; length];
        self.0.read_exact(&mut buf)?;
        let json = serde_json::from_slice(&buf).unwrap_or(Value::Null);
        Ok((status, json))
    }
}

/// One call on a fresh connection; panics on a transport error.
fn call(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    Conn::open(port)
        .and_then(|mut c| c.call(method, path, token, body))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Where the service keeps its data, and how it is started.
struct Site {
    dir: tempfile::TempDir,
    database_url: String,
}

/// A running `keywarden serve`.
struct Server {
    child: Child,
    public: u16,
    admin: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    fn new(database_url: Option<String>) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("kw.db").display()));
        std::fs::write(
            dir.path().join("keywarden.toml"),
            format!(
                r#"
[plans]
default = "metered"
[plans.tiers.metered]
quotas = [ {{ unit = "tokens", limit = {LIMIT}, period = "month" }} ]
"#
            ),
        )
        .unwrap();
        Site { dir, database_url }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Starts the binary in `durability` mode and waits until both listeners answer.
    fn start(&self, durability: &str) -> Server {
        let (public, admin) = (free_port(), free_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keywarden"))
            .arg("serve")
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEYWARDEN_ROOT_KEY", ROOT_KEY)
            .env("KEYWARDEN_PEPPER", PEPPER)
            .env("KEYWARDEN_DATABASE_URL", &self.database_url)
            .env(
                "KEYWARDEN_SERVER__PUBLIC_LISTEN",
                format!("127.0.0.1:{public}"),
            )
            .env(
                "KEYWARDEN_SERVER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            )
            .env("KEYWARDEN_STORE__USAGE_DURABILITY", durability)
            .env("KEYWARDEN_STORE__USAGE_FLUSH_MS", WINDOW_MS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            public,
            admin,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", admin)).is_err()
            || TcpStream::connect(("127.0.0.1", public)).is_err()
        {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("serve exited early ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "serve never listened:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

/// SIGKILL: no destructor runs, nothing is flushed.
fn kill9(mut server: Server) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// An account on the metered plan and a live key for it.
fn account_and_key(server: &Server) -> String {
    let (status, acc) = call(
        server.admin,
        "POST",
        "/v1/admin/accounts",
        ROOT_KEY,
        Some(&json!({ "name": "Billing" })),
    );
    assert_eq!(status, 201, "{acc}");
    let path = format!("/v1/admin/accounts/{}/keys", acc["id"].as_str().unwrap());
    let (status, key) = call(
        server.admin,
        "POST",
        &path,
        ROOT_KEY,
        Some(&json!({ "mode": "live", "name": "metered" })),
    );
    assert_eq!(status, 201, "{key}");
    key["api_key"].as_str().unwrap().to_owned()
}

/// A verification of `key` consuming `cost` tokens: whether it was allowed.
fn spend(conn: &mut Conn, key: &str, cost: u64) -> std::io::Result<bool> {
    let body = json!({ "key": key, "cost": { "tokens": cost } });
    let (status, v) = conn.call("POST", "/v1/verify", ROOT_KEY, Some(&body))?;
    assert_eq!(status, 200, "{v}");
    Ok(v["valid"] == json!(true))
}

/// Units acknowledged by allowed answers, each with when its answer was read.
type Acks = Arc<Mutex<Vec<(Instant, u64)>>>;

/// Sends cost-carrying verifications from `CLIENTS` connections until `stop` is set or the
/// connections fail (the process was killed), recording every acknowledged unit.
fn load(
    port: u16,
    key: &str,
    stop: &Arc<AtomicBool>,
    acks: &Acks,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|i| {
            let (key, stop, acks) = (key.to_owned(), stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let Ok(mut conn) = Conn::open(port) else {
                    return;
                };
                let mut n = i as u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let cost = 1 + n % 7;
                    match spend(&mut conn, &key, cost) {
                        Ok(true) => acks.lock().unwrap().push((Instant::now(), cost)),
                        Ok(false) => panic!("a verification within the quota was refused"),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

/// Waits until at least `units` are acknowledged (or 30 s pass).
fn wait_for(acks: &Acks, units: u64) {
    let started = Instant::now();
    while total(acks) < units {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {} units acknowledged in 30 s",
            total(acks)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn total(acks: &Acks) -> u64 {
    acks.lock().unwrap().iter().map(|(_, n)| n).sum()
}

/// The tokens used this month, as the account's owner reads them.
fn stored(server: &Server, key: &str) -> u64 {
    let (status, v) = call(server.public, "GET", "/v1/account/usage", key, None);
    assert_eq!(status, 200, "{v}");
    v["tokens_used"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

/// The restarted service counts from the stored usage: one unit over the limit is refused,
/// the exact rest accepted.
fn quota_continues_from(server: &Server, key: &str, used: u64) {
    let mut conn = Conn::open(server.admin).unwrap();
    assert!(
        !spend(&mut conn, key, LIMIT - used + 1).unwrap(),
        "the quota started again from zero after the restart"
    );
    assert!(spend(&mut conn, key, LIMIT - used).unwrap());
}

/// Strict: the process is killed while requests are in flight; every acknowledged unit is
/// stored (a request whose answer was lost with the process may be stored too).
fn strict_loses_nothing(site: &Site) {
    let server = site.start("strict");
    let key = account_and_key(&server);
    let (stop, acks): (Arc<AtomicBool>, Acks) = Default::default();
    let clients = load(server.admin, &key, &stop, &acks);
    wait_for(&acks, 2_000);
    kill9(server);
    stop.store(true, Ordering::SeqCst);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let acked = total(&acks);

    let server = site.start("strict");
    let used = stored(&server, &key);
    assert!(
        used >= acked,
        "strict: {acked} units acknowledged, {used} stored ({} lost)\n{}",
        acked - used,
        site.log()
    );
    // At most the requests in flight at the kill, one per connection, were stored without
    // being acknowledged.
    assert!(
        used <= acked + 7 * CLIENTS as u64,
        "{used} stored, {acked} acknowledged"
    );
    quota_continues_from(&server, &key, used);
}

/// Batched, under load: what is missing after the kill was acknowledged within the last
/// few windows before it; then, with the requests stopped and the window passed, nothing.
fn batched_loses_at_most_the_window(site: &Site) {
    let server = site.start("batched");
    let key = account_and_key(&server);
    let (stop, acks): (Arc<AtomicBool>, Acks) = Default::default();
    let clients = load(server.admin, &key, &stop, &acks);
    wait_for(&acks, 5_000);
    let killed = Instant::now();
    kill9(server);
    stop.store(true, Ordering::SeqCst);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let acked = total(&acks);
    // The window, the time its write takes on a busy machine, and the scheduling of the
    // kill: five windows.
    let recent: u64 = acks
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| {
            killed.saturating_duration_since(*at) < Duration::from_millis(5 * WINDOW_MS)
        })
        .map(|(_, n)| n)
        .sum();

    let server = site.start("batched");
    let used = stored(&server, &key);
    let lost = acked.saturating_sub(used);
    assert!(
        lost <= recent,
        "batched: {lost} of {acked} acknowledged units lost, more than the {recent} \
         acknowledged in the last {} ms\n{}",
        5 * WINDOW_MS,
        site.log()
    );
    assert!(
        used <= acked + 7 * CLIENTS as u64,
        "{used} stored, {acked} acknowledged"
    );
    quota_continues_from(&server, &key, used);

    // Stop sending, wait longer than the window, kill: nothing is missing. (The first
    // account's quota is spent now: a second one.)
    let (stop, acks): (Arc<AtomicBool>, Acks) = Default::default();
    let key = account_and_key(&server);
    let clients = load(server.admin, &key, &stop, &acks);
    wait_for(&acks, 3_000);
    stop.store(true, Ordering::SeqCst);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let acked = total(&acks);
    std::thread::sleep(Duration::from_millis(5 * WINDOW_MS + 250));
    kill9(server);
    let server = site.start("batched");
    assert_eq!(
        stored(&server, &key),
        acked,
        "batched: units lost although the window had passed\n{}",
        site.log()
    );
    kill9(server);
}

#[test]
fn sqlite_strict_usage_survives_kill_9() {
    strict_loses_nothing(&Site::new(None));
}

#[test]
fn sqlite_batched_usage_loses_at_most_the_window() {
    batched_loses_at_most_the_window(&Site::new(None));
}

/// A fresh PostgreSQL database, dropped at the end.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    fn create() -> Option<PgDatabase> {
        let admin_url = std::env::var("KEYWARDEN_TEST_DATABASE_URL").ok()?;
        let name = format!(
            "kw_usage_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        run_sql(&admin_url, &format!("CREATE DATABASE {name}"));
        Some(PgDatabase { admin_url, name })
    }

    fn url(&self) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (self.admin_url.as_str(), None),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        match query {
            Some(q) => format!("{base}/{}?{q}", self.name),
            None => format!("{base}/{}", self.name),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        run_sql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
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

fn on_postgres(run: fn(&Site)) {
    let Some(db) = PgDatabase::create() else {
        eprintln!("KEYWARDEN_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    let site = Site::new(Some(db.url()));
    run(&site);
    drop(site);
    drop(db);
}

#[test]
fn postgres_strict_usage_survives_kill_9() {
    on_postgres(strict_loses_nothing);
}

#[test]
fn postgres_batched_usage_loses_at_most_the_window() {
    on_postgres(batched_loses_at_most_the_window);
}
