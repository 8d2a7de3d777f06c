//! `keywarden scan` and `keywarden keys pattern` as an operator or a CI step runs them.

use keywarden_core::model::{KeyType, Mode};
use keywarden_core::template::{KeyTemplate, TemplateTags};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ROOT_KEY: &str = "scan_root_key_0123456789abcdef";

fn keywarden(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KEYWARDEN_ROOT_KEY", ROOT_KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn template() -> KeyTemplate {
    KeyTemplate::compile(
        "kw_{type}_{mode}_{random:32}{checksum}",
        &TemplateTags::default(),
    )
    .unwrap()
}

/// `token` with one checksum character changed: the right shape, the wrong checksum.
fn look_alike(token: &str, i: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let at = bytes.len() - 1 - (i % 6);
    bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
    String::from_utf8(bytes).unwrap()
}

/// Filler that looks like source code, with base62 noise of key-like length.
fn filler(n: usize) -> String {
    let mut s = String::new();
    for line in 0..(5 + n % 20) {
        s.push_str(&format!(
            "let value_{line} = \"{:032x}{:08}\"; // config entry {n}\n",
            (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834) ^ line as u128,
            n * 31 + line
        ));
    }
    s
}

/// 10 000 files in 100 directories: 5 with a real key, 50 with a look-alike.
/// Returns the planted keys as (relative path, line, token).
fn plant_tree(root: &Path) -> Vec<(PathBuf, usize, String)> {
    let t = template();
    let mut planted = Vec::new();
    for n in 0..10_000 {
        let dir = root.join(format!("pkg{:02}", n / 100));
        if n % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut text = filler(n);
        let rel = PathBuf::from(format!("pkg{:02}/file{n:05}.rs", n / 100));
        if n % 2000 == 1000 {
            let mode = if n % 4000 == 1000 {
                Mode::Live
            } else {
                Mode::Test
            };
            let key = t.generate(mode, KeyType::Secret);
            let line = text.lines().count() + 1;
            text.push_str(&format!("const API_KEY: &str = \"{}\";\n", key.expose()));
            planted.push((rel.clone(), line, key.expose().to_string()));
        } else if n % 200 == 7 {
            let key = t.generate(Mode::Live, KeyType::Publishable);
            text.push_str(&format!("// example: {}\n", look_alike(key.expose(), n)));
        }
        std::fs::write(root.join(&rel), text).unwrap();
    }
    planted
}

#[test]
fn scan_finds_exactly_the_planted_keys_in_ten_thousand_files() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let planted = plant_tree(&tree);
    assert_eq!(planted.len(), 5);
    let files = walk_count(&tree);
    assert_eq!(files, 10_000);
    let look_alikes = std::fs::read_dir(&tree)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| {
            std::fs::read_to_string(f.as_ref().unwrap().path())
                .unwrap()
                .contains("// example: kw_pk_live_")
        })
        .count();
    assert_eq!(look_alikes, 50);

    // A real key inside .git and in a binary file is not searched.
    let t = template();
    std::fs::create_dir_all(tree.join(".git/objects")).unwrap();
    let hidden = t.generate(Mode::Live, KeyType::Secret);
    std::fs::write(tree.join(".git/objects/pack"), hidden.expose()).unwrap();
    let mut binary = b"\x7fELF\x00\x00".to_vec();
    binary.extend_from_slice(t.generate(Mode::Live, KeyType::Secret).expose().as_bytes());
    std::fs::write(tree.join("pkg00/tool.bin"), binary).unwrap();

    let out = keywarden(dir.path(), &["--json", "scan", "tree"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let found = found.as_array().unwrap();
    let got: Vec<(String, u64, String)> = found
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
                f["start"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, u64, String)> = planted
        .iter()
        .map(|(rel, line, token)| {
            (
                Path::new("tree").join(rel).display().to_string(),
                *line as u64,
                token[..15].to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(found[0]["mode"], "live");
    // The secrets themselves are never printed.
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    for (_, _, token) in &planted {
        assert!(!all.contains(token.as_str()));
        assert!(!all.contains(&token[15..]));
    }

    // The human form: file:line:column and the start.
    let out = keywarden(dir.path(), &["scan", "tree/pkg10"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let (rel, line, token) = &planted[0];
    assert_eq!(
        text.trim(),
        format!(
            "{}:{line}:24: {}… (live)",
            Path::new("tree").join(rel).display(),
            &token[..15]
        )
    );
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk_count(&p)
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_clean_tree_exits_zero_and_a_missing_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), "no keys here\n").unwrap();
    let out = keywarden(dir.path(), &["scan", "README"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "");
    let out = keywarden(dir.path(), &["--json", "scan", "."]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        Value::Array(vec![])
    );
    let out = keywarden(dir.path(), &["scan", "nowhere"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

#[test]
fn legacy_templates_are_found_too_and_keys_pattern_prints_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keywarden.toml"),
        "[keys]\ntemplate = \"acme_{mode}_{random:40}{checksum}\"\nlegacy_templates = [\"kw_{type}_{mode}_{random:32}{checksum}\"]\n",
    )
    .unwrap();
    let out = keywarden(dir.path(), &["keys", "pattern"]);
    assert!(out.status.success());
    let current = KeyTemplate::compile(
        "acme_{mode}_{random:40}{checksum}",
        &TemplateTags::default(),
    )
    .unwrap();
    assert_eq!(stdout(&out).trim(), current.regex());
    assert_eq!(
        current.regex(),
        "(?:acme_live_[0-9A-Za-z]{40}[0-9A-Za-z]{6}|acme_test_[0-9A-Za-z]{40}[0-9A-Za-z]{6})"
    );

    let old = template().generate(Mode::Live, KeyType::Secret);
    let new = current.generate(Mode::Test, KeyType::Secret);
    std::fs::write(
        dir.path().join("app.env"),
        format!("OLD={}\nNEW={}\n", old.expose(), new.expose()),
    )
    .unwrap();
    let out = keywarden(dir.path(), &["--json", "scan", "app.env"]);
    assert_eq!(out.status.code(), Some(1));
    let found: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 2);
    assert_eq!(found[0]["line"], 1);
    assert_eq!(found[1]["line"], 2);
}

#[test]
fn scan_report_hands_active_keys_to_the_leak_policy() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| keywarden(dir.path(), args);
    let acc: Value = serde_json::from_str(&stdout(&run(&[
        "--json", "accounts", "create", "--name", "Acme",
    ])))
    .unwrap();
    let acc = acc["id"].as_str().unwrap();
    let key: Value = serde_json::from_str(&stdout(&run(&[
        "--json",
        "keys",
        "create",
        "--account",
        acc,
        "--mode",
        "live",
        "--name",
        "k",
    ])))
    .unwrap();
    let token = key["api_key"].as_str().unwrap();
    std::fs::write(
        dir.path().join("leak.txt"),
        format!("{token}\n{}\n", look_alike(token, 0)),
    )
    .unwrap();

    let out = run(&["--json", "scan", "--report", "leak.txt"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["label"], "true_positive");

    let verdict: Value = serde_json::from_str(&stdout(&run(&["--json", "verify", token]))).unwrap();
    assert_eq!(verdict["code"], "api_key_revoked");
    let events: Value =
        serde_json::from_str(&stdout(&run(&["--json", "events", "--type", "key.leaked"]))).unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1);
    assert_eq!(events[0]["data"]["source"], "leak.txt:1");

    // Reported again: the key is revoked already, so nothing more happens.
    let out = run(&["--json", "scan", "--report", "leak.txt"]);
    let found: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(found[0]["label"], "false_positive");
}
