//! The `keywarden` binary as an operator uses it, each test in a fresh working directory:
//! `init`, `config check`, `migrate`, account and key management, `events`, `verify`, and
//! `serve` shutting down cleanly on SIGTERM.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT_KEY: &str = "cli_root_key_0123456789abcdef";

/// A working directory and the binary run in it with a clean environment.
struct Cli {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new() -> Self {
        Cli {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn write_config(&self, toml: &str) {
        std::fs::write(self.path().join("keywarden.toml"), toml).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keywarden"));
        c.args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// Runs to completion (killed after 30 s, so a command that wrongly keeps running
    /// fails the test instead of hanging it).
    fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, Duration::from_secs(30))
    }

    /// Runs, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "keywarden {args:?} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        stdout
    }

    /// Runs, asserts failure, returns (stdout, stderr).
    fn fails(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let (stdout, stderr) = texts(&out);
        assert!(
            !out.status.success(),
            "keywarden {args:?} should fail\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        (stdout, stderr)
    }

    /// Runs with `--json`, asserts success, parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let (stdout, stderr) = texts(&out);
            panic!("the command did not finish in {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CLI with a root key, a configured plan `pro` and a small catalog.
fn managed() -> Cli {
    let cli = Cli::new().with_env("KEYWARDEN_ROOT_KEY", ROOT_KEY);
    cli.write_config(
        r#"
[scopes]
catalog = [ { name = "invoices:read", description = "Read invoices" } ]

[plans.tiers.default]
requests_per_minute = 600

[plans.tiers.pro]
requests_per_minute = 6000
"#,
    );
    cli
}

#[test]
fn init_writes_a_config_and_refuses_to_overwrite_it() {
    let cli = Cli::new();
    let out = cli.ok(&["init"]);
    assert!(out.contains("keywarden.toml"), "{out}");
    let file = cli.path().join("keywarden.toml");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("[server]") && written.contains("public_listen"));
    assert!(
        written.lines().any(|l| l.trim_start().starts_with('#')),
        "commented"
    );
    // The file it writes is a valid config.
    cli.ok(&["config", "check"]);

    std::fs::write(&file, "# mine\n").unwrap();
    let (_, err) = cli.fails(&["init"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# mine\n");
    cli.ok(&["init", "--force"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);

    // Another path can be named.
    cli.ok(&["init", "other.toml"]);
    assert!(cli.path().join("other.toml").exists());
}

#[test]
fn built_in_profiles_are_listed_written_out_checked_and_refused_by_unknown_names() {
    let cli = Cli::new().with_env("KEYWARDEN_ROOT_KEY", "cli-root-key-0123456789");
    let out = cli.ok(&["profiles"]);
    let names: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    for p in ["falco", "falu", "facturascripts", "factuarea", "falara"] {
        assert!(names.contains(&p), "{out}");
    }
    // One line each, with a summary.
    assert!(
        out.lines().all(|l| l.split_whitespace().count() > 1),
        "{out}"
    );
    let listed = cli.json(&["profiles"]);
    assert_eq!(listed.as_array().unwrap().len(), names.len());

    for p in ["falco", "falu", "facturascripts", "factuarea", "falara"] {
        let out = cli.ok(&["config", "check", "--profile", p]);
        assert!(out.starts_with("# config is valid"), "{p}: {out}");
        // Written out, it is a file that runs the same.
        let file = format!("{p}.toml");
        cli.ok(&["init", "--profile", p, &file]);
        let text = std::fs::read_to_string(cli.path().join(&file)).unwrap();
        assert!(text.starts_with(&format!("# {p}:")), "{text}");
        let checked = cli.ok(&["--config", &file, "config", "check"]);
        assert_eq!(checked, out, "{p}");
    }
    // Environment overrides apply on top of a profile.
    let out = Cli::new()
        .with_env("KEYWARDEN_ROOT_KEY", "cli-root-key-0123456789")
        .with_env("KEYWARDEN_SERVER__PUBLIC_LISTEN", "127.0.0.1:18080")
        .ok(&["config", "check", "--profile", "falu"]);
    assert!(out.contains("127.0.0.1:18080"), "{out}");
    // Checking made nothing but the files written above.
    let mut files: Vec<String> = std::fs::read_dir(cli.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "factuarea.toml",
            "facturascripts.toml",
            "falara.toml",
            "falco.toml",
            "falu.toml"
        ]
    );

    let (_, err) = cli.fails(&["serve", "--profile", "nope"]);
    assert!(err.contains("nope") && err.contains("falco"), "{err}");
    let (_, err) = cli.fails(&[
        "--config",
        "falu.toml",
        "--profile",
        "falu",
        "config",
        "check",
    ]);
    assert!(
        err.contains("--profile") || err.contains("--config"),
        "{err}"
    );
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_redacted() {
    let root = "super_secret_root_key_42";
    let pepper = "super_secret_pepper_value_42";
    let cli = Cli::new()
        .with_env("KEYWARDEN_ROOT_KEY", root)
        .with_env("KEYWARDEN_PEPPER", pepper)
        .with_env("KEYWARDEN_SERVER__PUBLIC_LISTEN", "127.0.0.1:9999");
    let out = cli.ok(&["config", "check"]);
    assert!(out.contains("<redacted>"), "{out}");
    assert!(!out.contains(root), "root key printed:\n{out}");
    assert!(!out.contains(pepper), "pepper printed:\n{out}");
    // Environment overrides are part of the effective config.
    assert!(out.contains("127.0.0.1:9999"), "{out}");
    assert!(out.contains("admin_listen = \"127.0.0.1:8081\""), "{out}");
    // Checking changes nothing: no database, no pepper file.
    let files: Vec<_> = std::fs::read_dir(cli.path()).unwrap().collect();
    assert!(files.is_empty(), "config check created {files:?}");

    // A database password is a secret too.
    let cli = cli.with_env(
        "KEYWARDEN_DATABASE_URL",
        "postgres://kw:db_password_42@db.internal/keywarden",
    );
    let out = cli.ok(&["config", "check"]);
    assert!(!out.contains("db_password_42"), "{out}");
    assert!(out.contains("db.internal"), "{out}");
}

#[test]
fn a_pepper_of_digits_only_is_still_a_pepper() {
    let cli = Cli::new().with_env("KEYWARDEN_PEPPER", "12345678901234567");
    let out = cli.ok(&["config", "check"]);
    assert!(!out.contains("12345678901234567"), "{out}");
}

#[test]
fn config_errors_stop_serve_and_check_naming_the_field() {
    let cli = Cli::new().with_env("KEYWARDEN_ROOT_KEY", ROOT_KEY);
    cli.write_config("[server]\npublic_listen = \"nope\"\n");
    for args in [&["serve"][..], &["config", "check"]] {
        let (_, err) = cli.fails(args);
        assert!(err.contains("server.public_listen"), "{args:?}: {err}");
        assert!(err.contains("nope"), "{args:?}: {err}");
    }

    cli.write_config("[server]\npublic_lisen = \"127.0.0.1:1\"\n");
    for args in [&["serve"][..], &["config", "check"]] {
        let (_, err) = cli.fails(args);
        assert!(err.contains("public_lisen"), "{args:?}: {err}");
        assert!(err.contains("unknown field"), "{args:?}: {err}");
    }

    // A wrong type from the environment names the field it overrides.
    cli.write_config("");
    let cli = cli.with_env("KEYWARDEN_AUTH__LOCKOUT__MAX_FAILURES", "many");
    let (_, err) = cli.fails(&["config", "check"]);
    assert!(err.contains("auth.lockout.max_failures"), "{err}");

    // --config names a file that must exist.
    let cli = Cli::new();
    let (_, err) = cli.fails(&["--config", "missing.toml", "config", "check"]);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn migrate_creates_the_embedded_database_in_the_working_directory() {
    let cli = Cli::new();
    let out = cli.ok(&["migrate"]);
    assert!(out.contains("keywarden.db"), "{out}");
    assert!(cli.path().join("keywarden.db").exists());
    // Applying again is harmless.
    cli.ok(&["migrate"]);
}

#[test]
fn accounts_are_managed_with_tables_and_json() {
    let cli = managed();
    let out = cli.ok(&["accounts", "create", "--name", "Acme Corp"]);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("an id line:\n{out}"));
    assert!(id.starts_with("acc_"), "{out}");
    assert!(out.contains("Acme Corp") && out.contains("active"), "{out}");

    let beta = cli.json(&[
        "accounts", "create", "--name", "Beta", "--status", "pending",
    ]);
    let beta_id = beta["id"].as_str().unwrap().to_string();
    assert_eq!(beta["status"], "pending");
    assert_eq!(beta["plan"], "default");

    let table = cli.ok(&["accounts", "list"]);
    let header = table.lines().next().unwrap();
    for col in ["ID", "NAME", "PLAN", "STATUS", "CREATED_AT"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(table.contains(&id) && table.contains(&beta_id), "{table}");
    let list = cli.json(&["accounts", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    let shown = cli.json(&["accounts", "show", &beta_id]);
    assert_eq!(shown["name"], "Beta");
    let approved = cli.json(&["accounts", "approve", &beta_id]);
    assert_eq!(approved["status"], "active");
    let out = cli.ok(&["accounts", "set-plan", &beta_id, "pro"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("plan") && l.contains("pro")),
        "{out}"
    );
    assert_eq!(cli.json(&["accounts", "show", &beta_id])["plan"], "pro");

    let (_, err) = cli.fails(&["accounts", "set-plan", &beta_id, "platinum"]);
    assert!(err.contains("platinum"), "{err}");
    let (_, err) = cli.fails(&["accounts", "show", "acc_missing"]);
    assert!(err.contains("not_found"), "{err}");
}

#[test]
fn keys_are_created_once_rotated_revoked_and_verified() {
    let cli = managed();
    let acc = cli.json(&["accounts", "create", "--name", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The table output shows the secret once, clearly marked.
    let out = cli.ok(&[
        "keys",
        "create",
        "--account",
        &acc,
        "--mode",
        "live",
        "--name",
        "backend",
    ]);
    let marker = out
        .lines()
        .position(|l| l.contains("shown once"))
        .unwrap_or_else(|| panic!("the secret is marked:\n{out}"));
    let secret = out.lines().nth(marker + 1).unwrap().trim().to_string();
    assert!(secret.starts_with("kw_sk_live_"), "{out}");
    let key_id = out
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .unwrap()
        .trim()
        .to_string();

    let json_key = cli.json(&[
        "keys",
        "create",
        "--account",
        &acc,
        "--mode",
        "test",
        "--name",
        "ci",
        "--scope",
        "invoices:read",
    ]);
    let test_secret = json_key["api_key"].as_str().unwrap().to_string();
    assert!(test_secret.starts_with("kw_sk_test_"));
    assert_eq!(json_key["scopes"], serde_json::json!(["invoices:read"]));

    // Listing and showing never print a secret again.
    let table = cli.ok(&["keys", "list", "--account", &acc]);
    assert!(table.lines().next().unwrap().contains("START"), "{table}");
    assert!(table.contains(&key_id), "{table}");
    let listed = cli.json(&["keys", "list", "--account", &acc]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let live_only = cli.json(&["keys", "list", "--account", &acc, "--mode", "live"]);
    assert_eq!(live_only.as_array().unwrap().len(), 1);
    let shown = cli.ok(&["keys", "show", &key_id]);
    let shown_json = cli.json(&["keys", "show", &key_id]);
    assert_eq!(shown_json["name"], "backend");
    assert!(shown_json.get("api_key").is_none());
    for out in [&table, &shown, &listed.to_string(), &shown_json.to_string()] {
        assert!(
            !out.contains(&secret) && !out.contains(&test_secret),
            "{out}"
        );
    }

    // Verify: tables by default, JSON for scripts.
    let out = cli.ok(&["verify", &secret]);
    assert!(out.contains("valid") && out.contains(&key_id), "{out}");
    let v = cli.json(&["verify", &test_secret, "--scope", "invoices:read"]);
    assert_eq!(v["valid"], true);
    assert_eq!(v["code"], "valid");
    let (out, err) = cli.fails(&["verify", "kw_sk_live_garbage"]);
    assert!(out.contains("invalid_api_key"), "{out}");
    assert!(err.contains("invalid_api_key"), "{err}");

    // Rotation prints the new secret once; the old one keeps its grace.
    let out = cli.ok(&["keys", "rotate", &key_id, "--grace", "3600"]);
    let marker = out.lines().position(|l| l.contains("shown once")).unwrap();
    let rotated = out.lines().nth(marker + 1).unwrap().trim().to_string();
    assert_ne!(rotated, secret);
    cli.ok(&["verify", &rotated]);
    cli.ok(&["verify", &secret]);
    let rotated_json = cli.json(&["keys", "rotate", &key_id]);
    let newest = rotated_json["api_key"].as_str().unwrap().to_string();
    cli.ok(&["verify", &newest]);

    // Revoked: verify exits non-zero and says why.
    let revoked = cli.json(&["keys", "revoke", &key_id, "--reason", "leaked"]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let (out, _) = cli.fails(&["verify", &newest]);
    assert!(out.contains("api_key_revoked"), "{out}");
    let out = cli.run(&["--json", "verify", &newest]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["code"], "api_key_revoked");

    // The audit trail of all that.
    let events = cli.json(&["events", "--account", &acc, "--limit", "50"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for kind in [
        "account.created",
        "key.created",
        "key.rotated",
        "key.revoked",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let only_keys = cli.json(&["events", "--type", "key.*"]);
    assert!(only_keys
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["type"].as_str().unwrap().starts_with("key.")));
    let table = cli.ok(&["events", "--limit", "2"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("TYPE"), "{table}");
    assert_eq!(lines.len(), 3, "a header and two events:\n{table}");
    assert!(lines[1].contains("key.revoked"), "newest first:\n{table}");
    for out in [&table, &events.to_string()] {
        for s in [&secret, &rotated, &newest, &test_secret] {
            assert!(!out.contains(s.as_str()), "{out}");
        }
    }
}

#[test]
fn management_commands_write_timestamps_as_configured() {
    let cli = Cli::new().with_env("KEYWARDEN_ROOT_KEY", ROOT_KEY);
    cli.write_config("[server]\ntimestamp_offset = \"+00:00\"\ntimestamp_precision = \"s\"\n");
    let acc = cli.json(&["accounts", "create", "--name", "Acme"]);
    let at = acc["created_at"].as_str().unwrap();
    assert!(at.ends_with("+00:00") && at.len() == 25, "{at}");
}

#[test]
fn management_commands_do_not_warn_about_the_admin_api() {
    let cli = Cli::new();
    let out = cli.run(&["accounts", "list"]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("(none)"), "{stdout}");
    assert!(stderr.trim().is_empty(), "{stderr}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET; the connection is left open unless `close`.
fn get(port: u16, path: &str, close: bool) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = if close { "close" } else { "keep-alive" };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {conn}\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the whole (small, content-length) response is in.
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if n == 0 || text.contains("\r\n\r\n") && text.ends_with('}') {
            break;
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), s)
}

#[cfg(unix)]
#[test]
fn serve_answers_health_and_stops_gracefully_on_sigterm() {
    let (public, admin) = (free_port(), free_port());
    let cli = Cli::new()
        .with_env("KEYWARDEN_ROOT_KEY", ROOT_KEY)
        .with_env(
            "KEYWARDEN_SERVER__PUBLIC_LISTEN",
            &format!("127.0.0.1:{public}"),
        )
        .with_env(
            "KEYWARDEN_SERVER__ADMIN_LISTEN",
            &format!("127.0.0.1:{admin}"),
        );
    let mut child = cli
        .command(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until it listens.
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve exited early: {:?}",
            wait_output(child, Duration::from_secs(5))
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for port in [public, admin] {
        let (res, _) = get(port, "/healthz", true);
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        let id = res
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-request-id:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("X-Request-Id:\n{res}"));
        assert!(id.starts_with("req_") && id.len() == 30, "{id}");
    }
    // An idle keep-alive connection must not hold the shutdown up.
    let (res, _idle) = get(public, "/readyz", false);
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_output(child, Duration::from_secs(10));
    let (_, stderr) = texts(&out);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(stderr.contains("shutting down"), "{stderr}");
    // The ports are free again.
    assert!(TcpStream::connect(("127.0.0.1", admin)).is_err());
}
