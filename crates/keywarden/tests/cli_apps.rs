//! `keywarden apps …`, default key sets from `accounts create|approve`, and
//! `keys reveal`, run as an operator runs them, each test in a fresh working directory.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    /// A working directory with `toml` as its config and a master key in the environment.
    fn new(toml: &str) -> Self {
        let cli = Cli {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(cli.path().join("keywarden.toml"), toml).unwrap();
        cli
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keywarden"))
            .args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEYWARDEN_MASTER_KEY", MASTER_KEY)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "keywarden {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "keywarden {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }
}

const CONFIG: &str = r#"
[scopes]
catalog = [
  { name = "invoices:read", description = "Read invoices", public = true },
  { name = "invoices:write", description = "Write invoices" },
]
"#;

#[test]
fn apps_are_created_listed_shown_updated_and_their_secrets_rotated() {
    let cli = Cli::new(CONFIG);
    let created = cli.json(&[
        "apps",
        "create",
        "--name",
        "Ledger Sync",
        "--url",
        "https://ledger.example",
        "--scope",
        "invoices:read,invoices:write",
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("app_"));
    let production = created["secrets"]["production"]
        .as_str()
        .unwrap()
        .to_string();
    let sandbox = created["secrets"]["sandbox"].as_str().unwrap().to_string();
    assert!(production.starts_with("kwapp_prod_") && sandbox.starts_with("kwapp_sbx_"));

    // The table form shows the secrets once too, with a warning.
    let table = cli.ok(&[
        "apps",
        "create",
        "--name",
        "Other",
        "--scope",
        "invoices:read",
    ]);
    assert!(
        table.contains("shown once") && table.contains("kwapp_prod_"),
        "{table}"
    );

    let listed = cli.json(&["apps", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let shown = cli.ok(&["apps", "show", &id]);
    assert!(shown.contains("Ledger Sync"), "{shown}");
    for out in [listed.to_string(), shown] {
        assert!(!out.contains(&production) && !out.contains(&sandbox));
    }

    let updated = cli.json(&[
        "apps",
        "update",
        &id,
        "--name",
        "Ledger Sync 2",
        "--url",
        "",
        "--scope",
        "invoices:read",
    ]);
    assert_eq!(updated["name"], "Ledger Sync 2");
    assert!(updated["url"].is_null());
    assert_eq!(updated["scopes"], serde_json::json!(["invoices:read"]));

    let rotated = cli.json(&["apps", "rotate-secret", &id, "--environment", "sandbox"]);
    assert_eq!(rotated["environment"], "sandbox");
    let new_sandbox = rotated["secret"].as_str().unwrap();
    assert!(new_sandbox.starts_with("kwapp_sbx_") && new_sandbox != sandbox);

    // Refusals name the problem and change nothing.
    let err = cli.fails(&[
        "apps",
        "create",
        "--name",
        "Bad",
        "--scope",
        "payments:refund",
    ]);
    assert!(
        err.contains("invalid_scope") && err.contains("payments:refund"),
        "{err}"
    );
    let err = cli.fails(&["apps", "rotate-secret", &id, "--environment", "staging"]);
    assert!(err.contains("staging"), "{err}");
    let err = cli.fails(&["apps", "show", "app_01JNOPE0000000000000000000"]);
    assert!(err.contains("not_found"), "{err}");
    assert_eq!(cli.json(&["apps", "list"]).as_array().unwrap().len(), 2);

    let events = cli.json(&["events", "--type", "application.*"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(kinds.contains(&"application.secret_rotated"));
}

#[test]
fn default_sets_and_revealing_test_secrets_from_the_cli() {
    let cli = Cli::new(&format!(
        "{CONFIG}\n[keys]\ndefault_sets = true\nrecoverable_test_secrets = true\n"
    ));
    let created = cli.json(&[
        "accounts", "create", "--name", "Acme", "--status", "pending",
    ]);
    let acc = created["id"].as_str().unwrap().to_string();
    let keys = created["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let test_secret = keys.iter().find(|k| k["type"] == "secret").unwrap().clone();
    assert_eq!(test_secret["mode"], "test");
    let token = test_secret["api_key"].as_str().unwrap();
    let key_id = test_secret["id"].as_str().unwrap();

    let revealed = cli.json(&["keys", "reveal", key_id]);
    assert_eq!(revealed["api_key"], token);

    let approved = cli.json(&["accounts", "approve", &acc]);
    let live = approved["keys"].as_array().unwrap();
    assert_eq!(live.len(), 2);
    let live_id = live[1]["id"].as_str().unwrap();
    let live_token = live[1]["api_key"].as_str().unwrap();
    let err = cli.fails(&["keys", "reveal", live_id]);
    assert!(err.contains("never recoverable"), "{err}");
    assert!(!err.contains(live_token));
    // Approving again makes nothing new.
    let again = cli.json(&["accounts", "approve", &acc]);
    assert!(again.get("keys").is_none(), "{again}");

    // Without the master key one is generated beside the database, which cannot open what
    // the configured one sealed: the reveal fails, says why, and shows no secret.
    let out = Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args(["keys", "reveal", key_id])
        .current_dir(cli.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master key"), "{err}");
    assert!(!err.contains(token));
}
