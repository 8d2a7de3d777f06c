//! `keywarden webhooks …` as an operator runs it, in a fresh working directory, every
//! subcommand with `--json` (docs/webhooks.md): the signing secret is printed by `create`
//! and `rotate-secret` only, and a disabled endpoint refuses `test` and `redeliver`.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Cli {
            dir: tempfile::tempdir().unwrap(),
        }
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
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `keywarden --json ARGS`, asserts success, parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "keywarden {all:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
    }

    /// Runs `keywarden --json ARGS`, asserts failure, returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(!out.status.success(), "keywarden {all:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A public address, so the address guard lets it through without a DNS lookup; nothing is
/// sent to it, since no service runs.
const URL: &str = "https://93.184.216.34/hook";

#[test]
fn every_webhooks_subcommand_answers_in_json_and_shows_the_secret_only_when_made() {
    let cli = Cli::new();
    let acc = cli.json(&["accounts", "create", "--name", "Acme"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Everything but `create` and `rotate-secret` is kept here, to look for secrets.
    let mut shown: Vec<Value> = Vec::new();

    let created = cli.json(&[
        "webhooks",
        "create",
        "--url",
        URL,
        "--event",
        "key.*,account.created",
        "--account",
        &acc,
        "--mode",
        "live",
        "--description",
        "ops",
    ]);
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("whe_"), "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["events"], json!(["account.created", "key.*"]));
    assert_eq!(
        (
            &created["account_id"],
            &created["mode"],
            &created["enabled"]
        ),
        (&json!(acc), &json!("live"), &json!(true))
    );

    let list = cli.json(&["webhooks", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    shown.push(list);
    let one = cli.json(&["webhooks", "show", &id]);
    assert_eq!(
        (&one["url"], &one["description"]),
        (&json!(URL), &json!("ops"))
    );
    shown.push(one);

    let other_url = "https://93.184.216.34/other";
    let updated = cli.json(&[
        "webhooks",
        "update",
        &id,
        "--url",
        other_url,
        "--event",
        "key.created",
        "--description",
        "billing",
    ]);
    assert_eq!(
        (&updated["url"], &updated["events"], &updated["description"]),
        (
            &json!(other_url),
            &json!(["key.created"]),
            &json!("billing")
        )
    );
    shown.push(updated);
    // Every event type again: the change's own webhook.updated reaches it.
    let all = cli.json(&["webhooks", "update", &id, "--all-events"]);
    assert_eq!(all["events"], Value::Null);
    shown.push(all);
    let log = cli.json(&["webhooks", "deliveries", &id, "--limit", "5"]);
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");
    assert_eq!(
        (&log[0]["type"], &log[0]["status"], &log[0]["attempts"]),
        (&json!("webhook.updated"), &json!("pending"), &json!(0))
    );
    assert_eq!(log[0]["attempt_log"], json!([]));
    let delivery = log[0]["id"].as_str().unwrap().to_string();
    shown.push(log);

    // Disabled: a test or a redelivery would never be sent, and the refusal says so.
    let off = cli.json(&["webhooks", "update", &id, "--enabled", "false"]);
    assert_eq!(off["enabled"], false);
    shown.push(off);
    for args in [
        vec!["webhooks", "test", id.as_str()],
        vec!["webhooks", "redeliver", id.as_str(), delivery.as_str()],
    ] {
        let err = cli.fails(&args);
        assert!(
            err.contains("conflict") && err.contains("disabled") && err.contains("never be sent"),
            "{args:?}: {err}"
        );
    }
    let on = cli.json(&["webhooks", "update", &id, "--enabled", "true"]);
    assert_eq!(on["enabled"], true);
    shown.push(on);

    let test = cli.json(&["webhooks", "test", &id]);
    assert_eq!(
        (&test["type"], &test["status"], &test["webhook_id"]),
        (&json!("webhook.test"), &json!("pending"), &json!(id))
    );
    shown.push(test);
    let again = cli.json(&["webhooks", "redeliver", &id, &delivery]);
    assert_eq!(
        (&again["id"], &again["status"]),
        (&json!(delivery), &json!("pending"))
    );
    shown.push(again);
    let log = cli.json(&["webhooks", "deliveries", &id]);
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["type"].as_str().unwrap())
        .collect();
    // Newest first: the test, the re-enabling's webhook.updated, the first one.
    assert_eq!(
        kinds,
        ["webhook.test", "webhook.updated", "webhook.updated"],
        "{log}"
    );
    shown.push(log);

    let rotated = cli.json(&["webhooks", "rotate-secret", &id]);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert!(rotated["previous_secret_until"].is_string(), "{rotated}");
    let after = cli.json(&["webhooks", "show", &id]);
    assert!(after["previous_secret_until"].is_string());
    shown.push(after);

    // The secrets were printed by create and rotate-secret, and nowhere else.
    for v in &shown {
        let text = v.to_string();
        assert!(
            !text.contains("whsec_") && !text.contains("\"secret\""),
            "{text}"
        );
    }

    let deleted = cli.json(&["webhooks", "delete", &id]);
    assert_eq!(deleted, json!({ "deleted": id }));
    assert_eq!(cli.json(&["webhooks", "list"]), json!([]));
    let err = cli.fails(&["webhooks", "show", &id]);
    assert!(err.contains("not_found"), "{err}");
}
