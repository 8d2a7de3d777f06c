//! A key the SQLite store acknowledged survives the process being killed at any moment
//! (`docs/operations.md#what-is-recorded`: "never lost on restart").
//!
//! The test binary runs itself again as a child that inserts keys one at a time and
//! prints each id only after `insert_key` returned. The parent kills the child with
//! SIGKILL mid-stream, reopens the database, and checks that every acknowledged key is
//! there and findable by its lookup value.

use keywarden_core::model::{
    Account, AccountStatus, HashScheme, KeyRecord, KeyType, Mode, Role, StoredSecret,
};
use keywarden_store::{SqliteStore, Store};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Set in the child's environment: the database file to write to.
const CHILD_DB: &str = "KEYWARDEN_DURABILITY_DB";
/// Set in the child's environment: the account the keys belong to.
const CHILD_ACCOUNT: &str = "KEYWARDEN_DURABILITY_ACCOUNT";
/// How a child line acknowledging a key starts.
const ACK: &str = "ACK ";
/// Acknowledgements the parent waits for before killing the child.
const KILL_AFTER: usize = 200;
/// The child stops by itself after this many keys, should the parent be gone.
const CHILD_MAX_KEYS: usize = 100_000;

fn key(account_id: &str, n: usize) -> KeyRecord {
    let id = keywarden_core::model::new_id("key");
    KeyRecord {
        name: format!("key {n}"),
        role: Role::Developer,
        scopes: vec!["*".into()],
        metadata: json!({ "n": n }),
        prefix: "kw_sk_live_".into(),
        start: "kw_sk_live_abcd".into(),
        key_hash: format!("sha256_{id}"),
        secret: StoredSecret {
            scheme: HashScheme::HmacSha256,
            lookup: format!("lookup_{id}"),
            hash: String::new(),
        },
        ..KeyRecord::new(
            id.clone(),
            account_id.into(),
            Mode::Live,
            KeyType::Secret,
            1_700_000_000_000,
        )
    }
}

/// The child's side: insert keys until killed, acknowledging each one on stdout.
#[tokio::test]
#[ignore = "runs only as the child process of acknowledged_keys_survive_sigkill"]
async fn writer_child() {
    let (Ok(db), Ok(account_id)) = (std::env::var(CHILD_DB), std::env::var(CHILD_ACCOUNT)) else {
        return;
    };
    let store = SqliteStore::open_file(Path::new(&db)).await.unwrap();
    let mut out = std::io::stdout().lock();
    for n in 0..CHILD_MAX_KEYS {
        let k = key(&account_id, n);
        store.insert_key(&k, &[]).await.unwrap();
        writeln!(out, "{ACK}{} {}", k.id, k.secret.lookup).unwrap();
        out.flush().unwrap();
    }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn acknowledged_keys_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keywarden.db");
    let account = Account {
        id: keywarden_core::model::new_id("acc"),
        name: "Durable".into(),
        plan: "default".into(),
        status: AccountStatus::Active,
        metadata: json!({}),
        created_at: 0,
    };
    runtime().block_on(async {
        let store = SqliteStore::open_file(&db).await.unwrap();
        store.create_account(&account, &[]).await.unwrap();
        store.close().await;
    });

    let child = Command::new(std::env::current_exe().unwrap())
        .args(["writer_child", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_DB, &db)
        .env(CHILD_ACCOUNT, &account.id)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();

    // Every line read counts, including those still in the pipe when the child died: each
    // was printed only after its insert had returned.
    let mut acked: Vec<(String, String)> = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some((id, lookup)) = line.strip_prefix(ACK).and_then(|l| l.split_once(' ')) else {
            continue;
        };
        acked.push((id.to_owned(), lookup.to_owned()));
        if acked.len() == KILL_AFTER {
            // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no checkpoint.
            child.0.kill().unwrap();
        }
    }
    let status = child.0.wait().unwrap();
    assert!(
        !status.success(),
        "the child was meant to be killed: {status}"
    );
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} keys acknowledged",
        acked.len()
    );

    runtime().block_on(async {
        let store = SqliteStore::open_file(&db).await.unwrap();
        for (id, lookup) in &acked {
            let found = store.find_keys_by_lookup(lookup).await.unwrap();
            assert_eq!(found.len(), 1, "acknowledged key {id} is missing");
            assert_eq!(&found[0].id, id);
            assert!(store.get_key(id).await.unwrap().is_some());
        }
        let active = store.count_active_keys(&account.id).await.unwrap();
        assert!(active >= acked.len() as u64);
        store.close().await;
    });
}
