//! The crate embeds the engine without the HTTP service: its dependencies within the
//! workspace are `keywarden-core` and `keywarden-store`, and neither reaches
//! `keywarden-server` or the binary.

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

/// The workspace packages `package` depends on at run time (normal dependencies,
/// transitively), from `cargo metadata`.
fn workspace_deps(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let direct = |name: &str| -> Vec<String> {
        packages
            .iter()
            .filter(|p| p["name"] == name)
            .flat_map(|p| p["dependencies"].as_array().cloned().unwrap_or_default())
            // `kind` is null for normal dependencies; dev and build ones do not ship.
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .filter(|n| members.contains(n))
            .collect()
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![package.to_string()];
    while let Some(p) = todo.pop() {
        for d in direct(&p) {
            if seen.insert(d.clone()) {
                todo.push(d);
            }
        }
    }
    seen
}

#[test]
fn the_layer_depends_on_core_and_store_only() {
    let deps = workspace_deps("keywarden-tower");
    let expected: BTreeSet<String> = ["keywarden-core", "keywarden-store"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(deps, expected);
}
